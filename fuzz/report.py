"""``pudthp report``: PNG plots and an ``index.html`` from campaign stats files.

Reads one or more ``pudthp-stats/1`` files (``fuzz.stats``), groups the records by campaign
and machine (two campaigns whose machines have the same names stay apart), and draws over
wall-clock time (minutes since the first record of all files), one line per machine:

- the rate (steps or executions per second);
- libFuzzer's coverage: ``cov`` and ``ft`` on two plots one above the other (``ft`` runs to
  several times ``cov``, so on one axis ``cov`` would be a flat line);
- model-state features hit, per machine, and per campaign the union of what its machines
  hit (the ``features_new`` of every record up to that time: machines hit different
  features, so the campaign has hit more than any one of them);
- the corpus size and the distinct findings.

A plot nothing in the records applies to (coverage and corpus for Hypothesis campaigns,
which have neither) is not drawn: ``index.html`` says why in its place.  ``index.html``
shows the plots, a table of the campaigns, one of the machines' last records and one of the
findings directory (signature, kind, ops, engine, date, a link to the file).  The finding
files are copied into ``findings/`` of the report directory and linked there, so the
directory can be copied elsewhere on its own.  matplotlib is imported only here, with its
Agg (file-only) renderer.
"""

from __future__ import annotations

import glob
import html
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from fuzz.stats import campaign_of, read_stats
from harness.program import ProgramError, load_program_file

Key = tuple[str, str]  # (campaign, machine)
Series = dict[Key, list[dict[str, Any]]]

# name, record key, title; "coverage" is two plots (cov, ft) in one figure
PLOTS: tuple[tuple[str, str, str], ...] = (
    ("rate", "rate", "per second"),
    ("coverage", "cov", "libFuzzer coverage: cov (top) and ft (bottom)"),
    ("features", "features_hit", "model-state features hit"),
    ("corpus", "corpus", "corpus inputs"),
    ("findings", "findings", "distinct findings"),
)
# Why a plot is left out when no record has its key
NOT_APPLICABLE = {
    "coverage": "libFuzzer coverage (cov, ft): does not apply, no machine recorded any "
                "(only the atheris engine runs under libFuzzer; the Hypothesis engine has "
                "no such coverage)",
    "features": "model-state features: no machine recorded them",
    "corpus": "corpus size: does not apply, no machine kept a corpus (only the atheris "
              "engine has one; the Hypothesis engine's example database is not a corpus)",
}
FINDINGS_SUBDIR = "findings"


@dataclass(frozen=True)
class FindingRow:
    path: str
    signature: str
    kind: str
    ops: int
    engine: str
    date: str


def load_series(paths: list[str]) -> Series:
    """(campaign, machine) -> its records from every file, in time order; ``StatsError``
    on a bad file."""
    out: Series = {}
    for path in paths:
        for rec in read_stats(path):
            out.setdefault((campaign_of(rec), rec["machine"]), []).append(rec)
    for recs in out.values():
        recs.sort(key=lambda r: r["time"])
    return dict(sorted(out.items()))


def feature_union(series: Series) -> dict[str, list[tuple[float, int]]]:
    """campaign -> (time, features hit by any of its machines up to then), one point per
    record that added to the union or ended a machine's records."""
    by_campaign: dict[str, list[dict[str, Any]]] = {}
    for (campaign, _), recs in series.items():
        by_campaign.setdefault(campaign, []).extend(
            r for r in recs if r.get("features_hit") is not None)
    out: dict[str, list[tuple[float, int]]] = {}
    for campaign, recs in sorted(by_campaign.items()):
        seen: set[str] = set()
        points: list[tuple[float, int]] = []
        for r in sorted(recs, key=lambda r: r["time"]):
            seen.update(r.get("features_new", []))
            points.append((r["time"], len(seen)))
        if points:
            out[campaign] = points
    return out


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


def copy_findings(rows: list[FindingRow], out_dir: str) -> None:
    """Copy each finding file into ``out_dir/findings`` (a file already there, the same
    one, is left as it is)."""
    dest_dir = os.path.join(out_dir, FINDINGS_SUBDIR)
    os.makedirs(dest_dir, exist_ok=True)
    for r in rows:
        dest = os.path.join(dest_dir, os.path.basename(r.path))
        if os.path.exists(dest) and os.path.samefile(r.path, dest):
            continue
        shutil.copyfile(r.path, dest)


def write_report(stats: list[str], out_dir: str, findings_dir: str,
                 progress: Callable[[str], None] | None = None) -> list[str]:
    """Write the plots, ``index.html`` and the copied findings into ``out_dir``; returns
    the plots and index written.  Raises ``StatsError`` for a stats file that cannot be
    used."""
    series = load_series(stats)
    os.makedirs(out_dir, exist_ok=True)
    t0 = min(r["time"] for recs in series.values() for r in recs)
    written: list[str] = []
    left_out: dict[str, str] = {}
    union = feature_union(series)
    for name, key, label in PLOTS:
        if name in NOT_APPLICABLE and not _any(series, key):
            left_out[name] = NOT_APPLICABLE[name]
            continue
        written.append(_plot(name, key, label, series, t0, out_dir, union))
    rows, bad = (findings_table(findings_dir) if os.path.isdir(findings_dir) else ([], 0))
    copy_findings(rows, out_dir)
    index = os.path.join(out_dir, "index.html")
    with open(index, "w", encoding="utf-8") as f:
        f.write(_html(stats, series, t0, union, left_out, rows, bad, findings_dir))
    written.append(index)
    if progress is not None:
        campaigns = len({c for c, _ in series})
        progress(f"pudthp report: {sum(len(r) for r in series.values())} records of "
                 f"{len(series)} machine(s) in {campaigns} campaign(s), {len(rows)} "
                 f"finding(s) -> {index}")
    return written


def _any(series: Series, key: str) -> bool:
    return any(r.get(key) is not None for recs in series.values() for r in recs)


def _label(key: Key, recs: list[dict[str, Any]], several: bool) -> str:
    campaign, machine = key
    return f"{campaign}/{machine} ({recs[0]['engine']})" if several else \
        f"{machine} ({recs[0]['engine']})"


def _plot(name: str, key: str, label: str, series: Series, t0: float, out_dir: str,
          union: dict[str, list[tuple[float, int]]]) -> str:
    from matplotlib.figure import Figure  # lazy: matplotlib is only needed here

    several = len({c for c, _ in series}) > 1
    keys = ("cov", "ft") if name == "coverage" else (key,)
    fig = Figure(figsize=(8, 4.5 * len(keys)), dpi=100)
    for n, k in enumerate(keys):
        ax = fig.add_subplot(len(keys), 1, n + 1)
        drawn = 0
        for i, (sk, recs) in enumerate(series.items()):
            pts = [((r["time"] - t0) / 60, r[k]) for r in recs if r.get(k) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], color=f"C{i % 10}",
                        marker=".", label=_label(sk, recs, several))
                drawn += 1
        if k == "features_hit":
            for j, (campaign, pts2) in enumerate(union.items()):
                ax.plot([(t - t0) / 60 for t, _ in pts2], [v for _, v in pts2],
                        color="black", linewidth=2, linestyle=("-", "--", ":", "-.")[j % 4],
                        label=f"{campaign}: union of its machines")
        title = label
        if k == "rate":
            units = sorted({r["unit"] for recs in series.values() for r in recs})
            title = f"{' or '.join(units)} per second"
        elif name == "coverage":
            title = f"libFuzzer {k}"
        ax.set_title(title)
        ax.set_xlabel("minutes since the first record")
        ax.grid(True, alpha=0.3)
        if drawn:
            ax.legend(fontsize="small")
        else:
            ax.text(0.5, 0.5, "no machine recorded this", ha="center", va="center",
                    transform=ax.transAxes)
    fig.tight_layout()
    path = os.path.join(out_dir, f"{name}.png")
    fig.savefig(path, format="png")
    return path


def _html(stats: list[str], series: Series, t0: float,
          union: dict[str, list[tuple[float, int]]], left_out: dict[str, str],
          rows: list[FindingRow], bad: int, findings_dir: str) -> str:
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
        "<h2>Campaigns</h2>",
        "<table><tr><th>campaign</th><th>machines</th><th>engines</th><th>features hit "
        "(union of its machines)</th></tr>",
    ]
    for campaign in sorted({c for c, _ in series}):
        mine = [recs for (c, _), recs in series.items() if c == campaign]
        pts = union.get(campaign)
        engines = ", ".join(sorted({recs[0]["engine"] for recs in mine}))
        parts.append(
            f'<tr><td>{e(campaign)}</td><td class="n">{len(mine)}</td><td>{e(engines)}</td>'
            f'<td class="n">{"" if pts is None else pts[-1][1]}</td></tr>')
    parts += [
        "</table>",
        "<h2>Machines</h2>",
        "<table><tr><th>campaign</th><th>machine</th><th>engine</th><th>minutes</th>"
        "<th>programs</th><th>steps/execs</th><th>mean rate</th><th>cov</th><th>ft</th>"
        "<th>features</th><th>corpus</th><th>findings</th></tr>",
    ]
    for (campaign, machine), recs in series.items():
        last = recs[-1]
        span = last["time"] - recs[0]["time"]
        mean = (last["count"] - recs[0]["count"]) / span if span > 0 else last["rate"]
        cells = [last["programs"], f"{last['count']} {last['unit']}", f"{mean:,.1f}/s",
                 last.get("cov"), last.get("ft"), last.get("features_hit"),
                 last.get("corpus"), last["findings"]]
        parts.append(
            f"<tr><td>{e(campaign)}</td><td>{e(machine)}</td><td>{e(last['engine'])}</td>"
            f'<td class="n">{span / 60:.1f}</td>'
            + "".join(f'<td class="n">{e("" if c is None else str(c))}</td>' for c in cells)
            + "</tr>")
    parts.append("</table>")
    parts.append("<h2>Over time</h2>")
    for name, _, label in PLOTS:
        if name in left_out:
            parts.append(f'<p class="na">{e(left_out[name])}.</p>')
        else:
            parts.append(f'<p><img src="{name}.png" alt="{e(label)}"></p>')
    parts.append(f"<h2>Findings</h2><p>From <code>{e(findings_dir)}</code>, copied into "
                 f"<code>{FINDINGS_SUBDIR}/</code>: {len(rows)} finding(s)"
                 + (f"; {bad} file(s) there are not readable programs" if bad else "")
                 + ("" if os.path.isdir(findings_dir) else " (no such directory)") + ".</p>")
    if rows:
        parts.append("<table><tr><th>signature</th><th>kind</th><th>ops</th><th>engine</th>"
                     "<th>date</th><th>file</th></tr>")
        for r in rows:
            base = os.path.basename(r.path)
            parts.append(
                f"<tr><td><code>{e(r.signature)}</code></td><td>{e(r.kind)}</td>"
                f'<td class="n">{r.ops}</td><td>{e(r.engine)}</td><td>{e(r.date)}</td>'
                f'<td><a href="{FINDINGS_SUBDIR}/{e(quote(base))}">{e(base)}</a></td></tr>')
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)
