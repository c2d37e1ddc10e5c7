"""Seeded training portions of diffraction volumes, as a torch Dataset.

Masto et al. [1]_ train on 32^3 portions cut out of diffraction volumes, each with an
artificial gap (a plane or a cross of width 3, 6, 9 or 12 voxels), log-scaled and stretched to
[0, 1] using the measured voxels only. :class:`PortionDataset` serves such portions from
volumes it gets through a reader, ``read(ref) -> (z, y, x) array``: the storage shell reads
them from zarr stores through a per-process cache
(``rayproc.pipelines.bcdi.portion_data.VolumeReader``), a test from a dict of arrays.

Every item is a pure function of ``(seed, stream, epoch, volume, k)``: the portion origins of
a volume come from ``default_rng([seed, stream, epoch, volume])`` and the gap of portion ``k``
from ``default_rng([seed, stream, epoch, volume, k])``, so the items do not depend on how many
workers read them or in which order. Index ``i + epoch * len(dataset)`` gives item ``i`` of
that epoch's draw (see ``rayproc.runtime.epochs.EpochSampler``), so a loader with persistent
worker processes still draws fresh portions every epoch.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from rayproc.bcdi.gaps import GAP_KINDS, GapSpec, gap_mask, random_gap
from rayproc.bcdi.portions import crop, normalise_portion, portion_origins
from rayproc.errors import InputError

_MAX_DRAW_ROUNDS = 25  # rounds of candidate origins when portions must avoid an exclusion mask

ReadVolume = Callable[[Any], np.ndarray]
"""``read(ref) -> ndarray``: the (z, y, x) intensity of a volume reference (not to be modified)."""


@dataclass(frozen=True)
class PortionPlan:
    """Where item ``index`` comes from: volume number, portion origin, artificial gap."""

    volume: int
    origin: tuple[int, ...]
    gap: GapSpec


class PortionDataset(Dataset):
    """Gapped, normalised portions of volumes (see the module docstring).

    Parameters
    ----------
    volumes : sequence
        References of the volumes, passed to ``read`` (and named by ``str(ref)`` in errors).
    portions_per_volume : int
        Items per volume per epoch; ``len(dataset) = len(volumes) * portions_per_volume``.
    read : callable
        ``read(ref) -> ndarray``, the (z, y, x) intensity of a volume; called for every item,
        so it should cache (it must be picklable for loader worker processes).
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
    peak_fraction : float, optional
        Fraction of portions centred around the Bragg peak instead (~N(peak, 8 px), the
        published evaluation protocol's placement).
    exclude : ndarray of bool, optional
        A (z, y, x) mask (True on a real detector gap) shared by all volumes: portions never
        touch it (fine-tuning on a gapped target).

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
        volumes: Sequence,
        portions_per_volume: int,
        *,
        read: ReadVolume,
        seed: int = 0,
        stream: int = 0,
        size: int = 32,
        gap_widths=(3, 6, 9, 12),
        gap_kinds=GAP_KINDS,
        prefer_periphery: bool = True,
        exclude: np.ndarray | None = None,
        peak_fraction: float = 0.0,
    ):
        self.volumes = list(volumes)
        if portions_per_volume < 1 or not self.volumes:
            raise InputError(
                f"need >= 1 volume and portions_per_volume >= 1; got {len(self.volumes)} and "
                f"{portions_per_volume} instead."
            )
        self.portions_per_volume = int(portions_per_volume)
        self.read = read
        self.seed, self.stream, self.size = int(seed), int(stream), int(size)
        self.gap_widths, self.gap_kinds = tuple(int(w) for w in gap_widths), tuple(gap_kinds)
        self.prefer_periphery = prefer_periphery
        self.peak_fraction = float(peak_fraction)
        self.exclude = None if exclude is None else np.asarray(exclude, dtype=bool)
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
        portion = crop(self.read(self.volumes[plan.volume]), plan.origin, self.size)
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
        intensity = self.read(ref)
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
                prefer_periphery=self.prefer_periphery, peak_fraction=self.peak_fraction,
                intensity=intensity if self.prefer_periphery or self.peak_fraction else None,
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


__all__ = ["PortionDataset", "PortionPlan", "ReadVolume"]
