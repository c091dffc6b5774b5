"""``pudthp fuzz --engine hypothesis``: the stateful machine as a time-boxed campaign.

Each worker is a process with its own seed.  It runs ``PudthpMachine`` under Hypothesis in a
loop, one run per derived seed (``EXAMPLES_PER_RUN`` programs), until its time is up.

Hypothesis keeps the failing test cases it shrinks in an example database (``example_db``:
``corpus/hypothesis/`` by default, with ``--hub`` that directory and the hub's Redis
together, ``fuzz.hub.example_database``), under a key per machine config, impl and
invariants setting (``database_digest``).  A worker's first run replays what is there
first, and so does each run after one whose replay found something, so a campaign starts
by running again every failure the campaigns before it saved, one per run; then it only
generates.  A replayed case whose signature is already known goes idle like any other
(``fuzz.machine.Observer``), and Hypothesis would delete it as no longer failing: the
worker's database keeps it (``KeepKnown``), so a signature another machine archived does
not erase this machine's example of it.  The machine reports every failing
program to the worker's ``Observer``, which keeps the smallest per signature, so whatever
Hypothesis' shrinker reached is kept even when a run is cut short.  When a run ends the
worker gives each new signature a small delta-debugging pass over its ops (same signature,
``run_program`` as the judge), checks that it replays, sends it to the parent and from then
on ignores that signature (a test case hitting it goes idle).

The parent prints progress about once a second on a terminal (every ten seconds otherwise),
writes each distinct signature once to ``--findings`` as a program with metadata (never
touching a valid file already there; ``fuzz.archive`` writes atomically), prints a summary
and the model-state coverage table of every program the workers ran (``harness.coverage``;
also written to ``--findings`` as ``coverage-<time>-hypothesis-seed<N>.txt``) and returns 1
if anything was found, 0 if not.  Ctrl-C (SIGINT) or SIGTERM tells the workers
to stop (they ignore both signals themselves, so a signal to the whole process group is
handled once, by the parent); they send what they have (without the extra pass) and the
parent writes it before returning 130 (SIGINT) or 143 (SIGTERM).

With ``--hub`` or ``--stats`` the parent also holds a ``fuzz.link.CampaignLink``:
findings go to and come from other machines (signatures they found are sent to the workers
as known; a worker that meets one says so, and it counts as found here), and a stats record
is written every few seconds from the workers' progress and coverage messages.

Faults: each worker talks to the parent over its own pipe, so a worker killed at any moment
(SIGKILL, the OOM killer) corrupts nothing shared; the parent sees its pipe close, starts a
fresh worker in the slot with the next seed (``worker_seed``) for the remaining time and
counts the restart in the summary.  A worker over its memory limit (``--max-rss``) or a
program over its time cap (``--max-program-time``) is no finding (``harness.limits``): the
program is dropped and counted, and after a memory limit the worker is restarted.  A worker
whose parent is gone stops.  A finding the parent cannot write (full disk, read-only
directory) is kept in memory and written again every ``RETRY_SECONDS``; what is still
unwritten at the end is printed in full in the summary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TextIO

import hypothesis
from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.database import ExampleDatabase
from hypothesis.errors import Unsatisfiable
from hypothesis.stateful import run_state_machine_as_test

from fuzz.archive import archive, remove_stale_temporaries, write_coverage
from fuzz.hub import DEFAULT_CAMPAIGN, example_database
from fuzz.link import CampaignLink, features
from fuzz.machine import FindingError, Observer, StopFuzzing, make_machine, program_size
from fuzz.stats import Sample
from harness.coverage import Tally
from harness.limits import (
    Gate,
    LimitExceeded,
    ProgramTimer,
    limit_signals_blocked,
    memory_limit,
)
from harness.program import dump_program, parse_program
from harness.runner import IMPL_FACTORIES, run_program
from harness.shrink import ddmin_ops
from pudthp_ref.spec import Config, Finding, Program

ENGINE = "hypothesis"
EXAMPLES_PER_RUN = 2000
STEPS_PER_PROGRAM = 100
SHRINK_SECONDS = 20.0  # Hypothesis' share of shrinking one finding
MINIMISE_SECONDS = 20.0  # then delta debugging's, for all the findings of one run
COVERAGE_SECONDS = 5.0  # how often a worker sends its model-state coverage so far
HARD_STOP_SECONDS = 30.0  # after the grace period, workers still running are terminated
RETRY_SECONDS = 5.0  # how often findings that could not be written are tried again
MAX_RESTARTS = 20  # per worker slot: a slot whose workers keep dying is given up

Message = tuple[Any, ...]


def fuzz_settings(max_examples: int = EXAMPLES_PER_RUN,
                  step_count: int = STEPS_PER_PROGRAM,
                  database: ExampleDatabase | None = None, reuse: bool = False) -> settings:
    """Hypothesis settings for a campaign run: ``database`` (none by default; the campaign
    gives the worker's ``example_db``), its failures replayed first if ``reuse``, no
    deadline, no explain phase (seconds per failure), quiet (the parent reports).  One bug
    per run: Hypothesis stops generating at the first failure and shrinks the smallest one,
    slipping to any other signature with a smaller program (one planted bug shows under
    dozens of signatures; shrinking each would take minutes).

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
        database=database,
        derandomize=False,
        phases=(Phase.reuse, Phase.generate, Phase.shrink) if reuse and database is not None
        else (Phase.generate, Phase.shrink),
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
    machine itself; not ``Unsatisfiable``, which only test cases rejected at a resource
    limit cause).  StopFuzzing and KeyboardInterrupt pass through; so does a stop that
    Hypothesis reports as flaky generation (a test case cut short where an earlier one with
    the same choices ran on)."""
    obs = machine.OBSERVER
    try:
        run_state_machine_as_test(hypothesis.seed(seed)(machine), settings=hsettings)
    except (StopFuzzing, KeyboardInterrupt, LimitExceeded):
        raise
    except BaseException as e:
        if obs is not None and obs.stopped:
            raise StopFuzzing from e
        leaves = _leaves(e)
        return ({x.finding.signature for x in leaves if isinstance(x, FindingError)},
                [f"{type(x).__name__}: {str(x).splitlines()[0] if str(x) else ''}"
                 for x in leaves if not isinstance(x, FindingError | Unsatisfiable)])
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


def database_digest(overrides: dict[str, Any], impl: str, check: bool) -> bytes:
    """What tells the example database's keys apart beyond the machine's source: a case
    saved under one config (or impl, or invariants setting) replays as something else under
    another, and Hypothesis would delete it as no longer failing."""
    key = json.dumps({"overrides": overrides, "impl": impl, "check": check}, sort_keys=True)
    return hashlib.sha256(key.encode()).digest()


class KeepKnown(ExampleDatabase):
    """An example database that does not delete a case while the case just run has no
    verdict of its own (``Observer.inconclusive``: it went idle on a known signature, or
    stopped at a resource limit on a busy machine): Hypothesis deletes every replayed case
    that did not fail, but this one may well still fail.  Nor does it keep Hypothesis'
    pareto front of ``target()`` scores, which only a target phase (off in campaigns)
    uses: one write per improvement, to the hub too, in the middle of generating."""

    def __init__(self, inner: ExampleDatabase, obs: Observer) -> None:
        super().__init__()
        self.inner = inner
        self.obs = obs

    def __repr__(self) -> str:
        return f"KeepKnown({self.inner!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, KeepKnown) and self.inner == other.inner

    def __hash__(self) -> int:
        return hash(("KeepKnown", id(self.inner)))

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self.inner.fetch(key)

    def save(self, key: bytes, value: bytes) -> None:
        if not key.endswith(b".pareto"):
            self.inner.save(key, value)

    def delete(self, key: bytes, value: bytes) -> None:
        if not self.obs.inconclusive:
            self.inner.delete(key, value)

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        self.inner.move(src, dest, value)  # shrinking's downgrade of a failing case


@dataclass
class WorkerSpec:
    """What one worker runs: config keys fixed, the implementation, invariants or not, its
    seed and time (seconds from its own start; ``None``: until stopped or ``max_runs``), and
    its limits: ``step_count`` ops per program, ``program_seconds`` per program, ``max_rss``
    MiB for the process (``worker_main`` enforces it)."""

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
    program_seconds: float | None = None
    max_rss: int | None = None
    example_db: str | None = None  # the local example database directory (None: none)
    hub: str | None = None  # ... and the hub's, shared with other machines
    hub_campaign: str = DEFAULT_CAMPAIGN
    known: tuple[str, ...] = ()  # signatures archived already (by this campaign or others)


def pin_constant_pool() -> None:
    """Draw no values from the literal constants of the project's own modules.

    Hypothesis (6.1xx) mixes into its draws the constants found in the source of every
    "local" module loaded, re-scanning whenever ``sys.modules`` grows.  A module first
    imported part-way through a campaign (by a timer, a progress line, a limit) then changes
    what every later program contains, so a worker's seed no longer names its programs:
    the same seed ran 361 programs in one checkout and 125 in another, and met no PUD fault
    at all in 24 programs under load.  Its global constants (0, 1, powers of two, ...)
    stay.  Where Hypothesis has no such pool, nothing is done."""
    try:
        from hypothesis.internal.conjecture import providers
        from hypothesis.internal.constants_ast import Constants
    except ImportError:  # pragma: no cover - another Hypothesis
        return
    if not hasattr(providers, "_get_local_constants"):  # pragma: no cover
        return
    empty = Constants()
    providers._get_local_constants = lambda: empty
    cache = getattr(providers, "CONSTANTS_CACHE", None)
    if cache is not None and hasattr(cache, "cache"):
        cache.cache.clear()


def run_worker(spec: WorkerSpec, emit: Callable[[Message], None],
               known_updates: Callable[[], list[str]] | None = None,
               stop_requested: Callable[[], bool] | None = None,
               gate: Gate | None = None) -> None:
    """Hypothesis runs until the time is up; every message goes through ``emit``:
    ``("progress", index, programs, steps)``, ``("finding", index, payload)``,
    ``("warning", index, text)``, ``("limit", index, kind, text)`` for a program dropped at a
    resource limit, ``("restart", index, reason)`` when this worker ends early and wants a
    fresh process, ``("known", index, signature)`` the first time a program meets a
    signature of ``spec.known`` (it went idle there), ``("note", index, text)`` for the
    user (the example database on the hub cannot be reached), ``("coverage", index, tally
    JSON)`` every ``COVERAGE_SECONDS`` and at the end (the model-state features of every
    program so far, ``harness.coverage.Tally``)
    and last ``("done", index, programs, steps)``.  ``gate``: the one the process's memory
    limit raises through, if any."""
    pin_constant_pool()
    start = time.monotonic()
    coverage_at = [start + COVERAGE_SECONDS]

    def progress(o: Observer) -> None:
        emit(("progress", spec.index, o.programs, o.steps))
        now = time.monotonic()
        if now >= coverage_at[0]:
            coverage_at[0] = now + COVERAGE_SECONDS
            emit(("coverage", spec.index, o.tally.to_json()))

    obs = Observer(
        known=set(spec.known),
        deadline=None if spec.time_limit is None else start + spec.time_limit,
        grace=spec.grace,
        shrink_budget=spec.shrink_seconds,
        stop_requested=stop_requested,
        on_progress=progress,
        gate=gate or Gate(),
    )
    timer = ProgramTimer(spec.program_seconds, gate=obs.gate) if spec.program_seconds else None
    if timer is not None:
        obs.on_program_start = timer.start
    machine = make_machine(spec.overrides, spec.impl, spec.check, obs)
    database: ExampleDatabase | None = None
    if spec.example_db is not None:
        database = KeepKnown(example_database(
            spec.hub, spec.example_db, campaign=spec.hub_campaign,
            say=lambda text: emit(("note", spec.index, text))), obs)
        machine._hypothesis_internal_add_digest = database_digest(
            spec.overrides, spec.impl, spec.check)
    reuse = database is not None
    told: set[str] = set()  # known signatures met again, said to the parent
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
            limits_before = len(obs.limit_hits)
            hsettings = fuzz_settings(spec.max_examples, spec.step_count, database, reuse)
            try:
                reported, problems = hunt(machine, run_seed(spec.seed, run), hsettings)
                for text in problems:
                    emit(("warning", spec.index, text))
            except StopFuzzing:
                interrupted = True
            except LimitExceeded as e:  # met outside a step: the run ends, the worker goes on
                obs.limit_hits.append(e)
                obs.memory_exhausted = obs.memory_exhausted or e.kind == "memory"
            finally:
                if timer is not None:
                    timer.stop()
            if obs.gate.pending is not None and obs.gate.pending.kind == "memory":
                obs.limit_hits.append(obs.gate.pending)  # held: no step came after it
                obs.memory_exhausted = True
                obs.gate.pending = None
            limited = len(obs.limit_hits) > limits_before
            for hit in obs.limit_hits[limits_before:]:
                emit(("limit", spec.index, hit.kind, str(hit)))
            requested = stop_requested is not None and stop_requested()
            if not interrupted and not limited:
                # what Hypothesis shrunk; the other signatures met on the way stay
                # unknown, to be found (and shrunk) by a later run
                sigs = obs.pending & reported
            elif obs.shrink_cut:
                # out of shrinking time: the smallest failure, which Hypothesis was shrinking
                sigs = {min(obs.pending, key=lambda sig: program_size(obs.best[sig][1]))}
            else:
                sigs = set(obs.pending)  # stopped, or a limit: everything found so far
            budget_end = time.monotonic() + spec.minimise_seconds
            # every finding goes out before a limit signal may end the worker (delta
            # debugging has its own deadline, and an allocation over the limit still fails)
            with limit_signals_blocked():
                for sig in sorted(sigs):
                    finding, program = obs.best[sig]
                    budget = 0.0 if requested or obs.memory_exhausted else max(
                        0.0, budget_end - time.monotonic())
                    emit(("finding", spec.index,
                          _payload(spec, run, finding, program, budget)))
                    obs.known.add(sig)
                    sent += 1
            for sig in sorted(obs.known_hits - told):
                emit(("known", spec.index, sig))
                told.add(sig)
            cut = obs.shrink_cut
            reuse = reuse and bool(reported)  # replay again while replays find something
            obs.new_run()
            run += 1
            if obs.memory_exhausted:
                emit(("restart", spec.index, "memory limit"))
                break
            if interrupted and not cut:
                break
    finally:
        if timer is not None:
            timer.close()
        emit(("coverage", spec.index, obs.tally.to_json()))
        emit(("done", spec.index, obs.programs, obs.steps))


def _payload(spec: WorkerSpec, run: int, finding: Finding, program: Program,
             budget: float) -> dict[str, Any]:
    """A finding as plain data for the parent: the program JSON with its metadata, after
    up to ``budget`` seconds of delta debugging (none: stopped by Ctrl-C)."""
    shrunk = "hypothesis"
    if budget > 0:
        try:
            smaller = minimise(program, finding.signature, spec.impl, spec.check, budget)
        except LimitExceeded:
            smaller, shrunk = program, "hypothesis (ddmin hit a resource limit)"
        if len(smaller.ops) < len(program.ops):
            shrunk = "hypothesis+ddmin"
        program = smaller
    else:
        shrunk = "hypothesis (interrupted)"
    try:
        replay = run_program(program, spec.impl, check=spec.check).finding
    except LimitExceeded:
        replay = None
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


def worker_main(spec: WorkerSpec, conn: Any, parent_pid: int) -> None:
    """Process entry point.  ``conn`` is this worker's own pipe to the parent (messages out;
    ``("known", signature)`` and ``("stop",)`` in).  The parent owns Ctrl-C and SIGTERM (it
    tells the workers to stop); a worker whose parent is gone stops by itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # see launch
    stop = [False]
    known: list[str] = []

    def pump() -> None:
        try:
            while conn.poll():
                msg = conn.recv()
                if msg[0] == "stop":
                    stop[0] = True
                elif msg[0] == "known":
                    known.append(msg[1])
        except (EOFError, OSError):
            stop[0] = True  # the parent is gone

    def updates() -> list[str]:
        pump()
        got = known[:]
        known.clear()
        return got

    def stop_requested() -> bool:
        pump()
        return stop[0] or os.getppid() != parent_pid

    def emit(msg: Message) -> None:
        try:
            with limit_signals_blocked():  # never half a message
                conn.send(msg)
        except OSError:
            stop[0] = True

    IMPL_FACTORIES[spec.impl]()  # imported before the limit: numpy's reservations
    gate = Gate()
    try:
        with memory_limit(spec.max_rss, gate):
            run_worker(spec, emit, updates, stop_requested, gate)
    except LimitExceeded as e:  # between two runs: what was found is sent already
        emit(("limit", spec.index, e.kind, str(e)))
        emit(("restart", spec.index, f"{e.kind} limit"))


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
    max_ops: int = STEPS_PER_PROGRAM
    program_seconds: float | None = None
    max_rss: int | None = None
    example_db: str | None = None  # the example database directory (None: no database)
    link: CampaignLink | None = None  # the hub and the stats file, if any


def grace_for(time_limit: float) -> float:
    """Extra time a worker may take to finish shrinking a finding after the deadline."""
    return min(60.0, max(10.0, time_limit / 2))


def worker_seed(seed: int, index: int, start: int, workers: int) -> int:
    """The seed of slot ``index``'s worker at its start number ``start`` (0 first; a slot
    starts again after its worker died or hit its memory limit): ``seed + index + start *
    workers``, so no two workers of a campaign share a seed."""
    return seed + index + start * workers


@dataclass
class _Slot:
    """One worker slot of the parent: the process running in it now and what it said."""

    index: int
    proc: Any = None
    conn: Any = None
    starts: int = 0
    seed: int = 0
    done: bool = False  # the current process sent "done"
    restart: str | None = None  # ... asked for a fresh process, and why
    counts: tuple[int, int] = (0, 0)  # programs and steps of the current process
    base: tuple[int, int] = (0, 0)  # ... of the earlier ones
    finished: bool = False  # no process runs or will run in this slot
    restarts: list[str] = field(default_factory=list)
    tally: Tally | None = None  # features of the current process, as it last sent them
    tally_done: Tally = field(default_factory=Tally)  # ... of the earlier ones

    def total(self) -> tuple[int, int]:
        return self.base[0] + self.counts[0], self.base[1] + self.counts[1]


@dataclass
class _Unwritten:
    payload: dict[str, Any]
    reason: str


class _Parent:
    """The campaign's parent process: worker slots, findings, signals."""

    def __init__(self, c: Campaign) -> None:
        import multiprocessing

        self.c = c
        self.ctx = multiprocessing.get_context("spawn")
        self.grace = grace_for(c.time_limit)
        self.start = time.monotonic()
        self.deadline = self.start + c.time_limit
        self.hard_stop = self.deadline + self.grace + HARD_STOP_SECONDS
        self.slots = [_Slot(i) for i in range(c.workers)]
        self.written: list[tuple[str, dict[str, Any]]] = []
        self.existing: list[tuple[str, dict[str, Any]]] = []
        self.unwritten: list[_Unwritten] = []
        self.signatures: set[str] = set()
        self.warnings: list[str] = []
        self.limits: dict[str, int] = {}
        # signatures other machines found, replayed here: the workers start knowing what
        # came from the hub (they go idle on it) and are told what comes later; a
        # signature the hub only names is not known
        self.hub_known: set[str] = c.link.verified() if c.link is not None else set()
        self.known_hits: set[str] = set()  # ... that this campaign's programs met too
        self.signals: list[int] = []
        self.stopping = False
        self.next_retry = 0.0
        self.tty = c.err.isatty()

    # -- workers -------------------------------------------------------------------------

    def launch(self, s: _Slot) -> None:
        remaining = self.deadline - time.monotonic()
        s.seed = worker_seed(self.c.seed, s.index, s.starts, self.c.workers)
        s.starts += 1
        s.base = s.total()
        s.counts = (0, 0)
        s.done = False
        s.restart = None
        if s.tally is not None:
            s.tally_done.merge(s.tally)
            s.tally = None
        hub = self.c.link.hub if self.c.link is not None else None
        spec = WorkerSpec(s.index, s.seed, dict(self.c.overrides), self.c.impl, self.c.check,
                          remaining, self.grace, step_count=self.c.max_ops,
                          program_seconds=self.c.program_seconds, max_rss=self.c.max_rss,
                          example_db=self.c.example_db,
                          hub=hub.url if hub is not None else None,
                          hub_campaign=hub.campaign if hub is not None else DEFAULT_CAMPAIGN,
                          known=tuple(sorted(self.signatures | self.hub_known)))
        parent_end, child_end = self.ctx.Pipe(duplex=True)
        p = self.ctx.Process(target=worker_main, args=(spec, child_end, os.getpid()),
                             name=f"pudthp-fuzz-{s.index}", daemon=True)
        # the child starts with Ctrl-C and SIGTERM held back until it ignores them; here
        # they wait until the child is started, so none is lost
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        try:
            p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child_end.close()  # the worker's end is the worker's only: its death closes the pipe
        s.proc, s.conn = p, parent_end

    def send(self, s: _Slot, msg: tuple[Any, ...]) -> None:
        if s.conn is not None:
            with contextlib.suppress(OSError):
                s.conn.send(msg)

    def read(self, s: _Slot) -> None:
        """Every message waiting on ``s``'s pipe; a closed or broken pipe is closed."""
        while s.conn is not None:
            try:
                if not s.conn.poll():
                    return
                msg = s.conn.recv()
            except (EOFError, OSError):
                s.conn.close()
                s.conn = None
                return
            except Exception as e:  # cut short mid-message: nothing after it can be trusted
                self.warnings.append(f"worker {s.index}: unreadable message ({e}); stopped")
                s.conn.close()
                s.conn = None
                with contextlib.suppress(OSError):
                    s.proc.kill()
                return
            self.handle(s, msg)

    def reap(self, s: _Slot) -> None:
        """Slot ``s``'s process has exited: start another in its place when it died early
        or asked for a fresh one, while time is left."""
        self.read(s)
        s.proc.join(timeout=5)
        if s.conn is not None:
            s.conn.close()
            s.conn = None
        code = s.proc.exitcode
        why = s.restart
        if why is None and not s.done:
            why = (f"killed by {signal.Signals(-code).name}" if code is not None and code < 0
                   else f"died (exit status {code})")
        left = self.deadline - time.monotonic()
        if why is not None and not self.stopping and left >= 1:
            if len(s.restarts) >= MAX_RESTARTS:
                self.warnings.append(f"worker {s.index}: {why}; not restarted again (it was "
                                     f"restarted {len(s.restarts)} times)")
                s.finished = True
                return
            s.restarts.append(why)
            self.line(f"worker {s.index} {why}; restarted with seed "
                      f"{worker_seed(self.c.seed, s.index, s.starts, self.c.workers)} for "
                      f"the remaining {left:.0f} s")
            self.launch(s)
            return
        if why is not None and not s.done:
            s.restarts.append(f"{why} (not restarted: the campaign was ending)")
        s.finished = True

    # -- messages and findings -----------------------------------------------------------

    def handle(self, s: _Slot, msg: Message) -> None:
        kind = msg[0]
        if kind == "coverage":  # what the process ran so far
            s.tally = Tally.from_json(msg[2])
            return
        if kind == "note":
            self.line(f"worker {s.index}: {msg[2]}")
            return
        if kind == "known":  # met a signature another machine archived
            self.known_hits.add(msg[2])
            return
        if kind in ("progress", "done"):
            s.counts = (msg[2], msg[3])
            if kind == "done":
                s.done = True
        elif kind == "warning":
            self.warnings.append(f"worker {s.index}: {msg[2]}")
        elif kind == "limit":
            self.limits[msg[2]] = self.limits.get(msg[2], 0) + 1
            if sum(self.limits.values()) <= 5:
                self.line(f"worker {s.index}: {msg[3]}")
        elif kind == "restart":
            s.restart = msg[2]
        elif kind == "finding":
            payload = msg[2]
            sig = payload["signature"]
            if sig in self.signatures:
                return
            self.signatures.add(sig)
            for other in self.slots:
                if other is not s:
                    self.send(other, ("known", sig))
            self.write(payload)

    def write(self, payload: dict[str, Any]) -> bool:
        """Archive one finding; on failure keep it for a retry.  True when on disk."""
        sig = payload["signature"]

        def replaced(path: str, problem: str) -> None:
            self.warnings.append(f"{path}: {problem}; rewritten with {sig}")
            self.line(f"{path}: {problem}; rewriting it")

        try:
            path, new = archive(self.c.findings_dir, sig, payload["program"], replaced)
        except OSError as e:
            reason = e.strerror or str(e)
            if not any(u.payload is payload for u in self.unwritten):
                self.unwritten.append(_Unwritten(payload, reason))
            self.line(f"cannot write a finding to {self.c.findings_dir}: {reason}; "
                      f"{len(self.unwritten)} finding(s) kept in memory, trying again every "
                      f"{RETRY_SECONDS:g} s")
            self.next_retry = time.monotonic() + RETRY_SECONDS
            return False
        (self.written if new else self.existing).append((path, payload))
        if self.c.link is not None:
            self.c.link.archived(sig, path)
        state = "new" if new else "already archived"
        self.line(f"finding ({state}) {sig}: {payload['ops']} ops -> {path}")
        return True

    def retry(self, force: bool = False) -> None:
        if not self.unwritten or (not force and time.monotonic() < self.next_retry):
            return
        waiting, self.unwritten = self.unwritten, []
        for i, u in enumerate(waiting):
            if not self.write(u.payload):
                self.unwritten = waiting[i:]
                return

    def line(self, text: str) -> None:
        _clear(self.c.err, self.tty)
        print(f"pudthp fuzz: {text}", file=self.c.err, flush=True)

    # -- the hub and the stats -----------------------------------------------------------

    def tally(self) -> Tally:
        """The model-state features of every program the workers ran so far."""
        return Tally.total(t for s in self.slots for t in (s.tally_done, s.tally))

    def sample(self) -> Sample:
        return Sample(programs=sum(s.total()[0] for s in self.slots),
                      count=sum(s.total()[1] for s in self.slots),
                      findings=len(self.signatures | self.known_hits),
                      features=features(self.tally()))

    def from_hub(self, sigs: list[str]) -> None:
        """Signatures another machine archived: the workers stop shrinking them."""
        for sig in sigs:
            if sig in self.signatures or sig in self.hub_known:
                continue
            self.hub_known.add(sig)
            for s in self.slots:
                self.send(s, ("known", sig))

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> None:
        from multiprocessing.connection import wait

        every = 1.0 if self.tty else 10.0
        last_print = last_t = self.start
        last_steps = 0
        while True:
            live = [s for s in self.slots if not s.finished]
            if not live:
                break
            handles = [h for s in live for h in (s.conn, s.proc.sentinel) if h is not None]
            ready = wait(handles, timeout=0.2)
            for s in live:
                if s.conn is not None and s.conn in ready:
                    self.read(s)
            for s in live:
                if s.proc.sentinel in ready or not s.proc.is_alive():
                    self.reap(s)
            if self.signals and not self.stopping:
                self.stop_all()
            if len(self.signals) >= 2:  # a second signal: do not wait any longer
                break
            self.retry()
            now = time.monotonic()
            if self.c.link is not None:
                self.from_hub(self.c.link.tick(self.sample, now))
            if now - last_print >= every:
                programs = sum(s.total()[0] for s in self.slots)
                steps = sum(s.total()[1] for s in self.slots)
                rate = (steps - last_steps) / max(now - last_t, 1e-9)
                last_steps, last_t, last_print = steps, now, now
                line = (f"[{now - self.start:6.1f}s] programs {programs}  steps {steps}  "
                        f"{rate:,.0f} steps/s  findings {len(self.signatures)}")
                if self.signals:
                    line += "  (stopping)"
                if self.tty:
                    print("\r" + line, end="", file=self.c.err, flush=True)
                else:
                    print(line, file=self.c.err, flush=True)
            if now > self.deadline:
                self.stopping = True  # no restarts after the deadline
            if now > self.hard_stop:
                self.stop_all()
                if now > self.hard_stop + 10:
                    break

    def stop_all(self) -> None:
        self.stopping = True
        for s in self.slots:
            self.send(s, ("stop",))

    def finish(self) -> None:
        """Kill what still runs, read what it sent, write what is left (trying a few times,
        a second apart, before leaving it to the summary)."""
        for s in self.slots:
            if s.proc is None:
                continue
            if s.proc.is_alive():
                s.proc.join(timeout=1)
            if s.proc.is_alive():
                s.proc.kill()
            s.proc.join(timeout=5)
            self.read(s)
            if not s.finished:
                self.stopping = True
                self.reap(s)
        for attempt in range(3):
            if attempt:
                time.sleep(min(RETRY_SECONDS, 1.0))
            self.retry(force=True)
            if not self.unwritten:
                break


def run_campaign(c: Campaign) -> int:
    """The whole campaign; returns the exit status (0 nothing, 1 findings, 130 Ctrl-C, 143
    SIGTERM)."""
    parent = _Parent(c)
    cfg = Config.from_json(c.overrides)
    seeds = [worker_seed(c.seed, i, 0, c.workers) for i in range(c.workers)]
    stale = remove_stale_temporaries(c.findings_dir)
    print(f"pudthp fuzz: engine {ENGINE}, {c.workers} worker(s), {c.time_limit:g} s, "
          f"seed {c.seed} (worker seeds {seeds[0]}..{seeds[-1]}), config "
          f"{_config_text(cfg, c.overrides)}, impl {c.impl}, findings -> {c.findings_dir}"
          + (f" ({stale} temporary file(s) of a killed campaign removed)" if stale else ""),
          file=c.err, flush=True)

    def on_signal(signum: int, frame: Any) -> None:
        parent.signals.append(signum)

    ended: float | None = None
    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in parent.slots:
            parent.launch(s)
        parent.run()
        parent.finish()
        ended = time.monotonic()  # the rate leaves out the wait for other machines
        if c.link is not None:  # with our handlers: a signal ends the wait for peers
            parent.from_hub(c.link.finish(parent.sample(), stop=lambda: bool(parent.signals)))
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
    elapsed = (ended if ended is not None else time.monotonic()) - parent.start
    _clear(c.err, parent.tty)
    first = parent.signals[0] if parent.signals else None
    _summary(c, parent, elapsed, first)
    _coverage_report(c, parent.tally(), ENGINE)
    if first is not None:
        return 128 + first  # 130 Ctrl-C, 143 SIGTERM
    if parent.signatures or parent.known_hits:
        return 1
    programs = sum(s.total()[0] for s in parent.slots)
    dropped = sum(parent.limits.values())
    if programs <= dropped:  # nothing was tested: never "no finding"
        print(f"pudthp: error: no program ran to its end ({programs} started, {dropped} "
              "stopped at a resource limit): nothing was tested; raise --max-rss or "
              "--max-program-time", file=c.err)
        return 2
    return 0


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


def _summary(c: Campaign, parent: _Parent, elapsed: float, signum: int | None) -> None:
    programs = sum(s.total()[0] for s in parent.slots)
    steps = sum(s.total()[1] for s in parent.slots)
    rate = steps / elapsed if elapsed > 0 else 0.0
    written, existing = parent.written, parent.existing
    head = "done"
    if signum is not None:
        head = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
    known_only = sorted(parent.known_hits - parent.signatures)
    distinct = len(written) + len(existing) + len(parent.unwritten) + len(known_only)
    print(f"pudthp fuzz: {head} after {elapsed:.1f} s: {programs} programs, {steps} steps "
          f"({rate:,.0f} steps/s over {c.workers} worker(s)), "
          f"{distinct} distinct finding(s), {len(written)} new",
          file=c.out, flush=True)
    for path, payload in written:
        print(f"  new       {path}  {payload['signature']} ({payload['ops']} ops)", file=c.out)
    for path, payload in existing:
        print(f"  archived  {path}  {payload['signature']} ({payload['ops']} ops; file kept)",
              file=c.out)
    where = dict(c.link.pulled) if c.link is not None else {}
    for sig in known_only:
        print(f"  known     {where.get(sig, '(from the hub)')}  {sig} (archived by another "
              "machine; hit again)", file=c.out)
    for u in parent.unwritten:
        p = u.payload
        print(f"  UNWRITTEN {p['signature']} ({p['ops']} ops): {c.findings_dir}: {u.reason}; "
              "the program follows", file=c.out)
        for text in p["program"].splitlines():
            print(f"    {text}", file=c.out)
    restarts = [(s.index, r) for s in parent.slots for r in s.restarts]
    if restarts:
        print(f"  restarts  {len(restarts)}: "
              + "; ".join(f"worker {i} {r}" for i, r in restarts), file=c.out)
    if parent.limits:
        print(f"  limits    {sum(parent.limits.values())} program(s) dropped at a resource "
              "limit, not findings: " + ", ".join(f"{k} {n}" for k, n in
                                                  sorted(parent.limits.items())), file=c.out)
    for text in parent.warnings:
        print(f"  warning   {text}", file=c.out)
    if c.link is not None:
        for text in c.link.summary_lines():
            print(text, file=c.out)
    c.out.flush()
