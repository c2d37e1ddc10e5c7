"""Storage shell: zarr v3 round trips, provenance, resume markers, readers, ingest."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
import tifffile
import xarray as xr

from rayproc import storage
from rayproc.errors import InputError, StoreError
from rayproc.pipelines.ingest import ingest
from rayproc.storage.readers import read_volume


def _dataset():
    rng = np.random.default_rng(0)
    return xr.Dataset(
        {"intensity": (("z", "y", "x"), rng.poisson(5, (6, 7, 8)).astype("float32"), {"units": "photons"})},
        coords={
            "z": ("z", np.linspace(0, 1, 6), {"units": "deg"}),
            "y": ("y", np.arange(7), {"units": "pixel"}),
            "x": ("x", np.arange(8), {"units": "pixel"}),
            "label": ("z", np.array(list("abcdef"))),
        },
        attrs={"title": "t"},
    )


@pytest.mark.parametrize("remote", [False, True])
def test_round_trip_keeps_dims_coords_attrs(tmp_path, remote, request):
    if remote:
        bucket, options = request.getfixturevalue("s3_bucket")
        url = f"{bucket}/ds.zarr"
    else:
        url, options = str(tmp_path / "ds.zarr"), {}
    ds = _dataset()
    prov = storage.provenance("rayproc test", {"a": 1, "aws_secret_access_key": "hunter2"}, seed=3)
    storage.write_dataset(storage.resolve(url, options), ds, chunks={"intensity": {"z": 2}}, provenance_attrs=prov)
    back = storage.open_dataset(storage.resolve(url, options))
    xr.testing.assert_equal(back[["intensity"]].load().drop_vars("label"), ds[["intensity"]].drop_vars("label"))
    assert back.attrs["title"] == "t"
    assert list(back.label.values) == list("abcdef")
    assert back.z.attrs["units"] == "deg" and back.intensity.attrs["units"] == "photons"
    assert back.attrs["provenance"]["seed"] == 3
    assert back.attrs["provenance"]["parameters"]["aws_secret_access_key"] == "***"
    assert "hunter2" not in json.dumps(back.attrs)
    assert back.intensity.encoding["chunks"] == (2, 7, 8)
    assert back.attrs["rayproc_status"] == "complete"


def test_zarr_v3_with_zstd_codec(tmp_path):
    url = str(tmp_path / "ds.zarr")
    storage.write_dataset(url, _dataset(), compression="zstd")
    meta = json.loads((tmp_path / "ds.zarr" / "intensity" / "zarr.json").read_text())
    assert meta["zarr_format"] == 3
    assert meta["dimension_names"] == ["z", "y", "x"]
    assert any(c["name"] == "zstd" for c in meta["codecs"])


def test_resume_markers_and_completion(tmp_path):
    loc = storage.resolve(str(tmp_path / "s.zarr"))
    spec = {"v": storage.ArraySpec(("i", "x"), (3, 4), "float32", chunks=(1, 4))}
    prov = storage.provenance("cmd", {"n": 3})
    assert storage.create_dataset(loc, spec, provenance_attrs=prov) == "created"
    storage.write_task(loc, "t0", {"v": ((0,), np.ones(4))})
    assert storage.done_tasks(loc) == {"t0"}
    with pytest.raises(StoreError, match="rerun"):
        storage.finalize(loc, ["t0", "t1", "t2"])
    with pytest.raises(StoreError, match="incomplete"):
        storage.open_dataset(loc)
    # same parameters: resumed, written chunk kept
    assert storage.create_dataset(loc, spec, provenance_attrs=prov) == "resumed"
    assert storage.open_dataset(loc, require_complete=False).v.values[0].sum() == 4
    # other parameters: refused without --overwrite
    with pytest.raises(StoreError, match="other parameters"):
        storage.create_dataset(loc, spec, provenance_attrs=storage.provenance("cmd", {"n": 4}))
    for i in (1, 2):
        storage.write_task(loc, f"t{i}", {"v": ((i,), np.full(4, i))})
    storage.write_task(loc, "t1", {"v": ((1,), np.full(4, 1))})  # idempotent rewrite
    storage.finalize(loc, ["t0", "t1", "t2"])
    assert storage.is_complete(loc)
    np.testing.assert_array_equal(storage.open_dataset(loc).v.values[:, 0], [1, 1, 2])
    assert storage.create_dataset(loc, spec, provenance_attrs=prov) == "complete"


def test_open_missing_or_corrupt_store(tmp_path):
    with pytest.raises(StoreError, match="no dataset"):
        storage.open_dataset(str(tmp_path / "nothing.zarr"))
    bad = tmp_path / "bad.zarr"
    bad.mkdir()
    (bad / "zarr.json").write_text("{not json")
    with pytest.raises(StoreError):
        storage.open_dataset(str(bad))


def test_storage_options_parse_and_redact():
    opts = storage.parse_storage_options(["endpoint_url=http://x:1", "anon=false", "client_kwargs.region_name=eu", "key=AKIA"])
    assert opts == {"endpoint_url": "http://x:1", "anon": False, "client_kwargs": {"region_name": "eu"}, "key": "AKIA"}
    assert storage.redacted(opts)["key"] == "***"
    assert "AKIA" not in repr(storage.Location("s3://b/x", opts))
    with pytest.raises(InputError):
        storage.parse_storage_options(["novalue"])
    assert "secret" not in storage.command_line(["rayproc", "x", "--storage-option", "secret=abc"]).split("=")[-1]


def test_readers_all_formats(tmp_path):
    vol = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4)
    np.save(tmp_path / "v.npy", vol)
    np.savez(tmp_path / "v.npz", data=vol)
    tifffile.imwrite(tmp_path / "v.tif", vol)
    frames = tmp_path / "frames"
    frames.mkdir()
    for i in (10, 2, 1):  # name order with numbers compared as numbers: 1, 2, 10
        tifffile.imwrite(frames / f"f_{i}.tif", np.full((3, 4), i, np.uint16))
    tifffile.imwrite(frames / "dark.tif", np.zeros((3, 4), np.uint16))
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["entry/data"] = vol
    for src in ("v.npy", "v.npz", "v.tif", "v.h5:/entry/data"):
        out, info = read_volume(str(tmp_path / src))
        assert out.dtype == np.float32
        np.testing.assert_array_equal(out, vol)
    stack, info = read_volume(frames)
    assert stack[:, 0, 0].tolist() == [1, 2, 10] and info["format"] == "tiff-frames"
    with pytest.raises(InputError, match="no dataset"):
        read_volume(str(tmp_path / "v.h5:/missing"))
    (tmp_path / "broken.npy").write_bytes(b"garbage")
    with pytest.raises(InputError, match="cannot read"):
        read_volume(tmp_path / "broken.npy")


def test_ingest_rejects_bad_counts(tmp_path):
    bad = np.ones((4, 4, 4), np.float32)
    bad[1, 1, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(InputError, match="NaN"):
        ingest(str(tmp_path / "nan.npy"), str(tmp_path / "o.zarr"))
    np.save(tmp_path / "neg.npy", -np.ones((4, 4, 4)))
    with pytest.raises(InputError, match="negative"):
        ingest(str(tmp_path / "neg.npy"), str(tmp_path / "o.zarr"))
    np.save(tmp_path / "flat.npy", np.ones((4, 4)))
    with pytest.raises(InputError, match="3D"):
        ingest(str(tmp_path / "flat.npy"), str(tmp_path / "o.zarr"))
    assert not (tmp_path / "o.zarr").exists()


def test_ingest_real_gold_scan(shared_data, tmp_path):
    ds = ingest(str(shared_data / "bcdi-au-34idc-s54"), str(tmp_path / "au.zarr"))
    back = storage.open_dataset(str(tmp_path / "au.zarr"))
    assert back.intensity.dims == ("z", "y", "x")
    assert back.intensity.shape == (201, 256, 256)
    assert back.intensity.dtype == np.float32
    v = back.intensity.values
    peak = np.unravel_index(v.argmax(), v.shape)
    assert abs(peak[0] - 99) <= 2 and abs(peak[1] - 126) <= 2 and abs(peak[2] - 127) <= 2
    assert np.array_equal(v, ds.intensity.values)
    assert back.attrs["provenance"]["parameters"]["shape"] == [201, 256, 256]
    # a second identical ingest is a no-op; a different source is refused without --overwrite
    ingest(str(shared_data / "bcdi-au-34idc-s54"), str(tmp_path / "au.zarr"))
    np.save(tmp_path / "other.npy", np.ones((2, 2, 2)))
    with pytest.raises(StoreError, match="overwrite"):
        ingest(str(tmp_path / "other.npy"), str(tmp_path / "au.zarr"))
    assert storage.open_dataset(str(tmp_path / "au.zarr")).intensity.shape == (201, 256, 256)


def test_task_tables_and_appended_variables(tmp_path):
    loc = storage.resolve(str(tmp_path / "t.zarr"))
    storage.create_dataset(loc, {"v": storage.ArraySpec(("i", "x"), (2, 3), "float32", chunks=(1, 3))},
                           provenance_attrs=storage.provenance("cmd", {}))
    storage.write_task(loc, "t0", {"v": ((0,), np.ones(3))}, table={"grain": np.array([4, 5]), "hkl": np.eye(3)})
    storage.write_task(loc, "t1", {"v": ((1,), np.ones(3))}, table={"grain": np.array([], int), "hkl": np.zeros((0, 3))})
    tables = storage.task_tables(loc, ["t0", "t1"])
    assert tables["t0"]["grain"].tolist() == [4, 5] and tables["t1"]["hkl"].shape == (0, 3)
    table = xr.Dataset({"spot_grain": ("spot", [4, 5])}, coords={"spot": ("spot", [0, 1])})
    storage.append_variables(loc, table)
    storage.append_variables(loc, table)  # idempotent
    storage.finalize(loc, ["t0", "t1"])
    assert storage.open_dataset(loc).spot_grain.values.tolist() == [4, 5]


# ------------------------------------------------------------------ inputs: one opener


def test_open_input_store_is_lazy_named_and_reopenable(tmp_path):
    from rayproc.storage.inputs import InputArray, open_array, open_input

    ds = _dataset()
    ds["projection"] = ds.intensity * 2
    ds["mask"] = ds.intensity > 5
    storage.write_dataset(str(tmp_path / "s.zarr"), ds, provenance_attrs=storage.provenance("make", {"a": 1}))
    data = open_input(str(tmp_path / "s.zarr"), ("input", "projection", "intensity"))
    assert isinstance(data, InputArray) and data.name == "projection"  # the first candidate present
    assert (data.dims, data.shape, data.ndim, data.source_format) == (("z", "y", "x"), (6, 7, 8), 3, "zarr")
    assert isinstance(data.data, xr.DataArray) and data.location.url == str(tmp_path / "s.zarr")
    np.testing.assert_array_equal(data[1:3, :, 2], 2 * ds.intensity.values[1:3, :, 2])  # a region, as numpy
    assert data.values().dtype == np.float32
    # every coordinate of the store, the dims' own through dim_coords; root and variable attrs
    assert set(data.coords) == {"z", "y", "x", "label"} and list(data.dim_coords()) == ["z", "y", "x"]
    assert data.coords["z"].attrs["units"] == "deg" and data.attrs["provenance"]["parameters"] == {"a": 1}
    assert data.attrs["title"] == "t" and data.frame_names is None
    np.testing.assert_array_equal(data.variable("mask").values, ds.mask.values)
    assert data.variable("absent") is None
    np.testing.assert_array_equal(open_array(data.location, data.name)[2], 2 * ds.intensity.values[2])
    with pytest.raises(InputError, match=r"has no 'target' variable; it holds \['intensity', 'mask', 'projection'\]"):
        open_input(str(tmp_path / "s.zarr"), ("target",))
    with pytest.raises(InputError, match=r"holds no frames: expected one of \('input', 'target'\)"):
        open_input(str(tmp_path / "s.zarr"), ("input", "target"), what="frames")


def test_open_input_files_get_the_dims_and_coords_asked_for(tmp_path):
    from rayproc.storage.inputs import PIXEL_COORDS, open_input

    vol = np.arange(2 * 3 * 4, dtype=np.int32).reshape(2, 3, 4)
    np.save(tmp_path / "v.npy", vol)
    data = open_input(str(tmp_path / "v.npy"), ("intensity",), file_dims=("z", "y", "x"),
                      file_coords={"z": {"units": "frame"}, **PIXEL_COORDS})
    assert (data.name, data.location, data.source_format, data.attrs) == (None, None, "npy", {})
    assert data.dims == ("z", "y", "x") and data.values().dtype == np.float32
    np.testing.assert_array_equal(data.values(), vol)
    assert data.coords["z"].values.tolist() == [0, 1] and data.coords["x"].attrs == PIXEL_COORDS["x"]
    assert data.variable("mask") is None
    only_frame = open_input(str(tmp_path / "v.npy"), ("x",), file_dims=("frame", "y", "x"), file_coords={"frame": {}})
    assert list(only_frame.coords) == ["frame"] and only_frame.coords["frame"].attrs == {}
    flat = open_input(str(tmp_path / "v.npy"), ("x",), file_dims=("y", "x"))  # rank differs: generic dims
    assert flat.dims == ("dim_0", "dim_1", "dim_2") and flat.coords == {}
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in (10, 2, 1):
        tifffile.imwrite(folder / f"f_{i}.tif", np.full((3, 4), i, np.uint16))
    frames = open_input(str(folder), ("input",), file_dims=("frame", "y", "x"))
    assert frames.frame_names == ("f_1.tif", "f_2.tif", "f_10.tif") and frames.source_format == "tiff-frames"
    assert frames[:, 0, 0].tolist() == [1, 2, 10]
    with pytest.raises(InputError, match="input not found"):
        open_input(str(tmp_path / "missing.npy"), ("intensity",))


def test_open_input_s3_store_and_not_a_store(s3_bucket):
    from rayproc.storage.inputs import is_zarr_store, open_array, open_input

    bucket, options = s3_bucket
    storage.write_dataset(storage.resolve(f"{bucket}/s.zarr", options), _dataset())
    data = open_input(f"{bucket}/s.zarr", ("intensity",), storage_options=options)
    assert data.location.is_remote and is_zarr_store(data.location)
    np.testing.assert_array_equal(open_array(data.location, "intensity")[0], _dataset().intensity.values[0])
    with pytest.raises(InputError, match="no zarr store at s3://"):
        open_input(f"{bucket}/nothing.zarr", ("intensity",), storage_options=options)
