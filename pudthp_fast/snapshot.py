"""The canonical snapshot of FORMAT.md section 3, taken from the fast struct-of-arrays state.

This is the one place where the fast model converts to plain Python: the result must equal,
value for value and in the same order, what ``pudthp_ref``'s ``take_snapshot`` gives for the
same logical state (page tables and live folios sorted by id, entries as ``[index, entry]``
for non-none entries, per-page arrays run-length encoded with ``spec.rle`` semantics).  The
run-length encoding is computed over all live folios at once: one gather of their pages in
id order, change points where the value changes or a folio starts, ``np.flatnonzero``.
"""

from __future__ import annotations

import gc
import hashlib
import json
from typing import Any

import numpy as np

from pudthp_fast.state import (
    LEAF,
    LEVEL_NAMES,
    POISON1,
    POISON2,
    PTE,
    ST_DEPOSITED,
    ST_LIVE,
    SWAP,
    TABLE,
    ZERO,
    Arr,
    FastState,
)
from pudthp_ref.spec import FOLIO_FLAGS, LIST_POISON1, LIST_POISON2, SNAPSHOT_FORMAT

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


def digest_snapshot(snap: dict[str, Any]) -> str:
    """A short canonical digest of a snapshot dict (same value for equal snapshots)."""
    text = json.dumps(snap, sort_keys=True, separators=(",", ":"))
    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


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
        vmas = []
        for v in mm.vmas:
            flags = []
            if v.hugepage:
                flags.append("hugepage")
            if v.nohugepage:
                flags.append("nohugepage")
            vmas.append([int(v.start), int(v.end), v.prot, flags])
        out.append(
            {
                "id": int(mm.id),
                "alive": bool(mm.alive),
                "vmas": vmas,
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
                "level": LEVEL_NAMES[level] if 0 <= level < len(LEVEL_NAMES) else level,
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
