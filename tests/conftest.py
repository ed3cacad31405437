"""Suite-wide settings: one intra-op thread per test process.

The suite runs tiny models on a 2-core machine, sometimes beside subprocesses (DDP, data workers);
more threads than cores made single steps up to 100x slower there through oversubscription.
"""

from __future__ import annotations

import os

import matplotlib
import torch

matplotlib.use("Agg")
os.environ.setdefault("MPLBACKEND", "Agg")
torch.set_num_threads(1)
