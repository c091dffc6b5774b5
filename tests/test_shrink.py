"""``harness.shrink`` and ``pudthp shrink``: a program keeps its finding signature while it
shrinks, and a bug buried in unrelated ops comes out as the few ops it needs.

The bug is the rejected list_head deposit (corpus/known_bad/list_head_two_puds.json).  With
the invariant checker on it shows on the first PUD fault (mmap, write: 2 ops); with the
checker off, as the kernel would meet it, on the first PTE-table withdraw after a PUD split
(mmap, write, munmap of one page: 3 ops).  The padding works on mm 0 in pages [300, 360) of
the small geometry: no range there holds a whole aligned PUD, so it never faults a PUD THP
and never touches the bug's mapping, and on its own it reports nothing.
"""

from __future__ import annotations

import os
import random
from dataclasses import replace
from pathlib import Path

import pytest

from harness.program import dump_program, load_program_file
from harness.runner import run_program
from harness.shrink import NoFinding, rescale_op, shrink
from pudthp_cli.main import main
from pudthp_ref import spec
from pudthp_ref.spec import Config, Op, Program

HERE = os.path.dirname(__file__)
KNOWN_BAD = os.path.join(HERE, "..", "corpus", "known_bad")
LIST_HEAD = load_program_file(os.path.join(KNOWN_BAD, "list_head_two_puds.json"))
LO, HI = 300, 360


def padding_op(rng: random.Random) -> Op:
    kind = rng.choice(("mmap", "munmap", "mprotect", "madvise", "read", "write", "write",
                       "split_folio", "shrink_deferred", "migrate", "pin", "unpin"))
    start = rng.randrange(LO, HI)
    n = rng.randint(1, HI - start)
    if kind == "mmap":
        return spec.Mmap(0, start, n, rng.choice(spec.PROTS))
    if kind == "munmap":
        return spec.Munmap(0, start, n)
    if kind == "mprotect":
        return spec.Mprotect(0, start, n, rng.choice(spec.PROTS))
    if kind == "madvise":
        return spec.Madvise(0, start, n, rng.choice(spec.ADVICES))
    if kind == "read":
        return spec.Read(0, start)
    if kind == "write":
        return spec.Write(0, start, rng.randint(0, 99))
    if kind == "split_folio":
        return spec.SplitFolio(0, start)
    if kind == "shrink_deferred":
        return spec.ShrinkDeferred()
    if kind == "migrate":
        return spec.Migrate(0, start, n, rng.randrange(2))
    if kind == "pin":
        return spec.Pin(0, start)
    return spec.Unpin(rng.randint(1, 5))


def padded(program: Program, n: int, seed: int) -> tuple[Program, Program]:
    """``program``'s ops spread over ``n`` ops among padding, and the padding alone."""
    rng = random.Random(seed)
    pad = [padding_op(rng) for _ in range(n - len(program.ops))]
    where = set(rng.sample(range(n), len(program.ops)))
    bug, rest = iter(program.ops), iter(pad)
    ops = tuple(next(bug) if i in where else next(rest) for i in range(n))
    return Program(program.config, ops), Program(program.config, tuple(pad))


@pytest.mark.parametrize(("check", "needs"), [(True, 2), (False, 3)])
@pytest.mark.parametrize("seed", range(3))
def test_fifty_ops_shrink_to_what_the_finding_needs(check: bool, needs: int, seed: int) -> None:
    program, pad = padded(LIST_HEAD, 50, seed)
    assert run_program(pad, "ref", check=check).finding is None
    before = run_program(program, "ref", check=check).finding
    assert before is not None
    result = shrink(program, "ref", check=check)
    assert result.finding.signature == before.signature
    assert result.ops_before == 50
    assert result.ops_after == len(result.program.ops) <= 4
    assert len(result.program.ops) == needs
    again = run_program(result.program, "ref", check=check).finding
    assert again is not None
    assert again.signature == before.signature


def test_fifty_ops_shrink_with_both_implementations_as_judge() -> None:
    program, _ = padded(LIST_HEAD, 50, 7)
    before = run_program(program, "both").finding
    assert before is not None
    result = shrink(program, "both")
    assert len(result.program.ops) <= 4
    assert result.finding.signature == before.signature


@pytest.mark.parametrize(("check", "needs"), [(True, 2), (False, 3)])
def test_ten_thousand_ops_shrink_in_bounded_time(check: bool, needs: int) -> None:
    # ddmin deletes big chunks first and cuts every candidate after its finding, so this
    # takes seconds; the bound asserted is the result (and the number of runs), not the time
    program, _ = padded(LIST_HEAD, 10_000, 1)
    result = shrink(program, "ref", check=check)
    assert len(result.program.ops) == needs
    assert result.runs < 400


def test_simplification_moves_to_tiny_geometry_mm_0_and_default_config() -> None:
    # the same bug at x86_64 geometry, on mm 2 (after two forks), with extra config keys
    ops: list[Op] = [spec.Fork(0), spec.Fork(0)]
    ops += [replace(rescale_op(op, 8, 512), mm=2) for op in LIST_HEAD.ops]
    cfg = Config(geometry=512, deposit="list_head", nodes=3, thp_enabled="always",
                 use_zero_page=False)
    result = shrink(Program(cfg, tuple(ops)), "ref")
    p = result.program
    assert p.config == Config(geometry=4, deposit="list_head")
    assert [getattr(op, "mm", 0) for op in p.ops] == [0] * len(p.ops)
    assert len(p.ops) == 2
    # a campaign's fixed keys stay as they are
    kept = shrink(Program(cfg, tuple(ops)), "ref", keep=("geometry", "nodes")).program
    assert kept.config == Config(geometry=512, deposit="list_head", nodes=3)


def test_a_passing_program_has_nothing_to_shrink() -> None:
    with pytest.raises(NoFinding):
        shrink(Program(Config(), (spec.Mmap(0, 0, 8, "rw"), spec.Write(0, 0, 1))), "ref")


# --------------------------------------------------------------------------------------
# The command line
# --------------------------------------------------------------------------------------


def test_cli_shrink_writes_the_program_and_prints_both_lengths(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    program, _ = padded(LIST_HEAD, 50, 0)
    src = tmp_path / "long.json"
    src.write_text(dump_program(program))
    out = tmp_path / "short.json"
    assert main(["shrink", str(src), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "50 ops -> 2 ops" in printed
    shrunk = load_program_file(str(out))
    assert len(shrunk.ops) == 2
    assert shrunk.meta["signature"] == "invariant:write:deposit.pud_stack.wrong_level"
    assert shrunk.meta["shrunk_from"] == 50
    # never overwrites
    assert main(["shrink", str(src), "--out", str(out)]) == 2
    assert "not overwritten" in capsys.readouterr().err
    # without --out the program goes to stdout, the lengths to stderr
    assert main(["shrink", str(src)]) == 0
    captured = capsys.readouterr()
    assert '"format": "pudthp-program/1"' in captured.out
    assert "50 ops -> 2 ops" in captured.err


def test_cli_shrink_exit_status_1_without_finding_and_2_on_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    twin = os.path.join(KNOWN_BAD, "lru_next_two_puds.json")
    assert main(["shrink", twin]) == 1
    assert "nothing to shrink" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "pudthp-program/1", "config": {}, "ops": [{"op": "fly"}]}')
    assert main(["shrink", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pudthp: error: ")
    assert len(err.splitlines()) == 1
    assert main(["shrink", str(bad), "--impl", "nope"]) == 2


def test_a_fork_goes_with_its_child_and_later_ids_move_down() -> None:
    from harness.shrink import _without_fork

    F, X, W = spec.Fork, spec.Exit, spec.Write
    ops: tuple[Op, ...] = (
        spec.Mmap(0, 0, 64, "rw"),
        F(0),  # -> mm 1
        F(0),  # -> mm 2
        X(1),
        F(1),  # mm 1 has exited: ESRCH, no id handed out
        F(2),  # -> mm 3, a child of mm 2
        F(0),  # -> mm 4
        W(2, 5, 1),
        W(3, 6, 1),
        W(4, 7, 1),
    )
    # Dropping the fork at 2 drops mm 2 and its child mm 3 (made at index 5) with all
    # their ops; mm 4 is then the third id handed out: mm 2.
    assert _without_fork(ops, 2) == (ops[0], F(0), X(1), F(1), F(0), W(2, 7, 1))
    # Dropping the first fork drops mm 1 (its exit and the failed fork of it go too); mm 2,
    # 3 and 4 become 1, 2 and 3.
    assert _without_fork(ops, 1) == (ops[0], F(0), F(1), F(0), W(1, 5, 1), W(2, 6, 1),
                                     W(3, 7, 1))
    # a fork of an exited mm made no child, and a non-fork is no candidate
    assert _without_fork(ops, 4) is None
    assert _without_fork(ops, 7) is None
