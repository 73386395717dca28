"""The path-sensitive verifier model (bpfdiff.verifier.explore, bpfdiff.scalar) against the real kernel.

Each program below was loaded on Debian's 6.1.192 and 5.10.223 under qemu (``bpfdiff dump
--xlated --engine kernel-jit``, both kernels print the same); the expected text is what the
kernel printed, with the map ids of the scenario (jt = 1, arr = 2).  Direct tail-call sites
(``tnum``, ``loop``) were read from the kernel's JIT image: a ``nopl`` poke site and no bounds
check.  No qemu is needed here.
"""

from __future__ import annotations

import random

import pytest

from bpfdiff.profiles import LINUX_5_5, LINUX_5_10, LINUX_6_1
from bpfdiff.scalar import _R, S32_MAX, S32_MIN, S64_MAX, S64_MIN, U32, U64, Scalar
from bpfdiff.scenario_text import parse_scenario
from bpfdiff.verifier import explore, verify

MAPS = """-- maps
jt prog_array key_size=4 value_size=4 max_entries=8
arr array key_size=4 value_size=8 max_entries=2
"""
MAP_IDS = {"jt": 1, "arr": 2}

# name: (program, the kernel's xlated dump), each with why in a comment
KERNEL_XLATED = {
    # a bounded loop is followed iteration by iteration: r9 is 5 after it, so the tail call's key is the
    # constant 5 (a direct site) and `w9 -= 63` makes `r9 > 0xffff` always true
    "loop": (
        """\
mov %r6, %r1
mov %r9, 1
L1:
add %r9, 1
jlt %r9, 5, L1
mov %r1, %r6
mov %r3, %r9
lddw %r2, map:jt
call 12
sub32 %r9, 63
jgt %r9, 65535, L2
mov %r0, 1
exit
L2:
mov %r0, 2
exit
""",
        """\
   0: (bf) r6 = r1
   1: (b7) r9 = 1
   2: (07) r9 += 1
   3: (a5) if r9 < 0x5 goto pc-2
   4: (bf) r1 = r6
   5: (bf) r3 = r9
   6: (18) r2 = map[id:1]
   8: (85) call bpf_tail_call#12
   9: (14) w9 -= 63
  10: (b7) r0 = 2
  11: (95) exit
"""),
    # tnum tracking: after `w2 <<= 1` bit 0 is known 0, so `r3 = r2 & 1` is the constant 0 (a direct site)
    # though r2 is unknown
    "tnum": (
        """\
mov %r6, %r1
ldxw %r2, [%r6+16]
lsh32 %r2, 1
mov %r1, %r6
mov %r3, %r2
and %r3, 1
lddw %r2, map:jt
call 12
mov %r0, 0
exit
""",
        """\
   0: (bf) r6 = r1
   1: (79) r2 = *(u64 *)(r6 +32)
   2: (61) r2 = *(u32 *)(r2 +8)
   3: (64) w2 <<= 1
   4: (bf) r1 = r6
   5: (bf) r3 = r2
   6: (57) r3 &= 1
   7: (18) r2 = map[id:1]
   9: (85) call bpf_tail_call#12
  10: (b7) r0 = 0
  11: (95) exit
"""),
    # a 32-bit shift by a register whose 64-bit umax is >= 32 makes the result unknown (6.1 tests the 64-bit
    # umax): the jsle32 stays
    "shift": (
        """\
lddw %r2, 0xffffffff00000000
rsh32 %r2, %r2
jsle32 %r2, %r2, L
add32 %r2, 2
L:
mov %r0, %r2
exit
""",
        """\
   0: (18) r2 = 0xffffffff00000000
   2: (7c) w2 >>= w2
   3: (de) if w2 s<= w2 goto pc+1
   4: (04) w2 += 2
   5: (bf) r0 = r2
   6: (95) exit
"""),
    # each call site is explored with its own R1: 3 reaches the add, 7 skips it -- both sides are seen, the
    # branch stays
    "callsite": (
        """\
mov %r6, %r1
mov %r1, 3
call local F
mov %r7, %r0
mov %r1, 7
call local F
add %r0, %r7
exit
F:
mov %r0, %r1
jgt %r1, 5, G
add %r0, 100
G:
exit
""",
        """\
   0: (bf) r6 = r1
   1: (b7) r1 = 3
   2: (85) call pc+5
   3: (bf) r7 = r0
   4: (b7) r1 = 7
   5: (85) call pc+2
   6: (0f) r0 += r7
   7: (95) exit
   8: (bf) r0 = r1
   9: (25) if r1 > 0x5 goto pc+1
  10: (07) r0 += 100
  11: (95) exit
"""),
    # bounds: on the fall-through of `r2 > 10`, `r2 > 20` is never true -- hard-wired, its target removed
    "range": (
        """\
ldxw %r2, [%r1+16]
jgt %r2, 10, out
jgt %r2, 20, never
mov %r0, 1
exit
never:
mov %r0, 2
exit
out:
mov %r0, 3
exit
""",
        """\
   0: (79) r2 = *(u64 *)(r1 +32)
   1: (61) r2 = *(u32 *)(r2 +8)
   2: (25) if r2 > 0xa goto pc+2
   3: (b7) r0 = 1
   4: (95) exit
   5: (b7) r0 = 3
   6: (95) exit
"""),
    # JEQ against a constant outside the bounds is not decided before 13fbcee55706 (v6.2): the jeq stays
    "jeqrange": (
        """\
ldxw %r2, [%r1+16]
jgt %r2, 10, out
jeq %r2, 20, never
mov %r0, 1
exit
never:
mov %r0, 2
exit
out:
mov %r0, 3
exit
""",
        """\
   0: (79) r2 = *(u64 *)(r1 +32)
   1: (61) r2 = *(u32 *)(r2 +8)
   2: (25) if r2 > 0xa goto pc+5
   3: (15) if r2 == 0x14 goto pc+2
   4: (b7) r0 = 1
   5: (95) exit
   6: (b7) r0 = 2
   7: (95) exit
   8: (b7) r0 = 3
   9: (95) exit
"""),
    # spilled constants (8 bytes, 4 bytes at an aligned slot, a BPF_ST immediate) come back on a fill of the
    # same size: all three compares are decided
    "spill": (
        """\
mov %r6, %r1
mov %r2, 6
stxdw [%r10-8], %r2
stxw [%r10-16], %r2
stdw [%r10-24], 9
ldxdw %r3, [%r10-8]
ldxw %r4, [%r10-16]
ldxdw %r5, [%r10-24]
jeq %r3, 6, A
mov %r0, 1
exit
A:
jeq %r4, 6, B
mov %r0, 2
exit
B:
jeq %r5, 9, C
mov %r0, 3
exit
C:
mov %r0, 4
exit
""",
        """\
   0: (bf) r6 = r1
   1: (b7) r2 = 6
   2: (7b) *(u64 *)(r10 -8) = r2
   3: (63) *(u32 *)(r10 -16) = r2
   4: (7a) *(u64 *)(r10 -24) = 9
   5: (79) r3 = *(u64 *)(r10 -8)
   6: (61) r4 = *(u32 *)(r10 -16)
   7: (79) r5 = *(u64 *)(r10 -24)
   8: (b7) r0 = 4
   9: (95) exit
"""),
    # map_lookup_elem's NULL check: on the NULL side R0 is the scalar 0, so the second check is decided
    "nullcheck": (
        """\
mov %r6, 0
stxw [%r10-4], %r6
mov %r2, %r10
add %r2, -4
lddw %r1, map:arr
call 1
jne %r0, 0, ok
jeq %r0, 0, z
mov %r0, 5
exit
z:
mov %r0, 6
exit
ok:
mov %r0, 7
exit
""",
        """\
   0: (b7) r6 = 0
   1: (63) *(u32 *)(r10 -4) = r6
   2: (bf) r2 = r10
   3: (07) r2 += -4
   4: (18) r1 = map[id:2]
   6: (07) r1 += 272
   7: (61) r0 = *(u32 *)(r2 +0)
   8: (35) if r0 >= 0x2 goto pc+3
   9: (67) r0 <<= 3
  10: (0f) r0 += r1
  11: (05) goto pc+1
  12: (b7) r0 = 0
  13: (55) if r0 != 0x0 goto pc+2
  14: (b7) r0 = 6
  15: (95) exit
  16: (b7) r0 = 7
  17: (95) exit
"""),
    # a BPF_ST immediate is spilled sign-extended: the fill equals -9 (64 bits), not 0xfffffff7
    "stneg": (
        """\
stdw [%r10-8], -9
ldxdw %r5, [%r10-8]
jeq %r5, -9, A
mov %r0, 1
exit
A:
lddw %r4, 0xfffffff7
jeq %r5, %r4, B
mov %r0, 2
exit
B:
mov %r0, 3
exit
""",
        """\
   0: (7a) *(u64 *)(r10 -8) = -9
   1: (79) r5 = *(u64 *)(r10 -8)
   2: (18) r4 = 0xfffffff7
   4: (b7) r0 = 2
   5: (95) exit
"""),
    # a 4-byte BPF_ST at an 8-aligned slot is tracked
    "stw": (
        """\
stw [%r10-8], 7
ldxw %r5, [%r10-8]
jeq %r5, 7, A
mov %r0, 1
exit
A:
mov %r0, 2
exit
""",
        """\
   0: (62) *(u32 *)(r10 -8) = 7
   1: (61) r5 = *(u32 *)(r10 -8)
   2: (b7) r0 = 2
   3: (95) exit
"""),
    # one at a slot that is not 8-aligned is not: the compare stays
    "stwmis": (
        """\
stw [%r10-4], 7
ldxw %r5, [%r10-4]
jeq %r5, 7, A
mov %r0, 1
exit
A:
mov %r0, 2
exit
""",
        """\
   0: (62) *(u32 *)(r10 -4) = 7
   1: (61) r5 = *(u32 *)(r10 -4)
   2: (15) if r5 == 0x7 goto pc+2
   3: (b7) r0 = 1
   4: (95) exit
   5: (b7) r0 = 2
   6: (95) exit
"""),
    # a spilled register passed to a helper that only reads it (a lookup key) is misc data after
    # the call: the fill is unknown and the compare stays (6.1.192 and 5.10.223 alike)
    "clobber": (
        """\
mov %r5, 1
stxw [%r10-64], %r5
lddw %r1, map:arr
mov %r2, %r10
add %r2, -64
call 1
ldxw %r0, [%r10-64]
jeq32 %r0, 1, L
mov %r0, 2
exit
L:
mov %r0, 3
exit
""",
        """\
   0: (b7) r5 = 1
   1: (63) *(u32 *)(r10 -64) = r5
   2: (18) r1 = map[id:2]
   4: (bf) r2 = r10
   5: (07) r2 += -64
   6: (07) r1 += 272
   7: (61) r0 = *(u32 *)(r2 +0)
   8: (35) if r0 >= 0x2 goto pc+3
   9: (67) r0 <<= 3
  10: (0f) r0 += r1
  11: (05) goto pc+1
  12: (b7) r0 = 0
  13: (61) r0 = *(u32 *)(r10 -64)
  14: (16) if w0 == 0x1 goto pc+2
  15: (b7) r0 = 2
  16: (95) exit
  17: (b7) r0 = 3
  18: (95) exit
"""),
}


def xlated_text(name: str, profile=LINUX_6_1):
    program, _ = KERNEL_XLATED[name]
    scenario = parse_scenario(f"{MAPS}-- prog {name}\n{program}-- events\n", f"{name}.scn")
    prog = scenario.programs[0]
    return verify(prog, {m.name: m for m in scenario.maps}, profile, prog_type=scenario.prog_type)


@pytest.mark.parametrize("profile", [LINUX_6_1, LINUX_5_10], ids=lambda p: p.name)
@pytest.mark.parametrize("name", sorted(KERNEL_XLATED))
def test_xlated_is_the_real_kernels(name, profile) -> None:
    expected = KERNEL_XLATED[name][1]
    assert xlated_text(name, profile).format(map_id=MAP_IDS.get) == expected


@pytest.mark.parametrize("name, key", [("loop", 5), ("tnum", 0)])
def test_constant_keys_the_kernel_proves_make_direct_sites(name, key) -> None:
    pokes = xlated_text(name).pokes
    assert [(p.map, p.key) for p in pokes] == [("jt", key)]


def test_the_seed_era_kernel_tracks_no_narrow_or_immediate_spills() -> None:
    # linux-5.5 predates 354e8f1970f8 (v5.16) and ecdf985d7615 (v6.3): only the 8-byte spill
    # of r2 comes back; the 4-byte spill and the BPF_ST immediate are misc data
    text = xlated_text("spill", LINUX_5_5).format(map_id=MAP_IDS.get)
    assert "if r3 == 0x6" not in text
    assert "if r4 == 0x6" in text and "if r5 == 0x9" in text


def test_an_exploration_past_its_budget_gives_no_answer() -> None:
    program, _ = KERNEL_XLATED["loop"]
    scenario = parse_scenario(f"{MAPS}-- prog loop\n{program}-- events\n", "loop.scn")
    maps = {m.name: m for m in scenario.maps}
    insns = scenario.programs[0].insns
    assert explore(insns, maps, LINUX_6_1, budget=5) is None
    facts = explore(insns, maps, LINUX_6_1)
    assert facts is not None and facts.tail_calls == {8: ("jt", 5)}   # the call, after the two-slot lddw
    assert 11 not in facts.seen and 12 not in facts.seen     # `mov %r0, 1; exit`: never reached


def test_the_budget_counts_each_state_of_an_instruction_once() -> None:
    """Two paths that differ at the join (r3 = 1 or 2, r0's range after the branch) become one state
    at `add %r0, 1`: the 20 adds and the exit are each one state, so the exploration holds
    1 + 1 + 1 + 1 + 1 + 2 + 2 + 20 + 1 = 30 (pc, state) pairs, whatever order it walks them in."""
    adds = "add %r0, 1\n" * 20
    program = f"ldxw %r0, [%r1+0]\njgt %r0, 5, L1\nmov %r3, 1\nja L2\nL1:\nmov %r3, 2\nL2:\nmov %r0, 0\n" \
              f"mov %r3, 0\n{adds}exit\n"
    scenario = parse_scenario(f"{MAPS}-- prog converge\n{program}-- events\n", "converge.scn")
    insns = scenario.programs[0].insns
    facts = explore(insns, {}, LINUX_6_1)
    assert facts is not None and facts.seen == frozenset(range(len(insns))) and facts.outcomes == {1: {True, False}}
    assert explore(insns, {}, LINUX_6_1, budget=30) == facts
    assert explore(insns, {}, LINUX_6_1, budget=29) is None


def _bounds_sync_step_by_step(s: Scalar) -> Scalar:
    r = _R(s)
    r.update()
    r.deduce()
    r.bound_offset()
    r.update()
    return r.freeze()


def test_reg_bounds_sync_written_out_is_the_four_steps() -> None:
    """_R.sync is update, deduce, bound_offset, update on local variables: the same results on
    bounds at and around every sign and width edge, consistent or not, and on random ones."""
    rng = random.Random(7)
    u64_edges = [0, 1, 5, 0x7F, 0xFF, (1 << 31) - 1, 1 << 31, U32 - 1, U32, U32 + 1, S64_MAX, 1 << 63, U64 - 1, U64]
    s64_edges = [S64_MIN, S64_MIN + 1, -(1 << 32), S32_MIN - 1, S32_MIN, -1, 0, 1, S32_MAX, S32_MAX + 1, S64_MAX]
    u32_edges = [0, 1, 5, (1 << 31) - 1, 1 << 31, U32 - 1, U32]
    s32_edges = [S32_MIN, S32_MIN + 1, -1, 0, 1, S32_MAX - 1, S32_MAX]

    def pair(edges: list[int], bits: int, signed: bool) -> list[int]:
        def one() -> int:
            if rng.random() < 0.5:
                return rng.choice(edges)
            value = rng.getrandbits(rng.choice([3, bits // 2, bits - 1, bits]))
            return value - (1 << (bits - 1)) if signed and rng.random() < 0.5 else value
        a, b = one(), one()
        return sorted([a, b]) if rng.random() < 0.8 else [a, b]

    for _ in range(20_000):
        mask = rng.choice([0, U64, U32, U64 ^ U32, 0xFF, rng.getrandbits(64)])
        value = rng.getrandbits(64) & ~mask
        s = Scalar(value, mask, *pair(u64_edges, 64, False), *pair(s64_edges, 64, True),
                   *pair(u32_edges, 32, False), *pair(s32_edges, 32, True))
        synced = _R(s)
        synced.sync()
        assert synced.freeze() == _bounds_sync_step_by_step(s), s
