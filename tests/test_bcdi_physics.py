"""BCDI forward simulation: crystal geometry, diffraction physics, detector statistics."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from rayproc.errors import InputError
from rayproc.bcdi.crystal import (
    SHAPE_KINDS,
    CrystalParams,
    crystal_object,
    random_crystal_params,
)
from rayproc.bcdi.diffraction import (
    BcdiSampleParams,
    detector_counts,
    diffraction_intensity,
    expected_counts,
    random_sample_params,
    render_sample,
    simulate_bcdi_sample,
)


def friedel_mate(intensity: np.ndarray) -> np.ndarray:
    """``I(-q)`` on the fftshift grid: pixel i <-> (2 * (n // 2) - i) % n on every axis."""
    n = intensity.shape[0]
    mate = (2 * (n // 2) - np.arange(n)) % n
    return intensity[np.ix_(mate, mate, mate)]


def aligned_cube(extent, **kwargs) -> CrystalParams:
    return CrystalParams("cube", {"100": 1.0}, extent=extent, **kwargs)


def local_minima(profile: np.ndarray) -> np.ndarray:
    inner = profile[1:-1]
    return np.flatnonzero((inner < profile[:-2]) & (inner < profile[2:])) + 1


# --- crystal -------------------------------------------------------------------------------

def test_aligned_cube_is_an_exact_box():
    obj = crystal_object(aligned_cube((6, 4, 8)), 10)
    amplitude = np.abs(obj)
    assert obj.dtype == np.complex64
    assert amplitude.sum() == pytest.approx(6 * 4 * 8)
    assert set(np.unique(amplitude)) == {0.0, 1.0}
    np.testing.assert_array_equal(np.flatnonzero(amplitude.sum(axis=(1, 2))), np.arange(2, 8))


def test_octahedron_volume_follows_the_polyhedron():
    # |z| + |y| + |x| <= L / 2 has volume L^3 / 6; the soft edge keeps the voxel sum close.
    octahedron = CrystalParams("octahedron", {"111": 1.0}, extent=(24, 24, 24))
    assert np.abs(crystal_object(octahedron, 28)).sum() == pytest.approx(24**3 / 6, rel=0.01)


def test_winterbottom_is_cut_by_its_substrate_plane():
    facets = {"111": 1.0, "100": 1.15, "110": 1.1}
    wulff = np.abs(crystal_object(CrystalParams("wulff", facets, extent=(20, 20, 20)), 24))
    cut = CrystalParams("winterbottom", facets, extent=(20, 20, 20), substrate_normal=(0, 0, 1),
                        substrate_distance=0.0)
    half = np.abs(crystal_object(cut, 24))
    wulff_profile, half_profile = (np.trim_zeros(a.sum(axis=(0, 1))) for a in (wulff, half))
    # The Wulff shape is centro-symmetric; cut through its centre, the +x end becomes the flat
    # substrate face: the full central cross-section, against a small {100} facet at -x.
    np.testing.assert_allclose(wulff_profile, wulff_profile[::-1], rtol=1e-5)
    assert half_profile[-1] == pytest.approx(wulff_profile.max(), rel=1e-5)
    assert half_profile[-1] > 5 * half_profile[0]


def test_smooth_phase_reaches_the_requested_amplitude():
    params = dataclasses.replace(random_crystal_params(3, extent_range=(12, 16)), phase_amplitude=1.5,
                                 vortices=())
    obj = crystal_object(params, 18)
    inside = np.abs(obj) > 0
    assert np.abs(np.angle(obj[inside])).max() == pytest.approx(1.5, abs=1e-5)


def test_vortex_winds_the_phase_by_two_pi():
    angles = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    y = np.round(7.5 + 5 * np.sin(angles)).astype(int)
    x = np.round(7.5 + 5 * np.cos(angles)).astype(int)
    windings = []
    for charge in (1.0, -1.0, 2.0):
        params = aligned_cube((16, 16, 16), vortices=((0.0, 0.0, 0.0, 1.0, 0.0, 0.0, charge),))
        loop = np.angle(crystal_object(params, 16)[8])[y, x]  # a circle around the line (along z)
        windings.append(np.angle(np.exp(1j * (np.roll(loop, -1) - loop))).sum())
    # 2 pi per unit charge, the sign of the charge setting the sense of rotation.
    np.testing.assert_allclose(np.abs(windings), [2 * np.pi, 2 * np.pi, 4 * np.pi], atol=1e-5)
    assert windings[0] == pytest.approx(-windings[1]) == pytest.approx(windings[2] / 2)


def test_random_crystals_fill_the_requested_extent():
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(20):
        params = random_crystal_params(rng, extent_range=(10, 20))
        kinds.add(params.shape_kind)
        assert all(10 - 1e-9 <= e <= 20 + 1e-9 for e in params.extent)
        amplitude = np.abs(crystal_object(params, 22))
        for axis in range(3):
            occupied = np.flatnonzero(amplitude.sum(axis=tuple(a for a in range(3) if a != axis)))
            # Occupied voxel centres lie within ~half a voxel of the surface (more at sharp vertices).
            assert abs(np.ptp(occupied) - params.extent[axis]) <= 2
    assert kinds == set(SHAPE_KINDS)


# --- diffraction ---------------------------------------------------------------------------

@pytest.mark.parametrize("size", [32, 33])
def test_friedel_symmetry_of_a_real_object(size):
    params = dataclasses.replace(random_crystal_params(1, extent_range=(10, 12)), phase_amplitude=0.0,
                                 vortices=())
    obj = crystal_object(params, 14)
    real = diffraction_intensity(np.abs(obj).astype(np.float64), size)
    assert np.abs(real - friedel_mate(real)).max() <= 1e-12 * real.max()
    strained = diffraction_intensity(crystal_object(dataclasses.replace(params, phase_amplitude=1.0), 14)
                                     .astype(np.complex128), size)
    assert np.abs(strained - friedel_mate(strained)).max() > 1e-3 * strained.max()


def test_box_fringe_period_is_grid_over_extent():
    size, extent = 64, (16, 8, 32)
    obj = crystal_object(aligned_cube(extent), 34).astype(np.complex128)
    intensity = diffraction_intensity(obj, size)
    centre = size // 2
    assert intensity[centre, centre, centre] == pytest.approx((16 * 8 * 32) ** 2)
    lines = intensity[:, centre, centre], intensity[centre, :, centre], intensity[centre, centre, :]
    for line, length in zip(lines, extent):
        period = size // length
        zeros = [q for q in range(1, size - 1) if (q - centre) % period == 0 and q != centre]
        np.testing.assert_array_equal(local_minima(line), zeros)
        assert line[zeros].max() <= 1e-12 * line.max()


def test_offset_shifts_the_pattern_by_subpixel_amounts():
    # A box of L voxels gives the Dirichlet kernel sin^2(pi u L / N) / sin^2(pi u / N) per axis,
    # here centred at u = q - offset.
    size, length, offset = 32, 8, (1.25, -2.5, 0.4)
    box = crystal_object(aligned_cube((length,) * 3), 10).astype(np.complex128)
    intensity = diffraction_intensity(box, size, offset=offset)
    q = np.arange(size) - size // 2
    factors = []
    for shift in offset:
        u = q - shift
        factors.append(np.sin(np.pi * u * length / size) ** 2 / np.sin(np.pi * u / size) ** 2)
    np.testing.assert_allclose(intensity, np.einsum("i,j,k->ijk", *factors), rtol=1e-9, atol=1e-9)


def test_measured_oversampling_matches_the_request():
    size = 64
    lags = np.abs(np.fft.fftfreq(size, 1 / size))
    for index in range(4):
        params = random_sample_params(size, np.random.default_rng([7, index]))
        assert all(2.0 - 1e-9 <= s <= 6.0 + 1e-9 for s in params.oversampling[1:])
        assert 2.0 - 1e-9 <= params.oversampling[0] <= 18.0 + 1e-9  # times the rocking factor (1..3)
        clean = dataclasses.replace(params, coherence_sigma=(0.0, 0.0, 0.0), background=0.0)
        # The inverse FFT of |F|^2 is the autocorrelation, whose support spans +-L per axis.
        patterson = np.abs(np.fft.ifftn(np.fft.ifftshift(expected_counts(size, clean, supersampling=1))))
        for axis, requested in enumerate(params.oversampling):
            profile = patterson.max(axis=tuple(a for a in range(3) if a != axis))
            extent = lags[profile > 1e-6 * profile.max()].max()
            assert abs(extent - size / requested) <= 1.5


def test_rocking_sampling_stretches_the_fringes_along_z_only():
    size = 64
    plain = random_sample_params(size, np.random.default_rng([3, 1]), rocking_sampling_range=(1.0, 1.0))
    finer = random_sample_params(size, np.random.default_rng([3, 1]), rocking_sampling_range=(2.5, 2.5))
    np.testing.assert_allclose(finer.oversampling, (2.5 * plain.oversampling[0], *plain.oversampling[1:]))
    assert finer.crystal.extent[0] == pytest.approx(plain.crystal.extent[0] / 2.5)
    assert finer.crystal.extent[1:] == plain.crystal.extent[1:]


def test_supersampling_removes_streak_aliasing():
    # A box's streak along q_x, at the fringe maximum q = 14 of a 32 grid, compared with the
    # continuous transform sinc^2(q L / N) that a detector samples.
    params = BcdiSampleParams(aligned_cube((8, 8, 8)), oversampling=(4.0, 4.0, 4.0))
    continuous = np.sinc(14 * 8 / 32) ** 2
    errors = {}
    for factor in (1, 2):
        intensity = expected_counts(32, params, supersampling=factor)
        errors[factor] = intensity[16, 16, 16 + 14] / intensity[16, 16, 16] / continuous - 1
    assert errors[1] > 0.9
    assert abs(errors[2]) < 0.25


def test_bragg_peak_centre_of_mass_sits_at_the_offset():
    size = 48
    q = np.arange(size) - size // 2
    for index in range(4):
        params = random_sample_params(size, np.random.default_rng([11, index]))
        signal = expected_counts(size, params) - params.background
        assert signal.sum() == pytest.approx(params.photons)
        profiles = [signal.sum(axis=tuple(a for a in range(3) if a != axis)) for axis in range(3)]
        centre_of_mass = [(profile * q).sum() / profile.sum() for profile in profiles]
        np.testing.assert_allclose(centre_of_mass, params.offset, atol=0.25)


# --- detector ------------------------------------------------------------------------------

def test_poisson_counts_have_variance_equal_to_mean():
    counts = detector_counts(np.full((32, 32, 32), 50.0), np.random.default_rng(0))
    assert counts.dtype == np.float32
    np.testing.assert_array_equal(counts, np.round(counts))
    # std of the sample mean: sqrt(50 / n) = 0.04; of the sample variance: sqrt(2 * 50^2 / n) = 0.39.
    assert counts.mean() == pytest.approx(50, abs=0.2)
    assert counts.var() == pytest.approx(50, abs=2.0)


def test_hot_and_dead_pixels():
    counts = detector_counts(np.full((16, 16, 16), 100.0), 1, hot_pixels=3, dead_pixels=2,
                             hot_pixel_counts=1e4)
    assert (counts > 5000).sum() == 3
    assert (counts == 0).sum() == 2


def test_total_counts_match_requested_photons():
    size = 32
    for index in range(3):
        params = dataclasses.replace(random_sample_params(size, np.random.default_rng([5, index])),
                                     hot_pixels=0, dead_pixels=0)
        counts = render_sample(size, params, np.random.default_rng(index))
        expected_total = params.photons + params.background * size**3
        assert abs(counts.astype(np.float64).sum() - expected_total) < 5 * np.sqrt(expected_total)


# --- entry point ---------------------------------------------------------------------------

def test_simulation_is_deterministic_and_index_dependent():
    first, params = simulate_bcdi_sample(32, 3, 4)
    again, params_again = simulate_bcdi_sample(32, 3, 4)
    np.testing.assert_array_equal(first, again)
    assert params == params_again == random_sample_params(32, np.random.default_rng([3, 4]))
    other, other_params = simulate_bcdi_sample(32, 3, 5)
    assert not np.array_equal(first, other) and other_params != params
    # The same generator state re-renders the same counts from the parameters.
    rng = np.random.default_rng([3, 4])
    np.testing.assert_array_equal(render_sample(32, random_sample_params(32, rng), rng), first)


def test_samples_are_finite_nonnegative_counts_near_the_centre():
    size = 32
    for index in range(6):
        counts, params = simulate_bcdi_sample(size, 0, index)
        assert counts.shape == (size,) * 3 and counts.dtype == np.float32
        assert np.all(np.isfinite(counts)) and counts.min() >= 0
        np.testing.assert_array_equal(counts, np.round(counts))
        assert all(abs(o) <= size / 16 for o in params.offset)
        # Hot pixels can outshine the Bragg peak: locate it on the expected counts.
        clean = expected_counts(size, params)
        peak = np.unravel_index(clean.argmax(), clean.shape)
        assert all(abs(p - size // 2) <= size / 16 + 3 for p in peak)


def test_params_round_trip_through_json():
    params = random_sample_params(64, np.random.default_rng([1, 2]))
    restored = BcdiSampleParams.from_dict(json.loads(json.dumps(params.to_dict())))
    assert restored == params
    summary = params.summary()
    assert summary["shape"] in SHAPE_KINDS
    assert summary["oversampling"] == pytest.approx(np.mean(params.oversampling))
    assert summary["photons"] == params.photons


@pytest.mark.parametrize("size", [4, 7, 64.0, "64", True, None])
def test_bad_sizes_raise(size):
    with pytest.raises(InputError):
        simulate_bcdi_sample(size, 0, 0)


def test_bad_arguments_raise():
    with pytest.raises(InputError):
        simulate_bcdi_sample(32, -1, 0)
    with pytest.raises(InputError):
        random_sample_params(32, 0, oversampling_range=(0.5, 2.0))
    with pytest.raises(InputError):
        random_sample_params(32, 0, oversampling_range=(4.0, 2.0))
    with pytest.raises(InputError):
        BcdiSampleParams(aligned_cube((8, 8, 8)), oversampling=(0.8, 2.0, 2.0))
    with pytest.raises(InputError):
        diffraction_intensity(np.ones((40, 8, 8)), 32)  # object larger than the grid
    with pytest.raises(InputError):
        diffraction_intensity(np.ones((8, 8)), 32)
    with pytest.raises(InputError):
        crystal_object(aligned_cube((20, 8, 8)), 16)
    with pytest.raises(InputError):
        CrystalParams("octahedron", {"100": 1.0}, extent=(8, 8, 8))  # families do not match the kind
    with pytest.raises(InputError):
        detector_counts(np.full(4, -1.0), 0)
    with pytest.raises(ValueError, match="Did you mean 'wulff'"):
        CrystalParams("wulf", {"111": 1.0}, extent=(8, 8, 8))
