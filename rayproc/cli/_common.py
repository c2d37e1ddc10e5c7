"""Options shared by CLI commands."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

Address = Annotated[
    Optional[str],
    typer.Option("--address", envvar="RAY_ADDRESS", help="Ray cluster address; default: an embedded local Ray."),
]
Workers = Annotated[int, typer.Option("--workers", "-w", min=1, help="Ray actors working in parallel.")]
Cpus = Annotated[Optional[int], typer.Option("--cpus", help="CPUs for the embedded Ray (default: all).")]
StorageOptions = Annotated[
    Optional[list[str]],
    typer.Option("--storage-option", "-s", help="fsspec option key=value for s3:// stores (repeatable)."),
]
Overwrite = Annotated[bool, typer.Option(
    "--overwrite", help="Replace an output store rayproc made earlier (never any other folder or file).")]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")]
