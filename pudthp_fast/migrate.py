"""Fast migration: mbind(MPOL_MF_MOVE) over a range (mm/mempolicy.c queue_pages_range) and
mm/migrate.c migrate_pages(), as ``pudthp_ref.migrate``; a folio is moved through the
migration entries of ``huge_split``."""

from __future__ import annotations

from collections import deque

import numpy as np

from pudthp_fast.folio import (
    deferred_split_folio,
    folio_alloc,
    folio_unqueue_deferred_split,
    free_folio,
)
from pudthp_fast.huge_split import (
    remove_migration_entry,
    set_pmd_migration_entry,
    split_folio_to_list,
    try_to_migrate_one,
)
from pudthp_fast.page_vma_mapped import page_vma_mapped_walk
from pudthp_fast.pagewalk import walk_page_range
from pudthp_fast.rmap import folio_maybe_dma_pinned
from pudthp_fast.state import LEAF, PTE, TABLE, FastMm, FastState
from pudthp_fast.vmscan import folio_mapcount, folio_maybe_mapped_shared, folios_maybe_mapped_shared
from pudthp_fast.vmstat import count_mthp_stat, count_vm_event
from pudthp_ref.spec import EINVAL, LEVEL_PMD, ModelBug, Result

NR_MAX_MIGRATE_PAGES_RETRY = 10  # mm/migrate.c: 3 asynchronous passes, then 7 one by one


def sys_migrate(st: FastState, mm: FastMm, start: int, npages: int, node: int) -> Result:
    """mbind(MPOL_BIND to ``node``, MPOL_MF_MOVE) over ``[start, start + npages)``."""
    g = st.geom
    if node >= st.cfg.nodes or start + npages > g.space:
        return EINVAL
    queued: dict[int, None] = {}

    def pmd_entry(pmd: int, mi: int, a: int, b: int) -> None:
        """queue_folios_pmd() / queue_folios_pte_range()."""
        r = st.row(pmd)
        k = st.e_kind[r, mi]
        if k == LEAF:
            fid = int(st.e_id[r, mi])
            if st.f_node[fid] != node and not folio_maybe_mapped_shared(st, fid):
                queued.setdefault(fid)
        elif k == TABLE:
            pr = st.row(int(st.e_id[r, mi]))
            lo = a % g.P
            sel = np.flatnonzero(st.e_kind[pr, lo : lo + (b - a)] == PTE) + lo
            fids = st.e_id[pr, sel].astype(np.int64)
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
    """A split for migration: thp_migration_split, and migrate_pages_sync() adds it to
    thp_migration_fail."""
    count_vm_event(st, "thp_migration_split")
    count_vm_event(st, "thp_migration_fail")


def move_folio(st: FastState, src: int, dst: int) -> None:
    """migrate_folio_move(): migration entries for every mapping, contents and flags
    copied, the entries removed onto ``dst``, ``src`` freed."""
    migration = [
        set_pmd_migration_entry(st, src, at) if at.level == LEVEL_PMD
        else try_to_migrate_one(st, src, at)
        for at in page_vma_mapped_walk(st, src)
    ]
    was_queued, was_partial = bool(st.f_deferred[src]), bool(st.f_partial[src])
    nr = int(st.f_nr[src])
    sb, db = int(st.f_base[src]), int(st.f_base[dst])
    st.p_data[db : db + nr] = st.p_data[sb : sb + nr]
    st.f_dirty[dst] = st.f_dirty[src]
    for m in migration:
        remove_migration_entry(st, m, dst)
    st.f_ref[dst] -= 1
    if st.f_order[dst] > 0:
        count_mthp_stat(st, int(st.f_order[dst]), "nr_anon", 1)
    if was_queued:
        folio_unqueue_deferred_split(st, src)
        deferred_split_folio(st, dst, was_partial)
    if st.f_ref[src] != 0:
        raise ModelBug("migrate.src_referenced", f"folio {src} referenced after the move")
    free_folio(st, src)
