"""The fast rmap walk over one folio's mappings: mm/rmap.c rmap_walk() with
mm/page_vma_mapped.c page_vma_mapped_walk(), as the RFC extends it for PUD leaves.

mms in id order, each in address order.  A PUD leaf of the folio is split to PTEs first
(there is no PUD-level migration or swap entry); a PMD leaf is handed to the caller, which
may split it, and the walk then visits the PTE table in its place.  The PTEs of the folio
in one PTE table are handed out together, as one ``MappedAt``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from pudthp_fast.huge_memory import __split_huge_pud_locked
from pudthp_fast.pgtable import table_of
from pudthp_fast.state import LEAF, PTE, TABLE, Arr, FastMm, FastState
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE


@dataclass(slots=True)
class MappedAt:
    """Mappings of the folio in one table: a PMD leaf at ``index`` (level "pmd"), or the
    present PTEs at ``indices`` (level "pte")."""

    mm: FastMm
    table: int
    level: str
    index: int = 0
    indices: Arr | None = None


def page_vma_mapped_walk(st: FastState, fid: int) -> Iterator[MappedAt]:
    """Every mapping of folio ``fid``, mms in id order and each mm in address order."""
    for mm in st.mms:
        if not mm.alive:
            continue
        pud = mm.pud_table
        r = st.row(pud)
        kinds = st.e_kind[r]
        cand = (((kinds == LEAF) & (st.e_id[r] == fid)) | (kinds == TABLE)).nonzero()[0]
        for pi in cand.tolist():
            if st.e_kind[st.row(pud), pi] == LEAF:
                __split_huge_pud_locked(st, mm, pud, pi)
            pmd = table_of(st, pud, pi, LEVEL_PMD)
            mr = st.row(pmd)
            k = st.e_kind[mr]
            leaf = (k == LEAF) & (st.e_id[mr] == fid)
            tab = k == TABLE
            has = np.zeros(st.P, bool)
            if np.count_nonzero(tab):
                kr = st.t_row[st.e_id[mr][tab]]
                has[tab] = ((st.e_kind[kr] == PTE) & (st.e_id[kr] == fid)).any(axis=1)
            for mi in (leaf | has).nonzero()[0].tolist():
                if st.e_kind[st.row(pmd), mi] == LEAF:
                    yield MappedAt(mm, pmd, LEVEL_PMD, mi)
                if st.e_kind[st.row(pmd), mi] == TABLE:
                    pte = int(st.e_id[st.row(pmd), mi])
                    pr = st.row(pte)
                    idx = ((st.e_kind[pr] == PTE) & (st.e_id[pr] == fid)).nonzero()[0]
                    if idx.size:
                        yield MappedAt(mm, pte, LEVEL_PTE, indices=idx)
