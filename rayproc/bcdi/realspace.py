"""Real-space effect of a gap: the object seen through an amplitude with a known phase.

A detector gap removes part of the diffracted amplitude; an inverse Fourier transform of the
remaining amplitude with the *true* phase shows the damage phase retrieval could at best
undo, free of any reconstruction algorithm. Masto et al. [1]_ (Fig. 7) judge inpainting by the
phase of the reconstructed crystal: a gap adds oscillations to the phase inside the support,
an inpainted pattern should not. This module gives that check on simulated data, where the
phase is known.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

import numpy as np

from rayproc.errors import InputError


def object_from_amplitude(amplitude, phase) -> np.ndarray:
    """Complex object whose centred Fourier transform is ``amplitude * exp(i phase)``.

    Parameters
    ----------
    amplitude : ndarray, shape S
        Diffracted amplitude (``sqrt`` of the intensity), q = 0 at index ``n // 2`` on every
        axis (after ``fftshift``); 0 in a gap that is not inpainted.
    phase : ndarray, shape S
        Phase of the far field, same layout.

    Returns
    -------
    obj : ndarray of complex128, shape S
        ``fftshift(ifftn(ifftshift(amplitude * exp(i phase))))``: the object, centred.
    """
    amplitude, phase = np.asarray(amplitude, np.float64), np.asarray(phase, np.float64)
    if amplitude.shape != phase.shape:
        raise InputError(f"amplitude and phase must share one shape; got {amplitude.shape} and {phase.shape} instead.")
    if not (np.isfinite(amplitude).all() and (amplitude >= 0).all() and np.isfinite(phase).all()):
        raise InputError("amplitude must be finite and >= 0 and phase finite; got other values.")
    return np.fft.fftshift(np.fft.ifftn(np.fft.ifftshift(amplitude * np.exp(1j * phase))))


def support(obj, *, threshold: float = 0.2) -> np.ndarray:
    """Voxels where ``|obj|`` exceeds ``threshold`` times its maximum (the crystal).

    Parameters
    ----------
    obj : ndarray, complex
    threshold : float, optional
        Fraction of the maximum modulus, in (0, 1).

    Returns
    -------
    ndarray of bool, shape of ``obj``
    """
    if not 0 < threshold < 1:
        raise InputError(f"threshold must be in (0, 1); got {threshold!r}.")
    modulus = np.abs(np.asarray(obj))
    return modulus > threshold * modulus.max()


def phase_std(obj, support_mask, *, reference=None) -> float:
    """Standard deviation (rad) of the phase of ``obj`` inside the support.

    Parameters
    ----------
    obj : ndarray, complex
        Object, e.g. from :func:`object_from_amplitude`.
    support_mask : ndarray of bool, same shape
        Voxels inside the crystal (see :func:`support`).
    reference : ndarray, complex, optional
        If given, the phase of ``obj * conj(reference)`` is used: the phase error against the
        true object (0 for ``obj == reference``) rather than the phase itself.

    Returns
    -------
    float
        ``std(angle(z * conj(m)))`` over the support, with ``m`` the mean phasor
        ``sum(z) / |sum(z)|``: a constant phase offset counts zero, and no phase wraps for
        errors below pi.

    Examples
    --------
    >>> obj = np.exp(1j * np.array([3.0, 3.1, 2.9, -3.1]))  # wraps around pi
    >>> round(phase_std(obj, np.array([True, True, True, False])), 4)
    0.0816
    """
    z = np.asarray(obj, dtype=np.complex128)
    support_mask = np.asarray(support_mask, dtype=bool)
    if support_mask.shape != z.shape or not support_mask.any():
        raise InputError(f"support must be a non-empty bool mask of shape {z.shape}; got shape {support_mask.shape}.")
    if reference is not None:
        z = z * np.conj(np.asarray(reference, dtype=np.complex128))
    z = z[support_mask]
    mean = z.sum()
    offset = mean / abs(mean) if abs(mean) > 0 else 1.0
    return float(np.std(np.angle(z * np.conj(offset))))


__all__ = ["object_from_amplitude", "phase_std", "support"]
