"""What junk on the hub costs a campaign: a benchmark, run by hand, not a test.

    python -m fuzz.hub_bench [--junk 200000] [--exchanges 200] [--campaign SECONDS]

Serves two hubs (``pudthp hub serve`` on free ports, temporary directories): a clean
campaign, and one where a peer added ``--junk`` signatures with no program behind them, to
the signature set and to the findings log, as a hostile peer holding the password can.
Side by side: the wall and CPU time of a campaign link's start (its first exchange reads
the whole findings log) and of each later exchange (what the parent does every
``fuzz.link.SYNC_SECONDS``), with the CPU the Redis server spent on each, and the share of
one core they take in a campaign; with ``--campaign SECONDS`` also the steps per second of
one-worker Hypothesis campaigns (``--impl ref``, a fixed seed) on each hub, ``--rounds``
of them alternated (wall-clock rates: only meaningful on a quiet machine).
"""

from __future__ import annotations

import argparse
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fuzz.hub import Hub
from fuzz.hub_address import parse_hub_url, redis_client
from fuzz.link import SYNC_SECONDS, CampaignLink
from fuzz.stats import StatsWriter


def serve(directory: str) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-m", "pudthp_cli", "hub", "serve", "--port", "0",
                             "--dir", directory], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    m = re.match(r"pudthp hub: serving (\S+)", proc.stdout.readline())
    if m is None:
        proc.kill()
        raise SystemExit("pudthp hub serve did not start")
    return proc, m.group(1)


def server_cpu(directory: str) -> float:
    """CPU seconds of the redis-server whose data is in ``directory``."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{pid}/cwd") != directory:
                continue
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return 0.0


def add_junk(url: str, n: int) -> None:
    r = redis_client(parse_hub_url(url))
    for i in range(0, n, 10_000):
        sigs = [f"invariant:junk:{j}" for j in range(i, min(n, i + 10_000))]
        pipe = r.pipeline(transaction=False)
        pipe.sadd("pudthp:main:signatures", *sigs)
        pipe.rpush("pudthp:main:findings_log", *sigs)
        pipe.execute()
    r.close()


def time_link(url: str, root: str, n: int, data: str
              ) -> tuple[tuple[float, float, float], list[tuple[float, float]], float]:
    """The (wall, CPU, server CPU) seconds of a fresh link's start (its first exchange
    reads the whole log), the (wall, CPU) seconds of each of ``n`` exchanges after it, and
    the server's CPU seconds per exchange."""
    findings, corpus = os.path.join(root, "findings"), os.path.join(root, "corpus")
    os.makedirs(findings)
    os.makedirs(corpus)
    hub = Hub.connect(url, machine=f"bench-{os.path.basename(root)}")
    link = CampaignLink(findings, corpus, lambda line: None, hub=hub,
                        stats=StatsWriter(None, hub.machine, "atheris"))
    t, c, sc = time.perf_counter(), _cpu(), server_cpu(data)
    link.start("atheris", {}, 0, 0)
    sc2 = server_cpu(data)
    start = (time.perf_counter() - t, _cpu() - c, sc2 - sc)
    out = []
    for _ in range(n):
        wall, cpu = time.perf_counter(), _cpu()
        link.exchange()
        out.append((time.perf_counter() - wall, _cpu() - cpu))
    server = (server_cpu(data) - sc2) / max(1, n)
    link.close()
    return start, out, server


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def campaign_rate(url: str, root: str, seconds: float, run: int) -> float:
    """Steps per second of a one-worker campaign on the hub (0 if it printed none)."""
    r = subprocess.run(
        [sys.executable, "-m", "pudthp_cli", "fuzz", "--hub", url, "--time", str(seconds),
         "--workers", "1", "--impl", "ref", "--seed", "7", "--no-example-db", "--findings",
         os.path.join(root, f"campaign-{run}"), "--machine", f"campaign-{run}"],
        capture_output=True, text=True, check=False)
    m = re.search(r"\(([\d,]+) steps/s", r.stdout)
    return float(m.group(1).replace(",", "")) if m else 0.0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m fuzz.hub_bench", description=__doc__)
    p.add_argument("--junk", type=int, default=200_000)
    p.add_argument("--exchanges", type=int, default=200)
    p.add_argument("--campaign", type=float, default=0.0, help="seconds per campaign")
    p.add_argument("--rounds", type=int, default=3, help="campaigns per hub, alternated")
    a = p.parse_args(argv)
    labels = ("clean", f"{a.junk} junk")
    with tempfile.TemporaryDirectory(prefix="pudthp-hub-bench-") as tmp:
        hubs = []
        try:
            for label in labels:
                data = os.path.join(tmp, label.replace(" ", "-"), "hub")
                os.makedirs(data)
                hubs.append((data, *serve(data)))
            add_junk(hubs[1][2], a.junk)
            time.sleep(5)  # the server's append-only file settles (rewritten once)
            rows = []
            for label, (data, _, url) in zip(labels, hubs, strict=True):
                start, times, server = time_link(url, os.path.dirname(data), a.exchanges,
                                                 data)
                rows.append((label, start, times, server))
            rates: dict[str, list[float]] = {label: [] for label in labels}
            for run in range(a.rounds if a.campaign else 0):
                for label, (data, _, url) in zip(labels, hubs, strict=True):
                    rates[label].append(campaign_rate(url, os.path.dirname(data),
                                                      a.campaign, run))
        finally:
            for _, proc, _ in hubs:
                proc.terminate()
                proc.wait()
    print(f"{a.exchanges} exchanges per hub after a link's start; an exchange every "
          f"{SYNC_SECONDS:g} s in a campaign")
    print("start: a link's join and first exchange (which reads the whole findings log);")
    print("exchange: each later one; share: exchange and server CPU over the interval")
    print(f"{'hub':<14}{'start s wall':>13}{'CPU':>7}{'redis CPU':>10}"
          f"{'exchange ms wall':>18}{'CPU':>7}{'redis CPU':>10}{'share':>8}")
    for label, start, times, server in rows:
        wall = 1000 * sum(t[0] for t in times) / len(times)
        cpu = 1000 * sum(t[1] for t in times) / len(times)
        share = (cpu / 1000 + server) / SYNC_SECONDS
        print(f"{label:<14}{start[0]:>13.2f}{start[1]:>7.2f}{start[2]:>10.2f}"
              f"{wall:>18.2f}{cpu:>7.2f}{1000 * server:>10.2f}{share:>8.2%}")
    if a.campaign:
        for label in labels:
            print(f"campaign steps/s on the {label} hub: "
                  + ", ".join(f"{r:,.0f}" for r in rates[label]))
        ratios = sorted(j / c for c, j in zip(*rates.values(), strict=True) if c)
        if ratios:
            print(f"junk / clean, per round: {', '.join(f'{r:.3f}' for r in ratios)} "
                  f"(median {ratios[len(ratios) // 2]:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
