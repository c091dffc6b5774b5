"""The Hypothesis stateful engine: ``PudthpMachine``, one rule per FORMAT.md op kind.

Each rule builds one op and runs it through ``harness.runner.Stepper``, the per-op half of
``run_program``: ``apply`` on the implementation (``both``: ``Lockstep``, which compares the
results and a cheap summary of ref and fast after every op), ``check_invariants()`` when
``check``, and the oracle.  ``teardown`` does ``run_program``'s end-of-program step: the full
snapshot comparison, locating a difference only it shows by replay.  So a program that fails
here fails the same way under ``pudthp run --impl both``.

A finding is raised as a ``FindingError``: one subclass per finding kind, and below it one
class per signature, so Hypothesis (which tells bugs apart by exception type and raising
line) shrinks every distinct signature on its own and never trades one for another.  The
message carries the program so far as FORMAT.md JSON, ready for ``pudthp run``.

Data flows through three bundles: ``mms`` (live mm ids; ``exit`` consumes one), ``ranges``
(``(start, npages)`` ranges an mmap mapped; ``munmap`` consumes one and puts back what is
left of it) and ``pins`` (pin ids; ``unpin`` consumes one).  Addresses are drawn as
geometry-free "places" (a PUD or PMD boundary with one page either side, any page of the
working region, a page of a range an mmap mapped, any page of the address space, just
beyond it) and resolved against the
geometry drawn for the test case; lengths likewise (whole PUDs or PMDs +- 1 page, a few pages,
up to the next PUD boundary).  Range ops cut their range from a mapped one: the whole region,
its head or tail, a piece inside it, a piece straddling a PMD or PUD boundary inside it, or
a fresh range.

Swarm testing is Hypothesis' own: every test case draws a random subset of the rules to
enable (``RuleStrategy.enabled_rules_strategy``, a ``FeatureStrategy`` over the rule names,
on by default since Hypothesis 4.x), so long runs of a few ops are common.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NoReturn

from hypothesis import event, reject, target
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    multiple,
    precondition,
    rule,
)

from harness.limits import Gate, LimitExceeded, memory_error
from harness.lockstep import Lockstep
from harness.program import config_delta, dump_program
from harness.runner import Stepper
from pudthp_ref import spec
from pudthp_ref.spec import Config, Finding, Op, Program, Result

# --------------------------------------------------------------------------------------
# Findings as exceptions
# --------------------------------------------------------------------------------------

MAX_DETAIL = 3000


class FindingError(AssertionError):
    """A finding of the machine: ``finding`` and the ``program`` that produced it."""

    kind: ClassVar[str] = "finding"
    signature: ClassVar[str] = ""

    def __init__(self, finding: Finding, program: Program) -> None:
        self.finding = finding
        self.program = program
        super().__init__(describe_failure(finding, program))


class InvariantFinding(FindingError):
    kind = "invariant"


class ModelBugFinding(FindingError):
    kind = "model_bug"


class OracleFinding(FindingError):
    kind = "oracle"


class DivergenceFinding(FindingError):
    kind = "divergence"


FINDING_ERRORS: dict[str, type[FindingError]] = {
    c.kind: c for c in (InvariantFinding, ModelBugFinding, OracleFinding, DivergenceFinding)
}
_BY_SIGNATURE: dict[str, type[FindingError]] = {}


def finding_error(finding: Finding, program: Program) -> FindingError:
    """The exception for ``finding``: a class per signature, under the class of its kind."""
    cls = _BY_SIGNATURE.get(finding.signature)
    if cls is None:
        base = FINDING_ERRORS.get(finding.kind, FindingError)
        cls = type(base.__name__, (base,), {"signature": finding.signature,
                                            "__module__": __name__})
        _BY_SIGNATURE[finding.signature] = cls
    return cls(finding, program)


def describe_failure(finding: Finding, program: Program) -> str:
    """A finding for people: where, what, the state diff, and the replayable program."""
    ops = program.ops
    where = (f"op {finding.op_index} ({spec.op_str(ops[finding.op_index])})"
             if 0 <= finding.op_index < len(ops) else "before the first op")
    detail = finding.detail
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    parts = [f"{finding.signature} at {where}", finding.message]
    if detail:
        parts.append(detail)
    parts.append("program (pudthp-program/1; replay: pudthp run FILE --impl both):")
    parts.append(dump_program(program).rstrip("\n"))
    return "\n".join(parts)


class StopFuzzing(BaseException):
    """The campaign's time is up or it was interrupted: leave Hypothesis at once (a
    BaseException, so Hypothesis does not take it for a failure of the test)."""


# --------------------------------------------------------------------------------------
# What a fuzz campaign hooks into the machine
# --------------------------------------------------------------------------------------

STOP_POLL_STEPS = 64


@dataclass
class Observer:
    """Counters, the smallest failing program per signature, and when to stop.

    ``known`` signatures were reported already: a test case that hits one goes idle (its
    remaining steps do nothing) instead of failing, so Hypothesis looks for something new.
    ``tick`` raises StopFuzzing once ``deadline`` (a ``time.monotonic()`` value) has passed,
    except that a run still shrinking a finding (``pending``) gets ``grace`` seconds more;
    at once when ``stop_requested()`` says so; and when Hypothesis has been shrinking for
    ``shrink_budget`` seconds (``shrink_cut``: long stateful failures shrink slowly, a delta
    debugging pass over the ops finishes the job faster).

    Resource limits are never findings: a test case that hits one (``LimitExceeded``, or a
    ``MemoryError``) is dropped, its model freed, and noted in ``limit_hits``; it is rejected
    (Hypothesis moves on), except after a memory limit, which stops the run
    (``memory_exhausted``: the worker ends and the campaign starts a fresh process).
    ``on_program_start`` is called as each test case starts (a campaign arms its time cap);
    steps run inside ``gate`` (``harness.limits.Gate``), the only place a campaign's limit
    signals are raised.
    """

    known: set[str] = field(default_factory=set)
    deadline: float | None = None
    grace: float = 0.0
    shrink_budget: float | None = None
    stop_requested: Callable[[], bool] | None = None
    on_progress: Callable[[Observer], None] | None = None
    progress_every: float = 0.5
    best: dict[str, tuple[Finding, Program]] = field(default_factory=dict)
    pending: set[str] = field(default_factory=set)
    programs: int = 0
    steps: int = 0
    stopped: bool = False  # tick raised StopFuzzing (Hypothesis may report it as flaky)
    shrink_cut: bool = False  # ... because of the shrink budget
    first_pending_at: float = 0.0
    _last_progress: float = 0.0
    on_program_start: Callable[[], None] | None = None
    gate: Gate = field(default_factory=Gate)
    limit_hits: list[LimitExceeded] = field(default_factory=list)
    memory_exhausted: bool = False

    def program_started(self) -> None:
        pending = self.gate.pending
        if pending is not None and pending.kind == "time":
            self.gate.pending = None  # the time cap of the case before
        if self.on_program_start is not None:
            self.on_program_start()

    def new_run(self) -> None:
        """Forget the pending findings and the stop flags (they were dealt with)."""
        self.pending.clear()
        self.stopped = self.shrink_cut = False

    def tick(self) -> None:
        self.steps += 1
        if self.steps % STOP_POLL_STEPS:
            return
        now = time.monotonic()
        if self.on_progress is not None and now - self._last_progress >= self.progress_every:
            self._last_progress = now
            self.on_progress(self)
        if self.should_stop(now):
            self.stopped = True
            raise StopFuzzing
        if (self.pending and self.shrink_budget is not None
                and now > self.first_pending_at + self.shrink_budget):
            self.stopped = self.shrink_cut = True
            raise StopFuzzing

    def should_stop(self, now: float | None = None) -> bool:
        if self.stop_requested is not None and self.stop_requested():
            return True
        if self.deadline is None:
            return False
        now = time.monotonic() if now is None else now
        if self.pending:
            return now > self.deadline + self.grace
        return now > self.deadline

    def record(self, finding: Finding, program: Program) -> None:
        """Keep the smallest program seen per signature (fewest ops, then shortest JSON)."""
        sig = finding.signature
        if not self.pending:
            self.first_pending_at = time.monotonic()
        self.pending.add(sig)
        old = self.best.get(sig)
        if old is None or program_size(program) < program_size(old[1]):
            self.best[sig] = (finding, program)


def program_size(program: Program) -> tuple[int, int]:
    """Fewest ops first, then the shortest ops JSON."""
    return len(program.ops), len(json.dumps([spec.op_to_json(op) for op in program.ops]))


# --------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------

# Geometry-free "places": (kind, index, delta); resolved by PudthpMachine.addr ("mapped":
# a page of a range an earlier mmap mapped, so faults are common).  The first
# alternative of each sampled_from is what the shrinker moves towards.
PLACE_KINDS = ("pud", "pmd", "mapped", "pud", "pmd", "mapped", "page", "space", "beyond")
places = st.tuples(st.sampled_from(PLACE_KINDS), st.integers(0, 4095),
                   st.sampled_from((0, -1, 1)))
# (kind, count, delta); resolved by PudthpMachine.length
LENGTH_KINDS = ("pud", "pmd", "pages", "to_pud")
lengths = st.tuples(st.sampled_from(LENGTH_KINDS), st.integers(1, 3),
                    st.sampled_from((0, -1, 1)))
CUT_KINDS = ("whole", "head", "tail", "inner", "straddle_pmd", "straddle_pud", "fresh")
cuts = st.tuples(st.sampled_from(CUT_KINDS), places, lengths)
values = st.one_of(st.integers(1, 1000), st.just(0))  # zero-filled pages never swap out

# Correct designs only; the first value of each is the default (MODEL.md section 3).
DRAWN_CHOICES: dict[str, tuple[Any, ...]] = {
    "geometry": (8, 4),
    "thp_enabled": ("always", "always", "madvise", "never"),
    "pmd_enabled": ("inherit", "inherit", "always", "madvise", "never"),
    "pud_enabled": ("always", "always", "inherit", "madvise", "never"),
    "use_zero_page": (True, True, False),
    "deposit": ("lru_next", "llist"),
    "pud_read_fault": ("alloc", "fallback"),
    "pud_wp_reuse": (True, True, False),
    "shrink_underused": (True, True, False),
    "nodes": (2, 2, 1),
    "swap_pages": ("default", "default", "none", "one_pud"),
}


def configs(overrides: dict[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Program ``config`` objects (FORMAT.md spelling, only the keys that differ from the
    defaults) of the correct designs, with the keys of ``overrides`` fixed.  Raises
    ``ConfigError`` for a bad override (``Config.from_json`` validates)."""
    fixed = Config.from_json(dict(overrides or {}))
    keys = set(overrides or {})

    @st.composite
    def draw_config(draw: st.DrawFn) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, choices in DRAWN_CHOICES.items():
            values[key] = (getattr(fixed, key) if key in keys
                           else draw(st.sampled_from(choices)))
        if "swap_pages" not in keys:
            p = values["geometry"]
            values["swap_pages"] = {"default": -1, "none": 0, "one_pud": p * p}[
                values["swap_pages"]]
        return config_delta(Config(**values))

    return draw_config()


# --------------------------------------------------------------------------------------
# Model-state features for event() and target()
# --------------------------------------------------------------------------------------

FEATURES = ("pud_leaves", "pud_splits", "deposited_tables", "partially_mapped", "swap_used")


def model_features(model: Any) -> dict[str, int]:
    """Cheap features of the reference state (``ref``, or the ref side of ``both``): PUD THPs
    alive, PUD splits so far, deposited page tables, partially mapped THPs, swap slots used.
    For another implementation, what its ``summary()`` gives (no deposit count)."""
    ref = model.ref if isinstance(model, Lockstep) else model
    st_ = getattr(ref, "st", None)
    tables = getattr(st_, "tables", None)
    if st_ is not None and isinstance(tables, dict):
        stats = st_.stats
        deposited = sum(1 for t in tables.values() if t.state == "deposited")
        swap_used = len(st_.swap)
    else:
        summary = model.summary()
        stats = summary["stats"]
        deposited = 0
        swap_used = int(summary["swap_used"])
    mthp = stats["mthp"]
    return {  # the node counters count pages, like NR_ANON_THPS
        "pud_leaves": int(stats["node"]["nr_anon_pud_thps"]) // model.cfg.geom.pud_nr,
        "pud_splits": int(stats["vmstat"]["thp_split_pud"]),
        "deposited_tables": deposited,
        "partially_mapped": int(mthp["pud"]["nr_anon_partially_mapped"]
                                + mthp["pmd"]["nr_anon_partially_mapped"]),
        "swap_used": swap_used,
    }


def _bucket(n: int) -> str:
    if n <= 2:
        return str(n)
    if n <= 8:
        return "3-8"
    return "9+"


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------

MAX_MMS = 4
Range = tuple[int, int]


class PudthpMachine(RuleBasedStateMachine):
    """Programs of every FORMAT.md op, run through ``Stepper`` (see the module docstring).

    Class attributes, set by ``make_machine``: ``CONFIG_OVERRIDES`` (config keys fixed for
    every test case, FORMAT.md spelling), ``IMPL`` (``both``, ``ref`` or ``fast``), ``CHECK``
    (``check_invariants()`` after every op), ``OBSERVER`` (a fuzz campaign's hooks).
    """

    CONFIG_OVERRIDES: ClassVar[dict[str, Any]] = {}
    CONFIGS: ClassVar[st.SearchStrategy[dict[str, Any]]] = configs()
    IMPL: ClassVar[str] = "both"
    CHECK: ClassVar[bool] = True
    OBSERVER: ClassVar[Observer | None] = None

    mms: Bundle[int] = Bundle("mms")
    ranges: Bundle[Range] = Bundle("ranges")
    pins: Bundle[int] = Bundle("pins")

    def __init__(self) -> None:
        super().__init__()
        self.stepper: Stepper | None = None
        self.live: set[int] = {0}
        self.idle = False  # a known finding or a stop ended this case: rules do nothing
        self.peak: dict[str, int] = dict.fromkeys(FEATURES, 0)
        self.mapped: list[Range] = []  # ranges mmap mapped, newest last (for "mapped" places)

    # ---- setup -------------------------------------------------------------------------

    @initialize(target=mms)
    def first_mm(self) -> int:
        """mm 0 exists from the start (FORMAT.md)."""
        return 0

    @initialize(target=ranges, cfg=st.runner().flatmap(lambda m: m.CONFIGS),
                premap=st.booleans())
    def setup(self, cfg: dict[str, Any], premap: bool) -> Any:
        """The config of this case; with ``premap`` an mmap of the whole working region."""
        self.cfg = Config.from_json(cfg)
        self.g = self.cfg.geom
        self.region = min(self.g.space, 4 * self.g.pud_nr)
        if self.OBSERVER is not None:
            self.OBSERVER.program_started()
        self.stepper = Stepper(self.cfg, self.IMPL, check=self.CHECK)
        if self.stepper.finding is not None:
            self._found(self.stepper.finding)
        if premap and self._run(spec.Mmap(0, 0, self.region, "rw")) == 0:
            self.mapped.append((0, self.region))
            return (0, self.region)
        return multiple()

    # ---- address, length and range resolution -----------------------------------------

    def addr(self, place: tuple[str, int, int]) -> int:
        kind, index, delta = place
        g = self.g
        if kind == "pud":
            return max(0, index % (self.region // g.pud_nr) * g.pud_nr + delta)
        if kind == "pmd":
            return max(0, index % (self.region // g.pmd_nr) * g.pmd_nr + delta)
        if kind == "mapped" and self.mapped:
            s, n = self.mapped[-1 - index % len(self.mapped)]
            return s + (index // len(self.mapped)) % n
        if kind in ("page", "mapped"):
            return index % self.region
        if kind == "space":
            return index % g.space
        return g.space + index % 4  # beyond the address space

    def length(self, start: int, size: tuple[str, int, int]) -> int:
        kind, count, delta = size
        g = self.g
        if kind == "pud":
            n = count * g.pud_nr + delta
        elif kind == "pmd":
            n = count * g.pmd_nr + delta
        elif kind == "pages":
            n = count
        else:  # up to the next PUD boundary (a whole PUD from a boundary)
            n = g.pud_nr - start % g.pud_nr + delta
        return max(1, n)

    def cut(self, r: Range, how: tuple[str, tuple[str, int, int], tuple[str, int, int]]
            ) -> Range:
        """A range cut from the mapped range ``r``, or a fresh one."""
        kind, place, size = how
        s, n = r
        e = s + n
        if kind == "whole":
            return r
        if kind == "fresh":
            start = self.addr(place)
            return start, self.length(start, size)
        k = min(n, self.length(s, size))
        if kind == "head":
            return s, k
        if kind == "tail":
            return e - k, k
        if kind == "inner":
            start = s + place[1] % n
            return start, max(1, min(k, e - start))
        unit = self.g.pmd_nr if kind == "straddle_pmd" else self.g.pud_nr
        bounds = range((s // unit + 1) * unit, e, unit)  # boundaries strictly inside r
        if not bounds:
            return r
        b = bounds[place[1] % len(bounds)]
        reach = size[1]  # 1..3 pages either side
        lo, hi = max(s, b - reach), min(e, b + reach)
        return lo, hi - lo

    # ---- running one op ----------------------------------------------------------------

    def _run(self, op: Op) -> Result | None:
        """Run ``op`` with every check; its result, or None when the case is idle."""
        if self.idle or self.stepper is None:
            return None
        obs = self.OBSERVER
        if obs is not None:
            try:
                obs.tick()
            except StopFuzzing:
                self.idle = True
                raise
        stepper = self.stepper
        try:
            with obs.gate.open() if obs is not None else contextlib.nullcontext():
                result = stepper.step(op)
        except (LimitExceeded, MemoryError) as e:
            self._limit(e if isinstance(e, LimitExceeded) else memory_error())
        if stepper.model is not None:
            for k, v in model_features(stepper.model).items():
                if v > self.peak[k]:
                    self.peak[k] = v
        if stepper.finding is not None:
            self._found(stepper.finding)
        return result

    def _limit(self, e: LimitExceeded) -> NoReturn:
        """This case hit a resource limit: not a finding (``Observer``)."""
        self.idle = True
        self.stepper = None  # the model goes
        obs = self.OBSERVER
        if obs is None:
            raise e
        obs.limit_hits.append(e)
        if e.kind == "memory":
            obs.memory_exhausted = obs.stopped = True
            raise StopFuzzing from None
        reject()

    def _found(self, finding: Finding) -> None:
        assert self.stepper is not None
        program = self.stepper.program()
        obs = self.OBSERVER
        if obs is not None:
            if finding.signature in obs.known:
                self.idle = True
                return
            obs.record(finding, program)
        self.idle = True
        raise finding_error(finding, program)

    # ---- one rule per FORMAT.md op -----------------------------------------------------

    @rule(target=ranges, mm=mms, at=places, size=lengths,
          prot=st.sampled_from(("rw", "rw", "r", "none")))
    def mmap(self, mm: int, at: tuple[str, int, int], size: tuple[str, int, int], prot: str
             ) -> Any:
        start = self.addr(at)
        n = self.length(start, size)
        if self._run(spec.Mmap(mm, start, n, prot)) == 0:
            self.mapped = [*self.mapped[-7:], (start, n)]
            return (start, n)
        return multiple()

    @rule(target=ranges, mm=mms, r=consumes(ranges), how=cuts)
    def munmap(self, mm: int, r: Range, how: Any) -> Any:
        start, n = self.cut(r, how)
        if self._run(spec.Munmap(mm, start, n)) != 0:
            return multiple(r)
        s, e = r[0], r[0] + r[1]
        left = [(a, b - a) for a, b in ((s, min(e, start)), (max(s, start + n), e)) if b > a]
        return multiple(*left)

    @rule(mm=mms, r=ranges, how=cuts, prot=st.sampled_from(spec.PROTS))
    def mprotect(self, mm: int, r: Range, how: Any, prot: str) -> None:
        start, n = self.cut(r, how)
        self._run(spec.Mprotect(mm, start, n, prot))

    @rule(mm=mms, r=ranges, how=cuts, advice=st.sampled_from(spec.ADVICES))
    def madvise(self, mm: int, r: Range, how: Any, advice: str) -> None:
        start, n = self.cut(r, how)
        self._run(spec.Madvise(mm, start, n, advice))

    @rule(mm=mms, at=places)
    def read(self, mm: int, at: tuple[str, int, int]) -> None:
        self._run(spec.Read(mm, self.addr(at)))

    @rule(mm=mms, at=places, value=values)
    def write(self, mm: int, at: tuple[str, int, int], value: int) -> None:
        self._run(spec.Write(mm, self.addr(at), value))

    @precondition(lambda self: len(self.live) < MAX_MMS)
    @rule(target=mms, mm=mms)
    def fork(self, mm: int) -> Any:
        child = self._run(spec.Fork(mm))
        if isinstance(child, int):
            self.live.add(child)
            return child
        return multiple()

    @precondition(lambda self: len(self.live) > 1)
    @rule(mm=consumes(mms))
    def exit(self, mm: int) -> None:
        self.live.discard(mm)
        self._run(spec.Exit(mm))

    @rule(mm=mms, at=places)
    def split_folio(self, mm: int, at: tuple[str, int, int]) -> None:
        self._run(spec.SplitFolio(mm, self.addr(at)))

    @rule()
    def shrink_deferred(self) -> None:
        self._run(spec.ShrinkDeferred())

    @rule(mm=mms, r=ranges, how=cuts, node=st.integers(0, 2))
    def migrate(self, mm: int, r: Range, how: Any, node: int) -> None:
        start, n = self.cut(r, how)
        self._run(spec.Migrate(mm, start, n, node))

    @rule(target=pins, mm=mms, at=places)
    def pin(self, mm: int, at: tuple[str, int, int]) -> Any:
        pin = self._run(spec.Pin(mm, self.addr(at)))
        return pin if isinstance(pin, int) else multiple()

    @rule(pin=consumes(pins))
    def unpin(self, pin: int) -> None:
        self._run(spec.Unpin(pin))

    @rule(order=st.sampled_from(spec.ALLOC_ORDERS), count=st.integers(0, 2))
    def fail_alloc(self, order: str, count: int) -> None:
        self._run(spec.FailAlloc(order, count))

    # ---- end of a test case ------------------------------------------------------------

    def teardown(self) -> None:
        stepper = self.stepper
        if stepper is None:
            return
        obs = self.OBSERVER
        if obs is not None:
            obs.programs += 1
        peak = self.peak
        event(f"PUD THPs alive (max): {_bucket(peak['pud_leaves'])}")
        event(f"PUD splits: {_bucket(peak['pud_splits'])}")
        event(f"deposited page tables (max): {_bucket(peak['deposited_tables'])}")
        event("partially mapped THPs: " + ("yes" if peak["partially_mapped"] else "no"))
        event("swap in use: " + ("yes" if peak["swap_used"] else "no"))
        target(float(peak["pud_leaves"]), label="PUD THPs alive (max)")
        target(float(peak["pud_splits"]), label="PUD splits")
        target(float(peak["deposited_tables"]), label="deposited page tables (max)")
        target(float(peak["partially_mapped"]), label="partially mapped THPs (max)")
        target(float(peak["swap_used"]), label="swap slots in use (max)")
        if self.idle or stepper.finding is not None or stepper.model is None:
            return
        report = stepper.finish()  # the final snapshot comparison of run_program
        if report.finding is not None:
            self._found(report.finding)


def make_machine(
    config_overrides: dict[str, Any] | None = None,
    impl: str = "both",
    check: bool = True,
    observer: Observer | None = None,
) -> type[PudthpMachine]:
    """A ``PudthpMachine`` with config keys fixed (e.g. ``{"deposit": "list_head"}``),
    running ``impl`` with or without invariants, reporting to ``observer``.  Raises
    ``ConfigError`` for a bad key or value."""
    overrides = dict(config_overrides or {})
    return type(
        "PudthpMachine",
        (PudthpMachine,),
        {
            "CONFIG_OVERRIDES": overrides,
            "CONFIGS": configs(overrides),
            "IMPL": impl,
            "CHECK": check,
            "OBSERVER": observer,
            "__module__": __name__,
        },
    )
