"""Merging overlapping window predictions into a weighted mean and a per-voxel spread.

A merger receives batches of window predictions with their global origins
(:meth:`Merger.aggregate`) and returns the blend (:meth:`Merger.finalize`). The in-memory
:class:`ArrayMerger` and a store-backed merger share the :class:`Merger` protocol and the
update rule :func:`update_moments`, so both give the same numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from rayproc.errors import InputError
from rayproc.stitching.placement import _parse_shape


@runtime_checkable
class Merger(Protocol):
    """Accumulates window predictions over a region of the global array."""

    def aggregate(self, values: np.ndarray, origins: np.ndarray) -> None:
        """Add predictions ``values`` (B, *patch) of windows at global ``origins`` (B, ndim)."""

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the weighted mean and weighted standard deviation over the region."""


def update_moments(mean, m2, weight_sum, values, weights, *, scratch=None) -> None:
    """Add one weighted prediction to running weighted moments, in place.

    Parameters
    ----------
    mean, m2, weight_sum : ndarray of float64, shape (*S)
        Running weighted mean, weighted sum of squared deviations and weight sum (zero
        before the first prediction); updated in place (views are fine).
    values : ndarray, shape (*S)
        The prediction.
    weights : ndarray, shape (*S)
        Its positive weights.
    scratch : (ndarray, ndarray) of float64, optional
        Two work arrays of at least shape ``S`` along every axis (e.g. the patch shape),
        reused across calls so that no temporary is allocated per window; the result is
        the same to the bit.

    Notes
    -----
    West's weighted form of Welford's update [1]_:
    :math:`W \\leftarrow W + w`, :math:`\\delta = v - \\mu`, :math:`\\mu \\leftarrow \\mu +
    \\delta\\, w / W`, :math:`M_2 \\leftarrow M_2 + w\\,\\delta\\,(v - \\mu)`. Unlike sums
    of ``w v`` and ``w v^2`` it does not cancel catastrophically for large intensities
    with small spread, the first prediction is copied exactly (``w / W = 1``), and equal
    predictions leave the mean unchanged and the spread exactly 0. The result depends on
    the order of the updates at the rounding level only.

    References
    ----------
    .. [1] D. H. D. West, "Updating mean and variance estimates: an improved method",
       Commun. ACM 22 (1979) 532-535. :doi:`10.1145/359146.359153`
    """
    region = tuple(slice(0, n) for n in np.shape(mean))
    if scratch is None:
        scratch = (np.empty(np.shape(mean)), np.empty(np.shape(mean)))
    delta, step = scratch[0][region], scratch[1][region]
    weight_sum += weights
    np.subtract(values, mean, out=delta)
    np.divide(weights, weight_sum, out=step)
    step *= delta
    mean += step  # mean += delta * (weights / weight_sum)
    np.multiply(weights, delta, out=delta)
    np.subtract(values, mean, out=step)
    delta *= step
    m2 += delta  # m2 += weights * delta * (values - mean)


def finalize_moments(mean, m2, weight_sum, *, fill=np.nan, dtype=np.float32):
    """Weighted mean and weighted standard deviation from running moments.

    Parameters
    ----------
    mean, m2, weight_sum : ndarray, shape (*S)
        Running moments as left by :func:`update_moments`.
    fill : float, optional
        Value of both outputs where no prediction arrived (``weight_sum == 0``).
    dtype : dtype, optional
        Output dtype.

    Returns
    -------
    mean : ndarray, shape (*S)
        Weighted mean :math:`\\sum w v / \\sum w`.
    spread : ndarray, shape (*S)
        Weighted (population) standard deviation
        :math:`\\sqrt{\\sum w (v - \\mu)^2 / \\sum w}`; equals ``np.std`` of the
        overlapping predictions for equal weights, and 0 where one window covers.
    """
    covered = weight_sum > 0
    safe_sum = np.where(covered, weight_sum, 1.0)
    spread = np.sqrt(np.maximum(m2, 0.0) / safe_sum)
    return (
        np.where(covered, mean, fill).astype(dtype),
        np.where(covered, spread, fill).astype(dtype),
    )


class ArrayMerger:
    """In-memory merger over a region of the global array.

    Parameters
    ----------
    shape : sequence of int
        Shape of the region the merger covers.
    weight_map : ndarray, shape (*patch)
        Positive importance weights of a window (see
        :func:`rayproc.stitching.importance_map`); fixes the patch shape.
    region_origin : sequence of int, optional
        Global index of the region's first voxel (default all zeros: the whole array). A
        window partly outside the region adds only its intersection with it.
    fill : float, optional
        Value of the outputs on voxels no window covers.
    dtype : dtype, optional
        Dtype of the outputs; accumulation is in float64.

    Notes
    -----
    Windows are added one by one in the order received, so a voxel's result depends only on
    the order of the windows covering it: a chunk given the windows in global order gives
    bit-identical results to the whole-array run (see :mod:`rayproc.stitching.chunking`).

    Examples
    --------
    >>> merger = ArrayMerger((4,), np.ones(2))
    >>> merger.aggregate(np.array([[1.0, 2.0], [4.0, 6.0]]), np.array([[0], [1]]))
    >>> mean, spread = merger.finalize()
    >>> mean.tolist(), spread.tolist()
    ([1.0, 3.0, 6.0, nan], [0.0, 1.0, 0.0, nan])
    """

    def __init__(
        self,
        shape: Sequence[int],
        weight_map: np.ndarray,
        *,
        region_origin: Sequence[int] | None = None,
        fill: float = np.nan,
        dtype=np.float32,
    ):
        self.shape = _parse_shape(shape)
        weight_map = np.asarray(weight_map, np.float64)
        positive = np.isfinite(weight_map).all() and (weight_map > 0).all()
        if weight_map.ndim != len(self.shape) or weight_map.size == 0 or not positive:
            raise InputError(
                f"weight_map must be positive and finite with {len(self.shape)} axes; got shape "
                f"{weight_map.shape}, minimum {weight_map.min() if weight_map.size else None}."
            )
        self.weight_map = weight_map
        self.patch = weight_map.shape
        origin = np.zeros(len(self.shape), np.int64) if region_origin is None else region_origin
        self.region_origin = tuple(int(v) for v in np.asarray(origin).reshape(len(self.shape)))
        self.fill = fill
        self.dtype = np.dtype(dtype)
        self._mean = np.zeros(self.shape)
        self._m2 = np.zeros(self.shape)
        self._weight_sum = np.zeros(self.shape)
        self._scratch = (np.empty(self.patch), np.empty(self.patch))  # no allocation per window

    def aggregate(self, values: np.ndarray, origins: np.ndarray) -> None:
        """Add window predictions.

        Parameters
        ----------
        values : ndarray, shape (B, *patch)
            Finite predictions.
        origins : ndarray of int, shape (B, ndim)
            Global origins of the windows, in the order they are to be added.
        """
        values = np.asarray(values)
        origins = np.asarray(origins)
        if values.shape[1:] != self.patch or origins.shape != (len(values), len(self.shape)):
            raise InputError(
                f"expected values (B, *{self.patch}) and origins (B, {len(self.shape)}); got "
                f"{values.shape} and {origins.shape}."
            )
        finite = np.isfinite(values)
        if not finite.all():
            bad = finite.size - np.count_nonzero(finite)
            raise InputError(f"predictions must be finite; got {bad} non-finite values.")
        local = origins.astype(np.int64) - self.region_origin
        for value, start in zip(values, local):
            first = np.maximum(start, 0)
            stop = np.minimum(start + self.patch, self.shape)
            if (stop <= first).any():
                continue
            target = tuple(slice(a, b) for a, b in zip(first, stop))
            source = tuple(slice(a - s, b - s) for a, b, s in zip(first, stop, start))
            update_moments(
                self._mean[target], self._m2[target], self._weight_sum[target],
                value[source], self.weight_map[source], scratch=self._scratch,
            )

    def finalize(self) -> tuple[np.ndarray, np.ndarray]:
        """Weighted mean and spread over the region, see :func:`finalize_moments`.

        Returns
        -------
        mean, spread : ndarray, shape ``shape``
            ``fill`` where no window covers.
        """
        return finalize_moments(
            self._mean, self._m2, self._weight_sum, fill=self.fill, dtype=self.dtype
        )


__all__ = ["Merger", "ArrayMerger", "update_moments", "finalize_moments"]
