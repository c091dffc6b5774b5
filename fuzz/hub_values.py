"""Every value read from the hub, checked before it is used.

Whoever holds the hub's password can write anything under the campaign's keys, so a value
read back is untrusted input, as a file is: it is decoded as UTF-8, bounded in size (a
reply larger than the bound is never parsed; where Redis can say a value's length first,
``HSTRLEN``, it is not even fetched), JSON nested at most ``SMALL_JSON_DEPTH`` deep (checked
on the raw text, before the parser recurses), and of the expected type and range.  A value
that fails is a ``BadValue`` whose ``str()`` is one line; the client says it and passes the
value over (never a traceback, never exit status 1, which means findings).  Text from the
hub printed on a terminal goes through ``escape`` first.

Programs are checked by ``harness.program`` (8 MiB, 64 deep, every field) and replayed
(``fuzz.hub_replay``) before anything trusts them; stats records by ``fuzz.stats``.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from harness.program import json_depth_problem
from pudthp_ref.spec import Config, ConfigError

MAX_SIGNATURE = 512  # characters; the model's are under a hundred
MAX_MACHINE = 256  # characters of a machine's name
MAX_SMALL_JSON = 64 << 10  # bytes of a campaign record, a machine's entry, a stats record
SMALL_JSON_DEPTH = 16
MAX_CORPUS_INPUT = 1 << 20  # bytes; larger corpus files are neither pushed nor pulled
MAX_SEED = 1 << 53  # seed block ends are sorted-set scores, doubles: exact below 2**53
MAX_EPOCH = 64  # characters of a data set's token
ENGINES = ("hypothesis", "atheris")
ESCAPE_LIMIT = 200  # characters of hub text shown in one line

_SHA1 = re.compile(r"[0-9a-f]{40}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BadValue(Exception):
    """A value read from the hub that cannot be used; ``str()`` is one line."""


def text(raw: object, what: str, limit: int) -> str:
    """``raw`` (bytes or str) as text of at most ``limit`` bytes of UTF-8."""
    if isinstance(raw, str):
        data = raw.encode("utf-8", "surrogatepass")
    elif isinstance(raw, bytes):
        data = raw
    else:
        raise BadValue(f"{what}: not a string")
    if len(data) > limit:
        raise BadValue(f"{what}: {len(data)} bytes, over the limit of {limit}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadValue(f"{what}: not UTF-8 (byte {e.start})") from None


def small_json(raw: object, what: str, limit: int = MAX_SMALL_JSON) -> Any:
    """``raw`` parsed as JSON of at most ``limit`` bytes, nested at most
    ``SMALL_JSON_DEPTH`` deep, with no ``NaN`` or ``Infinity``."""
    s = text(raw, what, limit)
    problem = json_depth_problem(s, SMALL_JSON_DEPTH)
    if problem is not None:
        raise BadValue(f"{what}: {problem}")
    try:
        return json.loads(s, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise BadValue(f"{what}: not JSON ({' '.join(str(e).split())})") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def signature(raw: object, what: str = "a signature") -> str:
    """A finding signature: printable text of at most ``MAX_SIGNATURE`` characters."""
    return _printable(raw, what, MAX_SIGNATURE, "a signature")


def machine_name(raw: object, what: str = "a machine name") -> str:
    """A machine's name: printable text of at most ``MAX_MACHINE`` characters."""
    return _printable(raw, what, MAX_MACHINE, "a machine name")


def _printable(raw: object, what: str, most: int, kind: str) -> str:
    s = text(raw, what, most * 4)
    if not s or len(s) > most or not s.isprintable():
        raise BadValue(f"{what} {escape(s)}: not {kind} (printable text of 1 to {most} "
                       "characters)")
    return s


def corpus_hash(raw: object) -> str:
    """A corpus input's name: the SHA-1 of its bytes, 40 lowercase hex digits."""
    s = text(raw, "a corpus hash", 64)
    if not _SHA1.fullmatch(s):
        raise BadValue(f"corpus hash {escape(s)}: not 40 hex digits")
    return s


def epoch(raw: object) -> str:
    """The token naming the hub's data set."""
    s = text(raw, "the hub's data set token", MAX_EPOCH)
    if not s.isprintable():
        raise BadValue(f"the hub's data set token {escape(s)}: not printable")
    return s


def _number(value: object, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadValue(f"{what}: {escape(repr(value))} is not a number")
    if not (math.isfinite(value) and low <= value <= high):
        raise BadValue(f"{what}: {escape(repr(value))} is not a number in [{low:g}, {high:g}]")
    return float(value)


def _integer(value: object, what: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadValue(f"{what}: {escape(repr(value))} is not an integer in [{low}, {high}]")
    return value


def record(raw: object) -> dict[str, Any]:
    """The campaign record: code (64 hex digits), engine, config overrides (valid config
    keys and values), when and by which machine it was created, and a kernel campaign's
    kernel release (a short text, or null)."""
    data = small_json(raw, "the campaign record")
    if not isinstance(data, dict):
        raise BadValue("the campaign record: not a JSON object")
    code = data.get("code")
    if not isinstance(code, str) or not _SHA256.fullmatch(code):
        raise BadValue("the campaign record: its code version is not 64 hex digits")
    engine = data.get("engine")
    if engine not in ENGINES:
        raise BadValue(f"the campaign record: engine {escape(repr(engine))} is not one of "
                       f"{', '.join(ENGINES)}")
    overrides = data.get("overrides")
    if not isinstance(overrides, dict):
        raise BadValue("the campaign record: its config overrides are not an object")
    try:
        Config.from_json(overrides)
    except (ConfigError, TypeError, ValueError) as e:
        raise BadValue(f"the campaign record: config overrides: "
                       f"{escape(' '.join(str(e).split()))}") from None
    created = data.get("created")
    if not isinstance(created, str) or len(created) > 64 or not created.isprintable():
        raise BadValue("the campaign record: its creation time is not a short text")
    by = machine_name(data.get("created_by"), "the campaign record's machine")
    kernel = data.get("kernel")
    if kernel is not None and (not isinstance(kernel, str) or not 0 < len(kernel) <= 64
                               or not kernel.isprintable() or kernel != kernel.strip()):
        raise BadValue("the campaign record: its kernel release is not a short text")
    return {"code": code, "engine": engine, "overrides": dict(overrides),
            "created": created, "created_by": by, "kernel": kernel}


def machine_entry(raw: object, name: str) -> dict[str, Any]:
    """A machine's entry: ``ends`` and ``finished`` (seconds since the epoch or null),
    ``seeds`` ([start, end) or null); what else it holds is passed on as it is."""
    data = small_json(raw, f"machine {escape(name)}'s entry")
    if not isinstance(data, dict):
        raise BadValue(f"machine {escape(name)}'s entry: not a JSON object")
    for key in ("ends", "finished"):
        if data.get(key) is not None:
            data[key] = _number(data[key], f"machine {escape(name)}'s {key}", 0, 1e11)
    seeds = data.get("seeds")
    if seeds is not None:
        if not isinstance(seeds, list) or len(seeds) != 2:
            raise BadValue(f"machine {escape(name)}'s seeds: not [start, end]")
        start = _integer(seeds[0], f"machine {escape(name)}'s seeds", 0, MAX_SEED)
        end = _integer(seeds[1], f"machine {escape(name)}'s seeds", start + 1, MAX_SEED)
        data["seeds"] = [start, end]
    return data


def seed_end(raw: object, what: str) -> int:
    """A seed counter or block end: an integer in [0, ``MAX_SEED``]."""
    if isinstance(raw, float):
        if not raw.is_integer():
            raise BadValue(f"{what}: {raw!r} is not an integer")
        return _integer(int(raw), what, 0, MAX_SEED)
    s = text(raw, what, 32).strip()
    if not s.lstrip("-").isdigit():
        raise BadValue(f"{what}: {escape(s)} is not an integer")
    return _integer(int(s), what, 0, MAX_SEED)


def escape(value: str, limit: int = ESCAPE_LIMIT) -> str:
    """``value`` safe on a terminal, in one line: every character that is not printable
    (control characters, escape sequences, line and paragraph separators, bidirectional
    overrides) as ``\\xHH``, ``\\uHHHH`` or ``\\UHHHHHHHH``, a backslash doubled, and at
    most ``limit`` characters shown."""
    out = []
    for ch in value[:limit]:
        if ch == "\\":
            out.append("\\\\")
        elif ch.isprintable():
            out.append(ch)
        else:
            n = ord(ch)
            out.append(f"\\x{n:02x}" if n < 0x100 else f"\\u{n:04x}" if n < 0x10000
                       else f"\\U{n:08x}")
    more = len(value) - limit
    return "".join(out) + (f"... ({more} more characters)" if more > 0 else "")
