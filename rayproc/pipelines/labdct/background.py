"""``rayproc labdct background``: background images extracted from real LabDCT frames.

Reads a scan (a TIFF folder, a stack file or a zarr store), runs
:func:`rayproc.labdct.background.extract_background` (spots masked by Sobel filtering and
filled, Gaussian smoothing, rolling median over frames, normalisation by the maximum; Fang et
al.) and writes a zarr store with ``background`` float32 ``(frame, det_y, det_z)`` (named as in
:mod:`rayproc.pipelines.labdct.stack`), each frame with maximum 1, and the beam-stop mask when
one is given. The work is one process: the rolling median needs every frame, and the 41 real 1024^2 iron frames take 30-40 s on one core.

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

from rayproc.labdct.background import extract_background
from rayproc.storage import command_line, provenance, resolve, write_dataset
from rayproc.pipelines.labdct.stack import (
    DETECTOR_DIMS, FILE_FRAME_DIMS, FRAME_COORD_ATTRS, FRAME_DIM, FRAME_VARIABLES, beamstop_mask, check_stack,
    open_frames, read_frames,
)
from rayproc.storage.outputs import claim_store

@dataclass(frozen=True)
class BackgroundReport:
    url: str
    frames: int
    shape: tuple[int, int]
    seconds: float
    masked_fraction: float


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
    variables = {"background": ((FRAME_DIM, *DETECTOR_DIMS), background,
                                {"long_name": "background image, each frame divided by its maximum", "units": "1"})}
    if beamstop is not None:
        variables["beamstop"] = (DETECTOR_DIMS, beamstop.astype(np.uint8), {"long_name": "beam stop (1)"})
    coords = {FRAME_DIM: (FRAME_DIM, np.arange(n), FRAME_COORD_ATTRS),
              "frame_source": (FRAME_DIM, np.asarray(names, dtype=str))}
    dataset = xr.Dataset(variables, coords=coords,
                         attrs={"title": f"LabDCT background images of {Path(str(frames)).name}",
                                "masked_fraction": masked})
    write_dataset(location, dataset, chunks={"background": {FRAME_DIM: 1}},
                  provenance_attrs=provenance(command or command_line(), params), overwrite=overwrite,
                  inputs=[frames])
    return BackgroundReport(location.url, n, (ny, nx), seconds, masked)


__all__ = ["BackgroundReport", "FILE_FRAME_DIMS", "FRAME_VARIABLES", "beamstop_mask", "check_stack",
           "extract_background_store", "open_frames", "read_frames"]
