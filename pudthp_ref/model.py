"""The reference model's front door: ``RefModel.apply(op)`` runs one FORMAT.md op as one
atomic syscall-level step; ``snapshot()`` gives the canonical state of FORMAT.md section 3,
and ``RefModel.from_snapshot()`` a model in such a state."""

from __future__ import annotations

from typing import Any

from pudthp_ref import spec
from pudthp_ref.gup import fixup_user_fault, sys_pin, sys_unpin
from pudthp_ref.huge_split import deferred_split_scan, sys_split_folio
from pudthp_ref.invariants import check_invariants
from pudthp_ref.madvise import sys_madvise
from pudthp_ref.memory import FaultOOM, copy_page_range
from pudthp_ref.migrate import sys_migrate
from pudthp_ref.mm_types import MmState, MmStruct, Vma
from pudthp_ref.mmap import exit_mmap, sys_mmap, sys_munmap
from pudthp_ref.mprotect import sys_mprotect
from pudthp_ref.pgtable import pt_alloc
from pudthp_ref.snapshot import load_snapshot, take_snapshot, take_summary
from pudthp_ref.spec import ENOMEM, ESRCH, LEVEL_PUD, SIGSEGV, Config, ModelBug, Op, Result

__all__ = ["RefModel"]


class RefModel:
    """The pure-Python reference implementation of MODEL.md."""

    name = "ref"

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.st = MmState(cfg=cfg, geom=cfg.geom)
        mm_alloc(self.st)

    @classmethod
    def from_snapshot(cls, snapshot: dict[str, Any], cfg: Config | None = None) -> RefModel:
        """A model in the state ``snapshot`` describes (the inverse of ``snapshot()``);
        ``cfg`` defaults to the default config at the snapshot's geometry, and must have
        that geometry.  Raises ValueError for a snapshot of another geometry."""
        geometry = snapshot.get("geometry")
        if cfg is None:
            cfg = Config.from_json({"geometry": geometry})
        elif cfg.geometry != geometry:
            raise ValueError(f"config geometry {cfg.geometry} but snapshot geometry {geometry!r}")
        model = cls.__new__(cls)
        model.cfg = cfg
        model.st = load_snapshot(snapshot, cfg)
        return model

    def apply(self, op: Op) -> Result:
        return apply_op(self.st, op)

    def snapshot(self) -> dict[str, Any]:
        return take_snapshot(self.st)

    def check_invariants(self) -> None:
        """MODEL.md section 6, over the whole state."""
        check_invariants(self.st)

    def summary(self) -> dict[str, Any]:
        return take_summary(self.st)


def mm_alloc(st: MmState) -> MmStruct:
    """mm_alloc(): the next mm id, with its PUD table allocated at once (MODEL.md 2)."""
    mm = MmStruct(id=len(st.mms), pud_table=0)
    st.mms.append(mm)
    mm.pud_table = pt_alloc(st, mm, LEVEL_PUD).id
    return mm


def live_mm(st: MmState, mm_id: int) -> MmStruct | None:
    if 0 <= mm_id < len(st.mms) and st.mms[mm_id].alive:
        return st.mms[mm_id]
    return None


def apply_op(st: MmState, op: Op) -> Result:
    """One op; ops naming a dead or unknown mm return ESRCH."""
    if isinstance(op, spec.ShrinkDeferred):
        return deferred_split_scan(st)
    if isinstance(op, spec.FailAlloc):
        st.fail_alloc[op.order] = op.count
        return 0
    if isinstance(op, spec.Unpin):
        return sys_unpin(st, op.pin)
    mm = live_mm(st, op.mm)
    if mm is None:
        return ESRCH
    if isinstance(op, spec.Mmap):
        return sys_mmap(st, mm, op.start, op.npages, op.prot)
    if isinstance(op, spec.Munmap):
        return sys_munmap(st, mm, op.start, op.npages)
    if isinstance(op, spec.Mprotect):
        return sys_mprotect(st, mm, op.start, op.npages, op.prot)
    if isinstance(op, spec.Madvise):
        return sys_madvise(st, mm, op.start, op.npages, op.advice)
    if isinstance(op, spec.Read):
        return access(st, mm, op.addr, None)
    if isinstance(op, spec.Write):
        return access(st, mm, op.addr, op.value)
    if isinstance(op, spec.Fork):
        return sys_fork(st, mm)
    if isinstance(op, spec.Exit):
        exit_mmap(st, mm)
        return 0
    if isinstance(op, spec.Pin):
        return sys_pin(st, mm, op.addr)
    if isinstance(op, spec.SplitFolio):
        return sys_split_folio(st, mm, op.addr)
    if isinstance(op, spec.Migrate):
        return sys_migrate(st, mm, op.start, op.npages, op.node)
    raise ModelBug("apply.unknown_op", f"no handler for {op!r}")


def access(st: MmState, mm: MmStruct, vpn: int, value: int | None) -> Result:
    """A user read (value None) or write of one page."""
    if vpn >= st.geom.space:
        return SIGSEGV
    where = fixup_user_fault(st, mm, vpn, value is not None)
    if where is None:
        return SIGSEGV
    kind, fid, page = where
    if value is None:
        return 0 if kind == "zero" else st.folios[fid].data[page]
    st.folios[fid].data[page] = value
    return 0


def sys_fork(st: MmState, parent: MmStruct) -> Result:
    """dup_mmap(): a child mm with copies of every VMA and copy_page_range() of each."""
    child = mm_alloc(st)
    for v in parent.vmas:
        anon_vma = None
        if v.anon_vma is not None:  # anon_vma_fork(): the child gets its own anon_vma
            anon_vma = st.next_anon_vma
            st.next_anon_vma += 1
        forked = anon_vma is not None
        child.vmas.append(Vma(v.start, v.end, v.prot, v.hugepage, v.nohugepage, anon_vma,
                              forked))
    try:
        for v in parent.vmas:
            copy_page_range(st, child, parent, v)
    except FaultOOM:
        exit_mmap(st, child)  # the half-built child is torn down; its id stays used
        return ENOMEM
    return child.id
