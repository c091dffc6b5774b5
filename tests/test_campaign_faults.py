"""Campaigns under faults: nothing archived is ever half a file, no finding is lost.

The archive on its own (atomic and durable writes, an empty or invalid file never masking
its signature, two writers on one directory, a full or read-only directory), then real
campaigns of both engines under SIGTERM, SIGKILL of the parent and SIGKILL of a worker, a
full findings directory mid-campaign, and the leftovers of a killed atheris campaign.
Every test that kills checks the same three things afterwards: each file in the findings
directory is a complete program whose file name is its signature's, no temporary or
campaign directory is left, and no worker process outlives its campaign.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import fuzz.archive
import fuzz.supervisor
from fuzz.archive import (
    archive,
    archived_signatures,
    finding_path,
    remove_stale_temporaries,
    writable_problem,
)
from fuzz.engine_hypothesis import Campaign, HypothesisEngine, run_campaign
from fuzz.supervisor import Found, Supervisor
from harness.program import dump_program, load_program_file
from harness.runner import run_program
from pudthp_cli.main import main
from pudthp_ref.spec import Config, Mmap, Program, Write

ROOT = Path(__file__).resolve().parents[1]
PUDTHP = [sys.executable, "-m", "pudthp_cli"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def finding_text(signature: str, note: str = "") -> str:
    p = Program(Config(), (Mmap(0, 0, 64, "rw"), Write(0, 0, 1)),
                {"signature": signature, "note": note})
    return dump_program(p)


COVERAGE_TABLE = re.compile(r"coverage-\d{8}T\d{6}Z-(hypothesis|atheris)-seed\d+\.txt")


def check_findings(directory: Path) -> dict[str, str]:
    """Every file is a complete program named by its signature; nothing else is left (no
    temporary file, no campaign directory) but the campaigns' coverage tables.  signature ->
    file name."""
    out: dict[str, str] = {}
    for f in sorted(directory.iterdir()):
        if COVERAGE_TABLE.fullmatch(f.name):
            continue
        assert f.suffix == ".json", f"left behind: {f.name}"
        assert not f.name.startswith("."), f"left behind: {f.name}"
        program = load_program_file(str(f))
        sig = program.meta["signature"]
        assert f.name == Path(finding_path(str(directory), sig)).name
        out[sig] = f.name
    return out


# --------------------------------------------------------------------------------------
# The archive
# --------------------------------------------------------------------------------------


def test_a_finding_is_written_whole_and_nothing_else_is_left(tmp_path: Path) -> None:
    path, new = archive(str(tmp_path), "sig:a", finding_text("sig:a"))
    assert new
    assert Path(path).read_text() == finding_text("sig:a")
    assert check_findings(tmp_path) == {"sig:a": Path(path).name}
    mode = os.stat(path).st_mode & 0o777
    assert mode & 0o444 == 0o444  # readable by all, as a file open() makes (not 0600)


def test_a_valid_file_is_kept(tmp_path: Path) -> None:
    first, _ = archive(str(tmp_path), "sig:a", finding_text("sig:a", "first"))
    path, new = archive(str(tmp_path), "sig:a", finding_text("sig:a", "second"))
    assert (path, new) == (first, False)
    assert "first" in Path(path).read_text()


@pytest.mark.parametrize(("content", "problem"), [
    ("", "empty file"),
    (None, "not a valid program"),  # the first half of a finding: a truncated file
    ('{"format": "pudthp-program/1", "config": {}, "ops": []}', "no meta.signature"),
])
def test_an_invalid_file_never_masks_its_signature(tmp_path: Path, content: str | None,
                                                    problem: str) -> None:
    full = finding_text("sig:a")
    target = Path(finding_path(str(tmp_path), "sig:a"))
    target.write_text(full[: len(full) // 2] if content is None else content)
    told: list[tuple[str, str]] = []
    _, new = archive(str(tmp_path), "sig:a", full, lambda p, why: told.append((p, why)))
    assert new
    assert len(told) == 1
    assert told[0][0] == str(target)
    assert told[0][1].startswith(problem)
    assert target.read_text() == full
    assert check_findings(tmp_path) == {"sig:a": target.name}


def test_a_file_of_another_signature_is_kept_and_the_finding_goes_beside_it(
        tmp_path: Path) -> None:
    # Two signatures with one short hash: neither masks nor replaces the other.
    target = Path(finding_path(str(tmp_path), "sig:a"))
    target.write_text(finding_text("sig:other"))
    path, new = archive(str(tmp_path), "sig:a", finding_text("sig:a"))
    assert new
    assert path.endswith("-2.json")
    assert archived_signatures(str(tmp_path)) == {"sig:other": str(target), "sig:a": path}


def test_a_full_disk_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # ENOSPC from the write: no file under the finding's name, no temporary file.
    def write(fd: int, data: Any) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(fuzz.archive.os, "write", write)
    with pytest.raises(OSError, match="No space left") as info:
        archive(str(tmp_path), "sig:a", finding_text("sig:a"))
    assert info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []
    assert writable_problem(str(tmp_path)) == "No space left on device"


def test_temporary_files_of_a_dead_writer_are_removed(tmp_path: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    stale = tmp_path / f".abc.json.{int(dead.stdout)}.x1y2.tmp"
    mine = tmp_path / f".abc.json.{os.getpid()}.z3.tmp"
    stale.write_text("{")
    mine.write_text("{")
    assert remove_stale_temporaries(str(tmp_path)) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [mine.name]


WRITER = """
import sys
from fuzz.archive import archive
from harness.program import dump_program
from pudthp_ref.spec import Config, Mmap, Program
directory, who = sys.argv[1], sys.argv[2]
for i in range(60):
    sig = f"sig:{i}"
    text = dump_program(Program(Config(), (Mmap(0, 0, 8 + i, "rw"),),
                                {"signature": sig, "writer": who}))
    archive(directory, sig, text)
"""


def test_two_campaigns_on_one_directory_write_every_finding_once_and_whole(
        tmp_path: Path) -> None:
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who], cwd=ROOT)
             for who in ("a", "b", "c")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    found = check_findings(tmp_path)
    assert sorted(found) == sorted(f"sig:{i}" for i in range(60))


@contextlib.contextmanager
def unwritable_dir(tmp_path: Path, how: str) -> Iterator[Path]:
    """A directory a finding cannot be written to: read-only, or full."""
    d = tmp_path / how
    d.mkdir()
    if os.geteuid() != 0:
        if how == "full":
            pytest.skip("a full file system needs root (a tmpfs mount)")
        d.chmod(0o555)
        try:
            yield d
        finally:
            d.chmod(0o755)
        return
    size = "64k" if how == "full" else "1m"
    opts = f"size={size}" + (",ro" if how == "read-only" else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "pudthp-test", str(d)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        if how == "full":
            with contextlib.suppress(OSError), open(d / "filler", "wb") as f:
                while True:
                    f.write(b"\0" * 4096)
                    f.flush()
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


@pytest.mark.parametrize(("how", "reason"), [("read-only", ("Read-only", "Permission")),
                                             ("full", ("No space left",))])
def test_a_campaign_refuses_an_unwritable_findings_directory_at_start(
        tmp_path: Path, how: str, reason: tuple[str, ...],
        capsys: pytest.CaptureFixture[str]) -> None:
    with unwritable_dir(tmp_path, how) as d:
        code = main(["fuzz", "--findings", str(d), "--time", "1", "--workers", "1"])
        out, err = capsys.readouterr()
    assert code == 2
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pudthp: error: --findings {d}: cannot write a finding")
    assert any(r in lines[0] for r in reason), lines[0]


# --------------------------------------------------------------------------------------
# Real campaigns: the Hypothesis engine
# --------------------------------------------------------------------------------------


def children(pid: int) -> set[int]:
    out: set[int] = set()
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.update(int(x) for x in f.read().split())
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


def wait_gone(pids: set[int], seconds: float = 20) -> set[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(alive(p) for p in pids):
        time.sleep(0.1)
    return {p for p in pids if alive(p)}


def start(args: list[str], **kw: Any) -> subprocess.Popen[str]:
    # no example database: the repository's would carry cases from test to test
    return subprocess.Popen([*PUDTHP, "fuzz", "--no-example-db", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            **kw)


def wait_for(proc: subprocess.Popen[str], needle: str, seconds: float = 120) -> str:
    assert proc.stderr is not None
    deadline = time.monotonic() + seconds
    seen = ""
    while needle not in seen and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
    assert needle in seen, seen
    return seen


def workers_of(pid: int, marker: str, n: int, seconds: float = 60) -> set[int]:
    deadline = time.monotonic() + seconds
    found: set[int] = set()
    while time.monotonic() < deadline:
        found = set()
        for child in children(pid):
            with contextlib.suppress(OSError), open(f"/proc/{child}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.add(child)
        if len(found) >= n:
            return found
        time.sleep(0.05)
    raise AssertionError(f"only {len(found)} of {n} workers of {pid} seen")


def assert_stopped_by_sigterm(proc: subprocess.Popen[str], workers: set[int],
                              seconds: float) -> str:
    """A campaign sent SIGTERM stops within ``seconds``: exit 143, its summary line, no
    traceback, and its workers gone 10 seconds later; returns what it printed."""
    out, err = proc.communicate(timeout=seconds)
    assert proc.returncode == 143, out + err
    assert "Traceback" not in out + err
    assert "terminated (SIGTERM) after" in out
    assert not wait_gone(workers, 10)
    return out


HYPOTHESIS_WORKER = "spawn_main"


@pytest.mark.parametrize("to_group", [False, True])
def test_sigterm_stops_the_workers_and_prints_the_summary(tmp_path: Path,
                                                          to_group: bool) -> None:
    proc = start(["--findings", str(tmp_path), "--time", "300", "--workers", "1", "--seed",
                  "3", "--config", "deposit=list_head"], start_new_session=True)
    workers = workers_of(proc.pid, HYPOTHESIS_WORKER, 1)
    wait_for(proc, "finding (new)")
    if to_group:  # what a scheduler or systemd does: every process of the job
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    out = assert_stopped_by_sigterm(proc, workers, 90)
    found = check_findings(tmp_path)
    assert found
    for name in found.values():
        assert name in out


def test_a_killed_worker_is_restarted_and_counted(tmp_path: Path) -> None:
    proc = start(["--findings", str(tmp_path), "--time", "6", "--workers", "2", "--seed",
                  "1"])
    first = workers_of(proc.pid, HYPOTHESIS_WORKER, 2)
    time.sleep(1.5)
    victim = min(first)
    os.kill(victim, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "Traceback" not in out + err
    assert "killed by SIGKILL; started again with seed" in err
    assert "restarts  1: worker" in out
    assert "killed by SIGKILL" in out
    left = [f.name for f in tmp_path.iterdir()]
    assert all(COVERAGE_TABLE.fullmatch(name) for name in left), left


def test_sigkill_of_the_parent_leaves_complete_findings_and_no_workers(tmp_path: Path) -> None:
    proc = start(["--findings", str(tmp_path), "--time", "300", "--workers", "2", "--seed",
                  "5", "--config", "deposit=list_head"])
    workers = workers_of(proc.pid, HYPOTHESIS_WORKER, 2)
    wait_for(proc, "finding (new)")
    proc.kill()
    proc.communicate(timeout=30)
    assert not wait_gone(workers, 30), "workers outlived their campaign"
    found = check_findings(tmp_path)
    assert found
    assert archived_signatures(str(tmp_path)).keys() == found.keys()  # what a next one sees


def found(signature: str) -> Found:
    """A finding as a worker reports it to the supervisor."""
    return Found(signature, "invariant", 2, finding_text(signature))


def supervisor(tmp_path: Path) -> tuple[Supervisor, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    c = Campaign(1.0, 1, {}, str(tmp_path), 1, err=err, out=out)
    return Supervisor(HypothesisEngine(c), c), out, err


def test_the_supervisor_reports_and_rewrites_an_empty_finding_file(tmp_path: Path) -> None:
    target = Path(finding_path(str(tmp_path), "sig:a"))
    target.write_text("")  # what a full disk used to leave
    sup, _, err = supervisor(tmp_path)
    assert sup.write(found("sig:a"))
    assert f"{target}: empty file; rewriting it" in err.getvalue()
    assert [(a.path, a.finding, a.new) for a in sup.archived] == [
        (str(target), found("sig:a"), True)]
    assert check_findings(tmp_path) == {"sig:a": target.name}


def test_the_supervisor_keeps_an_unwritable_finding_and_prints_it_at_the_end(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = fuzz.supervisor.archive
    full = {"on": True}

    def archive_(directory: str, signature: str, text: str, *a: Any) -> tuple[str, bool]:
        if full["on"]:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(directory, signature, text, *a)

    monkeypatch.setattr(fuzz.supervisor, "archive", archive_)
    sup, out, err = supervisor(tmp_path)
    assert not sup.write(found("sig:a"))
    assert not sup.write(found("sig:b"))
    assert "No space left on device; 2 finding(s) kept in memory" in err.getvalue()
    sup.retry(force=True)  # still full: both kept
    assert [u.finding.signature for u in sup.unwritten] == ["sig:a", "sig:b"]
    sup.summary(1.0)
    text = out.getvalue()
    assert "UNWRITTEN sig:a (2 ops)" in text
    assert "    " + finding_text("sig:a").splitlines()[1] in text  # the program, whole
    full["on"] = False  # space again: the next retry writes both
    sup.retry(force=True)
    assert sup.unwritten == []
    assert set(check_findings(tmp_path)) == {"sig:a", "sig:b"}


def test_a_full_disk_mid_campaign_keeps_the_findings(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A real campaign whose parent's first two writes fail with ENOSPC: it says so, keeps
    # the findings and writes them when a retry succeeds.
    real = fuzz.supervisor.archive
    calls = {"n": 0}

    def archive_(directory: str, signature: str, text: str, *a: Any) -> tuple[str, bool]:
        calls["n"] += 1
        if calls["n"] <= 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(directory, signature, text, *a)

    monkeypatch.setattr(fuzz.supervisor, "archive", archive_)
    monkeypatch.setattr(fuzz.supervisor, "RETRY_SECONDS", 0.5)
    out, err = io.StringIO(), io.StringIO()
    code = run_campaign(Campaign(4.0, 1, {"deposit": "list_head"}, str(tmp_path), 7,
                                 err=err, out=out))
    assert code == 1, out.getvalue() + err.getvalue()
    assert "cannot write a finding to" in err.getvalue()
    assert "No space left on device" in err.getvalue()
    found = check_findings(tmp_path)
    assert found
    assert "UNWRITTEN" not in out.getvalue()
    for name in found.values():
        assert name in out.getvalue()


# --------------------------------------------------------------------------------------
# Real campaigns: the atheris engine
# --------------------------------------------------------------------------------------

ATHERIS_WORKER = "fuzz.target"


def atheris_args(tmp_path: Path, seconds: int, *extra: str) -> list[str]:
    return ["--engine", "atheris", "--time", str(seconds), "--workers", "1", "--seed", "1",
            "--corpus", str(tmp_path / "corpus"), "--findings", str(tmp_path / "findings"),
            *extra]


def test_atheris_sigkill_leaves_crash_inputs_that_the_next_campaign_archives(
        tmp_path: Path) -> None:
    findings = tmp_path / "findings"
    proc = start(atheris_args(tmp_path, 120, "--config", "deposit=list_head"))
    workers = workers_of(proc.pid, ATHERIS_WORKER, 1)
    # the moment libFuzzer has written a crash input and the parent starts on it
    deadline = time.monotonic() + 90
    crash: list[Path] = []
    while not crash and time.monotonic() < deadline:
        crash = list(findings.glob(".pudthp-atheris-*/w*-crash-*"))
        time.sleep(0.01)
    assert crash, "no crash input within 90 s"
    proc.kill()
    proc.communicate(timeout=30)
    assert not wait_gone(workers, 10), "a worker outlived its campaign"
    # what the kill left: complete findings only, and the campaign's directory with the
    # crash input, unless the parent had archived it already
    pending = [p for p in crash if p.exists()]
    archived = {f.name for f in findings.glob("*.json")}
    assert pending or archived
    for name in archived:
        load_program_file(str(findings / name))
    again = subprocess.run([*PUDTHP, "fuzz", *atheris_args(tmp_path, 2, "--config",
                                                           "deposit=list_head")],
                           cwd=ROOT, capture_output=True, text=True, timeout=120, env=ENV)
    assert again.returncode == 1, again.stdout + again.stderr
    if pending:
        assert "left by a killed campaign" in again.stderr
    found = check_findings(findings)  # and no campaign directory left
    assert found
    for sig, name in found.items():
        replay = run_program(load_program_file(str(findings / name)), "both").finding
        assert replay is not None
        assert replay.signature == sig


def test_atheris_sigterm_is_a_clean_stop(tmp_path: Path) -> None:
    proc = start(atheris_args(tmp_path, 120))
    workers = workers_of(proc.pid, ATHERIS_WORKER, 1)
    wait_for(proc, "execs/s")
    proc.send_signal(signal.SIGTERM)
    assert_stopped_by_sigterm(proc, workers, 60)
    assert check_findings(tmp_path / "findings") == {}
    assert len(list((tmp_path / "corpus").iterdir())) > 0  # the corpus stays to resume


def test_atheris_a_killed_worker_is_restarted_and_counted(tmp_path: Path) -> None:
    proc = start(atheris_args(tmp_path, 8))
    first = workers_of(proc.pid, ATHERIS_WORKER, 1)
    wait_for(proc, "execs/s")
    os.kill(min(first), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert "killed by SIGKILL; started again" in err
    assert "restarts  1: worker 0 killed by SIGKILL" in out
    assert check_findings(tmp_path / "findings") == {}

