"""Where rayproc may write: outputs it made itself, never a user's files.

Rules (checked before any computing):

* a store output is written only where nothing exists yet (or an empty folder), or into a
  store rayproc made (root attrs carry ``rayproc_status``); ``--overwrite`` replaces only such a
  store, and only when it holds nothing but what rayproc wrote there;
* a folder output (model directory, evaluation report) is written only where nothing exists,
  into an empty folder, or into a folder holding rayproc's marker file :data:`FOLDER_MARKER`;
* an output equal to, inside, or holding one of the command's inputs is refused;
* a local output must be writable (the nearest existing parent folder).

Inputs are fingerprinted (:func:`fingerprint`: sizes and modification times of their files, or
a complete rayproc store's own chunk manifest), so a run resumed against a changed input is
refused instead of mixing old and new results.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path

from rayproc.errors import StoreError
from rayproc.storage.location import Location, filesystem, resolve

STATUS_KEY = "rayproc_status"
MANIFEST_KEY = "rayproc_chunks"
INPUTS_KEY = "rayproc_inputs"
FOLDER_MARKER = ".rayproc-output"
_PROGRESS_DIR = "_progress"


def _local_path(location: Location) -> Path | None:
    return None if location.is_remote else Path(location.url)


def _within(inner: str, outer: str) -> bool:
    inner, outer = inner.rstrip("/"), outer.rstrip("/")
    return inner == outer or inner.startswith(outer + "/")


def _input_path(source: str) -> str:
    """The file part of an input spec (``file.h5:/dataset`` names ``file.h5``)."""
    if "://" not in source and any(ext + ":" in source for ext in (".h5", ".hdf5", ".nxs")):
        return source.rsplit(":", 1)[0]
    return source


def _comparable(location: Location) -> str:
    """The URL, or for a local path the real path (links resolved), to compare locations."""
    return location.url if location.is_remote else os.path.realpath(location.url)


def check_apart(out: Location, inputs: Iterable[str | Location | None]) -> None:
    """Refuse an output that is, lies inside, or holds one of ``inputs``."""
    for source in inputs:
        if source is None:
            continue
        src = source if isinstance(source, Location) else resolve(_input_path(str(source)))
        a, b = _comparable(out), _comparable(src)
        if _within(a, b):
            raise StoreError(f"output {out.url} is the input {src.url} or lies inside it; choose another output")
        if _within(b, a):
            raise StoreError(f"output {out.url} holds the input {src.url}; choose another output")


def check_writable(location: Location) -> None:
    """A local output must be creatable: its nearest existing parent is a writable folder."""
    path = _local_path(location)
    if path is None:
        return
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe != path and not probe.is_dir():
        raise StoreError(f"cannot create {path}: {probe} is a file, not a folder")
    read_only = bool(os.statvfs(probe).f_flag & os.ST_RDONLY) if hasattr(os, "statvfs") else False
    if read_only or not os.access(probe, os.W_OK | os.X_OK):
        raise StoreError(f"cannot write {path}: {probe} is not writable (read-only or no permission)")


def _entries(location: Location) -> list[str]:
    fs, path = filesystem(location)
    try:
        return [p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)]
    except FileNotFoundError:
        return []


def store_kind(location: Location) -> str:
    """``"absent"``, ``"empty"`` (an empty folder), ``"rayproc"`` (a store rayproc made),
    ``"file"`` or ``"foreign"`` (anything else: a user's folder or another program's store)."""
    fs, path = filesystem(location)
    if location.is_remote:
        entries = _entries(location)
        if not entries:
            return "absent"
    else:
        p = Path(path)
        if not p.exists() and not p.is_symlink():
            return "absent"
        if not p.is_dir():
            return "file"
        if not any(p.iterdir()):
            return "empty"
    attrs = _root_attrs(location)
    return "rayproc" if attrs is not None and STATUS_KEY in attrs else "foreign"


def _root_attrs(location: Location) -> dict | None:
    fs, path = filesystem(location)
    try:
        meta = json.loads(fs.cat_file(path.rstrip("/") + "/zarr.json"))
    except (FileNotFoundError, OSError, ValueError):
        return None
    return meta.get("attributes", {}) if isinstance(meta, dict) else None


def claim_store(location: Location, *, inputs: Iterable = (), overwrite: bool = False) -> str:
    """Check that rayproc may write the store ``location``; return its :func:`store_kind`.

    Raises :class:`StoreError` (one line) when the output is a file, a folder or store rayproc
    did not make, overlaps an input, or cannot be written.
    """
    check_apart(location, inputs)
    _check_not_inside_store(location)
    kind = store_kind(location)
    if kind == "file":
        raise StoreError(f"output {location.url} is an existing file; choose another output")
    if kind == "foreign":
        raise StoreError(f"output {location.url} exists and is not a rayproc store; rayproc never writes into "
                         "or replaces other folders (--overwrite included); choose another output")
    if kind == "rayproc" and overwrite:
        _check_only_rayproc_entries(location)
    check_writable(location)
    return kind


def _check_not_inside_store(location: Location) -> None:
    path = _local_path(location)
    for parent in [] if path is None else path.parents:
        if (parent / "zarr.json").is_file():
            raise StoreError(f"output {location.url} lies inside the zarr store {parent}; choose another output")


def _check_only_rayproc_entries(location: Location) -> None:
    """Every entry of the store is its metadata, its bookkeeping or an array (``NAME/zarr.json``)."""
    fs, path = filesystem(location)
    for name in _entries(location):
        if name in ("zarr.json", _PROGRESS_DIR) or fs.exists(f"{path.rstrip('/')}/{name}/zarr.json"):
            continue
        raise StoreError(f"--overwrite refused: {location.url} holds {name!r}, which rayproc did not write; "
                         "move it away or choose another output")


def remove_store(location: Location) -> None:
    """Delete a store that :func:`claim_store` accepted for ``--overwrite``."""
    fs, path = filesystem(location)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def claim_folder(path: str | os.PathLike, *, inputs: Iterable = (), create: bool = True) -> Path:
    """Check (and with ``create``, make) a local output folder for reports and models; return it.

    An existing folder is reused only when empty or marked as rayproc's (:data:`FOLDER_MARKER`).
    ``create=False`` only checks (nothing is written): call it before computing, and
    :func:`make_folder` when the results are ready.
    """
    location = resolve(str(path))
    if location.is_remote:
        raise StoreError(f"{location.url}: this output must be a local folder")
    check_apart(location, inputs)
    folder = Path(location.url)
    if folder.exists() and not folder.is_dir():
        raise StoreError(f"output {folder} is an existing file; choose another output folder")
    if folder.is_dir() and any(folder.iterdir()) and not (folder / FOLDER_MARKER).is_file():
        raise StoreError(f"output folder {folder} exists, is not empty and was not made by rayproc; "
                         "choose another output folder")
    check_writable(location)
    return make_folder(folder) if create else folder


def make_folder(folder: Path) -> Path:
    """Create ``folder`` (checked by :func:`claim_folder`) with rayproc's marker in it."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / FOLDER_MARKER).write_text("made by rayproc; rayproc may replace the files it wrote here\n")
    except OSError as exc:
        raise StoreError(f"cannot write {folder}: {exc.strerror or exc}") from exc
    return folder


# ------------------------------------------------------------------ integrity


def chunk_manifest(location: Location) -> dict[str, dict[str, int]]:
    """``{array: {chunk key: size in bytes}}`` of the chunk files present in a store."""
    fs, path = filesystem(location)
    root = path.rstrip("/")
    fs.invalidate_cache()
    manifest: dict[str, dict[str, int]] = {}
    for key, info in fs.find(root, detail=True).items():
        parts = key[len(root):].strip("/").split("/")
        for i in range(1, len(parts)):
            if parts[i] == "c" and all(p.isdigit() for p in parts[i + 1:]):
                manifest.setdefault("/".join(parts[:i]), {})["/".join(parts[i:])] = int(info.get("size") or 0)
                break
    return manifest


def first_damage(location: Location, recorded: dict, arrays: Iterable[str] | None = None) -> str | None:
    """The first chunk that is missing or changed size since ``recorded``; None if intact."""
    present = chunk_manifest(location)
    names = sorted(recorded) if arrays is None else [a for a in sorted(recorded) if a in set(arrays)]
    fs, path = filesystem(location)
    for array in names:
        if not fs.exists(f"{path.rstrip('/')}/{array}/zarr.json"):
            return f"array {array!r} has lost its metadata ({array}/zarr.json)"
        have = present.get(array, {})
        for key, size in sorted(recorded[array].items()):
            if key not in have:
                return f"chunk {array}/{key} is missing"
            if have[key] != size:
                return f"chunk {array}/{key} is damaged ({have[key]} bytes, {size} written)"
    return None


def fingerprint(source: str | Location | None, storage_options: dict | None = None) -> str | None:
    """A short digest of an input: a rayproc store's manifest and creation time, else the names,
    sizes and modification times of its files. Changes when the input changes."""
    if source is None:
        return None
    location = source if isinstance(source, Location) else resolve(_input_path(str(source)), storage_options)
    attrs = _root_attrs(location)
    digest = hashlib.sha256()
    if attrs is not None and MANIFEST_KEY in attrs:
        digest.update(json.dumps([attrs[MANIFEST_KEY], attrs.get("provenance", {}).get("created_utc")],
                                 sort_keys=True).encode())
        return digest.hexdigest()[:16]
    fs, path = filesystem(location)
    try:
        found = fs.find(path, detail=True, withdirs=False) if fs.isdir(path) else {path: fs.info(path)}
    except (FileNotFoundError, OSError):
        return None
    for name in sorted(found):
        info = found[name]
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or info.get("created")
        digest.update(f"{name[len(path):]}|{info.get('size')}|{stamp}\n".encode())
    return digest.hexdigest()[:16]


def fingerprints(inputs: Iterable, storage_options: dict | None = None) -> dict[str, str]:
    """``{input url: fingerprint}`` (urls resolved, so that a relative path names one input)."""
    out = {}
    for source in inputs:
        value = fingerprint(source, storage_options)
        if value is not None:
            key = source.url if isinstance(source, Location) else resolve(str(source), storage_options).url
            out[key] = value
    return out


__all__ = [
    "FOLDER_MARKER", "check_apart", "check_writable", "store_kind", "claim_store", "remove_store", "claim_folder", "make_folder",
    "chunk_manifest", "first_damage", "fingerprint", "fingerprints",
]
