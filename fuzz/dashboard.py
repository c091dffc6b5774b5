"""``pudthp dashboard``: a live view of a hub's campaign in a web browser.

One page (``/``) and its script (``/dashboard.js``) that fetch ``/status.json``
(``fuzz.status``: machines, rates, features, findings) every ``refresh`` seconds and draw
it, with links to each finding's program (``/finding/KEY.json``) and its C reproducer
(``/finding/KEY.c``, made by ``pudthp export-c``), KEY being the SHA-256 of the signature.

Everything it serves comes from the hub, which any peer holding the password can write, so:

- it is read-only: GET and HEAD only, nothing it serves changes the hub;
- it listens on 127.0.0.1 by default, and with a loopback address it answers only requests
  whose ``Host`` is that address or ``localhost`` (a web page elsewhere cannot reach it
  through a name of its own pointing at 127.0.0.1);
- the page builds its tables with ``textContent``, never HTML from data, and is served with
  a content security policy that runs no inline script and loads nothing from elsewhere;
- a program is checked as a program file is (``harness.program``) before it is served
  (as JSON, never as a page); its C file is made by ``pudthp export-c`` in a child
  process with a time limit (``EXPORT_SECONDS``), kept once made;
- the hub's address is shown without its password, which no response contains.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from typing import Any

from fuzz.hub import Hub
from fuzz.status import CampaignStatus, StatusReader
from harness.program import ProgramError, parse_program_text

DEFAULT_PORT = 8470  # as pudthp_cli.dashboard.DEFAULT_PORT
DEFAULT_REFRESH = 5.0
EXPORT_SECONDS = 120.0
MAX_C_CACHED = 64
_FINDING = re.compile(r"/finding/([0-9a-f]{64})\.(json|c)")
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; connect-src 'self'; "
                               "style-src 'self'; img-src 'self'; base-uri 'none'; "
                               "form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class Dashboard:
    """What the pages show: a ``StatusReader`` on the hub, read at most by one request at a
    time."""

    def __init__(self, hub: Hub, refresh: float = DEFAULT_REFRESH) -> None:
        self.hub = hub
        self.reader = StatusReader(hub)
        self.refresh = refresh
        self.lock = threading.Lock()
        self.keys: dict[str, str] = {}  # finding key -> signature, from the last status
        self.c_files: dict[str, tuple[int, str]] = {}  # program digest -> (status, text)

    def status(self) -> CampaignStatus:
        with self.lock:
            s = self.reader.refresh()
            self.keys = {f.key: f.signature for f in s.findings}
            return s

    def program(self, key: str) -> tuple[int, str]:
        """(HTTP status, text): the finding's program text, checked, or why not."""
        if key not in self.keys:
            self.status()
        signature = self.keys.get(key)
        if signature is None:
            return 404, "no such finding on the hub\n"
        with self.lock:
            text = self.hub.finding(signature)
        if text is None:
            return 404, "the hub holds no usable program for this finding\n"
        try:
            parse_program_text(text, "the hub's program")
        except ProgramError as e:
            return 422, f"not a valid program: {' '.join(str(e).split())}\n"
        # the text as pushed: which config keys it spells out matters to export-c
        return 200, text

    def c_file(self, key: str) -> tuple[int, str]:
        """(HTTP status, text): the finding's C reproducer (``pudthp export-c``), or why
        not."""
        code, text = self.program(key)
        if code != 200:
            return code, text
        if text in self.c_files:
            return self.c_files[text]
        with tempfile.TemporaryDirectory(prefix="pudthp-dashboard-") as tmp:
            path = os.path.join(tmp, f"finding-{key[:12]}.json")
            out = os.path.join(tmp, f"finding-{key[:12]}.c")
            with open(path, "w", encoding="utf-8") as f:
                f.write(text)
            try:
                r = subprocess.run([sys.executable, "-m", "pudthp_cli", "export-c", path,
                                    "-o", out], capture_output=True, text=True,
                                   timeout=EXPORT_SECONDS, check=False,
                                   stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                return 504, (f"pudthp export-c took more than {EXPORT_SECONDS:g} s on "
                             "this program\n")
            if r.returncode != 0:
                why = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else \
                    f"exit status {r.returncode}"
                result = (422, f"no C reproducer: {why.replace(path, 'the program')}\n")
            else:
                with open(out, encoding="utf-8") as f:
                    result = (200, f.read())
        if len(self.c_files) >= MAX_C_CACHED:
            self.c_files.pop(next(iter(self.c_files)))
        self.c_files[text] = result
        return result


def _asset(name: str) -> bytes:
    return resources.files("fuzz").joinpath("dashboard_assets", name).read_bytes()


class _Handler(BaseHTTPRequestHandler):
    server: DashboardServer
    protocol_version = "HTTP/1.0"
    server_version = "pudthp-dashboard"
    sys_version = ""

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    def _answer(self, head: bool) -> None:
        if not self.server.host_allowed(self.headers.get("Host")):
            self._send(421, "text/plain", b"this dashboard answers to its own address only\n",
                       head)
            return
        path = self.path.split("?", 1)[0]
        d = self.server.dashboard
        if path in ("/", "/index.html"):
            page = _asset("index.html").replace(b"@REFRESH@", f"{d.refresh:g}".encode())
            self._send(200, "text/html; charset=utf-8", page, head)
        elif path == "/dashboard.js":
            self._send(200, "text/javascript; charset=utf-8", _asset("dashboard.js"), head)
        elif path == "/dashboard.css":
            self._send(200, "text/css; charset=utf-8", _asset("dashboard.css"), head)
        elif path == "/status.json":
            body = json.dumps(d.status().to_json(), sort_keys=True).encode()
            self._send(200, "application/json", body, head)
        elif (m := _FINDING.fullmatch(path)) is not None:
            code, text = d.program(m.group(1)) if m.group(2) == "json" else d.c_file(m.group(1))
            kind = "application/json" if code == 200 and m.group(2) == "json" else "text/plain"
            self._send(code, f"{kind}; charset=utf-8", text.encode(), head)
        else:
            self._send(404, "text/plain", b"not found\n", head)

    def _send(self, code: int, kind: str, body: bytes, head: bool) -> None:
        self.send_response(code)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # one line per request would bury the terminal


class DashboardServer(HTTPServer):
    """The HTTP server of one ``Dashboard``, one request at a time."""

    def __init__(self, dashboard: Dashboard, bind: str = "127.0.0.1",
                 port: int = DEFAULT_PORT) -> None:
        self.dashboard = dashboard
        self.loopback = _loopback(bind)
        if ":" in bind:
            self.address_family = socket.AF_INET6
        super().__init__((bind, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def url(self) -> str:
        host = str(self.server_address[0])
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}/"

    def host_allowed(self, host: str | None) -> bool:
        """Any ``Host`` when serving a network; on loopback, only the loopback names."""
        if not self.loopback:
            return True
        if host is None:
            return False
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host.startswith("[") and "]" in host:
            name = host[1:host.index("]")]
        return name == "localhost" or _loopback(name)


def _loopback(address: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(address).is_loopback
    return address == "localhost"
