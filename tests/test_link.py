"""A campaign's link to the hub and the stats file (``fuzz/link.py``) against ``fakeredis``:
seed blocks at the start, findings both ways (the shorter kept on the hub, never a local
file overwritten), the corpus crossing, stats records to the file and the hub's stream,
a hub lost and back mid-campaign (nothing lost), and the one-line errors that keep a
campaign from starting."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hub_tools import MetaReplayer

from fuzz.archive import archive
from fuzz.hub import SEED_BLOCK, Hub
from fuzz.link import CampaignLink, LinkError, LinkOptions
from fuzz.stats import Sample, StatsWriter, read_stats


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def program_text(signature: str, nops: int) -> str:
    ops: list[dict[str, Any]] = [{"op": "mmap", "mm": 0, "start": 0, "npages": 8,
                                  "prot": "rw"}]
    ops += [{"op": "read", "mm": 0, "addr": i % 8} for i in range(nops - 1)]
    return json.dumps({"format": "pudthp-program/1", "config": {"geometry": "tiny"},
                       "ops": ops, "meta": {"signature": signature}}, indent=1) + "\n"


def make_link(server: fakeredis.FakeServer, root: Path, machine: str,
              said: list[str] | None = None, clock: Clock | None = None,
              stats: bool = False) -> CampaignLink:
    sink = said if said is not None else []
    hub = Hub(fakeredis.FakeRedis(server=server), label="redis://fake:6379/0",
              machine=machine, say=sink.append, retry_seconds=5.0, clock=clock or Clock(),
              replayer=MetaReplayer())
    findings, corpus = root / machine / "findings", root / machine / "corpus"
    findings.mkdir(parents=True)
    corpus.mkdir()
    writer = StatsWriter(str(root / machine / "stats.jsonl") if stats else None, machine,
                         "atheris")
    return CampaignLink(str(findings), str(corpus), sink.append, hub=hub, stats=writer)


def found(link: CampaignLink, signature: str, nops: int) -> str:
    """The engine archives a finding and tells the link, as both engines do."""
    path, new = archive(link.findings_dir, signature, program_text(signature, nops))
    assert new
    link.archived(signature, path)
    return path


def signatures_in(directory: str) -> set[str]:
    out = set()
    for name in os.listdir(directory):
        if name.endswith(".json"):
            out.add(json.loads(Path(directory, name).read_text())["meta"]["signature"])
    return out


def test_the_start_gives_each_machine_its_own_seed_block_and_the_hubs_findings(
        tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    a = make_link(server, tmp_path, "a")
    b = make_link(server, tmp_path, "b")
    assert a.start("hypothesis", {}, None, fallback=99) == 0  # the first block
    found(a, "sig:a", 3)
    a.exchange()
    assert b.start("hypothesis", {}, None, fallback=99) == SEED_BLOCK  # disjoint from a's
    # b's findings directory now holds a's finding, under fuzz.archive's name
    assert signatures_in(b.findings_dir) == {"sig:a"}
    assert [s for s, _ in b.pulled] == ["sig:a"]
    assert b.hub is not None
    machines = b.hub.machines()
    assert machines["a"]["seeds"] == [0, SEED_BLOCK]
    assert machines["b"]["seeds"] == [SEED_BLOCK, 2 * SEED_BLOCK]


def test_a_seed_the_user_gives_is_kept_and_said(tmp_path: Path) -> None:
    said: list[str] = []
    link = make_link(fakeredis.FakeServer(), tmp_path, "a", said)
    assert link.start("atheris", {}, 7, fallback=99) == 7
    assert any("seed 7 given" in line for line in said)


def test_a_hub_running_other_code_keeps_the_campaign_from_starting(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    other = Hub(fakeredis.FakeRedis(server=server), machine="old")
    other.join("hypothesis", {}, code="0" * 64)
    link = make_link(server, tmp_path, "a")
    with pytest.raises(LinkError, match="runs code 000000000000, this machine has"):
        link.start("hypothesis", {}, None, fallback=5)


def test_findings_go_both_ways_and_the_hub_keeps_the_shorter(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    a = make_link(server, tmp_path, "a")
    b = make_link(server, tmp_path, "b")
    a.start("hypothesis", {}, None, 1)
    b.start("hypothesis", {}, None, 1)
    long_path = found(a, "sig:both", 6)
    found(b, "sig:both", 2)  # b's program of the same signature is shorter: the hub keeps it
    found(b, "sig:b", 4)
    assert a.tick(lambda: Sample(0, 0, 1), now=10.0) == []
    assert sorted(b.tick(lambda: Sample(0, 0, 2), now=10.0)) == []  # a had nothing new
    assert a.tick(lambda: Sample(0, 0, 1), now=20.0) == ["sig:b"]  # copied in by a
    assert a.hub is not None
    hub_text = a.hub.finding("sig:both")
    assert hub_text is not None
    assert len(json.loads(hub_text)["ops"]) == 2
    # a's own longer file of sig:both is left as it is: a local file is never overwritten
    assert len(json.loads(Path(long_path).read_text())["ops"]) == 6
    assert signatures_in(a.findings_dir) == signatures_in(b.findings_dir) == {"sig:both",
                                                                              "sig:b"}
    # nothing is offered twice: b's next exchange pushes and pulls nothing
    assert b.tick(lambda: Sample(0, 0, 2), now=30.0) == []
    assert not b.to_push


def corpus_pair(tmp_path: Path) -> tuple[CampaignLink, CampaignLink, str, str]:
    """Two machines' links on one fake hub, with their corpus directories."""
    server = fakeredis.FakeServer()
    a = make_link(server, tmp_path, "a")
    b = make_link(server, tmp_path, "b")
    assert a.corpus_dir is not None
    assert b.corpus_dir is not None
    return a, b, a.corpus_dir, b.corpus_dir


def test_the_atheris_corpus_crosses_by_content(tmp_path: Path) -> None:
    a, b, corpus_a, corpus_b = corpus_pair(tmp_path)
    Path(corpus_a, "0123").write_bytes(b"input of a")
    Path(corpus_b, "4567").write_bytes(b"input of b")
    a.start("atheris", {}, None, 1)
    b.start("atheris", {}, None, 1)  # pushes b's input, pulls a's
    a.exchange()  # pulls b's

    def contents(d: str) -> set[bytes]:
        return {Path(d, n).read_bytes() for n in os.listdir(d)}

    assert contents(corpus_a) == contents(corpus_b) == {b"input of a", b"input of b"}
    assert hashlib.sha1(b"input of b").hexdigest() in os.listdir(corpus_a)
    assert (a.corpus_out, a.corpus_in, b.corpus_out, b.corpus_in) == (1, 1, 1, 1)


def test_stats_records_go_to_the_file_and_the_hub_stream_every_interval(
        tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    link = make_link(server, tmp_path, "a", stats=True)
    link.start("atheris", {}, None, 1)
    n = [0]

    def sample() -> Sample:
        n[0] += 100
        return Sample(programs=n[0], count=n[0], findings=0, corpus=3, cov=10, ft=20,
                      features={"fault:pud:alloc": n[0] // 100})

    for now in (0.0, 1.0, 4.9, 5.0, 9.9, 10.0):  # a record at 0, 5 and 10 s
        link.tick(sample, now=now)
    link.finish(sample())
    assert link.stats is not None
    assert link.stats.path is not None
    lines = read_stats(link.stats.path)
    assert [r["count"] for r in lines] == [100, 200, 300, 400]
    assert lines[0]["features_new"] == ["fault:pud:alloc"]
    assert lines[1]["features_new"] == []
    assert link.hub is not None
    assert link.hub.read_stats() == lines


def test_a_hub_lost_mid_campaign_loses_nothing_and_catches_up(tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    said: list[str] = []
    clock = Clock()
    link = make_link(server, tmp_path, "a", said, clock, stats=True)
    link.start("hypothesis", {}, None, 1)
    server.connected = False
    path = found(link, "sig:while-down", 3)
    link.tick(lambda: Sample(1, 10, 1), now=0.0)
    link.tick(lambda: Sample(2, 20, 1), now=10.0)
    assert Path(path).exists()  # the local archive is written whatever the hub does
    assert link.stats is not None
    assert link.stats.path is not None
    assert [r["count"] for r in read_stats(link.stats.path)] == [10, 20]
    assert sum("unreachable" in line for line in said) == 1  # said once
    server.connected = True
    clock.t += 10  # the client's retry time
    link.tick(lambda: Sample(3, 30, 1), now=20.0)
    assert link.hub is not None
    assert link.hub.signatures() >= {"sig:while-down"}
    assert [r["count"] for r in link.hub.read_stats()] == [10, 20, 30]
    assert any("reachable again" in line for line in said)


def test_what_keeps_a_campaign_from_starting_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(LinkError) as e:
        CampaignLink.open(LinkOptions(stats=str(blocker / "stats.jsonl")), "hypothesis",
                          str(tmp_path), None, print)
    assert str(e.value).startswith(f"--stats {blocker / 'stats.jsonl'}: ")
    with pytest.raises(LinkError) as e:
        CampaignLink.open(LinkOptions(hub="http://lab-1:6379/0"), "hypothesis",
                          str(tmp_path), None, print)
    assert "redis://[:PASSWORD@]HOST:PORT/DB" in str(e.value)
    assert "\n" not in str(e.value)


def test_at_its_end_a_campaign_waits_for_a_peer_ending_with_it_and_takes_its_findings(
        tmp_path: Path) -> None:
    server = fakeredis.FakeServer()
    said: list[str] = []
    a = make_link(server, tmp_path, "a", said)
    b = make_link(server, tmp_path, "b")
    t = [5000.0]
    for link in (a, b):
        link.clock = lambda: t[0]
    a.start("hypothesis", {}, None, 1, time_limit=10.0)
    b.start("hypothesis", {}, None, 1, time_limit=10.0)
    naps: list[float] = []

    def nap(seconds: float) -> None:  # b finds something late, then ends, while a waits
        naps.append(seconds)
        t[0] += seconds
        if len(naps) == 3:
            found(b, "sig:late", 3)
            b.finish(Sample(0, 0, 1))

    a.sleep = nap
    t[0] += 10.0
    assert a.finish(Sample(0, 0, 0)) == ["sig:late"]
    assert len(naps) == 3
    assert signatures_in(a.findings_dir) == {"sig:late"}
    assert sum("waiting up to" in line for line in said) == 1


def test_a_peer_that_never_ends_is_waited_for_a_bounded_time_and_old_ones_not_at_all(
        tmp_path: Path) -> None:
    from fuzz.link import LINGER_SECONDS

    server = fakeredis.FakeServer()
    t = [5000.0]
    old, stuck, a = (make_link(server, tmp_path, m) for m in ("old", "stuck", "a"))
    for link in (old, stuck, a):
        link.clock = lambda: t[0]
    old.start("hypothesis", {}, None, 1, time_limit=10.0)  # killed long ago, never finished
    t[0] += 3600.0
    stuck.start("hypothesis", {}, None, 1, time_limit=10.0)  # killed now: never finishes
    a.start("hypothesis", {}, None, 1, time_limit=10.0)
    slept = [0.0]

    def nap(seconds: float) -> None:
        slept[0] += seconds
        t[0] += seconds

    a.sleep = nap
    t[0] += 10.0
    a.finish(Sample(0, 0, 0))
    assert slept[0] == pytest.approx(LINGER_SECONDS, abs=1.0)  # for stuck only, bounded


def test_a_findings_directory_that_cannot_be_written_is_said_once_and_tried_again(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fuzz.hub_intake

    server = fakeredis.FakeServer()
    said: list[str] = []
    a = make_link(server, tmp_path, "a")
    b = make_link(server, tmp_path, "b", said)
    a.start("hypothesis", {}, None, 1)
    b.start("hypothesis", {}, None, 1)
    found(a, "sig:a", 3)
    a.exchange()
    real = fuzz.hub_intake.archive

    def full(*args: Any, **kw: Any) -> Any:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fuzz.hub_intake, "archive", full)  # b's disk is full
    assert b.exchange() == []
    assert b.exchange() == []
    assert [line for line in said if "cannot copy" in line] == [
        f"cannot copy from the hub to {b.findings_dir}: No space left on device; "
        "trying again later"]  # once, however often it is tried
    monkeypatch.setattr(fuzz.hub_intake, "archive", real)  # space again
    assert b.exchange() == ["sig:a"]


def test_a_corpus_input_that_cannot_be_written_is_pulled_again_later(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import fuzz.hub_corpus

    a, b, corpus_a, corpus_b = corpus_pair(tmp_path)
    Path(corpus_a, "x").write_bytes(b"input of a")
    a.start("atheris", {}, None, 1)
    real = fuzz.hub_corpus._write_new

    def full(*args: Any) -> bool:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(fuzz.hub_corpus, "_write_new", full)
    b.start("atheris", {}, None, 1)
    assert os.listdir(corpus_b) == []
    monkeypatch.setattr(fuzz.hub_corpus, "_write_new", real)
    b.exchange()
    assert [Path(corpus_b, n).read_bytes() for n in os.listdir(corpus_b)] == [b"input of a"]


def test_an_error_reply_of_the_hub_is_an_outage_not_a_crash(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    import redis

    server = fakeredis.FakeServer()
    said: list[str] = []
    clock = Clock()
    link = make_link(server, tmp_path, "a", said, clock, stats=True)
    link.start("hypothesis", {}, None, 1)
    assert link.hub is not None

    def misconf(*args: Any, **kw: Any) -> Any:  # what a hub with a full disk answers
        raise redis.exceptions.ResponseError("MISCONF Redis is configured to save RDB "
                                             "snapshots, but it's currently unable to persist")

    monkeypatch.setattr(link.hub.r, "xadd", misconf)
    link.tick(lambda: Sample(1, 10, 0), now=0.0)
    assert sum("unreachable (MISCONF" in line for line in said) == 1
    assert link.hub.pending() == 1  # queued, not lost
    monkeypatch.undo()
    clock.t += 10
    link.tick(lambda: Sample(2, 20, 0), now=10.0)
    assert [r["count"] for r in link.hub.read_stats()] == [10, 20]
