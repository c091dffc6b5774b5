"""The fast checker's folio checks: pins, the deferred split queue, and every folio against
the mappings the page-table walk found (``pudthp_ref.invariants_folios``, same names):
per-page and large mapcounts, ``_nr_pages_mapped``, the mm-id slots with their SHARED bit,
refcount = mappings + pins + swap cache, PageAnonExclusive, the queue flags and the
``NR_ANON_*`` / mTHP counters; a freed folio back at rest.

Each check is a mask over all folio rows (``np.bincount`` of the mapped pages and folios,
prefix sums over the page pool for per-folio page counts); the first failure in folio id
order, then check rank, is the one reported, as the reference's loop over folios reports it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pudthp_fast.invariants_pgtable import I64, RANKS, Ctx, Earliest, Walk, nz
from pudthp_fast.state import Arr, FastState
from pudthp_ref.spec import ENTIRELY_MAPPED, GUP_PIN_COUNTING_BIAS, InvariantViolation


def check_pins(st: FastState, c: Ctx) -> Arr:
    npins = np.zeros(max(c.nf, 1), I64)
    for pid, (fid, page) in sorted(st.pins.items()):
        if not 1 <= fid < c.nf or not (st.f_live[fid] or st.f_nr[fid]):
            raise InvariantViolation("pin.missing_folio", f"pin {pid} names unknown folio {fid}")
        if not st.f_live[fid]:
            raise InvariantViolation("freed.pinned", f"pin {pid} holds freed folio {fid}")
        if not 0 <= page < st.f_nr[fid]:
            raise InvariantViolation(
                "pin.page", f"pin {pid} page {page} of {st.f_nr[fid]}-page folio {fid}"
            )
        npins[fid] += 1
    return npins


def check_deferred_queue(st: FastState, c: Ctx) -> None:
    dq = st.deferred
    if not dq:
        return
    if len(set(dq)) != len(dq):
        raise InvariantViolation("deferred.duplicate", f"deferred queue {dq} has duplicates")
    q = np.array(dq, I64)
    pos = np.arange(q.size, dtype=I64)
    inr = (q >= 1) & (q < c.nf)
    qc = np.where(inr, q, 0)
    live = st.f_live[qc]
    e = Earliest()
    e.first(
        ~inr | (~live & (st.f_nr[qc] == 0)),
        pos,
        0,
        "deferred.missing",
        lambda i: f"deferred queue holds unknown folio {q[i]}",
    )
    e.first(~live, pos, 1, "deferred.freed", lambda i: f"deferred queue holds freed folio {q[i]}")
    order = st.f_order[qc]
    e.first(
        order < st.geom.pmd_order,
        pos,
        2,
        "deferred.order",
        lambda i: f"deferred queue holds order-{order[i]} folio {q[i]}",
    )
    e.first(
        ~st.f_deferred[qc],
        pos,
        3,
        "deferred.flag_mismatch",
        lambda i: f"folio {q[i]} queued but flag clear",
    )
    e.throw()


def _range_counts(x: Arr, lo: Arr, hi: Arr) -> Arr:
    """Per folio, how many of its pages ``[lo, hi)`` have ``x`` non-zero: a count per range
    for a few folios, else prefix sums over the pool."""
    if lo.size <= 16:
        return np.array([np.count_nonzero(x[a:b]) for a, b in zip(lo.tolist(), hi.tolist(),
                                                                     strict=True)], I64)
    cs = np.zeros(x.size + 1, I64)
    np.cumsum(x != 0, out=cs[1:])
    return cs[hi] - cs[lo]


def check_folios(st: FastState, c: Ctx, w: Walk, npins: Arr) -> None:
    g = st.geom
    nf = c.nf
    npool = c.npool
    stats_expected = {"pmd": [0, 0], "pud": [0, 0]}  # nr_anon, nr_anon_partially_mapped
    anon_mapped = thps = pud_thps = 0
    if nf > 1:
        leaves = np.bincount(w.leaf_fid, minlength=nf)
        ptes = np.bincount(w.pte_fid, minlength=nf)
        total = leaves + ptes
        cnt_page = np.bincount(w.pte_gp, minlength=npool)
        mapcount = st.p_mapcount[:npool]
        exclusive = st.p_exclusive[:npool]
        live = st.f_live[:nf].copy()
        live[0] = False
        order = st.f_order[:nf].astype(I64)
        nr = st.f_nr[:nf]
        # page ranges of the folio rows (checked inside the pool by _check_shapes; rows that
        # are no folio have nr 0)
        lo = np.minimum(np.maximum(st.f_base[:nf], 0), npool)
        hi = np.minimum(np.maximum(st.f_base[:nf] + nr, lo), npool)
        mismatch = mapcount != cnt_page - 1
        bad_pages = (_range_counts(mismatch, lo, hi) if np.count_nonzero(mismatch)
                     else np.zeros(nf, I64))
        # exclusive pages mapped by PTEs of >= 2 mms (only possible with >= 2 mms walked;
        # only exclusive pages are ever asked about): over the PTEs that map one
        multi: Arr | None = None
        xpos = np.zeros(0, I64)
        if w.mms_walked >= 2 and w.pte_gp.size:
            xpos = exclusive[w.pte_gp].nonzero()[0]
            multi = np.zeros(npool, bool)
            if xpos.size:
                gp = w.pte_gp[xpos]
                mmx = w.pte_mm(xpos)
                srt = np.lexsort((mmx, gp))
                g_sorted = gp[srt]
                m_sorted = mmx[srt]
                first = np.ones(g_sorted.size, bool)
                first[1:] = g_sorted[1:] != g_sorted[:-1]
                starts = first.nonzero()[0]
                lo_mm = m_sorted[starts]
                hi_mm = m_sorted[np.append(starts[1:], g_sorted.size) - 1]
                multi[g_sorted[starts[lo_mm != hi_mm]]] = True
        e = Earliest()
        fids = np.arange(nf, dtype=I64)
        queued = np.zeros(nf, bool)
        queued[np.array(st.deferred, I64)] = True
        _check_freed(st, e, fids, ~live, total, bad_pages, nf)
        small = live & (order == 0)
        _check_small(st, e, fids, small, ptes, bad_pages, npins, multi, nf)
        large = nz(live & (order != 0))
        pages_mapped = np.zeros(0, I64)
        if large.size:
            llo, lhi = lo[large], hi[large]
            pages_mapped = _range_counts(cnt_page, llo, lhi)
            # an exclusive page matters only to a folio with two entire mappings, or with
            # mappings in two mms
            if multi is not None or np.count_nonzero(leaves[large] >= 2):
                n_excl = _range_counts(exclusive, llo, lhi)
            else:
                n_excl = np.zeros(large.size, I64)
            _check_large(st, c, w, e, large, leaves, ptes, total, bad_pages, pages_mapped,
                         n_excl, npins, multi, xpos)
        # the deferred split queue, after each live folio's own checks
        partial = st.f_partial[:nf]
        deferred = st.f_deferred[:nf]
        e.first(
            live & partial & ~deferred,
            fids,
            RANKS - 2,
            "deferred.partially_mapped_not_queued",
            lambda i: f"folio {i} partially mapped but not on the deferred list",
        )
        e.first(
            live & deferred & ~queued,
            fids,
            RANKS - 1,
            "deferred.flag_mismatch",
            lambda i: f"folio {i} flagged deferred but not queued",
        )
        e.throw()
        # the counters the folios imply
        n_order = np.bincount(order[live], minlength=g.pud_order + 1)
        n_partial = np.bincount(order[live & partial], minlength=g.pud_order + 1)
        for row, o in (("pmd", g.pmd_order), ("pud", g.pud_order)):
            stats_expected[row] = [int(n_order[o]), int(n_partial[o])]
        anon_mapped = int((small & (ptes > 0)).sum())
        if large.size:
            lv = leaves[large]
            anon_mapped += int(np.where(lv > 0, nr[large], pages_mapped).sum())
            lo_ = order[large]
            thps = int(((lo_ == g.pmd_order) & (lv > 0)).sum()) * g.pmd_nr
            pud_thps = int(((lo_ == g.pud_order) & (lv > 0)).sum()) * g.pud_nr
    stats = st.stats
    for row in ("pmd", "pud"):
        _stat(stats, ("mthp", row, "nr_anon"), stats_expected[row][0], "stats.nr_anon")
        _stat(
            stats,
            ("mthp", row, "nr_anon_partially_mapped"),
            stats_expected[row][1],
            "stats.nr_anon_partially_mapped",
        )
    _stat(stats, ("node", "nr_anon_mapped"), anon_mapped, "stats.nr_anon_mapped")
    _stat(stats, ("node", "nr_anon_thps"), thps, "stats.nr_anon_thps")
    _stat(stats, ("node", "nr_anon_pud_thps"), pud_thps, "stats.nr_anon_pud_thps")


def _check_freed(
    st: FastState, e: Earliest, fids: Arr, freed: Arr, total: Arr, bad_pages: Arr, nf: int
) -> None:
    """free_tail_page_prepare() / page_expected_state(): a freed folio is back at rest."""
    freed = freed.copy()
    freed[0] = False
    ref = st.f_ref[:nf]
    entire = st.f_entire[:nf]
    large = st.f_large[:nf]
    npm = st.f_npm[:nf]
    pin = st.f_pin[:nf]
    slots = (st.f_mmid[:nf] != 0).any(axis=1) | (st.f_mmc[:nf] != -1).any(axis=1)
    shared = st.f_shared[:nf]
    deferred = st.f_deferred[:nf]
    partial = st.f_partial[:nf]
    swapcache = st.f_swapcache[:nf]
    checks: list[tuple[Arr, str, Callable[[int], str]]] = [
        (total > 0, "freed.mapped", lambda i: f"freed folio {i} is still mapped"),
        (ref != 0, "freed.refcount", lambda i: f"freed folio {i} refcount {ref[i]}"),
        (bad_pages > 0, "freed.mapcount", lambda i: f"freed folio {i} has a page _mapcount != -1"),
        (
            (entire != -1) | (large != -1),
            "freed.large_counters",
            lambda i: f"freed folio {i} entire {entire[i]} large {large[i]}",
        ),
        (npm != 0, "freed.nr_pages_mapped", lambda i: f"freed folio {i} npm {npm[i]:#x}"),
        (pin != 0, "freed.pincount", lambda i: f"freed folio {i} pincount {pin[i]}"),
        (
            slots | shared,
            "freed.mm_id",
            lambda i: f"freed folio {i} slots {st.f_mmid[i].tolist()} "
            f"{st.f_mmc[i].tolist()} shared {bool(shared[i])}",
        ),
        (deferred, "freed.deferred", lambda i: f"freed folio {i} on the deferred list"),
        (partial, "freed.partially_mapped", lambda i: f"freed folio {i} still partially mapped"),
        (swapcache, "freed.swapcache", lambda i: f"freed folio {i} still in the swap cache"),
    ]
    bad = freed & np.logical_or.reduce([mask for mask, _, _ in checks])
    if not np.count_nonzero(bad):
        return
    for rank, (mask, name, describe) in enumerate(checks):
        e.first(bad & mask, fids, rank, name, describe)


def _check_small(
    st: FastState,
    e: Earliest,
    fids: Arr,
    small: Arr,
    mapped: Arr,
    bad_pages: Arr,
    npins: Arr,
    multi: Arr | None,
    nf: int,
) -> None:
    """An order-0 folio: _mapcount, the large-folio fields at rest, refcount, exclusivity.

    As in the reference, the detailed checks run only for a folio off the common fast path
    (mapped, refcount == mappings, unpinned, large fields at rest, not shared-exclusive).
    """
    ref = st.f_ref[:nf]
    pin = st.f_pin[:nf]
    pins = npins[:nf]
    large_fields = (
        (st.f_entire[:nf] != -1)
        | (st.f_large[:nf] != -1)
        | (st.f_npm[:nf] != 0)
        | st.f_shared[:nf]
        | (st.f_mmid[:nf] != 0).any(axis=1)
        | (st.f_mmc[:nf] != -1).any(axis=1)
    )
    excl = np.take(st.p_exclusive, st.f_base[:nf], mode="clip")
    shared_excl = np.zeros(nf, bool)
    if multi is not None:
        shared_excl = excl & np.take(multi, st.f_base[:nf], mode="clip")
    off_path = small & (
        (mapped <= 0)
        | (ref != mapped)
        | (bad_pages > 0)
        | (pins > 0)
        | (pin != 0)
        | large_fields
        | shared_excl
    )
    if not np.count_nonzero(off_path):
        return
    expected = mapped + GUP_PIN_COUNTING_BIAS * pins + st.f_swapcache[:nf]
    checks: list[tuple[Arr, str, Callable[[int], str]]] = [
        (
            bad_pages > 0,
            "mapcount.small",
            lambda i: f"folio {i} _mapcount {st.p_mapcount[st.f_base[i]]}, {mapped[i]} PTEs map "
            "it",
        ),
        (
            large_fields,
            "mapcount.small_large_fields",
            lambda i: f"order-0 folio {i} has large counters set",
        ),
        (pin != 0, "pincount.small", lambda i: f"order-0 folio {i} pincount {pin[i]}"),
        (ref <= 0, "refcount.live_zero", lambda i: f"live folio {i} refcount {ref[i]}"),
        (
            ref != expected,
            "refcount",
            lambda i: f"folio {i} refcount {ref[i]}, expected {expected[i]} ({mapped[i]} "
            f"mapped, {pins[i]} pins, swapcache {bool(st.f_swapcache[i])})",
        ),
        (
            shared_excl,
            "anon_exclusive.shared_mms",
            lambda i: f"folio {i} mapped by several mms, exclusive",
        ),
    ]
    for rank, (mask, name, describe) in enumerate(checks):
        e.first(off_path & mask, fids, rank, name, describe)


def _check_large(
    st: FastState,
    c: Ctx,
    w: Walk,
    e: Earliest,
    large: Arr,
    leaves_all: Arr,
    ptes_all: Arr,
    total_all: Arr,
    bad_pages_all: Arr,
    pages_mapped: Arr,
    n_excl: Arr,
    npins_all: Arr,
    multi: Arr | None,
    xpos: Arr,
) -> None:
    """PMD- and PUD-order folios (rows ``large``): mapcounts, refcount, mm-id slots (I5),
    PageAnonExclusive (I8)."""
    L = large.size
    nmm = c.nmm
    leaves = leaves_all[large]
    ptes = ptes_all[large]
    total = total_all[large]
    npins = npins_all[large]
    nr = st.f_nr[large]
    ref = st.f_ref[large]
    entire = st.f_entire[large]
    lmc = st.f_large[large]
    npm = st.f_npm[large]
    pin = st.f_pin[large]
    shared = st.f_shared[large]
    swapcache = st.f_swapcache[large]
    mmid = st.f_mmid[large]
    mmc = st.f_mmc[large]
    # mappings per (folio, mm): leaves, and each mm's run of PTEs counted per folio
    if w.mms_walked >= 2:
        compact = np.full(c.nf, -1, I64)
        compact[large] = np.arange(L, dtype=I64)
        lf = compact[w.leaf_fid]
        lsel = lf >= 0
        per_mm = np.zeros((L, nmm), I64)
        np.add.at(per_mm, (lf[lsel], w.leaf_mm[lsel]), np.ones(int(np.count_nonzero(lsel)),
                                                                   I64))
        for mm_id, a, b in w.pte_mm_segments():
            per_mm[:, mm_id] += np.bincount(w.pte_fid[a:b], minlength=c.nf)[large]
    else:
        per_mm = np.zeros((L, max(nmm, 1)), I64)
        walked = [mm.id for mm in st.mms if mm.alive]
        if walked:
            per_mm[:, walked[0]] = total
    npm_expected = pages_mapped + np.where(leaves > 0, ENTIRELY_MAPPED, 0)
    swap_refs = np.where(swapcache, nr, 0)
    ref_expected = total + npins + swap_refs
    checks: list[tuple[Arr, str, Callable[[int], str]]] = [
        (
            bad_pages_all[large] > 0,
            "mapcount.page",
            lambda i: f"folio {large[i]}: a page _mapcount disagrees with the PTEs mapping it",
        ),
        (
            entire + 1 != leaves,
            "mapcount.entire",
            lambda i: f"folio {large[i]} entire {entire[i]}, {leaves[i]} leaves map it",
        ),
        (
            lmc + 1 != total,
            "mapcount.large",
            lambda i: f"folio {large[i]} large {lmc[i]}, {leaves[i]} leaves + {ptes[i]} PTEs "
            "map it",
        ),
        (
            npm != npm_expected,
            "mapcount.nr_pages_mapped",
            lambda i: f"folio {large[i]} _nr_pages_mapped {npm[i]:#x}, expected "
            f"{npm_expected[i]:#x}",
        ),
        (
            pin != npins,
            "pincount",
            lambda i: f"folio {large[i]} _pincount {pin[i]}, {npins[i]} pin records",
        ),
        (ref <= 0, "refcount.live_zero", lambda i: f"live folio {large[i]} refcount {ref[i]}"),
        (
            ref != ref_expected,
            "refcount",
            lambda i: f"folio {large[i]} refcount {ref[i]}, expected {ref_expected[i]} "
            f"({total[i]} mappings, {npins[i]} pins, swapcache {bool(swapcache[i])})",
        ),
    ]
    # I5: the two mm-id slots and the sticky SHARED bit
    occupied = np.zeros(L, I64)
    rows = np.arange(L)
    for s in (0, 1):
        mid = mmid[:, s]
        mc = mmc[:, s]
        used = mid != 0
        m = mid - 1
        known = (m >= 0) & (m < nmm)
        mclip = np.where(known, m, nmm)
        ok_mm = known & c.alive[mclip]
        have = per_mm[rows, np.where(ok_mm, m, 0)]
        checks += _slot_checks(large, mmid, mmc, s, used, mc, ok_mm, have)
        occupied += np.where(used, mc + 1, 0)
    nmms = (per_mm > 0).sum(axis=1)
    unshared_ok = (mmc[:, 0] == total - 1) | (mmc[:, 1] == total - 1)
    mapped = total > 0
    checks += [
        (
            (mmid[:, 0] != 0) & (mmid[:, 0] == mmid[:, 1]),
            "mm_id.duplicate",
            lambda i: f"folio {large[i]} both slots hold mm id {mmid[i, 0]}",
        ),
        (
            occupied > total,
            "mm_id.sum",
            lambda i: f"folio {large[i]} slot counts sum {occupied[i]} > {total[i]} mappings",
        ),
        (
            ~mapped & ((mmid != 0).any(axis=1) | shared),
            "mm_id.unmapped",
            lambda i: f"unmapped folio {large[i]} slots {mmid[i].tolist()} {mmc[i].tolist()} "
            f"shared {bool(shared[i])}",
        ),
        (
            mapped & (nmms >= 2) & ~shared,
            "mm_id.shared_missing",
            lambda i: f"folio {large[i]} mapped by {nmms[i]} mms, SHARED clear",
        ),
        (
            mapped & ~shared & ~unshared_ok,
            "mm_id.unshared_count",
            lambda i: f"folio {large[i]} SHARED clear but no slot holds all {total[i]} mappings "
            f"({mmid[i].tolist()} {mmc[i].tolist()})",
        ),
    ]
    # I8: no exclusive page reachable from two mms or two entire mappings
    excl_mapped = mapped & (n_excl > 0)
    bad_excl = np.zeros(L, bool)
    if multi is not None and xpos.size:
        # over the PTEs that map an exclusive page
        compact = np.full(c.nf, -1, I64)
        compact[large] = np.arange(L, dtype=I64)
        pf = compact[w.pte_fid[xpos]]
        sel = nz(pf >= 0)
        gp = w.pte_gp[xpos[sel]]
        pfs = pf[sel]
        # the mm of the one leaf (when there is exactly one)
        lf = compact[w.leaf_fid]
        lsel = lf >= 0
        leaf_mm = np.bincount(lf[lsel], weights=w.leaf_mm[lsel], minlength=L).astype(I64)
        bad_e = multi[gp] | ((leaves[pfs] >= 1) & (w.pte_mm(xpos[sel]) != leaf_mm[pfs]))
        bad_excl = np.bincount(pfs[bad_e], minlength=L) > 0
    checks += [
        (
            excl_mapped & (leaves >= 2),
            "anon_exclusive.entire_shared",
            lambda i: f"folio {large[i]} has {leaves[i]} entire mappings and an exclusive page",
        ),
        (
            excl_mapped & (ptes > 0) & bad_excl,
            "anon_exclusive.shared_mms",
            lambda i: f"folio {large[i]}: a page is exclusive but mapped by several mms",
        ),
    ]
    if not np.count_nonzero(np.logical_or.reduce([mask for mask, _, _ in checks])):
        return
    # ranks stay below the two deferred-queue checks (RANKS - 2, RANKS - 1)
    for rank, (mask, name, describe) in enumerate(checks):
        e.first(mask, large, rank, name, describe)


def _slot_checks(
    large: Arr, mmid: Arr, mmc: Arr, s: int, used: Arr, mc: Arr, ok_mm: Arr, have: Arr
) -> list[tuple[Arr, str, Callable[[int], str]]]:
    """I5 for slot ``s``: empty iff its count is -1, a live mm, at most that mm's mappings."""

    def empty(i: int) -> str:
        return f"folio {large[i]} slot {s} id {mmid[i, s]} mapcount {mmc[i, s]}"

    def dead(i: int) -> str:
        return f"folio {large[i]} slot {s} holds mm id {mmid[i, s]} (no live mm)"

    def count(i: int) -> str:
        return (
            f"folio {large[i]} slot {s} (mm {mmid[i, s] - 1}) count {mmc[i, s] + 1}, "
            f"mm maps it {have[i]} times"
        )

    return [
        (used != (mc != -1), "mm_id.slot_empty", empty),
        (used & ~ok_mm, "mm_id.dead_mm", dead),
        (used & ((mc + 1 < 0) | (mc + 1 > have)), "mm_id.slot_count", count),
    ]


def _stat(stats: object, path: tuple[str, ...], expected: int, name: str) -> None:
    v: Any = stats
    for k in path:
        if not isinstance(v, dict) or k not in v:
            raise InvariantViolation("stats.missing", f"stats has no {'.'.join(path)}")
        v = v[k]
    if v != expected:
        raise InvariantViolation(name, f"{'.'.join(path)} is {v!r}, folios say {expected}")
