"""Hand-built model states for the unit tests: a P=4 ``MmState``, its mms and folios.

mms come from the model's own ``mm_alloc`` (ids in order, each with its PUD table);
``new_mm`` checks that a test asks for them in that order.
"""

from __future__ import annotations

from pudthp_ref.folio import folio_alloc
from pudthp_ref.mm_types import Folio, MmState, MmStruct
from pudthp_ref.model import mm_alloc
from pudthp_ref.spec import ENTIRELY_MAPPED, Config

P = 4
PMD_ORDER = 2  # log2(P)
PUD_ORDER = 4  # 2*log2(P)
EM = ENTIRELY_MAPPED


def new_state(**config: object) -> MmState:
    cfg = Config(geometry=P, **config)  # type: ignore[arg-type]
    return MmState(cfg=cfg, geom=cfg.geom)


def new_mm(st: MmState, mid: int) -> MmStruct:
    mm = mm_alloc(st)
    assert mm.id == mid, f"mms are created in id order; asked for {mid}, got {mm.id}"
    return mm


def alloc(st: MmState, order: int) -> Folio:
    f = folio_alloc(st, order)
    assert f is not None
    return f
