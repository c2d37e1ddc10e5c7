"""Scoring spot segmentations against the truth of a synthesised LabDCT stack (pure numpy).

The protocol of ``rayproc labdct evaluate`` (:mod:`rayproc.pipelines.labdct.evaluate`):

1. **Truth.** The true spots are the 8-connected spots of the LoG segmentation of the
   noise-free projections (``target``).
2. **Tuning.** The standard routine's LoG parameters are tuned by a grid search maximising spot
   F1 (:func:`tune_relative`), with ``background`` in multiples of the residual noise ``s``
   (robust standard deviation of the frames less their rolling median), so a tuned
   ``background = k s`` transfers to frames of another intensity scale.
3. **Scores.** Spot precision, recall and F1 (one-to-one matches with IoU >= ``iou``), recall
   per SNR bin (:func:`recall_record`) and the pixel IoU of the spot masks (:func:`score`).
4. **SNR of a true spot**, three definitions (:data:`SNR_KINDS`), each that of the simulated
   spot covering most of it (:func:`truth_snr`): *integrated* (``spot_snr``), *peak*
   (``spot_peak_snr``) and *mean* = integrated / sqrt(area) (:func:`mean_snr`).
5. **Real frames** (no truth): the network's background residual, its spot probability away
   from the standard routine's spots (:func:`background_residual`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
from scipy import ndimage as ndi

from rayproc.labdct.spots import match_spots, pixel_iou, recall_by_snr
from rayproc.labdct.standard_routine import StandardRoutineParams, residual_noise, tune_standard_routine

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


def recall_record(founds: Mapping[str, np.ndarray], snr: np.ndarray, bins: Sequence[float]) -> dict:
    """Bin edges, true spots per bin, each method's recall per bin (None for empty bins) and
    over the weak spots (``weak``: SNR < :data:`WEAK_BELOW`)."""
    count = recall_by_snr(np.zeros(len(snr), bool), snr, bins)["count"]
    recalls = {name: recall_by_snr(found, snr, bins)["recall"] for name, found in founds.items()}
    weak = np.asarray(snr) < WEAK_BELOW
    return {"edges": [float(e) for e in bins], "count": count.tolist(),
            **{name: [None if np.isnan(r) else float(r) for r in values] for name, values in recalls.items()},
            "weak": {"below": WEAK_BELOW, "count": int(weak.sum()),
                     **{name: float(found[weak].mean()) if weak.any() else None for name, found in founds.items()}}}


CEILING_SNR = (2.0, 3.0, 5.0)  # integrated SNR above which an ideal detector finds every spot


def detection_ceiling(snr, thresholds=CEILING_SNR) -> list[dict]:
    """Scores of an ideal detector that finds every true spot of integrated SNR >= ``t`` and nothing else.

    Spots far below the noise cannot be told from it by any method (a matched filter of the
    spot's own shape reaches the integrated SNR at best), yet the LoG targets keep them, so
    recall and F1 have a ceiling below 1. Its recall is the share of true spots at or above
    ``t`` (spots without an SNR count as below), precision 1, F1 ``2 R / (1 + R)``.

    Parameters
    ----------
    snr : array_like, shape (K,)
        Integrated SNR of each true spot (:func:`truth_snr`).
    thresholds : sequence of float

    Returns
    -------
    list of dict
        ``{"snr_at_least", "recall", "f1"}`` per threshold.
    """
    snr = np.asarray(snr, dtype=np.float64)
    rows = []
    for t in thresholds:
        recall = float(np.mean(np.nan_to_num(snr, nan=-np.inf) >= t)) if len(snr) else 1.0
        rows.append({"snr_at_least": float(t), "recall": recall, "f1": 2 * recall / (1 + recall)})
    return rows


def mean_snr(snr, area) -> np.ndarray:
    """Mean-pixel SNR of spots from their integrated SNR and labelled area ``A``: ``snr / sqrt(A)``.

    With the integrated SNR ``g I / (tau sqrt(A I0 mean(I_BG) / 2))`` of ``rayproc labdct synth``
    this is the spot's mean signal per pixel, ``g I / A``, over the per-pixel background noise.
    """
    snr, area = np.asarray(snr, np.float64), np.asarray(area, np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(area > 0, snr / np.sqrt(area), np.nan)


def background_residual(denoised, standard_labels, *, beamstop=None, threshold: float = 0.5,
                        margin: int = RESIDUAL_MARGIN) -> dict:
    """Spot probability of a network on pixels far from any spot of the standard routine.

    Parameters
    ----------
    denoised : ndarray, shape (N, H, W)
        Spot probability of the network.
    standard_labels : ndarray of int, shape (N, H, W)
        Spots of the standard routine (0 = none).
    beamstop : ndarray of bool, shape (H, W), optional
        Pixels left out (the beam stop).
    threshold : float
        Spot probability threshold of the network.
    margin : int
        Pixels kept clear around every standard-routine spot.

    Returns
    -------
    dict
        ``background_pixels``, ``residual_mean``, ``residual_std``, ``residual_p99`` and
        ``residual_above_threshold`` (fraction of those pixels at or above ``threshold``).
    """
    clear = ~ndi.binary_dilation(np.asarray(standard_labels) > 0, structure=np.ones((1, 3, 3), bool),
                                 iterations=margin)
    if beamstop is not None:
        clear &= ~np.asarray(beamstop, bool)
    background = np.asarray(denoised)[clear]
    return {"background_pixels": int(clear.sum()), "residual_mean": float(background.mean()),
            "residual_std": float(background.std()), "residual_p99": float(np.percentile(background, 99)),
            "residual_above_threshold": float((background >= threshold).mean())}


__all__ = ["CEILING_SNR", "DEFAULT_GRID", "DEFAULT_SNR_BINS", "MEAN_SNR_BINS", "PEAK_SNR_BINS", "RESIDUAL_MARGIN",
           "SNR_KINDS", "SPOT_COLUMNS", "WEAK_BELOW", "background_residual", "detection_ceiling", "mean_snr",
           "recall_record", "score", "truth_snr", "tune_relative"]
