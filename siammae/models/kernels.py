"""Which SDPA kernel runs the attention: a context manager restricting it to one, and the check at the
start of a run that the kernel asked for runs on the device for the run's precision."""

from __future__ import annotations

import contextlib

import torch

from siammae.errors import SiammaeError

_SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "math": "MATH"}


def sdpa_backend(name: str):
    """Context manager restricting SDPA to one kernel, on any device; ``auto`` leaves the choice to
    PyTorch, which picks FlashAttention for fp16/bf16 inputs on CUDA when it can. Whether the kernel
    runs where the model runs is checked once, at start, by :func:`check_sdpa_backend`."""
    if name == "auto":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, _SDPA_BACKENDS[name])])


class AttentionKernelError(SiammaeError):
    """The SDPA kernel asked for cannot run here."""


def check_sdpa_backend(name: str, device: torch.device, dtype: torch.dtype, head_dim: int = 64) -> None:
    """Raise :class:`AttentionKernelError` before any work when the kernel ``name`` cannot run on
    ``device`` for ``dtype`` inputs (one tiny attention call under it; e.g. FlashAttention needs
    fp16/bf16 and a recent GPU, and the CPU has no memory-efficient kernel). ``auto`` always runs."""
    if name == "auto":
        return
    q = torch.randn(1, 2, 8, head_dim, device=device, dtype=dtype)
    try:
        with sdpa_backend(name):
            torch.nn.functional.scaled_dot_product_attention(q, q, q)
    except RuntimeError as e:
        where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type.upper()
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise AttentionKernelError(
            f"model.sdpa_backend={name}: PyTorch has no such attention kernel for {str(dtype).replace('torch.', '')} "
            f"inputs on {where} ({reason}); use auto (PyTorch picks the fastest that runs) or another backend"
        ) from None
