"""``pspnet train``: train with the paper's recipe from a YAML config (single process or torchrun)."""

from __future__ import annotations

import argparse
import os
import sys

from pspnet.config import list_shipped_configs

NAME = "train"
HELP = "train a model with the paper's recipe from a YAML config (resumable, torchrun-ready)"
DESCRIPTION = (
    "Trains PSPNet with the authors' recipe (SGD 0.9, wd 1e-4, poly lr, 10x on the new layers, aux 0.4). "
    f"CONFIG is a YAML file or a shipped config name ({', '.join(list_shipped_configs())}); the "
    "paper-size ones start from random weights unless model.backbone_weights names the authors' "
    "ImageNet ResNet (nothing is downloaded). Writes OUT/checkpoints/, OUT/last, "
    "OUT/metrics.jsonl, OUT/best.safetensors and OUT/model.safetensors, and holds OUT/.lock while it "
    "runs (one run per output folder). Multi-GPU: "
    "torchrun --nproc_per_node N -m pspnet.cli train ..."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        help="YAML file or shipped config name (a local NAME.yaml wins over the shipped NAME; the file "
        "read is printed as 'config: PATH')",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set optim.base_lr=0.02 (repeatable; values parsed as YAML)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from OUT/last")
    parser.add_argument("--out", default=None, help="output folder (overrides output.dir)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="check the config as a training start would (keys, values, preset, dataset and palette "
        "names, device and amp on this machine; no data or model is loaded), print it and exit; "
        "exit status 2 with the problem otherwise",
    )


def run(args: argparse.Namespace) -> int:
    from pspnet.config import describe_config_source, load_config
    from pspnet.engine.distributed import same_on_every_rank
    from pspnet.engine.train import NonFiniteLossError, train
    from pspnet.engine.train_setup import check_config
    from pspnet.errors import InputError

    overrides = list(args.overrides)
    if args.out is not None:
        overrides.append(f"output.dir={args.out}")
    if args.resume:
        overrides.append("resume=true")
    main_rank = os.environ.get("RANK", "0") == "0"  # torchrun: one message, not one per process
    try:
        config = load_config(args.config, overrides)
    except InputError as exc:
        same_on_every_rank(exc)
        raise
    if main_rank:  # which file was read: an edited copy elsewhere, or a local one shadowing a shipped one
        print(describe_config_source(args.config), file=sys.stderr)
    if args.print_config:
        check_config(config)  # what train() checks first: a config is checked before a queue wait
        print(config.to_yaml(), end="")
        return 0
    try:
        result = train(config)
    except NonFiniteLossError as exc:  # every rank stops alike (the flag is reduced over ranks)
        if main_rank:
            print(f"pspnet train: stopped: {exc}", file=sys.stderr)
        return 1
    if main_rank:
        best = f"; best val mIoU {100 * result.best_miou:.2f}" if result.best_miou is not None else ""
        if result.steps_run == 0:
            print(
                f"already complete ({result.iterations}/{result.iterations} iterations): "
                f"{result.model_path}{best}"
            )
        else:
            speed = f"{result.images_per_s:.1f} images/s"
            print(f"trained {result.iterations} iterations ({speed}): {result.model_path}{best}")
    return 0
