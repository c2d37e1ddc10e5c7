"""Realism measurements of LabDCT frames: the same numbers on simulated and on measured stacks.

A stack of consecutive raw frames (measured, or simulated spots laid on a background with
noise) is reduced to the quantities that tell a simulation from a measurement:

* spots per frame, found by one detector for both (:func:`detect_spots`: the standard routine
  of Fang et al. [1]_ with its defaults, rolling median subtracted, LoG above ``k`` times the
  residual noise);
* per spot (:func:`spot_measurements`): area (px), radial and tangential extent (px, along
  and across the line from the beam centre), peak and integrated intensity over the local
  noise (:func:`local_noise_map`);
* the background (the rolling median of the raw frames): its level and radial profile
  (:func:`radial_profile`) and its profile across the beam-stop edge
  (:func:`beamstop_edge_profile`).

:func:`realism_summary` bundles them per frame and pooled; :func:`compare_summaries` puts two
summaries side by side with their relative difference.

Extent of a spot along a unit vector ``u``: ``sqrt(12 var_u + 1)`` px, with ``var_u`` the
variance of the spot's pixel centres projected on ``u``; the length of the uniform bar of the
same second moment (a single pixel has extent 1). ``u`` is the radial direction from the beam
centre to the spot centroid, or its perpendicular (tangential).

References
----------
.. [1] H. Fang et al., deep-learning denoising of LabDCT projections (standard routine:
   rolling median and LoG segmentation).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from rayproc.errors import InputError
from rayproc.labdct.background import rolling_median
from rayproc.labdct.standard_routine import DEFAULT_BACKGROUND_SIGMAS, log_spot_labels, robust_noise

# The standard routine with its defaults (``StandardRoutineParams()``: background 8 x the residual noise,
# < 1 false spot per megapixel per frame on noise-only stacks).
DETECTION = {"n_rolling": 5, "k": DEFAULT_BACKGROUND_SIGMAS, "sigma": 1.5, "percentage": 20.0, "min_size": 4}
SPOT_KEYS = ("frame", "area_px", "radius_px", "radial_extent_px", "tangential_extent_px",
             "elongation", "peak_snr", "integrated_snr")
# Pooled scalars of :func:`realism_summary`, in table order; the first three are the acceptance targets.
SUMMARY_KEYS = ("spots_per_frame", "median_area_px", "p90_elongation", "median_radial_extent_px",
                "median_tangential_extent_px", "median_peak_snr", "median_integrated_snr",
                "background_level", "residual_noise")


def _stack(frames) -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or min(frames.shape) < 1:
        raise InputError(f"frames must be a stack (N, H, W); got shape {frames.shape} instead.")
    return frames


def _mask(beamstop, shape) -> np.ndarray:
    if beamstop is None:
        return np.zeros(shape, dtype=bool)
    beamstop = np.asarray(beamstop, dtype=bool)
    if beamstop.shape != tuple(shape):
        raise InputError(f"beamstop must have the frame shape {tuple(shape)}; got {beamstop.shape} instead.")
    return beamstop


def detect_spots(frames, *, beamstop=None, n_rolling: int = 5, k: float = DEFAULT_BACKGROUND_SIGMAS, sigma: float = 1.5,
                 percentage: float = 20.0, min_size: int = 4) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Spots of a raw stack by the standard routine at ``k`` times its residual noise.

    Parameters
    ----------
    frames : array_like, shape (N, H, W)
        Consecutive raw frames (at least ``n_rolling`` for a meaningful median).
    beamstop : array_like of bool, shape (H, W), optional
        Pixels excluded from the noise estimate and from spots.
    n_rolling, k, sigma, percentage, min_size :
        Rolling-median length, threshold in noise units and LoG parameters
        (:func:`rayproc.labdct.standard_routine.log_spot_labels`); defaults ``DETECTION``,
        the standard routine's own defaults.

    Returns
    -------
    labels : ndarray of int32, shape (N, H, W)
        Spot labels, unique across the stack.
    residual : ndarray of float32, shape (N, H, W)
        Frames less their rolling median.
    background : ndarray of float32, shape (N, H, W)
        The rolling median itself (the background estimate).
    noise : float
        Robust standard deviation of ``residual`` off the beam stop.
    """
    frames = _stack(frames)
    mask = _mask(beamstop, frames.shape[1:])
    background = rolling_median(frames, min(n_rolling, len(frames)))
    residual = frames - background
    noise = robust_noise(residual, beamstop=mask)
    if not noise > 0:
        raise InputError("the frames have no residual noise after the rolling median; cannot detect spots.")
    labels = log_spot_labels(residual, background=k * noise, sigma=sigma, percentage=percentage,
                             min_size=min_size, beamstop=mask)
    return labels, residual, background, noise


def local_noise_map(residual, *, tile: int = 32, beamstop=None) -> np.ndarray:
    """Robust noise (1.4826 MAD over all frames) of the residual in ``tile x tile`` blocks, (H, W).

    Blocks with no unmasked pixel take the median of the others; the block values are spread
    back to full resolution by nearest neighbour.
    """
    residual = _stack(residual)
    mask = _mask(beamstop, residual.shape[1:])
    n, h, w = residual.shape
    ty, tz = -(-h // tile), -(-w // tile)
    coarse = np.full((ty, tz), np.nan)
    for i in range(ty):
        for j in range(tz):
            block = residual[:, i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]
            keep = ~mask[i * tile:(i + 1) * tile, j * tile:(j + 1) * tile]
            values = block[:, keep]
            if values.size:
                coarse[i, j] = 1.4826 * np.median(np.abs(values - np.median(values)))
    good = np.isfinite(coarse) & (coarse > 0)
    if not good.any():
        raise InputError("no unmasked pixel with noise in the residual; cannot measure the local noise.")
    coarse[~good] = np.median(coarse[good])
    return np.repeat(np.repeat(coarse, tile, axis=0), tile, axis=1)[:h, :w].astype(np.float32)


def spot_measurements(labels, residual, noise_map, center) -> dict[str, np.ndarray]:
    """Shape and brightness of every labelled spot.

    Parameters
    ----------
    labels : array_like of int, shape (N, H, W)
        Spot labels 1..K (0 background), unique across the stack.
    residual : array_like, shape (N, H, W)
        Background-subtracted frames.
    noise_map : array_like, shape (H, W)
        Local noise (same units as ``residual``).
    center : (float, float)
        Beam centre (row, column) in pixel coordinates.

    Returns
    -------
    dict of ndarray, each shape (K,)
        ``SPOT_KEYS``: frame, area_px, radius_px (centroid to beam centre), radial_extent_px,
        tangential_extent_px, elongation (radial over tangential extent), peak_snr (largest
        residual over the local noise at that pixel), integrated_snr (summed residual over
        ``noise sqrt(area)``).

    Examples
    --------
    A 5 px radial streak, 1 px wide, right of a beam centre at (2, 0):

    >>> labels = np.zeros((1, 5, 12), np.int32)
    >>> labels[0, 2, 4:9] = 1
    >>> spots = spot_measurements(labels, 3.0 * labels, 1.0, (2.0, 0.0))
    >>> float(spots["radial_extent_px"][0]), float(spots["tangential_extent_px"][0]), float(spots["peak_snr"][0])
    (5.0, 1.0, 3.0)
    """
    labels = np.asarray(labels)
    residual = _stack(residual)
    if labels.shape != residual.shape:
        raise InputError(f"labels {labels.shape} and residual {residual.shape} differ in shape.")
    noise_map = np.broadcast_to(np.asarray(noise_map, dtype=np.float64), residual.shape[1:])
    index = np.flatnonzero(labels)
    spot = labels.ravel()[index].astype(np.int64)
    ids, spot = np.unique(spot, return_inverse=True)
    count = len(ids)
    if not count:
        return {key: np.zeros(0) for key in SPOT_KEYS}
    frame, row, col = np.unravel_index(index, labels.shape)
    value = residual.ravel()[index].astype(np.float64)
    local = noise_map[row, col]
    area = np.bincount(spot, minlength=count).astype(np.float64)
    mean_r, mean_c = (np.bincount(spot, x, count) / area for x in (row, col))
    dy, dx = mean_r - center[0], mean_c - center[1]
    radius = np.hypot(dy, dx)
    uy, ux = np.where(radius > 0, dy / np.maximum(radius, 1e-12), 1.0), np.where(radius > 0, dx / np.maximum(radius, 1e-12), 0.0)
    offset_r, offset_c = row - mean_r[spot], col - mean_c[spot]
    along = offset_r * uy[spot] + offset_c * ux[spot]
    across = -offset_r * ux[spot] + offset_c * uy[spot]
    radial = np.sqrt(12 * np.bincount(spot, along**2, count) / area + 1)
    tangential = np.sqrt(12 * np.bincount(spot, across**2, count) / area + 1)
    peak = np.full(count, -np.inf)
    np.maximum.at(peak, spot, value / local)
    integrated = np.bincount(spot, value, count) / (np.bincount(spot, local, count) / area * np.sqrt(area))
    first_frame = np.zeros(count, dtype=np.int64)
    first_frame[spot] = frame
    return {"frame": first_frame, "area_px": area, "radius_px": radius, "radial_extent_px": radial,
            "tangential_extent_px": tangential, "elongation": radial / tangential, "peak_snr": peak,
            "integrated_snr": integrated}


def radial_profile(image, center, *, bin_px: float = 16.0, mask=None, max_radius: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``image`` in rings of width ``bin_px`` around ``center`` (off ``mask``).

    Returns
    -------
    radii : ndarray, shape (B,)
        Ring centres (px).
    values : ndarray, shape (B,)
        Median per ring (NaN for a ring with no unmasked pixel).
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2:
        raise InputError(f"image must be (H, W); got shape {image.shape} instead.")
    mask = _mask(mask, image.shape)
    yy, xx = np.indices(image.shape)
    radius = np.hypot(yy - center[0], xx - center[1])
    top = radius.max() if max_radius is None else max_radius
    edges = np.arange(0.0, top + bin_px, bin_px)
    ring = np.digitize(radius, edges) - 1
    values = np.full(len(edges) - 1, np.nan)
    keep = ~mask
    for b in range(len(values)):
        pixels = image[keep & (ring == b)]
        if pixels.size:
            values[b] = np.median(pixels)
    return (edges[:-1] + edges[1:]) / 2, values


def beamstop_edge_profile(image, beamstop, *, distances=np.arange(-24, 49, 4)) -> tuple[np.ndarray, np.ndarray]:
    """Median of ``image`` against the signed distance (px) of pixel centres to the beam-stop edge.

    Negative distances lie inside ``beamstop``; the profile is divided by its value at the
    largest distance, so a hard, opaque stop reads 0 inside and 1 outside, and a soft or
    partly transmitting one a ramp.

    Returns
    -------
    distances : ndarray, shape (D,)
        Bin centres (px).
    profile : ndarray, shape (D,)
        Normalised median per bin (NaN when empty).
    """
    image = np.asarray(image, dtype=np.float64)
    beamstop = _mask(beamstop, image.shape)
    distances = np.asarray(distances, dtype=np.float64)
    if not beamstop.any():
        return distances, np.full(len(distances), np.nan)
    # pixel centres: +-0.5 px from the edge next to it
    signed = np.where(beamstop, 0.5 - ndi.distance_transform_edt(beamstop), ndi.distance_transform_edt(~beamstop) - 0.5)
    half = (distances[1] - distances[0]) / 2 if len(distances) > 1 else 0.5
    profile = np.full(len(distances), np.nan)
    for i, d in enumerate(distances):
        pixels = image[(signed >= d - half) & (signed < d + half)]
        if pixels.size:
            profile[i] = np.median(pixels)
    far = profile[np.isfinite(profile)][-1] if np.isfinite(profile).any() else np.nan
    return distances, profile / far if far else profile


def realism_summary(frames, *, center, beamstop=None, detection: dict | None = None, tile: int = 32,
                    bin_px: float = 16.0, normalise_flux: bool = True) -> dict:
    """Every realism measurement of one stack, per frame and pooled.

    Parameters
    ----------
    frames : array_like, shape (N, H, W)
        Consecutive raw frames.
    center : (float, float)
        Beam centre (row, column), px.
    beamstop : array_like of bool, shape (H, W), optional
    detection : dict, optional
        Overrides of ``DETECTION`` (see :func:`detect_spots`).
    tile, bin_px : local-noise tile and radial-profile ring width (px).
    normalise_flux : bool
        Scale frames to a common level first (:func:`normalise_frame_flux`).

    Returns
    -------
    dict
        ``pooled``: ``SUMMARY_KEYS`` scalars; ``per_frame``: spots, median_area_px,
        p90_elongation and background_level per frame (arrays (N,)); ``spots``: the
        :func:`spot_measurements` table; ``radial_profile``: (radii_px, values) of the mean
        background; ``edge_profile``: (distances_px, values).
    """
    frames = _stack(frames)
    mask = _mask(beamstop, frames.shape[1:])
    if normalise_flux:
        frames = normalise_frame_flux(frames, beamstop=mask)
    settings = {**DETECTION, **(detection or {})}
    labels, residual, background, noise = detect_spots(frames, beamstop=mask, **settings)
    noise_map = local_noise_map(residual, tile=tile, beamstop=mask)
    spots = spot_measurements(labels, residual, noise_map, center)
    n = len(frames)
    per_frame_spots = np.bincount(spots["frame"].astype(np.int64), minlength=n)

    def per_frame(key, stat):
        return np.array([stat(spots[key][spots["frame"] == f]) if per_frame_spots[f] else np.nan
                         for f in range(n)])

    level = np.array([np.median(b[~mask]) for b in background])
    mean_background = background.mean(axis=0)
    pooled = {
        "spots_per_frame": float(per_frame_spots.mean()),
        "median_area_px": _stat(spots["area_px"], np.median),
        "p90_elongation": _stat(spots["elongation"], lambda v: np.percentile(v, 90)),
        "median_radial_extent_px": _stat(spots["radial_extent_px"], np.median),
        "median_tangential_extent_px": _stat(spots["tangential_extent_px"], np.median),
        "median_peak_snr": _stat(spots["peak_snr"], np.median),
        "median_integrated_snr": _stat(spots["integrated_snr"], np.median),
        "background_level": float(np.median(level)),
        "residual_noise": float(noise),
    }
    return {
        "pooled": pooled,
        "per_frame": {"spots": per_frame_spots.astype(np.float64), "median_area_px": per_frame("area_px", np.median),
                      "p90_elongation": per_frame("elongation", lambda v: np.percentile(v, 90)),
                      "background_level": level},
        "spots": spots,
        "radial_profile": radial_profile(mean_background, center, bin_px=bin_px, mask=mask),
        "edge_profile": beamstop_edge_profile(mean_background, mask),
    }


def normalise_frame_flux(frames, *, beamstop=None) -> np.ndarray:
    """Frames scaled to one level: each times (median level over frames) / (its median off ``beamstop``).

    A laboratory source's flux varies from frame to frame (the iron scan's frame 17 is 14 %
    brighter than its neighbours); unscaled, such a frame differs from its rolling median by a
    constant that the standard routine takes for thousands of spots. The published segmentation
    of these frames scales each one by the mean of a corner patch for the same reason (see the
    data set's README).
    """
    frames = _stack(frames)
    mask = _mask(beamstop, frames.shape[1:])
    level = np.median(frames[:, ~mask], axis=1) if (~mask).any() else np.median(frames, axis=(1, 2))
    if not np.all(level > 0):
        return frames
    return frames * (np.median(level) / level)[:, None, None].astype(np.float32)


def _stat(values, stat) -> float:
    return float(stat(values)) if len(values) else float("nan")


def compare_summaries(sim: dict, real: dict, keys=SUMMARY_KEYS) -> list[dict]:
    """Rows ``{"quantity", "sim", "real", "relative"}`` with ``relative = sim / real - 1``."""
    rows = []
    for key in keys:
        a, b = sim["pooled"][key], real["pooled"][key]
        rows.append({"quantity": key, "sim": a, "real": b, "relative": a / b - 1 if b else float("nan")})
    return rows


__all__ = ["DETECTION", "SPOT_KEYS", "SUMMARY_KEYS", "beamstop_edge_profile", "compare_summaries", "detect_spots",
           "local_noise_map", "normalise_frame_flux", "radial_profile", "realism_summary", "spot_measurements"]
