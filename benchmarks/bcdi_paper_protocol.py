"""The published evaluation protocol (Masto et al. 2024, Table 1) on a real scan.

1000 random 32^3 portions whose centres are drawn ~N(Bragg peak, 8 px) on each axis (clipped so
the portion fits), a gap of ``w`` px across x in the middle of each portion (a slab of ``w``
columns, constant in z and y, as a detector gap is over a rocking scan), and the mean over
portions of the in-gap PCC of log1p counts (eq. 1), for w = 3, 6, 9, 12.

Printed side by side for every model given, linear interpolation across the gap, and a *noise
ceiling*: the same score for a predictor that knows the expected counts exactly, estimated as the
PCC between the measured counts and a fresh Poisson draw of them (measured counts stand in for the
expectation, so the ceiling is approximate; no method can score above the noise of the truth it is
compared to).

    python benchmarks/bcdi_paper_protocol.py STORE_OR_FOLDER [--model DIR ...] [--portions 1000]

The scan is evaluation-only: no model shipped with rayproc was trained on it.
"""

from __future__ import annotations

import argparse
import os

import numpy as np

WIDTHS = (3, 6, 9, 12)
PUBLISHED = {3: 0.989, 6: 0.977, 9: 0.955, 12: 0.946}


def protocol_portions(volume: np.ndarray, n: int, seed: int, *, size: int = 32, sigma: float = 8.0):
    """Crop ``n`` portions centred ~N(peak, sigma) on each axis; returns (portions, origins)."""
    rng = np.random.default_rng(seed)
    peak = np.array(np.unravel_index(int(np.nanargmax(volume)), volume.shape))
    centres = np.rint(peak + rng.normal(0.0, sigma, size=(n, 3))).astype(int)
    origins = np.clip(centres - size // 2, 0, np.array(volume.shape) - size)
    portions = np.stack([volume[z:z + size, y:y + size, x:x + size] for z, y, x in origins])
    return portions, origins


def centred_slab(width: int, size: int = 32) -> np.ndarray:
    """Mask (size^3) of a gap of ``width`` columns across x in the middle of a portion."""
    mask = np.zeros((size,) * 3, dtype=bool)
    start = (size - width) // 2
    mask[:, :, start:start + width] = True
    return mask


def score(pred: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """Mean over portions of the in-gap PCC (NaN portions, constant in the gap, skipped)."""
    from rayproc.bcdi.metrics import gap_pcc

    values = [gap_pcc(np.maximum(p, 0), t, mask) for p, t in zip(pred, truth)]
    return float(np.nanmean(values))


def evaluate(volume: np.ndarray, models: dict, *, n: int, seed: int) -> dict[str, dict[int, float]]:
    from rayproc.bcdi.baselines import interpolate_gaps
    from rayproc.bcdi.inpaint import predict_portions

    truth, _ = protocol_portions(volume, n, seed)
    rng = np.random.default_rng(seed + 1)
    redrawn = rng.poisson(np.maximum(truth, 0)).astype(np.float32)
    rows: dict[str, dict[int, float]] = {name: {} for name in (*models, "linear", "noise ceiling")}
    for width in WIDTHS:
        mask = centred_slab(width)
        masks = np.broadcast_to(mask, truth.shape)
        for name, model in models.items():
            rows[name][width] = score(predict_portions(model, truth, masks, batch_size=32), truth, mask)
        linear = np.stack([interpolate_gaps(p, mask, "linear") for p in truth])
        rows["linear"][width] = score(linear, truth, mask)
        rows["noise ceiling"][width] = score(redrawn, truth, mask)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scan", help="a store or file `rayproc bcdi inpaint` accepts (e.g. the ingested gold scan)")
    parser.add_argument("--model", action="append", help="model directory (repeat to compare; default: shipped)")
    parser.add_argument("--portions", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=2024)
    args = parser.parse_args()

    import torch

    from rayproc.models.artifact import default_model_dir, load_model
    from rayproc.storage.inputs import open_input

    torch.set_num_threads(int(os.environ.get("RAYPROC_THREADS", "2")))
    volume = open_input(args.scan, ("intensity", "inpainted")).values()
    models = {}
    for folder in args.model or [str(default_model_dir())]:
        model, _ = load_model(folder, family="bcdi")
        models[f"model {os.path.basename(os.path.normpath(folder))}"] = model.eval()
    rows = evaluate(volume, models, n=args.portions, seed=args.seed)
    rows["published (Masto 2024, Table 1)"] = PUBLISHED
    print(f"paper protocol: {args.portions} portions ~N(peak, 8 px), gap across x, mean in-gap PCC; scan {args.scan}")
    print("| method | " + " | ".join(f"{w} px" for w in WIDTHS) + " |")
    print("|---|" + "---|" * len(WIDTHS))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row[w]:.3f}" for w in WIDTHS) + " |")


if __name__ == "__main__":
    main()
