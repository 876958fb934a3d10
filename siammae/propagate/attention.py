"""Which attention computation a frozen encoder's forward pass uses during feature extraction.

timm's attention modules either call PyTorch's fused ``scaled_dot_product_attention`` (``fused_attn``
True, the default) or write attention out as ``softmax(q k^T / sqrt(d)) v`` with two batched matmuls.
On the GPU the fused kernels win, and on a CPU with AMX too (bf16 matmuls there run ~9x the fp32 rate
and the fused kernel uses them: ViT-S/16 at 480x848 in 186 ms a frame fused, 283 ms written out). On
a CPU with AVX512-BF16 but no AMX they do not: there PyTorch's fused CPU attention ran no faster in
bf16 than in fp32, while bf16 matmuls run at about twice the fp32 rate, so the written-out form made
the bf16 forward faster at the same tokens (figures: docs/benchmarks.md, "CPU precision"). Where the
bf16 matmuls are not faster than fp32 ones (a Xeon whose AMX the hypervisor hides), neither is the
written-out form.

The written-out form holds a (heads, N, N) score matrix per block (30 MB at 1591 tokens in bf16), and
that only pays if the memory is reused: glibc hands out each such block as a fresh ``mmap`` and
returns it on free, so every forward touched new pages and ran slower than the fused one.
:func:`siammae.allocator.keep_freed_memory` makes the allocator keep freed memory for reuse instead
(no page faults after the first frame).

So on a CPU in bf16 without AMX, where bf16 matmuls pay (:func:`written_out_pays`), the feature
extractor switches the encoder's attention modules to the written-out form while its score matrices
stay under :data:`SCORES_LIMIT`; everything else keeps the fused kernel.
"""

from __future__ import annotations

import contextlib

import torch

from siammae.models.layers import set_fused_attention
from siammae.propagate import cpu

# Bytes of one forward pass's score matrices (batch x heads x N x N bf16) up to which the written-out
# attention is used: ViT-S/16 and ViT-B/16 at 480p (30 / 61 MB); ViT-S/8 at 480p (485 MB) stays fused.
SCORES_LIMIT = 64 * 2**20


def attention_heads(encoder: torch.nn.Module) -> int:
    """Heads of the encoder's attention (timm's modules with a ``fused_attn`` flag); 0 without any."""
    heads = (int(m.num_heads) for m in encoder.modules() if hasattr(m, "fused_attn") and hasattr(m, "num_heads"))
    return next(heads, 0)


def written_out_pays(device: torch.device, precision: str, batch: int, tokens: int, heads: int) -> bool:
    """Whether the written-out attention beats the fused kernel for ``batch`` frames of ``tokens``
    tokens: on a CPU in bf16 without AMX whose bf16 matmuls beat its fp32 ones (where they do not, as on
    a Xeon with AMX hidden, the fused kernel was the faster bf16 form: 0.95 vs 1.05 s a 480p frame), with
    the score matrices of one block within :data:`SCORES_LIMIT`."""
    scores = batch * heads * tokens * tokens * 2
    if torch.device(device).type != "cpu" or precision != "bf16" or not 0 < scores <= SCORES_LIMIT:
        return False
    return not cpu.has_amx() and cpu.bf16_pays()  # measured on first use: only where bf16 runs on a CPU


@contextlib.contextmanager
def written_out(encoder: torch.nn.Module, enabled: bool = True):
    """Inside the block, every attention module of ``encoder`` computes attention written out (when
    ``enabled``); each gets its own setting back afterwards."""
    if not enabled:
        yield
        return
    before = [(m, m.fused_attn) for m in encoder.modules() if hasattr(m, "fused_attn")]
    set_fused_attention(encoder, False)
    try:
        yield
    finally:
        for m, fused in before:
            m.fused_attn = fused
