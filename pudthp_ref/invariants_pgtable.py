"""The reference checker's page-table walk: MODEL.md section 6 over the tables reachable
from the alive mms (``debug_vm_pgtable`` and the page-table walkers' rules).

Entries of the right kind at each level, a table entry naming a live table of the next
level of the same mm, every live or deposited table reached exactly once, huge leaves
aligned inside one VMA and mapping a folio of exactly the leaf's order, writable entries
only in rw VMAs and over AnonExclusive pages, and the deposit chains of each PMD table and
of the PUD stack (``invariants_deposit``) counted against the huge entries they back.  The
walk records what the folio and accounting checks compare against (``Walk``): mappings per
folio, page and mm, swap PTEs per slot, RSS and tables per mm.
"""

from __future__ import annotations

from bisect import bisect_right

from pudthp_ref.invariants_deposit import walk_ring, walk_stack
from pudthp_ref.mm_types import PT_FREED, PT_LIVE, Entry, Folio, MmState, MmStruct, PtDesc, Vma
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE, LEVEL_PUD, InvariantViolation


class FolioAcc:
    """Mappings of one folio found in the page tables."""

    __slots__ = ("cnt", "leaf_mms", "leaves", "owner", "per_mm")

    def __init__(self) -> None:
        self.leaves = 0  # PUD/PMD leaves mapping the folio (entire mapcount)
        self.leaf_mms: dict[int, int] = {}  # mm id -> leaves in that mm
        self.per_mm: dict[int, int] = {}  # mm id -> all mappings (leaves + PTEs) in that mm
        self.cnt: list[int] | None = None  # per page: present PTEs
        self.owner: list[int] | None = None  # per page: -1 none, mm id, -2 several mms


class Walk:
    """The state being checked and everything recomputed from its page tables."""

    __slots__ = (
        "acc",
        "nr_tables",
        "rss_anon",
        "rss_swap",
        "seen",
        "small_cnt",
        "small_owner",
        "st",
        "starts",
        "swap_refs",
        "vmas",
    )

    def __init__(self, st: MmState) -> None:
        n = len(st.mms)
        self.st = st
        self.seen: dict[int, str] = {}  # table id -> where it was reached
        self.acc: dict[int, FolioAcc] = {}  # large folios
        self.small_cnt: dict[int, int] = {}  # order-0 folio -> PTEs mapping it
        self.small_owner: dict[int, int] = {}  # order-0 folio -> mm id, or -2 for several
        self.swap_refs: dict[int, int] = {}
        self.nr_tables = [0] * n
        self.rss_anon = [0] * n
        self.rss_swap = [0] * n
        self.vmas: list[Vma] = []  # of the mm being walked
        self.starts: list[int] = []



def _claim(w: Walk, t: PtDesc, where: str) -> None:
    """Every live or deposited table is reached exactly once."""
    prev = w.seen.get(t.id)
    if prev is not None:
        raise InvariantViolation(
            "pgtable.double_reference",
            f"{t.level} table {t.id} reached as {where} and as {prev}",
        )
    w.seen[t.id] = where
    w.nr_tables[t.mm] += 1


def _live_child(w: Walk, e: Entry, level: str, mm: int, where: str) -> PtDesc:
    """pmd_offset() / pte_offset_map(): the live lower table a table entry names."""
    ptid = e[1]
    t = w.st.tables.get(ptid) if type(ptid) is int else None
    if t is None or t.state == PT_FREED:
        raise InvariantViolation(
            "pgtable.use_after_free", f"{where} names no live table ({ptid!r})"
        )
    if t.level != level:
        raise InvariantViolation(
            "pgtable.wrong_level", f"{where} names {t.level} table {t.id}, expected {level}"
        )
    if t.mm != mm:
        raise InvariantViolation("pgtable.wrong_mm", f"{where} names table {t.id} of mm {t.mm}")
    if t.state != PT_LIVE:
        raise InvariantViolation("pgtable.state", f"{where} names {t.state} table {t.id}")
    _claim(w, t, where)
    return t



def _pmd_deposits(w: Walk, pmd: PtDesc, mm: int) -> int:
    """Walk the PTE tables deposited in a PMD table (root = its pmd_huge_pte, w16)."""
    where = f"mm {mm} PMD table {pmd.id} deposit"
    ring = walk_ring(w.st.tables, pmd.w16, "deposit.pmd_ring", LEVEL_PTE, mm, where)
    P = w.st.geom.P
    for t in ring:
        _claim(w, t, f"{where} ring")
        if t.entries.count(None) != P:
            raise InvariantViolation(
                "deposit.pmd_ring.pte_not_empty", f"{where}: table {t.id} has entries"
            )
    return len(ring)


def _vma_at(w: Walk, vpn: int) -> Vma | None:
    k = bisect_right(w.starts, vpn) - 1
    if k < 0:
        return None
    v = w.vmas[k]
    return v if vpn < v.end else None


def _folio(w: Walk, fid: object, where: str) -> Folio:
    f = w.st.folios.get(fid) if type(fid) is int else None
    if f is None:
        raise InvariantViolation("folio.missing", f"{where} maps unknown folio {fid!r}")
    if f.freed:
        raise InvariantViolation("folio.freed_mapped", f"{where} maps freed folio {fid}")
    return f


def _acc(w: Walk, fid: int) -> FolioAcc:
    a = w.acc.get(fid)
    if a is None:
        a = w.acc[fid] = FolioAcc()
    return a


def _leaf(w: Walk, mm: int, e: Entry, vbase: int, level: str) -> None:
    """A PUD or PMD huge leaf (a THP, not the huge zero PMD)."""
    g = w.st.geom
    npages, order = (g.pud_nr, g.pud_order) if level == LEVEL_PUD else (g.pmd_nr, g.pmd_order)
    where = f"mm {mm} {level.upper()} leaf at vpn {vbase}"
    vma = _leaf_vma(w, vbase, npages, where)
    f = _folio(w, e[1], where)
    if f.order != order:
        raise InvariantViolation(
            "geometry.leaf_order", f"{where} maps folio {f.id} of order {f.order}"
        )
    if e[2]:
        if vma.prot != "rw":
            raise InvariantViolation("geometry.write_prot", f"{where} writable in a {vma.prot} VMA")
        if not f.anon_exclusive[0]:
            raise InvariantViolation(
                "anon_exclusive.writable", f"{where} writable, head of {f.id} not exclusive"
            )
    a = _acc(w, f.id)
    a.leaves += 1
    a.leaf_mms[mm] = a.leaf_mms.get(mm, 0) + 1
    a.per_mm[mm] = a.per_mm.get(mm, 0) + 1
    w.rss_anon[mm] += npages


def _leaf_vma(w: Walk, vbase: int, npages: int, where: str) -> Vma:
    vma = _vma_at(w, vbase)
    if vma is None:
        raise InvariantViolation("geometry.outside_vma", f"{where}: no VMA")
    if vma.end < vbase + npages:
        raise InvariantViolation(
            "geometry.leaf_straddles_vma",
            f"{where} ({npages} pages) crosses the end of VMA [{vma.start}, {vma.end})",
        )
    return vma


def walk_mm(w: Walk, mm: MmStruct) -> None:
    st = w.st
    g = st.geom
    P = g.P
    m = mm.id
    w.vmas = mm.vmas
    w.starts = [v.start for v in mm.vmas]
    pud = st.tables.get(mm.pud_table) if type(mm.pud_table) is int else None
    if pud is None or pud.state == PT_FREED:
        raise InvariantViolation(
            "pgtable.use_after_free", f"mm {m} PUD table {mm.pud_table!r} not live"
        )
    if pud.level != LEVEL_PUD:
        raise InvariantViolation(
            "pgtable.wrong_level", f"mm {m} PUD table {pud.id} is a {pud.level} table"
        )
    if pud.mm != m:
        raise InvariantViolation(
            "pgtable.wrong_mm", f"mm {m} PUD table {pud.id} belongs to mm {pud.mm}"
        )
    if pud.state != PT_LIVE:
        raise InvariantViolation("pgtable.state", f"mm {m} PUD table {pud.id} is {pud.state}")
    _claim(w, pud, f"mm {m} PUD table")
    pud_leaves = 0
    for i, e in enumerate(pud.entries):
        if e is None:
            continue
        k = e[0]
        vbase = i * P * P
        if k == "table":
            pmd = _live_child(w, e, LEVEL_PMD, m, f"mm {m} PUD entry {i}")
            _walk_pmd(w, m, pmd, vbase)
        elif k == "leaf":
            _leaf(w, m, e, vbase, LEVEL_PUD)
            pud_leaves += 1
        else:
            raise InvariantViolation("pgtable.bad_entry", f"mm {m} PUD entry {i} is {e!r}")
    where = f"mm {m} PUD table {pud.id} stack"
    name = "deposit.pud_stack"
    if st.cfg.deposit == "list_head":
        stack = walk_ring(w.st.tables, pud.w16, name, LEVEL_PMD, m, where)
    else:
        stack = walk_stack(w.st.tables, pud.w16, name, LEVEL_PMD, m, where)
    if len(stack) != pud_leaves:
        raise InvariantViolation(
            "deposit.pud_stack.count",
            f"{where}: {len(stack)} PMD tables deposited for {pud_leaves} PUD leaves",
        )
    for t in stack:
        _claim(w, t, where)
    for t in stack:
        if t.entries.count(None) != P:
            raise InvariantViolation(
                "deposit.pud_stack.pmd_not_empty", f"{where}: table {t.id} has entries"
            )
        n = _pmd_deposits(w, t, m)
        if n != P:
            raise InvariantViolation(
                "deposit.pud_stack.pte_count",
                f"{where}: PMD table {t.id} holds {n} PTE tables, not {P}",
            )


def _walk_pmd(w: Walk, m: int, pmd: PtDesc, base: int) -> None:
    P = w.st.geom.P
    huge = 0
    for j, e in enumerate(pmd.entries):
        if e is None:
            continue
        k = e[0]
        vbase = base + j * P
        if k == "table":
            pte = _live_child(w, e, LEVEL_PTE, m, f"mm {m} PMD table {pmd.id} entry {j}")
            _walk_pte(w, m, pte, vbase)
        elif k == "leaf":
            _leaf(w, m, e, vbase, LEVEL_PMD)
            huge += 1
        elif k == "zero":
            _leaf_vma(w, vbase, P, f"mm {m} huge zero PMD at vpn {vbase}")
            huge += 1
        else:
            raise InvariantViolation(
                "pgtable.bad_entry", f"mm {m} PMD table {pmd.id} entry {j} is {e!r}"
            )
    n = _pmd_deposits(w, pmd, m)
    if n != huge:
        raise InvariantViolation(
            "deposit.pmd_ring.count",
            f"mm {m} PMD table {pmd.id}: {n} PTE tables deposited for {huge} huge PMDs",
        )


def _walk_pte(w: Walk, m: int, t: PtDesc, base: int) -> None:
    """The hot loop: up to P*P PTEs per split PUD folio, so one pass, few lookups."""
    entries = t.entries
    P = w.st.geom.P
    if entries.count(None) == P:
        return
    tv = _vma_at(w, base)
    if tv is not None and tv.end < base + P:
        tv = None  # the table's range is not within one VMA: look up per entry
    tv_rw = tv is not None and tv.prot == "rw"
    rw = tv_rw
    cur_fid: object = None
    cur: FolioAcc | None = None
    cnt: list[int] = []
    owner: list[int] = []
    ae: list[bool] = []
    nr = 0
    run = 0
    present = 0
    swaps = 0
    swap_refs = w.swap_refs
    folios = w.st.folios
    small_cnt = w.small_cnt
    small_owner = w.small_owner
    for i, e in enumerate(entries):
        if e is None:
            continue
        if tv is None:
            v = _vma_at(w, base + i)
            if v is None:
                raise InvariantViolation(
                    "geometry.outside_vma", f"mm {m} PTE {e!r} at vpn {base + i}: no VMA"
                )
            rw = v.prot == "rw"
        k = e[0]
        if k == "pte":
            fid = e[1]
            if fid != cur_fid or cur is None:
                f = folios.get(fid)
                if f is None or f.freed:
                    f = _folio(w, fid, f"mm {m} PTE at vpn {base + i}")  # raises
                if f.nr == 1:
                    # order 0 (maybe 262144 of them after a split): no FolioAcc, and the
                    # cached large folio stays cached
                    if e[2] != 0 or type(e[2]) is not int:
                        raise InvariantViolation(
                            "geometry.pte_index",
                            f"mm {m} PTE at vpn {base + i} maps page {e[2]!r} of order-0 "
                            f"folio {fid}",
                        )
                    small_cnt[fid] = small_cnt.get(fid, 0) + 1
                    o = small_owner.get(fid, -1)
                    if o != m:
                        small_owner[fid] = m if o == -1 else -2
                    if e[3]:
                        if not rw:
                            raise InvariantViolation(
                                "geometry.write_prot",
                                f"mm {m} writable PTE at vpn {base + i} in a VMA that is not rw",
                            )
                        if not f.anon_exclusive[0]:
                            raise InvariantViolation(
                                "anon_exclusive.writable",
                                f"mm {m} writable PTE at vpn {base + i}: order-0 folio {fid} "
                                "not exclusive",
                            )
                    present += 1
                    continue
                if cur is not None:
                    cur.per_mm[m] = cur.per_mm.get(m, 0) + run
                    present += run
                cur_fid = fid
                cur = _acc(w, f.id)
                if cur.cnt is None or cur.owner is None:
                    cur.cnt = [0] * f.nr
                    cur.owner = [-1] * f.nr
                cnt = cur.cnt
                owner = cur.owner
                ae = f.anon_exclusive
                nr = f.nr
                run = 0
            idx = e[2]
            if type(idx) is not int or not 0 <= idx < nr:
                raise InvariantViolation(
                    "geometry.pte_index",
                    f"mm {m} PTE at vpn {base + i} maps page {idx!r} of {nr}-page folio {fid}",
                )
            cnt[idx] += 1
            o = owner[idx]
            if o != m:
                owner[idx] = m if o == -1 else -2
            if e[3]:
                if not rw:
                    raise InvariantViolation(
                        "geometry.write_prot",
                        f"mm {m} writable PTE at vpn {base + i} in a VMA that is not rw",
                    )
                if not ae[idx]:
                    raise InvariantViolation(
                        "anon_exclusive.writable",
                        f"mm {m} writable PTE at vpn {base + i}: page {idx} of folio {fid} "
                        "not exclusive",
                    )
            run += 1
        elif k == "zero":
            pass
        elif k == "swap":
            slot = e[1]
            swap_refs[slot] = swap_refs.get(slot, 0) + 1
            swaps += 1
        else:
            raise InvariantViolation(
                "pgtable.bad_entry", f"mm {m} PTE table {t.id} entry {i} is {e!r}"
            )
    if cur is not None:
        cur.per_mm[m] = cur.per_mm.get(m, 0) + run
        present += run
    w.rss_anon[m] += present
    w.rss_swap[m] += swaps


def check_reachability(w: Walk) -> None:
    """Every live or deposited table was reached (alive mms; dead ones were checked)."""
    for key, t in w.st.tables.items():
        if t.state != PT_FREED and key not in w.seen:
            raise InvariantViolation(
                "pgtable.leak",
                f"{t.state} {t.level} table {key} of mm {t.mm} reached by no entry or chain",
            )
