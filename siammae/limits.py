"""The machine's limits that the benchmarks under ``tools/`` report their figures against.

A speed means little without the hardware's own ceiling beside it: "0.2 frames/s" can be 30% or 90%
of what the cores can do. Two measurements give that ceiling for compute-bound work:

- :func:`matmul_peak`: FLOP/s of a large square matmul in a number format, on the threads the
  benchmark uses, best of a few tries (the fastest the BLAS gets on this machine right now);
- :func:`count_flops`: the FLOPs of a piece of work (a forward pass, a training step), counted by
  PyTorch's ``FlopCounterMode`` with attention written out as two matmuls, since the counter does not
  see inside the fused CPU attention kernel (the FLOPs are the same either way).

A figure's fraction of the limit is then ``flops / seconds / peak`` (:class:`Limit`). Work bound by
memory or decoding (the loader, sharding) is measured against its own floor instead (the tar + JPEG
decode floor, the bare video decode), which those benchmarks measure in the same run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from siammae.propagate.attention import written_out

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(precision: str = "fp32", device="cpu", sizes=(2048, 4096), repeats: int = 4) -> float:
    """Measured FLOP/s of an n x n x n matmul in ``precision`` (fp32, bf16, fp16) on ``device`` with
    the current threads: the best over ``sizes`` and ``repeats`` (each size warmed up once)."""
    device = torch.device(device)
    dtype = DTYPES[precision]
    best = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device).to(dtype)
        b = torch.randn(n, n, device=device).to(dtype)
        torch.mm(a, b)
        _sync(device)
        for _ in range(repeats):
            start = time.perf_counter()
            torch.mm(a, b)
            _sync(device)
            best = max(best, 2 * n**3 / (time.perf_counter() - start))
    return best


def count_flops(fn, *modules: torch.nn.Module) -> int:
    """FLOPs of ``fn()`` (forward, and backward if ``fn`` runs it), with every attention module of
    ``modules`` written out as matmuls while counting (their own setting is restored after)."""
    with FlopCounterMode(display=False) as counter, contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(written_out(module))
        fn()
    return int(counter.get_total_flops())


@dataclass
class Limit:
    """The compute limit of a piece of work: its FLOPs and the measured peak of its number format."""

    flops: float  # per unit of work (a frame, a step)
    peak: float  # FLOP/s
    precision: str
    threads: int

    @property
    def best_seconds(self) -> float:
        """Seconds a unit of work would take at the peak."""
        return self.flops / self.peak

    def fraction(self, seconds: float) -> float:
        """The share of the peak reached when a unit of work takes ``seconds``."""
        return self.best_seconds / seconds

    def describe(self, unit: str = "frame") -> str:
        return (
            f"limit: {self.peak / 1e9:.0f} GFLOP/s {self.precision} matmul on {self.threads} thread(s) (measured); "
            f"{self.flops / 1e9:.2f} GFLOP a {unit} (attention included) -> at best {self.best_seconds * 1e3:.1f} ms "
            f"a {unit}"
        )


def measure_limit(flops: float, precision: str, device="cpu") -> Limit:
    """:class:`Limit` of ``flops`` of work in ``precision`` on ``device``, the peak measured now."""
    return Limit(float(flops), matmul_peak(precision, device), precision, torch.get_num_threads())
