"""Unit tests of the page-table splits in pudthp_ref/huge_memory.py (the folio stays whole).

``__split_huge_pud_locked`` (docs/model.md 5.7: PUD leaf straight to PTE level) and
``__split_huge_pmd_locked`` (mainline non-freeze, background ``kernel-thp-semantics.md`` 3.6),
driven on states made by the public model at P=4 (PMD folio 4 pages, PUD folio 16 pages,
64 pages of address space).  Expected values are derived by hand, never from a run.

Raw kernel encodings throughout: ``_entire_mapcount``, ``_large_mapcount``, per-page
``_mapcount`` and the slot counts are biased by -1.  mm k has MM-ID k+1.  Page-table ids are
handed out from 1 in allocation order: mm 0's PUD table is 1 (RefModel creates it), then the
fault's tables in the order the fault allocates them.
"""

from __future__ import annotations

from pudthp_ref.huge_memory import __split_huge_pmd_locked, __split_huge_pud_locked
from pudthp_ref.mm_types import PT_LIVE
from pudthp_ref.model import RefModel
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    LIST_POISON1,
    LIST_POISON2,
    PAGE_TABLE_BYTES,
    Config,
    Fork,
    Mmap,
    Read,
    Write,
)

P = 4
EM = ENTIRELY_MAPPED


def faulted_pud() -> RefModel:
    """mmap [0, 64) rw and write vpn 16: a PUD THP at PUD index 16 // 16 = 1.

    Ids: PUD table 1; the fault allocates folio 1 (order 4), PMD table 2 (pushed on the PUD
    stack: lru_next, 2.w8 = NULL, PUD.w16 = 2), then PTE tables 3, 4, 5, 6 deposited into 2.
    Deposit ring (list_add after the newest): 3(3,3); 3(4,4) 4(3,3); 3(4,5) 4(5,3) 5(3,4);
    3(4,6) 4(5,3) 5(6,4) 6(3,5), root 2.w16 = 6: withdraws give 6, 3, 4, 5.
    """
    m = RefModel(Config(geometry=P))
    assert m.apply(Mmap(0, 0, 64, "rw")) == 0
    assert m.apply(Write(0, 16, 7)) == 0
    return m


def test_split_huge_pud_fresh() -> None:
    m = faulted_pud()
    st = m.st
    mm = st.mms[0]
    pud = st.tables[1]
    f = st.folios[1]
    # Before: folio_add_new_anon_rmap at PUD level, the leaf writable/dirty/young.
    assert pud.entries[1] == ("leaf", 1, True, True, True)
    assert pud.w16 == 2
    assert st.tables[2].w16 == 6
    assert (f.refcount, f.large_mapcount, f.entire_mapcount) == (1, 0, 0)
    assert f.nr_pages_mapped == EM
    assert mm.rss_anon == 16
    assert mm.pgtables_bytes == 6 * PAGE_TABLE_BYTES  # PUD + PMD + 4 PTE
    assert st.stats["node"] == {"nr_anon_mapped": 16, "nr_anon_thps": 0, "nr_anon_pud_thps": 16}

    __split_huge_pud_locked(st, mm, pud, 1)

    assert st.stats["vmstat"]["thp_split_pud"] == 1
    assert st.stats["vmstat"]["thp_split_pmd"] == 0
    # refcount += nr - 1 = 15: 16 PTE references replace the one PUD reference.
    assert f.refcount == 16
    # PTE add of 16 pages: L 0 + 16 = 16; then the PUD remove: L 16 - 1 = 15.
    assert f.large_mapcount == 15
    # The only entire mapping goes: E 0 -> -1.
    assert f.entire_mapcount == -1
    # Every page PTE-mapped once: _mapcount -1 -> 0.
    assert f.mapcount == [0] * 16
    # npm: EM -> EM + 16 (PTE add, first = 16) -> 16 (PUD remove drops EM).
    assert f.nr_pages_mapped == 16
    # Head AnonExclusive copied to all 16 pages by RMAP_EXCLUSIVE at PTE level.
    assert f.anon_exclusive == [True] * 16
    # Slot 0 (mm 0): 0 + 16 - 1 = 15; S stays clear.
    assert (f.mm_id, f.mm_id_mapcount) == ([1, 0], [15, -1])
    assert f.shared is False
    # nr for NR_ANON_MAPPED: PTE add nr = 0 (npm >= EM), PUD remove nr = 16 - 16 = 0.
    # NR_ANON_PUD_THPS -16; not partially mapped (nr == 0); still queued from the fault.
    assert st.stats["node"] == {"nr_anon_mapped": 16, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}
    assert f.partially_mapped is False
    assert st.deferred == [1]
    assert st.stats["vmstat"]["thp_deferred_split_page"] == 0
    # The dirty leaf marks the folio dirty (folio_set_dirty, as the PMD split does).
    assert f.dirty is True

    # The PMD table popped from the PUD stack is live under the PUD entry, w16 NULL after
    # its 4 withdraws; w8 NULL (it was the bottom of the stack, and lru_next's pop clears it).
    assert pud.entries[1] == ("table", 2)
    assert pud.w16 is None
    pmd = st.tables[2]
    assert pmd.state == PT_LIVE
    assert (pmd.w8, pmd.w16) == (None, None)
    # The i-th withdraw fills PMD entry i: 6, 3, 4, 5.
    assert pmd.entries == [("table", 6), ("table", 3), ("table", 4), ("table", 5)]
    for i, tid in enumerate((6, 3, 4, 5)):
        pte = st.tables[tid]
        assert pte.state == PT_LIVE
        # write/dirty/young copied from the leaf; PTE j of entry i maps page 4i + j.
        assert pte.entries == [("pte", 1, 4 * i + j, True, True, True) for j in range(4)]
    # list_del poisoned the first three withdrawn; the last kept w8 == w16 == itself.
    for tid in (6, 3, 4):
        assert (st.tables[tid].w8, st.tables[tid].w16) == (LIST_POISON1, LIST_POISON2)
    assert (st.tables[5].w8, st.tables[5].w16) == (5, 5)
    # RSS and pgtables_bytes unchanged: the deposited tables became the live ones.
    assert mm.rss_anon == 16
    assert mm.pgtables_bytes == 6 * PAGE_TABLE_BYTES

    m.check_invariants()
    assert m.apply(Read(0, 16)) == 7
    assert m.apply(Read(0, 31)) == 0


def test_split_huge_pmd_fresh() -> None:
    # pud_enabled never: the fault allocates PMD table 2 under PUD entry 1 for good, then a
    # PMD THP (folio 1, order 2) at PMD index (16 // 4) % 4 = 0 with one deposited PTE table
    # 3: root NULL -> INIT_LIST_HEAD, 3(3, 3), 2.w16 = 3.
    m = RefModel(Config(geometry=P, pud_enabled="never"))
    assert m.apply(Mmap(0, 0, 64, "rw")) == 0
    assert m.apply(Write(0, 16, 7)) == 0
    st = m.st
    mm = st.mms[0]
    pmd = st.tables[2]
    f = st.folios[1]
    assert st.tables[1].entries[1] == ("table", 2)
    assert pmd.entries[0] == ("leaf", 1, True, True, True)
    assert pmd.w16 == 3
    assert mm.pgtables_bytes == 3 * PAGE_TABLE_BYTES
    assert st.stats["node"] == {"nr_anon_mapped": 4, "nr_anon_thps": 4, "nr_anon_pud_thps": 0}

    __split_huge_pmd_locked(st, mm, pmd, 0)

    # Background 3.6 "net effect, non-freeze" at 4 pages: ref +3; map 1 -> 4 (L raw 3);
    # entire 1 -> 0 (raw -1); all _mapcount 0; npm EM -> EM + 4 -> 4; slot 0 value 1 -> 4;
    # NR_ANON_MAPPED unchanged; NR_ANON_THPS -4; not partially mapped; RSS and bytes same.
    assert st.stats["vmstat"]["thp_split_pmd"] == 1
    assert st.stats["vmstat"]["thp_split_pud"] == 0
    assert f.refcount == 4
    assert f.large_mapcount == 3
    assert f.entire_mapcount == -1
    assert f.mapcount == [0] * 4
    assert f.nr_pages_mapped == 4
    assert f.anon_exclusive == [True] * 4
    assert (f.mm_id, f.mm_id_mapcount) == ([1, 0], [3, -1])
    assert st.stats["node"] == {"nr_anon_mapped": 4, "nr_anon_thps": 0, "nr_anon_pud_thps": 0}
    assert f.partially_mapped is False
    # The one withdrawn table: root -> NULL, no list_del, so it keeps 3(3, 3).
    assert pmd.entries[0] == ("table", 3)
    assert pmd.w16 is None
    pte = st.tables[3]
    assert pte.state == PT_LIVE
    assert (pte.w8, pte.w16) == (3, 3)
    assert pte.entries == [("pte", 1, j, True, True, True) for j in range(4)]
    assert mm.rss_anon == 4
    assert mm.pgtables_bytes == 3 * PAGE_TABLE_BYTES

    m.check_invariants()
    assert m.apply(Read(0, 16)) == 7


def test_split_huge_pud_in_child_after_fork() -> None:
    m = faulted_pud()
    assert m.apply(Fork(0)) == 1
    st = m.st
    parent, child = st.mms
    f = st.folios[1]
    # fork: child PUD table 7; copy_huge_pud allocates PMD table 8 and PTE tables 9-12,
    # folio_get (ref 2), try_dup at PUD level: head AE cleared, E 0 -> 1, L 0 -> 1, slot 1 =
    # (mm 1 -> id 2, 0), S set.  Both leaves write-protected, the child's old.
    child_pud = st.tables[child.pud_table]
    assert child_pud.id == 7
    assert child_pud.w16 == 8
    assert st.tables[1].entries[1] == ("leaf", 1, False, True, True)
    assert child_pud.entries[1] == ("leaf", 1, False, True, False)
    assert (f.refcount, f.entire_mapcount, f.large_mapcount) == (2, 1, 1)
    assert (f.mm_id, f.mm_id_mapcount) == ([1, 2], [0, 0])
    assert f.anon_exclusive == [False] * 16
    assert child.rss_anon == 16
    assert child.pgtables_bytes == 6 * PAGE_TABLE_BYTES

    __split_huge_pud_locked(st, child, child_pud, 1)

    assert st.stats["vmstat"]["thp_split_pud"] == 1
    # ref 2 + 15 = 17.
    assert f.refcount == 17
    # PTE add for mm 1: L 1 + 16 = 17, slot 1: 0 + 16 = 16; every _mapcount -1 -> 0,
    # first = 16, npm EM + 16 (>= EM: nr 0).
    # PUD remove for mm 1: L 16, slot 1: 15 (>= 0: stop, S stays set); E 1 -> 0 is not the
    # last entire mapping (the parent's PUD leaf remains): npm stays EM + 16, nr 0.
    assert f.large_mapcount == 16
    assert f.entire_mapcount == 0
    assert f.mapcount == [0] * 16
    assert f.nr_pages_mapped == 0x800000 + 16
    assert (f.mm_id, f.mm_id_mapcount) == ([1, 2], [0, 15])
    assert f.shared is True
    # The head was not exclusive: no page becomes exclusive.
    assert f.anon_exclusive == [False] * 16
    # Stats unchanged: the parent still maps the PUD leaf.
    assert st.stats["node"] == {"nr_anon_mapped": 16, "nr_anon_thps": 0, "nr_anon_pud_thps": 16}
    assert f.partially_mapped is False
    # The child's PMD table 8 is live with its PTE tables 9-12, withdrawn 12, 9, 10, 11;
    # the PTEs copy the child's leaf bits: read-only, dirty, old.
    assert child_pud.entries[1] == ("table", 8)
    assert child_pud.w16 is None
    pmd = st.tables[8]
    assert (pmd.w8, pmd.w16) == (None, None)
    assert pmd.entries == [("table", 12), ("table", 9), ("table", 10), ("table", 11)]
    for i, tid in enumerate((12, 9, 10, 11)):
        assert st.tables[tid].entries == [
            ("pte", 1, 4 * i + j, False, True, False) for j in range(4)
        ]
    # The parent is untouched.
    assert st.tables[1].entries[1] == ("leaf", 1, False, True, True)
    assert st.tables[1].w16 == 2
    assert parent.rss_anon == 16
    assert child.rss_anon == 16
    assert child.pgtables_bytes == 6 * PAGE_TABLE_BYTES

    m.check_invariants()
    assert m.apply(Read(1, 16)) == 7
