"""An idle worker gives the C allocator's free memory back (workers/allocator.py): real glibc, real pages."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest

from embedstream.workers import allocator

BLOCK = 64 * 1024  # under glibc's mmap threshold: served from the heap, kept there when freed
BLOCKS = 1600  # 100 MiB


def resident_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(allocator.trim is None, reason="not glibc")
def test_trim_returns_freed_heap_memory_to_the_system() -> None:
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
    assert held - before > 80, "freed heap blocks stay resident until trimmed"
    assert allocator.trim is not None
    allocator.trim()
    assert held - resident_mib() > 80, "trimming hands them back"
    libc.free(keep)
