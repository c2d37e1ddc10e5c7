"""Portions, gap masks and in-gap metrics of the BCDI inpainting core."""

import numpy as np
import pytest
import torch

from rayproc.bcdi.gaps import (
    GapSpec,
    detector_gap_mask,
    gap_mask,
    gaps_to_mask,
    parse_gap,
    random_gap,
)
from rayproc.bcdi.metrics import gap_pcc, relative_error
from rayproc.bcdi.portion_dataset import PortionDataset
from rayproc.bcdi.portions import (
    NormStats,
    crop,
    denormalise_portion,
    normalise_batch,
    normalise_portion,
    portion_origins,
)
from rayproc.errors import InputError


def bragg_peak(shape, centre, width=3.0, peak=1e5):
    """A Bragg peak in counts with a q^-4 tail, reaching zero counts far away."""
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum((g - c) ** 2 for g, c in zip(grids, centre))
    return np.floor(peak / (1 + (r2 / width**2) ** 2))


# --- normalisation -------------------------------------------------------------------------


def test_normalisation_round_trips_and_spans_unit_interval_on_known_voxels():
    rng = np.random.default_rng(0)
    portion = rng.poisson(rng.gamma(0.5, 200.0, size=(16, 16, 16))).astype(float)
    known = ~gap_mask(GapSpec("line", 2, 6, 5), portion.shape)
    x, stats = normalise_portion(portion, known)
    assert x[known].min() == 0.0 and x[known].max() == 1.0
    assert np.all(x[~known] == 0.0)
    assert stats.lo == np.log1p(portion[known].min()) and stats.hi == np.log1p(portion[known].max())
    restored = denormalise_portion(x, stats)
    np.testing.assert_allclose(restored[known], portion[known], rtol=1e-12, atol=1e-9)


def test_normalisation_ignores_unknown_voxels():
    rng = np.random.default_rng(1)
    portion = rng.poisson(50.0, size=(8, 8, 8)).astype(float)
    known = ~gap_mask(GapSpec("cross", 0, 2, 3, 1, 4), portion.shape)
    x, stats = normalise_portion(portion, known)
    spoiled = portion.copy()
    unknown = np.flatnonzero(~known)
    spoiled.flat[unknown] = 1e9
    spoiled.flat[unknown[0]] = np.nan
    spoiled.flat[unknown[1]] = -5.0
    x2, stats2 = normalise_portion(spoiled, known)
    assert np.array_equal(x, x2) and stats == stats2


def test_constant_portion_maps_to_zero_and_round_trips():
    portion = np.full((4, 4, 4), 7.0)
    known = np.ones_like(portion, dtype=bool)
    x, stats = normalise_portion(portion, known)
    assert np.all(x == 0.0) and stats.lo == stats.hi == np.log1p(7.0)
    np.testing.assert_allclose(denormalise_portion(x, stats), portion, rtol=1e-14)


def test_batch_normalisation_matches_single_portions_and_inverts():
    rng = np.random.default_rng(2)
    portions = rng.poisson(rng.gamma(1.0, 30.0, size=(3, 8, 8, 8))).astype(float)
    known = np.stack([~gap_mask(random_gap(rng, 8, widths=(2, 3)), (8, 8, 8)) for _ in range(3)])
    x, stats = normalise_batch(portions, known)
    assert stats.lo.shape == stats.hi.shape == (3,)
    for b in range(3):
        xb, sb = normalise_portion(portions[b], known[b])
        assert np.array_equal(x[b], xb) and (sb.lo, sb.hi) == (stats.lo[b], stats.hi[b])
    np.testing.assert_allclose(denormalise_portion(x, stats)[known], portions[known], rtol=1e-12)
    again = NormStats.from_dict(stats.to_dict())
    assert np.array_equal(again.lo, stats.lo) and np.array_equal(again.hi, stats.hi)
    assert NormStats.from_dict(NormStats(0.5, 2.0).to_dict()) == NormStats(0.5, 2.0)


@pytest.mark.parametrize(
    "portion, known",
    [
        (np.ones((2, 4)), np.zeros((2, 4), dtype=bool)),  # nothing measured
        (np.array([[1.0, -2.0]]), np.ones((1, 2), dtype=bool)),  # negative counts
        (np.array([[1.0, np.nan]]), np.ones((1, 2), dtype=bool)),  # NaN where measured
        (np.ones((2, 4)), np.ones((2, 3), dtype=bool)),  # shape mismatch
    ],
)
def test_normalisation_refuses_bad_input(portion, known):
    with pytest.raises(InputError):
        normalise_batch(portion, known)


# --- portions ------------------------------------------------------------------------------


def test_uniform_origins_cover_the_volume_and_stay_inside():
    origins = portion_origins((40, 64, 33), 2000, 0, size=32)
    assert origins.shape == (2000, 3)
    assert origins.min(axis=0).tolist() == [0, 0, 0]
    assert origins.max(axis=0).tolist() == [8, 32, 1]
    assert np.array_equal(origins, portion_origins((40, 64, 33), 2000, 0, size=32))


def test_periphery_preference_moves_portions_off_the_peak_but_not_into_empty_space():
    shape, centre, size = (96, 96, 96), np.array([48, 48, 48]), 16
    intensity = bragg_peak(shape, centre)
    intensity[:20] = 0.0  # a slab with no counts at all

    def on_peak(origins):
        return np.all((origins <= centre) & (centre < origins + size), axis=1)

    uniform = portion_origins(shape, 2000, 3, size=size)
    periphery = portion_origins(
        shape, 2000, 3, size=size, prefer_periphery=True, intensity=intensity
    )
    assert np.all(periphery >= 0) and np.all(periphery <= np.array(shape) - size)
    assert all(crop(intensity, o, size).max() > 0 for o in periphery)
    uniform_lit = uniform[[crop(intensity, o, size).max() > 0 for o in uniform]]
    assert len(uniform_lit) < len(uniform)  # uniform sampling does draw empty portions
    # The bright peak is drawn several times less often than by uniform sampling.
    assert on_peak(periphery).mean() < 0.5 * on_peak(uniform_lit).mean()


def test_peak_fraction_centres_that_share_of_portions_around_the_bragg_peak():
    shape, centre, size = (96, 96, 96), np.array([40, 52, 47]), 16
    intensity = bragg_peak(shape, centre)
    origins = portion_origins(shape, 4000, 5, size=size, prefer_periphery=True, intensity=intensity,
                              peak_fraction=0.5, peak_sigma=4.0)
    assert np.all(origins >= 0) and np.all(origins <= np.array(shape) - size)
    offsets = origins + size // 2 - centre
    near = np.all(np.abs(offsets) <= 12, axis=1)  # 3 sigma on every axis
    assert 0.47 < near.mean() < 0.6  # half drawn at the peak, few periphery draws land there
    assert np.std(offsets[near], axis=0) == pytest.approx([4.0] * 3, rel=0.1)
    everywhere = portion_origins(shape, 500, 5, size=size, intensity=intensity, peak_fraction=1.0, peak_sigma=4.0)
    assert np.abs(np.median(everywhere + size // 2, axis=0) - centre).max() <= 1


def test_origins_refuse_bad_requests():
    with pytest.raises(InputError, match="peak_fraction"):
        portion_origins((64, 64, 64), 4, 0, peak_fraction=1.5)
    with pytest.raises(InputError, match="peak_fraction needs"):
        portion_origins((64, 64, 64), 4, 0, peak_fraction=1.0)
    with pytest.raises(InputError, match="do not fit"):
        portion_origins((16, 64, 64), 1, 0, size=32)
    with pytest.raises(InputError, match="intensity"):
        portion_origins((64, 64, 64), 1, 0, prefer_periphery=True)
    with pytest.raises(InputError, match="no counts|counts"):
        portion_origins((8, 8), 1, 0, size=4, prefer_periphery=True, intensity=np.zeros((8, 8)))


def test_crop_returns_the_portion_and_refuses_to_leave_the_volume():
    volume = np.arange(10 * 12 * 14).reshape(10, 12, 14)
    portion = crop(volume, (2, 3, 4), 5)
    assert portion.shape == (5, 5, 5) and portion[0, 0, 0] == volume[2, 3, 4]
    assert portion[-1, -1, -1] == volume[6, 7, 8]
    with pytest.raises(InputError, match=r"\(6, 3, 4\)"):
        crop(volume, (6, 3, 4), 5)


# --- training portions ---------------------------------------------------------------------


def _peaks(names, size=24, seed=4) -> dict:
    rng = np.random.default_rng(seed)
    return {n: bragg_peak((size,) * 3, rng.uniform(8, 16, 3)) + rng.poisson(2.0, (size,) * 3) for n in names}


def test_portion_dataset_reads_through_any_reader_and_is_seeded_per_item():
    volumes = _peaks("ab")
    asked = []

    def read(ref):
        asked.append(ref)
        return volumes[ref]

    data = PortionDataset(["a", "b"], 5, read=read, seed=1, size=8, gap_widths=(2, 3))
    twin = PortionDataset(["a", "b"], 5, read=volumes.__getitem__, seed=1, size=8, gap_widths=(2, 3))
    assert len(data) == 10
    for index in (17, 0, 7):  # any order: item 7 of epoch 1, items 0 and 7 of epoch 0
        item, plan = data[index], data.plan(index)
        assert all(torch.equal(item[k], twin[index][k]) for k in ("target", "mask"))
        assert item["index"] == index % 10 and item["width"] == plan.gap.width in (2, 3)
        portion, gap = crop(volumes["ab"[plan.volume]], plan.origin, 8), item["mask"][0].numpy() > 0.5
        _, stats = normalise_portion(portion, ~gap)
        assert (item["lo"], item["hi"]) == (stats.lo, stats.hi)
        expected = (np.log1p(portion) - stats.lo) / (stats.hi - stats.lo)
        np.testing.assert_allclose(item["target"][0].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert set(asked) == {"a", "b"} and data.plan(7) != data.plan(17)  # the refs as given; epochs draw anew

    exclude = np.zeros((24, 24, 24), bool)
    exclude[:, 10:13] = True
    fenced = PortionDataset(["a"], 6, read=volumes.__getitem__, size=8, gap_widths=(2,), exclude=exclude)
    assert not any(crop(exclude, fenced.plan(i).origin, 8).any() for i in range(12))
    with pytest.raises(InputError, match="does not fit"):
        PortionDataset(["a"], 1, read=volumes.__getitem__, size=8, gap_widths=(2,), exclude=exclude[:8]).plan(0)
    with pytest.raises(InputError, match="do not touch"):
        PortionDataset(["a"], 4, read=volumes.__getitem__, size=8, gap_widths=(2,),
                       exclude=np.ones_like(exclude)).plan(0)


# --- gap masks -----------------------------------------------------------------------------


@pytest.mark.parametrize("width", [3, 6, 9, 12])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_line_gap_is_a_plane_of_the_given_width(axis, width):
    size, position = 32, 7
    mask = gap_mask(GapSpec("line", axis, width, position), (size,) * 3)
    assert mask.sum() == width * size**2
    missing_along_axis = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
    assert missing_along_axis.tolist() == list(range(position, position + width))
    assert np.all(np.take(mask, range(position, position + width), axis=axis))


@pytest.mark.parametrize("width", [3, 6, 9, 12])
def test_cross_gap_counts_by_inclusion_exclusion(width):
    size = 32
    spec = GapSpec("cross", 1, width, 4, 2, 20)
    mask = gap_mask(spec, (size,) * 3)
    assert mask.sum() == 2 * width * size**2 - width**2 * size
    assert np.all(mask[:, 4 : 4 + width, :]) and np.all(mask[:, :, 20 : 20 + width])


def test_random_gaps_fit_the_portion_and_centred_gaps_sit_in_the_middle():
    rng = np.random.default_rng(4)
    kinds, widths = set(), set()
    for _ in range(200):
        spec = random_gap(rng, 32)
        kinds.add(spec.kind)
        widths.add(spec.width)
        mask = gap_mask(spec, (32, 32, 32))  # raises if it does not fit
        expected = spec.width * 32**2 * (2 if spec.kind == "cross" else 1)
        assert mask.sum() == expected - (spec.width**2 * 32 if spec.kind == "cross" else 0)
        assert GapSpec.from_dict(spec.to_dict()) == spec
    assert kinds == {"line", "cross"} and widths == {3, 6, 9, 12}
    centred = random_gap(rng, 32, widths=(6,), kinds=("cross",), centred=True)
    assert centred.position == centred.cross_position == 13 and centred.axis != centred.cross_axis


@pytest.mark.parametrize(
    "args",
    [
        ("plane", 0, 3, 0),  # unknown kind
        ("line", 0, 0, 0),  # zero width
        ("line", 0, 3, 0, 1, 0),  # a line with a second plane
        ("cross", 1, 3, 0, 1, 0),  # a cross of two parallel planes
        ("cross", 1, 3, 0),  # a cross without its second plane
    ],
)
def test_invalid_gap_specs_are_refused(args):
    with pytest.raises(ValueError):
        GapSpec(*args)


def test_gap_outside_the_portion_is_refused():
    with pytest.raises(InputError, match=r"\(32, 32, 32\)"):
        gap_mask(GapSpec("line", 0, 12, 25), (32, 32, 32))


def test_maxipix_layout_is_a_six_pixel_cross_constant_along_the_rocking_axis():
    mask = detector_gap_mask("maxipix", (3, 516, 516))
    frame = mask[0]
    assert np.all(mask == frame)
    assert np.flatnonzero(frame.all(axis=1)).tolist() == list(range(255, 261))
    assert np.flatnonzero(frame.all(axis=0)).tolist() == list(range(255, 261))
    assert frame.sum() == 2 * 6 * 516 - 6 * 6


def test_eiger_layout_has_38_and_12_pixel_bands_and_follows_the_roi():
    full = detector_gap_mask("eiger", (2162, 2068))
    row_bands = np.flatnonzero(full.all(axis=1))
    col_bands = np.flatnonzero(full.all(axis=0))
    assert len(row_bands) == 3 * 38 and row_bands[:2].tolist() == [512, 513]
    assert col_bands.tolist() == list(range(1028, 1040))
    roi = detector_gap_mask("eiger", (4, 300, 200), roi_origin=(400, 950))
    assert np.array_equal(roi[2], full[400:700, 950:1150])
    with pytest.raises(ValueError, match="maxipix"):
        detector_gap_mask("maxipx", (516, 516))


def test_parse_gap_reads_axis_start_width():
    assert parse_gap("x:126:6") == ("x", 126, 6)
    assert parse_gap(" Z:0:3 ") == ("z", 0, 3)


@pytest.mark.parametrize("text", ["x:12", "w:1:2", "x:-1:3", "x:a:3", "x:1:0", "x:1:2:3", ""])
def test_parse_gap_refuses_malformed_gaps_and_echoes_them(text):
    with pytest.raises(InputError, match="AXIS:START:WIDTH") as error:
        parse_gap(text)
    assert repr(text) in str(error.value)


def test_gaps_to_mask_unions_user_gaps_and_refuses_gaps_outside():
    mask = gaps_to_mask(["x:10:4", ("y", 2, 3), "z:0:1"], (5, 20, 30))
    expected = np.zeros((5, 20, 30), dtype=bool)
    expected[:, :, 10:14] = expected[:, 2:5, :] = expected[0] = True
    assert np.array_equal(mask, expected)
    assert gaps_to_mask(["x:1:2"], (4, 6))[:, 1:3].all()
    with pytest.raises(InputError, match=r"'x:28:4'.*\(5, 20, 30\)"):
        gaps_to_mask(["x:28:4"], (5, 20, 30))
    with pytest.raises(InputError, match="'z'"):
        gaps_to_mask(["z:0:1"], (20, 30))


# --- metrics -------------------------------------------------------------------------------


def test_pcc_is_one_for_identical_and_log_affine_predictions():
    rng = np.random.default_rng(5)
    truth = rng.poisson(rng.gamma(0.7, 100.0, size=(16, 16, 16))).astype(float)
    mask = gap_mask(GapSpec("line", 2, 6, 5), truth.shape)
    assert gap_pcc(truth, truth, mask) == pytest.approx(1.0, abs=1e-12)
    # PCC is defined on log1p counts: any a log1p(I) + b with a > 0 is a perfect score...
    stretched = np.expm1(2.0 * np.log1p(truth) + 0.3)
    assert gap_pcc(stretched, truth, mask) == pytest.approx(1.0, abs=1e-12)
    # ... while the relative error sees the scale error.
    assert relative_error(stretched, truth, mask) > 1.0
    mirrored = np.expm1(np.log1p(truth).max() - np.log1p(truth))
    assert gap_pcc(mirrored, truth, mask) == pytest.approx(-1.0, abs=1e-12)


def test_pcc_of_independent_noise_is_near_zero_and_outside_voxels_do_not_count():
    rng = np.random.default_rng(6)
    truth = rng.poisson(20.0, size=(32, 32, 32)).astype(float)
    pred = rng.poisson(20.0, size=truth.shape).astype(float)
    mask = gap_mask(GapSpec("line", 0, 12, 10), truth.shape)  # 12288 voxels
    assert abs(gap_pcc(pred, truth, mask)) < 0.04  # ~3.5 standard errors
    pred_outside_changed = np.where(mask, pred, 1e6)
    assert gap_pcc(pred_outside_changed, truth, mask) == gap_pcc(pred, truth, mask)
    assert np.isnan(gap_pcc(np.ones_like(truth), truth, mask))


def test_relative_error_is_l1_over_l1_in_the_gap():
    truth = np.array([[1.0, 2.0, 3.0, 100.0]])
    mask = np.array([[True, True, True, False]])
    assert relative_error(truth, truth, mask) == 0.0
    assert relative_error(np.zeros_like(truth), truth, mask) == 1.0
    assert relative_error(np.array([[2.0, 2.0, 2.0, 0.0]]), truth, mask) == pytest.approx(2.0 / 6.0)
    assert relative_error(truth * 0, truth * 0, mask) == 0.0


@pytest.mark.parametrize("metric", [gap_pcc, relative_error])
def test_metrics_refuse_mismatched_shapes_and_empty_gaps(metric):
    with pytest.raises(InputError, match="shape"):
        metric(np.ones(4), np.ones(5), np.ones(4, dtype=bool))
    with pytest.raises(InputError, match="no gap voxel"):
        metric(np.ones(4), np.ones(4), np.zeros(4, dtype=bool))
