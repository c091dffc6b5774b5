"""Incremental invariant checking: the cost of a check follows what the op changed.

``check_invariants_incremental(st)`` gives the verdict of the full checker
(``pudthp_fast.invariants.check_invariants``: the same ``InvariantViolation``, or none)
provided that

1. the state passed the previous check, and
2. every write since then marked what it wrote: ``FastState.t_touch`` for a table (its
   entries, words, state, level, owner), ``FastState.f_touch`` for a folio (its fields, its
   pages' ``_mapcount`` and AnonExclusive).  The mms (VMAs, alive, counters), pins, the
   deferred queue, swap counts and stats need no marks: they are compared with copies.

It only *detects*.  Whatever it finds, and any case it does not follow cheaply (a folio that
changed identity while an entry it did not look at still maps it), goes to the full
checker, which names the violation exactly as the reference would: the result is the full
checker's by construction, so an incremental check never reports anything else.

What it keeps (``IncState``), exact for the state as of the last check:

- a copy of every table's state, level, owner and entry row (``m_*``, ``me_*``), so the
  entries an op changed are told apart from the ones it left alone, and each changed entry
  is taken out of the aggregates as it was and put back as it is;
- per table: how many table entries name it (``named``) and where (``parent``), how many
  deposit chains hold it (``chain_cnt``) and whose chain (``unit_of``, ``unit_nodes``);
- per folio: leaves, present PTEs, mappings per mm (``per_mm``), writable leaves, the sum
  of the leaves' mm ids, its share of the node and mTHP counters (``contrib``);
- per pool page: present PTEs less one (``emc``, what its ``_mapcount`` must be), the sum
  and the sum of squares of their mm ids (for ``c`` PTEs the mapping mms are all one iff
  ``c * msq == msum ** 2``), writable PTEs;
- per swap slot its swap PTEs; per mm its RSS, swap entries and tables.

A check then looks only at: the changed entries (and every entry of a table whose address
range a VMA change touched), the tables whose naming or chain changed, the deposit chains
that hold a changed table (walked again whole, with the full checker's walk,
``pudthp_fast.chains``), the folios that were marked or that a changed entry names (their
pages scanned whole), and the small things (mms, pins, the queue, swap, stats) whole.
Under the two conditions nothing else can have changed a verdict.  The entry and folio
phases (``incremental_entries``, ``incremental_folios``) run as Python loops over a few
dozen items and as numpy over arrays beyond that.

``FastModel.check_invariants(full=True)`` runs the full checker (the harness does at the end
of every program), so a write that forgot its mark is still caught, at the latest there.
"""

from __future__ import annotations

from bisect import bisect_right
from itertools import pairwise
from typing import Any

import numpy as np

from pudthp_fast.chains import ChainBroken, DepositChains
from pudthp_fast.state import (
    LEAF,
    LV_PMD,
    LV_PTE,
    LV_PUD,
    NONE,
    ST_DEPOSITED,
    ST_FREE,
    ST_LIVE,
    ZERO,
    Arr,
    FastState,
    grow,
    grow_fields,
)
from pudthp_ref.spec import PAGE_TABLE_BYTES

I8 = np.int8
I32 = np.int32
I64 = np.int64

# columns of IncState.contrib, a folio's share of the counters _check_folios() recomputes:
# mTHP nr_anon (PMD order, PUD order), nr_anon_partially_mapped (PMD, PUD), then
# NR_ANON_MAPPED, NR_ANON_THPS, NR_ANON_PUD_THPS
NCONTRIB = 7

# IncState's arrays that follow the state's tables, entry rows, folios and pool pages
MIRROR_TABLE_FIELDS = ("m_state", "m_level", "m_mm", "m_row", "named", "parent", "m_w16",
                       "chain_cnt", "unit_of")
MIRROR_ROW_FIELDS = ("me_kind", "me_id", "me_page", "me_bits")
MIRROR_FOLIO_FIELDS = ("mf_live", "mf_nr", "mf_base", "mf_order", "leaves", "ptes",
                       "leaf_mm", "wleaf", "contrib")
MIRROR_PAGE_FIELDS = ("emc", "msum", "msq", "wcnt")
MIRROR_FILLS = {"parent": -1, "emc": -1}

DISABLED = "disabled"
SCALAR_MAX = 48
"""Up to this many items (changed entries, tables, folios) a phase runs as a Python loop."""


class Suspect(Exception):
    """Something the incremental pass does not clear: the full checker decides."""


def need(ok: object) -> None:
    if not ok:
        raise Suspect


class IncState:
    """The aggregates of the last check (see the module docstring)."""

    def __init__(self, st: FastState) -> None:
        P = st.P
        nt = st.t_state.shape[0]
        nr = st.e_kind.shape[0]
        nf = st.f_live.shape[0]
        npool = st.p_mapcount.shape[0]
        nmm = max(4, len(st.mms))
        # tables
        self.m_state = np.zeros(nt, I8)
        self.m_level = np.zeros(nt, I8)
        self.m_mm = np.zeros(nt, I32)
        self.m_row = np.zeros(nt, I64)
        self.named = np.zeros(nt, I32)
        self.parent = np.full(nt, -1, I64)
        self.m_w16 = np.zeros(nt, I64)
        self.chain_cnt = np.zeros(nt, I32)
        self.unit_of = np.zeros(nt, I64)
        self.unit_nodes: dict[int, list[int]] = {}
        # entry rows as of the last check
        self.me_kind = np.zeros((nr, P), I8)
        self.me_id = np.zeros((nr, P), I32)
        self.me_page = np.zeros((nr, P), I32)
        self.me_bits = np.zeros((nr, P), np.uint8)
        # folios
        self.mf_live = np.zeros(nf, bool)
        self.mf_nr = np.zeros(nf, I64)
        self.mf_base = np.zeros(nf, I64)
        self.mf_order = np.zeros(nf, I8)
        self.leaves = np.zeros(nf, I64)
        self.ptes = np.zeros(nf, I64)
        self.leaf_mm = np.zeros(nf, I64)
        self.wleaf = np.zeros(nf, I64)
        self.per_mm = np.zeros((nmm, nf), I32)
        self.contrib = np.zeros((nf, NCONTRIB), I64)
        self.totals = np.zeros(NCONTRIB, I64)
        # pool pages
        self.emc = np.full(npool, -1, I32)
        self.msum = np.zeros(npool, I64)
        self.msq = np.zeros(npool, I64)
        self.wcnt = np.zeros(npool, I32)
        # swap
        self.srefs = np.zeros(st.s_count.shape[0], I64)
        self.srefs_far = 0
        self.m_s_count = np.zeros(0, I64)
        # mms
        self.rss_anon = np.zeros(nmm, I64)
        self.rss_swap = np.zeros(nmm, I64)
        self.ntables = np.zeros(nmm, I64)
        self.m_vmas: list[tuple[tuple[int, int, str], ...]] = []
        self.m_alive: list[bool] = []
        self.m_pud: list[int] = []
        # every alive mm's VMAs on one line (page mm * space + vpn): starts, ends, writable,
        # as arrays and as lists, with a dummy first VMA that holds nothing
        self.vma_arrays: tuple[Arr, Arr, Arr] = (np.array([-2], I64), np.array([-1], I64),
                                                 np.zeros(1, bool))
        self.vma_lists: tuple[list[int], list[int], list[bool]] = ([-2], [-1], [False])
        # pins and the deferred queue
        self.m_pins: dict[int, tuple[int, int]] = {}
        self.m_deferred: list[int] = []
        self.sizes: tuple[int, ...] = ()  # the state's capacities at the last fit()

    def fit(self, st: FastState) -> None:
        """Grow every array to the state's current capacities, copying only what the state
        has used so far (every row written here is one of those)."""
        if self.m_state.shape[0] < st.t_state.shape[0]:
            grow_fields(self, MIRROR_TABLE_FIELDS, st.t_state.shape[0], st.next_pt,
                        fills=MIRROR_FILLS)
        if self.me_kind.shape[0] < st.e_kind.shape[0]:
            grow_fields(self, MIRROR_ROW_FIELDS, st.e_kind.shape[0], st.next_row)
        nf = st.f_live.shape[0]
        if self.mf_live.shape[0] < nf:
            grow_fields(self, MIRROR_FOLIO_FIELDS, nf, st.next_folio)
        nmm = len(st.mms)
        if self.per_mm.shape[0] < nmm or self.per_mm.shape[1] < nf:
            out = np.zeros((max(nmm, self.per_mm.shape[0]), max(nf, self.per_mm.shape[1])),
                           I32)
            out[: self.per_mm.shape[0], : self.per_mm.shape[1]] = self.per_mm
            self.per_mm = out
        if self.rss_anon.shape[0] < nmm:
            self.rss_anon = grow(self.rss_anon, nmm)
            self.rss_swap = grow(self.rss_swap, nmm)
            self.ntables = grow(self.ntables, nmm)
        if self.emc.shape[0] < st.p_mapcount.shape[0]:
            grow_fields(self, MIRROR_PAGE_FIELDS, st.p_mapcount.shape[0], st.next_page,
                        fills=MIRROR_FILLS)
        ns = st.s_count.shape[0]
        if self.srefs.shape[0] < ns:
            self.srefs = grow(self.srefs, ns)


def check_invariants_incremental(st: FastState) -> bool:
    """The full checker's verdict at the cost of what changed since the last check (see the
    module docstring).  Raises ``InvariantViolation`` as the full checker does; returns True
    when the incremental pass cleared the state alone, False when the full checker ran."""
    from pudthp_fast.invariants import check_invariants

    inc = st.inc
    if inc == DISABLED:
        check_invariants(st)
        return False
    if inc is None:
        inc = _fresh(st)
    if _cleared(st, inc):
        st.inc = inc
        st.checks["incremental"] += 1
        return True
    st.checks["fallback"] += 1
    st.inc = None
    check_invariants(st)  # raises what the reference would name
    # The full checker passes what the incremental pass did not clear: its aggregates are
    # rebuilt from scratch, and if even that does not clear the state, it is not used again.
    inc = _fresh(st)
    st.inc = inc if _cleared(st, inc) else DISABLED
    return False


def _fresh(st: FastState) -> IncState:
    """Empty aggregates and every table and folio marked: the next pass builds it all."""
    inc = IncState(st)
    npt = min(st.next_pt, st.t_state.shape[0])
    nf = min(st.next_folio, st.f_live.shape[0])
    st.t_touch[1:npt] = True
    st.f_touch[1:nf] = True
    return inc


def _cleared(st: FastState, inc: IncState) -> bool:
    from pudthp_fast.incremental_entries import entry_phase
    from pudthp_fast.incremental_folios import folio_phase

    try:
        p = Pass(st, inc)
        p.run(entry_phase, folio_phase)
    except Suspect:
        return False
    except MemoryError:
        raise  # out of memory is no malformed state
    except Exception:
        return False  # a malformed state met on the way: the full checker names it
    return True


class Pass:
    """One incremental check: consumes the marks, updates ``inc``, raises ``Suspect``."""

    def __init__(self, st: FastState, inc: IncState) -> None:
        self.st = st
        self.inc = inc
        sizes = (st.t_state.shape[0], st.e_kind.shape[0], st.f_live.shape[0], len(st.mms),
                 st.p_mapcount.shape[0], st.s_count.shape[0])
        if sizes != inc.sizes:
            inc.fit(st)
            inc.sizes = sizes
        self.P = st.P
        g = st.geom
        self.g = g
        self.space = g.space
        self.npt = min(st.next_pt, st.t_state.shape[0])
        self.nf = min(st.next_folio, st.f_live.shape[0])
        self.npool = min(st.next_page, st.p_mapcount.shape[0])
        self.nmm = len(st.mms)
        self.alive_list = [mm.alive for mm in st.mms]
        self._alive: Arr | None = None
        self.vmas: list[tuple[tuple[int, int, str], ...]] = []
        self.old_roots: list[int] = []
        self.mms_changed = False
        self.swap_changed = False
        self.scalar_max = SCALAR_MAX

    @property
    def alive(self) -> Arr:
        """Alive per mm id, and one more False for "no such mm"."""
        if self._alive is None:
            self._alive = np.array([*self.alive_list, False], bool)
        return self._alive

    def run(self, entry_phase: Any, folio_phase: Any) -> None:
        st, inc = self.st, self.inc
        dt = st.t_touch[: self.npt].nonzero()[0]
        df = st.f_touch[: self.nf].nonzero()[0]
        if dt.size:
            st.t_touch[dt] = False
            need(dt[0] >= 1)
        if df.size:
            st.f_touch[df] = False
            need(df[0] >= 1)
        recheck = self.mms()
        self.table_shapes(dt)
        # folios that changed identity (live, nr, base, order): every entry that maps one
        # must be among the changed ones, and is taken out and put back whole
        ident = df
        if df.size:
            ident = df[(st.f_live[df] != inc.mf_live[df]) | (st.f_nr[df] != inc.mf_nr[df])
                       | (st.f_base[df] != inc.mf_base[df])
                       | (st.f_order[df] != inc.mf_order[df])]
        changes = entry_phase(self, dt, ident, recheck)
        folio_phase(self, df, ident, changes)
        self.pins()
        self.swap()
        self.accounting()
        self.stats()
        self.remember(dt, changes)

    # ------------------------------------------------------------------------------------
    # mms: VMAs, alive, PUD tables
    # ------------------------------------------------------------------------------------

    def mms(self) -> list[tuple[int, int, int]]:
        """VMA layout checks of changed mms; the (mm, lo, hi) ranges whose tables must be
        checked again because a VMA changed there; a dying mm's leftovers."""
        st, inc = self.st, self.inc
        space = self.space
        out: list[tuple[int, int, int]] = []
        changed = False
        m_vmas, m_alive, m_pud = inc.m_vmas, inc.m_alive, inc.m_pud
        known = len(m_vmas)
        self.vmas = all_vmas = []
        for i, mm in enumerate(st.mms):
            need(mm.id == i)
            vmas = tuple([(v.start, v.end, v.prot) for v in mm.vmas])
            all_vmas.append(vmas)
            old = m_vmas[i] if i < known else ()
            if vmas != old:
                changed = True
                prev_end = 0
                for start, end, prot in vmas:
                    need(prot in ("none", "r", "rw") and prev_end <= start < end <= space)
                    prev_end = end
                if mm.alive:
                    out.extend((i, lo, hi) for lo, hi in _vma_changes(old, vmas))
            was_alive = m_alive[i] if i < known else None
            if was_alive and not mm.alive:
                # exit_mmap(): nothing of the mm may be left
                npt = self.npt
                need(not np.count_nonzero((st.t_state[1:npt] != ST_FREE)
                                          & (st.t_mm[1:npt] == i)))
                need(not np.count_nonzero(st.f_mmid[1 : self.nf] == mm.mm_id))
            if was_alive != mm.alive:
                changed = True
            if i < known and m_pud[i] != mm.pud_table:
                # the old PUD table must now be reached some other way, or be freed
                changed = True
                if 1 <= m_pud[i] < self.npt:
                    self.old_roots.append(m_pud[i])
        if changed:
            starts = [-2]
            ends = [-1]
            rw = [False]
            for mm in st.mms:
                if mm.alive:
                    off = mm.id * space
                    for v in mm.vmas:
                        starts.append(off + v.start)
                        ends.append(off + v.end)
                        rw.append(v.prot == "rw")
            inc.vma_lists = (starts, ends, rw)
            inc.vma_arrays = (np.array(starts, I64), np.array(ends, I64), np.array(rw, bool))
        self.mms_changed = changed
        return out

    def roots(self) -> None:
        """Every alive mm's PUD table: live, PUD level, its own, named by nothing; a dead
        mm's is freed."""
        st, inc = self.st, self.inc
        npt = self.npt
        seen: set[int] = set()
        for mm in st.mms:
            pud = mm.pud_table
            if not mm.alive:
                need(not (1 <= pud < npt) or st.t_state[pud] == ST_FREE)
                continue
            need(1 <= pud < npt and pud not in seen)
            seen.add(pud)
            need(st.t_state[pud] == ST_LIVE and st.t_level[pud] == LV_PUD
                 and st.t_mm[pud] == mm.id and inc.named[pud] == 0
                 and inc.chain_cnt[pud] == 0)

    def root_set(self) -> set[int]:
        return {mm.pud_table for mm in self.st.mms if mm.alive}

    # ------------------------------------------------------------------------------------
    # Tables
    # ------------------------------------------------------------------------------------

    def table_shapes(self, dt: Arr) -> None:
        """_check_shapes() of the marked tables; live or deposited ones counted per mm."""
        if not dt.size:
            return
        st, inc = self.st, self.inc
        if dt.size <= self.scalar_max:
            nmm = self.nmm
            alive = self.alive_list
            ntables = inc.ntables
            for t in dt.tolist():
                s = st.t_state[t]
                need(ST_FREE <= s <= ST_DEPOSITED)
                if inc.m_state[t] != ST_FREE:
                    ntables[inc.m_mm[t]] -= 1
                if s != ST_FREE:
                    lv, tm = st.t_level[t], int(st.t_mm[t])
                    need(LV_PUD <= lv <= LV_PTE and 0 <= tm < nmm and alive[tm])
                    ntables[tm] += 1
            return
        s = st.t_state[dt]
        need(not np.count_nonzero((s < 0) | (s > ST_DEPOSITED)))
        used = s != ST_FREE
        u = dt[used]
        if u.size:
            lv = st.t_level[u]
            tm = st.t_mm[u]
            need(not np.count_nonzero((lv < 0) | (lv > LV_PTE)))
            need(not np.count_nonzero((tm < 0) | (tm >= self.nmm)))
            need(self.alive[tm].all())
        # tables live or deposited per mm (pgtables_bytes): marked ones out and back in
        o = dt[inc.m_state[dt] != ST_FREE]
        if o.size:
            np.subtract.at(inc.ntables, inc.m_mm[o], np.ones(o.size, I64))
        if u.size:
            np.add.at(inc.ntables, st.t_mm[u], np.ones(u.size, I64))

    def chains(self, dt: Arr) -> list[int]:
        """Walk again, word by word, every deposit chain whose root table is marked or that
        holds a marked table; returns the tables whose chain membership changed."""
        if not dt.size:
            return []
        st, inc = self.st, self.inc
        was_unit = (inc.m_state[dt] == ST_LIVE) & (inc.m_level[dt] != LV_PTE)
        is_unit = (st.t_state[dt] == ST_LIVE) & (st.t_level[dt] != LV_PTE)
        owners = inc.unit_of[dt]
        units = set(dt[was_unit | is_unit].tolist())
        units.update(owners[owners != 0].tolist())
        return self.chains_few(units)

    def chains_few(self, units: set[int]) -> list[int]:
        """``chains`` for the units (PUD and PMD tables that are or were live) given: the
        marked ones whose state, level, mm, root word or huge entries changed, and those
        whose chain holds a marked table; nothing else of a chain can have changed."""
        if not units:
            return []
        st, inc = self.st, self.inc
        ulist = sorted(units)
        changed: list[int] = []
        for u in ulist:
            old = inc.unit_nodes.pop(u, None)
            if old:
                held = np.array(old, I64)
                inc.chain_cnt[held] -= 1
                inc.unit_of[held] = 0
                changed.extend(old)
        walker: ChainWalker | None = None
        for u in ulist:
            if not (st.t_state[u] == ST_LIVE and st.t_level[u] != LV_PTE):
                continue
            if walker is None:
                walker = ChainWalker(st, self.npt)
            nodes = walker.unit(u, int(st.t_level[u]), int(st.t_mm[u]))
            if nodes:
                inc.unit_nodes[u] = nodes
                held = np.array(nodes, I64)
                inc.chain_cnt[held] += 1
                inc.unit_of[held] = u
                changed.extend(nodes)
        if walker is not None:
            walker.check_empty()
        return changed

    def claims(self, T: Arr) -> None:
        """Every table whose naming or chain membership may have changed (``T``, unique) is
        reached exactly once: freed and unnamed, deposited in one chain, or live under one
        table entry of its mm one level up (or as an alive mm's PUD table)."""
        if not T.size:
            return
        need(T[0] >= 1 and T[-1] < self.npt)
        if T.size <= self.scalar_max:
            self.claims_scalar(T.tolist())
            return
        st, inc = self.st, self.inc
        root = np.isin(T, np.array(sorted(self.root_set()), I64))
        state = st.t_state[T]
        named = inc.named[T]
        cc = inc.chain_cnt[T]
        live = state == ST_LIVE
        need(not np.count_nonzero(named[~live]))
        need(not np.count_nonzero(cc[live | (state == ST_FREE)]))
        need((cc[state == ST_DEPOSITED] == 1).all())
        need(not np.count_nonzero(state[~live & (state != ST_DEPOSITED)] != ST_FREE))
        need(not np.count_nonzero(root & ~live))
        need(not np.count_nonzero(named[root]))
        kids = T[live & ~root]
        if not kids.size:
            return
        need((inc.named[kids] == 1).all())
        loc = inc.parent[kids]
        need((loc >= 0).all())
        p = loc // self.P
        i = loc % self.P
        need((st.t_state[p] == ST_LIVE).all())
        need((st.t_level[p] == st.t_level[kids] - 1).all())
        need((st.t_mm[p] == st.t_mm[kids]).all())
        r = st.t_row[p]
        need((st.e_kind[r, i] == 1).all())
        need((st.e_id[r, i] == kids).all())

    def claims_scalar(self, T: list[int]) -> None:
        st, inc = self.st, self.inc
        P = self.P
        roots = self.root_set()
        t_state, t_level, t_mm, t_row = st.t_state, st.t_level, st.t_mm, st.t_row
        named, cc, parent = inc.named, inc.chain_cnt, inc.parent
        for t in T:
            s = t_state[t]
            n = named[t]
            c = cc[t]
            if s == ST_LIVE:
                need(c == 0)
                if t in roots:
                    need(n == 0)
                    continue
                need(n == 1)
                loc = int(parent[t])
                need(loc >= 0)
                p, i = divmod(loc, P)
                need(t_state[p] == ST_LIVE and t_level[p] == t_level[t] - 1
                     and t_mm[p] == t_mm[t])
                r = t_row[p]
                need(st.e_kind[r, i] == 1 and st.e_id[r, i] == t)
            elif s == ST_DEPOSITED:
                need(n == 0 and c == 1 and t not in roots)
            else:
                need(s == ST_FREE and n == 0 and c == 0 and t not in roots)

    def vbase(self, tabs: list[int]) -> dict[int, int]:
        """The first page each (live, reached) table maps, from the naming entries."""
        st, inc = self.st, self.inc
        P = self.P
        parent = inc.parent
        out: dict[int, int] = {}
        t_level = st.t_level
        for t in tabs:
            lv = int(t_level[t])
            if lv == LV_PUD:
                out[t] = 0
                continue
            loc = int(parent[t])
            if loc < 0:
                raise Suspect
            if lv == LV_PMD:
                out[t] = (loc % P) * P * P
                continue
            up = int(parent[loc // P])
            if up < 0:
                raise Suspect
            out[t] = (up % P) * P * P + (loc % P) * P
        return out

    def vbase_array(self, tabs: Arr) -> Arr:
        """``vbase`` for many tables at once."""
        st, inc = self.st, self.inc
        P = self.P
        lv = st.t_level[tabs]
        vb = np.zeros(tabs.size, I64)
        pmd = lv == LV_PMD
        if np.count_nonzero(pmd):
            loc = inc.parent[tabs[pmd]]
            need((loc >= 0).all())
            vb[pmd] = (loc % P) * (P * P)
        pte = lv == LV_PTE
        if np.count_nonzero(pte):
            loc = inc.parent[tabs[pte]]
            need((loc >= 0).all())
            up = inc.parent[loc // P]
            need((up >= 0).all())
            vb[pte] = (up % P) * (P * P) + (loc % P) * P
        return vb

    def tables_over(self, ranges: list[tuple[int, int, int]]) -> list[int]:
        """The tables of each (mm, lo, hi) that map into the range: its PUD table, the PMD
        tables under the PUD entries there, the PTE tables under their PMD entries there."""
        st = self.st
        P = self.P
        pud_nr, pmd_nr, space, npt = P * P, P, self.space, self.npt
        tabs: list[int] = []
        for m, lo, hi in ranges:
            lo, hi = max(lo, 0), min(hi, space)
            if lo >= hi:
                continue
            pud = st.mms[m].pud_table
            tabs.append(pud)
            r = st.row(pud)
            K = st.e_kind[r].tolist()
            ids = st.e_id[r].tolist()
            for pi in range(lo // pud_nr, (hi - 1) // pud_nr + 1):
                if K[pi] != 1:
                    continue
                pmd = ids[pi]
                if not 1 <= pmd < npt:
                    raise Suspect
                tabs.append(pmd)
                a = max(lo, pi * pud_nr)
                b = min(hi, (pi + 1) * pud_nr)
                m0 = (a // pmd_nr) % P
                m1 = ((b - 1) // pmd_nr) % P + 1
                rp = st.row(pmd)
                kk = st.e_kind[rp, m0:m1].tolist()
                kid_ids = st.e_id[rp, m0:m1].tolist()
                for j, k in enumerate(kk):
                    if k == 1:
                        c = kid_ids[j]
                        if not 1 <= c < npt:
                            raise Suspect
                        tabs.append(c)
        return tabs

    # ------------------------------------------------------------------------------------
    # The small things, whole: pins, swap, per-mm accounting, stats
    # ------------------------------------------------------------------------------------

    def pins(self) -> None:
        st = self.st
        nf = self.nf
        for fid, page in st.pins.values():
            need(1 <= fid < nf and st.f_live[fid] and 0 <= page < st.f_nr[fid])

    def swap(self) -> None:
        st, inc = self.st, self.inc
        ns = min(st.next_slot, st.s_count.shape[0])
        if not self.swap_changed and ns == inc.m_s_count.size and (
                ns <= 1 or np.array_equal(st.s_count[:ns], inc.m_s_count)):
            return
        count = st.s_count[:ns]
        inc.m_s_count = count.copy()
        refs = inc.srefs
        need(inc.srefs_far == 0)
        need(not np.count_nonzero(refs[ns:]))
        if ns == 0:
            return
        need(refs[0] == 0)
        r = refs[:ns]
        need(not np.count_nonzero((r > 0) & (count == 0)))
        bad = (count != 0) & (count != r)
        bad[0] = False
        need(not np.count_nonzero(bad))

    def accounting(self) -> None:
        st, inc = self.st, self.inc
        rss = inc.rss_anon.tolist()
        swp = inc.rss_swap.tolist()
        tabs = inc.ntables.tolist()
        for mm in st.mms:
            m = mm.id
            if not mm.alive:
                need(mm.rss_anon == 0 and mm.rss_swap == 0 and mm.pgtables_bytes == 0)
                continue
            need(mm.rss_anon == rss[m] and mm.rss_swap == swp[m])
            need(mm.pgtables_bytes == PAGE_TABLE_BYTES * tabs[m])

    def stats(self) -> None:
        s = self.st.stats
        try:
            pmd, pud, node = s["mthp"]["pmd"], s["mthp"]["pud"], s["node"]
            have = [pmd["nr_anon"], pud["nr_anon"], pmd["nr_anon_partially_mapped"],
                    pud["nr_anon_partially_mapped"], node["nr_anon_mapped"],
                    node["nr_anon_thps"], node["nr_anon_pud_thps"]]
        except (KeyError, TypeError):
            raise Suspect from None
        need(have == self.inc.totals.tolist())

    def remember(self, dt: Arr, ch: Any) -> None:
        """The tables and mms as they are now become those of the last check (the folio
        phase remembers its folios): the entry rows that changed as far as any check looks
        (``ch``: the changes of the entry phase), the tables' state, level, mm, row and root
        word."""
        st, inc = self.st, self.inc
        if ch.shaped is not None:
            for r in ch.rows:
                inc.me_kind[r] = st.e_kind[r]
                inc.me_id[r] = st.e_id[r]
                inc.me_page[r] = st.e_page[r]
                inc.me_bits[r] = st.e_bits[r]
            for t in dt.tolist():
                inc.m_state[t] = st.t_state[t]
                inc.m_level[t] = st.t_level[t]
                inc.m_mm[t] = st.t_mm[t]
                inc.m_row[t] = st.t_row[t]
                inc.m_w16[t] = st.t_w16[t]
        elif dt.size:
            inc.m_w16[dt] = st.t_w16[dt]
            if ch.rows_whole:
                rows = np.concatenate(ch.rows_whole)
                inc.me_kind[rows] = st.e_kind[rows]
                inc.me_id[rows] = st.e_id[rows]
                inc.me_page[rows] = st.e_page[rows]
                inc.me_bits[rows] = st.e_bits[rows]
            if ch.rows_bits:
                rows = np.concatenate(ch.rows_bits)
                inc.me_bits[rows] = st.e_bits[rows]
            inc.m_state[dt] = st.t_state[dt]
            inc.m_level[dt] = st.t_level[dt]
            inc.m_mm[dt] = st.t_mm[dt]
            inc.m_row[dt] = st.t_row[dt]
        inc.m_vmas = self.vmas
        inc.m_alive = self.alive_list
        inc.m_pud = [mm.pud_table for mm in st.mms]
        if st.pins != inc.m_pins:
            inc.m_pins = dict(st.pins)
        if st.deferred != inc.m_deferred:
            inc.m_deferred = list(st.deferred)


def _vma_changes(old: tuple[tuple[int, int, str], ...], new: tuple[tuple[int, int, str], ...]
                 ) -> list[tuple[int, int]]:
    """The page ranges where what the checker sees of the VMAs differs between two layouts:
    inside one or not, writable or not (per stretch between boundaries), and a boundary
    that is only in one of them (a leaf straddles a VMA iff a boundary lies inside it)."""
    bo = {x for v in old for x in v[:2]}
    bn = {x for v in new for x in v[:2]}
    out = [(x - 1, x + 1) for x in sorted(bo ^ bn)]
    os_ = [v[0] for v in old]
    ns_ = [v[0] for v in new]

    def attr(vmas: tuple[tuple[int, int, str], ...], starts: list[int], x: int) -> int:
        k = bisect_right(starts, x) - 1
        if k < 0 or x >= vmas[k][1]:
            return 0
        return 2 if vmas[k][2] == "rw" else 1

    for a, b in pairwise(sorted(bo | bn)):
        if attr(old, os_, a) != attr(new, ns_, a):
            out.append((a, b))
    return out


class ChainWalker(DepositChains):
    """The deposit chains as the full checker walks them (``pudthp_fast.chains``); what is
    the incremental checker's own: a unit's huge entries counted from its row, the nodes
    checked empty in one pass at the end, and a broken chain a ``Suspect``."""

    def __init__(self, st: FastState, npt: int) -> None:
        super().__init__(st, npt)
        self.st = st

    def unit(self, u: int, level: int, mm: int) -> list[int]:
        """The nodes of table ``u``'s chain (its PMD ring, or its PUD stack with the rings of
        its PMD tables), checked against the huge entries of ``u``."""
        kinds = self.st.e_kind[int(self.st.t_row[u])]
        first = len(self.reached)
        try:
            if level == LV_PMD:
                self.pmd_unit(u, mm, int(np.count_nonzero((kinds == LEAF) | (kinds == ZERO))))
            else:
                self.pud_unit(u, mm, int(np.count_nonzero(kinds == LEAF)))
        except ChainBroken:
            raise Suspect from None
        return self.reached[first:]

    def check_empty(self) -> None:
        """Deposited tables hold no entries."""
        if not self.reached:
            return
        st = self.st
        rows = st.t_row[np.array(self.reached, I64)]
        rows = rows[rows != 0]
        if rows.size:
            need(not np.count_nonzero(st.e_kind[rows] != NONE))
