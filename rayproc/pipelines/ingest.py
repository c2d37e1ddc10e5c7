"""``rayproc ingest``: real detector data into a zarr dataset with named dims."""

from __future__ import annotations

import numpy as np
import xarray as xr

from rayproc.storage import command_line, provenance, resolve, write_dataset
from rayproc.storage.outputs import claim_store
from rayproc.storage.readers import read_volume, validate_counts

DEFAULT_CHUNKS = {"z": 64, "y": 128, "x": 128}


def volume_dataset(volume: np.ndarray, *, attrs: dict | None = None) -> xr.Dataset:
    """Wrap a (z, y, x) count volume as a Dataset with pixel-index coordinates."""
    z, y, x = volume.shape
    return xr.Dataset(
        {"intensity": (("z", "y", "x"), volume.astype(np.float32, copy=False),
                       {"units": "photons", "long_name": "detector counts"})},
        coords={
            "z": ("z", np.arange(z), {"units": "frame", "long_name": "frame (rocking step)"}),
            "y": ("y", np.arange(y), {"units": "pixel", "long_name": "detector row"}),
            "x": ("x", np.arange(x), {"units": "pixel", "long_name": "detector column"}),
        },
        attrs=dict(attrs or {}),
    )


def ingest(
    source: str,
    dest: str,
    *,
    key: str | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    command: str | None = None,
) -> xr.Dataset:
    """Read ``source`` (TIFF folder, TIFF, .npy/.npz, ``file.h5:/path``) into the store ``dest``.

    Returns the in-memory Dataset that was written.
    """
    location = resolve(dest, storage_options)
    claim_store(location, inputs=[source], overwrite=overwrite)
    volume, info = read_volume(source, key=key)
    validate_counts(volume, ndim=3)
    dataset = volume_dataset(volume, attrs={"source_format": info["format"]})
    params = {"source": str(source), "key": key, "shape": list(volume.shape)}
    write_dataset(
        location, dataset, chunks={"intensity": DEFAULT_CHUNKS},
        provenance_attrs=provenance(command or command_line(), params), overwrite=overwrite,
        inputs=[source],
    )
    return dataset


__all__ = ["ingest", "volume_dataset"]
