"""Fast statistics: mm/vmstat.c events, the mTHP per-order counters and node stats, kept in
the same plain dicts as the reference (``spec.empty_stats``)."""

from __future__ import annotations

from pudthp_fast.state import FastState


def count_vm_event(st: FastState, item: str, delta: int = 1) -> None:
    """count_vm_event() / count_vm_events()."""
    st.stats["vmstat"][item] += delta


def mthp_row(st: FastState, order: int) -> str | None:
    if order == st.geom.pmd_order:
        return "pmd"
    if order == st.geom.pud_order:
        return "pud"
    return None


def count_mthp_stat(st: FastState, order: int, item: str, delta: int = 1) -> None:
    """count_mthp_stat() / mod_mthp_stat(): orders without a row are ignored."""
    row = mthp_row(st, order)
    if row is not None:
        st.stats["mthp"][row][item] += delta


def mod_node_page_state(st: FastState, item: str, delta: int) -> None:
    """__mod_node_page_state() for NR_ANON_MAPPED, NR_ANON_THPS and NR_ANON_PUD_THPS."""
    if delta:
        st.stats["node"][item] += delta
