"""``rayproc labdct denoise``: the spot network over a stack of frames, on a pool of Ray actors.

The stack is cut along the frame axis into slabs of whole frames (the unit of work). An actor
(network fetched once from the object store) reads its slab, runs
:func:`rayproc.labdct.denoise.denoise_frames` on it and writes the slab of ``denoised``.
Frames never share tiles and each tile is predicted in a fixed-shape batch, so the result is
bit-identical to ``denoise_frames`` of the whole stack in one process (for the same device
and torch thread count); whole frames also keep the per-frame normalisation (the frame's
median) exact without a halo. An actor holds one slab: ``frames_per_task`` frames in and out.
Each slab leaves a done marker: a rerun of the same command computes only the missing ones.

Inputs: a zarr store with frames (omega, y, x) in the first of
:data:`rayproc.pipelines.labdct.background.FRAME_VARIABLES` it holds (``projection`` of
``rayproc labdct simulate``, ``input`` of ``labdct synth``, ``intensity`` of ``rayproc
ingest``), local or ``s3://``, or anything :func:`rayproc.storage.readers.read_volume` reads
(a TIFF folder in name order, a stack file). Everything is checked before the output store is
created.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.labdct.denoise import (
    DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_OVERLAP, DEFAULT_TILE, denoise_frames, normalise_frames, plan_tiles,
)
from rayproc.options import check_counts, look_up_option
from rayproc.pipelines.bcdi.inpaint import _output_attrs, _zarr_array, is_zarr_store
from rayproc.pipelines.labdct.background import FRAME_VARIABLES, read_frames
from rayproc.pipelines.labdct.segment import load_spot_network
from rayproc.runtime import ray_session, run_stage
from rayproc.storage.outputs import claim_store
from rayproc.stitching import BLEND_MODES
from rayproc.storage import (
    ArraySpec, Location, command_line, create_dataset, done_tasks, finalize, open_dataset, provenance, resolve,
    write_task,
)

DEFAULT_FRAMES_PER_TASK = 4


@dataclass(frozen=True)
class DenoiseReport:
    """What a run did: ``computed`` of ``tasks`` slabs now (0 when the store was complete)."""

    url: str
    frames: int
    tasks: int
    computed: int
    status: str


@dataclass(frozen=True)
class _Shared:
    """What every slab needs, by reference: the network and the frames (a zarr variable that
    actors read slabs of, or a stack in Ray's object store)."""

    network_ref: Any
    location: Location | None = None
    variable: str | None = None
    stack_ref: Any = None

    def fetch(self):
        import ray

        frames = _zarr_array(self.location, self.variable) if self.stack_ref is None else ray.get(self.stack_ref)
        return ray.get(self.network_ref), frames


@dataclass(frozen=True)
class _SlabJob:
    name: str
    start: int
    stop: int
    shared: _Shared | None = None


class _SlabDenoiser:
    """Per-actor stage: fetch the network and the frames once (first slab); denoise and write slabs."""

    def __init__(self, out: Location, *, device: str, threads: int, options: dict):
        import torch

        torch.set_num_threads(threads)
        self.out, self.device, self.options = out, device, options
        self.network = self.frames = None

    def __call__(self, job: _SlabJob) -> str:
        if self.network is None:
            network, self.frames = job.shared.fetch()
            self.network = network.to(self.device).eval()
        slab = np.asarray(self.frames[job.start:job.stop], dtype=np.float32)
        denoised = denoise_frames(slab, self.network, **self.options)
        write_task(self.out, job.name, {"denoised": ((slice(job.start, job.stop),), denoised)})
        return job.name


def task_name(start: int) -> str:
    """Done-marker name of the slab starting at frame ``start``."""
    return f"frames-{start:06d}"


@dataclass(frozen=True)
class _Input:
    """The frames as the driver sees them: sliceable (lazy for a zarr store), dims, coords, attrs."""

    url: str
    frames: Any  # (N, H, W)
    dims: tuple[str, ...]
    coords: dict
    attrs: dict
    location: Location | None = None  # a zarr store actors read ``variable`` from, else None (in memory)
    variable: str | None = None


def _open_input(source: str, storage_options: dict | None) -> _Input:
    location = resolve(source, storage_options)
    if is_zarr_store(location):
        ds = open_dataset(location)
        variable = next((v for v in FRAME_VARIABLES if v in ds), None)
        if variable is None:
            raise InputError(f"{location.url} holds no frames: expected one of {FRAME_VARIABLES}; "
                             f"it holds {sorted(ds.data_vars)}.")
        frames = ds[variable]
        if frames.ndim != 3:
            raise InputError(f"{location.url}: {variable} must be (omega, y, x); got dims {frames.dims}, "
                             f"shape {frames.shape}.")
        coords = {d: ds[d].variable for d in frames.dims if d in ds.coords}
        return _Input(location.url, frames, tuple(frames.dims), coords, dict(ds.attrs), location, variable)
    stack, info = read_frames(source, storage_options=storage_options)
    count, height, width = stack.shape
    coords = {
        "omega": xr.Variable("omega", np.arange(count), {"units": "frame", "long_name": "frame (file order)"}),
        "y": xr.Variable("y", np.arange(height), {"units": "pixel", "long_name": "detector row"}),
        "x": xr.Variable("x", np.arange(width), {"units": "pixel", "long_name": "detector column"}),
    }
    return _Input(location.url, stack, ("omega", "y", "x"), coords, {"source_format": info.get("format")})


def denoise_labdct(
    source: str,
    out: str,
    *,
    model=None,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    blend: str = DEFAULT_BLEND,
    batch_size: int = DEFAULT_BATCH_SIZE,
    frames_per_task: int = DEFAULT_FRAMES_PER_TASK,
    workers: int = 1,
    gpu: bool = False,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    on_start=None,
) -> DenoiseReport:
    """Denoise the frames of ``source`` into the zarr store ``out`` (variable ``denoised``).

    Parameters
    ----------
    source : str
        Frames (omega, y, x): a zarr store (path or ``s3://``) or a TIFF folder / stack file.
    out : str
        Output zarr store: ``denoised`` float32 (spot probability in [0, 1]) with the input's
        dims and coords, and provenance.
    model : str, torch.nn.Module or None
        Model directory (default: the shipped ``labdct-default``) or a network; see
        :func:`rayproc.pipelines.labdct.segment.load_spot_network`.
    tile, overlap, blend, batch_size
        See :func:`rayproc.labdct.denoise.denoise_frames`.
    frames_per_task : int
        Frames per slab (the unit of work and of resuming).
    workers, gpu, cpus_per_worker
        Actors, one GPU each when ``gpu``; torch threads per actor = ``int(cpus_per_worker)``.
    address, cpus
        Ray cluster to join (or ``RAY_ADDRESS``), else an embedded Ray with ``cpus`` CPUs.
    storage_options : dict, optional
        fsspec options for ``s3://`` input and output.
    overwrite : bool
        Replace an output made with other parameters.
    progress : bool
        Show a progress bar (slabs).
    command : str, optional
        Command line recorded in the provenance.
    on_start : callable, optional
        Receives the actor handles (tests).

    Returns
    -------
    DenoiseReport
    """
    blend = look_up_option(blend, BLEND_MODES, name="blend")
    check_counts(batch_size=batch_size, frames_per_task=frames_per_task, workers=workers)
    location = resolve(out, storage_options)
    claim_store(location, inputs=[source], overwrite=overwrite)
    network, scale, description = load_spot_network(model, device="cpu")
    data = _open_input(source, storage_options)
    count, height, width = (int(n) for n in data.frames.shape)
    plan_tiles((height, width), tile=tile, overlap=overlap, divisor=getattr(getattr(network, "config", None), "divisor", 32))
    starts = range(0, count, int(frames_per_task))
    for start in starts:  # NaN/Inf and frames without a background, before any output exists
        normalise_frames(np.asarray(data.frames[start:start + int(frames_per_task)]), scale=scale)
    options = {"scale": scale, "tile": int(tile), "overlap": int(overlap), "blend": blend, "batch_size": int(batch_size)}

    parameters = {"input": data.url, "variable": data.variable, "model": description, **options,
                  "frames_per_task": int(frames_per_task)}
    jobs = [_SlabJob(task_name(s), s, min(s + int(frames_per_task), count)) for s in starts]
    with ray_session(address, cpus=cpus, workers=workers, actor_cpus=cpus_per_worker, actor_gpus=1.0 if gpu else 0.0):
        status = create_dataset(
            location,
            {"denoised": ArraySpec(data.dims, (count, height, width), "float32", chunks=(1, height, width),
                                   attrs={"long_name": "spot probability of the denoising network", "units": "1"})},
            coords=data.coords,
            attrs={**_output_attrs(data.attrs), "title": "LabDCT frames denoised by the spot network"},
            provenance_attrs=provenance(command or command_line(), parameters), overwrite=overwrite,
            inputs=[source],
        )
        if status == "complete":
            return DenoiseReport(location.url, count, len(jobs), 0, status)
        finished = done_tasks(location)
        todo = [job for job in jobs if job.name not in finished]
        import ray

        shared = _Shared(ray.put(network), data.location, data.variable,
                         None if data.location else ray.put(np.asarray(data.frames)))
        factory = functools.partial(_SlabDenoiser, location, device="cuda" if gpu else "cpu",
                                    threads=max(1, int(cpus_per_worker)), options=options)
        computed = sum(1 for _ in run_stage(
            factory, [dataclasses.replace(job, shared=shared) for job in todo], workers=workers,
            cpus_per_worker=cpus_per_worker, gpus_per_worker=1.0 if gpu else 0.0, desc="denoising frames",
            progress=progress, on_start=on_start, done_before=len(jobs) - len(todo), total=len(jobs)))
    finalize(location, [job.name for job in jobs])
    return DenoiseReport(location.url, count, len(jobs), computed, status)


__all__ = ["DEFAULT_FRAMES_PER_TASK", "DenoiseReport", "denoise_labdct", "task_name"]
