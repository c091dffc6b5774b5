"""``pudthp fuzz --engine hypothesis``: the stateful machine as a time-boxed campaign.

Each worker is a process with its own seed.  It runs ``PudthpMachine`` under Hypothesis in a
loop, one run per derived seed (``examples_per_run`` programs), until its time is up.

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

The campaign is ``fuzz.supervisor``'s, with this engine plugged in (``HypothesisEngine``):
each worker is a process of its own (``fuzz.pipe_worker``) running ``worker_main``; the
supervisor archives each distinct signature once in ``--findings``, tells the other workers
(and with ``--hub`` other machines) about it, restarts a worker that dies or goes over its
memory limit, stops the workers at the deadline or on Ctrl-C / SIGTERM (they send what they
have, without the extra pass), prints progress, the summary and the model-state coverage
table of every program the workers ran (``harness.coverage``; also written to
``--findings`` as ``coverage-<time>-hypothesis-seed<N>.txt``), and returns 1 if anything
was found, 0 if not.  Signatures another machine found (``--hub``) are sent to the
workers as known: a worker that meets one says so, and it counts as found here.  A program
over its time cap (``--max-program-time``) or a worker over its memory limit
(``--max-rss``) is no finding (``harness.limits``): the program is dropped and counted, and
after a memory limit the worker is restarted.

Memory: Hypothesis keeps every test case of a run, its result and its choices in the data
tree, until the run ends, and nothing of it after; so a run is as many programs as
``RUN_STEPS`` steps make (``examples_per_run``), and a worker's resident memory is bounded
by what one run keeps, however long the campaign.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
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

from fuzz.hub import DEFAULT_CAMPAIGN, example_database
from fuzz.link import CampaignLink
from fuzz.machine import FindingError, Observer, StopFuzzing, make_machine, program_size
from fuzz.pipe_worker import Channel, Message, PipeWorker
from fuzz.supervisor import (
    Done,
    Event,
    Exit,
    Features,
    Found,
    KnownHit,
    Limit,
    Note,
    Progress,
    Restart,
    Slot,
    Supervisor,
    Warn,
    Worker,
    exit_of,
    worker_seed,
)
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
from harness.shrink import ddmin_ops, run_options
from harness.signature import SIGNATURE_FORMAT
from pudthp_ref.spec import Config, Finding, Program

ENGINE = "hypothesis"
# Hypothesis keeps every test case of a run until the run ends: its result (about 2 KB per
# step of the program) and its choices in the data tree (about 0.6 KB per step).  Runs of
# 2,000 programs of 100 steps grew a worker by 4-7 MB/s to 700 MB and more; runs of
# RUN_STEPS steps keep it about 80 MB above its base.
RUN_STEPS = 30_000
EXAMPLES_PER_RUN = 2000  # ... and at most this many programs, however short
STEPS_PER_PROGRAM = 100
SHRINK_SECONDS = 20.0  # Hypothesis' share of shrinking one finding
MINIMISE_SECONDS = 20.0  # then delta debugging's, for all the findings of one run
COVERAGE_SECONDS = 5.0  # how often a worker sends its model-state coverage so far
HARD_STOP_SECONDS = 30.0  # after the grace period, workers still running are terminated


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
    max_examples: int | None = None  # programs per run (None: ``examples_per_run``)
    # programs its runs generate in all (a run that fails counts those up to its first
    # failing one; shrinking's are not counted); None: until the time is up
    max_programs: int | None = None
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


def examples_per_run(step_count: int) -> int:
    """Programs per Hypothesis run for programs of up to ``step_count`` steps."""
    return max(1, min(EXAMPLES_PER_RUN, RUN_STEPS // max(1, step_count)))


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
    told: set[str] = set()  # known signatures met again, said to the parent

    def tell_known_hits(o: Observer) -> None:
        for sig in sorted(o.known_hits - told):
            emit(("known", spec.index, sig))
            told.add(sig)

    def progress(o: Observer) -> None:
        # a known signature met again is said at once, not when the run ends: the
        # progress line counts it as the summary will
        tell_known_hits(o)
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
    examples = spec.max_examples or examples_per_run(spec.step_count)
    sent = 0
    run = 0
    generated = 0  # programs generated by the runs so far (``max_programs``)
    try:
        while not obs.should_stop():
            if spec.max_runs is not None and run >= spec.max_runs:
                break
            if spec.max_programs is not None and generated >= spec.max_programs:
                break
            if spec.max_findings is not None and sent >= spec.max_findings:
                break
            if known_updates is not None:
                obs.known.update(known_updates())
            interrupted = False
            reported: set[str] = set()
            limits_before = len(obs.limit_hits)
            budget_run = (examples if spec.max_programs is None
                          else min(examples, spec.max_programs - generated))
            programs_before = obs.programs
            hsettings = fuzz_settings(budget_run, spec.step_count, database, reuse)
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
            tell_known_hits(obs)
            # the programs the run generated (up to its first failure: then it shrinks);
            # Hypothesis may stop short of its budget (no new choices left), and the next
            # run, with the next seed, goes on; a run that ran none counts as done
            ran = (obs.programs if obs.programs_at_failure is None
                   else obs.programs_at_failure) - programs_before
            generated += ran if ran > 0 else budget_run
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
        # the last counts go out as progress: a worker done before its first progress
        # report (a few programs) must not count as one that ran nothing
        emit(("progress", spec.index, obs.programs, obs.steps))
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
        "signature_format": SIGNATURE_FORMAT,
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
        **run_options(program),  # the fast paths it ran on: it replays on them
    }
    return {
        "signature": finding.signature,
        "kind": finding.kind,
        "ops": len(program.ops),
        "program": dump_program(Program(program.config, program.ops, meta)),
    }


def worker_main(spec: WorkerSpec, conn: Any, parent_pid: int) -> None:
    """Process entry point.  ``conn`` is this worker's own pipe to the parent
    (``fuzz.pipe_worker``: messages out, ``("known", signature)`` and ``("stop",)`` in); a
    worker whose parent is gone stops by itself."""
    channel = Channel(conn, parent_pid)
    IMPL_FACTORIES[spec.impl]()  # imported before the limit: numpy's reservations
    gate = Gate()
    try:
        with memory_limit(spec.max_rss, gate):
            run_worker(spec, channel.emit, channel.updates, channel.stop_requested, gate)
    except LimitExceeded as e:  # between two runs: what was found is sent already
        channel.emit(("limit", spec.index, e.kind, str(e)))
        channel.emit(("restart", spec.index, f"{e.kind} limit"))


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
    """The program of a finding payload, parsed back (docs/format.md "Programs")."""
    return parse_program(json.loads(payload["program"]), "<finding>")


# --------------------------------------------------------------------------------------
# The campaign: the engine's plug-in of the supervisor
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
    programs: int | None = None  # programs in all, shared among the workers (None: by time)
    stop_on_first: bool = False  # end at the first new finding, once it is archived
    quiet: bool = False  # no progress on the terminal: the summary only
    junit: str | None = None  # where the JUnit XML report goes (None: none)


def programs_share(programs: int, workers: int, index: int) -> int:
    """Worker ``index``'s share of ``programs`` programs: as even as can be, the first
    workers taking one more."""
    return programs // workers + (index < programs % workers)


def grace_for(time_limit: float) -> float:
    """Extra time a worker may take to finish shrinking a finding after the deadline."""
    return min(60.0, max(10.0, time_limit / 2))


def translate(msg: Message) -> Event | None:
    """A worker's message (``run_worker``) as the supervisor's event."""
    kind = msg[0]
    if kind == "progress":
        return Progress(msg[2], msg[3])
    if kind == "coverage":
        return Features(Tally.from_json(msg[2]))
    if kind == "finding":
        p = msg[2]
        return Found(p["signature"], p["kind"], p["ops"], p["program"])
    if kind == "known":
        return KnownHit(msg[2])
    if kind == "limit":
        return Limit(msg[2], msg[3])
    if kind == "warning":
        return Warn(msg[2])
    if kind == "note":
        return Note(msg[2])
    if kind == "restart":
        return Restart(msg[2])
    if kind == "done":
        return Done()
    return None


def send_known(sup: Supervisor, signatures: list[str]) -> None:
    """Tell every running worker of ``sup`` the newly known ``signatures`` (it stops
    shrinking them; meeting one again is a known hit)."""
    for s in sup.slots:
        if isinstance(s.worker, PipeWorker) and not s.finished:
            for sig in signatures:
                s.worker.send(("known", sig))


class HypothesisEngine:
    """The supervisor's plug-in (``fuzz.supervisor.Engine``): a worker is a process running
    ``worker_main`` over its own pipe (``fuzz.pipe_worker``); it shrinks what it finds
    itself and says ``done`` at the end, so any other end is a death."""

    name = ENGINE
    unit = "steps"

    def __init__(self, c: Campaign) -> None:
        self.c = c
        self.grace = grace_for(c.time_limit)
        # workers still shrinking past the deadline get the grace, then a little more
        self.stop_grace = self.grace + HARD_STOP_SECONDS
        self.sup: Supervisor | None = None

    def open(self, sup: Supervisor) -> None:
        self.sup = sup

    def close(self) -> None:
        pass

    def banner(self) -> str:
        c = self.c
        seeds = [worker_seed(c.seed, i, 0, c.workers) for i in range(c.workers)]
        length = f"{c.programs} programs" if c.programs is not None else f"{c.time_limit:g} s"
        return (f"engine {ENGINE}, {c.workers} worker(s), {length}, seed {c.seed} "
                f"(worker seeds {seeds[0]}..{seeds[-1]}), config "
                f"{_config_text(c.overrides)}, impl {c.impl}, findings -> {c.findings_dir}")

    def seed_of(self, n: int) -> int:
        return n

    def start(self, slot: Slot, remaining: float) -> Worker:
        assert self.sup is not None
        c = self.c
        hub = c.link.hub if c.link is not None else None
        known = self.sup.signatures | set(self.sup.known)
        spec = WorkerSpec(slot.index, slot.seed, dict(c.overrides), c.impl, c.check,
                          None if math.isinf(remaining) else remaining, self.grace,
                          max_programs=None if c.programs is None
                          else programs_share(c.programs, c.workers, slot.index),
                          step_count=c.max_ops,
                          program_seconds=c.program_seconds, max_rss=c.max_rss,
                          example_db=c.example_db,
                          hub=hub.url if hub is not None else None,
                          hub_campaign=hub.campaign if hub is not None else DEFAULT_CAMPAIGN,
                          known=tuple(sorted(known)))
        return PipeWorker(worker_main, (spec,), f"pudthp-fuzz-{slot.index}", translate)

    def exited(self, slot: Slot, status: int) -> Exit:
        return exit_of(slot, status)

    def known(self, signatures: list[str]) -> None:
        assert self.sup is not None
        send_known(self.sup, signatures)

    def progress(self, programs: int, steps: int, rate: float) -> str:
        return f"programs {programs}  steps {steps}  {rate:,.0f} steps/s"

    def counts(self, programs: int, steps: int, elapsed: float) -> str:
        rate = steps / elapsed if elapsed > 0 else 0.0
        return (f"{programs} programs, {steps} steps ({rate:,.0f} steps/s over "
                f"{self.c.workers} worker(s))")

    def corpus_size(self) -> int | None:
        return None

    def cannot_run(self) -> str:
        return "no worker could run the state machine"


def run_campaign(c: Campaign) -> int:
    """The whole campaign; returns the exit status (0 nothing, 1 findings, 130 Ctrl-C, 143
    SIGTERM)."""
    Config.from_json(c.overrides)  # a bad key fails here, before anything starts
    return Supervisor(HypothesisEngine(c), c).run()


def _config_text(overrides: dict[str, Any]) -> str:
    if not overrides:
        return "drawn per program from the correct designs"
    return " ".join(f"{k}={v}" for k, v in sorted(overrides.items())) + " (rest drawn)"
