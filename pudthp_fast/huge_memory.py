"""Fast huge PUD and PMD mappings (mm/huge_memory.c plus the RFC's PUD paths).

Same functions, same order of allocations and counters as ``pudthp_ref.huge_memory``; the
page-level parts (filling P*P PTEs on a PUD split, rmap over every page) are slices.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.pgtable import (
    pgtable_trans_huge_deposit,
    pgtable_trans_huge_pud_deposit,
    pgtable_trans_huge_pud_withdraw,
    pgtable_trans_huge_withdraw,
    pt_alloc,
    pt_alloc_many,
    pt_free,
    pt_free_many,
)
from pudthp_fast.rmap import (
    PMD_LEVEL,
    PTE_LEVEL,
    PUD_LEVEL,
    count_mthp_stat,
    count_vm_event,
    deferred_split_folio,
    folio_add_new_anon_rmap,
    folio_add_rmap,
    folio_alloc,
    folio_put,
    folio_remove_rmap,
    folio_try_dup_anon_rmap,
)
from pudthp_fast.state import (
    LEAF,
    LV_PMD,
    LV_PTE,
    NONE,
    PTE,
    TABLE,
    ZERO,
    Arr,
    D,
    FastMm,
    FastState,
    FastVma,
    W,
    Y,
)
from pudthp_ref.spec import ModelBug


def set_entry(st: FastState, t: int, i: int, kind: int, eid: int = 0, page: int = 0,
              bits: int = 0) -> None:
    r = st.wrow(t)
    st.e_kind[r, i] = kind
    st.e_id[r, i] = eid
    st.e_page[r, i] = page
    st.e_bits[r, i] = bits


def set_entries(st: FastState, t: int, idx: Arr | slice, kind: int, eid: Arr | int = 0
                ) -> None:
    """set_entry() for entries ``idx`` of table ``t`` (page and bits 0)."""
    r = st.wrow(t)
    st.e_kind[r, idx] = kind
    st.e_id[r, idx] = eid
    st.e_page[r, idx] = 0
    st.e_bits[r, idx] = 0


def install_table(st: FastState, parent: int, i: int, child: int, addr: int) -> None:
    set_entry(st, parent, i, TABLE, child)
    st.t_addr[child] = addr


def thp_vma_allowable_order(st: FastState, vma: FastVma, level: str) -> bool:
    if vma.nohugepage:
        return False
    setting = st.cfg.pud_enabled if level == PUD_LEVEL else st.cfg.pmd_enabled
    glob = st.cfg.thp_enabled
    if setting == "always":
        return True
    if setting == "madvise":
        return vma.hugepage
    if setting == "inherit":
        return glob == "always" or (glob == "madvise" and vma.hugepage)
    return False


def thp_vma_suitable_order(st: FastState, vma: FastVma, vpn: int, level: str) -> bool:
    size = st.geom.pud_nr if level == PUD_LEVEL else st.geom.pmd_nr
    base = vpn - vpn % size
    return vma.start <= base and base + size <= vma.end


def leaf_bits(vma: FastVma) -> int:
    """folio_mk_pmd + pmd_mkdirty + maybe_pmd_mkwrite, young."""
    return (W if vma.prot == "rw" else 0) | D | Y


def do_huge_pud_anonymous_page(st: FastState, mm: FastMm, vma: FastVma, pud: int, pi: int
                               ) -> bool:
    fid = folio_alloc(st, st.geom.pud_order)
    if not fid:
        count_mthp_stat(st, st.geom.pud_order, "anon_fault_fallback")
        count_vm_event(st, "thp_fault_fallback_pud")
        return False
    pmd = pt_alloc(st, mm, LV_PMD)
    pgtable_trans_huge_pud_deposit(st, pud, pmd)
    for t in pt_alloc_many(st, mm, LV_PTE, st.P).tolist():  # deposits allocate nothing
        pgtable_trans_huge_deposit(st, pmd, t)
    set_entry(st, pud, pi, LEAF, fid, 0, leaf_bits(vma))
    folio_add_new_anon_rmap(st, fid, mm)
    mm.rss_anon += int(st.f_nr[fid])
    count_vm_event(st, "thp_fault_alloc_pud")
    count_mthp_stat(st, st.geom.pud_order, "anon_fault_alloc")
    deferred_split_folio(st, fid, False)
    return True


def vma_alloc_anon_folio_pmd(st: FastState) -> int:
    fid = folio_alloc(st, st.geom.pmd_order)
    if not fid:
        count_vm_event(st, "thp_fault_fallback")
        count_mthp_stat(st, st.geom.pmd_order, "anon_fault_fallback")
    return fid


def map_anon_folio_pmd_pf(st: FastState, mm: FastMm, vma: FastVma, fid: int, pmd: int,
                          mi: int) -> None:
    set_entry(st, pmd, mi, LEAF, fid, 0, leaf_bits(vma))
    folio_add_new_anon_rmap(st, fid, mm)
    mm.rss_anon += int(st.f_nr[fid])
    count_vm_event(st, "thp_fault_alloc")
    count_mthp_stat(st, st.geom.pmd_order, "anon_fault_alloc")
    deferred_split_folio(st, fid, False)


def do_huge_pmd_anonymous_page(st: FastState, mm: FastMm, vma: FastVma, pmd: int, mi: int,
                               write: bool) -> bool:
    if not write and st.cfg.use_zero_page:
        pgtable = pt_alloc(st, mm, LV_PTE)
        if not st.huge_zero_allocated:
            st.huge_zero_allocated = True
            count_vm_event(st, "thp_zero_page_alloc")
        pgtable_trans_huge_deposit(st, pmd, pgtable)
        set_entry(st, pmd, mi, ZERO)
        return True
    fid = vma_alloc_anon_folio_pmd(st)
    if not fid:
        return False
    pgtable_trans_huge_deposit(st, pmd, pt_alloc(st, mm, LV_PTE))
    map_anon_folio_pmd_pf(st, mm, vma, fid, pmd, mi)
    return True


def huge_wp_reuse(st: FastState, fid: int) -> bool:
    b = int(st.f_base[fid])
    if st.p_exclusive[b]:
        return True
    if st.f_ref[fid] == 1:
        st.f_touch[fid] = True
        st.p_exclusive[b] = True
        return True
    return False


def do_huge_pmd_wp_page(st: FastState, mm: FastMm, vma: FastVma, pmd: int, mi: int) -> bool:
    if st.e_kind[st.row(pmd), mi] == ZERO:
        fid = vma_alloc_anon_folio_pmd(st)
        if fid:
            map_anon_folio_pmd_pf(st, mm, vma, fid, pmd, mi)
            return True
        split_huge_pmd_locked(st, mm, pmd, mi)
        return False
    if huge_wp_reuse(st, int(st.e_id[st.row(pmd), mi])):
        r_pmd = st.wrow(pmd)
        st.e_bits[r_pmd, mi] |= W | D | Y
        return True
    split_huge_pmd_locked(st, mm, pmd, mi)
    return False


def wp_huge_pud(st: FastState, mm: FastMm, pud: int, pi: int) -> bool:
    if st.cfg.pud_wp_reuse and huge_wp_reuse(st, int(st.e_id[st.row(pud), pi])):
        r_pud = st.wrow(pud)
        st.e_bits[r_pud, pi] |= W | D | Y
        return True
    split_huge_pud_locked(st, mm, pud, pi)
    return False


def split_huge_pud_locked(st: FastState, mm: FastMm, pud: int, pi: int) -> None:
    """__split_huge_pud_locked(): PUD leaf straight to P*P PTEs in P withdrawn tables."""
    if st.e_kind[st.row(pud), pi] != LEAF:
        raise ModelBug("split_pud.not_leaf", f"PUD entry {pi} of table {pud}")
    P = st.P
    fid = int(st.e_id[st.row(pud), pi])
    bits = int(st.e_bits[st.row(pud), pi])
    count_vm_event(st, "thp_split_pud")
    st.f_touch[fid] = True
    if bits & D:
        st.f_dirty[fid] = True
    b = int(st.f_base[fid])
    anon_exclusive = bool(st.p_exclusive[b])
    pmd = pgtable_trans_huge_pud_withdraw(st, pud)
    nr = int(st.f_nr[fid])
    st.f_ref[fid] += nr - 1
    folio_add_rmap(st, fid, 0, nr, mm, PTE_LEVEL, anon_exclusive)
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
    folio_remove_rmap(st, fid, 0, nr, mm, PUD_LEVEL)
    install_table(st, pud, pi, pmd, base_addr)


def split_huge_pmd_locked(st: FastState, mm: FastMm, pmd: int, mi: int) -> None:
    """__split_huge_pmd_locked() (non-freeze) and __split_huge_zero_page_pmd()."""
    kind = int(st.e_kind[st.row(pmd), mi])
    count_vm_event(st, "thp_split_pmd")
    pte = pgtable_trans_huge_withdraw(st, pmd)
    addr = int(st.t_addr[pmd]) + mi * st.P
    if kind == ZERO:
        set_entries(st, pte, slice(None), ZERO)
        install_table(st, pmd, mi, pte, addr)
        return
    if kind != LEAF:
        raise ModelBug("split_pmd.not_leaf", f"PMD entry {mi} of table {pmd}")
    fid = int(st.e_id[st.row(pmd), mi])
    bits = int(st.e_bits[st.row(pmd), mi])
    st.f_touch[fid] = True
    if bits & D:
        st.f_dirty[fid] = True
    nr = int(st.f_nr[fid])
    anon_exclusive = bool(st.p_exclusive[int(st.f_base[fid])])
    st.f_ref[fid] += nr - 1
    folio_add_rmap(st, fid, 0, nr, mm, PTE_LEVEL, anon_exclusive)
    r = st.wrow(pte)
    st.e_kind[r] = PTE
    st.e_id[r] = fid
    st.e_page[r] = np.arange(nr, dtype=np.int32)
    st.e_bits[r] = bits
    folio_remove_rmap(st, fid, 0, nr, mm, PMD_LEVEL)
    install_table(st, pmd, mi, pte, addr)


def split_huge_at(st: FastState, mm: FastMm, vpn: int) -> None:
    """vma_adjust_trans_huge() for one boundary."""
    g = st.geom
    pud = mm.pud_table
    pi = vpn // g.pud_nr
    if pi >= g.P:
        return
    k = st.e_kind[st.row(pud), pi]
    if k == LEAF:
        if vpn % g.pud_nr:
            split_huge_pud_locked(st, mm, pud, pi)
        return
    if k != TABLE:
        return
    pmd = int(st.e_id[st.row(pud), pi])
    mi = (vpn // g.pmd_nr) % g.P
    if st.e_kind[st.row(pmd), mi] in (LEAF, ZERO) and vpn % g.pmd_nr:
        split_huge_pmd_locked(st, mm, pmd, mi)


def copy_huge_pud(st: FastState, dst: FastMm, src: FastMm, dpud: int, spud: int, pi: int
                  ) -> bool:
    fid = int(st.e_id[st.row(spud), pi])
    nr = int(st.f_nr[fid])
    pmd = pt_alloc(st, dst, LV_PMD)
    ptes = pt_alloc_many(st, dst, LV_PTE, st.P)
    st.f_touch[fid] = True
    st.f_ref[fid] += 1
    if not folio_try_dup_anon_rmap(st, fid, 0, nr, dst, src, PUD_LEVEL):
        folio_put(st, fid)
        pt_free_many(st, dst, ptes)
        pt_free(st, dst, pmd)
        split_huge_pud_locked(st, src, spud, pi)
        return False
    pgtable_trans_huge_pud_deposit(st, dpud, pmd)
    for t in ptes.tolist():
        pgtable_trans_huge_deposit(st, pmd, t)
    dst.rss_anon += nr
    bits = int(st.e_bits[st.row(spud), pi]) & ~W
    r_spud = st.wrow(spud)
    st.e_bits[r_spud, pi] = bits
    set_entry(st, dpud, pi, LEAF, fid, 0, bits & ~Y)
    return True


def copy_huge_pmd(st: FastState, dst: FastMm, src: FastMm, dpmd: int, spmd: int, mi: int
                  ) -> bool:
    pgtable = pt_alloc(st, dst, LV_PTE)
    if st.e_kind[st.row(spmd), mi] == ZERO:
        pgtable_trans_huge_deposit(st, dpmd, pgtable)
        set_entry(st, dpmd, mi, ZERO)
        return True
    fid = int(st.e_id[st.row(spmd), mi])
    st.f_touch[fid] = True
    st.f_ref[fid] += 1
    if not folio_try_dup_anon_rmap(st, fid, 0, int(st.f_nr[fid]), dst, src, PMD_LEVEL):
        folio_put(st, fid)
        pt_free(st, dst, pgtable)
        split_huge_pmd_locked(st, src, spmd, mi)
        return False
    dst.rss_anon += int(st.f_nr[fid])
    pgtable_trans_huge_deposit(st, dpmd, pgtable)
    bits = int(st.e_bits[st.row(spmd), mi]) & ~W
    r_spmd = st.wrow(spmd)
    st.e_bits[r_spmd, mi] = bits
    set_entry(st, dpmd, mi, LEAF, fid, 0, bits & ~Y)
    return True


def zap_huge_pud(st: FastState, mm: FastMm, pud: int, pi: int) -> None:
    fid = int(st.e_id[st.row(pud), pi])
    set_entry(st, pud, pi, NONE)
    nr = int(st.f_nr[fid])
    folio_remove_rmap(st, fid, 0, nr, mm, PUD_LEVEL)
    mm.rss_anon -= nr
    pmd = pgtable_trans_huge_pud_withdraw(st, pud)
    for _ in range(st.P):
        pt_free(st, mm, pgtable_trans_huge_withdraw(st, pmd))
    pt_free(st, mm, pmd)
    folio_put(st, fid)


def zap_huge_pmd(st: FastState, mm: FastMm, pmd: int, mi: int) -> None:
    kind = int(st.e_kind[st.row(pmd), mi])
    fid = int(st.e_id[st.row(pmd), mi])
    set_entry(st, pmd, mi, NONE)
    if kind == LEAF:
        folio_remove_rmap(st, fid, 0, int(st.f_nr[fid]), mm, PMD_LEVEL)
        mm.rss_anon -= int(st.f_nr[fid])
    pt_free(st, mm, pgtable_trans_huge_withdraw(st, pmd))
    if kind == LEAF:
        folio_put(st, fid)


def change_huge_pmd(st: FastState, pmd: int, mi: int, prot: str) -> None:
    if st.e_kind[st.row(pmd), mi] != LEAF:
        return
    fid = int(st.e_id[st.row(pmd), mi])
    write = prot == "rw" and bool(st.p_exclusive[int(st.f_base[fid])])
    r_pmd = st.wrow(pmd)
    st.e_bits[r_pmd, mi] = (int(st.e_bits[r_pmd, mi]) & ~W) | (W if write else 0)
