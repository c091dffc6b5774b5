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
from typing import NoReturn

from harness.program import ProgramError, load_program_file
from harness.runner import IMPL_NAMES, UsageError, run_program
from pudthp_ref.spec import Op, Result, op_str

NOT_IMPLEMENTED: tuple[str, ...] = ("fuzz", "shrink", "corpus", "bench", "conform")


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
        "bench": "the performance benchmark",
        "conform": "compare a PMD-level program on the live kernel and on the model",
    }
    for name in NOT_IMPLEMENTED:
        p = sub.add_parser(
            name, help=f"{helps[name]} (not implemented yet)", add_help=True, allow_abbrev=False
        )
        if name in ("shrink", "conform"):
            p.add_argument("program", metavar="PROGRAM", nargs="?")
    return parser


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
        return _cmd_run(args)
    except (ProgramError, UsageError) as e:
        return _error(str(e))


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
