"""In-gap accuracy of an inpainted diffraction pattern.

Both metrics look only at the voxels inside the gap (``mask`` True) and take intensities in
counts (>= 0), any rank.

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


def _gap_values(pred, truth, mask) -> tuple[np.ndarray, np.ndarray]:
    pred, truth = np.asarray(pred, dtype=np.float64), np.asarray(truth, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if not pred.shape == truth.shape == mask.shape:
        raise InputError(
            f"pred, truth and mask must share one shape; got {pred.shape}, {truth.shape} and "
            f"{mask.shape} instead."
        )
    if not mask.any():
        raise InputError("mask selects no gap voxel; got an all-False mask.")
    return pred[mask], truth[mask]


def gap_pcc(pred, truth, mask) -> float:
    """Pearson correlation coefficient of log intensities inside the gap ([1]_, eq. 1).

    ``PCC = cov(u, v) / (std(u) std(v))`` with ``u = log1p(pred)`` and ``v = log1p(truth)``
    over the voxels where ``mask`` is True.

    Parameters
    ----------
    pred, truth : ndarray
        Predicted and true intensities in counts (>= 0), same shape, any rank.
    mask : ndarray of bool, same shape
        True inside the gap.

    Returns
    -------
    pcc : float
        In [-1, 1]; NaN when either side is constant inside the gap.

    Notes
    -----
    The log is ``log1p`` of counts, so zero counts are allowed. A PCC is blind to any affine
    map of its arguments: it is 1 whenever ``log1p(pred) = a log1p(truth) + b`` with ``a > 0``
    (in particular for the log of per-portion normalised values, which are affine in
    ``log1p`` counts); it does not see a global intensity scale error. Read it together with
    :func:`relative_error`.

    Examples
    --------
    >>> truth = np.array([0.0, 3.0, 15.0, 63.0])
    >>> round(gap_pcc(truth, truth, truth >= 0), 12)
    1.0
    """
    pred, truth = _gap_values(pred, truth, mask)
    if min(pred.min(), truth.min()) < 0:
        raise InputError(
            f"intensities must be >= 0; got min {float(min(pred.min(), truth.min()))!r} in the gap."
        )
    u, v = np.log1p(pred), np.log1p(truth)
    u, v = u - u.mean(), v - v.mean()
    denominator = np.sqrt(np.sum(u * u) * np.sum(v * v))
    return float(np.sum(u * v) / denominator) if denominator > 0 else float("nan")


def relative_error(pred, truth, mask) -> float:
    """Relative L1 error inside the gap: ``sum |pred - truth| / sum |truth|``.

    Parameters
    ----------
    pred, truth : ndarray
        Predicted and true intensities, same shape, any rank.
    mask : ndarray of bool, same shape
        True inside the gap.

    Returns
    -------
    error : float
        0 for a perfect prediction; 1 for predicting zeros. 0 when both are all zero in the
        gap, NaN when only ``truth`` is.

    Notes
    -----
    ``1 - relative_error`` is the "accuracy" of the authors' code for [1]_ (there in percent
    and clipped at 0).
    """
    pred, truth = _gap_values(pred, truth, mask)
    error, scale = np.sum(np.abs(pred - truth)), np.sum(np.abs(truth))
    if scale == 0:
        return 0.0 if error == 0 else float("nan")
    return float(error / scale)


__all__ = ["gap_pcc", "relative_error"]
