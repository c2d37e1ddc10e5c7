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

Adapting a model to its target (``near_gaps`` and ``gap_templates``) draws the target's own
portions beside its real gaps where it holds counts
(:func:`rayproc.bcdi.portions.target_lattice`), cuts them with the target's own gaps as its
inpainting windows see them (:func:`rayproc.bcdi.portions.gap_templates`), and splits the
candidate positions once (``holdout``) into training ones and held-out ones, so that a
validation dataset (``held_out=True``) scores portions no training item is cut at.

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
from rayproc.bcdi.portions import (
    crop, draw_target_origins, holdout_cells, normalise_portion, peak_relative_origins, portion_origins,
    target_lattice, template_width,
)
from rayproc.errors import InputError

_MAX_DRAW_ROUNDS = 25  # rounds of candidate origins when portions must avoid an exclusion mask
_SPLIT_STREAM = 2**31  # seeds the held-out split, the same for every stream and epoch

ReadVolume = Callable[[Any], np.ndarray]
"""``read(ref) -> ndarray``: the (z, y, x) intensity of a volume reference (not to be modified)."""


@dataclass(frozen=True)
class PortionPlan:
    """Where item ``index`` comes from: volume number, portion origin, artificial gap.

    With gap templates, ``gap`` is None and ``template`` is the index of the template.
    """

    volume: int
    origin: tuple[int, ...]
    gap: GapSpec | None
    template: int | None = None


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
    near_gaps : bool, optional
        Place portions beside the ``exclude``d gaps where the volume holds counts
        (:func:`rayproc.bcdi.portions.target_lattice`, decay length ``reach``) instead of
        ``prefer_periphery`` / ``peak_fraction``.
    reach, windows : optional
        See :func:`rayproc.bcdi.portions.target_lattice`: decay length (default ``size``), and
        the origins of the windows that will inpaint the gaps, whose brightness the drawn
        portions then match.
    holdout : float, optional
        With ``near_gaps``: share of the candidate positions held out for validation (one
        seeded split per ``seed``, shared by every stream).
    held_out : bool, optional
        Draw from the held-out positions (validation) instead of the others (training).
    gap_templates : ndarray of bool, shape (T, S, S, S), optional
        Missing-voxel masks to cut portions with (:func:`rayproc.bcdi.portions.gap_templates`),
        drawn per item with probability proportional to ``template_weights``, instead of
        random lines and crosses (``gap_widths``, ``gap_kinds``).
    template_weights : sequence of float, optional
        Weights of the templates (default: equal).
    peak_offsets : ndarray of int, shape (K, 3), optional
        Place portions relative to each volume's peak instead
        (:func:`rayproc.bcdi.portions.peak_relative_origins`, jittered by ``size // 8``):
        rehearsing a target's windows on other volumes.

    Notes
    -----
    An item is a dict: ``target`` (1, S, S, S) float32, the whole portion normalised with the
    range of its measured (non-gap) voxels, ``x = (log1p(I) - lo) / (hi - lo)`` as in [1]_, so
    gap voxels may fall outside [0, 1]; ``mask`` (1, S, S, S) float32, 1 in the gap; ``lo``,
    ``hi`` (float) to undo the normalisation; ``width`` (int) of the gap (of a template:
    :func:`rayproc.bcdi.portions.template_width`); ``index`` (int) within the epoch.
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
        near_gaps: bool = False,
        reach: float | None = None,
        holdout: float = 0.0,
        held_out: bool = False,
        gap_templates: np.ndarray | None = None,
        template_weights=None,
        windows: np.ndarray | None = None,
        peak_offsets: np.ndarray | None = None,
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
        self.near_gaps, self.reach = bool(near_gaps), reach
        self.windows = None if windows is None else np.asarray(windows, dtype=np.int64)
        self.peak_offsets = None if peak_offsets is None else np.asarray(peak_offsets, dtype=np.int64)
        self.holdout, self.held_out = float(holdout), bool(held_out)
        self.gap_templates = None if gap_templates is None else np.asarray(gap_templates, dtype=bool)
        self.template_weights = self.template_widths = None
        if self.gap_templates is not None:
            if self.gap_templates.ndim != 4 or self.gap_templates.shape[1:] != (self.size,) * 3 \
                    or not len(self.gap_templates):
                raise InputError(f"gap templates must have shape (T, {self.size}, {self.size}, {self.size}) with "
                                 f"T >= 1; got {self.gap_templates.shape} instead.")
            weights = np.ones(len(self.gap_templates)) if template_weights is None else \
                np.asarray(template_weights, dtype=np.float64)
            if weights.shape != (len(self.gap_templates),) or not np.all(weights >= 0) or not weights.sum() > 0:
                raise InputError(f"template weights must be {len(self.gap_templates)} values >= 0, not all 0; "
                                 f"got {weights.tolist()} instead.")
            self.template_weights = weights / weights.sum()
            self.template_widths = tuple(template_width(t) for t in self.gap_templates)
        self._origins: dict[int, tuple[int, np.ndarray]] = {}  # volume -> (epoch, origins)
        self._lattices: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # volume -> (lattice, weights of the part)

    def __len__(self) -> int:
        return len(self.volumes) * self.portions_per_volume

    def plan(self, index: int) -> PortionPlan:
        """Volume, origin and gap of item ``index`` (``index >= len`` selects a later epoch)."""
        epoch, within = divmod(int(index), len(self))
        volume, k = divmod(within, self.portions_per_volume)
        rng = np.random.default_rng([self.seed, self.stream, epoch, volume, k])
        origin = tuple(int(o) for o in self._volume_origins(volume, epoch)[k])
        if self.gap_templates is not None:
            return PortionPlan(volume, origin, None, int(rng.choice(len(self.gap_templates), p=self.template_weights)))
        gap = random_gap(rng, self.size, widths=self.gap_widths, kinds=self.gap_kinds)
        return PortionPlan(volume, origin, gap)

    def __getitem__(self, index: int) -> dict:
        plan = self.plan(index)
        portion = crop(self.read(self.volumes[plan.volume]), plan.origin, self.size)
        if plan.template is None:
            mask, width = gap_mask(plan.gap, portion.shape), plan.gap.width
        else:
            mask, width = self.gap_templates[plan.template], self.template_widths[plan.template]
        _, stats = normalise_portion(portion, ~mask)
        span = stats.hi - stats.lo if stats.hi > stats.lo else 1.0
        target = (np.log1p(portion, dtype=np.float64) - stats.lo) / span
        return {
            "target": torch.from_numpy(target.astype(np.float32))[None],
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "lo": stats.lo,
            "hi": stats.hi,
            "width": width,
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
        if self.peak_offsets is not None:
            origins = peak_relative_origins(intensity, self.peak_offsets, n, rng, size=self.size,
                                            jitter=max(1, self.size // 8))
            self._origins[volume] = (epoch, origins)
            return origins
        if self.near_gaps:
            origins = draw_target_origins(*self._target_lattice(volume, intensity), self._exclude_of(intensity), n,
                                          rng, size=self.size)
            self._origins[volume] = (epoch, origins)
            return origins
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

    def _exclude_of(self, intensity: np.ndarray) -> np.ndarray:
        return self.exclude if self.exclude is not None else np.zeros(intensity.shape, bool)

    def _target_lattice(self, volume: int, intensity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Candidate origins beside the gaps and their weights, restricted to this dataset's part."""
        cached = self._lattices.get(volume)
        if cached is None:
            lattice, weights = target_lattice(intensity, self._exclude_of(intensity), size=self.size,
                                              reach=self.reach, windows=self.windows)
            held = holdout_cells(len(lattice), self.holdout, [self.seed, _SPLIT_STREAM, volume])
            part = held if self.held_out else ~held
            if not np.any(weights[part] > 0):
                which = "held-out" if self.held_out else "training"
                raise InputError(f"found no {which} portions of size {self.size} in {self.volumes[volume]} that hold "
                                 "counts and do not touch its gaps; check the gap mask or the held-out fraction.")
            cached = self._lattices[volume] = (lattice, np.where(part, weights, 0.0))
        return cached


class MixedPortions(Dataset):
    """Two portion datasets as one, keeping their epoch indexing (e.g. target and rehearsal portions).

    Item ``i`` of epoch ``e`` (index ``i + e * len(self)``) is item ``i`` of epoch ``e`` of
    ``first`` for ``i < len(first)``, else item ``i - len(first)`` of epoch ``e`` of ``second``;
    its ``index`` is ``i``.
    """

    def __init__(self, first: Dataset, second: Dataset):
        self.first, self.second = first, second

    def __len__(self) -> int:
        return len(self.first) + len(self.second)

    def __getitem__(self, index: int) -> dict:
        epoch, within = divmod(int(index), len(self))
        if within < len(self.first):
            item = self.first[within + epoch * len(self.first)]
        else:
            item = self.second[within - len(self.first) + epoch * len(self.second)]
        return {**item, "index": within}


__all__ = ["MixedPortions", "PortionDataset", "PortionPlan", "ReadVolume"]
