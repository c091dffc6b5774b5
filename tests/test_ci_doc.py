"""The README's quick start and ``docs/ci.md``'s workflow, run as written: the commands are
read from the documents, not copied here, and run with small limits (a campaign of seconds,
a few test files) in a scratch directory that looks like a checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
CI_MD = ROOT / "docs" / "ci.md"
BIN = Path(sys.executable).parent


# --------------------------------------------------------------------------------------
# Reading the documents
# --------------------------------------------------------------------------------------


def fenced(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```$", text, re.M | re.S)


def workflow_steps() -> dict[str, str]:
    """The ``run`` of each named step of docs/ci.md's workflow (a ``run: |`` block kept as
    its lines, dedented)."""
    (yaml,) = fenced(CI_MD.read_text(), "yaml")
    steps: dict[str, str] = {}
    lines = yaml.splitlines()
    name = None
    for i, line in enumerate(lines):
        m = re.match(r"\s*- name: (.+)$", line)
        if m:
            name = m.group(1)
            continue
        m = re.match(r"(\s*)run: (.*)$", line)
        if m and name is not None:
            if m.group(2) != "|":
                steps[name] = m.group(2)
                continue
            indent = len(m.group(1)) + 2
            block = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) < indent:
                    break
                block.append(nxt[indent:])
            steps[name] = "\n".join(block).strip() + "\n"
    return steps


def readme_commands() -> list[str]:
    text = README.read_text()
    fresh = text.split("## On a fresh machine", 1)[1].split("\n## ", 1)[0]
    return [b.strip() for b in fenced(fresh, "sh")]


def test_the_readme_keeps_its_two_commands_and_says_what_the_tests_do_as_root() -> None:
    fuzz, tests, *_ = readme_commands()
    assert fuzz == ("python3 -m venv .venv && .venv/bin/pip install -q -e . && "
                    ".venv/bin/pudthp fuzz")
    assert tests == ("python3 -m venv .venv && .venv/bin/pip install -q -e '.[dev]' && "
                     ".venv/bin/python -m pytest -n auto -q")
    text = " ".join(README.read_text().split())
    for said in ("THP settings", "zram", '-m "not live"'):
        assert said in text
    # .ci/run installs what that test command needs and runs it
    ci_run = (ROOT / ".ci" / "run").read_text()
    assert ".venv/bin/pip install --quiet -e '.[dev]'" in ci_run
    assert ".venv/bin/python -m pytest -n auto -q" in ci_run


def test_the_workflow_has_the_steps_the_doc_explains() -> None:
    steps = workflow_steps()
    assert list(steps) == ["Install", "Tests", "Short campaign", "Replay the hub's findings"]
    # the install is the README's, the one that holds the test extra
    assert steps["Install"] == readme_commands()[1].rsplit(" && ", 1)[0]
    assert '-m "not live"' in steps["Tests"]
    assert "--stop-on-first" in steps["Short campaign"]
    assert "--junit" in steps["Short campaign"]
    assert "hub pull" in steps["Replay the hub's findings"]


# --------------------------------------------------------------------------------------
# Running them
# --------------------------------------------------------------------------------------


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A scratch directory that looks like a checkout with its venv: the sources linked, the
    corpus a directory of its own (so a campaign's example database and findings land
    here), ``.venv`` the running interpreter's environment."""
    work = tmp_path / "checkout"
    work.mkdir()
    for entry in ROOT.iterdir():
        if entry.name not in (".venv", "corpus", ".git") and not entry.name.startswith("."):
            (work / entry.name).symlink_to(entry)
    (work / ".venv").symlink_to(BIN.parent)
    (work / "corpus").mkdir()
    for d in ("seeds", "known_bad", "regressions"):
        (work / "corpus" / d).symlink_to(ROOT / "corpus" / d)
    return work


def run_step(script: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items()
             if not k.startswith(("PYTEST_", "PUDTHP_TEST")) and k != "CI"}
    return subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd,
                          capture_output=True, text=True, timeout=600, check=False,
                          env={**clean, "CI": "true", **env})


def junit_cases(path: Path) -> list[ET.Element]:
    return list(ET.parse(path).getroot().iter("testcase"))


def has_options(*argv_and_options: str) -> list[str]:
    """The options the command's ``--help`` lacks (``argv_and_options``: the command's
    words, then the options, each starting with --)."""
    words = [w for w in argv_and_options if not w.startswith("--")]
    options = [w for w in argv_and_options if w.startswith("--")]
    out = subprocess.run([sys.executable, "-m", "pudthp_cli", *words, "--help"],
                         capture_output=True, text=True, check=False).stdout
    return [o for o in options if o not in out]


def test_the_tests_step_runs_as_written(checkout: Path) -> None:
    script = workflow_steps()["Tests"]
    # small limits: two quick test files rather than the whole suite (which is running
    # this test), one worker
    script = script.replace("-n auto", "-n 0") + " tests/test_encoding.py tests/test_limits.py"
    r = run_step(script, checkout)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cases = junit_cases(checkout / "tests.xml")
    assert len(cases) > 20
    assert not [c for c in cases if c.find("failure") is not None]


def test_the_campaign_step_runs_as_written(checkout: Path) -> None:
    missing = has_options("fuzz", "--stop-on-first", "--junit")
    if missing:
        pytest.skip(f"pudthp fuzz has no {' '.join(missing)} yet; the step needs them")
    script = workflow_steps()["Short campaign"]
    assert "--time 300" in script
    # small limits: 8 seconds of one seeded worker (no finding is needed: the step passes
    # or names its finding)
    script = script.replace("--time 300", "--time 8 --workers 1 --seed 1")
    r = run_step(script, checkout)
    assert r.returncode in (0, 1), r.stderr[-3000:]
    assert "Traceback" not in r.stdout + r.stderr
    cases = junit_cases(checkout / "fuzz.xml")
    failed = [c for c in cases if c.find("failure") is not None]
    archived = sorted((checkout / "ci-findings").glob("*.json"))
    assert len(failed) == len(archived) == (r.returncode == 1)


def test_the_replay_step_runs_as_written(checkout: Path) -> None:
    missing = has_options("corpus", "replay", "--junit")
    if missing:
        pytest.skip(f"pudthp corpus replay has no {' '.join(missing)} yet; the step needs it")
    from hub_tools import start, stop
    from test_hub_trust import plant_finding

    from fuzz.hub_address import parse_hub_url, redis_client
    from harness.program import dump_program, load_program_file
    from harness.runner import run_program

    # a fuzz machine's finding: the rejected list_head design, filed under the signature it
    # reports (computed here, as the machine that found it did)
    program = load_program_file(str(ROOT / "corpus" / "known_bad" / "list_head_two_puds.json"))
    finding = run_program(program, "both").finding
    assert finding is not None
    signature = finding.signature
    text = dump_program(replace(program, meta={"signature": signature, "machine": "lab-1"}))

    script = workflow_steps()["Replay the hub's findings"]
    proc, url = start(checkout.parent / "hub")
    try:
        r = run_step(script, checkout, PUDTHP_HUB=url)  # an empty hub: nothing to replay
        assert r.returncode == 0, r.stderr
        assert not (checkout / "replay.xml").exists()
        client = redis_client(parse_hub_url(url))
        plant_finding(client, signature, text, machine="lab-1")
        client.close()
        r = run_step(script, checkout, PUDTHP_HUB=url)
    finally:
        stop(proc)
    assert r.returncode == 0, r.stdout + r.stderr  # the finding still fails as archived
    assert len(list((checkout / "hub-findings").glob("*.json"))) == 1
    assert len(junit_cases(checkout / "replay.xml")) == 1
