"""Pins, folio split, reclaim and migration scenarios (reference), derived by hand.

Geometry tiny (P=4): PMD folio 4 pages, PUD folio 16 pages; mmap [16, 32) is exactly
PUD index 1, so the first write there faults a PUD THP (folio id 1).
"""

from __future__ import annotations

from scenario_tools import folio, run_ops

from pudthp_ref.spec import (
    EBUSY,
    Config,
    Fork,
    Madvise,
    Migrate,
    Mmap,
    Mprotect,
    Op,
    Pin,
    Read,
    SplitFolio,
    Unpin,
    Write,
)


def test_pinned_pud_thp_across_fork_copies_the_pinned_page(impl: str) -> None:
    ops: list[Op] = [
        Mmap(0, 16, 16, "rw"),
        Write(0, 16, 5),  # PUD fault: folio 1, head AnonExclusive
        Write(0, 19, 7),
        Pin(0, 19),  # pin id 1: large folio -> refcount 1+1 = 2, pincount 1
        Fork(0),  # child mm 1
        Write(0, 19, 8),  # the parent writes through its pinned page
        Read(1, 19),
        Read(1, 16),
    ]
    m, results = run_ops(impl, Config(geometry=4), ops)
    # fork: copy_huge_pud -> folio_try_dup_anon_rmap: head AnonExclusive and the folio may
    # be pinned (MMF_HAS_PINNED, pincount 1) -> -EBUSY: the parent's PUD is split
    # (thp_split_pud 1) and every page is copied at PTE level. After the split all 16
    # pages are AnonExclusive (copied from the head), so copy_present_page gives the
    # child 16 new order-0 folios, ids 2..17; the parent keeps folio 1 writable.
    assert results == [0, 0, 0, 1, 1, 0, 7, 5]
    snap = m.snapshot()
    assert snap["stats"]["vmstat"]["thp_split_pud"] == 1
    f1 = folio(m.snapshot(), 1)
    # Parent only: 16 PTE mappings -> refcount 16 + 1 pin = 17; large 16 - 1 = 15.
    assert f1["refcount"] == 17
    assert f1["pincount"] == 1
    assert f1["large_mapcount"] == 15
    assert f1["mm_id"] == [1, 0]
    assert f1["shared"] is False
    assert f1["anon_exclusive"] == [[True, 16]]
    child_folios = [f for f in snap["folios"] if f["id"] != 1]
    assert [f["id"] for f in child_folios] == list(range(2, 18))
    assert all(f["order"] == 0 and f["refcount"] == 1 for f in child_folios)
    # rss: parent 16 PTEs, child 16 copies
    assert [mm["rss_anon"] for mm in snap["mms"]] == [16, 16]


def test_split_fails_while_pinned_and_succeeds_after_unpin(impl: str) -> None:
    ops: list[Op] = [
        Mmap(0, 16, 16, "rw"),
        Write(0, 17, 3),
        Pin(0, 17),  # refcount 2 (1 mapping + 1 pin)
        SplitFolio(0, 17),  # expected refs = mapcount 1 != 2 -> fails at once
        Unpin(1),
        SplitFolio(0, 17),
    ]
    m, results = run_ops(impl, Config(geometry=4), ops)
    assert results == [0, 0, 1, EBUSY, 0, 0]
    s = m.snapshot()["stats"]
    # The failed attempt: split_huge_pages_pid() skips a folio whose refcount is not the
    # expected one before it calls the split (can_split_folio()), so nothing is counted,
    # not even split_failed, and the mappings are untouched (no thp_split_pud). The
    # successful one: the PUD is split to PTEs first (TTU_SPLIT_HUGE_PUD, thp_split_pud 1),
    # the folio split to order 0 (split 1, nr_anon 1 -> 0); thp_split_page counts the PMD
    # order only.
    assert s["mthp"]["pud"]["split_failed"] == 0
    assert s["mthp"]["pud"]["split"] == 1
    assert s["mthp"]["pud"]["nr_anon"] == 0
    assert s["vmstat"]["thp_split_pud"] == 1
    assert s["vmstat"]["thp_split_page"] == 0
    # Page 1 holds 3: it stays an order-0 folio; the 15 zero-filled pages are remapped to
    # the shared zero page (RSS -1 each): RSS 16 - 15 = 1.
    mm0 = m.snapshot()["mms"][0]
    assert mm0["rss_anon"] == 1
    assert [f["data"] for f in m.snapshot()["folios"]] == [[[3, 1]]]


def test_migration_of_a_pinned_folio_leaves_it_in_place(impl: str) -> None:
    ops: list[Op] = [
        Mmap(0, 16, 16, "rw"),
        Write(0, 20, 9),
        Pin(0, 20),
        Migrate(0, 16, 16, 1),
        Read(0, 20),
    ]
    m, results = run_ops(impl, Config(geometry=4), ops)
    assert results == [0, 0, 1, 0, 9]
    snap = m.snapshot()
    # The walk splits the PUD (no PUD migration entry): thp_split_pud 1. The folio is
    # pinned, so migrate_pages() cannot move it: thp_migration_fail 1 (order 4 >= PMD
    # order), node stays 0, nothing allocated.
    assert snap["stats"]["vmstat"]["thp_split_pud"] == 1
    assert snap["stats"]["vmstat"]["thp_migration_fail"] == 1
    assert snap["stats"]["vmstat"]["thp_migration_success"] == 0
    assert [(f["id"], f["node"]) for f in snap["folios"]] == [(1, 0)]


def test_migration_moves_the_folio_whole(impl: str) -> None:
    m, results = run_ops(impl, Config(geometry=4), [Mmap(0, 16, 16, "rw"), Write(0, 20, 9),
                                          Migrate(0, 16, 16, 1), Read(0, 20)])
    assert results == [0, 0, 0, 9]
    snap = m.snapshot()
    # PUD split by the walk, then a PUD-order folio allocated on node 1 (id 2): moved
    # whole, thp_migration_success 1; folio 1 freed; mapcounts move with the PTEs:
    # refcount 16, large 15, every page mapcount 0.
    assert snap["stats"]["vmstat"]["thp_migration_success"] == 1
    [f] = snap["folios"]
    assert (f["id"], f["node"], f["order"], f["refcount"]) == (2, 1, 4, 16)
    assert f["mapcount"] == [[0, 16]]
    assert snap["stats"]["mthp"]["pud"]["nr_anon"] == 1


def test_pageout_with_swap_disabled_changes_nothing(impl: str) -> None:
    cfg = Config(geometry=4, swap_pages=0)
    ops: list[Op] = [Mmap(0, 16, 16, "rw"), Write(0, 16, 1)]
    m, _ = run_ops(impl, cfg, ops)
    before = m.snapshot()
    assert m.apply(Madvise(0, 16, 16, "pageout")) == 0
    m.check_invariants()
    assert m.snapshot() == before


def test_pageout_of_a_pmd_thp_swaps_it_whole_and_swaps_back_in(impl: str) -> None:
    cfg = Config(geometry=4, pud_enabled="never")
    ops: list[Op] = [
        Mmap(0, 16, 16, "rw"),
        Write(0, 16, 4),  # PMD THP folio 1 over [16, 20)
        Madvise(0, 16, 4, "pageout"),
        Read(0, 16),
        Read(0, 17),
    ]
    m, results = run_ops(impl, cfg, ops)
    assert results == [0, 0, 0, 4, 0]
    s = m.snapshot()
    v = s["stats"]["vmstat"]
    # The PMD leaf covers the range: reclaimed whole into 4 contiguous slots
    # (thp_swpout 1, pswpout 4); try_to_unmap splits the PMD (thp_split_pmd 1) into four
    # swap PTEs. The two reads swap pages 0 and 1 back in as order-0 folios (pswpin 2).
    assert (v["thp_swpout"], v["pswpout"], v["thp_split_pmd"], v["pswpin"]) == (1, 4, 1, 2)
    mm0 = s["mms"][0]
    assert (mm0["rss_anon"], mm0["rss_swap"]) == (2, 2)
    assert [sl["slot"] for sl in s["swap"]] == [3, 4]


def test_migration_carries_the_dirty_bit_of_the_ptes_to_the_new_folio(impl: str) -> None:
    cfg = Config(geometry=4, pud_enabled="never", pmd_enabled="never")
    m, results = run_ops(impl, cfg, [Mmap(0, 16, 16, "rw"), Write(0, 18, 6), Migrate(0, 18, 1, 1)])
    assert results == [0, 0, 0]
    # do_anonymous_page() maps the written order-0 folio 1 dirty (pte_mkdirty); PG_dirty
    # is not set on the folio. try_to_migrate_one() calls folio_mark_dirty() for a dirty
    # PTE, folio_migrate_flags() copies PG_dirty to the new folio 2 on node 1, and
    # remove_migration_pte() maps it with the entry's dirty bit.
    [f] = m.snapshot()["folios"]
    assert (f["id"], f["node"], f["flags"], f["data"]) == (2, 1, ["dirty"], [[6, 1]])


# --------------------------------------------------------------------------------------
# Behaviours the live-kernel conformance run showed (pudthp conform, Linux 6.18)
# --------------------------------------------------------------------------------------


def test_first_fault_reuses_the_neighbours_anon_vma_so_mprotect_merges(impl: str) -> None:
    cfg = Config(geometry=4, pud_enabled="never")
    ops: list[Op] = [
        Mmap(0, 0, 4, "rw"),
        Write(0, 0, 1),  # PMD THP fault: VMA [0,4) gets anon_vma A (anon_vma_prepare)
        Mmap(0, 4, 4, "r"),  # prot differs: no merge at mmap, [4,8) has no anon_vma
        Read(0, 4),  # huge zero PMD fault -> anon_vma_prepare: find_mergeable_anon_vma()
        #            finds prev [0,4) adjacent, flags equal but for access bits, not
        #            forked: reuses A
        Mprotect(0, 4, 4, "rw"),  # now prot and flags equal and both anon_vma A: merge
    ]
    m, results = run_ops(impl, cfg, ops)
    assert results == [0, 0, 0, 0, 0]
    assert m.snapshot()["mms"][0]["vmas"] == [[0, 8, "rw", []]]


def test_a_forked_vma_does_not_merge_with_one_without_anon_vma(impl: str) -> None:
    cfg = Config(geometry=4)
    ops: list[Op] = [
        Mmap(0, 0, 4, "rw"),
        Write(0, 0, 1),  # anon_vma for [0,4)
        Fork(0),  # child mm 1: [0,4) with its own anon_vma from anon_vma_fork (forked)
        Mmap(1, 4, 4, "rw"),  # no anon_vma; its neighbour had uncowed parents:
        #                       is_mergeable_anon_vma() refuses (vma_had_uncowed_parents)
    ]
    m, results = run_ops(impl, cfg, ops)
    assert results == [0, 0, 1, 0]
    assert m.snapshot()["mms"][1]["vmas"] == [[0, 4, "rw", []], [4, 8, "rw", []]]


def test_dontneed_over_a_whole_pmd_range_frees_the_emptied_pte_table(impl: str) -> None:
    cfg = Config(geometry=4, pud_enabled="never", pmd_enabled="never")
    ops: list[Op] = [
        Mmap(0, 0, 16, "rw"),
        Write(0, 1, 7),  # PTE level: PMD table + PTE table for [0,4) allocated
        Madvise(0, 0, 4, "dontneed"),  # zap covers the whole PMD range [0,4)
        Madvise(0, 4, 2, "dontneed"),  # partial range: nothing to reclaim (no table)
    ]
    m, results = run_ops(impl, cfg, ops)
    assert results == [0, 0, 0, 0]
    # PUD table + PMD table stay: 2 * 4096.  Before the dontneed it was 3 * 4096; the
    # emptied PTE table was freed (zap_pte_range -> try_to_free_pte, CONFIG_PT_RECLAIM).
    assert m.snapshot()["mms"][0]["pgtables_bytes"] == 2 * 4096


def test_a_zero_filled_thp_goes_to_the_swap_zeromap_without_io(impl: str) -> None:
    cfg = Config(geometry=4, pud_enabled="never")
    ops: list[Op] = [
        Mmap(0, 16, 16, "rw"),
        Write(0, 16, 0),  # a PMD THP whose four pages are all zero
        Madvise(0, 16, 4, "pageout"),
        Read(0, 17),
    ]
    m, results = run_ops(impl, cfg, ops)
    assert results == [0, 0, 0, 0]
    v = m.snapshot()["stats"]["vmstat"]
    # reclaimed whole into 4 slots, but swap_writeout() sees a zero-filled folio and
    # only sets its slots in the zeromap: no thp_swpout, swpout or pswpout; the swap-in
    # of page 1 reads the zeromap: no pswpin.  try_to_unmap still split the PMD.
    assert (v["thp_swpout"], v["pswpout"], v["pswpin"], v["thp_split_pmd"]) == (0, 0, 0, 1)
    swap = m.snapshot()["swap"]
    assert [(s["slot"], s["zeromap"]) for s in swap] == [(1, True), (3, True), (4, True)]
