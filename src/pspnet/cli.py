"""The ``pspnet`` console script: parses arguments and dispatches to ``pspnet.commands.*``.

Each module in :mod:`pspnet.commands` defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args) -> int``; it is found automatically, so adding a subcommand is adding one module.
User mistakes (:class:`pspnet.errors.InputError`, ``ValueError``, missing files) print one line
and exit with status 2. Failures of the machine rather than the input (:class:`pspnet.errors.StorageError`
such as a full disk, other ``OSError``) print one line and exit with status 1. Set ``PSPNET_DEBUG=1``
to see the traceback. Under torchrun, an error that every rank raised alike (a config mistake) is
printed by rank 0 only.

Stopping: Ctrl-C (SIGINT) prints "interrupted" and exits 130; SIGTERM (``kill``, ``timeout``, Slurm,
Kubernetes, torchrun stopping its workers) is turned into the same ``KeyboardInterrupt`` while a
command runs, so the same clean-up happens (no temporary files, no half-written result sets), and
exits 143 (128 + 15) with "terminated"; a second SIGTERM does not cut that clean-up short. A closed
stdout (``pspnet ... | head``) ends the command quietly with status 141 (128 + SIGPIPE), the status
the shell shows for ``cat``, ``yes`` and other tools stopped by the closed pipe.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import pkgutil
import select
import signal
import sys
import threading
from collections.abc import Iterator
from types import ModuleType

from pspnet import __version__
from pspnet.errors import PeerLostError, PSPNetError, StorageError

__all__ = ["Terminated", "build_parser", "exit_status", "main", "one_line"]

_USER_ERRORS = (
    ValueError,
    FileNotFoundError,
    NotADirectoryError,
    IsADirectoryError,
    PermissionError,
    PSPNetError,
)
_WORKER_PREFIX = "Caught "  # torch DataLoader: "Caught DataError in DataLoader worker process 0.\n..."
_SIGTERM_STATUS = 128 + 15
_SIGPIPE_STATUS = 128 + 13


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
    try:
        args = parser.parse_args(argv)
    except SystemExit:  # --help, --version, a usage error: printed, maybe into a closed pipe
        if not _flush_stdout():
            raise SystemExit(_SIGPIPE_STATUS) from None
        raise
    if not getattr(args, "_run", None):
        parser.print_help()
        return 2 if _flush_stdout() else _SIGPIPE_STATUS
    try:
        with _sigterm_as_interrupt():
            status = int(args._run(args) or 0)
            # Flushed here, where a closed pipe is caught, rather than at interpreter exit.
            return status if _flush_stdout() else _SIGPIPE_STATUS
    except KeyboardInterrupt as exc:
        if isinstance(exc, Terminated):
            print("terminated", file=sys.stderr)
            return _SIGTERM_STATUS
        print("interrupted", file=sys.stderr)
        return 130
    except (*_USER_ERRORS, OSError) as exc:
        if isinstance(exc, BrokenPipeError) and _stdout_closed():
            _discard_stdout()
            return _SIGPIPE_STATUS
        if os.environ.get("PSPNET_DEBUG"):
            raise
        if not _printed_by_rank_0(exc):
            print(f"pspnet {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return exit_status(exc)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's ``KeyboardInterrupt`` so that every ``except BaseException`` /
    ``finally`` clean-up runs (temporary files removed, an image's outputs all or none)."""


def _raise_terminated(signum: int, frame: object) -> None:
    # Further SIGTERMs are ignored until the command has ended: one often comes twice (Slurm signals
    # every process of a step, and torchrun forwards its own), and a second raise would cut the
    # clean-up of the first short. A scheduler's SIGKILL after its grace period still ends a hang.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated`; the previous handler is restored after.

    Python's default for SIGTERM is to die at once, skipping all clean-up. Only the default
    disposition is replaced: a handler someone else installed (or an inherited "ignore") is theirs.
    Signal handlers can only be set from the main thread; elsewhere nothing changes. A DataLoader
    worker forked meanwhile inherits the handler and, like on Ctrl-C, ends quietly.
    """
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        yield
        return
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stdout_closed() -> bool:
    """Whether stdout is a pipe (or socket) whose reader has gone, e.g. ``pspnet ... | head``.

    A ``BrokenPipeError`` can also come from elsewhere (a DataLoader worker's pipe): that one is a
    real failure and is reported. Polling a pipe whose read end is closed reports POLLERR.
    """
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if not hasattr(select, "poll"):  # Windows: no poll on pipes; most likely stdout it was
        return True
    poller = select.poll()
    poller.register(fd, 0)  # POLLERR and POLLHUP are reported whatever the mask
    return any(event & (select.POLLERR | select.POLLHUP) for _, event in poller.poll(0))


def _flush_stdout() -> bool:
    """Flush stdout; False when its reader has gone (stdout is then discarded)."""
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        if not _stdout_closed():
            raise
        _discard_stdout()
        return False
    return True


def _discard_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's final flush of what is still
    buffered does not fail again ("Exception ignored ... BrokenPipeError"), as the Python docs'
    "Note on SIGPIPE" recommends."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, sys.stdout.fileno())
    finally:
        os.close(devnull)


def _printed_by_rank_0(exc: BaseException) -> bool:
    """Under torchrun, an error every rank raised alike (marked by
    :func:`pspnet.engine.distributed.same_on_every_rank`) is printed by rank 0 alone; the other
    ranks exit with the same status silently."""
    return bool(getattr(exc, "same_on_every_rank", False)) and os.environ.get("RANK", "0") != "0"


if __name__ == "__main__":
    sys.exit(main())
