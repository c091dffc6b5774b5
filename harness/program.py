"""Loading, validating and writing programs (FORMAT.md section 1).

Validation is strict and complete before anything runs: every problem becomes one
``ProgramError`` whose ``str()`` is a single line naming the file, the op index (and kind) and
the field.  What a program *means* is not checked here: an address outside the address space,
an mm id that never existed or a node the config does not have are legal programs whose ops
return an errno at run time.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import fields
from typing import Any, cast

from pudthp_ref import spec
from pudthp_ref.spec import Config, ConfigError, Op, Program, PudThpError

TOP_LEVEL_KEYS: tuple[str, ...] = ("format", "config", "ops", "meta")
REQUIRED_TOP_LEVEL_KEYS: tuple[str, ...] = ("format", "config", "ops")


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
    """Read and validate a program file; raises ProgramError (one line) for any problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ProgramError(path, None, None, f"cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise ProgramError(
            path, None, None, f"cannot read: not UTF-8 text (byte {e.start})"
        ) from None
    return parse_program_text(text, path)


def parse_program_text(text: str, source: str) -> Program:
    """Parse JSON text and validate it as a program; ``source`` names it in errors."""
    try:
        raw = json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_reject_constant)
    except json.JSONDecodeError as e:
        raise ProgramError(
            source, None, None, f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}"
        ) from None
    except RecursionError:
        raise ProgramError(source, None, None, "invalid JSON: nested too deeply") from None
    except ValueError as e:  # _BadConstant, or an integer literal with too many digits
        raise ProgramError(source, None, None, f"invalid JSON: {e}") from None
    return parse_program(raw, source)


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
        meta = cast(dict[str, Any], _plain(raw["meta"]))
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
    if field_kind in ("index", "addr"):
        if not is_int or value < 0:
            return f"must be an integer >= 0, got {_got(value)}"
    elif field_kind in ("length", "id"):
        if not is_int or value < 1:
            return f"must be an integer >= 1, got {_got(value)}"
    elif field_kind == "value":
        if not is_int or not 0 <= value <= spec.MAX_VALUE:
            return f"must be an integer from 0 to 2**64-1, got {_got(value)}"
    elif field_kind in spec.FIELD_CHOICES:
        choices = spec.FIELD_CHOICES[field_kind]
        if not isinstance(value, str) or value not in choices:
            return f"must be one of {', '.join(choices)}, got {_got(value)}"
    else:  # a field kind added to spec.FIELD_KINDS that this loader does not know yet
        raise AssertionError(f"no validation rule for field kind {field_kind!r}")
    return None


def _check_duplicates(
    obj: dict[str, Any], source: str, index: int | None, kind: str | None, prefix: str
) -> None:
    dups = getattr(obj, "duplicates", ())
    if dups:
        raise ProgramError(
            source, index, f"{prefix}{dups[0]}", "key given more than once", kind=kind
        )


def _plain(value: Any) -> Any:
    """Plain dicts and lists all the way down (no ``_JsonObject`` in a Program)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


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
