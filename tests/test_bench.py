"""``pudthp bench`` end to end on its smallest workload (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz.gen import small_mix
from harness.bench import WORKLOADS, worker
from pudthp_cli.main import main


def test_bench_prints_a_row_per_workload_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "bench.json"
    assert main(["bench", "--workload", "pud_fault_storm", "--check", "every-op", "--check",
                 "none", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("pud_fault_storm")]
    assert [r[1] for r in rows] == ["every-op", "none"]  # one row per check mode
    for r in rows:
        assert r[2] == "17"  # mmap + 8 x (write, read): 17 ops
        assert r[5].endswith("x")  # the ref/fast speed-ups: wall, then CPU
        assert r[8].endswith("x")
    figures = json.loads(out_json.read_text())
    assert {(f["workload"], f["check"], f["impl"]) for f in figures} == {
        ("pud_fault_storm", c, i) for c in ("every-op", "none") for i in ("ref", "fast")}
    # apply and check times inside each process, checks only where asked for
    for f in figures:
        assert 0 < f["apply"] < f["cpu"]
        assert (f["check_seconds"] > 0) == (f["check"] == "every-op")


def test_every_workload_is_deterministic_and_runs_on_both() -> None:
    # The programs are fixed (seeded): the same op counts on both implementations.
    for make in (WORKLOADS["pud_fault_storm"], small_mix):
        # (the x86_64 splits are covered by --impl both tests, too slow here twice)
        assert make() == make()
        assert worker(make(), "ref")["ops"] == worker(make(), "fast")["ops"]
    for name in ("split_heavy", "split_mix", "split_and_migrate", "fork_many_puds"):
        assert WORKLOADS[name]() == WORKLOADS[name]()
    # the split-heavy program: 22 ops
    assert len(WORKLOADS["split_heavy"]()[0][1]) == 22
