"""Process-wide tuning that cafs's own entry points apply at start.

glibc serves every allocation above 128 KiB with a fresh ``mmap`` and
returns it with ``munmap``. cafs moves data in 256 KiB–8 MiB buffers from
several threads at once, so each buffer would be page-faulted and zeroed
anew, and the threads would queue on the kernel's memory-map lock: measured,
that alone cut chunk compression throughput several-fold. Raising the
thresholds lets freed buffers be reused from the heap instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8

MMAP_THRESHOLD = 64 * 1024 * 1024
TRIM_THRESHOLD = 512 * 1024 * 1024
TOP_PAD = 64 * 1024 * 1024
# One heap for all threads: per-thread heaps grow and shrink separately and
# fault their pages in again; the work here is in C with the GIL released
# and allocations are few and large, so a shared heap's lock costs nothing.
ARENA_MAX = 1


def tune_malloc() -> bool:
    """Apply the allocator settings; False where the C library has no ``mallopt``."""
    name = ctypes.util.find_library("c")
    with contextlib.suppress(OSError, AttributeError):
        mallopt = ctypes.CDLL(name).mallopt
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        mallopt.restype = ctypes.c_int
        settings = (
            (_M_MMAP_THRESHOLD, MMAP_THRESHOLD),
            (_M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (_M_TOP_PAD, TOP_PAD),
            (_M_ARENA_MAX, ARENA_MAX),
        )
        return all(mallopt(param, value) == 1 for param, value in settings)
    return False
