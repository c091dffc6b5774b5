"""Folio lifecycle: allocation (mm/page_alloc.c), references (mm/swap.c __folio_put) and
the deferred split queue (mm/huge_memory.c deferred_split_folio and its unqueue)."""

from __future__ import annotations

from pudthp_ref.mm_types import Folio, MmState
from pudthp_ref.spec import ModelBug
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event


def alloc_order_name(st: MmState, order: int) -> str | None:
    """The ``fail_alloc`` counter an allocation of ``order`` draws on; None for the mTHP
    orders, which no ``fail_alloc`` names (an order-0 injection must not fail them)."""
    if order == st.geom.pud_order:
        return "pud"
    if order == st.geom.pmd_order:
        return "pmd"
    if order == 0:
        return "base"
    return None


def folio_alloc(st: MmState, order: int, node: int = 0) -> Folio | None:
    """folio_alloc(): a zero-filled folio with refcount 1, or None when fail_alloc says so.

    The id is taken only on success: a failed allocation hands out nothing.
    """
    which = alloc_order_name(st, order)
    if which is not None and st.fail_alloc[which] > 0:
        st.fail_alloc[which] -= 1
        return None
    nr = 1 << order
    folio = Folio(
        id=st.next_folio_id,
        order=order,
        node=node,
        nr=nr,
        mapcount=[-1] * nr,
        anon_exclusive=[False] * nr,
        data=[0] * nr,
    )
    st.next_folio_id += 1
    st.folios[folio.id] = folio
    return folio


def folio_get(folio: Folio, refs: int = 1) -> None:
    """folio_get() / folio_ref_add()."""
    if folio.freed or folio.refcount <= 0:
        raise ModelBug("folio_get.freed", f"reference taken on freed folio {folio.id}")
    folio.refcount += refs


def folio_put(st: MmState, folio: Folio, refs: int = 1) -> None:
    """folio_put() / folio_put_refs(): frees the folio when the last reference goes."""
    folio.refcount -= refs
    if folio.refcount < 0:
        raise ModelBug("folio_put.underflow", f"folio {folio.id} refcount below zero")
    if folio.refcount == 0:
        free_folio(st, folio)


def free_folio(st: MmState, folio: Folio) -> None:
    """__folio_put(): unqueue from the deferred list, drop nr_anon, free-time checks."""
    folio_unqueue_deferred_split(st, folio)
    if folio.order > 0:
        count_mthp_stat(st, folio.order, "nr_anon", -1)
    # free_tail_page_prepare() / page_expected_state(): a folio must be unmapped when freed
    if (
        folio.mapcount.count(-1) != folio.nr
        or folio.entire_mapcount != -1
        or folio.large_mapcount != -1
        or folio.nr_pages_mapped != 0
        or folio.pincount != 0
        or folio.mm_id_mapcount != [-1, -1]
    ):
        raise ModelBug("free.still_mapped", f"folio {folio.id} freed while mapped or pinned")
    folio.freed = True
    folio.shared = False
    folio.mm_id = [0, 0]
    folio.anon_exclusive = [False] * folio.nr


def deferred_split_folio(st: MmState, folio: Folio, partially_mapped: bool) -> None:
    """deferred_split_folio(): queue a large folio, flagging it partially mapped once."""
    if folio.order <= 1:
        return
    if not partially_mapped and not st.cfg.shrink_underused:
        return
    if folio.swapcache:
        return
    if partially_mapped:
        if not folio.partially_mapped:
            folio.partially_mapped = True
            if folio.order >= st.geom.pmd_order:
                count_vm_event(st, "thp_deferred_split_page")
            count_mthp_stat(st, folio.order, "split_deferred")
            count_mthp_stat(st, folio.order, "nr_anon_partially_mapped", 1)
    elif folio.partially_mapped:
        # VM_WARN_ON_FOLIO(folio_test_partially_mapped(folio), folio)
        raise ModelBug("deferred_split.unflag", f"folio {folio.id} is already partially mapped")
    if not folio.deferred:
        folio.deferred = True
        st.deferred.append(folio.id)


def folio_unqueue_deferred_split(st: MmState, folio: Folio) -> None:
    """__folio_unqueue_deferred_split(): leave the queue, clear the partially-mapped flag."""
    if folio.deferred:
        st.deferred.remove(folio.id)
        folio.deferred = False
    if folio.partially_mapped:
        folio.partially_mapped = False
        count_mthp_stat(st, folio.order, "nr_anon_partially_mapped", -1)
