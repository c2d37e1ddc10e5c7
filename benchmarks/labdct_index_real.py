"""LabDCT grain indexing on the 41 real iron frames: the network's spots vs the standard routine's.

Reads two ``rayproc labdct index`` stores (made with ``--min-completeness 0.3`` from the
``labdct segment`` stores of the network and of the standard routine, README "Real data, step
by step"), prints the grains at completeness >= 0.5 and >= 0.3 and the median residual of their
matched spots, and draws the predicted spots of the grains over a raw frame.

    python benchmarks/labdct_index_real.py fe-grains-dl.zarr fe-grains-standard.zarr \\
        --frames ../shared/data/labdct-fe-farfield --figure docs/figures/labdct_index_real.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def summary(url: str) -> dict:
    from rayproc.storage import open_dataset

    ds = open_dataset(url)
    completeness = np.asarray(ds.grain_completeness.values)
    grain_of_spot = np.asarray(ds.spot_grain.values)
    residual = np.asarray(ds.spot_residual_px.values)
    out = {"ds": ds}
    for threshold in (0.5, 0.3):
        keep = np.flatnonzero(completeness >= threshold)
        spots = np.isin(grain_of_spot, keep)
        out[threshold] = (len(keep), float(np.median(residual[spots])) if spots.any() else float("nan"),
                          int(spots.sum()))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("network")
    parser.add_argument("standard")
    parser.add_argument("--frames", default="../shared/data/labdct-fe-farfield")
    parser.add_argument("--frame", type=int, default=0)
    parser.add_argument("--figure", default=None)
    parser.add_argument("--zoom", type=int, nargs=3, default=(300, 700, 100), metavar=("ROW", "COL", "HALF"))
    args = parser.parse_args()

    from rayproc.labdct import indexing as ix
    from rayproc.pipelines.labdct.index import indexing_geometry

    results = {name: summary(url) for name, url in (("network", args.network), ("standard routine", args.standard))}
    print("real iron frames (41, 180 .. 60 deg): grains indexed, median residual of their matched spots")
    for name, res in results.items():
        parts = [f"completeness >= {t}: {res[t][0]} grains ({res[t][2]} spots, median residual {res[t][1]:.2f} px)"
                 for t in (0.5, 0.3)]
        print(f"  {name:17s} " + "; ".join(parts))
    if args.figure is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import tifffile

    geometry = indexing_geometry(str(Path(args.frames) / "geometry.json"))
    files = sorted(Path(args.frames).glob("*.tif*"))
    image = tifffile.imread(files[args.frame]).astype(np.float32)
    omega = geometry.omegas_deg[args.frame]
    figure, axes = plt.subplots(2, 2, figsize=(14, 14))
    low, high = np.percentile(image, [1, 99.7])
    row, col, half = args.zoom
    for column, (name, res) in enumerate(results.items()):
        ds = res["ds"]
        keep = np.asarray(ds.grain_completeness.values) >= 0.3
        u, x = np.asarray(ds.grain_orientation.values)[keep], np.asarray(ds.grain_centroid.values)[keep]
        pred = ix.predict_spots(u, x, [omega], geometry, ix.indexing_reflections(geometry, 3)[0])
        colours = plt.cm.tab20(np.arange(len(u)) % 20)
        for zoomed, axis in enumerate(axes[:, column]):
            axis.imshow(image, cmap="gray", vmin=low, vmax=high, origin="upper")
            # published pixel convention: geometry y = column + 1, z = row + 1
            axis.scatter(pred["y_px"] - 1, pred["z_px"] - 1, s=300 if zoomed else 60, facecolors="none",
                         edgecolors=colours[pred["grain"]], linewidths=1.2)
            if zoomed:
                axis.set_xlim(col - half, col + half)
                axis.set_ylim(row + half, row - half)
            axis.set_axis_off()
        axes[0, column].set_title(f"{name}: {keep.sum()} grains (completeness >= 0.3), predicted spots at "
                                  f"{omega:.0f} deg")
        axes[1, column].set_title(f"zoom: rows {row - half}-{row + half}, columns {col - half}-{col + half}")
    figure.tight_layout()
    figure.savefig(args.figure, dpi=60)
    print(f"figure written to {args.figure}")


if __name__ == "__main__":
    main()
