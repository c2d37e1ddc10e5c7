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


class Interrupted(BaseException):
    """Ctrl-C, and how far a stage got (``done`` of ``total`` tasks, all kept on disk).

    A ``BaseException`` like ``KeyboardInterrupt``, but its own type, so that the command-line
    framework passes it through to :func:`rayproc.cli.main` for the one closing line.
    """

    def __init__(self, done: int | None = None, total: int | None = None):
        super().__init__("" if done is None else f"{done} of {total} tasks done")
        self.done, self.total = done, total


def user_error(exc: BaseException) -> BaseException | None:
    """The user-caused error inside ``exc`` (a Ray task or actor error wraps the actor's own
    exception), or None when it is not one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, (RayprocError, ValueError, OSError)) and type(exc).__module__.split(".")[0] != "ray":
            return exc
        exc = getattr(exc, "cause", None) or exc.__cause__
    return None


__all__ = ["RayprocError", "InputError", "StoreError", "Interrupted", "user_error"]
