"""Classical baselines for gap inpainting: nearest, linear and cubic interpolation across the gap.

Each missing voxel is interpolated along one grid line through it: the axis along which its
run of missing voxels is shortest and has measured voxels on both ends (across a plane gap,
that is the axis perpendicular to it). Voxels with no such axis (where two gaps cross, every
line through them is missing up to the volume's edges) are filled in a later pass from the
values interpolated before; voxels a gap separates from the data on one side (a gap at the
volume's edge) take the nearest value on the other.

These are the baselines the deep-learning model is compared with, as in Masto et al. [1]_.

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
from rayproc.options import look_up_option
from rayproc.stitching.placement import _runs_through

INTERPOLATIONS = ("nearest", "linear", "cubic")


def interpolate_gaps(volume, mask, method: str = "linear") -> np.ndarray:
    """Fill the missing voxels of an array by 1-D interpolation across the gap.

    Parameters
    ----------
    volume : ndarray
        Values (any rank >= 1); those on missing voxels are ignored.
    mask : ndarray of bool, same shape
        True on missing voxels.
    method : {"nearest", "linear", "cubic"}, optional
        ``"nearest"``: the closer of the two measured ends of the run (the lower one on a tie).
        ``"linear"``: the straight line between the two ends. ``"cubic"``: the cubic through
        the two ends and their outer neighbours (Lagrange, four nodes), linear where an outer
        neighbour is missing or outside.

    Returns
    -------
    filled : ndarray of float64, shape of ``volume``
        ``volume`` on measured voxels, interpolated values on missing ones.

    Raises
    ------
    InputError
        If shapes differ or no voxel is measured.

    Notes
    -----
    Linear and cubic interpolation reproduce linear data exactly (cubic also cubic data along
    the interpolation line), including where gaps cross, except next to a gap at the volume's
    edge. Values are interpolated as given: pass counts for a classical baseline (cubic
    interpolation may then undershoot below 0 near sharp fringes).

    Examples
    --------
    >>> volume = np.array([0.0, 1.0, -1.0, -1.0, 4.0, 5.0])
    >>> mask = volume < 0
    >>> interpolate_gaps(volume, mask, "linear").tolist()
    [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    >>> interpolate_gaps(volume, mask, "nearest").tolist()
    [0.0, 1.0, 1.0, 4.0, 4.0, 5.0]
    """
    method = look_up_option(method, INTERPOLATIONS, name="interpolation method")
    filled = np.array(volume, dtype=np.float64)
    missing = np.array(mask, dtype=bool)
    if filled.shape != missing.shape or filled.ndim < 1:
        raise InputError(f"volume and mask must share one shape; got {filled.shape} and {missing.shape} instead.")
    if missing.all():
        raise InputError("mask leaves no measured voxel to interpolate from; got an all-True mask.")
    while missing.any():
        where = np.nonzero(missing)
        best_length = np.full(where[0].size, np.inf)
        best_value = np.zeros(where[0].size)
        side_length = np.full(where[0].size, np.inf)
        side_value = np.zeros(where[0].size)
        for axis in range(filled.ndim):
            start, stop = _runs_through(missing, axis, where)
            length, n = stop - start, filled.shape[axis]
            both = (start > 0) & (stop < n) & (length < best_length)
            if both.any():
                best_value[both] = _along_axis(filled, missing, where, axis, start, stop, both, method)
                best_length[both] = length[both]
            # For gaps at the edge: the nearest measured value on the side that has one.
            side = ((start > 0) | (stop < n)) & (length < side_length)
            nearest = np.where(start > 0, start - 1, np.minimum(stop, n - 1))
            side_value[side] = _take(filled, where, axis, nearest)[side]
            side_length[side] = length[side]
        done = np.isfinite(best_length)
        if not done.any():  # only edge gaps are left: extend the data at their open side
            done, best_value = np.isfinite(side_length), side_value
        filled[tuple(w[done] for w in where)] = best_value[done]
        missing[tuple(w[done] for w in where)] = False
    return filled


def _take(values, where, axis, positions) -> np.ndarray:
    """``values`` at the missing voxels ``where`` moved to ``positions`` along ``axis``."""
    index = list(where)
    index[axis] = positions
    return values[tuple(index)]


def _along_axis(filled, missing, where, axis, start, stop, selected, method) -> np.ndarray:
    """Interpolated values of the ``selected`` missing voxels along ``axis``."""
    where = tuple(w[selected] for w in where)
    left, right = start[selected] - 1, stop[selected]
    t = where[axis]
    v_left, v_right = _take(filled, where, axis, left), _take(filled, where, axis, right)
    if method == "nearest":
        return np.where(t - left <= right - t, v_left, v_right)
    linear = v_left + (t - left) / (right - left) * (v_right - v_left)
    if method == "linear":
        return linear
    n = filled.shape[axis]
    outer_left, outer_right = np.maximum(left - 1, 0), np.minimum(right + 1, n - 1)
    usable = (left >= 1) & (right <= n - 2)
    usable &= ~_take(missing, where, axis, outer_left) & ~_take(missing, where, axis, outer_right)
    nodes = np.stack([outer_left, left, right, outer_right]).astype(np.float64)
    values = np.stack([_take(filled, where, axis, node) for node in (outer_left, left, right, outer_right)])
    cubic = np.zeros_like(linear)
    for j in range(4):
        basis = np.ones_like(linear)
        for k in range(4):
            if k != j:
                basis *= (t - nodes[k]) / np.where(usable, nodes[j] - nodes[k], 1.0)
        cubic += basis * values[j]
    return np.where(usable, cubic, linear)


__all__ = ["INTERPOLATIONS", "interpolate_gaps"]
