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

A property of the process, not of a model: ``tune_heap`` runs once at the entry of a
``pudthp`` command that runs the fast side (and of a ``pudthp bench`` worker of it), sets
the thresholds of this process with ``mallopt`` and exports them as glibc's
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` for every process the command
starts (campaign workers), whose allocator reads them at start.  glibc only;
``PUDTHP_MALLOC=default`` leaves the allocator as it is, and a threshold the user set in the
environment wins.
"""

from __future__ import annotations

import ctypes
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_BYTES = 32 << 20  # glibc's largest mmap threshold on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_BYTES = 256 << 20
ENV = {"MALLOC_MMAP_THRESHOLD_": MMAP_BYTES, "MALLOC_TRIM_THRESHOLD_": TRIM_BYTES}

_done = False


def _glibc() -> bool:
    try:
        return (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")
    except (ValueError, OSError):
        return False


def tune_heap() -> bool:
    """Set the thresholds of this process and its children (once per process); True when
    glibc took them here."""
    global _done
    if _done:
        return False
    _done = True
    if os.environ.get("PUDTHP_MALLOC") == "default" or not _glibc():
        return False
    ours = [name for name in ENV if name not in os.environ]  # glibc took the user's at start
    for name in ours:
        os.environ[name] = str(ENV[name])
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    param = {"MALLOC_MMAP_THRESHOLD_": M_MMAP_THRESHOLD,
             "MALLOC_TRIM_THRESHOLD_": M_TRIM_THRESHOLD}
    return all(bool(mallopt(param[name], ENV[name])) for name in ours)
