"""The oracle (harness/oracle.py) on hand-written op/result sequences, and the runner's
turning of oracle mismatches and model exceptions into findings (with a fake model, so these
run before and independently of pudthp_ref.model)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from harness import runner
from harness.oracle import Oracle, OracleMismatch
from harness.runner import run_program
from pudthp_ref.spec import (
    EFAULT,
    EINVAL,
    ENOMEM,
    ESRCH,
    SIGSEGV,
    Config,
    Exit,
    Fork,
    InvariantViolation,
    Madvise,
    Mmap,
    ModelBug,
    Mprotect,
    Munmap,
    Op,
    Pin,
    Program,
    Read,
    Result,
    ShrinkDeferred,
    Write,
)

P = 8  # small: 512 pages per mm


def replay(steps: Sequence[tuple[Op, Result]], oracle: Oracle | None = None) -> Oracle:
    """Feed (op, result) pairs that a correct kernel gives; every step must pass."""
    oracle = oracle or Oracle(P)
    for i, (op, result) in enumerate(steps):
        mismatch = oracle.step(op, result)
        assert mismatch is None, f"step {i}: {mismatch}"
    return oracle


def mismatch(oracle: Oracle, op: Op, result: Result) -> OracleMismatch:
    m = oracle.step(op, result)
    assert m is not None
    return m


def test_fresh_memory_reads_zero_and_writes_stick() -> None:
    o = replay(
        [
            (Mmap(0, 64, 64, "rw"), 0),
            (Read(0, 70), 0),
            (Write(0, 70, 9), 0),
            (Read(0, 70), 9),
            (Read(0, 71), 0),
        ]
    )
    m = mismatch(o, Read(0, 70), 0)
    assert m.check == "read-value"
    assert m.message == "read mm=0 addr=70: expected 9 (written at op 2), got 0"


def test_no_vma_segv() -> None:
    o = replay([(Read(0, 5), SIGSEGV), (Write(0, 5, 1), SIGSEGV)])
    assert mismatch(o, Read(0, 5), 0).check == "read-no-segv"
    assert mismatch(Oracle(P), Write(0, 5, 1), 0).check == "write-no-segv"


def test_unexpected_segv() -> None:
    o = replay([(Mmap(0, 0, 8, "rw"), 0)])
    assert mismatch(o, Read(0, 3), SIGSEGV).check == "read-segv"
    assert mismatch(o, Write(0, 3, 1), SIGSEGV).check == "write-segv"
    assert mismatch(o, Read(0, 3), EINVAL).check == "read-result"


def test_fork_isolation() -> None:
    o = replay(
        [
            (Mmap(0, 64, 64, "rw"), 0),
            (Write(0, 64, 7), 0),
            (Fork(0), 1),
            (Read(1, 64), 7),
            (Write(1, 64, 9), 0),
            (Write(0, 65, 5), 0),
            (Read(0, 64), 7),
            (Read(1, 64), 9),
            (Read(1, 65), 0),
            (Read(0, 65), 5),
            (Exit(1), 0),
            (Read(0, 64), 7),
        ]
    )
    assert mismatch(o, Read(0, 64), 9).check == "read-value"


def test_fork_child_id_must_be_new() -> None:
    o = replay([(Fork(0), 1)])
    assert mismatch(o, Fork(0), 1).check == "fork-id"
    assert mismatch(replay([]), Fork(0), 0).check == "fork-id"


def test_fork_errno_makes_no_child() -> None:
    o = replay([(Fork(0), ENOMEM), (Read(1, 0), ESRCH)])
    assert not o.alive(1)


def test_munmap_drops_data() -> None:
    o = replay(
        [
            (Mmap(0, 64, 64, "rw"), 0),
            (Write(0, 100, 3), 0),
            (Write(0, 101, 4), 0),
            (Munmap(0, 100, 1), 0),
            (Read(0, 100), SIGSEGV),
            (Read(0, 101), 4),
            (Mmap(0, 96, 8, "rw"), 0),  # maps 100 again and replaces 101: fresh
            (Read(0, 100), 0),
            (Read(0, 101), 0),
        ]
    )
    assert o.vmas(0) == [(64, 128, "rw")]


def test_failed_munmap_and_mmap_change_nothing() -> None:
    replay(
        [
            (Mmap(0, 0, 8, "rw"), 0),
            (Write(0, 1, 3), 0),
            (Munmap(0, 0, 8), EINVAL),
            (Mmap(0, 0, 8, "r"), EINVAL),
            (Read(0, 1), 3),
            (Write(0, 1, 4), 0),
        ]
    )


def test_dontneed_zeroes_and_keeps_the_vma() -> None:
    o = replay(
        [
            (Mmap(0, 64, 64, "rw"), 0),
            (Write(0, 64, 1), 0),
            (Write(0, 127, 2), 0),
            (Madvise(0, 64, 8, "dontneed"), 0),
            (Read(0, 64), 0),
            (Read(0, 127), 2),
            (Madvise(0, 120, 200, "dontneed"), ENOMEM),  # hole after 128: mapped part zapped
            (Read(0, 127), 0),
        ]
    )
    assert o.vmas(0) == [(64, 128, "rw")]


def test_other_advice_keeps_data() -> None:
    replay(
        [
            (Mmap(0, 0, 64, "rw"), 0),
            (Write(0, 9, 1), 0),
            (Madvise(0, 0, 64, "pageout"), 0),
            (Madvise(0, 0, 64, "nohugepage"), 0),
            (ShrinkDeferred(), 0),
            (Read(0, 9), 1),
        ]
    )


def test_mprotect_r_then_write_segv() -> None:
    o = replay(
        [
            (Mmap(0, 64, 64, "rw"), 0),
            (Write(0, 70, 5), 0),
            (Mprotect(0, 68, 4, "r"), 0),
            (Write(0, 70, 6), SIGSEGV),
            (Read(0, 70), 5),
            (Write(0, 72, 6), 0),
            (Mprotect(0, 64, 64, "none"), 0),
            (Read(0, 70), SIGSEGV),
            (Mprotect(0, 64, 64, "rw"), 0),
            (Read(0, 70), 5),
        ]
    )
    o2 = replay([(Mmap(0, 64, 64, "rw"), 0), (Mprotect(0, 68, 4, "r"), 0)])
    assert o2.vmas(0) == [(64, 68, "rw"), (68, 72, "r"), (72, 128, "rw")]
    assert mismatch(o2, Write(0, 70, 6), 0).check == "write-no-segv"
    assert o.vmas(0) == [(64, 128, "rw")]


def test_mprotect_enomem_changes_up_to_the_first_hole() -> None:
    o = replay(
        [
            (Mmap(0, 0, 8, "rw"), 0),
            (Mmap(0, 16, 8, "rw"), 0),
            (Mprotect(0, 4, 24, "r"), ENOMEM),  # [4, 8) changes, [16, 24) does not
            (Write(0, 5, 1), SIGSEGV),
            (Write(0, 17, 1), 0),
            (Mprotect(0, 10, 8, "none"), ENOMEM),  # starts in a hole: nothing changes
            (Read(0, 17), 1),
        ]
    )
    assert o.vmas(0) == [(0, 4, "rw"), (4, 8, "r"), (16, 24, "rw")]


def test_out_of_range() -> None:
    o = replay(
        [
            (Mmap(0, 500, 100, "rw"), EINVAL),
            (Read(0, 505), SIGSEGV),
            (Munmap(0, 0, 1000), EINVAL),
            (Madvise(0, 0, 1000, "dontneed"), ENOMEM),
        ]
    )
    assert mismatch(o, Mmap(0, 511, 2, "rw"), 0).check == "out-of-range"


def test_exit_then_esrch() -> None:
    o = replay(
        [
            (Mmap(0, 0, 8, "rw"), 0),
            (Fork(0), 1),
            (Exit(0), 0),
            (Read(0, 0), ESRCH),
            (Write(0, 0, 1), ESRCH),
            (Mmap(0, 0, 8, "rw"), ESRCH),
            (Fork(0), ESRCH),
            (Exit(0), ESRCH),
            (Read(1, 0), 0),
            (Read(7, 0), ESRCH),
        ]
    )
    assert mismatch(o, Read(0, 0), SIGSEGV).check == "esrch"
    assert mismatch(o, Munmap(1, 0, 8), ESRCH).check == "unexpected-esrch"
    assert o.expect(Read(0, 0)) == ESRCH


def test_pin() -> None:
    o = replay(
        [
            (Pin(0, 0), EFAULT),
            (Mmap(0, 0, 8, "r"), 0),
            (Pin(0, 0), EFAULT),
            (Mmap(0, 8, 8, "rw"), 0),
            (Pin(0, 8), 1),
            (Read(0, 8), 0),
        ]
    )
    assert mismatch(o, Pin(0, 1), 2).check == "pin-no-efault"
    assert mismatch(o, Pin(0, 9), EFAULT).check == "pin-efault"


def test_expect() -> None:
    o = replay([(Mmap(0, 0, 8, "rw"), 0), (Write(0, 2, 5), 0)])
    assert o.expect(Read(0, 2)) == 5
    assert o.expect(Read(0, 9)) == SIGSEGV
    assert o.expect(Write(0, 9, 1)) == SIGSEGV
    assert o.expect(Write(0, 2, 1)) == 0
    assert o.expect(Munmap(0, 0, 1)) is None


def test_x86_64_sized_ranges_are_cheap() -> None:
    o = Oracle(512)
    replay(
        [
            (Mmap(0, 0, 512**3, "rw"), 0),
            (Write(0, 512**3 - 1, 1), 0),
            (Madvise(0, 0, 512**3, "dontneed"), 0),
            (Read(0, 512**3 - 1), 0),
            (Munmap(0, 0, 512**3), 0),
        ],
        o,
    )


# ---- the runner's findings, with a fake model ------------------------------------------


class FakeModel:
    """Answers from a script: op index -> a result, or an exception to raise."""

    name = "fake"

    def __init__(
        self,
        script: dict[int, Any],
        invariant_at: int | None = None,
        snapshot_error: Exception | None = None,
    ) -> None:
        self.script = script
        self.invariant_at = invariant_at
        self.snapshot_error = snapshot_error
        self.i = -1

    def apply(self, op: Op) -> Result:
        self.i += 1
        answer = self.script.get(self.i, 0)
        if isinstance(answer, Exception):
            raise answer
        result: Result = answer
        return result

    def check_invariants(self) -> None:
        if self.i == self.invariant_at:
            raise InvariantViolation("deposit", "PMD table 3 deposited twice")

    def snapshot(self) -> dict[str, Any]:
        if self.snapshot_error is not None:
            raise self.snapshot_error
        return {"format": "pudthp-snapshot/1", "ops": self.i + 1}


OPS: tuple[Op, ...] = (
    Mmap(0, 64, 64, "rw"),
    Write(0, 64, 7),
    Read(0, 64),
    Munmap(0, 64, 64),
)


def run_fake(monkeypatch: pytest.MonkeyPatch, make: Callable[[], FakeModel]) -> runner.RunReport:
    monkeypatch.setitem(runner.IMPL_FACTORIES, "fake", lambda: lambda cfg: make())
    steps: list[tuple[int, Result]] = []
    report = run_program(
        Program(Config(), OPS), "fake", on_step=lambda i, op, r: steps.append((i, r))
    )
    assert [r for _, r in steps] == report.results
    return report


def test_runner_clean(monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_fake(monkeypatch, lambda: FakeModel({2: 7}))
    assert report.finding is None
    assert report.results == [0, 0, 7, 0]
    assert report.snapshot == {"format": "pudthp-snapshot/1", "ops": 4}
    assert report.to_json()["format"] == "pudthp-report/1"
    assert report.to_json()["finding"] is None


def test_runner_oracle_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_fake(monkeypatch, lambda: FakeModel({2: 0}))
    f = report.finding
    assert f is not None
    assert (f.kind, f.op_index, f.signature) == ("oracle", 2, "oracle:read:read-value")
    assert report.results == [0, 0, 0]
    assert report.snapshot is not None


def test_runner_invariant_finding(monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_fake(monkeypatch, lambda: FakeModel({2: 7}, invariant_at=1))
    f = report.finding
    assert f is not None
    assert (f.kind, f.op_index, f.signature) == ("invariant", 1, "invariant:deposit")
    assert report.results == [0, 0]


def test_runner_model_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    bug = ModelBug("pud_leaf_twice", "folio 4 mapped twice", folio=4)
    report = run_fake(monkeypatch, lambda: FakeModel({1: bug}))
    f = report.finding
    assert f is not None
    assert (f.kind, f.op_index, f.signature) == ("model_bug", 1, "model_bug:write:pud_leaf_twice")
    assert report.results == [0]
    assert "folio=4" in f.detail


def test_runner_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_fake(monkeypatch, lambda: FakeModel({2: 7, 3: KeyError(12)}))
    f = report.finding
    assert f is not None
    assert (f.kind, f.op_index) == ("model_bug", 3)
    assert f.signature == "model_bug:munmap:crash:KeyError"
    assert f.message.startswith("KeyError: 12 (at ")
    assert "in apply)" in f.message
    assert report.results == [0, 0, 7]
    assert report.snapshot is not None


def test_runner_bad_result(monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_fake(monkeypatch, lambda: FakeModel({0: None}))
    assert report.finding is not None
    assert report.finding.signature == "model_bug:mmap:bad_result"


def test_runner_snapshot_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_fake(monkeypatch, lambda: FakeModel({2: 7}, snapshot_error=ValueError("x")))
    assert report.snapshot is None
    assert report.finding is not None
    assert report.finding.signature == "model_bug:snapshot:crash:ValueError"
    report = run_fake(monkeypatch, lambda: FakeModel({2: 0, 3: 0}, snapshot_error=ValueError("x")))
    assert report.snapshot is None
    assert report.finding is not None
    assert report.finding.signature == "oracle:read:read-value"


def test_runner_init_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> FakeModel:
        raise TypeError("bad config")

    report = run_fake(monkeypatch, broken)
    assert report.finding is not None
    assert report.finding.op_index == -1
    assert report.finding.signature == "model_bug:init:crash:TypeError"
    assert report.results == []


def test_runner_unknown_impl() -> None:
    with pytest.raises(runner.UsageError, match="unknown implementation"):
        run_program(Program(Config(), OPS), "slow")


def test_dontneed_running_past_the_address_space_still_zaps() -> None:
    # Found by the atheris campaign: madvise() checks no address-space limit, so it zaps
    # the mapped part and answers ENOMEM for the hole past the end (madvise_walk_vmas).
    from harness.oracle import Oracle
    from pudthp_ref.spec import Madvise, Mmap, Read, Write

    o = Oracle(4)
    assert o.step(Mmap(0, 0, 16, "rw"), 0) is None
    assert o.step(Write(0, 15, 1), 0) is None
    assert o.step(Madvise(0, 4, 64, "dontneed"), "ENOMEM") is None
    assert o.step(Read(0, 15), 0) is None  # zapped: fresh anonymous memory reads 0
