"""The Hypothesis state machine as differential property tests, and ``pudthp fuzz`` end to
end.

The machine tests run ref and fast in lockstep (results and summaries compared after every
op, full snapshots at the end of each program) with invariants and the oracle, over configs
drawn from the correct designs; the settings come from the profile (tests/conftest.py).
They are split by geometry and deposit design so ``pytest -n auto`` spreads them.
"""

from __future__ import annotations

import gc
import importlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis.stateful import run_state_machine_as_test

from fuzz.archive import finding_path
from fuzz.engine_hypothesis import (
    WorkerSpec,
    examples_per_run,
    minimise,
    run_worker,
)
from fuzz.machine import (
    DivergenceFinding,
    FindingError,
    InvariantFinding,
    Observer,
    PudthpMachine,
    RuleChoice,
    finding_error,
    make_machine,
)
from harness.program import parse_program
from harness.runner import Stepper, run_program
from pudthp_cli.main import main
from pudthp_ref.spec import Config, ConfigError, Finding, Mmap, Program, Read, Write

ROOT = Path(__file__).resolve().parents[1]
PUDTHP = [sys.executable, "-m", "pudthp_cli"]

# --------------------------------------------------------------------------------------
# The machine as a test (the correct designs must pass)
# --------------------------------------------------------------------------------------

TestPudthpMachine = PudthpMachine.TestCase  # every key drawn


@pytest.mark.parametrize("deposit", ["lru_next", "llist"])
@pytest.mark.parametrize("geometry", ["tiny", "small"])
def test_machine_agrees(geometry: str, deposit: str) -> None:
    run_state_machine_as_test(make_machine({"geometry": geometry, "deposit": deposit}))


@pytest.mark.parametrize("pud_read_fault", ["alloc", "fallback"])
def test_machine_agrees_at_pmd_level(pud_read_fault: str) -> None:
    # PUD THPs off: the PMD-level paths (zero PMD, PMD splits) get the whole budget
    run_state_machine_as_test(make_machine({"pud_enabled": "never",
                                            "pud_read_fault": pud_read_fault}))


def test_each_step_draws_its_rule_once_among_the_enabled_and_valid(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Hypothesis' own rule choice samples every rule and retries on one its feature flags
    # disable or whose bundles or preconditions forbid it now: "Retried draw from
    # sampled_from" on nearly every test case.  RuleChoice draws once among the rules
    # enabled (swarm testing kept) and valid.
    from hypothesis.strategies._internal.strategies import SampledFromStrategy

    retried: list[str] = []
    real_filtered = SampledFromStrategy.do_filtered_draw

    def counting(self: Any, data: Any) -> Any:
        before = set(data.events)
        out = real_filtered(self, data)
        retried.extend(k for k in data.events if k not in before and k.startswith("Retried"))
        return out

    chosen: list[tuple[Any, list[Any], list[Any]]] = []
    real_draw = RuleChoice.do_draw

    def record(self: RuleChoice, data: Any) -> Any:
        valid = [r for r in self.rules if self.is_valid(r)]
        rule, args = real_draw(self, data)
        chosen.append((rule, list(self.enabled or []), valid))
        return rule, args

    monkeypatch.setattr(SampledFromStrategy, "do_filtered_draw", counting)
    monkeypatch.setattr(RuleChoice, "do_draw", record)
    run_state_machine_as_test(seed(3)(make_machine({"geometry": "tiny"})), settings=settings(
        max_examples=20, stateful_step_count=30, deadline=None, database=None,
        suppress_health_check=list(HealthCheck)))
    assert len(chosen) > 100
    assert retried == []
    for rule, enabled, valid in chosen:
        assert rule in valid
        if set(enabled) & set(valid):
            assert rule in enabled
    # swarm testing: some test cases ran with rules disabled
    assert any(len(enabled) < len(valid) for _, enabled, valid in chosen)


# --------------------------------------------------------------------------------------
# Failures: a distinct class per kind and signature, printed as a replayable program
# --------------------------------------------------------------------------------------

QUICK = settings(max_examples=200, stateful_step_count=20, deadline=None, database=None,
                 phases=(Phase.generate, Phase.shrink), report_multiple_bugs=False,
                 suppress_health_check=list(HealthCheck))


def test_a_failure_prints_as_program_json_that_replays() -> None:
    machine = make_machine({"deposit": "list_head"})
    with pytest.raises(FindingError) as info:
        run_state_machine_as_test(seed(0)(machine), settings=QUICK)
    err = info.value
    assert isinstance(err, InvariantFinding)
    text = str(err)
    assert text.startswith(err.finding.signature + " at op ")
    program_text = text[text.index("{\n"):]
    program = parse_program(json.loads(program_text), "<message>")
    assert program.config.deposit == "list_head"
    assert program == err.program
    report = run_program(program, "both")
    assert report.finding is not None
    assert report.finding.signature == err.finding.signature


def test_finding_classes_by_kind_and_signature() -> None:
    prog = Program(Config(), ())
    a = finding_error(Finding("divergence", 0, "divergence:read:result", "m"), prog)
    b = finding_error(Finding("divergence", 0, "divergence:read:result", "m"), prog)
    c = finding_error(Finding("divergence", 0, "divergence:write:result", "m"), prog)
    d = finding_error(Finding("invariant", 0, "invariant:read:x", "m"), prog)
    assert isinstance(a, DivergenceFinding)
    assert isinstance(d, InvariantFinding)
    assert type(a) is type(b)  # one bug for Hypothesis
    assert type(a) is not type(c)  # two bugs
    assert isinstance(a, AssertionError)


def test_make_machine_validates_the_config() -> None:
    with pytest.raises(ConfigError, match="deposit"):
        make_machine({"deposit": "linked"})
    with pytest.raises(ConfigError, match="nope"):
        make_machine({"nope": 1})


def test_stepper_is_run_program_one_op_at_a_time() -> None:
    cfg = Config(geometry=4)
    ops = (Mmap(0, 0, 32, "rw"), Write(0, 3, 9), Read(0, 3), Read(0, 40))
    stepper = Stepper(cfg, "both")
    results = [stepper.step(op) for op in ops]
    report = stepper.finish()
    assert results == [0, 0, 9, "SIGSEGV"]
    assert report.to_json() == run_program(Program(cfg, ops), "both").to_json()


def test_minimise_keeps_the_signature() -> None:
    program = Program(Config(geometry=8, deposit="list_head"),
                      (Mmap(0, 0, 256, "rw"), Read(0, 300), Write(0, 70, 1), Read(0, 70),
                       Write(0, 0, 2)))
    sig = run_program(program, "both").finding
    assert sig is not None
    smaller = minimise(program, sig.signature)
    assert len(smaller.ops) < len(program.ops)
    again = run_program(smaller, "both").finding
    assert again is not None
    assert again.signature == sig.signature


def test_a_stopped_worker_sends_what_it_has(monkeypatch: pytest.MonkeyPatch) -> None:
    # Ctrl-C while Hypothesis is shrinking: the smallest program seen so far is sent,
    # marked as not shrunk further.
    messages: list[tuple[object, ...]] = []
    recorded = {"n": 0}
    real_record = Observer.record

    def record(self: Observer, finding: Finding, program: Program) -> None:
        recorded["n"] += 1
        real_record(self, finding, program)

    monkeypatch.setattr(Observer, "record", record)
    spec = WorkerSpec(0, 3, {"deposit": "list_head"}, time_limit=None, max_runs=3)
    # the stop flag is polled every 64 steps: set once the first failure is recorded
    run_worker(spec, messages.append, stop_requested=lambda: recorded["n"] > 0)
    kinds = [m[0] for m in messages]
    assert kinds[-1] == "done"
    findings = [m[2] for m in messages if m[0] == "finding"]
    assert findings, kinds
    for payload in findings:
        assert isinstance(payload, dict)
        meta = json.loads(payload["program"])["meta"]
        assert meta["shrunk"] == "hypothesis (interrupted)"
        assert meta["replays"] is True


def seeded_run(seed_: int) -> tuple[Any, ...]:
    """What a short seeded run of the correct designs did: its step count and features."""
    messages: list[Any] = []
    spec = WorkerSpec(0, seed_, {}, "both", False, time_limit=None, max_runs=1,
                      max_examples=20, step_count=30)
    run_worker(spec, messages.append)
    done = [m for m in messages if m[0] == "done"][-1]
    coverage = [m for m in messages if m[0] == "coverage"][-1]
    return done[2], done[3], json.dumps(coverage[2], sort_keys=True)


def test_a_seed_names_its_programs_whatever_modules_are_loaded(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Hypothesis draws some values from the literal constants of local modules, re-read as
    # modules are imported: a module imported between two runs (or part-way through one)
    # must not change what a seed generates.
    before = seeded_run(11)
    (tmp_path / "pudthp_scratch_constants.py").write_text(
        '"""Constants Hypothesis would find."""\n'
        # within the machine's range of written values (0-1999), few of them in its sources
        + "VALUES = [" + ", ".join(str(1001 + 2 * i) for i in range(400)) + "]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "pudthp_scratch_constants", raising=False)
    importlib.import_module("pudthp_scratch_constants")
    after = seeded_run(11)
    assert after == before


def live(*classes: type) -> dict[str, int]:
    """How many objects of each class are alive (after a full collection)."""
    gc.collect()
    counts = dict.fromkeys((c.__name__ for c in classes), 0)
    for o in gc.get_objects():
        for c in classes:
            if isinstance(o, c):
                counts[c.__name__] += 1
    return counts


def test_a_worker_keeps_one_run_of_programs_and_nothing_of_the_runs_before(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # What bounds a campaign worker's memory however long it runs: Hypothesis keeps every
    # test case of a run (its result: a whole program's choices) until the run ends, so a
    # run is RUN_STEPS steps of programs (runs of 2,000 programs of 100 steps grew a worker
    # by megabytes a second), and nothing of a run (results, its data tree, choice nodes)
    # is alive when the next one starts.  Here runs of 200 steps: 20 programs of 10 steps;
    # the results alive are counted every 128 steps, and the worker is stopped should they
    # pass three runs' worth.
    from hypothesis.internal.conjecture.choice import ChoiceNode
    from hypothesis.internal.conjecture.data import ConjectureResult
    from hypothesis.internal.conjecture.datatree import TreeNode

    import fuzz.engine_hypothesis

    monkeypatch.setattr(fuzz.engine_hypothesis, "RUN_STEPS", 200)
    per_run = examples_per_run(10)
    assert per_run == 20
    kinds = (ConjectureResult, TreeNode, ChoiceNode)
    before = live(*kinds)  # what other tests in this process keep (Hypothesis' own caches)

    def new(*classes: type) -> dict[str, int]:
        return {k: n - before[k] for k, n in live(*classes).items()}

    at_start: list[dict[str, int]] = []
    most = [0]
    polls = [0]

    def run_starts() -> list[str]:
        at_start.append(new(*kinds))
        return []

    def poll() -> bool:  # the worker asks every 64 steps whether to stop
        polls[0] += 1
        if polls[0] % 2 == 0:
            most[0] = max(most[0], new(ConjectureResult)["ConjectureResult"])
        return most[0] > 3 * per_run

    messages: list[Any] = []
    run_worker(WorkerSpec(0, 5, time_limit=None, max_runs=3, step_count=10),
               messages.append, run_starts, poll)
    done = [m for m in messages if m[0] == "done"][-1]
    assert done[2] >= 3 * per_run  # three whole runs
    # a run's results: its programs and the few it ran twice (a mutation that met one)
    assert 0 < most[0] <= per_run * 3 // 2
    assert len(at_start) == 3
    for counts in at_start[1:]:
        assert all(n <= 0 for n in counts.values()), counts


# --------------------------------------------------------------------------------------
# pudthp fuzz
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--config", "deposit=linked"], "config.deposit"),
        (["--config", "nope=1"], "config.nope"),
        (["--config", "deposit"], "expected KEY=VALUE"),
        (["--time", "0"], "--time"),
        (["--workers", "0"], "--workers"),
        (["--seed", "-1"], "--seed"),
        (["--hub", "lab-1:6379", "--time", "1"], "redis://[:PASSWORD@]HOST:PORT/DB"),
        (["--stats", "/proc/version/stats.jsonl", "--time", "1"], "--stats"),
        (["--example-db", "/proc/version/db", "--time", "1"], "--example-db"),
    ],
)
def test_fuzz_bad_usage_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                    args: list[str], needle: str) -> None:
    code = main(["fuzz", "--findings", str(tmp_path / "f"), *args])
    out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pudthp: error: ")
    assert needle in lines[0]


def test_fuzz_atheris_without_the_package_cannot_run_here(
        capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    # a machine without atheris: exit 4 (cannot run here, the kselftest skip code), not 2
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "atheris" else real(name, *a))
    code = main(["fuzz", "--engine", "atheris", "--findings", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 4
    assert err.strip() == ("pudthp: cannot run here: --engine atheris: the atheris package "
                           "is not installed")


def fuzz(tmp: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    # no example database: the repository's would carry cases from test to test
    return subprocess.run([*PUDTHP, "fuzz", "--no-example-db", "--findings", str(tmp), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=timeout)


LIST_HEAD_SEARCH = ("--time", "5", "--workers", "1", "--seed", "7", "--config",
                    "deposit=list_head", "--config", "pud_enabled=always")


def test_fuzz_finds_list_head_once_and_never_overwrites(tmp_path: Path) -> None:
    # PUD THPs always on: with them drawn per program, a 4 s search under the whole
    # suite's load once ran 24 programs without a PUD fault; this way the first write
    # fault meets the corruption, on a machine however loaded.
    out = fuzz(tmp_path, *LIST_HEAD_SEARCH)
    assert out.returncode == 1, out.stdout + out.stderr
    files = sorted(tmp_path.glob("*.json"))
    assert files, out.stdout + out.stderr
    for f in files:
        data = json.loads(f.read_text())
        meta = data["meta"]
        assert {"signature", "engine", "seed", "config", "date", "kind"} <= set(meta)
        assert meta["engine"] == "hypothesis"
        assert meta["seed"] == 7
        assert data["config"]["deposit"] == "list_head"
        assert f.name == Path(finding_path(str(tmp_path), meta["signature"])).name
        assert len(data["ops"]) <= 4
        assert meta["replays"] is True
    before = {f.name: f.read_text() for f in files}
    again = fuzz(tmp_path, *LIST_HEAD_SEARCH)
    assert again.returncode == 1
    assert "archived" in again.stdout
    assert {f.name: f.read_text() for f in tmp_path.glob("*.json")} == before


def test_fuzz_correct_designs_find_nothing(tmp_path: Path) -> None:
    out = fuzz(tmp_path, "--time", "3", "--workers", "2", "--seed", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert list(tmp_path.glob("*.json")) == []
    assert "0 distinct finding(s)" in out.stdout
    assert "worker seeds 1..2" in out.stderr
    # the model-state coverage table: printed, and written next to the findings
    (table,) = tmp_path.glob("coverage-*-hypothesis-seed1.txt")
    assert "model-state coverage (hypothesis)" in out.stdout
    head = table.read_text().splitlines()[0]
    assert head in out.stdout
    m = re.search(r"\): (\d+) programs, \d+ ops; (\d+)/(\d+) features hit", head)
    assert m, head
    assert int(m.group(1)) > 0
    assert 0 < int(m.group(2)) <= int(m.group(3))


def test_fuzz_ctrl_c_stops_cleanly_with_findings_written(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [*PUDTHP, "fuzz", "--no-example-db", "--findings", str(tmp_path), "--time", "300",
         "--workers", "2", "--seed", "3", "--config", "deposit=list_head"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stderr is not None
    deadline = time.monotonic() + 120
    seen = ""
    while "finding (new)" not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert "finding (new)" in seen, seen
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, out + err
    assert "Traceback" not in err + out
    assert "interrupted after" in out
    written = sorted(tmp_path.glob("*.json"))
    assert written
    for f in written:
        assert json.loads(f.read_text())["meta"]["engine"] == "hypothesis"
        assert f.name in out


def test_fuzz_in_a_directory_it_cannot_write_runs_without_the_default_example_database(
        tmp_path: Path) -> None:
    # /proc takes no new directory, even from root: the default corpus/hypothesis cannot be
    # made there; the campaign says so in one line and runs without replays
    run = subprocess.run([*PUDTHP, "fuzz", "--findings", str(tmp_path / "f"), "--time", "1",
                          "--workers", "1"], capture_output=True, text=True, cwd="/proc",
                         timeout=120)
    assert run.returncode == 0, run.stderr
    notes = [line for line in run.stderr.splitlines() if "no example database" in line]
    assert len(notes) == 1
    assert notes[0].startswith("pudthp fuzz: no example database (--example-db "
                               "corpus/hypothesis: ")
    # asked for by name, the same directory is an error
    named = subprocess.run([*PUDTHP, "fuzz", "--findings", str(tmp_path / "f"), "--time",
                            "1", "--example-db", "/proc/x"], capture_output=True, text=True,
                           timeout=120)
    assert named.returncode == 2
    assert named.stderr.startswith("pudthp: error: --example-db /proc/x: ")
