"""Invariant checker of the fast model: MODEL.md section 6, recomputed over whole arrays.

The invariants and their names are those of ``pudthp_ref/invariants.py``; nothing is shared
with it but the names.  Everything the model keeps as a counter is recomputed from the page
tables reachable from the alive mms (``np.bincount`` of the mapped pages and folios, prefix
sums over the page pool for per-folio page counts) and compared as whole arrays.

The reference reports the *first* broken invariant in the order of its walk, so the same
defect must get the same name here even when it breaks several checks at once.  Each phase
therefore computes every check as a mask and keeps the earliest failure under the
reference's order:

- shapes: table id, then check rank; folio id, then check rank;
- the page-table walk: (mm, virtual page, level, check rank), with the deposit chains of a
  PMD table after everything mapped below it and the PUD stack after the whole mm, exactly
  where the reference walks them; the chains themselves are walked word by word in Python
  (they are short next to the pages), like the reference does (``pudthp_fast.chains``,
  the walk the incremental checker uses too);
- then reachability, pins, the deferred queue, the folios (folio id, then check rank), swap
  and per-mm accounting.

Any exception other than ``InvariantViolation`` met on a malformed state is reported as
``state.malformed`` (but ``MemoryError``: running out of memory is no state).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from pudthp_fast.chains import ChainBroken, DepositChains, level_name, state_name
from pudthp_fast.state import (
    LEAF,
    LV_PMD,
    LV_PTE,
    LV_PUD,
    NONE,
    NULL,
    PTE,
    ST_DEPOSITED,
    ST_FREE,
    ST_LIVE,
    SWAP,
    TABLE,
    ZERO,
    Arr,
    FastState,
    W,
)
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    GUP_PIN_COUNTING_BIAS,
    LEVELS,
    PAGE_TABLE_BYTES,
    PROTS,
    InvariantViolation,
)

I64 = np.int64

# Position of a check inside the reference's walk of one mm: the order key of an entry is
# ((mm * space + vpn) * 8 + sub) * _R + rank.
_SUB_PUD_TABLE, _SUB_PUD, _SUB_PMD, _SUB_PTE, _SUB_PMD_DEPOSIT, _SUB_PUD_STACK = 0, 1, 2, 3, 5, 6
_R = 64  # check ranks per position
_any = np.count_nonzero  # the cheapest "is any set" on small arrays


def _nz(mask: Arr) -> Arr:
    """np.flatnonzero of a 1-D mask, without its wrappers."""
    return mask.nonzero()[0]


# kinds a PTE table may hold (indexed by the kind byte)
_PTE_TABLE_KINDS = np.zeros(256, bool)
_PTE_TABLE_KINDS[[NONE, ZERO, PTE, SWAP]] = True
# folio classes of a folio id met in an entry
_F_OK, _F_UNKNOWN, _F_FREED = 0, 1, 2


def check_invariants(st: FastState) -> None:
    """Raise ``InvariantViolation`` on the first broken invariant of MODEL.md section 6."""
    try:
        _check(st)
    except InvariantViolation:
        raise
    except MemoryError:
        raise  # out of memory is no malformed state
    except Exception as e:
        raise InvariantViolation("state.malformed", f"checker met {type(e).__name__}: {e}") from e


def _fail(invariant: str, message: str) -> InvariantViolation:
    return InvariantViolation(invariant, message)


class _Earliest:
    """The earliest failure seen so far, by order key."""

    __slots__ = ("key", "message", "name")

    def __init__(self) -> None:
        self.key: int | None = None
        self.name = ""
        self.message = ""

    def offer(self, key: int, name: str, message: str) -> None:
        if self.key is None or key < self.key:
            self.key, self.name, self.message = key, name, message

    def first(
        self, mask: Arr, keys: Arr, rank: int, name: str, describe: Callable[[int], str]
    ) -> None:
        """Offer the first True of ``mask``; ``keys`` ascend along the mask."""
        if _any(mask):
            i = int(mask.argmax())
            self.offer(int(keys[i]) * _R + rank, name, describe(i))

    def throw(self) -> None:
        if self.key is not None:
            raise _fail(self.name, self.message)


class _Ctx:
    """Sizes and used-row counts of the state being checked."""

    __slots__ = ("P", "alive", "nf", "nmm", "npool", "npt", "space")

    def __init__(self, st: FastState) -> None:
        self.P = st.geom.P
        self.space = st.geom.space
        self.npt = min(st.next_pt, st.t_state.shape[0])
        self.nf = min(st.next_folio, st.f_live.shape[0])
        self.npool = min(st.next_page, st.p_mapcount.shape[0])
        self.nmm = len(st.mms)
        # one extra False for "no such mm"
        self.alive = np.array([mm.alive for mm in st.mms] + [False], dtype=bool)


def _check(st: FastState) -> None:
    c = _Ctx(st)
    _check_shapes(st, c)
    w = _Walk(st, c)
    w.run()
    _check_reachability(st, c, w)
    npins = _check_pins(st, c)
    _check_deferred_queue(st, c)
    _check_folios(st, c, w, npins)
    _check_swap(st, c, w)
    _check_mm_accounting(st, w)


# --------------------------------------------------------------------------------------
# Shapes: ids, levels, owners, VMA layout, folio orders
# --------------------------------------------------------------------------------------


def _check_shapes(st: FastState, c: _Ctx) -> None:
    space = c.space
    for i, mm in enumerate(st.mms):
        if mm.id != i:
            raise _fail("mm.id", f"mms[{i}] has id {mm.id}")
        prev_end = 0
        for v in mm.vmas:
            if v.prot not in PROTS:
                raise _fail("vma.prot", f"mm {i} VMA [{v.start}, {v.end}) prot {v.prot!r}")
            if not (prev_end <= v.start < v.end <= space):
                raise _fail(
                    "vma.layout",
                    f"mm {i} VMA [{v.start}, {v.end}) unsorted, overlapping, empty or outside "
                    f"[0, {space}) (previous end {prev_end})",
                )
            prev_end = v.end
    e = _Earliest()
    npt = c.npt
    if npt > 1:
        ids = np.arange(1, npt, dtype=I64)
        state = st.t_state[1:npt]
        level = st.t_level[1:npt]
        tmm = st.t_mm[1:npt].astype(I64)
        used = state != ST_FREE
        e.first(
            (state < 0) | (state > ST_DEPOSITED),
            ids,
            0,
            "pgtable.state",
            lambda i: f"table {ids[i]} state {state[i]}",
        )
        e.first(
            used & ((level < 0) | (level > LV_PTE)),
            ids,
            1,
            "pgtable.level",
            lambda i: f"table {ids[i]} level {level[i]}",
        )
        bad_mm = (tmm < 0) | (tmm >= c.nmm)
        e.first(
            used & bad_mm,
            ids,
            2,
            "pgtable.wrong_mm",
            lambda i: f"table {ids[i]} owned by unknown mm {tmm[i]}",
        )
        dead = used & ~c.alive[np.where(bad_mm, c.nmm, tmm)]
        e.first(
            dead,
            ids,
            3,
            "dead_mm.tables",
            lambda i: f"{state_name(state[i])} {level_name(level[i])} table {ids[i]} owned "
            f"by dead mm {tmm[i]}",
        )
        e.throw()
    for mm in st.mms:
        if not mm.alive and 1 <= mm.pud_table < npt and st.t_state[mm.pud_table] != ST_FREE:
            raise _fail("dead_mm.tables", f"dead mm {mm.id} PUD table {mm.pud_table} not freed")
    nf = c.nf
    if nf > 1:
        g = st.geom
        fids = np.arange(1, nf, dtype=I64)
        order = st.f_order[1:nf].astype(I64)
        nr = st.f_nr[1:nf]
        base = st.f_base[1:nf]
        is_folio = st.f_live[1:nf] | (nr != 0)
        ok_order = (order == 0) | (order == g.pmd_order) | (order == g.pud_order)
        e.first(
            is_folio & ~ok_order,
            fids,
            0,
            "folio.order",
            lambda i: f"folio {fids[i]} order {order[i]} not in (0, {g.pmd_order}, {g.pud_order})",
        )
        e.first(
            is_folio & ok_order & (nr != np.left_shift(1, np.where(ok_order, order, 0))),
            fids,
            1,
            "folio.nr",
            lambda i: f"folio {fids[i]} order {order[i]} nr {nr[i]}",
        )
        e.first(
            is_folio & ((base < 0) | (base + nr > c.npool)),
            fids,
            2,
            "folio.shape",
            lambda i: f"folio {fids[i]} pages [{base[i]}, {base[i] + nr[i]}) outside the pool "
            f"[0, {c.npool})",
        )
        e.throw()


# --------------------------------------------------------------------------------------
# The page-table walk
# --------------------------------------------------------------------------------------


class _Walk:
    """Everything the reference's walk recomputes, over arrays of entries."""

    def __init__(self, st: FastState, c: _Ctx) -> None:
        self.st = st
        self.c = c
        self.e = _Earliest()
        n = c.nmm
        self.rss_anon = np.zeros(n, I64)
        self.rss_swap = np.zeros(n, I64)
        self.nr_tables = np.zeros(n, I64)
        self.claimed = np.zeros(c.npt, bool)
        self.mms_walked = 0
        empty = np.zeros(0, I64)
        # valid THP leaves (PUD and PMD level): folio, mm
        self.leaf_fid = empty
        self.leaf_mm = empty
        # present PTEs: folio, page of the pool (in walk order, so grouped by mm: the PTE
        # tables' mms and how many present PTEs each holds give each PTE's mm)
        self.pte_fid: Arr = np.zeros(0, np.int32)
        self.pte_gp = empty
        self.pte_row_mm = empty
        self.pte_row_end = empty
        self.swap_slots = empty
        # VMAs of all alive mms as one sorted list of global pages mm * space + vpn, with a
        # dummy first VMA that contains nothing, so a lookup index is never negative
        starts = [-2]
        ends = [-1]
        rw = [False]
        for mm in st.mms:
            if mm.alive:
                off = mm.id * c.space
                for v in mm.vmas:
                    starts.append(off + v.start)
                    ends.append(off + v.end)
                    rw.append(v.prot == "rw")
        # per folio id (and one row past the end for ids out of range): its class, nr, base
        nf = c.nf
        live = st.f_live[:nf]
        nr = st.f_nr[:nf]
        self.fclass = np.full(nf + 1, _F_UNKNOWN, np.int8)
        self.fclass[:nf] = np.where(live, _F_OK, np.where(nr != 0, _F_FREED, _F_UNKNOWN))
        self.fclass[0] = _F_UNKNOWN
        self.nr_ext = np.zeros(nf + 1, I64)
        self.nr_ext[:nf] = nr
        self.base_ext = np.zeros(nf + 1, I64)
        self.base_ext[:nf] = st.f_base[:nf]
        self.vstart = np.array(starts, I64)
        self.vend = np.array(ends, I64)
        self.vrw = np.array(rw, bool)

    def pte_mm(self, pos: Arr) -> Arr:
        """The mm of the present PTEs at positions ``pos`` of ``pte_fid`` / ``pte_gp``."""
        return self.pte_row_mm[np.searchsorted(self.pte_row_end, pos, side="right")]

    def pte_mm_segments(self) -> list[tuple[int, int, int]]:
        """(mm, first, end) of each mm's run of present PTEs (the walk goes mm by mm)."""
        out: list[tuple[int, int, int]] = []
        m, end = self.pte_row_mm, self.pte_row_end
        if not m.size:
            return out
        cuts = (m[1:] != m[:-1]).nonzero()[0]
        first = 0
        for k in [*cuts.tolist(), m.size - 1]:
            out.append((int(m[k]), first, int(end[k])))
            first = int(end[k])
        return out

    def vma(self, gv: Arr) -> tuple[Arr, Arr]:
        """The VMA index holding each global page, and whether there is one."""
        k = np.searchsorted(self.vstart, gv, side="right") - 1
        return k, gv < self.vend[k]

    # ----------------------------------------------------------------------------------

    def run(self) -> None:
        st, c, e = self.st, self.c, self.e
        space = c.space
        npt = c.npt
        t_state = st.t_state
        t_level = st.t_level
        t_mm = st.t_mm
        pud_rows: list[int] = []
        pud_mms: list[int] = []
        for mm in st.mms:
            if not mm.alive:
                continue
            self.mms_walked += 1
            m = mm.id
            tkey = (m * space * 8 + _SUB_PUD_TABLE) * _R
            pud = int(mm.pud_table)
            if not 1 <= pud < npt or t_state[pud] == ST_FREE:
                e.offer(tkey, "pgtable.use_after_free", f"mm {m} PUD table {pud} not live")
            elif t_level[pud] != LV_PUD:
                e.offer(
                    tkey + 1,
                    "pgtable.wrong_level",
                    f"mm {m} PUD table {pud} is a {level_name(t_level[pud])} table",
                )
            elif t_mm[pud] != m:
                e.offer(
                    tkey + 2,
                    "pgtable.wrong_mm",
                    f"mm {m} PUD table {pud} belongs to mm {t_mm[pud]}",
                )
            elif t_state[pud] != ST_LIVE:
                e.offer(
                    tkey + 3,
                    "pgtable.state",
                    f"mm {m} PUD table {pud} is {state_name(t_state[pud])}",
                )
            elif self.claimed[pud]:
                e.offer(
                    tkey + 4,
                    "pgtable.double_reference",
                    f"pud table {pud} reached as mm {m} PUD table and before",
                )
            else:
                self.claimed[pud] = True
                self.nr_tables[m] += 1
                pud_rows.append(pud)
                pud_mms.append(m)
        rows1 = np.array(pud_rows, I64)
        m1 = np.array(pud_mms, I64)
        vb1 = np.zeros(rows1.size, I64)
        # PUD entries: PMD tables below, PUD leaves
        rows2, m2, vb2, pud_leaves = self.upper(rows1, m1, vb1, LV_PUD)
        # PMD entries: PTE tables below, PMD leaves and huge zero PMDs
        rows3, m3, vb3, pmd_huge = self.upper(rows2, m2, vb2, LV_PMD)
        self.ptes(rows3, m3, vb3)
        self.chains(rows1, m1, pud_leaves, rows2, m2, vb2, pmd_huge)
        e.throw()

    def upper(
        self, rows: Arr, m: Arr, vbase: Arr, level: int
    ) -> tuple[Arr, Arr, Arr, Arr]:
        """_walk_mm() / _walk_pmd() over the entries of PUD or PMD tables ``rows`` (of mms
        ``m``, mapping from ``vbase``): table entries, leaves, the huge zero PMD.

        Returns the live lower tables reached (ids, mms, vbases, in walk order) and, per
        table of ``rows``, its huge entries (leaves and huge zero PMDs)."""
        st, c, e = self.st, self.c, self.e
        P, space = c.P, c.space
        n = rows.size
        empty = np.zeros(0, I64)
        if n == 0:
            return empty, empty, empty, empty
        step = P * P if level == LV_PUD else P
        sub = _SUB_PUD if level == LV_PUD else _SUB_PMD
        er = st.t_row[rows]
        kinds = st.e_kind[er].reshape(-1)
        nzi = kinds.nonzero()[0]
        kind = kinds[nzi]
        rowbase = m * space + vbase

        def key_of(flat: int) -> int:
            return (int(rowbase[flat // P]) + (flat % P) * step) * 8 + sub

        where = "PUD entry" if level == LV_PUD else "PMD entry"
        ok = (kind == TABLE) | (kind == LEAF)
        if level == LV_PMD:
            ok |= kind == ZERO
        if not ok.all():
            j = int(nzi[int((~ok).argmax())])
            e.offer(
                key_of(j) * _R,
                "pgtable.bad_entry",
                f"mm {m[j // P]} {level_name(level).upper()} table {rows[j // P]} entry "
                f"{j % P} is of kind {kinds[j]}",
            )
        ids = st.e_id[er].reshape(-1)
        # table entries
        sel = nzi[kind == TABLE]
        if sel.size:
            srow = sel // P
            child = ids[sel]
            cm = m[srow]
            keys = (rowbase[srow] + (sel % P) * step) * 8 + sub
            keep = self.children(keys, child, cm, level + 1, where)
            lower = child[keep]
            lower_m = cm[keep]
            lower_vb = vbase[srow[keep]] + (sel[keep] % P) * step
        else:
            lower = lower_m = lower_vb = empty
        # huge entries
        is_huge = kind == LEAF
        if level == LV_PMD:
            is_huge |= kind == ZERO
        sel = nzi[is_huge]
        huge_per_row = np.bincount(sel // P, minlength=n)
        if sel.size:
            srow = sel // P
            gv = rowbase[srow] + (sel % P) * step
            self.huge(
                gv * 8 + sub,
                gv,
                ids[sel],
                st.e_bits[er].reshape(-1)[sel],
                kinds[sel] == ZERO,
                m[srow],
                level_name(level),
            )
        return lower, lower_m, lower_vb, huge_per_row

    def children(self, key: Arr, child: Arr, m: Arr, level: int, what: str) -> Arr:
        """_live_child(): the table entries naming a live table of the right level and mm,
        each claimed once; returns the indices (into ``key``) of the first claims."""
        st, e = self.st, self.e
        if key.size == 0:
            return np.zeros(0, I64)
        npt = self.c.npt
        inr = (child >= 1) & (child < npt)
        cc = np.where(inr, child, 0)
        state = st.t_state[cc]
        lv = st.t_level[cc]
        tmm = st.t_mm[cc]
        ok = inr & (state == ST_LIVE) & (lv == level) & (tmm == m)
        if not ok.all():
            self.bad_children(key, child, m, level, what, inr, cc, state, lv, tmm)
        good = _nz(ok)
        tids = cc[good].tolist()
        if len(set(tids)) != len(tids):
            first: dict[int, int] = {}
            dups = []
            for k, t in enumerate(tids):
                if t in first:
                    dups.append(k)
                else:
                    first[t] = k
            j = int(good[dups[0]])
            e.offer(
                int(key[j]) * _R + 4,
                "pgtable.double_reference",
                f"{LEVELS[level]} table {cc[j]} reached twice (again as mm {m[j]} {what})",
            )
            good = good[sorted(first.values())]
        self.claimed[cc[good]] = True
        self.nr_tables += np.bincount(m[good], minlength=self.c.nmm)
        return good

    def bad_children(
        self,
        key: Arr,
        child: Arr,
        m: Arr,
        level: int,
        what: str,
        inr: Arr,
        cc: Arr,
        state: Arr,
        lv: Arr,
        tmm: Arr,
    ) -> None:
        """The first broken table entry among ``key``, as _live_child() checks it."""
        e = self.e
        want = LEVELS[level]
        uaf = ~inr | (state == ST_FREE)
        e.first(
            uaf,
            key,
            0,
            "pgtable.use_after_free",
            lambda i: f"mm {m[i]} {what} names no live table ({child[i]})",
        )
        wrong_level = lv != level
        e.first(
            wrong_level,
            key,
            1,
            "pgtable.wrong_level",
            lambda i: f"mm {m[i]} {what} names {level_name(lv[i])} table {cc[i]}, "
            f"expected {want}",
        )
        wrong_mm = tmm != m
        e.first(
            wrong_mm,
            key,
            2,
            "pgtable.wrong_mm",
            lambda i: f"mm {m[i]} {what} names table {cc[i]} of mm {tmm[i]}",
        )
        not_live = state != ST_LIVE
        e.first(
            not_live,
            key,
            3,
            "pgtable.state",
            lambda i: f"mm {m[i]} {what} names {state_name(state[i])} table {cc[i]}",
        )

    def huge(
        self, key: Arr, gv: Arr, fid: Arr, bits: Arr, zero: Arr, m: Arr, level: str
    ) -> None:
        """_leaf() / _leaf_vma(): PUD/PMD leaves and huge zero PMDs."""
        if key.size == 0:
            return
        st, c, e = self.st, self.c, self.e
        g = st.geom
        npages, order = (g.pud_nr, g.pud_order) if level == "pud" else (g.pmd_nr, g.pmd_order)
        up = level.upper()
        vbase = gv - m * c.space
        k, found = self.vma(gv)
        e.first(
            ~found,
            key,
            0,
            "geometry.outside_vma",
            lambda i: f"mm {m[i]} {up} leaf at vpn {vbase[i]}: no VMA",
        )
        e.first(
            found & (self.vend[k] < gv + npages),
            key,
            1,
            "geometry.leaf_straddles_vma",
            lambda i: f"mm {m[i]} {up} leaf at vpn {vbase[i]} ({npages} pages) crosses the end "
            "of its VMA",
        )
        thp = ~zero
        inr = (fid >= 1) & (fid < c.nf)
        fc = np.where(inr, fid, 0)
        live = st.f_live[fc]
        inr &= live | (st.f_nr[fc] != 0)  # a row never used is no folio
        e.first(
            thp & ~inr,
            key,
            2,
            "folio.missing",
            lambda i: f"mm {m[i]} {up} leaf at vpn {vbase[i]} maps unknown folio {fid[i]}",
        )
        e.first(
            thp & ~live,
            key,
            3,
            "folio.freed_mapped",
            lambda i: f"mm {m[i]} {up} leaf at vpn {vbase[i]} maps freed folio {fid[i]}",
        )
        f_order = st.f_order[fc]
        e.first(
            thp & (f_order != order),
            key,
            4,
            "geometry.leaf_order",
            lambda i: f"mm {m[i]} {up} leaf at vpn {vbase[i]} maps folio {fid[i]} of order "
            f"{f_order[i]}",
        )
        wr = thp & ((bits & W) != 0)
        e.first(
            wr & ~self.vrw[k],
            key,
            5,
            "geometry.write_prot",
            lambda i: f"mm {m[i]} {up} leaf at vpn {vbase[i]} writable in a VMA that is not rw",
        )
        head = np.take(st.p_exclusive, st.f_base[fc], mode="clip")
        e.first(
            wr & ~head,
            key,
            6,
            "anon_exclusive.writable",
            lambda i: f"mm {m[i]} {up} leaf at vpn {vbase[i]} writable, head of {fid[i]} not "
            "exclusive",
        )
        self.leaf_fid = np.concatenate((self.leaf_fid, fid[thp]))
        self.leaf_mm = np.concatenate((self.leaf_mm, m[thp]))
        self.rss_anon += np.bincount(m[thp], minlength=c.nmm) * npages

    def ptes(self, rows: Arr, m: Arr, vbase: Arr) -> None:
        """_walk_pte(): every non-none PTE of the live PTE tables.

        The hot loop of the reference (up to P*P PTEs per split PUD folio): here dense
        (tables x P) blocks, the PTE arrays taken whole, and per-folio lookups through one
        class row per folio.  Order keys are computed only for a failing entry.
        """
        if rows.size == 0:
            return
        st, c, e = self.st, self.c, self.e
        P, space = c.P, c.space
        er = st.t_row[rows]  # entry rows of the tables
        K = st.e_kind[er]
        rowbase = m * space + vbase

        def key_of(flat: int) -> int:
            return (int(rowbase[flat // P]) + flat % P) * 8 + _SUB_PTE

        def vpn_of(flat: int) -> str:
            row = flat // P
            return f"mm {m[row]} PTE at vpn {int(vbase[row]) + flat % P}"

        # the VMA of each table's range; per entry only where a table is not inside one VMA
        kt, ft = self.vma(rowbase)
        covered = ft & (self.vend[kt] >= rowbase + P)
        rw_rows = self.vrw[kt] & covered
        rw_dense: Arr | None = None
        if not covered.all():
            u = _nz(~covered)
            ke, fe = self.vma(rowbase[u][:, None] + np.arange(P))
            rw_dense = np.repeat(rw_rows[:, None], P, axis=1)
            rw_dense[u] = self.vrw[ke] & fe
            outside = (K[u] != NONE) & ~fe
            if _any(outside):
                j = int(outside.argmax())
                flat = int(u[j // P]) * P + j % P
                e.offer(key_of(flat) * _R, "geometry.outside_vma", f"{vpn_of(flat)}: no VMA")
        kinds = K.reshape(-1)
        bad = ~_PTE_TABLE_KINDS[kinds.view(np.uint8)]
        if _any(bad):
            j = int(bad.argmax())
            e.offer(
                key_of(j) * _R + 1,
                "pgtable.bad_entry",
                f"mm {m[j // P]} PTE table {rows[j // P]} entry {j % P} is of kind {kinds[j]}",
            )
        present = kinds == PTE
        pidx = _nz(present)
        full = pidx.size == kinds.size
        fid = st.e_id[er].reshape(-1)
        page = st.e_page[er].reshape(-1)
        bits = st.e_bits[er].reshape(-1)
        if not full:
            fid = fid[pidx]
            page = page[pidx]
            bits = bits[pidx]

        def at(i: int) -> int:
            return i if full else int(pidx[i])

        fc = np.minimum(fid.view(np.uint32), c.nf)  # negative ids wrap past: no folio
        cls = self.fclass[fc]
        if _any(cls):
            for rank, code, name, what in (
                (2, _F_UNKNOWN, "folio.missing", "unknown"),
                (3, _F_FREED, "folio.freed_mapped", "freed"),
            ):
                hit = cls == code
                if _any(hit):
                    i = int(hit.argmax())
                    e.offer(
                        key_of(at(i)) * _R + rank,
                        name,
                        f"{vpn_of(at(i))} maps {what} folio {fid[i]}",
                    )
        nr = self.nr_ext[fc]
        bad = page.view(np.uint32) >= nr  # negative pages wrap to huge
        if _any(bad):
            i = int(bad.argmax())
            e.offer(
                key_of(at(i)) * _R + 4,
                "geometry.pte_index",
                f"{vpn_of(at(i))} maps page {page[i]} of {nr[i]}-page folio {fid[i]}",
            )
        gp = self.base_ext[fc] + page
        wr = (bits & W).view(bool)
        if _any(wr):
            if rw_dense is None and rw_rows.all():
                wp = None
            elif rw_dense is None:
                rw_e = np.repeat(rw_rows, P)
                wp = wr & ~(rw_e if full else rw_e[pidx])
            else:
                rw_e = rw_dense.reshape(-1)
                wp = wr & ~(rw_e if full else rw_e[pidx])
            if wp is not None and wp.any():
                i = int(wp.argmax())
                e.offer(
                    key_of(at(i)) * _R + 5,
                    "geometry.write_prot",
                    f"{vpn_of(at(i))}: writable in a VMA that is not rw",
                )
            wx = wr & ~np.take(st.p_exclusive, gp, mode="clip")
            if _any(wx):
                i = int(wx.argmax())
                e.offer(
                    key_of(at(i)) * _R + 6,
                    "anon_exclusive.writable",
                    f"{vpn_of(at(i))}: writable, page {page[i]} of folio {fid[i]} not exclusive",
                )
        self.pte_fid = fid  # int32, a view of the rows' ids where every entry is present
        self.pte_gp = gp
        per_row = present.reshape(rows.size, P).sum(axis=1)
        self.pte_row_mm = m
        self.pte_row_end = np.cumsum(per_row)
        self.rss_anon += np.bincount(m, weights=per_row, minlength=c.nmm).astype(I64)
        is_swap = kinds == SWAP
        if _any(is_swap):
            si = _nz(is_swap)
            self.swap_slots = st.e_id[er].reshape(-1)[si].astype(I64)
            self.rss_swap += np.bincount(m[si // P], minlength=c.nmm)

    # ----------------------------------------------------------------------------------
    # Deposit chains, word by word
    # ----------------------------------------------------------------------------------

    def chains(
        self,
        rows1: Arr,
        m1: Arr,
        pud_leaves: Arr,
        rows2: Arr,
        m2: Arr,
        vb2: Arr,
        pmd_huge: Arr,
    ) -> None:
        """The PMD-level rings of the live PMD tables (after everything mapped below each)
        and the PUD stack of each mm (after its whole walk), in walk order."""
        st, c, e = self.st, self.c, self.e
        P, space = c.P, c.space
        # which units have anything to walk or count
        w16_2 = st.t_w16[rows2]
        busy2 = np.flatnonzero((w16_2 != NULL) | (pmd_huge != 0))
        busy1 = np.flatnonzero((st.t_w16[rows1] != NULL) | (pud_leaves != 0))
        if busy1.size == 0 and busy2.size == 0:
            return
        units: list[tuple[int, int, int, int, int]] = []  # key, kind, table, mm, expected
        for tid, mm, vb, h in zip(
            rows2[busy2].tolist(),
            m2[busy2].tolist(),
            vb2[busy2].tolist(),
            pmd_huge[busy2].tolist(),
            strict=True,
        ):
            units.append(((mm * space + vb + P * P - 1) * 8 + _SUB_PMD_DEPOSIT, 0, tid, mm, h))
        for tid, mm, n in zip(
            rows1[busy1].tolist(), m1[busy1].tolist(), pud_leaves[busy1].tolist(), strict=True
        ):
            units.append(((mm * space + space - 1) * 8 + _SUB_PUD_STACK, 1, tid, mm, n))
        units.sort()
        # whether a deposited table has any entry (a chain node is always deposited): checked
        # as each node is reached, where the reference checks it
        npt = c.npt
        dep = _nz(st.t_state[:npt] == ST_DEPOSITED)
        nonempty = np.zeros(npt, bool)
        nonempty[dep] = st.e_kind[st.t_row[dep]].any(axis=1)
        ch = DepositChains(st, npt, nonempty.tolist(), self.claimed)
        for key, kind, tid, mm, expected in units:
            if e.key is not None and key * _R > e.key:
                break
            try:
                if kind == 0:
                    ch.pmd_unit(tid, mm, expected)
                else:
                    ch.pud_unit(tid, mm, expected)
            except ChainBroken as b:
                e.offer(key * _R, b.name, b.message)
                break
        if ch.reached:
            # a node is reached only as a table of its unit's mm (DepositChains.node)
            reached = np.array(ch.reached, I64)
            self.claimed[reached] = True
            self.nr_tables += np.bincount(st.t_mm[reached], minlength=c.nmm)


def _check_reachability(st: FastState, c: _Ctx, w: _Walk) -> None:
    """Every live or deposited table was reached (alive mms; dead ones were checked)."""
    npt = c.npt
    if npt <= 1:
        return
    leak = (st.t_state[1:npt] != ST_FREE) & ~w.claimed[1:npt]
    if _any(leak):
        t = int(leak.argmax()) + 1
        raise _fail(
            "pgtable.leak",
            f"{state_name(st.t_state[t])} {level_name(st.t_level[t])} table {t} of mm "
            f"{st.t_mm[t]} reached by no entry or chain",
        )


# --------------------------------------------------------------------------------------
# Pins, the deferred queue, folios
# --------------------------------------------------------------------------------------


def _check_pins(st: FastState, c: _Ctx) -> Arr:
    npins = np.zeros(max(c.nf, 1), I64)
    for pid, (fid, page) in sorted(st.pins.items()):
        if not 1 <= fid < c.nf or not (st.f_live[fid] or st.f_nr[fid]):
            raise _fail("pin.missing_folio", f"pin {pid} names unknown folio {fid}")
        if not st.f_live[fid]:
            raise _fail("freed.pinned", f"pin {pid} holds freed folio {fid}")
        if not 0 <= page < st.f_nr[fid]:
            raise _fail("pin.page", f"pin {pid} page {page} of {st.f_nr[fid]}-page folio {fid}")
        npins[fid] += 1
    return npins


def _check_deferred_queue(st: FastState, c: _Ctx) -> None:
    dq = st.deferred
    if not dq:
        return
    if len(set(dq)) != len(dq):
        raise _fail("deferred.duplicate", f"deferred queue {dq} has duplicates")
    q = np.array(dq, I64)
    pos = np.arange(q.size, dtype=I64)
    inr = (q >= 1) & (q < c.nf)
    qc = np.where(inr, q, 0)
    live = st.f_live[qc]
    e = _Earliest()
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


def _check_folios(st: FastState, c: _Ctx, w: _Walk, npins: Arr) -> None:
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
        bad_pages = _range_counts(mismatch, lo, hi) if _any(mismatch) else np.zeros(nf, I64)
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
        e = _Earliest()
        fids = np.arange(nf, dtype=I64)
        queued = np.zeros(nf, bool)
        queued[np.array(st.deferred, I64)] = True
        _check_freed(st, e, fids, ~live, total, bad_pages, nf)
        small = live & (order == 0)
        _check_small(st, e, fids, small, ptes, bad_pages, npins, multi, nf)
        large = _nz(live & (order != 0))
        pages_mapped = np.zeros(0, I64)
        if large.size:
            llo, lhi = lo[large], hi[large]
            pages_mapped = _range_counts(cnt_page, llo, lhi)
            # an exclusive page matters only to a folio with two entire mappings, or with
            # mappings in two mms
            if multi is not None or _any(leaves[large] >= 2):
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
            _R - 2,
            "deferred.partially_mapped_not_queued",
            lambda i: f"folio {i} partially mapped but not on the deferred list",
        )
        e.first(
            live & deferred & ~queued,
            fids,
            _R - 1,
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
    st: FastState, e: _Earliest, fids: Arr, freed: Arr, total: Arr, bad_pages: Arr, nf: int
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
    if not _any(bad):
        return
    for rank, (mask, name, describe) in enumerate(checks):
        e.first(bad & mask, fids, rank, name, describe)


def _check_small(
    st: FastState,
    e: _Earliest,
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
    if not _any(off_path):
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
    c: _Ctx,
    w: _Walk,
    e: _Earliest,
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
        sel = _nz(pf >= 0)
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
    if not _any(np.logical_or.reduce([mask for mask, _, _ in checks])):
        return
    # ranks stay below the two deferred-queue checks (_R - 2, _R - 1)
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
            raise _fail("stats.missing", f"stats has no {'.'.join(path)}")
        v = v[k]
    if v != expected:
        raise _fail(name, f"{'.'.join(path)} is {v!r}, folios say {expected}")


# --------------------------------------------------------------------------------------
# Swap and per-mm accounting (check_mm)
# --------------------------------------------------------------------------------------


def _check_swap(st: FastState, c: _Ctx, w: _Walk) -> None:
    ns = min(st.next_slot, st.s_count.shape[0])
    slots = w.swap_slots
    count = st.s_count[:ns] if ns > 0 else np.zeros(1, I64)
    if slots.size:
        inr = (slots >= 1) & (slots < ns)
        missing = ~inr | (count[np.where(inr, slots, 0)] == 0)
        if _any(missing):
            s = int(slots[int(missing.argmax())])
            n = int((slots == s).sum())
            raise _fail("swap.missing_slot", f"{n} swap PTEs name missing slot {s}")
    if ns <= 1:
        return
    refs = np.bincount(slots, minlength=ns)[:ns]
    bad = (count != 0) & (count != refs)
    bad[0] = False
    if _any(bad):
        s = int(bad.argmax())
        raise _fail("swap.count", f"slot {s} count {count[s]}, {refs[s]} swap PTEs")


def _check_mm_accounting(st: FastState, w: _Walk) -> None:
    for mm in st.mms:
        m = mm.id
        if not mm.alive:
            if mm.rss_anon != 0 or mm.rss_swap != 0:
                raise _fail("dead_mm.rss", f"dead mm {m} rss anon {mm.rss_anon} swap {mm.rss_swap}")
            if mm.pgtables_bytes != 0:
                raise _fail(
                    "dead_mm.pgtables_bytes", f"dead mm {m} pgtables_bytes {mm.pgtables_bytes}"
                )
            continue
        if mm.rss_anon != w.rss_anon[m]:
            raise _fail(
                "rss.anon", f"mm {m} MM_ANONPAGES {mm.rss_anon}, page tables map {w.rss_anon[m]}"
            )
        if mm.rss_swap != w.rss_swap[m]:
            raise _fail("rss.swap", f"mm {m} MM_SWAPENTS {mm.rss_swap}, {w.rss_swap[m]} swap PTEs")
        expected = PAGE_TABLE_BYTES * int(w.nr_tables[m])
        if mm.pgtables_bytes != expected:
            raise _fail(
                "pgtables_bytes",
                f"mm {m} pgtables_bytes {mm.pgtables_bytes}, {w.nr_tables[m]} tables "
                f"live or deposited ({expected})",
            )
