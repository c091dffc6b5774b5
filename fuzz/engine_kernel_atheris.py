"""``pudthp fuzz --impl kernel --engine atheris``: the atheris engine's plug-in
(``fuzz.engine_atheris``) on the live kernel.

One libFuzzer process (``fuzz.target --impl=kernel``) holds the kernel for its life and
runs each input's program there and on the reference (``fuzz.kernel.KernelHunt`` decodes
the bytes into what this machine can run), steered by the model-state and the
kernel-observation features as counters of their own.  On a finding libFuzzer leaves the
input and exits without restoring the kernel; the campaign then takes the kernel itself
(``KernelMachine``, which first puts back what the record says the target left changed),
replays the input, shrinks it on the kernel (``harness.conform.kshrink``), archives it with
its C reproducer beside it (``fuzz.kernel.kernel_payload``), gives the kernel back and
starts the target again.  Known signatures and ``KNOWN`` disagreements go as in the
Hypothesis kernel campaign (``fuzz.engine_kernel``); the kernel-observation table is
printed after the model-state one.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable

from fuzz.engine_atheris import (
    AtherisCampaign,
    AtherisEngine,
    Judge,
    LibFuzzerWorker,
    _unlink,
)
from fuzz.engine_kernel import KernelCampaign
from fuzz.supervisor import CannotRun, Exit, Found, Slot, Supervisor
from harness.conform.campaign import Capabilities
from harness.conform.kfeatures import KTally
from pudthp_ref.spec import Program

SHRINK_SECONDS = 120.0
KFEATURES = "pudthp: kfeatures "


class KernelJudge(Judge):
    """A crash input of the kernel target: replayed, shrunk and exported on the kernel."""

    def __init__(self, c: AtherisCampaign, sup: Supervisor, run_dir: str,
                 engine: KernelAtherisEngine) -> None:
        from fuzz.kernel import KernelHunt

        super().__init__(c, sup, run_dir)
        assert engine.caps is not None
        self.hunt = KernelHunt(engine.caps, c.max_ops)
        self.engine = engine

    def crash(self, index: int, seed: int, program: Program, path: str) -> None:
        from fuzz.kernel import gauge_only, kernel_payload
        from harness.conform.campaign import KernelMachine
        from harness.conform.compare import CannotRun as KernelCannotRun
        from harness.conform.kshrink import shrink_on_kernel
        from harness.shrink import NoFinding

        sup = self.sup
        strict = self.engine.kc.strict
        try:
            with KernelMachine(say=sup.say) as machine:
                finding = machine.run(program).finding(strict)
                if finding is None:
                    sup.warnings.append(f"worker {index}: a crash input the kernel does not "
                                        f"show again ({len(program.ops)} ops); not archived")
                    _unlink(path)
                    return
                sig = finding.signature
                if sup.met_again(sig):
                    _unlink(path)
                    return
                how = "none (interrupted)"
                if not sup.signals:
                    sup.say(f"worker {index} found {sig} ({len(program.ops)} ops); shrinking "
                            "on the kernel")
                    try:
                        r = shrink_on_kernel(machine, program, sig, strict=strict,
                                             deadline=time.monotonic() + SHRINK_SECONDS)
                        program, finding = r.program, r.finding
                        how = f"kernel ({r.runs} runs)"
                    except NoFinding:
                        if gauge_only(finding):  # another process's THPs: noise
                            sup.warnings.append(f"worker {index}: {sig} did not show again "
                                                "from scratch: another process's doing")
                            _unlink(path)
                            return
                        how = "none (the kernel no longer showed it from scratch)"
                found = kernel_payload(program, finding, seed, 0, how)
        except KernelCannotRun as e:
            sup.warnings.append(f"worker {index}: cannot replay a crash input on the kernel: "
                                f"{e}; its input stays in {self.run_dir}")
            return
        meta_fixed = json.loads(found.program)
        meta_fixed["meta"]["engine"] = self.engine.name
        text = json.dumps(meta_fixed, indent=2) + "\n"
        c_text = found.c_text
        written = self.engine.c_writer(sig, c_text)

        def on_written() -> None:
            written()
            _unlink(path)

        sup.report(Found(sig, finding.kind, found.ops, text,
                         kept_note=f" (its input stays in {self.run_dir})",
                         on_written=on_written))


class KernelAtherisEngine(AtherisEngine):
    """``AtherisEngine`` with the kernel target, one worker, ``unit`` ops."""

    unit = "ops"

    def __init__(self, kc: KernelCampaign, corpus_dir: str) -> None:
        super().__init__(AtherisCampaign(kc.time_limit, 1, {}, kc.findings_dir, corpus_dir,
                                         kc.seed, impl="kernel", err=kc.err, out=kc.out,
                                         link=kc.link, program_seconds=None,
                                         max_ops=kc.max_ops or 50,
                                         target_args=("--strict",) if kc.strict else ()))
        from fuzz.engine_kernel import KernelEngine

        self.kc = kc
        self.caps: Capabilities | None = None
        self.kernel_side = KernelEngine(kc)  # the C files, the ktally, the restore
        self.ktally_done = KTally()

    def open(self, sup: Supervisor) -> None:
        from harness.conform.campaign import KernelMachine
        from harness.conform.compare import CannotRun as KernelCannotRun

        self.kernel_side.open(sup)
        try:
            with KernelMachine(say=lambda text: None) as machine:
                self.caps = machine.caps
        except KernelCannotRun as e:
            raise CannotRun(str(e)) from None
        assert self.caps is not None
        for kind, why in sorted(self.caps.skipped.items()):
            sup.say_plain(f"note: no {kind} ops: {why}")
        super().open(sup)
        assert self.run_dir is not None
        self.judge = KernelJudge(self.c, sup, self.run_dir, self)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.kernel_side.close()

    def c_writer(self, sig: str, c_text: str | None) -> Callable[[], None]:
        """What writes the C file beside the finding once its program is archived."""
        return self.kernel_side.found({"signature": sig, "kind": "", "ops": 0, "program": "",
                                       "c": c_text}).on_written or (lambda: None)

    def banner(self) -> str:
        return self.kernel_side.banner().replace("engine hypothesis", "engine atheris")

    def exited(self, slot: Slot, status: int) -> Exit:
        if isinstance(slot.worker, LibFuzzerWorker):
            for line in reversed(slot.worker.log):
                if line.startswith(KFEATURES):
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        self.ktally_done.merge(KTally.from_json(
                            json.loads(line.removeprefix(KFEATURES))))
                    break
        return super().exited(slot, status)

    def progress(self, programs: int, steps: int, rate: float) -> str:
        return f"execs {programs:,}  kernel ops {steps:,}  {rate:,.1f} ops/s"

    def counts(self, programs: int, steps: int, elapsed: float) -> str:
        rate = steps / elapsed if elapsed > 0 else 0.0
        return f"{programs:,} programs, {steps:,} ops on the kernel ({rate:,.1f} ops/s)"

    def report_extra(self) -> str:
        self.kernel_side.ktally = self.ktally_done
        return self.kernel_side.report_extra().replace("(hypothesis)", "(atheris)")


def run_kernel_atheris_campaign(c: KernelCampaign, corpus_dir: str) -> int:
    """The whole kernel campaign with atheris; the exit status as the supervisor's."""
    os.makedirs(corpus_dir, exist_ok=True)
    os.makedirs(c.findings_dir, exist_ok=True)
    return Supervisor(KernelAtherisEngine(c, corpus_dir), c).run()
