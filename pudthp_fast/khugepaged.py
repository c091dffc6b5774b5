"""Fast MADV_COLLAPSE: mm/khugepaged.c madvise_collapse() over the entry rows
(``pudthp_ref.khugepaged`` says what each step follows)."""

from __future__ import annotations

from pudthp_fast.folio import deferred_split_folio, folio_alloc, folio_put
from pudthp_fast.memory import do_swap_page
from pudthp_fast.pgtable import pgtable_trans_huge_deposit, table_of
from pudthp_fast.rmap import folio_add_new_anon_rmap, folio_remove_rmap
from pudthp_fast.state import (
    LEAF,
    NONE,
    PTE,
    SWAP,
    TABLE,
    ZERO,
    D,
    FastMm,
    FastState,
    FastVma,
    W,
    Y,
    set_entry,
)
from pudthp_fast.vmstat import count_vm_event
from pudthp_ref.spec import EAGAIN, EINVAL, ENOMEM, LEVEL_PMD, LEVEL_PTE, Result

SCAN_SUCCEED = "succeed"
SCAN_PMD_NULL = "pmd_null"
SCAN_PMD_NONE = "pmd_none"
SCAN_PMD_MAPPED = "pmd_mapped"
SCAN_PAGE_COUNT = "page_count"
SCAN_ALLOC_HUGE_PAGE_FAIL = "alloc_fail"
_GO_ON = (SCAN_SUCCEED, SCAN_PMD_MAPPED, SCAN_PMD_NULL, SCAN_PAGE_COUNT)


def madvise_collapse(st: FastState, mm: FastMm, vma: FastVma, start: int, end: int
                     ) -> Result:
    """madvise_collapse() over ``[start, end)`` inside ``vma``."""
    P = st.geom.pmd_nr
    if not collapse_allowed(vma, P):
        return EINVAL
    hstart = -(-start // P) * P
    hend = end // P * P
    last = SCAN_SUCCEED
    thps = 0
    for addr in range(hstart, hend, P):
        result = hpage_collapse_scan_pmd(st, mm, vma, addr)
        if result in (SCAN_SUCCEED, SCAN_PMD_MAPPED):
            thps += 1
            continue
        last = result
        if result not in _GO_ON:
            break
    if hstart >= hend or thps == (hend - hstart) // P:
        return 0
    return madvise_collapse_errno(last)


def collapse_allowed(vma: FastVma, P: int) -> bool:
    """thp_vma_allowable_order(TVA_FORCED_COLLAPSE, PMD_ORDER)."""
    if vma.nohugepage or vma.anon_vma is None:
        return False
    last = vma.end - P
    return last >= 0 and last - last % P >= vma.start


def madvise_collapse_errno(result: str) -> Result:
    """madvise_collapse_errno()."""
    if result == SCAN_ALLOC_HUGE_PAGE_FAIL:
        return ENOMEM
    if result == SCAN_PAGE_COUNT:
        return EAGAIN
    return EINVAL


def folio_mapcount(st: FastState, fid: int) -> int:
    if st.f_order[fid] == 0:
        return int(st.p_mapcount[int(st.f_base[fid])]) + 1
    return int(st.f_large[fid]) + 1


def hpage_collapse_scan_pmd(st: FastState, mm: FastMm, vma: FastVma, addr: int) -> str:
    """hpage_collapse_scan_pmd() for the PMD block at ``addr``, then collapse_huge_page()."""
    g = st.geom
    pud = mm.pud_table
    pi = addr // g.pud_nr
    k = st.e_kind[st.row(pud), pi]
    if k == NONE:
        return SCAN_PMD_NULL
    if k == LEAF:
        return SCAN_PMD_MAPPED
    pmd = table_of(st, pud, pi, LEVEL_PMD)
    mi = (addr // g.pmd_nr) % g.P
    k = st.e_kind[st.row(pmd), mi]
    if k == NONE:
        return SCAN_PMD_NONE
    if k in (LEAF, ZERO):
        return SCAN_PMD_MAPPED
    assert k == TABLE
    pte = table_of(st, pmd, mi, LEVEL_PTE)
    r = st.row(pte)
    kinds = st.e_kind[r]
    for fid in st.e_id[r][kinds == PTE].tolist():
        if st.f_ref[fid] != folio_mapcount(st, fid):  # is_refcount_suitable()
            return SCAN_PAGE_COUNT
    return collapse_huge_page(st, mm, vma, pmd, mi, pte)


def collapse_huge_page(st: FastState, mm: FastMm, vma: FastVma, pmd: int, mi: int, pte: int
                       ) -> str:
    """collapse_huge_page(): allocate, swap in, copy, map by a PMD leaf over the deposit."""
    new = folio_alloc(st, st.geom.pmd_order)
    if not new:
        count_vm_event(st, "thp_collapse_alloc_failed")
        return SCAN_ALLOC_HUGE_PAGE_FAIL
    count_vm_event(st, "thp_collapse_alloc")
    __collapse_huge_page_swapin(st, mm, pte)
    __collapse_huge_page_copy(st, mm, new, pte)
    folio_add_new_anon_rmap(st, new, mm)
    set_entry(st, pmd, mi, NONE)
    pgtable_trans_huge_deposit(st, pmd, pte)
    set_entry(st, pmd, mi, LEAF, new, 0, (W if vma.prot == "rw" else 0) | D | Y)
    deferred_split_folio(st, new, False)
    return SCAN_SUCCEED


def __collapse_huge_page_swapin(st: FastState, mm: FastMm, pte: int) -> None:
    """__collapse_huge_page_swapin(): swap PTEs faulted in, in address order, as reads."""
    r = st.row(pte)
    for ti in (st.e_kind[r] == SWAP).nonzero()[0].tolist():
        do_swap_page(st, mm, pte, ti)


def __collapse_huge_page_copy(st: FastState, mm: FastMm, new: int, pte: int) -> None:
    """__collapse_huge_page_copy() and _succeeded(): contents copied, old PTEs cleared in
    address order, rmap and references dropped in folio_pte_batch() batches."""
    r = st.wrow(pte)
    kinds = st.e_kind[r]
    ids = st.e_id[r]
    pages = st.e_page[r]
    P = st.P
    dst = int(st.f_base[new])
    ti = 0
    while ti < P:
        k = int(kinds[ti])
        if k != PTE:  # none or the zero page: the new folio maps a page nothing did
            set_entry(st, pte, ti, NONE)
            mm.rss_anon += 1
            ti += 1
            continue
        fid, page = int(ids[ti]), int(pages[ti])
        n = 1
        while ti + n < P and kinds[ti + n] == PTE and ids[ti + n] == fid \
                and pages[ti + n] == page + n:
            n += 1
        src = int(st.f_base[fid]) + page
        st.p_data[dst + ti : dst + ti + n] = st.p_data[src : src + n]
        st.e_kind[r, ti : ti + n] = NONE
        st.e_id[r, ti : ti + n] = 0
        st.e_page[r, ti : ti + n] = 0
        st.e_bits[r, ti : ti + n] = 0
        folio_remove_rmap(st, fid, page, n, mm, LEVEL_PTE)
        folio_put(st, fid, n)
        ti += n
