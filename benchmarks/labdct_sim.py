"""LabDCT forward-simulation speed, measured side by side in one run.

Prints voxel-reflection pairs per second per core (all pairs of sample voxels and reflections a
projection considers; the grain-level pre-filter skips most of them cheaply), projections per
minute for the D35 preset on the full 2032^2 Laue-focusing detector, and the speed-up of 2 Ray
workers over 1 (target >= 1.8x on 2 cores).

    RAY_AUTH_MODE=disabled python benchmarks/labdct_sim.py [--projections 24] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def single_core(n: int) -> tuple[float, float]:
    from rayproc.labdct.crystallography import reflection_set
    from rayproc.labdct.geometry import GEOMETRY_PRESETS
    from rayproc.labdct.projection import simulate_projection
    from rayproc.labdct.polycrystal import make_polycrystal

    geom = GEOMETRY_PRESETS["laue_focusing"]
    sample = make_polycrystal("D35", np.random.default_rng(0))
    reflections = reflection_set(geom.material, 4)
    simulate_projection(sample, geom, 0.0)  # warm caches (spectrum, tables)
    t0 = time.perf_counter()
    for omega in np.linspace(0, 360, n, endpoint=False):
        simulate_projection(sample, geom, float(omega), reflections=reflections)
    seconds = (time.perf_counter() - t0) / n
    return sample.n_voxels * len(reflections.hkl) / seconds, 60 / seconds


def with_workers(workers: int, n: int, root: str, tag: str) -> float:
    from rayproc.pipelines.labdct.simulate import simulate_labdct

    started = {}

    def mark(actors):
        import ray

        ray.get([a.pid.remote() for a in actors])
        started["t"] = time.perf_counter()

    simulate_labdct(os.path.join(root, f"w{workers}-{tag}.zarr"), preset="D35", projections=n, workers=workers,
                    progress=False, on_start=mark)
    return 60 * n / (time.perf_counter() - started["t"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--projections", type=int, default=24)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    pairs_per_s, per_minute = single_core(4)

    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as root:
        with_workers(2, 4, root, "warm-up")  # first store writes, imports in the worker processes
        rates = {1: [], 2: []}
        for repeat in range(args.repeats):  # paired runs, alternating which goes first
            for w in (1, 2) if repeat % 2 == 0 else (2, 1):
                rates[w].append(with_workers(w, args.projections, root, str(repeat)))
    ray.shutdown()
    print("LabDCT simulation, D35 preset, Laue focusing 2032^2 detector, 4 {hkl} families")
    print(f"  voxel-reflection pairs per second per core: {pairs_per_s:.3g}")
    print(f"  projections per minute, 1 core, in-process:  {per_minute:.1f}")
    for w, rate in rates.items():
        print(f"  projections per minute, {w} Ray worker(s) (store writes included): {np.median(rate):.1f} (median)")
    ratios = np.divide(rates[2], rates[1])
    print(f"  speed-up 2 vs 1 workers: median {np.median(ratios):.2f}x, per pair "
          f"{' '.join(f'{r:.2f}' for r in ratios)} (target >= 1.8x)")


if __name__ == "__main__":
    main()
