"""Invariants and the oracle hold after every op of seeded random programs (reference).

Programs come from ``fuzz.gen`` with a recorded seed each, so a failure names the seed
that reproduces it; the runner checks invariants after every op and reads against the
oracle, and a finding fails the test with the program printed as replayable JSON.
"""

from __future__ import annotations

import random

import pytest

from fuzz.gen import ProgramGenerator, random_config
from harness.program import dump_program
from harness.runner import run_program

SEEDS_PER_GEOMETRY = 150


@pytest.mark.parametrize("geometry", [4, 8])
@pytest.mark.parametrize("chunk", range(3))
def test_random_programs_keep_invariants(geometry: int, chunk: int) -> None:
    per_chunk = SEEDS_PER_GEOMETRY // 3
    for seed in range(chunk * per_chunk, (chunk + 1) * per_chunk):
        rng = random.Random(f"{geometry}:{seed}")
        cfg = random_config(rng, geometry)
        program = ProgramGenerator(cfg, rng).program(50)
        report = run_program(program, "ref")
        assert report.finding is None, (
            f"seed {geometry}:{seed}: {report.finding.signature}\n{report.finding.message}\n"
            + dump_program(program)
        )
        assert len(report.results) == len(program.ops)


@pytest.mark.parametrize("seed", range(40))
def test_list_head_deposit_is_caught(seed: int) -> None:
    """The rejected list_head design must end in a finding once two PUD THPs share a PUD
    table and one of them is split or zapped (docs/model.md 5.6: it is meant to fail)."""
    rng = random.Random(f"list_head:{seed}")
    cfg = random_config(rng, 8, "list_head")
    gen = ProgramGenerator(cfg, rng)
    program = gen.program(40)
    report = run_program(program, "ref")
    faults_pud = report.snapshot is not None and report.snapshot["stats"]["vmstat"][
        "thp_fault_alloc_pud"
    ]
    if report.finding is None:
        # No PUD THP was ever faulted in this program (config or ops); nothing to corrupt.
        assert not faults_pud
    else:
        assert report.finding.kind in ("invariant", "model_bug")
        assert "deposit" in report.finding.signature or "withdraw" in report.finding.signature
