"""The LabDCT spot-denoising network: a fastai-style dynamic U-Net on a ResNet34 encoder.

Fang et al. [1]_ denoise LabDCT projections with fastai's ``DynamicUnet`` on a ResNet34
encoder [2]_, trained on forward-simulated projections [3]_ (see
:mod:`rayproc.labdct.synthesis`) with a perceptual feature loss. This is a pure-torch
rebuild (no torchvision, no fastai, nothing downloaded):

* encoder: 7x7 stride-2 stem, max-pooling, then stages of basic residual blocks (3-4-6-3
  for ResNet34; widths 64-128-256-512, configurable so tests can build a tiny one);
* middle: batch norm, ReLU and two 3x3 convolutions (doubling then restoring the width);
* decoder: per skip, a 1x1 convolution + PixelShuffle upsampling [4]_ (ICNR initialised [5]_),
  the batch-normalised skip concatenated, two 3x3 conv-BN-ReLU layers; a last PixelShuffle
  to full size, the input concatenated ("last cross"), a residual block, a 1x1 convolution
  and a sigmoid. Input and output have one channel; H and W must be multiples of
  ``config.divisor`` (32 for four stages).

References
----------
.. [1] H. Fang et al., deep-learning denoising of LabDCT projections (dynamic U-Net with a
   ResNet34 encoder trained on simulated projections).
.. [2] K. He, X. Zhang, S. Ren and J. Sun, "Deep residual learning for image recognition",
   Proc. IEEE CVPR (2016) 770-778. :doi:`10.1109/CVPR.2016.90`
.. [3] H. Fang, D. Juul Jensen and Y. Zhang, "A flexible and standalone forward simulation
   model for laboratory X-ray diffraction contrast tomography", Acta Cryst. A 76 (2020)
   652-663. :doi:`10.1107/S2053273320010852`
.. [4] W. Shi et al., "Real-time single image and video super-resolution using an efficient
   sub-pixel convolutional neural network", Proc. IEEE CVPR (2016) 1874-1883.
   :doi:`10.1109/CVPR.2016.207`
.. [5] A. Aitken et al., "Checkerboard artifact free sub-pixel convolution", arXiv:1707.02937
   (2017).
.. [6] J. Johnson, A. Alahi and L. Fei-Fei, "Perceptual losses for real-time style transfer
   and super-resolution", ECCV (2016) 694-711. :doi:`10.1007/978-3-319-46475-6_43`
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F
from torch import nn

from rayproc.errors import InputError
from rayproc.models.losses import ssim


@dataclass(frozen=True)
class LabdctNetConfig:
    """Size of the LabDCT dynamic U-Net.

    Parameters
    ----------
    widths : tuple of int
        Channels of the encoder stages (the stem has ``widths[0]``); ResNet34: 64-128-256-512.
    blocks : tuple of int
        Basic residual blocks per stage; ResNet34: 3-4-6-3.
    in_channels, out_channels : int
        1 and 1 for projections in, spot probability (or normalised clean image) out.
    icnr : bool
        ICNR initialisation of the PixelShuffle convolutions [5]_.
    last_cross : bool
        Concatenate the input before the final residual block (as fastai).
    """

    widths: tuple[int, ...] = (64, 128, 256, 512)
    blocks: tuple[int, ...] = (3, 4, 6, 3)
    in_channels: int = 1
    out_channels: int = 1
    icnr: bool = True
    last_cross: bool = True

    def __post_init__(self):
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        object.__setattr__(self, "blocks", tuple(int(b) for b in self.blocks))
        if not self.widths or len(self.widths) != len(self.blocks):
            raise InputError(
                f"widths and blocks need one entry per stage; got {self.widths} and "
                f"{self.blocks} instead."
            )
        if min(self.widths) < 2 or min(self.blocks) < 1:
            raise InputError(
                f"widths must be >= 2 and blocks >= 1; got {self.widths}, {self.blocks}."
            )
        if self.in_channels < 1 or self.out_channels < 1:
            raise InputError(
                f"channel counts must be >= 1; got {self.in_channels}, {self.out_channels}."
            )

    @property
    def divisor(self) -> int:
        """H and W must be multiples of this (stem and max-pool 4, then 2 per later stage)."""
        return 2 ** (len(self.widths) + 1)

    def to_dict(self) -> dict:
        out = {field.name: getattr(self, field.name) for field in fields(self)}
        out["widths"], out["blocks"] = list(self.widths), list(self.blocks)
        return out

    @classmethod
    def from_dict(cls, d: Mapping) -> "LabdctNetConfig":
        names = {field.name for field in fields(cls)}
        return cls(**{key: value for key, value in d.items() if key in names})


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3) -> nn.Sequential:
    """fastai's ``ConvLayer``: convolution, batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """ResNet basic block [2]_: two 3x3 conv-BN, identity (or 1x1 projection) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        return F.relu(self.bn2(self.conv2(y)) + self.shortcut(x), inplace=True)


def icnr_(weight: torch.Tensor, scale: int = 2) -> torch.Tensor:
    """ICNR initialisation [5]_ in place: the ``scale^2`` sub-pixel kernels of each output
    channel start equal, so PixelShuffle begins as nearest-neighbour upsampling."""
    out_channels = weight.shape[0] // scale**2
    sub = nn.init.kaiming_normal_(weight.new_empty((out_channels,) + tuple(weight.shape[1:])))
    with torch.no_grad():
        weight.copy_(sub.repeat_interleave(scale**2, dim=0))
    return weight


class PixelShuffleUp(nn.Module):
    """fastai's ``PixelShuffle_ICNR``: 1x1 conv to ``4 out`` channels, PixelShuffle(2), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, *, icnr: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels * 4, 1)
        if icnr:
            icnr_(self.conv.weight)
            nn.init.zeros_(self.conv.bias)
        self.shuffle = nn.PixelShuffle(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.shuffle(self.conv(x)))


class UnetBlock(nn.Module):
    """Decoder step: upsample, concatenate the batch-normalised skip, two conv-BN-ReLU."""

    def __init__(self, up_channels: int, skip_channels: int, *, final: bool, icnr: bool):
        super().__init__()
        self.up = PixelShuffleUp(up_channels, up_channels // 2, icnr=icnr)
        self.skip_bn = nn.BatchNorm2d(skip_channels)
        joined = up_channels // 2 + skip_channels
        self.out_channels = joined // 2 if final else joined
        self.conv1 = _conv_bn_relu(joined, self.out_channels)
        self.conv2 = _conv_bn_relu(self.out_channels, self.out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        joined = F.relu(torch.cat([self.up(x), self.skip_bn(skip)], dim=1))
        return self.conv2(self.conv1(joined))


class ResBlock(nn.Module):
    """fastai's plain ``ResBlock``: two conv-BN(-ReLU) layers plus the input, then ReLU."""

    def __init__(self, channels: int):
        super().__init__()
        self.convs = nn.Sequential(
            _conv_bn_relu(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.convs(x) + x)


class LabdctUnet(nn.Module):
    """Dynamic U-Net on a ResNet encoder: (B, 1, H, W) -> (B, 1, H, W) in (0, 1)."""

    def __init__(self, config: LabdctNetConfig):
        super().__init__()
        self.config = config
        widths, blocks = config.widths, config.blocks
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        )
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.stages = nn.ModuleList()
        previous = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2
            self.stages.append(
                nn.Sequential(
                    BasicBlock(previous, width, stride),
                    *(BasicBlock(width, width) for _ in range(count - 1)),
                )
            )
            previous = width
        bottom = widths[-1]
        self.middle = nn.Sequential(
            nn.BatchNorm2d(bottom),
            nn.ReLU(inplace=True),
            _conv_bn_relu(bottom, 2 * bottom),
            _conv_bn_relu(2 * bottom, bottom),
        )
        skips = [widths[0], *widths[:-1]][::-1]  # stem, then stages but the last, deepest first
        self.decoder = nn.ModuleList()
        up = bottom
        for index, skip in enumerate(skips):
            block = UnetBlock(up, skip, final=index == len(skips) - 1, icnr=config.icnr)
            self.decoder.append(block)
            up = block.out_channels
        self.final_up = PixelShuffleUp(up, up, icnr=config.icnr)
        head = up + (config.in_channels if config.last_cross else 0)
        self.head = nn.Sequential(ResBlock(head), nn.Conv2d(head, config.out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        if x.dim() != 4 or x.shape[1] != config.in_channels:
            raise InputError(
                f"expected a (B, {config.in_channels}, H, W) tensor; got {tuple(x.shape)} instead."
            )
        if x.shape[-2] % config.divisor or x.shape[-1] % config.divisor:
            raise InputError(
                f"H and W must be multiples of {config.divisor}; got {tuple(x.shape[-2:])}."
            )
        skips = [self.stem(x)]
        y = self.pool(skips[0])
        for stage in self.stages:
            y = stage(y)
            skips.append(y)
        y = self.middle(skips.pop())
        for block, skip in zip(self.decoder, reversed(skips)):
            y = block(y, skip)
        y = self.final_up(y)
        if config.last_cross:
            y = torch.cat([y, x], dim=1)
        return torch.sigmoid(self.head(y))


def build_labdct_net(config: LabdctNetConfig | Mapping | None = None) -> LabdctUnet:
    """Build the dynamic U-Net a :class:`LabdctNetConfig` (or its dict) describes.

    Parameters
    ----------
    config : LabdctNetConfig or dict, optional
        Defaults to the full ResNet34 network (about 41 M parameters).

    Returns
    -------
    LabdctUnet
        ``model(x)``: (B, 1, H, W) with H, W multiples of ``config.divisor`` -> same shape,
        values in (0, 1); ``model.config`` holds the config.

    Examples
    --------
    >>> net = build_labdct_net({"widths": [4, 4, 8, 8], "blocks": [1, 1, 1, 1]})
    >>> tuple(net(torch.zeros(1, 1, 32, 64)).shape)
    (1, 1, 32, 64)
    """
    if config is None:
        config = LabdctNetConfig()
    elif isinstance(config, Mapping):
        config = LabdctNetConfig.from_dict(config)
    return LabdctUnet(config)


# --- Perceptual (feature) loss -------------------------------------------------------------

_VGG16_CHANNELS = (
    *(64, 64, "M", 128, 128, "M"),
    *(256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
)
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def vgg16_bn_features() -> nn.Sequential:
    """VGG16 with batch norm, convolutional part, laid out as torchvision's
    ``vgg16_bn().features`` (same indices, so its state dict loads unchanged)."""
    layers: list[nn.Module] = []
    channels = 3
    for entry in _VGG16_CHANNELS:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(channels, entry, 3, padding=1), nn.BatchNorm2d(entry), nn.ReLU()]
            channels = entry
    return nn.Sequential(*layers)


class FeatureNet(nn.Module):
    """Frozen feature extractor: the outputs of chosen layers of a ``nn.Sequential``.

    One-channel inputs are repeated to the first convolution's channel count; with
    ``imagenet=True`` they are then normalised by the ImageNet mean and standard deviation.
    """

    def __init__(self, layers: nn.Sequential, layer_ids: Sequence[int], *, imagenet: bool = False):
        super().__init__()
        if not layer_ids or max(layer_ids) >= len(layers) or min(layer_ids) < 0:
            raise InputError(
                f"layer_ids must index the {len(layers)} layers; got {list(layer_ids)} instead."
            )
        self.layers = layers[: max(layer_ids) + 1]
        self.layer_ids = tuple(sorted(layer_ids))
        self.in_channels = next(m.in_channels for m in layers if isinstance(m, nn.Conv2d))
        self.imagenet = imagenet
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "FeatureNet":
        return super().train(False)  # always frozen (batch-norm statistics included)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.shape[1] != self.in_channels:
            x = x.expand(-1, self.in_channels, -1, -1)
        if self.imagenet:
            mean = x.new_tensor(_IMAGENET_MEAN).view(1, -1, 1, 1)
            std = x.new_tensor(_IMAGENET_STD).view(1, -1, 1, 1)
            x = (x - mean) / std
        out = []
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if index in self.layer_ids:
                out.append(x)
        return out


def load_feature_net(path, *, layer_ids: Sequence[int] = (22, 32, 42)) -> FeatureNet:
    """VGG16-BN feature network with weights read from a local file (never downloaded).

    Parameters
    ----------
    path : str or os.PathLike
        State dict of torchvision's ``vgg16_bn()`` (keys ``features.N...``; classifier keys
        are ignored) or of its ``features`` part: a ``.safetensors`` file, or a
        ``torch.save`` file (read with ``weights_only=True``).
    layer_ids : sequence of int, optional
        Layers whose outputs are compared: by default the last three before max-pooling,
        as fastai's feature loss.

    Returns
    -------
    FeatureNet
        Frozen, in eval mode, with ImageNet input normalisation.
    """
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    if any(key.startswith("features.") for key in state):
        state = {k[len("features.") :]: v for k, v in state.items() if k.startswith("features.")}
    features = vgg16_bn_features()
    try:
        features.load_state_dict(state)
    except RuntimeError as error:
        first_line = str(error).splitlines()[0]
        raise InputError(f"{path} is not a VGG16-BN state dict: {first_line}") from None
    return FeatureNet(features, layer_ids, imagenet=True)


def gram_matrix(x: torch.Tensor) -> torch.Tensor:
    """Channel Gram matrices ``F F^T / (C H W)`` of a (B, C, H, W) batch, shape (B, C, C)."""
    batch, channels, height, width = x.shape
    flat = x.reshape(batch, channels, -1)
    return flat @ flat.transpose(1, 2) / (channels * height * width)


def feature_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    feature_net: FeatureNet | None = None,
    *,
    layer_weights: Sequence[float] = (5.0, 15.0, 2.0),
    gram_weight: float = 5e3,
) -> torch.Tensor:
    """Perceptual loss of the denoising network (fastai's ``FeatureLoss`` [6]_).

    With a feature network ``phi`` (outputs ``phi_i``)::

        L = |p - t|_1 + sum_i w_i |phi_i(p) - phi_i(t)|_1
                      + sum_i w_i^2 gram_weight |G(phi_i(p)) - G(phi_i(t))|_1

    (mean absolute errors, ``G`` = :func:`gram_matrix`). Without one (no weights file),
    ``L = |p - t|_1 + (1 - SSIM(p, t))`` with :func:`rayproc.models.losses.ssim`.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (B, 1, H, W)
        Network output and target in [0, 1] (H, W >= 7).
    feature_net : FeatureNet, optional
        E.g. :func:`load_feature_net`; its parameters are never trained.
    layer_weights : sequence of float, optional
        ``w_i``, one per feature layer (fastai: 5, 15, 2).
    gram_weight : float, optional

    Returns
    -------
    torch.Tensor, shape ()
        0 when ``pred == target``.
    """
    if pred.shape != target.shape or pred.dim() != 4:
        raise InputError(
            f"expected two (B, C, H, W) tensors of one shape; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)} instead."
        )
    pixel = F.l1_loss(pred, target)
    if feature_net is None:
        return pixel + (1 - ssim(pred, target))
    pred_features = feature_net(pred)
    with torch.no_grad():
        target_features = feature_net(target)
    if len(layer_weights) != len(pred_features):
        raise InputError(
            f"need one weight per feature layer ({len(pred_features)}); got "
            f"{len(layer_weights)} instead."
        )
    loss = pixel
    for weight, p, t in zip(layer_weights, pred_features, target_features):
        loss = loss + weight * F.l1_loss(p, t)
        loss = loss + weight**2 * gram_weight * F.l1_loss(gram_matrix(p), gram_matrix(t))
    return loss


__all__ = [
    "FeatureNet",
    "LabdctNetConfig",
    "LabdctUnet",
    "build_labdct_net",
    "feature_loss",
    "gram_matrix",
    "icnr_",
    "load_feature_net",
    "vgg16_bn_features",
]
