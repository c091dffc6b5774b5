"""Fast reclaim: MADV_PAGEOUT (mm/madvise.c madvise_cold_or_pageout_pte_range),
reclaim_pages() and shrink_folio_list() of mm/vmscan.c, try_to_unmap() of mm/rmap.c, with
the PTEs of a folio in one PTE table unmapped at once."""

from __future__ import annotations

from collections import deque

import numpy as np

from pudthp_fast.folio import folio_put
from pudthp_fast.huge_memory import __split_huge_pmd_locked
from pudthp_fast.huge_split import split_folio_to_list
from pudthp_fast.page_vma_mapped import page_vma_mapped_walk
from pudthp_fast.pagewalk import walk_page_range
from pudthp_fast.rmap import folio_maybe_dma_pinned, folio_remove_rmap_ptes_singly
from pudthp_fast.state import (
    LEAF,
    PTE,
    SWAP,
    TABLE,
    Arr,
    D,
    FastMm,
    FastState,
    Y,
    add_at,
    set_entries,
)
from pudthp_fast.swapfile import folio_alloc_swap
from pudthp_fast.vmstat import count_mthp_stat, count_vm_event
from pudthp_ref.spec import LEVEL_PMD, ModelBug


def folio_mapcount(st: FastState, fid: int) -> int:
    """folio_mapcount(): page-table entries mapping the folio."""
    if st.f_order[fid]:
        return int(st.f_large[fid]) + 1
    return int(st.p_mapcount[int(st.f_base[fid])]) + 1


def folio_maybe_mapped_shared(st: FastState, fid: int) -> bool:
    """folio_maybe_mapped_shared()."""
    if st.f_order[fid] == 0:
        return folio_mapcount(st, fid) > 1
    return folio_mapcount(st, fid) > 1 and bool(st.f_shared[fid])


def folios_maybe_mapped_shared(st: FastState, fids: Arr) -> Arr:
    """folio_maybe_mapped_shared() of each folio."""
    small = st.f_order[fids] == 0
    mapcount = np.where(small, st.p_mapcount[st.f_base[fids]], st.f_large[fids]) + 1
    return (mapcount > 1) & (small | st.f_shared[fids])


def madvise_pageout(st: FastState, mm: FastMm, start: int, end: int) -> None:
    """madvise_pageout() over one VMA part: walk, isolate, then reclaim_pages()."""
    if st.cfg.swap_capacity == 0:
        return
    g = st.geom
    isolated: dict[int, None] = {}

    def pmd_entry(pmd: int, mi: int, a: int, b: int) -> None:
        """madvise_cold_or_pageout_pte_range()."""
        r = st.row(pmd)
        if st.e_kind[r, mi] == LEAF:
            fid = int(st.e_id[r, mi])
            if folio_maybe_mapped_shared(st, fid):
                return
            if b - a == g.pmd_nr:
                st.e_bits[r, mi] &= ~np.uint8(Y)  # pmd_mkold()
                isolated.setdefault(fid)
                return
            if split_folio_to_list(st, fid) is None:
                return
        r = st.row(pmd)
        if st.e_kind[r, mi] == TABLE:
            lo = a % g.P
            pageout_pte_range(st, int(st.e_id[r, mi]), lo, lo + (b - a), isolated)

    walk_page_range(st, mm, start, end, pmd_entry)
    reclaim_pages(st, list(isolated))


def pageout_pte_range(st: FastState, pte: int, lo: int, hi: int, isolated: dict[int, None]
                      ) -> None:
    """The PTE loop of madvise_cold_or_pageout_pte_range(): a large folio mapped only in
    part of the range is split (if not shared) and its PTEs looked at again."""
    ti = lo
    while ti < hi:
        r = st.row(pte)
        if st.e_kind[r, ti] != PTE:
            ti += 1
            continue
        fid = int(st.e_id[r, ti])
        page = int(st.e_page[r, ti])
        nr = 1
        nr_pages = int(st.f_nr[fid])
        if st.f_order[fid] > 0:
            m = hi - ti
            run = (st.e_kind[r, ti:hi] == PTE) & (st.e_id[r, ti:hi] == fid) & (
                st.e_page[r, ti:hi] == page + np.arange(m))
            bad = (~run).nonzero()[0]
            nr = int(bad[0]) if bad.size else m
            if nr < nr_pages:
                shared = folio_maybe_mapped_shared(st, fid)
                if not shared and split_folio_to_list(st, fid) is not None:
                    continue  # nr = 0: look at the same PTE again, now order 0
                ti += nr
                continue
        if folio_mapcount(st, fid) == nr_pages:
            st.e_bits[r, ti : ti + nr] &= ~np.uint8(Y)
            isolated.setdefault(fid)
        ti += nr


def reclaim_pages(st: FastState, isolated: list[int]) -> None:
    """reclaim_pages(): shrink each isolated folio in turn; pieces of a split go first."""
    todo = deque(isolated)
    while todo:
        fid = todo.popleft()
        if st.f_live[fid]:
            todo.extendleft(reversed(shrink_folio(st, fid)))


def shrink_folio(st: FastState, fid: int) -> list[int]:
    """shrink_folio_list() for one folio: swap it out (split first when partially mapped,
    or when no slots of its order can be had).  Returns the pieces of a split to reclaim."""
    if folio_maybe_dma_pinned(st, fid):
        return []
    tails: list[int] = []
    if st.f_order[fid] > 0:
        if st.f_ref[fid] != folio_mapcount(st, fid):
            return []
        if st.f_partial[fid] and st.f_deferred[fid]:
            got = split_folio_to_list(st, fid)
            if got is None:
                return []
            tails = got
    slot = folio_alloc_swap(st, fid)
    if not slot:
        if st.f_order[fid] == 0:
            return tails
        order = int(st.f_order[fid])
        got = split_folio_to_list(st, fid)
        if got is None:
            return tails
        tails = got + tails
        if order >= st.geom.pmd_order:
            count_vm_event(st, "thp_swpout_fallback")
        count_mthp_stat(st, order, "swpout_fallback")
        slot = folio_alloc_swap(st, fid)
        if not slot:
            return tails
    nr = int(st.f_nr[fid])
    st.f_swapcache[fid] = True
    st.f_ref[fid] += nr
    try_to_unmap(st, fid, slot)
    order = int(st.f_order[fid])
    b = int(st.f_base[fid])
    if not np.count_nonzero(st.p_data[b : b + nr]):  # zero-filled: the swap zeromap, no IO
        st.s_zero[slot : slot + nr] = st.s_count[slot : slot + nr] > 0
    else:
        if order >= st.geom.pmd_order:
            count_vm_event(st, "thp_swpout")
        count_mthp_stat(st, order, "swpout")
        count_vm_event(st, "pswpout", nr)
    st.f_swapcache[fid] = False
    folio_put(st, fid, nr)
    if st.f_live[fid]:
        raise ModelBug("reclaim.not_freed", f"folio {fid} still referenced after swap-out")
    return tails


def try_to_unmap(st: FastState, fid: int, slot: int) -> None:
    """try_to_unmap(TTU_SPLIT_HUGE_PMD): every PTE of the folio becomes a swap PTE of its
    page's slot; a PMD leaf is split first and the walk goes on below it."""
    for at in page_vma_mapped_walk(st, fid):
        if at.level == LEVEL_PMD:
            __split_huge_pmd_locked(st, at.mm, at.table, at.index)
            continue
        assert at.indices is not None
        t, idx = at.table, at.indices
        r = st.row(t)
        pages = st.e_page[r, idx].astype(np.int64)
        if np.count_nonzero(st.e_bits[r, idx] & D):
            st.f_dirty[fid] = True
        add_at(st.s_count, slot + pages, 1)
        st.p_exclusive[int(st.f_base[fid]) + pages] = False
        at.mm.rss_anon -= idx.size
        at.mm.rss_swap += idx.size
        set_entries(st, t, idx, SWAP, slot + pages)
        folio_remove_rmap_ptes_singly(st, fid, pages, at.mm)
        st.f_ref[fid] -= idx.size
    nr = int(st.f_nr[fid])
    unused = int(np.count_nonzero(st.s_count[slot : slot + nr] == 0))
    st.s_used -= unused
