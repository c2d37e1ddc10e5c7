"""A per-process LRU cache of arrays read from stores (training data of both modalities).

Training datasets read the same volumes (BCDI) or frames (LabDCT) again and again, in every
epoch and from every loader process. :class:`ArrayCache` keeps what was read, decompressed,
in memory up to a byte bound, and the stores it came from open, so that after the first
touch an item costs a crop, as from memory. The readers of the pipelines
(``rayproc.pipelines.bcdi.portion_data.VolumeReader``,
``rayproc.pipelines.labdct.train.FrameReader``) decide what is read and under which key.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import numpy as np

from rayproc.storage.dataset import open_dataset
from rayproc.storage.location import Location

DEFAULT_MAX_BYTES = 4 << 30


def _nbytes(value) -> int:
    """Bytes held by an array or a tuple of arrays."""
    if isinstance(value, tuple):
        return sum(_nbytes(v) for v in value)
    return int(np.asarray(value).nbytes)


class ArrayCache:
    """Per-process LRU cache of arrays read from stores, bounded in bytes.

    Values are arrays or tuples of arrays (e.g. a frame and its target) under any hashable
    key. The newest value is always kept, even when it alone exceeds ``max_bytes``. Stores
    are opened once per process too (:meth:`open`). Pickling (a loader worker being spawned)
    gives an empty cache with the same bound: every process fills its own.

    Parameters
    ----------
    max_bytes : int, optional
        Bound on the bytes of the cached values (default 4 GiB).
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES):
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = 0
        self.nbytes = 0
        self._values: OrderedDict[Hashable, object] = OrderedDict()
        self._stores: dict[str, object] = {}

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, key: Hashable) -> bool:
        return key in self._values

    def get(self, key: Hashable, read: Callable[[], object]):
        """The value under ``key``, from ``read()`` on a miss (then the oldest values are dropped)."""
        if key in self._values:
            self.hits += 1
            self._values.move_to_end(key)
            return self._values[key]
        self.misses += 1
        value = read()
        self._values[key] = value
        self.nbytes += _nbytes(value)
        while len(self._values) > 1 and self.nbytes > self.max_bytes:
            _, dropped = self._values.popitem(last=False)
            self.nbytes -= _nbytes(dropped)
        return value

    def open(self, url: str, storage_options: dict | None = None):
        """The xarray dataset of the store at ``url``, opened once per process."""
        if url not in self._stores:
            self._stores[url] = open_dataset(Location(url, dict(storage_options or {})))
        return self._stores[url]


__all__ = ["DEFAULT_MAX_BYTES", "ArrayCache"]
