"""check_invariants() of both implementations on hand-written states: a consistent state
passes, and each planted defect is reported under its name, the same name by the reference
and by the fast checker.

A state is a snapshot (FORMAT.md section 3) written out here at P=4 (PMD folio 4 pages, PUD
folio 16 pages, 64 pages of address space), loaded into each implementation with
``from_snapshot``, the inverse of ``snapshot()``, without any model operation, so these
tests pin down the checkers alone.  A planted defect is a change to the snapshot.  The one
thing a snapshot cannot hold, the record of a freed folio, is planted after loading
(``freed=``): the folio is marked freed in each implementation's state, its fields as the
snapshot gave them (``free_folio`` leaves them at rest).

At the end: round trips (snapshot, load, snapshot again: identical) of the states seeded
random programs reach at several geometries, and seeded random defects planted in those
states, named alike by both checkers.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from typing import Any

import pytest

from fuzz.gen import ProgramGenerator, random_config
from pudthp_fast.model import FastModel
from pudthp_ref.model import RefModel
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    LIST_POISON1,
    LIST_POISON2,
    PAGE_TABLE_BYTES,
    Config,
    InvariantViolation,
    empty_stats,
    rle,
)

P = 4
EM = ENTIRELY_MAPPED
IMPLS = ("ref", "fast")
Snap = dict[str, Any]

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


# --------------------------------------------------------------------------------------
# Writing states
# --------------------------------------------------------------------------------------


def table(tid: int, level: str, state: str = "live", mm: int = 0, w8: Any = None,
          w16: Any = None, entries: list[list[Any]] | None = None) -> dict[str, Any]:
    return {"id": tid, "level": level, "mm": mm, "state": state, "w8": w8, "w16": w16,
            "entries": entries or []}


def thp(fid: int, order: int, mm: int = 0) -> dict[str, Any]:
    """A THP right after folio_add_new_anon_rmap at PMD/PUD level in ``mm``."""
    nr = 1 << order
    return {"id": fid, "order": order, "node": 0, "refcount": 1, "pincount": 0,
            "entire_mapcount": 0, "large_mapcount": 0, "nr_pages_mapped": EM,
            "mm_id": [mm + 1, 0], "mm_id_mapcount": [0, -1], "shared": False, "flags": [],
            "mapcount": [[-1, nr]], "anon_exclusive": [[True, 1], [False, nr - 1]],
            "data": [[0, nr]]}


def small(fid: int, refcount: int = 1, mapcount: int = 0, exclusive: bool = True
          ) -> dict[str, Any]:
    """An order-0 folio (its large counters at rest)."""
    return {"id": fid, "order": 0, "node": 0, "refcount": refcount, "pincount": 0,
            "entire_mapcount": -1, "large_mapcount": -1, "nr_pages_mapped": 0,
            "mm_id": [0, 0], "mm_id_mapcount": [-1, -1], "shared": False, "flags": [],
            "mapcount": [[mapcount, 1]], "anon_exclusive": [[exclusive, 1]], "data": [[0, 1]]}


def ring(s: Snap, ids: tuple[int, ...]) -> None:
    """Link tables as mainline list_add leaves them: circular, next = w8, prev = w16."""
    n = len(ids)
    for k, t in enumerate(ids):
        tab(s, t)["w8"] = ids[(k + 1) % n]
        tab(s, t)["w16"] = ids[(k - 1) % n]


def base() -> Snap:
    """One mm, VMA [0, 32) rw, with:

    - PUD entry 0: writable PUD leaf of F_PUD, its PMD table on the PUD stack holding P PTE
      tables (patch 01's two-level deposit), queued unflagged on the deferred list;
    - PUD entry 1 -> PMD table: entry 0 a writable PMD leaf of F_PMD with one deposited PTE
      table; entry 1 -> PTE table with a writable PTE of order-0 F_SMALL (vpn 20), a swap
      PTE (vpn 21) and a zero-page PTE (vpn 22).

    RSS 16 + 4 + 1 pages mapped, one swap PTE, 9 tables; NR_ANON_MAPPED 21, one THP of each
    order (NR_ANON_THPS 4 pages, NR_ANON_PUD_THPS 16)."""
    stats = empty_stats()
    stats["mthp"]["pud"]["nr_anon"] = 1
    stats["mthp"]["pmd"]["nr_anon"] = 1
    stats["node"] = {"nr_anon_mapped": 21, "nr_anon_thps": P, "nr_anon_pud_thps": P * P}
    s: Snap = {
        "format": "pudthp-snapshot/1",
        "geometry": P,
        "mms": [{"id": 0, "alive": True, "vmas": [[0, 32, "rw", []]], "rss_anon": 21,
                 "rss_swap": 1, "pgtables_bytes": 9 * PAGE_TABLE_BYTES, "pud_table": PUD,
                 "has_pinned": False}],
        "pagetables": [
            table(PUD, "pud", w16=PUD_DEP_PMD,  # pud_huge_pmd: top of the stack
                  entries=[[0, ["leaf", F_PUD, 1, 1, 1]], [1, ["table", PMD]]]),
            # on the stack (w8 NULL: its end); pmd_huge_pte: the newest of its deposits
            table(PUD_DEP_PMD, "pmd", "deposited", w16=PUD_DEP_PTES[-1]),
            *(table(t, "pte", "deposited") for t in PUD_DEP_PTES),
            table(PMD, "pmd", w16=PMD_DEP_PTE,
                  entries=[[0, ["leaf", F_PMD, 1, 1, 1]], [1, ["table", PTE]]]),
            table(PMD_DEP_PTE, "pte", "deposited", w8=PMD_DEP_PTE, w16=PMD_DEP_PTE),  # alone
            table(PTE, "pte", entries=[[0, ["pte", F_SMALL, 0, 1, 1, 1]], [1, ["swap", 1]],
                                       [2, ["zero"]]]),
        ],
        "folios": [thp(F_PUD, 4), thp(F_PMD, 2), small(F_SMALL)],
        "swap": [{"slot": 1, "count": 1, "data": 7, "zeromap": False}],
        "deferred": [F_PUD],
        "pins": [],
        "fail_alloc": {"pud": 0, "pmd": 0, "base": 0},
        "stats": stats,
    }
    ring(s, PUD_DEP_PTES)
    fol(s, F_PUD)["flags"] = ["deferred"]
    return s


def tab(s: Snap, tid: int) -> dict[str, Any]:
    return next(t for t in s["pagetables"] if t["id"] == tid)


def fol(s: Snap, fid: int) -> dict[str, Any]:
    return next(f for f in s["folios"] if f["id"] == fid)


def put(s: Snap, tid: int, i: int, entry: list[Any] | None) -> None:
    """Entry ``i`` of table ``tid`` (None: none)."""
    t = tab(s, tid)
    t["entries"] = sorted([[j, e] for j, e in t["entries"] if j != i]
                          + ([[i, entry]] if entry is not None else []))


def drop(s: Snap, *tids: int) -> None:
    """Tables gone from the state (freed)."""
    s["pagetables"] = [t for t in s["pagetables"] if t["id"] not in tids]


def add(s: Snap, *tables: dict[str, Any]) -> None:
    s["pagetables"] = sorted([*s["pagetables"], *tables], key=lambda t: t["id"])


def pages(f: dict[str, Any], key: str) -> list[Any]:
    return [v for v, n in f[key] for _ in range(n)]


def set_page(f: dict[str, Any], key: str, page: int, value: Any) -> None:
    values = pages(f, key)
    values[page] = value
    f[key] = rle(values)


def unmap_folio(s: Snap, fid: int) -> None:
    """The folio gone from the state (freed, nothing left of it)."""
    s["folios"] = [f for f in s["folios"] if f["id"] != fid]
    if fid in s["deferred"]:
        s["deferred"].remove(fid)


def at_rest(f: dict[str, Any]) -> None:
    """A folio's fields as free_folio() leaves them."""
    nr = 1 << f["order"]
    f.update(refcount=0, entire_mapcount=-1, large_mapcount=-1, nr_pages_mapped=0,
             mm_id=[0, 0], mm_id_mapcount=[-1, -1], shared=False, flags=[],
             mapcount=[[-1, nr]], anon_exclusive=[[False, nr]])


# --------------------------------------------------------------------------------------
# Loading and checking, on both sides
# --------------------------------------------------------------------------------------


def load(s: Snap, impl: str, deposit: str = "lru_next", freed: tuple[int, ...] = ()) -> Any:
    cfg = Config(geometry=s["geometry"], deposit=deposit)
    if impl == "ref":
        ref = RefModel.from_snapshot(s, cfg)
        for fid in freed:
            ref.st.folios[fid].freed = True
        return ref
    fast = FastModel.from_snapshot(s, cfg)
    for fid in freed:
        fast.st.f_live[fid] = False
    return fast


def verdict(model: Any) -> str | None:
    try:
        model.check_invariants()
    except InvariantViolation as e:
        return e.invariant
    return None


def verdicts(s: Snap, deposit: str = "lru_next", freed: tuple[int, ...] = ()
             ) -> dict[str, str | None]:
    return {impl: verdict(load(s, impl, deposit, freed)) for impl in IMPLS}


def violation(s: Snap, deposit: str = "lru_next", freed: tuple[int, ...] = ()) -> str:
    """The invariant both checkers name (the test fails if they differ or pass)."""
    v = verdicts(s, deposit, freed)
    assert v["ref"] == v["fast"], v
    assert v["ref"] is not None, "no violation"
    return v["ref"]


def passes(s: Snap, deposit: str = "lru_next", freed: tuple[int, ...] = ()) -> None:
    assert verdicts(s, deposit, freed) == {"ref": None, "fast": None}


# --------------------------------------------------------------------------------------
# Consistent states
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("deposit", ["lru_next", "llist"])
def test_base_state_passes(deposit: str) -> None:
    passes(base(), deposit)


def _no_pud_leaf(s: Snap) -> None:
    """The PUD leaf zapped: its two-level deposit freed, the folio freed."""
    put(s, PUD, 0, None)
    tab(s, PUD)["w16"] = None
    drop(s, PUD_DEP_PMD, *PUD_DEP_PTES)
    unmap_folio(s, F_PUD)
    s["mms"][0]["rss_anon"] -= 16
    s["mms"][0]["pgtables_bytes"] -= 5 * PAGE_TABLE_BYTES
    s["stats"]["mthp"]["pud"]["nr_anon"] = 0
    s["stats"]["node"]["nr_anon_mapped"] -= 16
    s["stats"]["node"]["nr_anon_pud_thps"] = 0


def test_list_head_without_pud_leaves_passes() -> None:
    # list_head only changes the PUD stack; with no PUD leaf the stack is empty and the
    # PMD-level deposits are plain mainline.
    s = base()
    _no_pud_leaf(s)
    passes(s, "list_head")


def _forked_pud_leaf() -> Snap:
    """fork of a PUD leaf: the child gets its own two-level deposit, both entries are
    write-protected, the head loses AnonExclusive, entire/large/refcount +1, the child
    takes slot 1 and SHARED is set (the PMD table and its folios were unmapped before)."""
    s = base()
    tab(s, PUD)["entries"] = [[0, ["leaf", F_PUD, 0, 1, 1]]]
    drop(s, PMD, PMD_DEP_PTE, PTE)
    s["swap"] = []
    for fid in (F_PMD, F_SMALL):
        unmap_folio(s, fid)
    s["mms"].append({"id": 1, "alive": True, "vmas": [[0, 32, "rw", []]], "rss_anon": 16,
                     "rss_swap": 0, "pgtables_bytes": 6 * PAGE_TABLE_BYTES, "pud_table": 20,
                     "has_pinned": False})
    add(s, table(20, "pud", mm=1, w16=21, entries=[[0, ["leaf", F_PUD, 0, 1, 0]]]),
        table(21, "pmd", "deposited", mm=1, w16=22),
        *(table(t, "pte", "deposited", mm=1) for t in (22, 23, 24, 25)))
    ring(s, (22, 23, 24, 25))
    f = fol(s, F_PUD)
    f.update(entire_mapcount=1, large_mapcount=1, refcount=2, mm_id=[1, 2],
             mm_id_mapcount=[0, 0], shared=True, anon_exclusive=[[False, 16]])
    mm0 = s["mms"][0]
    mm0.update(rss_anon=16, rss_swap=0, pgtables_bytes=6 * PAGE_TABLE_BYTES)
    s["stats"]["mthp"]["pmd"]["nr_anon"] = 0
    s["stats"]["node"].update(nr_anon_mapped=16, nr_anon_thps=0)
    return s


def test_forked_pud_leaf_passes() -> None:
    s = _forked_pud_leaf()
    passes(s)
    # ...and the page mapped by two mms may not stay exclusive
    set_page(fol(s, F_PUD), "anon_exclusive", 0, True)
    assert violation(s) == "anon_exclusive.entire_shared"


def _split_pud(s: Snap) -> None:
    """The PUD leaf split to PTEs (patch: one step, P*P PTEs copying write, per-page
    _mapcount 0, AnonExclusive copied from the head), the withdrawn deposit live in place."""
    put(s, PUD, 0, ["table", PUD_DEP_PMD])
    tab(s, PUD)["w16"] = None
    pmd = tab(s, PUD_DEP_PMD)
    pmd.update(state="live", w8=None, w16=None,
               entries=[[j, ["table", t]] for j, t in enumerate(PUD_DEP_PTES)])
    for j, t in enumerate(PUD_DEP_PTES):
        tab(s, t).update(state="live", w8=None, w16=None,
                         entries=[[i, ["pte", F_PUD, j * P + i, 1, 1, 1]] for i in range(P)])
    fol(s, F_PUD).update(entire_mapcount=-1, large_mapcount=15, mm_id_mapcount=[15, -1],
                         mapcount=[[0, 16]], nr_pages_mapped=16, anon_exclusive=[[True, 16]],
                         refcount=16)
    s["stats"]["node"]["nr_anon_pud_thps"] = 0


def test_pte_mapped_pud_folio_passes_and_partial_unmap_needs_queue() -> None:
    s = base()
    _split_pud(s)
    passes(s)
    # zap the last PTE: a partial unmap flags and queues the folio (deferred_split_folio)
    put(s, PUD_DEP_PTES[-1], P - 1, None)
    f = fol(s, F_PUD)
    set_page(f, "mapcount", 15, -1)
    set_page(f, "anon_exclusive", 15, False)
    f["large_mapcount"] -= 1
    f["nr_pages_mapped"] -= 1
    f["mm_id_mapcount"][0] -= 1
    f["refcount"] -= 1
    f["flags"] = ["deferred", "partially_mapped"]
    s["mms"][0]["rss_anon"] -= 1
    s["stats"]["node"]["nr_anon_mapped"] -= 1
    s["stats"]["mthp"]["pud"]["nr_anon_partially_mapped"] = 1
    passes(s)
    # ...which it must be
    s["deferred"] = []
    f["flags"] = ["partially_mapped"]
    assert violation(s) == "deferred.partially_mapped_not_queued"


def _dead_mm() -> Snap:
    """exit: everything zapped and freed, check_mm's counters at zero."""
    s = base()
    s["pagetables"] = []
    s["swap"] = []
    s["deferred"] = []
    s["folios"] = []
    s["mms"][0].update(alive=False, rss_anon=0, rss_swap=0, pgtables_bytes=0, pud_table=None)
    for row in ("pmd", "pud"):
        s["stats"]["mthp"][row]["nr_anon"] = 0
    s["stats"]["node"] = dict.fromkeys(s["stats"]["node"], 0)
    return s


def test_dead_mm_passes() -> None:
    s = _dead_mm()
    passes(s)
    # ...but a table left behind by exit is a leak check_mm would report
    add(s, table(PUD, "pud"))
    assert violation(s) == "dead_mm.tables"


def test_freed_folios_at_rest_pass() -> None:
    # free_folio() leaves the record at rest: no mapping, no reference, no flag
    s = base()
    f = small(10)
    at_rest(f)
    s["folios"].append(f)
    passes(s, freed=(10,))


# --------------------------------------------------------------------------------------
# Planted defects: the deposit chains
# --------------------------------------------------------------------------------------


def test_poison_in_pte_ring() -> None:
    # A deposited PTE table's lru.next reads LIST_POISON1: some path list_del()'d it
    # (withdraw) while it is still reachable from pmd_huge_pte, so the next withdraw would
    # dereference poison.
    s = base()
    tab(s, PUD_DEP_PTES[1])["w8"] = LIST_POISON1
    assert violation(s) == "deposit.pmd_ring.poison"


def test_missing_pmd_deposit() -> None:
    # A PMD leaf with nothing deposited in its PMD table: __split_huge_pmd_locked would
    # withdraw NULL (pgtable_trans_huge_withdraw on an empty pmd_huge_pte) and oops.
    s = base()
    tab(s, PMD)["w16"] = None
    drop(s, PMD_DEP_PTE)
    s["mms"][0]["pgtables_bytes"] -= PAGE_TABLE_BYTES
    assert violation(s) == "deposit.pmd_ring.count"


def test_missing_pud_deposit() -> None:
    # A PUD leaf without its PMD table on the pud_huge_pmd stack: a PUD split has nothing
    # to pop.
    s = base()
    tab(s, PUD)["w16"] = None
    drop(s, PUD_DEP_PMD, *PUD_DEP_PTES)
    s["mms"][0]["pgtables_bytes"] -= 5 * PAGE_TABLE_BYTES
    assert violation(s) == "deposit.pud_stack.count"


def test_pud_stack_pmd_short_of_pte_tables() -> None:
    # The stacked PMD table holds only P-1 PTE tables: the PUD split would withdraw NULL
    # for its last PMD entry.
    s = base()
    drop(s, PUD_DEP_PTES[0])
    ring(s, PUD_DEP_PTES[1:])
    s["mms"][0]["pgtables_bytes"] -= PAGE_TABLE_BYTES
    assert violation(s) == "deposit.pud_stack.pte_count"


def test_stacked_pmd_table_with_entries() -> None:
    # A deposited PMD table that still maps something: the PUD split would install it over
    # live entries.
    s = base()
    put(s, PUD_DEP_PMD, 3, ["zero"])
    assert violation(s) == "deposit.pud_stack.pmd_not_empty"


def test_deposited_pte_table_with_entries() -> None:
    s = base()
    put(s, PMD_DEP_PTE, 0, ["zero"])
    assert violation(s) == "deposit.pmd_ring.pte_not_empty"


def test_list_head_pmd_table_in_its_own_pte_ring() -> None:
    # deposit=list_head with one PUD leaf: INIT_LIST_HEAD(&pmd->lru) set the PMD table's
    # lru.prev (= pmd_huge_pte, w16) to itself, so the PTE-table deposit root is the PMD
    # table itself: a withdraw would hand out a PMD table as a PTE table.
    s = base()
    dep = tab(s, PUD_DEP_PMD)
    dep["w8"] = dep["w16"] = PUD_DEP_PMD  # a one-node PUD "ring", prev aliasing pmd_huge_pte
    assert violation(s, "list_head") == "deposit.pmd_ring.wrong_level"


def test_list_head_real_fault_sequence() -> None:
    # The words exactly as the list_head variant leaves them after one PUD fault (push the
    # PMD table with INIT_LIST_HEAD, then deposit P PTE tables with list_add into the ring
    # rooted at its w16, which is its own lru.prev): the PMD table's lru.next now points
    # into the PTE ring, so the PUD "stack" leads to a PTE table.
    s = base()
    a, b, c, d = PUD_DEP_PTES
    words = {PUD_DEP_PMD: (a, d), a: (b, PUD_DEP_PMD), b: (c, a), c: (d, b), d: (PUD_DEP_PMD, c)}
    for t, (w8, w16) in words.items():
        tab(s, t)["w8"], tab(s, t)["w16"] = w8, w16
    inv = violation(s, "list_head")
    assert inv.startswith("deposit.")
    assert inv.endswith("wrong_level")


def _two_pud_leaves() -> Snap:
    """The base state plus a second PUD leaf of folio 10 at PUD entry 2 (stack: 30 on top
    of 2)."""
    s = base()
    s["mms"][0]["vmas"] = [[0, 48, "rw", []]]
    put(s, PUD, 2, ["leaf", 10, 1, 1, 1])
    add(s, table(30, "pmd", "deposited", w8=PUD_DEP_PMD, w16=31),  # push: links to the old top
        *(table(t, "pte", "deposited") for t in (31, 32, 33, 34)))
    tab(s, PUD)["w16"] = 30
    ring(s, (31, 32, 33, 34))
    s["folios"].append(thp(10, 4))
    s["mms"][0]["rss_anon"] += 16
    s["mms"][0]["pgtables_bytes"] += 5 * PAGE_TABLE_BYTES
    s["stats"]["mthp"]["pud"]["nr_anon"] += 1
    s["stats"]["node"]["nr_anon_mapped"] += 16
    s["stats"]["node"]["nr_anon_pud_thps"] += 16
    return s


def test_cycle_in_lru_next_stack() -> None:
    # Two PUD leaves whose stacked PMD tables point at each other through w8: the stack is
    # never NULL-terminated, so a pop sequence would hand out the same table twice.
    s = _two_pud_leaves()
    passes(s)
    tab(s, PUD_DEP_PMD)["w8"] = 30  # bottom of the stack now points back to the top
    assert violation(s) == "deposit.pud_stack.cycle"


def test_cycle_in_pte_ring() -> None:
    # A rho-shaped PTE ring (root d -> a -> b -> c -> a ...): the walk from pmd_huge_pte
    # never returns to the root, so withdraws would cycle and one table would be handed out
    # twice while the root is never reached again.
    s = base()
    a, _b, c, _d = PUD_DEP_PTES
    tab(s, c)["w8"] = a
    assert violation(s) == "deposit.pmd_ring.cycle"
    # ...and a ring whose prev words disagree with the next words
    s = base()
    tab(s, a)["w16"] = c
    assert violation(s) == "deposit.pmd_ring.prev"


@pytest.mark.parametrize(("word", "name"), [
    (None, "deposit.pmd_ring.null"),
    (LIST_POISON2, "deposit.pmd_ring.poison"),
    (999, "deposit.pmd_ring.use_after_free"),  # no such table
    (PTE, "deposit.pmd_ring.state"),  # a live PTE table
    (PUD, "deposit.pmd_ring.wrong_level"),
    (PMD_DEP_PTE, "deposit.pmd_ring.prev"),  # deposited PTE table, its prev is itself
])
def test_chain_words_never_crash(word: Any, name: str) -> None:
    # Any value in a chain word is a violation, never a Python exception.
    s = base()
    tab(s, PUD_DEP_PTES[2])["w8"] = word
    assert violation(s) == name
    s = base()
    tab(s, PUD)["w16"] = word
    if word is not None:
        assert violation(s).startswith("deposit.pud_stack")


@pytest.mark.parametrize("word", ["junk", 1.5, True])
def test_words_no_page_table_can_hold(word: Any) -> None:
    # A word that is neither NULL, a poison value nor a table id: the reference's words are
    # plain values and name it; the fast side's are int64 ids and refuse to load it.
    s = base()
    tab(s, PUD_DEP_PTES[2])["w8"] = word
    assert verdict(load(s, "ref")) == "deposit.pmd_ring.bad_word"
    with pytest.raises(ValueError, match="is not a page-table id"):
        load(s, "fast")


def test_freed_table_in_ring() -> None:
    # A deposited table freed (pte_free) while still linked: use after free on withdraw.
    s = base()
    drop(s, PUD_DEP_PTES[2])
    s["mms"][0]["pgtables_bytes"] -= PAGE_TABLE_BYTES
    assert violation(s) == "deposit.pmd_ring.use_after_free"


# --------------------------------------------------------------------------------------
# Planted defects: page tables and mappings
# --------------------------------------------------------------------------------------


def test_leaked_table() -> None:
    # A live PTE table nothing points to: free_pgtables would never free it.
    s = base()
    add(s, table(40, "pte"))
    s["mms"][0]["pgtables_bytes"] += PAGE_TABLE_BYTES
    assert violation(s) == "pgtable.leak"


def test_table_reached_twice() -> None:
    # Two PMD entries naming the same live PTE table (a copy that forgot to allocate).
    s = base()
    put(s, PMD, 2, ["table", PTE])
    assert violation(s) == "pgtable.double_reference"


def _edit(fn: Callable[[Snap], object]) -> Snap:
    s = base()
    fn(s)
    return s


def _table_of_another_mm(s: Snap) -> None:
    s["mms"].append({"id": 1, "alive": True, "vmas": [], "rss_anon": 0, "rss_swap": 0,
                     "pgtables_bytes": 2 * PAGE_TABLE_BYTES, "pud_table": 50,
                     "has_pinned": False})
    add(s, table(50, "pud", mm=1), table(51, "pte", mm=1))
    put(s, PMD, 2, ["table", 51])


def _order0_queued(s: Snap) -> None:
    s["deferred"].append(F_SMALL)
    fol(s, F_SMALL)["flags"] = ["deferred"]


def _partially_mapped_not_queued(s: Snap) -> None:
    fol(s, F_PMD)["flags"] = ["partially_mapped"]
    s["stats"]["mthp"]["pmd"]["nr_anon_partially_mapped"] = 1


# (what, the defect as an edit of the base state, the invariant both checkers name).  Each
# edit breaks one rule; the name is the first check of the reference's order that sees it
# (the walk by mm, address and level, then reachability, pins, the queue, the folios by id,
# swap, per-mm accounting), and the fast checker must agree.
DEFECTS: list[tuple[str, Callable[[Snap], object], str]] = [
    ("mm id out of place", lambda s: s["mms"][0].update(id=3), "mm.id"),
    ("VMA with no such prot", lambda s: s["mms"][0]["vmas"][0].__setitem__(2, "x"), "vma.prot"),
    ("overlapping VMAs", lambda s: s["mms"][0].update(vmas=[[0, 32, "rw", []],
                                                            [16, 40, "rw", []]]),
     "vma.layout"),
    ("table of an unknown mm", lambda s: tab(s, PMD_DEP_PTE).update(mm=5), "pgtable.wrong_mm"),
    ("PUD table deposited", lambda s: tab(s, PUD).update(state="deposited"), "pgtable.state"),
    ("PUD table of a PMD table's level", lambda s: tab(s, PUD).update(level="pmd"),
     "pgtable.wrong_level"),
    ("alive mm with a freed PUD table", lambda s: s["mms"][0].update(pud_table=99),
     "pgtable.use_after_free"),
    ("PTE in a PMD table", lambda s: put(s, PMD, 2, ["pte", F_SMALL, 0, 0, 1, 1]),
     "pgtable.bad_entry"),
    ("PUD entry names a PTE table", lambda s: put(s, PUD, 1, ["table", PTE]),
     "pgtable.wrong_level"),
    ("PMD entry names a freed table", lambda s: put(s, PMD, 2, ["table", 99]),
     "pgtable.use_after_free"),
    ("PMD entry names a deposited table", lambda s: put(s, PMD, 2, ["table", PMD_DEP_PTE]),
     "pgtable.state"),
    ("PMD entry names a table of another mm", _table_of_another_mm, "pgtable.wrong_mm"),
    ("PTE where no VMA is", lambda s: s["mms"][0]["vmas"][0].__setitem__(1, 21),
     "geometry.outside_vma"),
    ("writable PTE in a read-only VMA",
     lambda s: s["mms"][0].update(vmas=[[0, 20, "rw", []], [20, 32, "r", []]]),
     "geometry.write_prot"),
    ("PTE maps page 5 of an order-0 folio", lambda s: put(s, PTE, 0, ["pte", F_SMALL, 5, 1, 1,
                                                                      1]),
     "geometry.pte_index"),
    ("PTE maps an unknown folio", lambda s: put(s, PTE, 3, ["pte", 99, 0, 0, 1, 1]),
     "folio.missing"),
    ("PMD leaf straddles a VMA boundary",
     lambda s: s["mms"][0].update(vmas=[[0, 18, "rw", []], [18, 32, "r", []]]),
     "geometry.leaf_straddles_vma"),
    ("PMD leaf of a PUD-order folio", lambda s: put(s, PMD, 0, ["leaf", F_PUD, 0, 1, 1]),
     "geometry.leaf_order"),
    ("writable PMD leaf in a read-only VMA",
     lambda s: s["mms"][0].update(vmas=[[0, 16, "rw", []], [16, 32, "r", []]]),
     "geometry.write_prot"),
    ("writable PUD leaf, head not exclusive",
     lambda s: set_page(fol(s, F_PUD), "anon_exclusive", 0, False), "anon_exclusive.writable"),
    ("writable PTE of a page not exclusive",
     lambda s: set_page(fol(s, F_SMALL), "anon_exclusive", 0, False),
     "anon_exclusive.writable"),
]


@pytest.mark.parametrize(("what", "edit", "name"), DEFECTS, ids=[d[0] for d in DEFECTS])
def test_page_table_defect(what: str, edit: Callable[[Snap], object], name: str) -> None:
    assert violation(_edit(edit)) == name


# --------------------------------------------------------------------------------------
# Planted defects: folios, pins, the queue, swap, accounting
# --------------------------------------------------------------------------------------

FOLIO_DEFECTS: list[tuple[str, Callable[[Snap], object], str | None]] = [
    ("a folio of order 3 at P=4", lambda s: s["folios"].append(
        {**small(10, refcount=0, mapcount=-1), "order": 3, "mapcount": [[-1, 8]],
         "anon_exclusive": [[False, 8]], "data": [[0, 8]]}), "folio.order"),
    ("page _mapcount says a PTE maps it", lambda s: set_page(fol(s, F_PUD), "mapcount", 3, 0),
     "mapcount.page"),
    ("_entire_mapcount says two leaves", lambda s: fol(s, F_PMD).update(entire_mapcount=1),
     "mapcount.entire"),
    ("_large_mapcount one too many", lambda s: fol(s, F_PMD).update(large_mapcount=1),
     "mapcount.large"),
    ("_nr_pages_mapped without ENTIRELY_MAPPED",
     lambda s: fol(s, F_PMD).update(nr_pages_mapped=0), "mapcount.nr_pages_mapped"),
    ("_pincount without a pin", lambda s: fol(s, F_PMD).update(pincount=1), "pincount"),
    ("refcount one more than mappings", lambda s: fol(s, F_PMD).update(refcount=2), "refcount"),
    ("large folio at refcount 0", lambda s: fol(s, F_PMD).update(refcount=0),
     "refcount.live_zero"),
    ("slot 0 empty with a count", lambda s: fol(s, F_PMD).update(mm_id=[0, 0]),
     "mm_id.slot_empty"),
    ("slot names a dead mm", lambda s: fol(s, F_PMD).update(mm_id=[1, 3],
                                                            mm_id_mapcount=[0, 0]),
     "mm_id.dead_mm"),
    ("slot overcounts its mm", lambda s: fol(s, F_PMD)["mm_id_mapcount"].__setitem__(0, 1),
     "mm_id.slot_count"),
    ("both slots one mm", lambda s: fol(s, F_PMD).update(mm_id=[1, 1],
                                                         mm_id_mapcount=[0, -1]),
     "mm_id.slot_empty"),
    ("SHARED set with one mm mapping", lambda s: fol(s, F_PMD).update(shared=True), None),
    ("order-0 folio with large counters", lambda s: fol(s, F_SMALL).update(
        large_mapcount=0), "mapcount.small_large_fields"),
    ("order-0 folio _mapcount two", lambda s: fol(s, F_SMALL).update(mapcount=[[1, 1]]),
     "mapcount.small"),
    ("order-0 folio with _pincount", lambda s: fol(s, F_SMALL).update(pincount=1),
     "pincount.small"),
    ("order-0 folio nothing maps, refcount 1", lambda s: s["folios"].append(
        small(10, mapcount=-1, exclusive=False)), "refcount"),
    ("order-0 folio nothing maps, refcount 0", lambda s: s["folios"].append(
        small(10, refcount=0, mapcount=-1, exclusive=False)), "refcount.live_zero"),
    ("pin of an unknown folio", lambda s: s["pins"].append({"id": 1, "folio": 99, "page": 0}),
     "pin.missing_folio"),
    ("pin of page 4 of a 4-page folio",
     lambda s: s["pins"].append({"id": 1, "folio": F_PMD, "page": 4}), "pin.page"),
    ("pinned order-0 folio without the bias",
     lambda s: s["pins"].append({"id": 1, "folio": F_SMALL, "page": 0}), "refcount"),
    ("queue holds a folio twice", lambda s: s["deferred"].append(F_PUD), "deferred.duplicate"),
    ("queue holds an unknown folio", lambda s: s["deferred"].append(99), "deferred.missing"),
    ("queue holds an order-0 folio", _order0_queued, "deferred.order"),
    ("queued, flag clear", lambda s: fol(s, F_PUD).update(flags=[]), "deferred.flag_mismatch"),
    ("flagged, not queued", lambda s: fol(s, F_PMD).update(flags=["deferred"]),
     "deferred.flag_mismatch"),
    ("partially mapped, not queued", _partially_mapped_not_queued,
     "deferred.partially_mapped_not_queued"),
    ("swap PTE names a free slot", lambda s: put(s, PTE, 3, ["swap", 5]),
     "swap.missing_slot"),
    ("swap count off", lambda s: s["swap"][0].update(count=2), "swap.count"),
    ("MM_ANONPAGES one more", lambda s: s["mms"][0].update(rss_anon=22), "rss.anon"),
    ("MM_SWAPENTS one fewer", lambda s: s["mms"][0].update(rss_swap=0), "rss.swap"),
    ("pgtables_bytes a table short", lambda s: s["mms"][0].update(
        pgtables_bytes=8 * PAGE_TABLE_BYTES), "pgtables_bytes"),
    ("nr_anon of the PUD order", lambda s: s["stats"]["mthp"]["pud"].update(nr_anon=2),
     "stats.nr_anon"),
    ("nr_anon_partially_mapped", lambda s: s["stats"]["mthp"]["pmd"].update(
        nr_anon_partially_mapped=1), "stats.nr_anon_partially_mapped"),
    ("NR_ANON_MAPPED", lambda s: s["stats"]["node"].update(nr_anon_mapped=20),
     "stats.nr_anon_mapped"),
    ("NR_ANON_THPS", lambda s: s["stats"]["node"].update(nr_anon_thps=0), "stats.nr_anon_thps"),
    ("NR_ANON_PUD_THPS", lambda s: s["stats"]["node"].update(nr_anon_pud_thps=0),
     "stats.nr_anon_pud_thps"),
    ("a node stat missing", lambda s: s["stats"]["node"].pop("nr_anon_thps"), "stats.missing"),
]


@pytest.mark.parametrize(("what", "edit", "name"), FOLIO_DEFECTS,
                         ids=[d[0] for d in FOLIO_DEFECTS])
def test_folio_defect(what: str, edit: Callable[[Snap], object], name: str | None) -> None:
    s = _edit(edit)
    if name is None:
        # SHARED may stay set after the other mm went (it is re-evaluated only when a slot
        # frees, folio_sub_return_large_mapcount): not a violation
        passes(s)
    else:
        assert violation(s) == name


def test_dead_mm_keeps_no_counters() -> None:
    s = _dead_mm()
    s["mms"][0]["rss_anon"] = 1
    assert violation(s) == "dead_mm.rss"
    s = _dead_mm()
    s["mms"][0]["pgtables_bytes"] = PAGE_TABLE_BYTES
    assert violation(s) == "dead_mm.pgtables_bytes"


def test_mm_id_slots_and_shared() -> None:
    # The forked PUD folio (slots [1, 2], SHARED): the rules of include/linux/rmap.h
    s = _forked_pud_leaf()
    fol(s, F_PUD)["shared"] = False  # two mms map it: SHARED must be set
    assert violation(s) == "mm_id.shared_missing"
    s = _forked_pud_leaf()
    fol(s, F_PUD).update(mm_id=[1, 0], mm_id_mapcount=[1, -1])  # one slot counts both mms
    assert violation(s) == "mm_id.slot_count"
    s = base()
    fol(s, F_PMD)["mm_id_mapcount"] = [-1, -1]  # slot 0 names mm 0 with no count
    assert violation(s) == "mm_id.slot_empty"
    s = _two_pud_leaves()  # folio 10 also mapped by a PTE of mm 0: SHARED clear, but...
    put(s, PTE, 3, ["pte", 10, 1, 0, 1, 1])
    f = fol(s, 10)
    set_page(f, "mapcount", 1, 0)
    f.update(large_mapcount=1, refcount=2, nr_pages_mapped=EM + 1)
    s["mms"][0]["rss_anon"] += 1
    assert violation(s) == "mm_id.unshared_count"  # ...no slot holds both mappings
    f["mm_id_mapcount"] = [1, -1]
    passes(s)
    f.update(mm_id=[1, 2], mm_id_mapcount=[1, 0], shared=True)  # mm 1 does not exist
    assert violation(s) == "mm_id.dead_mm"


def test_unmapped_large_folio_keeps_no_slot() -> None:
    # A PMD THP nothing maps but a pin: its slots must be empty and SHARED clear.
    s = base()
    put(s, PMD, 0, None)
    tab(s, PMD)["w16"] = None
    drop(s, PMD_DEP_PTE)
    s["mms"][0].update(rss_anon=17, pgtables_bytes=8 * PAGE_TABLE_BYTES)
    fol(s, F_PMD).update(entire_mapcount=-1, large_mapcount=-1, nr_pages_mapped=0,
                         refcount=1, pincount=1, mm_id=[0, 0], mm_id_mapcount=[-1, -1],
                         anon_exclusive=[[False, 4]])
    s["pins"] = [{"id": 1, "folio": F_PMD, "page": 0}]
    s["stats"]["node"].update(nr_anon_mapped=17, nr_anon_thps=0)
    passes(s)
    fol(s, F_PMD)["shared"] = True
    assert violation(s) == "mm_id.unmapped"


def test_exclusive_page_of_a_folio_mapped_by_two_mms() -> None:
    # fork: copy_present_ptes() shares the order-0 page read-only with the child and must
    # clear PageAnonExclusive (folio_try_dup_anon_rmap_pte); leaving it set lets either mm
    # reuse the page on a write fault without COW.
    s = base()
    put(s, PTE, 0, ["pte", F_SMALL, 0, 0, 1, 1])
    s["mms"].append({"id": 1, "alive": True, "vmas": [[16, 24, "rw", []]], "rss_anon": 1,
                     "rss_swap": 0, "pgtables_bytes": 3 * PAGE_TABLE_BYTES, "pud_table": 50,
                     "has_pinned": False})
    add(s, table(50, "pud", mm=1, entries=[[1, ["table", 51]]]),
        table(51, "pmd", mm=1, entries=[[1, ["table", 52]]]),
        table(52, "pte", mm=1, entries=[[0, ["pte", F_SMALL, 0, 0, 1, 1]]]))
    fol(s, F_SMALL).update(mapcount=[[1, 1]], refcount=2)
    assert violation(s) == "anon_exclusive.shared_mms"
    fol(s, F_SMALL)["anon_exclusive"] = [[False, 1]]
    passes(s)
    # ...and so for a page of a large folio PTE-mapped in both mms
    s = _forked_pud_leaf()
    for m, pud in ((0, PUD), (1, 20)):  # both split the PUD leaf: PTEs of page 0 only kept
        t = 60 + 2 * m
        tab(s, pud)["entries"] = [[0, ["table", t]]]
        tab(s, pud)["w16"] = None
        add(s, table(t, "pmd", mm=m, entries=[[0, ["table", t + 1]]]),
            table(t + 1, "pte", mm=m, entries=[[0, ["pte", F_PUD, 0, 0, 1, 1]]]))
    drop(s, PUD_DEP_PMD, *PUD_DEP_PTES, 21, 22, 23, 24, 25)
    for mm in s["mms"]:
        mm.update(rss_anon=1, pgtables_bytes=3 * PAGE_TABLE_BYTES)
    fol(s, F_PUD).update(entire_mapcount=-1, large_mapcount=1, mm_id_mapcount=[0, 0],
                         nr_pages_mapped=1, mapcount=[[1, 1], [-1, 15]], refcount=2,
                         flags=["deferred", "partially_mapped"])
    s["stats"]["mthp"]["pud"]["nr_anon_partially_mapped"] = 1
    s["stats"]["node"].update(nr_anon_mapped=1, nr_anon_pud_thps=0)
    passes(s)
    set_page(fol(s, F_PUD), "anon_exclusive", 0, True)
    assert violation(s) == "anon_exclusive.shared_mms"


def test_pinned_small_folio_counts_bias() -> None:
    # FOLL_PIN on an order-0 folio adds GUP_PIN_COUNTING_BIAS references.
    s = base()
    s["pins"] = [{"id": 1, "folio": F_SMALL, "page": 0}]
    fol(s, F_SMALL)["refcount"] += 1024
    s["mms"][0]["has_pinned"] = True
    passes(s)


# (the change to a freed folio at rest, the invariant free_tail_page_prepare() and
# page_expected_state() break)
FREED_DEFECTS: list[tuple[dict[str, Any], str]] = [
    ({"refcount": 1}, "freed.refcount"),
    ({"mapcount": [[0, 1]]}, "freed.mapcount"),
    ({"large_mapcount": 0}, "freed.large_counters"),
    ({"nr_pages_mapped": 1}, "freed.nr_pages_mapped"),
    ({"pincount": 1}, "freed.pincount"),
    ({"mm_id": [1, 0], "mm_id_mapcount": [0, -1]}, "freed.mm_id"),
    ({"shared": True}, "freed.mm_id"),
    ({"flags": ["deferred"]}, "freed.deferred"),
    ({"flags": ["partially_mapped"]}, "freed.partially_mapped"),
    ({"flags": ["swapcache"]}, "freed.swapcache"),
]


@pytest.mark.parametrize(("change", "name"), FREED_DEFECTS)
def test_freed_folio_not_at_rest(change: dict[str, Any], name: str) -> None:
    s = base()
    f = small(10)
    at_rest(f)
    f.update(change)
    s["folios"].append(f)
    assert violation(s, freed=(10,)) == name


def test_freed_folio_still_mapped_pinned_or_queued() -> None:
    # The order-0 folio freed while its PTE remains: a use after free.
    s = base()
    at_rest(fol(s, F_SMALL))
    assert violation(s, freed=(F_SMALL,)) == "folio.freed_mapped"
    s = base()
    f = small(10)
    at_rest(f)
    s["folios"].append(f)
    s["pins"] = [{"id": 1, "folio": 10, "page": 0}]
    assert violation(s, freed=(10,)) == "freed.pinned"
    s["pins"] = []
    s["deferred"].append(10)
    assert violation(s, freed=(10,)) == "deferred.freed"


@pytest.mark.slow
def test_x86_64_split_pud_state_is_checked_to_the_last_page() -> None:
    # One PUD folio split to PTEs at P=512: 512 PTE tables x 512 entries, 262144 pages, all
    # mapped once, writable, exclusive.
    n = 512
    nr = n * n
    stats = empty_stats()
    stats["mthp"]["pud"]["nr_anon"] = 1
    stats["node"]["nr_anon_mapped"] = nr
    s: Snap = {
        "format": "pudthp-snapshot/1", "geometry": n,
        "mms": [{"id": 0, "alive": True, "vmas": [[0, nr, "rw", []]], "rss_anon": nr,
                 "rss_swap": 0, "pgtables_bytes": (n + 2) * PAGE_TABLE_BYTES, "pud_table": 1,
                 "has_pinned": False}],
        "pagetables": [table(1, "pud", entries=[[0, ["table", 2]]]),
                       table(2, "pmd", entries=[[j, ["table", 3 + j]] for j in range(n)]),
                       *(table(3 + j, "pte", entries=[[i, ["pte", 1, j * n + i, 1, 1, 1]]
                                                      for i in range(n)]) for j in range(n))],
        "folios": [{**thp(1, 18), "entire_mapcount": -1, "large_mapcount": nr - 1,
                    "nr_pages_mapped": nr, "mm_id_mapcount": [nr - 1, -1],
                    "refcount": nr, "mapcount": [[0, nr]], "anon_exclusive": [[True, nr]]}],
        "swap": [], "deferred": [], "pins": [], "fail_alloc": {"pud": 0, "pmd": 0, "base": 0},
        "stats": stats,
    }
    passes(s)
    # a defect in the last page is still found
    set_page(s["folios"][0], "anon_exclusive", nr - 1, False)
    assert violation(s) == "anon_exclusive.writable"


# --------------------------------------------------------------------------------------
# Snapshots round trip
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


@pytest.mark.parametrize("impl", IMPLS)
def test_a_written_state_round_trips(impl: str) -> None:
    s = base()
    # contents on some pages, raw poison words, a pin, flags, a dead mm, counters
    fol(s, F_PUD)["data"] = [[0, 3], [9, 3], [2**64 - 1, 1], [0, 9]]
    tab(s, PTE).update(w8=LIST_POISON1, w16=LIST_POISON2)
    s["pins"] = [{"id": 1, "folio": F_SMALL, "page": 0}]
    fol(s, F_PMD)["flags"] = ["dirty", "partially_mapped", "swapcache"]
    s["mms"][0]["vmas"][0][3] = ["hugepage"]
    s["mms"].append({"id": 1, "alive": False, "vmas": [], "rss_anon": 0, "rss_swap": 0,
                     "pgtables_bytes": 0, "pud_table": None, "has_pinned": True})
    s["swap"][0]["zeromap"] = True
    s["fail_alloc"]["pmd"] = 2
    s["stats"]["vmstat"]["thp_fault_alloc_pud"] = 1
    model = load(s, impl)
    snap = model.snapshot()
    assert snap == s
    assert list(snap) == list(s)
    _plain_json_only(snap)
    json.dumps(snap)
    # the snapshot is a copy: later changes to the state do not show through
    model.st.stats["vmstat"]["thp_fault_alloc_pud"] = 5
    assert snap["stats"]["vmstat"]["thp_fault_alloc_pud"] == 1


def _states(geometry: int, seeds: range, ops: int) -> list[tuple[Config, Snap]]:
    """Snapshots of the states the reference reaches after each op of seeded random
    programs."""
    out = []
    for seed in seeds:
        rng = random.Random(f"snapshots:{geometry}:{seed}")
        cfg = random_config(rng, geometry)
        model = RefModel(cfg)
        for op in ProgramGenerator(cfg, rng).program(ops).ops:
            model.apply(op)
            out.append((cfg, model.snapshot()))
    return out


@pytest.mark.parametrize(("geometry", "programs"), [(4, 12), (8, 12), (16, 5), (32, 3)])
def test_random_states_round_trip_on_both_sides(geometry: int, programs: int) -> None:
    # snapshot, load, snapshot again: identical, and a state the reference reached passes
    # both checkers
    for k, (cfg, s) in enumerate(_states(geometry, range(programs), 40)):
        for impl in IMPLS:
            model = RefModel.from_snapshot(s, cfg) if impl == "ref" else (
                FastModel.from_snapshot(s, cfg))
            assert model.snapshot() == s, (impl, k)
            assert verdict(model) is None, (impl, k)


def plant(s: Snap, rng: random.Random) -> tuple[int, ...]:
    """One random defect of the kinds a buggy model could leave behind; the folios to mark
    freed after loading."""
    tabs = [t["id"] for t in s["pagetables"]]
    fols = [f["id"] for f in s["folios"]]
    what = rng.randrange(10)
    if what == 0 and tabs:
        t = tab(s, rng.choice(tabs))
        t["w8" if rng.random() < 0.5 else "w16"] = rng.choice(
            [None, LIST_POISON1, LIST_POISON2, 999, rng.choice(tabs)])
    elif what == 1 and tabs:
        t = tab(s, rng.choice(tabs))
        change = rng.randrange(3)
        if change == 0:
            t["state"] = rng.choice(["live", "deposited"])
        elif change == 1:
            t["level"] = rng.choice(["pud", "pmd", "pte"])
        else:
            drop(s, t["id"])
    elif what == 2 and tabs:
        put(s, rng.choice(tabs), rng.randrange(s["geometry"]), rng.choice([
            None, ["zero"], ["table", rng.choice(tabs)],
            ["leaf", rng.choice([*fols, 999]), 1, 1, 1],
            ["pte", rng.choice([*fols, 999]), rng.randrange(-1, 3), rng.choice([0, 1]), 1, 1],
            ["swap", rng.randrange(1, 4)],
        ]))
    elif what in (3, 4) and fols:
        f = fol(s, rng.choice(fols))
        d = rng.choice([-1, 1])
        field = rng.randrange(11)
        nr = 1 << f["order"]
        if field < 4:
            key = ("refcount", "entire_mapcount", "large_mapcount", "nr_pages_mapped")[field]
            f[key] += d
        elif field == 4:
            f["mm_id_mapcount"][rng.randrange(2)] += d
        elif field == 5:
            p = rng.randrange(nr)
            set_page(f, "mapcount", p, pages(f, "mapcount")[p] + d)
        elif field == 6:
            p = rng.randrange(nr)
            set_page(f, "anon_exclusive", p, not pages(f, "anon_exclusive")[p])
        elif field in (7, 8):
            flag = "partially_mapped" if field == 7 else "deferred"
            f["flags"] = [x for x in ("deferred", "dirty", "partially_mapped", "swapcache")
                          if (x in f["flags"]) != (x == flag)]
        elif field == 9:
            f["shared"] = not f["shared"]
        else:
            return (f["id"],)
    elif what == 5:
        mm = rng.choice(s["mms"])
        change = rng.randrange(4)
        if change == 0 or (change == 1 and not mm["vmas"]):
            mm["rss_anon"] += rng.choice([-1, 1])
        elif change == 1:
            rng.choice(mm["vmas"])[2] = rng.choice(["none", "r", "rw"])
        elif change == 2 and tabs:
            mm["pud_table"] = rng.choice(tabs)
        else:
            mm["alive"] = not mm["alive"]
    elif what == 6 and s["swap"]:
        rng.choice(s["swap"])["count"] += 1
    elif what == 7 and fols:
        f = fol(s, rng.choice(fols))
        s["pins"].append({"id": 99, "folio": f["id"], "page": rng.randrange((1 << f["order"])
                                                                            + 1)})
    elif what == 8:
        s["deferred"].append(rng.choice([*fols, 999]))
    else:
        s["swap"].append({"slot": 77, "count": 1, "data": 0, "zeromap": False})
    return ()


@pytest.mark.parametrize("geometry", [4, 8])
def test_planted_defects_are_named_alike(geometry: int) -> None:
    rng = random.Random(f"plant:{geometry}")
    names: set[str] = set()
    tried = 0
    for k, (cfg, good) in enumerate(_states(geometry, range(4), 25)):
        for _ in range(6):
            s = copy.deepcopy(good)
            freed: tuple[int, ...] = ()
            for _ in range(rng.choice((1, 1, 2))):
                freed += plant(s, rng)
            models = {impl: load(s, impl, cfg.deposit, freed) for impl in IMPLS}
            got = {impl: verdict(m) for impl, m in models.items()}
            assert got["ref"] == got["fast"], (k, got, json.dumps(s))
            tried += 1
            if got["ref"] is not None:
                names.add(got["ref"])
    # most of the 600 plants are real defects, of dozens of kinds
    assert tried == 600
    assert len(names) > 30, sorted(names)


@pytest.mark.parametrize("impl", IMPLS)
def test_a_state_the_checker_cannot_read_is_malformed(impl: str) -> None:
    # Any exception but InvariantViolation met while reading the state is named
    # state.malformed (a VMA list that is no list), never raised as it is.
    model = load(base(), impl)
    model.st.mms[0].vmas = None
    assert verdict(model) == "state.malformed"
