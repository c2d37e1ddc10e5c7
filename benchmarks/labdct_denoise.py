"""Distributed LabDCT denoising: frames/s of 1 vs 2 actors on a 181-frame stack.

A zarr store of ``--frames`` Poisson frames of ``--size``^2 pixels (Gaussian spots on a smooth
background) is denoised with the shipped model (``rayproc/weights/labdct-default``, or a fresh
network of its size when it is absent), tiles of ``--tile`` px overlapping by 32, by 1 and by
2 actors (one CPU and one torch thread each); the clock starts once the actors are up.
Target: 2 actors >= 1.7x the frames/s of 1 actor on an idle machine with >= 2 cores.

    RAY_AUTH_MODE=disabled python benchmarks/labdct_denoise.py [--frames 181] [--size 256] [--tile 128]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def spot_frames(count: int, size: int, seed: int = 0):
    """Poisson frames: 40 Gaussian spots (sigma 1.5 px) per frame on a background of ~500 counts."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    background = 500 * (1 - 0.3 * np.hypot(yy / size - 0.5, xx / size - 0.5))
    frames = np.empty((count, size, size), np.float32)
    for index in range(count):
        clean = background.copy()
        for cy, cx, amplitude in zip(*rng.uniform(0, size, (2, 40)), rng.uniform(50, 2000, 40)):
            clean += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
        frames[index] = rng.poisson(clean)
    return frames


def denoise(src: str, out: str, workers: int, model, tile: int) -> float:
    """Run the pipeline; return the seconds since the actors were up."""
    from rayproc.pipelines.labdct.denoise import denoise_labdct

    started = {}

    def mark(actors):
        import ray

        ray.get([a.pid.remote() for a in actors])
        started["t"] = time.perf_counter()

    denoise_labdct(src, out, model=model, tile=tile, workers=workers, progress=False, on_start=mark)
    return time.perf_counter() - started["t"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=181)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--tile", type=int, default=128)
    args = parser.parse_args()

    import ray
    import torch
    import xarray as xr

    from rayproc.models.artifact import CONFIG_FILE, default_model_dir
    from rayproc.labdct.network import build_labdct_net
    from rayproc.storage import write_dataset

    shipped = default_model_dir("labdct-default")
    if (shipped / CONFIG_FILE).is_file():
        model, name = str(shipped), "shipped labdct-default"
    else:
        torch.manual_seed(0)
        model = build_labdct_net({"widths": [16, 32, 64, 128], "blocks": [3, 4, 6, 3]}).eval()
        name = "fresh network of the shipped size (no shipped model found)"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    with tempfile.TemporaryDirectory() as root:
        src = os.path.join(root, "frames.zarr")
        write_dataset(src, xr.Dataset({"projection": (("omega", "y", "x"), spot_frames(args.frames, args.size))}),
                      chunks={"projection": {"omega": 1}})
        denoise(src, os.path.join(root, "warm.zarr"), 2, model, args.tile)  # caches, first touches
        seconds = {w: denoise(src, os.path.join(root, f"w{w}.zarr"), w, model, args.tile) for w in (1, 2)}
    ray.shutdown()

    print(f"LabDCT denoising, {args.frames} frames of {args.size}^2, tiles {args.tile} (overlap 32), {name}; "
          f"cores: {os.cpu_count()}, load average {os.getloadavg()[0]:.1f}")
    for w, s in seconds.items():
        print(f"  {w} actor(s): {args.frames / s:6.2f} frames/s")
    print(f"  speed-up 2 vs 1 actors: {seconds[1] / seconds[2]:.2f}x (target >= 1.7x)")


if __name__ == "__main__":
    main()
