"""``rayproc labdct segment`` on the actor pool: chaining, masks, naming, resuming, real frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import xarray as xr

from rayproc import storage
from rayproc.labdct.detector_masks import dark_region_mask, hot_pixel_mask
from rayproc.labdct.spots import number_per_frame
from rayproc.labdct.standard_routine import StandardRoutineParams, standard_routine
from rayproc.pipelines.labdct.segment import never_mask, residual_noise_of, segment_labdct

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

SIZE, FRAMES = 64, 9
BEAMSTOP = (slice(26, 38), slice(28, 40))
HOT = [(5, 50), (50, 7)]


def _frames(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Poisson frames with moving spots (one per frame), a dark beam stop and two hot pixels."""
    rng = np.random.default_rng(seed)
    level = np.full((SIZE, SIZE), 400.0)
    level[BEAMSTOP] = 30.0
    frames = rng.poisson(level, (FRAMES, SIZE, SIZE)).astype(np.float32)
    truth = np.zeros(frames.shape, bool)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    for index in range(FRAMES):
        cy, cx = 12 + 5 * index, 15 + 3 * index % 40
        if BEAMSTOP[0].start - 4 <= cy <= BEAMSTOP[0].stop + 4:
            cy += 16
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
        frames[index] += rng.poisson(900.0 * blob)
        truth[index] = blob > 0.3
    for y, x in HOT:
        frames[:, y, x] += 5000.0
    return frames, truth


@pytest.fixture(scope="module")
def stack_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    frames, truth = _frames()
    for index, frame in enumerate(frames):
        tifffile.imwrite(folder / f"f{index:03d}.tif", frame.astype(np.uint16))
    return folder, frames, truth


def _tiny_net():
    import torch

    from rayproc.labdct.network import LabdctNetConfig, build_labdct_net

    torch.manual_seed(0)
    return build_labdct_net(LabdctNetConfig(widths=(8, 16, 32, 64), blocks=(1, 1, 1, 1))).eval()


def test_masks_find_the_hot_pixels_and_the_beam_stop():
    frames, _ = _frames()
    hot = hot_pixel_mask(frames)
    assert sorted(map(tuple, np.argwhere(hot).tolist())) == sorted(HOT)
    stop = dark_region_mask(frames, smooth=1.0, margin=0)
    expected = np.zeros((SIZE, SIZE), bool)
    expected[BEAMSTOP] = True
    assert (stop & expected).sum() / expected.sum() > 0.95 and (stop & ~expected).sum() < 0.1 * expected.sum()


def test_standard_on_actors_equals_the_whole_stack_and_masks_what_never_is_a_spot(ray_local, stack_folder,
                                                                                   tmp_path):
    folder, frames, truth = stack_folder
    out = str(tmp_path / "std.zarr")
    report = segment_labdct(str(folder), out, method="standard", frames_per_task=2, workers=2, progress=False)
    ds = storage.open_dataset(out)
    assert ds.spot_label.dims == ("frame", "det_y", "det_z") and ds.frame.values.tolist() == list(range(FRAMES))
    assert ds.frame.attrs["long_name"].startswith("frame index") and ds.det_z.attrs["units"] == "pixel"
    never = ds.beamstop.values.astype(bool) | ds.hot_pixel.values.astype(bool)
    assert ds.hot_pixel.values.sum() == len(HOT) and ds.beamstop.values[BEAMSTOP].all()
    assert ds.beamstop.attrs["source"].startswith("detected")
    labels = ds.spot_label.values
    assert not (labels[:, never] > 0).any()
    # slabs with halos on 2 actors = the whole stack in one process, with the same masks and noise
    masked = never_mask(ds.beamstop.values, ds.hot_pixel.values)
    whole = standard_routine(frames, StandardRoutineParams(), beamstop=masked,
                             noise=residual_noise_of(frames, 5, masked))
    np.testing.assert_array_equal(labels, number_per_frame(whole))
    # every moving spot found, nothing else: one spot per frame
    assert report.spots == FRAMES and ds.spot_frame.values.tolist() == list(range(FRAMES))
    assert all((labels[i][truth[i]] > 0).mean() > 0.5 for i in range(FRAMES))
    assert json.loads(json.dumps(ds.attrs["provenance"]["parameters"]["params"]))["background"] is None


def test_segment_chains_on_denoise_output_and_single_frames(ray_local, stack_folder, tmp_path):
    from rayproc.labdct.denoise import dl_spot_labels
    from rayproc.pipelines.labdct.denoise import denoise_labdct

    folder, frames, _ = stack_folder
    net = _tiny_net()
    geometry = tmp_path / "geometry.json"
    geometry.write_text(json.dumps({"detector_pixels": [SIZE, SIZE], "rotation_deg": {"start": 180, "step": -3},
                                    "beamstop_px": {"y": [26, 37], "z": [28, 39]}}))
    denoised = str(tmp_path / "den.zarr")
    denoise_labdct(str(folder), denoised, model=net, tile=64, overlap=0, workers=1, progress=False)
    out = str(tmp_path / "from-denoised.zarr")
    report = segment_labdct(denoised, out, threshold=0.5, progress=False)  # dl, without running the network
    ds, probability = storage.open_dataset(out), storage.open_dataset(denoised).denoised.values
    assert report.method == "dl" and "denoised" not in ds  # nothing recomputed, nothing copied
    assert ds.spot_label.dims == ("frame", "det_y", "det_z")
    named = str(tmp_path / "named.zarr")
    segment_labdct(denoised, named, threshold=0.5, geometry=str(geometry), progress=False)
    assert storage.open_dataset(named).omega.values.tolist() == [180.0 - 3 * i for i in range(FRAMES)]
    never = ds.hot_pixel.values.astype(bool)
    expected = dl_spot_labels(np.where(never, 0, probability), threshold=0.5)
    np.testing.assert_array_equal(ds.spot_label.values, number_per_frame(expected))
    with pytest.raises(Exception, match="raw frames"):
        segment_labdct(denoised, str(tmp_path / "x.zarr"), method="standard", progress=False)
    # the network on raw frames, in one command: its hot pixels include the raw frames' and the
    # network's persistent calls; with the masks off, the labels equal the chained run's
    direct = str(tmp_path / "direct.zarr")
    segment_labdct(str(folder), direct, method="dl", model=net, threshold=0.5, progress=False,
                   frames_per_task=2, workers=2)
    hot = storage.open_dataset(direct).hot_pixel.values.astype(bool)
    assert all(hot[y, x] for y, x in HOT)
    plain = [str(tmp_path / name) for name in ("p1.zarr", "p2.zarr")]
    segment_labdct(str(folder), plain[0], method="dl", model=net, hot_pixels=False, detect_beamstop=False,
                   progress=False)
    segment_labdct(denoised, plain[1], hot_pixels=False, progress=False)
    first, second = (storage.open_dataset(p) for p in plain)
    np.testing.assert_array_equal(first.spot_label.values, second.spot_label.values)
    np.testing.assert_array_equal(first.spot_area_px.values, second.spot_area_px.values)

    # one 2D frame, named by omega from the geometry's rotation
    np.save(tmp_path / "one.npy", frames[3])
    single = str(tmp_path / "single.zarr")
    segment_labdct(str(tmp_path / "one.npy"), single, method="dl", model=net, geometry=str(geometry), progress=False)
    ds = xr.open_zarr(single)
    assert ds.spot_label.dims == ("omega", "det_y", "det_z") and ds.omega.values.tolist() == [180.0]
    assert ds.omega.attrs["units"] == "deg" and ds.beamstop.attrs["source"] == "geometry"
    with pytest.raises(Exception, match=">= 3 frames"):
        segment_labdct(str(tmp_path / "one.npy"), str(tmp_path / "y.zarr"), method="standard", progress=False)


def test_segment_resumes_and_needs_a_method_for_raw_frames(ray_local, stack_folder, tmp_path):
    from rayproc.errors import InputError
    from rayproc.storage.dataset import PROGRESS_DIR

    folder, _, _ = stack_folder
    out = tmp_path / "res.zarr"
    with pytest.raises(InputError, match="choose a method"):
        segment_labdct(str(folder), str(out), progress=False)
    assert not out.exists()
    segment_labdct(str(folder), str(out), method="standard", frames_per_task=3, progress=False)
    first = storage.open_dataset(str(out)).spot_label.values
    # a run killed after two slabs: the store is incomplete, one slab marker and the table missing
    attrs = json.loads((out / "zarr.json").read_text())
    attrs["attributes"]["rayproc_status"] = "incomplete"
    (out / "zarr.json").write_text(json.dumps(attrs))
    (out / PROGRESS_DIR / "frames-000003").unlink()
    report = segment_labdct(str(folder), str(out), method="standard", frames_per_task=3, progress=False)
    assert report.status == "resumed"
    np.testing.assert_array_equal(storage.open_dataset(str(out)).spot_label.values, first)
    again = segment_labdct(str(folder), str(out), method="standard", frames_per_task=3, progress=False)
    assert again.status == "complete" and again.spots == report.spots


def test_standard_defaults_on_the_real_frames_stay_off_the_beam_stop(ray_local, shared_data, tmp_path):
    frames = shared_data / "labdct-fe-farfield"
    folder = tmp_path / "real"
    folder.mkdir()
    for index in range(1, 8):
        (folder / f"Export{index:04d}.tiff").symlink_to(frames / f"Export{index:04d}.tiff")
    out = str(tmp_path / "real.zarr")
    segment_labdct(str(folder), out, method="standard", geometry=str(frames / "geometry.json"), workers=2,
                   progress=False)
    ds = storage.open_dataset(out)
    assert ds.omega.values.tolist() == [180.0 - 3 * i for i in range(7)]
    labels, beamstop = ds.spot_label.values, ds.beamstop.values.astype(bool)
    assert beamstop.sum() == 191 * 191 and not (labels[:, beamstop] > 0).any()
    per_frame = np.bincount(ds.spot_frame.values) if ds.sizes["spot"] else np.zeros(7)
    # the 78,184 spots of the old defaults on 4 frames were ~20 % of all pixels; now a few hundred per frame
    assert 150 < per_frame.mean() < 1500 and (labels > 0).mean() < 0.02
    assert 100 <= ds.hot_pixel.values.sum() <= 1000  # isolated defects, the same in most frames


def test_show_draws_a_frame_and_never_overwrites(ray_local, stack_folder, tmp_path, cli_error):
    from rayproc.cli import main

    folder, _, _ = stack_folder
    out = str(tmp_path / "seg.zarr")
    segment_labdct(str(folder), out, method="standard", progress=False)
    figure = tmp_path / "frame.png"
    assert main(["labdct", "show", out, str(figure), "--frame", "4", "--frames", str(folder), "--zoom", "20,20,16"]) == 0
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    before = figure.read_bytes()
    assert "exists" in cli_error(["labdct", "show", out, str(figure)])
    assert figure.read_bytes() == before
    assert "outside the stack" in cli_error(["labdct", "show", out, str(tmp_path / "x.png"), "--frame", "99"])
    assert "ROW,COL,HALF" in cli_error(["labdct", "show", out, str(tmp_path / "x.png"), "--zoom", "1,2"])
