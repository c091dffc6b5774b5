"""Running the seed scenarios and reading their snapshots: shared by the scenario tests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from conftest import make_model

from harness.runner import make_impl
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    MTHP_KEYS,
    NODE_KEYS,
    OP_TYPES,
    PROGRAM_FORMAT,
    VMSTAT_KEYS,
    Config,
    Impl,
    Op,
)

SEEDS = Path(__file__).resolve().parent.parent / "corpus" / "seeds"


PT = 4096  # pgtables_bytes per page-table page (mm_inc_nr_ptes / mm_inc_nr_pmds / _puds)


GEOMETRIES = [
    pytest.param(8, id="small"),
    pytest.param(512, id="x86_64", marks=pytest.mark.slow),
]


NAMES = {8: "small", 512: "x86_64"}


def run(impl: str, name: str, at: set[int]) -> tuple[list[Any], dict[int, dict[str, Any]]]:
    """Replay ``corpus/seeds/<name>``; snapshot after each op index in ``at``."""
    raw = json.loads((SEEDS / name).read_text())
    assert raw["format"] == PROGRAM_FORMAT
    assert raw["meta"]["note"]
    model = make_model(impl, Config.from_json(raw["config"]))
    results: list[Any] = []
    snaps: dict[int, dict[str, Any]] = {}
    for i, d in enumerate(raw["ops"]):
        op = OP_TYPES[d["op"]](**{k: v for k, v in d.items() if k != "op"})
        results.append(model.apply(op))
        model.check_invariants()
        if i in at:
            snaps[i] = model.snapshot()
    assert set(snaps) == at, "a requested snapshot index is past the end of the program"
    return results, snaps


def run_ops(impl: str, cfg: Config, ops: Sequence[Op]) -> tuple[Impl, list[Any]]:
    """Apply ``ops`` to a fresh ``impl`` (``ref``, ``fast``, or ``both`` in lockstep) and
    check its invariants after each: the model and the results."""
    m = make_impl(impl, cfg)
    results = []
    for op in ops:
        results.append(m.apply(op))
        m.check_invariants()
    return m, results


def mm(snap: dict[str, Any], mm_id: int) -> dict[str, Any]:
    found = [m for m in snap["mms"] if m["id"] == mm_id]
    assert len(found) == 1, f"mm {mm_id} not in snapshot"
    return found[0]


def folio(snap: dict[str, Any], folio_id: int) -> dict[str, Any]:
    found = [f for f in snap["folios"] if f["id"] == folio_id]
    assert len(found) == 1, f"folio {folio_id} not live in snapshot"
    return found[0]


def folio_ids(snap: dict[str, Any]) -> list[int]:
    return [f["id"] for f in snap["folios"]]


def check(actual: dict[str, Any], **expected: Any) -> None:
    """The named fields of a snapshot object equal the expected values."""
    got = {k: actual[k] for k in expected}
    assert got == expected


def expect_stats(
    snap: dict[str, Any],
    *,
    vm: dict[str, int] | None = None,
    pmd: dict[str, int] | None = None,
    pud: dict[str, int] | None = None,
    node: dict[str, int] | None = None,
) -> None:
    """All statistics, with every counter not named expected to be 0."""
    stats = snap["stats"]
    assert {k: stats["vmstat"][k] for k in VMSTAT_KEYS} == dict.fromkeys(VMSTAT_KEYS, 0) | (
        vm or {}
    )
    assert {k: stats["mthp"]["pmd"][k] for k in MTHP_KEYS} == dict.fromkeys(MTHP_KEYS, 0) | (
        pmd or {}
    )
    assert {k: stats["mthp"]["pud"][k] for k in MTHP_KEYS} == dict.fromkeys(MTHP_KEYS, 0) | (
        pud or {}
    )
    assert {k: stats["node"][k] for k in NODE_KEYS} == dict.fromkeys(NODE_KEYS, 0) | (node or {})


def census(snap: dict[str, Any], mm_id: int) -> dict[str, int]:
    """How many live / deposited page tables of each level an mm owns: {"pte/live": n, ...}."""
    out: dict[str, int] = {}
    for t in snap["pagetables"]:
        if t["mm"] == mm_id:
            key = f"{t['level']}/{t['state']}"
            out[key] = out.get(key, 0) + 1
    return out


def _entry(snap: dict[str, Any], ptid: int, index: int) -> list[Any] | None:
    found = [t for t in snap["pagetables"] if t["id"] == ptid]
    assert len(found) == 1, f"page table {ptid} not in snapshot"
    for i, e in found[0]["entries"]:
        if i == index:
            return list(e)
    return None


def pud_entry(snap: dict[str, Any], mm_id: int, vpn: int) -> list[Any] | None:
    P = snap["geometry"]
    return _entry(snap, mm(snap, mm_id)["pud_table"], vpn // (P * P))


def pmd_entry(snap: dict[str, Any], mm_id: int, vpn: int) -> list[Any] | None:
    P = snap["geometry"]
    up = pud_entry(snap, mm_id, vpn)
    assert up is not None, f"PUD entry of {vpn} is none"
    assert up[0] == "table", f"PUD entry of {vpn} is {up}, not a table"
    return _entry(snap, up[1], (vpn // P) % P)


def pte_entry(snap: dict[str, Any], mm_id: int, vpn: int) -> list[Any] | None:
    P = snap["geometry"]
    up = pmd_entry(snap, mm_id, vpn)
    assert up is not None, f"PMD entry of {vpn} is none"
    assert up[0] == "table", f"PMD entry of {vpn} is {up}, not a table"
    return _entry(snap, up[1], vpn % P)


def pud_order(P: int) -> int:
    return 2 * (P.bit_length() - 1)  # PUD_ORDER = 2*log2(P): 6 small, 18 x86_64


def pmd_order(P: int) -> int:
    return P.bit_length() - 1  # PMD_ORDER = log2(P): 3 small, 9 x86_64


def fresh_huge_folio(order: int, nr: int) -> dict[str, Any]:
    """A PUD or PMD folio right after its anonymous fault (do_huge_pud_anonymous_page or
    do_huge_pmd_anonymous_page: folio_add_new_anon_rmap of one entire mapping in mm 0),
    minus data."""
    return {
        "order": order,
        "node": 0,  # allocated on the local node 0, never migrated
        "refcount": 1,  # the allocation reference becomes the leaf's reference
        "pincount": 0,  # never pinned
        "entire_mapcount": 0,  # one entire mapping, raw 0
        "large_mapcount": 0,  # folio_set_large_mapcount(folio, 1): raw 0
        "nr_pages_mapped": ENTIRELY_MAPPED,  # entire-mapped, no page PTE-mapped
        "mm_id": [1, 0],  # slot 0 = mm 0's MM-ID 0+1 = 1; slot 1 empty
        "mm_id_mapcount": [0, -1],  # slot 0 holds the one mapping (raw 1-1 = 0); slot 1 empty
        "shared": False,  # one mm
        "flags": ["deferred"],  # deferred_split_folio(folio, false): shrink_underused
        "mapcount": [[-1, nr]],  # an entire mapping touches no per-page _mapcount
        "anon_exclusive": [[True, 1], [False, nr - 1]],  # RMAP_EXCLUSIVE marks the head
    }
