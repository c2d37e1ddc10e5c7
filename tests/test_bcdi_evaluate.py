"""Evaluation of BCDI gap inpainting: interpolation baselines, real-space check, evaluate command."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rayproc.bcdi.baselines import interpolate_gaps
from rayproc.bcdi.gaps import gaps_to_mask
from rayproc.bcdi.metrics import gap_pcc, relative_error
from rayproc.bcdi.realspace import object_from_amplitude, phase_std, support
from rayproc.errors import InputError
from rayproc.bcdi.crystal import CrystalParams, crystal_object
from rayproc.bcdi.diffraction import simulate_bcdi_sample
from rayproc.pipelines.bcdi.evaluate import evaluate_bcdi, score_methods
from tests.conftest import tiny_gapnet

SHAPE = (20, 30, 40)


def grid(shape=SHAPE):
    return np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij")


# ---------------------------------------------------------------- baselines


@pytest.mark.parametrize("method", ["linear", "cubic"])
def test_linear_and_cubic_are_exact_on_linear_data(method):
    z, y, x = grid()
    truth = 1.5 + 0.3 * z - 0.7 * y + 1.1 * x
    mask = gaps_to_mask(["x:10:6", "y:12:5", "x:30:9"], SHAPE)  # a cross and a line, crossing
    mask |= np.random.default_rng(0).random(SHAPE) < 0.05  # dead pixels, some next to the gaps
    filled = interpolate_gaps(np.where(mask, np.nan, truth), mask, method)
    np.testing.assert_allclose(filled, truth, rtol=0, atol=1e-9)
    assert np.array_equal(filled[~mask], truth[~mask])  # measured voxels untouched


def test_cubic_is_exact_on_cubic_data_across_a_line_gap():
    _, y, x = grid()
    truth = 0.01 * (x - 20.3) ** 3 - 0.2 * (x - 3) ** 2 + y
    mask = gaps_to_mask(["x:17:6"], SHAPE)
    np.testing.assert_allclose(interpolate_gaps(truth, mask, "cubic")[mask], truth[mask], rtol=1e-12)
    assert np.abs(interpolate_gaps(truth, mask, "linear")[mask] - truth[mask]).max() > 0.5  # linear is not


def test_nearest_copies_the_closer_edge_and_edge_gaps_extend_the_data():
    values = np.array([[0.0, 1.0, 7.0, 7.0, 7.0, 7.0, 4.0, 5.0, 9.0, 9.0]])
    mask = np.array([[False, False, True, True, True, True, False, False, True, True]])
    # gap [2, 6): 2 and 3 are closer to (or tied with) index 1, 4 and 5 to index 6; [8, 10) is at the edge
    assert interpolate_gaps(values, mask, "nearest")[0].tolist() == [0, 1, 1, 1, 4, 4, 4, 5, 5, 5]
    assert interpolate_gaps(values, mask, "linear")[0, 8:].tolist() == [5, 5]


def test_baselines_reject_bad_input():
    with pytest.raises(InputError, match="shape"):
        interpolate_gaps(np.zeros((4, 4)), np.zeros((4, 5), bool))
    with pytest.raises(InputError, match="no measured voxel"):
        interpolate_gaps(np.zeros((4, 4)), np.ones((4, 4), bool))
    with pytest.raises(ValueError, match="Did you mean 'cubic'"):
        interpolate_gaps(np.zeros((4, 4)), np.zeros((4, 4), bool), "cubc")


# ---------------------------------------------------------------- real space (paper Fig. 7)


def far_field(phase_amplitude: float, size: int = 48):
    crystal = CrystalParams("cuboctahedron", {"111": 1.0, "100": 1.15}, extent=(14, 14, 14),
                            rotation=(0.9, 0.1, 0.3, 0.2), phase_amplitude=phase_amplitude,
                            phase_modes=((1, 0, 0, 1, 0), (0, 1, 1, 0.5, 1)))
    return np.fft.fftshift(np.fft.fftn(crystal_object(crystal, 16), s=(size,) * 3))


@pytest.mark.parametrize("phase_amplitude", [0.0, 1.5])
def test_gap_damages_the_phase_and_interpolation_repairs_part_of_it(phase_amplitude):
    field = far_field(phase_amplitude)
    intensity, phase = np.abs(field) ** 2, np.angle(field)
    mask = gaps_to_mask(["x:26:6", "y:20:6"], intensity.shape)  # a cross through the fringes next to the peak
    truth = object_from_amplitude(np.sqrt(intensity), phase)
    inside = support(truth)
    assert 500 < inside.sum() < 3000  # the 14-voxel crystal, not the whole box

    def error(amplitude):
        return phase_std(object_from_amplitude(amplitude, phase), inside, reference=truth)

    gapped = error(np.sqrt(np.where(mask, 0, intensity)))
    linear = error(np.sqrt(np.maximum(interpolate_gaps(intensity, mask, "linear"), 0)))
    cubic = error(np.sqrt(np.maximum(interpolate_gaps(intensity, mask, "cubic"), 0)))
    assert error(np.sqrt(intensity)) < 1e-8  # the true amplitude gives the true object back
    assert gapped > 0.5 and gapped > 2 * linear and linear > cubic > 0.05
    if phase_amplitude == 0:  # strain-free: the object's own phase is flat
        assert phase_std(truth, inside) < 1e-6
    else:
        assert phase_std(truth, inside) > 0.3


def test_phase_std_ignores_a_constant_offset_and_wraps():
    phase = np.array([0.1, -0.1, 0.2, -0.2])
    support_mask = np.ones(4, bool)
    expected = np.std(phase)
    assert phase_std(np.exp(1j * (phase + np.pi)), support_mask) == pytest.approx(expected)
    assert phase_std(np.exp(1j * (phase + 2.0)), support_mask, reference=np.exp(2.0j)) == pytest.approx(expected)
    with pytest.raises(InputError):
        phase_std(np.ones(4), np.zeros(4, bool))


# ---------------------------------------------------------------- evaluate


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    volume, _ = simulate_bcdi_sample(48, 0, 3)
    path = tmp_path_factory.mktemp("eval") / "volume.npy"
    np.save(path, volume)
    return path, volume


def tiny_model():
    return tiny_gapnet()[0].eval()


def test_evaluate_writes_tables_and_figures(simulated, tmp_path):
    torch.set_num_threads(1)
    path, volume = simulated
    gaps = ["x:21:6", "y:22:6"]
    report = evaluate_bcdi(str(path), str(tmp_path / "eval"), gaps=gaps, model=tiny_model(), stride=16)
    assert list(report.methods) == ["model", "nearest", "linear", "cubic"]
    mask = gaps_to_mask(gaps, volume.shape)
    assert report.gap_voxels == mask.sum()
    for name in ("nearest", "linear", "cubic"):  # the table holds score_methods' numbers for each prediction
        prediction = np.maximum(interpolate_gaps(np.where(mask, 0, volume), mask, name), 0)
        assert report.methods[name]["pcc"] == pytest.approx(gap_pcc(prediction, volume, mask))
        assert report.methods[name]["relative_error"] == pytest.approx(relative_error(prediction, volume, mask))
    # an untrained gapnet is its prior, linear interpolation (seeded: PCC 0.961 against 0.964)
    assert report.methods["model"]["pcc"] == pytest.approx(report.methods["linear"]["pcc"], abs=0.01)
    assert all(0.9 < s["pcc"] < 1 and 0 < s["seconds"] < 60 for s in report.methods.values())
    record = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert record["methods"] == report.methods and record["gaps"] == gaps
    assert record["model"]["architecture"]["arch"] == "gapnet" and len(record["model"]["sha256"]) == 64
    table = (tmp_path / "eval" / "metrics.md").read_text()
    assert all(f"| {name} | {scores['pcc']:.4f} |" in table for name, scores in report.methods.items())
    figures = sorted(p.name for p in (tmp_path / "eval").glob("*.png"))
    assert figures == ["gap-x21w6.png", "gap-y22w6.png"]
    assert all((tmp_path / "eval" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for f in figures)


def test_evaluate_with_a_detector_mask_into_object_storage(simulated, tmp_path, s3_bucket):
    import s3fs

    from rayproc.errors import InputError

    torch.set_num_threads(1)
    path, volume = simulated
    detector = np.zeros((80, 80), np.uint8)
    detector[38:42, :] = detector[:, 30:34] = 1  # a module cross
    detector[5, 7] = 1  # a dead pixel
    np.save(tmp_path / "detector.npy", detector)
    bucket, options = s3_bucket
    out = f"{bucket}/reports/eval"
    report = evaluate_bcdi(str(path), out, mask=str(tmp_path / "detector.npy"), mask_offset=(10, 2),
                           model=tiny_model(), stride=16, storage_options=options)
    rows, cols = volume.shape[1:]
    expected = np.broadcast_to(detector[10:10 + rows, 2:2 + cols].astype(bool), volume.shape)
    assert report.gap_voxels == expected.sum() and report.out == out
    fs = s3fs.S3FileSystem(endpoint_url=options["endpoint_url"])
    held = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(out.removeprefix("s3://")))
    assert held == [".rayproc-output", "mask-frame-through-peak.png", "metrics.json", "metrics.md"]
    assert json.loads(fs.cat_file(f"{out}/metrics.json"))["methods"] == report.methods
    fs.pipe_file(f"{bucket.removeprefix('s3://')}/theirs/a.txt", b"x")
    with pytest.raises(InputError, match="did not write"):
        evaluate_bcdi(str(path), f"{bucket}/theirs", gaps=["x:21:6"], model=tiny_model(), storage_options=options)


def test_evaluate_cli_one_line_errors(simulated, tmp_path, cli_error):
    path, _ = simulated
    for args, message in ((["--gap", "x:45:6"], "outside"), ([], "--gap")):
        assert message in cli_error(["bcdi", "evaluate", path, "--out", tmp_path / "e", *args])
    assert not (tmp_path / "e").exists()


def test_truth_from_a_batch_store_and_bad_stores(simulated, tmp_path):
    import xarray as xr

    from rayproc.pipelines.bcdi.evaluate import read_truth
    from rayproc.storage import write_dataset

    path, volume = simulated
    np.testing.assert_array_equal(read_truth(str(path)), volume)
    stack = np.stack([volume, 2 * volume])
    write_dataset(str(tmp_path / "batch.zarr"), xr.Dataset({"intensity": (("sample", "z", "y", "x"), stack)}))
    truth = read_truth(str(tmp_path / "batch.zarr"), sample=1)
    assert truth.dtype == np.float32 and np.array_equal(truth, 2 * volume)
    with pytest.raises(InputError, match=r"--sample must be in \[0, 2\)"):
        read_truth(str(tmp_path / "batch.zarr"), sample=2)
    write_dataset(str(tmp_path / "other.zarr"), xr.Dataset({"counts": (("z", "y", "x"), volume)}))
    with pytest.raises(InputError, match="has no 'intensity' variable"):
        read_truth(str(tmp_path / "other.zarr"))


def test_baselines_on_the_real_gold_scan(shared_data):
    """A 6-px cross through the Bragg peak of the measured gold pattern (no gap in the data)."""
    from rayproc.storage.readers import read_volume

    volume, _ = read_volume(shared_data / "bcdi-au-34idc-s54")
    assert volume.shape == (201, 256, 256)
    assert np.unravel_index(volume.argmax(), volume.shape) == (99, 126, 127)
    crop = volume[67:131, 94:158, 95:159]  # 64^3 around the peak: fringes, in 0.1 s per method
    mask = gaps_to_mask(["x:29:6", "y:29:6"], crop.shape)
    predictions = {m: np.maximum(interpolate_gaps(np.where(mask, 0, crop), mask, m), 0)
                   for m in ("nearest", "linear", "cubic")}
    scores = score_methods(crop, mask, predictions)
    for s in scores.values():
        assert 0.7 < s["pcc"] < 1 and 0 < s["relative_error"] < 1.5
    assert scores["linear"]["pcc"] > scores["nearest"]["pcc"]
