"""The live-kernel side of ``pudthp conform``: one real process per model mm, the settings a
run needs, and the observation of what the kernel did.

**Processes.**  Every model mm is a forked Python process (a *server*) that runs the
address-space syscalls and the user loads and stores of its mm, driven by the controller
over a ``SOCK_SEQPACKET`` socket.  The first server is forked from the controller; the model's
``fork`` asks a server to ``fork()`` and its child, handed a fresh socket over
``SCM_RIGHTS``, serves the new mm; ``exit`` ends the process (``exit_mmap`` runs before the
process is reaped).  Model page ``v`` is address ``WINDOW_BASE + v * 4096``: a 1 GiB-aligned
window the size of the model's address space (512 GiB at x86_64 geometry) far below
``mmap_base``.  The window is never reserved: any mapping there would show as a VMA, so the
window stays empty until the program maps it, and each server checks at start that it is.

**Quiet servers.**  A server must not make THP events of its own.  The controller sets
``PR_SET_THP_DISABLE`` on itself for the run (so the memory a server inherits holds no THP);
each server clears it for its own mm and marks every VMA it inherited ``MADV_NOHUGEPAGE``
before it reports ready, ignores SIGINT (the controller owns Ctrl-C) and reaps its children.

**Settings.**  Every knob a run writes is read first and written back at the end, whatever
ends the run (``Settings`` as a context manager, with SIGTERM/SIGHUP turned into an
exception while it is active).  A run killed outright (SIGKILL, a crash of the machine's
OOM killer) cannot restore anything, so every change is first written to an on-disk record
(``SettingsRecord``, ``RECORD_PATH`` on /run, a tmpfs: a reboot resets the kernel and the
record together): the original value of each knob, and each device step to undo (swapoff,
zram reset, debugfs unmount), synced to disk before the change is made.  A run that ends
normally removes its entries; the next ``pudthp conform`` (or ``pudthp conform --restore``)
finds what a killed run left and restores it first (``restore_recorded``), so the kernel's
own values, never the test values, are what it saves.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import gc
import itertools
import json
import os
import pickle
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, NoReturn

from harness.conform import kernel as k
from harness.conform.kernel import PAGE_SIZE, KernelError
from harness.conform.observe import MTHP_COMPARED, VMSTAT_COMPARED, MmObs, Observation, PageObs

WINDOW_BASE = 0x1000_0000_0000  # 16 TiB: 1 GiB aligned, far below mmap_base (~127 TiB)
MAX_MSG = 1 << 16
SERVER_TIMEOUT_S = 120.0
LOCK_PATH = "/run/lock/pudthp-conform.lock"
RECORD_PATH = "/run/pudthp/conform-settings.json"
RECORD_FORMAT = "pudthp-conform-settings/1"

# io_uring (include/uapi/linux/io_uring.h): registering a fixed buffer pins its pages with
# pin_user_pages_fast(FOLL_WRITE | FOLL_LONGTERM) (io_uring/rsrc.c io_pin_pages)
NR_IO_URING_SETUP, NR_IO_URING_REGISTER = 425, 427
NR_PIDFD_GETFD = 438
IORING_REGISTER_BUFFERS, IORING_UNREGISTER_BUFFERS = 0, 1


# --------------------------------------------------------------------------------------
# Settings: save, set, restore
# --------------------------------------------------------------------------------------


class Interrupted(Exception):
    """SIGTERM or SIGHUP arrived while a run had the kernel's settings changed."""


class SettingsRecord:
    """The on-disk record of what conformance runs of this process changed and not yet put
    back: a list of entries, oldest first, each ``{"set": PATH, "old": VALUE}`` (a knob and
    its original value) or ``{"undo": [ACTION, ARG]}`` (``ACTIONS``: a device step to undo).
    Every change rewrites the file (a temporary file synced and renamed) before it returns,
    so the record is on disk before the change it describes is made; with no entry left
    the file is removed."""

    def __init__(self, path: str | None = None) -> None:
        self.path = path or RECORD_PATH
        self.entries: list[dict[str, Any]] = []

    def add(self, entry: dict[str, Any]) -> None:
        self.entries.append(entry)
        self._write()

    def drop(self, entries: list[dict[str, Any]]) -> None:
        gone = {id(e) for e in entries}
        self.entries = [e for e in self.entries if id(e) not in gone]
        self._write()

    def _write(self) -> None:
        directory = os.path.dirname(self.path) or "."
        if not self.entries:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            return
        os.makedirs(directory, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        data = json.dumps({"format": RECORD_FORMAT, "pid": os.getpid(),
                           "entries": self.entries})
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(data + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@dataclass
class Settings:
    """Knobs written for a run, each with the value it had before.

    ``set(path, value)`` saves the old value the first time a path is written; ``restore()``
    writes them back in reverse order and collects (rather than raises) what fails, so one
    stubborn file does not keep the others changed.  With a ``record`` each original value,
    and each device step announced with ``intend``, is on disk before the change is made,
    and leaves the record once restored.
    """

    saved: list[tuple[str, str]] = field(default_factory=list)
    undo: list[tuple[str, Callable[[], None]]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    record: SettingsRecord | None = None
    recorded: list[dict[str, Any]] = field(default_factory=list)

    def set(self, path: str, value: str) -> None:
        """Write ``value`` unless the knob holds it already: some writes act even when
        they change nothing (zswap's ``enabled``, even N, initialises zswap, which turns
        off large-folio swap-in until reboot)."""
        current = k.selected(k.read_text(path))
        if current == value:
            return
        if not any(p == path for p, _ in self.saved):
            self.saved.append((path, current))
            self._record({"set": path, "old": current})
        try:
            k.write_text(path, value)
        except OSError as e:
            raise KernelError(f"cannot set {path} to {value!r}: {e.strerror or e}") from None

    def intend(self, action: str, arg: str) -> None:
        """Record, before doing it, a device step that ``ACTIONS[action](arg)`` undoes, for
        a later run to undo should this one be killed (in this run ``on_restore`` does)."""
        assert action in ACTIONS
        self._record({"undo": [action, arg]})

    def _record(self, entry: dict[str, Any]) -> None:
        if self.record is not None:
            self.record.add(entry)
            self.recorded.append(entry)

    def on_restore(self, what: str, fn: Callable[[], None]) -> None:
        self.undo.append((what, fn))

    def restore(self) -> list[str]:
        for what, fn in reversed(self.undo):
            try:
                fn()
            except Exception as e:  # restore everything else even if one step fails
                self.problems.append(f"{what}: {e}")
        self.undo.clear()
        for path, old in reversed(self.saved):
            try:
                if k.selected(k.read_text(path)) != old:  # no write that changes nothing
                    k.write_text(path, old)
            except OSError as e:
                self.problems.append(f"restore {path}={old!r}: {e.strerror or e}")
        self.saved.clear()
        if self.record is not None and not self.problems:
            self.record.drop(self.recorded)  # else kept: the next run tries again
            self.recorded.clear()
        return self.problems


def _swapoff_if_on(device: str) -> str | None:
    if device not in active_swaps():
        return None
    _run(["swapoff", device])
    return f"swapoff {device}"


def _zram_reset_if_set(name: str) -> str | None:
    dev = f"/sys/block/{name}"
    if not os.path.isdir(dev) or k.read_text(f"{dev}/disksize").strip() == "0":
        return None
    k.write_text(f"{dev}/reset", "1")
    return f"reset /dev/{name}"


def _umount_if_mounted(path: str) -> str | None:
    if not os.path.ismount(path):
        return None
    _run(["umount", path])
    return f"umount {path}"


# How a later run undoes a recorded device step: each checks first whether there is
# anything to undo (a run killed just before the step never made it) and says what it did.
ACTIONS: dict[str, Callable[[str], str | None]] = {
    "swapoff": _swapoff_if_on,
    "zram_reset": _zram_reset_if_set,
    "umount": _umount_if_mounted,
}


def restore_recorded(path: str | None = None) -> tuple[int | None, list[str]]:
    """Put back what a killed run recorded in ``path``, newest change first: (the killed
    run's pid or None when there was no record, what was done).  Raises KernelError naming
    what could not be put back (the record is kept, with just that, for another try).
    Call with the run lock held."""
    path = path or RECORD_PATH
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None, []
    except (OSError, ValueError) as e:
        raise KernelError(f"{path}: unreadable record of changed settings ({e}); "
                          "check the THP knobs by hand, then delete it") from None
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise KernelError(f"{path}: not a {RECORD_FORMAT} record; check the THP knobs by "
                          "hand, then delete it")
    entries = data.get("entries")
    pid = data.get("pid")
    done: list[str] = []
    left: list[dict[str, Any]] = []
    problems: list[str] = []
    for entry in reversed(entries if isinstance(entries, list) else []):
        try:
            if isinstance(entry, dict) and "set" in entry:
                knob, old = str(entry["set"]), str(entry["old"])
                now = k.selected(k.read_text(knob))
                if now != old:
                    k.write_text(knob, old)
                    done.append(f"{knob} {now} -> {old}")
            elif isinstance(entry, dict) and "undo" in entry:
                action, arg = entry["undo"]
                what = ACTIONS[action](arg)
                if what is not None:
                    done.append(what)
            else:
                problems.append(f"unknown entry {entry!r}")
        except (OSError, KernelError, KeyError, ValueError, TypeError) as e:
            problems.append(f"{entry!r}: {getattr(e, 'strerror', None) or e}")
            left.insert(0, entry)
    record = SettingsRecord(path)
    record.entries = left
    record._write()
    if problems:
        raise KernelError(f"could not restore what the killed run (pid {pid}) changed: "
                          + "; ".join(problems) + (f" (restored: {', '.join(done)})"
                                                   if done else ""))
    return (pid if isinstance(pid, int) else 0), done


def cmd_restore(path: str | None = None) -> int:
    """``pudthp conform --restore``: restore what a killed run left, under the run lock;
    exit 0 (restored, or nothing to restore) or 4 (this machine would not let it: not root,
    a setting the kernel refused; the command line's cannot-run status)."""
    path = path or RECORD_PATH
    try:
        with run_lock():
            pid, done = restore_recorded(path)
    except (KernelError, OSError) as e:
        print(f"pudthp: cannot restore: {' '.join(str(e).split())}")
        return 4
    if pid is None:
        print(f"nothing to restore: no record of changed settings ({path})")
    else:
        print(f"restored what a killed conformance run (pid {pid}) left: "
              + (", ".join(done) if done else "nothing had changed"))
    return 0


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Interrupted`` inside the block (SIGINT already raises
    KeyboardInterrupt), so ``finally`` clauses restore the kernel's settings."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Interrupted(signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def run_lock(timeout_s: float = 600.0) -> Iterator[int]:
    """One conformance run at a time on this machine: the settings and the global counters
    are machine-wide (pytest-xdist runs tests in parallel).  Yields the locked descriptor:
    a process started with it in ``pass_fds`` holds the lock too, as under ``flock LOCK
    CMD``; ``KernelError`` when another run holds it for ``timeout_s`` seconds."""
    os.makedirs(os.path.dirname(LOCK_PATH), exist_ok=True)
    fd = os.open(LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise KernelError(f"another conformance run holds {LOCK_PATH}") from None
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)


def check_machine() -> None:
    """Raise KernelError naming what this machine lacks for a conformance run."""
    if os.geteuid() != 0:
        raise KernelError("not root: PFNs, kpageflags and the THP knobs need root")
    if not os.path.isdir(THP_DIR_):
        raise KernelError("the kernel has no transparent huge pages (no sysfs THP directory)")
    if not os.path.isdir(f"{THP_DIR_}/hugepages-2048kB"):
        raise KernelError("no PMD-size (2048 kB) THP on this kernel")
    if k.read_text(f"{THP_DIR_}/hpage_pmd_size").strip() != str(512 * PAGE_SIZE):
        raise KernelError("the PMD THP size is not 2 MiB: not x86_64 geometry")
    if os.sysconf("SC_PAGE_SIZE") != PAGE_SIZE:
        raise KernelError("the base page size is not 4 KiB")
    for path in ("/proc/kpageflags", "/proc/kpagecount", "/proc/self/pagemap"):
        if not os.path.exists(path):
            raise KernelError(f"{path} is missing (CONFIG_PROC_PAGE_MONITOR)")


THP_DIR_ = k.THP_DIR


def active_swaps() -> list[str]:
    lines = k.read_text("/proc/swaps").splitlines()[1:]
    return [line.split()[0] for line in lines if line.strip()]


@dataclass(frozen=True, slots=True)
class KernelConfig:
    """What a program's config asks of the kernel (docs/model.md section 4, PMD level)."""

    thp_enabled: str
    pmd_enabled: str
    use_zero_page: bool
    shrink_underused: bool
    swap_pages: int


def apply_config(s: Settings, cfg: KernelConfig) -> None:
    """Set every knob the model's semantics depend on; each saved first by ``s``.

    - ``enabled``, ``hugepages-2048kB/enabled``, ``use_zero_page``, ``shrink_underused``:
      the config;
    - every other ``hugepages-*kB/enabled``: never (a program with ``config.mthp`` is not
      run live yet: ``compare.live_gap``);
    - ``defrag``: always, so a THP fault compacts rather than falls back and the only
      fallback left is a real lack of 2 MiB blocks (the model allocates unless told not to);
    - khugepaged: ``scan_sleep_millisecs`` and ``alloc_sleep_millisecs`` one hour and
      ``pages_to_scan`` 8, so it does not collapse during a run; ``max_ptes_none`` 511, the
      value at which ``thp_underused()`` is always false (the model's shrinker relies on it);
    - ``vm.page-cluster`` 0: swap-in reads the one page faulted, no readahead into the swap
      cache;
    - zswap off: pages go to the swap device the run sets up (written only when it is on);
    - ``anon_beside_full`` (a knob some kernels add beside mainline's) 0, mainline's way.
    """
    s.set(f"{THP_DIR_}/enabled", cfg.thp_enabled)
    for name in sorted(os.listdir(THP_DIR_)):
        if name.startswith("hugepages-") and name != "hugepages-2048kB":
            path = f"{THP_DIR_}/{name}/enabled"
            if os.path.exists(path):
                s.set(path, "never")
    s.set(f"{THP_DIR_}/hugepages-2048kB/enabled", cfg.pmd_enabled)
    s.set(f"{THP_DIR_}/defrag", "always")
    s.set(f"{THP_DIR_}/use_zero_page", "1" if cfg.use_zero_page else "0")
    if os.path.exists(f"{THP_DIR_}/shrink_underused"):
        s.set(f"{THP_DIR_}/shrink_underused", "1" if cfg.shrink_underused else "0")
    elif not cfg.shrink_underused:
        raise KernelError("this kernel has no shrink_underused knob")
    kh = f"{THP_DIR_}/khugepaged"
    s.set(f"{kh}/scan_sleep_millisecs", "3600000")
    s.set(f"{kh}/alloc_sleep_millisecs", "3600000")
    s.set(f"{kh}/pages_to_scan", "8")
    s.set(f"{kh}/max_ptes_none", "511")
    s.set("/proc/sys/vm/page-cluster", "0")
    if os.path.exists(f"{THP_DIR_}/anon_beside_full"):  # not mainline: off, as mainline
        s.set(f"{THP_DIR_}/anon_beside_full", "0")
    zswap = "/sys/module/zswap/parameters/enabled"
    # written only when on: any write, even of N, initialises zswap, after which the kernel
    # refuses large swap-in until reboot (zswap_never_enabled())
    if os.path.exists(zswap) and k.selected(k.read_text(zswap)) != "N":
        s.set(zswap, "N")


def split_huge_pages_usable(s: Settings) -> str | None:
    """None when debugfs ``split_huge_pages`` can be written, else why not.

    debugfs is mounted if it is not (and unmounted again by ``s``); opening the file for
    writing is refused under kernel lockdown (``debugfs_locked_down()``, LOCKDOWN_DEBUGFS),
    which forbids every debugfs write whatever the file's mode.
    """
    if not os.path.exists(k.SPLIT_HUGE_PAGES):
        s.intend("umount", k.DEBUGFS)
        r = subprocess.run(
            ["mount", "-t", "debugfs", "none", k.DEBUGFS], capture_output=True, text=True,
            check=False,
        )
        if r.returncode != 0:
            return f"debugfs cannot be mounted ({r.stderr.strip()})"
        s.on_restore("umount debugfs", lambda: _run(["umount", k.DEBUGFS]))
        if not os.path.exists(k.SPLIT_HUGE_PAGES):
            return "debugfs has no split_huge_pages file"
    try:
        os.close(os.open(k.SPLIT_HUGE_PAGES, os.O_WRONLY))
    except OSError as e:
        if e.errno == errno.EPERM:
            return ("debugfs split_huge_pages cannot be written: the kernel is locked down "
                    "(LOCKDOWN_DEBUGFS)")
        return f"debugfs split_huge_pages cannot be opened: {e.strerror}"
    return None


def _run(argv: list[str]) -> None:
    r = subprocess.run(argv, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise KernelError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")


ZRAM = "zram0"


def setup_swap(s: Settings, pages: int) -> None:
    """A swap device of ``pages`` usable pages on zram (plus the header page).

    zram is a ``SWP_SYNCHRONOUS_IO`` device: ``swap_writeout`` completes the write before
    ``shrink_folio_list`` looks at the folio again, so MADV_PAGEOUT frees the folio and
    leaves the swap cache within the call, as the model's synchronous reclaim does; and a
    swap-in of a slot mapped once bypasses the swap cache.  A swap *file* on a block device
    is written asynchronously: the folio would stay in the swap cache after MADV_PAGEOUT and
    the next access would find it there, a state the model never has.
    """
    if pages == 0:
        return
    others = active_swaps()
    if others:
        raise KernelError(f"swap is already active ({', '.join(others)}): capacity unknown")
    dev = f"/sys/block/{ZRAM}"
    if not os.path.isdir(dev):
        raise KernelError("no zram device for a synchronous swap device (CONFIG_ZRAM)")
    if k.read_text(f"{dev}/disksize").strip() != "0":
        raise KernelError(f"/dev/{ZRAM} is in use")
    s.intend("zram_reset", ZRAM)
    k.write_text(f"{dev}/disksize", str((pages + 1) * PAGE_SIZE))
    s.on_restore(f"reset /dev/{ZRAM}", lambda: k.write_text(f"{dev}/reset", "1"))
    _run(["mkswap", f"/dev/{ZRAM}"])
    s.intend("swapoff", f"/dev/{ZRAM}")
    _run(["swapon", f"/dev/{ZRAM}"])
    s.on_restore(f"swapoff /dev/{ZRAM}", lambda: _run(["swapoff", f"/dev/{ZRAM}"]))


def drop_slab() -> None:
    """``echo 2 > /proc/sys/vm/drop_caches``: drop_slab() runs every shrinker, the deferred
    split shrinker and the huge zero folio's among them."""
    k.write_text(k.DROP_CACHES, "2")


def map_huge_zero_pmd() -> bool:
    """A read fault in this process on a fresh 2 MiB-aligned anonymous range with
    ``MADV_HUGEPAGE``; True when a huge zero PMD maps it now (this mm then holds the huge
    zero folio until it exits, ``mm_get_huge_zero_folio()``).  For a child process: the
    mapping is never unmapped."""
    import mmap

    span = 2 * THP_NR * PAGE_SIZE
    area = mmap.mmap(-1, span, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = ctypes.addressof(ctypes.c_char.from_buffer(area))
    addr = (base + THP_NR * PAGE_SIZE - 1) & ~(THP_NR * PAGE_SIZE - 1)
    k.sys_madvise(addr, THP_NR * PAGE_SIZE, k.MADV_HUGEPAGE)
    k.load_u64(addr)
    fd = os.open("/proc/self/pagemap", os.O_RDONLY)
    try:
        regions = k.pagemap_scan(fd, addr, addr + PAGE_SIZE)
    finally:
        os.close(fd)
    cats = regions[0][2] if regions else 0
    return bool(cats & k.PAGE_IS_PFNZERO and cats & k.PAGE_IS_HUGE)


def huge_zero_folio_held_elsewhere() -> bool | None:
    """Whether a process outside the run holds the huge zero folio, so that the kernel never
    allocates it for the program (``thp_zero_page_alloc`` not counted where the model
    counts it).  Call with no process of the run alive.

    After ``drop_slab()`` the folio is gone unless some mm holds it; a fresh process's huge
    zero PMD then allocates it (+1) exactly when nobody else does.  None when no huge zero
    PMD could be mapped (THP or the huge zero page off) or the probe failed.  The folio the
    probe allocated is freed again by a last ``drop_slab()``.
    """
    drop_slab()
    before = k.read_vmstat().get("thp_zero_page_alloc", 0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            k.prctl(k.PR_SET_THP_DISABLE, 0)
            os.write(w, b"1" if map_huge_zero_pmd() else b"0")
        finally:
            os._exit(0)
    os.close(w)
    try:
        mapped = os.read(r, 1) == b"1"
    finally:
        os.close(r)
        os.waitpid(pid, 0)
    after = k.read_vmstat().get("thp_zero_page_alloc", 0)
    drop_slab()
    if not mapped:
        return None
    return after == before


# --------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------


def _send(sock: socket.socket, msg: Any, fds: list[int] | None = None) -> None:
    data = pickle.dumps(msg)
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.sendall(data)


def _recv(sock: socket.socket) -> tuple[Any, list[int]]:
    data, fds, _, _ = socket.recv_fds(sock, MAX_MSG, 4)
    if not data:
        raise EOFError
    return pickle.loads(data), fds


# --------------------------------------------------------------------------------------
# The server: one per model mm
# --------------------------------------------------------------------------------------


def _server(sock: socket.socket, window: int) -> NoReturn:
    """Body of a server process; never returns."""
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # forked children are reaped at exit
        for s in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, signal.SIG_DFL)
        gc.disable()
        _quiet_mm(window)
        _send(sock, ("ready", os.getpid()))
        _serve(sock, window)
    except BaseException as e:
        with contextlib.suppress(BaseException):
            _send(sock, ("error", f"{type(e).__name__}: {e}"))
    os._exit(0)


def _quiet_mm(window: int) -> None:
    """THP allowed again for this mm, but not for any VMA it inherited (outside the window),
    and the window empty."""
    k.prctl(k.PR_SET_THP_DISABLE, 0)
    with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
        lines = f.read().splitlines()
    for line in lines:
        lo, _, hi = line.split()[0].partition("-")
        a, b = int(lo, 16), int(hi, 16)
        if a < WINDOW_BASE + window and b > WINDOW_BASE:
            raise KernelError(f"address window not empty: {line}")
        k.sys_madvise(a, b - a, k.MADV_NOHUGEPAGE)  # [vsyscall] and the like refuse: fine


def _serve(sock: socket.socket, window: int) -> None:
    while True:
        try:
            msg, fds = _recv(sock)
        except (EOFError, OSError):
            return  # the controller is gone
        cmd = msg[0]
        reply: Any
        if cmd == "fork":
            child_sock = socket.socket(fileno=fds[0])
            pid = os.fork()
            if pid == 0:
                sock.close()
                sock = child_sock
                _send(sock, ("ready", os.getpid()))
                continue
            child_sock.close()
            reply = pid
        if cmd == "exit":
            _send(sock, 0)
            os._exit(0)
        out_fds: list[int] = []
        if cmd != "fork":
            try:
                reply, out_fds = _handle(msg)
            except Exception as e:
                reply = ("error", f"{type(e).__name__}: {e}")
        _send(sock, reply, out_fds)
        for fd in out_fds:
            os.close(fd)  # the controller holds it now


def _handle(msg: tuple[Any, ...]) -> tuple[Any, list[int]]:
    cmd = msg[0]
    if cmd == "mmap":
        return k.sys_mmap(msg[1], msg[2], msg[3]), []
    if cmd == "munmap":
        return k.sys_munmap(msg[1], msg[2]), []
    if cmd == "mprotect":
        return k.sys_mprotect(msg[1], msg[2], msg[3]), []
    if cmd == "madvise":
        return k.sys_madvise(msg[1], msg[2], msg[3]), []
    if cmd == "read":
        return k.load_u64(msg[1]), []
    if cmd == "write":
        k.store_u64(msg[1], msg[2])
        return 0, []
    if cmd == "pin":
        return _pin(msg[1])
    if cmd == "close":
        os.close(msg[1])
        return 0, []
    raise ValueError(f"unknown command {cmd!r}")


def _pin(addr: int) -> tuple[Any, list[int]]:
    """FOLL_PIN of one page: a new io_uring with the page registered as its fixed buffer.

    The controller takes its own copy of the ring's fd with pidfd_getfd() (an io_uring fd
    cannot travel over SCM_RIGHTS), so the pin outlives this process as a model pin
    outlives its mm's exit, and drops it on unpin with IORING_UNREGISTER_BUFFERS.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    params = ctypes.create_string_buffer(120)
    fd = libc.syscall(NR_IO_URING_SETUP, ctypes.c_uint(1), params)
    if fd < 0:
        return ("error", f"io_uring_setup: {os.strerror(ctypes.get_errno())}"), []
    iov = (ctypes.c_uint64 * 2)(addr, PAGE_SIZE)
    r = libc.syscall(NR_IO_URING_REGISTER, ctypes.c_uint(fd), ctypes.c_uint(
        IORING_REGISTER_BUFFERS), iov, ctypes.c_uint(1))
    if r < 0:
        e = ctypes.get_errno()
        os.close(fd)
        return ("errno", e), []
    return ("pinned", fd), []


# --------------------------------------------------------------------------------------
# The controller's view of the servers
# --------------------------------------------------------------------------------------


@dataclass
class Server:
    mm: int
    pid: int
    sock: socket.socket
    direct_child: bool
    pagemap_fd: int = -1
    mem_fd: int = -1
    alive: bool = True


def _answer(srv: Server) -> tuple[Any, list[int]]:
    """The next message from a server; KernelError if it died or fell silent."""
    try:
        return _recv(srv.sock)
    except (TimeoutError, EOFError, OSError) as e:
        raise KernelError(f"process of mm {srv.mm} stopped answering ({e!r})") from None


class Executor:
    """Runs the processes of one program; ``close()`` kills whatever is left."""

    def __init__(self, window_pages: int) -> None:
        self.window = window_pages * PAGE_SIZE
        self.servers: list[Server] = []
        self.pins: dict[int, int] = {}  # pin id -> io_uring fd holding the pin
        self.next_pin = 1

    # -- lifetime ----------------------------------------------------------------------

    def start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            parent.close()
            _server(child, self.window)
        child.close()
        self._attach(0, pid, parent, True)

    def _attach(self, mm: int, pid: int, sock: socket.socket, direct: bool) -> None:
        sock.settimeout(SERVER_TIMEOUT_S)
        srv = Server(mm, pid, sock, direct)
        self.servers.append(srv)
        msg, _ = _answer(srv)
        if msg != ("ready", pid) and not (direct and msg[0] == "ready"):
            raise KernelError(f"server for mm {mm} did not start: {msg!r}")
        srv.pid = msg[1]
        srv.pagemap_fd = os.open(f"/proc/{srv.pid}/pagemap", os.O_RDONLY)
        srv.mem_fd = os.open(f"/proc/{srv.pid}/mem", os.O_RDONLY)

    def close(self) -> None:
        for fd in self.pins.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self.pins.clear()
        for srv in self.servers:
            if srv.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(srv.pid, signal.SIGKILL)
                self._forget(srv)
        for srv in self.servers:
            self._wait_gone(srv, 10.0)

    def _forget(self, srv: Server) -> None:
        srv.alive = False
        for fd in (srv.pagemap_fd, srv.mem_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        srv.pagemap_fd = srv.mem_fd = -1
        srv.sock.close()

    def _wait_gone(self, srv: Server, timeout_s: float) -> None:
        """Until the process has exited: its mm is torn down (exit_mm runs before the task
        becomes a zombie).  Direct children are reaped here; the others by their parent
        server (SIGCHLD ignored) or, orphaned, by init."""
        deadline = time.monotonic() + timeout_s
        while True:
            if srv.direct_child:
                with contextlib.suppress(ChildProcessError):
                    pid, _ = os.waitpid(srv.pid, os.WNOHANG)
                    if pid == 0 and time.monotonic() < deadline:
                        time.sleep(0.001)
                        continue
                return
            state = _proc_state(srv.pid)
            if state is None or state in "ZX":
                return
            if time.monotonic() > deadline:
                raise KernelError(f"process of mm {srv.mm} (pid {srv.pid}) did not exit")
            time.sleep(0.001)

    # -- requests ----------------------------------------------------------------------

    def server(self, mm: int) -> Server | None:
        if 0 <= mm < len(self.servers) and self.servers[mm].alive:
            return self.servers[mm]
        return None

    def call(self, srv: Server, msg: tuple[Any, ...], fds: list[int] | None = None
             ) -> tuple[Any, list[int]]:
        _send(srv.sock, msg, fds)
        reply, rfds = _answer(srv)
        if isinstance(reply, tuple) and reply and reply[0] == "error":
            raise KernelError(f"mm {srv.mm}: {msg[0]} failed in the process: {reply[1]}")
        return reply, rfds

    def fork(self, srv: Server) -> int:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            pid, _ = self.call(srv, ("fork",), [child.fileno()])
        finally:
            child.close()
        new_id = len(self.servers)
        self._attach(new_id, pid, parent, False)
        return new_id

    def exit(self, srv: Server) -> None:
        self.call(srv, ("exit",))
        self._forget(srv)
        self._wait_gone(srv, SERVER_TIMEOUT_S)

    def pin(self, srv: Server, addr: int) -> int | str:
        reply, _ = self.call(srv, ("pin", addr))
        if reply[0] == "errno":
            return "EFAULT" if reply[1] == errno.EFAULT else errno.errorcode.get(reply[1], "?")
        ring = _pidfd_getfd(srv.pid, reply[1])
        self.call(srv, ("close", reply[1]))
        pin_id = self.next_pin
        self.next_pin += 1
        self.pins[pin_id] = ring
        return pin_id

    def unpin(self, pin_id: int) -> int | str:
        fd = self.pins.pop(pin_id, None)
        if fd is None:
            return "EINVAL"
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        r = libc.syscall(NR_IO_URING_REGISTER, ctypes.c_uint(fd),
                         ctypes.c_uint(IORING_UNREGISTER_BUFFERS), None, ctypes.c_uint(0))
        os.close(fd)
        if r < 0:
            raise KernelError(f"IORING_UNREGISTER_BUFFERS: {os.strerror(ctypes.get_errno())}")
        return 0



def _pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of file descriptor ``fd`` of process ``pid`` in this process."""
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        r = libc.syscall(NR_PIDFD_GETFD, ctypes.c_int(pidfd), ctypes.c_int(fd), ctypes.c_uint(0))
        if r < 0:
            raise KernelError(f"pidfd_getfd: {os.strerror(ctypes.get_errno())}")
        return int(r)
    finally:
        os.close(pidfd)


def _proc_state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return text[text.rindex(")") + 2]


# --------------------------------------------------------------------------------------
# Observation of the kernel's state
# --------------------------------------------------------------------------------------

PROT_OF_PERMS: dict[str, str] = {"---": "none", "r--": "r", "rw-": "rw"}
THP_ORDER = 9
THP_NR = 1 << THP_ORDER
READ_CHUNK = 512 * PAGE_SIZE


def _disk_dir(candidates: tuple[str, ...]) -> str | None:
    """The first writable directory whose file system has a real backing device
    (generic_fadvise does nothing on tmpfs and ramfs: noop_backing_dev_info)."""
    for d in candidates:
        if (os.path.isdir(d) and os.access(d, os.W_OK)
                and k.fs_magic(d) not in (k.TMPFS_MAGIC, k.RAMFS_MAGIC)):
            return d
    return None


class LruDrain:
    """``lru_add_drain_all()`` on demand, so no per-CPU folio batch holds a reference.

    The kernel parks folios in per-CPU batches (``cpu_fbatches``: new faults, and
    activations from ``folio_mark_accessed``), each holding a folio reference until the
    batch is drained.  The model has no such batches.  A stray reference makes
    ``shrink_folio_list`` keep a folio it has already unmapped (``pageout``:
    ``is_page_cache_freeable`` fails, no write, the folio stays in the swap cache), and
    the executor makes such references itself: its content reads through /proc/PID/mem are
    GUP reads with ``FOLL_TOUCH``, whose ``folio_mark_accessed`` queues an activation on the
    controller's CPU.  MADV_PAGEOUT drains only the local CPU (``lru_add_drain``).

    No syscall drains every CPU directly; ``POSIX_FADV_DONTNEED`` does when it cannot drop
    a page-cache folio (``generic_fadvise``: ``nr_failed`` from ``mapping_try_invalidate``
    -> ``lru_add_drain_all``).  So the controller keeps one page of a scratch file on a
    disk file system (not tmpfs, whose fadvise does nothing) mapped shared, which can never
    be dropped, and asks to drop it.
    """

    def __init__(self) -> None:
        import mmap
        import tempfile

        where = _disk_dir(("/var/tmp", "/tmp", os.getcwd()))
        if where is None:
            raise KernelError("no directory on a disk file system for the LRU drain file "
                              "(tmpfs ignores POSIX_FADV_DONTNEED)")
        fd, path = tempfile.mkstemp(prefix="pudthp-drain-", dir=where)
        try:
            os.unlink(path)
            os.write(fd, b"\1" * PAGE_SIZE)
            self.map = mmap.mmap(fd, PAGE_SIZE, mmap.MAP_SHARED,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
            self.map[0] = 1  # mapped: mapping_evict_folio refuses it
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd

    def __call__(self) -> None:
        os.posix_fadvise(self.fd, 0, PAGE_SIZE, os.POSIX_FADV_DONTNEED)

    def close(self) -> None:
        self.map.close()
        os.close(self.fd)


@dataclass
class RunTools:
    """What every run of a session uses: the LRU drain and /proc/kpage*."""

    drain: LruDrain
    frames: PageFrames

    @classmethod
    def open(cls) -> RunTools:
        with contextlib.ExitStack() as stack:
            drain = LruDrain()
            stack.callback(drain.close)
            frames = PageFrames()
            stack.pop_all()
            return cls(drain, frames)

    def close(self) -> None:
        try:
            self.frames.close()
        finally:
            self.drain.close()


class PageFrames:
    """/proc/kpageflags and /proc/kpagecount, read in runs of PFNs."""

    def __init__(self) -> None:
        self.flags_fd = os.open("/proc/kpageflags", os.O_RDONLY)
        try:
            self.count_fd = os.open("/proc/kpagecount", os.O_RDONLY)
        except BaseException:
            os.close(self.flags_fd)
            raise

    def close(self) -> None:
        os.close(self.flags_fd)
        os.close(self.count_fd)

    def read(self, pfns: list[int]) -> tuple[dict[int, int], dict[int, int]]:
        flags: dict[int, int] = {}
        counts: dict[int, int] = {}
        for first, n in k.pfn_runs(pfns):
            flags.update(zip(range(first, first + n), k.read_u64s(self.flags_fd, first, n),
                             strict=True))
            counts.update(zip(range(first, first + n), k.read_u64s(self.count_fd, first, n),
                              strict=True))
        return flags, counts

    def head_of(self, pfn: int, flags: dict[int, int]) -> tuple[int, int]:
        """(head PFN, order) of the folio holding ``pfn``: order 0 unless compound; a
        compound page's head is found by KPF_COMPOUND_HEAD, order-9 aligned first."""
        f = flags[pfn]
        if f >> k.KPF_COMPOUND_HEAD & 1:
            return pfn, THP_ORDER
        if not f >> k.KPF_COMPOUND_TAIL & 1:
            return pfn, 0
        aligned = pfn & ~(THP_NR - 1)  # a PMD-size folio's head: checked first
        for cand in itertools.chain((aligned,), range(pfn - 1, pfn - THP_NR, -1)):
            cf = flags.get(cand)
            if cf is None:
                cf = k.read_u64s(self.flags_fd, cand, 1)[0]
                flags[cand] = cf
            if cf >> k.KPF_COMPOUND_HEAD & 1:
                return cand, THP_ORDER
        raise KernelError(f"no compound head found for PFN {pfn:#x}")


def window_vmas(srv: Server, window: int) -> list[k.KVma]:
    return [v for v in k.read_smaps(srv.pid)
            if v.start < WINDOW_BASE + window and v.end > WINDOW_BASE]


def observe_mm(srv: Server, window: int, frames: PageFrames) -> MmObs:
    """The observation of one live mm, with raw folio names (head PFNs) and swap offsets."""
    vmas = window_vmas(srv, window)
    out_vmas = []
    rss = anon_huge = swap = 0
    pages: list[tuple[int, PageObs]] = []
    for v in vmas:
        if v.start < WINDOW_BASE or v.end > WINDOW_BASE + window:
            raise KernelError(f"mm {srv.mm}: a VMA crosses the window edge: {v}")
        prot = PROT_OF_PERMS.get(v.perms[:3])
        if prot is None or v.perms[3] != "p":
            raise KernelError(f"mm {srv.mm}: unexpected VMA permissions {v.perms}")
        flags = tuple(n for f, n in (("hg", "hugepage"), ("nh", "nohugepage"))
                      if f in v.vmflags)
        lo, hi = (v.start - WINDOW_BASE) // PAGE_SIZE, (v.end - WINDOW_BASE) // PAGE_SIZE
        out_vmas.append((lo, hi, prot, flags))
        rss += v.rss_kb * 1024 // PAGE_SIZE
        anon_huge += v.anon_huge_kb * 1024 // PAGE_SIZE
        swap += v.swap_kb * 1024 // PAGE_SIZE
        pages.extend(_observe_pages(srv, v.start, v.end, frames))
    return MmObs(out_vmas, rss, anon_huge, swap, pages)


def _observe_pages(srv: Server, start: int, end: int, frames: PageFrames
                   ) -> list[tuple[int, PageObs]]:
    npages = (end - start) // PAGE_SIZE
    cats = [0] * npages
    for a, b, c in k.pagemap_scan(srv.pagemap_fd, start, end):
        for i in range((a - start) // PAGE_SIZE, (b - start) // PAGE_SIZE):
            cats[i] = c
    entries = k.pagemap_entries(srv.pagemap_fd, start, npages)
    present_pfns = [entries[i] & k.PM_PFN_MASK for i in range(npages)
                    if cats[i] & k.PAGE_IS_PRESENT and not cats[i] & k.PAGE_IS_PFNZERO]
    flags, counts = frames.read(present_pfns)
    contents = _read_contents(srv, start, cats)
    base_vpn = (start - WINDOW_BASE) // PAGE_SIZE
    out: list[tuple[int, PageObs]] = []
    for i in range(npages):
        c, e = cats[i], entries[i]
        if c & k.PAGE_IS_PRESENT:
            if not e & k.PM_PRESENT:
                raise KernelError(f"pagemap and PAGEMAP_SCAN disagree at {start + i * 4096:#x}")
            if c & k.PAGE_IS_PFNZERO:
                kind = "hzero" if c & k.PAGE_IS_HUGE else "zero"
                p = PageObs(kind, content=contents.get(i))
            else:
                pfn = e & k.PM_PFN_MASK
                head, order = frames.head_of(pfn, flags)
                p = PageObs("pmd" if c & k.PAGE_IS_HUGE else "pte", head, pfn - head, order,
                            counts[pfn], contents.get(i))
        elif c & k.PAGE_IS_SWAPPED:
            p = PageObs("swap", slot=(e & k.PM_PFN_MASK) >> k.PM_SWAP_OFFSET_SHIFT)
        else:
            p = PageObs("none")
        out.append((base_vpn + i, p))
    return out


def _read_contents(srv: Server, start: int, cats: list[int]) -> dict[int, int]:
    """The first word of every present page, read through /proc/PID/mem in runs of present
    pages (a GUP read of a present page maps or changes nothing; pages that are not present
    are never read, which would fault them in)."""
    out: dict[int, int] = {}
    i, n = 0, len(cats)
    while i < n:
        if not cats[i] & k.PAGE_IS_PRESENT:
            i += 1
            continue
        j = i
        while j < n and cats[j] & k.PAGE_IS_PRESENT and j - i < READ_CHUNK // PAGE_SIZE:
            j += 1
        data = os.pread(srv.mem_fd, (j - i) * PAGE_SIZE, start + i * PAGE_SIZE)
        if len(data) != (j - i) * PAGE_SIZE:
            raise KernelError(f"mm {srv.mm}: short read of present pages at "
                              f"{start + i * PAGE_SIZE:#x}")
        for x in range(j - i):
            out[i + x] = int.from_bytes(data[x * PAGE_SIZE : x * PAGE_SIZE + 8], "little")
        i = j
    return out


def observe(ex: Executor, frames: PageFrames) -> Observation:
    return Observation({srv.mm: observe_mm(srv, ex.window, frames)
                        for srv in ex.servers if srv.alive})


def read_counters() -> dict[str, int]:
    """The compared global counters plus the ones that betray other activity."""
    vm = k.read_vmstat()
    st = k.read_pmd_stats()
    out = {f"vmstat.{n}": vm.get(n, 0) for n in (*VMSTAT_COMPARED, *NOISE_VMSTAT)}
    out.update({f"mthp.{n}": st.get(n, 0) for n in (*MTHP_COMPARED, *NOISE_MTHP)})
    return out


# Counters no op of a PMD-level program moves: any delta means activity outside the run
NOISE_VMSTAT: tuple[str, ...] = (
    "thp_collapse_alloc",
    "thp_underused_split_page",
    "thp_migration_success",
    "thp_migration_split",
    "thp_file_alloc",
    "thp_fault_fallback_charge",
)
NOISE_MTHP: tuple[str, ...] = ("anon_fault_declined", "anon_fault_fallback_charge",
                               "swpin_fallback", "zswpout")
