"""``pudthp shrink``: a program made smaller, keeping its finding signature."""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from harness.program import dump_program, load_program_file
from harness.runner import IMPL_NAMES
from harness.signature import SIGNATURE_FORMAT
from pudthp_cli.argtypes import output_file
from pudthp_cli.exits import error
from pudthp_ref import spec
from pudthp_ref.spec import Program

if TYPE_CHECKING:
    from harness.shrink import ShrinkResult


def add(sub: Any) -> None:
    cmd = sub.add_parser(
        "shrink",
        help="minimise a program, keeping its finding signature; exit 0 shrunk, 1 no "
        "finding, 2 bad input",
        description="Delta debugging over the ops (large chunks first), then simpler fields, "
        "fewer mms, default config keys and a smaller geometry, each kept only if the "
        "program still reports the same finding signature. Prints the length before and "
        "after; the shrunk program goes to --out, else to stdout.",
        allow_abbrev=False,
    )
    cmd.set_defaults(handler=command)
    add_rescale(sub)
    cmd.add_argument("program", metavar="PROGRAM", help="a pudthp-program/1 JSON file")
    cmd.add_argument("--out", metavar="FILE", help="write the shrunk program here (a new "
                     "file: an existing one is not overwritten)")
    cmd.add_argument("--impl", choices=(*IMPL_NAMES, "kernel"), default=None,
                     help="the judge (default: the program's meta.impl; else both for a "
                     "divergence, ref otherwise; kernel: the live kernel against the "
                     "reference, every candidate from scratch, two runs of three)")
    cmd.add_argument("--strict", action="store_true",
                     help="--impl kernel: a known disagreement counts as the finding too")


def add_rescale(sub: Any) -> None:
    cmd = sub.add_parser(
        "rescale",
        help="lift (or shrink) a program to another geometry; exit 0 written, 2 bad input",
        description="Map every address and length of PROGRAM to GEOMETRY digit by digit "
        "(PUDs, PMDs, pages: a PUD or PMD boundary and a page either side of it stay that; "
        "the shrinker's rescaling), the other config keys as they were. The finding the "
        "program's meta names is kept only where the rescaled program still shows it on "
        "the implementation that found it; otherwise it is dropped from the meta "
        "(lifted_without names it) and said. The program goes to --out, else to stdout.",
        allow_abbrev=False,
    )
    cmd.set_defaults(handler=rescale_command)
    cmd.add_argument("program", metavar="PROGRAM", help="a pudthp-program/1 JSON file")
    cmd.add_argument("--geometry", metavar="NAME", required=True,
                     choices=tuple(spec.GEOMETRIES),
                     help="the geometry to move it to: %(choices)s")
    cmd.add_argument("--out", metavar="FILE", help="write the program here (a new file: an "
                     "existing one is not overwritten)")


def rescale_command(args: argparse.Namespace) -> int:
    from harness.rescale import lift

    program = load_program_file(args.program)
    if args.out is not None:
        problem = (f"--out {args.out}: exists; not overwritten" if os.path.exists(args.out)
                   else output_file("--out", args.out))
        if problem is not None:
            return error(problem)
    lifted = lift(program, args.geometry)
    if lifted.note:
        print(f"pudthp rescale: {args.program}: {lifted.note}", file=sys.stderr)
    return put(dump_program(lifted.program), args.out, None,
               f"pudthp rescale: {args.program} (geometry {args.geometry})")


def put(text: str, out: str | None, line: str | None, done: str) -> int:
    """A program to standard output (``line`` before it on stderr), or to the new file
    ``out`` (then ``done -> out``)."""
    if out is None:
        if line is not None:
            print(line, file=sys.stderr)
        print(text, end="")
        return 0
    try:
        with open(out, "x", encoding="utf-8") as f:
            f.write(text)
    except OSError as e:
        return error(f"--out {out}: {e.strerror or e}")
    print(f"{done} -> {out}")
    return 0


def command(args: argparse.Namespace) -> int:
    from harness.shrink import NoFinding, shrink  # this command's cost only

    program = load_program_file(args.program)
    if args.out is not None and os.path.exists(args.out):
        return error(f"--out {args.out}: exists; not overwritten")
    if args.out is not None:
        problem = output_file("--out", args.out)
        if problem is not None:
            return error(problem)
    impl = args.impl or judge_for(program.meta)
    if args.strict and impl != "kernel":
        return error("--strict goes with --impl kernel")
    try:
        if impl == "kernel":
            result = on_kernel(program, args.strict)
            if isinstance(result, int):
                return result
        else:
            result = shrink(program, impl)
    except NoFinding as e:
        print(f"pudthp shrink: {args.program}: {e}", file=sys.stderr)
        return 1
    meta = dict(program.meta)
    meta.update(signature=result.finding.signature, signature_format=SIGNATURE_FORMAT,
                shrunk_from=result.ops_before)
    text = dump_program(Program(result.program.config, result.program.ops, meta))
    line = (f"pudthp shrink: {result.ops_before} ops -> {result.ops_after} ops in "
            f"{result.seconds:.2f} s ({result.runs} runs, --impl {impl}): "
            f"{result.finding.signature}")
    return put(text, args.out, line, line)


def on_kernel(program: Program, strict: bool) -> ShrinkResult | int:
    """Shrink on the live kernel (``harness.conform.kshrink``), progress on stderr; exit 4
    where the machine cannot run it."""
    from harness.conform.campaign import KernelMachine
    from harness.conform.compare import CannotRun
    from harness.conform.kshrink import shrink_on_kernel
    from pudthp_cli.exits import cannot_run

    def say(text: str) -> None:
        print(f"pudthp shrink: {text}", file=sys.stderr, flush=True)

    try:
        with KernelMachine(say) as machine:
            return shrink_on_kernel(machine, program, program.meta.get("signature"),
                                    log=say, strict=strict)
    except CannotRun as e:
        return cannot_run(str(e))


def judge_for(meta: dict[str, Any]) -> str:
    """The implementation a program's finding was found with: ``meta.impl``, else both for
    a divergence (only both shows one), else ref."""
    impl = meta.get("impl")
    if isinstance(impl, str) and impl in (*IMPL_NAMES, "kernel"):
        return impl
    if meta.get("kind") == "divergence" or str(meta.get("signature", "")).startswith(
            "divergence:"):
        return "both"
    return "ref"
