"""Detector pixels that are never diffraction spots: hot pixels and the beam stop.

A diffraction spot moves from one projection to the next as the sample rotates (a few degrees
per frame); a hot pixel and the beam-stop shadow stay where they are. Both are therefore found
from what persists over a stack:

- a *hot pixel* stands far above its 3x3 neighbourhood in most frames (read-out defect or a
  radiation hit of the scintillator); in a spot-probability stack, a pixel labelled spot in most
  frames is the same defect seen through the network;
- the *beam stop* is the persistent dark region around the direct beam: the temporal median,
  smoothed, far below its typical level, taken as the dark connected region nearest the detector
  centre and grown by a margin for its soft (penumbral) edge.

Both segmentation methods leave these pixels out, and ``rayproc labdct segment`` stores the
masks beside the labels.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from rayproc.errors import InputError


def _stack(frames, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim == 2:
        frames = frames[None]
    if frames.ndim != 3 or min(frames.shape) < 1:
        raise InputError(f"{name} must be (N, H, W) or (H, W); got shape {frames.shape} instead.")
    return frames


def sample_frames(count: int, most: int = 16) -> np.ndarray:
    """Indices of at most ``most`` frames spread evenly over ``count`` (all when fewer)."""
    return np.unique(np.linspace(0, count - 1, min(int(count), int(most))).round().astype(int))


def hot_pixel_mask(frames, *, sigmas: float = 10.0, fraction: float = 0.5) -> np.ndarray:
    """Pixels far above their 3x3 neighbourhood in at least ``fraction`` of the frames.

    In each frame the excess over the 3x3 median is put on a Poisson scale,
    ``z = (I - med3(I)) / sqrt(max(med3(I), 1))``, and compared with ``sigmas`` times the robust
    standard deviation (1.4826 MAD) of ``z`` over all frames (so a detector gain other than one
    photon per count changes nothing).

    Parameters
    ----------
    frames : array_like, shape (N, H, W) or (H, W)
        Raw frames (counts); a sample of a long stack suffices (see :func:`sample_frames`).
    sigmas : float, optional
        Excess, in robust standard deviations, that makes a pixel hot in a frame.
    fraction : float, optional
        Share of frames in which it must be hot, in (0, 1]. A single frame: hot in that frame.

    Returns
    -------
    numpy.ndarray of bool, shape (H, W)

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> frames = rng.poisson(100.0, (5, 32, 32)).astype(np.float32)
    >>> frames[:, 7, 9] += 1000.0      # hot in every frame
    >>> frames[2, 20, 20] += 1000.0    # a one-frame event: not a hot pixel
    >>> np.argwhere(hot_pixel_mask(frames)).tolist()
    [[7, 9]]
    """
    frames = _stack(frames)
    if not 0 < fraction <= 1 or not sigmas > 0:
        raise InputError(f"need sigmas > 0 and 0 < fraction <= 1; got {sigmas!r} and {fraction!r}.")
    local = ndi.median_filter(frames, size=(1, 3, 3), mode="nearest")
    z = (frames - local) / np.sqrt(np.maximum(local, 1.0))
    scale = 1.4826 * float(np.median(np.abs(z - np.median(z))))
    if scale == 0:
        scale = float(np.std(z)) or 1.0
    return (z > sigmas * scale).mean(axis=0) >= fraction


def persistent_spot_mask(probability, *, threshold: float = 0.5, fraction: float = 0.5) -> np.ndarray:
    """Pixels a spot network calls spot in at least ``fraction`` of the frames (hot pixels seen by it).

    Parameters
    ----------
    probability : array_like, shape (N, H, W)
        Spot probability per frame (``rayproc labdct denoise``); needs at least 3 frames to
        tell a defect from a spot.
    threshold, fraction : float, optional

    Returns
    -------
    numpy.ndarray of bool, shape (H, W), grown by one pixel.

    Examples
    --------
    >>> p = np.zeros((4, 8, 8)); p[:, 2, 3] = 0.9; p[1, 6, 6] = 0.9
    >>> mask = persistent_spot_mask(p)
    >>> bool(mask[2, 3]), int(mask.sum()), bool(mask[6, 6])  # the pixel and its 4 neighbours
    (True, 5, False)
    """
    probability = _stack(probability, "probability")
    if len(probability) < 3:
        return np.zeros(probability.shape[1:], bool)
    persistent = (probability >= threshold).mean(axis=0) >= fraction
    return ndi.binary_dilation(persistent, iterations=1)


def dark_region_mask(frames, *, level: float = 0.6, smooth: float = 4.0, margin: int = 10,
                     centre=None) -> np.ndarray:
    """The beam stop: the persistent dark region nearest the detector centre.

    The temporal median of ``frames``, smoothed by a Gaussian of ``smooth`` px, is compared with
    ``level`` times its median over the detector; of the dark connected regions, the one holding
    (or nearest to) ``centre`` is kept, its holes filled, and grown by ``margin`` px for the
    shadow's soft edge.

    Parameters
    ----------
    frames : array_like, shape (N, H, W) or (H, W)
        Raw frames (a sample of a long stack suffices).
    level : float, optional
        Darkness threshold relative to the detector's median level, in (0, 1).
    smooth : float, optional
        Gaussian sigma (px) applied to the temporal median.
    margin : int, optional
        Growth of the region, in px.
    centre : (float, float), optional
        Where the direct beam hits (px); default the detector centre.

    Returns
    -------
    numpy.ndarray of bool, shape (H, W)
        All False when no dark region is found.

    Examples
    --------
    >>> frames = np.full((3, 64, 64), 500.0, np.float32)
    >>> frames[:, 28:36, 30:38] = 40.0
    >>> mask = dark_region_mask(frames, smooth=1.0, margin=2)
    >>> bool(mask[31, 33]), bool(mask[5, 5]), int(mask.sum()) > 64
    (True, False, True)
    """
    frames = _stack(frames)
    if not 0 < level < 1:
        raise InputError(f"level must be in (0, 1); got {level!r} instead.")
    median = ndi.gaussian_filter(np.median(frames, axis=0), smooth)
    dark = median < level * float(np.median(median))
    labels, count = ndi.label(dark)
    if count == 0:
        return np.zeros(dark.shape, bool)
    centre = np.asarray(centre if centre is not None else np.array(dark.shape) / 2 - 0.5, dtype=float)
    distance = ndi.distance_transform_edt(labels == 0, return_indices=True)[1]
    nearest = tuple(int(round(c)) for c in np.clip(centre, 0, np.array(dark.shape) - 1))
    region = labels == labels[tuple(distance[:, nearest[0], nearest[1]])]
    region = ndi.binary_fill_holes(region)
    return ndi.binary_dilation(region, iterations=int(margin)) if margin > 0 else region


__all__ = ["dark_region_mask", "hot_pixel_mask", "persistent_spot_mask", "sample_frames"]
