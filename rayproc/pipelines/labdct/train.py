"""``rayproc labdct train``: train the LabDCT spot-denoising network with Ray Train.

The same shell as :mod:`rayproc.pipelines.bcdi.train` (:mod:`rayproc.runtime.training`: the
driver, sessions, checkpoints, run claiming and resuming) and the same epoch loop
(:func:`rayproc.runtime.epochs.run_epochs`):

* :func:`train_loop` is plain torch for one data-parallel worker, driven by a config dict
  (:class:`LabdctTrainSpec`): the model, the tile datasets and the loss/metric steps handed to
  ``run_epochs``. Ray appears only in :class:`~rayproc.runtime.training.RayTrainSession`; in
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

import dataclasses
import functools
import json
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from rayproc.errors import InputError
from rayproc.labdct.denoise import DEFAULT_SCALE, FAMILY, dl_spot_labels, normalise_frames
from rayproc.labdct.spots import label_spots, match_spots
from rayproc.labdct.network import LabdctNetConfig, build_labdct_net, feature_loss, load_feature_net
from rayproc.runtime.epochs import Precision, run_epochs, start_worker, sum_across_workers
from rayproc.runtime.training import (
    InProcessSession, RayTrainSession, TrainReport, export_best, plot_curves, run_training, write_epoch,
)
from rayproc.storage import Location, open_dataset, resolve, with_retries
from rayproc.storage.outputs import claim_folder

DEFAULT_TILE = 128
NORMALISATION = {
    "transform": "log1p(max(x, 0) / median(frame)) / log1p(scale)",
    "scale": DEFAULT_SCALE,
    "target": "spot segmentation, 1 on spots (255 in the synth store), 0 elsewhere",
}


@dataclass(frozen=True)
class FrameSet:
    """Frames of one synth store (``input``/``target``, dims (omega, y, x)) used for training."""

    url: str
    frames: tuple[int, ...]
    shape: tuple[int, int] = ()

    def to_dict(self) -> dict:
        return {"url": self.url, "frames": list(self.frames), "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, d: dict) -> "FrameSet":
        return cls(d["url"], tuple(int(f) for f in d["frames"]), tuple(int(n) for n in d.get("shape", ())))


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
                             f"with input and target (omega, y, x); got {sorted(dataset.data_vars)}.")
        if dataset["input"].ndim != 3 or dataset["input"].shape != dataset["target"].shape:
            raise InputError(f"{location.url}: input and target must be (omega, y, x) of one shape; got "
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


class FrameCache:
    """Per-process LRU cache of normalised input frames and binary targets, bounded in frames.

    Pickling (a loader worker being spawned) gives an empty cache with the same bound.
    """

    def __init__(self, scale: float, max_frames: int = 256):
        self.scale, self.max_frames = float(scale), int(max_frames)
        self._frames: OrderedDict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._stores: dict[str, object] = {}

    def __getstate__(self) -> dict:
        return {"scale": self.scale, "max_frames": self.max_frames}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["scale"], state["max_frames"])

    def get(self, url: str, frame: int, storage_options: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(input, target)`` of a frame: normalised float32 (H, W) and float32 {0, 1} (H, W)."""
        key = (url, frame)
        if key in self._frames:
            self._frames.move_to_end(key)
            return self._frames[key]
        if url not in self._stores:
            self._stores[url] = open_dataset(Location(url, dict(storage_options or {})))
        dataset = self._stores[url]
        raw = with_retries(lambda: dataset["input"][frame].values)
        target = with_retries(lambda: dataset["target"][frame].values)
        pair = normalise_frames(raw[None], scale=self.scale)[0], (target > 0).astype(np.float32)
        self._frames[key] = pair
        while len(self._frames) > self.max_frames:
            self._frames.popitem(last=False)
        return pair


class TileDataset(Dataset):
    """Random tiles of synth frames: item ``i`` of epoch ``e`` is a pure function of the seed.

    Item ``index = i + e * len`` uses ``default_rng([seed, stream, e, i])`` to pick a frame
    (uniformly over all frames of ``frame_sets``), a tile origin and one of the 8 flips and
    quarter turns of the square tile, so items do not depend on how many workers read them
    (see :class:`rayproc.runtime.epochs.EpochSampler`).

    An item is a dict: ``input`` (1, T, T) float32 (normalised, see
    :func:`rayproc.labdct.denoise.normalise_frames`), ``target`` (1, T, T) float32 in {0, 1}.
    """

    def __init__(self, frame_sets, tiles: int, *, tile: int, scale: float, seed: int = 0, stream: int = 0,
                 storage_options: dict | None = None, cache: FrameCache | None = None):
        self.frame_sets = [s if isinstance(s, FrameSet) else FrameSet.from_dict(s) for s in frame_sets]
        self.frames = [(s.url, f, s.shape) for s in self.frame_sets for f in s.frames]
        if tiles < 1 or not self.frames:
            raise InputError(f"need >= 1 frame and >= 1 tile; got {len(self.frames)} and {tiles} instead.")
        small = [(url, shape) for url, _, shape in self.frames if min(shape) < tile]
        if small:
            raise InputError(f"{small[0][0]} has frames of shape {small[0][1]}, smaller than a {tile}^2 tile.")
        self.tiles, self.tile, self.seed, self.stream = int(tiles), int(tile), int(seed), int(stream)
        self.storage_options = dict(storage_options or {})
        self.cache = cache if cache is not None else FrameCache(scale)

    def __len__(self) -> int:
        return self.tiles

    def __getitem__(self, index: int) -> dict:
        epoch, within = divmod(int(index), self.tiles)
        rng = np.random.default_rng([self.seed, self.stream, epoch, within])
        url, frame, (height, width) = self.frames[int(rng.integers(len(self.frames)))]
        y, x = int(rng.integers(height - self.tile + 1)), int(rng.integers(width - self.tile + 1))
        turn = int(rng.integers(8))
        pair = []
        for image in self.cache.get(url, frame, self.storage_options):
            crop = np.rot90(image[y:y + self.tile, x:x + self.tile], turn % 4)
            pair.append(torch.from_numpy(np.ascontiguousarray(crop[:, ::-1] if turn >= 4 else crop))[None])
        return {"input": pair[0], "target": pair[1]}


@dataclass(frozen=True)
class LabdctTrainSpec:
    """Everything one training worker needs; travels to Ray workers as a dict.

    ``frames`` / ``val_frames`` are :class:`FrameSet` dicts (no ``val_frames``: validation
    tiles are a separate draw from the training frames). ``feature_net`` is a VGG16-BN
    weights file for the perceptual loss (None: pixel + SSIM). ``checkpoints`` is the storage
    URL of an in-process (``workers=0``) run; ``fail_once_after_epoch`` injects a failure
    (tests), as in :class:`rayproc.pipelines.bcdi.train.TrainSpec`.
    """

    frames: tuple[dict, ...]
    out: str
    val_frames: tuple[dict, ...] = ()
    arch: dict = field(default_factory=lambda: LabdctNetConfig().to_dict())
    scale: float = DEFAULT_SCALE
    tile: int = DEFAULT_TILE
    tiles_per_epoch: int = 512
    val_tiles: int = 64
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    feature_net: str | None = None
    gpu: bool = False
    cpus_per_worker: float = 1.0
    loader_workers: int = 0
    storage_options: dict = field(default_factory=dict)
    checkpoints: str | None = None
    ray_train: bool = False
    progress: bool = True
    fail_once_after_epoch: int | None = None

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict) -> "LabdctTrainSpec":
        values = {f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d}
        for name in ("frames", "val_frames"):
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values)


# ---------------------------------------------------------------------------------------------
# The training function (plain torch)
# ---------------------------------------------------------------------------------------------


def datasets_for(spec: LabdctTrainSpec) -> tuple[TileDataset, TileDataset]:
    """Training and validation tiles of a spec (stream 0 and 1 of the same seed, one cache)."""
    cache = FrameCache(spec.scale)
    common = dict(tile=spec.tile, scale=spec.scale, seed=spec.seed, storage_options=spec.storage_options, cache=cache)
    return (TileDataset(spec.frames, spec.tiles_per_epoch, stream=0, **common),
            TileDataset(spec.val_frames or spec.frames, spec.val_tiles, stream=1, **common))


def train_one_epoch(model, loader, optimizer, precision: Precision, *, feature_net=None, progress=None) -> float:
    """One pass over ``loader``; returns the mean loss over all workers' tiles."""
    model.train()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in loader:
        x, target = batch["input"].to(device, non_blocking=True), batch["target"].to(device, non_blocking=True)
        optimizer.zero_grad(set_to_none=True)
        with precision.autocast():
            pred = model(x)
        loss = feature_loss(pred.float(), target, feature_net)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        total += float(loss.detach()) * len(x)
        count += len(x)
        if progress is not None:
            progress.update(len(x))
    loss_sum, n = sum_across_workers([total, count], device)
    return float(loss_sum / max(n, 1))


@torch.no_grad()
def evaluate(model, loader, precision: Precision, *, feature_net=None) -> dict:
    """Validation loss, spot F1 (:func:`~rayproc.labdct.denoise.dl_spot_labels` vs the target's
    spots, IoU >= 0.3) and pixel IoU of the thresholded output, over all workers' tiles."""
    model.eval()
    device = next(model.parameters()).device
    loss_sum = count = hits = n_pred = n_true = inter = union = 0.0
    for batch in loader:
        x, target = batch["input"].to(device), batch["target"].to(device)
        with precision.autocast():
            pred = model(x)
        pred = pred.float()
        loss_sum += float(feature_loss(pred, target, feature_net)) * len(x)
        count += len(x)
        probability, truth = pred[:, 0].cpu().numpy(), target[:, 0].cpu().numpy() > 0.5
        scores = match_spots(dl_spot_labels(probability), label_spots(truth))
        hits, n_pred, n_true = hits + scores["true_positives"], n_pred + scores["n_pred"], n_true + scores["n_true"]
        inter += np.count_nonzero((probability >= 0.5) & truth)
        union += np.count_nonzero((probability >= 0.5) | truth)
    loss_sum, count, hits, n_pred, n_true, inter, union = sum_across_workers(
        [loss_sum, count, hits, n_pred, n_true, inter, union], device)
    spot_precision, recall = hits / n_pred if n_pred else 1.0, hits / n_true if n_true else 1.0
    f1 = 2 * spot_precision * recall / (spot_precision + recall) if spot_precision + recall else 0.0
    return {"val_loss": float(loss_sum / max(count, 1)), "val_f1": float(f1),
            "val_precision": float(spot_precision), "val_recall": float(recall),
            "val_iou": float(inter / union) if union else 1.0}


def train_loop(config: dict) -> None:
    """Train on this worker's share of the tiles (plain torch; see :class:`LabdctTrainSpec`).

    Inside Ray Train (``config["ray_train"]``) the model is wrapped for DDP and every epoch is
    reported with a checkpoint; otherwise checkpoints go to ``config["checkpoints"]`` and the
    logs straight to ``config["out"]``. Resumes from the latest checkpoint when there is one
    (:func:`rayproc.runtime.epochs.run_epochs`).
    """
    spec = LabdctTrainSpec.from_dict(config)
    session = RayTrainSession() if spec.ray_train else InProcessSession(spec, record_epoch, unit="tile")
    start_worker(spec)
    model = build_labdct_net(spec.arch)
    device = session.device(spec.gpu)
    feature_net = load_feature_net(spec.feature_net).to(device) if spec.feature_net else None
    train_set, val_set = datasets_for(spec)
    run_epochs(spec, session, model, device, train_set, val_set,
               train_epoch=functools.partial(train_one_epoch, feature_net=feature_net),
               validate=functools.partial(evaluate, feature_net=feature_net), rate_key="tiles_per_second",
               summary=_summary)


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


def _check_spec(spec: LabdctTrainSpec) -> None:
    divisor = LabdctNetConfig.from_dict(spec.arch).divisor
    problems = []
    if min(spec.epochs, spec.batch_size, spec.tiles_per_epoch, spec.val_tiles) < 1:
        problems.append(f"epochs, batch size, tiles per epoch and validation tiles must be >= 1 (got {spec.epochs}, "
                        f"{spec.batch_size}, {spec.tiles_per_epoch}, {spec.val_tiles})")
    if spec.tile % divisor or spec.tile < divisor:
        problems.append(f"tile {spec.tile} must be a positive multiple of {divisor} for {len(spec.arch['widths'])} stages")
    if not spec.scale > 1:
        problems.append(f"scale must be > 1 (got {spec.scale})")
    if spec.feature_net and not Path(spec.feature_net).is_file():
        problems.append(f"feature-net file {spec.feature_net} not found")
    if problems:
        raise InputError("; ".join(problems) + ".")
    datasets_for(spec)  # frames smaller than a tile? (reads nothing)


def _export(spec: LabdctTrainSpec, folder: str | None, resumed: bool, checkpoints: str, *,
            command: str | None) -> TrainReport:
    return export_best(spec, folder, checkpoints, resumed, model=build_labdct_net(spec.arch),
                       config=LabdctNetConfig.from_dict(spec.arch), family=FAMILY, command=command,
                       stage={"stage": "trained"}, normalisation={**NORMALISATION, "scale": spec.scale},
                       patch_size=spec.tile)


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
    fail_once_after_epoch: int | None = None,
) -> TrainReport:
    """Train the LabDCT spot network on synth stores ``data``; write the model directory ``out``.

    Parameters
    ----------
    data : list of str
        Stores from ``rayproc labdct synth``: ``input`` float32 and ``target`` uint8 (255 on
        spots), dims (omega, y, x).
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
    fail_once_after_epoch : int, optional
        Testing hook: a worker fails once after checkpointing this epoch.

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
        epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
        feature_net=None if feature_net is None else str(Path(feature_net).resolve()),
        gpu=gpu, cpus_per_worker=cpus_per_worker, loader_workers=loader_workers,
        storage_options=storage_options, progress=progress, fail_once_after_epoch=fail_once_after_epoch,
    )
    _check_spec(spec)
    return run_training(spec, train_loop, record=functools.partial(record_epoch, spec.out),
                        export=functools.partial(_export, spec, command=command), workers=workers, storage=storage,
                        max_failures=max_failures, address=address, cpus=cpus)


__all__ = [
    "DEFAULT_TILE",
    "FrameCache",
    "FrameSet",
    "LabdctTrainSpec",
    "NORMALISATION",
    "TileDataset",
    "datasets_for",
    "evaluate",
    "list_frame_sets",
    "plot_history",
    "record_epoch",
    "train_labdct",
    "train_loop",
    "train_one_epoch",
]
