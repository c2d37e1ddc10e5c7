"""The per-worker epoch loop shared by the training pipelines (plain torch, one data-parallel worker).

A pipeline's ``train_loop(config)`` builds its model and datasets and passes them, with its
own ``train_epoch`` and ``validate`` steps, to :func:`run_epochs`, which resumes from the
session's latest checkpoint, wraps model and loaders for data-parallel training, trains the
remaining epochs with Adam (learning rate halved when the validation loss stalls), and
reports each epoch's metrics row with a checkpoint. The session is Ray Train's (DDP,
``ray.train.report``) or an in-process stand-in (:mod:`rayproc.runtime.training`).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
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
    :class:`rayproc.pipelines.bcdi.portion_data.PortionDataset`) then yields new portions and gaps
    every epoch (after ``set_epoch``), even in loader worker processes that persist across epochs.
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
    train_epoch: Callable,
    validate: Callable,
    rate_key: str,
    summary: Callable[[dict, int], str],
) -> None:
    """Train ``model`` from the session's latest checkpoint to ``spec.epochs`` epochs.

    Parameters
    ----------
    spec
        Training spec with ``lr``, ``epochs``, ``seed``, ``batch_size``, ``loader_workers``,
        ``progress`` and ``fail_once_after_epoch`` (tests: fail once after that epoch).
    session
        ``device``, ``checkpoint()``, ``prepare_model``, ``prepare_data_loader``, ``progress``
        and ``report(row, folder)``: Ray Train's or the in-process stand-in.
    model, device
        The freshly built model (moved to ``device`` here, before the optimizer is made, so
        that restored optimizer state lands there too).
    train_set, val_set
        Map-style datasets; training is sharded by an :class:`EpochSampler`, validation by a
        ``DistributedSampler``.
    train_epoch : callable
        ``train_epoch(model, loader, optimizer, precision, progress=bar) -> mean loss``.
    validate : callable
        ``validate(model, loader, precision) -> {"val_loss": ..., ...}``.
    rate_key : str
        Name of the throughput column (items of ``train_set`` per second).
    summary : callable
        ``summary(row, epochs) -> str``, printed by rank 0 after each epoch with progress on.
    """
    rank, world = rank_and_world()
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.lr)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
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
        train_loss = train_epoch(model, train_loader, optimizer, precision, progress=bar)
        train_seconds = time.perf_counter() - began
        if bar is not None:
            bar.close()
        row = {"epoch": epoch, "train_loss": train_loss, **validate(model, val_loader, precision)}
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
        if spec.fail_once_after_epoch == epoch and start == 0:
            # Fail as if during the next epoch: first let Ray Train's controller poll the workers
            # (every 2 s) and register this epoch's checkpoint, or the restart may not see it.
            time.sleep(5.0)
            raise RuntimeError(f"injected failure after epoch {epoch} (fail_once_after_epoch)")


__all__ = ["STATE_FILE", "EpochSampler", "Precision", "cpu_copy", "rank_and_world", "run_epochs", "start_worker",
           "sum_across_workers"]
