"""``pudthp dashboard``: a live view of a hub's campaign in a web browser
(``fuzz.dashboard``)."""

from __future__ import annotations

import argparse
import signal
from types import FrameType
from typing import Any

from pudthp_cli.argtypes import PORT, SECONDS
from pudthp_cli.exits import error

DEFAULT_PORT = 8470  # fuzz.dashboard.DEFAULT_PORT, kept here so --help imports no redis


def add(sub: Any) -> None:
    dash = sub.add_parser(
        "dashboard", allow_abbrev=False,
        help="serve a web page that shows a hub's campaign live (machines, rates, "
        "features, findings with their programs and C reproducers); read-only",
        description="Serve one page, refreshed from the hub every --refresh seconds: the "
        "campaign's machines (state, last report, rate, programs, features, cov/ft, corpus, "
        "findings), the features hit by any machine, and the findings the hub names with "
        "links to their program and C reproducer (pudthp export-c). It changes nothing on "
        "the hub and never shows the hub's password. Ctrl-C or SIGTERM stops it.")
    dash.set_defaults(handler=command)
    dash.add_argument("url", metavar="URL", help="the hub: redis://[:PASSWORD@]HOST:PORT/DB")
    dash.add_argument("--campaign", metavar="NAME", default="main",
                      help="the campaign's name on the hub (default main)")
    dash.add_argument("--port", metavar="N", type=PORT, default=DEFAULT_PORT,
                      help=f"TCP port of the page (default {DEFAULT_PORT}; 0 picks a free one)")
    dash.add_argument("--bind", metavar="ADDR", default="127.0.0.1",
                      help="address to listen on (default 127.0.0.1: this machine only)")
    dash.add_argument("--refresh", metavar="SECONDS", type=SECONDS, default=5.0,
                      help="how often the page reads the hub again (default 5)")


class _Stop(BaseException):
    """SIGTERM: not an ``Exception``, which the server would take for a request's error
    when the signal comes while it answers one."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop


def command(args: argparse.Namespace) -> int:
    from fuzz.dashboard import Dashboard, DashboardServer  # redis: this command's cost
    from fuzz.hub import Hub, HubError

    try:
        hub = Hub.connect(args.url, campaign=args.campaign, machine="dashboard",
                          say=lambda line: print(f"pudthp: {line}", flush=True))
    except HubError as e:
        return error(str(e))
    try:
        server = DashboardServer(Dashboard(hub, args.refresh), args.bind, args.port)
    except OSError as e:
        hub.close()
        return error(f"--bind {args.bind} --port {args.port}: {e.strerror or e}")
    print(f"pudthp dashboard: serving {server.url()} (campaign {args.campaign!r} on "
          f"{hub.label}); Ctrl-C stops it", flush=True)
    old = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        server.serve_forever()
    except (_Stop, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        server.server_close()
        hub.close()
    print("pudthp dashboard: stopped", flush=True)
    return 0
