"""``pudthp corpus``: list, replay, merge and archive program collections (``harness.corpus``),
and minimize an atheris corpus (``fuzz.minimize``)."""

from __future__ import annotations

import argparse
import importlib.util
import sys
from typing import Any

from harness.runner import IMPL_NAMES
from pudthp_cli.argtypes import overrides, writable_dir
from pudthp_cli.exits import EXIT_INTERRUPTED, error


def add(sub: Any) -> None:
    cmd = sub.add_parser(
        "corpus",
        help="list, replay, merge and archive program collections",
        description="The program collections under corpus/: seeds/ must pass, known_bad/ "
        "find (meta.expect), findings/ report their meta.signature, regressions/ pass.",
        allow_abbrev=False,
    )
    cmd.set_defaults(handler=command)
    csub = cmd.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND")
    dirs_help = ("corpus directories (default: corpus/seeds corpus/known_bad "
                 "corpus/findings corpus/regressions, those that exist)")
    ls = csub.add_parser("list", help="each program with its expected status and signature",
                         allow_abbrev=False)
    ls.add_argument("dirs", metavar="DIR", nargs="*", help=dirs_help)
    replay = csub.add_parser(
        "replay", allow_abbrev=False,
        help="run everything; report what changed (newly passing, still failing, new "
        "finding); exit 0 nothing changed, 1 something did, 2 bad input")
    replay.add_argument("dirs", metavar="DIR", nargs="*", help=dirs_help)
    replay.add_argument("--impl", choices=IMPL_NAMES, default=None,
                        help="run every program on this (default: its meta.impl, else both)")
    merge = csub.add_parser(
        "merge", allow_abbrev=False,
        help="copy several corpus directories into one, deduplicated by content and by "
        "signature (the shortest kept); files already in OUT stay")
    merge.add_argument("out", metavar="OUT")
    merge.add_argument("dirs", metavar="DIR", nargs="+")
    archive = csub.add_parser(
        "archive", allow_abbrev=False,
        help="move a finding into the regression set with a note (never overwriting)")
    archive.add_argument("finding", metavar="FINDING", help="a program JSON file")
    archive.add_argument("--note", metavar="TEXT", required=True, help="why it is kept")
    archive.add_argument("--to", metavar="DIR", default="corpus/regressions",
                         help="the regression set (default corpus/regressions)")
    archive.add_argument("--expect", choices=("pass", "finding"), default="pass",
                         help="what it must report from now on (default pass: it was fixed; "
                         "checked before moving)")
    archive.add_argument("--impl", choices=IMPL_NAMES, default=None,
                         help="the implementation to check it on (default: its meta.impl, "
                         "else both)")
    minimize = csub.add_parser(
        "minimize", allow_abbrev=False,
        help="the smallest subset of an atheris corpus with the same coverage (libFuzzer "
        "-merge=1, resumable); the input directory is kept unless --in-place",
        description="Run libFuzzer's -merge=1 through the atheris target: every input of "
        "DIR is run once and a smallest set of inputs with the same coverage and features is "
        "copied into a new directory. A killed run resumes from its control file when the "
        "same command is run again. Prints the file counts before and after.")
    minimize.add_argument("dir", metavar="DIR", help="an atheris corpus directory")
    where = minimize.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR2", help="where the minimized corpus goes (a new "
                       "or empty directory; default DIR.min)")
    where.add_argument("--in-place", action="store_true",
                       help="replace DIR with the minimized corpus (swapped in at the end)")
    minimize.add_argument("--config", metavar="KEY=VALUE", action="append", default=[],
                          help="the config keys the campaign fixed (coverage depends on them)")
    minimize.add_argument("--impl", choices=("both", "ref"), default="both",
                          help="what each input runs on, as in the campaign (default both)")
    minimize.add_argument("--findings", metavar="DIR", default="corpus/findings",
                          help="signatures archived here are known and do not crash the "
                          "target (default corpus/findings)")


def command(args: argparse.Namespace) -> int:
    from harness import corpus  # its hashing and copying: this command's cost

    if args.corpus_command is None:
        return error("corpus needs a subcommand: list, replay, merge, archive or minimize "
                     "(see 'pudthp corpus --help')")
    if args.corpus_command == "archive":
        problem = writable_dir("--to", args.to, "archive there")
        if problem is not None:
            return error(problem)
        return corpus.cmd_archive(args.finding, args.note, args.to, args.expect, args.impl)
    if args.corpus_command == "minimize":
        return minimize(args)
    dirs = list(args.dirs) or ([] if args.corpus_command == "merge" else corpus.default_dirs())
    problem = corpus.check_dirs(dirs)
    if problem is None and args.corpus_command == "merge":
        problem = writable_dir("OUT", args.out, "merge into it")
    if problem is not None:
        return error(problem)
    if args.corpus_command == "list":
        return corpus.cmd_list(dirs)
    if args.corpus_command == "replay":
        return corpus.cmd_replay(dirs, args.impl)
    return corpus.cmd_merge(args.out, dirs)


def minimize(args: argparse.Namespace) -> int:
    fixed = overrides(args.config, "corpus minimize")
    if isinstance(fixed, str):
        return error(fixed)
    if importlib.util.find_spec("atheris") is None:
        return error("corpus minimize: the atheris package is not installed")
    from fuzz.minimize import MinimizeError, MinimizeOptions, minimize  # runs libFuzzer

    o = MinimizeOptions(args.dir, args.out, args.in_place, fixed, args.impl, args.findings)
    try:
        r = minimize(o)
    except MinimizeError as e:
        return error(f"corpus minimize: {e}")
    except KeyboardInterrupt:
        print("pudthp corpus minimize: interrupted; the same command resumes", file=sys.stderr)
        return EXIT_INTERRUPTED
    extra = f", resumed at input {r.resumed_at}" if r.resumed_at is not None else ""
    left = (f"; {r.left_out} input(s) crashed the target (a finding it did not know) and "
            f"were left out" if r.left_out else "")
    print(f"pudthp corpus minimize: {r.before} -> {r.after} files ({r.features} features, "
          f"{r.edges} coverage edges) in {r.out}, {r.seconds:.1f} s{extra}{left}")
    return 0
