"""An idle worker gives the C allocator's free memory back (workers/allocator.py): real glibc, real pages.

Measured in a fresh interpreter: in this long-lived test process the heap already holds free
memory that the blocks below would reuse without growing the resident set."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from embedstream.workers import allocator

PROBE = """
import ctypes, ctypes.util, json
from embedstream.workers import allocator

BLOCK, BLOCKS = 64 * 1024, 1600  # under glibc's mmap threshold: heap blocks, kept there when freed (100 MiB)


def resident_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
before = resident_mib()
blocks = [libc.malloc(BLOCK) for _ in range(BLOCKS)]
for block in blocks:
    ctypes.memset(block, 1, BLOCK)  # touched: resident
keep = libc.malloc(BLOCK)  # above the freed ones, so glibc cannot just shrink the heap's top
for block in blocks:
    libc.free(block)
held = resident_mib()
allocator.trim()
print(json.dumps({"before": before, "held": held, "after": resident_mib()}))
"""


@pytest.mark.skipif(allocator.trim is None, reason="not glibc")
def test_trim_returns_freed_heap_memory_to_the_system() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=60, check=True)
    mib = json.loads(out.stdout)
    assert mib["held"] - mib["before"] > 80, f"freed heap blocks stay resident until trimmed: {mib}"
    assert mib["held"] - mib["after"] > 80, f"trimming hands them back: {mib}"
