"""A campaign's parent process, whatever its engine: worker slots, restarts, the deadline,
signals, findings archived once, progress, the hub and stats link, the summary and the exit
status.

An engine is a plug-in (``Engine``; ``fuzz.engine_hypothesis``, ``fuzz.engine_atheris``).
It only knows how to start a worker in a slot and what the worker says:

- ``open(sup)`` / ``close()``: what the campaign holds for its whole life (a run directory
  and its lock; a machine-wide lock and the kernel settings it changed).  ``open`` runs
  before any worker starts and either returns holding everything or raises holding
  nothing; ``close`` runs once the workers are gone, on every way out: the deadline, Ctrl-C,
  SIGTERM, an error.  A signal during ``open`` ends the campaign there (``open`` is
  interrupted, and gives back what it took); ``open`` raising ``CannotRun`` (another
  campaign holds the machine, a privilege is missing) ends it as "cannot run here", exit 4.
- ``start(slot, remaining)``: a ``Worker`` in the slot (a process the supervisor waits on,
  drains of ``Event`` values, asks to stop and kills), with its seed ``slot.seed``;
- ``exited(slot, status)``: what the worker's end means (``Exit``): findings it left behind
  (archived through ``report``), a death to count, a start again;
- ``known(signatures)``: signatures found by another worker or machine, which the running
  workers should not report again;
- ``progress`` / ``counts``: the engine's counters in the progress line and the summary.

The supervisor does the rest, the same for every engine.  Each slot's worker gets the seed
``worker_seed``; a worker that dies early (a signal, the OOM killer) or asks for a fresh
process (over its memory limit) is started again with the slot's next seed for the
remaining time, at most ``MAX_RESTARTS`` times per slot, and counted in the summary.  After
the deadline nothing is started again; ``Engine.stop_grace`` seconds later the workers are
asked to stop and ``KILL_SECONDS`` after that killed.  Ctrl-C or SIGTERM asks every worker
to stop (the engine's slow work in this process, such as shrinking a crash input, is
interrupted; a worker ignores both signals itself, so a signal to the whole process group
is handled here once), a second one kills them; the campaign then writes what was found
and returns 130 or 143.

Findings: the first report of each signature is archived (``fuzz.archive``: atomic,
never overwriting a valid file) and told to the other workers through the engine; one the
directory refuses (a full disk) is kept in memory and written again every
``RETRY_SECONDS``, and printed whole in the summary if it never could be.  Signatures found
before (``known``: by another machine, or archived already where the engine says so) are
not news: a worker that meets one again says so (``KnownHit``), and it counts as found.
Resource limits are never findings: each program dropped at one is counted.
"""

from __future__ import annotations

import contextlib
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from types import FrameType
from typing import Any, Protocol, TextIO

from fuzz.archive import archive, remove_stale_temporaries, write_coverage
from fuzz.link import CampaignLink, features
from fuzz.stats import Sample
from harness import junit
from harness.coverage import Tally
from harness.junit import Case

MAX_RESTARTS = 20  # per worker slot: a slot whose workers keep dying is given up
RETRY_SECONDS = 5.0  # how often findings that could not be written are tried again
KILL_SECONDS = 10.0  # after the workers were asked to stop, how long before they are killed
LIMIT_LINES = 5  # programs dropped at a limit said as they happen; the rest only counted
WAIT_SECONDS = 0.2  # the longest the loop sleeps between two looks at the workers
EXIT_USAGE = 2  # the command line's statuses: nothing was tested
EXIT_CANNOT_RUN = 4  # the kselftest skip code

class CannotRun(Exception):
    """``Engine.open``: this machine cannot run the campaign now; ``str()`` says why."""


# --------------------------------------------------------------------------------------
# What a worker says (its engine turns its messages into these)
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Progress:
    """Counts of the worker's current process so far: programs and steps (ops) run, and
    libFuzzer's coverage and features once it is fuzzing (None before, and for engines
    without them)."""

    programs: int
    steps: int
    cov: int | None = None
    ft: int | None = None


@dataclass(frozen=True, slots=True)
class Features:
    """The model-state features of every program the current process ran so far."""

    tally: Tally


@dataclass(frozen=True, slots=True)
class Found:
    """A finding for the archive: the program JSON with its ``meta`` (docs/format.md "Archived
    findings").
    ``kept_note`` is said after it in the summary if it could never be written;
    ``on_written`` runs once it is on disk (the engine drops its own copy)."""

    signature: str
    kind: str
    ops: int
    text: str
    kept_note: str = ""
    on_written: Callable[[], None] | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class KnownHit:
    """A program met a signature found before (``Supervisor.known``): not reported again."""

    signature: str


@dataclass(frozen=True, slots=True)
class Limit:
    """A program dropped at a resource limit (``kind``: memory, time), never a finding."""

    kind: str
    text: str


@dataclass(frozen=True, slots=True)
class Warn:
    """Something the summary lists (a failure of the worker's own machinery)."""

    text: str


@dataclass(frozen=True, slots=True)
class Note:
    """Something the user is told at once (the shared example database unreachable)."""

    text: str


@dataclass(frozen=True, slots=True)
class Restart:
    """The worker ends early and wants a fresh process (it went over its memory limit)."""

    reason: str


@dataclass(frozen=True, slots=True)
class Done:
    """The worker ended its work (time up, or stopped); it exits next."""


Event = Progress | Features | Found | KnownHit | Limit | Warn | Note | Restart | Done


class Worker(Protocol):
    """One worker process as its engine started it."""

    def waitables(self) -> list[Any]:
        """What ``multiprocessing.connection.wait`` can wait on for news of it (its pipe,
        its process sentinel); empty: it is looked at every ``WAIT_SECONDS``."""

    def events(self) -> list[Event]:
        """What it said since the last call; never blocks."""

    def exit_status(self) -> int | None:
        """None while it runs; then its exit status (negative: the signal that ended it)."""

    def wait(self) -> int:
        """Wait for its end (it has ended or was killed) and free what it held: its exit
        status.  Called again after an interrupted ``Engine.exited``: the same answer."""

    def stop(self) -> None:
        """Ask it to stop, sending what it has."""

    def kill(self) -> None:
        """Kill it at once (SIGKILL)."""


@dataclass(frozen=True, slots=True)
class Exit:
    """What a worker's end means.  ``again``: start another process in the slot while time
    is left; ``death``: it ended early (counted as a restart and listed; with ``again``
    started again at most ``MAX_RESTARTS`` times); ``failed``: it could not run at all
    (said as a warning; never started again; when every slot failed the campaign cannot
    run here)."""

    again: bool = False
    death: str | None = None
    failed: str | None = None


def died(status: int) -> str:
    """How a process that ended early with ``status`` is described."""
    if status < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-status).name}"
    return f"exited with status {status}"


def worker_seed(seed: int, index: int, start: int, workers: int) -> int:
    """The ``start``-th seed (0 first) of slot ``index``: ``seed + index + start *
    workers``, so no two workers of a campaign share one (``Engine.seed_of`` maps it into
    the engine's range)."""
    return seed + index + start * workers


@dataclass
class Slot:
    """One worker slot: the process running in it now and what it said."""

    index: int
    worker: Worker | None = None
    seed: int = 0
    starts: int = 0
    done: bool = False  # the current process said Done
    restart: str | None = None  # ... asked for a fresh process, and why
    counts: tuple[int, int] = (0, 0)  # programs and steps of the current process
    base: tuple[int, int] = (0, 0)  # ... of the earlier ones
    cov: int | None = None  # libFuzzer's coverage and features, as last said
    ft: int | None = None
    finished: bool = False  # no process runs or will run in this slot
    failed: bool = False  # ... because its worker could not run at all
    restarts: list[str] = field(default_factory=list)
    tally: Tally | None = None  # features of the current process, as it last said
    tally_done: Tally = field(default_factory=Tally)  # ... of the earlier ones

    def total(self) -> tuple[int, int]:
        return self.base[0] + self.counts[0], self.base[1] + self.counts[1]


def exit_of(slot: Slot, status: int) -> Exit:
    """The end of a worker that says ``Done`` when its work is over and ``Restart`` when it
    wants a fresh process: anything else is a death."""
    if slot.restart is not None:
        return Exit(again=True, death=slot.restart)
    if not slot.done:
        return Exit(again=True, death=died(status))
    return Exit()


class Engine(Protocol):
    """The plug-in of one kind of campaign (see the module docstring)."""

    name: str  # meta.engine of its findings, the stats' engine, the coverage table's title
    unit: str  # what its rate counts: "steps" (ops of programs) or "execs" (programs)
    stop_grace: float  # seconds past the deadline its workers may take to end on their own

    def open(self, sup: Supervisor) -> None: ...

    def close(self) -> None: ...

    def banner(self) -> str:
        """The campaign's first line (after ``pudthp fuzz: ``)."""

    def seed_of(self, n: int) -> int:
        """A worker's seed in the engine's range, from ``worker_seed``."""

    def start(self, slot: Slot, remaining: float) -> Worker: ...

    def exited(self, slot: Slot, status: int) -> Exit: ...

    def known(self, signatures: list[str]) -> None: ...

    def progress(self, programs: int, steps: int, rate: float) -> str:
        """The engine's part of a progress line."""

    def counts(self, programs: int, steps: int, elapsed: float) -> str:
        """The engine's part of the summary's first line."""

    def corpus_size(self) -> int | None: ...

    def cannot_run(self) -> str:
        """Why the campaign cannot run here, when no worker could run at all."""


class Options(Protocol):
    """What the supervisor reads of a campaign's options.  Read where present (an engine's
    options may leave them out): ``stop_on_first`` (stop the workers once the first new
    finding is archived), ``quiet`` (nothing on ``err`` but errors; the summary and the
    coverage headline on ``out``) and ``junit`` (a path for the JUnit XML report, one case
    per distinct finding)."""

    time_limit: float
    workers: int
    findings_dir: str
    seed: int
    err: TextIO
    out: TextIO
    link: CampaignLink | None


@dataclass(frozen=True, slots=True)
class Archived:
    path: str
    finding: Found
    new: bool


@dataclass
class Unwritten:
    finding: Found
    reason: str


class Supervisor:
    """One campaign: ``run()`` returns its exit status."""

    def __init__(self, engine: Engine, c: Options) -> None:
        self.engine = engine
        self.c = c
        self.start = time.monotonic()
        self.deadline = self.start + c.time_limit
        self.slots = [Slot(i) for i in range(c.workers)]
        self.archived: list[Archived] = []
        self.unwritten: list[Unwritten] = []
        self.signatures: set[str] = set()  # reported by this campaign's workers
        # signature -> its file (or ""): found before or elsewhere, not news here
        self.known: dict[str, str] = {}
        self.known_hits: set[str] = set()  # ... that this campaign's programs met again
        self.offered: set[str] = set()  # known hits offered to the hub
        self.warnings: list[str] = []
        self.limits: list[Limit] = []
        self.signals: list[int] = []
        self.stopping = False  # nothing is started again
        self.asked = False  # the workers were asked to stop
        self.next_retry = 0.0
        self.tty = c.err.isatty()
        self.quiet = bool(getattr(c, "quiet", False))  # the summary only
        self.stop_on_first = bool(getattr(c, "stop_on_first", False))
        self._interruptible = False

    # -- the whole campaign --------------------------------------------------------------

    def run(self) -> int:
        """Open the engine, run the workers until the end, close the engine; print the
        summary and the coverage table; the exit status (0 nothing found, 1 findings, 2 no
        program ran to its end, 4 no worker could run, 130 Ctrl-C, 143 SIGTERM)."""
        old = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT,
                                                                     signal.SIGTERM)}
        ended: float | None = None
        try:
            stale = remove_stale_temporaries(self.c.findings_dir)
            opened = False
            try:
                with contextlib.suppress(KeyboardInterrupt), self.interruptible():
                    self.engine.open(self)
                    opened = True
            except CannotRun as e:
                if self.c.link is not None:
                    self.c.link.close()
                print(f"pudthp: cannot run here: {e}", file=self.c.err)
                return EXIT_CANNOT_RUN
            if opened:
                try:
                    self.say_plain(self.engine.banner() + (
                        f" ({stale} temporary file(s) of a killed campaign removed)"
                        if stale else ""))
                    self.tell_hub_known()
                    if not self.signals:
                        for s in self.slots:
                            self.launch(s)
                        self.loop()
                    self.finish()
                finally:
                    self.kill_all()
                    self.engine.close()
            ended = time.monotonic()  # the rate leaves out the wait for other machines
            self.link_finish()
        finally:
            for sig, handler in old.items():
                signal.signal(sig, handler)
        self.clear()
        elapsed = (ended if ended is not None else time.monotonic()) - self.start
        self.summary(elapsed)
        self.coverage_report()
        self.junit_report(elapsed)
        return self.status()

    def status(self) -> int:
        if self.signals:
            return 128 + self.signals[0]  # 130 Ctrl-C, 143 SIGTERM
        if self.slots and all(s.failed for s in self.slots):
            print(f"pudthp: cannot run here: {self.engine.cannot_run()} (see the warnings)",
                  file=self.c.err)
            return EXIT_CANNOT_RUN
        if self.distinct() or self.unwritten:
            return 1
        programs, _ = self.totals()
        if programs <= len(self.limits):  # nothing was tested: never "no finding"
            print(f"pudthp: error: no program ran to its end ({programs} started, "
                  f"{len(self.limits)} stopped at a resource limit): nothing was tested; "
                  "raise --max-rss or --max-program-time", file=self.c.err)
            return EXIT_USAGE
        return 0

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.signals.append(signum)
        if self._interruptible:
            self._interruptible = False
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def interruptible(self) -> Iterator[None]:
        """Slow work in this process (the engine's) that a signal cuts short with a
        KeyboardInterrupt; elsewhere a signal is only noted, and the loop acts on it."""
        self._interruptible = True
        try:
            yield
        finally:
            self._interruptible = False

    # -- workers -------------------------------------------------------------------------

    def launch(self, s: Slot) -> None:
        remaining = self.deadline - time.monotonic()
        s.seed = self.engine.seed_of(worker_seed(self.c.seed, s.index, s.starts,
                                                 self.c.workers))
        s.starts += 1
        s.base = s.total()
        s.counts = (0, 0)
        s.done = False
        s.restart = None
        if s.tally is not None:
            s.tally_done.merge(s.tally)
            s.tally = None
        s.worker = self.engine.start(s, remaining)

    def loop(self) -> None:
        every = 1.0 if self.tty else min(10.0, max(2.0, self.c.time_limit / 5))
        last_print = last_t = self.start
        last_count = 0
        while True:
            live = [s for s in self.slots if not s.finished and s.worker is not None]
            if not live:
                break
            handles = [h for s in live if s.worker is not None for h in s.worker.waitables()]
            if handles:
                wait(handles, timeout=WAIT_SECONDS)
            else:
                time.sleep(WAIT_SECONDS / 2)
            for s in live:
                self.read(s)
                if s.worker is not None and s.worker.exit_status() is not None:
                    self.reap(s)
            if self.signals and not self.asked:
                self.stop_all()
            if len(self.signals) >= 2:  # a second signal: do not wait any longer
                self.kill_all()
            self.retry()
            now = time.monotonic()
            if self.c.link is not None:
                self.offer_known_hits(self.c.link)
                self.hear(self.c.link.tick(self.sample, now))
            if now - last_print >= every:
                count = self.count()
                rate = (count - last_count) / max(now - last_t, 1e-9)
                last_count, last_t, last_print = count, now, now
                self.progress_line(now, rate)
            if now > self.deadline:
                self.stopping = True  # nothing is started again after the deadline
            if now > self.deadline + self.engine.stop_grace and not self.asked:
                self.stop_all()
            if now > self.deadline + self.engine.stop_grace + KILL_SECONDS:
                self.kill_all()

    def read(self, s: Slot) -> None:
        if s.worker is not None:
            for e in s.worker.events():
                self.handle(s, e)

    def reap(self, s: Slot) -> None:
        """Slot ``s``'s process has ended: what its end means, and another in its place
        when it died early or asked for a fresh one, while time is left."""
        assert s.worker is not None
        status = s.worker.wait()
        self.read(s)
        try:
            with self.interruptible():
                verdict = self.engine.exited(s, status)
        except KeyboardInterrupt:
            return  # looked at again next time round, with the campaign stopping
        if verdict.failed is not None:
            s.failed = s.finished = True
            self.warnings.append(f"worker {s.index} {verdict.failed}")
            return
        left = self.deadline - time.monotonic()
        if verdict.again and not self.stopping and not self.signals and left >= 1:
            if verdict.death is not None:
                if len(s.restarts) >= MAX_RESTARTS:
                    self.warnings.append(f"worker {s.index}: {verdict.death}; not restarted "
                                         f"again (it was restarted {len(s.restarts)} times)")
                    s.finished = True
                    return
                s.restarts.append(verdict.death)
                seed = self.engine.seed_of(worker_seed(self.c.seed, s.index, s.starts,
                                                       self.c.workers))
                self.say(f"worker {s.index} {verdict.death}; started again with seed {seed} "
                         f"for the remaining {left:.0f} s")
            self.launch(s)
            return
        if verdict.death is not None:
            s.restarts.append(f"{verdict.death} (not restarted: the campaign was ending)")
        s.finished = True

    def stop_all(self) -> None:
        self.stopping = self.asked = True
        for s in self.slots:
            if s.worker is not None and not s.finished:
                s.worker.stop()

    def kill_all(self) -> None:
        self.stopping = self.asked = True
        for s in self.slots:
            if s.worker is not None and not s.finished and s.worker.exit_status() is None:
                s.worker.kill()

    def finish(self) -> None:
        """Kill what still runs, take what it said and left, write what is unwritten
        (trying a few times, a second apart, before leaving it to the summary)."""
        self.stopping = self.asked = True
        deadline = time.monotonic() + 1
        for s in self.slots:
            if s.worker is None or s.finished:
                continue
            while s.worker.exit_status() is None and time.monotonic() < deadline:
                time.sleep(0.05)
        self.kill_all()
        for s in self.slots:
            if s.worker is not None and not s.finished:
                self.read(s)
                self.reap(s)
        for attempt in range(3):
            if attempt:
                time.sleep(min(RETRY_SECONDS, 1.0))
            self.retry(force=True)
            if not self.unwritten:
                break

    # -- what workers say ----------------------------------------------------------------

    def handle(self, s: Slot, e: Event) -> None:
        if isinstance(e, Progress):
            s.counts = (e.programs, e.steps)
            if e.cov is not None:
                s.cov, s.ft = e.cov, e.ft
        elif isinstance(e, Features):
            s.tally = e.tally
        elif isinstance(e, Done):
            s.done = True
        elif isinstance(e, Restart):
            s.restart = e.reason
        elif isinstance(e, Found):
            self.report(e)
        elif isinstance(e, KnownHit):
            self.known_hits.add(e.signature)
        elif isinstance(e, Limit):
            self.limit(e, f"worker {s.index}: {e.text}")
        elif isinstance(e, Warn):
            self.warnings.append(f"worker {s.index}: {e.text}")
        else:
            self.say(f"worker {s.index}: {e.text}")

    def met_again(self, sig: str) -> bool:
        """Whether ``sig`` is archived or known already; a known one this campaign met
        again is counted as such (the progress line and summary say so)."""
        if sig in self.signatures or sig in self.known:
            if sig not in self.signatures:
                self.known_hits.add(sig)
            return True
        return False

    def limit(self, e: Limit, line: str) -> None:
        """A program dropped at a resource limit: counted, and said while few."""
        self.limits.append(e)
        if len(self.limits) <= LIMIT_LINES:
            self.say(line)

    def report(self, f: Found) -> bool:
        """A finding of this campaign: the first of its signature is told to the engine
        (its workers stop reporting it) and archived.  True once on disk (or a repeat)."""
        if f.signature in self.signatures:
            return True
        self.signatures.add(f.signature)
        self.engine.known([f.signature])
        return self.write(f)

    def write(self, f: Found) -> bool:
        """Archive one finding; on failure keep it for a retry.  True when on disk."""
        sig = f.signature

        def replaced(path: str, problem: str) -> None:
            self.warnings.append(f"{path}: {problem}; rewritten with {sig}")
            self.say(f"{path}: {problem}; rewriting it")

        try:
            path, new = archive(self.c.findings_dir, sig, f.text, replaced)
        except OSError as e:
            reason = e.strerror or str(e)
            if not any(u.finding is f for u in self.unwritten):
                self.unwritten.append(Unwritten(f, reason))
            self.say(f"cannot write a finding to {self.c.findings_dir}: {reason}; "
                     f"{len(self.unwritten)} finding(s) kept in memory, trying again every "
                     f"{RETRY_SECONDS:g} s")
            self.next_retry = time.monotonic() + RETRY_SECONDS
            return False
        self.archived.append(Archived(path, f, new))
        if f.on_written is not None:
            f.on_written()
        if self.c.link is not None:
            self.c.link.archived(sig, path)
        self.say(f"finding ({'new' if new else 'already archived'}) {sig}: {f.ops} ops -> "
                 f"{path}")
        if new and self.stop_on_first and not self.asked:
            self.say("stopping at the first new finding (--stop-on-first)")
            self.stop_all()
        return True

    def retry(self, force: bool = False) -> None:
        if not self.unwritten or (not force and time.monotonic() < self.next_retry):
            return
        waiting, self.unwritten = self.unwritten, []
        for i, u in enumerate(waiting):
            if not self.write(u.finding):
                self.unwritten = waiting[i:]
                return

    # -- the hub and the stats -----------------------------------------------------------

    def tell_hub_known(self) -> None:
        """What other machines found, replayed here, is known from the start: the workers
        go idle on it (a signature the hub only names is not known)."""
        if self.c.link is not None:
            self.hear(sorted(self.c.link.verified()))

    def hear(self, sigs: list[str]) -> None:
        """Signatures other machines found: known, and told to the workers."""
        if not sigs:
            return
        where = dict(self.c.link.pulled) if self.c.link is not None else {}
        news = [s for s in sigs if s not in self.signatures and s not in self.known]
        for sig in sigs:
            self.known.setdefault(sig, where.get(sig, ""))
        if news:
            self.engine.known(news)

    def offer_known_hits(self, link: CampaignLink) -> None:
        """Offer the hub the findings archived here before that were met again, once."""
        for sig in sorted(self.known_hits - self.offered):
            self.offered.add(sig)
            if self.known.get(sig):
                link.archived(sig, self.known[sig])

    def link_finish(self) -> None:
        link = self.c.link
        if link is None:
            return
        self.offer_known_hits(link)
        # with our handlers still on: a signal ends the wait for peers
        self.hear(link.finish(self.sample(), stop=lambda: bool(self.signals)))

    def totals(self) -> tuple[int, int]:
        """Programs and steps of every worker so far."""
        return (sum(s.total()[0] for s in self.slots), sum(s.total()[1] for s in self.slots))

    def count(self) -> int:
        """What the engine's rate counts, so far."""
        programs, steps = self.totals()
        return programs if self.engine.unit == "execs" else steps  # steps, kernel ops

    def distinct(self) -> set[str]:
        return self.signatures | self.known_hits

    def findings_text(self, short: bool = False) -> str:
        """The findings so far, counted alike in the progress line and the summary: the
        distinct ones, those new here, and those found before (archived already, here or by
        another machine through the hub) that were hit again."""
        again = ({a.finding.signature for a in self.archived if not a.new}
                 | (self.known_hits - self.signatures))
        total = len(self.distinct())
        known = f", {len(again)} known (hit again)" if again else ""
        if short:
            return f"{total} ({total - len(again)} new{known})"
        return f"{total} distinct finding(s), {total - len(again)} new{known}"

    def tally(self) -> Tally:
        """The model-state features of every program the workers ran so far."""
        return Tally.total(t for s in self.slots for t in (s.tally_done, s.tally))

    def sample(self) -> Sample:
        programs, _ = self.totals()
        covs = [s.cov for s in self.slots if s.cov is not None]
        fts = [s.ft for s in self.slots if s.ft is not None]
        return Sample(programs=programs, count=self.count(), findings=len(self.distinct()),
                      corpus=self.engine.corpus_size(), cov=max(covs) if covs else None,
                      ft=max(fts) if fts else None, features=features(self.tally()))

    # -- what the user sees --------------------------------------------------------------

    def clear(self) -> None:
        if self.tty:
            print("\r\033[K", end="", file=self.c.err, flush=True)

    def say(self, text: str) -> None:
        """One line on stderr, stamped with the campaign's time."""
        self.say_plain(f"[{time.monotonic() - self.start:6.1f}s] {text}")

    def say_plain(self, text: str) -> None:
        if self.quiet:
            return
        self.clear()
        print(f"pudthp fuzz: {text}", file=self.c.err, flush=True)

    def progress_line(self, now: float, rate: float) -> None:
        if self.quiet:
            return
        programs, steps = self.totals()
        running = sum(1 for s in self.slots if not s.finished)
        line = (f"[{now - self.start:6.1f}s] {self.engine.progress(programs, steps, rate)}"
                f"  findings {self.findings_text(short=True)}  workers {running}/{len(self.slots)}"
                + ("  (stopping)" if self.asked else ""))
        if self.tty:
            print("\r" + line, end="", file=self.c.err, flush=True)
        else:
            print(line, file=self.c.err, flush=True)

    def summary(self, elapsed: float) -> None:
        out = self.c.out
        head = "done"
        if self.signals:
            head = ("interrupted" if self.signals[0] == signal.SIGINT
                    else "terminated (SIGTERM)")
        programs, steps = self.totals()
        known_only = sorted(self.known_hits - self.signatures)
        print(f"pudthp fuzz: {head} after {elapsed:.1f} s: "
              f"{self.engine.counts(programs, steps, elapsed)}, "
              f"{self.findings_text()}", file=out)
        for a in self.archived:
            f = a.finding
            if a.new:
                print(f"  new       {a.path}  {f.signature} ({f.ops} ops)", file=out)
            else:
                print(f"  archived  {a.path}  {f.signature} ({f.ops} ops; file kept)",
                      file=out)
        pulled = dict(self.c.link.pulled) if self.c.link is not None else {}
        for sig in known_only:
            print(f"  known     {self.known.get(sig) or '(from the hub)'}  {sig} "
                  + ("(archived by another machine; hit again)" if sig in pulled
                     or not self.known.get(sig) else "(archived before; hit again, file kept)"),
                  file=out)
        for u in self.unwritten:
            f = u.finding
            print(f"  UNWRITTEN {f.signature} ({f.ops} ops): {self.c.findings_dir}: "
                  f"{u.reason}; the program follows{f.kept_note}", file=out)
            for text in f.text.splitlines():
                print(f"    {text}", file=out)
        restarts = [(s.index, r) for s in self.slots for r in s.restarts]
        if restarts:
            print(f"  restarts  {len(restarts)}: "
                  + "; ".join(f"worker {i} {r}" for i, r in restarts), file=out)
        if self.limits:
            kinds: dict[str, int] = {}
            for e in self.limits:
                kinds[e.kind] = kinds.get(e.kind, 0) + 1
            print(f"  limits    {len(self.limits)} program(s) dropped at a resource limit, "
                  "not findings: " + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
                  file=out)
        for text in self.warnings:
            print(f"  warning   {text}", file=out)
        if self.c.link is not None:
            for text in self.c.link.summary_lines():
                print(text, file=out)
        out.flush()

    def junit_report(self, elapsed: float) -> None:
        """With ``junit`` (a path): one test case per distinct finding, failed with its one
        line; a campaign that found nothing is one passing case."""
        path = getattr(self.c, "junit", None)
        if path is None:
            return
        name = f"pudthp fuzz {self.engine.name}"
        cases = [Case(a.finding.signature, name, f"{a.finding.signature}: {a.finding.kind}, "
                      f"{a.finding.ops} ops -> {a.path} ({'new' if a.new else 'archived before'})")
                 for a in self.archived]
        cases += [Case(sig, name, f"{sig}: found before, hit again -> "
                       f"{self.known.get(sig) or '(the hub)'}")
                  for sig in sorted(self.known_hits - self.signatures)]
        cases += [Case(u.finding.signature, name, f"{u.finding.signature}: {u.finding.kind}, "
                       f"{u.finding.ops} ops, not written: {u.reason}") for u in self.unwritten]
        if not cases:
            cases = [Case("campaign", name, None, elapsed)]
        try:
            junit.write(path, name, cases, elapsed)
        except OSError as e:
            print(f"pudthp: error: --junit {path}: {e.strerror or e}", file=self.c.err)

    def coverage_report(self) -> None:
        """Write the campaign's model-state coverage table with the findings, and print its
        headline and the features never hit (the whole table when it cannot be written;
        with ``quiet`` the headline alone)."""
        out = self.c.out
        name = self.engine.name
        text = self.tally().table(f"pudthp fuzz: model-state coverage ({name})")
        lines = text.splitlines()
        never = next(i for i, line in enumerate(lines) if line.startswith("never hit"))
        extra = getattr(self.engine, "report_extra", None)  # an engine's own tables
        extra_text = extra() if extra is not None else ""
        text += extra_text
        try:
            path = write_coverage(self.c.findings_dir, name, self.c.seed, text)
        except OSError as e:
            print(text, end="", file=out)
            print(f"  warning   cannot write the coverage table to {self.c.findings_dir}: {e}",
                  file=out)
        else:
            brief = lines[:1] if self.quiet else [lines[0], *lines[never:]]
            if extra_text and not self.quiet:  # an engine's tables: headline and files
                more = extra_text.splitlines()
                brief += [more[0], *(x for x in more if x.startswith("  C reproducer"))]
            print("\n".join(brief), file=out)
            print(f"coverage table -> {path}", file=out)
        out.flush()
