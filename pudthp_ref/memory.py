"""Faults, COW, fork copy and zap: mm/memory.c.

``handle_mm_fault`` walks PUD -> PMD -> PTE as ``__handle_mm_fault`` does, trying the PUD
and PMD THP paths in ``huge_memory.py`` and falling back level by level.
"""

from __future__ import annotations

from pudthp_ref.folio import folio_alloc, folio_get, folio_put
from pudthp_ref.huge_memory import (
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
from pudthp_ref.mm_types import Entry, Folio, MmState, MmStruct, PtDesc, Vma
from pudthp_ref.pgtable import (
    ZERO,
    entry_with,
    entry_write,
    is_leaf,
    is_present_pte,
    is_swap_pte,
    is_table,
    is_zero,
    mk_pte,
    mk_table,
    pmd_range,
    pt_alloc,
    pt_free,
    pte_range,
    pud_range,
    table_of,
)
from pudthp_ref.rmap import folio_add_new_anon_rmap, folio_remove_rmap, folio_try_dup_anon_rmap
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE, LEVEL_PUD, ModelBug
from pudthp_ref.swapfile import free_swap_and_cache, swap_duplicate, swap_slot
from pudthp_ref.vmstat import count_vm_event


class FaultOOM(Exception):
    """VM_FAULT_OOM where the caller must fail (fork's copy_present_page)."""


def anon_vma_prepare(st: MmState, mm: MmStruct, vma: Vma) -> None:
    """anon_vma_prepare(): a VMA gets its anon_vma on the first anonymous fault, reusing
    an adjacent compatible VMA's when that one did not come from a fork
    (find_mergeable_anon_vma(): the next VMA first, then the previous)."""
    if vma.anon_vma is not None:
        return
    i = next(k for k, v in enumerate(mm.vmas) if v is vma)
    for j, (a, b) in ((i + 1, (vma, None)), (i - 1, (None, vma))):
        if not 0 <= j < len(mm.vmas):
            continue
        old = mm.vmas[j]
        left, right = (a, old) if b is None else (old, b)
        if anon_vma_compatible(left, right) and old.anon_vma is not None and not old.forked:
            vma.anon_vma = old.anon_vma  # reusable_anon_vma()
            return
    vma.anon_vma = st.next_anon_vma
    st.next_anon_vma += 1


def anon_vma_compatible(a: Vma | None, b: Vma | None) -> bool:
    """anon_vma_compatible(): adjacent, same flags but for the access bits."""
    return (
        a is not None
        and b is not None
        and a.end == b.start
        and a.hugepage == b.hugepage
        and a.nohugepage == b.nohugepage
    )


def alloc_page_retrying(st: MmState) -> Folio:
    """An order-0 allocation inside a fault: VM_FAULT_OOM makes the access retry, so every
    pending injected failure is consumed one attempt at a time until one succeeds."""
    while True:
        folio = folio_alloc(st, 0)
        if folio is not None:
            return folio


def follow_page(st: MmState, mm: MmStruct, vpn: int) -> tuple[PtDesc, int, Entry, int] | None:
    """folio_walk_start(): the entry mapping ``vpn`` as (table, index, entry, page in folio).

    None when nothing present maps it (none or swap).
    """
    g = st.geom
    pud_table = st.tables[mm.pud_table]
    pi = g.pud_index(vpn)
    pe = pud_table.entries[pi]
    if pe is None:
        return None
    if pe[0] == "leaf":
        return (pud_table, pi, pe, vpn % g.pud_nr)
    pmd_table = st.tables[pe[1]]
    mi = g.pmd_index(vpn)
    me = pmd_table.entries[mi]
    if me is None:
        return None
    if me[0] in ("leaf", "zero"):
        return (pmd_table, mi, me, vpn % g.pmd_nr)
    pte_table = st.tables[me[1]]
    ti = g.pte_index(vpn)
    te = pte_table.entries[ti]
    if te is None or te[0] == "swap":
        return None
    return (pte_table, ti, te, te[2] if te[0] == "pte" else 0)


# --------------------------------------------------------------------------------------
# The fault
# --------------------------------------------------------------------------------------


def handle_mm_fault(st: MmState, mm: MmStruct, vma: Vma, vpn: int, write: bool) -> None:
    """__handle_mm_fault(): make ``vpn`` present (and writable for a write) in ``mm``.

    The caller has checked the VMA and its protection (the SIGSEGV cases).
    """
    g = st.geom
    pud_table = st.tables[mm.pud_table]
    pi = g.pud_index(vpn)
    pe = pud_table.entries[pi]
    if pe is None:
        if (
            thp_vma_allowable_order(st, vma, LEVEL_PUD)
            and thp_vma_suitable_order(st, vma, vpn, LEVEL_PUD)
            and (write or st.cfg.pud_read_fault == "alloc")
        ):
            anon_vma_prepare(st, mm, vma)
            if do_huge_pud_anonymous_page(st, mm, vma, pud_table, pi):
                return
        # pmd_alloc(): the PUD entry becomes a table for good
        pmd_table = pt_alloc(st, mm, LEVEL_PMD)
        pud_table.entries[pi] = mk_table(pmd_table.id)
    elif is_leaf(pe):
        if write and not entry_write(pe):
            if wp_huge_pud(st, mm, vma, pud_table, pi):
                return
        else:
            return  # huge_pud_set_accessed()
    pmd_table = table_of(st, pud_table.entries[pi], LEVEL_PMD)
    mi = g.pmd_index(vpn)
    me = pmd_table.entries[mi]
    if me is None:
        if thp_vma_allowable_order(st, vma, LEVEL_PMD) and thp_vma_suitable_order(
            st, vma, vpn, LEVEL_PMD
        ):
            anon_vma_prepare(st, mm, vma)
            if do_huge_pmd_anonymous_page(st, mm, vma, pmd_table, mi, write):
                return
        pte_table = pt_alloc(st, mm, LEVEL_PTE)  # pte_alloc() / pmd_install()
        pmd_table.entries[mi] = mk_table(pte_table.id)
    elif is_leaf(me) or is_zero(me):
        if not write or (is_leaf(me) and entry_write(me)):
            return  # huge_pmd_set_accessed()
        if do_huge_pmd_wp_page(st, mm, vma, pmd_table, mi):
            return
    pte_table = table_of(st, pmd_table.entries[mi], LEVEL_PTE)
    handle_pte_fault(st, mm, vma, pte_table, g.pte_index(vpn), write)


def handle_pte_fault(st: MmState, mm: MmStruct, vma: Vma, pte_table: PtDesc, ti: int,
                     write: bool) -> None:
    """handle_pte_fault(): do_anonymous_page(), do_swap_page() or do_wp_page()."""
    e = pte_table.entries[ti]
    if e is None:
        do_anonymous_page(st, mm, vma, pte_table, ti, write)
    elif is_swap_pte(e):
        do_swap_page(st, mm, vma, pte_table, ti)
        if write and not entry_write(pte_table.entries[ti]):  # type: ignore[arg-type]
            do_wp_page(st, mm, vma, pte_table, ti)
    elif write and (is_zero(e) or not entry_write(e)):
        do_wp_page(st, mm, vma, pte_table, ti)


def do_anonymous_page(st: MmState, mm: MmStruct, vma: Vma, pte_table: PtDesc, ti: int,
                      write: bool) -> None:
    """do_anonymous_page(): the zero page on a read, a new order-0 folio on a write."""
    if not write:
        pte_table.entries[ti] = ZERO
        return
    anon_vma_prepare(st, mm, vma)
    folio = alloc_page_retrying(st)
    folio_add_new_anon_rmap(st, folio, mm)
    mm.rss_anon += 1
    pte_table.entries[ti] = mk_pte(folio.id, 0, vma.prot == "rw", vma.prot == "rw", True)


def do_swap_page(st: MmState, mm: MmStruct, vma: Vma, pte_table: PtDesc, ti: int) -> None:
    """do_swap_page(): a fresh order-0 folio with the slot's contents.

    The model keeps no swap cache, so the new folio is never exposed to anyone else and is
    mapped exclusive; a write fault then reuses it in place.
    """
    e = pte_table.entries[ti]
    assert e is not None
    slot = swap_slot(st, e[1])
    folio = alloc_page_retrying(st)
    folio.data[0] = slot.data
    if not slot.zeromap:  # swap_read_folio_zeromap(): a zeromap slot is read with no IO
        count_vm_event(st, "pswpin")
    folio_add_new_anon_rmap(st, folio, mm, exclusive=True)
    mm.rss_anon += 1
    mm.rss_swap -= 1
    pte_table.entries[ti] = mk_pte(folio.id, 0, False, False, True)
    free_swap_and_cache(st, e[1])


def wp_can_reuse_anon_folio(st: MmState, folio: Folio) -> bool:
    """wp_can_reuse_anon_folio(): order 0 by refcount, large by the mm-id slots."""
    if folio.order > 0:
        return __wp_can_reuse_large_anon_folio(folio)
    return folio.refcount == 1 and not folio.swapcache


def __wp_can_reuse_large_anon_folio(folio: Folio) -> bool:
    """Every reference a mapping, every mapping in this mm: then the folio is ours."""
    if folio.large_mapcount + 1 <= 1:
        return False
    if folio.shared:
        return False
    if folio.large_mapcount + 1 != folio.refcount:
        return False
    if folio.entire_mapcount != -1:
        # VM_WARN_ON_ONCE_FOLIO(folio_entire_mapcount(folio), folio)
        raise ModelBug("wp_reuse.entire_mapped", f"folio {folio.id} reused while entire-mapped")
    return True


def do_wp_page(st: MmState, mm: MmStruct, vma: Vma, pte_table: PtDesc, ti: int) -> None:
    """do_wp_page(): reuse an exclusive page in place, else copy it (wp_page_copy)."""
    e = pte_table.entries[ti]
    assert e is not None
    if is_present_pte(e):
        folio = st.folios[e[1]]
        page = e[2]
        if folio.anon_exclusive[page] or wp_can_reuse_anon_folio(st, folio):
            folio.anon_exclusive[page] = True
            pte_table.entries[ti] = entry_with(e, write=True, dirty=True, young=True)
            return
    wp_page_copy(st, mm, vma, pte_table, ti)


def wp_page_copy(st: MmState, mm: MmStruct, vma: Vma, pte_table: PtDesc, ti: int) -> None:
    """wp_page_copy(): a new order-0 folio with the old contents (zero for the zero page)."""
    e = pte_table.entries[ti]
    assert e is not None
    anon_vma_prepare(st, mm, vma)
    new = alloc_page_retrying(st)
    old = st.folios[e[1]] if is_present_pte(e) else None
    if old is not None:
        new.data[0] = old.data[e[2]]
    else:
        mm.rss_anon += 1  # the zero page was not counted
    folio_add_new_anon_rmap(st, new, mm)
    pte_table.entries[ti] = mk_pte(new.id, 0, True, True, True)
    if old is not None:
        folio_remove_rmap(st, old, e[2], 1, mm, LEVEL_PTE)
        folio_put(st, old)


# --------------------------------------------------------------------------------------
# fork: copy_page_range()
# --------------------------------------------------------------------------------------


def copy_page_range(st: MmState, dst_mm: MmStruct, src_mm: MmStruct, vma: Vma) -> None:
    """copy_page_range() for one VMA; raises FaultOOM when a page copy cannot allocate."""
    if vma.anon_vma is None:
        return  # vma_needs_copy(): nothing was ever faulted here, the child refaults
    g = st.geom
    src_pud = st.tables[src_mm.pud_table]
    dst_pud = st.tables[dst_mm.pud_table]
    for pi, addr, nxt in pud_range(g, vma.start, vma.end):
        se = src_pud.entries[pi]
        if se is None:
            continue
        if is_leaf(se) and copy_huge_pud(st, dst_mm, src_mm, dst_pud, src_pud, pi):
            continue
        src_pmd = table_of(st, src_pud.entries[pi], LEVEL_PMD)
        if dst_pud.entries[pi] is None:
            dst_pud.entries[pi] = mk_table(pt_alloc(st, dst_mm, LEVEL_PMD).id)
        dst_pmd = table_of(st, dst_pud.entries[pi], LEVEL_PMD)
        copy_pmd_range(st, dst_mm, src_mm, vma, dst_pmd, src_pmd, addr, nxt)


def copy_pmd_range(st: MmState, dst_mm: MmStruct, src_mm: MmStruct, vma: Vma, dst_pmd: PtDesc,
                   src_pmd: PtDesc, start: int, end: int) -> None:
    g = st.geom
    for mi, addr, nxt in pmd_range(g, start, end):
        se = src_pmd.entries[mi]
        if se is None:
            continue
        if (is_leaf(se) or is_zero(se)) and copy_huge_pmd(
            st, dst_mm, src_mm, dst_pmd, src_pmd, mi
        ):
            continue
        src_pte = table_of(st, src_pmd.entries[mi], LEVEL_PTE)
        if dst_pmd.entries[mi] is None:
            dst_pmd.entries[mi] = mk_table(pt_alloc(st, dst_mm, LEVEL_PTE).id)
        dst_pte = table_of(st, dst_pmd.entries[mi], LEVEL_PTE)
        copy_pte_range(st, dst_mm, src_mm, vma, dst_pte, src_pte, addr, nxt)


def copy_pte_range(st: MmState, dst_mm: MmStruct, src_mm: MmStruct, vma: Vma, dst_pte: PtDesc,
                   src_pte: PtDesc, start: int, end: int) -> None:
    """copy_pte_range(): every PTE of ``[start, end)`` (inside one PMD), in order."""
    for ti in pte_range(st.geom, start, end):
        copy_pte(st, dst_mm, src_mm, vma, dst_pte, src_pte, ti)


def copy_pte(st: MmState, dst_mm: MmStruct, src_mm: MmStruct, vma: Vma, dst_pte: PtDesc,
             src_pte: PtDesc, ti: int) -> None:
    """copy_present_ptes() / copy_nonpresent_pte() for one PTE."""
    e = src_pte.entries[ti]
    if e is None:
        return
    if is_zero(e):
        dst_pte.entries[ti] = ZERO
        return
    if is_swap_pte(e):
        swap_duplicate(st, e[1])
        dst_mm.rss_swap += 1
        dst_pte.entries[ti] = e
        return
    folio = st.folios[e[1]]
    page = e[2]
    folio_get(folio)
    if folio_try_dup_anon_rmap(folio, page, 1, dst_mm, src_mm, LEVEL_PTE):
        dst_mm.rss_anon += 1
        src_pte.entries[ti] = entry_with(e, write=False)
        dst_pte.entries[ti] = entry_with(e, write=False, young=False)
        return
    # Page may be pinned: copy_present_page() gives the child its own copy now.
    folio_put(st, folio)
    new = folio_alloc(st, 0)
    if new is None:
        raise FaultOOM
    new.data[0] = folio.data[page]
    folio_add_new_anon_rmap(st, new, dst_mm)
    dst_mm.rss_anon += 1
    rw = vma.prot == "rw"
    dst_pte.entries[ti] = mk_pte(new.id, 0, rw, True, True)


# --------------------------------------------------------------------------------------
# zap: unmap_page_range()
# --------------------------------------------------------------------------------------


def zap_page_range(st: MmState, mm: MmStruct, start: int, end: int, reclaim_pt: bool = False
                   ) -> None:
    """unmap_page_range() over ``[start, end)`` inside one VMA.

    ``reclaim_pt`` (MADV_DONTNEED, CONFIG_PT_RECLAIM): a PTE table whose whole PMD range is
    zapped is freed once empty (zap_pte_range -> try_to_free_pte()).
    """
    g = st.geom
    pud_table = st.tables[mm.pud_table]
    for pi, addr, nxt in pud_range(g, start, end):
        pe = pud_table.entries[pi]
        if pe is None:
            continue
        if is_leaf(pe):
            if nxt - addr == g.pud_nr:
                zap_huge_pud(st, mm, pud_table, pi)
                continue
            __split_huge_pud_locked(st, mm, pud_table, pi)
        zap_pmd_range(st, mm, table_of(st, pud_table.entries[pi], LEVEL_PMD), addr, nxt, reclaim_pt)


def zap_pmd_range(st: MmState, mm: MmStruct, pmd_table: PtDesc, start: int, end: int,
                  reclaim_pt: bool = False) -> None:
    g = st.geom
    for mi, addr, nxt in pmd_range(g, start, end):
        me = pmd_table.entries[mi]
        if me is None:
            continue
        if is_leaf(me) or is_zero(me):
            if nxt - addr == g.pmd_nr:
                zap_huge_pmd(st, mm, pmd_table, mi)
                continue
            __split_huge_pmd_locked(st, mm, pmd_table, mi)
        pte_table = table_of(st, pmd_table.entries[mi], LEVEL_PTE)
        zap_pte_range(st, mm, pte_table, pte_range(g, addr, nxt))
        if reclaim_pt and nxt - addr == g.pmd_nr and all(e is None for e in pte_table.entries):
            pmd_table.entries[mi] = None
            pt_free(st, mm, pte_table)


def zap_pte_range(st: MmState, mm: MmStruct, pte_table: PtDesc, span: range) -> None:
    """zap_pte_range(): present PTEs of one folio go in batches (folio_pte_batch), which
    decides whether __folio_remove_rmap sees a partial mapping."""
    entries = pte_table.entries
    ti, last = span.start, span.stop
    while ti < last:
        e = entries[ti]
        if e is None:
            ti += 1
            continue
        if is_present_pte(e):
            fid, page = e[1], e[2]
            folio = st.folios[fid]
            n = 1
            while ti + n < last:
                nx = entries[ti + n]
                if nx is None or nx[0] != "pte" or nx[1] != fid or nx[2] != page + n:
                    break
                n += 1
            for k in range(ti, ti + n):
                entries[k] = None
            mm.rss_anon -= n
            folio_remove_rmap(st, folio, page, n, mm, LEVEL_PTE)
            folio_put(st, folio, n)
            ti += n
            continue
        entries[ti] = None
        if is_swap_pte(e):
            mm.rss_swap -= 1
            free_swap_and_cache(st, e[1])
        ti += 1


# --------------------------------------------------------------------------------------
# free_pgtables()
# --------------------------------------------------------------------------------------


def range_mapped(mm: MmStruct, start: int, end: int) -> bool:
    return any(v.start < end and start < v.end for v in mm.vmas)


def free_pgtables(st: MmState, mm: MmStruct, start: int, end: int) -> None:
    """free_pgtables(): free PTE and PMD tables over ``[start, end)`` once no VMA covers
    any part of their range (the floor/ceiling rule of free_pgd_range)."""
    g = st.geom
    pud_table = st.tables[mm.pud_table]
    for pi, addr, nxt in pud_range(g, start, end):
        pe = pud_table.entries[pi]
        if not is_table(pe):
            continue
        pmd_table = table_of(st, pe, LEVEL_PMD)
        base = addr - addr % g.pud_nr
        for mi, lo, _ in pmd_range(g, addr, nxt):
            lo -= lo % g.pmd_nr
            me = pmd_table.entries[mi]
            if is_table(me) and not range_mapped(mm, lo, lo + g.pmd_nr):
                pte_table = table_of(st, me, LEVEL_PTE)
                if any(x is not None for x in pte_table.entries):
                    raise ModelBug("free_pgtables.not_empty", f"PTE table {pte_table.id}")
                pmd_table.entries[mi] = None
                pt_free(st, mm, pte_table)
        if not range_mapped(mm, base, base + g.pud_nr):
            if any(x is not None for x in pmd_table.entries) or pmd_table.w16 is not None:
                raise ModelBug("free_pgtables.not_empty", f"PMD table {pmd_table.id}")
            pud_table.entries[pi] = None
            pt_free(st, mm, pmd_table)
