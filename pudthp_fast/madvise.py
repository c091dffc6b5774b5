"""Fast madvise(): mm/madvise.c (MADV_HUGEPAGE / NOHUGEPAGE, DONTNEED, PAGEOUT)."""

from __future__ import annotations

from pudthp_fast.memory import zap_page_range
from pudthp_fast.mmap import split_vma_at, vma_merge_around
from pudthp_fast.state import FastMm, FastState
from pudthp_fast.vmscan import madvise_pageout
from pudthp_ref.spec import ENOMEM, Result


def sys_madvise(st: FastState, mm: FastMm, start: int, npages: int, advice: str) -> Result:
    """madvise_walk_vmas(): each VMA part of the range; ENOMEM for a hole, after the rest."""
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
        if advice in ("hugepage", "nohugepage"):
            madvise_update_vma(st, mm, lo, hi, advice == "hugepage")
        elif advice == "dontneed":
            zap_page_range(st, mm, lo, hi, reclaim_pt=True)
        else:
            madvise_pageout(st, mm, lo, hi)
    return ENOMEM if hole else 0


def madvise_update_vma(st: FastState, mm: FastMm, start: int, end: int, huge: bool) -> None:
    """madvise_update_vma(): VM_HUGEPAGE or VM_NOHUGEPAGE over ``[start, end)`` (inside one
    VMA), split and merged as vma_modify_flags() does; no change, no split."""
    vma = next(v for v in mm.vmas if v.start <= start < v.end)
    if vma.hugepage == huge and vma.nohugepage == (not huge):
        return
    split_vma_at(st, mm, start)
    split_vma_at(st, mm, end)
    for v in mm.vmas:
        if start <= v.start and v.end <= end:
            v.hugepage = huge
            v.nohugepage = not huge
    vma_merge_around(mm, start, end)
