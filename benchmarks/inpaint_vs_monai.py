"""Our stitcher vs MONAI's ``sliding_window_inference``, side by side in one run.

Same network (the default gapnet, or ``--model DIR``), same 32^3 portions, same overlap (0.5,
i.e. stride 16) and plain-mean blend, on the same volume (a simulated BCDI pattern, log-scaled
to [0, 1], with a 6-px cross as the mask channel). Three runs, interleaved ``--repeats`` times:

* ``monai``: MONAI's windows tile the whole volume (it has no notion of missing voxels);
* ``rayproc, same windows``: our stitcher on exactly those windows (engine against engine:
  crop, batch, merge), portions/s;
* ``rayproc, gap windows``: the inpainting job as rayproc runs it, only the windows of the same
  grid that hold a missing voxel (:func:`rayproc.stitching.windows_holding`). Every missing
  voxel is covered by the same windows as in MONAI's run, so the inpainted voxels agree to
  float32 rounding; volumes/s.

Prints the median throughput ratios over the paired runs and the largest differences.
Target: ours / MONAI >= 1.0 (the job), max |difference| at float32 rounding. The page-fault
counts show allocator churn: with glibc's defaults freed activations go back to the kernel and
are faulted in again every batch. rayproc's processes keep them
(:func:`rayproc.runtime.memory.retain_freed_memory`, ``--allocator retain``, the default here;
it applies to the whole process, so to every run). ``--compare-allocators`` measures what
that buys: our stitcher alone in fresh processes with glibc defaults and with retained memory,
alternating, and prints the throughput ratio.

    python benchmarks/inpaint_vs_monai.py [--size 96] [--batch-size 8] [--threads 2] [--compare-allocators]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--overlap", type=float, default=0.5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="model directory (default: untrained default gapnet)")
    parser.add_argument("--allocator", choices=("retain", "default"), default="retain",
                        help="keep freed memory in the process (rayproc's setting) or glibc defaults")
    parser.add_argument("--compare-allocators", action="store_true",
                        help="our stitcher alone, glibc defaults vs retained memory, in fresh processes")
    parser.add_argument("--only-ours", action="store_true", help=argparse.SUPPRESS)  # a child of the comparison
    args = parser.parse_args()
    if args.compare_allocators:
        return compare_allocators(args)
    if args.allocator == "retain":
        from rayproc.runtime.memory import retain_freed_memory

        retain_freed_memory()

    import numpy as np
    import torch
    from monai.inferers import sliding_window_inference

    from rayproc.bcdi.gaps import gaps_to_mask
    from rayproc.bcdi.network import build_bcdi_net
    from rayproc.bcdi.diffraction import simulate_bcdi_sample
    from rayproc.models.artifact import resolve_model
    from rayproc.stitching import grid_windows, sliding_window_predict, windows_holding

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    network = build_bcdi_net().eval() if args.model is None else resolve_model(args.model, "bcdi")[0]
    counts, _ = simulate_bcdi_sample(args.size, 0, 0)
    x = (np.log1p(counts) / np.log1p(counts).max()).astype(np.float32)
    half = args.size // 2
    mask = gaps_to_mask([f"x:{half - 3}:6", f"y:{half - 3}:6"], x.shape).astype(np.float32)
    stride = int(32 * (1 - args.overlap))
    origins = grid_windows(x.shape, 32, stride)
    missing = mask > 0
    gap_origins = origins[windows_holding(missing, origins, 32)]

    network_seconds = [0.0]

    def predict(patches, masks):
        started = time.perf_counter()
        with torch.inference_mode():
            values = network(torch.from_numpy(patches)[:, None], torch.from_numpy(masks)[:, None])[:, 0].numpy()
        network_seconds[0] += time.perf_counter() - started
        return values

    def ours(windows=origins):
        return sliding_window_predict(x, windows, predict, patch=32, weights="mean", batch_size=args.batch_size,
                                      extras=[mask])[0]

    both = torch.from_numpy(np.stack([x, mask]))[None]

    def monai():
        with torch.inference_mode():
            result = sliding_window_inference(both, roi_size=32, sw_batch_size=args.batch_size, overlap=args.overlap,
                                              mode="constant", predictor=lambda t: network(t[:, :1], t[:, 1:]))
        return result[0, 0].numpy()

    if args.only_ours:
        ours()  # warm-up
        faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        started = time.perf_counter()
        ours()
        print(json.dumps({"rate": len(origins) / (time.perf_counter() - started),
                          "faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before}))
        return

    runs = {"rayproc": (ours, len(origins)), "rayproc-gap": (lambda: ours(gap_origins), len(gap_origins)),
            "monai": (monai, len(origins))}
    results, seconds, faults = {}, {name: [] for name in runs}, {name: 0 for name in runs}
    inside_network = {name: 0.0 for name in runs}  # seconds inside our predict_batch per run
    order = list(runs)
    for run, _ in runs.values():  # warm-up
        run()
    for repeat in range(args.repeats):  # interleaved, rotating which goes first
        for name in order[repeat % 3:] + order[: repeat % 3]:
            faults_before, network_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, network_seconds[0]
            started = time.perf_counter()
            results[name] = runs[name][0]()
            seconds[name].append(time.perf_counter() - started)
            faults[name] += resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
            inside_network[name] += network_seconds[0] - network_before
    same = np.divide(seconds["monai"], seconds["rayproc"])  # same windows: portions/s ratio
    job = np.divide(seconds["monai"], seconds["rayproc-gap"])  # same inpainted volume: volumes/s ratio
    difference = float(np.abs(results["rayproc"] - results["monai"]).max())
    gap_difference = float(np.abs(results["rayproc-gap"][missing] - results["monai"][missing]).max())
    print(f"sliding-window inference, {args.size}^3 volume, 6 px cross ({missing.mean():.1%} of voxels missing), "
          f"32^3 portions (overlap {args.overlap}), batch {args.batch_size}, {args.threads} torch threads, "
          f"{args.repeats} interleaved runs")
    for name, label in (("monai", "monai, grid windows"), ("rayproc", "rayproc, same windows"),
                        ("rayproc-gap", "rayproc, gap windows")):
        count = runs[name][1]
        print(f"  {label:22s} {count:4d} portions: {count / np.median(seconds[name]):6.1f} portions/s, "
              f"{1 / np.median(seconds[name]):5.3f} volumes/s (median), "
              f"{faults[name] // args.repeats} minor page faults per run")
    print(f"  same windows, rayproc / monai portions/s: median {np.median(same):.3f}, per run "
          f"{' '.join(f'{r:.2f}' for r in same)}")
    print(f"  inpainting job, rayproc / monai volumes/s: median {np.median(job):.3f}, per run "
          f"{' '.join(f'{r:.2f}' for r in job)} (target >= 1.0)")
    print(f"  rayproc time outside the network (crop, merge, blend): "
          f"{100 * (1 - inside_network['rayproc'] / sum(seconds['rayproc'])):.1f}%")
    print(f"  max |rayproc - monai|: {difference:.3g} (same windows, whole volume), {gap_difference:.3g} "
          f"(gap windows, missing voxels); outputs in [0, 1]; allocator: {args.allocator}")


def compare_allocators(args) -> None:
    """Our stitcher in fresh processes, glibc defaults vs retained freed memory, alternating."""
    import numpy as np

    base = [sys.executable, __file__, "--only-ours", "--size", str(args.size), "--batch-size", str(args.batch_size),
            "--overlap", str(args.overlap), "--threads", str(args.threads)]
    base += ["--model", args.model] if args.model else []
    runs = {"default": [], "retain": []}
    for repeat in range(args.repeats):
        for allocator in (("default", "retain") if repeat % 2 == 0 else ("retain", "default")):
            output = subprocess.run([*base, "--allocator", allocator], check=True, capture_output=True, text=True)
            runs[allocator].append(json.loads(output.stdout.strip().splitlines()[-1]))
    print(f"our stitcher, {args.size}^3, batch {args.batch_size}, {args.threads} torch threads, "
          f"{args.repeats} paired processes")
    for allocator, rows in runs.items():
        print(f"  {allocator:8s} {np.median([r['rate'] for r in rows]):7.1f} portions/s (median), "
              f"{int(np.median([r['faults'] for r in rows]))} minor page faults per run")
    ratios = [r["rate"] / d["rate"] for r, d in zip(runs["retain"], runs["default"])]
    print(f"  retained / default: median {np.median(ratios):.2f}, per pair {' '.join(f'{r:.2f}' for r in ratios)}")


if __name__ == "__main__":
    main()
