"""Fast huge PUD and PMD mappings (mm/huge_memory.c plus the RFC's PUD paths).

Same functions, same order of allocations and counters as ``pudthp_ref.huge_memory``; the
page-level parts (filling P*P PTEs on a PUD split, rmap over every page) are slices.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.folio import deferred_split_folio, folio_alloc, folio_put
from pudthp_fast.pgtable import (
    pgtable_trans_huge_deposit,
    pgtable_trans_huge_pud_deposit,
    pgtable_trans_huge_pud_withdraw,
    pgtable_trans_huge_withdraw,
    pt_alloc,
    pt_alloc_many,
    pt_free,
    pt_free_many,
    table_of,
)
from pudthp_fast.rmap import (
    folio_add_anon_rmap,
    folio_add_new_anon_rmap,
    folio_remove_rmap,
    folio_try_dup_anon_rmap,
)
from pudthp_fast.state import (
    LEAF,
    NONE,
    PTE,
    TABLE,
    ZERO,
    D,
    FastMm,
    FastState,
    FastVma,
    W,
    Y,
    install_table,
    set_entries,
    set_entry,
)
from pudthp_fast.vmstat import count_mthp_stat, count_vm_event
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE, LEVEL_PUD, ModelBug

# --------------------------------------------------------------------------------------
# Which orders a VMA allows: include/linux/huge_mm.h thp_vma_allowable_order()
# --------------------------------------------------------------------------------------


def thp_vma_allowable_order(st: FastState, vma: FastVma, level: str) -> bool:
    """Per-size ``enabled`` (always/inherit/madvise/never), the global setting, VM_*HUGEPAGE."""
    if vma.nohugepage:
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


def thp_vma_suitable_order(st: FastState, vma: FastVma, vpn: int, level: str) -> bool:
    """thp_vma_suitable_order(): the aligned huge range lies inside the VMA."""
    size = st.geom.pud_nr if level == LEVEL_PUD else st.geom.pmd_nr
    base = vpn - vpn % size
    return vma.start <= base and base + size <= vma.end


def _leaf_bits(vma: FastVma) -> int:
    """folio_mk_pmd + pmd_mkdirty + maybe_pmd_mkwrite, young."""
    return (W if vma.prot == "rw" else 0) | D | Y


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------


def do_huge_pud_anonymous_page(st: FastState, mm: FastMm, vma: FastVma, pud: int, pi: int
                               ) -> bool:
    """The RFC's anonymous PUD fault: allocate, zero, deposit 1 PMD + P PTE tables, map."""
    fid = folio_alloc(st, st.geom.pud_order)
    if not fid:
        count_mthp_stat(st, st.geom.pud_order, "anon_fault_fallback")
        count_vm_event(st, "thp_fault_fallback_pud")
        return False
    pmd = pt_alloc(st, mm, LEVEL_PMD)
    pgtable_trans_huge_pud_deposit(st, pud, pmd)
    for t in pt_alloc_many(st, mm, LEVEL_PTE, st.P).tolist():  # deposits allocate nothing
        pgtable_trans_huge_deposit(st, pmd, t)
    set_entry(st, pud, pi, LEAF, fid, 0, _leaf_bits(vma))
    folio_add_new_anon_rmap(st, fid, mm)
    mm.rss_anon += int(st.f_nr[fid])
    count_vm_event(st, "thp_fault_alloc_pud")
    count_mthp_stat(st, st.geom.pud_order, "anon_fault_alloc")
    deferred_split_folio(st, fid, False)
    return True


def vma_alloc_anon_folio_pmd(st: FastState) -> int:
    """vma_alloc_anon_folio_pmd(): counts THP_FAULT_FALLBACK on failure."""
    fid = folio_alloc(st, st.geom.pmd_order)
    if not fid:
        count_vm_event(st, "thp_fault_fallback")
        count_mthp_stat(st, st.geom.pmd_order, "anon_fault_fallback")
    return fid


def map_anon_folio_pmd_pf(st: FastState, mm: FastMm, vma: FastVma, fid: int, pmd: int,
                          mi: int) -> None:
    """map_anon_folio_pmd_pf(): dirty, writable iff VM_WRITE, rmap, RSS, deferred queue."""
    set_entry(st, pmd, mi, LEAF, fid, 0, _leaf_bits(vma))
    folio_add_new_anon_rmap(st, fid, mm)
    mm.rss_anon += int(st.f_nr[fid])
    count_vm_event(st, "thp_fault_alloc")
    count_mthp_stat(st, st.geom.pmd_order, "anon_fault_alloc")
    deferred_split_folio(st, fid, False)


def do_huge_pmd_anonymous_page(st: FastState, mm: FastMm, vma: FastVma, pmd: int, mi: int,
                               write: bool) -> bool:
    """do_huge_pmd_anonymous_page(): huge zero PMD on a read fault, else a PMD THP."""
    if not write and st.cfg.use_zero_page:
        pgtable = pt_alloc(st, mm, LEVEL_PTE)
        if not st.huge_zero_allocated:  # mm_get_huge_zero_folio(): once for the model's life
            st.huge_zero_allocated = True
            count_vm_event(st, "thp_zero_page_alloc")
        pgtable_trans_huge_deposit(st, pmd, pgtable)
        set_entry(st, pmd, mi, ZERO)
        return True
    fid = vma_alloc_anon_folio_pmd(st)
    if not fid:
        return False
    pgtable_trans_huge_deposit(st, pmd, pt_alloc(st, mm, LEVEL_PTE))
    map_anon_folio_pmd_pf(st, mm, vma, fid, pmd, mi)
    return True


def do_huge_zero_wp_pmd(st: FastState, mm: FastMm, vma: FastVma, pmd: int, mi: int) -> bool:
    """do_huge_zero_wp_pmd(): replace the huge zero PMD by a new THP, reusing its deposit."""
    fid = vma_alloc_anon_folio_pmd(st)
    if not fid:
        return False
    map_anon_folio_pmd_pf(st, mm, vma, fid, pmd, mi)
    return True


def huge_wp_reuse(st: FastState, fid: int) -> bool:
    """The reuse test of do_huge_pmd_wp_page(): head AnonExclusive, or the only reference."""
    b = int(st.f_base[fid])
    if st.p_exclusive[b]:
        return True
    if st.f_ref[fid] == 1:
        st.p_exclusive[b] = True  # folio_move_anon_rmap() + SetPageAnonExclusive(head)
        return True
    return False


def do_huge_pmd_wp_page(st: FastState, mm: FastMm, vma: FastVma, pmd: int, mi: int) -> bool:
    """do_huge_pmd_wp_page(): reuse in place, else split (False: handle at PTE level)."""
    r = st.row(pmd)
    if st.e_kind[r, mi] == ZERO:
        if do_huge_zero_wp_pmd(st, mm, vma, pmd, mi):
            return True
        __split_huge_pmd_locked(st, mm, pmd, mi)
        return False
    if huge_wp_reuse(st, int(st.e_id[r, mi])):
        st.e_bits[r, mi] |= W | D | Y
        return True
    __split_huge_pmd_locked(st, mm, pmd, mi)
    return False


def wp_huge_pud(st: FastState, mm: FastMm, vma: FastVma, pud: int, pi: int) -> bool:
    """Write fault on a read-only PUD leaf: the PMD rules when ``pud_wp_reuse``, else split."""
    r = st.row(pud)
    if st.cfg.pud_wp_reuse and huge_wp_reuse(st, int(st.e_id[r, pi])):
        st.e_bits[r, pi] |= W | D | Y
        return True
    __split_huge_pud_locked(st, mm, pud, pi)
    return False


# --------------------------------------------------------------------------------------
# Page-table splits (the folio stays whole)
# --------------------------------------------------------------------------------------


def __split_huge_pud_locked(st: FastState, mm: FastMm, pud: int, pi: int) -> None:
    """PUD leaf straight to P*P PTEs in the P withdrawn PTE tables."""
    r = st.row(pud)
    if st.e_kind[r, pi] != LEAF:
        raise ModelBug("split_pud.not_leaf", f"PUD entry {pi} of table {pud}")
    P = st.P
    fid = int(st.e_id[r, pi])
    bits = int(st.e_bits[r, pi])
    count_vm_event(st, "thp_split_pud")
    if bits & D:
        st.f_dirty[fid] = True
    anon_exclusive = bool(st.p_exclusive[int(st.f_base[fid])])
    pmd = pgtable_trans_huge_pud_withdraw(st, pud)
    nr = int(st.f_nr[fid])
    st.f_ref[fid] += nr - 1
    folio_add_anon_rmap(st, fid, 0, nr, mm, LEVEL_PTE, anon_exclusive)
    rows = np.empty(P, np.int64)
    base_addr = pi * st.geom.pud_nr
    for i in range(P):
        rows[i] = pgtable_trans_huge_withdraw(st, pmd)
    er = st.wrows(rows)
    st.e_kind[er] = PTE
    st.e_id[er] = fid
    st.e_page[er] = np.arange(P * P, dtype=np.int32).reshape(P, P)
    st.e_bits[er] = bits
    set_entries(st, pmd, slice(None), TABLE, rows)
    st.t_addr[rows] = base_addr + np.arange(P, dtype=np.int64) * P
    folio_remove_rmap(st, fid, 0, nr, mm, LEVEL_PUD)
    install_table(st, pud, pi, pmd, base_addr)


def __split_huge_pmd_locked(st: FastState, mm: FastMm, pmd: int, mi: int) -> None:
    """__split_huge_pmd_locked() (non-freeze) and __split_huge_zero_page_pmd()."""
    r = st.row(pmd)
    kind = int(st.e_kind[r, mi])
    count_vm_event(st, "thp_split_pmd")
    pte = pgtable_trans_huge_withdraw(st, pmd)
    addr = int(st.t_addr[pmd]) + mi * st.P
    if kind == ZERO:
        set_entries(st, pte, slice(None), ZERO)
        install_table(st, pmd, mi, pte, addr)
        return
    if kind != LEAF:
        raise ModelBug("split_pmd.not_leaf", f"PMD entry {mi} of table {pmd}")
    fid = int(st.e_id[r, mi])
    bits = int(st.e_bits[r, mi])
    if bits & D:
        st.f_dirty[fid] = True
    nr = int(st.f_nr[fid])
    anon_exclusive = bool(st.p_exclusive[int(st.f_base[fid])])
    st.f_ref[fid] += nr - 1
    folio_add_anon_rmap(st, fid, 0, nr, mm, LEVEL_PTE, anon_exclusive)
    pr = st.wrow(pte)
    st.e_kind[pr] = PTE
    st.e_id[pr] = fid
    st.e_page[pr] = np.arange(nr, dtype=np.int32)
    st.e_bits[pr] = bits
    folio_remove_rmap(st, fid, 0, nr, mm, LEVEL_PMD)
    install_table(st, pmd, mi, pte, addr)


def split_huge_at(st: FastState, mm: FastMm, vpn: int) -> None:
    """vma_adjust_trans_huge() for one boundary: split a PUD or PMD leaf straddling ``vpn``."""
    g = st.geom
    pud = mm.pud_table
    pi = vpn // g.pud_nr
    if pi >= g.P:
        return
    k = st.e_kind[st.row(pud), pi]
    if k == LEAF:
        if vpn % g.pud_nr:
            __split_huge_pud_locked(st, mm, pud, pi)
        return
    if k != TABLE:
        return
    pmd = table_of(st, pud, pi, LEVEL_PMD)
    mi = (vpn // g.pmd_nr) % g.P
    if st.e_kind[st.row(pmd), mi] in (LEAF, ZERO) and vpn % g.pmd_nr:
        __split_huge_pmd_locked(st, mm, pmd, mi)


# --------------------------------------------------------------------------------------
# fork
# --------------------------------------------------------------------------------------


def copy_huge_pud(st: FastState, dst: FastMm, src: FastMm, dpud: int, spud: int, pi: int
                  ) -> bool:
    """copy_huge_pud(): share the PUD leaf with the child, or split it (False: -EAGAIN)."""
    fid = int(st.e_id[st.row(spud), pi])
    nr = int(st.f_nr[fid])
    pmd = pt_alloc(st, dst, LEVEL_PMD)
    ptes = pt_alloc_many(st, dst, LEVEL_PTE, st.P)
    st.f_ref[fid] += 1
    if not folio_try_dup_anon_rmap(st, fid, 0, nr, dst, src, LEVEL_PUD):
        folio_put(st, fid)
        pt_free_many(st, dst, np.append(ptes, pmd))
        __split_huge_pud_locked(st, src, spud, pi)
        return False
    pgtable_trans_huge_pud_deposit(st, dpud, pmd)
    for t in ptes.tolist():
        pgtable_trans_huge_deposit(st, pmd, t)
    dst.rss_anon += nr
    sr = st.row(spud)
    bits = int(st.e_bits[sr, pi]) & ~W
    st.e_bits[sr, pi] = bits
    set_entry(st, dpud, pi, LEAF, fid, 0, bits & ~Y)
    return True


def copy_huge_pmd(st: FastState, dst: FastMm, src: FastMm, dpmd: int, spmd: int, mi: int
                  ) -> bool:
    """copy_huge_pmd(): THP and huge zero PMDs; False (-EAGAIN) after splitting the parent."""
    pgtable = pt_alloc(st, dst, LEVEL_PTE)
    sr = st.row(spmd)
    if st.e_kind[sr, mi] == ZERO:
        pgtable_trans_huge_deposit(st, dpmd, pgtable)
        set_entry(st, dpmd, mi, ZERO)
        return True
    fid = int(st.e_id[sr, mi])
    st.f_ref[fid] += 1
    if not folio_try_dup_anon_rmap(st, fid, 0, int(st.f_nr[fid]), dst, src, LEVEL_PMD):
        folio_put(st, fid)
        pt_free(st, dst, pgtable)
        __split_huge_pmd_locked(st, src, spmd, mi)
        return False
    dst.rss_anon += int(st.f_nr[fid])
    pgtable_trans_huge_deposit(st, dpmd, pgtable)
    bits = int(st.e_bits[sr, mi]) & ~W
    st.e_bits[sr, mi] = bits
    set_entry(st, dpmd, mi, LEAF, fid, 0, bits & ~Y)
    return True


# --------------------------------------------------------------------------------------
# zap
# --------------------------------------------------------------------------------------


def zap_huge_pud(st: FastState, mm: FastMm, pud: int, pi: int) -> None:
    """zap_huge_pud(): rmap, RSS, withdraw and free the two-level deposit, drop the ref."""
    fid = int(st.e_id[st.row(pud), pi])
    set_entry(st, pud, pi, NONE)
    nr = int(st.f_nr[fid])
    folio_remove_rmap(st, fid, 0, nr, mm, LEVEL_PUD)
    mm.rss_anon -= nr
    pmd = pgtable_trans_huge_pud_withdraw(st, pud)
    for _ in range(st.P):
        pt_free(st, mm, pgtable_trans_huge_withdraw(st, pmd))
    pt_free(st, mm, pmd)
    folio_put(st, fid)


def zap_huge_pmd(st: FastState, mm: FastMm, pmd: int, mi: int) -> None:
    """zap_huge_pmd(): THP or huge zero PMD; the deposited PTE table is freed."""
    r = st.row(pmd)
    kind = int(st.e_kind[r, mi])
    fid = int(st.e_id[r, mi])
    set_entry(st, pmd, mi, NONE)
    if kind == LEAF:
        folio_remove_rmap(st, fid, 0, int(st.f_nr[fid]), mm, LEVEL_PMD)
        mm.rss_anon -= int(st.f_nr[fid])
    pt_free(st, mm, pgtable_trans_huge_withdraw(st, pmd))
    if kind == LEAF:
        folio_put(st, fid)


# --------------------------------------------------------------------------------------
# mprotect
# --------------------------------------------------------------------------------------


def change_huge_pud(st: FastState, pud: int, pi: int) -> None:
    """change_huge_pud(): pud_modify() drops write for a private mapping; never upgraded."""
    st.e_bits[st.row(pud), pi] &= ~np.uint8(W)


def change_huge_pmd(st: FastState, pmd: int, mi: int, prot: str) -> None:
    """change_huge_pmd(): pmd_modify(), then upgrade to writable iff the head is exclusive."""
    r = st.row(pmd)
    if st.e_kind[r, mi] != LEAF:
        return  # the huge zero PMD stays read-only
    fid = int(st.e_id[r, mi])
    write = prot == "rw" and bool(st.p_exclusive[int(st.f_base[fid])])
    st.e_bits[r, mi] = (int(st.e_bits[r, mi]) & ~W) | (W if write else 0)
