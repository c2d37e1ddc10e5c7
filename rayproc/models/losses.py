"""Image-comparison losses in pure torch, for 2D (B, C, H, W) and 3D (B, C, D, H, W) batches.

The BCDI inpainting loss of Masto et al. [1]_ adds a mean absolute error, a structural
dissimilarity (1 - SSIM [2]_) and a mean absolute error of spatial gradients, all on the
composite image (prediction inside the gap, ground truth outside).

References
----------
.. [1] M. Masto, V. Favre-Nicolin, S. Leake, T. Schülli, M.-I. Richard and E. Bellec,
   "Patching-based deep-learning model for the inpainting of Bragg coherent diffraction
   patterns affected by detector gaps", J. Appl. Cryst. 57 (2024).
   :doi:`10.1107/S1600576724004163`
.. [2] Z. Wang, A. C. Bovik, H. R. Sheikh and E. P. Simoncelli, "Image quality assessment:
   from error visibility to structural similarity", IEEE Trans. Image Process. 13 (2004)
   600-612. :doi:`10.1109/TIP.2003.819861`
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayproc.errors import InputError


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> int:
    """Return the number of spatial dimensions (2 or 3) of two same-shape batches."""
    if a.shape != b.shape or a.dim() not in (4, 5):
        raise InputError(
            "expected two (B, C, H, W) or (B, C, D, H, W) tensors of one shape; got "
            f"{tuple(a.shape)} and {tuple(b.shape)} instead."
        )
    return a.dim() - 2


def _gaussian_window(sigma: float, radius: int, like: torch.Tensor) -> torch.Tensor:
    offsets = torch.arange(-radius, radius + 1, dtype=like.dtype, device=like.device)
    weights = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return weights / weights.sum()


def ssim(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    sigma: float = 1.5,
    radius: int = 3,
    data_range: float = 1.0,
    k1: float = 0.01,
    k2: float = 0.03,
) -> torch.Tensor:
    """Structural similarity [2]_ of two 2D or 3D batches, averaged to a scalar.

    Local means, variances and the covariance come from a separable Gaussian window (valid
    part only, no padding), as in [2]_, extended to 3D.

    Parameters
    ----------
    a, b : torch.Tensor, shape (B, C, H, W) or (B, C, D, H, W)
        Images to compare; each spatial size must be at least ``2 radius + 1``.
    sigma : float, optional
        Standard deviation of the Gaussian window in voxels.
    radius : int, optional
        Half-width of the window (7 taps by default).
    data_range : float, optional
        Range of the values (1 for images in [0, 1]).
    k1, k2 : float, optional
        Stabilising constants: ``C1 = (k1 data_range)^2``, ``C2 = (k2 data_range)^2``.

    Returns
    -------
    torch.Tensor, shape ()
        Mean SSIM over batch, channels and window positions; 1 for identical images.
    """
    spatial = _check_pair(a, b)
    if min(a.shape[2:]) < 2 * radius + 1:
        raise InputError(
            f"SSIM needs spatial sizes >= {2 * radius + 1}; got {tuple(a.shape)} instead."
        )
    channels = a.shape[1]
    window = _gaussian_window(sigma, radius, a)
    conv = (F.conv2d, F.conv3d)[spatial - 2]
    # Smooth the five moment maps in one depthwise pass per axis.
    maps = torch.cat([a, b, a * a, b * b, a * b], dim=1)
    for axis in range(spatial):
        shape = [1] * spatial
        shape[axis] = window.numel()
        kernel = window.reshape(1, 1, *shape).expand(5 * channels, 1, *shape)
        maps = conv(maps, kernel, groups=5 * channels)
    mu_a, mu_b, aa, bb, ab = maps.split(channels, dim=1)
    var_a, var_b, cov = aa - mu_a * mu_a, bb - mu_b * mu_b, ab - mu_a * mu_b
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a * mu_a + mu_b * mu_b + c1) * (var_a + var_b + c2)
    )
    return index.mean()


ssim3d = ssim  # the BCDI name; the same function serves 2D batches


def gradient_l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of forward finite differences, averaged over spatial axes.

    Parameters
    ----------
    a, b : torch.Tensor, shape (B, C, H, W) or (B, C, D, H, W)

    Returns
    -------
    torch.Tensor, shape ()
        ``mean_k mean |d_k a - d_k b|`` over the spatial axes ``k``; 0 when ``a - b`` is
        constant.
    """
    spatial = _check_pair(a, b)
    difference = a - b
    terms = [difference.diff(dim=axis).abs().mean() for axis in range(2, 2 + spatial)]
    return torch.stack(terms).mean()


def inpainting_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """BCDI inpainting loss of [1]_: MAE + (1 - SSIM) + gradient MAE on the composite.

    The composite ``mask pred + (1 - mask) target`` keeps the prediction inside the gap only,
    so the loss measures in-gap errors and how smoothly the gap joins its surroundings.

    Parameters
    ----------
    pred, target : torch.Tensor, shape (B, C, H, W) or (B, C, D, H, W)
        Prediction and ground truth, normalised to [0, 1].
    mask : torch.Tensor, same shape (bool or float)
        1 inside the gap.

    Returns
    -------
    torch.Tensor, shape ()
        0 for a perfect prediction.

    Notes
    -----
    The authors' code computes the SSIM slice by slice in 2D with an 11-tap window and the
    gradient term over six (partly cross-axis) differences; here both are 3D (see
    :func:`ssim`, :func:`gradient_l1`).
    """
    _check_pair(pred, target)
    mask = mask.to(pred.dtype)
    composite = mask * pred + (1 - mask) * target
    return (
        (composite - target).abs().mean()
        + (1 - ssim(composite, target))
        + gradient_l1(composite, target)
    )


__all__ = ["gradient_l1", "inpainting_loss", "ssim", "ssim3d"]
