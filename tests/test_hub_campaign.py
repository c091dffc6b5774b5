"""Campaigns of two "machines" on one served hub, end to end: ``pudthp hub serve`` on a free
port and two ``pudthp fuzz --hub ... --workers 1 --config deposit=list_head --time 10``
processes at once, each with its own findings, corpus, example database and stats file.
Both end with the same signature set, the hub holds one program per signature (the
shorter), and what one adds to its corpus reaches the other; a hub stopped mid-campaign
costs no local finding.  The rejected ``list_head`` deposit is found on the first PUD
fault, so every campaign has findings to share."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from hub_tools import start, stop

from fuzz.engine_atheris import SEED_DIRS, seed_corpus
from fuzz.hub import Hub, parse_hub_url, redis_client
from fuzz.stats import read_stats
from harness.program import load_program_file

CAMPAIGN = ["--workers", "1", "--config", "deposit=list_head", "--time", "10"]


def fuzz(url: str, root: Path, machine: str, *extra: str) -> subprocess.Popen[str]:
    d = root / machine
    return subprocess.Popen(
        [sys.executable, "-m", "pudthp_cli", "fuzz", "--hub", url, *CAMPAIGN,
         "--machine", machine, "--findings", str(d / "findings"),
         "--corpus", str(d / "corpus"), "--example-db", str(d / "hypothesis"),
         "--stats", str(d / "stats.jsonl"), *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """The campaign's output; exit 1 when its own programs found something, 0 when all it
    has came from the hub (possible for one of two machines: the other may find all three
    signatures first, and then this one's programs go idle on them only if they meet them)."""
    out, err = proc.communicate(timeout=240)
    assert proc.returncode in (0, 1), (out, err)
    assert "Traceback" not in out + err
    return out, err


def findings(root: Path, machine: str) -> dict[str, int]:
    """signature -> ops of each program in a machine's findings directory."""
    out: dict[str, int] = {}
    d = root / machine / "findings"
    for name in os.listdir(d):
        if name.endswith(".json"):
            p = load_program_file(str(d / name))
            out[str(p.meta["signature"])] = len(p.ops)
    return out


def redis_keys(url: str, pattern: str) -> list[bytes]:
    return list(redis_client(parse_hub_url(url)).scan_iter(pattern))


def test_two_campaigns_share_findings_example_database_and_stats(tmp_path: Path) -> None:
    proc, url = start(tmp_path / "hub")
    try:
        a, b = fuzz(url, tmp_path, "A"), fuzz(url, tmp_path, "B")
        (out_a, err_a), (out_b, err_b) = finish(a), finish(b)
        assert 1 in (a.returncode, b.returncode)
        fa, fb = findings(tmp_path, "A"), findings(tmp_path, "B")
        assert fa
        assert set(fa) == set(fb), (out_a, out_b)
        hub = Hub.connect(url, machine="reader")
        assert hub.signatures() == set(fa)
        for sig in fa:
            text = hub.finding(sig)
            assert text is not None
            # each machine offered its own program and copied in the hub's: the hub's is
            # the shorter of the two on disk
            assert len(json.loads(text)["ops"]) == min(fa[sig], fb[sig])
        # the seeds the hub gave are disjoint blocks, and each campaign ran with its own
        seeds = {m: tuple(v["seeds"]) for m, v in hub.machines().items()}
        assert seeds["A"] != seeds["B"]
        for out, m in ((err_a, "A"), (err_b, "B")):
            assert f"seed {seeds[m][0]} " in out
        # both machines' stats went to their files and to the hub's stream
        assert {r["machine"] for r in hub.read_stats()} == {"A", "B"}
        last = {m: read_stats(str(tmp_path / m / "stats.jsonl"))[-1] for m in ("A", "B")}
        assert max(r["findings"] for r in last.values()) >= 1  # what each machine's ran into
        assert all(r["features_hit"] > 0 for r in last.values())
        # Hypothesis' example database on the hub holds cases (under the campaign's keys)
        assert any(redis_keys(url, "pudthp:main:hypothesis:*"))
        # and so does the local one of every machine whose programs failed themselves (one
        # whose programs only met signatures the other had archived saved no failure)
        for m, err in (("A", err_a), ("B", err_b)):
            if re.search(r"finding \((new|already archived)\)", err):
                assert any(p.is_file() for p in (tmp_path / m / "hypothesis").rglob("*"))
        assert re.search(r"finding \(new\)", err_a + err_b)
        # CI: copy the hub's findings and stats, replay them, plot the campaign
        ci = tmp_path / "ci"
        pulled = cli("hub", "pull", url, "--findings", str(ci / "findings"), "--stats",
                     str(ci / "stats.jsonl"))
        assert pulled.returncode == 0, pulled.stderr
        assert f"{len(fa)} copied to" in pulled.stdout
        assert set(findings(tmp_path / "ci", "")) == set(fa)
        replay = cli("corpus", "replay", str(ci / "findings"))
        assert replay.returncode == 0, replay.stdout + replay.stderr  # nothing changed
        report = cli("report", str(ci / "stats.jsonl"), "--out", str(ci / "report"))
        assert report.returncode == 0, report.stderr
        assert (ci / "report" / "index.html").exists()
        # a third machine joining later starts knowing every signature: its programs go
        # idle on them (counted as met again), nothing is shrunk or archived anew
        c = subprocess.run(
            [sys.executable, "-m", "pudthp_cli", "fuzz", "--hub", url, "--workers", "1",
             "--config", "deposit=list_head", "--time", "5", "--machine", "C", "--findings",
             str(tmp_path / "C" / "findings"), "--example-db", str(tmp_path / "C" / "db")],
            capture_output=True, text=True, timeout=120)
        assert c.returncode == 1, c.stdout + c.stderr
        new_in_c = re.findall(r"finding \(new\) (\S+):", c.stderr)
        assert not set(new_in_c) & set(fa)  # nothing the hub had is archived anew
        assert re.search(r"^  known .*\(archived by another machine; hit again\)$",
                         c.stdout, re.M), c.stdout
        assert set(findings(tmp_path, "C")) == set(fa)
    finally:
        stop(proc)


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "pudthp_cli", *args], capture_output=True,
                          text=True, timeout=120)


def test_hub_pull_says_in_one_line_what_keeps_it_from_running(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gone = cli("hub", "pull", f"redis://127.0.0.1:{port}/0", "--findings", str(tmp_path))
    assert gone.returncode == 4
    assert gone.stderr.startswith("pudthp: cannot run here: hub redis://127.0.0.1:")
    bad = cli("hub", "pull", "lab-1:6379", "--findings", str(tmp_path))
    assert bad.returncode == 2
    for r in (gone, bad):
        assert len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_two_atheris_campaigns_cross_their_corpus(tmp_path: Path) -> None:
    proc, url = start(tmp_path / "hub")
    try:
        a = fuzz(url, tmp_path, "A", "--engine", "atheris")
        b = fuzz(url, tmp_path, "B", "--engine", "atheris")
        (out_a, _), (out_b, _) = finish(a), finish(b)
        assert set(findings(tmp_path, "A")) == set(findings(tmp_path, "B"))
        seeds = tmp_path / "seeds"
        seeds.mkdir()
        seed_corpus(str(seeds), [str(d) for d in SEED_DIRS])
        start_set = set(os.listdir(seeds))
        ca = set(os.listdir(tmp_path / "A" / "corpus")) - start_set
        cb = set(os.listdir(tmp_path / "B" / "corpus")) - start_set
        assert ca & cb, "no input found by one machine reached the other"
        for out in (out_a, out_b):
            m = re.search(r"corpus (\d+) out / (\d+) in", out)
            assert m is not None, out
            assert int(m.group(1)) > 0
            assert int(m.group(2)) > 0
    finally:
        stop(proc)


def test_a_hub_stopped_mid_campaign_loses_no_local_finding(tmp_path: Path) -> None:
    proc, url = start(tmp_path / "hub")
    campaign = fuzz(url, tmp_path, "A")
    assert campaign.stderr is not None
    head = ""
    while "engine hypothesis" not in head:  # the campaign has joined and is running
        line = campaign.stderr.readline()
        assert line, "the campaign ended before it started"
        head += line
    time.sleep(1)
    stop(proc)  # the hub goes away while the campaign runs
    out, err = finish(campaign)
    err = head + err
    said = [line for line in err.splitlines() if re.search(r": hub \S+ unreachable", line)]
    assert len(said) == 1, err  # said once, in one line
    listed = re.findall(r"^  (?:new|archived) +(\S+)  (\S+) ", out, re.M)
    assert listed, out
    for path, sig in listed:  # every finding the summary names is on disk, whole
        assert load_program_file(path).meta["signature"] == sig
    records = read_stats(str(tmp_path / "A" / "stats.jsonl"))
    assert records[-1]["findings"] == len(listed)
    assert records[-1]["elapsed"] >= 9.0  # stats went on to the end
