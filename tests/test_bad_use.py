"""Every CLI command against bad uses: one line, exit 2 (130 for Ctrl-C), nothing pre-existing changed.

Each case runs ``rayproc ...`` as a user would (a subprocess) in a workspace restored to the same
state before every case, and asserts:

* the exit status (2 for an error the user caused, 130 for Ctrl-C);
* exactly one ``rayproc: error:`` line (or one ``rayproc: interrupted:`` line), no traceback;
* it finished within 60 s (no hang);
* every file and folder that existed before is unchanged (content checksums), and, where the
  error comes before any computing, no output was created.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = REPO / "rayproc" / "weights"
TIMEOUT = 60


@dataclass
class Case:
    id: str
    args: list[str]
    message: str  # a fragment of the one error line
    setup: Callable[[Path], None] | None = None
    output: str | None = None  # a path that must not exist afterwards (error before any output)
    code: int = 2
    interrupt_after_markers: int | None = None  # Ctrl-C once the output holds this many task markers
    env: dict = field(default_factory=dict)


def _write(path: Path, data: bytes) -> None:
    path.write_bytes(data)


def _remove_chunk(store: str, array: str = "intensity") -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        chunk = next(p for p in sorted((ws / store / array / "c").rglob("*")) if p.is_file())
        chunk.unlink()
    return setup


def _garble_chunk(store: str, array: str = "intensity") -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        chunk = next(p for p in sorted((ws / store / array / "c").rglob("*")) if p.is_file())
        data = bytearray(chunk.read_bytes())
        data[len(data) // 2: len(data) // 2 + 16] = bytes(range(16))  # same size, other bytes
        chunk.write_bytes(bytes(data))
    return setup


def _truncate_chunk(store: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        chunk = next(p for p in sorted((ws / store / "intensity" / "c").rglob("*")) if p.is_file())
        chunk.write_bytes(b"garbage")
    return setup


def _change_file(name: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        volume = np.load(ws / name)
        np.save(ws / name, volume + 1)
    return setup


def _drop_variable_metadata(store: str) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        (ws / store / "intensity" / "zarr.json").unlink()
    return setup


BCDI_MODEL, LABDCT_MODEL = str(WEIGHTS / "bcdi-default"), str(WEIGHTS / "labdct-default")
GAP = ["--gap", "x:10:3"]
QUIET = ["--no-progress", "--cpus", "2"]

CASES = [
    # --- ingest: outputs that are not rayproc's, overlapping inputs, bad files ----------------
    Case("ingest-into-user-folder", ["ingest", "vol.npy", "keep"], "not a rayproc store"),
    Case("ingest-overwrite-user-folder", ["ingest", "vol.npy", "keep", "--overwrite"], "not a rayproc store"),
    Case("ingest-output-is-input-folder", ["ingest", "frames", "frames"], "is the input"),
    Case("ingest-output-inside-input", ["ingest", "frames", "frames/out.zarr"], "inside", output="frames/out.zarr"),
    Case("ingest-output-holds-input", ["ingest", "keep/vol.npy", "keep", "--overwrite"], "holds the input",
         setup=lambda ws: shutil.copy(ws / "vol.npy", ws / "keep" / "vol.npy")),
    Case("ingest-output-is-a-file", ["ingest", "vol.npy", "notes.txt"], "existing file"),
    Case("ingest-overwrite-a-file", ["ingest", "vol.npy", "notes.txt", "--overwrite"], "existing file"),
    Case("ingest-overwrite-foreign-zarr", ["ingest", "vol.npy", "foreign.zarr", "--overwrite"], "not a rayproc store"),
    Case("ingest-output-inside-a-store", ["ingest", "vol.npy", "vol.zarr/extra.zarr"], "inside the zarr store",
         output="vol.zarr/extra.zarr"),
    Case("ingest-overwrite-store-with-user-file", ["ingest", "vol.npy", "vol.zarr", "--overwrite"],
         "rayproc did not write", setup=lambda ws: (ws / "vol.zarr" / "my-notes.txt").write_text("mine")),
    Case("ingest-gs-url", ["ingest", "vol.npy", "gs://bucket/out.zarr"], "gs:// is not supported"),
    Case("ingest-unwritable-output", ["ingest", "vol.npy", "/proc/rayproc-bad-use.zarr"], "rayproc-bad-use"),
    Case("ingest-output-under-a-file", ["ingest", "vol.npy", "notes.txt/out.zarr"], "is a file"),
    Case("ingest-nan", ["ingest", "nan.npy", "out.zarr"], "NaN", output="out.zarr"),
    Case("ingest-negative", ["ingest", "negative.npy", "out.zarr"], "negative", output="out.zarr"),
    Case("ingest-2d", ["ingest", "flat.npy", "out.zarr"], "3D", output="out.zarr"),
    Case("ingest-garbage-file", ["ingest", "garbage.npy", "out.zarr"], "cannot read", output="out.zarr"),
    Case("ingest-missing-file", ["ingest", "missing.npy", "out.zarr"], "not found", output="out.zarr"),
    Case("ingest-bad-storage-option", ["ingest", "vol.npy", "out.zarr", "--storage-option", "novalue"],
         "key=value", output="out.zarr"),
    # --- bcdi inpaint: resources, models, masks, damaged or changed inputs and outputs ---------
    Case("inpaint-into-user-folder", ["bcdi", "inpaint", "vol.zarr", "keep", *GAP, *QUIET], "not a rayproc store"),
    Case("inpaint-output-is-input", ["bcdi", "inpaint", "vol.zarr", "vol.zarr", *GAP, *QUIET, "--overwrite"],
         "is the input"),
    Case("inpaint-gpu-without-gpu", ["bcdi", "inpaint", "vol.zarr", "out.zarr", *GAP, *QUIET, "--gpu"], "GPU",
         output="out.zarr"),
    Case("inpaint-too-many-cpus", ["bcdi", "inpaint", "vol.zarr", "out.zarr", *GAP, *QUIET,
                                   "--cpus-per-worker", "4"], "needs 4 CPU", output="out.zarr"),
    Case("inpaint-labdct-model", ["bcdi", "inpaint", "vol.zarr", "out.zarr", *GAP, *QUIET, "--model", LABDCT_MODEL],
         "'labdct' model", output="out.zarr"),
    Case("inpaint-gap-outside", ["bcdi", "inpaint", "vol.zarr", "out.zarr", "--gap", "x:100:3", *QUIET], "outside",
         output="out.zarr"),
    Case("inpaint-gap-bad-axis", ["bcdi", "inpaint", "vol.zarr", "out.zarr", "--gap", "q:1:3", *QUIET], "AXIS:START:WIDTH",
         output="out.zarr"),
    Case("inpaint-mask-wrong-shape", ["bcdi", "inpaint", "vol.zarr", "out.zarr", "--mask", "mask-bad.npy", *QUIET],
         "shape", output="out.zarr"),
    Case("inpaint-detector-mask-without-offset", ["bcdi", "inpaint", "vol.zarr", "out.zarr", "--mask", "detector.npy",
                                                  *QUIET], "--mask-offset ROW,COL", output="out.zarr",
         setup=lambda ws: np.save(ws / "detector.npy", np.zeros((516, 516), np.uint8))),
    Case("inpaint-detector-mask-offset-outside", ["bcdi", "inpaint", "vol.zarr", "out.zarr", "--mask", "detector.npy",
                                                  "--mask-offset", "500,500", *QUIET], "does not fit",
         output="out.zarr", setup=lambda ws: np.save(ws / "detector.npy", np.zeros((516, 516), np.uint8))),
    Case("inpaint-input-chunk-missing", ["bcdi", "inpaint", "vol.zarr", "out.zarr", *GAP, *QUIET],
         "chunk intensity/c/0/0/0 is missing", setup=_remove_chunk("vol.zarr"), output="out.zarr"),
    Case("inpaint-input-chunk-garbage", ["bcdi", "inpaint", "vol.zarr", "out.zarr", *GAP, *QUIET],
         "damaged", setup=_truncate_chunk("vol.zarr"), output="out.zarr"),
    Case("inpaint-input-chunk-bitflip", ["bcdi", "inpaint", "vol.zarr", "out.zarr", *GAP, *QUIET],
         "checksum", setup=_garble_chunk("vol.zarr"), output="out.zarr"),
    Case("inpaint-input-metadata-missing", ["bcdi", "inpaint", "vol.zarr", "out.zarr", *GAP, *QUIET],
         "lost its metadata", setup=_drop_variable_metadata("vol.zarr"), output="out.zarr"),
    Case("inpaint-output-chunk-missing", ["bcdi", "inpaint", "vol.zarr", "done.zarr", *GAP, *QUIET],
         "marked complete but chunk", setup=_remove_chunk("done.zarr")),
    Case("inpaint-other-parameters", ["bcdi", "inpaint", "vol.zarr", "done.zarr", *GAP, *QUIET, "--stride", "4"],
         "other parameters"),
    Case("inpaint-input-changed", ["bcdi", "inpaint", "vol.npy", "done-npy.zarr", *GAP, *QUIET],
         "has changed", setup=_change_file("vol.npy")),
    Case("inpaint-unwritable-output", ["bcdi", "inpaint", "vol.zarr", "/proc/rayproc-bad-use.zarr", *GAP, *QUIET],
         "rayproc-bad-use"),
    Case("inpaint-foreign-input", ["bcdi", "inpaint", "foreign.zarr", "out.zarr", *GAP, *QUIET], "cannot read dataset",
         output="out.zarr"),
    # --- bcdi evaluate, simulate, train, finetune, model-info ----------------------------------
    Case("evaluate-into-user-folder", ["bcdi", "evaluate", "vol.zarr", *GAP, "--out", "keep"], "not empty"),
    Case("evaluate-output-is-a-file", ["bcdi", "evaluate", "vol.zarr", *GAP, "--out", "notes.txt"], "existing file"),
    Case("evaluate-gpu-without-cuda", ["bcdi", "evaluate", "vol.zarr", *GAP, "--out", "ev", "--gpu"], "CUDA",
         output="ev"),
    Case("evaluate-unwritable-output", ["bcdi", "evaluate", "vol.zarr", *GAP, "--out", "/proc/rayproc-bad-use"],
         "rayproc-bad-use"),
    Case("evaluate-nan-volume", ["bcdi", "evaluate", "nan.npy", *GAP, "--out", "ev"], "NaN", output="ev"),
    Case("evaluate-no-gap", ["bcdi", "evaluate", "vol.zarr", "--out", "ev"], "--gap", output="ev"),
    Case("simulate-into-user-folder", ["bcdi", "simulate", "keep", "--count", "1", "--size", "16", *QUIET],
         "not a rayproc store"),
    Case("simulate-bad-size", ["bcdi", "simulate", "sim.zarr", "--size", "15", *QUIET], "--size", output="sim.zarr"),
    Case("simulate-into-input-folder", ["bcdi", "simulate", "frames", "--count", "1", "--size", "16", *QUIET],
         "not a rayproc store"),
    Case("train-into-user-folder", ["bcdi", "train", "vol.zarr", "--out", "keep", "--workers", "0"], "not empty"),
    Case("train-gpu-without-cuda", ["bcdi", "train", "vol.zarr", "--out", "model", "--workers", "0", "--gpu"],
         "CUDA", output="model/config.json"),
    Case("train-missing-data", ["bcdi", "train", "missing.zarr", "--out", "model", "--workers", "0"],
         "no dataset", output="model"),
    Case("finetune-over-its-own-model", ["bcdi", "finetune", "mymodel", "vol.zarr", "--out", "mymodel", *GAP,
                                         "--workers", "0"], "is the input",
         setup=lambda ws: shutil.copytree(BCDI_MODEL, ws / "mymodel")),
    Case("model-info-not-a-model", ["bcdi", "model-info", "--model", "keep"], "no model"),
    Case("model-info-labdct-model", ["bcdi", "model-info", "--model", LABDCT_MODEL], "not a BCDI"),
    # --- LabDCT stages ---------------------------------------------------------------------------
    Case("denoise-into-user-folder", ["labdct", "denoise", "frames", "keep", *QUIET], "not a rayproc store"),
    Case("denoise-gpu-without-gpu", ["labdct", "denoise", "frames", "den.zarr", *QUIET, "--gpu"], "GPU",
         output="den.zarr"),
    Case("denoise-too-many-cpus", ["labdct", "denoise", "frames", "den.zarr", *QUIET, "--cpus-per-worker", "8"],
         "needs 8 CPU", output="den.zarr"),
    Case("denoise-bcdi-model", ["labdct", "denoise", "frames", "den.zarr", *QUIET, "--model", BCDI_MODEL],
         "'bcdi' model", output="den.zarr"),
    Case("denoise-output-is-input", ["labdct", "denoise", "frames", "frames", *QUIET], "is the input"),
    Case("segment-dl-gpu-without-cuda", ["labdct", "segment", "frames", "seg.zarr", "--method", "dl", "--gpu"],
         "CUDA", output="seg.zarr"),
    Case("segment-unknown-method", ["labdct", "segment", "frames", "seg.zarr", "--method", "magic"], "magic",
         output="seg.zarr"),
    Case("segment-output-is-input", ["labdct", "segment", "frames", "frames", "--method", "standard"],
         "is the input"),
    Case("background-into-user-folder", ["labdct", "background", "frames", "keep"], "not a rayproc store"),
    Case("labdct-simulate-into-user-folder", ["labdct", "simulate", "keep", "--preset", "D18", *QUIET],
         "not a rayproc store"),
    Case("labdct-simulate-unknown-preset", ["labdct", "simulate", "sim.zarr", "--preset", "D99", *QUIET], "D99",
         output="sim.zarr"),
    Case("labdct-evaluate-not-a-synth-store", ["labdct", "evaluate", "vol.zarr", "--out", "ev"], "not a synthesised",
         output="ev"),
    Case("labdct-evaluate-gpu-without-cuda", ["labdct", "evaluate", "vol.zarr", "--out", "ev", "--gpu"], "CUDA",
         output="ev"),
    Case("labdct-train-not-a-synth-store", ["labdct", "train", "vol.zarr", "--out", "model", "--workers", "0"],
         "vol.zarr", output="model/config.json"),
    # --- realism (issue 17) ------------------------------------------------------------------------
    Case("labdct-compare-real-into-user-folder", ["labdct", "compare-real", "frames", "frames", "--out", "keep"],
         "not made by rayproc"),
    Case("labdct-simulate-bad-physics", ["labdct", "simulate", "sim.zarr", "--physics", "{\"mosaic\": 1}", *QUIET],
         "unknown physics terms", output="sim.zarr"),
    # --- Ctrl-C ------------------------------------------------------------------------------------
    Case("simulate-ctrl-c", ["bcdi", "simulate", "sim.zarr", "--count", "40", "--size", "32", "--workers", "1",
                             *QUIET], "interrupted: ", code=130, interrupt_after_markers=2),
]


# ------------------------------------------------------------------------------------- workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, ray_local):
    """A workspace with inputs and outputs of earlier runs; restored before every case.

    It is built in place (stores record absolute paths) and kept as a pristine copy.
    """
    import tifffile

    from rayproc.pipelines.bcdi.inpaint import inpaint_bcdi
    from rayproc.pipelines.ingest import ingest

    root = tmp_path_factory.mktemp("bad-use")
    ws = root / "ws"
    ws.mkdir()
    rng = np.random.default_rng(0)
    volume = rng.poisson(4.0, (40, 40, 40)).astype(np.float32)
    np.save(ws / "vol.npy", volume)
    np.save(ws / "nan.npy", np.where(volume > 6, np.nan, volume))
    np.save(ws / "negative.npy", volume - 10)
    np.save(ws / "flat.npy", volume[0])
    np.save(ws / "mask-bad.npy", np.zeros((5, 5, 5), bool))
    _write(ws / "garbage.npy", os.urandom(512))
    (ws / "notes.txt").write_text("a user's notes\n")
    (ws / "keep").mkdir()
    (ws / "keep" / "keep.txt").write_text("x\n")
    (ws / "frames").mkdir()
    for i in range(3):
        tifffile.imwrite(ws / "frames" / f"frame_{i:03d}.tif", rng.poisson(20.0, (64, 64)).astype(np.uint16))
    import zarr

    foreign = zarr.open_group(str(ws / "foreign.zarr"), mode="w", zarr_format=3)
    foreign.create_array("data", shape=(4, 4), dtype="f4")
    ingest(str(ws / "vol.npy"), str(ws / "vol.zarr"), command="rayproc ingest vol.npy vol.zarr")
    for source, out in (("vol.zarr", "done.zarr"), ("vol.npy", "done-npy.zarr")):
        # what the CLI cases run with GAP and QUIET: same parameters, so a rerun would resume
        inpaint_bcdi(str(ws / source), str(ws / out), gaps=["x:10:3"], workers=2, progress=False)
    pristine = root / "pristine"
    shutil.copytree(ws, pristine, symlinks=True)
    return ws, pristine


def _restore(ws: Path, pristine: Path) -> None:
    shutil.rmtree(ws)
    shutil.copytree(pristine, ws, symlinks=True)


def _snapshot(ws: Path) -> dict[str, str]:
    """Checksums of every file (content) and folder (its entries) under ``ws``."""
    out = {}
    for path in sorted(ws.rglob("*")):
        rel = str(path.relative_to(ws))
        if path.is_dir():
            out[rel + "/"] = "dir"
        else:
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _run(case: Case, ws: Path) -> tuple[int, str, str, float]:
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "COLUMNS": "200", **case.env}
    env.pop("RAY_ADDRESS", None)
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "rayproc", *case.args], cwd=ws, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    if case.interrupt_after_markers is not None:
        progress = ws / case.args[2] / "_progress"
        while time.time() - started < TIMEOUT and proc.poll() is None:
            if progress.is_dir() and len(os.listdir(progress)) >= case.interrupt_after_markers:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL) if False else proc.kill()
        out, err = proc.communicate()
        pytest.fail(f"{case.id}: no answer within {TIMEOUT} s (a hang)\n{err[-2000:]}")
    return proc.returncode, out, err, time.time() - started


def test_enough_cases():
    assert len(CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_use(case: Case, workspace):
    ws, pristine = workspace
    _restore(ws, pristine)
    if case.setup:
        case.setup(ws)
    before = _snapshot(ws)
    code, out, err, seconds = _run(case, ws)
    text = out + err
    assert "Traceback" not in text, text[-3000:]
    assert code == case.code, f"exit {code}, expected {case.code}:\n{text[-3000:]}"
    prefix = "rayproc: interrupted:" if case.code == 130 else "rayproc: error:"
    lines = [line for line in err.splitlines() if line.startswith(prefix)]
    assert len(lines) == 1, err[-3000:]
    assert case.message in lines[0], lines[0]
    if case.code == 130:
        assert "tasks done; rerun the same command to resume" in lines[0]
    assert seconds < TIMEOUT
    after = _snapshot(ws)
    changed = [rel for rel, digest in before.items() if after.get(rel) != digest]
    assert not changed, f"pre-existing files changed or removed: {changed[:5]}"
    if case.output is not None:
        assert not (ws / case.output).exists(), f"{case.output} was created"


# ------------------------------------------------------------- errors raised inside actors


class _FailsOn:
    def __init__(self, bad):
        self.bad = bad

    def __call__(self, item):
        from rayproc.errors import InputError

        if item == self.bad:
            raise InputError(f"item {item} is bad")
        return item


class _FailsToStart:
    def __init__(self):
        from rayproc.errors import StoreError

        raise StoreError("cannot open the store in the actor")

    def __call__(self, item):
        return item


def test_actor_errors_reach_the_driver_as_themselves(ray_local):
    """An InputError raised by a stage (or its constructor) on an actor is raised by run_stage as
    the same type and message, so the CLI prints the same one line as for a local error."""
    from rayproc.errors import InputError, StoreError
    from rayproc.runtime.pool import run_stage

    with pytest.raises(InputError, match="^item 3 is bad$"):
        list(run_stage(lambda: _FailsOn(3), range(6), workers=2, cpus_per_worker=0.5, progress=False))
    with pytest.raises(StoreError, match="cannot open the store in the actor"):
        list(run_stage(_FailsToStart, range(2), workers=1, cpus_per_worker=0.5, progress=False))


def test_unmeetable_request_is_refused_before_any_actor(ray_local):
    from rayproc.runtime.pool import run_stage
    from rayproc.runtime.resources import ResourceError

    with pytest.raises(ResourceError, match="needs 1 GPU"):
        list(run_stage(lambda: _FailsOn(None), range(2), gpus_per_worker=1.0, progress=False))
    with pytest.raises(ResourceError, match="needs 64 CPU"):
        list(run_stage(lambda: _FailsOn(None), range(2), cpus_per_worker=64, progress=False))
