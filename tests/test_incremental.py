"""The incremental invariant checker of the fast side (``pudthp_fast.incremental``) against
the full one (``pudthp_fast.invariants``).

Its contract: after an op, when the state passed the previous check and the op marked
everything it wrote, the incremental check raises exactly what the full check raises (the
same invariant and message), or nothing when the full check passes.  Here, on seeded random
programs (``fuzz.gen``), after every op:

- the marks are audited: every table and folio whose arrays changed is marked;
- the two verdicts are compared, with the entry and folio phases forced to their Python
  loops and to numpy, so both paths meet every kind of op;
- the incremental pass clears the correct states alone (no hand-off to the full checker).

Then defects are planted by hand after ops, on marked state (the entity is marked as a
buggy write would have marked it): both checkers name the same violation.  And a write that
forgets its mark, which the incremental checks cannot see, is found by the whole-state pass
the harness runs at the end of a program, and located at its op.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import numpy as np
import pytest

import pudthp_fast.incremental as incremental
from fuzz.gen import ProgramGenerator, random_config
from harness.program import dump_program
from harness.runner import run_program
from pudthp_fast.incremental import check_invariants_incremental
from pudthp_fast.invariants import check_invariants
from pudthp_fast.model import FastModel
from pudthp_fast.state import (
    LEAF,
    NONE,
    POISON1,
    POISON2,
    PTE,
    ST_DEPOSITED,
    ST_FREE,
    ST_LIVE,
    SWAP,
    TABLE,
    ZERO,
    D,
    FastState,
    W,
    Y,
)
from pudthp_ref.spec import (
    Config,
    Exit,
    Fork,
    InvariantViolation,
    Mmap,
    Mprotect,
    Munmap,
    Program,
    Read,
    Write,
)

# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------

_TABLE_FIELDS = ("t_state", "t_level", "t_mm", "t_w8", "t_w16")
_FOLIO_FIELDS = ("f_order", "f_nr", "f_base", "f_ref", "f_pin", "f_entire", "f_large", "f_npm",
                 "f_mmid", "f_mmc", "f_shared", "f_swapcache", "f_partial", "f_deferred",
                 "f_live")
_ROWS = ("e_kind", "e_id", "e_page", "e_bits")


def verdict(check: Any, st: FastState) -> tuple[str, str] | None:
    try:
        check(st)
    except InvariantViolation as e:
        return e.invariant, str(e)
    return None


def copies(st: FastState) -> dict[str, Any]:
    """What the audit compares: the table, entry, folio and page arrays."""
    out: dict[str, Any] = {k: getattr(st, k).copy() for k in
                           (*_TABLE_FIELDS, "t_row", *_ROWS, *_FOLIO_FIELDS, "p_mapcount",
                            "p_exclusive")}
    out["npt"], out["nf"], out["npool"] = st.next_pt, st.next_folio, st.next_page
    return out


def _padded(a: Any, n: int) -> Any:
    if a.shape[0] >= n:
        return a[:n]
    out = np.zeros((n, *a.shape[1:]), a.dtype)
    out[: a.shape[0]] = a
    return out


def unmarked(before: dict[str, Any], st: FastState) -> tuple[list[int], list[int]]:
    """Tables and folios whose arrays an op changed but did not mark."""
    now = copies(st)
    npt = now["npt"]
    changed = np.zeros(npt, bool)
    for k in _TABLE_FIELDS:
        changed |= _padded(before[k], npt) != now[k][:npt]
    orow = _padded(before["t_row"], npt)
    nrow = now["t_row"][:npt]
    for k in _ROWS:
        old = before[k][orow]
        old[orow == 0] = 0
        new = now[k][nrow]
        new[nrow == 0] = 0
        changed |= (old != new).any(axis=1)
    changed[0] = False
    tables = np.flatnonzero(changed & ~st.t_touch[:npt]).tolist()
    nf = now["nf"]
    fchanged = np.zeros(nf, bool)
    for k in _FOLIO_FIELDS:
        d = _padded(before[k], nf) != now[k][:nf]
        fchanged |= d.reshape(nf, -1).any(axis=1)
    npool = now["npool"]
    pchanged = np.zeros(npool + 1, bool)
    for k in ("p_mapcount", "p_exclusive"):
        pchanged[:npool] |= _padded(before[k], npool) != now[k][:npool]
    cs = np.concatenate(([0], np.cumsum(pchanged)))
    for d in (before, now):
        m = min(d["nf"], nf)
        lo = np.clip(d["f_base"][:m], 0, npool)
        hi = np.clip(d["f_base"][:m] + d["f_nr"][:m], lo, npool)
        fchanged[:m] |= cs[hi] > cs[lo]
    fchanged[0] = False
    folios = np.flatnonzero(fchanged & ~st.f_touch[:nf]).tolist()
    return tables, folios


def program(geometry: int, seed: int, n_ops: int, tag: str = "inc") -> Program:
    rng = random.Random(f"{tag}:{geometry}:{seed}")
    cfg = random_config(rng, geometry)
    return ProgramGenerator(cfg, rng).program(n_ops)


# --------------------------------------------------------------------------------------
# Incremental against full after every op
# --------------------------------------------------------------------------------------


def agree(prog: Program) -> int:
    """Run ``prog`` on the fast model; after every op audit the marks and compare the two
    checkers.  Returns the number of ops checked."""
    m = FastModel(prog.config)
    st = m.st
    before = copies(st)
    for i, op in enumerate(prog.ops):
        m.apply(op)
        where = f"op {i} {op!r}\n{dump_program(prog)}"
        tables, folios = unmarked(before, st)
        assert not tables, f"unmarked tables {tables}: {where}"
        assert not folios, f"unmarked folios {folios}: {where}"
        full = verdict(check_invariants, st)
        assert full is None, f"the model broke {full}: {where}"
        assert verdict(check_invariants_incremental, st) == full, where
        assert st.checks["fallback"] == 0, f"handed to the full checker: {where}"
        before = copies(st)
    return len(prog.ops)


@pytest.mark.parametrize("path", ["loops", "numpy"])
@pytest.mark.parametrize("geometry", [4, 8])
@pytest.mark.parametrize("chunk", range(3))
def test_incremental_agrees_with_full_after_every_op(
    monkeypatch: pytest.MonkeyPatch, path: str, geometry: int, chunk: int
) -> None:
    monkeypatch.setattr(incremental, "SCALAR_MAX", 10**9 if path == "loops" else -1)
    ops = sum(agree(program(geometry, seed, 40)) for seed in range(chunk * 12, chunk * 12 + 12))
    assert ops == 12 * 40


PUD = 512 * 512  # pages of a PUD folio at x86_64
PMD = 512
# Two PUD THPs split to PTEs (mprotect and munmap inside them: 512 PTE tables each), a
# fork that copies their 2 x 262144 PTEs, COW on both sides, a partial munmap, an exit:
# every kind of bulk change the numpy paths handle.
X86_SPLITS = Program(Config(geometry=512), (
    Mmap(0, PUD, 2 * PUD, "rw"), Write(0, PUD + 5, 1), Write(0, 2 * PUD + 5, 2),
    Mprotect(0, PUD + 3 * PMD, 2 * PMD, "r"), Munmap(0, 2 * PUD + 100 * PMD + 1, 1),
    Fork(0), Write(1, PUD + 200 * PMD, 3), Write(0, 2 * PUD + 300 * PMD, 4),
    Munmap(0, PUD + PUD // 2, PUD // 4), Mprotect(0, PUD + 3 * PMD, 2 * PMD, "rw"),
    Exit(1), Munmap(0, PUD, 2 * PUD),
))


@pytest.mark.slow
def test_incremental_agrees_with_full_at_x86_64() -> None:
    assert agree(X86_SPLITS) == 12
    # and random programs with PUD THPs on (the default config)
    for seed in range(2):
        rng = random.Random(f"inc:x86_64:{seed}")
        assert agree(ProgramGenerator(Config(geometry=512), rng).program(20)) == 20


# --------------------------------------------------------------------------------------
# Planted defects on marked state
# --------------------------------------------------------------------------------------


def plant(st: FastState, rng: random.Random) -> None:
    """One random defect of the kinds a buggy op could leave, marked as its write would
    have marked it (mms, pins, the queue and swap counts need no mark)."""
    used = np.flatnonzero(st.t_state[: st.next_pt] != ST_FREE)
    used = used[used > 0].tolist()
    fols = list(range(1, st.next_folio))
    what = rng.randrange(10)
    if what == 0 and used:
        t = rng.choice(used)
        w = rng.choice([0, POISON1, POISON2, 999, rng.choice(used)])
        if rng.random() < 0.5:
            st.t_w8[t] = w
        else:
            st.t_w16[t] = w
        st.touch_t(t)
    elif what == 1 and used:
        t = rng.choice(used)
        if rng.random() < 0.5:
            st.t_state[t] = rng.choice([ST_LIVE, ST_DEPOSITED, ST_FREE])
        else:
            st.t_level[t] = rng.randrange(3)
        st.touch_t(t)
    elif what in (2, 3) and used:
        t = rng.choice(used)
        r = st.wrow(t)
        i = rng.randrange(st.P)
        kind, ident, pg, bits = rng.choice([
            (NONE, 0, 0, 0),
            (ZERO, 0, 0, 0),
            (TABLE, rng.choice(used), 0, 0),
            (LEAF, rng.choice([*fols, 999]), 0, W | D | Y),
            (PTE, rng.choice([*fols, 999]), rng.randrange(-1, 3), rng.choice([Y, W | D | Y])),
            (SWAP, rng.randrange(1, 4), 0, 0),
        ])
        st.e_kind[r, i], st.e_id[r, i], st.e_page[r, i], st.e_bits[r, i] = kind, ident, pg, bits
    elif what in (4, 5) and fols:
        f = rng.choice(fols)
        d = rng.choice([-1, 1])
        b, nr = int(st.f_base[f]), int(st.f_nr[f])
        field = rng.randrange(10)
        if field == 0:
            st.f_ref[f] += d
        elif field == 1:
            st.f_entire[f] += d
        elif field == 2:
            st.f_large[f] += d
        elif field == 3:
            st.f_npm[f] += d
        elif field == 4:
            st.f_mmc[f, rng.randrange(2)] += d
        elif field == 5 and nr:
            st.p_mapcount[b + rng.randrange(nr)] += d
        elif field == 6 and nr:
            j = b + rng.randrange(nr)
            st.p_exclusive[j] = not st.p_exclusive[j]
        elif field == 7:
            st.f_partial[f] = not st.f_partial[f]
        elif field == 8:
            st.f_shared[f] = not st.f_shared[f]
        else:
            st.f_live[f] = not st.f_live[f]
        st.touch_f(f)
    elif what == 6:
        mm = rng.choice(st.mms)
        change = rng.randrange(4)
        if change == 0 or (change == 1 and not mm.vmas):
            mm.rss_anon += rng.choice([-1, 1])
        elif change == 1:
            rng.choice(mm.vmas).prot = rng.choice(["none", "r", "rw"])
        elif change == 2 and used:
            mm.pud_table = rng.choice(used)
        else:
            mm.alive = not mm.alive
    elif what == 7 and st.next_slot > 1:
        st.s_count[rng.randrange(1, st.next_slot)] += 1
    elif what == 8 and fols:
        f = rng.choice(fols)
        st.pins[999] = (f, rng.randrange(int(st.f_nr[f]) + 1))
    else:
        st.deferred.append(rng.choice([*fols, 999]))


@pytest.mark.parametrize("path", ["loops", "numpy"])
@pytest.mark.parametrize("geometry", [4, 8])
def test_planted_defects_are_named_as_the_full_checker_names_them(
    monkeypatch: pytest.MonkeyPatch, path: str, geometry: int
) -> None:
    monkeypatch.setattr(incremental, "SCALAR_MAX", 10**9 if path == "loops" else -1)
    rng = random.Random(f"plant-inc:{geometry}")
    found = 0
    names: set[str] = set()
    for seed in range(8):
        prog = program(geometry, seed, 30, "plant-inc")
        m = FastModel(prog.config)
        for i, op in enumerate(prog.ops):
            m.apply(op)
            bad = copy.deepcopy(m.st)
            for _ in range(rng.choice((1, 1, 2))):
                plant(bad, rng)
            full = verdict(check_invariants, bad)
            assert verdict(check_invariants_incremental, bad) == full, (seed, i, full)
            if full is not None:
                found += 1
                names.add(full[0])
            m.check_invariants()
    # most of the 240 plants are real defects, of dozens of kinds (51 names at tiny, 44 at
    # small geometry when this test was written)
    assert found > 180
    assert len(names) > 35


# --------------------------------------------------------------------------------------
# A write that forgets its mark
# --------------------------------------------------------------------------------------


def _forgetful_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant: a read of page 64 also clears AnonExclusive of the page of folio 2 (mapped
    writable at page 96) and marks nothing."""
    import pudthp_fast.model as fast_model

    real = fast_model.access

    def access(st: FastState, mm: Any, vpn: int, value: int | None) -> Any:
        out = real(st, mm, vpn, value)
        if value is None and vpn == 64:
            st.p_exclusive[int(st.f_base[2])] = False
        return out

    monkeypatch.setattr(fast_model, "access", access)


# small geometry, PUD THP off: two order-0 folios from the two writes (folio 1 at vpn 64,
# folio 2 at vpn 96), each mapped by a writable PTE, so each page must stay AnonExclusive
UNMARKED = Program(
    Config(geometry=8, thp_enabled="never", pmd_enabled="never", pud_enabled="never"),
    (Mmap(0, 64, 64, "rw"), Write(0, 64, 1), Write(0, 96, 2), Read(0, 64), Read(0, 96)),
)


def test_an_unmarked_write_escapes_the_incremental_checks_but_not_the_full(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _forgetful_read(monkeypatch)
    m = FastModel(UNMARKED.config)
    for op in UNMARKED.ops:
        m.apply(op)
        m.check_invariants()  # incremental: folio 2 is not marked, its PTE did not change
    with pytest.raises(InvariantViolation) as exc:
        m.check_invariants(full=True)
    assert exc.value.invariant == "anon_exclusive.writable"


def test_the_end_of_program_pass_finds_an_unmarked_write_and_its_op(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _forgetful_read(monkeypatch)
    report = run_program(UNMARKED, "fast")
    assert report.finding is not None
    assert report.finding.kind == "invariant"
    # op 3, the read of page 64, is the first after which the whole state is broken
    assert report.finding.op_index == 3
    assert report.finding.signature == "invariant:read:anon_exclusive.writable"
    # Under both, AnonExclusive is in the snapshot: the final comparison sees it first and
    # locates it at the same op, with the fast checker's verdict there.
    report = run_program(UNMARKED, "both")
    assert report.finding is not None
    assert report.finding.op_index == 3
    assert report.finding.signature.startswith("divergence:read:snapshot.folios[].anon_excl")
    assert "own invariants fail here: InvariantViolation: anon_exclusive.writable" in (
        report.finding.detail)


def test_checks_clear_alone_and_the_full_pass_only_at_the_end() -> None:
    # A program without findings on both sides: every per-op check of the fast side is an
    # incremental one that clears the state itself; the harness adds one whole-state pass.
    prog = program(8, 1, 40)
    m = FastModel(prog.config)
    for op in prog.ops:
        m.apply(op)
        m.check_invariants()
    assert m.st.checks == {"incremental": 40, "fallback": 0}
    assert run_program(prog, "both").finding is None
