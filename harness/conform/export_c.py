"""``pudthp export-c``: a program as one self-contained C file, a kernel selftest in the form
``tools/testing/selftests/mm`` uses, that runs the program on the live kernel and checks what
the reference model predicts (issue 14).

The C file does what ``pudthp conform`` does (``harness.conform.live`` and ``compare``): one
process per model mm, model page ``v`` at ``WINDOW_BASE + v * 4096``, the same settings
saved, set and restored, the same LRU drain before every op, the same observables after
every op (``harness.conform.observe``: VMAs, smaps ``Rss``/``AnonHugePages``/``Swap``,
``PAGEMAP_SCAN`` and pagemap bits, kpageflags/kpagecount, first words, the deltas of
``/proc/vmstat`` and ``hugepages-2048kB/stats``) and the same rules for global counters
(a counter the kernel counted less often than the model is the program's; any difference
counts only when a run from scratch repeats it).  Known disagreements (``compare.KNOWN``)
are reported as ``# known:`` and do not fail; one that rests on a machine fact
(``Known.needs``) only when the C file's check after its runs finds the fact, as
``compare.machine_facts`` does for ``pudthp conform``.

What the model expects is computed here, at export time, by stepping ``pudthp_ref`` through
the program exactly as conform's ``run_once`` steps it (``compare.ModelSide``), and
written into the C text: one commented block per op naming the op and what the model
expects after it, with the per-page expectations as run-length tables.  Two things only the
kernel shows are decided in C by conform's own rules, from what the model says for each
case: whether a process outside the run holds the huge zero folio at a run's start (the
model is stepped both ways; the C file probes as ``live.huge_zero_folio_held_elsewhere``
does and picks the counters of that case), and how many passes of the deferred split
shrinker ``drop_caches`` made (the model's ``shrink_deferred`` is also stepped as if the
kernel had counted two and three passes' failed splits, ``model_drop_slab``; the C file
reads the count off the kernel's failed splits, ``shrinker_passes``, and adds what each
further pass adds).

A *PUD program* (``pud_enabled`` set to anything but ``never`` in the file) needs PUD THP:
its C file skips (exit 4) on a kernel without ``hugepages-1048576kB``.  On a kernel with it,
it checks results, VMAs (``/proc/PID/maps``) and counters only: smaps and pagemap are page
walks without a ``pud_entry``, which split a PUD leaf (``walk_pud_range``), so reading them
would change what is being checked.

Programs the live kernel cannot express are refused with one line (exit 2): another
geometry than x86_64, ``fail_alloc`` (no per-order allocation-failure injection), a range
past the model's address space, ``split_folio`` in a PUD program (telling ``EINVAL`` from
``EBUSY`` needs a page walk).  What only some machines lack (root, PMD or PUD THP, a
second NUMA node for ``migrate``, a writable debugfs for ``split_folio``, io_uring for
``pin``, a free zram device for swap) is checked by the C file when it runs: it skips.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from importlib import resources
from typing import Any

from harness.conform import live
from harness.conform.compare import (
    HUGE_ZERO_HELD_ELSEWHERE,
    KNOWN,
    UNSUPPORTED_OPS,
    X86_64_P,
    ModelSide,
    known_kind,
    live_gap,
)
from harness.conform.observe import (
    GLOBAL_STATE,
    MTHP_COMPARED,
    VMSTAT_COMPARED,
    Disagreement,
    MmObs,
    PageObs,
    canonical,
    model_counters,
)
from harness.program import dump_program
from pudthp_ref import spec
from pudthp_ref.spec import Config, Op, Program, PudThpError, Result

THP_DIR = "/sys/kernel/mm/transparent_hugepage"
PMD_STATS = f"{THP_DIR}/hugepages-2048kB/stats"
PUD_STATS = f"{THP_DIR}/hugepages-1048576kB/stats"
# The PUD-level events of the model, compared for PUD programs where the kernel has them
VMSTAT_PUD: tuple[str, ...] = ("thp_fault_alloc_pud", "thp_fault_fallback_pud", "thp_split_pud")

TEMPLATE = "reproducer.c"
PROGRAM_MARK = "/* @PUDTHP_PROGRAM@ */\n"
KSELFTEST_MARK = "/* @PUDTHP_KSELFTEST@ */\n"
C_INT_MAX = (1 << 31) - 1  # mm and pin ids are C ints in the reproducer's tables


class ExportError(Exception):
    """The program cannot be expressed as a live-kernel reproducer; the message says why."""


class ModelStops(ExportError):
    """The reference model itself fails at op ``op_index`` (a finding of the model): the
    ops before it can still be exported (``harness.conform.export_cmd``)."""

    def __init__(self, op_index: int, message: str) -> None:
        super().__init__(message)
        self.op_index = op_index


# --------------------------------------------------------------------------------------
# Which programs, at which config
# --------------------------------------------------------------------------------------


def resolve(program: Program, explicit: dict[str, Any]) -> tuple[Program, bool]:
    """The program as the reproducer runs it, and whether it needs PUD THP.

    As ``pudthp conform``: geometry and ``pud_enabled`` left at their defaults become
    x86_64 and ``never``.  Another geometry cannot run on the kernel (the window is laid
    out for P = 512); ``pud_enabled`` set explicitly to anything but ``never`` makes a PUD
    program.
    """
    if "geometry" in explicit and program.config.geometry != X86_64_P:
        raise ExportError(f"geometry P={program.config.geometry}: a kernel reproducer runs "
                          "at x86_64 geometry (P=512)")
    pud = "pud_enabled" in explicit and program.config.pud_enabled != "never"
    fields = {n: getattr(program.config, n) for n in Config.KEYS}
    fields["geometry"] = X86_64_P
    if not pud:
        fields["pud_enabled"] = "never"
    return Program(Config(**fields), program.ops, program.meta), pud


def check_expressible(program: Program, pud: bool) -> None:
    """Raise ExportError for an op the live kernel (or an id the C file) cannot hold."""
    gap = live_gap(program)
    if gap is not None:
        raise ExportError(gap)
    space = program.config.geom.space
    for i, op in enumerate(program.ops):
        name = "pin" if isinstance(op, spec.Unpin) else "mm"  # a larger id names another
        if getattr(op, name, 0) > C_INT_MAX:
            raise ExportError(f"op {i} ({op.KIND}): {name} id {getattr(op, name)} is over "
                              f"{C_INT_MAX}, more than the C file's int can hold")
        if isinstance(op, spec.FailAlloc):
            raise ExportError(f"op {i} (fail_alloc): {UNSUPPORTED_OPS['fail_alloc']}")
        if isinstance(op, spec.SplitFolio) and pud:
            raise ExportError(f"op {i} (split_folio): in a PUD program its result needs a "
                              "page walk, which would split the PUD leaf")
        ranged = isinstance(op, spec.Mmap | spec.Munmap | spec.Mprotect | spec.Madvise
                            | spec.Migrate)
        if ranged and op.start + op.npages > space:  # type: ignore[union-attr]
            raise ExportError(f"op {i} ({op.KIND}): range ends past the model's address "
                              f"space ({space} pages); the live kernel has no such limit")


# --------------------------------------------------------------------------------------
# What the model expects
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PageRun:
    """``n`` pages from ``vpn`` that the model shows alike: each next page is the one
    ``next_page`` predicts (the next index of a large folio, the next order-0 folio, the
    next swap slot, or the same for pages with no folio)."""

    vpn: int
    n: int
    page: PageObs


@dataclass(frozen=True, slots=True)
class MmExpect:
    mm: int
    vmas: tuple[tuple[int, int, str, tuple[str, ...]], ...]
    rss: int
    anon_huge: int
    swap: int
    runs: tuple[PageRun, ...]


@dataclass(frozen=True, slots=True)
class Counter:
    """A global counter: its name in the comparison, the file (and the ``/proc/vmstat``
    field) it is read from, whether it is a gauge or global state (``GLOBAL_STATE``), and
    whether it is only watched for activity outside the program (``live.NOISE_*``)."""

    name: str
    path: str
    field: str
    global_state: bool
    noise: bool


Deltas = tuple[tuple[str, int], ...]  # (counter, delta), non-zero ones, in counter order


@dataclass(frozen=True, slots=True)
class KnownHere:
    """A disagreement of ``compare.KNOWN`` that applies at an op: the observable class, the
    reason (docs/conform.md), and the machine fact it needs (``Known.needs``; None: it needs
    none)."""

    cls: str
    reason: str
    needs: str | None = None


@dataclass(frozen=True, slots=True)
class Step:
    op: Op
    result: Result
    mms: tuple[MmExpect, ...]  # the live mms after the op, by id
    counters: Deltas  # the model's deltas when nothing outside the run holds the huge zero folio
    counters_held: Deltas | None  # ... when a process outside it does at the start (None: same)
    per_pass: Deltas  # shrink_deferred: what each further pass of the shrinker adds
    known: tuple[KnownHere, ...]  # known to disagree here


@dataclass(frozen=True)
class Reproducer:
    """Everything the C file says: the program as run, and the model's expectations."""

    name: str
    program: Program
    pud: bool
    counters: tuple[Counter, ...]
    steps: tuple[Step, ...]
    nmms: int


PRESENT_KINDS = ("pte", "pmd")


def next_page(p: PageObs) -> PageObs:
    """The page a run continues with: a large folio's next page, the next order-0 folio
    label, the next swap-slot label; pages without a folio or slot repeat."""
    if p.kind in PRESENT_KINDS:
        assert p.folio is not None
        assert p.index is not None
        assert p.order is not None
        if p.order > 0:
            return PageObs(p.kind, p.folio, p.index + 1, p.order, p.mapcount, p.content)
        return PageObs(p.kind, p.folio + 1, p.index, p.order, p.mapcount, p.content)
    if p.kind == "swap":
        assert p.slot is not None
        return PageObs("swap", slot=p.slot + 1)
    return p


def page_runs(pages: list[tuple[int, PageObs]]) -> tuple[PageRun, ...]:
    """Pages (by vpn, labels canonical) as runs of ``next_page`` steps."""
    runs: list[PageRun] = []
    last: PageObs | None = None
    for vpn, p in pages:
        _check_fields(vpn, p)
        if runs and last is not None and runs[-1].vpn + runs[-1].n == vpn and \
                next_page(last) == p:
            runs[-1] = PageRun(runs[-1].vpn, runs[-1].n + 1, runs[-1].page)
        else:
            runs.append(PageRun(vpn, 1, p))
        last = p
    return tuple(runs)


def expand_runs(runs: tuple[PageRun, ...]) -> list[tuple[int, PageObs]]:
    """The pages of ``runs``, as the C file's ``expected_page`` rebuilds them."""
    out: list[tuple[int, PageObs]] = []
    for r in runs:
        p = r.page
        for j in range(r.n):
            out.append((r.vpn + j, p))
            p = next_page(p)
    return out


_FIELDS_OF_KIND: dict[str, tuple[str, ...]] = {
    "none": (),
    "pte": ("folio", "index", "order", "mapcount", "content"),
    "pmd": ("folio", "index", "order", "mapcount", "content"),
    "zero": ("content",),
    "hzero": ("content",),
    "swap": ("slot",),
}


def _check_fields(vpn: int, p: PageObs) -> None:
    """The C tables hold exactly these fields per kind; anything else is a projection the
    C file could not express."""
    want = _FIELDS_OF_KIND.get(p.kind)
    have = tuple(f for f in ("folio", "index", "order", "mapcount", "content", "slot")
                 if getattr(p, f) is not None)
    if want is None or have != want:
        raise ExportError(f"page {vpn}: the model shows a {p.kind!r} page with fields "
                          f"{have}, which the C tables cannot express")


def counter_table(pud: bool) -> tuple[Counter, ...]:
    """The compared counters in ``compare_counters`` order, then the PUD-level ones for a
    PUD program, then those only watched for outside activity."""
    out = [Counter(f"vmstat.{n}", "/proc/vmstat", n, f"vmstat.{n}" in GLOBAL_STATE, False)
           for n in VMSTAT_COMPARED]
    out += [Counter(f"mthp.{n}", f"{PMD_STATS}/{n}", "", f"mthp.{n}" in GLOBAL_STATE, False)
            for n in MTHP_COMPARED]
    if pud:
        out += [Counter(f"vmstat.{n}", "/proc/vmstat", n, False, False) for n in VMSTAT_PUD]
        out += [Counter(f"mthp_pud.{n}", f"{PUD_STATS}/{n}", "",
                        f"mthp.{n}" in GLOBAL_STATE, False) for n in MTHP_COMPARED]
    out += [Counter(f"vmstat.{n}", "/proc/vmstat", n, False, True) for n in live.NOISE_VMSTAT]
    out += [Counter(f"mthp.{n}", f"{PMD_STATS}/{n}", "", False, True) for n in live.NOISE_MTHP]
    return tuple(out)


def _model_counters(stats: dict[str, Any], pud: bool) -> dict[str, int]:
    """The compared counters of the model's stats, as absolute values."""
    out = model_counters({"stats": stats})
    if pud:
        out.update({f"vmstat.{n}": int(stats["vmstat"][n]) for n in VMSTAT_PUD})
        out.update({f"mthp_pud.{n}": int(stats["mthp"]["pud"][n]) for n in MTHP_COMPARED})
    return out


KNOWN_CLASSES: tuple[str, ...] = tuple(dict.fromkeys(c for k in KNOWN.values()
                                                     for c in k.classes))
# Every machine fact a KNOWN entry needs, and the C file's name of the check that tells it
FACTS: frozenset[str] = frozenset(k.needs for k in KNOWN.values() if k.needs is not None)
FACT_ENUM: dict[str, str] = {HUGE_ZERO_HELD_ELSEWHERE: "FACT_HUGE_ZERO_HELD_ELSEWHERE"}
FACT_TEXT: dict[str, str] = {
    HUGE_ZERO_HELD_ELSEWHERE: "another process holding the huge zero folio"}


def known_here(i: int, program: Program) -> tuple[KnownHere, ...]:
    """The observable classes ``compare.known_kind`` explains at op ``i``: first those it
    explains with no machine fact, then those it would explain with the facts the harness
    checks (the C file checks the fact after its runs, as ``pudthp conform`` does)."""
    out = []
    for cls in KNOWN_CLASSES:
        d = Disagreement(i, cls, None, None)
        name = known_kind(d, program) or known_kind(d, program, FACTS)
        if name is not None:
            out.append(KnownHere(cls, KNOWN[name].reason, KNOWN[name].needs))
    return tuple(out)


def _mm_expects(obs: dict[int, MmObs]) -> tuple[MmExpect, ...]:
    return tuple(MmExpect(mm_id, tuple(m.vmas), m.rss, m.anon_huge, m.swap,
                          page_runs(m.pages))
                 for mm_id, m in sorted(obs.items()))


def _pud_mm_expects(summary: dict[str, Any]) -> tuple[MmExpect, ...]:
    """A PUD program's expectation per live mm: its VMAs only (see the module docstring)."""
    return tuple(MmExpect(int(m[0]), tuple((int(s), int(e), str(p), tuple(f))
                                           for s, e, p, f in m[2]), 0, 0, 0, ())
                 for m in summary["mms"] if m[1])


@dataclass(frozen=True, slots=True)
class _Seen:
    """What the model shows after one op stepped by ``ModelSide``."""

    result: Result
    mms: tuple[MmExpect, ...]
    counters: dict[str, int]  # absolute values
    holders: frozenset[int]
    huge_zero: bool


def _step(side: ModelSide, i: int, op: Op, kernel: dict[str, int], pud: bool) -> _Seen:
    try:
        result = side.step(op, kernel)
    except PudThpError as e:
        raise ModelStops(i, f"op {i} ({op.KIND}): the reference model reports "
                         f"{' '.join(str(e).split())}: no expectation to export") from None
    if pud:
        mms = _pud_mm_expects(side.model.summary())
    else:
        assert side.projected is not None
        mms = _mm_expects(canonical(side.projected).mms)
    return _Seen(result, mms, _model_counters(side.model.summary()["stats"], pud),
                 frozenset(side.holders), side.model.st.huge_zero_allocated)


def _deltas(compared: list[str], before: dict[str, int], after: dict[str, int]) -> Deltas:
    return tuple((n, after[n] - before[n]) for n in compared if after[n] != before[n])


FAILED = "mthp.split_failed"  # the counter model_drop_slab reads the shrinker's passes from


def _per_pass(pre: ModelSide, i: int, op: Op, pud: bool, compared: list[str],
              before: dict[str, int], one: _Seen) -> Deltas:
    """What each further pass of the deferred split shrinker adds to ``shrink_deferred``
    (op ``i``; ``pre`` the model before it, ``one`` the op with the model's one pass).

    ``drop_caches`` makes as many passes as the machine's shrinkers keep freeing objects,
    which only the kernel shows: ``model_drop_slab`` repeats the model's pass as often as
    the kernel's failed splits say.  Here the op is stepped as if the kernel had counted the
    failures of two and of three passes; the C file applies the difference per pass to the
    count it sees.  That needs every further pass to be alike and to change nothing but
    counters, which is checked.
    """
    failed = one.counters[FAILED] - before[FAILED]
    if failed <= 0:
        return ()  # nothing failed: further passes change nothing (shrinker_passes is 1)
    seen = [one]
    for n in (2, 3):
        side = pre.clone()
        seen.append(_step(side, i, op, {FAILED: n * failed}, pud))
    per = _deltas(compared, seen[0].counters, seen[1].counters)
    same_state = all((s.result, s.mms, s.holders, s.huge_zero)
                     == (one.result, one.mms, one.holders, one.huge_zero) for s in seen)
    if not same_state or _deltas(compared, seen[1].counters, seen[2].counters) != per:
        raise ExportError(f"op {i} (shrink_deferred): in the model, a further pass of the "
                          "deferred split shrinker changes more than counters, or not the "
                          "same each time; the C file cannot express the kernel's passes")
    return per


def _model_line(program: Program, pud: bool, held_elsewhere: bool
                ) -> tuple[list[tuple[_Seen, Deltas, Deltas]], int]:
    """The model stepped through the program as ``pudthp conform`` steps it (``ModelSide``,
    one shrinker pass per ``shrink_deferred``), with or without a process outside the run
    holding the huge zero folio at the start: per op what it shows, its counter deltas and
    what a further shrinker pass adds; and how many mms the program creates."""
    side = ModelSide(program, held_elsewhere, project=not pud)
    compared = [c.name for c in counter_table(pud) if not c.noise]
    before = _model_counters(side.model.summary()["stats"], pud)
    out: list[tuple[_Seen, Deltas, Deltas]] = []
    for i, op in enumerate(program.ops):
        pre = side.clone() if isinstance(op, spec.ShrinkDeferred) else None
        seen = _step(side, i, op, {}, pud)
        per = _per_pass(pre, i, op, pud, compared, before, seen) if pre is not None else ()
        out.append((seen, _deltas(compared, before, seen.counters), per))
        before = seen.counters
    return out, len(side.model.summary()["mms"])


def expectations(program: Program, pud: bool) -> tuple[list[Step], int]:
    """Run the reference model on ``program`` as ``pudthp conform`` runs it: per op its
    result, the live mms it shows, the deltas of the global counters (with and without a
    process outside the run holding the huge zero folio at the start, which only the C
    file can tell), what each further shrinker pass adds, and the known disagreements that
    apply; and how many mms the program creates."""
    free, nmms = _model_line(program, pud, False)
    held, _ = _model_line(program, pud, True)
    steps: list[Step] = []
    for i, (op, (a, counters, per), (b, counters_held, per_held)) in enumerate(
            zip(program.ops, free, held, strict=True)):
        if (a.result, a.mms, per) != (b.result, b.mms, per_held):
            raise ExportError(f"op {i} ({op.KIND}): the model shows more than counters "
                              "change with the huge zero folio held elsewhere; the C file "
                              "cannot express it")
        steps.append(Step(op, a.result, a.mms, counters,
                          None if counters_held == counters else counters_held, per,
                          known_here(i, program)))
    return steps, nmms


def build(program: Program, pud: bool, name: str) -> Reproducer:
    check_expressible(program, pud)
    steps, nmms = expectations(program, pud)
    return Reproducer(name, program, pud, counter_table(pud), tuple(steps), nmms)


# --------------------------------------------------------------------------------------
# The C text
# --------------------------------------------------------------------------------------

OP_ENUM: dict[str, str] = {
    "mmap": "OP_MMAP", "munmap": "OP_MUNMAP", "mprotect": "OP_MPROTECT",
    "madvise": "OP_MADVISE", "read": "OP_READ", "write": "OP_WRITE", "fork": "OP_FORK",
    "exit": "OP_EXIT", "split_folio": "OP_SPLIT_FOLIO", "shrink_deferred": "OP_SHRINK_DEFERRED",
    "migrate": "OP_MIGRATE", "pin": "OP_PIN", "unpin": "OP_UNPIN",
}
PROT_ENUM = {"none": "PROT_NONE", "r": "PROT_READ", "rw": "PROT_READ | PROT_WRITE"}
ADVICE_ENUM = {"hugepage": "MADV_HUGEPAGE", "nohugepage": "MADV_NOHUGEPAGE",
               "dontneed": "MADV_DONTNEED", "pageout": "MADV_PAGEOUT"}
KIND_ENUM = {"none": "K_NONE", "pte": "K_PTE", "pmd": "K_PMD", "zero": "K_ZERO",
             "hzero": "K_HZERO", "swap": "K_SWAP"}
FLAG_ENUM = {"hugepage": "VMA_HG", "nohugepage": "VMA_NH"}


def c_string(text: str) -> str:
    """A C string literal of ``text``: ASCII, the rest in octal, ``?`` as ``\\?`` (trigraphs)."""
    out = []
    for ch in text:
        if ch in "\\\"?":
            out.append("\\" + ch)
        elif " " <= ch <= "~":
            out.append(ch)
        else:
            out.extend(f"\\{b:03o}" for b in ch.encode("utf-8", "surrogatepass"))
    return '"' + "".join(out) + '"'


def c_comment(text: str) -> str:
    """``text`` safe in a C block comment: printable ASCII (the rest as ``\\uXXXX``), no
    ``*/``, ``/*`` (-Wcomment) or ``??`` (-Wtrigraphs)."""
    safe = "".join(ch if " " <= ch <= "~" else f"\\u{ord(ch):04x}" if ord(ch) < 0x10000
                   else f"\\U{ord(ch):08x}" for ch in text)
    while "*/" in safe or "/*" in safe or "??" in safe:
        safe = safe.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?")
    return safe


def _vma_text(v: tuple[int, int, str, tuple[str, ...]], pud: bool) -> str:
    flags = "" if pud or not v[3] else " " + "+".join(v[3])
    return f"[{v[0]}, {v[1]}) {v[2]}{flags}"


def _describe_mm(m: MmExpect, pud: bool) -> str:
    vmas = ", ".join(_vma_text(v, pud) for v in m.vmas) or "none in the window"
    if pud:
        return f"VMAs {vmas}"
    return (f"VMAs {vmas}; Rss {m.rss}, AnonHugePages {m.anon_huge}, Swap {m.swap} "
            "(pages)")


def _describe_run(r: PageRun) -> str:
    p = r.page
    where = f"page {r.vpn}" if r.n == 1 else f"pages {r.vpn}-{r.vpn + r.n - 1}"
    if p.kind == "none":
        return f"{where}: not mapped"
    if p.kind in ("zero", "hzero"):
        what = "the zero page" if p.kind == "zero" else "the huge zero PMD"
        return f"{where}: {what}"
    if p.kind == "swap":
        return f"{where}: swapped out (slot {p.slot}{'..' if r.n > 1 else ''})"
    assert p.order is not None
    level = "PMD-mapped" if p.kind == "pmd" else "PTE-mapped"
    if p.order > 0:
        folio = f"folio {p.folio} (order {p.order}) from index {p.index}"
    elif r.n > 1:
        folio = f"order-0 folios {p.folio}-{(p.folio or 0) + r.n - 1}"
    else:
        folio = f"order-0 folio {p.folio}"
    if r.n == 1:
        holds = f", holds {p.content}"
    else:
        holds = f", each holds {p.content}" if p.content else ""
    return f"{where}: {level}, {folio}, mapcount {p.mapcount}{holds}"


def _mm_tables(rep: Reproducer, i: int, m: MmExpect, names: dict[MmExpect, str],
               out: list[str]) -> str:
    """The C arrays of one mm's expectation (or those of an earlier op showing the same);
    returns the name prefix."""
    if m in names:
        return names[m]
    prefix = f"op{i}_mm{m.mm}"
    names[m] = prefix
    out.append(f"static const struct vma_expect {prefix}_vmas[] = {{")
    for s, e, prot, flags in m.vmas:
        f = " | ".join(FLAG_ENUM[x] for x in flags) or "0"
        out.append(f"\t{{ {s}, {e}, {PROT_ENUM[prot]}, {f} }},")
    if not m.vmas:
        out.append("\t{ 0, 0, 0, 0 },  /* none (C wants one element) */")
    out.append("};")
    if rep.pud:
        return prefix
    out.append(f"static const struct page_run {prefix}_pages[] = {{")
    out.append("\t/*   vpn     pages  kind      folio  index  order  mapcount  content  "
               "slot */")
    for r in m.runs:
        p = r.page
        content = f"{p.content}ULL" if p.content is not None else "0"
        out.append(
            f"\t{{ {r.vpn:>7}, {r.n:>7}, {KIND_ENUM[p.kind] + ',':<8} "
            f"{_num(p.folio):>6}, {_num(p.index):>5}, {_num(p.order):>5}, "
            f"{_num(p.mapcount):>8}, {content:>7}, {_num(p.slot):>4} }},")
    if not m.runs:
        out.append("\t{ 0, 0, K_NONE, -1, -1, -1, -1, 0, -1 },  /* none */")
    out.append("};")
    return prefix


def _num(v: int | None) -> str:
    return "-1" if v is None else str(v)


def _op_fields(op: Op, nodes: int) -> str:
    """Designated initialisers of the op's own fields (a node the model's config does not
    have is -1)."""
    parts = [f".op = {OP_ENUM[op.KIND]}"]
    if hasattr(op, "mm"):
        parts.append(f".mm = {op.mm}")
    if isinstance(op, spec.Mmap | spec.Munmap | spec.Mprotect | spec.Madvise | spec.Migrate):
        parts += [f".start = {op.start}", f".npages = {op.npages}"]
    if isinstance(op, spec.Read | spec.Write | spec.SplitFolio | spec.Pin):
        parts.append(f".start = {op.addr}")
    if isinstance(op, spec.Mmap | spec.Mprotect):
        parts.append(f".arg = {PROT_ENUM[op.prot]}")
    if isinstance(op, spec.Madvise):
        parts.append(f".arg = {ADVICE_ENUM[op.advice]}")
    if isinstance(op, spec.Migrate):
        parts.append(f".arg = {op.node if op.node < nodes else -1}")
    if isinstance(op, spec.Unpin):
        parts.append(f".arg = {op.pin}")
    if isinstance(op, spec.Write):
        parts.append(f".value = {op.value}ULL")
    return ", ".join(parts)


def render_c(rep: Reproducer, kselftest: str | None = None) -> str:
    """The C file: the runtime (``reproducer.c``) with the program and its expectations
    written in where the template marks them.  With ``kselftest`` (the name of the THP
    settings header of a ``tools/testing/selftests/mm`` tree) the file is built there:
    its KTAP lines go through ``kselftest.h``'s helpers."""
    template = resources.files("harness.conform").joinpath(TEMPLATE).read_text("utf-8")
    head, mark, tail = template.partition(PROGRAM_MARK)
    if not mark or KSELFTEST_MARK not in head:
        raise RuntimeError(f"{TEMPLATE} lacks a mark")
    block = "" if kselftest is None else (
        "/* Built in tools/testing/selftests/mm: its KTAP helpers and THP settings */\n"
        "#define PUDTHP_KSELFTEST\n"
        '#include "../kselftest.h"\n'
        f'#include "{kselftest}"\n')
    head = head.replace(KSELFTEST_MARK, block)
    return _header(rep) + head + _program_text(rep) + tail


def _header(rep: Reproducer) -> str:
    p = rep.program
    kind = "PUD program: needs PUD THP" if rep.pud else "PMD level"
    lines = [
        "// SPDX-License-Identifier: GPL-2.0-only",
        "/*",
        f" * pudthp reproducer of {c_comment(rep.name)}: {len(p.ops)} ops, {rep.nmms} "
        f"process{'es' if rep.nmms != 1 else ''} ({kind}).",
        " *",
        " * Runs the program on the live kernel and checks, after every op, what the pudthp",
        " * reference model predicts (the expectations below were computed by the model when",
        " * this file was written by `pudthp export-c`).  Output is KTAP; exit status 0 pass,",
        " * 1 fail, 4 skip (with the reason: not root, no THP of the size needed, ...).",
        " *",
        " *   gcc -O2 -Wall -o repro repro.c && sudo ./repro",
        " *",
        " * It changes machine-wide settings (THP knobs, khugepaged, swap on zram0, debugfs)",
        " * and restores them at the end, on failure and on SIGINT/SIGTERM/SIGHUP; it holds",
        f" * {live.LOCK_PATH} while it runs, as `pudthp conform` does.",
        " *",
        " * The program, as the model ran it:",
        " *",
    ]
    lines += [f" *   {c_comment(line)}".rstrip() for line in dump_program(p).splitlines()]
    lines += [" */", ""]
    return "\n".join(lines) + "\n"


def _program_text(rep: Reproducer) -> str:
    p = rep.program
    cfg = p.config
    out: list[str] = []
    out.append("/* ------------------------------------------------------------------------"
               "-- */")
    out.append("/* The program and what the model expects after each op                    "
               "   */")
    out.append("/* ------------------------------------------------------------------------"
               "-- */")
    out.append("")
    out.append("static const struct program prog = {")
    out.append(f"\t.name = {c_string(rep.name)},")
    out.append(f"\t.nops = {len(p.ops)},")
    out.append(f"\t.nmms = {rep.nmms},")
    out.append(f"\t.pud = {int(rep.pud)},")
    out.append(f"\t.thp_enabled = {c_string(cfg.thp_enabled)},")
    out.append(f"\t.pmd_enabled = {c_string(cfg.pmd_enabled)},")
    out.append(f"\t.pud_enabled = {c_string(cfg.pud_enabled)},")
    out.append(f"\t.use_zero_page = {int(cfg.use_zero_page)},")
    out.append(f"\t.shrink_underused = {int(cfg.shrink_underused)},")
    out.append(f"\t.swap_pages = {cfg.swap_capacity}UL,")
    out.append(f"\t.window_pages = {cfg.geom.space}UL,")
    out.append(f"\t.split_folio = {int(any(isinstance(o, spec.SplitFolio) for o in p.ops))},")
    out.append(f"\t.pin = {int(any(isinstance(o, spec.Pin) for o in p.ops))},")
    nodes = [o.node for o in p.ops if isinstance(o, spec.Migrate) and o.node < cfg.nodes]
    out.append(f"\t.nodes = {max(nodes) + 1 if nodes else 0},")
    out.append("};")
    out.append("")
    out.append("/* The global counters: name, file, /proc/vmstat field, gauge or global state "
               "(1),")
    out.append(" * only watched for activity outside the program (1). */")
    out.append("static const struct counter_def counters[] = {")
    for c in rep.counters:
        out.append(f"\t{{ {c_string(c.name)}, {c_string(c.path)}, {c_string(c.field)}, "
                   f"{int(c.global_state)}, {int(c.noise)} }},")
    out.append("};")
    out.append("")
    reasons = list(dict.fromkeys(k.reason for s in rep.steps for k in s.known))
    out.append("/* Known disagreements (pudthp's harness/conform/compare.py KNOWN): reported "
               "as")
    out.append(" * `# known:`, never failing (one that needs a machine fact only when the "
               "check")
    out.append(" * after the runs finds it). */")
    out.append("static const char *const known_reasons[] = {")
    for r in reasons:
        out.append(f"\t{c_string(r)},")
    if not reasons:
        out.append("\t\"\",  /* none in this program */")
    out.append("};")
    out.append("")
    names: dict[MmExpect, str] = {}
    step_lines: list[str] = []
    for i, s in enumerate(rep.steps):
        out.extend(_step_block(rep, i, s, names, reasons))
        step_lines.append(f"\t{{ {c_string(spec.op_str(s.op))}, {_op_fields(s.op, cfg.nodes)},")
        extra = ""
        if s.counters_held is not None:
            extra += (f"\n\t  .counters_held = op{i}_counters_held, "
                      f".ncounters_held = {len(s.counters_held)},")
        if s.per_pass:
            extra += f"\n\t  .per_pass = op{i}_per_pass, .nper_pass = {len(s.per_pass)},"
        step_lines.append(f"\t  .result = {c_string(str(s.result))}, "
                          f"EXPECT(op{i}),{extra} }},")
    out.append("static const struct step steps[] = {")
    out.extend(step_lines)
    if not rep.steps:
        out.append("\t{ \"\", .op = OP_NONE },  /* no ops */")
    out.append("};")
    out.append("")
    return "\n".join(out) + "\n"


def _step_block(rep: Reproducer, i: int, s: Step, names: dict[MmExpect, str],
                reasons: list[str]) -> list[str]:
    out = ["/*", f" * op {i}: {spec.op_str(s.op)}", " *",
           f" * The model returns {s.result}."]
    for m in s.mms:
        if m in names:
            out.append(f" * mm {m.mm}: as after op {names[m].split('_')[0][2:]}.")
            continue
        out.append(f" * mm {m.mm}: {_describe_mm(m, rep.pud)}")
        if not rep.pud:
            shown = m.runs if len(m.runs) <= 12 else m.runs[:12]
            for r in shown:
                out.append(f" *   {_describe_run(r)}")
            if len(m.runs) > len(shown):
                out.append(f" *   ... {len(m.runs) - len(shown)} more runs in the table")
    if not s.mms:
        out.append(" * No process is left.")
    text = [f"Counters: {_deltas_text(s.counters)}."]
    if s.counters_held is not None:
        text.append("If a process outside the run holds the huge zero folio at the start "
                    f"(the model told it exists): {_deltas_text(s.counters_held)}.")
    if s.per_pass:
        text.append("Each further pass of the deferred split shrinker that drop_caches makes "
                    f"adds {_deltas_text(s.per_pass)} (the model's pass repeated).")
    if s.known:
        text.append("Known to disagree here: " + ", ".join(
            k.cls + ("" if k.needs is None else f" (only if the check after the runs finds "
                     f"{FACT_TEXT[k.needs]})") for k in s.known) + ".")
    for t in text:
        out.extend(" * " + line for line in textwrap.wrap(t, 86, break_on_hyphens=False))
    out.append(" */")
    prefixes = [_mm_tables(rep, i, m, names, out) for m in s.mms]
    out.append(f"static const struct mm_expect op{i}_mms[] = {{")
    for m, prefix in zip(s.mms, prefixes, strict=True):
        nvmas = len(m.vmas)
        runs = "NULL, 0" if rep.pud else f"{prefix}_pages, {len(m.runs)}"
        out.append(f"\t{{ {m.mm}, {prefix}_vmas, {nvmas}, {m.rss}, {m.anon_huge}, {m.swap}, "
                   f"{runs} }},")
    if not s.mms:
        out.append("\t{ -1, NULL, 0, 0, 0, 0, NULL, 0 },  /* none */")
    out.append("};")
    _deltas_table(f"op{i}_counters", s.counters, out)
    if s.counters_held is not None:
        _deltas_table(f"op{i}_counters_held", s.counters_held, out)
    if s.per_pass:
        _deltas_table(f"op{i}_per_pass", s.per_pass, out)
    out.append(f"static const struct known_here op{i}_known[] = {{")
    for k in s.known:
        fact = "FACT_NONE" if k.needs is None else FACT_ENUM[k.needs]
        out.append(f"\t{{ {c_string(k.cls)}, {reasons.index(k.reason)}, {fact} }},")
    if not s.known:
        out.append("\t{ NULL, 0, FACT_NONE },  /* none */")
    out.append("};")
    out.append(f"#define op{i}_nmms {len(s.mms)}")
    out.append(f"#define op{i}_ncounters {len(s.counters)}")
    out.append(f"#define op{i}_nknown {len(s.known)}")
    out.append("")
    return out


def _deltas_text(deltas: Deltas) -> str:
    return ", ".join(f"{n} {d:+d}" for n, d in deltas) if deltas else "none moves"


def _deltas_table(name: str, deltas: Deltas, out: list[str]) -> None:
    out.append(f"static const struct counter_delta {name}[] = {{")
    for n, d in deltas:
        out.append(f"\t{{ {c_string(n)}, {d} }},")
    if not deltas:
        out.append("\t{ NULL, 0 },  /* none */")
    out.append("};")


# --------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------
