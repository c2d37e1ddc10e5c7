"""Where a dataset lives: a local path or an object-store URL, plus its storage options.

Credentials come from the standard AWS environment variables (read by s3fs/botocore) or from
``--storage-option key=value``; they never appear in provenance attrs or logs (see
:func:`redacted`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import fsspec

from rayproc.errors import InputError

_SECRET_WORDS = ("secret", "token", "password", "key", "credential")
_REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "az://", "abfs://", "memory://")
SUPPORTED_SCHEMES = ("s3", "memory")  # object stores rayproc installs the filesystem for


@dataclass(frozen=True)
class Location:
    """A dataset location: ``url`` (local path or ``s3://bucket/key``) and fsspec options."""

    url: str
    storage_options: dict[str, Any] = field(default_factory=dict)

    @property
    def is_remote(self) -> bool:
        return self.url.startswith(_REMOTE_SCHEMES)

    def child(self, name: str) -> "Location":
        return Location(self.url.rstrip("/") + "/" + name, self.storage_options)

    def to_dict(self) -> dict:
        return {"url": self.url, "storage_options": dict(self.storage_options)}

    @classmethod
    def from_dict(cls, d: dict) -> "Location":
        return cls(d["url"], dict(d.get("storage_options", {})))

    def __repr__(self) -> str:  # never print credentials
        return f"Location({self.url!r}, storage_options={redacted(self.storage_options)!r})"


def parse_storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """Parse ``key=value`` strings into fsspec storage options.

    Dotted keys nest (``client_kwargs.region_name=eu-west-1``); ``true``/``false``/numbers are
    converted. ``endpoint_url`` is passed to the S3 client.
    """
    options: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise InputError(f"storage option must look like key=value; got {pair!r} instead.")
        key, value = pair.split("=", 1)
        target = options
        *parents, leaf = key.strip().split(".")
        for parent in parents:
            target = target.setdefault(parent, {})
        target[leaf] = _parse_scalar(value.strip())
    return options


def _parse_scalar(text: str) -> Any:
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def resolve(url: str | Location, storage_options: dict[str, Any] | None = None) -> Location:
    """Return a :class:`Location`, filling S3 endpoint options from the environment."""
    if isinstance(url, Location):
        return url
    url = str(url)
    scheme, sep, _ = url.partition("://")
    if sep and scheme.isidentifier() and scheme != "file" and scheme not in SUPPORTED_SCHEMES:
        raise InputError(f"{url}: {scheme}:// is not supported; use a local path or s3:// "
                         "(S3-compatible object stores via --storage-option endpoint_url=...)")
    if scheme == "file" and sep:
        url = url[len("file://"):]
    options = dict(storage_options or {})
    if url.startswith("s3://"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options:
            options["endpoint_url"] = endpoint
    elif not url.startswith(_REMOTE_SCHEMES):
        url = os.path.abspath(os.path.expanduser(url))
    return Location(url, options)


def filesystem(location: Location) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and path for ``location``."""
    return fsspec.core.url_to_fs(location.url, **location.storage_options)


def redacted(options: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``options`` with secret-looking values replaced by ``'***'``."""
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out[key] = redacted(value)
        elif any(word in key.lower() for word in _SECRET_WORDS):
            out[key] = "***"
        else:
            out[key] = value
    return out


__all__ = ["Location", "parse_storage_options", "resolve", "filesystem", "redacted"]
