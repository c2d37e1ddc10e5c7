"""The model directory: a trained network as plain files anyone can inspect.

Layout (format version 1)::

    MODEL_DIR/
        model.safetensors   weights (safetensors: tensors only, nothing executable)
        config.json         format version, family, architecture, normalisation, gap widths,
                            patch size and the sha256 of the weights file
        metrics.json        training metrics (best epoch, per-width in-gap PCC, ...)
        provenance.json     how the model was made (command, parameters, data, base model)

:func:`load_model` never unpickles anything: it reads JSON, checks the weights' sha256, builds
the network from the family's registered builder and loads the safetensors tensors. Directories
written by older versions of the format are migrated on load (see ``_MIGRATIONS``); newer ones
are refused with a message saying so.

A *family* names the task and selects the builder (``"bcdi"``: the BCDI gap-inpainting nets
of :mod:`rayproc.bcdi.network`). Other families call :func:`register_family` or add a
line to ``_BUILTIN_FAMILIES``.

Stages get their network from :func:`resolve_model`: a model directory, None (the model shipped
for the family, ``rayproc/weights/<family>-default``) or a network given programmatically, and
a :class:`ResolvedModel` saying what it is (for provenance and normalisation).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.resources
import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rayproc import __version__
from rayproc.errors import InputError, RayprocError

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
PROVENANCE_FILE = "provenance.json"
DEFAULT_MODEL = "bcdi-default"
# family -> folder of rayproc/weights holding the model shipped for it
DEFAULT_MODELS = {"bcdi": DEFAULT_MODEL, "labdct": "labdct-default"}

# family -> (module, function) of a builder ``f(architecture: dict) -> nn.Module``, imported on use.
_BUILTIN_FAMILIES = {
    "bcdi": ("rayproc.bcdi.network", "build_bcdi_net"),
    "labdct": ("rayproc.labdct.network", "build_labdct_net"),
}
_REGISTERED: dict[str, Callable[[dict], nn.Module]] = {}


@dataclass(frozen=True)
class ModelInfo:
    """What a model directory says about its network (everything but the weights)."""

    family: str
    architecture: dict
    sha256: str
    format_version: int = FORMAT_VERSION
    rayproc_version: str = __version__
    normalisation: dict = field(default_factory=dict)
    gap_widths: tuple[int, ...] | None = None
    patch_size: int | None = None
    metrics: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    path: str = ""

    def to_dict(self) -> dict:
        return {
            "family": self.family,
            "architecture": dict(self.architecture),
            "sha256": self.sha256,
            "format_version": self.format_version,
            "rayproc_version": self.rayproc_version,
            "normalisation": dict(self.normalisation),
            "gap_widths": None if self.gap_widths is None else list(self.gap_widths),
            "patch_size": self.patch_size,
            "metrics": dict(self.metrics),
            "provenance": dict(self.provenance),
            "path": self.path,
        }


def register_family(name: str, builder: Callable[[dict], nn.Module]) -> None:
    """Let :func:`load_model` build networks of family ``name`` with ``builder(architecture)``."""
    _REGISTERED[name] = builder


def _builder(family: str) -> Callable[[dict], nn.Module]:
    if family in _REGISTERED:
        return _REGISTERED[family]
    if family in _BUILTIN_FAMILIES:
        module, name = _BUILTIN_FAMILIES[family]
        return getattr(importlib.import_module(module), name)
    known = sorted({*_REGISTERED, *_BUILTIN_FAMILIES})
    raise RayprocError(f"unknown model family {family!r}; this rayproc knows {', '.join(known)}.")


def default_model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Folder of a model shipped with the package (``rayproc/weights/<name>``; may be absent)."""
    return Path(str(importlib.resources.files("rayproc"))) / "weights" / name


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_atomic(path: Path, write: Callable[[str], None]) -> None:
    """Write through ``write(temporary_path)`` next to ``path``, then rename it into place."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_json(path: Path, value: Any) -> None:
    text = json.dumps(value, indent=2, sort_keys=True, default=str) + "\n"
    _write_atomic(path, lambda p: Path(p).write_text(text))


def save_model(
    directory: str | os.PathLike,
    model: nn.Module,
    config: Any,
    *,
    family: str = "bcdi",
    metrics: Mapping[str, Any] | None = None,
    provenance: Mapping[str, Any] | None = None,
    normalisation: Mapping[str, Any] | None = None,
    gap_widths=None,
    patch_size: int | None = None,
) -> ModelInfo:
    """Write ``model`` as a model directory (format :data:`FORMAT_VERSION`).

    Parameters
    ----------
    directory : path
        Created if needed; existing model files in it are replaced.
    model : torch.nn.Module
        The network (a DDP wrapper is unwrapped).
    config : dataclass with ``to_dict`` or dict
        The architecture config the family's builder takes.
    family : str, optional
        Selects the builder on load (see :func:`register_family`).
    metrics, provenance, normalisation : dict, optional
        Written to ``metrics.json``, ``provenance.json`` and ``config.json``.
    gap_widths : sequence of int, optional
        Gap widths the model was trained on (BCDI).
    patch_size : int, optional
        Edge of the portions the model works on.

    Returns
    -------
    ModelInfo
        What :func:`load_model` will report for the directory.

    Notes
    -----
    The weights go first and ``config.json`` (holding their sha256) last, each written to a
    temporary file and renamed, so an interrupted save never leaves a directory that loads.
    """
    from safetensors.torch import save_file

    _builder(family)  # refuse a family that could not be loaded back
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    module = getattr(model, "module", model)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    _write_atomic(directory / WEIGHTS_FILE, lambda p: save_file(tensors, p, metadata={"format": "pt"}))
    info = ModelInfo(
        family=family,
        architecture=config.to_dict() if hasattr(config, "to_dict") else dict(config),
        sha256=file_sha256(directory / WEIGHTS_FILE),
        normalisation=dict(normalisation or {}),
        gap_widths=None if gap_widths is None else tuple(int(w) for w in gap_widths),
        patch_size=None if patch_size is None else int(patch_size),
        metrics=dict(metrics or {}),
        provenance=dict(provenance or {}),
        path=str(directory),
    )
    _write_json(directory / METRICS_FILE, info.metrics)
    _write_json(directory / PROVENANCE_FILE, info.provenance)
    _write_json(directory / CONFIG_FILE, _config_json(info))
    return info


def _config_json(info: ModelInfo) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "rayproc_version": info.rayproc_version,
        "family": info.family,
        "architecture": info.architecture,
        "normalisation": info.normalisation,
        "gap_widths": None if info.gap_widths is None else list(info.gap_widths),
        "patch_size": info.patch_size,
        "weights": {"file": WEIGHTS_FILE, "sha256": info.sha256},
    }


def _v0_to_v1(config: dict) -> dict:
    """Format 0 (rayproc before 0.1): flat keys, ``arch``, ``weights_file`` and ``sha256``."""
    return {
        "format_version": 1,
        "rayproc_version": config.get("rayproc_version", "<0.1"),
        "family": "bcdi",
        "architecture": config["arch"],
        "normalisation": {"transform": config.get("normalisation", "log1p-minmax")},
        "gap_widths": config.get("gap_widths"),
        "patch_size": config.get("patch_size"),
        "weights": {"file": config.get("weights_file", WEIGHTS_FILE), "sha256": config["sha256"]},
    }


# from-version -> function returning the config.json of the next version
_MIGRATIONS: dict[int, Callable[[dict], dict]] = {0: _v0_to_v1}


def _read_json(path: Path, *, required: bool) -> dict:
    if not path.is_file():
        if required:
            raise RayprocError(f"no model at {path.parent} ({path.name} not found)")
        return {}
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RayprocError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise RayprocError(f"{path} must hold a JSON object; got {type(value).__name__} instead.")
    return value


def _current_config(raw: dict, directory: Path) -> tuple[dict, int]:
    """``config.json`` migrated to the current format, and the version found on disk."""
    found = raw.get("format_version", 0)
    if not isinstance(found, int) or found < 0:
        raise RayprocError(f"{directory}: invalid format_version {found!r} in {CONFIG_FILE}.")
    if found > FORMAT_VERSION:
        raise RayprocError(
            f"{directory} was written in model format {found} by rayproc "
            f"{raw.get('rayproc_version', '?')}; this rayproc {__version__} reads formats up to "
            f"{FORMAT_VERSION}: upgrade rayproc to load it."
        )
    config = raw
    try:
        for version in range(found, FORMAT_VERSION):
            config = _MIGRATIONS[version](config)
    except KeyError as exc:
        raise RayprocError(f"{directory}: {CONFIG_FILE} (format {found}) lacks {exc}.") from exc
    return config, found


def read_model_info(directory: str | os.PathLike) -> ModelInfo:
    """The :class:`ModelInfo` of a model directory, without loading or checking the weights."""
    directory = Path(directory)
    config, found = _current_config(_read_json(directory / CONFIG_FILE, required=True), directory)
    try:
        return ModelInfo(
            family=str(config["family"]),
            architecture=dict(config["architecture"]),
            sha256=str(config["weights"]["sha256"]),
            format_version=found,
            rayproc_version=str(config.get("rayproc_version", "?")),
            normalisation=dict(config.get("normalisation") or {}),
            gap_widths=None if config.get("gap_widths") is None else tuple(config["gap_widths"]),
            patch_size=config.get("patch_size"),
            metrics=_read_json(directory / METRICS_FILE, required=False),
            provenance=_read_json(directory / PROVENANCE_FILE, required=False),
            path=str(directory),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise RayprocError(f"{directory}: malformed {CONFIG_FILE} ({type(exc).__name__}: {exc}).") from exc


def _weights_path(directory: Path, config: dict) -> Path:
    name = str(config["weights"]["file"])
    if Path(name).name != name:  # a plain file name inside the directory, never a path
        raise RayprocError(f"{directory}: weights file must be a plain name; got {name!r} instead.")
    return directory / name


def load_model(directory: str | os.PathLike, *, device: str | torch.device = "cpu",
               family: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """Load a model directory: check the weights' sha256, build the network, load the tensors.

    Parameters
    ----------
    directory : path
        A directory written by :func:`save_model` (any supported format version).
    device : str or torch.device, optional
        Where to put the network.
    family : {"bcdi", "labdct"}, optional
        The family the caller needs; a model of another family is refused (one line).

    Returns
    -------
    model : torch.nn.Module
        In eval mode.
    info : ModelInfo
        ``format_version`` is the version found on disk (before migration).

    Raises
    ------
    RayprocError
        No model there, a format newer than this rayproc reads, weights that do not match their
        sha256 (corrupt or modified), or weights that do not fit the architecture.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    info = read_model_info(directory)
    if family is not None and info.family != family:
        raise RayprocError(f"{directory} is a {info.family!r} model, not a {family.upper()} one; this command needs "
                           f"a {family!r} model (pass --model with a {family.upper()} model directory)")
    config, _ = _current_config(_read_json(directory / CONFIG_FILE, required=True), directory)
    weights = _weights_path(directory, config)
    if not weights.is_file():
        raise RayprocError(f"{directory}: weights file {weights.name} not found.")
    actual = file_sha256(weights)
    if actual != info.sha256:
        raise RayprocError(
            f"{weights} does not match the sha256 in {CONFIG_FILE} (expected {info.sha256[:12]}..., "
            f"got {actual[:12]}...): the file is corrupt or was modified; refusing to load it."
        )
    model = _builder(info.family)(dict(info.architecture))
    try:
        model.load_state_dict(load_file(weights, device="cpu"), strict=True)
    except (RuntimeError, SafetensorError) as exc:
        first = str(exc).strip().splitlines()[0]
        raise RayprocError(f"{weights} does not fit its {info.family} architecture: {first}") from exc
    return model.to(device).eval(), info


# ------------------------------------------------------------------ resolving a stage's model

# Keys of a model's provenance description per family: (from a directory, given as a network).
# Kept as each family's stages have always recorded them: a resumed run compares them.
_DESCRIPTION_KEYS = {
    "bcdi": (("source", "sha256", "architecture", "patch_size"), ("source", "sha256", "architecture", "patch_size")),
    "labdct": (("source", "sha256", "architecture"), ("source", "architecture")),
}
_ALL_KEYS = ("source", "sha256", "architecture", "patch_size")


@dataclass(frozen=True)
class ResolvedModel:
    """What a stage knows about the network it resolved (:func:`resolve_model`).

    Attributes
    ----------
    family : str
        The family the stage asked for.
    source : str
        The model directory, or the class name of a network given programmatically.
    sha256 : str or None
        Of the weights file (a directory), of the state dict (a network of a family whose
        description records it), else None.
    architecture : dict or None
        The architecture config (None for a network without a ``config.to_dict()``).
    patch_size : int or None
        Edge of the portions or tiles the model was trained on (None when unknown).
    normalisation : dict
        The directory's normalisation (e.g. LabDCT's ``scale``); empty for a network.
    info : ModelInfo or None
        Everything the directory says (metrics, provenance, format); None for a network.
    """

    family: str
    source: str
    sha256: str | None
    architecture: dict | None
    patch_size: int | None = None
    normalisation: dict = field(default_factory=dict)
    info: ModelInfo | None = None

    def describe(self) -> dict:
        """The JSON-able description stages record in their provenance."""
        from_directory, given = _DESCRIPTION_KEYS.get(self.family, (_ALL_KEYS, _ALL_KEYS))
        values = {"source": self.source, "sha256": self.sha256, "architecture": self.architecture,
                  "patch_size": self.patch_size}
        return {key: values[key] for key in (given if self.info is None else from_directory)}


def has_default_model(family: str) -> bool:
    """Whether the model shipped for ``family`` is installed."""
    return family in DEFAULT_MODELS and (default_model_dir(DEFAULT_MODELS[family]) / CONFIG_FILE).is_file()


def state_sha256(model: nn.Module) -> str:
    """sha256 of a network's state dict (names and tensor bytes, in order)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def resolve_model(model, family: str, *, device: str | torch.device = "cpu") -> tuple[nn.Module, ResolvedModel]:
    """The network a stage of ``family`` runs, and what it is.

    Parameters
    ----------
    model : str, os.PathLike, torch.nn.Module or None
        A model directory (:func:`load_model`; its family must be ``family``), None for the
        model shipped for ``family`` (:data:`DEFAULT_MODELS`), or a network used as given.
    family : str
        The family the stage needs (``"bcdi"`` or ``"labdct"``).
    device : str or torch.device, optional
        Where to put the network.

    Returns
    -------
    network : torch.nn.Module
        In eval mode on ``device``.
    resolved : ResolvedModel

    Raises
    ------
    RayprocError
        No model given and none shipped for ``family`` (:class:`~rayproc.errors.InputError`), a
        model of another family, or any error of :func:`load_model` (one line each).
    """
    if isinstance(model, nn.Module):
        config = getattr(model, "config", None)
        _, given = _DESCRIPTION_KEYS.get(family, (_ALL_KEYS, _ALL_KEYS))
        resolved = ResolvedModel(family, type(model).__name__, state_sha256(model) if "sha256" in given else None,
                                 config.to_dict() if hasattr(config, "to_dict") else None)
        return model.to(device).eval(), resolved
    if model is None:
        if family not in DEFAULT_MODELS:
            raise InputError(f"no model is shipped for the {family!r} family; pass --model DIR.")
        directory = default_model_dir(DEFAULT_MODELS[family])
        if not (directory / CONFIG_FILE).is_file():
            raise InputError(f"no model given and the default {family} model is not installed at {directory}; "
                             f"train one with `rayproc {family} train` and pass --model DIR.")
    else:
        directory = Path(model)
    network, info = load_model(directory, device=device, family=family)
    return network, ResolvedModel(family, str(directory), info.sha256, info.architecture, info.patch_size,
                                  dict(info.normalisation), info)


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_MODELS",
    "FORMAT_VERSION",
    "ModelInfo",
    "ResolvedModel",
    "default_model_dir",
    "file_sha256",
    "has_default_model",
    "load_model",
    "read_model_info",
    "register_family",
    "resolve_model",
    "save_model",
    "state_sha256",
]
