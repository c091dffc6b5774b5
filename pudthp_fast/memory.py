"""Fast faults, COW and fork copy (mm/memory.c), vectorised over PTE ranges.

Fork copy handles a PTE range as arrays, and as a Python loop below ``SMALL`` entries
(small geometry).  The zap side of mm/memory.c is ``pudthp_fast.zap``.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.huge_memory import (
    copy_huge_pmd,
    copy_huge_pud,
    do_huge_pmd_anonymous_page,
    do_huge_pmd_wp_page,
    do_huge_pud_anonymous_page,
    install_table,
    set_entries,
    set_entry,
    thp_vma_allowable_order,
    thp_vma_suitable_order,
    wp_huge_pud,
)
from pudthp_fast.pgtable import (
    check_child,
    pmd_entries,
    pmd_range,
    pt_alloc,
    pt_alloc_many,
    pte_bounds,
    pte_tables_only,
    pud_range,
    range_mask,
    table_at,
    tables_at,
)
from pudthp_fast.rmap import (
    PTE_LEVEL,
    add_large_mapcount,
    count_vm_event,
    folio_add_new_anon_rmap,
    folio_alloc,
    folio_put,
    folio_remove_rmap,
    folio_try_dup_anon_rmap,
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
    D,
    FastMm,
    FastState,
    FastVma,
    W,
    Y,
    add_at,
)
from pudthp_ref.spec import GUP_PIN_COUNTING_BIAS, ModelBug


class FaultOOM(Exception):
    """VM_FAULT_OOM where the caller must fail (fork's copy_present_page)."""


def anon_vma_prepare(st: FastState, mm: FastMm, vma: FastVma) -> None:
    """anon_vma_prepare() with find_mergeable_anon_vma(): reuse the next, else the previous
    VMA's anon_vma when adjacent, flag-compatible and not inherited from a fork."""
    if vma.anon_vma is not None:
        return
    i = next(k for k, v in enumerate(mm.vmas) if v is vma)
    for j in (i + 1, i - 1):
        if 0 <= j < len(mm.vmas):
            old = mm.vmas[j]
            a, b = (vma, old) if j > i else (old, vma)
            if (a.end == b.start and a.hugepage == b.hugepage and a.nohugepage == b.nohugepage
                    and old.anon_vma is not None and not old.forked):
                vma.anon_vma = old.anon_vma
                return
    vma.anon_vma = st.next_anon_vma
    st.next_anon_vma += 1


def alloc_page_retrying(st: FastState) -> int:
    while True:
        fid = folio_alloc(st, 0)
        if fid:
            return fid


def follow_page(st: FastState, mm: FastMm, vpn: int) -> tuple[int, int, int] | None:
    """(table, index, page in folio) of the present entry mapping ``vpn``, or None."""
    g = st.geom
    pud = mm.pud_table
    pi = vpn // g.pud_nr
    k = st.e_kind[st.row(pud), pi]
    if k == NONE:
        return None
    if k == LEAF:
        return (pud, pi, vpn % g.pud_nr)
    pmd = int(st.e_id[st.row(pud), pi])
    mi = (vpn // g.pmd_nr) % g.P
    k = st.e_kind[st.row(pmd), mi]
    if k == NONE:
        return None
    if k in (LEAF, ZERO):
        return (pmd, mi, vpn % g.pmd_nr)
    pte = int(st.e_id[st.row(pmd), mi])
    ti = vpn % g.P
    k = st.e_kind[st.row(pte), ti]
    if k in (NONE, SWAP):
        return None
    return (pte, ti, int(st.e_page[st.row(pte), ti]))


def handle_mm_fault(st: FastState, mm: FastMm, vma: FastVma, vpn: int, write: bool) -> None:
    g = st.geom
    pud = mm.pud_table
    pi = vpn // g.pud_nr
    k = st.e_kind[st.row(pud), pi]
    if k == NONE:
        if (
            thp_vma_allowable_order(st, vma, "pud")
            and thp_vma_suitable_order(st, vma, vpn, "pud")
            and (write or st.cfg.pud_read_fault == "alloc")
        ):
            anon_vma_prepare(st, mm, vma)
            if do_huge_pud_anonymous_page(st, mm, vma, pud, pi):
                return
        install_table(st, pud, pi, pt_alloc(st, mm, LV_PMD), pi * g.pud_nr)
    elif k == LEAF:
        if write and not st.e_bits[st.row(pud), pi] & W:
            if wp_huge_pud(st, mm, pud, pi):
                return
        else:
            return
    pmd = table_at(st, pud, pi, LV_PMD)
    mi = (vpn // g.pmd_nr) % g.P
    k = st.e_kind[st.row(pmd), mi]
    if k == NONE:
        if thp_vma_allowable_order(st, vma, "pmd") and thp_vma_suitable_order(st, vma, vpn, "pmd"):
            anon_vma_prepare(st, mm, vma)
            if do_huge_pmd_anonymous_page(st, mm, vma, pmd, mi, write):
                return
        install_table(st, pmd, mi, pt_alloc(st, mm, LV_PTE), vpn - vpn % g.pmd_nr)
    elif k in (LEAF, ZERO):
        if not write or (k == LEAF and st.e_bits[st.row(pmd), mi] & W):
            return
        if do_huge_pmd_wp_page(st, mm, vma, pmd, mi):
            return
    pte = table_at(st, pmd, mi, LV_PTE)
    ti = vpn % g.P
    k = st.e_kind[st.row(pte), ti]
    if k == NONE:
        do_anonymous_page(st, mm, vma, pte, ti, write)
    elif k == SWAP:
        do_swap_page(st, mm, pte, ti)
        if write and not st.e_bits[st.row(pte), ti] & W:
            do_wp_page(st, mm, vma, pte, ti)
    elif write and (k == ZERO or not st.e_bits[st.row(pte), ti] & W):
        do_wp_page(st, mm, vma, pte, ti)


def do_anonymous_page(st: FastState, mm: FastMm, vma: FastVma, pte: int, ti: int,
                      write: bool) -> None:
    if not write:
        set_entry(st, pte, ti, ZERO)
        return
    anon_vma_prepare(st, mm, vma)
    fid = alloc_page_retrying(st)
    folio_add_new_anon_rmap(st, fid, mm)
    mm.rss_anon += 1
    rw = vma.prot == "rw"
    set_entry(st, pte, ti, PTE, fid, 0, (W | D if rw else 0) | Y)


def do_swap_page(st: FastState, mm: FastMm, pte: int, ti: int) -> None:
    slot = int(st.e_id[st.row(pte), ti])
    if st.s_count[slot] <= 0:
        raise ModelBug("swap.bad_slot", f"swap entry names free slot {slot}")
    fid = alloc_page_retrying(st)
    st.p_data[int(st.f_base[fid])] = st.s_data[slot]
    if not st.s_zero[slot]:  # a zeromap slot is read with no IO
        count_vm_event(st, "pswpin")
    folio_add_new_anon_rmap(st, fid, mm, exclusive=True)
    mm.rss_anon += 1
    mm.rss_swap -= 1
    set_entry(st, pte, ti, PTE, fid, 0, Y)
    swap_free(st, slot)


def swap_free(st: FastState, slot: int) -> None:
    st.s_count[slot] -= 1
    if st.s_count[slot] == 0:
        st.s_used -= 1
        st.s_zero[slot] = False


def wp_can_reuse_anon_folio(st: FastState, fid: int) -> bool:
    if st.f_order[fid] > 0:
        large = int(st.f_large[fid]) + 1
        if large <= 1 or st.f_shared[fid] or large != st.f_ref[fid]:
            return False
        if st.f_entire[fid] != -1:
            raise ModelBug("wp_reuse.entire_mapped", f"folio {fid} reused while entire-mapped")
        return True
    return bool(st.f_ref[fid] == 1 and not st.f_swapcache[fid])


def do_wp_page(st: FastState, mm: FastMm, vma: FastVma, pte: int, ti: int) -> None:
    if st.e_kind[st.row(pte), ti] == PTE:
        fid = int(st.e_id[st.row(pte), ti])
        p = int(st.f_base[fid]) + int(st.e_page[st.row(pte), ti])
        if st.p_exclusive[p] or wp_can_reuse_anon_folio(st, fid):
            st.f_touch[fid] = True
            st.p_exclusive[p] = True
            r_pte = st.wrow(pte)
            st.e_bits[r_pte, ti] |= W | D | Y
            return
    wp_page_copy(st, mm, vma, pte, ti)


def wp_page_copy(st: FastState, mm: FastMm, vma: FastVma, pte: int, ti: int) -> None:
    anon_vma_prepare(st, mm, vma)
    new = alloc_page_retrying(st)
    old = int(st.e_id[st.row(pte), ti]) if st.e_kind[st.row(pte), ti] == PTE else 0
    page = int(st.e_page[st.row(pte), ti])
    if old:
        st.p_data[int(st.f_base[new])] = st.p_data[int(st.f_base[old]) + page]
    else:
        mm.rss_anon += 1
    folio_add_new_anon_rmap(st, new, mm)
    set_entry(st, pte, ti, PTE, new, 0, W | D | Y)
    if old:
        folio_remove_rmap(st, old, page, 1, mm, PTE_LEVEL)
        folio_put(st, old)


# --------------------------------------------------------------------------------------
# fork
# --------------------------------------------------------------------------------------


def copy_page_range(st: FastState, dst: FastMm, src: FastMm, vma: FastVma) -> None:
    if vma.anon_vma is None:
        return
    g = st.geom
    spud, dpud = src.pud_table, dst.pud_table
    for pi, addr, nxt in pud_range(g, vma.start, vma.end):
        k = st.e_kind[st.row(spud), pi]
        if k == NONE:
            continue
        if k == LEAF and copy_huge_pud(st, dst, src, dpud, spud, pi):
            continue
        spmd = table_at(st, spud, pi, LV_PMD)
        if st.e_kind[st.row(dpud), pi] == NONE:
            install_table(st, dpud, pi, pt_alloc(st, dst, LV_PMD), pi * g.pud_nr)
        dpmd = table_at(st, dpud, pi, LV_PMD)
        if not src.has_pinned and copy_pte_tables(st, dst, spmd, dpmd, addr, nxt):
            continue
        segs: list[tuple[int, int, int, int]] = []
        for mi, a, b in pmd_range(g, addr, nxt):
            k = st.e_kind[st.row(spmd), mi]
            if k == NONE:
                continue
            if k in (LEAF, ZERO) and copy_huge_pmd(st, dst, src, dpmd, spmd, mi):
                continue
            spte = table_at(st, spmd, mi, LV_PTE)
            if st.e_kind[st.row(dpmd), mi] == NONE:
                install_table(st, dpmd, mi, pt_alloc(st, dst, LV_PTE), a - a % g.pmd_nr)
            dpte = table_at(st, dpmd, mi, LV_PTE)
            lo, hi = a % g.P, a % g.P + (b - a)
            if src.has_pinned and must_copy(st, spte, lo, hi):
                # a pinned exclusive page is copied now: page by page, in order (an
                # allocation that fails leaves the PTEs after it untouched)
                copy_pte_segments(st, dst, segs)
                segs = []
                for ti in range(lo, hi):
                    copy_one_pte(st, dst, src, vma, dpte, spte, ti)
            else:
                segs.append((dpte, spte, lo, hi))
        copy_pte_segments(st, dst, segs)


def must_copy(st: FastState, spte: int, lo: int, hi: int) -> bool:
    """Whether a PTE in ``[lo, hi)`` of ``spte`` maps an exclusive page of a folio that may
    be pinned (copy_present_page() instead of sharing the page)."""
    r = st.row(spte)
    if r == 0:
        return False
    present = (st.e_kind[r, lo:hi] == PTE).nonzero()[0]
    if not present.size:
        return False
    fids = st.e_id[r, lo:hi][present]
    pages = st.f_base[fids] + st.e_page[r, lo:hi][present]
    pinned = np.where(st.f_order[fids] > 0, st.f_pin[fids] > 0,
                      st.f_ref[fids] >= GUP_PIN_COUNTING_BIAS)
    return bool(np.count_nonzero(pinned & st.p_exclusive[pages]))


def copy_pte_tables(st: FastState, dst: FastMm, spmd: int, dpmd: int, addr: int, nxt: int
                    ) -> bool:
    """The PMD-level loop of copy_pmd_range() over ``[addr, nxt)`` at once, when every
    entry there is none or a PTE table (False, nothing done, if not): the
    child's missing PTE tables are allocated in entry order, then all PTEs are copied."""
    g = st.geom
    m0, m1 = pmd_entries(g, addr, nxt)
    if m1 - m0 <= SMALL:
        return copy_pte_tables_small(st, dst, spmd, dpmd, addr, nxt, m0, m1)
    found = pte_tables_only(st, spmd, addr, nxt)
    if found is None:
        return False
    idx, schild = found
    if not idx.size:
        return True
    drow = st.wrow(dpmd)  # on its own line: a new row may move the arrays
    need = idx[st.e_kind[drow, idx] == NONE]
    if need.size:
        tids = pt_alloc_many(st, dst, LV_PTE, int(need.size))
        set_entries(st, dpmd, need, TABLE, tids)
        st.t_addr[tids] = addr - addr % g.pud_nr + need * g.pmd_nr
    dchild = tables_at(st, dpmd, idx, LV_PTE)
    lo, hi = pte_bounds(g, idx, addr, nxt)
    copy_pte_segments(st, dst, list(zip(dchild.tolist(), schild.tolist(), lo.tolist(),
                                        hi.tolist(), strict=True)))
    return True


def copy_pte_tables_small(st: FastState, dst: FastMm, spmd: int, dpmd: int, addr: int,
                          nxt: int, m0: int, m1: int) -> bool:
    """``copy_pte_tables`` over the PMD entries ``[m0, m1)``, in Python."""
    g = st.geom
    r = st.row(spmd)
    K = st.e_kind[r, m0:m1].tolist()
    if any(k != NONE and k != TABLE for k in K):
        return False
    ids = st.e_id[r, m0:m1].tolist()
    kids = [(m0 + j, ids[j]) for j, k in enumerate(K) if k == TABLE]
    for mi, child in kids:
        check_child(st, spmd, mi, child, LV_PTE)
    if not kids:
        return True
    drow = st.wrow(dpmd)  # on its own line: a new row may move the arrays
    need = [mi for mi, _ in kids if st.e_kind[drow, mi] == NONE]
    first = addr - addr % g.pud_nr
    if need:
        tids = pt_alloc_many(st, dst, LV_PTE, len(need))
        idx = np.array(need, np.int64)
        set_entries(st, dpmd, idx, TABLE, tids)
        st.t_addr[tids] = first + idx * g.pmd_nr
    drow = st.row(dpmd)
    segs = []
    for mi, schild in kids:
        if st.e_kind[drow, mi] != TABLE:
            raise ModelBug("walk.bad_table", f"entry {mi} of table {dpmd} is no live table")
        dchild = int(st.e_id[drow, mi])
        check_child(st, dpmd, mi, dchild, LV_PTE)
        base = first + mi * g.pmd_nr
        a = max(base, addr)
        b = min(base + g.pmd_nr, nxt)
        segs.append((dchild, schild, a % g.P, a % g.P + (b - a)))
    copy_pte_segments(st, dst, segs)
    return True


def copy_pte_segments(st: FastState, dst: FastMm, segs: list[tuple[int, int, int, int]]
                      ) -> None:
    """copy_present_ptes() / copy_nonpresent_pte() over PTE ranges (dst, src, lo, hi) of a
    parent without pins, at once: nothing here depends on the order of the PTEs.  The
    tables are taken as 2-D rows; a source row may be row 0 (a table with no entries, maybe
    more than once): nothing is copied from it and nothing in it changes."""
    if not segs:
        return
    if sum(b - a for _, _, a, b in segs) <= 4 * SMALL:
        copy_pte_segments_small(st, dst, segs)
        return
    dtabs = np.array([d for d, _, _, _ in segs], np.int64)
    srows = np.array([st.row(s_) for _, s_, _, _ in segs], np.int64)
    lo = np.array([a for _, _, a, _ in segs], np.int64)
    hi = np.array([b for _, _, _, b in segs], np.int64)
    kind = st.e_kind[srows]
    mask = range_mask(st.P, lo, hi)
    if mask is not None:
        kind = np.where(mask, kind, NONE)
    ids = st.e_id[srows]
    pages_in = st.e_page[srows]
    present = kind == PTE
    swap = kind == SWAP
    if np.count_nonzero(swap):
        add_at(st.s_count, ids[swap], 1)
        dst.rss_swap += int(np.count_nonzero(swap))
    if np.count_nonzero(present):
        fids = ids[present]
        pages = st.f_base[fids] + pages_in[present].astype(np.int64)
        st.f_touch[fids] = True
        add_at(st.f_ref, fids, 1)
        st.p_exclusive[pages] = False
        add_at(st.p_mapcount, pages, 1)
        large = st.f_order[fids] > 0
        if np.count_nonzero(large):
            uniq, counts = np.unique(fids[large], return_counts=True)
            for fid, n in zip(uniq.tolist(), counts.tolist(), strict=True):
                add_large_mapcount(st, fid, n, dst)
        dst.rss_anon += int(fids.size)
    copied = present | swap | (kind == ZERO)
    keep = copied.any(axis=1)  # a child table that gets nothing takes no row
    stabs = np.array([s_ for _, s_, _, _ in segs], np.int64)
    if np.count_nonzero(keep) != keep.size:
        dtabs, srows, stabs = dtabs[keep], srows[keep], stabs[keep]
        kind, ids, pages_in = kind[keep], ids[keep], pages_in[keep]
        present, copied = present[keep], copied[keep]
    if not dtabs.size:
        return
    drows = st.wrows(dtabs)  # before the arrays are read again: a new row may move them
    st.t_touch[stabs] = True
    bits = st.e_bits[srows]
    st.e_bits[srows] = np.where(present, bits & ~np.uint8(W), bits)  # parent read-only
    child = bits & ~np.uint8(Y | W)  # the child's PTEs old and read-only
    st.e_kind[drows] = np.where(copied, kind, st.e_kind[drows])
    st.e_id[drows] = np.where(copied, ids, st.e_id[drows])
    st.e_page[drows] = np.where(copied, pages_in, st.e_page[drows])
    st.e_bits[drows] = np.where(present, child, np.where(copied, 0, st.e_bits[drows]))


def copy_pte_segments_small(st: FastState, dst: FastMm,
                            segs: list[tuple[int, int, int, int]]) -> None:
    """``copy_pte_segments`` for a few PTEs, in Python, to the same effect."""
    copies: list[tuple[int, int, int, list[int], list[int], list[int], list[int]]] = []
    for d, s_, lo, hi in segs:
        r = st.row(s_)
        if r == 0:
            continue
        K = st.e_kind[r, lo:hi].tolist()
        if not any(k in (PTE, SWAP, ZERO) for k in K):
            continue
        copies.append((d, s_, lo, K, st.e_id[r, lo:hi].tolist(), st.e_page[r, lo:hi].tolist(),
                       st.e_bits[r, lo:hi].tolist()))
    if not copies:
        return
    large: dict[int, int] = {}
    for _d, _s, _lo, K, I_, G, _B in copies:
        for k, ident, page in zip(K, I_, G, strict=True):
            if k == SWAP:
                st.s_count[ident] += 1
                dst.rss_swap += 1
            elif k == PTE:
                p = int(st.f_base[ident]) + page
                st.f_touch[ident] = True
                st.f_ref[ident] += 1
                st.p_exclusive[p] = False
                st.p_mapcount[p] += 1
                if st.f_order[ident] > 0:
                    large[ident] = large.get(ident, 0) + 1
                dst.rss_anon += 1
    for fid in sorted(large):
        add_large_mapcount(st, fid, large[fid], dst)
    drows = [st.wrow(d) for d, _, _, _, _, _, _ in copies]  # new rows may move the arrays
    for (_d, s_, lo, K, I_, G, B), dr in zip(copies, drows, strict=True):
        sr = st.row(s_)
        st.t_touch[s_] = True
        for j, k in enumerate(K):
            i = lo + j
            if k == PTE:
                st.e_bits[sr, i] = B[j] & ~W  # parent read-only
                st.e_bits[dr, i] = B[j] & ~(Y | W)  # the child's PTE old and read-only
            elif k in (SWAP, ZERO):
                st.e_bits[dr, i] = 0
            else:
                continue
            st.e_kind[dr, i] = k
            st.e_id[dr, i] = I_[j]
            st.e_page[dr, i] = G[j]


def copy_one_pte(st: FastState, dst: FastMm, src: FastMm, vma: FastVma, dpte: int, spte: int,
                 ti: int) -> None:
    kind = int(st.e_kind[st.row(spte), ti])
    if kind == NONE:
        return
    if kind == ZERO:
        set_entry(st, dpte, ti, ZERO)
        return
    if kind == SWAP:
        slot = int(st.e_id[st.row(spte), ti])
        st.s_count[slot] += 1
        dst.rss_swap += 1
        set_entry(st, dpte, ti, SWAP, slot)
        return
    fid = int(st.e_id[st.row(spte), ti])
    page = int(st.e_page[st.row(spte), ti])
    st.f_touch[fid] = True
    st.f_ref[fid] += 1
    if folio_try_dup_anon_rmap(st, fid, page, 1, dst, src, PTE_LEVEL):
        dst.rss_anon += 1
        bits = int(st.e_bits[st.row(spte), ti]) & ~W
        r_spte = st.wrow(spte)
        st.e_bits[r_spte, ti] = bits
        set_entry(st, dpte, ti, PTE, fid, page, bits & ~Y)
        return
    folio_put(st, fid)
    new = folio_alloc(st, 0)
    if not new:
        raise FaultOOM
    st.p_data[int(st.f_base[new])] = st.p_data[int(st.f_base[fid]) + page]
    folio_add_new_anon_rmap(st, new, dst)
    dst.rss_anon += 1
    set_entry(st, dpte, ti, PTE, new, 0, (W if vma.prot == "rw" else 0) | D | Y)
