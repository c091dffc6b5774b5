"""The command line's argument types: each kind of value is checked in one place, with the
same words wherever it is used.

Numbers are argparse types (``Number``: an int or a float within bounds, one parametrised
type for every count, seed, port, duration and size), so a bad one is a usage error naming
its option.  Paths are checked when the command runs, before any work and in the order it
needs them (``writable_dir``, ``output_file``, ``readable_dir``): checking a directory to
write to makes it, which must not happen for a command that stops on another problem first,
or for an option a command does without.  A memory limit is also checked against what the
process takes with the models loaded (``memory_floor``).  Config overrides (``--config
KEY=VALUE``) are read and validated against MODEL.md section 3 by ``overrides``.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass, replace
from typing import Any

from harness.limits import MIN_RSS_MB, rss_mb
from harness.runner import IMPL_FACTORIES
from pudthp_ref.spec import Config, ConfigError

MAX_SECONDS = 1e8  # about three years: more than any run, less than a timer can hold
MIN_PROGRAM_SECONDS = 0.1  # a shorter cap per program would cut every program short
MAX_RSS_MB = 1 << 40  # MiB: an exbibyte; RLIMIT_DATA is set in bytes (below 2**63)


@dataclass(frozen=True, slots=True)
class Number:
    """An ``int`` or ``float`` argument from ``low`` (``above``: excluded) up to ``high``,
    finite.  ``noun`` names what is wanted ("an integer", "a number" by default) and
    ``bounds`` how its range is said (``>= low`` or ``> low`` by default).  With ``over``,
    a value above ``high`` is said so (``'X' over``) rather than out of the range; with
    ``under``, a value other than 0 below ``least`` likewise (0 stays "none")."""

    kind: type[int] | type[float]
    low: float
    above: bool = False
    high: float = math.inf
    noun: str = ""
    bounds: str = ""
    over: str = ""
    least: float = 0
    under: str = ""

    def __call__(self, text: str) -> Any:
        noun = self.noun or ("an integer" if self.kind is int else "a number")
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        low_ok = value > self.low if self.above else value >= self.low
        high_ok = value <= self.high or bool(self.over)
        if not (low_ok and high_ok and math.isfinite(value)):
            bounds = self.bounds or f"{'>' if self.above else '>='} {self.low:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun} {bounds}")
        if value and value < self.least:
            raise argparse.ArgumentTypeError(f"{text!r} {self.under}")
        if value > self.high:
            raise argparse.ArgumentTypeError(f"{text!r} {self.over}")
        return value


COUNT = Number(int, 1)  # workers, programs, ops
NATURAL = Number(int, 0)  # seeds
SECONDS = Number(float, 0, above=True, high=MAX_SECONDS,  # a duration
                 over=f"is over {MAX_SECONDS:g} seconds")
LIMIT_SECONDS = Number(float, 0, high=MAX_SECONDS,  # a time limit (0: none)
                       over=f"is over {MAX_SECONDS:g} seconds (0: no limit)")
PROGRAM_SECONDS = replace(  # the time cap of one program
    SECONDS, least=MIN_PROGRAM_SECONDS,
    under=f"is under {MIN_PROGRAM_SECONDS:g} s: no program could finish")
MIB = Number(  # a memory limit (0: none), at least what a process with the models takes
    int, 0, high=MAX_RSS_MB, over=f"is over {MAX_RSS_MB} MiB (0: no limit)",
    least=MIN_RSS_MB,
    under=f"is under {MIN_RSS_MB} MiB, less than the process itself takes (0: no limit)")
PORT = Number(int, 0, high=65535, noun="a port number", bounds="(0-65535)")


def writable_dir(flag: str, path: str, purpose: str = "write there") -> str | None:
    """Make directory ``path`` (given by ``flag``) if it is missing; the one-line problem
    if that fails or it cannot be written (a test file, so a full disk counts too)."""
    from fuzz.archive import writable_problem  # its hashing and temporary files: not run's

    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        return f"{flag} {path}: {e.strerror or e}"
    problem = writable_problem(path)
    return None if problem is None else f"{flag} {path}: cannot {purpose}: {problem}"


def output_file(flag: str, path: str, make_parent: bool = False) -> str | None:
    """The one-line problem with writing file ``path`` (given by ``flag``), found before
    any work: an empty name, a directory, a missing directory (made with
    ``make_parent``), or one that cannot be written now (a test file is written there, so
    a read-only or full file system counts)."""
    from fuzz.archive import writable_problem  # its hashing and temporary files: not run's

    if not path:
        return f"{flag}: an empty file name"
    if os.path.isdir(path):
        return f"{flag} {path}: is a directory"
    parent = os.path.dirname(os.path.abspath(path))
    if make_parent:
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as e:
            return f"{flag} {path}: {e.strerror or e}"
    if not os.path.isdir(parent):
        return f"{flag} {path}: no such directory {parent}"
    problem = writable_problem(parent)
    if problem is None and os.path.exists(path) and not os.access(path, os.W_OK):
        problem = "the file is not writable"
    return None if problem is None else f"{flag} {path}: cannot write there: {problem}"


def memory_floor(max_rss: int, impl: str) -> str | None:
    """The problem with a ``--max-rss`` this process already takes with ``impl``'s models
    imported (a worker or a run would stop before its first op); imports them."""
    IMPL_FACTORIES[impl]()  # imported before any limit: numpy's reservations are not a run's
    now = rss_mb()
    if max_rss and max_rss <= now:
        return (f"--max-rss {max_rss}: this process takes {now} MiB with the models loaded, "
                "before running anything; give more (0: no limit)")
    return None


def readable_dir(flag: str, path: str) -> str | None:
    """The one-line problem with directory ``path`` (given by ``flag``) to read from."""
    return None if os.path.isdir(path) else f"{flag} {path}: not a directory"


def config_value(text: str) -> Any:
    """A --config value as the JSON it stands for: true/false, an integer, or a string."""
    if text in ("true", "false"):
        return text == "true"
    try:
        return int(text)
    except ValueError:
        return text


def overrides(items: list[str], command: str) -> dict[str, Any] | str:
    """--config KEY=VALUE items as config overrides, or the one-line problem."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            return f"--config {item!r}: expected KEY=VALUE (see 'pudthp {command} --help')"
        out[key.strip()] = config_value(value.strip())
    try:
        Config.from_json(out)
    except ConfigError as e:
        return f"--config: {e}"
    return out
