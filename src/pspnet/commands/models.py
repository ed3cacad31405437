"""``pspnet models``: list the presets with their parameter counts."""

from __future__ import annotations

import argparse

import torch

from pspnet.models.registry import create_model, get_preset, list_models

NAME = "models"
HELP = "list model presets with parameter counts"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default=None, help="shell-style filter, e.g. 'pspnet*'")


def run(args: argparse.Namespace) -> int:
    names = list_models(args.pattern)
    if not names:
        raise ValueError(f"no preset matches {args.pattern!r}; available: {', '.join(list_models())}")
    print(f"{'preset':<24}{'params (M)':>11}  {'classes':>7}  description")
    with torch.device("meta"):  # count parameters without allocating memory
        for name in names:
            model = create_model(name)
            params = sum(p.numel() for p in model.parameters()) / 1e6
            preset = get_preset(name)
            print(f"{name:<24}{params:>11.2f}  {model.num_classes:>7}  {preset.description}")
    return 0
