"""Huge PUD and PMD mappings: mm/huge_memory.c (plus the RFC's anonymous PUD paths).

Each function is named after the kernel function it models.  The PUD paths follow the PMD
ones one level up, as the RFC does, with the two-level deposit of MODEL.md section 4 and the
PUD split going straight to PTE level (``__split_huge_pud_locked``).
"""

from __future__ import annotations

from pudthp_ref.folio import deferred_split_folio, folio_alloc, folio_get, folio_put
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc, Vma
from pudthp_ref.pgtable import (
    ZERO,
    entry_with,
    is_leaf,
    is_table,
    is_zero,
    mk_leaf,
    mk_pte,
    mk_table,
    pgtable_trans_huge_deposit,
    pgtable_trans_huge_pud_deposit,
    pgtable_trans_huge_pud_withdraw,
    pgtable_trans_huge_withdraw,
    pt_alloc,
    pt_free,
    table_of,
)
from pudthp_ref.rmap import (
    folio_add_anon_rmap,
    folio_add_new_anon_rmap,
    folio_remove_rmap,
    folio_try_dup_anon_rmap,
)
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE, LEVEL_PUD, ModelBug
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event

# --------------------------------------------------------------------------------------
# Which orders a VMA allows: include/linux/huge_mm.h thp_vma_allowable_order()
# --------------------------------------------------------------------------------------


def thp_vma_allowable_order(st: MmState, vma: Vma, level: str) -> bool:
    """Per-size ``enabled`` (always/inherit/madvise/never), the global setting, VM_*HUGEPAGE."""
    if vma.nohugepage:  # vma_thp_disabled()
        return False
    setting = st.cfg.pud_enabled if level == LEVEL_PUD else st.cfg.pmd_enabled
    glob = st.cfg.thp_enabled
    if setting == "always":
        return True
    if setting == "madvise":
        return vma.hugepage
    if setting == "inherit":
        return glob == "always" or (glob == "madvise" and vma.hugepage)
    return False


def thp_vma_suitable_order(st: MmState, vma: Vma, vpn: int, level: str) -> bool:
    """thp_vma_suitable_order(): the aligned huge range lies inside the VMA."""
    size = st.geom.pud_nr if level == LEVEL_PUD else st.geom.pmd_nr
    base = vpn - vpn % size
    return vma.start <= base and base + size <= vma.end


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------


def do_huge_pud_anonymous_page(st: MmState, mm: MmStruct, vma: Vma, pud_table: PtDesc,
                               pi: int) -> bool:
    """The RFC's anonymous PUD fault: allocate, zero, deposit 1 PMD + P PTE tables, map.

    Returns False for VM_FAULT_FALLBACK (the order-PUD allocation failed).
    """
    folio = folio_alloc(st, st.geom.pud_order)
    if folio is None:
        count_mthp_stat(st, st.geom.pud_order, "anon_fault_fallback")
        count_vm_event(st, "thp_fault_fallback_pud")
        return False
    # Fault order (MODEL.md 4): the PMD table goes on the PUD stack first, then its P PTE
    # tables are deposited into it with the PMD-level routine.
    pmd_table = pt_alloc(st, mm, LEVEL_PMD)
    pgtable_trans_huge_pud_deposit(st, pud_table, pmd_table)
    for _ in range(st.geom.P):
        pgtable_trans_huge_deposit(st, pmd_table, pt_alloc(st, mm, LEVEL_PTE))
    pud_table.entries[pi] = mk_leaf(folio.id, vma.prot == "rw", True, True)
    folio_add_new_anon_rmap(st, folio, mm)
    mm.rss_anon += folio.nr
    count_vm_event(st, "thp_fault_alloc_pud")
    count_mthp_stat(st, folio.order, "anon_fault_alloc")
    deferred_split_folio(st, folio, False)
    return True


def vma_alloc_anon_folio_pmd(st: MmState) -> Folio | None:
    """vma_alloc_anon_folio_pmd(): counts THP_FAULT_FALLBACK on failure."""
    folio = folio_alloc(st, st.geom.pmd_order)
    if folio is None:
        count_vm_event(st, "thp_fault_fallback")
        count_mthp_stat(st, st.geom.pmd_order, "anon_fault_fallback")
    return folio


def map_anon_folio_pmd_pf(st: MmState, mm: MmStruct, vma: Vma, folio: Folio, pmd_table: PtDesc,
                          mi: int) -> None:
    """map_anon_folio_pmd_pf(): dirty, writable iff VM_WRITE, rmap, RSS, deferred queue."""
    pmd_table.entries[mi] = mk_leaf(folio.id, vma.prot == "rw", True, True)
    folio_add_new_anon_rmap(st, folio, mm)
    mm.rss_anon += folio.nr
    count_vm_event(st, "thp_fault_alloc")
    count_mthp_stat(st, folio.order, "anon_fault_alloc")
    deferred_split_folio(st, folio, False)


def do_huge_pmd_anonymous_page(st: MmState, mm: MmStruct, vma: Vma, pmd_table: PtDesc, mi: int,
                               write: bool) -> bool:
    """do_huge_pmd_anonymous_page(): huge zero PMD on a read fault, else a PMD THP."""
    if not write and st.cfg.use_zero_page:
        pgtable = pt_alloc(st, mm, LEVEL_PTE)
        # mm_get_huge_zero_folio(): the huge zero folio is allocated once for the model's life
        if not st.huge_zero_allocated:
            st.huge_zero_allocated = True
            count_vm_event(st, "thp_zero_page_alloc")
        pgtable_trans_huge_deposit(st, pmd_table, pgtable)
        pmd_table.entries[mi] = ZERO
        return True
    folio = vma_alloc_anon_folio_pmd(st)
    if folio is None:
        return False
    pgtable = pt_alloc(st, mm, LEVEL_PTE)
    pgtable_trans_huge_deposit(st, pmd_table, pgtable)
    map_anon_folio_pmd_pf(st, mm, vma, folio, pmd_table, mi)
    return True


def do_huge_zero_wp_pmd(st: MmState, mm: MmStruct, vma: Vma, pmd_table: PtDesc, mi: int) -> bool:
    """do_huge_zero_wp_pmd(): replace the huge zero PMD by a new THP, reusing its deposit."""
    folio = vma_alloc_anon_folio_pmd(st)
    if folio is None:
        return False
    map_anon_folio_pmd_pf(st, mm, vma, folio, pmd_table, mi)
    return True


def huge_wp_reuse(st: MmState, folio: Folio) -> bool:
    """The reuse test of do_huge_pmd_wp_page(): head AnonExclusive, or the only reference."""
    if folio.anon_exclusive[0]:
        return True
    if folio.refcount == 1:
        # folio_move_anon_rmap() + SetPageAnonExclusive(head)
        folio.anon_exclusive[0] = True
        return True
    return False


def do_huge_pmd_wp_page(st: MmState, mm: MmStruct, vma: Vma, pmd_table: PtDesc, mi: int) -> bool:
    """do_huge_pmd_wp_page(): reuse in place, else split (False: handle at PTE level)."""
    e = pmd_table.entries[mi]
    assert e is not None
    if is_zero(e):
        if do_huge_zero_wp_pmd(st, mm, vma, pmd_table, mi):
            return True
        __split_huge_pmd_locked(st, mm, pmd_table, mi)
        return False
    if huge_wp_reuse(st, st.folios[e[1]]):
        pmd_table.entries[mi] = entry_with(e, write=True, dirty=True, young=True)
        return True
    __split_huge_pmd_locked(st, mm, pmd_table, mi)
    return False


def wp_huge_pud(st: MmState, mm: MmStruct, vma: Vma, pud_table: PtDesc, pi: int) -> bool:
    """Write fault on a read-only PUD leaf: the PMD rules when ``pud_wp_reuse``, else split."""
    e = pud_table.entries[pi]
    assert e is not None
    if st.cfg.pud_wp_reuse and huge_wp_reuse(st, st.folios[e[1]]):
        pud_table.entries[pi] = entry_with(e, write=True, dirty=True, young=True)
        return True
    __split_huge_pud_locked(st, mm, pud_table, pi)
    return False


# --------------------------------------------------------------------------------------
# Page-table splits (the folio stays whole)
# --------------------------------------------------------------------------------------


def __split_huge_pud_locked(st: MmState, mm: MmStruct, pud_table: PtDesc, pi: int) -> None:
    """PUD leaf straight to PTE level: pop the deposited PMD table, withdraw its P PTE tables.

    refcount += nr - 1, every page PTE-mapped once, the PUD rmap removed; RSS and
    pgtables_bytes unchanged; AnonExclusive of the head copied to every page.
    """
    e = pud_table.entries[pi]
    if not is_leaf(e):
        raise ModelBug("split_pud.not_leaf", f"PUD entry {pi} of table {pud_table.id} is {e!r}")
    assert e is not None
    folio = st.folios[e[1]]
    P = st.geom.P
    count_vm_event(st, "thp_split_pud")
    _, fid, write, dirty, young = e
    if dirty:
        folio.dirty = True  # folio_set_dirty(), as __split_huge_pmd_locked does
    anon_exclusive = folio.anon_exclusive[0]
    pmd_table = pgtable_trans_huge_pud_withdraw(st, pud_table)
    folio_get(folio, folio.nr - 1)
    folio_add_anon_rmap(st, folio, 0, folio.nr, mm, LEVEL_PTE, anon_exclusive)
    for i in range(P):
        pte_table = pgtable_trans_huge_withdraw(st, pmd_table)
        base = i * P
        pte_table.entries = [mk_pte(fid, base + j, write, dirty, young) for j in range(P)]
        pmd_table.entries[i] = mk_table(pte_table.id)
    folio_remove_rmap(st, folio, 0, folio.nr, mm, LEVEL_PUD)
    pud_table.entries[pi] = mk_table(pmd_table.id)


def __split_huge_pmd_locked(st: MmState, mm: MmStruct, pmd_table: PtDesc, mi: int) -> None:
    """__split_huge_pmd_locked() (non-freeze) and __split_huge_zero_page_pmd()."""
    e = pmd_table.entries[mi]
    count_vm_event(st, "thp_split_pmd")
    pte_table = pgtable_trans_huge_withdraw(st, pmd_table)
    if is_zero(e):
        pte_table.entries = [ZERO] * st.geom.P
        pmd_table.entries[mi] = mk_table(pte_table.id)
        return
    if not is_leaf(e):
        raise ModelBug("split_pmd.not_leaf", f"PMD entry {mi} of table {pmd_table.id} is {e!r}")
    assert e is not None
    folio = st.folios[e[1]]
    _, fid, write, dirty, young = e
    if dirty:
        folio.dirty = True
    anon_exclusive = folio.anon_exclusive[0]
    folio_get(folio, folio.nr - 1)
    folio_add_anon_rmap(st, folio, 0, folio.nr, mm, LEVEL_PTE, anon_exclusive)
    pte_table.entries = [mk_pte(fid, j, write, dirty, young) for j in range(folio.nr)]
    folio_remove_rmap(st, folio, 0, folio.nr, mm, LEVEL_PMD)
    pmd_table.entries[mi] = mk_table(pte_table.id)


def split_huge_at(st: MmState, mm: MmStruct, vpn: int) -> None:
    """vma_adjust_trans_huge() for one boundary: split a PUD or PMD leaf straddling ``vpn``.

    MODEL.md 2: a split point strictly inside a huge mapping splits it first, PUD included.
    """
    g = st.geom
    pud_table = st.tables[mm.pud_table]
    pi = g.pud_index(vpn)
    if pi >= g.P:
        return
    pe = pud_table.entries[pi]
    if is_leaf(pe):
        if vpn % g.pud_nr:
            __split_huge_pud_locked(st, mm, pud_table, pi)
        return
    if not is_table(pe):
        return
    pmd_table = table_of(st, pe, LEVEL_PMD)
    mi = g.pmd_index(vpn)
    me = pmd_table.entries[mi]
    if (is_leaf(me) or is_zero(me)) and vpn % g.pmd_nr:
        __split_huge_pmd_locked(st, mm, pmd_table, mi)


# --------------------------------------------------------------------------------------
# fork
# --------------------------------------------------------------------------------------


def copy_huge_pud(st: MmState, dst_mm: MmStruct, src_mm: MmStruct, dst_pud: PtDesc,
                  src_pud: PtDesc, pi: int) -> bool:
    """copy_huge_pud(): share the PUD leaf with the child, or split it (False: -EAGAIN).

    The child's deposit is allocated first, as copy_huge_pmd() allocates its table first;
    when the folio may be pinned it is freed again and the parent's PUD is split.
    """
    e = src_pud.entries[pi]
    assert e is not None
    folio = st.folios[e[1]]
    pmd_table = pt_alloc(st, dst_mm, LEVEL_PMD)
    pte_tables = [pt_alloc(st, dst_mm, LEVEL_PTE) for _ in range(st.geom.P)]
    folio_get(folio)
    if not folio_try_dup_anon_rmap(folio, 0, folio.nr, dst_mm, src_mm, LEVEL_PUD):
        folio_put(st, folio)
        for t in (*pte_tables, pmd_table):
            pt_free(st, dst_mm, t)
        __split_huge_pud_locked(st, src_mm, src_pud, pi)
        return False
    pgtable_trans_huge_pud_deposit(st, dst_pud, pmd_table)
    for t in pte_tables:
        pgtable_trans_huge_deposit(st, pmd_table, t)
    dst_mm.rss_anon += folio.nr
    src_pud.entries[pi] = entry_with(e, write=False)
    dst_pud.entries[pi] = entry_with(e, write=False, young=False)
    return True


def copy_huge_pmd(st: MmState, dst_mm: MmStruct, src_mm: MmStruct, dst_pmd: PtDesc,
                  src_pmd: PtDesc, mi: int) -> bool:
    """copy_huge_pmd(): THP and huge zero PMDs; False (-EAGAIN) after splitting the parent."""
    e = src_pmd.entries[mi]
    assert e is not None
    pgtable = pt_alloc(st, dst_mm, LEVEL_PTE)
    if is_zero(e):
        pgtable_trans_huge_deposit(st, dst_pmd, pgtable)
        dst_pmd.entries[mi] = ZERO
        return True
    folio = st.folios[e[1]]
    folio_get(folio)
    if not folio_try_dup_anon_rmap(folio, 0, folio.nr, dst_mm, src_mm, LEVEL_PMD):
        folio_put(st, folio)
        pt_free(st, dst_mm, pgtable)
        __split_huge_pmd_locked(st, src_mm, src_pmd, mi)
        return False
    dst_mm.rss_anon += folio.nr
    pgtable_trans_huge_deposit(st, dst_pmd, pgtable)
    src_pmd.entries[mi] = entry_with(e, write=False)
    dst_pmd.entries[mi] = entry_with(e, write=False, young=False)
    return True


# --------------------------------------------------------------------------------------
# zap
# --------------------------------------------------------------------------------------


def zap_huge_pud(st: MmState, mm: MmStruct, pud_table: PtDesc, pi: int) -> None:
    """zap_huge_pud(): rmap, RSS, withdraw and free the two-level deposit, drop the ref."""
    e = pud_table.entries[pi]
    assert e is not None
    pud_table.entries[pi] = None
    folio = st.folios[e[1]]
    folio_remove_rmap(st, folio, 0, folio.nr, mm, LEVEL_PUD)
    mm.rss_anon -= folio.nr
    pmd_table = pgtable_trans_huge_pud_withdraw(st, pud_table)
    for _ in range(st.geom.P):
        pt_free(st, mm, pgtable_trans_huge_withdraw(st, pmd_table))
    pt_free(st, mm, pmd_table)
    folio_put(st, folio)


def zap_huge_pmd(st: MmState, mm: MmStruct, pmd_table: PtDesc, mi: int) -> None:
    """zap_huge_pmd(): THP or huge zero PMD; the deposited PTE table is freed."""
    e = pmd_table.entries[mi]
    assert e is not None
    pmd_table.entries[mi] = None
    folio = None
    if is_leaf(e):
        folio = st.folios[e[1]]
        folio_remove_rmap(st, folio, 0, folio.nr, mm, LEVEL_PMD)
        mm.rss_anon -= folio.nr
    pt_free(st, mm, pgtable_trans_huge_withdraw(st, pmd_table))
    if folio is not None:
        folio_put(st, folio)


# --------------------------------------------------------------------------------------
# mprotect
# --------------------------------------------------------------------------------------


def change_huge_pud(st: MmState, pud_table: PtDesc, pi: int) -> None:
    """change_huge_pud(): pud_modify() drops write for a private mapping; never upgraded."""
    e = pud_table.entries[pi]
    assert e is not None
    pud_table.entries[pi] = entry_with(e, write=False)


def change_huge_pmd(st: MmState, pmd_table: PtDesc, mi: int, prot: str) -> None:
    """change_huge_pmd(): pmd_modify(), then upgrade to writable iff the head is exclusive."""
    e = pmd_table.entries[mi]
    if not is_leaf(e):
        return  # the huge zero PMD stays read-only
    assert e is not None
    folio = st.folios[e[1]]
    write = prot == "rw" and folio.anon_exclusive[0]  # can_change_pmd_writable()
    pmd_table.entries[mi] = entry_with(e, write=write)
