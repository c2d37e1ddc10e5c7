"""BCDI inpainting networks and losses (pure torch, CPU, tiny sizes)."""

import numpy as np
import pytest
import torch
from torch import nn

from rayproc.bcdi.baselines import interpolate_gaps
from rayproc.bcdi.gaps import GapSpec, gap_mask, random_gap
from rayproc.errors import InputError
from rayproc.bcdi.network import (
    BcdiNetConfig,
    build_bcdi_net,
    count_parameters,
    flops_per_portion,
    line_fill,
    pull_push_fill,
)
from rayproc.models.losses import gradient_l1, inpainting_loss, ssim, ssim3d

torch.set_num_threads(1)

TINY_GAPNET = BcdiNetConfig(base_channels=4, depth=2, dilations=(1, 2))
TINY_MASTO = BcdiNetConfig("masto2024", base_channels=4)


def smooth_fields(rng, n, size, sigma=2.0):
    """Gaussian-filtered white noise, each field stretched to [0, 1]; (n, 1, size, size, size)."""
    k = np.fft.fftfreq(size)
    k2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2
    spectrum = np.fft.fftn(rng.standard_normal((n, size, size, size)), axes=(1, 2, 3))
    fields = np.fft.ifftn(spectrum * np.exp(-2 * (np.pi * sigma) ** 2 * k2), axes=(1, 2, 3)).real
    lo, hi = fields.min(axis=(1, 2, 3), keepdims=True), fields.max(axis=(1, 2, 3), keepdims=True)
    return torch.tensor((fields - lo) / (hi - lo), dtype=torch.float32)[:, None]


def gap_masks(rng, n, size, widths=(3, 4)):
    masks = [gap_mask(random_gap(rng, size, widths=widths), (size,) * 3) for _ in range(n)]
    return torch.tensor(np.stack(masks), dtype=torch.float32)[:, None]


# --- configs -------------------------------------------------------------------------------


def test_configs_take_the_architecture_defaults_and_round_trip():
    default = BcdiNetConfig()
    assert (default.arch, default.in_channels, default.composite, default.fill_prior, default.prior_input) == (
        "gapnet",
        2,
        True,
        "linear",
        True,
    )
    masto = BcdiNetConfig("masto2024")
    assert (masto.base_channels, masto.depth, masto.in_channels) == (32, 4, 1)
    assert masto.dilations == (1, 2, 3, 4)
    assert not masto.composite
    for config in (default, masto, TINY_GAPNET):
        assert BcdiNetConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize(
    "kwargs",
    [
        {"arch": "masto2024", "depth": 3},
        {"arch": "masto2024", "fill_prior": True},
        {"arch": "masto2024", "prior_input": True},
        {"arch": "gapnet", "in_channels": 1},
        {"arch": "gapnet", "base_channels": 2, "dilations": (1, 2, 3)},
        {"arch": "gapnet", "dilations": (0, 1)},
    ],
)
def test_invalid_configs_are_refused(kwargs):
    with pytest.raises(InputError):
        BcdiNetConfig(**kwargs)


def test_configs_written_before_the_linear_prior_load_as_pull_push():
    legacy = {"arch": "gapnet", "base_channels": 8, "depth": 3, "dilations": [1, 2, 3, 4],
              "in_channels": 2, "composite": True, "fill_prior": True}
    config = BcdiNetConfig.from_dict(legacy)
    assert (config.fill_prior, config.prior_input) == ("pull-push", False)
    assert BcdiNetConfig.from_dict({**legacy, "fill_prior": False}).fill_prior == "none"


def test_unknown_architecture_suggests_the_close_one():
    with pytest.raises(ValueError, match="masto2024"):
        BcdiNetConfig("masto2023")
    with pytest.raises(ValueError, match="linear"):
        BcdiNetConfig("gapnet", fill_prior="liner")


# --- networks ------------------------------------------------------------------------------


def test_gapnet_passes_known_voxels_through_and_ignores_gap_contents():
    rng = np.random.default_rng(0)
    model = build_bcdi_net(TINY_GAPNET)
    for p in model.parameters():  # leave the zero-initialised head: use random weights
        nn.init.normal_(p, std=0.3)
    x, mask = smooth_fields(rng, 2, 16), gap_masks(rng, 2, 16)
    with torch.no_grad():
        y = model(x, mask)
        y_other_gap_values = model(torch.where(mask > 0, torch.rand_like(x), x), mask)
    assert y.shape == x.shape
    assert 0.0 <= y.min() and y.max() <= 1.0
    known = mask == 0
    assert torch.equal(y[known], x[known])
    assert not torch.allclose(y[~known], x[~known])
    assert torch.equal(y, y_other_gap_values)


@pytest.mark.parametrize("prior", ["linear", "pull-push"])
def test_gapnet_starts_as_its_fill_prior(prior):
    rng = np.random.default_rng(1)
    x, mask = smooth_fields(rng, 2, 16), gap_masks(rng, 2, 16)
    with torch.no_grad():
        y = build_bcdi_net({**TINY_GAPNET.to_dict(), "fill_prior": prior})(x, mask)
        fill = (line_fill if prior == "linear" else pull_push_fill)(x * (1 - mask), 1 - mask)
    gap = mask > 0
    torch.testing.assert_close(y[gap], fill[gap].clamp(1e-3, 1 - 1e-3), atol=1e-5, rtol=0)


def test_line_fill_matches_the_linear_baseline_across_plane_gaps():
    rng = np.random.default_rng(3)
    x = torch.from_numpy(rng.random((2, 1, 12, 12, 12)))
    mask = torch.zeros_like(x)
    mask[0, 0, :, :, 4:7] = 1  # a plane gap along x
    mask[1, 0, 2:5] = 1  # one along z
    fill = line_fill(x * (1 - mask), 1 - mask)
    for b in range(2):
        expected = interpolate_gaps(x[b, 0].numpy(), mask[b, 0].numpy() > 0, "linear")
        np.testing.assert_allclose(fill[b, 0].numpy(), expected, atol=1e-12)
    cross = torch.zeros_like(mask)
    cross[..., 4:7] = 1
    cross[..., 5:8, :] = 1
    crossed = line_fill(x * (1 - cross), 1 - cross)
    assert torch.equal(crossed[cross == 0], x[cross == 0]) and torch.isfinite(crossed).all()
    slab = torch.from_numpy(rng.random((1, 1, 12, 5, 20)))  # anisotropic, odd sizes
    gap = torch.zeros_like(slab)
    gap[..., 7:10] = 1
    gap[..., 0, 2, :] = 1  # a line meeting the plane: no bounded run there, pull-push
    expected = interpolate_gaps(slab[0, 0].numpy(), gap[0, 0, :, :, :].numpy() > 0, "linear")
    filled = line_fill(slab * (1 - gap), 1 - gap)[0, 0].numpy()
    plane_only = (gap[0, 0].numpy() > 0) & (np.arange(5)[None, :, None] != 2)
    np.testing.assert_allclose(filled[plane_only], expected[plane_only], atol=1e-12)
    assert np.isfinite(filled).all()


@pytest.mark.parametrize("reverse", [False, True])
def test_running_extremum_equals_cumulative_scan(reverse):
    from rayproc.bcdi.network import _running

    values = torch.from_numpy(np.random.default_rng(4).integers(-5, 50, (3, 2, 7, 33, 4))).to(torch.int32)
    for axis in range(values.dim()):
        flip = (lambda a: a.flip(axis)) if reverse else (lambda a: a)
        expected = flip(flip(values).cummax(axis).values)
        assert torch.equal(_running(values, axis, torch.maximum, reverse=reverse), expected)
        expected = flip(flip(values).cummin(axis).values)
        assert torch.equal(_running(values, axis, torch.minimum, reverse=reverse), expected)


def test_pull_push_fill_keeps_known_values_and_blends_them_into_gaps():
    ramp = torch.linspace(0, 1, 16).reshape(1, 1, 16, 1, 1).expand(1, 1, 16, 16, 16)
    known = torch.ones_like(ramp)
    known[:, :, 6:10] = 0
    fill = pull_push_fill(ramp * known, known)
    assert torch.equal(fill[known > 0], ramp[known > 0])
    inside = fill[:, :, 6:10, 8, 8].flatten()
    assert torch.all((inside > ramp[0, 0, 5, 0, 0]) & (inside < ramp[0, 0, 10, 0, 0]))
    known_2d = known[..., 4:12, 0, 4:12]  # 2D batches too
    constant = pull_push_fill(torch.full((1, 1, 8, 8), 0.3) * known_2d, known_2d)
    torch.testing.assert_close(constant, torch.full_like(constant, 0.3))


def test_masto2024_structure_follows_the_published_network():
    model = build_bcdi_net(TINY_MASTO)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv3d)]
    first_block = model.encoder[0][0]
    assert sorted(branch.dilation[0] for branch in first_block.branches) == [1, 2, 3, 4]
    assert all(branch.kernel_size == (3, 3, 3) for branch in first_block.branches)
    assert {c.dilation[0] for c in convs} == {1, 2, 3, 4}
    assert [type(m[0]).__name__ for m in model.decoder] == ["ConvTranspose3d"] * 4
    sizes = []
    hooks = [
        block.register_forward_hook(lambda m, i, o: sizes.append(o.shape[2:]))
        for block in model.encoder
    ]
    x = torch.rand(1, 1, 32, 32, 32)
    mask = torch.tensor(gap_mask(GapSpec("line", 2, 6, 13), (32, 32, 32)))[None, None].float()
    with torch.no_grad():
        y = model(x, mask)
    for hook in hooks:
        hook.remove()
    assert [tuple(s) for s in sizes] == [(16,) * 3, (8,) * 3, (4,) * 3, (2,) * 3]  # bottleneck 2^3
    assert y.shape == x.shape and 0.0 <= y.min() and y.max() <= 1.0
    head = [m for m in model.head.modules() if isinstance(m, nn.Conv3d)]
    assert [c.kernel_size[0] for c in head] == [4, 3, 2, 1]
    # The published network sees only the gapped portion and returns a whole new portion.
    assert model.encoder[0][0].branches[0].in_channels == 1
    assert not torch.equal(y[mask == 0], x[mask == 0])


def test_published_masto2024_size():
    model = build_bcdi_net(BcdiNetConfig("masto2024"))
    assert count_parameters(model) == 2_771_309
    head_widths = [m.out_channels for m in model.head.modules() if isinstance(m, nn.Conv3d)]
    assert head_widths == [24, 12, 6, 1]
    assert [m[0].out_channels for m in model.decoder] == [478, 222, 96, 32]


def test_tiny_gapnet_parameter_count_by_hand():
    """base 4, depth 2, dilations (1, 2, 3, 4), 2 input channels: level widths 4, 8, 16."""

    def conv(i, o, k):  # weights and biases of a k^3 convolution (transposed or not)
        return i * o * k**3 + o

    encoder = 4 * conv(2, 1, 3) + 4 * conv(4, 2, 3) + 4 * conv(8, 4, 3)  # 4 dilated branches per level
    up = conv(8, 4, 2) + conv(16, 8, 2)  # stride-2 transposed convolutions, 16 -> 8 -> 4 channels
    fuse = conv(2 * 4, 4, 3) + conv(2 * 8, 8, 3)  # after concatenating the skip
    head = conv(4, 1, 1)
    assert encoder + up + fuse + head == 10_193
    assert count_parameters(build_bcdi_net({"arch": "gapnet", "base_channels": 4, "depth": 2})) == 10_193


def test_forward_refuses_sizes_the_network_cannot_pool():
    model = build_bcdi_net(TINY_GAPNET)
    with pytest.raises(InputError, match="multiples of 4"):
        model(torch.zeros(1, 1, 10, 12, 12), torch.zeros(1, 1, 10, 12, 12))


def test_flops_count_convolutions_and_transposed_convolutions():
    class TwoLayers(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv3d(1, 4, 3, padding=1)
            self.up = nn.ConvTranspose3d(4, 2, 2, stride=2)

        def forward(self, x, mask):
            return self.up(self.conv(x))

    expected_macs = 8**3 * 4 * 1 * 27 + 8**3 * 4 * 2 * 8
    assert flops_per_portion(TwoLayers(), size=8) == 2 * expected_macs


def test_default_network_is_much_cheaper_than_the_published_one():
    gapnet = build_bcdi_net()
    masto = build_bcdi_net(BcdiNetConfig("masto2024"))
    assert count_parameters(gapnet) < 300_000 < 2_000_000 < count_parameters(masto)
    flops = flops_per_portion(gapnet, size=32)
    assert 3e8 < flops < 6e8  # about 0.49 GFLOP per 32^3 portion


# --- losses --------------------------------------------------------------------------------


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    rng = np.random.default_rng(2)
    a = smooth_fields(rng, 2, 16)
    assert ssim3d(a, a).item() == pytest.approx(1.0, abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    scores = [
        ssim(a, a + s * torch.randn(a.shape, generator=generator)).item() for s in (0.02, 0.1, 0.3)
    ]
    assert 1.0 > scores[0] > scores[1] > scores[2]
    b = a + 0.1 * torch.randn(a.shape, generator=generator)
    assert ssim(a, b).item() == pytest.approx(ssim(b, a).item(), abs=1e-6)
    image = a[:, :, 8]  # 2D batches too
    assert ssim(image, image).item() == pytest.approx(1.0, abs=1e-6)
    assert ssim(image, image.flip(-1)).item() < 0.9


def test_gradient_l1_sees_slopes_not_offsets():
    ramp = 0.05 * torch.arange(8.0).reshape(1, 1, 8, 1, 1).expand(2, 1, 8, 8, 8)
    assert gradient_l1(ramp + 0.3, ramp).item() == pytest.approx(0.0, abs=1e-7)
    assert gradient_l1(ramp, torch.zeros_like(ramp)).item() == pytest.approx(0.05 / 3)
    plane = 0.05 * torch.arange(8.0).reshape(1, 1, 8, 1).expand(1, 1, 8, 8)
    assert gradient_l1(plane, torch.zeros_like(plane)).item() == pytest.approx(0.05 / 2)


def test_inpainting_loss_is_zero_for_perfect_gaps_and_blind_outside_them():
    rng = np.random.default_rng(3)
    target, mask = smooth_fields(rng, 2, 16), gap_masks(rng, 2, 16)
    wrong_outside = torch.where(mask > 0, target, 1 - target)
    assert inpainting_loss(wrong_outside, target, mask).item() == pytest.approx(0.0, abs=1e-6)
    wrong_inside = torch.where(mask > 0, 1 - target, target)
    assert inpainting_loss(wrong_inside, target, mask).item() > 0.05
    with pytest.raises(InputError):
        inpainting_loss(target[0], target, mask)


def test_tiny_gapnet_learns_to_inpaint_smooth_fields_on_cpu():
    rng = np.random.default_rng(4)
    torch.manual_seed(0)
    target, mask = smooth_fields(rng, 8, 16), gap_masks(rng, 8, 16)
    model = build_bcdi_net(TINY_GAPNET)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = inpainting_loss(model(target, mask), target, mask)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
