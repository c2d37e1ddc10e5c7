"""Model directories and report folders in object storage (``s3://``), through local copies.

A model directory is a handful of small files (:mod:`rayproc.models.artifact`), loaded from a
local path. A stage given ``--model s3://bucket/models/m`` reads a verified local copy
(:func:`local_model_dir`; the weights' sha256 is checked when loaded, as for any directory); a
training run given ``--out s3://bucket/models/m`` trains into a local staging folder named after
the URL, its checkpoints in ``s3://bucket/models/m/checkpoints`` unless ``--storage`` says
otherwise (so a rerun on another machine resumes), and uploads the model files when it is done
(:func:`staged_model_dir`). On a KubeRay RayJob, whose head node is deleted when the job ends,
that is how a trained model survives the job.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import inspect
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rayproc.errors import InputError
from rayproc.storage.dataset import with_retries
from rayproc.storage.location import filesystem, resolve

CHECKPOINTS = "checkpoints"
# What a model directory holds besides checkpoints (rayproc.models.artifact and the training logs).
MODEL_FILES = ("model.safetensors", "config.json", "metrics.json", "provenance.json", "MODEL_CARD.md",
               "metrics.jsonl", "loss_curve.png", ".rayproc-output")


def _local_folder(kind: str, url: str) -> Path:
    """A local folder for ``url``, the same on every machine (so a training run's name is too)."""
    digest = hashlib.sha1(url.encode()).hexdigest()[:12]
    name = url.rstrip("/").rsplit("/", 1)[-1] or "model"
    return Path(tempfile.gettempdir()) / f"rayproc-{kind}" / digest / name


def _prefix(location) -> tuple:
    """The filesystem of ``location`` and its path without a trailing slash."""
    fs, path = filesystem(location)
    return fs, path.rstrip("/")


def _upload(fs, staging: Path, root: str, files) -> None:
    """Put each of ``files`` (under ``staging``) at the same relative path under ``root``."""
    for file in files:
        with_retries(lambda: fs.put_file(str(file), f"{root}/{file.relative_to(staging).as_posix()}"))


def is_remote_dir(path: str | None, storage_options: dict | None = None) -> bool:
    """Whether ``path`` names a remote (object storage) location."""
    return path is not None and not isinstance(path, Path) and "://" in str(path) and \
        resolve(str(path), storage_options).is_remote


def local_model_dir(model, storage_options: dict | None = None):
    """``model`` itself, unless it is an ``s3://`` model directory: then a fresh local copy of it."""
    if not isinstance(model, str) or not is_remote_dir(model, storage_options):
        return model
    location = resolve(model, storage_options)
    fs, root = _prefix(location)
    if not with_retries(lambda: fs.exists(f"{root}/config.json")):
        raise InputError(f"no model directory at {location.url} (no config.json found).")
    local = _local_folder("models", location.url)
    local.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        remote = f"{root}/{name}"
        if with_retries(lambda: fs.exists(remote)):
            with_retries(lambda: fs.get(remote, str(local / name)))
        elif (local / name).exists():
            (local / name).unlink()  # a file of an earlier copy that the directory no longer has
    return str(local)


@contextmanager
def staged_model_dir(out: str, storage_options: dict | None = None,
                     storage: str | None = None) -> Iterator[tuple[str, str | None]]:
    """``(folder to train into, checkpoint storage)`` for a model directory ``out``.

    A local ``out`` is used as it is (``storage`` unchanged). For an ``s3://`` ``out``: a local
    staging folder named after the URL, checkpoints in ``out/checkpoints`` (unless ``storage``),
    and on success the model files uploaded to ``out``. A remote ``out`` must be empty or hold a
    rayproc model directory (``config.json``); anything else is refused before training.
    """
    if not is_remote_dir(out, storage_options):
        yield out, storage
        return
    location = resolve(out, storage_options)
    fs, root = _prefix(location)
    if with_retries(lambda: fs.exists(root)):
        held = {entry.rstrip("/").rsplit("/", 1)[-1] for entry in with_retries(lambda: fs.ls(root, detail=False))}
        foreign = sorted(held - set(MODEL_FILES) - {CHECKPOINTS})
        if foreign or (held - {CHECKPOINTS} and "config.json" not in held):
            raise InputError(f"{location.url} holds files rayproc did not write ({', '.join(foreign[:3]) or 'no model'}); "
                             "give an empty prefix or a rayproc model directory.")
    staging = _local_folder("staging", location.url)
    staging.parent.mkdir(parents=True, exist_ok=True)
    yield str(staging), storage or f"{location.url}/{CHECKPOINTS}"
    _upload(fs, staging, root, [staging / name for name in MODEL_FILES if (staging / name).is_file()])


def model_out(train: Callable) -> Callable:
    """Let a training function's ``out`` (and ``init_model``/``model_dir``) be ``s3://`` model directories.

    ``train`` takes ``out`` (a local folder), ``storage`` and ``storage_options`` keywords and
    returns a report with an ``out`` field; the wrapped function trains through
    :func:`staged_model_dir` and reports the URL.
    """
    signature = inspect.signature(train)

    @functools.wraps(train)
    def wrapped(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        arguments = bound.arguments
        options = arguments.get("storage_options")
        for name in ("init_model", "model_dir"):
            if name in arguments:
                arguments[name] = local_model_dir(arguments[name], options)
        out = arguments["out"]
        with staged_model_dir(out, options, arguments.get("storage")) as (folder, storage):
            arguments["out"], arguments["storage"] = folder, storage
            report = train(*bound.args, **bound.kwargs)
        return dataclasses.replace(report, out=out) if folder != out else report

    return wrapped


def report_out(make_report: Callable) -> Callable:
    """Let a function that writes a report folder ``out`` write it to ``s3://`` too.

    The report is written into a local staging folder named after the URL, then every file is
    uploaded; the returned report's ``out`` (and ``files``) name the remote copies. A remote
    ``out`` must be empty or hold an earlier rayproc report (its ``.rayproc-output`` marker).
    """
    signature = inspect.signature(make_report)

    @functools.wraps(make_report)
    def wrapped(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out, options = bound.arguments["out"], bound.arguments.get("storage_options")
        if not is_remote_dir(out, options):
            return make_report(*bound.args, **bound.kwargs)
        location = resolve(out, options)
        fs, root = _prefix(location)
        if with_retries(lambda: fs.exists(root)) and not with_retries(lambda: fs.exists(f"{root}/.rayproc-output")):
            raise InputError(f"{location.url} holds files rayproc did not write; give an empty prefix or an "
                             "earlier rayproc report.")
        staging = _local_folder("reports", location.url)
        if staging.exists():  # a report of an earlier run: rayproc's own staging copy
            for old in staging.rglob("*"):
                if old.is_file():
                    old.unlink()
        bound.arguments["out"] = str(staging)
        report = make_report(*bound.args, **bound.kwargs)
        _upload(fs, staging, root, [file for file in sorted(staging.rglob("*")) if file.is_file()])
        changes = {"out": location.url}
        if hasattr(report, "files"):
            changes["files"] = [f"{location.url}/{Path(f).relative_to(staging).as_posix()}" for f in report.files]
        return dataclasses.replace(report, **changes)

    return wrapped


__all__ = ["CHECKPOINTS", "MODEL_FILES", "is_remote_dir", "local_model_dir", "model_out", "report_out",
           "staged_model_dir"]
