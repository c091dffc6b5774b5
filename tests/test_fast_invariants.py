"""check_invariants() and take_snapshot() of the fast model on hand-built states.

The states are built row by row in the fast struct-of-arrays layout (``pudthp_fast.state``)
at P=4, without any model operation, so these tests pin down the checker and the snapshot
alone.  They mirror ``test_invariants.py``: the same consistent base state (table and folio
ids included), the same planted defects, and the same invariant names, because a divergence
between the two implementations is reported by invariant name.

At the end, two differential tests against the reference: states the reference model
reaches on seeded random programs, converted to the fast layout, must give the same snapshot
and the same verdict; and the same states with seeded random defects planted must be
reported under the same invariant name.
"""

from __future__ import annotations

import copy
import json
import random
from typing import Any

import numpy as np
import pytest

from fuzz.gen import ProgramGenerator, random_config
from pudthp_fast.invariants import check_invariants
from pudthp_fast.snapshot import digest_snapshot, take_snapshot
from pudthp_fast.state import (
    LEAF,
    LV_PMD,
    LV_PTE,
    LV_PUD,
    NONE,
    NULL,
    POISON1,
    POISON2,
    PTE,
    ST_DEPOSITED,
    ST_FREE,
    ST_LIVE,
    SWAP,
    TABLE,
    ZERO,
    D,
    FastMm,
    FastState,
    FastVma,
    W,
    Y,
)
from pudthp_ref.invariants import check_invariants as ref_check_invariants
from pudthp_ref.mm_types import MmState, PinRecord, SwapSlot
from pudthp_ref.model import RefModel
from pudthp_ref.snapshot import take_snapshot as ref_take_snapshot
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    LIST_POISON1,
    LIST_POISON2,
    PAGE_TABLE_BYTES,
    Config,
    InvariantViolation,
    empty_stats,
)

P = 4
EM = ENTIRELY_MAPPED
WDY = W | D | Y

# Table ids of the base state (as in test_invariants.py)
PUD = 1  # mm 0's PUD table
PUD_DEP_PMD = 2  # PMD table deposited on the PUD stack for the PUD leaf at PUD entry 0
PUD_DEP_PTES = (3, 4, 5, 6)  # the P PTE tables deposited in it
PMD = 7  # live PMD table under PUD entry 1
PMD_DEP_PTE = 8  # PTE table deposited in PMD for the PMD leaf at its entry 0
PTE_T = 9  # live PTE table under PMD entry 1
# Folio ids
F_PUD = 1  # order 4, PUD-mapped at vpn 0
F_PMD = 2  # order 2, PMD-mapped at vpn 16
F_SMALL = 3  # order 0, PTE-mapped at vpn 20


# --------------------------------------------------------------------------------------
# Building fast states by hand
# --------------------------------------------------------------------------------------


def table(st: FastState, tid: int, level: int, state: int = ST_LIVE, mm: int = 0) -> None:
    """Make row ``tid`` a page table (allocating rows up to it), words NULL, no entries."""
    while st.next_pt <= tid:
        st.new_table_row()
    st.t_level[tid] = level
    st.t_state[tid] = state
    st.t_mm[tid] = mm
    st.t_w8[tid] = NULL
    st.t_w16[tid] = NULL


def put(st: FastState, tid: int, i: int, kind: int, ident: int = 0, page: int = 0,
        bits: int = 0) -> None:
    """Entry ``i`` of table ``tid``."""
    r = st.wrow(tid)
    st.e_kind[r, i] = kind
    st.e_id[r, i] = ident
    st.e_page[r, i] = page
    st.e_bits[r, i] = bits


def drop(st: FastState, tid: int) -> None:
    """pt_free() without the accounting: the table is gone."""
    st.t_state[tid] = ST_FREE
    st.release_row(tid)


def ring(st: FastState, ids: tuple[int, ...]) -> None:
    """Link tables as mainline list_add leaves them: circular, next = w8, prev = w16."""
    n = len(ids)
    for k, t in enumerate(ids):
        st.t_w8[t] = ids[(k + 1) % n]
        st.t_w16[t] = ids[(k - 1) % n]


def folio(st: FastState, fid: int, order: int, *, ref: int = 1, mapcount: int = -1,
          exclusive: bool = False) -> int:
    """A live folio at rest (large counters -1, no mm-id slots); returns its first page."""
    assert st.new_folio_rows(1) == fid, "folios are created in id order"
    nr = 1 << order
    base = st.new_pages(nr)
    st.f_order[fid] = order
    st.f_node[fid] = 0
    st.f_nr[fid] = nr
    st.f_base[fid] = base
    st.f_ref[fid] = ref
    st.f_live[fid] = True
    st.p_mapcount[base : base + nr] = mapcount
    st.p_exclusive[base : base + nr] = exclusive
    return base


def thp(st: FastState, fid: int, order: int, mm: int = 0) -> None:
    """A THP right after folio_add_new_anon_rmap at PMD/PUD level in ``mm``."""
    base = folio(st, fid, order)
    st.f_entire[fid] = 0
    st.f_large[fid] = 0
    st.f_npm[fid] = EM
    st.f_mmid[fid] = (mm + 1, 0)
    st.f_mmc[fid] = (0, -1)
    st.p_exclusive[base] = True


def page(st: FastState, fid: int, p: int) -> int:
    """Pool index of page ``p`` of folio ``fid``."""
    return int(st.f_base[fid]) + p


def free(st: FastState, fid: int) -> None:
    """free_folio() of an unmapped folio: unqueued, every counter back at rest."""
    if st.f_deferred[fid]:
        st.deferred.remove(fid)
    st.f_live[fid] = False
    st.f_deferred[fid] = False
    st.f_ref[fid] = 0
    st.f_entire[fid] = -1
    st.f_large[fid] = -1
    st.f_npm[fid] = 0
    st.f_mmid[fid] = 0
    st.f_mmc[fid] = -1
    b, n = int(st.f_base[fid]), int(st.f_nr[fid])
    st.p_mapcount[b : b + n] = -1
    st.p_exclusive[b : b + n] = False


def base(deposit: str = "lru_next") -> FastState:
    """One mm, VMA [0, 32) rw, with:

    - PUD entry 0: writable PUD leaf of F_PUD, its PMD table on the PUD stack holding P PTE
      tables (patch 01's two-level deposit), queued unflagged on the deferred list;
    - PUD entry 1 -> PMD table: entry 0 a writable PMD leaf of F_PMD with one deposited PTE
      table; entry 1 -> PTE table with a writable PTE of order-0 F_SMALL, a swap PTE and a
      zero-page PTE.
    """
    st = FastState(Config(geometry=P, deposit=deposit))
    mm = FastMm(id=0, pud_table=PUD, vmas=[FastVma(0, 32, "rw", anon_vma=1)])
    st.mms.append(mm)

    table(st, PUD, LV_PUD)
    put(st, PUD, 0, LEAF, F_PUD, bits=WDY)
    put(st, PUD, 1, TABLE, PMD)
    table(st, PUD_DEP_PMD, LV_PMD, ST_DEPOSITED)
    st.t_w16[PUD] = PUD_DEP_PMD  # pud_huge_pmd: top of the stack; its w8 NULL ends it
    for t in PUD_DEP_PTES:
        table(st, t, LV_PTE, ST_DEPOSITED)
    ring(st, PUD_DEP_PTES)
    st.t_w16[PUD_DEP_PMD] = PUD_DEP_PTES[-1]  # pmd_huge_pte: newest deposit

    table(st, PMD, LV_PMD)
    put(st, PMD, 0, LEAF, F_PMD, bits=WDY)
    put(st, PMD, 1, TABLE, PTE_T)
    table(st, PMD_DEP_PTE, LV_PTE, ST_DEPOSITED)
    ring(st, (PMD_DEP_PTE,))  # INIT_LIST_HEAD: w8 == w16 == itself
    st.t_w16[PMD] = PMD_DEP_PTE

    table(st, PTE_T, LV_PTE)
    put(st, PTE_T, 0, PTE, F_SMALL, 0, WDY)  # vpn 20
    put(st, PTE_T, 1, SWAP, 1)  # vpn 21
    put(st, PTE_T, 2, ZERO)  # vpn 22

    thp(st, F_PUD, 4)
    thp(st, F_PMD, 2)
    folio(st, F_SMALL, 0, mapcount=0, exclusive=True)
    st.f_deferred[F_PUD] = True
    st.deferred.append(F_PUD)
    slot = st.new_slots(1)
    assert slot == 1
    st.s_count[1] = 1
    st.s_data[1] = 7

    mm.rss_anon = 16 + 4 + 1
    mm.rss_swap = 1
    mm.pgtables_bytes = PAGE_TABLE_BYTES * 9
    st.stats["mthp"]["pud"]["nr_anon"] = 1
    st.stats["mthp"]["pmd"]["nr_anon"] = 1
    st.stats["node"]["nr_anon_mapped"] = 16 + 4 + 1
    st.stats["node"]["nr_anon_thps"] = P
    st.stats["node"]["nr_anon_pud_thps"] = P * P
    return st


def violation(st: FastState) -> str:
    with pytest.raises(InvariantViolation) as exc:
        check_invariants(st)
    return exc.value.invariant


# --------------------------------------------------------------------------------------
# Consistent states
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("deposit", ["lru_next", "llist"])
def test_base_state_passes(deposit: str) -> None:
    check_invariants(base(deposit))


def test_list_head_without_pud_leaves_passes() -> None:
    st = base("list_head")
    put(st, PUD, 0, NONE)
    st.t_w16[PUD] = NULL
    for t in (PUD_DEP_PMD, *PUD_DEP_PTES):
        drop(st, t)
    free(st, F_PUD)
    st.mms[0].rss_anon -= 16
    st.mms[0].pgtables_bytes -= 5 * PAGE_TABLE_BYTES
    st.stats["mthp"]["pud"]["nr_anon"] = 0
    st.stats["node"]["nr_anon_mapped"] -= 16
    st.stats["node"]["nr_anon_pud_thps"] = 0
    check_invariants(st)


def test_forked_pud_leaf_passes() -> None:
    # fork of a PUD leaf: the child's own two-level deposit, both entries write-protected,
    # the head not AnonExclusive, entire/large/refcount +1, the child in slot 1, SHARED.
    st = base()
    put(st, PUD, 0, LEAF, F_PUD, bits=D | Y)
    put(st, PUD, 1, NONE)
    for t in (PMD, PMD_DEP_PTE, PTE_T):
        drop(st, t)
    st.s_count[1] = 0
    for fid in (F_PMD, F_SMALL):
        free(st, fid)
    child = FastMm(id=1, pud_table=20, vmas=[FastVma(0, 32, "rw", anon_vma=2)])
    st.mms.append(child)
    table(st, 20, LV_PUD, mm=1)
    put(st, 20, 0, LEAF, F_PUD, bits=D)
    table(st, 21, LV_PMD, ST_DEPOSITED, mm=1)
    st.t_w16[20] = 21
    for t in (22, 23, 24, 25):
        table(st, t, LV_PTE, ST_DEPOSITED, mm=1)
    ring(st, (22, 23, 24, 25))
    st.t_w16[21] = 22
    # rows 10..19 were allocated on the way to id 20 and stay free
    st.f_entire[F_PUD] = st.f_large[F_PUD] = 1
    st.f_ref[F_PUD] = 2
    st.f_mmid[F_PUD] = (1, 2)
    st.f_mmc[F_PUD] = (0, 0)
    st.f_shared[F_PUD] = True
    st.p_exclusive[page(st, F_PUD, 0)] = False
    for mm in st.mms:
        mm.rss_anon = 16
        mm.rss_swap = 0
        mm.pgtables_bytes = 6 * PAGE_TABLE_BYTES
    st.stats["mthp"]["pmd"]["nr_anon"] = 0
    st.stats["node"]["nr_anon_mapped"] = 16
    st.stats["node"]["nr_anon_thps"] = 0
    check_invariants(st)
    # ...and the page mapped by two mms may not stay exclusive
    st.p_exclusive[page(st, F_PUD, 0)] = True
    assert violation(st).startswith("anon_exclusive")


def _split_pud(st: FastState) -> None:
    put(st, PUD, 0, TABLE, PUD_DEP_PMD)
    st.t_w16[PUD] = NULL
    st.t_state[PUD_DEP_PMD] = ST_LIVE
    st.t_w8[PUD_DEP_PMD] = NULL
    st.t_w16[PUD_DEP_PMD] = NULL
    for j, t in enumerate(PUD_DEP_PTES):
        put(st, PUD_DEP_PMD, j, TABLE, t)
        st.t_state[t] = ST_LIVE
        for i in range(P):
            put(st, t, i, PTE, F_PUD, j * P + i, WDY)
    b = page(st, F_PUD, 0)
    st.f_entire[F_PUD] = -1
    st.f_large[F_PUD] = 15
    st.f_mmc[F_PUD] = (15, -1)
    st.p_mapcount[b : b + 16] = 0
    st.f_npm[F_PUD] = 16
    st.p_exclusive[b : b + 16] = True
    st.f_ref[F_PUD] = 16
    st.stats["node"]["nr_anon_pud_thps"] = 0


def test_pte_mapped_pud_folio_passes_and_partial_unmap_needs_queue() -> None:
    st = base()
    _split_pud(st)
    check_invariants(st)
    # zap the last PTE: a partial unmap flags and queues the folio (deferred_split_folio)
    put(st, PUD_DEP_PTES[-1], P - 1, NONE)
    st.p_mapcount[page(st, F_PUD, 15)] = -1
    st.p_exclusive[page(st, F_PUD, 15)] = False
    st.f_large[F_PUD] -= 1
    st.f_npm[F_PUD] -= 1
    st.f_mmc[F_PUD, 0] -= 1
    st.f_ref[F_PUD] -= 1
    st.f_partial[F_PUD] = True
    st.mms[0].rss_anon -= 1
    st.stats["node"]["nr_anon_mapped"] -= 1
    st.stats["mthp"]["pud"]["nr_anon_partially_mapped"] = 1
    check_invariants(st)
    # ...which it must be
    st.deferred.clear()
    st.f_deferred[F_PUD] = False
    assert violation(st) == "deferred.partially_mapped_not_queued"


def test_dead_mm_passes() -> None:
    # exit: everything zapped and freed, check_mm's counters at zero.
    st = base()
    for t in range(1, st.next_pt):
        drop(st, t)
    st.s_count[1] = 0
    for fid in (F_PUD, F_PMD, F_SMALL):
        free(st, fid)
    mm = st.mms[0]
    mm.alive = False
    mm.rss_anon = mm.rss_swap = mm.pgtables_bytes = 0
    for row in ("pmd", "pud"):
        st.stats["mthp"][row]["nr_anon"] = 0
    for k in st.stats["node"]:
        st.stats["node"][k] = 0
    check_invariants(st)
    # ...but a PUD table left behind by exit is a leak check_mm would report
    table(st, PUD, LV_PUD)
    assert violation(st) == "dead_mm.tables"


# --------------------------------------------------------------------------------------
# Planted defects (those of test_invariants.py, same names)
# --------------------------------------------------------------------------------------


def test_poison_in_pte_ring() -> None:
    st = base()
    st.t_w8[PUD_DEP_PTES[1]] = POISON1
    assert violation(st) == "deposit.pmd_ring.poison"


def test_missing_pmd_deposit() -> None:
    st = base()
    st.t_w16[PMD] = NULL
    drop(st, PMD_DEP_PTE)
    st.mms[0].pgtables_bytes -= PAGE_TABLE_BYTES
    assert violation(st) == "deposit.pmd_ring.count"


def test_missing_pud_deposit() -> None:
    st = base()
    st.t_w16[PUD] = NULL
    for t in (PUD_DEP_PMD, *PUD_DEP_PTES):
        drop(st, t)
    st.mms[0].pgtables_bytes -= 5 * PAGE_TABLE_BYTES
    assert violation(st) == "deposit.pud_stack.count"


def test_pud_stack_pmd_short_of_pte_tables() -> None:
    st = base()
    drop(st, PUD_DEP_PTES[0])
    ring(st, PUD_DEP_PTES[1:])
    st.mms[0].pgtables_bytes -= PAGE_TABLE_BYTES
    assert violation(st) == "deposit.pud_stack.pte_count"


def test_wrong_page_mapcount() -> None:
    st = base()
    st.p_mapcount[page(st, F_PUD, 3)] = 0
    assert violation(st) == "mapcount.page"


def test_wrong_entire_mapcount() -> None:
    st = base()
    st.f_entire[F_PMD] = 1
    assert violation(st) == "mapcount.entire"


def test_refcount_off_by_one() -> None:
    st = base()
    st.f_ref[F_PMD] = 2
    assert violation(st) == "refcount"


def test_pinned_small_folio_counts_bias() -> None:
    st = base()
    st.pins[1] = (F_SMALL, 0)
    assert violation(st) == "refcount"
    st.f_ref[F_SMALL] += 1024
    check_invariants(st)


def test_writable_pte_on_non_exclusive_page() -> None:
    st = base()
    st.p_exclusive[page(st, F_SMALL, 0)] = False
    assert violation(st) == "anon_exclusive.writable"


def test_rss_off() -> None:
    st = base()
    st.mms[0].rss_anon += 1
    assert violation(st).startswith("rss")


def test_pgtables_bytes_off() -> None:
    st = base()
    st.mms[0].pgtables_bytes -= PAGE_TABLE_BYTES
    assert violation(st) == "pgtables_bytes"


def test_partially_mapped_not_queued() -> None:
    st = base()
    st.f_partial[F_PMD] = True
    st.stats["mthp"]["pmd"]["nr_anon_partially_mapped"] = 1
    assert violation(st) == "deferred.partially_mapped_not_queued"


def test_list_head_pmd_table_in_its_own_pte_ring() -> None:
    # INIT_LIST_HEAD(&pmd->lru) made the PMD table's lru.prev (= pmd_huge_pte) itself.
    st = base("list_head")
    st.t_w8[PUD_DEP_PMD] = st.t_w16[PUD_DEP_PMD] = PUD_DEP_PMD
    assert violation(st) == "deposit.pmd_ring.wrong_level"


def test_list_head_real_fault_sequence() -> None:
    st = base("list_head")
    a, b, c, d = PUD_DEP_PTES
    words = {PUD_DEP_PMD: (a, d), a: (b, PUD_DEP_PMD), b: (c, a), c: (d, b), d: (PUD_DEP_PMD, c)}
    for t, (w8, w16) in words.items():
        st.t_w8[t], st.t_w16[t] = w8, w16
    inv = violation(st)
    assert inv.startswith("deposit.")
    assert inv.endswith("wrong_level")


def _two_pud_leaves() -> tuple[FastState, int]:
    """The base state plus a second PUD leaf at PUD entry 2 (stack: 30 on top of 2)."""
    st = base()
    st.mms[0].vmas = [FastVma(0, 48, "rw", anon_vma=1)]
    put(st, PUD, 2, LEAF, 4, bits=WDY)
    table(st, 30, LV_PMD, ST_DEPOSITED)
    st.t_w8[30] = st.t_w16[PUD]  # push: new top links to the old top
    st.t_w16[PUD] = 30
    for t in (31, 32, 33, 34):
        table(st, t, LV_PTE, ST_DEPOSITED)
    ring(st, (31, 32, 33, 34))
    st.t_w16[30] = 31
    thp(st, 4, 4)
    st.mms[0].rss_anon += 16
    st.mms[0].pgtables_bytes += 5 * PAGE_TABLE_BYTES
    st.stats["mthp"]["pud"]["nr_anon"] += 1
    st.stats["node"]["nr_anon_mapped"] += 16
    st.stats["node"]["nr_anon_pud_thps"] += 16
    return st, 30


def test_cycle_in_lru_next_stack() -> None:
    st, top = _two_pud_leaves()
    check_invariants(st)
    st.t_w8[PUD_DEP_PMD] = top  # bottom of the stack now points back to the top
    assert violation(st) == "deposit.pud_stack.cycle"


def test_cycle_in_pte_ring() -> None:
    st = base()
    a, _b, c, _d = PUD_DEP_PTES
    st.t_w8[c] = a
    assert violation(st) == "deposit.pmd_ring.cycle"
    st = base()
    st.t_w16[a] = c
    assert violation(st) == "deposit.pmd_ring.prev"


@pytest.mark.parametrize(
    ("word", "name"),
    [
        (NULL, "deposit.pmd_ring.null"),
        (POISON2, "deposit.pmd_ring.poison"),
        (-7, "deposit.pmd_ring.bad_word"),
        (999, "deposit.pmd_ring.use_after_free"),
        (PTE_T, "deposit.pmd_ring.state"),
        (PUD, "deposit.pmd_ring.wrong_level"),
    ],
)
def test_chain_words_never_crash(word: int, name: str) -> None:
    st = base()
    st.t_w8[PUD_DEP_PTES[2]] = word
    assert violation(st) == name
    st = base()
    st.t_w16[PUD] = word
    inv = violation(st)
    if word != NULL:
        assert inv.startswith("deposit.pud_stack")


def test_freed_table_in_ring() -> None:
    st = base()
    st.t_state[PUD_DEP_PTES[2]] = ST_FREE
    st.mms[0].pgtables_bytes -= PAGE_TABLE_BYTES
    assert violation(st) == "deposit.pmd_ring.use_after_free"


def test_leaked_table() -> None:
    st = base()
    table(st, 40, LV_PTE)
    st.mms[0].pgtables_bytes += PAGE_TABLE_BYTES
    assert violation(st) == "pgtable.leak"


def test_table_reached_twice() -> None:
    # Two PMD entries naming the same live PTE table (a copy that forgot to allocate).
    st = base()
    put(st, PMD, 2, TABLE, PTE_T)
    assert violation(st) == "pgtable.double_reference"


def test_pmd_leaf_straddles_vma() -> None:
    st = base()
    st.mms[0].vmas = [FastVma(0, 18, "rw", anon_vma=1), FastVma(18, 32, "r", anon_vma=1)]
    assert violation(st) == "geometry.leaf_straddles_vma"


def test_leaf_of_wrong_order() -> None:
    st = base()
    put(st, PMD, 0, LEAF, F_PUD, bits=D | Y)
    assert violation(st) == "geometry.leaf_order"


def test_freed_folio_still_mapped() -> None:
    st = base()
    free(st, F_SMALL)
    assert violation(st) == "folio.freed_mapped"


def test_swap_count_off() -> None:
    st = base()
    st.s_count[1] = 2
    assert violation(st) == "swap.count"


def test_mm_id_slot_overcounts() -> None:
    st = base()
    st.f_mmc[F_PMD, 0] = 1
    assert violation(st) == "mm_id.slot_count"


def test_small_folio_mapcount_and_leak() -> None:
    st = base()
    st.p_mapcount[page(st, F_SMALL, 0)] = 1
    assert violation(st) == "mapcount.small"
    # an order-0 folio nothing maps or pins still holding its reference: a leak
    st = base()
    folio(st, 4, 0)
    assert violation(st) == "refcount"
    # ...and one at refcount 0 that was never freed
    st.f_ref[4] = 0
    assert violation(st) == "refcount.live_zero"


def test_small_folio_shared_by_two_mms_is_not_exclusive() -> None:
    st = base()
    put(st, PTE_T, 0, PTE, F_SMALL, 0, D | Y)
    child = FastMm(id=1, pud_table=50, vmas=[FastVma(16, 24, "rw", anon_vma=2)])
    st.mms.append(child)
    table(st, 50, LV_PUD, mm=1)
    put(st, 50, 1, TABLE, 51)
    table(st, 51, LV_PMD, mm=1)
    put(st, 51, 1, TABLE, 52)
    table(st, 52, LV_PTE, mm=1)
    put(st, 52, 0, PTE, F_SMALL, 0, D | Y)
    child.rss_anon = 1
    child.pgtables_bytes = 3 * PAGE_TABLE_BYTES
    st.p_mapcount[page(st, F_SMALL, 0)] = 1
    st.f_ref[F_SMALL] = 2
    assert violation(st) == "anon_exclusive.shared_mms"
    st.p_exclusive[page(st, F_SMALL, 0)] = False
    check_invariants(st)


def test_unexpected_errors_are_state_malformed() -> None:
    st = base()
    st.stats = None  # type: ignore[assignment]
    assert violation(st) in ("state.malformed", "stats.missing")
    st = base()
    st.t_row[PTE_T] = 10**6  # an entry row past the arrays
    assert violation(st) == "state.malformed"


def test_x86_64_split_pud_state_is_checked_to_the_last_page() -> None:
    # One PUD folio split to PTEs at P=512: 512 PTE tables x 512 entries, 262144 pages.
    n = 512
    nr = n * n
    st = FastState(Config(geometry=n))
    st.mms.append(FastMm(id=0, pud_table=1, vmas=[FastVma(0, nr, "rw", anon_vma=1)]))
    table(st, 1, LV_PUD)
    table(st, 2, LV_PMD)
    put(st, 1, 0, TABLE, 2)
    idx = np.arange(n)
    for j in range(n):
        tid = 3 + j
        table(st, tid, LV_PTE)
        put(st, 2, j, TABLE, tid)
        r = st.wrow(tid)
        st.e_kind[r] = PTE
        st.e_id[r] = 1
        st.e_page[r] = j * n + idx
        st.e_bits[r] = WDY
    folio(st, 1, 18, ref=nr, mapcount=0, exclusive=True)
    st.f_large[1] = nr - 1
    st.f_npm[1] = nr
    st.f_mmid[1] = (1, 0)
    st.f_mmc[1] = (nr - 1, -1)
    mm = st.mms[0]
    mm.rss_anon = nr
    mm.pgtables_bytes = PAGE_TABLE_BYTES * (n + 2)
    st.stats["mthp"]["pud"]["nr_anon"] = 1
    st.stats["node"]["nr_anon_mapped"] = nr
    check_invariants(st)
    # a defect in the last page is still found
    st.p_exclusive[page(st, 1, nr - 1)] = False
    assert violation(st) == "anon_exclusive.writable"


# --------------------------------------------------------------------------------------
# Snapshot
# --------------------------------------------------------------------------------------


def _plain_json_only(v: Any) -> None:
    if isinstance(v, dict):
        for k, x in v.items():
            assert type(k) is str
            _plain_json_only(x)
    elif isinstance(v, list):
        for x in v:
            _plain_json_only(x)
    else:
        assert v is None or type(v) in (bool, int, str), f"{v!r} is a {type(v).__name__}"


def test_snapshot_of_base_state() -> None:
    st = base()
    # contents on some pages, a raw poison word, a pin, a freed folio (left out)
    b = page(st, F_PUD, 0)
    st.p_data[b + 3 : b + 6] = 9
    st.p_data[b + 6] = 2**64 - 1
    st.t_w8[PTE_T] = POISON1
    st.t_w16[PTE_T] = POISON2
    st.pins[1] = (F_SMALL, 0)
    folio(st, 4, 0)
    free(st, 4)
    st.fail_alloc["pmd"] = 2
    st.stats["vmstat"]["thp_fault_alloc_pud"] = 1
    snap = take_snapshot(st)
    stats = empty_stats()
    stats["vmstat"]["thp_fault_alloc_pud"] = 1
    stats["mthp"]["pud"]["nr_anon"] = 1
    stats["mthp"]["pmd"]["nr_anon"] = 1
    stats["node"] = {"nr_anon_mapped": 21, "nr_anon_thps": 4, "nr_anon_pud_thps": 16}

    def dep(tid: int, w8: int, w16: int) -> dict[str, Any]:
        return {"id": tid, "level": "pte", "mm": 0, "state": "deposited", "w8": w8,
                "w16": w16, "entries": []}

    expected = {
        "format": "pudthp-snapshot/1",
        "geometry": 4,
        "mms": [
            {"id": 0, "alive": True, "vmas": [[0, 32, "rw", []]], "rss_anon": 21,
             "rss_swap": 1, "pgtables_bytes": 9 * 4096, "pud_table": 1, "has_pinned": False}
        ],
        "pagetables": [
            {"id": 1, "level": "pud", "mm": 0, "state": "live", "w8": None, "w16": 2,
             "entries": [[0, ["leaf", 1, 1, 1, 1]], [1, ["table", 7]]]},
            {"id": 2, "level": "pmd", "mm": 0, "state": "deposited", "w8": None, "w16": 6,
             "entries": []},
            dep(3, 4, 6),
            dep(4, 5, 3),
            dep(5, 6, 4),
            dep(6, 3, 5),
            {"id": 7, "level": "pmd", "mm": 0, "state": "live", "w8": None, "w16": 8,
             "entries": [[0, ["leaf", 2, 1, 1, 1]], [1, ["table", 9]]]},
            dep(8, 8, 8),
            {"id": 9, "level": "pte", "mm": 0, "state": "live", "w8": LIST_POISON1,
             "w16": LIST_POISON2,
             "entries": [[0, ["pte", 3, 0, 1, 1, 1]], [1, ["swap", 1]], [2, ["zero"]]]},
        ],
        "folios": [
            {"id": 1, "order": 4, "node": 0, "refcount": 1, "pincount": 0,
             "entire_mapcount": 0, "large_mapcount": 0, "nr_pages_mapped": EM,
             "mm_id": [1, 0], "mm_id_mapcount": [0, -1], "shared": False,
             "flags": ["deferred"], "mapcount": [[-1, 16]],
             "anon_exclusive": [[True, 1], [False, 15]],
             "data": [[0, 3], [9, 3], [2**64 - 1, 1], [0, 9]]},
            {"id": 2, "order": 2, "node": 0, "refcount": 1, "pincount": 0,
             "entire_mapcount": 0, "large_mapcount": 0, "nr_pages_mapped": EM,
             "mm_id": [1, 0], "mm_id_mapcount": [0, -1], "shared": False, "flags": [],
             "mapcount": [[-1, 4]], "anon_exclusive": [[True, 1], [False, 3]],
             "data": [[0, 4]]},
            {"id": 3, "order": 0, "node": 0, "refcount": 1, "pincount": 0,
             "entire_mapcount": -1, "large_mapcount": -1, "nr_pages_mapped": 0,
             "mm_id": [0, 0], "mm_id_mapcount": [-1, -1], "shared": False, "flags": [],
             "mapcount": [[0, 1]], "anon_exclusive": [[True, 1]], "data": [[0, 1]]},
        ],
        "swap": [{"slot": 1, "count": 1, "data": 7, "zeromap": False}],
        "deferred": [1],
        "pins": [{"id": 1, "folio": 3, "page": 0}],
        "fail_alloc": {"pud": 0, "pmd": 2, "base": 0},
        "stats": stats,
    }
    assert snap == expected
    assert list(snap) == list(expected)
    _plain_json_only(snap)
    json.dumps(snap)
    # the snapshot is a copy: later changes to the state do not show through
    st.stats["vmstat"]["thp_fault_alloc_pud"] = 5
    assert snap["stats"]["vmstat"]["thp_fault_alloc_pud"] == 1
    assert digest_snapshot(snap) == digest_snapshot(copy.deepcopy(expected))
    assert digest_snapshot(snap) != digest_snapshot(take_snapshot(st))


def test_snapshot_of_dead_mm_and_flags() -> None:
    st = base()
    st.mms[0].vmas[0].hugepage = True
    st.mms.append(FastMm(id=1, pud_table=3, alive=False, has_pinned=True))
    st.f_dirty[F_PMD] = st.f_swapcache[F_PMD] = st.f_partial[F_PMD] = True
    snap = take_snapshot(st)
    assert snap["mms"][0]["vmas"] == [[0, 32, "rw", ["hugepage"]]]
    assert snap["mms"][1] == {"id": 1, "alive": False, "vmas": [], "rss_anon": 0,
                              "rss_swap": 0, "pgtables_bytes": 0, "pud_table": None,
                              "has_pinned": True}
    assert snap["folios"][1]["flags"] == ["dirty", "partially_mapped", "swapcache"]


# --------------------------------------------------------------------------------------
# Differential: the reference's own states, converted to the fast layout
# --------------------------------------------------------------------------------------


class Unconvertible(Exception):
    """A reference state the fast layout cannot express (a non-integer word, ...)."""


_LEVEL = {"pud": LV_PUD, "pmd": LV_PMD, "pte": LV_PTE}
_STATE = {"live": ST_LIVE, "deposited": ST_DEPOSITED, "freed": ST_FREE}
_KIND = {"table": TABLE, "leaf": LEAF, "zero": ZERO, "pte": PTE, "swap": SWAP}


def _word(w: object) -> int:
    if w is None:
        return NULL
    if w == LIST_POISON1:
        return POISON1
    if w == LIST_POISON2:
        return POISON2
    if type(w) is int and w > 0:
        return w
    raise Unconvertible(f"word {w!r}")


def fast_from_ref(ref: MmState) -> FastState:
    """The same logical state in the fast layout (ids, words, pages all carried over)."""
    st = FastState(ref.cfg)
    while st.next_pt < max([ref.next_pt_id, *(k + 1 for k in ref.tables)]):
        st.new_table_row()
    for tid, t in ref.tables.items():
        if t.id != tid or t.level not in _LEVEL or t.state not in _STATE:
            raise Unconvertible(f"table {tid}")
        st.t_level[tid] = _LEVEL[t.level]
        st.t_state[tid] = _STATE[t.state]
        st.t_mm[tid] = t.mm
        st.t_w8[tid] = _word(t.w8)
        st.t_w16[tid] = _word(t.w16)
        for i, e in enumerate(t.entries):
            if e is None:
                continue
            if e[0] not in _KIND:
                raise Unconvertible(f"entry {e!r}")
            bits = 0
            if e[0] in ("leaf", "pte"):
                bits = (W if e[-3] else 0) | (D if e[-2] else 0) | (Y if e[-1] else 0)
            ident = e[1] if len(e) > 1 else 0
            pg = e[2] if e[0] == "pte" else 0
            put(st, tid, i, _KIND[e[0]], ident, pg, bits)
    nf = max([ref.next_folio_id, *(k + 1 for k in ref.folios)])
    if nf > 1:
        st.new_folio_rows(nf - 1)
    for fid in sorted(ref.folios):
        f = ref.folios[fid]
        if f.id != fid or not len(f.mapcount) == len(f.anon_exclusive) == len(f.data) == f.nr:
            raise Unconvertible(f"folio {fid}")
        b = st.new_pages(f.nr)
        st.f_order[fid] = f.order
        st.f_node[fid] = f.node
        st.f_nr[fid] = f.nr
        st.f_base[fid] = b
        st.f_ref[fid] = f.refcount
        st.f_pin[fid] = f.pincount
        st.f_entire[fid] = f.entire_mapcount
        st.f_large[fid] = f.large_mapcount
        st.f_npm[fid] = f.nr_pages_mapped
        st.f_mmid[fid] = f.mm_id
        st.f_mmc[fid] = f.mm_id_mapcount
        st.f_shared[fid] = f.shared
        st.f_dirty[fid] = f.dirty
        st.f_swapcache[fid] = f.swapcache
        st.f_partial[fid] = f.partially_mapped
        st.f_deferred[fid] = f.deferred
        st.f_live[fid] = not f.freed
        st.p_mapcount[b : b + f.nr] = f.mapcount
        st.p_exclusive[b : b + f.nr] = f.anon_exclusive
        st.p_data[b : b + f.nr] = np.array(f.data, dtype=np.uint64)
    ns = max([ref.next_swap_slot, *(k + 1 for k in ref.swap)])
    if ns > 1:
        st.new_slots(ns - 1)
    for slot, s in ref.swap.items():
        if s.slot != slot or s.count == 0:  # a slot at count 0 is a free slot here
            raise Unconvertible(f"slot {slot}")
        st.s_count[slot] = s.count
        st.s_data[slot] = s.data
    for mm in ref.mms:
        st.mms.append(
            FastMm(
                id=mm.id,
                pud_table=mm.pud_table,
                alive=mm.alive,
                vmas=[
                    FastVma(v.start, v.end, v.prot, v.hugepage, v.nohugepage, v.anon_vma)
                    for v in mm.vmas
                ],
                rss_anon=mm.rss_anon,
                rss_swap=mm.rss_swap,
                pgtables_bytes=mm.pgtables_bytes,
                has_pinned=mm.has_pinned,
            )
        )
    for pid, p in ref.pins.items():
        if p.id != pid:
            raise Unconvertible(f"pin {pid}")
        st.pins[pid] = (p.folio, p.page)
    st.next_pin = ref.next_pin_id
    st.deferred = list(ref.deferred)
    st.stats = copy.deepcopy(ref.stats)
    st.fail_alloc = dict(ref.fail_alloc)
    return st


def _verdict(check: Any, state: Any) -> str | None:
    try:
        check(state)
    except InvariantViolation as e:
        return e.invariant
    return None


def _ref_states(geometry: int, seeds: range, ops: int) -> list[MmState]:
    """The states the reference reaches after each op of seeded random programs."""
    out = []
    for seed in seeds:
        rng = random.Random(f"fast-inv:{geometry}:{seed}")
        cfg = random_config(rng, geometry)
        model = RefModel(cfg)
        for op in ProgramGenerator(cfg, rng).program(ops).ops:
            model.apply(op)
            out.append(copy.deepcopy(model.st))
    return out


@pytest.mark.parametrize("geometry", [4, 8])
def test_same_snapshot_and_verdict_as_reference(geometry: int) -> None:
    for k, ref in enumerate(_ref_states(geometry, range(10), 30)):
        st = fast_from_ref(ref)
        assert _verdict(check_invariants, st) == _verdict(ref_check_invariants, ref), k
        assert take_snapshot(st) == ref_take_snapshot(ref), k


def _plant(ref: MmState, rng: random.Random) -> None:
    """One random defect, of the kinds a buggy model could leave behind."""
    tabs = sorted(ref.tables)
    fols = sorted(ref.folios)
    what = rng.randrange(9)
    if what == 0 and tabs:
        t = ref.tables[rng.choice(tabs)]
        w = rng.choice([None, LIST_POISON1, LIST_POISON2, 999, rng.choice(tabs)])
        if rng.random() < 0.5:
            t.w8 = w
        else:
            t.w16 = w
    elif what == 1 and tabs:
        t = ref.tables[rng.choice(tabs)]
        change = rng.randrange(3)
        if change == 0:
            t.state = rng.choice(["live", "deposited"])
        elif change == 1:
            t.level = rng.choice(["pud", "pmd", "pte"])
        else:
            del ref.tables[t.id]
    elif what == 2 and tabs:
        t = ref.tables[rng.choice(tabs)]
        i = rng.randrange(len(t.entries))
        t.entries[i] = rng.choice(
            [
                None,
                ("zero",),
                ("table", rng.choice(tabs)),
                ("leaf", rng.choice([*fols, 999]), True, True, True),
                ("pte", rng.choice([*fols, 999]), rng.randrange(-1, 3), True, True, True),
                ("swap", rng.randrange(1, 4)),
            ]
        )
    elif what in (3, 4) and fols:
        f = ref.folios[rng.choice(fols)]
        d = rng.choice([-1, 1])
        field = rng.randrange(10)
        if field == 0:
            f.refcount += d
        elif field == 1:
            f.entire_mapcount += d
        elif field == 2:
            f.large_mapcount += d
        elif field == 3:
            f.nr_pages_mapped += d
        elif field == 4:
            f.mm_id_mapcount[rng.randrange(2)] += d
        elif field == 5:
            f.mapcount[rng.randrange(f.nr)] += d
        elif field == 6:
            j = rng.randrange(f.nr)
            f.anon_exclusive[j] = not f.anon_exclusive[j]
        elif field == 7:
            f.partially_mapped = not f.partially_mapped
        elif field == 8:
            f.shared = not f.shared
        else:
            f.freed = not f.freed
    elif what == 5:
        mm = rng.choice(ref.mms)
        if rng.random() < 0.5:
            mm.rss_anon += 1
        elif mm.vmas:
            rng.choice(mm.vmas).prot = rng.choice(["none", "r", "rw"])
    elif what == 6 and ref.swap:
        ref.swap[rng.choice(sorted(ref.swap))].count += 1
    elif what == 7 and fols:
        f = ref.folios[rng.choice(fols)]
        ref.pins[99] = PinRecord(99, f.id, rng.randrange(f.nr + 1))
    elif what == 8:
        ref.deferred.append(rng.choice([*fols, 999]))
    else:
        ref.swap[77] = SwapSlot(77, 1, 0)


@pytest.mark.parametrize("geometry", [4, 8])
def test_planted_defects_get_the_reference_name(geometry: int) -> None:
    rng = random.Random(f"plant:{geometry}")
    tried = 0
    for k, good in enumerate(_ref_states(geometry, range(3), 25)):
        if _verdict(ref_check_invariants, good) is not None:
            continue
        for _ in range(6):
            ref = copy.deepcopy(good)
            for _ in range(rng.choice((1, 1, 2))):
                _plant(ref, rng)
            try:
                st = fast_from_ref(ref)
            except Unconvertible:
                continue
            tried += 1
            expected = _verdict(ref_check_invariants, ref)
            assert _verdict(check_invariants, st) == expected, (k, expected)
    assert tried > 100
