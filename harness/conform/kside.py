"""The live kernel's side of a kernel campaign (``harness.conform.campaign``): what a
campaign keeps for its whole life, so that a program costs what its ops cost, and how it
looks at the kernel cheaply.

- ``Zygote``: a small fresh interpreter (``python -c``, started with its own socket) that
  serves no mm itself and forks each program's first process (``live.Executor.fork``): a
  fork of the campaign process would copy its large address space, and every later smaps
  read of the window's processes would walk it;
- ``HugeZeroHolder``: a process that maps a huge zero PMD and keeps it, so the huge zero
  folio exists for every program and the model is told so (``ModelSide``'s
  ``held_elsewhere``): no program pays conform's probe for another holder, and neither side
  counts ``thp_zero_page_alloc``;
- ``SwapDevice``: the zram swap device, switched on and off with ``swapon(2)`` and
  ``swapoff(2)`` for programs with and without swap, rebuilt only when the size changes;
- ``CounterReader``: the counters ``live.read_counters`` reads, from files kept open;
- ``CampaignKernelSide``: conform's ``KernelSide`` asking ``PROCMAP_QUERY`` whether an
  access faults, and counting the THPs ``shrink_deferred`` split from the THP pages alone
  (``thp_pages``, ``count_split``);
- ``maps_vmas`` (a PUD program's VMAs without a page walk) and ``faults`` (an access's
  page faults).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import struct
import subprocess
import sys

from harness.conform import kernel as k
from harness.conform import live
from harness.conform.compare import CannotRun, KernelSide
from harness.conform.observe import MTHP_COMPARED, VMSTAT_COMPARED
from pudthp_ref import spec
from pudthp_ref.spec import Config, Op, Result

PUD_SIZE_DIR = "hugepages-1048576kB"


PR_SET_PDEATHSIG = 1
ZYGOTE_CODE = (
    "import ctypes, os, signal, socket, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)\n"  # PR_SET_PDEATHSIG
    "if os.getppid() != int(sys.argv[3]): os._exit(0)\n"
    "from harness.conform import live\n"
    "live._server(socket.socket(fileno=int(sys.argv[1])), int(sys.argv[2]))\n"
)


class Zygote:
    """A small process that forks each program's first process (see the module
    docstring); dies with the campaign."""

    def __init__(self, window_pages: int) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (_root(), os.environ.get("PYTHONPATH")) if p))
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", ZYGOTE_CODE, str(child.fileno()),
                 str(window_pages * k.PAGE_SIZE), str(os.getpid())],
                pass_fds=(child.fileno(),), env=env, stdin=subprocess.DEVNULL)
        finally:
            child.close()
        parent.settimeout(live.SERVER_TIMEOUT_S)
        self.server = live.Server(-1, self.proc.pid, parent, False)
        msg, _ = live._answer(self.server)
        if not (isinstance(msg, tuple) and msg[:1] == ("ready",)):
            self.close()
            raise k.KernelError(f"the campaign's zygote process did not start: {msg!r}")

    def start(self, ex: live.Executor) -> None:
        """``ex``'s mm 0: a fork of the zygote."""
        ex.fork(self.server)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.server.sock.close()
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
        self.proc.wait(timeout=10)


def _root() -> str:
    """The directory the ``harness`` package is imported from."""
    return os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class HugeZeroHolder:
    """A child process that maps a huge zero PMD and keeps it until the campaign ends, so
    the huge zero folio exists for every program (``live.map_huge_zero_pmd``)."""

    def __init__(self) -> None:
        ready_r, ready_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:  # pragma: no cover - the child
            try:
                os.close(ready_r)
                ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                k.prctl(k.PR_SET_THP_DISABLE, 0)
                os.write(ready_w, b"1" if live.map_huge_zero_pmd() else b"0")
                while True:
                    signal.pause()
            finally:
                os._exit(0)
        os.close(ready_w)
        try:
            self.held = os.read(ready_r, 1) == b"1"
        finally:
            os.close(ready_r)
        if not self.held:
            self.close()

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)


_libc = ctypes.CDLL(None, use_errno=True)


def _swap_call(name: str, path: str) -> None:
    fn = getattr(_libc, name)
    args = (os.fsencode(path), 0) if name == "swapon" else (os.fsencode(path),)
    if fn(*args) != 0:
        raise k.KernelError(f"{name} {path}: {os.strerror(ctypes.get_errno())}")


class SwapDevice:
    """The campaign's zram swap device (``live.setup_swap`` for one run): on for programs
    with swap, off for those without, rebuilt when the size changes; recorded in the
    session's settings record before each step, restored with the settings."""

    def __init__(self, settings: live.Settings) -> None:
        self.settings = settings
        self.pages = 0  # the usable pages of the device as set up (0: none yet)
        self.on = False
        self.path = f"/dev/{live.ZRAM}"
        self.sys = f"/sys/block/{live.ZRAM}"

    def ensure(self, pages: int) -> None:
        if pages == 0:
            if self.on:
                _swap_call("swapoff", self.path)
                self.on = False
            return
        if self.pages != pages:
            self._build(pages)
        elif self.on and _swap_used(self.path):
            _swap_call("swapoff", self.path)  # a folio left in the swap cache: start empty
            self.on = False
        if not self.on:
            _swap_call("swapon", self.path)
            self.on = True

    def _build(self, pages: int) -> None:
        if self.pages == 0:
            others = live.active_swaps()
            if others:
                raise k.KernelError(f"swap is already active ({', '.join(others)}): "
                                    "capacity unknown")
            if not os.path.isdir(self.sys):
                raise k.KernelError("no zram device for a synchronous swap device "
                                    "(CONFIG_ZRAM)")
            if k.read_text(f"{self.sys}/disksize").strip() != "0":
                raise k.KernelError(f"{self.path} is in use")
            self.settings.intend("zram_reset", live.ZRAM)
            self.settings.intend("swapoff", self.path)
            self.settings.on_restore(f"reset {self.path}", self._reset)
        else:
            self._reset()
        k.write_text(f"{self.sys}/disksize", str((pages + 1) * k.PAGE_SIZE))
        live._run(["mkswap", self.path])
        self.pages = pages

    def _reset(self) -> None:
        if self.on:
            _swap_call("swapoff", self.path)
            self.on = False
        k.write_text(f"{self.sys}/reset", "1")


def _swap_used(path: str) -> bool:
    for line in k.read_text("/proc/swaps").splitlines()[1:]:
        parts = line.split()
        if parts and parts[0] == path:
            return int(parts[3]) > 0
    return False


def apply_kernel_config(s: live.Settings, cfg: Config, level: str, zero_page: bool) -> None:
    """``live.apply_config`` for the program, and at PUD level PUD THP as the program says
    (``zero_page`` False: the campaign could not hold the huge zero folio, so the zero page
    is off for every program)."""
    live.apply_config(s, live.KernelConfig(cfg.thp_enabled, cfg.pmd_enabled,
                                           cfg.use_zero_page and zero_page,
                                           cfg.shrink_underused, cfg.swap_capacity))
    if level == "pud":
        s.set(f"{k.THP_DIR}/{PUD_SIZE_DIR}/enabled", cfg.pud_enabled)


class CounterReader:
    """``live.read_counters`` from files kept open (``/proc/vmstat`` and every
    ``hugepages-2048kB/stats`` file it reads), each read again from its start: the same
    values, without opening twenty files twice per op."""

    def __init__(self) -> None:
        self.vmstat_names = {*VMSTAT_COMPARED, *live.NOISE_VMSTAT}
        self.vmstat_fd = os.open("/proc/vmstat", os.O_RDONLY)
        self.stats: list[tuple[str, int]] = []
        try:
            for name in (*MTHP_COMPARED, *live.NOISE_MTHP):
                path = f"{k.PMD_STATS_DIR}/{name}"
                if os.path.exists(path):
                    self.stats.append((f"mthp.{name}", os.open(path, os.O_RDONLY)))
        except BaseException:
            self.close()
            raise
        self.missing = {f"mthp.{n}": 0 for n in (*MTHP_COMPARED, *live.NOISE_MTHP)}

    def read(self) -> dict[str, int]:
        out = dict(self.missing)
        out.update({f"vmstat.{n}": 0 for n in self.vmstat_names})
        text = os.pread(self.vmstat_fd, 1 << 16, 0).decode("ascii")
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in self.vmstat_names:
                out[f"vmstat.{name}"] = int(value)
        for key, fd in self.stats:
            out[key] = int(os.pread(fd, 64, 0))
        return out

    def close(self) -> None:
        for fd in (self.vmstat_fd, *(fd for _, fd in self.stats)):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.stats = []


# PROCMAP_QUERY (include/uapi/linux/fs.h, Linux 6.11): the VMA covering one address
_PROCMAP_QUERY_ARG = struct.Struct("=8QQ4IQQ")
PROCMAP_QUERY = (3 << 30) | (_PROCMAP_QUERY_ARG.size << 16) | (ord("f") << 8) | 17
PROCMAP_QUERY_VMA_READABLE, PROCMAP_QUERY_VMA_WRITABLE = 0x01, 0x02


class CampaignKernelSide(KernelSide):
    """``KernelSide`` deciding a ``SIGSEGV`` by asking ``/proc/PID/maps`` with
    ``PROCMAP_QUERY`` for the VMA at the address (the same rule as ``_access_ok``: no VMA,
    no read permission, or a write to a VMA without write permission), not by reading the
    whole file; the file's text where the kernel has no such ioctl."""

    maps_fds: dict[int, int]

    def _access_ok(self, srv: live.Server, vpn: int, write: bool) -> bool:
        if not hasattr(self, "maps_fds"):
            self.maps_fds = {}
        fd = self.maps_fds.get(srv.pid)
        if fd is None:
            fd = self.maps_fds[srv.pid] = os.open(f"/proc/{srv.pid}/maps", os.O_RDONLY)
        addr = self.addr(vpn)
        buf = ctypes.create_string_buffer(
            _PROCMAP_QUERY_ARG.pack(_PROCMAP_QUERY_ARG.size, 0, addr, *([0] * 12)),
            _PROCMAP_QUERY_ARG.size)
        if _libc.ioctl(fd, PROCMAP_QUERY, buf) != 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return False
            return super()._access_ok(srv, vpn, write)  # no PROCMAP_QUERY here
        flags = _PROCMAP_QUERY_ARG.unpack(buf.raw)[5]
        if vpn >= self.space:
            raise CannotRun(f"address {addr:#x} (page {vpn}) is outside the window but "
                            "mapped in the process")
        return bool(flags & PROCMAP_QUERY_VMA_READABLE) and (
            not write or bool(flags & PROCMAP_QUERY_VMA_WRITABLE))

    def apply(self, op: Op) -> Result:
        """``KernelSide.apply``; ``shrink_deferred``'s result (the program's THPs the
        shrinker split, ``compare.folios_split``) read from the THP pages alone
        (``thp_pages``), not from two looks at every page."""
        if not isinstance(op, spec.ShrinkDeferred):
            return super().apply(op)
        before = thp_pages(self)
        live.drop_slab()
        return count_split(self, before)

    def close(self) -> None:
        for fd in getattr(self, "maps_fds", {}).values():
            with contextlib.suppress(OSError):
                os.close(fd)
        super().close()


def thp_pages(kside: KernelSide) -> dict[tuple[int, int], tuple[int, int]]:
    """Every page of the program's processes mapped from a THP: (mm, page) -> (PFN, head
    PFN), from ``PAGEMAP_SCAN``, pagemap and ``/proc/kpageflags``."""
    out: dict[tuple[int, int], tuple[int, int]] = {}
    frames = kside.frames
    base = live.WINDOW_BASE
    for srv in kside.ex.servers:
        if not srv.alive:
            continue
        for a, b, cats in k.pagemap_scan(srv.pagemap_fd, base, base + kside.ex.window):
            if not cats & k.PAGE_IS_PRESENT or cats & k.PAGE_IS_PFNZERO:
                continue
            n = (b - a) // k.PAGE_SIZE
            pfns = [e & k.PM_PFN_MASK for e in k.pagemap_entries(srv.pagemap_fd, a, n)]
            flags: dict[int, int] = {}
            for first, count in k.pfn_runs(pfns):
                flags.update(zip(range(first, first + count),
                                 k.read_u64s(frames.flags_fd, first, count), strict=True))
            vpn = (a - base) // k.PAGE_SIZE
            for i, pfn in enumerate(pfns):
                if flags[pfn] >> k.KPF_COMPOUND_HEAD & 1 or flags[pfn] >> k.KPF_COMPOUND_TAIL & 1:
                    out[(srv.mm, vpn + i)] = (pfn, frames.head_of(pfn, flags)[0])
    return out


def count_split(kside: KernelSide, before: dict[tuple[int, int], tuple[int, int]]) -> int:
    """How many THPs of ``before`` (``thp_pages``) have a page that is now the zero page or
    an order-0 page at the same PFN: ``compare.folios_split``'s rule."""
    after = thp_pages(kside)
    split: set[int] = set()
    base = live.WINDOW_BASE
    for (mm, vpn), (pfn, head) in before.items():
        srv = kside.ex.server(mm)
        if srv is None or head in split or (mm, vpn) in after:
            continue
        addr = base + vpn * k.PAGE_SIZE
        regions = k.pagemap_scan(srv.pagemap_fd, addr, addr + k.PAGE_SIZE)
        cats = regions[0][2] if regions else 0
        if not cats & k.PAGE_IS_PRESENT:
            continue
        if cats & k.PAGE_IS_PFNZERO or (
                k.pagemap_entries(srv.pagemap_fd, addr, 1)[0] & k.PM_PFN_MASK) == pfn:
            split.add(head)
    return len(split)




def maps_vmas(pid: int, window: int) -> list[tuple[int, int, str, tuple[str, ...]]]:
    out: list[tuple[int, int, str, tuple[str, ...]]] = []
    base = live.WINDOW_BASE
    with open(f"/proc/{pid}/maps", encoding="utf-8", errors="replace") as f:
        for line in f:
            rng, perms = line.split()[:2]
            lo, _, hi = rng.partition("-")
            a, b = int(lo, 16), int(hi, 16)
            if a < base + window and b > base:
                out.append(((a - base) // k.PAGE_SIZE, (b - base) // k.PAGE_SIZE,
                            live.PROT_OF_PERMS.get(perms[:3], perms[:3]), ()))
    return out


def faults(kside: KernelSide, op: Op, before: tuple[int, int] | None = None
            ) -> tuple[int, int] | None:
    """The minor and major page faults of the process an access op runs in (``/proc/PID/
    stat`` fields 10 and 12), or their change since ``before``; None for other ops."""
    if not isinstance(op, spec.Read | spec.Write | spec.Pin):
        return None
    srv = kside.ex.server(op.mm)
    if srv is None:
        return None
    try:
        with open(f"/proc/{srv.pid}/stat", encoding="ascii", errors="replace") as f:
            text = f.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    now = (int(fields[7]), int(fields[9]))  # minflt, majflt (stat fields 10, 12)
    if before is None:
        return now
    return now[0] - before[0], now[1] - before[1]
