"""Any finding made a reproducer (``harness/rescale.py``, ``harness/conform/export_cmd.py``):
a program moved to another geometry digit by digit (``pudthp rescale``), its finding kept
only where the moved program still shows it; ``pudthp export-c`` lifting a small-geometry
program to x86_64 and exporting the ops before a model finding; ``--kselftest-tree``
writing the test where ``tools/testing/selftests/mm`` builds it, built against an unpacked
kernel source tree when one is present.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.program import load_program_file, parse_program
from harness.rescale import lift, rescale
from pudthp_cli.main import main
from pudthp_ref import spec
from pudthp_ref.spec import Program

GCC = shutil.which("gcc")
ROOT = Path(__file__).resolve().parents[1]
SEEDS = ROOT / "corpus" / "seeds"
KSRC = [Path(f"/work/ksrc/linux-source-{v}") for v in ("7.2", "6.12")]
PUD = 512 * 512


def prog(config: dict[str, object], ops: list[dict[str, object]],
         meta: dict[str, object] | None = None) -> Program:
    raw: dict[str, object] = {"format": spec.PROGRAM_FORMAT, "config": config, "ops": ops}
    if meta is not None:
        raw["meta"] = meta
    return parse_program(raw, "t")


def write(path: Path, p: dict[str, object]) -> str:
    path.write_text(json.dumps({"format": spec.PROGRAM_FORMAT, **p}))
    return str(path)


def test_rescaling_moves_each_address_digit_by_digit() -> None:
    # small is P = 8: page 9 is (PUD 0, PMD 1, page 1), 64 pages are one PUD, 7 pages are
    # (0, 0, 7).  At x86_64 (P = 512) they are 0*512*512 + 1*512 + 1 = 513, one PUD
    # 512*512 = 262144 pages and 7 pages: a PMD boundary and a page past it stay that.
    p = prog({"geometry": "small"}, [
        {"op": "mmap", "mm": 0, "start": 9, "npages": 64, "prot": "rw"},
        {"op": "munmap", "mm": 0, "start": 9, "npages": 7},
        {"op": "write", "mm": 0, "addr": 71, "value": 1},  # (1, 0, 7) -> 262144 + 7
    ])
    r = rescale(p, "x86_64")
    assert r.config.geometry == 512
    assert r.config.thp_enabled == p.config.thp_enabled
    ops = r.ops
    assert (ops[0].start, ops[0].npages) == (513, PUD)  # type: ignore[attr-defined]
    assert (ops[1].start, ops[1].npages) == (513, 7)  # type: ignore[attr-defined]
    assert ops[2].addr == PUD + 7  # type: ignore[attr-defined]
    assert r.meta["rescaled_from"] == "small"
    assert rescale(r, "x86_64") is r  # already there


def test_a_finding_the_lifted_program_no_longer_shows_is_dropped_and_said() -> None:
    # Nothing in this program can break an invariant: a signature its meta claims is not
    # shown at x86_64, so it leaves the meta and is named in lifted_without.
    sig = "invariant:mapcount"
    p = prog({"geometry": "small"}, [{"op": "mmap", "mm": 0, "start": 8, "npages": 8,
                                      "prot": "rw"}],
             {"signature": sig, "kind": "invariant", "impl": "ref", "op_index": 0})
    out = lift(p, "x86_64")
    assert out.kept is False
    assert "no longer shows invariant:mapcount" in out.note
    assert out.program.meta["lifted_without"] == sig
    assert "signature" not in out.program.meta
    assert "kind" not in out.program.meta


def test_a_design_bug_shows_at_every_geometry_and_is_kept() -> None:
    # The rejected list_head deposit design corrupts the deposits of three PUD folios
    # whatever P is (corpus/known_bad/list_head_three_puds.json): the signature the small
    # program reports is the one the lifted program reports, so it stays.
    path = ROOT / "corpus" / "known_bad" / "list_head_three_puds.json"
    small = load_program_file(str(path))
    from harness.runner import run_program

    found = run_program(small, "ref").finding
    assert found is not None
    named = Program(small.config, small.ops, {"signature": found.signature, "impl": "ref"})
    out = lift(named, "x86_64")
    assert out.kept is True
    assert out.program.meta["signature"] == found.signature


def test_rescale_on_the_command_line(tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    src = str(SEEDS / "worked_example_pmd_steps4to6_small.json")
    out = tmp_path / "x.json"
    assert main(["rescale", src, "--geometry", "x86_64", "--out", str(out)]) == 0
    lifted = load_program_file(str(out))
    assert lifted.config.geometry == 512
    assert main(["rescale", src, "--geometry", "x86_64", "--out", str(out)]) == 2
    assert main(["rescale", src, "--geometry", "huge"]) == 2
    err = capsys.readouterr().err
    assert "exists; not overwritten" in err
    assert "Traceback" not in err


@pytest.mark.skipif(GCC is None, reason="no gcc on this machine")
def test_export_lifts_a_small_program_and_it_builds(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    src = str(SEEDS / "worked_example_pmd_steps4to6_small.json")
    c = tmp_path / "we.c"
    assert main(["export-c", src, "-o", str(c)]) == 0
    assert "lifted from P=8 to x86_64" in capsys.readouterr().err
    r = subprocess.run([str(GCC), "-O2", "-Wall", "-Werror", "-o", str(tmp_path / "we"),
                        str(c)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


@pytest.mark.skipif(GCC is None, reason="no gcc on this machine")
def test_export_of_a_model_finding_keeps_the_ops_before_it(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # corpus/known_bad/list_head_three_puds.json at x86_64: the rejected deposit design
    # corrupts the PTE-table deposits of three PUD folios, and the munmap's withdraw (op 4)
    # meets a poison value, which the model reports instead of a result: ops 0-3 remain.
    path = write(tmp_path / "p.json", {
        "config": {"geometry": "x86_64", "deposit": "list_head", "pud_enabled": "always"},
        "ops": [{"op": "mmap", "mm": 0, "start": PUD, "npages": 3 * PUD, "prot": "rw"},
                *({"op": "write", "mm": 0, "addr": a * PUD, "value": a} for a in (1, 2, 3)),
                {"op": "munmap", "mm": 0, "start": 2 * PUD, "npages": PUD}]})
    c = tmp_path / "p.c"
    assert main(["export-c", path, "-o", str(c)]) == 0
    out, err = capsys.readouterr()
    assert "the reference model reports" in err
    assert "exported: the 4 op(s) before it" in err
    assert "4 ops ->" in out
    r = subprocess.run([str(GCC), "-O2", "-Wall", "-Werror", "-o", str(tmp_path / "p"),
                        str(c)], capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr


def test_a_kselftest_tree_that_is_not_one_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = str(SEEDS / "worked_example_pmd_x86_64.json")
    assert main(["export-c", src, "--kselftest-tree", str(tmp_path)]) == 2
    assert "no tools/testing/selftests/mm" in capsys.readouterr().err
    assert main(["export-c", src, "-o", str(tmp_path / "x.c"), "--kselftest-tree",
                 str(tmp_path)]) == 2


def _tree(tmp_path: Path) -> Path | None:
    """The parts of an unpacked kernel tree a selftest of mm is built with, copied (the
    tree itself is never written)."""
    for ksrc in KSRC:
        src = ksrc / "tools" / "testing" / "selftests"
        if not (src / "mm" / "Makefile").exists():
            continue
        dst = tmp_path / "linux" / "tools" / "testing" / "selftests"
        (dst / "mm").mkdir(parents=True)
        shutil.copy(src / "kselftest.h", dst / "kselftest.h")
        for f in (src / "mm").iterdir():
            if f.suffix == ".h" or f.name == "Makefile":
                shutil.copy(f, dst / "mm" / f.name)
        return tmp_path / "linux"
    return None


@pytest.mark.skipif(GCC is None, reason="no gcc on this machine")
def test_a_kselftest_tree_builds_the_test(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    tree = _tree(tmp_path)
    if tree is None:
        pytest.skip(f"no unpacked kernel source tree ({', '.join(map(str, KSRC))})")
    src = str(SEEDS / "worked_example_pmd_x86_64.json")
    mm = tree / "tools" / "testing" / "selftests" / "mm"
    assert main(["export-c", src, "--kselftest-tree", str(tree)]) == 0
    assert main(["export-c", src, "--kselftest-tree", str(mm)]) == 0  # the mm dir itself
    assert "already in" in capsys.readouterr().out
    name = "pudthp_worked_example_pmd_x86_64"
    lines = (mm / "Makefile").read_text().splitlines()
    assert lines.count(f"TEST_GEN_PROGS += {name}") == 1
    text = (mm / f"{name}.c").read_text()
    assert '#include "../kselftest.h"' in text
    assert any(f'#include "{h}"' in text for h in ("thp_settings.h", "hugepage_settings.h"))
    # as the mm Makefile compiles it (-Wall, the selftests directory on the include path)
    r = subprocess.run([str(GCC), "-O2", "-Wall", "-Werror", "-I", str(mm.parent), "-c",
                        "-o", str(tmp_path / "t.o"), str(mm / f"{name}.c")],
                       capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
