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


def write_run(path: Path, machine: str, engine: str, t0: float, n: int,
              campaign: str = "main") -> None:
    with StatsWriter(str(path), machine, engine, clock=lambda: t0, campaign=campaign) as w:
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
    assert "7 records of 2 machine(s) in 1 campaign(s), 1 finding(s)" in r.stdout
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
    # the finding is copied in and linked there: the directory works copied alone
    assert f'<a href="findings/{Path(path).name}">' in index
    assert (out / "findings" / Path(path).name).read_bytes() == Path(path).read_bytes()
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


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (bytes 16..24)."""
    head = path.read_bytes()[:24]
    assert head.startswith(b"\x89PNG\r\n\x1a\n")
    return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_two_campaigns_with_the_same_machine_name_stay_apart(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    write_run(a, "lab-1", "atheris", 1000.0, 4, campaign="nightly")
    write_run(b, "lab-1", "atheris", 1000.0, 2, campaign="deposit")
    out = tmp_path / "rep"
    r = report(str(a), str(b), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "6 records of 2 machine(s) in 2 campaign(s)" in r.stdout
    index = (out / "index.html").read_text()
    # each campaign's lab-1 has its own last record: 4 x 10 programs, then 2 x 10
    assert '<td>nightly</td><td>lab-1</td><td>atheris</td><td class="n">0.2</td>' \
           '<td class="n">40</td>' in index
    assert '<td>deposit</td><td>lab-1</td><td>atheris</td><td class="n">0.1</td>' \
           '<td class="n">20</td>' in index


def test_a_record_without_a_campaign_is_of_the_default_one(tmp_path: Path) -> None:
    from fuzz.report import load_series

    path = tmp_path / "old.jsonl"
    write_run(path, "m", "hypothesis", 0.0, 2)
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    for rec in lines:
        del rec["campaign"]
    path.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    assert list(load_series([str(path)])) == [("main", "m")]


def test_the_campaign_union_of_features_over_time(tmp_path: Path) -> None:
    from fuzz.report import feature_union, load_series

    path = tmp_path / "s.jsonl"
    # one campaign, two machines; x hits a at t=5 and b at t=10; y hits b at t=7 and c at
    # t=12.  The union: {a} at 5, {a, b} at 7, still {a, b} at 10, {a, b, c} at 12; each
    # machine alone never gets past 2
    with StatsWriter(str(path), "x", "hypothesis", clock=lambda: 0.0) as w:
        w.write(Sample(1, 1, 0, features={"a": 1}), now=5.0)
        w.write(Sample(2, 2, 0, features={"a": 1, "b": 1}), now=10.0)
    with StatsWriter(str(path), "y", "hypothesis", clock=lambda: 0.0) as w:
        w.write(Sample(1, 1, 0, features={"b": 1}), now=7.0)
        w.write(Sample(2, 2, 0, features={"b": 1, "c": 3}), now=12.0)
    assert feature_union(load_series([str(path)])) == {
        "main": [(5.0, 1), (7.0, 2), (10.0, 2), (12.0, 3)]}
    out = tmp_path / "rep"
    r = report(str(path), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    index = (out / "index.html").read_text()
    assert '<tr><td>main</td><td class="n">2</td><td>hypothesis</td><td class="n">3</td>' \
           in index


def test_a_hypothesis_campaign_has_no_empty_plots(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    write_run(path, "h1", "hypothesis", 0.0, 3)
    out = tmp_path / "rep"
    r = report(str(path), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.glob("*.png")) == [
        "features.png", "findings.png", "rate.png"]
    index = (out / "index.html").read_text()
    assert '<img src="coverage.png"' not in index
    assert '<img src="corpus.png"' not in index
    assert "libFuzzer coverage (cov, ft): does not apply" in index
    assert "corpus size: does not apply" in index


def test_coverage_and_features_are_on_separate_axes(tmp_path: Path) -> None:
    path = tmp_path / "a.jsonl"
    write_run(path, "a1", "atheris", 0.0, 3)
    out = tmp_path / "rep"
    assert report(str(path), "--out", str(out), cwd=tmp_path).returncode == 0
    # cov and ft are two plots one above the other: twice the height of the others
    # (figures of 8 x 4.5 inches per plot at 100 dpi)
    assert png_size(out / "rate.png") == (800, 450)
    assert png_size(out / "coverage.png") == (800, 900)
