"""FOLL_PIN: mm/gup.c (try_grab_folio() on pin, gup_put_folio() on unpin)."""

from __future__ import annotations

from pudthp_ref.folio import folio_put
from pudthp_ref.mm_types import MmState, MmStruct, PinRecord
from pudthp_ref.spec import EFAULT, EINVAL, GUP_PIN_COUNTING_BIAS, Result


def sys_pin(st: MmState, mm: MmStruct, vpn: int) -> Result:
    """pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) of one page: fault in for write, then pin.

    A large folio gets one reference and one _pincount; an order-0 folio 1024 references
    (GUP_PIN_COUNTING_BIAS).  Sets MMF_HAS_PINNED.
    """
    from pudthp_ref.model import fault_in

    if vpn >= st.geom.space:
        return EFAULT
    where = fault_in(st, mm, vpn, True)
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
