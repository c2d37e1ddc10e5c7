"""Start an embedded Ray, or join a running cluster."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

from rayproc.errors import RayprocError


def _start(address: str | None, cpus: int | None, workers: int, dashboard: bool) -> bool:
    import ray

    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS")
    kwargs = dict(include_dashboard=dashboard, logging_level=logging.WARNING, log_to_driver=True)
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
def ray_session(address: str | None = None, *, cpus: int | None = None, workers: int = 1, dashboard: bool = False):
    """Use Ray inside the block: join ``address``/``RAY_ADDRESS``, or start an embedded Ray.

    ``dashboard`` starts the embedded Ray's dashboard (Ray Train's controller queries it).

    A Ray already initialised by the caller (tests, notebooks, ``ray job submit``) is reused and
    left running; one started here is shut down on exit.
    """
    started = _start(address, cpus, workers, dashboard)
    try:
        yield
    finally:
        if started:
            shutdown()


def shutdown() -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()


__all__ = ["ray_session", "shutdown"]
