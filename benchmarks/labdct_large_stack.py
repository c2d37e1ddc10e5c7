"""A full-size LabDCT scan through denoise and segment: time, and peak memory per process.

The stack: ``--frames`` frames (default 181) of ``--size``² px (default 2032², the Laue-focusing
detector), float32, ~3 GB: the 41 real far-field iron frames of ``../shared/data`` cycled and
upsampled 2x (each pixel repeated 2 x 2, then cropped), written frame by frame to a zarr store.
``rayproc labdct denoise`` (shipped network, ``--workers`` actors) and ``rayproc labdct segment
--method standard`` then run on it as a user runs them; a sampler reads the resident memory of
the command and of every process it starts (Ray's GCS, raylet, the stage actors) twice a
second. Printed: the run time, per-frame cost, peak MB of the driver, of one stage actor and of
all processes together, next to the stack's size and one slab's; objects spilled by Ray.

    RAY_AUTH_MODE=disabled python benchmarks/labdct_large_stack.py [--frames 181] [--size 2032] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
REAL = Path(__file__).resolve().parents[2] / "shared" / "data" / "labdct-fe-farfield"


def write_stack(path: Path, frames: int, size: int) -> None:
    """``frames`` real frames (cycled, upsampled 2x, cropped to ``size``) as ``intensity`` in a zarr store."""
    import numpy as np
    import tifffile
    import zarr

    files = sorted(REAL.glob("*.tif*"))
    if not files:
        sys.exit(f"no real frames in {REAL}")
    group = zarr.open_group(str(path), mode="w-", zarr_format=3)
    array = group.create_array("intensity", shape=(frames, size, size), chunks=(1, size, size), dtype="float32",
                               dimension_names=["frame", "det_y", "det_z"])
    for k in range(frames):
        frame = tifffile.imread(files[k % len(files)]).astype(np.float32)
        array[k] = np.repeat(np.repeat(frame, 2, axis=0), 2, axis=1)[:size, :size]
    with warnings.catch_warnings():  # "consolidated metadata is not part of the v3 spec": xarray reads it
        warnings.simplefilter("ignore")
        zarr.consolidate_metadata(str(path))


class PeakSampler(threading.Thread):
    """Peak resident MB of a command and the processes it starts, by role."""

    def __init__(self, pid: int, period: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.period = pid, period
        self.peaks: dict[str, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        import psutil

        root = psutil.Process(self.pid)
        while not self.stop.is_set():
            total = 0.0
            try:
                processes = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for proc in processes:
                try:
                    mb = proc.memory_info().rss / 2**20
                    text = " ".join(proc.cmdline())
                except psutil.Error:
                    continue
                role = ("driver" if proc.pid == self.pid else "stage actor" if "_StageActor" in text
                        else "other Ray processes")
                total += mb
                self.peaks[role] = max(self.peaks.get(role, 0.0), mb)
            self.peaks["all together"] = max(self.peaks.get("all together", 0.0), total)
            self.stop.wait(self.period)


def run_measured(args: list[str], temp_dir: Path) -> tuple[float, dict[str, float]]:
    import ray  # noqa: F401  (puts Ray's bundled psutil on the path)

    env = {**os.environ, "RAY_TMPDIR": str(temp_dir)}
    began = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "rayproc", *args], env=env)
    sampler = PeakSampler(proc.pid)
    sampler.start()
    if proc.wait() != 0:
        sys.exit(f"rayproc {' '.join(args)} failed")
    sampler.stop.set()
    sampler.join()
    return time.perf_counter() - began, sampler.peaks


def spilled(temp_dir: Path) -> tuple[int, int]:
    files = [p for p in temp_dir.rglob("*") if "spill" in str(p) and p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=181)
    parser.add_argument("--size", type=int, default=2032)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--root", default=None, help="folder for the stores (default: a temporary one)")
    args = parser.parse_args()
    root = Path(args.root or tempfile.mkdtemp(prefix="labdct-large-"))
    stack = root / "stack.zarr"
    if not stack.exists():
        began = time.perf_counter()
        write_stack(stack, args.frames, args.size)
        print(f"wrote {stack} in {time.perf_counter() - began:.0f} s")
    stack_mb = args.frames * args.size**2 * 4 / 2**20
    slab_mb = 4 * args.size**2 * 4 / 2**20
    print(f"stack: {args.frames} frames of {args.size}^2 float32, {stack_mb:,.0f} MB; one slab of 4 frames "
          f"{slab_mb:,.0f} MB (+ the rolling-median halo for segment)")
    workers = ["--workers", str(args.workers), "--cpus", str(args.workers), "--no-progress"]
    for name, command in (("denoise", ["labdct", "denoise", str(stack), str(root / "denoised.zarr"), *workers]),
                          ("segment (standard)", ["labdct", "segment", str(stack), str(root / "spots.zarr"),
                                                  "--method", "standard", *workers])):
        temp_dir = Path(tempfile.mkdtemp(prefix="ray-", dir="/tmp"))
        seconds, peaks = run_measured(command, temp_dir)
        files, size = spilled(temp_dir)
        print(f"{name}: {seconds:.0f} s, {seconds / args.frames:.2f} s per frame ({args.workers} actors); peak MB: "
              + ", ".join(f"{role} {mb:,.0f}" for role, mb in sorted(peaks.items()))
              + f"; spilled: {files} files, {size / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
