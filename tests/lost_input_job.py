"""A Ray job for tests/test_multinode.py: the only copy of a stage's shared input is on a lost node.

    python tests/lost_input_job.py NODE_RESOURCE FRAMES

1. a task placed (softly) on the node with the custom resource ``NODE_RESOURCE`` makes the input
   stack, so its one copy lives in that node's object store; the driver prints where it is and
   ``READY``, then waits until the node is dead (the test kills it);
2. the stage's actors (on the other nodes) fetch the input through
   :class:`rayproc.pipelines._stage.SharedObjects`: Ray finds no copy and re-runs the task elsewhere
   (lineage reconstruction); the driver prints every slab's sum and where the input lives now.
"""

import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the working dir

import numpy as np  # noqa: E402

FRAME = (128, 128)  # 64 KiB a frame: the stack is far above Ray's 100 KiB inline limit


def input_stack(frames: int) -> np.ndarray:
    """The job's input, a pure function of ``frames`` (the test computes the expected sums from it)."""
    return np.random.default_rng(19).random((frames, *FRAME), dtype=np.float32)


def slab_sum_stage():
    """The per-actor stage: the sum of a slab of the shared input (float64)."""

    def run(job):
        _, array = job.shared.fetch()
        return job.start, float(np.asarray(array[job.start:job.stop], dtype=np.float64).sum())

    return run


def _node_of(resource: str) -> dict:
    import ray

    return next(n for n in ray.nodes() if resource in n["Resources"] or resource in n.get("Labels", {}))


def _locations(ref, timeout_s: float = 30) -> list[str]:
    """The nodes holding ``ref`` (the object directory learns of a new copy a moment after it is made)."""
    import ray

    deadline = time.monotonic() + timeout_s
    while not (nodes := ray.experimental.get_object_locations([ref])[ref]["node_ids"]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return nodes


def main(resource: str, frames: int) -> int:
    import dataclasses

    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rayproc.pipelines._stage import SharedObjects, slab_jobs
    from rayproc.runtime import run_stage

    ray.init()
    victim = _node_of(resource)
    make = ray.remote(input_stack).options(  # no CPU: the stage's actors hold them all when it is re-run
        num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(victim["NodeID"], soft=True))
    ref = make.remote(frames)
    ray.wait([ref], fetch_local=False)
    before = _locations(ref)
    print(json.dumps({"input_on": before, "victim": victim["NodeID"]}), flush=True)
    print("READY", flush=True)
    deadline = time.monotonic() + 120
    while any(n["NodeID"] == victim["NodeID"] and n["Alive"] for n in ray.nodes()):
        if time.monotonic() > deadline:
            print("the victim node was not lost", file=sys.stderr)
            return 1
        time.sleep(0.5)
    shared = SharedObjects(ray.put(None), array_ref=ref)
    jobs = [dataclasses.replace(job, shared=shared) for job in slab_jobs(frames, 2)]
    sums = dict(run_stage(slab_sum_stage, jobs, workers=2, progress=False))
    after = _locations(ref)
    print(json.dumps({"sums": {str(k): v for k, v in sorted(sums.items())}, "input_on_after": after}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2])))
