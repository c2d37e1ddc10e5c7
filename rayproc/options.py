"""One resolver for string options (after MONAI's ``look_up_option``)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def look_up_option(value: str, supported: Iterable[str], *, name: str = "option") -> str:
    """Return ``value`` if it is one of ``supported``, else raise a ValueError naming it.

    Examples
    --------
    >>> look_up_option("mean", ["mean", "gaussian"], name="blend")
    'mean'
    """
    supported = list(supported)
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string; got {type(value).__name__} instead.")
    if value in supported:
        return value
    close = difflib.get_close_matches(value, supported, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ValueError(
        f"Unsupported {name} {value!r}; expected one of {', '.join(map(repr, supported))}.{hint}"
    )


__all__ = ["look_up_option"]
