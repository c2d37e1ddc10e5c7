"""``rayproc labdct simulate`` on the embedded Ray: layout, spot table, determinism, resume."""

from __future__ import annotations

import numpy as np
import pytest

from rayproc import storage
from rayproc.pipelines.labdct.simulate import simulate_labdct, task_name

ARGS = dict(preset="D18", geometry="fe_farfield", projections=4, binning=8, seed=3, progress=False)


@pytest.fixture(scope="module")
def stack(ray_local, tmp_path_factory):
    url = str(tmp_path_factory.mktemp("lab") / "two.zarr")
    report = simulate_labdct(url, workers=2, **ARGS)
    assert report.computed == 4 and report.spots > 0
    return url


def test_layout_coords_and_spot_table(stack):
    ds = storage.open_dataset(stack)
    assert ds.projection.dims == ("omega", "det_y", "det_z") and ds.spot_label.dims == ("omega", "det_y", "det_z")
    assert ds.projection.dtype == np.float32 and ds.spot_label.dtype == np.int32
    assert ds.omega.attrs["units"] == "deg" and ds.det_y.attrs["units"] == "mm" and ds.det_z.attrs["units"] == "mm"
    np.testing.assert_allclose(ds.omega.values, [180, 90, 0, -90])  # fe_farfield: from 180 deg, decreasing
    images, labels = ds.projection.values, ds.spot_label.values
    bg = ds.attrs["background"]
    # beam stop zeroed, constant background elsewhere, spots above it
    assert (images == 0).any() and images[images > 0].min() == pytest.approx(bg, rel=1e-6)
    assert (np.abs(images - bg) < 1).mean() > 0.2
    assert (labels > 0).any() and (images[labels > 0] > bg).all()
    # every labelled pixel belongs to a spot of the table of its projection
    for p in range(4):
        ids = set(np.unique(labels[p])) - {0}
        table_ids = set(ds.spot_id.values[ds.spot_projection.values == p])
        assert ids <= table_ids
    energies = ds.spot_energy_kev.values
    assert ((energies >= 15) & (energies <= 110)).all()  # fe_farfield energy window
    assert ds.sizes["grain"] == ds.grain_orientation.shape[0] and ds.grain_diameter.attrs["units"] == "um"


def test_bit_identical_for_one_and_two_workers(stack, tmp_path):
    url = str(tmp_path / "one.zarr")
    simulate_labdct(url, workers=1, **ARGS)
    a, b = storage.open_dataset(stack), storage.open_dataset(url)
    np.testing.assert_array_equal(a.projection.values, b.projection.values)
    np.testing.assert_array_equal(a.spot_label.values, b.spot_label.values)
    np.testing.assert_array_equal(a.spot_intensity.values, b.spot_intensity.values)


def test_resume_recomputes_only_missing_projections(stack, tmp_path):
    import shutil

    url = tmp_path / "resume.zarr"
    shutil.copytree(stack, url)
    # forget two projections and the completion flag, as if the run had been killed
    for p in (1, 3):
        (url / "_progress" / task_name(p)).unlink()
    storage.zarr_store  # noqa: B018  (the store is plain files here)
    import zarr

    zarr.open_group(str(url), mode="r+").attrs["rayproc_status"] = "incomplete"
    report = simulate_labdct(str(url), workers=2, **ARGS)
    assert report.status == "resumed" and report.computed == 2
    np.testing.assert_array_equal(storage.open_dataset(str(url)).projection.values,
                                  storage.open_dataset(stack).projection.values)


def test_bad_preset_one_line(tmp_path, cli_error):
    assert "D35" in cli_error(["labdct", "simulate", tmp_path / "x.zarr", "--preset", "D36"])
