"""Inputs of a stage: a zarr store, a file or a TIFF folder, opened as one named-dim array.

:func:`open_input` is the one way a stage opens what a user points it at:

* a zarr store (local path or ``s3://``): the first of the candidate variables it holds, read
  lazily (slicing reads only that region), with the store's dims, coordinates and attrs, and its
  :class:`~rayproc.storage.location.Location` so that Ray actors can re-open the variable
  (:func:`open_array`) instead of receiving it;
* anything :func:`rayproc.storage.readers.read_volume` reads (a TIFF folder in name order, a
  multi-page TIFF, ``.npy``/``.npz``, ``file.h5:/dataset``): read into memory, given the dims
  and index coordinates the stage names.

Checks of rank, values and shapes belong to the stage (each says what it expects); this module
only opens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.storage.dataset import open_dataset, with_retries, zarr_store
from rayproc.storage.location import Location, filesystem, resolve
from rayproc.storage.readers import read_volume

# Attrs of the index coordinates of a detector image read from a file.
PIXEL_COORDS = {
    "y": {"units": "pixel", "long_name": "detector row"},
    "x": {"units": "pixel", "long_name": "detector column"},
}


@dataclass(frozen=True)
class InputArray:
    """One array of an input as a stage sees it: lazily sliceable, with named dims.

    Attributes
    ----------
    url : str
        The input, resolved (absolute path or URL).
    name : str or None
        The variable read from a store; None for a file.
    data : xarray.DataArray or numpy.ndarray
        Lazy for a store (``data[region]`` reads that region), in memory for a file.
    dims : tuple of str
        Named dims: the store's, or those the stage gave for a file.
    coords : dict of str to xarray.Variable
        Every coordinate of a store; for a file, the index coordinates the stage asked for.
    attrs : dict
        Root attrs of a store (its provenance included); empty for a file.
    variable_attrs : dict
        Attrs of the variable (e.g. ``units``); empty for a file.
    location : Location or None
        The store, which actors re-open with :func:`open_array`; None for a file (in memory).
    source_format : str
        ``"zarr"``, or the format :func:`~rayproc.storage.readers.read_volume` found.
    frame_names : tuple of str or None
        The files of a TIFF folder, in stack order.
    """

    url: str
    name: str | None
    data: Any
    dims: tuple[str, ...]
    coords: dict[str, xr.Variable]
    attrs: dict
    variable_attrs: dict = field(default_factory=dict)
    location: Location | None = None
    source_format: str = "zarr"
    frame_names: tuple[str, ...] | None = None
    dataset: xr.Dataset | None = field(default=None, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(n) for n in self.data.shape)

    @property
    def ndim(self) -> int:
        return len(self.data.shape)

    def __getitem__(self, region) -> np.ndarray:
        """The values of ``region`` (reads only that region of a store)."""
        return np.asarray(self.data[region])

    def values(self, dtype=np.float32) -> np.ndarray:
        """All values, as ``dtype``."""
        return np.asarray(self.data, dtype=dtype)

    def dim_coords(self) -> dict[str, xr.Variable]:
        """The index coordinates of the array's own dims (a store's other coordinates left out)."""
        return {d: self.coords[d] for d in self.dims if d in self.coords}

    def variable(self, name: str) -> xr.DataArray | None:
        """Another variable of the same store (lazy), or None (absent, or a file)."""
        if self.dataset is None or name not in self.dataset:
            return None
        return self.dataset[name]


def is_zarr_store(location: Location) -> bool:
    """Whether ``location`` holds a zarr (v3) store."""
    fs, path = filesystem(location)
    return with_retries(lambda: fs.exists(path.rstrip("/") + "/zarr.json"))


def open_array(location: Location, name: str):
    """The variable ``name`` of the store ``location`` as a read-only zarr array (for actors)."""
    import zarr

    return zarr.open_array(zarr_store(location, read_only=True), path=name, mode="r")


def open_input(
    source: str,
    variables: Sequence[str],
    *,
    storage_options: dict | None = None,
    what: str = "input",
    file_dims: Sequence[str] = (),
    file_coords: Mapping[str, Mapping] | None = None,
) -> InputArray:
    """Open ``source`` (a zarr store, a file or a TIFF folder) as one named-dim array.

    Parameters
    ----------
    source : str
        A zarr store (path or ``s3://`` URL), or a path
        :func:`~rayproc.storage.readers.read_volume` reads.
    variables : sequence of str
        Candidate variables of a store, in order of preference: the first one present is used.
    storage_options : dict, optional
        fsspec options for ``s3://``.
    what : str, optional
        What the variables hold, for the error when none is present (``"frames"``).
    file_dims : sequence of str, optional
        Dims of an array read from a file (used when its rank matches, else ``dim_0``, ...).
    file_coords : mapping of str to dict, optional
        Dims of a file's array that get an index coordinate (``0 .. n - 1``), with its attrs.

    Returns
    -------
    InputArray

    Raises
    ------
    InputError
        No candidate variable in the store, a remote URL that is not a store, or a file that
        cannot be read.
    """
    location = resolve(source, storage_options)
    if is_zarr_store(location):
        ds = open_dataset(location)
        name = next((v for v in variables if v in ds), None)
        if name is None:
            held = sorted(ds.data_vars)
            if len(variables) == 1:
                raise InputError(f"{location.url} has no {variables[0]!r} variable; it holds {held}.")
            raise InputError(f"{location.url} holds no {what}: expected one of {tuple(variables)}; it holds {held}.")
        array = ds[name]
        return InputArray(location.url, name, array, tuple(array.dims),
                          {key: c.variable for key, c in ds.coords.items()}, dict(ds.attrs), dict(array.attrs),
                          location, "zarr", None, ds)
    if location.is_remote:
        raise InputError(f"no zarr store at {location.url} (no zarr.json found)")
    values, info = read_volume(source)
    dims = tuple(file_dims) if len(file_dims) == values.ndim else tuple(f"dim_{i}" for i in range(values.ndim))
    coords = {d: xr.Variable(d, np.arange(n), dict((file_coords or {})[d]))
              for d, n in zip(dims, values.shape) if d in (file_coords or {})}
    frames = info.get("frames")
    return InputArray(location.url, None, values, dims, coords, {}, {}, None, info["format"],
                      None if frames is None else tuple(frames))


__all__ = ["InputArray", "PIXEL_COORDS", "is_zarr_store", "open_array", "open_input"]
