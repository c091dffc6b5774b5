"""Migration to a node: mm/mempolicy.c (mbind MPOL_MF_MOVE, queue_pages_range) and
mm/migrate.c (migrate_pages, migrate_folio_unmap/move, remove_migration_ptes/pmd).

The walk splits PUD leaves first (no PUD migration entry); PMD leaves go through a PMD
migration entry and come back as a PMD leaf of the new folio.  A large folio that is on the
deferred split queue and flagged partially mapped is split before any move, and all its
pieces go on the list, pages outside the range included (migrate_pages_batch).  Otherwise
a large folio moves whole when a folio of its order can be allocated on the node, else it
is split and its pages move one by one.  Both splits count ``thp_migration_split`` and
``thp_migration_fail`` (migrate_pages_sync adds the splits to the failures).  A pinned
folio stays.  Folios that may be mapped shared are not queued (MPOL_MF_MOVE without
MPOL_MF_MOVE_ALL).
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
from pudthp_ref.spec import EINVAL, LEVEL_PMD, LEVEL_PTE, ModelBug, Result
from pudthp_ref.vmscan import Isolated, folio_mapcount, folio_maybe_mapped_shared
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event

# mm/migrate.c: a folio that keeps failing with -EAGAIN is tried in NR_MAX_MIGRATE_ASYNC_RETRY
# (3) passes of the asynchronous batch, then NR_MAX_MIGRATE_SYNC_RETRY (7) one by one.
NR_MAX_MIGRATE_PAGES_RETRY = 10


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
            pte_table = table_of(st, me, LEVEL_PTE)
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
    """migrate_pages() -> migrate_pages_sync() (mbind migrates MIGRATE_SYNC): each folio
    moved, split (its pieces migrated next) or left.

    The kernel cuts the list into batches of NR_MAX_BATCHED_MIGRATION (HPAGE_PMD_NR)
    pages and migrates a batch's split pieces after the batch; a large folio always ends
    its batch, so its pieces come right after it, as here.
    """
    todo = deque(queued.values())
    while todo:
        folio = todo.popleft()
        if folio.freed:
            continue  # a piece that the split freed: "freed from under us", nothing to do
        is_thp = folio.order >= st.geom.pmd_order
        deferred_split = folio.order > 1 and folio.deferred and folio.partially_mapped
        if deferred_split:
            # migrate_pages_batch(): the rare folio on the deferred split list is split now
            pieces = try_split_folio(st, folio)
            if pieces is not None:
                if is_thp:
                    migration_split_counted(st)
                todo.extendleft(reversed(pieces))
                continue
            # a split that failed (a pin): the folio goes on to the usual attempt below
        if folio_maybe_dma_pinned(folio) or folio.refcount != folio_mapcount(folio):
            # The extra reference stays: the unmap (a pinned exclusive page cannot be
            # shared) or the move (folio_migrate_mapping's refcount) fails with -EAGAIN,
            # every pass, and every pass starts with the deferred split again.  The model
            # takes no destination folio for a move that must fail.
            if deferred_split:
                for _ in range(NR_MAX_MIGRATE_PAGES_RETRY - 1):
                    try_split_folio(st, folio)
            if is_thp:
                count_vm_event(st, "thp_migration_fail")
            continue
        dst = folio_alloc(st, folio.order, node)
        if dst is not None:
            move_folio(st, folio, dst)
            if is_thp:
                count_vm_event(st, "thp_migration_success")
            continue
        if folio.order == 0:
            continue
        # -ENOMEM on a large folio: split it and migrate the pieces
        pieces = try_split_folio(st, folio)
        if pieces is None:
            # -ENOMEM with no split: migrate_pages() gives up on the rest of the list
            if is_thp:
                count_vm_event(st, "thp_migration_fail")
            return
        if is_thp:
            migration_split_counted(st)
        todo.extendleft(reversed(pieces))


def try_split_folio(st: MmState, folio: Folio) -> list[Folio] | None:
    """try_split_folio(): split_folio_to_list() onto the migration list, then the head moved
    to its tail.  The pieces in list order (tails by index, the head last; those the split
    freed are left out), or None when the folio cannot be split."""
    tails = split_folio_to_list(st, folio)
    if tails is None:
        return None
    return tails if folio.freed else [*tails, folio]


def migration_split_counted(st: MmState) -> None:
    """A THP split for migration: thp_migration_split, and thp_migration_fail since
    migrate_pages_sync() adds the batch's splits to the failures (stats->nr_thp_failed +=
    astats.nr_thp_split): the folio itself was not migrated."""
    count_vm_event(st, "thp_migration_split")
    count_vm_event(st, "thp_migration_fail")


def move_folio(st: MmState, src: Folio, dst: Folio) -> None:
    """migrate_folio_unmap() + migrate_folio_move(): every mapping of ``src`` through a
    migration entry to the same place in ``dst``; contents, dirty and the deferred queue
    (as it is after the unmap) carried over; ``src`` freed."""
    migration = [
        set_pmd_migration_entry(st, at.mm, src, at.table, at.index)
        if at.level == LEVEL_PMD
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
