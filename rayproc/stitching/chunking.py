"""Distribution plan of a sliding-window run: which windows each output chunk needs.

The output array is cut into a regular grid of chunks (like a zarr chunk grid). Each chunk
becomes a :class:`ChunkTask`: its *core* (the output chunk), the indices of the global
windows that intersect it, and the region to read (those windows' bounding box, which
contains the core plus a halo). Predicting those windows over the read region and keeping
the core gives exactly the whole-array result (:func:`predict_chunk`): every window covering
a core voxel intersects the core, and windows are merged in global order.

Bit-identical, not just close: floating-point sums depend on their order, and each voxel
receives the updates of its windows in the same (global index) order in both runs. A merger
that reorders them (a parallel reduction, or windows taken chunk by chunk in another order)
agrees only to rounding, about 1e-7 relative in float32.

A stack of samples (e.g. LabDCT frames, shape (F, H, W)) is a 3-D array whose windows have
size 1 and stride 1 along the sample axis: place them with
``grid_windows((F, H, W), (1, h, w), (1, s, s))`` and plan with ``chunk=(1, ch, cw)``;
``predict_batch`` then receives (B, 1, h, w) patches.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from rayproc.errors import InputError
from rayproc.stitching.inferer import sliding_window_predict
from rayproc.stitching.merger import ArrayMerger
from rayproc.stitching.placement import _parse_shape, _parse_sizes, _parse_windows
from rayproc.stitching.weights import importance_map


@dataclass(frozen=True)
class ChunkTask:
    """The work of one output chunk.

    Parameters
    ----------
    index : tuple of int
        Position of the chunk in the chunk grid.
    core : tuple of slice
        The output chunk in global coordinates.
    windows : tuple of int
        Indices, ascending, into the global origins of every window intersecting the core;
        empty for a pass-through chunk (no window: copy the input).
    read_region : tuple of slice
        Bounding box of the core and those windows, in global coordinates.
    """

    index: tuple[int, ...]
    core: tuple[slice, ...]
    windows: tuple[int, ...]
    read_region: tuple[slice, ...]

    def __post_init__(self):
        inside = all(
            r.start <= c.start < c.stop <= r.stop for c, r in zip(self.core, self.read_region)
        )
        if not (len(self.index) == len(self.core) == len(self.read_region)) or not inside:
            raise InputError(
                f"a chunk's read_region must contain its core; got index {self.index}, core "
                f"{self.core}, read_region {self.read_region}."
            )

    @property
    def passthrough(self) -> bool:
        """True when no window touches the chunk: its output is the input."""
        return not self.windows

    def to_dict(self) -> dict:
        def bounds(region):
            return [[s.start, s.stop] for s in region]

        return {
            "index": list(self.index),
            "core": bounds(self.core),
            "windows": list(self.windows),
            "read_region": bounds(self.read_region),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "ChunkTask":
        def region(bounds):
            return tuple(slice(int(start), int(stop)) for start, stop in bounds)

        return cls(
            index=tuple(int(i) for i in d["index"]),
            core=region(d["core"]),
            windows=tuple(int(w) for w in d["windows"]),
            read_region=region(d["read_region"]),
        )


def plan_chunks(shape: Sequence[int], chunk, origins: np.ndarray, patch) -> list[ChunkTask]:
    """Cut a sliding-window run into independent chunk tasks.

    Parameters
    ----------
    shape : sequence of int
        Shape of the global array.
    chunk : int or sequence of int
        Output chunk shape; the last chunk along an axis may be smaller.
    origins : ndarray of int, shape (K, ndim)
        Global window origins (the same array every worker uses).
    patch : int or sequence of int
        Window shape.

    Returns
    -------
    tasks : list of ChunkTask
        One per chunk of the grid, in C order of ``index``; chunks no window touches are
        pass-through.

    Examples
    --------
    >>> tasks = plan_chunks((10,), 5, np.array([[0], [3]]), 4)
    >>> [(t.windows, t.read_region) for t in tasks]
    [((0, 1), (slice(0, 7, None),)), ((1,), (slice(3, 10, None),))]
    """
    shape = _parse_shape(shape)
    chunk = _parse_sizes(chunk, len(shape), name="chunk")
    patch = _parse_sizes(patch, len(shape), name="patch")
    origins = _parse_windows(origins, shape, patch)
    grid = tuple(-(-n // c) for n, c in zip(shape, chunk))

    # Every (chunk, window) pair where the window intersects the chunk.
    first = origins // chunk
    span = (origins + patch - 1) // chunk - first + 1
    chunk_ids, window_ids = [], []
    for offset in np.ndindex(*span.max(axis=0, initial=1)):
        touches = (np.asarray(offset) < span).all(axis=1)
        chunk_ids.append(np.ravel_multi_index(tuple((first[touches] + offset).T), grid))
        window_ids.append(np.flatnonzero(touches))
    chunk_ids, window_ids = np.concatenate(chunk_ids), np.concatenate(window_ids)
    order = np.lexsort((window_ids, chunk_ids))
    chunk_ids, window_ids = chunk_ids[order], window_ids[order]
    bounds = np.searchsorted(chunk_ids, np.arange(np.prod(grid) + 1))

    tasks = []
    for flat, index in enumerate(np.ndindex(*grid)):
        core_start = np.multiply(index, chunk)
        core_stop = np.minimum(core_start + chunk, shape)
        windows = window_ids[bounds[flat] : bounds[flat + 1]]
        read_start, read_stop = core_start, core_stop
        if windows.size:
            read_start = np.minimum(read_start, origins[windows].min(axis=0))
            read_stop = np.maximum(read_stop, origins[windows].max(axis=0) + patch)
        tasks.append(
            ChunkTask(
                index=tuple(int(i) for i in index),
                core=_slices(core_start, core_stop),
                windows=tuple(windows.tolist()),
                read_region=_slices(read_start, read_stop),
            )
        )
    return tasks


def predict_chunk(
    task: ChunkTask,
    image,
    origins: np.ndarray,
    predict_batch: Callable[..., np.ndarray],
    *,
    patch,
    weights: str | np.ndarray = "mean",
    batch_size: int = 8,
    extras: Sequence = (),
    fill: float = np.nan,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Run one chunk task: predict its windows over its read region, blend over its core.

    Parameters
    ----------
    task : ChunkTask
        From :func:`plan_chunks`.
    image : array_like, shape (*spatial)
        The global array, or anything sliceable like it (a zarr array): only
        ``image[task.read_region]`` is read.
    origins : ndarray of int, shape (K, ndim)
        The global origins ``task.windows`` index into.
    predict_batch, patch, weights, batch_size, progress
        As in :func:`~rayproc.stitching.sliding_window_predict`.
    extras : sequence of array_like, optional
        Global arrays cropped alongside (read over the read region only).
    fill : float, optional
        Output value on core voxels no window covers.

    Returns
    -------
    mean, spread : ndarray, shape of the core
        Equal to ``sliding_window_predict`` over the whole array, restricted to the core.
        All ``fill`` for a pass-through task (``predict_batch`` is not called).
    """
    patch = _parse_sizes(patch, len(task.core), name="patch")
    if isinstance(weights, str):
        weights = importance_map(patch, weights)
    core_shape = tuple(s.stop - s.start for s in task.core)
    core_origin = [s.start for s in task.core]
    merger = ArrayMerger(core_shape, weights, region_origin=core_origin, fill=fill)
    if task.passthrough:
        return merger.finalize()
    return sliding_window_predict(
        np.asarray(image[task.read_region]),
        np.asarray(origins)[list(task.windows)],
        predict_batch,
        patch=patch,
        batch_size=batch_size,
        extras=[np.asarray(extra[task.read_region]) for extra in extras],
        image_origin=[s.start for s in task.read_region],
        merger=merger,
        progress=progress,
    )


def _slices(start, stop) -> tuple[slice, ...]:
    return tuple(slice(int(a), int(b)) for a, b in zip(start, stop))


__all__ = ["ChunkTask", "plan_chunks", "predict_chunk"]
