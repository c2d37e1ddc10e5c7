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
from rayproc.cli._common import Overwrite, StorageOptions, written_line

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
    typer.echo(f"{dest}: total {v.sum():.4g} counts, maximum {v.max():.4g} at {peak}")
    typer.echo(written_line(dest, parse_storage_options(storage_option)))


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every error a user can cause is one line on stderr and exit status 2.

    Usage errors are reported by typer itself (exit status 2); Ctrl-C ends with one line saying
    how far the run got, exit status 130. An unexpected error (a bug) is one line too, exit
    status 1; ``RAYPROC_DEBUG=1`` shows its traceback.
    """
    import os

    from rayproc.errors import Interrupted
    from rayproc.runtime.memory import retain_freed_memory

    retain_freed_memory()  # in-process inference and training: no page faults per batch
    _raise_interrupted_on_ctrl_c()
    try:
        command = typer.main.get_command(app)
        readable_metavars(command)
        command.main(args=argv, prog_name="rayproc", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except Interrupted as exc:
        done = f"{exc}; " if exc.done is not None else ""
        print(f"rayproc: interrupted: {done}rerun the same command to resume", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("rayproc: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except Exception as exc:
        message = user_message(exc)
        if message is None:
            if os.environ.get("RAYPROC_DEBUG"):
                raise
            print(f"rayproc: error: unexpected {type(exc).__name__}: {_first_line(exc)} "
                  "(rerun with RAYPROC_DEBUG=1 for the traceback and report it)", file=sys.stderr)
            return 1
        print(f"rayproc: error: {message}", file=sys.stderr)
        return 2
    return 0


def readable_metavars(command) -> None:
    """Placeholders in ``--help`` named for what they hold (``--mask MASK``, not ``<str>``).

    Options and arguments without a metavar of their own get their name in capitals; flags get
    none. Applied to the whole command tree.
    """
    for param in getattr(command, "params", []):
        if param.metavar is None and param.name:
            flag = getattr(param, "is_flag", False) or getattr(param, "count", False)
            param.metavar = "" if flag else param.name.upper()
        if param.param_type_name == "argument":  # its name says what it is; no "<str>" type column
            param.display_type_rich = lambda ctx=None: None
    original = getattr(command, "get_help_option", None)
    if original is not None and not getattr(original, "_readable", False):
        def get_help_option(ctx, original=original):
            option = original(ctx)
            if option is not None and option.metavar is None:
                option.metavar = ""  # a flag: no "<bool>"
            return option

        get_help_option._readable = True
        command.get_help_option = get_help_option
    for sub in getattr(command, "commands", {}).values():
        readable_metavars(sub)


def _raise_interrupted_on_ctrl_c() -> None:
    """Ctrl-C raises :class:`rayproc.errors.Interrupted` (which click passes through to main)."""
    import _thread
    import signal
    import sys
    import threading

    from rayproc.errors import Interrupted

    def handler(signum, frame):
        raise Interrupted()

    def unraisable(args, previous=sys.unraisablehook):
        # Ctrl-C that landed in a weakref callback or __del__ is swallowed there ("Exception
        # ignored in ..."): raise it again in the main thread, at the next bytecode.
        if isinstance(args.exc_value, Interrupted):
            _thread.interrupt_main(signal.SIGINT)
        else:
            previous(args)

    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)
        sys.unraisablehook = unraisable


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def user_message(exc: BaseException) -> str | None:
    """One line for an error the user caused (bad input, storage, device, credentials), else None."""
    from rayproc.errors import user_error

    credentials = _credential_message(exc)
    if credentials:
        return credentials
    cause = user_error(exc)
    if cause is not None:
        text = _first_line(cause)
        if "checksum" in text.lower():
            return f"a stored chunk failed its checksum (the store is damaged): {text}"
        if isinstance(cause, OSError) and not text.startswith("[Errno") and cause.strerror:
            return f"{cause.strerror}: {cause.filename}" if cause.filename else text
        return text
    if isinstance(exc, TypeError):
        return _first_line(exc)
    text = _first_line(exc)
    if isinstance(exc, RuntimeError) and any(w in text.lower() for w in ("decompress", "blosc", "zstd", "codec")):
        return f"a stored chunk cannot be decoded (the store is damaged): {text}"
    if "CUDA" in text or "cuda" in text:
        return f"--gpu: {text}"
    return None


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
