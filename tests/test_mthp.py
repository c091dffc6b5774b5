"""Multi-size THP (docs/model.md 4.7, 6.1, 7.6, 8.2, 9.11, 9.12): hand-derived scenarios.

Every expected value is derived from the kernel's rules in the comment above it, never
read off a run.  Each program runs on both implementations in lockstep (``both``), with the
reference's invariants checked after every op.  Conventions of the derivations: P = 16
(PMD order 4, PUD order 8, mTHP orders 2 and 3) unless said; mm 0's slot value is 1 (mm id
+ 1); page tables and folios get ids from 1 in allocation order; a split keeps the folio's
id for its first new folio and gives the others the next ids in page order; `_mapcount` is
raw (-1 unmapped); PTEs are ``["pte", folio, page, write, dirty, young]``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from scenario_tools import folio, folio_ids, mm, pte_entry, run_ops

from harness.program import ProgramError, parse_program_text
from pudthp_ref.spec import MTHP_KEYS, Config, ConfigError, Op, Program

PT = 4096


def program(config: dict[str, Any], ops: list[dict[str, Any]]) -> tuple[Config, list[Op]]:
    p = parse_program_text(json.dumps({"format": "pudthp-program/1", "config": config,
                                  "ops": ops}), "test")
    return p.config, list(p.ops)


def mthp(snap: dict[str, Any], row: str, **expected: int) -> None:
    """Row ``row`` of stats.mthp: every counter not named is 0."""
    got = snap["stats"]["mthp"][row]
    assert {k: got[k] for k in MTHP_KEYS} == dict.fromkeys(MTHP_KEYS, 0) | expected


def W(mm_: int, addr: int, value: int) -> dict[str, Any]:
    return {"op": "write", "mm": mm_, "addr": addr, "value": value}


def R(mm_: int, addr: int) -> dict[str, Any]:
    return {"op": "read", "mm": mm_, "addr": addr}


def MMAP(start: int, npages: int, prot: str = "rw") -> dict[str, Any]:
    return {"op": "mmap", "mm": 0, "start": start, "npages": npages, "prot": prot}


NO_HUGE = {"geometry": 16, "pud_enabled": "never", "pmd_enabled": "never"}


def test_fault_takes_the_highest_all_none_order_and_counts_no_fallback() -> None:
    # alloc_anon_folio(): candidates {3, 2} (both always, both inside [0,32)), highest
    # first; an order whose aligned range holds a PTE that is not none is dropped without
    # counting; read faults map the zero page whatever is enabled.
    cfg, ops = program({**NO_HUGE, "mthp": {"2": "always", "3": "always"}}, [
        MMAP(0, 32), W(0, 5, 7), R(0, 12), W(0, 9, 1), W(0, 13, 2), W(0, 12, 3), R(0, 3)])
    m, results = run_ops("both", cfg, ops)
    assert results == [0, 0, 0, 0, 0, 0, 0]
    s = m.snapshot()
    # op1: [0,8) all none -> folio 1 of order 3, PTEs 0..7 writable, dirty, young; each
    # page _mapcount 0 and AnonExclusive, large = nr-1 = 7 in slot 0, _nr_pages_mapped 8,
    # refcount 8 (folio_ref_add(nr - 1)).
    f1 = folio(s, 1)
    assert (f1["order"], f1["refcount"], f1["large_mapcount"], f1["entire_mapcount"],
            f1["nr_pages_mapped"], f1["mm_id"], f1["mm_id_mapcount"], f1["shared"]) == (
        3, 8, 7, -1, 8, [1, 0], [7, -1], False)
    assert f1["mapcount"] == [[0, 8]]
    assert f1["anon_exclusive"] == [[True, 8]]
    assert f1["data"] == [[0, 5], [7, 1], [0, 2]]
    assert [pte_entry(s, 0, v) for v in (0, 7)] == [["pte", 1, 0, 1, 1, 1], ["pte", 1, 7, 1, 1, 1]]
    # op2: PTE 12 the zero page.  op3: [8,16) holds PTE 12 -> order 3 dropped; [8,12) all
    # none -> folio 2 of order 2 (page 1 = 1).  op4: both ranges of 13 hold PTE 12 -> order
    # 0 (folio 3).  op5: the zero PTE -> wp_page_copy, order 0 (folio 4).
    assert folio(s, 2)["order"] == 2
    assert folio(s, 2)["data"] == [[0, 1], [1, 1], [0, 2]]
    assert (folio(s, 3)["order"], folio(s, 4)["order"]) == (0, 0)
    assert pte_entry(s, 0, 12) == ["pte", 4, 0, 1, 1, 1]
    assert pte_entry(s, 0, 3) == ["pte", 1, 3, 1, 1, 1]  # op6 reads the mapped page
    mthp(s, "3", anon_fault_alloc=1, nr_anon=1)
    mthp(s, "2", anon_fault_alloc=1, nr_anon=1)
    # RSS 8 + 4 + 1 + 1; tables: PUD 1, PMD 2, PTE 3 (PMD never: no deposit)
    assert (mm(s, 0)["rss_anon"], mm(s, 0)["pgtables_bytes"]) == (14, 3 * PT)
    assert s["stats"]["node"]["nr_anon_mapped"] == 14
    assert s["stats"]["vmstat"]["thp_fault_alloc"] == 0  # PMD only


def test_per_size_settings_vma_bounds_and_nohugepage() -> None:
    # thp_vma_allowable_orders(): order 2 madvise, order 3 inherit with global madvise:
    # both need VM_HUGEPAGE; thp_vma_suitable_orders(): the aligned range inside the VMA;
    # VM_NOHUGEPAGE allows nothing.
    cfg, ops = program({**NO_HUGE, "thp_enabled": "madvise",
                        "mthp": {"2": "madvise", "3": "inherit"}}, [
        MMAP(0, 16), W(0, 0, 1),
        MMAP(20, 8), {"op": "madvise", "mm": 0, "start": 20, "npages": 8, "advice": "hugepage"},
        W(0, 21, 2), W(0, 26, 3),
        MMAP(32, 16), {"op": "madvise", "mm": 0, "start": 32, "npages": 16,
                       "advice": "nohugepage"},
        W(0, 40, 4),
        {"op": "madvise", "mm": 0, "start": 32, "npages": 16, "advice": "hugepage"},
        W(0, 32, 5), W(0, 44, 6)])
    m, results = run_ops("both", cfg, ops)
    assert results == [0] * 12
    s = m.snapshot()
    # folio 1: order 0 (no VM_HUGEPAGE); 2: order 2 over [20,24) (order 3's [16,24) leaves
    # the VMA); 3: order 2 over [24,28); 4: order 0 (VM_NOHUGEPAGE); 5: order 3 over
    # [32,40); 6: order 2 over [44,48) ([40,48) holds PTE 40).
    assert [folio(s, i)["order"] for i in range(1, 7)] == [0, 2, 2, 0, 3, 2]
    assert pte_entry(s, 0, 21) == ["pte", 2, 1, 1, 1, 1]
    assert pte_entry(s, 0, 26) == ["pte", 3, 2, 1, 1, 1]
    assert pte_entry(s, 0, 44) == ["pte", 6, 0, 1, 1, 1]
    mthp(s, "2", anon_fault_alloc=3, nr_anon=3)
    mthp(s, "3", anon_fault_alloc=1, nr_anon=1)
    # RSS 1+4+4+1+8+4; PTE tables for [0,16), [16,32), [32,48) plus PUD and PMD tables
    assert (mm(s, 0)["rss_anon"], mm(s, 0)["pgtables_bytes"]) == (22, 5 * PT)


def test_partial_munmap_flags_the_mthp_and_the_shrinker_splits_it_to_order_0() -> None:
    cfg, ops = program({**NO_HUGE, "mthp": {"3": "always"}}, [
        MMAP(0, 16), W(0, 0, 100), W(0, 1, 101), W(0, 3, 103), W(0, 4, 104), W(0, 5, 105),
        W(0, 6, 106), W(0, 7, 107), {"op": "munmap", "mm": 0, "start": 5, "npages": 1}])
    m, results = run_ops("both", cfg, ops)
    s = m.snapshot()
    # zap of PTE 5 is a batch of one page: _mapcount[5] -1 while 7 pages stay mapped ->
    # deferred_split_folio(folio, true): flagged, split_deferred, nr_anon_partially_mapped
    # (no thp_deferred_split_page: order 3 is below the PMD order), queued.
    f1 = folio(s, 1)
    assert (f1["refcount"], f1["large_mapcount"], f1["nr_pages_mapped"]) == (7, 6, 7)
    assert f1["flags"] == ["deferred", "partially_mapped"]
    assert s["deferred"] == [1]
    mthp(s, "3", anon_fault_alloc=1, nr_anon=1, split_deferred=1, nr_anon_partially_mapped=1)
    assert s["stats"]["vmstat"]["thp_deferred_split_page"] == 0
    # shrink: flagged -> split to order 0; page 0 keeps id 1, pages 1..7 ids 2..8; page 2
    # (never written) maps the zero page, page 5 (unmapped) is freed with it.
    results += [m.apply(op) for op in program(cfg.to_json(), [
        {"op": "shrink_deferred"}, R(0, 2), R(0, 7)])[1]]
    m.check_invariants()
    assert results == [0] * 9 + [1, 0, 107]
    s = m.snapshot()
    assert folio_ids(s) == [1, 2, 4, 5, 7, 8]
    assert s["deferred"] == []
    assert pte_entry(s, 0, 2) == ["zero"]
    assert pte_entry(s, 0, 7) == ["pte", 8, 0, 1, 1, 1]
    mthp(s, "3", anon_fault_alloc=1, split=1, split_deferred=1)
    assert (mm(s, 0)["rss_anon"], s["stats"]["node"]["nr_anon_mapped"]) == (6, 6)


def test_cow_of_an_mthp_after_fork_and_reuse_after_the_child_exits() -> None:
    cfg, ops = program({**NO_HUGE, "mthp": {"2": "always"}}, [
        MMAP(0, 4), W(0, 0, 1), W(0, 1, 2), W(0, 2, 3), W(0, 3, 4), {"op": "fork", "mm": 0},
        W(1, 3, 33), W(0, 1, 11), {"op": "exit", "mm": 1}, W(0, 2, 22), R(0, 3), R(0, 1)])
    m, results = run_ops("both", cfg, ops)
    assert results == [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 4, 11]
    s = m.snapshot()
    # fork: every page _mapcount 1, AE cleared, the child in slot 1 (SHARED).  The child's
    # write to page 3 and the parent's to page 1 copy (SHARED set: wp_can_reuse_anon_folio
    # fails) into order-0 folios 2 and 3.  exit: the child's three PTEs go in one batch,
    # slot 1 empties, large (2) equals slot 0's count -> SHARED clear; page 1 is now
    # unmapped everywhere -> flagged.  The parent's write to page 2: large+1 = 3 > 1,
    # SHARED clear, refcount 3 = large+1 -> reused in place (AE set, PTE writable).
    f1 = folio(s, 1)
    assert (f1["refcount"], f1["large_mapcount"], f1["nr_pages_mapped"], f1["mm_id"],
            f1["mm_id_mapcount"], f1["shared"]) == (3, 2, 3, [1, 0], [2, -1], False)
    assert f1["mapcount"] == [[0, 1], [-1, 1], [0, 2]]
    assert f1["anon_exclusive"] == [[False, 2], [True, 1], [False, 1]]
    assert f1["data"] == [[1, 1], [2, 1], [22, 1], [4, 1]]
    assert pte_entry(s, 0, 2) == ["pte", 1, 2, 1, 1, 1]
    assert folio_ids(s) == [1, 3]  # folio 2 (the child's copy) freed at the exit
    mthp(s, "2", anon_fault_alloc=1, nr_anon=1, split_deferred=1, nr_anon_partially_mapped=1)


def test_mprotect_inside_an_mthp_splits_nothing() -> None:
    cfg, ops = program({**NO_HUGE, "mthp": {"2": "always"}}, [
        MMAP(0, 8), W(0, 0, 1),
        {"op": "mprotect", "mm": 0, "start": 1, "npages": 1, "prot": "r"},
        W(0, 1, 9),
        {"op": "mprotect", "mm": 0, "start": 1, "npages": 1, "prot": "rw"},
        W(0, 1, 9)])
    m, results = run_ops("both", cfg, ops)
    # vma_adjust_trans_huge() splits PMD/PUD leaves only: the order-2 folio over [0,4)
    # stays whole across three VMAs; PTE 1 loses its write bit, the write faults SIGSEGV;
    # back to rw, can_change_pte_writable() makes PTE 1 writable again (page 1 is AE), so
    # the second write needs no fault.  Nothing is counted but the fault.
    assert results == [0, 0, 0, "SIGSEGV", 0, 0]
    s = m.snapshot()
    assert folio(s, 1)["order"] == 2
    assert pte_entry(s, 0, 1) == ["pte", 1, 1, 1, 1, 1]
    assert folio_ids(s) == [1]
    assert s["deferred"] == []
    mthp(s, "2", anon_fault_alloc=1, nr_anon=1)


def test_split_folio_to_an_order_rejects_what_debugfs_skips() -> None:
    cfg, ops = program({"geometry": 16, "pud_enabled": "never"}, [
        MMAP(0, 16), W(0, 0, 1), W(0, 5, 5), W(0, 9, 9),
        {"op": "split_folio", "mm": 0, "addr": 0, "order": 4},
        {"op": "split_folio", "mm": 0, "addr": 0, "order": 1},
        {"op": "split_folio", "mm": 0, "addr": 0, "order": 2},
        R(0, 9), {"op": "munmap", "mm": 0, "start": 4, "npages": 4}, {"op": "shrink_deferred"}])
    m, results = run_ops("both", cfg, ops)
    # order 4 is not below the folio's (PMD order 4): debugfs skips it, EINVAL, nothing
    # counted; order 1: refused by the split (no anonymous order-1 folio), nothing
    # counted; order 2: the PMD leaf split frozen (thp_split_pmd), the folio unqueued,
    # four order-2 folios 1..4, every page remapped (no zero page: the new folios are
    # large), not queued.  munmap of [4,8): folio 2 goes in one batch, unflagged, freed.
    assert results == [0, 0, 0, 0, "EINVAL", "EINVAL", 0, 9, 0, 0]
    s = m.snapshot()
    assert folio_ids(s) == [1, 3, 4]
    assert s["deferred"] == []
    # pages 12..15: zero-filled and still mapped (compound); the dirty PMD leaf made the
    # folio dirty at the unmap, which every new folio inherits
    f4 = folio(s, 4)
    assert (f4["order"], f4["refcount"], f4["large_mapcount"], f4["mm_id_mapcount"],
            f4["nr_pages_mapped"], f4["flags"]) == (2, 4, 3, [3, -1], 4, ["dirty"])
    assert f4["anon_exclusive"] == [[True, 4]]
    assert f4["data"] == [[0, 4]]
    assert pte_entry(s, 0, 9) == ["pte", 3, 1, 1, 1, 1]
    assert pte_entry(s, 0, 13) == ["pte", 4, 1, 1, 1, 1]
    mthp(s, "pmd", anon_fault_alloc=1, split=1)
    mthp(s, "2", nr_anon=3)
    vm = s["stats"]["vmstat"]
    assert (vm["thp_fault_alloc"], vm["thp_split_pmd"], vm["thp_split_page"],
            vm["thp_split_page_failed"], vm["thp_deferred_split_page"]) == (1, 1, 1, 0, 0)
    assert (mm(s, 0)["rss_anon"], s["stats"]["node"]["nr_anon_thps"]) == (12, 0)


def test_pud_folio_split_to_pmd_order_keeps_every_page_mapped() -> None:
    cfg, ops = program({"geometry": 16}, [
        MMAP(0, 256), W(0, 0, 1), W(0, 17, 17), W(0, 255, 255),
        {"op": "split_folio", "mm": 0, "addr": 17, "order": 4}, R(0, 17)])
    m, results = run_ops("both", cfg, ops)
    assert results == [0, 0, 0, 0, 0, 17]
    s = m.snapshot()
    # unmap_folio(): the PUD leaf split to PTEs (thp_split_pud; its deposit, one PMD table
    # and 16 PTE tables, live); the first PTE turned into a migration entry leaves page 0
    # unmapped -> flagged (split_deferred of the PUD row and thp_deferred_split_page: the
    # PUD order is PMD-mappable), unflagged by the split.  16 folios of order 4: ids 1
    # (pages 0..15) and 2..16, each mapped by 16 PTEs, refcount 16, not queued; no
    # thp_split_page (the old order is not the PMD order); dirty from the dirty PTEs.
    assert folio_ids(s) == list(range(1, 17))
    assert s["deferred"] == []
    f2 = folio(s, 2)
    assert (f2["order"], f2["refcount"], f2["large_mapcount"], f2["entire_mapcount"],
            f2["nr_pages_mapped"], f2["flags"]) == (4, 16, 15, -1, 16, ["dirty"])
    assert pte_entry(s, 0, 17) == ["pte", 2, 1, 1, 1, 1]
    assert pte_entry(s, 0, 255) == ["pte", 16, 15, 1, 1, 1]
    mthp(s, "pud", anon_fault_alloc=1, split=1, split_deferred=1)
    mthp(s, "pmd", nr_anon=16)
    vm = s["stats"]["vmstat"]
    assert (vm["thp_split_pud"], vm["thp_split_page"], vm["thp_deferred_split_page"],
            vm["thp_split_pmd"]) == (1, 0, 1, 0)
    node = s["stats"]["node"]
    assert (node["nr_anon_mapped"], node["nr_anon_thps"], node["nr_anon_pud_thps"]) == (
        256, 0, 0)
    # tables: PUD 1 + the deposit's PMD table and 16 PTE tables, all live now
    assert (mm(s, 0)["rss_anon"], mm(s, 0)["pgtables_bytes"]) == (256, 18 * PT)


@pytest.mark.parametrize(("none", "split"), [(15, 0), (2, 1), (13, 0)])
def test_the_shrinker_splits_an_underused_pmd_thp_by_max_ptes_none(none: int, split: int
                                                                   ) -> None:
    # A PMD THP with 3 written pages (0, 1, 2) and 13 zero pages, queued unflagged at
    # its fault.  thp_underused(): false at max_ptes_none = 15 (PMD_NR - 1); at 2 the
    # pages 0..2 are filled (3 < 16 - 2 = 14) and the fourth zero page makes zero = 3 > 2:
    # underused, split (thp_underused_split_page); at 13 the 14th zero page would be
    # needed and there are 13: not underused.  Either way the folio leaves the queue.
    cfg, ops = program({"geometry": 16, "pud_enabled": "never", "max_ptes_none": none}, [
        MMAP(0, 16), W(0, 0, 1), W(0, 1, 2), W(0, 2, 3), {"op": "shrink_deferred"}])
    m, results = run_ops("both", cfg, ops)
    assert results == [0, 0, 0, 0, split]
    s = m.snapshot()
    assert s["deferred"] == []
    vm = s["stats"]["vmstat"]
    assert (vm["thp_underused_split_page"], vm["thp_split_page"]) == (split, split)
    # split to order 0: the 13 zero-filled pages map the zero page, RSS 3
    assert mm(s, 0)["rss_anon"] == (3 if split else 16)


def test_x86_64_cow_partial_exit_and_shrink_on_an_order_4_folio() -> None:
    # As live experiment E3a: child copy, parent copy, the child's exit leaves page 5
    # unmapped everywhere (split_deferred), the parent reuses page 7, the shrinker splits
    # to order 0 with no zero page (all 16 written).
    ops_ = [MMAP(0, 16)] + [W(0, i, i + 1) for i in range(16)] + [
        {"op": "fork", "mm": 0}, W(1, 3, 333), W(0, 5, 555), {"op": "exit", "mm": 1},
        W(0, 7, 777), {"op": "shrink_deferred"}, R(0, 7)]
    cfg, ops = program({"geometry": "x86_64", "pud_enabled": "never",
                        "pmd_enabled": "never", "mthp": {"4": "always"}}, ops_)
    m, results = run_ops("both", cfg, ops)
    assert results == [0] * 17 + [1, 0, 0, 0, 0, 1, 777]
    s = m.snapshot()
    mthp(s, "4", anon_fault_alloc=1, split=1, split_deferred=1)
    assert (mm(s, 0)["rss_anon"], s["stats"]["node"]["nr_anon_mapped"]) == (16, 16)


def test_config_mthp_and_max_ptes_are_checked_against_the_geometry() -> None:
    # mTHP orders exist from 2 to PMD_ORDER - 1: none at tiny (P=4), 2 at small, 2..8
    # at x86_64; max_ptes_* lie in 0 .. PMD_NR - 1
    with pytest.raises(ConfigError, match=r"order '2' is not an mTHP order at geometry P=4"):
        Config.from_json({"geometry": "tiny", "mthp": {"2": "always"}})
    with pytest.raises(ConfigError, match=r"\(2\.\.8\)"):
        Config.from_json({"geometry": "x86_64", "mthp": {"9": "always"}})
    cfg = Config.from_json({"geometry": "x86_64", "mthp": {"8": "madvise", "4": "never"}})
    assert cfg.mthp == ((8, "madvise"),)
    assert cfg.mthp_setting(4) == "never"
    assert [cfg.max_ptes(k) for k in ("max_ptes_none", "max_ptes_swap", "max_ptes_shared")
            ] == [511, 64, 256]
    with pytest.raises(ConfigError, match=r"config\.max_ptes_swap"):
        Config.from_json({"geometry": 16, "max_ptes_swap": 16})
    with pytest.raises(ProgramError, match="field 'order'"):
        program(NO_HUGE, [{"op": "split_folio", "mm": 0, "addr": 0, "order": "pmd"}])


@pytest.mark.parametrize(("config", "op", "needle"), [
    ({"mthp": {"4": "always"}}, None, "config.mthp"),
    ({"max_ptes_none": 0}, None, "config.max_ptes_none"),
    ({}, {"op": "split_folio", "mm": 0, "addr": 0, "order": 4}, "split to order 4"),
    ({}, {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "collapse"},
     "MADV_COLLAPSE"),
])
def test_the_live_comparison_refuses_what_it_does_not_set_up(
        config: dict[str, Any], op: dict[str, Any] | None, needle: str) -> None:
    # conform and export-c do not write hugepages-<size>kB/enabled, khugepaged's max_ptes_*
    # or a debugfs split order, nor compare MADV_COLLAPSE: such a program is refused with
    # the reason instead of compared wrongly
    from harness.conform.compare import CannotRun, check_ops
    from harness.conform.export_c import ExportError, check_expressible

    cfg, ops = program({"geometry": "x86_64", "pud_enabled": "never", **config},
                       [MMAP(0, 512), *([op] if op else [])])
    p = Program(cfg, tuple(ops))
    with pytest.raises(CannotRun, match=needle):
        check_ops(p)
    with pytest.raises(ExportError, match=needle):
        check_expressible(p, False)
    # the defaults spelled out are no gap
    check_ops(Program(Config.from_json({"geometry": "x86_64", "max_ptes_none": 511}), ()))
