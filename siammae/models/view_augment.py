"""CMAE's augmentations of the target view, on the device, batched, each sample drawing its own.

CMAE's public pre-training code makes the target view of an image by a pixel shift (here
``data.view_shift``, in the loader), then colour jitter (brightness, contrast and saturation factors
in [0.6, 1.4], a hue shift in [-0.1, 0.1] of the hue circle; applied with probability 0.8), grayscale
(probability 0.2, three equal channels) and a Gaussian blur (probability 0.5, sigma uniform in
[0.1, 2.0] pixels). Here the jitter's four operations run in that fixed order (torchvision shuffles
them per image). Random numbers come from torch's generator on the frames' device, so a run's seed
fixes them (and a resumed run, which restores the RNG states, continues them).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from siammae.data import IMAGENET_MEAN, IMAGENET_STD

GREY = (0.2989, 0.587, 0.114)  # RGB weights of the grayscale (as the public code's, in RGB order)


@dataclass(frozen=True)
class TargetAugment:
    """The augmentation's settings (CMAE's public values by default)."""

    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    grey_p: float = 0.2
    blur_p: float = 0.5
    blur_sigma: tuple = (0.1, 2.0)


def _uniform(n: int, lo: float, hi: float, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(n, 1, 1, 1, device=like.device, dtype=like.dtype).uniform_(lo, hi)


def _chance(n: int, p: float, like: torch.Tensor) -> torch.Tensor:
    return (torch.rand(n, 1, 1, 1, device=like.device) < p).to(like.dtype)


def grey(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 1, H, W) luma."""
    w = torch.tensor(GREY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by ``shift`` (B, 1, 1, 1) turns: RGB -> HSV, h + shift mod 1, -> RGB."""
    r, g, b = x.unbind(dim=1)
    top, _ = x.max(dim=1)
    bottom, _ = x.min(dim=1)
    span = top - bottom
    safe = torch.where(span > 0, span, torch.ones_like(span))
    h = torch.where(top == r, (g - b) / safe, torch.where(top == g, 2 + (b - r) / safe, 4 + (r - g) / safe))
    h = torch.where(span > 0, h / 6, torch.zeros_like(h))
    h = torch.remainder(h + shift[:, 0], 1.0)
    s = torch.where(top > 0, span / torch.where(top > 0, top, torch.ones_like(top)), torch.zeros_like(top))
    v = top
    k = lambda n: torch.remainder(n + h * 6, 6)  # noqa: E731
    f = lambda n: v - v * s * torch.clamp(torch.minimum(k(n), 4 - k(n)), 0, 1)  # noqa: E731
    return torch.stack([f(5), f(3), f(1)], dim=1)


def blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own ``sigma`` (B,) in pixels; reflect padding."""
    B, C, H, W = x.shape
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(t[None, :] ** 2) / (2 * sigma[:, None] ** 2))
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(C, dim=0)  # (B*C, K)
    y = x.reshape(1, B * C, H, W)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=B * C)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def augment_target(img: torch.Tensor, spec: TargetAugment = TargetAugment()) -> torch.Tensor:
    """The target view: ``img`` (B, 3, H, W) normalised with ImageNet's mean/std -> the same, jittered,
    greyed and blurred per sample as :class:`TargetAugment` says."""
    mean = torch.tensor(IMAGENET_MEAN, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=img.device, dtype=img.dtype).view(1, 3, 1, 1)
    x = (img * std + mean).clamp(0, 1)
    B = x.shape[0]
    jitter = _chance(B, spec.jitter_p, x)
    y = (x * _uniform(B, 1 - spec.brightness, 1 + spec.brightness, x)).clamp(0, 1)
    m = grey(y).mean(dim=(2, 3), keepdim=True)
    y = ((y - m) * _uniform(B, 1 - spec.contrast, 1 + spec.contrast, x) + m).clamp(0, 1)
    g = grey(y)
    y = ((y - g) * _uniform(B, 1 - spec.saturation, 1 + spec.saturation, x) + g).clamp(0, 1)
    y = shift_hue(y, _uniform(B, -spec.hue, spec.hue, x)).clamp(0, 1)
    x = jitter * y + (1 - jitter) * x
    greyed = _chance(B, spec.grey_p, x)
    x = greyed * grey(x).expand_as(x) + (1 - greyed) * x
    blurred = _chance(B, spec.blur_p, x)
    sigma = torch.empty(B, device=x.device, dtype=x.dtype).uniform_(*spec.blur_sigma)
    radius = max(1, min(int(3 * spec.blur_sigma[1] + 0.5), (min(x.shape[2:]) - 1) // 2))
    x = blurred * blur(x, sigma, radius) + (1 - blurred) * x
    return (x - mean) / std
