"""Exceptions that mean "the user's input is wrong", reported by the CLI as one line, no traceback."""

from __future__ import annotations

__all__ = ["DataError", "InputError", "PSPNetError", "UnsafeFileError"]


class PSPNetError(Exception):
    """Base class of every error this package raises on purpose."""


class InputError(PSPNetError, ValueError):
    """A bad argument, file or value supplied by the user. The message names it and the fix."""


class DataError(InputError):
    """A dataset file is missing, unreadable or inconsistent. The message names the file."""


class UnsafeFileError(InputError):
    """A file would need arbitrary code execution (a pickle with objects) to load; refused."""
