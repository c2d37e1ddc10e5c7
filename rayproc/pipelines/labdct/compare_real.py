"""``rayproc labdct compare-real``: a realism report of simulated vs measured LabDCT frames.

Reads two stacks of consecutive frames (zarr stores, TIFF folders or stack files; for a
synthesised store its noisy ``input``), brings them to one pixel size (the finer stack is
binned by the integer factor between them), measures both the same way with
:func:`rayproc.labdct.realism.realism_summary` (the standard routine with its defaults finds the
spots; beam centre and beam stop from the real frames' ``geometry.json``, binned alike) and writes
``realism.md`` (the table), ``realism.json`` (pooled and per-frame numbers) and ``realism.png``
(the two distributions overlaid) into a report folder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rayproc.errors import InputError
from rayproc.labdct.calibration import bin_frames
from rayproc.labdct.realism import SUMMARY_KEYS, compare_summaries, realism_summary
from rayproc.pipelines.labdct.stack import read_frames
from rayproc.storage.model_dirs import report_out
from rayproc.storage.outputs import claim_folder, make_folder

# Realism targets of issue 17: simulated and real agree within this fraction.
TARGET_KEYS = ("spots_per_frame", "median_area_px", "p90_elongation")
TOLERANCE = 0.10


@dataclass(frozen=True)
class RealismReport:
    """Pooled rows (quantity, sim, real, relative), per-frame numbers and the files written."""

    out: str
    rows: list
    per_frame: dict
    settings: dict
    files: list = field(default_factory=list)

    def within_tolerance(self) -> dict[str, bool]:
        return {row["quantity"]: abs(row["relative"]) <= TOLERANCE for row in self.rows
                if row["quantity"] in TARGET_KEYS}

    def to_dict(self) -> dict:
        return {"out": self.out, "rows": self.rows, "per_frame": self.per_frame, "settings": self.settings,
                "targets_within_10_percent": self.within_tolerance()}


def parse_frame_range(text: str | None, count: int, what: str) -> slice:
    """``"START:STOP"`` (0-based, stop excluded; either may be empty) as a slice of ``count`` frames."""
    if text is None:
        return slice(0, count)
    try:
        start, stop = (int(part) if part.strip() else None for part in str(text).split(":"))
    except ValueError:
        raise InputError(f"{what} must be START:STOP (0-based, e.g. 0:30); got {text!r}.") from None
    frames = slice(start, stop)
    if len(range(count)[frames]) < 1:
        raise InputError(f"{what} {text!r} selects no frame of the {count} there are.")
    return frames


def common_grid(sim: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Both stacks binned to the coarser pixel; returns them and the two binning factors."""
    (hs, ws), (hr, wr) = sim.shape[1:], real.shape[1:]
    if (hs, ws) == (hr, wr):
        return sim, real, 1, 1
    if hr % hs == 0 and hr // hs == wr // ws and wr % ws == 0:
        factor = hr // hs
        return sim, bin_frames(real, factor), 1, factor
    if hs % hr == 0 and hs // hr == ws // wr and ws % wr == 0:
        factor = hs // hr
        return bin_frames(sim, factor), real, factor, 1
    raise InputError(f"simulated frames {sim.shape[1:]} and real frames {real.shape[1:]} are not an integer "
                     "binning of each other; simulate with a matching --binning.")


def _geometry(path: str | None, real: str, shape: tuple[int, int], factor: int):
    """Beam centre and beam stop of the real detector (geometry.json), binned to the compared grid."""
    from rayproc.pipelines.labdct.simulate import load_geometry

    if path is None:
        default = Path(str(real)) / "geometry.json"
        path = str(default) if default.is_file() else None
    if path is None:
        center = ((shape[0] - 1) / 2, (shape[1] - 1) / 2)
        return center, None, None
    geometry = load_geometry(path)
    geometry = geometry.binned(factor) if factor > 1 else geometry
    if tuple(geometry.detector_shape) != tuple(shape):
        raise InputError(f"{path} describes a {geometry.detector_shape} detector at this binning; the compared "
                         f"frames are {tuple(shape)}.")
    return geometry.beam_center_px, geometry.beam_stop_mask(), path


def realism_figure(sim: dict, real: dict, path: Path, *, labels=("simulated", "real")) -> Path:
    """Overlaid distributions of every realism measurement of two :func:`realism_summary` results."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(13, 11))
    panels = [
        ("area_px", "spot area (px)", np.arange(0.5, 60.5, 2.0), False),
        ("radial_extent_px", "radial extent (px)", np.linspace(1, 12, 45), False),
        ("tangential_extent_px", "tangential extent (px)", np.linspace(1, 12, 45), False),
        ("elongation", "radial / tangential extent", np.linspace(0.3, 3.0, 55), False),
        ("peak_snr", "peak / local noise", np.logspace(0, 3, 50), True),
        ("integrated_snr", "integrated / (local noise sqrt(area))", np.logspace(0, 3.3, 50), True),
    ]
    for ax, (key, title, bins, log) in zip(axes.ravel(), panels):
        for summary, label, colour in ((sim, labels[0], "C0"), (real, labels[1], "C1")):
            values = summary["spots"][key]
            ax.hist(values, bins=bins, density=True, histtype="step", lw=2, color=colour,
                    label=f"{label}: median {np.median(values):.3g}" if len(values) else label)
        ax.set_xlabel(title)
        ax.set_xscale("log" if log else "linear")
        ax.legend(fontsize=8)
    ax = axes[2, 0]
    for summary, label, colour in ((sim, labels[0], "C0"), (real, labels[1], "C1")):
        counts = summary["per_frame"]["spots"]
        ax.plot(np.arange(len(counts)), counts, "o-", color=colour, label=f"{label}: {counts.mean():.0f} per frame")
    ax.set_xlabel("frame")
    ax.set_ylabel("detected spots")
    ax.legend(fontsize=8)
    ax = axes[2, 1]
    for summary, label, colour in ((sim, labels[0], "C0"), (real, labels[1], "C1")):
        radii, values = summary["radial_profile"]
        ax.plot(radii, values / np.nanmax(values), color=colour, lw=2,
                label=f"{label}: level {summary['pooled']['background_level']:.0f}")
    ax.set_xlabel("distance from beam centre (px)")
    ax.set_ylabel("background / its maximum")
    ax.legend(fontsize=8)
    ax = axes[2, 2]
    for summary, label, colour in ((sim, labels[0], "C0"), (real, labels[1], "C1")):
        distances, values = summary["edge_profile"]
        ax.plot(distances, values, "o-", color=colour, label=label)
    ax.axvline(0, color="grey", lw=0.5)
    ax.set_xlabel("distance from the beam-stop edge (px, inside < 0)")
    ax.set_ylabel("background / level outside")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


def markdown(rows: list, per_frame: dict, settings: dict) -> str:
    lines = ["# Simulated vs real LabDCT frames", "",
             f"Simulated: `{settings['sim']}` frames {settings['sim_frames']}; real: `{settings['real']}` frames "
             f"{settings['real_frames']}; compared on a {settings['shape'][0]} x {settings['shape'][1]} grid "
             f"(binning sim {settings['sim_binning']}, real {settings['real_binning']}).", "",
             "| quantity | simulated | real | sim / real - 1 |", "|---|---:|---:|---:|"]
    for row in rows:
        mark = " (target: within 10 %)" if row["quantity"] in TARGET_KEYS else ""
        lines.append(f"| {row['quantity']}{mark} | {row['sim']:.3g} | {row['real']:.3g} | {row['relative']:+.1%} |")
    lines += ["", "Per frame (mean +- std over frames):", "", "| quantity | simulated | real |", "|---|---:|---:|"]
    for key in per_frame["sim"]:
        a, b = np.asarray(per_frame["sim"][key]), np.asarray(per_frame["real"][key])
        lines.append(f"| {key} | {np.nanmean(a):.3g} +- {np.nanstd(a):.2g} | {np.nanmean(b):.3g} +- {np.nanstd(b):.2g} |")
    return "\n".join(lines) + "\n"


@report_out
def compare_real(
    sim: str,
    real: str,
    out: str,
    *,
    sim_frames: str | None = None,
    real_frames: str | None = None,
    geometry: str | None = None,
    storage_options: dict | None = None,
) -> RealismReport:
    """Measure a simulated and a real stack the same way and write the realism report to ``out``.

    Parameters
    ----------
    sim, real : str
        Stacks of consecutive frames (zarr store, TIFF folder, stack file).
    out : str
        Report folder (local or ``s3://``).
    sim_frames, real_frames : str, optional
        ``START:STOP`` (0-based) frame ranges, e.g. ``0:30`` to calibrate and ``30:`` to check.
    geometry : str, optional
        ``geometry.json`` or preset of the real detector (default ``REAL/geometry.json``):
        beam centre and beam stop.
    storage_options : dict, optional

    Returns
    -------
    RealismReport
    """
    folder = claim_folder(out, inputs=[sim, real], create=False)
    sim_stack, _ = read_frames(sim, storage_options=storage_options)
    real_stack, _ = read_frames(real, storage_options=storage_options)
    sim_range = parse_frame_range(sim_frames, len(sim_stack), "--sim-frames")
    real_range = parse_frame_range(real_frames, len(real_stack), "--real-frames")
    sim_stack, real_stack = sim_stack[sim_range], real_stack[real_range]
    sim_stack, real_stack, sim_bin, real_bin = common_grid(sim_stack, real_stack)
    shape = sim_stack.shape[1:]
    center, beamstop, geometry_path = _geometry(geometry, real, shape, real_bin)
    summaries = {name: realism_summary(stack, center=center, beamstop=beamstop)
                 for name, stack in (("sim", sim_stack), ("real", real_stack))}
    rows = compare_summaries(summaries["sim"], summaries["real"], SUMMARY_KEYS)
    per_frame = {name: {key: np.asarray(values).tolist() for key, values in summary["per_frame"].items()}
                 for name, summary in summaries.items()}
    settings = {"sim": str(sim), "real": str(real), "sim_frames": f"{sim_range.start or 0}:{sim_range.stop or ''}",
                "real_frames": f"{real_range.start or 0}:{real_range.stop or ''}", "shape": list(shape),
                "sim_binning": sim_bin, "real_binning": real_bin, "geometry": geometry_path,
                "center_px": list(center)}
    make_folder(folder)
    files = [realism_figure(summaries["sim"], summaries["real"], folder / "realism.png")]
    (folder / "realism.md").write_text(markdown(rows, per_frame, settings))
    report = RealismReport(str(folder), rows, per_frame, settings)
    (folder / "realism.json").write_text(json.dumps(report.to_dict(), indent=1) + "\n")
    files += [folder / "realism.md", folder / "realism.json"]
    return RealismReport(str(folder), rows, per_frame, settings, [str(f) for f in files])


__all__ = ["RealismReport", "compare_real", "common_grid", "markdown", "parse_frame_range", "realism_figure"]
