"""The fast implementation: what it may import, that it is the one running, and that it
agrees with the reference op for op (``--impl both``)."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fuzz.gen import ProgramGenerator, random_config
from harness.program import dump_program
from harness.runner import run_program
from pudthp_fast.model import FastModel
from pudthp_ref.model import RefModel
from pudthp_ref.spec import (
    Config,
    Fork,
    InvariantViolation,
    Mmap,
    ModelBug,
    Program,
    Read,
    Write,
)

ROOT = Path(__file__).resolve().parents[1]


def test_fast_runs_with_the_reference_logic_unimportable() -> None:
    # Block every pudthp_ref module but spec, then run a program on the fast side: it
    # works, so nothing of the reference's logic is behind it.
    code = (
        "import pkgutil, sys, pudthp_ref\n"
        "for m in pkgutil.iter_modules(pudthp_ref.__path__):\n"
        "    if m.name != 'spec':\n"
        "        sys.modules['pudthp_ref.' + m.name] = None\n"
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

    real = hm.folio_add_anon_rmap

    def forgetful(st, fid, first, n, mm, level, exclusive):  # type: ignore[no-untyped-def]
        real(st, fid, first, n, mm, level, exclusive)
        if level == "pte" and n == st.geom.pud_nr:
            st.f_ref[fid] -= 1

    monkeypatch.setattr(hm, "folio_add_anon_rmap", forgetful)
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


# --------------------------------------------------------------------------------------
# When the fast side checks its own invariants (harness/runner.py, harness/lockstep.py)
# --------------------------------------------------------------------------------------

CHECKED = (Mmap(0, 0, 64, "rw"), Write(0, 3, 1), Read(0, 3), Fork(0), Write(1, 3, 2))


def count_checks(monkeypatch: pytest.MonkeyPatch, cls: type, fail_after: int | None = None
                 ) -> list[int]:
    """Count ``cls.check_invariants`` calls by the number of ops the instance had applied
    when each ran; with ``fail_after``, raise once it has applied that many ops (a broken
    state only its own checker sees)."""
    calls: list[int] = []
    real_apply, real_check = cls.apply, cls.check_invariants

    def apply(self: Any, op: Any) -> Any:
        self._applied = getattr(self, "_applied", 0) + 1
        return real_apply(self, op)

    def check(self: Any) -> None:
        calls.append(getattr(self, "_applied", 0))
        if fail_after is not None and self._applied >= fail_after:
            raise InvariantViolation("planted", f"broken since op {fail_after - 1}")
        real_check(self)

    monkeypatch.setattr(cls, "apply", apply)
    monkeypatch.setattr(cls, "check_invariants", check)
    return calls


@pytest.mark.parametrize("impl", ["both", "fast"])
def test_the_fast_side_checks_at_the_end_by_default(monkeypatch: pytest.MonkeyPatch,
                                                    impl: str) -> None:
    fast = count_checks(monkeypatch, FastModel)
    ref = count_checks(monkeypatch, RefModel)
    report = run_program(Program(Config(), CHECKED), impl)
    assert report.finding is None
    assert ref == ([1, 2, 3, 4, 5] if impl == "both" else [])  # the reference every op
    assert fast == [5]  # the fast side once, after the last op
    fast.clear()
    ref.clear()
    assert run_program(Program(Config(), CHECKED), impl, check_mode="every-op").finding is None
    assert fast == [1, 2, 3, 4, 5]
    assert ref == ([1, 2, 3, 4, 5] if impl == "both" else [])


def _hidden_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant: a read of page 64 also clears AnonExclusive of the page of folio 2 (mapped
    writable at page 96), which nothing in that op's results or summary shows."""
    import pudthp_fast.model as fast_model

    real = fast_model.access

    def access(st: Any, mm: Any, vpn: int, value: int | None) -> Any:
        out = real(st, mm, vpn, value)
        if value is None and vpn == 64:
            st.p_exclusive[int(st.f_base[2])] = False
        return out

    monkeypatch.setattr(fast_model, "access", access)


# small geometry, THPs off: two order-0 folios from the two writes (folio 1 at vpn 64,
# folio 2 at vpn 96), each mapped by a writable PTE, so each page must stay AnonExclusive
HIDDEN = Program(
    Config(geometry=8, thp_enabled="never", pmd_enabled="never", pud_enabled="never"),
    (Mmap(0, 64, 64, "rw"), Write(0, 64, 1), Write(0, 96, 2), Read(0, 64), Read(0, 96)),
)


def test_the_check_at_the_end_finds_a_broken_state_and_its_op(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _hidden_write(monkeypatch)
    report = run_program(HIDDEN, "fast")
    assert report.finding is not None
    assert report.finding.kind == "invariant"
    # op 3, the read of page 64, is the first after which the state is broken
    assert report.finding.op_index == 3
    assert report.finding.signature == "invariant:read:anon_exclusive.writable"
    # Under both, AnonExclusive is in the snapshot: the final comparison sees it first and
    # locates it at the same op, with the fast checker's verdict there.
    report = run_program(HIDDEN, "both")
    assert report.finding is not None
    assert report.finding.op_index == 3
    assert report.finding.signature.startswith("divergence:read:snapshot.folios[].anon_excl")
    assert "own invariants fail here: InvariantViolation: anon_exclusive.writable" in (
        report.finding.detail)


def test_a_fast_crash_after_a_broken_state_is_reported_where_the_state_broke(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # --impl fast checks at the end, but a model bug before the end stops the run there: a
    # replay with checks after every op names the op that broke the state first, as the
    # reference's checks after every op do under both.
    _hidden_write(monkeypatch)
    real = FastModel.apply

    def crash_on_last(self: FastModel, op: Any) -> Any:
        if isinstance(op, Read) and op.addr == 96:
            raise ModelBug("planted.crash", "the last read")
        return real(self, op)

    monkeypatch.setattr(FastModel, "apply", crash_on_last)
    report = run_program(HIDDEN, "fast")
    assert report.finding is not None
    assert (report.finding.signature, report.finding.op_index) == (
        "invariant:read:anon_exclusive.writable", 3)
    # with checks after every op, the same
    finding = run_program(HIDDEN, "fast", check_mode="every-op").finding
    assert finding is not None
    assert (finding.signature, finding.op_index) == (report.finding.signature, 3)


def test_the_fast_checker_reads_its_own_bookkeeping() -> None:
    # What no snapshot shows: a table's entry row past the arrays is a malformed state.
    m = FastModel(Config())
    m.apply(Mmap(0, 0, 64, "rw"))
    m.apply(Write(0, 3, 1))
    m.check_invariants()
    m.st.t_row[m.st.mms[0].pud_table] = 10**6
    with pytest.raises(InvariantViolation) as exc:
        m.check_invariants()
    assert exc.value.invariant == "state.malformed"


@pytest.mark.parametrize("impl", ["both", "fast"])
def test_a_fast_violation_seen_at_the_end_is_located_to_its_first_op(
        monkeypatch: pytest.MonkeyPatch, impl: str) -> None:
    calls = count_checks(monkeypatch, FastModel, fail_after=3)  # broken from op 2 on
    end = run_program(Program(Config(), CHECKED), impl).finding
    # the check at the end after op 4, then the replay's checks after ops 0, 1, 2
    assert calls == [5, 1, 2, 3]
    every = run_program(Program(Config(), CHECKED), impl, check_mode="every-op").finding
    assert end is not None
    assert every is not None
    assert (end.kind, end.op_index, end.signature) == ("invariant", 2, "invariant:read:planted")
    assert (every.op_index, every.signature) == (end.op_index, end.signature)


def test_a_divergence_says_what_the_fast_checker_finds_there(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    real = FastModel.apply

    def wrong_read(self: FastModel, op: Any) -> Any:
        r = real(self, op)
        return r + 1 if isinstance(op, Read) else r

    monkeypatch.setattr(FastModel, "apply", wrong_read)
    finding = run_program(Program(Config(), CHECKED), "both").finding
    assert finding is not None
    assert (finding.signature, finding.op_index) == ("divergence:read:result", 2)
    assert "the fast side's own invariants hold here" in finding.detail


def test_pudthp_run_check_modes(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(dump_program(Program(Config(), CHECKED)))
    for mode in ("end", "every-op"):
        out = subprocess.run([sys.executable, "-m", "pudthp_cli", "run", str(path), "--impl",
                              "both", "--check", mode, "--quiet"],
                             capture_output=True, text=True, cwd=ROOT, check=False)
        assert out.returncode == 0, out.stderr
        assert out.stdout == "ok: 5 ops, no finding\n"
    out = subprocess.run([sys.executable, "-m", "pudthp_cli", "run", str(path), "--check", "some"],
                         capture_output=True, text=True, cwd=ROOT, check=False)
    assert out.returncode == 2
    assert out.stderr.startswith("pudthp: error: argument --check")


@pytest.mark.skipif(not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"),
                    reason="the heap tuning is glibc's mallopt")
@pytest.mark.parametrize(("env", "said"), [
    ({}, "True False 33554432 268435456"),
    ({"PUDTHP_MALLOC": "default"}, "False False None None"),
    ({"MALLOC_TRIM_THRESHOLD_": "1000"}, "True False 33554432 1000"),
])
def test_the_heap_is_tuned_once_per_process_and_for_its_children(env: dict[str, str],
                                                                  said: str) -> None:
    # tune_heap() sets this process's thresholds (True when glibc took them) and exports
    # them for the processes it starts, whose allocator reads them at start; a threshold
    # the user set wins, and PUDTHP_MALLOC=default leaves everything alone
    code = ("import os; from harness.heap import tune_heap; a, b = tune_heap(), tune_heap(); "
            "print(a, b, os.environ.get('MALLOC_MMAP_THRESHOLD_'), "
            "os.environ.get('MALLOC_TRIM_THRESHOLD_'))")
    clean = {k: v for k, v in os.environ.items()
             if k not in ("PUDTHP_MALLOC", "MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**clean, **env}, check=False, timeout=60, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == said


@pytest.mark.parametrize(("argv", "tuned"), [(["run", "P", "--impl", "fast"], True),
                                             (["run", "P", "--impl", "both"], True),
                                             (["run", "P"], False),
                                             (["coverage", "P"], False),
                                             (["coverage", "P", "--impl", "both"], True)])
def test_the_command_tunes_the_heap_where_it_runs_the_fast_side(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path, argv: list[str], tuned: bool) -> None:
    # the command's entry tunes the heap, never a model: constructing one leaves it alone
    import pudthp_cli.main as cli

    calls: list[int] = []

    def tune() -> bool:
        calls.append(1)
        return True

    monkeypatch.setattr(cli, "tune_heap", tune)
    path = tmp_path / "p.json"
    path.write_text(dump_program(Program(Config(), CHECKED)))
    assert cli.main([str(path) if a == "P" else a for a in argv] + (
        ["--quiet"] if argv[0] == "run" else [])) == 0
    assert calls == ([1] if tuned else [])
    FastModel(Config())
    assert calls == ([1] if tuned else [])


def test_the_run_option_names_the_fast_side_s_path_variants() -> None:
    # harness.runner validates meta.fast_paths without importing the fast side: the same
    # names, and a bad one is a usage error before anything runs
    from harness.runner import FAST_PATHS, UsageError
    from pudthp_fast import state

    assert tuple(state.FAST_PATHS) == FAST_PATHS
    with pytest.raises(UsageError, match=r"meta\.fast_paths"):
        run_program(Program(Config(), CHECKED, {"fast_paths": "gpu"}), "both")
