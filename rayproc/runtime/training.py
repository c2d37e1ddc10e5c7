"""Ray Train shell shared by the training pipelines: epoch logs, checkpoint storage, the fit call.

The pipelines (``rayproc.pipelines.bcdi_train``, ``labdct_train``) own their data, model and
loss/metric steps (a plain ``train_loop(config)`` around :func:`rayproc.runtime.epochs.run_epochs`,
the epoch loop they share); this module runs such a loop on Ray Train's
``TorchTrainer`` (gloo on CPU, NCCL on GPU), restarts failed workers from the last checkpoint,
and writes each epoch's metrics row as JSON lines plus a curve PNG next to the model.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rayproc.errors import RayprocError
from rayproc.storage import Location, filesystem

METRICS_LOG = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"


def read_history(out: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` in a model directory (one per epoch)."""
    path = Path(out) / METRICS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_epoch(out: str | Path, row: dict, plot: Callable[[list[dict], Path], None]) -> None:
    """Add an epoch's metrics to ``metrics.jsonl`` (replacing any rows from it on) and redraw
    the curves with ``plot(rows, path)``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r for r in read_history(out) if r["epoch"] < row["epoch"]] + [dict(row)]
    temporary = out / f".{METRICS_LOG}.tmp"
    temporary.write_text("".join(json.dumps(r) + "\n" for r in rows))
    temporary.replace(out / METRICS_LOG)
    plot(rows, out / LOSS_CURVE)


def plot_curves(rows: list[dict], path: Path, *, loss_label: str, scores: list[tuple[str, str]], score_label: str,
                score_limits: tuple[float, float] | None = None) -> None:
    """Loss curves (train, validation) and validation ``scores`` (``(key, label)``) against epoch, as a PNG.

    Missing (None) scores are gaps; the PNG is replaced atomically.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] + 1 for r in rows]
    figure = Figure(figsize=(9, 3.5), layout="constrained")
    FigureCanvasAgg(figure)
    losses, metric = figure.subplots(1, 2)
    for key, label in (("train_loss", "training"), ("val_loss", "validation")):
        losses.plot(epochs, [r[key] for r in rows], marker="o", label=label)
    losses.set(xlabel="epoch", ylabel=loss_label, yscale="log")
    for key, label in scores:
        metric.plot(epochs, [np.nan if r.get(key) is None else r[key] for r in rows], marker="o", label=label)
    metric.set(xlabel="epoch", ylabel=score_label)
    if score_limits is not None:
        metric.set_ylim(*score_limits)
    for axes in (losses, metric):
        axes.legend()
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=100)
    temporary.replace(path)


def ray_storage(location: Location):
    """``(storage_path, storage_filesystem)`` for Ray Train's RunConfig (local folder or ``s3://``)."""
    if not location.is_remote:
        return location.url, None
    import pyarrow.fs

    fs, path = filesystem(location)
    return path, pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(fs))


def _epoch_log_callback(record: Callable[[dict], None]):
    """A Ray Train callback, run by the controller on the driver's node, that logs each epoch."""
    from ray.train import UserCallback

    class EpochLog(UserCallback):
        def after_report(self, run_context, metrics, checkpoint):
            record(metrics[0])  # rank 0's row

    return EpochLog()


def fit(
    train_loop: Callable[[dict], None],
    config: dict,
    *,
    name: str,
    workers: int,
    gpu: bool,
    resources_per_worker: dict,
    root: Location,
    max_failures: int,
    record: Callable[[dict], None],
):
    """Run ``train_loop(config)`` on ``workers`` Ray Train workers; return the Ray Train result.

    Checkpoints go to ``root / name`` (two kept); a worker failure restarts the group from the
    last checkpoint up to ``max_failures`` times, and rerunning with the same ``name`` resumes.
    ``record(row)`` (picklable, e.g. a ``functools.partial``) receives rank 0's metrics of every
    epoch on the driver's node.
    """
    import ray.train
    from ray.train.torch import TorchConfig, TorchTrainer

    storage_path, storage_filesystem = ray_storage(root)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config=config,
        torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpu,
                                               resources_per_worker=resources_per_worker),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=storage_path,
            storage_filesystem=storage_filesystem,
            failure_config=ray.train.FailureConfig(max_failures=max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            callbacks=[_epoch_log_callback(record)],
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        raise RayprocError(
            f"training failed (after {max_failures} restart(s) from the last checkpoint): "
            f"{lines[-1] if lines else type(exc).__name__}; rerun the same command to resume"
        ) from exc
    if result.checkpoint is None:
        raise RayprocError(f"training at {root.child(name).url} reported no checkpoint.")
    return result


__all__ = ["LOSS_CURVE", "METRICS_LOG", "fit", "ray_storage", "read_history", "write_epoch"]
