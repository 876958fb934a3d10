"""Pixel conventions shared by training, pictures and propagation.

Batches travel as uint8 (cheap to move, ~4x less host memory) and are normalised on the device.
Every image tensor here has its channel dimension at -3: (..., 3, H, W).
"""

import torch

from siammae.data import IMAGENET_MEAN, IMAGENET_STD


def _stats(x: torch.Tensor, dtype):
    shape = (3, 1, 1)
    mean = torch.tensor(IMAGENET_MEAN, device=x.device, dtype=dtype).view(shape)
    std = torch.tensor(IMAGENET_STD, device=x.device, dtype=dtype).view(shape)
    return mean, std


def normalize(x: torch.Tensor) -> torch.Tensor:
    """uint8 (..., 3, H, W) in [0, 255] -> float32 normalised with ImageNet mean/std."""
    mean, std = _stats(x, torch.float32)
    return (x.float() / 255.0 - mean) / std


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`: float (..., 3, H, W) -> uint8, clamped."""
    mean, std = _stats(x, x.dtype)
    return ((x * std + mean) * 255.0).round().clamp(0, 255).to(torch.uint8)
