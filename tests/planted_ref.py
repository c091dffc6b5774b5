"""One-line bugs planted in the reference model at PMD level, for the kernel campaign's
quality test (``tests/test_kernel_quality.py``): a kernel campaign compares the live kernel
with the reference alone, so a bug of the reference is a disagreement the campaign must
find.  Each ``plant`` monkeypatches ``pudthp_ref`` (in the test's process only, never the
sources): the one line that differs from the real function is named in its comment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import pudthp_ref.huge_memory as hm
import pudthp_ref.huge_split as hs
import pudthp_ref.memory as memory
import pudthp_ref.rmap as rmap
import pudthp_ref.vmscan as vmscan
from pudthp_ref.folio import folio_unqueue_deferred_split

Plant = Callable[[pytest.MonkeyPatch], None]


def _counting(module: Any, item: str, times: int) -> Plant:
    """``count_vm_event(st, item, n)`` counts ``times * n`` in ``module``."""
    real = module.count_vm_event

    def plant(mp: pytest.MonkeyPatch) -> None:
        def count(st: Any, what: str, delta: int = 1) -> None:
            real(st, what, delta * times if what == item else delta)

        mp.setattr(module, "count_vm_event", count)

    return plant


def cow_large_reuse_refused(mp: pytest.MonkeyPatch) -> None:
    # __wp_can_reuse_large_anon_folio(): "return True" -> "return False" (a large folio
    # mapped only by this mm is copied page by page instead of reused)
    mp.setattr(memory, "__wp_can_reuse_large_anon_folio", lambda folio: False)


def cow_small_reuse_always(mp: pytest.MonkeyPatch) -> None:
    # wp_can_reuse_anon_folio(): "folio.refcount == 1" -> "True" for an order-0 folio (a
    # page a child also maps is written in place).  Its converse, copying a page only this
    # mm maps, is invisible through /proc: the same contents, mapcount 1, a folio label
    # that only says "one folio"
    real = memory.wp_can_reuse_anon_folio
    mp.setattr(memory, "wp_can_reuse_anon_folio",
               lambda st, folio: True if folio.order == 0 else real(st, folio))


def cow_pmd_reuse_always(mp: pytest.MonkeyPatch) -> None:
    # huge_wp_reuse(): "return False" -> "return True" (a PMD THP a child also maps is
    # written in place)
    mp.setattr(hm, "huge_wp_reuse", lambda st, folio: True)


def fork_leaves_parent_pmd_writable(mp: pytest.MonkeyPatch) -> None:
    # copy_huge_pmd(): "src_pmd.entries[mi] = entry_with(e, write=False)" left out
    real = hm.copy_huge_pmd

    def copy(st: Any, dst_mm: Any, src_mm: Any, dst_pmd: Any, src_pmd: Any, mi: int) -> bool:
        e = src_pmd.entries[mi]
        done = real(st, dst_mm, src_mm, dst_pmd, src_pmd, mi)
        if done and e is not None and e[0] == "leaf":
            src_pmd.entries[mi] = e
        return done

    mp.setattr(hm, "copy_huge_pmd", copy)
    mp.setattr(memory, "copy_huge_pmd", copy)


def split_pmd_counted_twice(mp: pytest.MonkeyPatch) -> None:
    # __split_huge_pmd_locked(): count_vm_event(THP_SPLIT_PMD) twice
    _counting(hm, "thp_split_pmd", 2)(mp)


def split_pmd_not_counted(mp: pytest.MonkeyPatch) -> None:
    # __split_huge_pmd_locked(): count_vm_event(THP_SPLIT_PMD) left out
    _counting(hm, "thp_split_pmd", 0)(mp)


def split_keeps_zero_subpages(mp: pytest.MonkeyPatch) -> None:
    # remap_page(): "if f.data[0] == 0: map the zero page" left out
    # (try_to_map_unused_to_zeropage)
    def remap(st: Any, folios: list[Any], migration: list[Any], new_order: int = 0) -> None:
        for m in migration:
            f = folios[m.page >> new_order]
            hs.remove_migration_entry(st, m, f, m.page & (f.nr - 1))

    mp.setattr(hs, "remap_page", remap)


def shrinker_splits_nothing(mp: pytest.MonkeyPatch) -> None:
    # deferred_split_scan(): "if folio.partially_mapped:" -> "if False:" (every folio
    # leaves the queue unsplit)
    def scan(st: Any) -> int:
        for fid in list(st.deferred):
            folio_unqueue_deferred_split(st, st.folios[fid])
        return 0

    mp.setattr(hs, "deferred_split_scan", scan)
    import pudthp_ref.model as model

    mp.setattr(model, "deferred_split_scan", scan)


def partial_unmap_not_queued(mp: pytest.MonkeyPatch) -> None:
    # __folio_remove_rmap(): "deferred_split_folio(st, folio, True)" left out
    mp.setattr(rmap, "deferred_split_folio", lambda st, folio, partially: None)


def pswpout_counted_once(mp: pytest.MonkeyPatch) -> None:
    # shrink_folio(): count_vm_event(PSWPOUT, folio.nr) -> count_vm_event(PSWPOUT)
    real = vmscan.count_vm_event

    def count(st: Any, what: str, delta: int = 1) -> None:
        real(st, what, 1 if what == "pswpout" else delta)

    mp.setattr(vmscan, "count_vm_event", count)


def pageout_ignores_sharing(mp: pytest.MonkeyPatch) -> None:
    # folio_maybe_mapped_shared(): "return ..." -> "return False" (reclaim pages out a
    # folio another process maps)
    mp.setattr(vmscan, "folio_maybe_mapped_shared", lambda folio: False)


def pswpin_counted_twice(mp: pytest.MonkeyPatch) -> None:
    # do_swap_page(): count_vm_event(PSWPIN) twice
    _counting(memory, "pswpin", 2)(mp)


def zap_pmd_keeps_rss(mp: pytest.MonkeyPatch) -> None:
    # zap_huge_pmd(): "mm.rss_anon -= folio.nr" left out
    real = hm.zap_huge_pmd

    def zap(st: Any, mm: Any, pmd_table: Any, mi: int) -> None:
        e = pmd_table.entries[mi]
        real(st, mm, pmd_table, mi)
        if e is not None and e[0] == "leaf":
            mm.rss_anon += st.folios[e[1]].nr if e[1] in st.folios else st.geom.pmd_nr

    mp.setattr(hm, "zap_huge_pmd", zap)
    mp.setattr(memory, "zap_huge_pmd", zap)


# name -> (path of the kernel the bug is in, the plant)
PLANTED: dict[str, tuple[str, Plant]] = {
    "cow_large_reuse_refused": ("COW reuse", cow_large_reuse_refused),
    "cow_small_reuse_always": ("COW reuse", cow_small_reuse_always),
    "cow_pmd_reuse_always": ("COW reuse", cow_pmd_reuse_always),
    "fork_leaves_parent_pmd_writable": ("COW reuse", fork_leaves_parent_pmd_writable),
    "split_pmd_counted_twice": ("counting", split_pmd_counted_twice),
    "split_pmd_not_counted": ("counting", split_pmd_not_counted),
    "split_keeps_zero_subpages": ("split", split_keeps_zero_subpages),
    "shrinker_splits_nothing": ("split", shrinker_splits_nothing),
    "partial_unmap_not_queued": ("split", partial_unmap_not_queued),
    "pswpout_counted_once": ("reclaim", pswpout_counted_once),
    "pageout_ignores_sharing": ("reclaim", pageout_ignores_sharing),
    "pswpin_counted_twice": ("reclaim", pswpin_counted_twice),
    "zap_pmd_keeps_rss": ("counting", zap_pmd_keeps_rss),
}
