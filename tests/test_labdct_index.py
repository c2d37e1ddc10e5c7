"""Grain indexing (``rayproc labdct index``): the pure core on a simulated stack in the real far-field
geometry, the Ray stage (worker-count independence, resuming) and its bad uses."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import xarray as xr

from rayproc.labdct import indexing as ix
from rayproc.labdct.geometry import FE_FARFIELD_JSON, GEOMETRY_PRESETS
from rayproc.labdct.polycrystal import PolycrystalSpec, make_polycrystal, orientation_matrices
from rayproc.labdct.projection import simulate_projection

N_GRAINS = 16
GEOMETRY = dataclasses.replace(GEOMETRY_PRESETS["fe_farfield"], n_projections=41)  # 180 .. 60 deg


@pytest.fixture(scope="module")
def simulated():
    """A 16-grain iron cylinder (D35 grain sizes) in the real geometry, 41 projections over 120 deg:
    the simulator's exact spot table and its grains."""
    scale = (N_GRAINS / 337) ** (1 / 3)
    spec = PolycrystalSpec(200.0 * scale, 300.0 * scale, N_GRAINS, 35.8, 8.2)
    sample = make_polycrystal(spec, np.random.default_rng([7, 0]), voxel_um=4.5)
    tables = []
    for p, omega in enumerate(GEOMETRY.omegas_deg):
        _, _, spots = simulate_projection(sample, GEOMETRY, omega, rng=np.random.default_rng([7, 1, p]))
        tables.append({**spots, "frame": np.full(len(spots["label"]), p)})
    table = {k: np.concatenate([t[k] for t in tables]) for k in tables[0]}
    return sample, table


def measured(table, geometry=GEOMETRY):
    return ix.measured_spots(table["frame"], table["centroid_y_px"], table["centroid_z_px"], geometry.omegas_deg,
                             geometry, intensity=table["intensity"], area=table["area_px"])


def compare(found, sample):
    """Misorientation (deg) and distance (um) of every found grain to its nearest true grain."""
    mis = np.array([ix.misorientation_deg(np.broadcast_to(u, sample.orientations.shape), sample.orientations)
                    for u in found["orientation"]]).reshape(-1, sample.n_grains)
    nearest = mis.argmin(axis=1)
    error_um = 1e3 * np.linalg.norm(found["position"] - sample.grain_centroids_mm()[nearest], axis=1)
    return nearest, mis[np.arange(len(nearest)), nearest], error_um


def test_orientation_conventions_match_the_simulator():
    rng = np.random.default_rng(3)
    u = orientation_matrices(rng.uniform(-0.3, 0.3, (5, 3)), "rodrigues")
    sym = ix.cubic_rotations()
    assert sym.shape == (24, 3, 3) and np.allclose(np.linalg.det(sym), 1)
    # symmetric equivalents are 0 deg apart; a 2 deg turn about z is 2 deg
    assert np.allclose(ix.misorientation_deg(u, u @ sym[rng.integers(24, size=5)]), 0, atol=1e-5)
    turn = np.array([[np.cos(0.0349066), -np.sin(0.0349066), 0], [np.sin(0.0349066), np.cos(0.0349066), 0], [0, 0, 1]])
    assert np.allclose(ix.misorientation_deg(u, turn @ u), 2.0, atol=1e-4)
    # Rodrigues vectors read back by the simulator's convention, fundamental zone: angle <= 62.8 deg
    reduced = ix.fundamental_zone(u @ sym[5])
    assert np.allclose(orientation_matrices(ix.rodrigues_vectors(reduced), "rodrigues"), reduced, atol=1e-9)
    assert np.allclose(ix.misorientation_deg(reduced, u), 0, atol=1e-5)


def test_scattering_vectors_invert_the_forward_model_and_pairs_find_the_orientation():
    u = orientation_matrices([[0.1, -0.2, 0.15]], "rodrigues")
    g_c, families = ix.indexing_reflections(GEOMETRY, 3)
    pred = ix.predict_spots(u, np.zeros((1, 3)), GEOMETRY.omegas_deg, GEOMETRY, g_c)
    assert len(pred["frame"]) > 50
    g = ix.spot_scattering_vectors(pred["y_px"], pred["z_px"], GEOMETRY)
    assert np.abs(g - pred["g_lab"]).max() < 1e-9  # a grain at the axis: exact
    spots = ix.measured_spots(pred["frame"], pred["y_px"], pred["z_px"], GEOMETRY.omegas_deg, GEOMETRY)
    seed = int(np.flatnonzero(np.bincount(pred["frame"]) >= 2)[0])
    seed = int(np.flatnonzero(pred["frame"] == seed)[0])
    hyps = ix.pair_orientations(seed, spots, np.ones(len(spots), bool), g_c, families)
    assert ix.misorientation_deg(hyps, np.broadcast_to(u, hyps.shape)).min() < 1e-6


def test_indexes_every_grain_of_a_simulated_stack_to_a_hundredth_of_a_degree(simulated):
    sample, table = simulated
    spots = measured(table)
    records = []
    found = ix.index_grains(spots, GEOMETRY, on_round=lambda i, r: records.append(r))
    nearest, mis, error_um = compare(found, sample)
    g_c, _ = ix.indexing_reflections(GEOMETRY, 3)
    predicted = np.bincount(ix.predict_spots(sample.orientations, sample.grain_centroids_mm(), GEOMETRY.omegas_deg,
                                             GEOMETRY, g_c)["grain"], minlength=N_GRAINS)
    assert (predicted >= 10).all()
    assert len(np.unique(nearest)) == N_GRAINS == len(nearest)  # every grain once, no false grain
    assert np.median(mis) < 0.01 and mis.max() < 0.1
    assert np.median(error_um) < 5 and error_um.max() < 20
    assert (found["completeness"] > 0.9).all() and np.nanmedian(found["spot_residual_px"]) < 0.2
    # the per-spot assignment agrees with the simulator's grains
    assigned = found["spot_grain"] >= 0
    assert assigned.mean() > 0.95
    assert (nearest[found["spot_grain"][assigned]] == table["grain"][assigned]).mean() > 0.97
    # bigger grains diffract more: the size estimate ranks them
    diameters = sample.equivalent_diameters_um()[nearest]
    assert np.corrcoef(diameters, found["size"])[0, 1] > 0.7
    # a run resumed after its first round finds the same grains
    resumed = ix.index_grains(spots, GEOMETRY, rounds=records[:1])
    assert np.array_equal(resumed["orientation"], found["orientation"])


def write_spot_store(path, table, geometry=GEOMETRY):
    """A `labdct segment`-like store of spot centroids (rayproc pixel convention)."""
    from rayproc.storage import write_dataset

    n = len(table["frame"])
    ds = xr.Dataset(
        {"spot_frame": ("spot", table["frame"]), "spot_centroid_y_px": ("spot", table["centroid_y_px"]),
         "spot_centroid_x_px": ("spot", table["centroid_z_px"]), "spot_intensity": ("spot", table["intensity"]),
         "spot_area_px": ("spot", table["area_px"])},
        coords={"spot": np.arange(n), "omega": geometry.omegas_deg,
                "det_y": np.arange(geometry.detector_shape[0]), "det_z": np.arange(geometry.detector_shape[1])})
    write_dataset(str(path), ds)
    return path


@pytest.fixture(scope="module")
def geometry_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("geometry") / "geometry.json"
    path.write_text(json.dumps({**FE_FARFIELD_JSON, "frames_in_full_scan": 41}))
    return path


@pytest.fixture(scope="module")
def indexed_once(ray_local, simulated, geometry_file, tmp_path_factory):
    """The simulated spots as a spot store, indexed by one actor."""
    from rayproc.pipelines.labdct.index import index_labdct

    root = tmp_path_factory.mktemp("index")
    spots = write_spot_store(root / "spots.zarr", simulated[1])
    report = index_labdct(str(spots), str(root / "one.zarr"), geometry=str(geometry_file), workers=1, progress=False)
    return spots, report


def test_index_stage_does_not_depend_on_the_worker_count_and_reruns_as_complete(indexed_once, simulated,
                                                                                 geometry_file, tmp_path):
    from rayproc.pipelines.labdct.index import index_labdct
    from rayproc.storage import open_dataset

    sample, _ = simulated
    spots, one = indexed_once
    two = index_labdct(str(spots), str(tmp_path / "two.zarr"), geometry=str(geometry_file), workers=2,
                       progress=False)
    assert one.grains == two.grains == N_GRAINS and one.status == "created"
    a, b = open_dataset(one.url), open_dataset(two.url)
    for name in ("grain_orientation", "grain_centroid", "grain_rodrigues", "spot_grain", "grain_completeness"):
        assert np.array_equal(a[name].values, b[name].values, equal_nan=True), name
    # the simulator's names and units: indexed and simulated grains compare directly
    assert a.grain_centroid.attrs["units"] == "mm" and a.grain_orientation.dims == ("grain", "i", "j")
    _, mis, error_um = compare({"orientation": a.grain_orientation.values, "position": a.grain_centroid.values},
                               sample)
    assert np.median(mis) < 0.01 and np.median(error_um) < 5
    again = index_labdct(str(spots), one.url, geometry=str(geometry_file), workers=2, progress=False)
    assert again.status == "complete" and again.grains == N_GRAINS


def test_index_stage_killed_after_a_round_resumes_to_the_same_grains(indexed_once, geometry_file, tmp_path,
                                                                      monkeypatch):
    import rayproc.pipelines.labdct.index as stage
    from rayproc.storage import done_tasks, open_dataset

    spots, whole = indexed_once
    real = stage.index_grains

    def killed_after_round_one(*args, on_round, **kwargs):
        def then_die(index, record):
            on_round(index, record)
            if index == 1:
                raise RuntimeError("killed")
        return real(*args, on_round=then_die, **kwargs)

    monkeypatch.setattr(stage, "index_grains", killed_after_round_one)
    out = tmp_path / "killed.zarr"
    with pytest.raises(RuntimeError, match="killed"):
        stage.index_labdct(str(spots), str(out), geometry=str(geometry_file), workers=1, progress=False)
    assert done_tasks(str(out)) == {"round-00000", "round-00001"}
    monkeypatch.setattr(stage, "index_grains", real)
    resumed = stage.index_labdct(str(spots), str(out), geometry=str(geometry_file), workers=1, progress=False)
    assert resumed.status == "resumed" and resumed.rounds == whole.rounds
    a, b = open_dataset(whole.url), open_dataset(resumed.url)
    for name in ("grain_orientation", "grain_centroid", "spot_grain", "grain_round"):
        assert np.array_equal(a[name].values, b[name].values), name


def test_index_bad_inputs_one_line(ray_local, simulated, geometry_file, tmp_path, cli_error):
    _, table = simulated
    spots = write_spot_store(tmp_path / "spots.zarr", table)
    lacking = tmp_path / "lacking.json"
    lacking.write_text(json.dumps({k: v for k, v in FE_FARFIELD_JSON.items() if k != "pixel_size_mm"}))
    err = cli_error(["labdct", "index", spots, tmp_path / "o1.zarr", "--geometry", lacking])
    assert "lacks 'pixel_size_mm'" in err
    binned = GEOMETRY.binned(2)  # spots of a 512 x 512 detector
    small = {k: v[:50] for k, v in table.items()}
    other = write_spot_store(tmp_path / "other.zarr", {**small, "centroid_y_px": small["centroid_y_px"] / 2,
                                                       "centroid_z_px": small["centroid_z_px"] / 2}, binned)
    err = cli_error(["labdct", "index", other, tmp_path / "o2.zarr", "--geometry", geometry_file])
    assert "another geometry" in err
    empty = write_spot_store(tmp_path / "empty.zarr", {k: v[:0] for k, v in table.items()})
    err = cli_error(["labdct", "index", empty, tmp_path / "o3.zarr", "--geometry", geometry_file])
    assert "no spots" in err
    assert not (tmp_path / "o1.zarr").exists() and not (tmp_path / "o3.zarr").exists()
