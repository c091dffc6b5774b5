"""Running one program on one implementation, with every check, into a report.

``run_program`` never lets an exception of the model escape: ``ModelBug``,
``InvariantViolation``, an oracle mismatch and any other crash each end the run with a
``Finding`` whose signature names the kind and the check (``harness.signature``), never an
id, an address or, for an invariant or a divergence, the op where it was seen, so the same
bug found twice is recognised as one (docs/format.md, "Findings and signatures").  The one
exception is running out of a resource: a ``MemoryError`` is raised as
``harness.limits.LimitExceeded`` (as the memory and time limits themselves are), never a
finding, since the state it leaves half done says nothing about the model.
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

from harness import signature
from harness.limits import memory_error
from harness.lockstep import Lockstep
from harness.oracle import Oracle
from pudthp_ref.spec import (
    REPORT_FORMAT,
    Config,
    Divergence,
    Finding,
    Impl,
    InvariantViolation,
    ModelBug,
    Op,
    Program,
    PudThpError,
    Result,
)

if TYPE_CHECKING:
    from harness.coverage import Coverage

IMPL_NAMES: tuple[str, ...] = ("ref", "fast", "both")
# When the fast side checks its invariants (the reference always checks after every op): at
# the end of a program, where a divergence is found and, when that check fails, after every
# op of a replay that names the first op breaking the state; or after every op
# (harness/lockstep.py says why the first loses nothing).
CHECK_MODES: tuple[str, ...] = ("end", "every-op")
# A program's ``meta.fast_paths``: which variant of its hot paths the fast side runs
# (``pudthp_fast.state.FAST_PATHS``; every one gives the same results and state).  A run
# option, not part of the model's config: campaigns draw it per program and record it in
# the program, so a finding replays on the same paths.
FAST_PATHS: tuple[str, ...] = ("default", "numpy", "python")

# op_index of a finding raised while creating the model, before any op ran
BEFORE_FIRST_OP = -1


class UsageError(PudThpError):
    """A request the harness cannot serve (an unknown or unavailable implementation)."""


@dataclass
class RunReport:
    """What ``pudthp run --report`` writes (docs/format.md "Run report")."""

    impl: str
    results: list[Result]
    finding: Finding | None
    snapshot: dict[str, Any] | None

    def to_json(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "impl": self.impl,
            "results": list(self.results),
            "finding": self.finding.to_json() if self.finding else None,
            "snapshot": self.snapshot,
        }


def _ref_factory() -> Callable[[Config], Impl]:
    try:
        module = importlib.import_module("pudthp_ref.model")
    except ImportError as e:
        raise UsageError(f"the reference model cannot be imported: {e}") from None
    return cast(Callable[[Config], Impl], module.RefModel)


def _fast_factory(paths: str = "default") -> Callable[[Config], Impl]:
    try:
        module = importlib.import_module("pudthp_fast.model")
    except ImportError as e:
        raise UsageError(f"the fast implementation cannot be imported: {e}") from None
    fast = module.FastModel

    def make(cfg: Config) -> Impl:
        return cast(Impl, fast(cfg, paths))

    return make


def _both_factory(paths: str = "default") -> Callable[[Config], Impl]:
    ref, fast = _ref_factory(), _fast_factory(paths)

    def make(cfg: Config) -> Impl:
        return Lockstep(cfg, ref(cfg), fast(cfg))

    return make


# name -> a function that imports the implementation (lazily) and returns its constructor
IMPL_FACTORIES: dict[str, Callable[..., Callable[[Config], Impl]]] = {
    "ref": _ref_factory,
    "fast": _fast_factory,
    "both": _both_factory,
}


def _constructor(name: str, fast_paths: str = "default") -> Callable[[Config], Impl]:
    if name not in IMPL_FACTORIES:
        raise UsageError(f"unknown implementation {name!r} (choose from {', '.join(IMPL_NAMES)})")
    if name in ("fast", "both"):
        return IMPL_FACTORIES[name](fast_paths)
    return IMPL_FACTORIES[name]()


def make_impl(name: str, cfg: Config, fast_paths: str = "default") -> Impl:
    """A fresh implementation for ``cfg``; raises UsageError for an unavailable one."""
    return _constructor(name, fast_paths)(cfg)


def fast_paths_of(program: Program) -> str:
    """The program's ``meta.fast_paths`` (default: ``default``); UsageError for another
    value."""
    paths = program.meta.get("fast_paths", "default")
    if not isinstance(paths, str) or paths not in FAST_PATHS:
        raise UsageError(f"meta.fast_paths: {paths!r} is not one of {', '.join(FAST_PATHS)}")
    return paths


def run_program(
    program: Program,
    impl: str = "ref",
    *,
    check: bool = True,
    check_mode: str = "end",
    on_step: Callable[[int, Op, Result], None] | None = None,
    coverage: Coverage | None = None,
) -> RunReport:
    """Run ``program`` on a fresh ``impl`` and report its results and first finding.

    Per op: ``apply``, then (if ``check``) ``check_invariants``, then the oracle (always: it is
    cheap and its state must follow every op).  The fast side (``fast`` alone, or under
    ``both``) checks its invariants after every op only with ``check_mode`` ``every-op``;
    with ``end`` (the default) at the end of the program and where a divergence is found,
    and a failure there is located by a replay with checks after every op.  The fast side
    runs the hot-path variants of ``meta.fast_paths``.  ``on_step(i, op, result)`` is called
    once the op returned, before its checks; ``coverage`` counts the model-state features of
    each op (``harness.coverage``; it needs the reference).  The results include the op of
    an invariant or oracle finding but not an op whose ``apply`` raised.  A model that
    cannot even be created gives a finding at op index -1.  Raises UsageError only for an
    unavailable implementation, check mode or ``meta.fast_paths``.
    """
    stepper = Stepper(program.config, impl, check=check, check_mode=check_mode,
                      on_step=on_step, coverage=coverage, fast_paths=fast_paths_of(program))
    for op in program.ops:
        if stepper.finding is not None:
            break
        stepper.step(op)
    return stepper.finish()


class Stepper:
    """``run_program`` one op at a time, for callers that choose the next op as they go (the
    Hypothesis state machine): ``step(op)`` runs one op with every per-op check and sets
    ``finding`` on the first problem; ``finish()`` compares the final snapshots (locating a
    difference only they show), checks the fast side's invariants if it has not after every
    op, and returns the report.  ``ops`` holds every op stepped, including one whose
    ``apply`` raised; ``program()`` them with ``meta.fast_paths`` when not the default.
    """

    def __init__(
        self,
        cfg: Config,
        impl: str = "ref",
        *,
        check: bool = True,
        check_mode: str = "end",
        on_step: Callable[[int, Op, Result], None] | None = None,
        coverage: Coverage | None = None,
        fast_paths: str = "default",
    ) -> None:
        if check_mode not in CHECK_MODES:
            raise UsageError(f"unknown check mode {check_mode!r} (choose from "
                             f"{', '.join(CHECK_MODES)})")
        if fast_paths not in FAST_PATHS:
            raise UsageError(f"unknown fast paths {fast_paths!r} (choose from "
                             f"{', '.join(FAST_PATHS)})")
        self.cfg = cfg
        self.impl = impl
        self.check = check
        self.check_mode = check_mode
        self.fast_paths = fast_paths
        self.on_step = on_step
        self.coverage = coverage
        self.constructor = _constructor(impl, fast_paths)
        # what checks after every op: the reference always, the fast side with every-op
        self.check_each_op = check and (impl != "fast" or check_mode == "every-op")
        self.ops: list[Op] = []
        self.results: list[Result] = []
        self.finding: Finding | None = None
        self.model: Impl | None = None
        try:
            self.model = self.constructor(cfg)
        except Exception as e:
            self.finding = _crash_finding(e, BEFORE_FIRST_OP, "init")
        if isinstance(self.model, Lockstep):
            self.model.fast_every_op = check_mode == "every-op"
        self.oracle = Oracle(cfg.geometry)

    def step(self, op: Op) -> Result | None:
        """Run one op; its result, or None when it ended in a finding (``self.finding``)."""
        if self.finding is not None or self.model is None:
            raise UsageError("step after a finding")
        i = len(self.ops)
        self.ops.append(op)
        model = self.model
        coverage = self.coverage
        token = coverage.before(model, op) if coverage is not None else None
        try:
            result = model.apply(op)
        except Exception as e:
            self.finding = self._earlier_violation(
                self._with_fast_verdict(_exception_finding(e, i, op.KIND)))
            return None
        if isinstance(result, bool) or not isinstance(result, int | str):
            self.finding = Finding(
                "model_bug",
                i,
                f"model_bug:{op.KIND}:bad_result",
                f"apply returned {result!r} ({type(result).__name__}), not an int or a string",
            )
            return None
        self.results.append(result)
        if coverage is not None:
            coverage.after(model, op, result, token)
        if self.on_step is not None:
            self.on_step(i, op, result)
        if self.check_each_op:
            try:
                model.check_invariants()
            except Exception as e:
                self.finding = _exception_finding(e, i, op.KIND)
                return result
        mismatch = self.oracle.step(op, result)
        if mismatch is not None:
            self.finding = self._earlier_violation(Finding(
                "oracle", i, f"oracle:{op.KIND}:{mismatch.check}", mismatch.message))
        return result

    def program(self) -> Program:
        """The ops stepped so far as a program (with the run's ``meta.fast_paths``)."""
        meta = {} if self.fast_paths == "default" else {"fast_paths": self.fast_paths}
        return Program(self.cfg, tuple(self.ops), meta)

    def _deferred_side(self) -> Impl | None:
        """The fast side when it has not been checking its invariants after every op."""
        if not self.check or self.check_mode == "every-op" or self.model is None:
            return None
        if isinstance(self.model, Lockstep):
            return self.model.fast
        return self.model if self.impl == "fast" else None

    def _fast_deferred(self) -> bool:
        """Whether the fast side of ``both`` has not been checking after every op."""
        return isinstance(self.model, Lockstep) and self._deferred_side() is not None

    def _earlier_violation(self, finding: Finding) -> Finding:
        """A finding of ``fast`` alone while its checks wait for the end: if its invariants
        broke at an earlier op (a replay with checks after every op), that is the finding,
        as under ``both`` the reference's check after every op would have reported it."""
        if self.impl != "fast" or self._deferred_side() is None or finding.op_index <= 0:
            return finding
        model = self.constructor(self.cfg)
        for j, op in enumerate(self.ops[: finding.op_index]):
            try:
                model.apply(op)
                model.check_invariants()
            except Exception as e:
                return _exception_finding(e, j, op.KIND)
        return finding

    def _with_fast_verdict(self, finding: Finding) -> Finding:
        """A divergence, with what the fast side's own checker says of its state there (it
        has not been run after every op)."""
        if finding.kind != "divergence" or not self._fast_deferred():
            return finding
        assert isinstance(self.model, Lockstep)
        return _add_fast_verdict(finding, self.model)

    def finish(self) -> RunReport:
        """The report: the final snapshot and, for ``both``, the final snapshot comparison
        (a difference only it shows is located by replay), then the invariant check of the
        fast side if it was deferred to the end: a violation (under ``both``, of its own
        bookkeeping that no snapshot shows) is found here and located at the first op that
        breaks it."""
        model = self.model
        if model is None:
            return RunReport(self.impl, self.results, self.finding, None)
        snapshot: dict[str, Any] | None
        try:
            if isinstance(model, Lockstep) and self.finding is None:
                snapshot, d = model.compare_snapshots()
                if d is not None:
                    self.finding = locate_divergence(self.program(), self.constructor,
                                                     fast_verdict=self._fast_deferred())
            elif isinstance(model, Lockstep):
                snapshot = model.ref.snapshot()
            else:
                snapshot = model.snapshot()
        except Exception as e:
            snapshot = None
            if self.finding is None:
                self.finding = _crash_finding(e, len(self.ops) - 1, "snapshot")
        if self.finding is None:
            self.finding = self._check_whole_state_at_end(model)
        return RunReport(self.impl, self.results, self.finding, snapshot)

    def _check_whole_state_at_end(self, model: Impl) -> Finding | None:
        side = self._deferred_side()
        if side is None or not self.ops:
            return None
        try:
            side.check_invariants()
        except MemoryError:
            raise memory_error() from None
        except Exception as e:
            return locate_violation(self.program(), self.constructor, e)
        return None


def locate_divergence(program: Program, constructor: Callable[[Config], Impl], *,
                      fast_verdict: bool = False) -> Finding:
    """The per-op digests agreed but the final snapshots do not: replay with a full snapshot
    comparison after every op and report the first op whose states differ (with
    ``fast_verdict``, and what the fast side's checker says of its state there)."""
    model = constructor(program.config)
    assert isinstance(model, Lockstep)
    for i, op in enumerate(program.ops):
        model.apply(op)
        _, d = model.compare_snapshots()
        if d is not None:
            finding = _exception_finding(d, i, op.KIND)
            return _add_fast_verdict(finding, model) if fast_verdict else finding
    raise AssertionError("the final snapshots differ but no op's snapshots did on replay")


def locate_violation(program: Program, constructor: Callable[[Config], Impl],
                     error: Exception) -> Finding:
    """The fast side's check at the end failed (``error``) where it had not checked after
    every op: replay with a check of every side after every op and report the first op
    that fails (the last op, should the replay not fail)."""
    model = constructor(program.config)
    if isinstance(model, Lockstep):
        model.fast_every_op = True
    for i, op in enumerate(program.ops):
        try:
            model.apply(op)
            model.check_invariants()
        except Exception as e:
            return _exception_finding(e, i, op.KIND)
    last = len(program.ops) - 1
    return _exception_finding(error, last, program.ops[last].KIND)


def _add_fast_verdict(finding: Finding, model: Lockstep) -> Finding:
    try:
        model.fast.check_invariants()
        verdict = "the fast side's own invariants hold here"
    except Exception as e:
        verdict = f"the fast side's own invariants fail here: {type(e).__name__}: {e}"
    detail = f"{finding.detail}\n{verdict}" if finding.detail else verdict
    return replace(finding, detail=detail)


def _exception_finding(e: Exception, index: int, kind: str) -> Finding:
    """What an exception out of an implementation means: a broken invariant, detected model
    corruption (ModelBug), or a crash of the model itself; out of memory is no finding
    (raises LimitExceeded)."""
    if isinstance(e, MemoryError):
        raise memory_error() from None
    if isinstance(e, InvariantViolation):
        # the invariant is the cause; the op after which it was checked is where
        return Finding("invariant", index, signature.invariant(e.invariant), str(e))
    if isinstance(e, ModelBug):
        return _model_bug_finding(e, index, kind)
    if isinstance(e, Divergence):
        return Finding("divergence", index, signature.divergence(e.field), str(e), e.context)
    return _crash_finding(e, index, kind)


def _model_bug_finding(e: ModelBug, index: int, kind: str) -> Finding:
    detail = ""
    if e.payload:
        detail = "; ".join(f"{k}={v!r}" for k, v in e.payload.items())
        if len(detail) > 4000:
            detail = detail[:3997] + "..."
    return Finding("model_bug", index, f"model_bug:{kind}:{e.check}", str(e), detail)


def _crash_finding(e: Exception, index: int, kind: str) -> Finding:
    """Any other exception inside the model: a finding with the innermost frame in it;
    out of memory is no finding (raises LimitExceeded)."""
    if isinstance(e, MemoryError):
        raise memory_error() from None
    frames = traceback.extract_tb(e.__traceback__)
    where = ""
    if frames:
        last = frames[-1]
        where = f" (at {last.filename}:{last.lineno} in {last.name})"
    text = str(e).replace("\n", " ")
    detail = "".join(traceback.format_exception(type(e), e, e.__traceback__))
    return Finding(
        "model_bug",
        index,
        f"model_bug:{kind}:crash:{type(e).__name__}",
        f"{type(e).__name__}: {text}{where}",
        detail,
    )


def exception_finding(e: Exception, index: int, kind: str) -> Finding:
    """The finding an exception of an implementation at op ``index`` (of ``kind``) is, as
    ``run_program`` reports it (for runners of their own: the kernel campaign's)."""
    return _exception_finding(e, index, kind)
