"""``pudthp fuzz --impl kernel``: a kernel campaign as the supervisor's plug-in
(``fuzz.supervisor``), the Hypothesis kernel machine (``fuzz.kernel.search``) in one worker
process of its own (``fuzz.pipe_worker``).

The worker holds the live kernel for its whole life (``KernelMachine``: the conform lock,
the settings saved, recorded on disk and restored, the zygote, the huge-zero-folio holder,
the swap device); a second kernel campaign on the machine waits for the lock and, when it
does not get it, cannot run here (exit 4).  So global counters are one campaign's: one
worker, a larger ``--workers`` is clamped to 1 (said in the banner).  The parent checks
the machine first (root, PMD THP: otherwise one line, exit 4) and, once the worker is gone
however it ended (a SIGKILL, the OOM killer), puts back under the lock whatever the
worker's record says it left changed (``live.restore_recorded``), as the next ``pudthp
conform`` would.

The worker searches until its time is up or it is told to stop: each finding is shrunk on
the kernel and sent with its C reproducer; the parent archives the program once
(``Supervisor.write``) and the C file beside it as ``<name>.c``.  Its counts: programs and
the ops run on the kernel (``unit`` ``ops``), the model-state features (the supervisor's
table) and the kernel-observation features and ``KNOWN`` disagreements met (printed after
it by ``report_extra``).
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from fuzz.archive import finding_path, write_beside
from fuzz.engine_hypothesis import send_known
from fuzz.link import CampaignLink
from fuzz.pipe_worker import Channel, Message, PipeWorker
from fuzz.supervisor import (
    CannotRun,
    Done,
    Event,
    Exit,
    Features,
    Found,
    KnownHit,
    Note,
    Progress,
    Slot,
    Supervisor,
    Warn,
    Worker,
    exit_of,
)
from harness.coverage import Tally

ENGINE = "hypothesis"
PROGRESS_SECONDS = 1.0  # how often the worker says its counts
FEATURES_SECONDS = 5.0  # ... and its feature tallies


@dataclass
class KernelCampaign:
    """A kernel campaign's options (``fuzz.supervisor.Options`` and the worker's)."""

    time_limit: float
    findings_dir: str
    seed: int
    strict: bool = False
    max_ops: int | None = None
    asked_workers: int = 1
    workers: int = 1  # always: the kernel's counters are machine-wide
    err: TextIO = field(default_factory=lambda: sys.stderr)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    link: CampaignLink | None = None


@dataclass(frozen=True)
class KernelWorkerSpec:
    index: int
    seed: int
    ends: float  # when the worker's time is up (``time.time()``: taking the kernel counts)
    strict: bool
    steps: int
    known: tuple[str, ...]


def kernel_worker_main(spec: KernelWorkerSpec, conn: Any, parent_pid: int) -> None:
    """Process entry point: the kernel for the worker's life, the search until the time is
    up or the parent says stop; messages as ``translate`` reads them."""
    from harness.conform.campaign import KernelMachine
    from harness.conform.compare import CannotRun as KernelCannotRun

    channel = Channel(conn, parent_pid)
    i = spec.index
    try:
        with KernelMachine(say=lambda text: channel.emit(("note", i, text))) as machine:
            run_kernel_worker(spec, machine, channel)
    except KernelCannotRun as e:
        channel.emit(("failed", i, str(e)))
    except Exception as e:  # the kernel side's own failure: said, never a finding
        channel.emit(("warning", i, f"{type(e).__name__}: {e}"))
        channel.emit(("failed", i, f"stopped: {type(e).__name__}: {e}"))


def run_kernel_worker(spec: KernelWorkerSpec, machine: Any, channel: Channel) -> None:
    from fuzz.kernel import KernelFinding, search
    from fuzz.machine import Observer
    from harness.conform.kfeatures import KTally

    i = spec.index
    start = time.monotonic()
    deadline = start + max(0.0, spec.ends - time.time())
    ktally = KTally()
    ops0 = machine.ops
    times = {"progress": start, "features": start + FEATURES_SECONDS}

    def progress(o: Observer) -> None:
        o.known.update(channel.updates())
        now = time.monotonic()
        if now >= times["progress"]:
            times["progress"] = now + PROGRESS_SECONDS
            channel.emit(("progress", i, o.programs, machine.ops - ops0))
        if now >= times["features"]:
            times["features"] = now + FEATURES_SECONDS
            channel.emit(("coverage", i, o.tally.to_json(), ktally.to_json()))

    def found(f: KernelFinding) -> None:
        channel.emit(("finding", i, f.payload()))

    obs = Observer(known=set(spec.known), deadline=deadline,
                   stop_requested=channel.stop_requested, on_progress=progress)
    r = search(machine, spec.seed, sys.maxsize, steps=spec.steps, strict=spec.strict,
               deadline=deadline, stop_requested=channel.stop_requested,
               on_finding=found, observer=obs, ktally=ktally)
    for text in r.problems:
        channel.emit(("warning", i, text))
    for sig in sorted(r.known_hits):
        channel.emit(("known", i, sig))
    channel.emit(("counts", i, r.counts.to_json()))
    channel.emit(("progress", i, r.programs, r.ops))
    channel.emit(("coverage", i, obs.tally.to_json(), ktally.to_json()))
    channel.emit(("done", i))


class KernelEngine:
    """The supervisor's plug-in for a kernel campaign (module docstring)."""

    name = ENGINE
    unit = "ops"
    stop_grace = 150.0  # a finding's shrink on the kernel (``fuzz.kernel.SHRINK_SECONDS``)

    def __init__(self, c: KernelCampaign) -> None:
        from harness.conform.kfeatures import KTally

        self.c = c
        self.sup: Supervisor | None = None
        self.ktally = KTally()
        self.ktally_done = KTally()
        self.known_counts: dict[str, int] = {}
        self.noise = 0
        self.c_files: dict[str, str] = {}  # signature -> its C file written
        self.failures: dict[int, str] = {}  # slot -> why its worker could not run

    # -- life ------------------------------------------------------------------------------

    def open(self, sup: Supervisor) -> None:
        from harness.conform import kernel as k
        from harness.conform import live

        try:
            live.check_machine()
        except k.KernelError as e:
            raise CannotRun(str(e)) from None
        self.sup = sup

    def close(self) -> None:
        """Put back what a worker killed mid-program left changed (its on-disk record)."""
        from harness.conform import kernel as k
        from harness.conform import live

        try:
            with live.run_lock():
                pid, restored = live.restore_recorded()
        except (k.KernelError, OSError) as e:
            if self.sup is not None:
                self.sup.warnings.append(f"could not restore the kernel settings: {e}; run "
                                         "'pudthp conform --restore'")
            return
        if pid is not None and self.sup is not None:
            self.sup.say(f"restored what the killed worker (pid {pid}) left changed: "
                         + (", ".join(restored) or "nothing had changed"))

    def banner(self) -> str:
        c = self.c
        clamp = (f" (--workers {c.asked_workers} clamped to 1: the kernel's counters are "
                 "machine-wide)" if c.asked_workers > 1 else "")
        known = ("strict: known disagreements are findings" if c.strict
                 else "known disagreements counted")
        return (f"engine {ENGINE} on the live kernel {os.uname().release}, 1 worker{clamp}, "
                f"{c.time_limit:g} s, seed {c.seed}, {known}, findings -> {c.findings_dir}")

    def seed_of(self, n: int) -> int:
        return n

    def start(self, slot: Slot, remaining: float) -> Worker:
        from fuzz.kernel import STEPS_PER_PROGRAM

        assert self.sup is not None
        known = self.sup.signatures | set(self.sup.known)
        spec = KernelWorkerSpec(slot.index, slot.seed, time.time() + max(1.0, remaining),
                                self.c.strict,
                                self.c.max_ops or STEPS_PER_PROGRAM, tuple(sorted(known)))
        if self.ktally.programs:
            self.ktally_done.merge(self.ktally)
        self.ktally = type(self.ktally)()
        return PipeWorker(kernel_worker_main, (spec,), f"pudthp-kernel-{slot.index}",
                          self.translate)

    def translate(self, msg: Message) -> Event | None:
        from harness.conform.kfeatures import KTally

        kind = msg[0]
        if kind == "progress":
            return Progress(msg[2], msg[3])
        if kind == "coverage":
            self.ktally = KTally.from_json(msg[3])
            return Features(Tally.from_json(msg[2]))
        if kind == "finding":
            return self.found(msg[2])
        if kind == "known":
            return KnownHit(msg[2])
        if kind == "counts":
            from fuzz.kmachine import KernelCounts

            counts = KernelCounts.from_json(msg[2])
            for name, n in counts.known.items():
                self.known_counts[name] = self.known_counts.get(name, 0) + n
            self.noise += counts.noise
            return None
        if kind == "warning":
            return Warn(msg[2])
        if kind == "failed":
            self.failures[msg[1]] = msg[2]
            return None
        if kind == "note":
            return Note(msg[2])
        if kind == "done":
            return Done()
        return None

    def found(self, p: dict[str, Any]) -> Found:
        """A finding for the archive; its C file goes beside it once it is written."""
        c_text = p.get("c")
        sig = str(p["signature"])
        note = ("" if c_text else
                f" (no C reproducer: {p.get('c_problem') or 'the program cannot be exported'})")

        def written() -> None:
            if not c_text:
                return
            c_path = finding_path(self.c.findings_dir, sig).removesuffix(".json") + ".c"
            try:
                if not os.path.exists(c_path):
                    write_beside(c_path, c_text)
                self.c_files[sig] = c_path
            except OSError as e:
                if self.sup is not None:
                    self.sup.warnings.append(f"{c_path}: {e.strerror or e}")

        return Found(sig, str(p["kind"]), int(p["ops"]), str(p["program"]), note, written)

    def exited(self, slot: Slot, status: int) -> Exit:
        why = self.failures.pop(slot.index, None)
        if why is not None:
            return Exit(failed=f"could not run: {why}")
        return exit_of(slot, status)

    def known(self, signatures: list[str]) -> None:
        assert self.sup is not None
        send_known(self.sup, signatures)

    def progress(self, programs: int, steps: int, rate: float) -> str:
        return f"programs {programs}  kernel ops {steps}  {rate:,.1f} ops/s"

    def counts(self, programs: int, steps: int, elapsed: float) -> str:
        rate = steps / elapsed if elapsed > 0 else 0.0
        known = sum(self.known_counts.values())
        return (f"{programs} programs, {steps} ops on the kernel ({rate:,.1f} ops/s), "
                f"{known} known disagreement(s) explained"
                + (f" ({', '.join(f'{k} {n}' for k, n in sorted(self.known_counts.items()))})"
                   if known else ""))

    def corpus_size(self) -> int | None:
        return None

    def cannot_run(self) -> str:
        return "the worker could not have the live kernel"

    def report_extra(self) -> str:
        """The kernel-observation feature table, after the model-state one."""
        total = type(self.ktally).total([self.ktally_done, self.ktally])
        lines = [total.table(f"pudthp fuzz: kernel-observation features ({ENGINE})")]
        lines += [f"  C reproducer {path}\n" for _, path in sorted(self.c_files.items())]
        return "".join(lines)


def run_kernel_campaign(c: KernelCampaign) -> int:
    """The whole kernel campaign; the exit status as ``fuzz.supervisor.Supervisor.run``."""
    return Supervisor(KernelEngine(c), c).run()
