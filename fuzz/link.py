"""A campaign's parent and the outside: the hub (``--hub``) and the stats file (``--stats``).

Both engines' parents hold one ``CampaignLink`` and call it from their loops; the workers
never see it (the Hypothesis workers open the shared example database themselves).  What
it does, on the hub (``fuzz.hub.Hub``):

- at the start: join the campaign (a hub running other model code refuses this machine:
  ``LinkError``, the campaign does not start), take a block of seeds no other machine gets
  (unless the hub cannot be reached: then the local seed, said once), copy the hub's
  findings into the local findings directory, and with a corpus exchange it both ways;
- every ``SYNC_SECONDS``: push the findings this campaign archived (or met again) since the
  last time, copy in what other machines found once a replay here reproduced it (the
  engine is told the new signatures, so its workers stop shrinking them; replays run in
  the background, and the start and the end wait for them), exchange new corpus files; a
  hub that lost its data (restarted empty) is offered every local finding again;
- every ``fuzz.stats.INTERVAL_SECONDS``: one stats record, appended to ``--stats`` and to
  the hub's stats stream;
- at the end: a last stats record, a last exchange, and queued items pushed if the hub is
  back.

A hub that cannot be reached is said in one line by the client, which queues what it could
not push and tries again every ``fuzz.hub.RETRY_SECONDS``; local files are always written
first, so a hub lost mid-campaign loses nothing of this machine's.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fuzz.archive import archived_signatures
from fuzz.hub import DEFAULT_CAMPAIGN, SEED_BLOCK, Hub, HubError, HubRefused
from fuzz.hub_values import escape
from fuzz.stats import INTERVAL_SECONDS, Sample, StatsWriter
from harness.coverage import NAMES, Tally
from harness.program import ProgramError, load_program_file
from harness.signature import of_meta

SYNC_SECONDS = 2.0
LINGER_SECONDS = 60.0  # at most this long, a campaign waits at its end for its peers
REPLAY_WAIT_SECONDS = 120.0  # at the start and the end, for the replays of hub findings


class LinkError(Exception):
    """The campaign cannot start: a bad hub URL or password, a refusing hub, a stats file
    that cannot be written.  ``str()`` is one line."""


@dataclass
class LinkOptions:
    hub: str | None = None
    stats: str | None = None
    campaign: str = DEFAULT_CAMPAIGN
    machine: str | None = None


@dataclass
class CampaignLink:
    """See the module docstring.  ``say`` prints one line for the user."""

    findings_dir: str
    corpus_dir: str | None
    say: Callable[[str], None]
    hub: Hub | None = None
    stats: StatsWriter | None = None  # builds the records; writes --stats (its path) if given
    pushed: set[str] = field(default_factory=set)  # signatures offered to the hub
    local: set[str] = field(default_factory=set)  # signatures archived locally
    to_push: dict[str, str] = field(default_factory=dict)  # signature -> archived file
    pulled: list[tuple[str, str]] = field(default_factory=list)  # (signature, path)
    corpus_in: int = 0  # files other machines added to the local corpus
    corpus_out: int = 0  # local files the hub did not have
    next_sync: float = 0.0
    next_stats: float = 0.0
    ends: float = 0.0  # when this campaign means to end (seconds since the epoch)
    generation: int = 0  # the hub's data sets this link has offered its findings to
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def open(cls, o: LinkOptions, engine: str, findings_dir: str, corpus_dir: str | None,
             say: Callable[[str], None], unit: str | None = None) -> CampaignLink:
        """Connect to the hub (if any) and open the stats file (if any; ``unit``: what its
        counts count, the engine's default unless given: ``ops`` in a kernel campaign)."""
        link = cls(findings_dir, corpus_dir, say)
        if o.hub is not None:
            try:
                link.hub = Hub.connect(o.hub, machine=o.machine, campaign=o.campaign, say=say)
            except HubError as e:
                raise LinkError(f"--hub: {e}") from None
        machine = link.hub.machine if link.hub is not None else (o.machine or _machine())
        if o.stats is not None or link.hub is not None:
            try:
                if o.stats is not None:
                    Path(o.stats).parent.mkdir(parents=True, exist_ok=True)
                link.stats = StatsWriter(o.stats, machine, engine, unit,
                                         campaign=o.campaign)
            except OSError as e:
                link.close()
                raise LinkError(f"--stats {o.stats}: {e.strerror or e}") from None
        return link

    # -- the start -------------------------------------------------------------------------

    def start(self, engine: str, overrides: dict[str, Any], seed: int | None,
              fallback: int, time_limit: float = 0.0, kernel: str | None = None,
              mix_kernels: bool = False) -> int:
        """Join the hub's campaign and return the campaign's seed: ``seed`` if the user gave
        one, else the start of the hub's seed block (``fallback`` without a hub or when it
        cannot be reached).  Then the first exchange of findings and corpus.  The hub is
        told when the campaign means to end (in ``time_limit`` seconds), and a kernel
        campaign's kernel release (``kernel``; a hub campaign of another kernel refuses it
        unless ``mix_kernels``, ``Hub.join``)."""
        self.ends = self.clock() + time_limit
        if self.hub is None:
            return fallback if seed is None else seed
        self.local = set(archived_signatures(self.findings_dir))
        try:
            record = self.hub.join(engine, overrides, kernel=kernel, mix_kernels=mix_kernels)
        except HubRefused as e:
            self.close()
            raise LinkError(str(e)) from None
        if record is not None and record.overrides != overrides:
            self.say(f"note: the hub's campaign {self.hub.campaign!r} was started with "
                     f"config {escape(str(record.overrides or 'drawn'))} by "
                     f"{escape(record.created_by)}; this machine runs {overrides or 'drawn'}")
        if seed is not None:
            self.say(f"seed {seed} given: the hub's seed blocks are not used (keep it apart "
                     "from the other machines' seeds yourself)")
        else:
            block = self.hub.seed_block(SEED_BLOCK, fallback=None)
            if block is None:
                self.say(f"seeds: the hub cannot be reached, local seed {fallback} used "
                         "(it may overlap another machine's)")
                seed = fallback
            else:
                seed = block
                self.say(f"seeds {block}..{block + SEED_BLOCK - 1} from the hub "
                         f"{self.hub.label} (machine {self.hub.machine})")
        self.hub.announce(ends=self.ends)
        self.generation = self.hub.generation
        self.exchange(wait=REPLAY_WAIT_SECONDS)
        return seed

    # -- the loop --------------------------------------------------------------------------

    def archived(self, signature: str, path: str) -> None:
        """The engine archived (or met again) ``signature``, whose file is ``path``."""
        self.local.add(signature)
        if self.hub is not None and signature not in self.pushed:
            self.to_push[signature] = path

    def tick(self, sample: Callable[[], Sample], now: float | None = None) -> list[str]:
        """Exchange with the hub and write a stats record when it is time; returns the
        signatures other machines found that were copied in since the last call."""
        now = time.monotonic() if now is None else now
        new: list[str] = []
        if self.hub is not None and now >= self.next_sync:
            self.next_sync = now + SYNC_SECONDS
            new = self.exchange()
        if self.stats is not None and now >= self.next_stats:
            self.next_stats = now + INTERVAL_SECONDS
            self.record(sample())
        return new

    def exchange(self, wait: float | None = None) -> list[str]:
        """Push what is new here, pull what is new there; the signatures copied in.
        ``wait``: seconds to wait for the replays of what the hub has (None: not at all,
        their results come with a later exchange)."""
        hub = self.hub
        if hub is None:
            return []
        if hub.check_data_set() != self.generation:  # the hub lost what it held
            self.generation = hub.generation
            self.pushed -= self.local
            for sig, path in archived_signatures(self.findings_dir).items():
                self.to_push.setdefault(sig, path)
        for sig, path in sorted(self.to_push.items()):
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError:
                continue  # gone meanwhile: the engine re-archives what it finds again
            if hub.push_finding(sig, text) != "off":
                self.pushed.add(sig)
        self.to_push.clear()
        new: list[str] = []
        for path in hub.pull_findings(self.findings_dir, self.local, wait):
            try:
                pulled = of_meta(load_program_file(path).meta)
            except ProgramError:
                continue  # checked by the client before it was written
            if pulled is None:
                continue
            sig = pulled
            new.append(sig)
            self.local.add(sig)
            self.pulled.append((sig, path))
            self.pushed.add(sig)  # the hub has it
            self.say(f"finding from the hub {escape(sig)} -> {path}")
        if self.corpus_dir is not None:
            self.corpus_out += hub.push_corpus(self.corpus_dir)
            self.corpus_in += hub.pull_corpus(self.corpus_dir)
        return new

    def record(self, s: Sample) -> None:
        """One stats record: to the --stats file and the hub's stream."""
        if self.stats is None:
            return
        line = self.stats.record(s)
        try:
            self.stats.append(line)
        except OSError as e:
            self.say(f"--stats {self.stats.path}: cannot write ({e.strerror or e}); the "
                     "file gets no more records")
            f, self.stats.f = self.stats.f, None
            if f is not None:
                with contextlib.suppress(OSError):  # closing flushes, and fails again
                    f.close()
        if self.hub is not None:
            self.hub.push_stats(line)

    # -- the end ---------------------------------------------------------------------------

    def finish(self, s: Sample, stop: Callable[[], bool] = lambda: False) -> list[str]:
        """The last stats record and exchange; returns signatures copied in by it.  Before
        the last pull it waits (``wait_for_peers``, until ``stop()``: a campaign stopped by
        a signal does not wait) for the machines meant to end about when this one does, so
        campaigns that end together end with the same findings."""
        new: list[str] = []
        if self.hub is not None:
            new = self.exchange(wait=None if stop() else REPLAY_WAIT_SECONDS)
            self.hub.announce(finished=self.clock())
            self.wait_for_peers(stop)
            # what a peer pushed as it ended, waited for or not
            new += self.exchange(wait=None if stop() else REPLAY_WAIT_SECONDS)
        self.record(s)
        self.close()
        return new

    def wait_for_peers(self, stop: Callable[[], bool] = lambda: False) -> bool:
        """Wait while another machine of the campaign that meant to end within
        ``LINGER_SECONDS`` of this one has not said it finished (at most that long, never
        for a machine the hub cannot be asked about, and not once ``stop()``); True if
        any was waited for."""
        hub = self.hub
        if hub is None:
            return False
        start = self.clock()
        waited = False
        while True:
            now = self.clock()
            peers = sorted(
                m for m, v in hub.machines().items()
                if m != hub.machine and isinstance(v.get("ends"), int | float)
                and v.get("finished") is None and abs(v["ends"] - self.ends) <= LINGER_SECONDS
                and now < v["ends"] + LINGER_SECONDS)
            if not peers or now - start >= LINGER_SECONDS or not hub.up or stop():
                return waited
            if not waited:
                self.say(f"waiting up to {LINGER_SECONDS:g} s for {', '.join(peers)} to end "
                         "(machines of this hub campaign ending about now), then the last "
                         "copy of the hub's findings")
                waited = True
            self.sleep(0.5)

    def close(self) -> None:
        if self.hub is not None:
            self.hub.close()
        if self.stats is not None:
            self.stats.close()

    def summary_lines(self) -> list[str]:
        """What the summary says about the hub (nothing without one)."""
        hub = self.hub
        if hub is None:
            return []
        lines = [f"  hub       {hub.label} campaign {hub.campaign!r} as {hub.machine}: "
                 f"{len(self.pushed - {s for s, _ in self.pulled})} finding(s) offered, "
                 f"{len(self.pulled)} copied in"
                 + (f", corpus {self.corpus_out} out / {self.corpus_in} in"
                    if self.corpus_dir is not None else "")
                 + (f"; {hub.pending()} item(s) still queued (the hub was unreachable)"
                    if hub.pending() else "")
                 + (f"; refused: {hub.refused}" if hub.refused else "")]
        lines += [f"  from hub  {path}  {escape(sig)}" for sig, path in self.pulled]
        return lines

    def verified(self) -> set[str]:
        """The signatures copied in from the hub (each replayed here first): the only
        ones of other machines a campaign counts as known."""
        return {sig for sig, _ in self.pulled}


def features(tally: Tally) -> dict[str, int]:
    """A tally as the stats writer's feature -> hits."""
    return {name: tally.hits[i] for i, name in enumerate(NAMES)}


def _machine() -> str:
    from fuzz.hub_address import default_machine_id

    return default_machine_id()
