"""``rayproc bcdi ...``: BCDI simulation, training and gap inpainting."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from rayproc.bcdi.inpaint import DEFAULT_BATCH_SIZE, DEFAULT_BLEND, DEFAULT_CHUNK, DEFAULT_STRIDE
from rayproc.cli._common import Address, Cpus, Overwrite, Progress, StorageOptions, Workers, written_line

# Defaults of --adapt: rayproc.pipelines.bcdi.inpaint.ADAPT_EPOCHS, ADAPT_PORTIONS (not imported here: that module
# loads torch, and every command would pay for it; tests/test_bcdi_adapt.py checks they agree).
ADAPT_EPOCHS, ADAPT_PORTIONS = 3, 512

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
    from rayproc.pipelines.bcdi.simulate import simulate_bcdi
    from rayproc.storage import parse_storage_options

    report = simulate_bcdi(out, count=count, size=size, seed=seed, workers=workers, address=address, cpus=cpus,
                           storage_options=parse_storage_options(storage_option),
                           overwrite=overwrite, progress=progress)
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete ({report.count} samples); nothing to do")
    else:
        typer.echo(f"{report.url}: {report.count} samples ({report.computed} computed now)")
    typer.echo(written_line(report.url, parse_storage_options(storage_option)))


TrainWorkers = Annotated[int, typer.Option(
    "--workers", "-w", min=0, help="Ray Train workers (data parallel); 0 trains in this process without Ray.")]
Gpu = Annotated[bool, typer.Option("--gpu", help="One GPU per worker, NCCL, mixed precision (bf16 or fp16).")]
CheckpointStorage = Annotated[Optional[str], typer.Option(
    "--storage", help="Checkpoint storage (folder or s3:// URL; default MODEL_DIR/checkpoints). "
                      "Rerunning the same command resumes from it.")]
ModelOut = Annotated[str, typer.Option("--out", "-o", help="Model directory to write.")]
MaskOffset = Annotated[Optional[str], typer.Option(
    "--mask-offset", metavar="ROW,COL",
    help="Detector pixel of the scan's first row and column, for a 2D detector mask larger than the scan "
         "(a scan cropped from the detector).")]


def _echo_training(report) -> None:
    best = report.best
    widths = ", ".join(f"w{k[9:]} {v:.3f}" for k, v in best.items() if k.startswith("val_pcc_w") and v is not None)
    resumed = " (resumed from its checkpoints)" if report.resumed else ""
    which = "0 (the base model: no epoch beat it)" if best["epoch"] < 0 else str(best["epoch"] + 1)
    typer.echo(f"{report.out}: {report.epochs} epochs{resumed}; best epoch {which}: "
               f"val loss {best['val_loss']:.4f}, in-gap PCC {widths}")


@app.command()
def train(
    data: Annotated[list[str], typer.Argument(help="Training stores (from `bcdi simulate` or `ingest`).")],
    out: ModelOut,
    workers: TrainWorkers = 1,
    gpu: Gpu = False,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Total epochs (a rerun with more continues).")] = 10,
    storage: CheckpointStorage = None,
    arch: Annotated[str, typer.Option("--arch", help="gapnet (mask-aware, default) or masto2024 (published).")] = "gapnet",
    base_channels: Annotated[Optional[int], typer.Option("--base-channels", help="Network width (default: the architecture's).")] = None,
    depth: Annotated[Optional[int], typer.Option("--depth", help="Poolings (gapnet; default: the architecture's).")] = None,
    patch_size: Annotated[int, typer.Option("--patch-size", help="Portion edge in voxels.")] = 32,
    portions_per_volume: Annotated[int, typer.Option("--portions-per-volume", "-k", min=1, help="Portions drawn per volume per epoch.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Portions per step per worker.")] = 16,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Adam learning rate, halved when validation stalls "
                                                "(default: 1e-3 for gapnet, 1e-4 for masto2024).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Master seed of portions, gaps and initial weights.")] = 0,
    peak_fraction: Annotated[float, typer.Option(
        "--peak-fraction", min=0.0, max=1.0,
        help="Fraction of portions centred near the Bragg peak (~N(peak, 8 px)); the rest favour the dim periphery.")] = 0.0,
    init_model: Annotated[Optional[str], typer.Option(
        "--init-model", metavar="MODEL_DIR",
        help="Continue from this BCDI model's weights and architecture (e.g. rayproc/weights/bcdi-default).")] = None,
    cpus_per_worker: Annotated[float, typer.Option("--cpus-per-worker", help="Ray CPUs (and torch threads) per worker.")] = 1.0,
    loader_workers: Annotated[int, typer.Option("--loader-workers", min=0, help="DataLoader processes per worker (2-4 with --gpu).")] = 0,
    max_failures: Annotated[int, typer.Option("--max-failures", help="Restarts from the last checkpoint after a worker failure.")] = 3,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    progress: Progress = True,
):
    """Train the gap-inpainting network on Ray Train (Masto et al. 2024 recipe); write MODEL_DIR."""
    from rayproc.pipelines.bcdi.train import train_bcdi
    from rayproc.storage import parse_storage_options

    _echo_training(train_bcdi(
        data, out, workers=workers, gpu=gpu, epochs=epochs, storage=storage, arch=arch, base_channels=base_channels,
        depth=depth, patch_size=patch_size, portions_per_volume=portions_per_volume, batch_size=batch_size, lr=lr,
        seed=seed, cpus_per_worker=cpus_per_worker, loader_workers=loader_workers, max_failures=max_failures,
        address=address, cpus=cpus, storage_options=parse_storage_options(storage_option), progress=progress,
        init_model=init_model, peak_fraction=peak_fraction))


@app.command()
def finetune(
    model_dir: Annotated[str, typer.Argument(help="Model directory to start from.")],
    volume: Annotated[str, typer.Argument(
        help="Target volume: anything `bcdi inpaint` reads (TIFF folder, .tif, .npy/.npz, file.h5:/path, zarr store "
             "with intensity and optional mask).")],
    out: ModelOut,
    mask: Annotated[Optional[str], typer.Option("--mask", help="Gap mask of the target (.npy/.tif/.h5 or zarr store "
                                                               "with mask; nonzero = gap): the volume's shape, or a "
                                                               "2D detector mask applied to every frame.")] = None,
    mask_offset: MaskOffset = None,
    gap: Annotated[Optional[list[str]], typer.Option("--gap", help="A gap of the target as AXIS:START:WIDTH (repeatable).")] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs (2-5 suffice).")] = 3,
    portions_per_volume: Annotated[int, typer.Option("--portions-per-volume", "-k", min=1, help="Portions per epoch.")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1)] = 16,
    lr: Annotated[Optional[float], typer.Option(
        "--lr", help="Adam learning rate (default: the model architecture's training rate, 1e-3 for gapnet, "
                     "1e-4 for masto2024).")] = None,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    stride: Annotated[int, typer.Option(
        "--stride", min=1,
        help="Stride the model will inpaint with: the artificial gaps are the target's, as those windows see them.")
    ] = DEFAULT_STRIDE,
    workers: TrainWorkers = 1,
    gpu: Gpu = False,
    storage: CheckpointStorage = None,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    progress: Progress = True,
):
    """Fine-tune a model on its target: portions beside the target's gaps, cut by its own gaps; keeps the best
    of the base model and every epoch on held-out portions."""
    from rayproc.pipelines.bcdi.train import finetune_bcdi
    from rayproc.storage import parse_storage_options

    _echo_training(finetune_bcdi(
        model_dir, volume, out, mask=mask, mask_offset=_pixel_pair(mask_offset, "--mask-offset"),
        gaps=tuple(gap or ()), epochs=epochs, portions_per_volume=portions_per_volume, batch_size=batch_size, lr=lr,
        seed=seed, stride=stride, workers=workers, gpu=gpu, storage=storage, address=address, cpus=cpus,
        storage_options=parse_storage_options(storage_option), progress=progress))


@app.command("model-info")
def model_info(
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model directory (default: the shipped model).")] = None,
):
    """Describe a model: architecture, parameter count, FLOPs per 32^3 portion, training metrics."""
    from rayproc.bcdi.network import count_parameters, flops_per_portion
    from rayproc.models.artifact import resolve_model

    net, resolved = resolve_model(model, "bcdi")
    info = resolved.info
    arch = ", ".join(f"{k}={v}" for k, v in info.architecture.items() if k != "arch")
    typer.echo(model or resolved.source)
    typer.echo(f"  architecture   {info.architecture.get('arch')} ({arch})")
    typer.echo(f"  parameters     {count_parameters(net):,}")
    typer.echo(f"  FLOPs          {flops_per_portion(net, 32) / 1e9:.3f} GFLOP per 32^3 portion")
    typer.echo(f"  portions       {info.patch_size}^3, gap widths {', '.join(map(str, info.gap_widths or ()))}")
    typer.echo(f"  format         {info.format_version} (rayproc {info.rayproc_version}), sha256 {info.sha256[:16]}...")
    best = info.metrics.get("best")
    if best:
        pcc = "n/a" if best.get("val_pcc") is None else f"{best['val_pcc']:.3f}"
        typer.echo(f"  training       {info.provenance.get('stage', 'trained')}, {info.metrics.get('epochs')} epochs; "
                   f"best epoch {best['epoch'] + 1}: val loss {best['val_loss']:.4f}, in-gap PCC {pcc}")


Gaps = Annotated[Optional[list[str]], typer.Option(
    "--gap", help="A gap as AXIS:START:WIDTH, e.g. x:126:6 (repeatable: --gap x:126:6 --gap y:120:6 is a cross).")]
InpaintModel = Annotated[Optional[str], typer.Option(
    "--model", "-m", help="Model directory (default: the model shipped with rayproc).")]
Stride = Annotated[int, typer.Option(
    "--stride", min=1, help="Step of the 32^3 portions along a gap (1 with --blend mean is the published procedure).")]
Blend = Annotated[str, typer.Option("--blend", help="Blend of overlapping portions: gaussian or mean.")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Portions per model call.")]


def _pixel_pair(text: str | None, option: str) -> tuple[int, int] | None:
    """``"ROW,COL"`` as two non-negative ints (None stays None)."""
    from rayproc.errors import InputError

    if text is None:
        return None
    parts = text.replace(" ", "").split(",")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise InputError(f"{option} must look like ROW,COL with two integers >= 0 (e.g. 130,120); got {text!r}.")
    return int(parts[0]), int(parts[1])


@app.command()
def inpaint(
    src: Annotated[str, typer.Argument(help="Volume (TIFF folder, .tif, .npy/.npz, file.h5:/path) or zarr store "
                                            "with intensity (z, y, x) or (sample, z, y, x) and optional mask.")],
    out: Annotated[str, typer.Argument(help="Output zarr store (path or s3:// URL).")],
    mask: Annotated[Optional[str], typer.Option("--mask", help="Missing-voxel mask (.npy/.tif/.h5 or zarr store "
                                                               "with mask; nonzero = missing): the volume's shape, "
                                                               "or a 2D detector mask applied to every frame.")] = None,
    mask_offset: MaskOffset = None,
    gap: Gaps = None,
    model: InpaintModel = None,
    stride: Stride = DEFAULT_STRIDE,
    blend: Blend = DEFAULT_BLEND,
    chunk: Annotated[int, typer.Option(
        "--chunk", min=1, help="Output chunk edge: the unit of work of an actor.")] = DEFAULT_CHUNK,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per actor.")] = False,
    cpus_per_worker: Annotated[float, typer.Option(
        "--cpus-per-worker", help="Ray CPUs (and torch threads) per actor.")] = 1.0,
    workers: Annotated[int, typer.Option(
        "--workers", "-w", min=0, help="Ray actors working in parallel (and Ray Train workers of --adapt); "
                                       "0 runs everything in this process without Ray.")] = 2,
    adapt: Annotated[bool, typer.Option(
        "--adapt", help="First fine-tune the model on this volume (portions beside its gaps, cut by its own gaps; "
                        "the base weights are kept unless an epoch beats them on held-out portions), then inpaint "
                        "with it. Resumable; the model goes to --adapt-out.")] = False,
    adapt_epochs: Annotated[int, typer.Option("--adapt-epochs", min=1, help="Epochs of --adapt.")] = ADAPT_EPOCHS,
    adapt_portions: Annotated[int, typer.Option(
        "--adapt-portions", min=1, help="Training portions per epoch of --adapt.")] = ADAPT_PORTIONS,
    adapt_lr: Annotated[Optional[float], typer.Option(
        "--adapt-lr", help="Adam learning rate of --adapt (default: the model architecture's training rate, "
                           "1e-3 for gapnet, 1e-4 for masto2024).")] = None,
    adapt_out: Annotated[Optional[str], typer.Option(
        "--adapt-out", metavar="DIR",
        help="Model directory of --adapt (default: OUT.adapted-model beside OUT).")] = None,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
):
    """Inpaint detector gaps with the portion model, chunk by chunk on Ray actors (resumable)."""
    from rayproc.pipelines.bcdi.inpaint import inpaint_bcdi
    from rayproc.storage import parse_storage_options

    report = inpaint_bcdi(src, out, mask=mask, mask_offset=_pixel_pair(mask_offset, "--mask-offset"),
                          gaps=tuple(gap or ()), model=model, stride=stride, blend=blend,
                          chunk=chunk, batch_size=batch_size, workers=workers, gpu=gpu,
                          cpus_per_worker=cpus_per_worker, address=address, cpus=cpus,
                          storage_options=parse_storage_options(storage_option), overwrite=overwrite,
                          progress=progress, adapt=adapt, adapt_epochs=adapt_epochs, adapt_portions=adapt_portions,
                          adapt_lr=adapt_lr, adapt_out=adapt_out)
    if report.adaptation is not None:
        a = report.adaptation
        pcc = ("n/a" if a["heldout_pcc_before"] is None or a["heldout_pcc_after"] is None else
               f"{a['heldout_pcc_before']:.4f} -> {a['heldout_pcc_after']:.4f}")
        typer.echo(f"{a['model_dir']}: adapted {a['epochs']} epochs, kept the {a['kept']}; held-out in-gap PCC "
                   f"{pcc} ({a['heldout_portions']} portions)")
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete; nothing to do")
    else:
        memory = "" if report.peak_worker_rss_mb is None else f"; actor peak memory {report.peak_worker_rss_mb:.0f} MB"
        typer.echo(f"{report.url}: {report.samples} volume(s), {report.windows} portions; "
                   f"{report.computed} of {report.tasks} chunks computed now{memory}")
    typer.echo(written_line(report.url, parse_storage_options(storage_option)))


@app.command()
def evaluate(
    volume: Annotated[str, typer.Argument(help="Gap-free volume (file or zarr store with intensity).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for metrics.json, metrics.md and figures.")],
    gap: Gaps = None,
    mask: Annotated[Optional[str], typer.Option(
        "--mask", help="A detector mask to impose (nonzero = missing): the volume's shape, or a 2D detector mask "
                       "applied to every frame (e.g. a real Maxipix layout).")] = None,
    mask_offset: MaskOffset = None,
    model: InpaintModel = None,
    stride: Stride = DEFAULT_STRIDE,
    blend: Blend = DEFAULT_BLEND,
    batch_size: BatchSize = DEFAULT_BATCH_SIZE,
    sample: Annotated[int, typer.Option("--sample", help="Sample of a (sample, z, y, x) store.")] = 0,
    gpu: Annotated[bool, typer.Option("--gpu", help="Run the model on the GPU.")] = False,
    storage_option: StorageOptions = None,
):
    """Impose gaps on a gap-free volume; score the model and nearest/linear/cubic interpolation inside them.

    In-gap PCC: Pearson correlation of log1p counts over the gap voxels (Masto et al. 2024, eq. 1;
    1 is perfect). Relative error: sum |predicted - true| / sum |true| over the gap voxels, in counts
    (0 is perfect, 1 is predicting zeros; 1 - it is the "accuracy" of the authors' code).
    """
    from pathlib import Path

    from rayproc.pipelines.bcdi.evaluate import evaluate_bcdi
    from rayproc.storage import parse_storage_options

    report = evaluate_bcdi(volume, out, gaps=tuple(gap or ()), mask=mask,
                           mask_offset=_pixel_pair(mask_offset, "--mask-offset"), model=model, stride=stride, blend=blend,
                           batch_size=batch_size, sample=sample, device="cuda" if gpu else "cpu",
                           storage_options=parse_storage_options(storage_option))
    if report.model is None:
        typer.echo("no model installed: scoring the interpolation baselines only (pass --model DIR)")
    for name, m in report.methods.items():
        typer.echo(f"  {name:8s} in-gap PCC {m['pcc']:.4f}  relative error {m['relative_error']:.4f}  "
                   f"({m['seconds']:.1f} s)")
    typer.echo(f"{report.out}: {', '.join(Path(f).name for f in report.files)}")
