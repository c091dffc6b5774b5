"""Model-state coverage: a fixed catalogue of the kernel paths an op took and the state it
met, read from the reference model, counted per program and over campaigns.

Each feature is named ``op:path:state`` (``pageout:pmd_leaf:swapped_whole``,
``wp_fault:large:mapcount=2``, ``fork:copy_pte_range:mid_pud_vma``) and is decided from four
cheap things only: the op, its result, a look at the reference state just before the op
(the entry an access meets; the leaves, tables and PTEs in the range a range op covers; the
parent's mappings for a fork) and just after it (the same places again, and the deltas of the
vmstat and mTHP counters over the op).  Nothing in the models is instrumented, so the
catalogue reads the same whatever implementation runs beside the reference, and a given
program always hits the same features the same number of times.  ``COVERAGE.md`` explains
every feature in kernel terms (``tests/test_coverage.py`` keeps it and ``CATALOGUE`` equal).

``Coverage`` is what ``harness.runner.Stepper`` calls around each op (``before`` and
``after``); ``Tally`` adds programs up for a campaign or a corpus and prints the table that
``pudthp coverage`` and ``pudthp fuzz`` show.  A state the probes cannot read (a corrupted
model of the rejected ``list_head`` design) counts as an unclassified op, never a finding.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pudthp_ref import spec
from pudthp_ref.mm_types import Entry, Folio, MmState, MmStruct, PtDesc, Vma
from pudthp_ref.spec import (
    EBUSY,
    EFAULT,
    EINVAL,
    ENOMEM,
    GUP_PIN_COUNTING_BIAS,
    MTHP_KEYS,
    NODE_KEYS,
    SIGSEGV,
    VMSTAT_KEYS,
    Op,
    Result,
)


@dataclass(frozen=True, slots=True)
class Feature:
    """One entry of the catalogue: its name and what it means in kernel terms."""

    name: str
    meaning: str


CATALOGUE: tuple[Feature, ...] = tuple(Feature(n, m) for n, m in (
    # ---- faults (read, write, and pin, which faults in for write) --------------------
    ("fault:pud:alloc", "a fault on a none PUD entry mapped a new PUD THP "
     "(`do_huge_pud_anonymous_page`, `thp_fault_alloc_pud`)"),
    ("fault:pud:alloc_on_read", "that PUD THP was allocated by a read fault "
     "(`pud_read_fault=alloc`: no huge zero PUD exists)"),
    ("fault:pud:alloc_in_madvised_vma", "that PUD THP was allowed only because the VMA has "
     "`VM_HUGEPAGE` (per-size or global setting `madvise`, `thp_vma_allowable_order`)"),
    ("fault:pud:fallback", "the order-PUD allocation failed and the fault fell back to the "
     "PMD level (`thp_fault_fallback_pud`, `anon_fault_fallback` for the PUD order)"),
    ("fault:pud:read_maps_pmd_level", "a read fault where a PUD THP was allowed and fitted, "
     "sent to the PMD level by `pud_read_fault=fallback` (a PMD table installed for good)"),
    ("fault:pmd:alloc", "a fault on a none PMD entry mapped a new PMD THP "
     "(`do_huge_pmd_anonymous_page`, `thp_fault_alloc`)"),
    ("fault:pmd:fallback", "the order-PMD allocation of a fault failed: PTE level "
     "(`thp_fault_fallback`)"),
    ("fault:pmd:huge_zero", "a read fault mapped the huge zero PMD, depositing a PTE table "
     "(`do_huge_pmd_anonymous_page` with `use_zero_page`)"),
    ("fault:pte:zero_page", "a read fault mapped the shared zero page at PTE level "
     "(`do_anonymous_page`)"),
    ("fault:pte:new_page", "a write fault on a none PTE mapped a new order-0 folio "
     "(`do_anonymous_page`)"),
    ("fault:nohugepage_vma", "a fault on a none entry in a `VM_NOHUGEPAGE` VMA "
     "(`vma_thp_disabled`: no THP at any level)"),
    ("fault:swapin", "an access to a swap PTE read the slot into a new order-0 folio "
     "(`do_swap_page`)"),
    ("fault:swapin:zeromap", "that slot was in the swap zeromap: read with no IO, no "
     "`pswpin` (`swap_read_folio_zeromap`)"),
    ("fault:swapin:slot_shared", "that slot was also named by another swap PTE (a fork after "
     "pageout): its swap count only drops (`swap_free`)"),
    ("fault:swapin:then_write", "the swap-in was a write: `do_swap_page` then `do_wp_page` "
     "reuses the fresh exclusive folio"),
    # ---- write-protect faults (write or pin on a present read-only mapping) ----------
    ("wp_fault:pud:reuse", "a write to a read-only PUD leaf reused the folio in place "
     "(head AnonExclusive or refcount 1, `pud_wp_reuse`)"),
    ("wp_fault:pud:split", "a write to a read-only PUD leaf split it to PTEs "
     "(`thp_split_pud`) and was handled at PTE level"),
    ("wp_fault:pud:split_shared", "that PUD leaf's folio was also mapped by another mm "
     "(entire mapcount >= 1: shared by fork)"),
    ("wp_fault:pmd:reuse", "a write to a read-only PMD leaf whose head is not exclusive "
     "(a fork's) but whose refcount is 1 reused it (`do_huge_pmd_wp_page`, "
     "`folio_move_anon_rmap`)"),
    ("wp_fault:pmd:split_copy", "a write to a read-only PMD leaf that could not be reused "
     "split it (`thp_split_pmd`) and copied one page"),
    ("wp_fault:huge_zero:new_thp", "a write to the huge zero PMD replaced it by a new PMD "
     "THP reusing its deposit (`do_huge_zero_wp_pmd`)"),
    ("wp_fault:huge_zero:split", "a write to the huge zero PMD whose THP allocation failed "
     "split it to zero PTEs (`__split_huge_zero_page_pmd`)"),
    ("wp_fault:zero_pte:copy", "a write to a zero-page PTE allocated a page "
     "(`wp_page_copy` from the zero page)"),
    ("wp_fault:small:reuse", "a write to a read-only PTE of an order-0 folio reused it "
     "(AnonExclusive, or refcount 1: `wp_can_reuse_anon_folio`)"),
    ("wp_fault:small:copy", "a write to a read-only PTE of an order-0 folio copied it "
     "(`wp_page_copy`)"),
    ("wp_fault:large:exclusive_page", "a write to a read-only PTE of a large folio whose "
     "page is AnonExclusive reused it"),
    ("wp_fault:large:mapcount=1", "a write to a read-only, not exclusive PTE of a large "
     "folio mapped once, all in this mm: copied (`__wp_can_reuse_large_anon_folio`: "
     "mapcount <= 1)"),
    ("wp_fault:large:mapcount=2", "the same with the folio PTE-mapped twice, all in this mm "
     "(SHARED clear): reusable when every reference is a mapping"),
    ("wp_fault:large:mapcount=3", "the same with the folio PTE-mapped three times, all in "
     "this mm"),
    ("wp_fault:large:mapcount>=4", "the same with the folio PTE-mapped four or more times, "
     "all in this mm"),
    ("wp_fault:large:shared", "a write to a read-only, not exclusive PTE of a large folio "
     "that may be mapped by another mm (SHARED set): copied"),
    ("wp_fault:large:extra_reference", "a write to a read-only, not exclusive PTE of a large "
     "folio mapped only in this mm but holding a reference that is not a mapping (a pin): "
     "copied"),
    ("wp_fault:large:reused", "a write to a read-only, not exclusive PTE of a large folio "
     "reused the page in place (`__wp_can_reuse_large_anon_folio` true)"),
    # ---- pins ------------------------------------------------------------------------
    ("pin:large_folio", "FOLL_PIN of a page of a large folio: refcount and `_pincount` + 1"),
    ("pin:small_folio", "FOLL_PIN of an order-0 folio: refcount + `GUP_PIN_COUNTING_BIAS`"),
    ("pin:breaks_cow", "the pin's write fault replaced the folio the page mapped "
     "(COW broken before pinning, FOLL_WRITE)"),
    ("unpin:frees_folio", "an unpin dropped the last reference of a folio no longer mapped "
     "(`gup_put_folio` frees it)"),
    # ---- fork ------------------------------------------------------------------------
    ("fork:copy_huge_pud", "fork shared a PUD leaf with the child: new two-level deposit, "
     "entire mapcount + 1, both write-protected (`copy_huge_pud`)"),
    ("fork:copy_huge_pud:pinned_split", "fork met an exclusive, maybe pinned PUD folio: the "
     "parent's PUD was split and copied at PTE level (`thp_split_pud`)"),
    ("fork:copy_huge_pmd", "fork shared a PMD THP leaf with the child (`copy_huge_pmd`)"),
    ("fork:copy_huge_pmd:pinned_split", "fork met an exclusive, maybe pinned PMD THP: the "
     "parent's PMD was split (`thp_split_pmd`, -EAGAIN)"),
    ("fork:copy_huge_zero_pmd", "fork copied a huge zero PMD, with a deposit for the child"),
    ("fork:copy_pte_range", "fork copied present PTEs (`copy_present_ptes`)"),
    ("fork:copy_pte_range:mid_pud_vma", "fork copied PTE tables of a VMA that starts inside "
     "a PUD range (the child's tables get addresses relative to a PUD it only partly maps)"),
    ("fork:copy_pte:large_folio", "fork shared PTE-mapped pages of a large folio "
     "(`folio_try_dup_anon_rmap_ptes`: the child takes an mm-id slot)"),
    ("fork:copy_pte:swap_entry", "fork copied a swap PTE (`swap_duplicate`)"),
    ("fork:copy_present_page:pinned", "fork gave the child its own copy of a pinned "
     "exclusive page (`copy_present_page`)"),
    ("fork:folio_already_shared", "fork shared a large folio that another mm already maps "
     "(a third mm: both mm-id slots may be taken)"),
    ("fork:enomem", "fork failed to allocate a page copy; the half-built child was torn down "
     "(`dup_mmap` -ENOMEM)"),
    # ---- zap: munmap, mmap over a mapping, MADV_DONTNEED, exit -----------------------
    ("zap:pud_leaf:whole", "a PUD leaf wholly inside a zapped range: rmap, RSS, the two-level "
     "deposit withdrawn and freed (`zap_huge_pud`)"),
    ("zap:pud_leaf:whole_shared", "that PUD leaf's folio stays mapped by another mm"),
    ("zap:pud_leaf:partial", "a PUD leaf partly inside a zapped range: split straight to "
     "PTEs, then the PTEs in range zapped"),
    ("zap:pmd_leaf:whole", "a PMD THP leaf wholly inside a zapped range (`zap_huge_pmd`)"),
    ("zap:pmd_leaf:whole_shared", "that PMD THP's folio stays mapped by another mm"),
    ("zap:pmd_leaf:partial", "a PMD THP leaf partly inside a zapped range: split, then the "
     "PTEs in range zapped"),
    ("zap:huge_zero_pmd", "a huge zero PMD in a zapped range (its deposit freed or withdrawn)"),
    ("zap:deferred_split:pmd_order", "a zap left a PMD-order folio partly mapped: flagged and "
     "queued (`split_deferred`, `thp_deferred_split_page`)"),
    ("zap:deferred_split:pud_order", "a zap left a PUD-order folio partly mapped: flagged and "
     "queued (`split_deferred` for the PUD order)"),
    ("zap:swap_entry", "a zap dropped a swap PTE (`free_swap_and_cache`)"),
    ("zap:whole_pmd_range:child_pte_table", "an mm created by fork zapped the whole PMD range "
     "of a PTE table that maps something"),
    ("dontneed:frees_pte_table", "MADV_DONTNEED freed a PTE table it emptied over a whole PMD "
     "range (`try_to_free_pte`, CONFIG_PT_RECLAIM)"),
    ("munmap:frees_page_tables", "munmap freed a PTE or PMD table no VMA covers any more "
     "(`free_pgtables`)"),
    ("vma_split:pud_leaf_at_edge", "a VMA split point fell strictly inside a PUD leaf: split "
     "first (`vma_adjust_trans_huge`)"),
    ("vma_split:pmd_leaf_at_edge", "a VMA split point fell strictly inside a PMD leaf or "
     "huge zero PMD: split first"),
    ("mmap:replaces_mapping", "a MAP_FIXED mmap over mapped pages zapped them first"),
    ("exit:folio_stays_mapped", "an exiting mm unmapped a large folio that another mm still "
     "maps (its mm-id slot freed, SHARED re-evaluated)"),
    # ---- mprotect --------------------------------------------------------------------
    ("mprotect:pud_leaf:whole", "mprotect of a whole PUD leaf: changed in place, never made "
     "writable (`change_huge_pud`)"),
    ("mprotect:pud_leaf:split", "mprotect split a PUD leaf it covers only in part"),
    ("mprotect:pmd_leaf:upgrade", "mprotect to rw of a whole PMD leaf with an AnonExclusive "
     "head made it writable (`can_change_pmd_writable`)"),
    ("mprotect:pmd_leaf:stays_readonly", "mprotect to rw of a whole PMD leaf whose head is "
     "not exclusive left it read-only"),
    ("mprotect:pmd_leaf:split", "mprotect split a PMD leaf it covers only in part"),
    ("mprotect:huge_zero_pmd", "mprotect of a whole huge zero PMD (stays read-only)"),
    ("mprotect:pte:upgrade", "mprotect to rw made a read-only PTE of an AnonExclusive page "
     "writable (`can_change_pte_writable`)"),
    ("mprotect:pte:stays_readonly", "mprotect to rw left a PTE of a page that is not "
     "exclusive read-only"),
    # ---- MADV_PAGEOUT ----------------------------------------------------------------
    ("pageout:no_swap", "MADV_PAGEOUT over mapped pages with swap disabled (nothing changes)"),
    ("pageout:pud_leaf:split", "the pageout walk split a PUD leaf (no `pud_entry`)"),
    ("pageout:pmd_leaf:swapped_whole", "a written PMD THP wholly in range was swapped out as "
     "one unit (`thp_swpout`)"),
    ("pageout:pmd_leaf:zero_filled", "a zero-filled PMD THP wholly in range went to the swap "
     "zeromap as one unit, with no IO"),
    ("pageout:thp:swap_full_split", "a THP found no room in swap and was split to be "
     "reclaimed page by page (`thp_swpout_fallback`)"),
    ("pageout:pmd_leaf:partial_split", "a PMD THP partly in range was split "
     "(`split_folio` in `madvise_cold_or_pageout_pte_range`)"),
    ("pageout:large_pte:split", "a PTE-mapped large folio not wholly in the batch was split"),
    ("pageout:large_pte:whole", "a PTE-mapped large folio wholly in range, mapped only there, "
     "was reclaimed whole"),
    ("pageout:small:swapped", "an order-0 folio mapped only in range was swapped out"),
    ("pageout:shared_skipped", "a folio in range that may be mapped shared was left alone "
     "(`folio_maybe_mapped_shared`)"),
    ("pageout:pinned_skipped", "a pinned folio in range was not reclaimed "
     "(`folio_maybe_dma_pinned`)"),
    # ---- migrate (mbind MPOL_MF_MOVE) ------------------------------------------------
    ("migrate:pud_leaf:split", "the migrate walk split a PUD leaf (no PUD migration entry)"),
    ("migrate:pmd_leaf:moved", "a PMD THP moved whole through a PMD migration entry "
     "(`set_pmd_migration_entry`, `remove_migration_pmd`, `thp_migration_success`)"),
    ("migrate:written_thp_moved", "a THP that moved whole had been written (its contents "
     "were copied)"),
    ("migrate:pud_folio:moved", "a PUD-order folio (PTE-mapped after the walk's split) moved "
     "whole"),
    ("migrate:large_pte:moved", "a PTE-mapped PMD-order folio moved whole"),
    ("migrate:small:moved", "an order-0 folio moved to the node"),
    ("migrate:alloc_fail_split", "no folio of the order could be allocated on the node: the "
     "THP was split and its pages moved one by one (`thp_migration_split`)"),
    ("migrate:pinned_not_moved", "a pinned folio in range stayed where it was "
     "(`thp_migration_fail` for a THP)"),
    ("migrate:shared_skipped", "a folio that may be mapped shared was not queued "
     "(MPOL_MF_MOVE without MOVE_ALL)"),
    ("migrate:partially_mapped", "a partially mapped, queued large folio was queued for "
     "migration"),
    # ---- split_folio (debugfs split_huge_pages) --------------------------------------
    ("split_folio:pud_order", "a PUD-order folio was split to order 0 (`split` for the PUD "
     "order)"),
    ("split_folio:pmd_order", "a PMD-order folio was split to order 0 (`thp_split_page`)"),
    ("split_folio:pmd_leaf", "the folio split was PMD-mapped: frozen into PTE migration "
     "entries (`__split_huge_pmd_locked(freeze)`)"),
    ("split_folio:pinned", "the split failed at once on an extra reference: EBUSY "
     "(`split_failed`)"),
    ("split_folio:shared", "the folio split may be mapped by more than one mm (SHARED "
     "set): it is unmapped and remapped in each"),
    ("split_folio:zero_subpages", "the split remapped zero-filled subpages to the shared zero "
     "page (`try_to_map_unused_to_zeropage`, RSS - 1 each)"),
    ("split_folio:partially_mapped", "the folio split was partially mapped (unmapped "
     "subpages freed, unqueued)"),
    # ---- the deferred split shrinker -------------------------------------------------
    ("shrink_deferred:split", "the deferred split shrinker split a partially mapped folio"),
    ("shrink_deferred:unqueue", "the shrinker took an unflagged (underused) folio off the "
     "queue"),
    ("shrink_deferred:split_failed", "the shrinker could not split a partially mapped folio "
     "(a pin): it stays queued"),
    ("shrink_deferred:pud_order", "the shrinker split a PUD-order folio"),
    # ---- deposits --------------------------------------------------------------------
    ("deposit:pud_stack:depth>=2", "a PUD table's deposit stack holds two or more PMD tables "
     "(two PUD leaves in one mm)"),
    ("deposit:pud_stack:depth>=3", "the same with three or more"),
    ("deposit:pmd_chain:depth>=2", "a PMD table holds two or more deposited PTE tables "
     "(two PMD leaves or huge zero PMDs under one PUD entry)"),
    ("deposit:pmd_chain:depth>=4", "the same with four or more"),
))

NAMES: tuple[str, ...] = tuple(f.name for f in CATALOGUE)
INDEX: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
N_FEATURES = len(CATALOGUE)

# --------------------------------------------------------------------------------------
# Counter deltas over one op
# --------------------------------------------------------------------------------------

_STAT_NAMES: tuple[str, ...] = (
    *VMSTAT_KEYS,
    *(f"pmd.{k}" for k in MTHP_KEYS),
    *(f"pud.{k}" for k in MTHP_KEYS),
    *(f"node.{k}" for k in NODE_KEYS),
)
_STAT_AT: dict[str, int] = {name: i for i, name in enumerate(_STAT_NAMES)}


def _stats_vector(stats: dict[str, Any]) -> tuple[int, ...]:
    """The counters in ``_STAT_NAMES`` order (the stats dicts keep ``empty_stats`` order)."""
    m = stats["mthp"]
    return (*stats["vmstat"].values(), *m["pmd"].values(), *m["pud"].values(),
            *stats["node"].values())


class _Delta:
    """``d["thp_split_pud"]``, ``d["pmd.split"]``: how much a counter moved over the op."""

    __slots__ = ("after", "before")

    def __init__(self, before: tuple[int, ...], after: tuple[int, ...]) -> None:
        self.before = before
        self.after = after

    def __getitem__(self, name: str) -> int:
        i = _STAT_AT[name]
        return self.after[i] - self.before[i]


# --------------------------------------------------------------------------------------
# Reading the reference state
# --------------------------------------------------------------------------------------


def ref_state(model: Any) -> MmState | None:
    """The reference state of ``model`` (``ref``, or the ref side of ``both``), or None."""
    st = getattr(getattr(model, "ref", model), "st", None)
    return st if isinstance(st, MmState) else None


def _live_mm(st: MmState, mm_id: int) -> MmStruct | None:
    if 0 <= mm_id < len(st.mms) and st.mms[mm_id].alive:
        return st.mms[mm_id]
    return None


def _vma_at(mm: MmStruct, vpn: int) -> Vma | None:
    for v in mm.vmas:
        if v.start <= vpn < v.end:
            return v
    return None


def _mapcount(folio: Folio) -> int:
    """folio_mapcount()."""
    return folio.large_mapcount + 1 if folio.order else folio.mapcount[0] + 1


def _maybe_shared(folio: Folio) -> bool:
    """folio_maybe_mapped_shared()."""
    if folio.order == 0:
        return folio.mapcount[0] > 0
    return folio.large_mapcount > 0 and folio.shared


def _pinned(folio: Folio) -> bool:
    """folio_maybe_dma_pinned()."""
    if folio.order:
        return folio.pincount > 0
    return folio.refcount >= GUP_PIN_COUNTING_BIAS


@dataclass(slots=True)
class _At:
    """Where an access to one page lands: the level and kind of the entry, the table and
    index holding it, and the folio and page it maps (present entries)."""

    where: str  # pud_none pud_leaf pmd_none pmd_leaf pmd_zero pte_none pte_zero pte_swap pte
    entry: Entry | None
    table: PtDesc
    index: int
    folio: Folio | None = None
    page: int = 0


def _lookup(st: MmState, mm: MmStruct, vpn: int) -> _At:
    g = st.geom
    pud = st.tables[mm.pud_table]
    pi = vpn // g.pud_nr
    pe = pud.entries[pi]
    if pe is None:
        return _At("pud_none", None, pud, pi)
    if pe[0] == "leaf":
        return _At("pud_leaf", pe, pud, pi, st.folios[pe[1]], vpn % g.pud_nr)
    pmd = st.tables[pe[1]]
    mi = (vpn // g.P) % g.P
    me = pmd.entries[mi]
    if me is None:
        return _At("pmd_none", None, pmd, mi)
    if me[0] == "leaf":
        return _At("pmd_leaf", me, pmd, mi, st.folios[me[1]], vpn % g.P)
    if me[0] == "zero":
        return _At("pmd_zero", me, pmd, mi)
    pte = st.tables[me[1]]
    ti = vpn % g.P
    te = pte.entries[ti]
    if te is None:
        return _At("pte_none", None, pte, ti)
    if te[0] == "pte":
        return _At("pte", te, pte, ti, st.folios[te[1]], te[2])
    return _At("pte_" + te[0], te, pte, ti)


@dataclass(slots=True)
class _FolioPre:
    """A folio a range op met, as it was before the op (the op may split or free it)."""

    folio: Folio
    order: int
    nr: int
    in_range: int  # PTEs of it in the range, or 1 for a huge leaf
    leaf: str  # "pud", "pmd" or "pte": how the range maps it
    maybe_shared: bool
    shared: bool
    pinned: bool
    partially_mapped: bool
    node: int
    written: bool
    mapcount: int


@dataclass(slots=True)
class _Range:
    """What a range walk met: PUD leaves (index, folio, wholly in range), PMD leaves and
    huge zero PMDs (PMD table, index, folio, wholly in range), PTE tables (PMD table, index,
    PTE table, whole PMD range, maps something), PMD tables over a whole PUD range, present
    PTEs per folio (count in range), the (exclusive, writable) bits of each present PTE when
    asked for, swap and zero PTEs, and per folio its state before the op."""

    pud_leaves: list[tuple[int, Folio, bool]] = field(default_factory=list)
    pmd_leaves: list[tuple[PtDesc, int, Folio, bool]] = field(default_factory=list)
    zero_pmds: list[tuple[PtDesc, int, bool]] = field(default_factory=list)
    pte_tables: list[tuple[PtDesc, int, PtDesc, bool, bool]] = field(default_factory=list)
    pmd_tables: list[PtDesc] = field(default_factory=list)
    ptes: dict[int, int] = field(default_factory=dict)
    pte_bits: list[tuple[bool, bool]] = field(default_factory=list)
    swap: int = 0
    zero: int = 0
    folios: list[_FolioPre] = field(default_factory=list)

    def mapped(self) -> bool:
        return bool(self.pud_leaves or self.pmd_leaves or self.zero_pmds or self.ptes
                    or self.swap or self.zero)


def _walk(st: MmState, mm: MmStruct, parts: list[tuple[int, int]], *, bits: bool = False,
          folios: bool = False) -> _Range:
    """Every non-none entry over ``parts`` (``[start, end)`` pairs) of ``mm``; with ``bits``
    each present PTE's exclusive and write bits, with ``folios`` each folio's state."""
    g = st.geom
    out = _Range()
    pud = st.tables[mm.pud_table]
    P, pmd_nr, pud_nr = g.P, g.pmd_nr, g.pud_nr
    for start, end in parts:
        end = min(end, g.space)
        addr = start
        while addr < end:
            pi = addr // pud_nr
            nxt = min(end, (pi + 1) * pud_nr)
            pe = pud.entries[pi]
            if pe is not None:
                if pe[0] == "leaf":
                    out.pud_leaves.append((pi, st.folios[pe[1]], nxt - addr == pud_nr))
                else:
                    pmd = st.tables[pe[1]]
                    _walk_pmd(st, out, pmd, addr, nxt, P, pmd_nr, bits)
                    if nxt - addr == pud_nr:
                        out.pmd_tables.append(pmd)
            addr = nxt
    if folios:
        out.folios = _folio_states(st, out)
    return out


def _walk_pmd(st: MmState, out: _Range, pmd: PtDesc, start: int, end: int, P: int,
              pmd_nr: int, bits: bool) -> None:
    addr = start
    while addr < end:
        mi = (addr // P) % P
        nxt = min(end, addr - addr % pmd_nr + pmd_nr)
        me = pmd.entries[mi]
        if me is not None:
            whole = nxt - addr == pmd_nr
            if me[0] == "leaf":
                out.pmd_leaves.append((pmd, mi, st.folios[me[1]], whole))
            elif me[0] == "zero":
                out.zero_pmds.append((pmd, mi, whole))
            else:
                pte = st.tables[me[1]]
                used = False
                entries = pte.entries
                ptes = out.ptes
                for ti in range(addr % P, addr % P + (nxt - addr)):
                    e = entries[ti]
                    if e is None:
                        continue
                    used = True
                    kind = e[0]
                    if kind == "pte":
                        ptes[e[1]] = ptes.get(e[1], 0) + 1
                        if bits:
                            f = st.folios[e[1]]
                            out.pte_bits.append((f.anon_exclusive[e[2]], bool(e[3])))
                    elif kind == "swap":
                        out.swap += 1
                    else:
                        out.zero += 1
                out.pte_tables.append((pmd, mi, pte, whole, used))
        addr = nxt


def _folio_states(st: MmState, r: _Range) -> list[_FolioPre]:
    """Every folio the range maps, once each, leaves first, as it is now."""
    seen: dict[int, _FolioPre] = {}

    def note(f: Folio, leaf: str, n: int) -> None:
        if f.id in seen:
            seen[f.id].in_range += n
            return
        seen[f.id] = _FolioPre(
            f, f.order, f.nr, n, leaf, _maybe_shared(f), f.shared, _pinned(f),
            f.partially_mapped and f.deferred, f.node, f.data.count(0) != f.nr, _mapcount(f))

    for _, f, _ in r.pud_leaves:
        note(f, "pud", 1)
    for _, _, f, _ in r.pmd_leaves:
        note(f, "pmd", 1)
    for fid, n in r.ptes.items():
        note(st.folios[fid], "pte", n)
    return list(seen.values())


def _vma_parts(mm: MmStruct, start: int, end: int) -> list[tuple[int, int]]:
    return [(max(v.start, start), min(v.end, end)) for v in mm.vmas
            if v.start < end and start < v.end]


def _edge_leaf(st: MmState, mm: MmStruct, addr: int) -> str | None:
    """'pud' or 'pmd' when a VMA split at ``addr`` splits a huge leaf first
    (``split_huge_at``): ``addr`` strictly inside a VMA and strictly inside the leaf."""
    g = st.geom
    if addr >= g.space or not any(v.start < addr < v.end for v in mm.vmas):
        return None
    at = _lookup(st, mm, addr)
    if at.where == "pud_leaf" and addr % g.pud_nr:
        return "pud"
    if at.where in ("pmd_leaf", "pmd_zero") and addr % g.pmd_nr:
        return "pmd"
    return None


# --------------------------------------------------------------------------------------
# Per op: what to look at before, and the features after
# --------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Pre:
    """The reference state an op met: counters, the next folio id, and what ``_probe``
    read for the op's kind."""

    stats: tuple[int, ...]
    next_folio: int
    fail_alloc: tuple[int, int]
    data: Any = None


@dataclass(slots=True)
class _AccessPre:
    """The page an access (read, write, pin, split_folio) meets, before it runs."""

    at: _At
    vma: Vma | None
    excl_page: bool = False
    refcount: int = 0
    mapcount: int = 0
    shared: bool = False
    entire: int = -1
    partially_mapped: bool = False
    slot_count: int = 0
    zeromap: bool = False


@dataclass(slots=True)
class _RangePre:
    """A range op's walk and the leaves its VMA split points would split first."""

    r: _Range
    edges: list[str | None]


class Coverage:
    """Features of one program, op by op: ``before(model, op)`` reads the reference state
    and returns a token, ``after(model, op, result, token)`` adds the op's features to
    ``hits`` (a count per catalogue entry).  ``unclassified`` counts ops whose state could
    not be read (a corrupted model), ``first_error`` says why for the first."""

    def __init__(self) -> None:
        self.hits: list[int] = [0] * N_FEATURES
        self.ops = 0
        self.unclassified = 0
        self.first_error = ""

    def reset(self) -> None:
        """Forget the hits (a new program); ``unclassified`` keeps counting."""
        self.hits = [0] * N_FEATURES
        self.ops = 0

    def hit_names(self) -> dict[str, int]:
        return {NAMES[i]: n for i, n in enumerate(self.hits) if n}

    def before(self, model: Any, op: Op) -> _Pre | None:
        st = ref_state(model)
        if st is None:
            return None
        try:
            fa = st.fail_alloc
            return _Pre(_stats_vector(st.stats), st.next_folio_id, (fa["pud"], fa["pmd"]),
                        _probe(st, op))
        except Exception as e:
            self._error(op, e)
            return None

    def after(self, model: Any, op: Op, result: Result, pre: _Pre | None) -> None:
        st = ref_state(model)
        if st is None or pre is None:
            return
        self.ops += 1
        out: list[str] = []
        try:
            d = _Delta(pre.stats, _stats_vector(st.stats))
            _classify(st, op, result, pre, d, out)
        except Exception as e:
            self._error(op, e)
            return
        hits = self.hits
        for name in out:
            hits[INDEX[name]] += 1

    def _error(self, op: Op, e: Exception) -> None:
        self.unclassified += 1
        if not self.first_error:
            self.first_error = f"{spec.op_str(op)}: {type(e).__name__}: {e}"


def _probe(st: MmState, op: Op) -> Any:
    """What ``op`` will meet, read before it runs."""
    if isinstance(op, spec.ShrinkDeferred):
        return [st.folios[fid].partially_mapped for fid in st.deferred]
    if isinstance(op, spec.Unpin):
        pin = st.pins.get(op.pin)
        return None if pin is None else st.folios[pin.folio]
    if isinstance(op, spec.FailAlloc):
        return None
    mm = _live_mm(st, op.mm)
    if mm is None:
        return None
    g = st.geom
    if isinstance(op, spec.Read | spec.Write | spec.Pin | spec.SplitFolio):
        if op.addr >= g.space:
            return None
        at = _lookup(st, mm, op.addr)
        a = _AccessPre(at, _vma_at(mm, op.addr))
        f = at.folio
        if f is not None:
            a.excl_page = f.anon_exclusive[at.page]
            a.refcount, a.mapcount = f.refcount, _mapcount(f)
            a.shared, a.entire = f.shared, f.entire_mapcount
            a.partially_mapped = f.partially_mapped
        elif at.where == "pte_swap":
            assert at.entry is not None
            slot = st.swap[at.entry[1]]
            a.slot_count, a.zeromap = slot.count, slot.zeromap
        return a
    if isinstance(op, spec.Fork):
        faulted = [v for v in mm.vmas if v.anon_vma is not None]
        return (_walk(st, mm, [(v.start, v.end) for v in faulted], folios=True),
                _walk(st, mm, [(v.start, v.end) for v in faulted if v.start % g.pud_nr]))
    if isinstance(op, spec.Exit):
        return _walk(st, mm, [(v.start, v.end) for v in mm.vmas], folios=True)
    start, end = op.start, op.start + op.npages
    if op.npages <= 0 or end > g.space:
        return None
    if isinstance(op, spec.Mprotect):
        parts = []
        cur = start
        while cur < end:  # sys_mprotect: the VMAs up to the first hole
            v = next((v for v in mm.vmas if v.end > cur), None)
            if v is None or v.start > cur:
                break
            hi = min(v.end, end)
            if v.prot != op.prot:  # mprotect_fixup() leaves the others alone
                parts.append((cur, hi))
            cur = hi
        edges = [_edge_leaf(st, mm, a) for a, _ in parts[:1]]
        edges += [_edge_leaf(st, mm, b) for _, b in parts[-1:]]
        return _RangePre(_walk(st, mm, parts, bits=op.prot == "rw"), edges)
    wants = isinstance(op, spec.Migrate) or (isinstance(op, spec.Madvise)
                                             and op.advice == "pageout")
    r = _walk(st, mm, _vma_parts(mm, start, end), folios=wants)
    return _RangePre(r, [_edge_leaf(st, mm, start), _edge_leaf(st, mm, end)])


def _classify(st: MmState, op: Op, result: Result, pre: _Pre, d: _Delta, out: list[str]
              ) -> None:
    data = pre.data
    if isinstance(op, spec.ShrinkDeferred):
        if isinstance(result, int) and result > 0:
            out.append("shrink_deferred:split")
        if not all(data):
            out.append("shrink_deferred:unqueue")
        if d["pmd.split_failed"] or d["pud.split_failed"]:
            out.append("shrink_deferred:split_failed")
        if d["pud.split"]:
            out.append("shrink_deferred:pud_order")
        return
    if isinstance(op, spec.Unpin):
        if result == 0 and isinstance(data, Folio) and data.freed:
            out.append("unpin:frees_folio")
        return
    if data is None or isinstance(op, spec.FailAlloc):
        return
    mm = st.mms[op.mm]
    if isinstance(op, spec.Read | spec.Write | spec.Pin):
        _access(st, mm, op, result, pre, data, d, out)
    elif isinstance(op, spec.SplitFolio):
        _split_folio(result, data, d, out)
    elif isinstance(op, spec.Fork):
        _fork(st, result, pre, data, d, out)
    elif isinstance(op, spec.Exit):
        _zap(mm, data, d, out)
        if any(f.order and f.mapcount > f.in_range for f in data.folios):
            out.append("exit:folio_stays_mapped")
    elif isinstance(op, spec.Mprotect):
        _mprotect(op, data, d, out)
    elif isinstance(op, spec.Migrate):
        _migrate(st, op, result, pre, data.r, d, out)
    elif isinstance(op, spec.Madvise) and op.advice == "pageout":
        _pageout(st, data.r, d, out)
    elif isinstance(op, spec.Madvise) and op.advice != "dontneed":
        _edges(data.edges, d, out)
    elif isinstance(op, spec.Munmap | spec.Mmap | spec.Madvise) and result == 0:
        r = data.r
        _zap(mm, r, d, out)
        if isinstance(op, spec.Madvise):  # dontneed: no VMA is split
            if any(whole and used and pmd.entries[mi] is None
                   for pmd, mi, _, whole, used in r.pte_tables):
                out.append("dontneed:frees_pte_table")
            return
        _edges(data.edges, d, out)
        if isinstance(op, spec.Mmap) and r.mapped():
            out.append("mmap:replaces_mapping")
        if isinstance(op, spec.Munmap) and (
                any(pte.id not in st.tables for _, _, pte, _, _ in r.pte_tables)
                or any(pmd.id not in st.tables for pmd in r.pmd_tables)):
            out.append("munmap:frees_page_tables")


def _edges(edges: list[str | None], d: _Delta, out: list[str]) -> None:
    if "pud" in edges and d["thp_split_pud"]:
        out.append("vma_split:pud_leaf_at_edge")
    if "pmd" in edges and d["thp_split_pmd"]:
        out.append("vma_split:pmd_leaf_at_edge")


def _deposit_depths(st: MmState, mm: MmStruct, pmd_tables: list[PtDesc], out: list[str]
                    ) -> None:
    """How deep the deposit chains of ``mm`` now are: its PUD stack holds one PMD table per
    PUD leaf, a PMD table one PTE table per PMD leaf or huge zero PMD (MODEL.md 4)."""
    pud = st.tables[mm.pud_table]
    leaves = sum(1 for e in pud.entries if e is not None and e[0] == "leaf")
    if leaves >= 2:
        out.append("deposit:pud_stack:depth>=2")
    if leaves >= 3:
        out.append("deposit:pud_stack:depth>=3")
    chain = max((sum(1 for e in t.entries if e is not None and e[0] != "table")
                 for t in pmd_tables), default=0)
    if chain >= 2:
        out.append("deposit:pmd_chain:depth>=2")
    if chain >= 4:
        out.append("deposit:pmd_chain:depth>=4")


def _pud_allowed(st: MmState, vma: Vma, vpn: int) -> bool:
    """thp_vma_allowable_order() and thp_vma_suitable_order() at the PUD order."""
    cfg, g = st.cfg, st.geom
    if vma.nohugepage:
        return False
    setting = cfg.pud_enabled
    if setting == "inherit":
        setting = cfg.thp_enabled
    if setting == "never" or (setting == "madvise" and not vma.hugepage):
        return False
    base = vpn - vpn % g.pud_nr
    return vma.start <= base and base + g.pud_nr <= vma.end


def _access(st: MmState, mm: MmStruct, op: spec.Read | spec.Write | spec.Pin, result: Result,
            pre: _Pre, a: _AccessPre, d: _Delta, out: list[str]) -> None:
    if result in (SIGSEGV, EFAULT):
        return
    write = not isinstance(op, spec.Read)
    vpn = op.addr
    at = a.at
    where = at.where
    if d["thp_fault_alloc_pud"]:
        out.append("fault:pud:alloc")
        if not write:
            out.append("fault:pud:alloc_on_read")
        pud = st.cfg.pud_enabled
        if pud == "madvise" or (pud == "inherit" and st.cfg.thp_enabled == "madvise"):
            out.append("fault:pud:alloc_in_madvised_vma")
    if d["thp_fault_fallback_pud"]:
        out.append("fault:pud:fallback")
    if where in ("pud_none", "pmd_none", "pte_none"):
        if (where == "pud_none" and not write and st.cfg.pud_read_fault == "fallback"
                and a.vma is not None and _pud_allowed(st, a.vma, vpn)):
            out.append("fault:pud:read_maps_pmd_level")
        if d["thp_fault_alloc"]:
            out.append("fault:pmd:alloc")
        if d["thp_fault_fallback"]:
            out.append("fault:pmd:fallback")
        if a.vma is not None and a.vma.nohugepage:
            out.append("fault:nohugepage_vma")
        post = _lookup(st, mm, vpn)
        if post.where == "pmd_zero":
            out.append("fault:pmd:huge_zero")
        elif post.where == "pte_zero":
            out.append("fault:pte:zero_page")
        elif (post.where == "pte" and post.folio is not None and post.folio.order == 0
              and post.folio.id >= pre.next_folio):
            out.append("fault:pte:new_page")
    elif where == "pte_swap":
        out.append("fault:swapin")
        if a.zeromap:
            out.append("fault:swapin:zeromap")
        if a.slot_count > 1:
            out.append("fault:swapin:slot_shared")
        if write:
            out.append("fault:swapin:then_write")
    elif write and at.entry is not None and (where in ("pmd_zero", "pte_zero")
                                             or not at.entry[-3]):
        _wp_fault(st, mm, vpn, a, d, out)
    if isinstance(op, spec.Pin) and isinstance(result, int):
        pinned = st.folios[st.pins[result].folio]
        out.append("pin:large_folio" if pinned.order else "pin:small_folio")
        if at.folio is not None and pinned.id != at.folio.id:
            out.append("pin:breaks_cow")
    if where in ("pud_none", "pmd_none", "pmd_zero"):  # a new huge leaf or zero PMD
        pe = st.tables[mm.pud_table].entries[vpn // st.geom.pud_nr]
        tables = [st.tables[pe[1]]] if pe is not None and pe[0] == "table" else []
        _deposit_depths(st, mm, tables, out)


def _wp_fault(st: MmState, mm: MmStruct, vpn: int, a: _AccessPre, d: _Delta, out: list[str]
              ) -> None:
    """A write to a present read-only entry, the huge zero PMD or a zero PTE."""
    where, f = a.at.where, a.at.folio
    if where == "pmd_zero":
        if d["thp_fault_alloc"]:
            out.append("wp_fault:huge_zero:new_thp")
        if d["thp_split_pmd"]:
            out.append("wp_fault:huge_zero:split")
        return
    if where == "pte_zero":
        out.append("wp_fault:zero_pte:copy")
        return
    if f is None:
        return
    if where == "pud_leaf":
        if d["thp_split_pud"]:
            out.append("wp_fault:pud:split")
            if a.entire > 0:
                out.append("wp_fault:pud:split_shared")
        else:
            out.append("wp_fault:pud:reuse")
        return
    if where == "pmd_leaf":
        # A read-only PMD leaf in a writable VMA never has an exclusive head: mprotect
        # makes an exclusive one writable (can_change_pmd_writable), so only a fork's
        # leaf, reused by refcount, or split, gets here.
        out.append("wp_fault:pmd:split_copy" if d["thp_split_pmd"] else "wp_fault:pmd:reuse")
        return
    post = _lookup(st, mm, vpn)
    reused = post.folio is not None and post.folio.id == f.id
    if f.order == 0 and a.mapcount:
        out.append("wp_fault:small:reuse" if reused else "wp_fault:small:copy")
        return
    if a.excl_page:
        out.append("wp_fault:large:exclusive_page")
        return
    if a.shared:
        out.append("wp_fault:large:shared")
    elif a.mapcount <= 3:
        out.append(f"wp_fault:large:mapcount={a.mapcount}")
    else:
        out.append("wp_fault:large:mapcount>=4")
    if not a.shared and a.mapcount > 1 and a.refcount != a.mapcount:
        out.append("wp_fault:large:extra_reference")
    if reused:
        out.append("wp_fault:large:reused")


def _split_folio(result: Result, a: _AccessPre, d: _Delta, out: list[str]) -> None:
    if result == EBUSY:
        out.append("split_folio:pinned")
        return
    if result != 0:
        return
    if d["pud.split"]:
        out.append("split_folio:pud_order")
    if d["pmd.split"]:
        out.append("split_folio:pmd_order")
    if a.at.where == "pmd_leaf":
        out.append("split_folio:pmd_leaf")
    if a.shared:
        out.append("split_folio:shared")
    if d["node.nr_anon_mapped"] < 0:
        out.append("split_folio:zero_subpages")
    if a.partially_mapped:
        out.append("split_folio:partially_mapped")


def _fork(st: MmState, result: Result, pre: _Pre, data: tuple[_Range, _Range], d: _Delta,
          out: list[str]) -> None:
    r, mid = data
    if result == ENOMEM:
        out.append("fork:enomem")
        return
    if not isinstance(result, int) or not 0 < result < len(st.mms):
        return
    if d["thp_split_pud"]:
        out.append("fork:copy_huge_pud:pinned_split")
    if d["thp_split_pmd"]:
        out.append("fork:copy_huge_pmd:pinned_split")
    if r.zero_pmds:
        out.append("fork:copy_huge_zero_pmd")
    if r.ptes:
        out.append("fork:copy_pte_range")
    if any(used for _, _, _, _, used in mid.pte_tables):
        out.append("fork:copy_pte_range:mid_pud_vma")
    if r.swap:
        out.append("fork:copy_pte:swap_entry")
    if any(f.order and f.leaf == "pte" for f in r.folios):
        out.append("fork:copy_pte:large_folio")
    if st.next_folio_id > pre.next_folio:
        out.append("fork:copy_present_page:pinned")
    if any(f.order and f.shared for f in r.folios):
        out.append("fork:folio_already_shared")
    child = st.mms[result]
    tables = []
    for e in st.tables[child.pud_table].entries:
        if e is None:
            continue
        if e[0] == "leaf":
            if "fork:copy_huge_pud" not in out:
                out.append("fork:copy_huge_pud")
        else:
            tables.append(st.tables[e[1]])
    if any(e is not None and e[0] == "leaf" for t in tables for e in t.entries):
        out.append("fork:copy_huge_pmd")
    _deposit_depths(st, child, tables, out)


def _zap(mm: MmStruct, r: _Range, d: _Delta, out: list[str]) -> None:
    """A zap over what ``r`` met (munmap, mmap over a mapping, MADV_DONTNEED, exit)."""
    for _, f, whole in r.pud_leaves:
        if whole:
            out.append("zap:pud_leaf:whole")
            if _mapcount(f) > 0:  # after the zap: mapped elsewhere
                out.append("zap:pud_leaf:whole_shared")
        else:
            out.append("zap:pud_leaf:partial")
    for _, _, f, whole in r.pmd_leaves:
        if whole:
            out.append("zap:pmd_leaf:whole")
            if _mapcount(f) > 0:
                out.append("zap:pmd_leaf:whole_shared")
        else:
            out.append("zap:pmd_leaf:partial")
    if r.zero_pmds:
        out.append("zap:huge_zero_pmd")
    if d["pmd.split_deferred"]:
        out.append("zap:deferred_split:pmd_order")
    if d["pud.split_deferred"]:
        out.append("zap:deferred_split:pud_order")
    if r.swap:
        out.append("zap:swap_entry")
    if mm.id > 0 and any(whole and used for _, _, _, whole, used in r.pte_tables):
        out.append("zap:whole_pmd_range:child_pte_table")


def _mprotect(op: spec.Mprotect, data: _RangePre, d: _Delta, out: list[str]) -> None:
    r = data.r
    _edges(data.edges, d, out)
    for _, _, whole in r.pud_leaves:
        out.append("mprotect:pud_leaf:whole" if whole else "mprotect:pud_leaf:split")
    for pmd, mi, _, whole in r.pmd_leaves:
        if not whole:
            out.append("mprotect:pmd_leaf:split")
        elif op.prot == "rw":
            e = pmd.entries[mi]
            writable = e is not None and e[0] == "leaf" and bool(e[2])
            out.append("mprotect:pmd_leaf:upgrade" if writable
                       else "mprotect:pmd_leaf:stays_readonly")
    if any(whole for _, _, whole in r.zero_pmds):
        out.append("mprotect:huge_zero_pmd")
    if any(excl and not w for excl, w in r.pte_bits):
        out.append("mprotect:pte:upgrade")
    if any(not excl for excl, _ in r.pte_bits):
        out.append("mprotect:pte:stays_readonly")


def _pageout(st: MmState, r: _Range, d: _Delta, out: list[str]) -> None:
    if not r.folios:
        return
    if st.cfg.swap_capacity == 0:
        out.append("pageout:no_swap")
        return
    if r.pud_leaves and d["thp_split_pud"]:
        out.append("pageout:pud_leaf:split")
    for pmd, mi, f, whole in r.pmd_leaves:
        e = pmd.entries[mi]
        if whole and f.freed and f.order and e is not None and e[0] == "table":
            first = st.tables[e[1]].entries[0]
            if first is not None and first[0] == "swap" and first[1] in st.swap:
                out.append("pageout:pmd_leaf:zero_filled" if st.swap[first[1]].zeromap
                           else "pageout:pmd_leaf:swapped_whole")
    if d["thp_swpout_fallback"]:
        out.append("pageout:thp:swap_full_split")
    for fp in r.folios:
        f = fp.folio
        if fp.maybe_shared:
            out.append("pageout:shared_skipped")
        elif fp.pinned:
            out.append("pageout:pinned_skipped")
        elif fp.order == 0:
            if f.freed:
                out.append("pageout:small:swapped")
        elif fp.leaf == "pmd":
            if not _whole_pmd(r, f) and f.order == 0:
                out.append("pageout:pmd_leaf:partial_split")
        elif fp.leaf == "pte":
            if fp.in_range < fp.nr and f.order == 0:
                out.append("pageout:large_pte:split")
            elif fp.in_range == fp.nr and f.freed and f.order == fp.order:
                out.append("pageout:large_pte:whole")


def _whole_pmd(r: _Range, f: Folio) -> bool:
    return any(x is f and whole for _, _, x, whole in r.pmd_leaves)


def _migrate(st: MmState, op: spec.Migrate, result: Result, pre: _Pre, r: _Range,
             d: _Delta, out: list[str]) -> None:
    if result == EINVAL:
        return
    if r.pud_leaves and d["thp_split_pud"]:
        out.append("migrate:pud_leaf:split")
    if d["thp_migration_split"] and any(pre.fail_alloc):
        out.append("migrate:alloc_fail_split")
    g = st.geom
    for fp in r.folios:
        if fp.node == op.node:
            continue
        if fp.maybe_shared:
            out.append("migrate:shared_skipped")
            continue
        if fp.pinned:
            out.append("migrate:pinned_not_moved")
            continue
        if fp.partially_mapped:
            out.append("migrate:partially_mapped")
        f = fp.folio
        moved = f.freed and f.order == fp.order  # moved whole, not split
        if not moved:
            continue
        if fp.order == 0:
            out.append("migrate:small:moved")
            continue
        if fp.written:
            out.append("migrate:written_thp_moved")
        if fp.leaf == "pmd":
            out.append("migrate:pmd_leaf:moved")
        elif fp.order == g.pud_order:
            out.append("migrate:pud_folio:moved")
        else:
            out.append("migrate:large_pte:moved")


# --------------------------------------------------------------------------------------
# Adding programs up, and the table
# --------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Feature counts over many programs: ``hits`` (times hit), ``programs_hit`` (programs
    that hit each at least once), ``programs`` and ``ops`` run, ops not classified."""

    hits: list[int] = field(default_factory=lambda: [0] * N_FEATURES)
    programs_hit: list[int] = field(default_factory=lambda: [0] * N_FEATURES)
    programs: int = 0
    ops: int = 0
    unclassified: int = 0

    def add_program(self, hits: list[int], ops: int = 0) -> None:
        self.programs += 1
        self.ops += ops
        for i, n in enumerate(hits):
            if n:
                self.hits[i] += n
                self.programs_hit[i] += 1

    def merge(self, other: Tally) -> None:
        for i in range(N_FEATURES):
            self.hits[i] += other.hits[i]
            self.programs_hit[i] += other.programs_hit[i]
        self.programs += other.programs
        self.ops += other.ops
        self.unclassified += other.unclassified

    def to_json(self) -> dict[str, Any]:
        return {"hits": list(self.hits), "programs_hit": list(self.programs_hit),
                "programs": self.programs, "ops": self.ops,
                "unclassified": self.unclassified}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Tally:
        t = cls()
        t.hits = [int(x) for x in raw["hits"]]
        t.programs_hit = [int(x) for x in raw["programs_hit"]]
        t.programs, t.ops = int(raw["programs"]), int(raw["ops"])
        t.unclassified = int(raw.get("unclassified", 0))
        return t

    def covered(self) -> int:
        return sum(1 for n in self.hits if n)

    def never_hit(self) -> list[str]:
        return [NAMES[i] for i, n in enumerate(self.hits) if not n]

    def table(self, title: str = "coverage") -> str:
        """The table ``pudthp coverage`` and ``pudthp fuzz`` print: a headline with the
        share of the catalogue hit, every feature with its hits and the programs hitting
        it, then the features never hit with what they mean."""
        n = N_FEATURES
        hit = self.covered()
        lines = [f"{title}: {self.programs} programs, {self.ops} ops; {hit}/{n} features "
                 f"hit ({100.0 * hit / n:.1f}%)"]
        if self.unclassified:
            lines.append(f"  ({self.unclassified} ops whose state could not be read were "
                         f"not classified)")
        width = max(len(name) for name in NAMES)
        lines.append(f"  {'feature':<{width}}  {'hits':>9}  {'programs':>9}")
        for i, name in enumerate(NAMES):
            lines.append(f"  {name:<{width}}  {self.hits[i]:>9}  {self.programs_hit[i]:>9}")
        missing = self.never_hit()
        lines.append(f"never hit ({len(missing)}):" if missing else "never hit: none")
        for name in missing:
            lines.append(f"  {name}: {CATALOGUE[INDEX[name]].meaning}")
        return "\n".join(lines) + "\n"
