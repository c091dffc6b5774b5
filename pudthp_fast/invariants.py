"""Invariant checker of the fast model: MODEL.md section 6, recomputed over whole arrays.

The invariants and their names are those of ``pudthp_ref.invariants``; nothing is shared
with it but the names.  Everything the model keeps as a counter is recomputed from the page
tables reachable from the alive mms and compared as whole arrays, in the reference's order
of phases: shapes (table id, then check rank; folio id, then check rank), the page-table
walk with the deposit chains (``invariants_pgtable``, ``invariants_deposit``), then
reachability, pins, the deferred queue, the folios (``invariants_folios``), swap and per-mm
accounting.  The same defect gets the same name as in the reference even when it breaks
several checks at once.

Any exception other than ``InvariantViolation`` met on a malformed state is reported as
``state.malformed`` (but ``MemoryError``: running out of memory is no state).
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.invariants_deposit import level_name, state_name
from pudthp_fast.invariants_folios import check_deferred_queue, check_folios, check_pins
from pudthp_fast.invariants_pgtable import I64, Ctx, Earliest, Walk, check_reachability
from pudthp_fast.state import LEVEL_CODE, ST_DEPOSITED, ST_FREE, FastState
from pudthp_ref.spec import LEVEL_PTE, PAGE_TABLE_BYTES, PROTS, InvariantViolation


def check_invariants(st: FastState) -> None:
    """Raise ``InvariantViolation`` on the first broken invariant of MODEL.md section 6."""
    try:
        _check(st)
    except InvariantViolation:
        raise
    except MemoryError:
        raise  # out of memory is no malformed state
    except Exception as e:
        raise InvariantViolation("state.malformed", f"checker met {type(e).__name__}: {e}") from e


def _check(st: FastState) -> None:
    c = Ctx(st)
    _check_shapes(st, c)
    w = Walk(st, c)
    w.run()
    check_reachability(st, c, w)
    npins = check_pins(st, c)
    check_deferred_queue(st, c)
    check_folios(st, c, w, npins)
    _check_swap(st, c, w)
    _check_mm_accounting(st, w)


# --------------------------------------------------------------------------------------
# Shapes: ids, levels, owners, VMA layout, folio orders
# --------------------------------------------------------------------------------------


def _check_shapes(st: FastState, c: Ctx) -> None:
    space = c.space
    for i, mm in enumerate(st.mms):
        if mm.id != i:
            raise InvariantViolation("mm.id", f"mms[{i}] has id {mm.id}")
        prev_end = 0
        for v in mm.vmas:
            if v.prot not in PROTS:
                raise InvariantViolation(
                    "vma.prot", f"mm {i} VMA [{v.start}, {v.end}) prot {v.prot!r}"
                )
            if not (prev_end <= v.start < v.end <= space):
                raise InvariantViolation(
                    "vma.layout",
                    f"mm {i} VMA [{v.start}, {v.end}) unsorted, overlapping, empty or outside "
                    f"[0, {space}) (previous end {prev_end})",
                )
            prev_end = v.end
    e = Earliest()
    npt = c.npt
    if npt > 1:
        ids = np.arange(1, npt, dtype=I64)
        state = st.t_state[1:npt]
        level = st.t_level[1:npt]
        tmm = st.t_mm[1:npt].astype(I64)
        used = state != ST_FREE
        e.first(
            (state < 0) | (state > ST_DEPOSITED),
            ids,
            0,
            "pgtable.state",
            lambda i: f"table {ids[i]} state {state[i]}",
        )
        e.first(
            used & ((level < 0) | (level > LEVEL_CODE[LEVEL_PTE])),
            ids,
            1,
            "pgtable.level",
            lambda i: f"table {ids[i]} level {level[i]}",
        )
        bad_mm = (tmm < 0) | (tmm >= c.nmm)
        e.first(
            used & bad_mm,
            ids,
            2,
            "pgtable.wrong_mm",
            lambda i: f"table {ids[i]} owned by unknown mm {tmm[i]}",
        )
        dead = used & ~c.alive[np.where(bad_mm, c.nmm, tmm)]
        e.first(
            dead,
            ids,
            3,
            "dead_mm.tables",
            lambda i: f"{state_name(state[i])} {level_name(level[i])} table {ids[i]} owned "
            f"by dead mm {tmm[i]}",
        )
        e.throw()
    for mm in st.mms:
        if not mm.alive and 1 <= mm.pud_table < npt and st.t_state[mm.pud_table] != ST_FREE:
            raise InvariantViolation(
                "dead_mm.tables", f"dead mm {mm.id} PUD table {mm.pud_table} not freed"
            )
    nf = c.nf
    if nf > 1:
        g = st.geom
        fids = np.arange(1, nf, dtype=I64)
        order = st.f_order[1:nf].astype(I64)
        nr = st.f_nr[1:nf]
        base = st.f_base[1:nf]
        is_folio = st.f_live[1:nf] | (nr != 0)
        ok_order = (order == 0) | (order == g.pmd_order) | (order == g.pud_order)
        e.first(
            is_folio & ~ok_order,
            fids,
            0,
            "folio.order",
            lambda i: f"folio {fids[i]} order {order[i]} not in (0, {g.pmd_order}, {g.pud_order})",
        )
        e.first(
            is_folio & ok_order & (nr != np.left_shift(1, np.where(ok_order, order, 0))),
            fids,
            1,
            "folio.nr",
            lambda i: f"folio {fids[i]} order {order[i]} nr {nr[i]}",
        )
        e.first(
            is_folio & ((base < 0) | (base + nr > c.npool)),
            fids,
            2,
            "folio.shape",
            lambda i: f"folio {fids[i]} pages [{base[i]}, {base[i] + nr[i]}) outside the pool "
            f"[0, {c.npool})",
        )
        e.throw()


# --------------------------------------------------------------------------------------
# Swap and per-mm accounting (check_mm)
# --------------------------------------------------------------------------------------


def _check_swap(st: FastState, c: Ctx, w: Walk) -> None:
    ns = min(st.next_slot, st.s_count.shape[0])
    slots = w.swap_slots
    count = st.s_count[:ns] if ns > 0 else np.zeros(1, I64)
    if slots.size:
        inr = (slots >= 1) & (slots < ns)
        missing = ~inr | (count[np.where(inr, slots, 0)] == 0)
        if np.count_nonzero(missing):
            s = int(slots[int(missing.argmax())])
            n = int((slots == s).sum())
            raise InvariantViolation("swap.missing_slot", f"{n} swap PTEs name missing slot {s}")
    if ns <= 1:
        return
    refs = np.bincount(slots, minlength=ns)[:ns]
    bad = (count != 0) & (count != refs)
    bad[0] = False
    if np.count_nonzero(bad):
        s = int(bad.argmax())
        raise InvariantViolation("swap.count", f"slot {s} count {count[s]}, {refs[s]} swap PTEs")


def _check_mm_accounting(st: FastState, w: Walk) -> None:
    for mm in st.mms:
        m = mm.id
        if not mm.alive:
            if mm.rss_anon != 0 or mm.rss_swap != 0:
                raise InvariantViolation(
                    "dead_mm.rss", f"dead mm {m} rss anon {mm.rss_anon} swap {mm.rss_swap}"
                )
            if mm.pgtables_bytes != 0:
                raise InvariantViolation(
                    "dead_mm.pgtables_bytes", f"dead mm {m} pgtables_bytes {mm.pgtables_bytes}"
                )
            continue
        if mm.rss_anon != w.rss_anon[m]:
            raise InvariantViolation(
                "rss.anon", f"mm {m} MM_ANONPAGES {mm.rss_anon}, page tables map {w.rss_anon[m]}"
            )
        if mm.rss_swap != w.rss_swap[m]:
            raise InvariantViolation(
                "rss.swap", f"mm {m} MM_SWAPENTS {mm.rss_swap}, {w.rss_swap[m]} swap PTEs"
            )
        expected = PAGE_TABLE_BYTES * int(w.nr_tables[m])
        if mm.pgtables_bytes != expected:
            raise InvariantViolation(
                "pgtables_bytes",
                f"mm {m} pgtables_bytes {mm.pgtables_bytes}, {w.nr_tables[m]} tables "
                f"live or deposited ({expected})",
            )
