"""Run a stage over many items on a pool of Ray actors.

A *stage* is a plain callable built once per actor by ``factory()`` (e.g. loading a model) and
called once per item. Actors restart when killed, and the items of a lost actor go to the other
actors meanwhile, so a job survives a lost worker or a lost node; in-flight work is bounded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from tqdm.auto import tqdm


_END = object()


def _limit_codec_threads(cpus: float) -> None:
    """Keep Blosc (de)compression to the actor's CPU share; by default it uses every core."""
    import numcodecs.blosc

    numcodecs.blosc.set_nthreads(max(1, int(cpus)))


class _StageActor:
    def __init__(self, factory: Callable[[], Callable[[Any], Any]], cpus: float = 1.0):
        from rayproc.runtime.memory import retain_freed_memory

        _limit_codec_threads(cpus)
        retain_freed_memory()
        # An error building the stage (a model or store that cannot be opened) is raised by every
        # task, so that it reaches the driver as itself rather than as "the actor died".
        self._stage, self._error = None, None
        try:
            self._stage = factory()
        except Exception as exc:
            self._error = exc

    def run(self, item):
        if self._error is not None:
            raise self._error
        return self._stage(item)

    def pid(self) -> int:
        import os

        return os.getpid()


def run_stage(
    factory: Callable[[], Callable[[Any], Any]],
    items: Iterable[Any],
    *,
    workers: int = 1,
    cpus_per_worker: float = 1.0,
    gpus_per_worker: float = 0.0,
    in_flight_per_worker: int = 2,
    desc: str = "working",
    progress: bool = True,
    on_start: Callable[[list], None] | None = None,
    done_before: int = 0,
    total: int | None = None,
) -> Iterator[Any]:
    """Yield ``stage(item)`` for every item, computed on ``workers`` actors, in completion order.

    The request (``cpus_per_worker``, ``gpus_per_worker``) is checked against the cluster first
    (:func:`rayproc.runtime.resources.require_resources`). An error a user caused inside an actor
    (:func:`rayproc.errors.user_error`) is re-raised here as itself; Ctrl-C becomes
    :class:`rayproc.errors.Interrupted` counting ``done_before`` plus the items finished, of
    ``total`` (default: ``done_before`` + the items). ``on_start`` receives the actor handles
    (tests use it to kill one mid-job).
    """
    import ray

    from rayproc.errors import Interrupted, RayprocError, user_error
    from rayproc.runtime.resources import require_resources

    items = list(items)
    if not items:
        return
    require_resources(cpus=cpus_per_worker, gpus=gpus_per_worker)
    total = done_before + len(items) if total is None else total
    workers = max(1, min(workers, len(items)))
    # Ray restarts a lost actor (on any node with room), but its tasks are not retried there: an
    # actor on a lost node may wait for room forever, so the driver hands its items to the others.
    actor_cls = ray.remote(_StageActor).options(
        num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=0
    )
    actors = [actor_cls.remote(factory, cpus_per_worker) for _ in range(workers)]
    if on_start:
        on_start(actors)
    pool = _Pool(actors, items, workers * in_flight_per_worker)
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress, mininterval=1.0)
    finished = 0
    try:
        pool.fill()
        while pool.busy():
            done, _ = ray.wait(pool.refs(), num_returns=1)
            ref = done[0]
            if pool.probe_returned(ref):
                pool.fill()
                continue
            slot, index = pool.returned(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # the actor (or its node) was lost mid-task
                cause = user_error(exc)
                if cause is not None:
                    raise cause from None
                if pool.attempts[index] >= MAX_ATTEMPTS:
                    raise RayprocError(f"{desc}: item {index} lost its worker {MAX_ATTEMPTS} times; "
                                       f"last: {str(exc).splitlines()[0]}") from None
                if pool.healthy[slot]:
                    logging.getLogger("rayproc").warning(
                        "rayproc: %s: lost worker %d (%s); its items go to the other workers",
                        desc, slot, type(exc).__name__)
                pool.lost(slot, index)
                pool.fill()
                continue
            except ray.exceptions.RayTaskError as exc:
                cause = user_error(exc)
                if cause is None:
                    raise
                raise cause from None
            finished += 1
            bar.update(1)
            pool.fill()
            yield result
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(done_before + finished, total) from None
    finally:
        bar.close()
        for ref in pool.task_refs():  # stop the tasks still in flight before their actors go
            ray.cancel(ref, force=False)
        for actor in actors:
            ray.kill(actor, no_restart=True)


# Times one item may lose its actor (a lost node, an actor killed by the OOM killer) before the
# stage fails: an item that kills every actor it runs on must not loop forever.
MAX_ATTEMPTS = 4


class _Pool:
    """Items in flight on actors: least-loaded placement, and lost actors set aside until they answer.

    An actor whose task failed because the actor was lost gets no new items until a probe (its
    ``pid``) returns, i.e. until Ray has restarted it; its items go back to the queue meanwhile.
    """

    def __init__(self, actors: list, items: list, limit: int):
        self.actors = actors
        self.items = items
        self.queue = list(range(len(items)))[::-1]  # item indices, next at the end
        self.limit = limit
        self.load = [0] * len(actors)
        self.healthy = [True] * len(actors)
        self.attempts = [0] * len(items)
        self.tasks: dict = {}  # ref -> (slot, item index)
        self.probes: dict = {}  # ref -> slot

    def busy(self) -> bool:
        return bool(self.tasks or self.queue)

    def refs(self) -> list:
        return [*self.tasks, *self.probes]

    def task_refs(self) -> list:
        return list(self.tasks)

    def fill(self) -> None:
        while self.queue and len(self.tasks) < self.limit:
            slots = [s for s in range(len(self.actors)) if self.healthy[s]]
            if not slots:
                return  # every actor lost: wait for a probe (Ray restarts them where there is room)
            slot = min(slots, key=lambda s: self.load[s])
            index = self.queue.pop()
            self.load[slot] += 1
            self.attempts[index] += 1
            self.tasks[self.actors[slot].run.remote(self.items[index])] = (slot, index)

    def returned(self, ref) -> tuple[int, int]:
        """(actor slot, item index) of the finished task ``ref``."""
        slot, index = self.tasks.pop(ref)
        self.load[slot] -= 1
        return slot, index

    def lost(self, slot: int, index: int) -> None:
        """Item ``index`` failed with the actor in ``slot``: requeue the item, probe the actor."""
        self.queue.append(index)
        if self.healthy[slot]:
            self.healthy[slot] = False
            self.probes[self.actors[slot].pid.remote()] = slot

    def probe_returned(self, ref) -> bool:
        """Whether ``ref`` was a probe; the actor is healthy again when it answered."""
        import ray

        slot = self.probes.pop(ref, None)
        if slot is None:
            return False
        try:
            ray.get(ref)
            self.healthy[slot] = True
        except ray.exceptions.RayActorError:  # not back yet: ask again
            self.probes[self.actors[slot].pid.remote()] = slot
        return True


__all__ = ["run_stage"]
