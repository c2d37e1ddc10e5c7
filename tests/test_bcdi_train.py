"""BCDI training: portion dataset, in-process and Ray Train runs, fine-tuning, model directories."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import xarray as xr

from rayproc.bcdi.gaps import gaps_to_mask
from rayproc.bcdi.portion_dataset import PortionDataset
from rayproc.pipelines.bcdi.portion_data import VolumeReader, list_volumes
from rayproc.runtime.epochs import EpochSampler, Precision, validate
from rayproc.runtime.training import read_history, run_name
from rayproc.cli import main as cli_main
from rayproc.errors import InputError, RayprocError
from rayproc.models.artifact import file_sha256, load_model, read_model_info, register_family, save_model
from rayproc.bcdi.network import count_parameters, flops_per_portion
from rayproc.pipelines.bcdi.train import (
    TrainSpec, datasets_for, finetune_bcdi, gap_pcc_scores, inpainting_step, train_bcdi,
)
from rayproc.storage import write_dataset
from rayproc.storage.cache import ArrayCache
from tests.conftest import tiny_gapnet
from tests.failing import run_training_failing_once

TINY = dict(base_channels=4, depth=2, patch_size=16, batch_size=8, lr=3e-3, progress=False)


def _diffraction_volume(size: int, rng) -> np.ndarray:
    """|FT of a box|^2 (sinc^2 fringes) at a random sub-pixel centre, with Poisson counts."""
    axis = np.arange(size) - size / 2
    grids = np.meshgrid(*(axis - c for c in rng.uniform(-2, 2, 3)), indexing="ij")
    widths = rng.uniform(2.5, 4.5, 3)
    pattern = np.prod([np.sinc(g / w) ** 2 for g, w in zip(grids, widths)], axis=0)
    return rng.poisson(1e4 * pattern + 0.5).astype(np.float32)


@pytest.fixture(scope="module")
def sim_store(tmp_path_factory) -> str:
    """Four 32^3 volumes, one per sample, as `rayproc bcdi simulate` lays them out."""
    rng = np.random.default_rng(0)
    url = str(tmp_path_factory.mktemp("data") / "sim.zarr")
    volumes = np.stack([_diffraction_volume(32, rng) for _ in range(4)])
    write_dataset(url, xr.Dataset({"intensity": (("sample", "z", "y", "x"), volumes)}),
                  chunks={"intensity": {"sample": 1}})
    return url


@pytest.fixture(scope="module")
def target_store(tmp_path_factory) -> str:
    """One 40^3 (z, y, x) volume, as `rayproc ingest` lays it out."""
    url = str(tmp_path_factory.mktemp("target") / "target.zarr")
    volume = _diffraction_volume(40, np.random.default_rng(1))
    write_dataset(url, xr.Dataset({"intensity": (("z", "y", "x"), volume)}))
    return url


_tiny_model = tiny_gapnet  # tests/conftest.py: (model, config) of the seeded tiny gapnet


def _items_by_index(dataset, indices) -> dict:
    return {int(i) % len(dataset): dataset[int(i)] for i in indices}


def _assert_same_items(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for i in a:
        for key in ("target", "mask"):
            torch.testing.assert_close(a[i][key], b[i][key], rtol=0, atol=0)
        assert (a[i]["lo"], a[i]["hi"], a[i]["width"]) == (b[i]["lo"], b[i]["hi"], b[i]["width"])


def test_portion_items_do_not_depend_on_order_or_workers(sim_store):
    volumes = list_volumes([sim_store])
    assert [v.sample for v in volumes] == [0, 1, 2, 3] and volumes[0].shape == (32, 32, 32)

    def dataset():
        return PortionDataset(volumes, 6, read=VolumeReader(), seed=3, size=16, gap_widths=(3, 6, 9, 12))

    forward = dataset()
    reference = _items_by_index(forward, range(len(forward)))
    assert forward.read.cache.misses == 4 and forward.read.cache.hits > 0  # each volume decompressed once
    _assert_same_items(reference, _items_by_index(dataset(), reversed(range(24))))

    # two data-parallel ranks together serve exactly the same items
    shards = [list(EpochSampler(forward, num_replicas=2, rank=r, shuffle=True, seed=5)) for r in (0, 1)]
    assert sorted(shards[0] + shards[1]) == list(range(24))
    _assert_same_items(reference, {**_items_by_index(dataset(), shards[1]), **_items_by_index(dataset(), shards[0])})

    # two loader processes (each with its own cache) too
    loader = torch.utils.data.DataLoader(dataset(), batch_size=5, num_workers=2, shuffle=True)
    served = {}
    for batch in loader:
        for b, index in enumerate(batch["index"].tolist()):
            served[index] = {k: v[b] for k, v in batch.items()}
    for item in served.values():
        item["lo"], item["hi"], item["width"] = float(item["lo"]), float(item["hi"]), int(item["width"])
    _assert_same_items(reference, served)

    # a later epoch draws other portions; items are normalised on their measured voxels
    later = forward.plan(len(forward) + 7)
    assert later != forward.plan(7)
    for item in reference.values():
        known = item["target"][item["mask"] == 0]
        assert float(known.min()) == pytest.approx(0.0, abs=1e-6) and float(known.max()) == pytest.approx(1.0, abs=1e-6)
        width, missing = item["width"], int(item["mask"].sum())
        assert missing in (width * 16**2, 2 * width * 16**2 - width**2 * 16)  # a line or a cross


def test_volume_cache_is_bounded_and_not_pickled(sim_store):
    import pickle

    volumes = list_volumes([sim_store])
    cache = ArrayCache(max_bytes=2 * 32**3 * 4)
    read = VolumeReader(cache=cache)
    for ref in volumes:
        volume = read(ref)
        assert volume.shape == (32, 32, 32) and volume.dtype == np.float32 and not volume.flags.writeable
    assert cache.nbytes == 2 * 32**3 * 4 and cache.misses == 4 and len(cache) == 2
    assert read(volumes[3]) is read(volumes[3]) and cache.hits == 2  # the newest two are kept
    read(volumes[0])
    assert cache.misses == 5 and (volumes[2].url, volumes[2].sample) not in cache  # least recently used dropped
    clone = pickle.loads(pickle.dumps(read))
    assert clone.cache.nbytes == 0 and len(clone.cache) == 0 and clone.cache.max_bytes == cache.max_bytes
    np.testing.assert_array_equal(clone(volumes[1]), read(volumes[1]))

    tiny = ArrayCache(max_bytes=1)  # the newest value is kept even alone over the bound
    assert tiny.get("a", lambda: np.zeros(4)).shape == (4,) and len(tiny) == 1
    tiny.get("b", lambda: (np.zeros(2), np.ones(3)))
    assert len(tiny) == 1 and "b" in tiny and tiny.nbytes == 5 * 8


def test_in_process_training_loss_falls_and_resumes(sim_store, tmp_path):
    out = tmp_path / "model"
    report = train_bcdi([sim_store], str(out), workers=0, epochs=3, portions_per_volume=32, **TINY)
    rows = read_history(out)
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows == json.loads(json.dumps(report.history))
    for r in rows:  # seeded, every epoch: w3 0.71, w6 0.63, w9 0.61, w12 0.48; overall 0.62
        pccs = [r[f"val_pcc_w{w}"] for w in (3, 6, 9, 12)]
        assert pccs[0] > pccs[-1] + 0.1 and min(pccs) > 0.3  # narrow gaps are the easier
        assert min(pccs) < r["val_pcc"] < max(pccs)  # the mean over all portions pools the widths
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"

    # the trained network beats the same network untrained (= linear interpolation, its prior)
    model, info = load_model(out)
    spec = TrainSpec.from_dict(info.provenance["parameters"])
    _, val_set = datasets_for(spec)
    loader = torch.utils.data.DataLoader(val_set, batch_size=8)
    untrained, _ = _tiny_model(seed=spec.seed)
    precision = Precision(torch.device("cpu"))
    scores = gap_pcc_scores(spec.gap_widths)
    before = validate(untrained, loader, precision, inpainting_step, scores)["val_loss"]
    after = validate(model, loader, precision, inpainting_step, scores)
    assert after["val_loss"] == pytest.approx(report.best["val_loss"], rel=1e-5)  # the exported epoch
    assert after["val_pcc_w6"] == pytest.approx(report.best["val_pcc_w6"], rel=1e-5)
    assert after["val_loss"] < before - 0.003  # seeded: 0.692 -> 0.687 in three tiny epochs
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert info.provenance["stage"] == "trained" and info.patch_size == 16 and info.gap_widths == (3, 6, 9, 12)
    assert info.metrics["best_epoch"] == min(rows, key=lambda r: r["val_loss"])["epoch"]

    # the same command with more epochs continues from the last checkpoint; a log that lost its
    # last line (stopped between checkpoint and log) is restored from the checkpoint's history
    log = out / "metrics.jsonl"
    log.write_text("".join(log.read_text().splitlines(keepends=True)[:2]))
    again = train_bcdi([sim_store], str(out), workers=0, epochs=4, portions_per_volume=32, **TINY)
    assert again.resumed and read_history(out)[:3] == rows and read_history(out)[3]["start_epoch"] == 3
    with pytest.raises(RayprocError, match="other parameters"):
        train_bcdi([sim_store], str(out), workers=0, epochs=4, portions_per_volume=16, **TINY)


def test_training_continues_from_a_model(sim_store, tmp_path, capsys):
    """--init-model: the run starts from that model's weights, with its architecture."""
    from rayproc.cli import main as cli_main

    first = tmp_path / "first"
    train_bcdi([sim_store], str(first), workers=0, epochs=1, portions_per_volume=8, **TINY)
    options = {k: v for k, v in TINY.items() if k not in ("base_channels", "depth")}
    report = train_bcdi([sim_store], str(tmp_path / "more"), workers=0, epochs=1, portions_per_volume=8,
                        init_model=str(first), arch="masto2024", **options)  # the init model's arch wins
    model, info = load_model(tmp_path / "more")
    assert info.architecture == load_model(first)[1].architecture
    assert info.provenance["parameters"]["init_model"] == str(first.resolve())
    assert report.history[0]["val_loss"] <= json.loads((first / "metrics.jsonl").read_text().splitlines()[0])[
        "val_loss"] + 0.05  # starts where the first run ended, not from scratch
    code = cli_main(["bcdi", "train", sim_store, "--out", str(tmp_path / "cli"), "--workers", "0", "--epochs", "1",
                     "-k", "4", "--batch-size", "8", "--patch-size", "16", "--init-model", str(first), "--no-progress"])
    assert code == 0 and load_model(tmp_path / "cli")[1].architecture == info.architecture
    capsys.readouterr()


def test_learning_rate_defaults_to_the_architecture(sim_store, tmp_path, monkeypatch):
    import rayproc.pipelines.bcdi.train as bcdi_train

    seen = []
    monkeypatch.setattr(bcdi_train, "_run", lambda spec, **_: seen.append((spec.arch["arch"], spec.lr)))
    for arch, lr in (("gapnet", None), ("masto2024", None), ("masto2024", 3e-4)):
        train_bcdi([sim_store], str(tmp_path / arch), arch=arch, lr=lr, workers=0, progress=False)
    assert seen == [("gapnet", 1e-3), ("masto2024", 1e-4), ("masto2024", 3e-4)]


def test_training_specs_check_themselves(sim_store, tmp_path, cli_error):
    volumes = tuple(v.to_dict() for v in list_volumes([sim_store]))
    spec = TrainSpec(volumes=volumes, out=str(tmp_path / "model"), patch_size=16, gap_widths=(3, 6))
    assert TrainSpec.from_dict(spec.to_dict()) == spec and spec.gap_widths == (3, 6)
    with pytest.raises(InputError) as error:
        TrainSpec.from_dict({**spec.to_dict(), "epochs": 0, "lr": 0.0, "gap_widths": [3, 16]})
    message = str(error.value)
    assert "\n" not in message and all(part in message for part in ("epochs", "learning rate", "gap widths (3, 16)"))
    with pytest.raises(InputError, match="no field.*fail_once_after_epoch"):  # unknown keys are not dropped
        TrainSpec.from_dict({**spec.to_dict(), "fail_once_after_epoch": 0})
    with pytest.raises(InputError, match="smaller than a 64\\^3 portion"):
        TrainSpec(volumes=volumes, out=str(tmp_path / "model"), patch_size=64)
    assert "learning rate must be > 0" in cli_error(
        ["bcdi", "train", sim_store, "--out", tmp_path / "cli", "--workers", "0", "--lr", "0", "--no-progress"])
    assert not (tmp_path / "cli").exists()


def test_train_command_in_process(sim_store, tmp_path, capsys):
    out = tmp_path / "cli-model"
    args = ["bcdi", "train", sim_store, "--out", str(out), "--workers", "0", "--epochs", "1", "--base-channels", "4",
            "--depth", "2", "--patch-size", "16", "-k", "8", "--batch-size", "8", "--no-progress"]
    assert cli_main(args) == 0
    assert "1 epochs; best epoch 1" in capsys.readouterr().out
    info = read_model_info(out)
    assert info.provenance["command"].startswith("rayproc") and info.architecture["base_channels"] == 4
    assert cli_main([*args[:-1], "--arch", "unet3d"]) == 2
    assert "Unsupported architecture 'unet3d'" in capsys.readouterr().err


def test_ray_train_two_workers_s3_checkpoints_failure_and_resume(ray_local, sim_store, s3_bucket, tmp_path,
                                                                  monkeypatch):
    import s3fs

    import rayproc.pipelines.bcdi.train as bcdi_train

    bucket, options = s3_bucket
    out = tmp_path / "model"
    common = dict(workers=2, storage=f"{bucket}/runs", storage_options=options, portions_per_volume=16,
                  max_failures=1, **TINY)
    with monkeypatch.context() as patch:  # the workers fail once, after checkpointing epoch 0
        patch.setattr(bcdi_train, "run_training", run_training_failing_once(after_epoch=0))
        report = train_bcdi([sim_store], str(out), epochs=2, **common)
    rows = read_history(out)
    assert [r["epoch"] for r in rows] == [0, 1] and all(r["workers"] == 2 for r in rows)
    # the worker group failed after epoch 0 and restarted from its checkpoint, not from scratch
    assert [r["start_epoch"] for r in rows] == [0, 1]
    assert report.checkpoints == f"{bucket}/runs/{run_name(out)}"

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": options["endpoint_url"]})
    run = f"{bucket[5:]}/runs/{run_name(out)}"
    checkpoints = [p for p in fs.ls(run) if p.rsplit("/", 1)[-1].startswith("checkpoint_") and fs.isdir(p)]
    assert checkpoints and all(fs.exists(f"{p}/state.pt") for p in checkpoints)
    assert fs.exists(f"{run}/rayproc_run.json")

    # rerunning the same command with one more epoch resumes the run
    again = train_bcdi([sim_store], str(out), epochs=3, **common)
    assert again.resumed and read_history(out)[:2] == rows and read_history(out)[2]["start_epoch"] == 2
    model, info = load_model(out)
    assert info.metrics["epochs"] == 3 and count_parameters(model) == 10_193  # TINY (tests/test_bcdi_models.py)


def test_finetune_uses_only_portions_away_from_the_gaps(target_store, tmp_path):
    model, config = _tiny_model(seed=4)
    base = tmp_path / "base"
    save_model(base, model, config, gap_widths=(3, 6), patch_size=16, provenance={"stage": "trained"})
    out = tmp_path / "tuned"
    gaps = ["y:30:3", "x:0:2"]
    finetune_bcdi(str(base), target_store, str(out), gaps=gaps, epochs=1, portions_per_volume=16,
                  batch_size=8, workers=0, progress=False)

    tuned, info = load_model(out)
    base_info = read_model_info(base)
    assert info.architecture == base_info.architecture and (info.patch_size, info.gap_widths) == (16, (3, 6))
    before, after = model.state_dict(), tuned.state_dict()
    assert before.keys() == after.keys() and all(before[k].shape == after[k].shape for k in before)
    # the best of the base model (epoch -1) and the epoch on held-out portions (tests/test_bcdi_adapt.py)
    changed = any(not torch.equal(before[k], after[k]) for k in before)
    assert changed == (info.metrics["best_epoch"] >= 0)
    assert info.provenance["stage"] == "fine-tuned on target"
    assert info.provenance["base_model"]["sha256"] == base_info.sha256

    # every target training and validation portion of the run avoids the real gaps and carries them
    spec = TrainSpec.from_dict(info.provenance["parameters"])
    mask = gaps_to_mask(gaps, (40, 40, 40))
    train_set, val_set = datasets_for(spec)
    for dataset in (train_set.first, val_set):  # train_set.second: simulated rehearsal portions
        for index in range(len(dataset)):
            plan = dataset.plan(index)
            box = tuple(slice(o, o + 16) for o in plan.origin)
            assert not mask[box].any()
            assert dataset.template_widths[plan.template] in (2, 3)

    # the same through the CLI with a mask file; no gaps given, or no room: one-line errors
    mask_file = tmp_path / "mask.npy"
    np.save(mask_file, mask.astype(np.uint8))
    args = ["bcdi", "finetune", str(base), target_store, "--out", str(tmp_path / "cli"), "--epochs", "1",
            "-k", "8", "--batch-size", "8", "--workers", "0", "--no-progress"]
    assert cli_main([*args, "--mask", str(mask_file)]) == 0
    assert read_model_info(tmp_path / "cli").provenance["parameters"]["exclude_mask"] == str(mask_file)
    assert cli_main(args) == 2
    with pytest.raises(InputError, match="do not touch"):
        finetune_bcdi(str(base), target_store, str(tmp_path / "none"), gaps=["y:10:20"], workers=0, progress=False)


def test_model_directory_of_an_older_format_loads(tmp_path):
    from safetensors.torch import save_file

    model, config = _tiny_model(seed=2)
    save_file(model.state_dict(), tmp_path / "weights.safetensors")
    (tmp_path / "config.json").write_text(json.dumps({  # format 0: flat keys, no version field
        "arch": config.to_dict(), "patch_size": 16, "gap_widths": [3, 6], "normalisation": "log1p-minmax",
        "weights_file": "weights.safetensors", "sha256": file_sha256(tmp_path / "weights.safetensors"),
    }))
    loaded, info = load_model(tmp_path)
    assert (info.format_version, info.family, info.patch_size, info.gap_widths) == (0, "bcdi", 16, (3, 6))
    x, mask = torch.rand(2, 1, 16, 16, 16), torch.zeros(2, 1, 16, 16, 16)
    mask[..., 5:8] = 1
    with torch.no_grad():
        torch.testing.assert_close(loaded(x, mask), model.eval()(x, mask), rtol=0, atol=0)

    newer = json.loads((tmp_path / "config.json").read_text()) | {"format_version": 99}
    (tmp_path / "config.json").write_text(json.dumps(newer))
    with pytest.raises(RayprocError, match="format 99.*upgrade rayproc"):
        load_model(tmp_path)


def test_tampered_weights_are_refused(tmp_path, cli_error):
    model, config = _tiny_model()
    save_model(tmp_path, model, config, gap_widths=(3,), patch_size=16)
    assert load_model(tmp_path)[1].sha256 == file_sha256(tmp_path / "model.safetensors")
    data = bytearray((tmp_path / "model.safetensors").read_bytes())
    data[-1] ^= 0x01  # one bit of one weight
    (tmp_path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(RayprocError, match="does not match the sha256"):
        load_model(tmp_path)
    assert "sha256" in cli_error(["bcdi", "model-info", "--model", tmp_path])


def test_model_info_and_other_families(tmp_path, capsys):
    model, config = _tiny_model()
    save_model(tmp_path / "bcdi", model, config, gap_widths=(3, 6, 9, 12), patch_size=16)
    assert cli_main(["bcdi", "model-info", "--model", str(tmp_path / "bcdi")]) == 0
    text = capsys.readouterr().out
    assert f"{count_parameters(model):,}" in text
    assert f"{flops_per_portion(model, 32) / 1e9:.3f} GFLOP per 32^3 portion" in text
    assert cli_main(["bcdi", "model-info", "--model", str(tmp_path / "missing")]) == 2

    # a family registered by another task reuses the same artefact
    register_family("toy-linear", lambda arch: torch.nn.Linear(arch["n"], 1))
    linear = torch.nn.Linear(3, 1)
    save_model(tmp_path / "toy", linear, {"n": 3}, family="toy-linear")
    loaded, info = load_model(tmp_path / "toy")
    assert info.family == "toy-linear" and torch.equal(loaded.weight, linear.weight)
    with pytest.raises(RayprocError, match="unknown model family"):
        save_model(tmp_path / "bad", linear, {"n": 3}, family="nonexistent")
