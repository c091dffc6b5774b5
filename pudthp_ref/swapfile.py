"""Swap slots: mm/swapfile.c (folio_alloc_swap, swap_duplicate, swap_free)."""

from __future__ import annotations

from pudthp_ref.mm_types import Folio, MmState, SwapSlot
from pudthp_ref.spec import ModelBug


def swap_slot(st: MmState, slot: int) -> SwapSlot:
    s = st.swap.get(slot)
    if s is None:
        raise ModelBug("swap.bad_slot", f"swap entry names free slot {slot}")
    return s


def swap_duplicate(st: MmState, slot: int) -> None:
    """swap_duplicate(): one more swap PTE refers to the slot (fork, try_to_unmap)."""
    swap_slot(st, slot).count += 1


def free_swap_and_cache(st: MmState, slot: int) -> None:
    """free_swap_and_cache() / swap_free(): drop one count, free the slot at zero."""
    s = swap_slot(st, slot)
    s.count -= 1
    if s.count == 0:
        del st.swap[slot]


def folio_alloc_swap(st: MmState, folio: Folio) -> int | None:
    """folio_alloc_swap(): ``nr`` contiguous slots holding the folio's contents, or None.

    A PUD-order folio never gets them: swap clusters stop at the PMD order.
    """
    if folio.order > st.geom.pmd_order:
        return None
    if len(st.swap) + folio.nr > st.cfg.swap_capacity:
        return None
    base = st.next_swap_slot
    st.next_swap_slot += folio.nr
    for i in range(folio.nr):
        st.swap[base + i] = SwapSlot(base + i, 0, folio.data[i])
    return base
