"""Finding signatures: what makes two findings one bug, and reading those of older archives.

A signature names the cause of a finding, never where it was first seen, so one bug found
by many programs is one finding (docs/format.md, "Findings and signatures"):

- ``invariant:NAME``: the broken invariant (its name carries the level where one applies,
  ``deposit.pud_stack.wrong_level``); the op kind after which the check failed is a
  location, kept in the finding's message and op index;
- ``divergence:FIELD``: the first differing field class (``result``, ``exception``,
  ``summary.vmas[].pmds[].state``, ...), without ids;
- ``model_bug:KIND:CHECK`` and ``oracle:KIND:CHECK``: the op kind is part of the check's
  meaning there (a crash in ``fork`` is not one in ``read``), so it stays.

This is signature format ``SIGNATURE_FORMAT`` (2), written as ``meta.signature_format`` in
every finding archived from now on.  Format 1 (before it) put the op kind second in
invariant and divergence signatures too (``invariant:read:NAME``).  Everything that reads a
signature from a file or from the hub passes it through ``current``, which turns a format-1
signature into its format-2 form and leaves a format-2 one as it is, so findings archived
before keep replaying and deduplicating against new ones.
"""

from __future__ import annotations

from pudthp_ref.spec import OP_TYPES

SIGNATURE_FORMAT = 2
# the classes whose format-1 signatures carried the op kind where the finding was seen
_LOCATED = ("invariant", "divergence")
# what format 1 put in the op kind's place: an op, or the step of the run with no op
_WHERE = frozenset(OP_TYPES) | {"init", "snapshot"}


def invariant(name: str) -> str:
    """The signature of a broken invariant ``name`` (``InvariantViolation.invariant``)."""
    return f"invariant:{name}"


def divergence(field: str) -> str:
    """The signature of a divergence whose first differing field class is ``field``."""
    return f"divergence:{field}"


def current(signature: str) -> str:
    """``signature`` in format 2: a format-1 ``invariant:KIND:NAME`` or
    ``divergence:KIND:FIELD`` loses its op kind; anything else is returned as it is.
    Neither an invariant name nor a field class contains a colon, so a format-2 signature
    never looks like a format-1 one."""
    parts = signature.split(":", 2)
    if len(parts) == 3 and parts[0] in _LOCATED and parts[1] in _WHERE:
        return f"{parts[0]}:{parts[2]}"
    return signature


def of_meta(meta: dict[str, object]) -> str | None:
    """A program's ``meta.signature`` in format 2 (None when it has none)."""
    sig = meta.get("signature")
    return current(sig) if isinstance(sig, str) else None
