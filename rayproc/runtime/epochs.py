"""The per-worker epoch loop shared by the training pipelines (plain torch, one data-parallel worker).

A pipeline's ``train_loop(config)`` builds its model and datasets and passes them, with its
``step`` and validation :class:`Scores`, to :func:`run_epochs`, which resumes from the
session's latest checkpoint, wraps model and loaders for data-parallel training, trains the
remaining epochs with Adam (learning rate halved when the validation loss stalls;
:func:`train_one_epoch`), validates (:func:`validate`) and reports each epoch's metrics row
with a checkpoint. The session is Ray Train's (DDP, ``ray.train.report``) or an in-process
stand-in (:mod:`rayproc.runtime.training`).

A pipeline's step is all it knows of a batch: ``step(model, batch) -> (loss, n)`` calls
``model`` once on the batch's inputs (``model`` runs the network in the worker's precision
and returns float32) and gives the batch's mean loss and its number of items. Batches reach
the step on the worker's device.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from rayproc.runtime.memory import retain_freed_memory

STATE_FILE = "state.pt"


class EpochSampler(DistributedSampler):
    """A DistributedSampler whose indices carry the epoch: ``i + epoch * len(dataset)``.

    A dataset that draws its items from ``(seed, epoch, i)`` (e.g.
    :class:`rayproc.bcdi.portion_dataset.PortionDataset`, :class:`rayproc.labdct.tiles.TileDataset`)
    then yields new items every epoch (after ``set_epoch``), even in loader worker processes that
    persist across epochs.
    """

    def __iter__(self):
        offset = self.epoch * len(self.dataset)
        return (offset + i for i in super().__iter__())


class Precision:
    """Mixed precision on CUDA (bf16 where supported, else fp16 with loss scaling); fp32 on CPU."""

    def __init__(self, device: torch.device):
        self.device_type = device.type
        self.enabled = device.type == "cuda"
        self.dtype = torch.bfloat16 if self.enabled and torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.enabled and self.dtype == torch.float16)

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype, enabled=self.enabled)


Step = Callable[[Callable[..., torch.Tensor], dict], tuple[torch.Tensor, int]]
"""``step(model, batch) -> (loss, n)``: the mean loss of a batch of ``n`` items (see the module docstring)."""


class Forward:
    """``model(*inputs)`` under the worker's precision, its output as float32 (what a step calls).

    With ``keep``, the output of the latest call stays in :attr:`output` (for validation scores).
    """

    def __init__(self, model: torch.nn.Module, precision: Precision, *, keep: bool = False):
        self.model, self.precision, self.keep = model, precision, keep
        self.output: torch.Tensor | None = None

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            output = self.model(*inputs)
        output = output.float()
        if self.keep:
            self.output = output
        return output


@dataclass(frozen=True)
class Scores:
    """Validation scores besides the loss: sums over items and workers, then a summary.

    Attributes
    ----------
    size : int
        Number of sums.
    add : callable
        ``add(totals, output, batch)`` adds the batch's items to ``totals`` (float64, ``size``)
        in place, item by item; ``output`` is the model's output in the step.
    summarise : callable
        ``summarise(totals) -> dict``: the metrics row's scores from the sums over all workers.
    """

    size: int
    add: Callable[[np.ndarray, torch.Tensor, dict], None]
    summarise: Callable[[np.ndarray], dict]


def rank_and_world() -> tuple[int, int]:
    """This worker's rank and the number of data-parallel workers (0, 1 outside DDP)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def sum_across_workers(values, device: torch.device) -> np.ndarray:
    """Element-wise sum of ``values`` over all data-parallel workers."""
    total = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(total)
    return total.cpu().numpy()


def cpu_copy(module: torch.nn.Module) -> dict:
    """A CPU copy of a (possibly DDP-wrapped) module's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in getattr(module, "module", module).state_dict().items()}


def to_device(batch: dict, device: torch.device) -> dict:
    """The batch with its tensors on ``device`` (other values as they are)."""
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train_one_epoch(model: torch.nn.Module, loader, optimizer, precision: Precision, step: Step, *,
                    progress=None) -> float:
    """One pass over ``loader`` with ``step``; returns the mean loss over all workers' items.

    The loss is scaled for fp16 (:class:`Precision`); ``progress`` (a tqdm-like bar) advances
    by the items of each batch.
    """
    model.train()
    device = next(model.parameters()).device
    forward = Forward(model, precision)
    total, count = 0.0, 0
    for batch in loader:
        batch = to_device(batch, device)
        optimizer.zero_grad(set_to_none=True)
        loss, n = step(forward, batch)
        precision.scaler.scale(loss).backward()
        precision.scaler.step(optimizer)
        precision.scaler.update()
        total += float(loss.detach()) * n
        count += n
        if progress is not None:
            progress.update(n)
    loss_sum, n = sum_across_workers([total, count], device)
    return float(loss_sum / max(n, 1))


@torch.no_grad()
def validate(model: torch.nn.Module, loader, precision: Precision, step: Step, scores: Scores | None = None) -> dict:
    """The validation row: ``val_loss`` (mean over all workers' items) and the summarised ``scores``."""
    model.eval()
    device = next(model.parameters()).device
    forward = Forward(model, precision, keep=scores is not None)
    loss_sum = count = 0.0
    totals = np.zeros(scores.size if scores is not None else 0)
    for batch in loader:
        batch = to_device(batch, device)
        loss, n = step(forward, batch)
        loss_sum += float(loss) * n
        count += n
        if scores is not None:
            scores.add(totals, forward.output, batch)
    summed = sum_across_workers([loss_sum, count, *totals], device)
    row = {"val_loss": float(summed[0] / max(summed[1], 1))}
    if scores is not None:
        row.update(scores.summarise(summed[2:]))
    return row


def start_worker(spec) -> None:
    """Torch threads = the worker's CPU share, freed memory kept, ``spec.seed`` for the weights."""
    torch.set_num_threads(max(1, int(spec.cpus_per_worker)))
    retain_freed_memory()
    torch.manual_seed(spec.seed)


def run_epochs(
    spec,
    session,
    model: torch.nn.Module,
    device: torch.device,
    train_set,
    val_set,
    *,
    step: Step,
    scores: Scores | None = None,
    rate_key: str,
    summary: Callable[[dict, int], str],
) -> None:
    """Train ``model`` from the session's latest checkpoint to ``spec.epochs`` epochs.

    Parameters
    ----------
    spec
        Training spec with ``lr``, ``epochs``, ``seed``, ``batch_size``, ``loader_workers`` and
        ``progress`` (:class:`rayproc.runtime.training.BaseTrainSpec`).
    session
        ``device``, ``checkpoint()``, ``prepare_model``, ``prepare_data_loader``, ``progress``
        and ``report(row, folder)``: Ray Train's or the in-process stand-in.
    model, device
        The freshly built model (moved to ``device`` here, before the optimizer is made, so
        that restored optimizer state lands there too).
    train_set, val_set
        Map-style datasets; training is sharded by an :class:`EpochSampler`, validation by a
        ``DistributedSampler``.
    step : callable
        ``step(model, batch) -> (loss, n)``, for training and validation (see the module docstring).
    scores : Scores, optional
        Validation scores besides ``val_loss`` (:func:`validate`).
    rate_key : str
        Name of the throughput column (items of ``train_set`` per second).
    summary : callable
        ``summary(row, epochs) -> str``, printed by rank 0 after each epoch with progress on.
    """
    rank, world = rank_and_world()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5,
                                                           patience=spec.lr_patience)
    precision = Precision(device)
    history, best_weights = [], None
    with session.checkpoint() as folder:
        if folder is not None:
            saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            scheduler.load_state_dict(saved["scheduler"])
            if saved["scaler"] and precision.scaler.is_enabled():
                precision.scaler.load_state_dict(saved["scaler"])
            history, best_weights = list(saved["history"]), saved["best_model"]
    start = len(history)
    model = session.prepare_model(model)
    train_sampler = EpochSampler(train_set, num_replicas=world, rank=rank, shuffle=True, seed=spec.seed)
    loader_options = dict(batch_size=spec.batch_size, num_workers=spec.loader_workers,
                          persistent_workers=spec.loader_workers > 0, pin_memory=device.type == "cuda")
    train_loader = session.prepare_data_loader(DataLoader(train_set, sampler=train_sampler, **loader_options))
    val_loader = session.prepare_data_loader(DataLoader(
        val_set, sampler=DistributedSampler(val_set, num_replicas=world, rank=rank, shuffle=False), **loader_options))
    for epoch in range(start, spec.epochs):
        began = time.perf_counter()
        train_sampler.set_epoch(epoch)
        bar = session.progress(len(train_sampler), f"epoch {epoch + 1}/{spec.epochs}") if spec.progress and rank == 0 else None
        train_loss = train_one_epoch(model, train_loader, optimizer, precision, step, progress=bar)
        train_seconds = time.perf_counter() - began
        if bar is not None:
            bar.close()
        row = {"epoch": epoch, "train_loss": train_loss, **validate(model, val_loader, precision, step, scores)}
        scheduler.step(row["val_loss"])
        row.update(lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - began, workers=world,
                   start_epoch=start, **{rate_key: len(train_set) / train_seconds})
        history.append(row)
        if best_weights is None or row["val_loss"] <= min(r["val_loss"] for r in history):
            best_weights = cpu_copy(model)
        if rank == 0 and spec.progress:
            print(summary(row, spec.epochs), flush=True)
        with tempfile.TemporaryDirectory() as folder:
            if rank == 0:
                torch.save({"model": cpu_copy(model), "best_model": best_weights, "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(), "scaler": precision.scaler.state_dict(),
                            "history": history}, Path(folder) / STATE_FILE)
            session.report(row, folder if rank == 0 else None)


__all__ = ["STATE_FILE", "EpochSampler", "Forward", "Precision", "Scores", "Step", "cpu_copy", "rank_and_world",
           "run_epochs", "start_worker", "sum_across_workers", "to_device", "train_one_epoch", "validate"]
