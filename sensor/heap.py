"""glibc heap settings for replay.

A replay allocates and frees big buffers all the time: a megabyte of capture per read, a batch of NDJSON lines
joined for the ring or the output file, numpy scratch for the workers' batch filter. glibc serves each one above
its mmap threshold with a fresh mapping and unmaps it on free, so every use costs a page fault per 4 KB: a
two-worker replay of a million packets took 420,000 faults and 0.8 s of system time; with these settings 53,000
and 0.3 s, about 7% of the wall time (bench/bench_replay.py --workers 2). The memory kept for reuse is what the
replay needed at its peak anyway; a live sensor does not call this.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # glibc malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 64 << 20  # buffers below this come from the heap and are reused
TRIM_THRESHOLD = 256 << 20  # free memory at the heap's top kept up to this


def retain_freed_buffers() -> bool:
    """Apply the settings when the C library has glibc's ``mallopt``; whether it did."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (musl has mallopt as a no-op: harmless)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
