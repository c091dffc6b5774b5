"""Folio split and the deferred split shrinker: mm/huge_memory.c __folio_split(),
unmap_folio(), remap_page(), deferred_split_scan(), and the debugfs split_huge_pages file.

The unmap goes through migration entries, which live only inside the operation: the model
records each mapping (page, bits, and the exclusive state the entry type would carry),
splits, then remaps every page to its new order-0 folio or to the shared zero page.
Migration (migrate.py) uses the same entries to move a folio.
"""

from __future__ import annotations

from dataclasses import dataclass

from pudthp_ref.folio import folio_unqueue_deferred_split, free_folio
from pudthp_ref.memory import follow_page
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc
from pudthp_ref.page_vma_mapped import page_vma_mapped_walk
from pudthp_ref.pgtable import ZERO, mk_leaf, mk_pte, mk_table, pgtable_trans_huge_withdraw
from pudthp_ref.rmap import folio_add_anon_rmap, folio_remove_rmap
from pudthp_ref.spec import EBUSY, EINVAL, LEVEL_PMD, LEVEL_PTE, ModelBug, Result
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event


@dataclass(slots=True)
class MigrationEntry:
    """A PTE or PMD mapping turned into a migration entry: where it is and what it must come
    back as.  ``exclusive`` is the entry type (writable or readable_exclusive)."""

    mm: MmStruct
    table: PtDesc
    index: int
    level: str  # "pte" or "pmd"
    page: int
    write: bool
    dirty: bool
    young: bool
    exclusive: bool


def sys_split_folio(st: MmState, mm: MmStruct, vpn: int) -> Result:
    """debugfs split_huge_pages for one address: EINVAL when no large folio maps it."""
    if vpn >= st.geom.space:
        return EINVAL
    loc = follow_page(st, mm, vpn)
    if loc is None or loc[2][0] == "zero":
        return EINVAL
    folio = st.folios[loc[2][1]]
    if folio.order == 0:
        return EINVAL
    return 0 if split_folio(st, folio) else EBUSY


def folio_expected_ref_count(folio: Folio) -> int:
    """folio_expected_ref_count() of an anon folio: its mappings plus the swap cache."""
    return folio.large_mapcount + 1 + (folio.nr if folio.swapcache else 0)


def split_failed(st: MmState, folio: Folio) -> None:
    count_mthp_stat(st, folio.order, "split_failed")
    if folio.order == st.geom.pmd_order:
        count_vm_event(st, "thp_split_page_failed")


def split_folio(st: MmState, folio: Folio) -> bool:
    """split_folio(): True when the folio was split."""
    return split_folio_to_list(st, folio) is not None


def split_folio_to_list(st: MmState, folio: Folio) -> list[Folio] | None:
    """__folio_split() to order 0.  Returns the tail folios still mapped afterwards (the
    head stays ``folio``), or None (EAGAIN/EBUSY) when it cannot split."""
    if folio.refcount != folio_expected_ref_count(folio):
        split_failed(st, folio)  # a pin or another extra reference: mappings untouched
        return None
    migration = unmap_folio(st, folio)
    if folio.refcount != 0:  # folio_ref_freeze() failed: back as a PTE-mapped THP
        for m in migration:
            remove_migration_entry(st, m, folio, m.page)
        split_failed(st, folio)
        return None
    folio_unqueue_deferred_split(st, folio)
    new = split_unmapped_folio(st, folio)
    remap_page(st, new, migration)
    for f in new:
        if f.refcount == 0:
            free_folio(st, f)  # unmapped subpages go back to the allocator
    return [f for f in new[1:] if not f.freed]


def unmap_folio(st: MmState, folio: Folio) -> list[MigrationEntry]:
    """unmap_folio(): try_to_migrate(TTU_SPLIT_HUGE_PMD | TTU_SPLIT_HUGE_PUD); PMD leaves
    are split frozen into PTE migration entries."""
    out: list[MigrationEntry] = []
    for at in page_vma_mapped_walk(st, folio):
        if at.level == LEVEL_PMD:
            out.extend(split_huge_pmd_freeze(st, at.mm, at.table, at.index))
        else:
            out.append(try_to_migrate_one(st, at.mm, folio, at.table, at.index))
    return out


def try_to_migrate_one(st: MmState, mm: MmStruct, folio: Folio, pte_table: PtDesc,
                       ti: int) -> MigrationEntry:
    """One present PTE becomes a migration entry: share the page, drop rmap and reference."""
    e = pte_table.entries[ti]
    assert e is not None
    _, _, page, write, dirty, young = e
    exclusive = folio.anon_exclusive[page]
    folio.anon_exclusive[page] = False  # folio_try_share_anon_rmap_pte()
    if dirty:
        folio.dirty = True
    pte_table.entries[ti] = None
    folio_remove_rmap(st, folio, page, 1, mm, LEVEL_PTE)
    folio.refcount -= 1
    return MigrationEntry(mm, pte_table, ti, LEVEL_PTE, page, write, dirty, young,
                          write or exclusive)


def set_pmd_migration_entry(st: MmState, mm: MmStruct, folio: Folio, pmd_table: PtDesc,
                            mi: int) -> MigrationEntry:
    """set_pmd_migration_entry(): the PMD leaf becomes a PMD migration entry; the deposit
    stays, RSS is unchanged."""
    e = pmd_table.entries[mi]
    assert e is not None
    _, _, write, dirty, young = e
    exclusive = folio.anon_exclusive[0]
    folio.anon_exclusive[0] = False  # folio_try_share_anon_rmap_pmd()
    if dirty:
        folio.dirty = True
    pmd_table.entries[mi] = None
    folio_remove_rmap(st, folio, 0, folio.nr, mm, LEVEL_PMD)
    folio.refcount -= 1
    return MigrationEntry(mm, pmd_table, mi, LEVEL_PMD, 0, write, dirty, young,
                          write or exclusive)


def split_huge_pmd_freeze(st: MmState, mm: MmStruct, pmd_table: PtDesc, mi: int
                          ) -> list[MigrationEntry]:
    """__split_huge_pmd_locked(freeze=true): P PTE migration entries, PMD rmap and ref gone."""
    folio = st.folios[pmd_table.entries[mi][1]]  # type: ignore[index]
    count_vm_event(st, "thp_split_pmd")
    pmd = set_pmd_migration_entry(st, mm, folio, pmd_table, mi)
    pte_table = pgtable_trans_huge_withdraw(st, pmd_table)
    pmd_table.entries[mi] = mk_table(pte_table.id)
    return [
        MigrationEntry(mm, pte_table, j, LEVEL_PTE, j, pmd.write, pmd.dirty, pmd.young,
                       pmd.exclusive)
        for j in range(folio.nr)
    ]


def remove_migration_entry(st: MmState, m: MigrationEntry, folio: Folio, page: int) -> None:
    """remove_migration_pte() / remove_migration_pmd(): map ``page`` of ``folio`` where the
    migration entry was, RMAP_EXCLUSIVE unless the entry was readable."""
    folio.refcount += 1
    if m.level == LEVEL_PMD:
        m.table.entries[m.index] = mk_leaf(folio.id, m.write, m.dirty, m.young)
        folio_add_anon_rmap(st, folio, 0, folio.nr, m.mm, LEVEL_PMD, m.exclusive)
    else:
        m.table.entries[m.index] = mk_pte(folio.id, page, m.write, m.dirty, m.young)
        folio_add_anon_rmap(st, folio, page, 1, m.mm, LEVEL_PTE, m.exclusive)


def split_unmapped_folio(st: MmState, folio: Folio) -> list[Folio]:
    """__split_unmapped_folio() to order 0: the head keeps the folio's id, every tail page
    becomes a folio with the next id; flags, node and contents are copied."""
    if folio.mapcount.count(-1) != folio.nr or folio.large_mapcount != -1:
        raise ModelBug("split.still_mapped", f"folio {folio.id} mapped after unmap_folio()")
    old_order = folio.order
    count_mthp_stat(st, old_order, "nr_anon", -1)
    count_mthp_stat(st, old_order, "split")
    if old_order == st.geom.pmd_order:
        count_vm_event(st, "thp_split_page")
    data = folio.data
    new = [folio]
    for i in range(1, folio.nr):
        f = Folio(
            id=st.next_folio_id, order=0, node=folio.node, nr=1, refcount=0,
            mapcount=[-1], anon_exclusive=[False], data=[data[i]], dirty=folio.dirty,
        )
        st.next_folio_id += 1
        st.folios[f.id] = f
        new.append(f)
    folio.order = 0
    folio.nr = 1
    folio.mapcount = [-1]
    folio.anon_exclusive = [False]
    folio.data = [data[0]]
    folio.mm_id = [0, 0]
    folio.mm_id_mapcount = [-1, -1]
    folio.shared = False
    return new


def remap_page(st: MmState, folios: list[Folio], migration: list[MigrationEntry]) -> None:
    """remap_page() after a split: page i goes to folio i, or, when zero-filled, to the
    shared zero page (try_to_map_unused_to_zeropage, MM_ANONPAGES -1)."""
    for m in migration:
        f = folios[m.page]
        if f.data[0] == 0:
            m.table.entries[m.index] = ZERO
            m.mm.rss_anon -= 1
            continue
        remove_migration_entry(st, m, f, 0)


def deferred_split_scan(st: MmState) -> int:
    """deferred_split_scan(): split the partially mapped folios of the queue, in order; the
    others leave the queue (thp_underused() is false with max_ptes_none at 511).

    A folio that fails to split stays queued.  Returns the number split.
    """
    split = 0
    for fid in list(st.deferred):
        folio = st.folios[fid]
        if folio.partially_mapped:
            if split_folio(st, folio):
                split += 1
        else:
            st.deferred.remove(fid)
            folio.deferred = False
    return split
