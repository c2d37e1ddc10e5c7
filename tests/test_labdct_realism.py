"""LabDCT realism: the measurements of real vs simulated frames, and each physics term closing the gap.

Physics tests image a "point grain" (many voxels at one point, one orientation) in a 100 mm /
100 mm far-field set-up, on a small detector centred on its (011) spot, and compare the spot's
second moments with the expected spread (analytic, or the linear error propagation through the
Bragg and detector-intersection maps of :mod:`rayproc.labdct.bragg`).
"""

import numpy as np
import pytest
import xraydb

from rayproc.errors import InputError
from rayproc.labdct.bragg import HC_KEV_ANGSTROM, detector_intersection, diffracted_directions
from rayproc.labdct.crystallography import reflection_set
from rayproc.labdct.geometry import LabdctGeometry
from rayproc.labdct.polycrystal import Polycrystal
from rayproc.labdct.projection import beam_stop_transmission, simulate_projection
from rayproc.labdct.realism import (
    beamstop_edge_profile,
    compare_summaries,
    detect_spots,
    local_noise_map,
    radial_profile,
    realism_summary,
    spot_measurements,
)
from rayproc.labdct.synthesis import detector_counts, hot_pixel_map

OMEGA = 8.0  # deg: the (011) reflection of an identity-oriented Fe grain, 2 theta = 11.3 deg, E = 31 keV
PIXEL = 0.01  # mm
A_FE = 2.8665


def far_field(center=(200.0, 200.0), n=400, **kw):
    return LabdctGeometry(lss_mm=100.0, lsd_mm=100.0, detector_shape=(n, n), pixel_size_mm=PIXEL,
                          beam_center_px=center, energy_window_kev=(15.0, 110.0), material="Fe", **kw)


def point_grain(n_voxels: int) -> Polycrystal:
    return Polycrystal(np.zeros((n_voxels, 3)), np.zeros(n_voxels, np.int32), np.eye(3)[None], 1e-6, 0.2, 0.3)


def spot_direction():
    """Incident and diffracted directions, g and the (y, z) mm of the (011) spot at OMEGA (see module doc)."""
    w = np.deg2rad(OMEGA)
    g = np.array([-np.sin(w), np.cos(w), 1.0]) / A_FE
    k_in = np.array([1.0, 0.0, 0.0])
    k_out = diffracted_directions(k_in[None], g[None])[0]
    return k_in, k_out, g, 100.0 * np.tan(w), 100.0 * np.tan(w) / np.cos(w)


@pytest.fixture(scope="module")
def spot_geometry():
    """400^2 detector of 10 um pixels whose centre is the (011) spot."""
    _, _, _, y, z = spot_direction()
    return far_field(center=(200.0 - y / PIXEL, 200.0 - z / PIXEL))


def image_moments(image):
    """Centroid (2,) and covariance (2, 2) of an image, px; the bilinear deposit's 1/6 px^2 removed."""
    image = np.asarray(image, dtype=np.float64)
    yy, zz = np.indices(image.shape)
    total = image.sum()
    mean = np.array([(image * yy).sum(), (image * zz).sum()]) / total
    dy, dz = yy - mean[0], zz - mean[1]
    cov = np.array([[(image * dy * dy).sum(), (image * dy * dz).sum()],
                    [(image * dy * dz).sum(), (image * dz * dz).sum()]]) / total
    return mean, cov - np.eye(2) / 6


def radial_tangential_sigma(cov, geometry):
    """Spot spread (px) along and across the direction from the beam centre."""
    radial = -np.asarray(geometry.beam_center_px)
    radial = radial / np.linalg.norm(radial)
    tangential = np.array([-radial[1], radial[0]])
    return np.sqrt(max(radial @ cov @ radial, 0.0)), np.sqrt(max(tangential @ cov @ tangential, 0.0))


def detector_jacobian(geometry):
    """d(detector px) / d(g) at the (011) spot, (2, 3), by central differences."""
    k_in, _, g, _, _ = spot_direction()
    origin = np.zeros((1, 3))

    def where(vector):
        y, z, _ = detector_intersection(origin, diffracted_directions(k_in[None], vector[None]), geometry)
        return np.array(geometry.mm_to_px(y, z)).ravel()

    step = 1e-7
    return np.column_stack([(where(g + step * e) - where(g - step * e)) / (2 * step) for e in np.eye(3)]), g


def simulate_point(geometry, n_voxels=20000, **physics):
    image, _, spots = simulate_projection(point_grain(n_voxels), geometry, OMEGA, reflections=reflection_set("Fe", 1),
                                          psf_sigma_px=0.0, rng=1, **physics)
    return image, spots


# --- physics terms --------------------------------------------------------------------------------


def test_focal_spot_images_through_a_point_grain_magnified_by_distance_ratio(spot_geometry):
    """A source of FWHM s gives a spot of sigma s / 2.355 * |grain -> detector| / |source -> grain|."""
    fwhm_um = 200.0
    image, spots = simulate_point(spot_geometry, source_fwhm_um=fwhm_um)
    _, cov = image_moments(image)
    _, _, _, y, z = spot_direction()
    magnification = np.sqrt(100.0**2 + y**2 + z**2) / 100.0
    expected = 1e-3 * fwhm_um / (2 * np.sqrt(2 * np.log(2))) * magnification / PIXEL  # 8.66 px
    np.testing.assert_allclose(np.sqrt(np.diag(cov)), expected, rtol=0.03)
    assert len(spots["label"]) == 1 and spots["intensity"][0] == pytest.approx(image.sum(), rel=1e-3)


def test_mosaic_spread_streaks_spots_radially_by_one_over_sin_theta_cos_2theta(spot_geometry):
    """Mosaicity sigma: radial sigma 2 sigma L / cos^2(2 theta), tangential L tan(2 theta) sigma / cos(theta)."""
    sigma_deg = 0.1
    image, _ = simulate_point(spot_geometry, mosaicity_deg=sigma_deg)
    _, cov = image_moments(image)
    radial, tangential = radial_tangential_sigma(cov, spot_geometry)
    _, k_out, _, _, _ = spot_direction()
    two_theta = np.arccos(k_out[0])
    theta, sigma = two_theta / 2, np.deg2rad(sigma_deg)
    assert radial == pytest.approx(2 * sigma * 100.0 / np.cos(two_theta) ** 2 / PIXEL, rel=0.03)  # 36.3 px
    assert tangential == pytest.approx(100.0 * np.tan(two_theta) * sigma / np.cos(theta) / PIXEL, rel=0.03)  # 3.5 px
    assert radial / tangential == pytest.approx(1 / (np.sin(theta) * np.cos(two_theta)), rel=0.05)  # 10.4
    # the same spread from linear error propagation of w x g, w ~ N(0, sigma^2 I)
    jac, g = detector_jacobian(spot_geometry)
    expected = sigma**2 * jac @ (g @ g * np.eye(3) - np.outer(g, g)) @ jac.T
    np.testing.assert_allclose(cov, expected, rtol=0.05, atol=0.5)


def test_strain_spread_matches_linear_propagation_of_the_strain_tensor(spot_geometry):
    """g -> (I - eps) g with symmetric eps, independent components of std s: cov(eps g) = s^2 (|g|^2 I + g g^T - diag(g^2))."""
    s = 1e-3
    image, spots = simulate_point(spot_geometry, strain_rms=s)
    _, cov = image_moments(image)
    jac, g = detector_jacobian(spot_geometry)
    expected = s**2 * jac @ (g @ g * np.eye(3) + np.outer(g, g) - np.diag(g**2)) @ jac.T
    np.testing.assert_allclose(cov, expected, rtol=0.05, atol=0.5)
    assert np.sqrt(np.linalg.eigvalsh(cov).max()) > 10  # ~20 px: a 0.1 % strain spread is visible


def test_scintillator_depth_shifts_and_streaks_spots_along_the_ray(spot_geometry):
    """Absorption at depth s ~ truncated exponential (mu(E), t / cos alpha) moves the spot by s (k . e_y, k . e_z)."""
    base, _ = simulate_point(spot_geometry, n_voxels=1)
    image, spots = simulate_point(spot_geometry, scintillator_depth=True)
    (mean0, _), (mean, cov) = image_moments(base), image_moments(image)
    _, k_out, _, _, _ = spot_direction()
    energy = HC_KEV_ANGSTROM / (A_FE * np.sin(np.deg2rad(OMEGA)))
    assert spots["energy_kev"][0] == pytest.approx(energy, rel=1e-6)
    mu = 0.1 * float(xraydb.material_mu("CsI", 1e3 * energy, density=4.51))  # 1/mm
    longest = 0.150 / k_out[0]
    mean_path = 1 / mu - longest / np.expm1(mu * longest)
    var_path = 1 / mu**2 - longest**2 * np.exp(mu * longest) / np.expm1(mu * longest) ** 2
    in_plane = k_out[1:] / PIXEL
    np.testing.assert_allclose(mean - mean0, mean_path * in_plane, rtol=0.02)  # ~(0.96, 0.97) px
    radial, _ = radial_tangential_sigma(cov, spot_geometry)
    assert radial == pytest.approx(np.sqrt(var_path) * np.linalg.norm(in_plane), rel=0.05)  # ~0.6 px
    tangential = np.array([-in_plane[1], in_plane[0]]) / np.linalg.norm(in_plane)
    assert tangential @ cov @ tangential < 0.05


def test_psf_tail_keeps_the_light_and_adds_its_variance(spot_geometry):
    """Core sigma c, tail fraction f of sigma t: variance (1 - f) c^2 + f t^2, total unchanged."""
    kw = {"reflections": reflection_set("Fe", 1)}
    sample = point_grain(1)
    sharp, _, _ = simulate_projection(sample, spot_geometry, OMEGA, psf_sigma_px=0.0, **kw)
    core, _, _ = simulate_projection(sample, spot_geometry, OMEGA, psf_sigma_px=1.0, **kw)
    tailed, _, _ = simulate_projection(sample, spot_geometry, OMEGA, psf_sigma_px=1.0, psf_tail_fraction=0.2,
                                       psf_tail_sigma_px=6.0, **kw)
    variance = [np.trace(image_moments(im)[1]) / 2 for im in (sharp, core, tailed)]
    assert variance[1] - variance[0] == pytest.approx(1.0, abs=0.01)
    assert variance[2] - variance[0] == pytest.approx(0.8 * 1.0 + 0.2 * 36.0, rel=0.01)
    assert tailed.sum() == pytest.approx(sharp.sum(), rel=1e-5)


def test_beam_stop_transmits_its_fraction_behind_a_soft_edge():
    geometry = far_field(n=200, beam_stop_px=((80, 119), (80, 119)))
    hard = beam_stop_transmission(geometry)
    np.testing.assert_array_equal(hard, ~geometry.beam_stop_mask())
    soft = beam_stop_transmission(geometry, transmission=0.3, edge_px=3.0)
    assert soft[100, 100] == pytest.approx(0.3, abs=1e-6) and soft[100, 10] == pytest.approx(1.0, abs=1e-6)
    # half way down at the box edge (between pixels 79 and 80): (1 + 0.3) / 2
    assert (soft[79, 100] + soft[80, 100]) / 2 == pytest.approx(0.65, abs=0.01)
    # the edge profile measured on it: 10-90 % width of an erf edge = 2.56 sigma
    distances, profile = beamstop_edge_profile(soft * 500.0, geometry.beam_stop_mask(), distances=np.arange(-15, 16))
    assert profile[0] == pytest.approx(0.3, abs=0.01) and profile[-1] == pytest.approx(1.0, abs=0.01)
    level = (profile - 0.3) / 0.7
    width = np.interp(0.9, level, distances) - np.interp(0.1, level, distances)
    assert width == pytest.approx(2.56 * 3.0, rel=0.1)
    image, _, _ = simulate_projection(point_grain(1), geometry, OMEGA, background=100.0,
                                      beam_stop_transmission_fraction=0.3, beam_stop_edge_px=3.0)
    assert image[100, 100] == pytest.approx(30.0, rel=1e-5) and image[10, 10] == pytest.approx(100.0, rel=1e-5)
    with pytest.raises(InputError):
        beam_stop_transmission(geometry, transmission=1.5)


def test_detector_counts_noise_gain_correlation_read_noise_and_hot_pixels():
    """Mean E; variance c E sum(K^2) + r^2; neighbour correlation sum(K_i K_i+1) / sum(K^2); hot pixels fixed."""
    from scipy.ndimage import gaussian_filter1d

    rng = np.random.default_rng(0)
    expected = np.full((4, 256, 256), 600.0)
    c, sigma, read = 1.3, 0.7, 2.0
    hot = hot_pixel_map((256, 256), 3, fraction=0.01, mean_counts=400.0)
    frames = detector_counts(expected, rng, counts_per_photon=c, noise_psf_sigma_px=sigma, read_noise=read,
                             hot_pixels=hot)
    delta = np.zeros(41)
    delta[20] = 1.0
    kernel = gaussian_filter1d(delta, sigma)
    k2 = (kernel**2).sum() ** 2  # separable: sum over 2D kernel of K^2
    lag1 = (kernel[1:] * kernel[:-1]).sum() / (kernel**2).sum()
    cool = hot == 0
    noise = frames[:, cool] - 600.0
    assert noise.mean() == pytest.approx(0.0, abs=0.2)
    assert noise.var() == pytest.approx(c * 600.0 * k2 + read**2, rel=0.03)
    pure = frames - 600.0 - hot
    corr = np.corrcoef(pure[:, :, :-1].ravel(), pure[:, :, 1:].ravel())[0, 1]
    assert corr == pytest.approx(lag1 * c * 600.0 * k2 / (c * 600.0 * k2 + read**2), abs=0.02)
    assert (hot > 0).mean() == pytest.approx(0.01, rel=0.15) and hot[hot > 0].mean() == pytest.approx(400.0, rel=0.15)
    assert np.all(np.median(frames, axis=0)[hot > 2000] > 2000)  # a hot pixel is there in every frame


# --- measurements -----------------------------------------------------------------------------------


def test_detector_on_a_binned_pixel_keeps_the_binned_frames_noise():
    """2x2- and 4x4-binned frames of the fitted iron detector have the variance the binned model
    predicts (c E sum(K^2) on the coarse pixel, within 2 %), and the coarse model's own frames too."""
    from rayproc.labdct.calibration import bin_frames
    from rayproc.labdct.synthesis import FE_FARFIELD_PIXEL_MM, detector_at_pixel, pixel_noise_variance

    fine, _ = detector_at_pixel("fe_farfield", FE_FARFIELD_PIXEL_MM)
    frames = detector_counts(np.full((2, 512, 512), 566.0), 0, **fine)
    for factor in (2, 4):
        coarse, hot = detector_at_pixel("fe_farfield", factor * FE_FARFIELD_PIXEL_MM)
        binned = bin_frames(frames, factor)
        predicted = pixel_noise_variance(binned.mean(), mode="detector", detector=coarse)
        assert binned.var() == pytest.approx(predicted, rel=0.02)
        assert hot["fraction"] == pytest.approx(2.9e-4 * factor**2) and hot["mean_counts"] == 384.0
        simulated = detector_counts(np.full((2, 512 // factor, 512 // factor), 566.0 * factor**2), 1, **coarse)
        assert simulated.var() == pytest.approx(predicted, rel=0.03)
    assert pixel_noise_variance(566.0, mode="detector", detector=fine) == pytest.approx(frames.var(), rel=0.02)
    assert pixel_noise_variance(100.0, mode="poisson", tau=2.0) == pytest.approx(200.0)  # published: tau^2 x0 / 2


def test_spot_measurements_radial_and_tangential_extent_area_and_snr():
    """A 9 x 3 px bar along the radius reads radial extent 9, tangential 3 (sqrt(12 var + 1)), area 27."""
    labels = np.zeros((1, 64, 64), np.int32)
    residual = np.zeros((1, 64, 64), np.float32)
    labels[0, 40:49, 30:33] = 1  # rows (radial from a centre at (10, 31)), 3 columns across
    residual[0, 40:49, 30:33] = 5.0
    residual[0, 44, 31] = 20.0
    labels[0, 10:13, 50:52] = 2  # 3 x 2 spot, radial along the columns from the centre
    residual[0, 10:13, 50:52] = 2.0
    spots = spot_measurements(labels, residual, np.full((64, 64), 2.0), (11.0, 31.0))
    np.testing.assert_allclose(spots["area_px"], [27, 6])
    np.testing.assert_allclose(spots["radial_extent_px"], [9.0, 2.0], rtol=1e-6)
    np.testing.assert_allclose(spots["tangential_extent_px"], [3.0, 3.0], rtol=1e-6)
    np.testing.assert_allclose(spots["peak_snr"], [10.0, 1.0])
    np.testing.assert_allclose(spots["integrated_snr"], [(26 * 5 + 20) / (2 * np.sqrt(27)), 12 / (2 * np.sqrt(6))])


def test_realism_summary_finds_planted_spots_and_background_profiles():
    """Planted spots in Poisson noise on a radial background: count, area, shape, profiles."""
    rng = np.random.default_rng(4)
    n, size = 7, 128
    yy, xx = np.indices((size, size))
    center = (64.0, 64.0)
    radius = np.hypot(yy - center[0], xx - center[1])
    background = 400.0 + 2.0 * radius
    stop = (np.abs(yy - 64) < 8) & (np.abs(xx - 64) < 8)
    frames = np.empty((n, size, size), np.float32)
    for f in range(n):
        spots = np.zeros((size, size))
        for k in range(6):  # radially elongated Gaussians at random angles, radius 30-55 px
            r, phi = rng.uniform(30, 55), rng.uniform(0, 2 * np.pi)
            py, px = center[0] + r * np.sin(phi), center[1] + r * np.cos(phi)
            along = (yy - py) * np.sin(phi) + (xx - px) * np.cos(phi)
            across = -(yy - py) * np.cos(phi) + (xx - px) * np.sin(phi)
            spots += 400.0 * np.exp(-along**2 / (2 * 2.5**2) - across**2 / (2 * 1.0**2))
        frames[f] = rng.poisson(np.where(stop, 0.1, 1.0) * (background + spots))
    summary = realism_summary(frames, center=center, beamstop=stop)
    pooled = summary["pooled"]
    assert pooled["spots_per_frame"] == pytest.approx(6, abs=0.5)
    assert pooled["p90_elongation"] > 1.8 and pooled["median_radial_extent_px"] > pooled["median_tangential_extent_px"]
    # the frame is one of the 5 in its own median: the residual's spread is ~0.72 of the Poisson noise
    assert 0.65 < pooled["residual_noise"] / np.sqrt(520.0) < 0.8
    radii, values = summary["radial_profile"]
    good = np.isfinite(values) & (radii > 20) & (radii < 60)
    np.testing.assert_allclose(values[good], 400.0 + 2.0 * radii[good], rtol=0.03)
    _, edge = summary["edge_profile"]
    assert np.nanmin(edge) < 0.2 and edge[-1] == 1.0
    rows = compare_summaries(summary, summary)
    assert rows[0]["quantity"] == "spots_per_frame" and all(row["relative"] == 0 for row in rows)


def test_detect_and_noise_map_reject_bad_input():
    with pytest.raises(InputError):
        detect_spots(np.zeros((3, 8, 8)))  # no residual noise
    with pytest.raises(InputError):
        local_noise_map(np.zeros((8, 8)))
    with pytest.raises(InputError):
        radial_profile(np.zeros((2, 4, 4)), (0, 0))


# --- the report shell -------------------------------------------------------------------------------


def _planted_stack(rng, n, size, spots_per_frame, scale=1):
    """Poisson frames with round spots; ``scale`` repeats every pixel (a finer detector)."""
    frames = np.empty((n, size, size), np.float32)
    yy, xx = np.indices((size, size))
    for f in range(n):
        image = np.full((size, size), 300.0)
        for _ in range(spots_per_frame):
            py, px = rng.uniform(8, size - 8, 2)
            image += 300.0 * np.exp(-((yy - py) ** 2 + (xx - px) ** 2) / (2 * 1.2**2))
        frames[f] = rng.poisson(image)
    return np.repeat(np.repeat(frames, scale, axis=1), scale, axis=2) / scale**2


def test_compare_real_bins_the_finer_stack_and_writes_table_json_and_figure(tmp_path):
    from rayproc.pipelines.labdct.compare_real import compare_real

    rng = np.random.default_rng(2)
    np.save(tmp_path / "sim.npy", _planted_stack(rng, 6, 96, 8))
    np.save(tmp_path / "real.npy", _planted_stack(rng, 8, 96, 4, scale=2))  # 192^2, binned 2x to 96^2
    report = compare_real(str(tmp_path / "sim.npy"), str(tmp_path / "real.npy"), str(tmp_path / "report"),
                          real_frames="1:7")
    rows = {row["quantity"]: row for row in report.rows}
    assert rows["spots_per_frame"]["sim"] == pytest.approx(8, abs=1) and rows["spots_per_frame"]["real"] == pytest.approx(4, abs=1)
    assert rows["spots_per_frame"]["relative"] == pytest.approx(1.0, abs=0.4)
    assert report.settings["real_binning"] == 2 and report.settings["real_frames"] == "1:7"
    assert len(report.per_frame["real"]["spots"]) == 6
    assert sorted(p.name for p in (tmp_path / "report").iterdir() if not p.name.startswith(".")) == [
        "realism.json", "realism.md", "realism.png"]
    assert "spots_per_frame (target: within 10 %)" in (tmp_path / "report" / "realism.md").read_text()
    with pytest.raises(InputError, match="START:STOP"):
        compare_real(str(tmp_path / "sim.npy"), str(tmp_path / "real.npy"), str(tmp_path / "r2"), real_frames="a")
    np.save(tmp_path / "odd.npy", np.ones((6, 100, 100), np.float32))
    with pytest.raises(InputError, match="integer binning"):
        compare_real(str(tmp_path / "sim.npy"), str(tmp_path / "odd.npy"), str(tmp_path / "r3"))
