"""The fast checker's page-table walk: MODEL.md section 6 over the tables reachable from
the alive mms, as ``pudthp_ref.invariants_pgtable`` walks them, over arrays of entries.

Everything the reference recomputes while it walks (leaves and present PTEs per folio and
page, swap PTEs per slot, RSS and tables per mm) is gathered here as arrays for the folio
and accounting checks.  The reference reports the *first* broken invariant in the order
of its walk, so the same defect must get the same name here even when it breaks several
checks at once: each phase computes every check as a mask and keeps the earliest failure
(``Earliest``) under the reference's order, (mm, virtual page, level, check rank), with the
deposit chains of a PMD table after everything mapped below it and the PUD stack after the
whole mm, exactly where the reference walks them (``invariants_deposit``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pudthp_fast.invariants_deposit import ChainBroken, DepositChains, level_name, state_name
from pudthp_fast.state import (
    LEAF,
    LEVEL_CODE,
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
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PUD, LEVELS, InvariantViolation

I64 = np.int64

# Position of a check inside the reference's walk of one mm: the order key of an entry is
# ((mm * space + vpn) * 8 + sub) * RANKS + rank.
_SUB_PUD_TABLE, _SUB_PUD, _SUB_PMD, _SUB_PTE, _SUB_PMD_DEPOSIT, _SUB_PUD_STACK = 0, 1, 2, 3, 5, 6
RANKS = 64  # check ranks per position


def nz(mask: Arr) -> Arr:
    """np.flatnonzero of a 1-D mask, without its wrappers."""
    return mask.nonzero()[0]


# kinds a PTE table may hold (indexed by the kind byte)
_PTE_TABLE_KINDS = np.zeros(256, bool)
_PTE_TABLE_KINDS[[NONE, ZERO, PTE, SWAP]] = True
# folio classes of a folio id met in an entry
_F_OK, _F_UNKNOWN, _F_FREED = 0, 1, 2


class Earliest:
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
        if np.count_nonzero(mask):
            i = int(mask.argmax())
            self.offer(int(keys[i]) * RANKS + rank, name, describe(i))

    def throw(self) -> None:
        if self.key is not None:
            raise InvariantViolation(self.name, self.message)


class Ctx:
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


class Walk:
    """Everything the reference's walk recomputes, over arrays of entries."""

    def __init__(self, st: FastState, c: Ctx) -> None:
        self.st = st
        self.c = c
        self.e = Earliest()
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
            tkey = (m * space * 8 + _SUB_PUD_TABLE) * RANKS
            pud = int(mm.pud_table)
            if not 1 <= pud < npt or t_state[pud] == ST_FREE:
                e.offer(tkey, "pgtable.use_after_free", f"mm {m} PUD table {pud} not live")
            elif t_level[pud] != LEVEL_CODE[LEVEL_PUD]:
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
        rows2, m2, vb2, pud_leaves = self.upper(rows1, m1, vb1, LEVEL_CODE[LEVEL_PUD])
        # PMD entries: PTE tables below, PMD leaves and huge zero PMDs
        rows3, m3, vb3, pmd_huge = self.upper(rows2, m2, vb2, LEVEL_CODE[LEVEL_PMD])
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
        step = P * P if level == LEVEL_CODE[LEVEL_PUD] else P
        sub = _SUB_PUD if level == LEVEL_CODE[LEVEL_PUD] else _SUB_PMD
        er = st.t_row[rows]
        kinds = st.e_kind[er].reshape(-1)
        nzi = kinds.nonzero()[0]
        kind = kinds[nzi]
        rowbase = m * space + vbase

        def key_of(flat: int) -> int:
            return (int(rowbase[flat // P]) + (flat % P) * step) * 8 + sub

        where = "PUD entry" if level == LEVEL_CODE[LEVEL_PUD] else "PMD entry"
        ok = (kind == TABLE) | (kind == LEAF)
        if level == LEVEL_CODE[LEVEL_PMD]:
            ok |= kind == ZERO
        if not ok.all():
            j = int(nzi[int((~ok).argmax())])
            e.offer(
                key_of(j) * RANKS,
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
        if level == LEVEL_CODE[LEVEL_PMD]:
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
        good = nz(ok)
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
                int(key[j]) * RANKS + 4,
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
        npages, order = ((g.pud_nr, g.pud_order) if level == LEVEL_PUD
                         else (g.pmd_nr, g.pmd_order))
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
            u = nz(~covered)
            ke, fe = self.vma(rowbase[u][:, None] + np.arange(P))
            rw_dense = np.repeat(rw_rows[:, None], P, axis=1)
            rw_dense[u] = self.vrw[ke] & fe
            outside = (K[u] != NONE) & ~fe
            if np.count_nonzero(outside):
                j = int(outside.argmax())
                flat = int(u[j // P]) * P + j % P
                e.offer(key_of(flat) * RANKS, "geometry.outside_vma", f"{vpn_of(flat)}: no VMA")
        kinds = K.reshape(-1)
        bad = ~_PTE_TABLE_KINDS[kinds.view(np.uint8)]
        if np.count_nonzero(bad):
            j = int(bad.argmax())
            e.offer(
                key_of(j) * RANKS + 1,
                "pgtable.bad_entry",
                f"mm {m[j // P]} PTE table {rows[j // P]} entry {j % P} is of kind {kinds[j]}",
            )
        present = kinds == PTE
        pidx = nz(present)
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
        if np.count_nonzero(cls):
            for rank, code, name, what in (
                (2, _F_UNKNOWN, "folio.missing", "unknown"),
                (3, _F_FREED, "folio.freed_mapped", "freed"),
            ):
                hit = cls == code
                if np.count_nonzero(hit):
                    i = int(hit.argmax())
                    e.offer(
                        key_of(at(i)) * RANKS + rank,
                        name,
                        f"{vpn_of(at(i))} maps {what} folio {fid[i]}",
                    )
        nr = self.nr_ext[fc]
        bad = page.view(np.uint32) >= nr  # negative pages wrap to huge
        if np.count_nonzero(bad):
            i = int(bad.argmax())
            e.offer(
                key_of(at(i)) * RANKS + 4,
                "geometry.pte_index",
                f"{vpn_of(at(i))} maps page {page[i]} of {nr[i]}-page folio {fid[i]}",
            )
        gp = self.base_ext[fc] + page
        wr = (bits & W).view(bool)
        if np.count_nonzero(wr):
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
                    key_of(at(i)) * RANKS + 5,
                    "geometry.write_prot",
                    f"{vpn_of(at(i))}: writable in a VMA that is not rw",
                )
            wx = wr & ~np.take(st.p_exclusive, gp, mode="clip")
            if np.count_nonzero(wx):
                i = int(wx.argmax())
                e.offer(
                    key_of(at(i)) * RANKS + 6,
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
        if np.count_nonzero(is_swap):
            si = nz(is_swap)
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
        dep = nz(st.t_state[:npt] == ST_DEPOSITED)
        nonempty = np.zeros(npt, bool)
        nonempty[dep] = st.e_kind[st.t_row[dep]].any(axis=1)
        ch = DepositChains(st, npt, nonempty.tolist(), self.claimed)
        for key, kind, tid, mm, expected in units:
            if e.key is not None and key * RANKS > e.key:
                break
            try:
                if kind == 0:
                    ch.pmd_unit(tid, mm, expected)
                else:
                    ch.pud_unit(tid, mm, expected)
            except ChainBroken as b:
                e.offer(key * RANKS, b.name, b.message)
                break
        if ch.reached:
            # a node is reached only as a table of its unit's mm (DepositChains.node)
            reached = np.array(ch.reached, I64)
            self.claimed[reached] = True
            self.nr_tables += np.bincount(st.t_mm[reached], minlength=c.nmm)


def check_reachability(st: FastState, c: Ctx, w: Walk) -> None:
    """Every live or deposited table was reached (alive mms; dead ones were checked)."""
    npt = c.npt
    if npt <= 1:
        return
    leak = (st.t_state[1:npt] != ST_FREE) & ~w.claimed[1:npt]
    if np.count_nonzero(leak):
        t = int(leak.argmax()) + 1
        raise InvariantViolation(
            "pgtable.leak",
            f"{state_name(st.t_state[t])} {level_name(st.t_level[t])} table {t} of mm "
            f"{st.t_mm[t]} reached by no entry or chain",
        )
