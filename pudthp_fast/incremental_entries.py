"""The entry phase of an incremental check (``pudthp_fast.incremental``): the entries of the
marked tables that changed since the last check, how they were and how they are.

Each changed entry is checked as ``_walk_mm()`` of the full checker checks it (kind for its
level, the table it names, the VMA it lies in, the folio and page it maps, its write bit),
then taken out of the aggregates as it was and put back as it is.  Tables whose naming or
deposit chain may have changed are checked for being reached exactly once, and the tables
over a range where a VMA changed have every entry checked again.

Two equal implementations: Python loops over entry tuples for a few dozen entries (the
common op at small geometry, where numpy's fixed cost per call would dominate), numpy over
(tables x P) blocks beyond that (a PUD split, a fork, an exit at x86_64).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import numpy as np

from pudthp_fast.incremental import I64, Pass, Suspect, need
from pudthp_fast.state import (
    LEAF,
    LV_PMD,
    LV_PTE,
    LV_PUD,
    NONE,
    PTE,
    ST_LIVE,
    SWAP,
    TABLE,
    ZERO,
    Arr,
    W,
    add_at,
    unique,
)

I32 = np.int32

# kinds allowed per level, indexed [level, kind]
KIND_OK = np.zeros((3, 256), bool)
KIND_OK[LV_PUD, [TABLE, LEAF]] = True
KIND_OK[LV_PMD, [TABLE, LEAF, ZERO]] = True
KIND_OK[LV_PTE, [ZERO, PTE, SWAP]] = True
_KIND_SETS = ({TABLE, LEAF}, {TABLE, LEAF, ZERO}, {ZERO, PTE, SWAP})

Entry = tuple[int, int, int, int, int, int, int, int]
"""A changed entry: table, index, kind, id, page, writable (0/1), table level, table mm."""


class Group:
    """Rows of tables of one kind of level, PTE (``pte``) or PUD/PMD (``tabs`` x P entry
    arrays), and which of their entries to take (``M``)."""

    __slots__ = ("B", "G", "I", "K", "M", "lv", "mm", "pte", "rows_of", "tabs")

    def __init__(self, tabs: Arr, lv: Arr, mm: Arr, K: Arr, I_: Arr, G: Arr, B: Arr,
                 M: Arr) -> None:
        self.pte = bool(lv.size) and int(lv[0]) == LV_PTE
        self.tabs = tabs
        self.lv = lv
        self.mm = mm
        self.K = K
        self.I = I_
        self.G = G
        self.B = B
        self.M = M
        self.rows_of = np.zeros(0, I64)  # the entry rows (set where they are needed)

    def rows(self, sel: Arr) -> Group:
        g = Group(self.tabs[sel], self.lv[sel], self.mm[sel], self.K[sel], self.I[sel],
                  self.G[sel], self.B[sel], self.M[sel])
        if self.rows_of.size:
            g.rows_of = self.rows_of[sel]
        return g

    def masked(self, M: Arr) -> Group:
        """The same rows, other entries taken."""
        g = Group(self.tabs, self.lv, self.mm, self.K, self.I, self.G, self.B, M)
        g.rows_of = self.rows_of
        return g

    def entries(self) -> list[Entry]:
        ri, ci = self.M.nonzero()
        return list(zip(self.tabs[ri].tolist(), ci.tolist(), self.K[ri, ci].tolist(),
                        self.I[ri, ci].tolist(), self.G[ri, ci].tolist(),
                        ((self.B[ri, ci] & W) != 0).tolist(), self.lv[ri].tolist(),
                        self.mm[ri].tolist(), strict=True))


def _rows(p: Pass, tabs: Arr, lv: Arr, mm: Arr, rows: Arr, mirror: bool) -> list[Group]:
    """The rows of tables ``tabs`` (levels ``lv``, mms ``mm``) as they are or as they were
    (``mirror``), every non-none entry taken: a group of PTE tables, one of the others."""
    st, inc = p.st, p.inc
    out = []
    pte = lv == LV_PTE
    npte = int(np.count_nonzero(pte))
    for sel in (pte, ~pte):
        if (npte if sel is pte else tabs.size - npte) == 0:
            continue
        if npte in (0, tabs.size):
            t, lv_, mm_, r = tabs, lv, mm, rows
        else:
            t, lv_, mm_, r = tabs[sel], lv[sel], mm[sel], rows[sel]
        if mirror:
            K, I_, G, B = inc.me_kind[r], inc.me_id[r], inc.me_page[r], inc.me_bits[r]
        else:
            K, I_, G, B = st.e_kind[r], st.e_id[r], st.e_page[r], st.e_bits[r]
        g = Group(t, lv_, mm_.astype(I64), K, I_, G, B, K != NONE)
        g.rows_of = r
        out.append(g)
    return out


class Changes:
    """The changed entries of the marked tables: as they were (``old``), as they are
    (``new``), those whose write bit alone changed (``wonly``), and the tables that were
    taken whole as they are (``whole``: nothing of them was seen before)."""

    def __init__(self) -> None:
        # lists of Entry tuples when ``scalar``, else lists of Group
        self.old: list[Any] = []
        self.new: list[Any] = []
        self.wonly: list[Any] = []
        self.whole: set[int] = set()
        self.scalar = True
        # with few marked tables (``diff_scalar``): those whose state, level or mm changed,
        # those whose deposit-chain count (huge entries) or root word changed, and those
        # whose row must be copied for the next check
        self.shaped: list[int] | None = None
        self.rechain: set[int] = set()
        self.rows: list[int] = []
        # with many (``diff_vector``): the rows to copy whole, and those whose write bits
        # alone changed
        self.rows_whole: list[Arr] = []
        self.rows_bits: list[Arr] = []


# --------------------------------------------------------------------------------------
# The phase
# --------------------------------------------------------------------------------------


def entry_phase(p: Pass, dt: Arr, ident: Arr, recheck: list[tuple[int, int, int]]
                ) -> Changes:
    """Everything of an incremental check that concerns entries and tables; returns the
    changes, for the folio phase."""
    few = dt.size * p.P <= 4 * p.scalar_max
    if few:
        ch = diff_scalar(p, dt.tolist(), set(ident.tolist()) if ident.size else set())
    else:
        ch = diff_vector(p, dt, ident)
    S = ScalarEntries if ch.scalar else VectorEntries
    S.validate(p, ch.new)
    S.apply_tables(p, ch.old, -1)
    S.apply_tables(p, ch.new, 1)
    kids = S.children(ch.old) + S.children(ch.new)
    if ch.shaped is not None:
        nodes = p.chains_few(ch.rechain)
        T = [*ch.shaped, *kids, *nodes, *p.old_roots]
        if len(T) <= p.scalar_max:
            p.claims_scalar(sorted(set(T)))
        else:
            p.claims(unique(np.array(T, I64)))
        # an alive mm's PUD table can only have changed with the mms or as one of these
        if p.mms_changed or not p.root_set().isdisjoint(T):
            p.roots()
    else:
        nodes = p.chains(dt)
        p.claims(unique(np.concatenate((dt, np.array(kids + nodes + p.old_roots, I64)))))
        p.roots()
    S.check(p, ch.new)
    S.check(p, S.writable(ch.wonly))  # type: ignore[arg-type]
    if recheck:
        tabs = sorted({t for t in p.tables_over(recheck) if t not in ch.whole})
        if tabs and len(tabs) * p.P <= 4 * p.scalar_max:
            ScalarEntries.check(p, _row_entries(p, tabs))
        elif tabs:
            a = np.array(tabs, I64)
            a = a[(p.st.t_state[a] == ST_LIVE) & (p.st.t_row[a] != 0)]
            VectorEntries.check(p, _rows(p, a, p.st.t_level[a], p.st.t_mm[a], p.st.t_row[a],
                                         False))
    S.apply_mapped(p, ch.old, -1)
    S.apply_mapped(p, ch.new, 1)
    S.apply_wonly(p, ch.wonly)
    return ch


def _row_entries(p: Pass, tabs: list[int]) -> list[Entry]:
    """Every entry of the live tables ``tabs`` that have entries, as tuples."""
    st = p.st
    out: list[Entry] = []
    for t in tabs:
        r = int(st.t_row[t])
        if r == 0 or st.t_state[t] != ST_LIVE:
            continue
        lv, mm = int(st.t_level[t]), int(st.t_mm[t])
        K = st.e_kind[r].tolist()
        I_ = st.e_id[r].tolist()
        G = st.e_page[r].tolist()
        Wb = (st.e_bits[r] & W).tolist()
        out += [(t, i, k, I_[i], G[i], Wb[i], lv, mm) for i, k in enumerate(K) if k != NONE]
    return out


def changed_folios(ch: Changes) -> Arr | list[int]:
    """The folios a changed entry names (as it was or as it is): a list for entry tuples,
    an array for blocks."""
    if ch.scalar:
        out = [e[3] for e in ch.old if e[2] == LEAF or e[2] == PTE]
        out += [e[3] for e in ch.new if e[2] == LEAF or e[2] == PTE]
        return out
    parts = [g.I[g.M & ((g.K == LEAF) | (g.K == PTE))] for g in ch.old + ch.new
             if isinstance(g, Group)]
    return np.concatenate(parts).astype(I64) if parts else np.zeros(0, I64)


def redone(ch: Changes, ident: Arr) -> Arr:
    """Per folio of ``ident``: the changed entries that map it as they are now."""
    if ch.scalar:
        want = set(ident.tolist())
        count: dict[int, int] = {}
        for e in ch.new:
            f = e[3]
            if (e[2] == LEAF or e[2] == PTE) and f in want:
                count[f] = count.get(f, 0) + 1
        return np.array([count.get(f, 0) for f in ident.tolist()], I64)
    parts = [g.I[g.M & ((g.K == LEAF) | (g.K == PTE))] for g in ch.new
             if isinstance(g, Group)]
    if not parts:
        return np.zeros(ident.size, I64)
    fids = np.concatenate(parts)
    pos = np.searchsorted(ident, fids)
    hit = (pos < ident.size) & (ident[np.minimum(pos, ident.size - 1)] == fids)
    return np.bincount(pos[hit], minlength=ident.size)


# --------------------------------------------------------------------------------------
# What changed
# --------------------------------------------------------------------------------------


def diff_scalar(p: Pass, dt: list[int], ident: set[int]) -> Changes:
    """``diff_vector`` for a few tables, in Python."""
    st, inc = p.st, p.inc
    ch = Changes()
    old: list[Entry] = []
    new: list[Entry] = []
    wonly: list[Entry] = []
    shaped: list[int] = []
    rechain = ch.rechain
    rows = ch.rows
    for t in dt:
        os_, ns_ = int(inc.m_state[t]), int(st.t_state[t])
        orow, nrow = int(inc.m_row[t]), int(st.t_row[t])
        olv, nlv = int(inc.m_level[t]), int(st.t_level[t])
        omm, nmm = int(inc.m_mm[t]), int(st.t_mm[t])
        olive = os_ == ST_LIVE and orow != 0
        nlive = ns_ == ST_LIVE and nrow != 0
        if os_ != ns_ or olv != nlv or omm != nmm:
            shaped.append(t)
        elif olive and nlive and orow == nrow and not ident and (
                inc.me_kind[orow].tobytes() == st.e_kind[nrow].tobytes()
                and inc.me_id[orow].tobytes() == st.e_id[nrow].tobytes()
                and inc.me_page[orow].tobytes() == st.e_page[nrow].tobytes()
                and not np.count_nonzero((inc.me_bits[orow] ^ st.e_bits[nrow]) & W)):
            # the same entries as at the last check (the young or dirty bits aside)
            if olv != LV_PTE and inc.m_w16[t] != st.t_w16[t]:
                rechain.add(t)
            owner = int(inc.unit_of[t])
            if owner:
                rechain.add(owner)
            continue
        # a (possible) unit whose chain must be walked again: its shape or root word
        # changed (its huge entries: below), or a node of a chain
        if ((os_ == ST_LIVE and olv != LV_PTE) or (ns_ == ST_LIVE and nlv != LV_PTE)) and (
                (os_ != ns_ or olv != nlv or omm != nmm) or inc.m_w16[t] != st.t_w16[t]):
            rechain.add(t)
        owner = int(inc.unit_of[t])
        if owner:
            rechain.add(owner)
        n0 = len(old) + len(new) + len(wonly)
        if olive:
            Ko = inc.me_kind[orow].tolist()
            Io = inc.me_id[orow].tolist()
            Go = inc.me_page[orow].tolist()
            Wo = [b & W for b in inc.me_bits[orow].tolist()]
        if nlive:
            Kn = st.e_kind[nrow].tolist()
            In = st.e_id[nrow].tolist()
            Gn = st.e_page[nrow].tolist()
            Wn = [b & W for b in st.e_bits[nrow].tolist()]
        if olive and nlive and orow == nrow and olv == nlv and omm == nmm:
            if Ko != Kn or Io != In or Go != Gn:
                rows.append(nrow)  # (an entry none before and after may differ)
            for i in range(p.P):
                ko, kn = Ko[i], Kn[i]
                if ko == kn and Io[i] == In[i] and Go[i] == Gn[i] and not (
                        ident and ko in (LEAF, PTE) and Io[i] in ident):
                    if Wo[i] != Wn[i] and kn in (LEAF, PTE):
                        wonly.append((t, i, kn, In[i], Gn[i], Wn[i], nlv, nmm))
                    continue
                if ko != NONE:
                    old.append((t, i, ko, Io[i], Go[i], Wo[i], olv, omm))
                    if ko in (LEAF, ZERO) and olv != LV_PTE:
                        rechain.add(t)
                if kn != NONE:
                    new.append((t, i, kn, In[i], Gn[i], Wn[i], nlv, nmm))
                    if kn in (LEAF, ZERO) and nlv != LV_PTE:
                        rechain.add(t)
            if len(old) + len(new) + len(wonly) > n0:
                rows.append(nrow)
            continue
        if olive:
            old += [(t, i, k, Io[i], Go[i], Wo[i], olv, omm) for i, k in enumerate(Ko)
                    if k != NONE]
            rows.append(orow)
            if olv != LV_PTE:
                rechain.add(t)
        if nlive:
            ch.whole.add(t)
            new += [(t, i, k, In[i], Gn[i], Wn[i], nlv, nmm) for i, k in enumerate(Kn)
                    if k != NONE]
            rows.append(nrow)
            if nlv != LV_PTE:
                rechain.add(t)
    ch.old, ch.new, ch.wonly = old, new, wonly
    ch.shaped = shaped
    return ch


def diff_vector(p: Pass, dt: Arr, ident: Arr) -> Changes:
    """The changed entries of the marked tables ``dt``, compared row by row with the copy
    of the last check (an entry of a folio that changed identity counts as changed)."""
    st, inc = p.st, p.inc
    ch = Changes()
    ostate, nstate = inc.m_state[dt], st.t_state[dt]
    orow, nrow = inc.m_row[dt], st.t_row[dt]
    olv, nlv = inc.m_level[dt], st.t_level[dt]
    omm, nmm = inc.m_mm[dt], st.t_mm[dt]
    olive = (ostate == ST_LIVE) & (orow != 0)
    nlive = (nstate == ST_LIVE) & (nrow != 0)
    same = olive & nlive & (orow == nrow) & (olv == nlv) & (omm == nmm)
    old: list[Group] = []
    new: list[Group] = []
    wonly: list[Group] = []
    if np.count_nonzero(same):
        t = dt[same]
        r = nrow[same]
        lv, mm = nlv[same], nmm[same]
        for go, gn in zip(_rows(p, t, lv, mm, r, True), _rows(p, t, lv, mm, r, False),
                          strict=True):
            _diff_rows(go, gn, ident, old, new, wonly, ch)
    whole_old = olive & ~same
    if np.count_nonzero(whole_old):
        old += _rows(p, dt[whole_old], olv[whole_old], omm[whole_old], orow[whole_old], True)
        ch.rows_whole.append(orow[whole_old])
    whole_new = nlive & ~same
    if np.count_nonzero(whole_new):
        t = dt[whole_new]
        ch.whole = set(t.tolist())
        new += _rows(p, t, nlv[whole_new], nmm[whole_new], nrow[whole_new], False)
        ch.rows_whole.append(nrow[whole_new])
    n = sum(int(np.count_nonzero(g.M)) for g in old + new + wonly)
    if n <= p.scalar_max:
        ch.old = [e for g in old for e in g.entries()]
        ch.new = [e for g in new for e in g.entries()]
        ch.wonly = [e for g in wonly for e in g.entries()]
    else:
        ch.old, ch.new, ch.wonly = old, new, wonly
        ch.scalar = False
    return ch


def _diff_rows(go: Group, gn: Group, ident: Arr, old: list[Group], new: list[Group],
               wonly: list[Group], ch: Changes) -> None:
    """The same rows as they were (``go``) and as they are (``gn``): the changed entries,
    and those whose write bit alone changed."""
    diff = (go.K != gn.K) | (go.I != gn.I) | (go.G != gn.G)
    if ident.size:
        diff |= ((go.K == LEAF) | (go.K == PTE)) & np.isin(go.I, ident)
    wdiff = ~diff & (((go.B ^ gn.B) & W) != 0) & ((gn.K == LEAF) | (gn.K == PTE))
    rows = gn.rows_of
    differ = np.asarray(diff.any(axis=1))  # (an entry none before and after may differ)
    if np.count_nonzero(differ):
        ch.rows_whole.append(rows[differ])
    go.M &= diff
    gn.M &= diff
    keep = np.asarray(go.M.any(axis=1) | gn.M.any(axis=1))
    nkeep = np.count_nonzero(keep)
    if nkeep == keep.size:
        old.append(go)
        new.append(gn)
    elif nkeep:
        old.append(go.rows(keep))
        new.append(gn.rows(keep))
    wrows = np.asarray(wdiff.any(axis=1))
    nw = np.count_nonzero(wrows)
    if nw:
        ch.rows_bits.append(rows[wrows & ~differ])
    if nw == wrows.size:
        wonly.append(gn.masked(wdiff))
    elif nw:
        wonly.append(gn.rows(wrows).masked(wdiff[wrows]))


# --------------------------------------------------------------------------------------
# Python loops
# --------------------------------------------------------------------------------------


class ScalarEntries:
    """The entry checks and updates over a few entry tuples."""

    @staticmethod
    def validate(p: Pass, new: list[Entry]) -> None:
        """Entry kinds for their level, and table entries naming a live table of the next
        level of the same mm (_live_child())."""
        st = p.st
        npt = p.npt
        for _t, _i, kind, eid, _pg, _w, lv, mm in new:
            need(kind in _KIND_SETS[lv])
            if kind == TABLE:
                need(1 <= eid < npt and st.t_state[eid] == ST_LIVE
                     and st.t_level[eid] == lv + 1 and st.t_mm[eid] == mm)

    @staticmethod
    def apply_tables(p: Pass, entries: list[Entry], sign: int) -> None:
        """Table entries in or out of ``named`` / ``parent``."""
        inc = p.inc
        P = p.P
        for t, i, kind, eid, _pg, _w, _lv, _mm in entries:
            if kind != TABLE:
                continue
            inc.named[eid] += sign
            if sign > 0:
                inc.parent[eid] = t * P + i
            elif inc.parent[eid] == t * P + i:
                inc.parent[eid] = -1

    @staticmethod
    def children(entries: list[Entry]) -> list[int]:
        return [e[3] for e in entries if e[2] == TABLE]

    @staticmethod
    def writable(entries: list[Entry]) -> list[Entry]:
        return [e for e in entries if e[5]]

    @staticmethod
    def check(p: Pass, entries: list[Entry]) -> None:
        """_walk_mm()'s per-entry checks (upper(), huge(), ptes())."""
        if not entries:
            return
        st = p.st
        g = p.g
        P = p.P
        space = p.space
        nf = p.nf
        npool = p.npool
        vstart, vend, vrw = p.inc.vma_lists
        vb = p.vbase(sorted({e[0] for e in entries}))
        step = (P * P, P, 1)
        npages = (g.pud_nr, g.pmd_nr, 1)
        orders = (g.pud_order, g.pmd_order, 0)
        f_live, f_order, f_base, f_nr = st.f_live, st.f_order, st.f_base, st.f_nr
        for t, i, kind, eid, page, w, lv, mm in entries:
            if kind not in _KIND_SETS[lv]:
                raise Suspect
            if kind == TABLE:
                continue
            gv = mm * space + vb[t] + i * step[lv]
            k = bisect_right(vstart, gv) - 1
            if gv >= vend[k] or (lv != LV_PTE and vend[k] < gv + npages[lv]):
                raise Suspect
            if kind != LEAF and kind != PTE:
                continue
            if not (1 <= eid < nf and f_live[eid]):
                raise Suspect
            if kind == LEAF:
                if f_order[eid] != orders[lv]:
                    raise Suspect
                gp = int(f_base[eid])
            else:
                if not 0 <= page < f_nr[eid]:
                    raise Suspect
                gp = int(f_base[eid]) + page
            if not 0 <= gp < npool or (w and not (vrw[k] and st.p_exclusive[gp])):
                raise Suspect

    @staticmethod
    def apply_mapped(p: Pass, entries: list[Entry], sign: int) -> None:
        """Leaves, present PTEs and swap PTEs in or out of the aggregates (old entries with
        the folio bases of the last check, new ones with today's)."""
        if not entries:
            return
        inc = p.inc
        g = p.g
        base = inc.mf_base if sign < 0 else p.st.f_base
        nslots = inc.srefs.shape[0]
        for _t, _i, kind, f, page, w, lv, mm in entries:
            if kind == LEAF:
                inc.leaves[f] += sign
                inc.leaf_mm[f] += sign * mm
                inc.wleaf[f] += sign * w
                inc.per_mm[mm, f] += sign
                inc.rss_anon[mm] += sign * (g.pud_nr if lv == LV_PUD else g.pmd_nr)
            elif kind == PTE and lv == LV_PTE:
                gp = int(base[f]) + page
                inc.ptes[f] += sign
                inc.per_mm[mm, f] += sign
                inc.emc[gp] += sign
                inc.msum[gp] += sign * mm
                inc.msq[gp] += sign * mm * mm
                inc.wcnt[gp] += sign * w
                inc.rss_anon[mm] += sign
            elif kind == SWAP:
                p.swap_changed = True
                if 0 <= f < nslots:
                    inc.srefs[f] += sign
                else:
                    inc.srefs_far += sign
                inc.rss_swap[mm] += sign

    @staticmethod
    def apply_wonly(p: Pass, entries: list[Entry]) -> None:
        """Entries that only gained or lost the write bit: the writable counts."""
        inc = p.inc
        f_base = p.st.f_base
        for _t, _i, kind, f, page, w, _lv, _mm in entries:
            s = 1 if w else -1
            if kind == LEAF:
                inc.wleaf[f] += s
            else:
                inc.wcnt[int(f_base[f]) + page] += s


# --------------------------------------------------------------------------------------
# numpy over blocks
# --------------------------------------------------------------------------------------


def _upper(groups: list[Group]) -> tuple[Arr, Arr, Arr, Arr, Arr, Arr, Arr, Arr] | None:
    """The taken entries of the PUD- and PMD-level rows, flat: table, index, kind, id,
    page, writable, level, mm."""
    parts = []
    for h in groups:
        if h.pte:
            continue
        ri, ci = h.M.nonzero()
        if ri.size:
            parts.append((h.tabs[ri], ci.astype(I64), h.K[ri, ci], h.I[ri, ci].astype(I64),
                          h.G[ri, ci].astype(I64), (h.B[ri, ci] & W) != 0, h.lv[ri],
                          h.mm[ri]))
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return tuple(np.concatenate(c) for c in zip(*parts, strict=True))  # type: ignore[return-value]


def _pte_rows(groups: list[Group]) -> list[Group]:
    return [g for g in groups if g.pte]


class VectorEntries:
    """The entry checks and updates over (tables x P) blocks."""

    @staticmethod
    def validate(p: Pass, new: list[Group]) -> None:
        st = p.st
        _kinds(new)
        up = _upper(new)
        if up is None:
            return
        _t, _i, kind, eid, _pg, _w, lv, mm = up
        sel = kind == TABLE
        if np.count_nonzero(sel):
            ch = eid[sel]
            need(not np.count_nonzero((ch < 1) | (ch >= p.npt)))
            need((st.t_state[ch] == ST_LIVE).all())
            need((st.t_level[ch] == lv[sel] + 1).all())
            need((st.t_mm[ch] == mm[sel]).all())

    @staticmethod
    def apply_tables(p: Pass, groups: list[Group], sign: int) -> None:
        up = _upper(groups)
        if up is None:
            return
        t, i, kind, eid, _pg, _w, _lv, _mm = up
        sel = kind == TABLE
        if not np.count_nonzero(sel):
            return
        inc = p.inc
        ch = eid[sel]
        loc = t[sel] * p.P + i[sel]
        np.add.at(inc.named, ch, np.full(ch.size, sign, I32))
        if sign < 0:
            gone = inc.parent[ch] == loc
            inc.parent[ch[gone]] = -1
        else:
            inc.parent[ch] = loc

    @staticmethod
    def children(groups: list[Group]) -> list[int]:
        up = _upper(groups)
        if up is None:
            return []
        kind, eid = up[2], up[3]
        out: list[int] = eid[kind == TABLE].tolist()
        return out

    @staticmethod
    def writable(groups: list[Group]) -> list[Group]:
        out = []
        for g in groups:
            M = g.M & ((g.B & W) != 0)
            if np.count_nonzero(M):
                out.append(g.masked(M))
        return out

    @staticmethod
    def check(p: Pass, groups: list[Group]) -> None:
        """_walk_mm()'s per-entry checks over blocks."""
        if not groups:
            return
        _kinds(groups)
        up = _upper(groups)
        if up is not None:
            _check_upper(p, up)
        for g in _pte_rows(groups):
            _check_ptes(p, g)

    @staticmethod
    def apply_mapped(p: Pass, groups: list[Group], sign: int) -> None:
        if not groups:
            return
        inc = p.inc
        geo = p.g
        up = _upper(groups)
        if up is not None:
            _t, _i, kind, f, _pg, w, lv, mm = up
            sel = kind == LEAF
            if np.count_nonzero(sel):
                f, w, lv, mm = f[sel], w[sel], lv[sel], mm[sel]
                s = np.full(f.size, sign, I64)
                np.add.at(inc.leaves, f, s)
                np.add.at(inc.leaf_mm, f, s * mm)
                np.add.at(inc.wleaf, f, s * w)
                np.add.at(inc.per_mm, (mm, f), s.astype(I32))
                np.add.at(inc.rss_anon, mm, s * np.where(lv == LV_PUD, geo.pud_nr, geo.pmd_nr))
        base = inc.mf_base if sign < 0 else p.st.f_base
        for g in _pte_rows(groups):
            present = g.M & (g.K == PTE)
            per_row = np.count_nonzero(present, axis=1)
            if per_row.any():
                np.add.at(inc.rss_anon, g.mm, sign * per_row.astype(I64))
                f = g.I[present]
                f0, fmin, fmax = int(f[0]), int(f.min()), int(f.max())
                one = fmin == f0 == fmax
                gp = (int(base[f0]) if one else base[f]) + g.G[present]
                w = (g.B[present] & W) != 0
                if np.count_nonzero(w):
                    add_at(inc.wcnt, gp[w], sign)
                # per mm: its mappings of each folio, its PTEs on each page
                mms = g.mm
                if mms.min() == mms.max():
                    groups_mm = [(int(mms[0]), f, gp)]
                else:
                    mm = np.repeat(mms, per_row)
                    groups_mm = [(m, f[mm == m], gp[mm == m]) for m in unique(mms).tolist()]
                if one:
                    inc.ptes[f0] += sign * f.size
                elif len(groups_mm) == 1 and fmax - fmin <= 4 * f.size:
                    d = sign * np.bincount(f - fmin)  # one count for the folio and its mm
                    inc.ptes[fmin : fmax + 1] += d
                    inc.per_mm[groups_mm[0][0], fmin : fmax + 1] += d.astype(I32)
                else:
                    add_at(inc.ptes, f, sign)
                for m, fm, gpm in groups_mm:
                    if not fm.size:  # (rows of this mm with no present PTE)
                        continue
                    if one:
                        inc.per_mm[m, f0] += sign * fm.size
                    elif len(groups_mm) > 1 or fmax - fmin > 4 * f.size:
                        add_at(inc.per_mm[m], fm, sign)
                    lo, d = counts(gpm)
                    hi = lo + d.size
                    inc.emc[lo:hi] += sign * d
                    if m:
                        inc.msum[lo:hi] += sign * m * d
                        inc.msq[lo:hi] += sign * m * m * d
            swap = g.M & (g.K == SWAP)
            per_row = np.count_nonzero(swap, axis=1)
            if per_row.any():
                p.swap_changed = True
                slot = g.I[swap].astype(I64)
                inr = (slot >= 0) & (slot < inc.srefs.shape[0])
                add_at(inc.srefs, slot[inr], sign)
                inc.srefs_far += sign * int(np.count_nonzero(~inr))
                np.add.at(inc.rss_swap, g.mm, sign * per_row.astype(I64))

    @staticmethod
    def apply_wonly(p: Pass, groups: list[Group]) -> None:
        inc = p.inc
        st = p.st
        for g in groups:
            leaf = g.M & (g.K == LEAF)
            if np.count_nonzero(leaf):
                s = np.where((g.B[leaf] & W) != 0, 1, -1).astype(I64)
                np.add.at(inc.wleaf, g.I[leaf], s)
            pte = g.M & (g.K == PTE)
            if np.count_nonzero(pte):
                gp = st.f_base[g.I[pte]] + g.G[pte]
                w = (g.B[pte] & W) != 0
                add_at(inc.wcnt, gp[w], 1)
                add_at(inc.wcnt, gp[~w], -1)


def _check_upper(p: Pass, up: tuple[Arr, Arr, Arr, Arr, Arr, Arr, Arr, Arr]) -> None:
    """upper() / huge(): leaves and huge zero PMDs (table entries were validated)."""
    st = p.st
    geo = p.g
    P = p.P
    t, i, kind, eid, _pg, w, lv, mm = up
    huge = kind != TABLE
    if not np.count_nonzero(huge):
        return
    t, i, kind, f, w, lv, mm = t[huge], i[huge], kind[huge], eid[huge], w[huge], lv[huge], mm[huge]
    utabs = unique(t)
    vbt = p.vbase_array(utabs)
    vb = vbt[np.searchsorted(utabs, t)]
    gv = mm * p.space + vb + i * np.where(lv == LV_PUD, P * P, P)
    vstart, vend, vrw = p.inc.vma_arrays
    k = np.searchsorted(vstart, gv, side="right") - 1
    need(not np.count_nonzero(gv >= vend[k]))
    need(not np.count_nonzero(vend[k] < gv + np.where(lv == LV_PUD, geo.pud_nr, geo.pmd_nr)))
    leaf = kind == LEAF
    if not np.count_nonzero(leaf):
        return
    f, w, lv, k = f[leaf], w[leaf], lv[leaf], k[leaf]
    need(not np.count_nonzero((f < 1) | (f >= p.nf)))
    need(st.f_live[f].all())
    need((st.f_order[f] == np.where(lv == LV_PUD, geo.pud_order, geo.pmd_order)).all())
    head = st.f_base[f]
    need(not np.count_nonzero((head < 0) | (head >= p.npool)))
    if np.count_nonzero(w):
        need(vrw[k[w]].all())
        need(st.p_exclusive[head[w]].all())


def _kinds(groups: list[Group]) -> None:
    """Every taken entry is of a kind its table's level allows."""
    for g in groups:
        ok = KIND_OK[LV_PTE][g.K.view(np.uint8)] if g.pte else KIND_OK[g.lv[:, None],
                                                                      g.K.view(np.uint8)]
        need(not np.count_nonzero(g.M & ~ok))


def counts(idx: Arr) -> tuple[int, Arr]:
    """How often each index in ``[lo, lo + len)`` occurs in ``idx`` (non-empty): (lo, counts)."""
    lo = int(idx.min())
    return lo, np.bincount(idx - lo)




def _check_ptes(p: Pass, g: Group) -> None:
    """ptes(): the taken entries of PTE-table rows; the VMA per row where a table lies
    inside one, per entry where not."""
    st = p.st
    P = p.P
    vbt = p.vbase_array(g.tabs)
    rowbase = g.mm * p.space + vbt
    vstart, vend, vrw = p.inc.vma_arrays
    k = np.searchsorted(vstart, rowbase, side="right") - 1
    covered = (rowbase < vend[k]) & (vend[k] >= rowbase + P)
    rw_rows = vrw[k] & covered
    rw_e: Arr | None = None
    if not covered.all():
        u = (~covered).nonzero()[0]
        pages = rowbase[u][:, None] + np.arange(P)
        ke = np.searchsorted(vstart, pages, side="right") - 1
        inside = pages < vend[ke]
        need(not np.count_nonzero(g.M[u] & ~inside))
        rw_e = np.repeat(rw_rows[:, None], P, axis=1)
        rw_e[u] = vrw[ke] & inside
    present = g.M & (g.K == PTE)
    if not np.count_nonzero(present):
        return
    f = g.I[present]
    fmin, fmax = int(f.min()), int(f.max())
    need(fmin >= 1 and fmax < p.nf)
    pg = g.G[present]
    # the folios' own fields once per folio; per PTE only its page index
    if fmin == fmax:
        distinct = np.array([fmin], I64)
    elif fmax - fmin <= 4 * f.size:
        distinct = fmin + np.bincount(f - fmin).nonzero()[0]
    else:
        distinct = unique(f)
    need(st.f_live[distinct].all())
    nr = st.f_nr[distinct]
    base = st.f_base[distinct]
    need(not np.count_nonzero((base < 0) | (base + nr > p.npool)))
    need(int(pg.min()) >= 0)
    if int(nr.min()) <= int(pg.max()):
        need(not np.count_nonzero(pg >= st.f_nr[f]))
    wm = present & ((g.B & W) != 0)
    if np.count_nonzero(wm):
        rw = rw_rows[:, None] if rw_e is None else rw_e
        need(not np.count_nonzero(wm & ~rw))
        need(st.p_exclusive[st.f_base[g.I[wm]] + g.G[wm]].all())
