"""``pudthp conform`` after a kill: the on-disk record of changed settings
(``harness.conform.live.SettingsRecord``) and what the next run restores from it.

Every original value and every device step to undo is on disk before the change is made;
a run that ends removes its entries; a process killed with SIGKILL leaves them, and
``restore_recorded`` (run first by the next ``pudthp conform``, or alone by ``pudthp conform
--restore``) puts them back.  The unit tests use files in a temporary directory for the
knobs and a temporary record and lock; the last test kills a real ``pudthp conform`` on
this machine's kernel while its swap device is on, holding the run lock for its checks.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness.conform import kernel as k
from harness.conform import live
from pudthp_cli.main import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private record and lock (the machine's stay untouched)."""
    monkeypatch.setattr(live, "RECORD_PATH", str(tmp_path / "run" / "record.json"))
    monkeypatch.setattr(live, "LOCK_PATH", str(tmp_path / "lock"))
    return tmp_path


def knob(d: Path, name: str, value: str) -> str:
    path = d / name
    path.write_text(value)
    return str(path)


def record_entries(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    assert data["format"] == live.RECORD_FORMAT
    return list(data["entries"])


def test_each_original_is_on_disk_before_the_knob_changes(
        paths: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    a, b = knob(paths, "a", "1234"), knob(paths, "b", "aaaa")
    seen: list[list[dict[str, Any]]] = []
    real_write = k.write_text

    def write_text(path: str, text: str) -> None:
        seen.append(record_entries(live.RECORD_PATH))  # what a kill now would leave
        real_write(path, text)

    monkeypatch.setattr(k, "write_text", write_text)
    s = live.Settings(record=live.SettingsRecord())
    s.set(a, "9999")
    s.set(b, "bbbb")
    s.set(a, "8888")  # a second write of one knob: its original is kept, not re-recorded
    assert seen == [
        [{"set": a, "old": "1234"}],
        [{"set": a, "old": "1234"}, {"set": b, "old": "aaaa"}],
        [{"set": a, "old": "1234"}, {"set": b, "old": "aaaa"}],
    ]
    assert s.restore() == []
    assert (Path(a).read_text(), Path(b).read_text()) == ("1234", "aaaa")
    assert not os.path.exists(live.RECORD_PATH)  # restored: nothing left to record


def test_a_knob_holding_the_value_already_is_never_written(
        paths: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # zswap's `enabled` initialises zswap on any write, even of the value it holds (and
    # zswap then turns off large-folio swap-in until reboot): neither the run nor its
    # restore may write a knob whose value would not change.
    zswap, other = knob(paths, "enabled", "N\n"), knob(paths, "other", "[always] never\n")
    writes: list[tuple[str, str]] = []
    real_write = k.write_text

    def write_text(path: str, text: str) -> None:
        writes.append((path, text))
        real_write(path, text)

    monkeypatch.setattr(k, "write_text", write_text)
    s = live.Settings(record=live.SettingsRecord())
    s.set(zswap, "N")
    s.set(other, "always")  # the bracketed choice is the value held
    assert writes == []
    assert s.saved == []
    s.set(other, "never")
    Path(other).write_text("always [never]\n")  # as the kernel shows it after the write
    assert writes == [(other, "never")]
    assert s.restore() == []
    assert writes == [(other, "never"), (other, "always")]
    # a knob that holds its original again by the restore is not written
    Path(other).write_text("[always] never\n")  # (a file's write does not truncate)
    s.set(other, "never")
    Path(other).write_text("[always] never\n")  # someone else put it back meanwhile
    assert s.restore() == []
    assert writes[-1] == (other, "never")
    assert len(writes) == 3


def test_two_settings_share_one_record_and_each_removes_its_own(paths: Path) -> None:
    record = live.SettingsRecord()
    session, swap = live.Settings(record=record), live.Settings(record=record)
    a, b = knob(paths, "a", "1234"), knob(paths, "b", "aaaa")
    session.set(a, "9999")
    swap.set(b, "bbbb")
    swap.intend("swapoff", "/dev/none")
    assert swap.restore() == []
    assert record_entries(live.RECORD_PATH) == [{"set": a, "old": "1234"}]
    assert session.restore() == []
    assert not os.path.exists(live.RECORD_PATH)


KILLED = """
import sys, time
from harness.conform import live
record, a, b, mount = sys.argv[1:5]
s = live.Settings(record=live.SettingsRecord(record))
s.set(a, "9999")
s.intend("umount", mount)  # announced; the kill comes before it is done
s.set(b, "bbbb")
print("changed", flush=True)
time.sleep(60)
"""


def test_a_sigkilled_run_is_restored_by_the_next(paths: Path) -> None:
    a, b = knob(paths, "a", "1234"), knob(paths, "b", "aaaa")
    not_mounted = str(paths / "not-mounted")
    os.mkdir(not_mounted)
    proc = subprocess.Popen([sys.executable, "-c", KILLED, live.RECORD_PATH, a, b,
                             not_mounted], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline() == "changed\n"
    proc.kill()
    proc.wait(timeout=30)
    assert (Path(a).read_text(), Path(b).read_text()) == ("9999", "bbbb")
    # newest first: b, the umount (nothing mounted: nothing to do), a
    pid, done = live.restore_recorded()
    assert pid == proc.pid
    assert done == [f"{b} bbbb -> aaaa", f"{a} 9999 -> 1234"]
    assert (Path(a).read_text(), Path(b).read_text()) == ("1234", "aaaa")
    assert not os.path.exists(live.RECORD_PATH)
    assert live.restore_recorded() == (None, [])


def test_what_cannot_be_restored_stays_recorded(paths: Path) -> None:
    a = knob(paths, "a", "1234")
    gone = str(paths / "gone")
    s = live.Settings(record=live.SettingsRecord())
    s.set(a, "9999")
    knob(paths, "gone", "xxxx")
    s.set(gone, "yyyy")
    os.unlink(gone)  # the knob vanished (a module unloaded): it cannot be put back
    with pytest.raises(k.KernelError, match="could not restore") as info:
        live.restore_recorded()
    assert "restored:" in str(info.value)
    assert Path(a).read_text() == "1234"
    assert record_entries(live.RECORD_PATH) == [{"set": gone, "old": "xxxx"}]


def test_an_unreadable_record_is_an_error_not_a_guess(paths: Path) -> None:
    os.makedirs(os.path.dirname(live.RECORD_PATH))
    Path(live.RECORD_PATH).write_text("{")
    with pytest.raises(k.KernelError, match="unreadable record"):
        live.restore_recorded()


def test_conform_restore_command(paths: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["conform", "--restore"]) == 0
    assert "nothing to restore" in capsys.readouterr().out
    a = knob(paths, "a", "1234")
    live.Settings(record=live.SettingsRecord()).set(a, "9999")  # and never restored
    assert main(["conform", "--restore"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"restored what a killed conformance run (pid {os.getpid()}) left")
    assert f"{a} 9999 -> 1234" in out
    assert main(["conform", "--restore", "prog.json"]) == 2
    err = capsys.readouterr().err
    assert err == "pudthp: error: conform --restore takes no PROGRAM or --random\n"
    # A record it cannot act on is the machine's problem, not the user's input: exit 4.
    Path(live.RECORD_PATH).write_text("{")
    assert main(["conform", "--restore"]) == 4
    assert capsys.readouterr().out.startswith("pudthp: cannot restore: ")


# --------------------------------------------------------------------------------------
# The live kernel: SIGKILL while the swap device is on
# --------------------------------------------------------------------------------------

THP = k.THP_DIR
KNOBS = (f"{THP}/enabled", f"{THP}/defrag", f"{THP}/use_zero_page",
         f"{THP}/khugepaged/scan_sleep_millisecs", f"{THP}/khugepaged/pages_to_scan",
         "/proc/sys/vm/page-cluster")


def _live_problem() -> str | None:
    try:
        live.check_machine()
    except k.KernelError as e:
        return f"cannot run here: {e}"
    if not os.path.isdir(f"/sys/block/{live.ZRAM}"):
        return "no zram device"
    return None


LIVE_PROBLEM = _live_problem()


def knob_values() -> dict[str, str]:
    return {p: k.selected(k.read_text(p)) for p in KNOBS}


def zram_state() -> tuple[bool, str]:
    return (f"/dev/{live.ZRAM}" in live.active_swaps(),
            k.read_text(f"/sys/block/{live.ZRAM}/disksize").strip())


@pytest.mark.slow
@pytest.mark.live
@pytest.mark.skipif(LIVE_PROBLEM is not None, reason=str(LIVE_PROBLEM))
def test_a_sigkilled_conform_is_restored_swap_device_included(tmp_path: Path) -> None:
    with live.run_lock():
        if os.path.exists(live.RECORD_PATH):
            pytest.skip(f"{live.RECORD_PATH} exists: a killed run left settings to restore")
        before, zram_before = knob_values(), zram_state()
    if zram_before != (False, "0"):
        pytest.skip(f"/dev/{live.ZRAM} is in use")
    # A PMD-level program with swap: the kill comes once the swap device is on, after
    # every knob of apply_config was set (defrag always, khugepaged asleep, ...).
    ops: list[dict[str, Any]] = [{"op": "mmap", "mm": 0, "start": 0, "npages": 2048,
                                  "prot": "rw"}]
    ops += [{"op": "write", "mm": 0, "addr": 512 * i + 1, "value": i + 1} for i in range(4)]
    ops += [{"op": "madvise", "mm": 0, "start": 0, "npages": 2048, "advice": "pageout"},
            {"op": "read", "mm": 0, "addr": 1}] * 20
    program = tmp_path / "swap.json"
    program.write_text(json.dumps({"format": "pudthp-program/1", "config": {
        "geometry": "x86_64", "pud_enabled": "never", "swap_pages": 4096}, "ops": ops}))
    proc = subprocess.Popen([sys.executable, "-m", "pudthp_cli", "conform", str(program),
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 660  # another run may hold the lock for a while
    while time.monotonic() < deadline and proc.poll() is None and not zram_state()[0]:
        time.sleep(0.005)
    if proc.poll() is not None:
        out, err = proc.communicate()
        pytest.skip(f"conform ended before its swap device was on: {out} {err}")
    os.killpg(proc.pid, signal.SIGKILL)  # the controller and its mm processes
    proc.communicate(timeout=60)
    with live.run_lock():
        if not os.path.exists(live.RECORD_PATH):
            # Another conformance run (a test on another xdist worker) took the lock the
            # kill freed before this test could, and repaired the machine first, as every
            # run does: the killed run's changes are gone all the same.
            assert knob_values() == before
            assert zram_state() == (False, "0")
            return
        changed = knob_values()
        assert changed != before, "the kill came before any knob was set"
        assert changed[f"{THP}/defrag"] == "always"
        assert zram_state()[0], "the swap device was on at the kill"
        pid, done = live.restore_recorded()
        assert pid == proc.pid
        assert f"swapoff /dev/{live.ZRAM}" in done
        assert f"reset /dev/{live.ZRAM}" in done
        assert knob_values() == before
        assert zram_state() == (False, "0")
        assert not os.path.exists(live.RECORD_PATH)
    r = subprocess.run([sys.executable, "-m", "pudthp_cli", "conform", "--restore"], cwd=ROOT,
                       capture_output=True, text=True, timeout=660)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "nothing to restore" in r.stdout
