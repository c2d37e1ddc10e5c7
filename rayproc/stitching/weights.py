"""Importance weights of the voxels of a window when overlapping predictions are blended."""

from __future__ import annotations

import numpy as np

from rayproc.errors import InputError
from rayproc.options import look_up_option

BLEND_MODES = ("mean", "gaussian")
MIN_GAUSSIAN_WEIGHT = 1e-3


def importance_map(patch, mode: str = "mean", *, sigma_scale=0.125) -> np.ndarray:
    """Weight of each voxel of a window in the blend of overlapping predictions.

    Parameters
    ----------
    patch : int or sequence of int
        Window shape (an int gives a 1-D window).
    mode : {"mean", "gaussian"}, optional
        ``"mean"``: all ones, a plain average of overlapping predictions (the procedure of
        Masto et al. [1]_). ``"gaussian"``: a separable Gaussian peaked at the window centre,
        down-weighting predictions near window borders (MONAI's ``"gaussian"`` blend).
    sigma_scale : float or sequence of float, optional
        Gaussian standard deviation as a fraction of the patch length along each axis.

    Returns
    -------
    weights : ndarray of float32, shape ``patch``
        Positive weights with maximum 1.

    Notes
    -----
    The Gaussian is :math:`\\prod_a \\exp(-(i_a - c_a)^2 / 2\\sigma_a^2)` with
    :math:`c_a = (p_a - 1)/2` and :math:`\\sigma_a = \\mathrm{sigma\\_scale}\\,p_a`, clamped
    below at 1e-3 as in MONAI's ``compute_importance_map`` so that every voxel of a window
    counts. Unlike MONAI (centre ``p // 2``) the centre is the true middle, so the map is
    symmetric for even patches.

    References
    ----------
    .. [1] M. Masto et al., "Patching-based deep-learning model for the inpainting of Bragg
       coherent diffraction patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
       :doi:`10.1107/S1600576724004163`

    Examples
    --------
    >>> w = importance_map((4, 6), "gaussian")
    >>> w.shape, float(w.max()), bool(w.min() > 0), bool((w == w[::-1, ::-1]).all())
    ((4, 6), 1.0, True, True)
    """
    mode = look_up_option(mode, BLEND_MODES, name="blend mode")
    sizes = np.atleast_1d(np.asarray(patch))
    if sizes.ndim != 1 or not np.issubdtype(sizes.dtype, np.integer) or (sizes < 1).any():
        raise InputError(f"patch must be positive ints; got {patch!r}.")
    if mode == "mean":
        return np.ones(tuple(sizes), np.float32)
    scales = np.atleast_1d(np.asarray(sigma_scale, float))
    if scales.size not in (1, sizes.size) or not (np.isfinite(scales).all() and (scales > 0).all()):
        raise InputError(
            f"sigma_scale must be one positive float or one per axis; got {sigma_scale!r}."
        )
    weights = np.ones((), float)
    for size, scale in zip(sizes, np.broadcast_to(scales, sizes.shape)):
        offset = np.arange(size) - (size - 1) / 2
        weights = np.multiply.outer(weights, np.exp(-0.5 * (offset / (scale * size)) ** 2))
    return np.maximum(weights / weights.max(), MIN_GAUSSIAN_WEIGHT).astype(np.float32)


__all__ = ["BLEND_MODES", "importance_map"]
