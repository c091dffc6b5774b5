"""The reference checker's folio checks: pins, the deferred split queue, and every folio
against the mappings the page-table walk found (``invariants_pgtable.Walk``).

The free-time checks of ``free_tail_page_prepare`` / ``page_expected_state`` for freed
folios, and the rmap invariants I1-I21 of the background note for live ones: per-page and
large mapcounts, ``_nr_pages_mapped``, the mm-id slots with their SHARED bit, refcount =
mappings + pins + swap cache, PageAnonExclusive, the deferred split queue and the
``NR_ANON_*`` / mTHP counters.
"""

from __future__ import annotations

from pudthp_ref.invariants_pgtable import FolioAcc, Walk
from pudthp_ref.mm_types import Folio, MmState
from pudthp_ref.spec import ENTIRELY_MAPPED, GUP_PIN_COUNTING_BIAS, InvariantViolation


def check_pins(st: MmState) -> dict[int, int]:
    pins: dict[int, int] = {}
    for key, p in st.pins.items():
        if p.id != key:
            raise InvariantViolation("pin.id", f"pins[{key}] has id {p.id}")
        f = st.folios.get(p.folio) if type(p.folio) is int else None
        if f is None:
            raise InvariantViolation(
                "pin.missing_folio", f"pin {key} names unknown folio {p.folio!r}"
            )
        if f.freed:
            raise InvariantViolation("freed.pinned", f"pin {key} holds freed folio {f.id}")
        if not (type(p.page) is int and 0 <= p.page < f.nr):
            raise InvariantViolation(
                "pin.page", f"pin {key} page {p.page!r} of {f.nr}-page folio {f.id}"
            )
        pins[f.id] = pins.get(f.id, 0) + 1
    return pins


def check_deferred_queue(st: MmState) -> None:
    dq = st.deferred
    if len(set(dq)) != len(dq):
        raise InvariantViolation("deferred.duplicate", f"deferred queue {dq} has duplicates")
    for fid in dq:
        f = st.folios.get(fid) if type(fid) is int else None
        if f is None:
            raise InvariantViolation(
                "deferred.missing", f"deferred queue holds unknown folio {fid!r}"
            )
        if f.freed:
            raise InvariantViolation("deferred.freed", f"deferred queue holds freed folio {fid}")
        if f.order < st.geom.pmd_order:
            raise InvariantViolation(
                "deferred.order", f"deferred queue holds order-{f.order} folio {fid}"
            )
        if not f.deferred:
            raise InvariantViolation("deferred.flag_mismatch", f"folio {fid} queued but flag clear")


def _check_freed(f: Folio, mapped: bool) -> None:
    """free_tail_page_prepare() / page_expected_state(): a freed folio is back at rest."""
    fid = f.id
    if mapped:
        raise InvariantViolation("freed.mapped", f"freed folio {fid} is still mapped")
    if f.refcount != 0:
        raise InvariantViolation("freed.refcount", f"freed folio {fid} refcount {f.refcount}")
    if f.mapcount.count(-1) != f.nr:
        raise InvariantViolation("freed.mapcount", f"freed folio {fid} has a page _mapcount != -1")
    if f.entire_mapcount != -1 or f.large_mapcount != -1:
        raise InvariantViolation(
            "freed.large_counters",
            f"freed folio {fid} entire {f.entire_mapcount} large {f.large_mapcount}",
        )
    if f.nr_pages_mapped != 0:
        raise InvariantViolation(
            "freed.nr_pages_mapped", f"freed folio {fid} npm {f.nr_pages_mapped:#x}"
        )
    if f.pincount != 0:
        raise InvariantViolation("freed.pincount", f"freed folio {fid} pincount {f.pincount}")
    if f.mm_id != [0, 0] or f.mm_id_mapcount != [-1, -1] or f.shared:
        raise InvariantViolation(
            "freed.mm_id",
            f"freed folio {fid} slots {f.mm_id} {f.mm_id_mapcount} shared {f.shared}",
        )
    if f.deferred:
        raise InvariantViolation("freed.deferred", f"freed folio {fid} on the deferred list")
    if f.partially_mapped:
        raise InvariantViolation(
            "freed.partially_mapped", f"freed folio {fid} still partially mapped"
        )
    if f.swapcache:
        raise InvariantViolation("freed.swapcache", f"freed folio {fid} still in the swap cache")


_SMALL_AT_REST = (-1, -1, 0, 0, False)


def _check_small(f: Folio, mapped: int, owner: int, npins: int) -> None:
    """An order-0 folio: _mapcount, the large-folio fields at rest, refcount, exclusivity."""
    fid = f.id
    if f.mapcount[0] + 1 != mapped:
        raise InvariantViolation(
            "mapcount.small", f"folio {fid} _mapcount {f.mapcount[0]}, {mapped} PTEs map it"
        )
    if (
        (f.entire_mapcount, f.large_mapcount, f.nr_pages_mapped, f.shared) != (-1, -1, 0, False)
        or f.mm_id != [0, 0]
        or f.mm_id_mapcount != [-1, -1]
    ):
        raise InvariantViolation(
            "mapcount.small_large_fields", f"order-0 folio {fid} has large counters set"
        )
    if f.pincount != 0:
        raise InvariantViolation("pincount.small", f"order-0 folio {fid} pincount {f.pincount}")
    if f.refcount <= 0:
        raise InvariantViolation("refcount.live_zero", f"live folio {fid} refcount {f.refcount}")
    expected = mapped + GUP_PIN_COUNTING_BIAS * npins + (1 if f.swapcache else 0)
    if f.refcount != expected:
        raise InvariantViolation(
            "refcount",
            f"folio {fid} refcount {f.refcount}, expected {expected} "
            f"({mapped} mapped, {npins} pins, swapcache {f.swapcache})",
        )
    if owner == -2 and f.anon_exclusive[0]:
        raise InvariantViolation(
            "anon_exclusive.shared_mms", f"folio {fid} mapped by several mms, exclusive"
        )


def _check_large(st: MmState, f: Folio, acc: FolioAcc | None, npins: int) -> int:
    """A PMD- or PUD-order folio; returns the number of its pages mapped (for NR_ANON_MAPPED)."""
    fid = f.id
    nr = f.nr
    cnt = acc.cnt if acc is not None else None
    leaves = acc.leaves if acc is not None else 0
    if cnt is None:
        if f.mapcount.count(-1) != nr:
            p = next(i for i, c in enumerate(f.mapcount) if c != -1)
            raise InvariantViolation(
                "mapcount.page", f"folio {fid} page {p} _mapcount {f.mapcount[p]}, no PTE maps it"
            )
        ptes = 0
        pages_mapped = 0
    else:
        if f.mapcount != [c - 1 for c in cnt]:
            p = next(i for i, (a, c) in enumerate(zip(f.mapcount, cnt, strict=True)) if a != c - 1)
            raise InvariantViolation(
                "mapcount.page",
                f"folio {fid} page {p} _mapcount {f.mapcount[p]}, {cnt[p]} PTEs map it",
            )
        ptes = sum(cnt)
        pages_mapped = nr - cnt.count(0)
    if f.entire_mapcount + 1 != leaves:
        raise InvariantViolation(
            "mapcount.entire", f"folio {fid} entire {f.entire_mapcount}, {leaves} leaves map it"
        )
    total = leaves + ptes
    if f.large_mapcount + 1 != total:
        raise InvariantViolation(
            "mapcount.large",
            f"folio {fid} large {f.large_mapcount}, {leaves} leaves + {ptes} PTEs map it",
        )
    npm = pages_mapped + (ENTIRELY_MAPPED if leaves else 0)
    if f.nr_pages_mapped != npm:
        raise InvariantViolation(
            "mapcount.nr_pages_mapped",
            f"folio {fid} _nr_pages_mapped {f.nr_pages_mapped:#x}, expected {npm:#x}",
        )
    if f.pincount != npins:
        raise InvariantViolation(
            "pincount", f"folio {fid} _pincount {f.pincount}, {npins} pin records"
        )
    if f.refcount <= 0:
        raise InvariantViolation("refcount.live_zero", f"live folio {fid} refcount {f.refcount}")
    expected = total + npins + (nr if f.swapcache else 0)
    if f.refcount != expected:
        raise InvariantViolation(
            "refcount",
            f"folio {fid} refcount {f.refcount}, expected {expected} "
            f"({total} mappings, {npins} pins, swapcache {f.swapcache})",
        )
    _check_mm_ids(st, f, acc, total)
    _check_large_exclusive(f, acc, leaves)
    return nr if leaves else pages_mapped


def _check_mm_ids(st: MmState, f: Folio, acc: FolioAcc | None, total: int) -> None:
    """I5: the two mm-id slots and the sticky SHARED bit (include/linux/rmap.h)."""
    fid = f.id
    per_mm = acc.per_mm if acc is not None else {}
    occupied = 0
    for s in (0, 1):
        mid = f.mm_id[s]
        mc = f.mm_id_mapcount[s]
        if (mid == 0) != (mc == -1):
            raise InvariantViolation(
                "mm_id.slot_empty", f"folio {fid} slot {s} id {mid} mapcount {mc}"
            )
        if mid == 0:
            continue
        m = mid - 1
        if not (type(m) is int and 0 <= m < len(st.mms) and st.mms[m].alive):
            raise InvariantViolation(
                "mm_id.dead_mm", f"folio {fid} slot {s} holds mm id {mid} (no live mm)"
            )
        have = per_mm.get(m, 0)
        if not 0 <= mc + 1 <= have:
            raise InvariantViolation(
                "mm_id.slot_count",
                f"folio {fid} slot {s} (mm {m}) count {mc + 1}, mm maps it {have} times",
            )
        occupied += mc + 1
    if f.mm_id[0] != 0 and f.mm_id[0] == f.mm_id[1]:
        raise InvariantViolation(
            "mm_id.duplicate", f"folio {fid} both slots hold mm id {f.mm_id[0]}"
        )
    if occupied > total:
        raise InvariantViolation(
            "mm_id.sum", f"folio {fid} slot counts sum {occupied} > {total} mappings"
        )
    if total == 0:
        if f.mm_id != [0, 0] or f.shared:
            raise InvariantViolation(
                "mm_id.unmapped",
                f"unmapped folio {fid} slots {f.mm_id} {f.mm_id_mapcount} shared {f.shared}",
            )
        return
    nmms = sum(1 for c in per_mm.values() if c > 0)
    if nmms >= 2 and not f.shared:
        raise InvariantViolation(
            "mm_id.shared_missing", f"folio {fid} mapped by {nmms} mms, SHARED clear"
        )
    if not f.shared and total - 1 not in f.mm_id_mapcount:
        raise InvariantViolation(
            "mm_id.unshared_count",
            f"folio {fid} SHARED clear but no slot holds all {total} mappings "
            f"({f.mm_id} {f.mm_id_mapcount})",
        )


def _check_large_exclusive(f: Folio, acc: FolioAcc | None, leaves: int) -> None:
    """I8: no exclusive page may be reachable from two mms or two entire mappings."""
    ae = f.anon_exclusive
    if acc is None or True not in ae:
        return
    fid = f.id
    if leaves >= 2:
        raise InvariantViolation(
            "anon_exclusive.entire_shared",
            f"folio {fid} has {leaves} entire mappings and an exclusive page",
        )
    owner = acc.owner
    if owner is None:
        return
    vals = set(owner)
    if acc.leaf_mms:
        bad = vals - {-1, *acc.leaf_mms}
    else:
        bad = vals & {-2}
    if not bad:
        return
    for p, (o, x) in enumerate(zip(owner, ae, strict=True)):
        if x and o in bad:
            raise InvariantViolation(
                "anon_exclusive.shared_mms",
                f"folio {fid} page {p} is exclusive but mapped by several mms",
            )


def check_folios(w: Walk, pins: dict[int, int]) -> None:
    st = w.st
    g = st.geom
    queued = set(st.deferred)
    small_cnt = w.small_cnt
    small_owner = w.small_owner
    nr_anon = {g.pmd_order: 0, g.pud_order: 0}
    partial = {g.pmd_order: 0, g.pud_order: 0}
    anon_mapped = 0
    thps = 0
    pud_thps = 0
    for fid, f in st.folios.items():
        if f.order == 0:
            mapped = small_cnt.get(fid, 0)
            if f.freed:
                _check_freed(f, mapped > 0)
                continue
            # fast path for the common order-0 folio: mapped, unpinned, not in swap cache
            if (
                mapped <= 0
                or f.refcount != mapped
                or f.mapcount[0] != mapped - 1
                or fid in pins
                or (f.entire_mapcount, f.large_mapcount, f.nr_pages_mapped, f.pincount, f.shared)
                != _SMALL_AT_REST
                or f.mm_id != [0, 0]
                or f.mm_id_mapcount != [-1, -1]
                or (f.anon_exclusive[0] and small_owner.get(fid, -1) == -2)
            ):
                _check_small(f, mapped, small_owner.get(fid, -1), pins.get(fid, 0))
            if mapped:
                anon_mapped += 1
        else:
            acc = w.acc.get(fid)
            if f.freed:
                _check_freed(f, acc is not None)
                continue
            anon_mapped += _check_large(st, f, acc, pins.get(fid, 0))
            nr_anon[f.order] += 1
            if f.partially_mapped:
                partial[f.order] += 1
            if acc is not None and acc.leaves:
                if f.order == g.pmd_order:
                    thps += g.pmd_nr
                else:
                    pud_thps += g.pud_nr
        if f.partially_mapped and not f.deferred:
            raise InvariantViolation(
                "deferred.partially_mapped_not_queued",
                f"folio {fid} partially mapped but not on the deferred list",
            )
        if f.deferred and fid not in queued:
            raise InvariantViolation(
                "deferred.flag_mismatch", f"folio {fid} flagged deferred but not queued"
            )
    stats = st.stats
    for row, order in (("pmd", g.pmd_order), ("pud", g.pud_order)):
        _stat(stats, ("mthp", row, "nr_anon"), nr_anon[order], "stats.nr_anon")
        _stat(
            stats,
            ("mthp", row, "nr_anon_partially_mapped"),
            partial[order],
            "stats.nr_anon_partially_mapped",
        )
    _stat(stats, ("node", "nr_anon_mapped"), anon_mapped, "stats.nr_anon_mapped")
    _stat(stats, ("node", "nr_anon_thps"), thps, "stats.nr_anon_thps")
    _stat(stats, ("node", "nr_anon_pud_thps"), pud_thps, "stats.nr_anon_pud_thps")


def _stat(stats: object, path: tuple[str, ...], expected: int, name: str) -> None:
    v = stats
    for k in path:
        if not isinstance(v, dict) or k not in v:
            raise InvariantViolation("stats.missing", f"stats has no {'.'.join(path)}")
        v = v[k]
    if v != expected:
        raise InvariantViolation(name, f"{'.'.join(path)} is {v!r}, folios say {expected}")
