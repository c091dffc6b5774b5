"""``pudthp hub serve`` as a process for the tests: started on a free port, stopped with
SIGTERM."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest


def start(data: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    """``pudthp hub serve --port 0``; returns the process and the URL it printed."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "pudthp_cli", "hub", "serve", "--port", "0", "--dir", str(data),
         *extra],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    m = re.match(r"pudthp hub: serving (redis://\S+)$", line.strip())
    if m is None:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"no URL printed: {line!r} {err!r}")
    return proc, m.group(1)


def stop(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return out
