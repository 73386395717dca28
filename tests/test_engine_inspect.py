"""Engine.inspect: the public view of an engine's code that dump and the reports use.

Checked against the real 6.1 bytes of ../shared/reference/linux-6.1-jit-fixtures.md
(the seed program's caller: the bypass and the site before and after the slot is
filled), with the load-address dependent fields left out.
"""

from __future__ import annotations

import pytest

from bpfdiff.engine import EngineUnsupported, make_engine
from bpfdiff.scenario_text import parse_scenario

SEED = """-- maps
jt prog_array key_size=4 value_size=4 max_entries=1
-- prog target
mov %r0, 42
exit
-- prog caller
lddw %r2, map:jt
mov %r3, 0
call 12
mov %r0, 1
exit
-- events
update jt 0 prog:target
delete jt 0
"""
NOP5 = bytes.fromhex("0f1f440000")
# The 6.1 fixture, caller, slot empty; the movabs immediate (map address) is zero here
EMPTY = bytes.fromhex("0f1f440000 31c0 55 4889e5 50 48be0000000000000000 31d2 8b85fcffffff 83f821 7314 83c001"
                      " 8985fcffffff e906000000 58 0f1f440000 b801000000 c9 c3 cc".replace(" ", ""))
MAP_IMM = slice(14, 22)
BYPASS = EMPTY.index(bytes.fromhex("e906000000"))   # jumps over `pop rax` and the site
SITE = BYPASS + 6


def caller_sites(step):
    (image,) = step.programs["caller"].images
    return image, {p.kind: p for p in image.poke_sites}


@pytest.mark.parametrize("bugs", [frozenset(), frozenset({"poke-skip-delete"})])
def test_jit_inspect_shows_images_and_poke_sites_after_each_event(bugs) -> None:
    engine = make_engine("jit", profile="linux-6.1", bugs=bugs)
    try:
        steps = list(engine.inspect(parse_scenario(SEED, "seed.scn")))
    finally:
        engine.close()
    assert [s.index for s in steps] == [None, 0, 1]
    assert [s.outcome.kind for s in steps[1:]] == ["update", "delete"]
    loaded, filled, deleted = (caller_sites(s) for s in steps)
    image, sites = loaded
    code = bytearray(image.code)
    code[MAP_IMM] = bytes(8)
    assert bytes(code) == EMPTY
    assert (sites["bypass"].address - image.base, sites["site"].address - image.base) == (BYPASS, SITE)
    assert sites["site"].current == NOP5 and sites["bypass"].current == bytes.fromhex("e906000000")
    target = steps[1].programs["target"].images[0]
    image, sites = filled
    assert sites["bypass"].current == NOP5
    assert sites["site"].current[:1] == b"\xe9"
    assert sites["site"].address + 5 + int.from_bytes(sites["site"].current[1:], "little", signed=True) \
        == target.base + 11
    image, sites = deleted
    # the engine's own expectation after the delete: back to the empty-slot bytes
    assert sites["site"].expected == NOP5 and sites["bypass"].expected == bytes.fromhex("e906000000")
    stale = sites["site"].current != sites["site"].expected
    assert stale == bool(bugs)
    # pc_at maps the site back to the tail call (pc 3: lddw takes two slots)
    assert image.pc_at(sites["site"].address) == 3
    assert image.pc_at(image.base) is None          # the prologue


def test_an_engine_without_code_says_so() -> None:
    engine = make_engine("interp")
    with pytest.raises(EngineUnsupported):
        engine.inspect(parse_scenario(SEED, "seed.scn"))
