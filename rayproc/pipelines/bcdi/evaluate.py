"""``rayproc bcdi evaluate``: impose gaps on a gap-free volume, inpaint them, score each method.

The model (:func:`rayproc.bcdi.inpaint.inpaint_volume`) and the interpolation baselines
(:func:`rayproc.bcdi.baselines.interpolate_gaps`) see the volume with the gap voxels hidden;
each is scored inside the gap against the measured counts with the PCC of eq. 1 of Masto et
al. [1]_ and the relative L1 error. Writes ``metrics.json``, ``metrics.md`` and one PNG per gap
with slices through the gap (truth, model, linear interpolation), like Figs. 3-4 of [1]_.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rayproc.bcdi.baselines import INTERPOLATIONS, interpolate_gaps
from rayproc.bcdi.gaps import AXIS_NAMES, gaps_to_mask, parse_gap
from rayproc.bcdi.inpaint import DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_STRIDE, inpaint_volume
from rayproc.bcdi.metrics import gap_pcc, relative_error
from rayproc.errors import InputError
from rayproc.runtime.resources import require_cuda
from rayproc.models.artifact import has_default_model, resolve_model
from rayproc.storage import command_line, provenance
from rayproc.storage.inputs import open_input
from rayproc.storage.outputs import claim_folder, make_folder
from rayproc.storage.readers import validate_counts
from rayproc.storage.model_dirs import local_model_dir, report_out

METRICS_JSON, METRICS_MD = "metrics.json", "metrics.md"
ZOOM = 48  # half-width (voxels) of the slice across a gap shown around the Bragg peak


@dataclass(frozen=True)
class EvaluationReport:
    """Scores per method: ``{method: {"pcc", "relative_error", "seconds"}}``, and the files written."""

    out: str
    shape: tuple[int, ...]
    gaps: list[str]
    gap_voxels: int
    methods: dict[str, dict[str, float]]
    model: dict | None
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out": self.out, "shape": list(self.shape), "gaps": list(self.gaps), "gap_voxels": self.gap_voxels,
                "methods": self.methods, "model": self.model, "files": list(self.files)}


def read_truth(source: str, *, sample: int = 0, storage_options: dict | None = None) -> np.ndarray:
    """A gap-free (z, y, x) volume from a file or a zarr store (``intensity``, sample ``sample``)."""
    intensity = open_input(source, ("intensity",), storage_options=storage_options)
    if intensity.location is not None and intensity.ndim == 4:
        if not 0 <= sample < intensity.shape[0]:
            raise InputError(f"--sample must be in [0, {intensity.shape[0]}); got {sample}.")
        return validate_counts(np.asarray(intensity[sample], dtype=np.float32), ndim=3)
    return validate_counts(intensity.values(), ndim=3)


def score_methods(truth, mask, predictions: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """In-gap PCC (eq. 1 of [1]_) and relative error of each prediction against ``truth``."""
    return {name: {"pcc": gap_pcc(pred, truth, mask), "relative_error": relative_error(pred, truth, mask)}
            for name, pred in predictions.items()}


@report_out
def evaluate_bcdi(
    volume: str,
    out: str,
    *,
    gaps: Sequence[str] = (),
    mask: str | None = None,
    mask_offset: Sequence[int] | None = None,
    model=None,
    stride: int = DEFAULT_STRIDE,
    blend: str = DEFAULT_BLEND,
    batch_size: int = DEFAULT_BATCH_SIZE,
    sample: int = 0,
    storage_options: dict | None = None,
    device: str = "cpu",
    command: str | None = None,
) -> EvaluationReport:
    """Score the model and the interpolation baselines on gaps imposed on a gap-free volume.

    Parameters
    ----------
    volume : str
        Gap-free measured (or simulated) volume: a file or a zarr store (``intensity``).
    out : str
        Local folder for ``metrics.json``, ``metrics.md`` and the figures.
    gaps : sequence of str
        Gaps to impose, ``AXIS:START:WIDTH``.
    mask, mask_offset : optional
        A detector mask to impose (nonzero = missing), as ``rayproc bcdi inpaint --mask`` takes
        it: a 3D mask, or a 2D detector mask applied to every frame, placed at ``mask_offset``
        (the detector pixel of the volume's first row and column), e.g. a real Maxipix layout.
    model : str, torch.nn.Module or None
        A model directory or a network (:func:`rayproc.models.artifact.resolve_model`); None
        uses the shipped model, or scores the baselines only when none is installed.
    stride, blend, batch_size
        Inpainting settings (:func:`rayproc.bcdi.inpaint.inpaint_volume`).
    sample : int
        Sample of a (sample, z, y, x) store.
    storage_options : dict, optional
        fsspec options for an ``s3://`` volume.
    device : str
        Torch device of the model.
    command : str, optional
        Command line recorded in ``metrics.json``.

    Returns
    -------
    EvaluationReport
    """
    if not gaps and mask is None:
        raise InputError("give at least one --gap AXIS:START:WIDTH or a --mask to impose on the volume.")
    require_cuda(device)
    folder = claim_folder(out, inputs=[volume, mask], create=False)
    gaps = [f"{a}:{s}:{w}" for a, s, w in (parse_gap(g) for g in gaps)]
    truth = read_truth(volume, sample=sample, storage_options=storage_options)
    mask_file = mask
    if mask is None:
        mask = gaps_to_mask(gaps, truth.shape)
    else:
        from rayproc.pipelines.bcdi.inpaint import target_mask

        mask = target_mask(volume, mask=mask_file, gaps=gaps, mask_offset=mask_offset, sample=sample,
                           storage_options=storage_options)
    observed = np.where(mask, np.float32(0), truth)
    network, description = None, None
    if model is not None or has_default_model("bcdi"):
        model = local_model_dir(model, storage_options)  # an s3:// model directory: a local copy
        network, resolved = resolve_model(model, "bcdi", device=device)
        description = resolved.describe()

    predictions, seconds = {}, {}
    if network is not None:
        started = time.perf_counter()
        predictions["model"], _ = inpaint_volume(observed, mask, network, stride=stride, blend=blend,
                                                 batch_size=batch_size)
        seconds["model"] = time.perf_counter() - started
    for method in INTERPOLATIONS:
        started = time.perf_counter()
        predictions[method] = np.maximum(interpolate_gaps(observed, mask, method), 0.0)
        seconds[method] = time.perf_counter() - started
    methods = score_methods(truth, mask, predictions)
    for name in methods:
        methods[name]["seconds"] = round(seconds[name], 3)

    shown = ["model" if network is not None else "cubic", "linear"]
    make_folder(folder)
    shown_predictions = {name: predictions[name] for name in shown}
    figures = [_plot_gap(truth, shown_predictions, gap, folder) for gap in gaps]
    if mask_file is not None:
        figures.append(_plot_mask(truth, mask, shown_predictions, folder))
    layout = [*gaps, *([f"mask {mask_file}" + (f" at {tuple(mask_offset)}" if mask_offset else "")]
                       if mask_file is not None else [])]
    report = EvaluationReport(str(folder), truth.shape, layout, int(mask.sum()), methods, description,
                              [str(folder / METRICS_JSON), str(folder / METRICS_MD), *map(str, figures)])
    settings = {"volume": str(volume), "sample": sample, "stride": int(stride), "blend": blend}
    record = {**report.to_dict(), **settings,
              "provenance": provenance(command or command_line(), {**settings, "gaps": gaps, "mask": mask_file,
                                                                   "mask_offset": mask_offset, "model": description})}
    (folder / METRICS_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
    (folder / METRICS_MD).write_text(_markdown(report, settings, [f.name for f in figures]))
    return report


def _markdown(report: EvaluationReport, settings: dict, figures: list[str]) -> str:
    model = report.model
    model_line = ("model: none installed (baselines only; pass --model DIR)" if model is None else
                  f"model: {model['source']} (sha256 {model['sha256'][:12]}), stride {settings['stride']}, "
                  f"blend {settings['blend']}")
    lines = [
        "# BCDI gap inpainting: evaluation",
        "",
        f"volume: {settings['volume']} {tuple(report.shape)}; gaps {', '.join(report.gaps)} "
        f"({report.gap_voxels} voxels)  ",
        model_line,
        "",
        "| method | in-gap PCC (eq. 1) | relative error | time (s) |",
        "|---|---:|---:|---:|",
    ]
    for name, m in report.methods.items():
        lines.append(f"| {name} | {m['pcc']:.4f} | {m['relative_error']:.4f} | {m['seconds']:.2f} |")
    lines += ["", "PCC: Pearson correlation of log1p intensities inside the gap (Masto et al. 2024, eq. 1); "
              "relative error: sum |pred - truth| / sum truth inside the gap.", ""]
    lines += [f"![{name}]({name})" for name in figures]
    return "\n".join(lines) + "\n"


def _around(point, dropped_axis: int, shape, half: int) -> tuple[slice, ...]:
    """2-D crop of ``half`` voxels around ``point`` in the plane without ``dropped_axis``."""
    return tuple(slice(max(0, point[a] - half), point[a] + half) for a in range(len(shape)) if a != dropped_axis)


def _plot_gap(truth: np.ndarray, predictions: dict[str, np.ndarray], gap: str, folder: Path) -> Path:
    """Slices through one gap (log1p counts): the plane in its middle, and a plane across it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis_name, start, width = parse_gap(gap)
    axis = AXIS_NAMES.index(axis_name)
    peak = np.unravel_index(np.argmax(truth), truth.shape)
    across = 0 if axis != 0 else 1
    views = [(f"{axis_name} = {start + width // 2} (inside the gap)", axis, start + width // 2, None),
             (f"{AXIS_NAMES[across]} = {peak[across]} (across the gap, near the peak)", across, peak[across],
              _around(peak, across, truth.shape, ZOOM))]
    columns = {"truth": truth, **predictions}
    figure, axes = plt.subplots(len(views), len(columns), figsize=(3.2 * len(columns), 3.0 * len(views)),
                                squeeze=False, constrained_layout=True)
    for row, (title, view_axis, index, crop) in enumerate(views):
        top = float(np.log1p(np.take(truth, index, axis=view_axis)).max()) or 1.0
        for col, (name, values) in enumerate(columns.items()):
            image = np.log1p(np.take(values, index, axis=view_axis))[crop or ...]
            shown = axes[row, col].imshow(image, vmin=0, vmax=top, cmap="turbo", origin="lower")
            axes[row, col].set_title(f"{name}\n{title}", fontsize=8)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
        figure.colorbar(shown, ax=axes[row, -1], label="log(1 + counts)", shrink=0.8)
    path = folder / f"gap-{axis_name}{start}w{width}.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _plot_mask(truth: np.ndarray, mask: np.ndarray, predictions: dict[str, np.ndarray], folder: Path) -> Path:
    """The detector frame through the Bragg peak (log1p counts): truth, the masked frame, predictions."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    peak = np.unravel_index(np.argmax(truth), truth.shape)
    frame = int(peak[0])
    columns = {"truth": truth, "masked (input)": np.where(mask, np.nan, truth), **predictions}
    crop = _around(peak, 0, truth.shape, ZOOM)
    top = float(np.log1p(truth[frame]).max()) or 1.0
    figure, axes = plt.subplots(2, len(columns), figsize=(3.2 * len(columns), 6.0), squeeze=False,
                                constrained_layout=True)
    for col, (name, values) in enumerate(columns.items()):
        image = np.log1p(values[frame])
        for row, view in enumerate((image, image[crop])):
            shown = axes[row, col].imshow(view, vmin=0, vmax=top, cmap="turbo", origin="lower")
            axes[row, col].set_title(f"{name}\n{AXIS_NAMES[0]} = {frame}" + (" (zoom on the peak)" if row else ""),
                                     fontsize=8)
            axes[row, col].set_xticks([])
            axes[row, col].set_yticks([])
    figure.colorbar(shown, ax=axes[:, -1], label="log(1 + counts)", shrink=0.8)
    path = folder / "mask-frame-through-peak.png"
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = ["EvaluationReport", "evaluate_bcdi", "read_truth", "score_methods"]
