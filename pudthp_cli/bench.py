"""``pudthp bench``: fixed workloads on ref and fast side by side (``harness.bench``), with
the generated ``small_mix`` of ``fuzz.gen``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from pudthp_cli.argtypes import COUNT, output_file
from pudthp_cli.exits import error


def workloads() -> dict[str, Any]:
    """The fixed workloads of ``harness.bench`` and the generated one of ``fuzz.gen``."""
    # imported when asked: the benchmark's processes and timers are its own cost, not
    # every command's (the parser names the workloads through ``WorkloadNames``)
    from fuzz.gen import small_mix
    from harness.bench import WORKLOADS

    return {**WORKLOADS, "small_mix": small_mix}


class WorkloadNames:
    """The choices of ``--workload``, read from ``workloads()`` when argparse first asks
    (parsing a ``--workload``, or printing bench's help), not when the parser is built."""

    def __contains__(self, name: object) -> bool:
        return name in workloads()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(workloads()))

    def __len__(self) -> int:
        return len(workloads())


def add(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        help="time fixed workloads on ref and fast side by side; print speed-ups",
        description="Run each workload on the reference and the fast implementation, each "
        "in a fresh process, and print whole-process wall and CPU times with their ref/fast "
        "speed-ups, the CPU seconds in apply and in invariant checks, and peak memory.",
        allow_abbrev=False,
    )
    bench.set_defaults(handler=command)
    bench.add_argument("--workload", metavar="NAME", action="append",
                       choices=WorkloadNames(),
                       help="run only this workload: %(choices)s (repeatable; default: all)")
    bench.add_argument("--check", action="append", choices=("every-op", "end", "none"),
                       help="invariant checks after every op (as pudthp run does; the "
                       "default), once at the end of each program, or none (repeatable: "
                       "one row per mode)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    bench.add_argument("--kernel", metavar="N", type=COUNT, default=None,
                       help="instead: N random PMD-level programs through 'pudthp conform "
                       "--random''s loop and through a kernel campaign's runner, block after "
                       "block, and as many programs of the kernel campaign's engine; ops/s "
                       "of each side by side (root)")


def command(args: argparse.Namespace) -> int:
    if args.kernel is not None:
        return kernel(args.kernel)
    from harness.bench import run_bench

    if args.json is not None:
        problem = output_file("--json", args.json)
        if problem is not None:
            return error(problem)
    every = workloads()
    chosen = {name: every[name] for name in (args.workload or every)}
    checks = tuple(dict.fromkeys(args.check or ["every-op"]))
    print(f"pudthp bench: {len(chosen)} workloads x ref, fast x checks "
          f"{', '.join(checks)} (one process each)")
    try:
        run_bench(chosen, args.json, progress=lambda line: print(line, flush=True),
                  checks=checks)
    except RuntimeError as e:
        return error(str(e).splitlines()[0])
    except OSError as e:
        return error(f"--json {args.json}: {e.strerror or e}")
    return 0


KERNEL_BENCH_SEED = 1
KERNEL_BENCH_OPS = 40


def kernel(programs: int) -> int:
    """``--kernel N`` (``harness.conform.kbench``): exit 4 where the machine cannot."""
    from fuzz.gen import random_pmd_program
    from fuzz.kernel import search
    from harness.conform.campaign import KernelMachine
    from harness.conform.compare import CannotRun
    from harness.conform.kbench import measure
    from pudthp_cli.exits import cannot_run

    def engine(machine: KernelMachine, first: int, n: int) -> int:
        return search(machine, KERNEL_BENCH_SEED + first, n, steps=KERNEL_BENCH_OPS,
                      shrink_seconds=0).ops

    print(f"pudthp bench --kernel: {programs} random programs of {KERNEL_BENCH_OPS} ops "
          f"(seed {KERNEL_BENCH_SEED}), conform --random's loop vs a kernel campaign's "
          "runner vs its engine, block after block", flush=True)
    try:
        out = measure(random_pmd_program, programs, KERNEL_BENCH_SEED, KERNEL_BENCH_OPS,
                      search=engine, say=lambda line: print(line, flush=True))
    except CannotRun as e:
        return cannot_run(str(e))
    print("\n".join(out.lines()))
    return 0
