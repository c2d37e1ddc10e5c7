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


def written_line(url: str, storage_options: dict | None = None) -> str:
    """The closing line of a run: the variables of the output store, their dims, sizes and dtypes.

    Variables along one dim that are four or more (a spot or grain table) are summarised as a
    table of that dim.
    """
    from collections import defaultdict

    from rayproc.storage import open_dataset, resolve

    ds = open_dataset(resolve(url, storage_options))
    by_dims = defaultdict(list)
    for name in sorted(ds.data_vars):
        by_dims[ds[name].dims].append(name)
    parts = []
    for dims, names in by_dims.items():
        shape = ", ".join(f"{d}: {ds.sizes[d]}" for d in dims)
        if len(dims) == 1 and len(names) >= 4:
            parts.append(f"{dims[0]} table of {len(names)} variables ({shape})")
        else:
            parts += [f"{name} ({shape}) {ds[name].dtype}" for name in names]
    return f"written to {url}: " + "; ".join(parts)
