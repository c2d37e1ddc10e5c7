"""``rayproc labdct background``: background images extracted from real LabDCT frames.

Reads a scan (a TIFF folder, a stack file or a zarr store), runs
:func:`rayproc.labdct.background.extract_background` (spots masked by Sobel filtering and
filled, Gaussian smoothing, rolling median over frames, normalisation by the maximum; Fang et
al.) and writes a zarr store with ``background`` float32 ``(frame, y, x)``, each frame with
maximum 1, and the beam-stop mask when one is given. The work is one process: the rolling
median needs every frame, and the 41 real 1024^2 iron frames take 30-40 s on one core.

Frames are indexed like simulated projections (``image[iy, iz]``, as
:mod:`rayproc.pipelines.labdct.report` reads them) and the beam-stop box of a ``geometry.json``
is applied in that layout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.labdct.background import extract_background
from rayproc.storage import command_line, provenance, resolve, write_dataset
from rayproc.storage.inputs import InputArray, open_input
from rayproc.storage.outputs import claim_store

# Variables holding frames in a zarr store, in the order they are looked for.
FRAME_VARIABLES = ("input", "projection", "intensity", "background")
# Dims of frames read from a file.
FILE_FRAME_DIMS = ("frame", "y", "x")


@dataclass(frozen=True)
class BackgroundReport:
    url: str
    frames: int
    shape: tuple[int, int]
    seconds: float
    masked_fraction: float


def open_frames(source: str, *, storage_options: dict | None = None, file_dims: tuple[str, ...] = FILE_FRAME_DIMS,
                file_coords: dict | None = None) -> InputArray:
    """The frames of ``source``, opened lazily (:func:`rayproc.storage.inputs.open_input`).

    Parameters
    ----------
    source : str
        A zarr store (its first variable of :data:`FRAME_VARIABLES`), or anything
        :func:`rayproc.storage.readers.read_volume` reads (a TIFF folder in name order, a TIFF,
        ``.npy``/``.npz``, ``file.h5:/dataset``).
    storage_options : dict, optional
        fsspec options for ``s3://``.
    file_dims : tuple of str, optional
        Dims of frames read from a file.
    file_coords : dict, optional
        Index coordinates of frames read from a file, ``{dim: attrs}``; default: the frame
        index alone, without attrs.

    Returns
    -------
    InputArray
    """
    return open_input(source, FRAME_VARIABLES, storage_options=storage_options, what="frames", file_dims=file_dims,
                      file_coords={file_dims[0]: {}} if file_coords is None else file_coords)


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
    :data:`FILE_FRAME_DIMS`, with a ``frame`` index), the store's ``name`` and the
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


def extract_background_store(
    frames: str,
    out: str,
    *,
    rolling: int = 11,
    beamstop_from: str | None = None,
    sobel_threshold: float = 6.0,
    dilation_radius: float = 13.0,
    smooth_sigma: float = 4.0,
    storage_options: dict | None = None,
    overwrite: bool = False,
    command: str | None = None,
) -> BackgroundReport:
    """Extract one background image per real frame and store them (max-normalised) in ``out``.

    Parameters
    ----------
    frames : str
        Real frames: a TIFF folder, a stack file or a zarr store (see :func:`open_frames`).
    out : str
        Output zarr store (path or ``s3://`` URL).
    rolling : int
        Frames in the rolling median.
    beamstop_from : str, optional
        A ``geometry.json`` whose beam-stop box is kept as measured (stored as ``beamstop``).
    sobel_threshold, dilation_radius, smooth_sigma : float
        See :func:`rayproc.labdct.background.extract_background`.
    storage_options : dict, optional
        fsspec options for ``s3://`` stores.
    overwrite : bool
        Replace an output store rayproc made earlier (never any other folder or file).
    command : str, optional
        Command line recorded in the provenance.

    Returns
    -------
    BackgroundReport
        ``masked_fraction``: mean fraction of pixels replaced because they held spots.
    """
    from rayproc.labdct.background import spot_fill_mask

    location = resolve(out, storage_options)
    claim_store(location, inputs=[frames], overwrite=overwrite)
    stack, source = read_frames(frames, storage_options=storage_options)
    beamstop = beamstop_mask(beamstop_from, stack.shape[1:])
    params = {"frames": str(frames), "rolling": rolling, "beamstop_from": beamstop_from,
              "sobel_threshold": sobel_threshold, "dilation_radius": dilation_radius, "smooth_sigma": smooth_sigma}
    started = time.perf_counter()
    background = extract_background(stack, sobel_threshold=sobel_threshold, dilation_radius=dilation_radius,
                                    smooth_sigma=smooth_sigma, rolling=rolling, beamstop=beamstop)
    seconds = time.perf_counter() - started
    masked = float(np.mean([spot_fill_mask(f, sobel_threshold=sobel_threshold, dilation_radius=dilation_radius,
                                           beamstop=beamstop).mean() for f in stack]))
    n, ny, nx = background.shape
    names = source.frame_names or [f"{source.name or 'frame'}[{i}]" for i in range(n)]
    variables = {"background": (("frame", "y", "x"), background,
                                {"long_name": "background image, each frame divided by its maximum", "units": "1"})}
    if beamstop is not None:
        variables["beamstop"] = (("y", "x"), beamstop.astype(np.uint8), {"long_name": "beam stop (1)"})
    coords = {"frame": ("frame", np.arange(n)), "frame_source": ("frame", np.asarray(names, dtype=str))}
    dataset = xr.Dataset(variables, coords=coords,
                         attrs={"title": f"LabDCT background images of {Path(str(frames)).name}",
                                "masked_fraction": masked})
    write_dataset(location, dataset, chunks={"background": {"frame": 1}},
                  provenance_attrs=provenance(command or command_line(), params), overwrite=overwrite,
                  inputs=[frames])
    return BackgroundReport(location.url, n, (ny, nx), seconds, masked)


__all__ = ["BackgroundReport", "FILE_FRAME_DIMS", "FRAME_VARIABLES", "beamstop_mask", "check_stack",
           "extract_background_store", "open_frames", "read_frames"]
