"""Training portions streamed from zarr stores, as a torch Dataset.

Masto et al. [1]_ train on 32^3 portions cut out of diffraction volumes, each with an
artificial gap (a plane or a cross of width 3, 6, 9 or 12 voxels), log-scaled and stretched to
[0, 1] using the measured voxels only. :class:`PortionDataset` serves such portions from
``intensity`` arrays in zarr stores (a simulated store holds one volume per ``sample``, an
ingested one a single volume).

Every item is a pure function of ``(seed, stream, epoch, volume, k)``: the portion origins of
a volume come from ``default_rng([seed, stream, epoch, volume])`` and the gap of portion ``k``
from ``default_rng([seed, stream, epoch, volume, k])``, so the items do not depend on how many
workers read them or in which order. Index ``i + epoch * len(dataset)`` gives item ``i`` of
that epoch's draw (see :class:`rayproc.runtime.epochs.EpochSampler`), so a loader with persistent worker processes
still draws fresh portions every epoch.

Volumes are read whole, once, into a per-process LRU cache (:class:`VolumeCache`), so after
the first touch a portion costs a crop and a normalisation, as from memory.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from rayproc.bcdi.gaps import GAP_KINDS, GapSpec, gap_mask, random_gap
from rayproc.bcdi.portions import crop, normalise_portion, portion_origins
from rayproc.errors import InputError
from rayproc.storage import Location, open_dataset, resolve, with_retries

_MAX_DRAW_ROUNDS = 25  # rounds of candidate origins when portions must avoid an exclusion mask


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


class VolumeCache:
    """Per-process LRU cache of whole decompressed volumes, bounded in bytes.

    The newest volume is always kept, even when it alone exceeds ``max_bytes``. Pickling (a
    loader worker being spawned) gives an empty cache with the same bound: every process fills
    its own.
    """

    def __init__(self, max_bytes: int = 4 << 30):
        self.max_bytes = int(max_bytes)
        self.hits = self.misses = 0
        self._volumes: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._stores: dict[str, object] = {}

    def __getstate__(self) -> dict:
        return {"max_bytes": self.max_bytes}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"])

    @property
    def nbytes(self) -> int:
        return sum(v.nbytes for v in self._volumes.values())

    def get(self, ref: VolumeRef, storage_options: dict | None = None) -> np.ndarray:
        """The volume ``ref`` as a read-only float32 (z, y, x) array."""
        key = (ref.url, ref.sample)
        if key in self._volumes:
            self.hits += 1
            self._volumes.move_to_end(key)
            return self._volumes[key]
        self.misses += 1
        volume = self._read(ref, storage_options)
        self._volumes[key] = volume
        while len(self._volumes) > 1 and self.nbytes > self.max_bytes:
            self._volumes.popitem(last=False)
        return volume

    def _read(self, ref: VolumeRef, storage_options: dict | None) -> np.ndarray:
        if ref.url not in self._stores:
            self._stores[ref.url] = open_dataset(Location(ref.url, dict(storage_options or {})))["intensity"]
        intensity = self._stores[ref.url]
        selection = intensity if ref.sample is None else intensity[ref.sample]
        volume = np.ascontiguousarray(with_retries(lambda: selection.values), dtype=np.float32)
        volume.flags.writeable = False
        return volume


@dataclass(frozen=True)
class PortionPlan:
    """Where item ``index`` comes from: volume number, portion origin, artificial gap."""

    volume: int
    origin: tuple[int, ...]
    gap: GapSpec


class PortionDataset(Dataset):
    """Gapped, normalised portions of zarr-stored volumes (see the module docstring).

    Parameters
    ----------
    volumes : sequence of VolumeRef
        The volumes (see :func:`list_volumes`).
    portions_per_volume : int
        Items per volume per epoch; ``len(dataset) = len(volumes) * portions_per_volume``.
    seed : int, optional
        Master seed of every draw.
    stream : int, optional
        Separates independent draws from the same volumes (e.g. 0 training, 1 validation).
    size : int, optional
        Portion edge in voxels.
    gap_widths, gap_kinds : sequence, optional
        Artificial gaps to draw from (see :func:`rayproc.bcdi.gaps.random_gap`).
    prefer_periphery : bool, optional
        Favour dim regions away from the Bragg peak (see
        :func:`rayproc.bcdi.portions.portion_origins`).
    exclude : ndarray of bool, optional
        A (z, y, x) mask (True on a real detector gap) shared by all volumes: portions never
        touch it (fine-tuning on a gapped target).
    storage_options : dict, optional
        fsspec options for remote stores.
    cache : VolumeCache, optional
        Shared by datasets of one process (e.g. training and validation); a new one if None.

    Notes
    -----
    An item is a dict: ``target`` (1, S, S, S) float32, the whole portion normalised with the
    range of its measured (non-gap) voxels, ``x = (log1p(I) - lo) / (hi - lo)`` as in [1]_, so
    gap voxels may fall outside [0, 1]; ``mask`` (1, S, S, S) float32, 1 in the gap; ``lo``,
    ``hi`` (float) to undo the normalisation; ``width`` (int) of the gap; ``index`` (int)
    within the epoch.
    """

    def __init__(
        self,
        volumes,
        portions_per_volume: int,
        *,
        seed: int = 0,
        stream: int = 0,
        size: int = 32,
        gap_widths=(3, 6, 9, 12),
        gap_kinds=GAP_KINDS,
        prefer_periphery: bool = True,
        exclude: np.ndarray | None = None,
        storage_options: dict | None = None,
        cache: VolumeCache | None = None,
    ):
        self.volumes = [v if isinstance(v, VolumeRef) else VolumeRef.from_dict(v) for v in volumes]
        if portions_per_volume < 1 or not self.volumes:
            raise InputError(
                f"need >= 1 volume and portions_per_volume >= 1; got {len(self.volumes)} and "
                f"{portions_per_volume} instead."
            )
        self.portions_per_volume = int(portions_per_volume)
        self.seed, self.stream, self.size = int(seed), int(stream), int(size)
        self.gap_widths, self.gap_kinds = tuple(int(w) for w in gap_widths), tuple(gap_kinds)
        self.prefer_periphery = prefer_periphery
        self.exclude = None if exclude is None else np.asarray(exclude, dtype=bool)
        self.storage_options = dict(storage_options or {})
        self.cache = cache if cache is not None else VolumeCache()
        self._origins: dict[int, tuple[int, np.ndarray]] = {}  # volume -> (epoch, origins)

    def __len__(self) -> int:
        return len(self.volumes) * self.portions_per_volume

    def plan(self, index: int) -> PortionPlan:
        """Volume, origin and gap of item ``index`` (``index >= len`` selects a later epoch)."""
        epoch, within = divmod(int(index), len(self))
        volume, k = divmod(within, self.portions_per_volume)
        gap = random_gap(
            np.random.default_rng([self.seed, self.stream, epoch, volume, k]),
            self.size,
            widths=self.gap_widths,
            kinds=self.gap_kinds,
        )
        return PortionPlan(volume, tuple(int(o) for o in self._volume_origins(volume, epoch)[k]), gap)

    def __getitem__(self, index: int) -> dict:
        plan = self.plan(index)
        portion = crop(self.cache.get(self.volumes[plan.volume], self.storage_options), plan.origin, self.size)
        mask = gap_mask(plan.gap, portion.shape)
        _, stats = normalise_portion(portion, ~mask)
        span = stats.hi - stats.lo if stats.hi > stats.lo else 1.0
        target = (np.log1p(portion, dtype=np.float64) - stats.lo) / span
        return {
            "target": torch.from_numpy(target.astype(np.float32))[None],
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "lo": stats.lo,
            "hi": stats.hi,
            "width": plan.gap.width,
            "index": int(index) % len(self),
        }

    def _volume_origins(self, volume: int, epoch: int) -> np.ndarray:
        cached = self._origins.get(volume)
        if cached is not None and cached[0] == epoch:
            return cached[1]
        ref = self.volumes[volume]
        intensity = self.cache.get(ref, self.storage_options)
        rng = np.random.default_rng([self.seed, self.stream, epoch, volume])
        n = self.portions_per_volume
        if self.exclude is not None and self.exclude.shape != intensity.shape:
            raise InputError(
                f"gap mask of shape {self.exclude.shape} does not fit {ref} of shape {intensity.shape}."
            )
        kept = []
        for _ in range(_MAX_DRAW_ROUNDS):
            candidates = portion_origins(
                intensity.shape, n if self.exclude is None else 4 * n, rng, size=self.size,
                prefer_periphery=self.prefer_periphery, intensity=intensity if self.prefer_periphery else None,
            )
            kept += [o for o in candidates if self.exclude is None or not crop(self.exclude, o, self.size).any()]
            if len(kept) >= n:
                origins = np.array(kept[:n])
                self._origins[volume] = (epoch, origins)
                return origins
        raise InputError(
            f"found only {len(kept)} of {n} portions of size {self.size} in {ref} that do not touch "
            "its gaps; use a smaller --portions-per-volume or check the gap mask."
        )


__all__ = ["PortionDataset", "PortionPlan", "VolumeCache", "VolumeRef", "list_volumes"]
