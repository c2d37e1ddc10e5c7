"""Adapting a BCDI model to its target: sampling beside the target's gaps, held-out selection that
keeps the base model unless an epoch beats it, ``bcdi inpaint --adapt`` (resumable), ``bcdi
finetune`` on any input ``bcdi inpaint`` reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import torch

from rayproc.bcdi.diffraction import simulate_bcdi_sample
from rayproc.bcdi.gaps import gaps_to_mask
from rayproc.bcdi.inpaint import plan_windows
from rayproc.bcdi.portion_dataset import PortionDataset
from rayproc.bcdi.portions import crop, gap_templates, target_lattice, template_width
from rayproc.cli import main as cli_main
from rayproc.errors import InputError
from rayproc.models.artifact import load_model, read_model_info, save_model
from rayproc.pipelines.bcdi.inpaint import ADAPTED_SUFFIX, inpaint_bcdi
from rayproc.runtime.training import read_history
from rayproc.storage import open_dataset, resolve
from tests.conftest import tiny_gapnet
from tests.failing import run_training_failing_once

SIZE, PATCH = 48, 16
CROSS = ["x:22:3", "y:20:3"]
LINE = ["x:30:3"]
# A short adaptation of the tiny model: 2 epochs of 32 portions (16 of them rehearsed on simulations).
ADAPT = dict(adapt=True, adapt_epochs=2, adapt_portions=32, workers=0, progress=False)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py: bit-identical references


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A simulated 48^3 target (.npy and a TIFF stack) and a tiny base model with 16^3 portions."""
    root = tmp_path_factory.mktemp("adapt")
    volume = simulate_bcdi_sample(SIZE, 0, 3)[0]
    np.save(root / "volume.npy", volume)
    tifffile.imwrite(root / "volume.tif", volume)
    model, config = tiny_gapnet(seed=1, jitter=0.05)
    save_model(root / "base", model, config, gap_widths=(3, 6), patch_size=PATCH, provenance={"stage": "trained"})
    return root


def _intensity(url) -> np.ndarray:
    return open_dataset(resolve(str(url)))["intensity"].values


# ---------------------------------------------------------------- pure core: where, and which gaps


def test_portions_beside_the_gaps_cut_by_the_targets_own_gaps():
    volume = simulate_bcdi_sample(SIZE, 0, 3)[0]
    mask = gaps_to_mask(CROSS, volume.shape)
    windows = plan_windows(mask, stride=8, patch=PATCH)

    templates, counts = gap_templates(mask, windows, size=PATCH)
    assert counts.sum() == len(windows) and len(templates) == len(counts) >= 2
    for template in templates:  # every missing voxel of a window is one of the target's own gap planes
        missing_x = np.all(template, axis=(0, 1))
        missing_y = np.all(template, axis=(0, 2))
        planes = np.broadcast_to(missing_x[None, None, :] | missing_y[None, :, None], template.shape)
        assert np.array_equal(template, planes)
        assert template_width(template) == 3
    kinds = {(bool(np.all(t, axis=(0, 1)).any()), bool(np.all(t, axis=(0, 2)).any())) for t in templates}
    assert kinds == {(True, False), (False, True), (True, True)}  # lines of both planes, and crosses

    lattice, weights = target_lattice(volume, mask, size=PATCH, windows=windows)
    touching = np.array([crop(mask, o, PATCH).any() for o in lattice])
    assert np.all(weights[touching] == 0) and np.any(weights > 0)
    plain, _ = target_lattice(volume, mask, size=PATCH)  # without windows: the brightest portions first
    assert plain.shape == lattice.shape

    common = dict(read=lambda ref: volume, size=PATCH, exclude=mask, near_gaps=True, holdout=0.25, windows=windows,
                  gap_templates=templates, template_weights=counts)
    train = PortionDataset([0], 64, stream=0, **common)
    held = PortionDataset([0], 32, stream=1, held_out=True, **common)
    origins = {}
    for name, dataset in (("train", train), ("held", held)):
        plans = [dataset.plan(i) for i in range(len(dataset))]
        assert all(not crop(mask, p.origin, PATCH).any() for p in plans)  # never a real gap voxel
        assert all(p.gap is None and 0 <= p.template < len(templates) for p in plans)
        origins[name] = {p.origin for p in plans}
        item = dataset[0]
        assert torch.equal(item["mask"][0] > 0.5, torch.from_numpy(templates[dataset.plan(0).template]))
        assert item["width"] == 3
    # validation is the same every epoch; training draws anew
    assert [held.plan(i) for i in range(4)] == [held.plan(i) for i in range(4)]
    assert train.plan(len(train)) != train.plan(0)
    assert len(origins["held"] & origins["train"]) < len(origins["held"]) // 4  # held-out positions


# ---------------------------------------------------------------- inpaint --adapt


def test_harmful_learning_rate_keeps_the_base_model_bit_for_bit(files, tmp_path, capsys):
    """lr 10 wrecks the network: no epoch beats the base model on held-out portions, so it is kept
    and the output equals plain inpainting bit for bit; the store says what happened."""
    plain = inpaint_bcdi(str(files / "volume.npy"), str(tmp_path / "plain.zarr"), gaps=CROSS,
                         model=str(files / "base"), workers=0, progress=False)
    assert plain.status == "created" and plain.adaptation is None
    out = tmp_path / "adapted.zarr"
    report = inpaint_bcdi(str(files / "volume.npy"), str(out), gaps=CROSS, model=str(files / "base"),
                          adapt_lr=10.0, **ADAPT)
    np.testing.assert_array_equal(_intensity(out), _intensity(tmp_path / "plain.zarr"))

    adaptation = open_dataset(resolve(str(out))).attrs["adaptation"]
    assert adaptation == json.loads(json.dumps(report.adaptation))
    base_sha = read_model_info(files / "base").sha256
    assert adaptation["base_model"]["sha256"] == base_sha and adaptation["model_sha256"] == base_sha
    assert adaptation["kept"] == "base model" and not adaptation["adapted"] and adaptation["best_epoch"] == 0
    assert adaptation["epochs"] == 2 and adaptation["lr"] == 10.0 and adaptation["heldout_portions"] >= 16
    assert adaptation["heldout_pcc_after"] == adaptation["heldout_pcc_before"] is not None
    folder = adaptation["model_dir"]
    assert folder == str(out) + ADAPTED_SUFFIX  # beside the output store, never inside it
    rows = read_history(folder)
    assert [r["epoch"] for r in rows] == [0, 1]
    assert all(r["val_pcc_pooled"] is None or r["val_pcc_pooled"] <= adaptation["heldout_pcc_before"] for r in rows)
    info = read_model_info(folder)
    assert info.metrics["kept"] == "base model" and info.provenance["stage"] == "fine-tuned on target"

    # a sensible rate: the kept epoch is the best held-out one, never below the base model
    good = inpaint_bcdi(str(files / "volume.npy"), str(tmp_path / "good.zarr"), gaps=CROSS, model=str(files / "base"),
                        adapt_lr=3e-3, **ADAPT).adaptation
    assert good["heldout_pcc_after"] >= good["heldout_pcc_before"]
    scores = [good["heldout_pcc_before"]] + [r["val_pcc_pooled"] for r in read_history(good["model_dir"])]
    assert good["best_epoch"] == int(np.argmax(scores)) and good["heldout_pcc_after"] == max(scores)
    capsys.readouterr()


def test_adapt_resumes_after_an_interruption(files, tmp_path, monkeypatch):
    """A failure after the first adaptation epoch (as Ctrl-C would leave it): the rerun of the same
    call resumes from that epoch's checkpoint and ends exactly where an uninterrupted run ends."""
    import rayproc.pipelines.bcdi.train as bcdi_train

    args = (str(files / "volume.npy"),)
    options = dict(gaps=LINE, model=str(files / "base"), adapt_lr=3e-3, **ADAPT)
    out = tmp_path / "out.zarr"
    with monkeypatch.context() as patch:
        patch.setattr(bcdi_train, "run_training", run_training_failing_once(after_epoch=0, pause=0))
        with pytest.raises(RuntimeError, match="injected failure after epoch 0"):
            inpaint_bcdi(*args, str(out), **options)
    folder = str(out) + ADAPTED_SUFFIX
    assert not out.exists() and [r["epoch"] for r in read_history(folder)] == [0]

    report = inpaint_bcdi(*args, str(out), **options)
    rows = read_history(folder)
    assert [r["start_epoch"] for r in rows] == [0, 1]  # epoch 1 trained after resuming, epoch 0 not again
    reference = inpaint_bcdi(*args, str(tmp_path / "ref.zarr"), **options)
    assert report.adaptation["model_sha256"] == reference.adaptation["model_sha256"]
    np.testing.assert_array_equal(_intensity(out), _intensity(tmp_path / "ref.zarr"))

    # the finished run again: nothing trained, nothing computed
    again = inpaint_bcdi(*args, str(out), **options)
    assert again.status == "complete" and again.computed == 0 and read_history(folder) == rows


def test_adapt_bad_uses_are_refused_before_any_output(files, tmp_path, cli_error):
    volume = str(files / "volume.npy")
    base = ["--model", str(files / "base"), "--workers", "0", "--no-progress", "--adapt"]
    assert "--adapt-out" in cli_error(["bcdi", "inpaint", volume, "s3://bucket/out.zarr", "--gap", "x:30:3", *base])
    inside = tmp_path / "out.zarr" / "model"
    assert "lies inside" in cli_error(["bcdi", "inpaint", volume, tmp_path / "out.zarr", "--gap", "x:30:3", *base,
                                       "--adapt-out", inside])
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("keep")
    assert "not made by rayproc" in cli_error(["bcdi", "inpaint", volume, tmp_path / "out.zarr", "--gap", "x:30:3",
                                               *base, "--adapt-out", user])
    assert "--adapt-lr must be > 0" in cli_error(["bcdi", "inpaint", volume, tmp_path / "out.zarr", "--gap",
                                                  "x:30:3", *base, "--adapt-lr", "0"])
    assert not (tmp_path / "out.zarr").exists() and (user / "notes.txt").read_text() == "keep"


def test_cli_adapt_defaults_are_the_pipelines():
    from rayproc.cli import bcdi as cli_bcdi
    from rayproc.pipelines.bcdi import inpaint

    assert (cli_bcdi.ADAPT_EPOCHS, cli_bcdi.ADAPT_PORTIONS) == (inpaint.ADAPT_EPOCHS, inpaint.ADAPT_PORTIONS)


# ---------------------------------------------------------------- finetune: any input inpaint reads


def test_finetune_accepts_npy_tiff_and_a_store_with_its_own_mask(files, tmp_path, capsys):
    from rayproc.storage import write_dataset
    import xarray as xr

    common = ["--epochs", "1", "-k", "8", "--batch-size", "8", "--workers", "0", "--no-progress"]
    for name in ("volume.npy", "volume.tif"):
        out = tmp_path / name
        assert cli_main(["bcdi", "finetune", str(files / "base"), str(files / name), "--out", str(out),
                         "--gap", "x:30:3", *common]) == 0, capsys.readouterr().err
        info = read_model_info(out)
        assert info.provenance["parameters"]["volumes"][0]["url"] == str(files / name)
        assert info.metrics["base"]["epoch"] == -1 and "kept" in info.metrics
    assert "best epoch" in capsys.readouterr().out

    volume = np.load(files / "volume.npy")
    mask = gaps_to_mask(CROSS, volume.shape)
    store = tmp_path / "gapped.zarr"  # gaps recorded in the store itself (NaN there), as inpaint reads it
    write_dataset(str(store), xr.Dataset({"intensity": (("z", "y", "x"), np.where(mask, np.nan, volume)),
                                          "mask": (("z", "y", "x"), mask)}))
    from rayproc.pipelines.bcdi.train import TrainSpec, datasets_for, finetune_bcdi

    finetune_bcdi(str(files / "base"), str(store), str(tmp_path / "from-store"), epochs=1, portions_per_volume=8,
                  batch_size=8, workers=0, progress=False)
    spec = TrainSpec.from_dict(read_model_info(tmp_path / "from-store").provenance["parameters"])
    train, held = datasets_for(spec)
    for dataset in (train.first, held):
        assert all(not crop(mask, dataset.plan(i).origin, PATCH).any() for i in range(len(dataset)))
    with pytest.raises(InputError, match="needs the target's gaps"):
        finetune_bcdi(str(files / "base"), str(files / "volume.npy"), str(tmp_path / "none"), workers=0)
    assert load_model(tmp_path / "from-store")[1].gap_widths == (3, 6)  # the base model's


def test_ctrl_c_during_adaptation_then_rerun_resumes(files, tmp_path):
    """Ctrl-C (a real SIGINT to the CLI) once the first adaptation epoch is checkpointed: exit 130
    with one line; the same command again resumes the adaptation and finishes the output."""
    import glob
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "out.zarr"
    args = [sys.executable, "-m", "rayproc", "bcdi", "inpaint", str(files / "volume.npy"), str(out), "--gap", "x:30:3",
            "--model", str(files / "base"), "--workers", "0", "--adapt", "--adapt-epochs", "6",
            "--adapt-portions", "64", "--adapt-lr", "3e-3", "--no-progress"]
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    pattern = str(out) + ADAPTED_SUFFIX + "/checkpoints/*/checkpoint_000000"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (
            glob.glob(pattern) and read_history(str(out) + ADAPTED_SUFFIX)):
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err.strip().startswith("rayproc: interrupted") and len(err.splitlines()) == 1
    done = [r["epoch"] for r in read_history(str(out) + ADAPTED_SUFFIX)]
    assert 1 <= len(done) < 6 and not out.exists()

    rerun = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    rows = read_history(str(out) + ADAPTED_SUFFIX)
    assert [r["epoch"] for r in rows] == list(range(6)) and rows[len(done)]["start_epoch"] == len(done)
    assert "held-out in-gap PCC" in rerun.stdout and open_dataset(resolve(str(out))).attrs["adaptation"]["epochs"] == 6


@pytest.mark.slow
def test_adaptation_on_ray_train_keeps_the_base_model_too(ray_local, files, tmp_path):
    """The same selection inside Ray Train workers (one worker here), then actors inpaint."""
    plain = tmp_path / "plain.zarr"
    inpaint_bcdi(str(files / "volume.npy"), str(plain), gaps=CROSS, model=str(files / "base"), workers=1,
                 progress=False)
    here = tmp_path / "here.zarr"  # --workers 0: the same chunks in this process, bit for bit
    inpaint_bcdi(str(files / "volume.npy"), str(here), gaps=CROSS, model=str(files / "base"), workers=0,
                 progress=False)
    np.testing.assert_array_equal(_intensity(here), _intensity(plain))
    report = inpaint_bcdi(str(files / "volume.npy"), str(tmp_path / "adapted.zarr"), gaps=CROSS,
                          model=str(files / "base"), adapt_lr=10.0, **{**ADAPT, "workers": 1})
    assert report.adaptation["kept"] == "base model"
    assert [r["workers"] for r in read_history(report.adaptation["model_dir"])] == [1, 1]
    np.testing.assert_array_equal(_intensity(tmp_path / "adapted.zarr"), _intensity(plain))
