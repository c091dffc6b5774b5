"""Loading, validating and writing programs (FORMAT.md section 1).

Validation is strict and complete before anything runs: every problem becomes one
``ProgramError`` whose ``str()`` is a single line naming the file, the op index (and kind) and
the field.  What a program *means* is not checked here: an address outside the address space,
an mm id that never existed or a node the config does not have are legal programs whose ops
return an errno at run time.  What is checked is that every number fits FORMAT.md's 64-bit
ranges (``spec.FIELD_MAX``), and before any parsing that the input is a regular file of at
most ``MAX_PROGRAM_BYTES`` whose JSON nests at most ``MAX_JSON_DEPTH`` deep, so no input can
make loading take unbounded time, memory or recursion.
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import os
import re
import stat
from dataclasses import fields
from typing import Any, cast

from pudthp_ref import spec
from pudthp_ref.spec import Config, ConfigError, Op, Program, PudThpError

TOP_LEVEL_KEYS: tuple[str, ...] = ("format", "config", "ops", "meta")
REQUIRED_TOP_LEVEL_KEYS: tuple[str, ...] = ("format", "config", "ops")
# Limits checked on the raw input, before the JSON parser runs: a program file of 8 MiB holds
# about 100,000 ops; FORMAT.md's own structures nest 3 deep (program, ops, op), ``meta``
# a little deeper.
MAX_PROGRAM_BYTES = 8 << 20
MAX_JSON_DEPTH = 64


class ProgramError(PudThpError):
    """A program that cannot be loaded; ``str()`` is one line, e.g.

    ``prog.json: op 3 (munmap): field 'npages': must be an integer >= 1, got 0``.

    ``op_index`` is None for problems outside ``ops`` (then ``field`` is a top-level key or
    ``config.<key>``), ``field`` is None for problems with the file or a whole op, and ``kind``
    is the op's kind once it is known.
    """

    def __init__(
        self,
        path: str,
        op_index: int | None,
        field: str | None,
        message: str,
        *,
        kind: str | None = None,
    ) -> None:
        self.path = path
        self.op_index = op_index
        self.field = field
        self.message = message
        self.kind = kind
        parts = [path]
        if op_index is not None:
            parts.append(f"op {op_index}" + (f" ({kind})" if kind else ""))
            if field is not None:
                parts.append(f"field {field!r}")
        elif field is not None:
            parts.append(field)
        parts.append(message)
        super().__init__(": ".join(_one_line(p) for p in parts))


def _one_line(text: str) -> str:
    return " ".join(text.split()) if "\n" in text or "\r" in text else text


# --------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------


class _JsonObject(dict[str, Any]):
    """A parsed JSON object that remembers keys given twice (``json`` keeps the last)."""

    duplicates: tuple[str, ...] = ()


def _object_pairs(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject()
    dups: list[str] = []
    for key, value in pairs:
        if key in obj and key not in dups:
            dups.append(key)
        obj[key] = value
    if dups:
        obj.duplicates = tuple(dups)
    return obj


class _BadConstant(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _BadConstant(f"{name} is not a JSON number")


def load_program_file(path: str) -> Program:
    """Read and validate a program file; raises ProgramError (one line) for any problem.

    Only a regular file is read (a FIFO, a device or a directory is refused before a byte is
    read: opening does not wait for a FIFO's writer), and at most ``MAX_PROGRAM_BYTES``.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        raise ProgramError(path, None, None, f"cannot read: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ProgramError(
                path, None, None, f"cannot read: not a regular file ({_file_type(st.st_mode)})"
            )
        if st.st_size > MAX_PROGRAM_BYTES:
            raise ProgramError(path, None, None, _too_big(st.st_size))
        with os.fdopen(fd, "rb", closefd=False) as f:
            data = f.read(MAX_PROGRAM_BYTES + 1)
    except OSError as e:
        raise ProgramError(path, None, None, f"cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    if len(data) > MAX_PROGRAM_BYTES:  # it grew after fstat
        raise ProgramError(path, None, None, _too_big(len(data)))
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ProgramError(
            path, None, None, f"cannot read: not UTF-8 text (byte {e.start})"
        ) from None
    return parse_program_text(text, path)


def _file_type(mode: int) -> str:
    for test, name in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a file"


def _too_big(size: int) -> str:
    return (f"too large: {size} bytes, over the limit of {MAX_PROGRAM_BYTES} bytes "
            f"({MAX_PROGRAM_BYTES >> 20} MiB) for a program file")


def parse_program_text(text: str, source: str) -> Program:
    """Parse JSON text and validate it as a program; ``source`` names it in errors.

    The size and the nesting depth are checked on the raw text first, so the parser never
    sees an input that would take unbounded memory or recursion.
    """
    if len(text) > MAX_PROGRAM_BYTES:
        raise ProgramError(source, None, None, _too_big(len(text.encode("utf-8", "replace"))))
    _check_depth(text, source)
    try:
        raw = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ProgramError(
            source, None, None, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise ProgramError(source, None, None, "invalid JSON: nested too deeply") from None
    except ValueError as e:  # _BadConstant, or an integer literal with too many digits
        raise ProgramError(source, None, None, f"invalid JSON: {_one_line(str(e))}") from None
    return parse_program(raw, source)


# A JSON string, or the rest of the text after an opening quote that is never closed: it
# always matches once begun (a trailing backslash included) and never backtracks, so a scan
# is linear whatever the text.
_JSON_STRING = re.compile(r'"[^"\\]*+(?:\\(?:[\s\S]|\Z)[^"\\]*+)*+(?:"|\Z)')
_NOT_BRACKETS = re.compile(r"[^\[\]{}]+")
_STRING_OR_BRACKET = re.compile(r'"|[\[\]{}]')
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _check_depth(text: str, source: str) -> None:
    """Raise ProgramError when brackets outside strings nest deeper than MAX_JSON_DEPTH."""
    problem = json_depth_problem(text, MAX_JSON_DEPTH)
    if problem is not None:
        raise ProgramError(source, None, None, f"{problem} (the limit for a program file)")


def json_depth_problem(text: str, limit: int) -> str | None:
    """None when brackets outside strings nest at most ``limit`` deep in JSON ``text``,
    else where it goes deeper (one line); for any JSON read from outside, before the
    parser (which recurses) sees it.

    Strings are cut out, then everything but brackets, then empty ``[]`` pairs and then
    empty ``{}`` pairs (each pass lowers the depth by at most one), with C-level scans: a
    few tenths of a second for the largest file.  Only an input that may be over the limit
    is walked in Python, to say where it goes over.
    """
    if text.count("[") + text.count("{") <= limit:
        return None
    brackets = _NOT_BRACKETS.sub("", _JSON_STRING.sub("", text))
    brackets = brackets.replace("[]", "").replace("{}", "")
    steps = map(_BRACKET_STEP.__getitem__, brackets)
    if max(itertools.accumulate(steps), default=0) <= limit - 2:
        return None
    depth, pos = 0, 0
    while (m := _STRING_OR_BRACKET.search(text, pos)) is not None:
        if m.group() == '"':
            string = _JSON_STRING.match(text, m.start())
            assert string is not None  # the pattern matches from any opening quote
            pos = string.end()
            continue
        depth += _BRACKET_STEP[m.group()]
        pos = m.end()
        if depth > limit:
            line = text.count("\n", 0, m.start()) + 1
            col = m.start() - (text.rfind("\n", 0, m.start()) + 1) + 1
            return f"JSON nested more than {limit} deep at line {line} column {col}"
    return None


def parse_program(raw: Any, source: str) -> Program:
    """Validate an already parsed JSON value as a program; ``source`` names it in errors."""
    if not isinstance(raw, dict):
        raise ProgramError(
            source,
            None,
            None,
            f"must be a JSON object with format, config and ops, got {_json_type(raw)}",
        )
    _check_duplicates(raw, source, None, None, "")
    for key in raw:
        if key not in TOP_LEVEL_KEYS:
            raise ProgramError(
                source,
                None,
                str(key),
                f"unknown top-level key{_did_you_mean(key, TOP_LEVEL_KEYS)}"
                f" (known: {', '.join(TOP_LEVEL_KEYS)})",
            )
    for key in REQUIRED_TOP_LEVEL_KEYS:
        if key not in raw:
            raise ProgramError(source, None, key, "missing")
    if raw["format"] != spec.PROGRAM_FORMAT:
        raise ProgramError(
            source, None, "format", f"must be {spec.PROGRAM_FORMAT!r}, got {_got(raw['format'])}"
        )
    config = _parse_config(raw["config"], source)
    ops_raw = raw["ops"]
    if not isinstance(ops_raw, list):
        raise ProgramError(source, None, "ops", f"must be a list, got {_json_type(ops_raw)}")
    ops = tuple(_parse_op(item, i, source) for i, item in enumerate(ops_raw))
    meta: dict[str, Any] = {}
    if "meta" in raw:
        if not isinstance(raw["meta"], dict):
            raise ProgramError(
                source, None, "meta", f"must be an object, got {_json_type(raw['meta'])}"
            )
        meta = cast(dict[str, Any], _plain(raw["meta"], source, "meta"))
    return Program(config=config, ops=ops, meta=meta)


def _parse_config(raw: Any, source: str) -> Config:
    if isinstance(raw, dict):
        _check_duplicates(raw, source, None, None, "config.")
    try:
        return Config.from_json(raw)
    except ConfigError as e:
        if e.key == "config":
            raise ProgramError(
                source, None, "config", f"must be an object, got {_json_type(raw)}"
            ) from None
        text = str(e)
        prefix = f"config.{e.key}: "
        raise ProgramError(source, None, f"config.{e.key}", text.removeprefix(prefix)) from None


def _parse_op(raw: Any, index: int, source: str) -> Op:
    if not isinstance(raw, dict):
        raise ProgramError(source, index, None, f"must be an object, got {_json_type(raw)}")
    if "op" not in raw:
        raise ProgramError(source, index, "op", "missing (every op names its kind)")
    kind = raw["op"]
    if not isinstance(kind, str) or kind not in spec.OP_TYPES:
        hint = _did_you_mean(kind, tuple(spec.OP_TYPES)) if isinstance(kind, str) else ""
        raise ProgramError(
            source,
            index,
            "op",
            f"unknown op {_got(kind)}{hint} (known: {', '.join(spec.OP_TYPES)})",
        )
    names = spec.op_fields(kind)
    takes = f"{kind} takes {', '.join(names)}" if names else f"{kind} takes no fields"
    _check_duplicates(raw, source, index, kind, "")
    for key in raw:
        if key != "op" and key not in names:
            raise ProgramError(
                source,
                index,
                str(key),
                f"unknown field{_did_you_mean(key, names)} ({takes})",
                kind=kind,
            )
    values: dict[str, Any] = {}
    for name in names:
        if name not in raw:
            raise ProgramError(source, index, name, f"missing ({takes})", kind=kind)
        problem = _field_problem(spec.FIELD_KINDS[name], raw[name])
        if problem is not None:
            raise ProgramError(source, index, name, problem, kind=kind)
        values[name] = raw[name]
    return cast(Op, spec.OP_TYPES[kind](**values))


def _field_problem(field_kind: str, value: Any) -> str | None:
    """What is wrong with ``value`` for a field of this kind, or None."""
    is_int = isinstance(value, int) and not isinstance(value, bool)
    if field_kind in spec.FIELD_MAX:
        low = 1 if field_kind in ("length", "id") else 0
        high = spec.FIELD_MAX[field_kind]
        if field_kind == "value" or (is_int and value > high):
            if not is_int or not low <= value <= high:
                return (f"must be an integer from {low} to {_bound(high)}{_unit(field_kind)}, "
                        f"got {_got(value)}")
        elif not is_int or value < low:
            return f"must be an integer >= {low}, got {_got(value)}"
    elif field_kind in spec.FIELD_CHOICES:
        choices = spec.FIELD_CHOICES[field_kind]
        if not isinstance(value, str) or value not in choices:
            return f"must be one of {', '.join(choices)}, got {_got(value)}"
    else:  # a field kind added to spec.FIELD_KINDS that this loader does not know yet
        raise AssertionError(f"no validation rule for field kind {field_kind!r}")
    return None


def _unit(field_kind: str) -> str:
    if field_kind in ("addr", "length"):
        return " (pages of 4 KiB: a 64-bit byte address or size)"
    return ""


def _bound(n: int) -> str:
    """``2**64-1`` for a bound that is a power of two minus one, else the number."""
    if n & (n + 1) == 0 and n > 1024:
        return f"2**{n.bit_length()}-1"
    return str(n)


def _check_duplicates(
    obj: dict[str, Any], source: str, index: int | None, kind: str | None, prefix: str
) -> None:
    dups = getattr(obj, "duplicates", ())
    if dups:
        raise ProgramError(
            source, index, f"{prefix}{dups[0]}", "key given more than once", kind=kind
        )


def _plain(value: Any, source: str, where: str, depth: int = 0) -> Any:
    """Plain dicts and lists all the way down (no ``_JsonObject`` in a Program), checked to
    be writable again: no non-finite number (``1e999`` parses as infinity, which JSON cannot
    spell) and no string that is not Unicode text (a lone surrogate escape)."""
    if depth > MAX_JSON_DEPTH:
        raise ProgramError(source, None, where, f"nested more than {MAX_JSON_DEPTH} deep")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            _check_text(k, source, where)
            out[k] = _plain(v, source, f"{where}.{k}", depth + 1)
        return out
    if isinstance(value, list):
        return [_plain(v, source, f"{where}[{i}]", depth + 1) for i, v in enumerate(value)]
    if isinstance(value, float) and not math.isfinite(value):
        raise ProgramError(source, None, where, "number out of range (not a finite number)")
    if isinstance(value, str):
        _check_text(value, source, where)
    return value


def _check_text(text: str, source: str, where: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ProgramError(
            source, None, where, "string is not Unicode text (a lone surrogate escape)"
        ) from None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _got(value: Any) -> str:
    """A value as the JSON file spells it, cut short if long."""
    try:
        text = json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        text = repr(value)
    text = _one_line(text)
    return text if len(text) <= 60 else text[:57] + "..."


def _did_you_mean(word: Any, known: tuple[str, ...]) -> str:
    if not isinstance(word, str):
        return ""
    close = difflib.get_close_matches(word, known, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# --------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------


def config_delta(cfg: Config) -> dict[str, Any]:
    """The config keys that differ from the defaults, geometry always shown (by name if any).

    Compares the raw field values, so ``swap_pages`` left at its default (-1, "4 PUD folios")
    is omitted for every geometry and a dump parses back to an equal Config.
    """
    names = {v: k for k, v in spec.GEOMETRIES.items()}
    default = Config()
    out: dict[str, Any] = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name == "geometry":
            out[f.name] = names.get(value, value)
        elif value != getattr(default, f.name):
            out[f.name] = value
    return out


def program_to_json(p: Program) -> dict[str, Any]:
    """The program as a JSON value (FORMAT.md section 1)."""
    out: dict[str, Any] = {
        "format": spec.PROGRAM_FORMAT,
        "config": config_delta(p.config),
        "ops": [spec.op_to_json(op) for op in p.ops],
    }
    if p.meta:
        out["meta"] = p.meta
    return out


def dump_program(p: Program) -> str:
    """JSON text of a program: indent 2, one op per line, trailing newline."""

    def one(value: Any) -> str:
        return json.dumps(value, ensure_ascii=False)

    data = program_to_json(p)
    lines = ["{", f'  "format": {one(data["format"])},', f'  "config": {one(data["config"])},']
    ops = data["ops"]
    if ops:
        lines.append('  "ops": [')
        lines.extend(f"    {one(op)}{',' if i < len(ops) - 1 else ''}" for i, op in enumerate(ops))
        lines.append("  ]" + ("," if "meta" in data else ""))
    else:
        lines.append('  "ops": []' + ("," if "meta" in data else ""))
    if "meta" in data:
        lines.append(f'  "meta": {one(data["meta"])}')
    lines.append("}")
    return "\n".join(lines) + "\n"
