"""Training pairs for LabDCT spot denoising: noisy inputs and segmented targets.

Inputs follow Fang et al. [1]_: a forward-simulated projection [2]_, less its constant
background, laid on a background image extracted from real frames (see
:mod:`rayproc.labdct.background`) scaled by a random factor, plus scaled Poisson noise.
Targets are the LoG segmentation of the noise-free projection, the same segmentation the
standard routine applies to measured frames
(:func:`rayproc.labdct.standard_routine.log_spot_labels`).

References
----------
.. [1] H. Fang et al., deep-learning denoising of LabDCT projections: a U-Net trained on
   forward-simulated projections mixed with backgrounds extracted from real frames and
   Poisson noise.
.. [2] H. Fang, D. Juul Jensen and Y. Zhang, "A flexible and standalone forward simulation
   model for laboratory X-ray diffraction contrast tomography", Acta Cryst. A 76 (2020)
   652-663. :doi:`10.1107/S2053273320010852`
"""

from __future__ import annotations

import numpy as np

from rayproc.errors import InputError
from rayproc.labdct.standard_routine import log_spot_labels
from rayproc.options import look_up_option

MODES = ("poisson", "constant", "detector")
# Detector of the real far-field iron frames (1024^2, frames 1-30; benchmarks/labdct_realism_calibration.py):
# noise variance 0.69 E counts^2 (a straight line gives 0.88 E - 108: no room for read noise), neighbour
# correlation 0.088 (Gaussian blur sigma 0.40 px).
FE_FARFIELD_DETECTOR = {"counts_per_photon": 0.97, "noise_psf_sigma_px": 0.40, "read_noise": 0.0}
# Pixels far above their neighbours in most of those frames: share and mean excess (counts).
FE_FARFIELD_HOT_PIXELS = {"fraction": 2.9e-4, "mean_counts": 384.0}
FE_FARFIELD_PIXEL_MM = 0.068334


def synthesize_input(
    simulated,
    background,
    rng=None,
    *,
    c_bg: float,
    spot_gain=1.0,
    i0: float = 110.0,
    tau: float = 1.0,
    mode: str = "poisson",
    alpha: float = 5.0,
    delta_range: tuple[float, float] = (25.0, 225.0),
    detector: dict | None = None,
    hot_pixels=None,
) -> np.ndarray:
    """Noisy network input from a noise-free simulated projection (Fang et al. [1]_).

    ``mode="poisson"`` (published model)::

        x0 = g (I_simu - C_BG) + R_BG * I_BG,    R_BG ~ U[I0 - sqrt(I0), I0 + sqrt(I0)]
        x  = x0 + tau * Poisson(x0 / 2)

    with the spot gain ``g = 1`` in [1]_; ``g`` rescales the simulated fluence, e.g. to the
    spot brightness of measured frames (``rayproc labdct calibrate``).

    so that, given ``x0``, ``E[x] = x0 + tau x0 / 2`` and ``Var[x] = tau^2 x0 / 2``.
    ``mode="detector"`` (a measured detector): the same ``x0`` as expected counts through
    :func:`detector_counts` (photon noise in counts per photon, scintillator blur, read noise,
    hot pixels; ``detector`` its keywords, e.g. from :func:`detector_at_pixel`), so that
    ``Var[x] = c x0 sum(K^2) + read_noise^2`` (:func:`pixel_noise_variance`); ``tau`` is unused.
    ``mode="constant"`` (earlier model): ``x = I_simu - C_BG`` with every pixel below
    ``alpha`` set to one constant ``Delta ~ U[delta_range]``; ``background`` is not used.

    Parameters
    ----------
    simulated : array_like, shape (H, W) or (N, H, W)
        Noise-free forward-simulated projection(s) ``I_simu`` [2]_.
    background : array_like, shape (H, W) or same as ``simulated``, or None
        Background image(s) ``I_BG`` normalised to max 1 (None allowed in constant mode).
    rng : numpy.random.Generator or int, optional
        Source of randomness (or a seed).
    c_bg : float
        Constant background ``C_BG`` of the simulated projections.
    spot_gain : float or array_like of shape (N,), optional
        Gain ``g`` of the spot signal ``I_simu - C_BG`` (one value, or one per projection).
    i0 : float, optional
        Mean background scale ``I0`` (110 in [1]_).
    tau : float, optional
        Noise scale ``tau`` (>= 0).
    mode : {"poisson", "constant"}, optional
    alpha : float, optional
        Constant mode: pixels of ``I_simu - C_BG`` below ``alpha`` (5 in [1]_) are replaced.
    delta_range : (float, float), optional
        Constant mode: range of ``Delta`` ([25, 225] in [1]_).
    detector : dict, optional
        Detector mode: keywords of :func:`detector_counts` (``counts_per_photon``,
        ``noise_psf_sigma_px``, ``read_noise``).
    hot_pixels : array_like, shape (H, W), optional
        Detector mode: fixed hot-pixel offsets (:func:`hot_pixel_map`).

    Returns
    -------
    numpy.ndarray of float32, shape of ``simulated``
        One ``R_BG`` (or ``Delta``) is drawn per projection.

    Notes
    -----
    Poisson rates ``x0 / 2`` below zero (``I_simu < C_BG``) are clipped to zero.

    Examples
    --------
    >>> clean = np.zeros((4, 4), np.float32)
    >>> x = synthesize_input(clean, np.ones((4, 4)), 0, c_bg=0.0, tau=0.0)
    >>> bool(110 - 110**0.5 <= x[0, 0] <= 110 + 110**0.5)
    True
    """
    mode = look_up_option(mode, MODES, name="mode")
    simulated = np.asarray(simulated, dtype=np.float64)
    if simulated.ndim not in (2, 3):
        raise InputError(
            f"simulated must be (H, W) or (N, H, W); got shape {simulated.shape} instead."
        )
    if tau < 0 or i0 < 0:
        raise InputError(f"tau and i0 must be >= 0; got tau={tau!r}, i0={i0!r} instead.")
    rng = np.random.default_rng(rng)
    frames = simulated.reshape((-1,) + simulated.shape[-2:])
    per_frame = (len(frames), 1, 1)
    gain = np.asarray(spot_gain, dtype=np.float64)
    if gain.ndim > 1 or gain.size not in (1, len(frames)) or not np.all(gain >= 0):
        raise InputError(f"spot_gain must be >= 0, one value or one per projection ({len(frames)}); "
                         f"got {spot_gain!r} instead.")
    signal = gain.reshape(-1, 1, 1) * (frames - c_bg)
    if mode == "constant":
        low, high = delta_range
        delta = rng.uniform(low, high, per_frame)
        out = np.where(signal < alpha, delta, signal)
        return out.reshape(simulated.shape).astype(np.float32)
    if background is None:
        raise InputError("poisson mode needs a background image; got None instead.")
    background = np.asarray(background, dtype=np.float64)
    try:
        background = np.broadcast_to(background, simulated.shape).reshape(frames.shape)
    except ValueError:
        raise InputError(
            f"background shape {background.shape} does not fit simulated {simulated.shape}."
        ) from None
    r_bg = rng.uniform(i0 - np.sqrt(i0), i0 + np.sqrt(i0), per_frame)
    x0 = signal + r_bg * background
    if mode == "detector":
        if detector is None:
            raise InputError("detector mode needs the detector's keywords (detector_at_pixel); got None instead.")
        x = detector_counts(x0, rng, hot_pixels=hot_pixels, **detector)
    else:
        x = x0 + tau * rng.poisson(np.clip(x0, 0, None) / 2)
    return x.reshape(simulated.shape).astype(np.float32)


def _blur_square_sum(sigma: float) -> float:
    """``sum(K^2)`` of the 2D Gaussian blur ``K`` of :func:`detector_counts` (1 without blur)."""
    from scipy.ndimage import gaussian_filter1d

    if sigma <= 0:
        return 1.0
    delta = np.zeros(8 * int(np.ceil(sigma)) + 9)
    delta[len(delta) // 2] = 1.0
    return float((gaussian_filter1d(delta, sigma) ** 2).sum() ** 2)


def _binned_blur_sigma(sigma: float, factor: float) -> float:
    """Blur sigma (binned px) giving ``b x b``-binned blurred photon noise its variance (:func:`detector_at_pixel`)."""
    from scipy.ndimage import gaussian_filter1d

    b = int(round(factor))
    if sigma <= 0 or b <= 1 or abs(factor - b) > 1e-6:
        return sigma / factor if factor > 0 else sigma
    size = 8 * int(np.ceil(sigma)) + 8 * b + 1
    delta = np.zeros(size)
    delta[size // 2] = 1.0
    kernel = gaussian_filter1d(delta, sigma)
    shares = np.convolve(kernel, np.ones(b), mode="same")  # 1D share of a photon's light in a bin
    target = (float((shares**2).sum()) / b) ** 2
    low, high = 1e-3, 4.0 * sigma / b + 1.0
    for _ in range(60):
        middle = (low + high) / 2
        low, high = (middle, high) if _blur_square_sum(middle) > target else (low, middle)
    return (low + high) / 2


def pixel_noise_variance(level, *, mode: str = "poisson", tau: float = 1.0, detector: dict | None = None) -> np.ndarray:
    """Noise variance of one pixel at expected counts ``level`` under a synthesis noise model.

    ``poisson`` (published): ``tau^2 level / 2``. ``detector``: ``c level sum(K^2) +
    read_noise^2``, with ``c`` the counts per photon and ``K`` the scintillator blur of
    :func:`detector_counts` (hot pixels, a fixed pattern, excluded). ``constant``: NaN.
    """
    level = np.asarray(level, dtype=np.float64)
    mode = look_up_option(mode, MODES, name="mode")
    if mode == "poisson":
        return tau**2 * level / 2
    if mode == "detector":
        if detector is None:
            raise InputError("detector mode needs the detector's keywords (detector_at_pixel); got None instead.")
        return (detector["counts_per_photon"] * _blur_square_sum(detector.get("noise_psf_sigma_px", 0.0)) * level
                + detector.get("read_noise", 0.0) ** 2)
    return np.full(level.shape, np.nan)


DETECTOR_PRESETS = {
    "fe_farfield": {"pixel_size_mm": FE_FARFIELD_PIXEL_MM, **FE_FARFIELD_DETECTOR,
                    "hot_pixel_fraction": FE_FARFIELD_HOT_PIXELS["fraction"],
                    "hot_pixel_mean_counts": FE_FARFIELD_HOT_PIXELS["mean_counts"]},
}


def detector_at_pixel(preset: str | dict, pixel_size_mm: float) -> tuple[dict, dict]:
    """A measured detector's noise model on a coarser (binned) pixel.

    Binning ``b x b`` pixels (``b = pixel_size_mm / preset pixel``) sums them: the counts per
    photon stay; part of a photon's light falls in the next binned pixel, so the binned noise
    variance is ``c E sum_j w_j^2 / b^2`` (``w_j``: the share of the light of a photon absorbed
    in fine pixel ``j`` that lands in the bin), and the blur becomes the Gaussian whose
    ``sum(K^2)`` gives that variance (for an integer ``b``; ``sigma / b`` otherwise); read noise
    adds up to ``b read_noise``, and a binned pixel holds a hot pixel ``b^2`` times as often
    (offsets unchanged).

    Parameters
    ----------
    preset : str or dict
        A :data:`DETECTOR_PRESETS` name or a dict of its keys.
    pixel_size_mm : float
        Pixel of the simulated projections.

    Returns
    -------
    (dict, dict)
        Keywords of :func:`detector_counts` and of :func:`hot_pixel_map`.
    """
    if isinstance(preset, str):
        preset = DETECTOR_PRESETS[look_up_option(preset, DETECTOR_PRESETS, name="detector")]
    factor = float(pixel_size_mm) / preset["pixel_size_mm"]
    if not factor > 0:
        raise InputError(f"pixel_size_mm must be > 0; got {pixel_size_mm!r} instead.")
    detector = {"counts_per_photon": preset["counts_per_photon"],
                "noise_psf_sigma_px": _binned_blur_sigma(preset["noise_psf_sigma_px"], factor),
                "read_noise": preset["read_noise"] * factor}
    hot = {"fraction": min(1.0, preset["hot_pixel_fraction"] * factor**2),
           "mean_counts": preset["hot_pixel_mean_counts"]}
    return detector, hot


def log_segmentation(
    clean,
    *,
    sigma: float = 1.0,
    background: float = 0.0,
    percentage: float = 20.0,
    min_size: int = 4,
) -> np.ndarray:
    """Training target: the LoG segmentation of a noise-free projection, 255 on spots.

    Parameters
    ----------
    clean : array_like, shape (H, W) or (N, H, W)
        Noise-free projection(s) with their constant background removed.
    sigma, background, percentage, min_size :
        LoG segmentation parameters, see
        :func:`rayproc.labdct.standard_routine.log_spot_labels`.

    Returns
    -------
    numpy.ndarray of uint8, shape of ``clean``
        255 on spot pixels, 0 elsewhere.
    """
    labels = log_spot_labels(
        clean, background=background, sigma=sigma, percentage=percentage, min_size=min_size
    )
    return np.where(labels > 0, 255, 0).astype(np.uint8)


def hot_pixel_map(shape, rng=None, *, fraction: float = 0.0, mean_counts: float = 0.0) -> np.ndarray:
    """Fixed-pattern hot pixels of a detector: additive offsets, (H, W) float32.

    A ``fraction`` of the pixels, drawn at random, carries an offset drawn from an
    exponential distribution of mean ``mean_counts``; the rest 0. Draw it once per detector
    (one seed for a whole stack): hot pixels stay where they are from frame to frame.
    """
    if not 0 <= fraction <= 1 or mean_counts < 0:
        raise InputError(f"need 0 <= fraction <= 1 and mean_counts >= 0; got {fraction!r}, {mean_counts!r} instead.")
    rng = np.random.default_rng(rng)
    hot = rng.random(shape) < fraction
    return np.where(hot, rng.exponential(mean_counts if mean_counts > 0 else 1.0, shape) * (mean_counts > 0), 0.0
                    ).astype(np.float32)


def detector_counts(
    expected,
    rng=None,
    *,
    counts_per_photon: float,
    noise_psf_sigma_px: float = 0.0,
    read_noise: float = 0.0,
    hot_pixels=None,
) -> np.ndarray:
    """A detector frame from its expected counts: photon noise, scintillator blur, read noise, hot pixels.

    ``x = c * (K_psf * Poisson(E / c)) + N(0, read_noise^2) + hot``, with ``c`` the counts per
    absorbed photon. The scintillator spreads each photon's light over neighbouring pixels,
    so the photon noise is correlated between neighbours (the Gaussian ``K_psf`` of sigma
    ``noise_psf_sigma_px``) and its per-pixel variance is ``c E`` times the sum of the
    squared kernel (``1 / (4 pi sigma^2)`` for a wide Gaussian). Spots simulated with their
    own PSF (``simulate_projection(psf_sigma_px=...)``) are blurred once more here.

    Parameters
    ----------
    expected : array_like, shape (H, W) or (N, H, W)
        Expected counts per pixel (spots plus background), >= 0 (negatives are clipped).
    rng : numpy.random.Generator or int, optional
    counts_per_photon : float
        Detector gain ``c`` (> 0).
    noise_psf_sigma_px : float
        Gaussian sigma (px) of the scintillator blur applied after the photon noise.
    read_noise : float
        Standard deviation of the additive Gaussian read noise (counts).
    hot_pixels : array_like, shape (H, W), optional
        Fixed offsets (:func:`hot_pixel_map`) added to every frame.

    Returns
    -------
    numpy.ndarray of float32, shape of ``expected``
    """
    from scipy.ndimage import gaussian_filter

    if not counts_per_photon > 0 or noise_psf_sigma_px < 0 or read_noise < 0:
        raise InputError(f"need counts_per_photon > 0, noise_psf_sigma_px >= 0, read_noise >= 0; got "
                         f"{counts_per_photon!r}, {noise_psf_sigma_px!r}, {read_noise!r} instead.")
    expected = np.clip(np.asarray(expected, dtype=np.float64), 0, None)
    rng = np.random.default_rng(rng)
    photons = rng.poisson(expected / counts_per_photon).astype(np.float64)
    if noise_psf_sigma_px > 0:
        width = (0,) * (photons.ndim - 2) + (noise_psf_sigma_px, noise_psf_sigma_px)
        photons = gaussian_filter(photons, width, mode="nearest")
    counts = counts_per_photon * photons
    if read_noise > 0:
        counts += rng.normal(0.0, read_noise, counts.shape)
    if hot_pixels is not None:
        counts += np.asarray(hot_pixels, dtype=np.float64)
    return counts.astype(np.float32)


__all__ = ["DETECTOR_PRESETS", "FE_FARFIELD_DETECTOR", "FE_FARFIELD_HOT_PIXELS", "FE_FARFIELD_PIXEL_MM", "MODES",
           "detector_at_pixel", "detector_counts", "hot_pixel_map", "log_segmentation", "pixel_noise_variance",
           "synthesize_input"]
