"""The resumable inference-stage shell: one output store, written task by task on Ray actors.

Every inference stage (``bcdi inpaint``, ``labdct denoise``, ...) runs the same steps, in this
order, so that a bad use fails before anything is written and a killed run resumes:

1. :meth:`ResumableStage.claim`: the output may be written (never a user's folder, never an
   input), checked before any computing;
2. the stage opens its input, resolves its model and plans its jobs (its own code);
3. :meth:`ResumableStage.run`: enter a Ray session whose actor request is checked against the
   cluster, create (or reopen) the output store, skip the jobs whose done marker exists, put
   the network and the input in the object store once, run the other jobs on the actor pool
   (Ctrl-C says how many of all the tasks are done), then mark the store complete.

A job is a frozen dataclass with a ``name`` (its done marker) and a ``shared`` field that the
shell fills with a :class:`SharedObjects`; actors call ``job.shared.fetch(device)`` on their
first job.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rayproc.runtime import ray_session, run_stage
from rayproc.storage import (
    ArraySpec, Location, command_line, create_dataset, done_tasks, finalize, provenance, resolve,
)
from rayproc.storage.inputs import InputArray, open_array
from rayproc.storage.outputs import claim_store


@dataclass(frozen=True)
class Actors:
    """The actor pool of a stage and the Ray cluster it runs on.

    ``workers`` actors with ``cpus_per_worker`` CPUs (and as many torch threads, at least one)
    and one GPU each when ``gpu``; ``address`` joins a cluster (or ``RAY_ADDRESS``), else an
    embedded Ray with ``cpus`` CPUs starts.
    """

    workers: int = 1
    gpu: bool = False
    cpus_per_worker: float = 1.0
    address: str | None = None
    cpus: int | None = None

    @property
    def gpus_per_worker(self) -> float:
        return 1.0 if self.gpu else 0.0

    @property
    def device(self) -> str:
        return "cuda" if self.gpu else "cpu"

    @property
    def threads(self) -> int:
        return max(1, int(self.cpus_per_worker))


@dataclass(frozen=True)
class SharedObjects:
    """What every job needs, by reference: the network, and the input array.

    The input is a store variable that actors re-open (and read regions of), or an array held in
    memory and put in Ray's object store. Jobs carry this small object (Ray refs inside a task
    argument) and each actor fetches once.
    """

    network_ref: Any
    location: Location | None = None
    variable: str | None = None
    array_ref: Any = None

    @classmethod
    def put(cls, network, data: InputArray) -> SharedObjects:
        """Put ``network`` (and ``data`` when it is not in a store) in Ray's object store."""
        import ray

        array_ref = None if data.location is not None else ray.put(np.asarray(data.data))
        return cls(ray.put(network), data.location, data.name, array_ref)

    def fetch(self, device: str = "cpu"):
        """The network (in eval mode on ``device``) and the input array (sliceable)."""
        import ray

        array = open_array(self.location, self.variable) if self.array_ref is None else ray.get(self.array_ref)
        network = ray.get(self.network_ref)
        return (None if network is None else network.to(device).eval()), array


@dataclass(frozen=True)
class SlabJob:
    """Frames ``start:stop`` of a stack: the unit of work (and of resuming) of a frame-wise stage."""

    name: str
    start: int
    stop: int
    shared: SharedObjects | None = None


def slab_task_name(start: int) -> str:
    """Done-marker name of the slab starting at frame ``start``."""
    return f"frames-{start:06d}"


def slab_jobs(count: int, frames_per_task: int) -> list[SlabJob]:
    """Slabs of ``frames_per_task`` whole frames covering a stack of ``count`` frames."""
    step = int(frames_per_task)
    return [SlabJob(slab_task_name(start), start, min(start + step, count)) for start in range(0, count, step)]


@dataclass(frozen=True)
class StageResult:
    """``status`` of the store when the run began (``created``, ``resumed`` or ``complete``) and
    what the actors returned for the jobs computed now (none when it was complete)."""

    status: str
    results: list

    @property
    def computed(self) -> int:
        return len(self.results)


def output_attrs(input_attrs: Mapping[str, Any], title: str) -> dict:
    """Root attrs of an output: the input's, its provenance kept as ``input_provenance``, and ``title``."""
    attrs = {k: v for k, v in input_attrs.items() if k not in ("provenance", "rayproc_status")}
    if "provenance" in input_attrs:
        attrs["input_provenance"] = input_attrs["provenance"]
    return {**attrs, "title": title}


@dataclass(frozen=True)
class ResumableStage:
    """An output store claimed for a stage, and the inputs it is computed from."""

    location: Location
    inputs: tuple
    overwrite: bool = False

    @classmethod
    def claim(cls, out: str, inputs: Sequence, *, storage_options: dict | None = None,
              overwrite: bool = False) -> ResumableStage:
        """Check, before any computing, that rayproc may write the store ``out``.

        ``inputs`` (paths or URLs; None entries are skipped) must lie apart from the output and
        are fingerprinted when the store is created.
        """
        location = resolve(out, storage_options)
        claim_store(location, inputs=inputs, overwrite=overwrite)
        return cls(location, tuple(inputs), overwrite)

    def run(
        self,
        arrays: Mapping[str, ArraySpec],
        jobs: Sequence,
        factory: Callable[[], Callable[[Any], Any]],
        *,
        network,
        data: InputArray,
        actors: Actors,
        parameters: Mapping[str, Any],
        coords: Mapping | None = None,
        attrs: Mapping | None = None,
        command: str | None = None,
        desc: str = "working",
        progress: bool = True,
        on_start: Callable[[list], None] | None = None,
        prepare: Callable[[set[str]], None] | None = None,
        driver_tasks: Sequence[str] = (),
        finish: Callable[[], None] | None = None,
    ) -> StageResult:
        """Create or resume the output store and run the jobs not yet done on the actors.

        Parameters
        ----------
        arrays : mapping of str to ArraySpec
            The output variables.
        jobs : sequence of dataclass
            Every job of the stage (``name`` and ``shared`` fields); those already done are skipped.
        factory : callable
            Builds the per-actor stage (called once per actor), which computes and writes a job.
        network : torch.nn.Module or None
            Put in the object store once; see :class:`SharedObjects` (None: a stage without one).
        data : InputArray
            The input the jobs read; see :class:`SharedObjects`.
        actors : Actors
            The pool and its cluster; the request is checked before the store is created.
        parameters : mapping
            Provenance parameters: a store made with others is refused (unless ``overwrite``).
        coords, attrs : mapping, optional
            Coordinates and root attrs of the output.
        command : str, optional
            Command line recorded in the provenance (default: this process's).
        desc, progress, on_start
            Progress bar label, whether to show it, and a callback receiving the actor handles.
        prepare : callable, optional
            Receives the names of the tasks already done and writes the driver's own tasks
            before the actors start (e.g. the masks of ``bcdi inpaint``).
        driver_tasks : sequence of str
            Names of the tasks ``prepare`` writes; the store is complete only with them too.
        finish : callable, optional
            Runs on the driver once every job is done, before the store is marked complete
            (e.g. gathering the jobs' tables into one); it must be idempotent.

        Returns
        -------
        StageResult
        """
        with ray_session(actors.address, cpus=actors.cpus, workers=actors.workers,
                         actor_cpus=actors.cpus_per_worker, actor_gpus=actors.gpus_per_worker):
            status = create_dataset(
                self.location, arrays, coords=coords, attrs=attrs,
                provenance_attrs=provenance(command or command_line(), parameters), overwrite=self.overwrite,
                inputs=list(self.inputs),
            )
            if status == "complete":
                return StageResult(status, [])
            finished = done_tasks(self.location)
            if prepare is not None:
                prepare(finished)
            todo = [job for job in jobs if job.name not in finished]
            shared = SharedObjects.put(network, data)
            results = list(run_stage(
                factory, [dataclasses.replace(job, shared=shared) for job in todo], workers=actors.workers,
                cpus_per_worker=actors.cpus_per_worker, gpus_per_worker=actors.gpus_per_worker, desc=desc,
                progress=progress, on_start=on_start, done_before=len(jobs) - len(todo), total=len(jobs)))
        if finish is not None:
            finish()
        finalize(self.location, [*driver_tasks, *(job.name for job in jobs)])
        return StageResult(status, results)


__all__ = ["Actors", "ResumableStage", "SharedObjects", "SlabJob", "StageResult", "output_attrs", "slab_jobs",
           "slab_task_name"]
