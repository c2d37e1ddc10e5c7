"""Realism check of the LabDCT simulator against the real far-field iron frames.

``python -m rayproc.pipelines.labdct.report SIM_STORE FRAMES_DIR OUT.png`` draws a simulated
projection beside a real one and the radial distribution (distance from the beam centre, mm) of
the spots of both: the simulated spots from the spot table, the real ones found by the standard
routine (rolling median subtracted, LoG segmentation).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from rayproc.labdct.spots import spot_table
from rayproc.labdct.standard_routine import StandardRoutineParams, standard_routine
from rayproc.labdct.geometry import geometry_from_json
from rayproc.storage import open_dataset
from rayproc.storage.readers import read_volume

# About 6 sigma of the rolling-median residual of the real frames (16-84 % range: -15..17 counts).
REAL_ROUTINE = StandardRoutineParams(background=100.0, sigma=1.5, percentage=30.0, min_size=4, n_rolling=5)


def real_spot_radii(frames: np.ndarray, geometry_json: dict) -> tuple[np.ndarray, np.ndarray]:
    """Radial distances (mm) of spots found in real frames, and their labels."""
    geom = geometry_from_json(geometry_json)
    labels = standard_routine(frames, REAL_ROUTINE, beamstop=geom.beam_stop_mask())
    table = spot_table(labels, frames)
    cy, cx = geom.beam_center_px
    radii = np.hypot(table["centroid_y"] - cy, table["centroid_x"] - cx) * geom.pixel_size_mm
    return radii, labels


def realism_figure(sim_url: str, frames_dir: str, out_png: str, *, n_real: int = 11) -> dict:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sim = open_dataset(sim_url)
    real, _ = read_volume(frames_dir)
    real = real[:n_real]
    geometry_json = json.loads((Path(frames_dir) / "geometry.json").read_text())
    real_r, real_labels = real_spot_radii(real, geometry_json)
    sim_r = np.hypot(sim.spot_centroid_y_mm.values, sim.spot_centroid_z_mm.values)
    sim_r = sim_r[sim.spot_intensity.values > 0]

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8))
    image = sim.projection.values[0].T  # stored (y, z); shown with z (vertical) as rows
    axes[0].imshow(np.log1p(image), cmap="gray", origin="lower")
    axes[0].set_title(f"simulated Fe far-field, omega = {float(sim.omega[0]):.0f} deg")
    axes[1].imshow(np.log1p(real[0]), cmap="gray", origin="lower")
    axes[1].set_title("real Fe far-field frame (Export0001, omega = 180 deg)")
    bins = np.linspace(0, 40, 41)
    axes[2].hist(sim_r, bins=bins, density=True, histtype="step", lw=2, label=f"simulated ({len(sim_r) / sim.sizes['omega']:.0f} spots/frame)")
    axes[2].hist(real_r, bins=bins, density=True, histtype="step", lw=2,
                 label=f"real, standard routine ({len(real_r) / len(real):.0f} spots/frame)")
    axes[2].set_xlabel("distance from beam centre (mm)")
    axes[2].set_ylabel("spot density")
    axes[2].legend()
    for ax in axes[:2]:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(out_png, dpi=80)
    plt.close(fig)
    return {"sim_spots_per_frame": len(sim_r) / sim.sizes["omega"], "real_spots_per_frame": len(real_r) / len(real),
            "sim_median_radius_mm": float(np.median(sim_r)), "real_median_radius_mm": float(np.median(real_r))}


def main(argv: list[str] | None = None) -> int:
    """``SIM_STORE FRAMES_DIR OUT.png``: draw the figure, print its numbers as JSON (one-line errors)."""
    import argparse

    from rayproc.errors import RayprocError

    parser = argparse.ArgumentParser(prog="python -m rayproc.pipelines.labdct.report",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("sim_store", help="a `rayproc labdct simulate` store in the far-field geometry")
    parser.add_argument("frames_dir", help="the real frames' folder, with its geometry.json")
    parser.add_argument("out_png", help="the figure to write (never over an existing file)")
    args = parser.parse_args(argv)
    try:
        if Path(args.out_png).exists():
            raise FileExistsError(f"{args.out_png} exists; rayproc writes a figure only where nothing is.")
        print(json.dumps(realism_figure(args.sim_store, args.frames_dir, args.out_png), indent=1))
    except (RayprocError, OSError, ValueError, KeyError) as exc:
        print(f"rayproc: error: {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
