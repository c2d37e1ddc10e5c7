"""``rayproc labdct segment``: spot labels of LabDCT frames, on a pool of Ray actors.

Inputs (:mod:`rayproc.pipelines.labdct.stack`): raw frames (a zarr store, a TIFF folder, a
stack file or a single 2D frame), or the ``denoised`` store of ``rayproc labdct denoise``, whose
spot probability is segmented without running the network again.

``method="standard"``: :func:`rayproc.labdct.standard_routine.standard_routine` (rolling median
over frames, then LoG segmentation) with given parameters (a JSON file or text, e.g. the
``standard_params.json`` that ``rayproc labdct evaluate`` writes after tuning) or the defaults;
its background threshold defaults to a multiple of the residual noise, measured once for the
whole stack. ``method="dl"``: :func:`rayproc.labdct.denoise.denoise_frames` (the spot network,
tile by tile; the probability is stored as ``denoised``), then
:func:`rayproc.labdct.denoise.dl_spot_labels`.

Detector pixels that are never spots (:mod:`rayproc.labdct.detector_masks`): the beam stop
(from a ``geometry.json``, else detected as the persistent dark region) and hot pixels (far
above their neighbours in most frames; for a denoised input, called spot in most frames). They
are measured on the driver from up to 16 frames spread over the stack and stored as
``beamstop`` and ``hot_pixel``.

The stack is cut into slabs of whole frames (the unit of work and of resuming); an actor reads
its slab plus a halo of ``n_rolling`` frames on each side for the rolling median, so the labels
equal those of the whole stack in one process. Writes ``spot_label`` int32 (spot ids ``1..K``
within each frame, 0 = none; the input store's dims and coords, or ``(frame|omega, det_y,
det_z)``) and a spot table along ``spot``: ``spot_frame``, ``spot_id``, ``spot_centroid_y_px``,
``spot_centroid_x_px`` (along the frame's second and third axes), ``spot_area_px`` and
``spot_intensity`` (sum of the segmented input over the spot: raw counts, or the spot
probability for a denoised input).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.labdct.denoise import DEFAULT_MIN_SIZE, DEFAULT_SCALE, DEFAULT_THRESHOLD, FAMILY
from rayproc.labdct.detector_masks import dark_region_mask, hot_pixel_mask, persistent_spot_mask, sample_frames
from rayproc.labdct.spots import number_per_frame, spot_table
from rayproc.labdct.standard_routine import (
    StandardRoutineParams, robust_noise, rolling_median_subtract, standard_routine,
)
from rayproc.models.artifact import ResolvedModel, resolve_model
from rayproc.options import check_counts, look_up_option
from rayproc.pipelines._stage import Actors, ResumableStage, SlabJob, output_attrs, slab_jobs
from rayproc.pipelines.labdct.stack import (
    DENOISED_VARIABLE, beamstop_mask, check_stack, open_frames, stack_dims_and_coords,
)
from rayproc.runtime.resources import require_cuda
from rayproc.storage import ArraySpec, Location, append_variables, task_tables, write_task
from rayproc.storage.inputs import open_array
from rayproc.storage.model_dirs import local_model_dir

METHODS = ("dl", "standard")
DEFAULT_FRAMES_PER_TASK = 4
MASK_TASK = "masks"
TABLE_NAMES = {"frame": "spot_frame", "label": "spot_id", "centroid_y": "spot_centroid_y_px",
               "centroid_x": "spot_centroid_x_px", "area": "spot_area_px", "intensity": "spot_intensity"}


@dataclass(frozen=True)
class SegmentReport:
    url: str
    method: str
    frames: int
    spots: int
    seconds: float
    status: str = "created"
    beamstop_px: int = 0
    hot_pixels: int = 0


def parse_params(params: str | dict | None) -> StandardRoutineParams:
    """Standard-routine parameters from a JSON file, JSON text, a dict or None (the defaults)."""
    if params is None:
        return StandardRoutineParams()
    if isinstance(params, StandardRoutineParams):
        return params
    if isinstance(params, str):
        text = Path(params).read_text() if Path(params).is_file() else params
        try:
            params = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"--params must be a JSON file or JSON text; got {text[:60]!r} ({exc.msg}).") from exc
    if not isinstance(params, dict):
        raise InputError(f"--params must be a JSON object; got {type(params).__name__}.")
    unknown = sorted(set(params) - set(StandardRoutineParams().to_dict()))
    if unknown:
        raise InputError(f"unknown standard-routine parameters {unknown}; expected some of "
                         f"{sorted(StandardRoutineParams().to_dict())}.")
    return StandardRoutineParams.from_dict(params)


def spot_scale(resolved: ResolvedModel) -> float:
    """The input normalisation scale of a resolved spot network (its directory's, else the default)."""
    return float(resolved.normalisation.get("scale", DEFAULT_SCALE))


def dl_segment(frames, network, scale: float, *, beamstop=None, **options) -> tuple[np.ndarray, np.ndarray]:
    """Spot probability and spot labels of ``frames`` (N, H, W) by the network.

    The probability is set to 0 on the ``beamstop`` mask (H, W). ``options``: ``threshold``
    and ``min_size`` go to :func:`~rayproc.labdct.denoise.dl_spot_labels`, the rest to
    :func:`~rayproc.labdct.denoise.denoise_frames`.
    """
    from rayproc.labdct.denoise import denoise_frames, dl_spot_labels

    label_options = {k: options.pop(k) for k in ("threshold", "min_size") if k in options}
    denoised = denoise_frames(frames, network, scale=scale, **options)
    if beamstop is not None:
        denoised[:, beamstop] = 0
    return denoised, dl_spot_labels(denoised, **label_options)


def table_dataset(table: dict) -> xr.Dataset:
    """A :func:`rayproc.labdct.spots.spot_table` dict as ``spot_*`` variables along ``spot``."""
    units = {"spot_centroid_y_px": "pixel", "spot_centroid_x_px": "pixel", "spot_area_px": "pixel"}
    return xr.Dataset({TABLE_NAMES[k]: ("spot", np.asarray(v), {"units": units[TABLE_NAMES[k]]}
                                        if TABLE_NAMES[k] in units else {}) for k, v in table.items()},
                      coords={"spot": ("spot", np.arange(len(table["frame"])))})


class _SlabSegmenter:
    """Per-actor stage: fetch the network (dl) and the frames once; segment and write slabs."""

    def __init__(self, out: Location, *, kind: str, count: int, routine=None, halo: int = 0,
                 dl_options: dict | None = None, label_options: dict | None = None, device: str = "cpu",
                 threads: int = 1):
        import torch

        torch.set_num_threads(threads)
        self.out, self.kind, self.count = out, kind, count
        self.routine, self.halo, self.device = routine, halo, device
        self.dl_options, self.label_options = dl_options or {}, label_options or {}
        self.network = self.frames = None
        self.fetched = False

    def __call__(self, job: SlabJob) -> str:
        from rayproc.labdct.denoise import denoise_frames, dl_spot_labels

        if not self.fetched:  # the masks come from the output store (written before the actors start)
            self.network, self.frames = job.shared.fetch(self.device)
            self.never = never_mask(np.asarray(open_array(self.out, "beamstop")[...]),
                                    np.asarray(open_array(self.out, "hot_pixel")[...]), grow_hot=self.kind != "denoised")
            self.fetched = True
        writes = {}
        if self.kind == "standard":
            first, last = max(job.start - self.halo, 0), min(job.stop + self.halo, self.count)
            window = np.asarray(self.frames[first:last], dtype=np.float32)
            labels = standard_routine(window, self.routine, beamstop=self.never)[job.start - first:job.stop - first]
            segmented = window[job.start - first:job.stop - first]
        else:
            segmented = np.asarray(self.frames[job.start:job.stop], dtype=np.float32)
            if self.kind == "dl":  # labelled by the driver once the network's defects are known
                denoised = denoise_frames(segmented, self.network, **self.dl_options)
                write_task(self.out, job.name, {"denoised": ((slice(job.start, job.stop),), denoised)})
                return job.name
            segmented = np.where(self.never, 0.0, segmented).astype(np.float32)
            labels = dl_spot_labels(segmented, **self.label_options)
        labels = number_per_frame(labels)
        table = spot_table(labels, segmented)
        table["frame"] = table["frame"] + job.start
        writes["spot_label"] = ((slice(job.start, job.stop),), labels)
        write_task(self.out, job.name, writes, table=table)
        return job.name


def _sampled(data, indices) -> np.ndarray:
    return np.stack([np.asarray(data[int(i)], dtype=np.float32) for i in indices])


def residual_noise_of(data, n_rolling: int, never: np.ndarray, *, blocks: int = 4) -> float:
    """Residual noise of a stack from up to ``blocks`` runs of ``n_rolling`` consecutive frames.

    The robust standard deviation (1.4826 MAD) of those frames less their rolling median, off
    the ``never`` pixels: one value for the whole stack, whatever the slab or worker count.
    """
    count = data.shape[0]
    window = min(int(n_rolling), count)
    starts = np.unique(np.linspace(0, count - window, min(blocks, count - window + 1)).round().astype(int))
    residuals = [rolling_median_subtract(_sampled(data, range(s, s + window)), window)[:, ~never] for s in starts]
    return robust_noise(np.concatenate(residuals, axis=1)[:, None, :])


def segment_labdct(
    source: str,
    out: str,
    *,
    method: str | None = None,
    model=None,
    params: str | dict | None = None,
    geometry: str | None = None,
    beamstop_from: str | None = None,
    detect_beamstop: bool = True,
    hot_pixels: bool = True,
    threshold: float | None = None,
    min_size: int | None = None,
    frames_per_task: int = DEFAULT_FRAMES_PER_TASK,
    workers: int = 1,
    gpu: bool = False,
    device: str | None = None,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    on_start=None,
) -> SegmentReport:
    """Segment the spots of a stack of frames into a zarr store, slab by slab on Ray actors.

    Parameters
    ----------
    source : str
        Raw frames (TIFF folder, stack file, one frame, zarr store) or a ``labdct denoise`` store.
    out : str
        Output zarr store.
    method : {"dl", "standard"}, optional
        Default: ``dl`` for a denoised input (the only method it allows); required otherwise.
    model : str or torch.nn.Module, optional
        ``dl`` on raw frames: a model directory, None for the shipped ``labdct-default``, or a
        network (see :func:`rayproc.models.artifact.resolve_model`).
    params : str or dict, optional
        ``standard``: :class:`~rayproc.labdct.standard_routine.StandardRoutineParams` as JSON.
    geometry : str, optional
        A ``geometry.json``: its beam stop is never part of a spot, and its ``rotation_deg``
        names the frames of a file input by ``omega`` (deg). ``beamstop_from`` is an alias.
    detect_beamstop : bool
        Without a geometry, mask the persistent dark region (raw frames only).
    hot_pixels : bool
        Mask hot pixels (and what a denoised input calls spot in most frames).
    threshold, min_size : optional
        ``dl``: spot probability threshold and smallest spot (px) of
        :func:`~rayproc.labdct.denoise.dl_spot_labels`.
    frames_per_task, workers, gpu, cpus_per_worker, address, cpus :
        Slabs and actors, as for ``rayproc labdct denoise``. ``device`` (``"cuda"``) is ``gpu``.
    storage_options, overwrite, progress, command, on_start :
        As for the other stages.
    """
    if beamstop_from is not None and geometry is not None and beamstop_from != geometry:
        raise InputError("give the geometry once: --geometry and --beamstop-from name different files.")
    geometry = geometry if geometry is not None else beamstop_from
    gpu = gpu or device == "cuda"
    check_counts(frames_per_task=frames_per_task, workers=workers)
    stage = ResumableStage.claim(out, [source, geometry if geometry and Path(geometry).exists() else None],
                                 storage_options=storage_options, overwrite=overwrite)
    data = open_frames(source, storage_options=storage_options, denoised=True)
    denoised_input = data.name == DENOISED_VARIABLE
    if method is None:
        if not denoised_input:
            raise InputError("choose a method: --method dl (the network) or --method standard (rolling median + LoG).")
        method = "dl"
    method = look_up_option(method, METHODS, name="method")
    if denoised_input and method != "dl":
        raise InputError(f"{data.url} holds denoised frames (spot probability): segment them with --method dl; "
                         "the standard routine needs raw frames.")
    routine = parse_params(params) if method == "standard" else None
    count, height, width = data.shape
    if method == "standard" and count < 3:
        raise InputError(f"the standard routine subtracts a rolling median over frames: it needs >= 3 frames; "
                         f"{data.url} holds {count} (use --method dl for a single frame).")
    if data.location is None:
        check_stack(data.values(), source)
    else:  # NaN/Inf anywhere, before the output store exists
        for job in slab_jobs(count, frames_per_task):
            check_stack(np.asarray(data[job.start:job.stop], dtype=np.float32), data.url)
    kind = "denoised" if denoised_input else method
    network, description = None, {}
    if kind == "dl":
        if gpu:
            require_cuda("cuda")
        model = local_model_dir(model, storage_options)  # an s3:// model directory: a local copy
        network, resolved = resolve_model(model, FAMILY, device="cpu")
        description = {"model": resolved.describe(), "scale": spot_scale(resolved)}
    started = time.perf_counter()
    sample = _sampled(data, sample_frames(count))
    if not np.isfinite(sample).all():
        raise InputError(f"{data.url} holds NaN or infinite values; got non-finite frames.")
    beamstop = beamstop_mask(geometry, (height, width))
    beamstop_source = "geometry" if beamstop is not None else None
    if beamstop is None and detect_beamstop and not denoised_input:
        beamstop = dark_region_mask(sample)
        beamstop_source = "detected (persistent dark region)" if beamstop.any() else None
    beamstop = np.zeros((height, width), bool) if beamstop is None else beamstop
    if not hot_pixels:
        hot = np.zeros((height, width), bool)
    elif denoised_input:
        hot = persistent_spot_mask(sample, threshold=threshold or DEFAULT_THRESHOLD)
    else:
        hot = hot_pixel_mask(sample)
    never = never_mask(beamstop, hot, grow_hot=not denoised_input)
    label_options = {"threshold": DEFAULT_THRESHOLD if threshold is None else float(threshold),
                     "min_size": DEFAULT_MIN_SIZE if min_size is None else int(min_size)}
    halo = 0
    if kind == "standard":
        noise = residual_noise_of(data, routine.n_rolling, never)
        described = routine.to_dict()
        routine = routine.for_noise(noise)
        description = {"params": described, "residual_noise": noise, "background": routine.background}
        halo = routine.n_rolling
    else:
        description.update(label_options)
    dl_options = {"scale": description.get("scale", DEFAULT_SCALE)}
    dims, coords = stack_dims_and_coords(data, geometry=geometry)
    parameters = {"input": data.url, "variable": data.name, "method": method, "geometry": geometry,
                  "detect_beamstop": detect_beamstop, "hot_pixels": hot_pixels, "frames_per_task": int(frames_per_task),
                  **description}
    jobs = slab_jobs(count, frames_per_task)
    actors = Actors(workers=workers, gpu=gpu, cpus_per_worker=cpus_per_worker, address=address, cpus=cpus)
    factory = functools.partial(_SlabSegmenter, stage.location, kind=kind, count=count, routine=routine,
                                halo=halo, dl_options=dl_options, label_options=label_options, device=actors.device,
                                threads=actors.threads)
    frame_chunks = (1, height, width)
    arrays = {
        "spot_label": ArraySpec(dims, (count, height, width), "int32", chunks=frame_chunks,
                                attrs={"long_name": f"spot id within its frame (0 = none), {method} method"}),
        "beamstop": ArraySpec(dims[1:], (height, width), "uint8", chunks=(height, width),
                              attrs={"long_name": "beam stop, never a spot (1)", "source": beamstop_source or "none"}),
        "hot_pixel": ArraySpec(dims[1:], (height, width), "uint8", chunks=(height, width),
                               attrs={"long_name": "hot pixel, never a spot (1)"}),
    }
    if kind == "dl":
        arrays["denoised"] = ArraySpec(dims, (count, height, width), "float32", chunks=frame_chunks,
                                       attrs={"long_name": "spot probability of the network", "units": "1"})

    def write_masks(done: set[str]) -> None:
        if MASK_TASK not in done:
            whole = (slice(None), slice(None))
            write_task(stage.location, MASK_TASK, {"beamstop": (whole, beamstop.astype(np.uint8)),
                                                   "hot_pixel": (whole, hot.astype(np.uint8))})

    def gather_table() -> None:
        if kind == "dl":
            label_denoised(stage.location, jobs, beamstop=beamstop, hot=hot if hot_pixels else None,
                           label_options=label_options)
            return
        tables = task_tables(stage.location, [job.name for job in jobs])
        merged = {key: np.concatenate([tables[job.name][key] for job in jobs]) for key in TABLE_NAMES}
        append_variables(stage.location, table_dataset(merged))

    attrs = output_attrs(data.attrs if data.location is not None else {"source_format": data.source_format},
                         f"LabDCT spots of {source} ({method})")
    run = stage.run(arrays, jobs, factory, network=network, data=data, actors=actors, parameters=parameters,
                    coords=coords, attrs={**attrs, "method": method}, command=command,
                    desc=f"segmenting frames ({method})", progress=progress, on_start=on_start,
                    prepare=write_masks, driver_tasks=(MASK_TASK,), finish=gather_table)
    from rayproc.storage import open_dataset

    stored = open_dataset(stage.location)
    return SegmentReport(stage.location.url, method, count, int(stored.sizes.get("spot", 0)),
                         time.perf_counter() - started, run.status, int(beamstop.sum()),
                         int(np.asarray(stored.hot_pixel.values).sum()))


def label_denoised(location: Location, jobs, *, beamstop: np.ndarray, hot: np.ndarray | None,
                   label_options: dict) -> None:
    """Label the ``denoised`` frames of a ``segment --method dl`` store, slab by slab, on the driver.

    What the network calls spot in most frames (:func:`persistent_spot_mask`, from up to 16
    frames) joins the hot pixels of the raw frames (``hot``; None: masks off), so the labels equal
    those of segmenting the ``labdct denoise`` store of the same frames. Idempotent: everything is
    recomputed from the stored probability.
    """
    import zarr

    from rayproc.labdct.denoise import dl_spot_labels
    from rayproc.storage import zarr_store

    group = zarr.open_group(zarr_store(location), mode="r+")
    denoised = group["denoised"]
    count = denoised.shape[0]
    if hot is None:
        defects = np.zeros(beamstop.shape, bool)
    else:
        sample = np.stack([np.asarray(denoised[int(i)]) for i in sample_frames(count)])
        defects = hot | persistent_spot_mask(sample, threshold=label_options["threshold"])
        group["hot_pixel"][...] = defects.astype(np.uint8)
    never = never_mask(beamstop, hot if hot is not None else defects) | defects
    tables = []
    for job in jobs:
        probability = np.where(never, 0.0, np.asarray(denoised[job.start:job.stop])).astype(np.float32)
        labels = number_per_frame(dl_spot_labels(probability, **label_options))
        group["spot_label"][job.start:job.stop] = labels
        table = spot_table(labels, probability)
        table["frame"] = table["frame"] + job.start
        tables.append(table)
    append_variables(location, table_dataset({key: np.concatenate([t[key] for t in tables]) for key in TABLE_NAMES}))


def never_mask(beamstop, hot, *, grow_hot: bool = True) -> np.ndarray:
    """Pixels never part of a spot: the beam stop and the hot pixels (grown by one pixel in raw
    frames, where a hot pixel's excess spills into its neighbours through the LoG)."""
    from scipy import ndimage as ndi

    beamstop, hot = np.asarray(beamstop, bool), np.asarray(hot, bool)
    return beamstop | (ndi.binary_dilation(hot, iterations=1) if grow_hot and hot.any() else hot)

__all__ = ["DEFAULT_FRAMES_PER_TASK", "METHODS", "SegmentReport", "dl_segment", "parse_params",
           "label_denoised", "never_mask", "residual_noise_of", "segment_labdct", "spot_scale", "table_dataset"]
