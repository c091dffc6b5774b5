"""Program loading (FORMAT.md section 1) and the command line's handling of bad input.

One test per class of bad input: each asserts the one-line message names the file, the op
index and the field.  The CLI tests need no model: bad input is rejected before one is made.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from harness.program import (
    ProgramError,
    dump_program,
    load_program_file,
    parse_program,
)
from pudthp_cli.main import main
from pudthp_ref import spec
from pudthp_ref.spec import Config, Program

GOOD_OPS: list[dict[str, Any]] = [
    {"op": "mmap", "mm": 0, "start": 64, "npages": 64, "prot": "rw"},
    {"op": "write", "mm": 0, "addr": 64, "value": 7},
    {"op": "fork", "mm": 0},
    {"op": "munmap", "mm": 0, "start": 130, "npages": 1},
    {"op": "read", "mm": 1, "addr": 64},
]


def program(ops: Any = None, **top: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "format": "pudthp-program/1",
        "config": {"geometry": "small"},
        "ops": [dict(op) for op in GOOD_OPS] if ops is None else ops,
    }
    raw.update(top)
    return raw


def write(tmp_path: Path, raw: Any, name: str = "prog.json") -> str:
    path = tmp_path / name
    path.write_text(raw if isinstance(raw, str) else json.dumps(raw))
    return str(path)


def load_error(tmp_path: Path, raw: Any) -> ProgramError:
    path = write(tmp_path, raw)
    with pytest.raises(ProgramError) as info:
        load_program_file(path)
    err = info.value
    text = str(err)
    assert "\n" not in text
    assert text.startswith(f"{path}: ")
    return err


def op_error(tmp_path: Path, index: int, field: str, **change: Any) -> str:
    """Load GOOD_OPS with op ``index`` changed; the error must name index, kind and field."""
    ops = [dict(op) for op in GOOD_OPS]
    ops[index].update(change)
    for key, value in change.items():
        if value is _DELETE:
            del ops[index][key]
    err = load_error(tmp_path, program(ops))
    assert err.op_index == index
    assert err.field == field
    text = str(err)
    assert f": op {index}" in text
    assert f"field {field!r}" in text
    return text


_DELETE = object()


# ---- the file and its JSON ----------------------------------------------------------------


def test_good_program_loads(tmp_path: Path) -> None:
    p = load_program_file(write(tmp_path, program(meta={"note": "x"})))
    assert p.config.geometry == 8
    assert len(p.ops) == 5
    assert p.ops[0] == spec.Mmap(mm=0, start=64, npages=64, prot="rw")
    assert p.meta == {"note": "x"}


def test_unreadable_file(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.json")
    with pytest.raises(ProgramError) as info:
        load_program_file(path)
    assert str(info.value) == f"{path}: cannot read: No such file or directory"


def test_directory_is_unreadable(tmp_path: Path) -> None:
    with pytest.raises(ProgramError, match="cannot read"):
        load_program_file(str(tmp_path))


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "prog.json"
    path.write_bytes(b'{"format": "\xff"}')
    with pytest.raises(ProgramError, match="cannot read: not UTF-8"):
        load_program_file(str(path))


def test_invalid_json(tmp_path: Path) -> None:
    err = load_error(tmp_path, '{\n  "format": ,\n}')
    assert "invalid JSON at line 2 column 13" in str(err)


def test_json_nan_is_invalid(tmp_path: Path) -> None:
    err = load_error(tmp_path, '{"format": NaN}')
    assert "invalid JSON" in str(err)


def test_top_level_not_an_object(tmp_path: Path) -> None:
    err = load_error(tmp_path, [1, 2])
    assert "must be a JSON object" in str(err)


# ---- top-level keys -----------------------------------------------------------------------


def test_wrong_format_string(tmp_path: Path) -> None:
    err = load_error(tmp_path, program(format="pudthp-program/2"))
    assert err.field == "format"
    assert "format: must be 'pudthp-program/1', got \"pudthp-program/2\"" in str(err)


def test_missing_format(tmp_path: Path) -> None:
    raw = program()
    del raw["format"]
    err = load_error(tmp_path, raw)
    assert err.field == "format"
    assert "missing" in str(err)


def test_unknown_top_level_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, program(opps=[]))
    assert err.field == "opps"
    assert "unknown top-level key" in str(err)
    assert "did you mean 'ops'" in str(err)


def test_duplicate_key(tmp_path: Path) -> None:
    text = '{"format": "pudthp-program/1", "config": {}, "ops": [], "ops": []}'
    err = load_error(tmp_path, text)
    assert err.field == "ops"
    assert "more than once" in str(err)


def test_ops_not_a_list(tmp_path: Path) -> None:
    err = load_error(tmp_path, program(ops={"op": "fork", "mm": 0}))
    assert err.field == "ops"
    assert "ops: must be a list, got an object" in str(err)


def test_meta_not_an_object(tmp_path: Path) -> None:
    err = load_error(tmp_path, program(meta="note"))
    assert err.field == "meta"


# ---- ops -------------------------------------------------------------------------------


def test_op_not_an_object(tmp_path: Path) -> None:
    ops: list[Any] = [dict(op) for op in GOOD_OPS]
    ops[2] = ["fork", 0]
    err = load_error(tmp_path, program(ops))
    assert err.op_index == 2
    assert ": op 2: must be an object, got a list" in str(err)


def test_unknown_op(tmp_path: Path) -> None:
    text = op_error(tmp_path, 1, "op", op="wrte")
    assert "unknown op \"wrte\" (did you mean 'write'?)" in text


def test_op_kind_missing(tmp_path: Path) -> None:
    text = op_error(tmp_path, 1, "op", op=_DELETE)
    assert "missing" in text


def test_unknown_field(tmp_path: Path) -> None:
    text = op_error(tmp_path, 3, "npage", npage=1)
    assert ": op 3 (munmap): field 'npage': unknown field (did you mean 'npages'?)" in text
    assert "munmap takes mm, start, npages" in text


def test_field_of_another_op_kind(tmp_path: Path) -> None:
    text = op_error(tmp_path, 3, "prot", prot="rw")
    assert "unknown field" in text


def test_missing_field(tmp_path: Path) -> None:
    text = op_error(tmp_path, 1, "value", value=_DELETE)
    assert ": op 1 (write): field 'value': missing" in text


def test_bool_is_not_an_integer(tmp_path: Path) -> None:
    text = op_error(tmp_path, 2, "mm", mm=True)
    assert "must be an integer >= 0, got true" in text


def test_string_is_not_an_integer(tmp_path: Path) -> None:
    text = op_error(tmp_path, 0, "start", start="64")
    assert 'must be an integer >= 0, got "64"' in text


def test_float_is_not_an_integer(tmp_path: Path) -> None:
    text = op_error(tmp_path, 0, "npages", npages=64.0)
    assert "must be an integer >= 1, got 64.0" in text


def test_negative_address(tmp_path: Path) -> None:
    text = op_error(tmp_path, 4, "addr", addr=-1)
    assert ": op 4 (read): field 'addr': must be an integer >= 0, got -1" in text


def test_zero_length(tmp_path: Path) -> None:
    text = op_error(tmp_path, 3, "npages", npages=0)
    assert text.endswith(": op 3 (munmap): field 'npages': must be an integer >= 1, got 0")


def test_negative_length(tmp_path: Path) -> None:
    text = op_error(tmp_path, 0, "npages", npages=-64)
    assert "must be an integer >= 1, got -64" in text


def test_value_too_large(tmp_path: Path) -> None:
    text = op_error(tmp_path, 1, "value", value=1 << 64)
    assert "must be an integer from 0 to 2**64-1" in text


def test_largest_value_is_fine(tmp_path: Path) -> None:
    ops = [{"op": "write", "mm": 0, "addr": 0, "value": (1 << 64) - 1}]
    p = load_program_file(write(tmp_path, program(ops)))
    assert p.ops[0] == spec.Write(mm=0, addr=0, value=(1 << 64) - 1)


def test_unknown_prot(tmp_path: Path) -> None:
    text = op_error(tmp_path, 0, "prot", prot="rwx")
    assert 'must be one of none, r, rw, got "rwx"' in text


def test_bad_advice_and_alloc_order(tmp_path: Path) -> None:
    ops = [{"op": "madvise", "mm": 0, "start": 0, "npages": 1, "advice": "free"}]
    err = load_error(tmp_path, program(ops))
    assert (err.op_index, err.field) == (0, "advice")
    ops = [{"op": "fail_alloc", "order": "huge", "count": 1}]
    err = load_error(tmp_path, program(ops))
    assert (err.op_index, err.field) == (0, "order")


def test_pin_id_zero(tmp_path: Path) -> None:
    err = load_error(tmp_path, program([{"op": "unpin", "pin": 0}]))
    assert (err.op_index, err.field) == (0, "pin")


def test_runtime_errors_are_not_load_errors(tmp_path: Path) -> None:
    ops = [
        {"op": "mmap", "mm": 7, "start": 10**9, "npages": 10**9, "prot": "r"},
        {"op": "migrate", "mm": 0, "start": 0, "npages": 1, "node": 63},
        {"op": "shrink_deferred"},
    ]
    assert len(load_program_file(write(tmp_path, program(ops))).ops) == 3


# ---- config ----------------------------------------------------------------------------


def test_unknown_config_key(tmp_path: Path) -> None:
    err = load_error(tmp_path, program(config={"geometry": "small", "thp": "always"}))
    assert err.field == "config.thp"
    assert ": config.thp: unknown config key" in str(err)


def test_unknown_config_value(tmp_path: Path) -> None:
    err = load_error(tmp_path, program(config={"deposit": "stack"}))
    assert err.field == "config.deposit"
    assert ": config.deposit: 'stack' is not one of" in str(err)


@pytest.mark.parametrize("p", [6, 1024, 2, "huge", True])
def test_bad_geometry(tmp_path: Path, p: Any) -> None:
    err = load_error(tmp_path, program(config={"geometry": p}))
    assert err.field == "config.geometry"
    assert ": config.geometry: " in str(err)


def test_config_not_an_object(tmp_path: Path) -> None:
    err = load_error(tmp_path, program(config=["small"]))
    assert err.field == "config"
    assert ": config: must be an object" in str(err)


# ---- writing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg",
    [Config(), Config(geometry=4, deposit="list_head"), Config(geometry=16, swap_pages=0)],
)
def test_round_trip(cfg: Config) -> None:
    ops = (
        *parse_program(program(), "x").ops,
        spec.Madvise(mm=0, start=0, npages=3, advice="pageout"),
        spec.ShrinkDeferred(),
        spec.FailAlloc(order="pud", count=2),
        spec.Pin(mm=1, addr=64),
        spec.Unpin(pin=1),
        spec.Write(mm=0, addr=1, value=(1 << 64) - 1),
    )
    p = Program(config=cfg, ops=ops, meta={"note": "ünïcode", "n": [1, {"a": None}]})
    text = dump_program(p)
    assert parse_program(json.loads(text), "dump") == p
    assert text.count("\n") == len(ops) + 7  # one line per op


def test_dump_empty_program() -> None:
    p = Program(config=Config(), ops=())
    assert parse_program(json.loads(dump_program(p)), "dump") == p


# ---- the command line on bad input ---------------------------------------------------------


def run_cli(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str, str]:
    code = main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def assert_one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pudthp: error: ")
    return lines[0]


@pytest.mark.parametrize(
    "raw",
    [
        "{not json",
        program(format="x"),
        program(ops=[{"op": "munmap", "mm": 0, "start": 1, "npages": 0}]),
        program(ops=[{"op": "mmap", "mm": 0, "start": 1, "npages": 1, "prot": 3}]),
        program(config={"geometry": 6}),
        program(bogus=1),
    ],
)
def test_cli_bad_program(tmp_path: Path, capsys: pytest.CaptureFixture[str], raw: Any) -> None:
    path = write(tmp_path, raw)
    code, out, err = run_cli(capsys, ["run", path])
    assert code == 2
    assert out == ""
    assert path in assert_one_error_line(err)


def test_cli_names_op_and_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, program(ops=[{"op": "munmap", "mm": 0, "start": 1, "npages": 0}]))
    code, _, err = run_cli(capsys, ["run", path])
    assert code == 2
    line = assert_one_error_line(err)
    assert line == f"pudthp: error: {path}: op 0 (munmap): field 'npages': " + (
        "must be an integer >= 1, got 0"
    )


def test_cli_missing_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(tmp_path / "nope.json")
    code, _, err = run_cli(capsys, ["run", path])
    assert code == 2
    assert "cannot read" in assert_one_error_line(err)


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "x.json", "--impl", "slow"],
        ["run"],
        ["run", "x.json", "--bogus"],
        [],
        ["frobnicate"],
    ],
)
def test_cli_bad_arguments(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run_cli(capsys, argv)
    assert code == 2
    assert out == ""
    assert_one_error_line(err)


@pytest.mark.parametrize("impl", ["fast", "both"])
def test_cli_runs_fast_and_both(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], impl: str
) -> None:
    code, out, err = run_cli(capsys, ["run", write(tmp_path, program()), "--impl", impl])
    assert code == 0, err
    assert out.splitlines()[-1].startswith("ok: ")


@pytest.mark.parametrize("cmd", [["shrink"], ["corpus", "list"]])
def test_cli_unknown_option_is_one_line(capsys: pytest.CaptureFixture[str], cmd: list[str]) -> None:
    code, _, err = run_cli(capsys, [*cmd, "--some-option", "x"])
    assert code == 2
    assert assert_one_error_line(err).startswith("pudthp: error: unrecognized arguments: ")


def test_cli_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_cli(capsys, ["--help"])
    assert code == 0
    for cmd in ("run", "fuzz", "shrink", "corpus", "bench", "conform"):
        assert cmd in out


def test_cli_bench_rejects_an_unknown_workload(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, ["bench", "--workload", "nope"])
    assert code == 2
    assert "invalid choice: 'nope'" in assert_one_error_line(err)
