"""Ray Train shell shared by the training pipelines: specs, the driver, sessions, checkpoints, epoch logs.

The pipelines (:mod:`rayproc.pipelines.bcdi.train`, :mod:`rayproc.pipelines.labdct.train`) own
their spec (a :class:`BaseTrainSpec`), data, model and ``step`` (a plain ``train_loop(config)``
around :func:`rayproc.runtime.epochs.run_epochs`, the epoch loop they share). This module runs
such a loop (:func:`run_training`): in this process (``workers=0``; :class:`InProcessSession`
copies checkpoints to the storage) or on Ray Train's ``TorchTrainer`` (gloo on CPU, NCCL on
GPU; :class:`RayTrainSession` inside the workers), restarts failed workers from the last
checkpoint, resumes a rerun of the same run (:func:`claim_run`), writes each epoch's metrics
row as JSON lines plus a curve PNG next to the model, and exports the best epoch
(:func:`export_best`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rayproc.errors import InputError, RayprocError
from rayproc.storage import Location, command_line, filesystem, provenance, redacted, resolve, with_retries

METRICS_LOG = "metrics.jsonl"
LOSS_CURVE = "loss_curve.png"
RUN_FILE = "rayproc_run.json"
# Spec fields a rerun may change and still resume the same run.
RESUMABLE_CHANGES = (
    "epochs", "progress", "gpu", "cpus_per_worker", "loader_workers", "ray_train", "checkpoints", "storage_options",
)
_NOT_PROVENANCE = ("ray_train", "checkpoints", "progress")
_CHECKPOINT_NAME = re.compile(r"checkpoint_(\d{6})$")


@dataclass(frozen=True, kw_only=True)
class BaseTrainSpec:
    """What every training run needs; a pipeline's spec adds its data, network and sampling.

    A spec travels to the training workers as a dict (:meth:`to_dict`, :meth:`from_dict`) and
    checks itself on construction: :meth:`problems` lists what is wrong, and a spec with any
    raises :class:`rayproc.errors.InputError` naming them all on one line.

    Attributes
    ----------
    out : str
        Model directory (local, absolute): the exported model, ``metrics.jsonl``, ``loss_curve.png``.
    epochs, batch_size, lr, seed : optional
        Total epochs, per-worker batch size, Adam learning rate, master seed.
    lr_patience : int
        Epochs without a lower validation loss before the learning rate is halved.
    gpu : bool
        One GPU per worker, mixed precision.
    cpus_per_worker : float
        Ray CPUs per worker, also its torch thread count.
    loader_workers : int
        DataLoader worker processes per training worker.
    storage_options : dict
        fsspec options for ``s3://`` data and checkpoints.
    checkpoints : str, optional
        Checkpoint storage URL of an in-process (``workers=0``) run.
    ray_train : bool
        Whether the loop runs inside Ray Train (set by :func:`run_training`).
    progress : bool
        Progress bar and per-epoch summary lines.
    """

    out: str
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-3
    seed: int = 0
    lr_patience: int = 2
    gpu: bool = False
    cpus_per_worker: float = 1.0
    loader_workers: int = 0
    storage_options: dict = field(default_factory=dict)
    checkpoints: str | None = None
    ray_train: bool = False
    progress: bool = True

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise InputError("; ".join(problems) + ".")

    def problems(self) -> list[str]:
        """What is wrong with this spec, one phrase each (empty when it is valid)."""
        problems = []
        if min(self.epochs, self.batch_size) < 1:
            problems.append(f"epochs and batch size must be >= 1 (got {self.epochs}, {self.batch_size})")
        if not self.lr > 0:
            problems.append(f"learning rate must be > 0 (got {self.lr})")
        if self.seed < 0:
            problems.append(f"seed must be >= 0 (got {self.seed})")
        if self.lr_patience < 0:
            problems.append(f"learning-rate patience must be >= 0 epochs (got {self.lr_patience})")
        if not self.cpus_per_worker > 0:
            problems.append(f"CPUs per worker must be > 0 (got {self.cpus_per_worker})")
        if self.loader_workers < 0:
            problems.append(f"loader workers must be >= 0 (got {self.loader_workers})")
        return problems

    def to_dict(self) -> dict:
        """The spec as plain JSON values (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict):
        """The spec of :meth:`to_dict`'s dict; unknown or missing keys are an :class:`InputError`."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise InputError(f"{cls.__name__} has no field(s) {', '.join(unknown)}.")
        required = [name for name, f in fields.items()
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in d]
        if missing:
            raise InputError(f"{cls.__name__} needs {', '.join(missing)}.")
        values = {name: tuple(value) if str(fields[name].type).startswith("tuple") and value is not None else value
                  for name, value in d.items()}
        return cls(**values)


@dataclass(frozen=True)
class TrainReport:
    out: str
    epochs: int
    best_epoch: int
    best: dict
    resumed: bool
    checkpoints: str
    history: list = field(default_factory=list)


def run_training(spec, train_loop: Callable[[dict], None], *, record: Callable[[dict], None],
                 export: Callable[[str | None, bool, str], TrainReport], workers: int, storage: str | None,
                 max_failures: int, address: str | None, cpus: int | None) -> TrainReport:
    """Train ``spec`` (resuming its run if any) and export the best epoch to ``spec.out``.

    ``record(row)`` logs an epoch on the driver (picklable); ``export(folder, resumed,
    checkpoints)`` writes the model directory from the last checkpoint's local ``folder``.
    """
    from rayproc.runtime.cluster import ray_session

    if workers < 0:
        raise InputError(f"--workers must be >= 0; got {workers}.")
    from rayproc.storage.outputs import claim_folder

    sources = [*getattr(spec, "volumes", ()), *getattr(spec, "val_volumes", ()), *getattr(spec, "frames", ()),
               *getattr(spec, "val_frames", ())]
    claim_folder(spec.out, inputs=[s.get("url") for s in sources] + [getattr(spec, "init_model", None)])
    root = resolve(storage or str(Path(spec.out) / "checkpoints"), spec.storage_options)
    run = root.child(run_name(spec.out))
    if workers == 0:
        if spec.gpu:
            from rayproc.runtime.resources import require_cuda

            require_cuda("cuda")
        resumed = start_run(run, spec, in_process=True)
        train_loop(dataclasses.replace(spec, checkpoints=run.url).to_dict())
        with local_checkpoint(latest_checkpoint(run)) as folder:
            return export(folder, resumed, run.url)
    with ray_session(address, cpus=cpus, workers=math.ceil(workers * spec.cpus_per_worker), dashboard=True,
                     worker_logs=True):
        check_resources(spec, workers)
        resumed = start_run(run, spec, in_process=False)
        result = fit(train_loop, dataclasses.replace(spec, ray_train=True).to_dict(), name=run_name(spec.out),
                     workers=workers, gpu=spec.gpu, resources_per_worker=worker_resources(spec), root=root,
                     max_failures=max_failures, record=record)
        with result.checkpoint.as_directory() as folder:
            return export(folder, resumed, run.url)


def export_best(spec, folder: str | None, checkpoints: str, resumed: bool, *, model, config, family: str,
                command: str | None, stage: dict, **model_info) -> TrainReport:
    """Save the best epoch (lowest validation loss) of the checkpoint in ``folder`` to ``spec.out``.

    ``model``: a freshly built network of ``config``. ``stage`` joins the provenance;
    ``model_info`` (normalisation, patch size, gap widths) the model's config
    (:func:`rayproc.models.artifact.save_model`).
    """
    import torch

    from rayproc.models.artifact import save_model
    from rayproc.runtime.epochs import STATE_FILE

    if folder is None:
        raise RayprocError(f"no checkpoint found in {checkpoints}.")
    saved = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
    history = list(saved["history"])
    sync_history(spec.out, history)
    best = min(history, key=lambda r: r["val_loss"])
    model.load_state_dict(saved["best_model"])
    parameters = {k: v for k, v in spec.to_dict().items() if k not in _NOT_PROVENANCE}
    prov = {**provenance(command or command_line(), redacted(parameters), seed=spec.seed), **stage,
            "checkpoints": checkpoints}
    metrics = {"best_epoch": best["epoch"], "epochs": len(history), "best": best, "final": history[-1]}
    save_model(spec.out, model, config, family=family, metrics=metrics, provenance=prov, **model_info)
    return TrainReport(spec.out, len(history), best["epoch"], best, resumed, checkpoints, history)


def run_name(out: str | Path) -> str:
    """Ray Train run name of a model directory: readable and unique per absolute path."""
    out = Path(out).resolve()
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", out.name)[:40] or "model"
    return f"rayproc-{slug}-{hashlib.sha1(str(out).encode()).hexdigest()[:8]}"


def claim_run(run: Location, spec, in_process: bool) -> bool:
    """Record what the run at ``run`` trains; True if it exists already with the same parameters."""
    fs, path = filesystem(run)
    record = {k: v for k, v in spec.to_dict().items() if k not in RESUMABLE_CHANGES}
    record["in_process"] = in_process
    file = f"{path.rstrip('/')}/{RUN_FILE}"
    if with_retries(lambda: fs.exists(file)):
        old = json.loads(with_retries(lambda: fs.cat_file(file)))
        if old != record:
            changed = sorted(k for k in {*old, *record} if old.get(k) != record.get(k))
            raise RayprocError(
                f"{run.url} holds a run with other parameters ({', '.join(changed)} differ); "
                "rerun with the same ones to resume, or choose another --out or --storage."
            )
        return True
    if not run.is_remote:
        fs.makedirs(path, exist_ok=True)
    with_retries(lambda: fs.pipe_file(file, json.dumps(record, indent=2).encode()))
    return False


def start_run(run: Location, spec, *, in_process: bool) -> bool:
    """Claim the run (True: resuming it); a new run starts with fresh logs."""
    resumed = claim_run(run, spec, in_process)
    if not resumed:
        for name in (METRICS_LOG, LOSS_CURVE):
            (Path(spec.out) / name).unlink(missing_ok=True)
    return resumed


def worker_resources(spec) -> dict:
    """Ray resources of one training worker."""
    return {"CPU": spec.cpus_per_worker, **({"GPU": 1} if spec.gpu else {})}


def check_resources(spec, workers: int) -> None:
    """Refuse a worker group the Ray cluster cannot hold (Ray would wait for it forever)."""
    import ray

    from rayproc.runtime.resources import require_resources

    need = worker_resources(spec)
    require_resources(cpus=need.get("CPU", 0), gpus=need.get("GPU", 0), what="a training worker")
    available = ray.cluster_resources()
    short = {k: v * workers for k, v in worker_resources(spec).items() if v * workers > available.get(k, 0)}
    if short:
        have = {k: available.get(k, 0) for k in short}
        raise RayprocError(f"{workers} training worker(s) need {short} but the Ray cluster has {have}; "
                           "use fewer --workers or another cluster.")


# ---------------------------------------------------------------------------------------------
# Sessions: how the epoch loop reaches its device, checkpoints and logs
# ---------------------------------------------------------------------------------------------


def session_for(spec: BaseTrainSpec, record: Callable[[str, dict], None], unit: str):
    """The session of a training loop: Ray Train's inside it (``spec.ray_train``), else in-process."""
    return RayTrainSession() if spec.ray_train else InProcessSession(spec, record, unit)


class InProcessSession:
    """Stands in for Ray Train when the loop runs in this process alone (``workers=0``).

    ``record(out, row)`` logs an epoch; ``unit`` names the items of the progress bar.
    """

    def __init__(self, spec, record: Callable[[str, dict], None], unit: str):
        self.spec, self.record, self.unit = spec, record, unit
        self.location = resolve(spec.checkpoints, spec.storage_options) if spec.checkpoints else None

    def device(self, gpu: bool):
        import torch

        if gpu and not torch.cuda.is_available():
            raise InputError("--gpu was given but torch sees no CUDA device.")
        return torch.device("cuda" if gpu else "cpu")

    def prepare_model(self, model):
        return model

    def prepare_data_loader(self, loader):
        return loader

    @contextlib.contextmanager
    def checkpoint(self):
        with local_checkpoint(latest_checkpoint(self.location) if self.location else None) as folder:
            yield folder

    def report(self, metrics: dict, folder: str | None) -> None:
        # the log first: an interrupt between the two leaves a row that the resumed epoch rewrites,
        # never a checkpointed epoch missing from the log
        self.record(self.spec.out, metrics)
        if folder is not None and self.location is not None:
            save_checkpoint(self.location, folder, metrics["epoch"])

    def progress(self, total: int, desc: str):
        from tqdm.auto import tqdm

        return tqdm(total=total, desc=desc, unit=self.unit, leave=False)


class RayTrainSession:
    """Inside a Ray Train worker: the only lines of the training loop that touch Ray."""

    def device(self, gpu: bool):
        import ray.train.torch

        return ray.train.torch.get_device()

    def prepare_model(self, model):
        import ray.train.torch

        return ray.train.torch.prepare_model(model)  # to the device, DDP when world > 1

    def prepare_data_loader(self, loader):
        import ray.train.torch

        return ray.train.torch.prepare_data_loader(loader)  # keeps our DistributedSampler

    @contextlib.contextmanager
    def checkpoint(self):
        import ray.train

        checkpoint = ray.train.get_checkpoint()  # latest one of this run (after a restart or a rerun)
        if checkpoint is None:
            yield None
        else:
            with checkpoint.as_directory() as folder:
                yield folder

    def report(self, metrics: dict, folder: str | None) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=None if folder is None else ray.train.Checkpoint.from_directory(folder))

    def progress(self, total: int, desc: str):
        from ray.experimental.tqdm_ray import tqdm

        return tqdm(total=total, desc=desc)


# ---------------------------------------------------------------------------------------------
# Checkpoints of in-process runs
# ---------------------------------------------------------------------------------------------


def save_checkpoint(location: Location, folder: str, epoch: int, *, keep: int = 2) -> None:
    """Copy ``folder`` to ``location/checkpoint_<epoch>`` (via a temporary name); keep the newest."""
    fs, root = filesystem(location)
    final, partial = f"{root}/checkpoint_{epoch:06d}", f"{root}/.partial_{epoch:06d}"
    with_retries(lambda: fs.put(str(folder).rstrip("/") + "/", partial + "/", recursive=True))
    if with_retries(lambda: fs.exists(final)):
        with_retries(lambda: fs.rm(final, recursive=True))
    if location.is_remote:  # no folder rename in object stores: copy file by file, then drop the partial
        fs.invalidate_cache()
        for source in with_retries(lambda: fs.find(partial)):
            target = final + source[len(partial):]
            with_retries(lambda: fs.copy(source, target))
        with_retries(lambda: fs.rm(partial, recursive=True))
    else:
        with_retries(lambda: fs.mv(partial, final, recursive=True))
    for old in _checkpoints(location)[:-keep]:
        with_retries(lambda: fs.rm(old, recursive=True))


def _checkpoints(location: Location) -> list[str]:
    fs, root = filesystem(location)
    fs.invalidate_cache()
    if not with_retries(lambda: fs.exists(root)):
        return []
    paths = with_retries(lambda: fs.ls(root, detail=False))
    return sorted(p.rstrip("/") for p in paths if _CHECKPOINT_NAME.search(p.rstrip("/")))


def latest_checkpoint(location: Location) -> Location | None:
    """The newest ``checkpoint_<epoch>`` of an in-process run, or None."""
    found = _checkpoints(location)
    if not found:
        return None
    return location.child(found[-1].rsplit("/", 1)[-1])


@contextlib.contextmanager
def local_checkpoint(location: Location | None):
    """A local folder holding the checkpoint at ``location`` (downloaded if remote), or None."""
    if location is None:
        yield None
    elif not location.is_remote:
        yield location.url
    else:
        fs, path = filesystem(location)
        with tempfile.TemporaryDirectory() as folder:
            with_retries(lambda: fs.get(path.rstrip("/") + "/", folder + "/", recursive=True))
            yield folder


# ---------------------------------------------------------------------------------------------
# Epoch logs and the Ray Train call
# ---------------------------------------------------------------------------------------------


def read_history(out: str | Path) -> list[dict]:
    """The rows of ``metrics.jsonl`` in a model directory (one per epoch)."""
    path = Path(out) / METRICS_LOG
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def sync_history(out: str | Path, rows: list[dict]) -> None:
    """Make ``metrics.jsonl`` hold exactly the checkpoint's ``rows`` (a run stopped between a
    checkpoint and its log line, e.g. under Ray Train, would otherwise miss that epoch)."""
    path = Path(out) / METRICS_LOG
    if [r.get("epoch") for r in read_history(out)] == [r["epoch"] for r in rows]:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{METRICS_LOG}.tmp")
    temporary.write_text("".join(json.dumps(r) + "\n" for r in rows))
    temporary.replace(path)


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


__all__ = [
    "LOSS_CURVE", "METRICS_LOG", "RESUMABLE_CHANGES", "RUN_FILE", "BaseTrainSpec", "InProcessSession", "RayTrainSession",
    "TrainReport", "check_resources", "claim_run", "export_best", "fit", "latest_checkpoint", "local_checkpoint",
    "plot_curves", "ray_storage", "read_history", "run_name", "run_training", "save_checkpoint", "session_for", "sync_history",
    "start_run", "worker_resources", "write_epoch",
]
