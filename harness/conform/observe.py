"""What both the live kernel and the reference model can show, and how they are compared.

An ``Observation`` is the state after one op in the terms ``/proc`` offers (issue 4, point 3):
per live mm its VMAs, RSS, PMD-mapped (``AnonHugePages``) and swapped pages, and per page
inside a VMA how it is mapped (``none``, ``pte``, ``pmd`` for a PMD leaf, ``zero`` for the
shared zero page, ``hzero`` for the huge zero PMD, ``swap``), which folio backs it and at
which index, the folio's order, ``folio_precise_page_mapcount()`` (``/proc/kpagecount``:
the page's PTE mappings plus the folio's entire mappings, in all mms) and the first 64-bit
word of its contents.  Folios are named by the kernel with a head PFN and by the model with a
folio id; neither name means anything to the other side, so both are replaced by *labels* in
order of first appearance (mm by mm, page by page): two pages share a folio on one side iff
they share it on the other exactly when the labels agree.  Swap slots get labels the same way.

``project_snapshot`` builds the model's observation from a snapshot (docs/format.md "Snapshots").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pudthp_ref.spec import MTHP_KEYS

# The global counters compared as deltas around each op: /proc/vmstat names, and the
# hugepages-2048kB/stats names (the model's stats.mthp.pmd row).
VMSTAT_COMPARED: tuple[str, ...] = (
    "thp_fault_alloc",
    "thp_fault_fallback",
    "thp_split_pmd",
    "thp_split_page",
    "thp_split_page_failed",
    "thp_deferred_split_page",
    "thp_zero_page_alloc",
    "thp_swpout",
    "thp_swpout_fallback",
    "pswpin",
    "pswpout",
)
MTHP_COMPARED: tuple[str, ...] = MTHP_KEYS

KINDS: tuple[str, ...] = ("none", "pte", "pmd", "zero", "hzero", "swap")


@dataclass(frozen=True, slots=True)
class PageObs:
    """One page inside a VMA.  ``folio``/``slot`` are raw names until ``canonical()``."""

    kind: str
    folio: int | None = None
    index: int | None = None
    order: int | None = None
    mapcount: int | None = None
    content: int | None = None
    slot: int | None = None


Vma = tuple[int, int, str, tuple[str, ...]]  # [start, end) in pages, prot, flags


@dataclass
class MmObs:
    vmas: list[Vma]
    rss: int  # present, non-zero pages (MM_ANONPAGES of the window)
    anon_huge: int  # pages mapped by PMD leaves (smaps AnonHugePages / 4 KiB)
    swap: int  # swap PTEs (MM_SWAPENTS of the window)
    pages: list[tuple[int, PageObs]] = field(default_factory=list)  # by vpn, VMAs only


@dataclass
class Observation:
    mms: dict[int, MmObs]  # live mms only


@dataclass(frozen=True, slots=True)
class Disagreement:
    op_index: int
    observable: str
    kernel: Any
    model: Any

    @property
    def cls(self) -> str:
        """The observable without mm ids and page numbers: ``page.kind``, ``vmstat.pswpout``."""
        parts = self.observable.split(".")
        if parts[0].startswith("mm") and parts[0][2:].isdigit():
            parts = parts[1:]
        return ".".join(p.split("[")[0] for p in parts)


# --------------------------------------------------------------------------------------
# Labels
# --------------------------------------------------------------------------------------


def canonical(obs: Observation) -> Observation:
    """Folio and swap-slot names replaced by labels in order of first appearance."""
    folios: dict[int, int] = {}
    slots: dict[int, int] = {}
    out: dict[int, MmObs] = {}
    for mm_id in sorted(obs.mms):
        m = obs.mms[mm_id]
        pages: list[tuple[int, PageObs]] = []
        for vpn, p in m.pages:
            if p.folio is not None or p.slot is not None:  # a new PageObs: replace() is slow
                p = PageObs(p.kind,
                            None if p.folio is None else folios.setdefault(p.folio, len(folios)),
                            p.index, p.order, p.mapcount, p.content,
                            None if p.slot is None else slots.setdefault(p.slot, len(slots)))
            pages.append((vpn, p))
        out[mm_id] = MmObs(list(m.vmas), m.rss, m.anon_huge, m.swap, pages)
    return Observation(out)


# --------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------

PAGE_FIELDS: tuple[str, ...] = ("kind", "folio", "index", "order", "mapcount", "content",
                                "slot")


def compare(op_index: int, kernel: Observation, model: Observation,
            ignore: frozenset[str] = frozenset()) -> Disagreement | None:
    """The first observable where the two (canonical) observations differ, or None.

    ``ignore`` names observable classes (``Disagreement.cls``) to pass over, to look past a
    known disagreement; ignoring ``vmas`` still compares the VMAs with adjacent ones of the
    same prot and flags joined (the same memory, only split differently).
    """
    for mm_id in sorted(set(kernel.mms) | set(model.mms)):
        km, mm = kernel.mms.get(mm_id), model.mms.get(mm_id)
        if km is None or mm is None:
            return Disagreement(op_index, f"mm{mm_id}.alive", km is not None, mm is not None)
        d = _compare_mm(op_index, f"mm{mm_id}", km, mm, ignore)
        if d is not None:
            return d
    return None


def coalesce(vmas: list[Vma]) -> list[Vma]:
    """Adjacent VMAs with the same prot and flags joined."""
    out: list[Vma] = []
    for v in vmas:
        if out and out[-1][1] == v[0] and out[-1][2:] == v[2:]:
            out[-1] = (out[-1][0], v[1], v[2], v[3])
        else:
            out.append(v)
    return out


def _compare_mm(op_index: int, name: str, km: MmObs, mm: MmObs, ignore: frozenset[str]
                ) -> Disagreement | None:
    kv, mv = km.vmas, mm.vmas
    if "vmas" in ignore:
        kv, mv = coalesce(kv), coalesce(mv)
    if kv != mv:
        return Disagreement(op_index, f"{name}.vmas", _vmas_json(km.vmas), _vmas_json(mm.vmas))
    for what in ("rss", "anon_huge", "swap"):
        if what not in ignore and getattr(km, what) != getattr(mm, what):
            return Disagreement(op_index, f"{name}.{what}", getattr(km, what),
                                getattr(mm, what))
    if len(km.pages) != len(mm.pages):  # same VMAs, so this is a bug of a projection
        return Disagreement(op_index, f"{name}.npages", len(km.pages), len(mm.pages))
    fields = [f for f in PAGE_FIELDS if f"page.{f}" not in ignore]
    for (kvpn, kp), (mvpn, mp) in zip(km.pages, mm.pages, strict=True):
        if kvpn != mvpn:
            return Disagreement(op_index, f"{name}.page[{kvpn}].vpn", kvpn, mvpn)
        if kp == mp:
            continue
        for f in fields:
            a, b = getattr(kp, f), getattr(mp, f)
            if a != b:
                return Disagreement(op_index, f"{name}.page[{kvpn}].{f}", a, b)
    return None


def _vmas_json(vmas: list[Vma]) -> list[list[Any]]:
    return [[s, e, p, list(f)] for s, e, p, f in vmas]


# Counters other processes move in both directions (gauges), or whose value depends on
# global state a program does not own (the one huge zero folio of the system, allocated by
# whoever needs it first and freed by its shrinker when nobody holds it).
GLOBAL_STATE: tuple[str, ...] = ("mthp.nr_anon", "mthp.nr_anon_partially_mapped",
                                 "vmstat.thp_zero_page_alloc")


def compare_counters(op_index: int, kernel: dict[str, int], model: dict[str, int],
                     ignore: frozenset[str] = frozenset()) -> list[tuple[Disagreement, bool]]:
    """Every counter whose delta over the op differs (keys ``vmstat.X``, ``mthp.X``), each
    with whether the program alone decides it: an event counter the kernel counted less
    often than the model (other processes only add events).  A counter counted more often,
    or a GLOBAL_STATE one, may be other processes' doing."""
    out: list[tuple[Disagreement, bool]] = []
    for key in model:
        if key in ignore:
            continue
        kv, mv = kernel.get(key, 0), model[key]
        if kv != mv:
            definite = key not in GLOBAL_STATE and kv < mv
            out.append((Disagreement(op_index, key, kv, mv), definite))
    return out


def model_counters(snap: dict[str, Any]) -> dict[str, int]:
    """The compared counters of a snapshot, as absolute values."""
    stats = snap["stats"]
    out = {f"vmstat.{n}": int(stats["vmstat"][n]) for n in VMSTAT_COMPARED}
    out.update({f"mthp.{n}": int(stats["mthp"]["pmd"][n]) for n in MTHP_COMPARED})
    return out


def deltas(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {key: after.get(key, 0) - before.get(key, 0) for key in after}


# --------------------------------------------------------------------------------------
# The model's side: a snapshot (docs/format.md) seen through /proc
# --------------------------------------------------------------------------------------


def _unrle(pairs: list[list[Any]]) -> list[Any]:
    out: list[Any] = []
    for value, count in pairs:
        out.extend([value] * count)
    return out


def project_snapshot(snap: dict[str, Any]) -> Observation:
    """The observation a correct kernel would show in the state of ``snap``.

    Per page: a PMD leaf is ``pmd``, a huge zero PMD ``hzero``, a present PTE ``pte``, a zero
    PTE ``zero``, a swap PTE ``swap``; the mapcount is ``_mapcount + 1`` plus
    ``_entire_mapcount + 1`` for a large folio (``folio_precise_page_mapcount``); a zero page
    reads 0 and has no folio; RSS and swap are the mm's counters; ``anon_huge`` counts pages
    under PMD leaves.
    """
    P = int(snap["geometry"])
    tables: dict[int, dict[int, list[Any]]] = {
        t["id"]: {i: e for i, e in t["entries"]} for t in snap["pagetables"]
    }
    folios = {f["id"]: f for f in snap["folios"]}
    decoded: dict[int, tuple[list[int], list[int]]] = {}

    def folio_pages(fid: int) -> tuple[list[int], list[int]]:
        if fid not in decoded:
            f = folios[fid]
            decoded[fid] = (_unrle(f["mapcount"]), _unrle(f["data"]))
        return decoded[fid]

    def present(fid: int, page: int, kind: str) -> PageObs:
        f = folios[fid]
        mapcounts, data = folio_pages(fid)
        mapcount = mapcounts[page] + 1
        if f["order"] > 0:
            mapcount += f["entire_mapcount"] + 1
        return PageObs(kind, fid, page, int(f["order"]), mapcount, int(data[page]))

    mms: dict[int, MmObs] = {}
    for m in snap["mms"]:
        if not m["alive"]:
            continue
        pud = tables[m["pud_table"]]
        vmas: list[Vma] = [(int(s), int(e), str(p), tuple(fl)) for s, e, p, fl in m["vmas"]]
        pages: list[tuple[int, PageObs]] = []
        anon_huge = 0
        for start, end, _, _ in vmas:
            vpn = start
            while vpn < end:  # a PMD range at a time: its entries are looked up once
                stop = min(end, (vpn // P + 1) * P)
                span = _model_pages(P, tables, pud, vpn, stop, present)
                anon_huge += sum(1 for p in span if p.kind == "pmd")
                pages.extend(zip(range(vpn, stop), span, strict=True))
                vpn = stop
        mms[int(m["id"])] = MmObs(vmas, int(m["rss_anon"]), anon_huge, int(m["rss_swap"]),
                                  pages)
    return Observation(mms)


_NONE = PageObs("none")
_HZERO = PageObs("hzero", content=0)
_ZERO = PageObs("zero", content=0)


def _model_pages(P: int, tables: dict[int, dict[int, list[Any]]], pud: dict[int, list[Any]],
                 vpn: int, stop: int, present: Any) -> list[PageObs]:
    """The pages ``[vpn, stop)`` of one PMD range, as ``_model_page`` sees each."""
    pe = pud.get(vpn // (P * P))
    if pe is None:
        return [_NONE] * (stop - vpn)
    if pe[0] == "leaf":
        return [_model_page(P, tables, pud, v, present) for v in range(vpn, stop)]
    me = tables[pe[1]].get((vpn // P) % P)
    if me is None:
        return [_NONE] * (stop - vpn)
    if me[0] == "leaf":
        return [present(me[1], v % P, "pmd") for v in range(vpn, stop)]
    if me[0] == "zero":
        return [_HZERO] * (stop - vpn)
    ptes = tables[me[1]]
    out = []
    for v in range(vpn, stop):
        te = ptes.get(v % P)
        if te is None:
            out.append(_NONE)
        elif te[0] == "pte":
            out.append(present(te[1], te[2], "pte"))
        elif te[0] == "zero":
            out.append(_ZERO)
        elif te[0] == "swap":
            out.append(PageObs("swap", slot=int(te[1])))
        else:
            raise ValueError(f"unknown PTE {te!r}")
    return out


def _model_page(P: int, tables: dict[int, dict[int, list[Any]]], pud: dict[int, list[Any]],
                vpn: int, present: Any) -> PageObs:
    pe = pud.get(vpn // (P * P))
    if pe is None:
        return PageObs("none")
    if pe[0] == "leaf":  # a PUD leaf: cannot happen with pud_enabled never
        return present(pe[1], vpn % (P * P), "pud")
    pmd = tables[pe[1]]
    me = pmd.get((vpn // P) % P)
    if me is None:
        return PageObs("none")
    if me[0] == "leaf":
        return present(me[1], vpn % P, "pmd")
    if me[0] == "zero":
        return PageObs("hzero", content=0)
    te = tables[me[1]].get(vpn % P)
    if te is None:
        return PageObs("none")
    if te[0] == "pte":
        return present(te[1], te[2], "pte")
    if te[0] == "zero":
        return PageObs("zero", content=0)
    if te[0] == "swap":
        return PageObs("swap", slot=int(te[1]))
    raise ValueError(f"unknown PTE {te!r}")


def huge_zero_view(snap: dict[str, Any]) -> Observation:
    """The huge zero PMDs of ``project_snapshot(snap)`` and nothing else: per live mm, the
    first page of every PMD range mapped by a huge zero PMD (no VMAs, counters or other
    pages).  Read off the page tables, without projecting every page: enough to tell which
    mms map the huge zero folio where a full projection would cost too much (a PUD program
    at x86_64 geometry has 262144 pages per PUD range)."""
    P = int(snap["geometry"])
    tables: dict[int, dict[int, list[Any]]] = {
        t["id"]: {i: e for i, e in t["entries"]} for t in snap["pagetables"]
    }
    mms: dict[int, MmObs] = {}
    for m in snap["mms"]:
        if not m["alive"]:
            continue
        pages: list[tuple[int, PageObs]] = []
        for pi, pe in sorted(tables[m["pud_table"]].items()):
            if pe[0] == "leaf":
                continue
            for mi, me in sorted(tables[pe[1]].items()):
                if me[0] == "zero":
                    pages.append(((pi * P + mi) * P, PageObs("hzero", content=0)))
        mms[int(m["id"])] = MmObs([], 0, 0, 0, pages)
    return Observation(mms)
