"""``pudthp conform`` and ``pudthp export-c``: programs on the live kernel against the model
(``harness.conform``), the random ones drawn by ``fuzz.gen``."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from typing import TYPE_CHECKING, Any

from pudthp_cli.argtypes import COUNT, output_file
from pudthp_cli.exits import error

if TYPE_CHECKING:  # at run time imported by --junit alone
    from harness.junit import Case


def add(sub: Any) -> None:
    conform = sub.add_parser(
        "conform",
        help="compare a PMD-level program on the live kernel and on the model; exit 0 "
        "agree (known disagreements listed), 1 an unexplained disagreement, 2 bad input, "
        "4 cannot run here",
        description="Run a PMD-level program (x86_64 geometry, pud_enabled never) on the live "
        "kernel and on the reference model and compare every observable after every op. "
        "Needs root and PMD THP; saves and restores every kernel setting it changes.",
        allow_abbrev=False,
    )
    conform.set_defaults(handler=command)
    conform.add_argument("program", metavar="PROGRAM", nargs="?",
                         help="a pudthp-program/1 JSON file")
    conform.add_argument("--report", metavar="FILE", help="write a JSON report here")
    conform.add_argument("--random", metavar="N", type=COUNT,
                         help="run N random PMD-level programs instead of PROGRAM")
    conform.add_argument("--seed", metavar="S", type=int, default=0,
                         help="seed of the random programs (default 0)")
    conform.add_argument("--ops", metavar="N", type=COUNT, default=40,
                         help="ops per random program (default 40)")
    conform.add_argument("--save-dir", metavar="DIR",
                         help="write each disagreeing random program here")
    conform.add_argument("--quiet", action="store_true", help="no per-op lines")
    conform.add_argument("--restore", action="store_true",
                         help="only put back the kernel settings a killed run left changed "
                         "(a run does this first anyway); exit 0 restored or nothing to do")
    conform.add_argument("--ignore", metavar="OBSERVABLE", action="append", default=[],
                         help="pass over an observable class, e.g. vmstat.thp_zero_page_alloc, "
                         "vmas (compared joined), page.kind, rss (repeatable)")
    conform.add_argument("--strict", action="store_true",
                         help="exit 1 on any disagreement, a known one (docs/conform.md) too")
    conform.add_argument("--junit", metavar="FILE", default=None,
                         help="write a JUnit XML report: one test case per program, failed "
                         "with its disagreement (a known one too with --strict); skipped "
                         "when this machine cannot run it")

    export = sub.add_parser(
        "export-c",
        help="write a program as a self-contained C kernel selftest (KTAP) that runs it on "
        "the live kernel and checks what the model predicts; exit 0 written, 2 bad input "
        "or a program the kernel cannot express",
        description="Write PROGRAM as one C file (build: gcc -O2 -Wall -o T T.c) that runs "
        "it on the live kernel as 'pudthp conform' does and checks, after every op, what "
        "the reference model predicts (computed now and written into the file, one "
        "commented block per op). The binary prints KTAP and exits 0 pass, 1 fail, 4 skip.",
        allow_abbrev=False,
    )
    export.set_defaults(handler=export_c)
    export.add_argument("program", metavar="PROGRAM", help="a pudthp-program/1 JSON file")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="write the C file here (default: standard output)")
    export.add_argument("--kselftest-tree", metavar="DIR",
                        help="write it instead as tools/testing/selftests/mm/pudthp_NAME.c "
                        "of the kernel source tree DIR (or that mm directory itself), built "
                        "with its kselftest.h and THP settings header, and add "
                        "'TEST_GEN_PROGS += pudthp_NAME' to its Makefile")


def command(args: argparse.Namespace) -> int:
    # the live-kernel modules are this command's cost only
    if args.restore:
        if args.program is not None or args.random is not None:
            return error("conform --restore takes no PROGRAM or --random")
        from harness.conform.live import cmd_restore

        return cmd_restore()
    if (args.program is None) == (args.random is None):
        return error("conform takes PROGRAM or --random N (see 'pudthp conform --help')")
    for flag, path in (("--report", args.report), ("--junit", args.junit)):
        problem = None if path is None else output_file(flag, path)
        if problem is not None:
            return error(problem)
    from fuzz.gen import random_pmd_program
    from harness.conform.compare import cmd_conform

    if args.junit is None:
        return cmd_conform(args.program, args.report, args.random, args.seed, args.ops,
                           args.save_dir, args.quiet, frozenset(args.ignore),
                           random_pmd_program, args.strict)
    # the JUnit report is read from the JSON report (a scratch one without --report)
    with tempfile.TemporaryDirectory(prefix="pudthp-conform-") as scratch:
        report = args.report or os.path.join(scratch, "report.json")
        status = cmd_conform(args.program, report, args.random, args.seed, args.ops,
                             args.save_dir, args.quiet, frozenset(args.ignore),
                             random_pmd_program, args.strict)
        try:
            with open(report, encoding="utf-8") as f:
                data: dict[str, Any] | None = json.load(f)
        except (OSError, ValueError):
            data = None  # it stopped before a report: nothing ran to the end
    from harness import junit
    from harness.junit import Case

    name = args.program or f"random programs, seed {args.seed}"
    cases = (conform_cases(data, args.strict) if data is not None and status in (0, 1)
             else [Case(name, "pudthp conform", None,
                        skipped=f"did not run to its end (exit status {status})")])
    try:
        junit.write(args.junit, "pudthp conform", cases)
    except OSError as e:
        return error(f"--junit {args.junit}: {e.strerror or e}")
    return status


def conform_cases(data: dict[str, Any], strict: bool) -> list[Case]:
    """One test case per program of a conformance report (``docs/format.md``, Conformance
    reports): failed by a disagreement no known one explains (by any, with ``strict``)."""
    if data.get("format") == "pudthp-conform-random/1":
        sig_of = {i: sig for sig, idx in data.get("signatures", {}).items() for i in idx}
        return [_case(f"random {data.get('seed')}:{run.get('index')}",
                      "pudthp conform.random", run, sig_of.get(run.get("index")), strict)
                for run in data.get("runs", [])]
    return [_case(str(data.get("program")), "pudthp conform", data, None, strict)]


def _case(name: str, classname: str, run: dict[str, Any], sig: str | None,
          strict: bool) -> Case:
    from harness.junit import Case

    d = run.get("disagreement")
    known = run.get("known")
    if not isinstance(d, dict) or (known is not None and not strict):
        return Case(name, classname)
    kind = known.get("kind") if isinstance(known, dict) else known
    what = f"known {kind}" if kind is not None else "DISAGREE"
    return Case(name, classname, f"{what} {sig + ': ' if sig else ''}op {d.get('op_index')}: "
                f"{d.get('observable')}: kernel {d.get('kernel')!r}, model {d.get('model')!r}")


def export_c(args: argparse.Namespace) -> int:
    from harness.conform.export_cmd import cmd_export_c  # the model's C tables: its cost

    if args.output is not None and args.kselftest_tree is not None:
        return error("export-c takes -o FILE or --kselftest-tree DIR, not both")
    if args.output is not None:
        problem = output_file("-o", args.output)
        if problem is not None:
            return error(problem)
    return cmd_export_c(args.program, args.output, args.kselftest_tree)
