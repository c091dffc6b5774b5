"""A campaign's state as the hub holds it: ``pudthp hub status`` and ``pudthp dashboard``.

Read from the hub (``fuzz.hub``), every value checked first (``fuzz.hub_values``, stats
records by ``fuzz.stats``): the campaign record, each machine's entry (what it joined with,
when it means to end and when it did), the last stats record of each machine, and the
findings the hub names.  The features hit by the campaign are the union of every record's
``features_new`` (each machine hits some the others do not, so the union is more than any
one machine's count); a hub that trimmed its stats stream (``fuzz.hub.STATS_MAXLEN``) may
have lost the first names, so the union is what the stream still holds.

``StatusReader`` reads the stream on from where it left off, so a view refreshed every few
seconds reads only what was added since.  What it keeps is bounded whatever peers write:
``MAX_MACHINES_SHOWN`` machines, ``MAX_UNION`` feature names, ``MAX_FINDINGS_SHOWN``
findings, ``MAX_STATS_PER_READ`` stream entries per refresh.

Findings are listed as the hub names them (signature, ops, the machine that pushed it):
nothing here replays them, so a listed finding is a claim until ``pudthp hub pull`` or a
campaign has replayed it.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from fuzz import hub_values as hv
from fuzz.hub import Hub, HubError
from fuzz.hub_values import BadValue

MAX_MACHINES_SHOWN = 1000
MAX_UNION = 10_000  # feature names; the catalogue has about a hundred
MAX_FINDINGS_SHOWN = 1000
MAX_STATS_PER_READ = 200_000
MAX_OPS = 1 << 40
MAX_PUSHED = 64  # characters of a push time
RECENT_SECONDS = 60.0  # a machine that reported within this is "running"


@dataclass
class MachineStatus:
    """One machine: its last stats record's figures (None before its first) and its
    entry's."""

    name: str
    engine: str
    last: float | None = None  # time of its last stats record
    rate: float | None = None
    unit: str | None = None
    programs: int | None = None
    count: int | None = None
    features_hit: int | None = None
    cov: int | None = None
    ft: int | None = None
    corpus: int | None = None
    findings: int | None = None
    joined: str | None = None
    ends: float | None = None
    finished: float | None = None

    def state(self, now: float) -> str:
        """``finished``, ``running`` (reported within ``RECENT_SECONDS``), ``silent`` or
        ``no report yet``."""
        if self.finished is not None:
            return "finished"
        if self.last is None:
            return "no report yet"
        return "running" if now - self.last <= RECENT_SECONDS else "silent"


@dataclass(frozen=True)
class FindingStatus:
    signature: str
    ops: int | None
    machine: str
    pushed: str
    key: str  # the SHA-256 of the signature: the finding's name in links

    def __lt__(self, other: FindingStatus) -> bool:
        return (self.pushed, self.signature) < (other.pushed, other.signature)


@dataclass
class CampaignStatus:
    hub: str  # the hub's address, never its password
    campaign: str
    reachable: bool
    now: float
    created: str | None = None
    created_by: str | None = None
    engine: str | None = None
    machines: list[MachineStatus] = field(default_factory=list)
    union: int = 0
    union_capped: bool = False
    findings: list[FindingStatus] = field(default_factory=list)
    signatures: int = 0
    skipped: int = 0  # hub values passed over (not valid)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for m, raw in zip(self.machines, data["machines"], strict=True):
            raw["state"] = m.state(self.now)
        return data


class StatusReader:
    """Reads a campaign's status from ``hub``, the stats stream on from the last read."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.after: str | None = None
        self.last: dict[str, dict[str, Any]] = {}  # machine -> its last stats record
        self.union: set[str] = set()
        self.union_capped = False
        self.skipped = 0

    def refresh(self, now: float | None = None) -> CampaignStatus:
        hub = self.hub
        status = CampaignStatus(hub.label, hub.campaign, False,
                                time.time() if now is None else now)
        try:
            if not hub.check():
                return status
        except HubError:  # the password changed since: as unreachable, for a live view
            return status
        self._read_stats()
        if not hub.up:
            return status
        status.reachable = True
        self._record(status)
        entries = hub.machines()
        names = sorted(set(entries) | set(self.last))[:MAX_MACHINES_SHOWN]
        for name in names:
            status.machines.append(_machine(name, entries.get(name), self.last.get(name)))
        status.union = len(self.union)
        status.union_capped = self.union_capped
        status.findings, status.signatures = self._findings()
        status.skipped = self.skipped
        status.reachable = hub.up
        return status

    def _read_stats(self) -> None:
        records = self.hub.read_stats(after=self.after, most=MAX_STATS_PER_READ)
        self.after = self.hub.stats_last or self.after
        self.skipped += self.hub.stats_skipped
        for rec in records:
            name = rec["machine"]
            if name not in self.last and len(self.last) >= MAX_MACHINES_SHOWN:
                continue
            if name not in self.last or rec["time"] >= self.last[name]["time"]:
                self.last[name] = rec
            for f in rec.get("features_new", []):
                if len(self.union) >= MAX_UNION:
                    self.union_capped = True
                    break
                self.union.add(f)

    def _record(self, status: CampaignStatus) -> None:
        def get() -> Any:
            return self.hub.r.get(self.hub.key("record"))

        raw = self.hub.call(get, None)
        if raw is None:
            return
        try:
            record = hv.record(raw)
        except BadValue:
            self.skipped += 1
            return
        status.created, status.created_by = record["created"], record["created_by"]
        status.engine = record["engine"]

    def _findings(self) -> tuple[list[FindingStatus], int]:
        hub = self.hub

        def read() -> tuple[list[FindingStatus], int]:
            total = int(hub.r.scard(hub.key("signatures")) or 0)
            out: list[FindingStatus] = []
            for raw in hub.r.sscan_iter(hub.key("signatures"), count=1000):
                if len(out) >= MAX_FINDINGS_SHOWN:
                    break
                try:
                    sig = hv.signature(raw)
                except BadValue:
                    self.skipped += 1
                    continue
                key = hashlib.sha256(sig.encode()).hexdigest()
                ops, machine, pushed = hub.r.hmget(hub.finding_key(sig),
                                                   ["ops", "machine", "pushed"])
                if machine is None:  # named, no program behind it
                    continue
                out.append(FindingStatus(sig, _ops(ops), _name(machine), _pushed(pushed),
                                         key))
            return sorted(out), total

        nothing: tuple[list[FindingStatus], int] = ([], 0)
        return hub.call(read, nothing)


def _machine(name: str, entry: dict[str, Any] | None,
             rec: dict[str, Any] | None) -> MachineStatus:
    engine = rec["engine"] if rec is not None else None
    if engine is None and entry is not None and entry.get("engine") in hv.ENGINES:
        engine = entry["engine"]
    m = MachineStatus(name, engine or "?")
    if rec is not None:
        m.last, m.rate, m.unit = rec["time"], rec["rate"], rec["unit"]
        m.programs, m.count, m.findings = rec["programs"], rec["count"], rec["findings"]
        m.features_hit, m.cov, m.ft = rec.get("features_hit"), rec.get("cov"), rec.get("ft")
        m.corpus = rec.get("corpus")
    if entry is not None:
        joined = entry.get("joined")
        m.joined = joined if isinstance(joined, str) and len(joined) <= MAX_PUSHED \
            and joined.isprintable() else None
        m.ends, m.finished = entry.get("ends"), entry.get("finished")
    return m


def _ops(raw: object) -> int | None:
    try:
        s = hv.text(raw, "a finding's op count", 32).strip()
    except BadValue:
        return None
    return int(s) if s.isdigit() and int(s) <= MAX_OPS else None


def _name(raw: object) -> str:
    try:
        return hv.machine_name(raw)
    except BadValue:
        return "(unnamed)"


def _pushed(raw: object) -> str:
    try:
        s = hv.text(raw, "a push time", MAX_PUSHED * 4)
    except BadValue:
        return ""
    return s if len(s) <= MAX_PUSHED and s.isprintable() else ""


# --------------------------------------------------------------------------------------
# The terminal view (``pudthp hub status``)
# --------------------------------------------------------------------------------------


def _when(t: float | None, now: float) -> str:
    if t is None:
        return "-"
    clock = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%S")
    age = now - t
    ago = (f"{age:.0f} s ago" if age < 120 else f"{age / 60:.0f} min ago" if age < 7200
           else f"{age / 3600:.1f} h ago")
    return f"{clock} ({ago})" if age >= 0 else f"{clock} (in the future)"


def _n(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def render_text(s: CampaignStatus) -> list[str]:
    """The status as lines for a terminal, everything from the hub escaped."""
    e = hv.escape
    out = [f"pudthp hub status: {s.hub} campaign {e(s.campaign)!r}"]
    if not s.reachable:
        return [*out, "  the hub cannot be reached"]
    if s.created is not None:
        out.append(f"  started {e(s.created)} by {e(s.created_by or '?')}, engine "
                   f"{e(s.engine or '?')}")
    else:
        out.append("  no campaign record: no machine joined this campaign")
    rows = [("machine", "engine", "state", "last report (UTC)", "rate", "programs",
             "features", "cov/ft", "corpus", "findings")]
    for m in s.machines:
        rate = "-" if m.rate is None else f"{m.rate:,.1f} {m.unit}/s"
        cov = "-" if m.cov is None and m.ft is None else f"{_n(m.cov)}/{_n(m.ft)}"
        rows.append((e(m.name, 40), e(m.engine, 20), m.state(s.now), _when(m.last, s.now),
                     rate, _n(m.programs), _n(m.features_hit), cov, _n(m.corpus),
                     _n(m.findings)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out.extend("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
               for r in rows)
    running = sum(m.state(s.now) == "running" for m in s.machines)
    programs = sum(m.programs or 0 for m in s.machines)
    out.append(f"  {len(s.machines)} machine(s), {running} reported in the last "
               f"{RECENT_SECONDS:.0f} s; {programs:,} programs; {s.union} model-state "
               "feature(s) hit by any machine (union)"
               + (f" (counting stopped at {MAX_UNION})" if s.union_capped else ""))
    out.append(f"  findings on the hub: {s.signatures} signature(s) named"
               + (" (not replayed here; 'pudthp hub pull' replays them)" if s.findings
                  else ""))
    for f in s.findings:
        out.append(f"    {e(f.signature)}  ({'?' if f.ops is None else f.ops} ops, "
                   f"pushed by {e(f.machine, 40)} {e(f.pushed)})")
    if s.skipped:
        out.append(f"  {s.skipped} value(s) on the hub were not valid and were passed over")
    return out
