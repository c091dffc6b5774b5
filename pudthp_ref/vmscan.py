"""Swap and reclaim: mm/swapfile.c, mm/swap_state.c, mm/memory.c do_swap_page() and the
MADV_PAGEOUT path of mm/madvise.c + mm/vmscan.c shrink_folio_list()."""

from __future__ import annotations

from pudthp_ref.mm_types import MmState, MmStruct, PtDesc, SwapSlot, Vma
from pudthp_ref.spec import ModelBug


def swap_slot(st: MmState, slot: int) -> SwapSlot:
    s = st.swap.get(slot)
    if s is None:
        raise ModelBug("swap.bad_slot", f"swap entry names free slot {slot}")
    return s


def swap_duplicate(st: MmState, slot: int) -> None:
    """swap_duplicate(): fork shares the swap entry."""
    swap_slot(st, slot).count += 1


def free_swap_and_cache(st: MmState, slot: int) -> None:
    """free_swap_and_cache(): drop one swap count, free the slot at zero."""
    s = swap_slot(st, slot)
    s.count -= 1
    if s.count == 0:
        del st.swap[slot]


def do_swap_page(st: MmState, mm: MmStruct, vma: Vma, pte_table: PtDesc, ti: int) -> None:
    raise ModelBug("swap.unimplemented", "swap-in is not modelled yet")


def madvise_pageout(st: MmState, mm: MmStruct, start: int, end: int) -> None:
    raise ModelBug("pageout.unimplemented", "pageout is not modelled yet")
