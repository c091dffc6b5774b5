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


# Real findings for the hub's tests, two distinct bugs of the rejected ``list_head`` deposit
# design (corpus/known_bad/list_head_two_puds.json: list_add() writes lru.prev, which
# aliases pmd_huge_pte of the deposited PMD tables):
# - ``fault``: the invariants see the PUD deposit stack broken at the first PUD THP fault
#   (a read or a write of page 64 of a VMA covering the small geometry's PUD range
#   [64, 128)); ops after it never run, so padding keeps the signature;
# - ``withdraw``: with the invariants off (``meta.invariants`` false, as a campaign without
#   them records) the same corruption is met by munmap's zap_huge_pud, whose withdraw of a
#   deposited PMD table finds a poisoned entry (``ModelBug`` ``withdraw.pmd.poison``); the
#   reads padding it in between touch the PUD leaf only.
FAULT_SIGNATURE = "invariant:deposit.pud_stack.wrong_level"
WITHDRAW_SIGNATURE = "model_bug:munmap:withdraw.pmd.poison"


def real_finding(kind: str, nops: int, **meta: Any) -> tuple[str, str]:
    """(signature, program text) of a finding of ``kind`` (``fault`` or ``withdraw``),
    ``nops`` ops long (at least 2 for a fault, 3 for a withdraw)."""
    ops: list[dict[str, Any]] = [
        {"op": "mmap", "mm": 0, "start": 64, "npages": 192, "prot": "rw"},
        {"op": "write", "mm": 0, "addr": 64, "value": 1}]
    if kind == "fault":
        signature = FAULT_SIGNATURE
        ops += [{"op": "read", "mm": 0, "addr": 65 + i} for i in range(nops - 2)]
    else:
        signature = WITHDRAW_SIGNATURE
        meta = {"invariants": False, **meta}
        ops += [{"op": "read", "mm": 0, "addr": 65 + i} for i in range(nops - 3)]
        ops.append({"op": "munmap", "mm": 0, "start": 64, "npages": 192})
    program = {"format": "pudthp-program/1",
               "config": {"geometry": "small", "deposit": "list_head",
                          "pud_enabled": "always"}, "ops": ops,
               "meta": {"signature": signature, **meta}}
    return signature, json.dumps(program) + "\n"
