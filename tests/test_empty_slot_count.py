"""3733f4be2870 "bpf: Do not increment tailcall count when prog is NULL": a real divergence of 6.12.

Since 116e04ba1459 (v6.10) the x86 JIT increments the tail-call counter only
when the slot holds a program; the interpreter kept counting the attempt
(``tail_call_cnt++`` before ``if (!prog)``) until 3733f4be2870 (2026).  A
program that counts its entries, tail-calls an empty slot and then itself:
with the attempt counted, entry n starts at 2(n-1) and entry 17 is the last
(its empty-slot call makes 33, the self call is refused); counting only the
calls that find a program it runs 1 + 33 times.  Measured on Debian's kernels
(tests/test_kernel_guest.py): 6.12.117 JIT 34, interpreter 17; 6.1.192 and
5.10.223 17 on both.
"""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.oracle import KNOWN, EnginePool, run_oracle
from raw_scenarios import parse_raw  # runs without a packet

from bpfdiff.engine import make_engine

EMPTY_THEN_SELF = """
-- maps
jt prog_array key_size=4 value_size=4 max_entries=2
counters array key_size=4 value_size=8 max_entries=1
-- prog self
mov %r6, %r1
stw [%r10-4], 0
mov %r2, %r10
add %r2, -4
lddw %r1, map:counters
call 1
jeq %r0, 0, out
ldxdw %r1, [%r0+0]
add %r1, 1
stxdw [%r0+0], %r1           # counters[0] += 1
mov %r1, %r6
mov %r3, 1
lddw %r2, map:jt
call 12                      # slot 1 is empty
mov %r1, %r6
mov %r3, 0
lddw %r2, map:jt
call 12                      # ourselves
stw [%r10-4], 0
mov %r2, %r10
add %r2, -4
lddw %r1, map:counters
call 1
jeq %r0, 0, out
ldxdw %r0, [%r0+0]
exit
out:
mov %r0, 0
exit
-- events
update jt 0 prog:self
run self
"""

# profile -> entries (interp, jit); the real kernels' numbers
ENTRIES = {"linux-5.10": (17, 17), "linux-6.1": (17, 17), "linux-6.12": (17, 34)}


@pytest.mark.parametrize("profile", sorted(ENTRIES))
@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_entries_per_engine(profile: str, engine: str) -> None:
    made = make_engine(engine, profile=profile)
    try:
        run = made.execute(parse_raw(EMPTY_THEN_SELF))[1].run
    finally:
        made.close()
    entries = ENTRIES[profile][engine == "jit"]
    assert run is not None and run.r0 == entries and run.trace == ("self",) * entries


def test_oracle_names_the_known_kernel_bug_on_6_12() -> None:
    pool = EnginePool()
    try:
        verdict = run_oracle(parse_raw(EMPTY_THEN_SELF), profile="linux-6.12", pool=pool)
        assert [f.kind for f in verdict.findings] == [KNOWN]
        assert verdict.signature == "known:linux-6.12:3733f4be2870"
        for profile in ("linux-6.1", "linux-5.10"):
            assert run_oracle(parse_raw(EMPTY_THEN_SELF), profile=profile, pool=pool).ok
    finally:
        pool.close()
