"""The ``pspnet`` console script: parses arguments and dispatches to ``pspnet.commands.*``.

Each module in :mod:`pspnet.commands` defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; it is found automatically, so adding a subcommand is adding one module.
User mistakes (:class:`pspnet.errors.InputError`, ``ValueError``, missing files) print one line
and exit with status 2; set ``PSPNET_DEBUG=1`` to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
from types import ModuleType

from pspnet import __version__

__all__ = ["build_parser", "main"]

_USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def _command_modules() -> list[ModuleType]:
    import pspnet.commands as package

    names = sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"pspnet.commands.{name}") for name in names]


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
    except _USER_ERRORS as exc:
        if os.environ.get("PSPNET_DEBUG"):
            raise
        print(f"pspnet {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
