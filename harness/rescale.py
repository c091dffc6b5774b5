"""A program lifted to another geometry (``pudthp rescale PROGRAM --geometry NAME``, and
``pudthp export-c`` of a program found at a small geometry): the shrinker's map of every
address and length digit by digit (``harness.shrink.rescale_op``: PUDs, PMDs and pages, so
a PUD or PMD boundary and a page either side of it stay that), the other config keys as
they were.

A finding the program's ``meta`` names (``signature``) is kept only where the lifted
program still shows it, run on the implementation that found it (``meta.impl``; a kernel
finding cannot be judged here and is kept as found); otherwise the lifted program's meta
says which finding it no longer shows (``lifted_without``), and the caller says so.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from harness.runner import IMPL_NAMES, run_program
from harness.shrink import rescale_op
from pudthp_ref import spec
from pudthp_ref.spec import Program

FINDING_KEYS = ("signature", "kind", "message", "op_index", "replays")


@dataclass(frozen=True)
class Lifted:
    program: Program
    kept: bool | None  # the finding still shows (None: no finding named, or not judged here)
    note: str  # one line for the user


def geometry_name(p: int) -> str:
    return next((n for n, q in spec.GEOMETRIES.items() if q == p), str(p))


def rescale(program: Program, geometry: str) -> Program:
    """``program`` at ``geometry`` (a name of ``spec.GEOMETRIES``), every op moved by
    ``rescale_op``; ``meta.rescaled_from`` names the geometry it came from."""
    p_old, p_new = program.config.geometry, spec.GEOMETRIES[geometry]
    if p_old == p_new:
        return program
    cfg = replace(program.config, geometry=p_new)
    ops = tuple(rescale_op(op, p_old, p_new) for op in program.ops)
    meta: dict[str, Any] = {**program.meta, "rescaled_from": geometry_name(p_old)}
    return Program(cfg, ops, meta)


def lift(program: Program, geometry: str) -> Lifted:
    """``rescale`` and the verdict on the finding its meta names (module docstring)."""
    lifted = rescale(program, geometry)
    sig = program.meta.get("signature")
    if lifted is program or not isinstance(sig, str):
        return Lifted(lifted, None, "")
    impl = program.meta.get("impl")
    if impl not in IMPL_NAMES:
        if impl == "kernel":
            return Lifted(lifted, None, f"{sig}: a kernel finding, not judged here")
        impl = "both" if sig.startswith("divergence:") else "ref"
    found = run_program(lifted, str(impl)).finding
    if found is not None and found.signature == sig:
        meta = {**lifted.meta, "op_index": found.op_index}
        return Lifted(Program(lifted.config, lifted.ops, meta), True,
                      f"the lifted program still shows {sig} (op {found.op_index})")
    meta = {k: v for k, v in lifted.meta.items() if k not in FINDING_KEYS}
    meta["lifted_without"] = sig
    now = f"; it shows {found.signature} instead" if found is not None else ""
    return Lifted(Program(lifted.config, lifted.ops, meta), False,
                  f"the lifted program no longer shows {sig} at {geometry} "
                  f"(--impl {impl}){now}")
