"""The fast model's front door: ``FastModel.apply(op)``, ``snapshot()``,
``check_invariants()`` -- the same contract as ``pudthp_ref.model.RefModel``."""

from __future__ import annotations

from typing import Any

from pudthp_fast.heap import tune_heap
from pudthp_fast.incremental import check_invariants_incremental
from pudthp_fast.invariants import check_invariants
from pudthp_fast.memory import FaultOOM, copy_page_range, follow_page, handle_mm_fault
from pudthp_fast.pgtable import pt_alloc
from pudthp_fast.reclaim import deferred_split_scan, sys_migrate, sys_split_folio
from pudthp_fast.rmap import folio_put
from pudthp_fast.snapshot import take_snapshot
from pudthp_fast.state import LEAF, LV_PUD, PTE, ZERO, D, FastMm, FastState, FastVma, W, Y
from pudthp_fast.vma import exit_mmap, find_vma, sys_madvise, sys_mmap, sys_mprotect, sys_munmap
from pudthp_ref import spec
from pudthp_ref.spec import (
    EFAULT,
    EINVAL,
    ENOMEM,
    ESRCH,
    GUP_PIN_COUNTING_BIAS,
    SIGSEGV,
    Config,
    ModelBug,
    Op,
    Result,
)


class FastModel:
    """The vectorised numpy implementation of MODEL.md."""

    name = "fast"
    incremental_checks = True

    def __init__(self, cfg: Config) -> None:
        tune_heap()
        self.cfg = cfg
        self.st = FastState(cfg)
        mm_alloc(self.st)

    def apply(self, op: Op) -> Result:
        return apply_op(self.st, op)

    def snapshot(self) -> dict[str, Any]:
        return take_snapshot(self.st)

    def check_invariants(self, full: bool = False) -> None:
        """MODEL.md section 6.  Incremental (the cost follows what changed since the last
        check, ``pudthp_fast.incremental``) unless ``full``: a whole pass over the state."""
        if full:
            check_invariants(self.st)
        else:
            check_invariants_incremental(self.st)

    def summary(self) -> dict[str, Any]:
        st = self.st
        return {
            "mms": [
                [mm.id, mm.alive,
                 [[v.start, v.end, v.prot, (["hugepage"] if v.hugepage else [])
                   + (["nohugepage"] if v.nohugepage else [])] for v in mm.vmas],
                 mm.rss_anon, mm.rss_swap, mm.pgtables_bytes, mm.has_pinned]
                for mm in st.mms
            ],
            "deferred": list(st.deferred),
            "pins": sorted([pid, f, p] for pid, (f, p) in st.pins.items()),
            "next": [st.next_pt, st.next_folio, st.next_slot, st.next_pin],
            "swap_used": st.s_used,
            "fail_alloc": dict(st.fail_alloc),
            "stats": st.stats,
        }


def mm_alloc(st: FastState) -> FastMm:
    mm = FastMm(id=len(st.mms), pud_table=0)
    st.mms.append(mm)
    mm.pud_table = pt_alloc(st, mm, LV_PUD)
    return mm


def apply_op(st: FastState, op: Op) -> Result:
    if isinstance(op, spec.ShrinkDeferred):
        return deferred_split_scan(st)
    if isinstance(op, spec.FailAlloc):
        st.fail_alloc[op.order] = op.count
        return 0
    if isinstance(op, spec.Unpin):
        return sys_unpin(st, op.pin)
    if not (0 <= op.mm < len(st.mms) and st.mms[op.mm].alive):
        return ESRCH
    mm = st.mms[op.mm]
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


def fixup_user_fault(st: FastState, mm: FastMm, vpn: int, write: bool
                     ) -> tuple[int, int] | None:
    """Fault ``vpn`` in and touch its entry: (folio, page), folio 0 for the zero page;
    None for SIGSEGV."""
    vma = find_vma(mm, vpn)
    if vma is None or vma.prot == "none" or (write and vma.prot != "rw"):
        return None
    for _ in range(4):
        loc = follow_page(st, mm, vpn)
        if loc is not None:
            t, i, page = loc
            k = st.e_kind[st.row(t), i]
            if k == ZERO:
                if not write:
                    return (0, 0)
            elif (k in (LEAF, PTE)) and (not write or st.e_bits[st.row(t), i] & W):
                r_t = st.wrow(t)
                st.e_bits[r_t, i] |= (D | Y) if write else Y
                return (int(st.e_id[st.row(t), i]), page)
        handle_mm_fault(st, mm, vma, vpn, write)
    raise ModelBug("fault.no_progress", f"mm {mm.id} vpn {vpn}: fault did not map the page")


def access(st: FastState, mm: FastMm, vpn: int, value: int | None) -> Result:
    if vpn >= st.geom.space:
        return SIGSEGV
    where = fixup_user_fault(st, mm, vpn, value is not None)
    if where is None:
        return SIGSEGV
    fid, page = where
    if value is None:
        return 0 if fid == 0 else int(st.p_data[int(st.f_base[fid]) + page])
    st.p_data[int(st.f_base[fid]) + page] = value
    return 0


def sys_fork(st: FastState, parent: FastMm) -> Result:
    child = mm_alloc(st)
    for v in parent.vmas:
        anon_vma = None
        if v.anon_vma is not None:
            anon_vma = st.next_anon_vma
            st.next_anon_vma += 1
        child.vmas.append(FastVma(v.start, v.end, v.prot, v.hugepage, v.nohugepage, anon_vma,
                                  anon_vma is not None))
    try:
        for v in parent.vmas:
            copy_page_range(st, child, parent, v)
    except FaultOOM:
        exit_mmap(st, child)
        return ENOMEM
    return child.id


def sys_pin(st: FastState, mm: FastMm, vpn: int) -> Result:
    if vpn >= st.geom.space:
        return EFAULT
    where = fixup_user_fault(st, mm, vpn, True)
    if where is None or where[0] == 0:
        return EFAULT
    fid, page = where
    mm.has_pinned = True
    st.f_touch[fid] = True
    if st.f_order[fid] > 0:
        st.f_ref[fid] += 1
        st.f_pin[fid] += 1
    else:
        st.f_ref[fid] += GUP_PIN_COUNTING_BIAS
    pin = st.next_pin
    st.next_pin += 1
    st.pins[pin] = (fid, page)
    return pin


def sys_unpin(st: FastState, pin: int) -> Result:
    rec = st.pins.pop(pin, None)
    if rec is None:
        return EINVAL
    fid = rec[0]
    st.f_touch[fid] = True
    if st.f_order[fid] > 0:
        st.f_pin[fid] -= 1
        folio_put(st, fid, 1)
    else:
        folio_put(st, fid, GUP_PIN_COUNTING_BIAS)
    return 0
