"""``pudthp corpus``: the program collections the project keeps, and what each must report.

Directories under ``corpus/``: ``seeds/`` (scenario programs: must pass), ``known_bad/``
(the rejected list_head design and its correct twins: ``meta.expect`` says ``finding`` or
``pass``), ``findings/`` (archived by the fuzz engines: each must keep
reporting its ``meta.signature`` until it is fixed) and ``regressions/`` (findings that were
fixed, moved there by ``archive`` with a note: must pass).  The expectation of a program:

1. ``meta.expect`` ``"pass"``: no finding; ``"finding"``: a finding, the one named by
   ``meta.signature`` if there is one;
2. else ``meta.signature``: that signature;
3. else by directory: in ``known_bad`` a program of a known-bad design (deposit
   ``list_head``) must find and its twins pass (the canary programs there carry no
   ``meta.expect``); anywhere else no finding.

``replay`` runs each program (``--impl``, else ``meta.impl``, else both: ref and fast in
lockstep, so a program must pass on every implementation; a kernel campaign's finding,
``meta.impl`` ``kernel``, on the live kernel against the reference as the campaign ran it,
or, where this machine cannot, not at all: ``skipped`` with the reason) and names what
changed against that expectation: ``newly passing`` (a finding expected, none now), ``new
finding`` (none expected, or another signature than expected), ``still failing`` (the
expected finding) or ``pass``.  A finding archived by a campaign (``meta.signature``, no
``meta.expect``) that is ``still failing`` is open: ``--fail-on-open`` makes that a
failure too.  A replay of nothing (no directory, or none with a program) is an error, never
a pass.  Nothing here ever overwrites a file.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from harness import junit
from harness.conform.campaign import KernelMachine
from harness.conform.compare import CannotRun
from harness.conform.kshrink import kernel_judge
from harness.junit import Case
from harness.program import (
    ProgramError,
    dump_program,
    load_program_file,
    program_to_json,
)
from harness.runner import IMPL_NAMES, run_program
from harness.signature import of_meta
from pudthp_ref.spec import Finding, Program

DEFAULT_DIRS: tuple[str, ...] = (
    "corpus/seeds",
    "corpus/known_bad",
    "corpus/findings",
    "corpus/regressions",
)
REGRESSIONS = "corpus/regressions"
CHANGED = ("newly passing", "new finding", "invalid")
KNOWN_BAD_DEPOSITS: tuple[str, ...] = ("list_head",)


@dataclass(frozen=True)
class Expectation:
    finding: bool
    signature: str | None = None
    # the finding expected is an archived one still open (``meta.signature`` with no
    # ``meta.expect``: not a known-bad design or a failure kept on purpose)
    open: bool = False

    def __str__(self) -> str:
        if not self.finding:
            return "pass"
        return self.signature or "finding"


@dataclass
class Entry:
    path: str
    program: Program | None
    error: str | None = None

    @property
    def expect(self) -> Expectation:
        assert self.program is not None
        return expectation(self.path, self.program)


def expectation(path: str, program: Program) -> Expectation:
    """What ``program`` (read from ``path``) must report (module docstring)."""
    meta = program.meta
    sig = of_meta(meta)  # a format-1 signature read as today's
    expect = meta.get("expect")
    if expect == "pass":
        return Expectation(False)
    if expect == "finding" or sig is not None:
        return Expectation(True, sig, open=expect != "finding")
    in_known_bad = os.path.basename(os.path.normpath(os.path.dirname(path))) == "known_bad"
    return Expectation(in_known_bad and program.config.deposit in KNOWN_BAD_DEPOSITS)


def default_dirs() -> list[str]:
    return [d for d in DEFAULT_DIRS if os.path.isdir(d)]


def load_entries(dirs: Iterable[str]) -> list[Entry]:
    """Every ``*.json`` of ``dirs`` in name order; one that does not load is an entry with
    its one-line error."""
    out: list[Entry] = []
    for d in dirs:
        for path in sorted(glob.glob(os.path.join(d, "*.json"))):
            try:
                out.append(Entry(path, load_program_file(path)))
            except ProgramError as e:
                out.append(Entry(path, None, str(e)))
    return out


def check_dirs(dirs: list[str]) -> str | None:
    for d in dirs:
        if not os.path.isdir(d):
            return f"{d}: not a directory"
    return None


def impl_for(program: Program, impl: str | None) -> str:
    """``impl`` if given, else the program's ``meta.impl``, else both."""
    if impl is not None:
        return impl
    recorded = program.meta.get("impl")
    return recorded if isinstance(recorded, str) and recorded in IMPL_NAMES else "both"


# --------------------------------------------------------------------------------------
# list
# --------------------------------------------------------------------------------------


def cmd_list(dirs: list[str]) -> int:
    """One line per program: expected status, ops, path, signature or note."""
    entries = load_entries(dirs)
    bad = 0
    for e in entries:
        if e.program is None:
            bad += 1
            print(f"{'invalid':8} {'':>5}      {e.path}  {e.error}")
            continue
        exp = e.expect
        status = "finding" if exp.finding else "pass"
        what = exp.signature or _short(e.program.meta.get("note", ""))
        print(f"{status:8} {len(e.program.ops):>5} ops  {e.path}  {what}".rstrip())
    print(f"{len(entries)} program(s) in {len(dirs)} director{'y' if len(dirs) == 1 else 'ies'}"
          + (f", {bad} invalid" if bad else ""))
    return 2 if bad else 0


def _short(text: Any, width: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 3] + "..."


# --------------------------------------------------------------------------------------
# replay
# --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    entry: Entry
    verdict: str  # pass, still failing, newly passing, new finding, invalid, skipped
    signature: str | None = None
    note: str = ""  # why a kernel finding was skipped


KernelJudge = Callable[[Program], "Finding | str | None"]
"""A kernel finding's replay: its finding on the live kernel, None, or why it cannot run."""


def replay_entry(entry: Entry, impl: str | None = None,
                 kernel: KernelJudge | None = None) -> Outcome:
    if entry.program is None:
        return Outcome(entry, "invalid")
    exp = entry.expect
    if impl is None and entry.program.meta.get("impl") == "kernel":
        got = kernel(entry.program) if kernel is not None else "no live kernel asked"
        if isinstance(got, str):
            return Outcome(entry, "skipped", note=got)
        finding = got
    else:
        finding = run_program(entry.program, impl_for(entry.program, impl)).finding
    sig = None if finding is None else finding.signature
    if sig is None:
        return Outcome(entry, "newly passing" if exp.finding else "pass")
    if not exp.finding or (exp.signature is not None and exp.signature != sig):
        return Outcome(entry, "new finding", sig)
    return Outcome(entry, "still failing", sig)


def replay(dirs: list[str], impl: str | None = None) -> list[Outcome]:
    with contextlib.ExitStack() as stack:
        kernel = _LiveKernel(stack)
        return [replay_entry(e, impl, kernel) for e in load_entries(dirs)]


class _LiveKernel:
    """The live kernel for the kernel findings of a replay, entered at the first one (a
    kernel campaign's machine: the conform lock and settings until the replay ends)."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self.stack = stack
        self.problem: str | None = None
        self.judge: Callable[[Program], Finding | None] | None = None

    def __call__(self, program: Program) -> Finding | str | None:
        if self.judge is None and self.problem is None:
            try:
                machine = self.stack.enter_context(KernelMachine(say=lambda _: None))
                self.judge = kernel_judge(machine)
            except CannotRun as e:
                self.problem = f"needs the live kernel: {' '.join(str(e).split())}"
        if self.judge is None:
            return self.problem or "needs the live kernel"
        return self.judge(program)


def replay_problem(dirs: list[str], named: bool) -> str | None:
    """Why ``dirs`` cannot be replayed (one line), or None: a directory that is not one,
    one named on the command line (``named``) with no program in it, or no program at all
    (a replay of nothing must never pass)."""
    problem = check_dirs(dirs)
    if problem is not None:
        return problem
    if not dirs:
        return f"no corpus directory here (none of {' '.join(DEFAULT_DIRS)} exists)"
    empty = [d for d in dirs if not glob.glob(os.path.join(d, "*.json"))]
    if named and empty:
        return f"{empty[0]}: no programs (*.json) in it"
    if len(empty) == len(dirs):
        return f"no programs (*.json) in {' '.join(dirs)}"
    return None


def cmd_replay(dirs: list[str], impl: str | None = None, *, fail_on_open: bool = False,
               junit_path: str | None = None) -> int:
    """Run everything; exit 0 when every program reports what it should, 1 when something
    changed (with ``fail_on_open``, also while an archived finding still fails), 2 when a
    program does not load.  ``junit_path``: a JUnit XML report, one case per program."""
    outcomes = []
    cases: list[Case] = []
    with contextlib.ExitStack() as stack:
        kernel = _LiveKernel(stack)
        for entry in load_entries(dirs):
            start = time.monotonic()
            o = replay_entry(entry, impl, kernel)
            outcomes.append(o)
            if o.verdict == "invalid":
                line = f"{'invalid':14} {entry.path}  {entry.error}"
            else:
                line = f"{o.verdict:14} {entry.path}  {o.signature or o.note}"
                if o.verdict in CHANGED:
                    line += f"  (expected {entry.expect})"
            line = line.rstrip()
            print(line, flush=True)
            failed = o.verdict in CHANGED or (fail_on_open and _open(o))
            cases.append(Case(entry.path, "pudthp corpus replay."
                              + os.path.basename(os.path.normpath(os.path.dirname(entry.path))),
                              " ".join(line.split()) if failed else None,
                              time.monotonic() - start))
    counts = {v: sum(o.verdict == v for o in outcomes)
              for v in ("pass", "still failing", "newly passing", "new finding", "invalid",
                        "skipped")}
    still_open = sum(_open(o) for o in outcomes)
    print(f"replay: {len(outcomes)} program(s): "
          + ", ".join(f"{n} {v}" for v, n in counts.items() if n or v in CHANGED[:2])
          + (f" ({still_open} archived finding(s) open)" if still_open else ""))
    if junit_path is not None:
        try:
            junit.write(junit_path, "pudthp corpus replay", cases,
                        sum(c.seconds for c in cases))
        except OSError as e:
            print(f"pudthp: error: --junit {junit_path}: {e.strerror or e}", file=sys.stderr)
            return 2
    if counts["invalid"]:
        return 2
    if counts["newly passing"] or counts["new finding"]:
        return 1
    return 1 if fail_on_open and still_open else 0


def _open(o: Outcome) -> bool:
    """An archived finding that still fails (module docstring: ``--fail-on-open``)."""
    return (o.verdict == "still failing" and o.entry.program is not None
            and o.entry.expect.open)


# --------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------


def content_key(program: Program) -> str:
    """A hash of what a program does (config and ops, not meta)."""
    data = program_to_json(program)
    text = json.dumps({"config": data["config"], "ops": data["ops"]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def cmd_merge(out_dir: str, dirs: list[str]) -> int:
    """Copy the programs of ``dirs`` into ``out_dir``: one per content, and per finding
    signature the one with the fewest ops; files already in ``out_dir`` count and stay."""
    os.makedirs(out_dir, exist_ok=True)
    have = load_entries([out_dir])
    contents = {content_key(e.program) for e in have if e.program is not None}
    signatures = {of_meta(e.program.meta) for e in have if e.program is not None} - {None}
    chosen: dict[str, Entry] = {}  # signature or content key -> entry
    dup_content = dup_sig = invalid = 0
    for e in load_entries(dirs):
        if e.program is None:
            invalid += 1
            print(f"invalid  {e.path}  {e.error}")
            continue
        key = content_key(e.program)
        if key in contents:
            dup_content += 1
            continue
        contents.add(key)
        sig = of_meta(e.program.meta)
        if sig is not None:
            if sig in signatures:
                dup_sig += 1
                continue
            old = chosen.get(sig)
            if old is not None:
                dup_sig += 1
                assert old.program is not None
                if len(e.program.ops) >= len(old.program.ops):
                    continue
            chosen[sig] = e
        else:
            chosen[key] = e
    written = 0
    for e in chosen.values():
        target = _free_name(out_dir, e.path)
        try:
            with open(e.path, encoding="utf-8") as src, open(target, "x",
                                                             encoding="utf-8") as dst:
                dst.write(src.read())
        except OSError as err:  # a full disk: no part of a program is left behind
            with contextlib.suppress(OSError):
                if os.path.exists(target):
                    os.unlink(target)
            print(f"pudthp: error: {target}: cannot write: {err.strerror or err} ({written} "
                  f"program(s) written before)", file=sys.stderr)
            return 2
        written += 1
        print(f"merged   {e.path} -> {target}")
    print(f"merge: {written} program(s) written to {out_dir}; skipped {dup_content} "
          f"duplicate(s) by content, {dup_sig} by signature"
          + (f", {invalid} invalid" if invalid else ""))
    return 2 if invalid else 0


def _free_name(out_dir: str, path: str) -> str:
    """``out_dir``/basename, or with a short content hash added when that name is taken."""
    name = os.path.basename(path)
    target = os.path.join(out_dir, name)
    if not os.path.exists(target):
        return target
    with open(path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    stem, ext = os.path.splitext(name)
    for n in range(8, 65, 8):
        target = os.path.join(out_dir, f"{stem}-{digest[:n]}{ext}")
        if not os.path.exists(target):
            return target
    raise FileExistsError(target)


# --------------------------------------------------------------------------------------
# archive
# --------------------------------------------------------------------------------------


class ArchiveError(Exception):
    """``archive`` cannot proceed; ``status`` is the exit status (1 or 2)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def archive_finding(path: str, note: str, to_dir: str = REGRESSIONS, expect: str = "pass",
                    impl: str | None = None) -> str:
    """Move the finding at ``path`` into ``to_dir`` with ``note`` and ``expect`` in its meta,
    after checking that it reports what it will be expected to (a regression passes: the
    bug is fixed).  Returns the new path; raises ArchiveError."""
    program = load_program_file(path)
    finding = run_program(program, impl_for(program, impl)).finding
    sig = of_meta(program.meta)
    if expect == "pass" and finding is not None:
        raise ArchiveError(
            f"{path}: still reports {finding.signature}; a regression must pass (fix it "
            "first, or use --expect finding to keep it as a known failure)", 1)
    if expect == "finding" and (finding is None or (sig is not None
                                                    and finding.signature != sig)):
        got = "no finding" if finding is None else finding.signature
        raise ArchiveError(f"{path}: expected {sig or 'a finding'}, got {got}", 1)
    meta: dict[str, Any] = dict(program.meta)
    if "note" in meta:
        meta["finding_note"] = meta["note"]
    meta["note"] = note
    meta["expect"] = expect
    meta["archived"] = datetime.now(UTC).isoformat(timespec="seconds")
    meta["archived_from"] = path
    os.makedirs(to_dir, exist_ok=True)
    target = os.path.join(to_dir, os.path.basename(path))
    try:
        with open(target, "x", encoding="utf-8") as f:
            f.write(dump_program(Program(program.config, program.ops, meta)))
    except FileExistsError:
        raise ArchiveError(f"{target}: exists; not overwritten", 2) from None
    except OSError as e:  # a full disk: nothing half written stays
        with contextlib.suppress(OSError):
            os.unlink(target)
        raise ArchiveError(f"{target}: cannot write: {e.strerror or e}", 2) from None
    try:
        os.unlink(path)
    except OSError as e:
        raise ArchiveError(f"archived to {target}, but {path} could not be removed: "
                           f"{e.strerror or e}", 2) from None
    return target


def cmd_archive(path: str, note: str, to_dir: str, expect: str, impl: str | None) -> int:
    try:
        target = archive_finding(path, note, to_dir, expect, impl)
    except ArchiveError as e:
        print(f"pudthp: error: {e}", file=sys.stderr)
        return e.status
    print(f"archived {path} -> {target} (expect {expect})")
    return 0
