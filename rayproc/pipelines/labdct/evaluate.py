"""``rayproc labdct evaluate``: the spot network against the tuned standard routine.

On a held-out synthesised stack (``rayproc labdct synth``, never used for training):

1. **Truth.** The true spots are the 8-connected spots of ``target``, the LoG segmentation of
   the noise-free projections: the segmentation both methods aim at. (The simulator's own
   ``spot_label`` marks every spot down to 5 % of its peak, far below the noise and across
   overlaps; the F1 of the target against it is reported as a reference.)
2. **Tuning.** The first ``tune_fraction`` of the projections tune the standard routine by a
   grid search over its four LoG parameters (:data:`DEFAULT_GRID`: ``background`` in
   multiples of the residual noise, ``sigma``, ``percentage``, ``min_size``; ``n_rolling``
   fixed), maximising spot F1 (:func:`rayproc.labdct.standard_routine.tune_standard_routine`).
   The residual noise ``s`` is the robust standard deviation (1.4826 MAD) of the frames less
   their rolling median, so a tuned ``background = k s`` transfers to frames of another
   intensity scale (the real frames) as ``k`` times their own ``s``. The transfer assumes the
   real noise has the spatial statistics of the synthetic (white Poisson) noise; correlated
   detector noise yields more noise blobs at the same ``k``.
3. **Test.** On the remaining projections, the network (:func:`rayproc.labdct.denoise.denoise_frames`,
   then :func:`~rayproc.labdct.denoise.dl_spot_labels`) and the tuned routine are scored:
   spot precision, recall and F1 (one-to-one matches with IoU >= ``iou``, 0.3), recall per
   SNR bin and the pixel IoU of the spot masks with the target.
4. **SNR of a true spot**, three definitions, each that of the simulated spot covering most of
   it (recall per bin of each, and over SNR < 2 of each): *integrated*, ``spot_snr``
   (``rayproc labdct synth``: intensity over the background Poisson noise under the spot's
   ``A`` pixels); *peak*, ``spot_peak_snr`` (brightest noise-free pixel over the per-pixel
   noise); *mean*, ``spot_snr / sqrt(A)`` (mean signal per spot pixel over the per-pixel
   noise: the contrast-to-noise ratio of imaging). Mean <= peak, and integrated = mean
   ``sqrt(A)``: a spot of mean SNR 1.5 over 30 px has integrated SNR 8.

On real frames (``real``, no ground truth): the background residual of the network, i.e.
the mean, standard deviation and 99th percentile of its spot probability over pixels more
than 3 px from any spot of the standard routine (and off the beam stop), the fraction of
those pixels above the threshold, spots per frame of both methods and their agreement (F1 of
the network's spots against the routine's).

Writes ``metrics.json``, ``metrics.md``, ``standard_params.json`` (the tuned routine, for
``rayproc labdct segment --params``) and PNG figures: input / network / standard routine /
truth panels, line profiles across weak spots (like Fig. 4 of Fang et al.) and recall
against SNR.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from rayproc.errors import InputError
from rayproc.labdct.spots import label_spots, match_spots, pixel_iou, recall_by_snr, spot_table
from rayproc.labdct.standard_routine import (
    StandardRoutineParams, residual_noise, standard_routine, tune_standard_routine,
)
from rayproc.pipelines.labdct.background import beamstop_mask, read_frames
from rayproc.pipelines.labdct.segment import DEFAULT_MODEL_NAME, dl_segment, load_spot_network
from rayproc.runtime.resources import require_cuda
from rayproc.storage import command_line, open_dataset, provenance, resolve
from rayproc.storage.outputs import claim_folder, make_folder

METRICS_JSON, METRICS_MD, PARAMS_JSON = "metrics.json", "metrics.md", "standard_params.json"
# Standard-routine grid; background in multiples of the residual noise (see the module notes).
DEFAULT_GRID = {"background": (2.0, 3.0, 4.0, 6.0, 8.0, 12.0), "sigma": (1.0, 1.5, 2.0),
                "percentage": (10.0, 20.0, 40.0), "min_size": (2, 4, 8)}
DEFAULT_SNR_BINS = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, np.inf)
PEAK_SNR_BINS = (0.0, 1.0, 2.0, 3.0, 5.0, 10.0, np.inf)  # peak pixel over per-pixel noise
MEAN_SNR_BINS = (0.0, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, np.inf)  # mean spot pixel over per-pixel noise
WEAK_BELOW = 2.0  # "SNR < 2": the weak spots summarised for every definition
# SNR definitions of a true spot: the column of the SNR table and the x-axis label of the figure.
SNR_KINDS = {"integrated": ("spot_snr", "integrated spot SNR"), "peak": ("spot_peak_snr", "peak SNR (per pixel)"),
             "mean": ("spot_mean_snr", "mean SNR (per spot pixel)")}
SPOT_COLUMNS = ("precision", "recall", "f1", "pixel_iou", "n_pred", "n_true", "true_positives", "seconds")
RESIDUAL_MARGIN = 3  # px kept clear of the standard routine's spots in the background residual
PROFILE_HALF = 12  # half-length (px) of a line profile
N_PROFILES = 3
WEAK_SNR = (5.0, 20.0)  # SNR range of the profiled weak spots
CROP = 128  # zoom window of the panel figures (px)


@dataclass(frozen=True)
class LabdctEvaluationReport:
    """Spot scores per method on the synthetic test frames, and the real-frame residuals."""

    out: str
    tuned: dict
    methods: dict[str, dict[str, float]]
    recall_by_snr: dict
    real: dict | None
    model: dict | None
    files: list[str] = field(default_factory=list)
    recall_by_peak_snr: dict | None = None
    recall_by_mean_snr: dict | None = None

    def recall_records(self) -> dict[str, dict]:
        """The recall record of each SNR definition evaluated (keys of :data:`SNR_KINDS`)."""
        records = {"integrated": self.recall_by_snr, "peak": self.recall_by_peak_snr, "mean": self.recall_by_mean_snr}
        return {kind: record for kind, record in records.items() if record is not None}

    def to_dict(self) -> dict:
        return {"out": self.out, "tuned": self.tuned, "methods": self.methods, "recall_by_snr": self.recall_by_snr,
                "recall_by_peak_snr": self.recall_by_peak_snr, "recall_by_mean_snr": self.recall_by_mean_snr,
                "real": self.real, "model": self.model, "files": list(self.files)}


def tune_relative(stack, truth, grid: Mapping[str, Sequence], *, n_rolling: int = 5, beamstop=None,
                  iou: float = 0.3) -> tuple[StandardRoutineParams, float, dict]:
    """Grid search with ``background`` given in multiples of :func:`residual_noise`.

    Returns the best parameters (absolute background), the best multiple ``k`` and the table
    of :func:`~rayproc.labdct.standard_routine.tune_standard_routine` plus ``background_k``.
    """
    noise = residual_noise(stack, n_rolling)
    multiples = np.asarray(grid.get("background", DEFAULT_GRID["background"]), dtype=np.float64)
    absolute = {**grid, "background": tuple(multiples * noise)}
    best, table = tune_standard_routine(stack, truth, absolute, base=StandardRoutineParams(n_rolling=n_rolling),
                                        beamstop=beamstop, iou=iou)
    best = replace(best, background=float(best.background))
    table["background_k"] = table["background"] / noise if noise > 0 else np.zeros_like(table["background"])
    return best, float(best.background / noise) if noise > 0 else 0.0, table


def truth_snr(truth, simulated_labels, projections, snr_table: Mapping[str, np.ndarray], *,
              column: str = "spot_snr") -> np.ndarray:
    """SNR of each true spot (sorted label order): that of the simulated spot covering most of it.

    ``snr_table``: ``spot_projection``, ``spot_id`` and ``column`` (``spot_snr`` or
    ``spot_peak_snr``) of the synthesised store; ``projections``: the projection index of each
    frame of ``truth``.
    """
    truth = np.asarray(truth)
    ids = np.unique(truth[truth > 0])
    frame_of = np.broadcast_to(np.asarray(projections)[:, None, None], truth.shape)
    sim = np.asarray(simulated_labels)
    inside = (truth > 0) & (sim > 0)
    if not inside.any():
        return np.full(len(ids), np.nan)
    table_ids = np.asarray(snr_table["spot_id"], np.int64)
    stride = int(max(sim.max(), table_ids.max(initial=0))) + 1
    keys = frame_of[inside].astype(np.int64) * stride + sim[inside]
    pairs, counts = np.unique(np.stack([truth[inside], keys]), axis=1, return_counts=True)
    order = np.lexsort((-counts, pairs[0]))  # per true spot, the most overlapping simulated spot first
    first = order[np.r_[True, np.diff(pairs[0][order]) != 0]]
    dominant = dict(zip(pairs[0][first], pairs[1][first]))
    table_keys = np.asarray(snr_table["spot_projection"], np.int64) * stride + table_ids
    snr_of = dict(zip(table_keys, np.asarray(snr_table[column], np.float64)))
    return np.array([snr_of.get(dominant.get(i, -1), np.nan) for i in ids])


def score(pred_labels, truth_labels, target_mask, *, iou: float) -> tuple[dict, np.ndarray]:
    """Spot scores of one method and which true spots it found."""
    match = match_spots(pred_labels, truth_labels, iou=iou)
    scores = {key: match[key] for key in ("precision", "recall", "f1", "n_pred", "n_true", "true_positives")}
    scores["pixel_iou"] = pixel_iou(pred_labels, target_mask)
    return scores, match["true_found"]


def _recall_record(founds: Mapping[str, np.ndarray], snr: np.ndarray, bins: Sequence[float]) -> dict:
    """Bin edges, true spots per bin, each method's recall per bin (None for empty bins) and
    over the weak spots (``weak``: SNR < :data:`WEAK_BELOW`)."""
    count = recall_by_snr(np.zeros(len(snr), bool), snr, bins)["count"]
    recalls = {name: recall_by_snr(found, snr, bins)["recall"] for name, found in founds.items()}
    weak = np.asarray(snr) < WEAK_BELOW
    return {"edges": [float(e) for e in bins], "count": count.tolist(),
            **{name: [None if np.isnan(r) else float(r) for r in values] for name, values in recalls.items()},
            "weak": {"below": WEAK_BELOW, "count": int(weak.sum()),
                     **{name: float(found[weak].mean()) if weak.any() else None for name, found in founds.items()}}}


def mean_snr(snr, area) -> np.ndarray:
    """Mean-pixel SNR of spots from their integrated SNR and labelled area ``A``: ``snr / sqrt(A)``.

    With the integrated SNR ``g I / (tau sqrt(A I0 mean(I_BG) / 2))`` of ``rayproc labdct synth``
    this is the spot's mean signal per pixel, ``g I / A``, over the per-pixel background noise.
    """
    snr, area = np.asarray(snr, np.float64), np.asarray(area, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, snr / np.sqrt(area), np.nan)


def evaluate_labdct(
    synth: str,
    out: str,
    *,
    model=None,
    real: str | None = None,
    real_beamstop_from: str | None = None,
    real_frames: int | None = None,
    tune_fraction: float = 0.5,
    grid: Mapping[str, Sequence] | None = None,
    n_rolling: int = 5,
    snr_bins: Sequence[float] = DEFAULT_SNR_BINS,
    iou: float = 0.3,
    threshold: float | None = None,
    device: str = "cpu",
    storage_options: dict | None = None,
    command: str | None = None,
) -> LabdctEvaluationReport:
    """Tune the standard routine, then score it and the network on held-out synthetic frames.

    Parameters
    ----------
    synth : str
        A synthesised store (``input``, ``target``, ``spot_label``, ``spot_snr``...).
    out : str
        Local folder for the tables and figures.
    model : str or torch.nn.Module, optional
        The network (see :func:`rayproc.pipelines.labdct.segment.load_spot_network`); None uses
        the shipped model, or scores the standard routine alone when none is installed.
    real : str, optional
        Real frames (TIFF folder, stack file or zarr store) for the background residual.
    real_beamstop_from : str, optional
        ``geometry.json`` of the real frames (default: ``REAL/geometry.json`` when present).
    real_frames : int, optional
        Use only the first frames of ``real``.
    tune_fraction : float
        Fraction of the projections (the first ones) used for tuning, in (0, 1).
    grid : mapping, optional
        Tuning grid (:data:`DEFAULT_GRID`); ``background`` in multiples of the residual noise.
    n_rolling : int
        Frames of the standard routine's rolling median (not tuned).
    snr_bins : sequence of float
        SNR bin edges of the recall table.
    iou : float
        Smallest IoU of a spot match.
    threshold : float, optional
        Spot probability threshold of the network (default of ``dl_spot_labels``).
    device : str
        Torch device of the network.
    storage_options : dict, optional
        fsspec options for an ``s3://`` store.
    command : str, optional
        Command line recorded in ``metrics.json``.

    Returns
    -------
    LabdctEvaluationReport
    """
    from rayproc.models.artifact import default_model_dir

    if not 0 < tune_fraction < 1:
        raise InputError(f"tune_fraction must be in (0, 1); got {tune_fraction!r}.")
    require_cuda(device)
    folder = claim_folder(out, inputs=[synth, real], create=False)
    grid = dict(DEFAULT_GRID if grid is None else grid)
    location = resolve(synth, storage_options)
    ds = open_dataset(location)
    needed = ("input", "target", "spot_label", "spot_snr", "spot_projection", "spot_id")
    missing = [name for name in needed if name not in ds.variables]
    if missing:
        raise InputError(f"{location.url} is not a synthesised LabDCT store (`rayproc labdct synth`): "
                         f"missing {missing}.")
    n = ds.sizes["omega"]
    if n < 2:
        raise InputError(f"evaluation needs at least 2 projections (tuning and test); {location.url} has {n}.")
    n_tune = int(np.clip(round(n * tune_fraction), 1, n - 1))
    frames = ds.input.values.astype(np.float32)
    target = ds.target.values > 0
    truth = label_spots(target)
    snr_columns = [c for c in ("spot_snr", "spot_peak_snr") if c in ds]  # stores before peak SNR lack it
    snr_table = {name: ds[name].values for name in ("spot_projection", "spot_id", *snr_columns)}
    if "spot_area_px" in ds:
        snr_table["spot_mean_snr"] = mean_snr(snr_table["spot_snr"], ds["spot_area_px"].values)
    no_model = model is None and not (default_model_dir(DEFAULT_MODEL_NAME) / "config.json").is_file()
    network, scale, description = (None, None, None) if no_model else load_spot_network(model, device=device)
    label_options = {} if threshold is None else {"threshold": threshold}

    tune, test = slice(0, n_tune), slice(n_tune, n)
    started = time.perf_counter()
    best, k_best, table = tune_relative(frames[tune], truth[tune], grid, n_rolling=n_rolling, iou=iou)
    tuning_seconds = time.perf_counter() - started
    truth_test = label_spots(target[test])
    snrs = {kind: truth_snr(truth_test, ds.spot_label.values[test], np.arange(n_tune, n), snr_table, column=column)
            for kind, (column, _) in SNR_KINDS.items() if column in snr_table}
    predictions, extra, methods = {}, {}, {}
    if network is not None:
        started = time.perf_counter()
        extra["dl"], predictions["dl"] = dl_segment(frames[test], network, scale, **label_options)
        methods["dl"] = {"seconds": time.perf_counter() - started}
    started = time.perf_counter()
    predictions["standard"] = standard_routine(frames[test], best)
    methods["standard"] = {"seconds": time.perf_counter() - started}
    founds = {}
    for name, labels in predictions.items():
        scores, founds[name] = score(labels, truth_test, target[test], iou=iou)
        methods[name] = {**scores, "seconds": round(methods[name]["seconds"], 3)}
    bins = {"integrated": snr_bins, "peak": PEAK_SNR_BINS, "mean": MEAN_SNR_BINS}
    records = {kind: _recall_record(founds, values, bins[kind]) for kind, values in snrs.items()}
    reference = match_spots(truth_test, ds.spot_label.values[test], iou=iou)
    tuned = {"params": best.to_dict(), "background_k": k_best, "tune_projections": n_tune,
             "test_projections": n - n_tune, "grid": {k: list(map(float, v)) for k, v in grid.items()},
             "seconds": round(tuning_seconds, 3), "f1_tuning": float(table["f1"].max()),
             "target_vs_simulated_f1": reference["f1"]}

    make_folder(folder)
    figures = [_plot_panels(frames[test], extra.get("dl"), predictions, target[test], folder / "panels_synthetic.png",
                            title="synthetic projection", first=n_tune)]
    figures.append(_plot_profiles(frames[test], extra.get("dl"), predictions, truth_test, snrs["integrated"],
                                  folder / "profiles_weak_spots.png", first=n_tune))
    figures.append(_plot_recall(records, folder / "recall_by_snr.png"))
    real_record = None
    if real is not None:
        real_record, real_figure = _evaluate_real(real, real_beamstop_from, real_frames, best, k_best, n_rolling,
                                                  network, scale, label_options, folder, storage_options)
        figures.append(real_figure)
    (folder / PARAMS_JSON).write_text(json.dumps(best.to_dict(), indent=2) + "\n")
    files = [str(folder / f) for f in (METRICS_JSON, METRICS_MD, PARAMS_JSON)] + [str(f) for f in figures]
    report = LabdctEvaluationReport(str(folder), tuned, methods, records["integrated"], real_record, description,
                                    files, records.get("peak"), records.get("mean"))
    settings = {"synth": location.url, "real": real, "real_frames": real_frames, "iou": iou, "n_rolling": n_rolling,
                "tune_fraction": tune_fraction, "threshold": threshold}
    record = {**report.to_dict(), "settings": settings,
              "tuning_table": {k: v.tolist() for k, v in table.items()},
              "provenance": provenance(command or command_line(), {**settings, "model": description})}
    (folder / METRICS_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
    (folder / METRICS_MD).write_text(_markdown(report, settings, [Path(f).name for f in figures]))
    return report


def _evaluate_real(real, beamstop_from, limit, best, k_best, n_rolling, network, scale, label_options, folder,
                   storage_options) -> tuple[dict, Path]:
    """Background residual of the network on real frames; the routine uses ``k_best`` of their noise."""
    frames, _ = read_frames(real, storage_options=storage_options)
    frames = frames[:limit] if limit else frames
    default_geometry = Path(str(real)) / "geometry.json"
    if beamstop_from is None and default_geometry.is_file():
        beamstop_from = str(default_geometry)
    beamstop = beamstop_mask(beamstop_from, frames.shape[1:])
    noise = residual_noise(frames, n_rolling)
    params = replace(best, background=k_best * noise)
    standard = standard_routine(frames, params, beamstop=beamstop)
    record = {"source": str(real), "frames": len(frames), "shape": list(frames.shape[1:]),
              "beamstop_from": beamstop_from, "residual_noise": noise, "standard_params": params.to_dict(),
              "standard_spots_per_frame": int(standard.max()) / len(frames)}
    denoised = None
    if network is not None:
        started = time.perf_counter()
        denoised, dl = dl_segment(frames, network, scale, beamstop=beamstop, **label_options)
        seconds = time.perf_counter() - started
        clear = ~ndi.binary_dilation(standard > 0, structure=np.ones((1, 3, 3), bool), iterations=RESIDUAL_MARGIN)
        if beamstop is not None:
            clear &= ~beamstop
        background = denoised[clear]
        threshold = label_options.get("threshold", 0.5)
        agreement = match_spots(dl, standard)
        record.update({
            "dl_seconds": round(seconds, 3),
            "background_pixels": int(clear.sum()),
            "residual_mean": float(background.mean()),
            "residual_std": float(background.std()),
            "residual_p99": float(np.percentile(background, 99)),
            "residual_above_threshold": float((background >= threshold).mean()),
            "dl_spots_per_frame": int(dl.max()) / len(frames),
            "dl_vs_standard_f1": agreement["f1"],
        })
    figure = _plot_panels(frames, denoised, {"standard": standard, **({"dl": dl} if network is not None else {})},
                          None, folder / "panels_real.png", title="real frame")
    return record, figure


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


def _plot_panels(frames, denoised, predictions, target, path: Path, *, title: str, first: int = 0) -> Path:
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


def _plot_profiles(frames, denoised, predictions, truth, snr, path: Path, *, first: int = 0) -> Path:
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


def _plot_recall(records: dict[str, dict], path: Path) -> Path:
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


def _weak_lines(report: LabdctEvaluationReport, names: list[str]) -> list[str]:
    records = {kind: record for kind, record in report.recall_records().items() if "weak" in record}
    if not records:
        return []
    gain = len(names) == 2 and set(names) == {"dl", "standard"}
    lines = ["", f"Weak spots (SNR < {WEAK_BELOW:g}) per SNR definition:", "",
             "| SNR definition | true spots | " + " | ".join(f"recall {n}" for n in names) + (" | dl - standard |"
             if gain else " |"), "|---|---:|" + "---:|" * (len(names) + gain)]
    for label, record in records.items():
        weak = record["weak"]
        cells = ["-" if weak.get(n) is None else f"{weak[n]:.3f}" for n in names]
        if gain:
            cells.append("-" if weak["dl"] is None else f"{weak['dl'] - weak['standard']:+.3f}")
        lines.append(f"| {label} | {weak['count']} | " + " | ".join(cells) + " |")
    return lines


def _markdown(report: LabdctEvaluationReport, settings: dict, figures: list[str]) -> str:
    tuned = report.tuned
    model = report.model
    lines = [
        "# LabDCT spot segmentation: network vs tuned standard routine",
        "",
        f"synthetic stack: {settings['synth']}; tuned on {tuned['tune_projections']} projections, "
        f"tested on {tuned['test_projections']}  ",
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
    lines += ["", f"Truth: spots of the LoG segmentation of the noise-free projections (`target`); its F1 against "
              f"the simulator's own spot labels is {tuned['target_vs_simulated_f1']:.3f}. A spot is found when matched "
              f"one-to-one with IoU >= {settings['iou']}. Integrated SNR: intensity of the (dominant) simulated spot "
              "over the background Poisson noise under it; peak SNR: its brightest noise-free pixel over the "
              "per-pixel background noise; mean SNR: its mean signal per labelled pixel over the per-pixel "
              "noise (integrated / sqrt(area)). Pixel IoU: spot masks against the target mask.", ""]
    if report.real is not None:
        r = report.real
        lines += [f"## Real frames: {r['source']} ({r['frames']} frames {tuple(r['shape'])})", "",
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


__all__ = ["DEFAULT_GRID", "DEFAULT_SNR_BINS", "MEAN_SNR_BINS", "PEAK_SNR_BINS", "SNR_KINDS",
           "LabdctEvaluationReport", "evaluate_labdct", "mean_snr", "score", "truth_snr", "tune_relative"]
