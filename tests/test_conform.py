"""``pudthp conform``: the projection of a model snapshot onto what /proc shows (no root
needed), and conformance with the live kernel (root and PMD THP needed, else skipped).

Expected values of the projection are derived by hand from docs/model.md and the kernel's
definitions (``folio_precise_page_mapcount`` = ``_mapcount + 1`` plus the entire mapcount;
smaps ``AnonHugePages`` counts pages under PMD leaves), not from running the code.

The live tests set aside the disagreements this kernel is known to have with the model,
each explained in ``KNOWN``; every other observable must agree.
"""

from __future__ import annotations

import json
import os
import random
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from fuzz import gen
from harness.conform import compare as conform
from harness.conform import kernel as k
from harness.conform import live
from harness.conform.observe import (
    Disagreement,
    MmObs,
    Observation,
    PageObs,
    canonical,
    coalesce,
    compare,
    compare_counters,
    model_counters,
    project_snapshot,
)
from harness.program import load_program_file, parse_program
from pudthp_cli.conform import conform_cases
from pudthp_cli.main import main
from pudthp_ref import spec
from pudthp_ref.model import RefModel
from pudthp_ref.spec import Config, Program

ROOT = Path(__file__).resolve().parents[1]
WORKED_EXAMPLE = ROOT / "corpus" / "seeds" / "worked_example_pmd_x86_64.json"
X86 = Config(geometry=512, pud_enabled="never")


def run_model(ops: list[spec.Op], cfg: Config = X86) -> tuple[RefModel, Observation]:
    model = RefModel(cfg)
    for op in ops:
        model.apply(op)
    return model, project_snapshot(model.snapshot())


# --------------------------------------------------------------------------------------
# Projection of the model's snapshot (no root)
# --------------------------------------------------------------------------------------


def test_pmd_fault_projects_to_one_pmd_mapped_folio() -> None:
    # Write fault on a 2 MiB-aligned VMA: one PMD leaf of an order-9 folio, mapcount 1 per
    # page (entire 1, no PTE mapping), RSS 512, AnonHugePages 512 pages, page 0 holds 7.
    _, obs = run_model([spec.Mmap(0, 512, 512, "rw"), spec.Write(0, 512, 7)])
    m = obs.mms[0]
    assert m.vmas == [(512, 1024, "rw", ())]
    assert (m.rss, m.anon_huge, m.swap) == (512, 512, 0)
    assert len(m.pages) == 512
    fid = m.pages[0][1].folio
    assert m.pages[0] == (512, PageObs("pmd", fid, 0, 9, 1, 7))
    assert m.pages[511] == (1023, PageObs("pmd", fid, 511, 9, 1, 0))


def test_read_fault_projects_to_the_huge_zero_pmd() -> None:
    _, obs = run_model([spec.Mmap(0, 0, 1024, "r"), spec.Read(0, 600)])
    pages = dict(obs.mms[0].pages)
    assert pages[512] == PageObs("hzero", content=0)
    assert pages[100] == PageObs("none")
    assert (obs.mms[0].rss, obs.mms[0].anon_huge) == (0, 0)


def test_worked_example_step_3_mapcounts() -> None:
    # kernel-thp-semantics.md section 7 step 3: A keeps the PMD (entire 1), B maps 511
    # pages by PTE and page 1 by a new order-0 folio.  folio_precise_page_mapcount: 1 PTE
    # (in B) + 1 entire (A's PMD) = 2 for every page but page 1, which B no longer maps: 1.
    ops = [spec.Mmap(0, 512, 512, "rw"), spec.Write(0, 512, 1), spec.Fork(0),
           spec.Write(1, 513, 2)]
    _, obs = run_model(ops)
    a, b = dict(obs.mms[0].pages), dict(obs.mms[1].pages)
    thp = a[512].folio
    assert a[512] == PageObs("pmd", thp, 0, 9, 2, 1)
    assert a[513] == PageObs("pmd", thp, 1, 9, 1, 0)
    assert b[512] == PageObs("pte", thp, 0, 9, 2, 1)
    assert (b[513].kind, b[513].order, b[513].mapcount, b[513].content) == ("pte", 0, 1, 2)
    assert b[513].folio != thp
    assert (obs.mms[1].rss, obs.mms[1].anon_huge) == (512, 0)
    assert (obs.mms[0].rss, obs.mms[0].anon_huge) == (512, 512)


def test_swap_pte_projects_with_a_slot() -> None:
    cfg = Config(geometry=512, pud_enabled="never", swap_pages=4096)
    ops = [spec.Mmap(0, 0, 512, "rw"), spec.Write(0, 0, 3),
           spec.Madvise(0, 0, 512, "pageout")]
    _, obs = run_model(ops, cfg)
    m = obs.mms[0]
    assert (m.rss, m.swap) == (0, 512)
    assert {p.kind for _, p in m.pages} == {"swap"}
    assert len({p.slot for _, p in m.pages}) == 512


def test_canonical_labels_follow_first_appearance() -> None:
    obs = Observation({
        1: MmObs([], 0, 0, 0, [(5, PageObs("pte", 900, 0, 0, 1, 0))]),
        0: MmObs([], 0, 0, 0, [(3, PageObs("pte", 77, 1, 9, 1, 0)),
                               (4, PageObs("swap", slot=41)),
                               (6, PageObs("pte", 900, 0, 0, 1, 0))]),
    })
    c = canonical(obs)
    assert [p.folio for _, p in c.mms[0].pages] == [0, None, 1]
    assert c.mms[0].pages[1][1].slot == 0
    assert c.mms[1].pages[0][1].folio == 1  # the same folio as mm 0's page 6


def test_compare_names_the_first_differing_page_field() -> None:
    a = Observation({0: MmObs([(0, 2, "rw", ())], 1, 0, 0,
                              [(0, PageObs("pte", 0, 0, 0, 1, 5)), (1, PageObs("none"))])})
    b = Observation({0: MmObs([(0, 2, "rw", ())], 1, 0, 0,
                              [(0, PageObs("pte", 0, 0, 0, 1, 6)), (1, PageObs("none"))])})
    d = compare(3, a, b)
    assert d == Disagreement(3, "mm0.page[0].content", 5, 6)
    assert d.cls == "page.content"
    assert compare(3, a, b, frozenset({"page.content"})) is None


def test_ignoring_vmas_still_compares_the_memory_they_cover() -> None:
    split = [(0, 512, "rw", ()), (512, 1024, "rw", ())]
    assert coalesce(split) == [(0, 1024, "rw", ())]
    a = Observation({0: MmObs(split, 0, 0, 0, [])})
    b = Observation({0: MmObs([(0, 1024, "rw", ())], 0, 0, 0, [])})
    assert compare(0, a, b) is not None
    assert compare(0, a, b, frozenset({"vmas"})) is None
    c = Observation({0: MmObs([(0, 1024, "r", ())], 0, 0, 0, [])})
    assert compare(0, a, c, frozenset({"vmas"})) is not None


def test_counters_counted_less_by_the_kernel_are_definite() -> None:
    # Other processes only add events: a kernel delta below the model's is the program's;
    # above it, or on a gauge, it may be noise (confirmed by a rerun instead).
    model = {"vmstat.thp_split_pmd": 1, "vmstat.thp_fault_alloc": 0, "mthp.nr_anon": 1}
    kernel = {"vmstat.thp_split_pmd": 0, "vmstat.thp_fault_alloc": 2, "mthp.nr_anon": 0}
    got = {d.observable: definite for d, definite in compare_counters(0, kernel, model)}
    assert got == {"vmstat.thp_split_pmd": True, "vmstat.thp_fault_alloc": False,
                   "mthp.nr_anon": False}


def test_folios_split_counts_thps_whose_pages_became_order_0_or_zero() -> None:
    before = Observation({0: MmObs([], 0, 0, 0, [
        (0, PageObs("pte", 1000, 0, 9, 1, 5)), (1, PageObs("pte", 1000, 1, 9, 1, 0)),
        (2, PageObs("pte", 2000, 0, 9, 1, 0)), (3, PageObs("pte", 3000, 7, 9, 1, 1))])})
    after = Observation({0: MmObs([], 0, 0, 0, [
        (0, PageObs("pte", 1000, 0, 0, 1, 5)), (1, PageObs("zero", content=0)),
        (2, PageObs("zero", content=0)), (3, PageObs("pte", 3000, 7, 9, 1, 1))])})
    assert conform.folios_split(before, after) == 2


# --------------------------------------------------------------------------------------
# The model side of drop_caches (no root)
# --------------------------------------------------------------------------------------


def test_shrinker_passes_are_read_off_the_failed_splits() -> None:
    # each drop_slab() pass fails once more on every folio that failed in the model's pass
    assert conform.shrinker_passes(1, 3) == 3
    assert conform.shrinker_passes(2, 6) == 3
    # nothing failed in the model: further passes change nothing, one is enough
    assert conform.shrinker_passes(0, 5) == 1
    # not a whole number of passes, or fewer failures than one pass: left as a disagreement
    assert conform.shrinker_passes(2, 3) == 1
    assert conform.shrinker_passes(1, 0) == 1
    assert conform.shrinker_passes(1, 1) == 1


def _model_at(ops: list[dict[str, object]], n: int) -> tuple[RefModel, Program]:
    """The reference model after the first ``n`` ops of the program ``ops``."""
    p = program(ops, geometry="x86_64", pud_enabled="never")
    model = RefModel(p.config)
    for op in p.ops[:n]:
        model.apply(op)
    return model, p


def test_model_drop_slab_repeats_the_pass_on_a_pinned_folio() -> None:
    # MINIMAL shrinker_passes_on_a_pinned_folio: read 0 (huge zero PMD), write 0 (a THP
    # replaces it), pin page 5 (refcount 1 PMD + 1 pin), munmap the upper half (the PMD is
    # split, 256 PTEs stay: refcount 257, large 255, partially mapped and queued).
    ops = MINIMAL["shrinker_passes_on_a_pinned_folio"][2]
    model, _ = _model_at(ops, len(ops) - 1)
    before = model_counters(model.snapshot())
    # The model's shrink_deferred: one pass, the split fails (refcount 257 != 255 + 1).
    first = model.apply(spec.ShrinkDeferred())
    assert first == 0
    # The kernel's drop_slab() counted 3 failed splits: three passes; the model makes two
    # more, failing in each (the folio stays queued); mm 0 holds the huge zero folio.
    total = conform.model_drop_slab(model, first, before, {"mthp.split_failed": 3}, {0})
    assert total == 0
    after = model_counters(model.snapshot())
    assert after["mthp.split_failed"] - before["mthp.split_failed"] == 3
    assert after["vmstat.thp_split_page_failed"] - before["vmstat.thp_split_page_failed"] == 3
    assert model.snapshot()["deferred"] != []


def test_model_drop_slab_frees_the_huge_zero_folio_nobody_holds() -> None:
    # MINIMAL huge_zero_folio_freed_by_drop_caches, up to the exit of mm 1: mm 1 mapped
    # the huge zero PMD (thp_zero_page_alloc 1) and exited, mm 0 never mapped it.
    ops = MINIMAL["huge_zero_folio_freed_by_drop_caches"][2]
    model, p = _model_at(ops, 3)
    holders = conform.huge_zero_holders(set(), project_snapshot(model.snapshot()))
    assert holders == {1}  # the child's read fault took a reference
    model.apply(p.ops[3])  # exit mm 1
    holders = conform.huge_zero_holders(holders, project_snapshot(model.snapshot()))
    assert holders == set()
    before = model_counters(model.snapshot())
    assert before["vmstat.thp_zero_page_alloc"] == 1
    first = model.apply(p.ops[4])
    assert conform.model_drop_slab(model, first, before, {}, holders) == 0
    # freed: mm 0's read fault on [512, 1024) allocates it again, as the kernel's does
    model.apply(p.ops[5])
    assert model_counters(model.snapshot())["vmstat.thp_zero_page_alloc"] == 2


def test_model_drop_slab_keeps_the_huge_zero_folio_an_mm_holds() -> None:
    ops = MINIMAL["huge_zero_folio_freed_by_drop_caches"][2]
    model, p = _model_at(ops, 3)  # mm 1 maps the huge zero PMD and stays alive
    holders = conform.huge_zero_holders(set(), project_snapshot(model.snapshot()))
    before = model_counters(model.snapshot())
    conform.model_drop_slab(model, model.apply(spec.ShrinkDeferred()), before, {}, holders)
    model.apply(p.ops[5])  # mm 0's read fault finds the folio: no new allocation
    assert model_counters(model.snapshot())["vmstat.thp_zero_page_alloc"] == 1


# --------------------------------------------------------------------------------------
# What can run here (no root)
# --------------------------------------------------------------------------------------


def program(ops: list[dict[str, object]], **config: object) -> Program:
    return parse_program({"format": spec.PROGRAM_FORMAT, "config": config, "ops": ops}, "t")


def test_geometry_and_pud_enabled_are_forced_when_left_at_their_defaults() -> None:
    p = conform.pmd_level_config(program([]), {})
    assert (p.config.geometry, p.config.pud_enabled) == (512, "never")


def test_other_geometry_or_pud_thp_cannot_run() -> None:
    with pytest.raises(conform.CannotRun, match="geometry"):
        conform.pmd_level_config(program([], geometry="small"), {"geometry": "small"})
    with pytest.raises(conform.CannotRun, match="PUD"):
        conform.pmd_level_config(program([], pud_enabled="always"), {"pud_enabled": "always"})


@pytest.mark.parametrize(("op", "why"), [
    ({"op": "migrate", "mm": 0, "start": 0, "npages": 1, "node": 1}, "NUMA"),
    ({"op": "fail_alloc", "order": "pmd", "count": 1}, "injection"),
    ({"op": "mmap", "mm": 0, "start": 512**3 - 1, "npages": 2, "prot": "rw"}, "address space"),
])
def test_unsupported_ops_cannot_run(op: dict[str, object], why: str) -> None:
    with pytest.raises(conform.CannotRun, match=why):
        conform.check_ops(program([op], geometry="x86_64"))


def test_cli_cannot_run_is_exit_4_with_the_reason(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    # 4 is the kselftest skip code: the program is fine, this machine cannot run it.
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": spec.PROGRAM_FORMAT,
                                "config": {"geometry": "x86_64", "pud_enabled": "never"},
                                "ops": [{"op": "fail_alloc", "order": "pmd", "count": 1}]}))
    assert main(["conform", str(path)]) == 4
    out, err = capsys.readouterr()
    assert "cannot run here" in out
    assert "fail_alloc" in out
    assert "Traceback" not in out + err
    pud = tmp_path / "pud.json"
    pud.write_text(json.dumps({"format": spec.PROGRAM_FORMAT,
                               "config": {"pud_enabled": "always"}, "ops": []}))
    assert main(["conform", str(pud)]) == 4
    assert "PUD" in capsys.readouterr().out


def test_cli_bad_input_or_usage_is_exit_2(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform"]) == 2  # neither PROGRAM nor --random
    assert main(["conform", "--random", "0"]) == 2
    assert main(["conform", str(tmp_path / "missing.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "pudthp-program/1", "ops": [{"op": "mmap"}]}')
    assert main(["conform", str(bad)]) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert len(lines) == 4
    assert all(line.startswith("pudthp: error: ") for line in lines)
    assert "missing.json" in lines[2]
    assert "bad.json" in lines[3]
    assert "cannot run here" not in out + err
    assert "Traceback" not in out + err


def test_the_lru_drain_file_never_goes_on_tmpfs() -> None:
    # generic_fadvise() returns early for noop_backing_dev_info (tmpfs), so a drain file
    # there would never reach lru_add_drain_all(): such directories are passed over.
    tmpfs = [d for d in ("/dev/shm", "/run", "/tmp")
             if os.path.isdir(d) and os.access(d, os.W_OK)
             and k.fs_magic(d) == k.TMPFS_MAGIC]
    if not tmpfs:
        pytest.skip("no writable tmpfs directory here")
    assert live._disk_dir((tmpfs[0],)) is None
    assert live._disk_dir((tmpfs[0], str(ROOT))) == (
        None if k.fs_magic(str(ROOT)) in (k.TMPFS_MAGIC, k.RAMFS_MAGIC) else str(ROOT))


def test_random_programs_use_only_what_the_machine_can_do() -> None:
    for i in range(30):
        p = gen.random_pmd_program(7, i, 40, split_folio=False)
        conform.check_ops(p)
        kinds = {op.KIND for op in p.ops}
        assert not kinds & {"migrate", "fail_alloc", "split_folio"}
        assert (p.config.geometry, p.config.pud_enabled) == (512, "never")
        for op in p.ops:
            if isinstance(op, spec.Mmap | spec.Munmap | spec.Mprotect | spec.Madvise):
                assert op.start + op.npages <= 8 * 512


# --------------------------------------------------------------------------------------
# The live kernel (root and PMD THP)
# --------------------------------------------------------------------------------------

# The global-counter artefacts of conform.KNOWN (explained in docs/conform.md, "Checking the model
# against the live kernel"); the live tests look past them.
IGNORE = conform.LOOK_PAST


def _live_problem() -> str | None:
    try:
        live.check_machine()
    except conform.KernelError as e:
        return f"cannot run here: {e}"
    return None


LIVE_PROBLEM = _live_problem()
TestFn = TypeVar("TestFn", bound=Callable[..., object])


def live_only(test: TestFn) -> TestFn:
    """A test of the live kernel: marked ``live`` (``-m "not live"`` leaves it out) and
    skipped, with the reason, where this machine cannot run it."""
    skip = pytest.mark.skipif(LIVE_PROBLEM is not None, reason=str(LIVE_PROBLEM))
    return pytest.mark.live(skip(test))  # type: ignore[no-any-return]


def conform_run(p: Program, ignore: frozenset[str] = IGNORE) -> conform.ConformRun:
    try:
        with conform.Session(ignore) as session:
            return session.run(p)
    except (conform.CannotRun, conform.KernelError) as e:
        pytest.skip(f"cannot run here: {e}")


def describe(run: conform.ConformRun, p: Program) -> str:
    assert run.disagreement is not None
    return conform.describe(run.disagreement, p)


# Every PMD-level seed (x86_64 geometry, PUD THP off) with its results, derived by hand in
# the seed's "meta" note from kernel-thp-semantics.md section 7.
PMD_SEEDS: dict[str, list[int | str]] = {
    # mmap (0), A writes 1 (PMD fault, 0), fork -> mm 1, B writes 2 to page 1 (PMD split
    # in B, COW copy, 0), A munmaps (0), B writes 3 to page 2 (reused in place, 0); B reads
    # 1, 2, 3 and 0 (page 3 never written); A's read is SIGSEGV (unmapped).
    "worked_example_pmd_x86_64.json": [0, 0, 1, 0, 0, 0, 1, 2, 3, 0, "SIGSEGV"],
    # mmap 0, write 0, write 0, fork -> 1, B writes page 1 (0), A munmaps (0), B writes
    # page 2 (0), shrink_deferred splits the one partially mapped folio (1); B reads 1, 2,
    # 3, 0 (zero-filled page 3 is now the zero page) and 4 (last page); A's read is SIGSEGV
    # (unmapped); B writes 5 into its order-0 page 0 and reads it back.
    "worked_example_pmd_steps4to6_x86_64.json": [0, 0, 0, 1, 0, 0, 0, 1, 1, 2, 3, 0, 4,
                                                 "SIGSEGV", 0, 5],
    # T6 at PMD level: mmap, five writes, pageout (0); the reads swap 11, 12, 13 back in and
    # 513 was never written (0); the writes (0) store 16 and 17, which the reads return.
    "pud_reclaim_x86_64.json": [0, 0, 0, 0, 0, 0, 0, 11, 12, 13, 0, 0, 0, 16, 17],
}


def test_every_pmd_level_seed_has_expected_results() -> None:
    seeds = sorted(f.name for f in (ROOT / "corpus" / "seeds").glob("*.json")
                   if json.loads(f.read_text())["config"].get("pud_enabled") == "never"
                   and json.loads(f.read_text())["config"].get("geometry") == "x86_64")
    assert seeds == sorted(PMD_SEEDS)


@pytest.mark.slow
@live_only
@pytest.mark.parametrize("name", sorted(PMD_SEEDS))
def test_pmd_level_seed_conforms(name: str) -> None:
    p = conform.pmd_level_config(load_program_file(str(ROOT / "corpus" / "seeds" / name)), {})
    run = conform_run(p)
    assert run.disagreement is None, describe(run, p)
    assert run.kernel_results == PMD_SEEDS[name]


@pytest.mark.slow
@live_only
def test_worked_example_step_6_shrinker_conforms() -> None:
    # Step 6: the deferred split shrinker splits F (partially mapped, not pinned): B keeps
    # its written pages, the zero-filled ones go to the zero page (RSS of B drops).
    base = json.loads(WORKED_EXAMPLE.read_text())
    ops = [
        *base["ops"][:6],
        {"op": "shrink_deferred"},
        {"op": "read", "mm": 1, "addr": 512},
        {"op": "read", "mm": 1, "addr": 514},
        {"op": "read", "mm": 1, "addr": 600},
    ]
    p = program(ops, geometry="x86_64", pud_enabled="never")
    run = conform_run(p)
    assert run.disagreement is None, describe(run, p)
    assert run.kernel_results[6:] == [1, 1, 3, 0]


@pytest.mark.slow
@live_only
def test_small_pmd_program_conforms() -> None:
    # mprotect splits a PMD mapping, a partial munmap queues the folio as partially mapped,
    # fork shares and COW copies, and the shrinker splits; swap-out and swap-in of data.
    ops = [
        {"op": "mmap", "mm": 0, "start": 0, "npages": 1536, "prot": "rw"},
        {"op": "read", "mm": 0, "addr": 1024},
        {"op": "write", "mm": 0, "addr": 3, "value": 11},
        {"op": "write", "mm": 0, "addr": 600, "value": 12},
        {"op": "mprotect", "mm": 0, "start": 100, "npages": 10, "prot": "r"},
        {"op": "munmap", "mm": 0, "start": 700, "npages": 20},
        {"op": "fork", "mm": 0},
        {"op": "write", "mm": 1, "addr": 3, "value": 13},
        {"op": "write", "mm": 0, "addr": 1030, "value": 14},
        {"op": "shrink_deferred"},
        {"op": "madvise", "mm": 0, "start": 512, "npages": 512, "advice": "pageout"},
        {"op": "read", "mm": 0, "addr": 600},
        {"op": "read", "mm": 1, "addr": 3},
        {"op": "exit", "mm": 1},
        {"op": "munmap", "mm": 0, "start": 0, "npages": 1536},
    ]
    p = program(ops, geometry="x86_64", pud_enabled="never", swap_pages=8192)
    run = conform_run(p)
    assert run.disagreement is None, describe(run, p)


@pytest.mark.slow
@live_only
def test_pageout_after_the_sharing_child_exits_writes_the_page() -> None:
    # Page 100 is an order-0 folio (thp_enabled madvise, no MADV_HUGEPAGE) holding 5.
    # fork: the child maps it too (mapcount 2).  exit: the child's mapping goes, mapcount 1.
    # MADV_PAGEOUT: madvise_cold_or_pageout_pte_range skips only folios maybe mapped
    # shared, so the folio is reclaimed: it is not zero-filled, so swap_writeout writes it
    # (pswpout +1, the PTE becomes a swap entry, RSS 0).  The read swaps it back in from the
    # device (pswpin +1) and returns 5.  Without LruDrain the executor's own GUP reads left a
    # reference in a per-CPU batch and the kernel kept the folio unwritten in the swap cache.
    ops = [
        {"op": "mmap", "mm": 0, "start": 0, "npages": 1024, "prot": "rw"},
        {"op": "write", "mm": 0, "addr": 100, "value": 5},
        {"op": "fork", "mm": 0},
        {"op": "exit", "mm": 1},
        {"op": "madvise", "mm": 0, "start": 0, "npages": 1024, "advice": "pageout"},
        {"op": "read", "mm": 0, "addr": 100},
    ]
    p = program(ops, geometry="x86_64", pud_enabled="never", thp_enabled="madvise",
                swap_pages=4096)
    run = conform_run(p)
    assert run.disagreement is None, describe(run, p)
    assert run.kernel_results == [0, 0, 1, 0, 0, 5]


@pytest.mark.slow
@live_only
def test_bounded_random_run_agrees() -> None:
    """20 seeded random programs, with swap configured (pageout without swap is a known
    disagreement: docs/model.md 9.7 changes nothing, the kernel splits)."""
    failures = []
    with conform.Session(IGNORE) as session:
        split = session.split_problem() is None
        for i in range(20):
            rng = random.Random(f"ci:{i}")
            pmds = rng.choice((2, 3, 4))
            cfg = gen.random_pmd_config(rng, pmds * 512)
            fields = {k: getattr(cfg, k) for k in Config.KEYS}
            cfg = Config(**{**fields, "swap_pages": 4 * pmds * 512})
            weights = dict(gen.RANDOM_WEIGHTS)
            if not split:
                weights["split_folio"] = 0
            p = gen.PmdProgramGenerator(cfg, rng, pmds, weights).program(30)
            run = session.run(p)
            if run.disagreement is not None:
                failures.append(f"program ci:{i}: {describe(run, p)}")
    assert not failures, "\n".join(failures)


# One minimal program per disagreement of docs/conform.md, with the observable it shows first.
_MAP = {"op": "mmap", "mm": 0, "start": 0, "npages": 512, "prot": "rw"}
_READ0 = {"op": "read", "mm": 0, "addr": 0}
MINIMAL: dict[str, tuple[str, dict[str, object], list[dict[str, object]]]] = {
    # the executor's store read the word first (a ctypes field setter): a huge zero PMD
    # before the write fault; a store alone is a plain THP write fault
    "zero_folio_on_thp_write": ("vmstat.thp_zero_page_alloc", {}, [
        _MAP, {"op": "write", "mm": 0, "addr": 0, "value": 5}]),
    # mm 1 maps the huge zero PMD (allocated: +1 on both sides) and exits, so nothing holds
    # the folio; drop_caches frees it (shrink_huge_zero_folio_scan) and mm 0's read fault
    # allocates it again (+1): the model side of drop_caches does the same
    "huge_zero_folio_freed_by_drop_caches": ("vmstat.thp_zero_page_alloc", {}, [
        {"op": "mmap", "mm": 0, "start": 0, "npages": 1024, "prot": "rw"},
        {"op": "fork", "mm": 0}, {"op": "read", "mm": 1, "addr": 0}, {"op": "exit", "mm": 1},
        {"op": "shrink_deferred"}, {"op": "read", "mm": 0, "addr": 512}]),
    "vma_merge_after_fork": ("vmas", {}, [
        _MAP, _READ0, {"op": "write", "mm": 0, "addr": 0, "value": 1}, {"op": "fork", "mm": 0},
        {"op": "mmap", "mm": 1, "start": 512, "npages": 512, "prot": "rw"}]),
    "anon_vma_reuse": ("vmas", {}, [
        _MAP, {"op": "mmap", "mm": 0, "start": 512, "npages": 512, "prot": "r"}, _READ0,
        {"op": "read", "mm": 0, "addr": 600},
        {"op": "mprotect", "mm": 0, "start": 512, "npages": 512, "prot": "rw"}]),
    "dontneed_frees_page_table": ("rss", {}, [
        {"op": "mmap", "mm": 0, "start": 0, "npages": 1024, "prot": "rw"},
        {"op": "madvise", "mm": 0, "start": 0, "npages": 1024, "advice": "nohugepage"},
        {"op": "write", "mm": 0, "addr": 512, "value": 1},
        {"op": "madvise", "mm": 0, "start": 0, "npages": 1024, "advice": "hugepage"},
        {"op": "madvise", "mm": 0, "start": 512, "npages": 512, "advice": "dontneed"},
        {"op": "write", "mm": 0, "addr": 512, "value": 2}]),
    "pageout_without_swap": ("rss", {"swap_pages": 0}, [
        _MAP, _READ0, {"op": "write", "mm": 0, "addr": 0, "value": 5},
        {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "pageout"}]),
    "zeromap_pageout": ("vmstat.thp_swpout", {"swap_pages": 4096}, [
        _MAP, _READ0, {"op": "write", "mm": 0, "addr": 0, "value": 0},
        {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "pageout"}]),
    "swapin_of_a_shared_slot": ("page.mapcount", {"swap_pages": 4096, "thp_enabled": "madvise"}, [
        _MAP, {"op": "write", "mm": 0, "addr": 0, "value": 7},
        {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "pageout"},
        {"op": "fork", "mm": 0}, _READ0, {"op": "read", "mm": 1, "addr": 0}]),
    # found by a kernel campaign: mm 0's read swaps in a slot its child's swap PTE also
    # names, so the kernel keeps the folio in the swap cache, with that slot; the next
    # pageout reclaims the clean folio with no IO, back to that slot (mm 0's and mm 1's
    # swap PTEs name one slot), where the model writes it to a new one
    "pageout_of_a_swap_cache_folio": ("page.slot", {"swap_pages": 8192}, [
        {"op": "mmap", "mm": 0, "start": 0, "npages": 16, "prot": "rw"},
        {"op": "write", "mm": 0, "addr": 11, "value": 1},
        {"op": "madvise", "mm": 0, "start": 0, "npages": 16, "advice": "pageout"},
        {"op": "fork", "mm": 0}, {"op": "read", "mm": 0, "addr": 11},
        {"op": "madvise", "mm": 0, "start": 0, "npages": 16, "advice": "pageout"}]),
    # the kernel counts nothing when another process holds the huge zero folio (open:
    # machine-global state; shown on demand by test_a_huge_zero_folio_held_elsewhere...)
    "huge_zero_folio_held_elsewhere": ("vmstat.thp_zero_page_alloc", {}, [_MAP, _READ0]),
    # drop_caches repeats the shrinker pass; the pinned folio fails in each: the model side
    # repeats it as often
    "shrinker_passes_on_a_pinned_folio": ("vmstat.thp_split_page_failed", {}, [
        _MAP, _READ0, {"op": "write", "mm": 0, "addr": 0, "value": 1},
        {"op": "pin", "mm": 0, "addr": 5},
        {"op": "munmap", "mm": 0, "start": 256, "npages": 256},
        {"op": "shrink_deferred"}]),
}


@pytest.mark.slow
@live_only
@pytest.mark.parametrize("name", sorted(MINIMAL))
def test_known_disagreement_shows_as_explained(name: str) -> None:
    """A disagreement of docs/conform.md still open (conform.KNOWN) either shows first on its own
    observable, recognised as known, or the kernel and the model now agree (then docs/conform.md
    and KNOWN want updating).  One the model fixed must agree."""
    observable, config, ops = MINIMAL[name]
    p = program(ops, geometry="x86_64", pud_enabled="never", **config)
    run = conform_run(p, IGNORE - {observable})
    if name not in conform.KNOWN:
        assert run.disagreement is None, describe(run, p)
    elif run.disagreement is not None:
        assert run.disagreement.cls == observable, describe(run, p)
        assert conform.known_reason(run.disagreement, p, run.facts) is not None, \
            describe(run, p)


def _hold_huge_zero_folio() -> tuple[int, int]:
    """A process that maps a huge zero PMD and keeps it until its pipe is closed: (pid,
    the pipe's write end)."""
    r, w = os.pipe()
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(w)
            os.close(ready_r)
            os.write(ready_w, b"1" if live.map_huge_zero_pmd() else b"0")
            os.read(r, 1)  # until the test closes its end
        finally:
            os._exit(0)
    os.close(r)
    os.close(ready_w)
    mapped = os.read(ready_r, 1)
    os.close(ready_r)
    if mapped != b"1":
        os.close(w)
        os.waitpid(pid, 0)
        pytest.skip("no huge zero PMD could be mapped here")
    return pid, w


@pytest.mark.slow
@live_only
def test_a_huge_zero_folio_held_elsewhere_is_told_to_the_model() -> None:
    # A process outside the run keeps the huge zero folio: the program's read fault maps a
    # huge zero PMD without allocating it.  The run finds the holder at its start and tells
    # the model the folio exists, so neither side counts thp_zero_page_alloc.
    _, config, ops = MINIMAL["huge_zero_folio_held_elsewhere"]
    p = program(ops, geometry="x86_64", pud_enabled="never", **config)
    pid, w = _hold_huge_zero_folio()
    try:
        run = conform_run(p)
    finally:
        os.close(w)
        os.waitpid(pid, 0)
    assert run.disagreement is None, describe(run, p)
    assert any("held the huge zero folio" in n for n in run.noise)


@pytest.mark.slow
@live_only
def test_a_holder_that_came_during_the_run_is_a_checked_fact() -> None:
    # A disagreement of the kernel not allocating the huge zero folio is explained only when
    # the machine shows another holder after the run (a fresh process's huge zero PMD does
    # not allocate it): the fact the KNOWN entry needs.
    d = Disagreement(1, "vmstat.thp_zero_page_alloc", 0, 1)
    p = program(MINIMAL["huge_zero_folio_held_elsewhere"][2], geometry="x86_64")
    pid, w = _hold_huge_zero_folio()
    try:
        with live.run_lock():
            facts = conform.machine_facts(d)
    finally:
        os.close(w)
        os.waitpid(pid, 0)
    assert facts == {conform.HUGE_ZERO_HELD_ELSEWHERE}
    assert conform.known_kind(d, p, facts) == "huge_zero_folio_held_elsewhere"
    assert conform.known_kind(d, p) is None  # not without the check
    # the kernel counting *more* is never this explanation, and needs no probe
    assert conform.machine_facts(Disagreement(1, "vmstat.thp_zero_page_alloc", 1, 0)) == set()


def test_every_open_disagreement_has_a_minimal_program() -> None:
    assert set(conform.KNOWN) <= set(MINIMAL)


def test_known_disagreements_are_named_and_others_are_not() -> None:
    # The explanations of docs/conform.md, chosen by observable class and the op that showed it.
    D = Disagreement

    p = program([_MAP, {"op": "write", "mm": 0, "addr": 0, "value": 5},
                 {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "pageout"},
                 {"op": "shrink_deferred"}], geometry="x86_64", swap_pages=0)
    assert conform.known_kind(D(2, "mm0.rss", 0, 512), p) == "pageout_without_swap"
    assert "without swap" in str(conform.known_reason(D(2, "mm0.rss", 0, 512), p))
    # the two global-counter artefacts are gone at their root: no longer explained away
    assert conform.known_reason(D(1, "vmstat.thp_zero_page_alloc", 1, 0), p) is None
    assert conform.known_reason(D(3, "mthp.split_failed", 2, 1), p) is None
    with_swap = program([_MAP, {"op": "write", "mm": 0, "addr": 0, "value": 5},
                         {"op": "madvise", "mm": 0, "start": 0, "npages": 512,
                          "advice": "pageout"}], geometry="x86_64", swap_pages=4096)
    # the same observables where no explanation fits: no swap-in without swap, an rss
    # difference after another op, or after a pageout with swap
    assert conform.known_reason(D(1, "mm0.page[0].mapcount", 2, 1), p) is None
    assert conform.known_reason(D(3, "mm0.rss", 0, 512), p) is None
    assert conform.known_reason(D(0, "mm0.page[0].mapcount", 2, 1), p) is None
    assert conform.known_reason(D(2, "mm0.rss", 0, 512), with_swap) is None
    # with swap, a write that is no swap-in (op 1 faults a fresh THP) is not explained
    assert conform.known_reason(D(1, "mm0.page[0].mapcount", 2, 1), with_swap) is None


def test_a_swap_in_is_known_only_where_the_slot_was_shared() -> None:
    # MINIMAL swapin_of_a_shared_slot: thp_enabled madvise, so op 1's write faults one
    # order-0 page; op 2 pages it out (one slot, one swap PTE: count 1); op 3's fork
    # copies the swap PTE (swap_duplicate: count 2).  Op 4 (mm 0) and op 5 (mm 1) fault
    # on a swap PTE of that slot, which two PTEs named: the explanation's state holds.
    D = Disagreement
    observable, config, ops = MINIMAL["swapin_of_a_shared_slot"]
    p = program(ops, geometry="x86_64", pud_enabled="never", **config)
    for i in (4, 5):
        assert conform.known_kind(D(i, "mm0.page[0].mapcount", 2, 1), p) == \
            "swapin_of_a_shared_slot"
        assert conform.known_kind(D(i, "vmstat.pswpin", 0, 1), p) == "swapin_of_a_shared_slot"
    # Without the fork the slot is named by one swap PTE only: the read at op 3 is a
    # swap-in, but of a slot nobody shares; no explanation.
    alone = program([*ops[:3], _READ0], geometry="x86_64", pud_enabled="never", **config)
    assert conform.known_kind(D(3, "mm0.page[0].mapcount", 2, 1), alone) is None
    # The program (no swap-out at all, swap configured): map a THP (op 1 writes
    # it), unmap all but 3 of its pages, fork, exit the child, write page 2.  Whatever the
    # write shows, no swap PTE is met: a write-fault reuse bug is never excused as a
    # shared swap slot.
    reuse = program([_MAP, {"op": "write", "mm": 0, "addr": 0, "value": 1},
                     {"op": "munmap", "mm": 0, "start": 3, "npages": 509},
                     {"op": "fork", "mm": 0}, {"op": "exit", "mm": 1},
                     {"op": "write", "mm": 0, "addr": 2, "value": 9}],
                    geometry="x86_64", pud_enabled="never", swap_pages=4096)
    for observable in ("mm0.page[2].mapcount", "mm0.page[2].folio", "vmstat.pswpin"):
        assert conform.known_kind(D(5, observable, 1, 2), reuse) is None


def test_a_pageout_without_swap_is_known_only_over_a_large_folio() -> None:
    # No swap: the kernel splits a THP it cannot swap out, docs/model.md 9.7 changes nothing.
    # Over order-0 pages only (thp_enabled never: op 1 faults one order-0 page) there is
    # nothing to split, so a difference there is no such split.
    D = Disagreement
    ops = [_MAP, {"op": "write", "mm": 0, "addr": 0, "value": 5},
           {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "pageout"}]
    thp = program(ops, geometry="x86_64", swap_pages=0)
    small = program(ops, geometry="x86_64", swap_pages=0, thp_enabled="never")
    assert conform.known_kind(D(2, "mm0.rss", 0, 512), thp) == "pageout_without_swap"
    assert conform.known_kind(D(2, "mm0.rss", 0, 512), small) is None
    # a pageout of a range the THP is not in (page 511 of [0, 512) is, [512, 1024) is not)
    beside = program([{"op": "mmap", "mm": 0, "start": 0, "npages": 1024, "prot": "rw"},
                      *ops[1:2],
                      {"op": "madvise", "mm": 0, "start": 512, "npages": 512,
                       "advice": "pageout"}], geometry="x86_64", swap_pages=0)
    assert conform.known_kind(D(2, "mm0.rss", 0, 512), beside) is None


def test_a_restore_failure_does_not_hide_the_error_on_its_way_out(
        capsys: pytest.CaptureFixture[str]) -> None:
    # Settings.restore() collects what it could not put back; raised on its own, but
    # printed (not raised over it) while another error is already leaving the run.
    def fail() -> None:
        raise OSError("gone")

    def run_failing(s: live.Settings) -> None:
        try:
            raise ValueError("the run's own error")
        finally:
            conform._restore(s, "could not restore")

    s = live.Settings()
    s.on_restore("a knob", fail)
    with pytest.raises(ValueError, match="the run's own error"):
        run_failing(s)
    assert "could not restore" in capsys.readouterr().err
    s = live.Settings()
    s.on_restore("a knob", fail)
    with pytest.raises(conform.KernelError, match="could not restore"):
        conform._restore(s, "could not restore")


# --------------------------------------------------------------------------------------
# --junit: read off the JSON report (no kernel needed)
# --------------------------------------------------------------------------------------


def test_junit_cases_of_a_random_report_fail_the_unexplained_only() -> None:
    disagreement = {"op_index": 3, "observable": "mm0.page[512].kind", "kernel": "pmd",
                    "model": "pte"}
    data = {"format": "pudthp-conform-random/1", "seed": 7, "n": 3,
            "signatures": {"page.kind:fault": [1], "vmstat.thp_zero_page_alloc": [2]},
            "runs": [{"index": 0, "disagreement": None, "known": None},
                     {"index": 1, "disagreement": disagreement, "known": None},
                     {"index": 2, "disagreement": disagreement, "known": "zero_folio"}]}
    cases = conform_cases(data, strict=False)
    assert [(c.name, c.failure) for c in cases] == [
        ("random 7:0", None),
        ("random 7:1", "DISAGREE page.kind:fault: op 3: mm0.page[512].kind: kernel 'pmd', "
                       "model 'pte'"),
        ("random 7:2", None),  # a known disagreement passes without --strict
    ]
    strict = conform_cases(data, strict=True)
    assert strict[2].failure == ("known zero_folio vmstat.thp_zero_page_alloc: op 3: "
                                 "mm0.page[512].kind: kernel 'pmd', model 'pte'")
    one = conform_cases({"format": "pudthp-conform-report/1", "program": "p.json",
                         "disagreement": None, "known": None}, strict=True)
    assert [(c.name, c.failure) for c in one] == [("p.json", None)]


def test_junit_of_a_conform_run_that_could_not_run_is_one_skipped_case(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = tmp_path / "junit.xml"
    code = main(["conform", str(tmp_path / "missing.json"), "--junit", str(report)])
    assert code == 2
    assert capsys.readouterr().err.startswith("pudthp: error: ")
    suite = ET.parse(report).getroot()[0]
    (case,) = suite.iter("testcase")
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == ("1", "0", "1")
    skipped = case.find("skipped")
    assert skipped is not None
    assert skipped.get("message") == "did not run to its end (exit status 2)"
