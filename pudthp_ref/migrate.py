"""Migration to a node: mm/mempolicy.c (mbind MPOL_MF_MOVE, queue_pages_range) and
mm/migrate.c (migrate_pages, migrate_folio_unmap/move, remove_migration_ptes/pmd).

The walk splits PUD leaves first (no PUD migration entry); PMD leaves go through a PMD
migration entry and come back as a PMD leaf of the new folio.  A large folio moves whole
when a folio of its order can be allocated on the node, else it is split and its pages
move one by one.  A pinned folio stays.  Folios that may be mapped shared are not queued
(MPOL_MF_MOVE without MPOL_MF_MOVE_ALL).
"""

from __future__ import annotations

from pudthp_ref.folio import (
    deferred_split_folio,
    folio_alloc,
    folio_unqueue_deferred_split,
    free_folio,
)
from pudthp_ref.huge_memory import __split_huge_pud_locked
from pudthp_ref.huge_split import split_folio
from pudthp_ref.mm_types import Folio, MmState, MmStruct
from pudthp_ref.pgtable import is_leaf, is_present_pte, is_table, mk_leaf, mk_pte, table_of
from pudthp_ref.rmap import (
    LEVEL_PMD,
    LEVEL_PTE,
    folio_add_anon_rmap,
    folio_maybe_dma_pinned,
    folio_remove_rmap,
)
from pudthp_ref.spec import EINVAL, ModelBug, Result
from pudthp_ref.vmscan import folio_maybe_mapped_shared, isolate
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event


def sys_migrate(st: MmState, mm: MmStruct, start: int, npages: int, node: int) -> Result:
    """mbind(MPOL_BIND to ``node``, MPOL_MF_MOVE) over ``[start, start + npages)``."""
    g = st.geom
    if node >= st.cfg.nodes or start + npages > g.space:
        return EINVAL
    end = start + npages
    queued: list[Folio] = []
    pud_table = st.tables[mm.pud_table]
    for v in mm.vmas:
        lo0, hi0 = max(v.start, start), min(v.end, end)
        if lo0 >= hi0:
            continue
        for pi in range(g.pud_index(lo0), g.pud_index(hi0 - 1) + 1):
            if is_leaf(pud_table.entries[pi]):
                __split_huge_pud_locked(st, mm, pud_table, pi)  # walk_pud_range()
            if not is_table(pud_table.entries[pi]):
                continue
            pmd_table = table_of(st, pud_table.entries[pi], "pmd")
            base = pi * g.pud_nr
            lo, hi = max(lo0, base), min(hi0, base + g.pud_nr)
            for vpn in range(lo - lo % g.pmd_nr, hi, g.pmd_nr):
                me = pmd_table.entries[g.pmd_index(vpn)]
                if is_leaf(me):
                    assert me is not None
                    queue_folio(st, st.folios[me[1]], node, queued)
                    continue
                if not is_table(me):
                    continue
                pte_table = table_of(st, me, "pte")
                a, b = max(lo, vpn), min(hi, vpn + g.pmd_nr)
                for ti in range(g.pte_index(a), g.pte_index(a) + (b - a)):
                    e = pte_table.entries[ti]
                    if is_present_pte(e):
                        assert e is not None
                        queue_folio(st, st.folios[e[1]], node, queued)
    migrate_pages(st, queued, node)
    return 0


def queue_folio(st: MmState, folio: Folio, node: int, queued: list[Folio]) -> None:
    """queue_folio_required() + migrate_folio_add()."""
    if folio.node == node or folio_maybe_mapped_shared(folio):
        return
    isolate(queued, folio)


def migrate_pages(st: MmState, folios: list[Folio], node: int) -> None:
    todo = list(folios)
    while todo:
        folio = todo.pop(0)
        if folio.freed:
            continue
        is_thp = folio.order >= st.geom.pmd_order
        mapped = folio.large_mapcount + 1 if folio.order else folio.mapcount[0] + 1
        if folio_maybe_dma_pinned(folio) or folio.refcount != mapped:
            if is_thp:
                count_vm_event(st, "thp_migration_fail")  # the extra reference stays
            continue
        dst = folio_alloc(st, folio.order, node)
        if dst is None:
            if folio.order == 0:
                continue
            first_new = st.next_folio_id
            if not split_folio(st, folio):
                if is_thp:
                    count_vm_event(st, "thp_migration_fail")
                continue
            if is_thp:
                count_vm_event(st, "thp_migration_split")
            pieces = [folio] + [st.folios[i] for i in range(first_new, st.next_folio_id)]
            todo[0:0] = [f for f in pieces if not f.freed]
            continue
        move_folio(st, folio, dst)
        if is_thp:
            count_vm_event(st, "thp_migration_success")


def move_folio(st: MmState, src: Folio, dst: Folio) -> None:
    """migrate_folio_unmap() + migrate_folio_move(): every mapping of ``src`` through a
    migration entry to the same place in ``dst``; contents, dirty and the deferred queue
    (recorded before the unmap) carried over; ``src`` freed."""
    was_queued, was_partial = src.deferred, src.partially_mapped
    dst.data = list(src.data)
    dst.dirty = src.dirty
    for mm in st.mms:
        if not mm.alive:
            continue
        pud_table = st.tables[mm.pud_table]
        for pe in pud_table.entries:
            if not is_table(pe):
                continue
            pmd_table = table_of(st, pe, "pmd")
            for mi, me in enumerate(pmd_table.entries):
                if is_leaf(me) and me is not None and me[1] == src.id:
                    # set_pmd_migration_entry() then remove_migration_pmd()
                    _, _, write, dirty, young = me
                    exclusive = write or src.anon_exclusive[0]
                    src.anon_exclusive[0] = False
                    folio_remove_rmap(st, src, 0, src.nr, mm, LEVEL_PMD)
                    src.refcount -= 1
                    dst.refcount += 1
                    pmd_table.entries[mi] = mk_leaf(dst.id, write, dirty, young)
                    folio_add_anon_rmap(st, dst, 0, dst.nr, mm, LEVEL_PMD, exclusive)
                    continue
                if not is_table(me):
                    continue
                pte_table = table_of(st, me, "pte")
                for ti, e in enumerate(pte_table.entries):
                    if e is not None and e[0] == "pte" and e[1] == src.id:
                        _, _, page, write, dirty, young = e
                        exclusive = write or src.anon_exclusive[page]
                        src.anon_exclusive[page] = False
                        folio_remove_rmap(st, src, page, 1, mm, LEVEL_PTE)
                        src.refcount -= 1
                        dst.refcount += 1
                        pte_table.entries[ti] = mk_pte(dst.id, page, write, dirty, young)
                        folio_add_anon_rmap(st, dst, page, 1, mm, LEVEL_PTE, exclusive)
    dst.refcount -= 1  # folio_alloc()'s reference, now carried by the mappings
    if dst.order > 0:
        count_mthp_stat(st, dst.order, "nr_anon", 1)  # __folio_migrate_mapping()
    if was_queued:
        folio_unqueue_deferred_split(st, src)
        deferred_split_folio(st, dst, was_partial)
    if src.refcount != 0:
        raise ModelBug("migrate.src_referenced", f"folio {src.id} referenced after the move")
    free_folio(st, src)
