"""``rayproc labdct segment``: spot labels of raw LabDCT frames, by the network or the standard routine.

``method="standard"``: :func:`rayproc.labdct.standard_routine.standard_routine` (rolling median
over frames, then LoG segmentation) with given parameters (a JSON file or text, e.g. the
``standard_params.json`` that ``rayproc labdct evaluate`` writes after tuning) or the defaults.
``method="dl"``: :func:`rayproc.labdct.denoise.denoise_frames` (the spot network, tile by
tile) then :func:`rayproc.labdct.denoise.dl_spot_labels`; the spot probability is stored as
``denoised``.

Writes ``spot_label`` int32 ``(frame, y, x)`` (the input store's dims and coords when it is a
zarr store, e.g. ``(omega, y, x)``) and a spot table along ``spot``: ``spot_frame``,
``spot_id`` (the label), ``spot_centroid_y_px``, ``spot_centroid_x_px``, ``spot_area_px`` and
``spot_intensity`` (sum of the raw input over the spot). One process: the rolling median needs
neighbouring frames; ``rayproc labdct denoise`` is the distributed network pass.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.labdct.denoise import DEFAULT_SCALE, FAMILY
from rayproc.labdct.spots import spot_table
from rayproc.labdct.standard_routine import StandardRoutineParams, standard_routine
from rayproc.models.artifact import ResolvedModel, resolve_model
from rayproc.options import look_up_option
from rayproc.pipelines.labdct.background import beamstop_mask, read_frames
from rayproc.runtime.resources import require_cuda
from rayproc.storage import command_line, provenance, resolve, write_dataset
from rayproc.storage.outputs import claim_store

METHODS = ("dl", "standard")


@dataclass(frozen=True)
class SegmentReport:
    url: str
    method: str
    frames: int
    spots: int
    seconds: float


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


def spot_table_dataset(labels: np.ndarray, frames: np.ndarray) -> xr.Dataset:
    """The spot table of ``labels`` as variables along ``spot`` (see the module notes)."""
    table = spot_table(labels, frames)
    names = {"frame": "spot_frame", "label": "spot_id", "centroid_y": "spot_centroid_y_px",
             "centroid_x": "spot_centroid_x_px", "area": "spot_area_px", "intensity": "spot_intensity"}
    return xr.Dataset({names[k]: ("spot", v) for k, v in table.items()},
                      coords={"spot": ("spot", np.arange(len(table["frame"])))})


def segment_labdct(
    source: str,
    out: str,
    *,
    method: str = "standard",
    model=None,
    params: str | dict | None = None,
    beamstop_from: str | None = None,
    threshold: float | None = None,
    device: str = "cpu",
    storage_options: dict | None = None,
    overwrite: bool = False,
    command: str | None = None,
) -> SegmentReport:
    """Segment the spots of raw frames into a zarr store.

    Parameters
    ----------
    source : str
        Raw frames: a TIFF folder, a stack file or a zarr store (``input``, ``projection``...).
    out : str
        Output zarr store.
    method : {"dl", "standard"}
    model : str or torch.nn.Module, optional
        ``dl``: a model directory, None for the shipped ``labdct-default``, or a network
        (see :func:`rayproc.models.artifact.resolve_model`).
    params : str or dict, optional
        ``standard``: :class:`~rayproc.labdct.standard_routine.StandardRoutineParams` as JSON.
    beamstop_from : str, optional
        A ``geometry.json``: its beam stop is never part of a spot.
    threshold : float, optional
        ``dl``: spot probability threshold (default of
        :func:`~rayproc.labdct.denoise.dl_spot_labels`).
    device : str
        Torch device of the network.
    storage_options, overwrite, command :
        As for the other pipelines.
    """
    method = look_up_option(method, METHODS, name="method")
    routine = parse_params(params) if method == "standard" else None
    location = resolve(out, storage_options)
    claim_store(location, inputs=[source], overwrite=overwrite)
    if method == "dl":
        require_cuda(device)
        network, resolved = resolve_model(model, FAMILY, device=device)
        scale = spot_scale(resolved)
    frames, opened = read_frames(source, storage_options=storage_options)
    beamstop = beamstop_mask(beamstop_from, frames.shape[1:])
    started = time.perf_counter()
    denoised = None
    if method == "standard":
        labels = standard_routine(frames, routine, beamstop=beamstop)
        description = {"params": routine.to_dict()}
    else:
        options = {} if threshold is None else {"threshold": threshold}
        denoised, labels = dl_segment(frames, network, scale, beamstop=beamstop, **options)
        description = {"model": resolved.describe(), "scale": scale, **options}
    seconds = time.perf_counter() - started
    dims, coords = opened.dims, opened.dim_coords()
    dataset = spot_table_dataset(labels, frames)
    dataset["spot_label"] = (dims, labels, {"long_name": f"spot id per pixel (0 = none), {method} method"})
    if denoised is not None:
        dataset["denoised"] = (dims, denoised.astype(np.float32), {"long_name": "spot probability of the network"})
    dataset = dataset.assign_coords(coords)
    dataset.attrs.update(title=f"LabDCT spots of {source} ({method})", method=method)
    chunks = {name: {dims[0]: 1} for name in ("spot_label", "denoised")}
    parameters = {"source": str(source), "method": method, "beamstop_from": beamstop_from, **description}
    write_dataset(location, dataset, chunks=chunks,
                  provenance_attrs=provenance(command or command_line(), parameters), overwrite=overwrite,
                  inputs=[source])
    return SegmentReport(location.url, method, len(frames), dataset.sizes["spot"], seconds)


__all__ = ["METHODS", "SegmentReport", "dl_segment", "parse_params", "segment_labdct",
           "spot_scale", "spot_table_dataset"]
