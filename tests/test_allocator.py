"""siammae.allocator: glibc told to keep freed memory, so a tensor allocated again reuses pages already
touched instead of faulting in new ones (what makes the written-out attention and CPU training steps
faster)."""

import platform
import subprocess
import sys

import pytest

from siammae.allocator import keep_freed_memory

GLIBC = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

FAULTS = """
import resource, torch
from siammae.allocator import keep_freed_memory

def faults():
    for _ in range(10):  # until the heap has settled
        torch.ones(10 * 2**20)
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(5):
        block = torch.ones(10 * 2**20)  # 40 MB, freed at once: as a block's score matrices are
        del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start

before = faults()
kept = keep_freed_memory()
print(before, kept, faults())
"""


@GLIBC
def test_kept_memory_is_reused_without_page_faults():
    out = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, kept, after = out.stdout.split()
    print("minor page faults for 5 x 40 MB, before / after:", before, after)
    assert kept == "True"
    assert int(after) * 10 <= int(before)  # 51,200 pages touched anew before, none after
    assert keep_freed_memory() in (True, False)  # safe to call again in any process
