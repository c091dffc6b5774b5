"""The atheris corpus through the hub: inputs by the SHA-1 of their bytes, both ways.

``CorpusExchange`` is the corpus side of ``fuzz.hub.Hub``: each local corpus directory's
files are offered once (``HSETNX`` by content hash, and the hash appended to the hub's
corpus log), and each pull reads the log from where it left off (at most
``LOG_PER_CALL`` entries a call), asks each new input's size before fetching it (at most
``MAX_CORPUS_INPUT`` bytes, as for a push), checks that the bytes hash to their name and
writes them under that name, never over a file.  A hub holding a new data set (``reset``)
is offered everything again and its log read from the start.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fuzz import hub_values as hv
from fuzz.hub_intake import LOG_PER_CALL, PULL_BATCH
from fuzz.hub_values import MAX_CORPUS_INPUT, BadValue

if TYPE_CHECKING:
    from fuzz.hub import Hub


@dataclass
class _Corpus:
    """What this client knows of one local corpus directory."""

    seen: dict[str, str] = field(default_factory=dict)  # file name -> content hash
    hashes: set[str] = field(default_factory=set)  # contents on disk or already pulled
    offset: int = 0  # entries of the hub's corpus log already read


class CorpusExchange:
    """See the module docstring."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.corpora: dict[str, _Corpus] = {}

    def reset(self) -> None:
        for state in self.corpora.values():
            state.seen.clear()
            state.offset = 0

    def state(self, directory: str) -> _Corpus:
        return self.corpora.setdefault(os.path.abspath(directory), _Corpus())

    def push(self, directory: str) -> int:
        """Offer every file of ``directory`` not offered before (by the SHA-1 of its
        bytes); returns how many the hub did not have.  Unreachable: nothing is marked
        offered, so the next call offers them again."""
        state = self.state(directory)
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
                pipe = self.hub.r.pipeline(transaction=True)
                batch = fresh[i:i + PULL_BATCH]
                for _, h, data in batch:
                    pipe.hsetnx(self.hub.key("corpus"), h, data)
                    pipe.rpush(self.hub.key("corpus_log"), h)
                replies = pipe.execute()
                added += sum(1 for r in replies[0::2] if r)
                for name, h, _ in batch:
                    state.seen[name] = h
                    state.hashes.add(h)
            return added

        added = self.hub.call(send, None)
        return added or 0

    def pull(self, directory: str) -> int:
        """Write into ``directory`` every input another machine pushed since the last
        pull that is not there (at most ``LOG_PER_CALL`` log entries a call, each input
        at most ``MAX_CORPUS_INPUT`` bytes, asked before it is fetched), named by its
        SHA-1 (written to a temporary file first, so libFuzzer's ``-reload`` never reads
        half a file); returns how many were written."""
        state = self.state(directory)

        def fetch() -> list[tuple[str, bytes]]:
            got: list[tuple[str, bytes]] = []
            key = self.hub.key("corpus_log")
            offset = state.offset  # kept only when every batch came: none is skipped
            if self.hub.r.llen(key) < offset:  # the log was emptied: read it afresh
                offset = 0
            while offset - state.offset < LOG_PER_CALL:
                raw = self.hub.r.lrange(key, offset, offset + PULL_BATCH - 1)
                if not raw:
                    break
                offset += len(raw)
                want: set[str] = set()
                for r in raw:
                    try:
                        want.add(hv.corpus_hash(r))
                    except BadValue as e:
                        self.hub.bad(str(e))
                hashes = sorted(want - state.hashes)
                if not hashes:
                    continue
                pipe = self.hub.r.pipeline(transaction=False)
                for h in hashes:
                    pipe.hstrlen(self.hub.key("corpus"), h)
                sizes = pipe.execute()
                small = [h for h, n in zip(hashes, sizes, strict=True)
                         if 0 < n <= MAX_CORPUS_INPUT]
                for h, n in zip(hashes, sizes, strict=True):
                    if n > MAX_CORPUS_INPUT:
                        state.hashes.add(h)
                        self.hub.bad(f"a corpus input of {n} bytes, over the limit of "
                                 f"{MAX_CORPUS_INPUT}")
                if small:
                    datas: list[Any] = self.hub.r.hmget(self.hub.key("corpus"), small)
                    got += [(h, d) for h, d in zip(small, datas, strict=True)
                            if isinstance(d, bytes) and len(d) <= MAX_CORPUS_INPUT]
            state.offset = offset
            return got

        written = 0
        nothing: list[tuple[str, bytes]] = []
        before = state.offset
        for h, data in self.hub.call(fetch, nothing):
            if hashlib.sha1(data).hexdigest() != h:
                state.hashes.add(h)
                continue
            try:
                new = _write_new(directory, h, data)
            except OSError as e:  # a full disk: read the log again next time
                state.offset = before
                self.hub.cannot_write(directory, e)
                return written
            state.hashes.add(h)
            written += new
            state.seen[h] = h
        self.hub.write_problems.pop(directory, None)
        return written


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
