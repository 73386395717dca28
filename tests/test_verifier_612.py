"""The verifier model's newer bounds rules (the 6.12 profile's fields) against the real kernels.

Each program below was loaded as XDP on Debian's 6.12.117, 6.1.192 and 5.10.223 under qemu
(``bpfdiff dump --xlated --engine kernel-jit --profile P``); the expected texts are what each kernel
printed.  Every program but ``st_zero`` is printed differently by 6.12 than by the older kernels, so
each rule is checked both where it holds and where it does not.  No qemu is needed here.
"""

from __future__ import annotations

import pytest

from bpfdiff.profiles import LINUX_5_10, LINUX_6_1, LINUX_6_12
from bpfdiff.scenario_text import parse_scenario
from bpfdiff.verifier import verify

MAPS = """-- maps
jt prog_array key_size=4 value_size=4 max_entries=8
arr array key_size=4 value_size=8 max_entries=2
"""
MAP_IDS = {"jt": 1, "arr": 2}
PROFILES = {p.name: p for p in (LINUX_6_12, LINUX_6_1, LINUX_5_10)}

# name: (program, {profile or profiles printing the same: the kernel's xlated dump})
KERNEL_XLATED = {
    # verifier_branch_ranges (v6.8): past `r0 == 0`, r0's minimum moves to 1 (a constant at the edge of
    # the range), so `r0 > 0` is always true
    "jne_edge": (
        """\
ldxw %r0, [%r1+16]
and %r0, 255
jeq %r0, 0, L1
jgt %r0, 0, L1
mov %r0, 9
L1:
exit
""",
        {
            "linux-6.12": """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (57) r0 &= 255
   3: (15) if r0 == 0x0 goto pc+0
   4: (95) exit
""",
            ("linux-6.1", "linux-5.10"): """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (57) r0 &= 255
   3: (15) if r0 == 0x0 goto pc+2
   4: (25) if r0 > 0x0 goto pc+1
   5: (b7) r0 = 9
   6: (95) exit
""",
        }),
    # verifier_safe_dst_range (v6.10): `r0 *= r0` with the low 21 bits known zero keeps them zero (MUL
    # by a non-constant computes bounds), `r0 ^= r0` then leaves w0 = 0, so `if w0 <= K` is always
    # taken; 6.1 and 5.10 make the MUL's result unknown
    "mul_xor": (
        """\
ldxw %r0, [%r1+16]
and %r0, 65535
lsh32 %r0, 21
mul %r0, %r0
xor %r0, %r0
jle32 %r0, 0x6d6d0979, L1
mov %r0, 3
L1:
exit
""",
        {
            "linux-6.12": """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (57) r0 &= 65535
   3: (64) w0 <<= 21
   4: (2f) r0 *= r0
   5: (af) r0 ^= r0
   6: (95) exit
""",
            ("linux-6.1", "linux-5.10"): """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (57) r0 &= 65535
   3: (64) w0 <<= 21
   4: (2f) r0 *= r0
   5: (af) r0 ^= r0
   6: (b6) if w0 <= 0x6d6d0979 goto pc+1
   7: (b7) r0 = 3
   8: (95) exit
""",
        }),
    # verifier_narrow_fill (v6.8): a 4-byte fill of the 8-byte spill of 0x100000000 is the constant 0 on
    # 6.12; unknown before
    "narrow_fill": (
        """\
lddw %r5, 0x100000000
stxdw [%r10-32], %r5
ldxw %r8, [%r10-32]
jne %r8, 0, L1
mov %r0, 2
exit
L1:
mov %r0, 1
exit
""",
        {
            "linux-6.12": """\
   0: (18) r5 = 0x100000000
   2: (7b) *(u64 *)(r10 -32) = r5
   3: (61) r8 = *(u32 *)(r10 -32)
   4: (b7) r0 = 2
   5: (95) exit
""",
            ("linux-6.1", "linux-5.10"): """\
   0: (18) r5 = 0x100000000
   2: (7b) *(u64 *)(r10 -32) = r5
   3: (61) r8 = *(u32 *)(r10 -32)
   4: (55) if r8 != 0x0 goto pc+2
   5: (b7) r0 = 2
   6: (95) exit
   7: (b7) r0 = 1
   8: (95) exit
""",
        }),
    # verifier_branch_ranges (v6.8): where `w0 s< w6` holds (w0 >= 0), w6 >= 1, so `w6 != 0` is always
    # true; before, neither register learns from a comparison of two non-constants
    "refine_jslt": (
        """\
ldxw %r6, [%r1+16]
and %r6, 255
ldxw %r0, [%r1+12]
and %r0, 255
jsge32 %r0, %r6, L1
jne32 %r6, 0, L1
mov %r0, 7
L1:
exit
""",
        {
            "linux-6.12": """\
   0: (79) r6 = *(u64 *)(r1 +32)
   1: (61) r6 = *(u32 *)(r6 +8)
   2: (57) r6 &= 255
   3: (79) r0 = *(u64 *)(r1 +32)
   4: (79) r0 = *(u64 *)(r0 +0)
   5: (61) r0 = *(u32 *)(r0 +224)
   6: (57) r0 &= 255
   7: (7e) if w0 s>= w6 goto pc+0
   8: (95) exit
""",
            "linux-6.1": """\
   0: (79) r6 = *(u64 *)(r1 +32)
   1: (61) r6 = *(u32 *)(r6 +8)
   2: (57) r6 &= 255
   3: (79) r0 = *(u64 *)(r1 +32)
   4: (79) r0 = *(u64 *)(r0 +0)
   5: (61) r0 = *(u32 *)(r0 +216)
   6: (57) r0 &= 255
   7: (7e) if w0 s>= w6 goto pc+2
   8: (56) if w6 != 0x0 goto pc+1
   9: (b7) r0 = 7
  10: (95) exit
""",
            "linux-5.10": """\
   0: (79) r6 = *(u64 *)(r1 +32)
   1: (61) r6 = *(u32 *)(r6 +8)
   2: (57) r6 &= 255
   3: (79) r0 = *(u64 *)(r1 +32)
   4: (79) r0 = *(u64 *)(r0 +0)
   5: (61) r0 = *(u32 *)(r0 +256)
   6: (57) r0 &= 255
   7: (7e) if w0 s>= w6 goto pc+2
   8: (56) if w6 != 0x0 goto pc+1
   9: (b7) r0 = 7
  10: (95) exit
""",
        }),
    # verifier_safe_dst_range (v6.10): a 32-bit shift by 40 leaves all 64 bits unknown (no zero-
    # extension), so `r0 >> 32 == 0` is open; 6.1 and 5.10 zero-extend the unknown result and decide it
    "shift_wide": (
        """\
ldxw %r0, [%r1+16]
mov %r2, 40
lsh32 %r0, %r2
rsh %r0, 32
jeq %r0, 0, L1
mov %r0, 9
L1:
exit
""",
        {
            "linux-6.12": """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (b7) r2 = 40
   3: (6c) w0 <<= w2
   4: (77) r0 >>= 32
   5: (15) if r0 == 0x0 goto pc+1
   6: (b7) r0 = 9
   7: (95) exit
""",
            ("linux-6.1", "linux-5.10"): """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (b7) r2 = 40
   3: (6c) w0 <<= w2
   4: (77) r0 >>= 32
   5: (95) exit
""",
        }),
    # verifier_st_imm_spill: a `stw` of 0 writes zero bytes, and a byte read of them is 0 (on all three
    # kernels) -- beside the 4-byte constant spilled by the `stw` before it
    "st_zero": (
        """\
stw [%r10-480], 0x9ea5b45c
stw [%r10-476], 0
ldxb %r3, [%r10-473]
jeq %r3, 0, L1
mov %r0, 2
exit
L1:
mov %r0, 1
exit
""",
        {
            "linux-6.12": """\
   0: (62) *(u32 *)(r10 -480) = -1633307556
   1: (62) *(u32 *)(r10 -476) = 0
   2: (71) r3 = *(u8 *)(r10 -473)
   3: (b7) r0 = 1
   4: (95) exit
""",
            ("linux-6.1", "linux-5.10"): """\
   0: (62) *(u32 *)(r10 -480) = -1633307556
   1: (62) *(u32 *)(r10 -476) = 0
   2: (71) r3 = *(u8 *)(r10 -473)
   3: (b7) r0 = 1
   4: (95) exit
""",
        }),
    # verifier_jeq_tnum: bit 0 of `r0 & -2` is known 0, so `r0 != 0x3f` is always true on 6.12 though
    # the ranges overlap
    "tnum_jne": (
        """\
ldxw %r0, [%r1+16]
and %r0, -2
jne %r0, 0x3f, L1
mov %r0, 5
L1:
exit
""",
        {
            "linux-6.12": """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (57) r0 &= -2
   3: (95) exit
""",
            ("linux-6.1", "linux-5.10"): """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (57) r0 &= -2
   3: (55) if r0 != 0x3f goto pc+1
   4: (b7) r0 = 5
   5: (95) exit
""",
        }),
    # verifier_branch_ranges (v6.8): the constant -1 in the destination against [0, 255] in the source
    # decides `!=`; before, only a constant source is compared
    "two_ranges": (
        """\
ldxw %r0, [%r1+16]
and %r0, 255
mov %r8, -1
jne %r8, %r0, L1
mov %r0, 5
L1:
exit
""",
        {
            "linux-6.12": """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (57) r0 &= 255
   3: (b7) r8 = -1
   4: (95) exit
""",
            ("linux-6.1", "linux-5.10"): """\
   0: (79) r0 = *(u64 *)(r1 +32)
   1: (61) r0 = *(u32 *)(r0 +8)
   2: (57) r0 &= 255
   3: (b7) r8 = -1
   4: (5d) if r8 != r0 goto pc+1
   5: (b7) r0 = 5
   6: (95) exit
""",
        }),
}


def kernel_dump(name: str, profile: str) -> str:
    return next(text for names, text in KERNEL_XLATED[name][1].items()
                if profile in (names if isinstance(names, tuple) else (names,)))


def xlated_text(name: str, profile: str) -> str:
    program = KERNEL_XLATED[name][0]
    scenario = parse_scenario(f"{MAPS}-- prog {name}\n{program}-- events\n", f"{name}.scn")
    prog = scenario.programs[0]
    verdict = verify(prog, {m.name: m for m in scenario.maps}, PROFILES[profile], prog_type=scenario.prog_type)
    return verdict.format(map_id=MAP_IDS.get)


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("name", sorted(KERNEL_XLATED))
def test_xlated_is_the_real_kernels(name: str, profile: str) -> None:
    assert xlated_text(name, profile) == kernel_dump(name, profile)


@pytest.mark.parametrize("name", sorted(set(KERNEL_XLATED) - {"st_zero"}))
def test_each_rule_is_the_612_profiles_alone(name: str) -> None:
    assert kernel_dump(name, "linux-6.12") != kernel_dump(name, "linux-6.1")   # the kernels disagree

