"""Run a stage over many items on a pool of Ray actors.

A *stage* is a plain callable built once per actor by ``factory()`` (e.g. loading a model) and
called once per item. Actors restart when killed and their tasks are retried, so a job survives
a lost worker; in-flight work is bounded.
"""

from __future__ import annotations

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

    from rayproc.errors import Interrupted, user_error
    from rayproc.runtime.resources import require_resources

    items = list(items)
    if not items:
        return
    require_resources(cpus=cpus_per_worker, gpus=gpus_per_worker)
    total = done_before + len(items) if total is None else total
    workers = max(1, min(workers, len(items)))
    actor_cls = ray.remote(_StageActor).options(
        num_cpus=cpus_per_worker, num_gpus=gpus_per_worker, max_restarts=-1, max_task_retries=-1
    )
    actors = [actor_cls.remote(factory, cpus_per_worker) for _ in range(workers)]
    if on_start:
        on_start(actors)
    pending: dict = {}  # ref -> actor slot
    busy = [0] * workers
    queue = iter(items)
    limit = workers * in_flight_per_worker
    bar = tqdm(total=len(items), desc=desc, unit="item", disable=not progress, mininterval=1.0)

    def submit() -> bool:
        item = next(queue, _END)
        if item is _END:
            return False
        slot = busy.index(min(busy))  # least-loaded actor
        busy[slot] += 1
        pending[actors[slot].run.remote(item)] = slot
        return True

    finished = 0
    try:
        while len(pending) < limit and submit():
            pass
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            busy[pending.pop(ref)] -= 1
            try:
                result = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayActorError) as exc:
                cause = user_error(exc)
                if cause is None:
                    raise
                raise cause from None
            finished += 1
            bar.update(1)
            submit()
            yield result
    except (KeyboardInterrupt, Interrupted):
        raise Interrupted(done_before + finished, total) from None
    finally:
        bar.close()
        if pending:  # tasks in flight would be retried (and say so) on killed actors
            for ref in pending:
                ray.cancel(ref, force=False)
        for actor in actors:
            ray.kill(actor, no_restart=True)


__all__ = ["run_stage"]
