"""Cost curves on one core: time and peak memory against volume size, number of volumes and frames.

Every point runs in a fresh process (torch on one thread; peak memory = that process's peak
resident set, the Python + torch + model baseline included), in this order:

* BCDI inpainting (``inpaint_bcdi``, the shipped model, ``--workers 0``: the same chunks and
  stores as the actors, in this process) of one ``N``^3 volume, ``N`` = 64 .. 512, with a 6 px
  cross that grows with the volume (two planes through it) and with one of fixed area (a cross
  inside a 64^3 box, stored as the input's ``mask``);
* BCDI simulation (the pure core, ``simulate_bcdi_sample``) and inpainting of 1 .. k volumes of 64^3;
* LabDCT, per frame: forward simulation (D35 on the Laue-focusing detector), denoising (the
  shipped network) and segmentation (the standard routine), on frames binned ``--binning`` x.

A straight line ``t = a + b n`` is fitted to every series; ``b`` is the per-item cost (seconds
per 32^3 portion, per voxel passed through, per volume, per frame) that ``cluster/README.md``'s
capacity table uses. The figure goes to ``--figure``, the numbers to ``--json``.

    RAY_AUTH_MODE=disabled nice python benchmarks/scaling_curves.py [--sizes 64,128,256,512] [--stride 32]
        [--volumes 1,2,4] [--frames 4,8,16] [--binning 4] [--figure docs/figures/scaling_curves.png]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("OMP_NUM_THREADS", "1")
HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent)]


def _peak_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------- points (one process each)


def point_inpaint(size: int, gap: str, stride: int, volumes: int = 1) -> dict:
    from _volumes import write_volume_store
    from rayproc.pipelines.bcdi.inpaint import inpaint_bcdi

    root = tempfile.mkdtemp(prefix="curves-", dir=os.environ.get("CURVES_TMP"))
    half = size // 2
    gaps = [] if gap == "fixed" else [f"x:{half - 3}:6", f"y:{half - 3}:6"]
    sources = []
    for v in range(volumes):
        sources.append(f"{root}/in{v}.zarr")
        write_volume_store(sources[-1], size, mask_box=64 if gap == "fixed" else None, seed=v)
    windows, t0 = 0, time.perf_counter()
    for v, source in enumerate(sources):
        report = inpaint_bcdi(source, f"{root}/out{v}.zarr", gaps=gaps, stride=stride, workers=0, progress=False)
        windows += report.windows
    seconds = time.perf_counter() - t0
    computed = volumes * portions_computed(sources[0], gaps, stride)
    subprocess.run(["rm", "-rf", root], check=False)
    return {"seconds": seconds, "windows": windows, "computed": computed, "voxels": volumes * size**3,
            "peak_mb": _peak_mb()}


def portions_computed(source: str, gaps: list[str], stride: int, chunk: int = 128) -> int:
    """Portions the network runs on: every chunk computes each window that touches it, so a window
    across a chunk border is computed by each chunk it touches."""
    from rayproc.bcdi.inpaint import plan_windows
    from rayproc.pipelines.bcdi.inpaint import target_mask
    from rayproc.stitching import plan_chunks

    mask = target_mask(source, gaps=gaps)
    origins = plan_windows(mask, stride=stride)
    return sum(len(task.windows) for task in plan_chunks(mask.shape, chunk, origins, 32))


def point_simulate(count: int, size: int) -> dict:
    from rayproc.bcdi.diffraction import simulate_bcdi_sample

    simulate_bcdi_sample(size, 0, 0)  # warm
    t0 = time.perf_counter()
    for index in range(count):
        simulate_bcdi_sample(size, 0, index)
    return {"seconds": time.perf_counter() - t0, "peak_mb": _peak_mb()}


def point_labdct(stage: str, frames: int, binning: int) -> dict:
    import numpy as np

    from rayproc.labdct.crystallography import reflection_set
    from rayproc.labdct.polycrystal import make_polycrystal
    from rayproc.labdct.projection import simulate_projection
    from rayproc.pipelines.labdct.simulate import load_geometry

    geometry = load_geometry("laue_focusing", binning=binning)
    sample = make_polycrystal("D35", np.random.default_rng(0))
    reflections = reflection_set(geometry.material, 4)
    omegas = np.linspace(0, 360, frames, endpoint=False)
    if stage == "simulate":
        simulate_projection(sample, geometry, 0.0, reflections=reflections)  # warm tables
        t0 = time.perf_counter()
        for omega in omegas:
            simulate_projection(sample, geometry, float(omega), reflections=reflections)
        return {"seconds": time.perf_counter() - t0, "pixels": int(np.prod(geometry.detector_shape)),
                "peak_mb": _peak_mb()}
    rng = np.random.default_rng(1)
    shape = tuple(int(n) for n in geometry.detector_shape)
    stack = rng.poisson(150.0, size=(frames, *shape)).astype(np.float32)  # cost does not depend on content
    if stage == "denoise":
        from rayproc.labdct.denoise import denoise_frames
        from rayproc.models.artifact import resolve_model
        from rayproc.pipelines.labdct.segment import spot_scale

        network, resolved = resolve_model(None, "labdct", device="cpu")
        scale = spot_scale(resolved)
        t0 = time.perf_counter()
        denoise_frames(stack, network, scale=scale)
    else:
        from rayproc.labdct.standard_routine import StandardRoutineParams, standard_routine

        t0 = time.perf_counter()
        standard_routine(stack, StandardRoutineParams())
    return {"seconds": time.perf_counter() - t0, "pixels": int(np.prod(shape)), "peak_mb": _peak_mb()}


def run_point(kind: str, **kwargs) -> dict:
    """One point in a fresh process (torch on one thread)."""
    command = [sys.executable, __file__, "--point", json.dumps({"kind": kind, **kwargs})]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} {kwargs} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"  {kind:9s} {json.dumps(kwargs):50s} {result['seconds']:8.2f} s  peak {result['peak_mb']:7.0f} MB",
          flush=True)
    return {**kwargs, **result}


def _point_main(spec: str) -> None:
    import torch

    torch.set_num_threads(1)
    spec = json.loads(spec)
    kind = spec.pop("kind")
    result = {"inpaint": point_inpaint, "simulate": point_simulate, "labdct": point_labdct}[kind](**spec)
    print(json.dumps(result))


# ------------------------------------------------------------------------- fits and figure


def fit(x, y) -> tuple[float, float]:
    """Least-squares ``y = a + b x``; returns (a, b)."""
    import numpy as np

    b, a = np.polyfit(np.asarray(x, float), np.asarray(y, float), 1)
    return float(a), float(b)


def figure(results: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for gap, style in (("growing", "o-"), ("fixed", "s--")):
        rows = [r for r in results["inpaint_size"] if r["gap"] == gap]
        axes[0].plot([r["size"] for r in rows], [r["seconds"] for r in rows], style, label=f"{gap} gap")
        axes[1].plot([r["size"] for r in rows], [r["peak_mb"] for r in rows], style, label=f"{gap} gap")
    for ax, label in ((axes[0], "seconds"), (axes[1], "peak resident MB")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("volume edge N (N^3 voxels)")
        ax.set_ylabel(label)
        ax.legend()
    axes[0].set_title("BCDI inpaint, one core")
    axes[1].set_title("BCDI inpaint, peak memory")
    sim, inp = results["simulate_volumes"], results["inpaint_volumes"]
    axes[2].plot([r["count"] for r in sim], [r["seconds"] for r in sim], "o-", label="simulate 64^3")
    axes[2].plot([r["volumes"] for r in inp], [r["seconds"] for r in inp], "s-", label="inpaint 64^3 (cross)")
    axes[2].set_xlabel("volumes")
    axes[2].set_ylabel("seconds")
    axes[2].set_title("BCDI, one core")
    axes[2].legend()
    for stage, style in (("simulate", "o-"), ("denoise", "s-"), ("segment", "^-")):
        rows = results["labdct_frames"][stage]
        axes[3].plot([r["frames"] for r in rows], [r["seconds"] for r in rows], style, label=stage)
    axes[3].set_xlabel(f"frames ({results['labdct_shape'][0]} x {results['labdct_shape'][1]} px)")
    axes[3].set_ylabel("seconds")
    axes[3].set_title("LabDCT, one core")
    axes[3].legend()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--point", help=argparse.SUPPRESS)
    parser.add_argument("--sizes", default="64,128,256,512")
    parser.add_argument("--stride", type=int, default=32, help="portion step along the gaps (cost per portion "
                        "does not depend on it; the default inpainting uses 8)")
    parser.add_argument("--volumes", default="1,2,4")
    parser.add_argument("--sim-counts", default="1,4,16")
    parser.add_argument("--frames", default="2,4,8")
    parser.add_argument("--binning", type=int, default=4)
    parser.add_argument("--figure", default=str(HERE.parent / "docs" / "figures" / "scaling_curves.png"))
    parser.add_argument("--json", default=None, help="write the points and fits here")
    parser.add_argument("--from-json", default=None, help="fit and draw the points of an earlier --json run")
    args = parser.parse_args()
    if args.point:
        _point_main(args.point)
        return
    if args.from_json:
        report(json.loads(Path(args.from_json).read_text()), args)
        return

    ints = lambda text: [int(v) for v in text.split(",")]  # noqa: E731
    results: dict = {"stride": args.stride, "binning": args.binning}
    print(f"BCDI inpaint vs volume size (stride {args.stride}, chunk 128, shipped model, one core):")
    results["inpaint_size"] = [run_point("inpaint", size=n, gap=gap, stride=args.stride)
                               for gap in ("fixed", "growing") for n in ints(args.sizes)]
    print("BCDI vs number of 64^3 volumes:")
    results["simulate_volumes"] = [run_point("simulate", count=k, size=64) for k in ints(args.sim_counts)]
    results["inpaint_volumes"] = [run_point("inpaint", size=64, gap="growing", stride=8, volumes=k)
                                  for k in ints(args.volumes)]
    print(f"LabDCT vs frames (binning {args.binning}):")
    results["labdct_frames"] = {stage: [run_point("labdct", stage=stage, frames=f, binning=args.binning)
                                        for f in ints(args.frames)] for stage in ("simulate", "denoise", "segment")}
    pixels = results["labdct_frames"]["denoise"][0]["pixels"]
    side = int(round(pixels**0.5))
    results["labdct_shape"] = (side, side)
    report(results, args)


def report(results: dict, args) -> None:
    """Fit the per-item costs, print them, draw the figure, write the JSON."""
    pixels = results["labdct_frames"]["denoise"][0]["pixels"]
    side = results["labdct_shape"][0]

    # Per-item costs. Inpainting: seconds = a + b_w windows + b_v voxels (two unknowns from both series).
    import numpy as np

    rows = results["inpaint_size"]
    design = np.array([[1.0, r["computed"], r["voxels"]] for r in rows])
    (a, per_window, per_voxel), *_ = np.linalg.lstsq(design, np.array([r["seconds"] for r in rows]), rcond=None)
    fits = {"inpaint_s_per_portion": float(per_window), "inpaint_s_per_voxel": float(per_voxel),
            "inpaint_s_fixed": float(a)}
    fits["simulate_s_per_volume_64"] = fit([r["count"] for r in results["simulate_volumes"]],
                                           [r["seconds"] for r in results["simulate_volumes"]])[1]
    fits["inpaint_s_per_volume_64_stride8"] = fit([r["volumes"] for r in results["inpaint_volumes"]],
                                                  [r["seconds"] for r in results["inpaint_volumes"]])[1]
    for stage, points in results["labdct_frames"].items():
        per_frame = fit([r["frames"] for r in points], [r["seconds"] for r in points])[1]
        fits[f"labdct_{stage}_s_per_frame_binned"] = per_frame
        if stage != "simulate":  # cost per pixel: scale to the full 2032^2 detector
            fits[f"labdct_{stage}_s_per_frame_2032"] = per_frame * 2032**2 / pixels
    results["fits"] = fits
    print("\nFitted per-item costs (one core):")
    print(f"  inpaint: {per_window * 1e3:.1f} ms per 32^3 portion computed, {per_voxel * 1e9:.1f} s per 10^9 voxels "
          f"passed through (read, copy, write), {a:.1f} s fixed")
    print(f"  simulate BCDI 64^3: {fits['simulate_s_per_volume_64']:.3f} s per volume; inpaint 64^3 with a 6 px "
          f"cross at stride 8: {fits['inpaint_s_per_volume_64_stride8']:.2f} s per volume")
    for stage in ("simulate", "denoise", "segment"):
        line = f"  LabDCT {stage}: {fits[f'labdct_{stage}_s_per_frame_binned']:.2f} s per {side}^2 frame"
        if stage != "simulate":
            line += f" ({fits[f'labdct_{stage}_s_per_frame_2032']:.1f} s per 2032^2 frame, scaled by pixels)"
        print(line)
    figure(results, args.figure)
    print(f"figure: {args.figure}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
