"""What the atheris target runs on and how its inputs change: the hunt's config policy and the
op-level mutator.

``Hunt`` turns fuzzer bytes into the program the target runs (``program``): the config
comes from the bytes, then keys fixed with ``--config`` are set and, unless fixed, the
geometry is kept to ``tiny``, ``small`` or P = 16, the smallest with two mTHP orders
(others become ``small``, dropping the mTHP orders ``small`` lacks: x86_64 runs are
thousands of times slower and find the same bugs) and the rejected ``list_head`` deposit
design becomes ``lru_next`` (it is known bad: it would be "found" by nearly every input).
The campaign decodes crash artifacts with the same ``Hunt``, so an archived program is
exactly what crashed.

``mutate`` is libFuzzer's custom mutator: it decodes the input as the target would, makes
one op-level edit (insert a new op, delete, duplicate or swap ops, tweak one field of one op,
or change one config key that is not fixed, an mTHP order's setting and
``max_ptes_none`` among them) and encodes the result, so a mutation changes
one thing a person would name instead of re-interpreting every op after a flipped byte.
An insert is sometimes one of a few short patterns (``PATTERNS``, at most four ops) that
reach kernel paths single random ops rarely line up for: a write and then pageout or migrate
of the PMD or PUD range around it, a fork followed by the same range op in the child and the
parent, a fork whose child exits at once, writes to consecutive pages, a read-only/read-write
mprotect toggle, an munmap that leaves one to three pages of a THP mapped (after a write, or
after a fork and exit), a pin followed by a split, fork, pageout, migrate or munmap, a failed
allocation followed by a fault, migrate or fork.  A config edit
is sometimes a jump to PMD THPs only or to no THPs at all.  A
fraction of calls still use libFuzzer's own byte mutations (``atheris.Mutate``), which
reach what the op-level edits cannot (e.g. values compared against by the model).
``crossover`` splices the ops of two inputs.  Both are plain functions of their seed.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import fields, replace
from typing import Any

from fuzz.encoding import decode, encode
from fuzz.gen import ProgramGenerator
from harness.corpus import KNOWN_BAD_DEPOSITS
from harness.shrink import rescale_op
from pudthp_ref import spec
from pudthp_ref.spec import CONFIG_BOOLS, CONFIG_CHOICES, Config, Op, Program

HUNT_GEOMETRIES: tuple[int, ...] = (4, 8, 16)
BYTE_LEVEL_SHARE = 0.2  # of mutate() calls handed to libFuzzer's byte mutator
EDITS: tuple[str, ...] = ("insert", "delete", "duplicate", "swap", "tweak", "tweak", "config")
PATTERN_SHARE = 0.4  # of inserts that insert a pattern
PATTERNS: tuple[str, ...] = ("write_reclaim", "fork_both", "fork_exit", "write_run",
                             "toggle", "leave_few", "pinned", "fail_alloc")
PROFILE_SHARE = 0.25  # of config edits that jump to PMD THPs only or to no THPs
PROFILES: tuple[dict[str, Any], ...] = (
    {"thp_enabled": "always", "pmd_enabled": "inherit", "pud_enabled": "never"},
    {"thp_enabled": "never", "pmd_enabled": "inherit", "pud_enabled": "inherit"},
)


class Hunt:
    """The campaign's fixed config keys (``--config KEY=VALUE``, as a program's config JSON
    spells them) and the policy for the rest (module docstring).  Raises ConfigError for a
    bad key or value."""

    def __init__(self, fixed: dict[str, Any] | None = None, max_ops: int | None = None
                 ) -> None:
        self.max_ops = max_ops  # a longer program is cut to its first max_ops ops
        self.fixed: dict[str, Any] = dict(fixed or {})
        pinned = Config.from_json(self.fixed)
        self.pinned: dict[str, Any] = {k: getattr(pinned, k) for k in self.fixed}

    def adjust(self, cfg: Config) -> Config:
        changes = dict(self.pinned)
        if "geometry" not in changes and cfg.geometry not in HUNT_GEOMETRIES:
            changes["geometry"] = 8
        if "deposit" not in changes and cfg.deposit in KNOWN_BAD_DEPOSITS:
            changes["deposit"] = "lru_next"
        if not changes:
            return cfg
        P = changes.pop("geometry", cfg.geometry)
        out = replace(cfg, **changes)
        return out if cfg.geometry == P else out.with_geometry(P)

    def program(self, data: bytes) -> Program:
        """The program the target runs for ``data`` (its first ``max_ops`` ops)."""
        program = decode(data, adjust=self.adjust)
        if self.max_ops is not None and len(program.ops) > self.max_ops:
            return Program(program.config, program.ops[: self.max_ops], program.meta)
        return program


def mutate(
    hunt: Hunt,
    data: bytes,
    max_size: int,
    seed: int,
    byte_mutate: Callable[[bytes, int], bytes] | None = None,
) -> bytes:
    """One op-level edit of ``data`` (module docstring), at most ``max_size`` bytes."""
    rng = random.Random(seed)
    if byte_mutate is not None and (len(data) < 2 or rng.random() < BYTE_LEVEL_SHARE):
        return byte_mutate(data, max_size)
    program = hunt.program(data)
    cfg, ops = program.config, list(program.ops)
    gen = _generator(cfg, ops, rng)
    edit = rng.choice(EDITS) if ops else "insert"
    if edit == "insert" and rng.random() < PATTERN_SHARE:
        i = rng.randint(0, len(ops))
        ops[i:i] = _pattern(gen, ops, rng)
    elif edit == "insert":
        for _ in range(rng.choice((1, 1, 1, 2, 4))):
            ops.insert(rng.randint(0, len(ops)), gen.op())
    elif edit == "delete":
        i = rng.randrange(len(ops))
        del ops[i : i + rng.choice((1, 1, 1, 2, 4))]
    elif edit == "duplicate":
        i = rng.randrange(len(ops))
        run = ops[i : i + rng.choice((1, 1, 2, 3))]
        j = rng.choice((i + len(run), rng.randint(0, len(ops))))
        ops[j:j] = run
    elif edit == "swap":
        i, j = rng.randrange(len(ops)), rng.randrange(len(ops))
        ops[i], ops[j] = ops[j], ops[i]
    elif edit == "tweak":
        i = rng.randrange(len(ops))
        ops[i] = _tweak(ops[i], gen, rng)
    else:
        new_cfg = _tweak_config(hunt, cfg, rng)
        if new_cfg.geometry != cfg.geometry:
            ops = [rescale_op(op, cfg.geometry, new_cfg.geometry) for op in ops]
        cfg = new_cfg
    return _fit(Program(cfg, tuple(ops)), max_size)


def crossover(hunt: Hunt, data1: bytes, data2: bytes, max_size: int, seed: int) -> bytes:
    """The ops of ``data1`` up to a random point, then those of ``data2`` from one (moved to
    the geometry of ``data1``)."""
    rng = random.Random(seed)
    a, b = hunt.program(data1), hunt.program(data2)
    i, j = rng.randint(0, len(a.ops)), rng.randint(0, len(b.ops))
    tail = tuple(rescale_op(op, b.config.geometry, a.config.geometry) for op in b.ops[j:])
    return _fit(Program(a.config, a.ops[:i] + tail), max_size)


def _fit(program: Program, max_size: int) -> bytes:
    """``encode(program)``, dropping ops from the end until it fits in ``max_size``."""
    data = encode(program)
    ops = program.ops
    while len(data) > max_size and ops:
        ops = ops[: max(0, len(ops) * max_size // len(data) - 1)]
        data = encode(Program(program.config, ops))
    return data[:max_size]


def _generator(cfg: Config, ops: list[Op], rng: random.Random) -> ProgramGenerator:
    """A generator drawing ops for ``cfg`` on the mms the program already uses."""
    gen = ProgramGenerator(cfg, rng)
    mms = sorted({op.mm for op in ops if hasattr(op, "mm")} | {0})
    gen.live_mms = mms[:6]
    gen.next_mm = max(mms) + 1
    gen.next_pin = 1 + sum(isinstance(op, spec.Pin) for op in ops)
    return gen


def _pattern(gen: ProgramGenerator, ops: list[Op], rng: random.Random) -> list[Op]:
    """One of ``PATTERNS`` (module docstring), around a page the program writes already
    (or a fresh place) of an mm it uses."""
    g = gen.g
    written = [op for op in ops if isinstance(op, spec.Write)]
    if written and rng.random() < 0.7:
        w = rng.choice(written)
        mm, a = w.mm, w.addr
    else:
        mm, a = gen.mm(), gen.addr()
    unit = rng.choice((g.pmd_nr, g.pmd_nr, g.pud_nr))
    base = a - a % unit
    value = rng.randint(1, 1000)
    kind = rng.choice(PATTERNS)
    if kind == "write_reclaim":
        last: Op = (spec.Madvise(mm, base, unit, "pageout") if rng.random() < 0.5
                    else spec.Migrate(mm, base, unit, 1))
        return [spec.Write(mm, a, value), last]
    child = gen.next_mm
    if kind in ("fork_both", "fork_exit"):
        gen.next_mm += 1
        if kind == "fork_exit":
            return [spec.Fork(mm), spec.Exit(child)]
        both: list[Op] = [spec.Madvise(m, base, unit, "pageout") for m in (child, mm)]
        other = rng.choice(("migrate", "munmap", "mprotect", "write"))
        if other == "migrate":
            both = [spec.Migrate(m, base, unit, 1) for m in (child, mm)]
        elif other == "munmap":
            both = [spec.Munmap(m, base, unit) for m in (child, mm)]
        elif other == "mprotect":
            both = [spec.Mprotect(m, base, unit, "r") for m in (child, mm)]
        elif other == "write":
            both = [spec.Write(m, a, value + m) for m in (child, mm)]
        return [spec.Fork(mm), *both]
    if kind == "write_run":
        return [spec.Write(mm, min(a + i, g.space - 1), value + i) for i in range(4)]
    if kind == "toggle":
        return [spec.Mprotect(mm, base, unit, "r"), spec.Mprotect(mm, base, unit, "rw"),
                spec.Write(mm, a, value)]
    if kind == "pinned":
        then: Op = rng.choice((spec.SplitFolio(mm, a), spec.Fork(mm),
                               spec.Madvise(mm, base, unit, "pageout"),
                               spec.Migrate(mm, base, unit, 1), spec.Munmap(mm, base, unit)))
        return [spec.Pin(mm, a), then]
    if kind == "fail_alloc":
        order = rng.choice(spec.ALLOC_ORDERS)
        then = rng.choice((spec.Write(mm, a, value), spec.Migrate(mm, base, unit, 1),
                           spec.Fork(mm)))
        return [spec.FailAlloc(order, 1), then]
    keep = rng.randint(1, 3)  # leave_few: first a write, or a fork whose child exits
    pmd = a - a % g.pmd_nr
    first: list[Op] = [spec.Write(mm, a, value)]
    if rng.random() < 0.5:
        gen.next_mm += 1
        first = [spec.Fork(mm), spec.Exit(child)]
    return [*first, spec.Munmap(mm, pmd + keep, g.pmd_nr - keep),
            spec.Write(mm, pmd + keep - 1, value + 1)]


def _tweak(op: Op, gen: ProgramGenerator, rng: random.Random) -> Op:
    """``op`` with one field changed: to a fresh value of its kind or a step from the old."""
    names = [f.name for f in fields(op)]
    if not names:
        return gen.op()
    name = rng.choice(names)
    old = getattr(op, name)
    g = gen.g
    kind = spec.field_kind(op.KIND, name)
    new: Any
    if kind == "addr":
        step = rng.choice((1, -1, g.pmd_nr, -g.pmd_nr, g.pud_nr, -g.pud_nr))
        new = gen.addr() if rng.random() < 0.5 else (old + step) % g.space
    elif kind == "length":
        step = rng.choice((1, -1, g.pmd_nr, -g.pmd_nr, g.pud_nr, -g.pud_nr))
        new = gen.length(getattr(op, "start", 0)) if rng.random() < 0.5 else old + step
        new = min(max(new, 1), g.space)
    elif kind == "value":
        new = rng.choice((0, 1, (old + 1) & spec.MAX_VALUE, rng.randrange(1 << 16), spec.MAX_VALUE))
    elif kind == "id":
        near = min(max(1, old + rng.choice((-1, 1))), 64)
        new = near if rng.random() < 0.5 else rng.randint(1, 8)
    elif kind == "index":
        new = rng.randrange(4) if name != "node" else rng.randrange(gen.cfg.nodes + 1)
    elif kind == "order":
        new = gen.split_order()
    else:
        new = rng.choice(spec.FIELD_CHOICES[kind])
    result: Op = replace(op, **{name: new})
    return result


def _tweak_config(hunt: Hunt, cfg: Config, rng: random.Random) -> Config:
    """``cfg`` with one key that the hunt does not fix drawn afresh."""
    keys = [k for k in (*CONFIG_CHOICES, *CONFIG_BOOLS, "geometry", "nodes", "swap_pages",
                        "mthp", "max_ptes_none") if k not in hunt.fixed]
    if not keys:
        return cfg
    if rng.random() < PROFILE_SHARE:
        profile = rng.choice(PROFILES)
        return hunt.adjust(replace(cfg, **{k: v for k, v in profile.items()
                                           if k not in hunt.fixed}))
    key = rng.choice(keys)
    value: Any
    if key in CONFIG_CHOICES:
        value = rng.choice(CONFIG_CHOICES[key])
    elif key in CONFIG_BOOLS:
        value = not getattr(cfg, key)
    elif key == "geometry":
        return hunt.adjust(cfg.with_geometry(rng.choice(HUNT_GEOMETRIES)))
    elif key == "mthp":
        orders = cfg.geom.mthp_orders
        if not orders:
            return cfg
        order = rng.choice(orders)
        setting = rng.choice(spec.MTHP_SETTINGS)
        value = tuple(sorted({**dict(cfg.mthp), order: setting}.items()))
        value = tuple((o, v) for o, v in value if v != "never")
    elif key == "max_ptes_none":
        value = rng.choice((-1, 0, cfg.geometry // 2))
    elif key == "nodes":
        value = rng.choice((1, 2, 3))
    else:
        value = rng.choice((-1, 0, cfg.geometry, cfg.geometry * cfg.geometry))
    return hunt.adjust(replace(cfg, **{key: value}))
