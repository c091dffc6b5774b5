"""The canonical snapshot of FORMAT.md section 3, taken from the fast struct-of-arrays
state, and loaded back into one (``load_snapshot``, the inverse of ``take_snapshot``).

This is the one place where the fast model converts to and from plain Python: a snapshot
must equal, value for value and in the same order, what ``pudthp_ref``'s ``take_snapshot``
gives for the same logical state (page tables and live folios sorted by id, entries as
``[index, entry]`` for non-none entries, per-page arrays run-length encoded with
``spec.rle`` semantics).  The run-length encoding is computed over all live folios at once:
one gather of their pages in id order, change points where the value changes or a folio
starts, ``np.flatnonzero``.  What a snapshot does not hold is rebuilt on load as
``pudthp_ref.snapshot.load_snapshot`` rebuilds it, so both sides load the same state.
"""

from __future__ import annotations

import gc
from typing import Any

import numpy as np

from pudthp_fast.state import (
    LEAF,
    LEVEL_CODE,
    NULL,
    POISON1,
    POISON2,
    PTE,
    ST_DEPOSITED,
    ST_LIVE,
    SWAP,
    TABLE,
    ZERO,
    Arr,
    D,
    FastMm,
    FastState,
    FastVma,
    W,
    Y,
    set_entry,
)
from pudthp_ref.spec import (
    FOLIO_FLAGS,
    LEVEL_PMD,
    LEVEL_PUD,
    LEVELS,
    LIST_POISON1,
    LIST_POISON2,
    SNAPSHOT_FORMAT,
    Config,
)

_STATE_NAMES = {ST_LIVE: "live", ST_DEPOSITED: "deposited"}


def take_snapshot(st: FastState) -> dict[str, Any]:
    # Hundreds of thousands of small lists at x86_64 geometry: the cyclic garbage collector
    # would traverse every live object again and again while they are built (none of them
    # can form a cycle), so it is paused for the duration.
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _snapshot(st)
    finally:
        if enabled:
            gc.enable()


def _snapshot(st: FastState) -> dict[str, Any]:
    return {
        "format": SNAPSHOT_FORMAT,
        "geometry": st.geom.P,
        "mms": _mms(st),
        "pagetables": _pagetables(st),
        "folios": _folios(st),
        "swap": _swap(st),
        "deferred": [int(f) for f in st.deferred],
        "pins": [
            {"id": int(pid), "folio": int(fp[0]), "page": int(fp[1])}
            for pid, fp in sorted(st.pins.items())
        ],
        "fail_alloc": _plain(st.fail_alloc),
        "stats": _plain(st.stats),
    }


def _plain(v: Any) -> Any:
    """A deep copy with numpy scalars turned into Python ones (json.dumps must work)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    return v


def _mms(st: FastState) -> list[dict[str, Any]]:
    out = []
    for mm in st.mms:
        out.append(
            {
                "id": int(mm.id),
                "alive": bool(mm.alive),
                "vmas": [[int(v.start), int(v.end), v.prot, v.flags()] for v in mm.vmas],
                "rss_anon": int(mm.rss_anon),
                "rss_swap": int(mm.rss_swap),
                "pgtables_bytes": int(mm.pgtables_bytes),
                "pud_table": int(mm.pud_table) if mm.alive else None,
                "has_pinned": bool(mm.has_pinned),
            }
        )
    return out


def _word(w: int) -> int | str | None:
    if w == 0:
        return None
    if w == POISON1:
        return LIST_POISON1
    if w == POISON2:
        return LIST_POISON2
    return w


def _pagetables(st: FastState) -> list[dict[str, Any]]:
    n = st.next_pt
    state = st.t_state[:n]
    ids = np.flatnonzero((state == ST_LIVE) | (state == ST_DEPOSITED))
    if ids.size == 0:
        return []
    erows = st.t_row[ids]  # entry rows of the tables (0: all none)
    kinds = st.e_kind[erows]
    rows, cols = np.nonzero(kinds)
    trow = erows[rows]
    k_l = kinds[rows, cols].tolist()
    id_l = st.e_id[trow, cols].tolist()
    pg_l = st.e_page[trow, cols].tolist()
    bits = st.e_bits[trow, cols].astype(np.int64)
    w_l = (bits & 1).tolist()
    d_l = ((bits >> 1) & 1).tolist()
    y_l = ((bits >> 2) & 1).tolist()
    col_l = cols.tolist()
    entries = [
        [
            i,
            ["pte", f, p, w, d, y]
            if k == PTE
            else ["table", f]
            if k == TABLE
            else ["leaf", f, w, d, y]
            if k == LEAF
            else ["zero"]
            if k == ZERO
            else ["swap", f]
            if k == SWAP
            else [f"kind{k}", f],
        ]
        for i, k, f, p, w, d, y in zip(col_l, k_l, id_l, pg_l, w_l, d_l, y_l, strict=True)
    ]
    ends = np.cumsum(np.bincount(rows, minlength=ids.size)).tolist()
    out = []
    start = 0
    for tid, level, mm, tstate, w8, w16, end in zip(
        ids.tolist(),
        st.t_level[ids].tolist(),
        st.t_mm[ids].tolist(),
        st.t_state[ids].tolist(),
        st.t_w8[ids].tolist(),
        st.t_w16[ids].tolist(),
        ends,
        strict=True,
    ):
        out.append(
            {
                "id": tid,
                "level": LEVELS[level] if 0 <= level < len(LEVELS) else level,
                "mm": mm,
                "state": _STATE_NAMES[tstate],
                "w8": _word(w8),
                "w16": _word(w16),
                "entries": entries[start:end],
            }
        )
        start = end
    return out


def _rle_runs(
    values: Arr, bound: Arr, owner_starts: Arr, nfolios: int
) -> tuple[list[Any], list[int], list[int]]:
    """Runs of ``values`` (pages of all folios, concatenated) that never cross a folio start.

    Returns the run values and lengths as Python lists and, per folio, the end offset of its
    runs in those lists.
    """
    total = values.shape[0]
    change = bound.copy()
    change[1:] |= values[1:] != values[:-1]
    starts = np.flatnonzero(change)
    lengths = np.diff(np.append(starts, total))
    which = np.searchsorted(owner_starts, starts, side="right") - 1
    ends = np.cumsum(np.bincount(which, minlength=nfolios))
    return values[starts].tolist(), lengths.tolist(), ends.tolist()


def _folios(st: FastState) -> list[dict[str, Any]]:
    nf = st.next_folio
    fids = np.flatnonzero(st.f_live[:nf])
    if fids.size == 0:
        return []
    nr = st.f_nr[fids]
    base = st.f_base[fids]
    ends = np.cumsum(nr)
    firsts = ends - nr
    total = int(ends[-1])
    idx = np.repeat(base - firsts, nr) + np.arange(total, dtype=np.int64)
    bound = np.zeros(total, dtype=bool)
    bound[firsts[nr > 0]] = True
    n = fids.size
    runs = [
        _rle_runs(arr[idx], bound, firsts, n) for arr in (st.p_mapcount, st.p_exclusive, st.p_data)
    ]
    flag_arrays = {
        "deferred": st.f_deferred,
        "dirty": st.f_dirty,
        "partially_mapped": st.f_partial,
        "swapcache": st.f_swapcache,
    }
    names = FOLIO_FLAGS
    flag_cols = [flag_arrays[name][fids].tolist() for name in names]
    cols = zip(
        fids.tolist(),
        st.f_order[fids].tolist(),
        st.f_node[fids].tolist(),
        st.f_ref[fids].tolist(),
        st.f_pin[fids].tolist(),
        st.f_entire[fids].tolist(),
        st.f_large[fids].tolist(),
        st.f_npm[fids].tolist(),
        st.f_mmid[fids].tolist(),
        st.f_mmc[fids].tolist(),
        st.f_shared[fids].tolist(),
        *flag_cols,
        strict=True,
    )
    out = []
    prev = [0, 0, 0]
    for k, (fid, order, node, ref, pin, entire, large, npm, mmid, mmc, shared, *fl) in enumerate(
        cols
    ):
        rles = []
        for j, (vals, lens, rends) in enumerate(runs):
            a, b = prev[j], rends[k]
            rles.append([[v, c] for v, c in zip(vals[a:b], lens[a:b], strict=True)])
            prev[j] = b
        out.append(
            {
                "id": fid,
                "order": order,
                "node": node,
                "refcount": ref,
                "pincount": pin,
                "entire_mapcount": entire,
                "large_mapcount": large,
                "nr_pages_mapped": npm,
                "mm_id": mmid,
                "mm_id_mapcount": mmc,
                "shared": shared,
                "flags": [name for name, on in zip(names, fl, strict=True) if on],
                "mapcount": rles[0],
                "anon_exclusive": rles[1],
                "data": rles[2],
            }
        )
    return out


def _swap(st: FastState) -> list[dict[str, Any]]:
    n = st.next_slot
    slots = np.flatnonzero(st.s_count[:n] > 0)
    return [
        {"slot": s, "count": c, "data": d, "zeromap": z}
        for s, c, d, z in zip(
            slots.tolist(), st.s_count[slots].tolist(), st.s_data[slots].tolist(),
            st.s_zero[slots].tolist(), strict=True
        )
    ]


def take_summary(st: FastState) -> dict[str, Any]:
    """The per-op digest's input: nothing that grows with the number of pages."""
    return {
        "mms": [
            [mm.id, mm.alive, [[v.start, v.end, v.prot, v.flags()] for v in mm.vmas],
             mm.rss_anon, mm.rss_swap, mm.pgtables_bytes, mm.has_pinned]
            for mm in st.mms
        ],
        "deferred": list(st.deferred),
        "pins": sorted([pid, f, p] for pid, (f, p) in st.pins.items()),
        "next": [st.next_pt, st.next_folio, st.next_slot, st.next_pin],
        "swap_used": st.s_used,
        "fail_alloc": dict(st.fail_alloc),
        "stats": st.stats,
    }


# --------------------------------------------------------------------------------------
# Loading a snapshot
# --------------------------------------------------------------------------------------

_KINDS = {"table": TABLE, "leaf": LEAF, "zero": ZERO, "pte": PTE, "swap": SWAP}
_STATES = {"live": ST_LIVE, "deposited": ST_DEPOSITED}


def _load_word(w: Any) -> int:
    if w is None:
        return NULL
    if w == LIST_POISON1:
        return POISON1
    if w == LIST_POISON2:
        return POISON2
    if type(w) is int and w > 0:
        return w
    raise ValueError(f"word {w!r} is not a page-table id, NULL or a poison value")


def _unrle(runs: list[list[Any]]) -> list[Any]:
    return [v for v, n in runs for _ in range(n)]


def load_snapshot(snap: dict[str, Any], cfg: Config, paths: str = "default") -> FastState:
    """The state ``snap`` describes (``take_snapshot(load_snapshot(s, cfg)) == s``), with
    ``cfg``'s geometry.  Raises ValueError for what the arrays cannot hold (a word that is
    no id, a swap slot at count 0, an unknown level, state or entry kind).

    Not in a snapshot, rebuilt as the reference rebuilds it: id counters one past the
    largest id in use, a fresh anon_vma for every VMA (none forked), the huge zero folio
    allocated iff ``thp_zero_page_alloc`` counted it, and each live table's address from
    the entry that names it."""
    st = FastState(cfg, paths)
    tables = snap["pagetables"]
    st.new_table_rows(max((t["id"] for t in tables), default=0))
    for t in tables:
        tid = t["id"]
        if t["level"] not in LEVEL_CODE or t["state"] not in _STATES:
            raise ValueError(f"table {tid}: level {t['level']!r}, state {t['state']!r}")
        st.t_level[tid] = LEVEL_CODE[t["level"]]
        st.t_mm[tid] = t["mm"]
        st.t_state[tid] = _STATES[t["state"]]
        st.t_w8[tid] = _load_word(t["w8"])
        st.t_w16[tid] = _load_word(t["w16"])
        for i, e in t["entries"]:
            kind = _KINDS.get(e[0])
            if kind is None:
                raise ValueError(f"table {tid} entry {i}: {e!r}")
            bits = 0
            if e[0] in ("leaf", "pte"):
                bits = (W if e[-3] else 0) | (D if e[-2] else 0) | (Y if e[-1] else 0)
            set_entry(st, tid, i, kind, e[1] if len(e) > 1 else 0, e[2] if kind == PTE else 0,
                      bits)
    folios = snap["folios"]
    st.new_folio_rows(max((f["id"] for f in folios), default=0))
    for f in folios:
        fid, nr = f["id"], 1 << f["order"]
        b = st.new_pages(nr)
        st.f_order[fid], st.f_node[fid], st.f_nr[fid], st.f_base[fid] = f["order"], f["node"], nr, b
        st.f_ref[fid], st.f_pin[fid] = f["refcount"], f["pincount"]
        st.f_entire[fid], st.f_large[fid] = f["entire_mapcount"], f["large_mapcount"]
        st.f_npm[fid], st.f_shared[fid] = f["nr_pages_mapped"], f["shared"]
        st.f_mmid[fid], st.f_mmc[fid] = f["mm_id"], f["mm_id_mapcount"]
        st.f_live[fid] = True
        for name, arr in (("deferred", st.f_deferred), ("dirty", st.f_dirty),
                          ("partially_mapped", st.f_partial), ("swapcache", st.f_swapcache)):
            arr[fid] = name in f["flags"]
        st.p_mapcount[b : b + nr] = _unrle(f["mapcount"])
        st.p_exclusive[b : b + nr] = _unrle(f["anon_exclusive"])
        st.p_data[b : b + nr] = np.array(_unrle(f["data"]), np.uint64)
    swap = snap["swap"]
    st.new_slots(max((s["slot"] for s in swap), default=0))
    for s in swap:
        if s["count"] <= 0:
            raise ValueError(f"swap slot {s['slot']} at count {s['count']}")
        slot = s["slot"]
        st.s_count[slot], st.s_data[slot], st.s_zero[slot] = s["count"], s["data"], s["zeromap"]
    st.s_used = len(swap)
    for m in snap["mms"]:
        vmas = []
        for start, end, prot, flags in m["vmas"]:
            vmas.append(FastVma(start, end, prot, "hugepage" in flags, "nohugepage" in flags,
                                st.next_anon_vma))
            st.next_anon_vma += 1
        st.mms.append(FastMm(m["id"], m["pud_table"] or 0, m["alive"], vmas, m["rss_anon"],
                             m["rss_swap"], m["pgtables_bytes"], m["has_pinned"]))
    _table_addresses(st)
    st.pins = {p["id"]: (p["folio"], p["page"]) for p in snap["pins"]}
    st.next_pin = max(st.pins, default=0) + 1
    st.deferred = list(snap["deferred"])
    st.fail_alloc = dict(snap["fail_alloc"])
    st.stats = _plain(snap["stats"])
    st.huge_zero_allocated = st.stats["vmstat"]["thp_zero_page_alloc"] > 0
    return st


def _table_addresses(st: FastState) -> None:
    """``t_addr`` of every live table an alive mm's PUD and PMD tables name."""
    g = st.geom
    pud_code, pmd_code = LEVEL_CODE[LEVEL_PUD], LEVEL_CODE[LEVEL_PMD]
    for mm in st.mms:
        t = mm.pud_table
        if not mm.alive or not 0 < t < st.next_pt or st.t_level[t] != pud_code:
            continue
        st.t_addr[t] = 0
        for pi, pmd in _children(st, t):
            st.t_addr[pmd] = pi * g.pud_nr
            if st.t_level[pmd] == pmd_code:
                for mi, pte in _children(st, pmd):
                    st.t_addr[pte] = pi * g.pud_nr + mi * g.pmd_nr


def _children(st: FastState, t: int) -> list[tuple[int, int]]:
    r = st.row(t)
    idx = (st.e_kind[r] == TABLE).nonzero()[0]
    return [(i, c) for i, c in zip(idx.tolist(), st.e_id[r, idx].tolist(), strict=True)
            if 0 < c < st.next_pt]
