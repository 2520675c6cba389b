"""Image pre-processing of FFJORD's image flows, with its change of density (Sparse Flows §4.3).

What FFJORD's ``train_cnf.py`` and the released configurations (torchprune
``RandomNoise(normalization=255)``, ``LogitTransform(alpha=1e-6)``, ``NLLBitsLoss``) do to an
8-bit image before and after the CNF:

1. **Uniform dequantization** (:func:`dequantize`): a pixel value k ∈ {0, …, 255} becomes
   x = (k + u) / 256 with u ~ U[0, 1), a point of [0, 1).
2. **Random horizontal flips** of CIFAR-10 training images (:func:`random_hflip`).
3. **The logit transform** (:func:`logit_transform`): y = logit(α + (1 − 2α) x) with
   α = 1e-6, whose log-determinant Σ log|dy/dx| = Σ [log(1 − 2α) − log(s (1 − s))],
   s = α + (1 − 2α) x, is added to the CNF's log-density of y.
4. **Bits per dimension** (:func:`bits_per_dim_of_images`): with D = C·H·W and
   log p(x) = log p(y) + log-determinant, bits/dim = −(log p(x) / D − log 256) / log 2, the
   −log 256 per dimension accounting for the 8-bit quantization (FFJORD's
   ``compute_bits_per_dim``).

:func:`squeeze` / :func:`unsqueeze` are FFJORD's space-to-depth reshapes of the multiscale
architecture (``lib/layers/squeeze.py``: [C, rH, rW] ↔ [C r², H, W], same element order).

Example::

    x = dequantize(batch_uint8, generator=g)           # (N, C, H, W) in [0, 1)
    y, logdet = logit_transform(x)
    bits = bits_per_dim_of_images(log_prob_y + logdet, x[0].numel())
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "LOGIT_ALPHA",
    "bits_per_dim_of_images",
    "dequantize",
    "inverse_logit_transform",
    "logit_transform",
    "random_hflip",
    "squeeze",
    "unsqueeze",
]

#: α of the released logit transform (FFJORD's default).
LOGIT_ALPHA = 1e-6


def dequantize(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(k + u) / 256`` for uint8 pixel values k and u ~ U[0, 1) drawn per pixel, computed in
    float64 and returned as float32 below 1 (float32 rounding would otherwise reach 1.0, where
    the logit transform is infinite for α = 0)."""
    if images.dtype != torch.uint8:
        raise TypeError(f"dequantize expects uint8 images, got {images.dtype}")
    noise = torch.rand(images.shape, generator=generator, device=images.device, dtype=torch.float64)
    x = ((images.double() + noise) / 256.0).float()
    return x.clamp(max=1.0 - 2.0**-24)


def random_hflip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Flip each image of ``(N, C, H, W)`` left-right with probability 1/2 (the coin is drawn
    on the images' device, so a CUDA generator and CUDA-graph capture work)."""
    flip = torch.rand(images.shape[0], generator=generator, device=images.device) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def logit_transform(
    x: torch.Tensor, alpha: float = LOGIT_ALPHA
) -> tuple[torch.Tensor, torch.Tensor]:
    """``y = logit(α + (1 − 2α) x)`` and its log-determinant per sample (summed over all but
    the first dimension)."""
    s = alpha + (1 - 2 * alpha) * x
    y = torch.log(s) - torch.log1p(-s)
    logdet = math.log(1 - 2 * alpha) - torch.log(s) - torch.log1p(-s)
    return y, logdet.reshape(x.shape[0], -1).sum(dim=1)


def inverse_logit_transform(y: torch.Tensor, alpha: float = LOGIT_ALPHA) -> torch.Tensor:
    """``x = (sigmoid(y) − α) / (1 − 2α)``, the inverse of :func:`logit_transform`."""
    return (torch.sigmoid(y) - alpha) / (1 - 2 * alpha)


def bits_per_dim_of_images(log_prob_x: torch.Tensor, num_dims: int) -> torch.Tensor:
    """Bits per dimension of 8-bit images from the log-density of their dequantized values
    x ∈ [0, 1)^D (nats per image): ``−(log p(x) / D − log 256) / log 2``."""
    return -(log_prob_x / num_dims - math.log(256.0)) / math.log(2.0)


def squeeze(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Space to depth: ``(N, C, H·r, W·r) → (N, C·r², H, W)`` in FFJORD's element order."""
    n, c, h, w = x.shape
    if h % factor or w % factor:
        raise ValueError(
            f"squeeze by {factor} needs a height and width divisible by it, got {h}×{w}"
        )
    view = x.reshape(n, c, h // factor, factor, w // factor, factor)
    return view.permute(0, 1, 3, 5, 2, 4).reshape(n, c * factor**2, h // factor, w // factor)


def unsqueeze(x: torch.Tensor, factor: int = 2) -> torch.Tensor:
    """Depth to space, the inverse of :func:`squeeze`: ``(N, C·r², H, W) → (N, C, H·r, W·r)``."""
    n, c, h, w = x.shape
    if c % factor**2:
        raise ValueError(f"unsqueeze by {factor} needs channels divisible by {factor**2}, got {c}")
    view = x.reshape(n, c // factor**2, factor, factor, h, w)
    return view.permute(0, 1, 4, 2, 5, 3).reshape(n, c // factor**2, h * factor, w * factor)
