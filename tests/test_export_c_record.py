"""``pudthp export-c`` against hostile programs and kills: ids a C ``int`` cannot hold are
refused at export; any ``meta`` (comment terminators, ``/*``, trigraphs, line and
paragraph separators, bidirectional controls) leaves the C text's meaning and its
warning-free build alone; and a reproducer records every setting it changes in the record
``pudthp conform`` keeps (``/run/pudthp/conform-settings.json``) before changing it, so
after a SIGKILL the next reproducer, or ``conform --restore``'s ``restore_recorded``, puts
the machine back (root, holding the conformance lock as the other live tests do)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_export_c import (
    GCC,
    build_binary,
    held_lock,
    knobs,
    live_only,
    needs_gcc,
    program,
    reproducer,
    start_until_plan,
)

from harness.conform import export_c, live
from harness.conform import kernel as k
from pudthp_cli.main import main
from pudthp_ref import spec

SIMPLE = [{"op": "mmap", "mm": 0, "start": 0, "npages": 512, "prot": "rw"},
          {"op": "write", "mm": 0, "addr": 0, "value": 1}]


@pytest.mark.parametrize(("op", "field"), [
    ({"op": "write", "mm": 1 << 32, "addr": 0, "value": 1}, "mm id 4294967296"),
    ({"op": "exit", "mm": 1 << 31}, "mm id 2147483648"),
    ({"op": "unpin", "pin": (1 << 64) - 1}, f"pin id {(1 << 64) - 1}"),
])
def test_an_id_a_c_int_cannot_hold_is_refused_at_export(
        op: dict[str, object], field: str, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Before: 2**32 became 0 in the C table, so the reproducer acted on mm 0.
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"format": spec.PROGRAM_FORMAT,
                                "config": {"geometry": "x86_64"}, "ops": [*SIMPLE, op]}))
    assert main(["export-c", str(path), "-o", str(tmp_path / "p.c")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(f"pudthp: error: {path}: op 2 ({op['op']}): {field} is over "
                          "2147483647"), err
    assert err.count("\n") == 1
    assert not (tmp_path / "p.c").exists()
    # the largest id an int holds is a program like any other
    ok = dict(op, **({"pin": (1 << 31) - 1} if "pin" in op else {"mm": (1 << 31) - 1}))
    path.write_text(json.dumps({"format": spec.PROGRAM_FORMAT,
                                "config": {"geometry": "x86_64"}, "ops": [*SIMPLE, ok]}))
    assert main(["export-c", str(path), "-o", str(tmp_path / "p.c")]) == 0


HOSTILE_META = {"note": "a */ int evil = 1; /* and ??/ trigraph ??= \u2028 line "
                        "\u2029 para \u202e bidi \U0001f600 \x1b[2J tab\t\\ end\\",
                "nested": ["/*", "*/", "?" * 5]}


def test_meta_never_changes_the_c_text_nor_its_warnings(tmp_path: Path) -> None:
    plain = program(SIMPLE, geometry="x86_64", pud_enabled="never")
    hostile = spec.Program(plain.config, plain.ops, HOSTILE_META)
    a = export_c.render_c(reproducer(plain))
    b = export_c.render_c(reproducer(hostile))
    assert b.isascii()
    # the header comment is the only place meta reaches: everything after it is the same
    # text, and the comment opens once and closes once
    _, _, rest_a = a.partition(" */\n")
    head_b, _, rest_b = b.partition(" */\n")
    assert rest_b == rest_a
    assert head_b.count("/*") == 1
    assert "*/" not in head_b
    assert "??" not in b
    # a hostile file name too: in the comment and in the program's name string
    c = export_c.render_c(reproducer(hostile, name="p\u2028*/??/\u202e\".json"))
    assert c.isascii()
    assert "??" not in c
    assert c.partition(" */\n")[0].count("/*") == 1
    assert "*/" not in c.partition(" */\n")[0]
    if GCC is not None:  # warning-free builds (build_binary requires an empty stderr)
        build_binary(b, tmp_path, "hostile_meta")
        build_binary(c, tmp_path, "hostile_name")


def _record_entries() -> list[dict[str, object]]:
    with open(live.RECORD_PATH, encoding="utf-8") as f:
        data = json.load(f)
    assert data["format"] == live.RECORD_FORMAT
    return list(data["entries"])


def _long_swap_program() -> spec.Program:
    # 300 reads after a write fault and a pageout: long enough to be killed in the middle,
    # with zram swap on (the device steps are recorded too)
    ops: list[dict[str, object]] = [
        *SIMPLE, {"op": "madvise", "mm": 0, "start": 0, "npages": 512, "advice": "pageout"}]
    ops += [{"op": "read", "mm": 0, "addr": 1}] * 300
    return program(ops, geometry="x86_64", pud_enabled="never", swap_pages=512,
                   thp_enabled="madvise" if "[always]" in k.read_text(
                       f"{k.THP_DIR}/enabled") else "always")


def _start_and_kill(binary: Path, fd: int) -> tuple[str, int]:
    """Start the reproducer, SIGKILL it once every setting is applied and its swap is on
    (the plan line is printed after that); its output so far and pid."""
    proc, lines = start_until_plan(binary, fd)
    assert proc.stdout is not None
    deadline = time.monotonic() + 60
    while "/dev/zram0" not in k.read_text("/proc/swaps") and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    proc.stdout.close()
    return "".join(lines), proc.pid


@pytest.mark.slow
@live_only
@needs_gcc
def test_a_sigkilled_reproducer_is_repaired_by_the_next_run_and_by_restore(
        tmp_path: Path) -> None:
    with held_lock() as fd:
        if os.path.exists(live.RECORD_PATH):
            live.restore_recorded()  # what another killed run left, first
        # made under the lock: its thp_enabled differs from the machine's now (a knob
        # already holding the value is never written, so never recorded)
        binary = build_binary(export_c.render_c(reproducer(_long_swap_program())),
                              tmp_path, "long")
        if k.read_text("/proc/swaps").count("\n") > 1:
            pytest.skip("swap is active on this machine: the reproducer would skip")
        before = knobs()
        out, pid = _start_and_kill(binary, fd)
        assert out.endswith(f"1..{len(_long_swap_program().ops)}\n"), out
        leaked = knobs()
        assert leaked != before  # the kill left settings changed and the swap on
        entries = _record_entries()
        recorded = {str(e["set"]): e["old"] for e in entries if "set" in e}
        steps = [e["undo"] for e in entries if "undo" in e]
        # every knob it changed is recorded with the machine's own value
        for path, text in before.items():
            if path in recorded:
                assert recorded[path] == k.selected(text), path
        assert f"{k.THP_DIR}/enabled" in recorded
        assert "/proc/sys/vm/page-cluster" in recorded
        assert ["zram_reset", "zram0"] in steps
        assert ["swapoff", "/dev/zram0"] in steps
        # a record file a killed writer left half-way (before its rename) goes too
        dead = subprocess.Popen(["true"])
        dead.wait()
        stale = Path(f"{live.RECORD_PATH}.{dead.pid}.tmp")
        stale.write_text("{")
        # the next reproducer puts them back before it changes anything, so what it saves
        # (and restores at its end) is the machine's own
        r = subprocess.run([str(binary)], capture_output=True, text=True, pass_fds=(fd,),
                           timeout=600, check=False)
        assert f"# restored what a killed run (pid {pid}) left: " in r.stdout, r.stdout
        assert r.returncode in (0, 1), r.stdout
        assert knobs() == before
        assert not os.path.exists(live.RECORD_PATH)
        assert not stale.exists()
        # killed again: what 'pudthp conform --restore' runs puts everything back
        _start_and_kill(binary, fd)
        assert knobs() != before
        killed, done = live.restore_recorded()
        assert killed is not None
        assert "swapoff /dev/zram0" in done
        assert knobs() == before
        assert not os.path.exists(live.RECORD_PATH)
