"""What the coverage catalogue reads of the reference state around an op: the counters
(``stats_vector``, ``Delta``), the entry an access lands on (``lookup``), the leaves, tables
and PTEs of a range with each folio's state (``Range``), and, before each op, what it will
meet (``probe``, into a ``Pre``).  It only reads: nothing in the models is instrumented.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pudthp_ref import spec
from pudthp_ref.mm_types import Entry, Folio, MmState, MmStruct, PtDesc, Vma
from pudthp_ref.spec import (
    GUP_PIN_COUNTING_BIAS,
    MTHP_KEYS,
    NODE_KEYS,
    VMSTAT_KEYS,
    Op,
)

# --------------------------------------------------------------------------------------
# Counter deltas over one op
# --------------------------------------------------------------------------------------

_STAT_NAMES: tuple[str, ...] = (
    *VMSTAT_KEYS,
    *(f"pmd.{k}" for k in MTHP_KEYS),
    *(f"pud.{k}" for k in MTHP_KEYS),
    *(f"node.{k}" for k in NODE_KEYS),
    *(f"mthp.{k}" for k in MTHP_KEYS),  # summed over the mTHP orders' rows
)
_STAT_AT: dict[str, int] = {name: i for i, name in enumerate(_STAT_NAMES)}
_NO_MTHP = (0,) * len(MTHP_KEYS)


def stats_vector(stats: dict[str, Any]) -> tuple[int, ...]:
    """The counters in ``_STAT_NAMES`` order (the stats dicts keep ``empty_stats`` order);
    the ``mthp.*`` ones add up the rows of every mTHP order."""
    m = stats["mthp"]
    rows = [r for name, r in m.items() if name not in ("pmd", "pud")]
    small = (tuple(sum(col) for col in zip(*(r.values() for r in rows), strict=True))
             if rows else _NO_MTHP)
    return (*stats["vmstat"].values(), *m["pmd"].values(), *m["pud"].values(),
            *stats["node"].values(), *small)


class Delta:
    """``d["thp_split_pud"]``, ``d["pmd.split"]``: how much a counter moved over the op."""

    __slots__ = ("after", "before")

    def __init__(self, before: tuple[int, ...], after: tuple[int, ...]) -> None:
        self.before = before
        self.after = after

    def __getitem__(self, name: str) -> int:
        i = _STAT_AT[name]
        return self.after[i] - self.before[i]


# --------------------------------------------------------------------------------------
# Reading the reference state
# --------------------------------------------------------------------------------------


def ref_state(model: Any) -> MmState | None:
    """The reference state of ``model`` (``ref``, or the ref side of ``both``), or None."""
    st = getattr(getattr(model, "ref", model), "st", None)
    return st if isinstance(st, MmState) else None


def _live_mm(st: MmState, mm_id: int) -> MmStruct | None:
    if 0 <= mm_id < len(st.mms) and st.mms[mm_id].alive:
        return st.mms[mm_id]
    return None


def _vma_at(mm: MmStruct, vpn: int) -> Vma | None:
    for v in mm.vmas:
        if v.start <= vpn < v.end:
            return v
    return None


def folio_mapcount(folio: Folio) -> int:
    """folio_mapcount()."""
    return folio.large_mapcount + 1 if folio.order else folio.mapcount[0] + 1


def _maybe_shared(folio: Folio) -> bool:
    """folio_maybe_mapped_shared()."""
    if folio.order == 0:
        return folio.mapcount[0] > 0
    return folio.large_mapcount > 0 and folio.shared


def _pinned(folio: Folio) -> bool:
    """folio_maybe_dma_pinned()."""
    if folio.order:
        return folio.pincount > 0
    return folio.refcount >= GUP_PIN_COUNTING_BIAS


@dataclass(slots=True)
class _At:
    """Where an access to one page lands: the level and kind of the entry, the table and
    index holding it, and the folio and page it maps (present entries)."""

    where: str  # pud_none pud_leaf pmd_none pmd_leaf pmd_zero pte_none pte_zero pte_swap pte
    entry: Entry | None
    table: PtDesc
    index: int
    folio: Folio | None = None
    page: int = 0


def lookup(st: MmState, mm: MmStruct, vpn: int) -> _At:
    g = st.geom
    pud = st.tables[mm.pud_table]
    pi = vpn // g.pud_nr
    pe = pud.entries[pi]
    if pe is None:
        return _At("pud_none", None, pud, pi)
    if pe[0] == "leaf":
        return _At("pud_leaf", pe, pud, pi, st.folios[pe[1]], vpn % g.pud_nr)
    pmd = st.tables[pe[1]]
    mi = (vpn // g.P) % g.P
    me = pmd.entries[mi]
    if me is None:
        return _At("pmd_none", None, pmd, mi)
    if me[0] == "leaf":
        return _At("pmd_leaf", me, pmd, mi, st.folios[me[1]], vpn % g.P)
    if me[0] == "zero":
        return _At("pmd_zero", me, pmd, mi)
    pte = st.tables[me[1]]
    ti = vpn % g.P
    te = pte.entries[ti]
    if te is None:
        return _At("pte_none", None, pte, ti)
    if te[0] == "pte":
        return _At("pte", te, pte, ti, st.folios[te[1]], te[2])
    return _At("pte_" + te[0], te, pte, ti)


@dataclass(slots=True)
class _FolioPre:
    """A folio a range op met, as it was before the op (the op may split or free it)."""

    folio: Folio
    order: int
    nr: int
    in_range: int  # PTEs of it in the range, or 1 for a huge leaf
    leaf: str  # "pud", "pmd" or "pte": how the range maps it
    maybe_shared: bool
    shared: bool
    pinned: bool
    partially_mapped: bool
    node: int
    written: bool
    mapcount: int


@dataclass(slots=True)
class Range:
    """What a range walk met: PUD leaves (index, folio, wholly in range), PMD leaves and
    huge zero PMDs (PMD table, index, folio, wholly in range), PTE tables (PMD table, index,
    PTE table, whole PMD range, maps something), PMD tables over a whole PUD range, present
    PTEs per folio (count in range), the (exclusive, writable) bits of each present PTE when
    asked for, swap and zero PTEs, and per folio its state before the op."""

    pud_leaves: list[tuple[int, Folio, bool]] = field(default_factory=list)
    pmd_leaves: list[tuple[PtDesc, int, Folio, bool]] = field(default_factory=list)
    zero_pmds: list[tuple[PtDesc, int, bool]] = field(default_factory=list)
    pte_tables: list[tuple[PtDesc, int, PtDesc, bool, bool]] = field(default_factory=list)
    pmd_tables: list[PtDesc] = field(default_factory=list)
    ptes: dict[int, int] = field(default_factory=dict)
    pte_bits: list[tuple[bool, bool]] = field(default_factory=list)
    swap: int = 0
    zero: int = 0
    folios: list[_FolioPre] = field(default_factory=list)

    def mapped(self) -> bool:
        return bool(self.pud_leaves or self.pmd_leaves or self.zero_pmds or self.ptes
                    or self.swap or self.zero)


def _walk(st: MmState, mm: MmStruct, parts: list[tuple[int, int]], *, bits: bool = False,
          folios: bool = False) -> Range:
    """Every non-none entry over ``parts`` (``[start, end)`` pairs) of ``mm``; with ``bits``
    each present PTE's exclusive and write bits, with ``folios`` each folio's state."""
    g = st.geom
    out = Range()
    pud = st.tables[mm.pud_table]
    P, pmd_nr, pud_nr = g.P, g.pmd_nr, g.pud_nr
    for start, end in parts:
        end = min(end, g.space)
        addr = start
        while addr < end:
            pi = addr // pud_nr
            nxt = min(end, (pi + 1) * pud_nr)
            pe = pud.entries[pi]
            if pe is not None:
                if pe[0] == "leaf":
                    out.pud_leaves.append((pi, st.folios[pe[1]], nxt - addr == pud_nr))
                else:
                    pmd = st.tables[pe[1]]
                    _walk_pmd(st, out, pmd, addr, nxt, P, pmd_nr, bits)
                    if nxt - addr == pud_nr:
                        out.pmd_tables.append(pmd)
            addr = nxt
    if folios:
        out.folios = _folio_states(st, out)
    return out


def _walk_pmd(st: MmState, out: Range, pmd: PtDesc, start: int, end: int, P: int,
              pmd_nr: int, bits: bool) -> None:
    addr = start
    while addr < end:
        mi = (addr // P) % P
        nxt = min(end, addr - addr % pmd_nr + pmd_nr)
        me = pmd.entries[mi]
        if me is not None:
            whole = nxt - addr == pmd_nr
            if me[0] == "leaf":
                out.pmd_leaves.append((pmd, mi, st.folios[me[1]], whole))
            elif me[0] == "zero":
                out.zero_pmds.append((pmd, mi, whole))
            else:
                pte = st.tables[me[1]]
                used = False
                entries = pte.entries
                ptes = out.ptes
                for ti in range(addr % P, addr % P + (nxt - addr)):
                    e = entries[ti]
                    if e is None:
                        continue
                    used = True
                    kind = e[0]
                    if kind == "pte":
                        ptes[e[1]] = ptes.get(e[1], 0) + 1
                        if bits:
                            f = st.folios[e[1]]
                            out.pte_bits.append((f.anon_exclusive[e[2]], bool(e[3])))
                    elif kind == "swap":
                        out.swap += 1
                    else:
                        out.zero += 1
                out.pte_tables.append((pmd, mi, pte, whole, used))
        addr = nxt


def _folio_states(st: MmState, r: Range) -> list[_FolioPre]:
    """Every folio the range maps, once each, leaves first, as it is now."""
    seen: dict[int, _FolioPre] = {}

    def note(f: Folio, leaf: str, n: int) -> None:
        if f.id in seen:
            seen[f.id].in_range += n
            return
        seen[f.id] = _FolioPre(
            f, f.order, f.nr, n, leaf, _maybe_shared(f), f.shared, _pinned(f),
            f.partially_mapped and f.deferred, f.node, f.data.count(0) != f.nr, folio_mapcount(f))

    for _, f, _ in r.pud_leaves:
        note(f, "pud", 1)
    for _, _, f, _ in r.pmd_leaves:
        note(f, "pmd", 1)
    for fid, n in r.ptes.items():
        note(st.folios[fid], "pte", n)
    return list(seen.values())


def _vma_parts(mm: MmStruct, start: int, end: int) -> list[tuple[int, int]]:
    return [(max(v.start, start), min(v.end, end)) for v in mm.vmas
            if v.start < end and start < v.end]


def _edge_leaf(st: MmState, mm: MmStruct, addr: int) -> str | None:
    """'pud' or 'pmd' when a VMA split at ``addr`` splits a huge leaf first
    (``split_huge_at``): ``addr`` strictly inside a VMA and strictly inside the leaf."""
    g = st.geom
    if addr >= g.space or not any(v.start < addr < v.end for v in mm.vmas):
        return None
    at = lookup(st, mm, addr)
    if at.where == "pud_leaf" and addr % g.pud_nr:
        return "pud"
    if at.where in ("pmd_leaf", "pmd_zero") and addr % g.pmd_nr:
        return "pmd"
    return None


# --------------------------------------------------------------------------------------
# Per op: what it will meet, read before it runs
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class Pre:
    """The reference state an op met: counters, the next folio id, and what ``probe``
    read for the op's kind."""

    stats: tuple[int, ...]
    next_folio: int
    fail_alloc: tuple[int, int]
    data: Any = None


@dataclass(slots=True)
class AccessPre:
    """The page an access (read, write, pin, split_folio) meets, before it runs."""

    at: _At
    vma: Vma | None
    excl_page: bool = False
    refcount: int = 0
    mapcount: int = 0
    shared: bool = False
    entire: int = -1
    partially_mapped: bool = False
    slot_count: int = 0
    zeromap: bool = False


@dataclass(slots=True)
class RangePre:
    """A range op's walk and the leaves its VMA split points would split first."""

    r: Range
    edges: list[str | None]


def probe(st: MmState, op: Op) -> Any:
    """What ``op`` will meet, read before it runs."""
    if isinstance(op, spec.ShrinkDeferred):
        return [st.folios[fid].partially_mapped for fid in st.deferred]
    if isinstance(op, spec.Unpin):
        pin = st.pins.get(op.pin)
        return None if pin is None else st.folios[pin.folio]
    if isinstance(op, spec.FailAlloc):
        return None
    mm = _live_mm(st, op.mm)
    if mm is None:
        return None
    g = st.geom
    if isinstance(op, spec.Read | spec.Write | spec.Pin | spec.SplitFolio):
        if op.addr >= g.space:
            return None
        at = lookup(st, mm, op.addr)
        a = AccessPre(at, _vma_at(mm, op.addr))
        f = at.folio
        if f is not None:
            a.excl_page = f.anon_exclusive[at.page]
            a.refcount, a.mapcount = f.refcount, folio_mapcount(f)
            a.shared, a.entire = f.shared, f.entire_mapcount
            a.partially_mapped = f.partially_mapped
        elif at.where == "pte_swap":
            assert at.entry is not None
            slot = st.swap[at.entry[1]]
            a.slot_count, a.zeromap = slot.count, slot.zeromap
        return a
    if isinstance(op, spec.Fork):
        faulted = [v for v in mm.vmas if v.anon_vma is not None]
        return (_walk(st, mm, [(v.start, v.end) for v in faulted], folios=True),
                _walk(st, mm, [(v.start, v.end) for v in faulted if v.start % g.pud_nr]))
    if isinstance(op, spec.Exit):
        return _walk(st, mm, [(v.start, v.end) for v in mm.vmas], folios=True)
    start, end = op.start, op.start + op.npages
    if op.npages <= 0 or end > g.space:
        return None
    if isinstance(op, spec.Mprotect):
        parts = []
        cur = start
        while cur < end:  # sys_mprotect: the VMAs up to the first hole
            v = next((v for v in mm.vmas if v.end > cur), None)
            if v is None or v.start > cur:
                break
            hi = min(v.end, end)
            if v.prot != op.prot:  # mprotect_fixup() leaves the others alone
                parts.append((cur, hi))
            cur = hi
        edges = [_edge_leaf(st, mm, a) for a, _ in parts[:1]]
        edges += [_edge_leaf(st, mm, b) for _, b in parts[-1:]]
        return RangePre(_walk(st, mm, parts, bits=op.prot == "rw"), edges)
    wants = isinstance(op, spec.Migrate) or (isinstance(op, spec.Madvise)
                                             and op.advice == "pageout")
    r = _walk(st, mm, _vma_parts(mm, start, end), folios=wants)
    return RangePre(r, [_edge_leaf(st, mm, start), _edge_leaf(st, mm, end)])

