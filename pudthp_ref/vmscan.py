"""Reclaim and swap: MADV_PAGEOUT (mm/madvise.c madvise_cold_or_pageout_pte_range),
reclaim_pages() / shrink_folio_list() (mm/vmscan.c), try_to_unmap_one() (mm/rmap.c),
swap slots (mm/swapfile.c) and do_swap_page() (mm/memory.c).

Reclaim is synchronous: a folio is added to the swap cache, unmapped into swap PTEs,
written, and leaves the swap cache and is freed within the operation.  Swap-in always
makes a fresh order-0 folio (the swap cache is never kept), so it is exclusive.
"""

from __future__ import annotations

from pudthp_ref.folio import folio_put
from pudthp_ref.huge_memory import __split_huge_pmd_locked, __split_huge_pud_locked
from pudthp_ref.huge_split import split_folio
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc, SwapSlot, Vma
from pudthp_ref.pgtable import (
    is_leaf,
    is_present_pte,
    is_table,
    mk_pte,
    mk_swp,
    table_of,
)
from pudthp_ref.rmap import LEVEL_PTE, folio_add_new_anon_rmap, folio_maybe_dma_pinned
from pudthp_ref.rmap import folio_remove_rmap as _remove_rmap
from pudthp_ref.spec import ModelBug
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event

# --------------------------------------------------------------------------------------
# Swap slots
# --------------------------------------------------------------------------------------


def swap_slot(st: MmState, slot: int) -> SwapSlot:
    s = st.swap.get(slot)
    if s is None:
        raise ModelBug("swap.bad_slot", f"swap entry names free slot {slot}")
    return s


def swap_duplicate(st: MmState, slot: int) -> None:
    """swap_duplicate(): fork shares the swap entry."""
    swap_slot(st, slot).count += 1


def free_swap_and_cache(st: MmState, slot: int) -> None:
    """free_swap_and_cache() / swap_free(): drop one count, free the slot at zero."""
    s = swap_slot(st, slot)
    s.count -= 1
    if s.count == 0:
        del st.swap[slot]


def folio_alloc_swap(st: MmState, folio: Folio) -> int | None:
    """folio_alloc_swap(): ``nr`` contiguous slots, or None.  A PUD-order folio never gets
    them (swap clusters stop at the PMD order)."""
    if folio.order > st.geom.pmd_order:
        return None
    if len(st.swap) + folio.nr > st.cfg.swap_capacity:
        return None
    base = st.next_swap_slot
    st.next_swap_slot += folio.nr
    for i in range(folio.nr):
        st.swap[base + i] = SwapSlot(base + i, 0, folio.data[i])
    return base


def do_swap_page(st: MmState, mm: MmStruct, vma: Vma, pte_table: PtDesc, ti: int) -> None:
    """do_swap_page(): a fresh order-0 folio with the slot's contents, mapped exclusive."""
    from pudthp_ref.memory import alloc_page_retrying

    e = pte_table.entries[ti]
    assert e is not None
    slot = swap_slot(st, e[1])
    folio = alloc_page_retrying(st)
    folio.data[0] = slot.data
    count_vm_event(st, "pswpin")
    folio_add_new_anon_rmap(st, folio, mm, exclusive=True)
    mm.rss_anon += 1
    mm.rss_swap -= 1
    pte_table.entries[ti] = mk_pte(folio.id, 0, False, False, True)
    free_swap_and_cache(st, e[1])


# --------------------------------------------------------------------------------------
# MADV_PAGEOUT
# --------------------------------------------------------------------------------------


def folio_maybe_mapped_shared(folio: Folio) -> bool:
    """folio_maybe_mapped_shared()."""
    if folio.order == 0:
        return folio.mapcount[0] + 1 > 1
    return folio.large_mapcount + 1 > 1 and folio.shared


def madvise_pageout(st: MmState, mm: MmStruct, start: int, end: int) -> None:
    """madvise_pageout() over one VMA part: walk, isolate, then reclaim_pages()."""
    if st.cfg.swap_capacity == 0:
        return  # MODEL.md 5.9: with swap disabled, pageout changes nothing
    g = st.geom
    pud_table = st.tables[mm.pud_table]
    isolated: list[Folio] = []
    for pi in range(g.pud_index(start), g.pud_index(end - 1) + 1):
        base = pi * g.pud_nr
        lo, hi = max(start, base), min(end, base + g.pud_nr)
        if is_leaf(pud_table.entries[pi]):
            # walk_pud_range(): no pud_entry, so a PUD leaf is split to PTEs first
            __split_huge_pud_locked(st, mm, pud_table, pi)
        if not is_table(pud_table.entries[pi]):
            continue
        pmd_table = table_of(st, pud_table.entries[pi], "pmd")
        for vpn in range(lo - lo % g.pmd_nr, hi, g.pmd_nr):
            mi = g.pmd_index(vpn)
            a, b = max(lo, vpn), min(hi, vpn + g.pmd_nr)
            me = pmd_table.entries[mi]
            if is_leaf(me):
                assert me is not None
                folio = st.folios[me[1]]
                if folio_maybe_mapped_shared(folio):
                    continue
                if b - a == g.pmd_nr:
                    pmd_table.entries[mi] = (*me[:-1], False)  # pmd_mkold()
                    isolate(isolated, folio)
                    continue
                if not split_folio(st, folio):
                    continue
                me = pmd_table.entries[mi]
            if not is_table(me):
                continue
            pageout_pte_range(st, table_of(st, me, "pte"), g.pte_index(a), b - a, isolated)
    reclaim_pages(st, isolated)


def isolate(isolated: list[Folio], folio: Folio) -> None:
    """folio_isolate_lru(): a folio goes on the list once."""
    if all(f is not folio for f in isolated):
        isolated.append(folio)


def pageout_pte_range(st: MmState, pte_table: PtDesc, first: int, n: int,
                      isolated: list[Folio]) -> None:
    """The PTE half of madvise_cold_or_pageout_pte_range()."""
    entries = pte_table.entries
    ti, last = first, first + n
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
                if folio_maybe_mapped_shared(folio):
                    ti += nr
                    continue
                if split_folio(st, folio):
                    continue  # nr = 0: look at the same PTE again, now order 0
                ti += nr
                continue
        # Do not interfere with other mappings of this folio.
        if (folio.large_mapcount + 1 if folio.order else folio.mapcount[0] + 1) != folio.nr:
            ti += nr
            continue
        for k in range(ti, ti + nr):
            x = entries[k]
            assert x is not None
            entries[k] = (*x[:-1], False)  # clear_young_dirty_ptes(CYDP_CLEAR_YOUNG)
        isolate(isolated, folio)
        ti += nr


def reclaim_pages(st: MmState, isolated: list[Folio]) -> None:
    """reclaim_pages() -> shrink_folio_list(): in isolation order; the tails of a folio split
    here are reclaimed right after their head, in page order."""
    todo = list(isolated)
    while todo:
        folio = todo.pop(0)
        if folio.freed or folio.refcount == 0:
            continue
        todo[0:0] = shrink_folio(st, folio)


def shrink_folio(st: MmState, folio: Folio) -> list[Folio]:
    """One anon folio through shrink_folio_list(); returns tails split off to reclaim next."""
    if folio_maybe_dma_pinned(folio):
        return []
    tails: list[Folio] = []
    if folio.order > 0:
        if folio.refcount != folio.large_mapcount + 1:  # can_split_folio()
            return []
        if folio.partially_mapped and folio.deferred:
            # Split partially mapped folios right away: the unmapped pages go without IO.
            split_off = split_to_list(st, folio)
            if split_off is None:
                return []
            tails = split_off
    slot = folio_alloc_swap(st, folio)
    if slot is None:
        if folio.order == 0:
            return tails
        order = folio.order
        split = split_to_list(st, folio)
        if split is None:
            return tails
        tails = split + tails
        if order >= st.geom.pmd_order:
            count_vm_event(st, "thp_swpout_fallback")
        count_mthp_stat(st, order, "swpout_fallback")
        slot = folio_alloc_swap(st, folio)
        if slot is None:
            return tails
    folio.swapcache = True
    folio.refcount += folio.nr  # add_to_swap(): the swap cache's references
    try_to_unmap(st, folio, slot)
    # pageout(): written synchronously
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


def split_to_list(st: MmState, folio: Folio) -> list[Folio] | None:
    """split_folio_to_list(): the head stays; the mapped tails come back to be reclaimed."""
    first_new = st.next_folio_id
    if not split_folio(st, folio):
        return None
    return [
        st.folios[i]
        for i in range(first_new, st.next_folio_id)
        if not st.folios[i].freed
    ]


def try_to_unmap(st: MmState, folio: Folio, slot: int) -> None:
    """try_to_unmap(TTU_SPLIT_HUGE_PMD | TTU_SPLIT_HUGE_PUD): every mapping becomes a swap
    PTE (swap_duplicate, MM_ANONPAGES -1, MM_SWAPENTS +1), rmap and reference dropped."""
    g = st.geom
    for mm in st.mms:
        if not mm.alive:
            continue
        pud_table = st.tables[mm.pud_table]
        for pi, pe in enumerate(pud_table.entries):
            if is_leaf(pe) and pe is not None and pe[1] == folio.id:
                __split_huge_pud_locked(st, mm, pud_table, pi)
            if not is_table(pud_table.entries[pi]):
                continue
            pmd_table = table_of(st, pud_table.entries[pi], "pmd")
            for mi in range(g.P):
                me = pmd_table.entries[mi]
                if is_leaf(me) and me is not None and me[1] == folio.id:
                    __split_huge_pmd_locked(st, mm, pmd_table, mi)
                    me = pmd_table.entries[mi]
                if not is_table(me):
                    continue
                pte_table = table_of(st, me, "pte")
                for ti, e in enumerate(pte_table.entries):
                    if e is not None and e[0] == "pte" and e[1] == folio.id:
                        page = e[2]
                        if e[4]:
                            folio.dirty = True
                        swap_slot(st, slot + page).count += 1
                        folio.anon_exclusive[page] = False  # folio_try_share_anon_rmap_pte
                        mm.rss_anon -= 1
                        mm.rss_swap += 1
                        pte_table.entries[ti] = mk_swp(slot + page)
                        _remove_rmap(st, folio, page, 1, mm, LEVEL_PTE)
                        folio.refcount -= 1
    for i in range(folio.nr):
        if st.swap[slot + i].count == 0:
            del st.swap[slot + i]  # an unmapped page of the folio needs no slot
