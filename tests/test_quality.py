"""Quality tests of the Hypothesis engine (Hypothesis' own ``quality/`` pattern): a known bug
must be found and shrunk to a handful of ops; the correct designs must come out clean.

The planted bugs live only here: each test monkeypatches functions of the ``pudthp_fast``
modules (every module that imported the function by name), never their sources.  They run
with ``impl="both"`` and ``check=False``: no ``check_invariants()`` on either side, so what
finds each bug is the differential comparison (results and summaries after every op, the
full snapshots at the end of a program), not the fast side's own invariants.

Each search is one worker in this process (``fuzz_inline``, so the monkeypatches apply) with
a fixed seed; the time limits are a safety net, the searches take seconds.  The bugs planted
in the fast side's numpy variants (e) are hunted as a default campaign hunts (invariants on,
every config key drawn) over a fixed number of programs, with no time limit at all.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import pudthp_fast.folio as fast_folio
import pudthp_fast.huge_memory as fast_hm
import pudthp_fast.huge_split as fast_split
import pudthp_fast.memory as fast_memory
import pudthp_fast.rmap as fast_rmap
import pudthp_fast.swapfile as fast_swap
import pudthp_fast.vmscan as fast_vmscan
from fuzz.engine_hypothesis import (
    SHRINK_SECONDS,
    STEPS_PER_PROGRAM,
    WorkerSpec,
    finding_program,
    fuzz_inline,
)
from harness.runner import run_program
from pudthp_fast.state import LEAF, NONE, TABLE, W, set_entries
from pudthp_ref.spec import LEVEL_PMD, LEVEL_PTE

LIMIT = 300.0  # seconds; a search that needs longer has failed (alone the slowest takes
# under a minute, but under the whole suite on 2 cores one took 101 s)


def hunt(overrides: dict[str, Any], *, check: bool, seed: int = 0,
         time_limit: float = LIMIT, steps: int = STEPS_PER_PROGRAM,
         shrink_seconds: float = SHRINK_SECONDS) -> dict[str, Any]:
    """The first finding of a one-worker search, shrunk; fails the test if none."""
    spec = WorkerSpec(0, seed, overrides, "both", check, time_limit=time_limit, grace=30.0,
                      max_findings=1, step_count=steps, shrink_seconds=shrink_seconds)
    found = fuzz_inline(spec)
    assert found, f"nothing found in {time_limit:g} s"
    return found[0]


def plant(monkeypatch: pytest.MonkeyPatch, real: Callable[..., Any],
          fake: Callable[..., Any]) -> None:
    """Replace ``real`` by ``fake`` in every pudthp_fast module that holds it (all of them
    imported first: a module imported later would bind the fake and keep it)."""
    importlib.import_module("pudthp_fast.model")
    hits = 0
    for name, module in list(sys.modules.items()):
        if name.startswith("pudthp_fast") and getattr(module, real.__name__, None) is real:
            monkeypatch.setattr(module, real.__name__, fake)
            hits += 1
    assert hits, real.__name__


def assert_divergence(payload: dict[str, Any], max_ops: int) -> None:
    assert payload["kind"] == "divergence", payload["signature"]
    program = finding_program(payload)
    assert len(program.ops) <= max_ops, payload["program"]
    report = run_program(program, "both", check=False)
    assert report.finding is not None
    assert report.finding.signature == payload["signature"]


# --------------------------------------------------------------------------------------
# (a) the rejected list_head deposit design
# --------------------------------------------------------------------------------------


def test_list_head_corruption_is_found_and_shrunk() -> None:
    payload = hunt({"deposit": "list_head"}, check=True)
    assert payload["kind"] in ("invariant", "model_bug", "divergence"), payload["signature"]
    program = finding_program(payload)
    assert program.config.deposit == "list_head"
    assert len(program.ops) <= 4, payload["program"]


# --------------------------------------------------------------------------------------
# (b) planted bugs in the fast implementation, found as divergences
# --------------------------------------------------------------------------------------


def test_planted_uncounted_pud_split(monkeypatch: pytest.MonkeyPatch) -> None:
    # __split_huge_pud_locked forgets count_vm_event(THP_SPLIT_PUD)
    real = fast_hm.__split_huge_pud_locked

    def forgetful(st: Any, mm: Any, pud: int, pi: int) -> None:
        real(st, mm, pud, pi)
        st.stats["vmstat"]["thp_split_pud"] -= 1

    plant(monkeypatch, real, forgetful)
    payload = hunt({}, check=False)
    assert_divergence(payload, 6)
    assert "thp_split_pud" in payload["signature"]


def test_planted_deposit_not_withdrawn_on_zap(monkeypatch: pytest.MonkeyPatch) -> None:
    # zap_huge_pmd leaves the deposited PTE table behind (no pgtable_trans_huge_withdraw,
    # no pte_free): the kernel would leak it
    real = fast_hm.zap_huge_pmd

    def leaky(st: Any, mm: Any, pmd: int, mi: int) -> None:
        kind = int(st.e_kind[st.row(pmd), mi])
        fid = int(st.e_id[st.row(pmd), mi])
        fast_hm.set_entry(st, pmd, mi, NONE)
        if kind == LEAF:
            fast_rmap.folio_remove_rmap(st, fid, 0, int(st.f_nr[fid]), mm, LEVEL_PMD)
            mm.rss_anon -= int(st.f_nr[fid])
            fast_folio.folio_put(st, fid)

    plant(monkeypatch, real, leaky)
    assert_divergence(hunt({}, check=False), 6)


def test_planted_anon_exclusive_kept_on_fork(monkeypatch: pytest.MonkeyPatch) -> None:
    # folio_try_dup_anon_rmap leaves PageAnonExclusive set on the pages it shares
    real = fast_rmap.folio_try_dup_anon_rmap

    def sticky(st: Any, fid: int, first: int, n: int, dst: Any, src: Any, level: str
               ) -> bool:
        b = int(st.f_base[fid])
        lo, hi = (b + first, b + first + n) if level == LEVEL_PTE else (b, b + 1)
        before = np.array(st.p_exclusive[lo:hi])
        ok = bool(real(st, fid, first, n, dst, src, level))
        if ok:
            st.p_exclusive[lo:hi] |= before
        return ok

    plant(monkeypatch, real, sticky)
    assert_divergence(hunt({}, check=False), 6)


def test_planted_split_without_folio_ref_add(monkeypatch: pytest.MonkeyPatch) -> None:
    # __split_huge_pud_locked / __split_huge_pmd_locked forget folio_ref_add(folio, nr - 1)
    real_pud, real_pmd = fast_hm.__split_huge_pud_locked, fast_hm.__split_huge_pmd_locked

    def unref(real: Callable[..., None]) -> Callable[..., None]:
        def split(st: Any, mm: Any, table: int, i: int) -> None:
            leaf = int(st.e_kind[st.row(table), i]) == LEAF
            fid = int(st.e_id[st.row(table), i])
            real(st, mm, table, i)
            if leaf:
                st.f_ref[fid] -= int(st.f_nr[fid]) - 1
        return split

    plant(monkeypatch, real_pud, unref(real_pud))
    plant(monkeypatch, real_pmd, unref(real_pmd))
    payload = hunt({}, check=False)
    assert_divergence(payload, 6)


# --------------------------------------------------------------------------------------
# (c) planted bugs in paths the generator reaches on purpose (harness/coverage.py features
#     migrate:pmd_leaf:moved, pageout:pmd_leaf:swapped_whole, wp_fault:large:mapcount=2,
#     fork:copy_pte_range:mid_pud_vma with zap:whole_pmd_range:child_pte_table, and
#     fault:swapin:slot_shared); PMD-level paths hunted with PUD THPs off, PTE-level ones
#     with THPs off, as the generator draws a third and a sixth of its programs anyway
# --------------------------------------------------------------------------------------

PMD_ONLY = {"pud_enabled": "never"}
PTE_ONLY = {"thp_enabled": "never", "pud_enabled": "never"}
# Programs of 50 steps: each of these paths needs a handful of rules in a row, and shorter
# programs come round faster (these searches take seconds to tens of seconds); Hypothesis
# gets a few seconds to shrink, delta debugging does the rest.
QUICK_SHRINK = 3.0


def test_planted_migrate_pmd_leaf_extra_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    # remove_migration_pmd takes two references on the new folio instead of one
    real = fast_split.remove_migration_entry

    def leaky(st: Any, m: Any, fid: int) -> None:
        real(st, m, fid)
        if m.level == LEVEL_PMD:
            st.f_ref[fid] += 1

    plant(monkeypatch, real, leaky)
    payload = hunt(PMD_ONLY, check=False, steps=50, shrink_seconds=QUICK_SHRINK)
    assert_divergence(payload, 6)
    assert program_has(payload, "migrate")


def test_planted_pmd_thp_swapout_uncounted(monkeypatch: pytest.MonkeyPatch) -> None:
    # shrink_folio_list forgets count_vm_event(THP_SWPOUT) for a THP swapped out whole
    real = fast_vmscan.shrink_folio

    def forgetful(st: Any, fid: int) -> list[int]:
        vm = st.stats["vmstat"]
        before = vm["thp_swpout"]
        tails: list[int] = real(st, fid)
        if vm["thp_swpout"] > before:
            vm["thp_swpout"] = before
        return tails

    plant(monkeypatch, real, forgetful)
    payload = hunt(PMD_ONLY, check=False, steps=50, shrink_seconds=QUICK_SHRINK)
    assert_divergence(payload, 6)
    assert "thp_swpout" in payload["signature"]


def test_planted_no_reuse_of_a_large_folio_mapped_twice(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    # __wp_can_reuse_large_anon_folio refuses a folio mapped twice (mapcount <= 2, not 1)
    real = fast_memory.wp_can_reuse_anon_folio

    def picky(st: Any, fid: int) -> bool:
        if st.f_order[fid] > 0 and int(st.f_large[fid]) + 1 == 2:
            return False
        return bool(real(st, fid))

    plant(monkeypatch, real, picky)
    payload = hunt(PMD_ONLY, check=False, steps=50, shrink_seconds=QUICK_SHRINK)
    assert_divergence(payload, 8)
    assert program_has(payload, "fork")


def test_planted_child_pte_table_address_of_a_mid_pud_vma(monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    # copy_pte_range gives the child's new PTE tables addresses counted from the VMA's start
    # instead of its PUD's: wrong only for a VMA starting inside a PUD range, and seen only
    # when the child frees such a table after zapping its whole PMD range
    real = fast_memory._copy_pte_tables

    def misplaced(st: Any, dst: Any, spmd: int, dpmd: int, addr: int, nxt: int) -> bool:
        before = st.e_kind[st.row(dpmd)] == TABLE
        done = bool(real(st, dst, spmd, dpmd, addr, nxt))
        new = np.flatnonzero((st.e_kind[st.row(dpmd)] == TABLE) & ~before)
        st.t_addr[st.e_id[st.row(dpmd), new].astype(np.int64)] += addr % st.geom.pud_nr
        return done

    plant(monkeypatch, real, misplaced)
    payload = hunt(PTE_ONLY, check=False, steps=50, shrink_seconds=QUICK_SHRINK)
    assert_divergence(payload, 8)
    assert program_has(payload, "fork")


def test_planted_shared_swap_slot_freed_early(monkeypatch: pytest.MonkeyPatch) -> None:
    # free_swap_and_cache releases a slot when its count drops to one, not zero: a swap-in of a slot
    # that a forked mm also names frees it under the other
    real = fast_swap.free_swap_and_cache

    def early(st: Any, slot: int) -> None:
        real(st, slot)
        if st.s_count[slot] == 1:
            st.s_used -= 1
            st.s_zero[slot] = False

    plant(monkeypatch, real, early)
    payload = hunt(PTE_ONLY, check=False, steps=50, shrink_seconds=QUICK_SHRINK)
    assert_divergence(payload, 8)
    assert program_has(payload, "fork")


def program_has(payload: dict[str, Any], kind: str) -> bool:
    return kind in {op.KIND for op in finding_program(payload).ops}


# --------------------------------------------------------------------------------------
# (d) the correct designs: a bounded search finds nothing
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("deposit", ["lru_next", "llist"])
def test_correct_designs_find_nothing(deposit: str) -> None:
    spec = WorkerSpec(0, 5, {"deposit": deposit}, "both", True, time_limit=None, max_runs=1,
                      max_examples=60, step_count=50)
    assert fuzz_inline(spec) == []


# --------------------------------------------------------------------------------------
# (e) planted bugs in the numpy variants of the fast side's hot paths, which a program runs
#     at small geometry only with meta.fast_paths=numpy (pudthp_fast.state.Paths): a
#     default campaign draws that for some programs, so one finds each, and the finding
#     records it to replay on
# --------------------------------------------------------------------------------------

VECTOR_PROGRAMS = 20  # a fixed number of programs of one worker at the default settings


def hunt_vector(monkeypatch: pytest.MonkeyPatch, name: str, make_fake: Callable[..., Any]
                ) -> dict[str, Any]:
    real = getattr(fast_memory, name)
    plant(monkeypatch, real, make_fake(real))
    spec = WorkerSpec(0, 0, {}, "both", True, time_limit=None, max_runs=1,
                      max_examples=VECTOR_PROGRAMS, max_findings=1,
                      shrink_seconds=QUICK_SHRINK)
    found = fuzz_inline(spec)
    assert found, f"nothing found in {VECTOR_PROGRAMS} programs"
    payload = found[0]
    assert payload["kind"] == "divergence", payload["signature"]
    program = finding_program(payload)
    assert program.meta["fast_paths"] == "numpy"  # the only way to reach it at P <= 8
    report = run_program(program, "both")
    assert report.finding is not None
    assert report.finding.signature == payload["signature"]
    return payload


def test_planted_fork_copy_leaves_the_parent_writable(monkeypatch: pytest.MonkeyPatch
                                                      ) -> None:
    # copy_pte_range over arrays forgets to write-protect the parent's PTEs
    def fake(real: Callable[..., None]) -> Callable[..., None]:
        def keeps_parent_writable(st: Any, dst: Any, segs: Any) -> None:
            before = {s_: st.e_bits[st.row(s_)].copy() for _, s_, _, _ in segs if st.row(s_)}
            real(st, dst, segs)
            for s_, bits in before.items():
                st.e_bits[st.row(s_)] |= bits & W
        return keeps_parent_writable

    assert program_has(hunt_vector(monkeypatch, "_copy_pte_range_arrays", fake), "fork")


def test_planted_zap_keeps_the_rss(monkeypatch: pytest.MonkeyPatch) -> None:
    # zap_pte_range over arrays forgets MM_ANONPAGES for the present PTEs it clears
    def fake(real: Callable[..., None]) -> Callable[..., None]:
        def keeps_rss(st: Any, mm: Any, segs: Any) -> None:
            before = mm.rss_anon
            real(st, mm, segs)
            mm.rss_anon = before
        return keeps_rss

    hunt_vector(monkeypatch, "_zap_pte_range_arrays", fake)


def test_planted_table_freeing_keeps_a_table(monkeypatch: pytest.MonkeyPatch) -> None:
    # free_pgtables over arrays misses the last PTE table no VMA covers (it leaks)
    def fake(real: Callable[..., Any]) -> Callable[..., Any]:
        def keeps_last(st: Any, mm: Any, r: int, m0: int, m1: int, base: int) -> Any:
            return real(st, mm, r, m0, m1, base)[:-1]
        return keeps_last

    hunt_vector(monkeypatch, "_uncovered_arrays", fake)


def test_planted_pmd_entry_copy_out_of_order(monkeypatch: pytest.MonkeyPatch) -> None:
    # copy_pmd_range over arrays allocates the child's missing PTE tables, but installs
    # them in reverse entry order (pte_alloc() goes entry by entry)
    def fake(real: Callable[..., list[int]]) -> Callable[..., list[int]]:
        def reversed_ids(st: Any, dst: Any, dpmd: int, idx: list[int], first: int
                         ) -> list[int]:
            r = st.row(dpmd)
            was_none = [mi for mi in idx if st.e_kind[r, mi] == NONE]
            out = real(st, dst, dpmd, idx, first)
            if len(was_none) > 1:
                r = st.row(dpmd)
                ids = st.e_id[r, was_none][::-1].copy()
                set_entries(st, dpmd, np.array(was_none), TABLE, ids)
                st.t_addr[ids] = first + np.array(was_none) * st.geom.pmd_nr
                out = [int(st.e_id[r, mi]) for mi in idx]
            return out
        return reversed_ids

    assert program_has(hunt_vector(monkeypatch, "_child_pte_tables_arrays", fake), "fork")
