"""Replaying a finding from the hub before anything trusts it.

A finding another machine pushed is a program and a signature; either may be a lie (a peer
that holds the password can push a 0-op program under a real signature, or a program that
asks for gigabytes).  Before a finding from the hub is written to a findings directory,
counted as known (a campaign's workers stop on known signatures) or allowed to replace a
program on the hub, this machine runs it, and it must report its own signature:

- the text is checked as a program file is (``harness.program``: at most 8 MiB, JSON 64
  deep, every field) and its ``meta.signature`` must be the one it was pushed under;
- it runs in a child process (``python -m fuzz.hub_replay``: ``harness.runner`` under
  ``harness.limits``' memory and time limits, on its ``meta.impl``, else on both in
  lockstep, as ``pudthp corpus replay`` runs a finding; a kernel campaign's finding,
  ``meta.impl`` ``kernel``, on this machine's live kernel against the reference, which
  needs root and the conform lock: where it cannot, the finding is not trusted), in a
  session of its own (a Ctrl-C on the
  terminal is not its), killed if this process dies and if it outlives its time limit
  by ``GRACE_SECONDS``;
- the child prints one JSON line: the signature it found (or null), or the limit it hit.

``Replayer`` runs at most ``parallel`` such children at once without blocking its caller:
``start`` one, ``poll`` for the finished, ``wait`` for them up to a deadline.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Any

from harness.corpus import impl_for
from harness.limits import default_max_rss_mb
from harness.program import ProgramError, parse_program_text
from harness.signature import current, of_meta
from pudthp_ref.spec import Finding, Program

REPLAY_SECONDS = 60.0  # as a campaign's --max-program-time
GRACE_SECONDS = 10.0
MAX_OUTPUT = 64 << 10
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True, slots=True)
class Candidate:
    """A finding read from the hub: its signature, program text, the machine that pushed
    it (as the hub says) and the SHA-256 of the text."""

    signature: str
    text: str
    machine: str

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8", "surrogatepass")).hexdigest()


def static_problem(c: Candidate) -> str | None:
    """What is wrong with ``c`` before it runs: not a program, or one filed under another
    signature; None if it may be replayed."""
    try:
        program = parse_program_text(c.text, "its program")
    except ProgramError as e:
        return f"not a program ({' '.join(str(e).split())})"
    if of_meta(program.meta) != current(c.signature):
        return "its meta.signature is another"
    return None


@dataclass
class _Job:
    candidate: Candidate
    proc: subprocess.Popen[bytes]
    path: str
    deadline: float


class Replayer:
    """Replays candidates in child processes, at most ``parallel`` at once; see the
    module docstring.  ``max_rss`` is each child's memory limit in MiB (default: an
    eighth of this machine's memory), ``seconds`` its time limit."""

    def __init__(self, seconds: float = REPLAY_SECONDS, max_rss: int | None = None,
                 parallel: int = 1) -> None:
        self.seconds = seconds
        self.max_rss = max_rss if max_rss is not None else default_max_rss_mb(4)
        self.parallel = parallel
        self.jobs: list[_Job] = []
        self.done: list[tuple[Candidate, str | None]] = []
        self.tmp: str | None = None
        self.count = 0

    def free(self) -> int:
        """How many more may start now."""
        return self.parallel - len(self.jobs)

    def running(self) -> set[str]:
        return {j.candidate.signature for j in self.jobs}

    def start(self, c: Candidate) -> None:
        """Begin replaying ``c``; one that cannot even be a program is done at once."""
        problem = static_problem(c)
        if problem is not None:
            self.done.append((c, problem))
            return
        program = parse_program_text(c.text, "its program")
        impl = "kernel" if program.meta.get("impl") == "kernel" else impl_for(program, None)
        if self.tmp is None:
            self.tmp = tempfile.mkdtemp(prefix="pudthp-replay-")
        self.count += 1
        path = os.path.join(self.tmp, f"finding-{self.count}.json")
        with open(path, "w", encoding="utf-8") as f:
            f.write(c.text)
        argv = [sys.executable, "-m", "fuzz.hub_replay", path, impl, str(self.max_rss),
                repr(self.seconds)]
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=_die_with_parent)
        except OSError as e:
            self.done.append((c, f"cannot be replayed here ({e.strerror or e})"))
            return
        self.jobs.append(_Job(c, proc, path, time.monotonic() + self.seconds + GRACE_SECONDS))

    def poll(self) -> list[tuple[Candidate, str | None]]:
        """The candidates finished since the last call, each with None (it reproduces its
        signature) or why not (one line)."""
        now = time.monotonic()
        for job in list(self.jobs):
            if job.proc.poll() is None and now < job.deadline:
                continue
            self.jobs.remove(job)
            self.done.append((job.candidate, self._verdict(job)))
        out, self.done = self.done, []
        return out

    def wait(self, seconds: float) -> list[tuple[Candidate, str | None]]:
        """``poll`` until nothing runs or ``seconds`` have passed."""
        end = time.monotonic() + seconds
        out = self.poll()
        while self.jobs and time.monotonic() < end:
            time.sleep(0.02)
            out += self.poll()
        return out

    def _verdict(self, job: _Job) -> str | None:
        proc = job.proc
        if proc.poll() is None:
            _kill(proc)
            return f"its replay did not end within {self.seconds + GRACE_SECONDS:g} s"
        assert proc.stdout is not None
        out = proc.stdout.read(MAX_OUTPUT)
        proc.stdout.close()
        with contextlib.suppress(OSError):
            os.unlink(job.path)
        try:
            result = json.loads(out.decode("utf-8").strip().splitlines()[-1])
        except (ValueError, IndexError, UnicodeDecodeError):
            return f"its replay ended without a verdict (exit status {proc.returncode})"
        if not isinstance(result, dict):
            return "its replay ended without a verdict"
        if "signature" not in result:
            return f"its replay stopped: {result.get('limit') or result.get('error')}"
        found = result["signature"]
        if found == current(job.candidate.signature):
            return None
        if found is None:
            return "its replay found nothing"
        return f"its replay found {found} instead"

    def close(self) -> None:
        """Stop what still runs and remove the scratch directory."""
        for job in self.jobs:
            _kill(job.proc)
        self.jobs.clear()
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def _kill(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def main(argv: list[str]) -> int:
    """The child: replay the program file ``argv[0]`` on ``argv[1]`` under a memory limit
    of ``argv[2]`` MiB and a time limit of ``argv[3]`` seconds; print one JSON line."""
    from harness.conform.compare import CannotRun
    from harness.limits import LimitExceeded, memory_error, memory_limit, time_limit
    from harness.program import load_program_file
    from harness.runner import IMPL_FACTORIES, UsageError, run_program

    path, impl, max_rss, seconds = argv
    out: dict[str, Any]
    try:
        program = load_program_file(path)
        if impl == "kernel":
            with memory_limit(int(max_rss)), time_limit(float(seconds), "the replay"):
                found = _on_the_kernel(program)
        else:
            IMPL_FACTORIES[impl]()
            with memory_limit(int(max_rss)), time_limit(float(seconds), "the replay"):
                # as it was found: a campaign without the invariants records so
                found = run_program(program, impl,
                                    check=program.meta.get("invariants") is not False).finding
    except (LimitExceeded, MemoryError) as e:
        out = {"limit": str(e if isinstance(e, LimitExceeded) else memory_error())}
    except (ProgramError, UsageError) as e:
        out = {"error": " ".join(str(e).split())}
    except CannotRun as e:
        out = {"error": f"it needs the live kernel: {' '.join(str(e).split())}"}
    else:
        out = {"signature": found.signature if found else None}
    print(json.dumps(out), flush=True)
    return 0


def _on_the_kernel(program: Program) -> Finding | None:
    """A kernel campaign's finding replayed as the campaign ran it: on this machine's live
    kernel against the reference (its conform lock: while a kernel campaign of this
    machine holds it, the replay outlives its time and the finding is not trusted)."""
    from harness.conform.campaign import KernelMachine
    from harness.conform.kshrink import kernel_judge

    with KernelMachine(say=lambda _: None) as machine:
        return kernel_judge(machine)(program)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
