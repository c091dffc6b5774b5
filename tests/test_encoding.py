"""The byte format of ``fuzz.encoding`` (what atheris inputs mean) and the op-level
mutator of ``fuzz.mutator``: every byte string decodes to a valid program, representable
programs round-trip, version 1 stays what it is."""

from __future__ import annotations

import glob
import os
import random
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fuzz.encoding import (
    CHOICE_FIELDS,
    OP_KINDS,
    EncodeError,
    decode,
    encodable,
    encode,
)
from fuzz.gen import ProgramGenerator, random_config
from fuzz.mutator import Hunt, crossover, mutate
from harness.program import dump_program, parse_program_text
from pudthp_ref import spec
from pudthp_ref.spec import Config, Program

HERE = os.path.dirname(__file__)
CORPUS = os.path.join(HERE, "..", "corpus")


def valid(program: Program) -> bool:
    """The program passes the strict loader of docs/format.md (the same as a file would)."""
    return parse_program_text(dump_program(program), "<decoded>") == program


# --------------------------------------------------------------------------------------
# Totality
# --------------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_decode_never_raises_and_gives_a_valid_program(data: bytes) -> None:
    program = decode(data)
    assert valid(program)
    space = program.config.geom.space
    for op in program.ops:
        for name in ("start", "addr"):
            if hasattr(op, name):
                assert 0 <= getattr(op, name) < space
        if hasattr(op, "npages"):
            assert 1 <= op.npages <= space
        if hasattr(op, "mm"):
            assert op.mm < 1 << 16


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=200))
def test_decoding_is_canonical_after_one_round(data: bytes) -> None:
    # whatever the bytes, the program they decode to is representable and comes back
    program = decode(data)
    assert decode(encode(program)) == program


def test_empty_and_short_inputs() -> None:
    assert decode(b"") == Program(Config(), ())
    assert decode(b"\x01") == Program(Config(), ())
    # a truncated op reads its missing bytes as zeros
    assert decode(b"\x01\x00\x00\x00\x00\x05") == Program(Config(), (spec.Write(0, 0, 0),))


def test_an_unknown_version_byte_reads_as_version_1() -> None:
    body = encode(Program(Config(geometry=4), (spec.Fork(0),)))[1:]
    assert decode(b"\x07" + body) == decode(b"\x01" + body)


# --------------------------------------------------------------------------------------
# Round trip
# --------------------------------------------------------------------------------------

CORPUS_FILES = sorted(
    glob.glob(os.path.join(CORPUS, "seeds", "*.json"))
    + glob.glob(os.path.join(CORPUS, "known_bad", "*.json"))
)


@pytest.mark.parametrize("path", CORPUS_FILES, ids=os.path.basename)
def test_seed_and_known_bad_programs_round_trip(path: str) -> None:
    with open(path, encoding="utf-8") as f:
        program = parse_program_text(f.read(), path)
    assert decode(encode(program)) == replace(program, meta={})


configs = st.builds(
    Config,
    geometry=st.sampled_from([4, 8, 16, 512]),
    thp_enabled=st.sampled_from(spec.CONFIG_CHOICES["thp_enabled"]),
    pmd_enabled=st.sampled_from(spec.CONFIG_CHOICES["pmd_enabled"]),
    pud_enabled=st.sampled_from(spec.CONFIG_CHOICES["pud_enabled"]),
    use_zero_page=st.booleans(),
    deposit=st.sampled_from(spec.CONFIG_CHOICES["deposit"]),
    pud_read_fault=st.sampled_from(spec.CONFIG_CHOICES["pud_read_fault"]),
    pud_wp_reuse=st.booleans(),
    shrink_underused=st.booleans(),
    nodes=st.integers(1, spec.MAX_NODES),
    swap_pages=st.one_of(st.just(-1), st.integers(0, 1 << 40)),
)


@st.composite
def configs_v2(draw: st.DrawFn) -> Config:
    """A config with the version-2 keys (mTHP settings, max_ptes_*) drawn as well."""
    cfg = draw(configs)
    g = cfg.geom
    mthp = tuple((o, v) for o in g.mthp_orders
                 if (v := draw(st.sampled_from(spec.MTHP_SETTINGS))) != "never")
    ptes = {k: draw(st.integers(-1, g.P - 1)) for k in spec.MAX_PTES_KEYS}
    return replace(cfg, mthp=mthp, **ptes)


@st.composite
def programs(draw: st.DrawFn) -> Program:
    cfg = draw(st.one_of(configs, configs_v2()))
    g = cfg.geom
    addr = st.one_of(
        st.integers(0, g.space - 1),
        st.builds(lambda k, d: (k * g.pud_nr + d) % g.space, st.integers(0, g.P),
                  st.sampled_from([-1, 0, 1])),
    )
    length = st.integers(1, g.space)
    index = st.integers(0, (1 << 16) - 1)
    values = {
        "addr": addr,
        "length": length,
        "value": st.integers(0, spec.MAX_VALUE),
        "index": st.one_of(st.integers(0, 5), index),
        "id": st.integers(1, 1 << 16),
        **{k: st.sampled_from(v) for k, v in CHOICE_FIELDS.items()},
        "order": st.integers(0, g.pud_order),
    }
    ops = []
    for kind in draw(st.lists(st.sampled_from(OP_KINDS), max_size=30)):
        fields = {name: draw(values[spec.field_kind(kind, name)])
                  for name in spec.op_fields(kind)}
        ops.append(spec.OP_TYPES[kind](**fields))
    return Program(cfg, tuple(ops))


@settings(max_examples=300, deadline=None)
@given(programs())
def test_encode_decode_round_trip(program: Program) -> None:
    assert decode(encode(program)) == program


@pytest.mark.parametrize("seed", range(20))
def test_generated_programs_round_trip(seed: int) -> None:
    rng = random.Random(seed)
    cfg = random_config(rng, rng.choice((4, 8)))
    program = ProgramGenerator(cfg, rng).program(60)
    assert decode(encode(program)) == replace(program, meta={})


@pytest.mark.parametrize(
    ("op", "field"),
    [
        (spec.Read(0, 64), "addr"),  # tiny: the address space is 64 pages
        (spec.Munmap(0, 0, 65), "npages"),
        (spec.Fork(1 << 16), "mm"),
        (spec.Unpin((1 << 16) + 1), "pin"),
    ],
)
def test_unrepresentable_values_are_refused_by_name(op: spec.Op, field: str) -> None:
    program = Program(Config(geometry=4), (spec.Write(0, 1, 2), op))
    with pytest.raises(EncodeError, match=f"op 1 \\({op.KIND}\\): field '{field}'"):
        encode(program)
    assert not encodable(program)


def test_meta_is_not_encoded() -> None:
    program = Program(Config(), (spec.Fork(0),), {"note": "x"})
    assert decode(encode(program)) == Program(Config(), (spec.Fork(0),))


# --------------------------------------------------------------------------------------
# Version 1 is frozen
# --------------------------------------------------------------------------------------


def test_the_vocabulary_tables_cover_the_spec() -> None:
    assert set(OP_KINDS) == set(spec.OP_TYPES)
    assert set(CHOICE_FIELDS["prot"]) == set(spec.PROTS)
    assert set(CHOICE_FIELDS["advice"]) == set(spec.ADVICES)
    assert set(CHOICE_FIELDS["alloc_order"]) == set(spec.ALLOC_ORDERS)


def test_version_1_golden_bytes() -> None:
    # Written by hand from the format in fuzz/encoding.py's docstring; if this fails,
    # the meaning of existing corpora changed: add a version instead.
    data = bytes([
        1,  # version
        0b1_00_01_001,  # P=4, thp madvise, pmd inherit, read fault fallback
        0b0_001_10_01,  # pud inherit, deposit list_head, use_zero_page flipped off
        0,  # nodes 2
        0,  # swap default
        0, 0, 0x00, 1, 0x00, 1, 2,  # mmap mm 0, start 1 PUD, npages 1 PUD, rw
        5, 1, 0x05, 1, 0x07,  # write mm 1, addr 1 PMD - 1 (=3), value 7
        6, 0x83, 0x01,  # fork mm 3 + 128 -> (131 - 128) = 3
        12, 0,  # unpin pin 1
        13, 1, 2,  # fail_alloc pmd count 2
        4, 2, 0x0A, 0,  # read mm 2, addr 0 PMD + 1 page (=1)
        1, 0, 0x04, 0, 0x02, 5,  # munmap mm 0, start 0 - 1 (= 63), npages 5 pages
    ])
    cfg = Config(geometry=4, thp_enabled="madvise", pud_read_fault="fallback",
                 pud_enabled="inherit", deposit="list_head", use_zero_page=False)
    assert decode(data) == Program(cfg, (
        spec.Mmap(0, 16, 16, "rw"),
        spec.Write(1, 3, 7),
        spec.Fork(3),
        spec.Unpin(1),
        spec.FailAlloc("pmd", 2),
        spec.Read(2, 1),
        spec.Munmap(0, 63, 5),
    ))


def test_a_given_config_replaces_the_config_bytes_and_adjust_sees_them() -> None:
    data = encode(Program(Config(geometry=4, deposit="llist"), (spec.Read(0, 17),)))
    assert decode(data, Config(geometry=8)).config == Config(geometry=8)
    seen: list[Config] = []

    def adjust(cfg: Config) -> Config:
        seen.append(cfg)
        return replace(cfg, nodes=3)

    program = decode(data, adjust=adjust)
    assert seen == [Config(geometry=4, deposit="llist")]
    assert program.config.nodes == 3
    assert program.ops == (spec.Read(0, 17),)


# --------------------------------------------------------------------------------------
# The atheris target's config policy and op-level mutator
# --------------------------------------------------------------------------------------


def test_hunt_keeps_to_the_correct_designs_at_small_geometries_unless_fixed() -> None:
    data = encode(Program(Config(geometry=512, deposit="list_head"), ()))
    assert Hunt().program(data).config == Config(geometry=8, deposit="lru_next")
    fixed = Hunt({"deposit": "list_head", "geometry": "x86_64"}).program(data).config
    assert (fixed.deposit, fixed.geometry) == ("list_head", 512)
    assert Hunt({"nodes": 3}).program(data).config.nodes == 3


@pytest.mark.parametrize("fixed", [{}, {"deposit": "list_head", "geometry": "tiny"}])
def test_mutations_stay_decodable_within_size_and_keep_fixed_keys(fixed: dict[str, str]) -> None:
    hunt = Hunt(fixed)
    rng = random.Random(1)
    data = encode(ProgramGenerator(Config(), rng).program(20))
    changed = 0
    for seed in range(1500):
        out = mutate(hunt, data, 300, seed)
        assert len(out) <= 300
        program = hunt.program(out)
        assert decode(out) == decode(encode(program))
        for key, value in hunt.pinned.items():
            assert getattr(program.config, key) == value
        changed += program != hunt.program(data)
        if seed % 10 == 0:
            out = crossover(hunt, out, bytes(rng.randrange(256) for _ in range(60)), 300, seed)
            assert len(out) <= 300
        data = out
    assert changed > 1000


def test_a_mutation_is_one_op_level_edit() -> None:
    hunt = Hunt()
    base = Program(Config(), tuple(spec.Write(0, 8 * i, i) for i in range(10)))
    data = encode(base)
    for seed in range(200):
        after = hunt.program(mutate(hunt, data, 4096, seed))
        if after.config != base.config:
            assert after.ops == base.ops or after.config.geometry != base.config.geometry
            continue
        # insert/delete change the length by at most 4; swap/tweak change at most 2 ops
        same = sum(a == b for a, b in zip(after.ops, base.ops, strict=False))
        assert abs(len(after.ops) - len(base.ops)) <= 4 or same >= len(base.ops) - 2


def test_version_2_golden_bytes_carry_mthp_max_ptes_and_the_split_order() -> None:
    # Written by hand from fuzz/encoding.py's docstring: version 2 adds, after swap_pages,
    # the mTHP settings (two bits per order from order 2) and the three max_ptes_* varints,
    # and one byte of split_folio's order (modulo PUD_ORDER + 1).
    data = bytes([
        2,  # version 2
        0b0_00_00_010,  # P=16 (mTHP orders 2, 3; PMD order 4, PUD order 8), the rest default
        0, 0, 0,  # byte 2 default, nodes 2, swap default
        0b10_01,  # order 2 always (1), order 3 madvise (2)
        1, 0, 9,  # max_ptes_none (1 - 1) % 16 = 0, swap default, shared (9 - 1) = 8
        8, 0, 0x02, 0, 3,  # split_folio mm 0, addr 0, order 3
        8, 1, 0x02, 5, 12,  # split_folio mm 1, addr 5, order 12 % 9 = 3
    ])
    cfg = Config(geometry=16, mthp=((2, "always"), (3, "madvise")), max_ptes_none=0,
                 max_ptes_shared=8)
    program = Program(cfg, (spec.SplitFolio(0, 0, 3), spec.SplitFolio(1, 5, 3)))
    assert decode(data) == program
    assert decode(encode(program)) == program
    # the same ops as version 1 carry no order byte and mean order 0
    v1 = bytes([1, 0b010, 0, 0, 0, 8, 0, 0x02, 0])
    assert decode(v1) == Program(Config(geometry=16), (spec.SplitFolio(0, 0, 0),))
    # a program needing nothing of version 2 is written as version 1, bytes unchanged
    assert encode(Program(Config(geometry=16), (spec.SplitFolio(0, 0),)))[0] == 1


def test_advice_byte_4_is_collapse_in_version_2_and_hugepage_in_version_1() -> None:
    # madvise mm 0, start 0, npages 1 page (tag 2, index 1), advice byte 4: version 1 had
    # four advices (4 % 4 = 0, hugepage), version 2 five (collapse)
    ops = [3, 0, 0x02, 0, 0x02, 1, 4]
    assert decode(bytes([1, 0, 0, 0, 0, *ops])).ops == (spec.Madvise(0, 0, 1, "hugepage"),)
    assert decode(bytes([2, 0, 0, 0, 0, 0, 0, 0, 0, *ops])).ops == (
        spec.Madvise(0, 0, 1, "collapse"),)
    # and a program using collapse is written as version 2
    assert encode(Program(Config(), (spec.Madvise(0, 0, 1, "collapse"),)))[0] == 2
