"""Shared vocabulary of pudthp: geometry, config, ops, results, snapshot schema.

This is the one module that both ``pudthp_ref`` and ``pudthp_fast`` import.  It holds names
and plain data only, no model logic: the contract of ``MODEL.md`` and ``FORMAT.md`` written
down once so both implementations (and the harness) speak the same words.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Protocol

# --------------------------------------------------------------------------------------
# Formats
# --------------------------------------------------------------------------------------

PROGRAM_FORMAT = "pudthp-program/1"
REPORT_FORMAT = "pudthp-report/1"
SNAPSHOT_FORMAT = "pudthp-snapshot/1"

# --------------------------------------------------------------------------------------
# Geometry (MODEL.md section 1)
# --------------------------------------------------------------------------------------

GEOMETRIES: dict[str, int] = {"tiny": 4, "small": 8, "x86_64": 512}
PAGE_TABLE_BYTES = 4096  # pgtables_bytes counts 4096 per page-table page whatever P is

# _nr_pages_mapped bit for "entirely mapped" (mm/internal.h)
ENTIRELY_MAPPED = 0x800000
FOLIO_PAGES_MAPPED = ENTIRELY_MAPPED - 1
# FOLL_PIN on a small folio adds this many references (mm/gup.c)
GUP_PIN_COUNTING_BIAS = 1024

# Raw values of the aliased ptdesc words that are not page-table ids (include/linux/poison.h)
LIST_POISON1 = "LIST_POISON1"
LIST_POISON2 = "LIST_POISON2"


@dataclass(frozen=True, slots=True)
class Geometry:
    """Entries per page-table page and the derived sizes, all in pages."""

    P: int

    @property
    def pmd_order(self) -> int:
        return self.P.bit_length() - 1

    @property
    def pud_order(self) -> int:
        return 2 * self.pmd_order

    @property
    def pmd_nr(self) -> int:
        """Pages mapped by one PMD entry (HPAGE_PMD_NR)."""
        return self.P

    @property
    def pud_nr(self) -> int:
        """Pages mapped by one PUD entry (HPAGE_PUD_NR)."""
        return self.P * self.P

    @property
    def space(self) -> int:
        """Pages in one mm's address space: one PUD table of P entries."""
        return self.P * self.P * self.P

    def pud_index(self, vpn: int) -> int:
        return vpn // (self.P * self.P)

    def pmd_index(self, vpn: int) -> int:
        return (vpn // self.P) % self.P

    def pte_index(self, vpn: int) -> int:
        return vpn % self.P


def geometry_p(value: str | int) -> int:
    """P for a geometry name or integer; raises ValueError for anything else."""
    if isinstance(value, bool):
        raise ValueError("geometry must be tiny, small, x86_64 or an integer P")
    if isinstance(value, str):
        if value not in GEOMETRIES:
            raise ValueError(f"unknown geometry {value!r} (tiny, small, x86_64 or an integer P)")
        return GEOMETRIES[value]
    if isinstance(value, int):
        if value < 4 or value > 512 or value & (value - 1):
            raise ValueError(f"geometry P={value} must be a power of two between 4 and 512")
        return value
    raise ValueError("geometry must be tiny, small, x86_64 or an integer P")


# --------------------------------------------------------------------------------------
# Config (MODEL.md section 3)
# --------------------------------------------------------------------------------------

CONFIG_CHOICES: dict[str, tuple[Any, ...]] = {
    "thp_enabled": ("always", "madvise", "never"),
    "pmd_enabled": ("always", "inherit", "madvise", "never"),
    "pud_enabled": ("always", "inherit", "madvise", "never"),
    "deposit": ("lru_next", "llist", "list_head"),
    "pud_read_fault": ("alloc", "fallback"),
}
CONFIG_BOOLS = ("use_zero_page", "pud_wp_reuse", "shrink_underused")
MAX_NODES = 64


@dataclass(frozen=True, slots=True)
class Config:
    """A program's config with every key filled in; ``Config.from_json`` validates."""

    geometry: int = 8
    thp_enabled: str = "always"
    pmd_enabled: str = "inherit"
    pud_enabled: str = "always"
    use_zero_page: bool = True
    deposit: str = "lru_next"
    pud_read_fault: str = "alloc"
    pud_wp_reuse: bool = True
    shrink_underused: bool = True
    nodes: int = 2
    swap_pages: int = -1  # -1: the default, 4 PUD folios' worth (resolved by ``geom``)

    KEYS: ClassVar[tuple[str, ...]] = (
        "geometry",
        "thp_enabled",
        "pmd_enabled",
        "pud_enabled",
        "use_zero_page",
        "deposit",
        "pud_read_fault",
        "pud_wp_reuse",
        "shrink_underused",
        "nodes",
        "swap_pages",
    )

    @property
    def geom(self) -> Geometry:
        return Geometry(self.geometry)

    @property
    def swap_capacity(self) -> int:
        if self.swap_pages < 0:
            return 4 * self.geometry * self.geometry
        return self.swap_pages

    @classmethod
    def from_json(cls, raw: Any) -> Config:
        """Validate a program's ``config`` object; raises ConfigError naming the key."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            raise ConfigError("config", "must be an object")
        values: dict[str, Any] = {}
        for key, value in raw.items():
            if key not in cls.KEYS:
                raise ConfigError(key, f"unknown config key (known: {', '.join(cls.KEYS)})")
            if key == "geometry":
                try:
                    values[key] = geometry_p(value)
                except ValueError as e:
                    raise ConfigError(key, str(e)) from None
            elif key in CONFIG_CHOICES:
                if not isinstance(value, str) or value not in CONFIG_CHOICES[key]:
                    raise ConfigError(
                        key, f"{value!r} is not one of {', '.join(CONFIG_CHOICES[key])}"
                    )
                values[key] = value
            elif key in CONFIG_BOOLS:
                if not isinstance(value, bool):
                    raise ConfigError(key, f"{value!r} is not true or false")
                values[key] = value
            elif key == "nodes":
                if not _is_int(value) or not 1 <= value <= MAX_NODES:
                    raise ConfigError(key, f"{value!r} is not an integer from 1 to {MAX_NODES}")
                values[key] = value
            elif key == "swap_pages":
                if not _is_int(value) or value < 0 or value > 1 << 40:
                    raise ConfigError(key, f"{value!r} is not an integer >= 0")
                values[key] = value
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """Every key with its value, as a program's ``config`` would spell it."""
        names = {v: k for k, v in GEOMETRIES.items()}
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "geometry":
                v = names.get(v, v)
            if f.name == "swap_pages":
                v = self.swap_capacity
            out[f.name] = v
        return out


class ConfigError(ValueError):
    """A bad config key or value; ``key`` names it."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"config.{key}: {message}")
        self.key = key


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# --------------------------------------------------------------------------------------
# Results (FORMAT.md section 1): integers, or errno / signal names as strings
# --------------------------------------------------------------------------------------

EINVAL = "EINVAL"
ENOMEM = "ENOMEM"
ESRCH = "ESRCH"
EBUSY = "EBUSY"
EFAULT = "EFAULT"
SIGSEGV = "SIGSEGV"

Result = int | str

# --------------------------------------------------------------------------------------
# Operations (FORMAT.md section 1): one frozen dataclass per op, repr is a replayable call
# --------------------------------------------------------------------------------------

PROTS: tuple[str, ...] = ("none", "r", "rw")
ADVICES: tuple[str, ...] = ("hugepage", "nohugepage", "dontneed", "pageout")
ALLOC_ORDERS: tuple[str, ...] = ("pud", "pmd", "base")
MAX_VALUE = (1 << 64) - 1  # a page's contents are a 64-bit word


@dataclass(frozen=True, slots=True)
class Mmap:
    mm: int
    start: int
    npages: int
    prot: str
    KIND: ClassVar[str] = "mmap"


@dataclass(frozen=True, slots=True)
class Munmap:
    mm: int
    start: int
    npages: int
    KIND: ClassVar[str] = "munmap"


@dataclass(frozen=True, slots=True)
class Mprotect:
    mm: int
    start: int
    npages: int
    prot: str
    KIND: ClassVar[str] = "mprotect"


@dataclass(frozen=True, slots=True)
class Madvise:
    mm: int
    start: int
    npages: int
    advice: str
    KIND: ClassVar[str] = "madvise"


@dataclass(frozen=True, slots=True)
class Read:
    mm: int
    addr: int
    KIND: ClassVar[str] = "read"


@dataclass(frozen=True, slots=True)
class Write:
    mm: int
    addr: int
    value: int
    KIND: ClassVar[str] = "write"


@dataclass(frozen=True, slots=True)
class Fork:
    mm: int
    KIND: ClassVar[str] = "fork"


@dataclass(frozen=True, slots=True)
class Exit:
    mm: int
    KIND: ClassVar[str] = "exit"


@dataclass(frozen=True, slots=True)
class SplitFolio:
    mm: int
    addr: int
    KIND: ClassVar[str] = "split_folio"


@dataclass(frozen=True, slots=True)
class ShrinkDeferred:
    KIND: ClassVar[str] = "shrink_deferred"


@dataclass(frozen=True, slots=True)
class Migrate:
    mm: int
    start: int
    npages: int
    node: int
    KIND: ClassVar[str] = "migrate"


@dataclass(frozen=True, slots=True)
class Pin:
    mm: int
    addr: int
    KIND: ClassVar[str] = "pin"


@dataclass(frozen=True, slots=True)
class Unpin:
    pin: int
    KIND: ClassVar[str] = "unpin"


@dataclass(frozen=True, slots=True)
class FailAlloc:
    order: str
    count: int
    KIND: ClassVar[str] = "fail_alloc"


Op = (
    Mmap
    | Munmap
    | Mprotect
    | Madvise
    | Read
    | Write
    | Fork
    | Exit
    | SplitFolio
    | ShrinkDeferred
    | Migrate
    | Pin
    | Unpin
    | FailAlloc
)

OP_TYPES: dict[str, type] = {
    t.KIND: t
    for t in (
        Mmap,
        Munmap,
        Mprotect,
        Madvise,
        Read,
        Write,
        Fork,
        Exit,
        SplitFolio,
        ShrinkDeferred,
        Migrate,
        Pin,
        Unpin,
        FailAlloc,
    )
}

# Field kinds for validation and for generators: which values each field may take.
FIELD_KINDS: dict[str, str] = {
    "mm": "index",  # integer >= 0
    "start": "addr",  # integer >= 0
    "addr": "addr",
    "npages": "length",  # integer >= 1
    "value": "value",  # 0 <= integer <= MAX_VALUE
    "node": "index",
    "pin": "id",  # integer >= 1
    "count": "index",
    "prot": "prot",
    "advice": "advice",
    "order": "alloc_order",
}
# the values of each field kind that is a choice of names
FIELD_CHOICES: dict[str, tuple[str, ...]] = {
    "prot": PROTS,
    "advice": ADVICES,
    "alloc_order": ALLOC_ORDERS,
}


# The largest value of each integer field kind: FORMAT.md's numbers are 64-bit quantities.
# Addresses and lengths count 4 KiB pages, so a page number or a length is at most what a
# 64-bit byte address or size holds (below 2**52).  An address past the geometry's address
# space is still a legal program: its op answers EINVAL, ENOMEM, EFAULT or SIGSEGV, as the
# kernel does past TASK_SIZE.
MAX_PAGES = (1 << 52) - 1
FIELD_MAX: dict[str, int] = {
    "index": MAX_VALUE,
    "addr": MAX_PAGES,
    "length": MAX_PAGES,
    "id": MAX_VALUE,
    "value": MAX_VALUE,
}


def op_fields(kind: str) -> tuple[str, ...]:
    """The field names of an op kind, in FORMAT.md order."""
    return tuple(f.name for f in fields(OP_TYPES[kind]))


def op_to_json(op: Op) -> dict[str, Any]:
    out: dict[str, Any] = {"op": op.KIND}
    for f in fields(op):
        out[f.name] = getattr(op, f.name)
    return out


def op_str(op: Op) -> str:
    """One-line human form: ``write mm=0 addr=64 value=7``."""
    parts = [op.KIND] + [f"{f.name}={getattr(op, f.name)}" for f in fields(op)]
    return " ".join(parts)


@dataclass(frozen=True, slots=True)
class Program:
    config: Config
    ops: tuple[Op, ...]
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------
# Findings (MODEL.md section 7, FORMAT.md section 2)
# --------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Finding:
    kind: str
    op_index: int
    signature: str
    message: str
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "op_index": self.op_index,
            "signature": self.signature,
            "message": self.message,
        }
        if self.detail:
            out["detail"] = self.detail
        return out


class PudThpError(Exception):
    """Root of the project's own exceptions."""


class ModelBug(PudThpError):
    """The VM_BUG_ON / VM_WARN_ON_ONCE tier: the model met a corrupted or impossible state.

    ``check`` is a short stable name (no ids or addresses) used in the finding signature;
    ``payload`` carries whatever helps to debug it.
    """

    def __init__(self, check: str, message: str, **payload: Any) -> None:
        super().__init__(f"{check}: {message}")
        self.check = check
        self.message = message
        self.payload = payload


class Divergence(PudThpError):
    """The two implementations disagree: ``path`` is where (for people, with ids),
    ``field`` the same without ids (for signatures), ``ref`` and ``fast`` the two values,
    ``context`` the enclosing objects of both sides."""

    def __init__(self, field: str, path: str, ref: Any, fast: Any, context: str = "") -> None:
        super().__init__(f"{path}: ref {ref!r} != fast {fast!r}")
        self.field = field
        self.path = path
        self.ref = ref
        self.fast = fast
        self.context = context


class InvariantViolation(PudThpError):
    """``check_invariants()`` found a broken invariant of MODEL.md section 6."""

    def __init__(self, invariant: str, message: str) -> None:
        super().__init__(f"{invariant}: {message}")
        self.invariant = invariant
        self.message = message


# --------------------------------------------------------------------------------------
# Snapshot schema (FORMAT.md section 3)
# --------------------------------------------------------------------------------------

VMSTAT_KEYS: tuple[str, ...] = (
    "thp_fault_alloc",
    "thp_fault_fallback",
    "thp_fault_alloc_pud",
    "thp_fault_fallback_pud",
    "thp_split_pmd",
    "thp_split_pud",
    "thp_split_page",
    "thp_split_page_failed",
    "thp_deferred_split_page",
    "thp_zero_page_alloc",
    "thp_swpout",
    "thp_swpout_fallback",
    "thp_migration_success",
    "thp_migration_fail",
    "thp_migration_split",
    "pswpin",
    "pswpout",
)
MTHP_KEYS: tuple[str, ...] = (
    "anon_fault_alloc",
    "anon_fault_fallback",
    "split",
    "split_failed",
    "split_deferred",
    "nr_anon",
    "nr_anon_partially_mapped",
    "swpout",
    "swpout_fallback",
)
NODE_KEYS: tuple[str, ...] = ("nr_anon_mapped", "nr_anon_thps", "nr_anon_pud_thps")

# Page-table levels and states as the snapshot spells them; both implementations name a
# level by these words only
LEVEL_PUD, LEVEL_PMD, LEVEL_PTE = "pud", "pmd", "pte"
LEVELS: tuple[str, ...] = (LEVEL_PUD, LEVEL_PMD, LEVEL_PTE)
PT_STATES: tuple[str, ...] = ("live", "deposited")
FOLIO_FLAGS: tuple[str, ...] = ("deferred", "dirty", "partially_mapped", "swapcache")

# Entry encodings in snapshots (lists, so they compare and print compactly):
#   PUD/PMD table entry: ["table", ptid]
#   PUD/PMD leaf:        ["leaf", folio, write, dirty, young]   (bits as 0/1)
#   huge zero PMD:       ["zero"]
#   present PTE:         ["pte", folio, page_index, write, dirty, young]
#   zero-page PTE:       ["zero"]
#   swap PTE:            ["swap", slot]


def rle(values: list[Any]) -> list[list[Any]]:
    """Run-length encode a per-page array as ``[[value, count], ...]``."""
    out: list[list[Any]] = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return out


def empty_stats() -> dict[str, Any]:
    return {
        "vmstat": dict.fromkeys(VMSTAT_KEYS, 0),
        "mthp": {"pmd": dict.fromkeys(MTHP_KEYS, 0), "pud": dict.fromkeys(MTHP_KEYS, 0)},
        "node": dict.fromkeys(NODE_KEYS, 0),
    }


# --------------------------------------------------------------------------------------
# The interface every implementation offers to the harness
# --------------------------------------------------------------------------------------


class Impl(Protocol):
    """What the harness needs from an implementation (``pudthp_ref``, ``pudthp_fast``).

    ``apply`` runs one op and returns its result; it raises ``ModelBug`` when the model
    meets corruption.  ``check_invariants`` checks the whole state and raises
    ``InvariantViolation``.  ``from_snapshot`` (a class method of each implementation, not
    part of this protocol) is the inverse of ``snapshot``.
    """

    name: str

    def apply(self, op: Op) -> Result: ...

    def snapshot(self) -> dict[str, Any]: ...

    def check_invariants(self) -> None: ...

    def summary(self) -> dict[str, Any]:
        """A small part of the state both implementations compute without touching pages
        (stats, mms, queues, id counters): digested after every op in lockstep."""
        ...
