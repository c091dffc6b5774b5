"""Quality of kernel campaigns (issue 22): a bug planted in the reference model at PMD level
(``tests/planted_ref.py``: one line each, in COW reuse, splitting, reclaim and counting; by
monkeypatch, in this process only) must be found by a one-worker kernel search with a fixed
seed and a fixed number of programs as a disagreement no ``KNOWN`` explanation excuses,
shrunk on the kernel to a handful of ops, and exported to a C reproducer that builds with
``gcc -O2 -Wall`` without a warning and exits 1 on this kernel, naming the op.  Without the
bug the kernel and the reference agree on the shrunk program: the disagreement was the
bug's.

Each search is ``fuzz.kernel.search`` in this process, the worker a kernel campaign runs;
its seed was chosen as one that meets the bug within a few programs of 10 or 20 steps, so
the test's time on the live kernel stays short.  Root and PMD THP are needed (``slow``,
skipped elsewhere); gcc for the reproducer.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from planted_ref import PLANTED
from test_kernel_campaign import LIVE_PROBLEM

from fuzz.kernel import search
from harness.conform import campaign, live
from harness.conform.known import known_kind
from harness.conform.observe import GLOBAL_STATE
from harness.program import load_program_file

GCC = shutil.which("gcc")
MAX_OPS = 6  # "a handful"

# name -> (seed, programs, steps per program): the search meets the bug within that many
# programs
SEARCHES: dict[str, tuple[int, int, int]] = {
    "cow_large_reuse_refused": (12, 11, 20),
    "cow_small_reuse_always": (51, 9, 10),
    "cow_pmd_reuse_always": (38, 5, 20),
    "fork_leaves_parent_pmd_writable": (12, 6, 20),
    "split_pmd_counted_twice": (0, 8, 20),
    "split_pmd_not_counted": (0, 8, 20),
    "split_keeps_zero_subpages": (8, 7, 20),
    "shrinker_splits_nothing": (8, 7, 20),
    "partial_unmap_not_queued": (4, 7, 20),
    "pswpout_counted_once": (32, 7, 20),
    "pageout_ignores_sharing": (5, 10, 10),
    "pswpin_counted_twice": (32, 7, 20),
    "zap_pmd_keeps_rss": (0, 6, 10),
}


def test_every_planted_bug_has_a_search() -> None:
    assert set(SEARCHES) == set(PLANTED)
    assert len(PLANTED) >= 12
    assert {path for path, _ in PLANTED.values()} == {"COW reuse", "split", "reclaim",
                                                      "counting"}


@pytest.mark.slow
@pytest.mark.live
@pytest.mark.skipif(LIVE_PROBLEM is not None, reason=str(LIVE_PROBLEM))
@pytest.mark.skipif(GCC is None, reason="no gcc on this machine")
@pytest.mark.parametrize("name", sorted(SEARCHES))
def test_a_planted_bug_is_found_shrunk_and_reproduced(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed, programs, steps = SEARCHES[name]
    PLANTED[name][1](monkeypatch)
    with campaign.KernelMachine(say=lambda _: None) as machine:
        r = search(machine, seed, programs, steps=steps, findings_dir=str(tmp_path),
                   max_findings=1)
        assert r.findings, f"{name}: nothing in {r.programs} programs ({r.counts})"
        f = r.findings[0]
        assert f.kind == "disagreement", f.signature
        assert f.path is not None
        assert f.c_path is not None, f.c_problem
        program = load_program_file(f.path)
        assert len(program.ops) <= MAX_OPS, f.program
        # still the bug's, on the shrunk program: a confirmed disagreement no KNOWN entry
        # excuses, of the finding's signature
        v = machine.run(program)
        assert v.disagreement is not None, v.noise
        assert v.signature == f.signature
        assert known_kind(v.disagreement, program, v.facts) is None
        monkeypatch.undo()  # the real reference: the kernel agrees
        clean = machine.run(program)
        # a machine-wide gauge alone is other processes' doing, noise as in a campaign
        assert clean.disagreement is None or \
            clean.disagreement.observable in GLOBAL_STATE, (clean.signature, f.program)
    binary = tmp_path / "repro"
    built = subprocess.run([str(GCC), "-O2", "-Wall", "-o", str(binary), f.c_path],
                           capture_output=True, text=True, check=False)
    assert (built.returncode, built.stderr) == (0, ""), built.stderr
    with live.run_lock() as fd:  # the binary uses the lock it inherits
        out = subprocess.run([str(binary)], capture_output=True, text=True, check=False,
                             pass_fds=(fd,), timeout=600)
    assert out.returncode == 1, out.stdout + out.stderr
    op = program.meta["op_index"]
    assert re.search(rf"^not ok \d+ op {op}: .*: kernel ", out.stdout, re.M), out.stdout
