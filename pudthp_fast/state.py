"""State of the fast model as struct-of-arrays: page tables, folios, the page pool, swap; and
the helpers that read and write entries over those arrays.

Every table, folio and swap slot is a row of numpy arrays indexed by its id (row 0 unused,
ids start at 1, as in the reference).  Arrays grow in chunks: what is needed, rounded up to
half the current size (a quarter for the page pool) or a geometry-sized minimum (a PUD
folio's pages for the pool, a PUD split's tables for the entry rows), never by doubling
the pool for one page.  Per-page folio state lives in one page pool: a folio owns
``[f_base, f_base + f_nr)`` of ``p_mapcount``, ``p_exclusive`` and ``p_data``, so splitting
a folio hands its tail pages to the new folios without copying.

Entries live in rows of ``e_kind``/``e_id``/``e_page``/``e_bits`` that are separate from
table ids: ``t_row[id]`` is the table's row, 0 while it has none (row 0 is all-none and
never written).  A row is taken on the first write (``wrow``) and given back, cleared,
when the table is freed, so the many empty deposited tables cost no entry storage.

Entry encoding (``e_kind`` per row and index):
    0 none, 1 table (``e_id`` = table id), 2 huge leaf (``e_id`` = folio), 3 zero (huge zero
    PMD or zero-page PTE), 4 present PTE (``e_id`` = folio, ``e_page`` = page in folio),
    5 swap PTE (``e_id`` = slot).  ``e_bits``: 1 write, 2 dirty, 4 young.
Raw ptdesc words ``t_w8`` / ``t_w16``: 0 NULL, a table id, or ``POISON1`` / ``POISON2``.
A table's level ``t_level`` is the index of its name in ``spec.LEVELS`` (``LEVEL_CODE``).

Hot paths come in two variants, a Python loop for a few entries (numpy's fixed cost per
call would dominate at small geometry) and numpy above; ``Paths`` says which one runs and
counts what ran (``FAST_PATHS``: by size as tuned, or one variant always, so a campaign
cross-checks both against the reference).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from pudthp_ref.spec import LEVEL_PTE, LEVELS, Config, Geometry, ModelBug, empty_stats

NONE, TABLE, LEAF, ZERO, PTE, SWAP = 0, 1, 2, 3, 4, 5
W, D, Y = 1, 2, 4  # entry bits: write, dirty, young
NULL = 0
POISON1 = -1  # LIST_POISON1
POISON2 = -2  # LIST_POISON2

LEVEL_CODE: dict[str, int] = {name: i for i, name in enumerate(LEVELS)}  # t_level values
ST_FREE, ST_LIVE, ST_DEPOSITED = 0, 1, 2

SMALL = 48
"""Up to this many entries (a small multiple of it on some paths) a hot path runs its
Python loop, above it numpy."""

FAST_PATHS: dict[str, int] = {"default": SMALL, "numpy": -1, "python": 1 << 62}
"""The variants a run may ask for (a program's ``meta.fast_paths``, ``harness.runner``): by
size as tuned, numpy always, Python loops always; the value is ``Paths.small``."""

HOT_PATHS: tuple[str, ...] = ("copy_pmd_range", "copy_pte_range", "zap_pte_range",
                              "zap_pmd_range", "free_pgtables", "pt_free_many")
"""The paths with two variants, as ``Paths.taken`` names them (``NAME:python``,
``NAME:numpy``)."""

_PATH_KEYS = {(p, small): f"{p}:{'python' if small else 'numpy'}"
              for p in HOT_PATHS for small in (True, False)}

I8 = np.int8
I32 = np.int32
I64 = np.int64
U8 = np.uint8
U64 = np.uint64
Arr = npt.NDArray[Any]


class Paths:
    """Which variant of each hot path runs (``small``: the Python loop up to that many
    entries) and how often each variant ran (``taken``, read by model-state coverage)."""

    __slots__ = ("small", "taken")

    def __init__(self, name: str = "default") -> None:
        self.small = FAST_PATHS[name]
        self.taken: dict[str, int] = {}

    def python(self, path: str, small: bool) -> bool:
        """Count one run of ``path`` and return ``small``: whether it runs its loop."""
        key = _PATH_KEYS[path, small]
        taken = self.taken
        taken[key] = taken.get(key, 0) + 1
        return small


# The arrays that grow together, by the id they are indexed by, and the fill of those whose
# new rows are not zero (False for the booleans).
TABLE_FIELDS = ("t_level", "t_mm", "t_state", "t_w8", "t_w16", "t_addr", "t_row")
ROW_FIELDS = ("e_kind", "e_id", "e_page", "e_bits")
FOLIO_FIELDS = ("f_order", "f_node", "f_nr", "f_base", "f_ref", "f_pin", "f_entire",
                "f_large", "f_npm", "f_mmid", "f_mmc", "f_shared", "f_dirty", "f_swapcache",
                "f_partial", "f_deferred", "f_live")
PAGE_FIELDS = ("p_mapcount", "p_exclusive", "p_data")
SLOT_FIELDS = ("s_count", "s_data", "s_zero")
FILLS: dict[str, int] = {"f_entire": -1, "f_large": -1, "f_mmc": -1, "p_mapcount": -1}


def grow(a: Arr, need: int, fill: int | bool = 0, chunk: int = 64, part: int = 2,
         used: int | None = None) -> Arr:
    """``a`` with at least ``need`` rows, new rows ``fill``: ``need`` rounded up to a chunk
    of ``max(chunk, rows // part)`` (amortised growth, at most ``1 / part`` unused).
    ``used``: the rows ever written, every later one still ``fill``; only those are copied,
    so the unused capacity stays memory the kernel has not handed out yet."""
    n = a.shape[0]
    if need <= n:
        return a
    step = max(chunk, n // part)
    new_n = -(-need // step) * step
    shape = (new_n, *a.shape[1:])
    # np.zeros takes memory the kernel hands out already zeroed: only the copy touches it
    out = np.zeros(shape, a.dtype) if fill == 0 else np.full(shape, fill, dtype=a.dtype)
    k = n if used is None else min(n, used)
    out[:k] = a[:k]
    return out


def grow_fields(obj: Any, names: tuple[str, ...], need: int, used: int, chunk: int = 64,
                part: int = 2, fills: dict[str, int] = FILLS) -> None:
    """``grow`` every array attribute ``names`` of ``obj`` alike; new rows take their fill
    from ``fills`` (the fields whose "none" is -1), else zero."""
    for name in names:
        setattr(obj, name, grow(getattr(obj, name), need, fills.get(name, 0), chunk, part,
                                used))


def unique(a: Arr) -> Arr:
    """The sorted distinct values of a 1-D array: ``np.unique`` without its first-call
    import of ``numpy.ma`` (tens of milliseconds of every process that calls it)."""
    s = np.sort(a)
    if s.size <= 1:
        return s
    keep = np.empty(s.size, bool)
    keep[0] = True
    np.not_equal(s[1:], s[:-1], out=keep[1:])
    return s[keep]


def add_at(a: Arr, idx: Arr, delta: int) -> None:
    """``np.add.at(a, idx, delta)``: ``a[i] += delta`` for every ``i`` of ``idx``, repeats
    counted; by counts over the range of ``idx`` when it is dense (``np.add.at`` with a
    scalar is slow on millions of indices)."""
    n = idx.size
    if not n:
        return
    if n > 64:
        lo, hi = int(idx.min()), int(idx.max()) + 1
        if hi - lo <= 4 * n:
            d = np.bincount(idx - lo, minlength=hi - lo)
            a[lo:hi] += (delta * d).astype(a.dtype, copy=False)
            return
    np.add.at(a, idx, np.full(n, delta, a.dtype))


@dataclass(slots=True)
class FastVma:
    start: int
    end: int
    prot: str
    hugepage: bool = False
    nohugepage: bool = False
    anon_vma: int | None = None
    forked: bool = False  # the anon_vma chain holds a parent's (anon_vma_fork)

    def flags(self) -> list[str]:
        if self.hugepage:
            return ["hugepage", "nohugepage"] if self.nohugepage else ["hugepage"]
        return ["nohugepage"] if self.nohugepage else []


@dataclass(slots=True)
class FastMm:
    id: int
    pud_table: int
    alive: bool = True
    vmas: list[FastVma] = field(default_factory=list)
    rss_anon: int = 0
    rss_swap: int = 0
    pgtables_bytes: int = 0
    has_pinned: bool = False

    @property
    def mm_id(self) -> int:
        return self.id + 1


class FastState:
    """All arrays and counters of one fast model."""

    def __init__(self, cfg: Config, paths: str = "default") -> None:
        self.cfg = cfg
        self.geom: Geometry = cfg.geom
        P = self.geom.P
        self.P = P
        self.paths = Paths(paths)
        # First capacities sized by geometry (one PUD folio, its deposit twice); growth is
        # by chunks of at least a PUD split's tables and a PUD folio's pages.
        tables = rows = 2 * P + 16
        folios = 64
        pages = 2 * self.geom.pud_nr
        self.row_chunk = P + 16
        self.page_chunk = self.geom.pud_nr
        # page tables, row = id
        self.t_level = np.zeros(tables, I8)
        self.t_mm = np.zeros(tables, I32)
        self.t_state = np.zeros(tables, I8)
        self.t_w8 = np.zeros(tables, I64)
        self.t_w16 = np.zeros(tables, I64)
        self.t_addr = np.zeros(tables, I64)  # first page a live table maps (for rmap walks)
        self.t_row = np.zeros(tables, I64)  # the table's entry row, 0 = none yet
        self.e_kind = np.zeros((rows, P), I8)
        self.e_id = np.zeros((rows, P), I32)
        self.e_page = np.zeros((rows, P), I32)
        self.e_bits = np.zeros((rows, P), U8)
        self.next_pt = 1
        self.next_row = 1
        self.free_rows: list[int] = []
        # folios, row = id
        self.f_order = np.zeros(folios, I8)
        self.f_node = np.zeros(folios, I32)
        self.f_nr = np.zeros(folios, I64)
        self.f_base = np.zeros(folios, I64)
        self.f_ref = np.zeros(folios, I64)
        self.f_pin = np.zeros(folios, I64)
        self.f_entire = np.full(folios, -1, I64)
        self.f_large = np.full(folios, -1, I64)
        self.f_npm = np.zeros(folios, I64)
        self.f_mmid = np.zeros((folios, 2), I64)
        self.f_mmc = np.full((folios, 2), -1, I64)
        self.f_shared = np.zeros(folios, bool)
        self.f_dirty = np.zeros(folios, bool)
        self.f_swapcache = np.zeros(folios, bool)
        self.f_partial = np.zeros(folios, bool)
        self.f_deferred = np.zeros(folios, bool)
        self.f_live = np.zeros(folios, bool)
        self.next_folio = 1
        # the page pool
        self.p_mapcount = np.full(pages, -1, I32)
        self.p_exclusive = np.zeros(pages, bool)
        self.p_data = np.zeros(pages, U64)
        self.next_page = 0
        # swap slots, row = slot
        self.s_count = np.zeros(16, I64)
        self.s_data = np.zeros(16, U64)
        self.s_zero = np.zeros(16, bool)  # in the swap zeromap: written with no IO
        self.s_used = 0
        self.next_slot = 1
        # the rest is small and lives in Python
        self.mms: list[FastMm] = []
        self.deferred: list[int] = []
        self.pins: dict[int, tuple[int, int]] = {}  # pin id -> (folio, page)
        self.next_pin = 1
        self.next_anon_vma = 1
        self.fail_alloc: dict[str, int] = {"pud": 0, "pmd": 0, "base": 0}
        self.huge_zero_allocated = False
        self.stats: dict[str, Any] = empty_stats()

    # ---------------------------------------------------------------------------------
    # allocation of rows
    # ---------------------------------------------------------------------------------

    def new_table_rows(self, n: int) -> int:
        """Reserve ``n`` consecutive table ids; returns the first."""
        tid = self.next_pt
        self.next_pt += n
        if self.next_pt > self.t_level.shape[0]:
            grow_fields(self, TABLE_FIELDS, self.next_pt, tid)
        return tid

    def row(self, t: int) -> int:
        """The entry row of table ``t`` for reading (0, all none, if it has none)."""
        r: int = self.t_row.item(t)
        return r

    def wrow(self, t: int) -> int:
        """The entry row of table ``t`` for writing, taken on first use."""
        r: int = self.t_row.item(t)
        if r == 0:
            r = self.free_rows.pop() if self.free_rows else self._new_rows(1)
            self.t_row[t] = r
        return r

    def wrows(self, ts: Arr) -> Arr:
        """``wrow`` for an array of tables."""
        rows = self.t_row[ts]
        missing = (rows == 0).nonzero()[0]
        if missing.size:
            for k in missing.tolist():
                rows[k] = self.wrow(int(ts[k]))
        return rows

    def _new_rows(self, n: int) -> int:
        first = self.next_row
        self.next_row += n
        if self.next_row > self.e_kind.shape[0]:
            grow_fields(self, ROW_FIELDS, self.next_row, first, self.row_chunk)
        return first

    def release_rows(self, ts: Arr) -> None:
        """A freed table gives its row back, cleared; for an array of tables, in order."""
        rows = self.t_row[ts]
        rows = rows[rows != 0]
        if rows.size:
            self.e_kind[rows] = 0
            self.e_id[rows] = 0
            self.e_page[rows] = 0
            self.e_bits[rows] = 0
            self.free_rows.extend(rows.tolist())
        self.t_row[ts] = 0

    def release_row(self, t: int) -> None:
        """``release_rows`` for one table."""
        r = self.t_row.item(t)
        if r:
            self.e_kind[r] = 0
            self.e_id[r] = 0
            self.e_page[r] = 0
            self.e_bits[r] = 0
            self.free_rows.append(r)
            self.t_row[t] = 0

    def new_folio_rows(self, count: int) -> int:
        """Reserve ``count`` consecutive folio ids; returns the first."""
        first = self.next_folio
        self.next_folio += count
        if self.next_folio > self.f_order.shape[0]:
            grow_fields(self, FOLIO_FIELDS, self.next_folio, first)
        return first

    def new_pages(self, n: int) -> int:
        """Reserve ``n`` pages of the pool (fresh: mapcount -1, not exclusive, zero)."""
        base = self.next_page
        self.next_page += n
        if self.next_page > self.p_mapcount.shape[0]:
            grow_fields(self, PAGE_FIELDS, self.next_page, base, self.page_chunk, 4)
        return base

    def new_slots(self, n: int) -> int:
        base = self.next_slot
        self.next_slot += n
        if self.next_slot > self.s_count.shape[0]:
            grow_fields(self, SLOT_FIELDS, self.next_slot, base)
        return base


# --------------------------------------------------------------------------------------
# Entries: writes, and the table entries of a range (what the walkers of mm/ read)
# --------------------------------------------------------------------------------------


def set_entry(st: FastState, t: int, i: int, kind: int, eid: int = 0, page: int = 0,
              bits: int = 0) -> None:
    """Entry ``i`` of table ``t``: the fast side's ``set_pte_at`` / ``set_pmd_at``."""
    r = st.wrow(t)
    st.e_kind[r, i] = kind
    st.e_id[r, i] = eid
    st.e_page[r, i] = page
    st.e_bits[r, i] = bits


def set_entries(st: FastState, t: int, idx: Arr | slice, kind: int, eid: Arr | int = 0
                ) -> None:
    """set_entry() for entries ``idx`` of table ``t`` (page and bits 0)."""
    r = st.wrow(t)
    st.e_kind[r, idx] = kind
    st.e_id[r, idx] = eid
    st.e_page[r, idx] = 0
    st.e_bits[r, idx] = 0


def install_table(st: FastState, parent: int, i: int, child: int, addr: int) -> None:
    """pmd_populate() / pud_populate(): entry ``i`` of ``parent`` names ``child``, which
    maps from page ``addr``."""
    set_entry(st, parent, i, TABLE, child)
    st.t_addr[child] = addr


def check_child(st: FastState, tid: int, idx: int, child: int, level: str) -> None:
    """pmd_offset() / pte_offset()'s trust in a table entry, checked: ``child`` is a live
    table of ``level``."""
    if child <= 0 or child >= st.next_pt or st.t_level[child] != LEVEL_CODE[level] or (
            st.t_state[child] != ST_LIVE):
        raise ModelBug("walk.bad_table", f"entry {idx} of table {tid} is no live table")


def tables_at(st: FastState, tid: int, idx: Arr, level: str) -> Arr:
    """check_child() for entries ``idx`` of table ``tid``: the live tables they name."""
    r = st.row(tid)
    child = st.e_id[r, idx].astype(np.int64)
    bad = (st.e_kind[r, idx] != TABLE) | (child <= 0) | (child >= st.next_pt)
    if not np.count_nonzero(bad):
        bad = (st.t_level[child] != LEVEL_CODE[level]) | (st.t_state[child] != ST_LIVE)
    if np.count_nonzero(bad):
        i = int(idx[np.argmax(bad)])
        raise ModelBug("walk.bad_table", f"entry {i} of table {tid} is no live table")
    return child


def pmd_entries(g: Geometry, addr: int, nxt: int) -> tuple[int, int]:
    """The PMD entries ``[m0, m1)`` that ``[addr, nxt)`` (inside one PUD) touches."""
    return (addr // g.pmd_nr) % g.P, ((nxt - 1) // g.pmd_nr) % g.P + 1


def pte_bounds(g: Geometry, idx: Arr, addr: int, nxt: int) -> tuple[Arr, Arr]:
    """For PMD entries ``idx`` of the PUD holding ``[addr, nxt)``: the PTE index range
    ``[lo, hi)`` of each that lies inside ``[addr, nxt)``."""
    base = addr - addr % g.pud_nr + idx * g.pmd_nr
    a = np.maximum(base, addr)
    b = np.minimum(base + g.pmd_nr, nxt)
    return a % g.P, a % g.P + (b - a)


def range_mask(P: int, lo: Arr, hi: Arr) -> Arr | None:
    """Row ``i`` True on columns ``[lo[i], hi[i])``; None when every row is whole."""
    if not np.count_nonzero(lo) and not np.count_nonzero(hi != P):
        return None
    cols = np.arange(P)
    mask: Arr = (cols >= lo[:, None]) & (cols < hi[:, None])
    return mask


Segment = tuple[int, int, int]  # a PTE table and the index range [lo, hi) of it in a walk


def pte_segments(st: FastState, pmd: int, m0: int, m1: int, addr: int, nxt: int,
                 python: bool) -> tuple[list[int], list[Segment]] | None:
    """The PMD entries of ``[m0, m1)`` (those ``[addr, nxt)`` touches) that name PTE
    tables, and each such table's PTE range inside ``[addr, nxt)``; None if a huge (or any
    other) entry is among them.  ``python``: the caller's variant (``Paths``)."""
    g = st.geom
    r = st.row(pmd)
    if not python:
        kinds = st.e_kind[r, m0:m1]
        if np.count_nonzero((kinds != NONE) & (kinds != TABLE)):
            return None
        idx = m0 + (kinds == TABLE).nonzero()[0]
        ptes = tables_at(st, pmd, idx, LEVEL_PTE)
        lo, hi = pte_bounds(g, idx, addr, nxt)
        return idx.tolist(), list(zip(ptes.tolist(), lo.tolist(), hi.tolist(), strict=True))
    K = st.e_kind[r, m0:m1].tolist()
    if any(k != NONE and k != TABLE for k in K):
        return None
    ids = st.e_id[r, m0:m1].tolist()
    P, pmd_nr = g.P, g.pmd_nr
    first = addr - addr % g.pud_nr
    kids = [(m0 + j, ids[j]) for j, k in enumerate(K) if k == TABLE]
    for mi, child in kids:
        check_child(st, pmd, mi, child, LEVEL_PTE)
    segs = []
    for mi, child in kids:
        base = first + mi * pmd_nr
        a = max(base, addr)
        b = min(base + pmd_nr, nxt)
        segs.append((child, a % P, a % P + (b - a)))
    return [mi for mi, _ in kids], segs
