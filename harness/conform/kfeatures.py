"""Kernel-observation features: what a kernel campaign saw the live kernel do, per op kind
(issue 22, item 2).  There is no kcov here; what steers a kernel campaign besides the
model-state features of ``harness.coverage`` is what the kernel showed after each op:

- ``OP:vmstat.X`` / ``OP:mthp.X``: the op moved that ``/proc/vmstat`` counter or that
  ``hugepages-2048kB/stats`` counter (the compared ones, ``observe.VMSTAT_COMPARED`` and
  ``MTHP_COMPARED``);
- ``OP:page=KIND``: after the op, a page of the op's own range (the page an access
  touched; a range op's range; every page of the processes a fork, a shrinker run or an
  unpin concerns) is mapped that way: ``pte``, ``pmd`` (a PMD leaf), ``zero``, ``hzero``
  (the huge zero PMD) or ``swap`` (``PAGEMAP_SCAN``);
- ``OP:mapcount=N``: such a page, present and not the zero page, has that mapcount
  (``/proc/kpagecount``, ``folio_precise_page_mapcount``): 1, 2, 3 or ``4+`` (the first
  page of each run of pages alike, up to ``MAX_LOOKS`` runs);
- ``OP:fault=none|minor|major|sigsegv`` for ``read``, ``write`` and ``pin``: whether the
  access faulted, a major fault being a read from swap (the process's ``minflt`` and
  ``majflt`` over the op).

``OP`` is the op kind, ``madvise.ADVICE`` for madvise (``known.op_key``).  The catalogue
(``NAMES``) is fixed, so the atheris target can give every feature a counter of its own; a
PMD-level campaign can never reach some of them (an mmap moving ``pswpin``), and the table
lists only how many were never hit.  ``KFeatures`` counts one program's features;
``KTally`` adds programs up and prints the table ``pudthp fuzz --impl kernel`` and
``pudthp coverage --impl kernel`` show.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from harness.conform import kernel as k
from harness.conform import live
from harness.conform.known import op_key
from harness.conform.observe import MTHP_COMPARED, VMSTAT_COMPARED
from harness.coverage import Tally
from pudthp_ref import spec
from pudthp_ref.spec import Op

if TYPE_CHECKING:
    from harness.conform.compare import KernelSide

OP_KEYS: tuple[str, ...] = tuple(
    x for kind in spec.OP_TYPES
    for x in ([f"madvise.{a}" for a in spec.ADVICES] if kind == "madvise" else [kind]))
PAGE_KINDS: tuple[str, ...] = ("pte", "pmd", "zero", "hzero", "swap")
MAPCOUNTS: tuple[str, ...] = ("1", "2", "3", "4+")
FAULTS: tuple[str, ...] = ("none", "minor", "major", "sigsegv")
ACCESS_OPS = frozenset({"read", "write", "pin"})
WHATS: tuple[str, ...] = (
    *(f"vmstat.{n}" for n in VMSTAT_COMPARED),
    *(f"mthp.{n}" for n in MTHP_COMPARED),
    *(f"page={n}" for n in PAGE_KINDS),
    *(f"mapcount={n}" for n in MAPCOUNTS),
    *(f"fault={n}" for n in FAULTS),
)
NAMES: tuple[str, ...] = tuple(f"{o}:{w}" for o in OP_KEYS for w in WHATS
                               if not w.startswith("fault=") or o in ACCESS_OPS)
INDEX: dict[str, int] = {name: i for i, name in enumerate(NAMES)}
N_KFEATURES = len(NAMES)
MAX_LOOKS = 32  # runs of pages whose mapcount is read after one op


@dataclass(frozen=True, slots=True)
class Look:
    """What ``op_look`` saw after an op: the mapping kinds and the mapcount classes."""

    kinds: frozenset[str]
    mapcounts: frozenset[str]


def mapcount_class(n: int) -> str:
    return str(n) if n < 4 else "4+"


def _focus(op: Op, space: int) -> tuple[int, int]:
    """The pages of the op's own range, as ``[start, end)``."""
    if isinstance(op, spec.Read | spec.Write | spec.Pin | spec.SplitFolio):
        return op.addr, op.addr + 1
    if isinstance(op, spec.Mmap | spec.Munmap | spec.Mprotect | spec.Madvise | spec.Migrate):
        return op.start, op.start + op.npages
    return 0, space


def op_look(kside: KernelSide, op: Op) -> Look:
    """The mapping kinds and mapcount classes of the op's own pages after it (see the
    module docstring): one ``PAGEMAP_SCAN`` per process concerned and a pagemap and
    kpagecount read per run of pages alike."""
    ex = kside.ex
    if isinstance(op, spec.ShrinkDeferred | spec.Unpin):
        servers = [s for s in ex.servers if s.alive]
    elif isinstance(op, spec.Fork):
        servers = [s for s in (ex.server(op.mm), ex.servers[-1]) if s is not None and s.alive]
    elif isinstance(op, spec.Exit | spec.FailAlloc):
        servers = []
    else:
        srv = ex.server(op.mm)
        servers = [srv] if srv is not None else []
    lo, hi = _focus(op, kside.space)
    lo, hi = max(0, lo), min(hi, kside.space)
    kinds: set[str] = set()
    counts: set[str] = set()
    looks = 0
    for srv in servers:
        if hi <= lo:
            break
        base = live.WINDOW_BASE
        regions = k.pagemap_scan(srv.pagemap_fd, base + lo * k.PAGE_SIZE,
                                 base + hi * k.PAGE_SIZE)
        for start, _, cats in regions:
            kind = _kind(cats)
            if kind is None:
                continue
            kinds.add(kind)
            if kind in ("pte", "pmd") and looks < MAX_LOOKS:
                looks += 1
                pfn = k.pagemap_entries(srv.pagemap_fd, start, 1)[0] & k.PM_PFN_MASK
                if pfn:
                    n = k.read_u64s(kside.frames.count_fd, pfn, 1)[0]
                    counts.add(mapcount_class(n))
    return Look(frozenset(kinds), frozenset(counts))


def _kind(cats: int) -> str | None:
    if cats & k.PAGE_IS_PRESENT:
        if cats & k.PAGE_IS_PFNZERO:
            return "hzero" if cats & k.PAGE_IS_HUGE else "zero"
        return "pmd" if cats & k.PAGE_IS_HUGE else "pte"
    if cats & k.PAGE_IS_SWAPPED:
        return "swap"
    return None


def fault_class(op: Op, result: object, faults: tuple[int, int] | None) -> str | None:
    if op.KIND not in ACCESS_OPS:
        return None
    if result == spec.SIGSEGV:
        return "sigsegv"
    if faults is None:
        return None
    minor, major = faults
    return "major" if major > 0 else "minor" if minor > 0 else "none"


class KFeatures:
    """The kernel-observation features of one program, op by op (``hits``: a count per
    catalogue entry)."""

    def __init__(self) -> None:
        self.hits: list[int] = [0] * N_KFEATURES
        self.ops = 0

    def reset(self) -> None:
        self.hits = [0] * N_KFEATURES
        self.ops = 0

    def add_op(self, op: Op, counters: dict[str, int], look: Look | None,
               faults: tuple[int, int] | None, result: object = None) -> None:
        self.ops += 1
        key = op_key(op)
        names = [f"{key}:{c}" for c, d in counters.items() if d]
        if look is not None:
            names += [f"{key}:page={n}" for n in look.kinds]
            names += [f"{key}:mapcount={n}" for n in look.mapcounts]
        fault = fault_class(op, result, faults)
        if fault is not None:
            names.append(f"{key}:fault={fault}")
        for name in names:
            i = INDEX.get(name)
            if i is not None:
                self.hits[i] += 1

    def hit_names(self) -> dict[str, int]:
        return {NAMES[i]: n for i, n in enumerate(self.hits) if n}


class KTally(Tally):
    """``harness.coverage.Tally`` over the kernel-observation catalogue (``NAMES``)."""

    NAMES: ClassVar[tuple[str, ...]] = NAMES

    def hit_names(self) -> set[str]:
        return {NAMES[i] for i, n in enumerate(self.hits) if n}

    def table(self, title: str = "kernel-observation features") -> str:
        """Every feature hit with its hits and programs, then how many of each op kind's
        were never hit (many cannot be: the catalogue is every op kind times every
        observation)."""
        hit = self.covered()
        lines = [f"{title}: {self.programs} programs, {self.ops} ops; {hit}/{N_KFEATURES} "
                 "features hit"]
        width = max(len(name) for name in NAMES)
        lines.append(f"  {'feature':<{width}}  {'hits':>9}  {'programs':>9}")
        for i, name in enumerate(NAMES):
            if self.hits[i]:
                lines.append(f"  {name:<{width}}  {self.hits[i]:>9}  "
                             f"{self.programs_hit[i]:>9}")
        missing: dict[str, int] = {}
        for i, name in enumerate(NAMES):
            if not self.hits[i]:
                key = name.split(":")[0]
                missing[key] = missing.get(key, 0) + 1
        lines.append("never hit, per op kind: " + (", ".join(
            f"{key} {n}" for key, n in missing.items()) if missing else "none"))
        return "\n".join(lines) + "\n"
