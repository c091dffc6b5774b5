"""Page-table pages, entries and deposits: mm/pgtable-generic.c and include/linux/list.h.

Deposits are modelled word by word through the aliased ptdesc words ``w8`` (``lru.next``)
and ``w16`` (``lru.prev`` / ``pmd_huge_pte`` / ``pud_huge_pmd``), so a design that writes the
wrong word corrupts exactly what the kernel's would.  Dereferencing NULL, a poison value or a
freed table raises ``ModelBug`` (the kernel would oops there).
"""

from __future__ import annotations

from collections.abc import Iterator

from pudthp_ref.mm_types import (
    PT_DEPOSITED,
    PT_FREED,
    PT_LIVE,
    Entry,
    MmState,
    MmStruct,
    PtDesc,
    Word,
)
from pudthp_ref.spec import (
    LEVEL_PMD,
    LEVEL_PTE,
    LIST_POISON1,
    LIST_POISON2,
    PAGE_TABLE_BYTES,
    Geometry,
    ModelBug,
)

# --------------------------------------------------------------------------------------
# Entries
# --------------------------------------------------------------------------------------

ZERO: Entry = ("zero",)


def mk_table(ptid: int) -> Entry:
    return ("table", ptid)


def mk_leaf(folio: int, write: bool, dirty: bool, young: bool) -> Entry:
    return ("leaf", folio, write, dirty, young)


def mk_pte(folio: int, index: int, write: bool, dirty: bool, young: bool) -> Entry:
    return ("pte", folio, index, write, dirty, young)


def mk_swp(slot: int) -> Entry:
    return ("swap", slot)


def is_table(e: Entry | None) -> bool:
    return e is not None and e[0] == "table"


def is_leaf(e: Entry | None) -> bool:
    return e is not None and e[0] == "leaf"


def is_zero(e: Entry | None) -> bool:
    return e is not None and e[0] == "zero"


def is_present_pte(e: Entry | None) -> bool:
    return e is not None and e[0] == "pte"


def is_swap_pte(e: Entry | None) -> bool:
    return e is not None and e[0] == "swap"


def entry_write(e: Entry) -> bool:
    """pte_write() / pmd_write() / pud_write() of a present leaf or PTE."""
    return bool(e[-3])


def entry_with(e: Entry, *, write: bool | None = None, dirty: bool | None = None,
               young: bool | None = None) -> Entry:
    """pte_mkwrite/pte_wrprotect/pte_mkdirty/pte_mkold and friends, on leaf or PTE tuples."""
    w, d, y = e[-3], e[-2], e[-1]
    return (
        *e[:-3],
        w if write is None else write,
        d if dirty is None else dirty,
        y if young is None else young,
    )


def entry_json(e: Entry) -> list[object]:
    """The snapshot spelling of an entry (bits as 0/1)."""
    if e[0] in ("leaf", "pte"):
        return [e[0], *e[1:-3], int(e[-3]), int(e[-2]), int(e[-1])]
    return list(e)


# --------------------------------------------------------------------------------------
# Page-table pages
# --------------------------------------------------------------------------------------


def pt_alloc(st: MmState, mm: MmStruct, level: str) -> PtDesc:
    """pte_alloc_one() / pmd_alloc_one() / pud_alloc_one() with mm_inc_nr_*()."""
    pt = PtDesc(id=st.next_pt_id, level=level, mm=mm.id, entries=[None] * st.geom.P)
    st.next_pt_id += 1
    st.tables[pt.id] = pt
    mm.pgtables_bytes += PAGE_TABLE_BYTES
    return pt


def pt_free(st: MmState, mm: MmStruct, pt: PtDesc) -> None:
    """pte_free() / pmd_free() with mm_dec_nr_*()."""
    if pt.state == PT_FREED or pt.id not in st.tables:
        raise ModelBug("pt_free.double_free", f"page table {pt.id} freed twice", pt=pt.id)
    pt.state = PT_FREED
    del st.tables[pt.id]
    mm.pgtables_bytes -= PAGE_TABLE_BYTES


def deref(st: MmState, w: Word, what: str) -> PtDesc:
    """Follow a raw word to the page-table page it points to, as the kernel would."""
    if w is None:
        raise ModelBug(f"{what}.null", "NULL pointer dereference")
    if w in (LIST_POISON1, LIST_POISON2):
        raise ModelBug(f"{what}.poison", f"dereference of {w}")
    if not isinstance(w, int) or w not in st.tables:
        raise ModelBug(f"{what}.use_after_free", f"word {w!r} names no live page table", word=w)
    return st.tables[w]


def table_of(st: MmState, e: Entry | None, level: str) -> PtDesc:
    """pmd_offset()/pte_offset(): the lower table a table entry points to."""
    if e is None or e[0] != "table":
        raise ModelBug("walk.not_table", f"expected a table entry, found {e!r}")
    pt = deref(st, e[1], "walk")
    if pt.level != level or pt.state != PT_LIVE:
        raise ModelBug("walk.bad_table", f"entry names {pt.level} table {pt.id} ({pt.state})")
    return pt


# --------------------------------------------------------------------------------------
# include/linux/list.h on the (w8, w16) words of page-table pages
# --------------------------------------------------------------------------------------


def init_list_head(t: PtDesc) -> None:
    """INIT_LIST_HEAD(&t->lru)."""
    t.w8 = t.id
    t.w16 = t.id


def list_add(st: MmState, new: PtDesc, head: PtDesc, what: str) -> None:
    """list_add(&new->lru, &head->lru): __list_add(new, head, head->next)."""
    nxt = deref(st, head.w8, what)
    nxt.w16 = new.id
    new.w8 = nxt.id
    new.w16 = head.id
    head.w8 = new.id


def list_del(st: MmState, entry: PtDesc, what: str) -> None:
    """list_del(&entry->lru): unlink, then poison both words."""
    prev = deref(st, entry.w16, what)
    nxt = deref(st, entry.w8, what)
    nxt.w16 = prev.id
    prev.w8 = nxt.id
    entry.w8 = LIST_POISON1
    entry.w16 = LIST_POISON2


def list_first_entry_or_null(head: PtDesc) -> Word:
    """list_first_entry_or_null(&head->lru): the next word, or NULL for a lone entry."""
    return None if head.w8 == head.id else head.w8


# --------------------------------------------------------------------------------------
# PMD-level deposit: mm/pgtable-generic.c, root in the PMD table's pmd_huge_pte (w16)
# --------------------------------------------------------------------------------------


def pgtable_trans_huge_deposit(st: MmState, pmd_table: PtDesc, pgtable: PtDesc) -> None:
    """pgtable_trans_huge_deposit(): a circular list without sentinel, root = newest."""
    if pmd_table.w16 is None:
        init_list_head(pgtable)
    else:
        list_add(st, pgtable, deref(st, pmd_table.w16, "deposit.pmd"), "deposit.pmd")
    pmd_table.w16 = pgtable.id
    pgtable.state = PT_DEPOSITED


def pgtable_trans_huge_withdraw(st: MmState, pmd_table: PtDesc) -> PtDesc:
    """pgtable_trans_huge_withdraw(): take the root, advance it, unlink (and poison) it."""
    pgtable = deref(st, pmd_table.w16, "withdraw.pmd")
    pmd_table.w16 = list_first_entry_or_null(pgtable)
    if pmd_table.w16 is not None:
        list_del(st, pgtable, "withdraw.pmd")
    if pgtable.level != LEVEL_PTE or pgtable.state != PT_DEPOSITED:
        raise ModelBug(
            "withdraw.pmd.wrong_table",
            f"withdrew {pgtable.level} table {pgtable.id} ({pgtable.state}) from "
            f"PMD table {pmd_table.id}",
        )
    pgtable.state = PT_LIVE
    return pgtable


# --------------------------------------------------------------------------------------
# PUD-level deposit stack (the RFC's patch 01), root in the PUD table's pud_huge_pmd (w16)
# --------------------------------------------------------------------------------------


def pgtable_trans_huge_pud_deposit(st: MmState, pud_table: PtDesc, pmd_table: PtDesc) -> None:
    """Push a PMD table on the PUD stack, in the configured ``deposit`` variant.

    lru_next / llist: link through the PMD table's w8 only (offset 8), root in w16 of the
    PUD table.  list_head: the mainline list routines on the PMD table's lru, whose
    ``prev`` half (w16) is the PMD table's own pmd_huge_pte: the design the RFC rejects.
    """
    if st.cfg.deposit == "list_head":
        if pud_table.w16 is None:
            init_list_head(pmd_table)
        else:
            list_add(st, pmd_table, deref(st, pud_table.w16, "deposit.pud"), "deposit.pud")
    else:
        pmd_table.w8 = pud_table.w16
    pud_table.w16 = pmd_table.id
    pmd_table.state = PT_DEPOSITED


def pgtable_trans_huge_pud_withdraw(st: MmState, pud_table: PtDesc) -> PtDesc:
    """Pop the top PMD table of the PUD stack."""
    top = deref(st, pud_table.w16, "withdraw.pud")
    if st.cfg.deposit == "list_head":
        pud_table.w16 = list_first_entry_or_null(top)
        if pud_table.w16 is not None:
            list_del(st, top, "withdraw.pud")
    else:
        pud_table.w16 = top.w8
        if st.cfg.deposit == "lru_next":
            top.w8 = None  # llist_del_first() leaves the node's next as it was
    if top.level != LEVEL_PMD or top.state != PT_DEPOSITED:
        raise ModelBug(
            "withdraw.pud.wrong_table",
            f"popped {top.level} table {top.id} ({top.state}) from PUD table {pud_table.id}",
        )
    top.state = PT_LIVE
    return top


# --------------------------------------------------------------------------------------
# Range walks: the pud_addr_end() / pmd_addr_end() loops of every page-table walker
# --------------------------------------------------------------------------------------


def pud_range(g: Geometry, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The PUD entries over ``[start, end)``: (index, addr, next), next = pud_addr_end()."""
    addr = start
    while addr < end:
        nxt = min(end, addr - addr % g.pud_nr + g.pud_nr)
        yield g.pud_index(addr), addr, nxt
        addr = nxt


def pmd_range(g: Geometry, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """The PMD entries over ``[start, end)`` inside one PUD: (index, addr, next)."""
    addr = start
    while addr < end:
        nxt = min(end, addr - addr % g.pmd_nr + g.pmd_nr)
        yield g.pmd_index(addr), addr, nxt
        addr = nxt


def pte_range(g: Geometry, start: int, end: int) -> range:
    """The PTE indices over ``[start, end)`` inside one PMD."""
    first = g.pte_index(start)
    return range(first, first + (end - start))
