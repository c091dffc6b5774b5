"""Model-state coverage: a fixed catalogue of the kernel paths an op took and the state it
met, read from the reference model, counted per program and over campaigns.

Each feature is named ``op:path:state`` (``pageout:pmd_leaf:swapped_whole``,
``wp_fault:large:mapcount=2``, ``fork:copy_pte_range:mid_pud_vma``) and is decided from four
cheap things only: the op, its result, a look at the reference state just before the op
(the entry an access meets; the leaves, tables and PTEs in the range a range op covers; the
parent's mappings for a fork) and just after it (the same places again, and the deltas of the
vmstat and mTHP counters over the op).  Nothing in the reference is instrumented, so the
catalogue reads the same whatever implementation runs beside it, and a given program always
hits the same features the same number of times.  The exception is the ``fast:`` section:
which variant of each hot path the fast side ran, as it counts them itself
(``pudthp_fast.state.Paths.taken``), hit under ``both`` only.  ``docs/coverage.md`` explains
every feature in kernel terms (``tests/test_coverage.py`` keeps it and ``CATALOGUE`` equal).

``Coverage`` is what ``harness.runner.Stepper`` calls around each op (``before`` and
``after``); ``Tally`` adds programs up for a campaign or a corpus and prints the table that
``pudthp coverage`` and ``pudthp fuzz`` show.  A state the probes cannot read (a corrupted
model of the rejected ``list_head`` design) counts as an unclassified op, never a finding.

The catalogue itself, names and meanings, is ``harness.coverage_catalogue`` (re-exported
here); what is read of the reference state, and what each op will meet, is
``harness.coverage_probe``; this module decides each op's features and adds them up.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

from harness.coverage_catalogue import CATALOGUE, INDEX, N_FEATURES, NAMES, Feature
from harness.coverage_probe import (
    AccessPre,
    Delta,
    Pre,
    Range,
    RangePre,
    folio_mapcount,
    lookup,
    probe,
    ref_state,
    stats_vector,
)
from pudthp_ref import spec
from pudthp_ref.huge_memory import thp_vma_allowable_orders, thp_vma_suitable_orders
from pudthp_ref.mm_types import Folio, MmState, MmStruct, PtDesc, Vma
from pudthp_ref.spec import (
    EAGAIN,
    EBUSY,
    EFAULT,
    EINVAL,
    ENOMEM,
    SIGSEGV,
    Op,
    Result,
)

__all__ = ["CATALOGUE", "INDEX", "NAMES", "N_FEATURES", "Coverage", "Feature", "Tally"]


# --------------------------------------------------------------------------------------
# Per program: the features of each op, read after it (coverage_probe read it before)
# --------------------------------------------------------------------------------------


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
        self.fast_taken: dict[str, int] = {}  # the fast side's path counts before the op

    def reset(self) -> None:
        """Forget the hits (a new program); ``unclassified`` keeps counting."""
        self.hits = [0] * N_FEATURES
        self.ops = 0

    def hit_names(self) -> dict[str, int]:
        return {NAMES[i]: n for i, n in enumerate(self.hits) if n}

    def before(self, model: Any, op: Op) -> Pre | None:
        self.fast_taken = dict(_fast_taken(model))
        st = ref_state(model)
        if st is None:
            return None
        try:
            fa = st.fail_alloc
            return Pre(stats_vector(st.stats), st.next_folio_id, (fa["pud"], fa["pmd"]),
                       probe(st, op))
        except Exception as e:
            self._error(op, e)
            return None

    def after(self, model: Any, op: Op, result: Result, pre: Pre | None) -> None:
        before = self.fast_taken
        for key, n in _fast_taken(model).items():
            if n > before.get(key, 0):
                self.hits[INDEX[f"fast:{key}"]] += 1
        st = ref_state(model)
        if st is None or pre is None:
            return
        self.ops += 1
        out: list[str] = []
        try:
            d = Delta(pre.stats, stats_vector(st.stats))
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



def _fast_taken(model: Any) -> dict[str, int]:
    """How often each variant of each fast-side hot path ran, if ``model`` has a fast side
    (``both``)."""
    paths = getattr(getattr(getattr(model, "fast", None), "st", None), "paths", None)
    taken = getattr(paths, "taken", None)
    return taken if isinstance(taken, dict) else {}


def _classify(st: MmState, op: Op, result: Result, pre: Pre, d: Delta, out: list[str]
              ) -> None:
    data = pre.data
    if d["mthp.split_deferred"]:
        out.append("deferred_split:mthp")
    if isinstance(op, spec.ShrinkDeferred):
        if d["thp_underused_split_page"]:
            out.append("shrink_deferred:underused")
        if d["mthp.split"]:
            out.append("shrink_deferred:mthp")
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
        _split_folio(op, result, data, d, out)
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
    elif isinstance(op, spec.Madvise) and op.advice == "collapse":
        _collapse(result, d, out)
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


def _collapse(result: Result, d: Delta, out: list[str]) -> None:
    """MADV_COLLAPSE (madvise_collapse): what its blocks met."""
    if d["thp_collapse_alloc"]:
        out.append("collapse:success")
        if d["pswpin"]:
            out.append("collapse:with_swapin")
        if d["mthp.nr_anon"] < 0 or d["pmd.nr_anon"] < d["thp_collapse_alloc"]:
            out.append("collapse:large_sources")
    if d["thp_collapse_alloc_failed"]:
        out.append("collapse:enomem_alloc")
    if result == EAGAIN:
        out.append("collapse:eagain_extra_reference")
    elif result == EINVAL:
        out.append("collapse:einval")


def _edges(edges: list[str | None], d: Delta, out: list[str]) -> None:
    if "pud" in edges and d["thp_split_pud"]:
        out.append("vma_split:pud_leaf_at_edge")
    if "pmd" in edges and d["thp_split_pmd"]:
        out.append("vma_split:pmd_leaf_at_edge")


def _deposit_depths(st: MmState, mm: MmStruct, pmd_tables: list[PtDesc], out: list[str]
                    ) -> None:
    """How deep the deposit chains of ``mm`` now are: its PUD stack holds one PMD table per
    PUD leaf, a PMD table one PTE table per PMD leaf or huge zero PMD (docs/model.md 5.2-5.3)."""
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
            pre: Pre, a: AccessPre, d: Delta, out: list[str]) -> None:
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
        post = lookup(st, mm, vpn)
        if post.where == "pmd_zero":
            out.append("fault:pmd:huge_zero")
        elif post.where == "pte_zero":
            out.append("fault:pte:zero_page")
        elif (post.where == "pte" and post.folio is not None and post.folio.order == 0
              and post.folio.id >= pre.next_folio):
            out.append("fault:pte:new_page")
        if d["mthp.anon_fault_alloc"]:
            out.append("fault:pte:mthp_alloc")
        if where == "pte_none" and write and a.vma is not None:
            _mthp_passed_over(st, a.vma, vpn, post, out)
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


def _wp_fault(st: MmState, mm: MmStruct, vpn: int, a: AccessPre, d: Delta, out: list[str]
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
    post = lookup(st, mm, vpn)
    reused = post.folio is not None and post.folio.id == f.id
    if f.order == 0 and a.mapcount:
        out.append("wp_fault:small:reuse" if reused else "wp_fault:small:copy")
        return
    if 0 < f.order < st.geom.pmd_order:
        out.append("wp_fault:large:mthp_order")
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


def _mthp_passed_over(st: MmState, vma: Vma, vpn: int, post: Any, out: list[str]) -> None:
    """An mTHP order allowed and fitting, but not the order the fault mapped: its range
    was not all none (no mTHP allocation fails in the model)."""
    orders = thp_vma_suitable_orders(vma, vpn, thp_vma_allowable_orders(st, vma))
    if orders and post.folio is not None and post.folio.order < orders[0]:
        out.append("fault:pte:mthp_range_not_none")


def _split_folio(op: spec.SplitFolio, result: Result, a: AccessPre, d: Delta, out: list[str]
                 ) -> None:
    if result == EBUSY:
        out.append("split_folio:pinned")
        return
    if result == EINVAL and a.at.folio is not None and a.at.folio.order > 0 and op.order:
        out.append("split_folio:order_refused")
    if result != 0:
        return
    if d["mthp.nr_anon"] > 0:
        out.append("split_folio:to_mthp_order")
    if d["pud.split"] and d["pmd.nr_anon"] > 0:
        out.append("split_folio:pud_to_pmd_order")
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


def _fork(st: MmState, result: Result, pre: Pre, data: tuple[Range, Range], d: Delta,
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


def _zap(mm: MmStruct, r: Range, d: Delta, out: list[str]) -> None:
    """A zap over what ``r`` met (munmap, mmap over a mapping, MADV_DONTNEED, exit)."""
    for _, f, whole in r.pud_leaves:
        if whole:
            out.append("zap:pud_leaf:whole")
            if folio_mapcount(f) > 0:  # after the zap: mapped elsewhere
                out.append("zap:pud_leaf:whole_shared")
        else:
            out.append("zap:pud_leaf:partial")
    for _, _, f, whole in r.pmd_leaves:
        if whole:
            out.append("zap:pmd_leaf:whole")
            if folio_mapcount(f) > 0:
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


def _mprotect(op: spec.Mprotect, data: RangePre, d: Delta, out: list[str]) -> None:
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


def _pageout(st: MmState, r: Range, d: Delta, out: list[str]) -> None:
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
    if d["mthp.swpout"]:
        out.append("pageout:mthp:swapped_whole")
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


def _whole_pmd(r: Range, f: Folio) -> bool:
    return any(x is f and whole for _, _, x, whole in r.pmd_leaves)


def _migrate(st: MmState, op: spec.Migrate, result: Result, pre: Pre, r: Range,
             d: Delta, out: list[str]) -> None:
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
    that hit each at least once), ``programs`` and ``ops`` run, ops not classified.  The
    catalogue counted is ``NAMES`` (the model-state one here; another catalogue subclasses,
    ``harness.conform.kfeatures.KTally``)."""

    NAMES: ClassVar[tuple[str, ...]] = NAMES

    hits: list[int] = field(default_factory=list)
    programs_hit: list[int] = field(default_factory=list)
    programs: int = 0
    ops: int = 0
    unclassified: int = 0

    def __post_init__(self) -> None:
        n = len(self.NAMES)
        self.hits = (self.hits + [0] * n)[:n]
        self.programs_hit = (self.programs_hit + [0] * n)[:n]

    def add_program(self, hits: list[int], ops: int = 0) -> None:
        self.programs += 1
        self.ops += ops
        for i, n in enumerate(hits):
            if n:
                self.hits[i] += n
                self.programs_hit[i] += 1

    def merge(self, other: Tally) -> None:
        for i in range(len(self.NAMES)):
            self.hits[i] += other.hits[i]
            self.programs_hit[i] += other.programs_hit[i]
        self.programs += other.programs
        self.ops += other.ops
        self.unclassified += other.unclassified

    @classmethod
    def total(cls, tallies: Iterable[Tally | None]) -> Self:
        """The sum of ``tallies`` (a None, a process that said nothing yet, adds nothing)."""
        t = cls()
        for other in tallies:
            if other is not None:
                t.merge(other)
        return t

    def to_json(self) -> dict[str, Any]:
        return {"hits": list(self.hits), "programs_hit": list(self.programs_hit),
                "programs": self.programs, "ops": self.ops,
                "unclassified": self.unclassified}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Self:
        t = cls()
        t.hits = [int(x) for x in raw["hits"]][: len(cls.NAMES)]
        t.programs_hit = [int(x) for x in raw["programs_hit"]][: len(cls.NAMES)]
        t.programs, t.ops = int(raw["programs"]), int(raw["ops"])
        t.unclassified = int(raw.get("unclassified", 0))
        return t

    def covered(self) -> int:
        return sum(1 for n in self.hits if n)

    def never_hit(self) -> list[str]:
        return [self.NAMES[i] for i, n in enumerate(self.hits) if not n]

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
