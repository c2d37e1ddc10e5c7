"""Synthetic BCDI volumes for the scaling benchmarks, written to a zarr store slab by slab.

A Bragg peak of a cube-shaped crystal (a product of squared sincs, fringes on the three axes) on a
flat background, Poisson counts seeded per slab: any size, never whole in memory.
"""

from __future__ import annotations

import numpy as np


def write_volume_store(path: str, size: int, *, chunk: int = 128, slab: int = 32, peak: float = 1e5,
                       mask_box: int | None = None, seed: int = 0) -> None:
    """A (z, y, x) ``intensity`` store of ``size``^3 float32 counts, chunked ``chunk``^3.

    ``mask_box``: also a ``mask`` (True = missing), a 6 px cross (x and y planes through the
    centre) inside a ``mask_box``^3 cube at the centre: a gap area that does not grow with the volume.
    """
    import zarr

    group = zarr.open_group(path, mode="w")
    shape, chunks = (size,) * 3, (min(chunk, size),) * 3
    intensity = group.create_array("intensity", shape=shape, chunks=chunks, dtype="float32",
                                   dimension_names=("z", "y", "x"))
    mask = None
    if mask_box is not None:
        mask = group.create_array("mask", shape=shape, chunks=chunks, dtype="bool", dimension_names=("z", "y", "x"))
    axis = (np.arange(size) - size / 2) / 3.0  # fringe period 3 px
    profile = np.sinc(axis).astype(np.float32) ** 2
    plane = np.outer(profile, profile)
    centre, half = size // 2, (mask_box or 0) // 2
    slab = chunks[0] if size % slab else min(slab, chunks[0])
    for z in range(0, size, slab):
        rng = np.random.default_rng([seed, z])
        mean = peak * profile[z:z + slab, None, None] * plane[None] + 2.0
        intensity[z:z + slab] = rng.poisson(mean).astype(np.float32)
        if mask is not None:
            part = np.zeros((min(slab, size - z), size, size), bool)
            rows = np.arange(z, z + part.shape[0])
            inside = (rows >= centre - half) & (rows < centre + half)
            box = slice(centre - half, centre + half)
            gap = slice(centre - 3, centre + 3)
            part[inside, box, gap] = True
            part[inside, gap, box] = True
            mask[z:z + slab] = part
