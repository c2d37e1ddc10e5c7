"""LabDCT dynamic U-Net: structure, ICNR, feature loss, and a tiny network that learns on CPU."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from rayproc.errors import InputError
from rayproc.labdct.network import (
    BasicBlock,
    FeatureNet,
    LabdctNetConfig,
    PixelShuffleUp,
    build_labdct_net,
    feature_loss,
    gram_matrix,
    load_feature_net,
    vgg16_bn_features,
)

TINY = LabdctNetConfig(widths=(4, 8, 8, 16), blocks=(3, 4, 6, 3))


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_structure_is_resnet34_dynamic_unet():
    torch.manual_seed(0)
    net = build_labdct_net(TINY)
    assert [sum(isinstance(m, BasicBlock) for m in stage) for stage in net.stages] == [3, 4, 6, 3]
    shuffles = [m for m in net.modules() if isinstance(m, nn.PixelShuffle)]
    assert len(shuffles) == 5  # one per skip (4) and the last upsampling to full size
    # four decoder blocks, each normalising its skip and both its convolutions (as fastai)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.decoder.modules()) == 3 * len(net.decoder) == 12
    x = torch.rand(2, 1, 64, 96)
    y = net(x)
    assert y.shape == x.shape and 0 < y.min() and y.max() < 1  # sigmoid output
    with pytest.raises(InputError, match="multiples of 32"):
        net(torch.rand(1, 1, 48, 64))
    with pytest.raises(InputError):
        net(torch.rand(1, 2, 64, 64))


def test_full_size_encoder_matches_resnet34():
    net = build_labdct_net()
    encoder = [net.stem, net.stages]
    count = sum(p.numel() for part in encoder for p in part.parameters())
    # torchvision resnet34: 21,797,672 parameters, less the fc layer (513,000) and two of the
    # three input channels of the 7x7 stem (2 * 64 * 49 = 6,272).
    assert count == 21_797_672 - 513_000 - 6_272
    assert [block.out_channels for block in net.decoder] == [512, 384, 256, 96]  # as fastai


def test_config_roundtrip():
    config = LabdctNetConfig(widths=(8, 16, 32), blocks=(1, 2, 1), icnr=False)
    assert config.divisor == 16
    assert LabdctNetConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    net = build_labdct_net(config.to_dict())
    assert net.config == config and net(torch.rand(1, 1, 16, 32)).shape == (1, 1, 16, 32)
    with pytest.raises(InputError):
        LabdctNetConfig(widths=(8, 16), blocks=(1,))


def test_icnr_upsampling_starts_as_nearest_neighbour():
    torch.manual_seed(1)
    up = PixelShuffleUp(6, 3)
    y = up(torch.randn(2, 6, 5, 7))
    assert y.shape == (2, 3, 10, 14)
    blocks = y.reshape(2, 3, 5, 2, 7, 2)
    assert torch.allclose(blocks, blocks[:, :, :, :1, :, :1].expand_as(blocks))
    assert y.std() > 0
    plain = PixelShuffleUp(6, 3, icnr=False)(torch.randn(2, 6, 5, 7)).reshape(2, 3, 5, 2, 7, 2)
    assert not torch.allclose(plain, plain[:, :, :, :1, :, :1].expand_as(plain))


def _tiny_feature_net() -> FeatureNet:
    torch.manual_seed(2)
    layers = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 6, 3, padding=1)
    )
    return FeatureNet(layers, [1, 3])


def test_feature_loss_terms():
    features = _tiny_feature_net()
    target = torch.rand(2, 1, 16, 16)
    pred = target.clone().requires_grad_(True)
    assert feature_loss(pred, target, features, layer_weights=(1.0, 1.0)).item() == 0.0
    shifted = (target + 0.1).requires_grad_(True)
    loss = feature_loss(shifted, target, features, layer_weights=(1.0, 1.0))
    pixel_only = feature_loss(shifted, target, features, layer_weights=(0.0, 0.0))
    assert pixel_only.item() == pytest.approx(0.1, abs=1e-6) and loss > pixel_only
    loss.backward()
    assert shifted.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in features.parameters())
    features.train()
    assert not features.training  # stays frozen
    with pytest.raises(InputError):
        feature_loss(shifted, target, features)  # three weights for two layers
    # Without a feature network: L1 + (1 - SSIM).
    assert feature_loss(target, target).item() == pytest.approx(0.0, abs=1e-6)
    offset = feature_loss(target + 0.1, target).item()  # L1 0.1, SSIM luminance just below 1
    assert 0.1 < offset < 0.15


def test_gram_matrix_numbers():
    x = torch.zeros(1, 2, 2, 2)
    x[0, 0] = 1.0
    x[0, 1, 0, 0] = 2.0
    gram = gram_matrix(x)[0]
    # F F^T / (C H W) with C H W = 8: [[4, 2], [2, 4]] / 8.
    assert torch.allclose(gram, torch.tensor([[0.5, 0.25], [0.25, 0.5]]))


def test_load_feature_net_from_file(tmp_path):
    torch.manual_seed(3)
    source = vgg16_bn_features()
    state = {f"features.{k}": v for k, v in source.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    path = tmp_path / "vgg16_bn.pt"
    torch.save(state, path)
    net = load_feature_net(path)
    assert torch.equal(net.layers[0].weight, source[0].weight)
    outputs = net(torch.rand(1, 1, 32, 32))
    assert [tuple(o.shape[1:]) for o in outputs] == [(256, 8, 8), (512, 4, 4), (512, 2, 2)]
    torch.save({"0.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(InputError, match="not a VGG16-BN state dict"):
        load_feature_net(tmp_path / "bad.pt")


def _toy_batch(generator: torch.Generator, n: int = 4, size: int = 64):
    """Noisy spots on an offset (input) and the clean spots (target)."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    clean = torch.zeros(n, 1, size, size)
    for i in range(n):
        for _ in range(6):
            cy, cx = torch.rand(2, generator=generator) * (size - 8) + 4
            clean[i, 0] += torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 1.5**2))
    clean = clean.clamp(max=1)
    noisy = 0.6 * clean + 0.3 + 0.1 * torch.randn(clean.shape, generator=generator)
    return noisy, clean


def test_tiny_unet_learns_toy_denoising():
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    net = build_labdct_net(TINY)
    optimiser = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(45):
        noisy, clean = _toy_batch(generator)
        loss = feature_loss(net(noisy), clean)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
    net.eval()
    noisy, clean = _toy_batch(generator)
    with torch.no_grad():
        denoised = net(noisy)
    rescaled = ((noisy - 0.3) / 0.6).clamp(0, 1)  # the best the input alone offers
    assert (denoised - clean).abs().mean() < 0.5 * (rescaled - clean).abs().mean()
