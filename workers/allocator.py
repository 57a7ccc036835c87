"""Giving memory back: what a burst of batches left with the C allocator returns to the system once idle.

glibc keeps freed memory for reuse, and after large blocks are freed it raises its mmap threshold
(up to 32 MiB), so the activations of later batches come from its heap arenas and stay resident
when freed: a MiniLM worker on CPU grew from 455 to 663 MiB (CPU torch wheel) over a 1,000-text
stream and stayed there. Once the worker has had nothing to run for :data:`IDLE_S`, the batch
loop calls ``malloc_trim(0)`` on the model thread, which returns every free page of every arena
to the system. Never while work waits, so it costs a batch nothing; the peak under load is
unchanged (``make bench`` prints both). Not glibc (musl, macOS): nothing to call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

#: Seconds without a batch after which the allocator's free memory goes back.
IDLE_S = 1.0


def _trimmer() -> Callable[[], None] | None:
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int

    def run() -> None:
        trim(0)

    return run


#: ``malloc_trim(0)``, or None where the C library has none.
trim = _trimmer()
