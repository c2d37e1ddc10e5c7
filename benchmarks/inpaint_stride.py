"""Default inpainting settings vs the published procedure (stride 1, plain mean), side by side.

On a simulated BCDI volume with a 6-px cross through the Bragg peak, runs the single-process
stitcher (:func:`rayproc.bcdi.inpaint.inpaint_volume`) with the published settings and with
each candidate (stride, blend), and prints the in-gap PCC (Masto et al. 2024, eq. 1), its
difference to the published one, the number of portions and the speed-up.

Targets for the default (stride 8, mean): PCC at most 0.002 below the published one, and a
speed-up >= 50x at 128^3.
The published run evaluates ~19,000 portions at 128^3 (about 10 min on 2 cores with the default
network); ``--size 64`` (~2,200 portions) gives a quick check.

    RAY_AUTH_MODE=disabled python benchmarks/inpaint_stride.py [--size 128] [--model DIR] [--volumes 1]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--model", default=None, help="model directory (default: shipped model, else untrained)")
    parser.add_argument("--volumes", type=int, default=1, help="simulated volumes (seed 0, index 0..n-1)")
    parser.add_argument("--candidates", default="4:gaussian,8:mean,8:gaussian,16:mean,16:gaussian,24:gaussian",
                        help="comma-separated STRIDE:BLEND settings to compare")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    args = parser.parse_args()

    import numpy as np
    import torch

    from rayproc.bcdi.gaps import gaps_to_mask
    from rayproc.bcdi.inpaint import (
        DEFAULT_BLEND, DEFAULT_STRIDE, PUBLISHED_BLEND, PUBLISHED_STRIDE, inpaint_volume, plan_windows,
    )
    from rayproc.bcdi.metrics import gap_pcc
    from rayproc.bcdi.diffraction import simulate_bcdi_sample

    torch.set_num_threads(args.threads)
    network, name = _model(args.model)
    half = args.size // 2
    gaps = [f"x:{half - 3}:6", f"y:{half - 3}:6"]
    mask = gaps_to_mask(gaps, (args.size,) * 3)
    settings = [(PUBLISHED_STRIDE, PUBLISHED_BLEND)]
    settings += [(int(s), b) for s, b in (c.split(":") for c in args.candidates.split(","))]
    pcc = {s: [] for s in settings}
    seconds = dict.fromkeys(settings, 0.0)
    for index in range(args.volumes):
        truth, _ = simulate_bcdi_sample(args.size, 0, index)
        observed = np.where(mask, 0, truth)
        for stride, blend in settings:
            started = time.perf_counter()
            intensity, _ = inpaint_volume(observed, mask, network, stride=stride, blend=blend)
            seconds[stride, blend] += time.perf_counter() - started
            pcc[stride, blend].append(gap_pcc(intensity, truth, mask))

    reference = (PUBLISHED_STRIDE, PUBLISHED_BLEND)
    print(f"BCDI inpainting settings, {args.volumes} simulated {args.size}^3 volume(s), 6-px cross {gaps}, "
          f"model {name}, {args.threads} torch threads")
    print(f"{'stride':>6} {'blend':>9} {'portions':>8} {'PCC':>8} {'dPCC':>8} {'seconds':>8} {'speed-up':>8}")
    for stride, blend in settings:
        windows = len(plan_windows(mask, stride=stride))
        mean_pcc = float(np.mean(pcc[stride, blend]))
        delta = mean_pcc - float(np.mean(pcc[reference]))
        flag = "  <- default" if (stride, blend) == (DEFAULT_STRIDE, DEFAULT_BLEND) else ""
        flag = "  <- published" if (stride, blend) == reference else flag
        print(f"{stride:>6} {blend:>9} {windows:>8} {mean_pcc:8.4f} {delta:+8.4f} {seconds[stride, blend]:8.1f} "
              f"{seconds[reference] / seconds[stride, blend]:7.1f}x{flag}")
    print("targets for the default: dPCC >= -0.002 (no worse than published), speed-up >= 50x (at 128^3)")


def _model(directory):
    """The model to use, and its name: a directory, the shipped model, or an untrained default gapnet."""
    import torch

    from rayproc.models.artifact import has_default_model, resolve_model
    from rayproc.bcdi.network import build_bcdi_net

    if directory is None and not has_default_model("bcdi"):
        torch.manual_seed(0)
        return build_bcdi_net().eval(), "untrained gapnet (pull-push fill prior)"
    network, resolved = resolve_model(directory, "bcdi")
    return network, resolved.source


if __name__ == "__main__":
    main()
