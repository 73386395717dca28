"""Maps used from programs: helpers on hash maps, map_value loads, values persisting across runs."""

import errno

import pytest
from bpfdiff.interp.engine import InterpEngine

from bpfdiff.asm import assemble_program
from bpfdiff.engine import EngineError
from bpfdiff.scenario import PROG_RAW, MapDef, Run, Scenario, Update

U64 = (1 << 64) - 1

# key 7 at [r10-4], value r6 at [r10-16]; r7 = update(h, key, value, flags=R8); r0 = lookup result or -1
HASH_PROG = """
stw [%r10-4], 7
stxdw [%r10-16], %r6
lddw %r1, map:h
mov %r2, %r10
add %r2, -4
mov %r3, %r10
add %r3, -16
mov %r4, %r8
call 2
mov %r7, %r0
lddw %r1, map:h
mov %r2, %r10
add %r2, -4
call 1
jeq %r0, 0, missing
ldxdw %r0, [%r0]
exit
missing:
mov %r0, %r7
exit
"""


def hash_run(flags: int, value: int, events_before=()):
    prog = assemble_program("p", f"mov %r6, {value}\nmov %r8, {flags}\n" + HASH_PROG)
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("h", "hash", 4, 8, 1),), programs=(prog,),
                        events=tuple(events_before) + (Run("p"),))
    return InterpEngine().execute(scenario)[-1].run


def test_hash_map_through_helpers():
    inserted = hash_run(0, 5)
    assert inserted.r0 == 5
    assert dict(inserted.maps)["h"] == (("07000000", "0500000000000000"),)
    # EXIST on a missing key: -ENOENT, nothing inserted
    assert hash_run(2, 5).r0 == -errno.ENOENT & U64
    # the map holds one entry: another key cannot go in, -E2BIG
    full = hash_run(0, 9, events_before=(Update("h", (1).to_bytes(4, "little"), bytes(8)),))
    assert full.r0 == -errno.E2BIG & U64
    # NOEXIST on a present key: -EEXIST, the old value stays
    kept = hash_run(1, 9, events_before=(Update("h", (7).to_bytes(4, "little"), (3).to_bytes(8, "little")),))
    assert kept.r0 == 3


def test_map_value_load_persists_across_runs():
    counter = assemble_program("c", "lddw %r1, map_value:cnt+8\nldxdw %r0, [%r1]\nadd %r0, 1\n"
                                    "stxdw [%r1], %r0\nexit\n")
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("cnt", "array", 4, 16, 1),), programs=(counter,),
                        events=(Run("c"), Run("c"), Update("cnt", bytes(4), bytes(8) + (40).to_bytes(8, "little")),
                                Run("c")))
    outcomes = InterpEngine().execute(scenario)
    assert [o.run.r0 for o in outcomes if o.run] == [1, 2, 41]
    assert dict(outcomes[-1].run.maps)["cnt"] == (("00000000", "00" * 8 + "2900000000000000"),)


@pytest.mark.parametrize("text, message", [
    ("lddw %r1, map_value:big+0\nmov %r0, 0\nexit\n", "one-element array"),
    ("lddw %r1, map_value:one+8\nmov %r0, 0\nexit\n", "beyond value_size"),
])
def test_map_value_refusals(text, message):
    maps = (MapDef("big", "array", 4, 8, 2), MapDef("one", "array", 4, 8, 1))
    scenario = Scenario(prog_type=PROG_RAW, maps=maps, programs=(assemble_program("p", text),), events=(Run("p"),))
    with pytest.raises(EngineError, match=message):
        InterpEngine().execute(scenario)


def test_lookup_on_a_prog_array_is_unsupported():
    prog = assemble_program("p", "stw [%r10-4], 0\nlddw %r1, map:jt\nmov %r2, %r10\nadd %r2, -4\ncall 1\nexit\n")
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("jt", "prog_array", 4, 4, 1),), programs=(prog,),
                        events=(Run("p"),))
    result = InterpEngine().execute(scenario)[-1].run
    assert (result.exit, result.fault_kind, result.fault_pc) == ("fault", "unsupported", 5)
