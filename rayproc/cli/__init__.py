"""The ``rayproc`` command line: thin wrappers over :mod:`rayproc.pipelines`.

Errors a user can fix are printed as one line on stderr with exit status 2.
"""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import numpy as np
import typer

from rayproc import __version__
from rayproc.cli import bcdi, labdct
from rayproc.cli._common import Overwrite, StorageOptions

app = typer.Typer(
    help="rayproc: distributed deep-learning processing of X-ray diffraction data (BCDI, LabDCT).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(bcdi.app, name="bcdi")
app.add_typer(labdct.app, name="labdct")


@app.callback(invoke_without_command=True)
def _root(version: Annotated[bool, typer.Option("--version", help="Print the version.")] = False):
    if version:
        typer.echo(f"rayproc {__version__}")
        raise typer.Exit()


@app.command()
def ingest(
    src: Annotated[str, typer.Argument(help="TIFF folder, multi-page TIFF, .npy/.npz, or file.h5:/dataset.")],
    dest: Annotated[str, typer.Argument(help="Output zarr store (path or s3:// URL).")],
    key: Annotated[Optional[str], typer.Option("--key", help="Array name inside an .npz.")] = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
):
    """Convert real detector data into a zarr store with `intensity` (z, y, x), float32."""
    from rayproc.pipelines.ingest import ingest as run_ingest
    from rayproc.storage import parse_storage_options

    ds = run_ingest(src, dest, key=key, storage_options=parse_storage_options(storage_option), overwrite=overwrite)
    v = ds.intensity.values
    peak = tuple(int(i) for i in np.unravel_index(v.argmax(), v.shape))
    typer.echo(f"{dest}: intensity {v.shape} float32, total {v.sum():.4g} counts, maximum {v.max():.4g} at {peak}")


def main(argv: list[str] | None = None) -> int:
    """Console entry point: user-fixable errors become one line on stderr and exit status 2.

    Usage errors are reported by typer itself (exit status 2).
    """
    from rayproc.errors import RayprocError
    from rayproc.runtime.memory import retain_freed_memory

    retain_freed_memory()  # in-process inference and training: no page faults per batch
    try:
        app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except (RayprocError, ValueError, TypeError, FileNotFoundError, PermissionError) as exc:
        print(f"rayproc: error: {_first_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rayproc: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = _credential_message(exc)
        if message is None:
            raise
        print(f"rayproc: error: {message}", file=sys.stderr)
        return 2
    return 0


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _credential_message(exc: BaseException) -> str | None:
    """A one-line message for object-store credential and connection failures, else None."""
    name = type(exc).__name__
    text = str(exc)
    if name in ("NoCredentialsError", "PartialCredentialsError") or "credentials" in text.lower():
        return "object store credentials are missing or invalid (set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or --storage-option)"
    if name in ("ClientError",) or "InvalidAccessKeyId" in text or "SignatureDoesNotMatch" in text:
        return f"object store refused the request: {text.splitlines()[0]}"
    if name in ("EndpointConnectionError", "ClientConnectorError"):
        return f"cannot reach the object store: {text.splitlines()[0]}"
    return None


def _console() -> None:
    sys.exit(main())


__all__ = ["app", "main"]
