"""mprotect(): mm/mprotect.c (mprotect_fixup, change_protection and its range walkers)."""

from __future__ import annotations

from pudthp_ref.huge_memory import (
    __split_huge_pmd_locked,
    __split_huge_pud_locked,
    change_huge_pmd,
    change_huge_pud,
)
from pudthp_ref.mm_types import MmState, MmStruct, Vma
from pudthp_ref.mmap import split_vma_at, vma_merge_around
from pudthp_ref.pgtable import (
    entry_with,
    is_leaf,
    is_present_pte,
    is_zero,
    pmd_range,
    pte_range,
    pud_range,
    table_of,
)
from pudthp_ref.spec import ENOMEM, LEVEL_PMD, LEVEL_PTE, Result


def sys_mprotect(st: MmState, mm: MmStruct, start: int, npages: int, prot: str) -> Result:
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


def mprotect_fixup(st: MmState, mm: MmStruct, vma: Vma, start: int, end: int, prot: str) -> None:
    if vma.prot == prot:
        return  # newflags == oldflags: nothing to do, not even a split
    split_vma_at(st, mm, start)
    split_vma_at(st, mm, end)
    for v in mm.vmas:
        if start <= v.start and v.end <= end:
            v.prot = prot
    change_protection(st, mm, start, end, prot)
    vma_merge_around(mm, start, end)


def change_protection(st: MmState, mm: MmStruct, start: int, end: int, prot: str) -> None:
    """change_pud_range() / change_pmd_range() / change_pte_range().

    pte_modify() drops the write bit of a private mapping; with MM_CP_TRY_CHANGE_WRITABLE a
    PTE or PMD becomes writable again only over an AnonExclusive page
    (can_change_pte_writable / can_change_pmd_writable); a PUD never does.
    """
    g = st.geom
    pud_table = st.tables[mm.pud_table]
    for pi, addr, nxt in pud_range(g, start, end):
        pe = pud_table.entries[pi]
        if pe is None:
            continue
        if is_leaf(pe):
            if nxt - addr == g.pud_nr:
                change_huge_pud(st, pud_table, pi)
                continue
            __split_huge_pud_locked(st, mm, pud_table, pi)
        pmd_table = table_of(st, pud_table.entries[pi], LEVEL_PMD)
        for mi, a, b in pmd_range(g, addr, nxt):
            me = pmd_table.entries[mi]
            if me is None:
                continue
            if is_leaf(me) or is_zero(me):
                if b - a == g.pmd_nr:
                    change_huge_pmd(st, pmd_table, mi, prot)
                    continue
                __split_huge_pmd_locked(st, mm, pmd_table, mi)
            pte_table = table_of(st, pmd_table.entries[mi], LEVEL_PTE)
            for ti in pte_range(g, a, b):
                e = pte_table.entries[ti]
                if is_present_pte(e):
                    assert e is not None
                    folio = st.folios[e[1]]
                    write = prot == "rw" and folio.anon_exclusive[e[2]]
                    pte_table.entries[ti] = entry_with(e, write=write)
