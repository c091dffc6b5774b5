"""Fast page tables: allocation, raw words, and the deposit lists (mm/pgtable-generic.c).

Same semantics as the reference word by word; the words are int64 array cells (0 NULL,
ids, -1/-2 poisons).  Page-level work elsewhere is vectorised; list surgery is a handful
of scalar writes per table and stays scalar.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pudthp_fast.state import (
    LV_PMD,
    LV_PTE,
    NONE,
    NULL,
    POISON1,
    POISON2,
    SMALL,
    ST_DEPOSITED,
    ST_FREE,
    ST_LIVE,
    TABLE,
    Arr,
    FastMm,
    FastState,
)
from pudthp_ref.spec import PAGE_TABLE_BYTES, Geometry, ModelBug


def pt_alloc(st: FastState, mm: FastMm, level: int) -> int:
    """pte_alloc_one() / pmd_alloc_one() / pud_alloc_one() with mm_inc_nr_*()."""
    tid = st.new_table_row()
    st.t_touch[tid] = True
    st.t_level[tid] = level
    st.t_mm[tid] = mm.id
    st.t_state[tid] = ST_LIVE
    st.t_w8[tid] = NULL
    st.t_w16[tid] = NULL
    mm.pgtables_bytes += PAGE_TABLE_BYTES
    return tid


def pt_alloc_many(st: FastState, mm: FastMm, level: int, n: int) -> Arr:
    """``n`` pt_alloc() calls in a row: the ids are consecutive."""
    tids = np.arange(st.new_table_rows(n), st.next_pt, dtype=np.int64)
    st.t_touch[tids] = True
    st.t_level[tids] = level
    st.t_mm[tids] = mm.id
    st.t_state[tids] = ST_LIVE
    st.t_w8[tids] = NULL
    st.t_w16[tids] = NULL
    mm.pgtables_bytes += n * PAGE_TABLE_BYTES
    return tids


def pt_free_many(st: FastState, mm: FastMm, tids: Arr) -> None:
    """pt_free() of each table, in order."""
    if tids.size <= 16:  # a few: in Python, to the same effect
        ids = tids.tolist()
        twice = [t for t in ids if ids.count(t) > 1]
        if twice:
            tid = min(twice)
            raise ModelBug("pt_free.double_free", f"page table {tid} freed twice", pt=tid)
        for t in ids:
            if st.t_state[t] == ST_FREE:
                raise ModelBug("pt_free.double_free", f"page table {t} freed twice", pt=t)
        for t in ids:
            st.t_state[t] = ST_FREE
            st.release_row(t)
        mm.pgtables_bytes -= len(ids) * PAGE_TABLE_BYTES
        return
    seen, times = np.unique(tids, return_counts=True)
    if np.count_nonzero(times > 1):
        tid = int(seen[times > 1][0])
        raise ModelBug("pt_free.double_free", f"page table {tid} freed twice", pt=tid)
    if np.count_nonzero(st.t_state[tids] == ST_FREE):
        tid = int(tids[np.argmax(st.t_state[tids] == ST_FREE)])
        raise ModelBug("pt_free.double_free", f"page table {tid} freed twice", pt=tid)
    st.t_state[tids] = ST_FREE
    st.release_rows(tids)
    mm.pgtables_bytes -= int(tids.size) * PAGE_TABLE_BYTES


def pt_free(st: FastState, mm: FastMm, tid: int) -> None:
    if st.t_state[tid] == ST_FREE:
        raise ModelBug("pt_free.double_free", f"page table {tid} freed twice", pt=tid)
    st.t_state[tid] = ST_FREE
    st.release_row(tid)
    mm.pgtables_bytes -= PAGE_TABLE_BYTES


def deref(st: FastState, w: int, what: str) -> int:
    if w == NULL:
        raise ModelBug(f"{what}.null", "NULL pointer dereference")
    if w in (POISON1, POISON2):
        name = "LIST_POISON1" if w == POISON1 else "LIST_POISON2"
        raise ModelBug(f"{what}.poison", f"dereference of {name}")
    if w >= st.next_pt or st.t_state[w] == ST_FREE:
        raise ModelBug(f"{what}.use_after_free", f"word {w!r} names no live page table", word=w)
    return w


def init_list_head(st: FastState, t: int) -> None:
    st.t_touch[t] = True
    st.t_w8[t] = t
    st.t_w16[t] = t


def list_add(st: FastState, new: int, head: int, what: str) -> None:
    nxt = deref(st, int(st.t_w8[head]), what)
    st.t_touch[[nxt, new, head]] = True
    st.t_w16[nxt] = new
    st.t_w8[new] = nxt
    st.t_w16[new] = head
    st.t_w8[head] = new


def list_del(st: FastState, entry: int, what: str) -> None:
    prev = deref(st, int(st.t_w16[entry]), what)
    nxt = deref(st, int(st.t_w8[entry]), what)
    st.t_touch[[prev, nxt, entry]] = True
    st.t_w16[nxt] = prev
    st.t_w8[prev] = nxt
    st.t_w8[entry] = POISON1
    st.t_w16[entry] = POISON2


def list_first_entry_or_null(st: FastState, head: int) -> int:
    w8 = int(st.t_w8[head])
    return NULL if w8 == head else w8


def pgtable_trans_huge_deposit(st: FastState, pmd: int, pgtable: int) -> None:
    root = int(st.t_w16[pmd])
    if root == NULL:
        init_list_head(st, pgtable)
    else:
        list_add(st, pgtable, deref(st, root, "deposit.pmd"), "deposit.pmd")
    st.t_touch[pmd] = st.t_touch[pgtable] = True
    st.t_w16[pmd] = pgtable
    st.t_state[pgtable] = ST_DEPOSITED


def pgtable_trans_huge_withdraw(st: FastState, pmd: int) -> int:
    pgtable = deref(st, int(st.t_w16[pmd]), "withdraw.pmd")
    nxt = list_first_entry_or_null(st, pgtable)
    st.t_touch[pmd] = st.t_touch[pgtable] = True
    st.t_w16[pmd] = nxt
    if nxt != NULL:
        list_del(st, pgtable, "withdraw.pmd")
    if st.t_level[pgtable] != LV_PTE or st.t_state[pgtable] != ST_DEPOSITED:
        raise ModelBug("withdraw.pmd.wrong_table", f"withdrew table {pgtable} from {pmd}")
    st.t_state[pgtable] = ST_LIVE
    return pgtable


def pgtable_trans_huge_pud_deposit(st: FastState, pud: int, pmd: int) -> None:
    if st.cfg.deposit == "list_head":
        root = int(st.t_w16[pud])
        if root == NULL:
            init_list_head(st, pmd)
        else:
            list_add(st, pmd, deref(st, root, "deposit.pud"), "deposit.pud")
    else:
        st.t_w8[pmd] = st.t_w16[pud]
    st.t_touch[pud] = st.t_touch[pmd] = True
    st.t_w16[pud] = pmd
    st.t_state[pmd] = ST_DEPOSITED


def pgtable_trans_huge_pud_withdraw(st: FastState, pud: int) -> int:
    top = deref(st, int(st.t_w16[pud]), "withdraw.pud")
    st.t_touch[pud] = st.t_touch[top] = True
    if st.cfg.deposit == "list_head":
        nxt = list_first_entry_or_null(st, top)
        st.t_w16[pud] = nxt
        if nxt != NULL:
            list_del(st, top, "withdraw.pud")
    else:
        st.t_w16[pud] = st.t_w8[top]
        if st.cfg.deposit == "lru_next":
            st.t_w8[top] = NULL
    if st.t_level[top] != LV_PMD or st.t_state[top] != ST_DEPOSITED:
        raise ModelBug("withdraw.pud.wrong_table", f"popped table {top} from {pud}")
    st.t_state[top] = ST_LIVE
    return top


def table_at(st: FastState, tid: int, idx: int, level: int) -> int:
    """pmd_offset()/pte_offset(): the live lower table a table entry points to."""
    child = int(st.e_id[st.row(tid), idx])
    if (
        st.e_kind[st.row(tid), idx] != 1
        or child <= 0
        or child >= st.next_pt
        or st.t_level[child] != level
        or st.t_state[child] != ST_LIVE
    ):
        raise ModelBug("walk.bad_table", f"entry {idx} of table {tid} is no live table")
    return child


def table_entries(st: FastState, tid: int, lo: int, hi: int) -> Arr:
    """The entries in ``[lo, hi)`` of table ``tid`` that point to lower tables."""
    return lo + (st.e_kind[st.row(tid), lo:hi] == TABLE).nonzero()[0]


def tables_at(st: FastState, tid: int, idx: Arr, level: int) -> Arr:
    """table_at() for entries ``idx`` of table ``tid``: the live tables they point to."""
    r = st.row(tid)
    child = st.e_id[r, idx].astype(np.int64)
    bad = (st.e_kind[r, idx] != TABLE) | (child <= 0) | (child >= st.next_pt)
    if not np.count_nonzero(bad):
        bad = (st.t_level[child] != level) | (st.t_state[child] != ST_LIVE)
    if np.count_nonzero(bad):
        i = int(idx[np.argmax(bad)])
        raise ModelBug("walk.bad_table", f"entry {i} of table {tid} is no live table")
    return child


def tables_in(st: FastState, tid: int, lo: int, hi: int, level: int) -> tuple[Arr, Arr]:
    """The entries in ``[lo, hi)`` of table ``tid`` that point to lower tables, and the
    live tables they point to."""
    idx = table_entries(st, tid, lo, hi)
    return idx, tables_at(st, tid, idx, level)


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


def pte_tables_only(st: FastState, pmd: int, addr: int, nxt: int) -> tuple[Arr, Arr] | None:
    """``tables_in()`` of the PMD entries ``[addr, nxt)`` touches, when every one of them
    is none or a PTE table; None if there is a huge (or any other) entry among them."""
    m0, m1 = pmd_entries(st.geom, addr, nxt)
    kinds = st.e_kind[st.row(pmd), m0:m1]
    if np.count_nonzero((kinds != NONE) & (kinds != TABLE)):
        return None
    return tables_in(st, pmd, m0, m1, LV_PTE)


def pud_range(g: Geometry, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    addr = start
    while addr < end:
        nxt = min(end, addr - addr % g.pud_nr + g.pud_nr)
        yield addr // g.pud_nr, addr, nxt
        addr = nxt


def pmd_range(g: Geometry, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    addr = start
    while addr < end:
        nxt = min(end, addr - addr % g.pmd_nr + g.pmd_nr)
        yield (addr // g.pmd_nr) % g.P, addr, nxt
        addr = nxt


def check_child(st: FastState, tid: int, idx: int, child: int, level: int) -> None:
    """table_at()'s check of a table entry's child, for one entry known to be a table."""
    if child <= 0 or child >= st.next_pt or st.t_level[child] != level or (
            st.t_state[child] != ST_LIVE):
        raise ModelBug("walk.bad_table", f"entry {idx} of table {tid} is no live table")


def pte_segments(st: FastState, pmd: int, addr: int, nxt: int
                 ) -> list[tuple[int, int, int]] | None:
    """``pte_tables_only()`` as PTE ranges (table, lo, hi) inside ``[addr, nxt)``; in
    Python for a few entries."""
    g = st.geom
    m0, m1 = pmd_entries(g, addr, nxt)
    if m1 - m0 > SMALL:
        found = pte_tables_only(st, pmd, addr, nxt)
        if found is None:
            return None
        idx, ptes = found
        lo, hi = pte_bounds(g, idx, addr, nxt)
        return list(zip(ptes.tolist(), lo.tolist(), hi.tolist(), strict=True))
    r = st.row(pmd)
    K = st.e_kind[r, m0:m1].tolist()
    if any(k != NONE and k != TABLE for k in K):
        return None
    ids = st.e_id[r, m0:m1].tolist()
    P, pmd_nr = g.P, g.pmd_nr
    first = addr - addr % g.pud_nr
    kids = [(m0 + j, ids[j]) for j, k in enumerate(K) if k == TABLE]
    for mi, child in kids:
        check_child(st, pmd, mi, child, LV_PTE)
    out = []
    for mi, child in kids:
        base = first + mi * pmd_nr
        a = max(base, addr)
        b = min(base + pmd_nr, nxt)
        out.append((child, a % P, a % P + (b - a)))
    return out
