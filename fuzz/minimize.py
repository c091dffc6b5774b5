"""``pudthp corpus minimize``: the smallest subset of an atheris corpus with its coverage.

libFuzzer does the work: ``-merge=1 OUT IN -merge_control_file=FILE`` run through the
atheris target (``fuzz/target.py``, with the same options a campaign gives it: ``--impl``,
the fixed config, the known signatures) runs every input of ``IN`` once, records the
coverage and features of each in the control file, and copies into the empty ``OUT`` a
smallest set of inputs (smallest files first) that reaches all of them.  The control file
makes it resumable: a minimize that was killed, run again with the same directories, goes on
from the first input it had not finished.

The input directory is never changed, except with ``--in-place``: then the result is built in
``DIR.minimize-new`` and swapped with ``DIR`` at the end in one step (``renameat2`` with
``RENAME_EXCHANGE``; two renames where the kernel or file system lacks it), and the old
inputs are deleted.

libFuzzer starts the merge's worker processes by running its own ``argv[0]`` again with the
same libFuzzer flags, so the target runs from a small executable shell script (in a
temporary directory) that starts it with the target's options (the target does not pass them
on), through ``fuzz.merge_target``, which makes atheris number the branches the same way in
every process: the control file one process wrote is read by the next.

An input that ends in a finding the target does not know (``--findings``: signatures
archived there are known, as in a campaign) crashes the worker; libFuzzer restarts it past
that input, which is then left out of the result (it is reported; ``pudthp fuzz`` archives
such findings).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fuzz.archive import archived_signatures

INPUT_TIMEOUT = 300  # seconds one input may take, as in a campaign
NEW_SUFFIX = ".minimize-new"
CONTROL_SUFFIX = ".minimize-control"
OLD_SUFFIX = ".minimize-old"
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_PR_SET_PDEATHSIG = 1

_RESUME = re.compile(r"MERGE-OUTER: control file ok, (\d+) files total, "
                     r"first not processed file (\d+)")
_ATTEMPT = re.compile(r"MERGE-OUTER: attempt (\d+)")
_RESULT = re.compile(r"MERGE-OUTER: (\d+) new files with (\d+) new features added; "
                     r"(\d+) new coverage edges")


class MinimizeError(Exception):
    """The minimize cannot run or failed; ``str()`` is one line."""


@dataclass(frozen=True)
class MinimizeOptions:
    corpus: str
    out: str | None = None  # default DIR.min; ignored with in_place
    in_place: bool = False
    overrides: dict[str, Any] = field(default_factory=dict)
    impl: str = "both"
    findings_dir: str = "corpus/findings"


@dataclass(frozen=True)
class MinimizeResult:
    before: int
    after: int
    out: str
    features: int
    edges: int
    resumed_at: int | None  # the first input not done by an earlier, killed run
    left_out: int  # inputs whose run crashed the worker (a finding the target did not know)
    seconds: float


def paths(o: MinimizeOptions) -> tuple[str, str]:
    """(the output directory, the control file)."""
    corpus = os.path.normpath(o.corpus)
    out = corpus + NEW_SUFFIX if o.in_place else os.path.normpath(o.out or corpus + ".min")
    return out, (corpus if o.in_place else out) + CONTROL_SUFFIX


def count_files(directory: str) -> int:
    """Regular files under ``directory`` (libFuzzer reads a corpus recursively)."""
    return sum(len(files) for _, _, files in os.walk(directory))


def check(o: MinimizeOptions) -> tuple[str, str]:
    """The output directory and control file, after checking the directories; a
    ``MinimizeError`` for anything that would lose data or cannot work."""
    if not os.path.isdir(o.corpus):
        raise MinimizeError(f"{o.corpus}: not a directory")
    if not os.access(o.corpus, os.R_OK | os.X_OK):
        raise MinimizeError(f"{o.corpus}: not readable")
    if count_files(o.corpus) == 0:
        raise MinimizeError(f"{o.corpus}: no inputs to minimize")
    out, control = paths(o)
    a_in, a_out = os.path.realpath(o.corpus), os.path.realpath(out)
    if a_out == a_in or a_out.startswith(a_in + os.sep) or a_in.startswith(a_out + os.sep):
        raise MinimizeError(f"--out {out}: must be outside {o.corpus} (use --in-place to "
                            f"replace it)")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise MinimizeError(f"--out {out}: exists and is not a directory")
        if os.listdir(out) and not os.path.exists(control):
            if o.in_place:
                raise MinimizeError(f"{out}: not empty and no control file {control}; "
                                    f"remove it (left by an interrupted run)")
            raise MinimizeError(f"--out {out}: exists and is not empty; a minimized corpus "
                                f"goes into a new or empty directory")
    return out, control


def minimize(o: MinimizeOptions, say: Callable[[str], None] | None = None) -> MinimizeResult:
    """Run the merge; ``say`` gets progress lines.  Raises ``MinimizeError``;
    KeyboardInterrupt passes through after the merge processes have stopped (the control
    file stays: the same command resumes)."""
    out, control = check(o)
    say = say or (lambda line: print(line, file=sys.stderr, flush=True))
    before = count_files(o.corpus)
    os.makedirs(out, exist_ok=True)
    resuming = os.path.exists(control)
    say(f"pudthp corpus minimize: {o.corpus}: {before} inputs -> {out}"
        + (f" (resuming with {control})" if resuming else f" (control file {control})"))
    if resuming:
        again = drop_unfinished(control)
        if again is not None:
            say(f"pudthp corpus minimize: input {again} was running when the earlier run "
                f"stopped; it runs again")
    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix="pudthp-minimize-")
    try:
        log = run_merge(o, out, control, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result = _RESULT.search(log)
    if result is None:
        tail = [ln for ln in log.splitlines() if ln.strip() and "pudthp: execs" not in ln]
        raise MinimizeError(f"libFuzzer's merge did not finish: "
                            f"{tail[-1] if tail else 'no output'} (the control file "
                            f"{control} stays: the same command resumes)")
    after = count_files(out)
    if before and not after:
        raise MinimizeError(f"libFuzzer's merge kept no input of {before}; "
                            f"{o.corpus} is left as it was")
    attempts = [int(m.group(1)) for m in _ATTEMPT.finditer(log)]
    resumed = _RESUME.search(log)
    res = MinimizeResult(
        before=before, after=after, out=o.corpus if o.in_place else out,
        features=int(result.group(2)), edges=int(result.group(3)),
        resumed_at=int(resumed.group(2)) if resumed else None,
        left_out=max(attempts) - 1 if attempts else 0,
        seconds=time.monotonic() - start,
    )
    # The control file goes first: a run killed before the swap then finds the new
    # directory without it and asks for it to be removed, never resuming across a swap.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(control)
    if o.in_place:
        try:
            swap(o.corpus, out)
        except OSError as e:
            raise MinimizeError(f"{e}; the minimized corpus is in {out}") from None
        shutil.rmtree(out, ignore_errors=True)
    return res


def drop_unfinished(control: str) -> int | None:
    """Remove from a merge control file the record of the input that was running when the
    merge was killed (its ``STARTED`` line with no ``COV`` line after it, and a line cut
    short), so that libFuzzer runs it again instead of taking it for an input that crashed
    and leaving it out.  Returns that input's index, or None if the file ends complete."""
    try:
        with open(control, "rb") as f:
            data = f.read()
    except OSError:
        return None
    end = data.rfind(b"\n") + 1  # a line cut short goes
    lines = data[:end].split(b"\n")[:-1]
    started = None
    for i in range(len(lines) - 1, -1, -1):
        words = lines[i].split()
        if words[:1] == [b"COV"]:
            break
        if words[:1] == [b"STARTED"] and len(words) >= 2:
            started = i
            break
    if started is None:
        if end != len(data):
            with open(control, "r+b") as f:
                f.truncate(end)
        return None
    index = int(lines[started].split()[1])
    with open(control, "r+b") as f:
        f.truncate(sum(len(ln) + 1 for ln in lines[:started]))
    return index


def run_merge(o: MinimizeOptions, out: str, control: str, tmp: str) -> str:
    """libFuzzer's ``-merge=1`` of ``o.corpus`` into ``out`` (whose files count as already
    there) with the control file ``control``, through the target with ``o``'s options,
    from the scratch directory ``tmp``; returns libFuzzer's output."""
    tmp = os.path.abspath(tmp)
    known = os.path.join(tmp, "known.txt")
    with open(known, "w", encoding="utf-8") as f:
        sigs = archived_signatures(o.findings_dir) if os.path.isdir(o.findings_dir) else {}
        f.writelines(f"{s}\n" for s in sorted(sigs))
    wrapper = os.path.join(tmp, "target")
    target_args = [f"--impl={o.impl}", f"--config-json={json.dumps(o.overrides)}",
                   f"--known={known}"]
    with open(wrapper, "w", encoding="utf-8") as f:
        f.write("#!/bin/sh\n# libFuzzer runs this again for each merge worker\n"
                f"exec {shlex.quote(sys.executable)} -m fuzz.merge_target \"$0\" "
                + " ".join(shlex.quote(a) for a in target_args) + ' "$@"\n')
    os.chmod(wrapper, 0o700)
    argv = [wrapper, "-merge=1", f"-merge_control_file={os.path.abspath(control)}",
            f"-timeout={INPUT_TIMEOUT}", f"-artifact_prefix={tmp}/",
            os.path.abspath(out), os.path.abspath(o.corpus)]
    log_path = os.path.join(tmp, "merge.log")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, cwd=tmp, preexec_fn=_pdeathsig)
        try:
            proc.wait()
        except KeyboardInterrupt:
            _stop(proc)
            raise
        finally:
            if proc.poll() is None:
                _stop(proc)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _pdeathsig() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def swap(a: str, b: str) -> None:
    """Exchange directories ``a`` and ``b`` in one step (``renameat2`` with
    ``RENAME_EXCHANGE``); where that is unsupported, ``a`` is renamed aside first."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if rc == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise OSError(err, f"cannot exchange {a} and {b}: {os.strerror(err)}")
    if not os.path.isdir(b):
        raise FileNotFoundError(errno.ENOENT, f"cannot exchange {a} and {b}: no {b}")
    old = a + OLD_SUFFIX
    os.rename(a, old)
    try:
        os.rename(b, a)
    except OSError:
        os.rename(old, a)
        raise
    os.rename(old, b)
