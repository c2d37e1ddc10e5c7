"""The standard LabDCT spot-segmentation routine: the baseline the denoising network replaces.

The routine used on LabDCT projections before deep learning (as described by Fang et al.
[1]_, with the forward model of [2]_): subtract a rolling median over ``n_rolling``
consecutive projections (spots move from one projection to the next, the background does
not), then segment spots with a Laplacian of Gaussian (LoG) and four parameters: a
background value, the Gaussian sigma, a percentage of each blob's maximum and a minimum
spot size. The same LoG segmentation turns noise-free simulated projections into training
targets (:func:`rayproc.labdct.synthesis.log_segmentation`).

References
----------
.. [1] H. Fang et al., deep-learning denoising of LabDCT projections (comparison with the
   rolling-median and LoG standard routine).
.. [2] H. Fang, D. Juul Jensen and Y. Zhang, "A flexible and standalone forward simulation
   model for laboratory X-ray diffraction contrast tomography", Acta Cryst. A 76 (2020)
   652-663. :doi:`10.1107/S2053273320010852`
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
from scipy import ndimage as ndi

from rayproc.errors import InputError
from rayproc.labdct.background import rolling_median
from rayproc.labdct.spots import label_spots, match_spots

# Default background threshold in residual-noise units (``StandardRoutineParams.background_sigmas``):
# the smallest k leaving < 1 false spot per megapixel per frame on noise-only stacks at 150-2000
# counts per pixel (benchmarks/labdct_standard_defaults.py).
DEFAULT_BACKGROUND_SIGMAS = 8.0


@dataclass(frozen=True)
class StandardRoutineParams:
    """Parameters of the standard routine.

    Parameters
    ----------
    background : float or None
        Background value: intensities of the median-subtracted frame up to this value are
        background (the frame is shifted down by it and clipped at 0 before the LoG). None (the
        default): ``background_sigmas`` times the stack's residual noise
        (:func:`residual_noise`), so the same parameters fit frames of any intensity scale.
    background_sigmas : float
        The background in multiples of the residual noise, when ``background`` is None.
    sigma : float
        Width (px) of the LoG's Gaussian.
    percentage : float
        Each LoG blob keeps its pixels whose response is at least this percentage of the
        blob's maximum response, in [0, 100).
    min_size : int
        Smallest spot kept, in pixels.
    n_rolling : int
        Number of consecutive projections in the rolling median.
    """

    background: float | None = None
    background_sigmas: float = DEFAULT_BACKGROUND_SIGMAS
    sigma: float = 1.5
    percentage: float = 20.0
    min_size: int = 4
    n_rolling: int = 5

    def __post_init__(self):
        if self.background is not None:
            object.__setattr__(self, "background", float(self.background))
        if not self.background_sigmas >= 0:
            raise InputError(f"background_sigmas must be >= 0; got {self.background_sigmas!r} instead.")
        if not self.sigma > 0:
            raise InputError(f"sigma must be > 0; got {self.sigma!r} instead.")
        if not 0 <= self.percentage < 100:
            raise InputError(f"percentage must be in [0, 100); got {self.percentage!r} instead.")
        for name in ("min_size", "n_rolling"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise InputError(f"{name} must be a positive integer; got {value!r} instead.")
            object.__setattr__(self, name, int(value))

    def to_dict(self) -> dict:
        return {field.name: getattr(self, field.name) for field in fields(self)}

    def for_noise(self, noise: float) -> "StandardRoutineParams":
        """These parameters with an absolute ``background`` (``background_sigmas * noise`` if unset)."""
        if self.background is not None:
            return self
        return replace(self, background=float(self.background_sigmas) * float(noise))

    @classmethod
    def from_dict(cls, d: Mapping) -> "StandardRoutineParams":
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in d.items() if key in names})


def rolling_median_subtract(stack, n_rolling: int) -> np.ndarray:
    """Each frame minus the median of its ``n_rolling`` nearest frames (float32, (N, H, W)).

    See :func:`rayproc.labdct.background.rolling_median`; ``n_rolling = 1`` gives zeros.
    """
    stack = np.asarray(stack, dtype=np.float32)
    return stack - rolling_median(stack, n_rolling)


def residual_noise(stack, n_rolling: int, *, beamstop=None) -> float:
    """Robust standard deviation (1.4826 MAD) of ``stack`` less its rolling median (off ``beamstop``)."""
    return robust_noise(rolling_median_subtract(stack, n_rolling), beamstop=beamstop)


def robust_noise(residual, *, beamstop=None) -> float:
    """Robust standard deviation (1.4826 MAD) of an already median-subtracted stack (off ``beamstop``)."""
    residual = np.asarray(residual)
    if beamstop is not None:
        residual = residual[:, ~np.asarray(beamstop, dtype=bool)]
    median = np.median(residual)
    return float(1.4826 * np.median(np.abs(residual - median)))


def log_spot_labels(
    image,
    *,
    background: float,
    sigma: float,
    percentage: float,
    min_size: int,
    beamstop=None,
) -> np.ndarray:
    """LoG segmentation of bright spots, labelled per frame.

    Steps: ``x = max(image - background, 0)`` (0 on the beam stop); response
    ``R = -sigma^2 LoG_sigma(x)`` (scale-normalised, positive on bright blobs); blobs are the
    8-connected regions of ``R > 0``; each blob keeps its pixels with
    ``R >= percentage / 100 * max_blob(R)``; the kept pixels are labelled again and spots
    smaller than ``min_size`` pixels are dropped.

    Parameters
    ----------
    image : array_like, shape (H, W) or (N, H, W)
        Background-corrected frame(s) (or noise-free simulated projections).
    background, sigma, percentage, min_size :
        See :class:`StandardRoutineParams`.
    beamstop : array_like of bool, shape (H, W), optional
        Pixels never part of a spot.

    Returns
    -------
    numpy.ndarray of int32, shape of ``image``
        0 on background, 1..K on spots (unique across the stack).
    """
    image = np.asarray(image, dtype=np.float32)
    if image.ndim not in (2, 3):
        raise InputError(f"image must be (H, W) or (N, H, W); got shape {image.shape} instead.")
    params = StandardRoutineParams(background, sigma=sigma, percentage=percentage, min_size=min_size)
    frames = np.clip(image.reshape((-1,) + image.shape[-2:]) - params.background, 0, None)
    if beamstop is not None:
        beamstop = np.asarray(beamstop, dtype=bool)
        if beamstop.shape != frames.shape[1:]:
            raise InputError(
                f"beamstop mask must have the frame shape {frames.shape[1:]}; got "
                f"{beamstop.shape} instead."
            )
        frames[:, beamstop] = 0
    # In-plane Laplacian only (ndi.gaussian_laplace would add the unfiltered frame axis).
    width = (0, params.sigma, params.sigma)
    laplacian = ndi.gaussian_filter(frames, width, order=(0, 2, 0)) + ndi.gaussian_filter(
        frames, width, order=(0, 0, 2)
    )
    response = -params.sigma**2 * laplacian
    if beamstop is not None:  # the LoG spreads light into the mask: no spot pixel there either
        response[:, beamstop] = 0
    blobs = label_spots(response > 0)
    blob_max = ndi.maximum(response, blobs, np.arange(1, blobs.max() + 1))
    floor = np.concatenate([[np.inf], params.percentage / 100 * np.asarray(blob_max)])
    spots = label_spots(response >= floor[blobs])
    small = np.bincount(spots.ravel()) < params.min_size
    small[0] = True
    spots = label_spots(~small[spots])
    return spots.reshape(image.shape)


def standard_routine(stack, params: StandardRoutineParams, *, beamstop=None, noise: float | None = None) -> np.ndarray:
    """Rolling-median subtraction then LoG segmentation, the standard routine [1]_.

    Parameters
    ----------
    stack : array_like, shape (N, H, W)
        Consecutive raw projections.
    params : StandardRoutineParams
    beamstop : array_like of bool, shape (H, W), optional
        Beam-stop pixels, excluded from spots.
    noise : float, optional
        Residual noise setting a ``background`` given in noise units (default: measured on
        ``stack`` off the beam stop, :func:`residual_noise`); pass the whole stack's value when
        segmenting it slab by slab.

    Returns
    -------
    numpy.ndarray of int32, shape (N, H, W)
        Spot labels (8-connected components per frame, unique across the stack).

    Examples
    --------
    >>> stack = np.zeros((3, 32, 32), np.float32)
    >>> stack[1, 10:13, 10:13] = 100.0
    >>> labels = standard_routine(stack, StandardRoutineParams(min_size=1, n_rolling=3))
    >>> int(labels.max()), int(labels[1, 11, 11] > 0)
    (1, 1)
    """
    corrected = rolling_median_subtract(stack, params.n_rolling)
    if params.background is None:
        params = params.for_noise(robust_noise(corrected, beamstop=beamstop) if noise is None else noise)
    return log_spot_labels(
        corrected,
        background=params.background,
        sigma=params.sigma,
        percentage=params.percentage,
        min_size=params.min_size,
        beamstop=beamstop,
    )


def tune_standard_routine(
    stack,
    truth_labels,
    grid: Mapping[str, Sequence],
    *,
    base: StandardRoutineParams | None = None,
    beamstop=None,
    iou: float = 0.3,
) -> tuple[StandardRoutineParams, dict[str, np.ndarray]]:
    """Grid search of the standard routine's parameters maximising spot F1 on labelled frames.

    Parameters
    ----------
    stack : array_like, shape (N, H, W)
        Raw projections with known spots.
    truth_labels : array_like of int, shape (N, H, W)
        True spot labels (see :func:`rayproc.labdct.spots.label_spots`).
    grid : mapping of field name to sequence of values
        Values to try per :class:`StandardRoutineParams` field; all combinations are run.
    base : StandardRoutineParams, optional
        Values of the fields not in ``grid`` (defaults otherwise).
    beamstop : array_like of bool, shape (H, W), optional
    iou : float, optional
        Matching threshold of :func:`rayproc.labdct.spots.match_spots`.

    Returns
    -------
    best : StandardRoutineParams
        The combination with the highest F1 (the first one on ties).
    table : dict of numpy.ndarray, each of shape (combinations,)
        One column per field plus ``precision``, ``recall`` and ``f1``.
    """
    base = base or StandardRoutineParams()
    names = [field.name for field in fields(StandardRoutineParams)]
    unknown = sorted(set(grid) - set(names))
    if unknown:
        raise InputError(f"unknown grid fields {unknown}; expected some of {names}.")
    if any(len(grid[name]) == 0 for name in grid):
        raise InputError(f"every grid field needs at least one value; got {dict(grid)!r}.")
    stack = np.asarray(stack, dtype=np.float32)
    corrected: dict[int, np.ndarray] = {}
    rows = []
    for values in itertools.product(*grid.values()):
        params = replace(base, **dict(zip(grid, values)))
        if params.n_rolling not in corrected:
            corrected[params.n_rolling] = rolling_median_subtract(stack, params.n_rolling)
        labels = log_spot_labels(
            corrected[params.n_rolling],
            background=params.background,
            sigma=params.sigma,
            percentage=params.percentage,
            min_size=params.min_size,
            beamstop=beamstop,
        )
        scores = match_spots(labels, truth_labels, iou=iou)
        rows.append((params, scores["precision"], scores["recall"], scores["f1"]))
    table = {name: np.array([getattr(row[0], name) for row in rows]) for name in names}
    for column, key in enumerate(("precision", "recall", "f1"), start=1):
        table[key] = np.array([row[column] for row in rows])
    best = rows[int(np.argmax(table["f1"]))][0]
    return best, table


__all__ = [
    "StandardRoutineParams",
    "log_spot_labels",
    "residual_noise",
    "robust_noise",
    "rolling_median_subtract",
    "standard_routine",
    "tune_standard_routine",
]
