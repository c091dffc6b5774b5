"""MADV_COLLAPSE: mm/khugepaged.c madvise_collapse() and the synchronous collapse it runs.

khugepaged itself (the background thread) is not modelled: only the madvise path, which
scans each naturally aligned PMD block of the range and copies it into a new PMD-order
folio.  Collapse to the PUD order stays disabled, as in the RFC.
"""

from __future__ import annotations

from pudthp_ref.folio import deferred_split_folio, folio_alloc, folio_put
from pudthp_ref.memory import do_swap_page
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc, Vma
from pudthp_ref.pgtable import mk_leaf, pgtable_trans_huge_deposit
from pudthp_ref.rmap import folio_add_new_anon_rmap, folio_remove_rmap
from pudthp_ref.spec import EAGAIN, EINVAL, ENOMEM, LEVEL_PTE, Result
from pudthp_ref.vmstat import count_vm_event

# scan results (enum scan_result) the model meets
SCAN_SUCCEED = "succeed"
SCAN_PMD_NULL = "pmd_null"  # no PMD table: the PUD entry is none
SCAN_PMD_NONE = "pmd_none"  # no PTE table: the PMD entry is none
SCAN_PMD_MAPPED = "pmd_mapped"  # already a PMD (or PUD) leaf, or the huge zero PMD
SCAN_PAGE_COUNT = "page_count"  # a page with a reference that is not a mapping
SCAN_ALLOC_HUGE_PAGE_FAIL = "alloc_fail"
# results after which madvise_collapse() goes on to the next block
_GO_ON = (SCAN_SUCCEED, SCAN_PMD_MAPPED, SCAN_PMD_NULL, SCAN_PAGE_COUNT)


def madvise_collapse(st: MmState, mm: MmStruct, vma: Vma, start: int, end: int) -> Result:
    """madvise_collapse() over ``[start, end)`` inside ``vma``: 0 when every aligned PMD
    block of the range is (now) PMD-mapped, else madvise_collapse_errno() of the last
    failure; a failure not on the go-on list ends the walk at once."""
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


def collapse_allowed(vma: Vma, P: int) -> bool:
    """thp_vma_allowable_order(TVA_FORCED_COLLAPSE, PMD_ORDER): no sysfs setting counts,
    only VM_NOHUGEPAGE, an anon_vma (a VMA never written has none) and an aligned PMD block
    inside the VMA (the check of __thp_vma_allowable_orders() outside a fault)."""
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


def folio_mapcount(folio: Folio) -> int:
    if folio.order == 0:
        return folio.mapcount[0] + 1
    return folio.large_mapcount + 1


def hpage_collapse_scan_pmd(st: MmState, mm: MmStruct, vma: Vma, addr: int) -> str:
    """hpage_collapse_scan_pmd() for the PMD block at ``addr`` (find_pmd_or_thp_or_none()
    first), then collapse_huge_page() when the scan succeeds.  As MADV_COLLAPSE runs it,
    none, zero-page, swap and shared PTEs are all accepted (max_ptes_* are khugepaged's
    only); a page with an extra reference fails the block."""
    g = st.geom
    pe = st.tables[mm.pud_table].entries[g.pud_index(addr)]
    if pe is None:
        return SCAN_PMD_NULL
    if pe[0] == "leaf":
        return SCAN_PMD_MAPPED  # a PUD leaf: the model counts it as collapsed already
    pmd_table = st.tables[pe[1]]
    mi = g.pmd_index(addr)
    me = pmd_table.entries[mi]
    if me is None:
        return SCAN_PMD_NONE
    if me[0] in ("leaf", "zero"):
        return SCAN_PMD_MAPPED
    pte_table = st.tables[me[1]]
    for e in pte_table.entries:
        if e is not None and e[0] == "pte":
            folio = st.folios[e[1]]
            if folio.refcount != folio_mapcount(folio):  # is_refcount_suitable()
                return SCAN_PAGE_COUNT
    return collapse_huge_page(st, mm, vma, addr, pmd_table, mi, pte_table)


def collapse_huge_page(st: MmState, mm: MmStruct, vma: Vma, addr: int, pmd_table: PtDesc,
                       mi: int, pte_table: PtDesc) -> str:
    """collapse_huge_page(): allocate, swap in, copy, drop the old mappings, map the new
    folio by a PMD leaf over the block's PTE table, now its deposit."""
    new = folio_alloc(st, st.geom.pmd_order)  # alloc_charge_folio()
    if new is None:
        count_vm_event(st, "thp_collapse_alloc_failed")
        return SCAN_ALLOC_HUGE_PAGE_FAIL
    count_vm_event(st, "thp_collapse_alloc")
    __collapse_huge_page_swapin(st, mm, vma, pte_table)
    __collapse_huge_page_copy(st, mm, new, pte_table)
    folio_add_new_anon_rmap(st, new, mm)
    pmd_table.entries[mi] = None
    pgtable_trans_huge_deposit(st, pmd_table, pte_table)
    rw = vma.prot == "rw"
    pmd_table.entries[mi] = mk_leaf(new.id, rw, True, True)
    deferred_split_folio(st, new, False)
    return SCAN_SUCCEED


def __collapse_huge_page_swapin(st: MmState, mm: MmStruct, vma: Vma, pte_table: PtDesc
                                ) -> None:
    """__collapse_huge_page_swapin(): every swap PTE of the block faulted in, in address
    order, as a read fault (do_swap_page())."""
    for ti, e in enumerate(pte_table.entries):
        if e is not None and e[0] == "swap":
            do_swap_page(st, mm, vma, pte_table, ti)


def __collapse_huge_page_copy(st: MmState, mm: MmStruct, new: Folio, pte_table: PtDesc
                              ) -> None:
    """__collapse_huge_page_copy() and _succeeded(): page i of ``new`` gets the contents of
    PTE i (0 for a none or zero-page PTE); the old PTEs are cleared in address order, their
    rmap and references dropped in folio_pte_batch() batches."""
    entries = pte_table.entries
    P = len(entries)
    ti = 0
    while ti < P:
        e = entries[ti]
        if e is None or e[0] == "zero":
            entries[ti] = None
            mm.rss_anon += 1  # the new folio maps this page; nothing did before
            ti += 1
            continue
        folio = st.folios[e[1]]
        page = e[2]
        n = 1
        while ti + n < P:
            nx = entries[ti + n]
            if nx is None or nx[0] != "pte" or nx[1] != e[1] or nx[2] != page + n:
                break
            n += 1
        for k in range(n):
            new.data[ti + k] = folio.data[page + k]
            entries[ti + k] = None
        folio_remove_rmap(st, folio, page, n, mm, LEVEL_PTE)
        folio_put(st, folio, n)
        ti += n
