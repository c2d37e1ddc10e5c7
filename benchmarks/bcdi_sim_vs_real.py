"""Real BCDI scan vs simulated training data: the statistics of their 32^3 portions, side by side.

Portions are cut the same way from every data set (issue 16, point 2):

* ``peak``: centres ~N(Bragg peak, 8 px) on each axis, clipped so the portion fits, as in the
  evaluation protocol of Masto et al. 2024 (Table 1);
* ``signal``: the training sampler (``portion_origins(prefer_periphery=True)``): anywhere with
  counts, favouring the dim periphery.

A simulated store holds many 64^3 volumes: each portion comes from one of ``--volumes`` of them
drawn at random; the real scan is one volume. The peak is the brightest voxel once hot pixels
are removed. For every portion ``rayproc.bcdi.statistics.portion_statistics`` gives the total
counts, zero fraction, maximum, background, hot pixels, apparent oversampling and fringe
visibility per axis (z = rocking direction). Printed: one Markdown table per portion set (median
and 10-90 % range per data set), a table of whole 64^3 volumes (the real scan cropped around its
peak), and, for simulated stores, the measured / nominal oversampling and the visibility by
coherence blur (read from ``params_json``). A figure overlays the distributions.

    python benchmarks/bcdi_sim_vs_real.py REAL_STORE SIM_STORE [SIM_STORE ...] \\
        [--portions 400] [--figure docs/figures/bcdi_sim_vs_real.png]
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings

import numpy as np

from rayproc.bcdi.portions import crop, portion_origins
from rayproc.bcdi.statistics import hot_pixel_mask, portion_statistics

SIZE = 32
AXES = "zyx"
# (key in the statistics, column, label, log scale)
ROWS = [
    ("total_counts", None, "total counts", True),
    ("zero_fraction", None, "zero fraction", False),
    ("max_counts", None, "max counts", True),
    ("background", None, "background (counts/voxel)", True),
    ("hot_pixels", None, "hot pixels", False),
    *[("oversampling", i, f"oversampling {a}", True) for i, a in enumerate(AXES)],
    *[("visibility", i, f"visibility {a}", False) for i, a in enumerate(AXES)],
]


def load(store: str, volumes: int, rng: np.random.Generator) -> tuple[list[np.ndarray], list[dict] | None]:
    """The volumes of a store: the one scan, or ``volumes`` random samples of a simulated set."""
    import xarray as xr

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = xr.open_zarr(store)
    data = ds["intensity"]
    if "sample" not in data.dims:
        return [np.asarray(data.values, dtype=np.float32)], None
    picked = np.sort(rng.choice(data.sizes["sample"], min(volumes, data.sizes["sample"]), replace=False))
    values = np.asarray(data.isel(sample=picked).values, dtype=np.float32)
    params = None
    if "params_json" in ds.coords:
        params = [json.loads(str(p)) for p in ds["params_json"].isel(sample=picked).values]
    return list(values), params


def without_hot_pixels(volume: np.ndarray) -> np.ndarray:
    return np.where(hot_pixel_mask(volume), 0.0, volume).astype(np.float32)


def draw_portions(volumes: list[np.ndarray], n: int, rng: np.random.Generator) -> dict[str, tuple]:
    """``n`` portions per set: (portions, index of their volume)."""
    sets = {"peak": ([], []), "signal": ([], [])}
    owners = rng.integers(0, len(volumes), n) if len(volumes) > 1 else np.zeros(n, dtype=int)
    for v in np.unique(owners):
        volume = volumes[v]
        clean = without_hot_pixels(volume)
        k = int(np.sum(owners == v))
        for name, options in (("peak", {"peak_fraction": 1.0}), ("signal", {"prefer_periphery": True})):
            for origin in portion_origins(volume.shape, k, rng, size=SIZE, intensity=clean, **options):
                sets[name][0].append(np.array(crop(volume, origin, SIZE)))
                sets[name][1].append(v)
    return {name: (np.stack(p), np.array(i)) for name, (p, i) in sets.items()}


def peak_crop(volume: np.ndarray, size: int = 64) -> np.ndarray:
    """The ``size``^3 cube around the brightest voxel (hot pixels aside), clipped to fit."""
    peak = np.array(np.unravel_index(int(np.argmax(without_hot_pixels(volume))), volume.shape))
    origin = np.clip(peak - size // 2, 0, np.array(volume.shape) - size)
    return np.array(crop(volume, origin, size))


def column(stats: dict, key: str, col: int | None) -> np.ndarray:
    values = stats[key] if col is None else stats[key][:, col]
    return values[np.isfinite(values)]


def fmt(x: float) -> str:
    if not np.isfinite(x):
        return "-"
    if x == 0:
        return "0"
    return f"{x:.2g}" if abs(x) >= 1e4 or abs(x) < 1e-2 else f"{x:.3g}"


def summary(values: np.ndarray, total: int) -> str:
    if values.size == 0:
        return "-"
    low, mid, high = np.percentile(values, [10, 50, 90])
    cell = f"{fmt(mid)} [{fmt(low)}, {fmt(high)}]"
    return cell if values.size == total else f"{cell} (n={values.size})"


def table(title: str, results: dict[str, dict]) -> list[str]:
    names = list(results)
    lines = [f"**{title}** (median [10 %, 90 %])", "",
             "| statistic | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for key, col, label, _ in ROWS:
        cells = [summary(column(s, key, col), len(s["total_counts"])) for s in results.values()]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines + [""]


def calibration(name: str, stats: dict, owners: np.ndarray, params: list[dict]) -> list[str]:
    """Measured vs nominal oversampling, and the visibility against the simulated blur."""
    nominal = np.array([params[i]["oversampling"] for i in owners])
    sigma = np.array([params[i]["coherence_sigma"] for i in owners])
    ratio = stats["oversampling"] / nominal
    cells = [f"{fmt(np.nanmedian(ratio[:, a]))} [{fmt(np.nanpercentile(ratio[:, a], 10))}, "
             f"{fmt(np.nanpercentile(ratio[:, a], 90))}]" for a in range(3)]
    lines = [f"| {name} | measured / nominal oversampling | " + " | ".join(cells) + " |"]
    for low, high in ((0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, np.inf)):
        cells = []
        for a in range(3):
            chosen = (sigma[:, a] >= low) & (sigma[:, a] < high)
            cells.append(fmt(np.nanmedian(stats["visibility"][chosen, a])) if chosen.any() else "-")
        bounds = f"in [{low:.2f}, {high:.2f})" if np.isfinite(high) else f">= {low:.2f}"
        label = f"visibility, blur sigma {bounds}"
        lines.append(f"| {name} | {label} | " + " | ".join(cells) + " |")
    return lines


PANELS = [  # one row of counts, one row of shapes per portion set (None: an empty panel)
    ["total_counts", "zero_fraction", "max_counts", "background", "hot_pixels", None],
    ["oversampling z", "oversampling y", "oversampling x", "visibility z", "visibility y", "visibility x"],
]


def figure(results: dict[str, dict[str, dict]], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FixedLocator, NullFormatter, ScalarFormatter

    rows = {key if col is None else f"{key} {AXES[col]}": (key, col, label, log) for key, col, label, log in ROWS}
    sets = list(results)
    n_rows, n_cols = len(PANELS) * len(sets), len(PANELS[0])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(3.1 * n_cols, 2.5 * n_rows))
    for s, set_name in enumerate(sets):
        for r, panel_row in enumerate(PANELS):
            for c, panel in enumerate(panel_row):
                ax = axes[s * len(PANELS) + r, c]
                if panel is None:
                    ax.set_axis_off()
                    continue
                key, col, label, log = rows[panel]
                columns = {name: column(stats, key, col) for name, stats in results[set_name].items()}
                columns = {name: v[v > 0] if log else v for name, v in columns.items()}
                pooled = np.concatenate(list(columns.values()))
                if pooled.size == 0:
                    ax.set_axis_off()
                    continue
                low, high = np.percentile(pooled, [0.5, 99.5])
                if high <= low:
                    high = low * 2 if log else low + 1
                if key == "hot_pixels":
                    bins = np.arange(-0.5, high + 1.5)
                else:
                    bins = np.geomspace(low, high, 31) if log else np.linspace(low, high, 31)
                for i, (name, values) in enumerate(columns.items()):
                    if values.size == 0:
                        continue
                    real = i == 0  # the first data set is the real scan
                    ax.hist(np.clip(values, bins[0], bins[-1]), bins=bins,
                            weights=np.full(values.size, 1 / values.size), histtype="step",
                            color="black" if real else f"C{i - 1}", linewidth=2.2 if real else 1.3,
                            label=f"{name} (n={values.size})" if key == "total_counts" else None)
                if log:
                    ax.set_xscale("log")
                if key == "oversampling":
                    ax.xaxis.set_major_locator(FixedLocator([2, 3, 4, 6, 8, 12, 16, 24]))
                    ax.xaxis.set_major_formatter(ScalarFormatter())
                    ax.xaxis.set_minor_formatter(NullFormatter())
                ax.set_title(label, fontsize=9)
                ax.tick_params(labelsize=8)
                if c == 0:
                    ax.set_ylabel(f"{set_name} portions\nfraction per bin", fontsize=9)
                if key == "total_counts":
                    ax.legend(fontsize=7, frameon=False)
    fig.suptitle("32³ portions of the real scan (black) and of simulated training stores, cut the same way "
                 "(rows 1-2: near the Bragg peak; rows 3-4: training sampler); z = rocking axis", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("real", help="zarr store of the real scan (variable intensity, dims z, y, x)")
    parser.add_argument("sim", nargs="+", help="simulated zarr stores (variable intensity, dims sample, z, y, x)")
    parser.add_argument("--portions", type=int, default=400, help="portions per set and data set")
    parser.add_argument("--volumes", type=int, default=200, help="simulated volumes read per store")
    parser.add_argument("--figure", default="docs/figures/bcdi_sim_vs_real.png")
    parser.add_argument("--seed", type=int, default=16)
    args = parser.parse_args()

    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    portion_results: dict[str, dict[str, dict]] = {"peak": {}, "signal": {}}
    volume_results: dict[str, dict] = {}
    calibrations: list[str] = []
    for store in [args.real, *args.sim]:
        name = os.path.basename(os.path.normpath(store)).removesuffix(".zarr")
        volumes, params = load(store, args.volumes, rng)
        volume_results[name] = portion_statistics([peak_crop(v) for v in volumes])
        for set_name, (portions, owners) in draw_portions(volumes, args.portions, rng).items():
            stats = portion_statistics(portions)
            portion_results[set_name][name] = stats
            if params is not None and set_name == "peak":
                calibrations += calibration(name, stats, owners, params)
        del volumes

    print(f"real {args.real} vs simulated {', '.join(args.sim)}: {args.portions} portions of {SIZE}^3 per set "
          f"and data set, seed {args.seed}")
    print()
    print("\n".join(table(f"{SIZE}^3 portions near the Bragg peak (centres ~N(peak, 8 px))", portion_results["peak"])))
    print("\n".join(table(f"{SIZE}^3 portions where the training sampler draws them (periphery-weighted, with signal)",
                          portion_results["signal"])))
    print("\n".join(table("64^3 volumes around the peak (the real scan cropped; each simulated volume whole)",
                          volume_results)))
    if calibrations:
        print("**Simulated stores against their own parameters** (peak portions; columns z, y, x)")
        print()
        print("| store | quantity | z | y | x |")
        print("|---|---|---|---|---|")
        print("\n".join(calibrations))
        print()
    figure(portion_results, args.figure)
    print(f"figure: {args.figure}; {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
