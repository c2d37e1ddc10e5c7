"""benchmarks/bcdi_gpu_recipe.py: the GPU training recipe, run end to end at a tiny size on CPU.

The GPU machine has no Ray, zarr, numcodecs, s3fs, xraydb or spekpy: the recipe must import none
of them (``--check-imports`` fails the run otherwise), and it must write a model directory that
``load_model`` reads, its per-epoch log and the paper-protocol table, within the device's
limits on what comes back (at most 8 files under $OUT, each < 16 MiB).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "benchmarks" / "bcdi_gpu_recipe.py"


def _recipe():
    """The recipe as a module (registered, so its pool workers' functions pickle by name)."""
    if "bcdi_gpu_recipe" not in sys.modules:
        spec = importlib.util.spec_from_file_location("bcdi_gpu_recipe", RECIPE)
        module = importlib.util.module_from_spec(spec)
        sys.modules["bcdi_gpu_recipe"] = module
        spec.loader.exec_module(module)
    return sys.modules["bcdi_gpu_recipe"]


def test_simulated_volumes_do_not_depend_on_the_process_count():
    recipe = _recipe()
    one = recipe.simulate_volumes(16, 5, [0, 3, 4], processes=1)
    two = recipe.simulate_volumes(16, 5, [0, 3, 4], processes=2)
    assert one.shape == (3, 16, 16, 16) and one.dtype == np.float32
    np.testing.assert_array_equal(one, two)


def test_constants_copied_from_the_training_pipeline_agree():
    # the recipe copies them because rayproc.pipelines.bcdi.train imports zarr (rayproc.storage)
    from rayproc.pipelines.bcdi import train

    recipe = _recipe()
    assert recipe.NORMALISATION == train.NORMALISATION
    assert recipe.DEFAULT_LR == train.DEFAULT_LR
    assert recipe.GAP_WIDTHS == train.GAP_WIDTHS


@pytest.mark.slow  # 12-22 s on 2 busy cores (the shipped model in the protocol is most of it)
def test_recipe_end_to_end_tiny_on_cpu(tmp_path):
    import torch

    from rayproc.bcdi.diffraction import simulate_bcdi_sample
    from rayproc.bcdi.inpaint import predict_portions
    from rayproc.models.artifact import load_model

    scan = tmp_path / "scan.npy"
    np.save(scan, simulate_bcdi_sample(48, 99, 0)[0])  # a stand-in for the gold-scan crop
    out = tmp_path / "OUT" / "bcdi-gpu"
    command = [
        sys.executable, str(RECIPE), "--volumes", "6", "--val-volumes", "2", "--size", "48",
        "--portions-per-volume", "4", "--val-portions-per-volume", "4", "--base-channels", "4", "--depth", "2",
        "--batch-size", "8", "--budget-min", "0.2", "--reserve-min", "0", "--max-epochs", "2",
        "--processes", "2", "--channels-last", "--eval-scan", str(scan), "--eval-portions", "8",
        "--device", "cpu", "--check-imports",
    ]
    env = {**os.environ, "OUT": str(tmp_path / "OUT"), "PYTHONPATH": str(ROOT)}  # --out from $OUT
    began = time.monotonic()
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=170)
    seconds = time.monotonic() - began
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "forbidden imports: none" in done.stdout
    assert "epoch   1 |" in done.stdout, done.stdout

    model, info = load_model(out, family="bcdi")
    assert info.architecture["base_channels"] == 4 and info.patch_size == 32
    assert list(info.gap_widths) == [3, 6, 9, 12]
    assert info.provenance["seed"] == 2027 and "bcdi_gpu_recipe.py" in info.provenance["command"]
    assert info.provenance["hardware"]["device"] == "cpu"
    assert info.metrics["best"]["val_pcc"] is not None

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert 1 <= len(rows) <= 2 and all(np.isfinite(r["train_loss"]) for r in rows)

    page = (out / "paper_protocol.md").read_text()
    for name in ("this model", "shipped bcdi-default", "linear", "noise ceiling", "published"):
        assert name in page

    volume = np.load(scan)
    portion = volume[None, 8:40, 8:40, 8:40]
    mask = np.zeros(portion.shape, dtype=bool)
    mask[..., 14:20] = True
    with torch.no_grad():
        filled = predict_portions(model, portion, mask, batch_size=1)
    assert filled.shape == portion.shape and np.all(np.isfinite(filled))

    files = [p for p in (tmp_path / "OUT").rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size < 16 * 2**20 for p in files), files
    assert seconds < 120, f"the tiny run took {seconds:.0f} s"
