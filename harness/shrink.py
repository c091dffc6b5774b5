"""Shrinking a program while it keeps reporting the same finding (``pudthp shrink``).

The predicate is "the run ends in a finding with the same signature", never just "fails",
so a shrink cannot slide onto a different bug.  Two phases, repeated until neither changes
anything:

1. delta debugging over ops (ddmin-style chunk deletion): delete chunks of half the program,
   then a quarter, ... down to single ops, last chunk first, cutting every candidate after
   the op its finding is at (later ops never run).  A 10,000-op program with a three-op bug
   is down to a few dozen ops after a handful of runs per halving.  Then each fork is
   tried away with its child's ops, the later mm ids renumbered;
2. simplification of what is left: fewer mms (every reference to an mm renumbered to a
   smaller one), a smaller geometry (addresses mapped digit by digit: PUD, PMD and page
   index each clamped, so "one page below a PUD boundary" stays that), default config
   values, every address moved down towards 0, then each field on its own: smaller
   addresses, lengths, values and indices, simpler prot, advice and order.

Every candidate's result is cached by (config, ops).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field, fields, replace
from typing import Any

from harness.runner import run_program
from pudthp_ref import spec
from pudthp_ref.spec import Config, Finding, Op, Program, PudThpError

# Order of preference when simplifying a choice field: the plainest first.
SIMPLER: dict[str, tuple[str, ...]] = {
    "prot": ("rw", "r", "none"),
    "advice": spec.ADVICES,
    "alloc_order": spec.ALLOC_ORDERS,
}
MAX_ROUNDS = 8


class NoFinding(PudThpError):
    """The program to shrink reports no finding (with this implementation and checks)."""


@dataclass
class ShrinkResult:
    program: Program
    finding: Finding
    ops_before: int
    ops_after: int
    runs: int
    seconds: float
    phases: list[str] = field(default_factory=list)


def ddmin_ops(program: Program, signature: str, impl: str, check: bool,
             budget: float) -> Program:
    """Only the op-removal phase of ``shrink``, bounded by ``budget`` seconds: the smallest
    program found that still ends in ``signature``."""
    s = _Shrinker(signature, impl, check, frozenset(), time.monotonic() + budget,
                  run_options(program))
    return Program(program.config, s.ddmin(program.config, program.ops), program.meta)


Judge = Callable[[Program], Finding | None]
"""What a shrink asks of a candidate: the finding it ends in, or None (default: a run of
``run_program`` on the implementation; ``pudthp shrink --impl kernel`` runs it on the live
kernel, ``harness.conform.kshrink``)."""


def run_options(program: Program) -> dict[str, Any]:
    """What of ``program.meta`` changes how it runs (``meta.fast_paths``): kept by every
    candidate, so a finding shrinks on the paths it was found on."""
    return {k: program.meta[k] for k in ("fast_paths",) if k in program.meta}


class _Shrinker:
    def __init__(self, signature: str, impl: str, check: bool, keep: frozenset[str],
                 deadline: float | None = None, options: dict[str, Any] | None = None,
                 judge: Judge | None = None) -> None:
        self.signature = signature
        self.options = options or {}
        self.impl = impl
        self.check = check
        self.keep = keep
        self.deadline = deadline  # time.monotonic(): after it, every candidate fails
        self.judge: Judge = judge or (
            lambda p: run_program(p, self.impl, check=self.check).finding)
        # (config, ops) -> the finding when the signature survives, else None
        self.cache: dict[tuple[Config, tuple[Op, ...]], Finding | None] = {}
        self.runs = 0

    def test(self, cfg: Config, ops: tuple[Op, ...]) -> tuple[Op, ...] | None:
        """``ops`` cut after its finding if it still reports the signature, else None."""
        key = (cfg, ops)
        if key not in self.cache:
            if self.deadline is not None and time.monotonic() > self.deadline:
                return None
            self.runs += 1
            finding = self.judge(Program(cfg, ops, self.options))
            if finding is not None and finding.signature == self.signature:
                self.remember(cfg, ops, finding)
            else:
                self.cache[key] = None
        finding = self.cache[key]
        return None if finding is None else ops[: finding.op_index + 1]

    def remember(self, cfg: Config, ops: tuple[Op, ...], finding: Finding) -> None:
        """A run of ``ops`` reported ``finding``: so does ``ops`` cut after it (the ops
        after a finding never run)."""
        self.cache[(cfg, ops)] = self.cache[(cfg, ops[: finding.op_index + 1])] = finding

    # -- phase 1 -------------------------------------------------------------------------

    def ddmin(self, cfg: Config, ops: tuple[Op, ...]) -> tuple[Op, ...]:
        chunk = max(1, len(ops) // 2)
        while True:
            removed = False
            hi = len(ops)
            while hi > 0:
                lo = max(0, hi - chunk)
                kept = self.test(cfg, ops[:lo] + ops[hi:])
                if kept is not None:
                    ops, removed = kept, True
                    hi = min(lo, len(ops))
                else:
                    hi = lo
            if chunk == 1 and not removed:
                fewer = self.fewer_forks(cfg, ops)
                if fewer == ops:
                    return ops
                ops = fewer
            if chunk > 1:
                chunk //= 2

    def fewer_forks(self, cfg: Config, ops: tuple[Op, ...]) -> tuple[Op, ...]:
        """Each fork, last first, removed with its child: the child's ops go and every later
        reference to a higher mm id moves down by one, as the ids would be handed out
        without it (ddmin alone cannot drop a fork whose later siblings are used: their
        ids would change)."""
        i = len(ops) - 1
        while i >= 0:
            cand = _without_fork(ops, i)
            kept = None if cand is None else self.test(cfg, cand)
            if kept is not None:
                ops = kept
            i = min(i, len(ops)) - 1
        return ops

    # -- phase 2 -------------------------------------------------------------------------

    def simplify(self, cfg: Config, ops: tuple[Op, ...]) -> tuple[Config, tuple[Op, ...]]:
        for candidate in (self._fewer_mms, self._smaller_geometry, self._default_config,
                          self._shift_down, self._fields):
            cfg, ops = candidate(cfg, ops)
        return cfg, ops

    def _fewer_mms(self, cfg: Config, ops: tuple[Op, ...]) -> tuple[Config, tuple[Op, ...]]:
        for mm in sorted({op.mm for op in ops if hasattr(op, "mm")}, reverse=True):
            for smaller in range(mm):
                cand = tuple(_with(op, mm=smaller) if getattr(op, "mm", -1) == mm else op
                             for op in ops)
                kept = self.test(cfg, cand)
                if kept is not None:
                    ops = kept
                    break
        return cfg, ops

    def _smaller_geometry(
        self, cfg: Config, ops: tuple[Op, ...]
    ) -> tuple[Config, tuple[Op, ...]]:
        if "geometry" in self.keep:
            return cfg, ops
        for p in sorted(q for q in set(spec.GEOMETRIES.values()) if q < cfg.geometry):
            small = cfg.with_geometry(p)
            cand = tuple(rescale_op(op, cfg.geometry, p) for op in ops)
            kept = self.test(small, cand)
            if kept is not None:
                return small, kept
        return cfg, ops

    def _default_config(
        self, cfg: Config, ops: tuple[Op, ...]
    ) -> tuple[Config, tuple[Op, ...]]:
        default = Config()
        for f in fields(cfg):
            if (f.name == "geometry" or f.name in self.keep
                    or getattr(cfg, f.name) == getattr(default, f.name)):
                continue
            cand_cfg = replace(cfg, **{f.name: getattr(default, f.name)})
            kept = self.test(cand_cfg, ops)
            if kept is not None:
                cfg, ops = cand_cfg, kept
        return cfg, ops

    def _shift_down(self, cfg: Config, ops: tuple[Op, ...]) -> tuple[Config, tuple[Op, ...]]:
        """Move every address down together, by whole PUDs, then whole PMDs."""
        g = cfg.geom
        addrs = [getattr(op, f) for op in ops for f in ("start", "addr") if hasattr(op, f)]
        if not addrs:
            return cfg, ops
        for unit in (g.pud_nr, g.pmd_nr):
            shift = min(addrs) // unit * unit
            if shift == 0:
                continue
            cand = tuple(_shifted(op, shift) for op in ops)
            kept = self.test(cfg, cand)
            if kept is not None:
                return cfg, kept
        return cfg, ops

    def _fields(self, cfg: Config, ops: tuple[Op, ...]) -> tuple[Config, tuple[Op, ...]]:
        i = 0
        while i < len(ops):
            for name in [f.name for f in fields(ops[i])]:
                if i >= len(ops):
                    break
                for value in _smaller_values(cfg, ops[i].KIND, name, getattr(ops[i], name)):
                    cand = (*ops[:i], _with(ops[i], **{name: value}), *ops[i + 1:])
                    kept = self.test(cfg, cand)
                    if kept is not None:
                        ops = kept
                        break
            i += 1
        return cfg, ops


def _without_fork(ops: tuple[Op, ...], i: int) -> tuple[Op, ...] | None:
    """``ops`` without the fork at ``i``, its child and the child's descendants, their ops
    dropped and every other mm id renumbered as the ids would be handed out without them
    (in order, the first at 0, one per fork of a live mm); None if ``ops[i]`` is no fork of
    a live mm."""
    if not isinstance(ops[i], spec.Fork):
        return None
    alive, next_id = {0}, 1
    gone: set[int] = set()
    for k, op in enumerate(ops):
        if isinstance(op, spec.Fork) and op.mm in alive:
            if k == i or op.mm in gone:
                gone.add(next_id)
            alive.add(next_id)
            next_id += 1
        elif isinstance(op, spec.Exit):
            alive.discard(op.mm)
    if not gone:
        return None
    out: list[Op] = list(ops[:i])
    for op in ops[i + 1:]:
        mm = getattr(op, "mm", None)
        if mm in gone:
            continue
        if isinstance(mm, int):
            below = sum(1 for g in gone if g < mm)
            out.append(_with(op, mm=mm - below) if below else op)
        else:
            out.append(op)
    return tuple(out)


def _with(op: Op, **changes: Any) -> Op:
    result: Op = replace(op, **changes)
    return result


def _shifted(op: Op, shift: int) -> Op:
    changes = {f: getattr(op, f) - shift for f in ("start", "addr") if hasattr(op, f)}
    return _with(op, **changes) if changes else op


def _digits(x: int, p: int) -> tuple[int, int, int]:
    return x // (p * p), (x // p) % p, x % p


def rescale_op(op: Op, p_old: int, p_new: int) -> Op:
    """``op`` moved from geometry ``p_old`` to ``p_new``: each address and length read as
    (PUDs, PMDs, pages), the PMD and page digits clamped to the new table size (an address's
    PUD digit too), so a PUD or PMD boundary and one page either side of it stay that."""
    changes: dict[str, int] = {}
    for f in fields(op):
        kind = spec.field_kind(op.KIND, f.name)
        if kind not in ("addr", "length"):
            continue
        a, b, c = _digits(getattr(op, f.name), p_old)
        a = min(a, p_new if kind == "length" else p_new - 1)
        value = a * p_new * p_new + min(b, p_new - 1) * p_new + min(c, p_new - 1)
        changes[f.name] = min(max(value, 1), p_new**3) if kind == "length" else value
    return _with(op, **changes) if changes else op


def _smaller_values(cfg: Config, op_kind: str, name: str, value: Any) -> Iterator[Any]:
    """Simpler values for one field, simplest first, each strictly simpler than ``value``."""
    kind = spec.field_kind(op_kind, name)
    g = cfg.geom
    if kind in SIMPLER:
        order = SIMPLER[kind]
        yield from order[: order.index(value)]
        return
    if kind == "addr":
        cands = [0, value // g.pud_nr * g.pud_nr, value // g.pmd_nr * g.pmd_nr]
    elif kind == "length":
        cands = [1, g.pmd_nr, g.pud_nr, value // g.pud_nr * g.pud_nr,
                 value // g.pmd_nr * g.pmd_nr, value // 2]
    elif kind == "value":
        cands = [0, 1, value // 2]
    elif kind == "id":
        cands = list(range(1, min(value, 9)))
    else:  # index, and a split's order: 0 is the simplest
        cands = list(range(min(value, 8)))
    lowest = 1 if kind in ("length", "id") else 0
    yield from (c for c in sorted(set(cands)) if lowest <= c < value)


def shrink(
    program: Program,
    impl: str = "ref",
    *,
    check: bool = True,
    signature: str | None = None,
    keep: Collection[str] = (),
    log: Callable[[str], None] | None = None,
    judge: Judge | None = None,
    deadline: float | None = None,
) -> ShrinkResult:
    """The smallest program found that still reports ``program``'s finding signature (or
    ``signature`` when given), leaving the config keys in ``keep`` as they are (a campaign's
    fixed keys), each candidate judged by ``judge`` (default: ``run_program`` on ``impl``),
    none after ``deadline`` (``time.monotonic()``).  Raises NoFinding when the program
    does not report it."""
    t0 = time.monotonic()
    first = (judge(program) if judge is not None
             else run_program(program, impl, check=check).finding)
    if first is None:
        raise NoFinding(f"no finding with --impl {impl}: nothing to shrink")
    if signature is not None and first.signature != signature:
        raise NoFinding(f"the program reports {first.signature}, not {signature}")
    s = _Shrinker(first.signature, impl, check, frozenset(keep), deadline,
                  run_options(program), judge)
    cfg, ops = program.config, program.ops
    s.remember(cfg, ops, first)
    ops = ops[: first.op_index + 1]
    phases: list[str] = []
    for _ in range(MAX_ROUNDS):
        before = (cfg, ops)
        ops = s.ddmin(cfg, ops)
        phases.append(f"ddmin -> {len(ops)} ops ({s.runs} runs)")
        if log:
            log(phases[-1])
        cfg, ops = s.simplify(cfg, ops)
        phases.append(f"simplify -> {len(ops)} ops ({s.runs} runs)")
        if log:
            log(phases[-1])
        if (cfg, ops) == before:
            break
    finding = s.cache[(cfg, ops)]  # every program kept was run, or cut from one that was
    assert finding is not None
    meta = dict(program.meta)
    return ShrinkResult(
        Program(cfg, ops, meta),
        finding,
        len(program.ops),
        len(ops),
        s.runs,
        time.monotonic() - t0,
        phases,
    )
