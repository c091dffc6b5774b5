"""Reclaim: MADV_PAGEOUT (mm/madvise.c madvise_cold_or_pageout_pte_range), reclaim_pages()
and shrink_folio_list() (mm/vmscan.c), try_to_unmap_one() (mm/rmap.c).

Reclaim is synchronous: a folio is added to the swap cache, unmapped into swap PTEs,
written, and leaves the swap cache and is freed within the operation.
"""

from __future__ import annotations

from collections import deque

from pudthp_ref.folio import folio_put
from pudthp_ref.huge_memory import __split_huge_pmd_locked
from pudthp_ref.huge_split import split_folio, split_folio_to_list
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc
from pudthp_ref.page_vma_mapped import page_vma_mapped_walk
from pudthp_ref.pagewalk import walk_page_range
from pudthp_ref.pgtable import (
    is_leaf,
    is_present_pte,
    is_table,
    mk_swp,
    pte_range,
    table_of,
)
from pudthp_ref.rmap import folio_maybe_dma_pinned, folio_remove_rmap
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE, ModelBug
from pudthp_ref.swapfile import folio_alloc_swap, swap_duplicate
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event

# Isolated folios in isolation order, each once (folio_isolate_lru() takes it off the LRU).
Isolated = dict[int, Folio]


def folio_maybe_mapped_shared(folio: Folio) -> bool:
    """folio_maybe_mapped_shared()."""
    if folio.order == 0:
        return folio.mapcount[0] + 1 > 1
    return folio.large_mapcount + 1 > 1 and folio.shared


def folio_mapcount(folio: Folio) -> int:
    """folio_mapcount(): page-table entries mapping the folio."""
    return folio.large_mapcount + 1 if folio.order else folio.mapcount[0] + 1


def madvise_pageout(st: MmState, mm: MmStruct, start: int, end: int) -> None:
    """madvise_pageout() over one VMA part: walk, isolate, then reclaim_pages()."""
    if st.cfg.swap_capacity == 0:
        return  # MODEL.md 5.9: with swap disabled, pageout changes nothing
    g = st.geom
    isolated: Isolated = {}

    def pmd_entry(pmd_table: PtDesc, mi: int, a: int, b: int) -> None:
        """madvise_cold_or_pageout_pte_range()."""
        me = pmd_table.entries[mi]
        if is_leaf(me):
            assert me is not None
            folio = st.folios[me[1]]
            if folio_maybe_mapped_shared(folio):
                return
            if b - a == g.pmd_nr:
                pmd_table.entries[mi] = (*me[:-1], False)  # pmd_mkold()
                isolated.setdefault(folio.id, folio)
                return
            if not split_folio(st, folio):
                return
            me = pmd_table.entries[mi]
        if is_table(me):
            pageout_pte_range(st, table_of(st, me, LEVEL_PTE), pte_range(g, a, b), isolated)

    walk_page_range(st, mm, start, end, pmd_entry)
    reclaim_pages(st, isolated)


def pageout_pte_range(st: MmState, pte_table: PtDesc, span: range, isolated: Isolated) -> None:
    """The PTE half of madvise_cold_or_pageout_pte_range()."""
    entries = pte_table.entries
    ti, last = span.start, span.stop
    while ti < last:
        e = entries[ti]
        if not is_present_pte(e):
            ti += 1
            continue
        assert e is not None
        folio = st.folios[e[1]]
        nr = 1
        if folio.order > 0:
            while ti + nr < last:  # madvise_folio_pte_batch()
                nx = entries[ti + nr]
                if nx is None or nx[0] != "pte" or nx[1] != folio.id or nx[2] != e[2] + nr:
                    break
                nr += 1
            if nr < folio.nr:
                if not folio_maybe_mapped_shared(folio) and split_folio(st, folio):
                    continue  # nr = 0: look at the same PTE again, now order 0
                ti += nr
                continue
        # Do not interfere with other mappings of this folio.
        if folio_mapcount(folio) == folio.nr:
            for k in range(ti, ti + nr):
                x = entries[k]
                assert x is not None
                entries[k] = (*x[:-1], False)  # clear_young_dirty_ptes(CYDP_CLEAR_YOUNG)
            isolated.setdefault(folio.id, folio)
        ti += nr


def reclaim_pages(st: MmState, isolated: Isolated) -> None:
    """reclaim_pages() -> shrink_folio_list(): in isolation order; the tails of a folio split
    here are reclaimed right after their head, in page order."""
    todo = deque(isolated.values())
    while todo:
        folio = todo.popleft()
        if not folio.freed:
            todo.extendleft(reversed(shrink_folio(st, folio)))


def shrink_folio(st: MmState, folio: Folio) -> list[Folio]:
    """One anon folio through shrink_folio_list(); returns tails split off to reclaim next."""
    if folio_maybe_dma_pinned(folio):
        return []
    tails: list[Folio] = []
    if folio.order > 0:
        if folio.refcount != folio_mapcount(folio):  # can_split_folio()
            return []
        if folio.partially_mapped and folio.deferred:
            # Split partially mapped folios right away: the unmapped pages go without IO.
            split_off = split_folio_to_list(st, folio)
            if split_off is None:
                return []
            tails = split_off
    slot = folio_alloc_swap(st, folio)
    if slot is None:
        if folio.order == 0:
            return tails
        order = folio.order
        split_off = split_folio_to_list(st, folio)
        if split_off is None:
            return tails
        tails = split_off + tails
        if order >= st.geom.pmd_order:
            count_vm_event(st, "thp_swpout_fallback")
        count_mthp_stat(st, order, "swpout_fallback")
        slot = folio_alloc_swap(st, folio)
        if slot is None:
            return tails
    folio.swapcache = True
    folio.refcount += folio.nr  # add_to_swap(): the swap cache's references
    try_to_unmap(st, folio, slot)
    # pageout() -> swap_writeout(): a zero-filled folio only sets its slots in the swap
    # zeromap (swap_zeromap_folio_set(), no IO, none of these counters); else it is written
    if folio.data.count(0) == folio.nr:
        for i in range(folio.nr):
            if slot + i in st.swap:
                st.swap[slot + i].zeromap = True
    else:
        if folio.order >= st.geom.pmd_order:
            count_vm_event(st, "thp_swpout")
        count_mthp_stat(st, folio.order, "swpout")
        count_vm_event(st, "pswpout", folio.nr)
    # __remove_mapping(): out of the swap cache, and the folio is freed
    folio.swapcache = False
    folio_put(st, folio, folio.nr)
    if not folio.freed:
        raise ModelBug("reclaim.not_freed", f"folio {folio.id} still referenced after swap-out")
    return tails


def try_to_unmap(st: MmState, folio: Folio, slot: int) -> None:
    """try_to_unmap(TTU_SPLIT_HUGE_PMD | TTU_SPLIT_HUGE_PUD): every mapping becomes a swap
    PTE (swap_duplicate, MM_ANONPAGES -1, MM_SWAPENTS +1), rmap and reference dropped."""
    for at in page_vma_mapped_walk(st, folio):
        if at.level == LEVEL_PMD:
            __split_huge_pmd_locked(st, at.mm, at.table, at.index)  # the walk goes on below
            continue
        e = at.table.entries[at.index]
        assert e is not None
        page = e[2]
        if e[4]:
            folio.dirty = True
        swap_duplicate(st, slot + page)
        folio.anon_exclusive[page] = False  # folio_try_share_anon_rmap_pte()
        at.mm.rss_anon -= 1
        at.mm.rss_swap += 1
        at.table.entries[at.index] = mk_swp(slot + page)
        folio_remove_rmap(st, folio, page, 1, at.mm, LEVEL_PTE)
        folio.refcount -= 1
    for i in range(folio.nr):
        if st.swap[slot + i].count == 0:
            del st.swap[slot + i]  # an unmapped page of the folio needs no slot
