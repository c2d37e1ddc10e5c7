"""Orchestration shell: start or join Ray, and run a stage on a pool of actors.

Embedded local Ray by default; an existing cluster when ``RAY_ADDRESS`` or ``--address`` is set.
"""

from rayproc.runtime.cluster import ray_session, shutdown
from rayproc.runtime.pool import run_stage

__all__ = ["ray_session", "shutdown", "run_stage"]
