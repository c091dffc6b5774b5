"""Fast faults, COW, fork copy and zap (mm/memory.c), vectorised over PTE ranges.

Zap and fork copy handle a PTE range as arrays: order-0 folios in bulk, large folios per
run of consecutive pages (folio_pte_batch) so that __folio_remove_rmap sees exactly the
batches the kernel makes.
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
    set_entry,
    split_huge_pmd_locked,
    split_huge_pud_locked,
    thp_vma_allowable_order,
    thp_vma_suitable_order,
    wp_huge_pud,
    zap_huge_pmd,
    zap_huge_pud,
)
from pudthp_fast.pgtable import pmd_range, pt_alloc, pt_free, pud_range, table_at
from pudthp_fast.rmap import (
    PTE_LEVEL,
    add_large_mapcount,
    count_vm_event,
    folio_add_new_anon_rmap,
    folio_alloc,
    folio_put,
    folio_remove_rmap,
    folio_try_dup_anon_rmap,
    free_folios_bulk,
    mod_node,
)
from pudthp_fast.state import (
    LEAF,
    LV_PMD,
    LV_PTE,
    NONE,
    PTE,
    SWAP,
    TABLE,
    ZERO,
    D,
    FastMm,
    FastState,
    FastVma,
    W,
    Y,
)
from pudthp_ref.spec import ModelBug


class FaultOOM(Exception):
    """VM_FAULT_OOM where the caller must fail (fork's copy_present_page)."""


def anon_vma_prepare(st: FastState, vma: FastVma) -> None:
    if vma.anon_vma is None:
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
            anon_vma_prepare(st, vma)
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
            anon_vma_prepare(st, vma)
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
    anon_vma_prepare(st, vma)
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
            st.p_exclusive[p] = True
            r_pte = st.wrow(pte)
            st.e_bits[r_pte, ti] |= W | D | Y
            return
    wp_page_copy(st, mm, vma, pte, ti)


def wp_page_copy(st: FastState, mm: FastMm, vma: FastVma, pte: int, ti: int) -> None:
    anon_vma_prepare(st, vma)
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
            copy_pte_range(st, dst, src, vma, dpte, spte, a % g.P, a % g.P + (b - a))


def copy_pte_range(st: FastState, dst: FastMm, src: FastMm, vma: FastVma, dpte: int,
                   spte: int, lo: int, hi: int) -> None:
    """copy_present_ptes() / copy_nonpresent_pte() over one PTE range."""
    if src.has_pinned:
        for ti in range(lo, hi):  # a pinned page may need copying: page by page
            copy_one_pte(st, dst, src, vma, dpte, spte, ti)
        return
    dr = st.wrow(dpte)  # rows first: taking a row may move the entry arrays
    sr = st.wrow(spte)
    kind = st.e_kind[sr, lo:hi].copy()
    ids = st.e_id[sr, lo:hi].copy()
    pages_in = st.e_page[sr, lo:hi].copy()
    present = kind == PTE
    swap = kind == SWAP
    zero = kind == ZERO
    if swap.any():
        np.add.at(st.s_count, ids[swap], 1)
        dst.rss_swap += int(np.count_nonzero(swap))
    if present.any():
        fids = ids[present]
        pages = st.f_base[fids] + pages_in[present]
        np.add.at(st.f_ref, fids, 1)
        st.p_exclusive[pages] = False
        np.add.at(st.p_mapcount, pages, 1)
        large = st.f_order[fids] > 0
        if large.any():
            uniq, counts = np.unique(fids[large], return_counts=True)
            for fid, n in zip(uniq.tolist(), counts.tolist(), strict=True):
                add_large_mapcount(st, fid, n, dst)
        dst.rss_anon += int(fids.size)
        st.e_bits[sr, lo:hi][present] &= ~np.uint8(W)  # write-protect the parent
    copied = present | swap | zero
    child_bits = st.e_bits[sr, lo:hi] & ~np.uint8(Y | W)  # the child's PTEs old
    st.e_kind[dr, lo:hi] = np.where(copied, kind, st.e_kind[dr, lo:hi])
    st.e_id[dr, lo:hi] = np.where(copied, ids, st.e_id[dr, lo:hi])
    st.e_page[dr, lo:hi] = np.where(copied, pages_in, st.e_page[dr, lo:hi])
    st.e_bits[dr, lo:hi] = np.where(
        present, child_bits, np.where(copied, 0, st.e_bits[dr, lo:hi])
    )


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


# --------------------------------------------------------------------------------------
# zap
# --------------------------------------------------------------------------------------


def zap_page_range(st: FastState, mm: FastMm, start: int, end: int) -> None:
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
        for mi, a, b in pmd_range(g, addr, nxt):
            k = st.e_kind[st.row(pmd), mi]
            if k == NONE:
                continue
            if k in (LEAF, ZERO):
                if b - a == g.pmd_nr:
                    zap_huge_pmd(st, mm, pmd, mi)
                    continue
                split_huge_pmd_locked(st, mm, pmd, mi)
            zap_pte_range(st, mm, table_at(st, pmd, mi, LV_PTE), a % g.P, a % g.P + (b - a))


def zap_pte_range(st: FastState, mm: FastMm, pte: int, lo: int, hi: int) -> None:
    """zap_pte_range(): order-0 folios in bulk, large folios per folio_pte_batch run."""
    kind = st.e_kind[st.row(pte), lo:hi].copy()
    ids = st.e_id[st.row(pte), lo:hi].copy()
    pages = st.e_page[st.row(pte), lo:hi].copy()
    r_pte = st.wrow(pte)
    st.e_kind[r_pte, lo:hi] = NONE
    swap = kind == SWAP
    if swap.any():
        slots = ids[swap]
        mm.rss_swap -= int(slots.size)
        np.subtract.at(st.s_count, slots, 1)
        st.s_used -= int(np.count_nonzero(st.s_count[np.unique(slots)] == 0))
    present = kind == PTE
    if not present.any():
        return
    mm.rss_anon -= int(np.count_nonzero(present))
    small = present & (st.f_order[ids] == 0)
    if small.any():
        fids = ids[small]
        bases = st.f_base[fids]
        st.p_mapcount[bases] -= 1
        mod_node(st, "nr_anon_mapped", -int(np.count_nonzero(st.p_mapcount[bases] == -1)))
        np.subtract.at(st.f_ref, fids, 1)
        free_folios_bulk(st, fids[st.f_ref[fids] == 0])
    large = present & ~small
    if large.any():
        idx = np.flatnonzero(large)
        lid, lpg = ids[idx], pages[idx]
        starts = np.ones(idx.size, bool)
        starts[1:] = (idx[1:] != idx[:-1] + 1) | (lid[1:] != lid[:-1]) | (lpg[1:] != lpg[:-1] + 1)
        s = np.flatnonzero(starts)
        ends = np.append(s[1:], idx.size)
        for a, b in zip(s.tolist(), ends.tolist(), strict=True):
            fid, first, n = int(lid[a]), int(lpg[a]), b - a
            folio_remove_rmap(st, fid, first, n, mm, PTE_LEVEL)
            folio_put(st, fid, n)


def range_mapped(mm: FastMm, start: int, end: int) -> bool:
    return any(v.start < end and start < v.end for v in mm.vmas)


def free_pgtables(st: FastState, mm: FastMm, start: int, end: int) -> None:
    g = st.geom
    pud = mm.pud_table
    for pi, addr, nxt in pud_range(g, start, end):
        if st.e_kind[st.row(pud), pi] != TABLE:
            continue
        pmd = table_at(st, pud, pi, LV_PMD)
        base = pi * g.pud_nr
        for mi, a, _ in pmd_range(g, addr, nxt):
            lo = a - a % g.pmd_nr
            if st.e_kind[st.row(pmd), mi] == TABLE and not range_mapped(mm, lo, lo + g.pmd_nr):
                pte = table_at(st, pmd, mi, LV_PTE)
                if st.e_kind[st.row(pte)].any():
                    raise ModelBug("free_pgtables.not_empty", f"PTE table {pte}")
                set_entry(st, pmd, mi, NONE)
                pt_free(st, mm, pte)
        if not range_mapped(mm, base, base + g.pud_nr):
            if st.e_kind[st.row(pmd)].any() or st.t_w16[pmd] != 0:
                raise ModelBug("free_pgtables.not_empty", f"PMD table {pmd}")
            set_entry(st, pud, pi, NONE)
            pt_free(st, mm, pmd)
