"""LabDCT denoising: tiling and normalisation, spot labels, training (in process and on Ray
Train), and the distributed denoising pipeline against the single-process result."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from rayproc.cli import main as cli_main
from rayproc.errors import InputError
from rayproc.labdct.denoise import (
    denoise_frames, dl_spot_labels, normalise_frames, plan_tiles, predict_tiles,
)
from rayproc.models.artifact import load_model, save_model
from rayproc.labdct.network import LabdctNetConfig, build_labdct_net
from rayproc.pipelines._stage import slab_task_name as task_name
from rayproc.pipelines.labdct.denoise import denoise_labdct
from rayproc.labdct.tiles import TileDataset, training_pair
from rayproc.pipelines.labdct.train import FrameReader, list_frame_sets, train_labdct
from rayproc.runtime.training import read_history
from rayproc.stitching import grid_windows, window_coverage
from rayproc.storage import open_dataset, resolve, write_dataset
from rayproc.storage.cache import ArrayCache
from tests.conftest import jitter_weights
from tests.failing import run_training_failing_once

TINY = LabdctNetConfig(widths=(4, 8, 8, 16), blocks=(1, 1, 1, 1))
REPO = Path(__file__).resolve().parents[1]


# Actors run torch on one thread; so does the single-process reference (bit-identical).
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def _frames(count: int, shape, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Poisson frames of Gaussian spots on a smooth background, and the spot masks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = np.zeros((count, *shape))
    for frame in clean:
        for cy, cx, amplitude in zip(rng.uniform(0, shape[0], 12), rng.uniform(0, shape[1], 12),
                                     rng.uniform(100, 400, 12)):
            frame += amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
    background = 100 * (1 - 0.3 * ((yy / shape[0] - 0.5) ** 2 + (xx / shape[1] - 0.5) ** 2))
    noisy = rng.poisson(clean + background).astype(np.float32)
    return noisy, clean > 40


@pytest.fixture(scope="module")
def synth_store(tmp_path_factory) -> str:
    """Ten 64 x 96 frames with input and target, as `rayproc labdct synth` lays them out."""
    noisy, spots = _frames(10, (64, 96), 0)
    url = str(tmp_path_factory.mktemp("synth") / "synth.zarr")
    dims = ("omega", "det_y", "det_z")
    write_dataset(url, xr.Dataset({"input": (dims, noisy), "target": (dims, np.where(spots, 255, 0).astype(np.uint8))}),
                  chunks={"input": {"omega": 1}, "target": {"omega": 1}})
    return url


@pytest.fixture(scope="module")
def net():
    """A tiny network whose output depends on its input (weights jittered away from the init)."""
    torch.manual_seed(0)
    return jitter_weights(build_labdct_net(TINY).eval(), 0.05)


class _Identity(torch.nn.Module):
    """Returns its (normalised) input: blending must reproduce the frame exactly."""

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        return x + self.anchor


# ---------------------------------------------------------------- pure core


def test_normalisation_is_per_frame_and_gain_free():
    frames = np.full((2, 8, 8), 50.0, np.float32)
    frames[0, 0, 0], frames[1] = 50.0 * 100, 7.0  # a spot 100x the background; another gain
    y = normalise_frames(frames, scale=100.0)
    assert y[0, 0, 0] == pytest.approx(1.0) and y[0, 4, 4] == pytest.approx(np.log(2) / np.log(101))
    np.testing.assert_allclose(y[1], y[0, 4, 4])  # the median maps to log(2)/log1p(scale), whatever the gain
    np.testing.assert_allclose(normalise_frames(13 * frames, scale=100.0), y, rtol=1e-6)
    assert normalise_frames(np.where(frames > 60, -5, frames), scale=100.0)[0, 0, 0] == 0  # negatives count as 0


@pytest.mark.parametrize("shape", [(64, 96), (100, 300), (40, 33), (256, 300)])
def test_tiles_cover_every_pixel(shape):
    patch, padded, stride = plan_tiles(shape, tile=64, overlap=16)
    assert all(p % 32 == 0 and p <= 64 for p in patch) and all(q >= n for q, n in zip(padded, shape))
    coverage = window_coverage(padded, grid_windows(padded, patch, stride), patch)
    assert coverage[: shape[0], : shape[1]].min() >= 1
    frames = np.random.default_rng(1).poisson(80.0, (2, *shape)).astype(np.float32)
    out = denoise_frames(frames, _Identity(), tile=64, overlap=16, scale=100.0)
    # equal overlapping predictions blend to themselves: the identity network gives the normalised frames
    np.testing.assert_array_equal(out, np.clip(normalise_frames(frames, scale=100.0), 0, 1))


def test_frames_are_independent_and_batches_do_not_matter(net):
    frames, _ = _frames(5, (64, 96), 2)
    whole = denoise_frames(frames, net, tile=64, overlap=16, batch_size=4)
    assert whole.dtype == np.float32 and whole.shape == frames.shape and 0 <= whole.min() and whole.max() <= 1
    np.testing.assert_array_equal(denoise_frames(frames[2:4], net, tile=64, overlap=16, batch_size=4), whole[2:4])
    tiles = normalise_frames(frames)[:, None, :64, :64]
    np.testing.assert_array_equal(predict_tiles(net, tiles, batch_size=4)[3], predict_tiles(net, tiles[3:4], batch_size=4)[0])


def test_dl_spot_labels_threshold_and_size():
    p = np.zeros((2, 16, 16), np.float32)
    p[0, 2:5, 2:5] = 0.9  # 9 px spot
    p[0, 10, 10:12] = 0.8  # 2 px spot
    p[1, 6:9, 6:9] = 0.4  # below threshold
    labels = dl_spot_labels(p, threshold=0.5, min_size=4)
    assert labels.dtype == np.int32 and labels.max() == 1 and (labels > 0).sum() == 9
    assert dl_spot_labels(p, threshold=0.3, min_size=2).max() == 3


@pytest.mark.parametrize("frames, message", [
    (np.ones((16, 16)), "must be a stack (N, H, W); got shape (16, 16)"),
    (np.where(np.eye(16)[None] > 0, np.nan, 1.0), "hold 16 NaN/Inf value(s)"),
    (np.zeros((1, 16, 16)), "frame 0 has a median of 0 counts"),
])
def test_bad_frames_are_one_line_errors(net, frames, message):
    with pytest.raises(InputError) as error:
        denoise_frames(frames, net, tile=64)
    assert message in str(error.value) and "\n" not in str(error.value)


# ---------------------------------------------------------------- training


def test_tiles_are_pure_functions_of_the_seed(synth_store):
    import pickle

    train, val = list_frame_sets([synth_store])
    assert [s.frames for s in val] == [(5,)] and len(train[0].frames) == 9
    one = TileDataset(train, 8, tile=32, read=FrameReader(100.0), seed=3)
    other = TileDataset(train, 8, tile=32, read=FrameReader(100.0, cache=ArrayCache(max_bytes=1)), seed=3)
    for index in (0, 5, 8 + 5):  # item 5 of epochs 0 and 1
        a, b = one[index], other[index]
        assert torch.equal(a["input"], b["input"]) and torch.equal(a["target"], b["target"])
        assert a["input"].shape == (1, 32, 32) and set(a["target"].unique().tolist()) <= {0.0, 1.0}
    assert not torch.equal(one[5]["input"], one[8 + 5]["input"])  # fresh draws every epoch
    assert len(other.read.cache) == 1 and len(one.read.cache) > 1
    assert len(pickle.loads(pickle.dumps(one.read)).cache) == 0  # every loader process fills its own cache


def test_tile_dataset_reads_through_any_reader():
    """The seeding: item i of epoch e draws frame, origin and symmetry from default_rng([seed, stream, e, i])."""
    frames, spots = _frames(3, (40, 48), 1)
    pairs = {f: training_pair(frames[f], np.where(spots[f], 255, 0), 100.0) for f in range(3)}
    np.testing.assert_array_equal(pairs[0][0], normalise_frames(frames[:1], scale=100.0)[0])
    stack = type("Stack", (), {"frames": (0, 2), "shape": (40, 48), "__str__": lambda self: "stack"})()
    asked = []

    def read(source, frame):
        asked.append(frame)
        return pairs[frame]

    data = TileDataset([stack], 6, tile=16, read=read, seed=2, stream=1)
    for index in (3, 6 + 3):
        rng = np.random.default_rng([2, 1, index // 6, index % 6])
        frame = stack.frames[int(rng.integers(2))]
        y, x, turn = int(rng.integers(40 - 16 + 1)), int(rng.integers(48 - 16 + 1)), int(rng.integers(8))
        for key, image in zip(("input", "target"), pairs[frame]):
            expected = np.rot90(image[y:y + 16, x:x + 16], turn % 4)
            np.testing.assert_array_equal(data[index][key][0].numpy(), expected[:, ::-1] if turn >= 4 else expected)
    assert set(asked) <= {0, 2}
    with pytest.raises(InputError, match="stack has frames of shape \\(40, 48\\), smaller than a 64\\^2 tile"):
        TileDataset([stack], 6, tile=64, read=read)


def test_in_process_training_loss_falls_and_resumes(synth_store, tmp_path):
    out = tmp_path / "model"
    options = dict(workers=0, widths=TINY.widths, blocks=TINY.blocks, tile=32, tiles_per_epoch=64, val_tiles=16,
                   batch_size=8, lr=3e-3, scale=50.0, progress=False)
    train_labdct([synth_store], str(out), epochs=8, **options)
    rows = read_history(out)
    assert [r["epoch"] for r in rows] == list(range(8))
    first, last = rows[0], rows[-1]
    assert last["train_loss"] < 0.8 * first["train_loss"] and last["val_loss"] < first["val_loss"]
    assert last["val_iou"] > first["val_iou"] + 0.2 and last["val_f1"] > 0.4  # spots of held-out frames found
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model, info = load_model(out)
    assert info.family == "labdct" and info.patch_size == 32 and info.normalisation["scale"] == 50.0
    assert info.architecture["widths"] == list(TINY.widths) and isinstance(model, torch.nn.Module)
    again = train_labdct([synth_store], str(out), epochs=9, **options)
    assert again.resumed and read_history(out)[:8] == rows and read_history(out)[8]["start_epoch"] == 8


def test_in_process_run_that_failed_resumes_from_its_checkpoint(synth_store, tmp_path, monkeypatch):
    import rayproc.pipelines.labdct.train as labdct_train

    out = tmp_path / "model"
    options = dict(workers=0, widths=TINY.widths, blocks=TINY.blocks, tile=32, tiles_per_epoch=16, val_tiles=8,
                   batch_size=8, progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(labdct_train, "run_training", run_training_failing_once(after_epoch=0, pause=0.0))
        with pytest.raises(RuntimeError, match="injected failure after epoch 0"):
            train_labdct([synth_store], str(out), epochs=2, **options)
    assert [r["epoch"] for r in read_history(out)] == [0]
    report = train_labdct([synth_store], str(out), epochs=2, **options)
    assert report.resumed and [r["start_epoch"] for r in read_history(out)] == [0, 1]


def test_ray_train_two_workers_one_epoch_with_checkpoint(ray_local, synth_store, tmp_path):
    out, storage = tmp_path / "model", tmp_path / "runs"
    report = train_labdct([synth_store], str(out), workers=2, epochs=1, storage=str(storage), widths=TINY.widths,
                          blocks=TINY.blocks, tile=32, tiles_per_epoch=32, val_tiles=8, batch_size=8, progress=False)
    assert [r["workers"] for r in read_history(out)] == [2] and report.checkpoints.startswith(str(storage))
    checkpoints = [p for p in Path(report.checkpoints).iterdir() if p.name.startswith("checkpoint_") and p.is_dir()]
    assert len(checkpoints) == 1 and (checkpoints[0] / "state.pt").is_file()
    assert load_model(out)[1].metrics["epochs"] == 1


# ---------------------------------------------------------------- distributed denoising


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, net) -> Path:
    path = tmp_path_factory.mktemp("model") / "model"
    save_model(path, net, TINY, family="labdct", normalisation={"scale": 30.0}, patch_size=32)
    return path


def test_denoise_on_actors_equals_single_process_and_resumes(ray_local, net, model_dir, tmp_path):
    frames, _ = _frames(7, (64, 96), 5)
    dims = ("omega", "det_y", "det_z")
    source = str(tmp_path / "frames.zarr")
    write_dataset(source, xr.Dataset({"projection": (dims, frames)}, coords={"omega": ("omega", np.arange(7) * 3.0)}))
    expected = denoise_frames(frames, net, scale=30.0, tile=64, overlap=16)  # the model directory's scale
    options = dict(model=str(model_dir), tile=64, overlap=16, frames_per_task=2, progress=False)
    out = str(tmp_path / "denoised.zarr")
    report = denoise_labdct(source, out, workers=2, **options)
    assert (report.frames, report.tasks, report.computed) == (7, 4, 4)
    ds = open_dataset(out)
    np.testing.assert_array_equal(ds.denoised.values, expected)
    assert ds.denoised.dims == dims and ds.omega.values.tolist() == (np.arange(7) * 3.0).tolist()
    assert ds.attrs["provenance"]["parameters"]["scale"] == 30.0

    import zarr

    (Path(out) / "_progress" / task_name(2)).unlink()  # as if the run had died before this slab
    zarr.open_group(out, mode="r+").attrs["rayproc_status"] = "incomplete"
    again = denoise_labdct(source, out, workers=1, **options)
    assert (again.status, again.computed) == ("resumed", 1)
    np.testing.assert_array_equal(open_dataset(out).denoised.values, expected)


def test_denoise_reads_and_writes_s3(ray_local, net, model_dir, s3_bucket):
    bucket, options = s3_bucket
    frames, _ = _frames(3, (64, 64), 7)
    write_dataset(resolve(f"{bucket}/in.zarr", options), xr.Dataset({"intensity": (("z", "y", "x"), frames)}))
    report = denoise_labdct(f"{bucket}/in.zarr", f"{bucket}/out.zarr", model=str(model_dir), tile=64, workers=1,
                            storage_options=options, progress=False)
    assert report.url == f"{bucket}/out.zarr"
    ds = open_dataset(resolve(report.url, options))
    assert ds.denoised.dims == ("z", "y", "x")
    np.testing.assert_array_equal(ds.denoised.values, denoise_frames(frames, net, scale=30.0, tile=64))


def test_denoise_command_on_a_tiff_folder_and_bad_input(ray_local, net, model_dir, tmp_path, cli_error):
    import tifffile

    frames, _ = _frames(3, (64, 64), 6)
    folder = tmp_path / "tiffs"
    folder.mkdir()
    for index, frame in enumerate(frames):
        tifffile.imwrite(folder / f"frame{index:03d}.tif", frame.astype(np.uint16))
    out = tmp_path / "out.zarr"
    args = ["labdct", "denoise", str(folder), str(out), "--model", str(model_dir), "--tile", "64", "--workers", "1",
            "--no-progress"]
    assert cli_main(args) == 0
    expected = denoise_frames(frames.astype(np.uint16), net, scale=30.0, tile=64)
    np.testing.assert_array_equal(open_dataset(out).denoised.values, expected)

    np.save(tmp_path / "stacks.npy", frames[None])  # 4D: not a stack of frames (one 2D frame would be)
    assert "(frame, det_y, det_z)" in cli_error(["labdct", "denoise", tmp_path / "stacks.npy", tmp_path / "x.zarr",
                                                 "--model", model_dir, "--no-progress"])
    assert not (tmp_path / "x.zarr").exists()


def test_job_entrypoint_runs_the_denoise_command():
    result = subprocess.run([sys.executable, str(REPO / "jobs" / "denoise.py"), "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0 and "Denoise frames with the spot network" in result.stdout


def test_model_directories_in_object_storage(ray_local, synth_store, s3_bucket, tmp_path):
    """train --out s3://... stages locally, keeps checkpoints in S3 and uploads; --model s3://... reads it."""
    import s3fs

    from rayproc.storage.model_dirs import local_model_dir

    bucket, options = s3_bucket
    out = f"{bucket}/models/tiny"
    settings = dict(workers=0, widths=TINY.widths, blocks=TINY.blocks, tile=32, tiles_per_epoch=16, val_tiles=8,
                    batch_size=8, scale=50.0, progress=False, storage_options=options)
    report = train_labdct([synth_store], out, epochs=1, **settings)
    assert report.out == out and report.checkpoints.startswith(f"{out}/checkpoints")
    fs = s3fs.S3FileSystem(endpoint_url=options["endpoint_url"])
    held = {p.rsplit("/", 1)[-1] for p in fs.ls(out.removeprefix("s3://"))}
    assert {"model.safetensors", "config.json", "metrics.jsonl", "checkpoints"} <= held
    again = train_labdct([synth_store], out, epochs=2, **settings)  # resumes from the S3 checkpoints
    assert again.resumed and again.epochs == 2
    frames = str(tmp_path / "frames.npy")
    np.save(frames, _frames(2, (64, 96), 3)[0])
    den = str(tmp_path / "den.zarr")
    denoise_labdct(frames, den, model=out, tile=64, overlap=16, progress=False, storage_options=options)
    local = local_model_dir(out, options)  # a verified local copy of the S3 model directory
    assert open_dataset(den).attrs["provenance"]["parameters"]["model"]["sha256"] == load_model(local)[1].sha256
    fs.pipe_file(f"{bucket.removeprefix('s3://')}/other/notes.txt", b"mine")
    with pytest.raises(InputError, match="did not write"):
        train_labdct([synth_store], f"{bucket}/other", epochs=1, **settings)
    assert fs.cat_file(f"{bucket.removeprefix('s3://')}/other/notes.txt") == b"mine"
