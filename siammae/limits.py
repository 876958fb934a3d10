"""The machine's limits that the benchmarks under ``tools/`` report their figures against.

A speed means little without the hardware's own ceiling beside it: "0.2 frames/s" can be 30% or 90%
of what the cores can do. Two measurements give that ceiling for compute-bound work:

- :func:`matmul_peak`: FLOP/s of a large square matmul in a number format, on the threads the
  benchmark uses, best of a few tries (the fastest the BLAS gets on this machine right now);
- :func:`count_flops`: the FLOPs of a piece of work (a forward pass, a training step), counted by
  PyTorch's ``FlopCounterMode`` with attention written out as two matmuls, since the counter does not
  see inside the fused CPU attention kernel (the FLOPs are the same either way).

A figure's fraction of the limit is then ``flops / seconds / peak`` (:class:`Limit`). Attention also
exponentiates every score (``N^2`` per head and block: 182 M a 480p frame for ViT-S/16), vector work no
matmul unit does; on a CPU with AMX that costs more than the attention's matmuls at the peak. So a limit
also carries, where the benchmark counts them, the softmax's elements (:func:`count_softmax`) at the
measured rate of an in-cache softmax (:func:`softmax_rate`): ``best_seconds_with_softmax``, what a
kernel that multiplies at the peak and computes that softmax at PyTorch's own rate would take (an
estimate, not a hard floor: a cheaper exponential goes below it). Work bound by
memory or decoding (the loader, sharding) is measured against its own floor instead (the tar + JPEG
decode floor, the bare video decode), which those benchmarks measure in the same run.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
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


def softmax_rate(precision: str = "fp32", device="cpu", rows: int = 64, cols: int = 2048, repeats: int = 4) -> float:
    """Measured elements per second of a row softmax in ``precision`` on ``device`` with the current
    threads, over ``rows`` x threads rows of ``cols`` scores (under 1 MB a thread: in cache, as a fused
    attention kernel keeps its tiles), best of ``repeats`` timings of 20 calls."""
    device = torch.device(device)
    threads = torch.get_num_threads() if device.type == "cpu" else 64
    scores = torch.randn(rows * threads, cols, device=device).to(DTYPES[precision])
    torch.softmax(scores, -1)
    best = 0.0
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        for _ in range(20):
            torch.softmax(scores, -1)
        _sync(device)
        best = max(best, 20 * scores.numel() / (time.perf_counter() - start))
    return best


class _SoftmaxCounter(TorchDispatchMode):
    """Counts the elements every softmax (forward or backward) of the dispatched ops runs over."""

    # softmax.int arrives whole without autograd (inference), as _softmax with it (training).
    OPS = {torch.ops.aten.softmax.int, torch.ops.aten._softmax.default, torch.ops.aten._softmax_backward_data.default}

    def __init__(self):
        super().__init__()
        self.elements = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.elements += args[0].numel()
        return func(*args, **(kwargs or {}))


def count_softmax(fn, *modules: torch.nn.Module) -> int:
    """Elements the softmaxes of ``fn()`` run over, with every attention module of ``modules`` written out
    (the fused kernel computes the same softmax out of sight)."""
    with _SoftmaxCounter() as counter, contextlib.ExitStack() as stack:
        for module in modules:
            stack.enter_context(written_out(module))
        fn()
    return counter.elements


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
    """The compute limit of a piece of work: its FLOPs and the measured peak of its number format, and
    optionally its softmax elements and the measured softmax rate."""

    flops: float  # per unit of work (a frame, a step)
    peak: float  # FLOP/s
    precision: str
    threads: int
    softmax_elements: float = 0.0  # per unit of work; 0: not counted
    softmax_rate: float = 0.0  # elements/s

    @property
    def best_seconds(self) -> float:
        """Seconds a unit of work would take at the peak."""
        return self.flops / self.peak

    @property
    def best_seconds_with_softmax(self) -> float:
        """Seconds at the peak plus the softmax's elements at the measured softmax rate."""
        softmax = self.softmax_elements / self.softmax_rate if self.softmax_rate else 0.0
        return self.best_seconds + softmax

    def fraction(self, seconds: float) -> float:
        """The share of the peak reached when a unit of work takes ``seconds``."""
        return self.best_seconds / seconds

    def fraction_with_softmax(self, seconds: float) -> float:
        """The share of :attr:`best_seconds_with_softmax` reached when a unit of work takes ``seconds``."""
        return self.best_seconds_with_softmax / seconds

    def describe(self, unit: str = "frame") -> str:
        text = (
            f"limit: {self.peak / 1e9:.0f} GFLOP/s {self.precision} matmul on {self.threads} thread(s) (measured); "
            f"{self.flops / 1e9:.2f} GFLOP a {unit} (attention included) -> at best {self.best_seconds * 1e3:.1f} ms "
            f"a {unit}"
        )
        if self.softmax_rate and self.softmax_elements:
            text += (
                f"; with attention's softmax ({self.softmax_elements / 1e6:.0f} M elements at "
                f"{self.softmax_rate / 1e9:.2f} G/s, measured) {self.best_seconds_with_softmax * 1e3:.1f} ms"
            )
        return text


def measure_limit(flops: float, precision: str, device="cpu", softmax_elements: float = 0) -> Limit:
    """:class:`Limit` of ``flops`` of work (and ``softmax_elements``) in ``precision`` on ``device``, the
    peak (and the softmax rate) measured now."""
    # In fp32 whatever the work's format: the fused kernels compute the softmax in fp32 (scores accumulate
    # in fp32, the probabilities are cast for the second matmul).
    rate = softmax_rate("fp32", device) if softmax_elements else 0.0
    peak = matmul_peak(precision, device)
    return Limit(float(flops), peak, precision, torch.get_num_threads(), float(softmax_elements), rate)
