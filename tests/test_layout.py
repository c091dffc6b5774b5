"""The package layout and its import directions (README "Layout"):

- ``pudthp_ref`` imports nothing of the project outside itself;
- ``pudthp_fast`` imports of the project only ``pudthp_ref.spec``, the shared vocabulary;
- ``harness`` (programs, runner, lockstep, oracle, shrink, corpus, bench, CLI, conformance)
  never imports ``fuzz`` at module level, and only the command line imports it at all,
  inside its command functions: the one allowed edge upward;
- every module says in its first docstring line what it owns, and the README layout row
  of its directory names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pudthp_ref", "pudthp_fast", "harness", "fuzz")


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imports(path: Path) -> list[tuple[str, bool]]:
    """(module, at module level) for every absolute import of ``path``; ``from pkg import
    name`` also counts as ``pkg.name`` so a submodule imported that way is seen."""
    tree = ast.parse(path.read_text())
    nested: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            nested.update(id(n) for n in ast.walk(node) if n is not node)
    out: list[tuple[str, bool]] = []
    for node in ast.walk(tree):
        top = id(node) not in nested
        if isinstance(node, ast.Import):
            out += [(a.name, top) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, top))
            out += [(f"{node.module}.{a.name}", top) for a in node.names]
    return out


def project(module: str) -> str | None:
    head = module.split(".")[0]
    return head if head in PACKAGES else None


def test_the_reference_imports_nothing_of_the_project_outside_itself() -> None:
    for path in modules("pudthp_ref"):
        outside = {m for m, _ in imports(path) if project(m) not in (None, "pudthp_ref")}
        assert not outside, f"{path.relative_to(ROOT)} imports {sorted(outside)}"


def test_the_fast_side_imports_only_the_shared_vocabulary() -> None:
    # "One shared vocabulary, no shared logic" (STYLE.md).
    allowed = {"pudthp_ref", "pudthp_ref.spec"}
    for path in modules("pudthp_fast"):
        bad = {m for m, _ in imports(path)
               if project(m) in ("pudthp_ref", "harness", "fuzz") and m not in allowed
               and not m.startswith("pudthp_ref.spec.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_harness_imports_fuzz_only_lazily_and_only_in_the_command_line() -> None:
    for path in modules("harness"):
        up = [(m, top) for m, top in imports(path) if project(m) == "fuzz"]
        rel = path.relative_to(ROOT).as_posix()
        assert not any(top for _, top in up), f"{rel} imports fuzz at module level: {up}"
        if rel != "harness/cli.py":
            assert not up, f"{rel} imports {sorted(m for m, _ in up)}"


def test_the_import_check_sees_what_it_must() -> None:
    # The checker itself: a module-level and a function-level import told apart.
    src = "import fuzz.gen\nfrom harness import runner\ndef f():\n    from fuzz import gen\n"
    p = ROOT / "tests" / "_layout_probe.py"
    try:
        p.write_text(src)
        got = imports(p)
    finally:
        p.unlink()
    assert ("fuzz.gen", True) in got
    assert ("harness.runner", True) in got
    assert ("fuzz.gen", False) in got


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_says_what_it_owns(package: str) -> None:
    for path in modules(package):
        doc = ast.get_docstring(ast.parse(path.read_text()))
        assert doc, f"{path.relative_to(ROOT)} has no docstring"
        assert doc.strip(), f"{path.relative_to(ROOT)} has an empty docstring"


def layout_rows() -> dict[str, str]:
    """README "Layout": the row of each directory, by its path."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Layout", 1)[1].split("\n## ", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = line.split(" | ")
        if line.startswith("| `") and len(cells) >= 2:
            rows[cells[0].strip("| `").rstrip("/")] = cells[1]
    return rows


@pytest.mark.parametrize("package", PACKAGES)
def test_the_readme_layout_names_every_module(package: str) -> None:
    rows = layout_rows()
    for path in modules(package):
        if path.name in ("__init__.py", "__main__.py"):
            continue
        directory = str(path.parent.relative_to(ROOT))
        assert directory in rows, f"README layout has no row for {directory}/"
        assert f"`{path.name}`" in rows[directory], (
            f"README layout row {directory}/ does not name {path.name}")
