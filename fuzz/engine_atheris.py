"""``pudthp fuzz --engine atheris``: coverage-guided campaigns with libFuzzer.

Each worker is a process running ``python -m fuzz.target`` (the atheris target, whose
docstring says what it hunts and filters out) on the campaign's corpus directory with its own
libFuzzer ``-seed``.  The corpus lives on disk (``--corpus``, default ``corpus/atheris``):
libFuzzer loads it at start, adds every input that reaches new coverage, and with
``-reload`` each worker picks up what the others add; so a stopped campaign resumes where it
left off, and the scenario seeds, the known-bad programs and the archived findings are
encoded into it (files named by content hash, written once) to start from.

A finding makes libFuzzer write the input to ``crash-<sha1>`` (in the campaign's directory,
below) and exit.  The parent decodes it with the target's own config policy, replays it to get the
signature, shrinks it (``harness.shrink``, same signature), and archives it like the
Hypothesis engine (``fuzz.archive.archive``: a program JSON with metadata named
by a short hash of the signature, never overwriting).  Then it adds the signature to the
file of known signatures the targets re-read, and restarts the worker with the next seed
for the remaining time, so one bug is reported once and the search moves on.  Signatures
already in the findings directory are known from the start; a target that hits one prints
so, and it counts as found (exit 1) without being written again.

Progress (on stderr, about once a second on a terminal, else every few seconds): total
executions and executions per second over all workers, coverage and features (libFuzzer's
``cov:`` and ``ft:``), corpus size on disk, distinct findings.  The summary adds the ops run
and ops per second, and the model-state coverage table of every program the targets ran
(``harness.coverage``, reported by each target on stderr), also written to ``--findings`` as
``coverage-<time>-atheris-seed<N>.txt``.  Exit 0 nothing found, 1 anything found, 4 no
worker could run the target (cannot run here), 130 interrupted (Ctrl-C) or 143 terminated
(SIGTERM): workers stop, artifacts already written are still decoded and archived (not
shrunk).

With ``--hub`` or ``--stats`` the parent also holds a ``fuzz.link.CampaignLink``: findings
and corpus inputs go to and come from other machines (inputs they add land in the corpus
directory, where ``-reload`` takes them in; signatures they found join the known ones), and
a stats record is written every few seconds.

Faults.  The campaign's own files (the known signatures, libFuzzer's artifacts, a record of
the campaign's settings) live in a hidden directory of the findings directory,
``.pudthp-atheris-PID-XXXX``, locked while the campaign runs.  An artifact is deleted only
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

import contextlib
import fcntl
import glob
import hashlib
import importlib.metadata
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from fuzz.archive import archive, archived_signatures, remove_stale_temporaries, write_coverage
from fuzz.encoding import EncodeError, encode
from fuzz.link import CampaignLink, features
from fuzz.mutator import Hunt
from fuzz.stats import Sample
from harness.coverage import Tally
from harness.limits import LimitExceeded
from harness.program import ProgramError, dump_program, load_program_file
from harness.runner import run_program
from harness.shrink import NoFinding, ShrinkResult, shrink
from pudthp_ref.spec import ConfigError, Finding, Program

ENGINE = "atheris"
DEFAULT_CORPUS = "corpus/atheris"
REPO_CORPUS = Path(__file__).resolve().parents[1] / "corpus"
SEED_DIRS: tuple[Path, ...] = (REPO_CORPUS / "seeds", REPO_CORPUS / "known_bad")
MAX_LEN = 1024  # bytes per input: up to about 200 ops
MAX_OPS = 200  # ops per program: a longer input is cut (Hunt)
INPUT_TIMEOUT = 300  # seconds one input may take before libFuzzer calls it a timeout
STOP_GRACE = 10.0  # after the deadline, workers get this long before SIGINT, then SIGKILL
RETRY_SECONDS = 5.0  # how often findings that could not be written are tried again
MAX_DEATHS = 20  # per worker slot: a slot whose workers keep dying is given up
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

    def record(self) -> dict[str, Any]:
        """What a later campaign needs to decode this one's artifacts the same way."""
        return {"format": "pudthp-atheris-campaign/1", "pid": os.getpid(),
                "overrides": self.overrides, "impl": self.impl, "max_ops": self.max_ops,
                "seed": self.seed, "corpus_dir": self.corpus_dir}


@dataclass
class _Worker:
    """One worker slot: the libFuzzer process running in it now and what it said."""

    index: int
    seed: int = 0
    proc: subprocess.Popen[str] | None = None
    reader: threading.Thread | None = None
    log: list[str] = field(default_factory=list)
    execs_done: int = 0  # by earlier processes in this slot
    execs: int = 0  # by the current one
    cov: int = 0
    ft: int = 0
    inited: bool = False
    starts: int = 0
    finished: bool = False
    failed: bool = False  # exited with an error before fuzzing: the target cannot run
    deaths: list[str] = field(default_factory=list)  # why it was restarted, not a finding
    ops_done: int = 0  # ops run by earlier processes in this slot
    ops: int = 0  # by the current one
    tally_done: Tally = field(default_factory=Tally)  # features of earlier processes
    tally: Tally | None = None  # of the current one, as it last said

    def total_execs(self) -> int:
        return self.execs_done + self.execs

    def total_ops(self) -> int:
        return self.ops_done + self.ops

    def total_tally(self) -> Tally:
        return Tally.total((self.tally_done, self.tally))


@dataclass
class _Found:
    path: str
    signature: str
    ops: int
    new: bool


def worker_seed(seed: int, index: int, start: int, workers: int) -> int:
    """libFuzzer's ``-seed`` for start number ``start`` (0, 1, ...: a worker restarts after
    each finding) of worker ``index``: ``seed + index + start * workers`` modulo 2**32, with
    0 (which libFuzzer would replace by a random seed) read as 2**32 - 1."""
    return (seed + index + start * workers) % 2**32 or 2**32 - 1


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


class _Run:
    """The state of one campaign in the parent (or, with ``run_dir``, of a killed campaign
    whose directory is being cleared up)."""

    def __init__(self, c: AtherisCampaign, run_dir: tuple[str, int] | None = None) -> None:
        self.c = c
        self.hunt = Hunt(c.overrides, c.max_ops)
        self.tmp, self.lock_fd = run_dir if run_dir is not None else make_run_dir(c)
        self.known_file = os.path.join(self.tmp, "known.txt")
        self.archived = archived_signatures(c.findings_dir)
        self.known_hits: set[str] = set()
        self.offered: set[str] = set()  # known hits offered to the hub
        self.found: list[_Found] = []
        self.signatures: set[str] = set()
        self.warnings: list[str] = []
        self.limits: list[str] = []
        self.unwritten: list[tuple[str, Program, dict[str, Any], str, str | None]] = []
        self.next_retry = 0.0
        self.slots = [_Worker(i) for i in range(c.workers)]
        self.start = time.monotonic()
        self.deadline = self.start + c.time_limit
        self.stopping = False
        self.interrupted = False  # no more shrinking: archive what is left as it is
        self.atheris_version = _version("atheris")
        if run_dir is None:
            self.write_known()

    def close(self) -> None:
        """Remove the campaign's directory, unless something in it is still to be archived
        (then the next campaign does it)."""
        if not self.unwritten and not glob.glob(os.path.join(self.tmp, "w*-*")):
            shutil.rmtree(self.tmp, ignore_errors=True)
        os.close(self.lock_fd)

    # -- workers -------------------------------------------------------------------------

    def write_known(self) -> None:
        tmp = self.known_file + ".new"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{s}\n" for s in sorted(set(self.archived) | self.signatures))
        os.replace(tmp, self.known_file)

    def launch(self, w: _Worker) -> None:
        remaining = self.deadline - time.monotonic()
        w.seed = worker_seed(self.c.seed, w.index, w.starts, self.c.workers)
        w.starts += 1
        w.execs_done += w.execs
        w.execs = 0
        w.ops_done += w.ops
        w.ops = 0
        if w.tally is not None:
            w.tally_done.merge(w.tally)
            w.tally = None
        w.inited = False
        timeout = max(1, math.ceil(self.c.program_seconds or INPUT_TIMEOUT))
        argv = [
            sys.executable, "-m", "fuzz.target",
            f"--impl={self.c.impl}",
            f"--config-json={json.dumps(self.c.overrides)}",
            f"--known={self.known_file}",
            f"--max-ops={self.c.max_ops}",
            f"--parent-pid={os.getpid()}",
            os.path.abspath(self.c.corpus_dir),
            f"-max_total_time={max(1, math.ceil(remaining))}",
            f"-seed={w.seed}",
            f"-max_len={self.c.max_len}",
            f"-timeout={timeout}",
            f"-artifact_prefix={os.path.join(self.tmp, f'w{w.index}-s{w.seed}-')}",
            "-reload=1",
            "-print_final_stats=1",
        ]
        if self.c.max_rss:
            argv.append(f"-rss_limit_mb={self.c.max_rss}")
        w.proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, errors="replace", bufsize=1,
        )
        w.reader = threading.Thread(target=self.read, args=(w, w.proc), daemon=True)
        w.reader.start()

    def read(self, w: _Worker, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            w.log.append(line)
            if len(w.log) > 200:
                del w.log[:100]
            if m := _FEATURES.match(line):
                with contextlib.suppress(ValueError, KeyError, TypeError):
                    w.tally = Tally.from_json(json.loads(m.group(1)))
                continue
            if m := _OPS.match(line):
                w.ops = max(w.ops, int(m.group(1)))
            if m := _EXECS.match(line):
                w.execs = max(w.execs, int(m.group(1)))
            elif m := _STATUS.match(line):
                w.execs = max(w.execs, int(m.group(1)))
                w.cov, w.ft = int(m.group(3)), int(m.group(4))
                w.inited = w.inited or m.group(2) != "pulse"  # pulses come while loading too
            elif m := _KNOWN.match(line):
                self.known_hits.add(m.group(1))
            elif m := _FINAL.match(line):
                w.execs = max(w.execs, int(m.group(1)))
            elif m := _LIMIT.match(line):
                self.limits.append(f"worker {w.index}: {m.group(2)}")
            elif line.startswith("pudthp: mutator error") and len(self.warnings) < 20:
                self.warnings.append(f"worker {w.index}: {line.removeprefix('pudthp: ')}")

    def reap(self, w: _Worker) -> None:
        """Worker ``w``'s process has exited: take its artifacts, start it again if time is
        left and it stopped on a finding, at a limit, or died."""
        assert w.proc is not None
        assert w.reader is not None
        w.reader.join(timeout=5)
        rc = w.proc.returncode
        artifacts = sorted(glob.glob(os.path.join(self.tmp, f"w{w.index}-*")))
        kinds = [self.artifact(path) for path in artifacts]
        died = None
        if not artifacts and rc != 0 and not self.stopping:
            if rc < 0:
                died = f"killed by {signal.Signals(-rc).name}"
            elif w.inited:
                died = f"exited with status {rc}"
            else:
                w.failed = True
                tail = "\n    ".join(w.log[-8:])
                self.warnings.append(f"worker {w.index} exited with status {rc} before "
                                     f"fuzzing:\n    {tail}")
        for kind in ("timeout", "oom"):
            if kind in kinds:  # counted like a death: a cap too small must not loop forever
                w.deaths.append("stopped at the time cap" if kind == "timeout"
                                else "stopped at the memory cap")
        if died is not None:
            w.deaths.append(died)
            self.progress_clear()
            print(f"pudthp fuzz: [{time.monotonic() - self.start:6.1f}s] worker {w.index} "
                  f"{died}; started again", file=self.c.err, flush=True)
        again = (artifacts or died) and len(w.deaths) <= MAX_DEATHS
        if again and not self.stopping and self.deadline - time.monotonic() >= 1:
            self.launch(w)
        else:
            w.finished = True

    # -- findings ------------------------------------------------------------------------

    def artifact(self, path: str) -> str:
        """Decode, judge and archive one libFuzzer artifact; it is deleted only once that is
        done (a kill before leaves it for the next campaign).  Its kind."""
        m = _ARTIFACT.match(os.path.basename(path))
        if m is None:
            with contextlib.suppress(OSError):
                os.unlink(path)
            return "unknown"
        index, seed, kind = int(m.group(1)), int(m.group(2)), m.group(3)
        w = _Worker(index, seed=seed)
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError:
            return kind
        if kind in ("crash", "timeout", "oom"):
            program = self.hunt.program(data)
            if kind == "crash":
                if not self.crash(w, program):
                    return kind  # its finding is not on disk yet: the input stays
            else:
                self.resource(w, program, kind)
        with contextlib.suppress(OSError):  # slow-unit, leak: not findings
            os.unlink(path)
        return kind

    def crash(self, w: _Worker, program: Program) -> bool:
        """Replay, shrink and archive a crash input; False while its finding is not on disk
        (kept in memory for a retry)."""
        try:
            finding = run_program(program, self.c.impl).finding
        except LimitExceeded as e:
            self.limits.append(f"worker {w.index}: replaying a crash input: {e}")
            return True
        if finding is None:
            self.warnings.append(f"worker {w.index}: a crash input that does not reproduce "
                                 f"({len(program.ops)} ops); not archived")
            return True
        sig = finding.signature
        if sig in self.signatures:
            return True
        if sig in self.archived:
            self.known_hits.add(sig)
            return True
        shrunk, how = program, "none"
        replay: Finding | None = None
        if self.interrupted:
            how = "none (interrupted)"
        else:
            self.progress_clear()
            print(f"pudthp fuzz: [{time.monotonic() - self.start:6.1f}s] worker {w.index} "
                  f"found {sig} ({len(program.ops)} ops); shrinking", file=self.c.err,
                  flush=True)
            try:
                result, replay = self.shrink(program, sig)
                shrunk, finding = result.program, result.finding
                how = f"ddmin+simplify from {len(program.ops)} ops in {result.seconds:.1f} s"
            except NoFinding as e:
                self.warnings.append(f"worker {w.index}: {sig}: not shrunk: {e}")
            except LimitExceeded as e:
                how = f"none (shrinking hit a limit: {e.kind})"
        if replay is None:
            try:
                replay = run_program(shrunk, self.c.impl).finding
            except LimitExceeded:
                replay = None
        meta = self.meta(w, sig, finding.kind, finding.message, finding.op_index, shrunk)
        meta["shrunk"] = how
        meta["replays"] = replay is not None and replay.signature == sig
        return self.archive(sig, shrunk, meta)

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

    def resource(self, w: _Worker, program: Program, kind: str) -> None:
        """A libFuzzer timeout or out-of-memory: a program over the campaign's time or
        memory cap, never a finding; counted and said."""
        what = (f"ran over the time cap ({self.c.program_seconds or INPUT_TIMEOUT:g} s)"
                if kind == "timeout"
                else f"went over the memory cap ({self.c.max_rss} MiB)")
        text = (f"worker {w.index}: a program of {len(program.ops)} ops {what}; not a "
                "finding")
        self.limits.append(text)
        self.progress_clear()
        print(f"pudthp fuzz: [{time.monotonic() - self.start:6.1f}s] {text}", file=self.c.err,
              flush=True)

    def meta(self, w: _Worker, sig: str, kind: str, message: str, op_index: int,
             program: Program) -> dict[str, Any]:
        return {
            "signature": sig,
            "engine": ENGINE,
            "seed": w.seed,
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

    def archive(self, sig: str, program: Program, meta: dict[str, Any]) -> bool:
        """Write one finding; when the directory refuses, keep it for a retry."""
        text = dump_program(Program(program.config, program.ops, meta))

        def replaced(path: str, problem: str) -> None:
            self.warnings.append(f"{path}: {problem}; rewritten with {sig}")

        try:
            path, new = archive(self.c.findings_dir, sig, text, replaced)
        except OSError as e:
            reason = e.strerror or str(e)
            if all(u[0] != sig for u in self.unwritten):
                self.unwritten.append((sig, program, meta, text, reason))
            self.signatures.add(sig)
            self.write_known_quietly()
            self.progress_clear()
            print(f"pudthp fuzz: cannot write a finding to {self.c.findings_dir}: {reason}; "
                  f"{len(self.unwritten)} finding(s) kept in memory, trying again every "
                  f"{RETRY_SECONDS:g} s", file=self.c.err, flush=True)
            self.next_retry = time.monotonic() + RETRY_SECONDS
            return False
        self.unwritten = [u for u in self.unwritten if u[0] != sig]
        self.signatures.add(sig)
        self.found.append(_Found(path, sig, len(program.ops), new))
        if self.c.link is not None:
            self.c.link.archived(sig, path)
        self.write_known_quietly()
        state = "new" if new else "already archived"
        self.progress_clear()
        print(f"pudthp fuzz: [{time.monotonic() - self.start:6.1f}s] finding ({state}) {sig}: "
              f"{len(program.ops)} ops -> {path}", file=self.c.err, flush=True)
        return True

    def write_known_quietly(self) -> None:
        try:
            self.write_known()
        except OSError as e:  # a full disk: the targets keep the list they have
            if len(self.warnings) < 50:
                self.warnings.append(f"cannot update {self.known_file}: {e.strerror or e}")

    def retry(self, force: bool = False) -> None:
        if not self.unwritten or (not force and time.monotonic() < self.next_retry):
            return
        for sig, program, meta, _text, _reason in list(self.unwritten):
            if not self.archive(sig, program, meta):
                return

    # -- reporting -----------------------------------------------------------------------

    def distinct(self) -> set[str]:
        return self.signatures | self.known_hits

    def tally(self) -> Tally:
        """The model-state features of every program the targets ran so far."""
        return Tally.total(w.total_tally() for w in self.slots)

    def sample(self) -> Sample:
        execs = sum(w.total_execs() for w in self.slots)
        inited = any(w.inited for w in self.slots)
        return Sample(programs=execs, count=execs, findings=len(self.distinct()),
                      corpus=self.corpus_size(),
                      cov=max(w.cov for w in self.slots) if inited else None,
                      ft=max(w.ft for w in self.slots) if inited else None,
                      features=features(self.tally()))

    def offer_known(self, link: CampaignLink) -> None:
        """Offer the hub the archived findings the targets met again, each once."""
        # a copy made in one step: the reader threads add to known_hits meanwhile
        for sig in sorted(self.known_hits - self.offered):
            self.offered.add(sig)
            if sig in self.archived:
                link.archived(sig, self.archived[sig])

    def sync(self, link: CampaignLink, now: float) -> None:
        """Offer the hub what the targets met again, take what other machines found into
        the known signatures."""
        self.offer_known(link)
        self.known_from(link, link.tick(self.sample, now))

    def known_from(self, link: CampaignLink, sigs: list[str]) -> None:
        if not sigs:
            return
        where = dict(link.pulled)
        for sig in sigs:
            self.archived.setdefault(sig, where.get(sig, ""))
        self.write_known_quietly()

    def corpus_size(self) -> int:
        try:
            return len(os.listdir(self.c.corpus_dir))
        except OSError:
            return 0

    def progress_clear(self) -> None:
        if self.c.err.isatty():
            print("\r\033[K", end="", file=self.c.err, flush=True)

    def progress_line(self, now: float, rate: float) -> str:
        running = sum(1 for w in self.slots if not w.finished)
        cov = (f"cov {max(w.cov for w in self.slots)}  ft {max(w.ft for w in self.slots)}"
               if any(w.inited for w in self.slots) else "loading the corpus")
        line = (f"[{now - self.start:6.1f}s] execs {sum(w.total_execs() for w in self.slots):,}"
                f"  {rate:,.0f} execs/s  {cov}  corpus {self.corpus_size()}"
                f"  findings {len(self.distinct())}  workers {running}/{len(self.slots)}")
        return line + ("  (stopping)" if self.stopping else "")

    def summary(self, elapsed: float, corpus_before: int, signum: int | None) -> None:
        out = self.c.out
        execs = sum(w.total_execs() for w in self.slots)
        rate = execs / elapsed if elapsed > 0 else 0.0
        ops = sum(w.total_ops() for w in self.slots)
        op_rate = ops / elapsed if elapsed > 0 else 0.0
        new = [f for f in self.found if f.new]
        head = "done"
        if signum is not None:
            head = "interrupted" if signum == signal.SIGINT else "terminated (SIGTERM)"
        distinct = len(self.distinct() | {u[0] for u in self.unwritten})
        print(f"pudthp fuzz: {head} after {elapsed:.1f} s: {execs:,} execs ({rate:,.0f} execs/s "
              f"over {len(self.slots)} worker(s)), {ops:,} ops ({op_rate:,.0f} ops/s), "
              f"coverage {max(w.cov for w in self.slots)}, "
              f"corpus {self.corpus_size()} (was {corpus_before}), "
              f"{distinct} distinct finding(s), {len(new)} new", file=out)
        for f in self.found:
            state = "new     " if f.new else "archived"
            print(f"  {state}  {f.path}  {f.signature} ({f.ops} ops)", file=out)
        for sig in sorted(self.known_hits - self.signatures):
            where = self.archived.get(sig, "")
            print(f"  known     {where}  {sig} (hit again; file kept)", file=out)
        for sig, program, _meta, text, reason in self.unwritten:
            print(f"  UNWRITTEN {sig} ({len(program.ops)} ops): {self.c.findings_dir}: "
                  f"{reason}; the program follows (its input stays in {self.tmp})", file=out)
            for line in text.splitlines():
                print(f"    {line}", file=out)
        deaths = [(w.index, d) for w in self.slots for d in w.deaths]
        if deaths:
            print(f"  restarts  {len(deaths)}: "
                  + "; ".join(f"worker {i} {d}" for i, d in deaths), file=out)
        if self.limits:
            print(f"  limits    {len(self.limits)} program(s) over a resource limit, not "
                  f"findings: {'; '.join(self.limits[:5])}"
                  + (" ..." if len(self.limits) > 5 else ""), file=out)
        for text in self.warnings:
            print(f"  warning   {text}", file=out)
        if self.c.link is not None:
            for text in self.c.link.summary_lines():
                print(text, file=out)
        self.coverage_report()
        out.flush()

    def coverage_report(self) -> None:
        """The model-state coverage table of every program the targets ran: printed, and
        written with the findings."""
        out = self.c.out
        text = self.tally().table(f"pudthp fuzz: model-state coverage ({ENGINE})")
        print(text, end="", file=out)
        try:
            path = write_coverage(self.c.findings_dir, ENGINE, self.c.seed, text)
        except OSError as e:
            print(f"  warning   cannot write the coverage table to {self.c.findings_dir}: {e}",
                  file=out)
        else:
            print(f"coverage table -> {path}", file=out)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _signal(w: _Worker, sig: int) -> None:
    if w.proc is not None and w.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            w.proc.send_signal(sig)


def clear_left_behind(c: AtherisCampaign) -> list[_Run]:
    """Decode, shrink and archive what campaigns killed on ``c.findings_dir`` left (with
    their own settings), then remove their directories; the runs that did it."""
    done: list[_Run] = []
    for path, fd in left_behind(c.findings_dir):
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
        artifacts = sorted(glob.glob(os.path.join(path, "w*-*")))
        run = _Run(old, (path, fd))
        if artifacts:
            print(f"pudthp fuzz: {len(artifacts)} input(s) left by a killed campaign in {path}"
                  ": archiving them first", file=c.err, flush=True)
        for artifact in artifacts:
            run.artifact(artifact)
        run.close()
        done.append(run)
    return done


def run_atheris_campaign(c: AtherisCampaign) -> int:
    """The whole campaign; returns the exit status (0 nothing, 1 findings, 130 Ctrl-C, 143
    SIGTERM)."""
    os.makedirs(c.corpus_dir, exist_ok=True)
    os.makedirs(c.findings_dir, exist_ok=True)
    remove_stale_temporaries(c.findings_dir)
    signals: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        signals.append(signum)
        raise KeyboardInterrupt

    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT,
                                                                   signal.SIGTERM)}
    try:
        return _campaign(c, signals)
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)


def _campaign(c: AtherisCampaign, signals: list[int]) -> int:
    earlier = clear_left_behind(c)
    corpus_before = len(os.listdir(c.corpus_dir))
    seeded = seed_corpus(c.corpus_dir, [*map(str, c.seed_dirs), c.findings_dir])
    run = _Run(c)
    for old in earlier:  # what killed campaigns left counts as this one's
        run.found.extend(old.found)
        run.signatures |= old.signatures
        run.known_hits |= old.known_hits
        run.warnings.extend(old.warnings)
        run.unwritten.extend(old.unwritten)
    if earlier:
        run.archived = archived_signatures(c.findings_dir)
        run.write_known()
    tty = c.err.isatty()
    every = 1.0 if tty else min(10.0, max(2.0, c.time_limit / 5))
    fixed = " ".join(f"{k}={v}" for k, v in sorted(c.overrides.items()))
    print(f"pudthp fuzz: engine {ENGINE}, {c.workers} worker(s), {c.time_limit:g} s, seed "
          f"{c.seed}, config {fixed + ' (rest from the input)' if fixed else 'from the input'}"
          f", impl {c.impl}, corpus {c.corpus_dir} ({corpus_before} inputs"
          f"{f', {seeded} seeds added' if seeded else ''}), findings -> {c.findings_dir} "
          f"({len(run.archived)} signatures archived)", file=c.err, flush=True)
    interrupted = False
    last_print = last_t = run.start
    last_execs = 0
    try:
        for w in run.slots:
            run.launch(w)
        while True:
            try:
                now = time.monotonic()
                for w in run.slots:
                    if not w.finished and w.proc is not None and w.proc.poll() is not None:
                        run.reap(w)
                if all(w.finished for w in run.slots):
                    break
                run.retry()
                if c.link is not None:
                    run.sync(c.link, now)
                if now > run.deadline + STOP_GRACE:
                    for w in run.slots:
                        _signal(w, signal.SIGINT if now < run.deadline + 2 * STOP_GRACE
                                else signal.SIGKILL)
                if now - last_print >= every:
                    execs = sum(w.total_execs() for w in run.slots)
                    rate = (execs - last_execs) / max(now - last_t, 1e-9)
                    last_execs, last_t, last_print = execs, now, now
                    line = run.progress_line(now, rate)
                    if tty:
                        print("\r" + line, end="", file=c.err, flush=True)
                    else:
                        print(line, file=c.err, flush=True)
                time.sleep(0.1)
            except KeyboardInterrupt:
                if interrupted:  # a second Ctrl-C: stop waiting for the workers
                    for w in run.slots:
                        _signal(w, signal.SIGKILL)
                    break
                interrupted = run.interrupted = True
                run.stopping = True
                for w in run.slots:
                    _signal(w, signal.SIGINT)
    finally:
        run.stopping = run.interrupted = True
        for w in run.slots:
            _signal(w, signal.SIGKILL)
            if w.proc is not None:
                w.proc.wait()
                if not w.finished:
                    run.reap(w)
        run.retry(force=True)
        ended = time.monotonic()  # the rate leaves out the wait for other machines
        if c.link is not None:
            run.offer_known(c.link)
            with contextlib.suppress(KeyboardInterrupt):  # a signal: on to the summary
                run.known_from(c.link, c.link.finish(run.sample(), stop=lambda: bool(signals)))
        run.progress_clear()
        run.summary(ended - run.start, corpus_before,
                    signals[0] if signals else None)
        run.close()
    if signals:
        return 128 + signals[0]  # 130 Ctrl-C, 143 SIGTERM
    if all(w.failed for w in run.slots):
        print("pudthp: cannot run here: no worker could run the atheris target (see the "
              "warnings)", file=c.err)
        return 4  # as the command line's EXIT_CANNOT_RUN
    return 1 if run.distinct() or run.unwritten else 0
