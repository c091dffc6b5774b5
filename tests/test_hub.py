"""The hub client (``fuzz/hub.py``) against ``fakeredis``: URLs, the code version, the
campaign record, seed blocks, findings (the shorter kept, pulled without overwriting),
corpus crossing, the stats stream, the Hypothesis example database, and the unreachable
mode (a fake server switched off and on: said once, nothing lost)."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hub_tools import MetaReplayer
from hypothesis.database import DirectoryBasedExampleDatabase, MultiplexedDatabase

from fuzz.archive import archive, finding_path
from fuzz.hub import (
    Hub,
    HubError,
    HubRefused,
    TolerantDatabase,
    code_version,
    example_database,
    parse_hub_url,
)
from fuzz.stats import Sample, StatsWriter

CODE = "c0de" * 16


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_hub(server: fakeredis.FakeServer, machine: str, said: list[str] | None = None,
             clock: Clock | None = None) -> Hub:
    sink = said if said is not None else []
    return Hub(fakeredis.FakeRedis(server=server), label="redis://fake:6379/0",
               machine=machine, say=sink.append, retry_seconds=5.0,
               clock=clock or Clock(), replayer=MetaReplayer())


def stats(machine: str, programs: int) -> dict[str, Any]:
    """A valid stats record (``fuzz.stats``) of ``machine`` with ``programs``."""
    return StatsWriter(None, machine, "atheris").record(Sample(programs, programs, 0))


def finding_text(signature: str, nops: int, machine: str = "m") -> str:
    ops: list[dict[str, Any]] = [{"op": "mmap", "mm": 0, "start": 0, "npages": 8,
                                  "prot": "rw"}]
    ops += [{"op": "write", "mm": 0, "addr": i % 8, "value": i} for i in range(nops - 1)]
    return json.dumps({"format": "pudthp-program/1", "config": {"geometry": "tiny"},
                       "ops": ops, "meta": {"signature": signature, "machine": machine}},
                      indent=1) + "\n"


# -- URLs and the code version ---------------------------------------------------------


def test_hub_urls_parse_and_bad_ones_name_the_form_without_the_password() -> None:
    a = parse_hub_url("redis://:s3cret@lab-1:6400/2")
    assert (a.host, a.port, a.db, a.password) == ("lab-1", 6400, 2, "s3cret")
    assert a.url() == "redis://:***@lab-1:6400/2"
    b = parse_hub_url("redis://127.0.0.1")
    assert (b.host, b.port, b.db, b.password) == ("127.0.0.1", 6379, 0, None)
    for bad in ("http://h:1/0", "redis://:1/0", "redis://h:99999/0", "redis://h:1/x",
                "redis://user:s3cret@h:1/0", "redis://h:1/0?x=1", "lab-1:6379"):
        with pytest.raises(HubError) as e:
            parse_hub_url(bad)
        msg = str(e.value)
        assert "redis://[:PASSWORD@]HOST:PORT/DB" in msg
        assert "\n" not in msg
        assert "s3cret" not in msg


def test_the_code_version_is_deterministic_and_sees_every_source_change(
        tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    (root / "sub").mkdir(parents=True)
    (root / "a.py").write_text("x = 1\n")
    (root / "sub" / "b.py").write_text("y = 2\n")
    (root / "notes.txt").write_text("not a source")
    first = code_version({"pkg": root})
    assert first == code_version({"pkg": root})
    (root / "notes.txt").write_text("changed, but not a source")
    (root / "__pycache__").mkdir()
    (root / "__pycache__" / "c.py").write_text("cache")
    assert code_version({"pkg": root}) == first
    (root / "sub" / "b.py").write_text("y = 3\n")
    assert code_version({"pkg": root}) != first
    (root / "sub" / "b.py").write_text("y = 2\n")
    (root / "sub" / "b.py").rename(root / "b.py")  # same bytes, another path
    assert code_version({"pkg": root}) != first
    # the installed packages: a 64-digit hex hash, the same twice
    assert len(code_version()) == 64
    assert code_version() == code_version()


# -- the campaign record and seeds -----------------------------------------------------


def test_the_first_machine_creates_the_record_and_other_code_is_refused() -> None:
    server = fakeredis.FakeServer()
    a, b, c = (make_hub(server, m) for m in ("a", "b", "c"))
    rec = a.join("atheris", {"deposit": "list_head"}, code=CODE)
    assert rec is not None
    assert (rec.code, rec.engine, rec.overrides, rec.created_by) == (
        CODE, "atheris", {"deposit": "list_head"}, "a")
    again = b.join("hypothesis", {}, code=CODE)  # same code: joins the first's record
    assert again is not None
    assert (again.engine, again.created_by) == ("atheris", "a")
    with pytest.raises(HubRefused) as e:
        c.join("atheris", {}, code="f" * 64)
    assert "c0dec0dec0de" in str(e.value)
    assert "ffffffffffff" in str(e.value)
    assert "\n" not in str(e.value)
    # the refused machine no longer talks to the hub; the others see two machines
    assert c.push_finding("sig", finding_text("sig", 2)) == "off"
    assert set(a.machines()) == {"a", "b"}
    assert a.machines()["b"]["engine"] == "hypothesis"


def test_a_kernel_campaign_refuses_another_kernel_unless_told() -> None:
    # The first machine's kernel release is the campaign's: a machine on another release,
    # or a model campaign, is refused with both named; told to mix, it joins.
    server = fakeredis.FakeServer()
    a, b, c, d = (make_hub(server, m) for m in ("a", "b", "c", "d"))
    rec = a.join("hypothesis", {}, code=CODE, kernel="6.18.44")
    assert rec is not None
    assert rec.kernel == "6.18.44"
    same = b.join("atheris", {}, code=CODE, kernel="6.18.44")
    assert same is not None
    with pytest.raises(HubRefused) as e:
        c.join("hypothesis", {}, code=CODE, kernel="7.2.0")
    assert "kernel 6.18.44" in str(e.value)
    assert "kernel 7.2.0" in str(e.value)
    with pytest.raises(HubRefused, match="the model alone"):
        make_hub(server, "e").join("hypothesis", {}, code=CODE)
    mixed = d.join("hypothesis", {}, code=CODE, kernel="7.2.0", mix_kernels=True)
    assert mixed is not None
    assert mixed.kernel == "6.18.44"  # the record stays the first machine's
    # a model campaign's record refuses a kernel campaign the same way
    other = fakeredis.FakeServer()
    assert make_hub(other, "m").join("hypothesis", {}, code=CODE) is not None
    with pytest.raises(HubRefused, match="the model alone"):
        make_hub(other, "k").join("hypothesis", {}, code=CODE, kernel="6.18.44")


def test_seed_blocks_are_disjoint_across_machines_and_threads() -> None:
    server = fakeredis.FakeServer()
    hubs = [make_hub(server, f"m{i}") for i in range(8)]
    for h in hubs:
        h.join("hypothesis", {}, code=CODE)
    starts: list[int] = []
    lock = threading.Lock()

    def take(h: Hub) -> None:
        for _ in range(5):
            s = h.seed_block(1000)
            assert s is not None
            with lock:
                starts.append(s)

    threads = [threading.Thread(target=take, args=(h,)) for h in hubs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 40 blocks of 1000 from one counter starting at 0: exactly the multiples of 1000
    assert sorted(starts) == [1000 * i for i in range(40)]
    assert hubs[0].machines()["m0"]["seeds"][1] - hubs[0].machines()["m0"]["seeds"][0] == 1000


# -- findings --------------------------------------------------------------------------


@pytest.mark.parametrize("order", ["long_first", "short_first"])
def test_the_shorter_program_of_a_signature_is_kept_whatever_the_order(order: str) -> None:
    server = fakeredis.FakeServer()
    a, b = make_hub(server, "a"), make_hub(server, "b")
    long, short = finding_text("inv:x", 7, "a"), finding_text("inv:x", 3, "b")
    if order == "long_first":
        assert a.push_finding("inv:x", long) == "stored"
        assert b.push_finding("inv:x", short) == "stored"
    else:
        assert b.push_finding("inv:x", short) == "stored"
        assert a.push_finding("inv:x", long) == "kept"
    assert a.finding("inv:x") == short
    assert b.push_finding("inv:x", short) == "kept"  # the same text again changes nothing
    assert a.signatures() == {"inv:x"}


def test_equal_lengths_keep_the_same_program_on_every_machine() -> None:
    # 3 ops each and the same length: the smaller text wins, whoever pushes first.
    t1, t2 = finding_text("s", 3, "m1"), finding_text("s", 3, "m2")
    assert len(t1) == len(t2)
    winner = min(t1, t2)
    for first, second in ((t1, t2), (t2, t1)):
        hub = make_hub(fakeredis.FakeServer(), "x")
        hub.push_finding("s", first)
        hub.push_finding("s", second)
        assert hub.finding("s") == winner


def test_concurrent_pushes_of_one_signature_keep_the_shortest() -> None:
    server = fakeredis.FakeServer()
    hubs = [make_hub(server, f"m{i}") for i in range(6)]
    threads = [threading.Thread(target=h.push_finding,
                                args=("sig", finding_text("sig", 12 - i, f"m{i}")))
               for i, h in enumerate(hubs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kept = hubs[0].finding("sig")
    assert kept is not None
    assert len(json.loads(kept)["ops"]) == 7  # 12 - 5, machine m5's


def test_pull_copies_what_is_missing_and_never_overwrites(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    a, b = make_hub(server, "a"), make_hub(server, "b")
    a.push_finding("one", finding_text("one", 2, "a"))
    a.push_finding("two", finding_text("two", 4, "a"))
    mine = tmp_path / "b-findings"
    mine.mkdir()
    local_two = finding_text("two", 9, "b")  # b's own, longer: stays as it is
    path_two, _ = archive(str(mine), "two", local_two)
    written = b.pull_findings(str(mine))
    assert written == [finding_path(str(mine), "one")]
    assert Path(written[0]).read_text() == finding_text("one", 2, "a")
    assert Path(path_two).read_text() == local_two
    assert b.pull_findings(str(mine)) == []  # nothing new the second time
    assert b.pull_findings(str(tmp_path / "other"), have={"one", "two"}) == []


def test_a_hub_entry_that_is_not_a_program_of_its_signature_is_skipped(
        tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    said: list[str] = []
    a, b = make_hub(server, "a"), make_hub(server, "b", said)
    a.push_finding("bad", "{not json")
    a.push_finding("other", finding_text("not-other", 2))
    assert b.pull_findings(str(tmp_path)) == []
    assert not list(tmp_path.iterdir())
    assert len(said) == 2
    assert all("ignored" in s for s in said)


def test_push_archive_offers_every_local_finding(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    a = make_hub(server, "a")
    for sig, n in (("p", 2), ("q", 3)):
        archive(str(tmp_path), sig, finding_text(sig, n))
    (tmp_path / "junk.json").write_text("{")
    assert a.push_archive(str(tmp_path)) == 2
    assert make_hub(server, "b").signatures() == {"p", "q"}


# -- the corpus and the stats stream ----------------------------------------------------


def test_corpus_files_cross_between_machines_by_content(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    a, b = make_hub(server, "a"), make_hub(server, "b")
    da, db = tmp_path / "a", tmp_path / "b"
    da.mkdir()
    db.mkdir()
    (da / "x").write_bytes(b"\x01\x02")
    (da / "y").write_bytes(b"\x03")
    (db / "z").write_bytes(b"\x04\x05\x06")
    (db / "same-as-x").write_bytes(b"\x01\x02")
    assert a.push_corpus(str(da)) == 2
    assert b.push_corpus(str(db)) == 1  # its copy of x's bytes was there already
    assert a.push_corpus(str(da)) == 0  # nothing new on disk
    assert a.pull_corpus(str(da)) == 1  # z
    assert b.pull_corpus(str(db)) == 1  # y; x's bytes it has under another name
    import hashlib

    assert (da / hashlib.sha1(b"\x04\x05\x06").hexdigest()).read_bytes() == b"\x04\x05\x06"
    assert (db / hashlib.sha1(b"\x03").hexdigest()).read_bytes() == b"\x03"
    assert sorted(os.listdir(da)) == sorted(["x", "y", hashlib.sha1(b"\x04\x05\x06").hexdigest()])
    assert a.pull_corpus(str(da)) == 0
    assert b.push_corpus(str(db)) == 0  # what it pulled is not pushed back
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".pudthp")]


def test_stats_records_go_to_one_stream_in_order() -> None:
    server = fakeredis.FakeServer()
    a, b = make_hub(server, "a"), make_hub(server, "b")
    a.push_stats(stats("a", 1))
    b.push_stats(stats("b", 5))
    a.push_stats(stats("a", 2))
    assert [(r["machine"], r["programs"]) for r in b.read_stats()] == [
        ("a", 1), ("b", 5), ("a", 2)]


# -- unreachable -------------------------------------------------------------------------


def test_an_unreachable_hub_is_said_once_queued_and_flushed_on_reconnection(
        tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    said: list[str] = []
    clock = Clock()
    a = make_hub(server, "a", said, clock)
    other = make_hub(server, "other")
    assert a.join("atheris", {}, code=CODE) is not None
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "in1").write_bytes(b"one")
    server.connected = False
    # every call carries on locally; the first failure is said once, in one line
    assert a.push_finding("s1", finding_text("s1", 3)) == "queued"
    assert a.push_finding("s2", finding_text("s2", 2)) == "queued"
    assert a.push_stats(stats("a", 1)) == "queued"
    assert a.push_corpus(str(corpus)) == 0
    assert a.pull_corpus(str(corpus)) == 0
    assert a.pull_findings(str(tmp_path / "f")) == []
    assert a.seed_block(10, fallback=77) == 77
    assert a.signatures() == set()  # the hub's set, which it cannot read now
    assert len(said) == 1
    assert "unreachable" in said[0]
    assert "\n" not in said[0]
    # back, but before the retry time: still local, still queued
    server.connected = True
    clock.t += 1
    assert a.push_stats(stats("a", 2)) == "queued"
    assert a.pending() == 4
    # after the retry time the next call reconnects and flushes in order
    clock.t += 5
    assert a.push_corpus(str(corpus)) == 1  # in1, offered again
    assert a.pending() == 0
    assert len(said) == 2
    assert "reachable again; 4 queued item(s) pushed" in said[1]
    assert other.signatures() == {"s1", "s2"}
    assert [r["programs"] for r in other.read_stats()] == [1, 2]
    assert other.pull_corpus(str(tmp_path / "other-corpus")) == 1


def test_a_hub_down_at_the_start_checks_the_code_when_it_comes_back() -> None:
    server = fakeredis.FakeServer()
    make_hub(server, "first").join("hypothesis", {}, code=CODE)
    said: list[str] = []
    clock = Clock()
    late = make_hub(server, "late", said, clock)
    server.connected = False
    assert late.join("hypothesis", {}, code="e" * 64) is None  # unknown yet: carry on
    assert late.push_finding("s", finding_text("s", 2)) == "queued"
    server.connected = True
    clock.t += 10
    assert late.push_stats(stats("a", 1)) == "off"  # reconnected, re-joined, refused
    assert late.refused is not None
    assert any("runs code c0dec0dec0de" in s for s in said)
    assert make_hub(server, "x").signatures() == set()  # nothing of the refused machine


def test_connect_checks_the_password_and_tolerates_no_server() -> None:
    said: list[str] = []
    # nothing listens on port 1: said once, not an error
    hub = Hub.connect("redis://127.0.0.1:1/0", machine="m", say=said.append)
    assert not hub.up
    assert len(said) == 1
    assert "redis://127.0.0.1:1/0 unreachable" in said[0]
    with pytest.raises(HubError):
        Hub.connect("redis://127.0.0.1:1/x")


# -- the Hypothesis example database ----------------------------------------------------


def test_example_database_is_a_local_directory_without_a_hub(tmp_path: Path) -> None:
    db = example_database(None, str(tmp_path / "hyp"))
    assert isinstance(db, DirectoryBasedExampleDatabase)
    db.save(b"k", b"v")
    assert list(example_database(None, str(tmp_path / "hyp")).fetch(b"k")) == [b"v"]


def test_example_database_on_the_hub_is_shared_and_keeps_a_local_copy(
        tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    one = example_database("redis://ignored:1/0", str(tmp_path / "one"),
                           client=fakeredis.FakeRedis(server=server))
    two = example_database("redis://ignored:1/0", str(tmp_path / "two"),
                           client=fakeredis.FakeRedis(server=server))
    assert isinstance(one, MultiplexedDatabase)
    one.save(b"key", b"choices-1")
    assert set(two.fetch(b"key")) == {b"choices-1"}  # through the hub
    local = example_database(None, str(tmp_path / "one"))
    assert set(local.fetch(b"key")) == {b"choices-1"}  # and on disk
    keys = fakeredis.FakeRedis(server=server).keys("pudthp:main:hypothesis:*")
    assert keys


def test_the_shared_example_database_carries_on_when_the_hub_is_down(
        tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    said: list[str] = []
    clock = Clock()
    from hypothesis.extra.redis import RedisExampleDatabase

    inner = RedisExampleDatabase(fakeredis.FakeRedis(server=server))
    db = TolerantDatabase(inner, "fake", said.append, retry_seconds=5.0, clock=clock)
    server.connected = False
    db.save(b"k", b"a")
    db.save(b"k", b"b")
    db.delete(b"k", b"a")
    assert list(db.fetch(b"k")) == []
    assert len(said) == 1
    server.connected = True
    clock.t += 6
    assert set(db.fetch(b"k")) == {b"b"}  # replayed in order: a saved, b saved, a deleted
    assert set(inner.fetch(b"k")) == {b"b"}


def test_a_hub_that_lost_its_data_gets_the_record_back_on_reconnection() -> None:
    server = fakeredis.FakeServer()
    clock = Clock()
    a = make_hub(server, "a", clock=clock)
    a.join("atheris", {}, code=CODE)
    server.connected = False
    assert a.push_finding("s", finding_text("s", 2)) == "queued"
    server.connected = True
    fakeredis.FakeRedis(server=server).flushall()  # a hub restarted without its data
    clock.t += 10
    assert a.push_stats(stats("a", 1)) == "stored"
    with pytest.raises(HubRefused):
        make_hub(server, "b").join("atheris", {}, code="f" * 64)
    assert make_hub(server, "c").signatures() == {"s"}
