"""Output safety and store integrity, in process (the CLI view is tests/test_bad_use.py)."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import xarray as xr

from rayproc.errors import StoreError
from rayproc.storage import ArraySpec, create_dataset, finalize, open_dataset, resolve, write_task
from rayproc.storage.outputs import FOLDER_MARKER, claim_folder, claim_store, fingerprint, store_kind


def _store(path, *, inputs=(), parameters=None) -> str:
    """A two-chunk store written task by task, finalized."""
    location = resolve(str(path))
    arrays = {"a": ArraySpec(("z", "x"), (2, 4), "float32", chunks=(1, 4), attrs={"units": "photons"})}
    status = create_dataset(location, arrays, provenance_attrs={"parameters": parameters or {"k": 1}},
                            inputs=inputs)
    for i in range(2):
        write_task(location, f"row-{i}", {"a": ((slice(i, i + 1),), np.full((1, 4), i + 1, np.float32))})
    finalize(location, ["row-0", "row-1"])
    return status


def test_finished_store_opens_with_plain_xarray_without_warnings(tmp_path):
    _store(tmp_path / "s.zarr")
    assert (tmp_path / "s.zarr" / "_progress").is_dir()  # rayproc's bookkeeping is there...
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ...and xarray neither lists it nor misses consolidated metadata
        ds = xr.open_zarr(tmp_path / "s.zarr")
    assert ds["a"].values.tolist() == [[1.0] * 4, [2.0] * 4] and ds["a"].attrs["units"] == "photons"


def test_manifest_names_a_missing_chunk_and_a_changed_size(tmp_path):
    _store(tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / "a" / "c" / "1" / "0"
    data = chunk.read_bytes()
    chunk.write_bytes(data + b"x")
    with pytest.raises(StoreError, match=r"chunk a/c/1/0 is damaged \(\d+ bytes, \d+ written\)"):
        open_dataset(str(tmp_path / "s.zarr"))
    chunk.unlink()
    with pytest.raises(StoreError, match="chunk a/c/1/0 is missing"):
        open_dataset(str(tmp_path / "s.zarr"))


def test_crc_catches_changed_bytes_of_the_same_size(tmp_path):
    _store(tmp_path / "s.zarr")
    chunk = tmp_path / "s.zarr" / "a" / "c" / "0" / "0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0xFF
    chunk.write_bytes(bytes(data))
    ds = open_dataset(str(tmp_path / "s.zarr"))  # same sizes: the manifest passes
    assert ds["a"][1].values.tolist() == [2.0] * 4  # an intact chunk still reads
    with pytest.raises(ValueError, match="checksum"):
        ds["a"][0].values


def test_resume_against_a_changed_input_is_refused(tmp_path):
    source = tmp_path / "in.npy"
    np.save(source, np.zeros(3))
    location = resolve(str(tmp_path / "out.zarr"))
    arrays = {"a": ArraySpec(("x",), (3,), "float32")}
    assert create_dataset(location, arrays, provenance_attrs={"parameters": {}}, inputs=[str(source)]) == "created"
    assert create_dataset(location, arrays, provenance_attrs={"parameters": {}}, inputs=[str(source)]) == "resumed"
    before = fingerprint(str(source))
    np.save(source, np.ones(3))
    os.utime(source, ns=(1, 1))  # a different modification time, whatever the clock's resolution
    assert fingerprint(str(source)) != before
    with pytest.raises(StoreError, match="has changed since"):
        create_dataset(location, arrays, provenance_attrs={"parameters": {}}, inputs=[str(source)])
    assert create_dataset(location, arrays, provenance_attrs={"parameters": {}}, inputs=[str(source)],
                          overwrite=True) == "created"


def test_what_rayproc_may_write(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "notes.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("mine")
    _store(tmp_path / "ours.zarr")
    kinds = {name: store_kind(resolve(str(tmp_path / name)))
             for name in ("absent", "empty", "user", "file.txt", "ours.zarr")}
    assert kinds == {"absent": "absent", "empty": "empty", "user": "foreign", "file.txt": "file",
                     "ours.zarr": "rayproc"}
    for name in ("user", "file.txt"):
        with pytest.raises(StoreError):
            claim_store(resolve(str(tmp_path / name)), overwrite=True)
    (tmp_path / "ours.zarr" / "mine.txt").write_text("mine")
    with pytest.raises(StoreError, match="rayproc did not write"):
        claim_store(resolve(str(tmp_path / "ours.zarr")), overwrite=True)
    with pytest.raises(StoreError, match="inside the zarr store"):
        claim_store(resolve(str(tmp_path / "ours.zarr" / "new.zarr")))
    with pytest.raises(StoreError, match="is the input"):
        claim_store(resolve(str(tmp_path / "user")), inputs=[str(tmp_path / "user")])
    with pytest.raises(StoreError, match="holds the input"):
        claim_store(resolve(str(tmp_path / "empty")), inputs=[str(tmp_path / "empty" / "x.h5") + ":/data"])
    assert sorted(p.name for p in (tmp_path / "user").iterdir()) == ["notes.txt"]


def test_report_folders(tmp_path):
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "a.txt").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        claim_folder(tmp_path / "user")
    folder = claim_folder(tmp_path / "new", create=False)
    assert not folder.exists()  # checking writes nothing
    claim_folder(tmp_path / "new")
    (folder / "metrics.json").write_text("{}")
    assert (folder / FOLDER_MARKER).is_file() and claim_folder(folder) == folder  # ours: reusable
