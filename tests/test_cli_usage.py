"""Command-line values and output paths that used to end in a traceback, a silent no-op,
a livelock or exit 0: each is checked before any work where it can be, and is one line
``pudthp: error: ...``, exit 2.  Limits too small or too large for the machine's timers
and rlimits, empty or directory output paths, read-only or full file systems (tmpfs
mounts, as root), and a campaign that cannot run any program."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import limits

ROOT = Path(__file__).resolve().parents[1]
PROGRAM = str(ROOT / "corpus" / "seeds" / "pud_basic_alloc_small.json")
FINDING = str(ROOT / "corpus" / "known_bad" / "list_head_two_puds.json")


def pudthp(*args: str, timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pudthp_cli", *args], capture_output=True,
                          text=True, timeout=timeout, check=False, cwd=ROOT,
                          **kw)  # type: ignore[call-overload]


def one_line_error(r: subprocess.CompletedProcess[str], needle: str) -> None:
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("pudthp: error: "), r.stderr
    assert r.stderr.count("\n") == 1, r.stderr
    assert needle in r.stderr, r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.mark.parametrize(("args", "needle"), [
    (["run", PROGRAM, "--max-rss", "1"], "under 64 MiB"),
    (["run", PROGRAM, "--max-rss", str(10**23)], "is over"),
    (["run", PROGRAM, "--max-rss", "1e23"], "not an integer"),
    (["run", PROGRAM, "--max-time", "1e308"], "over 1e+08 seconds"),
    (["run", PROGRAM, "--report", ""], "--report: an empty file name"),
    (["run", PROGRAM, "--report", "/"], "is a directory"),
    (["run", PROGRAM, "--report", "/nonexistent-dir/r.json"], "no such directory"),
    (["fuzz", "--max-rss", "1"], "under 64 MiB"),
    (["fuzz", "--max-rss", str(10**23)], "is over"),
    (["fuzz", "--max-rss", "1e23"], "not an integer"),
    (["fuzz", "--max-program-time", "1e-6"], "no program could finish"),
    (["fuzz", "--time", "1e308"], "over 1e+08 seconds"),
    (["bench", "--json", "/"], "--json /: is a directory"),
    (["conform", PROGRAM, "--report", "/"], "--report /: is a directory"),
    (["export-c", PROGRAM, "-o", "/"], "-o /: is a directory"),
    (["shrink", FINDING, "--out", "/nonexistent-dir/s.json"], "no such directory"),
])
def test_a_bad_value_is_one_line_before_any_work(args: list[str], needle: str) -> None:
    t = time.monotonic()
    r = pudthp(*args)
    one_line_error(r, needle)
    assert r.stdout == ""  # nothing ran: no op printed, no bench row, no campaign line
    assert time.monotonic() - t < 60


def test_corpus_merge_onto_a_file_is_one_line(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_text("a file")
    one_line_error(pudthp("corpus", "merge", str(out), str(ROOT / "corpus" / "seeds")),
                   f"OUT {out}")
    assert out.read_text() == "a file"


@pytest.fixture
def readonly(tmp_path: Path) -> Iterator[Path]:
    """A read-only file system (a tmpfs mounted ro; root)."""
    yield from _tmpfs(tmp_path / "ro", "size=1m,ro")


@pytest.fixture
def full(tmp_path: Path) -> Iterator[Path]:
    """A full file system (a tmpfs of 64 KiB, filled; root)."""
    for d in _tmpfs(tmp_path / "full", "size=64k"):
        _fill(d)
        yield d


def _tmpfs(d: Path, opts: str) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("a read-only or full file system needs root (a tmpfs mount)")
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "pudthp-test", str(d)],
                       capture_output=True, text=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {r.stderr.strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], check=False)


def _fill(d: Path) -> None:
    fd = os.open(d / "fill", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:  # full
        pass
    finally:
        os.close(fd)


def test_outputs_on_a_read_only_file_system_are_one_line(readonly: Path) -> None:
    seeds = str(ROOT / "corpus" / "seeds")
    one_line_error(pudthp("corpus", "merge", str(readonly / "out"), seeds), "OUT")
    one_line_error(pudthp("corpus", "merge", str(readonly), seeds), "cannot merge into it")
    one_line_error(pudthp("corpus", "archive", FINDING, "--note", "n", "--to",
                          str(readonly), "--expect", "finding"), "--to")
    assert os.path.exists(FINDING)  # not moved
    one_line_error(pudthp("run", PROGRAM, "--report", str(readonly / "r.json")),
                   "cannot write there")
    one_line_error(pudthp("bench", "--json", str(readonly / "b.json")), "cannot write there")


def test_fuzz_stats_on_a_full_disk_is_one_line_before_the_campaign(full: Path,
                                                                    tmp_path: Path) -> None:
    r = pudthp("fuzz", "--time", "5", "--workers", "1", "--no-example-db", "--findings",
               str(tmp_path / "f"), "--stats", str(full / "s.jsonl"))
    one_line_error(r, "No space left on device")


def test_fuzz_stats_filling_the_disk_mid_campaign_is_one_line(tmp_path: Path) -> None:
    for d in _tmpfs(tmp_path / "disk", "size=256k"):
        stats = d / "s.jsonl"
        proc = subprocess.Popen(
            [sys.executable, "-m", "pudthp_cli", "fuzz", "--time", "14", "--workers", "1",
             "--no-example-db", "--findings", str(tmp_path / "f"), "--stats", str(stats),
             "--config", "deposit=lru_next"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        deadline = time.monotonic() + 60
        while not (stats.exists() and stats.stat().st_size) and time.monotonic() < deadline:
            time.sleep(0.1)
        _fill(d)  # the disk fills while the campaign runs ...
        with open(stats, "ab") as f:  # ... and so does the last page of the stats file
            f.write(b"\n" * (-stats.stat().st_size % 4096))  # (blank lines: passed over)
        out, err = proc.communicate(timeout=180)
        assert proc.returncode in (0, 1), err
        assert "Traceback" not in out + err
        said = [line for line in err.splitlines() if "--stats" in line]
        assert len(said) == 1, err
        assert "No space left on device" in said[0]
        assert "pudthp fuzz: done after" in out


def test_a_campaign_that_cannot_run_any_program_says_so_and_exits_2(tmp_path: Path) -> None:
    # A planted fault: in the workers (started from this environment) every op of the
    # reference model runs out of memory, so every program stops at a resource limit.
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('PUDTHP_TEST_NO_MEMORY'):\n"
        "    import pudthp_ref.model as m\n"
        "    def apply(self, op):\n"
        "        raise MemoryError\n"
        "    m.RefModel.apply = apply\n")
    env = {**os.environ, "PYTHONPATH": str(site), "PUDTHP_TEST_NO_MEMORY": "1"}
    r = pudthp("fuzz", "--time", "4", "--workers", "1", "--impl", "ref", "--no-example-db",
               "--findings", str(tmp_path / "f"), env=env, timeout=180)
    assert r.returncode == 2, r.stdout + r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("pudthp: error: no program ran to its end ("), r.stderr
    assert "Traceback" not in r.stdout + r.stderr


def test_a_limit_raised_where_python_cannot_pass_it_on_is_not_printed(
        capsys: pytest.CaptureFixture[str]) -> None:
    # A time limit firing inside a gc callback or a __del__ used to print a traceback
    # ("Exception ignored in ...") into a campaign's output; it is raised again anyway.
    limits.quiet_unraisable_limits()

    class Dropped:
        def __del__(self) -> None:
            raise limits.LimitExceeded("time", "time limit reached")

    Dropped()
    assert capsys.readouterr().err == ""


def test_a_tiny_program_time_cap_never_storms_signals() -> None:
    # --max-program-time 1e-6 used to re-arm SIGALRM every microsecond: a livelock
    timer = limits.ProgramTimer(1e-6)  # restores the handler it found at close()
    signal.signal(signal.SIGALRM, signal.SIG_IGN)  # no limit raised in this test
    try:
        timer.start()
        _, interval = signal.getitimer(signal.ITIMER_REAL)
        assert interval >= limits.MIN_REPEAT_SECONDS
    finally:
        timer.close()
