"""``rayproc bcdi simulate``: BCDI training volumes, sharded over Ray actors.

Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so the data do not depend on
how many workers ran; each worker writes its samples straight into the store (one chunk per
sample), and a rerun of the same command skips the samples already written.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass

import numpy as np
import xarray as xr

from rayproc.errors import InputError
from rayproc.bcdi.diffraction import random_sample_params, simulate_bcdi_sample
from rayproc.runtime import ray_session, run_stage
from rayproc.storage.outputs import claim_store
from rayproc.storage import (
    ArraySpec, Location, command_line, create_dataset, done_tasks, finalize, provenance, resolve, write_task,
)


def task_name(index: int) -> str:
    return f"sample-{index:07d}"


@dataclass(frozen=True)
class SimulationReport:
    url: str
    count: int
    computed: int
    status: str


class _SampleWriter:
    """Per-actor stage: simulate sample ``i`` and write it to its chunk."""

    def __init__(self, location: Location, size: int, seed: int):
        self.location, self.size, self.seed = location, size, seed

    def __call__(self, index: int) -> int:
        volume, _ = simulate_bcdi_sample(self.size, self.seed, index)
        write_task(self.location, task_name(index), {"intensity": ((index,), volume)})
        return index


def sample_coords(size: int, seed: int, count: int) -> dict[str, xr.Variable]:
    """Per-sample parameters as coordinates (drawn without rendering the volumes)."""
    params = [random_sample_params(size, np.random.default_rng([seed, i])) for i in range(count)]
    summaries = [p.summary() for p in params]
    coords = {
        "sample": xr.Variable("sample", np.arange(count), {"long_name": "sample index"}),
        "sample_seed": xr.Variable("sample", np.array([f"{seed},{i}" for i in range(count)]),
                                   {"long_name": "numpy default_rng entropy [seed, index]"}),
        "params_json": xr.Variable("sample", np.array([json.dumps(p.to_dict()) for p in params]),
                                   {"long_name": "all sample parameters (BcdiSampleParams JSON)"}),
    }
    for key in summaries[0]:
        values = np.array([s[key] for s in summaries])
        coords[key] = xr.Variable("sample", values, _SUMMARY_ATTRS.get(key, {}))
    for dim in ("z", "y", "x"):
        coords[dim] = xr.Variable(dim, np.arange(size), {"units": "pixel"})
    return coords


_SUMMARY_ATTRS = {
    "photons": {"units": "photons", "long_name": "total photon count"},
    "oversampling": {"units": "1", "long_name": "mean oversampling ratio"},
    "shape": {"long_name": "crystal shape family"},
}


def simulate_bcdi(
    out: str,
    *,
    count: int,
    size: int = 64,
    seed: int = 0,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    on_start=None,
) -> SimulationReport:
    """Simulate ``count`` BCDI volumes of ``size``^3 into the zarr store ``out``.

    Joins the Ray cluster at ``address`` (or ``RAY_ADDRESS``), else starts an embedded Ray with
    ``cpus`` CPUs; a Ray already running in this process is reused.
    """
    if count < 1:
        raise InputError(f"--count must be >= 1; got {count}.")
    if size < 16 or size % 2:
        raise InputError(f"--size must be an even number >= 16; got {size}.")
    if workers < 1:
        raise InputError(f"--workers must be >= 1; got {workers}.")
    location = resolve(out, storage_options)
    claim_store(location, overwrite=overwrite)
    params = {"count": count, "size": size, "seed": seed}
    with ray_session(address, cpus=cpus, workers=workers, actor_cpus=cpus_per_worker):
        status = create_dataset(
            location,
            {"intensity": ArraySpec(("sample", "z", "y", "x"), (count, size, size, size), "float32",
                                    chunks=(1, size, size, size),
                                    attrs={"units": "photons", "long_name": "simulated diffracted intensity"})},
            coords=sample_coords(size, seed, count),
            attrs={"title": "simulated BCDI diffraction patterns"},
            provenance_attrs=provenance(command or command_line(), params, seed=seed),
            overwrite=overwrite,
        )
        if status == "complete":
            return SimulationReport(location.url, count, 0, status)
        finished = done_tasks(location)
        todo = [i for i in range(count) if task_name(i) not in finished]
        stage = functools.partial(_SampleWriter, location, size, seed)
        computed = sum(1 for _ in run_stage(stage, todo, workers=workers, cpus_per_worker=cpus_per_worker,
                                            desc="simulating", progress=progress, on_start=on_start,
                                            done_before=count - len(todo), total=count))
    finalize(location, [task_name(i) for i in range(count)])
    return SimulationReport(location.url, count, computed, status)


__all__ = ["simulate_bcdi", "SimulationReport", "sample_coords", "task_name"]
