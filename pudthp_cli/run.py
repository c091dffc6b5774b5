"""``pudthp run``: one program, one line per op, its first finding (FORMAT.md section 2)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from harness.limits import LimitExceeded, default_max_rss_mb, memory_error, memory_limit, time_limit
from harness.program import load_program_file
from harness.runner import CHECK_MODES, IMPL_NAMES, run_program
from pudthp_cli.argtypes import LIMIT_SECONDS, MIB, memory_floor, output_file
from pudthp_cli.exits import error
from pudthp_ref.spec import Op, Result, op_str

RUN_MAX_SECONDS = 600.0


def add(sub: Any) -> None:
    run = sub.add_parser(
        "run",
        help="run one program, one line per op; exit 0 no finding, 1 finding, 2 bad input",
        description="Run one program and report its first finding (FORMAT.md section 2).",
        allow_abbrev=False,
    )
    run.set_defaults(handler=command)
    run.add_argument("program", metavar="PROGRAM", help="a pudthp-program/1 JSON file")
    run.add_argument(
        "--impl",
        choices=IMPL_NAMES,
        default="ref",
        help="the implementation to run (default: ref; both compares ref and fast)",
    )
    run.add_argument("--report", metavar="FILE", help="write the pudthp-report/1 JSON here")
    run.add_argument("--quiet", action="store_true", help="no per-op lines, only the summary")
    run.add_argument("--check", choices=CHECK_MODES, default="end",
                     help="with --impl fast or both, when the fast side checks its own "
                     "invariants: at the end of the program and at a divergence, a failure "
                     "then located by a replay with checks after every op (end, the default; "
                     "under both, the comparison with the reference, which checks after "
                     "every op, covers the ops between) or after every op (every-op)")
    run.add_argument("--max-rss", metavar="MIB", type=MIB, default=None,
                     help="stop (exit 2, not a finding) once the process uses more memory "
                     "(default: half of this machine's memory; 0: no limit)")
    run.add_argument("--max-time", metavar="SECONDS", type=LIMIT_SECONDS,
                     default=RUN_MAX_SECONDS,
                     help=f"stop (exit 2, not a finding) after this long (default "
                     f"{RUN_MAX_SECONDS:g}; 0: no limit)")


def command(args: argparse.Namespace) -> int:
    if args.report is not None:
        problem = output_file("--report", args.report)
        if problem is not None:
            return error(problem)
    program = load_program_file(args.program)
    width = max(3, len(str(len(program.ops) - 1)))
    done = [0]  # ops that returned

    def show(i: int, op: Op, result: Result) -> None:
        done[0] = i + 1
        if not args.quiet:
            print(f"{i:>{width}} {op_str(op)} -> {result}", flush=True)

    max_rss = default_max_rss_mb() if args.max_rss is None else args.max_rss
    problem = memory_floor(max_rss, args.impl)  # imports the models before the limit
    if problem is not None:
        return error(problem)
    try:
        with memory_limit(max_rss), time_limit(args.max_time, "the run (--max-time)"):
            report = run_program(program, args.impl, check_mode=args.check, on_step=show)
    except (LimitExceeded, MemoryError) as e:
        limit = e if isinstance(e, LimitExceeded) else memory_error()
        i = done[0]
        where = f"op {i} ({op_str(program.ops[i])})" if i < len(program.ops) else "the end"
        return error(f"{args.program}: {limit} (in {where}, after {i} ops)")

    finding = report.finding
    if finding is None:
        print(f"ok: {len(report.results)} ops, no finding")
    else:
        if 0 <= finding.op_index < len(program.ops):
            where = f"at op {finding.op_index} ({op_str(program.ops[finding.op_index])})"
        else:
            where = "before the first op (creating the model)"
        print(f"FINDING {finding.kind} {where}: {finding.signature}")
        for line in finding.message.splitlines():
            print(f"  {line}")

    if args.report is not None:
        try:
            text = json.dumps(report.to_json())
        except (TypeError, ValueError) as e:
            return error(f"cannot write report {args.report}: not plain JSON: {e}")
        try:
            with open(args.report, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as e:
            return error(f"cannot write report {args.report}: {e.strerror or e}")
    return 0 if finding is None else 1
