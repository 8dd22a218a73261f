"""Keep freed memory in the process for reuse (glibc), instead of handing it back to the OS.

glibc's ``malloc`` serves every block above 32 MiB (and, until its threshold adapts, smaller
ones) with a fresh ``mmap`` and returns it with ``munmap`` on free. PyTorch on a CPU has no
caching allocator, so each training step allocates and frees activations and gradients of
tens of MiB (e.g. 39 MiB for EfficientNet's 96 x 160 x 160 maps at batch 8), and every page
of every such block is faulted in again on first touch, which slows large convolutions
several times over (measurements: docs/benchmarks.md).

:func:`keep_freed_memory` sets ``M_MMAP_MAX = 0`` (blocks come from the heap) and a trim
threshold of 2 GiB (freed memory at the top of the heap is kept up to that), the run-time
equivalent of ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``; caching allocators
such as jemalloc or tcmalloc, often recommended for PyTorch on CPUs, behave alike. The
process then holds on to its peak memory. It changes the whole process, so the library never
applies it by itself: the command line and the benchmarks call it, and library users opt in
with ``multibox.keep_freed_memory()``; ``MULTIBOX_KEEP_FREED_MEMORY=0`` turns it off
everywhere. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed blocks for reuse (see the module docstring).
    Returns whether the setting is in effect; safe to call more than once."""
    global _applied
    if _applied:
        return True
    if os.environ.get("MULTIBOX_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (e.g. musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    _applied = bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    return _applied
