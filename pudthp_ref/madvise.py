"""madvise(): mm/madvise.c (MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_DONTNEED, MADV_PAGEOUT,
MADV_COLLAPSE)."""

from __future__ import annotations

from pudthp_ref.khugepaged import madvise_collapse
from pudthp_ref.memory import zap_page_range
from pudthp_ref.mm_types import MmState, MmStruct, Vma
from pudthp_ref.mmap import split_vma_at, vma_merge_around
from pudthp_ref.spec import ENOMEM, Result
from pudthp_ref.vmscan import madvise_pageout


def sys_madvise(st: MmState, mm: MmStruct, start: int, npages: int, advice: str) -> Result:
    """madvise_walk_vmas(): act on every VMA part in range; a hole makes it ENOMEM."""
    end = start + npages
    parts: list[tuple[int, int]] = []
    cur = start
    hole = False
    for v in list(mm.vmas):
        if v.end <= cur or v.start >= end:
            continue
        if v.start > cur:
            hole = True
        parts.append((max(v.start, cur), min(v.end, end)))
        cur = min(v.end, end)
    if cur < end:
        hole = True
    if not parts:
        return ENOMEM
    for lo, hi in parts:
        if advice == "collapse":  # an error from one VMA ends the walk with it
            vma = next(v for v in mm.vmas if v.start <= lo < v.end)
            err = madvise_collapse(st, mm, vma, lo, hi)
            if err != 0:
                return err
        elif advice in ("hugepage", "nohugepage"):
            madvise_update_vma(st, mm, lo, hi, advice == "hugepage")
        elif advice == "dontneed":
            zap_page_range(st, mm, lo, hi, reclaim_pt=True)
        else:
            madvise_pageout(st, mm, lo, hi)
    return ENOMEM if hole else 0


def madvise_update_vma(st: MmState, mm: MmStruct, start: int, end: int, huge: bool) -> None:
    """hugepage_madvise() + madvise_update_vma(): flags only, split and merge as needed."""
    vma = next(v for v in mm.vmas if v.start <= start < v.end)
    if vma.hugepage == huge and vma.nohugepage == (not huge):
        return
    split_vma_at(st, mm, start)
    split_vma_at(st, mm, end)
    for v in mm.vmas:
        if start <= v.start and v.end <= end:
            set_huge_flags(v, huge)
    vma_merge_around(mm, start, end)


def set_huge_flags(v: Vma, huge: bool) -> None:
    v.hugepage = huge
    v.nohugepage = not huge
