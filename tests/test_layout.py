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


# --------------------------------------------------------------------------------------
# Inside each package: no import cycle; the fast side mirrors the reference
# --------------------------------------------------------------------------------------


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def runtime_imports(path: Path) -> list[str]:
    """``imports(path)`` but those under ``if TYPE_CHECKING:``: an annotation's import,
    never run, may point back."""
    tree = ast.parse(path.read_text())
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            typing_only.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    out: list[str] = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return out


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same package it imports when it runs (at module level
    or lazily)."""
    mods = {module_name(p): p for p in modules(package)}
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for imp in runtime_imports(path):
            while imp and imp not in mods:
                imp = imp.rpartition(".")[0]
            if imp and imp not in (m, package):
                graph[m].add(imp)
    return graph


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph``, or None."""
    state: dict[str, int] = {}  # 1 on the path being walked, 2 done
    path: list[str] = []

    def walk(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            if state.get(n) == 1:
                return [*path[path.index(n):], n]
            if n not in state and (found := walk(n)) is not None:
                return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := walk(m)) is not None:
            return found
    return None


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle_inside_a_package(package: str) -> None:
    found = cycle(import_graph(package))
    assert found is None, " -> ".join(found or [])


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None
    src = ("from typing import TYPE_CHECKING\nimport fuzz.gen\nif TYPE_CHECKING:\n"
           "    from fuzz.hub import Hub\ndef f():\n    from fuzz import link\n")
    p = ROOT / "tests" / "_layout_cycle_probe.py"
    try:
        p.write_text(src)
        got = runtime_imports(p)
    finally:
        p.unlink()
    assert "fuzz.gen" in got  # module level
    assert "fuzz.link" in got  # lazy, but run
    assert "fuzz.hub" not in got  # for annotations only


# The fast side's own machinery, beyond the reference's modules: the struct-of-arrays state
# (no reference namesake), its checker and snapshot (namesakes, but their helpers are array
# machinery, not kernel functions).
FAST_MACHINERY = ("state.py",)
FAST_MACHINERY_FUNCTIONS = ("snapshot.py", "invariants.py", "invariants_deposit.py",
                            "invariants_pgtable.py", "invariants_folios.py")
# Public fast-side functions with no reference namesake, and why they are unavoidable: the
# batched forms of a kernel function, done once over many entries where the reference
# calls the kernel function per entry.
FAST_ONLY = {
    "pgtable.py": {"pt_alloc_many", "pt_free_many"},  # pt_alloc() / pt_free() of many tables
    "folio.py": {"free_folios_bulk"},  # free_folio() of many order-0 folios
    "rmap.py": {"folio_remove_rmap_ptes_batched",  # a zap's batches, every folio at once
                "folio_remove_rmap_ptes_singly"},  # folio_remove_rmap_pte() of many pages
    "vmscan.py": {"folios_maybe_mapped_shared"},  # folio_maybe_mapped_shared() of many
    "model.py": {"FastModel"},  # RefModel's twin
}


def public_names(path: Path) -> set[str]:
    """Functions and classes a module defines for others: no leading underscore, or the
    kernel's own double one (``__split_huge_pud_locked``)."""
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body
            if isinstance(n, ast.FunctionDef | ast.ClassDef)
            and (not n.name.startswith("_") or (n.name.startswith("__")
                                                and not n.name.endswith("__")))}


def test_the_fast_side_mirrors_the_reference_file_for_file() -> None:
    # A fast module is the reference module of the same name (one per kernel file) or its
    # own machinery; a kernel function it implements has the reference's name, so one grep
    # finds both.
    for path in modules("pudthp_fast"):
        name = path.name
        if name == "__init__.py" or name in FAST_MACHINERY:
            continue
        ref = ROOT / "pudthp_ref" / name
        assert ref.exists(), f"pudthp_fast/{name} has no namesake in pudthp_ref"
        if name in FAST_MACHINERY_FUNCTIONS:
            continue
        extra = public_names(path) - public_names(ref) - FAST_ONLY.get(name, set())
        assert not extra, f"pudthp_fast/{name}: {sorted(extra)} unknown to pudthp_ref/{name}"


def test_the_mirror_allow_list_is_needed() -> None:
    # every allowed fast-only name exists, and really has no reference namesake
    for name, allowed in FAST_ONLY.items():
        fast = public_names(ROOT / "pudthp_fast" / name)
        ref = public_names(ROOT / "pudthp_ref" / name)
        assert allowed <= fast, (name, allowed - fast)
        assert not allowed & ref, (name, allowed & ref)
