"""``rayproc labdct train``: train the LabDCT spot-denoising network with Ray Train.

The same shell as :mod:`rayproc.pipelines.bcdi.train` (:mod:`rayproc.runtime.training`: the
driver, sessions, checkpoints, run claiming and resuming) and the same epoch loop
(:func:`rayproc.runtime.epochs.run_epochs`):

* :func:`train_loop` is plain torch for one data-parallel worker, driven by a config dict
  (:class:`LabdctTrainSpec`): the model, the tile datasets
  (:class:`rayproc.labdct.tiles.TileDataset` reading frames through :class:`FrameReader`),
  :func:`denoising_step` and :func:`spot_scores` handed to ``run_epochs``. Ray appears only in :class:`~rayproc.runtime.training.RayTrainSession`; in
  one process :class:`~rayproc.runtime.training.InProcessSession` stands in for it (``workers=0``).
* :func:`train_labdct` builds the spec, runs it on ``workers`` TorchTrainer workers (gloo on
  CPU, NCCL with ``gpu``), checkpoints every epoch to ``storage`` (local or ``s3://``),
  restarts failed workers from the last checkpoint (``FailureConfig``), resumes a rerun of
  the same command, logs ``metrics.jsonl`` and ``loss_curve.png``, and exports the best epoch
  as a model directory of family ``"labdct"`` (:mod:`rayproc.models.artifact`).

Training follows Fang et al. [1]_: random tiles of synthetic frames (``input``, built from
forward-simulated projections [2]_ laid on backgrounds extracted from real frames, plus
Poisson noise) and their spot segmentations (``target``, 255 on spots), as written by
``rayproc labdct synth``; inputs normalised by :func:`rayproc.labdct.denoise.normalise_frames`,
targets scaled to {0, 1}; the loss is :func:`rayproc.labdct.network.feature_loss` (pixel
MAE + 1 - SSIM, or pixel + feature + Gram terms with a VGG16-BN weights file).

References
----------
.. [1] H. Fang et al., deep-learning denoising of LabDCT projections (dynamic U-Net trained on
   forward-simulated projections with a perceptual feature loss).
.. [2] H. Fang, D. Juul Jensen and Y. Zhang, "A flexible and standalone forward simulation
   model for laboratory X-ray diffraction contrast tomography", Acta Cryst. A 76 (2020)
   652-663. :doi:`10.1107/S2053273320010852`
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rayproc.errors import InputError
from rayproc.labdct.denoise import DEFAULT_SCALE, FAMILY, dl_spot_labels
from rayproc.labdct.network import LabdctNetConfig, build_labdct_net, feature_loss, load_feature_net
from rayproc.labdct.spots import label_spots, match_spots
from rayproc.labdct.tiles import TileDataset, training_pair
from rayproc.runtime.epochs import Scores, run_epochs, start_worker
from rayproc.runtime.training import (
    BaseTrainSpec, TrainReport, export_best, plot_curves, run_training, session_for, write_epoch,
)
from rayproc.storage import open_dataset, resolve, with_retries
from rayproc.storage.cache import ArrayCache
from rayproc.storage.model_dirs import model_out
from rayproc.storage.outputs import claim_folder

DEFAULT_TILE = 128
NORMALISATION = {
    "transform": "log1p(max(x, 0) / median(frame)) / log1p(scale)",
    "scale": DEFAULT_SCALE,
    "target": "spot segmentation, 1 on spots (255 in the synth store), 0 elsewhere",
}


@dataclass(frozen=True)
class FrameSet:
    """Frames of one synth store (``input``/``target``, dims (omega, det_y, det_z)) used for training."""

    url: str
    frames: tuple[int, ...]
    shape: tuple[int, int] = ()

    def to_dict(self) -> dict:
        return {"url": self.url, "frames": list(self.frames), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameSet":
        return cls(d["url"], tuple(int(f) for f in d["frames"]), tuple(int(n) for n in d.get("shape", ())))

    def __str__(self) -> str:
        return self.url


def list_frame_sets(urls, storage_options: dict | None = None, *, val_fraction: float = 0.1):
    """Training and validation frames of synth stores.

    Every ``round(1 / val_fraction)``-th frame of a store (starting half a period in) is held
    out for validation; a store too short for that keeps all its frames for training.

    Returns
    -------
    train, val : list of FrameSet
        ``val`` is empty when no store holds out a frame.
    """
    if not 0 < val_fraction < 1:
        raise InputError(f"val_fraction must be in (0, 1); got {val_fraction!r} instead.")
    period = max(2, round(1 / val_fraction))
    train, val = [], []
    for url in urls:
        location = resolve(url, storage_options)
        dataset = open_dataset(location)
        missing = {"input", "target"} - set(dataset.data_vars)
        if missing:
            raise InputError(f"{location.url} lacks {sorted(missing)}; expected a store from `rayproc labdct synth` "
                             f"with input and target (omega, det_y, det_z); got {sorted(dataset.data_vars)}.")
        if dataset["input"].ndim != 3 or dataset["input"].shape != dataset["target"].shape:
            raise InputError(f"{location.url}: input and target must be (omega, det_y, det_z) of one shape; got "
                             f"{dataset['input'].shape} and {dataset['target'].shape}.")
        count, *shape = dataset["input"].shape
        held = list(range(period // 2, count, period))
        kept = [f for f in range(count) if f not in held]
        train.append(FrameSet(location.url, tuple(kept), tuple(shape)))
        if held:
            val.append(FrameSet(location.url, tuple(held), tuple(shape)))
    if not train:
        raise InputError("no training data given.")
    return train, val


class FrameReader:
    """``read(frame_set, frame)``: the training pair of a synth store's frame, from a per-process cache.

    The pair is :func:`rayproc.labdct.tiles.training_pair` of the frame's ``input`` and
    ``target``: the normalised frame and the spots in {0, 1}, float32 (H, W) each. Pairs are
    kept in ``cache`` (one per process: pickling, as when a loader worker is spawned, gives an
    empty one with the same bound).

    Parameters
    ----------
    scale : float
        Input normalisation (:func:`rayproc.labdct.denoise.normalise_frames`).
    storage_options : dict, optional
        fsspec options for remote stores.
    cache : ArrayCache, optional
        Shared by the datasets of one process (e.g. training and validation); a new one if None.
    """

    def __init__(self, scale: float, storage_options: dict | None = None, cache: ArrayCache | None = None):
        self.scale = float(scale)
        self.storage_options = dict(storage_options or {})
        self.cache = cache if cache is not None else ArrayCache()

    def __call__(self, frame_set: FrameSet, frame: int) -> tuple[np.ndarray, np.ndarray]:
        return self.cache.get((frame_set.url, frame), lambda: self._read(frame_set.url, frame))

    def _read(self, url: str, frame: int) -> tuple[np.ndarray, np.ndarray]:
        dataset = self.cache.open(url, self.storage_options)
        raw = with_retries(lambda: dataset["input"][frame].values)
        target = with_retries(lambda: dataset["target"][frame].values)
        return training_pair(raw, target, self.scale)


@dataclass(frozen=True)
class LabdctTrainSpec(BaseTrainSpec):
    """Everything one LabDCT training worker needs (besides :class:`~rayproc.runtime.training.BaseTrainSpec`'s).

    ``frames`` / ``val_frames`` are :class:`FrameSet` dicts (no ``val_frames``: validation
    tiles are a separate draw from the training frames). ``feature_net`` is a VGG16-BN
    weights file for the perceptual loss (None: pixel + SSIM). The spec checks on
    construction that the network, tile, scale and frames fit together.
    """

    frames: tuple[dict, ...]
    val_frames: tuple[dict, ...] = ()
    arch: dict = field(default_factory=lambda: LabdctNetConfig().to_dict())
    scale: float = DEFAULT_SCALE
    tile: int = DEFAULT_TILE
    tiles_per_epoch: int = 512
    val_tiles: int = 64
    feature_net: str | None = None

    def problems(self) -> list[str]:
        problems = super().problems()
        divisor = LabdctNetConfig.from_dict(self.arch).divisor
        if not self.frames:
            problems.append("no training frames given")
        if min(self.tiles_per_epoch, self.val_tiles) < 1:
            problems.append(f"tiles per epoch and validation tiles must be >= 1 (got {self.tiles_per_epoch}, "
                            f"{self.val_tiles})")
        if self.tile % divisor or self.tile < divisor:
            problems.append(f"tile {self.tile} must be a positive multiple of {divisor} for "
                            f"{len(self.arch['widths'])} stages")
        if not self.scale > 1:
            problems.append(f"scale must be > 1 (got {self.scale})")
        small = [s for s in map(FrameSet.from_dict, (*self.frames, *self.val_frames)) if min(s.shape) < self.tile]
        if small:
            problems.append(f"{small[0]} has frames of shape {small[0].shape}, smaller than a {self.tile}^2 tile")
        return problems


# ---------------------------------------------------------------------------------------------
# The training function (plain torch)
# ---------------------------------------------------------------------------------------------


def datasets_for(spec: LabdctTrainSpec) -> tuple[TileDataset, TileDataset]:
    """Training and validation tiles of a spec (stream 0 and 1 of the same seed, one frame cache)."""
    read = FrameReader(spec.scale, spec.storage_options)
    frames = [FrameSet.from_dict(d) for d in spec.frames]
    val_frames = [FrameSet.from_dict(d) for d in spec.val_frames] or frames
    return (TileDataset(frames, spec.tiles_per_epoch, tile=spec.tile, read=read, seed=spec.seed, stream=0),
            TileDataset(val_frames, spec.val_tiles, tile=spec.tile, read=read, seed=spec.seed, stream=1))


def denoising_step(model, batch: dict, *, feature_net=None) -> tuple[torch.Tensor, int]:
    """Loss of a batch of tiles: :func:`rayproc.labdct.network.feature_loss` of the network's
    spot map of ``input`` against ``target``, and the batch size."""
    x = batch["input"]
    return feature_loss(model(x), batch["target"], feature_net), len(x)


def spot_scores() -> Scores:
    """Validation scores: spot F1, precision and recall
    (:func:`~rayproc.labdct.denoise.dl_spot_labels` vs the target's spots, IoU >= 0.3) and the
    pixel IoU of the output thresholded at 0.5."""
    return Scores(5, _add_spot_counts, _spot_row)


def _add_spot_counts(totals: np.ndarray, pred: torch.Tensor, batch: dict) -> None:
    """Add the batch's matched, predicted and true spots and its pixel intersection and union."""
    probability, truth = pred[:, 0].cpu().numpy(), batch["target"][:, 0].cpu().numpy() > 0.5
    scores = match_spots(dl_spot_labels(probability), label_spots(truth))
    totals += [scores["true_positives"], scores["n_pred"], scores["n_true"],
               np.count_nonzero((probability >= 0.5) & truth), np.count_nonzero((probability >= 0.5) | truth)]


def _spot_row(totals: np.ndarray) -> dict:
    hits, n_pred, n_true, inter, union = totals
    spot_precision, recall = hits / n_pred if n_pred else 1.0, hits / n_true if n_true else 1.0
    f1 = 2 * spot_precision * recall / (spot_precision + recall) if spot_precision + recall else 0.0
    return {"val_f1": float(f1), "val_precision": float(spot_precision), "val_recall": float(recall),
            "val_iou": float(inter / union) if union else 1.0}


def train_loop(config: dict) -> None:
    """Train on this worker's share of the tiles (plain torch; see :class:`LabdctTrainSpec`).

    Inside Ray Train (``config["ray_train"]``) the model is wrapped for DDP and every epoch is
    reported with a checkpoint; otherwise checkpoints go to ``config["checkpoints"]`` and the
    logs straight to ``config["out"]``. Resumes from the latest checkpoint when there is one
    (:func:`rayproc.runtime.epochs.run_epochs`).
    """
    spec = LabdctTrainSpec.from_dict(config)
    session = session_for(spec, record_epoch, unit="tile")
    start_worker(spec)
    model = build_labdct_net(spec.arch)
    device = session.device(spec.gpu)
    feature_net = load_feature_net(spec.feature_net).to(device) if spec.feature_net else None
    train_set, val_set = datasets_for(spec)
    run_epochs(spec, session, model, device, train_set, val_set,
               step=functools.partial(denoising_step, feature_net=feature_net), scores=spot_scores(),
               rate_key="tiles_per_second", summary=_summary)


def _summary(row: dict, epochs: int) -> str:
    return (f"epoch {row['epoch'] + 1}/{epochs}: train loss {row['train_loss']:.4f}, val loss {row['val_loss']:.4f}, "
            f"val spot F1 {row['val_f1']:.3f}, IoU {row['val_iou']:.3f}, {row['tiles_per_second']:.1f} tiles/s")


# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------


def record_epoch(out: str | Path, row: dict) -> None:
    """Add an epoch's metrics to ``metrics.jsonl`` (replacing any rows from it on) and redraw the curves."""
    write_epoch(out, row, plot_history)


def plot_history(rows: list[dict], path: Path) -> None:
    """Loss curves (train, validation) and validation spot F1 / pixel IoU against epoch, as a PNG."""
    plot_curves(rows, path, loss_label="loss (feature loss: MAE + 1 - SSIM)",
                scores=[("val_f1", "spot F1"), ("val_iou", "pixel IoU")],
                score_label="validation score (threshold 0.5)", score_limits=(0, 1))


# ---------------------------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------------------------


def _check_feature_net(spec: LabdctTrainSpec) -> None:
    if spec.feature_net and not Path(spec.feature_net).is_file():
        raise InputError(f"feature-net file {spec.feature_net} not found.")


def _export(spec: LabdctTrainSpec, folder: str | None, resumed: bool, checkpoints: str, *,
            command: str | None) -> TrainReport:
    return export_best(spec, folder, checkpoints, resumed, model=build_labdct_net(spec.arch),
                       config=LabdctNetConfig.from_dict(spec.arch), family=FAMILY, command=command,
                       stage={"stage": "trained"}, normalisation={**NORMALISATION, "scale": spec.scale},
                       patch_size=spec.tile)


@model_out
def train_labdct(
    data,
    out: str,
    *,
    workers: int = 1,
    gpu: bool = False,
    epochs: int = 10,
    storage: str | None = None,
    widths=LabdctNetConfig.widths,
    blocks=LabdctNetConfig.blocks,
    tile: int = DEFAULT_TILE,
    tiles_per_epoch: int = 512,
    val_tiles: int = 64,
    batch_size: int = 16,
    lr: float = 1e-3,
    seed: int = 0,
    lr_patience: int = 2,
    scale: float = DEFAULT_SCALE,
    val_fraction: float = 0.1,
    feature_net: str | None = None,
    cpus_per_worker: float = 1.0,
    loader_workers: int = 0,
    max_failures: int = 3,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    progress: bool = True,
    command: str | None = None,
) -> TrainReport:
    """Train the LabDCT spot network on synth stores ``data``; write the model directory ``out``.

    Parameters
    ----------
    data : list of str
        Stores from ``rayproc labdct synth``: ``input`` float32 and ``target`` uint8 (255 on
        spots), dims (omega, det_y, det_z).
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
    widths, blocks : sequence of int, optional
        Network size (:class:`rayproc.labdct.network.LabdctNetConfig`; default ResNet34).
    tile : int, optional
        Edge of the training tiles (a multiple of the network's divisor).
    tiles_per_epoch, val_tiles : int, optional
        Training tiles drawn per epoch (fresh draws every epoch) and validation tiles (the
        same every epoch).
    batch_size, lr, seed : optional
        Per-worker batch size, Adam learning rate (halved when validation stalls), master seed.
    lr_patience : int, optional
        Epochs without a lower validation loss before the learning rate is halved.
    scale : float, optional
        Input normalisation (:func:`rayproc.labdct.denoise.normalise_frames`), stored in the model.
    val_fraction : float, optional
        Frames of each store held out for validation (see :func:`list_frame_sets`).
    feature_net : str, optional
        VGG16-BN weights file: the loss becomes pixel + feature + Gram terms.
    cpus_per_worker : float, optional
        Ray CPUs per worker, also its torch thread count.
    loader_workers : int, optional
        DataLoader worker processes per training worker.
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

    Returns
    -------
    TrainReport
    """
    claim_folder(out, inputs=list(data), create=False)
    storage_options = dict(storage_options or {})
    train, val = list_frame_sets(data, storage_options, val_fraction=val_fraction)
    spec = LabdctTrainSpec(
        frames=tuple(s.to_dict() for s in train),
        val_frames=tuple(s.to_dict() for s in val),
        out=str(Path(out).resolve()),
        arch=LabdctNetConfig(widths=tuple(widths), blocks=tuple(blocks)).to_dict(),
        scale=float(scale), tile=int(tile), tiles_per_epoch=int(tiles_per_epoch), val_tiles=int(val_tiles),
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed, lr_patience=lr_patience,
        feature_net=None if feature_net is None else str(Path(feature_net).resolve()),
        gpu=gpu, cpus_per_worker=cpus_per_worker, loader_workers=loader_workers,
        storage_options=storage_options, progress=progress,
    )
    _check_feature_net(spec)
    return run_training(spec, train_loop, record=functools.partial(record_epoch, spec.out),
                        export=functools.partial(_export, spec, command=command), workers=workers, storage=storage,
                        max_failures=max_failures, address=address, cpus=cpus)


__all__ = [
    "DEFAULT_TILE",
    "FrameReader",
    "FrameSet",
    "LabdctTrainSpec",
    "NORMALISATION",
    "datasets_for",
    "denoising_step",
    "list_frame_sets",
    "plot_history",
    "record_epoch",
    "spot_scores",
    "train_labdct",
    "train_loop",
]
