"""The documents against the code they describe: ``docs/format.md`` and ``docs/model.md``.

Everything that can be compared mechanically is: every op kind, field, field value and
config key of the vocabulary; every key of the files the tools write (reports, snapshots,
archived findings, stats records, conformance reports, benchmark figures); every command,
subcommand, option, choice and default of the ``pudthp`` parser; every invariant, model-bug
check and oracle check the code can report; every counter; every link.  ``model.md`` cites
kernel functions as `name()`: each rule section must cite at least one, and where the kernel
sources are unpacked (``/work/ksrc``, or ``$PUDTHP_KSRC``) each must be defined in the 6.12
or the 7.2 tree.  The names the code can report are read from the source (its abstract
syntax tree), following a name passed down through parameters to where it is spelled, so a
new check shows up here without anyone listing it.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.runner import RunReport

# The one place the command line's parser builder is imported: if the command line moves,
# this line is the one to change.
from pudthp_cli.main import build_parser
from pudthp_ref import spec
from pudthp_ref.model import RefModel

ROOT = Path(__file__).resolve().parent.parent
# the models, then what runs them: the harness, the fuzzers, the command line
PACKAGES = ("pudthp_ref", "pudthp_fast", "harness", "fuzz", "pudthp_cli")
DOCS = ROOT / "docs"
FORMAT_MD = DOCS / "format.md"
MODEL_MD = DOCS / "model.md"
KSRC = Path(os.environ.get("PUDTHP_KSRC", "/work/ksrc"))
KERNEL_TREES = ("linux-source-6.12", "linux-source-7.2")
# Where a kernel function cited by model.md may be defined (mm/ and the headers it uses).
KERNEL_DIRS = ("mm", "include", "kernel", "arch/x86", "lib", "fs/proc")

CITATION = re.compile(r"`([A-Za-z_]\w*)\(\)`")
HEADING = re.compile(r"^(#{1,6}) +(.*?) *$")


# --------------------------------------------------------------------------------------
# Reading the documents
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Section:
    level: int
    title: str
    body: str  # up to the next heading of the same or a higher level


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8")


def sections(text: str) -> list[Section]:
    """Every heading with its text, outside fenced code blocks."""
    lines = text.splitlines()
    heads: list[tuple[int, int, str]] = []
    fenced = False
    for i, line in enumerate(lines):
        if line.startswith("```"):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            heads.append((i, len(m.group(1)), m.group(2)))
    out = []
    for n, (i, level, title) in enumerate(heads):
        end = next((j for j, lv, _ in heads[n + 1 :] if lv <= level), len(lines))
        out.append(Section(level, title, "\n".join(lines[i + 1 : end])))
    return out


def section(text: str, needle: str, level: int | None = None) -> Section:
    found = [s for s in sections(text) if needle in s.title and (level is None or s.level == level)]
    assert len(found) == 1, f"expected one heading with {needle!r}, found {len(found)}"
    return found[0]


def spans(text: str) -> set[str]:
    """The text of every `code span`."""
    return set(re.findall(r"`([^`\n]+)`", text))


def table_rows(text: str, header: str | None = None) -> dict[str, list[str]]:
    """The rows of the Markdown tables in ``text`` (only the table whose first header cell
    is ``header``, if given) by their first cell, backticks kept, cells stripped."""
    rows: dict[str, list[str]] = {}
    current: str | None = None
    for line in text.splitlines():
        if not line.startswith("|"):
            current = None
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if current is None:
            current = cells[0]  # the header row
        elif not line.startswith("| ---") and header in (None, current):
            rows.setdefault(cells[0], cells)
    return rows


def slug(title: str) -> str:
    """The anchor a Markdown renderer gives a heading."""
    s = re.sub(r"[^\w\- ]", "", title.strip().lower())
    return s.replace(" ", "-")


# --------------------------------------------------------------------------------------
# Reading the code: the names a module can report
# --------------------------------------------------------------------------------------


class Reported:
    """Resolves the first argument of every call to one of ``callees`` in ``paths`` to the
    strings it can take: a literal, an f-string over names, a local assigned literals, or a
    parameter, followed to every call of its function.  Anything else fails the test, so a
    checker written another way is noticed rather than passed over."""

    def __init__(self, paths: list[Path], callees: set[str]) -> None:
        self.callees = callees
        self.trees = [ast.parse(read(p), str(p)) for p in paths]
        self.funcs: dict[str, list[ast.FunctionDef]] = {}
        self.parent: dict[ast.AST, ast.FunctionDef] = {}
        for tree in self.trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.FunctionDef):  # outer ones first: inner ones win
                    self.funcs.setdefault(node.name, []).append(node)
                    for sub in ast.walk(node):
                        self.parent[sub] = node
        self.memo: dict[tuple[int, str], set[str]] = {}

    def names(self) -> set[str]:
        out: set[str] = set()
        for tree in self.trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _callee(node) in self.callees:
                    out |= self.values(node.args[0], self.parent.get(node))
        return out

    def values(self, expr: ast.expr, func: ast.FunctionDef | None) -> set[str]:
        if isinstance(expr, ast.Constant) and isinstance(expr.value, str):
            return {expr.value}
        if isinstance(expr, ast.JoinedStr):
            out = {""}
            for part in expr.values:
                if isinstance(part, ast.Constant):
                    out = {s + str(part.value) for s in out}
                else:
                    assert isinstance(part, ast.FormattedValue)
                    out = {s + v for s in out for v in self.values(part.value, func)}
            return out
        if isinstance(expr, ast.Name) and func is not None:
            key = (id(func), expr.id)
            if key not in self.memo:
                self.memo[key] = set()  # a cycle through parameters adds nothing
                self.memo[key] = self._name(expr.id, func)
            return self.memo[key]
        raise AssertionError(
            f"cannot tell what {ast.unparse(expr)!r} names "
            f"(line {expr.lineno}); teach tests/test_docs.py"
        )

    def _name(self, name: str, func: ast.FunctionDef) -> set[str]:
        params = [a.arg for a in func.args.args]
        if name in params:
            out: set[str] = set()
            for call in self._calls_of(func.name):
                arg = _argument(call, params.index(name), name)
                if arg is not None:
                    out |= self.values(arg, self.parent.get(call))
            return out
        assigned = [
            n.value
            for n in ast.walk(func)
            if isinstance(n, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == name for t in n.targets)
        ]
        assert assigned, f"{name!r} in {func.name}() is neither a parameter nor assigned"
        return set().union(*(self.values(v, func) for v in assigned))

    def _calls_of(self, name: str) -> Iterator[ast.Call]:
        for tree in self.trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Call) and _callee(node) == name:
                    yield node


def _callee(call: ast.Call) -> str | None:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None


def _argument(call: ast.Call, index: int, name: str) -> ast.expr | None:
    if index < len(call.args):
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == name), None)


def invariant_names() -> set[str]:
    paths = sorted((ROOT / "pudthp_ref").glob("invariants*.py"))  # the checker's modules
    return Reported(paths, {"InvariantViolation"}).names()


def model_bug_checks() -> set[str]:
    paths = sorted(p for p in (ROOT / "pudthp_ref").glob("*.py") if p.name != "spec.py")
    return Reported(paths, {"ModelBug"}).names()


def oracle_checks() -> set[str]:
    return Reported([ROOT / "harness" / "oracle.py"], {"OracleMismatch"}).names()


# --------------------------------------------------------------------------------------
# format.md: programs
# --------------------------------------------------------------------------------------


def test_every_op_kind_has_a_row_naming_its_fields() -> None:
    rows = table_rows(section(read(FORMAT_MD), "Ops", 3).body, "op")
    for kind in spec.OP_TYPES:
        row = rows.get(f"`{kind}`")
        assert row is not None, f"op {kind} has no row in format.md's Ops table"
        for name in spec.op_fields(kind):
            assert f"`{name}`" in row[1], f"op {kind}: field {name} not in its row"


def test_the_ops_table_is_in_the_byte_encodings_order() -> None:
    """format.md says the atheris encoding numbers op kinds and fields in table order."""
    from fuzz.encoding import OP_KINDS

    rows = table_rows(section(read(FORMAT_MD), "Ops", 3).body, "op")
    assert [k.strip("`") for k in rows] == list(OP_KINDS)
    for kind in OP_KINDS:
        listed = re.findall(r"`(\w+)`", rows[f"`{kind}`"][1])
        assert listed == list(spec.op_fields(kind)), f"op {kind}: fields out of order"


def test_every_field_has_its_range_or_its_choices() -> None:
    rows = table_rows(section(read(FORMAT_MD), "Ops", 3).body, "field")
    for name, kind in spec.FIELD_KINDS.items():
        row = rows.get(f"`{name}`")
        assert row is not None, f"field {name} has no row in format.md"
        text = " | ".join(row)
        if kind in spec.FIELD_CHOICES:
            for choice in spec.FIELD_CHOICES[kind]:
                assert f"`{choice}`" in text, f"field {name}: value {choice} not documented"
        else:
            low = 1 if kind in ("length", "id") else 0
            high = spec.FIELD_MAX[kind]
            assert high + 1 == 1 << high.bit_length()
            bound = f"from {low} to 2^{high.bit_length()}-1"
            assert bound in text, f"field {name}: range {bound!r} not in {text!r}"


def test_every_config_key_has_its_values_and_default() -> None:
    rows = table_rows(section(read(FORMAT_MD), "Config", 3).body)
    default = spec.Config()
    for key in spec.Config.KEYS:
        row = rows.get(f"`{key}`")
        assert row is not None, f"config key {key} has no row in format.md"
        values, dflt = row[1], row[2]
        for v in spec.CONFIG_CHOICES.get(key, ()):
            assert f"`{v}`" in values, f"config {key}: value {v} not documented"
        if key in spec.CONFIG_BOOLS:
            assert "`true`" in values, f"config {key}: true not documented"
            assert "`false`" in values, f"config {key}: false not documented"
        value = getattr(default, key)
        if key == "geometry":
            value = {p: n for n, p in spec.GEOMETRIES.items()}[value]
        if key == "swap_pages":  # the default is a rule, not a number: four PUD folios
            assert all(spec.Config(geometry=p).swap_capacity == 4 * p * p for p in (4, 8, 512))
            assert "`4*P*P`" in dflt, f"swap_pages default {dflt!r}"
            continue
        shown = json.dumps(value) if not isinstance(value, str) else value
        assert f"`{shown}`" in dflt, f"config {key}: default {shown} not in {dflt!r}"
    for name, p in spec.GEOMETRIES.items():
        assert f"`{name}` (P = {p})" in rows["`geometry`"][1]


def test_every_result_name_is_documented() -> None:
    names = {
        v
        for k, v in vars(spec).items()
        if isinstance(v, str) and k == v and re.fullmatch(r"E[A-Z]+|SIG[A-Z]+", k)
    }
    assert {"EINVAL", "SIGSEGV"} <= names
    rows = table_rows(section(read(FORMAT_MD), "Results", 3).body)
    for name in names:
        assert f"`{name}`" in rows, f"result {name} not in format.md's Results table"


def test_every_file_format_is_named() -> None:
    text = read(FORMAT_MD)
    found: set[str] = set()
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(read(path))):
                if (
                    isinstance(node, ast.Constant)
                    and isinstance(node.value, str)
                    and re.fullmatch(r"pudthp-[a-z-]+/\d+", node.value)
                ):
                    found.add(node.value)
    assert {spec.PROGRAM_FORMAT, spec.SNAPSHOT_FORMAT, "pudthp-stats/1"} <= found
    for fmt in found:
        assert f"`{fmt}`" in text, f"format {fmt} not named in format.md"


# --------------------------------------------------------------------------------------
# format.md: what the tools write
# --------------------------------------------------------------------------------------


def rich_snapshot() -> dict[str, Any]:
    """A snapshot with every list filled: folios, a pin, swap slots, deposits."""
    m = RefModel(spec.Config())
    for op in (
        spec.Mmap(0, 0, 16, "rw"),
        spec.Write(0, 0, 1),
        spec.Write(0, 8, 2),
        spec.Pin(0, 0),
        spec.Madvise(0, 8, 8, "pageout"),
    ):
        m.apply(op)
    snap = m.snapshot()
    for key in ("mms", "pagetables", "folios", "swap", "pins"):
        assert snap[key], f"the program leaves {key} empty: the test checks nothing there"
    return snap


def test_every_snapshot_key_is_documented() -> None:
    body = section(read(FORMAT_MD), "Snapshots", 2).body
    names = spans(body)
    snap = rich_snapshot()
    keys = set(snap)
    for key in ("mms", "pagetables", "folios", "swap", "pins"):
        keys |= set(snap[key][0])
    keys |= set(snap["fail_alloc"])
    stats = snap["stats"]
    assert isinstance(stats, dict)
    keys |= set(stats) | set(stats["vmstat"]) | set(stats["mthp"]) | set(stats["node"])
    keys |= set(stats["mthp"]["pmd"]) | set(spec.FOLIO_FLAGS) | set(spec.PT_STATES)
    keys |= set(spec.LEVELS) | {spec.LIST_POISON1, spec.LIST_POISON2}
    missing = sorted(k for k in keys if k not in names and f'"{k}"' not in body)
    assert not missing, f"snapshot keys not in format.md's Snapshots section: {missing}"


def test_every_report_and_finding_key_is_documented() -> None:
    names = spans(section(read(FORMAT_MD), "Reports", 2).body)
    finding = spec.Finding("invariant", 0, "invariant:read:x", "m", "d")
    report = RunReport("ref", [0], finding, {}).to_json()
    for key in [*report, *finding.to_json()]:
        assert key in names, f"report key {key} not in format.md's Reports section"
    for kind in ("invariant", "model_bug", "oracle", "divergence"):
        assert kind in names


def test_every_stats_record_key_is_documented() -> None:
    from fuzz.stats import Sample, StatsWriter

    names = spans(section(read(FORMAT_MD), "Campaign statistics", 2).body)
    record = StatsWriter(None, "m", "hypothesis").record(
        Sample(programs=1, count=1, findings=0, features={"f": 1})
    )
    for key in record:
        assert key in names, f"stats record key {key} not in format.md"


def dict_keys(node: ast.Dict) -> set[str]:
    """The literal string keys of a dict display."""
    return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}


def written_meta_keys() -> set[str]:
    """Keys the engines, ``pudthp shrink`` and ``pudthp corpus archive`` put in ``meta``."""
    keys: set[str] = set()
    for path in (p for package in PACKAGES[2:] for p in (ROOT / package).rglob("*.py")):
        for node in ast.walk(ast.parse(read(path))):
            if isinstance(node, ast.Dict):
                lits = dict_keys(node)
                if {"signature", "engine"} <= lits:
                    keys |= lits
            elif (
                isinstance(node, ast.Subscript)
                and isinstance(node.ctx, ast.Store)
                and isinstance(node.value, ast.Name)
                and node.value.id == "meta"
                and isinstance(node.slice, ast.Constant)
            ):
                keys.add(str(node.slice.value))
            elif (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "update"
                and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "meta"
            ):
                keys |= {k.arg for k in node.keywords if k.arg}
    return keys


def test_every_archived_meta_key_is_documented() -> None:
    keys = written_meta_keys()
    assert {"signature", "engine", "seed", "shrunk_from", "archived_from"} <= keys
    body = section(read(FORMAT_MD), "Corpus and archived findings", 2).body
    missing = sorted(k for k in keys if f"`{k}`" not in body)
    assert not missing, f"meta keys not in format.md: {missing}"


def test_every_key_of_every_file_format_is_documented() -> None:
    """Every JSON object the code writes with a ``format`` key, and the objects spelled
    inside it: programs, reports, snapshots, stats records, campaign and settings records."""
    names = spans(read(FORMAT_MD))
    keys: dict[str, str] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(read(path))):
                if isinstance(node, ast.Dict) and "format" in dict_keys(node):
                    for sub in ast.walk(node):
                        if isinstance(sub, ast.Dict):
                            keys.update(dict.fromkeys(dict_keys(sub), str(path)))
    assert {"pid", "entries", "corpus_dir", "zeromap", "features_new"} <= set(keys)
    missing = sorted(f"{k} ({keys[k]})" for k in keys if k not in names)
    assert not missing, f"keys of written files not in format.md: {missing}"


def test_every_conformance_report_key_is_documented() -> None:
    tree = ast.parse(read(ROOT / "harness" / "conform" / "compare.py"))
    keys: set[str] = set()
    triggers = {"format", "kernel_results", "op_index", "program", "reason"}
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and dict_keys(node) & triggers:
            keys |= dict_keys(node)
    assert {"format", "disagreement", "observable", "unexplained", "facts", "reason"} <= keys
    body = section(read(FORMAT_MD), "Conformance reports", 3).body
    missing = sorted(k for k in keys if f"`{k}`" not in body)
    assert not missing, f"conformance report keys not in format.md: {missing}"


def test_every_benchmark_figure_is_documented() -> None:
    from harness.bench import Figure

    names = spans(section(read(FORMAT_MD), "Benchmark figures", 3).body)
    for f in dataclasses.fields(Figure):
        assert f.name in names, f"bench figure {f.name} not in format.md"


# --------------------------------------------------------------------------------------
# format.md: the command line
# --------------------------------------------------------------------------------------


def commands() -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Every command and subcommand of ``pudthp``, depth first."""
    todo: list[tuple[tuple[str, ...], argparse.ArgumentParser]] = [((), build_parser())]
    while todo:
        path, parser = todo.pop(0)
        if path:
            yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [((*path, name), sub) for name, sub in action.choices.items()]


def option_row(rows: dict[str, list[str]], option: str) -> list[str] | None:
    """The table row whose first cell names ``option`` (as `--opt` or `--opt VALUE`)."""
    for first, cells in rows.items():
        if option in (span.split()[0] for span in re.findall(r"`([^`]+)`", first)):
            return cells
    return None


def has_subcommands(parser: argparse.ArgumentParser) -> bool:
    return any(isinstance(a, argparse._SubParsersAction) for a in parser._actions)


def test_every_command_option_choice_and_default_is_documented() -> None:
    text = read(FORMAT_MD)
    exits = table_rows(section(text, "Exit statuses", 3).body)
    seen = 0
    for path, parser in commands():
        name = " ".join(path)
        body = section(text, f"`pudthp {name}`").body
        rows = table_rows(body)
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
                continue
            what = f"pudthp {name}: {action.option_strings or action.dest}"
            if not action.option_strings:
                assert str(action.metavar or action.dest) in body, f"{what}: not documented"
                continue
            long = [o for o in action.option_strings if o.startswith("--")]
            assert long, f"{what}: no long option"
            row = option_row(rows, long[0])
            assert row is not None, f"{what}: no row in the table of its section"
            for choice in action.choices or ():
                assert f"`{choice}`" in " ".join(row), f"{what}: choice {choice} not in its row"
            default = action.default
            if default is not None and not isinstance(default, bool) and default != []:
                shown = f"{default:g}" if isinstance(default, float) else str(default)
                assert f"`{shown}`" in row[1], f"{what}: default {shown} not in {row[1]!r}"
            seen += 1
        if not has_subcommands(parser):
            assert "Exit status" in body, f"pudthp {name}: no exit statuses"
            assert f"`{name}`" in exits, f"pudthp {name}: no row in the exit-status table"
    assert seen > 50  # the walk reached the options


def test_the_exit_statuses_are_the_command_lines() -> None:
    from harness.conform import compare

    rows = table_rows(section(read(FORMAT_MD), "Exit statuses", 3).body, "status")
    codes = (compare.EXIT_AGREE, compare.EXIT_DISAGREE, compare.EXIT_USAGE)
    for status in (*codes, compare.EXIT_CANNOT_RUN, 130, 143):
        assert str(status) in rows, f"exit status {status} not in format.md"


# --------------------------------------------------------------------------------------
# model.md
# --------------------------------------------------------------------------------------


def rule_sections() -> list[Section]:
    return [s for s in sections(read(MODEL_MD)) if s.level == 3]


def test_every_rule_section_cites_a_kernel_function() -> None:
    rules = rule_sections()
    assert len(rules) > 60
    for s in rules:
        lines = [ln for ln in s.body.splitlines() if ln.startswith("**Kernel:**")]
        assert lines, f"model.md {s.title!r}: no **Kernel:** line"
        kernel = lines[0].split("**Model:**")[0]
        assert CITATION.search(kernel), f"model.md {s.title!r}: no `function()` cited"


def test_every_op_kind_and_advice_has_its_own_rule() -> None:
    ops = section(read(MODEL_MD), "Operations", 2)
    titles = [s.title for s in sections(ops.body) if s.level == 3]
    for kind in spec.OP_TYPES:
        assert any(f"`{kind}`" in t for t in titles), f"op {kind} has no rule in model.md"
    for advice in spec.ADVICES:
        assert any("`madvise`" in t and f"`{advice}`" in t for t in titles), advice
    text = read(MODEL_MD)
    for key in spec.Config.KEYS:
        assert f"`{key}`" in text, f"config key {key} not explained in model.md"


def test_every_invariant_the_checker_reports_is_listed() -> None:
    names = invariant_names()
    assert {
        "state.malformed",
        "deposit.pud_stack.wrong_level",
        "stats.nr_anon",
        "mapcount.large",
    } <= names
    body = section(read(MODEL_MD), "Invariants", 2).body
    listed = spans(body)
    missing = sorted(names - listed)
    assert not missing, f"invariants not in model.md section Invariants: {missing}"
    tabled = {c.strip("`") for c in table_rows(body) if c.startswith("`")}
    stale = sorted(n for n in tabled if not n.startswith("C.") and n not in names)
    assert not stale, f"model.md lists invariants the checker never reports: {stale}"


def test_every_model_bug_check_is_listed() -> None:
    checks = model_bug_checks()
    assert {"withdraw.pud.null", "deposit.pmd.poison", "check_mm.rss"} <= checks
    text = read(MODEL_MD)
    missing = sorted(c for c in checks if f"`{c}`" not in text)
    assert not missing, f"model-bug checks not in model.md: {missing}"


def test_every_oracle_check_is_listed() -> None:
    checks = oracle_checks()
    assert {"read-value", "fork-id", "out-of-range"} <= checks
    rows = table_rows(section(read(MODEL_MD), "What it checks", 3).body)
    missing = sorted(c for c in checks if f"`{c}`" not in rows)
    assert not missing, f"oracle checks not in model.md: {missing}"


def test_every_counter_is_explained() -> None:
    names = spans(section(read(MODEL_MD), "Statistics", 2).body)
    for key in (*spec.VMSTAT_KEYS, *spec.MTHP_KEYS, *spec.NODE_KEYS):
        assert key in names, f"counter {key} not in model.md section Statistics"


def defined_functions(tree: Path) -> set[str]:
    """Names defined or declared at file scope (a line starting a definition, or a
    ``#define`` of a function-like macro) in the C sources under ``KERNEL_DIRS``."""
    pattern = re.compile(
        rb"^(?:#[ \t]*define[ \t]+|[A-Za-z_][^(;={}\n]*?[ \t*])?"
        rb"([A-Za-z_]\w*)[ \t]*\(",
        re.M,
    )
    found: set[bytes] = set()
    for sub in KERNEL_DIRS:
        for d, _, files in os.walk(tree / sub):
            for f in files:
                if f.endswith((".c", ".h")):
                    with open(os.path.join(d, f), "rb") as fh:
                        found.update(m.group(1) for m in pattern.finditer(fh.read()))
    return {n.decode() for n in found}


def test_cited_kernel_functions_exist_in_the_kernel() -> None:
    trees = [KSRC / t for t in KERNEL_TREES]
    missing_trees = [str(t) for t in trees if not (t / "mm").is_dir()]
    if missing_trees:
        pytest.skip(
            f"kernel sources not unpacked: {', '.join(missing_trees)} "
            "(set PUDTHP_KSRC to the directory holding both)"
        )
    cited = set(CITATION.findall(read(MODEL_MD)))
    assert len(cited) > 100
    defined = defined_functions(trees[0]) | defined_functions(trees[1])
    assert {"do_huge_pmd_anonymous_page", "list_add", "pud_index"} <= defined
    missing = sorted(cited - defined)
    assert not missing, f"model.md cites functions neither kernel tree defines: {missing}"


# --------------------------------------------------------------------------------------
# Both documents
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("doc", [FORMAT_MD, MODEL_MD], ids=lambda p: p.name)
def test_links_stay_inside_the_repository_and_resolve(doc: Path) -> None:
    text = read(doc)
    for old in ("FORMAT.md", "MODEL.md", "shared/"):
        assert old not in text, f"{doc.name} names {old}, which a clone does not hold"
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        assert "://" not in target, f"{doc.name}: external link {target}"
        file, _, anchor = target.partition("#")
        path = (doc.parent / file).resolve() if file else doc
        assert path.is_file(), f"{doc.name}: {target}: no such file"
        assert ROOT in path.parents, f"{doc.name}: {target} is outside the repository"
        if anchor:
            anchors = {slug(s.title) for s in sections(read(path))}
            assert anchor in anchors, f"{doc.name}: {target}: no such heading"
