"""``pudthp fuzz --engine atheris``: coverage-guided campaigns with libFuzzer.

Each worker is a process running ``python -m fuzz.target`` (the atheris target, whose
docstring says what it hunts and filters out) on the campaign's corpus directory with its own
libFuzzer ``-seed``.  The corpus lives on disk (``--corpus``, default ``corpus/atheris``):
libFuzzer loads it at start, adds every input that reaches new coverage, and with
``-reload`` each worker picks up what the others add; so a stopped campaign resumes where it
left off, and the scenario seeds, the known-bad programs and the archived findings are
encoded into it (files named by content hash, written once) to start from.

A finding makes libFuzzer write the input to ``crash-<sha1>`` (in the campaign's directory,
below) and exit.  The campaign process (``Judge``) decodes it with the target's own config
policy, replays it to get the signature, shrinks it (``harness.shrink``, same signature), and
reports it to the supervisor, which archives it as for every engine (``fuzz.archive``: a
program JSON with metadata named by a short hash of the signature, never overwriting).  The
signature goes into the file of known signatures the targets re-read, and the worker starts
again with the next seed for the remaining time, so one bug is reported once and the search
moves on.  Signatures already in the findings directory are known from the start; a target
that hits one prints so, and it counts as found (exit 1) without being written again.

The campaign is ``fuzz.supervisor``'s, with this engine plugged in (``AtherisEngine``): it
prints progress (total executions and executions per second over all workers, coverage and
features, libFuzzer's ``cov:`` and ``ft:``, corpus size on disk, distinct findings), a
summary (adding the ops run and ops per second) and the model-state coverage table of every
program the targets ran (``harness.coverage``, reported by each target on its output), also
written to ``--findings`` as ``coverage-<time>-atheris-seed<N>.txt``.  Exit 0 nothing found,
1 anything found, 4 no worker could run the target (cannot run here), 130 interrupted
(Ctrl-C) or 143 terminated (SIGTERM): workers stop, artifacts already written are still
decoded and archived (not shrunk).  With ``--hub`` inputs other machines add land in the
corpus directory, where ``-reload`` takes them in.

Faults.  The campaign's own files (the known signatures, libFuzzer's artifacts, a record of
the campaign's settings) live in a hidden directory of the findings directory,
``.pudthp-atheris-PID-XXXX``, locked while the campaign runs (the engine holds it from
``open`` to ``close``).  An artifact is deleted only
once its finding is archived; a campaign killed at any moment leaves the directory, and the
next campaign on that findings directory decodes, shrinks and archives what it finds there
(with the killed campaign's settings) before it starts, then removes it.  Workers die with
the campaign (``PR_SET_PDEATHSIG``).  A worker that dies (a signal, the OOM killer) is
started again with the next seed and counted.  A program over the time cap
(``--max-program-time``, libFuzzer's ``-timeout``) or the memory cap (``--max-rss``,
``-rss_limit_mb``) is no finding: it is counted and the worker starts again.  A finding that
cannot be written (full disk) is kept in memory, tried again, and printed in full at the end
if it never could be.
"""

from __future__ import annotations

import collections
import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import json
import math
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from fuzz.archive import archived_signatures
from fuzz.encoding import EncodeError, encode
from fuzz.link import CampaignLink
from fuzz.mutator import Hunt
from fuzz.supervisor import (
    Event,
    Exit,
    Features,
    Found,
    KnownHit,
    Limit,
    Progress,
    Slot,
    Supervisor,
    Warn,
    Worker,
    died,
)
from harness.coverage import Tally
from harness.limits import LimitExceeded
from harness.program import ProgramError, dump_program, load_program_file
from harness.runner import run_program
from harness.shrink import NoFinding, ShrinkResult, shrink
from harness.signature import SIGNATURE_FORMAT
from pudthp_ref.spec import ConfigError, Finding, Program

ENGINE = "atheris"
DEFAULT_CORPUS = "corpus/atheris"
REPO_CORPUS = Path(__file__).resolve().parents[1] / "corpus"
SEED_DIRS: tuple[Path, ...] = (REPO_CORPUS / "seeds", REPO_CORPUS / "known_bad")
MAX_LEN = 1024  # bytes per input: up to about 200 ops
MAX_OPS = 200  # ops per program: a longer input is cut (Hunt)
INPUT_TIMEOUT = 300  # seconds one input may take before libFuzzer calls it a timeout
STOP_GRACE = 10.0  # after the deadline, workers get this long before SIGINT, then SIGKILL
RUN_DIR_PREFIX = ".pudthp-atheris-"

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+) corp: (\d+)/")
_EXECS = re.compile(r"^pudthp: execs (\d+)")
_OPS = re.compile(r"^pudthp: execs \d+ ops (\d+)")
_FEATURES = re.compile(r"^pudthp: features (\{.*\})$")
_KNOWN = re.compile(r"^pudthp: known finding (\S+)")
_FINAL = re.compile(r"^stat::number_of_executed_units: (\d+)")
_LIMIT = re.compile(r"^pudthp: limit (\w+): (.*)")
_ARTIFACT = re.compile(r"^w(\d+)-s(\d+)-(\w+)-")


@dataclass
class AtherisCampaign:
    time_limit: float
    workers: int
    overrides: dict[str, Any]
    findings_dir: str
    corpus_dir: str = DEFAULT_CORPUS
    seed: int = 1
    impl: str = "both"
    max_len: int = MAX_LEN
    seed_dirs: tuple[Path, ...] = SEED_DIRS
    err: TextIO = field(default_factory=lambda: sys.stderr)
    out: TextIO = field(default_factory=lambda: sys.stdout)
    max_ops: int = MAX_OPS
    program_seconds: float | None = None
    max_rss: int | None = None
    link: CampaignLink | None = None  # the hub and the stats file, if any
    stop_on_first: bool = False  # end at the first new finding, once it is archived
    quiet: bool = False  # no progress on the terminal: the summary only
    junit: str | None = None  # where the JUnit XML report goes (None: none)
    target_args: tuple[str, ...] = ()  # more options of the target (a kernel campaign's)

    def record(self) -> dict[str, Any]:
        """What a later campaign needs to decode this one's artifacts the same way."""
        return {"format": "pudthp-atheris-campaign/1", "pid": os.getpid(),
                "overrides": self.overrides, "impl": self.impl, "max_ops": self.max_ops,
                "seed": self.seed, "corpus_dir": self.corpus_dir}


def libfuzzer_seed(n: int) -> int:
    """libFuzzer's ``-seed`` for the campaign's ``n``-th worker seed
    (``fuzz.supervisor.worker_seed``): modulo 2**32, with 0 (which libFuzzer would replace
    by a random seed) read as 2**32 - 1."""
    return n % 2**32 or 2**32 - 1


def seed_corpus(corpus_dir: str, dirs: list[str]) -> int:
    """Encode every representable program of ``dirs`` into ``corpus_dir`` (named by the
    SHA-1 of the bytes, as libFuzzer names its own); returns how many files were added."""
    added = 0
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            try:
                data = encode(load_program_file(path))
            except (ProgramError, EncodeError):
                continue
            target = os.path.join(corpus_dir, hashlib.sha1(data).hexdigest())
            if not os.path.exists(target):
                _write_atomically(target, data)
                added += 1
    return added


def _write_atomically(path: str, data: bytes) -> None:
    """``data`` under ``path`` whole or not at all (a temporary file renamed)."""
    fd, tmp = tempfile.mkstemp(prefix=".seed-", dir=os.path.dirname(path) or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def make_run_dir(c: AtherisCampaign) -> tuple[str, int]:
    """The campaign's own directory in the findings directory, locked (the lock is held as
    long as the returned descriptor is open), with the campaign's record in it.  It is made
    under another name and renamed once locked, so another campaign never finds it
    unlocked and takes it for the leftovers of a killed one."""
    start = tempfile.mkdtemp(prefix=f".pudthp-starting-{os.getpid()}-", dir=c.findings_dir)
    fd = os.open(os.path.join(start, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with open(os.path.join(start, "campaign.json"), "w", encoding="utf-8") as f:
            f.write(json.dumps(c.record()))
        path = os.path.join(c.findings_dir,
                            RUN_DIR_PREFIX + os.path.basename(start).split("-", 2)[2])
        os.rename(start, path)
    except BaseException:
        os.close(fd)
        shutil.rmtree(start, ignore_errors=True)
        raise
    return path, fd


def left_behind(findings_dir: str) -> list[tuple[str, int]]:
    """The directories of killed campaigns in ``findings_dir`` (no live campaign holds their
    lock), each locked now for this campaign: (path, lock descriptor)."""
    out: list[tuple[str, int]] = []
    for path in sorted(glob.glob(os.path.join(findings_dir, f"{RUN_DIR_PREFIX}*"))):
        if not os.path.isdir(path):
            continue
        try:
            fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)  # a campaign running now
            continue
        out.append((path, fd))
    return out


class LibFuzzerWorker:
    """One libFuzzer process (a ``fuzz.supervisor.Worker``): its output is read by a
    thread of its own and turned into events; its findings are the artifacts it leaves."""

    def __init__(self, argv: list[str], index: int, warned: list[int]) -> None:
        self.index = index
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1,
        )
        self.queue: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self.log: collections.deque[str] = collections.deque(maxlen=200)
        self.inited = False  # fuzzing (past loading the corpus)
        self.warned = warned  # mutator errors said, over all workers
        self.reader = threading.Thread(target=self.read, daemon=True)
        self.reader.start()

    def read(self) -> None:
        assert self.proc.stdout is not None
        execs = ops = cov = ft = 0
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.log.append(line)
            if m := _FEATURES.match(line):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    self.queue.put(Features(Tally.from_json(json.loads(m.group(1)))))
                continue
            if m := _OPS.match(line):
                ops = max(ops, int(m.group(1)))
            if m := _EXECS.match(line):
                execs = max(execs, int(m.group(1)))
            elif m := _STATUS.match(line):
                execs = max(execs, int(m.group(1)))
                cov, ft = int(m.group(3)), int(m.group(4))
                self.inited = self.inited or m.group(2) != "pulse"  # pulses come while loading
            elif m := _KNOWN.match(line):
                self.queue.put(KnownHit(m.group(1)))
                continue
            elif m := _FINAL.match(line):
                execs = max(execs, int(m.group(1)))
            elif m := _LIMIT.match(line):
                self.queue.put(Limit(m.group(1), m.group(2)))
                continue
            elif line.startswith("pudthp: mutator error"):
                if self.warned[0] < 20:
                    self.warned[0] += 1
                    self.queue.put(Warn(line.removeprefix("pudthp: ")))
                continue
            else:
                continue
            self.queue.put(Progress(execs, ops, cov if self.inited else None,
                                    ft if self.inited else None))

    def waitables(self) -> list[Any]:
        return []  # read by its thread: looked at every few tenths of a second

    def events(self) -> list[Event]:
        out: list[Event] = []
        with contextlib.suppress(queue.Empty):
            while True:
                out.append(self.queue.get_nowait())
        return out

    def exit_status(self) -> int | None:
        return self.proc.poll()

    def wait(self) -> int:
        code = self.proc.wait()
        self.reader.join(timeout=5)
        return code

    def stop(self) -> None:
        self._signal(signal.SIGINT)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)


class Judge:
    """What becomes of libFuzzer's artifacts, judged with the settings of the campaign that
    made them (this one, or a killed one whose directory is cleared up): a crash input is
    decoded, replayed, shrunk and reported to the supervisor; a timeout or out-of-memory is
    a program over a limit, never a finding."""

    def __init__(self, c: AtherisCampaign, sup: Supervisor, run_dir: str) -> None:
        self.c = c
        self.sup = sup
        self.run_dir = run_dir
        self.hunt = Hunt(c.overrides, c.max_ops)
        self.atheris_version = _version("atheris")

    def artifact(self, path: str) -> str:
        """Decode, judge and report one artifact; it is deleted once that is done (a crash
        input once its finding is on disk: a kill before leaves it for the next
        campaign).  Its kind."""
        m = _ARTIFACT.match(os.path.basename(path))
        if m is None:
            _unlink(path)
            return "unknown"
        index, seed, kind = int(m.group(1)), int(m.group(2)), m.group(3)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return kind
        if kind in ("crash", "timeout", "oom"):
            program = self.hunt.program(data)
            if kind == "crash":
                self.crash(index, seed, program, path)
                return kind
            self.resource(index, program, kind)
        _unlink(path)  # slow-unit, leak: not findings
        return kind

    def crash(self, index: int, seed: int, program: Program, path: str) -> None:
        """Replay, shrink and report a crash input (its file goes once the finding is on
        disk, or at once when there is nothing to archive)."""
        sup = self.sup
        try:
            finding = run_program(program, self.c.impl).finding
        except LimitExceeded as e:
            sup.limit(Limit(e.kind, str(e)), f"worker {index}: replaying a crash input: {e}")
            _unlink(path)
            return
        if finding is None:
            sup.warnings.append(f"worker {index}: a crash input that does not reproduce "
                                f"({len(program.ops)} ops); not archived")
            _unlink(path)
            return
        sig = finding.signature
        if sup.met_again(sig):
            _unlink(path)
            return
        shrunk, how = program, "none"
        replay: Finding | None = None
        if sup.signals:
            how = "none (interrupted)"
        else:
            sup.say(f"worker {index} found {sig} ({len(program.ops)} ops); shrinking")
            try:
                result, replay = self.shrink(program, sig)
                shrunk, finding = result.program, result.finding
                how = f"ddmin+simplify from {len(program.ops)} ops in {result.seconds:.1f} s"
            except NoFinding as e:
                sup.warnings.append(f"worker {index}: {sig}: not shrunk: {e}")
            except LimitExceeded as e:
                how = f"none (shrinking hit a limit: {e.kind})"
        if replay is None:
            try:
                replay = run_program(shrunk, self.c.impl).finding
            except LimitExceeded:
                replay = None
        meta = self.meta(seed, sig, finding.kind, finding.message, finding.op_index, shrunk)
        meta["shrunk"] = how
        meta["replays"] = replay is not None and replay.signature == sig
        text = dump_program(Program(shrunk.config, shrunk.ops, meta))
        sup.report(Found(sig, finding.kind, len(shrunk.ops), text,
                         kept_note=f" (its input stays in {self.run_dir})",
                         on_written=lambda: _unlink(path)))

    def shrink(self, program: Program, sig: str) -> tuple[ShrinkResult, Finding | None]:
        """Shrink with the reference alone when it reports the same signature (several
        times faster than both), checking the result with the campaign's implementation;
        with the finding that implementation reports for the result."""
        impl = self.c.impl
        if impl != "ref":
            ref = run_program(program, "ref").finding
            if ref is not None and ref.signature == sig:
                result = shrink(program, "ref", signature=sig, keep=self.c.overrides)
                again = run_program(result.program, impl).finding
                if again is not None and again.signature == sig:
                    return result, again
        result = shrink(program, impl, signature=sig, keep=self.c.overrides)
        return result, result.finding  # judged by the campaign's implementation itself

    def resource(self, index: int, program: Program, kind: str) -> None:
        """A libFuzzer timeout or out-of-memory: a program over the campaign's time or
        memory cap, never a finding; counted and said."""
        what = (f"ran over the time cap ({self.c.program_seconds or INPUT_TIMEOUT:g} s)"
                if kind == "timeout"
                else f"went over the memory cap ({self.c.max_rss} MiB)")
        text = f"worker {index}: a program of {len(program.ops)} ops {what}; not a finding"
        self.sup.limit(Limit("time" if kind == "timeout" else "memory", text), text)

    def meta(self, seed: int, sig: str, kind: str, message: str, op_index: int,
             program: Program) -> dict[str, Any]:
        return {
            "signature": sig,
            "signature_format": SIGNATURE_FORMAT,
            "engine": ENGINE,
            "seed": seed,
            "config": program.config.to_json(),
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "kind": kind,
            "message": message.splitlines()[0] if message else "",
            "op_index": op_index,
            "impl": self.c.impl,
            "invariants": True,
            "campaign_config": dict(self.c.overrides),
            "atheris": self.atheris_version,
        }


class AtherisEngine:
    """The supervisor's plug-in (``fuzz.supervisor.Engine``): it holds the campaign's own
    directory (locked) for its whole life, clears up what killed campaigns left before the
    first worker starts, and judges the artifacts each libFuzzer process leaves; a worker
    that stopped on a finding, at a limit or died is started again with the next seed."""

    name = ENGINE
    unit = "execs"
    stop_grace = STOP_GRACE

    def __init__(self, c: AtherisCampaign) -> None:
        self.c = c
        self.sup: Supervisor | None = None
        self.judge: Judge | None = None
        self.run_dir: str | None = None
        self.lock_fd: int | None = None
        self.known_file = ""
        self.corpus_before = 0
        self.seeded = 0
        self.warned = [0]

    # -- the campaign's life -------------------------------------------------------------

    def open(self, sup: Supervisor) -> None:
        c = self.c
        self.sup = sup
        sup.known.update(archived_signatures(c.findings_dir))
        self.clear_left_behind(sup)
        sup.known.update(archived_signatures(c.findings_dir))
        self.corpus_before = len(os.listdir(c.corpus_dir))
        self.seeded = seed_corpus(c.corpus_dir, [*map(str, c.seed_dirs), c.findings_dir])
        self.run_dir, self.lock_fd = make_run_dir(c)
        self.known_file = os.path.join(self.run_dir, "known.txt")
        self.judge = Judge(c, sup, self.run_dir)
        try:
            self.write_known()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Remove the campaign's directory, unless something in it is still to be archived
        (then the next campaign does it)."""
        if self.run_dir is None or self.lock_fd is None:
            return
        sup = self.sup
        if not (sup is not None and sup.unwritten) and not glob.glob(
                os.path.join(self.run_dir, "w*-*")):
            shutil.rmtree(self.run_dir, ignore_errors=True)
        os.close(self.lock_fd)
        self.lock_fd = None

    def clear_left_behind(self, sup: Supervisor) -> None:
        """Decode, shrink and archive what campaigns killed on this findings directory left
        (with their own settings), then remove their directories."""
        c = self.c
        for path, fd in left_behind(c.findings_dir):
            try:
                old = self.recorded(path)
                artifacts = sorted(glob.glob(os.path.join(path, "w*-*")))
                if artifacts:
                    sup.say_plain(f"{len(artifacts)} input(s) left by a killed campaign in "
                                  f"{path}: archiving them first")
                judge = Judge(old, sup, path)
                for artifact in artifacts:
                    judge.artifact(artifact)
                if not glob.glob(os.path.join(path, "w*-*")):
                    shutil.rmtree(path, ignore_errors=True)
            finally:
                os.close(fd)

    def recorded(self, path: str) -> AtherisCampaign:
        """The settings of the killed campaign whose directory is ``path``; this campaign's
        when its record is missing or unreadable."""
        c = self.c
        try:
            with open(os.path.join(path, "campaign.json"), encoding="utf-8") as f:
                record = json.load(f)
            old = AtherisCampaign(0.0, 0, dict(record["overrides"]), c.findings_dir,
                                  record.get("corpus_dir", c.corpus_dir),
                                  int(record.get("seed", 0)), impl=str(record["impl"]),
                                  err=c.err, out=c.out, max_ops=int(record["max_ops"]))
            Hunt(old.overrides, old.max_ops)  # a record this version cannot read raises
        except (OSError, ValueError, KeyError, TypeError, ConfigError):
            old = replace(c, time_limit=0.0, workers=0)  # no usable record: this campaign's
        return old

    def banner(self) -> str:
        c = self.c
        assert self.sup is not None
        fixed = " ".join(f"{k}={v}" for k, v in sorted(c.overrides.items()))
        return (f"engine {ENGINE}, {c.workers} worker(s), {c.time_limit:g} s, seed {c.seed}, "
                f"config {fixed + ' (rest from the input)' if fixed else 'from the input'}, "
                f"impl {c.impl}, corpus {c.corpus_dir} ({self.corpus_before} inputs"
                f"{f', {self.seeded} seeds added' if self.seeded else ''}), findings -> "
                f"{c.findings_dir} ({len(self.sup.known)} signatures archived)")

    # -- workers -------------------------------------------------------------------------

    def seed_of(self, n: int) -> int:
        return libfuzzer_seed(n)

    def start(self, slot: Slot, remaining: float) -> Worker:
        c = self.c
        assert self.run_dir is not None
        timeout = max(1, math.ceil(c.program_seconds or INPUT_TIMEOUT))
        argv = [
            sys.executable, "-m", "fuzz.target",
            f"--impl={c.impl}",
            f"--config-json={json.dumps(c.overrides)}",
            f"--known={self.known_file}",
            f"--max-ops={c.max_ops}",
            *c.target_args,
            f"--parent-pid={os.getpid()}",
            os.path.abspath(c.corpus_dir),
            f"-max_total_time={max(1, math.ceil(remaining))}",
            f"-seed={slot.seed}",
            f"-max_len={c.max_len}",
            f"-timeout={timeout}",
            f"-artifact_prefix={os.path.join(self.run_dir, f'w{slot.index}-s{slot.seed}-')}",
            "-reload=1",
            "-print_final_stats=1",
        ]
        if c.max_rss:
            argv.append(f"-rss_limit_mb={c.max_rss}")
        return LibFuzzerWorker(argv, slot.index, self.warned)

    def exited(self, slot: Slot, status: int) -> Exit:
        """Take the worker's artifacts; start it again if it stopped on a finding, at a
        limit, or died (a worker that exits with an error before fuzzing cannot run the
        target: failed)."""
        assert self.sup is not None
        assert self.judge is not None
        assert self.run_dir is not None
        assert isinstance(slot.worker, LibFuzzerWorker)
        artifacts = sorted(glob.glob(os.path.join(self.run_dir, f"w{slot.index}-*")))
        kinds = [self.judge.artifact(path) for path in artifacts]
        death: str | None = None
        if "timeout" in kinds or "oom" in kinds:  # counted as deaths: a cap too small must
            death = ("stopped at the time cap" if "timeout" in kinds  # not loop forever
                     else "stopped at the memory cap")
        elif not artifacts and status != 0 and not self.sup.stopping:
            if status > 0 and not slot.worker.inited:
                tail = "\n    ".join(list(slot.worker.log)[-8:])
                return Exit(failed=f"exited with status {status} before fuzzing:\n    {tail}")
            death = died(status)
        return Exit(again=bool(artifacts) or death is not None, death=death)

    def known(self, signatures: list[str]) -> None:
        if self.known_file:
            self.write_known_quietly()

    def write_known(self) -> None:
        """The signatures the targets do not report (they re-read the file)."""
        assert self.sup is not None
        tmp = self.known_file + ".new"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{s}\n" for s in sorted(set(self.sup.known) | self.sup.signatures))
        os.replace(tmp, self.known_file)

    def write_known_quietly(self) -> None:
        try:
            self.write_known()
        except OSError as e:  # a full disk: the targets keep the list they have
            assert self.sup is not None
            if len(self.sup.warnings) < 50:
                self.sup.warnings.append(f"cannot update {self.known_file}: {e.strerror or e}")

    # -- what the user sees --------------------------------------------------------------

    def corpus_size(self) -> int | None:
        try:
            return len(os.listdir(self.c.corpus_dir))
        except OSError:
            return 0

    def coverage(self) -> tuple[int, int] | None:
        """libFuzzer's coverage and features (the largest of the workers'), once fuzzing."""
        assert self.sup is not None
        covs = [(s.cov, s.ft or 0) for s in self.sup.slots if s.cov is not None]
        return (max(c for c, _ in covs), max(f for _, f in covs)) if covs else None

    def progress(self, programs: int, steps: int, rate: float) -> str:
        cov = self.coverage()
        text = f"cov {cov[0]}  ft {cov[1]}" if cov is not None else "loading the corpus"
        return (f"execs {programs:,}  {rate:,.0f} execs/s  {text}  corpus "
                f"{self.corpus_size()}")

    def counts(self, programs: int, steps: int, elapsed: float) -> str:
        rate = programs / elapsed if elapsed > 0 else 0.0
        op_rate = steps / elapsed if elapsed > 0 else 0.0
        cov = self.coverage()
        return (f"{programs:,} execs ({rate:,.0f} execs/s over {self.c.workers} worker(s)), "
                f"{steps:,} ops ({op_rate:,.0f} ops/s), coverage {cov[0] if cov else 0}, "
                f"corpus {self.corpus_size()} (was {self.corpus_before})")

    def cannot_run(self) -> str:
        return "no worker could run the atheris target"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _unlink(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def run_atheris_campaign(c: AtherisCampaign) -> int:
    """The whole campaign; returns the exit status (0 nothing, 1 findings, 4 no worker could
    run the target, 130 Ctrl-C, 143 SIGTERM)."""
    os.makedirs(c.corpus_dir, exist_ok=True)
    os.makedirs(c.findings_dir, exist_ok=True)
    return Supervisor(AtherisEngine(c), c).run()
