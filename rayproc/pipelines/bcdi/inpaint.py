"""``rayproc bcdi inpaint``: fill detector gaps of BCDI volumes, chunk by chunk on Ray actors.

The output is cut into zarr chunks; :func:`rayproc.stitching.plan_chunks` gives each chunk the
portions (windows) that touch it and the region to read (the chunk plus a halo). An actor
(model loaded once) reads that region of the input, inpaints the chunk's portions exactly as
:func:`rayproc.bcdi.inpaint.inpaint_volume` would, and writes its own output chunk, so the
result is bit-identical to the single-process run and an actor holds one chunk and its halo,
whatever the volume's size. Chunks no portion touches are copied. Each chunk leaves a done
marker: a rerun of the same command recomputes only the chunks that are missing.

Inputs (:func:`rayproc.storage.inputs.open_input`): anything
:func:`rayproc.storage.readers.read_volume` reads (one volume), or a zarr store with
``intensity`` (z, y, x) or (sample, z, y, x) and an optional ``mask`` (True = missing).
Everything is checked before the output store is created; the store, the actors and resuming are
:class:`rayproc.pipelines._stage.ResumableStage`'s (``workers=0``: the same steps in this
process, without Ray).

``adapt=True`` first fine-tunes the model on the input itself
(:func:`rayproc.pipelines.bcdi.train.finetune_bcdi`: portions beside its gaps cut by its own
gaps, held-out selection that keeps the base weights unless an epoch beats them) into a model
directory beside the output (:func:`adapted_model_dir`, default ``OUT.adapted-model``; its
checkpoints inside it, so a rerun after an interruption resumes), then inpaints with that
model; the store's ``attrs["adaptation"]`` says what was kept.
"""

from __future__ import annotations

import dataclasses
import functools
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rayproc.bcdi.gaps import frame_mask_volume, gaps_to_mask, parse_gap
from rayproc.bcdi.inpaint import (
    DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_CHUNK, DEFAULT_STRIDE, PORTION, check_known_counts, composite,
    plan_windows, predict_portions,
)
from rayproc.errors import InputError, Interrupted
from rayproc.models.artifact import resolve_model
from rayproc.options import check_counts, look_up_option
from rayproc.pipelines._stage import Actors, ResumableStage, SharedObjects, StageResult, output_attrs
from rayproc.stitching import BLEND_MODES, ChunkTask, importance_map, plan_chunks, predict_chunk
from rayproc.storage import (
    ArraySpec, Location, command_line, create_dataset, done_tasks, finalize, provenance, resolve, write_task,
)
from rayproc.storage.inputs import PIXEL_COORDS, InputArray, open_array, open_input
from rayproc.storage.outputs import check_apart, claim_folder
from rayproc.storage.model_dirs import local_model_dir

# Fine-tuning on the input (--adapt): epochs, portions per epoch (the learning rate: the base architecture's,
# rayproc.pipelines.bcdi.train.DEFAULT_LR).
ADAPT_EPOCHS, ADAPT_PORTIONS = 3, 512
ADAPTED_SUFFIX = ".adapted-model"


@dataclass(frozen=True)
class InpaintReport:
    """What a run did: ``computed`` of ``tasks`` chunks now (0 when the store was complete)."""

    url: str
    samples: int
    tasks: int
    computed: int
    windows: int
    status: str
    peak_worker_rss_mb: float | None = None
    adaptation: dict | None = None


# ---------------------------------------------------------------- inputs

# Index coordinates of a volume read from a file (as ``rayproc ingest`` writes them).
VOLUME_COORDS = {"z": {"units": "frame", "long_name": "frame (rocking step)"}, **PIXEL_COORDS}


@dataclass(frozen=True)
class _Volumes:
    """The input as the driver sees it: the intensity (lazy for a store) and its stored mask."""

    intensity: InputArray  # (z, y, x) or (sample, z, y, x)
    mask: Any  # a store's ``mask`` (same shape, or one volume's), or None

    @property
    def samples(self) -> list[int | None]:
        return list(range(self.intensity.shape[0])) if self.intensity.ndim == 4 else [None]

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return self.intensity.shape[-3:]


def _open_volumes(source: str, storage_options: dict | None) -> _Volumes:
    intensity = open_input(source, ("intensity",), storage_options=storage_options, file_dims=tuple(VOLUME_COORDS),
                           file_coords=VOLUME_COORDS)
    if intensity.location is None and intensity.ndim != 3:
        raise InputError(f"intensity must be 3D (z, y, x); got shape {intensity.shape} from {source}.")
    if intensity.ndim not in (3, 4):
        raise InputError(f"intensity must be (z, y, x) or (sample, z, y, x); got dims {intensity.dims}, "
                         f"shape {intensity.shape}.")
    mask = intensity.variable("mask")
    if mask is not None and mask.shape not in (intensity.shape, intensity.shape[-3:]):
        raise InputError(f"{intensity.url}: mask shape {mask.shape} does not match intensity {intensity.shape}.")
    return _Volumes(intensity, mask)


def _read_mask_file(path: str, storage_options: dict | None) -> np.ndarray:
    """A mask from a file (npy, npz, TIFF, HDF5) or a zarr store's ``mask``; nonzero = missing."""
    values = open_input(path, ("mask",), storage_options=storage_options).values(dtype=None)
    if not np.isfinite(values).all():
        raise InputError(f"mask {path} holds NaN/Inf values; expected 0 (measured) and nonzero (missing).")
    return values != 0


def target_mask(source: str, *, mask: str | None = None, gaps: Sequence[str] = (),
                mask_offset: Sequence[int] | None = None, sample: int | None = None,
                storage_options: dict | None = None) -> np.ndarray:
    """The voxels ``rayproc bcdi inpaint`` fills in one volume of ``source`` (True = missing).

    The store's own ``mask``, the ``mask`` file (a 2D detector mask placed at ``mask_offset``)
    and the ``gaps``, combined, checked as inpainting checks them; fine-tuning on the target
    (:func:`rayproc.pipelines.bcdi.train.finetune_bcdi`) keeps its portions off them.
    """
    data = _open_volumes(source, storage_options)
    gaps = [f"{a}:{s}:{w}" for a, s, w in (parse_gap(g) for g in gaps)]
    builder = _MaskBuilder(data, _read_mask_file(mask, storage_options) if mask else None, gaps, mask_offset)
    return builder(sample if data.intensity.ndim == 4 else None)


def adapted_model_dir(out: str, adapt_out: str | None = None, *, storage_options: dict | None = None) -> str:
    """Where ``--adapt`` writes the model fine-tuned on the input: ``adapt_out``, or beside ``out``.

    The default is ``OUT.adapted-model`` next to a local output store (an ``s3://`` output
    needs ``adapt_out``, a local folder); it never lies inside the output store.
    """
    location = resolve(out, storage_options)
    if adapt_out is None:
        if location.is_remote:
            raise InputError(f"--adapt with the output {location.url} needs --adapt-out DIR, a local folder for the "
                             "adapted model.")
        adapt_out = location.url.rstrip("/") + ADAPTED_SUFFIX
    folder = resolve(adapt_out)
    if folder.is_remote:
        raise InputError(f"--adapt-out must be a local folder; got {folder.url}.")
    check_apart(folder, [location])  # never the output store itself, nor inside it
    return folder.url


def _sample_region(sample: int | None, region: Sequence[slice] = ()) -> tuple:
    return (() if sample is None else (sample,)) + tuple(region)


class _MaskBuilder:
    """The mask of each sample: the store's mask, the mask file and the gaps, combined."""

    def __init__(self, data: _Volumes, mask_file: np.ndarray | None, gaps: Sequence[str],
                 mask_offset: Sequence[int] | None = None):
        shape = data.volume_shape
        if mask_file is not None and mask_file.ndim == 2:  # a detector mask: the same for every frame
            if mask_offset is None and mask_file.shape != shape[1:]:
                raise InputError(f"the {mask_file.shape[0]} x {mask_file.shape[1]} detector mask is not the size of "
                                 f"the scan's frames {shape[1:]}: give --mask-offset ROW,COL (the detector pixel of "
                                 "the scan's first row and column).")
            mask_file = frame_mask_volume(mask_file, shape, offset=mask_offset or (0, 0))
        elif mask_offset is not None:
            raise InputError("--mask-offset applies to a 2D detector mask only.")
        if mask_file is not None and mask_file.shape not in (shape, tuple(data.intensity.shape)):
            raise InputError(
                f"mask shape {mask_file.shape} does not match the intensity shape {tuple(data.intensity.shape)}."
            )
        if data.mask is None and mask_file is None and not gaps:
            raise InputError("nothing to inpaint: give --gap or --mask (or an input store with a 'mask').")
        self.data, self.mask_file = data, mask_file
        self.gap_mask = gaps_to_mask(gaps, shape) if gaps else None

    def __call__(self, sample: int | None) -> np.ndarray:
        mask = np.zeros(self.data.volume_shape, bool)
        for part in (self.data.mask, self.mask_file):
            if part is not None:
                mask |= np.asarray(part[_sample_region(sample)] if part.ndim == 4 else part, dtype=bool)
        if self.gap_mask is not None:
            mask |= self.gap_mask
        return mask


def _check_counts(data: _Volumes, sample: int | None, mask: np.ndarray, slab: int) -> None:
    """Check the measured voxels of one volume, reading it slab by slab along z."""
    for z in range(0, mask.shape[0], slab):
        region = (slice(z, z + slab),)
        values = np.asarray(data.intensity[_sample_region(sample, region)])
        check_known_counts(values, mask[region])


# ---------------------------------------------------------------- per-actor stage


def task_name(sample: int | None, index: Sequence[int] | None = None) -> str:
    """Done-marker name of a chunk (``index``) or of a sample's mask (``index`` None)."""
    prefix = "" if sample is None else f"sample-{sample:07d}-"
    return prefix + ("mask" if index is None else "chunk-" + "-".join(str(i) for i in index))


@dataclass(frozen=True)
class _ChunkJob:
    """One chunk: its task (global coordinates) and the origins of the windows it needs."""

    name: str
    sample: int | None
    task: ChunkTask
    origins: np.ndarray  # (k, 3), global, ascending window order
    shared: SharedObjects | None = None


@dataclass(frozen=True)
class _ChunkResult:
    name: str
    windows: int
    peak_rss_mb: float


class _ChunkInpainter:
    """Per-actor stage: fetch the network and the input once (first chunk); inpaint and write chunks."""

    def __init__(self, out: Location, *, device: str, threads: int, blend: str, batch_size: int, patch: int):
        import torch

        torch.set_num_threads(threads)
        self.out, self.device, self.batch_size, self.patch = out, device, batch_size, patch
        self.weights = importance_map((patch,) * 3, blend)
        self.mask = open_array(out, "mask")
        self.predict = self.intensity = None

    def __call__(self, job: _ChunkJob) -> _ChunkResult:
        if self.predict is None:
            network, self.intensity = job.shared.fetch(self.device)
            self.predict = functools.partial(predict_portions, network, batch_size=self.batch_size)
        task = job.task
        read = _sample_region(job.sample, task.read_region)
        image = np.asarray(self.intensity[read], dtype=np.float32)
        mask = np.asarray(self.mask[read], dtype=bool)
        start = np.array([s.start for s in task.read_region])
        local = ChunkTask(task.index, _shift(task.core, start), tuple(range(len(job.origins))),
                          _shift(task.read_region, start))
        if task.passthrough:
            intensity, uncertainty = image[local.core], np.zeros(image[local.core].shape, np.float32)
        else:
            mean, spread = predict_chunk(local, image, job.origins - start, self.predict, patch=self.patch,
                                         weights=self.weights, batch_size=self.batch_size, extras=[mask])
            intensity, uncertainty = composite(image[local.core], mask[local.core], mean, spread)
        core = _sample_region(job.sample, task.core)
        write_task(self.out, job.name, {"intensity": (core, intensity), "uncertainty": (core, uncertainty)})
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return _ChunkResult(job.name, len(job.origins), peak)


def _shift(region: Sequence[slice], start: np.ndarray) -> tuple[slice, ...]:
    return tuple(slice(int(s.start - o), int(s.stop - o)) for s, o in zip(region, start))


@dataclass(frozen=True)
class _InProcessShared:
    """What :class:`SharedObjects` gives an actor, for chunks inpainted in this process (``workers=0``)."""

    network: Any
    data: InputArray

    def fetch(self, device: str = "cpu"):
        array = open_array(self.data.location, self.data.name) if self.data.location is not None else \
            np.asarray(self.data.data)
        return self.network.to(device).eval(), array


def _run_in_process(stage: ResumableStage, arrays: dict, jobs: list, factory: Callable, *, network, data: InputArray,
                    parameters: dict, coords, attrs: dict, command: str | None, progress: bool,
                    prepare: Callable[[set[str]], None], driver_tasks: Sequence[str]) -> StageResult:
    """:meth:`ResumableStage.run` without Ray: the same store, markers and resuming, one chunk at a time here."""
    import torch
    from tqdm.auto import tqdm

    status = create_dataset(stage.location, arrays, coords=coords, attrs=attrs,
                            provenance_attrs=provenance(command or command_line(), parameters),
                            overwrite=stage.overwrite, inputs=list(stage.inputs))
    if status == "complete":
        return StageResult(status, [])
    finished = done_tasks(stage.location)
    prepare(finished)
    todo = [job for job in jobs if job.name not in finished]
    shared, results, threads = _InProcessShared(network, data), [], torch.get_num_threads()
    try:
        worker = factory()  # sets the actors' torch thread count, so chunks match theirs bit for bit
        for job in tqdm(todo, desc="inpainting chunks", unit="item", disable=not progress, mininterval=1.0):
            results.append(worker(dataclasses.replace(job, shared=shared)))
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(len(jobs) - len(todo) + len(results), len(jobs)) from None
    finally:
        torch.set_num_threads(threads)
    finalize(stage.location, [*driver_tasks, *(job.name for job in jobs)])
    return StageResult(status, results)


# ---------------------------------------------------------------- driver


def inpaint_bcdi(
    source: str,
    out: str,
    *,
    mask: str | None = None,
    gaps: Sequence[str] = (),
    mask_offset: Sequence[int] | None = None,
    model=None,
    stride: int = DEFAULT_STRIDE,
    blend: str = DEFAULT_BLEND,
    chunk: int = DEFAULT_CHUNK,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = 1,
    gpu: bool = False,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    on_start: Callable[[list], None] | None = None,
    adapt: bool = False,
    adapt_epochs: int = ADAPT_EPOCHS,
    adapt_portions: int = ADAPT_PORTIONS,
    adapt_lr: float | None = None,
    adapt_out: str | None = None,
) -> InpaintReport:
    """Inpaint the gaps of the volume(s) ``source`` into the zarr store ``out``.

    Parameters
    ----------
    source : str
        A file :func:`~rayproc.storage.readers.read_volume` reads, or a zarr store (path or
        ``s3://``) with ``intensity`` (z, y, x) or (sample, z, y, x) and optionally ``mask``.
    out : str
        Output zarr store: ``intensity`` (inpainted; measured voxels bit-identical),
        ``mask`` and ``uncertainty``, with the input's dims and coords.
    mask : str, optional
        Missing-voxel mask (nonzero = missing): a file or a zarr store with ``mask``, either of
        the volume's shape or a 2D detector mask (H, W) applied to every frame
        (:func:`rayproc.bcdi.gaps.frame_mask_volume`).
    mask_offset : (int, int), optional
        Detector pixel ``(row, column)`` of the scan's first ``y`` and ``x``, for a 2D detector
        mask larger than the scan's frames (a scan cropped from the detector).
    gaps : sequence of str
        Gaps ``AXIS:START:WIDTH`` (:func:`rayproc.bcdi.gaps.parse_gap`); all masks are combined.
    model : str, torch.nn.Module or None
        A model directory, None for the shipped ``bcdi-default``, or a network ``model(x, mask)``
        (see :func:`rayproc.models.artifact.resolve_model`).
    stride, blend, batch_size
        See :func:`rayproc.bcdi.inpaint.inpaint_volume`.
    chunk : int
        Edge of the output chunks (the unit of work); an actor holds one chunk plus a halo of
        up to ``patch - 1`` voxels on each side.
    workers, gpu, cpus_per_worker
        Actors, one GPU each when ``gpu``; torch threads per actor = ``int(cpus_per_worker)``.
        ``workers=0`` runs everything in this process without Ray (the same output, bit for
        bit). With ``adapt``, also the Ray Train workers of the adaptation.
    address, cpus
        Ray cluster to join (or ``RAY_ADDRESS``), else an embedded Ray with ``cpus`` CPUs.
    storage_options : dict, optional
        fsspec options for ``s3://`` input, mask and output.
    overwrite : bool
        Replace an output store rayproc made earlier (never any other folder or file).
    progress : bool
        Show a progress bar (chunks).
    command : str, optional
        Command line recorded in the provenance.
    on_start : callable, optional
        Receives the actor handles (tests).
    adapt : bool
        Fine-tune the model on ``source`` first (one volume), then inpaint with it (see the
        module docstring); ``overwrite`` restarts the adaptation too.
    adapt_epochs, adapt_portions, adapt_lr
        Epochs, training portions per epoch and Adam learning rate of the adaptation (default:
        the base architecture's training rate).
    adapt_out : str, optional
        Model directory of the adaptation (default: :func:`adapted_model_dir`).

    Returns
    -------
    InpaintReport
    """
    blend = look_up_option(blend, BLEND_MODES, name="blend")
    check_counts(stride=stride, chunk=chunk, batch_size=batch_size)
    if workers < 0:
        raise InputError(f"--workers must be >= 0 (0: in this process); got {workers}.")
    adapt_dir = None
    if adapt:
        check_counts(adapt_epochs=adapt_epochs, adapt_portions=adapt_portions)
        if adapt_lr is not None and not adapt_lr > 0:
            raise InputError(f"--adapt-lr must be > 0; got {adapt_lr}.")
        adapt_dir = adapted_model_dir(out, adapt_out, storage_options=storage_options)
    stage = ResumableStage.claim(out, [source, mask], storage_options=storage_options, overwrite=overwrite)
    gaps = [f"{a}:{s}:{w}" for a, s, w in (parse_gap(g) for g in gaps)]
    model = local_model_dir(model, storage_options)  # an s3:// model directory: a local copy
    network, resolved = resolve_model(model, "bcdi", device="cpu")
    if adapt:
        if resolved.info is None:
            raise InputError("--adapt needs a model directory (or the shipped model), not a network object.")
        claim_folder(adapt_dir, inputs=[source, mask, resolved.source], create=False)
    patch = int(resolved.patch_size or PORTION)
    data = _open_volumes(source, storage_options)
    mask_of = _MaskBuilder(data, _read_mask_file(mask, storage_options) if mask else None, gaps, mask_offset)

    jobs, windows = [], 0
    for sample in data.samples:
        sample_mask = mask_of(sample)
        _check_counts(data, sample, sample_mask, chunk)
        origins = plan_windows(sample_mask, stride=stride, patch=patch)
        windows += len(origins)
        for task in plan_chunks(data.volume_shape, chunk, origins, patch):
            jobs.append(_ChunkJob(task_name(sample, task.index), sample, task, origins[list(task.windows)]))

    adaptation = None
    if adapt:
        if len(data.samples) != 1:
            raise InputError(f"--adapt fine-tunes on one volume; {data.intensity.url} holds {len(data.samples)}.")
        network, resolved, adaptation = _adapt(
            resolved, source, adapt_dir, mask=mask, gaps=gaps, mask_offset=mask_offset, epochs=adapt_epochs,
            portions=adapt_portions, lr=adapt_lr, stride=stride, workers=workers, gpu=gpu,
            cpus_per_worker=cpus_per_worker, address=address, cpus=cpus, storage_options=storage_options,
            progress=progress, command=command, restart=overwrite)

    def write_masks(finished: set[str]) -> None:
        for sample in data.samples:
            if task_name(sample) not in finished:
                region = _sample_region(sample, (slice(None),) * 3)
                write_task(stage.location, task_name(sample), {"mask": (region, mask_of(sample))})

    parameters = {"input": data.intensity.url, "mask": resolve(mask, storage_options).url if mask else None,
                  "gaps": gaps, "model": resolved.describe(), "stride": int(stride), "blend": blend, "patch": patch,
                  "chunk": int(chunk), "batch_size": int(batch_size)}
    if mask_offset is not None:  # only then, so that earlier outputs still resume
        parameters["mask_offset"] = [int(o) for o in mask_offset]
    attrs = output_attrs(data.intensity.attrs, "BCDI intensity with inpainted detector gaps")
    if adaptation is not None:  # only then, so that earlier outputs still resume
        parameters["adapt"] = {k: adaptation[k] for k in ("base_model", "epochs", "portions_per_epoch", "lr")}
        attrs["adaptation"] = adaptation
    actors = Actors(workers=max(1, workers), gpu=gpu, cpus_per_worker=cpus_per_worker, address=address, cpus=cpus)
    factory = functools.partial(_ChunkInpainter, stage.location, device=actors.device, threads=actors.threads,
                                blend=blend, batch_size=int(batch_size), patch=patch)
    if workers == 0:
        if gpu:
            from rayproc.runtime.resources import require_cuda

            require_cuda("cuda")
        run = _run_in_process(stage, _output_arrays(data.intensity, chunk), jobs, factory, network=network,
                              data=data.intensity, parameters=parameters, coords=data.intensity.coords, attrs=attrs,
                              command=command, progress=progress, prepare=write_masks,
                              driver_tasks=[task_name(s) for s in data.samples])
        return InpaintReport(stage.location.url, len(data.samples), len(jobs), run.computed, windows, run.status,
                             None, adaptation)
    run = stage.run(
        _output_arrays(data.intensity, chunk), jobs, factory, network=network, data=data.intensity, actors=actors,
        parameters=parameters, coords=data.intensity.coords, attrs=attrs, command=command,
        desc="inpainting chunks", progress=progress, on_start=on_start, prepare=write_masks,
        driver_tasks=[task_name(s) for s in data.samples])
    peak = max((r.peak_rss_mb for r in run.results), default=None)
    return InpaintReport(stage.location.url, len(data.samples), len(jobs), run.computed, windows, run.status, peak,
                         adaptation)


def _adapt(base, source: str, folder: str, *, portions: int, **options):
    """Fine-tune ``base`` (a :class:`~rayproc.models.artifact.ResolvedModel`) on ``source`` into
    ``folder``; the adapted network, its description and what the output's attrs record."""
    from rayproc.pipelines.bcdi.train import finetune_bcdi

    finetune_bcdi(base.source, source, folder, portions_per_volume=portions, **options)
    network, resolved = resolve_model(folder, "bcdi", device="cpu")
    metrics, parameters = resolved.info.metrics, resolved.info.provenance["parameters"]
    before, after = metrics["base"], metrics["best"]
    adaptation = {
        "model_dir": str(Path(folder)),
        "model_sha256": resolved.sha256,
        "base_model": {"source": str(base.source), "sha256": base.sha256},
        "epochs": int(options["epochs"]),
        "portions_per_epoch": int(portions),
        "lr": float(parameters["lr"]),
        "best_epoch": int(metrics["best_epoch"]) + 1,  # 0: the base model
        "kept": metrics["kept"],
        "adapted": metrics["best_epoch"] >= 0,
        "heldout_portions": int(parameters["val_portions_per_volume"]),
        "heldout_pcc_before": before.get("val_pcc_pooled"),
        "heldout_pcc_after": after.get("val_pcc_pooled"),
        "heldout_pcc_per_portion_before": before.get("val_pcc"),
        "heldout_pcc_per_portion_after": after.get("val_pcc"),
        "heldout_loss_before": before["val_loss"],
        "heldout_loss_after": after["val_loss"],
    }
    return network, resolved, adaptation


def _output_arrays(intensity: InputArray, chunk: int) -> dict[str, ArraySpec]:
    shape, dims = intensity.shape, intensity.dims
    chunks = tuple(1 if (len(shape) == 4 and axis == 0) else min(chunk, n) for axis, n in enumerate(shape))
    units = intensity.variable_attrs.get("units", "photons")
    return {
        "intensity": ArraySpec(dims, shape, "float32", chunks=chunks,
                               attrs={"units": units, "long_name": "intensity, detector gaps inpainted"}),
        "mask": ArraySpec(dims, shape, "bool", chunks=chunks, fill_value=False,
                          attrs={"long_name": "missing voxels (True: inpainted)"}),
        "uncertainty": ArraySpec(dims, shape, "float32", chunks=chunks,
                                 attrs={"units": units, "long_name": "spread of overlapping portion predictions"}),
    }


__all__ = ["ADAPTED_SUFFIX", "ADAPT_EPOCHS", "ADAPT_PORTIONS", "DEFAULT_CHUNK", "InpaintReport",
           "VOLUME_COORDS", "adapted_model_dir", "inpaint_bcdi", "target_mask", "task_name"]
