"""BCDI forward model: far-field intensity of a crystal, with the detector's imperfections.

One training sample is a ``size``^3 array of photon counts around a Bragg peak: the squared
modulus of the Fourier transform of the complex crystal (``bcdi_crystal``), blurred by partial
coherence, scaled to a total photon count, with a flat background, Poisson noise and a few
hot or dead pixels, as in the realistic simulated data of Masto et al. [1]_.

Conventions
-----------
- Oversampling: along axis i, ``os_i = size / L_i`` with ``L_i`` the crystal's extent in voxels
  [1]_. The intensity then has ``os_i`` pixels per fringe (fringe period ``size / L_i``);
  ``os_i >= 2`` is the Nyquist condition for phase retrieval [3]_.
- Centring: after ``fftshift`` the q = 0 pixel is ``size // 2`` on every axis, so the Friedel
  mate of pixel ``i`` is ``(2 * (size // 2) - i) % size`` (for even sizes the ``-size / 2``
  plane is its own mate).
- Friedel's law: a real object gives ``F(-q) = conj F(q)``, hence ``I(-q) = I(q)``; strain
  (a phase) breaks that centro-symmetry, which is what makes BCDI sensitive to it.

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
.. [2] J. N. Clark, X. Huang, R. Harder and I. K. Robinson, "High-resolution three-dimensional
   partially coherent diffraction imaging", Nat. Commun. 3 (2012) 993.
   :doi:`10.1038/ncomms1994`
.. [3] J. Miao, D. Sayre and H. N. Chapman, "Phase retrieval from the magnitude of the Fourier
   transforms of nonperiodic objects", J. Opt. Soc. Am. A 15 (1998) 1662-1669.
   :doi:`10.1364/JOSAA.15.001662`
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.fft
import scipy.ndimage

from rayproc.errors import InputError
from rayproc.bcdi.crystal import (
    SHAPE_KINDS,
    CrystalParams,
    _parse_float,
    _parse_int,
    _parse_range,
    _parse_vector,
    crystal_object,
    random_crystal_params,
)

MIN_SIZE = 8


def _parse_size(size: Any) -> int:
    return _parse_int(size, "size", minimum=MIN_SIZE)


def diffraction_intensity(
    obj: np.ndarray, size: int, *, offset: Sequence[float] = (0.0, 0.0, 0.0)
) -> np.ndarray:
    """Far-field intensity ``|FFT(obj)|^2`` on a ``size``^3 grid, peak centred.

    Parameters
    ----------
    obj : ndarray, shape (m_z, m_y, m_x), each m <= size
        Complex (or real) object; it is zero-padded to ``size`` along every axis, so its
        oversampling along axis i is ``size / L_i`` for a crystal of extent ``L_i`` voxels.
    size : int
        FFT grid size, >= 8.
    offset : 3 floats
        Shift of the Bragg peak from the centre pixel ``size // 2``, in pixels (sub-pixel
        shifts allowed), applied as the phase ramp ``exp(2 pi i offset . r / size)``.

    Returns
    -------
    intensity : ndarray, shape (size, size, size)
        float32 for single-precision input, float64 otherwise.

    Notes
    -----
    Kinematic (Born) approximation: ``I(q) = |sum_r obj(r) exp(-2 pi i q . r / size)|^2`` with
    q = 0 at pixel ``size // 2``. A box of extent L gives ``sin^2(pi q L / size) /
    sin^2(pi q / size)`` along each axis: zeros every ``size / L`` pixels. The inverse FFT of
    the intensity is the object's autocorrelation, of extent ``2 L``, so ``size >= 2 L`` (oversampling
    >= 2) keeps it free of aliasing.

    Examples
    --------
    >>> box = np.ones((4, 4, 4))
    >>> intensity = diffraction_intensity(box, 16)
    >>> round(float(intensity[8, 8, 8])), round(float(intensity[8, 8, 12]), 9)  # volume^2, first zero
    (4096, 0.0)
    """
    obj = np.asarray(obj)
    size = _parse_size(size)
    if obj.ndim != 3 or obj.dtype.kind not in "fc":
        raise InputError(f"obj must be a 3-D float or complex array; "
                         f"got shape {obj.shape}, dtype {obj.dtype}.")
    if max(obj.shape) > size:
        raise InputError(f"obj shape {obj.shape} exceeds the FFT grid size {size} (oversampling < 1).")
    if not np.all(np.isfinite(obj)):
        raise InputError("obj has NaN or infinite values.")
    offset = _parse_vector(offset, "offset")
    single = obj.dtype in (np.float32, np.complex64, np.float16)
    field = obj.astype(np.complex64 if single else np.complex128)
    for axis, (length, shift) in enumerate(zip(obj.shape, offset)):
        if shift:
            ramp = np.exp(2j * np.pi * shift * np.arange(length) / size).astype(field.dtype)
            field *= ramp.reshape([-1 if a == axis else 1 for a in range(3)])
    amplitude = scipy.fft.fftn(field, s=(size,) * 3)
    return np.fft.fftshift(amplitude.real**2 + amplitude.imag**2)


def detector_counts(
    expected: np.ndarray,
    rng: np.random.Generator | int,
    *,
    hot_pixels: int = 0,
    dead_pixels: int = 0,
    hot_pixel_counts: float = 1e4,
) -> np.ndarray:
    """Photon-counting detector readout of an expected-count array.

    Parameters
    ----------
    expected : ndarray of float, any shape
        Mean counts per pixel (>= 0).
    rng : numpy.random.Generator or int
        Source of the noise (or its seed).
    hot_pixels, dead_pixels : int
        Pixels (distinct, uniformly placed) that read ``Poisson(hot_pixel_counts)`` or 0.
    hot_pixel_counts : float
        Mean reading of a hot pixel.

    Returns
    -------
    counts : ndarray of float32, same shape as ``expected``
        Integer-valued (exactly up to 2^24; beyond, rounded far below the Poisson noise).
    """
    expected = np.asarray(expected, dtype=np.float64)
    if not np.all(np.isfinite(expected)) or np.any(expected < 0):
        raise InputError("expected counts must be finite and >= 0.")
    hot_pixels = _parse_int(hot_pixels, "hot_pixels", minimum=0)
    dead_pixels = _parse_int(dead_pixels, "dead_pixels", minimum=0)
    hot_pixel_counts = _parse_float(hot_pixel_counts, "hot_pixel_counts", minimum=0.0)
    if hot_pixels + dead_pixels > expected.size:
        raise InputError(f"{hot_pixels} hot + {dead_pixels} dead pixels exceed the array's "
                         f"{expected.size} pixels.")
    rng = np.random.default_rng(rng)
    counts = rng.poisson(expected).astype(np.float32)
    if hot_pixels + dead_pixels:
        flat = counts.reshape(-1)
        pixels = rng.choice(flat.size, hot_pixels + dead_pixels, replace=False)
        flat[pixels[:hot_pixels]] = rng.poisson(hot_pixel_counts, hot_pixels)
        flat[pixels[hot_pixels:]] = 0.0
    return counts


@dataclass(frozen=True)
class BcdiSampleParams:
    """Everything that defines one simulated BCDI sample, but its noise realization.

    Parameters
    ----------
    crystal : CrystalParams
        The crystal; its extent is set from ``oversampling`` when rendered.
    oversampling : 3 floats
        ``size / crystal extent`` along (z, y, x), each >= 1.
    offset : 3 floats
        Bragg peak shift from the centre pixel, in pixels.
    coherence_sigma : 3 floats
        Std (pixels) of the Gaussian the intensity is convolved with (partial coherence [2]_).
    photons : float
        Expected total signal counts (background excluded).
    background : float
        Expected flat background counts per pixel.
    hot_pixels, dead_pixels : int
        Number of hot (Poisson(hot_pixel_counts)) and dead (0) pixels.
    hot_pixel_counts : float
        Mean reading of a hot pixel.
    """

    crystal: CrystalParams
    oversampling: tuple[float, float, float]
    offset: tuple[float, float, float] = (0.0, 0.0, 0.0)
    coherence_sigma: tuple[float, float, float] = (0.0, 0.0, 0.0)
    photons: float = 1e8
    background: float = 0.0
    hot_pixels: int = 0
    dead_pixels: int = 0
    hot_pixel_counts: float = 1e4

    def __post_init__(self):
        if not isinstance(self.crystal, CrystalParams):
            raise TypeError(f"crystal must be a CrystalParams; "
                            f"got {type(self.crystal).__name__} instead.")
        photons = _parse_float(self.photons, "photons", minimum=0.0)
        if photons == 0:
            raise InputError(f"photons must be > 0; got {self.photons!r}.")
        parsed = {
            "oversampling": _parse_vector(self.oversampling, "oversampling", minimum=1.0),
            "offset": _parse_vector(self.offset, "offset"),
            "coherence_sigma": _parse_vector(self.coherence_sigma, "coherence_sigma", minimum=0.0),
            "photons": photons,
            "background": _parse_float(self.background, "background", minimum=0.0),
            "hot_pixels": _parse_int(self.hot_pixels, "hot_pixels", minimum=0),
            "dead_pixels": _parse_int(self.dead_pixels, "dead_pixels", minimum=0),
            "hot_pixel_counts": _parse_float(self.hot_pixel_counts, "hot_pixel_counts", minimum=0.0),
        }
        for name, value in parsed.items():
            object.__setattr__(self, name, value)

    def summary(self) -> dict[str, str | float | int]:
        """Scalar per-sample summaries (for dataset coordinates)."""
        return {
            "shape": self.crystal.shape_kind,
            "oversampling": float(np.mean(self.oversampling)),
            "photons": self.photons,
            "phase_amplitude": self.crystal.phase_amplitude,
            "n_vortices": self.crystal.n_vortices,
        }

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data["crystal"] = self.crystal.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BcdiSampleParams:
        return cls(**{**data, "crystal": CrystalParams.from_dict(data["crystal"])})


def random_sample_params(
    size: int,
    rng: np.random.Generator | int,
    *,
    oversampling_range: Sequence[float] = (2.0, 6.0),
    photon_range: Sequence[float] = (1e6, 1e9),
    max_offset: float | None = None,
    max_coherence_sigma: float = 1.0,
    max_background: float = 0.3,
    max_hot_pixels: int = 2,
    max_dead_pixels: int = 2,
    shape_kinds: Sequence[str] = SHAPE_KINDS,
    rocking_sampling_range: Sequence[float] = (1.0, 3.0),
) -> BcdiSampleParams:
    """Draw the parameters of one sample.

    Parameters
    ----------
    size : int
        Pattern size (>= 8); sets the crystal's extent range ``size / oversampling_range``.
    rng : numpy.random.Generator or int
        Source of randomness (or its seed).
    oversampling_range : (float, float)
        Bounds of the per-axis oversampling ratio, >= 1 (>= 2 for phase retrieval).
    photon_range : (float, float)
        Total signal counts, log-uniform.
    max_offset : float, optional
        Peak offset is uniform in [-max_offset, max_offset] per axis; default ``size / 16``.
    max_coherence_sigma : float
        Coherence blur std is uniform in [0, max_coherence_sigma] pixels per axis.
    max_background : float
        Flat background is uniform in [0, max_background] counts per pixel.
    max_hot_pixels, max_dead_pixels : int
        Numbers of hot and dead pixels are uniform in [0, max].
    shape_kinds : sequence of str
        Crystal shape kinds to draw from.
    rocking_sampling_range : (float, float)
        Bounds (>= 1, log-uniform) of an extra oversampling factor along z, the rocking
        direction. A rocking scan's angular step is chosen apart from the detector's pixel
        pitch and is often finer: the measured gold scan in ``../shared/data`` is oversampled
        about 11x along the rocking axis and 3.4-4.2x across the detector (autocorrelation
        extent, ``benchmarks/bcdi_sim_vs_real.py``). In the detector frame the crystal is then
        compressed along z, an affine map of reciprocal space.

    Returns
    -------
    BcdiSampleParams
        Oversampling follows the crystal's own aspect ratio (see ``random_crystal_params``)
        times the rocking factor along z; hot pixels read ~ log-uniform 1e2..1e5 counts.
    """
    size = _parse_size(size)
    rng = np.random.default_rng(rng)
    low, high = _parse_range(oversampling_range, "oversampling_range", minimum=1.0)
    photon_low, photon_high = _parse_range(photon_range, "photon_range", minimum=1.0)
    max_offset = _parse_float(size / 16 if max_offset is None else max_offset, "max_offset", minimum=0.0)
    max_coherence_sigma = _parse_float(max_coherence_sigma, "max_coherence_sigma", minimum=0.0)
    max_background = _parse_float(max_background, "max_background", minimum=0.0)
    max_hot_pixels = _parse_int(max_hot_pixels, "max_hot_pixels", minimum=0)
    max_dead_pixels = _parse_int(max_dead_pixels, "max_dead_pixels", minimum=0)
    rocking_low, rocking_high = _parse_range(rocking_sampling_range, "rocking_sampling_range", minimum=1.0)
    crystal = random_crystal_params(rng, extent_range=(size / high, size / low), shape_kinds=shape_kinds)
    params = BcdiSampleParams(
        crystal=crystal,
        oversampling=tuple(size / e for e in crystal.extent),
        offset=tuple(rng.uniform(-max_offset, max_offset, 3)),
        coherence_sigma=tuple(rng.uniform(0.0, max_coherence_sigma, 3)),
        photons=math.exp(rng.uniform(math.log(photon_low), math.log(photon_high))),
        background=float(rng.uniform(0.0, max_background)),
        hot_pixels=int(rng.integers(0, max_hot_pixels + 1)),
        dead_pixels=int(rng.integers(0, max_dead_pixels + 1)),
        hot_pixel_counts=math.exp(rng.uniform(math.log(1e2), math.log(1e5))),
    )
    if rocking_high == 1.0:
        return params
    rocking = math.exp(rng.uniform(math.log(rocking_low), math.log(rocking_high)))
    extent = (crystal.extent[0] / rocking, *crystal.extent[1:])
    return dataclasses.replace(
        params, crystal=dataclasses.replace(crystal, extent=extent),
        oversampling=(params.oversampling[0] * rocking, *params.oversampling[1:]),
    )


def expected_counts(size: int, params: BcdiSampleParams, *, supersampling: int = 2) -> np.ndarray:
    """Noise-free mean counts of a sample: blurred intensity scaled to photons, plus background.

    Parameters
    ----------
    size : int
        Pattern size, >= 8.
    params : BcdiSampleParams
    supersampling : int
        The crystal is voxelized this many times finer and its intensity computed on a grid
        this many times larger, of which the central ``size``^3 pixels are kept (same q
        sampling, see Notes). 1 is fastest.

    Returns
    -------
    expected : ndarray of float64, shape (size, size, size)
        Sums to ``photons + background * size**3``.

    Notes
    -----
    A detector samples the continuous Fourier transform of a crystal with atomically sharp
    facets. The DFT of a crystal voxelized at the detector's own real-space pixel instead
    folds the transform beyond the detector edge back into it: facet streaks leaving one
    side re-enter on the other (at ``supersampling=1`` the outer pixels of a cube's pattern
    are off by up to ~100x). Voxelizing ``s`` times finer pushes the folded images ``s``
    detector widths away (and sharpens the one-voxel anti-aliasing ramp of the facets).
    The crystal, of extent ``size / oversampling`` detector voxels, is built on the
    smallest cubic grid that holds it and zero-padded by the FFT.

    Partial coherence is modelled as the convolution of the coherent intensity with a
    Gaussian [2]_ (edges extended with their nearest value).
    """
    size = _parse_size(size)
    supersampling = _parse_int(supersampling, "supersampling", minimum=1)
    fine = supersampling * size
    crystal = dataclasses.replace(params.crystal, extent=tuple(fine / np.asarray(params.oversampling)))
    grid = min(fine, math.ceil(max(crystal.extent)) + 2)
    intensity = diffraction_intensity(crystal_object(crystal, grid), fine, offset=params.offset)
    window = slice(fine // 2 - size // 2, fine // 2 - size // 2 + size)
    intensity = intensity[window, window, window].astype(np.float64)
    intensity = scipy.ndimage.gaussian_filter(intensity, params.coherence_sigma, mode="nearest")
    intensity *= params.photons / intensity.sum()
    return intensity + params.background


def render_sample(size: int, params: BcdiSampleParams, rng: np.random.Generator | int) -> np.ndarray:
    """Photon counts of a sample: ``expected_counts`` read out by ``detector_counts``.

    Parameters
    ----------
    size : int
        Pattern size, >= 8.
    params : BcdiSampleParams
    rng : numpy.random.Generator or int
        Source of the Poisson noise and hot/dead pixel positions; the same generator state
        gives the same array.

    Returns
    -------
    counts : ndarray of float32, shape (size, size, size)
    """
    return detector_counts(expected_counts(size, params), rng, hot_pixels=params.hot_pixels,
                           dead_pixels=params.dead_pixels, hot_pixel_counts=params.hot_pixel_counts)


def simulate_bcdi_sample(size: int, seed: int, index: int) -> tuple[np.ndarray, BcdiSampleParams]:
    """Sample ``index`` of the simulated data set ``seed``: the pipeline's entry point.

    Parameters
    ----------
    size : int
        Pattern size, >= 8.
    seed, index : int
        Non-negative; everything is drawn from ``numpy.random.default_rng([seed, index])``
        (parameters first, then the noise), so the result depends on (size, seed, index) only.

    Returns
    -------
    counts : ndarray of float32, shape (size, size, size)
        Photon counts, Bragg peak near pixel ``size // 2``.
    params : BcdiSampleParams
        Equal to ``random_sample_params(size, numpy.random.default_rng([seed, index]))``.

    Examples
    --------
    >>> counts, params = simulate_bcdi_sample(32, seed=0, index=0)
    >>> counts.shape, counts.dtype
    ((32, 32, 32), dtype('float32'))
    """
    size = _parse_size(size)
    seed = _parse_int(seed, "seed", minimum=0)
    index = _parse_int(index, "index", minimum=0)
    rng = np.random.default_rng([seed, index])
    params = random_sample_params(size, rng)
    return render_sample(size, params, rng), params


__all__ = [
    "MIN_SIZE",
    "BcdiSampleParams",
    "detector_counts",
    "diffraction_intensity",
    "expected_counts",
    "random_sample_params",
    "render_sample",
    "simulate_bcdi_sample",
]
