"""``pudthp hub serve`` as a process for the tests: started on a free port, stopped with
SIGTERM."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fuzz.hub_replay import Candidate, static_problem


def start(data: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``pudthp hub serve --port 0``; returns the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pudthp_cli", "hub", "serve", "--port", "0", "--dir", str(data),
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.match(r"pudthp hub: serving (redis://\S+)$", line.strip())
    if m is None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no URL printed: {line!r} {err!r}")
    return proc, m.group(1)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out


class MetaReplayer:
    """A stand-in for ``fuzz.hub_replay.Replayer`` in the tests of the hub's plumbing (the
    programs there are not real findings): a finding "reproduces" when its program's
    ``meta.signature`` is its signature.  The real replay is ``tests/test_hub_trust.py``'s
    subject."""

    def __init__(self) -> None:
        self.done: list[tuple[Candidate, str | None]] = []
        self.started: list[Candidate] = []

    def free(self) -> int:
        return 1

    def running(self) -> set[str]:
        return set()

    def start(self, c: Candidate) -> None:
        self.started.append(c)
        self.done.append((c, static_problem(c)))

    def poll(self) -> list[tuple[Candidate, str | None]]:
        out, self.done = self.done, []
        return out

    def wait(self, seconds: float) -> list[tuple[Candidate, str | None]]:
        return self.poll()

    def close(self) -> None:
        pass


# Real findings for the hub's tests: the rejected ``list_head`` deposit design breaks the
# PUD deposit stack at the first PUD THP fault (corpus/known_bad/list_head_two_puds.json:
# list_add() writes lru.prev, which aliases pmd_huge_pte of the deposited PMD tables), so
# a fault at page 64 of a VMA covering the small geometry's PUD range [64, 128) is a
# finding of the op that faulted; ops after it never run, so padding keeps the signature.
FAULT_SIGNATURE = "invariant:{op}:deposit.pud_stack.wrong_level"


def real_finding(op: str, nops: int, **meta: Any) -> tuple[str, str]:
    """(signature, program text) of a finding at a PUD fault by ``op`` (read or write),
    ``nops`` ops long (at least 2)."""
    signature = FAULT_SIGNATURE.format(op=op)
    fault: dict[str, Any] = {"op": op, "mm": 0, "addr": 64}
    if op == "write":
        fault["value"] = 1
    ops = [{"op": "mmap", "mm": 0, "start": 64, "npages": 192, "prot": "rw"}, fault]
    ops += [{"op": "read", "mm": 0, "addr": 65 + i} for i in range(nops - 2)]
    program = {"format": "pudthp-program/1",
               "config": {"geometry": "small", "deposit": "list_head"}, "ops": ops,
               "meta": {"signature": signature, **meta}}
    return signature, json.dumps(program) + "\n"
