"""The model-state coverage catalogue: every feature's name and what it means in kernel
terms, in the order of the tables.  ``COVERAGE.md`` is this catalogue as a document
(``tests/test_coverage.py`` keeps the two equal word for word); ``harness.coverage`` decides
and counts the features.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Feature:
    """One entry of the catalogue: its name and what it means in kernel terms."""

    name: str
    meaning: str


CATALOGUE: tuple[Feature, ...] = tuple(Feature(n, m) for n, m in (
    # ---- faults (read, write, and pin, which faults in for write) --------------------
    ("fault:pud:alloc", "a fault on a none PUD entry mapped a new PUD THP "
     "(`do_huge_pud_anonymous_page`, `thp_fault_alloc_pud`)"),
    ("fault:pud:alloc_on_read", "that PUD THP was allocated by a read fault "
     "(`pud_read_fault=alloc`: no huge zero PUD exists)"),
    ("fault:pud:alloc_in_madvised_vma", "that PUD THP was allowed only because the VMA has "
     "`VM_HUGEPAGE` (per-size or global setting `madvise`, `thp_vma_allowable_order`)"),
    ("fault:pud:fallback", "the order-PUD allocation failed and the fault fell back to the "
     "PMD level (`thp_fault_fallback_pud`, `anon_fault_fallback` for the PUD order)"),
    ("fault:pud:read_maps_pmd_level", "a read fault where a PUD THP was allowed and fitted, "
     "sent to the PMD level by `pud_read_fault=fallback` (a PMD table installed for good)"),
    ("fault:pmd:alloc", "a fault on a none PMD entry mapped a new PMD THP "
     "(`do_huge_pmd_anonymous_page`, `thp_fault_alloc`)"),
    ("fault:pmd:fallback", "the order-PMD allocation of a fault failed: PTE level "
     "(`thp_fault_fallback`)"),
    ("fault:pmd:huge_zero", "a read fault mapped the huge zero PMD, depositing a PTE table "
     "(`do_huge_pmd_anonymous_page` with `use_zero_page`)"),
    ("fault:pte:zero_page", "a read fault mapped the shared zero page at PTE level "
     "(`do_anonymous_page`)"),
    ("fault:pte:new_page", "a write fault on a none PTE mapped a new order-0 folio "
     "(`do_anonymous_page`)"),
    ("fault:nohugepage_vma", "a fault on a none entry in a `VM_NOHUGEPAGE` VMA "
     "(`vma_thp_disabled`: no THP at any level)"),
    ("fault:swapin", "an access to a swap PTE read the slot into a new order-0 folio "
     "(`do_swap_page`)"),
    ("fault:swapin:zeromap", "that slot was in the swap zeromap: read with no IO, no "
     "`pswpin` (`swap_read_folio_zeromap`)"),
    ("fault:swapin:slot_shared", "that slot was also named by another swap PTE (a fork after "
     "pageout): its swap count only drops (`swap_free`)"),
    ("fault:swapin:then_write", "the swap-in was a write: `do_swap_page` then `do_wp_page` "
     "reuses the fresh exclusive folio"),
    # ---- write-protect faults (write or pin on a present read-only mapping) ----------
    ("wp_fault:pud:reuse", "a write to a read-only PUD leaf reused the folio in place "
     "(head AnonExclusive or refcount 1, `pud_wp_reuse`)"),
    ("wp_fault:pud:split", "a write to a read-only PUD leaf split it to PTEs "
     "(`thp_split_pud`) and was handled at PTE level"),
    ("wp_fault:pud:split_shared", "that PUD leaf's folio was also mapped by another mm "
     "(entire mapcount >= 1: shared by fork)"),
    ("wp_fault:pmd:reuse", "a write to a read-only PMD leaf whose head is not exclusive "
     "(a fork's) but whose refcount is 1 reused it (`do_huge_pmd_wp_page`, "
     "`folio_move_anon_rmap`)"),
    ("wp_fault:pmd:split_copy", "a write to a read-only PMD leaf that could not be reused "
     "split it (`thp_split_pmd`) and copied one page"),
    ("wp_fault:huge_zero:new_thp", "a write to the huge zero PMD replaced it by a new PMD "
     "THP reusing its deposit (`do_huge_zero_wp_pmd`)"),
    ("wp_fault:huge_zero:split", "a write to the huge zero PMD whose THP allocation failed "
     "split it to zero PTEs (`__split_huge_zero_page_pmd`)"),
    ("wp_fault:zero_pte:copy", "a write to a zero-page PTE allocated a page "
     "(`wp_page_copy` from the zero page)"),
    ("wp_fault:small:reuse", "a write to a read-only PTE of an order-0 folio reused it "
     "(AnonExclusive, or refcount 1: `wp_can_reuse_anon_folio`)"),
    ("wp_fault:small:copy", "a write to a read-only PTE of an order-0 folio copied it "
     "(`wp_page_copy`)"),
    ("wp_fault:large:exclusive_page", "a write to a read-only PTE of a large folio whose "
     "page is AnonExclusive reused it"),
    ("wp_fault:large:mapcount=1", "a write to a read-only, not exclusive PTE of a large "
     "folio mapped once, all in this mm: copied (`__wp_can_reuse_large_anon_folio`: "
     "mapcount <= 1)"),
    ("wp_fault:large:mapcount=2", "the same with the folio PTE-mapped twice, all in this mm "
     "(SHARED clear): reusable when every reference is a mapping"),
    ("wp_fault:large:mapcount=3", "the same with the folio PTE-mapped three times, all in "
     "this mm"),
    ("wp_fault:large:mapcount>=4", "the same with the folio PTE-mapped four or more times, "
     "all in this mm"),
    ("wp_fault:large:shared", "a write to a read-only, not exclusive PTE of a large folio "
     "that may be mapped by another mm (SHARED set): copied"),
    ("wp_fault:large:extra_reference", "a write to a read-only, not exclusive PTE of a large "
     "folio mapped only in this mm but holding a reference that is not a mapping (a pin): "
     "copied"),
    ("wp_fault:large:reused", "a write to a read-only, not exclusive PTE of a large folio "
     "reused the page in place (`__wp_can_reuse_large_anon_folio` true)"),
    # ---- pins ------------------------------------------------------------------------
    ("pin:large_folio", "FOLL_PIN of a page of a large folio: refcount and `_pincount` + 1"),
    ("pin:small_folio", "FOLL_PIN of an order-0 folio: refcount + `GUP_PIN_COUNTING_BIAS`"),
    ("pin:breaks_cow", "the pin's write fault replaced the folio the page mapped "
     "(COW broken before pinning, FOLL_WRITE)"),
    ("unpin:frees_folio", "an unpin dropped the last reference of a folio no longer mapped "
     "(`gup_put_folio` frees it)"),
    # ---- fork ------------------------------------------------------------------------
    ("fork:copy_huge_pud", "fork shared a PUD leaf with the child: new two-level deposit, "
     "entire mapcount + 1, both write-protected (`copy_huge_pud`)"),
    ("fork:copy_huge_pud:pinned_split", "fork met an exclusive, maybe pinned PUD folio: the "
     "parent's PUD was split and copied at PTE level (`thp_split_pud`)"),
    ("fork:copy_huge_pmd", "fork shared a PMD THP leaf with the child (`copy_huge_pmd`)"),
    ("fork:copy_huge_pmd:pinned_split", "fork met an exclusive, maybe pinned PMD THP: the "
     "parent's PMD was split (`thp_split_pmd`, -EAGAIN)"),
    ("fork:copy_huge_zero_pmd", "fork copied a huge zero PMD, with a deposit for the child"),
    ("fork:copy_pte_range", "fork copied present PTEs (`copy_present_ptes`)"),
    ("fork:copy_pte_range:mid_pud_vma", "fork copied PTE tables of a VMA that starts inside "
     "a PUD range (the child's tables get addresses relative to a PUD it only partly maps)"),
    ("fork:copy_pte:large_folio", "fork shared PTE-mapped pages of a large folio "
     "(`folio_try_dup_anon_rmap_ptes`: the child takes an mm-id slot)"),
    ("fork:copy_pte:swap_entry", "fork copied a swap PTE (`swap_duplicate`)"),
    ("fork:copy_present_page:pinned", "fork gave the child its own copy of a pinned "
     "exclusive page (`copy_present_page`)"),
    ("fork:folio_already_shared", "fork shared a large folio that another mm already maps "
     "(a third mm: both mm-id slots may be taken)"),
    ("fork:enomem", "fork failed to allocate a page copy; the half-built child was torn down "
     "(`dup_mmap` -ENOMEM)"),
    # ---- zap: munmap, mmap over a mapping, MADV_DONTNEED, exit -----------------------
    ("zap:pud_leaf:whole", "a PUD leaf wholly inside a zapped range: rmap, RSS, the two-level "
     "deposit withdrawn and freed (`zap_huge_pud`)"),
    ("zap:pud_leaf:whole_shared", "that PUD leaf's folio stays mapped by another mm"),
    ("zap:pud_leaf:partial", "a PUD leaf partly inside a zapped range: split straight to "
     "PTEs, then the PTEs in range zapped"),
    ("zap:pmd_leaf:whole", "a PMD THP leaf wholly inside a zapped range (`zap_huge_pmd`)"),
    ("zap:pmd_leaf:whole_shared", "that PMD THP's folio stays mapped by another mm"),
    ("zap:pmd_leaf:partial", "a PMD THP leaf partly inside a zapped range: split, then the "
     "PTEs in range zapped"),
    ("zap:huge_zero_pmd", "a huge zero PMD in a zapped range (its deposit freed or withdrawn)"),
    ("zap:deferred_split:pmd_order", "a zap left a PMD-order folio partly mapped: flagged and "
     "queued (`split_deferred`, `thp_deferred_split_page`)"),
    ("zap:deferred_split:pud_order", "a zap left a PUD-order folio partly mapped: flagged and "
     "queued (`split_deferred` for the PUD order)"),
    ("zap:swap_entry", "a zap dropped a swap PTE (`free_swap_and_cache`)"),
    ("zap:whole_pmd_range:child_pte_table", "an mm created by fork zapped the whole PMD range "
     "of a PTE table that maps something"),
    ("dontneed:frees_pte_table", "MADV_DONTNEED freed a PTE table it emptied over a whole PMD "
     "range (`try_to_free_pte`, CONFIG_PT_RECLAIM)"),
    ("munmap:frees_page_tables", "munmap freed a PTE or PMD table no VMA covers any more "
     "(`free_pgtables`)"),
    ("vma_split:pud_leaf_at_edge", "a VMA split point fell strictly inside a PUD leaf: split "
     "first (`vma_adjust_trans_huge`)"),
    ("vma_split:pmd_leaf_at_edge", "a VMA split point fell strictly inside a PMD leaf or "
     "huge zero PMD: split first"),
    ("mmap:replaces_mapping", "a MAP_FIXED mmap over mapped pages zapped them first"),
    ("exit:folio_stays_mapped", "an exiting mm unmapped a large folio that another mm still "
     "maps (its mm-id slot freed, SHARED re-evaluated)"),
    # ---- mprotect --------------------------------------------------------------------
    ("mprotect:pud_leaf:whole", "mprotect of a whole PUD leaf: changed in place, never made "
     "writable (`change_huge_pud`)"),
    ("mprotect:pud_leaf:split", "mprotect split a PUD leaf it covers only in part"),
    ("mprotect:pmd_leaf:upgrade", "mprotect to rw of a whole PMD leaf with an AnonExclusive "
     "head made it writable (`can_change_pmd_writable`)"),
    ("mprotect:pmd_leaf:stays_readonly", "mprotect to rw of a whole PMD leaf whose head is "
     "not exclusive left it read-only"),
    ("mprotect:pmd_leaf:split", "mprotect split a PMD leaf it covers only in part"),
    ("mprotect:huge_zero_pmd", "mprotect of a whole huge zero PMD (stays read-only)"),
    ("mprotect:pte:upgrade", "mprotect to rw made a read-only PTE of an AnonExclusive page "
     "writable (`can_change_pte_writable`)"),
    ("mprotect:pte:stays_readonly", "mprotect to rw left a PTE of a page that is not "
     "exclusive read-only"),
    # ---- MADV_PAGEOUT ----------------------------------------------------------------
    ("pageout:no_swap", "MADV_PAGEOUT over mapped pages with swap disabled (nothing changes)"),
    ("pageout:pud_leaf:split", "the pageout walk split a PUD leaf (no `pud_entry`)"),
    ("pageout:pmd_leaf:swapped_whole", "a written PMD THP wholly in range was swapped out as "
     "one unit (`thp_swpout`)"),
    ("pageout:pmd_leaf:zero_filled", "a zero-filled PMD THP wholly in range went to the swap "
     "zeromap as one unit, with no IO"),
    ("pageout:thp:swap_full_split", "a THP found no room in swap and was split to be "
     "reclaimed page by page (`thp_swpout_fallback`)"),
    ("pageout:pmd_leaf:partial_split", "a PMD THP partly in range was split "
     "(`split_folio` in `madvise_cold_or_pageout_pte_range`)"),
    ("pageout:large_pte:split", "a PTE-mapped large folio not wholly in the batch was split"),
    ("pageout:large_pte:whole", "a PTE-mapped large folio wholly in range, mapped only there, "
     "was reclaimed whole"),
    ("pageout:small:swapped", "an order-0 folio mapped only in range was swapped out"),
    ("pageout:shared_skipped", "a folio in range that may be mapped shared was left alone "
     "(`folio_maybe_mapped_shared`)"),
    ("pageout:pinned_skipped", "a pinned folio in range was not reclaimed "
     "(`folio_maybe_dma_pinned`)"),
    # ---- migrate (mbind MPOL_MF_MOVE) ------------------------------------------------
    ("migrate:pud_leaf:split", "the migrate walk split a PUD leaf (no PUD migration entry)"),
    ("migrate:pmd_leaf:moved", "a PMD THP moved whole through a PMD migration entry "
     "(`set_pmd_migration_entry`, `remove_migration_pmd`, `thp_migration_success`)"),
    ("migrate:written_thp_moved", "a THP that moved whole had been written (its contents "
     "were copied)"),
    ("migrate:pud_folio:moved", "a PUD-order folio (PTE-mapped after the walk's split) moved "
     "whole"),
    ("migrate:large_pte:moved", "a PTE-mapped PMD-order folio moved whole"),
    ("migrate:small:moved", "an order-0 folio moved to the node"),
    ("migrate:alloc_fail_split", "no folio of the order could be allocated on the node: the "
     "THP was split and its pages moved one by one (`thp_migration_split`)"),
    ("migrate:pinned_not_moved", "a pinned folio in range stayed where it was "
     "(`thp_migration_fail` for a THP)"),
    ("migrate:shared_skipped", "a folio that may be mapped shared was not queued "
     "(MPOL_MF_MOVE without MOVE_ALL)"),
    ("migrate:partially_mapped", "a partially mapped, queued large folio was queued for "
     "migration"),
    # ---- split_folio (debugfs split_huge_pages) --------------------------------------
    ("split_folio:pud_order", "a PUD-order folio was split to order 0 (`split` for the PUD "
     "order)"),
    ("split_folio:pmd_order", "a PMD-order folio was split to order 0 (`thp_split_page`)"),
    ("split_folio:pmd_leaf", "the folio split was PMD-mapped: frozen into PTE migration "
     "entries (`__split_huge_pmd_locked(freeze)`)"),
    ("split_folio:pinned", "the split failed at once on an extra reference: EBUSY "
     "(`split_failed`)"),
    ("split_folio:shared", "the folio split may be mapped by more than one mm (SHARED "
     "set): it is unmapped and remapped in each"),
    ("split_folio:zero_subpages", "the split remapped zero-filled subpages to the shared zero "
     "page (`try_to_map_unused_to_zeropage`, RSS - 1 each)"),
    ("split_folio:partially_mapped", "the folio split was partially mapped (unmapped "
     "subpages freed, unqueued)"),
    # ---- the deferred split shrinker -------------------------------------------------
    ("shrink_deferred:split", "the deferred split shrinker split a partially mapped folio"),
    ("shrink_deferred:unqueue", "the shrinker took an unflagged (underused) folio off the "
     "queue"),
    ("shrink_deferred:split_failed", "the shrinker could not split a partially mapped folio "
     "(a pin): it stays queued"),
    ("shrink_deferred:pud_order", "the shrinker split a PUD-order folio"),
    # ---- deposits --------------------------------------------------------------------
    ("deposit:pud_stack:depth>=2", "a PUD table's deposit stack holds two or more PMD tables "
     "(two PUD leaves in one mm)"),
    ("deposit:pud_stack:depth>=3", "the same with three or more"),
    ("deposit:pmd_chain:depth>=2", "a PMD table holds two or more deposited PTE tables "
     "(two PMD leaves or huge zero PMDs under one PUD entry)"),
    ("deposit:pmd_chain:depth>=4", "the same with four or more"),
    # ---- fast paths: the variant each hot path of pudthp_fast ran (under both) ------
    ("fast:copy_pmd_range:python", "fork, on the fast side: the PTE tables of a PMD range "
     "gathered and the child's allocated by a Python loop over the PMD entries "
     "(`copy_pmd_range` with every entry none or a PTE table; a few entries, or "
     "`fast_paths=python`)"),
    ("fast:copy_pmd_range:numpy", "the same over arrays (many PMD entries, or "
     "`fast_paths=numpy`)"),
    ("fast:copy_pte_range:python", "fork, on the fast side: PTEs copied to the child "
     "(`copy_present_ptes`, `copy_nonpresent_pte`) by a Python loop"),
    ("fast:copy_pte_range:numpy", "the same over arrays"),
    ("fast:zap_pmd_range:python", "a zap, on the fast side: the PTE tables of a PMD range "
     "gathered by a Python loop (`zap_pmd_range` with every entry none or a PTE table)"),
    ("fast:zap_pmd_range:numpy", "the same over arrays"),
    ("fast:zap_pte_range:python", "a zap, on the fast side: PTEs cleared, and a large folio's in "
     "the kernel's batches (`zap_pte_range`, `folio_remove_rmap_ptes`), by a Python loop"),
    ("fast:zap_pte_range:numpy", "the same over arrays"),
    ("fast:free_pgtables:python", "`free_pgtables`, on the fast side: the PTE tables no VMA "
     "covers found by a Python loop"),
    ("fast:free_pgtables:numpy", "the same over arrays"),
    ("fast:pt_free_many:python", "the fast side freed several page tables at once (`pte_free` of "
     "each) by a Python loop"),
    ("fast:pt_free_many:numpy", "the same over arrays"),
))

NAMES: tuple[str, ...] = tuple(f.name for f in CATALOGUE)
INDEX: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
N_FEATURES = len(CATALOGUE)
