"""``rayproc labdct simulate``: LabDCT projections of a virtual polycrystal, sharded over Ray.

The polycrystal is generated once on the driver from ``default_rng([seed, 0])`` and shared with
every actor through the Ray object store; projection ``p`` uses ``default_rng([seed, 1, p])``, so
the stack is bit-identical for any number of workers. Each projection writes its image, its
``spot_label`` and its spot table (stored with the task marker); the table of the whole stack is
gathered when every projection is done.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.labdct.geometry import GEOMETRY_PRESETS, LabdctGeometry, geometry_from_json
from rayproc.labdct.projection import SPOT_TABLE_KEYS, physics_for_binning, simulate_projection
from rayproc.labdct.polycrystal import POLYCRYSTAL_PRESETS, Polycrystal, make_polycrystal
from rayproc.labdct.spectrum import tube_spectrum
from rayproc.options import look_up_option
from rayproc.runtime import ray_session, run_stage
from rayproc.storage.outputs import claim_store
from rayproc.storage import (
    ArraySpec, Location, append_variables, command_line, create_dataset, done_tasks, finalize,
    provenance, resolve, task_tables, write_task,
)

# The published simulations add a constant background before zeroing the beam stop.
PUBLISHED_BACKGROUND = 919.0


def task_name(index: int) -> str:
    return f"projection-{index:05d}"


def read_geometry_json(path: str):
    """The parsed content of a ``geometry.json`` file, or one line saying why it cannot be read."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read geometry file {path}: {exc}") from None


def load_geometry(geometry: str | None, *, binning: int = 1) -> LabdctGeometry:
    """A geometry preset name (``laue_focusing``, ``fe_farfield``) or a JSON file like
    ``labdct-fe-farfield/geometry.json`` (its keys override the Laue-focusing preset)."""
    if geometry is None:
        geom = GEOMETRY_PRESETS["laue_focusing"]
    elif Path(geometry).suffix.lower() == ".json":
        geom = geometry_from_json(read_geometry_json(geometry))
    else:
        geom = GEOMETRY_PRESETS[look_up_option(geometry, GEOMETRY_PRESETS, name="geometry")]
    return geom.binned(binning) if binning > 1 else geom


@dataclass(frozen=True)
class LabdctSimulationReport:
    url: str
    projections: int
    computed: int
    spots: int
    status: str


class _ProjectionWriter:
    """Per-actor stage: simulate projection ``p`` and write image, labels and spot table.

    Items are ``(p, [sample_ref])``: the polycrystal travels once through the object store and
    is fetched by each actor on its first item (refs in method calls, not in the constructor,
    so a restarted actor never depends on a lost constructor argument).
    """

    def __init__(self, location: Location, geometry: dict, seed: int, options: dict):
        self.location, self.seed, self.options = location, seed, options
        self.geometry = LabdctGeometry.from_dict(geometry)
        self.sample: Polycrystal | None = None
        tube_spectrum()  # SpekPy takes ~1 s; pay it while the actor starts, not on its first projection

    def __call__(self, item) -> int:
        index, (sample_ref,) = item
        if self.sample is None:
            import ray

            self.sample = ray.get(sample_ref)
        omega = float(self.geometry.omegas_deg[index])
        image, labels, spots = simulate_projection(
            self.sample, self.geometry, omega, rng=np.random.default_rng([self.seed, 1, index]), **self.options
        )
        write_task(self.location, task_name(index),
                   {"projection": ((index,), image), "spot_label": ((index,), labels)},
                   table={**spots, "projection": np.full(len(spots["label"]), index, np.int32)})
        return index


def _spot_table(tables: list[dict]) -> xr.Dataset:
    columns = {k: np.concatenate([t[k] for t in tables]) for k in (*SPOT_TABLE_KEYS, "projection")}
    units = {"omega_deg": "deg", "centroid_y_px": "pixel", "centroid_z_px": "pixel", "centroid_y_mm": "mm",
             "centroid_z_mm": "mm", "area_px": "pixel", "intensity": "photons", "energy_kev": "keV"}
    n = len(columns["label"])
    names = {k: "spot_id" if k == "label" else f"spot_{k}" for k in columns}  # spot_label is the image
    return xr.Dataset(
        {names[k]: ("spot", v, {"units": units[k]} if k in units else {}) for k, v in columns.items()},
        coords={"spot": ("spot", np.arange(n))},
    )


def _grain_table(sample: Polycrystal) -> xr.Dataset:
    return xr.Dataset(
        {
            "grain_orientation": (("grain", "i", "j"), sample.orientations,
                                  {"long_name": "crystal-to-sample rotation matrix U"}),
            "grain_diameter": ("grain", sample.equivalent_diameters_um(), {"units": "um"}),
            "grain_centroid": (("grain", "xyz"), sample.grain_centroids_mm(), {"units": "mm"}),
        },
        coords={"grain": ("grain", np.arange(sample.n_grains))},
    )


def simulate_labdct(
    out: str,
    *,
    preset: str = "D35",
    geometry: str | None = None,
    projections: int | None = None,
    binning: int = 1,
    seed: int = 0,
    workers: int = 1,
    psf_sigma_px: float = 1.0,
    background: float = PUBLISHED_BACKGROUND,
    voxel_um: float | None = None,
    physics: dict | None = None,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    on_start=None,
) -> LabdctSimulationReport:
    """Simulate a LabDCT projection stack of a ``preset`` polycrystal into the store ``out``.

    ``physics``: further keyword arguments of :func:`rayproc.labdct.projection.simulate_projection`
    (focal spot, mosaicity, strain, scintillator depth, PSF tail, beam stop), e.g.
    ``PHYSICS_PRESETS["fe_farfield"]``; lengths in pixels are given for the unbinned detector
    and divided by ``binning`` here.
    """
    preset = look_up_option(preset, POLYCRYSTAL_PRESETS, name="preset")
    physics = physics_for_binning(physics or {}, binning)
    if "psf_sigma_px" in physics:
        psf_sigma_px = physics.pop("psf_sigma_px")
    geom = load_geometry(geometry, binning=binning)
    n = geom.n_projections if projections is None else projections
    if n < 1 or workers < 1 or binning < 1:
        raise InputError(f"--projections, --workers and --binning must be >= 1; got {n}, {workers}, {binning}.")
    if n != geom.n_projections:  # N projections evenly over 360 degrees, same start and sense
        step = np.copysign(360.0 / n, geom.omega_step_deg)
        geom = LabdctGeometry.from_dict({**geom.to_dict(), "n_projections": n, "omega_step_deg": step})
    location = resolve(out, storage_options)
    claim_store(location, inputs=[geometry] if geometry and geometry.endswith(".json") else [], overwrite=overwrite)
    params = {"preset": preset, "geometry": geom.to_dict(), "seed": seed, "psf_sigma_px": psf_sigma_px,
              "background": background, "voxel_um": voxel_um, **({"physics": physics} if physics else {})}
    ny, nx = geom.detector_shape
    ys, xs = geom.px_to_mm(np.arange(ny), np.arange(nx))
    coords = {
        "omega": xr.Variable("omega", geom.omegas_deg, {"units": "deg", "long_name": "rotation angle"}),
        "det_y": xr.Variable("det_y", ys, {"units": "mm", "long_name": "detector y (horizontal, from beam centre)"}),
        "det_z": xr.Variable("det_z", xs, {"units": "mm", "long_name": "detector z (vertical, from beam centre)"}),
    }
    frame = (1, ny, nx)
    with ray_session(address, cpus=cpus, workers=workers, actor_cpus=1.0):
        status = create_dataset(
            location,
            {
                "projection": ArraySpec(("omega", "det_y", "det_z"), (n, ny, nx), "float32", chunks=frame,
                                        attrs={"units": "photons", "long_name": "simulated projection"}),
                "spot_label": ArraySpec(("omega", "det_y", "det_z"), (n, ny, nx), "int32", chunks=frame,
                                        attrs={"long_name": "spot id per pixel (0 = none)"}),
            },
            coords=coords,
            attrs={"title": f"simulated LabDCT projections, {preset} polycrystal", "background": background},
            provenance_attrs=provenance(command or command_line(), params, seed=seed),
            overwrite=overwrite,
            inputs=[geometry] if geometry and geometry.endswith(".json") else [],
            compression="blosc-lz4",
        )
        if status == "complete":
            return LabdctSimulationReport(location.url, n, 0, -1, status)
        sample = make_polycrystal(preset, np.random.default_rng([seed, 0]), voxel_um=voxel_um)
        finished = done_tasks(location)
        todo = [p for p in range(n) if task_name(p) not in finished]
        import ray

        sample_ref = ray.put(sample)
        stage = functools.partial(_ProjectionWriter, location, geom.to_dict(), seed,
                                  {"psf_sigma_px": psf_sigma_px, "background": background, **physics})
        items = [(p, [sample_ref]) for p in todo]
        computed = sum(1 for _ in run_stage(stage, items, workers=workers, desc="projections",
                                            progress=progress, on_start=on_start, done_before=n - len(todo),
                                            total=n))
    tasks = [task_name(p) for p in range(n)]
    tables = task_tables(location, [t for t in tasks if t in done_tasks(location)])
    table = _spot_table([tables[t] for t in tasks if t in tables])
    append_variables(location, xr.merge([table, _grain_table(sample)]))
    finalize(location, tasks)
    return LabdctSimulationReport(location.url, n, computed, table.sizes["spot"], status)


__all__ = ["simulate_labdct", "load_geometry", "read_geometry_json", "LabdctSimulationReport", "PUBLISHED_BACKGROUND"]
