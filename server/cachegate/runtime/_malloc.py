"""Make freed request and reply buffers go back to the system.

glibc's malloc raises its mmap threshold each time a large block is freed (up to
32 MiB), so after one 15 MiB reply every later one comes from the heap, and with
one heap arena per thread (up to 8 per CPU) the freed megabytes stay in the
process, scattered over arenas: RSS then says little about the bytes in flight
that the memory budget bounds. Fixing the threshold (blocks of 1 MiB and more are
mapped and unmapped on their own) and capping the arenas keeps RSS close to the
budget; small allocations, the fast paths', are untouched.

Done once at start, before any worker is forked (they inherit it). On a C library
other than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

__all__ = ["LARGE_BLOCK_BYTES", "bound_allocator"]

log = logging.getLogger("cachegate.server")

LARGE_BLOCK_BYTES = 1024 * 1024
# Arenas for the threads of one process: a few, not eight per CPU.
ARENAS = 4

_M_MMAP_THRESHOLD = -3  # glibc's mallopt() parameter numbers (malloc.h)
_M_ARENA_MAX = -8


def bound_allocator() -> bool:
    """Fix glibc's mmap threshold and cap its arenas; whether it applied."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(_M_MMAP_THRESHOLD, LARGE_BLOCK_BYTES)) and bool(
        mallopt(_M_ARENA_MAX, ARENAS)
    )
    if not applied:
        log.info("malloc tuning not applied (not glibc?)")
    return applied
