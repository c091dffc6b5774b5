"""The ``pudthp`` command line (FORMAT.md section 4).

Exit status: 0 no finding, 1 a finding, 2 bad input or a command that cannot run here, 130
interrupted.  Bad input of any kind is one line on stderr starting with ``pudthp: error:``,
never a traceback.  The models are imported only when a command needs one.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from harness.program import ProgramError, load_program_file
from harness.runner import IMPL_NAMES, UsageError, run_program
from pudthp_ref.spec import Op, Result, op_str

NOT_IMPLEMENTED: tuple[str, ...] = ("fuzz", "shrink", "corpus")


class _UsageExit(Exception):
    """argparse found bad arguments; the message is one line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageExit(f"{message} (see '{self.prog} --help')")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="pudthp",
        description="Property-based fuzzer and differential tester for PUD (1 GiB) THPs.",
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        help="run one program, one line per op; exit 0 no finding, 1 finding, 2 bad input",
        description="Run one program and report its first finding (FORMAT.md section 2).",
        allow_abbrev=False,
    )
    run.add_argument("program", metavar="PROGRAM", help="a pudthp-program/1 JSON file")
    run.add_argument(
        "--impl",
        choices=IMPL_NAMES,
        default="ref",
        help="the implementation to run (default: ref; both compares ref and fast)",
    )
    run.add_argument("--report", metavar="FILE", help="write the pudthp-report/1 JSON here")
    run.add_argument("--quiet", action="store_true", help="no per-op lines, only the summary")

    helps = {
        "fuzz": "the fuzzing campaign",
        "shrink": "minimise a program, keeping its finding signature",
        "corpus": "list, merge, deduplicate and archive programs",
    }
    for name in NOT_IMPLEMENTED:
        p = sub.add_parser(
            name, help=f"{helps[name]} (not implemented yet)", add_help=True, allow_abbrev=False
        )
        if name == "shrink":
            p.add_argument("program", metavar="PROGRAM", nargs="?")
    _add_conform(sub)
    _add_bench(sub)
    return parser


def _add_bench(sub: Any) -> None:
    from harness.bench import WORKLOADS

    bench = sub.add_parser(
        "bench",
        help="time fixed workloads on ref and fast side by side; print speed-ups",
        description="Run each workload on the reference and the fast implementation, each "
        "in a fresh process, and print whole-process times, the ref/fast speed-up, ops per "
        "second and peak memory.",
        allow_abbrev=False,
    )
    bench.add_argument("--workload", action="append", choices=sorted(WORKLOADS),
                       help="run only this workload (repeatable; default: all)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")


def _add_conform(sub: argparse._SubParsersAction[_Parser]) -> None:
    conform = sub.add_parser(
        "conform",
        help="compare a PMD-level program on the live kernel and on the model; exit 0 "
        "agree, 1 disagree, 2 cannot run here",
        description="Run a PMD-level program (x86_64 geometry, pud_enabled never) on the live "
        "kernel and on the reference model and compare every observable after every op. "
        "Needs root and PMD THP; saves and restores every kernel setting it changes.",
        allow_abbrev=False,
    )
    conform.add_argument("program", metavar="PROGRAM", nargs="?",
                         help="a pudthp-program/1 JSON file")
    conform.add_argument("--report", metavar="FILE", help="write a JSON report here")
    conform.add_argument("--random", metavar="N", type=_positive_int,
                         help="run N random PMD-level programs instead of PROGRAM")
    conform.add_argument("--seed", metavar="S", type=int, default=0,
                         help="seed of the random programs (default 0)")
    conform.add_argument("--ops", metavar="N", type=_positive_int, default=40,
                         help="ops per random program (default 40)")
    conform.add_argument("--save-dir", metavar="DIR",
                         help="write each disagreeing random program here")
    conform.add_argument("--quiet", action="store_true", help="no per-op lines")
    conform.add_argument("--ignore", metavar="OBSERVABLE", action="append", default=[],
                         help="pass over an observable class, e.g. vmstat.thp_zero_page_alloc, "
                         "vmas (compared joined), page.kind, rss (repeatable)")


def _cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import WORKLOADS, run_bench

    workloads = args.workload or list(WORKLOADS)
    print(f"pudthp bench: {len(workloads)} workloads x ref, fast (one process each)")
    try:
        run_bench(workloads, args.json, progress=lambda line: print(line, flush=True))
    except RuntimeError as e:
        return _error(str(e).splitlines()[0])
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 1")
    return value


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pudthp`` console script; returns the exit status."""
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("pudthp: interrupted", file=sys.stderr)
        return 130


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except _UsageExit as e:
        return _error(str(e))
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    if args.command is None:
        return _error("a command is required (see 'pudthp --help')")
    if args.command in NOT_IMPLEMENTED:
        return _error(f"{args.command!r} is not implemented yet")
    if extra:
        return _error(
            f"unrecognized arguments: {' '.join(extra)} (see 'pudthp {args.command} --help')"
        )
    try:
        if args.command == "conform":
            return _cmd_conform(args)
        if args.command == "bench":
            return _cmd_bench(args)
        return _cmd_run(args)
    except (ProgramError, UsageError) as e:
        return _error(str(e))


def _cmd_conform(args: argparse.Namespace) -> int:
    if (args.program is None) == (args.random is None):
        return _error("conform takes PROGRAM or --random N (see 'pudthp conform --help')")
    from harness.conform import cmd_conform  # lazy: the live-kernel code only when asked

    return cmd_conform(args.program, args.report, args.random, args.seed, args.ops,
                       args.save_dir, args.quiet, frozenset(args.ignore))


def _error(message: str) -> int:
    print(f"pudthp: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    program = load_program_file(args.program)
    width = max(3, len(str(len(program.ops) - 1)))

    def show(i: int, op: Op, result: Result) -> None:
        print(f"{i:>{width}} {op_str(op)} -> {result}", flush=True)

    on_step: Callable[[int, Op, Result], None] | None = None if args.quiet else show
    report = run_program(program, args.impl, on_step=on_step)

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

    if args.report:
        try:
            text = json.dumps(report.to_json())
        except (TypeError, ValueError) as e:
            return _error(f"cannot write report {args.report}: not plain JSON: {e}")
        try:
            with open(args.report, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as e:
            return _error(f"cannot write report {args.report}: {e.strerror or e}")
    return 0 if finding is None else 1
