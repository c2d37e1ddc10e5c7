"""Datasets on disk: zarr v3 stores opened as xarray Datasets.

Layout conventions (readable by plain ``xarray.open_zarr``):

* every array carries ``dimension_names`` (named dims); coordinates carry ``units`` attrs;
  data variables list their non-index coordinates in the ``coordinates`` attr;
* the root attrs hold ``provenance`` (command, parameters, seed, version, time) and
  ``rayproc_status`` (``"incomplete"`` until :func:`finalize` succeeds, then ``"complete"``);
* each unit of work (a task: one sample, one chunk, one projection) writes its regions and then
  a marker ``_progress/<task>``; a rerun skips tasks with markers, so writes are idempotent per
  chunk and a killed run resumes. :func:`finalize` marks the store complete only when every
  expected marker is present.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import numpy as np
import xarray as xr
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec, ZstdCodec

from rayproc import __version__
from rayproc.errors import StoreError
from rayproc.options import look_up_option
from rayproc.storage.location import Location, filesystem, redacted, resolve
from rayproc.storage.outputs import (
    INPUTS_KEY, MANIFEST_KEY, STATUS_KEY, chunk_manifest, claim_store, first_damage, fingerprints, remove_store,
)

PROGRESS_DIR = "_progress"
COMPRESSIONS = ("blosc-zstd", "blosc-lz4", "zstd", "none")


@dataclass(frozen=True)
class ArraySpec:
    """An array to create: named dims, shape, dtype, chunk shape and attrs (e.g. ``units``)."""

    dims: tuple[str, ...]
    shape: tuple[int, ...]
    dtype: str = "float32"
    chunks: tuple[int, ...] | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    fill_value: Any = 0

    def __post_init__(self):
        if len(self.dims) != len(self.shape):
            raise ValueError(f"dims {self.dims} and shape {self.shape} differ in length.")
        if self.chunks is not None and len(self.chunks) != len(self.shape):
            raise ValueError(f"chunks {self.chunks} do not match shape {self.shape}.")


def provenance(command: str, parameters: Mapping[str, Any], *, seed: int | None = None) -> dict:
    """Provenance attrs: how a dataset was made (credentials are redacted)."""
    return {
        "command": command,
        "parameters": json.loads(json.dumps(redacted(dict(parameters)), default=str)),
        "seed": seed,
        "rayproc_version": __version__,
        "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "host": socket.gethostname(),
        "user": _user(),
    }


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def command_line(argv: list[str] | None = None) -> str:
    """The command that is running, with secret-looking ``key=value`` arguments redacted."""
    parts = []
    for arg in sys.argv if argv is None else argv:
        key, sep, _ = arg.partition("=")
        secret = sep and any(w in key.lower() for w in ("secret", "token", "password", "key"))
        parts.append(f"{key}=***" if secret else arg)
    return " ".join(["rayproc", *parts[1:]]) if argv is None else " ".join(parts)


def _codecs(compression: str):
    """Compression, then a CRC-32C of every stored chunk: a damaged chunk fails to decode."""
    compression = look_up_option(compression, COMPRESSIONS, name="compression")
    if compression == "blosc-zstd":
        return (BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec())
    if compression == "blosc-lz4":  # sparse images (LabDCT frames): 10x faster, better ratio than bitshuffle+zstd
        return (BloscCodec(cname="lz4", clevel=5, shuffle="shuffle"), Crc32cCodec())
    if compression == "zstd":
        return (ZstdCodec(level=3), Crc32cCodec())
    return (Crc32cCodec(),)


def zarr_store(location: Location, *, read_only: bool = False):
    """A zarr v3 store object for ``location`` (local directory or fsspec URL)."""
    if location.is_remote:
        return zarr.storage.FsspecStore.from_url(
            location.url, storage_options=location.storage_options or None, read_only=read_only
        )
    return zarr.storage.LocalStore(location.url, read_only=read_only)


def with_retries(action: Callable[[], Any], *, attempts: int = 5, delay: float = 0.5) -> Any:
    """Run ``action``, retrying transient I/O errors with exponential back-off."""
    for attempt in range(attempts):
        try:
            return action()
        except (OSError, TimeoutError, ConnectionError) as exc:
            if attempt == attempts - 1 or isinstance(exc, (FileNotFoundError, PermissionError)):
                raise
            time.sleep(delay * 2**attempt)


@contextlib.contextmanager
def _quiet_progress_dir():
    """zarr warns about the ``_progress`` marker folder; it is ours, not part of the hierarchy."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*not recognized as a component of a Zarr")
        yield


def _exists(location: Location) -> bool:
    fs, path = filesystem(location)
    return with_retries(lambda: fs.exists(path.rstrip("/") + "/zarr.json"))


def _open_group(location: Location, mode: str = "r+") -> zarr.Group:
    try:
        with _quiet_progress_dir():
            return zarr.open_group(zarr_store(location, read_only=mode == "r"), mode=mode, zarr_format=3)
    except (FileNotFoundError, zarr.errors.GroupNotFoundError) as exc:
        raise StoreError(f"no dataset at {location.url}") from exc
    except (ValueError, KeyError, json.JSONDecodeError) as exc:
        raise StoreError(f"corrupt dataset at {location.url}: {exc}") from exc


def create_dataset(
    location: Location | str,
    arrays: Mapping[str, ArraySpec],
    *,
    coords: Mapping[str, xr.Variable] | None = None,
    attrs: Mapping[str, Any] | None = None,
    provenance_attrs: Mapping[str, Any] | None = None,
    compression: str = "blosc-zstd",
    overwrite: bool = False,
    inputs: Iterable = (),
) -> str:
    """Create an empty dataset, or reopen an unfinished one made with the same parameters.

    Returns ``"created"``, ``"resumed"`` (same parameters and inputs, incomplete) or
    ``"complete"`` (same parameters, already finished and intact: nothing to do).

    Only a path where nothing exists, an empty folder, or a store rayproc made is ever written
    (:func:`rayproc.storage.outputs.claim_store`); ``overwrite`` replaces only such a store.
    ``inputs`` (paths or URLs the output is computed from) are fingerprinted: a store made from
    other parameters or from inputs that have changed since, or a finished store with a missing
    or damaged chunk, is refused unless ``overwrite``.
    """
    location = resolve(location)
    inputs = [i for i in inputs if i is not None]
    kind = claim_store(location, inputs=inputs, overwrite=overwrite)
    prov = dict(provenance_attrs or {})
    prints = fingerprints(inputs, location.storage_options)
    if kind == "rayproc" and not overwrite:
        group = _open_group(location)
        old = group.attrs.asdict()
        if old.get("provenance", {}).get("parameters") != prov.get("parameters"):
            raise StoreError(
                f"{location.url} already holds a dataset made with other parameters; "
                "choose another output or pass --overwrite"
            )
        changed = [k for k, v in prints.items() if old.get(INPUTS_KEY, {}).get(k, v) != v]
        if changed:
            raise StoreError(f"input {changed[0]} has changed since {location.url} was started; "
                             "pass --overwrite to recompute it from the new input")
        if old.get(STATUS_KEY) == "complete":
            damage = first_damage(location, old.get(MANIFEST_KEY, {}))
            if damage:
                raise StoreError(f"{location.url} is marked complete but {damage}; pass --overwrite to recompute it")
            return "complete"
        return "resumed"
    if kind == "rayproc":
        with_retries(lambda: remove_store(location))

    coords = dict(coords or {})
    group = zarr.open_group(zarr_store(location), mode="w", zarr_format=3)
    codecs = _codecs(compression)
    for name, variable in coords.items():
        _write_whole_array(group, name, variable, codecs)
    for name, spec in arrays.items():
        arr = group.create_array(
            name,
            shape=spec.shape,
            dtype=spec.dtype,
            chunks=spec.chunks or spec.shape,
            dimension_names=spec.dims,
            compressors=codecs,
            fill_value=spec.fill_value,
            config={"write_empty_chunks": True},
        )
        extra = [c for c, v in coords.items() if c not in v.dims and set(v.dims) <= set(spec.dims)]
        attrs_here = dict(spec.attrs)
        if extra:
            attrs_here["coordinates"] = " ".join(extra)
        arr.attrs.update(attrs_here)
    group.attrs.update({**dict(attrs or {}), "provenance": prov, INPUTS_KEY: prints, STATUS_KEY: "incomplete"})
    return "created"


def write_task(
    location: Location | str,
    task: str,
    writes: Mapping[str, tuple[tuple[slice, ...] | int, np.ndarray]],
    *,
    table: Mapping[str, np.ndarray] | None = None,
) -> None:
    """Write ``{array: (region, values)}`` then mark ``task`` done. Idempotent: rerunning rewrites.

    ``table`` (named 1D arrays, e.g. the spots found by this task) is stored in the task's marker
    and read back by :func:`task_tables`, so per-task results survive an interrupted run.
    """
    location = resolve(location)
    group = _open_group(location)
    for name, (region, values) in writes.items():
        arr = group[name]
        with_retries(lambda: arr.__setitem__(region, values))
    fs, path = filesystem(location)
    folder = f"{path.rstrip('/')}/{PROGRESS_DIR}"
    if not location.is_remote:
        fs.makedirs(folder, exist_ok=True)
    payload = b"done"
    if table is not None:
        buffer = io.BytesIO()
        np.savez(buffer, **{k: np.asarray(v) for k, v in table.items()})
        payload = buffer.getvalue()
    with_retries(lambda: fs.pipe_file(f"{folder}/{task}", payload))


def task_tables(location: Location | str, tasks: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
    """The ``table`` each task stored with :func:`write_task`, by task name."""
    location = resolve(location)
    fs, path = filesystem(location)
    folder = f"{path.rstrip('/')}/{PROGRESS_DIR}"
    out = {}
    for task in tasks:
        payload = with_retries(lambda: fs.cat_file(f"{folder}/{task}"))
        with np.load(io.BytesIO(payload), allow_pickle=False) as npz:
            out[task] = {k: npz[k] for k in npz.files}
    return out


def append_variables(location: Location | str, dataset: xr.Dataset, *, compression: str = "blosc-zstd") -> None:
    """Add the variables and coords of a small in-memory Dataset to an existing store.

    Used at the end of a run (e.g. the spot table gathered from all tasks); existing arrays of
    the same name are replaced, so the step is idempotent.
    """
    location = resolve(location)
    group = _open_group(location)
    codecs = _codecs(compression)
    for name, var in {**dataset.coords, **dataset.data_vars}.items():
        _write_whole_array(group, name, var.variable, codecs)


def _write_whole_array(group: zarr.Group, name: str, variable: xr.Variable, codecs) -> None:
    """Write a small array in one chunk (coordinates, tables); strings as variable-length text."""
    values = np.asarray(variable.values)
    text = values.dtype.kind in "UO"
    arr = group.create_array(
        name, shape=values.shape, dtype=str if text else values.dtype, chunks=values.shape or None,
        dimension_names=variable.dims, compressors=None if text else codecs,
        fill_value=None if text else 0, overwrite=True,
    )
    with_retries(lambda: arr.__setitem__(Ellipsis, values.astype(str) if text else values))
    arr.attrs.update(dict(variable.attrs))


def done_tasks(location: Location | str) -> set[str]:
    """Names of the tasks whose writes have finished."""
    location = resolve(location)
    fs, path = filesystem(location)
    folder = f"{path.rstrip('/')}/{PROGRESS_DIR}"
    fs.invalidate_cache()
    if not with_retries(lambda: fs.exists(folder)):
        return set()
    return {p.rstrip("/").rsplit("/", 1)[-1] for p in with_retries(lambda: fs.ls(folder, detail=False))}


def finalize(location: Location | str, expected_tasks: Iterable[str], **extra_attrs) -> None:
    """Mark the store complete, but only if every expected task is done."""
    location = resolve(location)
    missing = set(expected_tasks) - done_tasks(location)
    if missing:
        raise StoreError(
            f"{location.url}: {len(missing)} task(s) not written (e.g. {sorted(missing)[0]}); "
            "rerun the same command to resume"
        )
    _mark_complete(location, extra_attrs)


def _mark_complete(location: Location, extra_attrs: Mapping[str, Any] | None = None) -> None:
    """Record the chunks written (names and sizes) and the status in one metadata write."""
    group = _open_group(location)
    group.attrs.update({**dict(extra_attrs or {}), MANIFEST_KEY: chunk_manifest(location), STATUS_KEY: "complete"})
    # consolidated metadata: plain ``xarray.open_zarr(path)`` opens the store without listing it
    # (no warnings about rayproc's ``_progress`` bookkeeping or missing consolidated metadata)
    with _quiet_progress_dir(), warnings.catch_warnings():
        warnings.simplefilter("ignore", category=UserWarning)
        zarr.consolidate_metadata(zarr_store(location), zarr_format=3)


def is_complete(location: Location | str) -> bool:
    location = resolve(location)
    return _exists(location) and _open_group(location, "r").attrs.get(STATUS_KEY) == "complete"


def open_dataset(location: Location | str, *, require_complete: bool = True) -> xr.Dataset:
    """Open a dataset lazily as an xarray Dataset (named dims, coords, provenance attrs)."""
    location = resolve(location)
    if not _exists(location):
        raise StoreError(f"no dataset at {location.url} (no zarr.json found)")
    group = _open_group(location, "r")
    if require_complete and group.attrs.get(STATUS_KEY, "complete") != "complete":
        raise StoreError(
            f"{location.url} is incomplete (a run was interrupted); rerun its command to resume"
        )
    if group.attrs.get(STATUS_KEY) == "complete":
        damage = first_damage(location, dict(group.attrs.get(MANIFEST_KEY, {})))
        if damage:
            raise StoreError(f"{location.url} is damaged: {damage}")
    try:
        with _quiet_progress_dir():
            return xr.open_zarr(group.store, consolidated=False, chunks=None)
    except Exception as exc:  # zarr/xarray raise many types for broken metadata
        raise StoreError(f"cannot read dataset at {location.url}: {exc}") from exc


def write_dataset(
    location: Location | str,
    dataset: xr.Dataset,
    *,
    chunks: Mapping[str, Mapping[str, int]] | None = None,
    provenance_attrs: Mapping[str, Any] | None = None,
    compression: str = "blosc-zstd",
    overwrite: bool = False,
    inputs: Iterable = (),
) -> None:
    """Write an in-memory Dataset in one go and mark it complete (small datasets, ingest)."""
    location = resolve(location)
    arrays = {
        name: ArraySpec(
            dims=tuple(var.dims),
            shape=var.shape,
            dtype=str(var.dtype),
            chunks=_chunks_for(var, (chunks or {}).get(name)),
            attrs=dict(var.attrs),
        )
        for name, var in dataset.data_vars.items()
    }
    coords = {name: c.variable for name, c in dataset.coords.items()}
    status = create_dataset(
        location, arrays, coords=coords, attrs=dataset.attrs,
        provenance_attrs=provenance_attrs, compression=compression, overwrite=overwrite, inputs=inputs,
    )
    if status == "complete":
        return
    group = _open_group(location)
    for name, var in dataset.data_vars.items():
        with_retries(lambda: group[name].__setitem__(Ellipsis, var.values))
    _mark_complete(location)


def _chunks_for(var: xr.Variable, chunks: Mapping[str, int] | None) -> tuple[int, ...]:
    chunks = chunks or {}
    return tuple(min(int(chunks.get(d, n)), n) or 1 for d, n in zip(var.dims, var.shape))


__all__ = [
    "ArraySpec",
    "provenance",
    "command_line",
    "zarr_store",
    "with_retries",
    "create_dataset",
    "write_task",
    "done_tasks",
    "task_tables",
    "append_variables",
    "finalize",
    "is_complete",
    "open_dataset",
    "write_dataset",
]
