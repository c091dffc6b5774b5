"""``pudthp corpus minimize``: the smallest subset of an atheris corpus with its coverage.

libFuzzer does the work: ``-merge=1 OUT IN -merge_control_file=FILE`` run through the
atheris target (``fuzz/target.py``, with the same options a campaign gives it: ``--impl``,
the fixed config, the known signatures) runs every input of ``IN`` once, records the
coverage and features of each in the control file, and copies into the empty ``OUT`` a
smallest set of inputs (smallest files first) that reaches all of them.  The control file
makes it resumable: a minimize that was killed, run again with the same directories, goes on
from the first input it had not finished.

Only regular files inside the corpus are read (a symbolic link, to a file or a directory, a
FIFO or a device is passed over and counted): they are linked (else copied) by the SHA-1 of
their bytes into a staging directory beside the control file (``DIR2.minimize-inputs``), so
a file name with a newline or a link out of the corpus never reaches libFuzzer; empty files
are passed over as libFuzzer does.  The control file is written here before libFuzzer
starts: libFuzzer's format (the number of inputs, none in the output, the staged paths),
with a digest of the corpus after the count on its first line (libFuzzer reads the number
and ignores the rest).  A run that finds a control file resumes from it only when it is
one of these, of this corpus (the same digest and the same staged paths); anything else
is refused in one line, so a planted or stale control file can never make libFuzzer copy
files that are not this corpus's into the output.  The staging directory goes with the
control file at the end.

The merge's processes watch a pipe this process holds open: when it is gone (killed, even
with SIGKILL) they remove the scratch directory and exit, so nothing keeps running and
nothing is left but the control file and the staging directory a resume needs.

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
import hashlib
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

from fuzz.archive import archived_signatures, pid_alive, writable_problem

INPUT_TIMEOUT = 300  # seconds one input may take, as in a campaign
NEW_SUFFIX = ".minimize-new"
CONTROL_SUFFIX = ".minimize-control"
STAGE_SUFFIX = ".minimize-inputs"
CONTROL_MARK = "pudthp-minimize corpus="
TMP_PREFIX = "pudthp-minimize-"
ALIVE_FD_ENV = "PUDTHP_MINIMIZE_ALIVE_FD"  # the read end of the pipe the merge watches
TMP_ENV = "PUDTHP_MINIMIZE_TMP"  # the scratch directory it removes when the pipe closes
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
    """Regular files under ``directory``, symbolic links not followed."""
    return read_inputs(directory).regular


@dataclass
class Inputs:
    """The regular files of a corpus, by the SHA-1 of their bytes: (size, a path)."""

    files: dict[str, tuple[int, str]] = field(default_factory=dict)
    regular: int = 0  # regular files found (empty ones and copies included)
    empty: int = 0
    other: int = 0  # symbolic links, FIFOs, devices, sockets: never read

    def digest(self) -> str:
        """The corpus' digest: SHA-256 over its inputs' hashes and sizes, in order."""
        h = hashlib.sha256()
        for sha1, (size, _) in sorted(self.files.items()):
            h.update(f"{sha1} {size}\n".encode())
        return h.hexdigest()

    def staged(self, stage: str) -> list[str]:
        """The staged paths in libFuzzer's order (smallest first)."""
        order = sorted(self.files.items(), key=lambda kv: (kv[1][0], kv[0]))
        return [os.path.join(stage, sha1) for sha1, _ in order]


def read_inputs(corpus: str) -> Inputs:
    """The regular files under ``corpus`` (subdirectories too, as libFuzzer reads a
    corpus, but no symbolic link followed); a ``MinimizeError`` if one cannot be read."""
    out = Inputs()
    pending = [corpus]
    while pending:
        directory = pending.pop()
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            raise MinimizeError(f"{directory}: cannot list: {e.strerror or e}") from None
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                out.regular += 1
                sha1, size = _hash_file(entry.path)
                if size == 0:
                    out.empty += 1
                else:
                    out.files.setdefault(sha1, (size, entry.path))
            else:
                out.other += 1
    return out


def _hash_file(path: str) -> tuple[str, int]:
    h = hashlib.sha1()
    size = 0
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
                size += len(chunk)
    except OSError as e:
        raise MinimizeError(f"{path}: cannot read: {e.strerror or e}") from None
    return h.hexdigest(), size


def stage(inputs: Inputs, directory: str) -> None:
    """Make ``directory`` hold every input under its SHA-1 (a hard link, else a copy),
    and nothing else: a file there that is not one of them, or whose bytes are not its
    name's, is replaced or removed."""
    if os.path.lexists(directory) and not (os.path.isdir(directory)
                                            and not os.path.islink(directory)):
        raise MinimizeError(f"{directory}: exists and is not a directory; remove it")
    os.makedirs(directory, exist_ok=True)
    for name in os.listdir(directory):
        path = os.path.join(directory, name)
        if name not in inputs.files or os.path.islink(path) or not os.path.isfile(path) \
                or _hash_file(path)[0] != name:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
    for sha1, (_, src) in inputs.files.items():
        target = os.path.join(directory, sha1)
        if os.path.exists(target):
            continue
        try:
            os.link(src, target, follow_symlinks=False)
        except OSError:
            shutil.copyfile(src, target, follow_symlinks=False)


def write_control(control: str, inputs: Inputs, staged: list[str]) -> None:
    """A fresh control file in libFuzzer's format, the corpus' digest on its first line;
    written to a temporary file and renamed, so it is whole or absent."""
    tmp = f"{control}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(f"{len(staged)} {CONTROL_MARK}{inputs.digest()}\n0\n")
        f.writelines(f"{path}\n" for path in staged)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, control)


def control_problem(control: str, inputs: Inputs, staged: list[str]) -> str | None:
    """None when ``control`` is this command's control file of this corpus (the same
    digest and staged paths), else what it is."""
    try:
        with open(control, "rb") as f:
            head = f.read(64 << 10)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    lines = head.split(b"\n")
    first = lines[0].decode("utf-8", "replace")
    count, _, rest = first.partition(" ")
    if not rest.startswith(CONTROL_MARK):
        return "is not one pudthp corpus minimize wrote"
    if rest[len(CONTROL_MARK):] != inputs.digest() or count != str(len(staged)):
        return "belongs to another corpus (or this one changed since)"
    with open(control, "rb") as f:
        listed = f.read(sum(len(p) + 1 for p in staged) + len(lines[0]) + 3).split(b"\n")
    if listed[1:2] != [b"0"] or [p.decode("utf-8", "replace")
                                  for p in listed[2:2 + len(staged)]] != staged:
        return "lists other inputs than this corpus's"
    return None


def check(o: MinimizeOptions) -> tuple[str, str]:
    """The output directory and control file, after checking the directories; a
    ``MinimizeError`` for anything that would lose data or cannot work."""
    if not os.path.isdir(o.corpus):
        raise MinimizeError(f"{o.corpus}: not a directory")
    if not os.access(o.corpus, os.R_OK | os.X_OK):
        raise MinimizeError(f"{o.corpus}: not readable")
    out, control = paths(o)
    a_in, a_out = os.path.realpath(o.corpus), os.path.realpath(out)
    if a_out == a_in or a_out.startswith(a_in + os.sep) or a_in.startswith(a_out + os.sep):
        raise MinimizeError(f"--out {out}: must be outside {o.corpus} (use --in-place to "
                            f"replace it)")
    probe = out if os.path.isdir(out) else os.path.dirname(os.path.abspath(out))
    problem = writable_problem(probe) if os.path.isdir(probe) else "no such directory"
    if problem is not None:
        raise MinimizeError(f"{'--out ' if not o.in_place else ''}{out}: cannot write "
                            f"there: {problem}")
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
    inputs = read_inputs(o.corpus)
    before = inputs.regular
    skipped = ("" if not inputs.other else "; 1 entry that is not a regular file passed over"
               if inputs.other == 1 else
               f"; {inputs.other} entries that are not regular files passed over")
    if not inputs.files:
        raise MinimizeError(f"{o.corpus}: no inputs to minimize ({inputs.empty} empty "
                            f"file(s){skipped.replace('; ', ', ')})")
    staging = control.removesuffix(CONTROL_SUFFIX) + STAGE_SUFFIX
    staged = inputs.staged(os.path.abspath(staging))
    resuming = os.path.lexists(control)
    if resuming:
        problem = control_problem(control, inputs, staged)
        if problem is not None:
            raise MinimizeError(f"the control file {control} {problem}; remove it (and "
                                f"{out} if it holds nothing of yours) to start afresh")
    remove_stale_scratch()
    try:
        stage(inputs, staging)
        os.makedirs(out, exist_ok=True)
        if not resuming:
            write_control(control, inputs, staged)
    except OSError as e:
        raise MinimizeError(f"{e.filename or staging}: {e.strerror or e}") from None
    say(f"pudthp corpus minimize: {o.corpus}: {before} inputs ({len(staged)} distinct, "
        f"not empty{skipped}) -> {out}"
        + (f" (resuming with {control})" if resuming else f" (control file {control})"))
    if resuming:
        again = drop_unfinished(control)
        if again is not None:
            say(f"pudthp corpus minimize: input {again} was running when the earlier run "
                f"stopped; it runs again")
    start = time.monotonic()
    tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{os.getpid()}-")
    try:
        log = run_merge(o, out, control, tmp, inputs_dir=staging)
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
    resumed = _RESUME.search(log) if resuming else None
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
    shutil.rmtree(staging, ignore_errors=True)
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
    try:
        index = int(lines[started].split()[1])
    except ValueError:
        return None
    with open(control, "r+b") as f:
        f.truncate(sum(len(ln) + 1 for ln in lines[:started]))
    return index


def run_merge(o: MinimizeOptions, out: str, control: str, tmp: str,
              inputs_dir: str | None = None) -> str:
    """libFuzzer's ``-merge=1`` of ``inputs_dir`` (default ``o.corpus``) into ``out``
    (whose files count as already there) with the control file ``control``, through the
    target with ``o``'s options, from the scratch directory ``tmp``; returns libFuzzer's
    output.  The merge's processes end, and remove ``tmp``, when this process is gone."""
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
            os.path.abspath(out), os.path.abspath(inputs_dir or o.corpus)]
    log_path = os.path.join(tmp, "merge.log")
    alive_r, alive_w = os.pipe()  # the write end stays here: its close is this process's end
    os.set_inheritable(alive_r, True)
    env = {**os.environ, ALIVE_FD_ENV: str(alive_r), TMP_ENV: tmp}
    try:
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, cwd=tmp, env=env,
                                    pass_fds=(alive_r,), preexec_fn=_pdeathsig)
            os.close(alive_r)
            alive_r = -1
            try:
                proc.wait()
            except KeyboardInterrupt:
                _stop(proc)
                raise
            finally:
                if proc.poll() is None:
                    _stop(proc)
    finally:
        if alive_r >= 0:
            os.close(alive_r)
        os.close(alive_w)
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return f.read()


def remove_stale_scratch() -> int:
    """Remove the scratch directories of minimize runs that are gone (killed before they
    could); how many."""
    removed = 0
    base = tempfile.gettempdir()
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            if not name.startswith(TMP_PREFIX):
                continue
            pid = name[len(TMP_PREFIX):].split("-")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)
                removed += 1
    return removed


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
