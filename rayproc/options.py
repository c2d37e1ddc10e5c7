"""Option checks shared by the pipelines: string options (after MONAI's ``look_up_option``), counts."""

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


def check_counts(**counts) -> None:
    """Raise an InputError naming the first count below 1, as its CLI option (``batch_size`` -> ``--batch-size``).

    Examples
    --------
    >>> check_counts(workers=2, batch_size=8)
    """
    from rayproc.errors import InputError

    for name, value in counts.items():
        if int(value) < 1:
            raise InputError(f"--{name.replace('_', '-')} must be >= 1; got {value}.")


__all__ = ["check_counts", "look_up_option"]
