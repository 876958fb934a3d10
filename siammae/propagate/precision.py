"""Which number format the encoder's forward pass runs in during propagation (``--precision``).

The ViT forward runs in it (on a GPU under ``torch.autocast``; on a CPU in bf16 through a bf16 copy of
the encoder: :mod:`siammae.propagate.features`) and the context keeps its features in it; the tokens,
the similarities, the top-k and the soft labels are fp32 whatever the precision.

``auto``, the default (:data:`DEFAULT`), picks bf16 where the hardware multiplies bf16 natively and
faster: a CUDA GPU with bf16 support, or a CPU with AVX512-BF16 or AMX whose bf16 matmuls measure at
least 1.5x its fp32 rate (:mod:`siammae.propagate.cpu`: not every CPU with the flag does), where the
forward pass ran 1.2-3.5x faster than in fp32 and J&F moved by less than 0.005 (docs/benchmarks.md,
"Against DINO's script"); fp16 on a CUDA GPU without bf16; fp32 elsewhere. :func:`reason` says which
and why. ``fp32`` reproduces the reference scorers' numbers exactly. Asking for a format the device
cannot compute natively is an error rather than a silent emulation many times slower than fp32.
"""

from __future__ import annotations

import contextlib

import torch

from siammae.errors import SiammaeError
from siammae.propagate import cpu

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
DEFAULT = "auto"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class PrecisionError(SiammaeError):
    """A precision the device cannot compute natively; one line for the user."""


def native(precision: str, device: torch.device) -> bool:
    """Whether ``device`` computes ``precision`` (bf16 / fp16) natively."""
    if device.type == "cuda":
        return precision == "fp16" or torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu.has(precision)


def native_precisions(device) -> list:
    """fp32 and each reduced precision ``device`` computes natively, e.g. ["fp32", "bf16", "fp16"] on a
    recent GPU, ["fp32"] on a CPU without AVX512-BF16 / AMX: what a benchmark can compare there."""
    device = torch.device(device)
    return ["fp32"] + [p for p in ("bf16", "fp16") if native(p, device)]


def resolve_precision(precision: str, device) -> str:
    """``precision`` (one of :data:`PRECISIONS`) on ``device`` -> fp32, bf16 or fp16."""
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise PrecisionError(f"precision '{precision}': choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cpu":
            return "bf16" if cpu.bf16_pays() else "fp32"
        if device.type == "cuda":
            return next((p for p in ("bf16", "fp16") if native(p, device)), "fp32")
        return "fp32"
    if precision != "fp32" and not native(precision, device):
        raise PrecisionError(
            f"precision {precision}: {device.type} device '{device}' has no native {precision} "
            f"matmul (it would run emulated, slower than fp32); use fp32 or auto"
        )
    return precision


def reason(requested: str, device) -> str:
    """Why ``requested`` runs as what :func:`resolve_precision` makes of it on ``device``, in words for
    the user, e.g. "fp32 (auto: bf16 matmuls run 0.6x the fp32 rate on this CPU, under the 1.5x that pays for bf16)"."""
    device = torch.device(device)
    chosen = resolve_precision(requested, device)
    if requested != "auto":
        return chosen
    if device.type == "cpu" and cpu.has("bf16"):
        speed = f"bf16 matmuls run {cpu.bf16_speedup():.1f}x the fp32 rate on this CPU"
        if chosen == "bf16":
            return f"bf16 (auto: {speed}; --precision fp32 for exact reproduction)"
        return f"fp32 (auto: {speed}, under the {cpu.BF16_PAYS}x that pays for bf16)"
    if chosen != "fp32":
        return f"{chosen} (auto: native on this {device.type.upper()}; --precision fp32 for exact reproduction)"
    if device.type == "cpu":
        return "fp32 (auto: this CPU has no AVX512-BF16 or AMX, bf16 would run emulated, slower than fp32)"
    return f"fp32 (auto: {device.type} device '{device}' has no native bf16 or fp16)"


def autocast(precision: str, device: torch.device):
    """The context the forward pass runs in: autocast to bf16/fp16, or nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=DTYPES[precision])
