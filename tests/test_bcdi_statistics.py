"""Statistics of diffraction portions (rayproc.bcdi.statistics): the numbers they must give."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.ndimage

from rayproc.bcdi.diffraction import diffraction_intensity, expected_counts, random_sample_params
from rayproc.bcdi.statistics import (
    STATISTICS,
    autocorrelation,
    background_level,
    fringe_visibility,
    hot_pixel_mask,
    oversampling,
    portion_statistics,
)
from rayproc.errors import InputError


def box_pattern(extent, size):
    """Intensity of a box crystal of ``extent`` voxels on a ``size``^3 grid (peak at size // 2)."""
    return diffraction_intensity(np.ones(extent), size)


def test_box_oversampling_is_size_over_extent_up_to_the_threshold_bias():
    extent, size = (4, 8, 6), 32
    measured = oversampling(box_pattern(extent, size), taper=0)
    nominal = size / np.array(extent)  # 8, 4, 5.33
    # a box's autocorrelation falls linearly, so it crosses 5% at 0.95 of its extent
    np.testing.assert_allclose(measured * 0.95, nominal, rtol=0.01)
    assert measured[0] > measured[2] > measured[1]  # the thinnest axis has the longest fringes


def test_oversampling_survives_poisson_noise_and_cropping_to_a_portion():
    rng = np.random.default_rng(0)
    pattern = box_pattern((6, 16, 10), 64)  # nominal 10.7, 4, 6.4
    counts = rng.poisson(pattern * (1e7 / pattern.sum())).astype(np.float32)
    portion = counts[16:48, 16:48, 16:48]  # 32^3 around the peak: same pixels per fringe
    nominal = 64 / np.array([6, 16, 10])
    np.testing.assert_allclose(oversampling(counts, taper=0) * 0.95, nominal, rtol=0.03)
    np.testing.assert_allclose(oversampling(portion) * 0.95, nominal, rtol=0.12)


def test_taper_keeps_a_portion_that_cuts_the_peak_from_reading_as_aliased():
    pattern = box_pattern((6, 16, 10), 64)  # peak at (32, 32, 32); nominal 10.7, 4, 6.4
    portion = pattern[20:52, 31:63, 31:63]  # the peak 1 voxel from the y and x faces
    nominal = 64 / np.array([6, 16, 10])
    raw = oversampling(portion, taper=0)
    assert raw[0] == pytest.approx(nominal[0] / 0.95, rel=0.05)  # z: peak centred
    assert np.all(raw[1:] == 2.0)  # the bright faces ring through the whole autocorrelation
    tapered = oversampling(portion)
    assert np.all(tapered[1:] > 2.5)
    np.testing.assert_allclose(tapered, nominal, rtol=0.4)  # the taper dims the cut peak too


def test_rocking_stretch_multiplies_the_measured_z_oversampling():
    base = random_sample_params(32, 7, rocking_sampling_range=(1.0, 1.0), max_coherence_sigma=0.0)
    crystal = base.crystal
    stretched = dataclasses.replace(
        base, crystal=dataclasses.replace(crystal, extent=(crystal.extent[0] / 2, *crystal.extent[1:])),
        oversampling=(base.oversampling[0] * 2, *base.oversampling[1:]),
    )
    plain, rocked = (oversampling(expected_counts(32, p)) for p in (base, stretched))
    assert rocked[0] / plain[0] == pytest.approx(2.0, rel=0.2)
    np.testing.assert_allclose(rocked[1:], plain[1:], rtol=0.1)
    # faceted, rotated crystals read above their nominal (bounding-box) oversampling
    assert np.all(plain >= 0.95 * np.array(base.oversampling))
    assert np.all(plain <= 1.8 * np.array(base.oversampling))


def test_oversampling_floors_at_two_and_is_nan_without_counts():
    assert np.all(oversampling(box_pattern((32, 32, 32), 32)) == 2.0)  # aliased: "2 or less"
    assert np.all(np.isnan(oversampling(np.zeros((8, 8, 8)))))
    with pytest.raises(InputError):
        oversampling(np.ones((8, 8, 8)), threshold=1.5)
    with pytest.raises(InputError):
        oversampling(np.full((8, 8, 8), np.nan))


def test_background_spike_is_removed_from_the_autocorrelation_origin():
    pattern = box_pattern((8, 8, 8), 32)
    flat = pattern + 0.5 * pattern.mean()  # a background adds to the origin only
    assert oversampling(flat, background=0.5 * pattern.mean()) == pytest.approx(oversampling(pattern))
    corr = autocorrelation(flat)
    assert corr[16, 16, 16] == 1.0 and corr.max() == 1.0


def test_visibility_falls_as_a_gaussian_blur_is_applied():
    pattern = box_pattern((8, 6, 10), 32)
    counts = pattern * (1e8 / pattern.sum())
    period = oversampling(counts)
    visibilities = [fringe_visibility(scipy.ndimage.gaussian_filter(counts, sigma), period)
                    for sigma in (0.0, 0.5, 1.0, 2.0)]
    assert np.all(visibilities[0] > 0.9)  # a box's fringes reach zero (between pixels when
    # the period, here 4, 5.3 and 3.2, is no integer)
    for sharper, blurrier in zip(visibilities, visibilities[1:]):
        assert np.all(blurrier < sharper)
    assert np.all(visibilities[-1] < 0.8)  # not 0: the envelope of the peak still varies


def test_visibility_of_a_blurred_sinusoid_follows_the_gaussian_damping():
    period, sigma = 6.0, 1.0
    fringes = 500 * (1 + np.cos(2 * np.pi * np.arange(60) / period))
    blurred = scipy.ndimage.gaussian_filter1d(fringes, sigma, mode="wrap")
    expected = np.exp(-2 * np.pi**2 * sigma**2 / period**2)
    assert fringe_visibility(blurred, period)[0] == pytest.approx(expected, rel=0.01)
    assert np.isnan(fringe_visibility(blurred / 100, period)[0])  # too dim: max < 100 counts


def test_background_level_is_unbiased_for_sparse_poisson_counts():
    rng = np.random.default_rng(1)
    counts = rng.poisson(0.1, (32, 32, 32)).astype(float)
    counts[4:28, 4:28, 4:28] += 100 * box_pattern((4, 4, 4), 24) / 4096  # signal in the middle
    assert background_level(counts) == pytest.approx(0.1, rel=0.15)
    assert np.quantile(counts, 0.1) == 0.0  # the naive lowest decile reads no background at all


def test_hot_pixels_are_found_and_do_not_spoil_the_statistics():
    rng = np.random.default_rng(2)
    pattern = box_pattern((8, 8, 8), 32)
    counts = rng.poisson(pattern * (1e6 / pattern.sum()) + 0.05).astype(float)
    spiked = counts.copy()
    spiked[10, 22, 12] = 2e5  # off the peak, a fifth of the total (threshold: 5%)
    assert np.argwhere(hot_pixel_mask(spiked)).tolist() == [[10, 22, 12]]
    assert not hot_pixel_mask(counts).any()  # the bright Bragg peak itself is no hot pixel
    assert np.all(oversampling(spiked) == 2.0)  # the spike floods the raw autocorrelation
    clean, dirty = portion_statistics(np.stack([counts, spiked]))["oversampling"]
    np.testing.assert_allclose(dirty, clean, rtol=0.01)
    edge = counts.copy()
    edge[0, 5, 31] = 2e5  # on a corner edge of the volume: its own value is no neighbour
    assert np.argwhere(hot_pixel_mask(edge)).tolist() == [[0, 5, 31]]


def test_portion_statistics_counts_zeros_and_maxima():
    portion = np.zeros((8, 8, 8))
    portion[:, :, :6] = 3.0  # the last 2 of 8 columns, a quarter of the voxels, stay zero
    portion[4, 4, 4] = 40.0  # over 10 times its brightest neighbour: a hot pixel
    stats = portion_statistics([portion, np.zeros((8, 8, 8))])
    assert set(stats) == set(STATISTICS)
    assert stats["zero_fraction"].tolist() == [0.25, 1.0]
    assert stats["hot_pixels"].tolist() == [1, 0]
    assert stats["max_counts"][0] == 3.0  # the hot voxel is set to its brightest neighbour
    assert stats["total_counts"].tolist() == [3.0 * 384, 0.0]
    assert stats["oversampling"].shape == (2, 3)
    assert np.all(np.isnan(stats["oversampling"]))  # ~10^3 counts: under the Poisson floor
    with pytest.raises(InputError):
        portion_statistics([])
