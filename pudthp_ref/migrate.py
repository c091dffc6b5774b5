"""Migration to a node: mm/mempolicy.c queue_pages_range() and mm/migrate.c migrate_pages()."""

from __future__ import annotations

from pudthp_ref.mm_types import MmState, MmStruct
from pudthp_ref.spec import EINVAL, Result


def sys_migrate(st: MmState, mm: MmStruct, start: int, npages: int, node: int) -> Result:
    return EINVAL
