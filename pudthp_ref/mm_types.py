"""State of the reference model: include/linux/mm_types.h, struct ptdesc, struct folio.

Everything the model knows lives in one ``MmState`` object; the operations in the other
modules are plain functions over it, as mm/ functions are over kernel structures.

Page-table entries are tuples (cheap at 262144 PTEs per split PUD), built and read only
through the helpers in ``pgtable.py``:

- ``("table", ptid)``                         PUD/PMD entry pointing to a lower table
- ``("leaf", folio, write, dirty, young)``    PUD or PMD huge leaf (bits are bools)
- ``("zero",)``                               huge zero PMD, or a zero-page PTE
- ``("pte", folio, index, write, dirty, young)`` present PTE: page ``index`` of ``folio``
- ``("swap", slot)``                          swap PTE
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pudthp_ref.spec import Config, Geometry, empty_stats

Entry = tuple[Any, ...]
Word = int | str | None  # NULL, a page-table id, LIST_POISON1 or LIST_POISON2

PT_LIVE = "live"
PT_DEPOSITED = "deposited"
PT_FREED = "freed"


@dataclass(slots=True)
class PtDesc:
    """A page-table page (struct ptdesc) with its two aliased raw words.

    ``w8`` is offset 8 of struct page: ``lru.next`` / ``_pt_pad_1`` / an llist_node.
    ``w16`` is offset 16: ``lru.prev`` / ``pmd_huge_pte`` / ``pud_huge_pmd``.
    ``state`` is the model's own bookkeeping; check_invariants() recomputes it from the
    page tables and deposit chains and compares.
    """

    id: int
    level: str  # "pud" | "pmd" | "pte"
    mm: int
    entries: list[Entry | None]
    w8: Word = None
    w16: Word = None
    state: str = PT_LIVE


@dataclass(slots=True)
class Folio:
    """struct folio with the raw, biased kernel counters (CONFIG_PAGE_MAPCOUNT=y)."""

    id: int
    order: int
    node: int
    nr: int
    refcount: int = 1
    pincount: int = 0
    entire_mapcount: int = -1
    large_mapcount: int = -1
    nr_pages_mapped: int = 0
    mm_id: list[int] = field(default_factory=lambda: [0, 0])
    mm_id_mapcount: list[int] = field(default_factory=lambda: [-1, -1])
    shared: bool = False
    mapcount: list[int] = field(default_factory=list)  # per page _mapcount, raw
    anon_exclusive: list[bool] = field(default_factory=list)  # per page PageAnonExclusive
    data: list[int] = field(default_factory=list)  # per page contents
    dirty: bool = False
    swapcache: bool = False
    partially_mapped: bool = False
    deferred: bool = False  # on the deferred split list
    freed: bool = False


@dataclass(slots=True)
class Vma:
    """struct vm_area_struct of a private anonymous mapping, ``[start, end)`` in pages."""

    start: int
    end: int
    prot: str  # "none" | "r" | "rw"
    hugepage: bool = False  # VM_HUGEPAGE
    nohugepage: bool = False  # VM_NOHUGEPAGE
    # Identity of the anon_vma (None until the first fault, anon_vma_prepare); VMAs
    # merge only when their anon_vmas are compatible (is_mergeable_anon_vma).
    anon_vma: int | None = None
    # The anon_vma chain also holds a parent's anon_vma (anon_vma_fork()): such a VMA
    # "had uncowed parents" and neither merges with nor lends its anon_vma to a VMA
    # without one.
    forked: bool = False

    def flags(self) -> list[str]:
        if self.hugepage:
            return ["hugepage", "nohugepage"] if self.nohugepage else ["hugepage"]
        return ["nohugepage"] if self.nohugepage else []


@dataclass(slots=True)
class MmStruct:
    """struct mm_struct: VMAs, the one PUD table, RSS counters, pgtables_bytes."""

    id: int
    pud_table: int
    alive: bool = True
    vmas: list[Vma] = field(default_factory=list)
    rss_anon: int = 0  # MM_ANONPAGES
    rss_swap: int = 0  # MM_SWAPENTS
    pgtables_bytes: int = 0
    has_pinned: bool = False  # MMF_HAS_PINNED

    @property
    def mm_id(self) -> int:
        """The folio mm-id slot value of this mm (0 is MM_ID_DUMMY, so ids start at 1)."""
        return self.id + 1


@dataclass(slots=True)
class SwapSlot:
    slot: int
    count: int
    data: int
    zeromap: bool = False  # written as a zero-filled folio: no IO (swap_zeromap_folio_set)


@dataclass(slots=True)
class PinRecord:
    id: int
    folio: int
    page: int


@dataclass(slots=True)
class MmState:
    """The whole model: every mm, page table, folio, swap slot, pin and counter."""

    cfg: Config
    geom: Geometry
    mms: list[MmStruct] = field(default_factory=list)
    tables: dict[int, PtDesc] = field(default_factory=dict)
    folios: dict[int, Folio] = field(default_factory=dict)
    swap: dict[int, SwapSlot] = field(default_factory=dict)
    pins: dict[int, PinRecord] = field(default_factory=dict)
    deferred: list[int] = field(default_factory=list)  # the deferred split queue, in order
    stats: dict[str, Any] = field(default_factory=empty_stats)
    fail_alloc: dict[str, int] = field(default_factory=lambda: {"pud": 0, "pmd": 0, "base": 0})
    huge_zero_allocated: bool = False
    next_pt_id: int = 1
    next_folio_id: int = 1
    next_swap_slot: int = 1
    next_pin_id: int = 1
    next_anon_vma: int = 1
