"""``pudthp bench``: fixed workloads on ref and fast side by side (``harness.bench``), with
the generated ``small_mix`` of ``fuzz.gen``."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from typing import Any

from pudthp_cli.argtypes import output_file
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


def command(args: argparse.Namespace) -> int:
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
