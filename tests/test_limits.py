"""Resource limits are never findings (``harness.limits``).

A ``MemoryError`` anywhere in a run (an op half done, a checker, one side of the lockstep)
stops the run with ``LimitExceeded``: no ``model_bug:...:crash:MemoryError``, no
``invariant:...:state.malformed``, no divergence.  ``pudthp run`` says which limit at which
op, exit 2; in a campaign a program over its time cap or its memory limit is dropped and
counted, and a worker over its memory limit asks for a fresh process.  The real limits
(``--max-rss``, ``--max-time``) are checked on x86_64 programs that would take gigabytes
and minutes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import pudthp_fast.invariants
import pudthp_ref.invariants
import pudthp_ref.model
from fuzz.engine_hypothesis import WorkerSpec, run_worker
from harness.limits import LimitExceeded, memory_limit, time_limit
from harness.runner import Stepper, run_program
from pudthp_cli.main import main
from pudthp_ref.spec import Config, Mmap, Program, Read, Write

ROOT = Path(__file__).resolve().parents[1]
SMALL = Program(Config(), (Mmap(0, 0, 64, "rw"), Write(0, 0, 5), Write(0, 8, 6), Read(0, 0)))


def fail_at_op(monkeypatch: pytest.MonkeyPatch, index: int) -> None:
    """The reference's apply_op does op ``index`` half (the op runs, then a refcount is
    bumped behind the model's back, as an allocation failing midway would leave it) and
    raises MemoryError."""
    real = pudthp_ref.model.apply_op
    calls = {"n": 0}

    def apply_op(st: Any, op: Any) -> Any:
        i = calls["n"]
        calls["n"] += 1
        result = real(st, op)
        if i == index:
            for folio in st.folios.values():
                folio.refcount += 1
                break
            raise MemoryError
        return result

    monkeypatch.setattr(pudthp_ref.model, "apply_op", apply_op)


@pytest.mark.parametrize("impl", ["ref", "both"])
def test_memory_error_in_an_op_is_a_limit_not_a_finding(monkeypatch: pytest.MonkeyPatch,
                                                         impl: str) -> None:
    # With both, the fast side does the op whole: a divergence unless the lockstep lets
    # the MemoryError through at once.
    fail_at_op(monkeypatch, 1)
    with pytest.raises(LimitExceeded) as info:
        run_program(SMALL, impl)
    assert info.value.kind == "memory"
    assert "not a finding" in str(info.value)


@pytest.mark.parametrize("module", [pudthp_ref.invariants, pudthp_fast.invariants])
def test_memory_error_in_a_checker_is_not_a_malformed_state(
        monkeypatch: pytest.MonkeyPatch, module: Any) -> None:
    def check(st: Any) -> None:
        raise MemoryError

    monkeypatch.setattr(module, "_check", check)
    with pytest.raises(LimitExceeded):
        run_program(SMALL, "both")


def test_run_says_which_limit_at_which_op(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    fail_at_op(monkeypatch, 2)
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": "pudthp-program/1", "config": {}, "ops": [
        {"op": "mmap", "mm": 0, "start": 0, "npages": 64, "prot": "rw"},
        {"op": "write", "mm": 0, "addr": 0, "value": 5},
        {"op": "write", "mm": 0, "addr": 8, "value": 6}]}))
    code = main(["run", str(path)])
    out, err = capsys.readouterr()
    assert code == 2
    assert "FINDING" not in out
    assert len(err.splitlines()) == 1, err
    assert err.startswith(f"pudthp: error: {path}: ")
    assert "memory" in err
    assert "not a finding" in err
    assert "op 2 (write mm=0 addr=8 value=6)" in err


def test_the_time_limit_interrupts_a_long_op() -> None:
    def spin() -> None:
        while True:
            sum(range(1000))

    start = time.monotonic()
    with pytest.raises(LimitExceeded) as info, time_limit(0.2, "the test"):
        spin()
    assert info.value.kind == "time"
    assert time.monotonic() - start < 2


def test_the_memory_watchdog_stops_a_growing_process() -> None:
    # 8 MiB every 10 ms: the watchdog (every 50 ms) sees the resident set pass the limit
    # long before the RLIMIT_DATA backstop (the limit again, on top of what is there now).
    hog: list[bytes] = []

    def grow() -> None:
        for _ in range(512):  # up to 4 GiB, each page touched
            hog.append(b"x" * (8 << 20))  # written: resident
            time.sleep(0.01)

    with pytest.raises(LimitExceeded) as info, memory_limit(64 + _rss_now()):
        grow()
    grown = 8 * len(hog)
    hog.clear()
    assert info.value.kind == "memory"
    assert "resident set over" in str(info.value)
    assert 64 <= grown < 256  # stopped soon after it passed its 64 MiB allowance


def test_an_allocation_far_over_the_limit_fails_at_once() -> None:
    # One allocation larger than the limit: the backstop refuses it before it is made.
    with pytest.raises(MemoryError), memory_limit(64 + _rss_now()):
        bytearray(4 << 30)


def _rss_now() -> int:
    from harness.limits import rss_mb

    return rss_mb()


# --------------------------------------------------------------------------------------
# Campaigns: a program over a limit is dropped and counted
# --------------------------------------------------------------------------------------


def test_a_program_over_its_time_cap_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    # Every op sleeps longer than the cap: each test case is rejected, none is a finding,
    # even on the list_head design (found within two ops otherwise).
    real = Stepper.step

    def slow(self: Stepper, op: Any) -> Any:
        time.sleep(0.05)
        return real(self, op)

    monkeypatch.setattr(Stepper, "step", slow)
    messages: list[tuple[Any, ...]] = []
    # Hypothesis would try a thousand rejected cases: the worker's one second ends it
    spec = WorkerSpec(0, 3, {"deposit": "list_head"}, time_limit=1.0, grace=0.0,
                      max_runs=1, max_examples=2, program_seconds=0.02)
    run_worker(spec, messages.append)
    kinds = [m[0] for m in messages]
    assert "finding" not in kinds
    assert "warning" not in kinds, messages
    limits = [m for m in messages if m[0] == "limit"]
    assert limits
    assert all(m[2] == "time" for m in limits)
    assert kinds[-1] == "done"


def test_a_worker_over_its_memory_limit_asks_for_a_fresh_process(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def step(self: Stepper, op: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(Stepper, "step", step)
    messages: list[tuple[Any, ...]] = []
    spec = WorkerSpec(0, 3, {}, time_limit=None, max_runs=5, max_examples=5)
    run_worker(spec, messages.append)
    kinds = [m[0] for m in messages]
    assert "finding" not in kinds
    assert [m[2] for m in messages if m[0] == "limit"] == ["memory"]
    # it asks for a fresh process, then ends as every worker does: its features, done
    assert kinds[-3:] == ["restart", "coverage", "done"]


# --------------------------------------------------------------------------------------
# The real limits, in real processes (x86_64 programs)
# --------------------------------------------------------------------------------------


def x86_program(tmp_path: Path, name: str, ops: list[dict[str, Any]]) -> str:
    path = tmp_path / name
    path.write_text(json.dumps({"format": "pudthp-program/1",
                                "config": {"geometry": "x86_64"}, "ops": ops}))
    return str(path)


def run_stopped(path: str, *limit: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """``pudthp run PATH --quiet`` with a limit, in a fresh interpreter, which the limit
    stops: exit 2 and one line.  Returns the process and the seconds it took."""
    start = time.monotonic()
    r = subprocess.run([sys.executable, "-m", "pudthp_cli", "run", path, "--quiet", *limit],
                       capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 2, r.stdout + r.stderr
    assert len(r.stderr.splitlines()) == 1, r.stderr
    return r, time.monotonic() - start


@pytest.mark.slow
def test_max_rss_stops_a_program_of_many_pud_faults(tmp_path: Path) -> None:
    # 512 PUD faults at x86_64: 512 folios of 262,144 pages, gigabytes in the reference.
    pud = 512 * 512
    ops = [{"op": "mmap", "mm": 0, "start": 0, "npages": 512 * pud, "prot": "rw"}]
    ops += [{"op": "write", "mm": 0, "addr": i * pud, "value": 1} for i in range(512)]
    r, seconds = run_stopped(x86_program(tmp_path, "faults.json", ops), "--max-rss", "300")
    assert "memory limit reached" in r.stderr
    assert "not a finding" in r.stderr
    assert "FINDING" not in r.stdout
    assert seconds < 60


@pytest.mark.slow
def test_max_time_stops_a_program_of_many_forks(tmp_path: Path) -> None:
    ops = [{"op": "mmap", "mm": 0, "start": 0, "npages": 512 * 512, "prot": "rw"},
           {"op": "write", "mm": 0, "addr": 0, "value": 1}]
    ops += [{"op": "fork", "mm": 0}] * 300
    r, seconds = run_stopped(x86_program(tmp_path, "forks.json", ops), "--max-time", "1")
    assert "time limit reached" in r.stderr
    assert seconds < 30


@pytest.mark.parametrize("kind", ["oom", "timeout"])
def test_a_libfuzzer_timeout_or_out_of_memory_is_a_limit_not_a_finding(
        tmp_path: Path, kind: str) -> None:
    # What libFuzzer writes when -rss_limit_mb or -timeout ends a worker: counted, said,
    # never archived (the finding archive stays empty), and the input is not kept.
    import io

    from fuzz.encoding import encode
    from fuzz.engine_atheris import AtherisCampaign, AtherisEngine
    from fuzz.supervisor import Supervisor

    out, err = io.StringIO(), io.StringIO()
    c = AtherisCampaign(1.0, 1, {}, str(tmp_path / "findings"), str(tmp_path / "corpus"),
                        err=err, out=out, max_rss=100, program_seconds=5)
    (tmp_path / "findings").mkdir()
    (tmp_path / "corpus").mkdir()
    engine = AtherisEngine(c)
    sup = Supervisor(engine, c)
    engine.open(sup)
    assert engine.run_dir is not None
    assert engine.judge is not None
    artifact = Path(engine.run_dir) / f"w0-s9-{kind}-0123abcd"
    artifact.write_bytes(encode(SMALL))
    assert engine.judge.artifact(str(artifact)) == kind
    assert not artifact.exists()
    assert sup.archived == []
    assert len(sup.limits) == 1
    assert sup.limits[0].kind == ("memory" if kind == "oom" else "time")
    text = sup.limits[0].text
    assert "a program of 4 ops" in text
    assert "not a finding" in text
    assert ("memory cap (100 MiB)" if kind == "oom" else "time cap (5 s)") in text
    engine.close()
    assert list((tmp_path / "findings").iterdir()) == []


def test_a_program_is_cut_to_max_ops() -> None:
    from fuzz.encoding import encode
    from fuzz.mutator import Hunt

    data = encode(SMALL)
    assert len(Hunt({}).program(data).ops) == 4
    assert Hunt({}, max_ops=2).program(data).ops == SMALL.ops[:2]


def test_a_limit_outside_a_step_waits_for_the_next_step() -> None:
    # In a campaign worker the signal may come while Hypothesis itself runs: it is held,
    # and raised as the next step opens the gate.
    from harness.limits import Gate, ProgramTimer

    gate = Gate()
    timer = ProgramTimer(0.01, gate=gate)
    try:
        timer.start()
        time.sleep(0.1)  # the signal comes, and comes again: held, not raised here
        assert gate.pending is not None
        assert gate.pending.kind == "time"
        timer.stop()
        with pytest.raises(LimitExceeded, match="time limit"), gate.open():
            pass
        assert gate.pending is None
        with gate.open():  # nothing held any more
            pass
    finally:
        timer.close()
