"""Keep freed memory in this process's heap for reuse, instead of giving it back to the system.

PyTorch's CPU tensors come from ``malloc``. glibc serves large blocks (from 128 KiB up, a threshold
it raises as blocks are freed, up to 32 MB) with a fresh ``mmap`` each and unmaps them on free, and
it trims free memory at the top of its heap back to the system. The next tensor of that size then
touches new pages: one minor page fault per 4 KiB page (a measurable cost where every step
allocates and frees large tensors: the written-out bf16 attention of feature extraction,
:mod:`siammae.propagate.attention`, and CPU training; figures in docs/benchmarks.md, "CPU precision"
and "Training").

The cost: the process's RSS stays near its peak until it exits (up to 1 GiB of free heap is kept).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


@functools.cache
def keep_freed_memory() -> bool:
    """Make glibc's allocator serve large blocks from its heap and keep freed memory there for reuse
    (no ``mmap`` per block; up to 1 GiB free at the top of the heap is not given back), for the rest of
    this process and the processes it forks. Returns False where the C library is not glibc (nothing
    changed)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**30))
    except (OSError, AttributeError):  # not glibc (macOS, musl): mallopt is missing or differs
        return False
