"""Fast mprotect(): mm/mprotect.c (mprotect_fixup, change_protection and its range
walkers), a PTE table's range at a time."""

from __future__ import annotations

import numpy as np

from pudthp_fast.huge_memory import (
    __split_huge_pmd_locked,
    __split_huge_pud_locked,
    change_huge_pmd,
    change_huge_pud,
)
from pudthp_fast.mmap import split_vma_at, vma_merge_around
from pudthp_fast.pgtable import pmd_range, pud_range, table_of
from pudthp_fast.state import LEAF, NONE, PTE, ZERO, FastMm, FastState, FastVma, W
from pudthp_ref.spec import ENOMEM, LEVEL_PMD, LEVEL_PTE, Result


def sys_mprotect(st: FastState, mm: FastMm, start: int, npages: int, prot: str) -> Result:
    """do_mprotect_pkey(): VMAs up to the first hole are changed, then ENOMEM."""
    end = start + npages
    if end > st.geom.space:
        return ENOMEM
    cur = start
    while cur < end:
        vma = next((v for v in mm.vmas if v.end > cur), None)
        if vma is None or vma.start > cur:
            return ENOMEM
        hi = min(vma.end, end)
        mprotect_fixup(st, mm, vma, cur, hi, prot)
        cur = hi
    return 0


def mprotect_fixup(st: FastState, mm: FastMm, vma: FastVma, start: int, end: int, prot: str
                   ) -> None:
    if vma.prot == prot:
        return  # newflags == oldflags: nothing to do, not even a split
    split_vma_at(st, mm, start)
    split_vma_at(st, mm, end)
    for v in mm.vmas:
        if start <= v.start and v.end <= end:
            v.prot = prot
    change_protection(st, mm, start, end, prot)
    vma_merge_around(mm, start, end)


def change_protection(st: FastState, mm: FastMm, start: int, end: int, prot: str) -> None:
    """change_pud_range() / change_pmd_range() / change_pte_range(): the write bit dropped,
    and set again only over an AnonExclusive page of a present PTE when ``prot`` is rw."""
    g = st.geom
    pud = mm.pud_table
    for pi, addr, nxt in pud_range(g, start, end):
        k = st.e_kind[st.row(pud), pi]
        if k == NONE:
            continue
        if k == LEAF:
            if nxt - addr == g.pud_nr:
                change_huge_pud(st, pud, pi)
                continue
            __split_huge_pud_locked(st, mm, pud, pi)
        pmd = table_of(st, pud, pi, LEVEL_PMD)
        for mi, a, b in pmd_range(g, addr, nxt):
            k = st.e_kind[st.row(pmd), mi]
            if k == NONE:
                continue
            if k in (LEAF, ZERO):
                if b - a == g.pmd_nr:
                    change_huge_pmd(st, pmd, mi, prot)
                    continue
                __split_huge_pmd_locked(st, mm, pmd, mi)
            pte = table_of(st, pmd, mi, LEVEL_PTE)
            lo, hi = a % g.P, a % g.P + (b - a)
            row = st.row(pte)
            present = st.e_kind[row, lo:hi] == PTE
            if not np.count_nonzero(present):
                continue
            bits = st.e_bits[row, lo:hi]
            if prot == "rw":
                # e_id of a swap PTE is a swap slot, not a folio: look up present PTEs only
                ids = np.where(present, st.e_id[row, lo:hi], 0)
                pages = st.f_base[ids] + st.e_page[row, lo:hi]
                write = present & st.p_exclusive[np.where(present, pages, 0)]
            else:
                write = np.zeros_like(present)
            new = (bits & ~np.uint8(W)) | np.where(write, np.uint8(W), np.uint8(0))
            st.e_bits[row, lo:hi] = np.where(present, new, bits)
