"""``pudthp corpus``: list, replay, merge and archive in temporary directories, and the
replay of the project's own corpus: seeds pass, known-bad programs still find, archived
findings keep their signature and archived fixed ones (regressions) pass."""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from harness.corpus import Entry, expectation, load_entries, replay, replay_entry
from harness.program import dump_program, load_program_file
from pudthp_cli.main import main
from pudthp_ref import spec
from pudthp_ref.spec import Config, Program

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "corpus"
SIGNATURE = "invariant:deposit.pud_stack.wrong_level"

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


CORPUS_DIRS = ("seeds", "known_bad", "findings", "regressions")


def corpus_files() -> list[Path]:
    """Every program of the project's corpus directories, in name order."""
    return [p for d in CORPUS_DIRS for p in sorted((CORPUS / d).glob("*.json"))]


def test_the_corpus_has_programs_in_each_tracked_directory() -> None:
    # corpus/findings/ is made by campaigns and may be absent; the rest is in git.
    found = {p.parent.name for p in corpus_files()}
    assert {"seeds", "known_bad", "regressions"} <= found


# One test case per program, named by its directory and file, so a CI report names the
# program whose outcome changed.
@pytest.mark.parametrize("path", corpus_files(),
                         ids=lambda p: f"{p.parent.name}/{p.name}")
def test_replay_of_the_real_corpus_changes_nothing(path: Path) -> None:
    entry = Entry(str(path), load_program_file(str(path)))
    assert entry.program is not None
    o = replay_entry(entry)
    directory = path.parent.name
    if directory in ("seeds", "regressions"):
        expected = "pass"
    elif directory == "known_bad":
        # the list_head programs still find; their lru_next and llist twins pass
        expected = "still failing" if entry.program.config.deposit == "list_head" else "pass"
    else:  # an archived finding keeps reporting its signature
        expected = "still failing"
    assert o.verdict == expected, (o.verdict, o.signature, entry.expect)


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
    write(d / "3_other.json", FAILING, signature="invariant:something.else")
    write(tmp_path / "seeds" / "4_new.json", FAILING)  # a seed that finds
    write(tmp_path / "seeds" / "5_ok.json", PASSING)
    code, out, _ = run(capsys, "corpus", "replay", str(d), str(tmp_path / "seeds"))
    assert code == 1
    verdicts = [line.split("  ")[0].strip() for line in out.splitlines()[:-1]]
    assert verdicts == ["still failing", "newly passing", "new finding", "new finding", "pass"]
    assert out.splitlines()[-1] == ("replay: 5 program(s): 1 pass, 1 still failing, "
                                    "1 newly passing, 2 new finding "
                                    "(1 archived finding(s) open)")
    # nothing changed: exit 0
    for name in ("2_fixed.json", "3_other.json"):
        (d / name).unlink()
    (tmp_path / "seeds" / "4_new.json").unlink()
    assert run(capsys, "corpus", "replay", str(d), str(tmp_path / "seeds"))[0] == 0


def test_fail_on_open_fails_while_an_archived_finding_still_fails(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "findings"
    write(d / "1_open.json", FAILING, signature=SIGNATURE)  # archived by a campaign: open
    # a known-bad design's program and a failure kept on purpose are not open
    write(tmp_path / "known_bad" / "2_design.json", FAILING)
    write(d / "3_kept.json", FAILING, signature=SIGNATURE, expect="finding")
    dirs = (str(d), str(tmp_path / "known_bad"))
    assert run(capsys, "corpus", "replay", *dirs)[0] == 0  # nothing changed
    code, out, _ = run(capsys, "corpus", "replay", *dirs, "--fail-on-open")
    assert code == 1
    assert out.splitlines()[-1].endswith("(1 archived finding(s) open)")
    (d / "1_open.json").unlink()  # fixed and moved away: nothing open
    assert run(capsys, "corpus", "replay", *dirs, "--fail-on-open")[0] == 0


def test_replay_of_nothing_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # never "0 programs, exit 0": a CI job pointed at the wrong place must fail
    (tmp_path / "empty").mkdir()
    write(tmp_path / "full" / "a.json", PASSING)
    for argv, said in (
            ([str(tmp_path / "missing")], f"{tmp_path / 'missing'}: not a directory"),
            ([str(tmp_path / "empty")], f"{tmp_path / 'empty'}: no programs (*.json) in it"),
            ([str(tmp_path / "full"), str(tmp_path / "empty")],
             f"{tmp_path / 'empty'}: no programs (*.json) in it")):
        code, out, err = run(capsys, "corpus", "replay", *argv)
        assert (code, out) == (2, "")
        assert err == f"pudthp: error: {said}\n"
    monkeypatch.chdir(tmp_path)  # no corpus/ here: the default directories are none
    code, out, err = run(capsys, "corpus", "replay")
    assert (code, out) == (2, "")
    assert err.startswith("pudthp: error: no corpus directory here (none of corpus/seeds ")
    assert err.count("\n") == 1


def test_replay_junit_names_each_program(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    d = tmp_path / "findings"
    write(d / "1_still.json", FAILING, signature=SIGNATURE)
    write(d / "2_fixed.json", PASSING, signature=SIGNATURE)
    write(tmp_path / "seeds" / "3_ok.json", PASSING)
    report = tmp_path / "out" / "junit.xml"
    code, out, _ = run(capsys, "corpus", "replay", str(d), str(tmp_path / "seeds"),
                       "--fail-on-open", "--junit", str(report))
    assert code == 1
    root = ET.parse(report).getroot()
    (suite,) = root
    assert (suite.get("name"), suite.get("tests"), suite.get("failures")) == (
        "pudthp corpus replay", "3", "2")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert set(cases) == {str(d / "1_still.json"), str(d / "2_fixed.json"),
                          str(tmp_path / "seeds" / "3_ok.json")}
    assert cases[str(tmp_path / "seeds" / "3_ok.json")].find("failure") is None
    assert cases[str(tmp_path / "seeds" / "3_ok.json")].get("classname") == (
        "pudthp corpus replay.seeds")
    for name, verdict in (("1_still.json", "still failing"), ("2_fixed.json", "newly passing")):
        failure = cases[str(d / name)].find("failure")
        assert failure is not None
        line = next(x for x in out.splitlines() if x.endswith(name) or name in x)
        # the failure is the line replay printed, whitespace folded
        assert failure.get("message") == " ".join(line.split())
        assert str(failure.get("message")).startswith(verdict)


def test_format_1_signatures_of_old_archives_still_replay(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # archived before signature format 2: the op kind after which the invariant failed was
    # part of the signature; the program still reports its bug
    d = tmp_path / "findings"
    write(d / "old.json", FAILING, signature="invariant:write:deposit.pud_stack.wrong_level")
    write(d / "other.json", FAILING, signature="invariant:read:something.else")
    code, out, _ = run(capsys, "corpus", "replay", str(d))
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"still failing  {d / 'old.json'}  {SIGNATURE}"
    # another bug's old signature is still another bug
    assert lines[1] == f"new finding    {d / 'other.json'}  {SIGNATURE}  (expected " \
        "invariant:something.else)"
    # merged with a format-2 archive of the same bug: one program kept
    write(tmp_path / "new" / "new.json", FAILING, signature=SIGNATURE)
    (d / "other.json").unlink()
    code, out, _ = run(capsys, "corpus", "merge", str(tmp_path / "merged"),
                       str(tmp_path / "new"), str(d))
    assert code == 0
    assert len(list((tmp_path / "merged").glob("*.json"))) == 1


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
