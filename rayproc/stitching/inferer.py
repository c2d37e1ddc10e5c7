"""Sliding-window prediction: crop windows, predict them in batches, merge the predictions."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from rayproc.errors import InputError
from rayproc.stitching.merger import ArrayMerger, Merger
from rayproc.stitching.placement import _parse_sizes, _parse_windows
from rayproc.stitching.weights import importance_map


def sliding_window_predict(
    image: np.ndarray,
    origins: np.ndarray,
    predict_batch: Callable[..., np.ndarray],
    *,
    patch,
    weights: str | np.ndarray | None = None,
    batch_size: int = 8,
    extras: Sequence[np.ndarray] = (),
    image_origin: Sequence[int] | None = None,
    merger: Merger | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Predict every window of an image and blend the overlapping predictions.

    Parameters
    ----------
    image : ndarray, shape (*spatial)
        The array (or a region of the global array, see ``image_origin``).
    origins : ndarray of int, shape (K, ndim)
        Global window origins, e.g. from :func:`~rayproc.stitching.gap_windows` or
        :func:`~rayproc.stitching.grid_windows`; processed in this order.
    predict_batch : callable
        ``predict_batch(patches, *extra_patches) -> (B, *patch)``, with ``patches`` a
        float32 array (B, *patch) and one (B, *patch) crop per array of ``extras``. It
        wraps the model and any per-patch normalisation.
    patch : int or sequence of int
        Window shape.
    weights : {"mean", "gaussian"} or ndarray or None, optional
        Importance map of the default merger, or its mode for
        :func:`~rayproc.stitching.importance_map`; None means ``"mean"``. Leave None when
        passing ``merger``, which holds its own weights.
    batch_size : int, optional
        Windows per call of ``predict_batch``.
    extras : sequence of ndarray, optional
        Arrays of the shape of ``image`` (e.g. the missing-voxel mask) cropped alongside.
    image_origin : sequence of int, optional
        Global index of ``image[0, ..., 0]`` (default zeros). Every window must lie inside
        the image.
    merger : Merger, optional
        Where predictions go; default an :class:`~rayproc.stitching.ArrayMerger` over the
        image region.
    progress : callable, optional
        Called as ``progress(done, total)`` (windows) after each batch.

    Returns
    -------
    mean : ndarray, shape (*spatial) of the merger's region
        Weighted mean of the predictions covering each voxel; NaN where none does.
    spread : ndarray, same shape
        Weighted standard deviation of those predictions.

    Examples
    --------
    >>> image = np.arange(6.0)
    >>> mean, _ = sliding_window_predict(image, np.array([[0], [2]]), lambda p: 2 * p, patch=3)
    >>> mean.tolist()
    [0.0, 2.0, 4.0, 6.0, 8.0, nan]
    """
    image = np.asarray(image)
    patch = _parse_sizes(patch, image.ndim, name="patch")
    image_origin = (0,) * image.ndim if image_origin is None else tuple(image_origin)
    origins = _parse_windows(origins, image.shape, patch, region_origin=image_origin)
    extras = [np.asarray(extra) for extra in extras]
    if any(extra.shape != image.shape for extra in extras):
        raise InputError(
            f"extras must have the image shape {image.shape}; got {[e.shape for e in extras]}."
        )
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1; got {batch_size}.")
    if merger is None:
        if weights is None or isinstance(weights, str):
            weights = importance_map(patch, weights or "mean")
        merger = ArrayMerger(image.shape, weights, region_origin=image_origin)
    elif weights is not None:
        raise InputError("pass weights to the merger or to sliding_window_predict, not both.")

    local = origins - np.asarray(image_origin, np.int64)
    total = len(origins)
    for first in range(0, total, int(batch_size)):
        batch = slice(first, min(first + int(batch_size), total))
        crops = [tuple(slice(o, o + p) for o, p in zip(start, patch)) for start in local[batch]]
        patches = np.stack([image[crop] for crop in crops]).astype(np.float32, copy=False)
        extra_patches = [np.stack([extra[crop] for crop in crops]) for extra in extras]
        values = np.asarray(predict_batch(patches, *extra_patches))
        if values.shape != patches.shape:
            raise InputError(
                f"predict_batch must return {patches.shape}; got {values.shape} instead."
            )
        merger.aggregate(values, origins[batch])
        if progress is not None:
            progress(batch.stop, total)
    return merger.finalize()


__all__ = ["sliding_window_predict"]
