"""Deep-learning denoising of LabDCT projections, in one process.

Fang et al. [1]_ denoise LabDCT projections with a U-Net trained on forward-simulated
projections [2]_ (see :mod:`rayproc.labdct.synthesis`): the network maps a noisy frame to
its spot segmentation (spots 1, background 0). Here a frame is

1. put on the network's intensity scale (:func:`normalise_frames`: divided by its median,
   the background level, then log-compressed),
2. cut into overlapping 2D tiles (:func:`plan_tiles`, :func:`rayproc.stitching.grid_windows`),
   each tile run through the network (:func:`predict_tiles`), the predictions blended with
   Gaussian importance weights (:func:`rayproc.stitching.importance_map`,
   :class:`rayproc.stitching.ArrayMerger`) — the placement, weights and merger of the BCDI
   inpainting;
3. thresholded into labelled spots (:func:`dl_spot_labels`).

Frames are independent: :func:`denoise_frames` of a slab of frames equals the same frames of
the whole-stack result bit for bit, which the distributed pipeline
(:mod:`rayproc.pipelines.labdct.denoise`) relies on.

References
----------
.. [1] H. Fang et al., deep-learning denoising of LabDCT projections (dynamic U-Net trained on
   forward-simulated projections mixed with backgrounds extracted from real frames).
.. [2] H. Fang, D. Juul Jensen and Y. Zhang, "A flexible and standalone forward simulation
   model for laboratory X-ray diffraction contrast tomography", Acta Cryst. A 76 (2020)
   652-663. :doi:`10.1107/S2053273320010852`
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from rayproc.errors import InputError
from rayproc.labdct.spots import label_spots
from rayproc.labdct.network import build_labdct_net
from rayproc.options import look_up_option
from rayproc.stitching import BLEND_MODES, grid_windows, sliding_window_predict

FAMILY = "labdct"
DEFAULT_SCALE = 100.0
DEFAULT_TILE = 128  # twice the training tile of the shipped model (see its MODEL_CARD.md)
DEFAULT_OVERLAP = 32
DEFAULT_BLEND = "gaussian"
DEFAULT_BATCH_SIZE = 8
DEFAULT_THRESHOLD = 0.5
DEFAULT_MIN_SIZE = 4


def _as_frames(frames, name: str = "frames") -> np.ndarray:
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3 or min(frames.shape) < 1:
        raise InputError(f"{name} must be a stack (N, H, W); got shape {frames.shape} instead.")
    bad = frames.size - int(np.count_nonzero(np.isfinite(frames)))
    if bad:
        raise InputError(f"{name} hold {bad} NaN/Inf value(s); clean or mask them first.")
    return frames

def normalise_frames(frames, *, scale: float = DEFAULT_SCALE) -> np.ndarray:
    """Put raw frames on the network's intensity scale.

    Parameters
    ----------
    frames : array_like, shape (N, H, W)
        Raw projections (counts); negative values count as 0.
    scale : float, optional
        Intensity, in multiples of a frame's median, that maps to 1 (> 1).

    Returns
    -------
    numpy.ndarray of float32, shape (N, H, W)
        ``log1p(max(x, 0) / m) / log1p(scale)`` with ``m`` the median of the frame: the
        background maps to about ``log(2) / log1p(scale)`` (0.15 for ``scale = 100``), spots
        ``scale`` times brighter than the background to 1, brighter ones above 1.

    Notes
    -----
    Dividing by the median (the background level: spots cover a few per cent of a frame)
    makes the input independent of the source intensity and detector gain, so a network
    trained on synthetic frames (background ``I0 ~ 110`` counts in [1]_) applies to
    measured frames with another background level. The logarithm compresses spots that
    are 10^3 times brighter than the background into a range the network handles.

    Examples
    --------
    >>> frames = np.full((1, 4, 4), 50.0)
    >>> frames[0, 0, 0] = 50.0 * 100
    >>> y = normalise_frames(frames, scale=100.0)
    >>> round(float(y[0, 1, 1]), 3), round(float(y[0, 0, 0]), 3)
    (0.15, 1.0)
    """
    frames = _as_frames(frames)
    if not np.isfinite(scale) or scale <= 1:
        raise InputError(f"scale must be a finite number > 1; got {scale!r} instead.")
    counts = np.maximum(frames, 0)
    median = np.median(counts.reshape(len(counts), -1), axis=1)
    dark = np.flatnonzero(median <= 0)
    if dark.size:
        raise InputError(
            f"frame {int(dark[0])} has a median of {float(median[dark[0]]):g} counts; expected raw "
            "projections with a background > 0 (not dark- or background-subtracted)."
        )
    return (np.log1p(counts / median[:, None, None]) / np.log1p(scale)).astype(np.float32)

def plan_tiles(frame_shape, *, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, divisor: int = 32):
    """Tile shape and padded frame shape for a frame of ``frame_shape``.

    Parameters
    ----------
    frame_shape : (int, int)
        ``(H, W)``.
    tile : int, optional
        Largest tile edge; a multiple of ``divisor``.
    overlap : int, optional
        Pixels shared by neighbouring tiles, in ``[0, tile)``.
    divisor : int, optional
        The network needs tile edges that are multiples of this
        (:attr:`rayproc.labdct.network.LabdctNetConfig.divisor`).

    Returns
    -------
    patch : (int, int)
        Tile shape: ``tile`` along an axis at least that long, else the axis rounded up to a
        multiple of ``divisor``.
    padded : (int, int)
        Frame shape after padding (only axes shorter than their tile grow).
    stride : (int, int)
        ``patch - overlap``, at least 1.

    Examples
    --------
    >>> plan_tiles((100, 300), tile=256, overlap=32)
    ((128, 256), (128, 300), (96, 224))
    """
    if int(divisor) < 1 or int(tile) < 1 or tile % divisor:
        raise InputError(f"tile must be a positive multiple of {divisor}; got {tile!r} instead.")
    if not 0 <= int(overlap) < int(tile):
        raise InputError(f"overlap must be in [0, tile = {tile}); got {overlap!r} instead.")
    patch = tuple(min(int(tile), -(-int(n) // divisor) * divisor) for n in frame_shape)
    padded = tuple(max(int(n), p) for n, p in zip(frame_shape, patch))
    stride = tuple(max(p - int(overlap), 1) for p in patch)
    return patch, padded, stride

def predict_tiles(model, tiles, *, batch_size: int = DEFAULT_BATCH_SIZE) -> np.ndarray:
    """Run the network on normalised tiles, always in batches of exactly ``batch_size``.

    Parameters
    ----------
    model : torch.nn.Module
        ``model(x)``: (b, 1, h, w) -> (b, 1, h, w) (see
        :func:`rayproc.labdct.network.build_labdct_net`); runs on the device of its
        parameters.
    tiles : ndarray, shape (B, ..., h, w)
        Normalised tiles (see :func:`normalise_frames`); leading singleton axes (the frame
        axis of a stack's windows) are kept.
    batch_size : int, optional
        The last call is padded with empty tiles, so a tile's prediction never depends on
        the tiles sharing its batch (convolution kernels choose their blocking from the
        tensor shape).

    Returns
    -------
    ndarray of float32, shape of ``tiles``
        Spot probability in (0, 1).
    """
    import torch

    tiles = np.asarray(tiles, dtype=np.float32)
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1; got {batch_size!r} instead.")
    flat = tiles.reshape((-1, 1) + tiles.shape[-2:])
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    outputs = []
    with torch.inference_mode():
        for first in range(0, len(flat), int(batch_size)):
            part = flat[first:first + int(batch_size)]
            batch = torch.zeros((int(batch_size),) + flat.shape[1:], dtype=torch.float32)
            batch[: len(part)] = torch.from_numpy(part)
            outputs.append(model(batch.to(device))[: len(part)].float().cpu().numpy())
    return np.concatenate(outputs).reshape(tiles.shape)

def denoise_frames(
    frames,
    model,
    *,
    scale: float = DEFAULT_SCALE,
    tile: int = DEFAULT_TILE,
    overlap: int = DEFAULT_OVERLAP,
    blend: str = DEFAULT_BLEND,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Denoise a stack of LabDCT frames with the spot network, tile by tile.

    Parameters
    ----------
    frames : array_like, shape (N, H, W)
        Raw projections (counts).
    model : torch.nn.Module
        A LabDCT network (see :func:`predict_tiles`), in eval mode; its ``config.divisor``
        (32 when absent) constrains the tile size.
    scale : float, optional
        Normalisation of :func:`normalise_frames`; use the value the model was trained with
        (its model directory's ``normalisation``).
    tile, overlap : int, optional
        Tile edge (a multiple of the divisor; smaller frames use one tile, reflect-padded)
        and overlap between neighbouring tiles. Keep tiles within about twice the model's
        training tile (its ``patch_size``): a network trained on small tiles sees other
        deep-feature statistics on much larger ones (the shipped model, trained on 64 px
        tiles, loses 5 % spot F1 with 256 px tiles, none with 64 or 128 px).
    blend : {"gaussian", "mean"}, optional
        Importance weights of overlapping tiles (:func:`rayproc.stitching.importance_map`).
    batch_size : int, optional
        Tiles per network call.
    progress : callable, optional
        ``progress(done, total)`` in tiles.

    Returns
    -------
    numpy.ndarray of float32, shape (N, H, W)
        Spot probability in [0, 1]: the weighted mean of the tile predictions covering
        each pixel.

    Notes
    -----
    A frame's tiles are the windows ``grid_windows((N, H, W), (1, h, w), (1, s, s))`` of the
    stack, so they never cross frames, and each is predicted in a fixed-shape batch: the
    result for a frame does not depend on the other frames of the stack.

    Examples
    --------
    >>> net = build_labdct_net({"widths": [4, 4, 8, 8], "blocks": [1, 1, 1, 1]}).eval()
    >>> frames = np.random.default_rng(0).poisson(100.0, (2, 64, 96)).astype(np.float32)
    >>> out = denoise_frames(frames, net, tile=64, overlap=16)
    >>> out.shape, out.dtype, bool(0 <= out.min() and out.max() <= 1)
    ((2, 64, 96), dtype('float32'), True)
    """
    frames = _as_frames(frames)
    blend = look_up_option(blend, BLEND_MODES, name="blend")
    config = getattr(model, "config", None)
    patch, padded, stride = plan_tiles(frames.shape[1:], tile=tile, overlap=overlap,
                                       divisor=getattr(config, "divisor", 32))
    image = normalise_frames(frames, scale=scale)
    if padded != frames.shape[1:]:
        image = np.pad(image, [(0, 0)] + [(0, p - n) for p, n in zip(padded, frames.shape[1:])], mode="reflect")
    window = (1, *patch)
    origins = grid_windows(image.shape, window, (1, *stride))
    mean, _ = sliding_window_predict(
        image, origins, functools.partial(predict_tiles, model, batch_size=batch_size), patch=window,
        weights=blend, batch_size=batch_size, progress=progress,
    )
    return np.clip(mean[:, : frames.shape[1], : frames.shape[2]], 0, 1)

def dl_spot_labels(denoised, *, threshold: float = DEFAULT_THRESHOLD, min_size: int = DEFAULT_MIN_SIZE) -> np.ndarray:
    """Spots of a denoised stack: pixels at or above ``threshold``, labelled, small ones dropped.

    Parameters
    ----------
    denoised : array_like, shape (H, W) or (N, H, W)
        Spot probability (see :func:`denoise_frames`).
    threshold : float, optional
        Smallest probability of a spot pixel, in (0, 1).
    min_size : int, optional
        Smallest spot kept, in pixels (8-connected, per frame).

    Returns
    -------
    numpy.ndarray of int32, shape of ``denoised``
        0 on background, 1..K on spots, unique across the stack
        (:func:`rayproc.labdct.spots.label_spots`).

    Examples
    --------
    >>> p = np.zeros((1, 8, 8)); p[0, 1:3, 1:3] = 0.9; p[0, 6, 6] = 0.9
    >>> labels = dl_spot_labels(p, min_size=2)
    >>> int(labels.max()), int((labels > 0).sum())
    (1, 4)
    """
    denoised = np.asarray(denoised, dtype=np.float32)
    if denoised.ndim not in (2, 3):
        raise InputError(f"denoised must be (H, W) or (N, H, W); got shape {denoised.shape} instead.")
    if not np.isfinite(denoised).all():
        raise InputError("denoised holds NaN/Inf values; expected probabilities in [0, 1].")
    if not 0 < threshold < 1 or int(min_size) != min_size or min_size < 1:
        raise InputError(f"need 0 < threshold < 1 and an integer min_size >= 1; got {threshold!r}, {min_size!r}.")
    labels = label_spots(denoised >= threshold)
    small = np.bincount(labels.ravel()) < min_size
    small[0] = True
    return label_spots(~small[labels])

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BLEND",
    "DEFAULT_MIN_SIZE",
    "DEFAULT_OVERLAP",
    "DEFAULT_SCALE",
    "DEFAULT_THRESHOLD",
    "DEFAULT_TILE",
    "FAMILY",
    "denoise_frames",
    "dl_spot_labels",
    "normalise_frames",
    "plan_tiles",
    "predict_tiles",
]
