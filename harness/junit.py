"""JUnit XML reports for CI (``--junit FILE`` of ``pudthp fuzz``, ``corpus replay`` and
``conform``): one ``<testsuite>`` in a ``<testsuites>`` root, one ``<testcase>`` per program
or finding, a failing one carrying the finding's one-line text as its ``<failure
message=...>`` (and as the element's text, where CI shows the body).  The layout is the
common one Jenkins, GitLab and GitHub's test-report actions read.  Written atomically (a
temporary file renamed), so a report on disk is always whole.
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Case:
    """One test case: ``name`` (a program's path, a finding's signature), ``classname``
    (the command and what it ran), its ``failure`` line (None: passed), ``skipped`` (why
    it did not run, None: it ran) and how long it took."""

    name: str
    classname: str
    failure: str | None = None
    seconds: float = 0.0
    skipped: str | None = None


def render(suite: str, cases: list[Case], seconds: float = 0.0) -> str:
    """The XML text of one suite named ``suite`` holding ``cases``."""
    failures = sum(c.failure is not None for c in cases)
    skipped = sum(c.skipped is not None and c.failure is None for c in cases)
    root = ET.Element("testsuites", name="pudthp", tests=str(len(cases)),
                      failures=str(failures), errors="0", time=f"{seconds:.3f}")
    el = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)),
                       failures=str(failures), errors="0", skipped=str(skipped),
                       time=f"{seconds:.3f}")
    for c in cases:
        case = ET.SubElement(el, "testcase", name=c.name, classname=c.classname,
                             time=f"{c.seconds:.3f}")
        if c.failure is not None:
            fail = ET.SubElement(case, "failure", message=_clean(c.failure), type="finding")
            fail.text = _clean(c.failure)
        elif c.skipped is not None:
            ET.SubElement(case, "skipped", message=_clean(c.skipped))
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, "unicode") + "\n"


def _clean(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot hold (a hostile signature's control
    characters), on one line."""
    kept = "".join(ch if 0x20 <= ord(ch) < 0xD800 or 0xE000 <= ord(ch) < 0xFFFE
                   or ord(ch) >= 0x10000 else " " for ch in text)
    return " ".join(kept.split())


def write(path: str, suite: str, cases: list[Case], seconds: float = 0.0) -> None:
    """Write the report to ``path`` (atomically); raises OSError."""
    text = render(suite, cases, seconds)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".junit.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
