"""MADV_COLLAPSE (docs/model.md 9.17): hand-derived scenarios, both sides in lockstep.

Expected values come from the kernel's rules (mm/khugepaged.c madvise_collapse() and
collapse_huge_page(), derivation in the comments), never from a run.  P = 16 (PMD order 4,
a block is 16 pages); ids as in tests/test_mthp.py.
"""

from __future__ import annotations

from typing import Any

from scenario_tools import folio, folio_ids, mm, pmd_entry, pte_entry, run_ops
from test_mthp import MMAP, R, W, mthp, program

PT = 4096
NO_HUGE = {"geometry": 16, "pud_enabled": "never", "pmd_enabled": "never"}


def COLLAPSE(start: int, npages: int, mm_: int = 0) -> dict[str, Any]:
    return {"op": "madvise", "mm": mm_, "start": start, "npages": npages,
            "advice": "collapse"}


def test_collapse_of_one_written_page_then_the_underused_split() -> None:
    cfg, ops = program({**NO_HUGE, "thp_enabled": "never", "max_ptes_none": 0,
                        "max_ptes_swap": 0, "max_ptes_shared": 0}, [
        MMAP(0, 32), W(0, 3, 7), COLLAPSE(0, 16), R(0, 10), R(0, 3)])
    m, results = run_ops("both", cfg, ops)
    # madvise_collapse ignores thp_enabled and the max_ptes_* (khugepaged's only): the block
    # [0,16) has a PTE table (3), 15 none PTEs and page 3 (folio 1, refcount 1 = mapcount)
    # -> collapse: folio 2 of order 4 allocated (thp_collapse_alloc), page 3's contents
    # copied, 15 none PTEs count MM_ANONPAGES + 15, folio 1 freed; PTE table 3 becomes the
    # leaf's deposit (w16 of PMD table 2), the leaf writable, dirty, young; queued unflagged.
    assert results == [0, 0, 0, 0, 7]
    s = m.snapshot()
    assert pmd_entry(s, 0, 0) == ["leaf", 2, 1, 1, 1]
    assert folio_ids(s) == [2]
    assert s["deferred"] == [2]
    f2 = folio(s, 2)
    assert (f2["order"], f2["refcount"], f2["entire_mapcount"], f2["large_mapcount"],
            f2["nr_pages_mapped"], f2["mm_id"], f2["mm_id_mapcount"]) == (
        4, 1, 0, 0, 0x800000, [1, 0], [0, -1])
    assert f2["data"] == [[0, 3], [7, 1], [0, 12]]
    assert [t["w16"] for t in s["pagetables"] if t["id"] == 2] == [3]
    assert (mm(s, 0)["rss_anon"], mm(s, 0)["pgtables_bytes"]) == (16, 3 * PT)
    vm = s["stats"]["vmstat"]
    assert (vm["thp_collapse_alloc"], vm["thp_collapse_alloc_failed"]) == (1, 0)
    assert s["stats"]["node"]["nr_anon_thps"] == 16
    mthp(s, "pmd", nr_anon=1)
    # the shrinker: unflagged, thp_underused with max_ptes_none 0: page 0 is zero -> zero 1
    # > 0 -> split to order 0 (thp_split_pmd, thp_split_page, thp_underused_split_page);
    # the 15 zero-filled pages map the zero page: RSS 1; page 3 is folio 5 (ids 2..17 in
    # page order).
    results += [m.apply(op) for op in program(cfg.to_json(), [
        {"op": "shrink_deferred"}, R(0, 3)])[1]]
    m.check_invariants()
    assert results[-2:] == [1, 7]
    s = m.snapshot()
    assert folio_ids(s) == [5]
    assert pte_entry(s, 0, 3) == ["pte", 5, 0, 1, 1, 1]
    assert mm(s, 0)["rss_anon"] == 1
    vm = s["stats"]["vmstat"]
    assert (vm["thp_split_pmd"], vm["thp_split_page"], vm["thp_underused_split_page"]) == (
        1, 1, 1)


def test_collapse_errors_in_the_order_madvise_collapse_meets_them() -> None:
    cfg, ops = program(NO_HUGE, [
        MMAP(0, 64), COLLAPSE(0, 64), W(0, 20, 1), COLLAPSE(0, 64), COLLAPSE(16, 16),
        W(0, 40, 1), {"op": "pin", "mm": 0, "addr": 40}, COLLAPSE(32, 16),
        {"op": "unpin", "pin": 1}, {"op": "fail_alloc", "order": "pmd", "count": 1},
        COLLAPSE(32, 16),
        {"op": "madvise", "mm": 0, "start": 32, "npages": 16, "advice": "nohugepage"},
        COLLAPSE(32, 16), COLLAPSE(16, 20), MMAP(100, 8), W(0, 100, 1), COLLAPSE(100, 8),
        COLLAPSE(0, 16)])
    m, results = run_ops("both", cfg, ops)
    # op1: never faulted, no anon_vma: EINVAL.  op2: order-0 folio 1 at 20.  op3: block
    # [0,16) has a none PMD entry: SCAN_PMD_NONE ends the walk, EINVAL, [16,32) untouched.
    # op4: [16,32) collapsed into folio 2 (thp_collapse_alloc), folio 1 freed.  op5-7:
    # folio 3 at 40 pinned: refcount 1 + GUP_PIN_COUNTING_BIAS != mapcount 1:
    # SCAN_PAGE_COUNT, EAGAIN, nothing allocated.  op10: the injected failure:
    # thp_collapse_alloc_failed, ENOMEM.  op12: VM_NOHUGEPAGE: EINVAL.  op13: VMA [0,32)
    # part [16,32) is a PMD leaf (done), then VMA [32,48) answers EINVAL, which the walk
    # returns.  op16: VMA [100,108) holds no aligned 16-page block: EINVAL.  op17: the PMD
    # entry of [0,16) is still none: EINVAL.
    assert results == [0, "EINVAL", 0, "EINVAL", 0, 0, 1, "EAGAIN", 0, 0, "ENOMEM", 0,
                       "EINVAL", "EINVAL", 0, 0, "EINVAL", "EINVAL"]
    s = m.snapshot()
    vm = s["stats"]["vmstat"]
    assert (vm["thp_collapse_alloc"], vm["thp_collapse_alloc_failed"]) == (1, 1)
    assert pmd_entry(s, 0, 16) == ["leaf", 2, 1, 1, 1]
    assert s["deferred"] == [2]
    mthp(s, "pmd", nr_anon=1)


def test_collapse_fails_on_the_allocation_and_swaps_in_first() -> None:
    cfg, ops = program({**NO_HUGE, "max_ptes_swap": 0}, [
        MMAP(0, 16), W(0, 0, 1), W(0, 1, 2), W(0, 2, 3), W(0, 3, 4),
        {"op": "madvise", "mm": 0, "start": 2, "npages": 2, "advice": "pageout"},
        {"op": "fail_alloc", "order": "pmd", "count": 1}, COLLAPSE(0, 16), COLLAPSE(0, 16),
        R(0, 3), R(0, 0)])
    m, results = run_ops("both", cfg, ops)
    # op5: folios 3 and 4 (pages 2, 3) to swap slots 1 and 2 (pswpout 2).  op7: the scan
    # accepts 12 none, 2 present, 2 swap PTEs (max_ptes_swap is khugepaged's); the
    # allocation fails first: thp_collapse_alloc_failed, ENOMEM, nothing swapped in.  op8:
    # folio 5 allocated (thp_collapse_alloc); slots 1, 2 swapped in, in address order, into
    # folios 6 and 7 (pswpin 2) and freed; contents [1,2,3,4,0...]; folios 1, 2, 6, 7 freed.
    assert results == [0, 0, 0, 0, 0, 0, 0, "ENOMEM", 0, 4, 1]
    s = m.snapshot()
    assert folio_ids(s) == [5]
    assert pmd_entry(s, 0, 0) == ["leaf", 5, 1, 1, 1]
    assert folio(s, 5)["data"] == [[1, 1], [2, 1], [3, 1], [4, 1], [0, 12]]
    assert s["swap"] == []
    vm = s["stats"]["vmstat"]
    assert (vm["thp_collapse_alloc"], vm["thp_collapse_alloc_failed"], vm["pswpin"],
            vm["pswpout"]) == (1, 1, 2, 2)
    assert (mm(s, 0)["rss_anon"], mm(s, 0)["rss_swap"]) == (16, 0)


def test_collapse_leaves_the_child_s_shared_pages_alone() -> None:
    cfg, ops = program({**NO_HUGE, "max_ptes_shared": 0}, [
        MMAP(0, 16), W(0, 0, 1), W(0, 1, 2), {"op": "fork", "mm": 0}, COLLAPSE(0, 16),
        W(1, 0, 9), R(0, 0), R(1, 1), R(1, 0)])
    m, results = run_ops("both", cfg, ops)
    # op3: folios 1, 2 mapped by both mms, read-only, AE clear.  op4: shared, read-only PTEs
    # are accepted (refcount 2 = mapcount 2): folio 3 (order 4) gets [1,2,0...]; mm 0's
    # PTEs go, folios 1 and 2 keep the child's mapping (refcount 1).  op5: the child's page
    # 0 is folio 1, now mapped once with refcount 1: reused in place, no copy.
    assert results == [0, 0, 0, 1, 0, 0, 1, 2, 9]
    s = m.snapshot()
    assert folio_ids(s) == [1, 2, 3]
    assert pmd_entry(s, 0, 0) == ["leaf", 3, 1, 1, 1]
    assert pte_entry(s, 1, 0) == ["pte", 1, 0, 1, 1, 1]
    assert (mm(s, 0)["rss_anon"], mm(s, 1)["rss_anon"]) == (16, 2)


def test_collapse_copies_mthps_without_flagging_them() -> None:
    cfg, ops = program({**NO_HUGE, "mthp": {"2": "always"}}, [
        MMAP(0, 16), W(0, 0, 1), W(0, 4, 2), W(0, 9, 3), COLLAPSE(0, 16)])
    m, results = run_ops("both", cfg, ops)
    # three order-2 folios over [0,4), [4,8), [8,12); the collapse drops each in one
    # folio_pte_batch() batch (6.18: live E5m): no split_deferred, each freed (nr_anon 3
    # -> 0); folio 4 of the PMD order maps the block.
    assert results == [0, 0, 0, 0, 0]
    s = m.snapshot()
    assert folio_ids(s) == [4]
    mthp(s, "2", anon_fault_alloc=3)
    mthp(s, "pmd", nr_anon=1)
    assert folio(s, 4)["data"] == [[1, 1], [0, 3], [2, 1], [0, 4], [3, 1], [0, 6]]
