"""Kernel campaigns (``harness/conform/campaign.py``, ``kfeatures.py``, ``kshrink.py``,
``kbench.py``; ``fuzz/kmachine.py``, ``fuzz/kernel.py``): what a campaign draws on which
machine (a made-up sysfs for the PUD level this machine lacks), the two-of-three rule,
verdicts, signatures and archived findings, kernel-observation features, the kernel
machine's places; and, as root on a kernel with PMD THP (``slow``, skipped elsewhere), a
short seeded campaign on the real reference finding nothing unexplained, the cheap and full
comparisons agreeing, the settings restored.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.kernel import KernelFinding, archive_kernel_finding, kernel_payload
from fuzz.kmachine import REGION_PMDS, SWAP_PAGES, KernelCounts, kernel_configs
from harness.conform import campaign, kfeatures, kside, live
from harness.conform.campaign import (
    CannotRun,
    Capabilities,
    Verdict,
    capabilities,
    check_program,
    two_of_three,
)
from harness.conform.compare import ConformRun
from harness.conform.kbench import Leg, Throughput
from harness.conform.kfeatures import KFeatures, KTally, Look
from harness.conform.observe import Disagreement
from harness.program import load_program_file, parse_program
from harness.shrink import shrink
from pudthp_ref import spec
from pudthp_ref.spec import Config, Finding, Program

GCC = shutil.which("gcc")
X86 = spec.GEOMETRIES["x86_64"]


def program(ops: list[dict[str, object]], **config: object) -> Program:
    cfg: dict[str, object] = {"geometry": "x86_64", "pud_enabled": "never", **config}
    return parse_program({"format": spec.PROGRAM_FORMAT, "config": cfg, "ops": ops}, "t")


def fake_sysfs(tmp_path: Path, sizes: tuple[str, ...], nodes: int) -> tuple[str, str]:
    thp = tmp_path / "transparent_hugepage"
    for size in sizes:
        (thp / f"hugepages-{size}").mkdir(parents=True)
    node = tmp_path / "node"
    node.mkdir()
    for i in range(nodes):
        (node / f"node{i}").mkdir()
    (node / "possible").write_text("0\n")  # not a node directory
    return str(thp), str(node)


# --------------------------------------------------------------------------------------
# What a campaign draws here
# --------------------------------------------------------------------------------------


def test_a_pmd_machine_with_one_node_and_locked_debugfs(tmp_path: Path) -> None:
    # This machine: PMD THP only, one NUMA node, debugfs locked down.  fail_alloc never
    # (no per-order allocation-failure injection), migrate needs a second node,
    # split_folio a writable debugfs; PUD THP stays off.
    thp, node = fake_sysfs(tmp_path, ("2048kB", "64kB"), 1)
    caps = capabilities("locked down", thp, node, release="6.18.0")
    assert caps.level == "pmd"
    assert caps.pud_choices == ("never",)
    assert set(caps.skipped) == {"fail_alloc", "migrate", "split_folio"}
    assert caps.skipped["split_folio"] == "locked down"
    assert caps.ops == set(spec.OP_TYPES) - {"fail_alloc", "migrate", "split_folio"}
    assert (caps.nodes, caps.release) == (1, "6.18.0")


def test_a_pud_machine_with_two_nodes(tmp_path: Path) -> None:
    # A kernel with hugepages-1048576kB (the RFC's PUD THP) and two nodes: the PUD level,
    # programs may turn PUD THP on, migrate runs; only fail_alloc is left out.
    thp, node = fake_sysfs(tmp_path, ("2048kB", "1048576kB"), 2)
    caps = capabilities(None, thp, node)
    assert caps.level == "pud"
    assert set(caps.pud_choices) == {"never", "always", "madvise", "inherit"}
    assert set(caps.skipped) == {"fail_alloc"}
    assert caps.nodes == 2


def test_the_pud_level_sets_the_pud_knob(tmp_path: Path) -> None:
    # apply_kernel_config at PUD level sets hugepages-1048576kB/enabled to the program's
    # pud_enabled, after everything live.apply_config sets (recorded, not written here).
    written: list[tuple[str, str]] = []

    class Recording(live.Settings):
        def set(self, path: str, value: str) -> None:
            written.append((path, value))

    cfg = Config(geometry=X86, pud_enabled="madvise", swap_pages=0)
    kside.apply_kernel_config(Recording(), cfg, "pud", True)
    assert written[-1] == (f"{campaign.k.THP_DIR}/hugepages-1048576kB/enabled", "madvise")
    written.clear()
    kside.apply_kernel_config(Recording(), Config(geometry=X86, pud_enabled="never"),
                                 "pmd", True)
    assert not any("1048576kB/enabled" in p and v != "never" for p, v in written)
    # without the campaign's huge zero folio the zero page is off whatever the program says
    written.clear()
    kside.apply_kernel_config(Recording(), Config(geometry=X86, use_zero_page=True),
                                 "pmd", False)
    assert (f"{campaign.k.THP_DIR}/use_zero_page", "0") in written


def test_programs_a_machine_cannot_run_are_refused(tmp_path: Path) -> None:
    thp, node = fake_sysfs(tmp_path, ("2048kB",), 1)
    caps = capabilities("locked", thp, node)
    ok = program([{"op": "mmap", "mm": 0, "start": 0, "npages": 512, "prot": "rw"}])
    check_program(ok, caps)
    with pytest.raises(CannotRun, match="geometry"):
        check_program(parse_program({"format": spec.PROGRAM_FORMAT,
                                     "config": {"geometry": "small"}, "ops": []}, "t"), caps)
    with pytest.raises(CannotRun, match="PUD THP"):
        check_program(program([], pud_enabled="always"), caps)
    with pytest.raises(CannotRun, match="split_folio"):
        check_program(program([{"op": "split_folio", "mm": 0, "addr": 0}]), caps)
    with pytest.raises(CannotRun, match="fail_alloc"):
        check_program(program([{"op": "fail_alloc", "order": "pmd", "count": 1}]), caps)


@settings(max_examples=50, deadline=None)
@given(st.data())
def test_campaign_configs_are_what_the_machine_runs(data: st.DataObject) -> None:
    # PMD level: x86_64, PUD THP never, one node, swap off or four regions' worth
    caps = Capabilities("pmd", frozenset(), {}, "6.18", 1)
    cfg = Config.from_json(data.draw(kernel_configs(caps)))
    assert (cfg.geometry, cfg.pud_enabled, cfg.nodes) == (X86, "never", 1)
    assert cfg.swap_capacity in (0, SWAP_PAGES)
    assert SWAP_PAGES == 4 * REGION_PMDS * X86
    pud = Capabilities("pud", frozenset(), {}, "7.2", 2)
    cfg = Config.from_json(data.draw(kernel_configs(pud)))
    assert cfg.pud_enabled in pud.pud_choices
    assert cfg.nodes == 2


# --------------------------------------------------------------------------------------
# Two runs of three
# --------------------------------------------------------------------------------------


D = Disagreement


def runs_of(*items: list[Disagreement]) -> Any:
    """A run function returning a run with each ``items`` in turn."""
    todo = list(items)

    def run() -> ConformRun:
        r = ConformRun()
        r.items = list(todo.pop(0))
        return r

    return run


def test_two_clean_runs_end_it() -> None:
    run, n = two_of_three(runs_of([], [], [D(1, "rss", 1, 2)]))
    assert (run.disagreement, n) == (None, 2)


def test_a_difference_two_runs_show_alike_counts() -> None:
    d = D(3, "mm0.rss", 0, 512)
    run, n = two_of_three(runs_of([d], [d]))
    assert (run.disagreement, n) == (d, 2)
    # the first clean, the second and third alike: two of three
    run, n = two_of_three(runs_of([], [d], [d]))
    assert (run.disagreement, n) == (d, 3)


def test_a_difference_one_run_in_three_shows_does_not_count() -> None:
    d = D(3, "mm0.rss", 0, 512)
    run, n = two_of_three(runs_of([d], [], []))
    assert (run.disagreement, n) == (None, 3)
    assert any("not repeated" in x for x in run.noise)
    # the same op and observable with other values is another difference
    run, n = two_of_three(runs_of([d], [D(3, "mm0.rss", 0, 511)], [D(3, "mm0.rss", 1, 512)]))
    assert run.disagreement is None


def test_a_cheap_run_counts_as_one_of_the_three() -> None:
    # What the cheap run showed (a result, a counter) and one full run alike: confirmed
    # with one full run; not alike: two more full runs may still confirm it.
    d = D(2, "vmstat.thp_split_pmd", 1, 2)
    run, n = two_of_three(runs_of([d]), seen=[d])
    assert (run.disagreement, n) == (d, 2)
    run, n = two_of_three(runs_of([], [d]), seen=[d])
    assert (run.disagreement, n) == (d, 3)
    run, n = two_of_three(runs_of([], []), seen=[d])
    assert (run.disagreement, n) == (None, 3)
    assert run.noise == []  # the cheap run's own differences are its caller's to note
    # an end-state difference the full run locates earlier is another difference
    early = D(1, "mm0.page[0].kind", "pte", "pmd")
    run, n = two_of_three(runs_of([early], [early]), seen=[D(4, "mm0.rss", 0, 1)])
    assert (run.disagreement, n) == (early, 3)


def test_the_first_difference_two_runs_share_is_the_disagreement() -> None:
    early, late = D(1, "result", 0, "EINVAL"), D(4, "vmas", [], [])
    run, _ = two_of_three(runs_of([late, early], [early, late]))
    assert run.disagreement == early


# --------------------------------------------------------------------------------------
# Verdicts and findings
# --------------------------------------------------------------------------------------

_MAP = {"op": "mmap", "mm": 0, "start": 0, "npages": 512, "prot": "rw"}
WRITE_REUSE = program([_MAP, {"op": "write", "mm": 0, "addr": 0, "value": 1},
                       {"op": "munmap", "mm": 0, "start": 3, "npages": 509},
                       {"op": "fork", "mm": 0}, {"op": "exit", "mm": 1},
                       {"op": "write", "mm": 0, "addr": 2, "value": 9}], swap_pages=4096)


def test_a_signature_is_the_op_kind_and_the_observable_class() -> None:
    # never the mm, the page or the values: one kernel behaviour, one finding
    for observable, kernel, model in (("mm0.page[2].folio", 0, 1), ("mm1.page[7].folio", 3, 4)):
        v = Verdict(WRITE_REUSE, D(5, observable, kernel, model))
        assert v.signature == "disagreement:write:page.folio"
    pageout = program([_MAP, {"op": "madvise", "mm": 0, "start": 0, "npages": 512,
                              "advice": "pageout"}])
    assert Verdict(pageout, D(1, "mm0.rss", 0, 1)).signature == \
        "disagreement:madvise.pageout:rss"


def test_an_unexplained_disagreement_is_a_finding_a_known_one_only_when_strict() -> None:
    d = D(5, "mm0.page[2].folio", 0, 1)
    f = Verdict(WRITE_REUSE, d).finding()
    assert f is not None
    assert (f.kind, f.op_index, f.signature) == ("disagreement", 5,
                                                  "disagreement:write:page.folio")
    assert json.loads(f.detail) == {"observable": "mm0.page[2].folio", "kernel": 0,
                                    "model": 1}
    known = Verdict(WRITE_REUSE, d, known="swapin_of_a_shared_slot")
    assert known.finding() is None
    assert known.finding(strict=True) is not None
    assert Verdict(WRITE_REUSE).finding() is None


def test_known_kinds_and_noise_are_counted() -> None:
    c = KernelCounts()
    c.add(Verdict(WRITE_REUSE, D(5, "vmstat.pswpin", 0, 1), known="swapin_of_a_shared_slot",
                  runs=3))
    c.add(Verdict(WRITE_REUSE, runs=2, noise=["not repeated"]))
    c.add(Verdict(WRITE_REUSE, runs=1))
    assert (c.known, c.noise, c.runs) == ({"swapin_of_a_shared_slot": 1}, 1, 6)
    assert KernelCounts.from_json(c.to_json()) == c


def kernel_finding() -> KernelFinding:
    finding = Finding("disagreement", 5, "disagreement:write:page.folio",
                      "op 5 (write mm=0 addr=2 value=9): mm0.page[2].folio: kernel 0, model 1",
                      json.dumps({"observable": "mm0.page[2].folio", "kernel": 0,
                                  "model": 1}))
    return kernel_payload(WRITE_REUSE, finding, 7, 0, "kernel (12 runs)")


def test_a_finding_is_archived_with_its_values_release_and_reproducer(
        tmp_path: Path) -> None:
    found = kernel_finding()
    archive_kernel_finding(str(tmp_path), found)
    assert found.path is not None
    assert found.c_path == found.path.removesuffix(".json") + ".c"
    assert found.new
    p = load_program_file(found.path)
    assert p.ops == WRITE_REUSE.ops
    m = p.meta
    assert (m["signature"], m["kind"], m["impl"], m["op_index"]) == (
        "disagreement:write:page.folio", "disagreement", "kernel", 5)
    assert (m["observable"], m["kernel_value"], m["model_value"]) == ("mm0.page[2].folio", 0, 1)
    assert m["kernel_release"] == os.uname().release
    assert m["seed"] == 7
    text = Path(found.c_path).read_text()
    assert "pudthp reproducer of disagreement:write:page.folio: 6 ops" in text
    # archived once: a second archive keeps both files
    again = kernel_finding()
    archive_kernel_finding(str(tmp_path), again)
    assert (again.path, again.new) == (found.path, False)
    assert sorted(os.listdir(tmp_path)) == sorted(
        [os.path.basename(found.path), os.path.basename(found.c_path)])


@pytest.mark.skipif(GCC is None, reason="no gcc on this machine")
def test_a_findings_reproducer_builds_without_warnings(tmp_path: Path) -> None:
    found = kernel_finding()
    assert found.c_text is not None
    src = tmp_path / "f.c"
    src.write_text(found.c_text)
    r = subprocess.run([str(GCC), "-O2", "-Wall", "-o", str(tmp_path / "f"), str(src)],
                       capture_output=True, text=True, check=False)
    assert (r.returncode, r.stderr) == (0, "")


def test_shrinking_asks_the_judge_it_is_given() -> None:
    # A made-up judge (no kernel): the program "disagrees" at its first write to page 2
    # once a fork came before it, whatever else it does.  The shrink keeps the signature
    # and what the judge needs, a fork and then that write; every candidate is the judge's.
    asked: list[int] = []

    def judge(p: Program) -> Finding | None:
        asked.append(len(p.ops))
        forked = False
        for i, op in enumerate(p.ops):
            forked = forked or isinstance(op, spec.Fork)
            if forked and isinstance(op, spec.Write) and op.addr == 2:
                return Finding("disagreement", i, "disagreement:write:page.folio", "m")
        return None

    r = shrink(WRITE_REUSE, "kernel", judge=judge, keep=("geometry", "pud_enabled"))
    assert r.finding.signature == "disagreement:write:page.folio"
    assert [op.KIND for op in r.program.ops] == ["fork", "write"]
    assert asked
    assert r.runs == len(asked) - 1


# --------------------------------------------------------------------------------------
# Kernel-observation features
# --------------------------------------------------------------------------------------


def test_the_catalogue_is_every_op_kind_times_every_observation() -> None:
    names = kfeatures.NAMES
    assert len(names) == len(set(names)) == kfeatures.N_KFEATURES
    assert "write:vmstat.thp_fault_alloc" in names
    assert "madvise.pageout:mthp.swpout" in names
    assert "fork:mapcount=2" in names
    assert "read:fault=major" in names
    assert "mmap:fault=none" not in names  # only accesses fault
    assert {n.split(":")[0] for n in names} == set(kfeatures.OP_KEYS)


def test_an_ops_features_are_its_counters_kinds_mapcounts_and_fault() -> None:
    f = KFeatures()
    write = spec.Write(0, 0, 1)
    f.add_op(write, {"vmstat.thp_fault_alloc": 1, "mthp.nr_anon": 1, "vmstat.pswpin": 0,
                     "vmstat.thp_collapse_alloc": 3},  # not a compared counter: no feature
             Look(frozenset({"pmd"}), frozenset({"1"})), (1, 0), 0)
    assert f.hit_names() == {"write:vmstat.thp_fault_alloc": 1, "write:mthp.nr_anon": 1,
                             "write:page=pmd": 1, "write:mapcount=1": 1,
                             "write:fault=minor": 1}
    f.reset()
    f.add_op(spec.Read(0, 5), {}, None, (3, 1), 0)
    assert f.hit_names() == {"read:fault=major": 1}
    f.reset()
    f.add_op(spec.Read(0, 5), {}, None, None, "SIGSEGV")
    assert f.hit_names() == {"read:fault=sigsegv": 1}
    f.reset()
    f.add_op(spec.Madvise(0, 0, 512, "pageout"), {"vmstat.thp_swpout": 1},
             Look(frozenset({"swap"}), frozenset()), None, 0)
    assert f.hit_names() == {"madvise.pageout:vmstat.thp_swpout": 1,
                             "madvise.pageout:page=swap": 1}
    assert kfeatures.mapcount_class(7) == "4+"


def test_kernel_tallies_add_up_and_print() -> None:
    a, b = KFeatures(), KFeatures()
    a.add_op(spec.Fork(0), {}, Look(frozenset({"pte"}), frozenset({"2"})), None, 1)
    b.add_op(spec.Fork(0), {}, Look(frozenset({"pte"}), frozenset()), None, 1)
    t = KTally()
    t.add_program(a.hits, a.ops)
    t.add_program(b.hits, b.ops)
    assert (t.programs, t.ops, t.covered()) == (2, 2, 2)
    assert KTally.from_json(t.to_json()) == t
    total = KTally.total([t, None, t])
    assert total.hits[kfeatures.INDEX["fork:page=pte"]] == 4
    text = total.table("kernel")
    assert "kernel: 4 programs, 4 ops; 2/" in text
    assert "fork:page=pte" in text
    assert "never hit, per op kind:" in text


# --------------------------------------------------------------------------------------
# The side-by-side throughput figures
# --------------------------------------------------------------------------------------


def test_throughput_figures_are_rates_and_ratios() -> None:
    t = Throughput(Leg("conform --random", 4, 160, 8.0), Leg("runner", 4, 160, 1.0),
                   Leg("engine", 4, 200, 2.0))
    assert (t.conform.rate, t.runner.rate, t.engine.rate) == (20.0, 160.0, 100.0)  # type: ignore[union-attr]
    text = "\n".join(t.lines())
    assert "runner / conform --random: 8.0x" in text
    assert "engine / conform --random: 5.0x" in text


def test_a_kernel_finding_replays_on_the_kernel_or_is_skipped(tmp_path: Path) -> None:
    # corpus replay runs a kernel campaign's finding (meta.impl kernel) on the live kernel
    # (here a stand-in judge), never on the models; where the machine cannot, it is skipped
    # with the reason and changes nothing.
    from harness import corpus

    found = kernel_finding()
    archive_kernel_finding(str(tmp_path), found)
    (entry,) = corpus.load_entries([str(tmp_path)])
    skipped = corpus.replay_entry(entry, None, lambda p: "needs the live kernel: not root")
    assert (skipped.verdict, skipped.note) == ("skipped", "needs the live kernel: not root")
    same = Finding("disagreement", 5, "disagreement:write:page.folio", "m")
    assert corpus.replay_entry(entry, None, lambda p: same).verdict == "still failing"
    assert corpus.replay_entry(entry, None, lambda p: None).verdict == "newly passing"


# --------------------------------------------------------------------------------------
# The live kernel (root and PMD THP)
# --------------------------------------------------------------------------------------

SEEDS = Path(__file__).resolve().parent.parent / "corpus" / "seeds"


def _live_problem() -> str | None:
    try:
        live.check_machine()
    except campaign.k.KernelError as e:
        return f"cannot run here: {e}"
    return None


LIVE_PROBLEM = _live_problem()
def live_only(test: Callable[..., None]) -> Callable[..., None]:
    """A test of the live kernel: marked ``live`` (``-m "not live"`` leaves it out) and
    skipped, with the reason, where this machine cannot run it."""
    skip = pytest.mark.skipif(LIVE_PROBLEM is not None, reason=str(LIVE_PROBLEM))
    return pytest.mark.live(skip(test))  # type: ignore[no-any-return]


def machine() -> campaign.KernelMachine:
    return campaign.KernelMachine(say=lambda _: None)


def pmd_seed(name: str) -> Program:
    from harness.conform.compare import pmd_level_config, raw_config_keys

    path = str(SEEDS / name)
    return pmd_level_config(load_program_file(path), raw_config_keys(path))


@pytest.mark.slow
@live_only
def test_a_short_campaign_on_the_reference_finds_nothing_unexplained() -> None:
    # A fixed seed and a fixed number of programs (never a time): every disagreement the
    # kernel shows with the real reference on this kernel is one KNOWN explains.
    from fuzz.kernel import search

    with machine() as m:
        r = search(m, 2, 12, shrink_seconds=0)
    assert r.programs >= 12
    assert r.ops > 12
    assert not r.findings, "\n".join(f.program for f in r.findings)
    assert r.ktally.covered() > 20  # it saw the kernel do things: faults, splits, ...


@pytest.mark.slow
@live_only
def test_the_campaigns_look_finds_what_conform_finds() -> None:
    # MINIMAL pageout_without_swap (test_conform): the THP written at op 2 is paged out
    # with no swap; the kernel splits it (zero-filled pages go to the zero page: rss drops)
    # where docs/model.md 9.7 changes nothing.  The cheap look sees only results and counters
    # (thp_split_page, ...: the kernel counted them, the model did not), the full runs
    # name the first difference, and KNOWN explains it.
    p = program([_MAP, {"op": "read", "mm": 0, "addr": 0},
                 {"op": "write", "mm": 0, "addr": 0, "value": 5},
                 {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "pageout"}],
                swap_pages=0)
    with machine() as m:
        v = m.run(p)
    assert v.disagreement is not None, v.noise
    assert v.disagreement.op_index == 3
    assert v.known == "pageout_without_swap"
    assert v.finding() is None
    # the cheap run, then full runs from scratch until two runs show it alike: the cheap
    # run names counters exactly as a full run does, so one full run may do
    assert v.runs >= 2


@pytest.mark.slow
@live_only
@pytest.mark.parametrize("name", ["worked_example_pmd_x86_64.json",
                                  "worked_example_pmd_steps4to6_x86_64.json",
                                  "pud_reclaim_x86_64.json"])
def test_the_pmd_seeds_agree_in_a_campaign(name: str) -> None:
    # The seeds conform agrees on (test_conform.PMD_SEEDS, results derived by hand there)
    # agree with the campaign's cheap looks too, shrink_deferred's count of split THPs
    # (the steps 4 to 6 seed: one) read from the THP pages alone.
    from tests.test_conform import PMD_SEEDS

    with machine() as m:
        v = m.run(pmd_seed(name))
    assert v.disagreement is None, v.noise
    assert v.results == PMD_SEEDS[name]


@pytest.mark.slow
@live_only
def test_the_issues_reuse_bug_is_no_shared_swap_slot(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # Issue 22 item 4: with the reference copying a large folio it should reuse, the
    # program (no swap-out at all, swap configured) disagrees at the write, and conform
    # no longer excuses it as a swap-in of a shared slot: exit 1.
    from planted_ref import cow_large_reuse_refused

    from harness.conform.compare import EXIT_DISAGREE, cmd_conform

    cow_large_reuse_refused(monkeypatch)
    path = tmp_path / "reuse.json"
    from harness.program import dump_program

    path.write_text(dump_program(WRITE_REUSE))
    report = tmp_path / "r.json"
    assert cmd_conform(str(path), str(report), None, 0, 0, None, True) == EXIT_DISAGREE
    data = json.loads(report.read_text())
    assert data["disagreement"]["op_index"] == 5
    assert data["known"] is None


@pytest.mark.slow
@live_only
def test_a_campaign_restores_every_setting() -> None:
    # Programs with and without swap, THP sizes set per program: afterwards every knob
    # has its value from before, no swap is on, zram is reset, the record is gone.
    thp = campaign.k.THP_DIR
    knobs = [f"{thp}/enabled", f"{thp}/defrag", f"{thp}/use_zero_page",
             f"{thp}/hugepages-2048kB/enabled", f"{thp}/khugepaged/scan_sleep_millisecs",
             "/proc/sys/vm/page-cluster"]
    with live.run_lock():
        before = {p: campaign.k.selected(campaign.k.read_text(p)) for p in knobs}
    with machine() as m:
        for swap in (SWAP_PAGES, 0, SWAP_PAGES):
            v = m.run(program([_MAP, {"op": "write", "mm": 0, "addr": 1, "value": 3},
                               {"op": "madvise", "mm": 0, "start": 0, "npages": 512,
                                "advice": "pageout"},
                               {"op": "read", "mm": 0, "addr": 1}],
                              swap_pages=swap, thp_enabled="madvise"))
            assert v.finding() is None, v.noise
    with live.run_lock():
        after = {p: campaign.k.selected(campaign.k.read_text(p)) for p in knobs}
        assert live.active_swaps() == []
        assert campaign.k.read_text("/sys/block/zram0/disksize").strip() == "0"
    assert after == before
    assert not os.path.exists(live.RECORD_PATH)


# The program a kernel campaign met on 6.18 (seed 0 of its search, shrunk on the kernel):
# a THP faulted in by the pin of page 512 (PMD range 1, pinned: refcount 512 + 1 pin),
# mprotect of page 512 splits the VMA and the PMD (the folio stays one large folio mapped
# by PTEs in two VMAs); a pageout of both PMD ranges with no swap.  The kernel's walk meets
# the folio in each VMA, neither wholly in range, and tries to split it each time
# (madvise_cold_or_pageout_pte_range): the pin fails both, thp_split_page_failed +2.
# docs/model.md 9.7: without swap a pageout changes nothing, so the model counts nothing.
FAILED_SPLITS = program([{"op": "mmap", "mm": 0, "start": 0, "npages": 1024, "prot": "rw"},
                         {"op": "pin", "mm": 0, "addr": 512},
                         {"op": "mprotect", "mm": 0, "start": 512, "npages": 1, "prot": "r"},
                         {"op": "madvise", "mm": 0, "start": 0, "npages": 1024,
                          "advice": "pageout"}], swap_pages=0)


def test_the_failed_splits_of_a_pageout_without_swap_are_known() -> None:
    from harness.conform.known import known_kind

    d = D(3, "vmstat.thp_split_page_failed", 2, 0)
    assert known_kind(d, FAILED_SPLITS) == "pageout_without_swap"
    # the model counting a split failure there is no such explanation (it changes nothing)
    assert known_kind(D(3, "vmstat.thp_split_page_failed", 2, 1), FAILED_SPLITS) is None


@pytest.mark.slow
@live_only
def test_the_failed_splits_of_a_pageout_without_swap_show_on_the_kernel() -> None:
    with machine() as m:
        v = m.run(FAILED_SPLITS)
    assert v.disagreement is not None, v.noise
    assert (v.disagreement.op_index, v.disagreement.cls) == (3, "vmstat.thp_split_page_failed")
    assert (v.disagreement.kernel, v.disagreement.model) == (2, 0)
    assert v.known == "pageout_without_swap"


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_atheris_inputs_decode_to_programs_the_machine_runs(data: bytes) -> None:
    # Every byte string is a program this PMD machine runs: x86_64, PUD THP never, swap
    # off or the campaign's size, no op it cannot express, every range in the region.
    from fuzz.kernel import KernelHunt

    caps = Capabilities("pmd", frozenset(spec.OP_TYPES) - {"fail_alloc", "migrate",
                                                           "split_folio"},
                        {}, "6.18", 1)
    p = KernelHunt(caps, max_ops=50).program(data)
    check_program(p, caps)
    assert p.config.swap_capacity in (0, SWAP_PAGES)
    region = REGION_PMDS * X86
    for op in p.ops:
        assert getattr(op, "start", getattr(op, "addr", 0)) < region
        assert getattr(op, "npages", 1) <= region + X86


def test_a_pageout_of_a_swap_cache_folio_is_known_only_where_the_folio_is_clean() -> None:
    # MINIMAL pageout_of_a_swap_cache_folio (test_conform): op 1 writes page 11 (one
    # order-0 folio), op 2 swaps it out (one slot), op 3's fork copies the swap PTE (the
    # slot now named twice), op 4 reads it back in mm 0 (a swap-in of a shared slot: the
    # kernel keeps the folio in the swap cache), op 5 pages out the clean page.
    from harness.conform.known import known_kind
    from tests.test_conform import MINIMAL

    _, config, ops = MINIMAL["pageout_of_a_swap_cache_folio"]
    p = program(ops, **config)
    assert known_kind(D(5, "mm1.page[11].slot", 0, 1), p) == "pageout_of_a_swap_cache_folio"
    assert known_kind(D(5, "vmstat.pswpout", 0, 1), p) == "pageout_of_a_swap_cache_folio"
    assert known_kind(D(5, "vmstat.pswpout", 1, 0), p) is None  # the kernel writing more
    # written after the swap-in (a write fault dirties the PTE, and the kernel frees the
    # swap cache's slot on a write fault): no swap-cache folio left to explain
    dirty = program([*ops[:5], {"op": "write", "mm": 0, "addr": 11, "value": 2}, ops[5]],
                    **config)
    assert known_kind(D(6, "vmstat.pswpout", 0, 1), dirty) is None
    # a swap-in of a slot nobody else named (no fork) leaves nothing in the swap cache
    alone = program([*ops[:3], ops[4], ops[5]], **config)
    assert known_kind(D(4, "vmstat.pswpout", 0, 1), alone) is None


def _replay(text: str, signature: str) -> str | None:
    from fuzz.hub_replay import Candidate, Replayer

    r = Replayer(seconds=120)
    try:
        r.start(Candidate(signature, text, "peer"))
        (done,) = r.wait(200)
    finally:
        r.close()
    return done[1]


def test_a_hub_kernel_finding_the_machine_cannot_run_is_not_trusted() -> None:
    # A kernel finding from the hub is replayed on this machine's kernel, never on the
    # models; one with an op this machine cannot express (split_folio here: debugfs locked
    # down; anywhere without root: the kernel itself) is not trusted, and says why.
    found = kernel_finding()
    meta_at = found.program.index('"meta"')
    text = found.program[:found.program.index('"ops": [') + 8] + \
        '{"op": "split_folio", "mm": 0, "addr": 0}],\n  ' + found.program[meta_at:]
    verdict = _replay(text, found.signature)
    assert verdict is not None
    assert "it needs the live kernel" in verdict or "replay found nothing" in verdict, verdict


@pytest.mark.slow
@live_only
def test_a_hub_kernel_finding_the_kernel_does_not_show_is_not_trusted() -> None:
    # A peer's "finding" of the issue's program: on the real reference the kernel agrees,
    # so its replay on this kernel finds nothing and it is not trusted.
    found = kernel_finding()
    assert _replay(found.program, found.signature) == "its replay found nothing"
