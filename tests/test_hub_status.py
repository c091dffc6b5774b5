"""``pudthp hub status`` (``fuzz/status.py``): a campaign's machines, their last stats
records, the union of their features and the findings the hub names; read from a fakeredis
hub with fixed times, and once from a served hub through the command line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import fakeredis
from hub_tools import MetaReplayer, real_finding, start, stop

from fuzz.hub import Hub
from fuzz.stats import Sample, StatsWriter
from fuzz.status import StatusReader, render_text

CODE = "c0de" * 16
T0 = 1_800_000_000.0  # a fixed time: 2027-01-15 08:00:00 UTC


def joined(server: fakeredis.FakeServer, machine: str, campaign: str = "main") -> Hub:
    hub = Hub(fakeredis.FakeRedis(server=server), label="redis://fake:6379/0",
              machine=machine, campaign=campaign, say=lambda _: None,
              replayer=MetaReplayer())
    hub.join("atheris", {}, code=CODE)
    return hub


def push(hub: Hub, writer: StatsWriter, s: Sample, now: float) -> None:
    assert hub.push_stats(writer.record(s, now)) == "stored"


def test_machines_their_last_reports_the_union_and_the_findings() -> None:
    server = fakeredis.FakeServer()
    a, b = joined(server, "lab-1"), joined(server, "lab-2 <b>")
    wa = StatsWriter(None, "lab-1", "atheris", clock=lambda: T0)
    wb = StatsWriter(None, "lab-2 <b>", "atheris", clock=lambda: T0)
    push(a, wa, Sample(100, 1000, 0, corpus=10, cov=50, ft=90, features={"a": 1}), T0 + 5)
    push(a, wa, Sample(300, 3000, 1, corpus=12, cov=60, ft=99,
                       features={"a": 1, "b": 2}), T0 + 10)
    push(b, wb, Sample(50, 500, 0, corpus=3, cov=20, ft=30, features={"b": 1, "c": 1}),
         T0 + 7)
    signature, text = real_finding("read", 2)
    assert a.push_finding(signature, text) == "stored"
    viewer = Hub(fakeredis.FakeRedis(server=server), label="redis://fake:6379/0",
                 machine="status", say=lambda _: None)
    # 60 s after lab-1's last report (T0 + 10): running still; 63 s after lab-2's
    # (T0 + 7): silent (RECENT_SECONDS is 60)
    s = StatusReader(viewer).refresh(now=T0 + 70)
    assert s.reachable
    assert [m.name for m in s.machines] == ["lab-1", "lab-2 <b>"]
    one, two = s.machines
    # lab-1's last record: 2000 execs in the 5 s since its first = 400/s
    assert (one.last, one.rate, one.unit, one.programs, one.features_hit, one.cov, one.ft,
            one.corpus, one.findings) == (T0 + 10, 400.0, "execs", 300, 2, 60, 99, 12, 1)
    assert (one.state(s.now), two.state(s.now)) == ("running", "silent")
    # lab-1 hit {a, b}, lab-2 {b, c}: the campaign {a, b, c}
    assert s.union == 3
    assert [(f.signature, f.ops, f.machine) for f in s.findings] == [(signature, 2, "lab-1")]
    assert s.signatures == 1
    lines = render_text(s)
    text_out = "\n".join(lines)
    assert "2027-01-15 08:00:10 (60 s ago)" in text_out
    assert "400.0 execs/s" in text_out
    assert "3 model-state feature(s) hit by any machine (union)" in text_out
    assert f"{signature}  (2 ops, pushed by lab-1 " in text_out
    data = json.loads(json.dumps(s.to_json()))
    assert data["machines"][0]["state"] == "running"
    assert data["union"] == 3


def test_a_refresh_reads_the_stream_on_from_where_it_left_off() -> None:
    server = fakeredis.FakeServer()
    a = joined(server, "lab-1")
    w = StatsWriter(None, "lab-1", "hypothesis", clock=lambda: T0)
    push(a, w, Sample(1, 10, 0, features={"a": 1}), T0 + 5)
    reader = StatusReader(Hub(fakeredis.FakeRedis(server=server), machine="status",
                              say=lambda _: None))
    first = reader.refresh(now=T0 + 6)
    assert (first.machines[0].programs, first.union) == (1, 1)
    after = reader.after
    push(a, w, Sample(2, 20, 0, features={"a": 1, "d": 1}), T0 + 10)
    second = reader.refresh(now=T0 + 11)
    assert (second.machines[0].programs, second.union) == (2, 2)
    assert reader.after != after
    # nothing new: the same figures, nothing read twice
    third = reader.refresh(now=T0 + 12)
    assert (third.machines[0].programs, third.union) == (2, 2)


def test_two_campaigns_with_the_same_machine_name_stay_apart() -> None:
    server = fakeredis.FakeServer()
    for campaign, programs in (("nightly", 70), ("deposit", 5)):
        hub = joined(server, "lab-1", campaign)
        w = StatsWriter(None, "lab-1", "atheris", clock=lambda: T0, campaign="nightly")
        # a record that names another campaign counts for the stream it is in
        push(hub, w, Sample(programs, programs, 0), T0 + 5)
    for campaign, programs in (("nightly", 70), ("deposit", 5)):
        viewer = Hub(fakeredis.FakeRedis(server=server), campaign=campaign,
                     machine="status", say=lambda _: None)
        s = StatusReader(viewer).refresh(now=T0 + 6)
        assert [(m.name, m.programs) for m in s.machines] == [("lab-1", programs)]


def test_bad_values_on_the_hub_are_passed_over_and_counted() -> None:
    server = fakeredis.FakeServer()
    a = joined(server, "lab-1")
    a.r.xadd(a.key("stats"), {"json": '{"format": "pudthp-stats/1", "time": "soon"}'})
    a.r.xadd(a.key("stats"), {"json": "[" * 100})
    a.r.hset(a.key("machines"), "x\x1b[2J", "{}")  # not a printable name: never shown
    s = StatusReader(Hub(fakeredis.FakeRedis(server=server), machine="status",
                         say=lambda _: None)).refresh(now=T0)
    assert [m.name for m in s.machines] == ["lab-1"]  # joined, no report yet
    assert s.machines[0].state(s.now) == "no report yet"
    assert s.skipped == 2
    assert "2 value(s) on the hub were not valid" in "\n".join(render_text(s))


def status_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pudthp_cli", "hub", "status", *args],
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_command_line_against_a_served_hub(tmp_path: Path) -> None:
    proc, url = start(tmp_path / "hub", "--password", "s3cret-pw")
    url = url.replace("<password>", "s3cret-pw")
    try:
        hub = Hub.connect(url, machine="lab-1", campaign="c1", say=lambda _: None)
        hub.join("hypothesis", {}, code=CODE)
        w = StatsWriter(None, "lab-1", "hypothesis", campaign="c1")
        hub.push_stats(w.record(Sample(12, 340, 0, features={"x": 1})))
        hub.close()
        r = status_cli(url, "--campaign", "c1")
        assert r.returncode == 0, r.stderr
        assert "campaign 'c1'" in r.stdout
        assert "lab-1" in r.stdout
        assert "hypothesis" in r.stdout
        assert "1 model-state feature(s) hit by any machine (union)" in r.stdout
        assert "s3cret-pw" not in r.stdout + r.stderr
        r = status_cli(url, "--campaign", "c1", "--json")
        assert r.returncode == 0, r.stderr
        data = json.loads(r.stdout)
        assert [(m["name"], m["programs"]) for m in data["machines"]] == [("lab-1", 12)]
        assert "s3cret-pw" not in r.stdout
        r = status_cli(url.replace("s3cret-pw", "wrong"))
        assert r.returncode == 2
        assert r.stderr.startswith("pudthp: error: ")
        assert r.stderr.count("\n") == 1
    finally:
        stop(proc)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = status_cli(f"redis://127.0.0.1:{port}/0")
    assert r.returncode == 4
    assert r.stderr.startswith("pudthp: cannot run here: ")
    r = status_cli("http://nowhere")
    assert r.returncode == 2
