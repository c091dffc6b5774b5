"""Fast page tables: allocation, raw words, and the deposit lists (mm/pgtable-generic.c).

Same semantics as the reference word by word; the words are int64 array cells (0 NULL,
ids, -1/-2 poisons).  Page-level work elsewhere is vectorised; list surgery is a handful
of scalar writes per table and stays scalar.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from pudthp_fast.state import (
    LEVEL_CODE,
    NULL,
    POISON1,
    POISON2,
    ST_DEPOSITED,
    ST_FREE,
    ST_LIVE,
    TABLE,
    Arr,
    FastMm,
    FastState,
)
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE, PAGE_TABLE_BYTES, Geometry, ModelBug


def pt_alloc(st: FastState, mm: FastMm, level: str) -> int:
    """pte_alloc_one() / pmd_alloc_one() / pud_alloc_one() with mm_inc_nr_*()."""
    tid = st.new_table_rows(1)
    st.t_level[tid] = LEVEL_CODE[level]
    st.t_mm[tid] = mm.id
    st.t_state[tid] = ST_LIVE
    st.t_w8[tid] = NULL
    st.t_w16[tid] = NULL
    mm.pgtables_bytes += PAGE_TABLE_BYTES
    return tid


def pt_alloc_many(st: FastState, mm: FastMm, level: str, n: int) -> Arr:
    """``n`` pt_alloc() calls in a row: the ids are consecutive."""
    tids = np.arange(st.new_table_rows(n), st.next_pt, dtype=np.int64)
    st.t_level[tids] = LEVEL_CODE[level]
    st.t_mm[tids] = mm.id
    st.t_state[tids] = ST_LIVE
    st.t_w8[tids] = NULL
    st.t_w16[tids] = NULL
    mm.pgtables_bytes += n * PAGE_TABLE_BYTES
    return tids


def pt_free(st: FastState, mm: FastMm, tid: int) -> None:
    """pte_free() / pmd_free() with mm_dec_nr_*()."""
    if st.t_state[tid] == ST_FREE:
        raise ModelBug("pt_free.double_free", f"page table {tid} freed twice", pt=tid)
    st.t_state[tid] = ST_FREE
    st.release_row(tid)
    mm.pgtables_bytes -= PAGE_TABLE_BYTES


def pt_free_many(st: FastState, mm: FastMm, tids: Arr) -> None:
    """pt_free() of each table, in order."""
    paths = st.paths
    if paths.python("pt_free_many", tids.size <= paths.small):
        for t in tids.tolist():
            pt_free(st, mm, t)
        return
    order = np.argsort(tids, kind="stable")
    again = np.zeros(tids.size, bool)  # a table met before in the list
    again[order[1:]] = tids[order[1:]] == tids[order[:-1]]
    bad = again | (st.t_state[tids] == ST_FREE)
    if np.count_nonzero(bad):
        t = int(tids[np.argmax(bad)])
        raise ModelBug("pt_free.double_free", f"page table {t} freed twice", pt=t)
    st.t_state[tids] = ST_FREE
    st.release_rows(tids)
    mm.pgtables_bytes -= int(tids.size) * PAGE_TABLE_BYTES


def deref(st: FastState, w: int, what: str) -> int:
    """Follow a raw word to the page-table page it points to, as the kernel would."""
    if w == NULL:
        raise ModelBug(f"{what}.null", "NULL pointer dereference")
    if w in (POISON1, POISON2):
        name = "LIST_POISON1" if w == POISON1 else "LIST_POISON2"
        raise ModelBug(f"{what}.poison", f"dereference of {name}")
    if w >= st.next_pt or st.t_state[w] == ST_FREE:
        raise ModelBug(f"{what}.use_after_free", f"word {w!r} names no live page table", word=w)
    return w


def table_of(st: FastState, tid: int, idx: int, level: str) -> int:
    """pmd_offset()/pte_offset(): the live lower table entry ``idx`` of ``tid`` names."""
    r = st.row(tid)
    child = int(st.e_id[r, idx])
    if (
        st.e_kind[r, idx] != TABLE
        or child <= 0
        or child >= st.next_pt
        or st.t_level[child] != LEVEL_CODE[level]
        or st.t_state[child] != ST_LIVE
    ):
        raise ModelBug("walk.bad_table", f"entry {idx} of table {tid} is no live table")
    return child


# --------------------------------------------------------------------------------------
# include/linux/list.h on the (w8, w16) words of page-table pages
# --------------------------------------------------------------------------------------


def init_list_head(st: FastState, t: int) -> None:
    """INIT_LIST_HEAD(&t->lru)."""
    st.t_w8[t] = t
    st.t_w16[t] = t


def list_add(st: FastState, new: int, head: int, what: str) -> None:
    """list_add(&new->lru, &head->lru): __list_add(new, head, head->next)."""
    nxt = deref(st, int(st.t_w8[head]), what)
    st.t_w16[nxt] = new
    st.t_w8[new] = nxt
    st.t_w16[new] = head
    st.t_w8[head] = new


def list_del(st: FastState, entry: int, what: str) -> None:
    """list_del(&entry->lru): unlink, then poison both words."""
    prev = deref(st, int(st.t_w16[entry]), what)
    nxt = deref(st, int(st.t_w8[entry]), what)
    st.t_w16[nxt] = prev
    st.t_w8[prev] = nxt
    st.t_w8[entry] = POISON1
    st.t_w16[entry] = POISON2


def list_first_entry_or_null(st: FastState, head: int) -> int:
    """list_first_entry_or_null(&head->lru): the next word, or NULL for a lone entry."""
    w8 = int(st.t_w8[head])
    return NULL if w8 == head else w8


# --------------------------------------------------------------------------------------
# Deposits: PMD level (mm/pgtable-generic.c) and the PUD-level stack (the RFC's patch 01)
# --------------------------------------------------------------------------------------


def pgtable_trans_huge_deposit(st: FastState, pmd: int, pgtable: int) -> None:
    """pgtable_trans_huge_deposit(): a circular list without sentinel, root = newest."""
    root = int(st.t_w16[pmd])
    if root == NULL:
        init_list_head(st, pgtable)
    else:
        list_add(st, pgtable, deref(st, root, "deposit.pmd"), "deposit.pmd")
    st.t_w16[pmd] = pgtable
    st.t_state[pgtable] = ST_DEPOSITED


def pgtable_trans_huge_withdraw(st: FastState, pmd: int) -> int:
    """pgtable_trans_huge_withdraw(): take the root, advance it, unlink (and poison) it."""
    pgtable = deref(st, int(st.t_w16[pmd]), "withdraw.pmd")
    nxt = list_first_entry_or_null(st, pgtable)
    st.t_w16[pmd] = nxt
    if nxt != NULL:
        list_del(st, pgtable, "withdraw.pmd")
    if st.t_level[pgtable] != LEVEL_CODE[LEVEL_PTE] or st.t_state[pgtable] != ST_DEPOSITED:
        raise ModelBug("withdraw.pmd.wrong_table", f"withdrew table {pgtable} from {pmd}")
    st.t_state[pgtable] = ST_LIVE
    return pgtable


def pgtable_trans_huge_pud_deposit(st: FastState, pud: int, pmd: int) -> None:
    """Push a PMD table on the PUD stack, in the configured ``deposit`` variant."""
    if st.cfg.deposit == "list_head":
        root = int(st.t_w16[pud])
        if root == NULL:
            init_list_head(st, pmd)
        else:
            list_add(st, pmd, deref(st, root, "deposit.pud"), "deposit.pud")
    else:
        st.t_w8[pmd] = st.t_w16[pud]
    st.t_w16[pud] = pmd
    st.t_state[pmd] = ST_DEPOSITED


def pgtable_trans_huge_pud_withdraw(st: FastState, pud: int) -> int:
    """Pop the top PMD table of the PUD stack."""
    top = deref(st, int(st.t_w16[pud]), "withdraw.pud")
    if st.cfg.deposit == "list_head":
        nxt = list_first_entry_or_null(st, top)
        st.t_w16[pud] = nxt
        if nxt != NULL:
            list_del(st, top, "withdraw.pud")
    else:
        st.t_w16[pud] = st.t_w8[top]
        if st.cfg.deposit == "lru_next":
            st.t_w8[top] = NULL  # llist_del_first() leaves the node's next as it was
    if st.t_level[top] != LEVEL_CODE[LEVEL_PMD] or st.t_state[top] != ST_DEPOSITED:
        raise ModelBug("withdraw.pud.wrong_table", f"popped table {top} from {pud}")
    st.t_state[top] = ST_LIVE
    return top


# --------------------------------------------------------------------------------------
# Range walks: the pud_addr_end() / pmd_addr_end() loops of every page-table walker
# --------------------------------------------------------------------------------------


def pud_range(g: Geometry, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The PUD entries over ``[start, end)``: (index, addr, next), next = pud_addr_end()."""
    addr = start
    while addr < end:
        nxt = min(end, addr - addr % g.pud_nr + g.pud_nr)
        yield addr // g.pud_nr, addr, nxt
        addr = nxt


def pmd_range(g: Geometry, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The PMD entries over ``[start, end)`` inside one PUD: (index, addr, next)."""
    addr = start
    while addr < end:
        nxt = min(end, addr - addr % g.pmd_nr + g.pmd_nr)
        yield (addr // g.pmd_nr) % g.P, addr, nxt
        addr = nxt
