"""A campaign worker that is a Python process of its own, talking to the campaign over its
own pipe: the parent's handle (``PipeWorker``, a ``fuzz.supervisor.Worker``) and the
worker's end (``Channel``).

The worker is started with multiprocessing's ``spawn`` (a fresh interpreter: nothing of the
parent's state, its signal handlers or its hub connection, is inherited).  Messages are
tuples: the worker sends whatever its engine defines (``PipeWorker`` turns each into
supervisor events with the engine's ``translate``); the parent sends ``("stop",)`` and
``("known", signature)``.  The parent owns Ctrl-C and SIGTERM: the worker ignores both
(they are held back from the moment it is forked until it does, so a signal to the whole
process group is never lost or handled twice), and stops when told to or when its parent is
gone.  A worker killed at any moment (SIGKILL, the OOM killer) corrupts nothing shared: its
pipe closes and the supervisor sees it end.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from typing import Any

from fuzz.supervisor import Event, Warn
from harness.limits import limit_signals_blocked

Message = tuple[Any, ...]
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class PipeWorker:
    """The parent's handle of one worker process (see the module docstring):
    ``target(*args, conn, parent_pid)`` runs in the worker."""

    def __init__(self, target: Callable[..., None], args: tuple[Any, ...], name: str,
                 translate: Callable[[Message], Event | None]) -> None:
        ctx = multiprocessing.get_context("spawn")
        parent_end, child_end = ctx.Pipe(duplex=True)
        self.translate = translate
        self.proc = ctx.Process(target=target, args=(*args, child_end, os.getpid()),
                                name=name, daemon=True)
        # the child starts with Ctrl-C and SIGTERM held back until it ignores them; here
        # they wait until the child is started, so none is lost
        old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
        try:
            self.proc.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)
        child_end.close()  # the worker's end is the worker's only: its death closes the pipe
        self.conn: Any = parent_end
        self.status: int | None = None

    def waitables(self) -> list[Any]:
        return [h for h in (self.conn, self.proc.sentinel) if h is not None]

    def send(self, msg: Message) -> None:
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.send(msg)

    def events(self) -> list[Event]:
        """Every message waiting on the pipe, translated; a closed or broken pipe is
        closed, and a message cut short stops the worker (nothing after it can be
        trusted)."""
        out: list[Event] = []
        while self.conn is not None:
            try:
                if not self.conn.poll():
                    break
                msg = self.conn.recv()
            except (EOFError, OSError):
                self.conn.close()
                self.conn = None
                break
            except Exception as e:
                out.append(Warn(f"unreadable message ({e}); stopped"))
                self.conn.close()
                self.conn = None
                self.kill()
                break
            event = self.translate(msg)
            if event is not None:
                out.append(event)
        return out

    def exit_status(self) -> int | None:
        return self.status if self.status is not None else self.proc.exitcode

    def wait(self) -> int:
        if self.status is None:
            self.proc.join(timeout=5)
            code = self.proc.exitcode
            self.status = code if code is not None else -signal.SIGKILL
        return self.status

    def stop(self) -> None:
        self.send(("stop",))

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()


class Channel:
    """The worker's end of the pipe: what it sends, and what the parent told it."""

    def __init__(self, conn: Any, parent_pid: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, _SIGNALS)  # see PipeWorker
        self.conn = conn
        self.parent_pid = parent_pid
        self.stopped = False
        self.known: list[str] = []

    def pump(self) -> None:
        try:
            while self.conn.poll():
                msg = self.conn.recv()
                if msg[0] == "stop":
                    self.stopped = True
                elif msg[0] == "known":
                    self.known.append(msg[1])
        except (EOFError, OSError):
            self.stopped = True  # the parent is gone

    def updates(self) -> list[str]:
        """Signatures the parent said are known since the last call."""
        self.pump()
        got = self.known[:]
        self.known.clear()
        return got

    def stop_requested(self) -> bool:
        self.pump()
        return self.stopped or os.getppid() != self.parent_pid

    def emit(self, msg: Message) -> None:
        try:
            with limit_signals_blocked():  # never half a message
                self.conn.send(msg)
        except OSError:
            self.stopped = True
