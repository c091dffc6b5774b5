"""Kernel campaigns on the command line and under the campaign supervisor
(``pudthp_cli/campaign.py``, ``shrink.py``, ``coverage.py``, ``bench.py``;
``fuzz/engine_kernel.py``, ``fuzz/engine_kernel_atheris.py``): what a machine that cannot
run one says, options that need ``--impl kernel``, what the plug-in makes of its worker's
messages and where a finding's C file goes; and, as root on a kernel with PMD THP, a short
campaign of each engine through ``pudthp fuzz`` ending clean with both feature tables and
the settings restored.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz.archive import finding_path
from fuzz.engine_kernel import KernelCampaign, KernelEngine
from fuzz.supervisor import Features, Found, KnownHit, Progress, Supervisor
from harness.conform import kernel as k
from harness.conform import live
from pudthp_cli.main import main


def no_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise k.KernelError("not root: PFNs, kpageflags and the THP knobs need root")

    monkeypatch.setattr(live, "check_machine", refuse)


def test_a_kernel_campaign_where_the_machine_cannot_is_exit_4(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    no_machine(monkeypatch)
    status = main(["fuzz", "--impl", "kernel", "--time", "5", "--seed", "1",
                   "--findings", str(tmp_path)])
    assert status == 4
    err = capsys.readouterr().err
    assert "cannot run here: not root" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [
    ["fuzz", "--strict", "--impl", "ref"],
    ["fuzz", "--mix-kernels"],
    ["fuzz", "--impl", "kernel", "--config", "deposit=list_head"],
])
def test_kernel_only_options_need_impl_kernel(argv: list[str], tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*argv, "--time", "1", "--findings", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pudthp: error: ")
    assert len(err.strip().splitlines()) == 1


def test_shrink_and_coverage_on_the_kernel_where_the_machine_cannot_are_exit_4(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from harness.conform.campaign import KernelMachine
    from harness.conform.compare import CannotRun

    def refuse(self: KernelMachine) -> KernelMachine:
        raise CannotRun("not root")

    monkeypatch.setattr(KernelMachine, "__enter__", refuse)
    prog = tmp_path / "p.json"
    prog.write_text(json.dumps({"format": "pudthp-program/1",
                                "config": {"geometry": "x86_64"},
                                "ops": [{"op": "mmap", "mm": 0, "start": 0, "npages": 512,
                                         "prot": "rw"}]}))
    assert main(["shrink", "--impl", "kernel", str(prog)]) == 4
    assert main(["coverage", "--impl", "kernel", str(prog)]) == 4
    assert main(["shrink", "--strict", str(prog)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


def engine(tmp_path: Path) -> KernelEngine:
    c = KernelCampaign(10.0, str(tmp_path), 1, asked_workers=2)
    e = KernelEngine(c)
    e.sup = Supervisor(e, c)
    return e


def test_the_plug_in_reads_its_workers_messages(tmp_path: Path) -> None:
    from fuzz.kmachine import KernelCounts
    from harness.conform.kfeatures import NAMES, KTally
    from harness.coverage import Tally

    e = engine(tmp_path)
    assert "clamped to 1" in e.banner()
    assert e.unit == "ops"
    assert e.translate(("progress", 0, 3, 120)) == Progress(3, 120)
    kt = KTally()
    kt.hits[0], kt.programs = 2, 1
    ev = e.translate(("coverage", 0, Tally().to_json(), kt.to_json()))
    assert isinstance(ev, Features)
    assert e.ktally.hits[0] == 2
    assert e.translate(("known", 0, "disagreement:read:rss")) == KnownHit(
        "disagreement:read:rss")
    assert e.translate(("counts", 0, KernelCounts({"pageout_without_swap": 2}, 1, 9)
                        .to_json())) is None
    assert "2 known disagreement(s) explained (pageout_without_swap 2)" in e.counts(3, 120, 1)
    assert e.translate(("failed", 0, "another conformance run holds the lock")) is None
    assert e.failures == {0: "another conformance run holds the lock"}
    assert NAMES[0] in e.report_extra()


def test_a_findings_c_file_goes_beside_its_program(tmp_path: Path) -> None:
    e = engine(tmp_path)
    sig = "disagreement:write:page.mapcount"
    f = e.found({"signature": sig, "kind": "disagreement", "ops": 4,
                 "program": "{}", "c": "int main(void) { return 1; }\n"})
    assert isinstance(f, Found)
    assert f.on_written is not None
    f.on_written()
    c_path = finding_path(str(tmp_path), sig).removesuffix(".json") + ".c"
    assert Path(c_path).read_text() == "int main(void) { return 1; }\n"
    assert e.c_files == {sig: c_path}
    # none to write: said after the finding when it is printed whole
    g = e.found({"signature": sig + "x", "kind": "disagreement", "ops": 4, "program": "{}",
                 "c": None, "c_problem": "a PUD program"})
    assert "no C reproducer: a PUD program" in g.kept_note


def _live_problem() -> str | None:
    try:
        live.check_machine()
    except k.KernelError as e:
        return f"cannot run here: {e}"
    return None


LIVE_PROBLEM = _live_problem()


@pytest.mark.slow
@pytest.mark.live
@pytest.mark.skipif(LIVE_PROBLEM is not None, reason=str(LIVE_PROBLEM))
@pytest.mark.parametrize("engine_name", ["hypothesis", "atheris"])
def test_a_short_kernel_campaign_of_either_engine_is_clean(engine_name: str,
                                                           tmp_path: Path) -> None:
    # A clean checkout on this kernel: nothing unexplained, and both tables.  The time
    # only bounds the run; nothing is asserted about how much it did beyond running.
    if engine_name == "atheris":
        pytest.importorskip("atheris")
    out = subprocess.run(
        [sys.executable, "-m", "pudthp_cli", "fuzz", "--impl", "kernel", "--engine",
         engine_name, "--time", "12", "--seed", "5", "--findings", str(tmp_path / "f"),
         "--corpus", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=900, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "kernel-observation features" in out.stdout
    assert "model-state coverage" in out.stdout
    m = re.search(r"done after [\d.]+ s: ([\d,]+) programs, ([\d,]+) ops on the kernel",
                  out.stdout)
    assert m is not None, out.stdout
    assert int(m.group(1).replace(",", "")) > 0, out.stdout
    assert "0 distinct finding(s)" in out.stdout


def test_a_gauge_another_process_moved_is_noise_not_a_finding(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # mthp.nr_anon is how many PMD-size anon THPs the whole machine has: another process
    # freeing one during an op moves it by -1 whatever the program does.  A difference in
    # it alone that the program run again from scratch no longer shows is noise; one in
    # a counter of the program's own is archived even so (with why it was not shrunk).
    import fuzz.kernel as fk
    from harness.conform.campaign import FINDING_KIND
    from harness.shrink import NoFinding
    from pudthp_ref.spec import Finding, Program

    def no_longer(*args: object, **kw: object) -> None:
        raise NoFinding("gone")

    monkeypatch.setattr(fk, "shrink_on_kernel", no_longer)
    monkeypatch.setattr(fk, "kernel_release", lambda: "6.18.0")
    prog = Program(fk.Config(geometry=512, pud_enabled="never"), (), {})

    def finding(observable: str) -> Finding:
        detail = json.dumps({"observable": observable, "kernel": -1, "model": 0})
        return Finding(FINDING_KIND, 0, f"disagreement:mmap:{observable}", "m", detail)

    gauge = finding("mthp.nr_anon")
    assert fk.gauge_only(gauge)
    assert fk._finish(None, gauge, prog, 1, 0, 10.0, False, None, 0.0) is None  # type: ignore[arg-type]
    own = finding("vmstat.thp_fault_alloc")
    assert not fk.gauge_only(own)
    kept = fk._finish(None, own, prog, 1, 0, 10.0, False, None, 0.0)  # type: ignore[arg-type]
    assert kept is not None
    assert "no longer showed it" in json.loads(kept.program)["meta"]["shrunk"]
