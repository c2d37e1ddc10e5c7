"""Sliding-window stitching: placement, weights, merging, inference and chunked plans."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from rayproc.errors import InputError
from rayproc.stitching.chunking import ChunkTask, plan_chunks, predict_chunk
from rayproc.stitching.inferer import sliding_window_predict
from rayproc.stitching.merger import ArrayMerger, Merger
from rayproc.stitching.placement import gap_windows, grid_windows, window_coverage, windows_holding
from rayproc.stitching.weights import importance_map


# ---------------------------------------------------------------- helpers


def brute_coverage(shape, origins, patch):
    count = np.zeros(shape, int)
    for origin in origins:
        count[tuple(slice(o, o + p) for o, p in zip(origin, patch))] += 1
    return count


def origin_dependent_predictor(patches, keys):
    """A deterministic, nonlinear function of the patch and of where the window lies."""
    first_key = keys.reshape(len(keys), -1)[:, :1].reshape((-1,) + (1,) * (patches.ndim - 1))
    return np.cos(1.3 * patches + 0.37 * first_key) + 0.1 * patches**2


def brute_blend(image, origins, patch, weights):
    """Explicit loop over windows: weighted sum, weight sum, and every prediction per voxel."""
    keys = np.arange(image.size, dtype=float).reshape(image.shape)
    total = np.zeros(image.shape)
    weight_sum = np.zeros(image.shape)
    stacks = {}
    for origin in origins:
        window = tuple(slice(o, o + p) for o, p in zip(origin, patch))
        value = origin_dependent_predictor(
            image[window][None].astype(np.float32), keys[window][None]
        )[0]
        total[window] += weights * value
        weight_sum[window] += weights
        for local in np.ndindex(*patch):
            stacks.setdefault(tuple(np.add(origin, local)), []).append(value[local])
    with np.errstate(invalid="ignore"):
        return total / weight_sum, stacks


def plane_mask(n, ndim, axis, start, width):
    mask = np.zeros((n,) * ndim, bool)
    index = [slice(None)] * ndim
    index[axis] = slice(start, start + width)
    mask[tuple(index)] = True
    return mask


# ---------------------------------------------------------------- placement


@pytest.mark.parametrize(
    "shape, patch, stride",
    [((50, 37), (16, 16), (12, 12)), ((64, 64), 32, 32), ((33, 20), (8, 20), (3, 7)), ((7,), 7, 1)],
)
def test_grid_windows_cover_every_pixel_and_snap_to_end(shape, patch, stride):
    origins = grid_windows(shape, patch, stride)
    patch_t = np.broadcast_to(patch, len(shape))
    assert (brute_coverage(shape, origins, patch_t) >= 1).all()
    assert (origins.max(axis=0) == np.asarray(shape) - patch_t).all()
    assert len(np.unique(origins, axis=0)) == len(origins)


def test_grid_windows_lattice_and_count():
    origins = grid_windows((100, 70), 32, 16)
    assert sorted(set(origins[:, 0])) == [0, 16, 32, 48, 64, 68]
    assert sorted(set(origins[:, 1])) == [0, 16, 32, 38]
    assert len(origins) == 6 * 4


def test_window_coverage_matches_brute_force():
    rng = np.random.default_rng(0)
    shape, patch = (13, 11, 9), (4, 5, 3)
    origins = np.stack([rng.integers(0, n - p + 1, 40) for n, p in zip(shape, patch)], axis=1)
    origins = np.concatenate([origins, origins[:5]])  # duplicates count twice
    expected = brute_coverage(shape, origins, patch)
    assert np.array_equal(window_coverage(shape, origins, patch), expected)


@pytest.mark.parametrize("n, w, p", [(40, 6, 32), (40, 1, 32), (24, 3, 8), (24, 8, 8)])
def test_stride_one_plane_reproduces_published_sliding(n, w, p):
    # Masto et al.: the portion slides along the gap with step 1, the gap centred across it.
    g = 13 if n == 40 else 9
    mask = plane_mask(n, 3, axis=1, start=g, width=w)
    origins = gap_windows(mask, p, 1)
    across = min(max(g - (p - w) // 2, 0), n - p)  # centred, clipped into the array
    expected = [(i, across, k) for i in range(n - p + 1) for k in range(n - p + 1)]
    assert len(origins) == (n - p + 1) ** 2  # the documented formula
    assert origins.tolist() == sorted(map(list, expected))


def test_stride_one_line_in_3d_slides_along_one_axis():
    mask = np.zeros((20, 20, 20), bool)
    mask[5:7, :, 11:12] = True  # narrow along axes 0 and 2, a line along axis 1
    origins = gap_windows(mask, 8, 1)
    assert len(origins) == 20 - 8 + 1
    assert set(origins[:, 0]) == {5 - 3} and set(origins[:, 2]) == {11 - 3}


@pytest.mark.parametrize("stride", [2, 4, 5, 8])
def test_plane_with_stride_uses_grid_positions_along_and_keeps_gap_inside(stride):
    n, p, w, g = 41, 16, 5, 20
    mask = plane_mask(n, 3, axis=0, start=g, width=w)
    origins = gap_windows(mask, p, stride)
    lattice = grid_windows((n,), p, stride)[:, 0]
    assert len(origins) == (math.ceil((n - p) / stride) + 1) ** 2
    assert sorted(set(origins[:, 1])) == lattice.tolist() == sorted(set(origins[:, 2]))
    (across,) = set(origins[:, 0])
    assert across <= g and g + w <= across + p
    assert abs(across - (g - (p - w) // 2)) <= stride // 2


def _masks():
    rng = np.random.default_rng(7)
    n = 24
    cross = plane_mask(n, 3, 1, 10, 3) | plane_mask(n, 3, 2, 4, 2)
    band = plane_mask(n, 3, 2, 5, 11)  # wider than the 8-voxel patch
    border = plane_mask(n, 3, 0, 0, 3) | plane_mask(n, 3, 1, n - 2, 2)
    line_2d = plane_mask(n, 2, 0, 7, 4)
    cross_2d = plane_mask(n, 2, 0, 3, 2) | plane_mask(n, 2, 1, 20, 4)
    wide_band_2d = np.zeros((64, 48), bool)
    wide_band_2d[20:58] = True  # a 38-px band, like an Eiger module gap
    return {
        "plane": plane_mask(n, 3, 1, 11, 6),
        "cross": cross,
        "band": band,
        "border": border,
        "random_sparse": rng.random((n, n, n)) < 0.01,
        "random_dense": rng.random((n, n, n)) < 0.3,
        "blobs": np.kron(rng.random((3, 3, 3)) < 0.4, np.ones((8, 8, 8), bool)),
        "line_2d": line_2d,
        "cross_2d": cross_2d,
        "wide_band_2d": wide_band_2d,
        "random_2d": rng.random((30, 26)) < 0.05,
    }


@pytest.mark.parametrize("name", list(_masks()))
@pytest.mark.parametrize("stride", [1, 3, 8])
def test_every_missing_voxel_is_covered(name, stride):
    mask = _masks()[name]
    patch = (32, 32) if name == "wide_band_2d" else (8,) * mask.ndim
    origins = gap_windows(mask, patch, stride)
    coverage = brute_coverage(mask.shape, origins, patch)
    assert (coverage[mask] >= 1).all()
    assert np.array_equal(window_coverage(mask.shape, origins, patch), coverage)
    # Only windows that touch the gap; inside the array; distinct; sorted.
    for origin in origins:
        assert mask[tuple(slice(o, o + p) for o, p in zip(origin, patch))].any()
    assert (origins >= 0).all() and (origins + patch <= mask.shape).all()
    as_tuples = list(map(tuple, origins.tolist()))
    assert as_tuples == sorted(set(as_tuples))
    assert len(origins) <= mask.sum()


@pytest.mark.parametrize("shape, patch", [((17,), 4), ((9, 12), (3, 5)), ((7, 8, 9), (4, 3, 2)), ((6, 6), 1)])
def test_windows_holding_matches_brute_force(shape, patch):
    rng = np.random.default_rng(len(shape))
    mask = rng.random(shape) < 0.03
    origins = grid_windows(shape, patch, 1)
    sizes = (patch,) * len(shape) if isinstance(patch, int) else patch
    expected = [mask[tuple(slice(o, o + p) for o, p in zip(origin, sizes))].any() for origin in origins]
    assert windows_holding(mask, origins, patch).tolist() == expected
    assert not windows_holding(np.zeros(shape, bool), origins, patch).any()
    with pytest.raises(InputError, match="bool"):
        windows_holding(mask.astype(int), origins, patch)


def test_stride_reduces_window_count():
    masks = _masks()
    for name in ("plane", "random_sparse", "band", "cross"):
        counts = [len(gap_windows(masks[name], 8, s)) for s in (1, 2, 4, 8)]
        assert counts == sorted(counts, reverse=True) and counts[-1] < counts[0] / 2, name


def test_gap_windows_empty_mask_and_bad_input():
    assert gap_windows(np.zeros((10, 10), bool), 4, 2).shape == (0, 2)
    with pytest.raises(InputError, match="bool"):
        gap_windows(np.zeros((10, 10)), 4)
    with pytest.raises(InputError, match="fit"):
        gap_windows(np.zeros((10, 3), bool), 4)
    with pytest.raises(InputError, match="stride"):
        grid_windows((10, 10), 4, 5)


# ---------------------------------------------------------------- weights


def test_gaussian_importance_map_positive_peaked_symmetric():
    w = importance_map((9, 10, 7), "gaussian")
    assert w.dtype == np.float32 and w.shape == (9, 10, 7)
    assert (w >= 1e-3).all() and w.max() == 1.0
    assert w[4, 4, 3] == w[4, 5, 3] == 1.0  # the middle (two voxels along the even axis)
    assert np.array_equal(w, w[::-1, ::-1, ::-1])
    profile = w[:, 4, 3]
    assert (np.diff(profile[:5]) > 0).all() and (np.diff(profile[4:]) < 0).all()
    # sigma = sigma_scale * patch: one sigma from the centre of a 1-D map the weight is e^-1/2.
    w1 = importance_map((201,), "gaussian", sigma_scale=20 / 201).astype(float)
    assert w1[100 + 20] == pytest.approx(np.exp(-0.5), rel=1e-6)
    assert np.array_equal(importance_map((4, 4)), np.ones((4, 4), np.float32))


def test_importance_map_bad_mode_suggests():
    with pytest.raises(ValueError, match="gaussian"):
        importance_map((4, 4), "gausian")


# ---------------------------------------------------------------- merging and inference


def test_identity_predictor_returns_input_on_covered_voxels():
    rng = np.random.default_rng(1)
    image = rng.lognormal(5.0, 2.0, (20, 18, 16)).astype(np.float32)
    mask = plane_mask(20, 3, 2, 6, 3)[:, :18, :16]
    origins = gap_windows(mask, 8, 2)
    for weights in ("mean", "gaussian"):
        mean, spread = sliding_window_predict(
            image, origins, lambda p: p, patch=8, weights=weights, batch_size=5
        )
        covered = window_coverage(image.shape, origins, 8) > 0
        assert np.array_equal(mean[covered], image[covered])
        assert (spread[covered] == 0).all()
        assert np.isnan(mean[~covered]).all() and np.isnan(spread[~covered]).all()


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("weights", ["mean", "gaussian"])
def test_sliding_window_matches_brute_force(ndim, weights):
    rng = np.random.default_rng(ndim)
    shape = (23, 19, 14)[:ndim]
    patch = (8, 6, 5)[:ndim]
    image = rng.normal(size=shape).astype(np.float32)
    origins = grid_windows(shape, patch, (3, 4, 2)[:ndim])
    keys = np.arange(image.size, dtype=float).reshape(shape)
    weight_map = importance_map(patch, weights)
    mean, spread = sliding_window_predict(
        image, origins, origin_dependent_predictor, patch=patch, weights=weights,
        batch_size=7, extras=[keys],
    )
    expected, stacks = brute_blend(image, origins, patch, weight_map)
    np.testing.assert_allclose(mean, expected, rtol=1e-6, atol=1e-6)
    if weights == "mean":
        expected_spread = np.zeros(shape)
        for voxel, values in stacks.items():
            expected_spread[voxel] = np.std(values)
        np.testing.assert_allclose(spread, expected_spread, rtol=1e-5, atol=1e-6)


def test_spread_is_zero_under_one_window_and_std_of_overlaps():
    merger = ArrayMerger((10,), np.ones(4))
    values = np.array([[1.0, 2, 3, 4], [10, 20, 30, 40], [5, 5, 5, 5]])
    merger.aggregate(values, [[0], [2], [3]])
    mean, spread = merger.finalize()
    assert isinstance(merger, Merger)
    np.testing.assert_allclose(mean[:7], [1, 2, 6.5, 29 / 3, 17.5, 22.5, 5], rtol=1e-6)
    expected_spread = [0, 0, 3.5, np.std([4, 20, 5]), 12.5, 17.5, 0]
    np.testing.assert_allclose(spread[:7], expected_spread, rtol=1e-6)
    assert np.isnan(mean[7:]).all()
    # Large intensities with a small spread: no cancellation (sums of v^2 would give ~0).
    merger = ArrayMerger((1,), np.ones(1))
    merger.aggregate(np.array([[1e8 + 1.0], [1e8 - 1.0]]), [[0], [0]])
    assert merger.finalize()[1][0] == 1.0


def test_region_merger_equals_slice_of_whole_merger():
    rng = np.random.default_rng(3)
    shape, patch = (30, 25), (7, 6)
    origins = grid_windows(shape, patch, (3, 4))
    values = rng.normal(size=(len(origins),) + patch)
    weights = importance_map(patch, "gaussian")
    whole = ArrayMerger(shape, weights)
    whole.aggregate(values, origins)
    region = ArrayMerger((9, 11), weights, region_origin=(12, 5))
    region.aggregate(values, origins)  # windows outside the region add nothing
    for full, part in zip(whole.finalize(), region.finalize()):
        assert np.array_equal(full[12:21, 5:16], part)


def test_bad_predictions_are_rejected():
    image = np.zeros((10, 10))
    origins = grid_windows(image.shape, 5, 5)
    with pytest.raises(InputError, match="return"):
        sliding_window_predict(image, origins, lambda p: p[:, :4], patch=5)
    with pytest.raises(InputError, match="finite"):
        sliding_window_predict(image, origins, lambda p: np.full_like(p, np.nan), patch=5)
    with pytest.raises(InputError, match="inside"):
        sliding_window_predict(image, origins + 1, lambda p: p, patch=5)


def test_progress_reports_every_batch():
    calls = []
    image = np.zeros((12, 12))
    origins = grid_windows(image.shape, 4, 4)  # 9 windows
    sliding_window_predict(
        image, origins, lambda p: p, patch=4, batch_size=4, progress=lambda *a: calls.append(a)
    )
    assert calls == [(4, 9), (8, 9), (9, 9)]


# ---------------------------------------------------------------- chunked plans


def _assemble(tasks, shape, run):
    mean = np.full(shape, -1.0, np.float32)
    spread = np.full(shape, -1.0, np.float32)
    for task in tasks:
        mean[task.core], spread[task.core] = run(task)
    return mean, spread


@pytest.mark.parametrize(
    "shape, patch, chunk, placement",
    [
        ((40, 36), (8, 8), (10, 10), "gap"),
        ((40, 36), (8, 8), (16, 7), "grid"),
        ((40, 36), (8, 8), (40, 36), "gap"),
        ((40, 36), (8, 8), (3, 50), "gap"),
        ((20, 18, 16), (8, 8, 8), (8, 8, 8), "gap"),
        ((20, 18, 16), (8, 8, 8), (5, 18, 7), "gap"),
        ((20, 18, 16), (6, 5, 4), (7, 6, 5), "grid"),
    ],
)
@pytest.mark.parametrize("weights", ["mean", "gaussian"])
def test_chunked_with_halo_equals_single_process(shape, patch, chunk, placement, weights):
    rng = np.random.default_rng(11)
    image = rng.normal(size=shape).astype(np.float32)
    keys = np.arange(image.size, dtype=float).reshape(shape)
    if placement == "gap":
        mask = np.zeros(shape, bool)
        mask[(slice(12, 15),) + (slice(None),) * (len(shape) - 1)] = True
        mask[(slice(None),) * (len(shape) - 1) + (slice(2, 4),)] = True
        origins = gap_windows(mask, patch, 2)
    else:
        origins = grid_windows(shape, patch, tuple(max(1, p // 2) for p in patch))
    kwargs = dict(patch=patch, weights=weights, batch_size=6, extras=[keys])
    single = sliding_window_predict(image, origins, origin_dependent_predictor, **kwargs)

    tasks = plan_chunks(shape, chunk, origins, patch)
    assert len(tasks) == np.prod([-(-n // c) for n, c in zip(shape, chunk)])
    chunked = _assemble(
        tasks, shape,
        lambda t: predict_chunk(t, image, origins, origin_dependent_predictor, **kwargs),
    )
    assert np.array_equal(single[0], chunked[0], equal_nan=True)
    assert np.array_equal(single[1], chunked[1], equal_nan=True)
    for task in tasks:
        # read_region = core + halo: contains the core and every window of the task.
        window_set = set(task.windows)
        for k, origin in enumerate(origins):
            touches = all(
                o < c.stop and o + p > c.start for o, p, c in zip(origin, patch, task.core)
            )
            assert touches == (k in window_set)
            if touches:
                assert all(
                    r.start <= o and o + p <= r.stop
                    for o, p, r in zip(origin, patch, task.read_region)
                )
        if task.passthrough:
            assert np.isnan(single[0][task.core]).all()


def test_passthrough_chunks_do_not_predict():
    mask = np.zeros((40, 40), bool)
    mask[:, 3:5] = True
    origins = gap_windows(mask, 8, 4)
    tasks = plan_chunks(mask.shape, 10, origins, 8)
    passthrough = [t.index for t in tasks if t.passthrough]
    # The 2-px gap at columns 3-4 is centred in 8-px windows: columns 0-7, chunk column 0.
    assert passthrough == [(i, j) for i in range(4) for j in (1, 2, 3)]
    task = next(t for t in tasks if t.passthrough)
    assert task.read_region == task.core

    def fail(patches):
        raise AssertionError("called")

    mean, spread = predict_chunk(task, np.zeros((40, 40)), origins, fail, patch=8)
    assert mean.shape == (10, 10) and np.isnan(mean).all() and np.isnan(spread).all()


def test_chunk_task_round_trips_through_json():
    origins = grid_windows((30, 30), 8, 4)
    for task in plan_chunks((30, 30), (16, 9), origins, 8):
        assert ChunkTask.from_dict(json.loads(json.dumps(task.to_dict()))) == task
    with pytest.raises(InputError, match="contain"):
        ChunkTask((0,), (slice(0, 10),), (), (slice(2, 10),))


def test_sample_stack_chunks_frames_independently():
    # A stack of 2-D frames: windows and chunks of size 1 along the sample axis.
    rng = np.random.default_rng(5)
    frames = rng.normal(size=(3, 30, 26)).astype(np.float32)
    tile, stride = (12, 10), (8, 7)
    origins = grid_windows(frames.shape, (1,) + tile, (1,) + stride)
    assert len(origins) == 3 * len(grid_windows(frames.shape[1:], tile, stride))

    def predict(patches):
        assert patches.shape[1] == 1
        return np.tanh(patches) * patches.mean(axis=(1, 2, 3), keepdims=True)

    kwargs = dict(patch=(1,) + tile, weights="gaussian", batch_size=5)
    single = sliding_window_predict(frames, origins, predict, **kwargs)
    tasks = plan_chunks(frames.shape, (1, 16, 26), origins, (1,) + tile)
    assert all(t.read_region[0] == t.core[0] for t in tasks)  # no halo across samples
    chunked = _assemble(
        tasks, frames.shape, lambda t: predict_chunk(t, frames, origins, predict, **kwargs)
    )
    assert np.array_equal(single[0], chunked[0]) and np.array_equal(single[1], chunked[1])
    assert not np.isnan(single[0]).any()  # the tiles cover every pixel of every frame
    frame_origins = grid_windows(frames.shape[1:], tile, stride)
    for f in range(3):
        mean, _ = sliding_window_predict(
            frames[f], frame_origins, lambda p: predict(p[:, None])[:, 0], patch=tile,
            weights="gaussian", batch_size=5,
        )
        np.testing.assert_allclose(single[0][f], mean, rtol=1e-6, atol=1e-7)


def test_update_moments_with_scratch_is_bit_identical_and_allocation_free():
    from rayproc.stitching import update_moments

    rng = np.random.default_rng(3)
    values, weights = rng.random((5, 6, 7)), rng.random((5, 6, 7)) + 0.1
    plain = [np.zeros((6, 7)) for _ in range(3)]
    scratched = [np.zeros((6, 7)) for _ in range(3)]
    scratch = (np.full((8, 9), np.nan), np.full((8, 9), np.nan))  # larger than the region: views are used
    for value, weight in zip(values, weights):
        update_moments(*plain, value, weight)
        update_moments(*scratched, value, weight, scratch=scratch)
    for a, b in zip(plain, scratched):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(plain[0], np.average(values, axis=0, weights=weights))


def test_retain_freed_memory_is_idempotent():
    from rayproc.runtime.memory import retain_freed_memory

    assert retain_freed_memory() in (True, False) and retain_freed_memory() == retain_freed_memory()
