"""Figures and the markdown table of ``rayproc labdct evaluate`` (matplotlib, no computing).

:func:`plot_panels` (input / network / spots / truth, a frame and a zoom), :func:`plot_profiles`
(line profiles across weak spots, like Fig. 4 of Fang et al.), :func:`plot_recall` (recall per
SNR bin, one panel per SNR definition), :func:`plot_real_spots` (the two methods' spots drawn
over a real frame, and their counts per frame) and :func:`markdown` (``metrics.md``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from rayproc.labdct.evaluation import RESIDUAL_MARGIN, SNR_KINDS, WEAK_BELOW
from rayproc.labdct.spots import spot_table, spots_per_frame

PROFILE_HALF = 12  # half-length (px) of a line profile
N_PROFILES = 3
WEAK_SNR = (5.0, 20.0)  # SNR range of the profiled weak spots
CROP = 128  # zoom window of the panel figures (px)


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show_input(ax, image, title):
    low, high = np.percentile(image, [1, 99.5])
    ax.imshow(image, cmap="gray", vmin=low, vmax=high)
    ax.set_title(title, fontsize=8)


def _crop(mask: np.ndarray, size: int) -> tuple[slice, slice]:
    """The ``size`` x ``size`` window of a frame holding the most ``mask`` pixels."""
    size = min(size, *mask.shape)
    density = ndi.uniform_filter(mask.astype(np.float32), size, mode="constant")
    cy, cx = np.unravel_index(np.argmax(density), mask.shape)
    top, left = (int(np.clip(c - size // 2, 0, n - size)) for c, n in zip((cy, cx), mask.shape))
    return slice(top, top + size), slice(left, left + size)


def plot_panels(frames, denoised, predictions, target, path: Path, *, title: str, first: int = 0) -> Path:
    """Input / network output / spots of each method / truth: one whole frame and a zoom.

    The frame is the one with the most reference spot pixels (the truth, else the first
    method's), the zoom the ``CROP`` window densest in them.
    """
    plt = _mpl()
    reference = target if target is not None else next(iter(predictions.values())) > 0
    index = int(np.argmax(reference.sum(axis=(1, 2))))
    columns = [("input", frames[index], "input")]
    if denoised is not None:
        columns.append(("network: spot probability", denoised[index], "prob"))
    columns += [(f"{name}: spots", labels[index] > 0, "mask") for name, labels in predictions.items()]
    if target is not None:
        columns.append(("truth: LoG of the noise-free projection", target[index], "mask"))
    crop = _crop(reference[index], CROP)
    figure, axes = plt.subplots(2, len(columns), figsize=(3.2 * len(columns), 6.6), squeeze=False,
                                constrained_layout=True)
    for row, window in enumerate(((slice(None), slice(None)), crop)):
        (top, bottom), (left, right) = ((w.start, w.stop) for w in window)
        where = "" if row == 0 else f" (zoom y {top}:{bottom}, x {left}:{right})"
        for ax, (name, image, kind) in zip(axes[row], columns):
            if kind == "input":
                _show_input(ax, image[window], f"{title} {first + index}: {name}{where}")
            else:
                ax.imshow(image[window], cmap="magma", vmin=0, vmax=1, interpolation="nearest")
                ax.set_title(name + where, fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_real_spots(frames, predictions: dict, path: Path, *, title: str = "real frame", first: int = 0,
                    beamstop=None) -> Path:
    """Each method's spots outlined over a real frame (whole frame and a zoom), and spots per frame.

    The frame is a typical one (every method's count nearest its median over the frames); the
    zoom the ``CROP`` window densest in the first method's spots. Outlines are the spots' edge
    pixels.
    """
    plt = _mpl()
    counts = {name: spots_per_frame(labels) for name, labels in predictions.items()}
    names = list(predictions)
    distance = sum(np.abs(c - np.median(c)) / max(np.median(c), 1) for c in counts.values())
    index = int(np.argmin(distance))
    crop = _crop(predictions[names[0]][index] > 0, CROP)
    colours = ("#00e5ff", "#ff3d00", "#76ff03")
    figure, axes = plt.subplots(2, len(names) + 1, figsize=(3.6 * (len(names) + 1), 7.2), squeeze=False,
                                constrained_layout=True)
    image = frames[index]
    low, high = np.percentile(image if beamstop is None else image[~beamstop], [1, 99.5])
    for row, window in enumerate(((slice(None), slice(None)), crop)):
        (top, bottom), (left, right) = ((w.start, w.stop) for w in window)
        where = "" if row == 0 else f" (zoom y {top}:{bottom}, x {left}:{right})"
        for column, name in enumerate(names):
            ax = axes[row, column]
            ax.imshow(image[window], cmap="gray", vmin=low, vmax=high, interpolation="nearest")
            mask = predictions[name][index][window] > 0
            edge = mask & ~ndi.binary_erosion(mask)
            overlay = np.zeros(edge.shape + (4,), np.float32)
            overlay[edge] = (*(int(colours[column % 3][i:i + 2], 16) / 255 for i in (1, 3, 5)), 1.0)
            ax.imshow(overlay, interpolation="nearest")
            ax.set_title(f"{title} {first + index}: {name}, {counts[name][index]} spots{where}", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
    ax = axes[0, -1]
    for column, name in enumerate(names):
        ax.plot(first + np.arange(len(frames)), counts[name], "o-", ms=3, color=colours[column % 3],
                label=f"{name}: {counts[name].mean():.0f} per frame")
    ax.set_xlabel("frame")
    ax.set_ylabel("spots per frame")
    ax.legend(fontsize=7)
    ax.set_title("spots per frame", fontsize=8)
    axes[1, -1].axis("off")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_profiles(frames, denoised, predictions, truth, snr, path: Path, *, first: int = 0) -> Path:
    """Profiles along x through weak true spots (SNR in ``WEAK_SNR``), away from the frame edges.

    ``N_PROFILES`` spots spread over the range (weakest, middle, strongest); the weakest with
    SNR >= 2 when fewer are in range.
    """
    plt = _mpl()
    table = spot_table(truth, frames)  # rows in sorted label order, as ``snr``
    centre_y, centre_x = np.round(table["centroid_y"]).astype(int), np.round(table["centroid_x"]).astype(int)
    ids = np.unique(truth[truth > 0])
    inside = (centre_x >= PROFILE_HALF) & (centre_x < frames.shape[2] - PROFILE_HALF) & np.isfinite(snr)
    weak = np.flatnonzero(inside & (snr >= WEAK_SNR[0]) & (snr < WEAK_SNR[1]))
    if len(weak) >= N_PROFILES:
        weak = weak[np.argsort(snr[weak], kind="stable")]
        chosen = weak[np.linspace(0, len(weak) - 1, N_PROFILES).round().astype(int)]
    else:
        candidates = np.flatnonzero(inside & (snr >= 2))
        chosen = candidates[np.argsort(snr[candidates], kind="stable")][:N_PROFILES]
    figure, axes = plt.subplots(1, max(len(chosen), 1), figsize=(4.2 * max(len(chosen), 1), 3.4), squeeze=False,
                                constrained_layout=True)
    for ax, row in zip(axes[0], chosen):
        frame, y, x = int(table["frame"][row]), centre_y[row], centre_x[row]
        span = slice(x - PROFILE_HALF, x + PROFILE_HALF + 1)
        positions = np.arange(frames.shape[2])[span]
        profile = frames[frame, y, span]
        ax.plot(positions, profile, color="0.3", label="input (counts)")
        near = profile[PROFILE_HALF - 3 : PROFILE_HALF + 4]  # brighter neighbours are clipped
        ax.set_ylim(profile.min() - 1, profile.min() + 1.6 * (near.max() - profile.min()) + 1)
        ax.set_xlabel("x (px)")
        ax.set_ylabel("input (counts)")
        ax.set_title(f"projection {first + frame}, row {y}: SNR {snr[row]:.1f}", fontsize=8)
        right = ax.twinx()
        right.step(positions, truth[frame, y, span] == ids[row], where="mid", color="k", ls=":", label="truth")
        if denoised is not None:
            right.plot(positions, denoised[frame, y, span], color="C3", label="network probability")
        for offset, (name, labels) in enumerate(predictions.items()):
            right.step(positions, (labels[frame, y, span] > 0) * (0.9 - 0.05 * offset), where="mid",
                       color=f"C{offset}", alpha=0.7, label=f"{name} spots")
        right.set_ylim(-0.05, 1.05)
        right.set_ylabel("probability / mask")
        lines = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        right.legend(lines, [line.get_label() for line in lines], fontsize=6, loc="upper right")
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_recall(records: dict[str, dict], path: Path) -> Path:
    """Recall against SNR bin, one panel per SNR definition (keys of :data:`SNR_KINDS`)."""
    plt = _mpl()
    figure, axes = plt.subplots(1, len(records), figsize=(5 * len(records), 3.4), constrained_layout=True,
                                squeeze=False)
    for ax, (kind, record) in zip(axes[0], records.items()):
        edges = record["edges"]
        labels = [f"{a:g}-{b:g}" if np.isfinite(b) else f">={a:g}" for a, b in zip(edges[:-1], edges[1:])]
        for name in ("dl", "standard"):
            if name in record:
                values = [np.nan if r is None else r for r in record[name]]
                ax.plot(range(len(labels)), values, "o-", label=name)
        ax.set_xticks(range(len(labels)), labels, fontsize=7)
        ax.set_xlabel(SNR_KINDS[kind][1])
        ax.set_ylabel("recall")
        ax.set_ylim(-0.02, 1.02)
        ax.legend()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _recall_lines(record: dict, names: list[str], title: str) -> list[str]:
    edges = record["edges"]
    lines = ["", f"{title}:", "", "| SNR | true spots | " + " | ".join(f"recall {n}" for n in names) + " |",
             "|---|---:|" + "---:|" * len(names)]
    for i, count in enumerate(record["count"]):
        low, high = edges[i], edges[i + 1]
        span = f"{low:g}-{high:g}" if np.isfinite(high) else f">= {low:g}"
        cells = ["-" if record[n][i] is None else f"{record[n][i]:.3f}" for n in names]
        lines.append(f"| {span} | {count} | " + " | ".join(cells) + " |")
    return lines


def _weak_lines(report, names: list[str]) -> list[str]:
    records = {kind: record for kind, record in report.recall_records().items() if "weak" in record}
    if not records:
        return []
    gain = len(names) == 2 and set(names) == {"dl", "standard"}
    lines = ["", f"Weak spots (SNR < {WEAK_BELOW:g}) per SNR definition (ideal: the share of them with "
             "integrated SNR >= 2, the recall of the ideal detector of the ceiling below):", "",
             "| SNR definition | true spots | " + " | ".join(f"recall {n}" for n in names) + (" | dl - standard |"
             if gain else " |") + " ideal |", "|---|---:|" + "---:|" * (len(names) + gain + 1)]
    for label, record in records.items():
        weak = record["weak"]
        cells = ["-" if weak.get(n) is None else f"{weak[n]:.3f}" for n in names]
        if gain:
            cells.append("-" if weak["dl"] is None else f"{weak['dl'] - weak['standard']:+.3f}")
        cells.append("-" if weak.get("ideal") is None else f"{weak['ideal']:.3f}")
        lines.append(f"| {label} | {weak['count']} | " + " | ".join(cells) + " |")
    return lines


def markdown(report, settings: dict, figures: list[str]) -> str:
    tuned = report.tuned
    model = report.model
    lines = [
        "# LabDCT spot segmentation: network vs tuned standard routine",
        "",
        f"synthetic stack: {settings['synth']}; tuned on {tuned['tune_projections']} projections, "
        f"tested on {tuned['test_projections']}"
        + (" (the same ones: oracle tuning)" if tuned.get("oracle") else "") + "  ",
        "model: none installed (standard routine only; pass --model DIR)" if model is None else
        f"model: {model['source']}" + (f" (sha256 {model['sha256'][:12]})" if model.get("sha256") else ""),
        "",
        f"Tuned standard routine: {tuned['params']} (background = {tuned['background_k']:.2g} x residual noise); "
        f"F1 on the tuning projections {tuned['f1_tuning']:.3f}.",
        "",
        "| method | precision | recall | F1 | pixel IoU | predicted spots | true spots | time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, m in report.methods.items():
        lines.append(f"| {name} | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} | {m['pixel_iou']:.3f} | "
                     f"{m['n_pred']} | {m['n_true']} | {m['seconds']:.2f} |")
    names = [n for n in report.methods if n in report.recall_by_snr]
    for kind, record in report.recall_records().items():
        lines += _recall_lines(record, names, f"Recall per {kind}-SNR bin")
    lines += _weak_lines(report, names)
    if getattr(report, "ceiling", None):
        lines += ["", "Ceiling: an ideal detector that finds every true spot at or above an integrated SNR and "
                  "nothing else (the spots below cannot be told from the noise):", "",
                  "| finds every spot with integrated SNR >= | recall | F1 |", "|---:|---:|---:|"]
        lines += [f"| {row['snr_at_least']:g} | {row['recall']:.3f} | {row['f1']:.3f} |" for row in report.ceiling]
    lines += ["", f"Truth: spots of the LoG segmentation of the noise-free projections (`target`); its F1 against "
              f"the simulator's own spot labels is {tuned['target_vs_simulated_f1']:.3f}. A spot is found when matched "
              f"one-to-one with IoU >= {settings['iou']}. Integrated SNR: intensity of the (dominant) simulated spot "
              "over the background Poisson noise under it; peak SNR: its brightest noise-free pixel over the "
              "per-pixel background noise; mean SNR: its mean signal per labelled pixel over the per-pixel "
              "noise (integrated / sqrt(area)). Pixel IoU: spot masks against the target mask.", ""]
    if report.real is not None:
        r = report.real
        binned = f", binned {r['binning']}x to the synthetic pixel" if r.get("binning", 1) > 1 else ""
        lines += [f"## Real frames: {r['source']} ({r['frames']} frames {tuple(r['shape'])}{binned})", "",
                  f"Standard routine with background = {tuned['background_k']:.2g} x residual noise "
                  f"({r['residual_noise']:.3g} counts): {r['standard_spots_per_frame']:.1f} spots/frame.  "]
        if "residual_mean" in r:
            lines += [f"Network: {r['dl_spots_per_frame']:.1f} spots/frame, F1 against the standard routine "
                      f"{r['dl_vs_standard_f1']:.3f}.", "",
                      "| background residual of the network | value |", "|---|---:|",
                      f"| mean spot probability | {r['residual_mean']:.4f} |",
                      f"| std | {r['residual_std']:.4f} |",
                      f"| 99th percentile | {r['residual_p99']:.4f} |",
                      f"| fraction above threshold | {r['residual_above_threshold']:.5f} |",
                      f"| pixels (> {RESIDUAL_MARGIN} px from standard spots, off the beam stop) | "
                      f"{r['background_pixels']} |"]
        lines.append("")
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


__all__ = ["markdown", "plot_panels", "plot_profiles", "plot_real_spots", "plot_recall"]
