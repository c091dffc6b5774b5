"""``pudthp export-c``: a program as a C kernel selftest (KTAP) that runs it on the live
kernel and checks what the model predicts.

Without root: which programs can be expressed, the model's expectations as the C tables
hold them (derived by hand from docs/model.md and the kernel's definitions, as in
``test_conform.py``), the text of the file, that it builds with ``gcc -O2 -Wall`` and no
warning, and bad input.  With root and PMD THP (else skipped): every PMD-level seed and
every conformance minimal program builds, runs and passes on this kernel (known
disagreements reported as ``# known:``, never failing); a PUD program skips with exit 4; a
program whose expectation is altered here fails with exit 1 and a ``not ok`` line naming
the op; SIGTERM in the middle of a run leaves the settings as they were.

The binaries take the machine-wide conformance lock themselves (as ``pudthp conform``
does), so runs in parallel test workers wait for each other.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import UNMARKED
from test_conform import MINIMAL, PMD_SEEDS, _hold_huge_zero_folio, live_only

from harness.conform import compare as conform
from harness.conform import export_c, live
from harness.conform import kernel as k
from harness.conform.export_c import ExportError, PageRun, Reproducer
from harness.conform.observe import Disagreement, PageObs, huge_zero_view, project_snapshot
from harness.program import load_program_file, parse_program
from pudthp_cli.main import main
from pudthp_ref import spec
from pudthp_ref.model import RefModel
from pudthp_ref.spec import Program

ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "corpus" / "seeds"
GCC = shutil.which("gcc")
needs_gcc = pytest.mark.skipif(GCC is None, reason="no gcc on this machine")
RUN_TIMEOUT_S = 900  # the binary itself waits up to 600 s for the lock
PUD = 512 * 512  # pages of a PUD folio at x86_64 geometry


def program(ops: list[dict[str, object]], **config: object) -> Program:
    return parse_program({"format": spec.PROGRAM_FORMAT, "config": config, "ops": ops}, "t")


def reproducer(p: Program, explicit: dict[str, object] | None = None,
               name: str = "t.json") -> Reproducer:
    cfg = {"geometry": "x86_64", "pud_enabled": "never"} if explicit is None else explicit
    resolved, pud = export_c.resolve(p, cfg)
    return export_c.build(resolved, pud, name)


def seed_reproducer(name: str) -> Reproducer:
    path = str(SEEDS / name)
    resolved, pud = export_c.resolve(load_program_file(path), conform.raw_config_keys(path))
    return export_c.build(resolved, pud, name)


# --------------------------------------------------------------------------------------
# Which programs (no root)
# --------------------------------------------------------------------------------------


def test_defaults_are_forced_as_conform_does_and_an_explicit_pud_program_is_kept() -> None:
    p, pud = export_c.resolve(program([]), {})
    assert (p.config.geometry, p.config.pud_enabled, pud) == (512, "never", False)
    p, pud = export_c.resolve(program([], geometry="x86_64", pud_enabled="madvise"),
                              {"geometry": "x86_64", "pud_enabled": "madvise"})
    assert (p.config.geometry, p.config.pud_enabled, pud) == (512, "madvise", True)
    with pytest.raises(ExportError, match="geometry P=8"):
        export_c.resolve(program([], geometry="small"), {"geometry": "small"})


@pytest.mark.parametrize(("op", "pud", "why"), [
    ({"op": "fail_alloc", "order": "pmd", "count": 1}, False, "injection"),
    ({"op": "mmap", "mm": 0, "start": 512**3 - 1, "npages": 2, "prot": "rw"}, False,
     "address space"),
    ({"op": "migrate", "mm": 0, "start": 512**3, "npages": 1, "node": 1}, False,
     "address space"),
    ({"op": "split_folio", "mm": 0, "addr": 0}, True, "page walk"),
])
def test_what_the_live_kernel_cannot_express_is_refused(op: dict[str, object], pud: bool,
                                                        why: str) -> None:
    p = program([op], geometry="x86_64")
    with pytest.raises(ExportError, match=why):
        export_c.check_expressible(p, pud)


# --------------------------------------------------------------------------------------
# The model's expectations as the C tables hold them (no root)
# --------------------------------------------------------------------------------------


def test_page_runs_follow_folio_indices_order_0_labels_and_swap_slots() -> None:
    # Pages 0-3 of a PMD-mapped folio (label 0, index 0..3), page 0 holding 5: the written
    # page is a run of its own, the other three one run (index +1 each); two order-0
    # folios with consecutive labels are one run; a third with a gap in labels is not;
    # swap slots 0, 1 one run; two unmapped pages one run.
    pages = [
        (0, PageObs("pmd", 0, 0, 9, 1, 5)),
        (1, PageObs("pmd", 0, 1, 9, 1, 0)),
        (2, PageObs("pmd", 0, 2, 9, 1, 0)),
        (3, PageObs("pmd", 0, 3, 9, 1, 0)),
        (4, PageObs("pte", 1, 0, 0, 1, 0)),
        (5, PageObs("pte", 2, 0, 0, 1, 0)),
        (6, PageObs("pte", 4, 0, 0, 1, 0)),
        (7, PageObs("swap", slot=0)),
        (8, PageObs("swap", slot=1)),
        (9, PageObs("none")),
        (10, PageObs("none")),
        (12, PageObs("none")),  # a new VMA after a hole: a new run
    ]
    runs = export_c.page_runs(pages)
    assert runs == (
        PageRun(0, 1, pages[0][1]), PageRun(1, 3, pages[1][1]), PageRun(4, 2, pages[4][1]),
        PageRun(6, 1, pages[6][1]), PageRun(7, 2, pages[7][1]), PageRun(9, 2, pages[9][1]),
        PageRun(12, 1, pages[11][1]),
    )
    assert export_c.expand_runs(runs) == pages


def test_a_page_the_tables_cannot_hold_is_refused() -> None:
    with pytest.raises(ExportError, match="cannot express"):
        export_c.page_runs([(0, PageObs("pte", 0, 0, 0, 1, None))])


def test_worked_example_expectations() -> None:
    # kernel-thp-semantics.md section 7 at P=512 (the seed's meta note has the steps).
    rep = seed_reproducer("worked_example_pmd_x86_64.json")
    s = rep.steps
    assert rep.nmms == 2
    assert not rep.pud
    assert [x.result for x in s] == PMD_SEEDS["worked_example_pmd_x86_64.json"]
    # op 0, mmap: one VMA [512, 1024) rw, nothing mapped, no counter moves
    (m,) = s[0].mms
    assert (m.vmas, m.rss, m.anon_huge, m.swap) == (((512, 1024, "rw", ()),), 0, 0, 0)
    assert m.runs == (PageRun(512, 512, PageObs("none")),)
    assert s[0].counters == ()
    # op 1, write fault: one PMD leaf of an order-9 folio (label 0), page 512 holds 1,
    # mapcount 1 (entire 1, no PTE); RSS and AnonHugePages 512; do_huge_pmd_anonymous_page
    # counts thp_fault_alloc and, for the PMD order, anon_fault_alloc and nr_anon.
    (m,) = s[1].mms
    assert (m.rss, m.anon_huge) == (512, 512)
    assert m.runs == (PageRun(512, 1, PageObs("pmd", 0, 0, 9, 1, 1)),
                      PageRun(513, 511, PageObs("pmd", 0, 1, 9, 1, 0)))
    assert s[1].counters == (("vmstat.thp_fault_alloc", 1), ("mthp.anon_fault_alloc", 1),
                             ("mthp.nr_anon", 1))
    # op 3, B writes page 513: B's PMD is split (thp_split_pmd), page 513 COW-copied into
    # a new order-0 folio (label 1, holds 2); B's other pages map the THP by PTE with
    # mapcount 2 (B's PTE + A's entire mapping); A's page 513 is mapped only by A's PMD.
    a, b = s[3].mms
    assert a.runs == (PageRun(512, 1, PageObs("pmd", 0, 0, 9, 2, 1)),
                      PageRun(513, 1, PageObs("pmd", 0, 1, 9, 1, 0)),
                      PageRun(514, 510, PageObs("pmd", 0, 2, 9, 2, 0)))
    assert (b.rss, b.anon_huge) == (512, 0)
    assert b.runs == (PageRun(512, 1, PageObs("pte", 0, 0, 9, 2, 1)),
                      PageRun(513, 1, PageObs("pte", 1, 0, 0, 1, 2)),
                      PageRun(514, 510, PageObs("pte", 0, 2, 9, 2, 0)))
    assert s[3].counters == (("vmstat.thp_split_pmd", 1),)
    # op 4, A munmaps: A lives on with no VMA; the folio is partially mapped (page 513
    # mapped nowhere) and queued: thp_deferred_split_page, split_deferred and
    # nr_anon_partially_mapped +1.
    assert next((x.mm, x.vmas, x.runs) for x in s[4].mms) == (0, (), ())
    assert s[4].counters == (("vmstat.thp_deferred_split_page", 1),
                             ("mthp.split_deferred", 1), ("mthp.nr_anon_partially_mapped", 1))
    # Known disagreements (compare.KNOWN, through known_kind, which reads the reference's
    # state at each op): nothing is ever swapped out, so no read or write faults on a swap
    # PTE (no swapin_of_a_shared_slot), and no pageout (no pageout_without_swap); no read
    # allocates the huge zero folio (the writes fault THPs, op 2 reads a mapped THP), so
    # not even the one resting on a machine fact applies.  Nothing is known anywhere.
    assert all(x.known == () for x in s)
    # No op maps a huge zero PMD: the counters are the same whether or not another process
    # holds the huge zero folio; no shrink_deferred, so no further shrinker passes.
    assert all(x.counters_held is None and x.per_pass == () for x in s)


def test_huge_zero_folio_expectations_with_and_without_another_holder() -> None:
    # MINIMAL huge_zero_folio_freed_by_drop_caches.  Nobody else holding the huge zero
    # folio: mm 1's read fault maps a huge zero PMD over [0, 512) and allocates the folio
    # (thp_zero_page_alloc +1, mm_get_huge_zero_folio); mm 1 exits, so no mm holds it;
    # drop_caches (shrink_huge_zero_folio_scan) frees it; mm 0's read fault on [512, 1024)
    # allocates it again (+1).  A process outside the run holding it at the start (the
    # model told so, as conform's run_once does): it exists throughout, both reads count
    # nothing.  Nothing else differs; the empty queue makes shrink_deferred split nothing.
    _, config, ops = MINIMAL["huge_zero_folio_freed_by_drop_caches"]
    rep = reproducer(program(ops, geometry="x86_64", pud_enabled="never", **config))
    s = rep.steps
    assert [x.result for x in s] == [0, 1, 0, 0, 0, 0]
    zero_alloc = (("vmstat.thp_zero_page_alloc", 1),)
    assert [x.counters for x in s] == [(), (), zero_alloc, (), (), zero_alloc]
    assert [x.counters_held for x in s] == [None, None, (), None, None, ()]
    assert all(x.per_pass == () for x in s)
    mm0, mm1 = s[2].mms
    assert mm0.runs == (PageRun(0, 1024, PageObs("none")),)
    assert mm1.runs == (PageRun(0, 512, PageObs("hzero", content=0)),
                        PageRun(512, 512, PageObs("none")))
    (mm0,) = s[5].mms
    assert mm0.runs == (PageRun(0, 512, PageObs("none")),
                        PageRun(512, 512, PageObs("hzero", content=0)))
    text = export_c.render_c(rep)
    assert "static const struct counter_delta op2_counters_held[] = {\n\t{ NULL, 0 }," in text
    assert ".counters_held = op5_counters_held, .ncounters_held = 0," in text


def test_further_shrinker_passes_on_a_pinned_folio() -> None:
    # MINIMAL shrinker_passes_on_a_pinned_folio: read 0 maps the huge zero PMD (+1 zero
    # alloc, none if held elsewhere), write 0 replaces it by a THP (thp_fault_alloc,
    # anon_fault_alloc, nr_anon +1), pin page 5 (pin id 1), munmap [256, 512) splits the
    # PMD (thp_split_pmd) and queues the partially mapped folio (thp_deferred_split_page,
    # split_deferred, nr_anon_partially_mapped +1).  shrink_deferred: the split fails on the
    # pin (refcount 256 + 1 != the expected 256): thp_split_page_failed and split_failed
    # +1, nothing split (0), the folio stays queued, the pages unchanged.  Each further pass
    # drop_caches makes fails once more on it: +1 to both counters per pass
    # (model_drop_slab).
    _, config, ops = MINIMAL["shrinker_passes_on_a_pinned_folio"]
    rep = reproducer(program(ops, geometry="x86_64", pud_enabled="never", **config))
    s = rep.steps
    assert [x.result for x in s] == [0, 0, 0, 1, 0, 0]
    assert s[1].counters == (("vmstat.thp_zero_page_alloc", 1),)
    assert s[1].counters_held == ()
    assert s[2].counters == (("vmstat.thp_fault_alloc", 1), ("mthp.anon_fault_alloc", 1),
                             ("mthp.nr_anon", 1))
    assert s[4].counters == (("vmstat.thp_split_pmd", 1), ("vmstat.thp_deferred_split_page", 1),
                             ("mthp.split_deferred", 1), ("mthp.nr_anon_partially_mapped", 1))
    failed = (("vmstat.thp_split_page_failed", 1), ("mthp.split_failed", 1))
    assert s[5].counters == failed
    assert s[5].per_pass == failed
    assert s[5].counters_held is None
    assert s[5].mms == s[4].mms
    assert [x.per_pass for x in s[:5]] == [()] * 5
    assert ".per_pass = op5_per_pass, .nper_pass = 2," in export_c.render_c(rep)


def test_huge_zero_view_shows_the_huge_zero_pmds_of_the_projection() -> None:
    # The PUD path of export-c reads the huge zero folio's holders off the page tables
    # alone: mm 0 maps huge zero PMDs at [0, 512) and [1024, 1536) (two read faults),
    # [512, 1024) a THP (write fault); fork copies all three into mm 1 (copy_huge_pmd), and
    # mm 1 exits again in the second state.  The view has the first page of every huge zero
    # PMD of the full projection, of live mms only.
    ops = [{"op": "mmap", "mm": 0, "start": 0, "npages": 1536, "prot": "rw"},
           {"op": "read", "mm": 0, "addr": 3}, {"op": "write", "mm": 0, "addr": 600,
                                                "value": 1},
           {"op": "read", "mm": 0, "addr": 1100}, {"op": "fork", "mm": 0}]
    p = program(ops, geometry="x86_64", pud_enabled="never")
    model = RefModel(p.config)
    for op in p.ops:
        model.apply(op)
    hzero = PageObs("hzero", content=0)
    for alive in ({0, 1}, {0}):
        if alive == {0}:
            model.apply(spec.Exit(1))
        full = project_snapshot(model.snapshot())
        view = huge_zero_view(conform.page_tables_snapshot(model))
        assert set(view.mms) == set(full.mms) == alive
        for mm_id, m in view.mms.items():
            assert m.pages == [(0, hzero), (1024, hzero)]
            assert set(m.pages) <= set(full.mms[mm_id].pages)


def test_pud_program_expects_results_vmas_and_pud_counters() -> None:
    # pud_basic_alloc with pud_enabled set: a PUD program.  The first write faults one
    # 1 GiB folio (docs/model.md 7.2: thp_fault_alloc_pud, anon_fault_alloc and nr_anon of the
    # PUD order; the PMD-order thp_fault_alloc is not counted); no per-page expectations.
    path = SEEDS / "pud_basic_alloc_x86_64.json"
    raw = json.loads(path.read_text())
    raw["config"]["pud_enabled"] = "always"
    p = parse_program(raw, "pud")
    rep = reproducer(p, raw["config"])
    assert rep.pud
    s = rep.steps[1]
    assert s.counters == (("vmstat.thp_fault_alloc_pud", 1), ("mthp_pud.anon_fault_alloc", 1),
                          ("mthp_pud.nr_anon", 1))
    (m,) = s.mms
    assert m.vmas == ((262144, 524288, "rw", ()),)
    assert m.runs == ()
    assert [c.name for c in rep.counters if c.name.startswith("mthp_pud.")] == [
        f"mthp_pud.{n}" for n in spec.MTHP_KEYS]


# --------------------------------------------------------------------------------------
# The C text (no root)
# --------------------------------------------------------------------------------------

EVERY_OP = program([
    {"op": "mmap", "mm": 0, "start": 0, "npages": 1024, "prot": "rw"},
    {"op": "write", "mm": 0, "addr": 3, "value": 2**64 - 1},
    {"op": "mprotect", "mm": 0, "start": 600, "npages": 8, "prot": "r"},
    {"op": "madvise", "mm": 0, "start": 512, "npages": 512, "advice": "nohugepage"},
    {"op": "pin", "mm": 0, "addr": 5},
    {"op": "fork", "mm": 0},
    {"op": "split_folio", "mm": 0, "addr": 3},
    {"op": "migrate", "mm": 0, "start": 0, "npages": 512, "node": 1},
    {"op": "unpin", "pin": 1},
    {"op": "munmap", "mm": 1, "start": 0, "npages": 256},
    {"op": "shrink_deferred"},
    {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "pageout"},
    {"op": "read", "mm": 0, "addr": 3},
    {"op": "read", "mm": 0, "addr": 512**3},
    {"op": "exit", "mm": 1},
    {"op": "read", "mm": 1, "addr": 3},
], geometry="x86_64", pud_enabled="never", swap_pages=2048)


def test_every_op_has_a_commented_block_naming_it_and_what_the_model_expects() -> None:
    rep = reproducer(EVERY_OP)
    text = export_c.render_c(rep)
    for i, (op, step) in enumerate(zip(EVERY_OP.ops, rep.steps, strict=True)):
        block = re.search(rf"/\*\n \* op {i}: {re.escape(spec.op_str(op))}\n \*\n"
                          rf" \* The model returns {re.escape(str(step.result))}\.\n", text)
        assert block is not None, f"no block for op {i}"
    # the 64-bit value written and read back, the refused-looking address beyond the
    # window (SIGSEGV in the model), the pin id 1 and the forked mm id 1
    assert "18446744073709551615ULL" in text
    assert [s.result for s in rep.steps][12:16] == [2**64 - 1, "SIGSEGV", 0, "ESRCH"]
    assert rep.steps[4].result == 1
    assert rep.steps[5].result == 1
    assert ".split_folio = 1," in text
    assert ".pin = 1," in text
    assert ".nodes = 2," in text


def test_the_program_in_the_header_cannot_end_the_comment() -> None:
    p = program([], geometry="x86_64", pud_enabled="never")
    p = Program(p.config, p.ops, {"note": "a note with */ in it"})
    text = export_c.render_c(reproducer(p))
    header = text[: text.index("#define _GNU_SOURCE")]
    assert header.count("*/") == 1
    assert "with * / in it" in header


@pytest.mark.slow
@needs_gcc
def test_generated_c_builds_without_warnings(tmp_path: Path) -> None:
    # The build line (gcc -O2 -Wall) with more on top, every warning an error:
    # -Wextra, and _FORTIFY_SOURCE (unused results), as other distributions' compilers
    # enable it by default.  The live tests below build with the line itself.
    src = tmp_path / "t.c"
    src.write_text(export_c.render_c(reproducer(EVERY_OP)))
    r = subprocess.run([str(GCC), "-O2", "-Wall", "-Wextra", "-D_FORTIFY_SOURCE=2", "-Werror",
                        "-o", str(tmp_path / "t"), str(src)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""


def test_cli_writes_the_file_or_standard_output(tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    seed = str(SEEDS / "worked_example_pmd_x86_64.json")
    out = tmp_path / "we.c"
    assert main(["export-c", seed, "-o", str(out)]) == 0
    assert "gcc -O2 -Wall -o we" in capsys.readouterr().out
    assert main(["export-c", seed]) == 0
    assert capsys.readouterr().out == out.read_text()


@pytest.mark.parametrize(("content", "config", "needle"), [
    (None, None, "cannot read"),
    ("{", None, "invalid JSON"),
    ("", {"geometry": "x86_64", "pud_enabled": "never"}, "fail_alloc"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          content: str | None, config: dict[str, str] | None,
                                          needle: str) -> None:
    path = tmp_path / "p.json"
    if content == "" and config is not None:
        ops: list[dict[str, object]] = [{"op": "fail_alloc", "order": "pmd", "count": 1}]
        content = json.dumps({"format": spec.PROGRAM_FORMAT, "config": config, "ops": ops})
    if content is not None:
        path.write_text(content)
    assert main(["export-c", str(path), "-o", str(tmp_path / "out.c")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("pudthp: error: "), err
    assert err.count("\n") == 1, err
    assert needle in err
    assert "Traceback" not in err
    assert not (tmp_path / "out.c").exists()


def test_cli_usage_errors_are_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export-c"]) == 2
    assert main(["export-c", "a.json", "b.json"]) == 2
    assert "Traceback" not in capsys.readouterr().err


# --------------------------------------------------------------------------------------
# On the live kernel (root, PMD THP, gcc)
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Ktap:
    rc: int
    text: str

    def lines(self, pattern: str) -> list[re.Match[str]]:
        return [m for line in self.text.splitlines() if (m := re.match(pattern, line))]

    @property
    def results(self) -> dict[int, tuple[bool, str]]:
        """Test number -> (ok, the rest of the line)."""
        return {int(m[2]): (m[1] == "ok", m[3])
                for m in self.lines(r"(ok|not ok) (\d+) (.*)$")}

    def kernel_results(self, run: int = -1) -> list[str]:
        """The kernel's result of every op in run ``run`` (the ``# op N: ... -> R`` lines),
        by default the last, whose checks the ``ok`` lines report."""
        runs = self.text.split("# run ")
        return [m[1] for m in re.finditer(r"^# op \d+: .* -> (\S+)$", runs[run], re.M)]


def build_binary(text: str, where: Path, name: str) -> Path:
    src = where / f"{name}.c"
    src.write_text(text)
    binary = where / name
    r = subprocess.run([str(GCC), "-O2", "-Wall", "-o", str(binary), str(src)],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    return binary


def run_binary(binary: Path, **kw: object) -> Ktap:
    assert os.environ.get("PUDTHP_TEST_LIVE"), f"a reproducer run {UNMARKED}"
    r = subprocess.run([str(binary)], capture_output=True, text=True, check=False,
                       timeout=RUN_TIMEOUT_S, **kw)  # type: ignore[call-overload]
    out = Ktap(r.returncode, r.stdout + r.stderr)
    if out.rc == 4 and "# SKIP another run holds" in out.text:
        pytest.skip(f"the conformance lock stayed taken: {out.text.splitlines()[-1]}")
    return out


def assert_passes(out: Ktap, nops: int) -> None:
    assert out.rc == 0, out.text
    assert out.lines(r"1\.\.(\d+)$")[0][1] == str(nops)
    results = out.results
    assert sorted(results) == list(range(1, nops + 1)), out.text
    assert all(ok for ok, _ in results.values()), out.text


@pytest.mark.parametrize("name", sorted(PMD_SEEDS))
@pytest.mark.slow
@live_only
@needs_gcc
def test_pmd_level_seed_reproducer_passes(name: str, tmp_path: Path) -> None:
    rep = seed_reproducer(name)
    out = run_binary(build_binary(export_c.render_c(rep), tmp_path, "seed"))
    assert_passes(out, len(rep.steps))
    # The kernel's results, as the seeds' notes derive them (test_conform.PMD_SEEDS)
    assert out.kernel_results() == [str(r) for r in PMD_SEEDS[name]], out.text
    for m in out.lines(r"# known: op (\d+): (\S+): "):
        d = Disagreement(int(m[1]), m[2], None, None)
        assert conform.known_kind(d, rep.program, export_c.FACTS) is not None, m[0]


@pytest.mark.parametrize("name", sorted(MINIMAL))
@pytest.mark.slow
@live_only
@needs_gcc
def test_conformance_minimal_program_reproducer_passes(name: str, tmp_path: Path) -> None:
    """An open disagreement of docs/conform.md (compare.KNOWN) shows as ``# known:`` on its own
    observable, or not at all; one the model fixed shows no difference."""
    observable, config, ops = MINIMAL[name]
    p = program(ops, geometry="x86_64", pud_enabled="never", **config)
    rep = reproducer(p)
    out = run_binary(build_binary(export_c.render_c(rep), tmp_path, "minimal"))
    assert_passes(out, len(p.ops))
    known = {Disagreement(0, m[1], None, None).cls
             for m in out.lines(r"# known: op \d+: (\S+): ")}
    # a process that took the huge zero folio during the runs, found by the check after
    # them (huge_zero_folio_held_elsewhere), can show in any program with a read
    expected = {"vmstat.thp_zero_page_alloc"}
    if name in conform.KNOWN:
        expected |= {observable, *conform.KNOWN[name].classes}
    assert known <= expected, out.text
    # drop_caches' passes, when more than one, read off the kernel's failed splits as a
    # whole multiple of the model's one-pass count (shrinker_passes)
    for m in out.lines(r"# note: op \d+: drop_caches made (\d+) passes of the deferred "
                       r"split shrinker \(mthp\.split_failed (\d+), (\d+) a pass"):
        passes, kernel, model = int(m[1]), int(m[2]), int(m[3])
        assert passes > 1, m[0]
        assert kernel == passes * model, m[0]


@pytest.mark.slow
@pytest.mark.live  # the reproducer runs as root and reads the machine's THP settings
@needs_gcc
def test_pud_program_builds_and_skips_without_pud_thp(tmp_path: Path) -> None:
    raw = json.loads((SEEDS / "pud_basic_alloc_x86_64.json").read_text())
    raw["config"]["pud_enabled"] = "always"
    rep = reproducer(parse_program(raw, "pud"), raw["config"], "pud_basic_alloc.json")
    binary = build_binary(export_c.render_c(rep), tmp_path, "pud")
    if os.path.isdir(f"{k.THP_DIR}/hugepages-1048576kB"):
        pytest.skip("this kernel has PUD THP")
    out = run_binary(binary)
    assert out.rc == 4, out.text
    (skip,) = out.lines(r"1\.\.0 # SKIP (.*)$")
    assert skip[1].startswith("not root") or "no PUD-size (1048576 kB) THP" in skip[1]


@pytest.mark.slow
@live_only
@needs_gcc
def test_split_folio_program_skips_where_debugfs_is_locked_down(tmp_path: Path) -> None:
    # A write fault maps a PMD THP; split_folio of its page 3 splits it (docs/model.md 8.2: not
    # pinned, refcount as expected).  Under kernel lockdown debugfs cannot be written at
    # all: the binary skips, naming that.
    p = program([{"op": "mmap", "mm": 0, "start": 0, "npages": 512, "prot": "rw"},
                 {"op": "write", "mm": 0, "addr": 3, "value": 1},
                 {"op": "split_folio", "mm": 0, "addr": 3}],
                geometry="x86_64", pud_enabled="never")
    out = run_binary(build_binary(export_c.render_c(reproducer(p)), tmp_path, "split"))
    if out.rc == 4:
        (skip,) = out.lines(r"1\.\.0 # SKIP (.*)$")
        assert skip[1].startswith("split_folio: "), out.text
        assert "debugfs" in skip[1], out.text
    else:
        assert_passes(out, 3)
        assert out.kernel_results() == ["0", "0", "0"]


@contextlib.contextmanager
def huge_zero_holder() -> Iterator[int]:
    """The conformance lock, as a descriptor to hand to a reproducer, and while it is held
    a process outside any run that keeps the huge zero folio (a huge zero PMD mapped)."""
    with held_lock() as fd:
        pid, w = _hold_huge_zero_folio()
        try:
            yield fd
        finally:
            os.close(w)
            os.waitpid(pid, 0)


HOLDER_AT_START = (r"# a process outside the run holds the huge zero folio at the start: the "
                   r"model's expectations for a folio that exists are used$")


@pytest.mark.slow
@live_only
@needs_gcc
def test_a_huge_zero_folio_held_at_the_start_is_found_by_every_run(tmp_path: Path) -> None:
    # Another process keeps the huge zero folio for the whole run.  Every run finds it at
    # its start and checks the expectations of a model told the folio exists (as conform's
    # run_once tells its model): neither read counts thp_zero_page_alloc, not even the one
    # after drop_caches, while the kernel would disagree with the +1 of each that a model
    # allocating the folio expects
    # (test_huge_zero_folio_expectations_with_and_without_another_holder).
    _, config, ops = MINIMAL["huge_zero_folio_freed_by_drop_caches"]
    rep = reproducer(program(ops, geometry="x86_64", pud_enabled="never", **config))
    assert any(x.counters_held is not None for x in rep.steps)
    binary = build_binary(export_c.render_c(rep), tmp_path, "held")
    with huge_zero_holder() as fd:
        out = run_binary(binary, pass_fds=(fd,))
    assert_passes(out, len(rep.steps))
    runs = len(out.lines(r"# run \d+ from scratch$"))
    assert len(out.lines(HOLDER_AT_START)) == runs >= 1, out.text
    assert not out.lines(r"# known: "), out.text


def _held_like_free(rep: Reproducer, i: int) -> Reproducer:
    # As if the holder had come after the run's start: the expectations of a model that
    # allocates the huge zero folio itself, whoever holds it (counters_held None: the same
    # as counters).
    steps = [dataclasses.replace(x, counters_held=None) for x in rep.steps]
    return dataclasses.replace(rep, steps=tuple(steps))


def _zero_alloc_on_write(rep: Reproducer, i: int) -> Reproducer:
    # The model counting thp_zero_page_alloc +1 at a write fault, which the kernel does not.
    steps = list(rep.steps)
    steps[i] = dataclasses.replace(steps[i], counters=(*steps[i].counters,
                                                       ("vmstat.thp_zero_page_alloc", 1)))
    return dataclasses.replace(rep, steps=tuple(steps))


@pytest.mark.parametrize(("name", "alter", "known"), [
    # op 1 reads: the kernel (0) counts less than the model (1), and the check after the
    # runs finds the holder: known huge_zero_folio_held_elsewhere, exit 0
    ("huge_zero_folio_held_elsewhere", _held_like_free, True),
    # op 1 writes: the same shortfall at a write is no known disagreement (KNOWN's entry
    # applies to reads), holder or not: exit 1 naming the op
    ("zero_folio_on_thp_write", _zero_alloc_on_write, False),
])
@pytest.mark.slow
@live_only
@needs_gcc
def test_a_fact_explains_only_where_known_says(name: str, alter: object, known: bool,
                                               tmp_path: Path) -> None:
    assert callable(alter)
    _, config, ops = MINIMAL[name]
    rep = alter(reproducer(program(ops, geometry="x86_64", pud_enabled="never", **config)), 1)
    binary = build_binary(export_c.render_c(rep), tmp_path, "fact")
    with huge_zero_holder() as fd:
        out = run_binary(binary, pass_fds=(fd,))
    diff = "vmstat.thp_zero_page_alloc: kernel 0, model 1"
    if known:
        assert out.rc == 0, out.text
        assert out.lines(r"# checked after the runs: a process outside them holds the huge "
                         r"zero folio$"), out.text
        (m,) = out.lines(rf"# known: op 1: {diff}: (.*)$")
        assert m[1] == conform.KNOWN["huge_zero_folio_held_elsewhere"].reason
        assert_passes(out, len(rep.steps))
    else:
        assert out.rc == 1, out.text
        desc = spec.op_str(rep.program.ops[1])
        assert f"not ok 2 op 1: {desc}: {diff} (in 2 runs from scratch)" in \
            out.text.splitlines(), out.text
        assert not out.lines(r"# known: "), out.text


@pytest.mark.slow
@live_only
@needs_gcc
def test_a_shortfall_at_a_read_fails_unless_a_holder_is_found_after_the_runs(
        tmp_path: Path) -> None:
    # The model expects thp_zero_page_alloc +2 at the read (op 1), with or without a holder
    # at the start: the kernel counts 1 (nobody holds the folio) or 0 (somebody does), less
    # than 2 either way.  Whether that is known (huge_zero_folio_held_elsewhere) is decided
    # by the check after the runs: the holder found, exit 0 with the reason; none, exit 1
    # with a not ok naming the op.  Which one depends on the machine's other processes.
    _, config, ops = MINIMAL["huge_zero_folio_held_elsewhere"]
    rep = reproducer(program(ops, geometry="x86_64", pud_enabled="never", **config))
    steps = list(rep.steps)
    steps[1] = dataclasses.replace(steps[1], counters=(("vmstat.thp_zero_page_alloc", 2),),
                                   counters_held=None)
    rep = dataclasses.replace(rep, steps=tuple(steps))
    out = run_binary(build_binary(export_c.render_c(rep), tmp_path, "shortfall"))
    checked = out.lines(r"# checked after the runs: a process outside them (holds|does not "
                        r"hold) the huge zero folio$")
    if not checked:
        # the holder came or went between runs, so no run repeated the other's values
        assert out.rc == 0, out.text
        assert out.lines(r"# not repeated by another run from scratch: .*thp_zero_page_alloc")
        pytest.skip("another process took or left the huge zero folio between the runs")
    (m,) = checked
    held = m[1] == "holds"
    diff = f"vmstat.thp_zero_page_alloc: kernel {0 if held else 1}, model 2"
    if held:
        assert out.rc == 0, out.text
        assert out.lines(rf"# known: op 1: {diff}: "), out.text
    else:
        assert out.rc == 1, out.text
        assert f"not ok 2 op 1: read mm=0 addr=0: {diff} (in 2 runs from scratch)" in \
            out.text.splitlines(), out.text


def _alter_result(rep: Reproducer) -> tuple[Reproducer, str]:
    # op 6 of the worked example reads B's page 512: the kernel returns 1 (A's first
    # write, shared by fork); the altered model says 7.
    steps = list(rep.steps)
    steps[6] = dataclasses.replace(steps[6], result=7)
    return (dataclasses.replace(rep, steps=tuple(steps)),
            "not ok 7 op 6: read mm=1 addr=512: result: kernel 1, model 7")


def _alter_mapcount(rep: Reproducer) -> tuple[Reproducer, str]:
    # op 2 (fork): A's and B's PMDs map the THP, so every page has mapcount 2 (two entire
    # mappings); the altered model says 3 for mm 0's page 512.
    steps = list(rep.steps)
    mm0, mm1 = steps[2].mms
    run0 = mm0.runs[0]
    runs = (PageRun(run0.vpn, run0.n, dataclasses.replace(run0.page, mapcount=3)),
            *mm0.runs[1:])
    steps[2] = dataclasses.replace(steps[2], mms=(dataclasses.replace(mm0, runs=runs), mm1))
    return (dataclasses.replace(rep, steps=tuple(steps)),
            "not ok 3 op 2: fork mm=0: mm0.page[512].mapcount: kernel 2, model 3")


def _alter_counter(rep: Reproducer) -> tuple[Reproducer, str]:
    # op 1 (write fault) allocates one THP: thp_fault_alloc +1; the altered model says +2,
    # more than the kernel counted, which other processes cannot explain.
    steps = list(rep.steps)
    counters = tuple((n, 2 if n == "vmstat.thp_fault_alloc" else d)
                     for n, d in steps[1].counters)
    steps[1] = dataclasses.replace(steps[1], counters=counters)
    return (dataclasses.replace(rep, steps=tuple(steps)),
            "not ok 2 op 1: write mm=0 addr=512 value=1: vmstat.thp_fault_alloc: kernel 1, "
            "model 2")


@pytest.mark.parametrize("alter", [_alter_result, _alter_mapcount, _alter_counter])
@pytest.mark.slow
@live_only
@needs_gcc
def test_an_altered_expectation_fails_naming_the_op(alter: object, tmp_path: Path) -> None:
    assert callable(alter)
    rep, line = alter(seed_reproducer("worked_example_pmd_x86_64.json"))
    out = run_binary(build_binary(export_c.render_c(rep), tmp_path, "altered"))
    assert out.rc == 1, out.text
    assert f"{line} (in 2 runs from scratch)" in out.text.splitlines(), out.text
    failed = [n for n, (ok, _) in out.results.items() if not ok]
    assert failed == [int(line.split()[2])], out.text


# --------------------------------------------------------------------------------------
# Settings restored on SIGTERM (root)
# --------------------------------------------------------------------------------------


def knobs() -> dict[str, str]:
    """Every setting a reproducer writes, as its files show them."""
    paths = [f"{k.THP_DIR}/{n}" for n in ("enabled", "defrag", "use_zero_page",
                                          "shrink_underused")]
    paths += [f"{k.THP_DIR}/khugepaged/{n}" for n in (
        "scan_sleep_millisecs", "alloc_sleep_millisecs", "pages_to_scan", "max_ptes_none")]
    paths += [f"{k.THP_DIR}/{d}/enabled" for d in sorted(os.listdir(k.THP_DIR))
              if d.startswith("hugepages-")]
    paths += ["/proc/sys/vm/page-cluster", "/sys/module/zswap/parameters/enabled",
              "/sys/block/zram0/disksize", "/proc/swaps"]
    return {p: k.read_text(p) for p in paths if os.path.exists(p)}


def start_until_plan(binary: Path, fd: int) -> tuple[subprocess.Popen[str], list[str]]:
    """Start a reproducer holding the lock ``fd``; its output up to the plan line, which
    it prints once every setting is applied."""
    assert os.environ.get("PUDTHP_TEST_LIVE"), f"a reproducer run {UNMARKED}"
    proc = subprocess.Popen([str(binary)], stdout=subprocess.PIPE, text=True, pass_fds=(fd,))
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("1.."):
            break
    return proc, lines


@contextlib.contextmanager
def held_lock() -> Iterator[int]:
    """The conformance lock, as a descriptor a reproducer started by the test inherits
    (``flock LOCK ./repro`` hands it on the same way); the test skips when another run
    holds it for ten minutes."""
    with contextlib.ExitStack() as stack:
        try:
            fd = stack.enter_context(live.run_lock())
        except k.KernelError as e:
            pytest.skip(str(e))
        yield fd


@pytest.mark.slow
@live_only
@needs_gcc
def test_sigterm_in_the_middle_of_a_run_restores_every_setting(tmp_path: Path) -> None:
    # 300 reads of a page after a write fault: the run takes long enough to be in the middle
    # of it when the plan line (printed once every setting is applied) has been read.
    ops: list[dict[str, object]] = [
        {"op": "mmap", "mm": 0, "start": 0, "npages": 512, "prot": "rw"},
        {"op": "write", "mm": 0, "addr": 0, "value": 1}]
    ops += [{"op": "read", "mm": 0, "addr": 0}] * 300
    p = program(ops, geometry="x86_64", pud_enabled="never", swap_pages=512,
                thp_enabled="madvise" if "[always]" in k.read_text(
                    f"{k.THP_DIR}/enabled") else "always")
    binary = build_binary(export_c.render_c(reproducer(p)), tmp_path, "long")
    with held_lock() as fd:
        before = knobs()
        proc, lines = start_until_plan(binary, fd)
        assert proc.stdout is not None
        changed = knobs()
        proc.send_signal(signal.SIGTERM)
        rest = proc.stdout.read()
        assert proc.wait(timeout=60) == -signal.SIGTERM, "".join(lines) + rest
        after = knobs()
    assert lines[-1] == f"1..{len(ops)}\n", "".join(lines)
    assert changed != before  # enabled and the swap device at least
    assert after == before
