"""``pudthp fuzz --engine hypothesis``: the stateful machine as a time-boxed campaign.

Each worker is a process with its own seed.  It runs ``PudthpMachine`` under Hypothesis in a
loop, one run per derived seed (``EXAMPLES_PER_RUN`` programs, no database: the archive in
our own format is the record), until its time is up.  The machine reports every failing
program to the worker's ``Observer``, which keeps the smallest per signature, so whatever
Hypothesis' shrinker reached is kept even when a run is cut short.  When a run ends the
worker gives each new signature a small delta-debugging pass over its ops (same signature,
``run_program`` as the judge), checks that it replays, sends it to the parent and from then
on ignores that signature (a test case hitting it goes idle).

The parent prints progress about once a second on a terminal (every ten seconds otherwise),
writes each distinct signature once to ``--findings`` as a program with metadata (never
touching a file already there), prints a summary and the model-state coverage table of every
program the workers ran (``harness.coverage``; also written to ``--findings`` as
``coverage-<time>-hypothesis-seed<N>.txt``) and returns 1 if anything was found, 0 if not.
Ctrl-C sets a stop flag the workers poll every few dozen steps; they send what they have
(without the extra pass) and the parent writes it before returning 130."""

from __future__ import annotations

import contextlib
import queue
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.stateful import run_state_machine_as_test

from fuzz.archive import archive, finding_path, write_coverage
from fuzz.machine import FindingError, Observer, StopFuzzing, make_machine, program_size
from harness.coverage import Tally
from harness.program import dump_program, parse_program
from harness.runner import run_program
from harness.shrink import ddmin_ops
from pudthp_ref.spec import Config, Finding, Program

ENGINE = "hypothesis"
EXAMPLES_PER_RUN = 2000
STEPS_PER_PROGRAM = 100
SHRINK_SECONDS = 20.0  # Hypothesis' share of shrinking one finding
MINIMISE_SECONDS = 20.0  # then delta debugging's, for all the findings of one run
HARD_STOP_SECONDS = 30.0  # after the grace period, workers still running are terminated

Message = tuple[Any, ...]


def fuzz_settings(max_examples: int = EXAMPLES_PER_RUN,
                  step_count: int = STEPS_PER_PROGRAM) -> settings:
    """Hypothesis settings for a campaign run: no database, no deadline, no explain phase
    (seconds per failure), quiet (the parent reports).  One bug per run: Hypothesis stops
    generating at the first failure and shrinks the smallest one, slipping to any other
    signature with a smaller program (one planted bug shows under dozens of signatures;
    shrinking each would take minutes).

    No target phase: with a budget of this size Hypothesis spends up to half of a run
    hill-climbing the best program of each ``target()`` label, one choice at a time, and a
    campaign of a few hundred programs per worker then runs mostly near-copies of one
    program (measured: 60 s on one worker reached 86 and 93 of the catalogue's features with
    it, 99 and 101 without).  The generator itself is steered to the catalogue
    (``fuzz.machine``)."""
    return settings(
        max_examples=max_examples,
        stateful_step_count=step_count,
        deadline=None,
        database=None,
        derandomize=False,
        phases=(Phase.generate, Phase.shrink),
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
        verbosity=Verbosity.quiet,
        print_blob=False,
    )


def run_seed(seed: int, run: int) -> int:
    """The Hypothesis seed of run ``run`` of the worker with seed ``seed``."""
    return random.Random(f"{seed}:{run}").getrandbits(64)


def hunt(machine: Any, seed: int, hsettings: settings) -> tuple[set[str], list[str]]:
    """One Hypothesis run of ``machine`` with ``seed``: the signatures of the findings it
    reported (shrunk), and descriptions of failures that are not findings (errors of the
    machine itself).  StopFuzzing and KeyboardInterrupt pass through; so does a stop that
    Hypothesis reports as flaky generation (a test case cut short where an earlier one with
    the same choices ran on)."""
    obs = machine.OBSERVER
    try:
        run_state_machine_as_test(hypothesis.seed(seed)(machine), settings=hsettings)
    except (StopFuzzing, KeyboardInterrupt):
        raise
    except BaseException as e:
        if obs is not None and obs.stopped:
            raise StopFuzzing from e
        leaves = _leaves(e)
        return ({x.finding.signature for x in leaves if isinstance(x, FindingError)},
                [f"{type(x).__name__}: {str(x).splitlines()[0] if str(x) else ''}"
                 for x in leaves if not isinstance(x, FindingError)])
    return set(), []


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        out: list[BaseException] = []
        for x in e.exceptions:
            out.extend(_leaves(x))
        return out
    return [e]


# --------------------------------------------------------------------------------------
# Shrinking further: delta debugging over ops
# --------------------------------------------------------------------------------------


def minimise(program: Program, signature: str, impl: str = "both", check: bool = True,
             budget: float = MINIMISE_SECONDS) -> Program:
    """Remove chunks of ops, halving the chunk size down to single ops, for as long as the
    program still ends in ``signature`` (``harness.shrink``'s ddmin), within ``budget``
    seconds; returns the smallest program that kept the signature."""
    return ddmin_ops(program, signature, impl, check, budget)


# --------------------------------------------------------------------------------------
# A worker
# --------------------------------------------------------------------------------------


@dataclass
class WorkerSpec:
    """What one worker runs: config keys fixed, the implementation, invariants or not, its
    seed and time (seconds from its own start; ``None``: until stopped or ``max_runs``)."""

    index: int
    seed: int
    overrides: dict[str, Any] = field(default_factory=dict)
    impl: str = "both"
    check: bool = True
    time_limit: float | None = 60.0
    grace: float = 30.0
    max_runs: int | None = None
    max_examples: int = EXAMPLES_PER_RUN
    step_count: int = STEPS_PER_PROGRAM
    max_findings: int | None = None
    shrink_seconds: float = SHRINK_SECONDS
    minimise_seconds: float = MINIMISE_SECONDS


def run_worker(spec: WorkerSpec, emit: Callable[[Message], None],
               known_updates: Callable[[], list[str]] | None = None,
               stop_requested: Callable[[], bool] | None = None) -> None:
    """Hypothesis runs until the time is up; every message goes through ``emit``:
    ``("progress", index, programs, steps)``, ``("finding", index, payload)``,
    ``("warning", index, text)`` and at the end ``("coverage", index, tally JSON)`` (the
    model-state features of every program, ``harness.coverage.Tally``) and
    ``("done", index, programs, steps)``."""
    start = time.monotonic()
    obs = Observer(
        deadline=None if spec.time_limit is None else start + spec.time_limit,
        grace=spec.grace,
        shrink_budget=spec.shrink_seconds,
        stop_requested=stop_requested,
        on_progress=lambda o: emit(("progress", spec.index, o.programs, o.steps)),
    )
    machine = make_machine(spec.overrides, spec.impl, spec.check, obs)
    hsettings = fuzz_settings(spec.max_examples, spec.step_count)
    sent = 0
    run = 0
    try:
        while not obs.should_stop():
            if spec.max_runs is not None and run >= spec.max_runs:
                break
            if spec.max_findings is not None and sent >= spec.max_findings:
                break
            if known_updates is not None:
                obs.known.update(known_updates())
            interrupted = False
            reported: set[str] = set()
            try:
                reported, problems = hunt(machine, run_seed(spec.seed, run), hsettings)
                for text in problems:
                    emit(("warning", spec.index, text))
            except StopFuzzing:
                interrupted = True
            requested = stop_requested is not None and stop_requested()
            if not interrupted:
                # what Hypothesis shrunk; the other signatures met on the way stay
                # unknown, to be found (and shrunk) by a later run
                sigs = obs.pending & reported
            elif obs.shrink_cut:
                # out of shrinking time: the smallest failure, which Hypothesis was shrinking
                sigs = {min(obs.pending, key=lambda sig: program_size(obs.best[sig][1]))}
            else:
                sigs = set(obs.pending)  # stopped: everything found so far
            budget_end = time.monotonic() + spec.minimise_seconds
            for sig in sorted(sigs):
                finding, program = obs.best[sig]
                budget = 0.0 if requested else max(0.0, budget_end - time.monotonic())
                emit(("finding", spec.index, _payload(spec, run, finding, program, budget)))
                obs.known.add(sig)
                sent += 1
            cut = obs.shrink_cut
            obs.new_run()
            run += 1
            if interrupted and not cut:
                break
    finally:
        emit(("coverage", spec.index, obs.tally.to_json()))
        emit(("done", spec.index, obs.programs, obs.steps))


def _payload(spec: WorkerSpec, run: int, finding: Finding, program: Program,
             budget: float) -> dict[str, Any]:
    """A finding as plain data for the parent: the program JSON with its metadata, after
    up to ``budget`` seconds of delta debugging (none: stopped by Ctrl-C)."""
    shrunk = "hypothesis"
    if budget > 0:
        smaller = minimise(program, finding.signature, spec.impl, spec.check, budget)
        if len(smaller.ops) < len(program.ops):
            shrunk = "hypothesis+ddmin"
        program = smaller
    else:
        shrunk = "hypothesis (interrupted)"
    replay = run_program(program, spec.impl, check=spec.check).finding
    first_line = finding.message.splitlines()[0] if finding.message else ""
    meta = {
        "signature": finding.signature,
        "engine": ENGINE,
        "seed": spec.seed,
        "run": run,
        "config": program.config.to_json(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kind": finding.kind,
        "message": first_line,
        "op_index": replay.op_index if replay is not None else finding.op_index,
        "impl": spec.impl,
        "invariants": spec.check,
        "shrunk": shrunk,
        "replays": replay is not None and replay.signature == finding.signature,
        "hypothesis": hypothesis.__version__,
    }
    return {
        "signature": finding.signature,
        "kind": finding.kind,
        "ops": len(program.ops),
        "program": dump_program(Program(program.config, program.ops, meta)),
    }


def worker_main(spec: WorkerSpec, out: Any, inbox: Any, stop: Any) -> None:
    """Process entry point: the parent owns Ctrl-C (it sets ``stop``)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def updates() -> list[str]:
        got: list[str] = []
        with contextlib.suppress(queue.Empty):
            while True:
                got.append(inbox.get_nowait())
        return got

    run_worker(spec, out.put, updates, stop.is_set)


# --------------------------------------------------------------------------------------
# In one process (tests, quality checks)
# --------------------------------------------------------------------------------------


def fuzz_inline(spec: WorkerSpec) -> list[dict[str, Any]]:
    """``run_worker`` in this process (so a test's monkeypatches apply); the payloads of
    the findings, in the order found."""
    found: list[dict[str, Any]] = []

    def emit(msg: Message) -> None:
        if msg[0] == "finding":
            found.append(msg[2])
        elif msg[0] == "warning":
            raise RuntimeError(f"worker {msg[1]}: {msg[2]}")

    run_worker(spec, emit)
    return found


def finding_program(payload: dict[str, Any]) -> Program:
    """The program of a finding payload, parsed back (FORMAT.md)."""
    import json

    return parse_program(json.loads(payload["program"]), "<finding>")


# --------------------------------------------------------------------------------------
# The campaign (parent process)
# --------------------------------------------------------------------------------------


@dataclass
class Campaign:
    time_limit: float
    workers: int
    overrides: dict[str, Any]
    findings_dir: str
    seed: int
    impl: str = "both"
    check: bool = True
    err: TextIO = field(default_factory=lambda: sys.stderr)
    out: TextIO = field(default_factory=lambda: sys.stdout)


def grace_for(time_limit: float) -> float:
    """Extra time a worker may take to finish shrinking a finding after the deadline."""
    return min(60.0, max(10.0, time_limit / 2))


def run_campaign(c: Campaign) -> int:
    """The whole campaign; returns the exit status (0 nothing, 1 findings, 130 Ctrl-C)."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    out_q = ctx.Queue()
    stop = ctx.Event()
    grace = grace_for(c.time_limit)
    seeds = [c.seed + i for i in range(c.workers)]
    inboxes = [ctx.Queue() for _ in range(c.workers)]
    procs = []
    cfg = Config.from_json(c.overrides)
    print(f"pudthp fuzz: engine {ENGINE}, {c.workers} worker(s), {c.time_limit:g} s, "
          f"seed {c.seed} (worker seeds {seeds[0]}..{seeds[-1]}), config "
          f"{_config_text(cfg, c.overrides)}, impl {c.impl}, findings -> {c.findings_dir}",
          file=c.err, flush=True)
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)  # children start ignoring Ctrl-C
    try:
        for i in range(c.workers):
            spec = WorkerSpec(i, seeds[i], dict(c.overrides), c.impl, c.check, c.time_limit,
                              grace)
            p = ctx.Process(target=worker_main, args=(spec, out_q, inboxes[i], stop),
                            name=f"pudthp-fuzz-{i}", daemon=True)
            p.start()
            procs.append(p)
    finally:
        signal.signal(signal.SIGINT, old)

    start = time.monotonic()
    hard_stop = start + c.time_limit + grace + HARD_STOP_SECONDS
    counts = [(0, 0)] * c.workers
    done: set[int] = set()
    written: list[tuple[str, dict[str, Any]]] = []
    existing: list[tuple[str, dict[str, Any]]] = []
    signatures: set[str] = set()
    warnings: list[str] = []
    tally = Tally()
    interrupted = False
    tty = c.err.isatty()
    every = 1.0 if tty else 10.0
    last_print = start
    last_steps = 0
    last_t = start

    def handle(msg: Message) -> None:
        kind, index = msg[0], msg[1]
        if kind == "coverage":
            tally.merge(Tally.from_json(msg[2]))
            return
        if kind in ("progress", "done"):
            counts[index] = (msg[2], msg[3])
            if kind == "done":
                done.add(index)
        elif kind == "warning":
            warnings.append(f"worker {index}: {msg[2]}")
        elif kind == "finding":
            payload = msg[2]
            sig = payload["signature"]
            if sig in signatures:
                return
            signatures.add(sig)
            for j, box in enumerate(inboxes):
                if j != index:
                    box.put(sig)
            try:
                path, new = archive(c.findings_dir, payload["signature"], payload["program"])
            except OSError as e:
                warnings.append(f"cannot write {finding_path(c.findings_dir, sig)}: {e}")
                return
            (written if new else existing).append((path, payload))
            _clear(c.err, tty)
            state = "new" if new else "already archived"
            print(f"pudthp fuzz: finding ({state}) {sig}: {payload['ops']} ops -> {path}",
                  file=c.err, flush=True)

    while len(done) < c.workers:
        try:
            try:
                handle(out_q.get(timeout=0.2))
            except queue.Empty:
                if all(not p.is_alive() for p in procs):
                    break
            now = time.monotonic()
            if now - last_print >= every:
                programs = sum(n for n, _ in counts)
                steps = sum(s for _, s in counts)
                rate = (steps - last_steps) / max(now - last_t, 1e-9)
                last_steps, last_t, last_print = steps, now, now
                line = (f"[{now - start:6.1f}s] programs {programs}  steps {steps}  "
                        f"{rate:,.0f} steps/s  findings {len(signatures)}")
                if interrupted:
                    line += "  (stopping)"
                if tty:
                    print("\r" + line, end="", file=c.err, flush=True)
                else:
                    print(line, file=c.err, flush=True)
            if now > hard_stop:
                stop.set()
                if now > hard_stop + 10:
                    break
        except KeyboardInterrupt:
            if interrupted:  # a second Ctrl-C: do not wait any longer
                break
            interrupted = True
            stop.set()
    # anything still queued (a worker's last findings) is written before leaving
    with contextlib.suppress(queue.Empty, OSError, ValueError):
        while True:
            handle(out_q.get(timeout=0.5))
    for p in procs:
        p.join(timeout=5)
        if p.is_alive():
            p.terminate()
            p.join(timeout=5)
    elapsed = time.monotonic() - start
    _clear(c.err, tty)
    _summary(c, elapsed, counts, written, existing, warnings, interrupted)
    _coverage_report(c, tally, ENGINE)
    if interrupted:
        return 130
    return 1 if signatures else 0


def _coverage_report(c: Campaign, tally: Tally, engine: str) -> None:
    """Print the campaign's model-state coverage table and write it with the findings."""
    text = tally.table(f"pudthp fuzz: model-state coverage ({engine})")
    print(text, end="", file=c.out)
    try:
        path = write_coverage(c.findings_dir, engine, c.seed, text)
    except OSError as e:
        print(f"  warning   cannot write the coverage table to {c.findings_dir}: {e}",
              file=c.out)
    else:
        print(f"coverage table -> {path}", file=c.out)
    c.out.flush()


def _clear(err: TextIO, tty: bool) -> None:
    if tty:
        print("\r\033[K", end="", file=err, flush=True)


def _config_text(cfg: Config, overrides: dict[str, Any]) -> str:
    if not overrides:
        return "drawn per program from the correct designs"
    return " ".join(f"{k}={v}" for k, v in sorted(overrides.items())) + " (rest drawn)"


def _summary(c: Campaign, elapsed: float, counts: list[tuple[int, int]],
             written: list[tuple[str, dict[str, Any]]],
             existing: list[tuple[str, dict[str, Any]]], warnings: list[str],
             interrupted: bool) -> None:
    programs = sum(n for n, _ in counts)
    steps = sum(s for _, s in counts)
    rate = steps / elapsed if elapsed > 0 else 0.0
    head = "interrupted" if interrupted else "done"
    print(f"pudthp fuzz: {head} after {elapsed:.1f} s: {programs} programs, {steps} steps "
          f"({rate:,.0f} steps/s over {c.workers} worker(s)), "
          f"{len(written) + len(existing)} distinct finding(s), {len(written)} new",
          file=c.out, flush=True)
    for path, payload in written:
        print(f"  new       {path}  {payload['signature']} ({payload['ops']} ops)", file=c.out)
    for path, payload in existing:
        print(f"  archived  {path}  {payload['signature']} ({payload['ops']} ops; file kept)",
              file=c.out)
    for text in warnings:
        print(f"  warning   {text}", file=c.out)
    c.out.flush()
