"""Exceptions that mean "the user's input is wrong", reported by the CLI as one line, no traceback."""

from __future__ import annotations

__all__ = ["DataError", "InputError", "PSPNetError", "PeerLostError", "StorageError", "UnsafeFileError"]


class PSPNetError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(PSPNetError, ValueError):
    """A bad argument, file or value supplied by the user. The message names it and the fix."""


class DataError(InputError):
    """A dataset file is missing, unreadable or inconsistent. The message names the file."""


class UnsafeFileError(InputError):
    """A file would need arbitrary code execution (a pickle with objects) to load; refused."""


class StorageError(PSPNetError, OSError):
    """Writing a file failed for a reason outside the program: disk full, quota, I/O error.

    Raised by every writer of this package (through :func:`pspnet.io.checkpoint.atomic_write`)
    after the temporary file has been removed, so nothing partial is left under the final name.
    It is an ``OSError`` (with ``errno`` set when known) so generic handlers still catch it; the
    message names the file, the cause and what survived (e.g. the previous checkpoint).
    """

    def __init__(self, message: str, errno: int | None = None) -> None:
        super().__init__(message)
        self.errno = errno


class PeerLostError(PSPNetError, RuntimeError):
    """Another rank of a distributed job stopped answering (it died, or the network failed).

    torchrun stops the surviving ranks itself and names the dead one; a job started some other way
    (one process per machine by hand, a cluster scheduler) gets this one-line error on each
    surviving rank instead of the communication library's traceback.
    """
