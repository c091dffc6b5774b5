"""COW reuse decisions: do_huge_pmd_wp_page's reuse test (``huge_wp_reuse``, also used for the
PUD leaf), ``__wp_can_reuse_large_anon_folio`` and ``wp_can_reuse_anon_folio`` (mm/memory.c),
and the background note's worked example at P=4.

Expected values are derived by hand from ``kernel-thp-semantics.md`` 1.7, 1.9, 3.2, 3.3, 3.4
and section 7, and from docs/model.md 7.5, never from a run of the model.  Raw kernel encodings:
``_entire_mapcount``, ``_large_mapcount``, per-page ``_mapcount`` and slot counts are biased
by -1.  mm k has MM-ID k+1.  At P=4 a PMD folio has 4 pages, a PUD folio 16.
"""

from __future__ import annotations

import pytest
from statebuild import EM, PMD_ORDER, PUD_ORDER, P, alloc, new_mm, new_state

from pudthp_ref.folio import folio_get
from pudthp_ref.huge_memory import huge_wp_reuse
from pudthp_ref.memory import __wp_can_reuse_large_anon_folio, wp_can_reuse_anon_folio
from pudthp_ref.mm_types import Folio, MmState, MmStruct
from pudthp_ref.model import RefModel
from pudthp_ref.rmap import LEVEL_PTE, folio_add_anon_rmap, folio_add_new_anon_rmap
from pudthp_ref.spec import (
    PAGE_TABLE_BYTES,
    Config,
    Exit,
    Fork,
    Mmap,
    Mprotect,
    Munmap,
    Read,
    Write,
)

# --------------------------------------------------------------------------------------
# do_huge_pmd_wp_page's reuse test (background 3.3 steps 2-6), on hand-built folios
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [PMD_ORDER, PUD_ORDER])
def test_huge_wp_reuse_head_exclusive_even_when_pinned(order: int) -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, order)
    folio_add_new_anon_rmap(st, f, a)  # head AE
    f.pincount, f.refcount = 1, 2  # a FOLL_PIN: step 2 does not look at the refcount
    assert huge_wp_reuse(st, f) is True
    assert f.anon_exclusive[0] is True


@pytest.mark.parametrize("order", [PMD_ORDER, PUD_ORDER])
def test_huge_wp_reuse_refcount_one_makes_head_exclusive(order: int) -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, order)
    folio_add_new_anon_rmap(st, f, a, exclusive=False)
    # Step 6: ref == 1 -> folio_move_anon_rmap + SetPageAnonExclusive(head) -> reuse.
    assert f.refcount == 1
    assert huge_wp_reuse(st, f) is True
    assert f.anon_exclusive[0] is True


@pytest.mark.parametrize("order", [PMD_ORDER, PUD_ORDER])
def test_huge_wp_reuse_refuses_shared(order: int) -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, order)
    folio_add_new_anon_rmap(st, f, a, exclusive=False)
    folio_get(f)  # a second mapping's (or any other) reference: ref 2 > 1 -> fallback
    assert huge_wp_reuse(st, f) is False
    assert f.anon_exclusive[0] is False


# --------------------------------------------------------------------------------------
# __wp_can_reuse_large_anon_folio (background 3.3 step 7) and the order-0 rule
# --------------------------------------------------------------------------------------


def pte_mapped_in_one_mm(st: MmState, a: MmStruct) -> Folio:
    """PMD-order folio PTE-mapped on its 4 pages by ``a`` only, not exclusive, one reference
    per mapping: L raw 3 (value 4), refcount 4, slot 0 = (1, 3), SHARED clear."""
    f = alloc(st, PMD_ORDER)
    folio_get(f, 3)
    folio_add_anon_rmap(st, f, 0, 4, a, LEVEL_PTE, False)
    assert (f.large_mapcount, f.refcount, f.shared) == (3, 4, False)
    return f


def test_wp_can_reuse_large_when_every_reference_is_this_mms_mapping() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = pte_mapped_in_one_mm(st, a)
    # value 4 > 1; SHARED clear; large mapcount value 4 (raw 3 + 1) == refcount 4; E -1.
    assert __wp_can_reuse_large_anon_folio(f) is True
    assert wp_can_reuse_anon_folio(st, f) is True


def test_wp_can_reuse_large_refuses_shared_bit() -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = pte_mapped_in_one_mm(st, a)
    folio_get(f)
    folio_add_anon_rmap(st, f, 0, 1, b, LEVEL_PTE, False)
    # B takes slot 1 -> SHARED; L raw 4 (value 5) == refcount 5, but SHARED refuses.
    assert (f.large_mapcount, f.refcount, f.shared) == (4, 5, True)
    assert __wp_can_reuse_large_anon_folio(f) is False


def test_wp_can_reuse_large_refuses_an_extra_reference() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = pte_mapped_in_one_mm(st, a)
    f.refcount += 1  # FOLL_PIN of a large folio: +1 ref, +1 pincount
    f.pincount += 1
    # value 4 != refcount 5.
    assert __wp_can_reuse_large_anon_folio(f) is False


def test_wp_can_reuse_large_refuses_a_single_mapping() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, PMD_ORDER)
    folio_add_anon_rmap(st, f, 0, 1, a, LEVEL_PTE, False)
    # L raw 0: value 1 <= 1 -> "just free up a large folio if only a single page is
    # mapped" (the copy lets the folio go), even though value 1 == refcount 1.
    assert (f.large_mapcount, f.refcount) == (0, 1)
    assert __wp_can_reuse_large_anon_folio(f) is False


@pytest.mark.parametrize(
    ("refcount", "expected"),
    [(1, True), (2, False), (1 + 1024, False)],  # 1 + GUP_PIN_COUNTING_BIAS: a pinned page
)
def test_wp_can_reuse_order0_iff_refcount_one(refcount: int, expected: bool) -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, 0)
    folio_add_new_anon_rmap(st, f, a, exclusive=False)
    f.refcount = refcount
    assert wp_can_reuse_anon_folio(st, f) is expected


def test_order0_cow_through_faults() -> None:
    # No THP: write 16 -> folio 1 (order 0) in A; fork: B shares it (ref 2, AE cleared,
    # both PTEs read-only).  B writes: ref 2 -> copy into folio 2, old ref -> 1.  A writes:
    # ref 1 -> reuse in place, no new folio.
    m = RefModel(Config(geometry=P, pud_enabled="never", pmd_enabled="never"))
    assert m.apply(Mmap(0, 0, 64, "rw")) == 0
    assert m.apply(Write(0, 16, 7)) == 0
    assert m.apply(Fork(0)) == 1
    st = m.st
    f = st.folios[1]
    assert (f.refcount, f.mapcount, f.anon_exclusive) == (2, [1], [False])
    assert m.apply(Write(1, 16, 8)) == 0
    assert st.next_folio_id == 3  # folio 2 is B's copy
    assert (f.refcount, f.mapcount) == (1, [0])
    assert m.apply(Write(0, 16, 9)) == 0
    assert st.next_folio_id == 3  # reused: no allocation
    assert f.refcount == 1
    assert f.anon_exclusive == [True]
    assert (m.apply(Read(0, 16)), m.apply(Read(1, 16))) == (9, 8)
    m.check_invariants()


# --------------------------------------------------------------------------------------
# Through the model: PMD and PUD leaves
# --------------------------------------------------------------------------------------


def test_pud_leaf_reuse_when_head_exclusive() -> None:
    # A PUD is never upgraded by mprotect (docs/model.md 9.3): mprotect r then rw leaves the
    # leaf read-only with the head still AnonExclusive; the write fault reuses it.
    m = RefModel(Config(geometry=P))
    assert m.apply(Mmap(0, 0, 64, "rw")) == 0
    assert m.apply(Write(0, 16, 7)) == 0
    assert m.apply(Mprotect(0, 0, 64, "r")) == 0
    assert m.apply(Mprotect(0, 0, 64, "rw")) == 0
    st = m.st
    pud = st.tables[1]
    assert pud.entries[1] == ("leaf", 1, False, True, True)
    assert m.apply(Write(0, 17, 8)) == 0
    f = st.folios[1]
    assert pud.entries[1] == ("leaf", 1, True, True, True)
    assert st.stats["vmstat"]["thp_split_pud"] == 0
    assert f.refcount == 1
    assert f.anon_exclusive[0] is True
    assert st.next_folio_id == 2
    m.check_invariants()


def test_pmd_leaf_reuse_after_the_other_mm_exited() -> None:
    m = RefModel(Config(geometry=P, pud_enabled="never"))
    assert m.apply(Mmap(0, 0, 64, "rw")) == 0
    assert m.apply(Write(0, 16, 7)) == 0
    assert m.apply(Fork(0)) == 1
    assert m.apply(Exit(1)) == 0
    st = m.st
    f = st.folios[1]
    pmd = st.tables[2]
    # fork: ref 2, E raw 1, L raw 1, slots [(1, 0), (2, 0)], SHARED, head AE cleared.
    # B's exit zaps its PMD: L 0; slot 1 0 - 1 < 0 -> freed; slot 0's 0 == 0 -> SHARED
    # cleared; E 1 -> 0 (not last); its reference goes: ref 1.
    assert (f.refcount, f.entire_mapcount, f.large_mapcount) == (1, 0, 0)
    assert (f.mm_id, f.mm_id_mapcount, f.shared) == ([1, 0], [0, -1], False)
    assert f.anon_exclusive[0] is False
    assert pmd.entries[0] == ("leaf", 1, False, True, True)
    assert m.apply(Write(0, 17, 8)) == 0
    # do_huge_pmd_wp_page: head not AE, ref == 1 -> head made AE, PMD reused writable.
    assert pmd.entries[0] == ("leaf", 1, True, True, True)
    assert f.anon_exclusive[0] is True
    assert f.refcount == 1
    assert st.stats["vmstat"]["thp_split_pmd"] == 0
    assert st.next_folio_id == 2
    assert (m.apply(Read(0, 16)), m.apply(Read(0, 17))) == (7, 8)
    m.check_invariants()


@pytest.mark.parametrize("pud_wp_reuse", [True, False])
def test_pud_leaf_after_the_other_mm_exited(pud_wp_reuse: bool) -> None:
    m = RefModel(Config(geometry=P, pud_wp_reuse=pud_wp_reuse))
    assert m.apply(Mmap(0, 0, 64, "rw")) == 0
    assert m.apply(Write(0, 16, 7)) == 0
    assert m.apply(Fork(0)) == 1
    assert m.apply(Exit(1)) == 0
    st = m.st
    f = st.folios[1]
    pud = st.tables[1]
    # As for the PMD: ref 1, E raw 0, L raw 0, slot 0 only, SHARED clear, head not AE.
    assert (f.refcount, f.entire_mapcount, f.large_mapcount, f.shared) == (1, 0, 0, False)
    assert m.apply(Write(0, 17, 8)) == 0
    assert st.next_folio_id == 2  # no copy either way
    if pud_wp_reuse:
        # ref == 1 -> head AE, leaf reused writable.
        assert pud.entries[1] == ("leaf", 1, True, True, True)
        assert st.stats["vmstat"]["thp_split_pud"] == 0
        assert f.refcount == 1
        assert f.anon_exclusive[0] is True
    else:
        # Always split: ref 1 + 15 = 16; L raw 0 + 16 - 1 = 15; E -1; AE copied from the
        # (non-exclusive) head: none.  Then do_wp_page on page 1: not AE, but
        # __wp_can_reuse_large_anon_folio holds (value 16 > 1, SHARED clear, 16 == ref 16),
        # so page 1 alone becomes AE and its PTE writable.
        assert st.stats["vmstat"]["thp_split_pud"] == 1
        assert pud.entries[1] == ("table", 2)
        assert (f.refcount, f.large_mapcount, f.entire_mapcount) == (16, 15, -1)
        assert f.anon_exclusive == [False, True] + [False] * 14
        pte = st.tables[st.tables[2].entries[0][1]]
        assert pte.entries[1] == ("pte", 1, 1, True, True, True)
        assert pte.entries[2] == ("pte", 1, 2, False, True, True)
    assert (m.apply(Read(0, 16)), m.apply(Read(0, 17))) == (7, 8)
    m.check_invariants()


# --------------------------------------------------------------------------------------
# The worked example of background section 7, at P=4 (512 -> 4 pages)
# --------------------------------------------------------------------------------------


def test_worked_example_tiny() -> None:
    m = RefModel(Config(geometry=P, pud_enabled="never"))
    st = m.st

    # Step 1: A (mm 0) writes page 0 of the PMD range [16, 20).  Tables: A's PUD 1, PMD 2,
    # deposited PTE 3.  F = folio 1.
    assert m.apply(Mmap(0, 0, 64, "rw")) == 0
    assert m.apply(Write(0, 16, 100)) == 0
    a, f = st.mms[0], st.folios[1]
    assert (f.refcount, f.large_mapcount, f.entire_mapcount) == (1, 0, 0)  # ref 1, map 1, ent 1
    assert f.nr_pages_mapped == EM
    assert f.mapcount == [-1] * 4
    assert (f.mm_id, f.mm_id_mapcount, f.shared) == ([1, 0], [0, -1], False)
    assert f.anon_exclusive == [True, False, False, False]
    assert (f.deferred, f.partially_mapped) == (True, False)
    assert st.stats["node"]["nr_anon_thps"] == 4
    assert st.stats["node"]["nr_anon_mapped"] == 4
    assert a.rss_anon == 4
    assert a.pgtables_bytes == 3 * PAGE_TABLE_BYTES

    # Step 2: fork -> B (mm 1): ref 2, map 2, entire 2, npm unchanged, slots [A:1, B:1],
    # SHARED, head AE cleared, B's PMD old, RSS(B) 4, B gets its own deposit; stats same.
    assert m.apply(Fork(0)) == 1
    b = st.mms[1]
    assert (f.refcount, f.large_mapcount, f.entire_mapcount) == (2, 1, 1)
    assert f.nr_pages_mapped == EM
    assert (f.mm_id, f.mm_id_mapcount, f.shared) == ([1, 2], [0, 0], True)
    assert f.anon_exclusive == [False] * 4
    b_pmd = st.tables[st.tables[b.pud_table].entries[1][1]]
    assert b_pmd.entries[0] == ("leaf", 1, False, True, False)
    assert st.tables[2].entries[0] == ("leaf", 1, False, True, True)
    assert b.rss_anon == 4
    assert b.pgtables_bytes == 3 * PAGE_TABLE_BYTES
    assert st.stats["node"] == {"nr_anon_mapped": 4, "nr_anon_thps": 4, "nr_anon_pud_thps": 0}

    # Step 3: B writes page 1.  Head not AE, ref 2 > 1 -> split B's PMD: ref 5, map 5 (1
    # PMD + 4 PTE), entire 1, all _mapcount 0, npm EM + 4, slots [A:1, B:4].  Then page 1
    # at PTE level: not AE; value 5 > 1 but SHARED -> copy into a new order-0 folio 2.  The
    # old page: _mapcount 0 -> -1, npm EM + 3 (>= EM: nr 0, not partial), slot B 3 (raw 2),
    # map 4 (raw 3), ref 4.  NR_ANON_MAPPED +1 (new folio), NR_ANON_THPS unchanged.
    assert m.apply(Write(1, 17, 200)) == 0
    assert st.stats["vmstat"]["thp_split_pmd"] == 1
    assert (f.refcount, f.large_mapcount, f.entire_mapcount) == (4, 3, 0)
    assert f.mapcount == [0, -1, 0, 0]
    assert f.nr_pages_mapped == EM + 3
    assert (f.mm_id, f.mm_id_mapcount, f.shared) == ([1, 2], [0, 2], True)
    assert f.partially_mapped is False
    new = st.folios[2]
    assert (new.order, new.refcount, new.mapcount, new.anon_exclusive) == (0, 1, [0], [True])
    assert st.stats["node"] == {"nr_anon_mapped": 5, "nr_anon_thps": 4, "nr_anon_pud_thps": 0}
    assert b.rss_anon == 4
    assert b.pgtables_bytes == 3 * PAGE_TABLE_BYTES  # deposit became the live PTE table
    assert b_pmd.w16 is None
    b_pte = st.tables[b_pmd.entries[0][1]]
    assert b_pte.entries == [
        ("pte", 1, 0, False, True, False),
        ("pte", 2, 0, True, True, True),
        ("pte", 1, 2, False, True, False),
        ("pte", 1, 3, False, True, False),
    ]

    # Step 4: A munmaps [16, 20): zap_huge_pmd.  map 3 (raw 2); A's slot 0 - 1 < 0 ->
    # freed; B's raw 2 == new raw 2 -> SHARED cleared.  entire -> 0 (raw -1) last: npm 3,
    # nr = 4 - 3 = 1 < 4 -> partially mapped.  NR_ANON_THPS -4, NR_ANON_MAPPED -1 (page 1).
    # RSS(A) 0, A's deposit freed (-4096), ref 3 after the TLB flush.
    assert m.apply(Munmap(0, 16, 4)) == 0
    assert (f.refcount, f.large_mapcount, f.entire_mapcount) == (3, 2, -1)
    assert f.nr_pages_mapped == 3
    assert (f.mm_id, f.mm_id_mapcount, f.shared) == ([0, 2], [-1, 2], False)
    assert (f.partially_mapped, f.deferred) == (True, True)
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 1
    assert st.stats["mthp"]["pmd"]["split_deferred"] == 1
    assert st.stats["mthp"]["pmd"]["nr_anon_partially_mapped"] == 1
    assert st.stats["node"] == {"nr_anon_mapped": 4, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}
    assert a.rss_anon == 0
    assert a.pgtables_bytes == 2 * PAGE_TABLE_BYTES  # PUD 1 and PMD 2 still cover VMAs

    # Step 5: B writes page 2.  Not AE; value 3 > 1, SHARED clear, map value 3 == ref 3 ->
    # reused in place: page 2 AE, its PTE writable.  No new folio, no count changes.
    next_id = st.next_folio_id
    assert next_id == 3
    assert m.apply(Write(1, 18, 300)) == 0
    assert st.next_folio_id == next_id
    assert set(st.folios) == {1, 2}
    assert b_pte.entries[2] == ("pte", 1, 2, True, True, True)
    assert f.anon_exclusive == [False, False, True, False]
    assert (f.refcount, f.large_mapcount, f.entire_mapcount) == (3, 2, -1)
    assert f.mapcount == [0, -1, 0, 0]
    assert f.nr_pages_mapped == 3
    assert (f.mm_id, f.mm_id_mapcount, f.shared) == ([0, 2], [-1, 2], False)
    assert f.data[2] == 300
    assert st.stats["node"] == {"nr_anon_mapped": 4, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}

    assert [m.apply(Read(1, v)) for v in (16, 17, 18, 19)] == [100, 200, 300, 0]
    m.check_invariants()
