"""Running the reference and the fast implementation in lockstep (``--impl both``).

``Lockstep`` is itself an implementation: ``apply`` runs the op on both sides, compares the
results and each side's ``summary()`` (cheap: no per-page state), and raises
``Divergence`` naming the first differing field.  ``snapshot`` compares the full snapshots.
A difference only the full snapshot shows is then located by replaying the program with a
full comparison after every op (``locate_divergence``), so a finding always names the first
op at which the two states differ.

``check_invariants`` checks the reference after every op, and the fast side too only with
``fast_every_op`` (``pudthp run --check every-op``).  By default the runner checks the fast
side at the end of a program and again where a divergence is found (``harness.runner``), and
a failure at the end is located by a replay with both sides checked after every op.
No class of fast-side bug is lost by that.  The reference keeps every invariant after every
op, and the fast side must hold the same state: a wrong counter, RSS, page-table byte count,
queue or id counter differs at once in the per-op summary, a wrong result (a read, a pin id,
an errno) at once in the result, and a wrong page table, folio, deposit word or swap slot in
the full snapshot compared at the end and located by replay to the first op where it
differs.  A wrong state that every later op hides again before the end is still found: the
generators produce the program that ends right after the bad op as readily as the longer
one.  What no snapshot shows (the fast side's own row and index bookkeeping) is what the
fast side's checker reads at the end.
"""

from __future__ import annotations

import json
import marshal
from typing import Any

from pudthp_ref.spec import Config, Divergence, Impl, Op, Result

MAX_CONTEXT = 1500


def _label(item: Any, index: int) -> str:
    if isinstance(item, dict) and "id" in item:
        return f"[id={item['id']}]"
    if isinstance(item, dict) and "slot" in item:
        return f"[slot={item['slot']}]"
    return f"[{index}]"


Difference = tuple[str, str, Any, Any, Any, Any]


def first_difference(a: Any, b: Any, path: str = "", field: str = "") -> Difference | None:
    """The first place ``a`` and ``b`` differ, in document order: (path with ids, field
    path without ids, value a, value b, innermost enclosing container of a and of b)."""
    if type(a) is not type(b) or not isinstance(a, dict | list):
        return None if a == b and type(a) is type(b) else (path or ".", field or ".", a, b, a, b)
    if isinstance(a, dict):
        for k in list(a) + [k for k in b if k not in a]:
            x, y = a.get(k), b.get(k)
            if k not in a or k not in b or not isinstance(x, dict | list):
                if k not in a or k not in b or type(x) is not type(y) or x != y:
                    return (f"{path}.{k}", f"{field}.{k}", x, y, a, b)
                continue
            d = first_difference(x, y, f"{path}.{k}", f"{field}.{k}")
            if d is not None:
                return d
        return None
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if not isinstance(x, dict | list):
            if type(x) is not type(y) or x != y:
                return (f"{path}[{i}]", f"{field}[]", x, y, a, b)
            continue
        d = first_difference(x, y, path + _label(x, i), field + "[]")
        if d is not None:
            return d
    if len(a) != len(b):
        return (f"{path}.length", f"{field}.length", len(a), len(b), a, b)
    return None


def _same_bytes(a: Any, b: Any) -> bool:
    """A quick yes for equal data: marshal (version 2, no back-references) writes a type
    tag with every value, so True and 1 differ, and equal bytes mean equal values of equal
    types.  A no (or data marshal cannot write) is settled by ``first_difference``."""
    try:
        return marshal.dumps(a, 2) == marshal.dumps(b, 2)
    except ValueError:
        return False


def divergence(a: Any, b: Any, prefix: str) -> Divergence | None:
    if _same_bytes(a, b):
        return None
    d = first_difference(a, b)
    if d is None:
        return None
    path, field, va, vb, ctx_a, ctx_b = d
    context = (
        f"ref:  {json.dumps(ctx_a, default=str)[:MAX_CONTEXT]}\n"
        f"fast: {json.dumps(ctx_b, default=str)[:MAX_CONTEXT]}"
    )
    return Divergence(f"{prefix}{field}", f"{prefix}{path}", va, vb, context)


class Lockstep:
    """``both``: the reference and the fast implementation, compared after every op."""

    name = "both"

    def __init__(self, cfg: Config, ref: Impl, fast: Impl, fast_every_op: bool = False) -> None:
        self.cfg = cfg
        self.ref = ref
        self.fast = fast
        self.fast_every_op = fast_every_op

    def apply(self, op: Op) -> Result:
        ref_error: Exception | None = None
        fast_error: Exception | None = None
        r: Result | None = None
        f: Result | None = None
        try:
            r = self.ref.apply(op)
        except MemoryError:
            raise  # out of memory says nothing about either side: not a divergence
        except Exception as e:
            ref_error = e
        try:
            f = self.fast.apply(op)
        except MemoryError:
            raise
        except Exception as e:
            fast_error = e
        if ref_error is not None or fast_error is not None:
            if _same_error(ref_error, fast_error):
                assert ref_error is not None
                raise ref_error  # both detect the same corruption: a model finding
            raise Divergence(
                "exception",
                "exception",
                _describe(ref_error),
                _describe(fast_error),
            )
        if r != f:
            raise Divergence("result", "result", r, f)
        d = divergence(self.ref.summary(), self.fast.summary(), "summary")
        if d is not None:
            raise d
        assert r is not None
        return r

    def check_invariants(self) -> None:
        """The reference's invariants; the fast side's too with ``fast_every_op``."""
        self.ref.check_invariants()
        if self.fast_every_op:
            self.fast.check_invariants()

    def summary(self) -> dict[str, Any]:
        return self.ref.summary()

    def snapshot(self) -> dict[str, Any]:
        a, d = self.compare_snapshots()
        if d is not None:
            raise d
        return a

    def compare_snapshots(self) -> tuple[dict[str, Any], Divergence | None]:
        """The reference's snapshot and where the fast one differs from it, if anywhere."""
        a = self.ref.snapshot()
        return a, divergence(a, self.fast.snapshot(), "snapshot")


def _same_error(a: Exception | None, b: Exception | None) -> bool:
    return (
        a is not None
        and b is not None
        and type(a) is type(b)
        and getattr(a, "check", None) == getattr(b, "check", None)
    )


def _describe(e: Exception | None) -> str:
    if e is None:
        return "no exception"
    check = getattr(e, "check", None)
    return f"{type(e).__name__}({check})" if check else f"{type(e).__name__}: {e}"

