"""``rayproc labdct denoise``: the spot network over a stack of frames, on a pool of Ray actors.

The stack is cut along the frame axis into slabs of whole frames (the unit of work). An actor
(network fetched once from the object store) reads its slab, runs
:func:`rayproc.labdct.denoise.denoise_frames` on it and writes the slab of ``denoised``.
Frames never share tiles and each tile is predicted in a fixed-shape batch, so the result is
bit-identical to ``denoise_frames`` of the whole stack in one process (for the same device
and torch thread count); whole frames also keep the per-frame normalisation (the frame's
median) exact without a halo. An actor holds one slab: ``frames_per_task`` frames in and out.
Each slab leaves a done marker: a rerun of the same command computes only the missing ones.

Inputs (:func:`rayproc.pipelines.labdct.stack.open_frames`): a zarr store with frames
(omega, det_y, det_z) in the first of :data:`rayproc.pipelines.labdct.stack.FRAME_VARIABLES` it
holds (``projection`` of ``rayproc labdct simulate``, ``input`` of ``labdct synth``,
``intensity`` of ``rayproc ingest``), local or ``s3://``, or anything
:func:`rayproc.storage.readers.read_volume` reads (a TIFF folder in name order, a stack file,
one frame), named ``(frame, det_y, det_z)``.
Everything is checked before the output store is created; the store, the actors and resuming
are :class:`rayproc.pipelines._stage.ResumableStage`'s.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from rayproc.labdct.denoise import (
    DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_OVERLAP, DEFAULT_TILE, FAMILY, denoise_frames, normalise_frames,
    plan_tiles,
)
from rayproc.models.artifact import resolve_model
from rayproc.options import check_counts, look_up_option
from rayproc.pipelines._stage import Actors, ResumableStage, SlabJob, output_attrs, slab_jobs
from rayproc.pipelines.labdct.stack import check_stack, open_frames, stack_dims_and_coords
from rayproc.pipelines.labdct.segment import spot_scale
from rayproc.stitching import BLEND_MODES
from rayproc.storage import ArraySpec, Location, write_task
from rayproc.storage.model_dirs import local_model_dir

DEFAULT_FRAMES_PER_TASK = 4


@dataclass(frozen=True)
class DenoiseReport:
    """What a run did: ``computed`` of ``tasks`` slabs now (0 when the store was complete)."""

    url: str
    frames: int
    tasks: int
    computed: int
    status: str


class _SlabDenoiser:
    """Per-actor stage: fetch the network and the frames once (first slab); denoise and write slabs."""

    def __init__(self, out: Location, *, device: str, threads: int, options: dict):
        import torch

        torch.set_num_threads(threads)
        self.out, self.device, self.options = out, device, options
        self.network = self.frames = None

    def __call__(self, job: SlabJob) -> str:
        if self.network is None:
            self.network, self.frames = job.shared.fetch(self.device)
        slab = np.asarray(self.frames[job.start:job.stop], dtype=np.float32)
        denoised = denoise_frames(slab, self.network, **self.options)
        write_task(self.out, job.name, {"denoised": ((slice(job.start, job.stop),), denoised)})
        return job.name


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
        Frames (omega, det_y, det_z): a zarr store (path or ``s3://``) or a TIFF folder / stack file.
    out : str
        Output zarr store: ``denoised`` float32 (spot probability in [0, 1]) with the input's
        dims and coords, and provenance.
    model : str, torch.nn.Module or None
        Model directory (default: the shipped ``labdct-default``) or a network; see
        :func:`rayproc.models.artifact.resolve_model`.
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
        Replace an output store rayproc made earlier (never any other folder or file).
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
    stage = ResumableStage.claim(out, [source], storage_options=storage_options, overwrite=overwrite)
    model = local_model_dir(model, storage_options)  # an s3:// model directory: a local copy
    network, resolved = resolve_model(model, FAMILY, device="cpu")
    scale = spot_scale(resolved)
    data = open_frames(source, storage_options=storage_options)
    if data.location is None:  # a file, read whole: a stack of finite frames
        check_stack(data.values(), source)
    count, height, width = data.shape
    plan_tiles((height, width), tile=tile, overlap=overlap, divisor=getattr(getattr(network, "config", None), "divisor", 32))
    jobs = slab_jobs(count, frames_per_task)
    for job in jobs:  # NaN/Inf and frames without a background, before any output exists
        normalise_frames(data[job.start:job.stop], scale=scale)
    options = {"scale": scale, "tile": int(tile), "overlap": int(overlap), "blend": blend, "batch_size": int(batch_size)}

    parameters = {"input": data.url, "variable": data.name, "model": resolved.describe(), **options,
                  "frames_per_task": int(frames_per_task)}
    actors = Actors(workers=workers, gpu=gpu, cpus_per_worker=cpus_per_worker, address=address, cpus=cpus)
    factory = functools.partial(_SlabDenoiser, stage.location, device=actors.device, threads=actors.threads,
                                options=options)
    dims, coords = stack_dims_and_coords(data)
    run = stage.run(
        {"denoised": ArraySpec(dims, (count, height, width), "float32", chunks=(1, height, width),
                               attrs={"long_name": "spot probability of the denoising network", "units": "1"})},
        jobs, factory, network=network, data=data, actors=actors, parameters=parameters, coords=coords,
        attrs=output_attrs(data.attrs if data.location is not None else {"source_format": data.source_format},
                           "LabDCT frames denoised by the spot network"),
        command=command, desc="denoising frames", progress=progress, on_start=on_start)
    return DenoiseReport(stage.location.url, count, len(jobs), run.computed, run.status)


__all__ = ["DEFAULT_FRAMES_PER_TASK", "DenoiseReport", "denoise_labdct"]
