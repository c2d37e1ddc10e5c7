"""Spot-brightness calibration of simulated LabDCT projections against measured frames.

The forward model [1]_ gives spot intensities in units of the incident fluence, which is
rarely known for a laboratory source (tube current, exposure time, scintillator gain). The
synthesis gain ``g`` of :func:`rayproc.labdct.synthesis.synthesize_input`
(``x0 = g (I_simu - C_BG) + R_BG I_BG``) sets it. Calibration chooses ``g`` so that the spots
that the same detector finds in synthesised and in measured frames have the same brightness
relative to their noise at a chosen quantile:

1. detection (:func:`detected_spot_snr`): rolling median over ``n_rolling`` frames
   subtracted, robust noise ``s`` (1.4826 MAD of the residual), LoG segmentation above
   ``k s`` (the standard routine of Fang et al. [2]_);
2. each detected spot's integrated SNR: its summed residual over ``s sqrt(A)`` (``A`` its
   pixels);
3. ``g`` solves ``q-quantile SNR(synthesised at g) = q-quantile SNR(measured)`` by bisection
   in ``log g`` (:func:`match_spot_gain`).

Both stacks pass the same detection threshold; a high quantile (the bright end, detected
completely in both) is least sensitive to how many spots lie just above it. Measured frames
are binned to the simulated pixel size first (:func:`bin_frames`), since summing ``b x b``
pixels raises a spot's SNR by about ``b``.

References
----------
.. [1] H. Fang, D. Juul Jensen and Y. Zhang, "A flexible and standalone forward simulation
   model for laboratory X-ray diffraction contrast tomography", Acta Cryst. A 76 (2020)
   652-663. :doi:`10.1107/S2053273320010852`
.. [2] H. Fang et al., deep-learning denoising of LabDCT projections (standard routine:
   rolling median and LoG segmentation).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy import ndimage as ndi

from rayproc.errors import InputError
from rayproc.labdct.standard_routine import log_spot_labels, robust_noise, rolling_median_subtract

DETECTION_K = 5.0  # detection threshold in units of the residual noise


def bin_frames(stack, factor: int) -> np.ndarray:
    """Sum ``factor x factor`` pixel blocks of every frame, float32 ``(N, H // f, W // f)``.

    Rows and columns beyond a multiple of ``factor`` are dropped.
    """
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim != 3 or factor < 1:
        raise InputError(f"bin_frames needs a stack (N, H, W) and factor >= 1; got {stack.shape}, {factor}.")
    n, h, w = stack.shape
    h, w = h // factor * factor, w // factor * factor
    blocks = stack[:, :h, :w].reshape(n, h // factor, factor, w // factor, factor)
    return blocks.sum(axis=(2, 4), dtype=np.float64).astype(np.float32)


def bin_to_shape(stack, shape, beamstop=None) -> tuple[np.ndarray, np.ndarray | None, int]:
    """A stack (and its beam-stop mask) summed to frames of ``shape`` when it is an integer multiple of it.

    Returns ``(stack, beamstop, factor)``: binned by ``factor >= 1`` (1: already ``shape``), or
    unchanged with ``factor = 0`` when its frames are not an integer multiple of ``shape``. A
    binned pixel is under the beam stop when any of its pixels is.
    """
    stack = np.asarray(stack)
    factor = stack.shape[1] // shape[0] if shape[0] else 0
    if factor < 1 or stack.shape[1:] != (shape[0] * factor, shape[1] * factor):
        return stack, beamstop, 0
    if factor > 1:
        stack = bin_frames(stack, factor)
        beamstop = None if beamstop is None else bin_frames(np.asarray(beamstop)[None], factor)[0] > 0
    return stack, beamstop, factor


def detected_spot_snr(
    stack,
    *,
    n_rolling: int = 5,
    k: float = DETECTION_K,
    sigma: float = 1.0,
    percentage: float = 20.0,
    min_size: int = 4,
    beamstop=None,
) -> np.ndarray:
    """Integrated SNR of the spots the standard routine detects at ``k`` times the residual noise.

    Parameters
    ----------
    stack : array_like, shape (N, H, W)
        Consecutive raw frames (counts), measured or synthesised.
    n_rolling : int
        Frames in the rolling median subtracted first.
    k : float
        Detection threshold (LoG ``background``) in units of the residual noise ``s``.
    sigma, percentage, min_size :
        LoG parameters (:func:`rayproc.labdct.standard_routine.log_spot_labels`).
    beamstop : array_like of bool, shape (H, W), optional
        Pixels excluded from the noise estimate and from spots.

    Returns
    -------
    numpy.ndarray of float64, shape (K,)
        ``sum(residual over the spot) / (s sqrt(A))`` per detected spot.
    """
    stack = np.asarray(stack, dtype=np.float32)
    if stack.ndim != 3:
        raise InputError(f"frames must be a stack (N, H, W); got shape {stack.shape} instead.")
    residual = rolling_median_subtract(stack, n_rolling)
    noise = robust_noise(residual, beamstop=beamstop)
    if noise <= 0:
        raise InputError("the frames have no residual noise after the rolling median; cannot detect spots.")
    labels = log_spot_labels(residual, background=k * noise, sigma=sigma, percentage=percentage,
                             min_size=min_size, beamstop=beamstop)
    ids = np.arange(1, labels.max() + 1)
    area = np.bincount(labels.ravel(), minlength=len(ids) + 1)[1:]
    integrated = np.asarray(ndi.sum(residual, labels, ids), dtype=np.float64)
    return integrated / (noise * np.sqrt(area))


def match_spot_gain(
    target: float,
    snr_at: Callable[[float], float],
    *,
    bounds: tuple[float, float] = (1e-4, 1e4),
    rtol: float = 0.01,
    max_steps: int = 40,
) -> float:
    """The gain ``g`` with ``snr_at(g) == target``, by bisection in ``log g``.

    ``snr_at`` (any quantile of the detected spots' SNR) must increase with ``g`` (brighter spots, higher SNR); it is called with
    the same noise realisation for every ``g`` so that it is deterministic. Stops when the
    bracket is narrower than ``rtol`` (relative). Raises :class:`InputError` when ``target``
    lies outside ``[snr_at(bounds[0]), snr_at(bounds[1])]``.
    """
    low, high = (float(b) for b in bounds)
    if not 0 < low < high:
        raise InputError(f"gain bounds must satisfy 0 < low < high; got {bounds!r}.")
    at_low, at_high = snr_at(low), snr_at(high)
    if not at_low <= target <= at_high:
        raise InputError(f"the measured spot SNR {target:.3g} is outside what gains {low:g}..{high:g} "
                         f"give ({at_low:.3g}..{at_high:.3g}); the simulation cannot be calibrated to it.")
    for _ in range(max_steps):
        if high / low - 1 < rtol:
            break
        middle = float(np.sqrt(low * high))
        if snr_at(middle) < target:
            low = middle
        else:
            high = middle
    return float(np.sqrt(low * high))


__all__ = ["DETECTION_K", "bin_frames", "bin_to_shape", "detected_spot_snr", "match_spot_gain"]
