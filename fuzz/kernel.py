"""Kernel campaigns in a worker: a seeded search of the kernel machine (``fuzz.kmachine``)
for a fixed number of programs, each finding shrunk on the kernel, archived with its
metadata and exported beside it as a C reproducer (issue 22, items 1 and 5).

``search`` runs Hypothesis on ``KernelPudthpMachine`` in this process (so a test's planted
bug in the reference applies), one Hypothesis run after another with seeds derived from
the worker's (``engine_hypothesis.run_seed``), until ``programs`` test cases have run.  A
case that ends in a finding leaves Hypothesis at once (``CaseFound``: no Hypothesis
shrinking, no replay, both of which would be runs on the kernel); its program is shrunk
with ``harness.conform.kshrink`` (each candidate from scratch, two runs of three), and
from then on its signature is known (a case meeting it again goes idle).

A finding as archived (``kernel_payload``): the shrunk program with ``meta``: the
signature, ``kind`` ``disagreement``, the op, the observable and both values
(``observable``, ``kernel_value``, ``model_value``), ``kernel_release`` (``uname -r``),
``impl`` ``kernel``, the seed, the shrink, the date; and the C file ``pudthp export-c``
writes for it, to be put beside it as ``<name>.c`` (``archive_kernel_finding``), built
and run as its header says.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import hypothesis
from hypothesis import Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from fuzz.archive import archive, write_beside
from fuzz.engine_hypothesis import fuzz_settings, pin_constant_pool, run_seed
from fuzz.kmachine import (
    REGION_PMDS,
    SWAP_PAGES,
    CaseFound,
    KernelCounts,
    expressible,
    make_kernel_machine,
)
from fuzz.machine import Observer, StopFuzzing
from fuzz.mutator import Hunt
from harness.conform.campaign import (
    FINDING_KIND,
    Capabilities,
    KernelMachine,
    is_pud_program,
    kernel_release,
)
from harness.conform.export_c import ExportError, build, render_c
from harness.conform.kfeatures import KTally
from harness.conform.kshrink import shrink_on_kernel
from harness.conform.observe import GLOBAL_STATE
from harness.program import dump_program
from harness.shrink import NoFinding
from pudthp_ref import spec
from pudthp_ref.spec import Config, Finding, Op, Program

ENGINE = "hypothesis"
STEPS_PER_PROGRAM = 40  # a kernel case's ops: the end-of-case look costs what 15 ops do
SHRINK_SECONDS = 120.0  # shrinking one finding on the kernel


@dataclass
class KernelFinding:
    """One finding of a search: the payload the campaign archives (``kernel_payload``),
    its C reproducer (or why there is none), and where they were written, if anywhere."""

    signature: str
    kind: str
    ops: int
    program: str  # docs/format.md JSON with meta
    c_text: str | None
    c_problem: str | None = None
    path: str | None = None
    c_path: str | None = None
    new: bool = False
    seconds: float = 0.0  # from the search's start until it was archived

    def payload(self) -> dict[str, Any]:
        return {"signature": self.signature, "kind": self.kind, "ops": self.ops,
                "program": self.program, "c": self.c_text, "c_problem": self.c_problem}


@dataclass
class SearchResult:
    programs: int = 0
    ops: int = 0
    findings: list[KernelFinding] = field(default_factory=list)
    counts: KernelCounts = field(default_factory=KernelCounts)
    ktally: KTally = field(default_factory=KTally)
    observer: Observer = field(default_factory=Observer)
    known_hits: set[str] = field(default_factory=set)
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)  # runs Hypothesis ended on its own


def search(kernel: KernelMachine, seed: int, programs: int, *,
           steps: int = STEPS_PER_PROGRAM, strict: bool = False,
           findings_dir: str | None = None, known: tuple[str, ...] = (),
           shrink_seconds: float = SHRINK_SECONDS, deadline: float | None = None,
           stop_requested: Callable[[], bool] | None = None,
           on_finding: Callable[[KernelFinding], None] | None = None,
           observer: Observer | None = None, ktally: KTally | None = None,
           max_findings: int | None = None) -> SearchResult:
    """Run ``programs`` cases of the kernel machine on ``kernel`` (entered) from ``seed``
    (module docstring); stop early at ``deadline`` (``time.monotonic()``), when
    ``stop_requested()``, or after ``max_findings`` findings.  Findings are shrunk
    (``shrink_seconds`` each; 0: not), archived to ``findings_dir`` with their C file when
    given, and handed to ``on_finding``."""
    pin_constant_pool()
    t0 = time.monotonic()
    obs = observer or Observer(known=set(known), deadline=deadline,
                               stop_requested=stop_requested)
    out = SearchResult(observer=obs, ktally=ktally or KTally())
    machine = make_kernel_machine(kernel, obs, strict, out.ktally, out.counts)
    ops_before = kernel.ops
    run = 0
    while obs.programs < programs and not obs.should_stop():
        base = fuzz_settings(programs - obs.programs, steps)
        hsettings = settings(base, phases=(Phase.generate,))
        try:
            run_state_machine_as_test(hypothesis.seed(run_seed(seed, run))(machine),
                                      settings=hsettings)
        except CaseFound as e:
            found = _finish(kernel, e.finding, e.program, seed, run, shrink_seconds,
                            strict, findings_dir, t0)
            if found is None:  # another process's doing: noise, not a finding
                out.counts.noise += 1
                run += 1
                obs.new_run()
                continue
            obs.known.add(found.signature)
            out.findings.append(found)
            if on_finding is not None:
                on_finding(found)
            if max_findings is not None and len(out.findings) >= max_findings:
                break
        except StopFuzzing:
            break
        except Exception as e:  # Hypothesis' own complaint, as engine_hypothesis.hunt takes it
            if obs.stopped:
                break  # a case cut short at the deadline looks like flaky generation
            text = str(e).splitlines()[0] if str(e) else ""
            out.problems.append(f"{type(e).__name__}: {text}")
        run += 1
        obs.new_run()
        if run > programs:  # every run ran at least one case
            break
    out.programs = obs.programs
    out.ops = kernel.ops - ops_before
    out.known_hits = set(obs.known_hits)
    out.seconds = time.monotonic() - t0
    return out


def _finish(kernel: KernelMachine, finding: Finding, program: Program, seed: int, run: int,
            shrink_seconds: float, strict: bool, findings_dir: str | None,
            t0: float) -> KernelFinding | None:
    """The finding shrunk and archived; None when only a machine-wide gauge differed and
    the program run again from scratch no longer shows it (another process's THPs came
    and went during the runs that confirmed it: a busy machine's noise)."""
    shrunk, how = program, "none"
    if shrink_seconds > 0:
        try:
            r = shrink_on_kernel(kernel, program, finding.signature, strict=strict,
                                 deadline=time.monotonic() + shrink_seconds)
            shrunk, finding, how = r.program, r.finding, f"kernel ({r.runs} runs)"
        except NoFinding:
            if gauge_only(finding):
                return None
            how = "none (the kernel no longer showed it from scratch)"
    found = kernel_payload(shrunk, finding, seed, run, how)
    if findings_dir is not None:
        archive_kernel_finding(findings_dir, found)
    found.seconds = time.monotonic() - t0
    return found


def gauge_only(finding: Finding) -> bool:
    """A disagreement in a machine-wide gauge alone (``observe.GLOBAL_STATE``), which any
    process's THPs move."""
    return finding.kind == FINDING_KIND and \
        json.loads(finding.detail)["observable"] in GLOBAL_STATE


def kernel_payload(program: Program, finding: Finding, seed: int, run: int,
                   shrunk: str) -> KernelFinding:
    """A finding as the campaign archives it: the program with its meta, and its C file."""
    meta: dict[str, Any] = {
        "signature": finding.signature,
        "engine": ENGINE,
        "impl": "kernel",
        "seed": seed,
        "run": run,
        "config": program.config.to_json(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "kind": finding.kind,
        "message": finding.message,
        "op_index": finding.op_index,
        "kernel_release": kernel_release(),
        "shrunk": shrunk,
    }
    if finding.kind == FINDING_KIND:
        d = json.loads(finding.detail)
        meta.update(observable=d["observable"], kernel_value=d["kernel"],
                    model_value=d["model"])
    named = Program(program.config, program.ops, meta)
    text = dump_program(named)
    c_text: str | None = None
    problem: str | None = None
    try:
        c_text = render_c(build(named, is_pud_program(program.config), finding.signature))
    except ExportError as e:
        problem = str(e)
    return KernelFinding(finding.signature, finding.kind, len(program.ops), text, c_text,
                         problem)


def archive_kernel_finding(directory: str, found: KernelFinding) -> None:
    """Archive the finding's program (``fuzz.archive.archive``) and its C file beside it as
    ``<name>.c`` (written once, as atomically as the program)."""
    path, new = archive(directory, found.signature, found.program)
    found.path, found.new = path, new
    if found.c_text is not None:
        c_path = path.removesuffix(".json") + ".c"
        if new or not os.path.exists(c_path):
            write_beside(c_path, found.c_text)
        found.c_path = c_path


class KernelHunt(Hunt):
    """The atheris target's policy in a kernel campaign: what the bytes decode to, made a
    program this machine runs as the kernel machine's are (``fuzz.kmachine``): x86_64,
    ``pud_enabled`` one the kernel has (else never), the machine's nodes, swap off or
    ``SWAP_PAGES``; every address folded into the working region (``REGION_PMDS`` PMD
    ranges, two PUD ranges when PUD THP is on; a PMD boundary or a page either side of one
    stays that), every length cut to the region and a PMD range more, and the ops the
    machine cannot express left out."""

    def __init__(self, caps: Capabilities, max_ops: int | None = None) -> None:
        super().__init__({}, max_ops)
        self.caps = caps

    def adjust(self, cfg: Config) -> Config:
        return Config(geometry=spec.GEOMETRIES["x86_64"], thp_enabled=cfg.thp_enabled,
                      pmd_enabled=cfg.pmd_enabled,
                      pud_enabled=(cfg.pud_enabled if cfg.pud_enabled in self.caps.pud_choices
                                   else "never"),
                      use_zero_page=cfg.use_zero_page, shrink_underused=cfg.shrink_underused,
                      nodes=self.caps.nodes,
                      swap_pages=SWAP_PAGES if cfg.swap_capacity else 0)

    def program(self, data: bytes) -> Program:
        p = super().program(data)
        g = p.config.geom
        region = 2 * g.pud_nr if p.config.pud_enabled != "never" else REGION_PMDS * g.pmd_nr
        ops = tuple(fold(op, region, g.pmd_nr, self.caps.nodes) for op in p.ops
                    if op.KIND in self.caps.ops and expressible(op))
        return Program(p.config, ops, p.meta)


def fold(op: Op, region: int, pmd_nr: int, nodes: int) -> Op:
    """``op`` with its address in ``[0, region)`` (folded: the offset within a PMD range is
    kept) and its length at most ``region + pmd_nr``; a node the config has."""
    changes: dict[str, int] = {}
    for name in ("start", "addr"):
        if hasattr(op, name):
            changes[name] = getattr(op, name) % region
    if isinstance(op, spec.Mmap | spec.Munmap | spec.Mprotect | spec.Madvise | spec.Migrate):
        changes["npages"] = max(1, min(op.npages, region + pmd_nr))
    if isinstance(op, spec.Migrate):
        changes["node"] = op.node % nodes
    if not changes:
        return op
    out: Op = replace(op, **changes)  # type: ignore[arg-type]
    return out
