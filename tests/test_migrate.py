"""Migration of partially mapped folios and the counters of a split for migration (docs/model.md
8.5 and 9.13; mainline mm/migrate.c migrate_pages_batch, migrate_pages_sync,
try_split_folio; mm/mempolicy.c queue_pages_range), derived by hand, run on the reference,
the fast twin and both in lockstep.

Geometry small (P=8): a PMD folio is 8 pages, a PUD folio 64 pages; the first write in a
PUD-aligned 64-page VMA faults a PUD THP.  Folio ids count from 1; a split keeps the head's
id and gives page i of the old folio the id ``next + i - 1``.

The rules the derivations use:
- mbind migrates MIGRATE_SYNC: migrate_pages() -> migrate_pages_sync(), whose first pass is
  an asynchronous migrate_pages_batch().  A large folio that is on the deferred split queue
  and flagged partially mapped is split there before anything else; a large folio whose
  destination cannot be allocated (-ENOMEM) is split too.  Either split counts
  thp_migration_split, and migrate_pages_sync() adds the batch's splits to thp_migration_fail
  (``stats->nr_thp_failed += astats.nr_thp_split``).
- try_split_folio() puts the pieces on the split list: __folio_split() adds the tails in index
  order, then the head is moved to the tail of the list.  Pieces the split unmapped or
  remapped to the zero page are "freed from under us" and need no destination; the others
  get order-0 destinations on the target node in list order, pages outside the mbind range
  included.
- A folio that keeps an extra reference (a pin) fails every pass with -EAGAIN: three passes of
  the asynchronous batch, then seven one by one (NR_MAX_MIGRATE_PAGES_RETRY = 10); each pass
  starts with the deferred split again.
"""

from __future__ import annotations

from typing import Any

import pytest
from scenario_tools import (
    check,
    expect_stats,
    folio,
    folio_ids,
    mm,
    pmd_entry,
    pte_entry,
    run_ops,
)

from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    SIGSEGV,
    Config,
    FailAlloc,
    Madvise,
    Migrate,
    Mmap,
    Munmap,
    Op,
    Pin,
    Read,
    Write,
)


@pytest.fixture(params=("ref", "fast", "both"))
def impl3(request: pytest.FixtureRequest) -> str:
    """The reference, the fast twin, and both in lockstep (results and summaries compared
    after every op, snapshots at the end)."""
    return str(request.param)


def order0(node: int, value: int) -> dict[str, Any]:
    """A migrated order-0 folio mapped once, writable: the destination of a piece."""
    return {
        "order": 0,
        "node": node,
        "refcount": 1,  # folio_alloc's 1 + one remap - the allocation reference
        "pincount": 0,
        "entire_mapcount": -1,
        "large_mapcount": -1,  # order 0 keeps no large mapcount
        "nr_pages_mapped": 0,
        "flags": ["dirty"],  # PG_dirty of the split folio, copied by the move
        "mapcount": [[0, 1]],
        "anon_exclusive": [[True, 1]],  # a writable migration entry: RMAP_EXCLUSIVE
        "data": [[value, 1]],
    }


def test_partially_mapped_pud_folio_is_split_and_every_piece_migrates(impl3: str) -> None:
    """The issue's example: a PUD folio partially unmapped, then migrated over a part of its
    range: it is split first, and the written page outside the range moves too."""
    ops: list[Op] = [
        Mmap(0, 64, 64, "rw"),  # [64, 128): exactly PUD index 1
        Write(0, 64, 7),  # PUD fault: folio 1 (order 6), page 0 = 7
        Write(0, 110, 9),  # page 46 of folio 1 = 9, through the writable PUD leaf
        Munmap(0, 96, 8),
        Migrate(0, 64, 32, 1),  # [64, 96) to node 1
        Read(0, 64),
        Read(0, 110),
        Read(0, 65),
        Read(0, 100),
    ]
    m, results = run_ops(impl3, Config(geometry=8), ops)
    assert results == [0, 0, 0, 0, 0, 7, 9, 0, SIGSEGV]
    s = m.snapshot()
    # munmap [96, 104): the PUD leaf is partly inside, so it is split straight to PTEs
    # (thp_split_pud 1, nr_anon_pud_thps 64 -> 0, folio dirty from the dirty leaf); the 8
    # PTEs are zapped: 56 pages stay mapped, folio 1 is flagged partially mapped
    # (thp_deferred_split_page 1, split_deferred[pud] 1, nr_anon_partially_mapped 1) on
    # the queue it joined at the fault (shrink_underused).  RSS 64 - 8 = 56.
    #
    # migrate [64, 96): the walk queues folio 1 once (node 0, one mm).  It is on the deferred
    # queue and partially mapped, so migrate_pages_batch() splits it before any move:
    # refcount 56 == 55 + 1 expected; every PTE becomes a migration entry; the split counts
    # split[pud] 1 and nr_anon[pud] 1 -> 0, unqueues it (nr_anon_partially_mapped -> 0);
    # pages 1..63 become folios 2..64.  Remap: page 0 (7) to folio 1, page 46 (9) to folio
    # 47; the other 54 mapped pages are zero-filled and go to the zero page (RSS 56 -> 2);
    # the unmapped pages 32..39 and the zero-filled ones are freed.  thp_migration_split 1,
    # thp_migration_fail 1.  Split list: [47, 1] (tails by index, the head last), both
    # outside-range page 110 and in-range page 64: folio 47 -> folio 65, folio 1 -> folio
    # 66, order 0 on node 1 (no THP counter).
    assert folio_ids(s) == [65, 66]
    check(folio(s, 65), **order0(1, 9))
    check(folio(s, 66), **order0(1, 7))
    assert pte_entry(s, 0, 110) == ["pte", 65, 0, 1, 1, 1]  # write, dirty, young kept
    assert pte_entry(s, 0, 64) == ["pte", 66, 0, 1, 1, 1]
    assert pte_entry(s, 0, 65) == ["zero"]
    assert pte_entry(s, 0, 127) == ["zero"]
    assert s["deferred"] == []
    check(mm(s, 0), vmas=[[64, 96, "rw", []], [104, 128, "rw", []]], rss_anon=2, rss_swap=0)
    expect_stats(
        s,
        vm={
            "thp_fault_alloc_pud": 1,
            "thp_split_pud": 1,
            "thp_deferred_split_page": 1,  # the munmap; the split's unmap finds it flagged
            "thp_migration_split": 1,
            "thp_migration_fail": 1,  # the split, added to the failures
            # thp_migration_success 0: the folio was never moved whole
        },
        pud={"anon_fault_alloc": 1, "split": 1, "split_deferred": 1},
        node={"nr_anon_mapped": 2},  # two order-0 folios
    )


def test_failed_allocation_split_counts_a_failure_and_the_pieces_move_first(impl3: str) -> None:
    """fail_alloc pmd 1: the first PMD folio is split for want of a destination (split and
    fail counted), its pieces move before the next folio of the list, which moves whole."""
    cfg = Config(geometry=8, pud_enabled="never")
    ops: list[Op] = [
        Mmap(0, 8, 16, "rw"),  # [8, 24): PMD indices 1 and 2; too small for a PUD folio
        Write(0, 8, 5),  # PMD fault: folio 1 over [8, 16), page 0 = 5
        Write(0, 13, 6),  # folio 1 page 5 = 6
        Write(0, 16, 4),  # PMD fault: folio 2 over [16, 24), page 0 = 4
        FailAlloc("pmd", 1),
        Migrate(0, 8, 16, 1),
        Read(0, 8),
        Read(0, 13),
        Read(0, 16),
        Read(0, 9),
    ]
    m, results = run_ops(impl3, cfg, ops)
    assert results == [0, 0, 0, 0, 0, 0, 5, 6, 4, 0]
    s = m.snapshot()
    # The walk queues folios 1 and 2 (PMD leaves) in address order.  A PMD folio is
    # HPAGE_PMD_NR pages, so each ends its own batch of migrate_pages().
    # Folio 1: not partially mapped; the PMD-order allocation on node 1 fails (-ENOMEM,
    # fail_alloc used up): try_split_folio(): the PMD is split frozen (thp_split_pmd 1), the
    # split counts thp_split_page 1, split[pmd] 1, nr_anon[pmd] 2 -> 1, leaves the queue;
    # pages 1..7 become folios 3..9; page 0 (5) stays in folio 1, page 5 (6) in folio 7,
    # the six zero-filled pages go to the zero page (RSS 16 -> 10).  thp_migration_split 1,
    # thp_migration_fail 1.  The split list [7, 1] is migrated after that batch: folio 7 ->
    # folio 10, folio 1 -> folio 11, order 0, node 1.
    # Folio 2 (next batch): folio 12 of PMD order on node 1, moved whole through a PMD
    # migration entry (thp_migration_success 1, nr_anon[pmd] +1 -1); its queue state
    # (queued, unflagged) passes to folio 12.
    assert folio_ids(s) == [10, 11, 12]
    check(folio(s, 10), **order0(1, 6))
    check(folio(s, 11), **order0(1, 5))
    check(
        folio(s, 12),
        order=3,
        node=1,
        refcount=1,
        entire_mapcount=0,  # one PMD leaf
        large_mapcount=0,
        nr_pages_mapped=ENTIRELY_MAPPED,
        flags=["deferred", "dirty"],  # requeued unflagged; PG_dirty from the dirty PMD
        anon_exclusive=[[True, 1], [False, 7]],  # RMAP_EXCLUSIVE on the head
        data=[[4, 1], [0, 7]],
    )
    assert pte_entry(s, 0, 8) == ["pte", 11, 0, 1, 1, 1]
    assert pte_entry(s, 0, 13) == ["pte", 10, 0, 1, 1, 1]
    assert pte_entry(s, 0, 9) == ["zero"]
    assert pmd_entry(s, 0, 16) == ["leaf", 12, 1, 1, 1]
    assert s["deferred"] == [12]
    check(mm(s, 0), rss_anon=10)
    expect_stats(
        s,
        vm={
            "thp_fault_alloc": 2,
            "thp_split_pmd": 1,  # the frozen split of folio 1's PMD
            "thp_split_page": 1,
            "thp_migration_split": 1,
            "thp_migration_fail": 1,  # migrate_pages_sync() adds the split to the failures
            "thp_migration_success": 1,  # folio 2
        },
        pmd={"anon_fault_alloc": 2, "split": 1, "nr_anon": 1},  # folio 12 only
        node={"nr_anon_mapped": 10, "nr_anon_thps": 8},  # 8 (folio 12) + 2 order-0 pages
    )


def test_pinned_partially_mapped_folio_fails_its_split_on_every_pass(impl3: str) -> None:
    """A pin keeps the deferred split from working: each of the ten passes tries it again,
    then the folio stays where it is."""
    cfg = Config(geometry=8, pud_enabled="never")
    ops: list[Op] = [
        Mmap(0, 8, 8, "rw"),
        Write(0, 8, 5),  # PMD fault: folio 1 over [8, 16)
        Madvise(0, 12, 4, "dontneed"),
        Pin(0, 9),  # pin 1
        Migrate(0, 8, 8, 1),
        Read(0, 8),
    ]
    m, results = run_ops(impl3, cfg, ops)
    assert results == [0, 0, 0, 1, 0, 5]
    s = m.snapshot()
    # MADV_DONTNEED [12, 16): the PMD is split (thp_split_pmd 1, PG_dirty), PTEs 12..15
    # zapped: refcount 4, large 3, partially mapped (thp_deferred_split_page 1,
    # split_deferred[pmd] 1, nr_anon_partially_mapped 1).  The pin: refcount 5, pincount 1.
    # migrate: folio 1 is queued; each pass tries the deferred split, which fails at once
    # (refcount 5 != 3 + 1 expected: split_failed[pmd] +1, thp_split_page_failed +1), then
    # the pinned page cannot be unmapped (-EAGAIN): 3 + 7 passes -> 10 failed splits; after
    # the last, thp_migration_fail 1.  Nothing moves.
    check(
        folio(s, 1),
        order=3,
        node=0,
        refcount=5,
        pincount=1,
        large_mapcount=3,
        flags=["deferred", "dirty", "partially_mapped"],
    )
    assert folio_ids(s) == [1]
    expect_stats(
        s,
        vm={
            "thp_fault_alloc": 1,
            "thp_split_pmd": 1,
            "thp_deferred_split_page": 1,
            "thp_split_page_failed": 10,
            "thp_migration_fail": 1,
        },
        pmd={
            "anon_fault_alloc": 1,
            "split_failed": 10,
            "split_deferred": 1,
            "nr_anon": 1,
            "nr_anon_partially_mapped": 1,
        },
        node={"nr_anon_mapped": 4},
    )
