"""Migration to a node: mm/mempolicy.c (mbind MPOL_MF_MOVE, queue_pages_range) and
mm/migrate.c (migrate_pages, migrate_folio_unmap/move, remove_migration_ptes/pmd).

The walk splits PUD leaves first (no PUD migration entry); PMD leaves go through a PMD
migration entry and come back as a PMD leaf of the new folio.  A large folio moves whole
when a folio of its order can be allocated on the node, else it is split and its pages
move one by one.  A pinned folio stays.  Folios that may be mapped shared are not queued
(MPOL_MF_MOVE without MPOL_MF_MOVE_ALL).
"""

from __future__ import annotations

from collections import deque

from pudthp_ref.folio import (
    deferred_split_folio,
    folio_alloc,
    folio_unqueue_deferred_split,
    free_folio,
)
from pudthp_ref.huge_split import (
    remove_migration_entry,
    set_pmd_migration_entry,
    split_folio_to_list,
    try_to_migrate_one,
)
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc
from pudthp_ref.page_vma_mapped import page_vma_mapped_walk
from pudthp_ref.pagewalk import walk_page_range
from pudthp_ref.pgtable import (
    is_leaf,
    is_present_pte,
    is_table,
    pte_range,
    table_of,
)
from pudthp_ref.rmap import folio_maybe_dma_pinned
from pudthp_ref.spec import EINVAL, ModelBug, Result
from pudthp_ref.vmscan import Isolated, folio_mapcount, folio_maybe_mapped_shared
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event


def sys_migrate(st: MmState, mm: MmStruct, start: int, npages: int, node: int) -> Result:
    """mbind(MPOL_BIND to ``node``, MPOL_MF_MOVE) over ``[start, start + npages)``."""
    g = st.geom
    if node >= st.cfg.nodes or start + npages > g.space:
        return EINVAL
    queued: Isolated = {}

    def pmd_entry(pmd_table: PtDesc, mi: int, a: int, b: int) -> None:
        """queue_folios_pmd() / queue_folios_pte_range()."""
        me = pmd_table.entries[mi]
        assert me is not None
        if is_leaf(me):
            queue_folio(st.folios[me[1]], node, queued)
        elif is_table(me):
            pte_table = table_of(st, me, "pte")
            for ti in pte_range(g, a, b):
                e = pte_table.entries[ti]
                if is_present_pte(e):
                    assert e is not None
                    queue_folio(st.folios[e[1]], node, queued)

    for v in mm.vmas:
        lo, hi = max(v.start, start), min(v.end, start + npages)
        if lo < hi:
            walk_page_range(st, mm, lo, hi, pmd_entry)
    migrate_pages(st, queued, node)
    return 0


def queue_folio(folio: Folio, node: int, queued: Isolated) -> None:
    """queue_folio_required() + migrate_folio_add()."""
    if folio.node != node and not folio_maybe_mapped_shared(folio):
        queued.setdefault(folio.id, folio)


def migrate_pages(st: MmState, queued: Isolated, node: int) -> None:
    """migrate_pages(): each folio moved, split (its pages queued next) or left."""
    todo = deque(queued.values())
    while todo:
        folio = todo.popleft()
        if folio.freed:
            continue
        is_thp = folio.order >= st.geom.pmd_order
        if folio_maybe_dma_pinned(folio) or folio.refcount != folio_mapcount(folio):
            if is_thp:
                count_vm_event(st, "thp_migration_fail")  # the extra reference stays
            continue
        dst = folio_alloc(st, folio.order, node)
        if dst is not None:
            move_folio(st, folio, dst)
            if is_thp:
                count_vm_event(st, "thp_migration_success")
            continue
        if folio.order == 0:
            continue
        tails = split_folio_to_list(st, folio)
        if tails is None:
            if is_thp:
                count_vm_event(st, "thp_migration_fail")
            continue
        if is_thp:
            count_vm_event(st, "thp_migration_split")
        todo.extendleft(reversed([folio, *tails]))


def move_folio(st: MmState, src: Folio, dst: Folio) -> None:
    """migrate_folio_unmap() + migrate_folio_move(): every mapping of ``src`` through a
    migration entry to the same place in ``dst``; contents, dirty and the deferred queue
    (as it is after the unmap) carried over; ``src`` freed."""
    migration = [
        set_pmd_migration_entry(st, at.mm, src, at.table, at.index)
        if at.level == "pmd"
        else try_to_migrate_one(st, at.mm, src, at.table, at.index)
        for at in page_vma_mapped_walk(st, src)
    ]
    # migrate_folio_move() reads the queue state after migrate_folio_unmap(): a PTE-mapped
    # folio flagged by the one-by-one unmap hands the flag on to its destination.
    was_queued, was_partial = src.deferred, src.partially_mapped
    dst.data = list(src.data)
    dst.dirty = src.dirty
    for m in migration:
        remove_migration_entry(st, m, dst, m.page)
    dst.refcount -= 1  # folio_alloc()'s reference, now carried by the mappings
    if dst.order > 0:
        count_mthp_stat(st, dst.order, "nr_anon", 1)  # __folio_migrate_mapping()
    if was_queued:
        folio_unqueue_deferred_split(st, src)
        deferred_split_folio(st, dst, was_partial)
    if src.refcount != 0:
        raise ModelBug("migrate.src_referenced", f"folio {src.id} referenced after the move")
    free_folio(st, src)
