"""The findings archive both engines write: one program JSON per signature, named by a short
hash of the signature; and each campaign's model-state coverage table.

Every write is atomic and durable: the text goes to a temporary file in the same directory
(a hidden ``.NAME.PID.XXXX.tmp``, never a ``*.json``), is flushed to the disk (fsync), and is
then linked under its final name, which fails when the name exists; the directory is
fsynced before ``archive`` returns.  So a file under a final name is always complete, a
finding is on disk before it is reported, a kill at any moment leaves at most a temporary
file (removed by ``remove_stale_temporaries`` once its writer is gone), and two campaigns
writing one directory never overwrite each other's valid finding.

A file already under the name counts as the signature's archive only when it loads as a
program whose ``meta.signature`` is that signature.  An empty, truncated or invalid file (an
older version on a full disk, an edit by hand) never masks the signature: it is reported
(``on_replace``) and replaced, atomically.  A valid file of another signature (two signatures
with one short hash) is kept, and the finding goes to ``HASH-2.json``.

Signatures are read in the current format (``harness.signature.current``): a file archived
under a format-1 signature (named by the hash of that) is the archive of its format-2 form,
so a finding met again is not archived twice under two names.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import hashlib
import os
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime

from harness.program import ProgramError, load_program_file
from harness.signature import of_meta

PROBE_BYTES = 16384  # what the writability probe writes: more than a typical finding


def finding_path(directory: str, signature: str) -> str:
    """Where a finding is archived: a short hash of its signature."""
    digest = hashlib.sha256(signature.encode()).hexdigest()[:12]
    return os.path.join(directory, f"{digest}.json")


def archive(directory: str, signature: str, text: str,
            on_replace: Callable[[str, str], None] | None = None) -> tuple[str, bool]:
    """Write a finding's program unless a valid file of its signature exists: (path, written).

    ``on_replace(path, problem)`` is told about an invalid file before it is replaced.
    Raises OSError when the directory cannot be written (full, read-only, gone); nothing
    is left under a final name then.
    """
    first = finding_path(directory, signature)
    if not os.path.exists(first):
        older = archived_signatures(directory).get(signature)
        if older is not None:  # under its format-1 name
            return older, False
    tmp = _write_temporary(directory, os.path.basename(first), text)
    consumed = False
    try:
        for n in range(1, 100):
            path = first if n == 1 else first.removesuffix(".json") + f"-{n}.json"
            while True:
                try:
                    os.link(tmp, path)
                except FileExistsError:
                    pass
                else:
                    _fsync_directory(directory)
                    return path, True
                problem = _problem(path, signature)
                if problem != "missing":
                    break  # else removed since: link again
            if problem is None:
                return path, False
            if problem.startswith("holds "):
                continue  # another signature with the same short hash: the next name
            if on_replace is not None:
                on_replace(path, problem)
            os.replace(tmp, path)
            consumed = True
            _fsync_directory(directory)
            return path, True
        raise OSError(errno.EEXIST, f"no free name for {signature} in {directory}")
    finally:
        if not consumed:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _problem(path: str, signature: str) -> str | None:
    """None when ``path`` is a complete archive of ``signature``, ``"missing"`` when there is
    no such file, ``"holds SIG"`` for a valid finding of another signature, else what is
    wrong with it."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        program = load_program_file(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable: {e.strerror or e}"
    except ProgramError as e:
        if e.message.startswith("cannot read: No such file"):
            return "missing"
        return f"not a valid program ({e.message})"
    found = of_meta(program.meta)
    if found == signature:
        return None
    if found is not None:
        return f"holds {found}"
    return "no meta.signature"


def _write_temporary(directory: str, name: str, text: str) -> str:
    """``text`` in a new hidden file of ``directory``, on disk; its path."""
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.{os.getpid()}.", suffix=".tmp", dir=directory)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # what open() would have made, not mkstemp's 0600
        data = text.encode("utf-8")
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):  # a file system without it
            raise
    finally:
        os.close(fd)


def remove_stale_temporaries(directory: str) -> int:
    """Remove the temporary files of writers that are gone (killed mid-write); how many."""
    removed = 0
    for path in glob.glob(os.path.join(directory, ".*.tmp")):
        parts = os.path.basename(path).split(".")
        pid = next((int(p) for p in reversed(parts[:-2]) if p.isdigit()), None)
        if pid is None or pid == os.getpid() or pid_alive(pid):
            continue
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed += 1
    return removed


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (one of another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def writable_problem(directory: str) -> str | None:
    """None when a finding can be written to ``directory`` now, else why not (one line):
    writes and fsyncs ``PROBE_BYTES`` in a temporary file, so a full or read-only file system
    is found before a campaign starts."""
    try:
        _fsync_directory(directory)
        tmp = _write_temporary(directory, "probe", "\n" * PROBE_BYTES)
    except OSError as e:
        return e.strerror or str(e)
    with contextlib.suppress(OSError):
        os.unlink(tmp)
    return None


def archived_signatures(directory: str) -> dict[str, str]:
    """signature (in the current format) -> file of every program in ``directory`` whose
    meta has one."""
    out: dict[str, str] = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        try:
            sig = of_meta(load_program_file(path).meta)
        except ProgramError:
            continue
        if sig is not None:
            out.setdefault(sig, path)
    return out


def write_coverage(directory: str, engine: str, seed: int, text: str) -> str:
    """Write a campaign's model-state coverage table next to its findings, as
    ``coverage-<UTC time>-<engine>-seed<seed>.txt`` (a name no program file has, so the
    corpus tools pass it by); written as a finding is (a temporary file on disk, then
    renamed), so the file is whole or absent.  Returns its path."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    name = f"coverage-{stamp}-{engine}-seed{seed}.txt"
    path = os.path.join(directory, name)
    os.replace(_write_temporary(directory, name, text), path)
    return path


def write_beside(path: str, text: str) -> None:
    """Write a file that goes with an archived finding (its C reproducer) as the archive
    writes one: a temporary file on disk, then renamed, so it is whole or absent."""
    directory = os.path.dirname(path) or "."
    os.replace(_write_temporary(directory, os.path.basename(path), text), path)
    _fsync_directory(directory)
