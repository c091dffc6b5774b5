"""The campaign hub: what several machines' campaigns share through one Redis database.

Only a campaign's parent process talks to the hub (``Hub``); its workers are unchanged,
except that the Hypothesis engine's workers open the shared example database themselves
(``fuzz.hub_db.example_database``).  Shared, under keys ``pudthp:CAMPAIGN:...``:

- the campaign record (``join``): the code version (``code_version``: a hash of the model,
  harness and fuzz sources) that every machine must run, the first machine's engine and
  config overrides, and per machine what it joined with and which seeds it was given;
- the data set's token (``epoch``), made by the first machine: a hub restarted empty (or
  emptied) has none or another, and every machine then offers its findings and corpus
  again, by content;
- seed blocks (``seed_block``): a counter and each machine's block end (a sorted set), read
  and moved in one WATCH/MULTI transaction; a block starts at or past the counter and
  every block a machine recorded, so it is never negative and never one already given,
  whatever the counter holds;
- findings by signature (``push_finding``, ``pull_findings``): the archived program text;
  when two machines push the same signature the shorter program (fewer ops, then fewer
  characters, then the smaller text: the same winner whatever the order) is kept, inside a
  WATCH/MULTI transaction, and its signature is appended to a log; a pull reads the log
  from where it left off (a bounded number of entries per call), replays each finding
  (``fuzz.hub_replay``) and copies into a local findings directory, with
  ``fuzz.archive``'s naming, those that report their signature, never overwriting a file.
  One that does not is said once, naming the machine that pushed it, and never tried
  again; a shorter program on the hub that does not reproduce is replaced by this
  machine's.  The set of signatures the hub names (``signatures``) is information only:
  a signature with no reproducing program behind it counts for nothing;
- the atheris corpus (``push_corpus``, ``pull_corpus``): inputs stored by the SHA-1 of their
  bytes (libFuzzer's own file names) plus a log of hashes, so each pull reads only what was
  added since the last; at most ``MAX_CORPUS_INPUT`` bytes each, both ways;
- a stats stream (``push_stats``, ``read_stats``): one JSON record per entry.

Every value read back is checked first (``fuzz.hub_values``); a bad one is said in one line
and passed over.  When the hub cannot be reached, the client says so once in one line (the
``say`` callback), and every call carries on locally: pushes are queued (corpus files are
not: they stay on disk and are offered again), pulls return nothing.  Every
``retry_seconds`` the next call tries again; on success it re-joins (checking the code
version again), flushes the queue in order and says so.  Nothing queued is dropped, except
stats records beyond ``MAX_QUEUED_STATS`` (said once).  A stats record may be stored twice
when a connection breaks after the server took it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable, Container, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

import redis

from fuzz import hub_values as hv
from fuzz.archive import archived_signatures
from fuzz.hub_address import (
    DEFAULT_PORT,
    URL_FORMAT,
    HubAddress,
    HubError,
    code_version,
    default_machine_id,
    parse_hub_url,
    ping,
    redis_client,
)
from fuzz.hub_corpus import CorpusExchange
from fuzz.hub_db import (
    CONNECTION_ERRORS,
    DEFAULT_CAMPAIGN,
    DEFAULT_EXAMPLE_DIR,
    RETRY_SECONDS,
    TolerantDatabase,
    example_database,
    first_line,
    say_stderr,
)
from fuzz.hub_intake import PULL_BATCH, Intake, ReplayerLike
from fuzz.hub_values import MAX_CORPUS_INPUT, BadValue
from fuzz.stats import stats_problem
from harness.program import MAX_PROGRAM_BYTES
from harness.signature import current

__all__ = [
    "DEFAULT_CAMPAIGN", "DEFAULT_EXAMPLE_DIR", "DEFAULT_PORT", "MAX_CORPUS_INPUT",
    "SEED_BLOCK", "URL_FORMAT", "Hub", "HubAddress", "HubError", "HubRefused",
    "TolerantDatabase", "code_version", "default_machine_id", "example_database",
    "parse_hub_url", "redis_client",
]

SEED_BLOCK = 1 << 20  # seeds per machine: workers and atheris restarts stay inside it
MAX_QUEUED_STATS = 10_000
STATS_MAXLEN = 1_000_000  # entries kept in the stream (approximately)
MAX_MACHINES = 10_000  # machine entries read
MAX_SAID = 20  # bad values said, then passed over in silence

T = TypeVar("T")
Push = Literal["stored", "kept", "queued", "off"]


class HubRefused(HubError):
    """The hub's campaign runs other code than this machine."""


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True, slots=True)
class CampaignRecord:
    """The hub's record of a campaign, as ``join`` found or created it."""

    code: str
    engine: str
    overrides: dict[str, Any]
    created: str
    created_by: str
    kernel: str | None = None  # a kernel campaign's kernel release (``uname -r``)


@dataclass
class _Join:
    engine: str
    overrides: dict[str, Any]
    code: str
    kernel: str | None = None
    mix_kernels: bool = False
    seeds: tuple[int, int] | None = None
    ends: float | None = None  # when the campaign means to end (seconds since the epoch)
    finished: float | None = None  # when it did


class Hub:
    """One machine's connection to the hub; see the module docstring.  Every method may be
    called whether the hub is reachable or not; call them from one thread.  ``replayer``
    replays findings from the hub (default ``fuzz.hub_replay.Replayer``)."""

    def __init__(self, client: redis.Redis, *, label: str = "hub", machine: str | None = None,
                 campaign: str = DEFAULT_CAMPAIGN, say: Callable[[str], None] | None = None,
                 retry_seconds: float = RETRY_SECONDS,
                 clock: Callable[[], float] = time.monotonic,
                 replayer: ReplayerLike | None = None) -> None:
        self.r = client
        self.label = label
        self.url: str | None = None  # as given to ``connect``, password included
        self.machine = machine or default_machine_id()
        self.campaign = campaign
        self.say = say or say_stderr
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.prefix = f"pudthp:{campaign}:"
        self.up = True  # until a call fails
        self.retry_at = 0.0
        self.refused: str | None = None  # the hub refused this machine: local only from now on
        self.queue: deque[tuple[str, str]] = deque()  # (signature, text) of findings
        self.stats_queue: deque[str] = deque()
        self.stats_dropped = 0
        self.stats_skipped = 0  # bad records passed over by the last read_stats
        self.stats_last: str | None = None  # the last stats entry read_stats read
        self.joined: _Join | None = None
        self.record: CampaignRecord | None = None
        self.epoch: str | None = None  # the hub's data set token, as last seen
        self.generation = 0  # data sets seen: a new one means offering everything again
        self.said: set[str] = set()
        self.silenced = 0
        self.write_problems: dict[str, str] = {}  # directory -> why copying in failed
        self.intake = Intake(self, replayer)
        self.corpus = CorpusExchange(self)

    @classmethod
    def connect(cls, url: str, *, machine: str | None = None,
                campaign: str = DEFAULT_CAMPAIGN, say: Callable[[str], None] | None = None,
                retry_seconds: float = RETRY_SECONDS,
                replayer: ReplayerLike | None = None) -> Hub:
        """A client for ``url``.  A bad URL or a password the server rejects is a
        ``HubError``; an unreachable server is not (it is said once, and retried)."""
        address = parse_hub_url(url)
        hub = cls(redis_client(address), label=address.url(), machine=machine,
                  campaign=campaign, say=say, retry_seconds=retry_seconds, replayer=replayer)
        hub.url = url
        hub.check()
        return hub

    def bad(self, problem: str) -> None:
        """Say a value from the hub that is passed over: each problem once, at most
        ``MAX_SAID`` lines, then a last line that the rest pass in silence."""
        if problem in self.said:
            return
        if len(self.said) < MAX_SAID:
            self.said.add(problem)
            self.say(f"hub {self.label}: {problem}; passed over")
        elif not self.silenced:
            self.silenced = 1
            self.say(f"hub {self.label}: more values that cannot be used; passed over "
                     "without a word from now on")

    # -- reachability ----------------------------------------------------------------------

    def check(self) -> bool:
        """Ping the hub now; True if it answered.  A rejected password is a ``HubError``."""
        try:
            ping(self.r)
        except redis.exceptions.AuthenticationError as e:
            raise HubError(f"hub {self.label}: {first_line(e)}") from None
        except redis.exceptions.ResponseError as e:  # NOAUTH: a password is required
            raise HubError(f"hub {self.label}: {first_line(e)}") from None
        except CONNECTION_ERRORS as e:
            self._lost(e)
            return False
        return True

    def _lost(self, e: BaseException) -> None:
        if self.up:
            self.say(f"hub {self.label} unreachable ({first_line(e)}); carrying on "
                     f"locally, retrying every {self.retry_seconds:g} s")
        self.up = False
        self.retry_at = self.clock() + self.retry_seconds

    def _ready(self) -> bool:
        """True if a call should go to the hub now (reconnecting and flushing if it was
        down and the retry time has come)."""
        if self.refused is not None:
            return False
        if self.up:
            return True
        if self.clock() < self.retry_at:
            return False
        self.retry_at = self.clock() + self.retry_seconds
        try:
            ping(self.r)
            if self.joined is not None:  # checks the code again; recreates a lost record
                self._join(self.joined)
            pushed = self._flush()
        except HubRefused as e:
            self._refuse(str(e))
            return False
        except CONNECTION_ERRORS:
            return False
        self.up = True
        self.say(f"hub {self.label} reachable again; {pushed} queued item(s) pushed")
        return True

    def _refuse(self, message: str) -> None:
        self.refused = message
        self.queue.clear()  # the local archive and --stats file keep it all
        self.stats_queue.clear()
        self.say(f"{message}; carrying on locally without the hub")

    def call(self, fn: Callable[[], T], default: T) -> T:
        if not self._ready():
            return default
        try:
            return fn()
        except HubRefused as e:
            self._refuse(str(e))
            return default
        except CONNECTION_ERRORS as e:
            self._lost(e)
            return default

    def flush(self) -> bool:
        """Push what is queued if the hub can be reached (now, ignoring the retry time);
        True when nothing is left queued."""
        if self.refused is not None:
            return False
        if not self.up:
            self.retry_at = 0.0
            return self._ready() and not self.pending()
        try:
            self._flush()
        except CONNECTION_ERRORS as e:
            self._lost(e)
        return not self.pending()

    def pending(self) -> int:
        """Items queued for the hub."""
        return len(self.queue) + len(self.stats_queue)

    def _flush(self) -> int:
        n = 0
        while self.queue:
            sig, text = self.queue[0]
            self.store_finding(sig, text)
            self.queue.popleft()
            n += 1
        while self.stats_queue:
            self._xadd(self.stats_queue[0])
            self.stats_queue.popleft()
            n += 1
        return n

    def close(self) -> None:
        """Try once to push what is queued, then close the connection; replays still
        running are stopped."""
        self.flush()
        self.intake.close()
        with contextlib.suppress(*CONNECTION_ERRORS):
            self.r.close()

    # -- the campaign record, the data set and seeds ---------------------------------------

    def key(self, name: str) -> str:
        return self.prefix + name

    def join(self, engine: str, overrides: Mapping[str, Any], *,
             code: str | None = None, kernel: str | None = None,
             mix_kernels: bool = False) -> CampaignRecord | None:
        """Join the campaign: create its record if this is the first machine, else check
        that the record's code version is this machine's (``code``, default
        ``code_version()``); a different one is a ``HubRefused`` naming both.  A kernel
        campaign gives its kernel release (``kernel``): a campaign whose record names
        another release (or none: a model campaign) refuses it, and a model campaign
        refuses to join a kernel campaign's record, unless ``mix_kernels``.  Returns the
        record, or None when the hub is unreachable (the check is made when it comes back:
        a refusal then is said once and the hub is left alone)."""
        j = _Join(engine, dict(overrides), code or code_version(), kernel, mix_kernels)
        self.joined = j
        self.record = None
        if not self._ready():
            return None
        try:
            return self._join(j)
        except HubRefused as e:
            self.refused = str(e)
            raise
        except CONNECTION_ERRORS as e:
            self._lost(e)
            return None

    def _join(self, j: _Join) -> CampaignRecord:
        fresh = {"code": j.code, "engine": j.engine, "overrides": j.overrides,
                 "created": _now(), "created_by": self.machine, "kernel": j.kernel}
        self.r.set(self.key("record"), json.dumps(fresh, sort_keys=True), nx=True)
        try:
            data = hv.record(self.r.get(self.key("record")))
        except BadValue as e:
            raise HubRefused(f"hub {self.label} campaign {self.campaign!r}: {e}") from None
        record = CampaignRecord(**data)
        if record.code != j.code:
            raise HubRefused(
                f"hub {self.label} campaign {self.campaign!r} runs code {record.code[:12]}, "
                f"this machine has {j.code[:12]}: check out the same commit on both (or use "
                f"another campaign or database)")
        if record.kernel != j.kernel and not j.mix_kernels:
            theirs = f"kernel {record.kernel}" if record.kernel else "the model alone"
            ours = f"kernel {j.kernel}" if j.kernel else "the model alone"
            raise HubRefused(
                f"hub {self.label} campaign {self.campaign!r} runs on {theirs}, this machine "
                f"on {ours}: findings of different kernels are not one campaign's (use "
                f"another campaign, or --mix-kernels)")
        self._check_epoch()
        self._record_machine(j)
        self.record = record
        return record

    def _check_epoch(self) -> None:
        """Note the hub's data set, making its token if it has none; a different one from
        the last seen means the hub lost what it held: everything is offered again."""
        self.r.set(self.key("epoch"), secrets.token_hex(16), nx=True)
        try:
            now = hv.epoch(self.r.get(self.key("epoch")))
        except BadValue as e:
            self.bad(str(e))
            return
        if self.epoch is not None and now != self.epoch:
            self.generation += 1
            self.intake.reset()
            self.corpus.reset()
            self.say(f"hub {self.label} holds another data set than before (restarted "
                     "empty?); this machine's findings and corpus are offered again")
        self.epoch = now

    def check_data_set(self) -> int:
        """Ask the hub whether it still holds the data set this client joined (one
        ``GET``); re-join if not.  Returns ``generation``, which grows by one each time
        the data set was found new: the caller then offers its findings again."""
        if self.joined is None or self.epoch is None:
            return self.generation
        joined = self.joined

        def look() -> None:
            if self.r.get(self.key("epoch")) != self.epoch.encode():  # type: ignore[union-attr]
                self._join(joined)

        self.call(look, None)
        return self.generation

    def _record_machine(self, j: _Join) -> None:
        entry = {"engine": j.engine, "overrides": j.overrides, "joined": _now(),
                 "seeds": list(j.seeds) if j.seeds else None, "ends": j.ends,
                 "finished": j.finished}
        pipe = self.r.pipeline(transaction=True)
        pipe.hset(self.key("machines"), self.machine, json.dumps(entry, sort_keys=True))
        if j.seeds:
            pipe.zadd(self.key("seed_ends"), {self.machine: j.seeds[1]}, gt=True)
        pipe.execute()

    def seed_block(self, size: int = SEED_BLOCK, fallback: int | None = None) -> int | None:
        """The first seed of a block of ``size`` seeds no other machine was given, recorded
        with this machine; ``fallback`` (a local seed) when the hub cannot give one."""
        if size < 1:
            raise ValueError("a seed block has at least one seed")

        def tx(pipe: Any) -> int:
            start = 0
            raw = pipe.get(self.key("seeds"))
            if raw is not None:
                try:
                    start = hv.seed_end(raw, "the seed counter")
                except BadValue as e:  # recomputed from the blocks given
                    self.bad(str(e))
            top = pipe.zrevrangebyscore(self.key("seed_ends"), hv.MAX_SEED, 0, start=0,
                                        num=1, withscores=True)
            if top:
                start = max(start, hv.seed_end(top[0][1], "a seed block"))
            if start + size > hv.MAX_SEED:
                raise BadValue(f"no seed block of {size} left below {hv.MAX_SEED}")
            pipe.multi()
            pipe.set(self.key("seeds"), start + size)
            pipe.zadd(self.key("seed_ends"), {self.machine: start + size}, gt=True)
            return start

        def take() -> int | None:
            try:
                return cast(int, self.r.transaction(cast(Any, tx), self.key("seeds"),
                                                    value_from_callable=True))
            except BadValue as e:
                self.bad(str(e))
                return None

        start = self.call(take, None)
        if start is None:
            return fallback
        if self.joined is not None:
            joined = self.joined
            joined.seeds = (start, start + size)
            self.call(lambda: self._record_machine(joined), None)
        return start

    def announce(self, *, ends: float | None = None, finished: float | None = None) -> None:
        """Record in this machine's entry when its campaign means to end and when it did
        (seconds since the epoch), so the others can wait for it at their end."""
        if self.joined is None:
            return
        joined = self.joined
        if ends is not None:
            joined.ends = ends
        if finished is not None:
            joined.finished = finished
        self.call(lambda: self._record_machine(joined), None)

    def machines(self) -> dict[str, dict[str, Any]]:
        """machine -> what it joined with (engine, overrides, joined, seeds, ends,
        finished); at most ``MAX_MACHINES`` entries, bad ones passed over."""

        def read() -> list[tuple[Any, Any]]:
            out = []
            for item in self.r.hscan_iter(self.key("machines"), count=1000):
                out.append(item)
                if len(out) >= MAX_MACHINES:
                    break
            return out

        nothing: list[tuple[Any, Any]] = []
        out: dict[str, dict[str, Any]] = {}
        for k, v in self.call(read, nothing):
            try:
                name = hv.machine_name(k)
                out[name] = hv.machine_entry(v, name)
            except BadValue as e:
                self.bad(str(e))
        return out

    # -- findings: pushing -----------------------------------------------------------------

    def finding_key(self, signature: str) -> str:
        return self.key("finding:" + hashlib.sha256(signature.encode()).hexdigest())

    def push_finding(self, signature: str, text: str) -> Push:
        """Offer a finding (``text``: the archived program JSON with its metadata).
        ``stored``: the hub now holds it (new, or shorter than the hub's); ``kept``: the
        hub's is as short or shorter (and is replayed by the next ``pull_findings``: one
        that does not reproduce is replaced by this one); ``queued``: unreachable, pushed
        on reconnection; ``off``: the hub refused this machine."""
        if self.refused is not None:
            return "off"
        if not self._ready():
            if self.refused is not None:
                return "off"
            self.queue.append((signature, text))
            return "queued"
        try:
            return "stored" if self.store_finding(signature, text) else "kept"
        except CONNECTION_ERRORS as e:
            self._lost(e)
            self.queue.append((signature, text))
            return "queued"

    def store_finding(self, signature: str, text: str, replacing: str | None = None) -> bool:
        """Store ``text`` unless the hub's program ranks before it (or, with ``replacing``,
        unless the hub's text is no longer the one of that digest)."""
        key = self.finding_key(signature)
        rank = _rank(text)

        def tx(pipe: Any) -> bool:
            cur = self.hub_text(pipe, key)
            pipe.multi()
            pipe.sadd(self.key("signatures"), signature)
            if replacing is not None:
                if cur is None or _digest(cur) != replacing:
                    return False
            elif cur is not None and _rank(cur) <= rank:
                if cur != text:
                    self.intake.disputed[signature] = text
                return False
            pipe.hset(key, mapping={"signature": signature, "text": text,
                                    "ops": rank[0], "machine": self.machine,
                                    "pushed": _now()})
            pipe.rpush(self.key("findings_log"), signature)
            return True

        stored = bool(self.r.transaction(cast(Any, tx), key, value_from_callable=True))
        if stored:
            self.intake.trusted.add((signature, _digest(text)))
        return stored

    def hub_text(self, r: Any, key: str) -> str | None:
        """The program text of a hub finding, if its size allows (asked first) and it is
        UTF-8; None otherwise (a bad one said)."""
        size = r.hstrlen(key, "text")
        if not size:
            return None
        if size > MAX_PROGRAM_BYTES:
            self.bad(f"a finding of {size} bytes, over the limit of {MAX_PROGRAM_BYTES}")
            return None
        try:
            return hv.text(r.hget(key, "text"), "a finding's program", MAX_PROGRAM_BYTES)
        except BadValue as e:
            self.bad(str(e))
            return None

    def push_archive(self, directory: str) -> int:
        """Offer every archived finding of ``directory`` (``fuzz.archive`` files with a
        ``meta.signature``); returns how many the hub stored."""
        stored = 0
        for sig, path in archived_signatures(directory).items():
            try:
                text = Path(path).read_text(encoding="utf-8")
            except OSError:
                continue
            stored += self.push_finding(sig, text) == "stored"
        return stored

    # -- findings: reading -----------------------------------------------------------------

    def signatures(self) -> set[str]:
        """The signatures the hub's set names (information only: never trusted)."""
        got = self.call(lambda: self.r.smembers(self.key("signatures")), None) or set()
        out = set()
        for s in got:
            with contextlib.suppress(BadValue):
                out.add(current(hv.signature(s)))  # a format-1 one as today's
        return out

    def signature_count(self) -> int:
        """How many signatures the hub's set names (0 when unreachable)."""
        return int(self.call(lambda: self.r.scard(self.key("signatures")), 0) or 0)

    def finding(self, signature: str) -> str | None:
        """The hub's program text for ``signature`` (None if none, unusable or
        unreachable); not replayed."""
        return self.call(lambda: self.hub_text(self.r, self.finding_key(signature)), None)

    def pull_findings(self, directory: str, have: Container[str] = (),
                      wait: float | None = 300.0) -> list[str]:
        """Copy the hub's findings this machine lacks into ``directory``, each replayed
        first (``fuzz.hub_intake.Intake.pull``); the paths written."""
        return self.intake.pull(directory, have, wait)

    def push_corpus(self, directory: str) -> int:
        """Offer ``directory``'s new files (``fuzz.hub_corpus``); how many were new there."""
        return self.corpus.push(directory)

    def pull_corpus(self, directory: str) -> int:
        """Copy in the hub's new inputs (``fuzz.hub_corpus``); how many were written."""
        return self.corpus.pull(directory)

    def cannot_write(self, directory: str, e: OSError) -> None:
        """Say why ``directory`` cannot take what the hub has: once, until it can."""
        problem = f"{directory}: {e.strerror or e}"
        if self.write_problems.get(directory) != problem:
            self.say(f"cannot copy from the hub to {problem}; trying again later")
        self.write_problems[directory] = problem


    # -- statistics ------------------------------------------------------------------------

    def push_stats(self, record: Mapping[str, Any]) -> Push:
        """Append one stats record (``fuzz.stats``'s line) to the hub's stream."""
        line = json.dumps(record, sort_keys=True)
        if self.refused is not None:
            return "off"
        if self._ready():
            try:
                self._xadd(line)
                return "stored"
            except CONNECTION_ERRORS as e:
                self._lost(e)
        if self.refused is not None:
            return "off"
        if len(self.stats_queue) >= MAX_QUEUED_STATS:
            self.stats_queue.popleft()
            self.stats_dropped += 1
            if self.stats_dropped == 1:
                self.say(f"hub unreachable for {MAX_QUEUED_STATS} stats records; "
                         f"the oldest queued are dropped (the local --stats file has them)")
        self.stats_queue.append(line)
        return "queued"

    def _xadd(self, line: str) -> None:
        self.r.xadd(self.key("stats"), {"json": line}, maxlen=STATS_MAXLEN, approximate=True)

    def read_stats(self, after: str | None = None,
                   most: int | None = None) -> list[dict[str, Any]]:
        """The records of the hub's stats stream after the entry ``after`` (all, oldest
        first, without it), at most ``most`` entries read; each ``campaign`` is this
        client's.  ``stats_last`` is then the last entry read (to pass as ``after`` next
        time: the stream is read on from there).  An entry that is not a valid stats record
        (``fuzz.stats``) is passed over and counted in ``stats_skipped``."""
        self.stats_skipped = 0
        out: list[dict[str, Any]] = []

        def read() -> None:
            start = "-" if after is None else "(" + after
            seen = 0
            while True:
                batch = PULL_BATCH if most is None else max(0, min(PULL_BATCH, most - seen))
                if batch == 0:
                    return
                entries: list[Any] = cast(Any, self.r.xrange(self.key("stats"), min=start,
                                                             count=batch)) or []
                seen += len(entries)
                for entry_id, fields in entries:
                    self.stats_last = _text(entry_id)
                    try:
                        record = hv.small_json((fields or {}).get(b"json"), "a stats record")
                    except BadValue:
                        self.stats_skipped += 1
                        continue
                    if stats_problem(record) is not None:
                        self.stats_skipped += 1
                        continue
                    record["campaign"] = self.campaign  # the stream's, whatever it says
                    out.append(record)
                if len(entries) < batch:
                    return
                start = "(" + _text(entries[-1][0])

        self.call(read, None)
        return out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _rank(text: str) -> tuple[int, int, bytes]:
    """The order in which a finding's programs are kept: fewer ops, fewer characters, then
    the smaller text (a total order, so every machine agrees on the winner)."""
    try:
        ops = json.loads(text).get("ops", [])
        n = len(ops) if isinstance(ops, list) else 1 << 30
    except (ValueError, AttributeError, RecursionError):
        n = 1 << 30
    return n, len(text), text.encode("utf-8", "surrogatepass")
