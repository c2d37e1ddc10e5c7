"""``rayproc bcdi train`` / ``finetune``: train the BCDI gap-inpainting network with Ray Train.

* :func:`train_loop` is plain torch for one data-parallel worker, driven by a config dict
  (:class:`TrainSpec`): the model, the portion datasets
  (:class:`rayproc.bcdi.portion_dataset.PortionDataset` reading volumes through
  :class:`~rayproc.pipelines.bcdi.portion_data.VolumeReader`), :func:`inpainting_step` and
  :func:`gap_pcc_scores` handed to :func:`rayproc.runtime.epochs.run_epochs`. Ray appears only in
  :class:`~rayproc.runtime.training.RayTrainSession` (prepare_model, prepare_data_loader,
  report with a Checkpoint, get_checkpoint); outside Ray Train
  :class:`~rayproc.runtime.training.InProcessSession` stands in for it, so the same function
  runs in one process.
* :func:`train_bcdi` and :func:`finetune_bcdi` build the spec and hand it to
  :func:`rayproc.runtime.training.run_training`: ``workers`` TorchTrainer workers (or this
  process with ``workers=0``), then the best epoch exported as a model directory
  (:mod:`rayproc.models.artifact`).
* Fine-tuning on a target (:func:`finetune_bcdi`, ``rayproc bcdi inpaint --adapt``) samples
  the target's own portions beside its real gaps where it holds counts, cuts them with the
  target's gaps as its inpainting windows see them, validates on held-out positions, and
  keeps the best of the base model and every epoch by held-out in-gap PCC
  (:class:`KeepBestOfBase`): adapting never ends worse than the base model on those portions.

Training follows Masto et al. [1]_: portions cut preferably away from the Bragg peak, an
artificial line or cross gap of width 3, 6, 9 or 12 voxels per portion, log-scaled and
normalised with the measured voxels, the loss MAE + (1 - SSIM) + gradient MAE on the
composite; Adam with the learning rate halved when the validation loss stalls. Every epoch
is checkpointed to storage (local or ``s3://``) and logged (``metrics.jsonl``,
``loss_curve.png`` in the model directory, with the in-gap PCC of [1]_ eq. 1 per gap width).
A failed worker restarts from the last checkpoint; rerunning the same command resumes.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rayproc.bcdi.gaps import GAP_KINDS, gaps_to_mask
from rayproc.bcdi.inpaint import DEFAULT_STRIDE, check_known_counts, plan_windows
from rayproc.bcdi.metrics import gap_pcc
from rayproc.bcdi.network import BcdiNetConfig, build_bcdi_net
from rayproc.bcdi.portion_dataset import MixedPortions, PortionDataset
from rayproc.bcdi.portions import NormStats, denormalise_portion, gap_templates
from rayproc.errors import InputError, RayprocError
from rayproc.models.artifact import read_model_info, resolve_model, save_model
from rayproc.models.losses import inpainting_loss
from rayproc.pipelines.bcdi.portion_data import VolumeReader, VolumeRef, list_volumes
from rayproc.runtime.epochs import (
    STATE_FILE, Precision, Scores, rank_and_world, run_epochs, start_worker, validate,
)
from rayproc.runtime.training import (
    BaseTrainSpec, TrainReport, export_best, plot_curves, run_training, session_for, write_epoch,
)
from rayproc.storage import command_line, provenance, redacted
from rayproc.storage.cache import ArrayCache
from rayproc.storage.inputs import open_input
from rayproc.storage.model_dirs import model_out
from rayproc.storage.outputs import claim_folder

GAP_WIDTHS = (3, 6, 9, 12)
NORMALISATION = {
    "transform": "log1p",
    "scale": "per portion: (log1p(I) - lo) / (hi - lo), lo and hi over the measured voxels",
    "gap_input": "zero",
}
# Adam learning rate per architecture: masto2024 (sigmoid output, no prior) collapses to an
# all-zero gap within ~10 steps at 1e-3 on the simulated set; at 1e-4 it learns.
DEFAULT_LR = {"gapnet": 1e-3, "masto2024": 1e-4}
# Share of a target's candidate portion positions held out to validate (and select) its adaptation.
HOLDOUT = 0.2
# Key of a target run's selection (base model row, best epoch, its weights) in the checkpoint state.
TARGET_STATE = "target_selection"
# The validation score a target run keeps its best by (:func:`target_scores`).
SELECTED_BY = "val_pcc_pooled"
# Fields added to TrainSpec for target runs: left out of its dict at their defaults, so that runs
# and models made before them still compare equal (resume, provenance).
_TARGET_DEFAULTS = {"target_sampling": False, "holdout": HOLDOUT, "template_stride": DEFAULT_STRIDE, "reach": None,
                    "exclude_mask_offset": (), "rehearsal": 0.0}
# Share of a target run's training portions rehearsed on simulated volumes (measured on the gold scan: without
# it, adapting to a cross through the Bragg peak lost 0.013-0.018 in-gap PCC; with it, none).
REHEARSAL = 0.5
# Rehearsal volumes: count, largest edge (the target's largest edge, at least two portions), simulation seed
# (offset by the run's seed).
REHEARSAL_VOLUMES, REHEARSAL_SIZE, REHEARSAL_SEED = 16, 96, 9_000
_NOT_PROVENANCE = ("ray_train", "checkpoints", "progress")


@dataclass(frozen=True)
class TrainSpec(BaseTrainSpec):
    """Everything one BCDI training worker needs (besides :class:`~rayproc.runtime.training.BaseTrainSpec`'s).

    ``volumes`` / ``val_volumes`` are :class:`~rayproc.pipelines.bcdi.portion_data.VolumeRef`
    dicts (no ``val_volumes``: the validation portions are a separate draw from the training
    volumes). ``exclude_mask`` (a file) or ``exclude_gaps`` (``AXIS:START:WIDTH``) mark real
    gaps no portion may touch. ``init_model`` is a model directory to start from. The spec
    checks on construction that the network, portion size, gap widths and volumes fit together.

    A target run (``target_sampling``: fine-tuning on the one volume of ``volumes``, any input
    ``rayproc bcdi inpaint`` reads) excludes the same missing voxels inpainting fills (the
    store's ``mask``, ``exclude_mask`` with ``exclude_mask_offset`` for a 2D detector mask, and
    ``exclude_gaps``), places portions beside them (decay length ``reach``), cuts them with
    the gaps as the inpainting windows at ``template_stride`` see them, holds out ``holdout``
    of the candidate positions for validation, and keeps the best of the base model
    (``init_model``) and every epoch by held-out in-gap PCC.
    """

    volumes: tuple[dict, ...]
    val_volumes: tuple[dict, ...] = ()
    arch: dict = field(default_factory=lambda: BcdiNetConfig().to_dict())
    patch_size: int = 32
    portions_per_volume: int = 64
    val_portions_per_volume: int = 64
    gap_widths: tuple[int, ...] = GAP_WIDTHS
    gap_kinds: tuple[str, ...] = GAP_KINDS
    prefer_periphery: bool = True
    peak_fraction: float = 0.0
    init_model: str | None = None
    exclude_mask: str | None = None
    exclude_gaps: tuple[str, ...] = ()
    exclude_mask_offset: tuple[int, ...] = ()
    target_sampling: bool = False
    holdout: float = HOLDOUT
    template_stride: int = DEFAULT_STRIDE
    reach: float | None = None
    rehearsal: float = 0.0

    def to_dict(self) -> dict:
        d = super().to_dict()
        for name, default in _TARGET_DEFAULTS.items():
            if d[name] == (list(default) if isinstance(default, tuple) else default):
                del d[name]
        return d

    def problems(self) -> list[str]:
        problems = super().problems()
        config = BcdiNetConfig.from_dict(self.arch)
        factor = 2 ** config.depth
        if not self.volumes:
            problems.append("no training volumes given")
        if min(self.portions_per_volume, self.val_portions_per_volume) < 1:
            problems.append(f"portions per volume must be >= 1 (got {self.portions_per_volume} for training, "
                            f"{self.val_portions_per_volume} for validation)")
        if self.patch_size % factor or self.patch_size < 8:
            problems.append(f"patch size {self.patch_size} must be >= 8 and a multiple of {factor} for depth "
                            f"{config.depth}")
        if not 0.0 <= self.peak_fraction <= 1.0:
            problems.append(f"peak fraction {self.peak_fraction} must lie in [0, 1]")
        if not self.gap_widths or not all(1 <= w < self.patch_size for w in self.gap_widths):
            problems.append(f"gap widths {self.gap_widths} must lie in [1, {self.patch_size})")
        if self.target_sampling:
            if len(self.volumes) != 1 or self.val_volumes or not self.init_model:
                problems.append("a target run needs one target volume, no validation volumes and a base model")
            if not 0.0 < self.holdout < 1.0:
                problems.append(f"held-out fraction {self.holdout} must lie in (0, 1)")
            if self.template_stride < 1:
                problems.append(f"template stride {self.template_stride} must be >= 1")
            if not 0.0 <= self.rehearsal < 1.0:
                problems.append(f"rehearsal share {self.rehearsal} must lie in [0, 1)")
        small = [VolumeRef.from_dict(v) for v in (*self.volumes, *self.val_volumes)]
        small = [str(v) for v in small if min(v.shape) < self.patch_size]
        if small:
            problems.append(f"{small[0]} is smaller than a {self.patch_size}^3 portion")
        return problems


# ---------------------------------------------------------------------------------------------
# The training function (plain torch)
# ---------------------------------------------------------------------------------------------


def datasets_for(spec: TrainSpec, *, read: VolumeReader | None = None) -> tuple[PortionDataset, PortionDataset]:
    """Training and validation datasets of a spec (stream 0 and 1 of the same seed, one volume cache)."""
    if spec.target_sampling:
        return target_datasets(spec, read=read)
    read = read if read is not None else VolumeReader(spec.storage_options)
    volumes = [VolumeRef.from_dict(v) for v in spec.volumes]
    common = dict(
        read=read, seed=spec.seed, size=spec.patch_size, gap_widths=spec.gap_widths, gap_kinds=spec.gap_kinds,
        prefer_periphery=spec.prefer_periphery, peak_fraction=spec.peak_fraction, exclude=exclusion_mask(spec, volumes[0].shape),
    )
    val_volumes = [VolumeRef.from_dict(v) for v in spec.val_volumes] or volumes
    return (
        PortionDataset(volumes, spec.portions_per_volume, stream=0, **common),
        PortionDataset(val_volumes, spec.val_portions_per_volume, stream=1, **common),
    )


def target_datasets(spec: TrainSpec, *, read=None) -> tuple[PortionDataset, PortionDataset]:
    """Training and held-out validation portions of a target run (see :class:`TrainSpec`)."""
    read = read if read is not None else TargetReader(spec.storage_options)
    volumes = [VolumeRef.from_dict(v) for v in spec.volumes]
    exclude = exclusion_mask(spec, volumes[0].shape)
    windows = target_windows(exclude, patch=spec.patch_size, stride=spec.template_stride)
    templates, counts = gap_templates(exclude, windows, size=spec.patch_size)
    common = dict(read=read, seed=spec.seed, size=spec.patch_size, exclude=exclude, near_gaps=True, reach=spec.reach,
                  holdout=spec.holdout, gap_templates=templates, template_weights=counts, windows=windows)
    rehearsed = round(spec.rehearsal * spec.portions_per_volume)
    train = PortionDataset(volumes, spec.portions_per_volume - rehearsed, stream=0, held_out=False, **common)
    if rehearsed:
        size = max(min(REHEARSAL_SIZE, max(volumes[0].shape)), 2 * spec.patch_size)
        target = read(volumes[0])
        peak = np.unravel_index(int(np.argmax(np.where(exclude, -np.inf, target))), target.shape)
        simulated = PortionDataset(
            list(range(REHEARSAL_VOLUMES)), math.ceil(rehearsed / REHEARSAL_VOLUMES), stream=2,
            read=SimulatedVolumes(size, REHEARSAL_SEED + spec.seed), seed=spec.seed, size=spec.patch_size,
            gap_templates=templates, template_weights=counts, peak_offsets=windows - np.array(peak))
        train = MixedPortions(train, simulated)
    return train, PortionDataset(volumes, spec.val_portions_per_volume, stream=1, held_out=True, **common)


class SimulatedVolumes:
    """``read(i)``: simulated volume ``i`` (:func:`rayproc.bcdi.diffraction.simulate_bcdi_sample`), cached.

    The rehearsal data of a target run: the kind of volumes the base model learnt from, so
    that adapting to the target's measured portions does not unlearn what they lack (a gap
    through a Bragg peak).
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed = int(size), int(seed)
        self.cache = ArrayCache()

    def __call__(self, index: int) -> np.ndarray:
        from rayproc.bcdi.diffraction import simulate_bcdi_sample

        return self.cache.get(int(index), lambda: simulate_bcdi_sample(self.size, self.seed, int(index))[0])


def target_windows(mask: np.ndarray, *, patch: int, stride: int) -> np.ndarray:
    """The windows that will inpaint the target's gaps (:func:`rayproc.bcdi.inpaint.plan_windows`)."""
    if not mask.any():
        raise InputError("the target has no missing voxel to learn from: give --gap or --mask.")
    return plan_windows(mask, stride=stride, patch=patch)


class TargetReader:
    """``read(ref)``: a target volume from any input ``rayproc bcdi inpaint`` reads, cached per process.

    A zarr store (``intensity`` (z, y, x), or one ``sample`` of (sample, z, y, x)), a TIFF
    folder, a (multi-page) TIFF, ``.npy``/``.npz`` or ``file.h5:/dataset``
    (:func:`rayproc.storage.inputs.open_input`), as a read-only float32 array.
    """

    def __init__(self, storage_options: dict | None = None, cache: ArrayCache | None = None):
        self.storage_options = dict(storage_options or {})
        self.cache = cache if cache is not None else ArrayCache()

    def __call__(self, ref: VolumeRef) -> np.ndarray:
        return self.cache.get((ref.url, ref.sample), lambda: read_target(ref, self.storage_options))


def read_target(ref: VolumeRef, storage_options: dict | None = None) -> np.ndarray:
    """The (z, y, x) volume of ``ref`` from any input (see :class:`TargetReader`)."""
    array = open_input(ref.url, ("intensity",), storage_options=storage_options)
    values = array[ref.sample] if ref.sample is not None else array.values()
    volume = np.ascontiguousarray(values, dtype=np.float32)
    volume.flags.writeable = False
    return volume


def target_volume(source: str, storage_options: dict | None = None) -> VolumeRef:
    """The one (z, y, x) volume of a fine-tuning target (any input ``rayproc bcdi inpaint`` reads)."""
    array = open_input(source, ("intensity",), storage_options=storage_options)
    if array.ndim == 4 and array.location is not None:
        if array.shape[0] != 1:
            raise InputError(f"{array.url} holds {array.shape[0]} volumes; fine-tuning needs one target volume.")
        return VolumeRef(array.url, 0, array.shape[1:])
    if array.ndim != 3:
        raise InputError(f"the target must be one 3D volume (z, y, x); got shape {array.shape} from {source}.")
    return VolumeRef(array.url, None, array.shape)


def exclusion_mask(spec: TrainSpec, shape) -> np.ndarray | None:
    """The real-gap mask of a fine-tuning spec (True on gap voxels), or None.

    For a target run: every voxel ``rayproc bcdi inpaint`` would fill (its store's ``mask``,
    the mask file, with its offset for a 2D detector mask, and the gaps).
    """
    if spec.target_sampling:
        from rayproc.pipelines.bcdi.inpaint import target_mask

        ref = VolumeRef.from_dict(spec.volumes[0])
        return target_mask(ref.url, mask=spec.exclude_mask, gaps=spec.exclude_gaps,
                           mask_offset=tuple(spec.exclude_mask_offset) or None, sample=ref.sample,
                           storage_options=spec.storage_options)
    if not spec.exclude_mask and not spec.exclude_gaps:
        return None
    mask = gaps_to_mask(spec.exclude_gaps, shape)
    if spec.exclude_mask:
        from rayproc.storage.readers import read_volume

        from_file = read_volume(spec.exclude_mask)[0] != 0
        if from_file.shape != mask.shape:
            raise InputError(f"mask {spec.exclude_mask} has shape {from_file.shape}; the volume has {mask.shape}.")
        mask |= from_file
    return mask


def inpainting_step(model, batch: dict) -> tuple[torch.Tensor, int]:
    """Loss of a batch of gapped portions: MAE + (1 - SSIM) + gradient MAE of the network's
    fill of ``target``'s gaps (:func:`rayproc.models.losses.inpainting_loss`), and the batch size."""
    target, mask = batch["target"], batch["mask"]
    return inpainting_loss(model(target, mask), target, mask), len(target)


def gap_pcc_scores(gap_widths) -> Scores:
    """Validation scores: mean in-gap PCC ([1]_ eq. 1) of the counts, overall and per gap width."""
    widths = tuple(int(w) for w in gap_widths)
    return Scores(2 * len(widths), functools.partial(_add_gap_pccs, widths=widths),
                  functools.partial(_gap_pcc_row, widths=widths))


def _add_gap_pccs(totals: np.ndarray, pred: torch.Tensor, batch: dict, *, widths: tuple[int, ...]) -> None:
    """Add each portion's in-gap PCC to its width's sum (``totals[:k]``) and count (``totals[k:]``)."""
    pcc_sum, pcc_n = totals[:len(widths)], totals[len(widths):]
    stats = NormStats(batch["lo"].cpu().numpy(), batch["hi"].cpu().numpy())
    pred_counts = np.maximum(denormalise_portion(pred[:, 0].cpu().numpy(), stats), 0)
    true_counts = np.maximum(denormalise_portion(batch["target"][:, 0].cpu().numpy(), stats), 0)
    in_gap = batch["mask"][:, 0].cpu().numpy() > 0.5
    for b, width in enumerate(batch["width"].tolist()):
        pcc = gap_pcc(pred_counts[b], true_counts[b], in_gap[b])
        if np.isfinite(pcc) and width in widths:
            pcc_sum[widths.index(width)] += pcc
            pcc_n[widths.index(width)] += 1


def _gap_pcc_row(totals: np.ndarray, *, widths: tuple[int, ...]) -> dict:
    pcc_sum, pcc_n = totals[:len(widths)], totals[len(widths):]
    row = {"val_pcc": float(pcc_sum.sum() / pcc_n.sum()) if pcc_n.sum() else None}
    for width, s, n in zip(widths, pcc_sum, pcc_n):
        row[f"val_pcc_w{width}"] = float(s / n) if n else None
    return row


def target_scores(gap_widths) -> Scores:
    """Validation scores of a target run: :func:`gap_pcc_scores` plus ``val_pcc_pooled``, the
    in-gap PCC ([1]_ eq. 1) of all portions' gap voxels together, as the PCC of a whole
    inpainted volume pools its windows (brightness differences between portions count)."""
    widths = tuple(int(w) for w in gap_widths)
    return Scores(2 * len(widths) + 6, functools.partial(_add_target_scores, widths=widths),
                  functools.partial(_target_row, widths=widths))


def _add_target_scores(totals: np.ndarray, pred: torch.Tensor, batch: dict, *, widths: tuple[int, ...]) -> None:
    _add_gap_pccs(totals[:2 * len(widths)], pred, batch, widths=widths)
    stats = NormStats(batch["lo"].cpu().numpy(), batch["hi"].cpu().numpy())
    in_gap = batch["mask"][:, 0].cpu().numpy() > 0.5
    u = np.log1p(np.maximum(denormalise_portion(pred[:, 0].cpu().numpy(), stats), 0)[in_gap])
    v = np.log1p(np.maximum(denormalise_portion(batch["target"][:, 0].cpu().numpy(), stats), 0)[in_gap])
    totals[2 * len(widths):] += [u.size, u.sum(), v.sum(), (u * u).sum(), (v * v).sum(), (u * v).sum()]


def _target_row(totals: np.ndarray, *, widths: tuple[int, ...]) -> dict:
    row = _gap_pcc_row(totals[:2 * len(widths)], widths=widths)
    n, su, sv, suu, svv, suv = totals[2 * len(widths):]
    var_u, var_v = suu - su * su / max(n, 1), svv - sv * sv / max(n, 1)
    pooled = (suv - su * sv / n) / math.sqrt(var_u * var_v) if n and var_u > 0 and var_v > 0 else None
    return {**row, "val_pcc_pooled": None if pooled is None else float(pooled)}


def train_loop(config: dict) -> None:
    """Train on this worker's share of the portions (plain torch; see :class:`TrainSpec`).

    Inside Ray Train (``config["ray_train"]``) the model is wrapped for DDP, batches are
    moved to the worker's device and every epoch is reported with a checkpoint; otherwise
    checkpoints go to ``config["checkpoints"]`` and the logs straight to ``config["out"]``.
    Resumes from the latest checkpoint when there is one (:func:`rayproc.runtime.epochs.run_epochs`).
    """
    spec = TrainSpec.from_dict(config)
    session = session_for(spec, record_epoch, unit="portion")
    start_worker(spec)
    model = build_bcdi_net(spec.arch)
    if spec.init_model:
        model.load_state_dict(resolve_model(spec.init_model, "bcdi")[0].state_dict())
    train_set, val_set = datasets_for(spec)
    scores = gap_pcc_scores(spec.gap_widths)
    if spec.target_sampling:  # score the target's own gap widths; keep the best of the base model and the epochs
        scores = target_scores(sorted(set(val_set.template_widths)))
        session = KeepBestOfBase(session, model, val_set, scores, batch_size=spec.batch_size, progress=spec.progress)
    run_epochs(spec, session, model, session.device(spec.gpu), train_set, val_set, step=inpainting_step,
               scores=scores, rate_key="portions_per_second", summary=_summary)


def _better(row: dict, than: dict) -> bool:
    """Whether validation ``row`` beats ``than``: higher pooled in-gap PCC (:func:`target_scores`; the
    loss decides where a PCC is missing). Ties keep ``than``."""
    if row.get(SELECTED_BY) is not None and than.get(SELECTED_BY) is not None:
        return row[SELECTED_BY] > than[SELECTED_BY]
    return row["val_loss"] < than["val_loss"]


class KeepBestOfBase:
    """The session of a target run: the base model (epoch -1) competes with every epoch.

    Wraps the run's session (Ray Train's or the in-process one; everything else is passed on).
    Before the first epoch, the base model is scored on the held-out portions (all workers take
    part, as in :func:`rayproc.runtime.epochs.validate`); after each epoch, rank 0 keeps the
    weights of the best so far (:func:`_better`: held-out in-gap PCC) in the checkpoint under
    :data:`TARGET_STATE` ``{"base": row, "best_epoch": int, "best": row, "best_model": state
    dict or None (the base)}``, so a restarted or resumed run continues the same selection.
    """

    def __init__(self, session, model, val_set, scores: Scores, *, batch_size: int, progress: bool):
        self.session, self.model, self.val_set, self.scores = session, model, val_set, scores
        self.batch_size, self.verbose = batch_size, progress
        self.selection: dict | None = None

    def __getattr__(self, name):
        return getattr(self.session, name)

    @contextlib.contextmanager
    def checkpoint(self):
        with self.session.checkpoint() as folder:
            if folder is not None:
                saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
                self.selection = saved.get(TARGET_STATE)
            if self.selection is None:  # a fresh run: the model still holds the base weights
                base = {"epoch": -1, **self._validate_base()}
                self.selection = {"base": base, "best_epoch": -1, "best": base, "best_model": None}
                if self.verbose and rank_and_world()[0] == 0:
                    print(f"epoch 0 (base model): held-out val loss {base['val_loss']:.4f}, "
                          f"in-gap PCC {_pcc_text(base)}", flush=True)
            yield folder

    def _validate_base(self) -> dict:
        from torch.utils.data import DataLoader, DistributedSampler

        rank, world = rank_and_world()
        device = next(self.model.parameters()).device
        loader = DataLoader(self.val_set, batch_size=self.batch_size,
                            sampler=DistributedSampler(self.val_set, num_replicas=world, rank=rank, shuffle=False))
        return validate(self.model, loader, Precision(device), inpainting_step, self.scores)

    def report(self, metrics: dict, folder: str | None) -> None:
        if folder is not None:  # rank 0, with the epoch's checkpoint
            path = Path(folder) / STATE_FILE
            state = torch.load(path, map_location="cpu", weights_only=True)
            if _better(metrics, self.selection["best"]):
                self.selection = {**self.selection, "best_epoch": int(metrics["epoch"]), "best": dict(metrics),
                                  "best_model": state["model"]}
            state[TARGET_STATE] = self.selection
            torch.save(state, path)
        self.session.report(metrics, folder)


def _pcc_text(row: dict) -> str:
    return "n/a" if row.get(SELECTED_BY) is None else f"{row[SELECTED_BY]:.4f} (pooled)"


def _summary(row: dict, epochs: int) -> str:
    widths = " ".join(f"w{k[9:]}={v:.3f}" for k, v in row.items() if k.startswith("val_pcc_w") and v is not None)
    pooled = "" if row.get(SELECTED_BY) is None else f" (pooled {row[SELECTED_BY]:.4f})"
    return (f"epoch {row['epoch'] + 1}/{epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"in-gap PCC {widths}{pooled}, {row['portions_per_second']:.1f} portions/s")


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------

def record_epoch(out: str | Path, row: dict) -> None:
    """Add an epoch's metrics to ``metrics.jsonl`` (replacing any rows from it on) and redraw the curves."""
    write_epoch(out, row, plot_history)


def plot_history(rows: list[dict], path: Path) -> None:
    """Loss curves (train, validation) and in-gap PCC per gap width against epoch, as a PNG."""
    widths = sorted((k for k in rows[-1] if k.startswith("val_pcc_w")), key=lambda k: int(k[9:]))
    plot_curves(rows, path, loss_label="loss (MAE + 1 - SSIM + gradient MAE)",
                scores=[(key, f"gap width {key[9:]}") for key in widths], score_label="in-gap PCC of log intensity")


# ---------------------------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------------------------


def split_volumes(volumes: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of the volumes (at least one) for validation; none if only one."""
    if len(volumes) < 2:
        return list(volumes), []
    n_val = min(len(volumes) - 1, max(1, round(fraction * len(volumes))))
    held = set(np.random.default_rng([seed, 2]).permutation(len(volumes))[:n_val].tolist())
    return [v for i, v in enumerate(volumes) if i not in held], [v for i, v in enumerate(volumes) if i in held]


def _run(spec: TrainSpec, *, workers: int, storage: str | None, max_failures: int, address: str | None,
         cpus: int | None, command: str | None, stage: dict) -> TrainReport:
    """Train ``spec`` (resuming its run if any) and export the best epoch to ``spec.out``."""
    return run_training(spec, train_loop, record=functools.partial(record_epoch, spec.out),
                        export=functools.partial(_export, spec, command=command, stage=stage), workers=workers,
                        storage=storage, max_failures=max_failures, address=address, cpus=cpus)


def _export(spec: TrainSpec, folder: str | None, resumed: bool, checkpoints: str, *, command: str | None,
            stage: dict) -> TrainReport:
    if spec.target_sampling:
        return _export_selected(spec, folder, resumed, checkpoints, command=command, stage=stage)
    return export_best(spec, folder, checkpoints, resumed, model=build_bcdi_net(spec.arch),
                       config=BcdiNetConfig.from_dict(spec.arch), family="bcdi", command=command, stage=stage,
                       normalisation=NORMALISATION, gap_widths=spec.gap_widths, patch_size=spec.patch_size)


def _export_selected(spec: TrainSpec, folder: str | None, resumed: bool, checkpoints: str, *,
                     command: str | None, stage: dict) -> TrainReport:
    """Save a target run's selection (:class:`KeepBestOfBase`): the best epoch, or the base weights."""
    if folder is None:
        raise RayprocError(f"no checkpoint found in {checkpoints}.")
    saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    history, selection = list(saved["history"]), saved[TARGET_STATE]
    model = build_bcdi_net(spec.arch)
    if selection["best_model"] is None:
        model.load_state_dict(resolve_model(spec.init_model, "bcdi")[0].state_dict())
    else:
        model.load_state_dict(selection["best_model"])
    base, best = selection["base"], selection["best"]
    kept = "base model" if selection["best_epoch"] < 0 else f"epoch {selection['best_epoch'] + 1}"
    metrics = {"best_epoch": selection["best_epoch"], "epochs": len(history), "best": best, "final": history[-1],
               "base": base, "kept": kept,
               "selected_by": f"held-out {SELECTED_BY}: in-gap PCC pooled over the held-out portions (the base "
                              "model is epoch 0)"}
    save_model(spec.out, model, BcdiNetConfig.from_dict(spec.arch), family="bcdi", metrics=metrics,
               provenance=_provenance(spec, command, stage, checkpoints), normalisation=NORMALISATION,
               gap_widths=spec.gap_widths, patch_size=spec.patch_size)
    return TrainReport(spec.out, len(history), selection["best_epoch"], best, resumed, checkpoints, history)


def _provenance(spec: TrainSpec, command: str | None, stage: dict, checkpoints: str) -> dict:
    parameters = {k: v for k, v in spec.to_dict().items() if k not in _NOT_PROVENANCE}
    return {**provenance(command or command_line(), redacted(parameters), seed=spec.seed), **stage,
            "checkpoints": checkpoints}


def finished_run(spec: TrainSpec, stage: dict) -> TrainReport | None:
    """The report of ``spec.out`` if it already holds the model this spec and ``stage`` export (all
    epochs done, from the same base model), else None."""
    try:
        info = read_model_info(spec.out)
    except (RayprocError, OSError, ValueError, KeyError):  # nothing there yet, or partial: train (or resume)
        return None
    parameters = {k: v for k, v in spec.to_dict().items() if k not in _NOT_PROVENANCE}
    metrics = info.metrics
    recorded = json.loads(json.dumps(redacted(parameters), default=str))
    same_base = info.provenance.get("base_model", {}).get("sha256") == stage.get("base_model", {}).get("sha256")
    if info.provenance.get("parameters") != recorded or metrics.get("epochs") != spec.epochs or not same_base:
        return None
    return TrainReport(spec.out, spec.epochs, metrics["best_epoch"], metrics["best"], True,
                       info.provenance.get("checkpoints", ""), [])


@model_out
def train_bcdi(
    data,
    out: str,
    *,
    workers: int = 1,
    gpu: bool = False,
    epochs: int = 10,
    storage: str | None = None,
    arch: str = "gapnet",
    base_channels: int | None = None,
    depth: int | None = None,
    portions_per_volume: int = 64,
    batch_size: int = 16,
    lr: float | None = None,
    seed: int = 0,
    patch_size: int = 32,
    gap_widths=GAP_WIDTHS,
    val_fraction: float = 0.1,
    cpus_per_worker: float = 1.0,
    loader_workers: int = 0,
    max_failures: int = 3,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
    command: str | None = None,
    init_model: str | None = None,
    peak_fraction: float = 0.0,
) -> TrainReport:
    """Train a BCDI inpainting network on the volumes of zarr stores ``data``; write it to ``out``.

    Parameters
    ----------
    data : list of str
        Stores from ``rayproc bcdi simulate`` (one volume per sample) or ``rayproc ingest``.
    out : str
        Model directory (local). It also receives ``metrics.jsonl`` and ``loss_curve.png``.
    workers : int, optional
        Data-parallel Ray Train workers; 0 trains in this process without Ray.
    gpu : bool, optional
        One GPU per worker, NCCL and mixed precision (bf16, or fp16 with loss scaling).
    epochs : int, optional
        Total epochs; a rerun with more epochs continues the same run.
    storage : str, optional
        Checkpoint storage (local folder or ``s3://``); default ``out/checkpoints``.
    arch, base_channels, depth : optional
        Network (see :class:`rayproc.bcdi.network.BcdiNetConfig`).
    portions_per_volume : int, optional
        Training portions drawn from each volume per epoch (fresh draws every epoch).
    batch_size, lr, seed : optional
        Per-worker batch size, Adam learning rate (default :data:`DEFAULT_LR` of the
        architecture), master seed.
    patch_size : int, optional
        Portion edge (32 in [1]_).
    gap_widths : sequence of int, optional
        Artificial gap widths (3, 6, 9, 12 in [1]_).
    val_fraction : float, optional
        Volumes held out for validation (at least one when there are several); with a single
        volume, validation uses a separate draw of ``ceil(val_fraction K)`` portions.
    cpus_per_worker : float, optional
        Ray CPUs per worker, also its torch thread count.
    loader_workers : int, optional
        DataLoader worker processes per training worker (each with its own volume cache).
    max_failures : int, optional
        Restarts from the last checkpoint after a worker failure.
    address, cpus : optional
        Ray cluster to join, or CPUs for an embedded Ray.
    storage_options : dict, optional
        fsspec options for ``s3://`` data and storage.
    progress : bool, optional
        Progress bar and per-epoch summary lines.
    command : str, optional
        Command line recorded in the provenance (default: this process's).
    init_model : str, optional
        A BCDI model directory to continue training from: its architecture replaces ``arch``,
        ``base_channels`` and ``depth``, its weights the random initial ones.
    peak_fraction : float, optional
        Fraction of portions centred near the Bragg peak (~N(peak, 8 px) per axis, as the
        published evaluation protocol places them); the rest favour the dim periphery.

    Returns
    -------
    TrainReport
    """
    claim_folder(out, inputs=[*data, init_model], create=False)
    storage_options = dict(storage_options or {})
    volumes = list_volumes(data, storage_options)
    train, val = split_volumes(volumes, val_fraction, seed)
    if init_model is not None:
        init_model = str(Path(init_model).resolve())
        network = BcdiNetConfig.from_dict(resolve_model(init_model, "bcdi")[1].architecture)
    else:
        network = BcdiNetConfig(arch, base_channels=base_channels, depth=depth)
    lr = DEFAULT_LR[network.arch] if lr is None else lr
    spec = TrainSpec(
        volumes=tuple(v.to_dict() for v in train),
        val_volumes=tuple(v.to_dict() for v in val),
        out=str(Path(out).resolve()),
        arch=network.to_dict(),
        patch_size=patch_size,
        portions_per_volume=portions_per_volume,
        val_portions_per_volume=portions_per_volume if val else max(1, math.ceil(val_fraction * portions_per_volume)),
        gap_widths=tuple(int(w) for w in gap_widths),
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, gpu=gpu,
        cpus_per_worker=cpus_per_worker, loader_workers=loader_workers,
        storage_options=storage_options, progress=progress,
        init_model=init_model, peak_fraction=float(peak_fraction),
    )
    return _run(spec, workers=workers, storage=storage, max_failures=max_failures, address=address, cpus=cpus,
                command=command, stage={"stage": "trained"})


@model_out
def finetune_bcdi(
    model_dir: str,
    volume: str,
    out: str,
    *,
    mask: str | None = None,
    gaps=(),
    mask_offset=None,
    epochs: int = 3,
    portions_per_volume: int = 64,
    batch_size: int = 16,
    lr: float | None = None,
    seed: int = 0,
    val_fraction: float = 0.25,
    stride: int = DEFAULT_STRIDE,
    rehearsal: float = REHEARSAL,
    workers: int = 1,
    gpu: bool = False,
    storage: str | None = None,
    cpus_per_worker: float = 1.0,
    max_failures: int = 3,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
    command: str | None = None,
    restart: bool = False,
) -> TrainReport:
    """Fine-tune a model on its target volume, away from the target's real gaps ([1]_, Section 5).

    The target is any input ``rayproc bcdi inpaint`` reads (a zarr store, a TIFF folder or
    file, ``.npy``/``.npz``, ``file.h5:/dataset``); its missing voxels are those inpainting
    fills (a store's ``mask``, ``mask`` (nonzero = gap; a 2D detector mask with
    ``mask_offset``), ``gaps`` as ``AXIS:START:WIDTH``). Portions never touch them: they are
    cut beside the gaps where the target holds counts
    (:func:`rayproc.bcdi.portions.target_lattice`) and get the target's own gaps, as the
    inpainting windows at ``stride`` see them (:func:`rayproc.bcdi.portions.gap_templates`).
    :data:`HOLDOUT` of the candidate positions are held out: ``ceil(val_fraction K)``
    portions there (at least 16; the same every epoch) score the base model (epoch 0) and every
    epoch, and the best by held-out in-gap PCC pooled over those portions is exported (the base
    weights when no epoch beats them). A share ``rehearsal`` of the training portions comes
    from simulated volumes (:class:`SimulatedVolumes`), placed around their Bragg peak as the
    target's inpainting windows lie around the target's, with the target's gaps: adapting to
    the measured portions, which never hold a gap through the peak, then does not unlearn it.
    The network, portion size and gap widths are the base model's; ``lr`` defaults to the
    architecture's training rate (:data:`DEFAULT_LR`). The result records ``"stage":
    "fine-tuned on target"``, the base model and the held-out scores (``metrics.json``:
    ``base``, ``best``, ``kept``).

    ``restart`` discards the checkpoints of an earlier run into ``out`` (``--overwrite``); a
    rerun of a finished run returns its report without training again.
    """
    # refuse a tampered, unreadable or LabDCT base model here, not in the workers
    info = resolve_model(model_dir, "bcdi")[1].info
    claim_folder(out, inputs=[model_dir, volume, mask], create=False)
    storage_options = dict(storage_options or {})
    target = target_volume(volume, storage_options)
    if mask is None and not gaps and open_input(volume, ("intensity",), storage_options=storage_options).variable(
            "mask") is None:
        raise InputError("fine-tuning needs the target's gaps: give --mask FILE or --gap AXIS:START:WIDTH "
                         "(or a target store with a 'mask').")
    spec = TrainSpec(
        volumes=(target.to_dict(),),
        out=str(Path(out).resolve()),
        arch=dict(info.architecture),
        patch_size=info.patch_size or 32,
        portions_per_volume=portions_per_volume,
        val_portions_per_volume=max(16, math.ceil(val_fraction * portions_per_volume)),
        gap_widths=tuple(info.gap_widths or GAP_WIDTHS),
        epochs=epochs, batch_size=batch_size, lr=DEFAULT_LR[info.architecture["arch"]] if lr is None else lr, seed=seed,
        gpu=gpu, cpus_per_worker=cpus_per_worker, init_model=str(Path(model_dir).resolve()),
        exclude_mask=None if mask is None else (str(Path(mask).resolve()) if "://" not in str(mask) else str(mask)),
        exclude_gaps=tuple(gaps),
        exclude_mask_offset=tuple(int(o) for o in mask_offset) if mask_offset is not None else (),
        target_sampling=True, template_stride=int(stride), rehearsal=float(rehearsal),
        storage_options=storage_options, progress=progress,
    )
    read = TargetReader(storage_options)
    exclude = exclusion_mask(spec, target.shape)  # bad masks and gaps fail here, before any training
    check_known_counts(read(target), exclude)
    for dataset in datasets_for(spec, read=read):
        getattr(dataset, "first", dataset).plan(0)  # enough portions away from the gaps? (a clear error if not)
    stage = {"stage": "fine-tuned on target",
             "base_model": {"path": str(Path(model_dir).resolve()), "sha256": info.sha256,
                            "provenance": info.provenance}}
    if restart:
        _discard_run(spec, storage)
    else:
        done = finished_run(spec, stage)
        if done is not None:
            return done
    return _run(spec, workers=workers, storage=storage, max_failures=max_failures, address=address, cpus=cpus,
                command=command, stage=stage)


def _discard_run(spec: TrainSpec, storage: str | None) -> None:
    """Remove the checkpoints of an earlier run into ``spec.out`` (a rayproc model folder)."""
    from rayproc.runtime.training import run_name
    from rayproc.storage import filesystem, resolve

    root = resolve(storage or str(Path(spec.out) / "checkpoints"), spec.storage_options)
    fs, path = filesystem(root.child(run_name(spec.out)))
    if fs.exists(path):
        fs.rm(path, recursive=True)


__all__ = [
    "DEFAULT_LR",
    "GAP_WIDTHS",
    "HOLDOUT",
    "KeepBestOfBase",
    "NORMALISATION",
    "REHEARSAL",
    "SELECTED_BY",
    "SimulatedVolumes",
    "TARGET_STATE",
    "TargetReader",
    "TrainSpec",
    "datasets_for",
    "exclusion_mask",
    "finetune_bcdi",
    "finished_run",
    "gap_pcc_scores",
    "inpainting_step",
    "plot_history",
    "read_target",
    "record_epoch",
    "split_volumes",
    "target_datasets",
    "target_scores",
    "target_volume",
    "target_windows",
    "train_bcdi",
    "train_loop",
]
