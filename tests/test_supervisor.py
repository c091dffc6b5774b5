"""The campaign supervisor (``fuzz.supervisor``) with a scripted engine: what a plug-in can
count on.  Whatever ends a campaign (its workers done, Ctrl-C or SIGTERM, a signal while
the engine opens, an error of the engine itself), what the engine opened is closed once
and no worker is left running; a signature is archived once however many workers report
it; a worker that dies is started again with the slot's next seed, at most
``MAX_RESTARTS`` times; the engine's slow work in the campaign's process is cut short by a
signal and done again with the campaign stopping; a campaign whose engine cannot have the
machine, or none of whose workers could run, cannot run here (exit 4).  The real engines
under real faults: test_campaign_faults.
"""

from __future__ import annotations

import io
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

import pytest

from fuzz.supervisor import (
    MAX_RESTARTS,
    CannotRun,
    Done,
    Event,
    Exit,
    Found,
    Progress,
    Slot,
    Supervisor,
    exit_of,
    worker_seed,
)
from harness.program import dump_program
from pudthp_ref.spec import Config, Mmap, Program, Write


@dataclass
class Options:
    findings_dir: str
    time_limit: float = 60.0
    workers: int = 1
    seed: int = 100
    err: TextIO = field(default_factory=io.StringIO)
    out: TextIO = field(default_factory=io.StringIO)
    link: None = None


class Scripted:
    """A worker that says its events on the first look, then runs until ``end`` says it
    has ended (by default at once) or it is stopped or killed."""

    def __init__(self, events: list[Event], status: int = 0,
                 end: Callable[[], bool] = lambda: True) -> None:
        self.script = events
        self.status = status
        self.end = end
        self.looked = False
        self.stopped = False
        self.killed = False

    def waitables(self) -> list[object]:
        return []

    def events(self) -> list[Event]:
        out, self.script = self.script, []
        self.looked = True
        return out

    def exit_status(self) -> int | None:
        if self.killed:
            return -signal.SIGKILL
        return self.status if self.looked and (self.stopped or self.end()) else None

    def wait(self) -> int:
        status = self.exit_status()
        assert status is not None
        return status

    def stop(self) -> None:
        self.stopped = True
        self.script.append(Done())

    def kill(self) -> None:
        self.killed = True


class Engine:
    """Starts ``worker(slot)`` in every slot; counts what it opened and closed."""

    name = "scripted"
    unit = "steps"
    stop_grace = 0.0

    def __init__(self, worker: Callable[[Slot], Scripted]) -> None:
        self.worker = worker
        self.opened = self.closed = 0
        self.started: list[tuple[int, int]] = []
        self.workers: list[Scripted] = []
        self.told: list[str] = []
        self.sup: Supervisor | None = None

    def open(self, sup: Supervisor) -> None:
        self.sup = sup
        self.opened += 1

    def close(self) -> None:
        self.closed += 1

    def banner(self) -> str:
        return "engine scripted"

    def seed_of(self, n: int) -> int:
        return n

    def start(self, slot: Slot, remaining: float) -> Scripted:
        self.started.append((slot.index, slot.seed))
        w = self.worker(slot)
        self.workers.append(w)
        return w

    def exited(self, slot: Slot, status: int) -> Exit:
        return exit_of(slot, status)

    def known(self, signatures: list[str]) -> None:
        self.told += signatures

    def progress(self, programs: int, steps: int, rate: float) -> str:
        return f"programs {programs}"

    def counts(self, programs: int, steps: int, elapsed: float) -> str:
        return f"{programs} programs, {steps} steps"

    def corpus_size(self) -> int | None:
        return None

    def cannot_run(self) -> str:
        return "no worker could run the script"


def found(signature: str) -> Found:
    p = Program(Config(), (Mmap(0, 0, 64, "rw"), Write(0, 0, 1)), {"signature": signature})
    return Found(signature, "invariant", 2, dump_program(p))


def campaign(tmp_path: Path, engine: Engine, **kw: object) -> tuple[int, Options]:
    c = Options(str(tmp_path), **kw)  # type: ignore[arg-type]
    code = Supervisor(engine, c).run()
    assert engine.closed == engine.opened
    assert all(w.killed or w.exit_status() is not None for w in engine.workers), \
        "a worker was left running"
    return code, c


def text(stream: TextIO) -> str:
    assert isinstance(stream, io.StringIO)
    return stream.getvalue()


def test_each_signature_is_archived_once_and_the_engine_closed(tmp_path: Path) -> None:
    engine = Engine(lambda s: Scripted([Progress(3, 30), found("sig:a"), Done()]))
    code, c = campaign(tmp_path, engine, workers=2)
    assert code == 1  # something was found
    assert engine.opened == 1
    assert engine.told == ["sig:a"]  # the other workers are told, once
    assert len(list(tmp_path.glob("*.json"))) == 1
    out = text(c.out)
    assert "done after" in out
    assert "6 programs, 60 steps, 1 distinct finding(s), 1 new" in out
    assert "finding (new) sig:a: 2 ops" in text(c.err)


def test_a_dying_worker_starts_again_with_the_next_seed_until_the_cap(tmp_path: Path) -> None:
    engine = Engine(lambda s: Scripted([Progress(1, 10)], status=-signal.SIGKILL))
    code, c = campaign(tmp_path, engine, workers=2)
    assert code == 0  # deaths are no findings
    # every start of each slot gets the slot's next seed: seed + index + start * workers
    for index in (0, 1):
        seeds = [seed for i, seed in engine.started if i == index]
        assert seeds == [worker_seed(100, index, n, 2) for n in range(MAX_RESTARTS + 1)]
    out = text(c.out)
    assert f"restarts  {2 * MAX_RESTARTS}: worker 0 killed by SIGKILL;" in out
    assert f"not restarted again (it was restarted {MAX_RESTARTS} times)" in out
    assert "killed by SIGKILL; started again with seed 102 for the remaining" in text(c.err)
    # the counts of every process of a slot add up
    assert f"{2 * (MAX_RESTARTS + 1)} programs" in out


def test_sigterm_stops_the_workers_and_closes_the_engine(tmp_path: Path) -> None:
    def worker(slot: Slot) -> Scripted:  # runs until stopped; the first one signals
        if slot.index == 0:
            os.kill(os.getpid(), signal.SIGTERM)
        return Scripted([Progress(2, 20), found(f"sig:{slot.index}")], end=lambda: False)

    engine = Engine(worker)
    code, c = campaign(tmp_path, engine, workers=2)
    assert code == 143
    assert all(w.stopped for w in engine.workers)
    assert "terminated (SIGTERM) after" in text(c.out)
    assert len(list(tmp_path.glob("*.json"))) == 2  # what they found is written


def test_a_signal_while_the_engine_opens_starts_no_worker(tmp_path: Path) -> None:
    class Slow(Engine):
        def open(self, sup: Supervisor) -> None:  # waits for a lock, say, and gives it
            try:                                  # back when interrupted
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
            except BaseException:
                self.given_back = True
                raise
            super().open(sup)

    engine = Slow(lambda s: Scripted([Done()]))
    t = time.monotonic()
    code, c = campaign(tmp_path, engine)
    assert time.monotonic() - t < 20
    assert code == 130
    assert engine.given_back
    assert (engine.opened, engine.closed, engine.started) == (0, 0, [])
    assert "interrupted after" in text(c.out)


def test_an_error_of_the_engine_still_closes_it_and_kills_the_workers(tmp_path: Path) -> None:
    def worker(slot: Slot) -> Scripted:
        if slot.index == 1:
            raise RuntimeError("cannot start")
        return Scripted([], end=lambda: False)

    engine = Engine(worker)
    with pytest.raises(RuntimeError, match="cannot start"):
        campaign(tmp_path, engine, workers=2)
    assert (engine.opened, engine.closed) == (1, 1)
    assert engine.workers[0].killed


def test_slow_work_of_the_engine_is_cut_short_by_a_signal_and_done_again(
        tmp_path: Path) -> None:
    class Judging(Engine):
        calls: list[bool]

        def exited(self, slot: Slot, status: int) -> Exit:
            assert self.sup is not None
            self.calls.append(bool(self.sup.signals))
            if len(self.calls) == 1:  # shrinking a crash input, say, when Ctrl-C comes
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(30)
            return Exit(again=True)  # a finding: start again (not while stopping)

    engine = Judging(lambda s: Scripted([Progress(1, 1)], status=0))
    engine.calls = []
    t = time.monotonic()
    code, _ = campaign(tmp_path, engine)
    assert time.monotonic() - t < 20
    assert code == 130
    assert engine.calls == [False, True]  # again, knowing the campaign is stopping
    assert len(engine.started) == 1


def test_no_worker_that_could_run_is_cannot_run_here(tmp_path: Path) -> None:
    class Failing(Engine):
        def exited(self, slot: Slot, status: int) -> Exit:
            return Exit(failed="exited with status 1 before fuzzing")

    engine = Failing(lambda s: Scripted([], status=1))
    code, c = campaign(tmp_path, engine, workers=2)
    assert code == 4
    assert "pudthp: cannot run here: no worker could run the script" in text(c.err)
    assert "warning   worker 1 exited with status 1 before fuzzing" in text(c.out)


def test_an_engine_that_cannot_have_the_machine_cannot_run_here(tmp_path: Path) -> None:
    class Held(Engine):
        def open(self, sup: Supervisor) -> None:  # another campaign holds the machine
            raise CannotRun("another conformance run holds /run/lock/pudthp-conform.lock")

    engine = Held(lambda s: Scripted([Done()]))
    code, c = campaign(tmp_path, engine)
    assert code == 4
    assert text(c.err).splitlines() == [
        "pudthp: cannot run here: another conformance run holds "
        "/run/lock/pudthp-conform.lock"]
    assert (engine.closed, engine.started, text(c.out)) == (0, [], "")


@pytest.fixture(autouse=True)
def _handlers() -> Iterator[None]:
    """The supervisor puts back the handlers it found (checked after every test)."""
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    yield
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
