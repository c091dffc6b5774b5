"""Fast folio split and the deferred split shrinker: mm/huge_memory.c __folio_split(),
unmap_folio(), remap_page(), deferred_split_scan(), and the debugfs split_huge_pages file.

The unmap goes through migration entries that live only inside the operation
(``pudthp_ref.huge_split`` says how); here a PTE table's PTEs of the folio become one
``MigrationEntry`` with arrays of pages, bits and entry types.  Migration (migrate.py)
uses the same entries to move a folio.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pudthp_fast.folio import folio_unqueue_deferred_split, free_folios_bulk
from pudthp_fast.memory import follow_page
from pudthp_fast.page_vma_mapped import MappedAt, page_vma_mapped_walk
from pudthp_fast.pgtable import pgtable_trans_huge_withdraw
from pudthp_fast.rmap import (
    folio_add_anon_rmap,
    folio_add_large_mapcount,
    folio_remove_rmap,
    folio_remove_rmap_ptes_singly,
)
from pudthp_fast.state import (
    LEAF,
    NONE,
    PTE,
    ZERO,
    Arr,
    D,
    FastMm,
    FastState,
    W,
    add_at,
    install_table,
    set_entries,
    set_entry,
)
from pudthp_fast.vmstat import count_mthp_stat, count_vm_event, mod_node_page_state
from pudthp_ref.spec import EBUSY, EINVAL, ENTIRELY_MAPPED, LEVEL_PMD, LEVEL_PTE, ModelBug, Result


@dataclass(slots=True)
class MigrationEntry:
    """Migration entries of one table: the PTEs at ``indices`` (pages, bits and the
    exclusive entry type of each), or the PMD entry at ``index`` (level "pmd")."""

    mm: FastMm
    table: int
    level: str
    index: int
    indices: Arr
    pages: Arr
    bits: Arr
    exclusive: Arr


def sys_split_folio(st: FastState, mm: FastMm, vpn: int) -> Result:
    """debugfs split_huge_pages for one address: EINVAL when no large folio maps it."""
    if vpn >= st.geom.space:
        return EINVAL
    loc = follow_page(st, mm, vpn)
    if loc is None:
        return EINVAL
    r = st.row(loc[0])
    if st.e_kind[r, loc[1]] == ZERO:
        return EINVAL
    fid = int(st.e_id[r, loc[1]])
    if st.f_order[fid] == 0:
        return EINVAL
    return 0 if split_folio_to_list(st, fid) is not None else EBUSY


def folio_expected_ref_count(st: FastState, fid: int) -> int:
    """folio_expected_ref_count() of an anon folio: its mappings plus the swap cache."""
    return int(st.f_large[fid]) + 1 + (int(st.f_nr[fid]) if st.f_swapcache[fid] else 0)


def split_failed(st: FastState, fid: int) -> None:
    count_mthp_stat(st, int(st.f_order[fid]), "split_failed")
    if st.f_order[fid] == st.geom.pmd_order:
        count_vm_event(st, "thp_split_page_failed")


def split_folio_to_list(st: FastState, fid: int) -> list[int] | None:
    """__folio_split() to order 0: the tail folio ids still mapped afterwards (the head
    keeps ``fid``), or None (EAGAIN/EBUSY) when it cannot split."""
    if st.f_ref[fid] != folio_expected_ref_count(st, fid):
        split_failed(st, fid)  # a pin or another extra reference: mappings untouched
        return None
    migration = unmap_folio(st, fid)
    if st.f_ref[fid] != 0:  # folio_ref_freeze() failed: back as a PTE-mapped THP
        for m in migration:
            remove_migration_entry(st, m, fid)
        split_failed(st, fid)
        return None
    folio_unqueue_deferred_split(st, fid)
    first_new = split_unmapped_folio(st, fid)
    nr_new = st.next_folio - first_new
    remap_page(st, fid, first_new, migration)
    new = np.concatenate(([fid], np.arange(first_new, first_new + nr_new, dtype=np.int64)))
    free_folios_bulk(st, new[st.f_ref[new] == 0])  # unmapped subpages go back
    tails = new[1:]
    return tails[st.f_live[tails]].tolist()


def unmap_folio(st: FastState, fid: int) -> list[MigrationEntry]:
    """unmap_folio(): try_to_migrate(TTU_SPLIT_HUGE_PMD | TTU_SPLIT_HUGE_PUD); PMD leaves
    are split frozen into PTE migration entries."""
    out: list[MigrationEntry] = []
    for at in page_vma_mapped_walk(st, fid):
        if at.level == LEVEL_PMD:
            out.append(split_huge_pmd_freeze(st, fid, at))
        else:
            out.append(try_to_migrate_one(st, fid, at))
    return out


def try_to_migrate_one(st: FastState, fid: int, at: MappedAt) -> MigrationEntry:
    """Present PTEs become migration entries: share the pages, drop rmap and references."""
    assert at.indices is not None
    t, idx = at.table, at.indices
    r = st.row(t)
    pages = st.e_page[r, idx].astype(np.int64)
    bits = st.e_bits[r, idx].copy()
    b = int(st.f_base[fid])
    exclusive = st.p_exclusive[b + pages] | ((bits & W) != 0)
    st.p_exclusive[b + pages] = False  # folio_try_share_anon_rmap_pte()
    if (bits & D).any():
        st.f_dirty[fid] = True
    st.e_kind[r, idx] = NONE
    folio_remove_rmap_ptes_singly(st, fid, pages, at.mm)
    st.f_ref[fid] -= idx.size
    return MigrationEntry(at.mm, t, LEVEL_PTE, 0, idx, pages, bits, exclusive)


def set_pmd_migration_entry(st: FastState, fid: int, at: MappedAt) -> MigrationEntry:
    """set_pmd_migration_entry(): the PMD leaf becomes a PMD migration entry; the deposit
    stays, RSS is unchanged."""
    t, mi = at.table, at.index
    bits = int(st.e_bits[st.row(t), mi])
    b = int(st.f_base[fid])
    exclusive = bool(st.p_exclusive[b]) or bool(bits & W)
    st.p_exclusive[b] = False  # folio_try_share_anon_rmap_pmd()
    if bits & D:
        st.f_dirty[fid] = True
    set_entry(st, t, mi, NONE)
    folio_remove_rmap(st, fid, 0, int(st.f_nr[fid]), at.mm, LEVEL_PMD)
    st.f_ref[fid] -= 1
    z = np.zeros(1, np.int64)
    return MigrationEntry(at.mm, t, LEVEL_PMD, mi, z, z, np.array([bits], np.uint8),
                          np.array([exclusive]))


def split_huge_pmd_freeze(st: FastState, fid: int, at: MappedAt) -> MigrationEntry:
    """__split_huge_pmd_locked(freeze=true): P PTE migration entries, PMD rmap and ref gone."""
    count_vm_event(st, "thp_split_pmd")
    pmd = set_pmd_migration_entry(st, fid, at)
    pte = pgtable_trans_huge_withdraw(st, at.table)
    install_table(st, at.table, at.index, pte, int(st.t_addr[at.table]) + at.index * st.P)
    nr = int(st.f_nr[fid])
    idx = np.arange(nr, dtype=np.int64)
    return MigrationEntry(at.mm, pte, LEVEL_PTE, 0, idx, idx.copy(),
                          np.full(nr, pmd.bits[0], np.uint8), np.full(nr, bool(pmd.exclusive[0])))


def remove_migration_entry(st: FastState, m: MigrationEntry, fid: int) -> None:
    """remove_migration_pte() / remove_migration_pmd(): map the same pages of ``fid`` where
    the migration entries were, RMAP_EXCLUSIVE as each entry type says."""
    if m.level == LEVEL_PMD:
        st.f_ref[fid] += 1
        set_entry(st, m.table, m.index, LEAF, fid, 0, int(m.bits[0]))
        folio_add_anon_rmap(st, fid, 0, int(st.f_nr[fid]), m.mm, LEVEL_PMD,
                            bool(m.exclusive[0]))
        return
    st.f_ref[fid] += m.indices.size
    r = st.wrow(m.table)
    st.e_kind[r, m.indices] = PTE
    st.e_id[r, m.indices] = fid
    st.e_page[r, m.indices] = m.pages
    st.e_bits[r, m.indices] = m.bits
    if st.f_order[fid] == 0:
        for e in m.exclusive.tolist():
            folio_add_anon_rmap(st, fid, 0, 1, m.mm, LEVEL_PTE, e)
        return
    # folio_add_anon_rmap_pte() per entry, folded: distinct pages of one mm
    pool = int(st.f_base[fid]) + m.pages
    mc = st.p_mapcount[pool] + 1
    st.p_mapcount[pool] = mc
    became = int(np.count_nonzero(mc == 0))
    if became:
        st.f_npm[fid] += became
        if st.f_npm[fid] < ENTIRELY_MAPPED:
            mod_node_page_state(st, "nr_anon_mapped", became)
    folio_add_large_mapcount(st, fid, int(m.pages.size), m.mm)
    st.p_exclusive[pool[m.exclusive]] = True


def split_unmapped_folio(st: FastState, fid: int) -> int:
    """__split_unmapped_folio() to order 0: the head keeps ``fid``; tails become folios
    ``first..first+nr-2`` over the same pool pages.  Returns the first new id."""
    b, nr = int(st.f_base[fid]), int(st.f_nr[fid])
    if np.count_nonzero(st.p_mapcount[b : b + nr] != -1) or st.f_large[fid] != -1:
        raise ModelBug("split.still_mapped", f"folio {fid} mapped after unmap_folio()")
    order = int(st.f_order[fid])
    count_mthp_stat(st, order, "nr_anon", -1)
    count_mthp_stat(st, order, "split")
    if order == st.geom.pmd_order:
        count_vm_event(st, "thp_split_page")
    first = st.new_folio_rows(nr - 1)
    tails = slice(first, first + nr - 1)
    st.f_order[tails] = 0
    st.f_node[tails] = st.f_node[fid]
    st.f_nr[tails] = 1
    st.f_base[tails] = np.arange(b + 1, b + nr, dtype=np.int64)
    st.f_ref[tails] = 0
    st.f_dirty[tails] = st.f_dirty[fid]
    st.f_live[tails] = True
    st.f_order[fid] = 0
    st.f_nr[fid] = 1
    st.f_mmid[fid] = 0
    st.f_mmc[fid] = -1
    st.f_shared[fid] = False
    st.p_exclusive[b : b + nr] = False
    return first


def remap_page(st: FastState, head: int, first_new: int, migration: list[MigrationEntry]
               ) -> None:
    """remap_page() after a split: each migration entry to its page's new order-0 folio,
    or to the shared zero page if the page is zero-filled (MM_ANONPAGES -1)."""
    b = int(st.f_base[head])
    for m in migration:
        pool = b + m.pages
        zero = st.p_data[pool] == 0
        if np.count_nonzero(zero):
            set_entries(st, m.table, m.indices[zero], ZERO)
            m.mm.rss_anon -= int(np.count_nonzero(zero))
        keep = ~zero
        if not np.count_nonzero(keep):
            continue
        pages = m.pages[keep]
        fids = np.where(pages == 0, head, first_new + pages - 1)
        idx = m.indices[keep]
        r = st.wrow(m.table)
        st.e_kind[r, idx] = PTE
        st.e_id[r, idx] = fids
        st.e_page[r, idx] = 0
        st.e_bits[r, idx] = m.bits[keep]
        add_at(st.f_ref, fids, 1)
        kp = pool[keep]
        before = st.p_mapcount[kp].copy()
        add_at(st.p_mapcount, kp, 1)
        mod_node_page_state(st, "nr_anon_mapped", int(np.count_nonzero(before == -1)))
        st.p_exclusive[kp[m.exclusive[keep]]] = True


def deferred_split_scan(st: FastState) -> int:
    """deferred_split_scan(): split the partially mapped folios of the queue, in order; the
    others leave the queue.  A folio that fails to split stays queued.  Returns the
    number split."""
    split = 0
    for fid in list(st.deferred):
        if st.f_partial[fid]:
            if split_folio_to_list(st, fid) is not None:
                split += 1
        else:
            st.deferred.remove(fid)
            st.f_deferred[fid] = False
    return split
