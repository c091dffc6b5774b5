"""Shrinking a kernel disagreement on the kernel (``pudthp shrink --impl kernel``, issue 22
item 5): ``harness.shrink``'s algorithm with every candidate run from scratch on the live
kernel and the reference (``campaign.KernelMachine.run``), keeping the disagreement's
signature (op kind and observable class).

A candidate counts only when full runs confirm it: its cheap run differs, then two of up
to three full runs from scratch show the same difference (``campaign.two_of_three``), so
one that disagrees once in three runs does not count; and only as an unexplained
disagreement (a candidate that slides onto a ``KNOWN`` one with the same signature is no
smaller example of the finding).  What the machine cannot run (``CannotRun``) is no
candidate.  The geometry, ``pud_enabled`` and ``nodes`` stay (the kernel's), and so does
``swap_pages`` (the campaign's swap device keeps its size); the other config keys may go
back to their defaults.
"""

from __future__ import annotations

from collections.abc import Callable

from harness.conform.campaign import KernelMachine, check_program
from harness.conform.compare import CannotRun
from harness.shrink import Judge, ShrinkResult, shrink
from pudthp_ref.spec import Finding, Program

KEEP: tuple[str, ...] = ("geometry", "pud_enabled", "nodes", "swap_pages")


def kernel_judge(machine: KernelMachine, strict: bool = False) -> Judge:
    """A candidate's finding on the live kernel: its confirmed disagreement when no
    ``KNOWN`` explanation fits (any, with ``strict``), else None."""

    def judge(program: Program) -> Finding | None:
        assert machine.caps is not None
        try:
            check_program(program, machine.caps)
            return machine.run(program).finding(strict)
        except CannotRun:
            return None

    return judge


def shrink_on_kernel(machine: KernelMachine, program: Program, signature: str | None = None,
                     log: Callable[[str], None] | None = None, strict: bool = False,
                     deadline: float | None = None) -> ShrinkResult:
    """The smallest program found that the kernel still disagrees on with ``program``'s
    signature (or ``signature``); raises ``harness.shrink.NoFinding`` when it does not."""
    return shrink(program, "kernel", signature=signature, keep=KEEP, log=log,
                  judge=kernel_judge(machine, strict), deadline=deadline)
