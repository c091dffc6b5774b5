"""The ``pudthp`` command line (FORMAT.md section 4): the parser and the dispatch.

Each command group is a module of this package (``run``, ``campaign`` for ``fuzz``,
``coverage``, ``shrink``, ``corpus``, ``conform`` with ``export-c``, ``bench``, ``hub``,
``report``) that adds its parsers (``add``) and names its handler; argument types are in
``pudthp_cli.argtypes``, exit statuses and the one-line errors in ``pudthp_cli.exits``.
Each module imports at its top what ``pudthp run`` loads anyway and the small modules it
needs; what is slow to import (Hypothesis, atheris, redis, matplotlib, the live-kernel
code) only the command that needs it imports, so ``pudthp --help`` and ``pudthp run``
start fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

from harness.heap import tune_heap
from harness.limits import LimitExceeded, memory_error
from harness.program import ProgramError
from harness.runner import UsageError
from pudthp_cli import bench, campaign, conform, corpus, coverage, hub, report, run, shrink
from pudthp_cli.exits import EXIT_INTERRUPTED, error

# in the order ``pudthp --help`` lists them
GROUPS = (run, campaign, coverage, shrink, corpus, conform, bench, hub, report)


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
    for group in GROUPS:
        group.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``pudthp`` console script; returns the exit status."""
    # Nothing here calls BLAS; numpy's OpenBLAS would start a thread per core at import
    # (CPU spent before any work, and in every worker of a campaign).  Before numpy is
    # imported, and inherited by every process the command starts; a user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except KeyboardInterrupt:
        print("pudthp: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _main(argv: list[str]) -> int:
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
    except _UsageExit as e:
        return error(str(e))
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    if args.command is None:
        return error("a command is required (see 'pudthp --help')")
    if extra:
        return error(
            f"unrecognized arguments: {' '.join(extra)} (see 'pudthp {args.command} --help')"
        )
    if args.command not in ("hub", "report", "conform", "export-c", "bench") and getattr(
            args, "impl", None) != "ref":
        tune_heap()  # this process and the ones it starts run the fast side
    try:
        status: int = args.handler(args)
    except (ProgramError, UsageError, LimitExceeded) as e:
        return error(str(e))
    except MemoryError:
        return error(str(memory_error()))
    return status
