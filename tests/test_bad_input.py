"""Bad input is exit 2 and one line, never a traceback, in bounded time and memory.

``CLASSES`` is the catalogue of malformed program files, one case per class: the file
itself (not regular, too large, not UTF-8), its JSON (syntax, nesting, numbers JSON cannot
hold), the program's shape, every config key with every wrong kind of value, and every
field of every op with every wrong kind of value (wrong type, below its range, above its
64-bit range).  Each goes through ``pudthp run`` in this process and must give exit 2 and
one ``pudthp: error:`` line naming the file (and, for an op's field, the op index and the
field).  A few run in a real interpreter too, and a Hypothesis property feeds generated
malformed JSON to the loader.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness.program import MAX_JSON_DEPTH, MAX_PROGRAM_BYTES, ProgramError, load_program_file
from pudthp_cli.main import main
from pudthp_ref import spec

ROOT = Path(__file__).resolve().parents[1]

GOOD: dict[str, Any] = {
    "format": "pudthp-program/1",
    "config": {"geometry": "small"},
    "ops": [
        {"op": "mmap", "mm": 0, "start": 64, "npages": 64, "prot": "rw"},
        {"op": "write", "mm": 0, "addr": 64, "value": 7},
        {"op": "read", "mm": 0, "addr": 64},
    ],
}

# One valid op of every kind (FORMAT.md section 1): the base each field case changes.
VALID_OP: dict[str, dict[str, Any]] = {
    "mmap": {"mm": 0, "start": 64, "npages": 64, "prot": "rw"},
    "munmap": {"mm": 0, "start": 64, "npages": 8},
    "mprotect": {"mm": 0, "start": 64, "npages": 8, "prot": "r"},
    "madvise": {"mm": 0, "start": 64, "npages": 8, "advice": "pageout"},
    "read": {"mm": 0, "addr": 64},
    "write": {"mm": 0, "addr": 64, "value": 1},
    "fork": {"mm": 0},
    "exit": {"mm": 0},
    "split_folio": {"mm": 0, "addr": 64},
    "shrink_deferred": {},
    "migrate": {"mm": 0, "start": 64, "npages": 8, "node": 1},
    "pin": {"mm": 0, "addr": 64},
    "unpin": {"pin": 1},
    "fail_alloc": {"order": "pmd", "count": 1},
}

# Wrong values for each field kind: (name, value).  The ranges are spec.FIELD_MAX's: a
# page number or length below 2**52 (a 64-bit byte address in 4 KiB pages), ids and counts
# and contents 64-bit words; the low ends as FORMAT.md says (lengths and pin ids >= 1).
WRONG_TYPES: list[tuple[str, Any]] = [
    ("bool", True), ("float", 1.5), ("string", "1"), ("null", None), ("list", [1]),
    ("object", {"a": 1}),
]
WRONG_RANGE: dict[str, list[tuple[str, Any]]] = {
    "index": [("negative", -1), ("2**64", 2**64), ("1e100", 10**100)],
    "addr": [("negative", -1), ("2**52", 2**52), ("1e100", 10**100)],
    "length": [("zero", 0), ("negative", -5), ("2**52", 2**52)],
    "id": [("zero", 0), ("2**64", 2**64)],
    "value": [("negative", -1), ("2**64", 2**64)],
    "prot": [("unknown", "rwx"), ("case", "RW")],
    "advice": [("unknown", "free")],
    "alloc_order": [("unknown", "pte")],
}

WRONG_CONFIG: dict[str, list[Any]] = {
    "geometry": ["huge", 6, 1024, 2, True, None],
    "thp_enabled": ["sometimes", 1, None],
    "pmd_enabled": ["sometimes", True],
    "pud_enabled": ["sometimes", []],
    "use_zero_page": ["yes", 1, None],
    "deposit": ["stack", 0],
    "pud_read_fault": ["maybe", None],
    "pud_wp_reuse": ["true", 0],
    "shrink_underused": [0, "false"],
    "nodes": [0, 65, 2**64, 1.0, "2"],
    "swap_pages": [-2, 2**41, 10**100, "lots"],
}


@dataclass(frozen=True)
class Case:
    """One class of malformed input: ``make(dir)`` writes it and returns its path;
    ``needles`` must all be in the error line."""

    name: str
    make: Callable[[Path], str]
    needles: tuple[str, ...] = ()


def text_file(content: str | bytes) -> Callable[[Path], str]:
    def make(d: Path) -> str:
        path = d / "prog.json"
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content, encoding="utf-8")
        return str(path)

    return make


def program_file(raw: Any) -> Callable[[Path], str]:
    return text_file(json.dumps(raw))


def with_ops(*ops: dict[str, Any]) -> dict[str, Any]:
    return {**GOOD, "ops": [*GOOD["ops"], *ops]}


def fifo(d: Path) -> str:
    path = d / "fifo.json"
    os.mkfifo(path)
    return str(path)


def symlink_to_fifo(d: Path) -> str:
    link = d / "link.json"
    link.symlink_to(fifo(d))
    return str(link)


def too_large(d: Path) -> str:
    path = d / "big.json"
    with open(path, "wb") as f:
        f.truncate(MAX_PROGRAM_BYTES + 1)  # sparse: nothing is written
    return str(path)


def nested(depth: int, opening: str = "[", closing: str = "]") -> str:
    return opening * depth + "1" + closing * depth


def nested_meta(depth: int) -> str:
    inner = nested(depth, '{"a":', "}")
    return json.dumps(GOOD)[:-1] + ', "meta": ' + inner + "}"


def _file_cases() -> list[Case]:
    return [
        Case("missing file", lambda d: str(d / "nope.json"), ("cannot read",)),
        Case("directory", lambda d: str(d), ("not a regular file (a directory)",)),
        Case("FIFO", fifo, ("not a regular file (a FIFO)",)),
        Case("symlink to a FIFO", symlink_to_fifo, ("not a regular file (a FIFO)",)),
        Case("/dev/zero", lambda d: "/dev/zero", ("a character device",)),
        Case("/dev/null", lambda d: "/dev/null", ("a character device",)),
        Case("over the size limit", too_large, ("too large", str(MAX_PROGRAM_BYTES))),
        Case("empty file", text_file(""), ("invalid JSON",)),
        Case("not UTF-8", text_file(b'{"format": "\xff"}'), ("not UTF-8",)),
        Case("UTF-8 byte order mark", text_file("\ufeff" + json.dumps(GOOD)), ("JSON",)),
        Case("NUL bytes", text_file(b"\0" * 100), ("invalid JSON",)),
    ]


def _json_cases() -> list[Case]:
    good = json.dumps(GOOD)
    deep = f"more than {MAX_JSON_DEPTH} deep"
    return [
        Case("truncated JSON", text_file(good[: len(good) // 2]), ("invalid JSON",)),
        Case("trailing garbage", text_file(good + " x"), ("invalid JSON",)),
        Case("unterminated string", text_file('{"format": "pudthp'), ("invalid JSON",)),
        Case("unterminated string of escaped quotes",
             text_file('"' + '\\"' * 200_000), ("invalid JSON",)),
        Case("NaN", text_file(good.replace('"value": 7', '"value": NaN')), ("invalid JSON",)),
        Case("Infinity", text_file(good.replace('"value": 7', '"value": Infinity')),
             ("invalid JSON",)),
        Case("integer of 5000 digits", text_file(good.replace('"value": 7',
                                                              '"value": ' + "9" * 5000)),
             ("invalid JSON",)),
        Case("arrays nested 100,000 deep", text_file(nested(100_000)), (deep, "line 1")),
        Case("objects nested 100,000 deep", text_file(nested(100_000, '{"a":', "}")),
             (deep,)),
        Case("meta nested 500 deep", text_file(nested_meta(500)), (deep,)),
        Case("meta nested 65 deep", text_file(nested_meta(65)), (deep,)),
        Case("ops nested deep", text_file(json.dumps(GOOD)[:-1].replace(
            '"ops": [', '"ops": [' + "[" * 70 + "]" * 70 + ", ", 1) + "}"), (deep,)),
        Case("brackets in strings do not count, but the real depth does",
             text_file('{"meta": "' + "[" * 1000 + '", "x": ' + nested(70) + "}"), (deep,)),
        Case("meta number 1e999 (infinity)", text_file(json.dumps(GOOD)[:-1]
                                                        + ', "meta": {"x": 1e999}}'),
             ("meta.x", "not a finite number")),
        Case("meta lone surrogate", text_file(json.dumps(GOOD)[:-1]
                                              + ', "meta": {"x": "\\ud800"}}'),
             ("meta.x", "lone surrogate")),
        Case("meta key lone surrogate", text_file(json.dumps(GOOD)[:-1]
                                                  + ', "meta": {"\\udc00": 1}}'),
             ("lone surrogate",)),
    ]


def _shape_cases() -> list[Case]:
    cases = [
        Case("top level a list", program_file([GOOD]), ("must be a JSON object",)),
        Case("top level a string", program_file("x"), ("must be a JSON object",)),
        Case("top level null", program_file(None), ("must be a JSON object",)),
        Case("top level a number", program_file(1), ("must be a JSON object",)),
        Case("wrong format", program_file({**GOOD, "format": "pudthp-program/2"}),
             ("format",)),
        Case("format not a string", program_file({**GOOD, "format": 1}), ("format",)),
        Case("unknown top-level key", program_file({**GOOD, "opz": []}), ("opz",)),
        Case("duplicate top-level key", text_file(json.dumps(GOOD)[:-1] + ', "ops": []}'),
             ("more than once",)),
        Case("ops not a list", program_file({**GOOD, "ops": {}}), ("ops",)),
        Case("meta not an object", program_file({**GOOD, "meta": []}), ("meta",)),
        Case("config not an object", program_file({**GOOD, "config": []}), ("config",)),
        Case("unknown config key", program_file({**GOOD, "config": {"pud": 1}}),
             ("config.pud",)),
        Case("op not an object", program_file({**GOOD, "ops": [1]}), ("op 0",)),
        Case("op kind missing", program_file(with_ops({"mm": 0})), ("op 3", "'op'")),
        Case("unknown op", program_file(with_ops({"op": "mremap", "mm": 0})),
             ("op 3", "mremap")),
        Case("op kind not a string", program_file(with_ops({"op": 1})), ("op 3",)),
        Case("duplicate field", text_file(json.dumps(GOOD).replace(
            '"value": 7', '"value": 7, "value": 8')), ("op 1", "more than once")),
    ]
    for key in spec.Config.KEYS:
        for value in WRONG_CONFIG[key]:
            cases.append(Case(f"config {key}={value!r}"[:80],
                              program_file({**GOOD, "config": {key: value}}),
                              (f"config.{key}",)))
    for kind, fields_ in VALID_OP.items():
        for field in fields_:
            cases.append(Case(f"{kind} missing {field}", program_file(with_ops(
                {"op": kind, **{k: v for k, v in fields_.items() if k != field}})),
                ("op 3", f"'{field}'", "missing")))
        cases.append(Case(f"{kind} unknown field", program_file(with_ops(
            {"op": kind, **fields_, "bogus": 1})), ("op 3", "'bogus'")))
    return cases


def _field_cases() -> list[Case]:
    cases: list[Case] = []
    for kind, fields_ in VALID_OP.items():
        for field in fields_:
            field_kind = spec.FIELD_KINDS[field]
            numeric = field_kind in spec.FIELD_MAX
            wrong = [*WRONG_RANGE[field_kind], *(WRONG_TYPES if numeric else WRONG_TYPES[:2])]
            for label, value in wrong:
                op = {"op": kind, **fields_, field: value}
                cases.append(Case(f"{kind}.{field} {label}", program_file(with_ops(op)),
                                  (f"op 3 ({kind})", f"field '{field}'")))
    return cases


CLASSES: list[Case] = [*_file_cases(), *_json_cases(), *_shape_cases(), *_field_cases()]


def run_in_process(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def test_the_catalogue_is_large_and_names_are_unique() -> None:
    names = [c.name for c in CLASSES]
    assert len(names) == len(set(names))
    assert len(CLASSES) >= 300


@pytest.mark.parametrize("case", CLASSES, ids=[c.name for c in CLASSES])
def test_malformed_program_is_exit_2_and_one_line(tmp_path: Path, case: Case) -> None:
    path = case.make(tmp_path)
    start = time.monotonic()
    code, out, err = run_in_process(["run", path, "--quiet"])
    assert time.monotonic() - start < 5, "bad input must be refused quickly"
    assert code == 2, out + err
    assert out == ""
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pudthp: error: {path}: ")
    for needle in case.needles:
        assert needle in lines[0], lines[0]


@pytest.mark.parametrize("name", ["/dev/zero", "FIFO", "arrays nested 100,000 deep",
                                  "meta nested 500 deep", "addr_1e100"])
def test_a_real_interpreter_prints_one_line(tmp_path: Path, name: str) -> None:
    # The whole process: nothing at exit either (a blocked FIFO read would hit the timeout).
    if name == "addr_1e100":
        path = program_file(with_ops({"op": "read", "mm": 0, "addr": 10**100}))(tmp_path)
    else:
        path = next(c for c in CLASSES if c.name == name).make(tmp_path)
    r = subprocess.run([sys.executable, "-m", "pudthp_cli", "run", path], capture_output=True,
                       text=True, timeout=30, cwd=ROOT)
    assert r.returncode == 2
    assert r.stdout == ""
    assert len(r.stderr.splitlines()) == 1, r.stderr
    assert r.stderr.startswith("pudthp: error: ")


def test_largest_values_in_range_load(tmp_path: Path) -> None:
    # The top of every range is legal: 2**52-1 pages (the last 4 KiB page of a 64-bit
    # space), 2**64-1 for mm ids, nodes, counts, pin ids and contents.
    top_page, top_word = 2**52 - 1, 2**64 - 1
    raw = with_ops(
        {"op": "mmap", "mm": 0, "start": top_page, "npages": top_page, "prot": "rw"},
        {"op": "write", "mm": top_word, "addr": top_page, "value": top_word},
        {"op": "migrate", "mm": 0, "start": 0, "npages": 1, "node": top_word},
        {"op": "unpin", "pin": top_word},
        {"op": "fail_alloc", "order": "pud", "count": top_word},
    )
    p = load_program_file(program_file(raw)(tmp_path))
    assert p.ops[3] == spec.Mmap(0, top_page, top_page, "rw")
    assert p.ops[-1] == spec.FailAlloc("pud", top_word)


def test_an_address_past_the_space_is_still_a_program(tmp_path: Path) -> None:
    # MODEL.md section 5: an invalid but well-formed request is a legal program.  At small
    # geometry the space is 8**3 = 512 pages: an mmap at 512 is past it (ENOMEM or EINVAL
    # as the kernel past TASK_SIZE), a read there SIGSEGV.
    raw = with_ops({"op": "mmap", "mm": 0, "start": 512, "npages": 1, "prot": "rw"},
                   {"op": "read", "mm": 0, "addr": 2**40})
    code, out, err = run_in_process(["run", program_file(raw)(tmp_path)])
    assert code == 0, err
    lines = out.splitlines()
    assert lines[3].endswith(("-> EINVAL", "-> ENOMEM"))
    assert lines[4].endswith("-> SIGSEGV")


# --------------------------------------------------------------------------------------
# Generated malformed JSON
# --------------------------------------------------------------------------------------

GOOD_TEXT = json.dumps({**GOOD, "meta": {"note": "x", "list": [1, 2, {"a": None}]}})
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


@st.composite
def malformed(draw: st.DrawFn) -> str:
    """Text that is mostly a broken program: a valid one cut, spliced, with a value
    replaced by any JSON value (written with json.dumps, so NaN, Infinity and surrogates
    too), or brackets, quotes and backslashes thrown in; or anything at all."""
    how = draw(st.sampled_from(["cut", "splice", "value", "deep", "noise", "any"]))
    text = GOOD_TEXT
    if how == "cut":
        return text[: draw(st.integers(0, len(text)))]
    if how == "splice":
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, len(text)))
        return text[:i] + draw(st.text(max_size=20)) + text[j:]
    if how == "value":
        spots = ['"small"', "64", "7", '"rw"', "null", '"x"', "[1, 2, {"]
        spot = draw(st.sampled_from(spots))
        value = json.dumps(draw(json_values))
        return text.replace(spot, value, 1)
    if how == "deep":
        depth = draw(st.integers(MAX_JSON_DEPTH - 2, 100_000))
        opening = draw(st.sampled_from(["[", '{"k":', "[{\"k\":"]))
        closing = {"[": "]", '{"k":': "}", "[{\"k\":": "}]"}[opening]
        i = draw(st.sampled_from([text.index('"meta": ') + 8, text.index('"ops": ') + 7]))
        end = text.index("}", i) + 1 if text[i] == "{" else text.index("]", i) + 1
        return text[:i] + opening * depth + "0" + closing * depth + text[end:]
    if how == "noise":
        chars = st.sampled_from(list('[]{}"\\:,0123456789-eE.nultrfas '))
        i = draw(st.integers(0, len(text)))
        return text[:i] + "".join(draw(st.lists(chars, max_size=60))) + text[i:]
    return draw(st.text(max_size=200))


@settings(max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.function_scoped_fixture])
@given(text=malformed())
def test_generated_malformed_json_is_one_line_in_bounded_time_and_memory(
        tmp_path: Path, text: str) -> None:
    path = tmp_path / "gen.json"
    try:
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
    except UnicodeEncodeError:
        path.write_bytes(text.encode("utf-8", "replace"))
    start = time.monotonic()
    tracemalloc.start()
    error: ProgramError | None = None
    try:
        try:
            load_program_file(str(path))
        except ProgramError as e:
            error = e
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    elapsed = time.monotonic() - start
    loaded = error is None
    if error is not None:
        assert "\n" not in str(error)
        assert str(error).startswith(f"{path}: ")
    # At most a few hundred KiB of text: a few MiB to parse it, well under a second.
    assert peak < 64 << 20, f"{peak} bytes to load {len(text)} characters"
    assert elapsed < 5, f"{elapsed:.1f} s to load {len(text)} characters"
    code, out, err = run_in_process(["run", str(path), "--quiet"])
    assert "Traceback" not in out + err
    if loaded:
        assert code in (0, 1), err
    else:
        assert code == 2
        assert len(err.splitlines()) == 1, err
        assert err.startswith("pudthp: error: ")
