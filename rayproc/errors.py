"""Errors a user can act on.

Every error raised for bad input is a ``RayprocError`` (or a ``ValueError`` /
``TypeError``); the CLI prints it as one line and exits non-zero.
"""

from __future__ import annotations


class RayprocError(Exception):
    """An error caused by the user's input or environment, reported as one line."""


class InputError(RayprocError, ValueError):
    """Bad input data: NaN, wrong shape, a mask that does not fit, an unreadable file."""


class StoreError(RayprocError):
    """A dataset store that is missing, corrupt, incomplete or not writable."""


__all__ = ["RayprocError", "InputError", "StoreError"]
