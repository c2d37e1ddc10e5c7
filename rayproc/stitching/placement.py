"""Window placement: where the patches of a sliding-window inference go.

A window is given by its origin (the index of its first voxel); all windows of one run share
one patch shape. Two placements:

* :func:`grid_windows` tiles a whole array (LabDCT frame denoising);
* :func:`gap_windows` slides along the missing voxels of a mask (BCDI gap inpainting, after
  Masto et al. [1]_).

:func:`windows_holding` tells which windows hold a voxel of a mask (e.g. keeps the windows of
a grid that touch a gap, or checks that every window has a measured voxel).

Both are pure functions of their arguments over the *global* array, so every worker of a
chunked run selects exactly the same windows.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rayproc.errors import InputError


def grid_windows(shape: Sequence[int], patch, stride) -> np.ndarray:
    """Origins of windows tiling a whole array, the last one snapped to the end.

    Parameters
    ----------
    shape : sequence of int
        Shape of the array, ``ndim`` entries.
    patch : int or sequence of int
        Window shape (one value for all axes, or one per axis); at most ``shape``.
    stride : int or sequence of int
        Step between neighbouring origins, in ``[1, patch]`` so that windows leave no hole.

    Returns
    -------
    origins : ndarray of int64, shape (K, ndim)
        Window origins in C order. Along each axis they are ``0, stride, 2 * stride, ...``
        plus ``shape - patch`` when the lattice does not end there, so every voxel is covered.

    Examples
    --------
    >>> grid_windows((5, 4), 3, 2).tolist()
    [[0, 0], [0, 1], [2, 0], [2, 1]]
    """
    shape = _parse_shape(shape)
    patch, stride = _parse_patch_stride(shape, patch, stride)
    positions = [_axis_lattice(n, p, s) for n, p, s in zip(shape, patch, stride)]
    grids = np.meshgrid(*positions, indexing="ij")
    return np.stack([g.ravel() for g in grids], axis=-1).astype(np.int64)


def gap_windows(mask: np.ndarray, patch, stride=1) -> np.ndarray:
    """Origins of windows sliding along the missing voxels of a mask.

    Every missing voxel nominates one window; the nominations, without duplicates, are the
    result. Along each axis the nominated window is placed as follows (Notes give the why):

    * *narrow* axis (the run of missing voxels through the voxel along this axis is at most
      ``patch`` long): the window is centred on the run, which it then contains wholly, the
      run starting ``(patch - run) // 2`` voxels into it;
    * *wide* axis (a longer run: the gap extends along this axis): the window is centred on
      the voxel itself (``patch // 2`` voxels into it).

    The centred origin is then rounded to the stride lattice (multiples of ``stride``) and
    clipped so that the window still contains the run (narrow) or the voxel (wide) and lies
    inside the array.

    Parameters
    ----------
    mask : ndarray of bool, shape (*spatial)
        True where a voxel is missing.
    patch : int or sequence of int
        Window shape; at most ``mask.shape``.
    stride : int or sequence of int, optional
        Lattice step in ``[1, patch]``. 1 (default) gives the published procedure of [1]_.

    Returns
    -------
    origins : ndarray of int64, shape (K, ndim)
        Distinct window origins in lexicographic order; ``(0, ndim)`` for an empty mask.
        Every missing voxel lies in at least one window.

    Notes
    -----
    Masto et al. [1]_ train on 32^3 portions cut by a plane gap ("line") or two crossing
    ones ("cross"), and inpaint a measured pattern by sliding a portion along the gap with a
    step of one voxel, averaging overlapping predictions plainly. For a plane gap of width
    ``w <= patch`` in an array of shape ``N``, perpendicular to axis ``a``, ``stride=1``
    gives exactly those windows: one origin across the gap (the gap centred in the window,
    as :func:`rayproc.bcdi.gaps.random_gap` places it with ``centred=True``) and every
    position along it,

    .. math:: K = \\prod_{b \\neq a} (N_b - p_b + 1).

    A gap narrow along several axes (a line in 3D) is centred along all of them, e.g.
    ``K = N_c - p_c + 1`` for a line along axis ``c``. With ``stride = s > 1`` the positions
    along a gap are those of :func:`grid_windows` (``ceil((N_b - p_b) / s) + 1`` per axis
    ``b``) and the gap sits at most ``s // 2`` voxels off centre across.

    Voxels where gaps cross, and bands wider than the patch, are wide along every axis:
    they nominate windows centred on themselves (rounded to the lattice), which tile such
    regions with the given stride. So for two crossing planes at stride 1, each plane's
    windows skip the positions centred on the other plane, and windows centred on the
    crossing voxels take their place (the cross sits inside them, as in the "cross"
    training portions of [1]_). Isolated missing voxels (dead pixels) are narrow along every
    axis and share lattice-rounded windows. Coverage is guaranteed by construction: each
    nominated window contains the voxel that nominated it.

    Runs are computed over the whole array, so memory is a few integer arrays of
    ``mask.shape``; a 256^3 mask takes about 1 s.

    References
    ----------
    .. [1] M. Masto et al., "Patching-based deep-learning model for the inpainting of Bragg
       coherent diffraction patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
       :doi:`10.1107/S1600576724004163`

    Examples
    --------
    >>> mask = np.zeros((8, 40), bool)
    >>> mask[:, 18:22] = True  # a 4-px gap across a 40-px line
    >>> gap_windows(mask, (8, 8)).tolist()
    [[0, 16]]
    """
    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise InputError(f"mask must be a bool array (True = missing); got dtype {mask.dtype}.")
    patch, stride = _parse_patch_stride(mask.shape, patch, stride)
    missing = np.nonzero(mask)
    if missing[0].size == 0:
        return np.zeros((0, mask.ndim), np.int64)
    origins = np.empty((missing[0].size, mask.ndim), np.int64)
    for axis, (n, p, s) in enumerate(zip(mask.shape, patch, stride)):
        start, stop = _runs_through(mask, axis, missing)
        origins[:, axis] = _nominated_origins(missing[axis], start, stop, n=n, p=p, s=s)
    origin_space = tuple(n - p + 1 for n, p in zip(mask.shape, patch))
    flat = np.unique(np.ravel_multi_index(tuple(origins.T), origin_space))
    return np.stack(np.unravel_index(flat, origin_space), axis=-1).astype(np.int64)


def windows_holding(mask: np.ndarray, origins, patch) -> np.ndarray:
    """Whether each window holds at least one True voxel of a mask.

    Parameters
    ----------
    mask : ndarray of bool, shape (*spatial)
        The voxels looked for.
    origins : ndarray of int, shape (K, ndim)
        Window origins; every window must lie inside the mask.
    patch : int or sequence of int
        Window shape.

    Returns
    -------
    ndarray of bool, shape (K,)

    Notes
    -----
    A running maximum of width ``patch`` per axis (``scipy.ndimage.maximum_filter1d``) gives,
    at every index, whether the window starting there holds a True voxel: a few passes over
    the mask instead of one crop per window.

    Examples
    --------
    >>> mask = np.zeros(10, bool)
    >>> mask[6] = True
    >>> windows_holding(mask, np.array([[0], [2], [4], [6]]), 4).tolist()
    [False, False, True, True]
    """
    from scipy import ndimage as ndi

    mask = np.asarray(mask)
    if mask.dtype != bool:
        raise InputError(f"mask must be a bool array; got dtype {mask.dtype}.")
    patch = _parse_sizes(patch, mask.ndim, name="patch")
    origins = _parse_windows(origins, mask.shape, patch)
    held = mask
    for axis, p in enumerate(patch):  # held[i]: a True voxel in [i, i + p) along the axes done so far
        held = ndi.maximum_filter1d(held, p, axis=axis, mode="constant", cval=False, origin=-(p // 2))
    return held[tuple(origins.T)]


def window_coverage(shape: Sequence[int], origins, patch) -> np.ndarray:
    """Number of windows covering each voxel.

    Parameters
    ----------
    shape : sequence of int
        Shape of the array, ``ndim`` entries.
    origins : array_like of int, shape (K, ndim)
        Window origins, windows lying inside the array.
    patch : int or sequence of int
        Window shape.

    Returns
    -------
    count : ndarray of int32, shape ``shape``
        How many windows contain each voxel (0 where none does).

    Examples
    --------
    >>> window_coverage((5,), [[0], [2]], 3).tolist()
    [1, 1, 2, 1, 1]
    """
    shape = _parse_shape(shape)
    patch = _parse_sizes(patch, len(shape), name="patch")
    origins = _parse_windows(origins, shape, patch)
    count = np.zeros(shape, np.int32)
    np.add.at(count, tuple(origins.T), 1)
    for axis, p in enumerate(patch):
        # Box sum over the origins o with y - p < o <= y, i.e. windows containing y.
        running = np.cumsum(count, axis=axis, dtype=np.int32)
        count = running.copy()
        later = [slice(None)] * len(shape)
        earlier = [slice(None)] * len(shape)
        later[axis], earlier[axis] = slice(p, None), slice(None, -p)
        count[tuple(later)] -= running[tuple(earlier)]
    return count


def _axis_lattice(n: int, p: int, s: int) -> np.ndarray:
    """Origins ``0, s, 2s, ...`` along one axis, plus ``n - p`` if the lattice misses it."""
    positions = np.arange(0, n - p + 1, s)
    if positions[-1] != n - p:
        positions = np.append(positions, n - p)
    return positions


def _runs_through(mask: np.ndarray, axis: int, missing: tuple[np.ndarray, ...]):
    """Start and stop (exclusive) of the run of missing voxels through each missing voxel."""
    n = mask.shape[axis]
    dtype = np.int16 if n < np.iinfo(np.int16).max else np.int64
    index = np.arange(n, dtype=dtype).reshape([n if a == axis else 1 for a in range(mask.ndim)])
    # After each known voxel a run may start; the running maximum carries the latest such start.
    start = np.maximum.accumulate(np.where(mask, dtype(0), index + 1), axis=axis)[missing]
    backwards = np.flip(np.where(mask, dtype(n), index), axis=axis)
    stop = np.flip(np.minimum.accumulate(backwards, axis=axis), axis=axis)[missing]
    return start.astype(np.int64), stop.astype(np.int64)


def _nominated_origins(x, start, stop, *, n: int, p: int, s: int) -> np.ndarray:
    """Origin along one axis of the window each missing voxel nominates (see gap_windows)."""
    length = stop - start
    narrow = length <= p
    centred = np.where(narrow, start - (p - length) // 2, x - p // 2)
    lowest = np.maximum(np.where(narrow, stop - p, x - p + 1), 0)
    highest = np.minimum(np.where(narrow, start, x), n - p)
    on_lattice = (centred + s // 2) // s * s
    return np.clip(on_lattice, lowest, highest)


def _parse_shape(shape) -> tuple[int, ...]:
    shape = tuple(int(n) for n in np.atleast_1d(shape))
    if min(shape) < 1:
        raise InputError(f"shape must have positive entries; got {shape}.")
    return shape


def _parse_sizes(value, ndim: int, *, name: str) -> tuple[int, ...]:
    """An int or one int per axis, each >= 1, as a tuple of ``ndim`` ints."""
    sizes = np.atleast_1d(np.asarray(value))
    if sizes.ndim != 1 or sizes.size not in (1, ndim) or not np.issubdtype(sizes.dtype, np.integer):
        raise InputError(f"{name} must be an int or {ndim} ints; got {value!r}.")
    sizes = tuple(int(v) for v in np.broadcast_to(sizes, (ndim,)))
    if min(sizes) < 1:
        raise InputError(f"{name} must be >= 1 along every axis; got {value!r}.")
    return sizes


def _parse_patch_stride(shape: tuple[int, ...], patch, stride):
    patch = _parse_sizes(patch, len(shape), name="patch")
    stride = _parse_sizes(stride, len(shape), name="stride")
    if any(p > n for p, n in zip(patch, shape)):
        raise InputError(f"patch must fit in the array; got patch {patch} for shape {shape}.")
    if any(s > p for s, p in zip(stride, patch)):
        raise InputError(f"stride must be at most the patch; got stride {stride}, patch {patch}.")
    return patch, stride


def _parse_windows(origins, shape, patch, *, region_origin=None) -> np.ndarray:
    """Origins as a (K, ndim) int64 array, checked to lie inside ``shape`` (at region_origin)."""
    origins = np.asarray(origins)
    ndim = len(shape)
    if origins.size == 0:
        origins = origins.reshape(0, ndim).astype(np.int64)
    integer = np.issubdtype(origins.dtype, np.integer)
    if origins.ndim != 2 or origins.shape[1] != ndim or not integer:
        raise InputError(f"origins must be an int array of shape (K, {ndim}); got {origins.shape}.")
    origins = origins.astype(np.int64)
    local = origins - (0 if region_origin is None else np.asarray(region_origin))
    if origins.size and ((local < 0).any() or (local + patch > np.asarray(shape)).any()):
        raise InputError(
            f"windows of shape {tuple(patch)} must lie inside the array of shape {tuple(shape)}"
            f"{'' if region_origin is None else f' at {tuple(region_origin)}'}; got origins from "
            f"{tuple(origins.min(0))} to {tuple(origins.max(0))}."
        )
    return origins


__all__ = ["grid_windows", "gap_windows", "window_coverage", "windows_holding"]
