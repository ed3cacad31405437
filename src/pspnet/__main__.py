"""``python -m pspnet``: the same command line as the ``pspnet`` script."""

from __future__ import annotations

import sys

from pspnet.cli import main

if __name__ == "__main__":
    sys.exit(main())
