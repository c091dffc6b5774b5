"""The Hypothesis engine's example database: a campaign replays what an earlier one saved
before it generates anything, keys keep configs apart, and a replayed case whose signature
is already known is kept in the database (Hypothesis would delete it as no longer failing).
Workers run in this process (``fuzz_inline``) on the rejected ``list_head`` deposit, whose
every PUD fault is a finding."""

from __future__ import annotations

import json
import math
from pathlib import Path

from fuzz.engine_hypothesis import WorkerSpec, fuzz_inline, run_worker

LIST_HEAD = {"deposit": "list_head"}


def db_files(d: Path) -> set[str]:
    """Every saved case of a ``DirectoryBasedExampleDatabase`` (one file per case, in a
    directory per key)."""
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def ops_of(payload: dict[str, object]) -> list[object]:
    return list(json.loads(str(payload["program"]))["ops"])


def first_campaign(db: Path) -> dict[str, object]:
    # Hypothesis' shrinking not cut by its time budget: on a loaded machine a cut left
    # other cases in the database than the one shrunk, and what a later campaign replays
    # depended on the machine's load
    found = fuzz_inline(WorkerSpec(0, 11, LIST_HEAD, time_limit=None, max_runs=1,
                                   example_db=str(db), shrink_seconds=math.inf))
    assert len(found) == 1  # one bug per run
    assert db_files(db), "the failure Hypothesis shrank was saved"
    return found[0]


def test_a_second_campaign_replays_the_saved_failure_first(tmp_path: Path) -> None:
    db = tmp_path / "db"
    first = first_campaign(db)
    # Another seed and a budget of one generated program.  Without the database that one
    # program finds nothing (the control: fixed seed, so the same program every time);
    # with it, the saved case is replayed first and the finding is back, shrunk from where
    # the first campaign left it (no longer than its program).
    def second(example_db: str | None) -> list[dict[str, object]]:
        return fuzz_inline(WorkerSpec(1, 977, LIST_HEAD, time_limit=None, max_runs=1,
                                      max_examples=1, example_db=example_db))

    assert second(None) == []
    again = second(str(db))
    assert [p["signature"] for p in again] == [first["signature"]]
    assert len(ops_of(again[0])) <= len(ops_of(first))


def test_a_case_saved_under_one_config_is_neither_replayed_nor_deleted_under_another(
        tmp_path: Path) -> None:
    db = tmp_path / "db"
    first_campaign(db)
    saved = db_files(db)
    # The correct designs (config drawn from them): the list_head case would run as a
    # passing program there, and Hypothesis deletes replayed cases that pass.
    assert fuzz_inline(WorkerSpec(0, 5, {}, time_limit=None, max_runs=1, max_examples=10,
                                  example_db=str(db))) == []
    assert saved <= db_files(db)


def test_a_replayed_case_of_a_known_signature_stays_in_the_database(tmp_path: Path) -> None:
    db = tmp_path / "db"
    first = first_campaign(db)
    saved = db_files(db)
    # The signature is known (another machine archived it): the replay goes idle instead
    # of failing, nothing is reported, and the saved case is still there afterwards.
    # (A budget of a few programs: Hypothesis ends a run at its budget, before it deletes.)
    messages: list[tuple[object, ...]] = []
    run_worker(WorkerSpec(0, 5, LIST_HEAD, time_limit=None, max_runs=1, max_examples=10,
                          known=(str(first["signature"]),), example_db=str(db)),
               messages.append)
    assert ("known", 0, first["signature"]) in messages  # a case went idle on it
    assert all(m[2]["signature"] != first["signature"]  # type: ignore[index]
               for m in messages if m[0] == "finding")
    assert saved <= db_files(db)
