"""Fast zap and page-table freeing: unmap_page_range() / zap_pte_range() of mm/memory.c
and free_pgtables() of mm/mmap.c, vectorised over PTE ranges.

A zap handles a PTE range as arrays: order-0 folios in bulk, large folios per run of
consecutive pages (folio_pte_batch) so that __folio_remove_rmap sees exactly the batches
the kernel makes; below ``SMALL`` entries (small geometry) as a Python loop to the same
effect.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.huge_memory import (
    set_entries,
    set_entry,
    split_huge_pmd_locked,
    split_huge_pud_locked,
    zap_huge_pmd,
    zap_huge_pud,
)
from pudthp_fast.pgtable import (
    check_child,
    pmd_entries,
    pmd_range,
    pt_free,
    pt_free_many,
    pte_segments,
    pud_range,
    range_mask,
    table_at,
    table_entries,
    tables_at,
)
from pudthp_fast.rmap import (
    deferred_split_folio,
    free_folio,
    free_folios_bulk,
    mod_node,
    sub_large_mapcount_seq,
)
from pudthp_fast.state import (
    LEAF,
    LV_PMD,
    LV_PTE,
    NONE,
    PTE,
    SMALL,
    SWAP,
    TABLE,
    ZERO,
    FastMm,
    FastState,
    add_at,
    unique,
)
from pudthp_ref.spec import ENTIRELY_MAPPED, ModelBug


def zap_page_range(st: FastState, mm: FastMm, start: int, end: int, reclaim_pt: bool = False
                   ) -> None:
    """unmap_page_range(): the PTE tables under one PMD table are zapped as one batch
    (flushed before any huge-leaf zap or split, so effects keep the kernel's order).

    ``reclaim_pt`` (MADV_DONTNEED, CONFIG_PT_RECLAIM): a PTE table whose whole PMD range
    is zapped is freed once empty (try_to_free_pte()).
    """
    g = st.geom
    pud = mm.pud_table
    for pi, addr, nxt in pud_range(g, start, end):
        k = st.e_kind[st.row(pud), pi]
        if k == NONE:
            continue
        if k == LEAF:
            if nxt - addr == g.pud_nr:
                zap_huge_pud(st, mm, pud, pi)
                continue
            split_huge_pud_locked(st, mm, pud, pi)
        pmd = table_at(st, pud, pi, LV_PMD)
        found = pte_segments(st, pmd, addr, nxt)
        if found is not None:  # PTE tables only: all at once
            segs = found
            zap_pte_segments(st, mm, segs)
            if reclaim_pt:
                reclaim_pte_tables(st, mm, pmd, segs)
            continue
        segs = []
        for mi, a, b in pmd_range(g, addr, nxt):
            k = st.e_kind[st.row(pmd), mi]
            if k == NONE:
                continue
            if k in (LEAF, ZERO):
                zap_pte_segments(st, mm, segs)
                if reclaim_pt:
                    reclaim_pte_tables(st, mm, pmd, segs)
                segs = []
                if b - a == g.pmd_nr:
                    zap_huge_pmd(st, mm, pmd, mi)
                    continue
                split_huge_pmd_locked(st, mm, pmd, mi)
            segs.append((table_at(st, pmd, mi, LV_PTE), a % g.P, a % g.P + (b - a)))
        zap_pte_segments(st, mm, segs)
        if reclaim_pt:
            reclaim_pte_tables(st, mm, pmd, segs)


def reclaim_pte_tables(st: FastState, mm: FastMm, pmd: int,
                       segs: list[tuple[int, int, int]]) -> None:
    """try_to_free_pte(): each fully zapped PTE table, now empty, leaves its PMD entry."""
    ptes = np.array([t for t, lo, hi in segs if hi - lo == st.P], np.int64)
    if not ptes.size:
        return
    ptes = ptes[~st.e_kind[st.t_row[ptes]].any(axis=1)]  # row 0 (no entries) is all none
    if ptes.size:
        set_entries(st, pmd, (st.t_addr[ptes] // st.P) % st.P, NONE)
        pt_free_many(st, mm, ptes)


def zap_pte_segments(st: FastState, mm: FastMm, segs: list[tuple[int, int, int]]) -> None:
    """zap_pte_range() over several PTE ranges, in order, at once.

    Order-0 folios go in bulk.  For a large folio, the kernel removes one batch
    (folio_pte_batch: consecutive pages within one PTE table) at a time; its sequence of
    batches is folded: counters by cumulative sums, the mm-id slots by
    sub_large_mapcount_seq, and the partial-mapping flag raised at the first batch that
    unmaps a page while others stay mapped (no entire mapping).  Newly queued folios are
    appended in the order their flags were raised.
    """
    if not segs:
        return
    if sum(b - a for _, a, b in segs) <= 8 * SMALL:
        n = 0
        for t, a, b in segs:
            r = st.row(t)
            if r:
                n += int(np.count_nonzero(st.e_kind[r, a:b]))
        if n == 0:
            return  # nothing mapped there: nothing changes
        if n <= SMALL:
            zap_pte_segments_small(st, mm, segs)
            return
    P = st.P
    rows = np.array([st.row(t) for t, _, _ in segs], np.int64)
    lo = np.array([a for _, a, _ in segs], np.int64)
    hi = np.array([b for _, _, b in segs], np.int64)
    kind2 = st.e_kind[rows]
    mask = range_mask(P, lo, hi)
    real = rows != 0  # row 0 (a table with no entries) is never written
    st.t_touch[[t for t, _, _ in segs]] = True
    if mask is None:
        kind = kind2.reshape(-1)
        ids = st.e_id[rows].reshape(-1)
        pages = st.e_page[rows].reshape(-1)
        st.e_kind[rows[real]] = NONE
    else:  # row-major order keeps the segments and their PTEs in order
        kind = kind2[mask]
        ids = st.e_id[rows][mask]
        pages = st.e_page[rows][mask]
        st.e_kind[rows[real]] = np.where(mask, NONE, kind2)[real]
    swap = kind == SWAP
    if np.count_nonzero(swap):
        slots = ids[swap]
        mm.rss_swap -= int(slots.size)
        add_at(st.s_count, slots, -1)
        st.s_used -= int(np.count_nonzero(st.s_count[unique(slots)] == 0))
    present = kind == PTE
    if not np.count_nonzero(present):
        return
    mm.rss_anon -= int(np.count_nonzero(present))
    # e_id is a slot number for swap entries: look folio orders up for present PTEs only
    small = present.copy()
    small[present] = st.f_order[ids[present]] == 0
    if np.count_nonzero(small):
        fids = ids[small]
        st.f_touch[fids] = True
        bases = st.f_base[fids]
        st.p_mapcount[bases] -= 1
        mod_node(st, "nr_anon_mapped", -int(np.count_nonzero(st.p_mapcount[bases] == -1)))
        add_at(st.f_ref, fids, -1)
        free_folios_bulk(st, fids[st.f_ref[fids] == 0])
    idx = (present & ~small).nonzero()[0]
    if idx.size:
        seg = np.repeat(np.arange(len(segs)), hi - lo)
        zap_large_batches(st, mm, ids[idx], pages[idx], seg[idx], idx)


def zap_pte_segments_small(st: FastState, mm: FastMm, segs: list[tuple[int, int, int]]
                           ) -> None:
    """``zap_pte_segments`` for a few PTEs, in Python, to the same effect."""
    swaps: list[int] = []
    small: list[int] = []
    large: list[tuple[int, int, int, int]] = []  # position, segment, folio, page
    pos = 0
    for si, (t, lo, hi) in enumerate(segs):
        r = st.row(t)
        K = st.e_kind[r, lo:hi].tolist() if r else []
        if any(K):
            I_ = st.e_id[r, lo:hi].tolist()
            G = st.e_page[r, lo:hi].tolist()
            st.t_touch[t] = True
            st.e_kind[r, lo:hi] = NONE
            for j, k in enumerate(K):
                if k == SWAP:
                    swaps.append(I_[j])
                elif k == PTE:
                    if st.f_order[I_[j]] == 0:
                        small.append(I_[j])
                    else:
                        large.append((pos + j, si, I_[j], G[j]))
        pos += hi - lo
    if swaps:
        mm.rss_swap -= len(swaps)
        for slot in swaps:
            st.s_count[slot] -= 1
        st.s_used -= sum(1 for slot in set(swaps) if st.s_count[slot] == 0)
    if not small and not large:
        return
    mm.rss_anon -= len(small) + len(large)
    if small:
        unmapped = 0
        dead = []
        for fid in small:
            b = int(st.f_base[fid])
            st.f_touch[fid] = True
            st.p_mapcount[b] -= 1
            if st.p_mapcount[b] == -1:
                unmapped += 1
            st.f_ref[fid] -= 1
            if st.f_ref[fid] == 0:
                dead.append(fid)
        mod_node(st, "nr_anon_mapped", -unmapped)
        free_folios_bulk(st, np.array(dead, np.int64))
    if large:
        zap_large_runs(st, mm, large)


def zap_large_runs(st: FastState, mm: FastMm, ptes: list[tuple[int, int, int, int]]) -> None:
    """``zap_large_batches`` for a few PTEs (position, segment, folio, page), in Python."""
    runs: list[list[int]] = []  # [folio, first page, length] in PTE order
    prev: tuple[int, int, int, int] | None = None
    for pos, si, fid, page in ptes:
        if (prev is not None and pos == prev[0] + 1 and si == prev[1] and fid == prev[2]
                and page == prev[3] + 1):
            runs[-1][2] += 1
        else:
            runs.append([fid, page, 1])
        prev = (pos, si, fid, page)
    by_folio: dict[int, list[int]] = {}
    for k, (fid, _page, _n) in enumerate(runs):
        by_folio.setdefault(fid, []).append(k)
    triggers: list[tuple[int, int]] = []
    freed: list[int] = []
    for fid in sorted(by_folio):
        ks = by_folio[fid]
        st.f_touch[fid] = True
        b = int(st.f_base[fid])
        last_per_run = []
        for k in ks:
            _f, page, n = runs[k]
            mc = st.p_mapcount[b + page : b + page + n]
            if np.count_nonzero(mc < 0):
                raise ModelBug("rmap.mapcount_underflow", f"folio {fid}")
            last_per_run.append(int(np.count_nonzero(mc == 0)))
            mc -= 1
        lens = [runs[k][2] for k in ks]
        sub_large_mapcount_seq(st, fid, np.array(lens, np.int64), mm)
        npm0 = int(st.f_npm[fid])
        total_last = sum(last_per_run)
        st.f_npm[fid] = npm0 - total_last
        if npm0 < ENTIRELY_MAPPED and total_last:
            mod_node(st, "nr_anon_mapped", -total_last)
            first = next(j for j, c in enumerate(last_per_run) if c > 0)
            if npm0 - last_per_run[first] != 0 and not st.f_partial[fid]:
                triggers.append((ks[first], fid))
        st.f_ref[fid] -= sum(lens)
        if st.f_ref[fid] < 0:
            raise ModelBug("folio_put.underflow", f"folio {fid} refcount below zero")
        if st.f_ref[fid] == 0:
            freed.append(fid)
    for _, fid in sorted(triggers):
        deferred_split_folio(st, fid, True)
    for fid in freed:
        free_folio(st, fid)


def zap_large_batches(st: FastState, mm: FastMm, lid: np.ndarray, lpg: np.ndarray,
                      lseg: np.ndarray, pos: np.ndarray) -> None:
    """The large-folio PTEs of a zap, in order, folded per folio (see zap_pte_segments)."""
    starts = np.ones(lid.size, bool)
    starts[1:] = ((pos[1:] != pos[:-1] + 1) | (lseg[1:] != lseg[:-1])
                  | (lid[1:] != lid[:-1]) | (lpg[1:] != lpg[:-1] + 1))
    run_start = starts.nonzero()[0]
    run_fid = lid[run_start]
    triggers: list[tuple[int, int]] = []  # (run number, folio) where a flag was raised
    freed: list[int] = []
    run_len = np.diff(np.append(run_start, lid.size))
    order = np.argsort(run_fid, kind="stable")
    bounds = np.diff(run_fid[order]).nonzero()[0] + 1
    for group in np.split(order, bounds):
        fid = int(run_fid[group[0]])
        st.f_touch[fid] = True
        b = int(st.f_base[fid])
        lens = run_len[group].astype(np.int64)
        offsets = np.cumsum(lens) - lens  # of each run within the folio's members
        g0, total = int(group[0]), int(lens.sum())
        if group[-1] - g0 == group.size - 1:  # consecutive runs: consecutive members
            m0 = int(run_start[g0])
            pg = lpg[m0 : m0 + total]
        else:
            pg = lpg[np.arange(total) + np.repeat(run_start[group] - offsets, lens)]
        p0 = int(pg[0])
        if int(pg[-1]) - p0 == total - 1 and not np.count_nonzero(np.diff(pg) != 1):
            mc = st.p_mapcount[b + p0 : b + p0 + total]  # consecutive pages: a view
            if np.count_nonzero(mc < 0):
                raise ModelBug("rmap.mapcount_underflow", f"folio {fid}")
            last_per_run = np.add.reduceat((mc == 0).astype(np.int64), offsets)
            mc -= 1
        else:
            pool = b + pg
            before = st.p_mapcount[pool]
            if np.count_nonzero(before < 0):
                raise ModelBug("rmap.mapcount_underflow", f"folio {fid}")
            st.p_mapcount[pool] = before - 1
            last_per_run = np.add.reduceat((before == 0).astype(np.int64), offsets)
        sub_large_mapcount_seq(st, fid, lens, mm)
        npm0 = int(st.f_npm[fid])
        total_last = int(last_per_run.sum())
        st.f_npm[fid] = npm0 - total_last
        if npm0 < ENTIRELY_MAPPED and total_last:
            mod_node(st, "nr_anon_mapped", -total_last)
            first = int(np.argmax(last_per_run > 0))  # the runs before it unmapped none
            if npm0 - int(last_per_run[first]) != 0 and not st.f_partial[fid]:
                triggers.append((int(group[first]), fid))
        st.f_ref[fid] -= int(lens.sum())
        if st.f_ref[fid] < 0:
            raise ModelBug("folio_put.underflow", f"folio {fid} refcount below zero")
        if st.f_ref[fid] == 0:
            freed.append(fid)
    for _, fid in sorted(triggers):
        deferred_split_folio(st, fid, True)
    for fid in freed:
        free_folio(st, fid)


def range_mapped(mm: FastMm, start: int, end: int) -> bool:
    return any(v.start < end and start < v.end for v in mm.vmas)


def free_pgtables(st: FastState, mm: FastMm, start: int, end: int) -> None:
    g = st.geom
    pud = mm.pud_table
    pud_nr, pmd_nr = g.pud_nr, g.pmd_nr
    for pi, addr, nxt in pud_range(g, start, end):
        if st.e_kind[st.row(pud), pi] != TABLE:
            continue
        pmd = table_at(st, pud, pi, LV_PMD)
        base = pi * pud_nr
        m0, m1 = pmd_entries(g, addr, nxt)
        if m1 - m0 <= SMALL:
            # a PTE table goes once no VMA intersects its PMD range
            r = st.row(pmd)
            K = st.e_kind[r, m0:m1].tolist()
            ids = st.e_id[r, m0:m1].tolist()
            vmas = [(v.start, v.end) for v in mm.vmas]
            gone = []
            for j, k in enumerate(K):
                if k != TABLE:
                    continue
                lo = base + (m0 + j) * pmd_nr
                if not any(vs < lo + pmd_nr and lo < ve for vs, ve in vmas):
                    gone.append((m0 + j, ids[j]))
            for mi, child in gone:
                check_child(st, pmd, mi, child, LV_PTE)
            for _mi, child in gone:
                cr = st.row(child)
                if cr and np.count_nonzero(st.e_kind[cr]):
                    raise ModelBug("free_pgtables.not_empty", f"PTE table {child}")
            if gone:
                set_entries(st, pmd, np.array([mi for mi, _ in gone], np.int64), NONE)
                pt_free_many(st, mm, np.array([c for _, c in gone], np.int64))
            if not range_mapped(mm, base, base + pud_nr):
                if np.count_nonzero(st.e_kind[st.row(pmd)]) or st.t_w16[pmd] != 0:
                    raise ModelBug("free_pgtables.not_empty", f"PMD table {pmd}")
                set_entry(st, pud, pi, NONE)
                pt_free(st, mm, pmd)
            continue
        idx = table_entries(st, pmd, m0, m1)
        # a PTE table goes once no VMA intersects its PMD range
        los = base + idx * pmd_nr
        mapped = np.zeros(idx.size, bool)
        for v in mm.vmas:
            mapped |= (los < v.end) & (v.start < los + pmd_nr)
        idx = idx[~mapped]
        if idx.size:
            ptes = tables_at(st, pmd, idx, LV_PTE)
            used = st.e_kind[st.t_row[ptes]].any(axis=1)  # row 0 (no entries) is all none
            if np.count_nonzero(used):
                raise ModelBug("free_pgtables.not_empty", f"PTE table {ptes[used.argmax()]}")
            set_entries(st, pmd, idx, NONE)
            pt_free_many(st, mm, ptes)
        if not range_mapped(mm, base, base + pud_nr):
            if np.count_nonzero(st.e_kind[st.row(pmd)]) or st.t_w16[pmd] != 0:
                raise ModelBug("free_pgtables.not_empty", f"PMD table {pmd}")
            set_entry(st, pud, pi, NONE)
            pt_free(st, mm, pmd)
