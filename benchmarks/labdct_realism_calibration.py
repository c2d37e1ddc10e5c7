"""Calibrate the LabDCT simulator's realism terms on real iron frames 1-30 and check them on 31-41.

Simulated frames are built like the measurement: the forward model with its physics terms
(:func:`rayproc.labdct.projection.simulate_projection`), spots times a gain on the background of
the real frame at the same angle (spot-filled and smoothed, :func:`extract_background`, times
the frame's level), then the detector (:func:`rayproc.labdct.synthesis.detector_counts`: photon
noise, scintillator blur, read noise, hot pixels). Both stacks are measured the same way
(:func:`rayproc.labdct.realism.realism_summary`, the standard routine with its defaults) at the
real pixel size (1024^2, 68 um).

Fitted directly from the real frames (fit frames only):

* detector: counts per photon and scintillator blur from the frame-to-frame noise (variance vs
  level, neighbour correlation), read noise from the variance at zero level, hot pixels from
  pixels far above their neighbours in most frames;
* beam stop: transmission and edge width from the background's profile across the stop edge.

Fitted by matching the realism targets (spots per frame, median spot area, 90th percentile of
radial/tangential extent): on a grid of focal-spot sizes and mosaicities, the spot gain is set so
that the spot count matches, and the grid point with the smallest RMS relative misfit of the three
targets wins (the search on frames 1-15 for time, the fitted result reported on 1-30). Then
frames 31-41 are simulated and compared with the same parameters.

    nice -n 5 python benchmarks/labdct_realism_calibration.py [--real ../shared/data/labdct-fe-farfield]
        [--figure docs/figures/labdct_realism.png] [--json OUT.json] [--sources 60 120 180] [--mosaics 0 0.01]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from scipy.ndimage import gaussian_filter1d

from rayproc.labdct.background import extract_background
from rayproc.labdct.crystallography import reflection_set
from rayproc.labdct.detector_masks import hot_pixel_mask
from rayproc.labdct.geometry import GEOMETRY_PRESETS
from rayproc.labdct.polycrystal import make_polycrystal
from rayproc.labdct.projection import beam_stop_transmission, simulate_projection
from rayproc.labdct.realism import (
    beamstop_edge_profile,
    compare_summaries,
    detect_spots,
    normalise_frame_flux,
    realism_summary,
    spot_measurements,
)
from rayproc.labdct.synthesis import detector_counts, hot_pixel_map
from rayproc.storage.readers import read_volume

FIT, CHECK = slice(0, 30), slice(30, 41)
SEARCH = slice(0, 15)  # the parameter search runs on the first half of the fit frames (time), the fit on all 30
TARGETS = ("spots_per_frame", "median_area_px", "p90_elongation")
SEED = 17


# --- detector, hot pixels and beam stop: fitted directly on the real frames -------------------------------------


def _kernel(sigma: float) -> np.ndarray:
    delta = np.zeros(61)
    delta[30] = 1.0
    return gaussian_filter1d(delta, sigma) if sigma > 0 else delta


def fit_detector_noise(frames: np.ndarray, beamstop: np.ndarray, tile: int = 32) -> dict:
    """Counts per photon, scintillator blur and read noise from consecutive-frame differences.

    ``d = f_(i+1) - f_i`` holds twice the noise and no background; per tile, its robust
    variance / 2 against the tile's level gives ``var = a E + b`` (``b = 0``, a line through the
    origin, when the straight-line fit gives ``b < 0``); the neighbour correlation of
    ``d`` fixes the Gaussian blur sigma of the photon noise (correlation ``sum K_i K_(i+1) /
    sum K^2`` of the photon part); ``a = c (sum K^2)^2`` then gives the counts per photon ``c``,
    ``b`` the read noise.
    """
    frames = normalise_frame_flux(frames, beamstop=beamstop)
    diff = frames[1:] - frames[:-1]
    level = (frames[1:] + frames[:-1]) / 2
    n, h, w = diff.shape
    levels, variances, corr_num, corr_den = [], [], 0.0, 0.0
    for i in range(0, h, tile):
        for j in range(0, w, tile):
            if beamstop[i:i + tile, j:j + tile].any():
                continue
            block = diff[:, i:i + tile, j:j + tile]
            sigma = 1.4826 * np.median(np.abs(block - np.median(block)))
            levels.append(float(np.median(level[:, i:i + tile, j:j + tile])))
            variances.append(sigma**2 / 2)
            quiet = np.abs(block) < 4 * sigma
            pair = quiet[:, :, 1:] & quiet[:, :, :-1]
            corr_num += float((block[:, :, 1:] * block[:, :, :-1])[pair].sum())
            corr_den += float((block[:, :, 1:] ** 2)[pair].sum())
    levels, variances = np.array(levels), np.array(variances)
    slope, intercept = np.polyfit(levels, variances, 1)
    if intercept < 0:  # no room for read noise: the photon term alone, through the origin
        slope, intercept = float((levels * variances).sum() / (levels**2).sum()), 0.0
    measured = corr_num / corr_den
    mean_level = float(np.median(levels))
    photon_share = slope * mean_level / (slope * mean_level + max(intercept, 0.0))
    target = min(measured / photon_share, 0.95)
    sigmas = np.linspace(0.05, 3.0, 300)
    corr = np.array([(k[1:] * k[:-1]).sum() / (k**2).sum() for k in map(_kernel, sigmas)])
    sigma = float(np.interp(target, corr, sigmas))
    k2 = float((_kernel(sigma) ** 2).sum() ** 2)
    return {"counts_per_photon": float(slope / k2), "noise_psf_sigma_px": sigma,
            "read_noise": float(np.sqrt(max(intercept, 0.0))), "neighbour_correlation": float(measured),
            "variance_slope": float(slope), "variance_intercept": float(intercept)}


def fit_hot_pixels(frames: np.ndarray) -> dict:
    """Share of hot pixels and their mean excess over the 3 x 3 median (exponential model)."""
    hot = hot_pixel_mask(frames)
    excess = frames - ndi.median_filter(frames, size=(1, 3, 3), mode="nearest")
    offsets = np.median(excess[:, hot], axis=0) if hot.any() else np.zeros(0)
    return {"fraction": float(hot.mean()), "mean_counts": float(offsets.mean()) if len(offsets) else 0.0}


def fit_beam_stop(background: np.ndarray, geometry, distances=np.arange(-90, 151, 6)) -> dict:
    """Transmission and edge sigma (px) whose transmission map has the background's edge profile."""
    mask = geometry.beam_stop_mask().T
    _, real = beamstop_edge_profile(background, mask, distances=distances)
    best = (np.inf, 0.0, 0.0)
    for transmission in np.arange(0.0, 0.61, 0.1):
        for edge in (5, 10, 20, 30, 40, 50, 60):
            model_map = beam_stop_transmission(geometry, transmission=transmission, edge_px=edge).T
            _, model = beamstop_edge_profile(model_map, mask, distances=distances)
            err = np.nansum((model - real) ** 2)
            if err < best[0]:
                best = (err, transmission, edge)
    return {"transmission": float(best[1]), "edge_px": float(best[2]), "rms_misfit": float(np.sqrt(best[0] / len(real)))}


def real_background_counts(frames: np.ndarray, beamstop: np.ndarray) -> np.ndarray:
    """Expected background counts per real frame: the spot-free background times the frame's level."""
    shape = extract_background(frames, beamstop=beamstop)
    level = np.median((frames / np.maximum(shape, 1e-6))[:, ~beamstop], axis=1)
    return shape * level[:, None, None]


# --- simulated frames ----------------------------------------------------------------------------------------------


class Simulator:
    """Noise-free spot images (real orientation: rows det_z, columns det_y) cached per physics setting."""

    def __init__(self, geometry, omegas, *, preset="D35", sample_seed=31):
        self.geometry = geometry
        self.omegas = np.asarray(omegas, dtype=float)
        self.sample = make_polycrystal(preset, sample_seed)
        self.reflections = reflection_set(geometry.material, 4)
        self.cache = {}

    def spots(self, physics: dict, frames: slice) -> np.ndarray:
        key = (tuple(sorted(physics.items())), frames.start, frames.stop)
        if key not in self.cache:
            images = []
            for index in range(*frames.indices(len(self.omegas))):
                image, _, _ = simulate_projection(self.sample, self.geometry, float(self.omegas[index]),
                                                  reflections=self.reflections, rng=[SEED, index], **physics)
                images.append(image.T)
            self.cache[key] = np.stack(images)
        return self.cache[key]


def synthesise(spots, backgrounds, gain, detector, hot, seed) -> np.ndarray:
    expected = backgrounds + gain * spots
    return np.stack([detector_counts(expected[i], np.random.default_rng([seed, i]), hot_pixels=hot, **detector)
                     for i in range(len(expected))])


def measure(frames, geometry) -> dict:
    center = geometry.beam_center_px[::-1]  # real frames: rows det_z, columns det_y
    return realism_summary(frames, center=center, beamstop=geometry.beam_stop_mask().T)


def quick_measure(frames, geometry) -> dict:
    """The three targets only (no noise map, no profiles), for the parameter search."""
    labels, residual, _, noise = detect_spots(normalise_frame_flux(frames, beamstop=geometry.beam_stop_mask().T),
                                              beamstop=geometry.beam_stop_mask().T)
    spots = spot_measurements(labels, residual, noise, geometry.beam_center_px[::-1])
    return {"pooled": {"spots_per_frame": len(spots["area_px"]) / len(frames),
                       "median_area_px": float(np.median(spots["area_px"])),
                       "p90_elongation": float(np.percentile(spots["elongation"], 90)),
                       "median_peak_snr": float(np.median(spots["peak_snr"]))}}


def misfit(sim: dict, real: dict) -> float:
    return float(np.sqrt(np.mean([(sim["pooled"][k] / real["pooled"][k] - 1) ** 2 for k in TARGETS])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--real", default="../shared/data/labdct-fe-farfield")
    parser.add_argument("--figure", default=None, help="write the check-set figure here (e.g. docs/figures/labdct_realism.png)")
    parser.add_argument("--json", default=None)
    parser.add_argument("--sources", type=float, nargs="+", default=[60.0, 120.0, 180.0],
                        help="focal-spot FWHM values (um) searched")
    parser.add_argument("--mosaics", type=float, nargs="+", default=[0.0, 0.01],
                        help="mosaicity values (deg) searched")
    parser.add_argument("--gain", type=float, default=0.045, help="starting spot gain")
    args = parser.parse_args()
    t0 = time.perf_counter()

    geometry = GEOMETRY_PRESETS["fe_farfield"]
    real, _ = read_volume(args.real)
    real = np.asarray(real, dtype=np.float32)
    beamstop = geometry.beam_stop_mask().T
    omegas = geometry.omega_start_deg + geometry.omega_step_deg * np.arange(len(real))
    detector = fit_detector_noise(real[FIT], beamstop)
    hot_fit = fit_hot_pixels(real[FIT])
    backgrounds = real_background_counts(real, beamstop)
    stop = fit_beam_stop(backgrounds[FIT].mean(axis=0), geometry)
    print(f"detector: {json.dumps(detector)}\nhot pixels: {json.dumps(hot_fit)}\nbeam stop: {json.dumps(stop)}")
    print(f"[{time.perf_counter() - t0:.0f} s] measuring the real frames")
    noise_keys = ("counts_per_photon", "noise_psf_sigma_px", "read_noise")
    det = {k: detector[k] for k in noise_keys}
    hot = hot_pixel_map(real.shape[1:], SEED, **hot_fit)
    real_fit, real_check = measure(real[FIT], geometry), measure(real[CHECK], geometry)

    simulator = Simulator(geometry, omegas)
    physics = {"psf_sigma_px": 0.0, "scintillator_depth": True, "strain_rms": 1e-4, "source_fwhm_um": 0.0,
               "mosaicity_deg": 0.0, "beam_stop_transmission_fraction": stop["transmission"],
               "beam_stop_edge_px": stop["edge_px"]}
    gain = args.gain

    def evaluate(physics, gain, frames=FIT, quick=False):
        sim = synthesise(simulator.spots(physics, frames), backgrounds[frames], gain, det, hot, SEED)
        return quick_measure(sim, geometry) if quick else measure(sim, geometry)

    def show(tag, summary, reference):
        values = "  ".join(f"{k} {summary['pooled'][k]:.3g} ({summary['pooled'][k] / reference['pooled'][k] - 1:+.0%})"
                           for k in TARGETS)
        print(f"[{time.perf_counter() - t0:.0f} s] {tag}: {values}", flush=True)

    real_search = quick_measure(real[SEARCH], geometry)
    show("real frames 1-30", real_fit, real_fit)
    show("real frames 1-15 (search)", real_search, real_search)
    def gain_for_count(trial, gain):
        """Spot gain at which ``trial`` finds as many spots per frame as the real frames (secant in log gain)."""
        target = real_search["pooled"]["spots_per_frame"]
        points = []
        for _ in range(4):
            summary = evaluate(trial, gain, SEARCH, quick=True)
            count = summary["pooled"]["spots_per_frame"]
            points.append((np.log(gain), np.log(max(count, 1.0)), summary))
            if abs(count / target - 1) < 0.03:
                break
            if len(points) == 1:
                gain *= (target / max(count, 1.0)) ** 1.5  # counts grow slower than the gain
            else:
                (x0, y0, _), (x1, y1, _) = points[-2], points[-1]
                slope = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.7
                gain = float(np.exp(x1 + (np.log(target) - y1) / max(slope, 0.1)))
        best = min(points, key=lambda p: abs(p[1] - np.log(target)))
        return float(np.exp(best[0])), best[2]

    results = []
    for source in args.sources:
        for mosaic in args.mosaics:
            trial = {**physics, "source_fwhm_um": source, "mosaicity_deg": mosaic}
            trial_gain, summary = gain_for_count(trial, gain)
            score = misfit(summary, real_search)
            results.append((score, source, mosaic, trial_gain))
            show(f"source {source:g} um, mosaicity {mosaic:g} deg, gain {trial_gain:.3g} (misfit {score:.3f})",
                 summary, real_search)
    score, source, mosaic, gain = min(results)
    physics = {**physics, "source_fwhm_um": source, "mosaicity_deg": mosaic}
    print(f"  -> source {source:g} um, mosaicity {mosaic:g} deg, gain {gain:.3g} (misfit {score:.3f})")

    fit_sim = evaluate(physics, gain)
    check_sim = evaluate(physics, gain, CHECK)
    rows_fit, rows_check = compare_summaries(fit_sim, real_fit), compare_summaries(check_sim, real_check)
    print(f"\nfitted: gain {gain:g}, physics {json.dumps(physics)}")
    print("\n| quantity | sim 1-30 | real 1-30 | rel | sim 31-41 | real 31-41 | rel |\n|---|---:|---:|---:|---:|---:|---:|")
    for a, b in zip(rows_fit, rows_check):
        print(f"| {a['quantity']} | {a['sim']:.3g} | {a['real']:.3g} | {a['relative']:+.1%} | {b['sim']:.3g} | "
              f"{b['real']:.3g} | {b['relative']:+.1%} |")
    baseline = evaluate({"psf_sigma_px": 1.0}, gain, CHECK)
    rows_base = compare_summaries(baseline, real_check)
    print("\nbaseline on 31-41 (old defaults: point source, no mosaicity/strain/depth, PSF sigma 1 px, same gain and detector):")
    for row in rows_base[:3]:
        print(f"  {row['quantity']}: sim {row['sim']:.3g} real {row['real']:.3g} ({row['relative']:+.1%})")
    if args.figure:
        from rayproc.pipelines.labdct.compare_real import realism_figure

        realism_figure(check_sim, real_check, Path(args.figure), labels=("simulated 31-41", "real 31-41"))
        print(f"figure: {args.figure}")
    if args.json:
        Path(args.json).write_text(json.dumps({"gain": gain, "physics": physics, "detector": detector, "hot_pixels": hot_fit,
                                               "beam_stop": stop, "fit": rows_fit, "check": rows_check,
                                               "baseline_check": rows_base}, indent=1) + "\n")
    print(f"[{time.perf_counter() - t0:.0f} s] done")


if __name__ == "__main__":
    main()
