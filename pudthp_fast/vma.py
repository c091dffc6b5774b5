"""Fast VMAs and address-space syscalls: mm/vma.c, mm/mmap.c, mm/mprotect.c, mm/madvise.c.

VMAs are few and stay Python objects; the page-table work they trigger is vectorised.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.huge_memory import (
    change_huge_pmd,
    split_huge_at,
    split_huge_pmd_locked,
    split_huge_pud_locked,
)
from pudthp_fast.pgtable import pmd_range, pt_free, pud_range, table_at
from pudthp_fast.reclaim import madvise_pageout
from pudthp_fast.state import LEAF, LV_PMD, LV_PTE, PTE, ZERO, FastMm, FastState, FastVma, W
from pudthp_fast.zap import free_pgtables, zap_page_range
from pudthp_ref.spec import EINVAL, ENOMEM, ModelBug, Result


def find_vma(mm: FastMm, vpn: int) -> FastVma | None:
    for v in mm.vmas:
        if v.start <= vpn < v.end:
            return v
    return None


def split_vma_at(st: FastState, mm: FastMm, addr: int) -> None:
    for i, v in enumerate(mm.vmas):
        if v.start < addr < v.end:
            split_huge_at(st, mm, addr)
            mm.vmas.insert(i + 1, FastVma(addr, v.end, v.prot, v.hugepage, v.nohugepage,
                                          v.anon_vma, v.forked))
            v.end = addr
            return


def mergeable(a: FastVma, b: FastVma) -> bool:
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
    i = 0
    while i + 1 < len(mm.vmas):
        a, b = mm.vmas[i], mm.vmas[i + 1]
        if start <= a.end <= end and mergeable(a, b):
            a.end = b.end
            if a.anon_vma is None:
                a.anon_vma, a.forked = b.anon_vma, b.forked
            del mm.vmas[i + 1]
            continue
        i += 1


def do_vmi_munmap(st: FastState, mm: FastMm, start: int, end: int) -> None:
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
    if npages <= 0 or start + npages > st.geom.space:
        return EINVAL
    do_vmi_munmap(st, mm, start, start + npages)
    return 0


def sys_mmap(st: FastState, mm: FastMm, start: int, npages: int, prot: str) -> Result:
    if npages <= 0 or start + npages > st.geom.space:
        return EINVAL
    end = start + npages
    do_vmi_munmap(st, mm, start, end)
    mm.vmas.append(FastVma(start, end, prot))
    mm.vmas.sort(key=lambda v: v.start)
    vma_merge_around(mm, start, end)
    return 0


def exit_mmap(st: FastState, mm: FastMm) -> None:
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


# --------------------------------------------------------------------------------------
# mprotect
# --------------------------------------------------------------------------------------


def sys_mprotect(st: FastState, mm: FastMm, start: int, npages: int, prot: str) -> Result:
    end = start + npages
    if end > st.geom.space:
        return ENOMEM
    cur = start
    while cur < end:
        vma = next((v for v in mm.vmas if v.end > cur), None)
        if vma is None or vma.start > cur:
            return ENOMEM
        hi = min(vma.end, end)
        if vma.prot != prot:
            split_vma_at(st, mm, cur)
            split_vma_at(st, mm, hi)
            for v in mm.vmas:
                if cur <= v.start and v.end <= hi:
                    v.prot = prot
            change_protection(st, mm, cur, hi, prot)
            vma_merge_around(mm, cur, hi)
        cur = hi
    return 0


def change_protection(st: FastState, mm: FastMm, start: int, end: int, prot: str) -> None:
    g = st.geom
    pud = mm.pud_table
    for pi, addr, nxt in pud_range(g, start, end):
        k = st.e_kind[st.row(pud), pi]
        if k == 0:
            continue
        if k == LEAF:
            if nxt - addr == g.pud_nr:
                r_pud = st.wrow(pud)
                st.e_bits[r_pud, pi] &= ~np.uint8(W)  # change_huge_pud(): never upgraded
                continue
            split_huge_pud_locked(st, mm, pud, pi)
        pmd = table_at(st, pud, pi, LV_PMD)
        for mi, a, b in pmd_range(g, addr, nxt):
            k = st.e_kind[st.row(pmd), mi]
            if k == 0:
                continue
            if k in (LEAF, ZERO):
                if b - a == g.pmd_nr:
                    change_huge_pmd(st, pmd, mi, prot)
                    continue
                split_huge_pmd_locked(st, mm, pmd, mi)
            pte = table_at(st, pmd, mi, LV_PTE)
            lo, hi = a % g.P, a % g.P + (b - a)
            present = st.e_kind[st.row(pte), lo:hi] == PTE
            if not np.count_nonzero(present):
                continue
            row = st.row(pte)
            bits = st.e_bits[row, lo:hi]
            if prot == "rw":
                # e_id of a swap PTE is a swap slot, not a folio: look up present PTEs only
                ids = np.where(present, st.e_id[row, lo:hi], 0)
                pages = st.f_base[ids] + st.e_page[row, lo:hi]
                write = present & st.p_exclusive[np.where(present, pages, 0)]
            else:
                write = np.zeros_like(present)
            new = (bits & ~np.uint8(W)) | np.where(write, np.uint8(W), np.uint8(0))
            r_pte = st.wrow(pte)
            st.e_bits[r_pte, lo:hi] = np.where(present, new, bits)


# --------------------------------------------------------------------------------------
# madvise
# --------------------------------------------------------------------------------------


def sys_madvise(st: FastState, mm: FastMm, start: int, npages: int, advice: str) -> Result:
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
            huge = advice == "hugepage"
            vma = next(v for v in mm.vmas if v.start <= lo < v.end)
            if vma.hugepage == huge and vma.nohugepage == (not huge):
                continue
            split_vma_at(st, mm, lo)
            split_vma_at(st, mm, hi)
            for v in mm.vmas:
                if lo <= v.start and v.end <= hi:
                    v.hugepage = huge
                    v.nohugepage = not huge
            vma_merge_around(mm, lo, hi)
        elif advice == "dontneed":
            zap_page_range(st, mm, lo, hi, reclaim_pt=True)
        else:
            madvise_pageout(st, mm, lo, hi)
    return ENOMEM if hole else 0

