"""``pudthp dashboard`` (``fuzz/dashboard.py``): the live page in a real browser (headless
Chromium of the distribution, driven by Selenium; skipped with the reason where either is
missing), its endpoints (read-only, answering its own address only, never the password),
and the command line against a served hub."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fakeredis
import pytest
from hub_tools import MetaReplayer, start, stop

from fuzz.dashboard import Dashboard, DashboardServer
from fuzz.hub import Hub
from fuzz.stats import Sample, StatsWriter

CODE = "c0de" * 16
T0 = 1_800_000_000.0
# Printable, so the hub's checks let them through: only the page's escaping stands
# between them and the browser
HOSTILE_MACHINE = '<img src=x onerror="window.pwned=1">'
HOSTILE_SIGNATURE = "invariant:read:<script>window.pwned=2</script>"
PROGRAM = json.dumps({
    "format": "pudthp-program/1", "config": {},
    "ops": [{"op": "mmap", "mm": 0, "start": 0, "npages": 8, "prot": "rw"},
            {"op": "read", "mm": 0, "addr": 1}],
    "meta": {"signature": HOSTILE_SIGNATURE}}) + "\n"


def joined(server: fakeredis.FakeServer, machine: str) -> Hub:
    hub = Hub(fakeredis.FakeRedis(server=server), machine=machine, say=lambda _: None,
              replayer=MetaReplayer())
    hub.join("atheris", {}, code=CODE)
    return hub


def report(hub: Hub, programs: int, features: dict[str, int]) -> None:
    w = StatsWriter(None, hub.machine, "atheris", clock=lambda: T0)
    assert hub.push_stats(w.record(Sample(programs, 10 * programs, 1, corpus=4, cov=7,
                                          ft=9, features=features), T0 + 5)) == "stored"


@pytest.fixture
def served() -> Iterator[tuple[fakeredis.FakeServer, str]]:
    """A fakeredis hub with two machines (one with a hostile name) and a finding, and a
    dashboard on it on a free port of 127.0.0.1, refreshing every second."""
    server = fakeredis.FakeServer()
    a, b = joined(server, "lab-1"), joined(server, HOSTILE_MACHINE)
    report(a, 120, {"pud.fault": 1, "pud.split": 1})
    report(b, 30, {"pud.split": 2, "pmd.fault": 1})
    assert a.push_finding(HOSTILE_SIGNATURE, PROGRAM) == "stored"
    viewer = Hub(fakeredis.FakeRedis(server=server), label="redis://:***@lab:6379/0",
                 machine="dashboard", say=lambda _: None)
    httpd = DashboardServer(Dashboard(viewer, refresh=1.0), "127.0.0.1", 0)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, httpd.url()
    finally:
        httpd.shutdown()
        httpd.server_close()


def get(url: str, method: str = "GET", host: str | None = None) -> tuple[int, dict[str, str],
                                                                         bytes]:
    req = urllib.request.Request(url, method=method)
    if host is not None:
        req.add_header("Host", host)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def test_the_endpoints(served: tuple[fakeredis.FakeServer, str]) -> None:
    _, url = served
    code, headers, body = get(url + "status.json")
    assert code == 200
    assert headers["Content-Type"] == "application/json"
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    assert headers["X-Content-Type-Options"] == "nosniff"
    data = json.loads(body)
    assert [m["name"] for m in data["machines"]] == [HOSTILE_MACHINE, "lab-1"]
    # lab-1 hit {pud.fault, pud.split}, the other {pud.split, pmd.fault}: 3 together
    assert data["union"] == 3
    assert data["hub"] == "redis://:***@lab:6379/0"
    [finding] = data["findings"]
    assert finding["signature"] == HOSTILE_SIGNATURE
    code, headers, body = get(url + f"finding/{finding['key']}.json")
    assert (code, body.decode()) == (200, PROGRAM)
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    code, _, body = get(url + f"finding/{finding['key']}.c")
    assert code == 200
    assert body.startswith(b"// SPDX-License-Identifier: GPL-2.0-only\n")
    assert b"int main(" in body
    assert get(url + "finding/" + "0" * 64 + ".json")[0] == 404
    assert get(url + "finding/../status.json")[0] == 404
    # read-only: no method but GET and HEAD
    for method in ("POST", "PUT", "DELETE"):
        assert get(url + "status.json", method)[0] == 501
    # a name of some other site pointing at 127.0.0.1 is not answered
    assert get(url + "status.json", host="evil.example:80")[0] == 421
    assert get(url + "status.json", host="localhost:1")[0] == 200


def test_a_finding_whose_program_is_not_valid_is_not_served(
        served: tuple[fakeredis.FakeServer, str]) -> None:
    server, url = served
    hub = joined(server, "lab-1")
    hub.r.hset(hub.finding_key("invariant:bad"), mapping={
        "signature": "invariant:bad", "text": '{"format": "pudthp-program/1", "ops": 3}',
        "ops": 1, "machine": "lab-1", "pushed": "2027-01-15T08:00:00+00:00"})
    hub.r.sadd(hub.key("signatures"), "invariant:bad")
    data = json.loads(get(url + "status.json")[2])
    key = next(f["key"] for f in data["findings"] if f["signature"] == "invariant:bad")
    code, headers, body = get(url + f"finding/{key}.json")
    assert code == 422
    assert headers["Content-Type"] == "text/plain; charset=utf-8"
    assert body.startswith(b"not a valid program: ")
    assert get(url + f"finding/{key}.c")[0] == 422


def browser() -> tuple[str, str]:
    """The distribution's Chromium and its driver, or skip."""
    pytest.importorskip("selenium", reason="selenium is not installed (the dev extra)")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if chromium is None or driver is None:
        pytest.skip("no headless browser: install the chromium and chromium-driver packages")
    return chromium, driver


def test_the_page_in_a_real_browser(served: tuple[fakeredis.FakeServer, str]) -> None:
    chromium, driver_path = browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    server, url = served
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                "--disable-gpu", "--no-first-run"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        driver.get(url)

        # the page redraws its tables every second: read each in one script, never
        # element by element (an element read later may have been replaced)
        def rows(kind: str) -> list[list[str]]:
            return list(driver.execute_script(
                "return Array.from(document.querySelectorAll('tr.' + arguments[0]))"
                ".map(tr => Array.from(tr.cells).map(td => td.textContent))", kind))

        def summary() -> str:
            return str(driver.execute_script(
                "return document.getElementById('summary').textContent"))

        # waits for the page's first fetch (a condition, not a time: 120 s is a bound)
        wait = WebDriverWait(driver, 120)
        wait.until(lambda _: len(rows("machine")) == 2)
        machines = rows("machine")
        assert [r[0] for r in machines] == [HOSTILE_MACHINE, "lab-1"]  # shown as text
        assert machines[1][1] == "atheris"
        # lab-1: 1200 execs in the 5 s since its writer started: 240/s; 120 programs,
        # 2 features, cov 7, ft 9, corpus 4, 1 finding
        assert machines[1][4:] == ["240.0 execs/s", "120", "2", "7", "9", "4", "1"]
        assert "3 model-state feature(s) hit by any machine (union)" in summary()
        [finding] = rows("finding")
        assert finding[:3] == [HOSTILE_SIGNATURE, "2", "lab-1"]
        # nothing from the hub ran as script or became an element
        assert driver.execute_script("return window.pwned === undefined") is True
        assert driver.execute_script(
            "return document.querySelectorAll('img, td script, td *:not(a)').length") == 0
        # the page refreshes from the hub: a third machine appears without a reload
        report(joined(server, "lab-3"), 5, {"pte.fault": 1})
        wait.until(lambda _: len(rows("machine")) == 3)
        assert "4 model-state feature(s)" in summary()
        links = dict(driver.execute_script(
            "return Array.from(document.querySelectorAll('tr.finding a'))"
            ".map(a => [a.textContent, a.href])"))
        assert sorted(links) == ["C", "program"]
        driver.get(links["program"])
        shown: Any = json.loads(driver.find_element(By.TAG_NAME, "body").text)
        assert shown == json.loads(PROGRAM)
        driver.get(links["C"])
        assert "int main(" in driver.find_element(By.TAG_NAME, "body").text
    finally:
        driver.quit()


def test_the_command_line(tmp_path: Path) -> None:
    proc, url = start(tmp_path / "hub", "--password", "s3cret-pw")
    url = url.replace("<password>", "s3cret-pw")
    try:
        hub = Hub.connect(url, machine="lab-1", say=lambda _: None)
        hub.join("hypothesis", {}, code=CODE)
        hub.close()
        dash = subprocess.Popen(
            [sys.executable, "-m", "pudthp_cli", "dashboard", url, "--port", "0"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert dash.stdout is not None
        line = dash.stdout.readline()
        try:
            assert line.startswith("pudthp dashboard: serving http://127.0.0.1:"), line
            page = line.split()[3]
            code, _, body = get(page + "status.json")
            assert code == 200
            assert [m["name"] for m in json.loads(body)["machines"]] == ["lab-1"]
            for path in ("", "dashboard.js", "status.json"):
                assert b"s3cret-pw" not in get(page + path)[2]
            assert "s3cret-pw" not in line
        finally:
            dash.send_signal(signal.SIGTERM)
            out, err = dash.communicate(timeout=60)
        assert dash.returncode == 0, err
        assert "s3cret-pw" not in out + err
        r = subprocess.run([sys.executable, "-m", "pudthp_cli", "dashboard",
                            url.replace("s3cret-pw", "wrong"), "--port", "0"],
                           capture_output=True, text=True, timeout=60, check=False)
        assert r.returncode == 2
        assert r.stderr.startswith("pudthp: error: ")
        assert "wrong" not in r.stderr
    finally:
        stop(proc)
