"""The fast checker's walk of the deposit chains, word by word: pgtable_trans_huge_deposit()'s
rings and the RFC's PUD stack over Python lists of the raw ``t_w8`` / ``t_w16`` words
(``pudthp_ref.invariants_deposit``, same names for the same defects).

A chain is short next to the pages (a PMD table's ring holds at most P PTE tables, a PUD
table's stack one PMD table per PUD leaf), so a Python loop over lists beats numpy calls.
A node passes one quick test (a deposited table of the level and mm expected, by a word in
range); only when it fails is it looked at again to name what is wrong, so a correct chain
builds no message.
"""

from __future__ import annotations

from typing import Any

from pudthp_fast.state import (
    LEVEL_CODE,
    NULL,
    POISON1,
    POISON2,
    ST_DEPOSITED,
    ST_FREE,
    ST_LIVE,
    FastState,
)
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE, LEVELS

_STATE_NAMES = {ST_FREE: "freed", ST_LIVE: "live", ST_DEPOSITED: "deposited"}


def state_name(s: Any) -> str:
    return _STATE_NAMES.get(int(s), str(s))


def level_name(lv: Any) -> str:
    i = int(lv)
    return LEVELS[i] if 0 <= i < len(LEVELS) else str(i)


def _at(where: str, prev: int) -> str:
    """Where in a chain a word was read: its root word, or the next word of table ``prev``."""
    return f"{where} root" if prev == NULL else f"{where} next of {prev}"


class ChainBroken(Exception):
    """A deposit chain broke at a word: ``(name, message)``."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(name, message)
        self.name = name
        self.message = message


class DepositChains:
    """The chains of one state, walked unit by unit (a live PMD table's ring, a live PUD
    table's stack with the rings of its PMD tables); every table a walk reaches is claimed
    once, in ``reached``, and checked to hold no entries as the reference checks it.

    ``nonempty`` (per table id): the table has an entry.  ``claimed`` (per table id):
    tables reached through a table entry, which no chain may hold as well."""

    def __init__(self, st: FastState, npt: int, nonempty: list[bool], claimed: Any) -> None:
        self.P = st.P
        self.npt = npt
        self.w8: list[int] = st.t_w8[:npt].tolist()
        self.w16: list[int] = st.t_w16[:npt].tolist()
        self.level: list[int] = st.t_level[:npt].tolist()
        self.state: list[int] = st.t_state[:npt].tolist()
        self.mm: list[int] = st.t_mm[:npt].tolist()
        self.list_head = st.cfg.deposit == "list_head"
        self.nonempty = nonempty
        self.claimed = claimed
        self.seen: set[int] = set()
        self.reached: list[int] = []

    # ----------------------------------------------------------------------------------
    # One node, one chain
    # ----------------------------------------------------------------------------------

    def deref(self, word: int, name: str, where: str) -> int:
        if word == NULL:
            raise ChainBroken(f"{name}.null", f"{where}: NULL where a page table is expected")
        if word in (POISON1, POISON2):
            poison = "LIST_POISON1" if word == POISON1 else "LIST_POISON2"
            raise ChainBroken(f"{name}.poison", f"{where}: {poison}")
        if word < 0:
            raise ChainBroken(f"{name}.bad_word", f"{where}: word {word}")
        if word >= self.npt or self.state[word] == ST_FREE:
            raise ChainBroken(f"{name}.use_after_free", f"{where}: word {word} names a freed table")
        return word

    def node(self, t: int, name: str, level: int, mm: int, where: str) -> None:
        if self.level[t] != level:
            raise ChainBroken(
                f"{name}.wrong_level",
                f"{where}: {level_name(self.level[t])} table {t}, expected {LEVELS[level]}",
            )
        if self.state[t] != ST_DEPOSITED:
            raise ChainBroken(
                f"{name}.state",
                f"{where}: table {t} is {state_name(self.state[t])}, not deposited",
            )
        if self.mm[t] != mm:
            raise ChainBroken(f"{name}.wrong_mm", f"{where}: table {t} belongs to mm {self.mm[t]}")

    def explain(self, word: int, name: str, level: int, mm: int, where: str) -> None:
        """``deref`` then ``node`` of a word that failed the quick test (the test is the two
        of them passing), so one of them raises what is wrong with it."""
        self.node(self.deref(word, name, where), name, level, mm, where)

    def ring(self, root_word: int, name: str, level: int, mm: int, where: str) -> list[int]:
        """A sentinel-less circular list: next = w8, prev = w16, root = newest."""
        if root_word == NULL:
            return []
        npt, state, lv, mms, w8, w16 = self.npt, self.state, self.level, self.mm, self.w8, self.w16
        root = root_word
        if not (0 < root < npt and state[root] == ST_DEPOSITED and lv[root] == level
                and mms[root] == mm):
            self.explain(root, name, level, mm, _at(where, NULL))
        nodes = [root]
        ids = {root}
        t = root
        while True:
            n = w8[t]
            if not (0 < n < npt and state[n] == ST_DEPOSITED and lv[n] == level
                    and mms[n] == mm):
                self.explain(n, name, level, mm, _at(where, t))
            if n != root and n in ids:
                raise ChainBroken(
                    f"{name}.cycle", f"{_at(where, t)}: table {n} revisited before the root"
                )
            if w16[n] != t:
                raise ChainBroken(
                    f"{name}.prev", f"{_at(where, t)}: table {n} has prev {w16[n]}, not {t}"
                )
            if n == root:
                return nodes
            ids.add(n)
            nodes.append(n)
            t = n

    def stack(self, root_word: int, name: str, level: int, mm: int, where: str) -> list[int]:
        """The RFC's singly linked stack: next = w8, NULL-terminated (lru_next and llist)."""
        npt, state, lv, mms, w8 = self.npt, self.state, self.level, self.mm, self.w8
        nodes: list[int] = []
        ids: set[int] = set()
        t = root_word
        prev = NULL
        while t != NULL:
            # a table met again passed the quick test the first time: only the cycle is new
            if not (0 < t < npt and state[t] == ST_DEPOSITED and lv[t] == level
                    and mms[t] == mm):
                self.explain(t, name, level, mm, _at(where, prev))
            if t in ids:
                raise ChainBroken(f"{name}.cycle", f"{_at(where, prev)}: table {t} revisited")
            ids.add(t)
            nodes.append(t)
            prev = t
            t = w8[t]
        return nodes

    def claim(self, nodes: list[int], reached_as: str, empty: str, where: str) -> None:
        """Every table is reached once: ``nodes`` neither before nor through a table entry;
        with ``empty``, each node, once claimed, holds no entries."""
        seen, claimed, reached, level = self.seen, self.claimed, self.reached, self.level
        for t in nodes:
            if t in seen or claimed[t]:
                raise ChainBroken(
                    "pgtable.double_reference",
                    f"{level_name(level[t])} table {t} reached as {reached_as} and before",
                )
            seen.add(t)
            reached.append(t)
            if empty and self.nonempty[t]:
                raise ChainBroken(empty, f"{where}: table {t} has entries")

    # ----------------------------------------------------------------------------------
    # Units
    # ----------------------------------------------------------------------------------

    def pmd_deposits(self, pmd: int, mm: int) -> int:
        """The PTE tables deposited in PMD table ``pmd`` (root = its pmd_huge_pte, w16)."""
        where = f"mm {mm} PMD table {pmd} deposit"
        ring = self.ring(self.w16[pmd], "deposit.pmd_ring", LEVEL_CODE[LEVEL_PTE], mm, where)
        self.claim(ring, f"{where} ring", "deposit.pmd_ring.pte_not_empty", where)
        return len(ring)

    def pmd_unit(self, pmd: int, mm: int, huge: int) -> None:
        """A live PMD table's ring: one PTE table per huge PMD (leaf or huge zero)."""
        n = self.pmd_deposits(pmd, mm)
        if n != huge:
            raise ChainBroken(
                "deposit.pmd_ring.count",
                f"mm {mm} PMD table {pmd}: {n} PTE tables deposited for {huge} huge PMDs",
            )

    def pud_unit(self, pud: int, mm: int, pud_leaves: int) -> None:
        """A live PUD table's stack (a ring under the list_head design): one PMD table per
        PUD leaf, each holding P PTE tables."""
        where = f"mm {mm} PUD table {pud} stack"
        name = "deposit.pud_stack"
        walk = self.ring if self.list_head else self.stack
        stack = walk(self.w16[pud], name, LEVEL_CODE[LEVEL_PMD], mm, where)
        if len(stack) != pud_leaves:
            raise ChainBroken(
                "deposit.pud_stack.count",
                f"{where}: {len(stack)} PMD tables deposited for {pud_leaves} PUD leaves",
            )
        self.claim(stack, where, "", where)
        for t in stack:
            if self.nonempty[t]:
                raise ChainBroken(
                    "deposit.pud_stack.pmd_not_empty", f"{where}: table {t} has entries"
                )
            n = self.pmd_deposits(t, mm)
            if n != self.P:
                raise ChainBroken(
                    "deposit.pud_stack.pte_count",
                    f"{where}: PMD table {t} holds {n} PTE tables, not {self.P}",
                )
