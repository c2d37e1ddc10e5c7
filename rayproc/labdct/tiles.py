"""Seeded training tiles of synthetic LabDCT frames, as a torch Dataset.

Fang et al. train the spot network on random tiles of synthetic frames (the noisy ``input``)
and their spot segmentations (the ``target``). :class:`TileDataset` serves such tiles from
frames it gets through a reader, ``read(frame_set, frame) -> (input, target)``, which gives
the training pair of a frame (:func:`training_pair`); the storage shell reads them from synth
stores through a per-process cache (``rayproc.pipelines.labdct.train.FrameReader``), a test
from arrays in memory.

Item ``index = i + e * len`` uses ``default_rng([seed, stream, e, i])`` to pick a frame
(uniformly over all frames of the frame sets), a tile origin and one of the 8 flips and
quarter turns of the square tile, so items do not depend on how many workers read them or in
which order (see ``rayproc.runtime.epochs.EpochSampler``), and every epoch draws fresh tiles.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import Dataset

from rayproc.errors import InputError
from rayproc.labdct.denoise import normalise_frames

ReadFrame = Callable[[Any, int], tuple[np.ndarray, np.ndarray]]
"""``read(frame_set, frame) -> (input, target)``: the training pair of one frame (see :func:`training_pair`)."""


class FrameSource(Protocol):
    """Frames of one stack used for training: their indices and their (height, width)."""

    frames: Sequence[int]
    shape: tuple[int, int]


def training_pair(raw: np.ndarray, target: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """The network's input and target of one frame.

    Parameters
    ----------
    raw : ndarray, (H, W)
        The synthetic (noisy) frame in counts.
    target : ndarray, (H, W)
        Its spot segmentation (nonzero on spots, e.g. 255).
    scale : float
        Input normalisation (:func:`rayproc.labdct.denoise.normalise_frames`).

    Returns
    -------
    input, target : ndarray, float32 (H, W)
        The normalised frame and the target in {0, 1}.
    """
    return normalise_frames(raw[None], scale=scale)[0], (target > 0).astype(np.float32)


class TileDataset(Dataset):
    """Random tiles of frames: item ``i`` of epoch ``e`` is a pure function of the seed.

    Parameters
    ----------
    frame_sets : sequence of FrameSource
        Frame stacks (e.g. ``rayproc.pipelines.labdct.train.FrameSet``), named by ``str`` in errors.
    tiles : int
        Items per epoch.
    tile : int
        Tile edge in pixels (no frame may be smaller).
    read : callable
        ``read(frame_set, frame) -> (input, target)``, float32 (H, W) each; called for every
        item, so it should cache (it must be picklable for loader worker processes).
    seed : int, optional
        Master seed of every draw.
    stream : int, optional
        Separates independent draws from the same frames (e.g. 0 training, 1 validation).

    Notes
    -----
    An item is a dict: ``input`` (1, T, T) float32 (normalised, see
    :func:`rayproc.labdct.denoise.normalise_frames`), ``target`` (1, T, T) float32 in {0, 1}.
    """

    def __init__(self, frame_sets: Sequence[FrameSource], tiles: int, *, tile: int, read: ReadFrame, seed: int = 0,
                 stream: int = 0):
        self.frame_sets = list(frame_sets)
        self.frames = [(s, f, tuple(s.shape)) for s in self.frame_sets for f in s.frames]
        if tiles < 1 or not self.frames:
            raise InputError(f"need >= 1 frame and >= 1 tile; got {len(self.frames)} and {tiles} instead.")
        small = [(source, shape) for source, _, shape in self.frames if min(shape) < tile]
        if small:
            raise InputError(f"{small[0][0]} has frames of shape {small[0][1]}, smaller than a {tile}^2 tile.")
        self.tiles, self.tile, self.seed, self.stream = int(tiles), int(tile), int(seed), int(stream)
        self.read = read

    def __len__(self) -> int:
        return self.tiles

    def __getitem__(self, index: int) -> dict:
        epoch, within = divmod(int(index), self.tiles)
        rng = np.random.default_rng([self.seed, self.stream, epoch, within])
        source, frame, (height, width) = self.frames[int(rng.integers(len(self.frames)))]
        y, x = int(rng.integers(height - self.tile + 1)), int(rng.integers(width - self.tile + 1))
        turn = int(rng.integers(8))
        pair = []
        for image in self.read(source, frame):
            crop = np.rot90(image[y:y + self.tile, x:x + self.tile], turn % 4)
            pair.append(torch.from_numpy(np.ascontiguousarray(crop[:, ::-1] if turn >= 4 else crop))[None])
        return {"input": pair[0], "target": pair[1]}


__all__ = ["FrameSource", "ReadFrame", "TileDataset", "training_pair"]
