"""3D U-Nets that inpaint detector gaps in normalised BCDI portions (pure torch).

Two architectures share one interface, ``model(x, mask) -> y`` on (B, 1, D, H, W) tensors:
``x`` is the normalised portion (see :func:`rayproc.bcdi.portions.normalise_batch`), ``mask``
is 1 on missing voxels, and ``y`` is the inpainted portion in [0, 1]. Gap voxels of ``x`` are
zeroed on entry whatever they hold.

* ``"masto2024"``: the published network of Masto et al. [1]_ (layer sizes from the authors'
  public code): two encoder blocks that concatenate their input with parallel dilated
  convolutions, two plain convolutional blocks, max-pooling 32 -> 16 -> 8 -> 4 -> 2, a decoder
  of stride-1 transposed convolutions and nearest-neighbour upsampling with skip connections,
  a three-layer output head, LeakyReLU(0.2) and the sigmoid ``1 / (1 + exp(-1.5 z))``. It
  sees only the gapped portion (1 input channel).
* ``"gapnet"`` (default): a cheaper, mask-aware U-Net. It sees the portion with its gap
  pre-filled by a parameter-free prior and the mask (2 channels), uses dilated blocks at
  every level and learned (stride-2 transposed convolution) upsampling, predicts a
  correction in logit space to that prior, and passes known voxels through unchanged. The
  prior is linear interpolation across the gap (:func:`line_fill`, the classical baseline of
  [1]_), falling back on pull-push [2]_ where no line crosses the gap; with its output layer
  zero-initialised, an untrained gapnet *is* linear interpolation, and training learns what
  interpolation misses (fringe curvature, noise). At the default width: 0.49 GFLOP and
  167 k parameters per 32^3 portion, against 4.77 GFLOP and 2.77 M for the published
  network (see :func:`flops_per_portion`).

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
.. [2] S. J. Gortler, R. Grzeszczuk, R. Szeliski and M. F. Cohen, "The Lumigraph",
   Proc. SIGGRAPH '96 (1996) 43-54 (pull-push interpolation). :doi:`10.1145/237170.237200`
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rayproc.errors import InputError
from rayproc.options import look_up_option

ARCHS = ("gapnet", "masto2024")
_ARCH_DEFAULTS = {
    "gapnet": {
        "base_channels": 8,
        "depth": 3,
        "dilations": (1, 2, 3, 4),
        "in_channels": 2,
        "composite": True,
        "fill_prior": "linear",
        "prior_input": True,
    },
    "masto2024": {
        "base_channels": 32,
        "depth": 4,
        "dilations": (1, 2, 3, 4),
        "in_channels": 1,
        "composite": False,
        "fill_prior": "none",
        "prior_input": False,
    },
}
# Published masto2024 widths at base_channels=32: decoder (bottom to top) and output head.
_MASTO_DECODER_WIDTHS = (478, 222, 96, 32)
_MASTO_HEAD = ((24, 4), (12, 3), (6, 2))  # (channels, kernel)
_MASTO_LEVEL2_DILATIONS = (1, 2, 2, 3)  # 2^3 kernels in the second dilated block
_SLOPE = 0.2
FILL_PRIORS = ("linear", "pull-push", "none")


@dataclass(frozen=True)
class BcdiNetConfig:
    """Architecture and size of a BCDI inpainting network.

    Fields left as None take the architecture's defaults, so ``BcdiNetConfig("masto2024")``
    is the published network and ``BcdiNetConfig()`` our default.

    Parameters
    ----------
    arch : {"gapnet", "masto2024"}
        Architecture.
    base_channels : int
        Width of the first level (gapnet: doubles per level; masto2024: 32 is the published
        width, other values scale every layer).
    depth : int
        Number of 2x poolings (masto2024: 4, so 32^3 portions reach 2^3).
    dilations : tuple of int
        Dilation rates of the parallel 3^3 convolutions in a dilated block (masto2024: first
        block; its second block uses 2^3 kernels at dilations 1, 2, 2, 3 as published).
    in_channels : int
        Network input channels: 2 for gapnet (portion, mask), 1 for masto2024 (portion).
    composite : bool
        Return ``mask y + (1 - mask) x`` (known voxels passed through).
    fill_prior : {"linear", "pull-push", "none"}
        gapnet only: predict a logit-space correction to :func:`line_fill` or
        :func:`pull_push_fill` ("none": predict the gap outright). Model directories written
        before this option hold ``true`` (pull-push) or ``false`` (none).
    prior_input : bool
        gapnet only: feed the prior-filled portion to the network instead of one with the gap
        zeroed (directories written before this option: ``false``).
    """

    arch: str = "gapnet"
    base_channels: int | None = None
    depth: int | None = None
    dilations: tuple[int, ...] | None = None
    in_channels: int | None = None
    composite: bool | None = None
    fill_prior: str | None = None
    prior_input: bool | None = None

    def __post_init__(self):
        arch = look_up_option(self.arch, ARCHS, name="architecture")
        for name, value in _ARCH_DEFAULTS[arch].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        object.__setattr__(self, "dilations", tuple(int(d) for d in self.dilations))
        if isinstance(self.fill_prior, bool):  # older model directories
            object.__setattr__(self, "fill_prior", "pull-push" if self.fill_prior else "none")
        object.__setattr__(self, "fill_prior", look_up_option(self.fill_prior, FILL_PRIORS, name="fill prior"))
        fixed = {"in_channels": _ARCH_DEFAULTS[arch]["in_channels"]}
        if arch == "masto2024":
            fixed.update(depth=4, fill_prior="none", prior_input=False)
        wrong = {k: getattr(self, k) for k, v in fixed.items() if getattr(self, k) != v}
        if (
            wrong
            or self.depth < 1
            or not self.dilations
            or min(self.dilations) < 1
            or self.base_channels < len(self.dilations)
        ):
            raise InputError(
                f"invalid {arch} config (needs {fixed}, depth >= 1, dilations >= 1 and "
                f"base_channels >= len(dilations)); got {self}."
            )

    def to_dict(self) -> dict:
        return {
            "arch": self.arch,
            "base_channels": self.base_channels,
            "depth": self.depth,
            "dilations": list(self.dilations),
            "in_channels": self.in_channels,
            "composite": self.composite,
            "fill_prior": self.fill_prior,
            "prior_input": self.prior_input,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "BcdiNetConfig":
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if known.get("dilations") is not None:
            known["dilations"] = tuple(known["dilations"])
        if "fill_prior" in known and "prior_input" not in known:  # written before prior_input existed
            known["prior_input"] = False
        return cls(**known)


def _same_conv(in_channels: int, out_channels: int, kernel: int, dilation: int = 1) -> nn.Module:
    """3D convolution with 'same' padding; even spans padded one more at the end (as Keras)."""
    span = dilation * (kernel - 1)
    if span % 2 == 0:
        return nn.Conv3d(in_channels, out_channels, kernel, padding=span // 2, dilation=dilation)
    before, after = span // 2, span - span // 2
    return nn.Sequential(
        nn.ConstantPad3d((before, after) * 3, 0.0),
        nn.Conv3d(in_channels, out_channels, kernel, dilation=dilation),
    )


class DilatedBlock(nn.Module):
    """Parallel dilated convolutions, concatenated (after the input itself if ``keep_input``)."""

    def __init__(self, in_channels, out_channels, dilations, *, kernel=3, keep_input=False):
        super().__init__()
        n = len(dilations)
        widths = [out_channels // n + (k < out_channels % n) for k in range(n)]
        self.keep_input = keep_input
        self.branches = nn.ModuleList(
            _same_conv(in_channels, w, kernel, d) for w, d in zip(widths, dilations)
        )
        self.out_channels = out_channels + (in_channels if keep_input else 0)

    def forward(self, x):
        outputs = [branch(x) for branch in self.branches]
        return torch.cat([x, *outputs] if self.keep_input else outputs, dim=1)


def pull_push_fill(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown voxels by pull-push interpolation [2]_ (parameter-free, 2D or 3D).

    Pull: average ``x known`` and ``known`` down a 2x pyramid to one voxel. Push: from the
    coarsest level up, ``fill = mean(x known) + (1 - mean(known)) upsample(coarser fill)``,
    with (bi/tri)linear upsampling, so each voxel keeps its known value and a gap takes a
    smooth blend of its surroundings at the scale where they are known.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, H, W) or (B, C, D, H, W)
        Values (any on unknown voxels).
    known : torch.Tensor, same shape, float
        1 where ``x`` is known, 0 elsewhere.

    Returns
    -------
    torch.Tensor, shape of ``x``
        ``x`` on known voxels, a convex blend of known values elsewhere (0 if none is known).
    """
    pool = F.avg_pool3d if x.dim() == 5 else F.avg_pool2d
    mode = "trilinear" if x.dim() == 5 else "bilinear"
    sums, weights = [x * known], [known]
    while max(sums[-1].shape[2:]) > 1:
        kernel = [2 if n > 1 else 1 for n in sums[-1].shape[2:]]  # axes already at 1 voxel stay
        sums.append(pool(sums[-1], kernel, ceil_mode=True))
        weights.append(pool(weights[-1], kernel, ceil_mode=True))
    fill = sums[-1] / weights[-1].clamp_min(1e-12)
    for total, weight in zip(reversed(sums[:-1]), reversed(weights[:-1])):
        coarse = F.interpolate(fill, size=total.shape[2:], mode=mode, align_corners=False)
        fill = total + (1 - weight) * coarse
    return fill


def _running(a: torch.Tensor, axis: int, op, *, reverse: bool = False) -> torch.Tensor:
    """Inclusive running ``op`` (``torch.maximum`` or ``torch.minimum``) along ``axis``.

    Doubling scan: ``ceil(log2 n)`` whole-tensor steps, each combining every element with
    the one ``2^k`` before it (after it with ``reverse``). On CPU this is several times faster
    than ``torch.cummax``, which also tracks indices and walks the axis element by element.
    """
    n, shift = a.shape[axis], 1
    while shift < n:
        out = a.clone()
        early, late = a.narrow(axis, 0, n - shift), a.narrow(axis, shift, n - shift)
        target = out.narrow(axis, 0, n - shift) if reverse else out.narrow(axis, shift, n - shift)
        op(early, late, out=target)
        a, shift = out, 2 * shift
    return a


def line_fill(x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Fill unknown voxels by linear interpolation across the gap (batched, 2D or 3D).

    The torch counterpart of :func:`rayproc.bcdi.baselines.interpolate_gaps` (``"linear"``)
    in one pass: each unknown voxel takes the straight line between the known voxels that
    bound its run of unknown voxels along one axis, choosing the axis with the shortest
    bounded run (across a plane gap, the axis normal to it). Voxels with no bounded run (where
    gaps cross, or a gap meets the array's edge) are filled by :func:`pull_push_fill` from
    everything known or interpolated.

    Parameters
    ----------
    x : torch.Tensor, shape (B, C, H, W) or (B, C, D, H, W)
        Values (any on unknown voxels).
    known : torch.Tensor, same shape, float
        1 where ``x`` is known, 0 elsewhere.

    Returns
    -------
    torch.Tensor, shape of ``x``
        ``x`` on known voxels, interpolated values elsewhere.

    Examples
    --------
    >>> x = torch.tensor([[[[0.0, 1.0, 9.0, 9.0, 4.0, 5.0]]]])  # (B, C, H, W)
    >>> line_fill(x, (x < 9).float()).tolist()
    [[[[0.0, 1.0, 2.0, 3.0, 4.0, 5.0]]]]
    """
    is_known = known > 0.5
    best_length = torch.full_like(x, float("inf"))
    value = x * known
    for axis in range(2, x.dim()):
        n = x.shape[axis]
        shape = [1] * x.dim()
        shape[axis] = n
        index = torch.arange(n, device=x.device, dtype=torch.int32).view(shape)
        before = _running(torch.where(is_known, index, -1), axis, torch.maximum)  # last known index <= i
        after = _running(torch.where(is_known, index, n), axis, torch.minimum, reverse=True)  # first known >= i
        length = (after - before).to(x.dtype)
        bounded = ~is_known & (before >= 0) & (after < n) & (length < best_length)
        left = x.gather(axis, before.clamp(min=0).long())
        right = x.gather(axis, after.clamp(max=n - 1).long())
        line = left + (index - before).to(x.dtype) / length.clamp_min(1) * (right - left)
        value = torch.where(bounded, line, value)
        best_length = torch.where(bounded, length, best_length)
    filled = is_known | torch.isfinite(best_length)
    return pull_push_fill(value, filled.to(x.dtype))


class _BcdiNet(nn.Module):
    """Shared forward: zero the gap, run the body, squash, optionally composite."""

    def __init__(self, config: BcdiNetConfig):
        super().__init__()
        self.config = config

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        factor = 2**self.config.depth
        if x.dim() != 5 or x.shape[1] != 1 or x.shape != mask.shape or any(
            s % factor for s in x.shape[2:]
        ):
            raise InputError(
                f"expected x and mask of one (B, 1, D, H, W) shape with D, H, W multiples of "
                f"{factor}; got {tuple(x.shape)} and {tuple(mask.shape)} instead."
            )
        mask = mask.to(x.dtype)
        gapped = x * (1 - mask)
        y = self.predict(gapped, mask)
        return mask * y + (1 - mask) * gapped if self.config.composite else y


class Masto2024Net(_BcdiNet):
    """The published inpainting U-Net of [1]_ (see the module docstring)."""

    def __init__(self, config: BcdiNetConfig):
        super().__init__(config)
        b = config.base_channels

        def scaled(width: int) -> int:
            return max(1, round(width * b / 32))

        block1 = DilatedBlock(1, b, config.dilations, keep_input=True)
        block2 = DilatedBlock(
            block1.out_channels, 2 * b, _MASTO_LEVEL2_DILATIONS, kernel=2, keep_input=True
        )
        skips = [block1.out_channels, block2.out_channels, 4 * b, 8 * b]
        self.encoder = nn.ModuleList(
            nn.Sequential(layer, nn.MaxPool3d(2), nn.LeakyReLU(_SLOPE))
            for layer in (
                block1, block2, _same_conv(skips[1], 4 * b, 2), _same_conv(4 * b, 8 * b, 2)
            )
        )
        widths = [scaled(w) for w in _MASTO_DECODER_WIDTHS]
        inputs = [skips[3]] + [w + s for w, s in zip(widths[:-1], skips[2::-1])]
        self.decoder = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose3d(i, w, 2),  # stride 1; cropped back to 'same' in forward
                nn.Upsample(scale_factor=2, mode="nearest"),
                nn.LeakyReLU(_SLOPE),
            )
            for i, w in zip(inputs, widths)
        )
        head, previous = [], widths[-1]
        for width, kernel in _MASTO_HEAD:
            head += [_same_conv(previous, scaled(width), kernel), nn.LeakyReLU(_SLOPE)]
            previous = scaled(width)
        self.head = nn.Sequential(*head, nn.Conv3d(previous, 1, 1))

    def predict(self, gapped, mask):
        skips, h = [], gapped
        for block in self.encoder:
            h = block(h)
            skips.append(h)
        for k, (transpose, upsample, activation) in enumerate(self.decoder):
            if k:
                h = torch.cat([h, skips[-1 - k]], dim=1)
            size = h.shape[2:]
            h = activation(upsample(transpose(h)[..., : size[0], : size[1], : size[2]]))
        return torch.sigmoid(1.5 * self.head(h))


class GapNet(_BcdiNet):
    """Mask-aware dilated U-Net predicting a correction to a parameter-free fill (module docstring)."""

    def __init__(self, config: BcdiNetConfig):
        super().__init__(config)
        widths = [config.base_channels * 2**level for level in range(config.depth + 1)]
        inputs = [config.in_channels] + widths[:-1]
        self.encoder = nn.ModuleList(
            nn.Sequential(DilatedBlock(i, w, config.dilations), nn.LeakyReLU(_SLOPE))
            for i, w in zip(inputs, widths)
        )
        self.up = nn.ModuleList(
            nn.Sequential(
                nn.ConvTranspose3d(widths[k + 1], widths[k], 2, stride=2), nn.LeakyReLU(_SLOPE)
            )
            for k in range(config.depth)
        )
        self.fuse = nn.ModuleList(
            nn.Sequential(nn.Conv3d(2 * w, w, 3, padding=1), nn.LeakyReLU(_SLOPE))
            for w in widths[:-1]
        )
        self.head = nn.Conv3d(widths[0], 1, 1)
        # Start as the plain fill (or 0.5 without it); training learns the correction.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def predict(self, gapped, mask):
        prior = None
        if self.config.fill_prior != "none":
            fill = line_fill if self.config.fill_prior == "linear" else pull_push_fill
            prior = fill(gapped, 1 - mask)
        skips, h = [], torch.cat([prior if self.config.prior_input else gapped, mask], dim=1)
        for level, block in enumerate(self.encoder):
            if level:
                h = F.max_pool3d(h, 2)
            h = block(h)
            skips.append(h)
        for level in reversed(range(self.config.depth)):
            h = self.fuse[level](torch.cat([self.up[level](h), skips[level]], dim=1))
        logits = self.head(h)
        if prior is not None:
            logits = logits + torch.logit(prior, eps=1e-3)
        return torch.sigmoid(logits)


def build_bcdi_net(config: BcdiNetConfig | dict | None = None) -> nn.Module:
    """Build the network a :class:`BcdiNetConfig` (or its dict) describes.

    Parameters
    ----------
    config : BcdiNetConfig or dict, optional
        Defaults to ``BcdiNetConfig()`` (gapnet).

    Returns
    -------
    torch.nn.Module
        ``model(x, mask)``: x, mask of shape (B, 1, D, H, W) (D, H, W multiples of
        ``2**depth``) -> inpainted portion of the same shape in [0, 1]. ``model.config`` holds
        the config.

    Examples
    --------
    >>> model = build_bcdi_net({"arch": "gapnet", "base_channels": 4, "depth": 2})
    >>> tuple(model(torch.zeros(1, 1, 8, 8, 8), torch.zeros(1, 1, 8, 8, 8)).shape)
    (1, 1, 8, 8, 8)
    """
    if config is None:
        config = BcdiNetConfig()
    elif isinstance(config, dict):
        config = BcdiNetConfig.from_dict(config)
    return {"gapnet": GapNet, "masto2024": Masto2024Net}[config.arch](config)


def count_parameters(model: nn.Module) -> int:
    """Number of scalar parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())


def flops_per_portion(model: nn.Module, size: int = 32) -> int:
    """Floating-point operations of one forward pass on one ``size``^3 portion.

    Counts the multiply-adds (MACs) of every convolution and transposed convolution with
    forward hooks and reports FLOPs = 2 MACs. A convolution costs ``out.numel() (C_in /
    groups) prod(kernel)`` MACs, a transposed one ``in.numel() (C_out / groups)
    prod(kernel)``. Biases, activations, pooling, upsampling, the fill prior and the
    composite are not counted (together well under 1 % here).

    Parameters
    ----------
    model : torch.nn.Module
        A network called as ``model(x, mask)`` on (1, 1, size, size, size) tensors.
    size : int, optional
        Portion edge length.

    Returns
    -------
    int
        FLOPs (2 x MACs).
    """
    macs = 0

    def count(module, inputs, output):
        nonlocal macs
        kernel = 1
        for k in module.kernel_size:
            kernel *= k
        if module.transposed:
            macs += inputs[0].numel() * module.out_channels // module.groups * kernel
        else:
            macs += output.numel() * module.in_channels // module.groups * kernel

    convolutions = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
    convolutions += (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, convolutions)]
    parameter = next(model.parameters())
    x = torch.zeros(1, 1, size, size, size, dtype=parameter.dtype, device=parameter.device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x, torch.zeros_like(x))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return 2 * macs


__all__ = [
    "ARCHS",
    "BcdiNetConfig",
    "DilatedBlock",
    "GapNet",
    "Masto2024Net",
    "build_bcdi_net",
    "count_parameters",
    "flops_per_portion",
    "line_fill",
    "pull_push_fill",
]
