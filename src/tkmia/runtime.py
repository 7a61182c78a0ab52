"""Process-wide settings for fast CPU attacks: what ``tkmia run`` and ``tkmia train`` set.

An attack iteration allocates and frees the same large tensors (activations, gradients)
again and again. With glibc's default malloc settings, freed memory at the top of the
heap beyond a dynamic threshold (at most 64 MiB) is handed back to the operating system,
and tensors above another (at most 32 MiB) get pages of their own; either way the next
iteration's tensors land on fresh pages, and every first touch of a 4 KiB page is a page
fault in which the kernel zeroes it (docs/performance.md, "Memory allocator", has the
measurements).

:func:`retain_freed_memory` keeps the freed memory in the process instead. Library users
can call it themselves (or set ``MALLOC_MMAP_THRESHOLD_=33554432`` and
``MALLOC_TRIM_THRESHOLD_=2147483647`` in the environment); importing tkmia changes
nothing.
"""

from __future__ import annotations

import ctypes
import sys

__all__ = ["retain_freed_memory"]

#: glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: the largest mmap threshold 64-bit glibc accepts (HEAP_MAX_SIZE / 2)
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
#: the largest value mallopt takes (an int): freed memory beyond 2 GiB is still returned
_TRIM_THRESHOLD = 2**31 - 1


def retain_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (process-wide, for the rest of the
    process's life); returns whether the setting took effect.

    Allocations up to 32 MiB come from the heap instead of pages of their own, and the
    heap is shrunk only when more than 2 GiB at its top are free. The process's resident
    memory then stays near its peak instead of following each iteration's allocations.
    A no-op returning ``False`` off Linux or with another C library than glibc.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has a mallopt stub)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the explicit mmap threshold also turns off glibc's dynamic thresholds
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)) and bool(
        mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
