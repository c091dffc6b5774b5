"""The generic page walk: mm/pagewalk.c walk_page_range() for walkers with a pmd_entry and
no pud_entry (madvise's pageout walk, mempolicy's queue_pages_range).

walk_pud_range() splits a PUD leaf in range before descending, whether or not the range
covers it, since such walkers cannot handle one: the RFC's "page walk splits PUD leaves".
"""

from __future__ import annotations

from collections.abc import Callable

from pudthp_ref.huge_memory import __split_huge_pud_locked
from pudthp_ref.mm_types import MmState, MmStruct, PtDesc
from pudthp_ref.pgtable import is_leaf, is_table, pmd_range, pud_range, table_of
from pudthp_ref.spec import LEVEL_PMD

# pmd_entry(pmd_table, index, addr, next): one non-none PMD entry over [addr, next)
PmdEntry = Callable[[PtDesc, int, int, int], None]


def walk_page_range(st: MmState, mm: MmStruct, start: int, end: int, pmd_entry: PmdEntry
                    ) -> None:
    g = st.geom
    pud_table = st.tables[mm.pud_table]
    for pi, addr, nxt in pud_range(g, start, end):
        if is_leaf(pud_table.entries[pi]):
            __split_huge_pud_locked(st, mm, pud_table, pi)
        if not is_table(pud_table.entries[pi]):
            continue
        pmd_table = table_of(st, pud_table.entries[pi], LEVEL_PMD)
        for mi, a, b in pmd_range(g, addr, nxt):
            if pmd_table.entries[mi] is not None:
                pmd_entry(pmd_table, mi, a, b)
