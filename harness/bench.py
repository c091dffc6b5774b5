"""``pudthp bench``: fixed workloads on both implementations in one run.

Each (workload, implementation) runs in a fresh Python process, so the figures are whole
processes: wall time from start to exit (imports, model creation, every op), the time in
``apply`` alone, ops per second and peak RSS.  The speed-up is reference time over fast
time, taken side by side in the same run.  Invariant checks are off: this measures the
models, not the checker.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from harness.program import parse_program, program_to_json
from pudthp_ref import spec
from pudthp_ref.spec import Config, Op, Program

X86 = Config(geometry=512)
P = 512
PUD = P * P  # pages per PUD folio at x86_64 geometry
PMD = P


def pud_fault_storm() -> list[tuple[Config, list[Op]]]:
    """Eight 1 GiB THPs faulted in, one write and one read each."""
    ops: list[Op] = [spec.Mmap(0, PUD, 8 * PUD, "rw")]
    for i in range(8):
        ops += [spec.Write(0, (1 + i) * PUD + 7, i + 1), spec.Read(0, (1 + i) * PUD + 7)]
    return [(X86, ops)]


def fork_many_puds() -> list[tuple[Config, list[Op]]]:
    """Eight PUD THPs shared by four forks (copy_huge_pud each), children exit."""
    ops: list[Op] = [spec.Mmap(0, PUD, 8 * PUD, "rw")]
    ops += [spec.Write(0, (1 + i) * PUD, i + 1) for i in range(8)]
    for child in range(1, 5):
        ops += [spec.Fork(0), spec.Read(child, 3 * PUD), spec.Exit(child)]
    return [(X86, ops)]


def split_mix() -> list[tuple[Config, list[Op]]]:
    """Split-heavy: mprotect and munmap inside PUD THPs (VMA splits split the PUD), fork
    and COW at PTE level on the split folios, big partial zaps, mprotect back."""
    ops: list[Op] = [spec.Mmap(0, PUD, 4 * PUD, "rw")]
    for i in range(4):
        base = (1 + i) * PUD
        ops += [
            spec.Write(0, base + 5, 10 + i),
            spec.Mprotect(0, base + 3 * PMD, 2 * PMD, "r"),
            spec.Munmap(0, base + 100 * PMD + 1, 1),
        ]
    ops.append(spec.Fork(0))
    for i in range(4):
        base = (1 + i) * PUD
        ops += [
            spec.Write(1, base + 200 * PMD, 20 + i),
            spec.Write(0, base + 300 * PMD, 30 + i),
            spec.Munmap(0, base + PUD // 2, PUD // 4),
            spec.Mprotect(0, base + 3 * PMD, 2 * PMD, "rw"),
        ]
    ops += [spec.Exit(1), spec.Munmap(0, PUD, 4 * PUD)]
    return [(X86, ops)]


def split_and_migrate() -> list[tuple[Config, list[Op]]]:
    """A 1 GiB folio split to 262144 order-0 folios (zero pages remapped to the zero page),
    and another migrated whole to node 1."""
    ops: list[Op] = [spec.Mmap(0, PUD, 2 * PUD, "rw")]
    for i in range(0, PUD, PUD // 8):
        ops.append(spec.Write(0, PUD + i, i + 1))
        ops.append(spec.Write(0, 2 * PUD + i, i + 2))
    ops += [
        spec.SplitFolio(0, PUD),
        spec.Migrate(0, 2 * PUD, PUD, 1),
        spec.Read(0, PUD + PUD // 8),
        spec.Read(0, 2 * PUD + PUD // 8),
    ]
    return [(X86, ops)]


Workload = Callable[[], list[tuple[Config, list[Op]]]]
"""A workload: the (config, ops) programs it runs, always the same ones (fixed or seeded)."""

WORKLOADS: dict[str, Workload] = {
    "pud_fault_storm": pud_fault_storm,
    "fork_many_puds": fork_many_puds,
    "split_mix": split_mix,
    "split_and_migrate": split_and_migrate,
}
"""The fixed workloads; the command line adds the generated ones (``fuzz.gen``)."""
IMPLS = ("ref", "fast")


def write_programs(path: str, programs: list[tuple[Config, list[Op]]]) -> None:
    """The programs of a workload as one JSON list of FORMAT.md programs."""
    data = [program_to_json(Program(cfg, tuple(ops), {})) for cfg, ops in programs]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def read_programs(path: str) -> list[tuple[Config, list[Op]]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = []
    for i, raw in enumerate(data):
        p = parse_program(raw, f"{path}[{i}]")
        out.append((p.config, list(p.ops)))
    return out


def worker(programs: list[tuple[Config, list[Op]]], impl: str) -> dict[str, float]:
    """Run one workload's programs on one implementation in this process."""
    if impl == "ref":
        from pudthp_ref.model import RefModel as Model
    else:
        from pudthp_fast.model import FastModel as Model  # type: ignore[assignment]
    n = 0
    t0 = time.perf_counter()
    for cfg, ops in programs:
        m = Model(cfg)
        for op in ops:
            m.apply(op)
            n += 1
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    return {"apply_seconds": seconds, "ops": n, "peak_mib": peak}


@dataclass
class Figure:
    workload: str
    impl: str
    wall: float
    apply: float
    ops: int
    peak_mib: float


def run_one(workload: str, programs_file: str, impl: str) -> Figure:
    """One workload on one implementation in a fresh process that reads the programs from
    ``programs_file`` (the same file for both sides)."""
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "harness.bench", "--worker", programs_file, impl],
        capture_output=True, text=True, check=False, env={**os.environ},
    )
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"{workload}/{impl} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return Figure(workload, impl, wall, r["apply_seconds"], int(r["ops"]), r["peak_mib"])


def run_bench(workloads: dict[str, Workload], json_out: str | None = None,
              progress: Callable[[str], None] = print) -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="pudthp-bench-") as tmp:
        for w, make in workloads.items():
            programs_file = os.path.join(tmp, f"{w}.json")
            write_programs(programs_file, make())
            for impl in IMPLS:
                progress(f"  running {w} on {impl} ...")
                figures.append(run_one(w, programs_file, impl))
    progress("")
    progress(format_table(figures))
    if json_out:
        with open(json_out, "w") as f:
            json.dump([f_.__dict__ for f_ in figures], f, indent=1)
    return figures


def format_table(figures: list[Figure]) -> str:
    by = {(f.workload, f.impl): f for f in figures}
    head = (f"{'workload':<18} {'ops':>6} {'ref s':>8} {'fast s':>8} {'speed-up':>9} "
            f"{'ref ops/s':>10} {'fast ops/s':>10} {'ref MiB':>8} {'fast MiB':>8}")
    lines = [head, "-" * len(head)]
    for w in dict.fromkeys(f.workload for f in figures):
        r, f = by[(w, "ref")], by[(w, "fast")]
        lines.append(
            f"{w:<18} {r.ops:>6} {r.wall:>8.2f} {f.wall:>8.2f} {r.wall / f.wall:>8.1f}x "
            f"{r.ops / r.apply:>10.0f} {f.ops / f.apply:>10.0f} {r.peak_mib:>8.0f} "
            f"{f.peak_mib:>8.0f}"
        )
    lines.append("times are whole processes (start to exit); ops/s count apply() time only")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        print(json.dumps(worker(read_programs(sys.argv[2]), sys.argv[3])))
