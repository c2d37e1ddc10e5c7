"""``rayproc bcdi inpaint``: fill detector gaps of BCDI volumes, chunk by chunk on Ray actors.

The output is cut into zarr chunks; :func:`rayproc.stitching.plan_chunks` gives each chunk the
portions (windows) that touch it and the region to read (the chunk plus a halo). An actor
(model loaded once) reads that region of the input, inpaints the chunk's portions exactly as
:func:`rayproc.bcdi.inpaint.inpaint_volume` would, and writes its own output chunk, so the
result is bit-identical to the single-process run and an actor holds one chunk and its halo,
whatever the volume's size. Chunks no portion touches are copied. Each chunk leaves a done
marker: a rerun of the same command recomputes only the chunks that are missing.

Inputs: anything :func:`rayproc.storage.readers.read_volume` reads (one volume), or a zarr store
with ``intensity`` (z, y, x) or (sample, z, y, x) and an optional ``mask`` (True = missing).
Everything is checked before the output store is created.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import resource
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from rayproc.bcdi.gaps import gaps_to_mask, parse_gap
from rayproc.bcdi.inpaint import (
    DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_CHUNK, DEFAULT_STRIDE, PORTION, check_known_counts, composite,
    plan_windows, predict_portions,
)
from rayproc.errors import InputError
from rayproc.options import check_counts, look_up_option
from rayproc.runtime import ray_session, run_stage
from rayproc.stitching import BLEND_MODES, ChunkTask, importance_map, plan_chunks, predict_chunk
from rayproc.storage import (
    ArraySpec, Location, command_line, create_dataset, done_tasks, filesystem, finalize, open_dataset, provenance,
    resolve, with_retries, write_task, zarr_store,
)
from rayproc.storage.outputs import claim_store
from rayproc.storage.readers import read_volume


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


# ---------------------------------------------------------------- model


def load_inpainting_model(model=None, *, device: str = "cpu"):
    """The model to inpaint with, and a JSON-able description of it (for provenance).

    Parameters
    ----------
    model : str, os.PathLike, torch.nn.Module or None
        A model directory (:func:`rayproc.models.artifact.load_model`), a network given
        programmatically (``model(x, mask)``, see :func:`rayproc.bcdi.inpaint.predict_portions`),
        or None for the model shipped with rayproc.
    device : str, optional
        Where to put the network.

    Returns
    -------
    network : torch.nn.Module
        In eval mode on ``device``.
    description : dict
        ``source`` (path or class name), ``sha256`` of the weights, ``architecture`` and
        ``patch_size`` (None when unknown).
    """
    from torch import nn

    from rayproc.models.artifact import default_model_dir, load_model

    if isinstance(model, nn.Module):
        config = getattr(model, "config", None)
        description = {
            "source": type(model).__name__,
            "sha256": _state_sha256(model),
            "architecture": config.to_dict() if hasattr(config, "to_dict") else None,
            "patch_size": None,
        }
        return model.to(device).eval(), description
    directory = Path(default_model_dir() if model is None else model)
    if model is None and not (directory / "config.json").is_file():
        raise InputError(f"no model given and the default model is not installed at {directory}; pass --model DIR.")
    network, info = load_model(directory, device=device, family="bcdi")
    description = {"source": str(directory), "sha256": info.sha256, "architecture": info.architecture,
                   "patch_size": info.patch_size}
    return network, description


def _state_sha256(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------- inputs


@dataclass(frozen=True)
class _Shared:
    """What every chunk needs, by reference: the network and the input intensity.

    The intensity is a zarr store actors read regions of, or a volume in Ray's object store.
    Jobs carry this small object (Ray refs inside a task argument) and actors fetch it once.
    """

    network_ref: Any
    location: Location | None = None
    volume_ref: Any = None

    def fetch(self):
        import ray

        intensity = _zarr_array(self.location, "intensity") if self.volume_ref is None else ray.get(self.volume_ref)
        return ray.get(self.network_ref), intensity


@dataclass
class _Input:
    """The input as the driver sees it: lazily indexable intensity and mask, coords and attrs."""

    url: str
    intensity: Any  # (z, y, x) or (sample, z, y, x), sliceable
    mask: Any  # same shape, or None
    coords: dict[str, xr.Variable]
    attrs: dict
    dims: tuple[str, ...]
    location: Location | None  # a zarr store actors read from, else None (in-memory volume)

    @property
    def samples(self) -> list[int | None]:
        return list(range(self.intensity.shape[0])) if len(self.dims) == 4 else [None]

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.intensity.shape[-3:])


def _zarr_array(location: Location, name: str):
    import zarr

    return zarr.open_array(zarr_store(location, read_only=True), path=name, mode="r")


def is_zarr_store(location: Location) -> bool:
    fs, path = filesystem(location)
    return with_retries(lambda: fs.exists(path.rstrip("/") + "/zarr.json"))


def _open_input(source: str, storage_options: dict | None) -> _Input:
    from rayproc.pipelines.ingest import volume_dataset

    location = resolve(source, storage_options)
    if not is_zarr_store(location):
        if location.is_remote:
            raise InputError(f"no zarr store at {location.url} (no zarr.json found)")
        volume, _ = read_volume(source)
        if volume.ndim != 3:
            raise InputError(f"intensity must be 3D (z, y, x); got shape {volume.shape} from {source}.")
        ds = volume_dataset(volume)
        coords = {name: c.variable for name, c in ds.coords.items()}
        return _Input(location.url, volume, None, coords, {}, ("z", "y", "x"), None)
    ds = open_dataset(location)
    if "intensity" not in ds:
        raise InputError(f"{location.url} has no 'intensity' variable; it holds {sorted(ds.data_vars)}.")
    intensity = ds["intensity"]
    if intensity.ndim not in (3, 4):
        raise InputError(
            f"intensity must be (z, y, x) or (sample, z, y, x); got dims {intensity.dims}, shape {intensity.shape}."
        )
    mask = None
    if "mask" in ds:
        mask = ds["mask"]
        if mask.shape not in (intensity.shape, intensity.shape[-3:]):
            raise InputError(f"{location.url}: mask shape {mask.shape} does not match intensity {intensity.shape}.")
    coords = {name: c.variable for name, c in ds.coords.items()}
    return _Input(location.url, intensity, mask, coords, dict(ds.attrs), tuple(intensity.dims), location)


def _read_mask_file(path: str, storage_options: dict | None) -> np.ndarray:
    """A mask from a file (npy, npz, TIFF, HDF5) or a zarr store's ``mask``; nonzero = missing."""
    location = resolve(path, storage_options)
    if is_zarr_store(location):
        ds = open_dataset(location)
        if "mask" not in ds:
            raise InputError(f"{location.url} has no 'mask' variable; it holds {sorted(ds.data_vars)}.")
        return ds["mask"].values.astype(bool)
    values, _ = read_volume(path)
    if not np.isfinite(values).all():
        raise InputError(f"mask {path} holds NaN/Inf values; expected 0 (measured) and nonzero (missing).")
    return values != 0


def _sample_region(sample: int | None, region: Sequence[slice] = ()) -> tuple:
    return (() if sample is None else (sample,)) + tuple(region)


class _MaskBuilder:
    """The mask of each sample: the store's mask, the mask file and the gaps, combined."""

    def __init__(self, data: _Input, mask_file: np.ndarray | None, gaps: Sequence[str]):
        shape = data.volume_shape
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


def _check_counts(data: _Input, sample: int | None, mask: np.ndarray, slab: int) -> None:
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
    shared: _Shared | None = None


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
        self.mask = _zarr_array(out, "mask")
        self.predict = self.intensity = None

    def __call__(self, job: _ChunkJob) -> _ChunkResult:
        if self.predict is None:
            network, self.intensity = job.shared.fetch()
            network = network.to(self.device).eval()
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


# ---------------------------------------------------------------- driver


def inpaint_bcdi(
    source: str,
    out: str,
    *,
    mask: str | None = None,
    gaps: Sequence[str] = (),
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
        Missing-voxel mask (nonzero = missing): a file or a zarr store with ``mask``.
    gaps : sequence of str
        Gaps ``AXIS:START:WIDTH`` (:func:`rayproc.bcdi.gaps.parse_gap`); all masks are combined.
    model : str, torch.nn.Module or None
        See :func:`load_inpainting_model`.
    stride, blend, batch_size
        See :func:`rayproc.bcdi.inpaint.inpaint_volume`.
    chunk : int
        Edge of the output chunks (the unit of work); an actor holds one chunk plus a halo of
        up to ``patch - 1`` voxels on each side.
    workers, gpu, cpus_per_worker
        Actors, one GPU each when ``gpu``; torch threads per actor = ``int(cpus_per_worker)``.
    address, cpus
        Ray cluster to join (or ``RAY_ADDRESS``), else an embedded Ray with ``cpus`` CPUs.
    storage_options : dict, optional
        fsspec options for ``s3://`` input, mask and output.
    overwrite : bool
        Replace an output made with other parameters.
    progress : bool
        Show a progress bar (chunks).
    command : str, optional
        Command line recorded in the provenance.
    on_start : callable, optional
        Receives the actor handles (tests).

    Returns
    -------
    InpaintReport
    """
    blend = look_up_option(blend, BLEND_MODES, name="blend")
    check_counts(stride=stride, chunk=chunk, batch_size=batch_size, workers=workers)
    location = resolve(out, storage_options)
    claim_store(location, inputs=[source, mask], overwrite=overwrite)
    gaps = [f"{a}:{s}:{w}" for a, s, w in (parse_gap(g) for g in gaps)]
    device = "cuda" if gpu else "cpu"
    network, model_description = load_inpainting_model(model, device="cpu")
    patch = int(model_description["patch_size"] or PORTION)
    data = _open_input(source, storage_options)
    mask_of = _MaskBuilder(data, _read_mask_file(mask, storage_options) if mask else None, gaps)

    jobs, windows = [], 0
    for sample in data.samples:
        sample_mask = mask_of(sample)
        _check_counts(data, sample, sample_mask, chunk)
        origins = plan_windows(sample_mask, stride=stride, patch=patch)
        windows += len(origins)
        for task in plan_chunks(data.volume_shape, chunk, origins, patch):
            jobs.append(_ChunkJob(task_name(sample, task.index), sample, task, origins[list(task.windows)]))

    parameters = {"input": data.url, "mask": resolve(mask, storage_options).url if mask else None, "gaps": gaps,
                  "model": model_description, "stride": int(stride), "blend": blend, "patch": patch,
                  "chunk": int(chunk), "batch_size": int(batch_size)}
    all_tasks = [task_name(s) for s in data.samples] + [job.name for job in jobs]
    with ray_session(address, cpus=cpus, workers=workers, actor_cpus=cpus_per_worker, actor_gpus=1.0 if gpu else 0.0):
        status = create_dataset(
            location, _output_arrays(data, chunk), coords=data.coords,
            attrs=_output_attrs(data.attrs),
            provenance_attrs=provenance(command or command_line(), parameters), overwrite=overwrite,
            inputs=[source, mask],
        )
        if status == "complete":
            return InpaintReport(location.url, len(data.samples), len(jobs), 0, windows, status)
        finished = done_tasks(location)
        for sample in data.samples:
            if task_name(sample) not in finished:
                region = _sample_region(sample, (slice(None),) * 3)
                write_task(location, task_name(sample), {"mask": (region, mask_of(sample))})
        todo = [job for job in jobs if job.name not in finished]
        import ray

        volume_ref = None if data.location else ray.put(data.intensity)
        shared = _Shared(ray.put(network), data.location, volume_ref)
        factory = functools.partial(_ChunkInpainter, location, device=device, threads=max(1, int(cpus_per_worker)),
                                    blend=blend, batch_size=int(batch_size), patch=patch)
        results = list(run_stage(factory, [dataclasses.replace(job, shared=shared) for job in todo], workers=workers,
                                 cpus_per_worker=cpus_per_worker, gpus_per_worker=1.0 if gpu else 0.0,
                                 desc="inpainting chunks", progress=progress, on_start=on_start,
                                 done_before=len(jobs) - len(todo), total=len(jobs)))
    finalize(location, all_tasks)
    peak = max((r.peak_rss_mb for r in results), default=None)
    return InpaintReport(location.url, len(data.samples), len(jobs), len(results), windows, status, peak)


def _output_attrs(input_attrs: dict) -> dict:
    """The input's attrs, its provenance kept as ``input_provenance`` (the output gets its own)."""
    attrs = {k: v for k, v in input_attrs.items() if k not in ("provenance", "rayproc_status")}
    if "provenance" in input_attrs:
        attrs["input_provenance"] = input_attrs["provenance"]
    return {**attrs, "title": "BCDI intensity with inpainted detector gaps"}


def _output_arrays(data: _Input, chunk: int) -> dict[str, ArraySpec]:
    shape = tuple(int(n) for n in data.intensity.shape)
    chunks = tuple(1 if (len(shape) == 4 and axis == 0) else min(chunk, n) for axis, n in enumerate(shape))
    units = dict(getattr(data.intensity, "attrs", {})).get("units", "photons")
    return {
        "intensity": ArraySpec(data.dims, shape, "float32", chunks=chunks,
                               attrs={"units": units, "long_name": "intensity, detector gaps inpainted"}),
        "mask": ArraySpec(data.dims, shape, "bool", chunks=chunks, fill_value=False,
                          attrs={"long_name": "missing voxels (True: inpainted)"}),
        "uncertainty": ArraySpec(data.dims, shape, "float32", chunks=chunks,
                                 attrs={"units": units, "long_name": "spread of overlapping portion predictions"}),
    }


__all__ = ["DEFAULT_CHUNK", "InpaintReport", "inpaint_bcdi", "is_zarr_store", "load_inpainting_model", "task_name"]
