"""``pudthp coverage``: the model-state features a set of programs hits (docs/coverage.md)."""

from __future__ import annotations

import argparse
import glob
import os
from typing import Any

from harness.program import load_program_file
from harness.runner import run_program
from pudthp_cli.exits import error


def add(sub: Any) -> None:
    cov = sub.add_parser(
        "coverage",
        help="run programs and print which model-state features they hit and how often",
        description="Run each program (files, or every *.json of a directory) and count the "
        "model-state features of the catalogue (docs/coverage.md) that its ops hit in the "
        "reference model: hits, programs hitting each feature, and the features never hit. "
        "Exit 0, or 2 for bad input.",
        allow_abbrev=False,
    )
    cov.set_defaults(handler=command)
    cov.add_argument("paths", metavar="PROGRAM|DIR", nargs="+",
                     help="pudthp-program/1 JSON files or directories of them")
    cov.add_argument("--impl", choices=("ref", "both", "kernel"), default="ref",
                     help="run on the reference alone (default), on both in lockstep, or on "
                     "the live kernel against the reference as a kernel campaign does "
                     "(root; also prints the kernel-observation features)")


def command(args: argparse.Namespace) -> int:
    from harness.coverage import Coverage, Tally  # the catalogue: only this command's cost

    files: list[str] = []
    for path in args.paths:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "*.json")))
        elif os.path.exists(path):
            files.append(path)
        else:
            return error(f"{path}: no such file or directory")
    if not files:
        return error(f"no *.json programs in {' '.join(args.paths)}")
    programs = [(f, load_program_file(f)) for f in files]
    if args.impl == "kernel":
        return on_kernel(programs)
    tally = Tally()
    findings = 0
    for _, program in programs:
        cov = Coverage()
        report = run_program(program, args.impl, coverage=cov)
        findings += report.finding is not None
        tally.add_program(cov.hits, cov.ops)
        tally.unclassified += cov.unclassified
    title = f"pudthp coverage ({len(files)} file(s), --impl {args.impl})"
    print(tally.table(title), end="")
    if findings:
        print(f"({findings} program(s) ended early on a finding; their later ops were not "
              f"run)")
    return 0


def on_kernel(programs: list[tuple[str, Any]]) -> int:
    """Both tables of ``--impl kernel`` (``campaign.kernel_coverage``); exit 4 where the
    machine cannot run it."""
    from harness.conform.campaign import kernel_coverage
    from harness.conform.compare import CannotRun
    from pudthp_cli.exits import cannot_run

    try:
        tally, ktally, notes = kernel_coverage(programs)
    except CannotRun as e:
        return cannot_run(str(e))
    title = f"pudthp coverage ({len(programs)} file(s), --impl kernel)"
    print(tally.table(title), end="")
    print(ktally.table(f"{title}: kernel-observation features"), end="")
    for note in notes:
        print(note)
    return 0
