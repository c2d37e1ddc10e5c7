"""Spot-level evaluation of LabDCT segmentations: labelling, spot tables, matching, scores.

A predicted spot is *found* (a true positive) when it is matched one-to-one to a true spot
of the same frame with intersection over union >= ``iou`` (0.3 by default); matching is
greedy by decreasing IoU. Precision, recall and F1 count spots, not pixels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from rayproc.errors import InputError


def _as_frames(array, name: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim not in (2, 3):
        raise InputError(f"{name} must be (H, W) or (N, H, W); got shape {array.shape} instead.")
    return array if array.ndim == 3 else array[None]


def label_spots(binary) -> np.ndarray:
    """Label 8-connected spots of each frame separately.

    Parameters
    ----------
    binary : array_like, shape (H, W) or (N, H, W)
        Nonzero on spot pixels.

    Returns
    -------
    numpy.ndarray of int32, shape of ``binary``
        0 on background, 1..K on spots; labels are unique across the stack and never join
        pixels of different frames.
    """
    binary = np.asarray(binary)
    frames = _as_frames(binary, "binary")
    structure = np.zeros((3, 3, 3), bool)
    structure[1] = True
    labels, _ = ndi.label(frames != 0, structure=structure)
    return labels.astype(np.int32).reshape(binary.shape)


def number_per_frame(labels) -> np.ndarray:
    """Renumber spot labels 1..K_f within each frame, in order of their first label.

    Parameters
    ----------
    labels : array_like of int, shape (H, W) or (N, H, W)
        Spot labels (0 = background), e.g. unique across a stack.

    Returns
    -------
    numpy.ndarray of int32, shape of ``labels``
        Frame ``f`` holds ids ``1 .. K_f`` (a frame's ids do not depend on the other frames,
        so slabs of a stack segmented apart agree with the whole stack segmented at once).

    Examples
    --------
    >>> number_per_frame(np.array([[[0, 4], [4, 9]], [[12, 0], [0, 0]]])).tolist()
    [[[0, 1], [1, 2]], [[1, 0], [0, 0]]]
    """
    labels = np.asarray(labels)
    frames = _as_frames(labels, "labels")
    out = np.zeros(frames.shape, np.int32)
    for index, frame in enumerate(frames):
        _, inverse = np.unique(frame, return_inverse=True)
        out[index] = inverse.reshape(frame.shape) + (0 if (frame == 0).any() else 1)
    return out.reshape(labels.shape)


def _frame_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Spot ids 1..K unique per (frame, label), in (frame, label) order, and their keys."""
    frames = _as_frames(labels, "labels").astype(np.int64)
    if (frames < 0).any():
        raise InputError("labels must be >= 0; got negative labels instead.")
    stride = int(frames.max()) + 1
    keys = frames + stride * np.arange(len(frames))[:, None, None]
    keys[frames == 0] = 0
    unique, ids = np.unique(keys, return_inverse=True)
    ids = ids.reshape(frames.shape)
    if unique[0] != 0:  # no background pixel at all: shift so ids start at 1
        ids += 1
        unique = np.concatenate([[0], unique])
    spot_keys = unique[1:]
    return ids, spot_keys // stride, spot_keys % stride


def spot_table(labels, image) -> dict[str, np.ndarray]:
    """One row per spot: frame, label, centroid, area and integrated intensity.

    Parameters
    ----------
    labels : array_like of int, shape (H, W) or (N, H, W)
        Spot labels (0 = background), unique per frame at least.
    image : array_like, same shape
        Intensities to integrate.

    Returns
    -------
    dict of numpy.ndarray, each of shape (K,)
        ``frame``, ``label`` (int64), ``centroid_y``, ``centroid_x`` (unweighted, pixels),
        ``area`` (int64, pixels), ``intensity`` (sum of ``image`` over the spot), rows in
        (frame, label) order.
    """
    image = np.asarray(image, dtype=np.float64)
    if np.shape(labels) != image.shape:
        raise InputError(
            f"labels and image must have one shape; got {np.shape(labels)} and {image.shape}."
        )
    ids, frame, label = _frame_ids(labels)
    count = len(frame)
    flat = ids.ravel()
    yy, xx = np.indices(ids.shape[1:])
    area = np.bincount(flat, minlength=count + 1)[1:]
    sums = [
        np.bincount(flat, weights=np.broadcast_to(w, ids.shape).ravel(), minlength=count + 1)[1:]
        for w in (yy, xx, image.reshape(ids.shape))
    ]
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "frame": frame,
            "label": label,
            "centroid_y": sums[0] / area,
            "centroid_x": sums[1] / area,
            "area": area,
            "intensity": sums[2],
        }


def match_spots(pred_labels, true_labels, *, iou: float = 0.3) -> dict:
    """Match predicted to true spots frame by frame and score them.

    Parameters
    ----------
    pred_labels, true_labels : array_like of int, shape (H, W) or (N, H, W)
        Spot labels (0 = background); binary masks must be labelled first
        (:func:`label_spots`).
    iou : float, optional
        Smallest intersection over union of a match.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``f1`` (floats; precision is 1 with no predicted spot,
        recall is 1 with no true spot), ``true_positives``, ``n_pred``, ``n_true`` (ints),
        ``true_found`` (bool, (n_true,), true spots in (frame, label) order as in
        :func:`spot_table`), ``pred_matched`` (bool, (n_pred,)) and ``matched_iou``
        (float, (n_true,), 0 where not found).
    """
    pred_shape, true_shape = np.shape(pred_labels), np.shape(true_labels)
    if pred_shape != true_shape:
        raise InputError(f"label arrays differ in shape: got {pred_shape} and {true_shape}.")
    if not 0 < iou <= 1:
        raise InputError(f"iou must be in (0, 1]; got {iou!r} instead.")
    pred_ids, pred_frames, _ = _frame_ids(pred_labels)
    true_ids, true_frames, _ = _frame_ids(true_labels)
    n_pred, n_true = len(pred_frames), len(true_frames)
    pred_area = np.bincount(pred_ids.ravel(), minlength=n_pred + 1)
    true_area = np.bincount(true_ids.ravel(), minlength=n_true + 1)
    both = (pred_ids > 0) & (true_ids > 0)
    pairs, overlap = np.unique(
        pred_ids[both].astype(np.int64) * (n_true + 1) + true_ids[both], return_counts=True
    )
    pred_of, true_of = pairs // (n_true + 1), pairs % (n_true + 1)
    pair_iou = overlap / (pred_area[pred_of] + true_area[true_of] - overlap)
    keep = pair_iou >= iou
    pred_matched = np.zeros(n_pred + 1, bool)
    true_found = np.zeros(n_true + 1, bool)
    matched_iou = np.zeros(n_true + 1)
    for index in np.argsort(-pair_iou[keep], kind="stable"):
        p, t = pred_of[keep][index], true_of[keep][index]
        if not (pred_matched[p] or true_found[t]):
            pred_matched[p] = true_found[t] = True
            matched_iou[t] = pair_iou[keep][index]
    hits = int(true_found.sum())
    precision = hits / n_pred if n_pred else 1.0
    recall = hits / n_true if n_true else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "true_positives": hits,
        "n_pred": n_pred,
        "n_true": n_true,
        "true_found": true_found[1:],
        "pred_matched": pred_matched[1:],
        "matched_iou": matched_iou[1:],
    }


def recall_by_snr(true_found, snr, bins) -> dict[str, np.ndarray]:
    """Recall of true spots in bins of their signal-to-noise ratio.

    Parameters
    ----------
    true_found : array_like of bool, shape (K,)
        From :func:`match_spots`.
    snr : array_like of float, shape (K,)
        SNR of each true spot, same order.
    bins : array_like of float, shape (B + 1,)
        Increasing bin edges; a spot falls in ``[edge_i, edge_i+1)`` (last bin closed).

    Returns
    -------
    dict of numpy.ndarray
        ``edges`` (B + 1,), ``count`` (B,) true spots per bin, ``recall`` (B,) found fraction
        (NaN in empty bins).
    """
    found = np.asarray(true_found, dtype=bool)
    snr = np.asarray(snr, dtype=np.float64)
    edges = np.asarray(bins, dtype=np.float64)
    if found.shape != snr.shape or found.ndim != 1:
        raise InputError(f"true_found and snr must be (K,); got {found.shape} and {snr.shape}.")
    if edges.ndim != 1 or len(edges) < 2 or (np.diff(edges) <= 0).any():
        raise InputError(f"bins must be increasing edges; got {edges!r} instead.")
    count = np.histogram(snr, edges)[0]
    hits = np.histogram(snr[found], edges)[0]
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(count > 0, hits / count, np.nan)
    return {"edges": edges, "count": count, "recall": recall}


def pixel_iou(pred, true) -> float:
    """Intersection over union of the nonzero pixels of two masks (1 when both are empty)."""
    pred, true = np.asarray(pred) != 0, np.asarray(true) != 0
    if pred.shape != true.shape:
        raise InputError(f"masks differ in shape: got {pred.shape} and {true.shape}.")
    union = np.count_nonzero(pred | true)
    return np.count_nonzero(pred & true) / union if union else 1.0


def spots_per_frame(labels) -> np.ndarray:
    """Number of distinct spot labels in each frame of a label stack ``(N, H, W)``, int64 ``(N,)``."""
    return np.array([len(np.unique(frame[frame > 0])) for frame in np.asarray(labels)], dtype=np.int64)


__all__ = ["label_spots", "match_spots", "pixel_iou", "recall_by_snr", "spot_table", "spots_per_frame"]
