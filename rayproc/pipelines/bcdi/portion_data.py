"""BCDI training volumes in zarr stores: references, listing, and a cached reader.

The training portions themselves are pure (:class:`rayproc.bcdi.portion_dataset.PortionDataset`);
this shell says where their volumes are (:class:`VolumeRef`, :func:`list_volumes`: a simulated
store holds one volume per ``sample``, an ingested one a single volume) and reads them
(:class:`VolumeReader`): whole, once, into a per-process LRU cache
(:class:`rayproc.storage.cache.ArrayCache`), so after the first touch a portion costs a crop
and a normalisation, as from memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rayproc.errors import InputError
from rayproc.storage import open_dataset, resolve, with_retries
from rayproc.storage.cache import ArrayCache


@dataclass(frozen=True)
class VolumeRef:
    """One (z, y, x) volume: the ``intensity`` of a store, or one ``sample`` of it."""

    url: str
    sample: int | None = None
    shape: tuple[int, ...] = ()

    def to_dict(self) -> dict:
        return {"url": self.url, "sample": self.sample, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "VolumeRef":
        sample = d.get("sample")
        return cls(d["url"], None if sample is None else int(sample), tuple(int(s) for s in d.get("shape", ())))

    def __str__(self) -> str:
        return self.url if self.sample is None else f"{self.url}[sample={self.sample}]"


def list_volumes(urls, storage_options: dict | None = None) -> list[VolumeRef]:
    """The volumes of zarr stores: one per ``sample`` of a (sample, z, y, x) ``intensity``.

    Parameters
    ----------
    urls : iterable of str
        Store paths or ``s3://`` URLs (complete stores, as written by ``rayproc bcdi
        simulate`` or ``rayproc ingest``).
    storage_options : dict, optional
        fsspec options for remote stores.

    Returns
    -------
    list of VolumeRef
        In store order, then sample order.
    """
    refs = []
    for url in urls:
        location = resolve(url, storage_options)
        dataset = open_dataset(location)
        if "intensity" not in dataset:
            raise InputError(f"{location.url} has no 'intensity' variable; got {sorted(dataset.data_vars)} instead.")
        intensity = dataset["intensity"]
        if intensity.dims == ("sample", "z", "y", "x"):
            refs += [VolumeRef(location.url, i, intensity.shape[1:]) for i in range(intensity.shape[0])]
        elif intensity.dims == ("z", "y", "x"):
            refs.append(VolumeRef(location.url, None, intensity.shape))
        else:
            raise InputError(
                f"{location.url}: intensity must have dims (sample, z, y, x) or (z, y, x); "
                f"got {intensity.dims} instead."
            )
    if not refs:
        raise InputError("no training data given.")
    return refs


class VolumeReader:
    """``read(ref)``: the volume of a :class:`VolumeRef` as a read-only float32 (z, y, x) array.

    Volumes are read whole and kept in ``cache`` (one per process: pickling, as when a loader
    worker is spawned, gives an empty one with the same bound).

    Parameters
    ----------
    storage_options : dict, optional
        fsspec options for remote stores.
    cache : ArrayCache, optional
        Shared by the datasets of one process (e.g. training and validation); a new one if None.
    """

    def __init__(self, storage_options: dict | None = None, cache: ArrayCache | None = None):
        self.storage_options = dict(storage_options or {})
        self.cache = cache if cache is not None else ArrayCache()

    def __call__(self, ref: VolumeRef) -> np.ndarray:
        return self.cache.get((ref.url, ref.sample), lambda: self._read(ref))

    def _read(self, ref: VolumeRef) -> np.ndarray:
        intensity = self.cache.open(ref.url, self.storage_options)["intensity"]
        selection = intensity if ref.sample is None else intensity[ref.sample]
        volume = np.ascontiguousarray(with_retries(lambda: selection.values), dtype=np.float32)
        volume.flags.writeable = False
        return volume


__all__ = ["VolumeReader", "VolumeRef", "list_volumes"]
