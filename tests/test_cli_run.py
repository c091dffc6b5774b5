"""``pudthp run`` end to end on the reference model, with the shared canary programs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pudthp_ref.model")

from harness.program import load_program_file
from harness.runner import run_program
from pudthp_cli.main import main

# The project's own copies of the shared canaries (../shared/canary/).
CANARY = Path(__file__).resolve().parents[1] / "corpus" / "known_bad"

LIST_HEAD = str(CANARY / "list_head_two_puds.json")
LRU_NEXT = str(CANARY / "lru_next_two_puds.json")
REPORT_KEYS = {"format", "impl", "results", "finding", "snapshot"}


def test_list_head_canary_is_a_finding(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    code = main(["run", LIST_HEAD, "--report", str(report_path)])
    out, err = capsys.readouterr()
    assert code == 1, out + err
    assert "Traceback" not in out + err
    lines = out.splitlines()
    assert lines[0] == "  0 mmap mm=0 start=64 npages=192 prot=rw -> 0"
    assert any(line.startswith("FINDING ") for line in lines)
    report = json.loads(report_path.read_text())
    assert set(report) == REPORT_KEYS
    assert report["format"] == "pudthp-report/1"
    assert report["impl"] == "ref"
    finding = report["finding"]
    assert {"kind", "op_index", "signature", "message"} <= set(finding)
    assert finding["kind"] in ("invariant", "model_bug", "oracle")
    assert finding["signature"].startswith(finding["kind"] + ":")
    assert not any(ch.isdigit() for ch in finding["signature"].split(":")[1])


def test_lru_next_canary_passes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report_path = tmp_path / "report.json"
    code = main(["run", LRU_NEXT, "--report", str(report_path)])
    out, err = capsys.readouterr()
    assert code == 0, out + err
    assert out.splitlines()[-1] == "ok: 5 ops, no finding"
    assert len(out.splitlines()) == 6
    report = json.loads(report_path.read_text())
    assert set(report) == REPORT_KEYS
    assert report["finding"] is None
    assert report["results"] == [0, 0, 0, 0, 1]
    assert report["snapshot"]["format"] == "pudthp-snapshot/1"


def test_quiet(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", LRU_NEXT, "--quiet"]) == 0
    assert capsys.readouterr().out == "ok: 5 ops, no finding\n"


def test_signature_is_stable() -> None:
    program = load_program_file(LIST_HEAD)
    a = run_program(program)
    b = run_program(program)
    assert a.finding is not None
    assert b.finding is not None
    assert a.finding.signature == b.finding.signature
    assert a.results == b.results


def test_report_unwritable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["run", LRU_NEXT, "--quiet", "--report", str(tmp_path / "no" / "r.json")])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith("pudthp: error: --report ")  # checked before the run
    assert "no such directory" in err
    assert err.count("\n") == 1


def test_python_m_pudthp_cli() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pudthp_cli", "run", LRU_NEXT, "--quiet"],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "ok: 5 ops, no finding\n"
