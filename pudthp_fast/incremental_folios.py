"""The folio phase of an incremental check (``pudthp_fast.incremental``).

The folios to look at are those marked, those a changed entry names (as it was or as it
is), and those whose pins or place on the deferred queue changed.  Each is checked as
``_check_shapes()`` / ``_check_folios()`` of the full checker check it, with the mappings
read from the aggregates instead of a walk, and its pages scanned whole; its share of the
node and mTHP counters is replaced.  A folio that changed identity (live, size, pages,
order) must be mapped only by changed entries: the others were not looked at.

As the entry phase: Python over a few dozen folios, numpy beyond; the pages of a big folio
(a PUD folio at x86_64) are always scanned as slices of the pool.
"""

from __future__ import annotations

import numpy as np

from pudthp_fast.incremental import I64, NCONTRIB, Pass, need
from pudthp_fast.incremental_entries import Changes, changed_folios, redone
from pudthp_fast.state import LEAF, PTE, Arr
from pudthp_ref.spec import ENTIRELY_MAPPED, GUP_PIN_COUNTING_BIAS

_BIG = 4096  # pages from which a folio's pages are scanned as slices


def folio_phase(p: Pass, df: Arr, ident: Arr, ch: Changes) -> None:
    st, inc = p.st, p.inc
    extra: set[int] = set()
    if st.pins != inc.m_pins:
        now, then = st.pins, inc.m_pins
        extra |= {fp[0] for pid, fp in now.items() if then.get(pid) != fp}
        extra |= {fp[0] for pid, fp in then.items() if now.get(pid) != fp}
    if st.deferred != inc.m_deferred:
        extra |= set(st.deferred) ^ set(inc.m_deferred)
    fids = changed_folios(ch)
    nf = p.nf
    if ident.size:
        # every entry that maps a folio which changed identity was among the changed ones,
        # and the folio is remembered as it is now (the others are as they were)
        if ch.scalar and ident.size <= p.scalar_max:
            redo: dict[int, int] = {}
            for e in ch.new:
                if e[2] == LEAF or e[2] == PTE:
                    redo[e[3]] = redo.get(e[3], 0) + 1
            for f in ident.tolist():
                need(inc.leaves[f] + inc.ptes[f] == redo.get(f, 0))
        else:
            need((inc.leaves[ident] + inc.ptes[ident] == redone(ch, ident)).all())
        inc.mf_live[ident] = st.f_live[ident]
        inc.mf_nr[ident] = st.f_nr[ident]
        inc.mf_base[ident] = st.f_base[ident]
        inc.mf_order[ident] = st.f_order[ident]
    if isinstance(fids, list) and len(fids) + df.size + len(extra) <= p.scalar_max:
        fl = sorted({f for f in (*df.tolist(), *fids, *extra) if 1 <= f < nf})
        _scalar(p, fl)
        _deferred_queue(p, fl)
        return
    mark = np.zeros(nf + 1, bool)
    mark[df] = True
    mark[np.clip(np.asarray(fids, I64), 0, nf)] = True
    mark[[min(max(f, 0), nf) for f in extra]] = True
    mark[0] = mark[nf] = False
    F = mark.nonzero()[0]
    if F.size:
        if F.size <= p.scalar_max:
            _scalar(p, F.tolist())
        else:
            _vector(p, F)
    _deferred_queue(p, F.tolist())


def _deferred_queue(p: Pass, F: list[int]) -> None:
    """_check_deferred_queue(), when the queue or a queued folio changed."""
    st = p.st
    dq = st.deferred
    if not dq:
        return
    if dq == p.inc.m_deferred and not (F and set(dq).intersection(F)):
        return
    need(len(set(dq)) == len(dq))
    nf = p.nf
    pmd_order = p.g.pmd_order
    for f in dq:
        need(1 <= f < nf and st.f_live[f] and st.f_order[f] >= pmd_order and st.f_deferred[f])


def _pin_counts(p: Pass) -> dict[int, int]:
    out: dict[int, int] = {}
    for fid, _page in p.st.pins.values():
        out[fid] = out.get(fid, 0) + 1
    return out


def page_scan_small(p: Pass, lo: int, hi: int, leaves: int, leaf_mm: int
                    ) -> tuple[int, int, int, bool, bool]:
    """``page_scan`` of a few pages, in Python."""
    st, inc = p.st, p.inc
    emc = inc.emc[lo:hi].tolist()
    ex = st.p_exclusive[lo:hi].tolist()
    bad = sum(1 for a, b in zip(st.p_mapcount[lo:hi].tolist(), emc, strict=True) if a != b)
    mapped = sum(1 for e in emc if e >= 0)
    n_excl = sum(ex)
    wbad = any(w and not x for w, x in zip(inc.wcnt[lo:hi].tolist(), ex, strict=True))
    bad8 = False
    if n_excl and mapped and leaves <= 1:
        ms = inc.msum[lo:hi].tolist()
        mq = inc.msq[lo:hi].tolist()
        for j, x in enumerate(ex):
            c = emc[j] + 1
            if not x or c < (2 if leaves == 0 else 1):
                continue
            if leaves == 0:
                bad8 = c * mq[j] != ms[j] * ms[j]
            else:
                bad8 = ms[j] != c * leaf_mm or mq[j] != c * leaf_mm * leaf_mm
            if bad8:
                break
    return bad, mapped, n_excl, wbad, bad8


def page_scan(p: Pass, lo: int, hi: int, leaves: int, leaf_mm: int
              ) -> tuple[int, int, int, bool, bool]:
    """The pages ``[lo, hi)`` of one folio, as slices: pages whose _mapcount disagrees with
    the PTEs mapping them, pages mapped, exclusive pages, whether a writable PTE maps a page
    that is not exclusive, and whether an exclusive page is mapped by PTEs of another mm
    than the folio's one leaf, or of two mms when it has none (I8)."""
    st, inc = p.st, p.inc
    emc = inc.emc[lo:hi]
    excl = st.p_exclusive[lo:hi]
    bad = int(np.count_nonzero(st.p_mapcount[lo:hi] != emc))
    mapped = int(np.count_nonzero(emc >= 0))
    n_excl = int(np.count_nonzero(excl))
    wbad = bool(np.count_nonzero((inc.wcnt[lo:hi] != 0) & ~excl))
    bad8 = False
    if n_excl and mapped and leaves <= 1:
        # with no leaf, a page mapped by one PTE is mapped by one mm
        sel = (excl & (emc >= (1 if leaves == 0 else 0))).nonzero()[0]
        if sel.size:
            c = emc[sel] + 1
            s = inc.msum[lo:hi][sel]
            q = inc.msq[lo:hi][sel]
            if leaves == 0:
                bad8 = bool(np.count_nonzero(c * q != s * s))
            else:
                bad8 = bool(np.count_nonzero((s != c * leaf_mm) | (q != c * leaf_mm * leaf_mm)))
    return bad, mapped, n_excl, wbad, bad8


# --------------------------------------------------------------------------------------
# Python loops
# --------------------------------------------------------------------------------------


def _scalar(p: Pass, F: list[int]) -> None:
    st, inc = p.st, p.inc
    g = p.g
    npool = p.npool
    pmd_order, pud_order = g.pmd_order, g.pud_order
    npins = _pin_counts(p)
    queued: set[int] | None = None
    alive = p.alive_list
    nmm = p.nmm
    dtotals = [0] * NCONTRIB
    for f in F:
        live = bool(st.f_live[f])
        order = int(st.f_order[f])
        nr = int(st.f_nr[f])
        base = int(st.f_base[f])
        if live or nr:
            need(order in (0, pmd_order, pud_order) and nr == 1 << order)
            need(base >= 0 and base + nr <= npool)
        leaves = int(inc.leaves[f])
        ptes = int(inc.ptes[f])
        total = leaves + ptes
        need(live or total == 0)
        lo = min(max(base, 0), npool)
        hi = min(max(base + nr, lo), npool)
        if hi - lo == 1:
            c = int(inc.emc[lo]) + 1
            bad_pages = int(st.p_mapcount[lo] != c - 1)
            pages_mapped = int(c > 0)
            n_excl = int(st.p_exclusive[lo])
            need(not (inc.wcnt[lo] and not n_excl))
            # the sole page's mms, all one unless c * msq != msum^2
            multi = c > 0 and c * int(inc.msq[lo]) != int(inc.msum[lo]) ** 2
            bad8 = bool(n_excl) and c > 0 and (
                multi if leaves == 0 else leaves == 1 and (
                    int(inc.msum[lo]) != c * int(inc.leaf_mm[f])
                    or int(inc.msq[lo]) != c * int(inc.leaf_mm[f]) ** 2))
        elif hi > lo:
            scan = page_scan_small if hi - lo <= 64 else page_scan
            bad_pages, pages_mapped, n_excl, wbad, bad8 = scan(
                p, lo, hi, leaves, int(inc.leaf_mm[f]))
            need(not wbad)
            multi = False
        else:
            bad_pages = pages_mapped = n_excl = 0
            bad8 = multi = False
        if inc.wleaf[f] > 0:
            need(st.p_exclusive[base])
        pins = npins.get(f, 0)
        if not live:
            need(bad_pages == 0 and st.f_ref[f] == 0 and st.f_entire[f] == -1
                 and st.f_large[f] == -1 and st.f_npm[f] == 0 and st.f_pin[f] == 0)
            need(st.f_mmid[f].tolist() == [0, 0] and st.f_mmc[f].tolist() == [-1, -1])
            need(not (st.f_shared[f] or st.f_deferred[f] or st.f_partial[f]
                      or st.f_swapcache[f]))
            contrib = (0,) * NCONTRIB
        else:
            if order == 0:
                _small(p, f, ptes, bad_pages, pins, bool(n_excl) and multi)
            else:
                _large(p, f, leaves, ptes, nr, bad_pages, pages_mapped, n_excl, bad8, pins,
                       alive, nmm)
            partial = bool(st.f_partial[f])
            deferred = bool(st.f_deferred[f])
            need(not partial or deferred)
            if deferred:
                if queued is None:
                    queued = set(st.deferred)
                need(f in queued)
            is_pmd = order == pmd_order
            is_pud = order == pud_order
            if order == 0:
                mapped_pages = int(ptes > 0)
            else:
                mapped_pages = nr if leaves > 0 else pages_mapped
            contrib = (
                int(is_pmd), int(is_pud), int(is_pmd and partial), int(is_pud and partial),
                mapped_pages,
                g.pmd_nr if is_pmd and leaves > 0 else 0,
                g.pud_nr if is_pud and leaves > 0 else 0,
            )
        old = inc.contrib[f].tolist()
        if old != list(contrib):
            for k in range(NCONTRIB):
                dtotals[k] += contrib[k] - old[k]
            inc.contrib[f] = contrib
    if any(dtotals):
        inc.totals += np.array(dtotals, I64)


def _small(p: Pass, f: int, mapped: int, bad_pages: int, pins: int, shared_excl: bool
           ) -> None:
    """_check_small(), with its fast path: only a folio off it is checked."""
    st = p.st
    ref = int(st.f_ref[f])
    pin = int(st.f_pin[f])
    large_fields = (
        st.f_entire[f] != -1 or st.f_large[f] != -1 or st.f_npm[f] != 0 or st.f_shared[f]
        or st.f_mmid[f].tolist() != [0, 0] or st.f_mmc[f].tolist() != [-1, -1]
    )
    if not (mapped <= 0 or ref != mapped or bad_pages or pins or pin or large_fields
            or shared_excl):
        return
    expected = mapped + GUP_PIN_COUNTING_BIAS * pins + int(st.f_swapcache[f])
    need(not (bad_pages or large_fields or pin or ref <= 0 or ref != expected
              or shared_excl))


def _large(p: Pass, f: int, leaves: int, ptes: int, nr: int, bad_pages: int,
           pages_mapped: int, n_excl: int, bad8: bool, pins: int, alive: list[bool],
           nmm: int) -> None:
    """_check_large(): mapcounts, refcount, the mm-id slots (I5), AnonExclusive (I8)."""
    st, inc = p.st, p.inc
    total = leaves + ptes
    ref = int(st.f_ref[f])
    need(bad_pages == 0 and st.f_entire[f] + 1 == leaves and st.f_large[f] + 1 == total)
    need(st.f_npm[f] == pages_mapped + (ENTIRELY_MAPPED if leaves else 0))
    need(st.f_pin[f] == pins and ref > 0)
    need(ref == total + pins + (nr if st.f_swapcache[f] else 0))
    mmid = st.f_mmid[f].tolist()
    mmc = st.f_mmc[f].tolist()
    shared = bool(st.f_shared[f])
    per_mm = inc.per_mm[:nmm, f].tolist()
    occupied = 0
    for s in (0, 1):
        mid, mc = mmid[s], mmc[s]
        need((mid == 0) == (mc == -1))
        if mid == 0:
            continue
        m = mid - 1
        need(0 <= m < nmm and alive[m])
        need(0 <= mc + 1 <= per_mm[m])
        occupied += mc + 1
    need(not (mmid[0] != 0 and mmid[0] == mmid[1]))
    need(occupied <= total)
    if total == 0:
        need(mmid == [0, 0] and not shared)
        return
    nmms = sum(1 for c in per_mm if c > 0)
    need(shared or nmms < 2)
    need(shared or total - 1 in mmc)
    if n_excl:
        need(leaves < 2 and not (ptes > 0 and bad8))


# --------------------------------------------------------------------------------------
# numpy
# --------------------------------------------------------------------------------------


def _vector(p: Pass, F: Arr) -> None:
    st, inc = p.st, p.inc
    g = p.g
    npool = p.npool
    live = st.f_live[F]
    order = st.f_order[F].astype(I64)
    nr = st.f_nr[F]
    base = st.f_base[F]
    is_folio = live | (nr != 0)
    ok_order = (order == 0) | (order == g.pmd_order) | (order == g.pud_order)
    need(not np.count_nonzero(is_folio & ~ok_order))
    need(not np.count_nonzero(is_folio & (nr != np.left_shift(1, np.where(ok_order, order, 0)))))
    need(not np.count_nonzero(is_folio & ((base < 0) | (base + nr > npool))))
    leaves = inc.leaves[F]
    ptes = inc.ptes[F]
    total = leaves + ptes
    need(not np.count_nonzero(~live & (total > 0)))
    leaf_mm = inc.leaf_mm[F]
    lo = np.clip(base, 0, npool)
    hi = np.clip(base + nr, lo, npool)
    n = hi - lo
    bad_pages = np.zeros(F.size, I64)
    pages_mapped = np.zeros(F.size, I64)
    n_excl = np.zeros(F.size, I64)
    bad8 = np.zeros(F.size, bool)
    big = n >= _BIG
    for j in big.nonzero()[0].tolist():
        b, m, x, wbad, e8 = page_scan(p, int(lo[j]), int(hi[j]), int(leaves[j]),
                                      int(leaf_mm[j]))
        need(not wbad)
        bad_pages[j], pages_mapped[j], n_excl[j], bad8[j] = b, m, x, e8
    rest = (~big & (n > 0)).nonzero()[0]
    if rest.size:
        nn = n[rest]
        seg = np.repeat(rest, nn)
        pages = np.arange(int(nn.sum()), dtype=I64) + np.repeat(lo[rest] - (np.cumsum(nn) - nn),
                                                                nn)
        emc = inc.emc[pages]
        excl = st.p_exclusive[pages]
        mapped_pg = emc >= 0
        need(not np.count_nonzero((inc.wcnt[pages] != 0) & ~excl))
        bad_pages += np.bincount(seg[st.p_mapcount[pages] != emc], minlength=F.size)
        pages_mapped += np.bincount(seg[mapped_pg], minlength=F.size)
        n_excl += np.bincount(seg[excl], minlength=F.size)
        x = (excl & mapped_pg).nonzero()[0]
        if x.size:
            xs = seg[x]
            c = emc[x] + 1
            s = inc.msum[pages[x]]
            q = inc.msq[pages[x]]
            L = leaves[xs]
            Lmm = leaf_mm[xs]
            multi = c * q != s * s
            other = (s != c * Lmm) | (q != c * Lmm * Lmm)
            e8 = ((L == 0) & multi) | ((L == 1) & other)
            bad8 |= np.bincount(xs[e8], minlength=F.size) > 0
    wl = inc.wleaf[F] > 0
    if np.count_nonzero(wl):
        need(st.p_exclusive[base[wl]].all())
    fr = ~live
    if np.count_nonzero(fr):
        _freed_vector(p, F[fr], bad_pages[fr])
    npins = _npins(p, F)
    small = live & (order == 0)
    if np.count_nonzero(small):
        c = inc.emc[base[small]] + 1
        multi = (c > 0) & (c * inc.msq[base[small]] != inc.msum[base[small]] ** 2)
        _small_vector(p, F[small], ptes[small], bad_pages[small], npins[small],
                      st.p_exclusive[base[small]] & multi)
    large = live & (order != 0)
    if np.count_nonzero(large):
        _large_vector(p, F[large], leaves[large], ptes[large], bad_pages[large],
                      pages_mapped[large], n_excl[large], bad8[large], npins[large])
    partial = st.f_partial[F]
    deferred = st.f_deferred[F]
    need(not np.count_nonzero(live & partial & ~deferred))
    if np.count_nonzero(live & deferred):
        queued = np.isin(F, np.array(st.deferred, I64))
        need(not np.count_nonzero(live & deferred & ~queued))
    c = np.zeros((F.size, NCONTRIB), I64)
    pmd_o = live & (order == g.pmd_order)
    pud_o = live & (order == g.pud_order)
    c[:, 0] = pmd_o
    c[:, 1] = pud_o
    c[:, 2] = pmd_o & partial
    c[:, 3] = pud_o & partial
    c[:, 4] = np.where(small, ptes > 0, np.where(large, np.where(leaves > 0, nr, pages_mapped),
                                                 0))
    c[:, 5] = np.where(pmd_o & (leaves > 0), g.pmd_nr, 0)
    c[:, 6] = np.where(pud_o & (leaves > 0), g.pud_nr, 0)
    inc.totals += c.sum(axis=0) - inc.contrib[F].sum(axis=0)
    inc.contrib[F] = c


def _npins(p: Pass, F: Arr) -> Arr:
    out = np.zeros(F.size, I64)
    pins = p.st.pins
    if pins:
        fids = np.array([fp[0] for fp in pins.values()], I64)
        pos = np.searchsorted(F, fids)
        hit = (pos < F.size) & (F[np.minimum(pos, F.size - 1)] == fids)
        np.add.at(out, pos[hit], np.ones(int(np.count_nonzero(hit)), I64))
    return out


def _freed_vector(p: Pass, F: Arr, bad_pages: Arr) -> None:
    """_check_freed(): back at rest."""
    st = p.st
    need(not np.count_nonzero(st.f_ref[F]))
    need(not np.count_nonzero(bad_pages))
    need(not np.count_nonzero((st.f_entire[F] != -1) | (st.f_large[F] != -1)))
    need(not np.count_nonzero(st.f_npm[F] | st.f_pin[F]))
    need(not np.count_nonzero(st.f_mmid[F]))
    need((st.f_mmc[F] == -1).all())
    need(not np.count_nonzero(st.f_shared[F] | st.f_deferred[F] | st.f_partial[F]
                              | st.f_swapcache[F]))


def _small_vector(p: Pass, F: Arr, mapped: Arr, bad_pages: Arr, pins: Arr, shared_excl: Arr
                  ) -> None:
    st = p.st
    ref = st.f_ref[F]
    pin = st.f_pin[F]
    large_fields = (
        (st.f_entire[F] != -1)
        | (st.f_large[F] != -1)
        | (st.f_npm[F] != 0)
        | st.f_shared[F]
        | (st.f_mmid[F] != 0).any(axis=1)
        | (st.f_mmc[F] != -1).any(axis=1)
    )
    off = ((mapped <= 0) | (ref != mapped) | (bad_pages > 0) | (pins > 0) | (pin != 0)
           | large_fields | shared_excl)
    if not np.count_nonzero(off):
        return
    expected = mapped + GUP_PIN_COUNTING_BIAS * pins + st.f_swapcache[F]
    bad = ((bad_pages > 0) | large_fields | (pin != 0) | (ref <= 0) | (ref != expected)
           | shared_excl)
    need(not np.count_nonzero(off & bad))


def _large_vector(p: Pass, F: Arr, leaves: Arr, ptes: Arr, bad_pages: Arr,
                  pages_mapped: Arr, n_excl: Arr, bad8: Arr, npins: Arr) -> None:
    st, inc = p.st, p.inc
    nmm = p.nmm
    total = leaves + ptes
    nr = st.f_nr[F]
    ref = st.f_ref[F]
    need(not np.count_nonzero(bad_pages))
    need((st.f_entire[F] + 1 == leaves).all())
    need((st.f_large[F] + 1 == total).all())
    need((st.f_npm[F] == pages_mapped + np.where(leaves > 0, ENTIRELY_MAPPED, 0)).all())
    need((st.f_pin[F] == npins).all())
    need(not np.count_nonzero(ref <= 0))
    need((ref == total + npins + np.where(st.f_swapcache[F], nr, 0)).all())
    mmid = st.f_mmid[F]
    mmc = st.f_mmc[F]
    shared = st.f_shared[F]
    per_mm = inc.per_mm[:nmm, F]
    cols = np.arange(F.size)
    occupied = np.zeros(F.size, I64)
    for s in (0, 1):
        mid = mmid[:, s]
        mc = mmc[:, s]
        used = mid != 0
        need(not np.count_nonzero(used != (mc != -1)))
        m = mid - 1
        known = (m >= 0) & (m < nmm)
        ok_mm = known & p.alive[np.where(known, m, nmm)]
        need(not np.count_nonzero(used & ~ok_mm))
        have = per_mm[np.where(ok_mm, m, 0), cols]
        need(not np.count_nonzero(used & ((mc + 1 < 0) | (mc + 1 > have))))
        occupied += np.where(used, mc + 1, 0)
    need(not np.count_nonzero((mmid[:, 0] != 0) & (mmid[:, 0] == mmid[:, 1])))
    need(not np.count_nonzero(occupied > total))
    mapped = total > 0
    need(not np.count_nonzero(~mapped & ((mmid != 0).any(axis=1) | shared)))
    nmms = (per_mm > 0).sum(axis=0)
    need(not np.count_nonzero(mapped & (nmms >= 2) & ~shared))
    unshared_ok = (mmc[:, 0] == total - 1) | (mmc[:, 1] == total - 1)
    need(not np.count_nonzero(mapped & ~shared & ~unshared_ok))
    excl_mapped = mapped & (n_excl > 0)
    need(not np.count_nonzero(excl_mapped & (leaves >= 2)))
    need(not np.count_nonzero(excl_mapped & (ptes > 0) & bad8))
