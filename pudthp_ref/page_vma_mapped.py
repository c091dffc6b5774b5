"""The rmap walk over one folio's mappings: mm/rmap.c rmap_walk() with
mm/page_vma_mapped.c page_vma_mapped_walk(), as the RFC extends it for PUD leaves.

Used by try_to_migrate (folio split), try_to_unmap (reclaim) and migration alike.  There is
no PUD-level migration or swap entry, so a PUD leaf of the folio is split to PTEs first
(TTU_SPLIT_HUGE_PUD) and the walk goes on over its PTEs.  A PMD leaf is handed to the
caller, which may split it; the walk then re-reads the entry and, if it is now a table,
visits its PTEs, as page_vma_mapped_walk() restarts at PTE level.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from pudthp_ref.huge_memory import __split_huge_pud_locked
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc
from pudthp_ref.pgtable import is_leaf, is_table, table_of
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE


@dataclass(frozen=True, slots=True)
class MappedAt:
    """One mapping of the folio: ``table.entries[index]``; level "pmd" (a PMD leaf) or
    "pte" (a present PTE)."""

    mm: MmStruct
    table: PtDesc
    index: int
    level: str


def page_vma_mapped_walk(st: MmState, folio: Folio) -> Iterator[MappedAt]:
    """Every mapping of ``folio``, mms in id order and each mm in address order."""
    fid = folio.id
    for mm in st.mms:
        if not mm.alive:
            continue
        pud_table = st.tables[mm.pud_table]
        for pi, pe in enumerate(pud_table.entries):
            if is_leaf(pe) and pe is not None and pe[1] == fid:
                __split_huge_pud_locked(st, mm, pud_table, pi)
            if not is_table(pud_table.entries[pi]):
                continue
            pmd_table = table_of(st, pud_table.entries[pi], LEVEL_PMD)
            for mi in range(st.geom.P):
                me = pmd_table.entries[mi]
                if is_leaf(me) and me is not None and me[1] == fid:
                    yield MappedAt(mm, pmd_table, mi, LEVEL_PMD)
                    me = pmd_table.entries[mi]
                if not is_table(me):
                    continue
                pte_table = table_of(st, me, LEVEL_PTE)
                for ti, e in enumerate(pte_table.entries):
                    if e is not None and e[0] == "pte" and e[1] == fid:
                        yield MappedAt(mm, pte_table, ti, LEVEL_PTE)
