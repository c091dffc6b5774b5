"""The campaign hub: what several machines' campaigns share through one Redis database.

Only a campaign's parent process talks to the hub (``Hub``); its workers are unchanged,
except that the Hypothesis engine's workers open the shared example database themselves
(``example_database``).  Shared, under keys ``pudthp:CAMPAIGN:...``:

- the campaign record (``join``): the code version (``code_version``: a hash of the model,
  harness and fuzz sources) that every machine must run, the first machine's engine and
  config overrides, and per machine what it joined with and which seeds it was given;
- seed blocks (``seed_block``): ``INCRBY`` on one counter, so every block is disjoint from
  every other machine's and every earlier campaign's;
- findings by signature (``push_finding``, ``pull_findings``): the archived program text;
  when two machines push the same signature the shorter program (fewer ops, then fewer
  characters, then the smaller text: the same winner whatever the order) is kept, inside a
  WATCH/MULTI transaction; a pull copies into a local findings directory, with
  ``fuzz.archive``'s naming, every finding it does not have, never overwriting a file;
- the set of known signatures (``signatures``);
- the atheris corpus (``push_corpus``, ``pull_corpus``): inputs stored by the SHA-1 of their
  bytes (libFuzzer's own file names) plus a log of hashes, so each pull reads only what was
  added since the last;
- a stats stream (``push_stats``, ``read_stats``): one JSON record per entry;
- the Hypothesis example database (``example_database``).

When the hub cannot be reached, the client says so once in one line (the ``say`` callback),
and every call carries on locally: pushes are queued (corpus files are not: they stay on disk
and are offered again), pulls return nothing.  Every ``retry_seconds`` the next call tries
again; on success it re-joins (checking the code version again), flushes the queue in order
and says so.  Nothing queued is dropped, except stats records beyond ``MAX_QUEUED_STATS``
(said once).  A stats record may be stored twice when a connection breaks after the server
took it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import socket
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Container, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypeVar, cast
from urllib.parse import unquote, urlsplit

import redis
from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    MultiplexedDatabase,
)
from redis.backoff import NoBackoff
from redis.retry import Retry

from fuzz.archive import archive, archived_signatures, finding_path
from harness.program import ProgramError, parse_program_text

URL_FORMAT = "redis://[:PASSWORD@]HOST:PORT/DB"
DEFAULT_PORT = 6379
DEFAULT_CAMPAIGN = "main"
DEFAULT_EXAMPLE_DIR = "corpus/hypothesis"
CODE_PACKAGES = ("pudthp_ref", "pudthp_fast", "harness", "fuzz")
SEED_BLOCK = 1 << 20  # seeds per machine: workers and atheris restarts stay inside it
RETRY_SECONDS = 10.0
CONNECT_TIMEOUT = 2.0
SOCKET_TIMEOUT = 10.0
MAX_QUEUED_STATS = 10_000
MAX_CORPUS_INPUT = 1 << 20  # bytes; larger files are not shared
STATS_MAXLEN = 1_000_000  # entries kept in the stream (approximately)
PULL_BATCH = 500

CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    # every error reply too: a hub whose disk is full answers MISCONF, one out of memory
    # OOM, a replica READONLY; for a campaign they all mean "not now, try again later"
    redis.exceptions.RedisError,
    OSError,
)

T = TypeVar("T")
Push = Literal["stored", "kept", "queued", "off"]


class HubError(Exception):
    """A hub problem the user must fix (bad URL, wrong password, a refused machine);
    ``str()`` is one line."""


class HubRefused(HubError):
    """The hub's campaign runs other code than this machine."""


# --------------------------------------------------------------------------------------
# Addresses and the code version
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HubAddress:
    """A parsed hub URL."""

    host: str
    port: int
    db: int
    password: str | None = None

    def url(self, show_password: bool = False) -> str:
        auth = ""
        if self.password is not None:
            auth = f":{self.password if show_password else '***'}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"redis://{auth}{host}:{self.port}/{self.db}"


def parse_hub_url(url: str) -> HubAddress:
    """``redis://[:PASSWORD@]HOST:PORT/DB`` (port default 6379, db default 0); anything
    else is a ``HubError`` naming the expected form (the password is never echoed)."""
    shown = url
    try:
        parts = urlsplit(url)
        if parts.password is not None:
            shown = url.replace(f":{parts.password}@", ":***@", 1)
        if parts.scheme != "redis":
            raise ValueError("the scheme must be redis://")
        if not parts.hostname:
            raise ValueError("no host")
        if parts.username:
            raise ValueError("a user name is not supported, only :PASSWORD@")
        if parts.query or parts.fragment:
            raise ValueError("no query or fragment is expected")
        port = parts.port if parts.port is not None else DEFAULT_PORT
        if port == 0:
            raise ValueError("port 0")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"database {path!r} is not a number")
        db = int(path) if path else 0
    except ValueError as e:
        raise HubError(f"hub URL {shown!r}: {e}; expected {URL_FORMAT}") from None
    password = unquote(parts.password) if parts.password is not None else None
    return HubAddress(parts.hostname, port, db, password)


def code_version(roots: Mapping[str, Path] | None = None) -> str:
    """The SHA-256 of every ``.py`` file of the model, the harness and the fuzzers
    (``CODE_PACKAGES``; ``roots`` maps a package name to its directory, default the
    installed packages): per file in order of its path relative to the package's parent,
    the path, its length and its bytes; so the same sources give the same hash anywhere."""
    if roots is None:
        roots = {name: _package_dir(name) for name in CODE_PACKAGES}
    h = hashlib.sha256()
    files: list[tuple[str, Path]] = []
    for name, root in roots.items():
        for path in root.rglob("*.py"):
            rel = path.relative_to(root).as_posix()
            if "__pycache__" not in rel.split("/"):
                files.append((f"{name}/{rel}", path))
    for rel, path in sorted(files):
        data = path.read_bytes()
        h.update(rel.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    return h.hexdigest()


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise HubError(f"cannot find the {name} package to hash its sources")
    return Path(next(iter(spec.submodule_search_locations)))


def default_machine_id() -> str:
    """``HOSTNAME:PID``: unique among the campaigns running at one time."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _say_stderr(line: str) -> None:
    """The default ``say``: the client's lines are bare, the caller names the program."""
    print(f"pudthp: {line}", file=sys.stderr, flush=True)


def redis_client(address: HubAddress) -> redis.Redis:
    """A client that fails fast (no retries, short timeouts): the hub client retries on its
    own schedule and must never hold up a campaign for long."""
    return redis.Redis(
        host=address.host, port=address.port, db=address.db, password=address.password,
        socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
        retry=Retry(NoBackoff(), 0),
    )


# --------------------------------------------------------------------------------------
# The client
# --------------------------------------------------------------------------------------


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


@dataclass
class _Corpus:
    """What this client knows of one local corpus directory."""

    seen: dict[str, str] = field(default_factory=dict)  # file name -> content hash
    hashes: set[str] = field(default_factory=set)  # contents on disk or already pulled
    offset: int = 0  # entries of the hub's corpus log already read


class Hub:
    """One machine's connection to the hub; see the module docstring.  Every method may be
    called whether the hub is reachable or not; call them from one thread."""

    def __init__(self, client: redis.Redis, *, label: str = "hub", machine: str | None = None,
                 campaign: str = DEFAULT_CAMPAIGN, say: Callable[[str], None] | None = None,
                 retry_seconds: float = RETRY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.r = client
        self.label = label
        self.url: str | None = None  # as given to ``connect``, password included
        self.machine = machine or default_machine_id()
        self.campaign = campaign
        self.say = say or _say_stderr
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.prefix = f"pudthp:{campaign}:"
        self.up = True  # until a call fails
        self.retry_at = 0.0
        self.refused: str | None = None  # the hub refused this machine: local only from now on
        self.queue: deque[tuple[str, str]] = deque()  # (signature, text) of findings
        self.stats_queue: deque[str] = deque()
        self.stats_dropped = 0
        self.joined: _Join | None = None
        self.record: CampaignRecord | None = None
        self.corpora: dict[str, _Corpus] = {}
        self.known: set[str] = set()  # signatures seen on the hub or pushed
        self.bad: set[str] = set()  # hub findings found unusable (said once, not fetched)
        self.write_problems: dict[str, str] = {}  # directory -> why copying in failed

    @classmethod
    def connect(cls, url: str, *, machine: str | None = None,
                campaign: str = DEFAULT_CAMPAIGN, say: Callable[[str], None] | None = None,
                retry_seconds: float = RETRY_SECONDS) -> Hub:
        """A client for ``url``.  A bad URL or a password the server rejects is a
        ``HubError``; an unreachable server is not (it is said once, and retried)."""
        address = parse_hub_url(url)
        hub = cls(redis_client(address), label=address.url(), machine=machine,
                  campaign=campaign, say=say, retry_seconds=retry_seconds)
        hub.url = url
        hub.check()
        return hub

    # -- reachability ----------------------------------------------------------------------

    def check(self) -> bool:
        """Ping the hub now; True if it answered.  A rejected password is a ``HubError``."""
        try:
            self.r.ping()
        except redis.exceptions.AuthenticationError as e:
            raise HubError(f"hub {self.label}: {_first_line(e)}") from None
        except redis.exceptions.ResponseError as e:  # NOAUTH: a password is required
            raise HubError(f"hub {self.label}: {_first_line(e)}") from None
        except CONNECTION_ERRORS as e:
            self._lost(e)
            return False
        return True

    def _lost(self, e: BaseException) -> None:
        if self.up:
            self.say(f"hub {self.label} unreachable ({_first_line(e)}); carrying on "
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
            self.r.ping()
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

    def _call(self, fn: Callable[[], T], default: T) -> T:
        if not self._ready():
            return default
        try:
            return fn()
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
            self._store_finding(sig, text)
            self.queue.popleft()
            n += 1
        while self.stats_queue:
            self._xadd(self.stats_queue[0])
            self.stats_queue.popleft()
            n += 1
        return n

    def close(self) -> None:
        """Try once to push what is queued, then close the connection."""
        self.flush()
        with contextlib.suppress(*CONNECTION_ERRORS):
            self.r.close()

    # -- the campaign record and seeds -----------------------------------------------------

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
        raw = self.r.get(self.key("record"))
        data: dict[str, Any] = json.loads(raw) if raw else fresh
        kernel = data.get("kernel")
        record = CampaignRecord(str(data["code"]), str(data["engine"]),
                                dict(data["overrides"]), str(data["created"]),
                                str(data["created_by"]),
                                kernel if isinstance(kernel, str) else None)
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
        self._record_machine(j)
        self.record = record
        return record

    def _record_machine(self, j: _Join) -> None:
        entry = {"engine": j.engine, "overrides": j.overrides, "joined": _now(),
                 "seeds": list(j.seeds) if j.seeds else None, "ends": j.ends,
                 "finished": j.finished}
        self.r.hset(self.key("machines"), self.machine, json.dumps(entry, sort_keys=True))

    def seed_block(self, size: int = SEED_BLOCK, fallback: int | None = None) -> int | None:
        """The first seed of a block of ``size`` seeds no other machine is given
        (``INCRBY`` on one counter; the first block starts at 0), recorded with this
        machine; ``fallback`` (a local seed) when the hub is unreachable."""
        if size < 1:
            raise ValueError("a seed block has at least one seed")

        def take() -> int:
            end = int(self.r.incrby(self.key("seeds"), size))
            return end - size

        start = self._call(take, None)
        if start is None:
            return fallback
        if self.joined is not None:
            joined = self.joined
            joined.seeds = (start, start + size)
            self._call(lambda: self._record_machine(joined), None)
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
        self._call(lambda: self._record_machine(joined), None)

    def machines(self) -> dict[str, dict[str, Any]]:
        """machine -> what it joined with (engine, overrides, joined, seeds, ends,
        finished)."""
        empty: dict[Any, Any] = {}
        raw = self._call(lambda: self.r.hgetall(self.key("machines")), empty)
        out: dict[str, dict[str, Any]] = {}
        for k, v in raw.items():
            with contextlib.suppress(ValueError, UnicodeDecodeError):
                entry = json.loads(v)
                if isinstance(entry, dict):
                    out[_text(k)] = entry
        return out

    # -- findings --------------------------------------------------------------------------

    def _finding_key(self, signature: str) -> str:
        return self.key("finding:" + hashlib.sha256(signature.encode()).hexdigest())

    def push_finding(self, signature: str, text: str) -> Push:
        """Offer a finding (``text``: the archived program JSON with its metadata).
        ``stored``: the hub now holds it (new, or shorter than the hub's); ``kept``: the
        hub's is as short or shorter; ``queued``: unreachable, pushed on reconnection;
        ``off``: the hub refused this machine."""
        self.known.add(signature)
        if self.refused is not None:
            return "off"
        if not self._ready():
            if self.refused is not None:
                return "off"
            self.queue.append((signature, text))
            return "queued"
        try:
            return "stored" if self._store_finding(signature, text) else "kept"
        except CONNECTION_ERRORS as e:
            self._lost(e)
            self.queue.append((signature, text))
            return "queued"

    def _store_finding(self, signature: str, text: str) -> bool:
        key = self._finding_key(signature)
        rank = _rank(text)

        def tx(pipe: Any) -> bool:
            cur = pipe.hget(key, "text")
            if cur is not None and _rank(_text(cur)) <= rank:
                pipe.multi()
                pipe.sadd(self.key("signatures"), signature)
                return False
            pipe.multi()
            pipe.hset(key, mapping={"signature": signature, "text": text,
                                    "ops": rank[0], "machine": self.machine,
                                    "pushed": _now()})
            pipe.sadd(self.key("signatures"), signature)
            return True

        return bool(self.r.transaction(cast(Any, tx), key, value_from_callable=True))

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

    def signatures(self) -> set[str]:
        """Every signature the hub holds a finding of, with those this client pushed (all
        it knows of when the hub is unreachable)."""
        got = self._call(lambda: self.r.smembers(self.key("signatures")), None)
        if got is not None:
            self.known |= {_text(s) for s in got}
        return set(self.known)

    def finding(self, signature: str) -> str | None:
        """The hub's program text for ``signature`` (None if none or unreachable)."""
        raw = self._call(lambda: self.r.hget(self._finding_key(signature), "text"), None)
        return None if raw is None else _text(raw)

    def pull_findings(self, directory: str, have: Container[str] = ()) -> list[str]:
        """Copy into ``directory`` every hub finding whose signature is neither in
        ``have`` nor already archived there under ``fuzz.archive``'s name; never
        overwrites a file.  A hub entry that is not a valid program, or whose signature is
        not its key's, is said and skipped.  A directory that cannot be written is said
        (once until it can) and the rest left for the next call.  Returns the paths
        written."""
        sigs = sorted(s for s in self.signatures()
                      if s not in have and s not in self.bad
                      and not os.path.exists(finding_path(directory, s)))
        written: list[str] = []
        for sig in sigs:
            text = self.finding(sig)
            if text is None:
                continue
            problem = _check_finding(sig, text)
            if problem is not None:
                self.bad.add(sig)
                self.say(f"hub finding {sig}: {problem}; not copied")
                continue
            try:
                os.makedirs(directory, exist_ok=True)
                path, new = archive(directory, sig, text)
            except OSError as e:  # a full disk: the rest next time
                self._cannot_write(directory, e)
                return written
            if new:
                written.append(path)
        self.write_problems.pop(directory, None)
        return written

    # -- the atheris corpus ----------------------------------------------------------------

    def _corpus(self, directory: str) -> _Corpus:
        return self.corpora.setdefault(os.path.abspath(directory), _Corpus())

    def push_corpus(self, directory: str) -> int:
        """Offer every file of ``directory`` not offered before (by the SHA-1 of its
        bytes); returns how many the hub did not have.  Unreachable: nothing is marked
        offered, so the next call offers them again."""
        state = self._corpus(directory)
        fresh: list[tuple[str, str, bytes]] = []
        for name in sorted(_files(directory)):
            if name in state.seen:
                continue
            try:
                data = Path(directory, name).read_bytes()
            except OSError:
                continue
            if len(data) > MAX_CORPUS_INPUT:
                state.seen[name] = ""
                continue
            fresh.append((name, hashlib.sha1(data).hexdigest(), data))
        if not fresh:
            return 0

        def send() -> int | None:
            added = 0
            for i in range(0, len(fresh), PULL_BATCH):
                pipe = self.r.pipeline(transaction=True)
                batch = fresh[i:i + PULL_BATCH]
                for _, h, data in batch:
                    pipe.hsetnx(self.key("corpus"), h, data)
                    pipe.rpush(self.key("corpus_log"), h)
                replies = pipe.execute()
                added += sum(1 for r in replies[0::2] if r)
                for name, h, _ in batch:
                    state.seen[name] = h
                    state.hashes.add(h)
            return added

        added = self._call(send, None)
        return added or 0

    def pull_corpus(self, directory: str) -> int:
        """Write into ``directory`` every input another machine pushed since the last
        pull that is not there, named by its SHA-1 (written to a temporary file first, so
        libFuzzer's ``-reload`` never reads half a file); returns how many were written."""
        state = self._corpus(directory)

        def fetch() -> list[tuple[str, bytes]]:
            got: list[tuple[str, bytes]] = []
            offset = state.offset  # kept only when every batch came: none is skipped
            while True:
                hashes = [_text(h) for h in self.r.lrange(
                    self.key("corpus_log"), offset, offset + PULL_BATCH - 1)]
                if not hashes:
                    state.offset = offset
                    return got
                offset += len(hashes)
                want = sorted({h for h in hashes if h not in state.hashes})
                if want:
                    datas: list[Any] = self.r.hmget(self.key("corpus"), want)
                    got += [(h, d) for h, d in zip(want, datas, strict=True) if d is not None]

        written = 0
        nothing: list[tuple[str, bytes]] = []
        before = state.offset
        for h, data in self._call(fetch, nothing):
            if hashlib.sha1(data).hexdigest() != h:
                state.hashes.add(h)
                continue
            try:
                new = _write_new(directory, h, data)
            except OSError as e:  # a full disk: read the log again next time
                state.offset = before
                self._cannot_write(directory, e)
                return written
            state.hashes.add(h)
            written += new
            state.seen[h] = h
        self.write_problems.pop(directory, None)
        return written

    def _cannot_write(self, directory: str, e: OSError) -> None:
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

    def read_stats(self) -> list[dict[str, Any]]:
        """Every record of the hub's stats stream, oldest first."""
        nothing: list[Any] = []
        entries: list[Any] = self._call(lambda: self.r.xrange(self.key("stats")) or [], nothing)
        out: list[dict[str, Any]] = []
        for _, fields in entries:  # an entry that is not a record is passed over
            with contextlib.suppress(KeyError, ValueError, UnicodeDecodeError):
                record = json.loads(_text(fields[b"json"]))
                if isinstance(record, dict):
                    out.append(record)
        return out


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _rank(text: str) -> tuple[int, int, bytes]:
    """The order in which a finding's programs are kept: fewer ops, fewer characters, then
    the smaller text (a total order, so every machine agrees on the winner)."""
    try:
        ops = json.loads(text).get("ops", [])
        n = len(ops) if isinstance(ops, list) else 1 << 30
    except (ValueError, AttributeError):
        n = 1 << 30
    return n, len(text), text.encode()


def _check_finding(signature: str, text: str) -> str | None:
    try:
        program = parse_program_text(text, "hub")
    except ProgramError as e:
        return f"not a program ({_first_line(e)})"
    if program.meta.get("signature") != signature:
        return f"its meta.signature is {program.meta.get('signature')!r}"
    return None


def _files(directory: str) -> Iterable[str]:
    try:
        with os.scandir(directory) as it:
            return [e.name for e in it if e.is_file() and not e.name.startswith(".")]
    except OSError:
        return []


def _write_new(directory: str, name: str, data: bytes) -> bool:
    """Write ``directory/name`` unless it exists, via a temporary file beside the
    directory (else in it, with a leading dot) linked into place, so the name never shows
    a part of the file.  Raises OSError (a full disk, a read-only directory) with nothing
    left under the name."""
    target = os.path.join(directory, name)
    if os.path.exists(target):
        return False
    os.makedirs(directory, exist_ok=True)
    parent = os.path.dirname(os.path.abspath(directory))
    try:
        fd, tmp = tempfile.mkstemp(prefix=".pudthp-hub-", dir=parent)
    except OSError:
        fd, tmp = tempfile.mkstemp(prefix=".pudthp-hub-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, target)  # fails if the name appeared meanwhile: never overwrite
        except FileExistsError:
            return False
        except OSError:  # no hard links here (or across to the directory): rename
            if os.path.exists(target):
                return False
            os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return True


# --------------------------------------------------------------------------------------
# The Hypothesis example database
# --------------------------------------------------------------------------------------


class TolerantDatabase(ExampleDatabase):
    """An example database that carries on when the one it wraps cannot be reached: a
    fetch gives nothing, a save or delete is queued (up to ``limit``) and replayed at the
    next call that gets through; the first failure of each outage is said once."""

    def __init__(self, inner: ExampleDatabase, label: str,
                 say: Callable[[str], None] | None = None, limit: int = 10_000,
                 retry_seconds: float = RETRY_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.inner = inner
        self.label = label
        self.say = say or _say_stderr
        self.pending: deque[tuple[str, bytes, bytes]] = deque(maxlen=limit)
        self.retry_seconds = retry_seconds
        self.clock = clock
        self.up = True
        self.retry_at = 0.0

    def __repr__(self) -> str:
        return f"TolerantDatabase({self.inner!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TolerantDatabase) and self.inner == other.inner

    def __hash__(self) -> int:
        return hash(("TolerantDatabase", self.label))

    def _try(self, fn: Callable[[], T], default: T) -> T:
        if not self.up and self.clock() < self.retry_at:
            return default
        try:
            while self.pending:
                what, key, value = self.pending[0]
                if what == "save":
                    self.inner.save(key, value)
                else:
                    self.inner.delete(key, value)
                self.pending.popleft()
            result = fn()
        except CONNECTION_ERRORS as e:
            if self.up:
                self.say(f"example database {self.label} unreachable "
                         f"({_first_line(e)}); using the local one only until it is back")
            self.up = False
            self.retry_at = self.clock() + self.retry_seconds
            return default
        self.up = True
        return result

    def fetch(self, key: bytes) -> Iterable[bytes]:
        return self._try(lambda: list(self.inner.fetch(key)), [])

    def save(self, key: bytes, value: bytes) -> None:
        if self._try(lambda: self.inner.save(key, value) or True, False) is False:
            self.pending.append(("save", key, value))

    def delete(self, key: bytes, value: bytes) -> None:
        if self._try(lambda: self.inner.delete(key, value) or True, False) is False:
            self.pending.append(("delete", key, value))


def example_database(hub_url: str | None, local_dir: str = DEFAULT_EXAMPLE_DIR, *,
                     campaign: str = DEFAULT_CAMPAIGN,
                     say: Callable[[str], None] | None = None,
                     client: redis.Redis | None = None) -> ExampleDatabase:
    """The Hypothesis engine's example database: ``DirectoryBasedExampleDatabase`` in
    ``local_dir`` without a hub; with one, that directory and Hypothesis' own
    ``RedisExampleDatabase`` on the hub (keys ``pudthp:CAMPAIGN:hypothesis:``) together
    (``MultiplexedDatabase``: saved to both, fetched from both), the Redis one wrapped in
    ``TolerantDatabase`` so an unreachable hub leaves the local one working.  ``client``
    replaces the connection made from ``hub_url`` (tests)."""
    local = DirectoryBasedExampleDatabase(local_dir)
    if hub_url is None and client is None:
        return local
    from hypothesis.extra.redis import RedisExampleDatabase

    label = "(client)"
    if client is None:
        assert hub_url is not None
        address = parse_hub_url(hub_url)
        client = redis_client(address)
        label = address.url()
    shared = RedisExampleDatabase(client, key_prefix=f"pudthp:{campaign}:hypothesis:".encode())
    return MultiplexedDatabase(local, TolerantDatabase(shared, label, say))
