"""Fast folios and rmap: allocation, references, the deferred split queue, and the biased
mapcounts of mm/rmap.c with the two mm-id slots, vectorised over page ranges of the pool."""

from __future__ import annotations

import numpy as np

from pudthp_fast.state import FastMm, FastState
from pudthp_ref.spec import ENTIRELY_MAPPED, FOLIO_PAGES_MAPPED, GUP_PIN_COUNTING_BIAS, ModelBug

PTE_LEVEL, PMD_LEVEL, PUD_LEVEL = "pte", "pmd", "pud"


def mthp_row(st: FastState, order: int) -> str | None:
    if order == st.geom.pmd_order:
        return "pmd"
    if order == st.geom.pud_order:
        return "pud"
    return None


def count_vm_event(st: FastState, item: str, delta: int = 1) -> None:
    st.stats["vmstat"][item] += delta


def count_mthp_stat(st: FastState, order: int, item: str, delta: int = 1) -> None:
    row = mthp_row(st, order)
    if row is not None:
        st.stats["mthp"][row][item] += delta


def mod_node(st: FastState, item: str, delta: int) -> None:
    if delta:
        st.stats["node"][item] += delta


# --------------------------------------------------------------------------------------
# Allocation and references
# --------------------------------------------------------------------------------------


def folio_alloc(st: FastState, order: int, node: int = 0) -> int:
    """folio_alloc(): a new zero-filled folio id, or 0 when fail_alloc refuses."""
    g = st.geom
    which = "pud" if order == g.pud_order else "pmd" if order == g.pmd_order else "base"
    if st.fail_alloc[which] > 0:
        st.fail_alloc[which] -= 1
        return 0
    nr = 1 << order
    fid = st.new_folio_rows(1)
    base = st.new_pages(nr)
    st.f_touch[fid] = True
    st.f_order[fid] = order
    st.f_node[fid] = node
    st.f_nr[fid] = nr
    st.f_base[fid] = base
    st.f_ref[fid] = 1
    st.f_live[fid] = True
    return fid


def folio_put(st: FastState, fid: int, refs: int = 1) -> None:
    st.f_touch[fid] = True
    st.f_ref[fid] -= refs
    r = int(st.f_ref[fid])
    if r < 0:
        raise ModelBug("folio_put.underflow", f"folio {fid} refcount below zero")
    if r == 0:
        free_folio(st, fid)


def free_folio(st: FastState, fid: int) -> None:
    """__folio_put(): unqueue, nr_anon, free-time checks."""
    st.f_touch[fid] = True
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


def free_folios_bulk(st: FastState, fids: np.ndarray) -> None:
    """free_folio() for many order-0 folios at once (none is queued or pinned)."""
    if fids.size == 0:
        return
    st.f_touch[fids] = True
    bases = st.f_base[fids]
    if np.count_nonzero(st.p_mapcount[bases] != -1) or np.count_nonzero(st.f_pin[fids]):
        raise ModelBug("free.still_mapped", "order-0 folio freed while mapped or pinned")
    st.f_live[fids] = False
    st.p_exclusive[bases] = False


def deferred_split_folio(st: FastState, fid: int, partially_mapped: bool) -> None:
    st.f_touch[fid] = True
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
    st.f_touch[fid] = True
    if st.f_deferred[fid]:
        st.deferred.remove(fid)
        st.f_deferred[fid] = False
    if st.f_partial[fid]:
        st.f_partial[fid] = False
        count_mthp_stat(st, int(st.f_order[fid]), "nr_anon_partially_mapped", -1)


# --------------------------------------------------------------------------------------
# mm-id slots
# --------------------------------------------------------------------------------------


def add_large_mapcount(st: FastState, fid: int, diff: int, mm: FastMm) -> None:
    """folio_add_return_large_mapcount()."""
    st.f_touch[fid] = True
    new_val = int(st.f_large[fid]) + diff
    st.f_large[fid] = new_val
    ids, cnt = st.f_mmid[fid], st.f_mmc[fid]
    mid = mm.mm_id
    if ids[0] == mid:
        cnt[0] += diff
    elif ids[1] == mid:
        cnt[1] += diff
    elif ids[0] == 0:
        ids[0] = mid
        cnt[0] = diff - 1
        if new_val != diff - 1:
            st.f_shared[fid] = True
    elif ids[1] == 0:
        ids[1] = mid
        cnt[1] = diff - 1
        st.f_shared[fid] = True


def sub_large_mapcount(st: FastState, fid: int, diff: int, mm: FastMm) -> None:
    """folio_sub_return_large_mapcount()."""
    st.f_touch[fid] = True
    new_val = int(st.f_large[fid]) - diff
    st.f_large[fid] = new_val
    ids, cnt = st.f_mmid[fid], st.f_mmc[fid]
    mid = mm.mm_id
    for i in (0, 1):
        if ids[i] == mid:
            cnt[i] -= diff
            if cnt[i] >= 0:
                return
            cnt[i] = -1
            ids[i] = 0
            break
    if cnt[0] == new_val or cnt[1] == new_val:
        st.f_shared[fid] = False


# --------------------------------------------------------------------------------------
# Adding and removing mappings
# --------------------------------------------------------------------------------------


def folio_add_new_anon_rmap(st: FastState, fid: int, mm: FastMm, exclusive: bool = True) -> None:
    st.f_touch[fid] = True
    order = int(st.f_order[fid])
    b = int(st.f_base[fid])
    if order == 0:
        st.p_mapcount[b] = 0
        if exclusive:
            st.p_exclusive[b] = True
        mod_node(st, "nr_anon_mapped", 1)
        return
    nr = int(st.f_nr[fid])
    st.f_entire[fid] = 0
    st.f_large[fid] = 0
    st.f_mmid[fid, 0] = mm.mm_id
    st.f_mmc[fid, 0] = 0
    st.f_npm[fid] = ENTIRELY_MAPPED
    if exclusive:
        st.p_exclusive[b] = True
    mod_node(st, "nr_anon_mapped", nr)
    mod_node(st, "nr_anon_pud_thps" if order == st.geom.pud_order else "nr_anon_thps", nr)
    count_mthp_stat(st, order, "nr_anon", 1)


def folio_add_rmap(st: FastState, fid: int, first: int, n: int, mm: FastMm, level: str,
                   exclusive: bool = False) -> None:
    """__folio_add_rmap() (+ RMAP_EXCLUSIVE marking, __folio_add_anon_rmap())."""
    st.f_touch[fid] = True
    b = int(st.f_base[fid])
    order = int(st.f_order[fid])
    if level == PTE_LEVEL:
        if order == 0:
            st.p_mapcount[b] += 1
            if st.p_mapcount[b] == 0:
                mod_node(st, "nr_anon_mapped", 1)
        else:
            mc = st.p_mapcount[b + first : b + first + n]
            mc += 1
            became = int(np.count_nonzero(mc == 0))
            if became:
                st.f_npm[fid] += became
                if st.f_npm[fid] < ENTIRELY_MAPPED:
                    mod_node(st, "nr_anon_mapped", became)
            add_large_mapcount(st, fid, n, mm)
        if exclusive:
            st.p_exclusive[b + first : b + first + n] = True
        return
    st.f_entire[fid] += 1
    if st.f_entire[fid] == 0:
        st.f_npm[fid] += ENTIRELY_MAPPED
        npm = int(st.f_npm[fid])
        if npm < 2 * ENTIRELY_MAPPED:
            nr = int(st.f_nr[fid])
            mod_node(st, "nr_anon_thps" if level == PMD_LEVEL else "nr_anon_pud_thps", nr)
            mod_node(st, "nr_anon_mapped", nr - (npm & FOLIO_PAGES_MAPPED))
    add_large_mapcount(st, fid, 1, mm)
    if exclusive:
        st.p_exclusive[b] = True


def folio_remove_rmap(st: FastState, fid: int, first: int, n: int, mm: FastMm, level: str
                      ) -> None:
    """__folio_remove_rmap(): counters, stats, deferred queueing of a partial mapping."""
    st.f_touch[fid] = True
    b = int(st.f_base[fid])
    nr = 0
    partially_mapped = False
    if level == PTE_LEVEL:
        if st.f_order[fid] == 0:
            st.p_mapcount[b] -= 1
            v = int(st.p_mapcount[b])
            if v < -1:
                raise ModelBug("rmap.mapcount_underflow", f"folio {fid} page 0")
            nr = 1 if v == -1 else 0
        else:
            sub_large_mapcount(st, fid, n, mm)
            mc = st.p_mapcount[b + first : b + first + n]
            mc -= 1
            if n and int(mc.min()) < -1:
                raise ModelBug("rmap.mapcount_underflow", f"folio {fid}")
            last = int(np.count_nonzero(mc == -1))
            if last:
                st.f_npm[fid] -= last
                if st.f_npm[fid] < ENTIRELY_MAPPED:
                    nr = last
            partially_mapped = bool(nr) and int(st.f_npm[fid]) != 0
        mod_node(st, "nr_anon_mapped", -nr)
    else:
        sub_large_mapcount(st, fid, 1, mm)
        st.f_entire[fid] -= 1
        if st.f_entire[fid] < -1:
            raise ModelBug("rmap.entire_underflow", f"folio {fid}")
        if st.f_entire[fid] == -1:
            st.f_npm[fid] -= ENTIRELY_MAPPED
            npm = int(st.f_npm[fid])
            if npm < ENTIRELY_MAPPED:
                size = int(st.f_nr[fid])
                mod_node(st, "nr_anon_thps" if level == PMD_LEVEL else "nr_anon_pud_thps", -size)
                nr = max(size - (npm & FOLIO_PAGES_MAPPED), 0)
                mod_node(st, "nr_anon_mapped", -nr)
        partially_mapped = bool(nr) and nr < int(st.f_nr[fid])
    if partially_mapped and not st.f_partial[fid]:
        deferred_split_folio(st, fid, True)


def folio_maybe_dma_pinned(st: FastState, fid: int) -> bool:
    if st.f_order[fid] > 0:
        return bool(st.f_pin[fid] > 0)
    return bool(st.f_ref[fid] >= GUP_PIN_COUNTING_BIAS)


def folio_try_dup_anon_rmap(st: FastState, fid: int, first: int, n: int, dst: FastMm,
                            src: FastMm, level: str) -> bool:
    st.f_touch[fid] = True
    maybe_pinned = src.has_pinned and folio_maybe_dma_pinned(st, fid)
    b = int(st.f_base[fid])
    if level == PTE_LEVEL:
        ex = st.p_exclusive[b + first : b + first + n]
        if maybe_pinned and np.count_nonzero(ex):
            return False
        ex[:] = False
        st.p_mapcount[b + first : b + first + n] += 1
        if st.f_order[fid] > 0:
            add_large_mapcount(st, fid, n, dst)
        return True
    if st.p_exclusive[b]:
        if maybe_pinned:
            return False
        st.p_exclusive[b] = False
    st.f_entire[fid] += 1
    add_large_mapcount(st, fid, 1, dst)
    return True


def sub_large_mapcount_seq(st: FastState, fid: int, diffs: np.ndarray, mm: FastMm) -> None:
    """folio_sub_return_large_mapcount() called once per entry of ``diffs``, in order.

    A tracked mm's slot only decreases until it would go negative (then it is freed); from
    that call on (or from the first, for an untracked mm) each call clears SHARED if a slot
    count equals the new raw total.
    """
    st.f_touch[fid] = True
    L = int(st.f_large[fid])
    sums = np.cumsum(diffs)
    st.f_large[fid] = L - int(sums[-1])
    ids, cnt = st.f_mmid[fid], st.f_mmc[fid]
    mid = mm.mm_id
    j0 = 0
    for i in (0, 1):
        if ids[i] == mid:
            c = int(cnt[i])
            if c - int(sums[-1]) >= 0:
                cnt[i] = c - int(sums[-1])
                return
            j0 = int(np.argmax(sums > c))  # the call that frees the slot
            cnt[i] = -1
            ids[i] = 0
            break
    new_vals = L - sums[j0:]
    if np.count_nonzero((new_vals == int(cnt[0])) | (new_vals == int(cnt[1]))):
        st.f_shared[fid] = False
