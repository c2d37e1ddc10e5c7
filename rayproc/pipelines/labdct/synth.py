"""``rayproc labdct synth``: noisy training inputs and segmented targets from simulated projections.

For every projection ``p`` of a simulated store (``rayproc labdct simulate``) one Ray task
writes, following Fang et al. (see :mod:`rayproc.labdct.synthesis`):

* ``input`` float32: :func:`~rayproc.labdct.synthesis.synthesize_input` of the projection, its
  constant background ``C_BG`` (the store's ``background`` attr) replaced by a real background
  image times ``R_BG ~ U[I0 - sqrt(I0), I0 + sqrt(I0)]``, plus ``tau * Poisson(x0 / 2)``;
* ``target`` uint8: :func:`~rayproc.labdct.synthesis.log_segmentation` of the noise-free
  projection less ``C_BG`` (255 on spots, 0 elsewhere);
* a copy of ``spot_label``; the spot table is copied at the end with one more column,
  ``spot_snr`` (below).

Randomness of projection ``p`` comes from ``default_rng([seed, p])`` only, so the stack is
bit-identical for any number of workers, and a killed run resumes where it stopped.

Background frames: projection ``p`` takes frame ``p mod N_bg`` (``pick="cycle"``) or a frame
drawn from its own generator (``pick="random"``). Frames whose shape differs from the
projections are centre-cropped to the projections' aspect ratio, resized by linear
interpolation and divided by their maximum again (:func:`fit_background`).
``background="parametric"`` draws smooth synthetic backgrounds instead
(:func:`rayproc.labdct.background.parametric_background`, seeded by ``[seed, 0, 2]``).

Beam stop: the simulated projection is 0 under the beam stop (set after adding ``C_BG``);
those pixels are given the value ``C_BG`` first, so the beam stop shows the shadow carried by
the real background image (as in measured frames) instead of ``-C_BG``.

SNR of a true spot (``spot_snr``): its integrated intensity ``I`` (``spot_intensity``) over
the Poisson noise of the background under its ``A`` labelled pixels (``spot_area_px``)::

    SNR = g I / (tau * sqrt(A * I0 * mean_spot(I_BG) / 2))

with ``g`` the projection's spot gain (``spot_gain``: 1 in the published recipe; fixed, or drawn
log-uniformly per projection from a range, from ``default_rng([seed, p, 1])``; stored per
projection),

using ``Var[x | x0] = tau^2 x0 / 2`` with ``x0 ~ I0 * I_BG`` on background (``R_BG`` is
within ``1 +- 1/sqrt(I0)`` of ``I0``); in ``detector`` mode the variance is the detector's,
``c x0 sum(K^2) + read_noise^2`` (:func:`~rayproc.labdct.synthesis.pixel_noise_variance`).
Per pixel (``spot_peak_snr``): the spot's peak signal
``g max(I_simu - C_BG)`` over the same noise for ``A = 1``, i.e. how far its brightest pixel
stands above the background noise (a spot with peak SNR < 2 is invisible pixel by pixel).
NaN for spots without labelled pixels and in ``constant`` mode (no noise model); infinite for
``tau = 0``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import xarray as xr
from scipy import ndimage as ndi

from rayproc.errors import InputError
from rayproc.labdct.synthesis import (
    DETECTOR_PRESETS, MODES, detector_at_pixel, hot_pixel_map, log_segmentation, pixel_noise_variance, synthesize_input,
)
from rayproc.options import look_up_option
from rayproc.runtime import ray_session, run_stage
from rayproc.storage.outputs import claim_store
from rayproc.storage import (
    ArraySpec, Location, append_variables, command_line, create_dataset, done_tasks, finalize,
    open_dataset, provenance, resolve, task_tables, write_task,
)

PICKS = ("cycle", "random")
PARAMETRIC = "parametric"
# Segmentation of the noise-free projections into targets (log_segmentation defaults).
TARGET_PARAMS = {"sigma": 1.0, "percentage": 20.0, "min_size": 4}


def task_name(index: int) -> str:
    return f"projection-{index:05d}"


@dataclass(frozen=True)
class SynthReport:
    url: str
    projections: int
    computed: int
    spots: int
    status: str


def fit_background(frames, shape: tuple[int, int]) -> np.ndarray:
    """Background frames fitted to the projections' ``shape``, each with maximum 1.

    Parameters
    ----------
    frames : array_like, shape (N, H, W)
        Background images.
    shape : (int, int)
        Frame shape of the projections.

    Returns
    -------
    numpy.ndarray of float32, shape (N, *shape)
        Centre-cropped to the aspect ratio of ``shape``, resized by linear interpolation and
        divided by their maximum; unchanged (but renormalised) when the shapes already match.
    """
    frames = np.asarray(frames, dtype=np.float32)
    if frames.ndim != 3:
        raise InputError(f"background must be (N, H, W); got shape {frames.shape} instead.")
    height, width = frames.shape[1:]
    target_h, target_w = shape
    keep_h = min(height, round(width * target_h / target_w))
    keep_w = min(width, round(height * target_w / target_h))
    top, left = (height - keep_h) // 2, (width - keep_w) // 2
    cropped = frames[:, top : top + keep_h, left : left + keep_w]
    if cropped.shape[1:] != tuple(shape):
        zoom = (1, target_h / keep_h, target_w / keep_w)
        cropped = ndi.zoom(cropped, zoom, order=1, mode="nearest", grid_mode=True)
    peak = cropped.max(axis=(1, 2), keepdims=True)
    if (peak <= 0).any():
        raise InputError("a background frame has no positive value; got frames <= 0.")
    return (cropped / peak).astype(np.float32)


def spot_snr(intensity, area, background_level, *, tau: float, i0: float, mode: str = "poisson",
             detector: dict | None = None) -> np.ndarray:
    """SNR of integrated spots over the background noise (see the module notes), shape (K,).

    The noise of one pixel at the background's expected counts ``i0 * background_level`` is
    :func:`rayproc.labdct.synthesis.pixel_noise_variance` of the synthesis noise model.
    """
    intensity, area, level = (np.asarray(a, dtype=np.float64) for a in (intensity, area, background_level))
    noise = np.sqrt(area * pixel_noise_variance(i0 * level, mode=mode, tau=tau, detector=detector))
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(area > 0, intensity / noise, np.nan)
    return snr


class _SynthWriter:
    """Per-actor stage: synthesise projection ``p`` and write input, target and labels.

    Items are ``(p, [background_ref])``: the fitted backgrounds travel once through the object
    store and are fetched by each actor on its first item.
    """

    def __init__(self, sim: Location, out: Location, seed: int, c_bg: float, options: dict, pick: str,
                 gain_range: tuple[float, float], hot: dict | None = None):
        self.sim, self.out, self.seed, self.c_bg, self.options, self.pick = sim, out, seed, c_bg, options, pick
        self.gain_range, self.hot = gain_range, hot
        self.source: xr.Dataset | None = None
        self.backgrounds: np.ndarray | None = None
        self.rows: dict[int, np.ndarray] = {}

    def __call__(self, item) -> int:
        index, (background_ref,) = item
        if self.source is None:
            import ray

            self.backgrounds = ray.get(background_ref)
            self.source = open_dataset(self.sim)
            self.rows = {p: np.flatnonzero(self.source.spot_projection.values == p)
                         for p in range(self.source.sizes["omega"])}
            if self.hot is not None:  # the detector's fixed pattern: one map per stack
                self.options = {**self.options,
                                "hot_pixels": stack_hot_pixels(self.backgrounds.shape[1:], self.seed, self.hot)}
        rng = np.random.default_rng([self.seed, index])
        frame = index % len(self.backgrounds) if self.pick == "cycle" else int(rng.integers(len(self.backgrounds)))
        background = self.backgrounds[frame]
        clean = self.source.projection[index].values.astype(np.float64)
        clean[clean == 0] = self.c_bg  # beam stop: the background image carries its shadow
        gain = projection_gain(self.gain_range, self.seed, index)
        noisy = synthesize_input(clean, background, rng, c_bg=self.c_bg, spot_gain=gain, **self.options)
        target = log_segmentation(clean - self.c_bg, **TARGET_PARAMS)
        labels = self.source.spot_label[index].values
        rows = self.rows[index]
        ids = self.source.spot_id.values[rows]
        with np.errstate(invalid="ignore"):  # spots without labelled pixels: NaN
            level = ndi.mean(background, labels, ids) if len(ids) else np.zeros(0)
        noise = {k: self.options.get(k) for k in ("tau", "i0", "mode", "detector")}
        snr = spot_snr(gain * self.source.spot_intensity.values[rows], self.source.spot_area_px.values[rows], level,
                       **noise)
        with np.errstate(invalid="ignore"):
            peak = ndi.maximum(clean - self.c_bg, labels, ids) if len(ids) else np.zeros(0)
        peak_snr = spot_snr(gain * np.asarray(peak), 1, level, **noise)
        if self.options["mode"] == "constant":
            snr[:] = peak_snr[:] = np.nan
        write_task(self.out, task_name(index),
                   {"input": ((index,), noisy), "target": ((index,), target), "spot_label": ((index,), labels)},
                   table={"row": rows, "snr": snr, "peak_snr": peak_snr, "background_frame": np.array([frame]),
                          "spot_gain": np.array([gain])})
        return index


def store_detector(source: xr.Dataset, detector: str) -> tuple[dict, dict]:
    """``detector`` (a ``DETECTOR_PRESETS`` name) on the pixel of simulated store ``source`` (its
    ``det_y`` spacing, mm): keywords of ``detector_counts`` and of ``hot_pixel_map``."""
    return detector_at_pixel(detector, float(abs(source.det_y.values[1] - source.det_y.values[0])))


def stack_hot_pixels(shape: tuple[int, int], seed: int, hot: dict) -> np.ndarray:
    """The stack's fixed hot-pixel map: one draw from ``default_rng([seed, 0, 3])``."""
    return hot_pixel_map(shape, np.random.default_rng([seed, 0, 3]), **hot)


def projection_gain(gain_range: tuple[float, float], seed: int, index: int) -> float:
    """Spot gain of projection ``index``: fixed, or log-uniform in ``gain_range`` from ``default_rng([seed, index, 1])``."""
    low, high = gain_range
    if low == high:
        return float(low)
    return float(np.exp(np.random.default_rng([seed, index, 1]).uniform(np.log(low), np.log(high))))


def background_frames(background: str, n: int, shape: tuple[int, int], beamstop: np.ndarray, seed: int,
                      storage_options: dict | None) -> np.ndarray:
    """Background images ``(frames, *shape)`` with maximum 1: from a background store, or parametric."""
    if background == PARAMETRIC:
        from rayproc.labdct.background import parametric_background

        return parametric_background((n, *shape), np.random.default_rng([seed, 0, 2]), beamstop=beamstop)
    ds = open_dataset(resolve(background, storage_options))
    if "background" not in ds:
        raise InputError(f"{background} has no 'background' variable (make one with `rayproc labdct "
                         f"background`); it holds {sorted(ds.data_vars)}.")
    return fit_background(ds.background.values, shape)


def synthesize_labdct(
    sim: str,
    background: str,
    out: str,
    *,
    mode: str = "poisson",
    tau: float = 1.0,
    i0: float = 110.0,
    spot_gain: float | tuple[float, float] = 1.0,
    seed: int = 0,
    pick: str = "cycle",
    detector: str = "fe_farfield",
    workers: int = 1,
    address: str | None = None,
    cpus: int | None = None,
    storage_options: dict | None = None,
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    on_start=None,
) -> SynthReport:
    """Synthesise noisy inputs and segmented targets for every projection of ``sim`` into ``out``.

    Parameters
    ----------
    sim : str
        Simulated store (``projection``, ``spot_label``, spot table, ``background`` attr).
    background : str
        Background store (``background`` (frame, y, x)) or ``"parametric"``.
    out : str
        Output zarr store.
    mode, tau, i0 : see :func:`rayproc.labdct.synthesis.synthesize_input`; ``mode="detector"``
        puts the expected counts through a measured detector's noise model instead of the
        published ``tau Poisson(x0 / 2)``.
    detector : str
        Detector mode: a :data:`rayproc.labdct.synthesis.DETECTOR_PRESETS` name, scaled to the
        simulated pixel (:func:`rayproc.labdct.synthesis.detector_at_pixel`); hot pixels are
        drawn once per stack from ``default_rng([seed, 0, 3])``.
    spot_gain : float or (float, float)
        Gain of the simulated spot signal: one value, or a range from which each projection
        draws its own gain log-uniformly (from ``default_rng([seed, p, 1])``). 1 is the
        published recipe; ``rayproc labdct calibrate`` measures the gain that matches real frames.
    seed : int
        Projection ``p`` draws from ``default_rng([seed, p])``.
    pick : {"cycle", "random"}
        Background frame of each projection (see the module notes).
    workers, address, cpus : Ray actors, cluster address, CPUs of an embedded Ray.
    storage_options, overwrite, progress, command, on_start : as for the other pipelines.

    Returns
    -------
    SynthReport
    """
    mode = look_up_option(mode, MODES, name="mode")
    pick = look_up_option(pick, PICKS, name="pick")
    detector = look_up_option(detector, DETECTOR_PRESETS, name="detector")
    if tau < 0 or i0 <= 0 or workers < 1:
        raise InputError(f"--tau must be >= 0, --i0 > 0 and --workers >= 1; got {tau}, {i0}, {workers}.")
    gain_range = (spot_gain, spot_gain) if np.isscalar(spot_gain) else tuple(spot_gain)
    if len(gain_range) != 2 or not (0 < gain_range[0] <= gain_range[1] < np.inf):
        raise InputError(f"--spot-gain must be a positive value or a range LOW:HIGH with 0 < LOW <= HIGH; "
                         f"got {spot_gain!r}.")
    sim_location, location = resolve(sim, storage_options), resolve(out, storage_options)
    inputs = [sim_location] + ([] if background == PARAMETRIC else [resolve(background, storage_options)])
    claim_store(location, inputs=inputs, overwrite=overwrite)
    source = open_dataset(sim_location)
    missing = sorted({"projection", "spot_label", "spot_projection", "spot_id", "spot_intensity",
                      "spot_area_px"} - set(source.variables))
    if missing or "background" not in source.attrs:
        raise InputError(f"{sim_location.url} is not a simulated LabDCT store (`rayproc labdct simulate`): "
                         f"missing {missing or ['background attr']}.")
    n, ny, nx = source.projection.shape
    c_bg = float(source.attrs["background"])
    noise = {"mode": mode, "tau": tau, "i0": i0}
    hot = None
    if mode == "detector":
        noise["detector"], hot = store_detector(source, detector)
    params = {"sim": sim_location.url, "background": background if background == PARAMETRIC else
              resolve(background, storage_options).url, **noise, "spot_gain": list(gain_range), "seed": seed,
              "pick": pick, "target": TARGET_PARAMS, **({"hot_pixels": hot} if hot else {})}
    coords = {name: source[name].variable for name in ("omega", "det_y", "det_z")}
    frame = (1, ny, nx)
    with ray_session(address, cpus=cpus, workers=workers, actor_cpus=1.0):
        status = create_dataset(
            location,
            {
                "input": ArraySpec(("omega", "det_y", "det_z"), (n, ny, nx), "float32", chunks=frame,
                                   attrs={"units": "counts", "long_name": "synthesised noisy projection"}),
                "target": ArraySpec(("omega", "det_y", "det_z"), (n, ny, nx), "uint8", chunks=frame,
                                    attrs={"long_name": "LoG segmentation of the noise-free projection (255 = spot)"}),
                "spot_label": ArraySpec(("omega", "det_y", "det_z"), (n, ny, nx), "int32", chunks=frame,
                                        attrs={"long_name": "spot id per pixel (0 = none), from the simulation"}),
            },
            coords=coords,
            attrs={"title": f"synthesised LabDCT training pairs ({mode} noise)", "c_bg": c_bg, "mode": mode,
                   "tau": tau, "i0": i0, **({"detector": detector} if mode == "detector" else {})},
            provenance_attrs=provenance(command or command_line(), params, seed=seed),
            overwrite=overwrite,
            inputs=inputs,
        )
        if status == "complete":
            return SynthReport(location.url, n, 0, source.sizes["spot"], status)
        beamstop = source.projection[0].values == 0
        backgrounds = background_frames(background, n, (ny, nx), beamstop, seed, storage_options)
        finished = done_tasks(location)
        todo = [p for p in range(n) if task_name(p) not in finished]
        import ray

        background_ref = ray.put(backgrounds)
        stage = functools.partial(_SynthWriter, sim_location, location, seed, c_bg, noise, pick, gain_range, hot)
        computed = sum(1 for _ in run_stage(stage, [(p, [background_ref]) for p in todo], workers=workers,
                                            desc="synthesis", progress=progress, on_start=on_start,
                                            done_before=n - len(todo), total=n))
    tasks = [task_name(p) for p in range(n)]
    tables = task_tables(location, [t for t in tasks if t in done_tasks(location)])
    snr, peak_snr = np.full(source.sizes["spot"], np.nan), np.full(source.sizes["spot"], np.nan)
    for table in tables.values():
        snr[table["row"]] = table["snr"]
        peak_snr[table["row"]] = table["peak_snr"]
    spot_vars = [name for name, var in source.data_vars.items() if var.dims == ("spot",)]
    table = source[spot_vars].load()
    table["spot_snr"] = ("spot", snr, {"long_name": "integrated spot SNR over the background noise"})
    table["spot_peak_snr"] = ("spot", peak_snr, {"long_name": "peak spot signal over the per-pixel background noise"})
    used = np.array([tables[t]["background_frame"][0] if t in tables else -1 for t in tasks], np.int32)
    table["background_frame"] = ("omega", used, {"long_name": "background frame used (-1: not done)"})
    gains = np.array([tables[t]["spot_gain"][0] if t in tables else np.nan for t in tasks])
    table["spot_gain"] = ("omega", gains, {"long_name": "gain of the simulated spot signal"})
    append_variables(location, table.drop_vars([c for c in table.coords if c not in ("spot",)]))
    finalize(location, tasks)
    return SynthReport(location.url, n, computed, source.sizes["spot"], status)


__all__ = ["PICKS", "SynthReport", "background_frames", "fit_background", "projection_gain", "spot_snr",
           "stack_hot_pixels", "store_detector", "synthesize_labdct"]
