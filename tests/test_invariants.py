"""check_invariants() on hand-built states: one consistent state, then one planted defect each.

The states are built directly from ``mm_types`` at P=4 (PMD folio 4 pages, PUD folio 16
pages, 64 pages of address space), without any model operation, so these tests pin down the
checker alone.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from pudthp_ref.invariants import check_invariants
from pudthp_ref.mm_types import (
    PT_DEPOSITED,
    PT_FREED,
    Folio,
    MmState,
    MmStruct,
    PtDesc,
    SwapSlot,
    Vma,
)
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    LIST_POISON1,
    PAGE_TABLE_BYTES,
    Config,
    InvariantViolation,
)

P = 4

# Table ids of the base state
PUD = 1  # mm 0's PUD table
PUD_DEP_PMD = 2  # PMD table deposited on the PUD stack for the PUD leaf at PUD entry 0
PUD_DEP_PTES = (3, 4, 5, 6)  # the P PTE tables deposited in it
PMD = 7  # live PMD table under PUD entry 1
PMD_DEP_PTE = 8  # PTE table deposited in PMD for the PMD leaf at its entry 0
PTE = 9  # live PTE table under PMD entry 1
# Folio ids
F_PUD = 1  # order 4, PUD-mapped at vpn 0
F_PMD = 2  # order 2, PMD-mapped at vpn 16
F_SMALL = 3  # order 0, PTE-mapped at vpn 20


def ring(st: MmState, ids: tuple[int, ...]) -> None:
    """Link tables as mainline list_add leaves them: circular, next = w8, prev = w16."""
    n = len(ids)
    for k, t in enumerate(ids):
        st.tables[t].w8 = ids[(k + 1) % n]
        st.tables[t].w16 = ids[(k - 1) % n]


def table(st: MmState, tid: int, level: str, state: str = "live", mm: int = 0) -> PtDesc:
    t = PtDesc(id=tid, level=level, mm=mm, entries=[None] * P, state=state)
    st.tables[tid] = t
    return t


def thp(fid: int, order: int, mm: int = 0) -> Folio:
    """A THP right after folio_add_new_anon_rmap at PMD/PUD level in ``mm``."""
    nr = 1 << order
    return Folio(
        id=fid,
        order=order,
        node=0,
        nr=nr,
        refcount=1,
        entire_mapcount=0,
        large_mapcount=0,
        nr_pages_mapped=ENTIRELY_MAPPED,
        mm_id=[mm + 1, 0],
        mm_id_mapcount=[0, -1],
        mapcount=[-1] * nr,
        anon_exclusive=[True] + [False] * (nr - 1),
        data=[0] * nr,
    )


def base(deposit: str = "lru_next") -> MmState:
    """One mm, VMA [0, 32) rw, with:

    - PUD entry 0: writable PUD leaf of F_PUD, its PMD table on the PUD stack holding P PTE
      tables (patch 01's two-level deposit), queued unflagged on the deferred list;
    - PUD entry 1 -> PMD table: entry 0 a writable PMD leaf of F_PMD with one deposited PTE
      table; entry 1 -> PTE table with a writable PTE of order-0 F_SMALL, a swap PTE and a
      zero-page PTE.
    """
    cfg = Config(geometry=P, deposit=deposit)
    st = MmState(cfg=cfg, geom=cfg.geom)
    mm = MmStruct(id=0, pud_table=PUD, vmas=[Vma(0, 32, "rw", anon_vma=1)])
    st.mms.append(mm)

    pud = table(st, PUD, "pud")
    pud.entries[0] = ("leaf", F_PUD, True, True, True)
    pud.entries[1] = ("table", PMD)
    table(st, PUD_DEP_PMD, "pmd", PT_DEPOSITED)
    pud.w16 = PUD_DEP_PMD  # pud_huge_pmd: top of the stack
    st.tables[PUD_DEP_PMD].w8 = None  # end of the stack
    for t in PUD_DEP_PTES:
        table(st, t, "pte", PT_DEPOSITED)
    ring(st, PUD_DEP_PTES)
    st.tables[PUD_DEP_PMD].w16 = PUD_DEP_PTES[-1]  # pmd_huge_pte: newest deposit

    pmd = table(st, PMD, "pmd")
    pmd.entries[0] = ("leaf", F_PMD, True, True, True)
    pmd.entries[1] = ("table", PTE)
    table(st, PMD_DEP_PTE, "pte", PT_DEPOSITED)
    ring(st, (PMD_DEP_PTE,))  # INIT_LIST_HEAD: w8 == w16 == itself
    pmd.w16 = PMD_DEP_PTE

    pte = table(st, PTE, "pte")
    pte.entries[0] = ("pte", F_SMALL, 0, True, True, True)  # vpn 20
    pte.entries[1] = ("swap", 1)  # vpn 21
    pte.entries[2] = ("zero",)  # vpn 22

    st.folios[F_PUD] = thp(F_PUD, 2 * 2)
    st.folios[F_PMD] = thp(F_PMD, 2)
    st.folios[F_SMALL] = Folio(
        id=F_SMALL,
        order=0,
        node=0,
        nr=1,
        refcount=1,
        mapcount=[0],
        anon_exclusive=[True],
        data=[0],
    )
    st.folios[F_PUD].deferred = True
    st.deferred.append(F_PUD)
    st.swap[1] = SwapSlot(slot=1, count=1, data=7)

    mm.rss_anon = 16 + 4 + 1
    mm.rss_swap = 1
    mm.pgtables_bytes = PAGE_TABLE_BYTES * len(st.tables)
    st.stats["mthp"]["pud"]["nr_anon"] = 1
    st.stats["mthp"]["pmd"]["nr_anon"] = 1
    st.stats["node"]["nr_anon_mapped"] = 16 + 4 + 1
    st.stats["node"]["nr_anon_thps"] = P
    st.stats["node"]["nr_anon_pud_thps"] = P * P
    return st


def violation(st: MmState) -> str:
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
    # list_head only changes the PUD stack; with no PUD leaf the stack is empty and the
    # PMD-level deposits are plain mainline.
    st = base("list_head")
    pud = st.tables[PUD]
    pud.entries[0] = None
    pud.w16 = None
    for t in (PUD_DEP_PMD, *PUD_DEP_PTES):
        del st.tables[t]
    st.folios[F_PUD].refcount = 0
    _free(st, F_PUD)
    st.mms[0].rss_anon -= 16
    st.mms[0].pgtables_bytes -= 5 * PAGE_TABLE_BYTES
    st.stats["mthp"]["pud"]["nr_anon"] = 0
    st.stats["node"]["nr_anon_mapped"] -= 16
    st.stats["node"]["nr_anon_pud_thps"] = 0
    check_invariants(st)


def _free(st: MmState, fid: int) -> None:
    f = st.folios[fid]
    if f.deferred:
        st.deferred.remove(fid)
    f.freed = True
    f.deferred = False
    f.refcount = 0
    f.entire_mapcount = -1
    f.large_mapcount = -1
    f.nr_pages_mapped = 0
    f.mm_id = [0, 0]
    f.mm_id_mapcount = [-1, -1]
    f.anon_exclusive = [False] * f.nr


def test_forked_pud_leaf_passes() -> None:
    # fork of a PUD leaf: the child gets its own two-level deposit, both entries are
    # write-protected, the head loses AnonExclusive, entire/large/refcount +1, the child
    # takes slot 1 and SHARED is set.
    st = base()
    st.tables[PUD].entries = [("leaf", F_PUD, False, True, True), None, None, None]
    for t in (PMD, PMD_DEP_PTE, PTE):
        del st.tables[t]
    st.swap.clear()
    for fid in (F_PMD, F_SMALL):
        del st.folios[fid]
    child = MmStruct(id=1, pud_table=20, vmas=[Vma(0, 32, "rw", anon_vma=1)])
    st.mms.append(child)
    cpud = table(st, 20, "pud", mm=1)
    cpud.entries[0] = ("leaf", F_PUD, False, True, False)
    table(st, 21, "pmd", PT_DEPOSITED, mm=1)
    cpud.w16 = 21
    for t in (22, 23, 24, 25):
        table(st, t, "pte", PT_DEPOSITED, mm=1)
    ring(st, (22, 23, 24, 25))
    st.tables[21].w16 = 22
    f = st.folios[F_PUD]
    f.entire_mapcount = f.large_mapcount = 1
    f.refcount = 2
    f.mm_id = [1, 2]
    f.mm_id_mapcount = [0, 0]
    f.shared = True
    f.anon_exclusive[0] = False
    for mm in st.mms:
        mm.rss_anon = 16
        mm.rss_swap = 0
        mm.pgtables_bytes = 6 * PAGE_TABLE_BYTES
    st.stats["mthp"]["pmd"]["nr_anon"] = 0
    st.stats["node"]["nr_anon_mapped"] = 16
    st.stats["node"]["nr_anon_thps"] = 0
    check_invariants(st)
    # ...and the page mapped by two mms may not stay exclusive
    f.anon_exclusive[0] = True
    assert violation(st).startswith("anon_exclusive")


def test_pte_mapped_pud_folio_passes_and_partial_unmap_needs_queue() -> None:
    # A PUD split to PTEs (patch: one step, P*P PTEs copying write, per-page _mapcount 0,
    # AnonExclusive copied from the head), the withdrawn deposit now live in place.
    st = base()
    _split_pud(st)
    check_invariants(st)
    # zap the last PTE: a partial unmap flags and queues the folio (deferred_split_folio)
    st.tables[PUD_DEP_PTES[-1]].entries[P - 1] = None
    f = st.folios[F_PUD]
    f.mapcount[15] = -1
    f.anon_exclusive[15] = False
    f.large_mapcount -= 1
    f.nr_pages_mapped -= 1
    f.mm_id_mapcount[0] -= 1
    f.refcount -= 1
    f.partially_mapped = True
    st.mms[0].rss_anon -= 1
    st.stats["node"]["nr_anon_mapped"] -= 1
    st.stats["mthp"]["pud"]["nr_anon_partially_mapped"] = 1
    check_invariants(st)


def _split_pud(st: MmState) -> None:
    pud = st.tables[PUD]
    pmd = st.tables[PUD_DEP_PMD]
    pud.entries[0] = ("table", PUD_DEP_PMD)
    pud.w16 = None
    pmd.state = "live"
    pmd.w8 = None
    pmd.w16 = None
    for j, t in enumerate(PUD_DEP_PTES):
        pmd.entries[j] = ("table", t)
        pt = st.tables[t]
        pt.state = "live"
        pt.entries = [("pte", F_PUD, j * P + i, True, True, True) for i in range(P)]
    f = st.folios[F_PUD]
    f.entire_mapcount = -1
    f.large_mapcount = 15
    f.mm_id_mapcount = [15, -1]
    f.mapcount = [0] * 16
    f.nr_pages_mapped = 16
    f.anon_exclusive = [True] * 16
    f.refcount = 16
    st.stats["node"]["nr_anon_pud_thps"] = 0


def test_dead_mm_passes() -> None:
    # exit: everything zapped and freed, check_mm's counters at zero.
    st = base()
    st.tables.clear()
    st.swap.clear()
    st.deferred.clear()
    for fid in list(st.folios):
        st.folios[fid].deferred = False
        _free(st, fid)
        st.folios[fid].mapcount = [-1] * st.folios[fid].nr
    mm = st.mms[0]
    mm.alive = False
    mm.rss_anon = mm.rss_swap = mm.pgtables_bytes = 0
    for row in ("pmd", "pud"):
        st.stats["mthp"][row]["nr_anon"] = 0
    for k in st.stats["node"]:
        st.stats["node"][k] = 0
    check_invariants(st)
    # ...but a PUD table left behind by exit is a leak check_mm would report
    table(st, PUD, "pud")
    assert violation(st) == "dead_mm.tables"


# --------------------------------------------------------------------------------------
# Planted defects
# --------------------------------------------------------------------------------------


def test_poison_in_pte_ring() -> None:
    # A deposited PTE table's lru.next reads LIST_POISON1: some path list_del()'d it
    # (withdraw) while it is still reachable from pmd_huge_pte, so the next withdraw would
    # dereference poison.
    st = base()
    st.tables[PUD_DEP_PTES[1]].w8 = LIST_POISON1
    assert violation(st) == "deposit.pmd_ring.poison"


def test_missing_pmd_deposit() -> None:
    # A PMD leaf with nothing deposited in its PMD table: __split_huge_pmd_locked would
    # withdraw NULL (pgtable_trans_huge_withdraw on an empty pmd_huge_pte) and oops.
    st = base()
    st.tables[PMD].w16 = None
    del st.tables[PMD_DEP_PTE]
    st.mms[0].pgtables_bytes -= PAGE_TABLE_BYTES
    assert violation(st) == "deposit.pmd_ring.count"


def test_missing_pud_deposit() -> None:
    # A PUD leaf without its PMD table on the pud_huge_pmd stack: a PUD split has nothing
    # to pop.
    st = base()
    st.tables[PUD].w16 = None
    for t in (PUD_DEP_PMD, *PUD_DEP_PTES):
        del st.tables[t]
    st.mms[0].pgtables_bytes -= 5 * PAGE_TABLE_BYTES
    assert violation(st) == "deposit.pud_stack.count"


def test_pud_stack_pmd_short_of_pte_tables() -> None:
    # The stacked PMD table holds only P-1 PTE tables: the PUD split would withdraw NULL
    # for its last PMD entry.
    st = base()
    del st.tables[PUD_DEP_PTES[0]]
    ring(st, PUD_DEP_PTES[1:])
    st.mms[0].pgtables_bytes -= PAGE_TABLE_BYTES
    assert violation(st) == "deposit.pud_stack.pte_count"


def test_wrong_page_mapcount() -> None:
    # Page 3 of the PUD folio claims a PTE mapping (_mapcount 0) though only the PUD leaf
    # maps it: __folio_add_rmap counted a PTE that was never installed.
    st = base()
    st.folios[F_PUD].mapcount[3] = 0
    assert violation(st) == "mapcount.page"


def test_wrong_entire_mapcount() -> None:
    # _entire_mapcount says two PMD mappings, the page tables hold one.
    st = base()
    st.folios[F_PMD].entire_mapcount = 1
    assert violation(st) == "mapcount.entire"


def test_refcount_off_by_one() -> None:
    # One reference more than mappings + pins: a leaked folio_get (the folio would never be
    # freed after the last unmap).
    st = base()
    st.folios[F_PMD].refcount = 2
    assert violation(st) == "refcount"


def test_pinned_small_folio_counts_bias() -> None:
    # FOLL_PIN on an order-0 folio adds GUP_PIN_COUNTING_BIAS; without it the refcount is short.
    from pudthp_ref.mm_types import PinRecord

    st = base()
    st.pins[1] = PinRecord(id=1, folio=F_SMALL, page=0)
    assert violation(st) == "refcount"
    st.folios[F_SMALL].refcount += 1024
    check_invariants(st)


def test_writable_pte_on_non_exclusive_page() -> None:
    # A writable PTE of a page that is not PageAnonExclusive: the page may be shared (after
    # fork), so a write through this PTE would be visible to the other mm (a missed COW).
    st = base()
    st.folios[F_SMALL].anon_exclusive[0] = False
    assert violation(st) == "anon_exclusive.writable"


def test_rss_off() -> None:
    # MM_ANONPAGES one more than the pages mapped: check_mm would report "BUG: Bad rss-counter
    # state" at exit.
    st = base()
    st.mms[0].rss_anon += 1
    assert violation(st).startswith("rss")


def test_pgtables_bytes_off() -> None:
    # pgtables_bytes does not count one deposited table (a deposit without mm_inc_nr_ptes):
    # check_mm would report "non-zero pgtables_bytes" at exit.
    st = base()
    st.mms[0].pgtables_bytes -= PAGE_TABLE_BYTES
    assert violation(st) == "pgtables_bytes"


def test_partially_mapped_not_queued() -> None:
    # PG_partially_mapped set but the folio is not on the deferred split list: the shrinker
    # would never split it and the unmapped pages would stay allocated.
    st = base()
    st.folios[F_PMD].partially_mapped = True
    st.stats["mthp"]["pmd"]["nr_anon_partially_mapped"] = 1
    assert violation(st) == "deferred.partially_mapped_not_queued"


def test_list_head_pmd_table_in_its_own_pte_ring() -> None:
    # deposit=list_head with one PUD leaf: INIT_LIST_HEAD(&pmd->lru) set the PMD table's
    # lru.prev (= pmd_huge_pte, w16) to itself, so the PTE-table deposit root is the PMD
    # table itself: a withdraw would hand out a PMD table as a PTE table.
    st = base("list_head")
    dep = st.tables[PUD_DEP_PMD]
    dep.w8 = dep.w16 = PUD_DEP_PMD  # a one-node PUD "ring", prev aliasing pmd_huge_pte
    assert violation(st) == "deposit.pmd_ring.wrong_level"


def test_list_head_real_fault_sequence() -> None:
    # The words exactly as the list_head variant leaves them after one PUD fault (push the
    # PMD table with INIT_LIST_HEAD, then deposit P PTE tables with list_add into the ring
    # rooted at its w16, which is its own lru.prev): the PMD table's lru.next now points
    # into the PTE ring, so the PUD "stack" leads to a PTE table.
    st = base("list_head")
    a, b, c, d = PUD_DEP_PTES
    words = {PUD_DEP_PMD: (a, d), a: (b, PUD_DEP_PMD), b: (c, a), c: (d, b), d: (PUD_DEP_PMD, c)}
    for t, (w8, w16) in words.items():
        st.tables[t].w8, st.tables[t].w16 = w8, w16
    inv = violation(st)
    assert inv.startswith("deposit.")
    assert inv.endswith("wrong_level")


def test_cycle_in_lru_next_stack() -> None:
    # Two PUD leaves whose stacked PMD tables point at each other through w8: the stack is
    # never NULL-terminated, so a pop sequence would hand out the same table twice.
    st = _two_pud_leaves()
    check_invariants(st)
    st.tables[PUD_DEP_PMD].w8 = 30  # bottom of the stack now points back to the top
    assert violation(st) == "deposit.pud_stack.cycle"


def _two_pud_leaves() -> MmState:
    st = base()
    st.mms[0].vmas = [Vma(0, 48, "rw", anon_vma=1)]
    pud = st.tables[PUD]
    pud.entries[2] = ("leaf", 10, True, True, True)
    table(st, 30, "pmd", PT_DEPOSITED)
    st.tables[30].w8 = pud.w16  # push: new top links to the old top
    pud.w16 = 30
    for t in (31, 32, 33, 34):
        table(st, t, "pte", PT_DEPOSITED)
    ring(st, (31, 32, 33, 34))
    st.tables[30].w16 = 31
    st.folios[10] = thp(10, 4)
    st.mms[0].rss_anon += 16
    st.mms[0].pgtables_bytes += 5 * PAGE_TABLE_BYTES
    st.stats["mthp"]["pud"]["nr_anon"] += 1
    st.stats["node"]["nr_anon_mapped"] += 16
    st.stats["node"]["nr_anon_pud_thps"] += 16
    return st


def test_cycle_in_pte_ring() -> None:
    # A rho-shaped PTE ring (root d -> a -> b -> c -> a ...): the walk from pmd_huge_pte
    # never returns to the root, so withdraws would cycle and one table would be handed out
    # twice while the root is never reached again.
    st = base()
    a, _b, c, _d = PUD_DEP_PTES
    st.tables[c].w8 = a
    assert violation(st) == "deposit.pmd_ring.cycle"
    # ...and a ring whose prev words disagree with the next words
    st = base()
    st.tables[a].w16 = c
    assert violation(st) == "deposit.pmd_ring.prev"


def test_chain_words_never_crash() -> None:
    # Any garbage in a chain word is a violation, never a Python exception.
    words: list[Any] = [None, "LIST_POISON2", "junk", 999, PTE, PUD, 1.5, True]
    for word in words:
        st = base()
        st.tables[PUD_DEP_PTES[2]].w8 = word
        assert violation(st).startswith(("deposit.", "pgtable."))
        st = base()
        st.tables[PUD].w16 = word
        if word is not None:
            assert violation(st).startswith("deposit.pud_stack")


def test_freed_table_in_ring() -> None:
    # A deposited table freed (pte_free) while still linked: use after free on withdraw.
    st = base()
    st.tables[PUD_DEP_PTES[2]].state = PT_FREED
    st.mms[0].pgtables_bytes -= PAGE_TABLE_BYTES
    assert violation(st) == "deposit.pmd_ring.use_after_free"


def test_leaked_table() -> None:
    # A live PTE table nothing points to: free_pgtables would never free it.
    st = base()
    table(st, 40, "pte")
    st.mms[0].pgtables_bytes += PAGE_TABLE_BYTES
    assert violation(st) == "pgtable.leak"


def test_pmd_leaf_straddles_vma() -> None:
    # A huge PMD crossing a VMA boundary: vma_adjust_trans_huge should have split it.
    st = base()
    st.mms[0].vmas = [Vma(0, 18, "rw", anon_vma=1), Vma(18, 32, "r", anon_vma=1)]
    assert violation(st) == "geometry.leaf_straddles_vma"


def test_leaf_of_wrong_order() -> None:
    # A PMD leaf mapping a PUD-order folio.
    st = base()
    st.tables[PMD].entries[0] = ("leaf", F_PUD, False, True, True)
    assert violation(st) == "geometry.leaf_order"


def test_freed_folio_still_mapped() -> None:
    # The order-0 folio was freed while its PTE remains: a use after free.
    st = base()
    _free(st, F_SMALL)
    st.folios[F_SMALL].mapcount = [-1]
    assert violation(st) == "folio.freed_mapped"


def test_swap_count_off() -> None:
    st = base()
    st.swap[1].count = 2
    assert violation(st) == "swap.count"


def test_mm_id_slot_overcounts() -> None:
    # The slot claims two mappings in mm 0 where there is one.
    st = base()
    st.folios[F_PMD].mm_id_mapcount[0] = 1
    assert violation(st) == "mm_id.slot_count"


def test_x86_64_split_pud_is_fast() -> None:
    # One PUD folio split to PTEs at P=512: 512 PTE tables x 512 entries, 262144 pages.
    n = 512
    cfg = Config(geometry=n)
    st = MmState(cfg=cfg, geom=cfg.geom)
    st.mms.append(MmStruct(id=0, pud_table=1, vmas=[Vma(0, n * n, "rw", anon_vma=1)]))
    pud = PtDesc(id=1, level="pud", mm=0, entries=[None] * n)
    pmd = PtDesc(id=2, level="pmd", mm=0, entries=[None] * n)
    st.tables[1] = pud
    st.tables[2] = pmd
    pud.entries[0] = ("table", 2)
    for j in range(n):
        tid = 3 + j
        st.tables[tid] = PtDesc(
            id=tid,
            level="pte",
            mm=0,
            entries=[("pte", 1, j * n + i, True, True, True) for i in range(n)],
        )
        pmd.entries[j] = ("table", tid)
    nr = n * n
    st.folios[1] = Folio(
        id=1,
        order=18,
        node=0,
        nr=nr,
        refcount=nr,
        large_mapcount=nr - 1,
        nr_pages_mapped=nr,
        mm_id=[1, 0],
        mm_id_mapcount=[nr - 1, -1],
        mapcount=[0] * nr,
        anon_exclusive=[True] * nr,
        data=[0] * nr,
    )
    mm = st.mms[0]
    mm.rss_anon = nr
    mm.pgtables_bytes = PAGE_TABLE_BYTES * len(st.tables)
    st.stats["mthp"]["pud"]["nr_anon"] = 1
    st.stats["node"]["nr_anon_mapped"] = nr
    t0 = time.perf_counter()
    check_invariants(st)
    elapsed = time.perf_counter() - t0
    assert elapsed < 5.0  # generous for slow CI; typically well under a second


def test_small_folio_mapcount_and_leak() -> None:
    # _mapcount of the order-0 page says two PTEs where one maps it.
    st = base()
    st.folios[F_SMALL].mapcount[0] = 1
    assert violation(st) == "mapcount.small"
    # An order-0 folio nothing maps or pins still holding its reference: a leak (the last
    # folio_put never happened).
    st = base()
    st.folios[30] = Folio(id=30, order=0, node=0, nr=1, mapcount=[-1], anon_exclusive=[False])
    assert violation(st) == "refcount"
    # ...and one at refcount 0 that was never freed
    st.folios[30].refcount = 0
    assert violation(st) == "refcount.live_zero"


def test_small_folio_shared_by_two_mms_is_not_exclusive() -> None:
    # fork: copy_present_ptes() shares the order-0 page read-only with the child and must
    # clear PageAnonExclusive (folio_try_dup_anon_rmap_pte); leaving it set lets either mm
    # reuse the page on a write fault without COW.
    st = base()
    st.tables[PTE].entries[0] = ("pte", F_SMALL, 0, False, True, True)
    child = MmStruct(id=1, pud_table=50, vmas=[Vma(16, 24, "rw", anon_vma=1)])
    st.mms.append(child)
    cpud = table(st, 50, "pud", mm=1)
    cpud.entries[1] = ("table", 51)
    table(st, 51, "pmd", mm=1).entries[1] = ("table", 52)
    table(st, 52, "pte", mm=1).entries[0] = ("pte", F_SMALL, 0, False, True, True)
    child.rss_anon = 1
    child.pgtables_bytes = 3 * PAGE_TABLE_BYTES
    f = st.folios[F_SMALL]
    f.mapcount[0] = 1
    f.refcount = 2
    assert violation(st) == "anon_exclusive.shared_mms"
    f.anon_exclusive[0] = False
    check_invariants(st)
