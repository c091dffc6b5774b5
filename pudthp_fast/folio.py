"""Fast folio lifecycle: allocation (mm/page_alloc.c), references (mm/swap.c __folio_put)
and the deferred split queue (mm/huge_memory.c deferred_split_folio and its unqueue), over
the folio rows and the page pool."""

from __future__ import annotations

import numpy as np

from pudthp_fast.state import Arr, FastState
from pudthp_fast.vmstat import count_mthp_stat, count_vm_event
from pudthp_ref.spec import ModelBug


def folio_alloc(st: FastState, order: int, node: int = 0) -> int:
    """folio_alloc(): a new zero-filled folio id, or 0 when fail_alloc refuses.

    The id is taken only on success: a failed allocation hands out nothing.
    """
    g = st.geom  # alloc_order_name()
    which = "pud" if order == g.pud_order else "pmd" if order == g.pmd_order else "base"
    if st.fail_alloc[which] > 0:
        st.fail_alloc[which] -= 1
        return 0
    nr = 1 << order
    fid = st.new_folio_rows(1)
    base = st.new_pages(nr)
    st.f_order[fid] = order
    st.f_node[fid] = node
    st.f_nr[fid] = nr
    st.f_base[fid] = base
    st.f_ref[fid] = 1
    st.f_live[fid] = True
    return fid


def folio_put(st: FastState, fid: int, refs: int = 1) -> None:
    """folio_put() / folio_put_refs(): frees the folio when the last reference goes."""
    st.f_ref[fid] -= refs
    r = int(st.f_ref[fid])
    if r < 0:
        raise ModelBug("folio_put.underflow", f"folio {fid} refcount below zero")
    if r == 0:
        free_folio(st, fid)


def free_folio(st: FastState, fid: int) -> None:
    """__folio_put(): unqueue from the deferred list, drop nr_anon, free-time checks."""
    folio_unqueue_deferred_split(st, fid)
    order = int(st.f_order[fid])
    if order > 0:
        count_mthp_stat(st, order, "nr_anon", -1)
    b, n = int(st.f_base[fid]), int(st.f_nr[fid])
    if (
        np.count_nonzero(st.p_mapcount[b : b + n] != -1)
        or st.f_entire[fid] != -1
        or st.f_large[fid] != -1
        or st.f_npm[fid] != 0
        or st.f_pin[fid] != 0
        or np.count_nonzero(st.f_mmc[fid] != -1)
    ):
        raise ModelBug("free.still_mapped", f"folio {fid} freed while mapped or pinned")
    st.f_live[fid] = False
    st.f_shared[fid] = False
    st.f_mmid[fid] = 0
    st.p_exclusive[b : b + n] = False


def free_folios_bulk(st: FastState, fids: Arr) -> None:
    """free_folio() for many order-0 folios at once (none is queued or pinned)."""
    if fids.size == 0:
        return
    bases = st.f_base[fids]
    if np.count_nonzero(st.p_mapcount[bases] != -1) or np.count_nonzero(st.f_pin[fids]):
        raise ModelBug("free.still_mapped", "order-0 folio freed while mapped or pinned")
    st.f_live[fids] = False
    st.p_exclusive[bases] = False


def deferred_split_folio(st: FastState, fid: int, partially_mapped: bool) -> None:
    """deferred_split_folio(): queue a large folio, flagging it partially mapped once."""
    order = int(st.f_order[fid])
    if order <= 1:
        return
    if not partially_mapped and not st.cfg.shrink_underused:
        return
    if st.f_swapcache[fid]:
        return
    if partially_mapped:
        if not st.f_partial[fid]:
            st.f_partial[fid] = True
            if order >= st.geom.pmd_order:
                count_vm_event(st, "thp_deferred_split_page")
            count_mthp_stat(st, order, "split_deferred")
            count_mthp_stat(st, order, "nr_anon_partially_mapped", 1)
    elif st.f_partial[fid]:
        raise ModelBug("deferred_split.unflag", f"folio {fid} is already partially mapped")
    if not st.f_deferred[fid]:
        st.f_deferred[fid] = True
        st.deferred.append(fid)


def folio_unqueue_deferred_split(st: FastState, fid: int) -> None:
    """__folio_unqueue_deferred_split(): leave the queue, clear the partially-mapped flag."""
    if st.f_deferred[fid]:
        st.deferred.remove(fid)
        st.f_deferred[fid] = False
    if st.f_partial[fid]:
        st.f_partial[fid] = False
        count_mthp_stat(st, int(st.f_order[fid]), "nr_anon_partially_mapped", -1)
