"""Unit tests of pudthp_ref/rmap.py: mm/rmap.c and the mm-id slots of include/linux/rmap.h.

Expected values are derived by hand from the kernel rules (background note
``kernel-thp-semantics.md`` sections 1.3-1.7, 1.11, 1.12), never from a run of the model.
Every state is built by hand at P=4: a PMD folio is order 2 (4 pages), a PUD folio order 4
(16 pages).  Notation in the comments: raw kernel encodings; ``L`` = raw ``_large_mapcount``,
``E`` = raw ``_entire_mapcount``, ``npm`` = ``_nr_pages_mapped``, ``mc`` = per-page raw
``_mapcount``, ``s0``/``s1`` = (mm id, raw ``_mm_id_mapcount``) of the two slots, ``S`` = the
SHARED bit, ``AE`` = PageAnonExclusive per page.  mm k has MM-ID k+1 (0 is MM_ID_DUMMY).
"""

from __future__ import annotations

import pytest
from statebuild import EM, PMD_ORDER, PUD_ORDER, alloc, new_mm, new_state

from pudthp_ref.folio import folio_get
from pudthp_ref.mm_types import Folio, MmState, MmStruct
from pudthp_ref.rmap import (
    folio_add_anon_rmap,
    folio_add_large_mapcount,
    folio_add_new_anon_rmap,
    folio_add_rmap,
    folio_remove_rmap,
    folio_sub_large_mapcount,
    folio_try_dup_anon_rmap,
)
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE, LEVEL_PUD


def node(st: MmState) -> dict[str, int]:
    return st.stats["node"]


def slots(f: Folio) -> list[tuple[int, int]]:
    return [(f.mm_id[0], f.mm_id_mapcount[0]), (f.mm_id[1], f.mm_id_mapcount[1])]


# --------------------------------------------------------------------------------------
# folio_add_new_anon_rmap (background 1.5)
# --------------------------------------------------------------------------------------


def test_add_new_anon_rmap_order0() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, 0)
    folio_add_new_anon_rmap(st, f, a)
    # Small branch: _mapcount = 0 (value 1), AnonExclusive by RMAP_EXCLUSIVE, nr = 1.
    assert f.mapcount == [0]
    assert f.anon_exclusive == [True]
    # The large counters and mm-id slots are not used for a small folio: initial values.
    assert f.large_mapcount == -1
    assert f.entire_mapcount == -1
    assert f.nr_pages_mapped == 0
    assert slots(f) == [(0, -1), (0, -1)]
    assert f.shared is False
    # rmap never touches the refcount: the allocation's reference becomes the mapping's.
    assert f.refcount == 1
    # __folio_mod_stat(nr=1, nr_pmdmapped=0); mod_mthp_stat(order 0) is ignored (<= 0).
    assert node(st) == {"nr_anon_mapped": 1, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}
    assert st.stats["mthp"]["pmd"]["nr_anon"] == 0
    assert st.stats["mthp"]["pud"]["nr_anon"] == 0


def test_add_new_anon_rmap_pmd_order() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, PMD_ORDER)
    folio_add_new_anon_rmap(st, f, a)
    # PMD-mappable branch: _entire_mapcount = 0, folio_set_large_mapcount(1) -> L = 0 and
    # slot 0 = (mm 0 -> id 1, count 1-1 = 0); npm = ENTIRELY_MAPPED; per-page mc untouched.
    assert f.entire_mapcount == 0
    assert f.large_mapcount == 0
    assert f.nr_pages_mapped == 0x800000
    assert f.mapcount == [-1, -1, -1, -1]
    assert slots(f) == [(1, 0), (0, -1)]
    assert f.shared is False
    # AnonExclusive on the head page only.
    assert f.anon_exclusive == [True, False, False, False]
    assert f.refcount == 1
    # nr = nr_pmdmapped = 4 pages; mTHP nr_anon[PMD order] += 1.
    assert node(st) == {"nr_anon_mapped": 4, "nr_anon_thps": 4, "nr_anon_pud_thps": 0}
    assert st.stats["mthp"]["pmd"]["nr_anon"] == 1
    assert st.stats["mthp"]["pud"]["nr_anon"] == 0


def test_add_new_anon_rmap_pud_order() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, PUD_ORDER)
    folio_add_new_anon_rmap(st, f, a)
    # Same branch as PMD (order >= HPAGE_PMD_ORDER), 16 pages.
    assert f.entire_mapcount == 0
    assert f.large_mapcount == 0
    assert f.nr_pages_mapped == EM
    assert f.mapcount == [-1] * 16
    assert slots(f) == [(1, 0), (0, -1)]
    assert f.anon_exclusive == [True] + [False] * 15
    # MODEL.md 2: a PUD leaf never counts in NR_ANON_THPS; NR_ANON_PUD_THPS += 16 instead.
    # NR_ANON_MAPPED += 16; the PUD-order mTHP row gets nr_anon += 1 (MODEL.md 5.1).
    assert node(st) == {"nr_anon_mapped": 16, "nr_anon_thps": 0, "nr_anon_pud_thps": 16}
    assert st.stats["mthp"]["pud"]["nr_anon"] == 1
    assert st.stats["mthp"]["pmd"]["nr_anon"] == 0


def test_add_new_anon_rmap_not_exclusive() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, PMD_ORDER)
    folio_add_new_anon_rmap(st, f, a, exclusive=False)
    # Without RMAP_EXCLUSIVE no page is marked; the counters are as in the exclusive case.
    assert f.anon_exclusive == [False] * 4
    assert f.entire_mapcount == 0
    assert f.nr_pages_mapped == EM


# --------------------------------------------------------------------------------------
# PTE level on a large folio (background 1.3 and 1.4, CONFIG_PAGE_MAPCOUNT)
# --------------------------------------------------------------------------------------


def pte_mapped(st: MmState, a: MmStruct) -> Folio:
    """A PMD-order folio PTE-mapped on all 4 pages by ``a`` and not entire-mapped."""
    f = alloc(st, PMD_ORDER)
    folio_add_anon_rmap(st, f, 0, 4, a, LEVEL_PTE, True)
    return f


def test_pte_add_on_unmapped_large_folio() -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = pte_mapped(st, a)
    # mc -1 -> 0 for 4 pages: first = 4; npm 0 + 4 = 4 < EM so nr = 4.
    # folio_add_large_mapcount(4): L = -1 + 4 = 3; slot 0 empty -> (1, 4-1 = 3); new_val 3
    # == diff-1 3, so no other mapping existed: S stays clear.
    assert f.mapcount == [0, 0, 0, 0]
    assert f.nr_pages_mapped == 4
    assert f.large_mapcount == 3
    assert slots(f) == [(1, 3), (0, -1)]
    assert f.shared is False
    # RMAP_EXCLUSIVE at PTE level marks every page of the range.
    assert f.anon_exclusive == [True] * 4
    assert node(st)["nr_anon_mapped"] == 4
    assert node(st)["nr_anon_thps"] == 0
    # Second mm maps pages 1-2: mc 0 -> 1 twice, first = 0, npm stays 4, nr = 0.
    # L = 3 + 2 = 5; slot 1 empty -> (2, 1) and S set (slot 0 has mappings).
    folio_add_rmap(st, f, 1, 2, b, LEVEL_PTE)
    assert f.mapcount == [0, 1, 1, 0]
    assert f.nr_pages_mapped == 4
    assert f.large_mapcount == 5
    assert slots(f) == [(1, 3), (2, 1)]
    assert f.shared is True
    assert node(st)["nr_anon_mapped"] == 4


def test_pte_add_on_entire_mapped_folio_then_pmd_remove() -> None:
    # The arithmetic of a non-freeze PMD split (background 3.6), step by step.
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, PMD_ORDER)
    folio_add_new_anon_rmap(st, f, a)  # E 0, L 0, npm EM, nr_anon_mapped 4, thps 4
    folio_add_rmap(st, f, 0, 4, a, LEVEL_PTE)
    # first = 4; npm = EM + 4 = 0x800004 >= EM -> nr = 0 (already counted by the entire map).
    # L = 0 + 4 = 4; slot 0 (mm 0) 0 + 4 = 4.
    assert f.nr_pages_mapped == 0x800004
    assert f.large_mapcount == 4
    assert slots(f) == [(1, 4), (0, -1)]
    assert node(st)["nr_anon_mapped"] == 4
    folio_remove_rmap(st, f, 0, 4, a, LEVEL_PMD)
    # L = 3, slot 0 = 3 (>= 0: stop). E 0 -> -1 is the last: npm = 0x800004 - EM = 4 <
    # EM -> nr_pmdmapped = 4, nr = 4 - 4 = 0. partially_mapped = nr && ... = False.
    assert f.entire_mapcount == -1
    assert f.large_mapcount == 3
    assert f.nr_pages_mapped == 4
    assert slots(f) == [(1, 3), (0, -1)]
    assert node(st) == {"nr_anon_mapped": 4, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}
    assert f.partially_mapped is False
    assert f.deferred is False
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 0


def test_pte_remove_some_pages_flags_partially_mapped() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = pte_mapped(st, a)  # npm 4, L 3, s0 (1, 3), nr_anon_mapped 4
    folio_remove_rmap(st, f, 0, 2, a, LEVEL_PTE)
    # folio_sub_large_mapcount(2): L = 1; slot 0: 3 - 2 = 1 >= 0 -> stop.
    # mc[0], mc[1] 0 -> -1: last = 2; npm = 4 - 2 = 2 < EM -> nr = 2.
    # partially_mapped = nr && npm != 0 = True -> deferred_split_folio(folio, true).
    assert f.mapcount == [-1, -1, 0, 0]
    assert f.nr_pages_mapped == 2
    assert f.large_mapcount == 1
    assert slots(f) == [(1, 1), (0, -1)]
    assert node(st)["nr_anon_mapped"] == 4 - 2
    # deferred_split_folio(true): order 2 > 1; the flag is set once; order >= PMD order
    # counts THP_DEFERRED_SPLIT_PAGE; split_deferred and nr_anon_partially_mapped +1; queued.
    assert f.partially_mapped is True
    assert f.deferred is True
    assert st.deferred == [f.id]
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 1
    assert st.stats["mthp"]["pmd"]["split_deferred"] == 1
    assert st.stats["mthp"]["pmd"]["nr_anon_partially_mapped"] == 1
    # Removing the rest: last = 2, npm = 0, nr = 2 but npm == 0 -> not partially mapped in
    # this call; the flag is never cleared by rmap (only by the unqueue at free/split).
    folio_remove_rmap(st, f, 2, 2, a, LEVEL_PTE)
    assert f.nr_pages_mapped == 0
    assert f.large_mapcount == -1
    assert slots(f) == [(0, -1), (0, -1)]
    assert node(st)["nr_anon_mapped"] == 0
    assert f.partially_mapped is True
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 1
    assert st.stats["mthp"]["pmd"]["nr_anon_partially_mapped"] == 1


def test_pte_remove_all_pages_in_one_batch_does_not_flag() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = pte_mapped(st, a)
    folio_remove_rmap(st, f, 0, 4, a, LEVEL_PTE)
    # L = 3 - 4 = -1; slot 0: 3 - 4 < 0 -> freed (0, -1); new_val -1 == slot count -1 -> S
    # clear. last = 4, npm = 0, nr = 4; partially_mapped = nr && npm != 0 = False.
    assert f.mapcount == [-1] * 4
    assert f.nr_pages_mapped == 0
    assert f.large_mapcount == -1
    assert slots(f) == [(0, -1), (0, -1)]
    assert f.shared is False
    assert node(st)["nr_anon_mapped"] == 0
    assert f.partially_mapped is False
    assert f.deferred is False
    assert st.deferred == []
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 0
    assert st.stats["mthp"]["pmd"]["split_deferred"] == 0


# --------------------------------------------------------------------------------------
# PMD and PUD level (entire mappings)
# --------------------------------------------------------------------------------------


def test_pmd_add_on_pte_mapped_folio() -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = alloc(st, PMD_ORDER)
    folio_add_rmap(st, f, 0, 2, a, LEVEL_PTE)  # npm 2, L 1, s0 (1, 1), nr_anon_mapped 2
    folio_add_rmap(st, f, 0, 4, b, LEVEL_PMD)
    # E -1 -> 0 is the first: npm = 2 + EM < 2*EM -> nr_pmdmapped = 4, nr = 4 - 2 = 2.
    # L = 1 + 1 = 2; slot 1 empty -> (2, 0), S set. Per-page mc untouched.
    assert f.entire_mapcount == 0
    assert f.nr_pages_mapped == EM + 2
    assert f.large_mapcount == 2
    assert f.mapcount == [0, 0, -1, -1]
    assert slots(f) == [(1, 1), (2, 0)]
    assert f.shared is True
    assert node(st) == {"nr_anon_mapped": 4, "nr_anon_thps": 4, "nr_anon_pud_thps": 0}


def test_second_entire_mapping_add_and_remove_touch_no_stats() -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = alloc(st, PUD_ORDER)
    folio_add_new_anon_rmap(st, f, a)  # E 0, L 0, npm EM; mapped 16, pud_thps 16
    folio_add_rmap(st, f, 0, 16, b, LEVEL_PUD)
    # E 0 -> 1: not the first, npm and stats unchanged; L 1; slot 1 (2, 0); S set.
    assert f.entire_mapcount == 1
    assert f.large_mapcount == 1
    assert f.nr_pages_mapped == EM
    assert slots(f) == [(1, 0), (2, 0)]
    assert node(st) == {"nr_anon_mapped": 16, "nr_anon_thps": 0, "nr_anon_pud_thps": 16}
    folio_remove_rmap(st, f, 0, 16, b, LEVEL_PUD)
    # E 1 -> 0: not the last. L 0; slot 1: 0 - 1 < 0 -> freed; new_val 0 == slot 0's 0 ->
    # S cleared. nr = 0: no stat change, not partially mapped.
    assert f.entire_mapcount == 0
    assert f.large_mapcount == 0
    assert f.nr_pages_mapped == EM
    assert slots(f) == [(1, 0), (0, -1)]
    assert f.shared is False
    assert node(st) == {"nr_anon_mapped": 16, "nr_anon_thps": 0, "nr_anon_pud_thps": 16}
    assert f.partially_mapped is False


def test_pmd_remove_while_pages_stay_pte_mapped_elsewhere() -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = alloc(st, PMD_ORDER)
    folio_add_new_anon_rmap(st, f, a)  # E 0, L 0, s0 (1, 0), npm EM; mapped 4, thps 4
    folio_add_rmap(st, f, 0, 2, b, LEVEL_PTE)
    # B PTE-maps pages 0-1: first = 2, npm = EM + 2 -> nr = 0; L = 2; s1 = (2, 1); S set.
    assert f.nr_pages_mapped == EM + 2
    assert slots(f) == [(1, 0), (2, 1)]
    assert f.shared is True
    folio_remove_rmap(st, f, 0, 4, a, LEVEL_PMD)
    # A drops its PMD: L = 1; slot 0: 0 - 1 < 0 -> freed; new_val 1 == slot 1's 1 -> S
    # cleared (B accounts for every mapping). E 0 -> -1 last: npm = 2 < EM ->
    # nr_pmdmapped = 4, nr = 4 - 2 = 2; partially_mapped = nr && nr < nr_pmdmapped = True.
    assert f.entire_mapcount == -1
    assert f.large_mapcount == 1
    assert f.nr_pages_mapped == 2
    assert slots(f) == [(0, -1), (2, 1)]
    assert f.shared is False
    assert node(st) == {"nr_anon_mapped": 4 - 2, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}
    assert f.partially_mapped is True
    assert st.deferred == [f.id]
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 1
    assert st.stats["mthp"]["pmd"]["split_deferred"] == 1
    assert st.stats["mthp"]["pmd"]["nr_anon_partially_mapped"] == 1


def test_pud_remove_while_pages_stay_pte_mapped_elsewhere() -> None:
    # Mainline leaves nr_pmdmapped at 0 for a PUD, so "nr && nr < nr_pmdmapped" never flags
    # (background 1.4, 4.2 item 2); the model's rule applies the PMD test with the folio
    # size, as MODEL.md 5.4 asks ("a large folio left partly mapped is flagged").
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = alloc(st, PUD_ORDER)
    folio_add_new_anon_rmap(st, f, a)  # E 0, L 0, npm EM; mapped 16, pud_thps 16
    folio_add_rmap(st, f, 0, 3, b, LEVEL_PTE)  # npm EM + 3, nr 0; L 3; s1 (2, 2); S set
    folio_remove_rmap(st, f, 0, 16, a, LEVEL_PUD)
    # L = 2; slot 0 freed; 2 == slot 1's 2 -> S cleared. E -> -1 last: npm = 3; the model's
    # nr_pudmapped = 16; nr = 16 - 3 = 13; 13 < 16 -> partially mapped.
    assert f.entire_mapcount == -1
    assert f.large_mapcount == 2
    assert f.nr_pages_mapped == 3
    assert slots(f) == [(0, -1), (2, 2)]
    assert f.shared is False
    assert node(st) == {"nr_anon_mapped": 16 - 13, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}
    assert f.partially_mapped is True
    assert st.deferred == [f.id]
    # THP_DEFERRED_SPLIT_PAGE counts any order >= PMD order; the mTHP rows are the PUD's.
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 1
    assert st.stats["mthp"]["pud"]["split_deferred"] == 1
    assert st.stats["mthp"]["pud"]["nr_anon_partially_mapped"] == 1
    assert st.stats["mthp"]["pmd"]["split_deferred"] == 0


def test_pud_remove_of_the_only_mapping_is_not_partial() -> None:
    st = new_state()
    a = new_mm(st, 0)
    f = alloc(st, PUD_ORDER)
    folio_add_new_anon_rmap(st, f, a)
    folio_remove_rmap(st, f, 0, 16, a, LEVEL_PUD)
    # E -> -1 last; npm = 0; nr = 16 - 0 = 16, not < 16 -> not partially mapped.
    # L -1; slot 0 freed; -1 == -1 -> S clear.
    assert f.nr_pages_mapped == 0
    assert f.large_mapcount == -1
    assert slots(f) == [(0, -1), (0, -1)]
    assert node(st) == {"nr_anon_mapped": 0, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}
    assert f.partially_mapped is False
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 0


# --------------------------------------------------------------------------------------
# mm-id slots (background 1.7): folio_add/sub_large_mapcount directly
# --------------------------------------------------------------------------------------


def test_mm_id_slots_two_tracked_third_untracked() -> None:
    st = new_state()
    a, b, c = new_mm(st, 0), new_mm(st, 1), new_mm(st, 2)  # MM-IDs 1, 2, 3
    f = alloc(st, PMD_ORDER)
    folio_add_large_mapcount(f, 4, a)
    # L = -1 + 4 = 3; slot 0 empty -> (1, 3); new_val 3 == diff-1 -> no other mapping: S 0.
    assert f.large_mapcount == 3
    assert slots(f) == [(1, 3), (0, -1)]
    assert f.shared is False
    folio_add_large_mapcount(f, 2, b)
    # L = 5; slot 1 empty -> (2, 1); slot 0 certainly has mappings: S 1.
    assert f.large_mapcount == 5
    assert slots(f) == [(1, 3), (2, 1)]
    assert f.shared is True
    folio_add_large_mapcount(f, 1, c)
    # L = 6; both slots held by other mms: C goes untracked, S already set.
    assert f.large_mapcount == 6
    assert slots(f) == [(1, 3), (2, 1)]
    assert f.shared is True
    folio_add_large_mapcount(f, 1, a)
    # A holds slot 0: 3 + 1 = 4; L = 7.
    assert f.large_mapcount == 7
    assert slots(f) == [(1, 4), (2, 1)]
    folio_sub_large_mapcount(f, 1, b)
    # L = 6; slot 1: 1 - 1 = 0 >= 0 -> stop there: S is not re-evaluated (sticky).
    assert f.large_mapcount == 6
    assert slots(f) == [(1, 4), (2, 0)]
    assert f.shared is True
    folio_sub_large_mapcount(f, 1, b)
    # L = 5; slot 1: 0 - 1 < 0 -> freed (0, -1). Check: slot 0's 4 == 5? no; -1 == 5? no:
    # C's untracked mapping keeps S set.
    assert f.large_mapcount == 5
    assert slots(f) == [(1, 4), (0, -1)]
    assert f.shared is True
    folio_sub_large_mapcount(f, 1, c)
    # L = 4; C has no slot, so nothing is subtracted, but the check still runs (kernel
    # folio_sub_return_large_mapcount): slot 0's 4 == 4 -> A holds every mapping: S cleared.
    assert f.large_mapcount == 4
    assert slots(f) == [(1, 4), (0, -1)]
    assert f.shared is False
    folio_sub_large_mapcount(f, 5, a)
    # L = -1; slot 0: 4 - 5 < 0 -> freed; both empty, unmapped, S clear.
    assert f.large_mapcount == -1
    assert slots(f) == [(0, -1), (0, -1)]
    assert f.shared is False


def test_mm_id_shared_false_positive_and_slot_underflow() -> None:
    st = new_state()
    a, b, c = new_mm(st, 0), new_mm(st, 1), new_mm(st, 2)
    f = alloc(st, PMD_ORDER)
    folio_add_large_mapcount(f, 4, a)  # L 3, s0 (1, 3), S 0
    folio_add_large_mapcount(f, 2, b)  # L 5, s1 (2, 1), S 1
    folio_add_large_mapcount(f, 2, c)  # L 7, C untracked
    folio_sub_large_mapcount(f, 4, a)
    # L = 3; slot 0: 3 - 4 < 0 -> freed; -1 == 3? 1 == 3? no -> S stays.
    assert f.large_mapcount == 3
    assert slots(f) == [(0, -1), (2, 1)]
    assert f.shared is True
    folio_sub_large_mapcount(f, 2, b)
    # L = 1; slot 1: 1 - 2 < 0 -> freed; -1 == 1? no -> S stays set although only C maps
    # the folio now (a false positive: "SHARED clear implies one mm", not the converse).
    assert f.large_mapcount == 1
    assert slots(f) == [(0, -1), (0, -1)]
    assert f.shared is True
    folio_add_large_mapcount(f, 1, c)
    # L = 2; slot 0 empty -> (3, 0); new_val 2 != diff-1 0 -> S set. C's slot now counts 1
    # mapping while C really has 3 (a slot count can be below the true number).
    assert f.large_mapcount == 2
    assert slots(f) == [(3, 0), (0, -1)]
    assert f.shared is True
    folio_sub_large_mapcount(f, 2, c)
    # L = 0; slot 0: 0 - 2 = -2 < 0 -> clamped to -1 and freed; -1 == 0? no -> S stays.
    assert f.large_mapcount == 0
    assert slots(f) == [(0, -1), (0, -1)]
    assert f.shared is True
    folio_sub_large_mapcount(f, 1, c)
    # L = -1; no slot; the check -1 == -1 holds -> S cleared: unmapped, both slots empty.
    assert f.large_mapcount == -1
    assert slots(f) == [(0, -1), (0, -1)]
    assert f.shared is False


# --------------------------------------------------------------------------------------
# folio_try_dup_anon_rmap (background 1.6)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("order", "level"), [(PMD_ORDER, LEVEL_PMD), (PUD_ORDER, LEVEL_PUD)])
def test_try_dup_entire_clears_anon_exclusive(order: int, level: str) -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = alloc(st, order)
    folio_add_new_anon_rmap(st, f, a)
    nr = 1 << order
    stats_before = dict(node(st))
    folio_get(f)  # copy_huge_p?d: folio_get() before the dup
    assert folio_try_dup_anon_rmap(f, 0, nr, b, a, level) is True
    # Head AnonExclusive and not maybe pinned (no MMF_HAS_PINNED): cleared. E 0 -> 1,
    # folio_inc_large_mapcount: L 0 -> 1, slot 1 = (2, 0), S set. npm and stats untouched.
    assert f.anon_exclusive == [False] * nr
    assert f.entire_mapcount == 1
    assert f.large_mapcount == 1
    assert slots(f) == [(1, 0), (2, 0)]
    assert f.shared is True
    assert f.nr_pages_mapped == EM
    assert node(st) == stats_before
    assert f.refcount == 2  # only the caller's folio_get


def test_try_dup_pte_level_on_large_folio() -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = pte_mapped(st, a)  # mc 0 x4, AE x4, L 3, s0 (1, 3), npm 4
    assert folio_try_dup_anon_rmap(f, 1, 2, b, a, LEVEL_PTE) is True
    # Not pinned: AE cleared on pages 1-2 only; mc +1 on them; L = 3 + 2 = 5; slot 1 = (2, 1).
    assert f.anon_exclusive == [True, False, False, True]
    assert f.mapcount == [0, 1, 1, 0]
    assert f.large_mapcount == 5
    assert slots(f) == [(1, 3), (2, 1)]
    assert f.shared is True
    assert f.nr_pages_mapped == 4  # never touched by the dup
    assert node(st)["nr_anon_mapped"] == 4


@pytest.mark.parametrize(("order", "level"), [(PMD_ORDER, LEVEL_PMD), (PUD_ORDER, LEVEL_PUD)])
@pytest.mark.parametrize(
    ("has_pinned", "pincount", "expected"),
    [
        # folio_needs_cow_for_dma = MMF_HAS_PINNED && folio_maybe_dma_pinned (large:
        # _pincount > 0); -EBUSY only for an exclusive head that may be pinned.
        (True, 1, False),
        (True, 0, True),
        (False, 1, True),
    ],
)
def test_try_dup_entire_pinned_exclusive(order: int, level: str, has_pinned: bool,
                                         pincount: int, expected: bool) -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = alloc(st, order)
    folio_add_new_anon_rmap(st, f, a)
    a.has_pinned = has_pinned
    f.pincount = pincount
    f.refcount += pincount  # FOLL_PIN on a large folio: +1 ref and +1 pincount
    nr = 1 << order
    assert folio_try_dup_anon_rmap(f, 0, nr, b, a, level) is expected
    if expected:
        assert f.anon_exclusive[0] is False
        assert f.entire_mapcount == 1
        assert f.large_mapcount == 1
        assert slots(f) == [(1, 0), (2, 0)]
    else:
        # -EBUSY: nothing changed.
        assert f.anon_exclusive[0] is True
        assert f.entire_mapcount == 0
        assert f.large_mapcount == 0
        assert slots(f) == [(1, 0), (0, -1)]
        assert f.shared is False


def test_try_dup_pinned_but_not_exclusive_is_shared() -> None:
    # A head that is already not exclusive (shared earlier) can be shared again even if
    # pinned: the -EBUSY test is "maybe_pinned && PageAnonExclusive".
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = alloc(st, PMD_ORDER)
    folio_add_new_anon_rmap(st, f, a, exclusive=False)
    a.has_pinned = True
    f.pincount = 1
    f.refcount = 2
    assert folio_try_dup_anon_rmap(f, 0, 4, b, a, LEVEL_PMD) is True
    assert f.entire_mapcount == 1


def test_try_dup_pte_level_pinned_checks_only_the_range() -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = pte_mapped(st, a)
    f.anon_exclusive = [True, False, False, False]  # only page 0 still exclusive
    a.has_pinned = True
    f.pincount = 1
    f.refcount += 1
    # Pages 1-2: none exclusive -> shared.
    assert folio_try_dup_anon_rmap(f, 1, 2, b, a, LEVEL_PTE) is True
    assert f.mapcount == [0, 1, 1, 0]
    # Pages 0-1: page 0 exclusive and maybe pinned -> -EBUSY before any change.
    assert folio_try_dup_anon_rmap(f, 0, 2, b, a, LEVEL_PTE) is False
    assert f.mapcount == [0, 1, 1, 0]
    assert f.anon_exclusive == [True, False, False, False]
    assert f.large_mapcount == 5


@pytest.mark.parametrize(
    ("has_pinned", "refcount", "expected"),
    [
        # order 0: folio_maybe_dma_pinned = refcount >= GUP_PIN_COUNTING_BIAS (1024)
        (True, 1, True),
        (True, 1023, True),
        (True, 1024, False),
        (True, 1 + 1024, False),  # one mapping plus one FOLL_PIN
        (False, 1 + 1024, True),  # no MMF_HAS_PINNED: never needs COW for DMA
    ],
)
def test_try_dup_order0(has_pinned: bool, refcount: int, expected: bool) -> None:
    st = new_state()
    a, b = new_mm(st, 0), new_mm(st, 1)
    f = alloc(st, 0)
    folio_add_new_anon_rmap(st, f, a)  # mc 0, AE
    a.has_pinned = has_pinned
    f.refcount = refcount
    assert folio_try_dup_anon_rmap(f, 0, 1, b, a, LEVEL_PTE) is expected
    if expected:
        # AE cleared, _mapcount 0 -> 1; small folios use no mm-id slots.
        assert f.anon_exclusive == [False]
        assert f.mapcount == [1]
    else:
        assert f.anon_exclusive == [True]
        assert f.mapcount == [0]
    assert slots(f) == [(0, -1), (0, -1)]
