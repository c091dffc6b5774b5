"""``pudthp report``: plots and an index.html from campaign stats files (``fuzz.report``)."""

from __future__ import annotations

import argparse
from typing import Any

from pudthp_cli.argtypes import readable_dir
from pudthp_cli.exits import error


def add(sub: Any) -> None:
    report = sub.add_parser(
        "report",
        help="PNG plots and an index.html from campaign stats files (pudthp fuzz --stats)",
        description="Plot rate, coverage, model-state features, corpus size and findings "
        "over time, one line per machine, and write an index.html with the plots, the "
        "machines' last figures and the findings table.",
        allow_abbrev=False,
    )
    report.set_defaults(handler=command)
    report.add_argument("stats", metavar="STATS.jsonl", nargs="+",
                        help="stats files (one JSON line per interval and machine)")
    report.add_argument("--out", metavar="DIR", required=True,
                        help="where the PNG files and index.html go")
    report.add_argument("--findings", metavar="DIR", default=None,
                        help="the findings directory for the table (default corpus/findings)")


def command(args: argparse.Namespace) -> int:
    from fuzz.report import write_report  # matplotlib: this command's cost
    from fuzz.stats import StatsError

    findings = args.findings if args.findings is not None else "corpus/findings"
    if args.findings is not None:
        problem = readable_dir("--findings", args.findings)
        if problem is not None:
            return error(problem)
    try:
        write_report(list(args.stats), args.out, findings, progress=print)
    except StatsError as e:
        return error(str(e))
    except OSError as e:
        return error(f"--out {args.out}: {e.strerror or e}")
    return 0
