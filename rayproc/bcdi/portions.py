"""Portions of a diffraction volume: where to crop them and how to normalise them.

The inpainting model of Masto et al. [1]_ works on cubic portions (32^3 voxels) cut out of a
BCDI diffraction pattern, each put on a log scale and stretched to [0, 1] on its own. Only
measured voxels may set that scale: voxels inside a detector gap hold no information (often
zeros or NaN) and must neither shift the scale nor reach the model.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayproc.errors import InputError


def portion_origins(
    shape,
    n: int,
    rng,
    *,
    size: int = 32,
    prefer_periphery: bool = False,
    intensity: np.ndarray | None = None,
    peak_fraction: float = 0.0,
    peak_sigma: float = 8.0,
) -> np.ndarray:
    """Draw origins of ``size``-wide cubic portions that lie wholly inside a volume.

    Parameters
    ----------
    shape : tuple of int
        Shape of the volume (any rank).
    n : int
        Number of origins to draw (with replacement).
    rng : numpy.random.Generator or int or None
        Random generator, or a seed for one.
    size : int, optional
        Edge length of a portion in voxels.
    prefer_periphery : bool, optional
        If False (default) every position is equally likely. If True, portions are drawn on a
        lattice of step ``max(1, size // 4)`` (plus a random jitter of less than one step)
        with probability proportional to ``f / (1 + L)``, where ``L`` is the portion's mean
        ``log1p(intensity)`` and ``f`` the fraction of its voxels with counts: this favours the
        dim, peripheral regions away from the Bragg peak, where inpainting is hardest [1]_,
        while never drawing portions that hold no signal at all. Needs ``intensity``.
    intensity : ndarray, optional
        The volume's intensities (counts >= 0; NaN counts as no signal), shape ``shape``.
    peak_fraction : float, optional
        Fraction (0..1) of the origins drawn instead around the Bragg peak (the brightest voxel
        of ``intensity``): portion centres ~N(peak, ``peak_sigma``) on each axis, clipped so the
        portion fits, as in the evaluation protocol of [1]_ (Table 1). Needs ``intensity``.
    peak_sigma : float, optional
        Std (voxels) of those centres around the peak.

    Returns
    -------
    origins : ndarray of int, shape (n, len(shape))
        First index of each portion along each axis.

    Raises
    ------
    InputError
        If a portion does not fit in the volume, or ``prefer_periphery`` is set without a
        matching ``intensity`` (or the intensity holds no counts).

    Examples
    --------
    >>> portion_origins((64, 40, 33), 2, 0).shape
    (2, 3)
    """
    shape = tuple(int(s) for s in shape)
    rng = np.random.default_rng(rng)
    if size < 1 or any(s < size for s in shape):
        raise InputError(f"portions of size {size} do not fit in a volume of shape {shape}.")
    if not 0.0 <= float(peak_fraction) <= 1.0:
        raise InputError(f"peak_fraction must be in [0, 1]; got {peak_fraction!r}.")
    n_positions = np.array(shape) - size + 1
    n_peak = int(rng.binomial(n, float(peak_fraction))) if peak_fraction > 0 else 0
    if n_peak:
        if intensity is None or np.shape(intensity) != shape:
            raise InputError(f"peak_fraction needs an intensity of shape {shape}.")
        peak = np.array(np.unravel_index(int(np.nanargmax(np.nan_to_num(intensity, nan=-np.inf))), shape))
        centres = np.rint(peak + rng.normal(0.0, float(peak_sigma), size=(n_peak, len(shape)))).astype(int)
        near_peak = np.clip(centres - size // 2, 0, n_positions - 1)
        rest = portion_origins(shape, n - n_peak, rng, size=size, prefer_periphery=prefer_periphery,
                               intensity=intensity)
        return rng.permutation(np.concatenate([near_peak, rest]))
    if not prefer_periphery:
        return rng.integers(0, n_positions, size=(n, len(shape)))
    if intensity is None or np.shape(intensity) != shape:
        got = None if intensity is None else np.shape(intensity)
        raise InputError(
            f"prefer_periphery needs an intensity of shape {shape}; got {got} instead."
        )
    step = max(1, size // 4)
    lattice = np.stack(
        np.meshgrid(*[np.arange(0, p, step) for p in n_positions], indexing="ij"), axis=-1
    ).reshape(-1, len(shape))
    counts = np.nan_to_num(np.asarray(intensity, dtype=np.float64), nan=0.0)
    lit = _summed_area((counts > 0).astype(np.float64))
    log_counts = _summed_area(np.log1p(np.maximum(counts, 0.0)))
    weights = _box_means(lit, lattice, size) / (1.0 + _box_means(log_counts, lattice, size))
    if not np.any(weights > 0):
        raise InputError("prefer_periphery needs an intensity with some counts; got none.")
    corners = lattice[rng.choice(len(lattice), size=n, p=weights / weights.sum())]
    jittered = np.minimum(corners + rng.integers(0, step, size=corners.shape), n_positions - 1)
    # Undo the jitter where it would leave the signal.
    return np.where((_box_means(lit, jittered, size) > 0)[:, None], jittered, corners)


def _summed_area(values: np.ndarray) -> np.ndarray:
    """Summed-area table of ``values``, zero-padded in front: ``table[i] = values[:i].sum()``."""
    table = np.pad(values, [(1, 0)] * values.ndim)
    for axis in range(values.ndim):
        np.cumsum(table, axis=axis, out=table)
    return table


def _box_means(table: np.ndarray, origins: np.ndarray, size: int) -> np.ndarray:
    """Means over the ``size``-wide boxes at ``origins`` (n, ndim), from a summed-area table."""
    ndim = origins.shape[1]
    sums = np.zeros(len(origins))
    for corner in np.ndindex(*([2] * ndim)):  # inclusion-exclusion over the box corners
        sums += (-1) ** (ndim - sum(corner)) * table[tuple((origins + size * np.array(corner)).T)]
    return sums / size**ndim


def crop(volume: np.ndarray, origin, size: int = 32) -> np.ndarray:
    """Return the ``size``-wide cubic portion of ``volume`` starting at ``origin`` (a view).

    Parameters
    ----------
    volume : ndarray
        Array of any rank.
    origin : sequence of int
        First index along each axis, one per axis of ``volume``.
    size : int, optional
        Edge length of the portion.

    Returns
    -------
    portion : ndarray, shape (size,) * volume.ndim
        A view into ``volume``.

    Raises
    ------
    InputError
        If the portion does not lie wholly inside ``volume``.
    """
    origin = tuple(int(o) for o in origin)
    if len(origin) != volume.ndim or any(
        o < 0 or o + size > s for o, s in zip(origin, volume.shape)
    ):
        raise InputError(
            f"a portion of size {size} at {origin} does not fit in a volume of shape "
            f"{volume.shape}."
        )
    return volume[tuple(slice(o, o + size) for o in origin)]


@dataclass(frozen=True)
class NormStats:
    """Log-intensity range that maps a portion onto [0, 1].

    ``lo`` and ``hi`` are the min and max of ``log1p(I)`` over the measured voxels: floats for
    one portion, arrays of shape (B,) for a batch.
    """

    lo: float | np.ndarray
    hi: float | np.ndarray

    def to_dict(self) -> dict:
        return {"lo": np.asarray(self.lo).tolist(), "hi": np.asarray(self.hi).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "NormStats":
        def parse(value):
            return np.asarray(value, dtype=np.float64) if isinstance(value, list) else float(value)

        return cls(parse(d["lo"]), parse(d["hi"]))


def normalise_batch(portions: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, NormStats]:
    """Log-scale each portion of a batch and stretch its measured voxels to [0, 1].

    ``x = (log1p(I) - lo) / (hi - lo)`` where ``lo`` and ``hi`` are the min and max of
    ``log1p(I)`` over the portion's measured voxels only, as in [1]_; unmeasured voxels are set
    to 0. A portion whose measured voxels are all equal (``hi == lo``) maps to 0.

    Parameters
    ----------
    portions : ndarray, shape (B, ...)
        Intensities (counts >= 0). Values in unmeasured voxels are ignored (NaN allowed).
    known : ndarray of bool, shape (B, ...)
        True where the voxel was measured.

    Returns
    -------
    x : ndarray of float64, shape (B, ...)
        Normalised portions in [0, 1], 0 on unmeasured voxels.
    stats : NormStats
        ``lo`` and ``hi`` as arrays of shape (B,), for :func:`denormalise_portion`.

    Raises
    ------
    InputError
        If shapes differ, a portion has no measured voxel, or a measured voxel is negative or
        not finite.
    """
    portions = np.asarray(portions, dtype=np.float64)
    known = np.asarray(known, dtype=bool)
    if portions.shape != known.shape or portions.ndim < 2:
        raise InputError(
            f"portions and known must share one (B, ...) shape; got {portions.shape} and "
            f"{known.shape} instead."
        )
    spatial = tuple(range(1, portions.ndim))
    if not np.all(known.any(axis=spatial)):
        raise InputError("every portion needs at least one measured voxel; got one with none.")
    measured = portions[known]
    if not np.all(np.isfinite(measured) & (measured >= 0)):
        raise InputError(
            f"measured intensities must be finite and >= 0; got min {float(np.nanmin(measured))!r} "
            f"and {int(np.sum(~np.isfinite(measured)))} non-finite value(s)."
        )
    log_intensity = np.log1p(portions, out=np.zeros_like(portions), where=known)
    lo = np.where(known, log_intensity, np.inf).min(axis=spatial)
    hi = np.where(known, log_intensity, -np.inf).max(axis=spatial)
    expand = (slice(None),) + (None,) * len(spatial)
    span = np.where(hi > lo, hi - lo, 1.0)
    x = np.where(known, (log_intensity - lo[expand]) / span[expand], 0.0)
    return x, NormStats(lo, hi)


def normalise_portion(portion: np.ndarray, known: np.ndarray) -> tuple[np.ndarray, NormStats]:
    """Log-scale one portion and stretch its measured voxels to [0, 1].

    The single-portion form of :func:`normalise_batch` (same rules); ``stats`` holds floats.

    Parameters
    ----------
    portion : ndarray
        Intensities (counts >= 0), any shape.
    known : ndarray of bool, same shape
        True where the voxel was measured.

    Returns
    -------
    x : ndarray of float64, same shape
        Normalised portion in [0, 1], 0 on unmeasured voxels.
    stats : NormStats
        Float ``lo`` and ``hi`` of ``log1p(I)`` over the measured voxels.

    Examples
    --------
    >>> x, stats = normalise_portion(np.array([0.0, 9.0, 99.0]), np.array([True, True, False]))
    >>> x.tolist()
    [0.0, 1.0, 0.0]
    """
    x, stats = normalise_batch(np.asarray(portion)[None], np.asarray(known)[None])
    return x[0], NormStats(float(stats.lo[0]), float(stats.hi[0]))


def denormalise_portion(x, stats: NormStats) -> np.ndarray:
    """Invert :func:`normalise_portion` / :func:`normalise_batch`: ``expm1(x (hi - lo) + lo)``.

    Parameters
    ----------
    x : ndarray
        Normalised portion, or batch of shape (B, ...) when ``stats`` holds arrays of shape (B,).
    stats : NormStats
        The range returned by the normalisation.

    Returns
    -------
    intensity : ndarray of float64, shape of ``x``
        Intensities (counts); exact on measured voxels up to float64 rounding.
    """
    x = np.asarray(x, dtype=np.float64)
    lo, hi = np.asarray(stats.lo, dtype=np.float64), np.asarray(stats.hi, dtype=np.float64)
    expand = (...,) + (None,) * (x.ndim - lo.ndim)
    return np.expm1(x * (hi - lo)[expand] + lo[expand])


__all__ = [
    "NormStats",
    "crop",
    "denormalise_portion",
    "normalise_batch",
    "normalise_portion",
    "portion_origins",
]
