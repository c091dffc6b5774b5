"""Unit tests of the deposit routines in pudthp_ref/pgtable.py, word by word.

Expected words are derived by hand from include/linux/list.h and mm/pgtable-generic.c
(background ``kernel-thp-semantics.md`` 2.2) and from docs/model.md 5.3 for the PUD stack;
never from a run of the model.  ``w8`` is offset 8 of struct page (``lru.next``), ``w16``
offset 16 (``lru.prev`` = ``pmd_huge_pte`` = ``pud_huge_pmd``).  ``T(x, y)`` in the comments
means a table with ``w8 == x`` and ``w16 == y``.

Reminders of list.h: ``INIT_LIST_HEAD(h)``: h.next = h.prev = h.  ``list_add(new, head)`` is
``__list_add(new, prev=head, next=head->next)``: next->prev = new; new->next = next;
new->prev = head; head->next = new.  ``list_del(e)``: e->next->prev = e->prev;
e->prev->next = e->next; then e->next = LIST_POISON1, e->prev = LIST_POISON2.
``list_first_entry_or_null(h)`` is NULL iff h->next == h.
"""

from __future__ import annotations

import pytest
from statebuild import P, new_mm, new_state

from pudthp_ref.mm_types import PT_DEPOSITED, PT_LIVE, MmState, MmStruct, PtDesc
from pudthp_ref.model import RefModel
from pudthp_ref.pgtable import (
    deref,
    pgtable_trans_huge_deposit,
    pgtable_trans_huge_pud_deposit,
    pgtable_trans_huge_pud_withdraw,
    pgtable_trans_huge_withdraw,
    pt_alloc,
)
from pudthp_ref.spec import (
    LIST_POISON1,
    LIST_POISON2,
    PAGE_TABLE_BYTES,
    Config,
    Exit,
    Mmap,
    ModelBug,
    Write,
)

VARIANTS = ["lru_next", "llist", "list_head"]


def setup(deposit: str) -> tuple[MmState, MmStruct, PtDesc]:
    """A state at P=4 with mm 0 and its PUD table (page-table id 1)."""
    st = new_state(deposit=deposit)
    mm = new_mm(st, 0)
    return st, mm, st.tables[mm.pud_table]


def words(t: PtDesc) -> tuple[object, object]:
    return (t.w8, t.w16)


# --------------------------------------------------------------------------------------
# PMD level: mainline pgtable_trans_huge_deposit / _withdraw (the same in every variant)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("deposit", VARIANTS)
def test_pmd_deposit_three_withdraw_gives_c_a_b(deposit: str) -> None:
    st, mm, _ = setup(deposit)
    pmd = pt_alloc(st, mm, "pmd")  # id 2
    a, b, c = (pt_alloc(st, mm, "pte") for _ in range(3))  # ids 3, 4, 5
    assert (pmd.id, a.id, b.id, c.id) == (2, 3, 4, 5)
    assert mm.pgtables_bytes == 5 * PAGE_TABLE_BYTES  # deposit itself changes no bytes

    pgtable_trans_huge_deposit(st, pmd, a)
    # Root NULL -> INIT_LIST_HEAD(A): A(A, A); root = A.
    assert words(a) == (a.id, a.id)
    assert pmd.w16 == a.id
    assert a.state == PT_DEPOSITED

    pgtable_trans_huge_deposit(st, pmd, b)
    # list_add(B, head A): next = A.next = A; A.prev = B; B.next = A; B.prev = A;
    # A.next = B.  Root = B.  A(B, B), B(A, A).
    assert words(a) == (b.id, b.id)
    assert words(b) == (a.id, a.id)
    assert pmd.w16 == b.id

    pgtable_trans_huge_deposit(st, pmd, c)
    # list_add(C, head B): next = B.next = A; A.prev = C; C.next = A; C.prev = B;
    # B.next = C.  Root = C.  A(B, C), B(C, A), C(A, B): the ring C -> A -> B -> C.
    assert words(a) == (b.id, c.id)
    assert words(b) == (c.id, a.id)
    assert words(c) == (a.id, b.id)
    assert pmd.w16 == c.id
    assert pmd.w8 is None  # the PMD table's own lru.next is never written

    got = pgtable_trans_huge_withdraw(st, pmd)
    # pgtable = root C; root = first entry of C = C.next = A (C.next != C); list_del(C):
    # C.next(A).prev = C.prev = B; C.prev(B).next = C.next = A; C poisoned.
    # A(B, B), B(A, A), C(POISON1, POISON2).
    assert got is c
    assert pmd.w16 == a.id
    assert words(a) == (b.id, b.id)
    assert words(b) == (a.id, a.id)
    assert words(c) == (LIST_POISON1, LIST_POISON2)
    assert c.state == PT_LIVE

    got = pgtable_trans_huge_withdraw(st, pmd)
    # pgtable = A; root = A.next = B; list_del(A): B.prev = A.prev = B; B.next = A.next =
    # B; A poisoned.  B(B, B).
    assert got is a
    assert pmd.w16 == b.id
    assert words(b) == (b.id, b.id)
    assert words(a) == (LIST_POISON1, LIST_POISON2)

    got = pgtable_trans_huge_withdraw(st, pmd)
    # pgtable = B; B.next == B -> first entry NULL -> root NULL; no list_del, so the last
    # table keeps w8 == w16 == itself.
    assert got is b
    assert pmd.w16 is None
    assert words(b) == (b.id, b.id)
    assert [t.state for t in (a, b, c)] == [PT_LIVE] * 3
    assert mm.pgtables_bytes == 5 * PAGE_TABLE_BYTES


@pytest.mark.parametrize("deposit", VARIANTS)
def test_pmd_withdraw_from_empty_root_is_a_model_bug(deposit: str) -> None:
    st, mm, _ = setup(deposit)
    pmd = pt_alloc(st, mm, "pmd")
    # pmd_huge_pte NULL: the kernel would dereference NULL.
    with pytest.raises(ModelBug) as exc:
        pgtable_trans_huge_withdraw(st, pmd)
    assert exc.value.check == "withdraw.pmd.null"
    pgtable_trans_huge_deposit(st, pmd, pt_alloc(st, mm, "pte"))
    pgtable_trans_huge_withdraw(st, pmd)
    with pytest.raises(ModelBug) as exc:
        pgtable_trans_huge_withdraw(st, pmd)
    assert exc.value.check == "withdraw.pmd.null"


def test_dereferencing_poison_is_a_model_bug() -> None:
    st, mm, _ = setup("lru_next")
    pmd = pt_alloc(st, mm, "pmd")
    a, b = pt_alloc(st, mm, "pte"), pt_alloc(st, mm, "pte")
    pgtable_trans_huge_deposit(st, pmd, a)
    pgtable_trans_huge_deposit(st, pmd, b)
    assert pgtable_trans_huge_withdraw(st, pmd) is b  # B(POISON1, POISON2)
    with pytest.raises(ModelBug) as exc:
        deref(st, b.w8, "probe")
    assert exc.value.check == "probe.poison"
    with pytest.raises(ModelBug) as exc:
        deref(st, b.w16, "probe")
    assert exc.value.check == "probe.poison"
    # A stale root naming the withdrawn (poisoned) table: the next deposit does
    # list_add(new, head B), reading B.next = LIST_POISON1.
    pmd.w16 = b.id
    with pytest.raises(ModelBug) as exc:
        pgtable_trans_huge_deposit(st, pmd, pt_alloc(st, mm, "pte"))
    assert exc.value.check == "deposit.pmd.poison"


# --------------------------------------------------------------------------------------
# PUD stack: lru_next and llist (links through w8 only)
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("deposit", ["lru_next", "llist"])
def test_pud_stack_push_pop(deposit: str) -> None:
    st, mm, pud = setup(deposit)
    x = pt_alloc(st, mm, "pmd")  # id 2
    t1 = pt_alloc(st, mm, "pte")  # id 3
    y = pt_alloc(st, mm, "pmd")  # id 4
    t2 = pt_alloc(st, mm, "pte")  # id 5
    # Fault order (docs/model.md 5.3): push the PMD table, then deposit into it.
    pgtable_trans_huge_pud_deposit(st, pud, x)
    # push: X.w8 = old top (NULL); root = X.  X.w16 untouched.
    assert words(x) == (None, None)
    assert pud.w16 == x.id
    assert x.state == PT_DEPOSITED
    pgtable_trans_huge_deposit(st, x, t1)  # X.w16 = T1, T1(T1, T1)
    pgtable_trans_huge_pud_deposit(st, pud, y)
    # push: Y.w8 = old top X; root = Y.
    assert words(y) == (x.id, None)
    assert pud.w16 == y.id
    pgtable_trans_huge_deposit(st, y, t2)  # Y.w16 = T2
    assert words(x) == (None, t1.id)
    assert words(y) == (x.id, t2.id)
    assert pud.w8 is None

    got = pgtable_trans_huge_pud_withdraw(st, pud)
    # pop: top = Y; root = Y.w8 = X.  lru_next clears Y.w8 to NULL; llist_del_first leaves
    # the popped node's next as it was (X).  Y.w16 (its own PTE root) is intact.
    assert got is y
    assert pud.w16 == x.id
    assert y.w8 == (None if deposit == "lru_next" else x.id)
    assert y.w16 == t2.id
    assert y.state == PT_LIVE
    assert pgtable_trans_huge_withdraw(st, y) is t2

    got = pgtable_trans_huge_pud_withdraw(st, pud)
    # pop: top = X; root = X.w8 = NULL; X.w8 stays NULL either way.
    assert got is x
    assert pud.w16 is None
    assert words(x) == (None, t1.id)
    assert pgtable_trans_huge_withdraw(st, x) is t1
    assert x.w16 is None  # a split's live PMD table ends with pmd_huge_pte NULL

    with pytest.raises(ModelBug) as exc:
        pgtable_trans_huge_pud_withdraw(st, pud)
    assert exc.value.check == "withdraw.pud.null"


# --------------------------------------------------------------------------------------
# PUD stack: list_head (mainline list routines on the PMD tables' lru -- meant to fail)
# --------------------------------------------------------------------------------------


def test_list_head_pud_stack_words() -> None:
    st, mm, pud = setup("list_head")
    x = pt_alloc(st, mm, "pmd")  # id 2
    y = pt_alloc(st, mm, "pmd")  # id 3
    pgtable_trans_huge_pud_deposit(st, pud, x)
    # Root NULL -> INIT_LIST_HEAD(X): X(X, X).  X's pmd_huge_pte (w16) now names X itself.
    assert words(x) == (x.id, x.id)
    assert pud.w16 == x.id
    pgtable_trans_huge_pud_deposit(st, pud, y)
    # list_add(Y, head X): next = X.next = X; X.prev = Y; Y.next = X; Y.prev = X;
    # X.next = Y.  Root = Y.  X(Y, Y), Y(X, X): each PMD table's pmd_huge_pte names the
    # other PMD table.
    assert words(x) == (y.id, y.id)
    assert words(y) == (x.id, x.id)
    assert pud.w16 == y.id

    got = pgtable_trans_huge_pud_withdraw(st, pud)
    # top = Y; root = Y.next = X (!= Y); list_del(Y): X.prev = Y.prev = X; X.next = Y.next
    # = X; Y poisoned.  The popped PMD table's pmd_huge_pte is LIST_POISON2, not NULL.
    assert got is y
    assert pud.w16 == x.id
    assert words(y) == (LIST_POISON1, LIST_POISON2)
    assert words(x) == (x.id, x.id)

    got = pgtable_trans_huge_pud_withdraw(st, pud)
    # top = X; X.next == X -> root NULL, no list_del: X keeps X(X, X), pmd_huge_pte = X.
    assert got is x
    assert pud.w16 is None
    assert words(x) == (x.id, x.id)


def test_list_head_fault_order_destroys_the_pte_deposit_root() -> None:
    st, mm, pud = setup("list_head")
    x = pt_alloc(st, mm, "pmd")  # id 2
    t1, t2 = pt_alloc(st, mm, "pte"), pt_alloc(st, mm, "pte")  # ids 3, 4
    pgtable_trans_huge_pud_deposit(st, pud, x)  # X(X, X), PUD root X
    pgtable_trans_huge_deposit(st, x, t1)
    # X.w16 (pmd_huge_pte) = X is not NULL, so no INIT_LIST_HEAD: list_add(T1, head X):
    # next = X.next = X; X.prev = T1; T1.next = X; T1.prev = X; X.next = T1; root X.w16 =
    # T1.  X(T1, T1), T1(X, X): the PMD table sits in its own PTE-deposit ring.
    assert words(x) == (t1.id, t1.id)
    assert words(t1) == (x.id, x.id)
    pgtable_trans_huge_deposit(st, x, t2)
    # list_add(T2, head T1): next = T1.next = X; X.prev = T2; T2.next = X; T2.prev = T1;
    # T1.next = T2; root X.w16 = T2.  X(T1, T2), T1(T2, X), T2(X, T1).
    assert words(x) == (t1.id, t2.id)
    assert words(t1) == (t2.id, x.id)
    assert words(t2) == (x.id, t1.id)
    assert pud.w16 == x.id

    got = pgtable_trans_huge_pud_withdraw(st, pud)
    # Pop: top = X; root = X.next = T1 (a PTE table!); list_del(X): next T1.prev = X.prev
    # = T2; prev T2.next = X.next = T1; X poisoned.  X comes off as a live PMD table whose
    # pmd_huge_pte is LIST_POISON2: its PTE-deposit root is gone.
    assert got is x
    assert pud.w16 == t1.id
    assert words(x) == (LIST_POISON1, LIST_POISON2)
    assert words(t1) == (t2.id, t2.id)
    assert words(t2) == (t1.id, t1.id)

    with pytest.raises(ModelBug) as exc:
        pgtable_trans_huge_withdraw(st, x)
    assert exc.value.check == "withdraw.pmd.poison"

    # The PUD stack now starts at T1: the next pop unlinks T1 (root T2) and returns a PTE
    # table where a PMD table belongs.
    with pytest.raises(ModelBug) as exc:
        pgtable_trans_huge_pud_withdraw(st, pud)
    assert exc.value.check == "withdraw.pud.wrong_table"


@pytest.mark.parametrize("deposit", ["lru_next", "llist"])
def test_fault_order_keeps_the_pte_deposit_root(deposit: str) -> None:
    # The same sequence as above under the w8-only stacks.
    st, mm, pud = setup(deposit)
    x = pt_alloc(st, mm, "pmd")
    t1, t2 = pt_alloc(st, mm, "pte"), pt_alloc(st, mm, "pte")
    pgtable_trans_huge_pud_deposit(st, pud, x)  # X(NULL, NULL)
    pgtable_trans_huge_deposit(st, x, t1)  # root NULL -> INIT: T1(T1, T1), X.w16 = T1
    pgtable_trans_huge_deposit(st, x, t2)  # T1(T2, T2), T2(T1, T1), X.w16 = T2
    assert words(x) == (None, t2.id)
    assert words(t1) == (t2.id, t2.id)
    assert words(t2) == (t1.id, t1.id)
    assert pgtable_trans_huge_pud_withdraw(st, pud) is x
    assert pgtable_trans_huge_withdraw(st, x) is t2
    assert pgtable_trans_huge_withdraw(st, x) is t1
    assert x.w16 is None


def test_list_head_pud_fault_then_exit_reports_the_corruption() -> None:
    # Through the model: the PUD fault pushes PMD table X (id 2) and deposits T1..T4 (ids
    # 3-6) into it.  As above, X(X, X) after the push, then each list_add goes through
    # X.w16: the ring X -> T1 -> T2 -> T3 -> T4 -> X, X(T1, T4).  The zap at exit pops X
    # (list_del poisons X.w16) and the first PTE withdraw from X dereferences LIST_POISON2.
    m = RefModel(Config(geometry=P, deposit="list_head"))
    assert m.apply(Mmap(0, 0, 64, "rw")) == 0
    assert m.apply(Write(0, 16, 7)) == 0
    x = m.st.tables[2]
    assert x.level == "pmd"
    assert words(x) == (3, 6)
    with pytest.raises(ModelBug) as exc:
        m.apply(Exit(0))
    assert exc.value.check == "withdraw.pmd.poison"
