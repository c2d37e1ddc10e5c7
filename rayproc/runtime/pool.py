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
        self._stage = factory()

    def run(self, item):
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
) -> Iterator[Any]:
    """Yield ``stage(item)`` for every item, computed on ``workers`` actors, in completion order.

    ``on_start`` receives the actor handles (tests use it to kill one mid-job).
    """
    import ray

    items = list(items)
    if not items:
        return
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

    try:
        while len(pending) < limit and submit():
            pass
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            ref = done[0]
            busy[pending.pop(ref)] -= 1
            result = ray.get(ref)
            bar.update(1)
            submit()
            yield result
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor, no_restart=True)


__all__ = ["run_stage"]
