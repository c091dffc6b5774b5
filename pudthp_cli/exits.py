"""How a ``pudthp`` command ends: its exit statuses and the one line that says why.

0 no finding, 1 a finding, 2 bad input or usage (a memory or time limit hit included:
never a finding), 4 this machine cannot run the command (the kselftest skip code), 130
interrupted, 143 terminated (SIGTERM, campaigns).  Bad input of any kind is one line on
stderr starting with ``pudthp: error:``, never a traceback.
"""

from __future__ import annotations

import sys

EXIT_USAGE = 2
EXIT_CANNOT_RUN = 4  # the kselftest skip code: this machine lacks what the command needs
EXIT_INTERRUPTED = 130


def error(message: str) -> int:
    """Say ``message`` as the one line of a usage or input error (whitespace folded);
    the exit status."""
    print(f"pudthp: error: {' '.join(message.split())}", file=sys.stderr)
    return EXIT_USAGE


def cannot_run(message: str) -> int:
    """Say why this machine cannot run the command; the exit status."""
    print(f"pudthp: cannot run here: {message}", file=sys.stderr)
    return EXIT_CANNOT_RUN
