"""``pudthp conform``: run a PMD-level program on the live kernel and on the reference model
and compare, after every op, everything both can show (issue 4).

The kernel side (``harness.conform.live``) runs each model mm as a real process at x86_64 geometry:
model page ``v`` is ``WINDOW_BASE + v * 4096``.  Per op the two results are compared, then the
observations of ``harness.conform.observe`` (VMAs, RSS, per-page mapping kind, folio sharing, order,
mapcount, contents) and the deltas of the global THP counters over the op.  The first
difference is the disagreement.

Global counters are machine-wide, so other processes move them too.  A counter the kernel
counted less often than the model can only be the program's (other activity only adds
events) and ends the run; one counted more often, or a gauge, is recorded and the run goes
on.  Any difference counts only when another run of the program from scratch shows it again
with the same op, observable and values; otherwise the run agrees and says what it saw.
Counters no op of a program moves (collapse, migration, file THP, ...) are watched and noted.

Op translation: ``mmap`` is ``MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE``;
``read``/``write`` are loads/stores of the page's first 64-bit word in the owning process,
``SIGSEGV`` predicted from its ``/proc/PID/maps``; ``split_folio`` writes ``PID,START,END``
for that one page to debugfs ``split_huge_pages`` (result: ``EINVAL`` when no THP maps the
page, else 0 when ``split`` of hugepages-2048kB counted it, else ``EBUSY``);
``shrink_deferred`` is ``drop_caches`` 2 (result: how many of the program's THPs were split,
seen in its own pages), and its model side does what that trigger does (``model_drop_slab``:
the shrinker pass repeated as ``drop_slab()`` repeats it, and the huge zero folio's shrinker;
``ModelSide`` steps the model so, for this command and for ``pudthp export-c``);
``pin`` registers the page as an io_uring fixed buffer
(``pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM)``), ``unpin`` unregisters it.
``migrate`` (one NUMA node), ``fail_alloc`` (no fault injection) and, under kernel lockdown,
``split_folio`` cannot run here.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from harness.conform import kernel as k
from harness.conform import live
from harness.conform.kernel import PAGE_SIZE, KernelError
from harness.conform.known import (  # KNOWN and its readers, re-exported
    HUGE_ZERO_HELD_ELSEWHERE,
    KNOWN,
    known_kind,
    op_key,
)
from harness.conform.known import LOOK_PAST as LOOK_PAST
from harness.conform.known import Known as Known
from harness.conform.known import known_reason as known_reason
from harness.conform.observe import (
    Disagreement,
    Observation,
    canonical,
    compare,
    compare_counters,
    deltas,
    huge_zero_view,
    model_counters,
    project_snapshot,
)
from harness.program import ProgramError, dump_program, load_program_file, program_to_json
from pudthp_ref import spec
from pudthp_ref.pgtable import entry_json
from pudthp_ref.spec import Config, Op, Program, Result

if TYPE_CHECKING:
    from pudthp_ref.model import RefModel

X86_64_P = 512
UNSUPPORTED_OPS: dict[str, str] = {
    "migrate": "migrate needs a second NUMA node (this machine has one)",
    "fail_alloc": "the live kernel has no per-order allocation-failure injection",
}


class CannotRun(Exception):
    """This program cannot be run on this machine; the message says why."""


# --------------------------------------------------------------------------------------
# Which programs can run
# --------------------------------------------------------------------------------------


def raw_config_keys(path: str) -> dict[str, Any]:
    """The config object as written in the file (to tell a default from an explicit value)."""
    with open(path, encoding="utf-8") as f:
        raw = json.load(f)
    cfg = raw.get("config") if isinstance(raw, dict) else None
    return cfg if isinstance(cfg, dict) else {}


def pmd_level_config(program: Program, explicit: dict[str, Any]) -> Program:
    """The program at x86_64 geometry with PUD THP off.

    Those two keys are forced when the program leaves them at their defaults; a program that
    asks for another geometry or for PUD THP cannot run here (the kernel has PMD THP only and
    the address window is laid out for P = 512).  Raises CannotRun.
    """
    if "geometry" in explicit and program.config.geometry != X86_64_P:
        raise CannotRun(f"geometry P={program.config.geometry}: the live kernel is x86_64 "
                        "(P=512)")
    if "pud_enabled" in explicit and program.config.pud_enabled != "never":
        raise CannotRun(f"pud_enabled {program.config.pud_enabled!r}: the live kernel has no "
                        "PUD THP (use pud_enabled: never)")
    fields = {n: getattr(program.config, n) for n in Config.KEYS}
    fields.update(geometry=X86_64_P, pud_enabled="never")
    return Program(Config(**fields), program.ops, program.meta)


def live_gap(program: Program) -> str | None:
    """What of the program the live runs do not set up yet, or None: the per-size mTHP
    settings and khugepaged's knobs are not written to the kernel, a split to an order is
    not written to debugfs, MADV_COLLAPSE is not compared (docs/format.md, conform)."""
    cfg = program.config
    if cfg.mthp:
        return "config.mthp: per-size mTHP settings are not set on the live kernel yet"
    for key in spec.MAX_PTES_KEYS:
        if getattr(cfg, key) >= 0 and cfg.max_ptes(key) != Config(geometry=cfg.geometry
                                                                   ).max_ptes(key):
            return f"config.{key}: the live kernel keeps khugepaged's default"
    for i, op in enumerate(program.ops):
        gap = op_gap(op)
        if gap is not None:
            return f"op {i} ({op.KIND}): {gap}"
    return None


def op_gap(op: Op) -> str | None:
    """What of ``op`` the live runs do not do yet, or None (``live_gap`` per op)."""
    if isinstance(op, spec.SplitFolio) and op.order:
        return f"a split to order {op.order} is not run live yet"
    if isinstance(op, spec.Madvise) and op.advice == "collapse":
        return "MADV_COLLAPSE is not compared live yet"
    return None


def check_ops(program: Program) -> None:
    """Raise CannotRun for an op this machine cannot do, or a range beyond the window."""
    gap = live_gap(program)
    if gap is not None:
        raise CannotRun(gap)
    space = program.config.geom.space
    for i, op in enumerate(program.ops):
        if op.KIND in UNSUPPORTED_OPS:
            raise CannotRun(f"op {i} ({op.KIND}): {UNSUPPORTED_OPS[op.KIND]}")
        ranged = isinstance(op, spec.Mmap | spec.Munmap | spec.Mprotect | spec.Madvise)
        if ranged and op.start + op.npages > space:  # type: ignore[union-attr]
            raise CannotRun(f"op {i} ({op.KIND}): range ends past the model's address "
                                f"space ({space} pages); the live kernel has no such limit")


def kernel_config(cfg: Config) -> live.KernelConfig:
    return live.KernelConfig(cfg.thp_enabled, cfg.pmd_enabled, cfg.use_zero_page,
                             cfg.shrink_underused, cfg.swap_capacity)


# --------------------------------------------------------------------------------------
# One program
# --------------------------------------------------------------------------------------


@dataclass
class ConformRun:
    """What one or more runs of a program found (``disagreement`` None: they agree)."""

    kernel_results: list[Result] = field(default_factory=list)
    model_results: list[Result] = field(default_factory=list)
    items: list[Disagreement] = field(default_factory=list)  # differences, in op order
    noise: list[str] = field(default_factory=list)
    disagreement: Disagreement | None = None  # the first confirmed difference
    runs: int = 1
    facts: frozenset[str] = frozenset()  # what the harness checked on the machine (FACTS)

    def to_json(self) -> dict[str, Any]:
        d = self.disagreement
        return {
            "kernel_results": self.kernel_results,
            "model_results": self.model_results,
            "disagreement": None if d is None else {
                "op_index": d.op_index, "observable": d.observable, "kernel": d.kernel,
                "model": d.model,
            },
            "runs": self.runs,
            "noise": self.noise,
            "facts": sorted(self.facts),
        }


class KernelSide:
    """The live kernel running one program: its processes and how each op is done."""

    def __init__(self, program: Program, frames: live.PageFrames) -> None:
        self.space = program.config.geom.space
        self.ex = live.Executor(self.space)
        self.frames = frames  # the session's
        self.last: Observation | None = None  # raw, after the previous op
        self.seen: Observation | None = None  # taken by the op itself, after it

    def close(self) -> None:
        self.ex.close()

    def addr(self, vpn: int) -> int:
        return live.WINDOW_BASE + vpn * PAGE_SIZE

    def apply(self, op: Op) -> Result:
        """Run one op; the result as the model would spell it."""
        if isinstance(op, spec.ShrinkDeferred):
            live.drop_slab()
            assert self.last is not None
            self.seen = self.observe()
            return folios_split(self.last, self.seen)
        if isinstance(op, spec.Unpin):
            return self.ex.unpin(op.pin)
        if isinstance(op, spec.FailAlloc | spec.Migrate):
            raise CannotRun(UNSUPPORTED_OPS[op.KIND])
        srv = self.ex.server(op.mm)
        if srv is None:
            return spec.ESRCH
        if isinstance(op, spec.Mmap):
            return self._call(srv, ("mmap", self.addr(op.start), op.npages * PAGE_SIZE,
                                    op.prot))
        if isinstance(op, spec.Munmap):
            return self._call(srv, ("munmap", self.addr(op.start), op.npages * PAGE_SIZE))
        if isinstance(op, spec.Mprotect):
            return self._call(srv, ("mprotect", self.addr(op.start), op.npages * PAGE_SIZE,
                                    op.prot))
        if isinstance(op, spec.Madvise):
            return self._call(srv, ("madvise", self.addr(op.start), op.npages * PAGE_SIZE,
                                    k.ADVICE_CODES[op.advice]))
        if isinstance(op, spec.Read | spec.Write):
            write = isinstance(op, spec.Write)
            if not self._access_ok(srv, op.addr, write):
                return spec.SIGSEGV
            if isinstance(op, spec.Write):
                return self._call(srv, ("write", self.addr(op.addr), op.value))
            return self._call(srv, ("read", self.addr(op.addr)))
        if isinstance(op, spec.Fork):
            return self.ex.fork(srv)
        if isinstance(op, spec.Exit):
            self.ex.exit(srv)
            return 0
        if isinstance(op, spec.SplitFolio):
            return self._split_folio(srv, op.addr)
        if isinstance(op, spec.Pin):
            if op.addr >= self.space:
                return spec.EFAULT
            return self.ex.pin(srv, self.addr(op.addr))
        raise CannotRun(f"no way to run {op.KIND} on the live kernel")

    def _call(self, srv: live.Server, msg: tuple[Any, ...]) -> Result:
        reply, _ = self.ex.call(srv, msg)
        if not isinstance(reply, int | str):
            raise KernelError(f"unexpected reply {reply!r} to {msg[0]}")
        return reply

    def _access_ok(self, srv: live.Server, vpn: int, write: bool) -> bool:
        """Would a user access fault with SIGSEGV?  Decided from /proc/PID/maps: no VMA, no
        read permission, or a write without write permission (the kernel's own rules in
        do_user_addr_fault / access_error, for private anonymous memory)."""
        addr = self.addr(vpn)
        with open(f"/proc/{srv.pid}/maps", encoding="utf-8", errors="replace") as f:
            for line in f:
                rng, perms = line.split()[:2]
                lo, _, hi = rng.partition("-")
                if int(lo, 16) <= addr < int(hi, 16):
                    if vpn >= self.space:
                        raise CannotRun(f"address {addr:#x} (page {vpn}) is outside the "
                                        "window but mapped in the process")
                    return perms[0] == "r" and (not write or perms[1] == "w")
        return False

    def _split_folio(self, srv: live.Server, vpn: int) -> Result:
        """debugfs split_huge_pages for one page of one process (split_huge_pages_pid)."""
        if vpn >= self.space:
            return spec.EINVAL
        addr = self.addr(vpn)
        large = self._thp_mapped(srv, addr)
        before = k.read_pmd_stats()["split"]
        k.write_text(k.SPLIT_HUGE_PAGES, f"{srv.pid},{addr:#x},{addr + PAGE_SIZE:#x}")
        if not large:
            return spec.EINVAL
        return 0 if k.read_pmd_stats()["split"] > before else spec.EBUSY

    def _thp_mapped(self, srv: live.Server, addr: int) -> bool:
        regions = k.pagemap_scan(srv.pagemap_fd, addr, addr + PAGE_SIZE)
        cats = regions[0][2] if regions else 0
        if not cats & k.PAGE_IS_PRESENT or cats & k.PAGE_IS_PFNZERO:
            return False
        pfn = k.pagemap_entries(srv.pagemap_fd, addr, 1)[0] & k.PM_PFN_MASK
        flags = k.read_u64s(self.frames.flags_fd, pfn, 1)[0]
        return bool(flags >> k.KPF_COMPOUND_HEAD & 1 or flags >> k.KPF_COMPOUND_TAIL & 1)

    def observe(self) -> Observation:
        return live.observe(self.ex, self.frames)

    def observe_after_op(self) -> Observation:
        """What the kernel shows after the op just run (the op's own look, if it took one:
        nothing has run since)."""
        seen, self.seen = self.seen, None
        return seen if seen is not None else self.observe()


def folios_split(before: Observation, after: Observation) -> int:
    """How many of the program's THPs an op split: those with a page that was mapped before
    and is now an order-0 page at the same PFN, or the zero page (a zero-filled subpage is
    remapped to it, try_to_map_unused_to_zeropage).  Counted from the program's own pages,
    not from the global ``split`` counter, which the shrinker also moves for other
    processes' folios."""
    split: set[int] = set()
    for mm_id, m in before.mms.items():
        now = after.mms.get(mm_id)
        if now is None:
            continue
        now_pages = dict(now.pages)
        for vpn, p in m.pages:
            if p.order != live.THP_ORDER or p.folio is None or p.folio in split:
                continue
            q = now_pages.get(vpn)
            if q is None or p.index is None:
                continue
            if q.kind == "zero" or (q.order == 0 and q.folio == p.folio + p.index):
                split.add(p.folio)
    return len(split)


StepHook = Callable[[int, Op, Result, Result], None]


def run_once(program: Program, tools: live.RunTools, on_step: StepHook | None = None,
             ignore: frozenset[str] = frozenset(), held_elsewhere: bool | None = None,
             start: Callable[[live.Executor], None] | None = None) -> ConformRun:
    """Run the program once on both sides (the kernel already configured for it, ``tools``
    the session's).  ``held_elsewhere``: whether a process outside the run holds the huge
    zero folio, when the caller knows (a kernel campaign holds it itself), else probed;
    ``start``: how the program's first process is started (default ``Executor.start``, a
    fork of this process).

    Every difference found is recorded in ``run.items``.  A difference the program alone
    decides (a result, a per-process observable, an event counter the kernel counted *less*
    often than the model) ends the run; a counter the kernel counted more often, or a gauge,
    can also be other processes' doing and only marks the run ``suspect`` (``Session.run``
    reruns the program to tell).
    """
    run = ConformRun()
    # An empty deferred split queue, and no huge zero folio left over, unless a process
    # outside the run holds it: then the kernel will not allocate it for the program, and
    # the model is told it exists (``ModelSide``).
    if held_elsewhere is None:
        held_elsewhere = bool(live.huge_zero_folio_held_elsewhere())
    side = ModelSide(program, held_elsewhere)
    if held_elsewhere:
        run.noise.append("a process outside the run held the huge zero folio at the start: "
                         "the model was told it exists")
    kside = KernelSide(program, tools.frames)
    try:
        (start or live.Executor.start)(kside.ex)
        kside.last = kside.observe()
        assert side.projected is not None
        d = compare(-1, canonical(kside.last), canonical(side.projected), ignore)
        if d is not None:
            run.items.append(d)
            return run
        for i, op in enumerate(program.ops):
            m_before = side.counters
            tools.drain()  # no folio reference left in a per-CPU batch (LruDrain)
            k_before = live.read_counters()
            kres = kside.apply(op)
            k_after = live.read_counters()
            kd = deltas(k_before, k_after)
            mres = side.step(op, kd)
            projected = side.projected
            assert projected is not None
            run.kernel_results.append(kres)
            run.model_results.append(mres)
            if on_step is not None:
                on_step(i, op, kres, mres)
            run.noise += noise_notes(i, kd)
            if kres != mres:
                run.items.append(Disagreement(i, "result", kres, mres))
                return run
            kside.last = kside.observe_after_op()
            d = compare(i, canonical(kside.last), canonical(projected), ignore)
            if d is not None:
                run.items.append(d)
                return run
            for d, definite in compare_counters(i, kd, deltas(m_before, side.counters),
                                                ignore):
                run.items.append(d)
                if definite:
                    return run
        return run
    finally:
        kside.close()


def noise_notes(i: int, kd: dict[str, int]) -> list[str]:
    """What the counters no op of a program moves (``live.NOISE_*``) say of op ``i``: other
    activity on the machine."""
    return [f"op {i}: {name} moved by {kd[name]}"
            for key in (*live.NOISE_VMSTAT, *live.NOISE_MTHP)
            for name in (f"vmstat.{key}", f"mthp.{key}") if kd.get(name)]


class ModelSide:
    """The reference model as a conformance run steps it next to the kernel: ``run_once``
    here, and ``pudthp export-c`` (``harness.conform.export_c``), which steps it the same
    way to write a C file's expectations.

    ``held_elsewhere``: a process outside the run holds the huge zero folio at the run's
    start (``live.huge_zero_folio_held_elsewhere``): the model is told the folio exists, and
    it stays held for the whole run (``EXTERNAL_HOLDER`` in ``holders``).  ``step`` runs one
    op; ``shrink_deferred`` is followed by ``model_drop_slab``, which reads from the
    kernel's counter deltas over the op how many shrinker passes ``drop_caches`` made.
    After each op: ``counters`` (``model_counters``), ``holders`` (``huge_zero_holders``)
    and ``projected`` (``project_snapshot``), unless ``project`` is False: a PUD folio's
    pages are too many to snapshot and project op by op, and ``huge_zero_view`` of the page
    tables alone gives the part of the projection the holders are read from.
    """

    def __init__(self, program: Program, held_elsewhere: bool, project: bool = True) -> None:
        from pudthp_ref.model import RefModel

        self.model = RefModel(program.config)
        self.project = project
        self.holders: set[int] = set()
        if held_elsewhere:
            self.model.st.huge_zero_allocated = True
            self.holders.add(EXTERNAL_HOLDER)
        self.projected: Observation | None = None
        self._look()

    def _look(self) -> None:
        if self.project:
            snap = self.model.snapshot()
            self.counters = model_counters(snap)
            self.projected = project_snapshot(snap)
            self._seen = self.projected
        else:
            self.counters = model_counters(self.model.summary())
            self._seen = huge_zero_view(page_tables_snapshot(self.model))

    def step(self, op: Op, kernel: dict[str, int]) -> Result:
        """One op on the model; ``kernel``: the kernel's counter deltas over the same op
        (``vmstat.X``, ``mthp.X``)."""
        before = self.counters
        result = self.model.apply(op)
        if isinstance(op, spec.ShrinkDeferred):
            result = model_drop_slab(self.model, result, before, kernel, self.holders)
        self._look()
        self.holders = huge_zero_holders(self.holders, self._seen)
        return result

    def clone(self) -> ModelSide:
        """An independent copy, to step the same op under other kernel counts."""
        other = copy.copy(self)
        other.model = copy.deepcopy(self.model)
        other.holders = set(self.holders)
        return other


def page_tables_snapshot(model: RefModel) -> dict[str, Any]:
    """The model's snapshot (docs/format.md "Snapshots") cut down to what ``huge_zero_view`` reads:
    the geometry, the mms, and the PUD and PMD tables.  The whole snapshot spells out every
    page of every folio, a fifth of a second for one PUD folio at x86_64 geometry: too much
    for every op of a PUD program."""
    st = model.st
    return {
        "geometry": st.geom.P,
        "mms": [{"id": mm.id, "alive": mm.alive,
                 "pud_table": mm.pud_table if mm.alive else None} for mm in st.mms],
        "pagetables": [{"id": t.id, "level": t.level,
                        "entries": [[i, entry_json(e)] for i, e in enumerate(t.entries)
                                    if e is not None]}
                       for _, t in sorted(st.tables.items()) if t.level in ("pud", "pmd")],
    }


def model_drop_slab(model: RefModel, first: Result, before: dict[str, int],
                    kernel: dict[str, int], holders: set[int]) -> Result:
    """The model side of ``drop_caches`` 2, after the model's ``shrink_deferred`` (one pass
    of the deferred split shrinker, returning ``first``); the total split count.

    ``drop_slab()`` runs every shrinker, and again while the pass before freed enough
    (``(freed >> shift++) > 1``, summed over every shrinker of the machine, the harness's
    own /proc dentries among them): the deferred split shrinker makes one pass or more, and
    each tries again a folio whose split failed (``deferred_split_scan()`` requeues it).  A
    further pass changes nothing else: every other folio was split or left the queue in the
    first.  How many passes that was depends on the whole machine; the program's folios show
    it only through their failed splits, so the model repeats its pass as often as the
    kernel's failed splits say (``shrinker_passes``).

    The huge zero folio's shrinker (``shrink_huge_zero_folio_scan()``) frees it when no mm
    holds it (an mm that mapped it keeps a reference until it exits, ``MMF_HUGE_ZERO_FOLIO``):
    the next huge zero PMD allocates it again (``thp_zero_page_alloc``).  The model
    allocates it once; ``holders`` are the model's mms that have mapped it, and
    ``EXTERNAL_HOLDER`` when a process outside the run held it at the run's start.
    """
    failed = model_counters(model.snapshot())["mthp.split_failed"] - before["mthp.split_failed"]
    total = int(first)
    for _ in range(shrinker_passes(failed, kernel.get("mthp.split_failed", 0)) - 1):
        total += int(model.apply(spec.ShrinkDeferred()))
    if not holders:
        model.st.huge_zero_allocated = False
    return total


def shrinker_passes(model_failed: int, kernel_failed: int) -> int:
    """How many passes of the deferred split shrinker ``drop_slab()`` made, as the program's
    folios show it: each pass fails again on each folio that failed in the model's one pass
    (``model_failed``), so the kernel's count of failed splits is a multiple of it.  One
    pass when nothing failed (then further passes change nothing) or when the kernel's count
    is not such a multiple (that difference then shows as a disagreement)."""
    if model_failed <= 0 or kernel_failed <= model_failed or kernel_failed % model_failed:
        return 1
    return kernel_failed // model_failed


def huge_zero_holders(holders: set[int], obs: Observation) -> set[int]:
    """The mms holding the huge zero folio after an op: those of ``holders`` still alive,
    and every mm that maps a huge zero PMD now (``mm_get_huge_zero_folio()`` at the read
    fault, or ``copy_huge_pmd()`` into a forked child).  Each op is one access, so no mm
    maps and unmaps it within one op unseen."""
    now = {mm_id for mm_id, m in obs.mms.items() if any(p.kind == "hzero" for _, p in m.pages)}
    return (holders & {*obs.mms, EXTERNAL_HOLDER}) | now


EXTERNAL_HOLDER = -1  # in ``holders``: a process outside the run holds the huge zero folio



def machine_facts(d: Disagreement) -> frozenset[str]:
    """What the machine shows about ``d`` once the run's processes are gone: for the kernel
    not allocating the huge zero folio where the model does, whether another process holds
    it (``live.huge_zero_folio_held_elsewhere``)."""
    if (d.observable == "vmstat.thp_zero_page_alloc" and d.kernel < d.model
            and live.huge_zero_folio_held_elsewhere()):
        return frozenset({HUGE_ZERO_HELD_ELSEWHERE})
    return frozenset()


def _restore(settings: live.Settings, what: str) -> None:
    """Put back what ``settings`` changed.  A failure is raised as KernelError, unless an
    error is already on its way out: then it is printed, and that error goes on."""
    problems = settings.restore()
    if not problems:
        return
    text = f"{what}: " + "; ".join(problems)
    if sys.exc_info()[1] is not None:
        print(f"pudthp: {text}", file=sys.stderr)
        return
    raise KernelError(text)


@dataclass
class Session:
    """A conformance session: the run lock, the settings saved and restored, debugfs."""

    ignore: frozenset[str] = frozenset()  # observable classes passed over
    settings: live.Settings = field(default_factory=live.Settings)
    thp_disable_was: int = 0
    _split_problem: str | None = None
    _split_probed: bool = False

    def split_problem(self) -> str | None:
        """Why ``split_folio`` cannot run here (None: it can)."""
        if not self._split_probed:
            self._split_problem = live.split_huge_pages_usable(self.settings)
            self._split_probed = True
        return self._split_problem

    def check(self, program: Program) -> None:
        """Raise CannotRun for an op this session cannot do."""
        check_ops(program)
        for i, op in enumerate(program.ops):
            if isinstance(op, spec.SplitFolio) and self.split_problem() is not None:
                raise CannotRun(f"op {i} (split_folio): {self.split_problem()}")

    def __enter__(self) -> Session:
        live.check_machine()
        self.tools = live.RunTools.open()  # before anything is changed: it may refuse
        self._lock = live.run_lock()
        try:
            self._lock.__enter__()
        except BaseException:
            self.tools.close()
            raise
        self._signals = live.signals_raise()
        self._signals.__enter__()
        try:
            # what a killed run left changed is put back before anything is saved
            pid, restored = live.restore_recorded()
            if pid is not None:
                print(f"pudthp: restored what a killed conformance run (pid {pid}) left: "
                      + (", ".join(restored) or "nothing had changed"), file=sys.stderr)
            self.settings.record = live.SettingsRecord()
            # The controller itself never gets a THP, so the servers it forks inherit none.
            self.thp_disable_was = k.prctl(k.PR_GET_THP_DISABLE)
            k.prctl(k.PR_SET_THP_DISABLE, 1)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            try:
                _restore(self.settings, "could not restore")
            finally:
                k.prctl(k.PR_SET_THP_DISABLE, self.thp_disable_was)
        finally:
            self._signals.__exit__(None, None, None)
            self._lock.__exit__(None, None, None)
            self.tools.close()

    def run(self, program: Program, on_step: StepHook | None = None) -> ConformRun:
        """Configure the kernel for ``program`` and run it; a difference counts only when a
        second (or third) run from scratch shows it again with the same values."""
        self.check(program)
        live.apply_config(self.settings, kernel_config(program.config))
        runs = [self._run_with_swap(program, on_step)]
        if not runs[0].items:
            return runs[0]
        while len(runs) < 3:
            runs.append(self._run_with_swap(program, None))
            if not runs[-1].items:
                break  # a clean run: the differences before were not the program's
            common = [d for d in runs[-1].items
                      if any(d in r.items for r in runs[:-1])]
            if common:
                out = runs[0]
                out.disagreement = min(common, key=lambda d: d.op_index)
                out.runs = len(runs)
                out.facts = machine_facts(out.disagreement)
                return out
        out = runs[-1] if not runs[-1].items else runs[0]
        out.runs = len(runs)
        for r in runs:
            for d in r.items:
                out.noise.append(f"not repeated by another run: op {d.op_index} "
                                 f"{d.observable} kernel {d.kernel!r} model {d.model!r}")
        return out

    def _run_with_swap(self, program: Program, on_step: StepHook | None) -> ConformRun:
        swap = live.Settings(record=self.settings.record)
        try:
            live.setup_swap(swap, program.config.swap_capacity)
            return run_once(program, self.tools, on_step, self.ignore)
        finally:
            _restore(swap, "could not remove the swap device")


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------


def describe(d: Disagreement, program: Program) -> str:
    op = program.ops[d.op_index] if 0 <= d.op_index < len(program.ops) else None
    where = f"op {d.op_index} ({spec.op_str(op)})" if op is not None else "before the first op"
    return (f"{where}: {d.observable}: kernel {json.dumps(d.kernel)}, "
            f"model {json.dumps(d.model)}")


def signature(d: Disagreement, program: Program) -> str:
    """The op kind (``known.op_key``) and observable class of a disagreement, never a value
    or an id: one kernel behaviour, one signature."""
    op = program.ops[d.op_index] if 0 <= d.op_index < len(program.ops) else None
    return f"{op_key(op)}:{d.cls}"


RandomProgram = Callable[[int, int, int, bool], Program]
"""``(seed, index, n_ops, split_folio) -> program``: the generator of ``--random`` runs
(``fuzz.gen.random_pmd_program``, handed in by the command line)."""

# Exit statuses of ``pudthp conform``
EXIT_AGREE = 0  # agree, or only known disagreements (without --strict)
EXIT_DISAGREE = 1  # a disagreement of a kind no explanation fits (any, with --strict)
EXIT_USAGE = 2  # bad input or usage
EXIT_CANNOT_RUN = 4  # this machine cannot run it (the kselftest skip code, KSFT_SKIP)


def cmd_conform(program_path: str | None, report: str | None, random_n: int | None,
                seed: int, n_ops: int, save_dir: str | None, quiet: bool,
                ignore: frozenset[str] = frozenset(),
                random_program: RandomProgram | None = None, strict: bool = False) -> int:
    """``pudthp conform``; returns the exit status (``EXIT_*``)."""
    program: Program | None = None
    if random_n is None:
        assert program_path is not None
        try:
            program = load_program_file(program_path)
        except ProgramError as e:
            print(f"pudthp: error: {' '.join(str(e).split())}", file=sys.stderr)
            return EXIT_USAGE
    try:
        if program is None:
            assert random_program is not None
            assert random_n is not None
            return _cmd_random(random_n, seed, n_ops, save_dir, report, ignore,
                               random_program, strict)
        assert program_path is not None
        program = pmd_level_config(program, raw_config_keys(program_path))
        return _cmd_one(program, program_path, report, quiet, ignore, strict)
    except live.Interrupted as e:
        print(f"pudthp: interrupted ({e}); the kernel's settings were restored",
              file=sys.stderr)
        return 130
    except (CannotRun, KernelError) as e:
        print(f"pudthp: cannot run here: {' '.join(str(e).split())}")
        return EXIT_CANNOT_RUN
    except OSError as e:  # a /proc, /sys or device file the kernel refused
        where = f"{e.filename}: " if e.filename else ""
        print(f"pudthp: cannot run here: {where}{e.strerror or e}")
        return EXIT_CANNOT_RUN
    except Exception as e:  # a bug of the harness: still one line, naming where
        tb = traceback.extract_tb(e.__traceback__)
        where = f" at {tb[-1].filename}:{tb[-1].lineno}" if tb else ""
        print(f"pudthp: cannot run here: internal error {type(e).__name__}: {e}{where}")
        return EXIT_CANNOT_RUN


def _cmd_one(program: Program, path: str, report: str | None, quiet: bool,
             ignore: frozenset[str], strict: bool) -> int:
    check_ops(program)
    width = max(3, len(str(len(program.ops) - 1)))

    def show(i: int, op: Op, kres: Result, mres: Result) -> None:
        same = "" if kres == mres else f"  (model {mres})"
        print(f"{i:>{width}} {spec.op_str(op)} -> {kres}{same}", flush=True)

    with Session(ignore) as session:
        run = session.run(program, None if quiet else show)
    for note in run.noise:
        print(f"note: {note}")
    d = run.disagreement
    kind = None if d is None else known_kind(d, program, run.facts)
    if report:
        _write_json(report, {"format": "pudthp-conform-report/1", "program": path,
                             "config": program.config.to_json(), **run.to_json(),
                             "known": None if kind is None else
                             {"kind": kind, "reason": KNOWN[kind].reason}})
    if d is None:
        print(f"agree: {len(program.ops)} ops, every observable the same")
        return EXIT_AGREE
    if kind is None:
        print(f"DISAGREE {describe(d, program)}")
        print(f"  (seen in {run.runs} runs from scratch; no known explanation fits)")
        return EXIT_DISAGREE
    print(f"known disagreement {kind}: {describe(d, program)}")
    print(f"  (seen in {run.runs} runs from scratch; the ops after it were not compared)")
    print(f"  known: {KNOWN[kind].reason}")
    return EXIT_DISAGREE if strict else EXIT_AGREE


def _cmd_random(n: int, seed: int, n_ops: int, save_dir: str | None,
                report: str | None, ignore: frozenset[str],
                random_program: RandomProgram, strict: bool) -> int:
    signatures: dict[str, list[int]] = {}
    known: dict[str, str] = {}  # signature -> the KNOWN name of its explanation
    unexplained: set[str] = set()  # signatures with a program no explanation fits
    agreed = 0
    explained = 0  # programs whose disagreement is a known one
    noisy = 0
    entries: list[dict[str, Any]] = []
    with Session(ignore) as session:
        split_problem = session.split_problem()
        if split_problem is not None:
            print(f"note: no split_folio ops: {split_problem}")
        for i in range(n):
            program = random_program(seed, i, n_ops, split_problem is None)
            run = session.run(program)
            if run.noise:
                noisy += 1
            kind: str | None = None
            if run.disagreement is None:
                agreed += 1
                status = "agree"
            else:
                sig = signature(run.disagreement, program)
                signatures.setdefault(sig, []).append(i)
                kind = known_kind(run.disagreement, program, run.facts)
                if kind is None:
                    unexplained.add(sig)
                    status = f"DISAGREE {sig}: {describe(run.disagreement, program)}"
                else:
                    explained += 1
                    known.setdefault(sig, kind)
                    status = (f"known {kind} {sig}: "
                              f"{describe(run.disagreement, program)}")
                if save_dir:
                    os.makedirs(save_dir, exist_ok=True)
                    name = os.path.join(save_dir, f"conform_{seed}_{i}.json")
                    with open(name, "w", encoding="utf-8") as f:
                        f.write(dump_program(program))
            print(f"{i:>4} {status}", flush=True)
            entries.append({"index": i, "program": program_to_json(program), **run.to_json(),
                            "known": kind})

    def pct(x: int) -> str:
        return f"{100.0 * x / max(n, 1):.1f}%"

    print(f"agreement: {agreed}/{n} programs ({pct(agreed)}), seed {seed}"
          + (f", {noisy} with noise noted" if noisy else ""))
    print(f"unexplained kinds only: {agreed + explained}/{n} programs "
          f"({pct(agreed + explained)}) agree or disagree only in a known way")
    for sig, idx in sorted(signatures.items(), key=lambda kv: -len(kv[1])):
        tag = "DISAGREE" if sig in unexplained else "known"
        print(f"  {len(idx):>4} x {tag} {sig}  (programs {', '.join(map(str, idx[:8]))}"
              f"{', ...' if len(idx) > 8 else ''})")
        if sig in known:
            print(f"         known {known[sig]}: {KNOWN[known[sig]].reason}")
    if report:
        _write_json(report, {"format": "pudthp-conform-random/1", "seed": seed, "n": n,
                             "agreed": agreed, "explained": explained,
                             "signatures": signatures,
                             "known": {sig: known[sig] for sig in sorted(known)},
                             "unexplained": sorted(unexplained), "runs": entries})
    if unexplained or (strict and agreed < n):
        return EXIT_DISAGREE
    return EXIT_AGREE


def _write_json(path: str, data: dict[str, Any]) -> None:
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.write("\n")
    except OSError as e:
        raise KernelError(f"cannot write report {path}: {e.strerror or e}") from None
