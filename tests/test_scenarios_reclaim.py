"""Scenario tests: RFC selftests T6 (reclaim) and T7 (migration), and steps 4-6 of the PMD
worked example, expected values derived by hand.

Same method as ``test_scenarios.py``: each test replays one program of ``corpus/seeds/``
through the reference model, calling ``check_invariants()`` after every op, and compares the
results and chosen snapshot fields with values derived by hand from the kernel rules
(docs/model.md 8.2-8.5 and 9.11, ``kernel-thp-semantics.md`` 1.12, 3.7, 3.8, 3.11, 3.12 and
section 7)
and the model's documented choices (docstrings of ``vmscan.py``, ``migrate.py``,
``huge_split.py``, ``swapfile.py``, ``memory.do_swap_page``), never from a run of the model.
The comment next to each expected number gives its derivation.

The model's rules these derivations lean on:
- pageout: the madvise walk has no ``pud_entry``, so a PUD leaf in range is split to PTEs
  first; a PTE batch stops at the PTE table, so it never covers a PUD-order folio, which is
  then split with ``split_folio`` (and never gets swap slots anyway); a PMD leaf wholly in
  range goes to reclaim whole: P contiguous slots, ``try_to_unmap`` splits the PMD
  (non-freeze) and writes one swap PTE per page.  Reclaim is synchronous: written, out of
  the swap cache and freed within the op.
- ``split_folio`` unmaps every PTE through a migration entry, one rmap removal at a time, so
  a PTE-mapped large folio not yet flagged is flagged partially mapped at the first removal
  (``thp_deferred_split_page``, ``split_deferred``), then unqueued by the split; zero-filled
  pages are remapped to the shared zero page (RSS -1 each), unmapped pages freed; the head
  keeps the folio id, page i becomes the folio ``id_next + i - 1``.
- swap-in (``do_swap_page``): a fresh exclusive order-0 folio (next folio id), mapped
  read-only, clean and young; the slot is freed at once (no swap cache is kept).  A write
  fault on a swap PTE swaps in, then ``do_wp_page`` reuses the exclusive page.
- migrate: the walk splits PUD leaves; a large folio moves whole into a new folio of the same
  order on the target node (new id, ``thp_migration_success``), its deferred-queue state
  read after the unmap (``migrate_folio_move``, so a flag set by the one-by-one unmap is
  carried to the destination); if the allocation fails it is
  split (``thp_migration_split`` and ``thp_migration_fail``) and its pages move one by one
  (order 0: no THP counter), tails by index first, the head last (``try_split_folio``).

Notation: ``P`` = entries per table (8 small, 512 x86_64), ``N = P*P``, ``B`` = first vpn of
a PUD window (``B = N``), ``W`` = first vpn of a PMD window (``W = P``), ``PT`` = 4096.
Counters are raw kernel encodings (mapcounts biased by -1).  Page-table pages and folios have
separate id counters from 1; swap slots too; mm k's MM-ID is k+1.

Any vmstat / mTHP / node counter a test does not name is expected to be 0.
"""

from __future__ import annotations

from typing import Any

import pytest

from pudthp_ref.spec import (
    SIGSEGV,
)

pytest.importorskip("pudthp_ref.model")

from scenario_tools import (
    GEOMETRIES,
    NAMES,
    PT,
    census,
    check,
    expect_stats,
    folio,
    folio_ids,
    fresh_huge_folio,
    mm,
    pmd_entry,
    pmd_order,
    pte_entry,
    pud_entry,
    pud_order,
    run,
)

# --------------------------------------------------------------------------------------
# Running a program and reading its snapshots (as in test_scenarios.py)
# --------------------------------------------------------------------------------------


def pte_kinds(snap: dict[str, Any], mm_id: int) -> dict[str, int]:
    """How many entries of each kind ("pte", "zero", "swap") the mm's live PTE tables hold."""
    out: dict[str, int] = {}
    for t in snap["pagetables"]:
        if t["mm"] == mm_id and t["level"] == "pte" and t["state"] == "live":
            for _, e in t["entries"]:
                out[e[0]] = out.get(e[0], 0) + 1
    return out


def small_folio(*, node: int, exclusive: bool, flags: list[str], data: int) -> dict[str, Any]:
    """An order-0 folio mapped by one PTE; the large-folio counters stay at their initial
    values (order 0 uses only _mapcount of page 0)."""
    return {
        "order": 0,
        "node": node,
        "refcount": 1,  # its one PTE
        "pincount": 0,
        "entire_mapcount": -1,
        "large_mapcount": -1,
        "nr_pages_mapped": 0,
        "mm_id": [0, 0],
        "mm_id_mapcount": [-1, -1],
        "shared": False,
        "flags": flags,
        "mapcount": [[0, 1]],  # mapped once
        "anon_exclusive": [[exclusive, 1]],
        "data": [[data, 1]],
    }


def swap_slots(snap: dict[str, Any]) -> list[tuple[int, int, int]]:
    return [(s["slot"], s["count"], s["data"]) for s in snap["swap"]]


# --------------------------------------------------------------------------------------
# T6: reclaim, PUD level (small)
# --------------------------------------------------------------------------------------

# Pages written by both reclaim programs, as offsets into the folio, and their values:
# page 0 = 11, page 2 = 12, page 11 = 13, page 36 = 14, last page = 15.
RECLAIM_PAGES = [0, 2, 11, 36]


def reclaim_data(nr: int) -> list[list[int]]:
    """RLE contents of the filled folio of ``nr`` pages (pages 0, 2, 11, 36, nr-1)."""
    return [[11, 1], [0, 1], [12, 1], [0, 8], [13, 1], [0, 24], [14, 1], [0, nr - 38], [15, 1]]


def test_pud_reclaim_small(impl: str) -> None:
    """T6: MADV_PAGEOUT of a PUD THP splits it (PUD, then folio) and swaps the pages with
    data out one by one; reads and writes swap them back in."""
    P = 8
    N = P * P
    B = N
    res, s = run(impl, "pud_reclaim_small.json", at={5, 6, 10, 14})
    assert res == [
        0,  # mmap [B, 2B) rw
        0,  # write B = 11: PUD fault, folio 1
        0,  # write B+2 = 12
        0,  # write B+11 = 13 (second PMD range)
        0,  # write B+36 = 14
        0,  # write B+N-1 = 15
        0,  # madvise pageout [B, 2B)
        11,  # read B: swapped in from slot 1
        12,  # read B+2: slot 2
        13,  # read B+11: slot 3
        0,  # read B+1: the shared zero page (zero-filled at the split), no swap-in
        0,  # write B+2 = 16: the swapped-in page is exclusive, reused in place
        0,  # write B+36 = 17: swap-in from slot 4, then reuse
        16,  # read B+2
        17,  # read B+36
    ]

    # op 5, before pageout: one PUD THP as in T1/T2, five pages written
    s5 = s[5]
    check(folio(s5, 1), **fresh_huge_folio(pud_order(P), N), data=reclaim_data(N))
    check(mm(s5, 0), rss_anon=N, rss_swap=0, pgtables_bytes=PT * (2 + P))  # PUD fault, T1
    assert census(s5, 0) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    assert s5["swap"] == []

    # op 6, MADV_PAGEOUT [B, 2B):
    # 1. walk_pud_range splits the PUD leaf (thp_split_pud 1): the deposit (PMD table 2 and
    #    its P PTE tables) becomes live; folio 1 PTE-mapped: refcount N, large N-1, npm N,
    #    every page AnonExclusive (copied from the head), PG_dirty (the leaf was dirty).
    # 2. The first PTE batch is P < N pages, the folio is not mapped shared -> split_folio:
    #    refcount N == expected N.  unmap_folio removes the N PTE rmaps one by one: the first
    #    flags the folio partially mapped (thp_deferred_split_page +1, split_deferred[pud]
    #    +1, nr_anon_partially_mapped[pud] +1); the split unqueues it (deferred list empty,
    #    nr_anon_partially_mapped back to 0), nr_anon[pud] 1 -> 0, split[pud] +1
    #    (thp_split_page: PMD order only).  Pages 0, 2, 11, 36, 63 (data) are remapped to
    #    folios 1 (the head keeps its id), 1+2=3, 1+11=12, 1+36=37, 1+63=64; the other 59
    #    pages are zero-filled -> zero page, RSS -59, their folios freed.
    # 3. The walk goes on: each data PTE is an order-0 folio mapped once -> isolated, in
    #    address order.  reclaim_pages: folio_alloc_swap gives one slot each, in order:
    #    slots 1..5; try_to_unmap writes the swap PTE (RSS -1, swap +1 each); pswpout +5;
    #    order 0 counts no thp_swpout / swpout; each folio is freed.
    s6 = s[6]
    check(
        mm(s6, 0),
        vmas=[[B, 2 * B, "rw", []]],  # madvise changes no VMA
        rss_anon=0,  # N - 59 (zero page) - 5 (swapped)
        rss_swap=5,  # the five data pages
        pgtables_bytes=PT * (2 + P),  # the split made the deposit live; nothing freed
    )
    assert census(s6, 0) == {"pud/live": 1, "pmd/live": 1, "pte/live": P}
    assert pud_entry(s6, 0, B) == ["table", 2]  # the popped deposit PMD table
    assert pte_entry(s6, 0, B) == ["swap", 1]  # page 0 -> slot 1
    assert pte_entry(s6, 0, B + 1) == ["zero"]  # zero-filled -> shared zero page
    assert pte_entry(s6, 0, B + 2) == ["swap", 2]
    assert pte_entry(s6, 0, B + 11) == ["swap", 3]
    assert pte_entry(s6, 0, B + 36) == ["swap", 4]
    assert pte_entry(s6, 0, B + N - 1) == ["swap", 5]
    assert pte_kinds(s6, 0) == {"swap": 5, "zero": N - 5}  # every page still has a PTE
    assert s6["folios"] == []  # folio 1 and all its pieces are freed
    assert s6["deferred"] == []  # unqueued by the split
    # one swap PTE per slot (count 1), contents saved at folio_alloc_swap
    assert swap_slots(s6) == [(1, 1, 11), (2, 1, 12), (3, 1, 13), (4, 1, 14), (5, 1, 15)]
    expect_stats(
        s6,
        vm={
            "thp_fault_alloc_pud": 1,
            "thp_split_pud": 1,  # the walk's split
            "thp_deferred_split_page": 1,  # first PTE rmap removal of unmap_folio
            "pswpout": 5,  # five order-0 folios written
            # thp_swpout / thp_swpout_fallback 0: no PMD-mappable folio reached
            # shrink_folio_list; thp_split_pmd 0: no PMD leaf
        },
        pud={
            "anon_fault_alloc": 1,
            "split": 1,  # split_folio from the pageout walk
            "split_deferred": 1,  # flagged once by the unmap
            # nr_anon 1 -> 0, nr_anon_partially_mapped 1 -> 0; swpout_fallback 0: the
            # split came from the PTE-level rule, not from a failed folio_alloc_swap
        },
        # nr_anon_mapped N -> N (PUD split, net 0) -> 0 (unmap) -> 5 (remap) -> 0 (swap);
        # nr_anon_pud_thps N -> 0 at the PUD split
    )

    # op 10, after reading B, B+2, B+11 (swap-in each) and B+1 (zero page, nothing)
    s10 = s[10]
    # do_swap_page: next folio ids after 64 -> 65 (page 0), 66 (page 2), 67 (page 11)
    assert folio_ids(s10) == [65, 66, 67]
    for fid, value in ((65, 11), (66, 12), (67, 13)):
        # fresh exclusive order-0 folio on node 0, no flag set (not dirty, never queued)
        check(folio(s10, fid), **small_folio(node=0, exclusive=True, flags=[], data=value))
    assert pte_entry(s10, 0, B) == ["pte", 65, 0, 0, 0, 1]  # read fault: RO, clean, young
    assert pte_entry(s10, 0, B + 2) == ["pte", 66, 0, 0, 0, 1]
    assert pte_entry(s10, 0, B + 11) == ["pte", 67, 0, 0, 0, 1]
    assert pte_entry(s10, 0, B + 1) == ["zero"]  # reading the zero page maps nothing
    check(mm(s10, 0), rss_anon=3, rss_swap=2)  # three swapped in: +3 anon, -3 swap
    assert pte_kinds(s10, 0) == {"pte": 3, "swap": 2, "zero": N - 5}
    assert swap_slots(s10) == [(4, 1, 14), (5, 1, 15)]  # slots 1-3 freed at count 0
    expect_stats(
        s10,
        vm={
            "thp_fault_alloc_pud": 1,
            "thp_split_pud": 1,
            "thp_deferred_split_page": 1,
            "pswpout": 5,
            "pswpin": 3,  # one per swap-in
        },
        pud={"anon_fault_alloc": 1, "split": 1, "split_deferred": 1},
        node={"nr_anon_mapped": 3},  # folio_add_new_anon_rmap of three order-0 folios
    )

    # op 14: write B+2 reuses folio 66 (AnonExclusive); write B+36 swaps in folio 68 from
    # slot 4 (read-only), then do_wp_page reuses it; reads change nothing
    s14 = s[14]
    assert folio_ids(s14) == [65, 66, 67, 68]
    check(folio(s14, 66), **small_folio(node=0, exclusive=True, flags=[], data=16))
    check(folio(s14, 68), **small_folio(node=0, exclusive=True, flags=[], data=17))
    check(folio(s14, 65), **small_folio(node=0, exclusive=True, flags=[], data=11))
    assert pte_entry(s14, 0, B + 2) == ["pte", 66, 0, 1, 1, 1]  # reuse: write, dirty, young
    assert pte_entry(s14, 0, B + 36) == ["pte", 68, 0, 1, 1, 1]
    assert pte_entry(s14, 0, B + N - 1) == ["swap", 5]  # never touched again
    check(mm(s14, 0), rss_anon=4, rss_swap=1, pgtables_bytes=PT * (2 + P))
    assert pte_kinds(s14, 0) == {"pte": 4, "swap": 1, "zero": N - 5}
    assert swap_slots(s14) == [(5, 1, 15)]
    assert s14["deferred"] == []  # order-0 folios are never queued
    expect_stats(
        s14,
        vm={
            "thp_fault_alloc_pud": 1,
            "thp_split_pud": 1,
            "thp_deferred_split_page": 1,
            "pswpout": 5,
            "pswpin": 4,  # + slot 4; the write to B+2 found a present page
        },
        pud={"anon_fault_alloc": 1, "split": 1, "split_deferred": 1},
        node={"nr_anon_mapped": 4},
    )


# --------------------------------------------------------------------------------------
# T6 at x86_64: the PMD-level variant (pud_enabled never)
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_pud_reclaim_x86_64(impl: str) -> None:
    """T6 with a PMD THP: reclaimed whole into P contiguous slots, swapped back in per page."""
    P = 512
    W = P  # [512, 1024): PMD index 1 of PUD index 0
    res, s = run(impl, "pud_reclaim_x86_64.json", at={5, 6, 10, 14})
    assert res == [
        0,  # mmap [W, W+P) rw
        0,  # write W = 11: PMD fault (pud_enabled never -> PMD table 2, folio 1, PTE table 3)
        0,  # write W+2 = 12
        0,  # write W+11 = 13
        0,  # write W+36 = 14
        0,  # write W+P-1 = 15
        0,  # madvise pageout [W, W+P)
        11,  # read W: swap-in from slot 1
        12,  # read W+2: slot 3
        13,  # read W+11: slot 12
        0,  # read W+1: slot 2 holds the zero-filled page 1, swapped in like any other
        0,  # write W+2 = 16: reuse of the swapped-in page
        0,  # write W+36 = 17: swap-in from slot 37 and reuse
        16,  # read W+2
        17,  # read W+36
    ]
    data = [11, 0, 12] + [0] * 8 + [13] + [0] * 24 + [14] + [0] * (P - 38) + [15]  # per page

    # op 5: the PMD THP of the worked example's step 1 (test_scenarios.py), five pages written
    s5 = s[5]
    check(folio(s5, 1), **fresh_huge_folio(pmd_order(P), P), data=reclaim_data(P))
    assert pmd_entry(s5, 0, W) == ["leaf", 1, 1, 1, 1]
    check(mm(s5, 0), rss_anon=P, rss_swap=0, pgtables_bytes=3 * PT)  # PUD + PMD + deposit
    assert census(s5, 0) == {"pud/live": 1, "pmd/live": 1, "pte/deposited": 1}
    expect_stats(
        s5,
        vm={"thp_fault_alloc": 1},
        pmd={"anon_fault_alloc": 1, "nr_anon": 1},
        node={"nr_anon_mapped": P, "nr_anon_thps": P},
    )

    # op 6, MADV_PAGEOUT [W, W+P): the PMD leaf is wholly in range and not shared ->
    # pmd_mkold, isolated whole.  shrink_folio_list: refcount 1 == mapcount 1, not partially
    # mapped; folio_alloc_swap gives P contiguous slots 1..P holding pages 0..P-1; the swap
    # cache takes P references (1 + P).  try_to_unmap: the PMD leaf is split non-freeze
    # (thp_split_pmd 1, PTE table 3 withdrawn and live, refcount += P-1 -> 2P), then every
    # PTE becomes swap(1+i): RSS -1, swap +1, rmap -1, refcount -1 (-> P).  The first PTE
    # removal sees a partial mapping, but deferred_split_folio returns early for a swapcache
    # folio: no thp_deferred_split_page.  Written whole: thp_swpout 1, swpout[pmd] 1,
    # pswpout P; out of the swap cache (-P refs -> 0): freed, unqueued, nr_anon[pmd] 1 -> 0.
    s6 = s[6]
    check(
        mm(s6, 0),
        vmas=[[W, W + P, "rw", []]],
        rss_anon=0,  # P - P swapped
        rss_swap=P,  # one swap PTE per page, zero-filled ones included
        pgtables_bytes=3 * PT,  # the deposited PTE table became live: same count
    )
    assert census(s6, 0) == {"pud/live": 1, "pmd/live": 1, "pte/live": 1}
    assert pud_entry(s6, 0, W) == ["table", 2]
    assert pmd_entry(s6, 0, W) == ["table", 3]  # the withdrawn deposit
    for i in range(P):
        assert pte_entry(s6, 0, W + i) == ["swap", 1 + i]  # page i -> slot 1+i
    assert s6["folios"] == []
    assert s6["deferred"] == []  # the queued-at-fault folio left the queue when freed
    assert swap_slots(s6) == [(1 + i, 1, data[i]) for i in range(P)]
    expect_stats(
        s6,
        vm={
            "thp_fault_alloc": 1,
            "thp_split_pmd": 1,  # TTU_SPLIT_HUGE_PMD
            "thp_swpout": 1,  # swapped out as one unit
            "pswpout": P,
        },
        pmd={"anon_fault_alloc": 1, "swpout": 1},  # nr_anon 1 -> 0 at free
        # nr_anon_thps P -> 0 at the PMD split (last entire mapping); nr_anon_mapped P -> 0
        # as the last PTE goes
    )

    # op 10: reads of W, W+2, W+11, W+1 swap in pages 0, 2, 11, 1 (slots 1, 3, 12, 2) as
    # folios 2, 3, 4, 5 (the next folio ids)
    s10 = s[10]
    assert folio_ids(s10) == [2, 3, 4, 5]
    for fid, value in ((2, 11), (3, 12), (4, 13), (5, 0)):
        check(folio(s10, fid), **small_folio(node=0, exclusive=True, flags=[], data=value))
    assert pte_entry(s10, 0, W) == ["pte", 2, 0, 0, 0, 1]  # read fault: RO, clean, young
    assert pte_entry(s10, 0, W + 1) == ["pte", 5, 0, 0, 0, 1]
    assert pte_entry(s10, 0, W + 2) == ["pte", 3, 0, 0, 0, 1]
    assert pte_entry(s10, 0, W + 11) == ["pte", 4, 0, 0, 0, 1]
    check(mm(s10, 0), rss_anon=4, rss_swap=P - 4)
    gone10 = {1, 2, 3, 12}  # freed at swap count 0
    assert swap_slots(s10) == [(1 + i, 1, data[i]) for i in range(P) if 1 + i not in gone10]
    expect_stats(
        s10,
        vm={"thp_fault_alloc": 1, "thp_split_pmd": 1, "thp_swpout": 1, "pswpout": P,
            "pswpin": 4},
        pmd={"anon_fault_alloc": 1, "swpout": 1},
        node={"nr_anon_mapped": 4},  # four order-0 folios mapped
    )

    # op 14: write W+2 reuses folio 3; write W+36 swaps in slot 37 as folio 6, then reuses it
    s14 = s[14]
    assert folio_ids(s14) == [2, 3, 4, 5, 6]
    check(folio(s14, 3), **small_folio(node=0, exclusive=True, flags=[], data=16))
    check(folio(s14, 6), **small_folio(node=0, exclusive=True, flags=[], data=17))
    assert pte_entry(s14, 0, W + 2) == ["pte", 3, 0, 1, 1, 1]
    assert pte_entry(s14, 0, W + 36) == ["pte", 6, 0, 1, 1, 1]
    assert pte_entry(s14, 0, W + P - 1) == ["swap", P]  # page P-1 (15) still in slot P
    check(mm(s14, 0), rss_anon=5, rss_swap=P - 5, pgtables_bytes=3 * PT)
    assert pte_kinds(s14, 0) == {"pte": 5, "swap": P - 5}
    gone14 = gone10 | {37}
    assert swap_slots(s14) == [(1 + i, 1, data[i]) for i in range(P) if 1 + i not in gone14]
    expect_stats(
        s14,
        vm={"thp_fault_alloc": 1, "thp_split_pmd": 1, "thp_swpout": 1, "pswpout": P,
            "pswpin": 5},
        pmd={"anon_fault_alloc": 1, "swpout": 1},
        node={"nr_anon_mapped": 5},
    )


# --------------------------------------------------------------------------------------
# T7: migration (both geometries), and the fail_alloc variant (small)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", GEOMETRIES)
def test_pud_migration(impl: str, P: int) -> None:
    """T7: the walk splits the PUD, the folio moves whole to node 1; with the PUD-order
    allocation failing, the folio is split and its pages move one by one."""
    N = P * P
    B = N
    small = P == 8
    at = {3, 4, 10} | ({16, 20} if small else set())
    res, s = run(impl, f"pud_migration_{NAMES[P]}.json", at=at)
    expected = [
        0,  # mmap [B, 2B) rw
        0,  # write B = 21: PUD fault, folio 1
        0,  # write B+P = 22
        0,  # write B+N-1 = 23
        0,  # migrate [B, 2B) to node 1
        21,  # read B: contents moved with the pages
        22,  # read B+P
        23,  # read B+N-1
        0,  # read B+1: never written
        0,  # write B+P = 24: the PTE came back writable, no fault
        24,  # read B+P
    ]
    if small:
        expected += [
            0,  # mmap [3N, 4N) = [192, 256) rw
            0,  # write 3N = 31: PUD fault, folio 3
            0,  # write 3N+P+1 = 32
            0,  # write 3N+N-1 = 33
            0,  # fail_alloc pud 1
            0,  # migrate [3N, 4N) to node 1 (mbind's strict mode is not modelled)
            31,  # read 3N
            32,  # read 3N+P+1
            33,  # read 3N+N-1
            0,  # read 3N+1: the zero page
        ]
    assert res == expected
    data_in = [[21, 1], [0, P - 1], [22, 1], [0, N - P - 2], [23, 1]]

    s3 = s[3]
    check(folio(s3, 1), **fresh_huge_folio(pud_order(P), N), data=data_in)
    check(mm(s3, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))  # PUD fault, see T1

    # op 4, migrate [B, 2B) to node 1:
    # 1. queue_pages_range's walk splits the PUD leaf (thp_split_pud 1): folio 1 PTE-mapped,
    #    refcount N, large N-1, npm N, all pages AnonExclusive, PG_dirty; nr_anon_pud_thps
    #    N -> 0.  Folio 1 is on node 0 and not mapped shared: queued once.
    # 2. migrate_pages: not pinned, refcount N == mapcount N; folio_alloc(PUD order, node 1)
    #    succeeds: folio 2.  Every PTE becomes a migration entry (writable -> exclusive),
    #    one rmap removal at a time: the first flags folio 1 partially mapped
    #    (thp_deferred_split_page +1, split_deferred[pud] +1, nr_anon_partially_mapped +1).
    #    migrate_folio_move() then reads folio 1's queue state -- queued AND partially
    #    mapped, as the unmap left it (mm/migrate.c records it after migrate_folio_unmap).
    #    Contents and PG_dirty are copied; every entry is restored to the same page of
    #    folio 2 (RMAP_EXCLUSIVE); nr_anon[pud] +1 for folio 2; folio 1 is unqueued (flag
    #    cleared, nr_anon_partially_mapped -1) and deferred_split_folio(folio 2, true)
    #    queues folio 2 flagged (thp_deferred_split_page +1, split_deferred[pud] +1,
    #    nr_anon_partially_mapped +1); folio 1 freed (nr_anon[pud] -1).
    #    thp_migration_success +1.
    s4 = s[4]
    check(
        mm(s4, 0),
        rss_anon=N,  # migration changes no RSS
        rss_swap=0,
        pgtables_bytes=PT * (2 + P),  # the split made the deposit live
    )
    assert census(s4, 0) == {"pud/live": 1, "pmd/live": 1, "pte/live": P}
    assert pud_entry(s4, 0, B) == ["table", 2]  # the popped deposit PMD table
    # restored from the migration entries: write, dirty, young as after the split
    assert pte_entry(s4, 0, B) == ["pte", 2, 0, 1, 1, 1]
    assert pte_entry(s4, 0, B + P) == ["pte", 2, P, 1, 1, 1]
    assert pte_entry(s4, 0, B + N - 1) == ["pte", 2, N - 1, 1, 1, 1]
    assert pte_kinds(s4, 0) == {"pte": N}
    assert folio_ids(s4) == [2]  # folio 1 freed, its id never reused
    moved = {
        "order": pud_order(P),  # a folio of the same order
        "node": 1,  # the target node
        "refcount": N,  # folio_alloc's 1 + N remaps - 1 (the allocation reference dropped)
        "pincount": 0,
        "entire_mapcount": -1,  # never entire-mapped: no PUD migration entry
        "large_mapcount": N - 1,  # N PTE rmaps, raw N - 1
        "nr_pages_mapped": N,  # every page PTE-mapped
        "mm_id": [1, 0],  # mm 0 took the empty slot 0 at the first remap
        "mm_id_mapcount": [N - 1, -1],
        "shared": False,  # the first add found no other mapping
        "flags": ["deferred", "dirty", "partially_mapped"],  # requeued flagged; PG_dirty
        "mapcount": [[0, N]],
        "anon_exclusive": [[True, N]],  # every entry was writable: RMAP_EXCLUSIVE
    }
    check(folio(s4, 2), **moved, data=data_in)
    assert s4["deferred"] == [2]
    migrated_stats = {
        "vm": {
            "thp_fault_alloc_pud": 1,
            "thp_split_pud": 1,  # the walk's split (no PUD migration entry)
            "thp_deferred_split_page": 2,  # folio 1 by the unmap, folio 2 by the requeue
            "thp_migration_success": 1,  # moved whole
        },
        "pud": {
            "anon_fault_alloc": 1,
            "nr_anon": 1,  # folio 2 counted, folio 1 gone: 1 + 1 - 1
            "split_deferred": 2,  # folio 1's flag and folio 2's, events
            "nr_anon_partially_mapped": 1,  # folio 1: +1 -1; folio 2: +1
        },
        "node": {"nr_anon_mapped": N},  # -N at the unmap, +N at the remap
    }
    expect_stats(s4, **migrated_stats)

    # op 10: the write to B+P landed in folio 2 without a fault; nothing else moved
    s10 = s[10]
    assert pte_entry(s10, 0, B + P) == ["pte", 2, P, 1, 1, 1]
    check(
        folio(s10, 2),
        **moved,
        data=[[21, 1], [0, P - 1], [24, 1], [0, N - P - 2], [23, 1]],
    )
    check(mm(s10, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))
    expect_stats(s10, **migrated_stats)

    if not small:
        return

    # op 16 (small only): the second window [192, 256) = PUD index 3 faulted folio 3 (ids
    # 1 and 2 are taken) with PMD table 11 and PTE tables 12..19 deposited.  fail_alloc pud 1
    # makes migrate_pages' folio_alloc(PUD order, node 1) fail (no folio id taken), so:
    # split_folio_to_list(folio 3): refcount 64 == expected 64; the unmap flags it
    # partially mapped (thp_deferred_split_page 3, split_deferred[pud] 3,
    # nr_anon_partially_mapped 1 -> 2), the split unqueues it (-> 1; the deferred list keeps
    # folio 2 only), nr_anon[pud] 2 -> 1, split[pud]
    # 1; page i becomes folio 3+i (ids 4..66); pages 0, 9, 63 (data) are remapped to folios
    # 3, 12, 66; the 61 zero-filled pages go to the zero page (RSS -61) and are freed;
    # thp_migration_split 1, and thp_migration_fail 1 (migrate_pages_sync() adds the
    # batch's splits to the failures).  The pieces go on the migration list in
    # try_split_folio()'s order: __folio_split() adds the tails by index, then the head is
    # moved to the tail.  So folios 12, 66, 3 (order 0, node 0) move one by one to new
    # order-0 folios on node 1: ids 67, 68, 69; order 0 counts no THP migration event.
    s16 = s[16]
    B2 = 3 * N
    check(
        mm(s16, 0),
        vmas=[[B, 2 * B, "rw", []], [B2, B2 + N, "rw", []]],  # not adjacent: no merge
        rss_anon=N + 3,  # window 1: N; window 2: 64 - 61 zero pages
        rss_swap=0,
        pgtables_bytes=PT * (1 + 2 * (1 + P)),  # PUD table + two live deposits
    )
    assert census(s16, 0) == {"pud/live": 1, "pmd/live": 2, "pte/live": 2 * P}
    assert pud_entry(s16, 0, B2) == ["table", 11]
    assert folio_ids(s16) == [2, 67, 68, 69]  # folio 3 and its tails freed after moving
    for fid, value in ((67, 32), (68, 33), (69, 31)):
        # node 1; PG_dirty from the split (folio 3's PUD leaf was dirty) copied by the move;
        # the migration entries were writable: RMAP_EXCLUSIVE
        check(folio(s16, fid), **small_folio(node=1, exclusive=True, flags=["dirty"],
                                             data=value))
    assert pte_entry(s16, 0, B2) == ["pte", 69, 0, 1, 1, 1]
    assert pte_entry(s16, 0, B2 + P + 1) == ["pte", 67, 0, 1, 1, 1]
    assert pte_entry(s16, 0, B2 + N - 1) == ["pte", 68, 0, 1, 1, 1]
    assert pte_entry(s16, 0, B2 + 1) == ["zero"]
    assert pte_kinds(s16, 0) == {"pte": N + 3, "zero": N - 3}
    check(folio(s16, 2), **moved, data=[[21, 1], [0, P - 1], [24, 1], [0, N - P - 2], [23, 1]])
    assert s16["deferred"] == [2]
    variant_stats = {
        "vm": {
            "thp_fault_alloc_pud": 2,
            "thp_split_pud": 2,  # one per walk over a PUD leaf
            "thp_deferred_split_page": 3,  # the two unmaps and folio 2's requeue
            "thp_migration_success": 1,  # the first window only
            "thp_migration_split": 1,  # folio 3
            "thp_migration_fail": 1,  # folio 3's split, added to the failures
            # thp_split_page 0: PUD order
        },
        "pud": {
            "anon_fault_alloc": 2,
            "nr_anon": 1,  # folio 2 only
            "split": 1,  # folio 3
            "split_deferred": 3,
            "nr_anon_partially_mapped": 1,  # folio 2, requeued flagged at op 4
        },
        "node": {"nr_anon_mapped": N + 3},  # folio 2's N pages + three order-0 folios
    }
    expect_stats(s16, **variant_stats)

    # op 20: reads only (PTEs already young; the zero page maps nothing)
    s20 = s[20]
    assert folio_ids(s20) == [2, 67, 68, 69]
    check(mm(s20, 0), rss_anon=N + 3)
    expect_stats(s20, **variant_stats)


# --------------------------------------------------------------------------------------
# kernel-thp-semantics.md section 7: the PMD worked example, steps 4-6
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", GEOMETRIES)
def test_worked_example_pmd_steps4to6(impl: str, P: int) -> None:
    """A munmaps (partially mapped), B reuses page 2 in place, the shrinker splits."""
    W = P  # [P, 2P): PMD index 1 of PUD index 0
    res, s = run(impl, f"worked_example_pmd_steps4to6_{NAMES[P]}.json", at={5, 6, 7, 15})
    assert res == [
        0,  # mmap [W, W+P) rw
        0,  # step 1: A writes W = 1 (PMD fault, folio 1)
        0,  # A writes W+P-1 = 4 (the leaf is writable)
        1,  # step 2: fork, B is mm 1
        0,  # step 3: B writes page 1 = 2 (split B's PMD, COW into folio 2)
        0,  # step 4: A munmaps [W, W+P)
        0,  # step 5: B writes page 2 = 3 (reused in place)
        1,  # step 6: shrink_deferred splits one folio
        1,  # B reads page 0
        2,  # B reads page 1: its copy
        3,  # B reads page 2
        0,  # B reads page 3: the zero page
        4,  # B reads page P-1: A's write, inherited
        SIGSEGV,  # A's range is unmapped
        0,  # B writes page 0 = 5: order-0 folio, refcount 1 -> reused
        5,  # B reads page 0
    ]
    order = pmd_order(P)

    # step 4 (op 5).  Before it (steps 1-3, as in test_scenarios.py): folio 1 refcount P,
    # entire 0 (A's PMD), large P-1 (1 PMD + P-1 PTEs of B), npm ENTIRELY_MAPPED + P-1,
    # slots [A:0, B:P-2] raw, SHARED, page 1's _mapcount back to -1.
    # zap_huge_pmd of A's leaf: large P-1 -> P-2; A's slot 0 -> -1, freed; the new total
    # P-2 equals B's slot -> SHARED cleared; entire 0 -> -1, npm -> P-1; nr_anon_thps -P;
    # nr = P - (P-1) = 1 (page 1) -> nr_anon_mapped -1; 0 < nr < P -> partially mapped:
    # thp_deferred_split_page +1, split_deferred[pmd] +1, nr_anon_partially_mapped[pmd] +1
    # (already queued).  The deposit is freed, then the TLB flush drops A's reference.
    s5 = s[5]
    check(
        mm(s5, 0),
        alive=True,
        vmas=[],
        rss_anon=0,  # RSS(A) 0
        pgtables_bytes=PT,  # dep(A) and the empty PMD table freed; the PUD table stays
    )
    assert census(s5, 0) == {"pud/live": 1}
    assert pud_entry(s5, 0, W) is None
    check(mm(s5, 1), rss_anon=P, pgtables_bytes=3 * PT)  # B: P-1 PTEs of folio 1 + the copy
    step4 = {
        "order": order,
        "node": 0,
        "refcount": P - 1,  # map P-1, after the TLB flush
        "pincount": 0,
        "entire_mapcount": -1,  # entire 0
        "large_mapcount": P - 2,  # map P-1
        "nr_pages_mapped": P - 1,  # ENTIRELY_MAPPED removed
        "mm_id": [0, 2],  # A's slot freed; B (MM-ID 2) in slot 1
        "mm_id_mapcount": [-1, P - 2],
        "shared": False,
        "flags": ["deferred", "dirty", "partially_mapped"],
        "mapcount": [[0, 1], [-1, 1], [0, P - 2]],  # page 1 is mapped by no one
        "anon_exclusive": [[False, P]],  # cleared at fork, copied to every page at B's split
    }
    check(folio(s5, 1), **step4, data=[[1, 1], [0, P - 2], [4, 1]])
    check(folio(s5, 2), **small_folio(node=0, exclusive=True, flags=[], data=2))  # the copy
    assert s5["deferred"] == [1]
    before_split = {
        "vm": {
            "thp_fault_alloc": 1,  # step 1
            "thp_split_pmd": 1,  # step 3, B's PMD
            "thp_deferred_split_page": 1,  # step 4
        },
        "pmd": {
            "anon_fault_alloc": 1,
            "nr_anon": 1,
            "split_deferred": 1,  # step 4
            "nr_anon_partially_mapped": 1,  # step 4
        },
        "node": {"nr_anon_mapped": P},  # (P-1 pages of folio 1) + the copy
    }
    expect_stats(s5, **before_split)

    # step 5 (op 6): B writes page 2.  The PTE is read-only, page 2 not AnonExclusive;
    # __wp_can_reuse_large_anon_folio: mapcount P-1 > 1, SHARED clear, mapcount P-1 ==
    # refcount P-1 -> reuse: page 2 becomes AnonExclusive, the PTE writable.  No counts.
    s6 = s[6]
    assert pte_entry(s6, 1, W + 2) == ["pte", 1, 2, 1, 1, 1]
    check(
        folio(s6, 1),
        **(step4 | {"anon_exclusive": [[False, 2], [True, 1], [False, P - 3]]}),
        data=[[1, 1], [0, 1], [3, 1], [0, P - 4], [4, 1]],
    )
    expect_stats(s6, **before_split)

    # step 6 (op 7): the shrinker finds folio 1 partially mapped -> split_folio: refcount
    # P-1 == expected P-1.  The unmap (B's P-1 PTEs; the folio is already flagged, so no new
    # count) takes refcount to 0; unqueued (nr_anon_partially_mapped 0); nr_anon[pmd] 1 -> 0,
    # split[pmd] +1, thp_split_page +1 (PMD order).  Page i becomes folio i+2 (next id after
    # the copy, folio 2): pages 0, 2, P-1 hold data and are remapped to folios 1, 4, P+1;
    # pages 3..P-2 (P-4 of them) are zero-filled -> zero page, RSS(B) -(P-4); page 1
    # (unmapped) and the zero-filled pages are freed.
    s7 = s[7]
    check(
        mm(s7, 1),
        rss_anon=4,  # P - (P-4): folio 1's pages 0, 2, P-1 and the copy
        pgtables_bytes=3 * PT,  # a folio split allocates or frees no page table
    )
    assert census(s7, 1) == {"pud/live": 1, "pmd/live": 1, "pte/live": 1}
    assert folio_ids(s7) == [1, 2, 4, P + 1]
    # PG_dirty copied to every new folio; AnonExclusive from the migration entry type:
    # page 0 and P-1 were read-only and not exclusive, page 2 writable
    check(folio(s7, 1), **small_folio(node=0, exclusive=False, flags=["dirty"], data=1))
    check(folio(s7, 4), **small_folio(node=0, exclusive=True, flags=["dirty"], data=3))
    check(folio(s7, P + 1), **small_folio(node=0, exclusive=False, flags=["dirty"], data=4))
    check(folio(s7, 2), **small_folio(node=0, exclusive=True, flags=[], data=2))  # untouched
    # write/dirty/young restored from the entries: B's PTEs of folio 1 came from its old
    # (young 0), read-only, dirty PMD at step 3; page 2 was made writable and young at step 5
    assert pte_entry(s7, 1, W) == ["pte", 1, 0, 0, 1, 0]
    assert pte_entry(s7, 1, W + 1) == ["pte", 2, 0, 1, 1, 1]
    assert pte_entry(s7, 1, W + 2) == ["pte", 4, 0, 1, 1, 1]
    assert pte_entry(s7, 1, W + 3) == ["zero"]
    assert pte_entry(s7, 1, W + P - 2) == ["zero"]
    assert pte_entry(s7, 1, W + P - 1) == ["pte", P + 1, 0, 0, 1, 0]
    assert pte_kinds(s7, 1) == {"pte": 4, "zero": P - 4}
    assert s7["deferred"] == []
    split_stats = {
        "vm": {
            "thp_fault_alloc": 1,
            "thp_split_pmd": 1,
            "thp_deferred_split_page": 1,  # unchanged: already flagged at the unmap
            "thp_split_page": 1,  # THP_SPLIT_PAGE +1
        },
        "pmd": {
            "anon_fault_alloc": 1,
            "split": 1,  # split[2048kB] +1
            "split_deferred": 1,
            # nr_anon 1 -> 0; nr_anon_partially_mapped 1 -> 0
        },
        # -(P-1) at the unmap, +3 at the remap (pages 0, 2, P-1), + the copy: 4
        "node": {"nr_anon_mapped": 4},
    }
    expect_stats(s7, **split_stats)
    check(mm(s7, 0), vmas=[], rss_anon=0, pgtables_bytes=PT)  # A unchanged

    # op 15: B read pages 0 and P-1 (young set), then wrote page 0: folio 1 is now order 0
    # with refcount 1 and not in the swap cache -> wp_can_reuse_anon_folio: reused in place
    s15 = s[15]
    assert pte_entry(s15, 1, W) == ["pte", 1, 0, 1, 1, 1]
    assert pte_entry(s15, 1, W + P - 1) == ["pte", P + 1, 0, 0, 1, 1]
    check(folio(s15, 1), **small_folio(node=0, exclusive=True, flags=["dirty"], data=5))
    assert folio_ids(s15) == [1, 2, 4, P + 1]  # no copy made
    check(mm(s15, 1), rss_anon=4, pgtables_bytes=3 * PT)
    expect_stats(s15, **split_stats)
