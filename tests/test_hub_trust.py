"""What comes from the hub is not trusted until it is replayed here (``fuzz/hub_intake.py``,
``fuzz/hub_replay.py``, ``fuzz/hub_values.py``), against ``fakeredis`` written to as a
hostile peer holding the password would: a bare signature suppresses nothing; a finding
that does not reproduce its signature is said once (naming who pushed it), never written,
never retried, and a shorter one on the hub that does not reproduce is replaced; hostile
programs are replayed within time and memory bounds; every other value read back (the
record, machine entries, log entries, seed counters, corpus inputs, stats records) is
checked and a bad one passed over in one line; text printed from the hub is escaped; a
hub restarted empty is repopulated; an exchange costs the same whatever the hub's
signature set holds."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import fakeredis
import pytest
import redis
from hub_tools import FAULT_SIGNATURE, real_finding

from fuzz.archive import finding_path
from fuzz.engine_hypothesis import Campaign, HypothesisEngine
from fuzz.hub import Hub
from fuzz.hub_replay import Candidate, Replayer
from fuzz.link import CampaignLink, LinkError
from fuzz.stats import Sample, StatsWriter
from fuzz.supervisor import Supervisor
from harness.limits import rss_mb
from harness.runner import run_program

WRITE, READ = FAULT_SIGNATURE.format(op="write"), FAULT_SIGNATURE.format(op="read")
KEY = "pudthp:main:"
CODE = "c0de" * 16


class CountingReplayer(Replayer):
    """The real replayer, counting what it starts."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.started: list[Candidate] = []

    def start(self, c: Candidate) -> None:
        self.started.append(c)
        super().start(c)


def make_hub(server: fakeredis.FakeServer, machine: str, said: list[str],
             **replay: Any) -> Hub:
    return Hub(fakeredis.FakeRedis(server=server), label="redis://fake:6379/0",
               machine=machine, say=said.append, replayer=CountingReplayer(**replay))


def make_link(server: fakeredis.FakeServer, root: Path, machine: str,
              said: list[str]) -> CampaignLink:
    hub = make_hub(server, machine, said)
    findings, corpus = root / machine / "findings", root / machine / "corpus"
    findings.mkdir(parents=True)
    corpus.mkdir()
    return CampaignLink(str(findings), str(corpus), said.append, hub=hub,
                        stats=StatsWriter(None, machine, "atheris"))


def peer(server: fakeredis.FakeServer) -> redis.Redis:
    """A hostile peer's connection: it writes whatever it likes under the campaign."""
    return fakeredis.FakeRedis(server=server)


def plant_finding(r: redis.Redis, signature: str, text: str, machine: str = "evil") -> None:
    key = KEY + "finding:" + hashlib.sha256(signature.encode()).hexdigest()
    r.hset(key, mapping={"signature": signature, "text": text, "ops": 0,
                         "machine": machine, "pushed": "x"})
    r.sadd(KEY + "signatures", signature)
    r.rpush(KEY + "findings_log", signature)


def zero_ops(signature: str) -> str:
    """A valid program of no ops filed under ``signature``: it ranks before any real one."""
    return json.dumps({"format": "pudthp-program/1", "config": {"geometry": "small"},
                       "ops": [], "meta": {"signature": signature}}) + "\n"


def clean(lines: list[str]) -> None:
    """Every line said is one line of printable text (no escape sequence reached it)."""
    for line in lines:
        assert line.isprintable(), repr(line)


def test_a_bare_signature_never_suppresses_a_local_finding(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    evil = peer(server)
    for sig in (WRITE, READ):  # signatures with no program behind them
        evil.sadd(KEY + "signatures", sig)
        evil.rpush(KEY + "findings_log", sig)
    said: list[str] = []
    link = make_link(server, tmp_path, "a", said)
    link.start("hypothesis", {}, None, 1)
    assert link.verified() == set()
    assert os.listdir(link.findings_dir) == []
    # the engine's workers start knowing nothing of those signatures: a program that
    # meets one is this machine's finding (before, the hub's set was taken as known)
    c = Campaign(1.0, 1, {}, link.findings_dir, 0, link=link)
    sup = Supervisor(HypothesisEngine(c), c)
    sup.tell_hub_known()
    assert sup.known == {}
    assert link.exchange() == []
    clean(said)


def test_a_finding_that_does_not_reproduce_is_said_once_and_never_used(
        tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    plant_finding(peer(server), WRITE, zero_ops(WRITE), machine="evil\x1b[2J")
    said: list[str] = []
    hub = make_hub(server, "b", said)
    target = tmp_path / "findings"
    for _ in range(3):
        assert hub.pull_findings(str(target)) == []
    assert not target.exists() or os.listdir(target) == []
    assert isinstance(hub.intake.replayer, CountingReplayer)
    assert len(hub.intake.replayer.started) == 1  # replayed once, not at every exchange
    lines = [line for line in said if "does not reproduce" in line]
    assert len(lines) == 1, said
    assert "pushed by machine evil\\x1b[2J" in lines[0]  # named, escaped
    assert "its replay found nothing" in lines[0]
    clean(said)


def test_a_shorter_program_that_does_not_reproduce_is_replaced(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    plant_finding(peer(server), WRITE, zero_ops(WRITE))
    said: list[str] = []
    a = make_hub(server, "a", said)
    _, mine = real_finding("write", 3)
    assert a.push_finding(WRITE, mine) == "kept"  # the 0-op program ranks first ...
    a.pull_findings(str(tmp_path / "a"), have={WRITE})  # ... until it is replayed
    assert a.finding(WRITE) == mine
    assert any("replaced the program of machine evil" in line for line in said), said
    # another machine now copies a program that reproduces
    c = make_hub(server, "c", said)
    written = c.pull_findings(str(tmp_path / "c"))
    assert len(written) == 1
    assert Path(written[0]).read_text() == mine
    from harness.program import load_program_file

    finding = run_program(load_program_file(written[0]), "ref").finding
    assert finding is not None
    assert finding.signature == WRITE
    clean(said)


def test_hostile_programs_are_replayed_within_time_and_memory_bounds(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    evil = peer(server)
    # nearly 8 MiB: a mapping and reads of it, no finding at all (a correct design), filed
    # under READ: a long replay, cut at its time limit or ending with nothing found
    ops = [{"op": "mmap", "mm": 0, "start": 0, "npages": 64, "prot": "rw"}]
    ops += [{"op": "read", "mm": 0, "addr": i % 64} for i in range(215_000)]
    long_text = json.dumps({"format": "pudthp-program/1", "config": {"geometry": "small"},
                            "ops": ops, "meta": {"signature": READ}})
    assert 7 << 20 < len(long_text) <= 8 << 20
    plant_finding(evil, READ, long_text)
    # a program asking for gigabytes: 64 PUD THPs written at x86_64 geometry (1 GiB each in
    # the model's page arrays): over any sane memory limit long before its end
    big = [{"op": "mmap", "mm": 0, "start": 0, "npages": 64 << 18, "prot": "rw"}]
    big += [{"op": "write", "mm": 0, "addr": i << 18, "value": i} for i in range(64)]
    greedy = "invariant:write:greedy"
    plant_finding(evil, greedy, json.dumps({
        "format": "pudthp-program/1", "config": {"geometry": "x86_64"}, "ops": big,
        "meta": {"signature": greedy}}))
    # and one over the size limit, never even fetched
    huge = "invariant:write:huge"
    plant_finding(evil, huge, "x" * (9 << 20))
    said: list[str] = []
    hub = make_hub(server, "b", said, seconds=5.0, max_rss=300)
    before = rss_mb()
    assert hub.pull_findings(str(tmp_path / "f"), wait=120.0) == []
    assert rss_mb() - before < 64  # the replays ran elsewhere
    lines = {line.split(" pushed by")[0].removeprefix("hub finding "): line for line in said
             if "does not reproduce" in line}
    assert set(lines) == {READ, greedy}, said
    assert "limit" in lines[greedy] or "did not end" in lines[greedy], lines[greedy]
    assert any("over the limit of 8388608" in line for line in said), said
    assert isinstance(hub.intake.replayer, CountingReplayer)
    assert {c.signature for c in hub.intake.replayer.started} == {READ, greedy}
    clean(said)


def test_every_value_read_from_the_hub_is_checked(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    evil = peer(server)
    said: list[str] = []
    link = make_link(server, tmp_path, "a", said)
    link.start("atheris", {}, None, 1)
    hub = link.hub
    assert hub is not None
    # log entries: not UTF-8, too long, an escape sequence
    for junk in (b"\xff\xfe", b"s" * 100_000, b"sig\x1b]0;owned\x07"):
        evil.rpush(KEY + "findings_log", junk)
    # machine entries: deep JSON, not JSON, a huge number, a bad name
    evil.hset(KEY + "machines", mapping={"m1": "[" * 100_000, "m2": "{", "m3": json.dumps(
        {"ends": 1e308, "finished": None}), "m4\x1b": "{}", "m5": json.dumps(
        {"seeds": [-5, 10]})})
    # corpus: a bad hash (a path), an input over the size limit under its real hash
    big = b"\x01" * ((1 << 20) + 1)
    evil.rpush(KEY + "corpus_log", "../../etc/passwd", hashlib.sha1(big).hexdigest())
    evil.hset(KEY + "corpus", mapping={"../../etc/passwd": b"x",
                                       hashlib.sha1(big).hexdigest(): big})
    # stats: deep, a number too long to print, not JSON, valid
    good = StatsWriter(None, "m", "atheris").record(Sample(1, 1, 0))
    for entry in ("[" * 50_000, '{"count": ' + "9" * 5000 + "}", "\xff", json.dumps(good)):
        evil.xadd(KEY + "stats", {"json": entry})
    # the seed counter
    evil.set(KEY + "seeds", "not a number")
    assert link.exchange() == []
    machines = hub.machines()
    assert set(machines) == {"a"}
    assert hub.read_stats() == [good]
    assert hub.stats_skipped == 3
    assert os.listdir(link.corpus_dir or "") == []
    assert not (tmp_path / "etc").exists()
    assert hub.seed_block(10) is not None
    clean(said)
    assert len(said) <= 25  # each problem once, then silence
    assert any("over the limit of 1048576" in line for line in said), said


def test_a_junk_campaign_record_refuses_in_one_line(tmp_path: Path) -> None:
    for junk in ("[" * 100_000, "\xff", json.dumps({"code": "x", "engine": "e"}),
                 json.dumps({"code": CODE, "engine": "atheris", "overrides": {"deposit": 1},
                             "created": "t", "created_by": "m"})):
        server = fakeredis.FakeServer()
        peer(server).set(KEY + "record", junk)
        said: list[str] = []
        link = make_link(server, tmp_path / str(len(junk)), "a", said)
        with pytest.raises(LinkError) as e:
            link.start("atheris", {}, None, 1)
        assert "\n" not in str(e.value)
        assert str(e.value).isprintable()
        assert "the campaign record" in str(e.value)


def test_seed_blocks_never_go_negative_or_repeat_a_recorded_block() -> None:
    server = fakeredis.FakeServer()
    said: list[str] = []
    a = make_hub(server, "a", said)
    a.join("atheris", {}, code=CODE)
    first = a.seed_block(1000)
    assert first == 0
    for counter in ("-5000", "junk", str(1 << 60), "0"):
        peer(server).set(KEY + "seeds", counter)
        b = make_hub(server, f"b{counter}", said)
        b.join("atheris", {}, code=CODE)
        start = b.seed_block(1000)
        assert start is not None
        # never below 0, never inside a block another machine recorded
        others = [v["seeds"] for m, v in b.machines().items()
                  if m != b.machine and v.get("seeds")]
        assert start >= 0
        assert all(end <= start for _, end in others), (start, others)
    clean(said)


def test_a_hub_restarted_empty_is_repopulated_by_content(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    said: list[str] = []
    a = make_link(server, tmp_path, "a", said)
    assert a.corpus_dir is not None
    Path(a.corpus_dir, "in1").write_bytes(b"an input")
    seed_a = a.start("atheris", {}, None, 1)
    sig, text = real_finding("read", 2)
    path = Path(a.findings_dir, "f.json")
    path.write_text(text)
    a.archived(sig, str(path))
    a.exchange()
    peer(server).flushall()  # the hub restarted without its data
    a.exchange()  # sees a new data set: offers everything again, by content
    assert any("another data set" in line for line in said), said
    b_said: list[str] = []
    b = make_link(server, tmp_path, "b", b_said)
    assert b.corpus_dir is not None
    seed_b = b.start("atheris", {}, None, 1)
    assert seed_b >= seed_a + (1 << 20)  # a's block was recorded again first
    assert [s for s, _ in b.pulled] == [sig]
    assert os.listdir(b.corpus_dir) == [hashlib.sha1(b"an input").hexdigest()]


def test_an_exchange_costs_the_same_whatever_the_hubs_signature_set_holds(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real_execute = redis.Redis.execute_command
    real_pipeline = redis.client.Pipeline.execute

    def execute(self: Any, *args: Any, **kw: Any) -> Any:
        calls.append(str(args[0]).upper())
        return real_execute(self, *args, **kw)

    def pipeline(self: Any, *args: Any, **kw: Any) -> Any:
        calls.append("PIPELINE")
        return real_pipeline(self, *args, **kw)

    monkeypatch.setattr(redis.Redis, "execute_command", execute)
    monkeypatch.setattr(redis.client.Pipeline, "execute", pipeline)
    counts = []
    for junk in (0, 200_000):
        server = fakeredis.FakeServer()
        if junk:
            pipe = peer(server).pipeline(transaction=False)
            for i in range(0, junk, 10_000):
                pipe.sadd(KEY + "signatures", *(f"junk:{j}" for j in range(i, i + 10_000)))
            pipe.execute()
        said: list[str] = []
        link = make_link(server, tmp_path / str(junk), "a", said)
        link.start("atheris", {}, None, 1)
        calls.clear()
        for _ in range(5):
            link.exchange()
        counts.append(list(calls))
        assert not {"SMEMBERS", "SSCAN", "SCARD"} & set(calls)
    assert counts[0] == counts[1]


def test_hub_pull_passes_over_hostile_stats_and_findings(tmp_path: Path) -> None:
    import subprocess
    import sys

    from hub_tools import start, stop

    from fuzz.hub_address import parse_hub_url, redis_client

    proc, url = start(tmp_path / "hub")
    try:
        r = redis_client(parse_hub_url(url))  # a peer with the password
        good = StatsWriter(None, "m", "atheris").record(Sample(1, 1, 0))
        for entry in ("[" * 50_000, json.dumps(dict(good, count=10**400 // 10**300)),
                      json.dumps(dict(good, time=1e300)),
                      json.dumps(dict(good, machine="x" * 10**6)), json.dumps(good)):
            r.xadd(KEY + "stats", {"json": entry})
        plant_finding(r, WRITE, zero_ops(WRITE), machine="evil")
        sig, text = real_finding("read", 2)
        plant_finding(r, sig, text, machine="honest")
        r.close()
        out = subprocess.run([sys.executable, "-m", "pudthp_cli", "hub", "pull", url,
                              "--findings", str(tmp_path / "f"), "--stats",
                              str(tmp_path / "s.jsonl")],
                             capture_output=True, text=True, timeout=300, check=False)
    finally:
        stop(proc)
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    assert "1 copied to" in out.stdout
    assert "4 entries of the stream were not valid stats records" in out.stdout
    assert [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()
            ] == [good]
    errs = out.stderr.strip().splitlines()
    assert len(errs) == 1, out.stderr
    assert "pushed by machine evil does not reproduce" in errs[0]
    assert [str(p) for p in (tmp_path / "f").iterdir()] == [
        finding_path(str(tmp_path / "f"), sig)]
