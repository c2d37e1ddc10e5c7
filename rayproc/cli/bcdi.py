"""``rayproc bcdi ...``: BCDI simulation, training and gap inpainting."""

from __future__ import annotations

from typing import Annotated

import typer

from rayproc.cli._common import Address, Cpus, Overwrite, Progress, StorageOptions, Workers

app = typer.Typer(help="BCDI: simulate training data, train and apply the gap-inpainting model.", no_args_is_help=True)


@app.command()
def simulate(
    out: Annotated[str, typer.Argument(help="Output zarr store (path or s3:// URL).")],
    count: Annotated[int, typer.Option("--count", "-n", help="Number of volumes.")] = 16,
    size: Annotated[int, typer.Option("--size", help="Volume edge length in pixels (even).")] = 64,
    seed: Annotated[int, typer.Option("--seed", help="Master seed; sample i uses (seed, i).")] = 0,
    workers: Workers = 2,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
):
    """Simulate BCDI diffraction volumes (faceted crystals, strain phase, noise) into a zarr store."""
    from rayproc.pipelines.bcdi_simulate import simulate_bcdi
    from rayproc.storage import parse_storage_options

    report = simulate_bcdi(out, count=count, size=size, seed=seed, workers=workers, address=address, cpus=cpus,
                           storage_options=parse_storage_options(storage_option),
                           overwrite=overwrite, progress=progress)
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete ({report.count} samples); nothing to do")
    else:
        typer.echo(f"{report.url}: {report.count} samples ({report.computed} computed now)")
