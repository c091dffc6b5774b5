"""Kernel campaigns: programs run on the live kernel and on the reference model one after
another, fast enough for the fuzz engines (``pudthp fuzz --impl kernel``, issue 22).

``pudthp conform`` looks at everything after every op: the whole page state of every
process through ``/proc`` and the model's snapshot projected onto it, which is most of
its time.  A campaign instead looks cheaply after every op, the op's result and the deltas
of the global counters (``harness.conform.observe``'s rules: a counter the kernel counted
less often than the model is the program's, more often or a gauge may be anyone's), and
looks at the whole page state once, at the end of the program.  Where only counters other
processes may move differed, the program is first run again cheaply; where anything else
differed, or that run repeats it, the program (up to the last op that differed) is run
again from scratch with conform's full comparison after every op (``compare.run_once``),
which names the first op and observable that differ; that difference counts only when two
of up to three runs show it with the same values (``two_of_three``, the cheap run counted
as one).  A difference only the page state showed between two ops and the end hid again is
not seen: the shorter program that ends there is found as readily.

One campaign at a time per machine (the counters are machine-wide): ``KernelMachine``
holds the conform lock for its whole life, and saves, records on disk and restores every
setting as ``pudthp conform`` does (``compare.Session``); after a SIGKILL, ``pudthp conform
--restore`` (or the next run) puts them back.  What it keeps for its life, so a program
costs what its ops cost, is ``harness.conform.kside``'s: a zygote process, a holder of the
huge zero folio (where it cannot be held, programs do without the zero page), the swap
device.

Which ops are drawn (``capabilities``): no ``fail_alloc`` (no per-order allocation-failure
injection), ``migrate`` only with a second NUMA node, ``split_folio`` only where debugfs
``split_huge_pages`` can be written; each kind left out is said once at the start.  The
level: PMD, and PUD where the kernel has ``hugepages-1048576kB`` (programs may then turn
PUD THP on; such a program's processes are seen through their results, VMAs
(``/proc/PID/maps``) and counters only, as ``pudthp export-c`` sees a PUD program: smaps
and pagemap are page walks that would split a PUD leaf).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.conform import compare, live
from harness.conform import kernel as k
from harness.conform.compare import CannotRun, ConformRun, ModelSide, signature
from harness.conform.kfeatures import KFeatures, KTally, op_look
from harness.conform.known import known_kind, op_key
from harness.conform.kside import (
    PUD_SIZE_DIR,
    CampaignKernelSide,
    CounterReader,
    HugeZeroHolder,
    SwapDevice,
    Zygote,
    apply_kernel_config,
    faults,
    maps_vmas,
)
from harness.conform.observe import (
    Disagreement,
    MmObs,
    Observation,
    canonical,
    compare_counters,
    deltas,
    model_counters,
    project_snapshot,
)
from harness.coverage import Coverage, Tally
from harness.runner import exception_finding
from pudthp_ref import spec
from pudthp_ref.spec import Config, Finding, Op, Program, Result

X86_64_P = spec.GEOMETRIES["x86_64"]
NODE_DIR = "/sys/devices/system/node"
PROGRAM_KINDS: tuple[str, ...] = tuple(spec.OP_TYPES)
FINDING_KIND = "disagreement"
SIGNATURE_PREFIX = "disagreement:"
# Ops before which the per-CPU LRU batches must be empty (``live.LruDrain``): what reclaim,
# a fault's reuse test, a split or a pin decide by a folio's reference count, which a
# batch's reference would change; no other op looks at it
DRAIN_BEFORE: frozenset[str] = frozenset({"read", "write", "madvise.pageout", "split_folio",
                                          "shrink_deferred", "pin", "migrate"})


# --------------------------------------------------------------------------------------
# What this machine can run
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Capabilities:
    """What a kernel campaign on this machine draws: the THP level (``pmd`` or ``pud``),
    the op kinds, and why each other kind is left out; the kernel release."""

    level: str
    ops: frozenset[str]
    skipped: dict[str, str]
    release: str
    nodes: int

    @property
    def pud_choices(self) -> tuple[str, ...]:
        """The ``pud_enabled`` values programs may take."""
        if self.level == "pud":
            return ("never", "always", "madvise", "inherit")
        return ("never",)


def thp_level(thp_dir: str = k.THP_DIR) -> str:
    """``pud`` where the kernel has PUD-size THP (``hugepages-1048576kB``), else ``pmd``."""
    return "pud" if os.path.isdir(os.path.join(thp_dir, PUD_SIZE_DIR)) else "pmd"


def numa_nodes(node_dir: str = NODE_DIR) -> int:
    try:
        names = os.listdir(node_dir)
    except OSError:
        return 1
    return max(1, sum(1 for n in names if n.startswith("node") and n[4:].isdigit()))


def capabilities(split_problem: str | None, thp_dir: str = k.THP_DIR,
                 node_dir: str = NODE_DIR, release: str | None = None) -> Capabilities:
    """The op kinds and level of a campaign here: ``split_problem`` says why debugfs
    ``split_huge_pages`` cannot be written (None: it can); the THP and NUMA directories
    are parameters so the decisions can be checked against a made-up sysfs."""
    nodes = numa_nodes(node_dir)
    skipped: dict[str, str] = {"fail_alloc": compare.UNSUPPORTED_OPS["fail_alloc"]}
    if nodes < 2:
        skipped["migrate"] = compare.UNSUPPORTED_OPS["migrate"]
    if split_problem is not None:
        skipped["split_folio"] = split_problem
    ops = frozenset(kind for kind in PROGRAM_KINDS if kind not in skipped)
    return Capabilities(thp_level(thp_dir), ops, skipped, release or os.uname().release,
                        min(nodes, 2))


def check_program(program: Program, caps: Capabilities) -> None:
    """Raise CannotRun for a program a campaign here cannot run: another geometry, an op
    left out, PUD THP at PMD level, a range past the address space."""
    cfg = program.config
    if cfg.geometry != X86_64_P:
        raise CannotRun(f"geometry P={cfg.geometry}: the live kernel is x86_64 (P=512)")
    if cfg.pud_enabled not in caps.pud_choices:
        raise CannotRun(f"pud_enabled {cfg.pud_enabled!r}: this kernel has no PUD THP")
    space = cfg.geom.space
    for i, op in enumerate(program.ops):
        if op.KIND in caps.skipped:
            raise CannotRun(f"op {i} ({op.KIND}): {caps.skipped[op.KIND]}")
        if (isinstance(op, spec.Mmap | spec.Munmap | spec.Mprotect | spec.Madvise
                       | spec.Migrate) and op.start + op.npages > space):
            raise CannotRun(f"op {i} ({op.KIND}): range ends past the model's address "
                            f"space ({space} pages); the live kernel has no such limit")


def is_pud_program(cfg: Config) -> bool:
    return cfg.pud_enabled != "never"


# --------------------------------------------------------------------------------------
# The model side, looked at cheaply
# --------------------------------------------------------------------------------------


class CheapModelSide(ModelSide):
    """``ModelSide`` with the huge zero folio held for the whole run (the campaign's
    holder), looked at through its counters alone after each op; ``projected_now()`` gives
    the full projection when asked."""

    def __init__(self, program: Program) -> None:
        super().__init__(program, True, project=False)

    def _look(self) -> None:
        self.counters = model_counters({"stats": self.model.st.stats})
        self.projected = None
        self._seen = Observation({})  # the holder holds the folio: holders do not matter

    def projected_now(self) -> Observation:
        return canonical(project_snapshot(self.model.snapshot()))


# --------------------------------------------------------------------------------------
# Verdicts
# --------------------------------------------------------------------------------------


@dataclass
class Verdict:
    """What running one program found: ``disagreement`` the confirmed first difference
    (None: the two agree, or what differed was not repeated: ``noise``), ``known`` the
    ``KNOWN`` name that explains it, the kernel's results, runs made (cheap and full)."""

    program: Program
    disagreement: Disagreement | None = None
    known: str | None = None
    results: list[Result] = field(default_factory=list)
    runs: int = 1
    noise: list[str] = field(default_factory=list)
    facts: frozenset[str] = frozenset()
    model_finding: Finding | None = None  # the reference itself failed (a model finding)

    @property
    def signature(self) -> str | None:
        if self.model_finding is not None:
            return self.model_finding.signature
        d = self.disagreement
        return None if d is None else SIGNATURE_PREFIX + signature(d, self.program)

    def finding(self, strict: bool = False) -> Finding | None:
        """The finding of an unexplained disagreement (any, with ``strict``), or the
        reference's own when it raised."""
        if self.model_finding is not None:
            return self.model_finding
        d = self.disagreement
        if d is None or (self.known is not None and not strict):
            return None
        sig = self.signature
        assert sig is not None
        return Finding(FINDING_KIND, d.op_index, sig, compare.describe(d, self.program),
                       json.dumps({"observable": d.observable, "kernel": d.kernel,
                                   "model": d.model}))


def two_of_three(run: Callable[[], ConformRun],
                 seen: list[Disagreement] | None = None) -> tuple[ConformRun, int]:
    """Run up to three times from scratch: the first run's record with ``disagreement``
    set to the first difference two runs showed alike (same op, observable and values),
    or None when no two did (what differed is noted); and how many runs were made.  Two
    clean runs end it at two: a difference one run in three shows does not count.
    ``seen``: what a cheap run of the program already showed, counted as one of the three
    (a result or a counter it names exactly as a full run does)."""
    prior = ConformRun()
    prior.items = list(seen or [])
    runs = [prior] if seen else []
    runs.append(run())
    if len(runs) == 1:
        runs.append(run())
    if any(r.items for r in runs):
        common = _common(runs)
        if common is None:
            runs.append(run())
            common = _common(runs)
        if common is not None:
            out = runs[1] if seen else runs[0]
            out.disagreement = common
            return out, len(runs)
    out = runs[1] if seen else runs[0]
    for r in runs[1:] if seen else runs:
        for d in r.items:
            out.noise.append(f"not repeated by another run: op {d.op_index} {d.observable} "
                             f"kernel {d.kernel!r} model {d.model!r}")
    return out, len(runs)


def _common(runs: list[ConformRun]) -> Disagreement | None:
    """The first difference (by op) that two of ``runs`` show alike."""
    seen: list[Disagreement] = []
    for i, r in enumerate(runs):
        for d in r.items:
            if any(d in other.items for other in runs[i + 1:]):
                seen.append(d)
    return min(seen, key=lambda d: d.op_index) if seen else None


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


def _stderr(text: str) -> None:
    print(f"pudthp: {text}", file=sys.stderr, flush=True)


class KernelMachine:
    """The live kernel for a campaign's life (see the module docstring): a context
    manager; ``run(program)`` runs one program as the campaign does, ``confirm(program)``
    with conform's full comparison after every op, two of three runs."""

    def __init__(self, say: Callable[[str], None] = _stderr) -> None:
        self.say = say
        self.session = compare.Session()
        self.caps: Capabilities | None = None
        self.zygote: Zygote | None = None
        self.holder: HugeZeroHolder | None = None
        self.swap: SwapDevice | None = None
        self.counters: CounterReader | None = None
        self.programs = 0
        self.ops = 0

    # -- life ------------------------------------------------------------------------------

    def __enter__(self) -> KernelMachine:
        try:
            self.session.__enter__()
        except k.KernelError as e:
            raise CannotRun(str(e)) from None
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        s = self.session.settings
        self.caps = capabilities(self.session.split_problem())
        for kind, why in sorted(self.caps.skipped.items()):
            self.say(f"note: no {kind} ops: {why}")
        self.swap = SwapDevice(s)
        self.counters = CounterReader()
        self.zygote = Zygote(X86_64_P ** 3)
        # the huge zero folio needs THP and the zero page on while it is first mapped
        apply_kernel_config(s, Config(geometry=X86_64_P, pud_enabled="never",
                                      thp_enabled="always", pmd_enabled="inherit",
                                      use_zero_page=True), "pmd", True)
        live.drop_slab()
        self.holder = HugeZeroHolder()
        if not self.holder.held:
            self.holder = None
            self.say("note: the huge zero folio could not be held for the campaign: "
                     "programs run without the zero page (use_zero_page off)")

    def __exit__(self, *exc: object) -> None:
        try:
            for part in (self.holder, self.zygote, self.counters):
                if part is not None:
                    with contextlib.suppress(Exception):
                        part.close()
        finally:
            self.holder = self.zygote = self.counters = None
            self.session.__exit__(*exc)

    @property
    def zero_page(self) -> bool:
        return self.holder is not None

    def program_config(self, cfg: Config) -> Config:
        """The config a program runs with here: the zero page off when the campaign could
        not hold the huge zero folio (the model must do without it too)."""
        if cfg.use_zero_page and not self.zero_page:
            fields = {n: getattr(cfg, n) for n in Config.KEYS}
            fields["use_zero_page"] = False
            return Config(**fields)
        return cfg

    # -- programs --------------------------------------------------------------------------

    def prepare(self, cfg: Config) -> None:
        """Configure the kernel for a program of ``cfg``."""
        assert self.caps is not None
        assert self.swap is not None
        apply_kernel_config(self.session.settings, cfg, self.caps.level, self.zero_page)
        self.swap.ensure(cfg.swap_capacity)

    def stepper(self, cfg: Config, features: KFeatures | None = None,
                coverage: Coverage | None = None) -> ProgramRun:
        """A program run op by op, the ops chosen as it goes (the Hypothesis machine)."""
        cfg = self.program_config(cfg)
        self.prepare(cfg)
        return ProgramRun(self, cfg, features, coverage)

    def run(self, program: Program, features: KFeatures | None = None,
            coverage: Coverage | None = None) -> Verdict:
        """Run ``program`` as a campaign does: cheap looks after each op, the whole state
        at the end, and where anything differs the full comparison (``confirm``); with
        the kernel-observation and model-state features of its ops counted into
        ``features`` and ``coverage``."""
        assert self.caps is not None
        check_program(program, self.caps)
        r = self.stepper(program.config, features, coverage)
        for op in program.ops:
            if r.step(op) is None:
                break
        return r.finish()

    def confirm(self, program: Program, cheap_runs: int = 0,
                seen: list[Disagreement] | None = None) -> Verdict:
        """Conform's full comparison after every op, two of up to three runs from scratch
        (``two_of_three``, the cheap run's ``seen`` differences counted as one); with the
        explanation (``known_kind``) of what they show."""
        self.prepare(program.config)
        pud = is_pud_program(program.config)

        def once() -> ConformRun:
            self.prepare(program.config)
            if pud:
                return self._pud_run(program)
            return compare.run_once(program, self.session.tools, held_elsewhere=True,
                                    start=self._start_executor)

        run, n = two_of_three(once, seen)
        full = n - 1 if seen else n
        v = Verdict(program, run.disagreement, None, run.kernel_results, cheap_runs + full,
                    run.noise)
        if v.disagreement is not None:
            v.facts = compare.machine_facts(v.disagreement)
            v.known = known_kind(v.disagreement, program, v.facts)
        return v

    def _start_executor(self, ex: live.Executor) -> None:
        assert self.zygote is not None
        self.zygote.start(ex)

    def _pud_run(self, program: Program) -> ConformRun:
        """A PUD program's run: its results, counters and VMAs after every op (what its
        cheap run compares) as a ``ConformRun``."""
        r = ProgramRun(self, program.config, None)
        for op in program.ops:
            if r.step(op) is None:
                break
        out = ConformRun(r.kernel_results, r.model_results)
        out.items = list(r.items)
        r.close()
        return out


class ProgramRun:
    """One program on the kernel and the reference, op by op, with the cheap look after
    each op; ``finish()`` looks at the end state and, where anything differed, confirms
    with full runs from scratch.  ``items``: the differences the cheap look found."""

    def __init__(self, machine: KernelMachine, cfg: Config, features: KFeatures | None,
                 coverage: Coverage | None = None) -> None:
        self.machine = machine
        self.cfg = cfg
        self.features = features
        self.coverage = coverage
        self.ops: list[Op] = []
        self.kernel_results: list[Result] = []
        self.model_results: list[Result] = []
        self.items: list[Disagreement] = []
        self.noise: list[str] = []
        self.model_finding: Finding | None = None  # the reference raised
        self.ended = False  # a difference ended the run: no further op is run
        self.pud = is_pud_program(cfg)
        self.model = CheapModelSide(Program(cfg, ()))
        self.kside = CampaignKernelSide(Program(cfg, ()), machine.session.tools.frames)
        self.closed = False
        try:
            machine._start_executor(self.kside.ex)
        except BaseException:
            self.close()
            raise
        machine.programs += 1

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.kside.close()

    def program(self) -> Program:
        return Program(self.cfg, tuple(self.ops))

    def step(self, op: Op) -> Result | None:
        """Run one op on both sides; its kernel result, or None once a difference ended
        the run (the states may differ from there on)."""
        if self.ended:
            return None
        i = len(self.ops)
        self.ops.append(op)
        tools = self.machine.session.tools
        kside = self.kside
        if op_key(op) in DRAIN_BEFORE:
            tools.drain()
        before_faults = faults(kside, op)
        counters = self.machine.counters
        assert counters is not None
        k_before = counters.read()
        kres = kside.apply(op)
        k_after = counters.read()
        kd = deltas(k_before, k_after)
        m_before = self.model.counters
        ref = self.model.model
        token = self.coverage.before(ref, op) if self.coverage is not None else None
        try:
            mres = self.model.step(op, kd)
        except Exception as e:  # the reference's own finding: its campaigns hunt those
            self.model_finding = exception_finding(e, i, op.KIND)
            self.ended = True
            return None
        if self.coverage is not None:
            self.coverage.after(ref, op, mres, token)
        self.machine.ops += 1
        self.kernel_results.append(kres)
        self.model_results.append(mres)
        if self.features is not None:
            look = None if self.pud else op_look(kside, op)
            self.features.add_op(op, kd, look, faults(kside, op, before_faults), kres)
        self.noise += compare.noise_notes(i, kd)
        if kres != mres:
            self.items.append(Disagreement(i, "result", kres, mres))
            self.ended = True
            return None
        for d, definite in compare_counters(i, kd, deltas(m_before, self.model.counters)):
            self.items.append(d)
            if definite:
                self.ended = True
        if self.pud and not self.ended:
            self._compare_vmas(i)
        return None if self.ended else kres

    def _compare_vmas(self, i: int) -> None:
        """A PUD program's VMAs after op ``i`` (``/proc/PID/maps``: no page walk)."""
        kernel = Observation({srv.mm: MmObs(maps_vmas(srv.pid, self.kside.ex.window), 0, 0,
                                            0) for srv in self.kside.ex.servers if srv.alive})
        model = Observation({int(m[0]): MmObs([(int(s), int(e), str(p), ())
                                               for s, e, p, _ in m[2]], 0, 0, 0)
                             for m in self.model.model.summary()["mms"] if m[1]})
        d = compare.compare(i, kernel, model, frozenset({"rss", "anon_huge", "swap"}))
        if d is not None:
            self.items.append(d)
            self.ended = True

    def end_difference(self) -> Disagreement | None:
        """The whole state at the end (none for a PUD program: its VMAs were compared
        after every op)."""
        if self.pud or self.ended:
            return None
        kernel = canonical(self.kside.observe())
        return compare.compare(len(self.ops) - 1, kernel, self.model.projected_now())

    def finish(self) -> Verdict:
        """The verdict: agree when the cheap looks and the end state agree.  A difference
        other processes may have made (a counter the kernel counted more often, a gauge)
        and nothing else is first run again cheaply from scratch, and counts only if that
        run shows it alike; anything else goes to full runs from scratch, which decide
        (``KernelMachine.confirm``)."""
        try:
            end = self.end_difference()
        finally:
            self.close()
        if end is not None:
            self.items.append(end)
            self.ended = True
        program = self.program()
        if self.model_finding is not None:
            return Verdict(program, results=self.kernel_results, noise=self.noise,
                           model_finding=self.model_finding)
        if not self.items:
            return Verdict(program, results=self.kernel_results, noise=self.noise)
        runs = 1
        if not self.ended:  # only counters other processes move: a cheap second look
            again = self.machine.stepper(self.cfg)
            for op in program.ops:
                if again.step(op) is None:
                    break
            again.close()
            runs = 2
            if not any(d in again.items for d in self.items):
                self.noise += [f"not repeated by another run: op {d.op_index} "
                               f"{d.observable} kernel {d.kernel!r} model {d.model!r}"
                               for d in self.items]
                return Verdict(program, results=self.kernel_results, runs=runs,
                               noise=self.noise)
        # The full runs need the ops up to the last difference seen only: the first one
        # they confirm is no later (a page difference the cheap look missed is earlier).
        last = max(d.op_index for d in self.items)
        v = self.machine.confirm(Program(program.config, program.ops[: last + 1]),
                                 cheap_runs=runs, seen=self.items)
        if v.disagreement is None:
            self.noise += [f"not repeated by a full run: op {d.op_index} {d.observable} "
                           f"kernel {d.kernel!r} model {d.model!r}" for d in self.items]
        v.noise = self.noise + v.noise
        return v


def kernel_release() -> str:
    """``uname -r``: the kernel a campaign runs on, recorded with its findings."""
    return os.uname().release


def kernel_coverage(programs: list[tuple[str, Program]], say: Callable[[str], None] = _stderr
                    ) -> tuple[Tally, KTally, list[str]]:
    """``pudthp coverage --impl kernel``: run each program on the live kernel and the
    reference as a campaign does, counting the model-state features of the reference and
    the kernel-observation features of the kernel; what could not run, or disagreed, is
    noted (a disagreement ends a program's comparison, so its later ops count nothing).
    Raises CannotRun when this machine cannot run kernel campaigns at all."""
    tally, ktally = Tally(), KTally()
    notes: list[str] = []
    with KernelMachine(say) as machine:
        assert machine.caps is not None
        for path, program in programs:
            try:
                check_program(program, machine.caps)
            except CannotRun as e:
                notes.append(f"{path}: not run: {' '.join(str(e).split())}")
                continue
            cov, feats = Coverage(), KFeatures()
            v = machine.run(program, feats, cov)
            tally.add_program(cov.hits, cov.ops)
            tally.unclassified += cov.unclassified
            ktally.add_program(feats.hits, feats.ops)
            if v.disagreement is not None:
                what = f"known {v.known}" if v.known else "DISAGREE"
                notes.append(f"{path}: {what} {v.signature}: "
                             f"{compare.describe(v.disagreement, v.program)}")
    return tally, ktally, notes
