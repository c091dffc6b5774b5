"""``pudthp corpus minimize``: libFuzzer's merge through the atheris target keeps a subset
of the corpus that libFuzzer itself finds covers everything the whole did; the input
directory is untouched unless ``--in-place``; a killed run resumes from its control file;
bad usage is one line, exit 2."""

from __future__ import annotations

import contextlib
import glob
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fuzz.minimize import MinimizeOptions, drop_unfinished, run_merge, swap


def make_corpus(directory: Path, distinct: int, copies: int, seed: int) -> dict[str, bytes]:
    rng = random.Random(seed)
    directory.mkdir()
    files: dict[str, bytes] = {}
    for i in range(distinct):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(200, 600)))
        for c in range(copies):
            files[f"in{i:03d}-{c}"] = data
    for name, data in files.items():
        (directory / name).write_bytes(data)
    return files


def contents(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir()}


def minimize_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pudthp_cli", "corpus", "minimize", *args]


def covers(kept: Path, everything: Path, scratch: Path) -> bool:
    """libFuzzer's own judgement: merging ``everything`` into a copy of ``kept`` adds no
    file, i.e. no input of ``everything`` has coverage or features ``kept`` lacks."""
    scratch.mkdir()
    copy = scratch / "kept"
    copy.mkdir()
    for p in kept.iterdir():
        (copy / p.name).write_bytes(p.read_bytes())
    log = run_merge(MinimizeOptions(str(everything)), str(copy), str(scratch / "ctl"),
                    str(scratch))
    m = re.search(r"MERGE-OUTER: (\d+) new files", log)
    assert m, log[-2000:]
    return m.group(1) == "0"


def test_minimize_to_a_new_directory_keeps_the_coverage_and_the_input(
        tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    before = make_corpus(corpus, distinct=10, copies=3, seed=5)
    r = subprocess.run(minimize_cmd(str(corpus), "--out", str(tmp_path / "small")),
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    after = contents(tmp_path / "small")
    # identical bytes have identical coverage: at most one of the three copies of each of
    # the 10 inputs is needed, so at most 10 files are kept (and at least one)
    assert 1 <= len(after) <= 10
    assert set(after.values()) <= set(before.values())
    assert f"30 -> {len(after)} files" in r.stdout
    assert contents(corpus) == before
    assert not (tmp_path / "small.minimize-control").exists()
    assert covers(tmp_path / "small", corpus, tmp_path / "check")


def test_a_killed_in_place_minimize_resumes_and_swaps_at_the_end(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    before = make_corpus(corpus, distinct=40, copies=1, seed=6)
    control = tmp_path / "corpus.minimize-control"
    proc = subprocess.Popen(minimize_cmd(str(corpus), "--in-place"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    started = 0
    while started < 8:
        assert proc.poll() is None, "the merge ended before it could be killed"
        assert time.monotonic() < deadline
        try:
            started = control.read_text().count("STARTED ")
        except FileNotFoundError:
            started = 0
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job: minimize and libFuzzer's workers
    proc.wait()
    assert contents(corpus) == before  # nothing swapped yet
    assert control.exists()
    r = subprocess.run(minimize_cmd(str(corpus), "--in-place"), capture_output=True,
                       text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"40 -> (\d+) files .* resumed at input (\d+)", r.stdout)
    assert m, r.stdout
    assert int(m.group(2)) >= 7  # the kill came after input 7 (the 8th) had started
    assert f"input {m.group(2)} was running when the earlier run stopped" in r.stderr
    after = contents(corpus)
    assert len(after) == int(m.group(1))
    assert 1 <= len(after) <= 40
    assert set(after.values()) <= set(before.values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus"]  # nothing left over
    original = tmp_path / "original"
    original.mkdir()
    for name, data in before.items():
        (original / name).write_bytes(data)
    assert covers(corpus, original, tmp_path / "check")


def test_bad_usage_is_one_line_and_touches_nothing(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    before = make_corpus(corpus, distinct=2, copies=1, seed=7)
    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_bytes(b"x")
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        ([str(tmp_path / "none")], f"{tmp_path / 'none'}: not a directory"),
        ([str(empty)], f"{empty}: no inputs to minimize"),
        ([str(corpus), "--out", str(full)], "exists and is not empty"),
        ([str(corpus), "--out", str(corpus / "sub")], "must be outside"),
        ([str(corpus), "--out", str(full), "--in-place"], "not allowed with argument"),
        ([str(corpus), "--config", "deposit=nope"], "--config"),
    ]
    for args, message in cases:
        r = subprocess.run(minimize_cmd(*args), capture_output=True, text=True, timeout=60,
                           check=False)
        assert r.returncode == 2, (args, r.stderr)
        assert r.stderr.startswith("pudthp: error: ")
        assert r.stderr.count("\n") == 1
        assert message in r.stderr
    assert contents(corpus) == before
    assert contents(full) == {"x": b"x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "empty", "full"]


def test_swap_exchanges_two_directories(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    (a / "from-a").write_text("a")
    (b / "from-b").write_text("b")
    swap(str(a), str(b))
    assert [p.name for p in a.iterdir()] == ["from-b"]
    assert [p.name for p in b.iterdir()] == ["from-a"]
    with pytest.raises(FileNotFoundError):
        swap(str(a), str(tmp_path / "missing"))
    assert [p.name for p in a.iterdir()] == ["from-b"]  # left where it was


def test_the_input_running_at_a_kill_is_run_again(tmp_path: Path) -> None:
    # A control file: 3 files, none in the initial corpus, their paths, then per input a
    # STARTED line and its FT and COV lines.  Input 0 finished; input 1 had started (and
    # written its FT line) when the merge was killed: it must lose its record and run
    # again, not count as an input that crashed.
    head = "3\n0\n/c/a\n/c/b\n/c/c\n"
    done = "STARTED 0 10\nFT 0 1 2\nCOV 0 5\n"
    control = tmp_path / "ctl"
    control.write_text(head + done + "STARTED 1 12\nFT 1 3")
    assert drop_unfinished(str(control)) == 1
    assert control.read_text() == head + done
    assert drop_unfinished(str(control)) is None  # complete: left as it is
    assert control.read_text() == head + done
    control.write_text(head + done + "STA")  # only a line cut short
    assert drop_unfinished(str(control)) is None
    assert control.read_text() == head + done


# -- hostile corpora and control files, kills --------------------------------------------


def test_only_the_regular_files_of_the_corpus_are_read(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    before = make_corpus(corpus, distinct=4, copies=1, seed=8)
    outside = tmp_path / "outside"
    outside.write_bytes(b"a secret outside the corpus")
    (corpus / "loop").symlink_to(".")  # a symbolic link to a directory hung the merge
    (corpus / "up").symlink_to(tmp_path)
    (corpus / "secret").symlink_to(outside)
    (corpus / "name\nwith a newline").write_bytes(b"\x05" * 300)
    os.mkfifo(corpus / "fifo")
    r = subprocess.run(minimize_cmd(str(corpus), "--out", str(tmp_path / "small")),
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    after = contents(tmp_path / "small")
    assert after
    assert set(after.values()) <= set(before.values()) | {b"\x05" * 300}
    # three links and a FIFO passed over; 5 regular files, each read
    assert "5 inputs (5 distinct, not empty; 4 entries that are not regular files passed " \
        "over)" in r.stderr
    assert not (tmp_path / "small.minimize-inputs").exists()


def test_a_corpus_of_empty_files_is_one_line_with_no_resume_hint(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "empty").write_bytes(b"")
    r = subprocess.run(minimize_cmd(str(corpus)), capture_output=True, text=True,
                       timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr == (f"pudthp: error: corpus minimize: {corpus}: no inputs to minimize "
                        "(1 empty file(s))\n")


@pytest.mark.parametrize("kind", ["junk", "planted", "another corpus"])
def test_a_control_file_not_of_this_corpus_is_refused(tmp_path: Path, kind: str) -> None:
    from fuzz.minimize import read_inputs, write_control

    corpus = tmp_path / "corpus"
    make_corpus(corpus, distinct=3, copies=1, seed=9)
    secret = tmp_path / "secret"
    secret.write_bytes(b"not the corpus's: " + os.urandom(32))
    out = tmp_path / "out"
    control = tmp_path / "out.minimize-control"
    if kind == "junk":
        control.write_bytes(b"\xff\xfejunk\n")
    elif kind == "planted":  # libFuzzer's own format, naming a file outside the corpus
        control.write_text(f"1\n0\n{secret}\n")
    else:
        other = tmp_path / "other"
        make_corpus(other, distinct=2, copies=1, seed=10)
        inputs = read_inputs(str(other))
        write_control(str(control), inputs, inputs.staged(str(tmp_path / "st")))
    r = subprocess.run(minimize_cmd(str(corpus), "--out", str(out)), capture_output=True,
                       text=True, timeout=60, check=False)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"pudthp: error: corpus minimize: the control file {control} ")
    assert r.stderr.count("\n") == 1
    assert "Traceback" not in r.stderr
    assert not out.exists() or not any(out.iterdir())


def _processes_naming(text: str) -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                cmdline = Path("/proc", entry, "cmdline").read_bytes()
            except OSError:
                continue
            if text.encode() in cmdline:
                pids.append(int(entry))
    return pids


def test_a_sigkilled_minimize_takes_its_merge_and_scratch_with_it(tmp_path: Path) -> None:
    import tempfile

    corpus = tmp_path / "corpus"
    make_corpus(corpus, distinct=40, copies=1, seed=11)
    control = tmp_path / "small.minimize-control"
    proc = subprocess.Popen(minimize_cmd(str(corpus), "--out", str(tmp_path / "small")),
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, "the merge ended before it could be killed"
        assert time.monotonic() < deadline
        with contextlib.suppress(FileNotFoundError):
            if control.read_text().count("STARTED ") >= 3:
                break
        time.sleep(0.01)
    scratch = glob.glob(os.path.join(tempfile.gettempdir(), f"pudthp-minimize-{proc.pid}-*"))
    assert len(scratch) == 1
    assert _processes_naming(scratch[0])  # libFuzzer's outer and inner processes
    proc.send_signal(signal.SIGKILL)  # minimize alone, not its process group
    proc.wait()
    deadline = time.monotonic() + 30
    while (_processes_naming(scratch[0]) or os.path.exists(scratch[0])) and \
            time.monotonic() < deadline:
        time.sleep(0.05)
    assert _processes_naming(scratch[0]) == []  # nothing of the merge keeps running
    assert not os.path.exists(scratch[0])  # and its scratch directory is gone
    r = subprocess.run(minimize_cmd(str(corpus), "--out", str(tmp_path / "small")),
                       capture_output=True, text=True, timeout=300, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resumed at input" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus", "small"]


def test_an_output_directory_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    make_corpus(corpus, distinct=2, copies=1, seed=12)
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a read-only file system needs root (a tmpfs mount)")
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,ro", "pudthp-test", str(ro)],
                       capture_output=True, text=True, check=False)
    if m.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {m.stderr.strip()}")
    try:
        r = subprocess.run(minimize_cmd(str(corpus), "--out", str(ro / "small")),
                           capture_output=True, text=True, timeout=60, check=False)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1
    assert "cannot write there" in r.stderr
