"""Start an embedded Ray, or join a running cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

from rayproc.errors import RayprocError


def _start(address: str | None, cpus: int | None, workers: int, dashboard: bool, worker_logs: bool = False) -> bool:
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    # Actors' own output (Ray's retry notices, tracebacks of errors rayproc reports in one line)
    # stays in the Ray logs unless RAYPROC_DEBUG is set.
    os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
    debug = worker_logs or bool(os.environ.get("RAYPROC_DEBUG"))
    kwargs = dict(include_dashboard=dashboard, logging_level=logging.WARNING, log_to_driver=debug)
    if address:
        _check_reachable(address)
        try:
            ray.init(address=address, **kwargs)
        except Exception as exc:  # ConnectionError, RuntimeError, TimeoutError...
            raise RayprocError(f"cannot reach the Ray cluster at {address}: {str(exc).splitlines()[0]}") from exc
        return True
    # An embedded cluster for this process: loopback only; a logical CPU count of at least the
    # number of workers so small machines never deadlock waiting for CPUs.
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=max(cpus or os.cpu_count() or 1, workers), **kwargs)
    return True


def _check_reachable(address: str, timeout: float = 3.0) -> None:
    """Fail fast with one line when nothing listens at ``address`` (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return
    hostport = address.split("://", 1)[-1].rstrip("/")
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise RayprocError(f"Ray address must look like host:port or ray://host:port; got {address!r}.")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise RayprocError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


@contextlib.contextmanager
def ray_session(address: str | None = None, *, cpus: int | None = None, workers: int = 1, dashboard: bool = False,
                worker_logs: bool = False, actor_cpus: float | None = None, actor_gpus: float = 0.0):
    """Use Ray inside the block: join ``address``/``RAY_ADDRESS``, or start an embedded Ray.

    ``dashboard`` starts the embedded Ray's dashboard (Ray Train's controller queries it).
    ``worker_logs`` forwards the workers' output to this process (training progress); otherwise
    it stays in Ray's log files unless ``RAYPROC_DEBUG`` is set. ``actor_cpus`` / ``actor_gpus``:
    the resources one actor of the stage will ask for, checked against the cluster on entry
    (:func:`rayproc.runtime.resources.require_resources`) so that an unmeetable request fails
    before any output is created.

    A Ray already initialised by the caller (tests, notebooks, ``ray job submit``) is reused and
    left running; one started here is shut down on exit.
    """
    started = _start(address, cpus, workers, dashboard, worker_logs)
    try:
        if actor_cpus is not None or actor_gpus:
            from rayproc.runtime.resources import require_resources

            require_resources(cpus=1.0 if actor_cpus is None else actor_cpus, gpus=actor_gpus)
        yield
    finally:
        if started:
            shutdown()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


__all__ = ["ray_session", "shutdown"]
