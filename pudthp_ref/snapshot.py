"""The canonical snapshot of FORMAT.md section 3 (plain JSON values, sorted by id), and
loading one back into a model state (``load_snapshot``, the inverse of ``take_snapshot``)."""

from __future__ import annotations

import copy
from typing import Any

from pudthp_ref.mm_types import Entry, Folio, MmState, MmStruct, PinRecord, PtDesc, SwapSlot, Vma
from pudthp_ref.pgtable import entry_json
from pudthp_ref.spec import FOLIO_FLAGS, SNAPSHOT_FORMAT, Config, rle


def take_snapshot(st: MmState) -> dict[str, Any]:
    mms = [
        {
            "id": mm.id,
            "alive": mm.alive,
            "vmas": [[v.start, v.end, v.prot, v.flags()] for v in mm.vmas],
            "rss_anon": mm.rss_anon,
            "rss_swap": mm.rss_swap,
            "pgtables_bytes": mm.pgtables_bytes,
            "pud_table": mm.pud_table if mm.alive else None,
            "has_pinned": mm.has_pinned,
        }
        for mm in st.mms
    ]
    pagetables = [
        {
            "id": t.id,
            "level": t.level,
            "mm": t.mm,
            "state": t.state,
            "w8": t.w8,
            "w16": t.w16,
            "entries": [[i, entry_json(e)] for i, e in enumerate(t.entries) if e is not None],
        }
        for _, t in sorted(st.tables.items())
    ]
    folios = []
    for fid in sorted(st.folios):
        f = st.folios[fid]
        if f.freed:
            continue
        flags = [name for name in FOLIO_FLAGS if getattr(f, name)]
        folios.append(
            {
                "id": f.id,
                "order": f.order,
                "node": f.node,
                "refcount": f.refcount,
                "pincount": f.pincount,
                "entire_mapcount": f.entire_mapcount,
                "large_mapcount": f.large_mapcount,
                "nr_pages_mapped": f.nr_pages_mapped,
                "mm_id": list(f.mm_id),
                "mm_id_mapcount": list(f.mm_id_mapcount),
                "shared": f.shared,
                "flags": flags,
                "mapcount": rle(f.mapcount),
                "anon_exclusive": rle(f.anon_exclusive),
                "data": rle(f.data),
            }
        )
    return {
        "format": SNAPSHOT_FORMAT,
        "geometry": st.geom.P,
        "mms": mms,
        "pagetables": pagetables,
        "folios": folios,
        "swap": [
            {"slot": s.slot, "count": s.count, "data": s.data, "zeromap": s.zeromap}
            for _, s in sorted(st.swap.items())
        ],
        "deferred": list(st.deferred),
        "pins": [
            {"id": p.id, "folio": p.folio, "page": p.page} for _, p in sorted(st.pins.items())
        ],
        "fail_alloc": dict(st.fail_alloc),
        "stats": copy.deepcopy(st.stats),
    }


def take_summary(st: MmState) -> dict[str, Any]:
    """The per-op digest's input: nothing that grows with the number of pages."""
    return {
        "mms": [
            [mm.id, mm.alive, [[v.start, v.end, v.prot, v.flags()] for v in mm.vmas],
             mm.rss_anon, mm.rss_swap, mm.pgtables_bytes, mm.has_pinned]
            for mm in st.mms
        ],
        "deferred": list(st.deferred),
        "pins": sorted([p.id, p.folio, p.page] for p in st.pins.values()),
        "next": [st.next_pt_id, st.next_folio_id, st.next_swap_slot, st.next_pin_id],
        "swap_used": len(st.swap),
        "fail_alloc": dict(st.fail_alloc),
        "stats": st.stats,
    }


def load_snapshot(snap: dict[str, Any], cfg: Config) -> MmState:
    """The state ``snap`` describes: ``take_snapshot(load_snapshot(s, cfg)) == s``.

    A snapshot does not hold everything; the rest is rebuilt as ``pudthp_fast`` rebuilds it,
    so both implementations load the same state: every id counter one past the largest id
    in use, a fresh anon_vma for every VMA (none of them forked), the huge zero folio
    allocated iff ``thp_zero_page_alloc`` counted it, and a dead mm's PUD table id 0 (freed
    tables and folios are not in a snapshot).  Values are taken as they are, so a planted
    defect loads as the state it describes."""
    st = MmState(cfg=cfg, geom=cfg.geom)
    for t in snap["pagetables"]:
        entries: list[Entry | None] = [None] * cfg.geom.P
        for i, e in t["entries"]:
            entries[i] = _entry(e)
        st.tables[t["id"]] = PtDesc(t["id"], t["level"], t["mm"], entries, t["w8"], t["w16"],
                                    t["state"])
    for f in snap["folios"]:
        st.folios[f["id"]] = Folio(
            id=f["id"], order=f["order"], node=f["node"], nr=1 << f["order"],
            refcount=f["refcount"], pincount=f["pincount"],
            entire_mapcount=f["entire_mapcount"], large_mapcount=f["large_mapcount"],
            nr_pages_mapped=f["nr_pages_mapped"], mm_id=list(f["mm_id"]),
            mm_id_mapcount=list(f["mm_id_mapcount"]), shared=f["shared"],
            mapcount=_unrle(f["mapcount"]), anon_exclusive=_unrle(f["anon_exclusive"]),
            data=_unrle(f["data"]), **{name: name in f["flags"] for name in FOLIO_FLAGS})
    for s in snap["swap"]:
        st.swap[s["slot"]] = SwapSlot(s["slot"], s["count"], s["data"], s["zeromap"])
    for m in snap["mms"]:
        vmas = []
        for start, end, prot, flags in m["vmas"]:
            vmas.append(Vma(start, end, prot, "hugepage" in flags, "nohugepage" in flags,
                            st.next_anon_vma))
            st.next_anon_vma += 1
        st.mms.append(MmStruct(m["id"], m["pud_table"] or 0, m["alive"], vmas, m["rss_anon"],
                               m["rss_swap"], m["pgtables_bytes"], m["has_pinned"]))
    st.pins = {p["id"]: PinRecord(p["id"], p["folio"], p["page"]) for p in snap["pins"]}
    st.deferred = list(snap["deferred"])
    st.fail_alloc = dict(snap["fail_alloc"])
    st.stats = copy.deepcopy(snap["stats"])
    st.huge_zero_allocated = st.stats["vmstat"]["thp_zero_page_alloc"] > 0
    st.next_pt_id = max(st.tables, default=0) + 1
    st.next_folio_id = max(st.folios, default=0) + 1
    st.next_swap_slot = max(st.swap, default=0) + 1
    st.next_pin_id = max(st.pins, default=0) + 1
    return st


def _entry(e: list[Any]) -> Entry:
    """The model's tuple for a snapshot's entry (``entry_json`` inverted: bits as bools)."""
    if e[0] in ("leaf", "pte"):
        return (e[0], *e[1:-3], bool(e[-3]), bool(e[-2]), bool(e[-1]))
    return tuple(e)


def _unrle(runs: list[list[Any]]) -> list[Any]:
    return [v for v, n in runs for _ in range(n)]
