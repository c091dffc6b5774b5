"""CI smoke test of ``pudthp fuzz --engine atheris``: short real campaigns (one worker, a few
seconds each, well under a minute together).  On the correct designs it finds nothing and a
second campaign resumes from the corpus the first left on disk; on ``deposit=list_head``
it finds the corruption and archives it shrunk, with its metadata."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from harness.program import load_program_file
from harness.runner import run_program

SECONDS = 6


def campaign(tmp_path: Path, seconds: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pudthp_cli", "fuzz", "--engine", "atheris", "--time",
         str(seconds), "--workers", "1", "--seed", "1", "--corpus", str(tmp_path / "corpus"),
         "--findings", str(tmp_path / "findings"), *extra],
        capture_output=True, text=True, timeout=120, cwd=tmp_path, check=False,
    )


def corpus_at_start(stderr: str) -> int:
    m = re.search(r"corpus \S+ \((\d+) inputs", stderr)
    assert m, stderr
    return int(m.group(1))


def test_correct_design_finds_nothing_and_a_second_campaign_resumes(tmp_path: Path) -> None:
    first = campaign(tmp_path, SECONDS)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "0 distinct finding(s)" in first.stdout
    assert "execs/s" in first.stderr
    assert not list((tmp_path / "findings").glob("*.json"))
    assert corpus_at_start(first.stderr) == 0
    kept = len(list((tmp_path / "corpus").iterdir()))
    assert kept > 0
    second = campaign(tmp_path, 2)
    assert second.returncode == 0, second.stdout + second.stderr
    assert corpus_at_start(second.stderr) == kept  # libFuzzer starts from what is on disk


def test_list_head_corruption_is_found_shrunk_and_archived(tmp_path: Path) -> None:
    run = campaign(tmp_path, SECONDS, "--config", "deposit=list_head")
    assert run.returncode == 1, run.stdout + run.stderr
    files = sorted((tmp_path / "findings").glob("*.json"))
    assert files, run.stdout + run.stderr
    for f in files:
        program = load_program_file(str(f))
        meta = program.meta
        assert meta["engine"] == "atheris"
        assert {"signature", "seed", "config", "date", "kind", "message"} <= set(meta)
        assert "deposit" in meta["signature"]
        assert program.config.deposit == "list_head"
        assert len(program.ops) <= 4
        replay = run_program(program, "both").finding
        assert replay is not None
        assert replay.signature == meta["signature"]
        assert f.name in run.stdout
    # a second campaign knows them: nothing new is written, but they still count as found
    before = {f.name: f.read_text() for f in files}
    again = campaign(tmp_path, 3, "--config", "deposit=list_head")
    assert again.returncode == 1, again.stdout + again.stderr
    after = {f.name: f.read_text() for f in (tmp_path / "findings").glob("*.json")}
    assert {k: after[k] for k in before} == before
    assert json.loads(next(iter(before.values())))["meta"]["engine"] == "atheris"
