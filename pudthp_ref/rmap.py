"""Reverse-map accounting: mm/rmap.c and include/linux/rmap.h.

The raw, biased counters of MODEL.md section 2 move exactly as ``__folio_add_rmap`` and
``__folio_remove_rmap`` move them (CONFIG_PAGE_MAPCOUNT=y), including the two mm-id slots
with their sticky SHARED bit.  The PUD level takes the PMD path one level up; where mainline
leaves ``nr_pmdmapped`` at 0 for a PUD, the model counts NR_ANON_PUD_THPS instead and flags
a partial mapping by the same rule as the PMD level.
"""

from __future__ import annotations

from pudthp_ref.folio import deferred_split_folio
from pudthp_ref.mm_types import Folio, MmState, MmStruct
from pudthp_ref.spec import (
    ENTIRELY_MAPPED,
    FOLIO_PAGES_MAPPED,
    GUP_PIN_COUNTING_BIAS,
    LEVEL_PMD,
    LEVEL_PTE,
    ModelBug,
)
from pudthp_ref.vmstat import count_mthp_stat, mod_node_page_state

# --------------------------------------------------------------------------------------
# mm-id slots (include/linux/rmap.h)
# --------------------------------------------------------------------------------------


def folio_set_large_mapcount(folio: Folio, mapcount: int, mm: MmStruct) -> None:
    """folio_set_large_mapcount(): a fresh folio, every mapping in this mm's slot 0."""
    if folio.mm_id != [0, 0]:
        raise ModelBug("mm_id.set_busy", f"folio {folio.id} slots not empty")
    folio.large_mapcount = mapcount - 1
    folio.mm_id[0] = mm.mm_id
    folio.mm_id_mapcount[0] = mapcount - 1


def folio_add_large_mapcount(folio: Folio, diff: int, mm: MmStruct) -> None:
    """folio_add_return_large_mapcount()."""
    new_val = folio.large_mapcount + diff
    folio.large_mapcount = new_val
    mid = mm.mm_id
    if folio.mm_id[0] == mid:
        folio.mm_id_mapcount[0] += diff
    elif folio.mm_id[1] == mid:
        folio.mm_id_mapcount[1] += diff
    elif folio.mm_id[0] == 0:
        folio.mm_id[0] = mid
        folio.mm_id_mapcount[0] = diff - 1
        if new_val != diff - 1:  # we might have other mappings already
            folio.shared = True
    elif folio.mm_id[1] == 0:
        folio.mm_id[1] = mid
        folio.mm_id_mapcount[1] = diff - 1
        folio.shared = True  # slot 0 certainly has mappings as well
    # else: both slots taken by other mms; this mm goes untracked, SHARED already set


def folio_sub_large_mapcount(folio: Folio, diff: int, mm: MmStruct) -> None:
    """folio_sub_return_large_mapcount(): SHARED is re-evaluated only when a slot frees."""
    new_val = folio.large_mapcount - diff
    folio.large_mapcount = new_val
    mid = mm.mm_id
    for i in (0, 1):
        if folio.mm_id[i] == mid:
            folio.mm_id_mapcount[i] -= diff
            if folio.mm_id_mapcount[i] >= 0:
                return
            folio.mm_id_mapcount[i] = -1
            folio.mm_id[i] = 0
            break
    if new_val in (folio.mm_id_mapcount[0], folio.mm_id_mapcount[1]):
        folio.shared = False


# --------------------------------------------------------------------------------------
# Statistics touched by rmap
# --------------------------------------------------------------------------------------


def folio_mod_stat(st: MmState, folio: Folio, nr: int, nr_pmdmapped: int,
                   nr_pudmapped: int) -> None:
    """__folio_mod_stat() for anon folios, plus the model's NR_ANON_PUD_THPS."""
    if nr:
        mod_node_page_state(st, "nr_anon_mapped", nr)
    if nr_pmdmapped:
        mod_node_page_state(st, "nr_anon_thps", nr_pmdmapped)
    if nr_pudmapped:
        mod_node_page_state(st, "nr_anon_pud_thps", nr_pudmapped)


# --------------------------------------------------------------------------------------
# Adding mappings
# --------------------------------------------------------------------------------------


def folio_add_new_anon_rmap(st: MmState, folio: Folio, mm: MmStruct, exclusive: bool = True
                            ) -> None:
    """folio_add_new_anon_rmap(): a brand-new folio, mapped whole (small or PMD-mappable)."""
    nr_pmdmapped = nr_pudmapped = 0
    if folio.order == 0:
        folio.mapcount[0] = 0
        if exclusive:
            folio.anon_exclusive[0] = True
        nr = 1
    else:
        # PMD-mappable: one entire mapping (a PMD or PUD leaf)
        folio.entire_mapcount = 0
        folio_set_large_mapcount(folio, 1, mm)
        folio.nr_pages_mapped = ENTIRELY_MAPPED
        if exclusive:
            folio.anon_exclusive[0] = True
        nr = folio.nr
        if folio.order == st.geom.pud_order:
            nr_pudmapped = nr
        else:
            nr_pmdmapped = nr
        count_mthp_stat(st, folio.order, "nr_anon", 1)
    folio_mod_stat(st, folio, nr, nr_pmdmapped, nr_pudmapped)


def folio_add_rmap(st: MmState, folio: Folio, first_page: int, nr_pages: int, mm: MmStruct,
                   level: str) -> None:
    """__folio_add_rmap() and __folio_mod_stat()."""
    nr = nr_pmdmapped = nr_pudmapped = 0
    if level == LEVEL_PTE:
        if folio.order == 0:
            folio.mapcount[0] += 1
            nr = 1 if folio.mapcount[0] == 0 else 0
        else:
            first = 0
            mc = folio.mapcount
            for i in range(first_page, first_page + nr_pages):
                mc[i] += 1
                if mc[i] == 0:
                    first += 1
            if first:
                folio.nr_pages_mapped += first
                nr = first if folio.nr_pages_mapped < ENTIRELY_MAPPED else 0
            folio_add_large_mapcount(folio, nr_pages, mm)
    else:
        folio.entire_mapcount += 1
        if folio.entire_mapcount == 0:
            folio.nr_pages_mapped += ENTIRELY_MAPPED
            npm = folio.nr_pages_mapped
            if npm < ENTIRELY_MAPPED + ENTIRELY_MAPPED:
                if level == LEVEL_PMD:
                    nr_pmdmapped = folio.nr
                else:
                    nr_pudmapped = folio.nr
                nr = folio.nr - (npm & FOLIO_PAGES_MAPPED)
        folio_add_large_mapcount(folio, 1, mm)
    folio_mod_stat(st, folio, nr, nr_pmdmapped, nr_pudmapped)


def folio_add_anon_rmap(st: MmState, folio: Folio, first_page: int, nr_pages: int,
                        mm: MmStruct, level: str, exclusive: bool) -> None:
    """__folio_add_anon_rmap(): RMAP_EXCLUSIVE marks every page (PTE) or the head (PMD/PUD)."""
    folio_add_rmap(st, folio, first_page, nr_pages, mm, level)
    if exclusive:
        if level == LEVEL_PTE:
            for i in range(first_page, first_page + nr_pages):
                folio.anon_exclusive[i] = True
        else:
            folio.anon_exclusive[0] = True


# --------------------------------------------------------------------------------------
# Removing mappings
# --------------------------------------------------------------------------------------


def folio_remove_rmap(st: MmState, folio: Folio, first_page: int, nr_pages: int,
                      mm: MmStruct, level: str) -> None:
    """__folio_remove_rmap(): counters, stats, and deferred queueing of a partial mapping."""
    nr = nr_pmdmapped = nr_pudmapped = 0
    partially_mapped = False
    if level == LEVEL_PTE:
        if folio.order == 0:
            folio.mapcount[0] -= 1
            if folio.mapcount[0] < -1:
                raise ModelBug("rmap.mapcount_underflow", f"folio {folio.id} page 0")
            nr = 1 if folio.mapcount[0] == -1 else 0
        else:
            folio_sub_large_mapcount(folio, nr_pages, mm)
            last = 0
            mc = folio.mapcount
            for i in range(first_page, first_page + nr_pages):
                mc[i] -= 1
                if mc[i] == -1:
                    last += 1
                elif mc[i] < -1:
                    raise ModelBug("rmap.mapcount_underflow", f"folio {folio.id} page {i}")
            if last:
                folio.nr_pages_mapped -= last
                if folio.nr_pages_mapped < ENTIRELY_MAPPED:
                    nr = last
            partially_mapped = bool(nr) and folio.nr_pages_mapped != 0
    else:
        folio_sub_large_mapcount(folio, 1, mm)
        folio.entire_mapcount -= 1
        if folio.entire_mapcount < -1:
            raise ModelBug("rmap.entire_underflow", f"folio {folio.id}")
        if folio.entire_mapcount == -1:
            folio.nr_pages_mapped -= ENTIRELY_MAPPED
            npm = folio.nr_pages_mapped
            if npm < ENTIRELY_MAPPED:
                if level == LEVEL_PMD:
                    nr_pmdmapped = folio.nr
                else:
                    nr_pudmapped = folio.nr
                nr = max(folio.nr - (npm & FOLIO_PAGES_MAPPED), 0)
        # Mainline: nr && nr < nr_pmdmapped, where nr_pmdmapped is 0 for a PUD; the model
        # applies the PMD rule at the PUD level too (MODEL.md 5.4: "a large folio left
        # partly mapped is flagged").
        partially_mapped = bool(nr) and nr < folio.nr
    if partially_mapped and not folio.partially_mapped:
        deferred_split_folio(st, folio, True)
    folio_mod_stat(st, folio, -nr, -nr_pmdmapped, -nr_pudmapped)


# --------------------------------------------------------------------------------------
# fork: include/linux/rmap.h __folio_try_dup_anon_rmap()
# --------------------------------------------------------------------------------------


def folio_needs_cow_for_dma(src_mm: MmStruct, folio: Folio) -> bool:
    """folio_needs_cow_for_dma(): MMF_HAS_PINNED and folio_maybe_dma_pinned()."""
    return src_mm.has_pinned and folio_maybe_dma_pinned(folio)


def folio_maybe_dma_pinned(folio: Folio) -> bool:
    """folio_maybe_dma_pinned(): _pincount for large folios, the 1024 bias for small ones."""
    if folio.order > 0:
        return folio.pincount > 0
    return folio.refcount >= GUP_PIN_COUNTING_BIAS


def folio_try_dup_anon_rmap(folio: Folio, first_page: int, nr_pages: int, dst_mm: MmStruct,
                            src_mm: MmStruct, level: str) -> bool:
    """__folio_try_dup_anon_rmap(): False (-EBUSY) for an exclusive page that may be pinned.

    The caller holds the extra reference already.  No stats change: the folio is mapped.
    """
    maybe_pinned = folio_needs_cow_for_dma(src_mm, folio)
    if level == LEVEL_PTE:
        pages = range(first_page, first_page + nr_pages)
        if maybe_pinned and any(folio.anon_exclusive[i] for i in pages):
            return False
        for i in pages:
            folio.anon_exclusive[i] = False
        if folio.order == 0:
            folio.mapcount[0] += 1
        else:
            for i in pages:
                folio.mapcount[i] += 1
            folio_add_large_mapcount(folio, nr_pages, dst_mm)
        return True
    if folio.anon_exclusive[0]:
        if maybe_pinned:
            return False
        folio.anon_exclusive[0] = False
    folio.entire_mapcount += 1
    folio_add_large_mapcount(folio, 1, dst_mm)
    return True
