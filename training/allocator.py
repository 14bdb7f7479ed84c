"""Keeps freed memory in the process for the next step, where glibc would hand it back.

glibc serves every allocation above its mmap threshold (128 KB at first, at
most 32 MB) with a fresh mapping and unmaps it when freed. A training step on
the CPU allocates and frees the same activations, tens of megabytes each,
every step, so each step takes all of them from the kernel again, page by
page. Measured on the 2-core development machine, one step of the default
network at batch 32 (the bundled model's): 433,000-506,000 page faults and
1.3-1.6 s of system time, 1.49-1.66 s a step; with freed memory kept in the
heap, 0-2,600 faults and 0.77-0.83 s a step, 1.97 times as fast
(`bench/train_step.py`, two rounds side by side). The cost is memory: the
process keeps what it freed until it exits, and its peak was 1,459-1,734 MiB
against 1,114-1,135 MiB, the heap holding freed blocks a later request does
not fit; more so for larger inputs (at 128 pixels, 5,509 MiB against 2,960).
Where memory is short, glibc's own settings of mapping and trimming, in
GLIBC_TUNABLES or its MALLOC_*_ variables, are left to decide instead.

This is a process-wide setting, so the commands (`train`, `evaluate`) make it,
not the library's functions. Other C libraries (musl, macOS) are left as they
are.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from collections.abc import Mapping

# glibc's own settings of what this changes: a user who set one has chosen.
_TUNABLES = ("glibc.malloc.mmap_max", "glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")
_VARIABLES = ("MALLOC_MMAP_MAX_", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
# Freed memory at the top of the heap beyond this goes back to the kernel: far above
# what one step frees, so a step's memory stays for the next.
_TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Asks glibc to serve large allocations from the heap and keep them once freed;
    False where the C library is not glibc or refuses, or the user set glibc's own."""
    if not sys.platform.startswith("linux") or _users_own_choice(os.environ):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        # glibc's own function: musl has a mallopt that does nothing.
        glibc = hasattr(libc, "gnu_get_libc_version")
    except (OSError, AttributeError):
        return False
    if not glibc:
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    # In the main thread's heap (where training allocates), no allocation is mapped on
    # its own: large ones come from the heap, which glibc extends by mapping when it
    # cannot grow, and the heap is not trimmed after a step. Other threads' heaps are
    # at most 64 MB, so glibc still maps their larger allocations one by one.
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))


def _users_own_choice(environ: Mapping[str, str]) -> bool:
    tunables = environ.get("GLIBC_TUNABLES", "")
    return any(name in tunables for name in _TUNABLES) or any(v in environ for v in _VARIABLES)
