// The live view of a campaign: fetch status.json every data-refresh seconds and draw it.
// Every value comes from the hub, which peers write: it only ever reaches the page as
// text (textContent), never as HTML.
"use strict";

function cell(row, value, cls) {
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "-" : String(value);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function num(v) {
  return v === null || v === undefined ? "-" : Number(v).toLocaleString("en");
}

function when(t, now) {
  if (t === null || t === undefined) return "-";
  const clock = new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19);
  const age = now - t;
  const ago = age < 120 ? Math.round(age) + " s ago"
    : age < 7200 ? Math.round(age / 60) + " min ago" : (age / 3600).toFixed(1) + " h ago";
  return clock + " (" + ago + ")";
}

function link(td, href, text) {
  const a = document.createElement("a");
  a.setAttribute("href", href);
  a.textContent = text;
  td.appendChild(a);
}

function draw(s) {
  document.getElementById("campaign").textContent = "'" + s.campaign + "' on " + s.hub;
  const machines = document.querySelector("#machines tbody");
  const findings = document.querySelector("#findings tbody");
  machines.replaceChildren();
  findings.replaceChildren();
  const summary = document.getElementById("summary");
  if (!s.reachable) {
    summary.textContent = "The hub cannot be reached; trying again.";
    summary.className = "unreachable";
    return;
  }
  summary.className = "";
  let programs = 0;
  let running = 0;
  for (const m of s.machines) {
    const tr = document.createElement("tr");
    tr.className = "machine";
    cell(tr, m.name);
    cell(tr, m.engine);
    cell(tr, m.state, m.state === "running" ? "running" : m.state === "silent" ? "silent" : "");
    cell(tr, when(m.last, s.now));
    cell(tr, m.rate === null ? null : Number(m.rate).toFixed(1) + " " + m.unit + "/s", "n");
    for (const v of [m.programs, m.features_hit, m.cov, m.ft, m.corpus, m.findings]) {
      cell(tr, num(v), "n");
    }
    machines.appendChild(tr);
    programs += m.programs || 0;
    if (m.state === "running") running += 1;
  }
  summary.textContent = s.machines.length + " machine(s), " + running + " running; "
    + programs.toLocaleString("en") + " programs; " + s.union
    + " model-state feature(s) hit by any machine (union); " + s.signatures
    + " finding signature(s) on the hub"
    + (s.skipped ? "; " + s.skipped + " value(s) on the hub were not valid" : "") + ".";
  for (const f of s.findings) {
    const tr = document.createElement("tr");
    tr.className = "finding";
    cell(tr, f.signature);
    cell(tr, f.ops, "n");
    cell(tr, f.machine);
    cell(tr, f.pushed);
    const key = encodeURIComponent(f.key);
    link(cell(tr, ""), "finding/" + key + ".json", "program");
    link(cell(tr, ""), "finding/" + key + ".c", "C");
    findings.appendChild(tr);
  }
}

async function update() {
  const stamp = document.getElementById("updated");
  try {
    const r = await fetch("status.json", { cache: "no-store" });
    if (!r.ok) throw new Error("status " + r.status);
    draw(await r.json());
    stamp.textContent = "Updated " + new Date().toISOString().slice(11, 19) + " UTC.";
  } catch (e) {
    stamp.textContent = "The dashboard cannot be read: " + e.message;
  }
}

const seconds = Number(document.body.dataset.refresh) || 5;
update();
setInterval(update, seconds * 1000);
