"""Findings read from the hub: nothing is trusted before it is replayed here.

``Intake`` is the reading side of ``fuzz.hub.Hub``: it follows the hub's findings log (the
signature of every program the hub stored, in order) from where it left off, a bounded
number of entries per call, asks which have a program behind them with one ``EXISTS`` per
``PULL_BATCH`` of signatures that have none (so a log of bare signatures costs little,
and nothing grows with the size of the hub's signature set, which it never reads), and has
each program it wants replayed (``fuzz.hub_replay``).  A finding that reports its own
signature is written to the local findings directory (``fuzz.archive``, never over a
file); one that does not is said once, naming the machine that pushed it, and its
(signature, program digest) is never tried again.  When this machine's push of a
signature met a shorter program on the hub (``disputed``), that program is replayed too,
and replaced by this machine's if it does not reproduce.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from collections.abc import Container
from typing import TYPE_CHECKING, Protocol

from fuzz import hub_values as hv
from fuzz.archive import archive, finding_path
from fuzz.hub_replay import Candidate, Replayer
from fuzz.hub_values import BadValue

if TYPE_CHECKING:
    from fuzz.hub import Hub

PULL_BATCH = 500
LOG_PER_CALL = 2_000  # log entries a campaign's pull reads per call
MAX_WAITING = 5_000  # signatures read from the log and not yet looked at


class ReplayerLike(Protocol):
    """What the intake needs of ``fuzz.hub_replay.Replayer`` (tests give their own)."""

    def free(self) -> int: ...
    def running(self) -> set[str]: ...
    def start(self, c: Candidate) -> None: ...
    def poll(self) -> list[tuple[Candidate, str | None]]: ...
    def wait(self, seconds: float) -> list[tuple[Candidate, str | None]]: ...
    def close(self) -> None: ...


class Intake:
    """See the module docstring; ``replayer`` default ``fuzz.hub_replay.Replayer``."""

    def __init__(self, hub: Hub, replayer: ReplayerLike | None = None) -> None:
        self.hub = hub
        self.log_offset = 0  # entries of the findings log read
        self.waiting: OrderedDict[str, None] = OrderedDict()  # read from the log, in order
        self.rejected: set[tuple[str, str]] = set()  # (signature, digest) not reproducing
        self.trusted: set[tuple[str, str]] = set()  # ... reproducing
        self.disputed: dict[str, str] = {}  # signature -> this machine's longer text
        self._write_failed = False
        self._replayer = replayer

    @property
    def replayer(self) -> ReplayerLike:
        if self._replayer is None:
            self._replayer = Replayer()
        return self._replayer

    def reset(self) -> None:
        """The hub holds a new data set: read its log from the start."""
        self.log_offset = 0
        self.waiting.clear()

    def close(self) -> None:
        if self._replayer is not None:
            self._replayer.close()

    def candidate(self, signature: str) -> Candidate | None:
        """The hub's finding of ``signature`` with the machine that pushed it."""
        key = self.hub.finding_key(signature)

        def get() -> Candidate | None:
            text = self.hub.hub_text(self.hub.r, key)
            if text is None:
                return None
            try:  # shown escaped: a hostile name is named as it is
                machine = hv.text(self.hub.r.hget(key, "machine"), "a machine name",
                                  hv.MAX_MACHINE * 4) or "(unnamed)"
            except BadValue:
                machine = "(unnamed)"
            return Candidate(signature, text, machine)

        return self.hub.call(get, None)

    def read_log(self, limit: int | None) -> None:
        """Append to ``waiting`` the signatures the findings log gained since the last
        read: at most ``limit`` entries (None: all), and none while ``MAX_WAITING`` wait."""
        read = 0

        def more() -> None:
            nonlocal read
            key = self.hub.key("findings_log")
            if self.hub.r.llen(key) < self.log_offset:  # the log was emptied: read it afresh
                self.log_offset = 0
            while len(self.waiting) < MAX_WAITING and (limit is None or read < limit):
                got = self.hub.r.lrange(key, self.log_offset, self.log_offset + PULL_BATCH - 1)
                if not got:
                    return
                self.log_offset += len(got)
                read += len(got)
                for raw in got:
                    try:
                        self.waiting[hv.signature(raw, "a findings log entry")] = None
                    except BadValue as e:
                        self.hub.bad(str(e))

        self.hub.call(more, None)

    def pull(self, directory: str, have: Container[str] = (),
                      wait: float | None = 300.0) -> list[str]:
        """Copy into ``directory`` the hub's findings whose signature is neither in
        ``have`` nor archived there, each replayed first (see the module docstring);
        returns the paths written.  ``wait`` None: read at most ``LOG_PER_CALL`` log
        entries, start at most one replay and collect those done, without waiting (a
        campaign's loop); else read the whole log and wait up to ``wait`` seconds for the
        replays.  A directory that cannot be written is said (once until it can) and the
        rest left for the next call."""
        self._write_failed = False
        written: list[str] = []
        end = self.hub.clock() + (wait or 0.0)
        self.read_log(LOG_PER_CALL)
        while True:
            self._start_replays(directory, have, written, 1 if wait is None else None)
            results = self.replayer.poll() if wait is None else self.replayer.wait(
                max(0.0, min(1.0, end - self.hub.clock())))
            for c, problem in results:
                self._replayed(c, problem, directory, written)
            if wait is None or self._write_failed or self.hub.clock() >= end or not self.hub.up:
                break
            if not self.waiting:
                self.read_log(LOG_PER_CALL)
            if not (self.replayer.running() or self.waiting or self.disputed):
                break
        if not self._write_failed:
            self.hub.write_problems.pop(directory, None)
        return written

    def _start_replays(self, directory: str, have: Container[str], written: list[str],
                       most: int | None) -> None:
        """Start replays while the replayer has room (at most ``most``): first of the
        hub's shorter programs this machine's push did not replace, then of the
        findings read from the log that this machine lacks."""
        started = 0
        for c in self._disputes() + self._new_candidates(directory, have):
            if self._write_failed or (most is not None and started >= most):
                return
            if (c.signature, c.digest) in self.trusted:
                self._replayed(c, None, directory, written)
            elif (c.signature, c.digest) in self.rejected:
                if c.signature in self.disputed:
                    self.replace(c)
            elif self.replayer.free() > 0:
                self.replayer.start(c)
                started += 1
            else:
                self.waiting[c.signature] = None  # the next time
                self.waiting.move_to_end(c.signature, last=False)

    def _disputes(self) -> list[Candidate]:
        out = []
        running = self.replayer.running()
        for sig in list(self.disputed):
            if sig in running:
                continue
            c = self.candidate(sig)
            if c is None:
                del self.disputed[sig]
            else:
                out.append(c)
        return out

    def _new_candidates(self, directory: str, have: Container[str]) -> list[Candidate]:
        """The findings of the waiting signatures this machine wants, as many as the
        replayer can start.  Which signatures have a program behind them is asked in
        groups (``present``), so a log full of signatures with none costs one command per
        ``PULL_BATCH`` of them."""
        out: list[Candidate] = []
        running = self.replayer.running()
        while self.waiting and len(out) < max(1, self.replayer.free()):
            batch: list[str] = []
            while self.waiting and len(batch) < PULL_BATCH:
                sig = next(iter(self.waiting))
                del self.waiting[sig]
                if sig not in have and sig not in running:
                    batch.append(sig)
            if not batch:
                continue
            found = self.hub.call(lambda b=batch: self._present(b), None)  # type: ignore[misc]
            if found is None:  # unreachable: read again next time
                self._back(batch)
                return out
            present = [sig for sig in found if not os.path.exists(finding_path(directory, sig))]
            for i, sig in enumerate(present):
                if len(out) >= max(1, self.replayer.free()):
                    self._back(present[i:])
                    break
                c = self.candidate(sig)
                if c is not None:
                    out.append(c)
        return out

    def _back(self, sigs: list[str]) -> None:
        """Put ``sigs`` back at the head of the waiting signatures, in order."""
        for sig in reversed(sigs):
            self.waiting[sig] = None
            self.waiting.move_to_end(sig, last=False)

    def _present(self, sigs: list[str]) -> list[str]:
        """Those of ``sigs`` (distinct) whose finding key exists, in order: ``EXISTS`` of
        the whole group, then of halves of groups that hold some but not all (a group of
        none costs one command whatever its size)."""
        keys = [self.hub.finding_key(s) for s in sigs]
        found = [False] * len(sigs)
        groups = [(0, len(sigs))]
        while groups:
            lo, hi = groups.pop()
            n = int(self.hub.r.exists(*keys[lo:hi]))
            if n == hi - lo:
                found[lo:hi] = [True] * (hi - lo)
            elif n and hi - lo > 1:
                mid = (lo + hi) // 2
                groups += [(mid, hi), (lo, mid)]
        return [s for s, f in zip(sigs, found, strict=True) if f]

    def _replayed(self, c: Candidate, problem: str | None, directory: str,
                  written: list[str]) -> None:
        """What a replay decided: a finding that reproduces is written (unless this
        machine has the signature); one that does not is said once and never used."""
        key = (c.signature, c.digest)
        if problem is not None:
            if key not in self.rejected:
                self.rejected.add(key)
                self.hub.say(f"hub finding {hv.escape(c.signature)} pushed by machine "
                         f"{hv.escape(c.machine)} does not reproduce here ({hv.escape(problem)}"
                         "); ignored")
            if c.signature in self.disputed:
                self.replace(c)
            return
        self.trusted.add(key)
        self.disputed.pop(c.signature, None)
        if os.path.exists(finding_path(directory, c.signature)):
            return
        try:
            os.makedirs(directory, exist_ok=True)
            path, new = archive(directory, c.signature, c.text)
        except OSError as e:  # a full disk: the rest next time
            self.waiting[c.signature] = None
            self._write_failed = True
            self.hub.cannot_write(directory, e)
            return
        if new:
            written.append(path)

    def replace(self, bad: Candidate) -> None:
        """Put this machine's program in place of a shorter one that does not reproduce."""
        mine = self.disputed.pop(bad.signature)
        if self.hub.call(lambda: self.hub.store_finding(bad.signature, mine, replacing=bad.digest),
                      False):
            self.hub.say(f"hub finding {hv.escape(bad.signature)}: replaced the program of "
                     f"machine {hv.escape(bad.machine)}, which does not reproduce, with this "
                     "machine's")

