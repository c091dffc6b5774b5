"""The model-state coverage catalogue (``harness.coverage``, ``COVERAGE.md``) and
``pudthp coverage``.

Every feature of the catalogue has a program here that reaches it: the op named must hit the
feature.  Each case says why, from the kernel's rules (MODEL.md, the RFC and mainline
``mm/``), at small geometry (P = 8: a PMD maps 8 pages, a PUD 64), so the expected features
come from those rules, not from running the code; a few cases also say what the op must
not hit.  The catalogue itself is checked against ``COVERAGE.md``, word for word.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.coverage import CATALOGUE, INDEX, N_FEATURES, NAMES, Coverage, Tally
from harness.program import parse_program
from harness.runner import Stepper
from pudthp_ref.spec import Config, Program

ROOT = Path(__file__).resolve().parents[1]

# Configs: PUD THPs (the defaults), PMD THPs only, no THPs at all.
PUD: dict[str, Any] = {}
PMD: dict[str, Any] = {"pud_enabled": "never"}
PTE: dict[str, Any] = {"thp_enabled": "never", "pud_enabled": "never"}


def M(start: int, n: int, prot: str = "rw", mm: int = 0) -> dict[str, Any]:
    return {"op": "mmap", "mm": mm, "start": start, "npages": n, "prot": prot}


def U(start: int, n: int, mm: int = 0) -> dict[str, Any]:
    return {"op": "munmap", "mm": mm, "start": start, "npages": n}


def MP(start: int, n: int, prot: str, mm: int = 0) -> dict[str, Any]:
    return {"op": "mprotect", "mm": mm, "start": start, "npages": n, "prot": prot}


def MA(start: int, n: int, advice: str, mm: int = 0) -> dict[str, Any]:
    return {"op": "madvise", "mm": mm, "start": start, "npages": n, "advice": advice}


def W(addr: int, value: int = 7, mm: int = 0) -> dict[str, Any]:
    return {"op": "write", "mm": mm, "addr": addr, "value": value}


def R(addr: int, mm: int = 0) -> dict[str, Any]:
    return {"op": "read", "mm": mm, "addr": addr}


def F(mm: int = 0) -> dict[str, Any]:
    return {"op": "fork", "mm": mm}


def X(mm: int) -> dict[str, Any]:
    return {"op": "exit", "mm": mm}


def PIN(addr: int, mm: int = 0) -> dict[str, Any]:
    return {"op": "pin", "mm": mm, "addr": addr}


def UNPIN(pin: int) -> dict[str, Any]:
    return {"op": "unpin", "pin": pin}


def MG(start: int, n: int, node: int = 1, mm: int = 0) -> dict[str, Any]:
    return {"op": "migrate", "mm": mm, "start": start, "npages": n, "node": node}


def SF(addr: int, mm: int = 0) -> dict[str, Any]:
    return {"op": "split_folio", "mm": mm, "addr": addr}


def SD() -> dict[str, Any]:
    return {"op": "shrink_deferred"}


def FA(order: str, count: int = 1) -> dict[str, Any]:
    return {"op": "fail_alloc", "order": order, "count": count}


def program(cfg: dict[str, Any], ops: list[dict[str, Any]]) -> Program:
    return parse_program({"format": "pudthp-program/1", "config": cfg, "ops": ops}, "<case>")


def features_per_op(p: Program, impl: str = "ref", fast_paths: str = "default"
                    ) -> list[set[str]]:
    """The features each op of ``p`` hit (the program must run without a finding)."""
    cov = Coverage()
    stepper = Stepper(p.config, impl, coverage=cov, fast_paths=fast_paths)
    out = []
    for op in p.ops:
        before = list(cov.hits)
        stepper.step(op)
        assert stepper.finding is None, stepper.finding
        out.append({NAMES[i] for i in range(N_FEATURES) if cov.hits[i] > before[i]})
    assert stepper.finish().finding is None
    assert cov.unclassified == 0, cov.first_error
    return out


# (feature, config, ops, index of the op that hits it, why)
Case = tuple[str, dict[str, Any], list[dict[str, Any]], int, str]
THP_WRITE = [M(0, 64), W(0, 5)]  # one PUD THP (PUD config) or one PMD THP at 0..7 (PMD)

CASES: list[Case] = [
    # ---- faults ------------------------------------------------------------------------
    ("fault:pud:alloc", PUD, [M(0, 64), W(5)], 1,
     "the VMA covers PUD range 0 and pud_enabled=always: do_huge_pud_anonymous_page"),
    ("fault:pud:alloc_on_read", PUD, [M(0, 64), R(5)], 1,
     "pud_read_fault=alloc: a read of a none PUD entry allocates the PUD THP too"),
    ("fault:pud:alloc_in_madvised_vma", {"pud_enabled": "madvise"},
     [M(0, 64), MA(0, 64, "hugepage"), W(0)], 2,
     "pud_enabled=madvise allows the PUD order only in a VM_HUGEPAGE VMA"),
    ("fault:pud:fallback", PUD, [M(0, 64), FA("pud"), W(0)], 2,
     "the injected order-PUD failure makes the fault fall back to the PMD level"),
    ("fault:pud:read_maps_pmd_level", {"pud_read_fault": "fallback"}, [M(0, 64), R(0)], 1,
     "a PUD THP fits and is allowed, but pud_read_fault=fallback sends a read to PMD level"),
    ("fault:pmd:alloc", PMD, [M(0, 64), W(0)], 1,
     "PUD THPs off: the write fault maps a PMD THP over 0..7"),
    ("fault:pmd:fallback", PMD, [M(0, 64), FA("pmd"), W(0)], 2,
     "the order-PMD allocation fails (thp_fault_fallback): an order-0 page at PTE level"),
    ("fault:pmd:huge_zero", PMD, [M(0, 64), R(0)], 1,
     "a read with use_zero_page maps the huge zero PMD"),
    ("fault:pte:zero_page", PTE, [M(0, 64), R(0)], 1,
     "no THP: a read maps the zero page"),
    ("fault:pte:new_page", PTE, [M(0, 64), W(0)], 1,
     "no THP: a write maps a new order-0 folio"),
    ("fault:nohugepage_vma", PUD, [M(0, 64), MA(0, 64, "nohugepage"), W(0)], 2,
     "VM_NOHUGEPAGE forbids THP in the VMA: the fault goes to PTE level"),
    ("fault:swapin", PTE, [M(0, 8), W(0, 5), MA(0, 8, "pageout"), R(0)], 3,
     "the written order-0 page was swapped out by pageout; the read swaps it in"),
    ("fault:swapin:zeromap", PTE, [M(0, 8), W(0, 0), MA(0, 8, "pageout"), R(0)], 3,
     "a page written with 0 is zero-filled: swap_writeout puts it in the zeromap, no IO"),
    ("fault:swapin:slot_shared", PTE, [M(0, 8), W(0, 5), MA(0, 8, "pageout"), F(0), R(0)], 4,
     "the fork duplicated the swap PTE (swap count 2) before the parent's swap-in"),
    ("fault:swapin:then_write", PTE, [M(0, 8), W(0, 5), MA(0, 8, "pageout"), W(0, 6)], 3,
     "a write to a swap PTE: do_swap_page, then do_wp_page on the fresh exclusive folio"),
    # ---- write-protect faults ----------------------------------------------------------
    ("wp_fault:pud:reuse", PUD, [*THP_WRITE, MP(0, 64, "r"), MP(0, 64, "rw"), W(1)], 4,
     "change_huge_pud never makes a PUD writable again, but its head is still exclusive: "
     "the write reuses it"),
    ("wp_fault:pud:split", PUD, [*THP_WRITE, F(0), W(1)], 3,
     "after fork the PUD folio is shared (not exclusive, refcount 2): the write splits it"),
    ("wp_fault:pud:split_shared", PUD, [*THP_WRITE, F(0), W(1)], 3,
     "the child's PUD leaf maps the same folio (entire mapcount 1)"),
    ("wp_fault:pmd:reuse", PMD, [*THP_WRITE, F(0), X(1), W(1)], 4,
     "the child is gone: head not exclusive (fork cleared it) but refcount 1, so reused"),
    ("wp_fault:pmd:split_copy", PMD, [*THP_WRITE, F(0), W(1)], 3,
     "the child still maps the PMD THP: refcount 2, so split and the page copied"),
    ("wp_fault:huge_zero:new_thp", PMD, [M(0, 64), R(0), W(0)], 2,
     "a write to the huge zero PMD allocates a PMD THP (do_huge_zero_wp_pmd)"),
    ("wp_fault:huge_zero:split", PMD, [M(0, 64), R(0), FA("pmd"), W(0)], 3,
     "the THP allocation fails: the huge zero PMD is split to zero PTEs"),
    ("wp_fault:zero_pte:copy", PTE, [M(0, 64), R(0), W(0)], 2,
     "a write to the zero-page PTE copies it into a new page"),
    ("wp_fault:small:reuse", PTE, [M(0, 8), W(0), F(0), X(1), W(0)], 4,
     "the order-0 page lost AnonExclusive at fork; the child is gone, refcount 1: reused"),
    ("wp_fault:small:copy", PTE, [M(0, 8), W(0), F(0), W(0)], 3,
     "the child maps the page too (refcount 2): copied"),
    ("wp_fault:large:exclusive_page", PUD,
     [*THP_WRITE, MP(0, 64, "r"), MP(0, 64, "rw"), U(32, 32), W(1)], 5,
     "the PUD leaf stays read-only and exclusive after the toggle; the munmap splits it, "
     "AnonExclusive copied to every page: the write reuses page 1"),
    ("wp_fault:large:mapcount=1", PMD, [*THP_WRITE, F(0), X(1), U(1, 7), W(0)], 5,
     "fork and exit leave the THP's pages not exclusive, mapped only by mm 0; the munmap "
     "leaves page 0 alone mapped: mapcount 1, so the page is copied"),
    ("wp_fault:large:mapcount=2", PMD, [*THP_WRITE, F(0), X(1), U(2, 6), W(0)], 5,
     "as above with pages 0 and 1 left: mapcount 2, refcount 2, SHARED clear: reused"),
    ("wp_fault:large:mapcount=3", PMD, [*THP_WRITE, F(0), X(1), U(3, 5), W(0)], 5,
     "three pages left: mapcount 3"),
    ("wp_fault:large:mapcount>=4", PMD, [*THP_WRITE, F(0), X(1), U(4, 4), W(0)], 5,
     "four pages left: mapcount 4"),
    ("wp_fault:large:shared", PMD, [*THP_WRITE, F(0), U(4, 4), W(0)], 4,
     "the child still maps the whole THP (SHARED set): mm 0's write copies"),
    ("wp_fault:large:extra_reference", PMD,
     [*THP_WRITE, F(0), X(1), U(4, 4), PIN(1), W(0)], 6,
     "the pin of page 1 adds a reference: refcount 5 != mapcount 4, so page 0 is copied"),
    ("wp_fault:large:reused", PMD, [*THP_WRITE, F(0), X(1), U(2, 6), W(0)], 5,
     "mapcount 2 = refcount 2, all in mm 0: __wp_can_reuse_large_anon_folio is true"),
    # ---- pins --------------------------------------------------------------------------
    ("pin:large_folio", PUD, [M(0, 64), PIN(0)], 1,
     "the pin faults in the PUD THP for write and pins page 0 of it"),
    ("pin:small_folio", PTE, [M(0, 8), PIN(0)], 1, "no THP: an order-0 folio is pinned"),
    ("pin:breaks_cow", PTE, [M(0, 8), W(0), F(0), PIN(0)], 3,
     "the page is shared with the child: the pin's write fault copies it first"),
    ("unpin:frees_folio", PTE, [M(0, 8), PIN(0), U(0, 8), UNPIN(1)], 3,
     "the munmap dropped the mapping; the pin held the last reference"),
    # ---- fork --------------------------------------------------------------------------
    ("fork:copy_huge_pud", PUD, [*THP_WRITE, F(0)], 2, "copy_huge_pud shares the PUD leaf"),
    ("fork:copy_huge_pud:pinned_split", PUD, [M(0, 64), PIN(0), F(0)], 2,
     "the PUD folio is exclusive and pinned (MMF_HAS_PINNED): the parent's PUD is split"),
    ("fork:copy_huge_pmd", PMD, [*THP_WRITE, F(0)], 2, "copy_huge_pmd shares the PMD THP"),
    ("fork:copy_huge_pmd:pinned_split", PMD, [M(0, 64), PIN(0), F(0)], 2,
     "the PMD THP is exclusive and pinned: copy_huge_pmd splits the parent's PMD"),
    ("fork:copy_huge_zero_pmd", PMD, [M(0, 64), R(0), F(0)], 2,
     "the huge zero PMD is copied with a deposit for the child"),
    ("fork:copy_pte_range", PTE, [M(0, 8), W(0), F(0)], 2, "one present PTE copied"),
    ("fork:copy_pte_range:mid_pud_vma", PTE, [M(4, 8), W(4), F(0)], 2,
     "the VMA starts at page 4, inside PUD range 0, and has a PTE table"),
    ("fork:copy_pte:large_folio", PMD, [*THP_WRITE, U(4, 4), F(0)], 3,
     "the munmap split the PMD THP: its pages 0..3 are PTE-mapped when fork copies them"),
    ("fork:copy_pte:swap_entry", PTE, [M(0, 8), W(0, 5), MA(0, 8, "pageout"), F(0)], 3,
     "page 0 is a swap PTE: swap_duplicate"),
    ("fork:copy_present_page:pinned", PTE, [M(0, 8), PIN(0), F(0)], 2,
     "the pinned exclusive order-0 page is copied for the child (copy_present_page)"),
    ("fork:folio_already_shared", PMD, [*THP_WRITE, F(0), F(0)], 3,
     "the first fork made the THP SHARED; the second fork maps it in a third mm"),
    ("fork:enomem", PTE, [M(0, 8), PIN(0), FA("base"), F(0)], 3,
     "copy_present_page cannot allocate: fork returns ENOMEM"),
    # ---- zap ---------------------------------------------------------------------------
    ("zap:pud_leaf:whole", PUD, [*THP_WRITE, U(0, 64)], 2, "zap_huge_pud"),
    ("zap:pud_leaf:whole_shared", PUD, [*THP_WRITE, F(0), U(0, 64)], 3,
     "the child keeps mapping the PUD folio"),
    ("zap:pud_leaf:partial", PUD, [*THP_WRITE, MA(0, 8, "dontneed")], 2,
     "MADV_DONTNEED of 8 of the 64 pages: the PUD is split, the 8 PTEs zapped"),
    ("zap:pmd_leaf:whole", PMD, [*THP_WRITE, U(0, 8)], 2, "zap_huge_pmd"),
    ("zap:pmd_leaf:whole_shared", PMD, [*THP_WRITE, F(0), U(0, 8)], 3,
     "the child keeps mapping the PMD THP"),
    ("zap:pmd_leaf:partial", PMD, [*THP_WRITE, MA(0, 4, "dontneed")], 2,
     "MADV_DONTNEED of half the PMD: split, 4 PTEs zapped"),
    ("zap:huge_zero_pmd", PMD, [M(0, 64), R(0), U(0, 8)], 2, "the huge zero PMD is zapped"),
    ("zap:deferred_split:pmd_order", PMD, [*THP_WRITE, U(0, 4)], 2,
     "pages 4..7 stay mapped: the PMD THP is flagged partially mapped and queued"),
    ("zap:deferred_split:pud_order", PUD, [*THP_WRITE, U(0, 8)], 2,
     "56 of 64 pages stay mapped: the PUD folio is flagged and queued"),
    ("zap:swap_entry", PTE, [M(0, 8), W(0, 5), MA(0, 8, "pageout"), U(0, 8)], 3,
     "the swap PTE is dropped"),
    ("zap:whole_pmd_range:child_pte_table", PTE,
     [M(0, 64), W(0), F(0), MA(0, 8, "dontneed", mm=1)], 3,
     "mm 1 came from fork; it zaps all of PMD range 0, a PTE table mapping page 0"),
    ("dontneed:frees_pte_table", PTE, [M(0, 64), W(0), MA(0, 8, "dontneed")], 2,
     "the PTE table over 0..7 is emptied over its whole range and freed (PT_RECLAIM)"),
    ("munmap:frees_page_tables", PTE, [M(0, 8), W(0), U(0, 8)], 2,
     "no VMA is left over the PMD range: free_pgtables frees the PTE table"),
    ("vma_split:pud_leaf_at_edge", PUD, [*THP_WRITE, U(0, 8)], 2,
     "the VMA split at page 8 falls inside the PUD leaf: vma_adjust_trans_huge splits it"),
    ("vma_split:pmd_leaf_at_edge", PMD, [*THP_WRITE, U(0, 4)], 2,
     "the VMA split at page 4 falls inside the PMD leaf"),
    ("mmap:replaces_mapping", PTE, [M(0, 8), W(0), M(0, 8)], 2,
     "MAP_FIXED over the mapped page zaps it first"),
    ("exit:folio_stays_mapped", PMD, [*THP_WRITE, F(0), X(1)], 3,
     "the exiting child maps the THP that mm 0 still maps"),
    # ---- mprotect ----------------------------------------------------------------------
    ("mprotect:pud_leaf:whole", PUD, [*THP_WRITE, MP(0, 64, "r")], 2, "change_huge_pud"),
    ("mprotect:pud_leaf:split", PUD, [*THP_WRITE, MP(0, 8, "r")], 2,
     "8 of the 64 pages: the PUD is split"),
    ("mprotect:pmd_leaf:upgrade", PMD, [*THP_WRITE, MP(0, 8, "r"), MP(0, 8, "rw")], 3,
     "the head is still exclusive: change_huge_pmd makes the leaf writable"),
    ("mprotect:pmd_leaf:stays_readonly", PMD,
     [*THP_WRITE, F(0), MP(0, 8, "r"), MP(0, 8, "rw")], 4,
     "after fork the head is not exclusive: the leaf stays read-only"),
    ("mprotect:pmd_leaf:split", PMD, [*THP_WRITE, MP(0, 4, "r")], 2, "half the PMD: split"),
    ("mprotect:huge_zero_pmd", PMD, [M(0, 64), R(0), MP(0, 8, "r")], 2,
     "the whole huge zero PMD is in range"),
    ("mprotect:pte:upgrade", PTE, [M(0, 8), W(0), MP(0, 8, "r"), MP(0, 8, "rw")], 3,
     "the page is exclusive: can_change_pte_writable"),
    ("mprotect:pte:stays_readonly", PTE, [M(0, 8), W(0), F(0), MP(0, 8, "r"), MP(0, 8, "rw")],
     4, "after fork the page is not exclusive: the PTE stays read-only"),
    # ---- pageout -----------------------------------------------------------------------
    ("pageout:no_swap", {**PTE, "swap_pages": 0}, [M(0, 8), W(0), MA(0, 8, "pageout")], 2,
     "swap_pages=0: pageout changes nothing"),
    ("pageout:pud_leaf:split", PUD, [*THP_WRITE, MA(0, 64, "pageout")], 2,
     "the madvise walk has no pud_entry: walk_pud_range splits the PUD leaf"),
    ("pageout:pmd_leaf:swapped_whole", PMD, [*THP_WRITE, MA(0, 8, "pageout")], 2,
     "the written PMD THP is wholly in range and exclusive: swapped out as one unit"),
    ("pageout:pmd_leaf:zero_filled", PMD, [M(0, 64), W(0, 0), MA(0, 8, "pageout")], 2,
     "the PMD THP is zero-filled: its slots go to the zeromap, no thp_swpout"),
    ("pageout:thp:swap_full_split", {**PMD, "swap_pages": 4},
     [*THP_WRITE, MA(0, 8, "pageout")], 2,
     "8 pages do not fit in 4 slots: split (thp_swpout_fallback), pages reclaimed one by one"),
    ("pageout:pmd_leaf:partial_split", PMD, [*THP_WRITE, MA(0, 4, "pageout")], 2,
     "half the PMD THP in range: split_folio before reclaim"),
    ("pageout:large_pte:split", PMD, [*THP_WRITE, MP(0, 4, "r"), MA(4, 2, "pageout")], 3,
     "the mprotect split the PMD (all 8 PTEs remain); a batch of 2 of 8 pages splits it"),
    ("pageout:large_pte:whole", PMD,
     [*THP_WRITE, MP(0, 4, "r"), MP(0, 4, "rw"), MA(0, 8, "pageout")], 4,
     "the first mprotect split the PMD, the second merged the VMAs again: in one VMA the 8 "
     "PTEs of the THP are one batch, mapcount 8 = nr, so it is reclaimed whole"),
    ("pageout:small:swapped", PTE, [M(0, 8), W(0, 5), MA(0, 8, "pageout")], 2,
     "an exclusive order-0 page is swapped out"),
    ("pageout:shared_skipped", PTE, [M(0, 8), W(0, 5), F(0), MA(0, 8, "pageout")], 3,
     "the child maps the page too: mapcount 2, left alone"),
    ("pageout:pinned_skipped", PTE, [M(0, 8), PIN(0), MA(0, 8, "pageout")], 2,
     "the pinned page is not reclaimed (folio_maybe_dma_pinned)"),
    # ---- migrate -----------------------------------------------------------------------
    ("migrate:pud_leaf:split", PUD, [*THP_WRITE, MG(0, 64)], 2,
     "no PUD migration entry: the walk splits the PUD leaf"),
    ("migrate:pmd_leaf:moved", PMD, [*THP_WRITE, MG(0, 8)], 2,
     "the PMD THP on node 0 moves to node 1 through a PMD migration entry"),
    ("migrate:written_thp_moved", PMD, [*THP_WRITE, MG(0, 8)], 2,
     "page 0 of it holds 5: its contents move"),
    ("migrate:pud_folio:moved", PUD, [*THP_WRITE, MG(0, 64)], 2,
     "after the walk's split the PUD-order folio is PTE-mapped and moves whole"),
    ("migrate:large_pte:moved", PMD, [*THP_WRITE, MP(0, 4, "r"), MG(0, 8)], 3,
     "the PTE-mapped PMD-order folio (split by mprotect) moves whole"),
    ("migrate:small:moved", PTE, [M(0, 8), W(0, 5), MG(0, 8)], 2, "an order-0 folio moves"),
    ("migrate:alloc_fail_split", PMD, [*THP_WRITE, FA("pmd"), MG(0, 8)], 3,
     "no order-PMD folio on node 1: split, pages moved one by one (thp_migration_split)"),
    ("migrate:pinned_not_moved", PMD, [M(0, 64), PIN(0), MG(0, 8)], 2,
     "the pinned THP stays (thp_migration_fail)"),
    ("migrate:shared_skipped", PMD, [*THP_WRITE, F(0), MG(0, 8)], 3,
     "the THP is mapped by the child too: MPOL_MF_MOVE does not queue it"),
    ("migrate:partially_mapped", PMD, [*THP_WRITE, U(4, 4), MG(0, 4)], 3,
     "the munmap left the THP partially mapped and queued; it is queued for migration"),
    # ---- split_folio -------------------------------------------------------------------
    ("split_folio:pud_order", PUD, [*THP_WRITE, SF(0)], 2, "the PUD-order folio splits"),
    ("split_folio:pmd_order", PMD, [*THP_WRITE, SF(0)], 2, "the PMD-order folio splits"),
    ("split_folio:pmd_leaf", PMD, [*THP_WRITE, SF(0)], 2,
     "it is PMD-mapped: frozen into PTE migration entries"),
    ("split_folio:pinned", PMD, [M(0, 64), PIN(0), SF(0)], 2,
     "the pin is an extra reference: EBUSY"),
    ("split_folio:shared", PMD, [*THP_WRITE, F(0), SF(0)], 3,
     "the THP is mapped by mm 0 and the child"),
    ("split_folio:zero_subpages", PMD, [*THP_WRITE, SF(0)], 2,
     "pages 1..7 were never written: remapped to the zero page"),
    ("split_folio:partially_mapped", PMD, [*THP_WRITE, U(4, 4), SF(0)], 3,
     "the THP is partially mapped after the munmap"),
    # ---- shrink_deferred ---------------------------------------------------------------
    ("shrink_deferred:split", PMD, [*THP_WRITE, U(4, 4), SD()], 3,
     "the partially mapped THP on the queue is split"),
    ("shrink_deferred:unqueue", PMD, [*THP_WRITE, SD()], 2,
     "shrink_underused queued the new THP unflagged: it leaves the queue"),
    ("shrink_deferred:split_failed", PMD, [M(0, 64), PIN(0), U(4, 4), SD()], 3,
     "the partially mapped THP is pinned: the split fails, it stays queued"),
    ("shrink_deferred:pud_order", PUD, [*THP_WRITE, U(0, 8), SD()], 3,
     "the partially mapped PUD-order folio is split"),
    # ---- deposits ----------------------------------------------------------------------
    ("deposit:pud_stack:depth>=2", PUD, [M(0, 128), W(0), W(64)], 2,
     "two PUD leaves in mm 0: two PMD tables on its PUD stack"),
    ("deposit:pud_stack:depth>=3", PUD, [M(0, 192), W(0), W(64), W(128)], 3,
     "three PUD leaves"),
    ("deposit:pmd_chain:depth>=2", PMD, [M(0, 64), W(0), W(8)], 2,
     "two PMD THPs under PUD entry 0: two PTE tables deposited in its PMD table"),
    ("deposit:pmd_chain:depth>=4", PMD, [M(0, 64), W(0), W(8), R(16), W(24)], 4,
     "three PMD THPs and a huge zero PMD: four deposits"),
]

# The fast side's hot paths (run under both): (feature, fast_paths, config, ops, op, why).
# At P=8 a PUD range holds 8 PMD entries and a PMD range 8 PTEs, few enough for the Python
# loops of every path by size (SMALL = 48 entries); fast_paths=python runs them always,
# numpy the arrays always.
FORK_PTE = [M(0, 64), W(0), F(0)]  # no THP: one PTE table under PMD entry 0, forked
UNMAP_PTE = [M(0, 64), W(0), U(0, 8)]  # no THP: PMD range 0 unmapped, its PTE table freed
FastCase = tuple[str, str, dict[str, Any], list[dict[str, Any]], int, str]
FAST_CASES: list[FastCase] = [
    *((f"fast:copy_pmd_range:{v}", v, PTE, FORK_PTE, 2,
       "the fork gathers the PTE tables of PMD entries 0..7 (none or tables: all at once)")
      for v in ("python", "numpy")),
    *((f"fast:copy_pte_range:{v}", v, PTE, FORK_PTE, 2,
       "the fork copies the 8 PTEs of the PTE table (one present, the others none)")
      for v in ("python", "numpy")),
    *((f"fast:zap_pmd_range:{v}", v, PTE, UNMAP_PTE, 2,
       "the munmap zaps PMD entry 0's range: PTE tables only, gathered at once")
      for v in ("python", "numpy")),
    *((f"fast:zap_pte_range:{v}", v, PTE, UNMAP_PTE, 2,
       "...and zaps their PTEs (one present)") for v in ("python", "numpy")),
    *((f"fast:free_pgtables:{v}", v, PTE, UNMAP_PTE, 2,
       "free_pgtables over [0, 8): no VMA covers PMD range 0 any more, its PTE table goes")
      for v in ("python", "numpy")),
    *((f"fast:pt_free_many:{v}", v, PTE, UNMAP_PTE, 2,
       "...freed with pt_free_many() (one table)") for v in ("python", "numpy")),
]

# Features an op must not hit, for cases where a near neighbour would.
NOT: dict[tuple[str, int], set[str]] = {
    ("fault:pud:alloc", 1): {"fault:pmd:alloc", "fault:pud:alloc_on_read"},
    ("fault:pmd:alloc", 1): {"fault:pud:alloc", "deposit:pmd_chain:depth>=2"},
    ("fork:copy_pte_range", 2): {"fork:copy_pte_range:mid_pud_vma"},
    ("wp_fault:large:mapcount=1", 5): {"wp_fault:large:reused"},
    ("wp_fault:large:shared", 4): {"wp_fault:large:reused", "wp_fault:large:mapcount>=4"},
    ("wp_fault:pud:reuse", 4): {"wp_fault:pud:split"},
    ("pageout:pmd_leaf:swapped_whole", 2): {"pageout:pmd_leaf:zero_filled",
                                            "pageout:thp:swap_full_split"},
    ("migrate:pmd_leaf:moved", 2): {"migrate:large_pte:moved", "migrate:alloc_fail_split"},
    ("pageout:large_pte:whole", 4): {"pageout:large_pte:split"},
}


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_each_feature_is_reached_by_its_program(case: Case) -> None:
    name, cfg, ops, index, why = case
    hits = features_per_op(program(cfg, ops))
    assert name in hits[index], f"{name} not hit at op {index} ({why}); hits: {hits}"
    for bad in NOT.get((name, index), set()):
        assert bad not in hits[index], f"{bad} hit at op {index}: {hits[index]}"


@pytest.mark.parametrize("case", FAST_CASES, ids=[c[0] for c in FAST_CASES])
def test_each_fast_path_is_reached_by_its_program(case: FastCase) -> None:
    name, paths, cfg, ops, index, why = case
    other = name.rsplit(":", 1)[0] + (":numpy" if paths == "python" else ":python")
    hits = features_per_op(program(cfg, ops), "both", paths)
    assert name in hits[index], f"{name} not hit at op {index} ({why}); hits: {hits}"
    assert other not in hits[index], f"{other} hit with fast_paths={paths}"
    # the reference alone has no fast paths
    assert not any(f.startswith("fast:") for op in features_per_op(program(cfg, ops))
                   for f in op)


def test_every_feature_has_a_case_and_names_are_unique() -> None:
    assert len(NAMES) == len(set(NAMES)) == N_FEATURES >= 60
    assert {c[0] for c in CASES} | {c[0] for c in FAST_CASES} == set(NAMES)
    assert all(re.fullmatch(r"[a-z_]+(:[a-z_0-9<>=]+)+", n) for n in NAMES), NAMES


def test_the_split_pud_on_a_toggled_leaf_is_not_a_shared_one() -> None:
    # pud_wp_reuse=false splits even an exclusive PUD leaf: a split, but nothing shared it
    hits = features_per_op(program({"pud_wp_reuse": False},
                                   [*THP_WRITE, MP(0, 64, "r"), MP(0, 64, "rw"), W(1)]))
    assert "wp_fault:pud:split" in hits[4]
    assert "wp_fault:pud:split_shared" not in hits[4]


def test_counts_are_deterministic_and_the_same_under_both() -> None:
    ops = [M(0, 192), W(0), W(64), F(0), W(1, mm=1), U(60, 8), MA(64, 64, "pageout"),
           MG(128, 64), SD(), X(1), PIN(3), F(0), W(5)]
    p = program(PUD, ops)
    runs = [features_per_op(p), features_per_op(p), features_per_op(p, "both")]
    # the fast side's own paths are hit under both only
    runs[2] = [{f for f in op if not f.startswith("fast:")} for op in runs[2]]
    assert runs[0] == runs[1] == runs[2]
    both = [features_per_op(p, "both", "numpy") for _ in range(2)]
    assert both[0] == both[1]


def test_a_corrupted_state_is_unclassified_not_a_crash() -> None:
    # the list_head design corrupts the deposits (a finding); coverage must not raise
    p = program({"deposit": "list_head"}, [M(0, 192), W(0), W(64), W(128), U(0, 192)])
    cov = Coverage()
    stepper = Stepper(p.config, "ref", coverage=cov)
    for op in p.ops:
        if stepper.finding is not None:
            break
        stepper.step(op)
    assert stepper.finding is not None
    assert cov.ops >= 1


def test_tally_adds_programs_and_prints_every_feature() -> None:
    t = Tally()
    hits = [0] * N_FEATURES
    hits[INDEX["fork:enomem"]] = 3
    t.add_program(hits, 10)
    t.add_program(hits, 5)
    other = Tally.from_json(t.to_json())
    t.merge(other)
    assert t.programs == 4
    assert t.ops == 30
    assert t.hits[INDEX["fork:enomem"]] == 12
    assert t.programs_hit[INDEX["fork:enomem"]] == 4
    text = t.table("demo")
    assert text.startswith(f"demo: 4 programs, 30 ops; 1/{N_FEATURES} features hit (")
    assert text.count("\n") == 1 + 1 + N_FEATURES + 1 + (N_FEATURES - 1)
    assert "never hit (" in text


# --------------------------------------------------------------------------------------
# COVERAGE.md is the catalogue, word for word
# --------------------------------------------------------------------------------------


def test_the_documented_table_is_the_catalogue() -> None:
    text = (ROOT / "COVERAGE.md").read_text()
    rows = re.findall(r"^\| `([^`]+)` \| (.+) \|$", text, re.M)
    assert [name for name, _ in rows] == list(NAMES)
    for (_, meaning), feature in zip(rows, CATALOGUE, strict=True):
        assert meaning == feature.meaning.replace("|", "\\|"), feature.name


# --------------------------------------------------------------------------------------
# pudthp coverage
# --------------------------------------------------------------------------------------


def test_pudthp_coverage_prints_the_table_for_files_and_directories(tmp_path: Path) -> None:
    from harness.program import dump_program

    a = tmp_path / "a.json"
    a.write_text(dump_program(program(PMD, [*THP_WRITE, F(0), X(1), U(2, 6), W(0)])))
    d = tmp_path / "dir"
    d.mkdir()
    (d / "b.json").write_text(dump_program(program(PUD, [*THP_WRITE, U(0, 64)])))
    out = subprocess.run([sys.executable, "-m", "pudthp_cli", "coverage", str(a), str(d)],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 0, out.stderr
    head = out.stdout.splitlines()[0]
    assert "2 programs, 9 ops;" in head, head
    row = next(line for line in out.stdout.splitlines()
               if line.split()[:1] == ["wp_fault:large:mapcount=2"])
    assert row.split()[1:] == ["1", "1"]
    row = next(line for line in out.stdout.splitlines()
               if line.split()[:1] == ["zap:pud_leaf:whole"])
    assert row.split()[1:] == ["1", "1"]
    assert "never hit (" in out.stdout


def test_pudthp_coverage_bad_input_is_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    for args in ([str(bad)], [str(tmp_path / "missing.json")], [str(tmp_path)]):
        if args == [str(tmp_path)]:
            bad.unlink()
        out = subprocess.run([sys.executable, "-m", "pudthp_cli", "coverage", *args],
                             capture_output=True, text=True, cwd=ROOT, check=False)
        assert out.returncode == 2, out
        assert out.stderr.startswith("pudthp: error: ")
        assert out.stderr.count("\n") == 1
        assert "Traceback" not in out.stderr


def test_the_config_of_a_case_is_valid() -> None:
    for name, cfg, _, _, _ in CASES:
        Config.from_json(cfg)
        assert name in INDEX
