"""The reference checker's walk of the deposit chains, word by word: the PTE tables
deposited in a PMD table by ``pgtable_trans_huge_deposit`` (a sentinel-less circular
``list_head`` through their ``lru``, root in the PMD table's ``pmd_huge_pte``) and the
RFC's PUD-level stack of PMD tables (``pud_huge_pmd``), through the aliased ptdesc words
``w8``/``w16`` exactly as the kernel would follow them: NULL, ``LIST_POISON1/2``,
use-after-free, wrong levels or owners, cycles and broken ``prev`` words all become
violations named ``<chain>.<what>``, never crashes.
"""

from __future__ import annotations

from pudthp_ref.mm_types import PT_DEPOSITED, PT_FREED, PtDesc, Word
from pudthp_ref.spec import LIST_POISON1, LIST_POISON2, InvariantViolation


def deref_word(tables: dict[int, PtDesc], word: Word, name: str, where: str) -> PtDesc:
    """Follow a raw deposit-chain word the way the kernel would dereference it."""
    if word is None:
        raise InvariantViolation(f"{name}.null", f"{where}: NULL where a page table is expected")
    if word in (LIST_POISON1, LIST_POISON2):
        raise InvariantViolation(f"{name}.poison", f"{where}: {word}")
    if type(word) is not int:
        raise InvariantViolation(f"{name}.bad_word", f"{where}: word {word!r}")
    t = tables.get(word)
    if t is None or t.state == PT_FREED:
        raise InvariantViolation(
            f"{name}.use_after_free", f"{where}: word {word} names a freed table"
        )
    return t


def chain_node(t: PtDesc, name: str, level: str, mm: int, where: str) -> None:
    if t.level != level:
        raise InvariantViolation(
            f"{name}.wrong_level", f"{where}: {t.level} table {t.id}, expected {level}"
        )
    if t.state != PT_DEPOSITED:
        raise InvariantViolation(
            f"{name}.state", f"{where}: table {t.id} is {t.state}, not deposited"
        )
    if t.mm != mm:
        raise InvariantViolation(f"{name}.wrong_mm", f"{where}: table {t.id} belongs to mm {t.mm}")


def walk_ring(
    tables: dict[int, PtDesc], root_word: Word, name: str, level: str, mm: int, where: str
) -> list[PtDesc]:
    """A mainline sentinel-less circular list: next = w8, prev = w16, root = newest."""
    if root_word is None:
        return []
    root = deref_word(tables, root_word, name, f"{where} root")
    chain_node(root, name, level, mm, f"{where} root")
    nodes = [root]
    ids = {root.id}
    t = root
    while True:
        here = f"{where} next of {t.id}"
        n = deref_word(tables, t.w8, name, here)
        chain_node(n, name, level, mm, here)
        if n.id != root.id and n.id in ids:
            raise InvariantViolation(
                f"{name}.cycle", f"{here}: table {n.id} revisited before the root"
            )
        if n.w16 != t.id:
            raise InvariantViolation(
                f"{name}.prev", f"{here}: table {n.id} has prev {n.w16!r}, not {t.id}"
            )
        if n.id == root.id:
            return nodes
        ids.add(n.id)
        nodes.append(n)
        t = n


def walk_stack(
    tables: dict[int, PtDesc], root_word: Word, name: str, level: str, mm: int, where: str
) -> list[PtDesc]:
    """The RFC's singly linked stack: next = w8, NULL-terminated (lru_next and llist)."""
    nodes: list[PtDesc] = []
    ids: set[int] = set()
    word = root_word
    here = f"{where} root"
    while word is not None:
        t = deref_word(tables, word, name, here)
        if t.id in ids:
            raise InvariantViolation(f"{name}.cycle", f"{here}: table {t.id} revisited")
        chain_node(t, name, level, mm, here)
        ids.add(t.id)
        nodes.append(t)
        here = f"{where} next of {t.id}"
        word = t.w8
    return nodes
