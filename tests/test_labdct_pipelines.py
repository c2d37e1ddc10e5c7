"""LabDCT data pipelines: background extraction, input synthesis, segmentation and evaluation."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import zarr
from scipy import ndimage as ndi

from rayproc import storage
from rayproc.cli import main as cli_main
from rayproc.labdct.background import parametric_background
from rayproc.labdct.spots import label_spots, match_spots
from rayproc.labdct.synthesis import log_segmentation
from rayproc.pipelines.labdct.background import extract_background_store
from rayproc.labdct.evaluation import SPOT_COLUMNS, mean_snr, truth_snr
from rayproc.pipelines.labdct.evaluate import evaluate_labdct
from rayproc.pipelines.labdct.segment import parse_params, segment_labdct
from rayproc.pipelines.labdct.simulate import simulate_labdct
from rayproc.pipelines.labdct.calibrate import calibrate_labdct
from rayproc.pipelines.labdct.synth import fit_background, projection_gain, synthesize_labdct, task_name

SIM = dict(preset="D18", geometry="fe_farfield", projections=4, binning=8, seed=3, progress=False)
TAU, I0 = 2.0, 110.0
FRAMES, SIZE, LEVEL = 7, 96, 600.0
BEAMSTOP = (slice(40, 56), slice(40, 56))


def _tiny_net():
    import torch

    from rayproc.labdct.network import LabdctNetConfig, build_labdct_net

    torch.manual_seed(0)
    torch.set_num_threads(1)
    return build_labdct_net(LabdctNetConfig(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1))).eval()


@pytest.fixture(scope="module")
def known_background():
    """A static background (max 1, beam-stop shadow) under moving spots and Poisson noise."""
    rng = np.random.default_rng(1)
    beamstop = np.zeros((SIZE, SIZE), bool)
    beamstop[BEAMSTOP] = True
    background = parametric_background((1, SIZE, SIZE), rng, beamstop=beamstop)[0]
    yy, xx = np.mgrid[:SIZE, :SIZE]
    frames = np.empty((FRAMES, SIZE, SIZE), np.float32)
    for index in range(FRAMES):
        image = LEVEL * background.astype(np.float64)
        for cy, cx, amplitude in zip(*rng.uniform(0, SIZE, (2, 15)), rng.uniform(300, 2000, 15)):
            image += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
        frames[index] = rng.poisson(image)
    return frames, background, beamstop


@pytest.fixture(scope="module")
def stores(ray_local, known_background, tmp_path_factory):
    """Simulated stack, background store (from the known-background frames) and synthesis (2 workers)."""
    root = tmp_path_factory.mktemp("labdct-pipelines")
    frames, _, _ = known_background
    np.save(root / "frames.npy", frames)
    geometry = {"detector_pixels": [SIZE, SIZE], "beamstop_px": {"y": [40, 55], "z": [40, 55]}}  # BEAMSTOP
    (root / "geometry.json").write_text(json.dumps(geometry))
    simulate_labdct(str(root / "sim.zarr"), workers=2, **SIM)
    extract_background_store(str(root / "frames.npy"), str(root / "bg.zarr"), rolling=FRAMES, dilation_radius=6.0,
                             beamstop_from=str(root / "geometry.json"), command="test")
    report = synthesize_labdct(str(root / "sim.zarr"), str(root / "bg.zarr"), str(root / "synth.zarr"), tau=TAU,
                               i0=I0, seed=5, workers=2, progress=False, command="test")
    assert report.computed == 4 and report.status == "created"
    return root


def test_background_store_recovers_the_known_background(stores, known_background):
    _, truth, beamstop = known_background
    ds = storage.open_dataset(str(stores / "bg.zarr"))
    assert ds.background.dims == ("frame", "det_y", "det_z") and ds.background.dtype == np.float32
    assert ds.attrs["provenance"]["parameters"]["rolling"] == FRAMES
    estimate = ds.background.values
    np.testing.assert_allclose(estimate.max(axis=(1, 2)), 1.0)
    reference = truth / truth.max()
    far = ~ndi.binary_dilation(beamstop, iterations=10)  # the smoothing blurs the beam-stop edge
    far[:8], far[-8:], far[:, :8], far[:, -8:] = False, False, False, False
    error = np.abs(estimate[:, far] / reference[far] - 1)
    assert np.median(error) < 0.02 and np.percentile(error, 99) < 0.08
    # the beam-stop shadow (kept as measured, then smoothed) stays in the background
    np.testing.assert_array_equal(ds.beamstop.values, beamstop)
    inner = np.zeros_like(beamstop)
    inner[46:50, 46:50] = True
    assert estimate[:, inner].mean() == pytest.approx(reference[inner].mean(), rel=0.1)


def test_synth_follows_the_published_equations(stores):
    sim = storage.open_dataset(str(stores / "sim.zarr"))
    ds = storage.open_dataset(str(stores / "synth.zarr"))
    c_bg = sim.attrs["background"]
    assert ds.input.dims == ("omega", "det_y", "det_z") and ds.input.dtype == np.float32 and ds.target.dtype == np.uint8
    np.testing.assert_array_equal(ds.background_frame.values, [0, 1, 2, 3])  # cycled
    backgrounds = fit_background(storage.open_dataset(str(stores / "bg.zarr")).background.values, (128, 128))
    clean = sim.projection.values.astype(np.float64)
    signal = np.where(clean == 0, 0.0, clean - c_bg)  # beam stop: the background image's own shadow
    x = ds.input.values.astype(np.float64)
    assert x.min() >= 0  # never -C_BG under the beam stop
    standardised = []
    for p in range(4):
        x0_over_r = backgrounds[p].astype(np.float64)
        quiet = (signal[p] == 0) & (x0_over_r > 0.2)  # no spot: x0 = R_BG I_BG
        # E[x] = (1 + tau / 2) R_BG I_BG with R_BG in I0 +- sqrt(I0)
        r_bg = x[p][quiet].sum() / ((1 + TAU / 2) * x0_over_r[quiet].sum())
        assert I0 - np.sqrt(I0) - 1 < r_bg < I0 + np.sqrt(I0) + 1
        x0 = r_bg * x0_over_r[quiet]
        standardised.append((x[p][quiet] - (1 + TAU / 2) * x0) / np.sqrt(TAU**2 * x0 / 2))
    # Var[x] = tau^2 x0 / 2: unit variance (about 5000 pixels, standard error 0.02)
    z = np.concatenate(standardised)
    assert len(z) > 3000 and abs(z.mean()) < 0.03 and z.var() == pytest.approx(1.0, abs=0.07)
    # targets: LoG segmentation of the noise-free projection, inside the simulated spots
    target = ds.target.values
    assert set(np.unique(target)) <= {0, 255} and (target > 0).mean() > 0.05
    np.testing.assert_array_equal(target, log_segmentation(signal))
    assert (ds.spot_label.values[target > 0] > 0).mean() > 0.99
    np.testing.assert_array_equal(ds.spot_label.values, sim.spot_label.values)
    # spot table copied, plus the SNR of eq. I / (tau sqrt(A I0 <I_BG> / 2))
    np.testing.assert_array_equal(ds.spot_intensity.values, sim.spot_intensity.values)
    rows = np.flatnonzero((ds.spot_projection.values == 2) & (ds.spot_area_px.values > 0))[:20]
    level = ndi.mean(backgrounds[2], sim.spot_label.values[2], ds.spot_id.values[rows])
    expected = ds.spot_intensity.values[rows] / (TAU * np.sqrt(ds.spot_area_px.values[rows] * I0 * level / 2))
    np.testing.assert_allclose(ds.spot_snr.values[rows], expected, rtol=1e-9)
    # peak SNR: the brightest noise-free pixel of the spot over the per-pixel noise
    peak = ndi.maximum(signal[2], sim.spot_label.values[2], ds.spot_id.values[rows])
    np.testing.assert_allclose(ds.spot_peak_snr.values[rows], peak / (TAU * np.sqrt(I0 * level / 2)), rtol=1e-9)


def test_synth_bit_identical_for_one_and_two_workers_and_resumes(stores, tmp_path):
    args = dict(tau=TAU, i0=I0, seed=5, progress=False, command="test")
    one = str(tmp_path / "one.zarr")
    synthesize_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), one, workers=1, **args)
    a, b = storage.open_dataset(str(stores / "synth.zarr")), storage.open_dataset(one)
    for name in ("input", "target", "spot_snr"):
        np.testing.assert_array_equal(a[name].values, b[name].values)
    # forget two projections and the completion flag, as if the run had been killed
    resumed = tmp_path / "resumed.zarr"
    shutil.copytree(one, resumed)
    for p in (1, 3):
        (resumed / "_progress" / task_name(p)).unlink()
        zarr.open_array(str(resumed / "input"), mode="r+")[p] = 0
    zarr.open_group(str(resumed), mode="r+").attrs["rayproc_status"] = "incomplete"
    report = synthesize_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), str(resumed), workers=2, **args)
    assert report.status == "resumed" and report.computed == 2
    np.testing.assert_array_equal(storage.open_dataset(str(resumed)).input.values, a.input.values)


def test_synth_spot_gain_scales_spots_and_their_snr(stores, tmp_path):
    args = dict(tau=TAU, i0=I0, seed=5, workers=1, progress=False, command="test")
    fixed, ranged = str(tmp_path / "fixed.zarr"), str(tmp_path / "ranged.zarr")
    synthesize_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), fixed, spot_gain=0.25, **args)
    synthesize_labdct(str(stores / "sim.zarr"), "parametric", ranged, spot_gain=(0.1, 0.5), **args)
    one, quarter, drawn = (storage.open_dataset(p) for p in (str(stores / "synth.zarr"), fixed, ranged))
    np.testing.assert_array_equal(one.spot_gain.values, 1.0)
    np.testing.assert_array_equal(quarter.spot_gain.values, 0.25)
    np.testing.assert_allclose(quarter.spot_snr.values, 0.25 * one.spot_snr.values, rtol=1e-12)
    np.testing.assert_allclose(quarter.spot_peak_snr.values, 0.25 * one.spot_peak_snr.values, rtol=1e-12)
    np.testing.assert_array_equal(quarter.target.values, one.target.values)  # targets do not depend on the gain
    gains = drawn.spot_gain.values
    assert ((0.1 <= gains) & (gains <= 0.5)).all() and len(set(gains)) == 4
    assert gains.tolist() == [projection_gain((0.1, 0.5), 5, p) for p in range(4)]
    assert quarter.input.values.mean() < one.input.values.mean()
    assert quarter.attrs["provenance"]["parameters"]["spot_gain"] == [0.25, 0.25]


def test_synth_detector_mode_has_the_detector_noise_and_fixed_hot_pixels(stores, tmp_path):
    """--mode detector: Var[x] = c x0 sum(K^2) on background, hot pixels at the same place in every
    frame, and spot SNRs over that noise; a stack made twice is bit-identical."""
    from rayproc.labdct.synthesis import detector_at_pixel, hot_pixel_map, pixel_noise_variance

    out = str(tmp_path / "detector.zarr")
    args = dict(mode="detector", i0=2000.0, seed=5, workers=1, progress=False, command="test")
    synthesize_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), out, **args)
    sim, ds = storage.open_dataset(str(stores / "sim.zarr")), storage.open_dataset(out)
    assert ds.attrs["mode"] == "detector" and ds.attrs["detector"] == "fe_farfield"
    pixel_mm = float(abs(sim.det_y.values[1] - sim.det_y.values[0]))
    detector, hot = detector_at_pixel("fe_farfield", pixel_mm)
    assert ds.attrs["provenance"]["parameters"]["detector"] == detector
    x = ds.input.values.astype(np.float64)
    backgrounds = fit_background(storage.open_dataset(str(stores / "bg.zarr")).background.values, (128, 128))
    clean = sim.projection.values
    hot_pixels = (x - ndi.median_filter(x, size=(1, 3, 3))) > 250  # offsets of mean 384 counts, noise ~45
    always = hot_pixels.all(axis=0)
    expected = hot_pixel_map((128, 128), np.random.default_rng([5, 0, 3]), **hot)  # one map per stack
    assert (expected > 0).mean() == pytest.approx(hot["fraction"], rel=0.2)
    assert always[expected > 600].mean() > 0.9 and always[expected == 0].mean() < 2e-3
    z = []
    for p in range(4):
        quiet = (clean[p] == sim.attrs["background"]) & (backgrounds[p] > 0.2) & (expected == 0)
        r_bg = x[p][quiet].sum() / backgrounds[p][quiet].sum()
        assert 2000 - 2000**0.5 - 1 < r_bg < 2000 + 2000**0.5 + 1
        x0 = r_bg * backgrounds[p][quiet]
        z.append((x[p][quiet] - x0) / np.sqrt(pixel_noise_variance(x0, mode="detector", detector=detector)))
    z = np.concatenate(z)
    assert len(z) > 2000 and abs(z.mean()) < 0.05 and z.var() == pytest.approx(1.0, abs=0.08)
    rows = np.flatnonzero((ds.spot_projection.values == 2) & (ds.spot_area_px.values > 0))[:20]
    level = ndi.mean(backgrounds[2], sim.spot_label.values[2], ds.spot_id.values[rows])
    noise = np.sqrt(ds.spot_area_px.values[rows] * pixel_noise_variance(2000.0 * level, mode="detector",
                                                                           detector=detector))
    np.testing.assert_allclose(ds.spot_snr.values[rows], ds.spot_intensity.values[rows] / noise, rtol=1e-9)
    again = str(tmp_path / "again.zarr")
    synthesize_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), again, **{**args, "workers": 2})
    np.testing.assert_array_equal(storage.open_dataset(again).input.values, ds.input.values)


def test_calibrate_recovers_a_known_spot_gain(stores, tmp_path):
    measured = str(tmp_path / "measured.zarr")
    synthesize_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), measured, spot_gain=0.3, tau=TAU, i0=I0,
                      seed=9, workers=1, progress=False, command="test")
    rows, cols = np.nonzero(storage.open_dataset(str(stores / "sim.zarr")).projection[0].values == 0)
    geometry = tmp_path / "geometry.json"  # the measured frames' beam stop, as a real scan would have
    geometry.write_text(json.dumps({"detector_pixels": [128, 128], "beamstop_px": {
        "y": [int(rows.min()), int(rows.max())], "z": [int(cols.min()), int(cols.max())]}}))
    report = calibrate_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), measured, i0=I0, tau=TAU,
                              n_rolling=3, real_beamstop_from=str(geometry))
    assert report.binning == 1 and report.gain == pytest.approx(0.3, rel=0.2)
    assert report.synthesised_snr[-1] == pytest.approx(report.measured_snr[-1], rel=0.05)  # matched q90
    assert "| measured |" in report.to_markdown()


def test_calibrate_detector_mode_measures_the_background_scale_and_gain(stores, tmp_path):
    measured = str(tmp_path / "measured.zarr")
    synthesize_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), measured, mode="detector", spot_gain=0.3,
                      i0=1500.0, seed=9, workers=1, progress=False, command="test")
    report = calibrate_labdct(str(stores / "sim.zarr"), str(stores / "bg.zarr"), measured, mode="detector",
                              n_rolling=3, seed=4)
    assert report.settings["i0"] == pytest.approx(1500.0, rel=0.05)  # the measured frames' level, I0 not given
    assert report.gain == pytest.approx(0.3, rel=0.2) and "detector noise" in report.to_markdown()


def test_calibrate_against_the_real_iron_frames(ray_local, shared_data, tmp_path):
    real = shared_data / "labdct-fe-farfield"
    sim = str(tmp_path / "sim.zarr")
    simulate_labdct(sim, workers=2, **{**SIM, "projections": 3, "binning": 4})  # 256^2: real pixels binned 4x
    report = calibrate_labdct(sim, "parametric", str(real), i0=1000.0, frames=3, real_frames=6, n_rolling=3)
    assert report.binning == 4 and report.settings["real_beamstop_from"].endswith("geometry.json")
    assert report.measured_spots_per_frame > 50 and report.synthesised_spots_per_frame > 10
    assert 1e-3 < report.gain < 10
    assert report.synthesised_snr[-1] == pytest.approx(report.measured_snr[-1], rel=0.05)


def test_read_frames_from_a_store_a_tiff_folder_and_bad_stacks(stores, tmp_path):
    import tifffile
    import xarray as xr

    from rayproc.errors import InputError
    from rayproc.pipelines.labdct.background import read_frames

    stack, source = read_frames(str(stores / "synth.zarr"))  # the first frame variable: "input"
    assert source.name == "input" and source.dims == ("omega", "det_y", "det_z") and stack.dtype == np.float32
    assert list(source.dim_coords()) == ["omega", "det_y", "det_z"] and source.location is not None
    folder = tmp_path / "tiffs"
    folder.mkdir()
    for index in (2, 1, 10):
        tifffile.imwrite(folder / f"f{index}.tif", np.full((4, 5), index, np.uint16))
    stack, source = read_frames(str(folder))
    assert stack[:, 0, 0].tolist() == [1, 2, 10] and source.frame_names == ("f1.tif", "f2.tif", "f10.tif")
    assert source.dims == ("frame", "det_y", "det_z") and list(source.coords) == ["frame", "det_y", "det_z"]
    np.save(tmp_path / "nan.npy", np.full((2, 4, 4), np.nan))
    with pytest.raises(InputError, match="NaN or infinite"):
        read_frames(str(tmp_path / "nan.npy"))
    storage.write_dataset(str(tmp_path / "other.zarr"), xr.Dataset({"counts": (("a", "b", "c"), np.ones((1, 2, 2)))}))
    with pytest.raises(InputError, match=r"holds no frames: expected one of \('input', 'projection'"):
        read_frames(str(tmp_path / "other.zarr"))


def test_fit_background_crops_and_resizes():
    frames = np.ones((2, 60, 100), np.float32)
    frames[:, :, :20] = frames[:, :, 80:] = 5.0  # cropped away to the square aspect ratio
    frames[:, 30:, 20:80] = 0.5
    fitted = fit_background(frames, (120, 120))
    assert fitted.shape == (2, 120, 120) and fitted.max() == 1.0
    assert fitted[:, 5:55].mean() == pytest.approx(1.0) and fitted[:, 65:].mean() == pytest.approx(0.5)


def test_segment_standard_finds_the_true_spots(ray_local, stores, tmp_path):
    out = str(tmp_path / "seg.zarr")
    params = {"background": 120.0, "sigma": 1.0, "percentage": 20.0, "min_size": 4, "n_rolling": 5}
    report = segment_labdct(str(stores / "synth.zarr"), out, method="standard", params=json.dumps(params),
                            command="test", progress=False)
    ds = storage.open_dataset(out)
    assert ds.spot_label.dims == ("omega", "det_y", "det_z") and ds.spot_label.dtype == np.int32
    per_frame = [int(frame.max()) for frame in ds.spot_label.values]  # ids 1..K within each frame
    assert report.spots == ds.sizes["spot"] == sum(per_frame)
    assert np.bincount(ds.spot_frame.values, minlength=len(per_frame)).tolist() == per_frame
    assert {"spot_frame", "spot_id", "spot_centroid_y_px", "spot_area_px", "spot_intensity"} <= set(ds.data_vars)
    truth = label_spots(storage.open_dataset(str(stores / "synth.zarr")).target.values)
    labels = ds.spot_label.values
    f1 = match_spots(labels, truth)["f1"]
    chance = match_spots(np.roll(labels, 7, axis=2), truth)["f1"]  # same spots, wrong places
    assert f1 > 0.6 and f1 > chance + 0.4


def test_segment_dl_stores_probability_and_labels(ray_local, stores, tmp_path):
    out = str(tmp_path / "dl.zarr")
    segment_labdct(str(stores / "synth.zarr"), out, method="dl", model=_tiny_net(), threshold=0.5, command="test",
                   hot_pixels=False, detect_beamstop=False, progress=False)
    ds = storage.open_dataset(out)
    denoised, labels = ds.denoised.values, ds.spot_label.values
    assert denoised.shape == labels.shape == (4, 128, 128) and 0 <= denoised.min() and denoised.max() <= 1
    assert ((labels > 0) <= (denoised >= 0.5)).all()
    from rayproc.labdct.denoise import DEFAULT_MIN_SIZE, dl_spot_labels

    from rayproc.labdct.spots import number_per_frame

    # the stored probability's spots, numbered within each frame
    np.testing.assert_array_equal(labels, number_per_frame(dl_spot_labels(denoised, threshold=0.5)))
    sizes = np.asarray(ds.spot_area_px.values)
    assert len(sizes) == ds.sizes["spot"] > 0 and sizes.min() >= DEFAULT_MIN_SIZE, sizes  # spots found


def test_mean_snr_of_a_flat_spot_is_its_pixel_snr():
    from rayproc.pipelines.labdct.synth import spot_snr

    area, per_pixel, level = np.array([1, 9, 40, 0]), 3.0, 0.4
    integrated = spot_snr(per_pixel * area, area, level, tau=1.0, i0=110.0)
    pixel = spot_snr(per_pixel, 1, level, tau=1.0, i0=110.0)
    np.testing.assert_allclose(integrated[:3], pixel * np.sqrt(area[:3]))  # integrating A pixels gains sqrt(A)
    np.testing.assert_allclose(mean_snr(integrated, area)[:3], pixel)  # a flat spot: mean = peak
    assert np.isnan(mean_snr(integrated, area)[3])


def test_detection_ceiling_counts_the_spots_above_the_noise():
    from rayproc.labdct.evaluation import detection_ceiling

    rows = detection_ceiling([0.5, 1.0, 2.0, 4.0, 9.0, np.nan, 30.0, 2.5], thresholds=(2.0, 5.0))
    assert [r["recall"] for r in rows] == [5 / 8, 2 / 8]
    assert rows[0]["f1"] == pytest.approx(2 * (5 / 8) / (1 + 5 / 8))


def test_truth_snr_takes_the_dominant_simulated_spot():
    truth = np.zeros((1, 6, 6), int)
    truth[0, :2, :3] = 1
    truth[0, 4:, 4:] = 2
    sim = np.zeros_like(truth)
    sim[0, :2, :2], sim[0, :2, 2] = 7, 8  # spot 1: mostly simulated spot 7
    table = {"spot_projection": np.array([3, 3, 4]), "spot_id": np.array([7, 8, 7]), "spot_snr": np.array([4., 9., 1.])}
    np.testing.assert_allclose(truth_snr(truth, sim, [3], table), [4.0, np.nan])
    np.testing.assert_allclose(truth_snr(truth, np.zeros_like(sim), [3], table), [np.nan, np.nan])
    table["spot_id"] = np.array([7, 8, 16])  # 2 * 9 + 16 = 3 * 9 + 7: keys must not collide
    table["spot_projection"] = np.array([3, 3, 2])
    np.testing.assert_allclose(truth_snr(truth, sim, [3], table), [4.0, np.nan])


def test_evaluate_writes_tables_and_figures(stores, tmp_path):
    real = tmp_path / "real.npy"
    np.save(real, storage.open_dataset(str(stores / "synth.zarr")).input.values[:3])
    grid = {"background": [2.0, 4.0], "sigma": [1.0, 1.5], "percentage": [20.0], "min_size": [4]}
    report = evaluate_labdct(str(stores / "synth.zarr"), str(tmp_path / "eval"), model=_tiny_net(), grid=grid,
                             real=str(real), command="test")
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(record["methods"]) == {"dl", "standard"}
    for scores in record["methods"].values():
        assert set(SPOT_COLUMNS) <= set(scores)
    standard = record["methods"]["standard"]
    assert standard["f1"] > 0.6 and record["tuned"]["tune_projections"] == 2
    snr = record["recall_by_snr"]
    assert sum(snr["count"]) == standard["n_true"] and len(snr["standard"]) == len(snr["edges"]) - 1
    peak = record["recall_by_peak_snr"]
    assert sum(peak["count"]) == standard["n_true"] and len(peak["dl"]) == len(peak["edges"]) - 1
    mean = record["recall_by_mean_snr"]
    assert sum(mean["count"]) == standard["n_true"] and len(mean["standard"]) == len(mean["edges"]) - 1
    for kind in (snr, peak, mean):  # weak spots: the bins below SNR 2, pooled
        below = [i for i, high in enumerate(kind["edges"][1:]) if high <= 2]
        assert kind["weak"]["count"] == sum(kind["count"][i] for i in below)
        if kind["weak"]["count"]:
            pooled = sum(kind["count"][i] * kind["standard"][i] for i in below if kind["count"][i])
            assert kind["weak"]["standard"] == pytest.approx(pooled / kind["weak"]["count"])
    assert {"residual_mean", "residual_std", "dl_spots_per_frame", "standard_spots_per_frame"} <= set(record["real"])
    assert len(record["tuning_table"]["f1"]) == 4
    markdown = (tmp_path / "eval" / "metrics.md").read_text()
    assert "| method | precision | recall | F1 | pixel IoU |" in markdown and "| SNR | true spots |" in markdown
    assert "Recall per peak-SNR bin" in markdown and "Recall per mean-SNR bin" in markdown
    assert "Weak spots (SNR < 2) per SNR definition" in markdown
    assert record["real"]["standard_spots_each_frame"] and len(record["real"]["dl_spots_each_frame"]) == 3
    for name in ("panels_synthetic.png", "profiles_weak_spots.png", "recall_by_snr.png", "panels_real.png",
                 "spots_real.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 1000 and name in markdown
    tuned = parse_params(str(tmp_path / "eval" / "standard_params.json"))
    assert tuned.background == pytest.approx(report.tuned["params"]["background"])


def test_evaluate_oracle_tunes_and_scores_on_the_same_frames_and_bins_real_frames(stores, tmp_path):
    synth = storage.open_dataset(str(stores / "synth.zarr")).input.values
    real = tmp_path / "real.npy"  # real frames twice as fine as the synthetic pixel: binned 2x (summed)
    np.save(real, np.repeat(np.repeat(synth[:3], 2, axis=1), 2, axis=2) / 4)
    grid = {"background": [2.0, 4.0], "sigma": [1.0], "percentage": [20.0], "min_size": [4]}
    report = evaluate_labdct(str(stores / "synth.zarr"), str(tmp_path / "eval"), model=_tiny_net(), grid=grid,
                             real=str(real), oracle=True, command="test")
    assert report.tuned["oracle"] and report.tuned["tune_projections"] == report.tuned["test_projections"] == 4
    assert report.real["binning"] == 2 and report.real["shape"] == [128, 128]
    truth = label_spots(storage.open_dataset(str(stores / "synth.zarr")).target.values > 0)
    assert report.methods["standard"]["n_true"] == int(truth.max())  # every projection scored
    assert report.methods["standard"]["f1"] == pytest.approx(report.tuned["f1_tuning"])
    markdown = (tmp_path / "eval" / "metrics.md").read_text()
    assert "oracle tuning" in markdown and "Ceiling: an ideal detector" in markdown
    assert [row["snr_at_least"] for row in report.ceiling] == [2.0, 3.0, 5.0]
    assert report.ceiling[0]["f1"] >= report.methods["standard"]["f1"] - 0.05  # nobody beats the ceiling much
    weak = report.recall_by_mean_snr["weak"]
    assert weak["count"] == 0 or 0 <= weak["ideal"] <= 1


def test_evaluate_command_prints_scores_and_weak_spot_recall(stores, tmp_path, capsys):
    grid = '{"background": [4.0], "sigma": [1.5], "percentage": [20.0], "min_size": [4]}'
    code = cli_main(["labdct", "evaluate", str(stores / "synth.zarr"), "--out", str(tmp_path / "e"), "--grid", grid])
    out = capsys.readouterr().out
    assert code == 0 and "dl       precision" in out and "standard precision" in out
    record = json.loads((tmp_path / "e" / "metrics.json").read_text())
    for label, key in (("integrated", "recall_by_snr"), ("peak", "recall_by_peak_snr"), ("mean", "recall_by_mean_snr")):
        weak = record[key]["weak"]
        assert (f"recall at {label} SNR < 2 ({weak['count']} spots)" in out) == (weak["count"] > 0)


@pytest.mark.parametrize("args, expected", [
    (["synth", "{sim}", "{bg}", "{out}", "--mode", "gaussian"], "poisson"),
    (["synth", "{sim}", "{sim}", "{out}"], "no 'background' variable"),
    (["synth", "{sim}", "{bg}", "{out}", "--spot-gain", "0.5:0.1"], "--spot-gain"),
    (["calibrate", "{sim}", "{bg}", "{missing}"], "not found"),
    (["segment", "{synth}", "{out}", "--method", "cnn"], "standard"),
    (["segment", "{synth}", "{out}", "--method", "standard", "--params", '{{"sigmaa": 1}}'], "sigmaa"),
    (["background", "{missing}", "{out}"], "not found"),
    (["evaluate", "{sim}", "--out", "{out}"], "not a synthesised"),
    (["synth", "{sim}", "{bg}", "{out}", "--mode", "detector", "--detector", "pilatus"], "fe_farfield"),
])
def test_bad_input_is_one_line(stores, tmp_path, cli_error, args, expected):
    paths = {"sim": stores / "sim.zarr", "bg": stores / "bg.zarr", "synth": stores / "synth.zarr",
             "out": tmp_path / "out.zarr", "missing": tmp_path / "nothing-here"}
    assert expected in cli_error(["labdct", *(a.format(**paths) for a in args)])
