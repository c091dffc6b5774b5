"""The Hypothesis engine's example database with a hub: the local directory and the hub's
Redis together, the Redis one carrying on locally while the hub cannot be reached.

Values fetched from the hub are passed over when larger than ``MAX_EXAMPLE_BYTES`` (a
choice sequence Hypothesis saved is a few kilobytes; it also drops what it cannot decode).
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import TypeVar

import redis
from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    MultiplexedDatabase,
)

from fuzz.hub_address import parse_hub_url, ping, redis_client

DEFAULT_CAMPAIGN = "main"
DEFAULT_EXAMPLE_DIR = "corpus/hypothesis"
RETRY_SECONDS = 10.0
MAX_EXAMPLE_BYTES = 1 << 20
MAX_EXAMPLES = 10_000  # values of one key taken from the hub
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    # every error reply too: a hub whose disk is full answers MISCONF, one out of memory
    # OOM, a replica READONLY; for a campaign they all mean "not now, try again later"
    redis.exceptions.RedisError,
    OSError,
)

T = TypeVar("T")


def say_stderr(line: str) -> None:
    """The default ``say``: the client's lines are bare, the caller names the program."""
    import sys

    print(f"pudthp: {line}", file=sys.stderr, flush=True)


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)


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
        self.say = say or say_stderr
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
                         f"({first_line(e)}); using the local one only until it is back")
            self.up = False
            self.retry_at = self.clock() + self.retry_seconds
            return default
        self.up = True
        return result

    def fetch(self, key: bytes) -> Iterable[bytes]:
        nothing: list[bytes] = []
        values = self._try(lambda: list(self.inner.fetch(key)), nothing)
        return [v for v in values[:MAX_EXAMPLES]
                if isinstance(v, bytes) and len(v) <= MAX_EXAMPLE_BYTES]

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
        with contextlib.suppress(*CONNECTION_ERRORS):
            ping(client)  # picks the user to log in as; unreachable: said at first use
    # the change events go to a channel of the campaign: the only ones the hub lets it use
    prefix = f"pudthp:{campaign}:hypothesis:"
    shared = RedisExampleDatabase(client, key_prefix=prefix.encode(),
                                  listener_channel=prefix + "changes")
    return MultiplexedDatabase(local, TolerantDatabase(shared, label, say))
