"""Statistics of diffraction portions, to set real scans and simulated ones side by side.

The inpainting model of Masto et al. [1]_ is trained on simulated patterns and applied to
measured ones, so the simulated portions should look like measured ones: the same photon
counts, background, oversampling (fringe period in pixels) and fringe contrast. The functions
here measure those quantities the same way on any array of counts, real or simulated:

- :func:`oversampling`: fringe period per axis, from the extent of the autocorrelation.
- :func:`fringe_visibility`: contrast of the fringes per axis; blur lowers it.
- :func:`background_level`: flat background per voxel.
- :func:`hot_pixel_mask`: isolated spikes.
- :func:`portion_statistics`: all of the above (plus total counts, zero fraction and maximum)
  for a batch of portions.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
.. [2] J. Miao, D. Sayre and H. N. Chapman, "Phase retrieval from the magnitude of the Fourier
   transforms of nonperiodic objects", J. Opt. Soc. Am. A 15 (1998) 1662-1669.
   :doi:`10.1364/JOSAA.15.001662`
.. [3] J. N. Clark, X. Huang, R. Harder and I. K. Robinson, "High-resolution three-dimensional
   partially coherent diffraction imaging", Nat. Commun. 3 (2012) 993.
   :doi:`10.1038/ncomms1994`
"""

from __future__ import annotations

import math

import numpy as np
import scipy.ndimage
import scipy.signal

from rayproc.errors import InputError


def _counts(volume, name: str = "volume") -> np.ndarray:
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim < 1 or volume.size == 0:
        raise InputError(f"{name} must be a non-empty array; got shape {volume.shape}.")
    if not np.all(np.isfinite(volume)):
        raise InputError(f"{name} has NaN or infinite values.")
    return volume


def _per_axis(value, ndim: int, name: str) -> np.ndarray:
    value = np.broadcast_to(np.asarray(value, dtype=np.float64), (ndim,)) if np.ndim(value) == 0 \
        else np.asarray(value, dtype=np.float64)
    if value.shape != (ndim,):
        raise InputError(f"{name} must be a scalar or {ndim} values; got {np.shape(value)}.")
    return value


def autocorrelation(volume, *, background: float = 0.0) -> np.ndarray:
    """Magnitude of the autocorrelation of the object: ``|IFFT(intensity)|``, centred.

    Parameters
    ----------
    volume : ndarray
        Intensity in counts, any rank.
    background : float, optional
        Flat background per voxel, subtracted first (it only adds a spike at the origin).

    Returns
    -------
    autocorrelation : ndarray of float64, same shape
        Normalised to 1 at the origin, which sits at index ``n // 2`` on every axis
        (``fftshift`` convention). All zeros when the intensity sums to zero.

    Notes
    -----
    By the Wiener-Khinchin theorem the inverse Fourier transform of a far-field intensity is
    the autocorrelation of the scattering object; its support is twice the object's extent
    [2]_. A Gaussian blur of the intensity (partial coherence [3]_, detector point spread)
    multiplies it by a Gaussian, and a strain phase also damps it away from the origin.

    Examples
    --------
    >>> box = np.zeros(16); box[:4] = 1.0
    >>> intensity = np.abs(np.fft.fft(box)) ** 2
    >>> np.round(autocorrelation(intensity)[8:13], 2)  # (L - |r|) / L for a box of L = 4
    array([1.  , 0.75, 0.5 , 0.25, 0.  ])
    """
    volume = _counts(volume) - float(background)
    corr = np.abs(np.fft.ifftn(volume))
    origin = corr.flat[0]
    return np.fft.fftshift(corr / origin if origin > 0 else corr)


def oversampling(volume, threshold: float = 0.05, *, background: float = 0.0, taper: float = 0.5) -> np.ndarray:
    """Oversampling ratio (fringe period in pixels) per axis, from the autocorrelation's extent.

    Parameters
    ----------
    volume : ndarray
        Intensity in counts, any rank (a whole pattern or a portion of it).
    threshold : float, optional
        Fraction of the autocorrelation's origin value where its extent ends, in (0, 1).
    background : float, optional
        Flat background per voxel, subtracted first.
    taper : float, optional
        Fraction of each axis (half at each end) over which the background-free intensity is
        brought to zero by a cosine (a Tukey window) before the transform; 0 for none.

    Returns
    -------
    oversampling : ndarray of float64, shape (volume.ndim,)
        ``2 n_i / w_i`` along each axis i, with ``n_i`` the volume's length and ``w_i`` the
        width (linearly interpolated at ``threshold``) of the autocorrelation projected on
        axis i (its maximum over the other axes). At least 2: an autocorrelation wider than
        the volume is aliased, so 2 reads "2 or less". NaN for an intensity summing to zero.

    Notes
    -----
    The autocorrelation of a crystal of extent ``L_i`` spans ``2 L_i``, and the oversampling
    ratio is ``os_i = n_i / L_i`` [2]_, the convention of the simulator
    (:mod:`rayproc.bcdi.diffraction`) and of Masto et al. [1]_. The projection measures the
    bounding-box extent, as the simulator defines it. The thresholded width is shorter than
    ``2 L_i``, so the measured value is an *apparent* oversampling, above the nominal one:
    by ``1 / (1 - threshold)`` for a box, whose autocorrelation falls linearly to zero, and
    by more for rounded, rotated or strained crystals, whose autocorrelation falls faster
    (about 1.3-1.5x for the simulator's crystals). A blur of the intensity shortens it too
    (see :func:`autocorrelation`). Compare real and simulated data measured the same way.

    A portion cut out of a pattern is not periodic: a bright face (the Bragg peak cut by the
    portion's edge, or the envelope decaying across it) meets a dim one, and that jump rings
    along the whole autocorrelation, which then reads as aliased (2). The taper removes the
    jump at the cost of a slight widening (the window's transform is a few voxels wide): on
    the simulator's 32^3 portions the default brings the 10th percentile of measured /
    nominal from 0.5-0.75 up to 1.0, and lowers large ratios (10 on 32 voxels) by ~15 %.

    Poisson noise puts a floor of about ``1 / sqrt(total counts)`` under the normalised
    autocorrelation, so the extent is only meaningful for ``total counts >> 1 /
    threshold**2`` (400 at the default); a hot pixel of ``c`` counts adds a flat floor of
    ``c / total counts`` (mask it first, see :func:`hot_pixel_mask`).

    Examples
    --------
    A box of 8 x 4 voxels on a 32 x 32 grid is oversampled 4 and 8 times:

    >>> box = np.zeros((32, 32)); box[:8, :4] = 1.0
    >>> intensity = np.fft.fftshift(np.abs(np.fft.fft2(box)) ** 2)
    >>> np.round(oversampling(intensity, taper=0), 2)  # 4 / 0.95 and 8 / 0.95
    array([4.21, 8.42])
    >>> np.round(oversampling(intensity), 1)  # with the default taper
    array([4.2, 8.3])
    """
    volume = _counts(volume)
    threshold = float(threshold)
    if not 0.0 < threshold < 1.0:
        raise InputError(f"threshold must lie in (0, 1); got {threshold!r}.")
    if not 0.0 <= taper <= 1.0:
        raise InputError(f"taper must lie in [0, 1]; got {taper!r}.")
    volume = volume - background
    if volume.sum() <= 0:
        return np.full(volume.ndim, np.nan)
    if taper > 0:
        for axis, n in enumerate(volume.shape):
            window = scipy.signal.windows.tukey(n, taper, sym=False)
            volume = volume * window.reshape([-1 if a == axis else 1 for a in range(volume.ndim)])
    corr = autocorrelation(volume)
    result = np.empty(volume.ndim)
    for axis in range(volume.ndim):
        others = tuple(a for a in range(volume.ndim) if a != axis)
        profile = corr.max(axis=others) if others else corr
        n = profile.size
        centre = n // 2
        width = 0.0
        for side in (profile[centre:], profile[centre::-1]):  # outwards from the origin
            below = np.flatnonzero(side <= threshold)
            if below.size == 0:  # never drops to the threshold on this side: aliased
                width = float(n)
                break
            k = below[0]
            width += k - 1 + (side[k - 1] - threshold) / (side[k - 1] - side[k])
        result[axis] = 2.0 * n / min(width, n)
    return result


def fringe_visibility(volume, period, *, min_counts: float = 100.0) -> np.ndarray:
    """Fringe visibility per axis: the median of ``(max - min) / (max + min)`` over one period.

    Parameters
    ----------
    volume : ndarray
        Intensity in counts, any rank.
    period : float or sequence of float
        Fringe period in pixels (the oversampling ratio, e.g. from :func:`oversampling`),
        one for all axes or one per axis.
    min_counts : float, optional
        Only windows whose maximum reaches this many counts take part, so that Poisson noise
        (which deepens the minima of dim windows) stays small.

    Returns
    -------
    visibility : ndarray of float64, shape (volume.ndim,)
        In [0, 1]: 1 for fringes whose minima reach zero counts, lower as blur fills them.
        NaN along an axis with fewer than ``volume.size // 100`` (and 10) bright windows.

    Notes
    -----
    The Michelson visibility of the fringes is the usual measure of the coherence of the
    illumination [3]_; the model of partial coherence used in the simulator (and in [3]_) is a
    Gaussian blur of the coherent intensity, which fills the fringe minima, as does a
    detector's point spread. Along axis i a window of ``ceil(period_i) + 1`` voxels, one full
    fringe, slides over every voxel; its minimum and maximum give the visibility, and the
    median over bright windows is returned. For a coherent pattern most windows hold a zero
    of the fringes (visibility near 1); a blur of ``sigma`` pixels damps a fringe of period
    ``p`` by ``exp(-2 pi^2 sigma^2 / p^2)``. Background counts, strain (which makes the zeros
    of a complex object's transform lines instead of surfaces) and a smooth envelope crossing
    the window lower it too, so it is a relative measure: an upper bound on coherence.

    Examples
    --------
    Fully modulated fringes of period 8 and the same after a Gaussian blur of 2 pixels:

    >>> fringes = 1000 * (1 + np.cos(2 * np.pi * np.arange(64) / 8))
    >>> float(fringe_visibility(fringes, 8)[0])
    1.0
    >>> blurred = scipy.ndimage.gaussian_filter1d(fringes, 2.0, mode="wrap")
    >>> round(float(fringe_visibility(blurred, 8)[0]), 3)  # exp(-2 pi^2 4 / 64) = 0.291
    0.291
    """
    volume = _counts(volume)
    period = _per_axis(period, volume.ndim, "period")
    result = np.full(volume.ndim, np.nan)
    needed = max(10, volume.size // 100)
    for axis, p in enumerate(period):
        if not np.isfinite(p) or p <= 0:
            continue
        window = math.ceil(p) + 1
        high = scipy.ndimage.maximum_filter1d(volume, window, axis=axis, mode="nearest")
        low = scipy.ndimage.minimum_filter1d(volume, window, axis=axis, mode="nearest")
        bright = high >= min_counts
        if bright.sum() >= needed:
            result[axis] = float(np.median((high - low)[bright] / (high + low)[bright]))
    return result


def background_level(volume, *, size: int = 5, fraction: float = 0.1) -> float:
    """Flat background per voxel: the mean counts of the voxels with the dimmest surroundings.

    Parameters
    ----------
    volume : ndarray
        Intensity in counts, any rank.
    size : int, optional
        Edge of the neighbourhood (a cube of ``size`` voxels per axis) around each voxel.
    fraction : float, optional
        Fraction of the voxels, those whose neighbourhood (the voxel itself excluded) has the
        lowest mean counts, averaged.

    Returns
    -------
    background : float
        Expected counts per voxel there. Where the volume reaches a signal-free region this
        is the flat background (unbiased for Poisson counts, see Notes); elsewhere it is an
        upper bound, the level of the dimmest fringe minima.

    Notes
    -----
    The voxels are chosen by their neighbours' counts only, which are independent of their
    own Poisson counts, so the chosen voxels are not biased low the way the lowest decile of
    the counts themselves is (at 0.1 counts per voxel that decile is all zeros).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> counts = rng.poisson(0.2, (32, 32, 32)).astype(float)
    >>> counts[8:24, 8:24, 8:24] += rng.poisson(50.0, (16, 16, 16))  # a bright region
    >>> round(background_level(counts), 2)
    0.2
    """
    volume = _counts(volume)
    if not 0.0 < fraction <= 1.0:
        raise InputError(f"fraction must lie in (0, 1]; got {fraction!r}.")
    # neighbourhood sums without the voxel itself; zero padding (a reflected edge would count
    # an edge voxel among its own neighbours and bias the choice)
    sums = scipy.ndimage.uniform_filter(volume, size, mode="constant") - volume / size**volume.ndim
    cells = scipy.ndimage.uniform_filter(np.ones_like(volume), size, mode="constant") - 1 / size**volume.ndim
    surroundings = sums / cells
    chosen = surroundings <= np.quantile(surroundings, fraction)
    return float(volume[chosen].mean())


def hot_pixel_mask(volume, *, ratio: float = 10.0, min_counts: float = 20.0) -> np.ndarray:
    """Isolated spikes: voxels ``ratio`` times brighter than every one of their neighbours.

    Parameters
    ----------
    volume : ndarray
        Intensity in counts, any rank.
    ratio : float, optional
        How many times the brightest neighbour (of the ``3^ndim - 1``) a hot voxel exceeds.
    min_counts : float, optional
        Fewest counts of a hot voxel, so that a lone Poisson count over a dark background
        (P(>= 20 counts) ~ 1e-19 at 1 count per voxel) is not one.

    Returns
    -------
    mask : ndarray of bool, same shape
        True on hot voxels.

    Notes
    -----
    Diffraction is smooth on the scale of one pixel (oversampling >= 2), so a real
    intensity cannot jump tenfold from every neighbour; the simulator adds such hot pixels
    on purpose (:func:`rayproc.bcdi.diffraction.detector_counts`). A hot pixel of ``c``
    counts adds ``c / total counts`` to the whole normalised autocorrelation, which is why
    :func:`portion_statistics` removes them before measuring shapes.

    Examples
    --------
    >>> counts = np.ones((8, 8, 8)); counts[3, 4, 5] = 1e4
    >>> np.argwhere(hot_pixel_mask(counts)).tolist()
    [[3, 4, 5]]
    """
    volume = _counts(volume)
    footprint = np.ones((3,) * volume.ndim, dtype=bool)
    footprint[(1,) * volume.ndim] = False
    # zero padding: a "nearest" edge would make an edge voxel its own neighbour
    neighbours = scipy.ndimage.maximum_filter(volume, footprint=footprint, mode="constant")
    return (volume >= min_counts) & (volume > ratio * neighbours)


STATISTICS = (
    "total_counts", "zero_fraction", "max_counts", "background", "hot_pixels", "oversampling",
    "visibility",
)


def portion_statistics(
    portions, *, threshold: float = 0.05, min_counts: float = 100.0, noise_floor: float = 5.0
) -> dict[str, np.ndarray]:
    """Count, background and shape statistics of each portion.

    Parameters
    ----------
    portions : ndarray, shape (n, *portion_shape), or a sequence of ndarrays
        Intensities in counts (the portions may differ in shape when given as a sequence).
    threshold : float, optional
        Autocorrelation level where the extent ends (see :func:`oversampling`).
    min_counts : float, optional
        Counts a fringe window must reach to count in the visibility
        (see :func:`fringe_visibility`).
    noise_floor : float, optional
        The oversampling is NaN where the Poisson floor of the autocorrelation
        ``1 / sqrt(total counts)``, times this, exceeds ``threshold`` (at the defaults: fewer
        than 10^4 counts).

    Returns
    -------
    statistics : dict of str to ndarray
        One entry per name of ``STATISTICS``, each of length n (shape (n, ndim) for the
        per-axis ones), all measured after the hot pixels are set to their brightest
        neighbour:

        - ``total_counts``: sum of the counts.
        - ``zero_fraction``: fraction of voxels with zero counts.
        - ``max_counts``: brightest voxel.
        - ``background``: :func:`background_level`.
        - ``hot_pixels``: number of voxels :func:`hot_pixel_mask` flags (before removal).
        - ``oversampling``: :func:`oversampling` per axis, the background subtracted; NaN
          for portions too dim (see ``noise_floor``).
        - ``visibility``: :func:`fringe_visibility` per axis with the measured oversampling
          as the period; NaN where that is NaN or too few windows are bright.

    Notes
    -----
    These are the quantities the simulator draws per sample (photons, background, hot and
    dead pixels, oversampling per axis, coherence blur; see
    :func:`rayproc.bcdi.diffraction.random_sample_params`), measured from counts alone, so
    that portions of a real scan and simulated ones, cut the same way (as in [1]_), can be
    compared.

    Examples
    --------
    >>> from rayproc.bcdi.diffraction import simulate_bcdi_sample
    >>> counts, params = simulate_bcdi_sample(32, seed=0, index=0)
    >>> stats = portion_statistics(counts[None])
    >>> sorted(stats) == sorted(STATISTICS), stats["oversampling"].shape
    (True, (1, 3))
    >>> bool(stats["total_counts"][0] > 0.9 * params.photons)
    True
    """
    if isinstance(portions, np.ndarray):
        if portions.ndim < 2:
            raise InputError(f"portions must be an array (n, *portion_shape); got shape {portions.shape}.")
    portions = list(portions)
    if not portions:
        raise InputError("portions is empty.")
    ndim = np.ndim(portions[0])
    n = len(portions)
    out = {name: np.full(n, np.nan) for name in STATISTICS[:5]}
    out["oversampling"] = np.full((n, ndim), np.nan)
    out["visibility"] = np.full((n, ndim), np.nan)
    for i, portion in enumerate(portions):
        volume = _counts(portion, "portion")
        if volume.ndim != ndim:
            raise InputError(f"portions must share one rank; portion {i} has shape {volume.shape}.")
        hot = hot_pixel_mask(volume)
        if hot.any():
            footprint = np.ones((3,) * ndim, dtype=bool)
            footprint[(1,) * ndim] = False
            volume = volume.copy()
            volume[hot] = scipy.ndimage.maximum_filter(volume, footprint=footprint, mode="constant")[hot]
        total = volume.sum()
        background = background_level(volume)
        out["total_counts"][i] = total
        out["zero_fraction"][i] = np.mean(volume == 0)
        out["max_counts"][i] = volume.max()
        out["background"][i] = background
        out["hot_pixels"][i] = hot.sum()
        if noise_floor / math.sqrt(max(total, 1.0)) < threshold:
            os_ = oversampling(volume, threshold, background=background)
            out["oversampling"][i] = os_
            out["visibility"][i] = fringe_visibility(volume, os_, min_counts=min_counts)
    return out


__all__ = [
    "STATISTICS",
    "autocorrelation",
    "background_level",
    "fringe_visibility",
    "hot_pixel_mask",
    "oversampling",
    "portion_statistics",
]
