"""Fast mm/gup.c: fixup_user_fault(), and FOLL_PIN (try_grab_folio() on pin,
gup_put_folio() on unpin)."""

from __future__ import annotations

from pudthp_fast.folio import folio_put
from pudthp_fast.memory import follow_page, handle_mm_fault
from pudthp_fast.mmap import find_vma
from pudthp_fast.state import LEAF, PTE, ZERO, D, FastMm, FastState, W, Y
from pudthp_ref.spec import EFAULT, EINVAL, GUP_PIN_COUNTING_BIAS, ModelBug, Result


def fixup_user_fault(st: FastState, mm: FastMm, vpn: int, write: bool
                     ) -> tuple[int, int] | None:
    """fixup_user_fault(): fault ``vpn`` in as the MMU retries an access, then touch the
    entry (accessed, and dirty on a write).  Returns (folio, page), folio 0 for the zero
    page; None for SIGSEGV."""
    vma = find_vma(mm, vpn)
    if vma is None or vma.prot == "none" or (write and vma.prot != "rw"):
        return None
    for _ in range(4):
        loc = follow_page(st, mm, vpn)
        if loc is not None:
            t, i, page = loc
            r = st.row(t)
            k = st.e_kind[r, i]
            if k == ZERO:
                if not write:
                    return (0, 0)
            elif (k in (LEAF, PTE)) and (not write or st.e_bits[r, i] & W):
                st.e_bits[r, i] |= (D | Y) if write else Y
                return (int(st.e_id[r, i]), page)
        handle_mm_fault(st, mm, vma, vpn, write)
    raise ModelBug("fault.no_progress", f"mm {mm.id} vpn {vpn}: fault did not map the page")


def sys_pin(st: FastState, mm: FastMm, vpn: int) -> Result:
    """pin_user_pages(FOLL_WRITE | FOLL_LONGTERM) of one page: fault in for write, then pin
    (a large folio one reference and one _pincount, an order-0 one 1024 references)."""
    if vpn >= st.geom.space:
        return EFAULT
    where = fixup_user_fault(st, mm, vpn, True)
    if where is None or where[0] == 0:
        return EFAULT
    fid, page = where
    mm.has_pinned = True
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
    """unpin_user_page(): gup_put_folio(FOLL_PIN)."""
    rec = st.pins.pop(pin, None)
    if rec is None:
        return EINVAL
    fid = rec[0]
    if st.f_order[fid] > 0:
        st.f_pin[fid] -= 1
        folio_put(st, fid, 1)
    else:
        folio_put(st, fid, GUP_PIN_COUNTING_BIAS)
    return 0
