"""The package layout and its import directions (README "Layout"), lazy imports included:

- ``pudthp_ref`` imports nothing of the project outside itself;
- ``pudthp_fast`` imports of the project only ``pudthp_ref.spec``, the shared vocabulary;
- ``harness`` (programs, runner, lockstep, oracle, shrink, corpus, bench, conformance)
  imports the models, never ``fuzz`` or the command line;
- ``fuzz`` imports the harness and the models, never the command line;
- ``pudthp_cli``, the command line, is the top floor: the one package that imports all the
  others, and none imports it;
- every module says in its first docstring line what it owns, and the README layout row
  of its directory names it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pudthp_ref", "pudthp_fast", "harness", "fuzz", "pudthp_cli")
# what each package may import of the project (itself always)
MAY_IMPORT = {
    "pudthp_ref": set(),
    "pudthp_fast": {"pudthp_ref"},  # and of it only the vocabulary (below)
    "harness": {"pudthp_ref", "pudthp_fast"},
    "fuzz": {"harness", "pudthp_ref", "pudthp_fast"},
    "pudthp_cli": {"harness", "fuzz", "pudthp_ref", "pudthp_fast"},
}


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


@pytest.mark.parametrize("package", PACKAGES)
def test_each_package_imports_only_the_floors_below_it(package: str) -> None:
    # lazily or not: an import inside a function is an edge all the same
    allowed = MAY_IMPORT[package] | {package}
    for path in modules(package):
        bad = {m for m, _ in imports(path) if project(m) not in (None, *allowed)}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_only_the_command_line_imports_everything() -> None:
    everything = set(PACKAGES) - {"pudthp_cli"}
    assert [p for p, below in MAY_IMPORT.items() if below >= everything] == ["pudthp_cli"]
    # ... and it is where the floors meet: it does import the harness and the fuzzers
    used = {project(m) for path in modules("pudthp_cli") for m, _ in imports(path)}
    assert {"harness", "fuzz"} <= used


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
