"""Fast swap slots: mm/swapfile.c (folio_alloc_swap, swap_free), over the slot rows; a
slot is in use while its count is above zero."""

from __future__ import annotations

from pudthp_fast.state import FastState


def free_swap_and_cache(st: FastState, slot: int) -> None:
    """free_swap_and_cache() / swap_free(): drop one count, free the slot at zero."""
    st.s_count[slot] -= 1
    if st.s_count[slot] == 0:
        st.s_used -= 1
        st.s_zero[slot] = False


def folio_alloc_swap(st: FastState, fid: int) -> int:
    """folio_alloc_swap(): ``nr`` contiguous slots holding the folio's contents, or 0.

    A PUD-order folio never gets them: swap clusters stop at the PMD order.
    """
    if st.f_order[fid] > st.geom.pmd_order:
        return 0
    nr = int(st.f_nr[fid])
    if st.s_used + nr > st.cfg.swap_capacity:
        return 0
    base = st.new_slots(nr)
    b = int(st.f_base[fid])
    st.s_count[base : base + nr] = 0
    st.s_data[base : base + nr] = st.p_data[b : b + nr]
    st.s_used += nr
    return base
