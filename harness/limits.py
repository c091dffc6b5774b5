"""Resource limits of a run and of a campaign worker: memory (``--max-rss``) and time.

Hitting a limit is never a finding: the model is not wrong because this machine ran out of
memory or patience.  It surfaces as ``LimitExceeded``, a ``BaseException`` so that no
``except Exception`` on the way (the model's own checkers, the lockstep comparison, the
runner that turns exceptions into findings, Hypothesis) mistakes it for a failure of the
program; the command line turns it into one line, and a campaign counts it and moves on.
A ``MemoryError`` raised anywhere in a run means the same thing and is turned into
``LimitExceeded`` by the runner.

Memory is watched two ways, both armed by ``memory_limit``:

- a watchdog thread reads the process's resident set size (``/proc/self/statm``) every
  ``POLL_SECONDS`` and, once it is over the limit, has ``LimitExceeded`` raised in the main
  thread (a signal whose handler raises; Python runs it between bytecodes, so a long C call
  finishes first), again every ``REPEAT_SECONDS`` while it stays over;
- ``RLIMIT_DATA`` (private writable memory) is set to what the process has now plus the
  limit, so one allocation far over the limit fails at once with ``MemoryError`` instead of
  growing the process before the watchdog looks again.

Time is ``time_limit``: ``SIGALRM`` after the given seconds raises ``LimitExceeded`` in the
main thread, again every ``REPEAT_SECONDS`` until the block ends.

In a campaign worker a limit must not be raised just anywhere: Hypothesis' own code between
two steps would take it for a flaky strategy.  There a ``Gate`` says where it may be raised
(inside ``gate.open()``, around each step of the model); a limit signalled elsewhere is held
and raised as the next step begins.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import sys
import threading
import time
from collections.abc import Iterator
from types import FrameType
from typing import Any

POLL_SECONDS = 0.05
REPEAT_SECONDS = 1.0  # a limit still exceeded is raised again this often: an exception
# raised where Python cannot pass it on (a gc callback, a __del__) is only printed
MEMORY_SIGNAL = signal.SIGUSR2
MIN_RSS_MB = 64
MIN_REPEAT_SECONDS = 0.05  # a timer never fires more often: a signal storm would livelock
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


class LimitExceeded(BaseException):
    """A run went over a resource limit: ``kind`` is ``memory`` or ``time``; ``str()`` is one
    line saying which limit and how far the run got, never a finding."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def memory_error() -> LimitExceeded:
    """What a ``MemoryError`` met inside a run means."""
    if _active_limit_mb:
        return LimitExceeded("memory", f"memory limit reached: an allocation failed under "
                             f"--max-rss {_active_limit_mb} MiB; the run stopped, not a finding")
    return LimitExceeded("memory", "out of memory: an allocation failed; the run stopped, "
                         "not a finding")


def physical_memory_mb() -> int:
    """This machine's memory in MiB (MemTotal), or 4096 when /proc cannot say."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 4096


def default_max_rss_mb(processes: int = 1) -> int:
    """The default ``--max-rss`` of each of ``processes`` processes: half of this machine's
    memory shared among them (so a run or a whole campaign leaves the other half), at least
    ``MIN_RSS_MB``."""
    return max(MIN_RSS_MB, physical_memory_mb() // 2 // max(1, processes))


def rss_mb() -> int:
    """The resident set size of this process in MiB."""
    with open("/proc/self/statm", encoding="ascii") as f:
        return int(f.read().split()[1]) * PAGE_SIZE >> 20


def _data_mb() -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmData:"):
                return int(line.split()[1]) >> 10
    return 0


_active_limit_mb = 0


class Gate:
    """Where an asynchronous limit may be raised: inside ``open()`` blocks at once, anywhere
    else held in ``pending`` and raised as the next block opens."""

    def __init__(self) -> None:
        self.depth = 0
        self.pending: LimitExceeded | None = None

    @contextlib.contextmanager
    def open(self) -> Iterator[None]:
        if self.pending is not None:
            e, self.pending = self.pending, None
            raise e
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    def fire(self, e: LimitExceeded) -> None:
        """From a signal handler: raise ``e`` here if the gate is open, else hold it (a
        memory limit is never replaced by a time limit)."""
        if self.depth:
            raise e
        if self.pending is None or self.pending.kind != "memory":
            self.pending = e


def _raise_or_hold(e: LimitExceeded, gate: Gate | None) -> None:
    if gate is None:
        raise e
    gate.fire(e)


@contextlib.contextmanager
def memory_limit(max_mb: int | None, gate: Gate | None = None) -> Iterator[None]:
    """Inside the block, this process raises ``LimitExceeded("memory")`` once its resident
    set is over ``max_mb`` MiB, and ``MemoryError`` (which a run turns into the same) when
    one allocation would take it far over.  ``None`` or 0: no limit.  With ``gate``, only
    where the gate is open.  Main thread only."""
    global _active_limit_mb
    if not max_mb:
        yield
        return
    last = [0.0]  # when the signal was last sent (time.monotonic()), 0: under the limit
    done = threading.Event()
    main = threading.main_thread().ident
    assert main is not None

    def handler(signum: int, frame: FrameType | None) -> None:
        _raise_or_hold(LimitExceeded(
            "memory", f"memory limit reached: resident set over {max_mb} MiB (--max-rss); "
            "the run stopped, not a finding"), gate)

    def watch() -> None:
        while not done.wait(POLL_SECONDS):
            try:
                over = rss_mb() > max_mb
            except (OSError, ValueError, IndexError):
                return
            now = time.monotonic()
            if over and now - last[0] >= REPEAT_SECONDS:
                last[0] = now
                signal.pthread_kill(main, MEMORY_SIGNAL)
            elif not over:
                last[0] = 0.0  # back under (memory freed): raise at once next time

    old_handler = signal.signal(MEMORY_SIGNAL, handler)
    quiet_unraisable_limits()
    # the watchdog first: its thread's stack is private memory, which the limit counts
    thread = threading.Thread(target=watch, name="pudthp-rss-watch", daemon=True)
    thread.start()
    old_rlimit = resource.getrlimit(resource.RLIMIT_DATA)
    soft = min((_data_mb() + max_mb) << 20, (1 << 63) - 1)
    hard = old_rlimit[1]
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    previous, _active_limit_mb = _active_limit_mb, max_mb
    try:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))
        yield
    finally:
        done.set()
        thread.join()
        _active_limit_mb = previous
        resource.setrlimit(resource.RLIMIT_DATA, old_rlimit)
        signal.signal(MEMORY_SIGNAL, old_handler)


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str = "the run") -> Iterator[None]:
    """Inside the block, ``LimitExceeded("time")`` is raised in the main thread once
    ``seconds`` have passed.  ``None`` or 0: no limit.  Main thread only; not nested."""
    if not seconds:
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        raise LimitExceeded("time", f"time limit reached: {what} took over {seconds:g} s; "
                            "stopped, not a finding")

    old = signal.signal(signal.SIGALRM, handler)
    quiet_unraisable_limits()
    signal.setitimer(signal.ITIMER_REAL, seconds, REPEAT_SECONDS)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


class ProgramTimer:
    """A time cap per program in a campaign: ``start()`` (again for each program) raises
    ``LimitExceeded("time")`` in the main thread ``seconds`` later unless ``stop()`` came
    first; ``close()`` puts the old ``SIGALRM`` handler back.  With ``gate``, raised only
    where the gate is open.  Main thread only."""

    def __init__(self, seconds: float, what: str = "one program",
                 gate: Gate | None = None) -> None:
        self.seconds = seconds

        def handler(signum: int, frame: FrameType | None) -> None:
            _raise_or_hold(LimitExceeded(
                "time", f"time limit reached: {what} took over {seconds:g} s; dropped, not "
                "a finding"), gate)

        self._old = signal.signal(signal.SIGALRM, handler)
        quiet_unraisable_limits()

    def start(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, self.seconds, _repeat(self.seconds))

    def stop(self) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)

    def close(self) -> None:
        self.stop()
        signal.signal(signal.SIGALRM, self._old)


def _repeat(seconds: float) -> float:
    return max(MIN_REPEAT_SECONDS, min(seconds, REPEAT_SECONDS))


def quiet_unraisable_limits() -> None:
    """A limit raised where Python cannot pass an exception on (a gc callback, a
    ``__del__``) is dropped without a word instead of printed with a traceback: the timer
    or the watchdog raises it again (``REPEAT_SECONDS``) where it can be handled."""
    if getattr(sys.unraisablehook, "_pudthp_quiet", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, LimitExceeded):
            return
        previous(unraisable)

    hook._pudthp_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


@contextlib.contextmanager
def limit_signals_blocked() -> Iterator[None]:
    """The limit signals held back inside the block (delivered at its end): for a write that
    must not be cut in two, e.g. a message to the campaign's parent."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {MEMORY_SIGNAL, signal.SIGALRM})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
