"""Invariant checker: MODEL.md section 6, recomputed from the page tables after every op.

This is the model's union of the kernel's own consistency checks:

- ``debug_vm_pgtable`` / page-table walkers: entries of the right kind at each level, a
  table entry naming a live table of the next level of the same mm, huge leaves aligned
  inside one VMA and mapping a folio of exactly the leaf's order;
- the deposit chains of ``pgtable_trans_huge_deposit`` (PMD level, a sentinel-less circular
  ``list_head`` through the deposited PTE tables' ``lru``) and of the RFC's PUD-level stack
  (``pud_huge_pmd``), walked word by word through the aliased ptdesc words ``w8``/``w16``:
  NULL, ``LIST_POISON1/2``, use-after-free, wrong levels, cycles and miscounts all become
  violations, never crashes;
- ``check_mm`` at mm teardown (RSS and ``pgtables_bytes`` zero, no page tables left) and the
  per-mm accounting it relies on while the mm lives;
- the free-time checks of ``free_tail_page_prepare`` / ``page_expected_state`` for freed
  folios, and the rmap invariants I1-I21 of the background note for live ones (per-page and
  large mapcounts, ``_nr_pages_mapped``, the mm-id slots with their SHARED bit, refcount =
  mappings + pins + swap cache, PageAnonExclusive, the deferred split queue and the
  ``NR_ANON_*`` / mTHP counters).

Nothing the model keeps as a counter is trusted: everything is recomputed from the live page
tables of the alive mms and compared.  ``check_invariants`` raises ``InvariantViolation`` on
the first broken invariant; its ``invariant`` is a short stable dotted name (no ids), the
message carries the ids and values.  Any other exception met while reading a malformed state
is reported as ``state.malformed`` (but ``MemoryError``: running out of memory is no state).
"""

from __future__ import annotations

from bisect import bisect_right

from pudthp_ref.mm_types import (
    PT_DEPOSITED,
    PT_FREED,
    PT_LIVE,
    Entry,
    Folio,
    MmState,
    MmStruct,
    PtDesc,
    Vma,
    Word,
)
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    GUP_PIN_COUNTING_BIAS,
    LEVEL_PMD,
    LEVEL_PTE,
    LEVEL_PUD,
    LEVELS,
    LIST_POISON1,
    LIST_POISON2,
    PAGE_TABLE_BYTES,
    PROTS,
    InvariantViolation,
)

_PT_STATES = (PT_LIVE, PT_DEPOSITED, PT_FREED)


def check_invariants(st: MmState) -> None:
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


# --------------------------------------------------------------------------------------
# What the walk recomputes
# --------------------------------------------------------------------------------------


class _FolioAcc:
    """Mappings of one folio found in the page tables."""

    __slots__ = ("cnt", "leaf_mms", "leaves", "owner", "per_mm")

    def __init__(self) -> None:
        self.leaves = 0  # PUD/PMD leaves mapping the folio (entire mapcount)
        self.leaf_mms: dict[int, int] = {}  # mm id -> leaves in that mm
        self.per_mm: dict[int, int] = {}  # mm id -> all mappings (leaves + PTEs) in that mm
        self.cnt: list[int] | None = None  # per page: present PTEs
        self.owner: list[int] | None = None  # per page: -1 none, mm id, -2 several mms


class _Walk:
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
        self.acc: dict[int, _FolioAcc] = {}  # large folios
        self.small_cnt: dict[int, int] = {}  # order-0 folio -> PTEs mapping it
        self.small_owner: dict[int, int] = {}  # order-0 folio -> mm id, or -2 for several
        self.swap_refs: dict[int, int] = {}
        self.nr_tables = [0] * n
        self.rss_anon = [0] * n
        self.rss_swap = [0] * n
        self.vmas: list[Vma] = []  # of the mm being walked
        self.starts: list[int] = []


def _check(st: MmState) -> None:
    w = _Walk(st)
    _check_shapes(st)
    for mm in st.mms:
        if mm.alive:
            _walk_mm(w, mm)
    _check_reachability(w)
    pins = _check_pins(st)
    _check_deferred_queue(st)
    _check_folios(w, pins)
    _check_swap(w)
    _check_mm_accounting(w)


# --------------------------------------------------------------------------------------
# Shapes: ids, levels, list lengths, VMA layout
# --------------------------------------------------------------------------------------


def _check_shapes(st: MmState) -> None:
    g = st.geom
    P = g.P
    nmm = len(st.mms)
    for i, mm in enumerate(st.mms):
        if mm.id != i:
            raise _fail("mm.id", f"mms[{i}] has id {mm.id}")
        prev_end = 0
        for v in mm.vmas:
            if v.prot not in PROTS:
                raise _fail("vma.prot", f"mm {i} VMA [{v.start}, {v.end}) prot {v.prot!r}")
            if not (prev_end <= v.start < v.end <= g.space):
                raise _fail(
                    "vma.layout",
                    f"mm {i} VMA [{v.start}, {v.end}) unsorted, overlapping, empty or outside "
                    f"[0, {g.space}) (previous end {prev_end})",
                )
            prev_end = v.end
    for key, t in st.tables.items():
        if t.id != key:
            raise _fail("pgtable.id", f"tables[{key}] has id {t.id}")
        if t.state not in _PT_STATES:
            raise _fail("pgtable.state", f"table {key} state {t.state!r}")
        if t.state == PT_FREED:
            continue
        if t.level not in LEVELS:
            raise _fail("pgtable.level", f"table {key} level {t.level!r}")
        if len(t.entries) != P:
            raise _fail("pgtable.entries_len", f"table {key} has {len(t.entries)} entries")
        if not (type(t.mm) is int and 0 <= t.mm < nmm):
            raise _fail("pgtable.wrong_mm", f"table {key} owned by unknown mm {t.mm!r}")
        if not st.mms[t.mm].alive:
            raise _fail(
                "dead_mm.tables", f"{t.state} {t.level} table {key} owned by dead mm {t.mm}"
            )
    for mm in st.mms:
        if not mm.alive:
            pud = st.tables.get(mm.pud_table)
            if pud is not None and pud.state != PT_FREED:
                raise _fail("dead_mm.tables", f"dead mm {mm.id} PUD table {mm.pud_table} not freed")
    orders = (0, g.pmd_order, g.pud_order)
    for key, f in st.folios.items():
        if f.id != key:
            raise _fail("folio.id", f"folios[{key}] has id {f.id}")
        if f.order not in orders:
            raise _fail("folio.order", f"folio {key} order {f.order} not in {orders}")
        if f.nr != 1 << f.order:
            raise _fail("folio.nr", f"folio {key} order {f.order} nr {f.nr}")
        if len(f.mapcount) != f.nr or len(f.anon_exclusive) != f.nr:
            raise _fail(
                "folio.shape",
                f"folio {key} nr {f.nr}: {len(f.mapcount)} mapcounts, "
                f"{len(f.anon_exclusive)} AnonExclusive bits",
            )
        if len(f.mm_id) != 2 or len(f.mm_id_mapcount) != 2:
            raise _fail("folio.shape", f"folio {key} mm-id slots {f.mm_id} {f.mm_id_mapcount}")


# --------------------------------------------------------------------------------------
# Page-table walk
# --------------------------------------------------------------------------------------


def _claim(w: _Walk, t: PtDesc, where: str) -> None:
    """Every live or deposited table is reached exactly once."""
    prev = w.seen.get(t.id)
    if prev is not None:
        raise _fail(
            "pgtable.double_reference",
            f"{t.level} table {t.id} reached as {where} and as {prev}",
        )
    w.seen[t.id] = where
    w.nr_tables[t.mm] += 1


def _live_child(w: _Walk, e: Entry, level: str, mm: int, where: str) -> PtDesc:
    """pmd_offset() / pte_offset_map(): the live lower table a table entry names."""
    ptid = e[1]
    t = w.st.tables.get(ptid) if type(ptid) is int else None
    if t is None or t.state == PT_FREED:
        raise _fail("pgtable.use_after_free", f"{where} names no live table ({ptid!r})")
    if t.level != level:
        raise _fail(
            "pgtable.wrong_level", f"{where} names {t.level} table {t.id}, expected {level}"
        )
    if t.mm != mm:
        raise _fail("pgtable.wrong_mm", f"{where} names table {t.id} of mm {t.mm}")
    if t.state != PT_LIVE:
        raise _fail("pgtable.state", f"{where} names {t.state} table {t.id}")
    _claim(w, t, where)
    return t


def _deref(w: _Walk, word: Word, name: str, where: str) -> PtDesc:
    """Follow a raw deposit-chain word the way the kernel would dereference it."""
    if word is None:
        raise _fail(f"{name}.null", f"{where}: NULL where a page table is expected")
    if word in (LIST_POISON1, LIST_POISON2):
        raise _fail(f"{name}.poison", f"{where}: {word}")
    if type(word) is not int:
        raise _fail(f"{name}.bad_word", f"{where}: word {word!r}")
    t = w.st.tables.get(word)
    if t is None or t.state == PT_FREED:
        raise _fail(f"{name}.use_after_free", f"{where}: word {word} names a freed table")
    return t


def _chain_node(t: PtDesc, name: str, level: str, mm: int, where: str) -> None:
    if t.level != level:
        raise _fail(f"{name}.wrong_level", f"{where}: {t.level} table {t.id}, expected {level}")
    if t.state != PT_DEPOSITED:
        raise _fail(f"{name}.state", f"{where}: table {t.id} is {t.state}, not deposited")
    if t.mm != mm:
        raise _fail(f"{name}.wrong_mm", f"{where}: table {t.id} belongs to mm {t.mm}")


def _walk_ring(
    w: _Walk, root_word: Word, name: str, level: str, mm: int, where: str
) -> list[PtDesc]:
    """A mainline sentinel-less circular list: next = w8, prev = w16, root = newest."""
    if root_word is None:
        return []
    root = _deref(w, root_word, name, f"{where} root")
    _chain_node(root, name, level, mm, f"{where} root")
    nodes = [root]
    ids = {root.id}
    t = root
    while True:
        here = f"{where} next of {t.id}"
        n = _deref(w, t.w8, name, here)
        _chain_node(n, name, level, mm, here)
        if n.id != root.id and n.id in ids:
            raise _fail(f"{name}.cycle", f"{here}: table {n.id} revisited before the root")
        if n.w16 != t.id:
            raise _fail(f"{name}.prev", f"{here}: table {n.id} has prev {n.w16!r}, not {t.id}")
        if n.id == root.id:
            return nodes
        ids.add(n.id)
        nodes.append(n)
        t = n


def _walk_stack(
    w: _Walk, root_word: Word, name: str, level: str, mm: int, where: str
) -> list[PtDesc]:
    """The RFC's singly linked stack: next = w8, NULL-terminated (lru_next and llist)."""
    nodes: list[PtDesc] = []
    ids: set[int] = set()
    word = root_word
    here = f"{where} root"
    while word is not None:
        t = _deref(w, word, name, here)
        if t.id in ids:
            raise _fail(f"{name}.cycle", f"{here}: table {t.id} revisited")
        _chain_node(t, name, level, mm, here)
        ids.add(t.id)
        nodes.append(t)
        here = f"{where} next of {t.id}"
        word = t.w8
    return nodes


def _pmd_deposits(w: _Walk, pmd: PtDesc, mm: int) -> int:
    """Walk the PTE tables deposited in a PMD table (root = its pmd_huge_pte, w16)."""
    where = f"mm {mm} PMD table {pmd.id} deposit"
    ring = _walk_ring(w, pmd.w16, "deposit.pmd_ring", LEVEL_PTE, mm, where)
    P = w.st.geom.P
    for t in ring:
        _claim(w, t, f"{where} ring")
        if t.entries.count(None) != P:
            raise _fail("deposit.pmd_ring.pte_not_empty", f"{where}: table {t.id} has entries")
    return len(ring)


def _vma_at(w: _Walk, vpn: int) -> Vma | None:
    k = bisect_right(w.starts, vpn) - 1
    if k < 0:
        return None
    v = w.vmas[k]
    return v if vpn < v.end else None


def _folio(w: _Walk, fid: object, where: str) -> Folio:
    f = w.st.folios.get(fid) if type(fid) is int else None
    if f is None:
        raise _fail("folio.missing", f"{where} maps unknown folio {fid!r}")
    if f.freed:
        raise _fail("folio.freed_mapped", f"{where} maps freed folio {fid}")
    return f


def _acc(w: _Walk, fid: int) -> _FolioAcc:
    a = w.acc.get(fid)
    if a is None:
        a = w.acc[fid] = _FolioAcc()
    return a


def _leaf(w: _Walk, mm: int, e: Entry, vbase: int, level: str) -> None:
    """A PUD or PMD huge leaf (a THP, not the huge zero PMD)."""
    g = w.st.geom
    npages, order = (g.pud_nr, g.pud_order) if level == LEVEL_PUD else (g.pmd_nr, g.pmd_order)
    where = f"mm {mm} {level.upper()} leaf at vpn {vbase}"
    vma = _leaf_vma(w, vbase, npages, where)
    f = _folio(w, e[1], where)
    if f.order != order:
        raise _fail("geometry.leaf_order", f"{where} maps folio {f.id} of order {f.order}")
    if e[2]:
        if vma.prot != "rw":
            raise _fail("geometry.write_prot", f"{where} writable in a {vma.prot} VMA")
        if not f.anon_exclusive[0]:
            raise _fail(
                "anon_exclusive.writable", f"{where} writable, head of {f.id} not exclusive"
            )
    a = _acc(w, f.id)
    a.leaves += 1
    a.leaf_mms[mm] = a.leaf_mms.get(mm, 0) + 1
    a.per_mm[mm] = a.per_mm.get(mm, 0) + 1
    w.rss_anon[mm] += npages


def _leaf_vma(w: _Walk, vbase: int, npages: int, where: str) -> Vma:
    vma = _vma_at(w, vbase)
    if vma is None:
        raise _fail("geometry.outside_vma", f"{where}: no VMA")
    if vma.end < vbase + npages:
        raise _fail(
            "geometry.leaf_straddles_vma",
            f"{where} ({npages} pages) crosses the end of VMA [{vma.start}, {vma.end})",
        )
    return vma


def _walk_mm(w: _Walk, mm: MmStruct) -> None:
    st = w.st
    g = st.geom
    P = g.P
    m = mm.id
    w.vmas = mm.vmas
    w.starts = [v.start for v in mm.vmas]
    pud = st.tables.get(mm.pud_table) if type(mm.pud_table) is int else None
    if pud is None or pud.state == PT_FREED:
        raise _fail("pgtable.use_after_free", f"mm {m} PUD table {mm.pud_table!r} not live")
    if pud.level != LEVEL_PUD:
        raise _fail("pgtable.wrong_level", f"mm {m} PUD table {pud.id} is a {pud.level} table")
    if pud.mm != m:
        raise _fail("pgtable.wrong_mm", f"mm {m} PUD table {pud.id} belongs to mm {pud.mm}")
    if pud.state != PT_LIVE:
        raise _fail("pgtable.state", f"mm {m} PUD table {pud.id} is {pud.state}")
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
            raise _fail("pgtable.bad_entry", f"mm {m} PUD entry {i} is {e!r}")
    where = f"mm {m} PUD table {pud.id} stack"
    name = "deposit.pud_stack"
    if st.cfg.deposit == "list_head":
        stack = _walk_ring(w, pud.w16, name, LEVEL_PMD, m, where)
    else:
        stack = _walk_stack(w, pud.w16, name, LEVEL_PMD, m, where)
    if len(stack) != pud_leaves:
        raise _fail(
            "deposit.pud_stack.count",
            f"{where}: {len(stack)} PMD tables deposited for {pud_leaves} PUD leaves",
        )
    for t in stack:
        _claim(w, t, where)
    for t in stack:
        if t.entries.count(None) != P:
            raise _fail("deposit.pud_stack.pmd_not_empty", f"{where}: table {t.id} has entries")
        n = _pmd_deposits(w, t, m)
        if n != P:
            raise _fail(
                "deposit.pud_stack.pte_count",
                f"{where}: PMD table {t.id} holds {n} PTE tables, not {P}",
            )


def _walk_pmd(w: _Walk, m: int, pmd: PtDesc, base: int) -> None:
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
            raise _fail("pgtable.bad_entry", f"mm {m} PMD table {pmd.id} entry {j} is {e!r}")
    n = _pmd_deposits(w, pmd, m)
    if n != huge:
        raise _fail(
            "deposit.pmd_ring.count",
            f"mm {m} PMD table {pmd.id}: {n} PTE tables deposited for {huge} huge PMDs",
        )


def _walk_pte(w: _Walk, m: int, t: PtDesc, base: int) -> None:
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
    cur: _FolioAcc | None = None
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
                raise _fail("geometry.outside_vma", f"mm {m} PTE {e!r} at vpn {base + i}: no VMA")
            rw = v.prot == "rw"
        k = e[0]
        if k == "pte":
            fid = e[1]
            if fid != cur_fid or cur is None:
                f = folios.get(fid)
                if f is None or f.freed:
                    f = _folio(w, fid, f"mm {m} PTE at vpn {base + i}")  # raises
                if f.nr == 1:
                    # order 0 (maybe 262144 of them after a split): no _FolioAcc, and the
                    # cached large folio stays cached
                    if e[2] != 0 or type(e[2]) is not int:
                        raise _fail(
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
                            raise _fail(
                                "geometry.write_prot",
                                f"mm {m} writable PTE at vpn {base + i} in a VMA that is not rw",
                            )
                        if not f.anon_exclusive[0]:
                            raise _fail(
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
                raise _fail(
                    "geometry.pte_index",
                    f"mm {m} PTE at vpn {base + i} maps page {idx!r} of {nr}-page folio {fid}",
                )
            cnt[idx] += 1
            o = owner[idx]
            if o != m:
                owner[idx] = m if o == -1 else -2
            if e[3]:
                if not rw:
                    raise _fail(
                        "geometry.write_prot",
                        f"mm {m} writable PTE at vpn {base + i} in a VMA that is not rw",
                    )
                if not ae[idx]:
                    raise _fail(
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
            raise _fail("pgtable.bad_entry", f"mm {m} PTE table {t.id} entry {i} is {e!r}")
    if cur is not None:
        cur.per_mm[m] = cur.per_mm.get(m, 0) + run
        present += run
    w.rss_anon[m] += present
    w.rss_swap[m] += swaps


def _check_reachability(w: _Walk) -> None:
    """Every live or deposited table was reached (alive mms; dead ones were checked)."""
    for key, t in w.st.tables.items():
        if t.state != PT_FREED and key not in w.seen:
            raise _fail(
                "pgtable.leak",
                f"{t.state} {t.level} table {key} of mm {t.mm} reached by no entry or chain",
            )


# --------------------------------------------------------------------------------------
# Folios
# --------------------------------------------------------------------------------------


def _check_pins(st: MmState) -> dict[int, int]:
    pins: dict[int, int] = {}
    for key, p in st.pins.items():
        if p.id != key:
            raise _fail("pin.id", f"pins[{key}] has id {p.id}")
        f = st.folios.get(p.folio) if type(p.folio) is int else None
        if f is None:
            raise _fail("pin.missing_folio", f"pin {key} names unknown folio {p.folio!r}")
        if f.freed:
            raise _fail("freed.pinned", f"pin {key} holds freed folio {f.id}")
        if not (type(p.page) is int and 0 <= p.page < f.nr):
            raise _fail("pin.page", f"pin {key} page {p.page!r} of {f.nr}-page folio {f.id}")
        pins[f.id] = pins.get(f.id, 0) + 1
    return pins


def _check_deferred_queue(st: MmState) -> None:
    dq = st.deferred
    if len(set(dq)) != len(dq):
        raise _fail("deferred.duplicate", f"deferred queue {dq} has duplicates")
    for fid in dq:
        f = st.folios.get(fid) if type(fid) is int else None
        if f is None:
            raise _fail("deferred.missing", f"deferred queue holds unknown folio {fid!r}")
        if f.freed:
            raise _fail("deferred.freed", f"deferred queue holds freed folio {fid}")
        if f.order < st.geom.pmd_order:
            raise _fail("deferred.order", f"deferred queue holds order-{f.order} folio {fid}")
        if not f.deferred:
            raise _fail("deferred.flag_mismatch", f"folio {fid} queued but flag clear")


def _check_freed(f: Folio, mapped: bool) -> None:
    """free_tail_page_prepare() / page_expected_state(): a freed folio is back at rest."""
    fid = f.id
    if mapped:
        raise _fail("freed.mapped", f"freed folio {fid} is still mapped")
    if f.refcount != 0:
        raise _fail("freed.refcount", f"freed folio {fid} refcount {f.refcount}")
    if f.mapcount.count(-1) != f.nr:
        raise _fail("freed.mapcount", f"freed folio {fid} has a page _mapcount != -1")
    if f.entire_mapcount != -1 or f.large_mapcount != -1:
        raise _fail(
            "freed.large_counters",
            f"freed folio {fid} entire {f.entire_mapcount} large {f.large_mapcount}",
        )
    if f.nr_pages_mapped != 0:
        raise _fail("freed.nr_pages_mapped", f"freed folio {fid} npm {f.nr_pages_mapped:#x}")
    if f.pincount != 0:
        raise _fail("freed.pincount", f"freed folio {fid} pincount {f.pincount}")
    if f.mm_id != [0, 0] or f.mm_id_mapcount != [-1, -1] or f.shared:
        raise _fail(
            "freed.mm_id",
            f"freed folio {fid} slots {f.mm_id} {f.mm_id_mapcount} shared {f.shared}",
        )
    if f.deferred:
        raise _fail("freed.deferred", f"freed folio {fid} on the deferred list")
    if f.partially_mapped:
        raise _fail("freed.partially_mapped", f"freed folio {fid} still partially mapped")
    if f.swapcache:
        raise _fail("freed.swapcache", f"freed folio {fid} still in the swap cache")


_SMALL_AT_REST = (-1, -1, 0, 0, False)


def _check_small(f: Folio, mapped: int, owner: int, npins: int) -> None:
    """An order-0 folio: _mapcount, the large-folio fields at rest, refcount, exclusivity."""
    fid = f.id
    if f.mapcount[0] + 1 != mapped:
        raise _fail(
            "mapcount.small", f"folio {fid} _mapcount {f.mapcount[0]}, {mapped} PTEs map it"
        )
    if (
        (f.entire_mapcount, f.large_mapcount, f.nr_pages_mapped, f.shared) != (-1, -1, 0, False)
        or f.mm_id != [0, 0]
        or f.mm_id_mapcount != [-1, -1]
    ):
        raise _fail("mapcount.small_large_fields", f"order-0 folio {fid} has large counters set")
    if f.pincount != 0:
        raise _fail("pincount.small", f"order-0 folio {fid} pincount {f.pincount}")
    if f.refcount <= 0:
        raise _fail("refcount.live_zero", f"live folio {fid} refcount {f.refcount}")
    expected = mapped + GUP_PIN_COUNTING_BIAS * npins + (1 if f.swapcache else 0)
    if f.refcount != expected:
        raise _fail(
            "refcount",
            f"folio {fid} refcount {f.refcount}, expected {expected} "
            f"({mapped} mapped, {npins} pins, swapcache {f.swapcache})",
        )
    if owner == -2 and f.anon_exclusive[0]:
        raise _fail("anon_exclusive.shared_mms", f"folio {fid} mapped by several mms, exclusive")


def _check_large(st: MmState, f: Folio, acc: _FolioAcc | None, npins: int) -> int:
    """A PMD- or PUD-order folio; returns the number of its pages mapped (for NR_ANON_MAPPED)."""
    fid = f.id
    nr = f.nr
    cnt = acc.cnt if acc is not None else None
    leaves = acc.leaves if acc is not None else 0
    if cnt is None:
        if f.mapcount.count(-1) != nr:
            p = next(i for i, c in enumerate(f.mapcount) if c != -1)
            raise _fail(
                "mapcount.page", f"folio {fid} page {p} _mapcount {f.mapcount[p]}, no PTE maps it"
            )
        ptes = 0
        pages_mapped = 0
    else:
        if f.mapcount != [c - 1 for c in cnt]:
            p = next(i for i, (a, c) in enumerate(zip(f.mapcount, cnt, strict=True)) if a != c - 1)
            raise _fail(
                "mapcount.page",
                f"folio {fid} page {p} _mapcount {f.mapcount[p]}, {cnt[p]} PTEs map it",
            )
        ptes = sum(cnt)
        pages_mapped = nr - cnt.count(0)
    if f.entire_mapcount + 1 != leaves:
        raise _fail(
            "mapcount.entire", f"folio {fid} entire {f.entire_mapcount}, {leaves} leaves map it"
        )
    total = leaves + ptes
    if f.large_mapcount + 1 != total:
        raise _fail(
            "mapcount.large",
            f"folio {fid} large {f.large_mapcount}, {leaves} leaves + {ptes} PTEs map it",
        )
    npm = pages_mapped + (ENTIRELY_MAPPED if leaves else 0)
    if f.nr_pages_mapped != npm:
        raise _fail(
            "mapcount.nr_pages_mapped",
            f"folio {fid} _nr_pages_mapped {f.nr_pages_mapped:#x}, expected {npm:#x}",
        )
    if f.pincount != npins:
        raise _fail("pincount", f"folio {fid} _pincount {f.pincount}, {npins} pin records")
    if f.refcount <= 0:
        raise _fail("refcount.live_zero", f"live folio {fid} refcount {f.refcount}")
    expected = total + npins + (nr if f.swapcache else 0)
    if f.refcount != expected:
        raise _fail(
            "refcount",
            f"folio {fid} refcount {f.refcount}, expected {expected} "
            f"({total} mappings, {npins} pins, swapcache {f.swapcache})",
        )
    _check_mm_ids(st, f, acc, total)
    _check_large_exclusive(f, acc, leaves)
    return nr if leaves else pages_mapped


def _check_mm_ids(st: MmState, f: Folio, acc: _FolioAcc | None, total: int) -> None:
    """I5: the two mm-id slots and the sticky SHARED bit (include/linux/rmap.h)."""
    fid = f.id
    per_mm = acc.per_mm if acc is not None else {}
    occupied = 0
    for s in (0, 1):
        mid = f.mm_id[s]
        mc = f.mm_id_mapcount[s]
        if (mid == 0) != (mc == -1):
            raise _fail("mm_id.slot_empty", f"folio {fid} slot {s} id {mid} mapcount {mc}")
        if mid == 0:
            continue
        m = mid - 1
        if not (type(m) is int and 0 <= m < len(st.mms) and st.mms[m].alive):
            raise _fail("mm_id.dead_mm", f"folio {fid} slot {s} holds mm id {mid} (no live mm)")
        have = per_mm.get(m, 0)
        if not 0 <= mc + 1 <= have:
            raise _fail(
                "mm_id.slot_count",
                f"folio {fid} slot {s} (mm {m}) count {mc + 1}, mm maps it {have} times",
            )
        occupied += mc + 1
    if f.mm_id[0] != 0 and f.mm_id[0] == f.mm_id[1]:
        raise _fail("mm_id.duplicate", f"folio {fid} both slots hold mm id {f.mm_id[0]}")
    if occupied > total:
        raise _fail("mm_id.sum", f"folio {fid} slot counts sum {occupied} > {total} mappings")
    if total == 0:
        if f.mm_id != [0, 0] or f.shared:
            raise _fail(
                "mm_id.unmapped",
                f"unmapped folio {fid} slots {f.mm_id} {f.mm_id_mapcount} shared {f.shared}",
            )
        return
    nmms = sum(1 for c in per_mm.values() if c > 0)
    if nmms >= 2 and not f.shared:
        raise _fail("mm_id.shared_missing", f"folio {fid} mapped by {nmms} mms, SHARED clear")
    if not f.shared and total - 1 not in f.mm_id_mapcount:
        raise _fail(
            "mm_id.unshared_count",
            f"folio {fid} SHARED clear but no slot holds all {total} mappings "
            f"({f.mm_id} {f.mm_id_mapcount})",
        )


def _check_large_exclusive(f: Folio, acc: _FolioAcc | None, leaves: int) -> None:
    """I8: no exclusive page may be reachable from two mms or two entire mappings."""
    ae = f.anon_exclusive
    if acc is None or True not in ae:
        return
    fid = f.id
    if leaves >= 2:
        raise _fail(
            "anon_exclusive.entire_shared",
            f"folio {fid} has {leaves} entire mappings and an exclusive page",
        )
    owner = acc.owner
    if owner is None:
        return
    vals = set(owner)
    if acc.leaf_mms:
        bad = vals - {-1, *acc.leaf_mms}
    else:
        bad = vals & {-2}
    if not bad:
        return
    for p, (o, x) in enumerate(zip(owner, ae, strict=True)):
        if x and o in bad:
            raise _fail(
                "anon_exclusive.shared_mms",
                f"folio {fid} page {p} is exclusive but mapped by several mms",
            )


def _check_folios(w: _Walk, pins: dict[int, int]) -> None:
    st = w.st
    g = st.geom
    queued = set(st.deferred)
    small_cnt = w.small_cnt
    small_owner = w.small_owner
    nr_anon = {g.pmd_order: 0, g.pud_order: 0}
    partial = {g.pmd_order: 0, g.pud_order: 0}
    anon_mapped = 0
    thps = 0
    pud_thps = 0
    for fid, f in st.folios.items():
        if f.order == 0:
            mapped = small_cnt.get(fid, 0)
            if f.freed:
                _check_freed(f, mapped > 0)
                continue
            # fast path for the common order-0 folio: mapped, unpinned, not in swap cache
            if (
                mapped <= 0
                or f.refcount != mapped
                or f.mapcount[0] != mapped - 1
                or fid in pins
                or (f.entire_mapcount, f.large_mapcount, f.nr_pages_mapped, f.pincount, f.shared)
                != _SMALL_AT_REST
                or f.mm_id != [0, 0]
                or f.mm_id_mapcount != [-1, -1]
                or (f.anon_exclusive[0] and small_owner.get(fid, -1) == -2)
            ):
                _check_small(f, mapped, small_owner.get(fid, -1), pins.get(fid, 0))
            if mapped:
                anon_mapped += 1
        else:
            acc = w.acc.get(fid)
            if f.freed:
                _check_freed(f, acc is not None)
                continue
            anon_mapped += _check_large(st, f, acc, pins.get(fid, 0))
            nr_anon[f.order] += 1
            if f.partially_mapped:
                partial[f.order] += 1
            if acc is not None and acc.leaves:
                if f.order == g.pmd_order:
                    thps += g.pmd_nr
                else:
                    pud_thps += g.pud_nr
        if f.partially_mapped and not f.deferred:
            raise _fail(
                "deferred.partially_mapped_not_queued",
                f"folio {fid} partially mapped but not on the deferred list",
            )
        if f.deferred and fid not in queued:
            raise _fail("deferred.flag_mismatch", f"folio {fid} flagged deferred but not queued")
    stats = st.stats
    for row, order in (("pmd", g.pmd_order), ("pud", g.pud_order)):
        _stat(stats, ("mthp", row, "nr_anon"), nr_anon[order], "stats.nr_anon")
        _stat(
            stats,
            ("mthp", row, "nr_anon_partially_mapped"),
            partial[order],
            "stats.nr_anon_partially_mapped",
        )
    _stat(stats, ("node", "nr_anon_mapped"), anon_mapped, "stats.nr_anon_mapped")
    _stat(stats, ("node", "nr_anon_thps"), thps, "stats.nr_anon_thps")
    _stat(stats, ("node", "nr_anon_pud_thps"), pud_thps, "stats.nr_anon_pud_thps")


def _stat(stats: object, path: tuple[str, ...], expected: int, name: str) -> None:
    v = stats
    for k in path:
        if not isinstance(v, dict) or k not in v:
            raise _fail("stats.missing", f"stats has no {'.'.join(path)}")
        v = v[k]
    if v != expected:
        raise _fail(name, f"{'.'.join(path)} is {v!r}, folios say {expected}")


# --------------------------------------------------------------------------------------
# Swap and per-mm accounting (check_mm)
# --------------------------------------------------------------------------------------


def _check_swap(w: _Walk) -> None:
    swap = w.st.swap
    for slot, refs in w.swap_refs.items():
        if swap.get(slot) is None:
            raise _fail("swap.missing_slot", f"{refs} swap PTEs name missing slot {slot!r}")
    for slot, s in swap.items():
        if s.slot != slot:
            raise _fail("swap.slot_id", f"swap[{slot}] has slot {s.slot}")
        refs = w.swap_refs.get(slot, 0)
        if s.count != refs:
            raise _fail("swap.count", f"slot {slot} count {s.count}, {refs} swap PTEs")


def _check_mm_accounting(w: _Walk) -> None:
    for mm in w.st.mms:
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
        expected = PAGE_TABLE_BYTES * w.nr_tables[m]
        if mm.pgtables_bytes != expected:
            raise _fail(
                "pgtables_bytes",
                f"mm {m} pgtables_bytes {mm.pgtables_bytes}, {w.nr_tables[m]} tables "
                f"live or deposited ({expected})",
            )
