"""``pudthp bench``: fixed workloads on both implementations in one run.

Each (workload, implementation) runs in a fresh Python process, so the figures are whole
processes from start to exit (imports, model creation, every op and check): wall time and
CPU time (user + system; on a machine shared with other work the steadier of the two), and
within it the CPU time in ``apply`` and in ``check_invariants``, and peak RSS.  The
speed-ups are reference over fast, taken side by side in the same run.

Invariant checks (``check``): ``every-op`` checks after every op, ``end`` once at the end of
each program (as ``pudthp run`` checks the fast side by default), ``none`` measures the
models alone.  A fast worker tunes its heap first (``harness.heap``), as the ``pudthp``
command does for the fast side; a reference worker runs with the allocator as it is.

The workers use Python's bytecode cache, in a temporary directory that a first import of
each implementation fills before anything is timed: the figures do not include compiling
the project's sources in every process (which ``PYTHONDONTWRITEBYTECODE`` would cause).
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

from harness import heap
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


def split_heavy() -> list[tuple[Config, list[Op]]]:
    """The checker's worst case, 22 ops: five PUD THPs split to PTEs by mprotect (1.3
    million present PTEs), a fork (2.6 million), COW writes on both sides, a munmap of half
    a PUD in each mm, an mprotect back, the child's exit and a munmap of everything."""
    ops: list[Op] = [spec.Mmap(0, PUD, 5 * PUD, "rw")]
    ops += [spec.Write(0, (1 + i) * PUD + 5, 10 + i) for i in range(5)]
    ops += [spec.Mprotect(0, (1 + i) * PUD + 3 * PMD, 2 * PMD, "r") for i in range(5)]
    ops.append(spec.Fork(0))
    ops += [
        spec.Write(1, 1 * PUD + 200 * PMD, 20),
        spec.Write(0, 2 * PUD + 300 * PMD, 30),
        spec.Write(1, 3 * PUD + 400 * PMD + 7, 21),
        spec.Write(0, 4 * PUD + 100 * PMD + 9, 31),
        spec.Munmap(0, 1 * PUD + PUD // 2, PUD // 2),
        spec.Munmap(1, 5 * PUD, PUD // 2),
        spec.Mprotect(0, 3 * PUD + 3 * PMD, 2 * PMD, "rw"),
        spec.Read(1, 2 * PUD + 300 * PMD),
        spec.Exit(1),
        spec.Munmap(0, PUD, 5 * PUD),
    ]
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


CHECKS = ("every-op", "end", "none")
"""When the workers check invariants (see the module docstring)."""

Workload = Callable[[], list[tuple[Config, list[Op]]]]
"""A workload: the (config, ops) programs it runs, always the same ones (fixed or seeded)."""

WORKLOADS: dict[str, Workload] = {
    "pud_fault_storm": pud_fault_storm,
    "fork_many_puds": fork_many_puds,
    "split_mix": split_mix,
    "split_heavy": split_heavy,
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


def worker(programs: list[tuple[Config, list[Op]]], impl: str, check: str = "none"
           ) -> dict[str, float]:
    """Run one workload's programs on one implementation in this process, checking
    invariants as ``check`` says; the time in apply and in checks, ops, peak RSS."""
    if impl == "ref":
        from pudthp_ref.model import RefModel as Model
    else:
        from pudthp_fast.model import FastModel as Model  # type: ignore[assignment]
    n = 0
    clock = time.process_time
    apply_s = check_s = 0.0
    for cfg, ops in programs:
        m = Model(cfg)
        for op in ops:
            t0 = clock()
            m.apply(op)
            t1 = clock()
            apply_s += t1 - t0
            if check == "every-op":
                m.check_invariants()
                check_s += clock() - t1
            n += 1
        if check == "end":
            t1 = clock()
            m.check_invariants()
            check_s += clock() - t1
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB
    return {"apply_seconds": apply_s, "check_seconds": check_s, "ops": n, "peak_mib": peak}


@dataclass
class Figure:
    workload: str
    impl: str
    check: str
    wall: float
    cpu: float
    apply: float
    check_seconds: float
    ops: int
    peak_mib: float


def _worker_env(pycache: str) -> dict[str, str]:
    """The workers' environment: bytecode cached under ``pycache`` (see the docstring)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = pycache
    return env


def warm(pycache: str) -> None:
    """Compile both implementations and the bench into the bytecode cache, untimed."""
    subprocess.run(
        [sys.executable, "-c", "import harness.bench, pudthp_ref.model, pudthp_fast.model"],
        capture_output=True, check=False, env=_worker_env(pycache),
    )


def run_one(workload: str, programs_file: str, impl: str, check: str = "none",
            pycache: str | None = None) -> Figure:
    """One workload on one implementation in a fresh process that reads the programs from
    ``programs_file`` (the same file for both sides)."""
    env = _worker_env(pycache) if pycache else {**os.environ}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "harness.bench", "--worker", programs_file, impl, check],
        capture_output=True, text=True, check=False, env=env,
    )
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if out.returncode != 0:
        raise RuntimeError(f"{workload}/{impl} failed:\n{out.stderr[-2000:]}")
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return Figure(workload, impl, check, wall, cpu, r["apply_seconds"], r["check_seconds"],
                  int(r["ops"]), r["peak_mib"])


def run_bench(workloads: dict[str, Workload], json_out: str | None = None,
              progress: Callable[[str], None] = print,
              checks: tuple[str, ...] = ("every-op",)) -> list[Figure]:
    figures: list[Figure] = []
    with tempfile.TemporaryDirectory(prefix="pudthp-bench-") as tmp:
        pycache = os.path.join(tmp, "pycache")
        warm(pycache)
        for w, make in workloads.items():
            programs_file = os.path.join(tmp, f"{w}.json")
            write_programs(programs_file, make())
            for check in checks:
                for impl in IMPLS:
                    progress(f"  running {w} on {impl}, checks {check} ...")
                    figures.append(run_one(w, programs_file, impl, check, pycache))
    progress("")
    progress(format_table(figures))
    if json_out:
        with open(json_out, "w") as f:
            json.dump([f_.__dict__ for f_ in figures], f, indent=1)
    return figures


def format_table(figures: list[Figure]) -> str:
    by = {(f.workload, f.check, f.impl): f for f in figures}
    head = (f"{'workload':<17} {'checks':<8} {'ops':>5} {'ref s':>7} {'fast s':>7} "
            f"{'wall x':>7} {'ref cpu':>7} {'fast cpu':>8} {'cpu x':>6} {'ref apply':>9} "
            f"{'fast apply':>10} {'ref check':>9} {'fast check':>10} {'ref MiB':>7} "
            f"{'fast MiB':>8}")
    lines = [head, "-" * len(head)]
    for w, c in dict.fromkeys((f.workload, f.check) for f in figures):
        r, f = by[(w, c, "ref")], by[(w, c, "fast")]
        lines.append(
            f"{w:<17} {c:<8} {r.ops:>5} {r.wall:>7.2f} {f.wall:>7.2f} "
            f"{r.wall / f.wall:>6.1f}x {r.cpu:>7.2f} {f.cpu:>8.2f} {r.cpu / f.cpu:>5.1f}x "
            f"{r.apply:>9.2f} {f.apply:>10.2f} {r.check_seconds:>9.2f} "
            f"{f.check_seconds:>10.2f} {r.peak_mib:>7.0f} {f.peak_mib:>8.0f}"
        )
    lines.append("whole processes (start to exit): wall seconds and CPU seconds (user + "
                 "system) with their ref/fast speed-ups; apply and check: CPU seconds inside")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        if sys.argv[3] == "fast":
            heap.tune_heap()
        print(json.dumps(worker(read_programs(sys.argv[2]), sys.argv[3], sys.argv[4])))
