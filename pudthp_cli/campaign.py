"""``pudthp fuzz``: a fuzzing campaign of either engine (``fuzz.engine_hypothesis``,
``fuzz.engine_atheris``, run by ``fuzz.supervisor``), with its link to the hub and the stats
file (``fuzz.link``)."""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import random
import sys
from typing import TYPE_CHECKING, Any

from harness.limits import default_max_rss_mb
from pudthp_cli.argtypes import (
    COUNT,
    MAX_SECONDS,
    MIB,
    NATURAL,
    PROGRAM_SECONDS,
    SECONDS,
    memory_floor,
    output_file,
    overrides,
    writable_dir,
)
from pudthp_cli.exits import cannot_run, error

if TYPE_CHECKING:  # at run time imported by the commands that need it (redis)
    from fuzz.link import CampaignLink

PROGRAM_MAX_SECONDS = 60.0
DEFAULT_SECONDS = 60.0
DEFAULT_EXAMPLE_DB = "corpus/hypothesis"


def add(sub: Any) -> None:
    fuzz = sub.add_parser(
        "fuzz",
        help="the fuzzing campaign: random programs on ref and fast in lockstep; exit 0 "
        "nothing found, 1 findings, 2 bad usage",
        description="Run the Hypothesis state machine (every op of docs/format.md, ref and fast "
        "compared after every op, invariants and the oracle checked) in parallel worker "
        "processes for a fixed time. Each distinct finding (by signature) is shrunk and "
        "written once to the findings directory as a program with metadata (atomically; "
        "valid files already there are never touched). A program that hits a resource "
        "limit is dropped, never a finding. At the end the model-state coverage table (see "
        "'pudthp coverage') is printed and written next to the findings. Exit 0 nothing "
        "found, 1 findings, 2 bad usage or a findings directory that cannot be written, 130 "
        "interrupted (Ctrl-C) or 143 terminated (SIGTERM): both stop cleanly, writing what "
        "was found.",
        allow_abbrev=False,
    )
    fuzz.set_defaults(handler=command)
    fuzz.add_argument("--engine", choices=("hypothesis", "atheris"), default="hypothesis",
                      help="the engine (default hypothesis; atheris: libFuzzer, coverage-guided, "
                      "with a corpus on disk that a later campaign resumes from)")
    fuzz.add_argument("--time", metavar="SECONDS", type=SECONDS, default=None,
                      help="how long to fuzz (default 60; with --programs, no time limit)")
    fuzz.add_argument("--programs", metavar="N", type=COUNT, default=None,
                      help="hypothesis: run N generated programs in all, shared among the "
                      "workers, then stop (shrinking's tries not counted; a run that fails "
                      "counts its programs up to the failing one; a few more when "
                      "Hypothesis discards some): with --seed the same programs on every "
                      "machine, however loaded")
    fuzz.add_argument("--stop-on-first", action="store_true",
                      help="end the campaign at its first new finding, once it is shrunk and "
                      "archived (exit 1)")
    fuzz.add_argument("--quiet", action="store_true",
                      help="no progress on the terminal: the summary and the coverage "
                      "headline only")
    fuzz.add_argument("--junit", metavar="FILE", default=None,
                      help="write a JUnit XML report: one failed test case per distinct "
                      "finding (its one-line finding as the failure), one passing case when "
                      "nothing was found")
    fuzz.add_argument("--workers", metavar="N", type=COUNT, default=None,
                      help="worker processes, each with its own seed (default: all cores)")
    fuzz.add_argument("--config", metavar="KEY=VALUE", action="append", default=[],
                      help="fix a config key for every program, e.g. deposit=list_head "
                      "(repeatable; keys and values of docs/model.md section 4; the rest is "
                      "drawn per program from the correct designs)")
    fuzz.add_argument("--findings", metavar="DIR", default="corpus/findings",
                      help="where findings are written (default corpus/findings)")
    fuzz.add_argument("--seed", metavar="N", type=NATURAL, default=None,
                      help="seed of worker 0; worker i gets N+i (default: random, printed)")
    fuzz.add_argument("--impl", choices=("both", "ref", "kernel"), default="both",
                      help="what each program runs on (default both: ref and fast in lockstep; "
                      "ref: the reference alone, several times faster, no divergences; "
                      "kernel: this machine's live kernel against the reference, one "
                      "worker, needs root and PMD THP)")
    fuzz.add_argument("--strict", action="store_true",
                      help="--impl kernel: a known disagreement is a finding too")
    fuzz.add_argument("--mix-kernels", action="store_true",
                      help="--impl kernel with --hub: join a hub campaign run on another "
                      "kernel release (or on the models)")
    fuzz.add_argument("--corpus", metavar="DIR", default="corpus/atheris",
                      help="atheris: libFuzzer's corpus, kept between campaigns "
                      "(default corpus/atheris)")
    fuzz.add_argument("--max-rss", metavar="MIB", type=MIB, default=None,
                      help="memory limit of each worker process; a program that hits it is "
                      "dropped, never a finding (default: half of this machine's memory "
                      "shared among the workers; 0: no limit)")
    fuzz.add_argument("--max-ops", metavar="N", type=COUNT, default=None,
                      help="ops per program (default: 100 with hypothesis, 200 with atheris)")
    fuzz.add_argument("--max-program-time", metavar="SECONDS", type=PROGRAM_SECONDS,
                      default=PROGRAM_MAX_SECONDS,
                      help="a program running longer is dropped, never a finding (default "
                      f"{PROGRAM_MAX_SECONDS:g})")
    fuzz.add_argument("--example-db", metavar="DIR", default=None,
                      help="hypothesis: the example database, whose saved failures a "
                      "campaign replays first (default corpus/hypothesis)")
    fuzz.add_argument("--no-example-db", action="store_true",
                      help="hypothesis: no example database (nothing replayed or saved)")
    fuzz.add_argument("--hub", metavar="URL", default=None,
                      help="share findings, known signatures, the atheris corpus, the "
                      "example database, stats and seeds with other machines through the "
                      "Redis hub at redis://[:PASSWORD@]HOST:PORT/DB (see 'pudthp hub "
                      "serve'); an unreachable hub is said once and the campaign carries on")
    fuzz.add_argument("--campaign", metavar="NAME", default="main",
                      help="with --hub: the campaign's name on the hub (default main)")
    fuzz.add_argument("--machine", metavar="NAME", default=None,
                      help="this machine's name in the hub and the stats (default "
                      "HOSTNAME:PID)")
    fuzz.add_argument("--stats", metavar="FILE", default=None,
                      help="append one JSON line of campaign statistics every few seconds "
                      "(see 'pudthp report')")


def command(args: argparse.Namespace) -> int:
    fixed = overrides(args.config, "fuzz")
    if isinstance(fixed, str):
        return error(fixed)
    problem = writable_dir("--findings", args.findings, "write a finding there")
    if problem is None and args.stats is not None:
        problem = output_file("--stats", args.stats, make_parent=True)
    if problem is None and args.junit is not None:
        problem = output_file("--junit", args.junit, make_parent=True)
    if problem is None and args.programs is not None and args.engine != "hypothesis":
        problem = "--programs: only with --engine hypothesis (atheris runs for --time)"
    if problem is not None:
        return error(problem)
    if args.impl == "kernel":
        return kernel(args, fixed)
    if args.strict or args.mix_kernels:
        return error("--strict and --mix-kernels go with --impl kernel")
    workers = args.workers or os.cpu_count() or 1
    if args.time is None:
        args.time = math.inf if args.programs is not None else DEFAULT_SECONDS
    max_rss = default_max_rss_mb(workers) if args.max_rss is None else args.max_rss
    problem = memory_floor(max_rss, args.impl)
    if problem is not None:
        return error(problem)
    if args.engine == "atheris":
        return atheris(args, fixed, workers, max_rss)
    # the engine (Hypothesis) and the link (redis): this command's cost only
    from fuzz.engine_hypothesis import STEPS_PER_PROGRAM, Campaign, run_campaign

    link = open_link(args, "hypothesis", None)  # a bad --hub or --stats is said first,
    if isinstance(link, str):
        return error(link)
    example_db, problem = example_database(args)  # then the directory is made,
    if problem is None:
        seed = start_link(link, args, "hypothesis", fixed)  # then the hub joined
        if isinstance(seed, int):
            return run_campaign(Campaign(
                args.time, workers, fixed, args.findings, seed, impl=args.impl,
                max_ops=args.max_ops or STEPS_PER_PROGRAM,
                program_seconds=args.max_program_time, max_rss=max_rss or None,
                example_db=example_db, link=link, programs=args.programs,
                stop_on_first=args.stop_on_first, quiet=args.quiet, junit=args.junit))
        problem = seed
    if link is not None:
        link.close()
    return error(problem)


def atheris(args: argparse.Namespace, fixed: dict[str, Any], workers: int,
            max_rss: int) -> int:
    if importlib.util.find_spec("atheris") is None:
        return cannot_run("--engine atheris: the atheris package is not installed")
    problem = writable_dir("--corpus", args.corpus)
    if problem is not None:
        return error(problem)
    from fuzz.engine_atheris import MAX_OPS, AtherisCampaign, run_atheris_campaign

    link = open_link(args, "atheris", args.corpus)
    if isinstance(link, str):
        return error(link)
    seed = start_link(link, args, "atheris", fixed)
    if isinstance(seed, str):
        return error(seed)
    return run_atheris_campaign(AtherisCampaign(
        args.time, workers, fixed, args.findings, args.corpus, seed, impl=args.impl,
        max_ops=args.max_ops or MAX_OPS, program_seconds=args.max_program_time,
        max_rss=max_rss or None, link=link, stop_on_first=args.stop_on_first,
        quiet=args.quiet, junit=args.junit))


def kernel(args: argparse.Namespace, fixed: dict[str, Any]) -> int:
    """A kernel campaign (``fuzz.engine_kernel``): one worker, the live kernel, the
    reference as the oracle."""
    if fixed:
        return error("--config: a kernel campaign draws its configs from what this kernel "
                     "can run; no key can be fixed")
    if args.engine == "atheris":
        if importlib.util.find_spec("atheris") is None:
            return cannot_run("--engine atheris: the atheris package is not installed")
        from fuzz.engine_kernel_atheris import run_kernel_atheris_campaign
    from fuzz.engine_kernel import KernelCampaign, run_kernel_campaign

    link = open_link(args, args.engine, None, unit="ops")
    if isinstance(link, str):
        return error(link)
    seed = start_link(link, args, args.engine, fixed, kernel=os.uname().release)
    if isinstance(seed, str):
        return error(seed)
    c = KernelCampaign(args.time, args.findings, seed, strict=args.strict,
                       max_ops=args.max_ops, asked_workers=args.workers or 1, link=link)
    if args.engine == "atheris":
        return run_kernel_atheris_campaign(c, args.corpus)
    return run_kernel_campaign(c)


def example_database(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The example database directory, made (None: none), or the one-line problem.  The
    default one that cannot be made (a read-only working directory) is done without,
    said; one asked for by name is a problem."""
    if args.no_example_db:
        return None, None
    path = DEFAULT_EXAMPLE_DB if args.example_db is None else args.example_db
    problem = writable_dir("--example-db", path)
    if problem is None:
        return path, None
    if args.example_db is not None:
        return None, problem
    print(f"pudthp fuzz: no example database ({problem}); nothing is replayed or saved",
          file=sys.stderr)
    return None, None


def open_link(args: argparse.Namespace, engine: str, corpus: str | None,
              unit: str | None = None) -> CampaignLink | str | None:
    """The campaign's link to the hub and the stats file (None without either), not yet
    joined to the hub's campaign; or the one-line problem."""
    if args.hub is None and args.stats is None:
        return None
    from fuzz.link import CampaignLink, LinkError, LinkOptions

    def say(text: str) -> None:
        print(f"pudthp fuzz: {text}", file=sys.stderr, flush=True)

    try:
        return CampaignLink.open(LinkOptions(args.hub, args.stats, args.campaign,
                                             args.machine), engine, args.findings, corpus, say,
                                 unit)
    except LinkError as e:
        return str(e)


def start_link(link: CampaignLink | None, args: argparse.Namespace, engine: str,
               fixed: dict[str, Any], kernel: str | None = None) -> int | str:
    """The campaign's seed (--seed, a block of the hub's, or a random one), the hub's
    campaign joined; or the one-line problem (a hub running other code)."""
    fallback = random.SystemRandom().randrange(1 << 32)
    if link is None:
        return int(args.seed) if args.seed is not None else fallback
    from fuzz.link import LinkError

    try:
        # a campaign of --programs has no end time to announce: the longest one there is
        return link.start(engine, fixed, args.seed, fallback, min(args.time, MAX_SECONDS),
                          kernel=kernel, mix_kernels=args.mix_kernels)
    except LinkError as e:
        return str(e)
