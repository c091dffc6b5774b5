"""Finding signatures (``harness.signature``, docs/format.md "Findings and signatures"):
one bug is one finding whatever op first meets it, and format-1 signatures of older
archives are read as today's everywhere a signature is read (the corpus tools:
test_corpus; the hub: test_hub_trust)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fuzz.archive import archive, archived_signatures, finding_path
from harness.program import dump_program
from harness.runner import run_program
from harness.signature import SIGNATURE_FORMAT, current
from pudthp_cli.main import main
from pudthp_ref import spec
from pudthp_ref.spec import Config, Program

WRONG_LEVEL = "invariant:deposit.pud_stack.wrong_level"


@pytest.mark.parametrize(("old", "new"), [
    ("invariant:write:deposit.pud_stack.wrong_level", WRONG_LEVEL),
    ("invariant:pin:deposit.pud_stack.wrong_level", WRONG_LEVEL),
    ("divergence:munmap:snapshot.folios[].refcount", "divergence:snapshot.folios[].refcount"),
    ("divergence:read:result", "divergence:result"),
    ("divergence:init:exception", "divergence:exception"),
    # format 2 already, and the classes whose op kind is part of the check: as they are
    (WRONG_LEVEL, WRONG_LEVEL),
    ("divergence:summary.vmas[].start", "divergence:summary.vmas[].start"),
    ("model_bug:munmap:withdraw.pmd.poison", "model_bug:munmap:withdraw.pmd.poison"),
    ("oracle:read:read-value", "oracle:read:read-value"),
    # no op kind in the second place: not a format-1 signature
    ("invariant:junk:x", "invariant:junk:x"),
    ("anything else", "anything else"),
])
def test_current_reads_format_1_as_format_2(old: str, new: str) -> None:
    assert current(old) == new
    assert current(new) == new  # idempotent


# The rejected list_head design breaks the PUD deposit stack at the first PUD THP fault
# (corpus/known_bad/list_head_two_puds.json): with PUD THPs always on, a VMA covering the
# small geometry's PUD range [64, 128) takes a PUD leaf at the first fault there, whether a
# read (pud_read_fault=alloc, the default), a write or a pin (a write fault, FOLL_WRITE)
# makes it; the invariant fails right after that op, op 1.
@pytest.mark.parametrize("fault", [spec.Read(0, 64), spec.Write(0, 64, 1), spec.Pin(0, 64)])
def test_the_list_head_bug_is_one_signature_whatever_op_meets_it(fault: spec.Op) -> None:
    program = Program(Config(geometry=8, deposit="list_head", pud_enabled="always"),
                      (spec.Mmap(0, 64, 192, "rw"), fault))
    finding = run_program(program, "both").finding
    assert finding is not None
    assert (finding.kind, finding.op_index, finding.signature) == ("invariant", 1, WRONG_LEVEL)


def test_run_output_names_the_op_the_signature_leaves_out(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "p.json"
    path.write_text(dump_program(Program(
        Config(geometry=8, deposit="list_head", pud_enabled="always"),
        (spec.Mmap(0, 64, 192, "rw"), spec.Pin(0, 64)))))
    assert main(["run", str(path), "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FINDING invariant at op 1 (pin " in out
    assert out.splitlines()[0].endswith(f": {WRONG_LEVEL}")


def test_a_format_1_archive_is_the_archive_of_its_format_2_signature(tmp_path: Path) -> None:
    # a finding archived before format 2 (named by the hash of its format-1 signature): a
    # campaign meeting the bug again finds it archived, writes no second file
    old_sig = "invariant:write:deposit.pud_stack.wrong_level"
    text = dump_program(Program(Config(geometry=8, deposit="list_head"),
                                (spec.Mmap(0, 64, 192, "rw"), spec.Write(0, 64, 1)),
                                {"signature": old_sig}))
    old_path, written = archive(str(tmp_path), old_sig, text)
    assert written
    assert archived_signatures(str(tmp_path)) == {WRONG_LEVEL: old_path}
    assert finding_path(str(tmp_path), WRONG_LEVEL) != old_path
    new_text = json.loads(text)
    new_text["meta"] = {"signature": WRONG_LEVEL, "signature_format": SIGNATURE_FORMAT}
    assert archive(str(tmp_path), WRONG_LEVEL, json.dumps(new_text)) == (old_path, False)
    assert [p.name for p in tmp_path.glob("*.json")] == [Path(old_path).name]
