"""``pudthp bench`` end to end on its smallest workload (no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz.gen import small_mix
from harness.bench import WORKLOADS, worker
from harness.cli import main


def test_bench_prints_a_row_per_workload_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out_json = tmp_path / "bench.json"
    assert main(["bench", "--workload", "pud_fault_storm", "--json", str(out_json)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("pud_fault_storm"))
    assert row.split()[1] == "17"  # mmap + 8 x (write, read): 17 ops
    assert row.split()[4].endswith("x")  # the ref/fast speed-up column
    figures = json.loads(out_json.read_text())
    assert {(f["workload"], f["impl"]) for f in figures} == {
        ("pud_fault_storm", "ref"), ("pud_fault_storm", "fast")}


def test_every_workload_is_deterministic_and_runs_on_both() -> None:
    # The programs are fixed (seeded): the same op counts on both implementations.
    for make in (WORKLOADS["pud_fault_storm"], small_mix):
        # (the x86_64 splits are covered by --impl both tests, too slow here twice)
        assert make() == make()
        assert worker(make(), "ref")["ops"] == worker(make(), "fast")["ops"]
