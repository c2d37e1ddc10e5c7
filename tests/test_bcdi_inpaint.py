"""BCDI gap inpainting: the portion predictor, the stitcher, and the distributed pipeline."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from rayproc import storage
from rayproc.bcdi.gaps import gaps_to_mask
from rayproc.bcdi.inpaint import DEFAULT_BLEND, inpaint_volume, plan_windows, predict_portions
from rayproc.errors import InputError
from rayproc.models.artifact import save_model
from rayproc.bcdi.network import BcdiNetConfig
from rayproc.bcdi.diffraction import simulate_bcdi_sample
from rayproc.pipelines.bcdi.inpaint import inpaint_bcdi
from rayproc.stitching import importance_map
from tests.conftest import tiny_gapnet
from tests.interrupt import interrupt_cli_run

SIZE = 48
CROSS = ["x:21:6", "y:20:6"]
CONFIG = BcdiNetConfig(arch="gapnet", base_channels=4, depth=2)


# Actors run torch on one thread; so does the single-process reference (bit-identical).
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


@pytest.fixture(scope="module")
def net():
    """A tiny gapnet whose output depends on its input (random head, unlike a fresh network)."""
    model, config = tiny_gapnet(jitter=0.05)
    assert config == CONFIG
    return model.eval()


@pytest.fixture(scope="module")
def volume():
    return simulate_bcdi_sample(SIZE, 0, 2)[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory, net, volume):
    root = tmp_path_factory.mktemp("inpaint")
    np.save(root / "volume.npy", volume)
    save_model(root / "model", net, CONFIG, patch_size=32)
    return root


@pytest.fixture(scope="module")
def reference(net, volume):
    """Single-process result for the cross at stride 8 (many overlapping portions)."""
    mask = gaps_to_mask(CROSS, volume.shape)
    return mask, *inpaint_volume(volume, mask, net, stride=8)


# ---------------------------------------------------------------- pure core


def test_predictor_is_batch_invariant_and_keeps_the_count_scale(net, volume):
    mask = gaps_to_mask(["x:14:4"], (32, 32, 32))
    portions = np.stack([volume[:32, :32, :32], volume[8:40, 8:40, 8:40], 3 * volume[16:, 16:, 16:]])
    masks = np.broadcast_to(mask, portions.shape)
    together = predict_portions(net, portions, masks, batch_size=4)
    alone = np.concatenate([predict_portions(net, p[None], m[None], batch_size=4) for p, m in zip(portions, masks)])
    assert together.dtype == np.float32 and np.array_equal(together, alone)
    # gapnet passes measured voxels through: they come back on the count scale of each portion
    np.testing.assert_allclose(together[:, ~mask], portions[:, ~mask], rtol=1e-4, atol=1e-3)
    # in the gap, predictions stay within each portion's measured log range
    for p, predicted in zip(portions, together):
        assert p[~mask].min() - 1e-3 <= predicted[mask].min() and predicted[mask].max() <= p[~mask].max() * 1.0001


def test_stitching_equals_a_brute_force_blend(net, volume):
    mask = gaps_to_mask(CROSS, volume.shape)
    mask[5, 5, 40] = mask[30, 10, 7] = True  # dead pixels far from the cross
    origins = plan_windows(mask, stride=8)
    windows = [tuple(slice(o, o + 32) for o in origin) for origin in origins]
    values = predict_portions(net, np.stack([volume[w] for w in windows]), np.stack([mask[w] for w in windows]))
    for blend in ("mean", "gaussian"):
        intensity, uncertainty = inpaint_volume(volume, mask, net, stride=8, blend=blend)
        weights = importance_map((32,) * 3, blend).astype(np.float64)
        total, weight_sum, square = (np.zeros(volume.shape) for _ in range(3))
        for window, value in zip(windows, values.astype(np.float64)):
            total[window] += weights * value
            square[window] += weights * value**2
            weight_sum[window] += weights
        assert (weight_sum[mask] > 0).all()  # every missing voxel is covered
        mean = total[mask] / weight_sum[mask]
        spread = np.sqrt(np.maximum(square[mask] / weight_sum[mask] - mean**2, 0))
        np.testing.assert_allclose(intensity[mask], mean, rtol=2e-6)
        np.testing.assert_allclose(uncertainty[mask], spread, rtol=1e-3, atol=1e-3 * mean.max())
        assert np.array_equal(intensity[~mask], volume[~mask]) and (uncertainty[~mask] == 0).all()
        assert (intensity[mask] >= 0).all() and uncertainty[mask].max() > 0


def test_arbitrary_mask_with_nan_in_the_gap(net, volume):
    rng = np.random.default_rng(1)
    mask = gaps_to_mask(["z:30:3"], volume.shape) | (rng.random(volume.shape) < 0.002)
    gapped = np.where(mask, np.nan, volume).astype(np.float32)  # gap values are never read
    intensity, uncertainty = inpaint_volume(gapped, mask, net, stride=16)
    assert np.isfinite(intensity).all() and np.array_equal(intensity[~mask], volume[~mask])
    np.testing.assert_array_equal(intensity, inpaint_volume(volume, mask, net, stride=16)[0])


def test_core_rejects_bad_input(net, volume):
    mask = gaps_to_mask(CROSS, volume.shape)
    with pytest.raises(InputError, match="NaN/Inf value"):
        inpaint_volume(np.where(mask, 0, np.nan), mask, net)
    with pytest.raises(InputError, match="does not match"):
        inpaint_volume(volume, mask[:-1], net)
    with pytest.raises(InputError, match="too wide"):
        plan_windows(gaps_to_mask(["x:4:40"], volume.shape), stride=1)
    with pytest.raises(InputError, match="at least 32"):
        plan_windows(np.zeros((16, 48, 48), bool))


# ---------------------------------------------------------------- pipeline


def test_resolve_model_of_a_directory_a_network_and_the_shipped_default(files, net, tmp_path):
    import torch

    from rayproc.errors import RayprocError
    from rayproc.labdct.network import LabdctNetConfig, build_labdct_net
    from rayproc.models.artifact import DEFAULT_MODELS, default_model_dir, has_default_model, resolve_model

    network, resolved = resolve_model(str(files / "model"), "bcdi")
    assert not network.training and torch.equal(network.state_dict()["head.weight"], net.state_dict()["head.weight"])
    assert resolved.describe() == {"source": str(files / "model"), "sha256": resolved.info.sha256,
                                   "architecture": CONFIG.to_dict(), "patch_size": 32}
    same, given = resolve_model(net, "bcdi")  # used as given, hashed by its state (bcdi records the sha256)
    assert same is net and given.info is None and given.normalisation == {}
    assert given.describe() == {"source": type(net).__name__, "sha256": given.sha256, "architecture": CONFIG.to_dict(),
                                "patch_size": None} and len(given.sha256) == 64
    # labdct: the directory's normalisation scale; a network is described without a hash (as always)
    config = LabdctNetConfig(widths=(4, 8), blocks=(1, 1))
    save_model(tmp_path / "spots", build_labdct_net(config), config, family="labdct", normalisation={"scale": 30.0})
    _, spots = resolve_model(tmp_path / "spots", "labdct")
    assert spots.normalisation["scale"] == 30.0 and set(spots.describe()) == {"source", "sha256", "architecture"}
    assert set(resolve_model(build_labdct_net(config), "labdct")[1].describe()) == {"source", "architecture"}
    for family in ("bcdi", "labdct"):  # None: the model shipped for the family
        assert has_default_model(family)
        _, shipped = resolve_model(None, family)
        assert (shipped.family, shipped.source) == (family, str(default_model_dir(DEFAULT_MODELS[family])))
    with pytest.raises(RayprocError, match="is a 'labdct' model, not a BCDI one"):
        resolve_model(tmp_path / "spots", "bcdi")
    with pytest.raises(InputError, match="no model is shipped for the 'toy' family"):
        resolve_model(None, "toy")


def test_output_attrs_keep_the_input_provenance_apart():
    from rayproc.pipelines._stage import output_attrs

    attrs = output_attrs({"note": "n", "provenance": {"command": "c"}, "rayproc_status": "complete", "title": "in"},
                         "out")
    assert attrs == {"note": "n", "title": "out", "input_provenance": {"command": "c"}}


def open_out(url, options=None):
    return storage.open_dataset(storage.resolve(url, options))


def test_chunks_with_halo_on_actors_equal_the_single_process_run(ray_local, files, net, volume, reference):
    mask, intensity, uncertainty = reference
    url = str(files / "out.zarr")
    report = inpaint_bcdi(str(files / "volume.npy"), url, gaps=CROSS, model=net, stride=8, chunk=24, workers=2,
                          progress=False)
    assert (report.tasks, report.computed, report.windows) == (8, 8, len(plan_windows(mask, stride=8)))
    ds = open_out(url)
    assert ds.intensity.dims == ("z", "y", "x") and ds.intensity.encoding["chunks"] == (24, 24, 24)
    np.testing.assert_array_equal(ds.intensity.values, intensity)
    np.testing.assert_array_equal(ds.uncertainty.values, uncertainty)
    np.testing.assert_array_equal(ds.mask.values, mask)
    assert np.array_equal(ds.intensity.values[~mask], volume[~mask])  # measured voxels untouched
    params = ds.attrs["provenance"]["parameters"]
    assert params["gaps"] == CROSS and params["stride"] == 8 and params["blend"] == DEFAULT_BLEND
    assert len(params["model"]["sha256"]) == 64 and params["model"]["architecture"]["base_channels"] == 4
    again = inpaint_bcdi(str(files / "volume.npy"), url, gaps=CROSS, model=net, stride=8, chunk=24, progress=False)
    assert again.status == "complete" and again.computed == 0


def test_batch_store_with_per_sample_masks(ray_local, files, net, volume):
    stack = np.stack([volume[:, :40], 2 * volume[:, 8:]])  # two (48, 40, 48) volumes
    masks = np.zeros(stack.shape, bool)
    masks[0, :, 10:14] = True  # a plane gap in sample 0, dead pixels in sample 1
    masks[1][np.random.default_rng(2).random(masks.shape[1:]) < 0.001] = True
    ds = xr.Dataset({"intensity": (("sample", "z", "y", "x"), stack, {"units": "photons"}),
                     "mask": (("sample", "z", "y", "x"), masks)},
                    coords={"sample": ("sample", [10, 11]), "z": ("z", np.arange(48) * 0.01, {"units": "deg"})})
    src = str(files / "batch.zarr")
    storage.write_dataset(src, ds, chunks={"intensity": {"sample": 1}, "mask": {"sample": 1}})
    url = str(files / "batch-out.zarr")
    report = inpaint_bcdi(src, url, gaps=["x:30:4"], model=net, stride=16, chunk=24, workers=2, progress=False)
    assert report.samples == 2 and report.tasks == 2 * 2 * 2 * 2
    out = open_out(url)
    assert out.intensity.dims == ("sample", "z", "y", "x") and out.intensity.attrs["units"] == "photons"
    assert out.sample.values.tolist() == [10, 11] and out.z.attrs["units"] == "deg"
    for s in range(2):
        mask = masks[s] | gaps_to_mask(["x:30:4"], stack.shape[1:])
        expected, _ = inpaint_volume(stack[s], mask, net, stride=16)
        np.testing.assert_array_equal(out.intensity.values[s], expected)
        np.testing.assert_array_equal(out.mask.values[s], mask)


def test_s3_input_and_output(ray_local, s3_bucket, net, volume, reference):
    mask, intensity, _ = reference
    bucket, options = s3_bucket
    storage.write_dataset(storage.resolve(f"{bucket}/in.zarr", options),
                          xr.Dataset({"intensity": (("z", "y", "x"), volume), "mask": (("z", "y", "x"), mask)}))
    inpaint_bcdi(f"{bucket}/in.zarr", f"{bucket}/out.zarr", model=net, stride=8, chunk=24, workers=2,
                 storage_options=options, progress=False)
    np.testing.assert_array_equal(open_out(f"{bucket}/out.zarr", options).intensity.values, intensity)


def test_killed_actor_job_still_completes_identically(ray_local, files, net, reference):
    import ray

    _, intensity, uncertainty = reference

    def kill_first(actors):
        ray.get(actors[0].pid.remote())  # up, then killed (restartable)
        ray.kill(actors[0], no_restart=False)

    url = str(files / "killed.zarr")
    inpaint_bcdi(str(files / "volume.npy"), url, gaps=CROSS, model=net, stride=8, chunk=24, workers=2,
                 progress=False, on_start=kill_first)
    ds = open_out(url)
    np.testing.assert_array_equal(ds.intensity.values, intensity)
    np.testing.assert_array_equal(ds.uncertainty.values, uncertainty)


def test_interrupted_run_resumes_only_missing_chunks(ray_local, files, net, volume):
    url = str(files / "resume.zarr")
    args = [str(files / "volume.npy"), url, "--gap", CROSS[0], "--gap", CROSS[1], "--model", str(files / "model"),
            "--chunk", "16"]  # 27 chunks, default stride and blend
    interrupt_cli_run(["bcdi", "inpaint", *args, "--workers", "1", "--cpus", "1", "--no-progress"], url,
                      markers=4, env={"OMP_NUM_THREADS": "1"})  # the mask and 3 chunks
    done_before = {t for t in storage.done_tasks(url) if "chunk" in t}
    assert 0 < len(done_before) < 27, "the driver was frozen mid-run, so some tasks must be missing"
    assert not storage.is_complete(url)
    report = inpaint_bcdi(args[0], url, gaps=CROSS, model=str(files / "model"), chunk=16, workers=2,
                          progress=False, command="resume")
    assert report.status == "resumed" and report.computed == 27 - len(done_before)
    expected, _ = inpaint_volume(volume, gaps_to_mask(CROSS, volume.shape), net)
    np.testing.assert_array_equal(open_out(url).intensity.values, expected)


@pytest.mark.parametrize(
    "case, message",
    [
        ("nan", "NaN/Inf value"),
        ("negative", "negative counts"),
        ("mask-shape", "does not match"),
        ("gap-outside", "outside the volume"),
        ("2d", "must be 3D"),
        ("no-gap", "nothing to inpaint"),
        ("bad-blend", "Unsupported blend"),
    ],
)
def test_bad_input_one_line_error_and_no_output(files, volume, tmp_path, cli_error, case, message):
    src, extra = tmp_path / "in.npy", []
    bad = volume.copy()
    if case == "nan":
        bad[0, 0, 0] = np.nan  # outside the gap
    elif case == "negative":
        bad[1, 2, 3] = -5
    elif case == "2d":
        bad = volume[0]
    np.save(src, bad)
    gaps = [] if case == "no-gap" else ["--gap", "x:45:6" if case == "gap-outside" else CROSS[0]]
    if case == "mask-shape":
        np.save(tmp_path / "mask.npy", np.ones((SIZE, SIZE, 10), bool))
        extra = ["--mask", str(tmp_path / "mask.npy")]
    if case == "bad-blend":
        extra = ["--blend", "gauss"]
    out = tmp_path / "out.zarr"
    assert message in cli_error(["bcdi", "inpaint", src, out, *gaps, *extra, "--model", files / "model"])
    assert not out.exists()


# ---------------------------------------------------------------- real detector masks


def test_real_detector_mask_on_a_cropped_scan(ray_local, shared_data, files, net, volume, tmp_path):
    """A 2D detector mask (real Maxipix: 6 px cross and isolated dead pixels) applied to every
    frame of a scan cropped from the detector: the output mask is the crop of the detector mask
    along z, isolated pixels are filled like gap lines, measured voxels are untouched."""
    from rayproc.bcdi.gaps import frame_mask_volume

    detector = np.load(shared_data / "detector-masks" / "id01_maxipix_mask.npy")
    # the crop that puts the cross (rows/columns 255-260) through the middle of the volume
    offset = (258 - SIZE // 2, 258 - SIZE // 2)
    window = detector[offset[0]:offset[0] + SIZE, offset[1]:offset[1] + SIZE] != 0
    assert window[:, SIZE // 2].all() and window.sum() > 2 * 6 * SIZE - 36  # cross and some dead pixels
    url = str(tmp_path / "out.zarr")
    inpaint_bcdi(str(files / "volume.npy"), url, mask=str(shared_data / "detector-masks" / "id01_maxipix_mask.npy"),
                 mask_offset=offset, model=net, workers=2, stride=8, progress=False)
    out = storage.open_dataset(url)
    expected_mask = frame_mask_volume(detector, volume.shape, offset=offset)
    np.testing.assert_array_equal(out["mask"].values, expected_mask)
    np.testing.assert_array_equal(out["intensity"].values[~expected_mask], volume[~expected_mask])
    reference, _ = inpaint_volume(volume, expected_mask, net, stride=8)
    np.testing.assert_array_equal(out["intensity"].values, reference)  # = the single-process result
    cross = [f"{axis}:{255 - offset[0]}:6" for axis in "yx"]  # detector rows/columns 255-260
    assert (expected_mask >= gaps_to_mask(cross, volume.shape)).all()
    isolated = expected_mask & ~gaps_to_mask(cross, volume.shape)  # dead pixels off the cross
    assert isolated.any() and np.isfinite(out["intensity"].values[isolated]).all()


@pytest.mark.parametrize("offset, message", [(None, "--mask-offset ROW,COL"), ("500,0", "does not fit"),
                                             ("1;2", "must look like ROW,COL")])
def test_detector_mask_offsets_that_do_not_fit(files, tmp_path, cli_error, offset, message):
    np.save(tmp_path / "detector.npy", np.zeros((516, 516), np.uint8))
    extra = [] if offset is None else ["--mask-offset", offset]
    out = tmp_path / "out.zarr"
    assert message in cli_error(["bcdi", "inpaint", files / "volume.npy", out, "--mask", tmp_path / "detector.npy",
                                 *extra, "--model", files / "model"])
    assert not out.exists()
