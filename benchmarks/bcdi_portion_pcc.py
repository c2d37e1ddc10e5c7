"""In-gap PCC of a BCDI model per gap width on 32^3 portions, as in the model card.

Evaluates a model directory on portions of simulated stores and of ingested real scans (e.g. the
gold scan in ../shared/data, never used for training), with centred line gaps of each width, and
prints a Markdown table beside the classical pull-push fill and linear interpolation across the
gap (the default gapnet's prior: an untrained gapnet reproduces it).

    python benchmarks/bcdi_portion_pcc.py [--model DIR ...] [--portions 128] [--min-signal 0.9] STORE [STORE ...]
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch

from rayproc.bcdi.metrics import gap_pcc
from rayproc.bcdi.portion_dataset import PortionDataset
from rayproc.pipelines.bcdi.portion_data import VolumeReader, list_volumes
from rayproc.bcdi.portions import NormStats, denormalise_portion
from rayproc.models.artifact import default_model_dir, load_model
from rayproc.bcdi.network import line_fill, pull_push_fill

WIDTHS = (3, 6, 9, 12)


def score(stores: list[str], models: dict, n: int, seed: int, min_signal: float = 0.0) -> dict[str, dict[int, float]]:
    volumes = list_volumes(stores)
    per = max(1, n // len(volumes))
    draws = per if min_signal <= 0 else 16 * per  # candidates to filter down to ``n`` with signal in the gap
    names = (*models, "pull-push", "linear")
    results: dict[str, dict[int, list[float]]] = {m: {w: [] for w in WIDTHS} for m in names}
    read = VolumeReader()  # one volume cache for all widths
    for width in WIDTHS:
        data = PortionDataset(volumes, draws, read=read, seed=seed, stream=7, gap_widths=(width,),
                              gap_kinds=("line",), prefer_periphery=True)
        kept = 0
        for i in range(len(data)):
            if kept >= per * len(volumes):
                break
            item = data[i]
            target, mask = item["target"][None], item["mask"][None]
            if min_signal > 0 and float((target[mask > 0.5] > 0).float().mean()) < min_signal:
                continue  # normalised 0 = the portion's lowest measured count (mostly 0 photons)
            kept += 1
            with torch.no_grad():
                known = 1 - mask
                preds = {name: model(target, mask) for name, model in models.items()}
                preds.update({"pull-push": pull_push_fill(target * known, known), "linear": line_fill(target * known, known)})
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
    parser.add_argument("--model", action="append", help="model directory (repeat to compare; default: shipped)")
    parser.add_argument("--portions", type=int, default=128, help="portions per gap width")
    parser.add_argument("--seed", type=int, default=12345)
    parser.add_argument("--min-signal", type=float, default=0.0,
                        help="keep portions whose gap voxels are at least this fraction above the portion's minimum "
                             "(e.g. 0.9 for portions with fringes in the gap, like the published experimental set)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    models = {}
    for folder in args.model or [str(default_model_dir())]:
        model, _ = load_model(folder)
        models[f"model {os.path.basename(os.path.normpath(folder))}"] = model.eval()
    table = score(args.stores, models, args.portions, args.seed, args.min_signal)
    print(f"in-gap PCC (paper eq. 1), {args.portions} portions per width, min signal {args.min_signal}, "
          f"stores: {' '.join(args.stores)}")
    print("| method | " + " | ".join(f"{w} px" for w in WIDTHS) + " |")
    print("|---|" + "---|" * len(WIDTHS))
    for name, row in table.items():
        print(f"| {name} | " + " | ".join(f"{row[w]:.3f}" for w in WIDTHS) + " |")


if __name__ == "__main__":
    main()
