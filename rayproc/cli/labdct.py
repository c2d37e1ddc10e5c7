"""``rayproc labdct ...``: LabDCT forward simulation, background, synthesis, denoising, evaluation."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from rayproc.cli._common import Address, Cpus, Overwrite, Progress, StorageOptions, Workers, written_line
from rayproc.cli.bcdi import CheckpointStorage, Gpu, ModelOut, TrainWorkers

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
    physics: Annotated[Optional[str], typer.Option(
        "--physics", help="Realism terms: a preset (fe_farfield, none) or JSON {term: value} of simulate_projection's "
                          "keywords (px lengths for the unbinned detector); see `rayproc labdct compare-real`.")] = None,
    workers: Workers = 2,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
):
    """Simulate LabDCT projections (spots, labels and spot table) of a virtual polycrystal."""
    from rayproc.pipelines.labdct.simulate import simulate_labdct
    from rayproc.storage import parse_storage_options

    report = simulate_labdct(out, preset=preset, geometry=geometry, projections=projections, binning=binning,
                             seed=seed, psf_sigma_px=psf, physics=_physics(physics), workers=workers, address=address,
                             cpus=cpus,
                             storage_options=parse_storage_options(storage_option), overwrite=overwrite,
                             progress=progress)
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete ({report.projections} projections); nothing to do")
    else:
        typer.echo(f"{report.url}: {report.projections} projections ({report.computed} computed now), "
                   f"{report.spots} spots")
    typer.echo(written_line(report.url, parse_storage_options(storage_option)))


@app.command()
def background(
    frames: Annotated[str, typer.Argument(help="Real frames: TIFF folder, stack file or zarr store.")],
    out: Annotated[str, typer.Argument(help="Output zarr store (path or s3:// URL).")],
    rolling: Annotated[int, typer.Option("--rolling", min=1, help="Frames in the rolling median.")] = 11,
    beamstop_from: Annotated[Optional[str], typer.Option(
        "--beamstop-from", help="geometry.json whose beam stop is kept as measured.")] = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
):
    """Extract background images (spots masked and filled, rolling median, max 1) from real frames."""
    from rayproc.pipelines.labdct.background import extract_background_store
    from rayproc.storage import parse_storage_options

    report = extract_background_store(frames, out, rolling=rolling, beamstop_from=beamstop_from,
                                      storage_options=parse_storage_options(storage_option), overwrite=overwrite)
    typer.echo(f"{report.url}: background {report.frames} x {report.shape[0]} x {report.shape[1]} "
               f"({report.masked_fraction:.1%} of pixels masked as spots, {report.seconds:.1f} s)")
    typer.echo(written_line(report.url, parse_storage_options(storage_option)))


def _physics(text: str | None) -> dict | None:
    """``--physics``: a PHYSICS_PRESETS name, a JSON file or JSON text."""
    import json
    from pathlib import Path

    from rayproc.errors import InputError
    from rayproc.labdct.projection import PHYSICS_PRESETS

    if text is None:
        return None
    if text in PHYSICS_PRESETS:
        return dict(PHYSICS_PRESETS[text])
    try:
        value = json.loads(Path(text).read_text() if Path(text).is_file() else text)
    except json.JSONDecodeError as exc:
        raise InputError(f"--physics must be one of {sorted(PHYSICS_PRESETS)} or JSON like "
                         f"'{{\"mosaicity_deg\": 0.05}}'; got {text!r} ({exc.msg}).") from exc
    if not isinstance(value, dict):
        raise InputError(f"--physics JSON must be an object {{term: value}}; got {text!r}.")
    return value


def _gain(text: str) -> float | tuple[float, float]:
    try:
        values = [float(v) for v in text.split(":")]
    except ValueError:
        values = []
    if len(values) not in (1, 2):
        raise typer.BadParameter(f"expected G or LOW:HIGH; got {text!r}", param_hint="--spot-gain")
    return values[0] if len(values) == 1 else (values[0], values[1])


@app.command()
def synth(
    sim: Annotated[str, typer.Argument(help="Simulated store (rayproc labdct simulate).")],
    bg: Annotated[str, typer.Argument(help="Background store (rayproc labdct background) or 'parametric'.")],
    out: Annotated[str, typer.Argument(help="Output zarr store (path or s3:// URL).")],
    mode: Annotated[str, typer.Option(
        "--mode", help="Noise model: poisson (published), detector (a measured detector, see --detector) "
                       "or constant.")] = "poisson",
    detector: Annotated[str, typer.Option(
        "--detector", help="Detector mode: the measured detector's noise model (fe_farfield).")] = "fe_farfield",
    tau: Annotated[float, typer.Option("--tau", help="Poisson noise scale tau.")] = 1.0,
    i0: Annotated[float, typer.Option("--i0", help="Mean background scale I0 (counts).")] = 110.0,
    spot_gain: Annotated[str, typer.Option(
        "--spot-gain", help="Gain of the simulated spots: G, or LOW:HIGH drawn log-uniformly per projection "
                            "(1 = published; `rayproc labdct calibrate` measures it for real frames).")] = "1",
    seed: Annotated[int, typer.Option("--seed", help="Projection p draws from default_rng([seed, p]).")] = 0,
    pick: Annotated[str, typer.Option("--pick", help="Background frame per projection: cycle or random.")] = "cycle",
    workers: Workers = 2,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
):
    """Synthesise noisy inputs and LoG-segmented targets from simulated projections and backgrounds."""
    from rayproc.pipelines.labdct.synth import synthesize_labdct
    from rayproc.storage import parse_storage_options

    report = synthesize_labdct(sim, bg, out, mode=mode, tau=tau, i0=i0, spot_gain=_gain(spot_gain), seed=seed,
                               pick=pick, detector=detector, workers=workers,
                               address=address, cpus=cpus, storage_options=parse_storage_options(storage_option),
                               overwrite=overwrite, progress=progress)
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete ({report.projections} projections); nothing to do")
    else:
        typer.echo(f"{report.url}: {report.projections} projections ({report.computed} computed now), "
                   f"{report.spots} spots in the table")
    typer.echo(written_line(report.url, parse_storage_options(storage_option)))


@app.command()
def calibrate(
    sim: Annotated[str, typer.Argument(help="Simulated store (rayproc labdct simulate).")],
    bg: Annotated[str, typer.Argument(help="Background store (rayproc labdct background) or 'parametric'.")],
    real: Annotated[str, typer.Argument(help="Measured frames: TIFF folder, stack file or zarr store.")],
    i0: Annotated[Optional[float], typer.Option(
        "--i0", help="Mean background scale I0 of the synthesis (counts; default 1000, or measured with "
                     "--mode detector).")] = None,
    tau: Annotated[float, typer.Option("--tau", help="Poisson noise scale tau of the synthesis.")] = 1.0,
    mode: Annotated[str, typer.Option("--mode", help="Synthesis noise model: poisson or detector.")] = "poisson",
    detector: Annotated[str, typer.Option("--detector", help="Detector mode's noise model.")] = "fe_farfield",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the synthesised noise.")] = 0,
    frames: Annotated[int, typer.Option("--frames", min=1, help="Simulated projections per trial gain.")] = 12,
    real_frames: Annotated[Optional[int], typer.Option(
        "--real-frames", min=1, help="Use the first N measured frames.")] = None,
    real_beamstop_from: Annotated[Optional[str], typer.Option(
        "--real-beamstop-from", help="geometry.json of the measured frames (default: REAL/geometry.json).")] = None,
    quantile: Annotated[float, typer.Option(
        "--quantile", min=1, max=99, help="Matched percentile of the detected spots' SNR.")] = 90.0,
    out: Annotated[Optional[str], typer.Option("--out", "-o", help="Also write the result as JSON here.")] = None,
    storage_option: StorageOptions = None,
):
    """Measure the --spot-gain for `synth` at which synthesised spots are as bright as measured ones."""
    import json
    from pathlib import Path

    from rayproc.pipelines.labdct.calibrate import calibrate_labdct
    from rayproc.storage import parse_storage_options

    report = calibrate_labdct(sim, bg, real, i0=i0, tau=tau, mode=mode, detector=detector, seed=seed, frames=frames,
                              real_frames=real_frames,
                              real_beamstop_from=real_beamstop_from, quantile=quantile,
                              storage_options=parse_storage_options(storage_option))
    typer.echo(report.to_markdown())
    if out:
        Path(out).write_text(json.dumps(report.to_dict(), indent=2) + "\n")
    noise = f" --mode {mode}" + (f" --detector {detector}" if mode == "detector" else "")
    typer.echo(f"use: rayproc labdct synth {sim} {bg} OUT{noise} --i0 {report.settings['i0']:.4g} "
               f"--spot-gain {report.gain:.3g}")


@app.command("compare-real")
def compare_real(
    sim: Annotated[str, typer.Argument(help="Simulated frames: a synth store (its noisy input), a simulate store, "
                                            "a TIFF folder or stack file.")],
    real: Annotated[str, typer.Argument(help="Measured frames: TIFF folder, stack file or zarr store.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for realism.md, realism.json and realism.png.")],
    sim_frames: Annotated[Optional[str], typer.Option(
        "--sim-frames", help="START:STOP (0-based) of the simulated frames to use.")] = None,
    real_frames: Annotated[Optional[str], typer.Option(
        "--real-frames", help="START:STOP (0-based) of the real frames, e.g. 0:30 to calibrate, 30: to check.")] = None,
    geometry: Annotated[Optional[str], typer.Option(
        "--geometry", help="geometry.json of the real frames: beam centre and stop (default: REAL/geometry.json).")] = None,
    storage_option: StorageOptions = None,
):
    """Realism report: spots, their shape and brightness, background and beam-stop edge, simulated vs real."""
    from pathlib import Path

    from rayproc.pipelines.labdct.compare_real import TOLERANCE, compare_real as run
    from rayproc.storage import parse_storage_options

    report = run(sim, real, out, sim_frames=sim_frames, real_frames=real_frames, geometry=geometry,
                 storage_options=parse_storage_options(storage_option))
    for row in report.rows:
        typer.echo(f"  {row['quantity']:28s} sim {row['sim']:10.4g}  real {row['real']:10.4g}  {row['relative']:+7.1%}")
    held = report.within_tolerance()
    typer.echo("  within {:.0%}: {}".format(TOLERANCE, ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in held.items())))
    typer.echo(f"{report.out}: {', '.join(Path(f).name for f in report.files)}")


@app.command()
def segment(
    source: Annotated[str, typer.Argument(
        help="Raw frames (TIFF folder, stack file, one frame, zarr store) or a `labdct denoise` store.")],
    out: Annotated[str, typer.Argument(help="Output zarr store (spot_label, spot table, beamstop and hot_pixel masks).")],
    method: Annotated[Optional[str], typer.Option(
        "--method", help="dl (network) or standard (rolling median + LoG); a denoised input is segmented by dl "
                         "without running the network again.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="dl: model directory (default: shipped).")] = None,
    params: Annotated[Optional[str], typer.Option(
        "--params", help="standard: parameters as a JSON file or text (e.g. evaluate's standard_params.json); "
                         "default: background at background_sigmas x the residual noise.")] = None,
    geometry: Annotated[Optional[str], typer.Option(
        "--geometry", help="geometry.json: its beam stop is never a spot; its rotation_deg names frames by omega.")] = None,
    beamstop_from: Annotated[Optional[str], typer.Option("--beamstop-from", hidden=True)] = None,
    detect_beamstop: Annotated[bool, typer.Option(
        "--detect-beamstop/--no-detect-beamstop", help="Without --geometry, mask the persistent dark region.")] = True,
    hot_pixels: Annotated[bool, typer.Option(
        "--hot-pixels/--no-hot-pixels", help="Mask pixels far above their neighbours in most frames.")] = True,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="dl: spot probability threshold (0.5).")] = None,
    min_size: Annotated[Optional[int], typer.Option("--min-size", min=1, help="dl: smallest spot in pixels (4).")] = None,
    frames_per_task: Annotated[int, typer.Option("--frames-per-task", min=1, help="Frames per unit of work.")] = 4,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per actor (dl).")] = False,
    cpus_per_worker: Annotated[float, typer.Option("--cpus-per-worker", help="Ray CPUs (and torch threads) per actor.")] = 1.0,
    workers: Workers = 2,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
):
    """Segment the diffraction spots of a stack with the network or the standard routine, slabs on Ray actors (resumable)."""
    from rayproc.pipelines.labdct.segment import segment_labdct
    from rayproc.storage import parse_storage_options

    options = parse_storage_options(storage_option)
    report = segment_labdct(source, out, method=method, model=model, params=params, geometry=geometry,
                            beamstop_from=beamstop_from, detect_beamstop=detect_beamstop, hot_pixels=hot_pixels,
                            threshold=threshold, min_size=min_size, frames_per_task=frames_per_task, workers=workers,
                            gpu=gpu, cpus_per_worker=cpus_per_worker, address=address, cpus=cpus,
                            storage_options=options, overwrite=overwrite, progress=progress)
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete; nothing to do")
    typer.echo(f"{report.url}: {report.spots} spots in {report.frames} frames ({report.method}; masked: beam stop "
               f"{report.beamstop_px} px, hot pixels {report.hot_pixels}; {report.seconds:.1f} s)")
    typer.echo(written_line(report.url, options))


@app.command()
def show(
    segmented: Annotated[str, typer.Argument(help="A `rayproc labdct segment` store.")],
    out: Annotated[str, typer.Argument(help="Figure to write (.png; never over an existing file).")],
    frame: Annotated[int, typer.Option("--frame", min=0, help="Frame index.")] = 0,
    frames: Annotated[Optional[str], typer.Option("--frames", help="The raw frames, shown beside the spots.")] = None,
    denoised: Annotated[Optional[str], typer.Option(
        "--denoised", help="The `labdct denoise` store the spots came from (its probability is shown).")] = None,
    zoom: Annotated[Optional[str], typer.Option("--zoom", metavar="ROW,COL,HALF", help="Show a region only.")] = None,
    storage_option: StorageOptions = None,
):
    """Draw one frame of a segmented stack: raw frame, spot probability, outlined spots and masks."""
    from rayproc.errors import InputError
    from rayproc.pipelines.labdct.show import show_frame
    from rayproc.storage import parse_storage_options

    region = None
    if zoom is not None:
        try:
            region = tuple(int(v) for v in zoom.split(","))
        except ValueError:
            region = ()
        if len(region) != 3 or region[2] < 1:
            raise InputError(f"--zoom takes ROW,COL,HALF (three integers, HALF >= 1); got {zoom!r}.")
    path = show_frame(segmented, out, frame=frame, frames=frames, denoised=denoised, zoom=region,
                      storage_options=parse_storage_options(storage_option))
    typer.echo(f"written to {path}")


@app.command()
def evaluate(
    synth_store: Annotated[str, typer.Argument(
        metavar="SYNTH", help="Held-out synthesised store (rayproc labdct synth).")],
    out: Annotated[str, typer.Option("--out", "-o", help="Folder for metrics.json, metrics.md and figures.")],
    model: Annotated[Optional[str], typer.Option("--model", help="Model directory (default: shipped).")] = None,
    real: Annotated[Optional[str], typer.Option("--real", help="Real frames for the background residual.")] = None,
    real_frames: Annotated[Optional[int], typer.Option(
        "--real-frames", min=1, help="Use the first N real frames.")] = None,
    real_beamstop_from: Annotated[Optional[str], typer.Option(
        "--real-beamstop-from", help="geometry.json of the real frames (default: REAL/geometry.json).")] = None,
    tune_fraction: Annotated[float, typer.Option("--tune-fraction", help="Projections used for tuning.")] = 0.5,
    oracle: Annotated[bool, typer.Option(
        "--oracle", help="Tune the routine on all projections and score on the same ones (the strictest "
                         "baseline).")] = False,
    grid: Annotated[Optional[str], typer.Option(
        "--grid", help="Tuning grid as JSON {field: [values]}; background in multiples of the residual noise.")] = None,
    iou: Annotated[float, typer.Option("--iou", help="Smallest IoU of a spot match.")] = 0.3,
    threshold: Annotated[Optional[float], typer.Option("--threshold", help="Network spot threshold.")] = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="Run the network on the GPU.")] = False,
    storage_option: StorageOptions = None,
):
    """Tune the standard routine on part of a synthetic stack; score it and the network on the rest."""
    import json
    from pathlib import Path

    from rayproc.errors import InputError
    from rayproc.pipelines.labdct.evaluate import evaluate_labdct
    from rayproc.storage import parse_storage_options

    try:
        grid_values = None if grid is None else json.loads(Path(grid).read_text() if Path(grid).is_file() else grid)
    except json.JSONDecodeError as exc:
        raise InputError(f"--grid must be JSON like '{{\"sigma\": [1, 2]}}'; got {grid!r} ({exc.msg}).") from exc
    report = evaluate_labdct(synth_store, out, model=model, real=real, real_frames=real_frames,
                             real_beamstop_from=real_beamstop_from, tune_fraction=tune_fraction, oracle=oracle,
                             grid=grid_values,
                             iou=iou, threshold=threshold, device="cuda" if gpu else "cpu",
                             storage_options=parse_storage_options(storage_option))
    if report.model is None:
        typer.echo("no model installed: scoring the standard routine only (pass --model DIR)")
    for name, m in report.methods.items():
        typer.echo(f"  {name:8s} precision {m['precision']:.3f}  recall {m['recall']:.3f}  F1 {m['f1']:.3f}  "
                   f"pixel IoU {m['pixel_iou']:.3f}  ({m['seconds']:.1f} s)")
    for label, record in report.recall_records().items():
        weak = record.get("weak")
        if weak and weak["count"]:
            recalls = "  ".join(f"{name} {weak[name]:.3f}" for name in report.methods if weak.get(name) is not None)
            typer.echo(f"  recall at {label} SNR < {weak['below']:g} ({weak['count']} spots): {recalls}")
    if report.real is not None and "residual_mean" in report.real:
        typer.echo(f"  real frames: network background residual {report.real['residual_mean']:.4f} "
                   f"+- {report.real['residual_std']:.4f}")
    typer.echo(f"{report.out}: {', '.join(Path(f).name for f in report.files)}")


def _ints(text: str, name: str) -> tuple[int, ...]:
    """``"16,32,64,128"`` -> (16, 32, 64, 128)."""
    from rayproc.errors import InputError

    try:
        return tuple(int(v) for v in text.split(","))
    except ValueError:
        raise InputError(f"--{name} must be comma-separated integers like 16,32,64,128; got {text!r}.") from None


@app.command()
def train(
    data: Annotated[list[str], typer.Argument(help="Synth stores with input and target (rayproc labdct synth).")],
    out: ModelOut,
    workers: TrainWorkers = 1,
    gpu: Gpu = False,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Total epochs (a rerun with more continues).")] = 10,
    storage: CheckpointStorage = None,
    widths: Annotated[str, typer.Option("--widths", help="Encoder widths per stage (ResNet34: 64,128,256,512).")] = "64,128,256,512",
    blocks: Annotated[str, typer.Option("--blocks", help="Residual blocks per stage (ResNet34: 3,4,6,3).")] = "3,4,6,3",
    tile: Annotated[int, typer.Option("--tile", help="Training tile edge (a multiple of 32 for 4 stages).")] = 128,
    tiles_per_epoch: Annotated[int, typer.Option("--tiles-per-epoch", min=1, help="Tiles drawn per epoch (all workers).")] = 512,
    val_tiles: Annotated[int, typer.Option("--val-tiles", min=1, help="Validation tiles (held-out frames).")] = 64,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tiles per step per worker.")] = 16,
    lr: Annotated[float, typer.Option("--lr", help="Adam learning rate (halved when validation stalls).")] = 1e-3,
    seed: Annotated[int, typer.Option("--seed", help="Master seed of tiles and initial weights.")] = 0,
    lr_patience: Annotated[int, typer.Option(
        "--lr-patience", min=0, help="Epochs without a lower validation loss before the learning rate is halved.")] = 2,
    scale: Annotated[float, typer.Option("--scale", help="Input normalisation: this many frame medians map to 1.")] = 100.0,
    feature_net: Annotated[Optional[str], typer.Option(
        "--feature-net", help="VGG16-BN weights file: pixel + feature + Gram loss (default: pixel + SSIM).")] = None,
    cpus_per_worker: Annotated[float, typer.Option("--cpus-per-worker", help="Ray CPUs (and torch threads) per worker.")] = 1.0,
    loader_workers: Annotated[int, typer.Option("--loader-workers", min=0, help="DataLoader processes per worker.")] = 0,
    max_failures: Annotated[int, typer.Option("--max-failures", help="Restarts from the last checkpoint after a worker failure.")] = 3,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    progress: Progress = True,
):
    """Train the spot-denoising network on Ray Train (Fang et al. recipe); write MODEL_DIR."""
    from rayproc.pipelines.labdct.train import train_labdct
    from rayproc.storage import parse_storage_options

    report = train_labdct(
        data, out, workers=workers, gpu=gpu, epochs=epochs, storage=storage, widths=_ints(widths, "widths"),
        blocks=_ints(blocks, "blocks"), tile=tile, tiles_per_epoch=tiles_per_epoch, val_tiles=val_tiles,
        batch_size=batch_size, lr=lr, seed=seed, lr_patience=lr_patience, scale=scale, feature_net=feature_net,
        cpus_per_worker=cpus_per_worker,
        loader_workers=loader_workers, max_failures=max_failures, address=address, cpus=cpus,
        storage_options=parse_storage_options(storage_option), progress=progress)
    best = report.best
    resumed = " (resumed from its checkpoints)" if report.resumed else ""
    typer.echo(f"{report.out}: {report.epochs} epochs{resumed}; best epoch {best['epoch'] + 1}: val loss "
               f"{best['val_loss']:.4f}, val spot F1 {best['val_f1']:.3f}, pixel IoU {best['val_iou']:.3f}")


@app.command()
def denoise(
    src: Annotated[str, typer.Argument(help="Frames (omega, det_y, det_z): zarr store (projection, input or intensity), "
                                            "TIFF folder or stack file.")],
    out: Annotated[str, typer.Argument(help="Output zarr store with denoised (path or s3:// URL).")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="Model directory (default: shipped).")] = None,
    tile: Annotated[int, typer.Option(
        "--tile", help="Tile edge in pixels (a multiple of 32; at most ~2x the model's training tile).")] = 128,
    overlap: Annotated[int, typer.Option("--overlap", help="Overlap of neighbouring tiles in pixels.")] = 32,
    blend: Annotated[str, typer.Option("--blend", help="Blend of overlapping tiles: gaussian or mean.")] = "gaussian",
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Tiles per network call.")] = 8,
    frames_per_task: Annotated[int, typer.Option("--frames-per-task", min=1, help="Frames per unit of work.")] = 4,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per actor.")] = False,
    cpus_per_worker: Annotated[float, typer.Option("--cpus-per-worker", help="Ray CPUs (and torch threads) per actor.")] = 1.0,
    workers: Workers = 2,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
):
    """Denoise frames with the spot network, slabs of frames on Ray actors (resumable)."""
    from rayproc.pipelines.labdct.denoise import denoise_labdct
    from rayproc.storage import parse_storage_options

    report = denoise_labdct(src, out, model=model, tile=tile, overlap=overlap, blend=blend, batch_size=batch_size,
                            frames_per_task=frames_per_task, workers=workers, gpu=gpu, cpus_per_worker=cpus_per_worker,
                            address=address, cpus=cpus, storage_options=parse_storage_options(storage_option),
                            overwrite=overwrite, progress=progress)
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete ({report.frames} frames); nothing to do")
    else:
        typer.echo(f"{report.url}: {report.frames} frames denoised ({report.computed} of {report.tasks} slabs "
                   f"computed now)")
    typer.echo(written_line(report.url, parse_storage_options(storage_option)))


# ------------------------------------------------------------------------------------ index
@app.command()
def index(
    spots: Annotated[str, typer.Argument(help="A `rayproc labdct segment` store (or a `labdct simulate` store).")],
    out: Annotated[str, typer.Argument(help="Output zarr store (grain table and per-spot assignment).")],
    geometry: Annotated[str, typer.Option("--geometry", help="geometry.json of the frames (every field).")],
    min_completeness: Annotated[float, typer.Option(
        "--min-completeness", help="Smallest matched / predicted spots of a grain.")] = 0.5,
    angle_tol_deg: Annotated[float, typer.Option(
        "--angle-tol-deg", help="Scattering-vector tolerance of the orientation search (deg).")] = 0.5,
    match_px: Annotated[float, typer.Option("--match-px", help="Pixel tolerance of a matched spot.")] = 3.0,
    seeds_per_round: Annotated[int, typer.Option(
        "--seeds-per-round", min=1, help="Seed spots searched per round (shared over the actors).")] = 32,
    pixel_convention: Annotated[str, typer.Option(
        "--pixel-convention", help="rayproc (axis 1 = y, 0-based), published (raw TIFF rows along z, columns "
                                   "along y, 1-based, as the published code reads them) or auto (published for "
                                   "spots of TIFF frames).")] = "auto",
    workers: Workers = 2,
    cpus: Cpus = None,
    address: Address = None,
    storage_option: StorageOptions = None,
    overwrite: Overwrite = False,
    progress: Progress = True,
):
    """Index grains from segmented spots: pair hypotheses searched on Ray actors, least-squares refinement (resumable)."""
    from rayproc.pipelines.labdct.index import index_labdct
    from rayproc.storage import parse_storage_options

    options = parse_storage_options(storage_option)
    report = index_labdct(spots, out, geometry=geometry, min_completeness=min_completeness,
                          angle_tol_deg=angle_tol_deg, match_px=match_px, seeds_per_round=seeds_per_round,
                          pixel_convention=pixel_convention, workers=workers, address=address, cpus=cpus,
                          storage_options=options, overwrite=overwrite, progress=progress)
    if report.status == "complete":
        typer.echo(f"{report.url}: already complete; nothing to do")
    typer.echo(f"{report.url}: {report.grains} grains, {report.assigned} of {report.spots} spots assigned "
               f"({report.rounds} rounds; {report.seconds:.1f} s)")
    typer.echo(written_line(report.url, options))
