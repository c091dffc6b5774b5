"""Invariant checker: MODEL.md section 6, recomputed from the page tables after every op.

This is the model's union of the kernel's own consistency checks:

- ``debug_vm_pgtable`` / page-table walkers: entries of the right kind at each level, a
  table entry naming a live table of the next level of the same mm, huge leaves aligned
  inside one VMA and mapping a folio of exactly the leaf's order;
- the deposit chains of ``pgtable_trans_huge_deposit`` (PMD level, a sentinel-less circular
  ``list_head`` through the deposited PTE tables' ``lru``) and of the RFC's PUD-level stack
  (``pud_huge_pmd``), walked word by word through the aliased ptdesc words ``w8``/``w16``:
  NULL, ``LIST_POISON1/2``, use-after-free, wrong levels, cycles and miscounts all become
  violations, never crashes;
- ``check_mm`` at mm teardown (RSS and ``pgtables_bytes`` zero, no page tables left) and the
  per-mm accounting it relies on while the mm lives;
- the free-time checks of ``free_tail_page_prepare`` / ``page_expected_state`` for freed
  folios, and the rmap invariants I1-I21 of the background note for live ones (per-page and
  large mapcounts, ``_nr_pages_mapped``, the mm-id slots with their SHARED bit, refcount =
  mappings + pins + swap cache, PageAnonExclusive, the deferred split queue and the
  ``NR_ANON_*`` / mTHP counters).

Nothing the model keeps as a counter is trusted: everything is recomputed from the live page
tables of the alive mms and compared.  ``check_invariants`` raises ``InvariantViolation`` on
the first broken invariant; its ``invariant`` is a short stable dotted name (no ids), the
message carries the ids and values.  Any other exception met while reading a malformed state
is reported as ``state.malformed`` (but ``MemoryError``: running out of memory is no state).

This module holds the entry point, the shapes, swap and per-mm accounting; the page-table
walk is ``invariants_pgtable`` (its deposit chains ``invariants_deposit``), the folio checks
``invariants_folios``.  ``pudthp_fast`` has the same four modules, names and order.
"""

from __future__ import annotations

from pudthp_ref.invariants_folios import check_deferred_queue, check_folios, check_pins
from pudthp_ref.invariants_pgtable import Walk, check_reachability, walk_mm
from pudthp_ref.mm_types import PT_DEPOSITED, PT_FREED, PT_LIVE, MmState
from pudthp_ref.spec import LEVELS, PAGE_TABLE_BYTES, PROTS, InvariantViolation

_PT_STATES = (PT_LIVE, PT_DEPOSITED, PT_FREED)


def check_invariants(st: MmState) -> None:
    """Raise ``InvariantViolation`` on the first broken invariant of MODEL.md section 6."""
    try:
        _check(st)
    except InvariantViolation:
        raise
    except MemoryError:
        raise  # out of memory is no malformed state
    except Exception as e:
        raise InvariantViolation("state.malformed", f"checker met {type(e).__name__}: {e}") from e


def _check(st: MmState) -> None:
    w = Walk(st)
    _check_shapes(st)
    for mm in st.mms:
        if mm.alive:
            walk_mm(w, mm)
    check_reachability(w)
    pins = check_pins(st)
    check_deferred_queue(st)
    check_folios(w, pins)
    _check_swap(w)
    _check_mm_accounting(w)


# --------------------------------------------------------------------------------------
# Shapes: ids, levels, list lengths, VMA layout
# --------------------------------------------------------------------------------------


def _check_shapes(st: MmState) -> None:
    g = st.geom
    P = g.P
    nmm = len(st.mms)
    for i, mm in enumerate(st.mms):
        if mm.id != i:
            raise InvariantViolation("mm.id", f"mms[{i}] has id {mm.id}")
        prev_end = 0
        for v in mm.vmas:
            if v.prot not in PROTS:
                raise InvariantViolation(
                    "vma.prot", f"mm {i} VMA [{v.start}, {v.end}) prot {v.prot!r}"
                )
            if not (prev_end <= v.start < v.end <= g.space):
                raise InvariantViolation(
                    "vma.layout",
                    f"mm {i} VMA [{v.start}, {v.end}) unsorted, overlapping, empty or outside "
                    f"[0, {g.space}) (previous end {prev_end})",
                )
            prev_end = v.end
    for key, t in st.tables.items():
        if t.id != key:
            raise InvariantViolation("pgtable.id", f"tables[{key}] has id {t.id}")
        if t.state not in _PT_STATES:
            raise InvariantViolation("pgtable.state", f"table {key} state {t.state!r}")
        if t.state == PT_FREED:
            continue
        if t.level not in LEVELS:
            raise InvariantViolation("pgtable.level", f"table {key} level {t.level!r}")
        if len(t.entries) != P:
            raise InvariantViolation(
                "pgtable.entries_len", f"table {key} has {len(t.entries)} entries"
            )
        if not (type(t.mm) is int and 0 <= t.mm < nmm):
            raise InvariantViolation(
                "pgtable.wrong_mm", f"table {key} owned by unknown mm {t.mm!r}"
            )
        if not st.mms[t.mm].alive:
            raise InvariantViolation(
                "dead_mm.tables", f"{t.state} {t.level} table {key} owned by dead mm {t.mm}"
            )
    for mm in st.mms:
        if not mm.alive:
            pud = st.tables.get(mm.pud_table)
            if pud is not None and pud.state != PT_FREED:
                raise InvariantViolation(
                    "dead_mm.tables", f"dead mm {mm.id} PUD table {mm.pud_table} not freed"
                )
    orders = (0, g.pmd_order, g.pud_order)
    for key, f in st.folios.items():
        if f.id != key:
            raise InvariantViolation("folio.id", f"folios[{key}] has id {f.id}")
        if f.order not in orders:
            raise InvariantViolation("folio.order", f"folio {key} order {f.order} not in {orders}")
        if f.nr != 1 << f.order:
            raise InvariantViolation("folio.nr", f"folio {key} order {f.order} nr {f.nr}")
        if len(f.mapcount) != f.nr or len(f.anon_exclusive) != f.nr:
            raise InvariantViolation(
                "folio.shape",
                f"folio {key} nr {f.nr}: {len(f.mapcount)} mapcounts, "
                f"{len(f.anon_exclusive)} AnonExclusive bits",
            )
        if len(f.mm_id) != 2 or len(f.mm_id_mapcount) != 2:
            raise InvariantViolation(
                "folio.shape", f"folio {key} mm-id slots {f.mm_id} {f.mm_id_mapcount}"
            )



# --------------------------------------------------------------------------------------
# Swap and per-mm accounting (check_mm)
# --------------------------------------------------------------------------------------


def _check_swap(w: Walk) -> None:
    swap = w.st.swap
    for slot, refs in w.swap_refs.items():
        if swap.get(slot) is None:
            raise InvariantViolation(
                "swap.missing_slot", f"{refs} swap PTEs name missing slot {slot!r}"
            )
    for slot, s in swap.items():
        if s.slot != slot:
            raise InvariantViolation("swap.slot_id", f"swap[{slot}] has slot {s.slot}")
        refs = w.swap_refs.get(slot, 0)
        if s.count != refs:
            raise InvariantViolation("swap.count", f"slot {slot} count {s.count}, {refs} swap PTEs")


def _check_mm_accounting(w: Walk) -> None:
    for mm in w.st.mms:
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
        expected = PAGE_TABLE_BYTES * w.nr_tables[m]
        if mm.pgtables_bytes != expected:
            raise InvariantViolation(
                "pgtables_bytes",
                f"mm {m} pgtables_bytes {mm.pgtables_bytes}, {w.nr_tables[m]} tables "
                f"live or deposited ({expected})",
            )
