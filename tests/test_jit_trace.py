"""The JIT engine's program trace and tail-call count: recorded at the tail-call jumps.

The bug these tests pin down: the trace used to be inferred from the address
where a tail call lands (``bpf_func`` + the profile's tail-call offset), but
a BPF jump back to instruction 0 lands there too whenever the code of slot 0
starts right at that offset -- always on linux-5.5 (PROLOGUE_SIZE 0x19), and
on linux-6.1 for a program without stack, tail calls and callee-saved
registers (offset 11) -- so each loop iteration counted as a tail call.

Independent facts used here:

* a loop enters nothing: the reference interpreter's trace is the run's
  program alone and its tail-call count 0;
* both profiles allow exactly 33 tail calls (reference README: 6.1 measured
  1 + 33 entries; 5.5 ``cmp $0x20; ja``), so a self loop enters 34 times;
* X86_TAIL_CALL_OFFSET is 11 on linux-6.1 (linux-6.1-jit-fixtures.md) and
  PROLOGUE_SIZE 0x19 on linux-5.5 (the seed commit's listings);
* the kernel's indirect tail call jumps through ``emit_indirect_jump`` with
  ``rcx == prog->bpf_func + X86_TAIL_CALL_OFFSET`` (6.1; a ``jmp`` to
  ``__x86_indirect_thunk_rcx`` under retpoline, else ``jmp *%rcx``), the seed
  kernel through its inline retpoline on rax (``callq``), else ``jmp *%rax``.
"""

from __future__ import annotations

import pytest
from bpfdiff.interp.engine import InterpEngine
from bpfdiff.jit.emulator import THUNK_BASE, THUNK_SLOT
from bpfdiff.jit.engine import JitEngine
from raw_scenarios import parse_raw

from bpfdiff.compare import compare_outcomes
from bpfdiff.engine import EXIT

PROFILES = ("linux-6.1", "linux-5.5")
TAIL_CALL_OFFSET = {"linux-6.1": 11, "linux-5.5": 0x19}

LOOP_AT_PC0 = """
-- prog p
L: add %r0, 1
jlt %r0, {n}, L
exit
-- events
run p
run p
"""

# The loop head at pc 0 of a program that is itself tail-called: its counter
# lives in the context, so that nothing undefined at a tail-call entry is read.
LOOP_IN_TARGET = """
-- maps
jmp prog_array max_entries=2
-- prog target
L: ldxw %r0, [%r1]
add %r0, 1
stxw [%r1], %r0
jlt %r0, 5, L
exit
-- prog caller
mov %r3, 0
lddw %r2, map:jmp
call 12
mov %r0, 99
exit
-- events
update jmp 0 prog:target
run caller mem=00 00 00 00
run target mem=00 00 00 00
"""

# A program tail-calling itself: through a direct site (constant key) or an
# indirect one (the key is read from the context).
SELF_LOOP = """
-- maps
jmp prog_array max_entries=1
-- prog loop
{key}
lddw %r2, map:jmp
call 12
mov %r0, 7
exit
-- events
run loop mem=00 00 00 00
update jmp 0 prog:loop
run loop mem=00 00 00 00
run loop mem=00 00 00 00
delete jmp 0
run loop mem=00 00 00 00
"""
DIRECT_KEY = "mov %r3, 0"
INDIRECT_KEY = "ldxw %r3, [%r1]"

# Two programs tail-calling each other, each with a loop back to pc 0: every
# entry adds 1 to the context's third word until it is even (two iterations,
# one jump back to pc 0), so that word ends as twice the number of entries.
LOOP_HEAD = """L: ldxw %r0, [%r1+8]
add %r0, 1
stxw [%r1+8], %r0
and %r0, 1
jne %r0, 0, L"""
CHAIN = """
-- maps
jmp prog_array max_entries=2
-- prog a
{loop}
{key_b}
lddw %r2, map:jmp
call 12
mov %r0, 10
exit
-- prog b
{loop}
{key_a}
lddw %r2, map:jmp
call 12
mov %r0, 20
exit
-- events
update jmp 0 prog:a
update jmp 1 prog:b
run a mem=00 00 00 00 01 00 00 00 00 00 00 00
run b mem=00 00 00 00 01 00 00 00 00 00 00 00
delete jmp 0
run a mem=00 00 00 00 01 00 00 00 00 00 00 00
"""


def both(profile: str, text: str, **jit_options: object) -> tuple[list, list]:
    """The scenario through the interpreter and the JIT; they must agree."""
    scenario = parse_raw(text)
    interp = InterpEngine(profile=profile).execute(scenario)
    jit_engine = JitEngine(profile=profile, **jit_options)
    try:
        jit = jit_engine.execute(scenario)
    finally:
        jit_engine.close()
    assert compare_outcomes({"interp": interp, "jit": jit}) == []
    assert [o.violations for o in jit] == [()] * len(jit)
    return interp, jit


def runs(outcomes: list) -> list:
    return [o.run for o in outcomes if o.run is not None]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("n", [5, 1000])
def test_a_loop_back_to_pc0_is_no_tail_call(profile: str, n: int) -> None:
    text = LOOP_AT_PC0.format(n=n)
    engine = JitEngine(profile=profile)
    engine.start(parse_raw(text))
    image = engine.programs["p"].images[0]
    # the premise: slot 0's code starts exactly at the tail-call entry
    assert image.addrs[0] == TAIL_CALL_OFFSET[profile]
    engine.close()
    for outcomes in both(profile, text):
        for run in runs(outcomes):
            assert (run.exit, run.r0, run.tail_calls, run.trace) == (EXIT, n, 0, ("p",))


@pytest.mark.parametrize("profile", PROFILES)
def test_a_loop_at_pc0_of_a_tail_called_program_counts_one_entry(profile: str) -> None:
    for outcomes in both(profile, LOOP_IN_TARGET):
        by_call, alone = runs(outcomes)
        assert (by_call.r0, by_call.tail_calls, by_call.trace) == (5, 1, ("caller", "target"))
        assert by_call.mem == bytes([5, 0, 0, 0])
        assert (alone.r0, alone.tail_calls, alone.trace) == (5, 0, ("target",))


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("key", [DIRECT_KEY, INDIRECT_KEY], ids=["direct", "indirect"])
@pytest.mark.parametrize("retpoline", [True, False], ids=["retpoline", "no-retpoline"])
def test_self_tail_call_loop_takes_33_tail_calls(profile: str, key: str, retpoline: bool) -> None:
    text = SELF_LOOP.format(key=key)
    interp, jit = both(profile, text, retpoline=retpoline)
    for outcomes in (interp, jit):
        empty, first, second, deleted = runs(outcomes)
        for run in (empty, deleted):
            assert (run.r0, run.tail_calls, run.trace) == (7, 0, ("loop",))
        for run in (first, second):
            assert (run.r0, run.tail_calls, run.trace) == (7, 33, ("loop",) * 34)


@pytest.mark.parametrize("profile", PROFILES)
def test_forced_indirect_self_loop_takes_33_tail_calls(profile: str) -> None:
    _interp, jit = both(profile, SELF_LOOP.format(key=DIRECT_KEY), force_indirect=True)
    assert [(r.tail_calls, len(r.trace)) for r in runs(jit)] == [(0, 1), (33, 34), (33, 34), (0, 1)]


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("key_b,key_a", [
    ("mov %r3, 1", "mov %r3, 0"),
    ("ldxw %r3, [%r1+4]", "ldxw %r3, [%r1]"),      # the context's two words: 0 and 1
    ("mov %r3, 1", "ldxw %r3, [%r1]"),
], ids=["direct", "indirect", "mixed"])
def test_chain_a_b_a_alternates_in_the_trace(profile: str, key_b: str, key_a: str) -> None:
    # a calls slot 1 (b), b calls slot 0 (a)
    text = CHAIN.format(loop=LOOP_HEAD, key_b=key_b, key_a=key_a)
    for outcomes in both(profile, text):
        from_a, from_b, a_alone = runs(outcomes)
        assert from_a.trace == ("a", "b") * 17 and from_a.tail_calls == 33
        assert from_a.r0 == 20              # the 34th program, b, falls through its tail call
        assert from_b.trace == ("b", "a") * 17 and from_b.tail_calls == 33
        assert from_b.r0 == 10
        # slot 0 emptied: a -> b, then b's call through the empty slot falls through
        assert (a_alone.trace, a_alone.tail_calls, a_alone.r0) == (("a", "b"), 1, 20)
        for run, entries in ((from_a, 34), (from_b, 34), (a_alone, 2)):
            assert int.from_bytes(run.mem[8:12], "little") == 2 * entries


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("retpoline", [True, False], ids=["retpoline", "no-retpoline"])
def test_indirect_tail_call_metadata_points_at_the_jump(profile: str, retpoline: bool) -> None:
    engine = JitEngine(profile=profile, retpoline=retpoline)
    engine.start(parse_raw(SELF_LOOP.format(key=INDIRECT_KEY)))
    image = engine.programs["loop"].images[0]
    [(offset, reg)] = image.indirect_tail_calls
    code = engine.image_bytes("loop")[offset:]
    if profile == "linux-6.1":
        assert reg == 1                                   # rcx
        if retpoline:
            thunk = THUNK_BASE + THUNK_SLOT * 1
            assert code[:5] == b"\xe9" + (thunk - (image.base + offset + 5)).to_bytes(4, "little", signed=True)
        else:
            assert code[:2] == b"\xff\xe1"                # jmp *%rcx
        before = engine.image_bytes("loop")[offset - 4:offset]
        assert before == b"\x48\x83\xc1\x0b"              # add rcx, X86_TAIL_CALL_OFFSET
    else:
        assert reg == 0                                   # rax
        if retpoline:
            assert code[:5] == b"\xe8\x07\x00\x00\x00"        # callq (the inline retpoline)
        else:
            assert code[:2] == b"\xff\xe0"                # jmp *%rax
        before = engine.image_bytes("loop")[offset - 4:offset]
        assert before == b"\x48\x83\xc0\x19"              # add rax, PROLOGUE_SIZE
    assert engine.programs["loop"].images[0].pokes == []
    engine.close()


@pytest.mark.parametrize("profile", PROFILES)
def test_a_wrong_landing_offset_of_an_indirect_tail_call_is_a_violation(profile: str) -> None:
    """Planted ``tail-call-offset``: the jump is still the tail call, and it says where it landed."""
    text = """
-- maps
jmp prog_array max_entries=4
-- prog target
mov %r6, %r1
mov %r3, 3
lddw %r2, map:jmp
call 12
mov %r0, 42
exit
-- prog caller
ldxw %r3, [%r1]
lddw %r2, map:jmp
call 12
mov %r0, 1
exit
-- events
update jmp 0 prog:target
run caller mem=00 00 00 00
"""
    engine = JitEngine(profile=profile, bugs=frozenset({"tail-call-offset"}))
    outcomes = engine.execute(parse_raw(text))
    engine.close()
    run = outcomes[1].run
    assert run.trace == ("caller", "target") and run.tail_calls == 1
    offset = TAIL_CALL_OFFSET[profile]
    assert any(f"jumps into target at +{offset + 1:#x}, not at its tail-call entry +{offset:#x}" in v
               for v in outcomes[1].violations), outcomes[1].violations
