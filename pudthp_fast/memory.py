"""Fast faults, COW, fork copy and zap (mm/memory.c), vectorised over PTE ranges.

Fork copy and zap take a PMD range's PTE tables together, as PTE ranges ``(table, lo, hi)``
(``copy_pte_range`` and ``zap_pte_range`` over several tables at once), as arrays or, for
a few entries, as Python loops to the same effect (``Paths``).  A zap removes a large
folio's PTEs in the batches the kernel makes (folio_pte_batch: consecutive pages within one
PTE table), so that __folio_remove_rmap sees exactly those batches.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.folio import (
    folio_alloc,
    folio_put,
    free_folios_bulk,
)
from pudthp_fast.huge_memory import (
    __split_huge_pmd_locked,
    __split_huge_pud_locked,
    copy_huge_pmd,
    copy_huge_pud,
    do_huge_pmd_anonymous_page,
    do_huge_pmd_wp_page,
    do_huge_pud_anonymous_page,
    thp_vma_allowable_order,
    thp_vma_suitable_order,
    wp_huge_pud,
    zap_huge_pmd,
    zap_huge_pud,
)
from pudthp_fast.pgtable import (
    pmd_range,
    pt_alloc,
    pt_alloc_many,
    pt_free,
    pt_free_many,
    pud_range,
    table_of,
)
from pudthp_fast.rmap import (
    folio_add_large_mapcount,
    folio_add_new_anon_rmap,
    folio_remove_rmap,
    folio_remove_rmap_ptes_batched,
    folio_try_dup_anon_rmap,
)
from pudthp_fast.state import (
    LEAF,
    NONE,
    PTE,
    SWAP,
    TABLE,
    ZERO,
    Arr,
    D,
    FastMm,
    FastState,
    FastVma,
    Segment,
    W,
    Y,
    add_at,
    check_child,
    install_table,
    pmd_entries,
    pte_segments,
    range_mask,
    set_entries,
    set_entry,
    tables_at,
    unique,
)
from pudthp_fast.swapfile import free_swap_and_cache
from pudthp_fast.vmstat import count_vm_event, mod_node_page_state
from pudthp_ref.spec import GUP_PIN_COUNTING_BIAS, LEVEL_PMD, LEVEL_PTE, LEVEL_PUD, ModelBug


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
    """An order-0 allocation inside a fault: retried until an injected failure is used up."""
    while True:
        fid = folio_alloc(st, 0)
        if fid:
            return fid


def follow_page(st: FastState, mm: FastMm, vpn: int) -> tuple[int, int, int] | None:
    """folio_walk_start(): (table, index, page in folio) of the present entry mapping
    ``vpn``, or None."""
    g = st.geom
    pud = mm.pud_table
    pi = vpn // g.pud_nr
    r = st.row(pud)
    k = st.e_kind[r, pi]
    if k == NONE:
        return None
    if k == LEAF:
        return (pud, pi, vpn % g.pud_nr)
    pmd = int(st.e_id[r, pi])
    mi = (vpn // g.pmd_nr) % g.P
    r = st.row(pmd)
    k = st.e_kind[r, mi]
    if k == NONE:
        return None
    if k in (LEAF, ZERO):
        return (pmd, mi, vpn % g.pmd_nr)
    pte = int(st.e_id[r, mi])
    ti = vpn % g.P
    r = st.row(pte)
    k = st.e_kind[r, ti]
    if k in (NONE, SWAP):
        return None
    return (pte, ti, int(st.e_page[r, ti]))


# --------------------------------------------------------------------------------------
# The fault
# --------------------------------------------------------------------------------------


def handle_mm_fault(st: FastState, mm: FastMm, vma: FastVma, vpn: int, write: bool) -> None:
    """__handle_mm_fault(): PUD, then PMD, then PTE level, falling back level by level."""
    g = st.geom
    pud = mm.pud_table
    pi = vpn // g.pud_nr
    k = st.e_kind[st.row(pud), pi]
    if k == NONE:
        if (
            thp_vma_allowable_order(st, vma, LEVEL_PUD)
            and thp_vma_suitable_order(st, vma, vpn, LEVEL_PUD)
            and (write or st.cfg.pud_read_fault == "alloc")
        ):
            anon_vma_prepare(st, mm, vma)
            if do_huge_pud_anonymous_page(st, mm, vma, pud, pi):
                return
        install_table(st, pud, pi, pt_alloc(st, mm, LEVEL_PMD), pi * g.pud_nr)
    elif k == LEAF:
        if write and not st.e_bits[st.row(pud), pi] & W:
            if wp_huge_pud(st, mm, vma, pud, pi):
                return
        else:
            return
    pmd = table_of(st, pud, pi, LEVEL_PMD)
    mi = (vpn // g.pmd_nr) % g.P
    k = st.e_kind[st.row(pmd), mi]
    if k == NONE:
        if thp_vma_allowable_order(st, vma, LEVEL_PMD) and thp_vma_suitable_order(
                st, vma, vpn, LEVEL_PMD):
            anon_vma_prepare(st, mm, vma)
            if do_huge_pmd_anonymous_page(st, mm, vma, pmd, mi, write):
                return
        install_table(st, pmd, mi, pt_alloc(st, mm, LEVEL_PTE), vpn - vpn % g.pmd_nr)
    elif k in (LEAF, ZERO):
        if not write or (k == LEAF and st.e_bits[st.row(pmd), mi] & W):
            return
        if do_huge_pmd_wp_page(st, mm, vma, pmd, mi):
            return
    pte = table_of(st, pmd, mi, LEVEL_PTE)
    ti = vpn % g.P
    r = st.row(pte)
    k = st.e_kind[r, ti]
    if k == NONE:
        do_anonymous_page(st, mm, vma, pte, ti, write)
    elif k == SWAP:
        do_swap_page(st, mm, pte, ti)
        if write and not st.e_bits[st.row(pte), ti] & W:
            do_wp_page(st, mm, vma, pte, ti)
    elif write and (k == ZERO or not st.e_bits[r, ti] & W):
        do_wp_page(st, mm, vma, pte, ti)


def do_anonymous_page(st: FastState, mm: FastMm, vma: FastVma, pte: int, ti: int,
                      write: bool) -> None:
    """do_anonymous_page(): the zero page on a read, a new exclusive page on a write."""
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
    """do_swap_page(): read the slot into a new exclusive order-0 folio, mapped read-only."""
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
    free_swap_and_cache(st, slot)


def wp_can_reuse_anon_folio(st: FastState, fid: int) -> bool:
    """wp_can_reuse_anon_folio(): an order-0 folio with refcount 1 outside the swap cache;
    a large one by __wp_can_reuse_large_anon_folio()."""
    if st.f_order[fid] > 0:
        large = int(st.f_large[fid]) + 1
        if large <= 1 or st.f_shared[fid] or large != st.f_ref[fid]:
            return False
        if st.f_entire[fid] != -1:
            raise ModelBug("wp_reuse.entire_mapped", f"folio {fid} reused while entire-mapped")
        return True
    return bool(st.f_ref[fid] == 1 and not st.f_swapcache[fid])


def do_wp_page(st: FastState, mm: FastMm, vma: FastVma, pte: int, ti: int) -> None:
    """do_wp_page(): reuse an exclusive or reusable page in place, else copy it."""
    r = st.row(pte)
    if st.e_kind[r, ti] == PTE:
        fid = int(st.e_id[r, ti])
        p = int(st.f_base[fid]) + int(st.e_page[r, ti])
        if st.p_exclusive[p] or wp_can_reuse_anon_folio(st, fid):
            st.p_exclusive[p] = True
            st.e_bits[r, ti] |= W | D | Y
            return
    wp_page_copy(st, mm, vma, pte, ti)


def wp_page_copy(st: FastState, mm: FastMm, vma: FastVma, pte: int, ti: int) -> None:
    """wp_page_copy(): a new page with the old contents (or zeros), the old rmap dropped."""
    anon_vma_prepare(st, mm, vma)
    new = alloc_page_retrying(st)
    r = st.row(pte)
    old = int(st.e_id[r, ti]) if st.e_kind[r, ti] == PTE else 0
    page = int(st.e_page[r, ti])
    if old:
        st.p_data[int(st.f_base[new])] = st.p_data[int(st.f_base[old]) + page]
    else:
        mm.rss_anon += 1
    folio_add_new_anon_rmap(st, new, mm)
    set_entry(st, pte, ti, PTE, new, 0, W | D | Y)
    if old:
        folio_remove_rmap(st, old, page, 1, mm, LEVEL_PTE)
        folio_put(st, old)


# --------------------------------------------------------------------------------------
# fork: copy_page_range()
# --------------------------------------------------------------------------------------

CopySegment = tuple[int, int, int, int]  # child PTE table, parent PTE table, lo, hi
_NO_ENTRIES = np.zeros(0, np.int64)


def copy_page_range(st: FastState, dst: FastMm, src: FastMm, vma: FastVma) -> None:
    """copy_page_range() for one VMA; raises FaultOOM when a page copy cannot allocate."""
    if vma.anon_vma is None:
        return  # vma_needs_copy(): nothing was ever faulted here, the child refaults
    g = st.geom
    spud, dpud = src.pud_table, dst.pud_table
    for pi, addr, nxt in pud_range(g, vma.start, vma.end):
        k = st.e_kind[st.row(spud), pi]
        if k == NONE:
            continue
        if k == LEAF and copy_huge_pud(st, dst, src, dpud, spud, pi):
            continue
        spmd = table_of(st, spud, pi, LEVEL_PMD)
        if st.e_kind[st.row(dpud), pi] == NONE:
            install_table(st, dpud, pi, pt_alloc(st, dst, LEVEL_PMD), pi * g.pud_nr)
        dpmd = table_of(st, dpud, pi, LEVEL_PMD)
        copy_pmd_range(st, dst, src, vma, dpmd, spmd, addr, nxt)


def copy_pmd_range(st: FastState, dst: FastMm, src: FastMm, vma: FastVma, dpmd: int,
                   spmd: int, addr: int, nxt: int) -> None:
    """copy_pmd_range(): the PTE copies of a parent without pins are gathered into one
    copy_pte_range() (nothing there depends on their order); a pinned exclusive page is
    copied at once, page by page, in order (an allocation that fails leaves the PTEs after
    it untouched)."""
    if not src.has_pinned and _copy_pte_tables(st, dst, spmd, dpmd, addr, nxt):
        return
    g = st.geom
    segs: list[CopySegment] = []
    for mi, a, b in pmd_range(g, addr, nxt):
        k = st.e_kind[st.row(spmd), mi]
        if k == NONE:
            continue
        if k in (LEAF, ZERO) and copy_huge_pmd(st, dst, src, dpmd, spmd, mi):
            continue
        spte = table_of(st, spmd, mi, LEVEL_PTE)
        if st.e_kind[st.row(dpmd), mi] == NONE:
            install_table(st, dpmd, mi, pt_alloc(st, dst, LEVEL_PTE), a - a % g.pmd_nr)
        dpte = table_of(st, dpmd, mi, LEVEL_PTE)
        lo, hi = a % g.P, a % g.P + (b - a)
        if src.has_pinned and _must_copy(st, spte, lo, hi):
            copy_pte_range(st, dst, segs)
            segs = []
            for ti in range(lo, hi):
                copy_pte(st, dst, src, vma, dpte, spte, ti)
        else:
            segs.append((dpte, spte, lo, hi))
    copy_pte_range(st, dst, segs)


def _copy_pte_tables(st: FastState, dst: FastMm, spmd: int, dpmd: int, addr: int, nxt: int
                     ) -> bool:
    """copy_pmd_range() over ``[addr, nxt)`` at once when every entry there is none or a
    PTE table (False, nothing done, if not): the child's missing PTE tables are allocated
    in entry order, then every PTE is copied."""
    g = st.geom
    m0, m1 = pmd_entries(g, addr, nxt)
    python = st.paths.python("copy_pmd_range", m1 - m0 <= st.paths.small)
    found = pte_segments(st, spmd, m0, m1, addr, nxt, python)
    if found is None:
        return False
    idx, ssegs = found
    if not idx:
        return True
    child = _child_pte_tables_loop if python else _child_pte_tables_arrays
    dkids = child(st, dst, dpmd, idx, addr - addr % g.pud_nr)
    copy_pte_range(st, dst, [(d, s, lo, hi) for d, (s, lo, hi) in zip(dkids, ssegs, strict=True)])
    return True


def _child_pte_tables_loop(st: FastState, dst: FastMm, dpmd: int, idx: list[int], first: int
                           ) -> list[int]:
    """The child's PTE tables under PMD entries ``idx`` of ``dpmd`` (the PUD range from page
    ``first``): the missing ones allocated in entry order (pte_alloc()), in Python."""
    drow = st.wrow(dpmd)  # on its own line: a new row may move the arrays
    need = [mi for mi in idx if st.e_kind[drow, mi] == NONE]
    if need:
        tids = pt_alloc_many(st, dst, LEVEL_PTE, len(need))
        for mi, t in zip(need, tids.tolist(), strict=True):
            install_table(st, dpmd, mi, t, first + mi * st.geom.pmd_nr)
    drow = st.row(dpmd)
    kids: list[int] = st.e_id[drow, idx].tolist()
    for mi, k, child in zip(idx, st.e_kind[drow, idx].tolist(), kids, strict=True):
        if k != TABLE:
            raise ModelBug("walk.bad_table", f"entry {mi} of table {dpmd} is no live table")
        check_child(st, dpmd, mi, child, LEVEL_PTE)
    return kids


def _child_pte_tables_arrays(st: FastState, dst: FastMm, dpmd: int, idx: list[int],
                             first: int) -> list[int]:
    """``_child_pte_tables_loop`` over arrays."""
    drow = st.wrow(dpmd)  # on its own line: a new row may move the arrays
    ia = np.array(idx, np.int64)
    need = ia[st.e_kind[drow, ia] == NONE]
    if need.size:
        tids = pt_alloc_many(st, dst, LEVEL_PTE, int(need.size))
        set_entries(st, dpmd, need, TABLE, tids)
        st.t_addr[tids] = first + need * st.geom.pmd_nr
    return tables_at(st, dpmd, ia, LEVEL_PTE).tolist()


def _must_copy(st: FastState, spte: int, lo: int, hi: int) -> bool:
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


def copy_pte_range(st: FastState, dst: FastMm, segs: list[CopySegment]) -> None:
    """copy_present_ptes() / copy_nonpresent_pte() over PTE ranges (child, parent, lo, hi)
    of a parent without pinned exclusive pages there, at once: nothing here depends on the
    order of the PTEs.  A parent table may have no entry row (row 0, maybe more than
    once): nothing is copied from it and nothing in it changes."""
    if not segs:
        return
    paths = st.paths
    if paths.python("copy_pte_range", sum(b - a for _, _, a, b in segs) <= 4 * paths.small):
        _copy_pte_range_loop(st, dst, segs)
    else:
        _copy_pte_range_arrays(st, dst, segs)


def _copy_pte_range_arrays(st: FastState, dst: FastMm, segs: list[CopySegment]) -> None:
    """``copy_pte_range`` over arrays: the tables as 2-D rows, masked to their ranges."""
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
        add_at(st.s_count, ids[swap], 1)  # swap_duplicate()
        dst.rss_swap += int(np.count_nonzero(swap))
    if np.count_nonzero(present):
        fids = ids[present]
        pages = st.f_base[fids] + pages_in[present].astype(np.int64)
        add_at(st.f_ref, fids, 1)
        st.p_exclusive[pages] = False
        add_at(st.p_mapcount, pages, 1)
        large = st.f_order[fids] > 0
        if np.count_nonzero(large):
            uniq, counts = np.unique(fids[large], return_counts=True)
            for fid, n in zip(uniq.tolist(), counts.tolist(), strict=True):
                folio_add_large_mapcount(st, fid, n, dst)
        dst.rss_anon += int(fids.size)
    copied = present | swap | (kind == ZERO)
    keep = copied.any(axis=1)  # a child table that gets nothing takes no row
    if np.count_nonzero(keep) != keep.size:
        dtabs, srows = dtabs[keep], srows[keep]
        kind, ids, pages_in = kind[keep], ids[keep], pages_in[keep]
        present, copied = present[keep], copied[keep]
    if not dtabs.size:
        return
    drows = st.wrows(dtabs)  # before the arrays are read again: a new row may move them
    bits = st.e_bits[srows]
    st.e_bits[srows] = np.where(present, bits & ~np.uint8(W), bits)  # parent read-only
    child = bits & ~np.uint8(Y | W)  # the child's PTEs old and read-only
    st.e_kind[drows] = np.where(copied, kind, st.e_kind[drows])
    st.e_id[drows] = np.where(copied, ids, st.e_id[drows])
    st.e_page[drows] = np.where(copied, pages_in, st.e_page[drows])
    st.e_bits[drows] = np.where(present, child, np.where(copied, 0, st.e_bits[drows]))


def _copy_pte_range_loop(st: FastState, dst: FastMm, segs: list[CopySegment]) -> None:
    """``copy_pte_range`` for a few PTEs, in Python, to the same effect."""
    copies: list[tuple[int, int, int, list[int], list[int], list[int], list[int]]] = []
    for d, s_, lo, hi in segs:
        r = st.row(s_)
        if r == 0:
            continue
        K = st.e_kind[r, lo:hi].tolist()
        if not any(k in (PTE, SWAP, ZERO) for k in K):
            continue
        copies.append((d, r, lo, K, st.e_id[r, lo:hi].tolist(), st.e_page[r, lo:hi].tolist(),
                       st.e_bits[r, lo:hi].tolist()))
    if not copies:
        return
    large: dict[int, int] = {}
    for _d, _r, _lo, K, I_, G, _B in copies:
        for k, ident, page in zip(K, I_, G, strict=True):
            if k == SWAP:
                st.s_count[ident] += 1  # swap_duplicate()
                dst.rss_swap += 1
            elif k == PTE:
                p = int(st.f_base[ident]) + page
                st.f_ref[ident] += 1
                st.p_exclusive[p] = False
                st.p_mapcount[p] += 1
                if st.f_order[ident] > 0:
                    large[ident] = large.get(ident, 0) + 1
                dst.rss_anon += 1
    for fid in sorted(large):
        folio_add_large_mapcount(st, fid, large[fid], dst)
    drows = [st.wrow(d) for d, _, _, _, _, _, _ in copies]  # new rows may move the arrays
    for (_d, sr, lo, K, I_, G, B), dr in zip(copies, drows, strict=True):
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


def copy_pte(st: FastState, dst: FastMm, src: FastMm, vma: FastVma, dpte: int, spte: int,
             ti: int) -> None:
    """copy_present_ptes() / copy_nonpresent_pte() for one PTE; a page that may be pinned
    is copied (copy_present_page())."""
    sr = st.row(spte)
    kind = int(st.e_kind[sr, ti])
    if kind == NONE:
        return
    if kind == ZERO:
        set_entry(st, dpte, ti, ZERO)
        return
    if kind == SWAP:
        slot = int(st.e_id[sr, ti])
        st.s_count[slot] += 1  # swap_duplicate()
        dst.rss_swap += 1
        set_entry(st, dpte, ti, SWAP, slot)
        return
    fid = int(st.e_id[sr, ti])
    page = int(st.e_page[sr, ti])
    st.f_ref[fid] += 1
    if folio_try_dup_anon_rmap(st, fid, page, 1, dst, src, LEVEL_PTE):
        dst.rss_anon += 1
        bits = int(st.e_bits[sr, ti]) & ~W
        st.e_bits[sr, ti] = bits
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
# zap: unmap_page_range()
# --------------------------------------------------------------------------------------


def zap_page_range(st: FastState, mm: FastMm, start: int, end: int, reclaim_pt: bool = False
                   ) -> None:
    """unmap_page_range() over ``[start, end)`` inside one VMA.

    ``reclaim_pt`` (MADV_DONTNEED, CONFIG_PT_RECLAIM): a PTE table whose whole PMD range is
    zapped is freed once empty (zap_pte_range -> try_to_free_pte()).
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
            __split_huge_pud_locked(st, mm, pud, pi)
        zap_pmd_range(st, mm, table_of(st, pud, pi, LEVEL_PMD), addr, nxt, reclaim_pt)


def zap_pmd_range(st: FastState, mm: FastMm, pmd: int, addr: int, nxt: int,
                  reclaim_pt: bool = False) -> None:
    """zap_pmd_range(): the PTE ranges under one PMD table are zapped as one batch, flushed
    before any huge-leaf zap or split so effects keep the kernel's order."""
    g = st.geom
    m0, m1 = pmd_entries(g, addr, nxt)
    python = st.paths.python("zap_pmd_range", m1 - m0 <= st.paths.small)
    found = pte_segments(st, pmd, m0, m1, addr, nxt, python)
    if found is not None:  # PTE tables only: all at once
        _zap_pte_tables(st, mm, pmd, found[1], reclaim_pt)
        return
    segs: list[Segment] = []
    for mi, a, b in pmd_range(g, addr, nxt):
        k = st.e_kind[st.row(pmd), mi]
        if k == NONE:
            continue
        if k in (LEAF, ZERO):
            _zap_pte_tables(st, mm, pmd, segs, reclaim_pt)
            segs = []
            if b - a == g.pmd_nr:
                zap_huge_pmd(st, mm, pmd, mi)
                continue
            __split_huge_pmd_locked(st, mm, pmd, mi)
        segs.append((table_of(st, pmd, mi, LEVEL_PTE), a % g.P, a % g.P + (b - a)))
    _zap_pte_tables(st, mm, pmd, segs, reclaim_pt)


def _zap_pte_tables(st: FastState, mm: FastMm, pmd: int, segs: list[Segment],
                    reclaim_pt: bool) -> None:
    """zap_pte_range() over ``segs``; with ``reclaim_pt``, try_to_free_pte(): each fully
    zapped PTE table, now empty, leaves its PMD entry."""
    zap_pte_range(st, mm, segs)
    if not reclaim_pt:
        return
    ptes = np.array([t for t, lo, hi in segs if hi - lo == st.P], np.int64)
    if not ptes.size:
        return
    ptes = ptes[~st.e_kind[st.t_row[ptes]].any(axis=1)]  # row 0 (no entries) is all none
    if ptes.size:
        set_entries(st, pmd, (st.t_addr[ptes] // st.P) % st.P, NONE)
        pt_free_many(st, mm, ptes)


def zap_pte_range(st: FastState, mm: FastMm, segs: list[Segment]) -> None:
    """zap_pte_range() over several PTE ranges, in order, at once.

    Order-0 folios go in bulk; a large folio's PTEs go in the kernel's batches
    (``folio_remove_rmap_ptes_batched``).
    """
    if not segs:
        return
    paths = st.paths
    small = sum(b - a for _, a, b in segs) <= 8 * paths.small
    if small:
        n = 0
        for t, a, b in segs:
            r = st.row(t)
            if r:
                n += int(np.count_nonzero(st.e_kind[r, a:b]))
        if n == 0:
            return  # nothing mapped there: nothing changes
        small = n <= paths.small
    if paths.python("zap_pte_range", small):
        _zap_pte_range_loop(st, mm, segs)
    else:
        _zap_pte_range_arrays(st, mm, segs)


def _zap_pte_range_arrays(st: FastState, mm: FastMm, segs: list[Segment]) -> None:
    """``zap_pte_range`` over arrays: the tables as 2-D rows, masked to their ranges, the
    large folios' batches found by where folio or page stop following on."""
    rows = np.array([st.row(t) for t, _, _ in segs], np.int64)
    lo = np.array([a for _, a, _ in segs], np.int64)
    hi = np.array([b for _, _, b in segs], np.int64)
    kind2 = st.e_kind[rows]
    mask = range_mask(st.P, lo, hi)
    real = rows != 0  # row 0 (a table with no entries) is never written
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
        add_at(st.s_count, slots, -1)  # free_swap_and_cache() of each
        st.s_used -= int(np.count_nonzero(st.s_count[unique(slots)] == 0))
    present = kind == PTE
    if not np.count_nonzero(present):
        return
    mm.rss_anon -= int(np.count_nonzero(present))
    # e_id is a slot number for swap entries: look folio orders up for present PTEs only
    small_f = present.copy()
    small_f[present] = st.f_order[ids[present]] == 0
    if np.count_nonzero(small_f):
        fids = ids[small_f]
        bases = st.f_base[fids]
        st.p_mapcount[bases] -= 1
        mod_node_page_state(
            st, "nr_anon_mapped", -int(np.count_nonzero(st.p_mapcount[bases] == -1)))
        add_at(st.f_ref, fids, -1)
        free_folios_bulk(st, fids[st.f_ref[fids] == 0])
    idx = (present & ~small_f).nonzero()[0]
    if idx.size:
        lid, lpg = ids[idx], pages[idx]
        lseg = np.repeat(np.arange(len(segs)), hi - lo)[idx]
        starts = np.ones(idx.size, bool)  # folio_pte_batch(): where a batch starts
        starts[1:] = ((idx[1:] != idx[:-1] + 1) | (lseg[1:] != lseg[:-1])
                      | (lid[1:] != lid[:-1]) | (lpg[1:] != lpg[:-1] + 1))
        first = starts.nonzero()[0]
        folio_remove_rmap_ptes_batched(st, mm, lid[first].astype(np.int64),
                                       lpg[first].astype(np.int64),
                                       np.diff(np.append(first, idx.size)))


def _zap_pte_range_loop(st: FastState, mm: FastMm, segs: list[Segment]) -> None:
    """``zap_pte_range`` for a few PTEs, in Python, to the same effect."""
    small: list[int] = []
    batches: list[list[int]] = []  # [folio, first page, length] in PTE order
    for t, lo, hi in segs:
        r = st.row(t)
        K = st.e_kind[r, lo:hi].tolist() if r else []
        if not any(K):
            continue
        I_ = st.e_id[r, lo:hi].tolist()
        G = st.e_page[r, lo:hi].tolist()
        st.e_kind[r, lo:hi] = NONE
        prev = -2  # the index in this table of the last PTE of the last batch, if any
        for j, k in enumerate(K):
            if k == SWAP:
                mm.rss_swap -= 1
                free_swap_and_cache(st, I_[j])
            elif k == PTE:
                mm.rss_anon -= 1
                fid = I_[j]
                if st.f_order[fid] == 0:
                    small.append(fid)
                elif (prev == j - 1 and batches[-1][0] == fid
                      and batches[-1][1] + batches[-1][2] == G[j]):
                    batches[-1][2] += 1
                else:
                    batches.append([fid, G[j], 1])
                prev = j if st.f_order[fid] else -2
    if small:
        unmapped = 0
        dead = []
        for fid in small:
            b = int(st.f_base[fid])
            st.p_mapcount[b] -= 1
            if st.p_mapcount[b] == -1:
                unmapped += 1
            st.f_ref[fid] -= 1
            if st.f_ref[fid] == 0:
                dead.append(fid)
        mod_node_page_state(st, "nr_anon_mapped", -unmapped)
        free_folios_bulk(st, np.array(dead, np.int64))
    if batches:
        a = np.array(batches, np.int64)
        folio_remove_rmap_ptes_batched(st, mm, a[:, 0], a[:, 1], a[:, 2])


# --------------------------------------------------------------------------------------
# free_pgtables()
# --------------------------------------------------------------------------------------


def range_mapped(mm: FastMm, start: int, end: int) -> bool:
    return any(v.start < end and start < v.end for v in mm.vmas)


def free_pgtables(st: FastState, mm: FastMm, start: int, end: int) -> None:
    """free_pgtables(): free PTE and PMD tables over ``[start, end)`` once no VMA covers
    any part of their range (the floor/ceiling rule of free_pgd_range)."""
    g = st.geom
    pud = mm.pud_table
    pud_nr = g.pud_nr
    paths = st.paths
    for pi, addr, nxt in pud_range(g, start, end):
        if st.e_kind[st.row(pud), pi] != TABLE:
            continue
        pmd = table_of(st, pud, pi, LEVEL_PMD)
        base = pi * pud_nr
        m0, m1 = pmd_entries(g, addr, nxt)
        # a PTE table goes once no VMA intersects its PMD range
        uncovered = _uncovered_loop if paths.python(
            "free_pgtables", m1 - m0 <= paths.small) else _uncovered_arrays
        idx = uncovered(st, mm, st.row(pmd), m0, m1, base)
        if idx.size:
            ptes = tables_at(st, pmd, idx, LEVEL_PTE)
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


def _uncovered_loop(st: FastState, mm: FastMm, r: int, m0: int, m1: int, base: int) -> Arr:
    """The PMD entries of ``[m0, m1)`` (entry row ``r``, the PUD range from page ``base``)
    that name a PTE table no VMA intersects the PMD range of, in Python."""
    pmd_nr = st.geom.pmd_nr
    vmas = [(v.start, v.end) for v in mm.vmas]
    idx = [mi for mi, k in enumerate(st.e_kind[r, m0:m1].tolist(), m0)
           if k == TABLE and not any(vs < base + (mi + 1) * pmd_nr and base + mi * pmd_nr < ve
                                     for vs, ve in vmas)]
    return np.array(idx, np.int64) if idx else _NO_ENTRIES


def _uncovered_arrays(st: FastState, mm: FastMm, r: int, m0: int, m1: int, base: int) -> Arr:
    """``_uncovered_loop`` over arrays."""
    pmd_nr = st.geom.pmd_nr
    idx = m0 + (st.e_kind[r, m0:m1] == TABLE).nonzero()[0]
    los = base + idx * pmd_nr
    mapped = np.zeros(idx.size, bool)
    for v in mm.vmas:
        mapped |= (los < v.end) & (v.start < los + pmd_nr)
    return idx[~mapped]
