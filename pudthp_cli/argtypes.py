"""The command line's argument types: each kind of value is checked in one place, with the
same words wherever it is used.

Numbers are argparse types (``Number``: an int or a float within bounds, one parametrised
type for every count, seed, port, duration and size), so a bad one is a usage error naming
its option.  Paths are checked when the command runs, in the order it needs them
(``writable_dir``, ``readable_dir``): checking a directory to write to makes it, which must
not happen for a command that stops on another problem first, or for an option a command
does without.  Config overrides (``--config KEY=VALUE``) are read and validated against
MODEL.md section 3 by ``overrides``.
"""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from typing import Any

from pudthp_ref.spec import Config, ConfigError


@dataclass(frozen=True, slots=True)
class Number:
    """An ``int`` or ``float`` argument from ``low`` (``above``: excluded) up to ``high``,
    finite.  ``noun`` names what is wanted ("an integer", "a number" by default) and
    ``bounds`` how its range is said (``>= low`` or ``> low`` by default)."""

    kind: type[int] | type[float]
    low: float
    above: bool = False
    high: float = math.inf
    noun: str = ""
    bounds: str = ""

    def __call__(self, text: str) -> Any:
        noun = self.noun or ("an integer" if self.kind is int else "a number")
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        low_ok = value > self.low if self.above else value >= self.low
        if not (low_ok and value <= self.high and math.isfinite(value)):
            bounds = self.bounds or f"{'>' if self.above else '>='} {self.low:g}"
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun} {bounds}")
        return value


COUNT = Number(int, 1)  # workers, programs, ops
NATURAL = Number(int, 0)  # seeds, MiB (0: no limit)
SECONDS = Number(float, 0, above=True)  # a duration
LIMIT_SECONDS = Number(float, 0)  # a time limit (0: none)
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
