"""The ``pspnet`` console script: parses arguments and dispatches to ``pspnet.commands.*``.

Each module in :mod:`pspnet.commands` defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; it is found automatically, so adding a subcommand is adding one module.
User mistakes (:class:`pspnet.errors.InputError`, ``ValueError``, missing files) print one line
and exit with status 2. Failures of the machine rather than the input (:class:`pspnet.errors.StorageError`
such as a full disk, other ``OSError``) print one line and exit with status 1. Set ``PSPNET_DEBUG=1``
to see the traceback. Under torchrun, an error that every rank raised alike (a config mistake) is
printed by rank 0 only.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType

from pspnet import __version__
from pspnet.errors import PeerLostError, PSPNetError, StorageError

__all__ = ["build_parser", "exit_status", "main", "one_line"]

_USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    PSPNetError,
)
_WORKER_PREFIX = "Caught "  # torch DataLoader: "Caught DataError in DataLoader worker process 0.\n..."


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line.

    A DataLoader worker re-raises a dataset error with the worker's whole traceback as its
    message; the user needs only its last line (the original message, which names the file).
    """
    text = str(exc).strip()
    if text.startswith(_WORKER_PREFIX) and "Traceback" in text:
        last = text.splitlines()[-1]
        name = type(exc).__name__
        prefix = next(
            (p for p in (f"{type(exc).__module__}.{name}: ", f"{name}: ") if last.startswith(p)), ""
        )
        text = last[len(prefix) :]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return " | ".join(lines) if lines else type(exc).__name__


def _command_modules() -> list[ModuleType]:
    import pspnet.commands as package

    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"pspnet.commands.{name}") for name in names]


def exit_status(exc: BaseException) -> int:
    """2 for a mistake in the input, 1 for a failure of the machine (disk full, I/O error, a lost rank)."""
    if isinstance(exc, (StorageError, PeerLostError)):
        return 1
    return 2 if isinstance(exc, _USER_ERRORS) else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pspnet",
        description="Pyramid Scene Parsing Network: train, evaluate, predict, convert, export, benchmark.",
    )
    parser.add_argument("--version", action="version", version=f"pspnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in _command_modules():
        cmd = sub.add_parser(
            module.NAME, help=module.HELP, description=getattr(module, "DESCRIPTION", module.HELP)
        )
        module.add_arguments(cmd)
        cmd.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (*_USER_ERRORS, OSError) as exc:
        if os.environ.get("PSPNET_DEBUG"):
            raise
        if not _printed_by_rank_0(exc):
            print(f"pspnet {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return exit_status(exc)


def _printed_by_rank_0(exc: BaseException) -> bool:
    """Under torchrun, an error every rank raised alike (marked by
    :func:`pspnet.engine.distributed.same_on_every_rank`) is printed by rank 0 alone; the other
    ranks exit with the same status silently."""
    return bool(getattr(exc, "same_on_every_rank", False)) and os.environ.get("RANK", "0") != "0"


if __name__ == "__main__":
    sys.exit(main())
