"""BCDI simulation throughput with 1 and 2 Ray workers, measured side by side in one run.

Target: 2 workers >= 1.8x the samples/s of 1 worker on a 2-core machine.
Actors are started and warmed before the clock starts, so the ratio measures the sharded work
(simulate + compress + write one chunk per sample), not Ray start-up.

    RAY_AUTH_MODE=disabled python benchmarks/simulate_scaling.py [--count 24] [--size 96]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def run(workers: int, count: int, size: int, root: str) -> float:
    from rayproc.pipelines.bcdi.simulate import simulate_bcdi

    started = {}

    def mark(actors):
        import ray

        ray.get([a.pid.remote() for a in actors])  # actors up and imported before timing
        started["t"] = time.perf_counter()

    simulate_bcdi(os.path.join(root, f"w{workers}.zarr"), count=count, size=size, seed=0,
                  workers=workers, progress=False, on_start=mark)
    return count / (time.perf_counter() - started["t"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=24)
    parser.add_argument("--size", type=int, default=96)
    args = parser.parse_args()

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as root:
        run(2, 2, args.size, root + "/warm")  # import caches, first-touch costs
        rates = {w: run(w, args.count, args.size, root) for w in (1, 2)}
    ray.shutdown()
    print(f"BCDI simulation, {args.count} samples of {args.size}^3, cores: {os.cpu_count()}")
    for w, rate in rates.items():
        print(f"  {w} worker(s): {rate:6.2f} samples/s")
    print(f"  speed-up 2 vs 1 workers: {rates[2] / rates[1]:.2f}x (target >= 1.8x)")


if __name__ == "__main__":
    main()
