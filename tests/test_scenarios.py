"""Scenario tests: the RFC selftests T1-T5 and the PMD worked example, expected values by hand.

Each test replays one program of ``corpus/seeds/`` through the reference model, calling
``check_invariants()`` after every op, and compares the results and chosen snapshot fields with
values derived by hand from the kernel rules (docs/model.md, ``kernel-thp-semantics.md`` and the
team's semantic decisions), never from a run of the model.  The comment next to each
expected number gives its derivation; a disagreement means the model or the derivation is
wrong, and the comment says where to look.

Notation in the comments: ``P`` = entries per table (8 small, 512 x86_64), ``N = P*P`` = pages
in a PUD folio (``HPAGE_PUD_NR``), ``B`` = first vpn of the program's window (PUD index 1, so
``B = N``).  Counters are the raw kernel encodings: ``_entire_mapcount``,
``_large_mapcount``, per-page ``_mapcount`` and ``_mm_id_mapcount`` are biased by -1;
``_nr_pages_mapped`` is not.  Page-table pages and folios have separate id counters from 1;
mm k's MM-ID (its folio slot value) is k+1.

Any vmstat / mTHP / node counter a test does not name is expected to be 0: nothing in these
programs counts it (no swap, migration, zero-page allocation or collapse happens).
"""

from __future__ import annotations

from typing import Any

import pytest

from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    ESRCH,
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
    pte_entry,
    pud_entry,
    pud_order,
    run,
)

# One test per program: each scenario is written once, symbolically in P, and runs at both
# geometries; the x86_64 programs take seconds each in the pure-Python reference.


# --------------------------------------------------------------------------------------
# Running a program and reading its snapshots
# --------------------------------------------------------------------------------------


# The state of a PUD folio right after do_huge_pud_anonymous_page, minus data: shared by
# T1, T2, T3 and T5.
def fresh_pud_folio(P: int) -> dict[str, Any]:
    return fresh_huge_folio(pud_order(P), P * P)


# --------------------------------------------------------------------------------------
# T1: basic allocation
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", GEOMETRIES)
def test_pud_basic_alloc(impl: str, P: int) -> None:
    """One fault maps the whole aligned PUD window; munmap gives everything back."""
    N = P * P
    B = N
    res, s = run(impl, f"pud_basic_alloc_{NAMES[P]}.json", at={0, 1, 2, 7})
    assert res == [
        0,  # mmap [B, 2B) rw
        0,  # write B: PUD fault
        0,  # write B+N-1: the PUD leaf is writable, nothing faults
        0,  # read the middle: a new folio is zero-filled
        11,  # read B: written by op 1
        22,  # read B+N-1: written by op 2
        SIGSEGV,  # read B-1: outside every VMA
        0,  # munmap [B, 2B)
        SIGSEGV,  # read B: the VMA is gone
    ]

    # op 0, mmap: VMA only, no page table or folio allocated
    s0 = s[0]
    check(
        mm(s0, 0),
        vmas=[[B, 2 * B, "rw", []]],  # the mmap'ed range, no madvise flags
        rss_anon=0,  # nothing mapped
        pgtables_bytes=PT,  # 4096 x 1: the PUD table, created with the mm
        pud_table=1,  # page-table ids start at 1; mm 0's PUD table is the first
    )
    assert census(s0, 0) == {"pud/live": 1}  # just the PUD table
    assert s0["folios"] == []  # mmap allocates no folio
    assert s0["deferred"] == []  # nothing queued
    expect_stats(s0)  # nothing counted yet

    # op 1, write B: do_huge_pud_anonymous_page (VMA covers [B, B+N) = PUD index 1 exactly)
    s1 = s[1]
    check(
        mm(s1, 0),
        rss_anon=N,  # MM_ANONPAGES += HPAGE_PUD_NR = P*P
        pgtables_bytes=PT * (1 + 1 + P),  # PUD table + deposited PMD table + its P PTE tables
    )
    # the deposit: 1 PMD table on the PUD stack, holding P deposited PTE tables
    assert census(s1, 0) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    assert pud_entry(s1, 0, B) == ["leaf", 1, 1, 1, 1]  # folio 1; write (VMA rw), dirty, young
    assert folio_ids(s1) == [1]  # folio ids start at 1
    check(folio(s1, 1), **fresh_pud_folio(P), data=[[11, 1], [0, N - 1]])  # zeroed, page 0 = 11
    assert s1["deferred"] == [1]  # queued unflagged at fault (shrink_underused)
    expect_stats(
        s1,
        # one PUD fault; the PMD-order thp_fault_alloc is not counted
        vm={"thp_fault_alloc_pud": 1},
        pud={
            "anon_fault_alloc": 1,  # count_mthp_stat(PUD_ORDER, ANON_FAULT_ALLOC)
            "nr_anon": 1,  # folio_add_new_anon_rmap: nr_anon[PUD_ORDER] +1
        },
        node={
            "nr_anon_mapped": N,  # __folio_mod_stat: all N pages newly mapped
            "nr_anon_pud_thps": N,  # the model's NR_ANON_PUD_THPS += N (NR_ANON_THPS untouched)
        },
    )

    # op 2, write B+N-1: the same writable leaf; no second fault, no second folio
    s2 = s[2]
    assert folio_ids(s2) == [1]  # still the one folio
    check(folio(s2, 1), **fresh_pud_folio(P), data=[[11, 1], [0, N - 2], [22, 1]])  # + last page
    assert pud_entry(s2, 0, B) == ["leaf", 1, 1, 1, 1]  # unchanged: no split, no COW
    check(mm(s2, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))  # unchanged from op 1
    expect_stats(  # identical to op 1: exactly one fault for the whole window
        s2,
        vm={"thp_fault_alloc_pud": 1},  # still 1
        pud={"anon_fault_alloc": 1, "nr_anon": 1},  # still 1 and 1
        node={"nr_anon_mapped": N, "nr_anon_pud_thps": N},  # unchanged
    )

    # op 7, munmap the whole window: zap_huge_pud (the leaf is wholly inside the range)
    s7 = s[7]
    check(
        mm(s7, 0),
        vmas=[],  # the only VMA is gone
        rss_anon=0,  # MM_ANONPAGES -= N
        pgtables_bytes=PT,  # deposit withdrawn and freed: -(1+P) tables; PUD table stays
    )
    assert census(s7, 0) == {"pud/live": 1}
    assert pud_entry(s7, 0, B) is None  # pudp_huge_get_and_clear_full
    # folio_remove_rmap_pud: entire 0 -> -1, large 0 -> -1, npm -> 0; the TLB flush drops the
    # last reference (1 -> 0), so the folio is freed and leaves the deferred list
    assert s7["folios"] == []
    assert s7["deferred"] == []
    expect_stats(
        s7,
        vm={"thp_fault_alloc_pud": 1},  # an event count: stays 1
        pud={"anon_fault_alloc": 1},  # event count stays 1; nr_anon 1 -> 0 at free
        # node: nr_anon_mapped N - N = 0 (last entire mapping, no page PTE-mapped);
        # nr_anon_pud_thps N - N = 0; not partially mapped (nothing left mapped), so
        # split_deferred / thp_deferred_split_page stay 0
    )


# --------------------------------------------------------------------------------------
# T2: read/write access
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", GEOMETRIES)
def test_pud_rw_access(impl: str, P: int) -> None:
    """A read fault allocates the PUD folio; writes in several PMD ranges read back; no split."""
    N = P * P
    B = N
    res, s = run(impl, f"pud_rw_access_{NAMES[P]}.json", at={1, 2, 11})
    assert res == [
        0,  # mmap
        0,  # read B: PUD read fault (pud_read_fault=alloc), zero-filled
        0,  # read B+N-1: same leaf, zero
        0,  # write B = 101
        0,  # write B+P = 102 (second PMD range)
        0,  # write B+N-1 = 103
        0,  # write B+N/2-1 = 104
        101,  # read B
        102,  # read B+P
        104,  # read B+N/2-1
        103,  # read B+N-1
        0,  # read B+1: never written
    ]

    # op 1, read B: a read fault on a none PUD allocates and maps the PUD folio
    s1 = s[1]
    check(mm(s1, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))  # as a write fault (see T1)
    assert census(s1, 0) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    # writable iff the VMA is rw (it is), always dirty (map_anon_folio_pmd style), young
    assert pud_entry(s1, 0, B) == ["leaf", 1, 1, 1, 1]
    assert folio_ids(s1) == [1]
    check(folio(s1, 1), **fresh_pud_folio(P), data=[[0, N]])  # zero-filled
    assert s1["deferred"] == [1]
    expect_stats(
        s1,
        vm={"thp_fault_alloc_pud": 1},  # the read fault allocated
        pud={"anon_fault_alloc": 1, "nr_anon": 1},  # +1 each
        node={"nr_anon_mapped": N, "nr_anon_pud_thps": N},  # +N each
        # thp_zero_page_alloc 0: there is no huge zero PUD and the PMD level is never reached
    )

    # op 2, read B+N-1: present leaf, only young is set; nothing allocated
    s2 = s[2]
    assert folio_ids(s2) == [1]
    check(folio(s2, 1), **fresh_pud_folio(P), data=[[0, N]])
    expect_stats(
        s2,
        vm={"thp_fault_alloc_pud": 1},  # still 1
        pud={"anon_fault_alloc": 1, "nr_anon": 1},  # still 1, 1
        node={"nr_anon_mapped": N, "nr_anon_pud_thps": N},  # unchanged
    )

    # op 11: four writes to the writable leaf (no fault, no split) and reads
    s11 = s[11]
    assert folio_ids(s11) == [1]
    check(
        folio(s11, 1),
        **fresh_pud_folio(P),  # counters exactly as at fault: one PUD mapping, no split
        data=[
            [101, 1],  # page 0
            [0, P - 1],  # pages 1 .. P-1
            [102, 1],  # page P
            [0, N // 2 - 2 - P],  # pages P+1 .. N/2-2
            [104, 1],  # page N/2-1
            [0, N // 2 - 1],  # pages N/2 .. N-2
            [103, 1],  # page N-1
        ],
    )
    assert pud_entry(s11, 0, B) == ["leaf", 1, 1, 1, 1]  # still one writable PUD leaf
    check(mm(s11, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))  # unchanged
    assert census(s11, 0) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    expect_stats(  # no thp_split_pud: writes to a writable leaf never split
        s11,
        vm={"thp_fault_alloc_pud": 1},
        pud={"anon_fault_alloc": 1, "nr_anon": 1},
        node={"nr_anon_mapped": N, "nr_anon_pud_thps": N},
    )


# --------------------------------------------------------------------------------------
# T3: fork COW
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", GEOMETRIES)
def test_pud_fork_cow(impl: str, P: int) -> None:
    """fork shares the PUD folio; the child's write splits only the child and copies one page."""
    N = P * P
    B = N
    c = 2 * P  # the page both write (vpn B+c)
    child_pud = 1 + (1 + P) + 1  # ids: mm 0 PUD 1, its deposit 2..P+2; child PUD = P+3
    res, s = run(impl, f"pud_fork_cow_{NAMES[P]}.json", at={2, 3, 4, 8, 9})
    assert res == [
        0,  # mmap
        0,  # write B = 1: PUD fault
        0,  # write B+c = 2
        1,  # fork: the child is mm 1 (next unused id)
        0,  # child write B+c = 3: COW
        3,  # child reads its own write
        1,  # child reads the parent's earlier write through the shared folio
        2,  # parent still sees 2: isolation
        0,  # exit child
        0,  # parent write B+c = 4
        ESRCH,  # the child has exited
        4,  # parent reads its write
        1,  # parent's page 0 unchanged
    ]
    data_before = [[1, 1], [0, c - 1], [2, 1], [0, N - c - 1]]  # pages 0 and c written

    # op 2: the parent's PUD folio as in T1
    s2 = s[2]
    check(folio(s2, 1), **fresh_pud_folio(P), data=data_before)
    check(mm(s2, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))  # PUD fault, see T1

    # op 3, fork: copy_huge_pud with folio_try_dup_anon_rmap at PUD level
    s3 = s[3]
    check(
        mm(s3, 1),
        alive=True,
        vmas=[[B, 2 * B, "rw", []]],  # dup_mmap copies the VMA
        rss_anon=N,  # child MM_ANONPAGES += HPAGE_PUD_NR
        pgtables_bytes=PT * (1 + 1 + P),  # own PUD table + own deposit (1 PMD + P PTE tables)
        pud_table=child_pud,  # allocated with the mm, before copying: id P+3
    )
    check(mm(s3, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))  # parent unchanged
    assert census(s3, 1) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    assert census(s3, 0) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    assert pud_entry(s3, 0, B) == ["leaf", 1, 0, 1, 1]  # pudp_set_wrprotect; dirty, young kept
    assert pud_entry(s3, 1, B) == ["leaf", 1, 0, 1, 0]  # pud_wrprotect(pud_mkold()); dirty kept
    assert folio_ids(s3) == [1]  # shared, not copied
    check(
        folio(s3, 1),
        order=pud_order(P),
        refcount=2,  # folio_get for the child's mapping: 1 + 1
        entire_mapcount=1,  # _entire_mapcount++: two PUD mappings, raw 0 + 1
        large_mapcount=1,  # folio_inc_large_mapcount: raw 0 + 1
        nr_pages_mapped=ENTIRELY_MAPPED,  # dup never touches _nr_pages_mapped
        mm_id=[1, 2],  # the child (MM-ID 1+1 = 2) takes the empty slot 1
        mm_id_mapcount=[0, 0],  # slot 1 taken with count diff-1 = 0
        shared=True,  # slot taken while the folio had other mappings: SHARED set
        flags=["deferred"],  # unchanged
        mapcount=[[-1, N]],  # per-page counts untouched
        anon_exclusive=[[False, N]],  # ClearPageAnonExclusive(head)
        data=data_before,
    )
    expect_stats(  # fork changes no statistic
        s3,
        vm={"thp_fault_alloc_pud": 1},
        pud={"anon_fault_alloc": 1, "nr_anon": 1},
        node={"nr_anon_mapped": N, "nr_anon_pud_thps": N},
    )

    # op 4, child write to its read-only PUD leaf: head not AnonExclusive and refcount 2 != 1,
    # so __split_huge_pud_locked (child only), then do_wp_page on the PTE of page c: not
    # AnonExclusive, and __wp_can_reuse_large_anon_folio fails (SHARED set) -> wp_page_copy
    s4 = s[4]
    check(
        mm(s4, 1),
        rss_anon=N,  # split keeps RSS; wp_page_copy replaces anon with anon
        pgtables_bytes=PT * (2 + P),  # split: deposited tables become live, same count
    )
    check(mm(s4, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))  # parent untouched
    assert census(s4, 1) == {"pud/live": 1, "pmd/live": 1, "pte/live": P}
    assert census(s4, 0) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    assert pud_entry(s4, 1, B) == ["table", child_pud + 1]  # the popped PMD table, id P+4
    assert pud_entry(s4, 0, B) == ["leaf", 1, 0, 1, 1]  # the parent keeps its PUD leaf
    assert pte_entry(s4, 1, B + c) == ["pte", 2, 0, 1, 1, 1]  # the copy: writable, dirty, young
    assert pte_entry(s4, 1, B) == ["pte", 1, 0, 0, 1, 0]  # split copies the leaf: RO, dirty, old
    assert folio_ids(s4) == [1, 2]
    check(
        folio(s4, 1),
        refcount=N,  # 2 + (N-1) (split, folio_ref_add) - 1 (COW drops page c's reference)
        entire_mapcount=0,  # 1 -> 0: the parent's PUD mapping remains
        large_mapcount=N - 1,  # raw 1 + N (PTE rmaps) - 1 (PUD rmap) - 1 (COW) = N-1
        # N pages got _mapcount 0 while ENTIRELY_MAPPED stays set (parent's PUD), then page c
        # went back to -1: 0x800000 + N - 1
        nr_pages_mapped=ENTIRELY_MAPPED + N - 1,
        mm_id=[1, 2],  # unchanged
        mm_id_mapcount=[0, N - 2],  # child slot 0 + N - 1 (split) - 1 (COW) = N-2
        shared=True,  # sticky: no slot was freed
        flags=["deferred", "dirty"],  # the child's leaf was dirty: folio_set_dirty at split
        mapcount=[[0, c], [-1, 1], [0, N - c - 1]],  # every page 0 after split, page c -1
        anon_exclusive=[[False, N]],  # copied from the head, which fork cleared
        data=data_before,  # the child's write went to the copy
    )
    check(
        folio(s4, 2),  # wp_page_copy's new order-0 folio
        order=0,
        node=0,
        refcount=1,  # the allocation reference is the PTE's
        pincount=0,
        entire_mapcount=-1,  # small folios use none of the large-folio counters:
        large_mapcount=-1,  # they stay at their initial values
        nr_pages_mapped=0,
        mm_id=[0, 0],
        mm_id_mapcount=[-1, -1],
        shared=False,
        flags=[],  # order 0 is never queued; the PTE is dirty, the folio flag is not set
        mapcount=[[0, 1]],  # folio_add_new_anon_rmap: _mapcount 0
        anon_exclusive=[[True, 1]],  # RMAP_EXCLUSIVE
        data=[[3, 1]],  # copy of page c (2), then the child's write of 3
    )
    assert s4["deferred"] == [1]  # no partial mapping: ENTIRELY_MAPPED is still set
    expect_stats(
        s4,
        vm={
            "thp_fault_alloc_pud": 1,  # unchanged
            "thp_split_pud": 1,  # the child's PUD split
        },
        pud={"anon_fault_alloc": 1, "nr_anon": 1},  # the PUD folio lives on; split is a folio split
        node={
            # PTE rmaps add nr 0 (still entire-mapped), PUD rmap removal not the last: 0;
            # the new order-0 folio adds 1: N + 1
            "nr_anon_mapped": N + 1,
            "nr_anon_pud_thps": N,  # the parent's PUD mapping still counts (entire >= 0)
        },
    )

    # op 8, exit the child: zap its N-1 PTEs of folio 1 and the copy, free every table
    s8 = s[8]
    check(
        mm(s8, 1),
        alive=False,
        vmas=[],  # exit_mmap removes every VMA
        rss_anon=0,  # check_mm: all RSS counters 0
        pgtables_bytes=0,  # every page table freed, the PUD table included
    )
    assert census(s8, 1) == {}
    assert folio_ids(s8) == [1]  # the copy's refcount 1 -> 0: freed
    check(
        folio(s8, 1),
        refcount=1,  # N - (N-1) PTE references: only the parent's PUD mapping
        entire_mapcount=0,  # the parent's PUD
        large_mapcount=0,  # N-1 - (N-1)
        nr_pages_mapped=ENTIRELY_MAPPED,  # every per-page _mapcount back to -1
        mm_id=[1, 0],  # the child's slot count went below 0: slot freed
        mm_id_mapcount=[0, -1],
        shared=False,  # slot freed and slot 0 (raw 0) equals the new total (raw 0): cleared
        flags=["deferred", "dirty"],  # never partially mapped (ENTIRELY_MAPPED kept nr at 0)
        mapcount=[[-1, N]],
        anon_exclusive=[[False, N]],
        data=data_before,
    )
    assert s8["deferred"] == [1]
    expect_stats(
        s8,
        vm={"thp_fault_alloc_pud": 1, "thp_split_pud": 1},  # unchanged
        pud={"anon_fault_alloc": 1, "nr_anon": 1},  # unchanged: nr_anon counts no order 0
        node={
            "nr_anon_mapped": N,  # N + 1 - 1 (the copy); PTE removals gave nr 0
            "nr_anon_pud_thps": N,  # the parent's PUD
        },
    )

    # op 9, parent write to its read-only PUD leaf: head not AnonExclusive but refcount 1,
    # so do_huge_pud_wp_page reuses it in place (pud_wp_reuse): no split
    s9 = s[9]
    assert pud_entry(s9, 0, B) == ["leaf", 1, 1, 1, 1]  # made writable, dirty, young
    check(mm(s9, 0), rss_anon=N, pgtables_bytes=PT * (2 + P))  # unchanged
    assert census(s9, 0) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    check(
        folio(s9, 1),
        refcount=1,  # unchanged
        entire_mapcount=0,  # unchanged
        large_mapcount=0,  # unchanged
        nr_pages_mapped=ENTIRELY_MAPPED,  # unchanged
        mm_id=[1, 0],
        mm_id_mapcount=[0, -1],
        shared=False,
        flags=["deferred", "dirty"],
        mapcount=[[-1, N]],
        anon_exclusive=[[True, 1], [False, N - 1]],  # reuse: SetPageAnonExclusive(head)
        data=[[1, 1], [0, c - 1], [4, 1], [0, N - c - 1]],  # page c now 4
    )
    expect_stats(
        s9,
        vm={"thp_fault_alloc_pud": 1, "thp_split_pud": 1},  # still 1: the parent never split
        pud={"anon_fault_alloc": 1, "nr_anon": 1},
        node={"nr_anon_mapped": N, "nr_anon_pud_thps": N},
    )


# --------------------------------------------------------------------------------------
# T4: partial munmap
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", GEOMETRIES)
def test_pud_partial_munmap(impl: str, P: int) -> None:
    """munmap of one PMD range inside the leaf: PUD split, zap, partial mapping, shrinker."""
    N = P * P
    B = N
    D = 3 * P + 2  # the page written with 6
    small = P == 8
    at = {3, 4, 11} | ({12, 18} if small else set())
    res, s = run(impl, f"pud_partial_munmap_{NAMES[P]}.json", at=at)
    expected = [
        0,  # mmap
        0,  # write B = 5: PUD fault
        0,  # write B+D = 6
        0,  # write B+N-1 = 7
        0,  # munmap [B+P, B+2P)
        SIGSEGV,  # read B+P: unmapped
        SIGSEGV,  # read B+2P-1: unmapped
        5,  # read B: data preserved through the split
        6,  # read B+D
        7,  # read B+N-1
        0,  # read B+P-1: mapped, never written
        0,  # write B+2P = 8: the PTE is writable (copied from the leaf), no fault
    ]
    if small:
        expected += [
            1,  # shrink_deferred: one partially mapped folio split
            5,  # read B: kept in its own order-0 folio
            0,  # read B+1: now the shared zero page
            8,  # read B+2P
            6,  # read B+D
            7,  # read B+N-1
            SIGSEGV,  # read B+P: still unmapped
        ]
    else:
        expected += [8]  # read B+2P
    assert res == expected

    s3 = s[3]
    check(
        folio(s3, 1),
        **fresh_pud_folio(P),
        data=[[5, 1], [0, D - 1], [6, 1], [0, N - D - 2], [7, 1]],
    )

    # op 4, munmap [B+P, B+2P): the VMA split points are strictly inside the PUD leaf, so it
    # is split to PTEs first (one thp_split_pud), then the P PTEs of that range are zapped
    # as one batch (one PTE table, one folio)
    s4 = s[4]
    check(
        mm(s4, 0),
        vmas=[[B, B + P, "rw", []], [B + 2 * P, 2 * B, "rw", []]],  # the hole in the middle
        rss_anon=N - P,  # split keeps N; the zap removes P
        # split: no change; free_pgtables frees the PTE table of [B+P, B+2P) (no VMA left in
        # its range): 4096*(2+P) - 4096
        pgtables_bytes=PT * (1 + P),
    )
    assert census(s4, 0) == {"pud/live": 1, "pmd/live": 1, "pte/live": P - 1}
    assert pud_entry(s4, 0, B) == ["table", 2]  # the popped deposit PMD table (id 2) is live
    assert pmd_entry(s4, 0, B + P) is None  # its PTE table was freed
    check(
        folio(s4, 1),
        refcount=N - P,  # 1 + (N-1) at split - P zapped references
        entire_mapcount=-1,  # the only PUD mapping was removed by the split
        large_mapcount=N - P - 1,  # raw 0 + N - 1 (split) - P (zap)
        nr_pages_mapped=N - P,  # N PTE-mapped after split, ENTIRELY_MAPPED removed; -P
        mm_id=[1, 0],
        mm_id_mapcount=[N - P - 1, -1],  # slot 0: 0 + N - 1 - P
        shared=False,
        # dirty: the leaf was dirty, folio_set_dirty at split; partially_mapped: the zap's
        # folio_remove_rmap_ptes had nr = P with pages still mapped and no entire mapping
        flags=["deferred", "dirty", "partially_mapped"],
        mapcount=[[0, P], [-1, P], [0, N - 2 * P]],  # pages P .. 2P-1 unmapped
        # AnonExclusive copied from the head to every page at split; zapping a page does not
        # clear PG_anon_exclusive (only the folio split / free does)
        anon_exclusive=[[True, N]],
        data=[[5, 1], [0, D - 1], [6, 1], [0, N - D - 2], [7, 1]],  # contents stay in the folio
    )
    assert s4["deferred"] == [1]  # queued since fault; flagged now
    expect_stats(
        s4,
        vm={
            "thp_fault_alloc_pud": 1,
            "thp_split_pud": 1,  # the one PUD split
            "thp_deferred_split_page": 1,  # first partially_mapped flag, order >= PMD order
        },
        pud={
            "anon_fault_alloc": 1,
            "nr_anon": 1,  # the folio lives
            "split_deferred": 1,  # deferred_split_folio(folio, true)
            "nr_anon_partially_mapped": 1,  # flag set once
        },
        node={
            "nr_anon_mapped": N - P,  # split: 0 net; zap: nr = P pages left unmapped
            # split removed the last entire mapping: N - N = 0 (NR_ANON_THPS never counted it)
        },
    )

    # op 11, write B+2P: PTE writable (leaf was writable, head AnonExclusive) -> no fault
    s11 = s[11]
    assert pte_entry(s11, 0, B + 2 * P) == ["pte", 1, 2 * P, 1, 1, 1]
    check(
        folio(s11, 1),
        refcount=N - P,  # unchanged by the write
        large_mapcount=N - P - 1,  # unchanged
        nr_pages_mapped=N - P,  # unchanged
        flags=["deferred", "dirty", "partially_mapped"],
        data=[[5, 1], [0, 2 * P - 1], [8, 1], [0, D - 2 * P - 1], [6, 1], [0, N - D - 2], [7, 1]],
    )
    check(mm(s11, 0), rss_anon=N - P, pgtables_bytes=PT * (1 + P))  # unchanged

    if not small:
        return

    # op 12, shrink_deferred (small only): folio 1 is partially mapped -> split_folio to order
    # 0.  refcount N-P equals the expected count (mapcount N-P) so the split goes ahead:
    # every PTE becomes a migration entry, the folio splits into N order-0 folios, the P
    # unmapped ones are freed, mapped zero-filled ones are remapped to the shared zero page
    # (RSS -1 each) and freed, and the 4 with data (pages 0, 2P, D, N-1) stay mapped
    s12 = s[12]
    check(
        mm(s12, 0),
        rss_anon=4,  # N - P mapped, minus (N - P - 4) zero-filled pages on the zero page
        pgtables_bytes=PT * (1 + P),  # a folio split allocates or frees no page table
        vmas=[[B, B + P, "rw", []], [B + 2 * P, 2 * B, "rw", []]],
    )
    assert s12["deferred"] == []  # unqueued under the split (flag cleared)
    survivors = sorted(s12["folios"], key=lambda f: f["data"][0][0])
    assert [f["data"] for f in survivors] == [[[5, 1]], [[6, 1]], [[7, 1]], [[8, 1]]]
    for f in survivors:
        check(
            f,
            order=0,  # uniform split to order 0
            node=0,
            refcount=1,  # one PTE mapping; the split's own reference was dropped
            pincount=0,
            entire_mapcount=-1,  # order-0 folios keep the large counters at initial values
            large_mapcount=-1,
            nr_pages_mapped=0,
            mm_id=[0, 0],
            mm_id_mapcount=[-1, -1],
            shared=False,
            flags=["dirty"],  # PG_dirty copied to the new folios; order 0 is never queued
            mapcount=[[0, 1]],  # remapped once (remove_migration_pte)
            anon_exclusive=[[True, 1]],  # the migration entry was writable: RMAP_EXCLUSIVE
        )
    assert pte_entry(s12, 0, B + 1) == ["zero"]  # zero-filled page 1 -> shared zero page
    e = pte_entry(s12, 0, B + 2 * P)
    assert e is not None
    assert e[0] == "pte"
    assert e[2:] == [0, 1, 1, 1]  # page 0 of its order-0 folio; write, dirty, young restored
    expect_stats(
        s12,
        vm={
            "thp_fault_alloc_pud": 1,
            "thp_split_pud": 1,  # no PUD leaf was left to split
            "thp_deferred_split_page": 1,
            # thp_split_page 0: counted only when the old order is the PMD order
        },
        pud={
            "anon_fault_alloc": 1,
            "split": 1,  # one successful folio split of the PUD order
            "split_deferred": 1,  # event count, unchanged
            # nr_anon 1 -> 0 (old order -1; order 0 has no row); nr_anon_partially_mapped
            # 1 -> 0 (unqueued)
        },
        node={"nr_anon_mapped": 4},  # unmap_folio -(N-P), then +1 per remapped order-0 folio
    )

    # op 18, after reads (one of them of a zero-page PTE): nothing is allocated
    s18 = s[18]
    check(mm(s18, 0), rss_anon=4)  # a read of the zero page maps nothing new
    assert len(s18["folios"]) == 4  # still the four survivors
    expect_stats(
        s18,
        vm={"thp_fault_alloc_pud": 1, "thp_split_pud": 1, "thp_deferred_split_page": 1},
        pud={"anon_fault_alloc": 1, "split": 1, "split_deferred": 1},
        node={"nr_anon_mapped": 4},
    )


# --------------------------------------------------------------------------------------
# T5: mprotect split
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("P", GEOMETRIES)
def test_pud_mprotect_split(impl: str, P: int) -> None:
    """Whole-leaf mprotect changes the PUD in place; a sub-range mprotect splits it."""
    N = P * P
    B = N
    w = P + 3  # a page inside the mprotected PMD range [P, 2P)
    E = 4 * P + 4  # a page outside it
    res, s = run(impl, f"pud_mprotect_split_{NAMES[P]}.json", at={2, 4, 5, 6, 11, 16})
    assert res == [
        0,  # mmap
        0,  # write B = 9: PUD fault
        0,  # mprotect [B, 2B) r
        SIGSEGV,  # write B: VMA is read-only
        0,  # mprotect [B, 2B) rw
        0,  # write B+w = 10: wp fault on the read-only leaf, reused
        0,  # mprotect [B+P, B+2P) r
        SIGSEGV,  # write B+w: inside the read-only range
        10,  # read B+w: data preserved
        0,  # write B = 12: outside the range
        0,  # write B+E = 13: outside the range
        0,  # mprotect [B+P, B+2P) rw
        0,  # write B+w = 14
        12,  # read B
        14,  # read B+w
        13,  # read B+E
        0,  # read B+P: never written
    ]
    fault_stats = {
        "vm": {"thp_fault_alloc_pud": 1},
        "pud": {"anon_fault_alloc": 1, "nr_anon": 1},
        "node": {"nr_anon_mapped": N, "nr_anon_pud_thps": N},
    }  # the PUD fault, as in T1

    # op 2, mprotect the whole window r: change_huge_pud in place, no split
    s2 = s[2]
    check(mm(s2, 0), vmas=[[B, 2 * B, "r", []]], rss_anon=N, pgtables_bytes=PT * (2 + P))
    assert pud_entry(s2, 0, B) == ["leaf", 1, 0, 1, 1]  # pud_modify: RO, dirty/young kept
    assert census(s2, 0) == {"pud/live": 1, "pmd/deposited": 1, "pte/deposited": P}
    check(folio(s2, 1), **fresh_pud_folio(P), data=[[9, 1], [0, N - 1]])  # untouched
    expect_stats(s2, **fault_stats)  # no thp_split_pud

    # op 4, mprotect back to rw: change_huge_pud never upgrades a PUD to writable
    s4 = s[4]
    check(mm(s4, 0), vmas=[[B, 2 * B, "rw", []]])
    assert pud_entry(s4, 0, B) == ["leaf", 1, 0, 1, 1]  # still read-only
    expect_stats(s4, **fault_stats)

    # op 5, write B+w: wp fault on the read-only leaf; head AnonExclusive -> reuse, no split
    s5 = s[5]
    assert pud_entry(s5, 0, B) == ["leaf", 1, 1, 1, 1]  # made writable in place
    check(
        folio(s5, 1),
        **fresh_pud_folio(P),  # counters unchanged: refcount 1, entire 0, head exclusive
        data=[[9, 1], [0, w - 1], [10, 1], [0, N - w - 1]],
    )
    expect_stats(s5, **fault_stats)  # thp_split_pud still 0

    # op 6, mprotect [B+P, B+2P) r: VMA split points strictly inside the leaf -> PUD split to
    # PTEs (__split_huge_pud_locked), then the P PTEs of that range write-protected
    s6 = s[6]
    check(
        mm(s6, 0),
        vmas=[[B, B + P, "rw", []], [B + P, B + 2 * P, "r", []], [B + 2 * P, 2 * B, "rw", []]],
        rss_anon=N,  # a split keeps RSS
        pgtables_bytes=PT * (2 + P),  # deposited tables become live: same count
    )
    assert census(s6, 0) == {"pud/live": 1, "pmd/live": 1, "pte/live": P}
    assert pud_entry(s6, 0, B) == ["table", 2]  # the popped deposit PMD table, id 2
    assert pte_entry(s6, 0, B + w) == ["pte", 1, w, 0, 1, 1]  # write-protected by mprotect
    assert pte_entry(s6, 0, B) == ["pte", 1, 0, 1, 1, 1]  # outside: write/dirty/young from leaf
    split_folio = {
        "refcount": N,  # 1 + (N - 1): one reference per PTE
        "entire_mapcount": -1,  # 0 -> -1: the PUD mapping is gone
        "large_mapcount": N - 1,  # raw 0 + N - 1
        "nr_pages_mapped": N,  # 0x800000 + N, then ENTIRELY_MAPPED removed
        "mm_id": [1, 0],
        "mm_id_mapcount": [N - 1, -1],  # slot 0: 0 + N - 1
        "shared": False,
        "flags": ["deferred", "dirty"],  # folio_set_dirty (dirty leaf); not partially mapped
        "mapcount": [[0, N]],  # every page PTE-mapped once
        "anon_exclusive": [[True, N]],  # copied from the exclusive head
    }
    check(folio(s6, 1), **split_folio, data=[[9, 1], [0, w - 1], [10, 1], [0, N - w - 1]])
    assert s6["deferred"] == [1]  # still queued unflagged from fault
    expect_stats(
        s6,
        vm={"thp_fault_alloc_pud": 1, "thp_split_pud": 1},  # one PUD split
        pud={"anon_fault_alloc": 1, "nr_anon": 1},  # no folio split, nothing partial
        node={
            "nr_anon_mapped": N,  # PTE add gives nr 0, PUD removal nr = N - N = 0
            # nr_anon_pud_thps N -> 0: the last entire mapping is gone
        },
    )

    # op 11, mprotect the middle back to rw: VMAs merge (one anon_vma), and each PTE is made
    # writable because its page is AnonExclusive
    s11 = s[11]
    check(mm(s11, 0), vmas=[[B, 2 * B, "rw", []]], rss_anon=N, pgtables_bytes=PT * (2 + P))
    assert pte_entry(s11, 0, B + w) == ["pte", 1, w, 1, 1, 1]
    check(
        folio(s11, 1),
        **split_folio,  # unchanged by mprotect and by writes to writable PTEs
        data=[[12, 1], [0, w - 1], [10, 1], [0, E - w - 1], [13, 1], [0, N - E - 1]],
    )

    # op 16: the last write landed without a fault; the counters are those of the split
    s16 = s[16]
    check(
        folio(s16, 1),
        **split_folio,
        data=[[12, 1], [0, w - 1], [14, 1], [0, E - w - 1], [13, 1], [0, N - E - 1]],
    )
    check(mm(s16, 0), vmas=[[B, 2 * B, "rw", []]], rss_anon=N, pgtables_bytes=PT * (2 + P))
    assert folio_ids(s16) == [1]  # no COW copy was ever made
    expect_stats(
        s16,
        vm={"thp_fault_alloc_pud": 1, "thp_split_pud": 1},
        pud={"anon_fault_alloc": 1, "nr_anon": 1},
        node={"nr_anon_mapped": N},
    )


# --------------------------------------------------------------------------------------
# kernel-thp-semantics.md section 7: the PMD worked example, steps 1-5, at x86_64
# --------------------------------------------------------------------------------------


@pytest.mark.slow
def test_worked_example_pmd_x86_64(impl: str) -> None:
    """A faults a PMD THP, forks B, B COWs page 1, A munmaps, B reuses page 2."""
    res, s = run(impl, "worked_example_pmd_x86_64.json", at={1, 2, 3, 4, 5})
    assert res == [
        0,  # mmap [512, 1024) rw
        0,  # step 1: A writes 512 = 1
        1,  # step 2: fork, B is mm 1
        0,  # step 3: B writes page 1 (513) = 2
        0,  # step 4: A munmaps [512, 1024)
        0,  # step 5: B writes page 2 (514) = 3
        1,  # B reads page 0: A's write, inherited
        2,  # B reads page 1: its copy
        3,  # B reads page 2: reused in place
        0,  # B reads page 3: never written
        SIGSEGV,  # A's range is unmapped
    ]

    # step 1: pud_enabled=never -> fallback installs a PMD table (id 2) under PUD entry 0,
    # then do_huge_pmd_anonymous_page: folio 1 (order 9), one deposited PTE table (id 3)
    s1 = s[1]
    check(
        mm(s1, 0),
        rss_anon=512,  # MM_ANONPAGES += HPAGE_PMD_NR
        pgtables_bytes=3 * PT,  # PUD table + PMD table + deposited PTE table = 12288
        pud_table=1,
    )
    assert census(s1, 0) == {"pud/live": 1, "pmd/live": 1, "pte/deposited": 1}
    assert pud_entry(s1, 0, 512) == ["table", 2]
    assert pmd_entry(s1, 0, 512) == ["leaf", 1, 1, 1, 1]  # writable, dirty, young
    check(
        folio(s1, 1),
        order=9,  # PMD_ORDER at P=512
        node=0,
        refcount=1,  # F.ref 1
        pincount=0,
        entire_mapcount=0,  # entire 1 (raw 0)
        large_mapcount=0,  # map 1 (raw 0)
        nr_pages_mapped=ENTIRELY_MAPPED,  # npm 0x800000
        mm_id=[1, 0],  # slots [A:1, -]
        mm_id_mapcount=[0, -1],
        shared=False,  # SHARED 0
        flags=["deferred"],  # queued, not partial
        mapcount=[[-1, 512]],  # page _mapcounts all -1
        anon_exclusive=[[True, 1], [False, 511]],  # head only
        data=[[1, 1], [0, 511]],
    )
    assert s1["deferred"] == [1]
    expect_stats(
        s1,
        vm={"thp_fault_alloc": 1},  # map_anon_folio_pmd_pf
        pmd={"anon_fault_alloc": 1, "nr_anon": 1},  # anon_fault_alloc[2048kB], nr_anon[9]
        node={"nr_anon_mapped": 512, "nr_anon_thps": 512},  # NR_ANON_MAPPED/THPS +512
        # PUD order was not allowed (never): no PUD fallback counted
    )

    # step 2: fork -> B.  B: PUD table (id 4), PMD table (id 5) by pmd_alloc in
    # copy_pmd_range, then copy_huge_pmd deposits a fresh PTE table (id 6)
    s2 = s[2]
    check(
        mm(s2, 1),
        alive=True,
        vmas=[[512, 1024, "rw", []]],
        rss_anon=512,  # RSS(B) 512
        pgtables_bytes=3 * PT,  # PUD + PMD + dep(B) 1
        pud_table=4,
    )
    assert census(s2, 1) == {"pud/live": 1, "pmd/live": 1, "pte/deposited": 1}
    assert pud_entry(s2, 1, 512) == ["table", 5]
    assert pmd_entry(s2, 0, 512) == ["leaf", 1, 0, 1, 1]  # pmdp_set_wrprotect
    assert pmd_entry(s2, 1, 512) == ["leaf", 1, 0, 1, 0]  # pmd_wrprotect(pmd_mkold())
    check(
        folio(s2, 1),
        refcount=2,  # ref 2
        entire_mapcount=1,  # entire 2
        large_mapcount=1,  # map 2
        nr_pages_mapped=ENTIRELY_MAPPED,  # npm unchanged
        mm_id=[1, 2],  # slots [A:1, B:1]
        mm_id_mapcount=[0, 0],
        shared=True,  # SHARED 1
        flags=["deferred"],
        mapcount=[[-1, 512]],
        anon_exclusive=[[False, 512]],  # head AnonExclusive cleared
    )
    expect_stats(  # statistics unchanged
        s2,
        vm={"thp_fault_alloc": 1},
        pmd={"anon_fault_alloc": 1, "nr_anon": 1},
        node={"nr_anon_mapped": 512, "nr_anon_thps": 512},
    )

    # step 3: B writes page 1: not exclusive and ref 2 > 1 -> split B's PMD (non-freeze),
    # then COW of page 1 into a new order-0 folio (id 2)
    s3 = s[3]
    check(mm(s3, 1), rss_anon=512, pgtables_bytes=3 * PT)  # RSS(B) 512; dep(B) 0 but live
    assert census(s3, 1) == {"pud/live": 1, "pmd/live": 1, "pte/live": 1}
    assert pmd_entry(s3, 1, 512) == ["table", 6]  # the withdrawn deposit is the PTE table
    assert pmd_entry(s3, 0, 512) == ["leaf", 1, 0, 1, 1]  # A keeps its PMD
    assert pte_entry(s3, 1, 512) == ["pte", 1, 0, 0, 1, 0]  # split: RO, dirty, old
    assert pte_entry(s3, 1, 513) == ["pte", 2, 0, 1, 1, 1]  # the copy
    assert pte_entry(s3, 1, 514) == ["pte", 1, 2, 0, 1, 0]
    check(
        folio(s3, 1),
        refcount=512,  # 2 + 511 (split) - 1 (COW) = 512
        entire_mapcount=0,  # entire 1
        large_mapcount=511,  # map 512 = 1 PMD + 511 PTEs
        nr_pages_mapped=ENTIRELY_MAPPED + 511,  # 0x800000 + 512 - 1
        mm_id=[1, 2],
        mm_id_mapcount=[0, 510],  # [A:1, B:511]: B 0 + 511 (split) - 1 (COW)
        shared=True,
        flags=["deferred", "dirty"],  # B's PMD was dirty: folio_set_dirty at split
        mapcount=[[0, 1], [-1, 1], [0, 510]],  # all 0, page 1 back to -1
        anon_exclusive=[[False, 512]],  # copied from the non-exclusive head
        data=[[1, 1], [0, 511]],  # B's 2 went to the copy
    )
    check(
        folio(s3, 2),
        order=0,
        refcount=1,
        entire_mapcount=-1,  # unused by small folios: initial values
        large_mapcount=-1,
        nr_pages_mapped=0,
        mm_id=[0, 0],
        mm_id_mapcount=[-1, -1],
        shared=False,
        flags=[],
        mapcount=[[0, 1]],
        anon_exclusive=[[True, 1]],
        data=[[2, 1]],
    )
    expect_stats(
        s3,
        vm={"thp_fault_alloc": 1, "thp_split_pmd": 1},  # THP_SPLIT_PMD +1
        pmd={"anon_fault_alloc": 1, "nr_anon": 1},  # not partially mapped: ENTIRELY_MAPPED set
        node={
            "nr_anon_mapped": 513,  # +1 for the new 4 KiB folio
            "nr_anon_thps": 512,  # unchanged: A still maps the PMD
        },
    )

    # step 4: A munmaps the 2 MiB: zap_huge_pmd of A's leaf, then free_pgtables
    s4 = s[4]
    check(
        mm(s4, 0),
        vmas=[],
        rss_anon=0,  # RSS(A) 0
        # dep(A) withdrawn and freed (-4096); the PMD table has no VMA left in its range
        # and is freed (-4096); the PUD table stays with the mm
        pgtables_bytes=PT,
    )
    assert census(s4, 0) == {"pud/live": 1}
    assert pud_entry(s4, 0, 512) is None
    check(
        folio(s4, 1),
        refcount=511,  # after the TLB flush
        entire_mapcount=-1,  # entire 0
        large_mapcount=510,  # map 511
        nr_pages_mapped=511,  # ENTIRELY_MAPPED removed: pages still PTE-mapped in B
        mm_id=[0, 2],  # A's slot freed
        mm_id_mapcount=[-1, 510],
        shared=False,  # slot freed and B's slot (510) equals the new total (510)
        flags=["deferred", "dirty", "partially_mapped"],  # nr = 1 < nr_pmdmapped 512
        mapcount=[[0, 1], [-1, 1], [0, 510]],
        anon_exclusive=[[False, 512]],
        data=[[1, 1], [0, 511]],
    )
    assert s4["deferred"] == [1]
    expect_stats(
        s4,
        vm={
            "thp_fault_alloc": 1,
            "thp_split_pmd": 1,
            "thp_deferred_split_page": 1,  # THP_DEFERRED_SPLIT_PAGE +1
        },
        pmd={
            "anon_fault_alloc": 1,
            "nr_anon": 1,
            "split_deferred": 1,  # split_deferred[2048kB] +1
            "nr_anon_partially_mapped": 1,  # nr_anon_partially_mapped[2048kB] = 1
        },
        node={
            "nr_anon_mapped": 512,  # -1 for page 1, which no one maps: 511 + the copy
            # nr_anon_thps 512 - 512 = 0: the last PMD mapping is gone
        },
    )

    # step 5: B writes page 2: SHARED clear and map 511 == ref 511 -> reuse in place
    s5 = s[5]
    assert pte_entry(s5, 1, 514) == ["pte", 1, 2, 1, 1, 1]  # writable, dirty, young
    check(
        folio(s5, 1),
        refcount=511,  # no count changes
        entire_mapcount=-1,
        large_mapcount=510,
        nr_pages_mapped=511,
        mm_id=[0, 2],
        mm_id_mapcount=[-1, 510],
        shared=False,
        flags=["deferred", "dirty", "partially_mapped"],
        mapcount=[[0, 1], [-1, 1], [0, 510]],
        anon_exclusive=[[False, 2], [True, 1], [False, 509]],  # page 2 becomes AnonExclusive
        data=[[1, 1], [0, 1], [3, 1], [0, 509]],
    )
    check(mm(s5, 1), rss_anon=512, pgtables_bytes=3 * PT)  # unchanged
    assert folio_ids(s5) == [1, 2]
    expect_stats(  # no counts change
        s5,
        vm={"thp_fault_alloc": 1, "thp_split_pmd": 1, "thp_deferred_split_page": 1},
        pmd={
            "anon_fault_alloc": 1,
            "nr_anon": 1,
            "split_deferred": 1,
            "nr_anon_partially_mapped": 1,
        },
        node={"nr_anon_mapped": 512},
    )
