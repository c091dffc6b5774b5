"""The known-bad corpus: the rejected list_head deposit design keeps reporting its finding,
and the same programs with the RFC's lru_next stack and the reviewers' llist pass."""

from __future__ import annotations

import glob
import os

import pytest

from harness.program import load_program_file
from harness.runner import run_program

HERE = os.path.dirname(__file__)
KNOWN_BAD = os.path.join(HERE, "..", "corpus", "known_bad")


def programs(pattern: str) -> list[str]:
    return sorted(glob.glob(os.path.join(KNOWN_BAD, pattern)))


# For each list_head program: the op that first withdraws PTE tables from a PMD table the
# PUD stack has handed back, i.e. the first PUD split or PUD zap.
#  three_puds: op 4 munmaps [128, 192), the whole middle PUD -> zap_huge_pud
#  fork:       op 4 is the child's write to a read-only shared PUD leaf -> COW split
#  canary:     op 3 munmaps one page of the second PUD -> __split_huge_pud_locked
FIRST_WITHDRAW = {
    "list_head_three_puds.json": 4,
    "list_head_fork.json": 4,
    "list_head_two_puds.json": 3,
}


@pytest.mark.parametrize("path", programs("list_head_*.json"), ids=os.path.basename)
def test_list_head_is_caught_by_the_invariants(impl: str, path: str) -> None:
    # Fault order (docs/model.md 5.3): the PMD table is pushed on the PUD stack first. list_head's
    # push is INIT_LIST_HEAD(&pmd->lru), which sets w16 (= pmd_huge_pte) to the PMD table
    # itself, so the PTE deposits that follow link into a ring containing a PMD table.
    # check_invariants() sees it right after the first PUD fault, op 1 in every program.
    report = run_program(load_program_file(path), impl)
    assert report.finding is not None
    assert report.finding.kind == "invariant"
    assert report.finding.op_index == 1
    assert report.finding.signature.startswith("invariant:deposit.")


@pytest.mark.parametrize("path", programs("list_head_*.json"), ids=os.path.basename)
def test_list_head_crashes_where_the_kernel_would(impl: str, path: str) -> None:
    # With the checker off the model runs on like the kernel: popping a PMD table with
    # list_del() poisons its lru.prev, which is its pmd_huge_pte, and the first PTE-table
    # withdraw from it dereferences LIST_POISON2 (the crash patch 01's message describes).
    report = run_program(load_program_file(path), impl, check=False)
    assert report.finding is not None
    assert report.finding.kind == "model_bug"
    assert report.finding.signature.endswith(":withdraw.pmd.poison")
    assert report.finding.op_index == FIRST_WITHDRAW[os.path.basename(path)]


@pytest.mark.parametrize(
    "path",
    [*programs("lru_next_*.json"), *programs("llist_*.json")],
    ids=os.path.basename,
)
def test_correct_designs_pass(impl: str, path: str) -> None:
    report = run_program(load_program_file(path), impl)
    assert report.finding is None, report.finding


REGRESSIONS = os.path.join(HERE, "..", "corpus", "regressions")


@pytest.mark.parametrize("impl_name", ["ref", "fast", "both"])
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REGRESSIONS, "*.json"))),
                         ids=os.path.basename)
def test_archived_regressions_pass(impl_name: str, path: str) -> None:
    # Fixed bugs stay fixed: every archived regression runs clean on every implementation.
    report = run_program(load_program_file(path), impl_name)
    assert report.finding is None, report.finding
