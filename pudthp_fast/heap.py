"""The C heap under the fast model's arrays: big temporaries reused, not faulted in anew.

numpy takes each array's memory from ``malloc``; glibc serves blocks above its mmap
threshold (128 KiB at start, raised dynamically up to 32 MiB as blocks are freed) with a
fresh ``mmap`` that ``free`` unmaps again.  At x86_64 geometry an op or a check makes many
temporaries of one to twenty MiB (a gathered PTE row block, a per-page key), so each one's
every page is faulted in and zeroed by the kernel again: tens of thousands of minor faults
per program, a third of the process's time on a split-heavy program, and the noisiest
third.  Raising the mmap threshold to its maximum serves them from the heap, where a freed
block is reused by the next one of its size; the trim threshold keeps up to
``TRIM_BYTES`` of free memory at the heap's top instead of handing it back at every free.

Process-wide and set once, when the first fast model is made: glibc only (``mallopt``),
nothing elsewhere.  ``PUDTHP_MALLOC=default`` leaves the allocator as it is.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 32 << 20  # glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_BYTES = 256 << 20

_done = False


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False


def tune_heap() -> bool:
    """Set the thresholds (once per process); True when glibc took them."""
    global _done
    if _done:
        return False
    _done = True
    if os.environ.get("PUDTHP_MALLOC") == "default" or not _glibc():
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_BYTES))
