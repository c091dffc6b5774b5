"""The fast generic page walk: mm/pagewalk.c walk_page_range() for walkers with a
pmd_entry and no pud_entry (madvise's pageout walk, mempolicy's queue_pages_range); a PUD
leaf in range is split first (``pudthp_ref.pagewalk`` says why)."""

from __future__ import annotations

from collections.abc import Callable

from pudthp_fast.huge_memory import __split_huge_pud_locked
from pudthp_fast.pgtable import pmd_range, pud_range, table_of
from pudthp_fast.state import LEAF, NONE, TABLE, FastMm, FastState
from pudthp_ref.spec import LEVEL_PMD

# pmd_entry(pmd_table, index, addr, next): one non-none PMD entry over [addr, next)
PmdEntry = Callable[[int, int, int, int], None]


def walk_page_range(st: FastState, mm: FastMm, start: int, end: int, pmd_entry: PmdEntry
                    ) -> None:
    g = st.geom
    pud = mm.pud_table
    for pi, addr, nxt in pud_range(g, start, end):
        if st.e_kind[st.row(pud), pi] == LEAF:
            __split_huge_pud_locked(st, mm, pud, pi)
        if st.e_kind[st.row(pud), pi] != TABLE:
            continue
        pmd = table_of(st, pud, pi, LEVEL_PMD)
        for mi, a, b in pmd_range(g, addr, nxt):
            if st.e_kind[st.row(pmd), mi] != NONE:
                pmd_entry(pmd, mi, a, b)
