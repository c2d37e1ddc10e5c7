"""LabDCT core: background extraction, training-data synthesis, standard routine, spot metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi

from rayproc.errors import InputError
from rayproc.labdct.background import (
    extract_background,
    fill_holes,
    parametric_background,
    rolling_median,
    spot_fill_mask,
)
from rayproc.labdct.spots import (
    label_spots,
    match_spots,
    pixel_iou,
    recall_by_snr,
    spot_table,
)
from rayproc.labdct.standard_routine import (
    StandardRoutineParams,
    log_spot_labels,
    rolling_median_subtract,
    standard_routine,
    tune_standard_routine,
)
from rayproc.labdct.calibration import bin_frames, detected_spot_snr, match_spot_gain
from rayproc.labdct.synthesis import log_segmentation, synthesize_input

SIZE = 128
YY, XX = np.mgrid[:SIZE, :SIZE]


def smooth_background(width: float = 80.0) -> np.ndarray:
    """A known smooth background peaking at 600 counts near the centre."""
    return 600 * (0.5 + 0.5 * np.exp(-((YY - 60) ** 2 + (XX - 70) ** 2) / (2 * width**2)))


def gaussian_spots(rng, n_frames: int, n_spots: int, amplitude=(200, 1000), sigma=(1, 2)):
    """Random Gaussian spots per frame (they move between frames) and their centres."""
    out = np.zeros((n_frames, SIZE, SIZE))
    centres = []
    for frame in range(n_frames):
        for _ in range(n_spots):
            cy, cx = rng.uniform(8, SIZE - 8, 2)
            width, peak = rng.uniform(*sigma), rng.uniform(*amplitude)
            out[frame] += peak * np.exp(-((YY - cy) ** 2 + (XX - cx) ** 2) / (2 * width**2))
            centres.append((frame, cy, cx))
    return out, np.array(centres)


# --- background ---------------------------------------------------------------------------


def test_extract_background_recovers_known_background():
    rng = np.random.default_rng(1)
    truth = smooth_background()
    spots, _ = gaussian_spots(rng, 12, 6)
    frames = rng.poisson(truth + spots).astype(np.float32)
    background = extract_background(frames, rolling=5, dilation_radius=6)
    assert background.shape == frames.shape and background.dtype == np.float32
    np.testing.assert_allclose(background.max(axis=(1, 2)), 1.0)
    error = np.abs(background - truth / truth.max()) / (truth / truth.max())
    assert np.median(error) < 0.005 and error.max() < 0.04
    # Under the spots, the background is the background, not the spots smoothed.
    under_spots = spots > 50
    assert error[under_spots].max() < 0.03
    naive = ndi.gaussian_filter(frames, (0, 4, 4))
    naive /= naive.max(axis=(1, 2), keepdims=True)
    naive_error = np.abs(naive - truth / truth.max()) / (truth / truth.max())
    assert naive_error[under_spots].max() > 0.1


def test_spot_fill_mask_covers_spots_and_keeps_beamstop():
    rng = np.random.default_rng(2)
    spots, centres = gaussian_spots(rng, 1, 5, amplitude=(500, 1000))
    frame = rng.poisson(smooth_background() + spots[0]).astype(np.float32)
    beamstop = np.zeros((SIZE, SIZE), bool)
    beamstop[50:70, 50:70] = True
    frame[beamstop] *= 0.3  # a sharp shadow: its edge is not a spot
    mask = spot_fill_mask(frame, dilation_radius=6, beamstop=beamstop)
    iy, ix = np.round(centres[:, 1:]).astype(int).T
    outside = ~beamstop[iy, ix]
    assert mask[iy[outside], ix[outside]].all()
    assert not mask[beamstop].any()
    # Only spots (and their disks) are masked: far from any spot nothing is.
    distance = ndi.distance_transform_edt(spots[0] < 20)
    assert not mask[distance > 6 + 8].any()
    assert mask.mean() < 0.25


def test_fill_holes_constant_and_ramp():
    image = np.full((SIZE, SIZE), 7.0)
    holes = np.zeros((SIZE, SIZE), bool)
    holes[20:100, 30:110] = True  # far larger than sigma: filled through the coarse levels
    np.testing.assert_allclose(fill_holes(image, holes, sigma=4), 7.0, rtol=1e-6)
    ramp = 100 + 0.5 * XX + 0.2 * YY
    small = np.hypot(YY - 64, XX - 64) < 10
    filled = fill_holes(ramp, small)
    np.testing.assert_allclose(filled[~small], ramp[~small], rtol=1e-6)
    assert np.abs(filled - ramp)[small].max() < 1.0  # the ramp rises 10.8 across the hole
    with pytest.raises(InputError):
        fill_holes(image, np.ones_like(holes))


def test_rolling_median_windows():
    stack = np.arange(6, dtype=np.float32)[:, None, None] ** 2 * np.ones((1, 2, 3))
    values = stack[:, 0, 0]
    odd = rolling_median(stack, 3)[:, 0, 0]
    np.testing.assert_array_equal(odd, [1, 1, 4, 9, 16, 16])  # shifted at the ends
    even = rolling_median(stack, 4)[:, 0, 0]
    expected = [np.median(values[s : s + 4]) for s in (0, 0, 0, 1, 2, 2)]
    np.testing.assert_array_equal(even, expected)
    np.testing.assert_array_equal(rolling_median(stack, 10)[:, 0, 0], np.median(values))
    with pytest.raises(InputError):
        rolling_median(stack, 0)


def test_parametric_background_properties():
    beamstop = np.zeros((SIZE, SIZE), bool)
    beamstop[54:74, 54:74] = True
    stack = parametric_background((10, SIZE, SIZE), 3, beamstop=beamstop)
    assert stack.shape == (10, SIZE, SIZE) and stack.dtype == np.float32
    np.testing.assert_allclose(stack.max(axis=(1, 2)), 1.0, rtol=1e-6)
    assert stack.min() > 0
    # Smooth: without a beam stop the discrete Laplacian is tiny everywhere.
    plain = parametric_background((2, SIZE, SIZE), 3)
    assert np.abs(ndi.laplace(plain[0]))[1:-1, 1:-1].max() < 1e-3
    # A dark beam stop with a halo darker than the far field.
    halo = ndi.binary_dilation(beamstop, iterations=6) & ~beamstop
    assert stack[0][beamstop].mean() < stack[0][halo].mean() < stack[0][YY + XX < 60].max()
    # Slow drift: neighbouring frames differ less than the first and last.
    step = np.abs(np.diff(stack, axis=0)).mean(axis=(1, 2))
    assert 0 < step.max() < np.abs(stack[-1] - stack[0]).mean() * 2
    assert not np.array_equal(stack[0], stack[-1])
    again = parametric_background((10, SIZE, SIZE), 3, beamstop=beamstop)
    np.testing.assert_array_equal(stack, again)  # reproducible from the seed


def test_extract_background_on_real_frames(shared_data):
    tifffile = pytest.importorskip("tifffile")
    folder = shared_data / "labdct-fe-farfield"
    frames = np.stack(
        [tifffile.imread(folder / f"Export{i:04d}.tiff") for i in range(1, 12)]
    ).astype(np.float32)
    frames = frames.reshape(11, 512, 2, 512, 2).mean(axis=(2, 4))  # 2x2 binning for speed
    geometry = json.loads((folder / "geometry.json").read_text())
    (r0, r1), (c0, c1) = geometry["beamstop_px"]["z"], geometry["beamstop_px"]["y"]
    beamstop = np.zeros((512, 512), bool)
    beamstop[r0 // 2 - 6 : r1 // 2 + 2, c0 // 2 - 6 : c1 // 2 + 2] = True
    background = extract_background(frames, beamstop=beamstop, dilation_radius=7, smooth_sigma=2)
    np.testing.assert_allclose(background.max(axis=(1, 2)), 1.0)
    away = ~ndi.binary_dilation(beamstop, iterations=10)
    # Smooth: what a further 2-px Gaussian removes is ~0.2 % of the level.
    rough = background - ndi.gaussian_filter(background, (0, 2, 2))
    assert rough[:, away].std() / background[:, away].mean() < 0.005
    frame, image = frames[5], background[5]
    # The scaled background explains the frame up to its Poisson noise (4 counts/px binned).
    residual = frame - np.median(frame[away] / image[away]) * image
    spread = 1.4826 * np.median(np.abs(residual[away] - np.median(residual[away])))
    assert spread < 1.2 * np.sqrt(np.median(frame[away]) / 4)
    # Strong spots are gone: at spot pixels the background matches its surroundings.
    local = ndi.median_filter(frame, 15)
    spots = (frame - local > 8 * np.sqrt(local / 4)) & away
    ring = ndi.binary_dilation(spots, iterations=12) & ~ndi.binary_dilation(spots, iterations=6)
    ring &= away
    weight = np.maximum(ndi.uniform_filter(ring.astype(np.float32), 31), 1e-9)
    around = ndi.uniform_filter(image * ring, 31) / weight
    frame_around = ndi.uniform_filter(frame * ring, 31) / weight
    assert ndi.label(spots)[1] > 200
    assert np.median(np.abs(image[spots] / around[spots] - 1)) < 0.015
    assert np.median(frame[spots] / frame_around[spots] - 1) > 0.15
    # The beam-stop shadow is kept.
    assert image[beamstop].mean() < 0.8 * image[away].mean()


# --- synthesis ----------------------------------------------------------------------------


def test_poisson_mode_moments():
    x0, tau, c_bg = 80.0, 2.0, 30.0
    simulated = np.full((200, 200), x0 + c_bg)
    x = synthesize_input(simulated, np.zeros((200, 200)), 0, c_bg=c_bg, tau=tau)
    assert x.dtype == np.float32 and x.shape == simulated.shape
    mean, variance = x0 + tau * x0 / 2, tau**2 * x0 / 2  # 160 and 160
    assert abs(x.mean() - mean) < 5 * np.sqrt(variance / x.size)
    assert abs(x.var() / variance - 1) < 0.03
    assert np.allclose((x - x0) / tau, np.round((x - x0) / tau))  # tau times integer counts


def test_background_scale_range():
    i0 = 110.0
    simulated = np.full((300, 2, 2), 5.0)
    background = np.array([[1.0, 0.5], [0.25, 0.0]])
    x = synthesize_input(simulated, background, 1, c_bg=5.0, i0=i0, tau=0.0)
    r_bg = x[:, 0, 0]
    assert r_bg.min() >= i0 - np.sqrt(i0) and r_bg.max() <= i0 + np.sqrt(i0)
    assert abs(r_bg.mean() - i0) < 1.5 and abs(r_bg.std() - 2 * np.sqrt(i0) / np.sqrt(12)) < 0.6
    np.testing.assert_allclose(x, r_bg[:, None, None] * background, rtol=1e-6)  # one R_BG a frame


def test_spot_gain_scales_only_the_spot_signal():
    simulated = np.full((3, 6, 6), 10.0)
    simulated[:, 2:4, 2:4] = 410.0
    background = np.full((6, 6), 0.5)
    one = synthesize_input(simulated, background, 3, c_bg=10.0, tau=0.0)
    gains = np.array([0.5, 0.1, 2.0])
    scaled = synthesize_input(simulated, background, 3, c_bg=10.0, spot_gain=gains, tau=0.0)
    np.testing.assert_allclose(scaled - one, (gains[:, None, None] - 1) * (simulated - 10.0), atol=1e-4)
    np.testing.assert_allclose(scaled[:, 0, 0], one[:, 0, 0])  # same R_BG draws
    for bad in (-0.1, [1.0, 2.0]):
        with pytest.raises(InputError, match="spot_gain"):
            synthesize_input(simulated, background, 3, c_bg=10.0, spot_gain=bad)


def test_constant_mode():
    simulated = np.zeros((100, 8, 8), np.float32) + 10.0
    simulated[:, 2:4, 2:4] = 400.0
    x = synthesize_input(simulated, None, 2, c_bg=10.0, mode="constant")
    np.testing.assert_array_equal(x[:, 2:4, 2:4], 390.0)
    low = np.delete(x.reshape(100, -1), [18, 19, 26, 27], axis=1)
    assert (low.min(axis=1) == low.max(axis=1)).all()  # one Delta per projection
    assert low.min() >= 25 and low.max() <= 225 and np.ptp(low[:, 0]) > 150
    with pytest.raises(ValueError, match="Did you mean 'constant'"):
        synthesize_input(simulated, None, 2, c_bg=10.0, mode="constnt")
    with pytest.raises(InputError):
        synthesize_input(simulated, None, 2, c_bg=10.0)


def test_log_segmentation_matches_clean_spots():
    rng = np.random.default_rng(4)
    centres = rng.uniform(10, SIZE - 10, (12, 2))
    clean = np.zeros((SIZE, SIZE))
    truth = np.zeros((SIZE, SIZE), np.int32)
    kept = 0
    for cy, cx in centres:
        distance = np.hypot(YY - cy, XX - cx)
        if truth[distance < 8].any():
            continue  # keep spots well apart
        clean += 100 * np.exp(-(distance**2) / (2 * 1.5**2))
        kept += 1
        truth[distance < 1.5 * np.sqrt(2 * np.log(2))] = kept  # above half its maximum
    target = log_segmentation(clean, sigma=1.5, percentage=50.0, min_size=3)
    assert target.dtype == np.uint8 and set(np.unique(target)) == {0, 255}
    scores = match_spots(label_spots(target), truth)
    assert scores["n_pred"] == kept and scores["f1"] == 1.0
    assert pixel_iou(target, truth) > 0.9


# --- standard routine ---------------------------------------------------------------------


def synthetic_scan(seed: int = 5, n_frames: int = 9, n_spots: int = 6):
    """Raw frames (static background + moving spots + Poisson noise) and true spot labels."""
    rng = np.random.default_rng(seed)
    spots, _ = gaussian_spots(rng, n_frames, n_spots, amplitude=(150, 800), sigma=(1.2, 2))
    frames = rng.poisson(smooth_background() + spots).astype(np.float32)
    truth = label_spots(spots > 40)
    return frames, truth


def test_standard_routine_finds_spots():
    frames, truth = synthetic_scan()
    # Noise after median subtraction is ~25 counts: a background value of 4 sigma.
    labels = standard_routine(frames, StandardRoutineParams(background=100, sigma=1.5))
    assert labels.dtype == np.int32 and labels.shape == frames.shape
    scores = match_spots(labels, truth)
    assert scores["recall"] > 0.9 and scores["precision"] > 0.8
    noisy = match_spots(standard_routine(frames, StandardRoutineParams(background=40)), truth)
    assert noisy["precision"] < 0.1  # too low a background value: noise blobs everywhere
    # Labels never span frames.
    table = spot_table(labels, frames)
    assert len(np.unique(table["label"])) == len(table["label"]) == labels.max()


def test_standard_routine_parameters_act_as_documented():
    frames, _ = synthetic_scan()
    corrected = rolling_median_subtract(frames, 5)
    counts = [
        log_spot_labels(corrected, background=b, sigma=1.5, percentage=20, min_size=4).max()
        for b in (20, 60, 150, 300, 1000)
    ]
    assert all(a >= b for a, b in zip(counts, counts[1:])) and counts[0] > counts[-1]
    assert counts[-1] == 0
    sizes = [
        log_spot_labels(corrected, background=100, sigma=1.5, percentage=20, min_size=m).max()
        for m in (1, 4, 10, 20, 40)
    ]
    assert all(a >= b for a, b in zip(sizes, sizes[1:])) and sizes[0] > sizes[-1]
    areas = [
        np.count_nonzero(
            log_spot_labels(corrected, background=100, sigma=1.5, percentage=p, min_size=1)
        )
        for p in (5, 20, 50, 80)
    ]
    assert all(a > b for a, b in zip(areas, areas[1:]))  # higher percentage, smaller spots


def test_standard_routine_excludes_beamstop():
    frames = np.zeros((3, 32, 32), np.float32)
    frames[1, 5:8, 5:8] = frames[1, 20:23, 20:23] = 100.0
    beamstop = np.zeros((32, 32), bool)
    beamstop[16:28, 16:28] = True
    params = StandardRoutineParams(background=1, sigma=1, min_size=1, n_rolling=3)
    assert standard_routine(frames, params).max() == 2
    labels = standard_routine(frames, params, beamstop=beamstop)
    assert labels.max() == 1 and labels[1, 6, 6] == 1 and not labels[:, beamstop].any()


def test_params_roundtrip_and_validation():
    params = StandardRoutineParams(background=12.5, sigma=2.0, percentage=30.0, min_size=5)
    assert StandardRoutineParams.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    for bad in ({"sigma": 0}, {"percentage": 100}, {"min_size": 0}, {"n_rolling": 2.5}):
        with pytest.raises(InputError):
            StandardRoutineParams(**bad)


def test_tune_standard_routine_grid():
    frames, truth = synthetic_scan(n_frames=7)
    grid = {"background": [40.0, 100.0, 200.0], "min_size": [1, 6], "n_rolling": [3, 5]}
    best, table = tune_standard_routine(frames, truth, grid)
    assert len(table["f1"]) == 12 and set(table) >= {"background", "precision", "recall"}
    index = int(np.argmax(table["f1"]))
    assert (best.background, best.min_size, best.n_rolling) == (
        table["background"][index],
        table["min_size"][index],
        table["n_rolling"][index],
    )
    assert table["f1"].max() > 0.8 and table["f1"].min() < table["f1"].max()
    score = match_spots(standard_routine(frames, best), truth)["f1"]
    assert score == pytest.approx(table["f1"].max())
    with pytest.raises(InputError):
        tune_standard_routine(frames, truth, {"threshold": [1]})


# --- spot metrics -------------------------------------------------------------------------


def test_match_spots_hand_made():
    true = np.zeros((2, 20, 20), np.int32)
    pred = np.zeros_like(true)
    true[0, 1:5, 1:5] = 1  # found exactly
    pred[0, 1:5, 1:5] = 7
    true[0, 10:14, 10:14] = 2  # shifted by 2: IoU 8 / 24 = 1/3 >= 0.3, found
    pred[0, 10:14, 12:16] = 3
    true[0, 1:5, 15:19] = 3  # shifted by 3: IoU 4 / 28 < 0.3, missed (and pred is false)
    pred[0, 1:5, 18:20] = 4
    pred[0, 16:18, 1:3] = 5  # no true spot
    true[1, 1:5, 1:5] = 1  # same label in the next frame: missed (a frame-0 pred must not count)
    scores = match_spots(pred, true)
    assert (scores["n_pred"], scores["n_true"], scores["true_positives"]) == (4, 4, 2)
    assert scores["precision"] == 0.5 and scores["recall"] == 0.5 and scores["f1"] == 0.5
    np.testing.assert_array_equal(scores["true_found"], [True, True, False, False])
    np.testing.assert_allclose(scores["matched_iou"], [1.0, 1 / 3, 0.0, 0.0])
    strict = match_spots(pred, true, iou=0.5)
    assert strict["true_positives"] == 1 and strict["f1"] == 0.25


def test_match_spots_is_one_to_one():
    true = np.zeros((10, 10), np.int32)
    true[2:4, 2:4], true[2:4, 4:6] = 1, 2
    pred = (true > 0).astype(np.int32)  # one spot over two: IoU 0.5 with each
    scores = match_spots(pred, true)
    assert scores["true_positives"] == 1 and scores["precision"] == 1.0
    assert scores["recall"] == 0.5 and scores["f1"] == pytest.approx(2 / 3)
    empty = match_spots(np.zeros_like(true), np.zeros_like(true))
    assert empty["precision"] == empty["recall"] == 1.0


def test_label_spots_and_table():
    binary = np.zeros((2, 8, 8), bool)
    binary[0, 1, 1] = binary[0, 2, 2] = True  # diagonal neighbours: one spot
    binary[0, 5:7, 5:8] = True
    binary[1, 1:3, 1:3] = True  # same place, next frame: its own spot
    labels = label_spots(binary)
    assert labels.dtype == np.int32 and labels.max() == 3
    image = np.where(binary, 2.0, 0.0)
    table = spot_table(labels, image)
    np.testing.assert_array_equal(table["frame"], [0, 0, 1])
    np.testing.assert_array_equal(table["area"], [2, 6, 4])
    np.testing.assert_allclose(table["intensity"], [4.0, 12.0, 8.0])
    np.testing.assert_allclose(table["centroid_y"], [1.5, 5.5, 1.5])
    np.testing.assert_allclose(table["centroid_x"], [1.5, 6.0, 1.5])


def test_recall_by_snr_and_pixel_iou():
    found = np.array([True, False, True, True, False])
    snr = np.array([1.0, 2.0, 5.0, 9.0, 10.0])
    result = recall_by_snr(found, snr, [0, 3, 6, 10])
    np.testing.assert_array_equal(result["count"], [2, 1, 2])
    np.testing.assert_allclose(result["recall"], [0.5, 1.0, 0.5])
    assert np.isnan(recall_by_snr(found, snr, [20, 30])["recall"][0])
    a, b = np.zeros((4, 4)), np.zeros((4, 4))
    a[:2], b[1:3] = 1, 1
    assert pixel_iou(a, b) == pytest.approx(4 / 12)
    assert pixel_iou(np.zeros(3), np.zeros(3)) == 1.0


# --- calibration of the spot gain ---------------------------------------------------------


def test_bin_frames_sums_blocks():
    stack = np.arange(2 * 5 * 7, dtype=np.float32).reshape(2, 5, 7)
    binned = bin_frames(stack, 2)
    assert binned.shape == (2, 2, 3)
    assert binned[1, 1, 2] == stack[1, 2:4, 4:6].sum()
    np.testing.assert_array_equal(bin_frames(stack, 1), stack)


def _spot_stack(amplitude: float, seed: int = 0, frames: int = 7) -> np.ndarray:
    """Moving Gaussian spots of one amplitude on a flat 400-count Poisson background."""
    rng = np.random.default_rng(seed)
    stack = np.empty((frames, SIZE, SIZE), np.float32)
    for index in range(frames):
        image = np.full((SIZE, SIZE), 400.0)
        for cy, cx in rng.uniform(8, SIZE - 8, (25, 2)):
            image += amplitude * np.exp(-((YY - cy) ** 2 + (XX - cx) ** 2) / (2 * 1.5**2))
        stack[index] = rng.poisson(image)
    return stack


def test_detected_spot_snr_is_integrated_signal_over_noise():
    snr = {a: detected_spot_snr(_spot_stack(a)) for a in (200.0, 400.0)}
    assert 0.8 * 25 * 7 < len(snr[400.0]) < 1.3 * 25 * 7
    assert np.median(snr[400.0]) / np.median(snr[200.0]) == pytest.approx(2.0, rel=0.15)  # SNR follows the signal
    # a Gaussian of amplitude 400 and sigma 1.5 holds 2 pi 1.5^2 400 counts; noise sqrt(400) over ~20 px
    expected = 2 * np.pi * 1.5**2 * 400 / (20 * np.sqrt(20))
    assert 0.6 * expected < np.median(snr[400.0]) < 1.4 * expected


def test_match_spot_gain_bisects_a_monotone_response():
    assert match_spot_gain(12.0, lambda g: 60.0 * g) == pytest.approx(0.2, rel=0.01)
    assert match_spot_gain(12.0, lambda g: 60.0 * np.sqrt(g), rtol=1e-4) == pytest.approx(0.04, rel=1e-3)
    with pytest.raises(InputError, match="cannot be calibrated"):
        match_spot_gain(1e7, lambda g: 60.0 * g)  # beyond the default bounds 1e-4..1e4


def test_background_residual_counts_only_pixels_far_from_standard_spots():
    from rayproc.labdct.evaluation import background_residual

    denoised = np.zeros((1, 20, 20), np.float32)
    standard = np.zeros((1, 20, 20), np.int32)
    standard[0, 10, 10] = 1
    denoised[0, 9:12, 9:12] = 1.0  # the network agrees with the routine's spot: not background
    denoised[0, 0, 0] = 0.8  # a false detection far from any spot
    beamstop = np.zeros((20, 20), bool)
    beamstop[19, :] = True
    r = background_residual(denoised, standard, beamstop=beamstop, threshold=0.5, margin=3)
    clear = 400 - 49 - 20  # a 7x7 square around the spot (3 px margin) and the beam-stop row are left out
    assert r["background_pixels"] == clear
    assert r["residual_above_threshold"] == 1 / clear
    assert r["residual_mean"] == np.float32(0.8) / clear
