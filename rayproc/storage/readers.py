"""Readers for real detector data: TIFF folders, multi-page TIFF, .npy/.npz, HDF5 datasets.

Each returns a float32 volume ``(z, y, x)`` and a short description of the source; nothing here
knows about zarr or Ray.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from rayproc.errors import InputError

TIFF_SUFFIXES = (".tif", ".tiff")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def list_frames(folder: str | Path, *, exclude: tuple[str, ...] = ("dark", "white", "flat")) -> list[Path]:
    """TIFF frames of ``folder`` in name order (numbers compared as numbers).

    Files whose name contains one of ``exclude`` (dark and flat-field frames) are skipped.
    """
    folder = Path(folder)
    frames = [
        p for p in folder.iterdir()
        if p.suffix.lower() in TIFF_SUFFIXES and not any(w in p.stem.lower() for w in exclude)
    ]
    if not frames:
        raise InputError(f"no TIFF frames found in {folder}")
    return sorted(frames, key=_natural_key)


def read_volume(source: str | Path, *, key: str | None = None) -> tuple[np.ndarray, dict]:
    """Read detector data into a float32 array.

    Parameters
    ----------
    source : str or Path
        A folder of TIFF frames (stacked in name order), a (multi-page) TIFF, a ``.npy`` or
        ``.npz`` file, or an HDF5 dataset written ``file.h5:/path/to/dataset``.
    key : str, optional
        Array name inside an ``.npz`` with several arrays.

    Returns
    -------
    volume : ndarray, float32
        The data as stored (frames stacked along the first axis).
    info : dict
        ``source``, ``format`` and, for frames, ``frames`` (file names).
    """
    text = str(source)
    h5_path, _, h5_key = text.partition(":") if re.search(r"\.(h5|hdf5|nxs|hdf):", text) else (text, "", "")
    path = Path(h5_path)
    if not path.exists():
        raise InputError(f"input not found: {path}")
    info: dict = {"source": text}
    try:
        if path.is_dir():
            import tifffile

            frames = list_frames(path)
            first = tifffile.imread(frames[0])
            volume = np.empty((len(frames), *first.shape), dtype=np.float32)
            for i, frame in enumerate(frames):
                image = tifffile.imread(frame)
                if image.shape != first.shape:
                    raise InputError(f"frame {frame.name} has shape {image.shape}, expected {first.shape}")
                volume[i] = image
            info.update(format="tiff-frames", frames=[f.name for f in frames])
        elif path.suffix.lower() in TIFF_SUFFIXES:
            import tifffile

            volume = tifffile.imread(path).astype(np.float32)
            info["format"] = "tiff"
        elif path.suffix.lower() == ".npy":
            volume = np.load(path, allow_pickle=False).astype(np.float32)
            info["format"] = "npy"
        elif path.suffix.lower() == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if key is None and len(names) != 1:
                    raise InputError(f"{path} holds arrays {names}; choose one with --key")
                volume = archive[key or names[0]].astype(np.float32)
            info["format"] = "npz"
        elif h5_key or path.suffix.lower() in (".h5", ".hdf5", ".nxs", ".hdf"):
            import h5py

            if not h5_key:
                raise InputError(f"name the HDF5 dataset as {path}:/path/to/dataset")
            with h5py.File(path, "r") as f:
                if h5_key not in f:
                    raise InputError(f"{path} has no dataset {h5_key!r}")
                volume = np.asarray(f[h5_key], dtype=np.float32)
            info["format"] = "hdf5"
        else:
            raise InputError(f"unsupported input {path}: expected a TIFF folder, .tif, .npy, .npz or file.h5:/dataset")
    except InputError:
        raise
    except Exception as exc:  # a corrupt or unreadable file, whatever library raised
        raise InputError(f"cannot read {text}: {exc}") from exc
    return volume, info


def validate_counts(volume: np.ndarray, *, ndim: int | tuple[int, ...] = 3, name: str = "intensity") -> np.ndarray:
    """Check that ``volume`` holds finite, non-negative counts of the expected rank."""
    volume = np.asarray(volume)
    ranks = (ndim,) if isinstance(ndim, int) else ndim
    if volume.ndim not in ranks:
        raise InputError(f"{name} must be {' or '.join(f'{r}D' for r in ranks)}; got shape {volume.shape} instead.")
    if not np.isfinite(volume).all():
        bad = int((~np.isfinite(volume)).sum())
        raise InputError(f"{name} contains {bad} NaN/Inf value(s); clean or mask them first.")
    if (volume < 0).any():
        raise InputError(f"{name} contains negative counts (min {float(volume.min()):g}); expected photon counts >= 0.")
    return volume


__all__ = ["read_volume", "list_frames", "validate_counts"]
