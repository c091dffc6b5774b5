"""Campaign statistics (``fuzz/stats.py``: one flushed JSON line per interval, a cut last
line tolerated) and ``pudthp report`` (PNG plots and index.html with the findings table;
bad stats files are one line, exit 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.archive import archive
from fuzz.stats import Sample, StatsError, StatsWriter, features_digest, read_stats


def write_run(path: Path, machine: str, engine: str, t0: float, n: int) -> None:
    with StatsWriter(str(path), machine, engine, clock=lambda: t0) as w:
        for i in range(1, n + 1):
            w.write(Sample(programs=10 * i, count=100 * i, findings=i // 3,
                           corpus=5 * i if engine == "atheris" else None,
                           cov=50 + i if engine == "atheris" else None,
                           ft=90 + 2 * i if engine == "atheris" else None,
                           features={"pud.fault": i, "pud.split": i // 2}),
                    now=t0 + 5 * i)


def test_a_line_per_interval_with_rate_and_features(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    w = StatsWriter(str(path), "lab-1", "atheris", clock=lambda: 1000.0)
    first = w.write(Sample(programs=10, count=400, findings=0, corpus=7, cov=120, ft=300,
                           features={"a": 2, "b": 0}), now=1004.0)
    # the file holds the line already (flushed), before close
    assert json.loads(path.read_text()) == first
    second = w.write(Sample(programs=30, count=1000, findings=1, corpus=9, cov=130, ft=320,
                            features={"a": 5, "b": 1, "c": 1}), now=1010.0)
    w.close()
    # rate: 400 execs in the 4 s since the start, then 600 in 6 s
    assert (first["rate"], second["rate"]) == (100.0, 100.0)
    assert (first["elapsed"], second["elapsed"]) == (4.0, 10.0)
    # features: a hit first (b has 0 hits), then b and c are new; 3 distinct in all
    assert (first["features_hit"], first["features_new"]) == (1, ["a"])
    assert (second["features_hit"], second["features_new"]) == (3, ["b", "c"])
    assert second["features_digest"] == features_digest({"a", "b", "c"})
    assert first["unit"] == "execs"
    assert [r["count"] for r in read_stats(str(path))] == [400, 1000]


def test_a_hypothesis_machine_records_steps_and_no_coverage(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    with StatsWriter(str(path), "m", "hypothesis", clock=lambda: 0.0) as w:
        line = w.write(Sample(programs=3, count=150, findings=0), now=3.0)
    assert (line["unit"], line["rate"], line["cov"], line["features_hit"]) == (
        "steps", 50.0, None, None)


def test_a_cut_last_line_is_passed_over_and_removed_by_the_next_writer(
        tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_run(path, "m", "atheris", 0.0, 3)
    whole = path.read_text()
    path.write_text(whole + whole.splitlines()[0][:25])  # a writer killed mid-line
    assert len(read_stats(str(path))) == 3
    with StatsWriter(str(path), "m", "atheris", clock=lambda: 100.0) as w:
        w.write(Sample(programs=1, count=1, findings=0), now=101.0)
    assert path.read_text().startswith(whole)
    assert len(path.read_text().splitlines()) == 4
    assert len(read_stats(str(path))) == 4


@pytest.mark.parametrize(("content", "message"), [
    ("", "no stats records (an empty file)"),
    ("\n\n", "no stats records (an empty file)"),
    ("{oops\n", ":1: not a JSON line"),
    ('[1, 2]\n', ":1: not a stats record (a JSON object is expected)"),
    ('{"format": "pudthp-program/1"}\n', ":1: not a stats record (format"),
])
def test_bad_stats_files_are_one_line(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(StatsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_stats(str(path))


def test_a_bad_line_in_the_middle_is_not_passed_over(tmp_path: Path) -> None:
    path = tmp_path / "s.jsonl"
    write_run(path, "m", "atheris", 0.0, 2)
    lines = path.read_text().splitlines()
    rec = json.loads(lines[1])
    rec["count"] = "many"
    path.write_text(lines[0] + "\n{cut\n" + json.dumps(rec) + "\n")
    with pytest.raises(StatsError, match=r"s\.jsonl:2: not a JSON line"):
        read_stats(str(path))
    path.write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(StatsError, match=r":2: field 'count' is 'many', expected int"):
        read_stats(str(path))


def report(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pudthp_cli", "report", *args],
                          capture_output=True, text=True, timeout=120, cwd=cwd, check=False)


def test_report_writes_plots_and_an_index_with_the_findings(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_run(a, "lab-1", "atheris", 1000.0, 4)
    write_run(b, "lab-2", "hypothesis", 1003.0, 3)
    findings = tmp_path / "findings"
    findings.mkdir()
    prog = {"format": "pudthp-program/1", "config": {"geometry": "tiny"},
            "ops": [{"op": "mmap", "mm": 0, "start": 0, "npages": 8, "prot": "rw"},
                    {"op": "read", "mm": 0, "addr": 1}],
            "meta": {"signature": "invariant:<x>&y", "kind": "invariant",
                     "engine": "atheris", "date": "2026-12-01T10:00:00+00:00"}}
    path, _ = archive(str(findings), "invariant:<x>&y", json.dumps(prog))
    (findings / "broken.json").write_text("{")
    out = tmp_path / "rep"
    r = report(str(a), str(b), "--out", str(out), "--findings", str(findings), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "7 records of 2 machine(s), 1 finding(s)" in r.stdout
    for name in ("rate", "coverage", "features", "corpus", "findings"):
        png = (out / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
    index = (out / "index.html").read_text()
    for name in ("rate", "coverage", "features", "corpus", "findings"):
        assert f'<img src="{name}.png"' in index
    assert "<td>lab-1</td><td>atheris</td>" in index
    assert "<td>lab-2</td><td>hypothesis</td>" in index
    # lab-1: 100 execs per 5 s from the first line to the last = 20/s
    assert '<td class="n">20.0/s</td>' in index
    assert "<code>invariant:&lt;x&gt;&amp;y</code>" in index  # escaped
    assert f'<a href="../findings/{Path(path).name}">' in index
    assert '<td class="n">2</td><td>atheris</td><td>2026-12-01T10:00:00+00:00</td>' in index
    assert "1 file(s) there are not readable programs" in index


def test_report_errors_are_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cases = [
        ([str(empty), "--out", "o"], f"pudthp: error: {empty}: no stats records (an empty "
                                     f"file)\n"),
        ([str(tmp_path / "nope.jsonl"), "--out", "o"], f"pudthp: error: "
         f"{tmp_path / 'nope.jsonl'}: cannot read: No such file or directory\n"),
        ([str(empty)], None),  # --out is required
        ([str(empty), "--out", "o", "--findings", str(tmp_path / "nf")],
         f"pudthp: error: --findings {tmp_path / 'nf'}: not a directory\n"),
    ]
    for args, expected in cases:
        r = report(*args, cwd=tmp_path)
        assert r.returncode == 2
        assert r.stderr.count("\n") == 1
        assert r.stderr.startswith("pudthp: error: ")
        if expected is not None:
            assert r.stderr == expected
    assert not (tmp_path / "o").exists()


HOSTILE_RECORDS = {
    # each once crashed 'pudthp report' (OverflowError, RecursionError) or stalled it
    "a count past any float": {"count": 10**400},
    "a time past the year 9999": {"time": 1e300},
    "a negative time": {"time": -1e18},
    "a rate past any float": {"rate": 10**400},
    "a megabyte machine name": {"machine": "m" * 10**6},
    "a control character in a name": {"engine": "atheris\x1b[2J"},
    "an unknown unit": {"unit": "furlongs"},
    "feature names that are not names": {"features_new": [1, 2]},
}


@pytest.mark.parametrize("what", sorted(HOSTILE_RECORDS))
def test_a_hostile_record_is_refused_in_one_line_and_at_once(tmp_path: Path,
                                                            what: str) -> None:
    stats = tmp_path / "s.jsonl"
    with StatsWriter(str(stats), "m", "atheris") as w:
        good = w.write(Sample(1, 10, 0), now=w.start + 5)
    with open(stats, "a", encoding="utf-8") as f:
        f.write(json.dumps(dict(good, **HOSTILE_RECORDS[what])) + "\n")
    r = report(str(stats), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.startswith(f"pudthp: error: {stats}:2: "), r.stderr
    assert r.stderr.count("\n") == 1
    assert len(r.stderr) < 300
    assert "Traceback" not in r.stderr


def test_a_deeply_nested_line_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    stats = tmp_path / "s.jsonl"
    stats.write_text("[" * 200_000 + "]" * 200_000 + "\n")
    r = report(str(stats), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr == f"pudthp: error: {stats}:1: not a stats record (JSON nested more " \
                       "than 8 deep at line 1 column 9)\n"
