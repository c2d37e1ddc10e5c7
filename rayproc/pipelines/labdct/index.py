"""``rayproc labdct index``: grains from a segmented (or simulated) LabDCT stack, seeds searched on Ray actors.

Input: a ``labdct segment`` store (spot table ``spot_frame``, ``spot_centroid_y_px``,
``spot_centroid_x_px`` along the frame's second and third axes, ``spot_intensity``,
``spot_area_px``) or a ``labdct simulate`` store (its exact spot table: ``spot_projection``,
``spot_centroid_y_px``, ``spot_centroid_z_px``), and the ``geometry.json`` the frames were taken
in. Frames are at the store's ``omega`` coordinate, else at the geometry's rotation.

Work: :func:`rayproc.labdct.indexing.index_grains` in rounds; a round's seed spots are cut into
fixed batches that the actors search (pair hypotheses scored against every spot, refined by
least squares), the driver then assigns spots greedily. Each round is a task of the store (its
seeds and accepted grains kept with its marker), so a killed run resumes at the next round; the
grains do not depend on the number of actors.

Output: the grain table along ``grain``, named as ``labdct simulate`` names its grains
(``grain_orientation`` U crystal to sample, ``grain_centroid`` mm in the sample frame) plus
``grain_rodrigues``, ``grain_completeness``, ``grain_matched_spots``, ``grain_predicted_spots``,
``grain_residual_px``, ``grain_size``, ...; and the per-spot assignment ``spot_grain`` (-1: none)
and ``spot_residual_px`` along the input's ``spot``.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.labdct.geometry import LabdctGeometry, geometry_from_json
from rayproc.labdct.indexing import IndexingParams, index_grains, measured_spots, search_seeds
from rayproc.pipelines._stage import ResumableStage
from rayproc.pipelines.labdct.simulate import read_geometry_json
from rayproc.runtime import ray_session
from rayproc.storage import (
    append_variables, command_line, create_dataset, done_tasks, finalize, open_dataset, provenance, resolve, task_tables, write_task,
)

# What the forward model needs from a geometry.json (the rest falls back to the preset).
GEOMETRY_FIELDS = ("material", "source_to_sample_mm", "sample_to_detector_mm", "detector_pixels", "pixel_size_mm",
                   "beam_center_px", "detector_tilt_rad", "rotation_deg", "energy_window_keV")
PIXEL_CONVENTIONS = ("auto", "rayproc", "published")
GRAINS_TASK = "grains"


@dataclass(frozen=True)
class IndexReport:
    url: str
    spots: int
    grains: int
    assigned: int
    rounds: int
    seconds: float
    status: str = "created"


def round_task(index: int) -> str:
    return f"round-{index:05d}"


def indexing_geometry(path: str) -> LabdctGeometry:
    """The geometry of a ``geometry.json``, refusing one that lacks a field the forward model needs."""
    config = read_geometry_json(path)
    if not isinstance(config, dict):
        raise InputError(f"geometry file {path} must hold a JSON object; got {type(config).__name__}.")
    missing = [field for field in GEOMETRY_FIELDS if field not in config]
    if missing:
        raise InputError(f"geometry file {path} lacks {', '.join(repr(m) for m in missing)}, needed to predict "
                         f"spots; expected the fields of labdct-fe-farfield/geometry.json.")
    try:
        return geometry_from_json(config)
    except (KeyError, TypeError, ValueError) as exc:
        raise InputError(f"geometry file {path} has a malformed field ({exc!r}).") from None


def read_spot_table(ds: xr.Dataset, url: str, geometry: LabdctGeometry, pixel_convention: str) -> dict:
    """Frame, centroid (geometry pixels), intensity and area of every spot, and the frames' omegas."""
    if "spot_frame" in ds and "spot_centroid_x_px" in ds:  # labdct segment
        frame, y, z = (np.asarray(ds[k].values) for k in ("spot_frame", "spot_centroid_y_px", "spot_centroid_x_px"))
    elif "spot_projection" in ds and "spot_centroid_z_px" in ds:  # labdct simulate
        frame, y, z = (np.asarray(ds[k].values) for k in ("spot_projection", "spot_centroid_y_px",
                                                           "spot_centroid_z_px"))
    else:
        raise InputError(f"{url} holds no spot table (spot_frame, spot_centroid_*); index the output of "
                         "`rayproc labdct segment` (or `labdct simulate`).")
    if len(frame) == 0:
        raise InputError(f"{url} holds no spots: nothing to index.")
    dims = ds["spot_label"].dims if "spot_label" in ds else (next((d for d in ("omega", "frame") if d in ds.sizes),
                                                                   None), "det_y", "det_z")
    if all(d in ds.sizes for d in dims[1:]):
        shape = tuple(ds.sizes[d] for d in dims[1:])
        if shape != tuple(geometry.detector_shape):
            raise InputError(f"the spots of {url} are on a {shape} detector but the geometry describes "
                             f"{tuple(geometry.detector_shape)}: spots from another geometry?")
    count = ds.sizes[dims[0]] if dims[0] in ds.sizes else int(frame.max()) + 1
    recorded = ds.attrs.get("provenance", {}).get("parameters", {}).get("geometry")
    if isinstance(recorded, dict):  # a simulated stack records its geometry
        theirs = LabdctGeometry.from_dict(recorded)
        keys = ("lss_mm", "lsd_mm", "pixel_size_mm", "beam_center_px", "tilt_rad", "energy_window_kev")
        differ = [k for k in keys if not np.allclose(getattr(theirs, k), getattr(geometry, k), rtol=1e-6)]
        if differ:
            raise InputError(f"{url} was simulated in another geometry ({', '.join(differ)} differ from the "
                             f"--geometry file): spots from another geometry.")
    if "omega" in ds.coords and ds["omega"].size == count:
        omegas = np.asarray(ds["omega"].values, np.float64)
    else:
        omegas = geometry.omegas_deg[:count]
        if len(omegas) < count:
            raise InputError(f"{url} holds {count} frames but the geometry's rotation has {len(omegas)}.")
    if pixel_convention == "published":  # rows along z, columns along y, 1-based (Zhang & Lindkvist's code)
        y, z = z + 1.0, y + 1.0
    ny, nz = geometry.detector_shape
    outside = (y < -0.5) | (y > ny - 0.5) | (z < -0.5) | (z > nz - 0.5)
    if outside.mean() > 0.01:
        raise InputError(f"{outside.sum()} spots of {url} lie off the geometry's {ny} x {nz} detector: "
                         "spots from another geometry?")
    intensity = np.asarray(ds["spot_intensity"].values) if "spot_intensity" in ds else None
    area = np.asarray(ds["spot_area_px"].values) if "spot_area_px" in ds else None
    return {"frame": frame.astype(np.int64), "y": y, "z": z, "omegas": omegas, "intensity": intensity, "area": area}


class _SeedSearcher:
    """Per-actor stage, alive for the whole run: fetch the spots once, search batches of seeds.

    The spots travel as a ref inside each call (not the constructor), so a restarted actor never
    depends on a lost constructor argument.
    """

    def __init__(self, geometry: dict, params: dict):
        self.geometry = LabdctGeometry.from_dict(geometry)
        self.params = IndexingParams.from_dict(params)
        self.spots = None

    def _fetch(self, spots_refs: list) -> None:
        import ray

        if self.spots is None:
            self.spots = ray.get(spots_refs[0])

    def ready(self, spots_refs: list) -> bool:
        self._fetch(spots_refs)
        return True

    def run(self, seeds, available, spots_refs: list):
        self._fetch(spots_refs)
        return search_seeds(seeds, self.spots, available, self.geometry, self.params)


@contextlib.contextmanager
def seed_search_pool(measured, geometry: LabdctGeometry, params: IndexingParams, workers: int, on_start=None):
    """``search(batches, available)`` on ``workers`` actors that live as long as the block.

    Actors start once (a new pool per round would pay the start and the imports every round);
    batches go to whichever actor is free, results come back in batch order.
    """
    import ray
    from ray.util import ActorPool

    from rayproc.errors import Interrupted, user_error
    from rayproc.runtime.resources import require_resources

    require_resources(cpus=1.0)
    spots_ref = ray.put(measured)
    actor_cls = ray.remote(_SeedSearcher).options(num_cpus=1.0, max_restarts=-1, max_task_retries=-1)
    actors = [actor_cls.remote(geometry.to_dict(), params.to_dict()) for _ in range(workers)]
    if on_start is not None:
        on_start(actors, [spots_ref])
    pool = ActorPool(actors)

    def search(batches, available):
        available_ref = ray.put(np.asarray(available))
        try:
            return list(pool.map(lambda actor, batch: actor.run.remote(batch, available_ref, [spots_ref]), batches))
        except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
            cause = user_error(exc)
            if cause is None:
                raise
            raise cause from None
        except KeyboardInterrupt:
            raise Interrupted() from None

    try:
        yield search
    finally:
        for actor in actors:
            ray.kill(actor, no_restart=True)


def _record_table(record: dict) -> dict[str, np.ndarray]:
    grains = record["grains"]
    return {
        "seeds": np.asarray(record["seeds"], np.int64),
        "orientation": np.array([g["orientation"] for g in grains]).reshape(-1, 3, 3),
        "position": np.array([g["position"] for g in grains]).reshape(-1, 3),
        "predicted": np.array([g["predicted"] for g in grains], np.int64),
        "seed": np.array([g["seed"] for g in grains], np.int64),
        "counts": np.array([len(g["spots"]) for g in grains], np.int64),
        "spots": np.concatenate([g["spots"] for g in grains]).astype(np.int64) if grains else np.zeros(0, np.int64),
        "residual_px": np.concatenate([g["residual_px"] for g in grains]) if grains else np.zeros(0),
    }


def _record_from_table(table: dict) -> dict:
    bounds = np.concatenate([[0], np.cumsum(table["counts"])])
    grains = [{"orientation": table["orientation"][i], "position": table["position"][i],
               "predicted": int(table["predicted"][i]), "seed": int(table["seed"][i]),
               "spots": table["spots"][bounds[i]:bounds[i + 1]], "residual_px": table["residual_px"][bounds[i]:bounds[i + 1]]}
              for i in range(len(table["counts"]))]
    return {"seeds": table["seeds"], "grains": grains}


def grain_dataset(table: dict, spot_coord) -> xr.Dataset:
    """The grain table and per-spot assignment of :func:`~rayproc.labdct.indexing.index_grains` as a Dataset."""
    n = len(table["matched"])
    grain = {
        "grain_orientation": (("grain", "i", "j"), table["orientation"],
                              {"long_name": "crystal-to-sample rotation matrix U (fundamental zone)"}),
        "grain_rodrigues": (("grain", "xyz"), table["rodrigues"], {"long_name": "Rodrigues vector of U"}),
        "grain_centroid": (("grain", "xyz"), table["position"], {"units": "mm", "long_name": "position, sample frame"}),
        "grain_completeness": ("grain", table["completeness"], {"long_name": "matched / predicted spots"}),
        "grain_matched_spots": ("grain", table["matched"]),
        "grain_predicted_spots": ("grain", table["predicted"]),
        "grain_residual_px": ("grain", table["residual_px"], {"units": "pixel", "long_name": "mean spot residual"}),
        "grain_median_spot_intensity": ("grain", table["median_intensity"]),
        "grain_median_spot_area_px": ("grain", table["median_area_px"], {"units": "pixel"}),
        "grain_size": ("grain", table["size"], {"long_name": "cube root of the median spot intensity (relative)"}),
        "grain_round": ("grain", table["round"]),
        "grain_seed_spot": ("grain", table["seed"]),
    }
    spots = {
        "spot_grain": ("spot", table["spot_grain"], {"long_name": "grain of the spot (-1: none)"}),
        "spot_residual_px": ("spot", table["spot_residual_px"], {"units": "pixel"}),
    }
    return xr.Dataset({**grain, **spots}, coords={"grain": ("grain", np.arange(n)), "spot": ("spot", spot_coord)})


def index_labdct(
    spots: str,
    out: str,
    *,
    geometry: str,
    min_completeness: float = 0.5,
    angle_tol_deg: float = 0.5,
    match_px: float = 3.0,
    seeds_per_round: int = 32,
    pixel_convention: str = "auto",
    workers: int = 1,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    on_start=None,
) -> IndexReport:
    """Index the grains of a segmented stack into the zarr store ``out`` (see the module docstring).

    Parameters
    ----------
    spots : str
        A ``labdct segment`` (or ``labdct simulate``) store.
    out : str
        Output zarr store.
    geometry : str
        The ``geometry.json`` of the frames (every field of :data:`GEOMETRY_FIELDS`).
    min_completeness, angle_tol_deg, match_px, seeds_per_round :
        :class:`~rayproc.labdct.indexing.IndexingParams`.
    pixel_convention : {"auto", "rayproc", "published"}
        How the store's spot centroids map to the geometry's pixels: ``rayproc`` (axis 1 along
        y, axis 2 along z, 0-based) or ``published`` (the published code's reading of raw TIFF
        frames, labdct-fe-farfield/README.md: rows along z, columns along y, 1-based); ``auto``:
        ``published`` for spots segmented from TIFF frames (``source_format`` attr), else ``rayproc``.
    workers, address, cpus, storage_options, overwrite, progress, command, on_start :
        As for the other stages (``on_start`` receives the actor handles and the spots ref in a list, for their ``ready``).
    """
    from rayproc.options import check_counts, look_up_option

    check_counts(workers=workers, seeds_per_round=seeds_per_round)
    pixel_convention = look_up_option(pixel_convention, PIXEL_CONVENTIONS, name="pixel convention")
    params = IndexingParams(angle_tol_deg=angle_tol_deg, match_px=match_px, min_completeness=min_completeness,
                            seeds_per_round=seeds_per_round)
    geom = indexing_geometry(geometry)
    stage = ResumableStage.claim(out, [spots, geometry], storage_options=storage_options, overwrite=overwrite)
    ds = open_dataset(resolve(spots, storage_options))
    if pixel_convention == "auto":
        pixel_convention = "published" if ds.attrs.get("source_format") == "tiff-frames" else "rayproc"
    table = read_spot_table(ds, spots, geom, pixel_convention)
    measured = measured_spots(table["frame"], table["y"], table["z"], table["omegas"], geom,
                              intensity=table["intensity"], area=table["area"])
    spot_coord = np.asarray(ds["spot"].values)
    location = stage.location
    parameters = {"input": spots, "geometry": geom.to_dict(), "pixel_convention": pixel_convention,
                  **params.to_dict()}
    started = time.perf_counter()
    rounds_run = []
    with ray_session(address, cpus=cpus, workers=workers, actor_cpus=1.0):
        status = create_dataset(
            location, {}, attrs={"title": f"LabDCT grains indexed from {spots}"},
            provenance_attrs=provenance(command or command_line(), parameters), overwrite=overwrite,
            inputs=[spots, geometry],
        )
        if status != "complete":
            done = done_tasks(location)
            previous = []
            while round_task(len(previous)) in done:
                name = round_task(len(previous))
                previous.append(_record_from_table(task_tables(location, [name])[name]))

            def on_round(index, record):
                write_task(location, round_task(index), {}, table=_record_table(record))
                rounds_run.append(index)
                if progress:
                    print(f"round {index}: {len(record['grains'])} grains", flush=True)

            with seed_search_pool(measured, geom, params, workers, on_start) as search:
                result = index_grains(measured, geom, params, search=search, rounds=previous, on_round=on_round)
            append_variables(location, grain_dataset(result, spot_coord))
            write_task(location, GRAINS_TASK, {})
            finalize(location, [GRAINS_TASK, *(round_task(i) for i in range(len(previous) + len(rounds_run)))])
    stored = open_dataset(location)
    assigned = int((np.asarray(stored["spot_grain"].values) >= 0).sum())
    n_rounds = len([t for t in done_tasks(location) if t.startswith("round-")])
    return IndexReport(location.url, len(measured), int(stored.sizes["grain"]), assigned, n_rounds,
                       time.perf_counter() - started, status)


__all__ = ["GEOMETRY_FIELDS", "IndexReport", "PIXEL_CONVENTIONS", "grain_dataset", "index_labdct",
           "indexing_geometry", "read_spot_table"]
