"""The oracle: a shadow memory that knows what a correct kernel returns on a read.

docs/model.md section 12, "The oracle of reads".  It is computed from the program's ops and
the results the implementation returned, never from page tables, and shares no code with
either model: per live mm a sorted list of VMAs ``(start, end, prot)`` and the values of the
pages written since they were mapped (fresh anonymous memory reads 0).

The interface is one call per op, in program order::

    oracle = Oracle(P)
    for op in program.ops:
        result = model.apply(op)
        mismatch = oracle.step(op, result)   # None, or OracleMismatch(check, message)

``step`` both checks the result and updates the shadow state.  The shadow follows the results
where the syscall may legitimately fail (an mmap that returned EINVAL mapped nothing) and is
authoritative where the answer is determined by memory contents alone: ``read``, ``write``
and ``pin`` results, ``ESRCH`` for an mm that does not exist, and 0 for a range op reaching
beyond the address space.  ``OracleMismatch.check`` is a short stable name (no ids, no
addresses) for finding signatures; ``expect(op)`` answers the same question without stepping.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from pudthp_ref.spec import (
    EFAULT,
    ENOMEM,
    ESRCH,
    SIGSEGV,
    Exit,
    Fork,
    Madvise,
    Mmap,
    Mprotect,
    Munmap,
    Op,
    Pin,
    Read,
    Result,
    Write,
    op_str,
)

Vma = tuple[int, int, str]  # [start, end) in pages, prot


@dataclass(frozen=True, slots=True)
class OracleMismatch:
    """A result a correct kernel would not have returned.

    ``check`` is one of: ``read-value`` (wrong value), ``read-segv`` (SIGSEGV where a value was
    expected), ``read-no-segv`` (a value where SIGSEGV was expected), ``read-result`` (neither a
    value nor SIGSEGV), ``write-segv``, ``write-no-segv``, ``write-result``, ``pin-efault``
    (EFAULT on a writable page), ``pin-no-efault`` (a pin without a writable VMA), ``esrch``
    (an op on a missing mm did not return ESRCH), ``unexpected-esrch``, ``fork-id`` (a child id
    that is negative or was already used), ``out-of-range`` (0 for a range beyond the address
    space).
    """

    check: str
    message: str


@dataclass
class ShadowMm:
    """One mm as the oracle sees it."""

    vmas: list[Vma] = field(default_factory=list)
    # vpn -> (value, index of the op that wrote it); absent means 0
    pages: dict[int, tuple[int, int]] = field(default_factory=dict)

    def copy(self) -> ShadowMm:
        return ShadowMm(list(self.vmas), dict(self.pages))


class Oracle:
    """Shadow memory over all mms of one program run; see the module docstring."""

    def __init__(self, P: int) -> None:
        self.P = P
        self.space = P * P * P
        self.mms: dict[int, ShadowMm] = {0: ShadowMm()}
        self.used_ids: set[int] = {0}
        self.steps = 0  # the index of the next op

    # ---- queries ---------------------------------------------------------------------

    def alive(self, mm: int) -> bool:
        return mm in self.mms

    def vmas(self, mm: int) -> list[Vma]:
        return list(self.mms[mm].vmas)

    def value(self, mm: int, vpn: int) -> int:
        """What a read would return if the page is readable (0 unless written)."""
        return self.mms[mm].pages.get(vpn, (0, -1))[0]

    def prot_at(self, mm: int, vpn: int) -> str | None:
        """The prot of the VMA containing ``vpn``, or None outside every VMA."""
        vma = _find(self.mms[mm].vmas, vpn)
        return vma[2] if vma else None

    def expect(self, op: Op) -> Result | None:
        """The result a correct kernel returns for ``op`` if the oracle knows it, else None."""
        mm = getattr(op, "mm", None)
        if mm is not None and mm not in self.mms:
            return ESRCH
        if isinstance(op, Read | Write):
            return self._expect_access(op)[0]
        if isinstance(op, Pin) and self.prot_at(op.mm, op.addr) != "rw":
            return EFAULT
        return None

    # ---- the step --------------------------------------------------------------------

    def step(self, op: Op, result: Result) -> OracleMismatch | None:
        """Check ``result`` of the next op and update the shadow state."""
        index = self.steps
        self.steps += 1
        mm_id = getattr(op, "mm", None)
        if mm_id is None:  # shrink_deferred, unpin, fail_alloc: no data changes
            return None
        shadow = self.mms.get(mm_id)
        if shadow is None:
            if result != ESRCH:
                return _mismatch(
                    "esrch", op, result, f"ESRCH (mm {mm_id} does not exist or has exited)"
                )
            return None
        if result == ESRCH:
            return _mismatch("unexpected-esrch", op, result, f"not ESRCH (mm {mm_id} is alive)")

        match op:
            case Mmap() | Munmap() | Mprotect() | Madvise():
                return self._range_op(op, shadow, result)
            case Read():
                expected, why = self._expect_access(op)
                if result == expected:
                    return None
                if result == SIGSEGV:
                    check = "read-segv"
                elif expected == SIGSEGV and isinstance(result, int):
                    check = "read-no-segv"
                elif isinstance(result, int):
                    check = "read-value"
                else:
                    check = "read-result"
                return _mismatch(check, op, result, f"{expected} ({why})")
            case Write():
                expected, why = self._expect_access(op)
                if expected == 0:
                    # A correct kernel stored it, whatever this implementation answered.
                    shadow.pages[op.addr] = (op.value, index)
                if result == expected:
                    return None
                if result == SIGSEGV:
                    check = "write-segv"
                elif expected == SIGSEGV and result == 0:
                    check = "write-no-segv"
                else:
                    check = "write-result"
                return _mismatch(check, op, result, f"{expected} ({why})")
            case Fork():
                if isinstance(result, int):
                    if result < 0 or result in self.used_ids:
                        return _mismatch(
                            "fork-id", op, result, "a new mm id (never used before, >= 0)"
                        )
                    self.used_ids.add(result)
                    self.mms[result] = shadow.copy()
                return None
            case Exit():
                if result == 0:
                    del self.mms[mm_id]
                return None
            case Pin():
                writable = self.prot_at(op.mm, op.addr) == "rw"
                if not writable and isinstance(result, int):
                    return _mismatch(
                        "pin-no-efault", op, result, f"EFAULT ({self._where(op.mm, op.addr)})"
                    )
                if writable and result == EFAULT:
                    return _mismatch(
                        "pin-efault", op, result, f"a pin id ({self._where(op.mm, op.addr)})"
                    )
                return None
            case _:  # split_folio, migrate: contents move with the pages
                return None

    # ---- helpers ---------------------------------------------------------------------

    def _range_op(
        self, op: Mmap | Munmap | Mprotect | Madvise, shadow: ShadowMm, result: Result
    ) -> OracleMismatch | None:
        start, end = op.start, op.start + op.npages
        if end > self.space and isinstance(op, Madvise):
            # madvise() has no address-space limit check: it walks the VMAs in the range
            # and reports the hole beyond them with -ENOMEM, so a dontneed still zaps.
            if result == 0:
                return _mismatch("out-of-range", op, result, "ENOMEM (a hole past the end)")
            if op.advice == "dontneed" and result == ENOMEM:
                _drop_pages(shadow, start, end)
            return None
        if end > self.space:
            if result == 0:
                return _mismatch(
                    "out-of-range",
                    op,
                    result,
                    f"EINVAL or ENOMEM (the address space ends at {self.space})",
                )
            return None
        match op:
            case Mmap():
                if result == 0:
                    # MAP_FIXED: whatever was mapped in the range is gone, the new VMA is fresh.
                    _drop_pages(shadow, start, end)
                    shadow.vmas = _normalize(
                        [*_remove(shadow.vmas, start, end), (start, end, op.prot)]
                    )
            case Munmap():
                if result == 0:
                    _drop_pages(shadow, start, end)
                    shadow.vmas = _remove(shadow.vmas, start, end)
            case Mprotect():
                pieces = _pieces(shadow.vmas, start, end)
                if result == ENOMEM:
                    # do_mprotect_pkey: the range must start inside a VMA; VMAs before the
                    # first hole are changed, then the loop stops with -ENOMEM.
                    reach = start
                    for s, e, _ in pieces:
                        if s != reach:
                            break
                        reach = e
                    pieces = [(start, reach, op.prot)] if reach > start else []
                elif result != 0:
                    pieces = []
                for s, e, _ in pieces:
                    shadow.vmas = _normalize([*_remove(shadow.vmas, s, e), (s, e, op.prot)])
            case Madvise():
                # madvise_walk_vmas applies the advice to every VMA in the range and reports
                # holes with -ENOMEM afterwards.  Pages outside VMAs hold no values anyway.
                if op.advice == "dontneed" and result in (0, ENOMEM):
                    _drop_pages(shadow, start, end)
        return None

    def _expect_access(self, op: Read | Write) -> tuple[Result, str]:
        """The result of a read or write, and why (for messages)."""
        shadow = self.mms[op.mm]
        vma = _find(shadow.vmas, op.addr)
        if vma is None:
            return SIGSEGV, f"no VMA at {op.addr}"
        s, e, prot = vma
        if prot == "none" or (isinstance(op, Write) and prot != "rw"):
            return SIGSEGV, f"VMA [{s}, {e}) has prot {prot}"
        if isinstance(op, Write):
            return 0, f"VMA [{s}, {e}) has prot {prot}"
        value, writer = shadow.pages.get(op.addr, (0, -1))
        if writer < 0:
            return 0, "not written since it was mapped or zapped"
        return value, f"written at op {writer}"

    def _where(self, mm: int, vpn: int) -> str:
        vma = _find(self.mms[mm].vmas, vpn)
        if vma is None:
            return f"no VMA at {vpn}"
        return f"VMA [{vma[0]}, {vma[1]}) has prot {vma[2]}"


def _mismatch(check: str, op: Op, result: Result, expected: str) -> OracleMismatch:
    return OracleMismatch(check, f"{op_str(op)}: expected {expected}, got {result}")


def _find(vmas: list[Vma], vpn: int) -> Vma | None:
    i = bisect.bisect_right(vmas, vpn, key=lambda v: v[0]) - 1
    if i >= 0 and vmas[i][0] <= vpn < vmas[i][1]:
        return vmas[i]
    return None


def _remove(vmas: list[Vma], start: int, end: int) -> list[Vma]:
    """The VMAs with [start, end) cut out (splitting VMAs that straddle an edge)."""
    out: list[Vma] = []
    for s, e, prot in vmas:
        if e <= start or s >= end:
            out.append((s, e, prot))
            continue
        if s < start:
            out.append((s, start, prot))
        if e > end:
            out.append((end, e, prot))
    return out


def _pieces(vmas: list[Vma], start: int, end: int) -> list[Vma]:
    """The mapped parts of [start, end), clipped to it, in address order."""
    return [(max(s, start), min(e, end), p) for s, e, p in vmas if s < end and e > start]


def _normalize(vmas: list[Vma]) -> list[Vma]:
    """Sorted, with adjacent VMAs of the same prot merged (the oracle has no VMA flags)."""
    out: list[Vma] = []
    for s, e, prot in sorted(vmas):
        if out and out[-1][1] == s and out[-1][2] == prot:
            out[-1] = (out[-1][0], e, prot)
        else:
            out.append((s, e, prot))
    return out


def _drop_pages(shadow: ShadowMm, start: int, end: int) -> None:
    """Forget the values in [start, end): they read as 0 (or fault) from now on."""
    pages = shadow.pages
    if end - start < len(pages):
        for vpn in range(start, end):
            pages.pop(vpn, None)
    else:
        for vpn in [v for v in pages if start <= v < end]:
            del pages[vpn]
