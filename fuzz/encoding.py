"""Programs as bytes: the total, versioned decoder that byte-level fuzzers (atheris) use.

Every byte string decodes to a valid program, so a fuzzer's mutations never waste a run on
input the harness rejects; ``encode`` writes a program back to bytes that decode to it, so
programs from the seed corpus, from findings and from the op-level mutator
(``fuzz/target.py``) all become fuzzer inputs.

Format, versions 1 and 2 (every multi-byte number is an unsigned LEB128 varint of at most 10
bytes; a byte past the end of the data reads as 0, so a truncated op still decodes):

- byte 0: the format version.  2 reads as version 2; any other value as version 1, so a
  mutated first byte still decodes and every version-1 input keeps its meaning.
- config, 3 bytes and a varint, each table's first entry being the default so zero bytes
  give ``Config()``:

  - byte 1: bits 0-2 geometry P (8, 4, 16, 32, 64, 128, 256, 512), bits 3-4 thp_enabled,
    bits 5-6 pmd_enabled, bit 7 pud_read_fault (tables ``THP_ENABLED`` ... below, index
    taken modulo the table's length);
  - byte 2: bits 0-1 pud_enabled, bits 2-3 deposit, bits 4-6 flip use_zero_page,
    pud_wp_reuse, shrink_underused from their defaults (true);
  - byte 3: nodes = (b + 1) % 64 + 1 (so 0 is the default, 2);
  - varint s: swap_pages = -1 (the default) for 0, else (s - 1) % (2**40 + 1).
  - version 2 only: a varint m, two bits per mTHP order N of the geometry (bits 2(N-2) and
    up) indexing ``MTHP_SETTING`` (0 is never), higher bits ignored; then three varints
    for max_ptes_none, max_ptes_swap, max_ptes_shared: 0 is the default, v > 0 gives
    (v - 1) % P.

- then ops until the data ends: one byte for the kind (``OP_KINDS[b % 14]``, the order of
  docs/format.md "Ops"), then the op's fields in that table's order, each by its kind
  (spec.FIELD_KINDS):

  - ``addr`` (start, addr): a tag byte t and a varint i: the address is
    ``(i * unit + delta) % space`` with unit = (PUD size, PMD size, 1, 1)[t & 3] and
    delta = (0, -1, +1, 0)[(t >> 2) & 3], so PUD and PMD boundaries and one page either
    side are one small number away, and every address lands in the modelled address space;
  - ``length`` (npages): the same tag and varint giving x; npages = (x - 1) % space + 1,
    from 1 to the whole address space;
  - ``value``: a varint modulo 2**64;
  - ``index`` (mm, node, count): a varint v; v % 4 if v < 128 (one byte: small numbers),
    else (v - 128) % 2**16;
  - ``id`` (pin): 1 + the same;
  - ``prot``, ``advice``, ``alloc_order``: one byte indexing ``spec.PROTS``,
    ``spec.ADVICES``, ``spec.ALLOC_ORDERS`` modulo their length;
  - ``advice`` in version 2 also ``collapse`` (the fifth entry), version 1 the first four;
  - ``order`` (split_folio's new order): version 2 only, one byte modulo PUD_ORDER + 1;
    version 1 has no such byte and means order 0.

Representable programs (``decode(encode(p)) == p``): every address below the geometry's
address space (P**3 pages), every npages from 1 to it, mm, node and count below 2**16, pin
ids from 1 to 2**16, split orders up to PUD_ORDER, swap_pages up to 2**40 (every config is
representable), and no
``meta`` (bytes do not carry it; ``encode`` ignores it).  ``encode`` raises ``EncodeError``
naming the op and field for anything else.  The scenario seeds and the known-bad programs
are representable (tests/test_encoding.py).  ``encode`` writes version 1 whenever the
program needs nothing of version 2, so the bytes of older inputs stay what they were.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from pudthp_ref import spec
from pudthp_ref.spec import Config, Op, Program

VERSION = 2
KNOWN_VERSIONS: tuple[int, ...] = (1, 2)
MTHP_SETTING: tuple[str, ...] = ("never", "always", "madvise", "inherit")

# Frozen with the format: reordering any of these changes what existing inputs mean.
OP_KINDS: tuple[str, ...] = (
    "mmap",
    "munmap",
    "mprotect",
    "madvise",
    "read",
    "write",
    "fork",
    "exit",
    "split_folio",
    "shrink_deferred",
    "migrate",
    "pin",
    "unpin",
    "fail_alloc",
)
GEOMETRY_P: tuple[int, ...] = (8, 4, 16, 32, 64, 128, 256, 512)
THP_ENABLED: tuple[str, ...] = ("always", "madvise", "never")
PMD_ENABLED: tuple[str, ...] = ("inherit", "always", "madvise", "never")
PUD_ENABLED: tuple[str, ...] = ("always", "inherit", "madvise", "never")
DEPOSIT: tuple[str, ...] = ("lru_next", "llist", "list_head")
PUD_READ_FAULT: tuple[str, ...] = ("alloc", "fallback")
CHOICE_FIELDS: dict[str, tuple[str, ...]] = {
    "prot": ("none", "r", "rw"),
    "advice": ("hugepage", "nohugepage", "dontneed", "pageout", "collapse"),
    "alloc_order": ("pud", "pmd", "base"),
}
# version 1 knew four advices: its inputs keep their meaning
CHOICE_FIELDS_V1: dict[str, tuple[str, ...]] = {
    **CHOICE_FIELDS, "advice": CHOICE_FIELDS["advice"][:4]}
NODES_MOD = 64
SWAP_MAX = 1 << 40
VALUE_MOD = 1 << 64
INDEX_SMALL = 4  # a one-byte index is taken modulo this
INDEX_LIMIT = 1 << 16  # a longer one modulo this
VARINT_MAX_BYTES = 10
UNIT_SELECTORS = 4  # pud, pmd, page, page
DELTAS: tuple[int, ...] = (0, -1, 1, 0)


class EncodeError(ValueError):
    """A program with a value the byte format cannot represent; names the op and field."""


class _Reader:
    """Bytes consumed front to back; reading past the end gives zeros."""

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    def more(self) -> bool:
        return self.pos < len(self.data)

    def byte(self) -> int:
        pos = self.pos
        self.pos = pos + 1
        return self.data[pos] if pos < len(self.data) else 0

    def varint(self) -> int:
        value = 0
        for shift in range(0, 7 * VARINT_MAX_BYTES, 7):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                break
        return value


def _varint(value: int) -> bytes:
    assert value >= 0
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# --------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------


def decode(
    data: bytes,
    config: Config | None = None,
    *,
    adjust: Callable[[Config], Config] | None = None,
) -> Program:
    """The program ``data`` encodes; never raises.

    With ``config`` the config bytes are skipped and ``config`` is used; otherwise the config
    comes from the bytes, passed through ``adjust`` if given (a fuzz target pins or filters
    keys there), before the ops are read, since addresses depend on its geometry.
    """
    version = 2 if data[:1] == b"\x02" else 1  # byte 0 (module docstring)
    r = _Reader(data, 1)
    from_bytes = _decode_config(r, version)
    cfg = config if config is not None else adjust(from_bytes) if adjust else from_bytes
    g = cfg.geom
    units = (g.pud_nr, g.pmd_nr, 1, 1)
    space = g.space
    ops: list[Op] = []
    while r.more():
        kind = OP_KINDS[r.byte() % len(OP_KINDS)]
        values: list[int | str] = []
        for name in spec.op_fields(kind):
            fk = spec.field_kind(kind, name)
            if fk == "order":
                values.append(r.byte() % (g.pud_order + 1) if version == 2 else 0)
            elif fk == "addr":
                values.append(_boundary_number(r, units) % space)
            elif fk == "length":
                values.append((_boundary_number(r, units) - 1) % space + 1)
            elif fk == "value":
                values.append(r.varint() % VALUE_MOD)
            elif fk == "index":
                values.append(_small_index(r.varint()))
            elif fk == "id":
                values.append(1 + _small_index(r.varint()))
            else:
                choices = CHOICE_FIELDS_V1[fk] if version == 1 else CHOICE_FIELDS[fk]
                values.append(choices[r.byte() % len(choices)])
        ops.append(spec.OP_TYPES[kind](*values))
    return Program(cfg, tuple(ops))


def _boundary_number(r: _Reader, units: tuple[int, ...]) -> int:
    tag = r.byte()
    unit = units[tag & 3]
    delta = DELTAS[(tag >> 2) & 3]
    return r.varint() * unit + delta


def _small_index(v: int) -> int:
    return v % INDEX_SMALL if v < 0x80 else (v - 0x80) % INDEX_LIMIT


def _decode_config(r: _Reader, version: int) -> Config:
    c0, c1, c2 = r.byte(), r.byte(), r.byte()
    swap = r.varint()
    P = GEOMETRY_P[c0 & 7]
    mthp: tuple[tuple[int, str], ...] = ()
    max_ptes = (-1, -1, -1)
    if version == 2:
        m = r.varint()
        picked = ((o, MTHP_SETTING[(m >> 2 * (o - 2)) & 3]) for o in range(2, P.bit_length() - 1))
        mthp = tuple((o, v) for o, v in picked if v != "never")
        max_ptes = tuple(-1 if v == 0 else (v - 1) % P  # type: ignore[assignment]
                         for v in (r.varint(), r.varint(), r.varint()))
    return Config(
        geometry=GEOMETRY_P[c0 & 7],
        thp_enabled=THP_ENABLED[((c0 >> 3) & 3) % len(THP_ENABLED)],
        pmd_enabled=PMD_ENABLED[(c0 >> 5) & 3],
        pud_read_fault=PUD_READ_FAULT[(c0 >> 7) & 1],
        pud_enabled=PUD_ENABLED[c1 & 3],
        deposit=DEPOSIT[((c1 >> 2) & 3) % len(DEPOSIT)],
        use_zero_page=not (c1 >> 4) & 1,
        pud_wp_reuse=not (c1 >> 5) & 1,
        shrink_underused=not (c1 >> 6) & 1,
        nodes=(c2 + 1) % NODES_MOD + 1,
        swap_pages=-1 if swap == 0 else (swap - 1) % (SWAP_MAX + 1),
        mthp=mthp,
        max_ptes_none=max_ptes[0],
        max_ptes_swap=max_ptes[1],
        max_ptes_shared=max_ptes[2],
    )


def _needs_version_2(program: Program) -> bool:
    cfg = program.config
    return bool(cfg.mthp) or any(getattr(cfg, k) >= 0 for k in spec.MAX_PTES_KEYS) or any(
        (isinstance(op, spec.SplitFolio) and op.order)
        or (isinstance(op, spec.Madvise) and op.advice not in CHOICE_FIELDS_V1["advice"])
        for op in program.ops)


# --------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------


def encode(program: Program) -> bytes:
    """Bytes that ``decode`` turns back into ``program`` (without its meta); raises
    EncodeError for a value the format cannot represent (module docstring)."""
    cfg = program.config
    g = cfg.geom
    units = (g.pud_nr, g.pmd_nr, 1)
    space = g.space
    version = 2 if _needs_version_2(program) else 1
    out = bytearray([version])
    out += _encode_config(cfg, version)
    for i, op in enumerate(program.ops):
        out.append(OP_KINDS.index(op.KIND))
        for f in fields(op):
            value = getattr(op, f.name)
            fk = spec.field_kind(op.KIND, f.name)
            where = f"op {i} ({op.KIND}): field {f.name!r}"
            if fk == "order":
                if version == 1:
                    continue  # order 0, which version 1 means
                if not 0 <= value <= g.pud_order:
                    raise EncodeError(f"{where}: {value} is not from 0 to {g.pud_order}")
                out.append(value)
            elif fk == "addr":
                if not 0 <= value < space:
                    raise EncodeError(f"{where}: {value} is outside the address space [0, {space})")
                out += _encode_boundary_number(value, units)
            elif fk == "length":
                if not 1 <= value <= space:
                    raise EncodeError(f"{where}: {value} is not from 1 to {space}")
                out += _encode_boundary_number(value, units)
            elif fk == "value":
                if not 0 <= value < VALUE_MOD:
                    raise EncodeError(f"{where}: {value} is not from 0 to 2**64-1")
                out += _varint(value)
            elif fk in ("index", "id"):
                v = value - (fk == "id")
                if not 0 <= v < INDEX_LIMIT:
                    raise EncodeError(f"{where}: {value} is too large (limit {INDEX_LIMIT})")
                out += _varint(v if v < INDEX_SMALL else v + 0x80)
            else:
                out.append(CHOICE_FIELDS[fk].index(value))
    return bytes(out)


def _encode_boundary_number(value: int, units: tuple[int, ...]) -> bytes:
    """The shortest-looking tag and index for ``value``: a multiple of a PUD or PMD, or one
    page either side of one, else the page number itself."""
    for sel, unit in enumerate(units):
        for dsel in (0, 1, 2):
            base = value - DELTAS[dsel]
            if base >= 0 and base % unit == 0:
                return bytes([sel | dsel << 2]) + _varint(base // unit)
    raise AssertionError("unit 1 always divides")


def _encode_config(cfg: Config, version: int) -> bytes:
    if not -1 <= cfg.swap_pages <= SWAP_MAX:
        raise EncodeError(f"config.swap_pages: {cfg.swap_pages} is not from -1 to {SWAP_MAX}")
    c0 = (
        GEOMETRY_P.index(cfg.geometry)
        | THP_ENABLED.index(cfg.thp_enabled) << 3
        | PMD_ENABLED.index(cfg.pmd_enabled) << 5
        | PUD_READ_FAULT.index(cfg.pud_read_fault) << 7
    )
    c1 = (
        PUD_ENABLED.index(cfg.pud_enabled)
        | DEPOSIT.index(cfg.deposit) << 2
        | (not cfg.use_zero_page) << 4
        | (not cfg.pud_wp_reuse) << 5
        | (not cfg.shrink_underused) << 6
    )
    c2 = (cfg.nodes - 2) % NODES_MOD
    out = bytes([c0, c1, c2]) + _varint(0 if cfg.swap_pages < 0 else cfg.swap_pages + 1)
    if version == 2:
        m = 0
        for o, setting in cfg.mthp:
            m |= MTHP_SETTING.index(setting) << 2 * (o - 2)
        out += _varint(m)
        for k in spec.MAX_PTES_KEYS:
            v = getattr(cfg, k)
            out += _varint(0 if v < 0 else v + 1)
    return out


def encodable(program: Program) -> bool:
    """Whether ``encode(program)`` succeeds (module docstring: representable programs)."""
    try:
        encode(program)
    except EncodeError:
        return False
    return True
