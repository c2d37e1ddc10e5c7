"""Check a resource request against what the cluster has, before submitting any work.

Ray waits forever for an actor no node can host ("No available node types can fulfill
resource request"); rayproc instead stops at once with one line naming what is missing.
Nodes that exist and the node types an autoscaler may add (its cluster config) both count.
"""

from __future__ import annotations

from rayproc.errors import RayprocError


class ResourceError(RayprocError):
    """A resource request no node of the cluster can ever meet."""


def node_shapes() -> list[dict[str, float]]:
    """Resources of each alive node and of each node type the autoscaler may start."""
    import ray

    shapes = [dict(n.get("Resources", {})) for n in ray.nodes() if n.get("Alive")]
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
        for group in getattr(config, "node_group_configs", []) or []:
            if group.max_count != 0:
                shapes.append(dict(group.resources))
    except Exception:  # no autoscaler, or a Ray without this (private) API
        pass
    return shapes


def require_resources(*, cpus: float = 1.0, gpus: float = 0.0, what: str = "an actor") -> None:
    """Raise :class:`ResourceError` when no node (present or autoscalable) fits ``cpus`` + ``gpus``."""
    shapes = node_shapes()
    fits = [s for s in shapes if s.get("CPU", 0) >= cpus and s.get("GPU", 0) >= gpus]
    if fits:
        return
    most_cpu = max((s.get("CPU", 0) for s in shapes), default=0)
    most_gpu = max((s.get("GPU", 0) for s in shapes), default=0)
    if gpus > most_gpu:
        raise ResourceError(f"{what} needs {gpus:g} GPU(s) but no node of this Ray cluster has "
                            f"{'any GPU' if most_gpu == 0 else f'more than {most_gpu:g}'} (drop --gpu, or join a "
                            "cluster with GPU nodes)")
    raise ResourceError(f"{what} needs {cpus:g} CPU(s) but the largest node of this Ray cluster has {most_cpu:g} "
                        f"(use --cpus-per-worker {most_cpu:g} or less)")


def require_cuda(device: str) -> None:
    """One line instead of torch's assertion when ``device`` is CUDA and this process has none."""
    if not str(device).startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"CUDA {torch.version.cuda}, but no GPU is visible"
        raise ResourceError(f"--gpu: no CUDA GPU in this process (torch {torch.__version__}, {build}); drop --gpu")


__all__ = ["ResourceError", "node_shapes", "require_resources", "require_cuda"]
