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
        peak = bragg_peak_position(intensity)
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


def target_lattice(
    intensity: np.ndarray,
    exclude: np.ndarray,
    *,
    size: int = 32,
    reach: float | None = None,
    step: int | None = None,
    windows: np.ndarray | None = None,
    bins: int = 10,
) -> tuple[np.ndarray, np.ndarray]:
    """Where to cut a target's own training portions: beside its gaps, where it holds signal.

    Fine-tuning on the volume to be inpainted ([1]_, Section 5) only helps if the portions look
    like the ones the gaps will be filled in: measured counts, next to the gap, not the photon
    noise of the periphery. Candidate origins lie on a lattice of step ``size // 4``; a
    candidate whose portion touches ``exclude`` (the real gaps) gets weight 0, any other

    .. math:: w = \\bar L \\, \\exp(-d / r),

    with :math:`\\bar L` the portion's mean ``log1p(counts)`` (0 for a portion without counts)
    and :math:`d` the distance (voxels) from the portion to the nearest excluded voxel, so
    bright portions right beside the gaps come first and those far away fade out over
    ``reach``.

    Parameters
    ----------
    intensity : ndarray, shape (z, y, x)
        The target's counts; values on excluded voxels are ignored (NaN allowed there).
    exclude : ndarray of bool, same shape
        True on the target's real gaps (and any voxel a portion must not touch).
    size : int, optional
        Portion edge.
    reach : float, optional
        Decay length :math:`r` of the weight away from the gaps (default ``size``); with no
        excluded voxel at all, :math:`d = 0` everywhere.
    step : int, optional
        Lattice step (default ``max(1, size // 4)``).
    windows : ndarray of int, shape (K, 3), optional
        The origins of the windows that will inpaint the gaps. Given, :math:`\\bar L` is
        replaced by an importance weight that gives the drawn portions the brightness
        distribution of these windows (the mean ``log1p(counts)`` of a window's measured
        voxels, in ``bins`` quantile bins; windows brighter or dimmer than every candidate count
        for the brightest or dimmest ones): as bright, or as dim, as the portions the model
        will fill, rather than the brightest ones.
    bins : int, optional
        Quantile bins of that match.

    Returns
    -------
    lattice : ndarray of int, shape (M, 3)
        Candidate origins.
    weights : ndarray of float64, shape (M,)
        Their weights (>= 0, not normalised).

    Raises
    ------
    InputError
        If shapes differ or a portion does not fit in the volume.

    Examples
    --------
    >>> counts = np.zeros((40, 40, 40)); counts[:, :, :8] = 9.0
    >>> gap = np.zeros(counts.shape, bool); gap[:, :, 36:] = True
    >>> lattice, w = target_lattice(counts, gap, size=16)
    >>> bool(w[lattice[:, 2] > 20].sum() == 0), bool(w[lattice[:, 2] == 0].min() > 0)
    (True, True)
    """
    from scipy import ndimage

    counts = np.asarray(intensity, dtype=np.float64)
    exclude = np.asarray(exclude, dtype=bool)
    if counts.shape != exclude.shape or counts.ndim != 3:
        raise InputError(f"intensity and exclude must share one (z, y, x) shape; got {counts.shape} and "
                         f"{exclude.shape} instead.")
    if any(s < size for s in counts.shape):
        raise InputError(f"portions of size {size} do not fit in a volume of shape {counts.shape}.")
    step = max(1, size // 4) if step is None else int(step)
    reach = float(size if reach is None else reach)
    n_positions = np.array(counts.shape) - size + 1
    lattice = np.stack(np.meshgrid(*[np.arange(0, p, step) for p in n_positions], indexing="ij"),
                       axis=-1).reshape(-1, 3)
    counts = np.where(exclude | ~np.isfinite(counts), 0.0, np.maximum(counts, 0.0))
    signal = _box_means(_summed_area(np.log1p(counts)), lattice, size)
    touching = _box_means(_summed_area(exclude.astype(np.float64)), lattice, size) > 0
    if exclude.any():
        to_gap = ndimage.distance_transform_edt(~exclude)  # voxels to the nearest excluded one
        centre = to_gap[tuple((lattice + size // 2).T)]
        distance = np.maximum(centre - size / 2, 0.0)
    else:
        distance = np.zeros(len(lattice))
    like = signal if windows is None or not len(windows) else _like_windows(
        signal, touching, counts, exclude, np.asarray(windows, dtype=np.int64).reshape(-1, 3), size, bins)
    weights = np.where(touching, 0.0, like * np.exp(-distance / reach))
    return lattice, weights


def _like_windows(signal, touching, counts, exclude, windows, size: int, bins: int) -> np.ndarray:
    """Importance weights that give the candidates the brightness distribution of the windows.

    The brightness of a window is the mean ``log1p(counts)`` of its measured voxels (its gap
    voxels are never read); candidates are binned by theirs on the windows' quantiles, and
    weighted by (windows in the bin) / (candidates in the bin); candidates dimmer or brighter
    than every window get 0, windows brighter (dimmer) than every candidate count as the
    brightest (dimmest) candidate. Falls back to ``signal`` when no candidate matches any window.
    """
    known = _box_means(_summed_area((~exclude).astype(np.float64)), windows, size)
    brightness = _box_means(_summed_area(np.log1p(counts)), windows, size) / np.maximum(known, 1e-12)
    free = ~touching
    # windows brighter (dimmer) than every candidate count for the brightest (dimmest) candidates
    brightness = np.clip(brightness, signal[free].min(), signal[free].max()) if free.any() else brightness
    edges = np.unique(np.quantile(brightness, np.linspace(0.0, 1.0, bins + 1)))
    if len(edges) < 2:  # all windows alike: one bin around them
        edges = np.array([edges[0] - 1e-6, edges[0] + 1e-6])
    window_share = np.histogram(brightness, edges)[0] / len(brightness)
    candidate_count = np.histogram(signal[free], edges)[0]
    index = np.clip(np.searchsorted(edges, signal, side="right") - 1, 0, len(edges) - 2)
    inside = (signal >= edges[0]) & (signal <= edges[-1])
    ratio = np.where(candidate_count > 0, window_share / np.maximum(candidate_count, 1), 0.0)
    like = np.where(inside & free, ratio[index], 0.0)
    return like if np.any(like > 0) else signal


def holdout_cells(n: int, fraction: float, rng) -> np.ndarray:
    """Which of ``n`` candidate positions are held out for validation (a seeded draw).

    Parameters
    ----------
    n : int
        Number of candidates (e.g. :func:`target_lattice`'s).
    fraction : float
        Share held out, in [0, 1).
    rng : numpy.random.Generator or int
        Random generator, or a seed for one.

    Returns
    -------
    held : ndarray of bool, shape (n,)
        True on the ``round(fraction n)`` held-out candidates.

    Examples
    --------
    >>> int(holdout_cells(10, 0.3, 0).sum())
    3
    """
    if not 0.0 <= float(fraction) < 1.0:
        raise InputError(f"the held-out fraction must lie in [0, 1); got {fraction!r}.")
    held = np.zeros(int(n), dtype=bool)
    held[np.random.default_rng(rng).permutation(int(n))[:round(float(fraction) * int(n))]] = True
    return held


def draw_target_origins(lattice, weights, exclude, n: int, rng, *, size: int = 32,
                        step: int | None = None) -> np.ndarray:
    """Draw ``n`` portion origins from weighted lattice candidates, jittered within a step.

    Candidates are drawn with probability proportional to ``weights`` (with replacement) and
    moved by a random jitter of less than one lattice step on each axis, which is undone
    where the jittered portion would touch ``exclude``.

    Parameters
    ----------
    lattice : ndarray of int, shape (M, 3)
        Candidate origins (:func:`target_lattice`).
    weights : ndarray, shape (M,)
        Their weights; at least one must be > 0.
    exclude : ndarray of bool, shape (z, y, x)
        Voxels no portion may touch.
    n : int
        Number of origins.
    rng : numpy.random.Generator or int
        Random generator, or a seed for one.
    size, step : int, optional
        Portion edge and lattice step (default ``max(1, size // 4)``).

    Returns
    -------
    origins : ndarray of int, shape (n, 3)

    Raises
    ------
    InputError
        If no candidate has a positive weight.
    """
    rng = np.random.default_rng(rng)
    weights = np.asarray(weights, dtype=np.float64)
    exclude = np.asarray(exclude, dtype=bool)
    if not np.any(weights > 0):
        raise InputError(f"found no portions of size {size} that hold counts and do not touch the gaps; "
                         "check the gap mask (or use a smaller portion).")
    step = max(1, size // 4) if step is None else int(step)
    corners = np.asarray(lattice)[rng.choice(len(weights), size=int(n), p=weights / weights.sum())]
    last = np.array(exclude.shape) - size
    jittered = np.minimum(corners + rng.integers(0, step, size=corners.shape), last)
    touching = _box_means(_summed_area(exclude.astype(np.float64)), jittered, size) > 0
    return np.where(touching[:, None], corners, jittered)


def peak_relative_origins(intensity, offsets, n: int, rng, *, size: int = 32, jitter: int = 0) -> np.ndarray:
    """Portion origins placed relative to a volume's Bragg peak as ``offsets`` say.

    Rehearsing a target's gap geometry on other volumes: with ``offsets`` the target's
    inpainting windows minus its own peak, portions of another volume sit where those windows
    would sit around its peak (a gap through the peak stays through the peak, a gap 20 voxels
    beside it stays beside it), clipped to fit.

    Parameters
    ----------
    intensity : ndarray, shape (z, y, x)
        The volume; its peak is its brightest voxel (NaN ignored).
    offsets : ndarray of int, shape (K, 3)
        Origins relative to the peak, drawn uniformly.
    n : int
        Number of origins.
    rng : numpy.random.Generator or int
        Random generator, or a seed for one.
    size : int, optional
        Portion edge.
    jitter : int, optional
        A uniform shift in ``[-jitter, jitter]`` per axis.

    Returns
    -------
    origins : ndarray of int, shape (n, 3)

    Examples
    --------
    >>> volume = np.zeros((40, 40, 40)); volume[20, 20, 20] = 5.0
    >>> peak_relative_origins(volume, np.array([[-8, -8, -30]]), 1, 0, size=16).tolist()
    [[12, 12, 0]]
    """
    rng = np.random.default_rng(rng)
    intensity = np.asarray(intensity)
    offsets = np.asarray(offsets, dtype=np.int64).reshape(-1, intensity.ndim)
    if not len(offsets) or any(s < size for s in intensity.shape):
        raise InputError(f"need >= 1 offset and portions of size {size} that fit in {intensity.shape}; got "
                         f"{len(offsets)} offsets.")
    peak = bragg_peak_position(intensity)
    origins = peak + offsets[rng.integers(0, len(offsets), size=int(n))]
    if jitter:
        origins = origins + rng.integers(-int(jitter), int(jitter) + 1, size=origins.shape)
    return np.clip(origins, 0, np.array(intensity.shape) - size)


def gap_templates(mask, windows, *, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """The target's gaps as its inpainting windows see them: the distinct mask crops, counted.

    Training portions cut by these masks (instead of random lines and crosses) carry gaps of
    the target's own orientation, width and place in the window: a line where the target has
    a line, a cross where its gaps cross, the partial planes of windows beside a crossing.

    Parameters
    ----------
    mask : ndarray of bool, shape (z, y, x)
        True on the target's missing voxels.
    windows : ndarray of int, shape (K, 3)
        The window origins that will inpaint it (e.g.
        :func:`rayproc.bcdi.inpaint.plan_windows`).
    size : int, optional
        Window edge.

    Returns
    -------
    templates : ndarray of bool, shape (T, size, size, size)
        The distinct crops of ``mask`` at ``windows``, each with a missing voxel, in order of
        first appearance.
    counts : ndarray of int, shape (T,)
        How many windows show each.

    Examples
    --------
    >>> mask = np.zeros((8, 8, 12), bool); mask[:, :, 5:7] = True
    >>> templates, counts = gap_templates(mask, np.array([[0, 0, 2], [0, 0, 2]]), size=8)
    >>> templates.shape, counts.tolist(), int(templates[0].sum())
    ((1, 8, 8, 8), [2], 128)
    """
    mask = np.asarray(mask, dtype=bool)
    seen: dict[bytes, int] = {}
    templates, counts = [], []
    for origin in np.asarray(windows, dtype=np.int64).reshape(-1, mask.ndim):
        window = crop(mask, origin, size)
        if not window.any():
            continue
        key = np.packbits(window).tobytes()
        if key in seen:
            counts[seen[key]] += 1
        else:
            seen[key] = len(templates)
            templates.append(window.copy())
            counts.append(1)
    if not templates:
        return np.zeros((0,) + (size,) * mask.ndim, bool), np.zeros(0, np.int64)
    return np.stack(templates), np.array(counts, dtype=np.int64)


def template_width(template) -> int:
    """The width of a gap template: the most wholly missing planes perpendicular to one axis (>= 1).

    A line of width ``w`` gives ``w``; so does a cross of two planes of width ``w``. A mask
    with no whole missing plane (dead pixels) gives 1.

    Examples
    --------
    >>> t = np.zeros((8, 8, 8), bool); t[:, :, 2:5] = True; t[:, 6:, :] = True
    >>> template_width(t)
    3
    """
    template = np.asarray(template, dtype=bool)
    full = [int(np.all(template, axis=tuple(a for a in range(template.ndim) if a != axis)).sum())
            for axis in range(template.ndim)]
    return max(1, max(full, default=0))


def bragg_peak_position(intensity) -> np.ndarray:
    """Index of the Bragg peak: the brightest voxel of the intensity, 3x3x3-median then -mean filtered.

    The median ignores an isolated hot pixel, which can outshine the peak itself (about 6 % of
    the simulated training volumes); NaN counts as no signal.

    Examples
    --------
    >>> volume = np.zeros((9, 9, 9)); volume[3:6, 3:6, 3:6] = 100.0; volume[0, 0, 8] = 1e6
    >>> bragg_peak_position(volume).tolist()
    [4, 4, 4]
    """
    from scipy import ndimage as ndi

    counts = np.nan_to_num(np.asarray(intensity, dtype=np.float32), nan=0.0)
    smoothed = ndi.uniform_filter(ndi.median_filter(counts, size=3, mode="nearest"), size=3, mode="nearest")
    if not smoothed.any():
        smoothed = counts
    return np.array(np.unravel_index(int(np.argmax(smoothed)), counts.shape))


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
    "draw_target_origins",
    "gap_templates",
    "holdout_cells",
    "peak_relative_origins",
    "normalise_batch",
    "normalise_portion",
    "portion_origins",
    "target_lattice",
    "template_width",
]
