"""The ``live`` marker: every test that uses the live kernel carries it, so ``pytest -m
"not live"`` runs nothing that changes this machine's THP settings, adds a swap device or
runs a reproducer as root; and the guard in ``conftest.py`` fails an unmarked test that
tries."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from conftest import UNMARKED

from harness.conform import live

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# What a test calls to reach the live kernel: a conformance session (directly or through
# the test helpers), the machine's lock, a reproducer binary.
LIVE_CALLS = {"conform_run", "Session", "run_lock", "held_lock", "run_binary",
              "start_until_plan", "_hold_huge_zero_folio"}


def called_names(fn: ast.FunctionDef) -> set[str]:
    names = set()
    for node in ast.walk(fn):
        if isinstance(node, ast.Call):
            f = node.func
            names.add(f.id if isinstance(f, ast.Name) else getattr(f, "attr", ""))
    return names


def live_tests() -> dict[str, set[str]]:
    """Per test file, the test functions that call into the live kernel (read from the
    source, not from the marks: what the marker must cover)."""
    out: dict[str, set[str]] = {}
    for path in sorted(HERE.glob("test_*.py")):
        if path.name == Path(__file__).name:  # this file calls the guarded ones on purpose
            continue
        tree = ast.parse(path.read_text())
        for fn in tree.body:
            if (isinstance(fn, ast.FunctionDef) and fn.name.startswith("test_")
                    and called_names(fn) & LIVE_CALLS):
                out.setdefault(path.name, set()).add(fn.name)
    return out


def collect(files: list[str], mark: str) -> set[tuple[str, str]]:
    """(file, function) of every test ``pytest -m MARK`` selects among ``files``."""
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider",
         "-p", "no:xdist", "-m", mark, *files],
        cwd=HERE, capture_output=True, text=True, check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert r.returncode in (0, 5), r.stdout + r.stderr  # 5: nothing selected
    ids = [line for line in r.stdout.splitlines() if "::" in line]
    return {(i.split("::")[0].rsplit("/", 1)[-1], i.split("::")[1].split("[")[0])
            for i in ids}


def test_the_marker_is_registered() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    markers = config["tool"]["pytest"]["ini_options"]["markers"]
    assert any(m.startswith("live:") for m in markers)


def test_not_live_selects_no_test_that_uses_the_live_kernel() -> None:
    uses = live_tests()
    # the conformance and export-c runs, the restore after a kill, the reproducers
    assert {"test_conform.py", "test_export_c.py", "test_conform_record.py",
            "test_export_c_record.py"} <= set(uses)
    files = sorted(uses)
    left_in = collect(files, "not live")
    wanted = {(f, t) for f, tests in uses.items() for t in tests}
    assert left_in, "the files hold tests that need no kernel"
    assert not left_in & wanted, f"unmarked live-kernel tests: {sorted(left_in & wanted)}"
    # and every one of them is what -m live selects
    assert wanted <= collect(files, "live")


def test_an_unmarked_test_cannot_take_the_machines_lock_or_change_a_knob() -> None:
    with pytest.raises(AssertionError, match="without the `live` marker"):
        live.run_lock()
    with pytest.raises(AssertionError, match="without the `live` marker"):
        live.Settings().set("/sys/kernel/mm/transparent_hugepage/enabled", "never")
    with pytest.raises(AssertionError, match="without the `live` marker"):
        live.setup_swap(live.Settings(), 16)
    assert "PUDTHP_TEST_LIVE" not in os.environ
    assert "live" in UNMARKED


@pytest.mark.live
def test_a_marked_test_is_told_it_may_run_a_reproducer() -> None:
    # what test_export_c.run_binary checks before it starts a reproducer
    assert os.environ.get("PUDTHP_TEST_LIVE") == "1"
