"""``pudthp report``: PNG plots and an ``index.html`` from campaign stats files.

Reads one or more ``pudthp-stats/1`` files (``fuzz.stats``), groups the records by machine,
and draws over wall-clock time (minutes since the first record of all files), one line per
machine: the rate (steps or executions per second), coverage (libFuzzer's ``cov``, and
``ft`` dashed; machines without them, the Hypothesis engine's, are left out), model-state
features hit, corpus size and distinct findings.  ``index.html`` shows the plots, a table of
the machines' last records and a table of the findings directory (signature, kind, ops,
engine, date, a link to the file).  matplotlib is imported only here, with its Agg
(file-only) renderer.
"""

from __future__ import annotations

import glob
import html
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fuzz.stats import read_stats
from harness.program import ProgramError, load_program_file

PLOTS: tuple[tuple[str, str, str], ...] = (
    ("rate", "rate", "per second"),
    ("coverage", "cov", "libFuzzer coverage (cov solid, ft dashed)"),
    ("features", "features_hit", "model-state features hit"),
    ("corpus", "corpus", "corpus inputs"),
    ("findings", "findings", "distinct findings"),
)


@dataclass(frozen=True)
class FindingRow:
    path: str
    signature: str
    kind: str
    ops: int
    engine: str
    date: str


def load_machines(paths: list[str]) -> dict[str, list[dict[str, Any]]]:
    """machine -> its records from every file, in time order; ``StatsError`` on a bad file."""
    out: dict[str, list[dict[str, Any]]] = {}
    for path in paths:
        for rec in read_stats(path):
            out.setdefault(rec["machine"], []).append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: r["time"])
    return dict(sorted(out.items()))


def findings_table(directory: str) -> tuple[list[FindingRow], int]:
    """The findings of ``directory`` (sorted by date, then signature) and how many files
    there are not readable programs."""
    rows: list[FindingRow] = []
    bad = 0
    for path in sorted(glob.glob(os.path.join(directory, "*.json"))):
        try:
            program = load_program_file(path)
        except ProgramError:
            bad += 1
            continue
        meta = program.meta
        rows.append(FindingRow(path, str(meta.get("signature", "")), str(meta.get("kind", "")),
                               len(program.ops), str(meta.get("engine", "")),
                               str(meta.get("date", ""))))
    rows.sort(key=lambda r: (r.date, r.signature))
    return rows, bad


def write_report(stats: list[str], out_dir: str, findings_dir: str,
                 progress: Callable[[str], None] | None = None) -> list[str]:
    """Write the plots and ``index.html`` into ``out_dir``; returns the files written.
    Raises ``StatsError`` for a stats file that cannot be used."""
    machines = load_machines(stats)
    os.makedirs(out_dir, exist_ok=True)
    t0 = min(r["time"] for recs in machines.values() for r in recs)
    written = [_plot(name, key, label, machines, t0, out_dir) for name, key, label in PLOTS]
    rows, bad = (findings_table(findings_dir) if os.path.isdir(findings_dir) else ([], 0))
    index = os.path.join(out_dir, "index.html")
    with open(index, "w", encoding="utf-8") as f:
        f.write(_html(stats, machines, t0, rows, bad, findings_dir, out_dir))
    written.append(index)
    if progress is not None:
        progress(f"pudthp report: {sum(len(r) for r in machines.values())} records of "
                 f"{len(machines)} machine(s), {len(rows)} finding(s) -> {index}")
    return written


def _plot(name: str, key: str, label: str, machines: dict[str, list[dict[str, Any]]],
          t0: float, out_dir: str) -> str:
    from matplotlib.figure import Figure  # lazy: matplotlib is only needed here

    fig = Figure(figsize=(8, 4.5), dpi=100)
    ax = fig.add_subplot()
    drawn = 0
    for i, (machine, recs) in enumerate(machines.items()):
        pts = [((r["time"] - t0) / 60, r[key]) for r in recs if r.get(key) is not None]
        if not pts:
            continue
        color = f"C{i % 10}"
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color=color, marker=".",
                label=f"{machine} ({recs[0]['engine']})")
        drawn += 1
        if key == "cov":
            ft = [((r["time"] - t0) / 60, r["ft"]) for r in recs if r.get("ft") is not None]
            if ft:
                ax.plot([p[0] for p in ft], [p[1] for p in ft], color=color, linestyle="--")
    if key == "rate":
        units = sorted({r["unit"] for recs in machines.values() for r in recs})
        label = f"{' or '.join(units)} per second"
    ax.set_title(label)
    ax.set_xlabel("minutes since the first record")
    ax.grid(True, alpha=0.3)
    if drawn:
        ax.legend(fontsize="small")
    else:
        ax.text(0.5, 0.5, "no machine recorded this", ha="center", va="center",
                transform=ax.transAxes)
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, format="png")
    return path


def _html(stats: list[str], machines: dict[str, list[dict[str, Any]]], t0: float,
          rows: list[FindingRow], bad: int, findings_dir: str, out_dir: str) -> str:
    e = html.escape
    when = datetime.now(UTC).isoformat(timespec="seconds")
    start = datetime.fromtimestamp(t0, UTC).isoformat(timespec="seconds")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><title>pudthp campaign report</title>',
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .5em;text-align:left}"
        "td.n{text-align:right}img{max-width:100%}code{font-size:90%}</style></head><body>",
        "<h1>pudthp campaign report</h1>",
        f"<p>Written {e(when)} from {len(stats)} stats file(s): "
        + ", ".join(f"<code>{e(p)}</code>" for p in stats)
        + f". Time 0 is {e(start)}.</p>",
        "<h2>Machines</h2>",
        "<table><tr><th>machine</th><th>engine</th><th>minutes</th><th>programs</th>"
        "<th>steps/execs</th><th>mean rate</th><th>cov</th><th>ft</th><th>features</th>"
        "<th>corpus</th><th>findings</th></tr>",
    ]
    for machine, recs in machines.items():
        last = recs[-1]
        minutes = (last["time"] - recs[0]["time"]) / 60
        span = last["time"] - recs[0]["time"]
        mean = (last["count"] - recs[0]["count"]) / span if span > 0 else last["rate"]
        cells = [last["programs"], f"{last['count']} {last['unit']}", f"{mean:,.1f}/s",
                 last.get("cov"), last.get("ft"), last.get("features_hit"),
                 last.get("corpus"), last["findings"]]
        parts.append(
            f"<tr><td>{e(machine)}</td><td>{e(last['engine'])}</td>"
            f'<td class="n">{minutes:.1f}</td>'
            + "".join(f'<td class="n">{e("" if c is None else str(c))}</td>' for c in cells)
            + "</tr>")
    parts.append("</table>")
    parts.append("<h2>Over time</h2>")
    for name, _, label in PLOTS:
        parts.append(f'<p><img src="{name}.png" alt="{e(label)}"></p>')
    parts.append(f"<h2>Findings</h2><p>From <code>{e(findings_dir)}</code>: "
                 f"{len(rows)} finding(s)"
                 + (f"; {bad} file(s) there are not readable programs" if bad else "")
                 + ("" if os.path.isdir(findings_dir) else " (no such directory)") + ".</p>")
    if rows:
        parts.append("<table><tr><th>signature</th><th>kind</th><th>ops</th><th>engine</th>"
                     "<th>date</th><th>file</th></tr>")
        for r in rows:
            link = os.path.relpath(os.path.abspath(r.path), os.path.abspath(out_dir))
            href = "/".join(link.split(os.sep))
            parts.append(
                f"<tr><td><code>{e(r.signature)}</code></td><td>{e(r.kind)}</td>"
                f'<td class="n">{r.ops}</td><td>{e(r.engine)}</td><td>{e(r.date)}</td>'
                f'<td><a href="{e(href)}">{e(os.path.basename(r.path))}</a></td></tr>')
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)

