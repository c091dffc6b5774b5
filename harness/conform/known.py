"""The disagreements of the live kernel with the model that README.md explains, and when each
explanation holds (issue 22, item 4: *known means explained, not matched*).

An entry of ``KNOWN`` names the observable classes its disagreement shows on, the ops that
show it, the values it predicts (``Known.values``: the kernel reading no swap slot where
the model reads one, not any count), and the program state it needs at that op, read from
the reference model's own state there (``op_states``: the program replayed on the
reference alone, up to and through the op).  An observable alone says little: a page's
mapcount differs for a swap-in that met a swap-cache folio, but just as much for a write
fault the model resolved wrongly, and only the first is explained.  So a disagreement is
known only when its class, its op, its values and the state all fit; anything else is a
finding.

The states an entry may need (``STATES``):

- ``large_folio_paged_out_without_swap``: a ``madvise pageout`` while the program has no
  swap, over a range in which the reference maps a large folio (order > 0) just before the
  op: the kernel still walks the range and splits the folio, or counts the split failing
  (``madvise_cold_or_pageout_pte_range``, ``shrink_folio_list``), docs/model.md 9.7 changes
  nothing;
- ``fault_on_a_shared_swap_slot``: a ``read``, ``write`` or ``pin`` whose page the
  reference maps by a swap PTE just before the op, of a slot that more than one swap PTE
  named at some point since it was written (swap count 2 or more after some earlier op):
  the kernel keeps the swapped-in folio in the swap cache for the others
  (``do_swap_page``), the model gives every swap-in a fresh folio;
- ``huge_zero_folio_allocated``: a ``read`` at which the reference allocated the huge zero
  folio (its ``thp_zero_page_alloc`` moved), and with it the machine fact that another
  process holds that folio (``needs``, checked on the machine after the run);
- ``pageout_of_a_swap_cache_folio``: a ``madvise pageout`` over a page whose folio the
  reference swapped in at a ``read`` of a shared slot (``fault_on_a_shared_swap_slot``)
  and that no write has dirtied since (its PTE is clean): the kernel still has that folio
  in the swap cache, with its slot, and reclaims it with no IO to that same slot
  (``shrink_folio_list``: a clean swap-cache folio needs no ``pageout()``); the model,
  which keeps no swap cache, writes it to a new slot.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.conform.observe import Disagreement
from pudthp_ref import spec
from pudthp_ref.spec import Config, Op, Program

if TYPE_CHECKING:
    from pudthp_ref.mm_types import MmState, MmStruct

# Facts about the machine that the harness checks after a run, when a disagreement is one
# they would explain; KNOWN entries may require one.
HUGE_ZERO_HELD_ELSEWHERE = "huge_zero_folio_held_elsewhere"

# The program states an entry may need, each with what it means (the module docstring)
STATES: dict[str, str] = {
    "large_folio_paged_out_without_swap": "a pageout without swap over a range in which "
    "the reference maps a large folio",
    "fault_on_a_shared_swap_slot": "an access to a page the reference maps by a swap PTE "
    "whose slot more than one swap PTE has named since it was written",
    "huge_zero_folio_allocated": "a read at which the reference allocated the huge zero "
    "folio",
    "pageout_of_a_swap_cache_folio": "a pageout over a clean page the reference swapped in "
    "at a read of a slot more than one swap PTE had named",
}


# The counters a split of a THP moves (or its failure): the kernel's pageout without swap
# still splits what the model leaves alone
SPLIT_COUNTERS: tuple[str, ...] = (
    "vmstat.thp_split_pmd", "vmstat.thp_split_page", "vmstat.thp_split_page_failed",
    "vmstat.thp_deferred_split_page", "vmstat.thp_swpout_fallback", "mthp.split",
    "mthp.split_failed", "mthp.split_deferred", "mthp.nr_anon",
    "mthp.nr_anon_partially_mapped", "mthp.swpout_fallback",
)


@dataclass(frozen=True)
class Known:
    """A disagreement of this kernel with the model that README.md explains: the observable
    classes it shows on, the op kinds that show it (``op_key`` spelling: ``madvise.ADVICE``
    for madvise), the program state it needs at that op (a key of ``STATES``), why, whether
    it is a global-counter artefact that checks look past by default, and the machine fact
    it rests on, if any."""

    classes: tuple[str, ...]
    ops: tuple[str, ...]
    state: str
    reason: str
    look_past: bool = False
    needs: str | None = None  # a machine fact (ConformRun.facts) the explanation rests on
    # the values the explanation predicts, by class (``values(kernel, model)``; a class not
    # named here: any values)
    values: dict[str, Callable[[Any, Any], bool]] = field(default_factory=dict)

    def fits(self, d: Disagreement) -> bool:
        """Whether ``d``'s values are what this explanation predicts for its class (values
        not given, as ``pudthp export-c`` asks before any run: class, op and state
        decide)."""
        check = self.values.get(d.cls)
        if check is None or (d.kernel is None and d.model is None):
            return True
        return bool(check(d.kernel, d.model))


# The disagreements README.md explains, by name (the name of its minimal program in
# tests/test_conform.py MINIMAL).  Data only: ``pudthp conform`` and anything else that has
# to tell a known disagreement from a new one read this table through ``known_kind``.
KNOWN: dict[str, Known] = {
    "pageout_without_swap": Known(
        ("rss", "page.kind", "page.folio", "page.order", "page.mapcount", "page.index",
         "anon_huge", *SPLIT_COUNTERS),
        ("madvise.pageout",), "large_folio_paged_out_without_swap",
        "pageout without swap: docs/model.md 9.7 changes nothing, the kernel splits the THP, or "
        "counts the split failing (madvise_cold_or_pageout_pte_range, shrink_folio_list)",
        # the model changes nothing: its counters stay, its RSS is the larger
        values={**dict.fromkeys(SPLIT_COUNTERS, lambda kernel, model: model == 0),
                "rss": lambda kernel, model: kernel < model}),
    "swapin_of_a_shared_slot": Known(
        ("page.mapcount", "page.folio", "vmstat.pswpin"),
        ("read", "write", "pin"), "fault_on_a_shared_swap_slot",
        "a swap-in of a slot another swap PTE also named: the kernel shares one swap-cache "
        "folio, docs/model.md 8.3 a fresh folio each (do_swap_page)",
        # the kernel maps the folio it found in the swap cache (more mappings of it) and
        # reads nothing (one pswpin fewer than the model's one per swap-in)
        values={"page.mapcount": lambda kernel, model: kernel > model,
                "vmstat.pswpin": lambda kernel, model: model == 1 and kernel == 0}),
    "huge_zero_folio_held_elsewhere": Known(
        ("vmstat.thp_zero_page_alloc",),
        ("read",), "huge_zero_folio_allocated",
        "another process on the machine holds the huge zero folio (checked after the run: a "
        "fresh process's huge zero PMD did not allocate it), so the kernel did not allocate "
        "it for the program's first huge zero PMD (mm_get_huge_zero_folio)",
        needs=HUGE_ZERO_HELD_ELSEWHERE,
        values={"vmstat.thp_zero_page_alloc": lambda kernel, model: (kernel, model) == (0, 1)}),
    "pageout_of_a_swap_cache_folio": Known(
        ("vmstat.pswpout", "page.slot"),
        ("madvise.pageout",), "pageout_of_a_swap_cache_folio",
        "a pageout of a clean folio the kernel keeps in the swap cache since a swap-in of a "
        "shared slot: reclaimed to that slot with no IO, where docs/model.md 8.3 (no swap cache) "
        "writes it to a new slot (shrink_folio_list, do_swap_page)",
        values={"vmstat.pswpout": lambda kernel, model: kernel < model}),
}
LOOK_PAST: frozenset[str] = frozenset(c for k in KNOWN.values() if k.look_past
                                      for c in k.classes)


def op_key(op: Op | None) -> str:
    """How ``Known.ops`` and signatures name an op: its kind, ``madvise.ADVICE`` for
    madvise, ``start`` before the first op."""
    if op is None:
        return "start"
    if isinstance(op, spec.Madvise):
        return f"madvise.{op.advice}"
    return op.KIND


def known_kind(d: Disagreement, program: Program,
               facts: frozenset[str] = frozenset()) -> str | None:
    """The name in ``KNOWN`` of the explanation that fits ``d``, or None (unexplained): its
    observable class, its op and the reference's state at that op (``op_states``) must all
    be the entry's, and the machine fact it needs among ``facts`` (what the harness checked
    on the machine, ``ConformRun.facts``)."""
    i = d.op_index
    op = program.ops[i] if 0 <= i < len(program.ops) else None
    key = op_key(op)
    candidates = [(name, k) for name, k in KNOWN.items()
                  if d.cls in k.classes and key in k.ops and k.fits(d)
                  and (k.needs is None or k.needs in facts)]
    if not candidates:
        return None
    states = op_states(program.config, program.ops)
    here = states[i] if 0 <= i < len(states) else frozenset()
    return next((name for name, k in candidates if k.state in here), None)


def known_reason(d: Disagreement, program: Program,
                 facts: frozenset[str] = frozenset()) -> str | None:
    """The README's explanation when ``d`` is one of the disagreements in ``KNOWN``."""
    name = known_kind(d, program, facts)
    return None if name is None else KNOWN[name].reason


# --------------------------------------------------------------------------------------
# The reference's state at each op
# --------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=64)
def op_states(cfg: Config, ops: tuple[Op, ...]) -> tuple[frozenset[str], ...]:
    """Per op, the ``STATES`` the program is in there, read from the reference model stepped
    through the program (a fresh ``RefModel``, nothing else: these are the program's own
    states).  The list stops at an op the reference cannot run (a model finding): no state
    is known from there on."""
    from pudthp_ref.model import RefModel

    model = RefModel(cfg)
    st = model.st
    shared_slots: set[int] = set()  # slots more than one swap PTE named at some point
    cached: set[int] = set()  # folios a read swapped in from such a slot (the swap cache's)
    out: list[frozenset[str]] = []
    for op in ops:
        here: set[str] = set()
        if (isinstance(op, spec.Madvise) and op.advice == "pageout"
                and _maps_clean(st, op.mm, op.start, op.start + op.npages, cached)):
            here.add("pageout_of_a_swap_cache_folio")
        if (isinstance(op, spec.Madvise) and op.advice == "pageout"
                and cfg.swap_capacity == 0 and _maps_large_folio(st, op.mm, op.start,
                                                                 op.start + op.npages)):
            here.add("large_folio_paged_out_without_swap")
        if isinstance(op, spec.Read | spec.Write | spec.Pin):
            slot = _swap_slot_at(st, op.mm, op.addr)
            if slot is not None and slot in shared_slots:
                here.add("fault_on_a_shared_swap_slot")
        zero_allocs = st.stats["vmstat"]["thp_zero_page_alloc"]
        try:
            model.apply(op)
        except Exception:  # a model finding: its own campaigns report it
            break
        if isinstance(op, spec.Read) and st.stats["vmstat"]["thp_zero_page_alloc"] > zero_allocs:
            here.add("huge_zero_folio_allocated")
        if isinstance(op, spec.Read) and "fault_on_a_shared_swap_slot" in here:
            fid = _folio_at(st, op.mm, op.addr)
            if fid is not None:
                cached.add(fid)
        shared_slots.update(s.slot for s in st.swap.values() if s.count > 1)
        out.append(frozenset(here))
    return tuple(out)


def _live_mm(st: MmState, mm_id: int) -> MmStruct | None:
    if 0 <= mm_id < len(st.mms) and st.mms[mm_id].alive:
        return st.mms[mm_id]
    return None


def _maps_large_folio(st: MmState, mm_id: int, start: int, end: int) -> bool:
    """Whether ``mm_id`` maps a page of a large folio (a PUD or PMD leaf, or a PTE of a
    folio of order > 0) in ``[start, end)``."""
    mm = _live_mm(st, mm_id)
    if mm is None:
        return False
    g = st.geom
    pud = st.tables[mm.pud_table].entries
    vpn, end = max(0, start), min(end, g.space)
    while vpn < end:
        pe = pud[vpn // g.pud_nr]
        if pe is None or pe[0] == "leaf":
            if pe is not None:
                return True
            vpn = (vpn // g.pud_nr + 1) * g.pud_nr
            continue
        stop = min(end, (vpn // g.pmd_nr + 1) * g.pmd_nr)
        me = st.tables[pe[1]].entries[(vpn // g.pmd_nr) % g.P]
        if me is not None and me[0] == "leaf":
            return True
        if me is not None and me[0] == "table":
            ptes = st.tables[me[1]].entries
            for ti in range(vpn % g.P, vpn % g.P + stop - vpn):
                te = ptes[ti]
                if te is not None and te[0] == "pte" and st.folios[te[1]].order > 0:
                    return True
        vpn = stop
    return False


def _pte(st: MmState, mm_id: int, vpn: int) -> tuple[Any, ...] | None:
    """The PTE mapping page ``vpn`` of ``mm_id``, if a PTE table maps it."""
    mm = _live_mm(st, mm_id)
    g = st.geom
    if mm is None or not 0 <= vpn < g.space:
        return None
    pe = st.tables[mm.pud_table].entries[vpn // g.pud_nr]
    if pe is None or pe[0] != "table":
        return None
    me = st.tables[pe[1]].entries[(vpn // g.pmd_nr) % g.P]
    if me is None or me[0] != "table":
        return None
    te = st.tables[me[1]].entries[vpn % g.P]
    return None if te is None else tuple(te)


def _swap_slot_at(st: MmState, mm_id: int, vpn: int) -> int | None:
    """The swap slot of the swap PTE mapping page ``vpn`` of ``mm_id``, if it is one."""
    te = _pte(st, mm_id, vpn)
    return int(te[1]) if te is not None and te[0] == "swap" else None


def _folio_at(st: MmState, mm_id: int, vpn: int) -> int | None:
    """The folio a present PTE maps at page ``vpn`` of ``mm_id``."""
    te = _pte(st, mm_id, vpn)
    return int(te[1]) if te is not None and te[0] == "pte" else None


def _maps_clean(st: MmState, mm_id: int, start: int, end: int, folios: set[int]) -> bool:
    """Whether ``mm_id`` maps a page of one of ``folios`` by a clean PTE in ``[start,
    end)`` (a PTE is ``("pte", folio, page, write, dirty, young)``)."""
    live = [fid for fid in folios if fid in st.folios and not st.folios[fid].freed]
    if not live:
        return False
    for vpn in range(max(0, start), min(end, st.geom.space)):
        te = _pte(st, mm_id, vpn)
        if te is not None and te[0] == "pte" and te[1] in live and not te[4]:
            return True
    return False
