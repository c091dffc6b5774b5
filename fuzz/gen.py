"""Seeded random programs: ops drawn from the whole vocabulary with addresses biased
towards the interesting places (PUD and PMD boundaries, one page either side)."""

from __future__ import annotations

import random

from pudthp_ref import spec
from pudthp_ref.spec import GEOMETRIES, Config, Geometry, Op, Program

DEFAULT_WEIGHTS: dict[str, int] = {
    "mmap": 6,
    "munmap": 4,
    "mprotect": 4,
    "madvise": 4,
    "read": 8,
    "write": 14,
    "fork": 3,
    "exit": 1,
    "split_folio": 2,
    "shrink_deferred": 2,
    "migrate": 2,
    "pin": 2,
    "unpin": 2,
    "fail_alloc": 1,
}


class ProgramGenerator:
    """Draws programs for one config; ``rng`` is the only source of randomness."""

    ADVICES: tuple[str, ...] = spec.ADVICES

    def __init__(
        self, cfg: Config, rng: random.Random, weights: dict[str, int] | None = None
    ) -> None:
        self.cfg = cfg
        self.g = cfg.geom
        self.rng = rng
        w = dict(DEFAULT_WEIGHTS if weights is None else weights)
        self.kinds = [k for k in w if w[k] > 0]
        self.weights = [w[k] for k in self.kinds]
        self.live_mms = [0]
        self.next_mm = 1
        self.next_pin = 1
        # Keep programs in a region a few PUDs wide so ops interact.
        self.region = min(self.g.space, 4 * self.g.pud_nr)

    def addr(self) -> int:
        g, r = self.g, self.rng
        roll = r.random()
        if roll < 0.35:
            base = r.randrange(0, self.region, g.pud_nr)
            return min(max(base + r.choice((-1, 0, 0, 1)), 0), self.region - 1)
        if roll < 0.7:
            base = r.randrange(0, self.region, g.pmd_nr)
            return min(max(base + r.choice((-1, 0, 0, 1)), 0), self.region - 1)
        return r.randrange(self.region)

    def length(self, start: int) -> int:
        g, r = self.g, self.rng
        roll = r.random()
        if roll < 0.3:
            n = g.pud_nr * r.choice((1, 1, 2))
        elif roll < 0.55:
            n = g.pmd_nr * r.choice((1, 2))
        elif roll < 0.8:
            n = r.randint(1, 3)
        else:
            n = r.randint(1, g.pud_nr + g.pmd_nr)
        return max(1, min(n, self.region - start)) if start < self.region else 1

    def split_order(self) -> int:
        """A split's new order: at P >= 16, where mTHP orders lie below the PMD order, 0 or
        an mTHP order or the PMD order (a PUD folio's split to PMD folios), now and then
        one the kernel refuses (1, or not below the folio's); 0 with no draw below P=16."""
        g = self.g
        if g.P < 16:
            return 0
        return self.rng.choice((0, 0, 1, *g.mthp_orders, g.pmd_order, g.pmd_order + 1))

    def mm(self) -> int:
        if self.rng.random() < 0.03:
            return self.next_mm + 1  # an mm that does not exist (ESRCH)
        return self.rng.choice(self.live_mms)

    def op(self) -> Op:
        r = self.rng
        kind = r.choices(self.kinds, self.weights)[0]
        if kind in ("mmap", "munmap", "mprotect", "madvise", "migrate"):
            start = self.addr()
            npages = self.length(start)
            if kind == "mmap":
                return spec.Mmap(self.mm(), start, npages, r.choice(("rw", "rw", "r", "none")))
            if kind == "munmap":
                return spec.Munmap(self.mm(), start, npages)
            if kind == "mprotect":
                return spec.Mprotect(self.mm(), start, npages, r.choice(spec.PROTS))
            if kind == "madvise":
                return spec.Madvise(self.mm(), start, npages, r.choice(self.ADVICES))
            return spec.Migrate(self.mm(), start, npages, r.randrange(self.cfg.nodes + 1))
        if kind == "read":
            return spec.Read(self.mm(), self.addr())
        if kind == "write":
            return spec.Write(self.mm(), self.addr(), r.choice((0, r.randint(1, 1000))))
        if kind == "fork":
            mm = self.mm()
            if mm in self.live_mms and len(self.live_mms) < 4:
                self.live_mms.append(self.next_mm)
                self.next_mm += 1
            return spec.Fork(mm)
        if kind == "exit":
            mm = self.mm()
            if mm in self.live_mms and len(self.live_mms) > 1:
                self.live_mms.remove(mm)
            return spec.Exit(mm)
        if kind == "split_folio":
            return spec.SplitFolio(self.mm(), self.addr(), self.split_order())
        if kind == "shrink_deferred":
            return spec.ShrinkDeferred()
        if kind == "pin":
            self.next_pin += 1
            return spec.Pin(self.mm(), self.addr())
        if kind == "unpin":
            return spec.Unpin(r.randint(1, max(1, self.next_pin)))
        return spec.FailAlloc(r.choice(spec.ALLOC_ORDERS), r.randint(0, 2))

    def program(self, n_ops: int) -> Program:
        ops: list[Op] = [spec.Mmap(0, 0, self.region, "rw")]
        while len(ops) < n_ops:
            ops.append(self.op())
        return Program(self.cfg, tuple(ops), {"generator": "fuzz.gen"})


def random_config(rng: random.Random, geometry: int = 8, deposit: str | None = None) -> Config:
    """A config from the correct designs with the docs/model.md section 4 switches drawn."""
    return Config(
        geometry=geometry,
        thp_enabled=rng.choice(("always", "always", "madvise", "never")),
        pmd_enabled=rng.choice(("inherit", "inherit", "always", "madvise", "never")),
        pud_enabled=rng.choice(("always", "always", "inherit", "madvise", "never")),
        use_zero_page=rng.random() < 0.7,
        deposit=deposit or rng.choice(("lru_next", "llist")),
        pud_read_fault=rng.choice(("alloc", "fallback")),
        pud_wp_reuse=rng.random() < 0.7,
        shrink_underused=rng.random() < 0.7,
        nodes=rng.choice((1, 2, 2)),
        swap_pages=rng.choice((-1, 0, geometry * geometry)),
        mthp=random_mthp(rng, Geometry(geometry)),
    )


def random_mthp(rng: random.Random, g: Geometry) -> tuple[tuple[int, str], ...]:
    """``config.mthp`` for geometries with two or more mTHP orders (P >= 16), each order's
    setting drawn, never mostly; no draw below (smaller geometries keep their programs)."""
    if len(g.mthp_orders) < 2:
        return ()
    drawn = ((o, rng.choice(("always", "always", "madvise", "inherit", "never", "never")))
             for o in g.mthp_orders)
    return tuple((o, v) for o, v in drawn if v != "never")


def small_mix() -> list[tuple[Config, list[Op]]]:
    """``pudthp bench``'s small-geometry workload: 200 random programs of 60 ops (seeded)."""
    out = []
    for seed in range(200):
        rng = random.Random(f"bench:small:{seed}")
        cfg = random_config(rng, 8)
        out.append((cfg, list(ProgramGenerator(cfg, rng).program(60).ops)))
    return out


# --------------------------------------------------------------------------------------
# PMD-level programs for ``pudthp conform --random`` (x86_64 geometry, no PUD THP)
# --------------------------------------------------------------------------------------

X86_64_P = GEOMETRIES["x86_64"]

RANDOM_WEIGHTS: dict[str, int] = {**DEFAULT_WEIGHTS, "migrate": 0, "fail_alloc": 0}


class PmdProgramGenerator(ProgramGenerator):
    """``ProgramGenerator`` at x86_64 geometry in a region of a few PMDs: addresses biased to
    PMD boundaries (one page either side), lengths of whole PMDs or a few pages; only what
    the live comparison runs (no MADV_COLLAPSE, splits to order 0)."""

    ADVICES = tuple(a for a in spec.ADVICES if a != "collapse")

    def split_order(self) -> int:
        return 0

    def __init__(self, cfg: Config, rng: random.Random, region_pmds: int,
                 weights: dict[str, int]) -> None:
        super().__init__(cfg, rng, weights)
        self.region = region_pmds * self.g.pmd_nr

    def addr(self) -> int:
        g, r = self.g, self.rng
        if r.random() < 0.7:
            base = r.randrange(0, self.region, g.pmd_nr)
            return min(max(base + r.choice((-1, 0, 0, 0, 1, 2)), 0), self.region - 1)
        return r.randrange(self.region)

    def length(self, start: int) -> int:
        g, r = self.g, self.rng
        roll = r.random()
        if roll < 0.45:
            n = g.pmd_nr * r.choice((1, 1, 2, 3))
        elif roll < 0.8:
            n = r.randint(1, 3)
        else:
            n = r.randint(1, 2 * g.pmd_nr + 2)
        return max(1, min(n, self.region - start)) if start < self.region else 1


def random_pmd_config(rng: random.Random, region_pages: int) -> Config:
    return Config(
        geometry=X86_64_P,
        thp_enabled=rng.choice(("always", "always", "madvise", "never")),
        pmd_enabled=rng.choice(("inherit", "inherit", "always", "madvise", "never")),
        pud_enabled="never",
        use_zero_page=rng.random() < 0.7,
        shrink_underused=rng.random() < 0.7,
        nodes=1,
        swap_pages=rng.choice((0, 4 * region_pages, 4 * region_pages)),
    )


def random_pmd_program(seed: int, index: int, n_ops: int, split_folio: bool = True) -> Program:
    """Program ``index`` of the random run ``seed`` (``split_folio`` False: none of them)."""
    rng = random.Random(f"conform:{seed}:{index}")
    region_pmds = rng.choice((2, 3, 4, 6, 8))
    cfg = random_pmd_config(rng, region_pmds * X86_64_P)
    weights = dict(RANDOM_WEIGHTS)
    if not split_folio:
        weights["split_folio"] = 0
    gen = PmdProgramGenerator(cfg, rng, region_pmds, weights)
    p = gen.program(n_ops)
    return Program(p.config, p.ops, {"generator": "harness.conform", "seed": seed,
                                     "index": index})
