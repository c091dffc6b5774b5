"""mm/gup.c: fixup_user_fault(), and FOLL_PIN (try_grab_folio() on pin, gup_put_folio() on
unpin)."""

from __future__ import annotations

from pudthp_ref.folio import folio_put
from pudthp_ref.memory import follow_page, handle_mm_fault
from pudthp_ref.mm_types import MmState, MmStruct, PinRecord, Vma
from pudthp_ref.mmap import find_vma
from pudthp_ref.pgtable import entry_write, is_leaf, is_present_pte
from pudthp_ref.spec import EFAULT, EINVAL, GUP_PIN_COUNTING_BIAS, ModelBug, Result


def access_ok(vma: Vma | None, write: bool) -> bool:
    if vma is None or vma.prot == "none":
        return False
    return not (write and vma.prot != "rw")


def fixup_user_fault(st: MmState, mm: MmStruct, vpn: int, write: bool
                     ) -> tuple[str, int, int] | None:
    """fixup_user_fault(): fault ``vpn`` in as the MMU retries an access, then touch the
    entry (the hardware sets accessed, and dirty on a write).

    Returns (kind, folio id, page index), kind "page" or "zero"; None for SIGSEGV.
    """
    vma = find_vma(mm, vpn)
    if not access_ok(vma, write):
        return None
    assert vma is not None
    for _ in range(4):
        loc = follow_page(st, mm, vpn)
        if loc is not None:
            table, idx, e, page = loc
            if e[0] == "zero":
                if not write:
                    return ("zero", 0, 0)
            elif (not write or entry_write(e)) and (is_leaf(e) or is_present_pte(e)):
                table.entries[idx] = (*e[:-2], e[-2] or write, True)
                return ("page", e[1], page)
        handle_mm_fault(st, mm, vma, vpn, write)
    raise ModelBug("fault.no_progress", f"mm {mm.id} vpn {vpn}: fault did not map the page")


def sys_pin(st: MmState, mm: MmStruct, vpn: int) -> Result:
    """pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) of one page: fault in for write, then pin.

    A large folio gets one reference and one _pincount; an order-0 folio 1024 references
    (GUP_PIN_COUNTING_BIAS).  Sets MMF_HAS_PINNED.
    """
    if vpn >= st.geom.space:
        return EFAULT
    where = fixup_user_fault(st, mm, vpn, True)
    if where is None or where[0] != "page":
        return EFAULT
    _, fid, page = where
    folio = st.folios[fid]
    mm.has_pinned = True
    if folio.order > 0:
        folio.refcount += 1
        folio.pincount += 1
    else:
        folio.refcount += GUP_PIN_COUNTING_BIAS
    pin = PinRecord(id=st.next_pin_id, folio=fid, page=page)
    st.next_pin_id += 1
    st.pins[pin.id] = pin
    return pin.id


def sys_unpin(st: MmState, pin_id: int) -> Result:
    """unpin_user_page(): gup_put_folio(FOLL_PIN)."""
    pin = st.pins.pop(pin_id, None)
    if pin is None:
        return EINVAL
    folio = st.folios[pin.folio]
    if folio.order > 0:
        folio.pincount -= 1
        folio_put(st, folio, 1)
    else:
        folio_put(st, folio, GUP_PIN_COUNTING_BIAS)
    return 0
