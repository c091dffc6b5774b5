"""The Hypothesis stateful engine: ``PudthpMachine``, a rule per op kind (docs/format.md) and a few
for short op sequences.

Each rule builds its ops and runs each through ``harness.runner.Stepper``, the per-op half
of ``run_program``: ``apply`` on the implementation (``both``: ``Lockstep``, which compares
the results and a cheap summary of ref and fast after every op), ``check_invariants()`` when
``check`` (under ``both`` the reference's; the fast side's at the end), and the oracle.
``teardown`` does ``run_program``'s end-of-program step: the full snapshot comparison,
locating a difference only it shows by replay, and the fast side's own check. So a program
that fails here fails the same way under ``pudthp run --impl both``.

A finding is raised as a ``FindingError``: one subclass per finding kind, and below it one
class per signature, so Hypothesis (which tells bugs apart by exception type and raising
line) shrinks every distinct signature on its own and never trades one for another.  The
message carries the program so far as program JSON, ready for ``pudthp run``.

Data flows through three bundles: ``mms`` (live mm ids; ``exit`` consumes one), ``ranges``
(``(start, npages)`` ranges an mmap mapped; ``munmap`` consumes one and puts back what is
left of it) and ``pins`` (pin ids; ``unpin`` consumes one).  Addresses are drawn as
geometry-free "places" (a PUD or PMD boundary with one page either side, any page of the
working region, a page of a range an mmap mapped, a page written lately, any page of the
address space, just beyond it) and resolved against the geometry drawn for the test case;
lengths likewise (whole PUDs or PMDs +- 1 page, 1 to 16 pages, up to the next PUD boundary).
Range ops cut their range from a mapped one: the whole region, its head or tail, a piece
inside it, a piece straddling a PMD or PUD boundary inside it, the PMD or PUD range around a
page written lately (so reclaim and migration meet written THPs wholly in range), that PMD
range but its first one to three pages (a THP left mapped once, twice or three times), or a
fresh range.  Each such argument is one integer (one Hypothesis choice), decoded here.

Besides one rule per op of docs/format.md, a few rules run the short sequences that reach kernel
paths random single ops rarely line up for (``write_run``: consecutive pages faulted one
after another; ``fork_exit``: a fork whose child exits at once, leaving write-protected, not
exclusive pages mapped by the parent alone; ``after_fork``: a fork, then the same range op
(pageout, migrate, munmap, an mprotect toggle, dontneed or a write) in the child and the
parent; ``leave_few``: an munmap of all but one to three pages of a PMD range and a write to
what is left, maybe after a fork and exit and a pin of another page left;
``protect_toggle``: mprotect read-only and back; ``pageout`` a second time as its own rule),
and ``shrink_deferred`` and ``fail_alloc`` share one rule. The config of a test case is
drawn from the correct designs, with PMD-only and PTE-only programs a third and a sixth of
the time and swap on in six of seven; P = 16 (two mTHP orders below the PMD order) in an
eighth of the test cases, each mTHP order's setting and ``max_ptes_none`` drawn per test
case, and ``split_folio`` splitting to order 0, an mTHP order, the PMD order or 1; the
working region is mapped at the start (whole, whole with MADV_HUGEPAGE, or from three PMDs
into its first PUD) in three cases of four.

Every op's model-state features (``harness.coverage``) are counted into ``TALLY`` at the
end of each test case, which also tells Hypothesis (``event``, ``target``) how many and how
rare they were.

Swarm testing is Hypothesis' own: every test case draws a random subset of the rules to
enable (``RuleStrategy.enabled_rules_strategy``, a ``FeatureStrategy`` over the rule names,
on by default since Hypothesis 4.x), so long runs of a few ops are common.  Each step then
picks one of the rules both enabled and valid now (``RuleChoice``): Hypothesis' own choice
draws from all rules and retries on a disabled or invalid one, which with half the rules
disabled on average wasted a draw on most steps.

With the fast side in the run, each test case also draws the variant of the fast side's hot
paths (``FAST_PATH_DRAWS``: as tuned, numpy always or Python loops always; see
``pudthp_fast.state.Paths``), so both variants of each are compared with the reference at
any geometry; the program records it (``meta.fast_paths``), and a finding replays on it.
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
    RuleStrategy,
    consumes,
    initialize,
    multiple,
    precondition,
    rule,
)

from harness.coverage import Coverage, Tally
from harness.limits import Gate, LimitExceeded, memory_error
from harness.program import config_delta, dump_program
from harness.runner import Stepper
from pudthp_ref import spec
from pudthp_ref.spec import Config, Finding, Geometry, Op, Program, Result

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


class DisagreementFinding(FindingError):
    kind = "disagreement"  # the live kernel and the reference (fuzz.kmachine)


FINDING_ERRORS: dict[str, type[FindingError]] = {
    c.kind: c for c in (InvariantFinding, ModelBugFinding, OracleFinding, DivergenceFinding,
                        DisagreementFinding)
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
    ``tally`` adds up the model-state features (``harness.coverage``) of every program.
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
    tally: Tally = field(default_factory=Tally)
    programs: int = 0
    steps: int = 0
    stopped: bool = False  # tick raised StopFuzzing (Hypothesis may report it as flaky)
    shrink_cut: bool = False  # ... because of the shrink budget
    first_pending_at: float = 0.0
    programs_at_failure: int | None = None  # ``programs`` at the run's first finding
    _last_progress: float = 0.0
    on_program_start: Callable[[], None] | None = None
    gate: Gate = field(default_factory=Gate)
    limit_hits: list[LimitExceeded] = field(default_factory=list)
    memory_exhausted: bool = False
    # the current test case has no verdict of its own: it went idle on a known signature
    # or stopped at a resource limit
    inconclusive: bool = False
    known_hits: set[str] = field(default_factory=set)  # known signatures met again

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
        self.programs_at_failure = None

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
            self.programs_at_failure = self.programs  # what the run had generated by then
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

# Every argument that picks a place, a length or a cut is one integer, decoded by the
# machine (``place``, ``length``, ``cut``): one choice per argument keeps Hypothesis' own
# work per step small, and 0 decodes to the simplest alternative, which is where the
# shrinker goes.
#
# Geometry-free "places": (kind, index, delta); resolved by PudthpMachine.addr ("mapped":
# a page of a range an earlier mmap mapped, so faults are common; "written": a page written
# lately, or one next to it).
PLACE_KINDS = ("pud", "pmd", "mapped", "written", "pud", "pmd", "mapped", "written", "page",
               "space", "beyond")
DELTAS = (0, -1, 1)
PLACE_INDEXES = 4096
N_PLACES = len(PLACE_KINDS) * len(DELTAS) * PLACE_INDEXES
# (kind, count, delta); resolved by PudthpMachine.length ("pages": 1 to 16 pages, so a
# PMD range can be cut down to two or three pages)
LENGTH_KINDS = ("pud", "pmd", "pages", "to_pud")
LENGTH_COUNTS = 16
N_LENGTHS = len(LENGTH_KINDS) * len(DELTAS) * LENGTH_COUNTS
# How a range op cuts its range out of a mapped one: the whole of it, its head or tail, a
# piece inside it, a piece straddling a PMD or PUD boundary inside it; or the PMD or PUD
# range around a page written lately (so pageout and migrate meet written THPs, wholly in
# range), a few pages from such a page, that PMD range but its first one to three pages (a
# THP left mapped 1, 2 or 3 times), or a fresh range anywhere.
CUT_KINDS = ("whole", "head", "tail", "inner", "written_pmd", "written_pud", "straddle_pmd",
             "straddle_pud", "written_page", "written_pmd_but", "fresh")
N_CUTS = len(CUT_KINDS) * N_PLACES * N_LENGTHS
places = st.integers(0, N_PLACES - 1)
lengths = st.integers(0, N_LENGTHS - 1)
cuts = st.integers(0, N_CUTS - 1)
# 1..1000 or 0, half and half (zero-filled pages swap out to the zeromap and split to the
# zero page); shrinks to 1
values = st.integers(0, 1999)
RUN_PAGES = 8  # write_run: up to this many consecutive pages
MIGRATE_NODES = (1, 0, 2)
# after_fork: the range op applied in the child, then in the parent
AFTER_FORK_OPS = ("pageout", "migrate", "munmap", "mprotect", "dontneed", "write")

Place = tuple[str, int, int]
Size = tuple[str, int, int]


def place(v: int) -> Place:
    """The place an integer of ``places`` stands for: (kind, index, delta)."""
    v, k = divmod(v, len(PLACE_KINDS))
    index, dl = divmod(v, len(DELTAS))
    return PLACE_KINDS[k], index % PLACE_INDEXES, DELTAS[dl]


def length_of(v: int) -> Size:
    """The length an integer of ``lengths`` stands for: (kind, count, delta)."""
    v, k = divmod(v, len(LENGTH_KINDS))
    count, dl = divmod(v, len(DELTAS))
    kind = LENGTH_KINDS[k]
    count = count % LENGTH_COUNTS + 1
    return kind, count if kind == "pages" else (count - 1) % 3 + 1, DELTAS[dl]


def cut_of(v: int) -> tuple[str, Place, Size]:
    """The cut an integer of ``cuts`` stands for: (kind, place, length)."""
    v, k = divmod(v, len(CUT_KINDS))
    size, at = divmod(v, N_PLACES)
    return CUT_KINDS[k], place(at), length_of(size % N_LENGTHS)


def value_of(v: int) -> int:
    return v + 1 if v < 1000 else 0


# The fast side's hot-path variants a test case runs (harness.runner.FAST_PATHS), the
# default first: the one shrinking goes to.
FAST_PATH_DRAWS: tuple[str, ...] = ("default", "numpy", "default", "python")

# Correct designs only; the first value of each is the default (docs/model.md section 4).
DRAWN_CHOICES: dict[str, tuple[Any, ...]] = {
    "geometry": (8, 4, 8, 8, 4, 8, 8, 16),
    "thp_enabled": ("always", "always", "madvise", "never"),
    "pmd_enabled": ("inherit", "inherit", "always", "madvise", "never"),
    "pud_enabled": ("always", "always", "inherit", "madvise", "never"),
    "use_zero_page": (True, True, False),
    "deposit": ("lru_next", "llist"),
    "pud_read_fault": ("alloc", "fallback"),
    "pud_wp_reuse": (True, True, False),
    "shrink_underused": (True, True, False),
    "nodes": (2, 2, 2, 1),
    "swap_pages": ("default", "default", "default", "one_pud", "one_pmd", "half_pmd", "none"),
    "max_ptes_none": ("default", "default", "zero", "half"),
}
# Each mTHP order's setting (config.mthp), drawn per order of the geometry
MTHP_DRAWS: tuple[str, ...] = ("never", "always", "always", "madvise", "inherit")
# A split's new order: 0, the lowest mTHP order, the PMD order (a PUD folio to PMD
# folios), or 1 (refused: no anonymous order-1 folio)
SPLIT_ORDERS = 4
# A program's THP sizes: every key drawn as above, or PMD THPs only (the PMD-level paths get
# the whole program), or none at all (PTE level only).
PROFILES = ("drawn", "drawn", "drawn", "pmd_only", "pmd_only", "pte_only")
PROFILE_KEYS: dict[str, dict[str, Any]] = {
    "pmd_only": {"thp_enabled": "always", "pmd_enabled": "inherit", "pud_enabled": "never"},
    "pte_only": {"thp_enabled": "never", "pmd_enabled": "inherit", "pud_enabled": "inherit"},
}


def configs(overrides: dict[str, Any] | None = None) -> st.SearchStrategy[dict[str, Any]]:
    """Program ``config`` objects (docs/format.md spelling, only the keys that differ from the
    defaults) of the correct designs, with the keys of ``overrides`` fixed.  Raises
    ``ConfigError`` for a bad override (``Config.from_json`` validates)."""
    fixed = Config.from_json(dict(overrides or {}))
    keys = set(overrides or {})

    @st.composite
    def draw_config(draw: st.DrawFn) -> dict[str, Any]:
        profile = PROFILE_KEYS.get(draw(st.sampled_from(PROFILES)), {})
        values: dict[str, Any] = {}
        for key, choices in DRAWN_CHOICES.items():
            if key in keys:
                values[key] = getattr(fixed, key)
            elif key in profile:
                values[key] = profile[key]
            else:
                values[key] = draw(st.sampled_from(choices))
        p = values["geometry"]
        if "swap_pages" not in keys:
            values["swap_pages"] = {"default": -1, "none": 0, "one_pud": p * p,
                                    "one_pmd": p, "half_pmd": p // 2}[values["swap_pages"]]
        if "max_ptes_none" not in keys:
            values["max_ptes_none"] = {"default": -1, "zero": 0,
                                       "half": p // 2}[values["max_ptes_none"]]
        if "mthp" in keys:
            values["mthp"] = fixed.mthp
        else:
            drawn = [(o, draw(st.sampled_from(MTHP_DRAWS))) for o in Geometry(p).mthp_orders]
            values["mthp"] = tuple((o, v) for o, v in drawn if v != "never")
        # a fixed max_ptes_* past a smaller drawn geometry's P - 1 comes down to it
        return config_delta(Config(**values).with_geometry(p))

    return draw_config()


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------

MAX_MMS = 4
Range = tuple[int, int]


def _bucket(n: int) -> str:
    low = n - n % 5
    return f"{low}-{low + 4}"


class RuleChoice(RuleStrategy):
    """The rule of each step: one of the rules the test case's feature flags enable (swarm
    testing, decided for every rule at the first step) and whose bundles and preconditions
    allow it now, as one draw (falling back to every valid rule when no enabled one is).
    Hypothesis' own ``RuleStrategy`` samples from all rules and rejects, so most steps drew
    twice or more ("Retried draw from sampled_from" in its statistics)."""

    def __init__(self, machine: RuleBasedStateMachine) -> None:
        super().__init__(machine)
        self.enabled: list[Any] | None = None
        self.indexes = [st.integers(0, n - 1) for n in range(1, len(self.rules) + 1)]

    def do_draw(self, data: Any) -> tuple[Any, dict[Any, Any]]:
        flags = data.draw(self.enabled_rules_strategy)
        if self.enabled is None:
            self.enabled = [r for r in self.rules if flags.is_enabled(r.function.__name__)]
        valid = [r for r in self.enabled if self.is_valid(r)] or [
            r for r in self.rules if self.is_valid(r)]
        if not valid:  # as Hypothesis' own strategy says it
            return super().do_draw(data)
        chosen = valid[data.draw(self.indexes[len(valid) - 1])]
        return chosen, {k: data.draw(s) for k, s in chosen.arguments_strategies.items()}


class PudthpMachine(RuleBasedStateMachine):
    """Programs of every op of docs/format.md, run through ``Stepper`` (see the module docstring).

    Class attributes, set by ``make_machine``: ``CONFIG_OVERRIDES`` (config keys fixed for
    every test case, docs/format.md spelling), ``IMPL`` (``both``, ``ref`` or ``fast``), ``CHECK``
    (``check_invariants()`` after every op), ``OBSERVER`` (a fuzz campaign's hooks),
    ``TALLY`` (the model-state features of every program run, the observer's if any).
    """

    CONFIG_OVERRIDES: ClassVar[dict[str, Any]] = {}
    CONFIGS: ClassVar[st.SearchStrategy[dict[str, Any]]] = configs()
    IMPL: ClassVar[str] = "both"
    CHECK: ClassVar[bool] = True
    OBSERVER: ClassVar[Observer | None] = None
    TALLY: ClassVar[Tally] = Tally()

    mms: Bundle[int] = Bundle("mms")
    ranges: Bundle[Range] = Bundle("ranges")
    pins: Bundle[int] = Bundle("pins")

    def __init__(self) -> None:
        super().__init__()
        self._rules_strategy = RuleChoice(self)
        self.stepper: Stepper | None = None
        self.coverage = Coverage()
        self.live: set[int] = {0}
        self.idle = False  # a known finding or a stop ended this case: rules do nothing
        if self.OBSERVER is not None:
            self.OBSERVER.inconclusive = False
        self.mapped: list[Range] = []  # ranges mmap mapped, newest last (for "mapped" places)
        # pages written lately, and pages a cut left mapped on purpose ("written" places)
        self.written: list[int] = []

    # ---- setup -------------------------------------------------------------------------

    @initialize(target=mms)
    def first_mm(self) -> int:
        """mm 0 exists from the start (docs/model.md section 3.1)."""
        return 0

    @initialize(target=ranges, cfg=st.runner().flatmap(lambda m: m.CONFIGS),
                premap=st.integers(0, 3), paths=st.integers(0, len(FAST_PATH_DRAWS) - 1))
    def setup(self, cfg: dict[str, Any], premap: int, paths: int) -> Any:
        """The config of this case and its fast paths (``FAST_PATH_DRAWS``); with ``premap``
        1 an mmap of the whole working region, with 2 also MADV_HUGEPAGE over it (THPs where
        the sizes say ``madvise``), with 3 an mmap of it from three PMDs into its first PUD
        (a VMA starting mid-PUD)."""
        self.cfg = Config.from_json(cfg)
        self.g = self.cfg.geom
        self.region = self.working_region()
        if self.OBSERVER is not None:
            self.OBSERVER.program_started()
        self.stepper = self.make_stepper(
            "default" if self.IMPL == "ref" else FAST_PATH_DRAWS[paths])
        if self.stepper.finding is not None:
            self._found(self.stepper.finding)
        start = 3 * self.g.pmd_nr if premap == 3 else 0
        if premap and self._run(spec.Mmap(0, start, self.region - start, "rw")) == 0:
            if premap == 2:
                self._run(spec.Madvise(0, 0, self.region, "hugepage"))
            self.mapped.append((start, self.region - start))
            return (start, self.region - start)
        return multiple()

    def working_region(self) -> int:
        """The pages most ops fall in: four PUD ranges (the whole space at tiny geometry)."""
        return min(self.g.space, 4 * self.g.pud_nr)

    def make_stepper(self, fast_paths: str) -> Stepper:
        """What runs this case's ops on ``fast_paths`` (``fuzz.kmachine`` runs them on the
        kernel, where there is no fast side)."""
        return Stepper(self.cfg, self.IMPL, check=self.CHECK, coverage=self.coverage,
                       fast_paths=fast_paths)

    # ---- address, length and range resolution -----------------------------------------

    def addr(self, at: int | Place) -> int:
        kind, index, delta = place(at) if isinstance(at, int) else at
        g = self.g
        if kind == "pud":
            return max(0, index % (self.region // g.pud_nr) * g.pud_nr + delta)
        if kind == "pmd":
            return max(0, index % (self.region // g.pmd_nr) * g.pmd_nr + delta)
        if kind == "mapped" and self.mapped:
            s, n = self.mapped[-1 - index % len(self.mapped)]
            return s + (index // len(self.mapped)) % n
        if kind == "written" and self.written:  # one of the four newest
            return max(0, self.written[-1 - index % min(4, len(self.written))] + delta)
        if kind in ("page", "mapped", "written"):
            return index % self.region
        if kind == "space":
            return index % g.space
        return g.space + index % 4  # beyond the address space

    def length(self, start: int, size: int | Size) -> int:
        kind, count, delta = length_of(size) if isinstance(size, int) else size
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

    def cut(self, r: Range, how: int | tuple[str, Place, Size]) -> Range:
        """A range cut from the mapped range ``r``, around a page written lately, or a
        fresh one."""
        kind, at, size = cut_of(how) if isinstance(how, int) else how
        s, n = r
        e = s + n
        if kind == "whole":
            return r
        if kind == "fresh":
            start = self.addr(at)
            return start, self.length(start, size)
        if kind.startswith("written"):
            if not self.written:
                return r
            w = self.written[-1 - at[1] % len(self.written)]
            if kind == "written_page":
                return w, self.length(w, size)
            if kind == "written_pmd_but":
                keep = (size[1] - 1) % 3 + 1
                base = w - w % self.g.pmd_nr
                for page in range(base, base + keep):
                    self._wrote(page)  # the pages left mapped are where to write next
                return base + keep, self.g.pmd_nr - keep
            unit = self.g.pmd_nr if kind == "written_pmd" else self.g.pud_nr
            return w - w % unit, unit
        k = min(n, self.length(s, size))
        if kind == "head":
            return s, k
        if kind == "tail":
            return e - k, k
        if kind == "inner":
            start = s + at[1] % n
            return start, max(1, min(k, e - start))
        unit = self.g.pmd_nr if kind == "straddle_pmd" else self.g.pud_nr
        bounds = range((s // unit + 1) * unit, e, unit)  # boundaries strictly inside r
        if not bounds:
            return r
        b = bounds[at[1] % len(bounds)]
        reach = (size[1] - 1) % 3 + 1  # 1..3 pages either side
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
        obs.inconclusive = True
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
                self.idle = obs.inconclusive = True
                obs.known_hits.add(finding.signature)
                return
            obs.record(finding, program)
        self.idle = True
        raise finding_error(finding, program)

    def _wrote(self, addr: int) -> None:
        self.written = [*self.written[-7:], addr]

    # ---- one rule per op of docs/format.md --------------------------------------------

    @rule(target=ranges, mm=mms, at=places, size=lengths,
          prot=st.sampled_from(("rw", "rw", "r", "none")))
    def mmap(self, mm: int, at: int, size: int, prot: str) -> Any:
        start = self.addr(at)
        n = self.length(start, size)
        if self._run(spec.Mmap(mm, start, n, prot)) == 0:
            self.mapped = [*self.mapped[-7:], (start, n)]
            return (start, n)
        return multiple()

    @rule(target=ranges, mm=mms, r=consumes(ranges), how=cuts)
    def munmap(self, mm: int, r: Range, how: int) -> Any:
        start, n = self.cut(r, how)
        if self._run(spec.Munmap(mm, start, n)) != 0:
            return multiple(r)
        s, e = r[0], r[0] + r[1]
        left = [(a, b - a) for a, b in ((s, min(e, start)), (max(s, start + n), e)) if b > a]
        return multiple(*left)

    @rule(mm=mms, r=ranges, how=cuts, prot=st.sampled_from(spec.PROTS))
    def mprotect(self, mm: int, r: Range, how: int, prot: str) -> None:
        start, n = self.cut(r, how)
        self._run(spec.Mprotect(mm, start, n, prot))

    @rule(mm=mms, r=ranges, how=cuts)
    def protect_toggle(self, mm: int, r: Range, how: int) -> None:
        """mprotect read-only and back to rw (a W^X toggle): PMD leaves and PTEs of
        exclusive pages become writable again, PUD leaves stay read-only."""
        start, n = self.cut(r, how)
        self._run(spec.Mprotect(mm, start, n, "r"))
        self._run(spec.Mprotect(mm, start, n, "rw"))

    @rule(mm=mms, r=ranges, how=cuts, advice=st.sampled_from(spec.ADVICES))
    def madvise(self, mm: int, r: Range, how: int, advice: str) -> None:
        start, n = self.cut(r, how)
        self._run(spec.Madvise(mm, start, n, advice))

    @rule(mm=mms, r=ranges, how=cuts)
    def pageout(self, mm: int, r: Range, how: int) -> None:
        """MADV_PAGEOUT once more, as its own rule: reclaim is where swap, splits and the
        shared-folio rules meet."""
        start, n = self.cut(r, how)
        self._run(spec.Madvise(mm, start, n, "pageout"))

    @rule(mm=mms, at=places)
    def read(self, mm: int, at: int) -> None:
        self._run(spec.Read(mm, self.addr(at)))

    @rule(mm=mms, at=places, value=values)
    def write(self, mm: int, at: int, value: int) -> None:
        addr = self.addr(at)
        if self._run(spec.Write(mm, addr, value_of(value))) == 0:
            self._wrote(addr)

    @rule(mm=mms, at=places, pages=st.integers(2, RUN_PAGES), value=values)
    def write_run(self, mm: int, at: int, pages: int, value: int) -> None:
        """Writes to consecutive pages (a fault on each: pages of one large folio COWed or
        reused one after another), up to the first that fails."""
        addr = self.addr(at)
        for i in range(pages):
            if self._run(spec.Write(mm, addr + i, value_of(value) + i)) != 0:
                break
            self._wrote(addr + i)

    @precondition(lambda self: len(self.live) < MAX_MMS)
    @rule(target=mms, mm=mms)
    def fork(self, mm: int) -> Any:
        child = self._run(spec.Fork(mm))
        if isinstance(child, int):
            self.live.add(child)
            return child
        return multiple()

    @rule(mm=mms, at=places, keep=st.integers(1, 3), value=values, fork_first=st.booleans(),
          pin_first=st.booleans())
    def leave_few(self, mm: int, at: int, keep: int, value: int, fork_first: bool,
                  pin_first: bool) -> None:
        """An munmap of all but the first ``keep`` pages of a PMD range (a THP there is
        left mapped ``keep`` times, and queued as partially mapped), then a write to the
        last page left; with ``fork_first`` after a fork whose child exits at once, so the
        write meets a read-only, not exclusive page of a large folio mapped one to three
        times, all in this mm (``__wp_can_reuse_large_anon_folio``); with ``pin_first``
        the first page left is pinned before that write (a reference that is no mapping:
        no reuse)."""
        addr = self.addr(at)
        base = addr - addr % self.g.pmd_nr
        if fork_first and len(self.live) < MAX_MMS:
            child = self._run(spec.Fork(mm))
            if isinstance(child, int):
                self._run(spec.Exit(child))
        if self._run(spec.Munmap(mm, base + keep, self.g.pmd_nr - keep)) == 0:
            for page in range(base, base + keep):
                self._wrote(page)
            if pin_first:
                self._run(spec.Pin(mm, base))
            self._run(spec.Write(mm, base + keep - 1, value_of(value)))

    @precondition(lambda self: len(self.live) < MAX_MMS)
    @rule(mm=mms)
    def fork_exit(self, mm: int) -> None:
        """A fork whose child exits at once (fork and exec): the parent's pages stay
        write-protected and lose AnonExclusive, while only the parent maps them."""
        child = self._run(spec.Fork(mm))
        if isinstance(child, int):
            self._run(spec.Exit(child))

    @precondition(lambda self: len(self.live) < MAX_MMS)
    @rule(target=mms, mm=mms, r=ranges, how=cuts, what=st.integers(0, len(AFTER_FORK_OPS) - 1),
          around_write=st.booleans())
    def after_fork(self, mm: int, r: Range, how: int, what: int, around_write: bool) -> Any:
        """A fork, then one range op on the same range in the child and in the parent:
        reclaim, migration, unmapping or protection meeting folios both map (with
        ``around_write``, on the PMD range of a page written lately)."""
        child = self._run(spec.Fork(mm))
        if not isinstance(child, int):
            return multiple()
        self.live.add(child)
        if around_write and self.written:
            at = self.written[-1]
            start, n = at - at % self.g.pmd_nr, self.g.pmd_nr
        else:
            start, n = self.cut(r, how)
            at = start
        kind = AFTER_FORK_OPS[what]
        for m in (child, mm):
            if kind == "pageout" or kind == "dontneed":
                self._run(spec.Madvise(m, start, n, kind))
            elif kind == "migrate":
                self._run(spec.Migrate(m, start, n, 1))
            elif kind == "munmap":
                self._run(spec.Munmap(m, start, n))
            elif kind == "mprotect":
                self._run(spec.Mprotect(m, start, n, "r"))
                self._run(spec.Mprotect(m, start, n, "rw"))
            else:
                self._run(spec.Write(m, at, 1 + m))
        return child

    @precondition(lambda self: len(self.live) > 1)
    @rule(mm=consumes(mms))
    def exit(self, mm: int) -> None:
        self.live.discard(mm)
        self._run(spec.Exit(mm))

    @rule(mm=mms, at=places, order=st.integers(0, SPLIT_ORDERS - 1))
    def split_folio(self, mm: int, at: int, order: int) -> None:
        g = self.g
        new_order = (0, 2 if g.mthp_orders else 0, g.pmd_order, 1)[order]
        self._run(spec.SplitFolio(mm, self.addr(at), new_order))


    @rule(mm=mms, r=ranges, how=cuts, node=st.integers(0, 2))
    def migrate(self, mm: int, r: Range, how: int, node: int) -> None:
        start, n = self.cut(r, how)
        # node 1 first: every folio starts on node 0; then 0 and one past the last
        self._run(spec.Migrate(mm, start, n, MIGRATE_NODES[node]))

    @rule(target=pins, mm=mms, at=places)
    def pin(self, mm: int, at: int) -> Any:
        pin = self._run(spec.Pin(mm, self.addr(at)))
        return pin if isinstance(pin, int) else multiple()

    @rule(pin=consumes(pins))
    def unpin(self, pin: int) -> None:
        self._run(spec.Unpin(pin))

    @rule(event=st.integers(0, 2 * len(spec.ALLOC_ORDERS) - 1))
    def shrink_deferred_or_fail_alloc(self, event: int) -> None:
        """The two ops that name no memory, as one rule (each would otherwise take a
        rule's share of the steps): the deferred split shrinker (half the time), or the
        next allocation of an order failing."""
        if event < len(spec.ALLOC_ORDERS):
            self._run(spec.ShrinkDeferred())
            return
        self._run(spec.FailAlloc(spec.ALLOC_ORDERS[event - len(spec.ALLOC_ORDERS)], 1))

    # ---- end of a test case ------------------------------------------------------------

    def teardown(self) -> None:
        stepper = self.stepper
        if stepper is None:
            return
        obs = self.OBSERVER
        if obs is not None:
            obs.programs += 1
        self._count_features()
        if self.idle or stepper.finding is not None or stepper.model is None:
            return
        report = stepper.finish()  # the final snapshot comparison of run_program
        if report.finding is not None:
            self._found(report.finding)


    def _count_features(self) -> None:
        """Add this program's model-state features to the tally; ``event`` how many it
        hit, and ``target`` how rare they were: the sum, over the features hit, of
        1 / (1 + programs that hit it before).  (The campaign does not run Hypothesis'
        target phase, see ``fuzz.engine_hypothesis``; pytest profiles that do hill-climb
        on this.)"""
        tally, cov = self.TALLY, self.coverage
        seen = tally.programs_hit
        hit = [i for i, n in enumerate(cov.hits) if n]
        event(f"model-state features hit: {_bucket(len(hit))}")
        target(sum(1.0 / (1 + seen[i]) for i in hit), label="rare model-state features")
        tally.add_program(cov.hits, cov.ops)
        tally.unclassified += cov.unclassified


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
            "TALLY": observer.tally if observer is not None else Tally(),
            "__module__": __name__,
        },
    )
