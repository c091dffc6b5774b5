"""The atheris (libFuzzer) target: fuzzer bytes -> a program -> the lockstep harness.

What it hunts: any finding of ``harness.runner.run_program`` on the program the bytes decode
to (``fuzz.encoding``, config policy in ``fuzz.mutator.Hunt``): a broken invariant of
either implementation, a model bug (detected corruption or a crash of the model), an oracle
mismatch on a read, and with ``--impl=both`` (the default) a divergence between the reference
and the fast implementation in a result, the per-op summary or the final snapshot.  A finding
is raised as ``PudthpFinding`` whose first line carries the signature, which libFuzzer treats
as a crash and saves the input as ``crash-<sha1>``; the campaign (``fuzz/engine_atheris.py``)
decodes, shrinks and archives it.

What it filters out: inputs are never rejected (the decoder is total), but
- signatures already known (``--known=FILE``, one per line, re-read when the file changes:
  the campaign adds every finding it archives) are not raised again, so a campaign keeps
  looking for new bugs; the first hit of each prints ``pudthp: known finding SIGNATURE``;
- unless fixed with ``--config``, the known-bad ``list_head`` deposit design and the slow
  geometries (``Hunt``): a campaign on the correct designs at tiny and small geometry.

Coverage: ``pudthp_ref`` is imported under ``atheris.instrument_imports`` so its branches
guide the search, except its checkers, snapshot and vocabulary (``UNINSTRUMENTED``): they walk
the whole state after every op, so instrumented they cost the reference 4x its speed, and
their branches say little about what the model did.  The harness and the decoder are not
instrumented: their branches tell apart finding kinds and byte encodings, not what the
model did, and tracing their comparisons cost a quarter of the target's time.
``pudthp_fast`` is numpy, whose work happens in C; it is instrumented only with
``--instrument-fast``.  On top of the branches, every model-state feature of the catalogue
(``harness.coverage``) has a counter of its own (``atheris._reserve_counter``), bumped once
per hit of the feature by the program, up to ``FEATURE_COUNT_CAP``: libFuzzer keeps an input
that hits a feature no input hit before, or hits one more often than any did (its counts go
in buckets 1, 2, 3, 4-7, 8-15, 16+), whatever branches it took.  Every second, and at once
when a feature is hit for the first time, the target prints ``pudthp: execs N ops M`` and
``pudthp: features JSON`` (the ``harness.coverage.Tally`` of every program it ran) for the
campaign's table.

Limits: a program is cut to ``--max-ops`` ops (``Hunt``); one that runs out of memory
(``harness.limits``) is skipped with a ``pudthp: limit`` line, never raised as a finding;
libFuzzer's ``-timeout`` and ``-rss_limit_mb`` end the process on a program over the
campaign's time or memory cap, which the campaign counts as a limit, not a finding.  With
``--parent-pid`` the process dies with the campaign (``PR_SET_PDEATHSIG``).

Usage (the campaign runs it; by hand for debugging)::

    python -m fuzz.target [--impl=ref|both|kernel] [--strict] [--config-json=JSON]
        [--known=FILE]
        [--max-ops=N] [--parent-pid=PID] [--instrument-fast]
        [libFuzzer flags and corpus directories]
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

import atheris  # type: ignore[import-untyped]

_INSTRUMENT_FAST = "--instrument-fast" in sys.argv
UNINSTRUMENTED: tuple[str, ...] = (
    "pudthp_ref.invariants",
    "pudthp_ref.invariants_deposit",
    "pudthp_ref.invariants_folios",
    "pudthp_ref.invariants_pgtable",
    "pudthp_ref.snapshot",
    "pudthp_ref.spec",
)
FEATURE_COUNT_CAP = 16
# Instrumentation happens at import: these must be the first imports of the packages in
# this process (the runner imports the implementations lazily, so import them here).
with atheris.instrument_imports(
    include=["pudthp_ref", *(["pudthp_fast"] if _INSTRUMENT_FAST else [])],
    exclude=list(UNINSTRUMENTED),
):
    import fuzz.encoding  # noqa: F401
    import pudthp_ref.model  # noqa: F401

    if _INSTRUMENT_FAST:
        import pudthp_fast.model  # noqa: F401

# after the instrumented imports
from fuzz.mutator import Hunt, crossover, mutate  # noqa: E402
from harness.coverage import N_FEATURES, Coverage, Tally  # noqa: E402
from harness.limits import LimitExceeded  # noqa: E402
from harness.runner import run_program  # noqa: E402
from pudthp_ref.spec import Finding, Program  # noqa: E402

STATUS_SECONDS = 1.0  # how often the target prints its execution count
KNOWN_POLL_SECONDS = 0.5


class PudthpFinding(Exception):
    """A finding of the harness; ``str()`` starts with ``pudthp finding: SIGNATURE``."""

    def __init__(self, signature: str, kind: str, op_index: int, message: str) -> None:
        super().__init__(f"pudthp finding: {signature}\n  {kind} at op {op_index}: {message}")
        self.signature = signature


class Target:
    """The target's state: the options, the known signatures and the execution count."""

    def __init__(self, impl: str, hunt: Hunt, known_file: str | None) -> None:
        self.impl = impl
        self.hunt = hunt
        self.known_file = known_file
        self.known: set[str] = set()
        self.known_stamp: float | None = None
        self.reported: set[str] = set()
        self.execs = 0
        self.next_status = time.monotonic() + STATUS_SECONDS
        self.next_poll = 0.0
        self.coverage = Coverage()
        self.tally = Tally()
        self.counters = [atheris._reserve_counter() for _ in range(N_FEATURES)]

    def status(self) -> None:
        """The execution and op counts and the feature tally, for the campaign."""
        print(f"pudthp: execs {self.execs} ops {self.tally.ops}", file=sys.stderr)
        print(f"pudthp: features {json.dumps(self.tally.to_json(), separators=(',', ':'))}",
              file=sys.stderr, flush=True)

    def count_features(self) -> None:
        """This program's features: into the tally, and to libFuzzer as counters."""
        cov = self.coverage
        tally = self.tally
        new = False
        trace = atheris._trace_branch
        for i, n in enumerate(cov.hits):
            if n:
                new = new or not tally.hits[i]
                for _ in range(min(n, FEATURE_COUNT_CAP)):
                    trace(self.counters[i])
        tally.add_program(cov.hits, cov.ops)
        tally.unclassified += cov.unclassified
        cov.unclassified = 0
        if new:
            self.status()

    def reload_known(self, now: float) -> None:
        self.next_poll = now + KNOWN_POLL_SECONDS
        if self.known_file is None:
            return
        try:
            stamp = os.stat(self.known_file).st_mtime
            if stamp == self.known_stamp:
                return
            with open(self.known_file, encoding="utf-8") as f:
                self.known = {line.strip() for line in f if line.strip()}
            self.known_stamp = stamp
        except OSError:
            return

    def test_one_input(self, data: bytes) -> None:
        now = time.monotonic()
        self.execs += 1
        if now >= self.next_status:
            self.next_status = now + STATUS_SECONDS
            self.status()
        if now >= self.next_poll:
            self.reload_known(now)
        program = self.hunt.program(data)
        self.coverage.reset()
        try:
            finding = self.run(program)
        except LimitExceeded as e:  # not a finding: skip the input
            print(f"pudthp: limit {e.kind}: {e} ({len(program.ops)} ops)", file=sys.stderr,
                  flush=True)
            return
        self.count_features()
        if finding is None:
            return
        if finding.signature in self.known:
            if finding.signature not in self.reported:
                self.reported.add(finding.signature)
                print(f"pudthp: known finding {finding.signature}", file=sys.stderr, flush=True)
            return
        first = finding.message.splitlines()[0] if finding.message else ""
        self.status()  # libFuzzer exits on the finding: the campaign gets the last counts
        raise PudthpFinding(finding.signature, finding.kind, finding.op_index, first)

    def run(self, program: Program) -> Finding | None:
        """The program's finding on the target's implementation, its features counted."""
        return run_program(program, self.impl, coverage=self.coverage).finding

    def mutate(self, data: bytes, max_size: int, seed: int) -> bytes:
        try:
            return mutate(self.hunt, data, max_size, seed, atheris.Mutate)
        except Exception as e:  # a bug here must not end the campaign as a "finding"
            print(f"pudthp: mutator error {type(e).__name__}: {e}", file=sys.stderr)
            return bytes(atheris.Mutate(data, max_size))

    def crossover(self, data1: bytes, data2: bytes, max_size: int, seed: int) -> bytes:
        try:
            return crossover(self.hunt, data1, data2, max_size, seed)
        except Exception as e:
            print(f"pudthp: crossover error {type(e).__name__}: {e}", file=sys.stderr)
            return data1[:max_size]


class KernelTarget(Target):
    """``--impl=kernel`` (``pudthp fuzz --impl kernel --engine atheris``): each input's
    program (``fuzz.kernel.KernelHunt``) runs on the live kernel and the reference as a
    kernel campaign runs it (``KernelMachine.run``); an unexplained disagreement (any, with
    ``--strict``) is the finding.  The kernel is held for the process's life; libFuzzer
    ends the process on a finding without restoring it, which the campaign does from the
    on-disk record.  Besides the model-state features, every kernel-observation feature
    (``harness.conform.kfeatures``) has a counter of its own, bumped as the model's are;
    the status line's ops are the ops run on the kernel, and ``pudthp: kfeatures JSON``
    is their tally."""

    def __init__(self, machine: Any, strict: bool, known_file: str | None,
                 max_ops: int | None) -> None:
        from fuzz.kernel import KernelHunt
        from harness.conform.kfeatures import N_KFEATURES, KFeatures, KTally

        super().__init__("kernel", KernelHunt(machine.caps, max_ops), known_file)
        self.machine = machine
        self.strict = strict
        self.kfeatures = KFeatures()
        self.ktally = KTally()
        self.kcounters = [atheris._reserve_counter() for _ in range(N_KFEATURES)]

    def status(self) -> None:
        print(f"pudthp: execs {self.execs} ops {self.machine.ops}", file=sys.stderr)
        print(f"pudthp: features {json.dumps(self.tally.to_json(), separators=(',', ':'))}",
              file=sys.stderr)
        print(f"pudthp: kfeatures "
              f"{json.dumps(self.ktally.to_json(), separators=(',', ':'))}",
              file=sys.stderr, flush=True)

    def run(self, program: Program) -> Finding | None:
        self.kfeatures.reset()
        finding = self.machine.run(program, self.kfeatures, self.coverage).finding(
            self.strict)
        trace = atheris._trace_branch
        for i, n in enumerate(self.kfeatures.hits):
            for _ in range(min(n, FEATURE_COUNT_CAP)):
                trace(self.kcounters[i])
        self.ktally.add_program(self.kfeatures.hits, self.kfeatures.ops)
        return finding


def parse_args(argv: list[str]) -> tuple[Target, list[str]]:
    """The target's own ``--name=value`` options out of ``argv``; the rest is libFuzzer's.
    With ``--impl=kernel`` the live kernel is entered here, for the process's life."""
    impl, fixed, known, max_ops, strict = "both", {}, None, None, False
    rest = [argv[0]]
    for arg in argv[1:]:
        name, _, value = arg.partition("=")
        if name == "--impl":
            impl = value
        elif name == "--strict":
            strict = True
        elif name == "--config-json":
            fixed = json.loads(value)
        elif name == "--known":
            known = value
        elif name == "--max-ops":
            max_ops = int(value)
        elif name == "--parent-pid":
            die_with_parent(int(value))
        elif name != "--instrument-fast":
            rest.append(arg)
    if impl == "kernel":
        from harness.conform.campaign import KernelMachine

        machine = KernelMachine()
        machine.__enter__()  # left by libFuzzer's exit; its record restores what it changed
        return KernelTarget(machine, strict, known, max_ops), rest
    return Target(impl, Hunt(fixed, max_ops), known), rest


PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """Be killed when the campaign process ``parent`` dies (at once if it is gone already):
    a killed campaign leaves no worker running on."""
    import ctypes
    import signal

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


def main() -> None:
    target, libfuzzer_argv = parse_args(sys.argv)
    atheris.Setup(
        libfuzzer_argv,
        target.test_one_input,
        custom_mutator=target.mutate,
        custom_crossover=target.crossover,
    )
    atheris.Fuzz()


if __name__ == "__main__":
    main()
