"""The throughput of kernel campaigns against ``pudthp conform --random``, side by side in
one run (issue 22, item 3): the same seeded random PMD-level programs
(``fuzz.gen.random_pmd_program``, handed in) run in blocks, first through conform's own
loop (``compare.Session.run``, what ``pudthp conform --random`` does per program), then
through a kernel campaign's runner (``campaign.KernelMachine.run``), block after block, so
both meet the same load on a shared machine; and, when a search is handed in, the same
number of programs of a kernel campaign's own engine.  Ops per second of each, and the
ratios.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from harness.conform import compare
from harness.conform.campaign import KernelMachine
from pudthp_ref.spec import Program

RandomProgram = Callable[[int, int, int, bool], Program]
# (machine, first program index, programs) -> ops run: a kernel campaign's engine, run for
# that many programs on the machine
Search = Callable[[KernelMachine, int, int], int]


@dataclass
class Leg:
    """One way of running programs: ops run and seconds spent, over every block."""

    name: str
    programs: int = 0
    ops: int = 0
    seconds: float = 0.0
    disagreements: int = 0

    @property
    def rate(self) -> float:
        return self.ops / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Throughput:
    conform: Leg = field(default_factory=lambda: Leg("conform --random"))
    runner: Leg = field(default_factory=lambda: Leg("kernel campaign runner"))
    engine: Leg | None = None

    def lines(self) -> list[str]:
        legs = [self.conform, self.runner, *([self.engine] if self.engine else [])]
        out = [f"  {leg.name:<34} {leg.programs:>5} programs {leg.ops:>7} ops "
               f"{leg.seconds:>8.1f} s {leg.rate:>8.1f} ops/s"
               + (f" ({leg.disagreements} disagreeing)" if leg.disagreements else "")
               for leg in legs]
        base = self.conform.rate
        for leg in legs[1:]:
            if base > 0:
                out.append(f"  {leg.name} / conform --random: {leg.rate / base:.1f}x")
        return out


def measure(random_program: RandomProgram, programs: int, seed: int, n_ops: int,
            blocks: int = 2, search: Search | None = None,
            say: Callable[[str], None] = print) -> Throughput:
    """Run ``programs`` random programs (``seed``, ``n_ops`` ops each) through conform's
    loop and the campaign runner, in ``blocks`` alternating blocks, and as many programs
    of ``search`` (a kernel campaign's engine) after each runner block."""
    out = Throughput(engine=Leg("kernel campaign (engine)") if search else None)
    per = max(1, programs // blocks)
    done = 0
    while done < programs:
        batch = range(done, min(programs, done + per))
        progs = [random_program(seed, i, n_ops, False) for i in batch]
        t = time.monotonic()
        with compare.Session() as session:
            for p in progs:
                run = session.run(p)
                out.conform.ops += len(run.kernel_results)
                out.conform.disagreements += run.disagreement is not None
        out.conform.seconds += time.monotonic() - t
        out.conform.programs += len(progs)
        with KernelMachine(say=lambda _: None) as machine:
            t = time.monotonic()
            for p in progs:
                v = machine.run(p)
                out.runner.ops += len(v.results)
                out.runner.disagreements += v.disagreement is not None
            out.runner.seconds += time.monotonic() - t
            out.runner.programs += len(progs)
            if search is not None and out.engine is not None:
                t = time.monotonic()
                out.engine.ops += search(machine, done, len(progs))
                out.engine.seconds += time.monotonic() - t
                out.engine.programs += len(progs)
        done += len(progs)
        say(f"  after {done} programs: " + "; ".join(
            f"{leg.name} {leg.rate:.1f} ops/s"
            for leg in (out.conform, out.runner, out.engine) if leg is not None))
    return out
