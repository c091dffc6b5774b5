"""Running one program on one implementation, with every check, into a report.

``run_program`` never lets an exception of the model escape: ``ModelBug``,
``InvariantViolation``, an oracle mismatch and any other crash each end the run with a
``Finding`` whose signature names the kind, the op kind and the check, never an id or an
address, so the same bug found twice is recognised as one (MODEL.md section 7).
"""

from __future__ import annotations

import importlib
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

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

IMPL_NAMES: tuple[str, ...] = ("ref", "fast", "both")

# op_index of a finding raised while creating the model, before any op ran
BEFORE_FIRST_OP = -1


class UsageError(PudThpError):
    """A request the harness cannot serve (an unknown or unavailable implementation)."""


@dataclass
class RunReport:
    """What ``pudthp run --report`` writes (FORMAT.md section 2)."""

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


def _fast_factory() -> Callable[[Config], Impl]:
    try:
        module = importlib.import_module("pudthp_fast.model")
    except ImportError as e:
        raise UsageError(f"the fast implementation cannot be imported: {e}") from None
    return cast(Callable[[Config], Impl], module.FastModel)


def _both_factory() -> Callable[[Config], Impl]:
    ref, fast = _ref_factory(), _fast_factory()

    def make(cfg: Config) -> Impl:
        return Lockstep(cfg, ref(cfg), fast(cfg))

    return make


# name -> a function that imports the implementation (lazily) and returns its constructor
IMPL_FACTORIES: dict[str, Callable[[], Callable[[Config], Impl]]] = {
    "ref": _ref_factory,
    "fast": _fast_factory,
    "both": _both_factory,
}


def _constructor(name: str) -> Callable[[Config], Impl]:
    if name not in IMPL_FACTORIES:
        raise UsageError(f"unknown implementation {name!r} (choose from {', '.join(IMPL_NAMES)})")
    return IMPL_FACTORIES[name]()


def make_impl(name: str, cfg: Config) -> Impl:
    """A fresh implementation for ``cfg``; raises UsageError for an unavailable one."""
    return _constructor(name)(cfg)


def run_program(
    program: Program,
    impl: str = "ref",
    *,
    check: bool = True,
    on_step: Callable[[int, Op, Result], None] | None = None,
) -> RunReport:
    """Run ``program`` on a fresh ``impl`` and report its results and first finding.

    Per op: ``apply``, then (if ``check``) ``check_invariants``, then the oracle (always: it is
    cheap and its state must follow every op).  ``on_step(i, op, result)`` is called once the
    op returned, before its checks.  The results include the op of an invariant or oracle
    finding but not an op whose ``apply`` raised.  A model that cannot even be created gives a
    finding at op index -1.  Raises UsageError only for an unavailable implementation.
    """
    constructor = _constructor(impl)
    results: list[Result] = []
    finding: Finding | None = None
    try:
        model = constructor(program.config)
    except Exception as e:
        finding = _crash_finding(e, BEFORE_FIRST_OP, "init")
        return RunReport(impl, results, finding, None)

    oracle = Oracle(program.config.geometry)
    for i, op in enumerate(program.ops):
        try:
            result = model.apply(op)
        except Exception as e:
            finding = _exception_finding(e, i, op.KIND)
            break
        if isinstance(result, bool) or not isinstance(result, int | str):
            finding = Finding(
                "model_bug",
                i,
                f"model_bug:{op.KIND}:bad_result",
                f"apply returned {result!r} ({type(result).__name__}), not an int or a string",
            )
            break
        results.append(result)
        if on_step is not None:
            on_step(i, op, result)
        if check:
            try:
                model.check_invariants()
            except Exception as e:
                finding = _exception_finding(e, i, op.KIND)
                break
        mismatch = oracle.step(op, result)
        if mismatch is not None:
            finding = Finding("oracle", i, f"oracle:{op.KIND}:{mismatch.check}", mismatch.message)
            break

    snapshot: dict[str, Any] | None
    try:
        if isinstance(model, Lockstep):
            snapshot = model.ref.snapshot()
            if finding is None and model.compare_snapshots() is not None:
                finding = locate_divergence(program, constructor)
        else:
            snapshot = model.snapshot()
    except Exception as e:
        snapshot = None
        if finding is None:
            finding = _crash_finding(e, len(program.ops) - 1, "snapshot")
    return RunReport(impl, results, finding, snapshot)


def locate_divergence(program: Program, constructor: Callable[[Config], Impl]) -> Finding:
    """The per-op digests agreed but the final snapshots do not: replay with a full snapshot
    comparison after every op and report the first op whose states differ."""
    model = constructor(program.config)
    assert isinstance(model, Lockstep)
    for i, op in enumerate(program.ops):
        model.apply(op)
        d = model.compare_snapshots()
        if d is not None:
            return _exception_finding(d, i, op.KIND)
    raise AssertionError("the final snapshots differ but no op's snapshots did on replay")


def _exception_finding(e: Exception, index: int, kind: str) -> Finding:
    """What an exception out of an implementation means: a broken invariant, detected model
    corruption (ModelBug), or a crash of the model itself."""
    if isinstance(e, InvariantViolation):
        return Finding("invariant", index, f"invariant:{kind}:{e.invariant}", str(e))
    if isinstance(e, ModelBug):
        return _model_bug_finding(e, index, kind)
    if isinstance(e, Divergence):
        return Finding(
            "divergence", index, f"divergence:{kind}:{e.field}", str(e), e.context
        )
    return _crash_finding(e, index, kind)


def _model_bug_finding(e: ModelBug, index: int, kind: str) -> Finding:
    detail = ""
    if e.payload:
        detail = "; ".join(f"{k}={v!r}" for k, v in e.payload.items())
        if len(detail) > 4000:
            detail = detail[:3997] + "..."
    return Finding("model_bug", index, f"model_bug:{kind}:{e.check}", str(e), detail)


def _crash_finding(e: Exception, index: int, kind: str) -> Finding:
    """Any other exception inside the model: a finding with the innermost frame in it."""
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
