"""The live kernel's THP interfaces, read and written by ``pudthp conform``.

What each kernel concern is measured with (Documentation/admin-guide/mm/pagemap.rst,
Documentation/admin-guide/mm/transhuge.rst):

- the address-space syscalls (``mmap``, ``munmap``, ``mprotect``, ``madvise``) through libc;
- ``/proc/PID/pagemap``: per page the present bit (63), swapped bit (62), the PFN (bits 0-54,
  root only) or the swap offset (bits 5-54);
- the ``PAGEMAP_SCAN`` ioctl on the same file (``fs/proc/task_mmu.c``
  ``pagemap_scan_thp_entry``): ``PAGE_IS_HUGE`` is set exactly for pages mapped by a PMD
  leaf and ``PAGE_IS_PFNZERO`` for the shared zero page and the huge zero PMD, which is how
  a PMD mapping is told apart from a PTE mapping of the same THP;
- ``/proc/kpageflags`` (``KPF_COMPOUND_HEAD``/``TAIL``, ``KPF_THP``, ``KPF_ZERO_PAGE``) for
  folio boundaries and ``/proc/kpagecount`` for ``folio_precise_page_mapcount()``;
- ``/proc/PID/smaps``: the VMAs (``VmFlags`` ``hg``/``nh`` are ``VM_HUGEPAGE`` and
  ``VM_NOHUGEPAGE``) with their ``Rss``, ``AnonHugePages`` and ``Swap``;
- ``/proc/vmstat`` and ``hugepages-2048kB/stats/*`` for the THP events and mTHP counters;
- the sysfs/procfs/debugfs knobs a run changes, each saved first and restored afterwards.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
import sys
from collections.abc import Iterable
from dataclasses import dataclass

PAGE_SIZE = 4096
THP_DIR = "/sys/kernel/mm/transparent_hugepage"
PMD_STATS_DIR = f"{THP_DIR}/hugepages-2048kB/stats"
DEBUGFS = "/sys/kernel/debug"
SPLIT_HUGE_PAGES = f"{DEBUGFS}/split_huge_pages"
DROP_CACHES = "/proc/sys/vm/drop_caches"

# include/uapi/asm-generic/mman-common.h, mman.h
PROT_NONE, PROT_READ, PROT_WRITE = 0, 1, 2
MAP_PRIVATE, MAP_FIXED, MAP_ANONYMOUS, MAP_NORESERVE = 0x02, 0x10, 0x20, 0x4000
MADV_DONTNEED, MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_PAGEOUT = 4, 14, 15, 21
ADVICE_CODES: dict[str, int] = {
    "hugepage": MADV_HUGEPAGE,
    "nohugepage": MADV_NOHUGEPAGE,
    "dontneed": MADV_DONTNEED,
    "pageout": MADV_PAGEOUT,
}
PROT_CODES: dict[str, int] = {"none": PROT_NONE, "r": PROT_READ, "rw": PROT_READ | PROT_WRITE}

# include/uapi/linux/prctl.h
PR_SET_THP_DISABLE, PR_GET_THP_DISABLE = 41, 42

# include/uapi/linux/kernel-page-flags.h
KPF_COMPOUND_HEAD = 15
KPF_COMPOUND_TAIL = 16
KPF_THP = 22
KPF_ZERO_PAGE = 24

# pagemap entry bits (fs/proc/task_mmu.c)
PM_PRESENT = 1 << 63
PM_SWAP = 1 << 62
PM_PFN_MASK = (1 << 55) - 1
PM_SWAP_OFFSET_SHIFT = 5  # MAX_SWAPFILES_SHIFT

# PAGEMAP_SCAN (include/uapi/linux/fs.h)
PAGE_IS_PRESENT = 1 << 3
PAGE_IS_SWAPPED = 1 << 4
PAGE_IS_PFNZERO = 1 << 5
PAGE_IS_HUGE = 1 << 6
SCAN_CATEGORIES = PAGE_IS_PRESENT | PAGE_IS_SWAPPED | PAGE_IS_PFNZERO | PAGE_IS_HUGE
_PM_SCAN_ARG = struct.Struct("=12Q")
PAGEMAP_SCAN = (3 << 30) | (_PM_SCAN_ARG.size << 16) | (ord("f") << 8) | 16
_SCAN_VEC_LEN = 4096


class KernelError(Exception):
    """The live kernel cannot do what a run needs; the message says why (exit status 2)."""


# --------------------------------------------------------------------------------------
# libc
# --------------------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mmap.restype = ctypes.c_void_p
_libc.mmap.argtypes = [
    ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long,
]
_libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.memmove.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
_libc.memmove.restype = ctypes.c_void_p
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                        ctypes.c_ulong]
_libc.syscall.restype = ctypes.c_long
MAP_FAILED = ctypes.c_void_p(-1).value


def _errno_name() -> str:
    e = ctypes.get_errno()
    return errno.errorcode.get(e, f"errno{e}")


def sys_mmap(addr: int, length: int, prot: str) -> int | str:
    """mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE): 0 or the errno name.

    MAP_NORESERVE keeps VM_ACCOUNT off every VMA: commit accounting is not a THP concern, and
    without it mprotect() would set VM_ACCOUNT on some VMAs only (mprotect_fixup), so VMAs
    the model merges would stay apart for a reason outside the model.
    """
    flags = MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE
    r = _libc.mmap(addr, length, PROT_CODES[prot], flags, -1, 0)
    if r == MAP_FAILED or r is None:
        return _errno_name()
    if r != addr:
        raise KernelError(f"mmap MAP_FIXED at {addr:#x} returned {r:#x}")
    return 0


def sys_munmap(addr: int, length: int) -> int | str:
    return 0 if _libc.munmap(addr, length) == 0 else _errno_name()


def sys_mprotect(addr: int, length: int, prot: str) -> int | str:
    return 0 if _libc.mprotect(addr, length, PROT_CODES[prot]) == 0 else _errno_name()


def sys_madvise(addr: int, length: int, advice: int) -> int | str:
    return 0 if _libc.madvise(addr, length, advice) == 0 else _errno_name()


def prctl(option: int, arg: int = 0) -> int:
    r = int(_libc.prctl(option, arg, 0, 0, 0))
    if r < 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")
    return r


def load_u64(addr: int) -> int:
    """A user load of the 64-bit word at ``addr`` (faults the page in like any read)."""
    return int(ctypes.c_uint64.from_address(addr).value)


def store_u64(addr: int, value: int) -> None:
    """A user store of the 64-bit word at ``addr`` (a write fault where needed), and nothing
    else: ``memmove`` only loads from the source.  A ctypes field assignment would not do:
    its setter reads the old word first (to merge bit fields), so the first access to a
    page would be a read fault (a huge zero PMD, ``thp_zero_page_alloc``) before the write
    fault the program asked for."""
    _libc.memmove(addr, value.to_bytes(8, "little"), 8)


# --------------------------------------------------------------------------------------
# Small files
# --------------------------------------------------------------------------------------


# statfs() f_type values of file systems with no backing device (linux/magic.h)
TMPFS_MAGIC, RAMFS_MAGIC = 0x01021994, 0x858458F6


def fs_magic(path: str) -> int:
    """statfs(2) ``f_type`` of the file system holding ``path`` (its first word)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64
    if _libc.statfs(os.fsencode(path), buf) != 0:
        raise KernelError(f"statfs {path}: {_errno_name()}")
    return int.from_bytes(buf.raw[: ctypes.sizeof(ctypes.c_long)], sys.byteorder)


def read_text(path: str) -> str:
    with open(path, encoding="ascii") as f:
        return f.read()


def write_text(path: str, text: str) -> None:
    """Write a sysfs/procfs/debugfs file in one write(); raises OSError as the kernel says."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def selected(text: str) -> str:
    """The ``[bracketed]`` choice of a sysfs enum file, or the whole value."""
    text = text.strip()
    if "[" in text:
        return text[text.index("[") + 1 : text.index("]")]
    return text


def read_vmstat() -> dict[str, int]:
    out: dict[str, int] = {}
    with open("/proc/vmstat", encoding="ascii") as f:
        for line in f:
            name, _, value = line.partition(" ")
            out[name] = int(value)
    return out


def read_pmd_stats() -> dict[str, int]:
    out: dict[str, int] = {}
    for name in os.listdir(PMD_STATS_DIR):
        out[name] = int(read_text(f"{PMD_STATS_DIR}/{name}"))
    return out


# --------------------------------------------------------------------------------------
# smaps
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class KVma:
    """One VMA of ``/proc/PID/smaps`` in bytes, with what the comparison needs."""

    start: int
    end: int
    perms: str
    vmflags: tuple[str, ...]
    rss_kb: int
    anon_huge_kb: int
    swap_kb: int


def read_smaps(pid: int) -> list[KVma]:
    """Every VMA of ``pid``; raises ProcessLookupError when the process is gone."""
    try:
        with open(f"/proc/{pid}/smaps", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise ProcessLookupError(pid) from None
    out: list[KVma] = []
    cur: dict[str, object] | None = None

    def flush() -> None:
        if cur is not None:
            out.append(
                KVma(
                    int(cur["start"]),  # type: ignore[call-overload]
                    int(cur["end"]),  # type: ignore[call-overload]
                    str(cur["perms"]),
                    tuple(cur.get("vmflags", ())),  # type: ignore[arg-type]
                    int(cur.get("Rss", 0)),  # type: ignore[call-overload]
                    int(cur.get("AnonHugePages", 0)),  # type: ignore[call-overload]
                    int(cur.get("Swap", 0)),  # type: ignore[call-overload]
                )
            )

    for line in text.splitlines():
        head, _, rest = line.partition(" ")
        if "-" in head and not head.endswith(":"):
            flush()
            lo, _, hi = head.partition("-")
            cur = {"start": int(lo, 16), "end": int(hi, 16), "perms": rest.split()[0]}
        elif cur is not None and head == "VmFlags:":
            cur["vmflags"] = tuple(rest.split())
        elif cur is not None and head in ("Rss:", "AnonHugePages:", "Swap:"):
            cur[head[:-1]] = int(rest.split()[0])
    flush()
    return out


# --------------------------------------------------------------------------------------
# pagemap, PAGEMAP_SCAN, kpageflags, kpagecount, /proc/PID/mem
# --------------------------------------------------------------------------------------


def pagemap_entries(fd: int, start: int, npages: int) -> list[int]:
    """Raw pagemap entries of ``npages`` pages from address ``start``."""
    data = os.pread(fd, npages * 8, (start // PAGE_SIZE) * 8)
    if len(data) != npages * 8:
        raise KernelError(f"short pagemap read at {start:#x}")
    return list(struct.unpack(f"={npages}Q", data))


def pagemap_scan(fd: int, start: int, end: int) -> list[tuple[int, int, int]]:
    """PAGEMAP_SCAN over ``[start, end)``: (start, end, categories) regions covering every
    page, adjacent pages with the same categories in one region."""
    vec = (ctypes.c_uint64 * (3 * _SCAN_VEC_LEN))()
    out: list[tuple[int, int, int]] = []
    cur = start
    while cur < end:
        arg = ctypes.create_string_buffer(
            _PM_SCAN_ARG.pack(
                _PM_SCAN_ARG.size, 0, cur, end, 0, ctypes.addressof(vec), _SCAN_VEC_LEN,
                0, 0, 0, 0, SCAN_CATEGORIES,
            ),
            _PM_SCAN_ARG.size,
        )
        r = _libc.ioctl(fd, PAGEMAP_SCAN, arg)
        if r < 0:
            raise KernelError(f"PAGEMAP_SCAN failed: {os.strerror(ctypes.get_errno())}")
        walk_end = _PM_SCAN_ARG.unpack(arg.raw)[4]
        for i in range(r):
            out.append((vec[3 * i], vec[3 * i + 1], vec[3 * i + 2]))
        if walk_end <= cur:
            raise KernelError(f"PAGEMAP_SCAN made no progress at {cur:#x}")
        cur = walk_end
    return out


def read_u64s(fd: int, index: int, count: int) -> list[int]:
    """``count`` 64-bit words from a /proc/kpage* file starting at PFN ``index``."""
    data = os.pread(fd, count * 8, index * 8)
    if len(data) != count * 8:
        raise KernelError(f"short read at PFN {index:#x}")
    return list(struct.unpack(f"={count}Q", data))


def pfn_runs(pfns: Iterable[int]) -> list[tuple[int, int]]:
    """Sorted distinct PFNs as (first, count) runs, so each run is one pread."""
    runs: list[tuple[int, int]] = []
    for p in sorted(set(pfns)):
        if runs and runs[-1][0] + runs[-1][1] == p:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((p, 1))
    return runs
