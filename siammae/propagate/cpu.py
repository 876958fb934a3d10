"""What this CPU multiplies natively, and how fast: the facts ``--precision auto``
(:mod:`siammae.propagate.precision`) and the form of attention (:mod:`siammae.propagate.attention`) are
decided from.

The CPU's flags are not enough on their own. AMX tiles multiply bf16 at 6-9x the fp32 rate and
AVX512-BF16 alone at about 2x (docs/benchmarks.md, "CPU precision"), but a Xeon whose AMX tiles a
virtual machine hides still reports AVX512-BF16, and there its bf16 matmuls ran at half the fp32 rate
and the bf16 forward pass 1.6x slower than the fp32 one. So :func:`bf16_pays` times the two formats.
"""

from __future__ import annotations

import functools
import time

import torch

# bf16 over fp32 matmul speed from which bf16 pays on a CPU. Measured: AMX 6-9x (forward pass 3.5x);
# AVX512-BF16 alone 2.2x (forward 1.2-1.6x); AVX512-BF16 with AMX hidden 0.5-0.7x (forward 0.6x).
# Below ~1.5x the matmuls' gain no longer pays for the casts and for the softmax, LayerNorm and GELU,
# which run in fp32 or at the vector units' rate either way.
BF16_PAYS = 1.5


def has(precision: str) -> bool:
    """Native bf16 / fp16 matmuls on this CPU (AVX512-BF16 or AMX tiles; AMX-FP16)."""
    probes = {"bf16": ("_is_avx512_bf16_supported", "_is_amx_tile_supported"), "fp16": ("_is_amx_fp16_supported",)}
    return any(getattr(torch.cpu, probe, lambda: False)() for probe in probes[precision])


def has_amx() -> bool:
    """AMX tiles: bf16 matmuls at several times the AVX512-BF16 rate (the fused attention kernel uses them)."""
    return bool(getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)())


@functools.lru_cache(maxsize=None)
def bf16_speedup() -> float:
    """bf16 over fp32 matmul speed on this CPU with the current threads, measured once per process at
    the shape of a ViT-S/16 MLP layer over a 480p frame ((1591, 384) x (384, 1536), 1.9 GFLOP): the
    best of 5 timings each after 2 warm-ups (oneDNN compiles its kernels on first use); 0.1-0.3 s."""
    x, w = torch.randn(1591, 384), torch.randn(1536, 384)
    best = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = x.to(dtype), w.to(dtype)
        seconds = []
        for _ in range(7):
            start = time.perf_counter()
            torch.nn.functional.linear(a, b)
            seconds.append(time.perf_counter() - start)
        best[dtype] = min(seconds[2:])
    return best[torch.float32] / best[torch.bfloat16]


def bf16_pays() -> bool:
    """Native bf16 whose matmuls measure at least :data:`BF16_PAYS` x the fp32 rate on this CPU."""
    return has("bf16") and bf16_speedup() >= BF16_PAYS
