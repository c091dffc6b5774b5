"""Fast reverse-map accounting: the biased mapcounts of mm/rmap.c with the two mm-id slots,
vectorised over page ranges of the pool (``pudthp_ref.rmap`` function by function).

Removing many single-PTE mappings of one folio in turn (as try_to_migrate_one and
try_to_unmap_one do) is folded into closed forms that give the same counters,
partial-mapping flag and mm-id slot state as the one-by-one sequence.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.folio import deferred_split_folio, free_folio
from pudthp_fast.state import Arr, FastMm, FastState
from pudthp_fast.vmstat import count_mthp_stat, mod_node_page_state
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    FOLIO_PAGES_MAPPED,
    GUP_PIN_COUNTING_BIAS,
    LEVEL_PMD,
    LEVEL_PTE,
    ModelBug,
)

# --------------------------------------------------------------------------------------
# mm-id slots (include/linux/rmap.h)
# --------------------------------------------------------------------------------------


def folio_add_large_mapcount(st: FastState, fid: int, diff: int, mm: FastMm) -> None:
    """folio_add_return_large_mapcount()."""
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
        if new_val != diff - 1:  # we might have other mappings already
            st.f_shared[fid] = True
    elif ids[1] == 0:
        ids[1] = mid
        cnt[1] = diff - 1
        st.f_shared[fid] = True  # slot 0 certainly has mappings as well


def folio_sub_large_mapcount(st: FastState, fid: int, diff: int, mm: FastMm) -> None:
    """folio_sub_return_large_mapcount(): SHARED is re-evaluated only when a slot frees."""
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


def _sub_large_mapcount_seq(st: FastState, fid: int, diffs: Arr, mm: FastMm) -> None:
    """folio_sub_large_mapcount() called once per entry of ``diffs``, in order.

    A tracked mm's slot only decreases until it would go negative (then it is freed); from
    that call on (or from the first, for an untracked mm) each call clears SHARED if a slot
    count equals the new raw total.
    """
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


# --------------------------------------------------------------------------------------
# Adding mappings
# --------------------------------------------------------------------------------------


def folio_add_new_anon_rmap(st: FastState, fid: int, mm: FastMm, exclusive: bool = True) -> None:
    """folio_add_new_anon_rmap(): a brand-new folio, mapped whole (small or PMD-mappable)."""
    order = int(st.f_order[fid])
    b = int(st.f_base[fid])
    if order == 0:
        st.p_mapcount[b] = 0
        if exclusive:
            st.p_exclusive[b] = True
        mod_node_page_state(st, "nr_anon_mapped", 1)
        return
    nr = int(st.f_nr[fid])
    st.f_entire[fid] = 0
    st.f_large[fid] = 0  # folio_set_large_mapcount(): every mapping in this mm's slot 0
    st.f_mmid[fid, 0] = mm.mm_id
    st.f_mmc[fid, 0] = 0
    st.f_npm[fid] = ENTIRELY_MAPPED
    if exclusive:
        st.p_exclusive[b] = True
    mod_node_page_state(st, "nr_anon_mapped", nr)
    mod_node_page_state(
        st, "nr_anon_pud_thps" if order == st.geom.pud_order else "nr_anon_thps", nr)
    count_mthp_stat(st, order, "nr_anon", 1)


def folio_add_anon_rmap(st: FastState, fid: int, first: int, n: int, mm: FastMm, level: str,
                        exclusive: bool) -> None:
    """__folio_add_anon_rmap(): __folio_add_rmap() and __folio_mod_stat(); RMAP_EXCLUSIVE
    marks every page (PTE) or the head (PMD/PUD)."""
    b = int(st.f_base[fid])
    order = int(st.f_order[fid])
    if level == LEVEL_PTE:
        if order == 0:
            st.p_mapcount[b] += 1
            if st.p_mapcount[b] == 0:
                mod_node_page_state(st, "nr_anon_mapped", 1)
        else:
            mc = st.p_mapcount[b + first : b + first + n]
            mc += 1
            became = int(np.count_nonzero(mc == 0))
            if became:
                st.f_npm[fid] += became
                if st.f_npm[fid] < ENTIRELY_MAPPED:
                    mod_node_page_state(st, "nr_anon_mapped", became)
            folio_add_large_mapcount(st, fid, n, mm)
        if exclusive:
            st.p_exclusive[b + first : b + first + n] = True
        return
    st.f_entire[fid] += 1
    if st.f_entire[fid] == 0:
        st.f_npm[fid] += ENTIRELY_MAPPED
        npm = int(st.f_npm[fid])
        if npm < 2 * ENTIRELY_MAPPED:
            nr = int(st.f_nr[fid])
            mod_node_page_state(
                st, "nr_anon_thps" if level == LEVEL_PMD else "nr_anon_pud_thps", nr)
            mod_node_page_state(st, "nr_anon_mapped", nr - (npm & FOLIO_PAGES_MAPPED))
    folio_add_large_mapcount(st, fid, 1, mm)
    if exclusive:
        st.p_exclusive[b] = True


# --------------------------------------------------------------------------------------
# Removing mappings
# --------------------------------------------------------------------------------------


def folio_remove_rmap(st: FastState, fid: int, first: int, n: int, mm: FastMm, level: str
                      ) -> None:
    """__folio_remove_rmap(): counters, stats, and deferred queueing of a partial mapping."""
    b = int(st.f_base[fid])
    nr = 0
    partially_mapped = False
    if level == LEVEL_PTE:
        if st.f_order[fid] == 0:
            st.p_mapcount[b] -= 1
            v = int(st.p_mapcount[b])
            if v < -1:
                raise ModelBug("rmap.mapcount_underflow", f"folio {fid} page 0")
            nr = 1 if v == -1 else 0
        else:
            folio_sub_large_mapcount(st, fid, n, mm)
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
        mod_node_page_state(st, "nr_anon_mapped", -nr)
    else:
        folio_sub_large_mapcount(st, fid, 1, mm)
        st.f_entire[fid] -= 1
        if st.f_entire[fid] < -1:
            raise ModelBug("rmap.entire_underflow", f"folio {fid}")
        if st.f_entire[fid] == -1:
            st.f_npm[fid] -= ENTIRELY_MAPPED
            npm = int(st.f_npm[fid])
            if npm < ENTIRELY_MAPPED:
                size = int(st.f_nr[fid])
                mod_node_page_state(
                    st, "nr_anon_thps" if level == LEVEL_PMD else "nr_anon_pud_thps", -size)
                nr = max(size - (npm & FOLIO_PAGES_MAPPED), 0)
                mod_node_page_state(st, "nr_anon_mapped", -nr)
        # the PMD rule at the PUD level too (pudthp_ref.rmap.folio_remove_rmap says why)
        partially_mapped = bool(nr) and nr < int(st.f_nr[fid])
    if partially_mapped and not st.f_partial[fid]:
        deferred_split_folio(st, fid, True)


def folio_remove_rmap_ptes_singly(st: FastState, fid: int, pages: Arr, mm: FastMm) -> None:
    """folio_remove_rmap_pte() for each page of ``pages`` in turn (distinct pages, all
    mapped in ``mm``), as try_to_migrate_one() and try_to_unmap_one() call it."""
    b = int(st.f_base[fid])
    if st.f_order[fid] == 0:
        folio_remove_rmap(st, fid, 0, 1, mm, LEVEL_PTE)
        return
    n = int(pages.size)
    _sub_large_mapcount_seq(st, fid, np.ones(n, np.int64), mm)
    mc = st.p_mapcount[b + pages]
    mc -= 1
    if np.count_nonzero(mc < -1):
        raise ModelBug("rmap.mapcount_underflow", f"folio {fid}")
    st.p_mapcount[b + pages] = mc
    last = int(np.count_nonzero(mc == -1))
    npm = int(st.f_npm[fid])
    if last:
        st.f_npm[fid] = npm - last
        if npm < ENTIRELY_MAPPED:
            mod_node_page_state(st, "nr_anon_mapped", -last)
            # the first page that became unmapped left npm - 1 pages mapped
            if npm >= 2 and not st.f_partial[fid]:
                deferred_split_folio(st, fid, True)


def folio_remove_rmap_ptes_batched(st: FastState, mm: FastMm, fids: Arr, firsts: Arr,
                                   lens: Arr) -> None:
    """folio_remove_rmap_ptes() and folio_put_refs() for each batch of a zap's large-folio
    PTEs: (folio, first page, length), in PTE order.  Nothing else touches a folio between
    its batches, so each folio's are folded at once: counters by sums, the mm-id slots by
    the sequence of subtractions, the partial-mapping flag raised at the first batch that
    unmaps a page while others stay mapped.  Flags are then raised in the order of those
    batches, and folios whose last reference went are freed."""
    groups: dict[int, list[int]] = {}  # folio -> its batches, in order
    for k, fid in enumerate(fids.tolist()):
        groups.setdefault(fid, []).append(k)
    flagged: list[tuple[int, int]] = []  # (batch, folio) where a flag was raised
    freed: list[int] = []
    for fid in sorted(groups):
        group = groups[fid]
        k = _remove_batches(st, fid, firsts[group], lens[group], mm)
        if k >= 0:
            flagged.append((group[k], fid))
        if st.f_ref[fid] == 0:
            freed.append(fid)
    for _, fid in sorted(flagged):
        deferred_split_folio(st, fid, True)
    for fid in freed:
        free_folio(st, fid)


def _remove_batches(st: FastState, fid: int, first_pages: Arr, lens: Arr, mm: FastMm) -> int:
    """One folio's batches, in order: the first batch that flags it partially mapped, or
    -1."""
    b = int(st.f_base[fid])
    total = int(lens.sum())
    offsets = np.cumsum(lens) - lens  # of each batch among the folio's pages
    p0 = int(first_pages[0])
    if not np.count_nonzero(first_pages - offsets != p0):  # one run of pages
        mc = st.p_mapcount[b + p0 : b + p0 + total]  # consecutive pages: a view
        if np.count_nonzero(mc < 0):
            raise ModelBug("rmap.mapcount_underflow", f"folio {fid}")
        last_per_batch = np.add.reduceat((mc == 0).astype(np.int64), offsets)
        mc -= 1
    else:
        pool = b + np.repeat(first_pages - offsets, lens) + np.arange(total)
        before = st.p_mapcount[pool]
        if np.count_nonzero(before < 0):
            raise ModelBug("rmap.mapcount_underflow", f"folio {fid}")
        st.p_mapcount[pool] = before - 1
        last_per_batch = np.add.reduceat((before == 0).astype(np.int64), offsets)
    _sub_large_mapcount_seq(st, fid, lens, mm)
    npm0 = int(st.f_npm[fid])
    total_last = int(last_per_batch.sum())
    st.f_npm[fid] = npm0 - total_last
    flagged = -1
    if npm0 < ENTIRELY_MAPPED and total_last:
        mod_node_page_state(st, "nr_anon_mapped", -total_last)
        k = int(np.argmax(last_per_batch > 0))  # the batches before it unmapped none
        if npm0 - int(last_per_batch[k]) != 0 and not st.f_partial[fid]:
            flagged = k
    st.f_ref[fid] -= total
    if st.f_ref[fid] < 0:
        raise ModelBug("folio_put.underflow", f"folio {fid} refcount below zero")
    return flagged


# --------------------------------------------------------------------------------------
# fork: include/linux/rmap.h __folio_try_dup_anon_rmap()
# --------------------------------------------------------------------------------------


def folio_maybe_dma_pinned(st: FastState, fid: int) -> bool:
    """folio_maybe_dma_pinned(): _pincount for large folios, the 1024 bias for small ones."""
    if st.f_order[fid] > 0:
        return bool(st.f_pin[fid] > 0)
    return bool(st.f_ref[fid] >= GUP_PIN_COUNTING_BIAS)


def folio_try_dup_anon_rmap(st: FastState, fid: int, first: int, n: int, dst: FastMm,
                            src: FastMm, level: str) -> bool:
    """__folio_try_dup_anon_rmap(): False (-EBUSY) for an exclusive page that may be pinned
    (folio_needs_cow_for_dma()); the caller holds the extra reference already."""
    maybe_pinned = src.has_pinned and folio_maybe_dma_pinned(st, fid)
    b = int(st.f_base[fid])
    if level == LEVEL_PTE:
        ex = st.p_exclusive[b + first : b + first + n]
        if maybe_pinned and np.count_nonzero(ex):
            return False
        ex[:] = False
        st.p_mapcount[b + first : b + first + n] += 1
        if st.f_order[fid] > 0:
            folio_add_large_mapcount(st, fid, n, dst)
        return True
    if st.p_exclusive[b]:
        if maybe_pinned:
            return False
        st.p_exclusive[b] = False
    st.f_entire[fid] += 1
    folio_add_large_mapcount(st, fid, 1, dst)
    return True
