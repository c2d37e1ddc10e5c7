"""``rayproc labdct calibrate``: the spot gain that makes synthesised frames as bright as real ones.

Reads a simulated store (``rayproc labdct simulate``), a background store (``rayproc labdct
background``) and measured frames; binds the physics of :mod:`rayproc.labdct.calibration` to
them: the first ``frames`` projections are synthesised in-process with the published noise
model (one fixed noise realisation, seeded by ``default_rng([seed, p])`` as in ``synth``) at
trial gains until the 90th percentile of the integrated SNR of the spots the standard routine
detects equals that of the measured frames (the bright end: the median would follow the
number of barely detected spots, which depends on the grain sizes more than on the fluence).
Measured frames larger than the projections by an integer factor are binned to the simulated
pixel size. The result is the ``--spot-gain`` to give ``rayproc
labdct synth`` for training and test data that look like the measurement.

With ``mode="detector"`` the synthesis uses the measured detector's noise model
(:func:`rayproc.labdct.synthesis.detector_counts`), whose noise is fixed in absolute counts, so
the background scale ``I0`` is measured too (unless given): the median of the measured
frames off the beam stop over that of the background images.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rayproc.errors import InputError
from rayproc.labdct.calibration import DETECTION_K, bin_to_shape, detected_spot_snr, match_spot_gain
from rayproc.labdct.synthesis import DETECTOR_PRESETS, MODES, synthesize_input
from rayproc.options import look_up_option
from rayproc.pipelines.labdct.stack import beamstop_mask, read_frames
from rayproc.pipelines.labdct.synth import background_frames, stack_hot_pixels, store_detector
from rayproc.storage import open_dataset, resolve

QUANTILES = (10, 25, 50, 75, 90)
# Matched percentile of the detected spots' SNR: the bright end, detected completely in both stacks.
# The median would be biased by truncation: real samples with more small grains have many more
# spots just above the detection threshold than a simulated polycrystal.
MATCHED_QUANTILE = 90.0


@dataclass(frozen=True)
class CalibrationReport:
    """The calibrated gain and the spot-SNR quantiles it reproduces."""

    gain: float
    binning: int
    measured_spots_per_frame: float
    synthesised_spots_per_frame: float
    quantiles: tuple[int, ...]
    measured_snr: tuple[float, ...]
    synthesised_snr: tuple[float, ...]
    settings: dict

    def to_dict(self) -> dict:
        return {"gain": self.gain, "binning": self.binning, "measured_spots_per_frame": self.measured_spots_per_frame,
                "synthesised_spots_per_frame": self.synthesised_spots_per_frame, "quantiles": list(self.quantiles),
                "measured_snr": list(self.measured_snr), "synthesised_snr": list(self.synthesised_snr),
                "settings": self.settings}

    def to_markdown(self) -> str:
        rows = [f"Spot gain **{self.gain:.3g}** (measured frames binned {self.binning}x to the simulated pixel; "
                f"{self.settings['mode']} noise, I0 = {self.settings['i0']:.4g}).",
                "", "| detected spots | per frame | " + " | ".join(f"SNR q{q}" for q in self.quantiles) + " |",
                "|---|---:|" + "---:|" * len(self.quantiles)]
        for name, count, values in (("measured", self.measured_spots_per_frame, self.measured_snr),
                                    (f"synthesised (g = {self.gain:.3g})", self.synthesised_spots_per_frame,
                                     self.synthesised_snr)):
            rows.append(f"| {name} | {count:.0f} | " + " | ".join(f"{v:.1f}" for v in values) + " |")
        return "\n".join(rows)


def _quantile(snr: np.ndarray, q: float) -> float:
    return float(np.percentile(snr, q)) if len(snr) else 0.0


def calibrate_labdct(
    sim: str,
    background: str,
    real: str,
    *,
    i0: float | None = None,
    tau: float = 1.0,
    mode: str = "poisson",
    detector: str = "fe_farfield",
    seed: int = 0,
    frames: int = 12,
    real_frames: int | None = None,
    real_beamstop_from: str | None = None,
    n_rolling: int = 5,
    k: float = DETECTION_K,
    quantile: float = MATCHED_QUANTILE,
    storage_options: dict | None = None,
) -> CalibrationReport:
    """Spot gain for ``rayproc labdct synth`` that matches the spots of ``real`` (see the module notes).

    Parameters
    ----------
    sim, background : str
        Simulated store and background store (or ``"parametric"``).
    real : str
        Measured frames: TIFF folder, stack file or zarr store (consecutive projections).
    i0, tau : float
        Synthesis noise model (``rayproc labdct synth --i0 --tau``); ``i0`` defaults to 1000 in
        ``poisson`` mode and to the measured background level in ``detector`` mode.
    mode, detector : str
        Synthesis noise model (``rayproc labdct synth --mode --detector``): ``poisson`` or ``detector``.
    seed : int
        Seed of the noise realisation.
    frames : int
        Simulated projections synthesised per trial gain (at least ``n_rolling``).
    real_frames : int, optional
        Use only the first measured frames.
    real_beamstop_from : str, optional
        ``geometry.json`` of the measured frames (default: ``REAL/geometry.json`` when present).
    n_rolling, k : detection settings of :func:`rayproc.labdct.calibration.detected_spot_snr`.
    quantile : float
        Percentile of the detected spots' SNR that is matched (default 90: the bright end,
        where detection is complete in both stacks).
    storage_options : dict, optional

    Returns
    -------
    CalibrationReport
    """
    mode = look_up_option(mode, MODES, name="mode")
    if mode == "constant":
        raise InputError("calibration needs a noise model; got mode 'constant' (use poisson or detector).")
    detector = look_up_option(detector, DETECTOR_PRESETS, name="detector")
    measured, _ = read_frames(real, storage_options=storage_options)
    measured = measured[:real_frames] if real_frames else measured
    if len(measured) < n_rolling:
        raise InputError(f"calibration needs at least {n_rolling} measured frames; got {len(measured)}.")
    source = open_dataset(resolve(sim, storage_options))
    if "projection" not in source or "background" not in source.attrs:
        raise InputError(f"{sim} is not a simulated LabDCT store (`rayproc labdct simulate`).")
    count = min(frames, source.sizes["omega"])
    if count < n_rolling:
        raise InputError(f"calibration needs at least {n_rolling} simulated projections; {sim} has {count}.")
    clean = source.projection[:count].values.astype(np.float64)
    c_bg = float(source.attrs["background"])
    beamstop = clean[0] == 0
    clean[:, beamstop] = c_bg
    shape = clean.shape[1:]
    images = background_frames(background, count, shape, beamstop, seed, storage_options)
    images = images[np.arange(count) % len(images)]

    default_geometry = Path(str(real)) / "geometry.json"
    if real_beamstop_from is None and default_geometry.is_file():
        real_beamstop_from = str(default_geometry)
    measured_shape = measured.shape[1:]
    measured, real_beamstop, factor = bin_to_shape(measured, shape, beamstop_mask(real_beamstop_from, measured_shape))
    if not factor:
        raise InputError(f"measured frames {measured_shape} are not an integer multiple of the simulated "
                         f"projections {shape}; simulate with a matching --binning.")
    noise = {"mode": mode, "tau": tau}
    hot = None
    if mode == "detector":
        noise["detector"], hot_params = store_detector(source, detector)
        hot = stack_hot_pixels(shape, seed, hot_params)
    if i0 is None:
        i0 = 1000.0 if mode == "poisson" else measured_background_scale(measured, images, real_beamstop, beamstop)
    detect = {"n_rolling": n_rolling, "k": k}
    measured_snr = detected_spot_snr(measured, beamstop=real_beamstop, **detect)
    if not len(measured_snr):
        raise InputError(f"no spots detected in {real} at {k:g} x its residual noise; nothing to calibrate to.")

    def synthesised_snr(gain: float) -> np.ndarray:
        stack = np.stack([synthesize_input(clean[p], images[p], np.random.default_rng([seed, p]), c_bg=c_bg,
                                           spot_gain=gain, i0=i0, hot_pixels=hot, **noise) for p in range(count)])
        return detected_spot_snr(stack, beamstop=beamstop, **detect)

    gain = match_spot_gain(_quantile(measured_snr, quantile), lambda g: _quantile(synthesised_snr(g), quantile))
    at_gain = synthesised_snr(gain)
    settings = {"sim": str(sim), "background": str(background), "real": str(real), "i0": i0, "tau": tau,
                "mode": mode, **({"detector": detector} if mode == "detector" else {}),
                "seed": seed, "frames": count, "real_frames": len(measured), "n_rolling": n_rolling, "k": k,
                "quantile": quantile, "real_beamstop_from": real_beamstop_from}
    return CalibrationReport(
        gain, factor, len(measured_snr) / len(measured), len(at_gain) / count, QUANTILES,
        tuple(np.percentile(measured_snr, QUANTILES).tolist()),
        tuple(np.percentile(at_gain, QUANTILES).tolist()) if len(at_gain) else (np.nan,) * len(QUANTILES),
        settings)


def measured_background_scale(measured, images, measured_beamstop, beamstop) -> float:
    """``I0`` that gives the background images the measured frames' level: ratio of medians off the beam stop."""
    off_measured = np.ones(measured.shape[1:], bool) if measured_beamstop is None else ~measured_beamstop
    return float(np.median(measured[:, off_measured]) / np.median(images[:, ~beamstop]))


__all__ = ["CalibrationReport", "calibrate_labdct", "measured_background_scale"]
