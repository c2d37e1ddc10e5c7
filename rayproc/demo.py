"""``make demo``: ingest the real gold BCDI scan, simulate a small training set, summarise both.

Writes ``OUT/gold.zarr``, ``OUT/simulated.zarr`` and ``OUT/central_slices.png``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

GOLD = Path(__file__).resolve().parents[2] / "shared" / "data" / "bcdi-au-34idc-s54"


def _summary(name: str, volume: np.ndarray) -> str:
    peak = tuple(int(i) for i in np.unravel_index(np.argmax(volume), volume.shape))
    return (f"{name:<22} shape {str(volume.shape):<16} total {volume.sum():10.4g} counts  "
            f"max {volume.max():9.4g} at {peak}")


def central_slices_figure(volumes: dict[str, np.ndarray], path: Path) -> None:
    """One row per volume: log-scaled central slices through its maximum along z, y and x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(volumes), 3, figsize=(9, 3 * len(volumes)), squeeze=False)
    for row, (name, vol) in zip(axes, volumes.items()):
        peak = np.unravel_index(np.argmax(vol), vol.shape)
        for axis, ax in enumerate(row):
            image = np.take(vol, peak[axis], axis=axis)
            ax.imshow(np.log10(1 + image), cmap="turbo", origin="lower")
            ax.set_title(f"{name}: {'zyx'[axis]} = {peak[axis]}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle("log10(1 + counts), central slices through the maximum")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(out: str = "demo-out") -> None:
    from rayproc.pipelines.bcdi.simulate import simulate_bcdi
    from rayproc.pipelines.ingest import ingest
    from rayproc.storage import open_dataset

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    volumes: dict[str, np.ndarray] = {}
    if GOLD.is_dir():
        t0 = time.perf_counter()
        ingest(str(GOLD), str(out_dir / "gold.zarr"), command="rayproc ingest (demo)")
        volumes["gold (real, 34-ID-C)"] = open_dataset(str(out_dir / "gold.zarr")).intensity.values
        print(f"ingested the real gold scan in {time.perf_counter() - t0:.1f} s")
    else:
        print(f"real gold scan not found at {GOLD}; skipping ingest")
    t0 = time.perf_counter()
    simulate_bcdi(str(out_dir / "simulated.zarr"), count=4, size=64, seed=0, workers=2,
                  command="rayproc bcdi simulate (demo)")
    sim = open_dataset(str(out_dir / "simulated.zarr"))
    print(f"simulated {sim.sizes['sample']} volumes of 64^3 in {time.perf_counter() - t0:.1f} s (2 Ray workers)")
    for i in range(sim.sizes["sample"]):
        volumes[f"simulated #{i} ({sim.shape.values[i]})"] = sim.intensity.values[i]
    print()
    for name, vol in volumes.items():
        print(_summary(name, vol))
    central_slices_figure(volumes, out_dir / "central_slices.png")
    print(f"\nfigure: {out_dir / 'central_slices.png'}")


if __name__ == "__main__":
    main(*sys.argv[1:2])
