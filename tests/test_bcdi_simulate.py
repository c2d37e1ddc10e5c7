"""``rayproc bcdi simulate`` on the embedded Ray: local and s3://, determinism, resume, errors."""

from __future__ import annotations

import numpy as np
import pytest

from rayproc import storage
from rayproc.bcdi.diffraction import simulate_bcdi_sample
from rayproc.pipelines.bcdi.simulate import simulate_bcdi
from tests.interrupt import interrupt_cli_run

SIZE = 32


@pytest.fixture(scope="module")
def reference(ray_local, tmp_path_factory):
    """A clean 2-worker run: 6 samples of 32^3."""
    url = str(tmp_path_factory.mktemp("ref") / "ref.zarr")
    report = simulate_bcdi(url, count=6, size=SIZE, seed=7, workers=2, progress=False)
    assert report.computed == 6
    return storage.open_dataset(url)


def test_store_layout_and_per_sample_coords(reference):
    ds = reference
    assert ds.intensity.dims == ("sample", "z", "y", "x")
    assert ds.intensity.shape == (6, SIZE, SIZE, SIZE) and ds.intensity.dtype == np.float32
    assert ds.intensity.encoding["chunks"] == (1, SIZE, SIZE, SIZE)
    for coord in ("shape", "oversampling", "photons", "sample_seed"):
        assert coord in ds.coords and ds[coord].dims == ("sample",)
    assert ds.attrs["provenance"]["parameters"] == {"count": 6, "size": SIZE, "seed": 7}
    v = ds.intensity.values
    assert np.isfinite(v).all() and (v >= 0).all() and v.sum() > 0
    # every sample is what the pure core gives for (seed, index): the store adds nothing
    np.testing.assert_array_equal(v[3], simulate_bcdi_sample(SIZE, 7, 3)[0])


def test_bit_identical_across_worker_counts(reference, tmp_path):
    url = str(tmp_path / "one.zarr")
    simulate_bcdi(url, count=6, size=SIZE, seed=7, workers=1, progress=False)
    np.testing.assert_array_equal(storage.open_dataset(url).intensity.values, reference.intensity.values)


def test_s3_output(reference, s3_bucket):
    bucket, options = s3_bucket
    url = f"{bucket}/sim.zarr"
    simulate_bcdi(url, count=6, size=SIZE, seed=7, workers=2, storage_options=options, progress=False)
    back = storage.open_dataset(storage.resolve(url, options))
    np.testing.assert_array_equal(back.intensity.values, reference.intensity.values)


def test_killed_actor_job_still_completes_identically(reference, tmp_path):
    import ray

    url = str(tmp_path / "killed.zarr")

    def kill_first(actors):
        ray.get(actors[0].pid.remote())  # make sure it is up, then kill it (restartable)
        ray.kill(actors[0], no_restart=False)

    simulate_bcdi(url, count=6, size=SIZE, seed=7, workers=2, progress=False, on_start=kill_first)
    np.testing.assert_array_equal(storage.open_dataset(url).intensity.values, reference.intensity.values)


def test_resume_after_interrupted_run(ray_local, tmp_path):
    """Ctrl-C the CLI mid-run; the same command resumes, computing only the missing samples."""
    count = 120
    url = str(tmp_path / "resume.zarr")
    proc = interrupt_cli_run(["bcdi", "simulate", url, "--count", str(count), "--size", str(SIZE), "--seed", "7",
                              "--workers", "1", "--cpus", "1", "--no-progress"], url, markers=1, timeout=120)
    done_before = storage.done_tasks(url)
    assert 0 < len(done_before) < count, "the driver was frozen mid-run, so some tasks must be missing"
    assert proc.returncode != 0
    assert not storage.is_complete(url)
    report = simulate_bcdi(url, count=count, size=SIZE, seed=7, workers=2, progress=False)
    assert report.status == "resumed"
    assert report.computed == count - len(done_before)
    clean = str(tmp_path / "clean.zarr")
    simulate_bcdi(clean, count=count, size=SIZE, seed=7, workers=2, progress=False)
    np.testing.assert_array_equal(storage.open_dataset(url).intensity.values,
                                  storage.open_dataset(clean).intensity.values)
    again = simulate_bcdi(url, count=count, size=SIZE, seed=7, workers=2, progress=False)
    assert again.status == "complete" and again.computed == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["--count", "0"], "--count"),
        (["--size", "15"], "--size"),
    ],
)
def test_bad_arguments_one_line_error(tmp_path, cli_error, args, message):
    assert message in cli_error(["bcdi", "simulate", tmp_path / "x.zarr", *args])
    assert not (tmp_path / "x.zarr").exists()


def test_other_parameters_refused_without_overwrite(reference, tmp_path, cli_error, ray_local):
    url = str(tmp_path / "p.zarr")
    simulate_bcdi(url, count=2, size=SIZE, seed=1, workers=1, progress=False)
    assert "overwrite" in cli_error(["bcdi", "simulate", url, "--count", "3", "--size", SIZE, "--seed", "1"])
    assert storage.open_dataset(url).intensity.shape[0] == 2
