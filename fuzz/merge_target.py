"""The atheris target for libFuzzer's merge (``pudthp corpus minimize``), numbering
branches the same way in every process.

atheris gives each basic block of an instrumented function a coverage counter while it
walks a ``set`` of the block's first instructions, so the order, and so the numbers, follow
the instructions' addresses in memory: two processes number the same branch differently.
A merge's control file is written by one process and read back by the next (after a
worker crashed on an input, or when a killed merge is resumed); with differing numbers the
coverage of the earlier inputs would be compared with the wrong branches.  Here that
``set`` keeps the order instructions are added in (the order of the bytecode), so every
process numbers alike; then ``fuzz.target`` runs as ``python -m fuzz.target`` would.

Usage (libFuzzer runs it again for each merge worker, so ``argv[0]`` must be an executable
that starts it: ``fuzz.minimize`` writes one)::

    python -m fuzz.merge_target ARGV0 [target options] [libFuzzer flags and directories]
"""

from __future__ import annotations

import contextlib
import os
import runpy
import shutil
import sys
import threading
from typing import Any


class InsertionOrderedSet(dict[Any, None]):
    """The part of ``set`` atheris' instrumentation uses (``add``, iteration, ``in``), in
    insertion order."""

    def add(self, item: Any) -> None:
        self[item] = None


def make_numbering_deterministic() -> bool:
    """Give atheris' bytecode instrumentation an insertion-ordered ``set``; False if this
    atheris has no such module (its numbering is then left as it is)."""
    try:
        from atheris import instrument_bytecode  # type: ignore[import-untyped]
    except ImportError:
        return False
    instrument_bytecode.set = InsertionOrderedSet
    return True


def watch_parent() -> None:
    """End this process, removing the merge's scratch directory, once ``pudthp corpus
    minimize`` is gone: it holds the write end of a pipe whose read end every process of
    the merge inherits (``fuzz.minimize.ALIVE_FD_ENV``), and the read sees the end of the
    file when it dies, however it died."""
    from fuzz.minimize import ALIVE_FD_ENV, TMP_ENV

    fd = os.environ.get(ALIVE_FD_ENV, "")
    if not fd.isdigit():
        return
    tmp = os.environ.get(TMP_ENV, "")

    def wait() -> None:
        with contextlib.suppress(OSError):
            while os.read(int(fd), 1):
                pass
        if tmp and os.path.basename(tmp).startswith("pudthp-minimize-"):
            shutil.rmtree(tmp, ignore_errors=True)
        os._exit(1)

    threading.Thread(target=wait, name="pudthp-minimize-watch", daemon=True).start()


def main() -> None:
    watch_parent()
    if not make_numbering_deterministic():
        print("pudthp: warning: cannot make atheris' coverage numbering deterministic; "
              "a resumed merge may keep too few inputs", file=sys.stderr, flush=True)
    sys.argv = sys.argv[1:]
    runpy.run_module("fuzz.target", run_name="__main__", alter_sys=False)


if __name__ == "__main__":
    main()
