"""``rayproc labdct show``: one frame of a segmented stack as a figure (raw, probability, spots).

Panels, for frame ``k`` of a ``rayproc labdct segment`` store: the raw frame (when ``frames``
is given; log scale), the network's spot probability (when the store or ``denoised`` holds it),
and the spots outlined over the raw frame (or the probability), with the beam stop and the hot
pixels the segmentation left out. A zoom on a region (``--zoom ROW,COL,HALF``) shows spots at
pixel scale.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from rayproc.errors import InputError
from rayproc.pipelines.labdct.stack import DENOISED_VARIABLE, open_frames
from rayproc.storage import open_dataset, resolve


def _outline(labels: np.ndarray) -> np.ndarray:
    """Pixels of a spot that touch another label or the background (4-neighbourhood)."""
    edge = np.zeros(labels.shape, bool)
    for axis in (0, 1):
        for shift in (1, -1):
            edge |= (labels != np.roll(labels, shift, axis=axis))
    return edge & (labels > 0)


def show_frame(segmented: str, out: str, *, frame: int = 0, frames: str | None = None, denoised: str | None = None,
               zoom: tuple[int, int, int] | None = None, storage_options: dict | None = None) -> Path:
    """Write a PNG of frame ``frame`` of the segmented store ``segmented`` to ``out`` (a new file)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(out)
    if path.suffix.lower() != ".png":
        raise InputError(f"the figure is a PNG file: give OUT ending in .png; got {out}.")
    if path.exists():
        raise InputError(f"{out} exists; rayproc writes a figure only where nothing is.")
    if not path.parent.is_dir():
        raise InputError(f"no folder {path.parent} for the figure; create it first.")
    ds = open_dataset(resolve(segmented, storage_options))
    if "spot_label" not in ds:
        raise InputError(f"{segmented} holds no spot_label; expected a `rayproc labdct segment` store.")
    count = ds.spot_label.shape[0]
    if not 0 <= frame < count:
        raise InputError(f"frame {frame} is outside the stack of {count} frames.")
    labels = np.asarray(ds.spot_label[frame])
    never = np.zeros(labels.shape, bool)
    for name in ("beamstop", "hot_pixel"):
        if name in ds:
            never |= np.asarray(ds[name]).astype(bool)
    panels = {}
    if frames is not None:
        raw = open_frames(frames, storage_options=storage_options)
        if raw.shape[1:] != labels.shape:
            raise InputError(f"{frames} frames are {raw.shape[1:]}; the segmented ones {labels.shape}.")
        panels["raw frame (log)"] = np.log1p(np.maximum(np.asarray(raw[frame], dtype=np.float32), 0))
    probability = None
    if DENOISED_VARIABLE in ds:
        probability = np.asarray(ds[DENOISED_VARIABLE][frame])
    elif denoised is not None:
        probability = np.asarray(open_dataset(resolve(denoised, storage_options))[DENOISED_VARIABLE][frame])
    if probability is not None:
        panels["spot probability"] = probability
    background = next(iter(panels.values()), (labels > 0).astype(np.float32))
    crop = (slice(None), slice(None))
    if zoom is not None:
        row, col, half = zoom
        crop = (slice(max(0, row - half), row + half), slice(max(0, col - half), col + half))
    spots = int(len(np.unique(labels)) - 1)
    figure, axes = plt.subplots(1, len(panels) + 1, figsize=(4.2 * (len(panels) + 1), 4.4), squeeze=False,
                                constrained_layout=True)
    for axis, (title, image) in zip(axes[0], panels.items()):
        axis.imshow(image[crop], cmap="gray" if "raw" in title else "magma", origin="upper")
        axis.set_title(title, fontsize=9)
    overlay = np.ma.masked_where(~_outline(labels)[crop], np.ones(labels.shape)[crop])
    masked = np.ma.masked_where(~never[crop], np.ones(labels.shape)[crop])
    last = axes[0, -1]
    last.imshow(background[crop], cmap="gray", origin="upper")
    last.imshow(masked, cmap="Blues", alpha=0.35, vmin=0, vmax=1.5, origin="upper")
    last.imshow(overlay, cmap="autumn", vmin=0, vmax=1, origin="upper", interpolation="nearest")
    method = ds.attrs.get("method", "?")
    last.set_title(f"{spots} spots ({method}); blue: never a spot", fontsize=9)
    for axis in axes[0]:
        axis.set_xticks([])
        axis.set_yticks([])
    frame_dim = ds.spot_label.dims[0]
    label = f"{frame_dim} = {ds[frame_dim].values[frame]:g}" if frame_dim in ds.coords else f"frame {frame}"
    figure.suptitle(f"{Path(str(segmented)).name}: {label}", fontsize=10)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


__all__ = ["show_frame"]
