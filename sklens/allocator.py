"""Keep the memory torch frees on CPU inside the process, instead of handing it back to the kernel.

PyTorch has no caching allocator on CPU: every activation is a ``malloc`` and a ``free``. glibc
serves blocks above its mmap threshold (128 KiB, rising with use to at most 32 MiB) with fresh
``mmap`` pages and unmaps them on ``free``, and gives the top of its heap back past the trim
threshold (twice the mmap threshold), so the next forward pass faults the same memory in again,
one 4 KiB page at a time. On the 2-core VM the benchmarks run on, a scan of 32 questions took
~1 million page faults and 2 s of kernel time; with freed memory held it took none
(``benchmarks/scan.py``). PyTorch's CPU performance
guide recommends a caching allocator (jemalloc, tcmalloc) for the same reason; this is the
setting that needs no extra library.

``sklens run`` sets it at start. A library call does not change the process's allocator behind
the caller's back; a notebook or script can opt in with ``sklens.hold_freed_memory()``. The
cost is that the process keeps its peak memory until it exits (below 2 GiB of free heap is
never trimmed), and that its heap fragments up to a plateau: a scan's peak RSS rose 20% from
N = 160 to 1,000 and no further to 5,000 (``benchmarks/memory.py``), where it stays flat under
glibc's default.
"""

from __future__ import annotations

import ctypes
import platform

# glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap, whose freed pages stay mapped
_TRIM_THRESHOLD = 2**31 - 1  # the largest value mallopt takes (an int)


def hold_freed_memory() -> bool:
    """Make glibc keep freed blocks for reuse (process-wide); False where the C library is not
    glibc (macOS, musl, Windows) and nothing was changed."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return bool(
        libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
        and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
    )
