"""``rayproc labdct ...``: LabDCT forward simulation, background, synthesis, denoising, evaluation."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from rayproc.cli._common import Address, Cpus, Overwrite, Progress, StorageOptions, Workers

app = typer.Typer(help="LabDCT: simulate projections, build training data, denoise and segment spots.",
                  no_args_is_help=True)


@app.command()
def simulate(
    out: Annotated[str, typer.Argument(help="Output zarr store (path or s3:// URL).")],
    preset: Annotated[str, typer.Option("--preset", help="Polycrystal preset: D18, D35 or D64.")] = "D35",
    geometry: Annotated[Optional[str], typer.Option(
        "--geometry", help="laue_focusing (default), fe_farfield, or a geometry.json file.")] = None,
    projections: Annotated[Optional[int], typer.Option(
        "--projections", help="Number of projections over 360 deg (default: the geometry's).")] = None,
    binning: Annotated[int, typer.Option("--binning", help="Detector binning factor (quick runs).")] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the polycrystal and the projections.")] = 0,
    psf: Annotated[float, typer.Option("--psf", help="Gaussian point-spread sigma (pixels).")] = 1.0,
    workers: Workers = 2,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
):
    """Simulate LabDCT projections (spots, labels and spot table) of a virtual polycrystal."""
    from rayproc.pipelines.labdct_simulate import simulate_labdct
    from rayproc.storage import parse_storage_options

    report = simulate_labdct(out, preset=preset, geometry=geometry, projections=projections, binning=binning,
                             seed=seed, psf_sigma_px=psf, workers=workers, address=address, cpus=cpus,
                             storage_options=parse_storage_options(storage_option), overwrite=overwrite,
                             progress=progress)
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete ({report.projections} projections); nothing to do")
    else:
        typer.echo(f"{report.url}: {report.projections} projections ({report.computed} computed now), "
                   f"{report.spots} spots")
