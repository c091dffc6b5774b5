"""The canonical snapshot of FORMAT.md section 3 (plain JSON values, sorted by id)."""

from __future__ import annotations

import copy
from typing import Any

from pudthp_ref.mm_types import MmState
from pudthp_ref.pgtable import entry_json
from pudthp_ref.spec import FOLIO_FLAGS, SNAPSHOT_FORMAT, rle


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
