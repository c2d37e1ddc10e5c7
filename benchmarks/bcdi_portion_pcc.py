"""In-gap PCC of a BCDI model per gap width on 32^3 portions, as in the model card.

Evaluates a model directory on portions of simulated stores and of ingested real scans (e.g. the
gold scan in ../shared/data, never used for training), with centred line gaps of each width, and
prints a Markdown table beside the classical pull-push fill (the untrained network's starting
point) and linear interpolation across the gap.

    python benchmarks/bcdi_portion_pcc.py [--model DIR] [--portions 128] STORE [STORE ...]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from rayproc.bcdi.metrics import gap_pcc
from rayproc.bcdi.portion_dataset import PortionDataset, list_volumes
from rayproc.bcdi.portions import NormStats, denormalise_portion
from rayproc.models.artifact import default_model_dir, load_model
from rayproc.models.bcdi_unet import pull_push_fill

WIDTHS = (3, 6, 9, 12)


def linear_across(target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Linear interpolation across a plane gap, along the axis the gap is thin in."""
    out = target.clone()
    m = mask[0, 0] > 0.5
    axis = int(np.argmin([m.any(dim=tuple(d for d in range(3) if d != a)).sum().item() for a in range(3)]))
    gap = m.any(dim=tuple(d for d in range(3) if d != axis)).nonzero().flatten()
    lo, hi = int(gap.min()) - 1, int(gap.max()) + 1
    if lo < 0 or hi >= m.shape[axis]:
        return pull_push_fill(target * (1 - mask), 1 - mask)
    a, b = target.select(axis + 2, lo), target.select(axis + 2, hi)
    for i in range(lo + 1, hi):
        t = (i - lo) / (hi - lo)
        out.select(axis + 2, i).copy_((1 - t) * a + t * b)
    return out


def score(stores: list[str], model, n: int, seed: int) -> dict[str, dict[int, float]]:
    volumes = list_volumes(stores)
    per = max(1, n // len(volumes))
    results: dict[str, dict[int, list[float]]] = {m: {w: [] for w in WIDTHS} for m in ("model", "pull-push", "linear")}
    for width in WIDTHS:
        data = PortionDataset(volumes, per, seed=seed, stream=7, gap_widths=(width,), gap_kinds=("line",),
                              prefer_periphery=True)
        for i in range(len(data)):
            item = data[i]
            target, mask = item["target"][None], item["mask"][None]
            with torch.no_grad():
                preds = {"model": model(target, mask), "pull-push": pull_push_fill(target * (1 - mask), 1 - mask),
                         "linear": linear_across(target, mask)}
            stats = NormStats(np.array([float(item["lo"])]), np.array([float(item["hi"])]))
            truth = denormalise_portion(target[:, 0].numpy(), stats)
            in_gap = mask[:, 0].numpy() > 0.5
            for name, pred in preds.items():
                pcc = gap_pcc(np.maximum(denormalise_portion(pred[:, 0].numpy(), stats), 0), truth, in_gap)
                if np.isfinite(pcc):
                    results[name][width].append(pcc)
    return {m: {w: float(np.mean(v)) for w, v in r.items()} for m, r in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stores", nargs="+")
    parser.add_argument("--model", default=str(default_model_dir()))
    parser.add_argument("--portions", type=int, default=128, help="portions per gap width")
    parser.add_argument("--seed", type=int, default=12345)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, _ = load_model(args.model)
    model.eval()
    table = score(args.stores, model, args.portions, args.seed)
    print(f"in-gap PCC (paper eq. 1), {args.portions} portions per width, stores: {' '.join(args.stores)}")
    print("| method | " + " | ".join(f"{w} px" for w in WIDTHS) + " |")
    print("|---|" + "---|" * len(WIDTHS))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[w]:.3f}" for w in WIDTHS) + " |")


if __name__ == "__main__":
    main()
