"""``pudthp corpus``: list, replay, merge and archive in temporary directories, and the
replay of the project's own corpus: seeds pass, known-bad programs still find, archived
findings keep their signature and archived fixed ones (regressions) pass."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from harness.corpus import expectation, load_entries, replay
from harness.program import dump_program, load_program_file
from pudthp_cli.main import main
from pudthp_ref import spec
from pudthp_ref.spec import Config, Program

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "corpus"
SIGNATURE = "invariant:write:deposit.pud_stack.wrong_level"

PASSING = Program(Config(geometry=4), (spec.Mmap(0, 0, 16, "rw"), spec.Write(0, 0, 1)))
FAILING = Program(Config(geometry=4, deposit="list_head"), PASSING.ops)


def write(path: Path, program: Program, **meta: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dump_program(Program(program.config, program.ops, dict(meta))))
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------------------
# The project's corpus
# --------------------------------------------------------------------------------------


def test_replay_of_the_real_corpus_changes_nothing() -> None:
    dirs = [str(CORPUS / d) for d in ("seeds", "known_bad", "findings", "regressions")
            if (CORPUS / d).is_dir()]
    outcomes = replay(dirs)
    assert outcomes
    by_dir: dict[str, list[str]] = {}
    for o in outcomes:
        by_dir.setdefault(Path(o.entry.path).parent.name, []).append(o.verdict)
        assert o.verdict in ("pass", "still failing"), (o.entry.path, o.verdict, o.signature)
    assert set(by_dir["seeds"]) == {"pass"}
    # the list_head programs still find; their lru_next and llist twins pass
    for o in outcomes:
        if Path(o.entry.path).parent.name == "known_bad":
            assert o.entry.program is not None
            expected = "still failing" if o.entry.program.config.deposit == "list_head" else "pass"
            assert o.verdict == expected, o.entry.path
    assert set(by_dir.get("regressions", ["pass"])) == {"pass"}


# --------------------------------------------------------------------------------------
# Expectations
# --------------------------------------------------------------------------------------


def test_expectations(tmp_path: Path) -> None:
    def exp(sub: str, program: Program, **meta: object) -> str:
        path = write(tmp_path / sub / "p.json", program, **meta)
        return str(expectation(str(path), load_program_file(str(path))))

    assert exp("seeds", PASSING) == "pass"
    assert exp("known_bad", FAILING) == "finding"
    assert exp("known_bad", PASSING) == "pass"
    assert exp("known_bad", PASSING, expect="finding") == "finding"
    assert exp("findings", FAILING, signature="x:y") == "x:y"
    assert exp("regressions", FAILING, signature="x:y", expect="pass") == "pass"
    assert exp("anywhere", FAILING, expect="finding", signature="x:y") == "x:y"


# --------------------------------------------------------------------------------------
# list and replay
# --------------------------------------------------------------------------------------


def test_list_shows_status_and_signature(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "findings" / "a.json", FAILING, signature=SIGNATURE)
    write(tmp_path / "seeds" / "b.json", PASSING, note="a passing one")
    code, out, _ = run(capsys, "corpus", "list", str(tmp_path / "findings"),
                       str(tmp_path / "seeds"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["finding", "2", "ops"]
    assert lines[0].endswith(SIGNATURE)
    assert lines[1].startswith("pass")
    assert lines[1].endswith("a passing one")
    assert lines[2] == "2 program(s) in 2 directories"


def test_replay_reports_what_changed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "findings"
    write(d / "1_still.json", FAILING, signature=SIGNATURE)
    write(d / "2_fixed.json", PASSING, signature=SIGNATURE)  # "fixed": passes now
    write(d / "3_other.json", FAILING, signature="invariant:write:something.else")
    write(tmp_path / "seeds" / "4_new.json", FAILING)  # a seed that finds
    write(tmp_path / "seeds" / "5_ok.json", PASSING)
    code, out, _ = run(capsys, "corpus", "replay", str(d), str(tmp_path / "seeds"))
    assert code == 1
    verdicts = [line.split("  ")[0].strip() for line in out.splitlines()[:-1]]
    assert verdicts == ["still failing", "newly passing", "new finding", "new finding", "pass"]
    assert out.splitlines()[-1] == ("replay: 5 program(s): 1 pass, 1 still failing, "
                                    "1 newly passing, 2 new finding")
    # nothing changed: exit 0
    for name in ("2_fixed.json", "3_other.json"):
        (d / name).unlink()
    (tmp_path / "seeds" / "4_new.json").unlink()
    assert run(capsys, "corpus", "replay", str(d), str(tmp_path / "seeds"))[0] == 0


def test_bad_programs_and_directories_are_exit_2(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.json").write_text("{")
    code, out, _ = run(capsys, "corpus", "replay", str(tmp_path))
    assert code == 2
    assert out.startswith("invalid")
    code, _, err = run(capsys, "corpus", "list", str(tmp_path / "missing"))
    assert code == 2
    assert err.startswith("pudthp: error: ")
    assert len(err.splitlines()) == 1


# --------------------------------------------------------------------------------------
# merge
# --------------------------------------------------------------------------------------


def test_merge_dedups_by_content_and_signature(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    a, b, out = tmp_path / "a", tmp_path / "b", tmp_path / "out"
    longer = Program(FAILING.config, (spec.Read(0, 40), *FAILING.ops))
    write(a / "f1.json", longer, signature=SIGNATURE)
    write(b / "f1.json", FAILING, signature=SIGNATURE)  # same signature, shorter: kept
    write(a / "p.json", PASSING, note="one")
    write(b / "p.json", PASSING, note="same ops, other meta")  # same content: dropped
    write(b / "q.json", Program(Config(geometry=8), PASSING.ops))  # same name, other content
    write(out / "old.json", Program(Config(), (spec.Fork(0),)), signature="x:y")  # stays
    code, text, _ = run(capsys, "corpus", "merge", str(out), str(a), str(b))
    assert code == 0
    assert "skipped 1 duplicate(s) by content, 1 by signature" in text
    names = sorted(os.listdir(out))
    assert names == ["f1.json", "old.json", "p.json", "q.json"]
    assert len(load_program_file(str(out / "f1.json")).ops) == 2
    assert load_program_file(str(out / "p.json")).meta["note"] == "one"
    # merging again adds nothing and overwrites nothing
    before = {n: (out / n).read_text() for n in names}
    code, text, _ = run(capsys, "corpus", "merge", str(out), str(a), str(b))
    assert code == 0
    assert text.splitlines()[-1].startswith("merge: 0 program(s) written")
    assert {n: (out / n).read_text() for n in os.listdir(out)} == before


def test_merge_renames_on_a_name_clash(tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path / "a" / "x.json", PASSING)
    write(tmp_path / "b" / "x.json", FAILING)
    assert run(capsys, "corpus", "merge", str(tmp_path / "o"), str(tmp_path / "a"),
               str(tmp_path / "b"))[0] == 0
    names = sorted(os.listdir(tmp_path / "o"))
    assert len(names) == 2
    assert "x.json" in names
    assert any(n.startswith("x-") and n.endswith(".json") for n in names)


# --------------------------------------------------------------------------------------
# archive
# --------------------------------------------------------------------------------------


def test_archive_moves_a_fixed_finding_into_the_regressions(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finding = write(tmp_path / "findings" / "abc.json", PASSING, signature=SIGNATURE,
                    note="found by atheris")
    regressions = tmp_path / "regressions"
    code, _, _ = run(capsys, "corpus", "archive", str(finding), "--note", "fixed by X",
                       "--to", str(regressions))
    assert code == 0
    assert not finding.exists()
    moved = load_program_file(str(regressions / "abc.json"))
    assert moved.ops == PASSING.ops
    assert moved.meta["note"] == "fixed by X"
    assert moved.meta["finding_note"] == "found by atheris"
    assert moved.meta["expect"] == "pass"
    assert moved.meta["signature"] == SIGNATURE
    assert [o.verdict for o in replay([str(regressions)])] == ["pass"]


def test_archive_refuses_a_finding_that_still_fails_or_would_overwrite(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finding = write(tmp_path / "findings" / "abc.json", FAILING, signature=SIGNATURE)
    regressions = tmp_path / "regressions"
    code, _, err = run(capsys, "corpus", "archive", str(finding), "--note", "n",
                       "--to", str(regressions))
    assert code == 1
    assert "still reports" in err
    assert finding.exists()
    # kept as a known failure instead
    code, _, _ = run(capsys, "corpus", "archive", str(finding), "--note", "design bug",
                     "--to", str(regressions), "--expect", "finding")
    assert code == 0
    assert [o.verdict for o in replay([str(regressions)])] == ["still failing"]
    # a second file of the same name is not overwritten
    again = write(tmp_path / "findings" / "abc.json", PASSING)
    before = (regressions / "abc.json").read_text()
    code, _, err = run(capsys, "corpus", "archive", str(again), "--note", "n",
                       "--to", str(regressions))
    assert code == 2
    assert "not overwritten" in err
    assert (regressions / "abc.json").read_text() == before
    assert again.exists()


def test_archive_requires_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    finding = write(tmp_path / "f.json", PASSING)
    code, _, err = run(capsys, "corpus", "archive", str(finding))
    assert code == 2
    assert "--note" in err


def test_default_dirs_are_the_projects(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    shutil.copytree(CORPUS / "known_bad", tmp_path / "corpus" / "known_bad")
    monkeypatch.chdir(tmp_path)
    code, out, _ = run(capsys, "corpus", "list")
    assert code == 0
    n = len(load_entries(["corpus/known_bad"]))
    assert out.splitlines()[-1] == f"{n} program(s) in 1 directory"
