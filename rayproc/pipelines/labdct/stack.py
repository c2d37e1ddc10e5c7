"""A stack of LabDCT frames as every LabDCT stage reads and names it.

One naming for every LabDCT stack on disk:

- the frame axis is ``omega`` (rotation angle, degrees) when the rotation is known, from the
  simulator or from a ``geometry.json`` with ``rotation_deg`` (``omega_i = start + step i``),
  otherwise ``frame`` (index in file order, a coordinate ``0 .. N-1``);
- the detector axes are ``det_y`` (horizontal) and ``det_z`` (vertical), the lab axes they
  sample (:mod:`rayproc.labdct.geometry`: frames are indexed ``image[iy, iz]``); pixel indices
  for measured frames, millimetres from the beam centre for simulated ones.

A zarr store keeps its own dims and coordinates (a ``rayproc ingest`` volume is ``(z, y, x)``).
Inputs: a zarr store (the first variable of :data:`FRAME_VARIABLES` it holds, else
``denoised``, the output of ``rayproc labdct denoise``), or anything
:func:`rayproc.storage.readers.read_volume` reads (a TIFF folder in name order, a TIFF, a
``.npy``/``.npz``, ``file.h5:/dataset``); a single 2D frame is a stack of one.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.storage.inputs import InputArray, open_input

# Variables holding raw frames in a zarr store, in the order they are looked for.
FRAME_VARIABLES = ("input", "projection", "intensity", "background")
# The network's spot probability (``rayproc labdct denoise``): segmented without the network.
DENOISED_VARIABLE = "denoised"
FRAME_DIM, OMEGA_DIM = "frame", "omega"
DETECTOR_DIMS = ("det_y", "det_z")
FRAME_COORD_ATTRS = {"long_name": "frame index (file order)", "units": "1"}
OMEGA_COORD_ATTRS = {"long_name": "rotation angle", "units": "deg"}
DETECTOR_PIXEL_ATTRS = {
    "det_y": {"long_name": "detector y (horizontal)", "units": "pixel"},
    "det_z": {"long_name": "detector z (vertical)", "units": "pixel"},
}
# Dims of frames read from a file, and the attrs of their index coordinates.
FILE_FRAME_DIMS = (FRAME_DIM, *DETECTOR_DIMS)
FILE_COORDS = {FRAME_DIM: FRAME_COORD_ATTRS, **DETECTOR_PIXEL_ATTRS}


def open_frames(source: str, *, storage_options: dict | None = None, denoised: bool = False) -> InputArray:
    """The frames of ``source``, opened lazily, as ``(frame|omega, det_y, det_z)``.

    Parameters
    ----------
    source : str
        A zarr store (path or ``s3://``) or a file / TIFF folder (see the module notes).
    storage_options : dict, optional
        fsspec options for ``s3://``.
    denoised : bool, optional
        Also accept a store holding only ``denoised`` (spot probability) frames.

    Returns
    -------
    InputArray
        Three dims; a single 2D frame from a file is given a frame axis of length 1.
    """
    variables = (*FRAME_VARIABLES, DENOISED_VARIABLE) if denoised else FRAME_VARIABLES
    data = open_input(source, variables, storage_options=storage_options, what="frames",
                      file_dims=FILE_FRAME_DIMS, file_coords=FILE_COORDS)
    if data.location is None and data.ndim == 2:  # one frame read from a file
        values = np.asarray(data.data)[None]
        coords = {FRAME_DIM: xr.Variable(FRAME_DIM, [0], FRAME_COORD_ATTRS),
                  **{d: xr.Variable(d, np.arange(n), DETECTOR_PIXEL_ATTRS[d])
                     for d, n in zip(DETECTOR_DIMS, values.shape[1:])}}
        data = dataclasses.replace(data, data=values, dims=FILE_FRAME_DIMS, coords=coords)
    if data.ndim != 3:
        raise InputError(f"{data.url}: frames must be (frame, det_y, det_z) or one (det_y, det_z) frame; "
                         f"got dims {data.dims}, shape {data.shape}.")
    return data


def check_stack(stack: np.ndarray, source: str) -> np.ndarray:
    """``stack`` when it is a finite stack of frames ``(N, H, W)``; else a one-line error."""
    if stack.ndim != 3 or min(stack.shape) < 1:
        raise InputError(f"frames must be a stack (N, H, W); got shape {stack.shape} from {source}.")
    if not np.isfinite(stack).all():
        raise InputError(f"{source} holds NaN or infinite values; got non-finite frames.")
    return stack


def read_frames(source: str, *, storage_options: dict | None = None) -> tuple[np.ndarray, InputArray]:
    """A stack of frames ``(N, H, W)`` float32, checked, and the input it was read from.

    ``source`` is a zarr store or a file (see :func:`open_frames`); the :class:`InputArray`
    says where the frames came from: ``dims`` and coordinates (a file's are
    :data:`FILE_FRAME_DIMS`, with index coordinates), the store's ``name`` and the
    ``frame_names`` of a TIFF folder.
    """
    frames = open_frames(source, storage_options=storage_options)
    return check_stack(frames.values(), source), frames


def beamstop_mask(geometry: str | None, shape: tuple[int, int]) -> np.ndarray | None:
    """The beam-stop mask ``(H, W)`` of a ``geometry.json`` (or preset), checked against ``shape``."""
    if geometry is None:
        return None
    from rayproc.pipelines.labdct.simulate import load_geometry

    geom = load_geometry(geometry)
    if tuple(geom.detector_shape) != tuple(shape):
        raise InputError(f"geometry {geometry} describes a {geom.detector_shape} detector; "
                         f"the frames are {tuple(shape)}.")
    return geom.beam_stop_mask()


def known_rotation(geometry: str | None, count: int) -> np.ndarray | None:
    """Rotation angles (deg) of ``count`` frames from a ``geometry.json`` with ``rotation_deg``, else None."""
    if geometry is None or not Path(geometry).is_file():
        return None
    try:
        rotation = json.loads(Path(geometry).read_text()).get("rotation_deg")
    except (OSError, json.JSONDecodeError, AttributeError):
        return None
    if not isinstance(rotation, dict) or "start" not in rotation or "step" not in rotation:
        return None
    return float(rotation["start"]) + float(rotation["step"]) * np.arange(count)


def stack_dims_and_coords(data: InputArray, *, geometry: str | None = None) -> tuple[tuple, dict]:
    """Dims and index coordinates of an output computed frame by frame from ``data``.

    A store keeps its own (a ``frame`` axis becomes ``omega`` when ``geometry`` gives the
    rotation); frames from a file are ``(frame, det_y, det_z)``, or ``(omega, det_y, det_z)``
    when ``geometry`` gives the rotation.
    """
    if data.location is not None:
        dims, coords = data.dims, data.dim_coords()
        omega = known_rotation(geometry, data.shape[0]) if dims[0] == FRAME_DIM else None
        if omega is None:
            return dims, coords
        coords = {d: c for d, c in coords.items() if d != FRAME_DIM}
        return (OMEGA_DIM, *dims[1:]), {OMEGA_DIM: xr.Variable(OMEGA_DIM, omega, OMEGA_COORD_ATTRS), **coords}
    coords = {d: xr.Variable(d, np.arange(n), DETECTOR_PIXEL_ATTRS[d]) for d, n in zip(DETECTOR_DIMS, data.shape[1:])}
    omega = known_rotation(geometry, data.shape[0])
    if omega is None:
        return FILE_FRAME_DIMS, {FRAME_DIM: xr.Variable(FRAME_DIM, np.arange(data.shape[0]), FRAME_COORD_ATTRS),
                                 **coords}
    return (OMEGA_DIM, *DETECTOR_DIMS), {OMEGA_DIM: xr.Variable(OMEGA_DIM, omega, OMEGA_COORD_ATTRS), **coords}


__all__ = [
    "DENOISED_VARIABLE", "DETECTOR_DIMS", "DETECTOR_PIXEL_ATTRS", "FILE_COORDS", "FILE_FRAME_DIMS", "FRAME_DIM",
    "FRAME_VARIABLES", "OMEGA_DIM", "beamstop_mask", "check_stack", "known_rotation",
    "open_frames", "read_frames", "stack_dims_and_coords",
]
