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
   detector noise yields more noise blobs at the same ``k``. With ``oracle=True`` the routine
   is tuned on all the projections and both methods are scored on those same projections: an
   oracle tuning, the strictest baseline (a user cannot tune on the frames' ground truth).
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

The scoring maths is :mod:`rayproc.labdct.evaluation`; figures and ``metrics.md`` are
:mod:`rayproc.pipelines.labdct.evaluation_report`. On real frames (``real``, no ground truth):
the background residual of the network, i.e. the mean, standard deviation and 99th percentile
of its spot probability over pixels more
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

from rayproc.errors import InputError
from rayproc.labdct.evaluation import (
    CEILING_SNR, DEFAULT_GRID, DEFAULT_SNR_BINS, MEAN_SNR_BINS, PEAK_SNR_BINS, SNR_KINDS, SPOT_COLUMNS, WEAK_BELOW,
    background_residual, detection_ceiling, mean_snr, recall_record, score, truth_snr, tune_relative,
)
from rayproc.labdct.calibration import bin_to_shape
from rayproc.labdct.spots import label_spots, match_spots, spots_per_frame
from rayproc.labdct.standard_routine import residual_noise, standard_routine
from rayproc.pipelines.labdct.stack import beamstop_mask, read_frames
from rayproc.pipelines.labdct.evaluation_report import (
    markdown, plot_panels, plot_profiles, plot_real_spots, plot_recall,
)
from rayproc.models.artifact import has_default_model, resolve_model
from rayproc.pipelines.labdct.segment import dl_segment, spot_scale
from rayproc.runtime.resources import require_cuda
from rayproc.storage import command_line, open_dataset, provenance, resolve
from rayproc.storage.outputs import claim_folder, make_folder
from rayproc.storage.model_dirs import local_model_dir, report_out

METRICS_JSON, METRICS_MD, PARAMS_JSON = "metrics.json", "metrics.md", "standard_params.json"


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
    ceiling: list | None = None

    def recall_records(self) -> dict[str, dict]:
        """The recall record of each SNR definition evaluated (keys of :data:`SNR_KINDS`)."""
        records = {"integrated": self.recall_by_snr, "peak": self.recall_by_peak_snr, "mean": self.recall_by_mean_snr}
        return {kind: record for kind, record in records.items() if record is not None}

    def to_dict(self) -> dict:
        return {"out": self.out, "tuned": self.tuned, "methods": self.methods, "recall_by_snr": self.recall_by_snr,
                "recall_by_peak_snr": self.recall_by_peak_snr, "recall_by_mean_snr": self.recall_by_mean_snr,
                "real": self.real, "model": self.model, "files": list(self.files), "ceiling": self.ceiling}


@report_out
def evaluate_labdct(
    synth: str,
    out: str,
    *,
    model=None,
    real: str | None = None,
    real_beamstop_from: str | None = None,
    real_frames: int | None = None,
    tune_fraction: float = 0.5,
    oracle: bool = False,
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
        The network (see :func:`rayproc.models.artifact.resolve_model`); None uses
        the shipped model, or scores the standard routine alone when none is installed.
    real : str, optional
        Real frames (TIFF folder, stack file or zarr store) for the background residual.
    real_beamstop_from : str, optional
        ``geometry.json`` of the real frames (default: ``REAL/geometry.json`` when present).
    real_frames : int, optional
        Use only the first frames of ``real``.
    tune_fraction : float
        Fraction of the projections (the first ones) used for tuning, in (0, 1).
    oracle : bool
        Tune the routine on all projections and score both methods on all of them (the
        strictest baseline); ``tune_fraction`` is then unused.
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
    n_tune = n if oracle else int(np.clip(round(n * tune_fraction), 1, n - 1))
    frames = ds.input.values.astype(np.float32)
    target = ds.target.values > 0
    truth = label_spots(target)
    snr_columns = [c for c in ("spot_snr", "spot_peak_snr") if c in ds]  # stores before peak SNR lack it
    snr_table = {name: ds[name].values for name in ("spot_projection", "spot_id", *snr_columns)}
    if "spot_area_px" in ds:
        snr_table["spot_mean_snr"] = mean_snr(snr_table["spot_snr"], ds["spot_area_px"].values)
    network, scale, description = None, None, None
    if model is not None or has_default_model("labdct"):
        model = local_model_dir(model, storage_options)  # an s3:// model directory: a local copy
        network, resolved = resolve_model(model, "labdct", device=device)
        scale, description = spot_scale(resolved), resolved.describe()
    label_options = {} if threshold is None else {"threshold": threshold}

    first_test = 0 if oracle else n_tune
    tune, test = slice(0, n_tune), slice(first_test, n)
    started = time.perf_counter()
    best, k_best, table = tune_relative(frames[tune], truth[tune], grid, n_rolling=n_rolling, iou=iou)
    tuning_seconds = time.perf_counter() - started
    truth_test = label_spots(target[test])
    snrs = {kind: truth_snr(truth_test, ds.spot_label.values[test], np.arange(first_test, n), snr_table, column=column)
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
    records = {kind: recall_record(founds, values, bins[kind]) for kind, values in snrs.items()}
    for kind, record in records.items():  # the ideal detector's recall of each definition's weak spots
        weak = np.asarray(snrs[kind]) < WEAK_BELOW
        if "weak" in record and weak.any():
            record["weak"]["ideal"] = detection_ceiling(snrs["integrated"][weak], (CEILING_SNR[0],))[0]["recall"]
    reference = match_spots(truth_test, ds.spot_label.values[test], iou=iou)
    tuned = {"params": best.to_dict(), "background_k": k_best, "tune_projections": n_tune,
             "test_projections": n - first_test, "oracle": oracle,
             "grid": {k: list(map(float, v)) for k, v in grid.items()},
             "seconds": round(tuning_seconds, 3), "f1_tuning": float(table["f1"].max()),
             "target_vs_simulated_f1": reference["f1"]}

    make_folder(folder)
    figures = [plot_panels(frames[test], extra.get("dl"), predictions, target[test], folder / "panels_synthetic.png",
                            title="synthetic projection", first=first_test)]
    figures.append(plot_profiles(frames[test], extra.get("dl"), predictions, truth_test, snrs["integrated"],
                                  folder / "profiles_weak_spots.png", first=first_test))
    figures.append(plot_recall(records, folder / "recall_by_snr.png"))
    real_record = None
    if real is not None:
        real_record, real_figures = _evaluate_real(real, real_beamstop_from, real_frames, best, k_best, n_rolling,
                                                   network, scale, label_options, folder, storage_options,
                                                   frames.shape[1:])
        figures.extend(real_figures)
    (folder / PARAMS_JSON).write_text(json.dumps(best.to_dict(), indent=2) + "\n")
    files = [str(folder / f) for f in (METRICS_JSON, METRICS_MD, PARAMS_JSON)] + [str(f) for f in figures]
    report = LabdctEvaluationReport(str(folder), tuned, methods, records["integrated"], real_record, description,
                                    files, records.get("peak"), records.get("mean"),
                                    detection_ceiling(snrs["integrated"]))
    settings = {"synth": location.url, "real": real, "real_frames": real_frames, "iou": iou, "n_rolling": n_rolling,
                "tune_fraction": None if oracle else tune_fraction, "oracle": oracle, "threshold": threshold}
    record = {**report.to_dict(), "settings": settings,
              "tuning_table": {k: v.tolist() for k, v in table.items()},
              "provenance": provenance(command or command_line(), {**settings, "model": description})}
    (folder / METRICS_JSON).write_text(json.dumps(record, indent=2, default=str) + "\n")
    (folder / METRICS_MD).write_text(markdown(report, settings, [Path(f).name for f in figures]))
    return report


def _evaluate_real(real, beamstop_from, limit, best, k_best, n_rolling, network, scale, label_options, folder,
                   storage_options, shape) -> tuple[dict, list[Path]]:
    """Background residual of the network on real frames; the routine uses ``k_best`` of their noise.

    Real frames an integer multiple of the synthetic ``shape`` are binned (summed) to its pixel,
    the pixel both methods were tuned and trained at.
    """
    frames, _ = read_frames(real, storage_options=storage_options)
    frames = frames[:limit] if limit else frames
    default_geometry = Path(str(real)) / "geometry.json"
    if beamstop_from is None and default_geometry.is_file():
        beamstop_from = str(default_geometry)
    frames, beamstop, binning = bin_to_shape(frames, shape, beamstop_mask(beamstop_from, frames.shape[1:]))
    binning = max(binning, 1)  # not a multiple: the frames as they are
    noise = residual_noise(frames, n_rolling)
    params = replace(best, background=k_best * noise)
    standard = standard_routine(frames, params, beamstop=beamstop)
    record = {"source": str(real), "frames": len(frames), "shape": list(frames.shape[1:]), "binning": binning,
              "beamstop_from": beamstop_from, "residual_noise": noise, "standard_params": params.to_dict(),
              "standard_spots_per_frame": float(spots_per_frame(standard).mean()),
              "standard_spots_each_frame": spots_per_frame(standard).tolist()}
    denoised = None
    if network is not None:
        started = time.perf_counter()
        denoised, dl = dl_segment(frames, network, scale, beamstop=beamstop, **label_options)
        seconds = time.perf_counter() - started
        residual = background_residual(denoised, standard, beamstop=beamstop,
                                       threshold=label_options.get("threshold", 0.5))
        record.update({"dl_seconds": round(seconds, 3), **residual,
                       "dl_spots_per_frame": float(spots_per_frame(dl).mean()),
                       "dl_spots_each_frame": spots_per_frame(dl).tolist(),
                       "dl_vs_standard_f1": match_spots(dl, standard)["f1"]})
    predictions = {**({"network": dl} if network is not None else {}), "standard routine": standard}
    figures = [plot_panels(frames, denoised, {"standard": standard, **({"dl": dl} if network is not None else {})},
                           None, folder / "panels_real.png", title="real frame"),
               plot_real_spots(frames, predictions, folder / "spots_real.png", beamstop=beamstop)]
    return record, figures


__all__ = ["DEFAULT_GRID", "DEFAULT_SNR_BINS", "MEAN_SNR_BINS", "PEAK_SNR_BINS", "SNR_KINDS", "SPOT_COLUMNS",
           "LabdctEvaluationReport", "evaluate_labdct", "mean_snr", "score", "truth_snr", "tune_relative"]
