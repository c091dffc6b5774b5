"""Campaign statistics: one JSON line per interval and machine (``pudthp fuzz --stats``).

A line (format ``pudthp-stats/1``)::

    {"format": "pudthp-stats/1", "time": 1767312000.25, "elapsed": 10.0,
     "campaign": "main", "machine": "lab-1:4242", "engine": "atheris", "programs": 5210,
     "unit": "execs", "count": 5210, "rate": 512.3,
     "cov": 1480, "ft": 3021,
     "features_hit": 37, "features_digest": "9f2c...", "features_new": ["pud.split", ...],
     "corpus": 211, "findings": 1}

``time`` is seconds since the epoch, ``elapsed`` since the writer started; ``campaign`` the
campaign's name (``--campaign``; a record without one, written before campaigns were
named in the stats, is read as of ``DEFAULT_CAMPAIGN``), so two campaigns whose machines
have the same names stay apart; ``count`` is
steps (engine hypothesis, ``unit`` ``steps``), executions (atheris, ``execs``), or, in a
kernel campaign of either engine, the ops run on the kernel (``ops``), ``rate``
its increase per second since the previous line (since the start for the first);
``cov``/``ft`` are libFuzzer's coverage and features (null for Hypothesis); the model-state
features are given to the writer as feature -> hits: ``features_hit`` is how many were hit
at least once so far, ``features_digest`` the SHA-256 of their sorted names (one line per
name), ``features_new`` the names hit for the first time since the previous line (so the
whole set is the union over a machine's lines); ``corpus`` the corpus size (null when the
engine has none); ``findings`` distinct findings so far.

The writer appends and flushes every line, so a campaign that is killed leaves whole lines
and at most one cut short at the end, which it removes when it opens the file again and the
reader passes over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TextIO

FORMAT = "pudthp-stats/1"
DEFAULT_CAMPAIGN = "main"  # the hub's default campaign name too
UNITS = ("steps", "execs", "ops")
INTERVAL_SECONDS = 5.0


class StatsError(Exception):
    """A stats file that cannot be read; ``str()`` is one line naming the file (and line)."""


@dataclass(frozen=True, slots=True)
class Sample:
    """What an engine knows at one moment (the writer adds time, rate and the digest)."""

    programs: int
    count: int
    findings: int
    corpus: int | None = None
    cov: int | None = None
    ft: int | None = None
    features: Mapping[str, int] | None = None  # model-state feature -> hits so far


class StatsWriter:
    """Appends one line per ``write``; the file is opened once and flushed per line.  With
    ``path`` None it writes no file and only builds the records (a hub's stats stream)."""

    def __init__(self, path: str | None, machine: str, engine: str, unit: str | None = None,
                 clock: Any = time.time, campaign: str = DEFAULT_CAMPAIGN) -> None:
        self.path = path
        self.campaign = campaign
        self.machine = machine
        self.engine = engine
        self.unit = unit or ("execs" if engine == "atheris" else "steps")
        if self.unit not in UNITS:
            raise ValueError(f"unit {self.unit!r} is not one of {UNITS}")
        self.clock = clock
        self.start = clock()
        self.last_time = self.start
        self.last_count = 0
        self.hit: set[str] = set()
        self.f: TextIO | None = None
        if path is not None:
            _drop_cut_line(path)
            self.f = open(path, "a", encoding="utf-8")  # noqa: SIM115 -- kept open

    def record(self, s: Sample, now: float | None = None) -> dict[str, Any]:
        """The line for sample ``s`` (and remember it as the previous one)."""
        t = self.clock() if now is None else now
        dt = t - self.last_time
        rate = (s.count - self.last_count) / dt if dt > 0 else 0.0
        new: list[str] = []
        if s.features is not None:
            new = sorted(k for k, v in s.features.items() if v > 0 and k not in self.hit)
            self.hit.update(new)
        line: dict[str, Any] = {
            "format": FORMAT,
            "time": round(t, 3),
            "elapsed": round(t - self.start, 3),
            "campaign": self.campaign,
            "machine": self.machine,
            "engine": self.engine,
            "programs": s.programs,
            "unit": self.unit,
            "count": s.count,
            "rate": round(rate, 3),
            "cov": s.cov,
            "ft": s.ft,
            "features_hit": len(self.hit) if s.features is not None else None,
            "features_digest": features_digest(self.hit) if s.features is not None else None,
            "features_new": new,
            "corpus": s.corpus,
            "findings": s.findings,
        }
        self.last_time, self.last_count = t, s.count
        return line

    def write(self, s: Sample, now: float | None = None) -> dict[str, Any]:
        """Append the line for ``s`` and flush it; returns the record written."""
        line = self.record(s, now)
        self.append(line)
        return line

    def append(self, line: Mapping[str, Any]) -> None:
        """Append a record built by ``record`` to the file (if any) and flush it."""
        if self.f is not None:
            self.f.write(json.dumps(line, sort_keys=True) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()

    def __enter__(self) -> StatsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def features_digest(names: set[str] | frozenset[str]) -> str:
    """SHA-256 of the sorted feature names, one per line."""
    return hashlib.sha256("".join(f"{n}\n" for n in sorted(names)).encode()).hexdigest()


def _drop_cut_line(path: str) -> None:
    """Cut a last line left without its newline by a killed writer (it is not JSON)."""
    try:
        with open(path, "rb+") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0:
                return
            f.seek(size - 1)
            if f.read(1) == b"\n":
                return
            back = min(size, 1 << 16)
            f.seek(size - back)
            tail = f.read(back)
            cut = tail.rfind(b"\n")
            f.truncate(size - back + cut + 1 if cut >= 0 else 0)
    except FileNotFoundError:
        return


_REQUIRED: dict[str, tuple[type, ...]] = {
    "time": (int, float),
    "machine": (str,),
    "engine": (str,),
    "programs": (int,),
    "unit": (str,),
    "count": (int,),
    "rate": (int, float),
    "findings": (int,),
}
_OPTIONAL_INT = ("cov", "ft", "features_hit", "corpus")
# What a record may hold, so a hostile or broken file (or hub stats stream) cannot make
# the report slow or fail: times up to the year 9999 (what a date can show), counts below
# 2**63, rates below 1e15 per second, short printable names, at most a few hundred feature
# names.  A line longer than MAX_LINE_BYTES or nested deeper than MAX_DEPTH is never parsed.
MAX_TIME = 253402300799.0
MAX_COUNT = (1 << 63) - 1
MAX_RATE = 1e15
MAX_NAME = 256
MAX_FEATURES_NEW = 1000
MAX_LINE_BYTES = 1 << 20
MAX_DEPTH = 8


def read_stats(path: str) -> list[dict[str, Any]]:
    """Every record of a stats file, checked.  A last line without its newline that is not
    JSON (a killed writer) is passed over; any other bad line, an unreadable file or one
    with no record is a ``StatsError``."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise StatsError(f"{path}: cannot read: {e.strerror or e}") from None
    lines = data.split(b"\n")
    cut = lines.pop() if lines else b""  # after the last newline: empty, or cut short
    records: list[dict[str, Any]] = []
    for n, raw in enumerate(lines, 1):
        if raw.strip():
            records.append(_record(path, n, raw))
    if cut.strip():
        with contextlib.suppress(StatsError):  # a line the writer did not finish
            records.append(_record(path, len(lines) + 1, cut))
    if not records:
        raise StatsError(f"{path}: no stats records (an empty file)")
    return records


def parse_record(raw: bytes) -> dict[str, Any] | str:
    """One stats line parsed and checked: the record, or what is wrong with it."""
    from harness.program import json_depth_problem

    if len(raw) > MAX_LINE_BYTES:
        return f"a line of {len(raw)} bytes, over the limit of {MAX_LINE_BYTES}"
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"not a JSON line (not UTF-8 at byte {e.start})"
    problem = json_depth_problem(text, MAX_DEPTH)
    if problem is not None:
        return f"not a stats record ({problem})"
    try:
        rec = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        return f"not a JSON line ({' '.join(str(e).split())})"
    problem = stats_problem(rec)
    return rec if problem is None else problem


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _record(path: str, n: int, raw: bytes) -> dict[str, Any]:
    rec = parse_record(raw)
    if isinstance(rec, str):
        raise StatsError(f"{path}:{n}: {rec}")
    return rec


def stats_problem(rec: object) -> str | None:
    """None when ``rec`` is a stats record a reader can use, else what is wrong (one
    line, no value longer than a few dozen characters quoted)."""
    if not isinstance(rec, dict):
        return "not a stats record (a JSON object is expected)"
    if rec.get("format") != FORMAT:
        return (f"not a stats record (format {_short(rec.get('format'))}, expected "
                f"{FORMAT!r})")
    for key, types in _REQUIRED.items():
        value = rec.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            return (f"field {key!r} is {_short(value)}, expected "
                    f"{' or '.join(t.__name__ for t in types)}")
    for key in ("time", "rate"):
        if isinstance(rec[key], float) and not math.isfinite(rec[key]):
            return "time and rate must be finite numbers"
    if not 0 <= rec["time"] <= MAX_TIME:
        return f"field 'time' is {_short(rec['time'])}, not a time up to the year 9999"
    if not 0 <= rec["rate"] <= MAX_RATE:
        return f"field 'rate' is {_short(rec['rate'])}, not a rate in [0, {MAX_RATE:g}]"
    elapsed = rec.get("elapsed")
    if elapsed is not None and (isinstance(elapsed, bool) or not isinstance(elapsed, int | float)
                                or not (math.isfinite(elapsed) and 0 <= elapsed <= MAX_TIME)):
        return f"field 'elapsed' is {_short(elapsed)}, not a number of seconds"
    for key in ("programs", "count", "findings"):
        if not 0 <= rec[key] <= MAX_COUNT:
            return f"field {key!r} is {_short(rec[key])}, not a count below 2**63"
    for key in _OPTIONAL_INT:
        value = rec.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                  or not 0 <= value <= MAX_COUNT):
            return f"field {key!r} is {_short(value)}, expected a count below 2**63 or null"
    for key in ("machine", "engine"):
        if not 0 < len(rec[key]) <= MAX_NAME or not rec[key].isprintable():
            return f"field {key!r} is not a printable name of 1 to {MAX_NAME} characters"
    campaign = rec.get("campaign", DEFAULT_CAMPAIGN)
    if not isinstance(campaign, str) or not 0 < len(campaign) <= MAX_NAME \
            or not campaign.isprintable():
        return f"field 'campaign' is not a printable name of 1 to {MAX_NAME} characters"
    if rec["unit"] not in UNITS:
        return f"field 'unit' is {_short(rec['unit'])}, expected one of {', '.join(UNITS)}"
    new = rec.get("features_new", [])
    if not isinstance(new, list) or len(new) > MAX_FEATURES_NEW or not all(
            isinstance(f, str) and 0 < len(f) <= MAX_NAME for f in new):
        return "field 'features_new' is not a list of feature names"
    return None


def campaign_of(rec: Mapping[str, Any]) -> str:
    """The campaign of a checked record (``DEFAULT_CAMPAIGN`` for one that names none)."""
    return str(rec.get("campaign", DEFAULT_CAMPAIGN))


def _short(value: object) -> str:
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."
