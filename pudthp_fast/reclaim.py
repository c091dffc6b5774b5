"""Fast folio split, shrinker, reclaim with swap, migration and pins: the paths of
mm/huge_memory.c __folio_split, mm/vmscan.c, mm/rmap.c try_to_{unmap,migrate}, mm/migrate.c
and mm/gup.c, with the per-PTE work of a whole PTE table done at once.

The rmap walk hands out whole PTE segments.  Removing a segment's PTEs one by one (as
try_to_migrate_one / try_to_unmap_one do) is folded into closed forms that give the same
counters, partial-mapping flag and mm-id slot state as the one-by-one sequence.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from pudthp_fast.huge_memory import (
    install_table,
    set_entries,
    set_entry,
    split_huge_pmd_locked,
    split_huge_pud_locked,
)
from pudthp_fast.memory import follow_page
from pudthp_fast.pgtable import pgtable_trans_huge_withdraw, pmd_range, pud_range, table_at
from pudthp_fast.rmap import (
    PMD_LEVEL,
    PTE_LEVEL,
    add_large_mapcount,
    count_mthp_stat,
    count_vm_event,
    deferred_split_folio,
    folio_add_rmap,
    folio_alloc,
    folio_maybe_dma_pinned,
    folio_put,
    folio_remove_rmap,
    folio_unqueue_deferred_split,
    free_folio,
    free_folios_bulk,
    mod_node,
    sub_large_mapcount_seq,
)
from pudthp_fast.state import (
    LEAF,
    LV_PMD,
    NONE,
    PTE,
    SWAP,
    TABLE,
    ZERO,
    Arr,
    D,
    FastMm,
    FastState,
    W,
    add_at,
)
from pudthp_ref.spec import EBUSY, EINVAL, ENTIRELY_MAPPED, ModelBug, Result

# --------------------------------------------------------------------------------------
# The rmap walk: mms in id order, each in address order; PUD leaves split on the way
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Hit:
    mm: FastMm
    table: int
    level: str  # "pmd": a PMD leaf at ``index``; "pte": present PTEs at ``indices``
    index: int = 0
    indices: np.ndarray | None = None


def folio_ptes(st: FastState, table: int, fid: int) -> np.ndarray:
    r = st.row(table)
    return ((st.e_kind[r] == PTE) & (st.e_id[r] == fid)).nonzero()[0]


def page_vma_mapped_walk(st: FastState, fid: int) -> Iterator[Hit]:
    for mm in st.mms:
        if not mm.alive:
            continue
        pud = mm.pud_table
        kinds = st.e_kind[st.row(pud)]
        cand = (((kinds == LEAF) & (st.e_id[st.row(pud)] == fid)) | (kinds == TABLE)).nonzero()[0]
        for pi in cand.tolist():
            if st.e_kind[st.row(pud), pi] == LEAF:
                split_huge_pud_locked(st, mm, pud, pi)
            pmd = table_at(st, pud, pi, LV_PMD)
            k = st.e_kind[st.row(pmd)]
            leaf = (k == LEAF) & (st.e_id[st.row(pmd)] == fid)
            tab = k == TABLE
            has = np.zeros(st.P, bool)
            if np.count_nonzero(tab):
                kids = st.e_id[st.row(pmd)][tab]
                kr = st.t_row[kids]
                has[tab] = ((st.e_kind[kr] == PTE) & (st.e_id[kr] == fid)).any(axis=1)
            for mi in (leaf | has).nonzero()[0].tolist():
                if st.e_kind[st.row(pmd), mi] == LEAF:
                    yield Hit(mm, pmd, "pmd", mi)
                if st.e_kind[st.row(pmd), mi] == TABLE:
                    pte = int(st.e_id[st.row(pmd), mi])
                    idx = folio_ptes(st, pte, fid)
                    if idx.size:
                        yield Hit(mm, pte, "pte", indices=idx)


def remove_ptes_singly(st: FastState, fid: int, pages: np.ndarray, mm: FastMm) -> None:
    """folio_remove_rmap_pte() for each page in turn (distinct pages of one mm)."""
    b = int(st.f_base[fid])
    if st.f_order[fid] == 0:
        folio_remove_rmap(st, fid, 0, 1, mm, PTE_LEVEL)
        return
    n = int(pages.size)
    sub_large_mapcount_seq(st, fid, np.ones(n, np.int64), mm)
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
            mod_node(st, "nr_anon_mapped", -last)
            # the first page that became unmapped left npm - 1 pages mapped
            if npm >= 2 and not st.f_partial[fid]:
                deferred_split_folio(st, fid, True)


# --------------------------------------------------------------------------------------
# Migration entries
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Migration:
    """Migration entries of one segment: PTEs at ``indices`` of ``table`` (pages, bits and
    the exclusive entry type per entry), or one PMD entry (``indices`` None)."""

    mm: FastMm
    table: int
    level: str
    index: int
    indices: np.ndarray
    pages: np.ndarray
    bits: np.ndarray
    exclusive: np.ndarray


def try_to_migrate_ptes(st: FastState, fid: int, hit: Hit) -> Migration:
    assert hit.indices is not None
    t, idx = hit.table, hit.indices
    pages = st.e_page[st.row(t), idx].astype(np.int64)
    bits = st.e_bits[st.row(t), idx].copy()
    b = int(st.f_base[fid])
    st.f_touch[fid] = True
    exclusive = st.p_exclusive[b + pages] | ((bits & W) != 0)
    st.p_exclusive[b + pages] = False
    if (bits & D).any():
        st.f_dirty[fid] = True
    r_t = st.wrow(t)
    st.e_kind[r_t, idx] = NONE
    remove_ptes_singly(st, fid, pages, hit.mm)
    st.f_ref[fid] -= idx.size
    return Migration(hit.mm, t, PTE_LEVEL, 0, idx, pages, bits, exclusive)


def set_pmd_migration_entry(st: FastState, fid: int, hit: Hit) -> Migration:
    t, mi = hit.table, hit.index
    bits = int(st.e_bits[st.row(t), mi])
    b = int(st.f_base[fid])
    st.f_touch[fid] = True
    exclusive = bool(st.p_exclusive[b]) or bool(bits & W)
    st.p_exclusive[b] = False
    if bits & D:
        st.f_dirty[fid] = True
    set_entry(st, t, mi, NONE)
    folio_remove_rmap(st, fid, 0, int(st.f_nr[fid]), hit.mm, PMD_LEVEL)
    st.f_ref[fid] -= 1
    z = np.zeros(1, np.int64)
    return Migration(hit.mm, t, PMD_LEVEL, mi, z, z, np.array([bits], np.uint8),
                     np.array([exclusive]))


def split_huge_pmd_freeze(st: FastState, fid: int, hit: Hit) -> Migration:
    count_vm_event(st, "thp_split_pmd")
    pmd = set_pmd_migration_entry(st, fid, hit)
    pte = pgtable_trans_huge_withdraw(st, hit.table)
    install_table(st, hit.table, hit.index, pte, int(st.t_addr[hit.table]) + hit.index * st.P)
    nr = int(st.f_nr[fid])
    idx = np.arange(nr, dtype=np.int64)
    return Migration(hit.mm, pte, PTE_LEVEL, 0, idx, idx.copy(),
                     np.full(nr, pmd.bits[0], np.uint8), np.full(nr, bool(pmd.exclusive[0])))


def remove_migration_entries(st: FastState, m: Migration, fid: int) -> None:
    """remove_migration_ptes()/pmd() onto ``fid`` (same page numbers)."""
    st.f_touch[fid] = True
    if m.level == PMD_LEVEL:
        st.f_ref[fid] += 1
        set_entry(st, m.table, m.index, LEAF, fid, 0, int(m.bits[0]))
        folio_add_rmap(st, fid, 0, int(st.f_nr[fid]), m.mm, PMD_LEVEL, bool(m.exclusive[0]))
        return
    st.f_ref[fid] += m.indices.size
    r_m_table = st.wrow(m.table)
    st.e_kind[r_m_table, m.indices] = PTE
    st.e_id[r_m_table, m.indices] = fid
    st.e_page[r_m_table, m.indices] = m.pages
    st.e_bits[r_m_table, m.indices] = m.bits
    restore_pte_rmaps(st, fid, m)


def restore_pte_rmaps(st: FastState, fid: int, m: Migration) -> None:
    """folio_add_anon_rmap_pte() per entry, RMAP_EXCLUSIVE as the entry type says."""
    b = int(st.f_base[fid])
    if st.f_order[fid] == 0:
        for e in m.exclusive.tolist():
            folio_add_rmap(st, fid, 0, 1, m.mm, PTE_LEVEL, e)
        return
    pool = b + m.pages
    mc = st.p_mapcount[pool] + 1
    st.p_mapcount[pool] = mc
    became = int(np.count_nonzero(mc == 0))
    if became:
        st.f_npm[fid] += became
        if st.f_npm[fid] < ENTIRELY_MAPPED:
            mod_node(st, "nr_anon_mapped", became)
    add_large_mapcount(st, fid, int(m.pages.size), m.mm)
    st.p_exclusive[pool[m.exclusive]] = True


# --------------------------------------------------------------------------------------
# Folio split
# --------------------------------------------------------------------------------------


def sys_split_folio(st: FastState, mm: FastMm, vpn: int) -> Result:
    if vpn >= st.geom.space:
        return EINVAL
    loc = follow_page(st, mm, vpn)
    if loc is None:
        return EINVAL
    r = st.row(loc[0])
    if st.e_kind[r, loc[1]] == ZERO:
        return EINVAL
    fid = int(st.e_id[r, loc[1]])
    if st.f_order[fid] == 0:
        return EINVAL
    return 0 if split_folio_to_list(st, fid) is not None else EBUSY


def split_failed(st: FastState, fid: int) -> None:
    count_mthp_stat(st, int(st.f_order[fid]), "split_failed")
    if st.f_order[fid] == st.geom.pmd_order:
        count_vm_event(st, "thp_split_page_failed")


def split_folio_to_list(st: FastState, fid: int) -> list[int] | None:
    """__folio_split() to order 0: the mapped tail folio ids, or None when it cannot."""
    expected = int(st.f_large[fid]) + 1 + (int(st.f_nr[fid]) if st.f_swapcache[fid] else 0)
    if st.f_ref[fid] != expected:
        split_failed(st, fid)
        return None
    migration = unmap_folio(st, fid)
    if st.f_ref[fid] != 0:
        for m in migration:
            remove_migration_entries(st, m, fid)
        split_failed(st, fid)
        return None
    folio_unqueue_deferred_split(st, fid)
    first_new = split_unmapped_folio(st, fid)
    nr_new = st.next_folio - first_new
    remap_page(st, fid, first_new, migration)
    new = np.concatenate(([fid], np.arange(first_new, first_new + nr_new, dtype=np.int64)))
    dead = new[st.f_ref[new] == 0]
    free_folios_bulk(st, dead)
    tails = new[1:]
    return tails[st.f_live[tails]].tolist()


def unmap_folio(st: FastState, fid: int) -> list[Migration]:
    out: list[Migration] = []
    for hit in page_vma_mapped_walk(st, fid):
        if hit.level == PMD_LEVEL:
            out.append(split_huge_pmd_freeze(st, fid, hit))
        else:
            out.append(try_to_migrate_ptes(st, fid, hit))
    return out


def split_unmapped_folio(st: FastState, fid: int) -> int:
    """The head keeps ``fid``; tails become folios ``first..first+nr-2`` over the same
    pool pages.  Returns the first new id."""
    b, nr = int(st.f_base[fid]), int(st.f_nr[fid])
    if np.count_nonzero(st.p_mapcount[b : b + nr] != -1) or st.f_large[fid] != -1:
        raise ModelBug("split.still_mapped", f"folio {fid} mapped after unmap_folio()")
    order = int(st.f_order[fid])
    count_mthp_stat(st, order, "nr_anon", -1)
    count_mthp_stat(st, order, "split")
    if order == st.geom.pmd_order:
        count_vm_event(st, "thp_split_page")
    first = st.new_folio_rows(nr - 1)
    tails = slice(first, first + nr - 1)
    st.f_touch[fid] = True
    st.f_touch[tails] = True
    st.f_order[tails] = 0
    st.f_node[tails] = st.f_node[fid]
    st.f_nr[tails] = 1
    st.f_base[tails] = np.arange(b + 1, b + nr, dtype=np.int64)
    st.f_ref[tails] = 0
    st.f_dirty[tails] = st.f_dirty[fid]
    st.f_live[tails] = True
    st.f_order[fid] = 0
    st.f_nr[fid] = 1
    st.f_mmid[fid] = 0
    st.f_mmc[fid] = -1
    st.f_shared[fid] = False
    st.p_exclusive[b : b + nr] = False
    return first


def remap_page(st: FastState, head: int, first_new: int, migration: list[Migration]) -> None:
    """Each migration entry to its page's new order-0 folio, or the zero page if the page
    is zero-filled (MM_ANONPAGES -1)."""
    b = int(st.f_base[head])
    for m in migration:
        pool = b + m.pages
        zero = st.p_data[pool] == 0
        if np.count_nonzero(zero):
            set_entries(st, m.table, m.indices[zero], ZERO)
            m.mm.rss_anon -= int(np.count_nonzero(zero))
        keep = ~zero
        if not np.count_nonzero(keep):
            continue
        pages = m.pages[keep]
        fids = np.where(pages == 0, head, first_new + pages - 1)
        idx = m.indices[keep]
        r_m_table = st.wrow(m.table)
        st.e_kind[r_m_table, idx] = PTE
        st.e_id[r_m_table, idx] = fids
        st.e_page[r_m_table, idx] = 0
        st.e_bits[r_m_table, idx] = m.bits[keep]
        st.f_touch[fids] = True
        add_at(st.f_ref, fids, 1)
        kp = pool[keep]
        before = st.p_mapcount[kp].copy()
        add_at(st.p_mapcount, kp, 1)
        mod_node(st, "nr_anon_mapped", int(np.count_nonzero(before == -1)))
        st.p_exclusive[kp[m.exclusive[keep]]] = True


def deferred_split_scan(st: FastState) -> int:
    split = 0
    for fid in list(st.deferred):
        if st.f_partial[fid]:
            if split_folio_to_list(st, fid) is not None:
                split += 1
        else:
            st.f_touch[fid] = True
            st.deferred.remove(fid)
            st.f_deferred[fid] = False
    return split


# --------------------------------------------------------------------------------------
# Reclaim and swap
# --------------------------------------------------------------------------------------


def folio_mapcount(st: FastState, fid: int) -> int:
    if st.f_order[fid]:
        return int(st.f_large[fid]) + 1
    return int(st.p_mapcount[int(st.f_base[fid])]) + 1


def folio_maybe_mapped_shared(st: FastState, fid: int) -> bool:
    if st.f_order[fid] == 0:
        return folio_mapcount(st, fid) > 1
    return folio_mapcount(st, fid) > 1 and bool(st.f_shared[fid])


def folios_maybe_mapped_shared(st: FastState, fids: Arr) -> Arr:
    """folio_maybe_mapped_shared() of each folio."""
    small = st.f_order[fids] == 0
    mapcount = np.where(small, st.p_mapcount[st.f_base[fids]], st.f_large[fids]) + 1
    return (mapcount > 1) & (small | st.f_shared[fids])


PmdEntry = Callable[[int, int, int, int], None]


def walk_page_range(st: FastState, mm: FastMm, start: int, end: int, pmd_entry: PmdEntry
                    ) -> None:
    """walk_page_range() with a pmd_entry and no pud_entry: PUD leaves split first."""
    g = st.geom
    pud = mm.pud_table
    for pi, addr, nxt in pud_range(g, start, end):
        if st.e_kind[st.row(pud), pi] == LEAF:
            split_huge_pud_locked(st, mm, pud, pi)
        if st.e_kind[st.row(pud), pi] != TABLE:
            continue
        pmd = table_at(st, pud, pi, LV_PMD)
        for mi, a, b in pmd_range(g, addr, nxt):
            if st.e_kind[st.row(pmd), mi] != NONE:
                pmd_entry(pmd, mi, a, b)


def madvise_pageout(st: FastState, mm: FastMm, start: int, end: int) -> None:
    if st.cfg.swap_capacity == 0:
        return
    g = st.geom
    isolated: dict[int, None] = {}

    def pmd_entry(pmd: int, mi: int, a: int, b: int) -> None:
        if st.e_kind[st.row(pmd), mi] == LEAF:
            fid = int(st.e_id[st.row(pmd), mi])
            if folio_maybe_mapped_shared(st, fid):
                return
            if b - a == g.pmd_nr:
                r_pmd = st.wrow(pmd)
                st.e_bits[r_pmd, mi] &= ~np.uint8(4)  # pmd_mkold()
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
    ti = lo
    while ti < hi:
        if st.e_kind[st.row(pte), ti] != PTE:
            ti += 1
            continue
        fid = int(st.e_id[st.row(pte), ti])
        page = int(st.e_page[st.row(pte), ti])
        nr = 1
        nr_pages = int(st.f_nr[fid])
        if st.f_order[fid] > 0:
            m = hi - ti
            run = (st.e_kind[st.row(pte), ti:hi] == PTE) & (st.e_id[st.row(pte), ti:hi] == fid) & (
                st.e_page[st.row(pte), ti:hi] == page + np.arange(m)
            )
            bad = (~run).nonzero()[0]
            nr = int(bad[0]) if bad.size else m
            if nr < nr_pages:
                shared = folio_maybe_mapped_shared(st, fid)
                if not shared and split_folio_to_list(st, fid) is not None:
                    continue  # nr = 0: look at the same PTE again, now order 0
                ti += nr
                continue
        if folio_mapcount(st, fid) == nr_pages:
            r_pte = st.wrow(pte)
            st.e_bits[r_pte, ti : ti + nr] &= ~np.uint8(4)
            isolated.setdefault(fid)
        ti += nr


def reclaim_pages(st: FastState, isolated: list[int]) -> None:
    todo = deque(isolated)
    while todo:
        fid = todo.popleft()
        if st.f_live[fid]:
            todo.extendleft(reversed(shrink_folio(st, fid)))


def folio_alloc_swap(st: FastState, fid: int) -> int:
    if st.f_order[fid] > st.geom.pmd_order:
        return 0
    nr = int(st.f_nr[fid])
    if st.s_used + nr > st.cfg.swap_capacity:
        return 0
    base = st.new_slots(nr)
    b = int(st.f_base[fid])
    st.s_count[base : base + nr] = 0
    st.s_data[base : base + nr] = st.p_data[b : b + nr]
    st.s_used += nr
    return base


def shrink_folio(st: FastState, fid: int) -> list[int]:
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
    st.f_touch[fid] = True
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
    for hit in page_vma_mapped_walk(st, fid):
        if hit.level == PMD_LEVEL:
            split_huge_pmd_locked(st, hit.mm, hit.table, hit.index)  # the walk goes on below
            continue
        assert hit.indices is not None
        t, idx = hit.table, hit.indices
        pages = st.e_page[st.row(t), idx].astype(np.int64)
        st.f_touch[fid] = True
        if np.count_nonzero(st.e_bits[st.row(t), idx] & D):
            st.f_dirty[fid] = True
        add_at(st.s_count, slot + pages, 1)
        st.p_exclusive[int(st.f_base[fid]) + pages] = False
        hit.mm.rss_anon -= idx.size
        hit.mm.rss_swap += idx.size
        set_entries(st, t, idx, SWAP, slot + pages)
        remove_ptes_singly(st, fid, pages, hit.mm)
        st.f_ref[fid] -= idx.size
    nr = int(st.f_nr[fid])
    unused = int(np.count_nonzero(st.s_count[slot : slot + nr] == 0))
    st.s_used -= unused


# --------------------------------------------------------------------------------------
# Migration
# --------------------------------------------------------------------------------------


def sys_migrate(st: FastState, mm: FastMm, start: int, npages: int, node: int) -> Result:
    g = st.geom
    if node >= st.cfg.nodes or start + npages > g.space:
        return EINVAL
    queued: dict[int, None] = {}

    def queue(fid: int) -> None:
        if st.f_node[fid] != node and not folio_maybe_mapped_shared(st, fid):
            queued.setdefault(fid)

    def pmd_entry(pmd: int, mi: int, a: int, b: int) -> None:
        k = st.e_kind[st.row(pmd), mi]
        if k == LEAF:
            queue(int(st.e_id[st.row(pmd), mi]))
        elif k == TABLE:
            pte = int(st.e_id[st.row(pmd), mi])
            lo = a % g.P
            sel = np.flatnonzero(st.e_kind[st.row(pte), lo : lo + (b - a)] == PTE) + lo
            fids = st.e_id[st.row(pte), sel].astype(np.int64)
            if fids.size:
                _, first = np.unique(fids, return_index=True)
                fids = fids[np.sort(first)]  # each folio once, in walk order
                ok = (st.f_node[fids] != node) & ~folios_maybe_mapped_shared(st, fids)
                queued.update(dict.fromkeys(fids[ok].tolist()))

    for v in mm.vmas:
        lo, hi = max(v.start, start), min(v.end, start + npages)
        if lo < hi:
            walk_page_range(st, mm, lo, hi, pmd_entry)
    migrate_pages(st, list(queued), node)
    return 0


NR_MAX_MIGRATE_PAGES_RETRY = 10  # mm/migrate.c: 3 asynchronous passes, then 7 one by one


def migrate_pages(st: FastState, queued: list[int], node: int) -> None:
    """migrate_pages(): as the reference; a split's pieces are migrated right after it."""
    todo = deque(queued)
    while todo:
        fid = todo.popleft()
        if not st.f_live[fid]:
            continue
        order = int(st.f_order[fid])
        is_thp = order >= st.geom.pmd_order
        deferred_split = order > 1 and bool(st.f_deferred[fid]) and bool(st.f_partial[fid])
        if deferred_split:
            pieces = try_split_folio(st, fid)
            if pieces is not None:
                if is_thp:
                    migration_split_counted(st)
                todo.extendleft(reversed(pieces))
                continue
        if folio_maybe_dma_pinned(st, fid) or st.f_ref[fid] != folio_mapcount(st, fid):
            if deferred_split:  # every -EAGAIN pass tries the split again
                for _ in range(NR_MAX_MIGRATE_PAGES_RETRY - 1):
                    try_split_folio(st, fid)
            if is_thp:
                count_vm_event(st, "thp_migration_fail")
            continue
        dst = folio_alloc(st, order, node)
        if dst:
            move_folio(st, fid, dst)
            if is_thp:
                count_vm_event(st, "thp_migration_success")
            continue
        if order == 0:
            continue
        pieces = try_split_folio(st, fid)
        if pieces is None:
            if is_thp:
                count_vm_event(st, "thp_migration_fail")
            return
        if is_thp:
            migration_split_counted(st)
        todo.extendleft(reversed(pieces))


def try_split_folio(st: FastState, fid: int) -> list[int] | None:
    """try_split_folio(): the live pieces in migration-list order, the head last."""
    tails = split_folio_to_list(st, fid)
    if tails is None:
        return None
    return [*tails, fid] if st.f_live[fid] else tails


def migration_split_counted(st: FastState) -> None:
    count_vm_event(st, "thp_migration_split")
    count_vm_event(st, "thp_migration_fail")


def move_folio(st: FastState, src: int, dst: int) -> None:
    migration = [
        set_pmd_migration_entry(st, src, hit)
        if hit.level == PMD_LEVEL
        else try_to_migrate_ptes(st, src, hit)
        for hit in page_vma_mapped_walk(st, src)
    ]
    was_queued, was_partial = bool(st.f_deferred[src]), bool(st.f_partial[src])
    nr = int(st.f_nr[src])
    sb, db = int(st.f_base[src]), int(st.f_base[dst])
    st.p_data[db : db + nr] = st.p_data[sb : sb + nr]
    st.f_touch[dst] = True
    st.f_dirty[dst] = st.f_dirty[src]
    for m in migration:
        remove_migration_entries(st, m, dst)
    st.f_ref[dst] -= 1
    if st.f_order[dst] > 0:
        count_mthp_stat(st, int(st.f_order[dst]), "nr_anon", 1)
    if was_queued:
        folio_unqueue_deferred_split(st, src)
        deferred_split_folio(st, dst, was_partial)
    if st.f_ref[src] != 0:
        raise ModelBug("migrate.src_referenced", f"folio {src} referenced after the move")
    free_folio(st, src)

