"""Folio split and the deferred split shrinker: mm/huge_memory.c __folio_split(),
unmap_folio(), remap_page(), deferred_split_scan(), and the debugfs split_huge_pages file.

The unmap goes through migration entries, which live only inside the operation: the model
records each PTE mapping (page, bits, and the exclusive state the entry type would carry),
splits, then remaps every page to its new order-0 folio or to the shared zero page.
"""

from __future__ import annotations

from dataclasses import dataclass

from pudthp_ref.folio import folio_unqueue_deferred_split, free_folio
from pudthp_ref.huge_memory import __split_huge_pud_locked
from pudthp_ref.memory import follow_page
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc
from pudthp_ref.pgtable import (
    ZERO,
    is_leaf,
    is_table,
    mk_pte,
    mk_table,
    pgtable_trans_huge_withdraw,
    table_of,
)
from pudthp_ref.rmap import LEVEL_PMD, LEVEL_PTE, folio_add_anon_rmap, folio_remove_rmap
from pudthp_ref.spec import EBUSY, EINVAL, ModelBug, Result
from pudthp_ref.vmstat import count_mthp_stat, count_vm_event


@dataclass(slots=True)
class MigrationPte:
    """A PTE turned into a migration entry: where it is and what it must come back as."""

    mm: MmStruct
    table: PtDesc
    index: int
    page: int
    write: bool
    dirty: bool
    young: bool
    exclusive: bool  # writable or readable_exclusive entry type


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
    """__folio_split() to order 0.  Returns False (EAGAIN/EBUSY) when it cannot split."""
    if folio.refcount != folio_expected_ref_count(folio):
        split_failed(st, folio)  # a pin or another extra reference: mappings untouched
        return False
    migration = unmap_folio(st, folio)
    if folio.refcount != 0:  # folio_ref_freeze() failed: back as a PTE-mapped THP
        remap_page(st, [folio], migration, split=False)
        split_failed(st, folio)
        return False
    folio_unqueue_deferred_split(st, folio)
    new = split_unmapped_folio(st, folio)
    remap_page(st, new, migration, split=True)
    for f in new:
        if f.refcount == 0:
            free_folio(st, f)  # unmapped subpages go back to the allocator
    return True


def unmap_folio(st: MmState, folio: Folio) -> list[MigrationPte]:
    """unmap_folio(): try_to_migrate(TTU_SPLIT_HUGE_PMD | TTU_SPLIT_HUGE_PUD).

    The rmap walk visits mms in id order and each mm in address order.  PUD leaves are
    split to PTEs first (there is no PUD migration entry); PMD leaves are split frozen.
    """
    g = st.geom
    out: list[MigrationPte] = []
    for mm in st.mms:
        if not mm.alive:
            continue
        pud_table = st.tables[mm.pud_table]
        for pi, pe in enumerate(pud_table.entries):
            if is_leaf(pe) and pe is not None and pe[1] == folio.id:
                __split_huge_pud_locked(st, mm, pud_table, pi)
            if not is_table(pud_table.entries[pi]):
                continue
            pmd_table = table_of(st, pud_table.entries[pi], "pmd")
            for mi in range(g.P):
                me = pmd_table.entries[mi]
                if is_leaf(me) and me is not None and me[1] == folio.id:
                    out.extend(split_huge_pmd_freeze(st, mm, pmd_table, mi))
                    continue
                if not is_table(me):
                    continue
                pte_table = table_of(st, me, "pte")
                for ti, e in enumerate(pte_table.entries):
                    if e is not None and e[0] == "pte" and e[1] == folio.id:
                        out.append(try_to_migrate_one(st, mm, folio, pte_table, ti))
    return out


def try_to_migrate_one(st: MmState, mm: MmStruct, folio: Folio, pte_table: PtDesc,
                       ti: int) -> MigrationPte:
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
    return MigrationPte(mm, pte_table, ti, page, write, dirty, young, write or exclusive)


def split_huge_pmd_freeze(st: MmState, mm: MmStruct, pmd_table: PtDesc, mi: int
                          ) -> list[MigrationPte]:
    """__split_huge_pmd_locked(freeze=true): P PTE migration entries, PMD rmap and ref gone."""
    e = pmd_table.entries[mi]
    assert e is not None
    folio = st.folios[e[1]]
    _, _, write, dirty, young = e
    count_vm_event(st, "thp_split_pmd")
    if dirty:
        folio.dirty = True
    exclusive = folio.anon_exclusive[0]
    folio.anon_exclusive[0] = False  # folio_try_share_anon_rmap_pmd()
    pte_table = pgtable_trans_huge_withdraw(st, pmd_table)
    pmd_table.entries[mi] = mk_table(pte_table.id)
    folio_remove_rmap(st, folio, 0, folio.nr, mm, LEVEL_PMD)
    folio.refcount -= 1
    return [
        MigrationPte(mm, pte_table, j, j, write, dirty, young, write or exclusive)
        for j in range(folio.nr)
    ]


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


def remap_page(st: MmState, folios: list[Folio], migration: list[MigrationPte], split: bool
               ) -> None:
    """remap_page() / remove_migration_ptes(); after a split, zero-filled pages go to the
    shared zero page (try_to_map_unused_to_zeropage, MM_ANONPAGES -1 each)."""
    for m in migration:
        f = folios[m.page] if split else folios[0]
        page = 0 if split else m.page
        if split and f.data[0] == 0:
            m.table.entries[m.index] = ZERO
            m.mm.rss_anon -= 1
            continue
        f.refcount += 1
        m.table.entries[m.index] = mk_pte(f.id, page, m.write, m.dirty, m.young)
        folio_add_anon_rmap(st, f, page, 1, m.mm, LEVEL_PTE, m.exclusive)


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
