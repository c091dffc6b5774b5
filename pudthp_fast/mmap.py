"""Fast VMAs and the address-space syscalls: mm/vma.c, mm/mmap.c (mmap, munmap, exit_mmap).

VMAs are few and stay Python objects; the page-table work they trigger is vectorised.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.huge_memory import split_huge_at
from pudthp_fast.memory import free_pgtables, zap_page_range
from pudthp_fast.pgtable import pt_free
from pudthp_fast.state import FastMm, FastState, FastVma
from pudthp_ref.spec import EINVAL, ModelBug, Result


def find_vma(mm: FastMm, vpn: int) -> FastVma | None:
    """The VMA containing ``vpn`` (find_vma() plus the vm_start check)."""
    for v in mm.vmas:
        if v.start <= vpn < v.end:
            return v
    return None


def range_valid(st: FastState, start: int, npages: int) -> bool:
    return npages > 0 and start + npages <= st.geom.space


def split_vma_at(st: FastState, mm: FastMm, addr: int) -> None:
    """__split_vma() at ``addr`` if it falls strictly inside a VMA."""
    for i, v in enumerate(mm.vmas):
        if v.start < addr < v.end:
            split_huge_at(st, mm, addr)  # vma_adjust_trans_huge()
            mm.vmas.insert(i + 1, FastVma(addr, v.end, v.prot, v.hugepage, v.nohugepage,
                                          v.anon_vma, v.forked))
            v.end = addr
            return


def is_mergeable(a: FastVma, b: FastVma) -> bool:
    """Same prot and flags, adjacent, and is_mergeable_anon_vma() (``pudthp_ref.mmap``)."""
    return (
        a.end == b.start
        and a.prot == b.prot
        and a.hugepage == b.hugepage
        and a.nohugepage == b.nohugepage
        and (
            (b.anon_vma is None or not b.forked)
            if a.anon_vma is None
            else (not a.forked if b.anon_vma is None else a.anon_vma == b.anon_vma)
        )
    )


def vma_merge_around(mm: FastMm, start: int, end: int) -> None:
    """vma_merge_*(): merge neighbours whose junction lies in ``[start, end]``."""
    i = 0
    while i + 1 < len(mm.vmas):
        a, b = mm.vmas[i], mm.vmas[i + 1]
        if start <= a.end <= end and is_mergeable(a, b):
            a.end = b.end
            if a.anon_vma is None:
                a.anon_vma, a.forked = b.anon_vma, b.forked
            del mm.vmas[i + 1]
            continue
        i += 1


def do_vmi_munmap(st: FastState, mm: FastMm, start: int, end: int) -> None:
    """do_vmi_munmap(): split the edge VMAs, zap, drop the VMAs, free the page tables."""
    split_vma_at(st, mm, start)
    split_vma_at(st, mm, end)
    doomed = [v for v in mm.vmas if v.start < end and start < v.end]
    if not doomed:
        return
    for v in doomed:
        zap_page_range(st, mm, v.start, v.end)
    mm.vmas = [v for v in mm.vmas if not (v.start < end and start < v.end)]
    free_pgtables(st, mm, start, end)


def sys_munmap(st: FastState, mm: FastMm, start: int, npages: int) -> Result:
    if not range_valid(st, start, npages):
        return EINVAL
    do_vmi_munmap(st, mm, start, start + npages)
    return 0


def sys_mmap(st: FastState, mm: FastMm, start: int, npages: int, prot: str) -> Result:
    """mmap(MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS): replaces whatever was there."""
    if not range_valid(st, start, npages):
        return EINVAL
    end = start + npages
    do_vmi_munmap(st, mm, start, end)
    mm.vmas.append(FastVma(start, end, prot))
    mm.vmas.sort(key=lambda v: v.start)
    vma_merge_around(mm, start, end)
    return 0


def exit_mmap(st: FastState, mm: FastMm) -> None:
    """exit_mmap(): zap everything, free every page table, then check_mm()."""
    for v in list(mm.vmas):
        zap_page_range(st, mm, v.start, v.end)
    mm.vmas = []
    free_pgtables(st, mm, 0, st.geom.space)
    pud = mm.pud_table
    if st.t_w16[pud] != 0 or np.count_nonzero(st.e_kind[st.row(pud)]):
        raise ModelBug("check_mm.pud_table", f"mm {mm.id}: PUD table not empty at exit")
    pt_free(st, mm, pud)
    mm.alive = False
    if mm.rss_anon or mm.rss_swap:
        raise ModelBug("check_mm.rss", f"mm {mm.id}: RSS {mm.rss_anon}/{mm.rss_swap} at exit")
    if mm.pgtables_bytes:
        raise ModelBug("check_mm.pgtables_bytes", f"mm {mm.id}: {mm.pgtables_bytes} at exit")
