"""``PudthpMachine`` against the live kernel (``pudthp fuzz --impl kernel``, issue 22): every
op of a test case runs on the kernel and on the reference (``harness.conform.campaign``'s
``ProgramRun``, through ``KernelStepper``), compared cheaply after each op and fully at the
end of the case.

What changes from the model campaigns:

- the config: x86_64 geometry, ``pud_enabled`` never unless the kernel has PUD THP, one
  NUMA node unless it has two; THP sizes, the zero page and the underused shrinker drawn as
  ``pudthp conform --random`` draws them; swap off, or ``SWAP_PAGES`` pages (the
  campaign's zram device keeps one size: switching it on and off is cheap, resizing not);
- the working region: ``REGION_PMDS`` PMD ranges (every page of it is looked at at the
  end of each case), and "PUD" places and lengths of the machine scaled to a quarter of it
  (``big``), unless the case turns PUD THP on (then two PUD ranges);
- no op the machine cannot express: no ``fail_alloc``, ``migrate`` only with two nodes
  (after a fork, a ``pageout`` instead), ``split_folio`` only where debugfs can be written,
  no address past the address space;
- a finding is a confirmed disagreement (``campaign.Verdict``), raised as
  ``DisagreementFinding``; a disagreement ``KNOWN`` explains ends the case quietly and is
  counted (``KernelCounts``), a finding only with ``STRICT``;
- besides the model-state features, every case's kernel-observation features
  (``harness.conform.kfeatures``) go to ``KTALLY`` and, as ``target``/``event``, to
  Hypothesis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from hypothesis import event, target
from hypothesis import strategies as st
from hypothesis.stateful import initialize, precondition, rule

from fuzz.machine import (
    AFTER_FORK_OPS,
    MAX_MMS,
    FindingError,
    Observer,
    Place,
    PudthpMachine,
    Range,
    Size,
    _bucket,
    cuts,
    length_of,
    place,
    places,
)
from harness.conform.campaign import Capabilities, KernelMachine, ProgramRun, Verdict
from harness.conform.compare import op_gap
from harness.conform.kfeatures import KFeatures, KTally
from harness.coverage import Coverage, Tally
from harness.program import config_delta
from pudthp_ref import spec
from pudthp_ref.spec import Config, Finding, Op, Program, Result

X86_64 = spec.GEOMETRIES["x86_64"]
REGION_PMDS = 4
SWAP_PAGES = 4 * REGION_PMDS * X86_64  # four times the region, as conform --random's


class CaseFound(BaseException):
    """A case of the kernel machine ended in a finding (recorded in the observer): leave
    Hypothesis at once.  A BaseException, so Hypothesis neither shrinks nor replays the
    case (each replay is a run on the kernel, and a kernel finding is confirmed by runs
    from scratch already); the campaign shrinks it on the kernel."""

    def __init__(self, finding: Finding, program: Program) -> None:
        super().__init__(finding.signature)
        self.finding = finding
        self.program = program


@dataclass
class KernelCounts:
    """What a kernel campaign's cases met besides findings: the ``KNOWN`` disagreements by
    name, cases whose cheap look differed but was not repeated (noise), and runs."""

    known: dict[str, int] = field(default_factory=dict)
    noise: int = 0
    runs: int = 0

    def add(self, v: Verdict) -> None:
        self.runs += v.runs
        if v.known is not None:
            self.known[v.known] = self.known.get(v.known, 0) + 1
        elif v.noise and v.disagreement is None and v.runs > 1:
            self.noise += 1

    def merge(self, other: KernelCounts) -> None:
        for name, n in other.known.items():
            self.known[name] = self.known.get(name, 0) + n
        self.noise += other.noise
        self.runs += other.runs

    def to_json(self) -> dict[str, Any]:
        return {"known": dict(self.known), "noise": self.noise, "runs": self.runs}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> KernelCounts:
        return cls({str(k): int(v) for k, v in dict(raw.get("known", {})).items()},
                   int(raw.get("noise", 0)), int(raw.get("runs", 0)))


class KernelStepper:
    """What ``PudthpMachine`` asks of ``harness.runner.Stepper``, for one case on the
    kernel: ``step(op)`` (None once the case is over), ``finding``, ``program()``,
    ``finish()``; ``done`` once the verdict is in."""

    def __init__(self, kernel: KernelMachine, cfg: Config, coverage: Coverage,
                 features: KFeatures, counts: KernelCounts, strict: bool) -> None:
        self.run: ProgramRun = kernel.stepper(cfg, features, coverage)
        self.cfg = self.run.cfg
        self.counts = counts
        self.strict = strict
        self.finding: Finding | None = None
        self.verdict: Verdict | None = None
        self.model: object = self.run.model.model  # the reference (Stepper.model)

    @property
    def done(self) -> bool:
        return self.verdict is not None

    def step(self, op: Op) -> Result | None:
        if self.done:
            return None
        result = self.run.step(op)
        if result is None and self.run.ended:
            self._verdict()
        return result

    def program(self) -> Program:
        return self.run.program()

    def _verdict(self) -> Verdict:
        if self.verdict is None:
            self.verdict = self.run.finish()
            self.counts.add(self.verdict)
            self.finding = self.verdict.finding(self.strict)
        return self.verdict

    def finish(self) -> KernelStepper:
        """The verdict of the whole case (a report with ``finding``)."""
        self._verdict()
        return self

    def close(self) -> None:
        self.run.close()


def kernel_configs(caps: Capabilities) -> st.SearchStrategy[dict[str, Any]]:
    """Program configs (docs/format.md spelling) a campaign on this machine runs."""

    @st.composite
    def draw(draw: st.DrawFn) -> dict[str, Any]:
        cfg = Config(
            geometry=X86_64,
            thp_enabled=draw(st.sampled_from(("always", "always", "madvise", "never"))),
            pmd_enabled=draw(st.sampled_from(("inherit", "inherit", "always", "madvise",
                                              "never"))),
            pud_enabled=draw(st.sampled_from(caps.pud_choices)),
            use_zero_page=draw(st.sampled_from((True, True, False))),
            shrink_underused=draw(st.sampled_from((True, True, False))),
            nodes=caps.nodes,
            swap_pages=draw(st.sampled_from((SWAP_PAGES, SWAP_PAGES, 0))),
        )
        out = config_delta(cfg)
        out["pud_enabled"] = cfg.pud_enabled  # always spelled: conform runs it as is
        return out

    return draw()


def expressible(op: Op) -> bool:
    """Whether the live comparison runs ``op`` today (``compare.op_gap``)."""
    return op_gap(op) is None


class KernelPudthpMachine(PudthpMachine):
    """``PudthpMachine`` on the live kernel (the module docstring).  Class attributes, set
    by ``make_kernel_machine``: ``KERNEL`` (the campaign's ``KernelMachine``), ``CAPS``,
    ``KTALLY`` (kernel-observation features), ``COUNTS``, ``STRICT``."""

    KERNEL: ClassVar[KernelMachine]
    CAPS: ClassVar[Capabilities]
    KTALLY: ClassVar[KTally] = KTally()
    COUNTS: ClassVar[KernelCounts] = KernelCounts()
    STRICT: ClassVar[bool] = False
    IMPL: ClassVar[str] = "kernel"

    def __init__(self) -> None:
        super().__init__()
        self.kfeatures = KFeatures()
        self.big = REGION_PMDS // 2 * X86_64  # the machine's "PUD" unit here

    @initialize(target=PudthpMachine.ranges, cfg=st.runner().flatmap(lambda m: m.CONFIGS),
                premap=st.integers(0, 3))
    def setup(self, cfg: dict[str, Any], premap: int) -> Any:
        """``PudthpMachine.setup`` with no fast-path draw: the kernel has no fast side, and
        a draw would only shift every later choice of a seeded search."""
        return PudthpMachine.setup(self, cfg, premap, 0)

    def working_region(self) -> int:
        """``REGION_PMDS`` PMD ranges, two PUD ranges when the case turns PUD THP on; the
        machine's "PUD" places and lengths are scaled to half of it (``big``)."""
        if self.cfg.pud_enabled != "never":
            self.big = self.g.pud_nr
            return 2 * self.g.pud_nr
        return REGION_PMDS * self.g.pmd_nr

    def make_stepper(self, fast_paths: str) -> Any:
        """The case's ops on the kernel and the reference (``KernelStepper``; no fast side,
        so ``fast_paths`` means nothing here)."""
        return KernelStepper(self.KERNEL, self.cfg, self.coverage, self.kfeatures,
                             self.COUNTS, self.STRICT)

    # ---- places and lengths inside the region --------------------------------------------

    def addr(self, at: int | Place) -> int:
        kind, index, delta = place(at) if isinstance(at, int) else at
        if kind == "pud":
            return max(0, index % max(1, self.region // self.big) * self.big + delta)
        if kind == "beyond":  # the live kernel's address space has no such end
            kind = "page"
        return super().addr((kind, index, delta))

    def length(self, start: int, size: int | Size) -> int:
        kind, count, delta = length_of(size) if isinstance(size, int) else size
        if kind == "pud":
            n = max(1, count * self.big + delta)
        elif kind == "to_pud":
            n = max(1, self.big - start % self.big + delta)
        else:
            n = super().length(start, (kind, count, delta))
        return max(1, min(n, self.g.space - start))

    def cut(self, r: Range, how: Any) -> Range:
        start, n = super().cut(r, how)
        start = min(max(0, start), self.g.space - 1)
        return start, max(1, min(n, self.g.space - start))

    # ---- running an op on both -----------------------------------------------------------

    def _run(self, op: Op) -> Result | None:
        if not expressible(op):
            return None  # the rule draws it for the models; the kernel side cannot run it
        result = super()._run(op)
        stepper = self.stepper
        if isinstance(stepper, KernelStepper) and stepper.done:
            self.idle = True  # the verdict is in: the states may differ from here
        return result

    def _found(self, finding: Finding) -> None:
        """A finding of the case: as ``PudthpMachine`` (a known signature idles the case),
        but leaving Hypothesis at once (``CaseFound``)."""
        try:
            super()._found(finding)
        except FindingError as e:
            raise CaseFound(e.finding, e.program) from None

    # ---- what the machine cannot express ---------------------------------------------------

    @precondition(lambda self: "migrate" in self.CAPS.ops)
    @rule(mm=PudthpMachine.mms, r=PudthpMachine.ranges, how=cuts, node=st.integers(0, 1))
    def migrate(self, mm: int, r: Range, how: int, node: int) -> None:
        start, n = self.cut(r, how)
        self._run(spec.Migrate(mm, start, n, 1 - node))

    @precondition(lambda self: "split_folio" in self.CAPS.ops)
    @rule(mm=PudthpMachine.mms, at=places)
    def split_folio(self, mm: int, at: int) -> None:
        self._run(spec.SplitFolio(mm, self.addr(at)))

    @rule(event=st.integers(0, 1))
    def shrink_deferred_or_fail_alloc(self, event: int) -> None:
        """The deferred split shrinker (``drop_caches``) half the time, as in
        ``PudthpMachine``; no allocation failure the other half (the kernel has no such
        injection): the step does nothing."""
        if event == 0:
            self._run(spec.ShrinkDeferred())

    @precondition(lambda self: len(self.live) < MAX_MMS)
    @rule(target=PudthpMachine.mms, mm=PudthpMachine.mms, r=PudthpMachine.ranges,
          how=cuts, what=st.integers(0, len(AFTER_FORK_OPS) - 1),
          around_write=st.booleans())
    def after_fork(self, mm: int, r: Range, how: int, what: int, around_write: bool) -> Any:
        if AFTER_FORK_OPS[what] == "migrate" and "migrate" not in self.CAPS.ops:
            what = AFTER_FORK_OPS.index("pageout")
        return super().after_fork(mm, r, how, what, around_write)

    # ---- end of a case ---------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            super().teardown()
        finally:
            stepper = self.stepper
            if isinstance(stepper, KernelStepper):
                stepper.close()

    def _count_features(self) -> None:
        super()._count_features()
        tally, feats = self.KTALLY, self.kfeatures
        seen = tally.programs_hit
        hit = [i for i, n in enumerate(feats.hits) if n]
        event(f"kernel features hit: {_bucket(len(hit))}")
        target(sum(1.0 / (1 + seen[i]) for i in hit), label="rare kernel features")
        tally.add_program(feats.hits, feats.ops)
        feats.reset()


def make_kernel_machine(kernel: KernelMachine, observer: Observer | None = None,
                        strict: bool = False, ktally: KTally | None = None,
                        counts: KernelCounts | None = None) -> type[KernelPudthpMachine]:
    """A ``KernelPudthpMachine`` on ``kernel`` (entered), reporting to ``observer``."""
    assert kernel.caps is not None
    return type(
        "KernelPudthpMachine",
        (KernelPudthpMachine,),
        {
            "KERNEL": kernel,
            "CAPS": kernel.caps,
            "CONFIGS": kernel_configs(kernel.caps),
            "IMPL": "kernel",
            "CHECK": False,
            "OBSERVER": observer,
            "TALLY": observer.tally if observer is not None else Tally(),
            "KTALLY": ktally if ktally is not None else KTally(),
            "COUNTS": counts if counts is not None else KernelCounts(),
            "STRICT": strict,
            "__module__": __name__,
        },
    )
