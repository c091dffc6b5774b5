"""The fast implementation: what it may import, that it is the one running, and that it
agrees with the reference op for op (``--impl both``)."""

from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fuzz.gen import ProgramGenerator, random_config
from harness.program import dump_program
from harness.runner import run_program
from pudthp_fast.model import FastModel
from pudthp_ref.spec import Config, Mmap, Program, Write

ROOT = Path(__file__).resolve().parents[1]


def test_fast_runs_with_the_reference_logic_unimportable() -> None:
    # Block every pudthp_ref module but spec, then run a program on the fast side: it
    # works, so nothing of the reference's logic is behind it.
    code = (
        "import sys\n"
        "for m in ('model','memory','huge_memory','rmap','pgtable','mmap','invariants',\n"
        "          'snapshot','folio','vmscan','migrate','huge_split','gup','mprotect'):\n"
        "    sys.modules['pudthp_ref.' + m] = None\n"
        "from pudthp_ref.spec import Config, Mmap, Write, Read\n"
        "from pudthp_fast.model import FastModel\n"
        "m = FastModel(Config(geometry=8))\n"
        "r = [m.apply(Mmap(0, 64, 64, 'rw')), m.apply(Write(0, 70, 5)), m.apply(Read(0, 70))]\n"
        "m.check_invariants()\n"
        "print(r, m.snapshot()['stats']['vmstat']['thp_fault_alloc_pud'])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, check=True)
    # mmap 0, PUD fault on the write (thp_fault_alloc_pud 1), the read returns 5
    assert out.stdout.strip() == "[0, 0, 5] 1"


def test_fast_state_is_struct_of_arrays() -> None:
    m = FastModel(Config(geometry=8))
    m.apply(Mmap(0, 64, 64, "rw"))
    m.apply(Write(0, 64, 1))
    st = m.st
    for name in ("e_kind", "e_id", "e_page", "e_bits", "t_w8", "t_w16", "f_ref", "f_large",
                 "p_mapcount", "p_exclusive", "p_data"):
        assert isinstance(getattr(st, name), np.ndarray), name
    # the PUD folio's 64 pages sit in the page pool, not in per-folio Python lists
    assert st.p_mapcount[: 64].tolist() == [-1] * 64


def lockstep(geometry: int, seed: int, n_ops: int) -> None:
    rng = random.Random(f"both:{geometry}:{seed}")
    cfg = random_config(rng, geometry)
    program = ProgramGenerator(cfg, rng).program(n_ops)
    report = run_program(program, "both")
    assert report.finding is None, (
        f"seed both:{geometry}:{seed}: {report.finding.signature}\n{report.finding.message}\n"
        f"{report.finding.detail}\n{dump_program(program)}"
    )


@pytest.mark.parametrize("geometry", [4, 8])
@pytest.mark.parametrize("chunk", range(4))
def test_random_programs_agree(geometry: int, chunk: int) -> None:
    for seed in range(chunk * 40, (chunk + 1) * 40):
        lockstep(geometry, seed, 50)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(3))
def test_random_programs_agree_at_x86_64(seed: int) -> None:
    lockstep(512, seed, 12)


def test_a_planted_fast_bug_is_a_divergence(monkeypatch: pytest.MonkeyPatch) -> None:
    # Plant: the fast PUD split adds one reference too few (folio_ref_add(nr - 2), a
    # cousin of background B10).  Nothing crashes, and the per-op summaries (no refcounts)
    # agree: only the full snapshot at the end differs, and the replay finds the first op.
    import pudthp_fast.huge_memory as hm

    real = hm.folio_add_rmap

    def forgetful(st, fid, first, n, mm, level, exclusive=False):  # type: ignore[no-untyped-def]
        real(st, fid, first, n, mm, level, exclusive)
        if level == "pte" and n == st.geom.pud_nr:
            st.f_ref[fid] -= 1

    monkeypatch.setattr(hm, "folio_add_rmap", forgetful)
    from pudthp_ref.spec import Munmap

    program = Program(Config(geometry=4), (Mmap(0, 16, 16, "rw"), Write(0, 16, 3),
                                           Munmap(0, 17, 1)))
    report = run_program(program, "both", check=False)
    # op 2 splits the PUD (ref: 1 + 15 = 16 references, fast 15) and unmaps one page
    # (ref 15, fast 14)
    assert report.finding is not None
    assert report.finding.kind == "divergence"
    assert report.finding.op_index == 2
    assert report.finding.signature == "divergence:munmap:snapshot.folios[].refcount"
    assert "ref 15 != fast 14" in report.finding.message


def test_divergence_tells_equal_values_of_different_types_apart() -> None:
    # The summary comparison is strict: True == 1 in Python, but a fast side that reports
    # a flag where the reference reports a count is a divergence; equal data is none.
    from harness.lockstep import divergence

    assert divergence({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2}]}, "summary") is None
    d = divergence({"a": [1, {"b": 1}]}, {"a": [1, {"b": True}]}, "summary")
    assert d is not None
    assert d.field == "summary.a[].b"
    assert (d.ref, d.fast) == (1, True)
    d = divergence({"x": 1, "y": 2}, {"y": 2, "x": 1}, "summary")  # key order alone: equal
    assert d is None
