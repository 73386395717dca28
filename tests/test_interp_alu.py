"""ALU, jump, byte-order and memory semantics of the interpreter, property-tested.

The expected values come from a separate formulation written here with
Python's signed integers and explicit masks (C-style truncating division done
as floor division plus a correction), not from the interpreter's tables.
Facts: RFC 9669 sections 4.1-4.3 and 5, kernel/bpf/core.c.
"""

import pytest
from bpfdiff.interp.engine import InterpEngine
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfdiff.engine import ProgramRefused
from bpfdiff.isa import (
    BPF_ALU,
    BPF_ALU64,
    BPF_JMP,
    BPF_JMP32,
    BPF_K,
    BPF_X,
    EXIT_OPCODE,
    Insn,
    Program,
    lddw_pair,
)
from bpfdiff.profiles import get_profile
from bpfdiff.scenario import PROG_RAW, Run, Scenario

# ISA v4 (sdiv/smod, movsx, bswap64, sign-extending loads) exists from 6.6 on; the
# verifier model refuses it on linux-6.1, so its semantics are tested on 6.1 with the
# instruction set of a later kernel.
ENGINE = InterpEngine(get_profile("linux-6.1").with_options(name="linux-6.1+isa-v4", isa_v4=True))


def to_signed(value: int, bits: int) -> int:
    value &= (1 << bits) - 1
    return value - (1 << bits) if value >= 1 << (bits - 1) else value


def c_div(a: int, b: int) -> int:
    """C's truncating division of signed ints: floor division corrected towards zero."""
    q = a // b
    if q < 0 and q * b != a:
        q += 1
    return q


def reference_alu(name: str, bits: int, dst: int, src: int) -> int:
    """dst OP src at `bits` width, the RFC 9669 way; src already extended to the width."""
    mask = (1 << bits) - 1
    a, b = dst & mask, src & mask
    sa, sb = to_signed(a, bits), to_signed(b, bits)
    if name == "add":
        r = a + b
    elif name == "sub":
        r = a - b
    elif name == "mul":
        r = sa * sb
    elif name == "div":
        r = 0 if b == 0 else a // b
    elif name == "sdiv":
        r = 0 if b == 0 else c_div(sa, sb)        # INT_MIN / -1 wraps to INT_MIN below
    elif name == "mod":
        r = a if b == 0 else a % b
    elif name == "smod":
        r = a if b == 0 else sa - sb * c_div(sa, sb)
    elif name == "or":
        r = a | b
    elif name == "and":
        r = a & b
    elif name == "xor":
        r = a ^ b
    elif name == "lsh":
        r = a << (b % bits)
    elif name == "rsh":
        r = a >> (b % bits)
    elif name == "arsh":
        r = sa >> (b % bits)
    elif name == "mov":
        r = b
    else:
        raise AssertionError(name)
    return r & mask   # the 32-bit forms zero-extend into the upper half


# name -> (op bits, off)
ALU_OPS = {
    "add": (0x00, 0), "sub": (0x10, 0), "mul": (0x20, 0), "div": (0x30, 0), "sdiv": (0x30, 1),
    "or": (0x40, 0), "and": (0x50, 0), "lsh": (0x60, 0), "rsh": (0x70, 0), "mod": (0x90, 0),
    "smod": (0x90, 1), "xor": (0xA0, 0), "mov": (0xB0, 0), "arsh": (0xC0, 0),
}

EDGE64 = [0, 1, 2, 3, 31, 32, 63, 64, 65, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0x100000000,
          (1 << 63) - 1, 1 << 63, (1 << 64) - 1, (1 << 64) - 2, 0xFFFFFFFF80000000]
u64s = st.one_of(st.sampled_from(EDGE64), st.integers(0, (1 << 64) - 1))
s32s = st.one_of(st.sampled_from([0, 1, -1, 2, -2, 31, 32, 63, 64, -(1 << 31), (1 << 31) - 1]),
                 st.integers(-(1 << 31), (1 << 31) - 1))


def run_r0(insns: list[Insn], mem: bytes = b"") -> int:
    outcome = ENGINE.execute(Scenario(prog_type=PROG_RAW, programs=(Program("t", tuple(insns)),),
                                      events=(Run("t", mem),)))[0]
    assert outcome.run is not None and outcome.run.exit == "exit", outcome
    return outcome.run.r0


def alu_program(cls: int, opcode_op: int, off: int, source: int, a: int, b: int, imm: int) -> list[Insn]:
    return [
        *lddw_pair(1, a), *lddw_pair(2, b),
        Insn(cls | opcode_op | source, 1, 2 if source == BPF_X else 0, off, imm if source == BPF_K else 0),
        Insn(BPF_ALU64 | 0xB0 | BPF_X, 0, 1),      # mov r0, r1
        Insn(EXIT_OPCODE),
    ]


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(ALU_OPS)), is64=st.booleans(), a=u64s, b=u64s)
def test_alu_register_source(name, is64, a, b):
    op, off = ALU_OPS[name]
    bits, cls = (64, BPF_ALU64) if is64 else (32, BPF_ALU)
    got = run_r0(alu_program(cls, op, off, BPF_X, a, b, 0))
    assert got == reference_alu(name, bits, a, b), (name, bits, hex(a), hex(b))


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(ALU_OPS)), is64=st.booleans(), a=u64s, imm=s32s)
def test_alu_immediate_source_is_sign_extended(name, is64, a, imm):
    op, off = ALU_OPS[name]
    bits, cls = (64, BPF_ALU64) if is64 else (32, BPF_ALU)
    program = alu_program(cls, op, off, BPF_K, a, 0, imm)
    # check_alu_op refuses a constant shift by the width or more and a constant divisor 0
    refusal = (f"invalid shift {imm}" if op in (0x60, 0x70, 0xC0) and not 0 <= imm < bits
               else "div by zero" if op in (0x30, 0x90) and imm == 0 else None)
    if refusal is not None:
        with pytest.raises(ProgramRefused, match=f"insn 4: {refusal}$"):
            run_r0(program)
        return
    got = run_r0(program)
    # imm is sign-extended to 64 bits; for the 32-bit forms only its low half matters
    assert got == reference_alu(name, bits, a, imm & ((1 << 64) - 1)), (name, bits, hex(a), imm)


def test_division_edge_cases_by_hand():
    int_min64, int_min32 = 1 << 63, 1 << 31
    cases = [
        # (cls, op, off, a, b, expected)
        (BPF_ALU64, 0x30, 0, 7, 0, 0),                          # div by zero -> 0
        (BPF_ALU64, 0x90, 0, 7, 0, 7),                          # mod by zero -> dst
        (BPF_ALU, 0x90, 0, 0xFFFFFFFF00000007, 0, 7),           # mod32 by zero: dst, zero-extended
        (BPF_ALU, 0x30, 0, 0xFFFFFFFF00000007, 0, 0),
        (BPF_ALU64, 0x30, 1, int_min64, (1 << 64) - 1, int_min64),   # INT_MIN / -1 = INT_MIN
        (BPF_ALU64, 0x90, 1, int_min64, (1 << 64) - 1, 0),           # INT_MIN % -1 = 0
        (BPF_ALU, 0x30, 1, int_min32, 0xFFFFFFFF, int_min32),
        (BPF_ALU, 0x90, 1, int_min32, 0xFFFFFFFF, 0),
        (BPF_ALU64, 0x90, 1, (-7) & ((1 << 64) - 1), 2, (-1) & ((1 << 64) - 1)),  # sign of the dividend
        (BPF_ALU64, 0x90, 1, 7, (-2) & ((1 << 64) - 1), 1),
        (BPF_ALU64, 0x30, 1, (-7) & ((1 << 64) - 1), 2, (-3) & ((1 << 64) - 1)),  # truncation to zero
        (BPF_ALU64, 0x60, 0, 1, 65, 2),                          # shift count masked: 65 & 63 = 1
        (BPF_ALU, 0x60, 0, 1, 33, 2),                            # 33 & 31 = 1
        (BPF_ALU, 0xC0, 0, 0x80000000, 4, 0xF8000000),           # arsh32 zero-extends
        (BPF_ALU, 0x00, 0, 0xFFFFFFFF, 1, 0),                    # add32 wraps, upper half zero
    ]
    for cls, op, off, a, b, expected in cases:
        assert run_r0(alu_program(cls, op, off, BPF_X, a, b, 0)) == expected, (cls, op, off, a, b)


def test_neg_and_movsx():
    assert run_r0([*lddw_pair(0, 5), Insn(BPF_ALU64 | 0x80, 0), Insn(EXIT_OPCODE)]) == (1 << 64) - 5
    assert run_r0([*lddw_pair(0, (1 << 64) - 5), Insn(BPF_ALU | 0x80, 0), Insn(EXIT_OPCODE)]) == 5
    movsx = [(BPF_ALU64, 8, 0x80, 0xFFFFFFFFFFFFFF80), (BPF_ALU64, 16, 0x18000, 0xFFFFFFFFFFFF8000),
             (BPF_ALU64, 32, 0x1_8000_0000, 0xFFFFFFFF80000000), (BPF_ALU, 8, 0xFF, 0xFFFFFFFF),
             (BPF_ALU, 16, 0x7FFF, 0x7FFF)]
    for cls, off, value, expected in movsx:
        insns = [*lddw_pair(1, value), Insn(cls | 0xB0 | BPF_X, 0, 1, off), Insn(EXIT_OPCODE)]
        assert run_r0(insns) == expected, (cls, off, hex(value))


def test_byte_order():
    value = 0x1122334455667788
    cases = [
        (BPF_ALU, 0x00, 16, 0x7788), (BPF_ALU, 0x00, 32, 0x55667788), (BPF_ALU, 0x00, 64, value),   # le
        (BPF_ALU, 0x08, 16, 0x8877), (BPF_ALU, 0x08, 32, 0x88776655), (BPF_ALU, 0x08, 64, 0x8877665544332211),
        (BPF_ALU64, 0x00, 16, 0x8877), (BPF_ALU64, 0x00, 32, 0x88776655),                             # bswap
        (BPF_ALU64, 0x00, 64, 0x8877665544332211),
    ]
    for cls, source, width, expected in cases:
        insns = [*lddw_pair(0, value), Insn(cls | 0xD0 | source, 0, 0, 0, width), Insn(EXIT_OPCODE)]
        assert run_r0(insns) == expected, (cls, source, width)


# -- jumps -----------------------------------------------------------------------
JUMPS = {  # name -> (op bits, predicate over (unsigned a, unsigned b, signed a, signed b))
    "jeq": (0x10, lambda a, b, sa, sb: a == b), "jgt": (0x20, lambda a, b, sa, sb: a > b),
    "jge": (0x30, lambda a, b, sa, sb: a >= b), "jset": (0x40, lambda a, b, sa, sb: (a & b) != 0),
    "jne": (0x50, lambda a, b, sa, sb: a != b), "jsgt": (0x60, lambda a, b, sa, sb: sa > sb),
    "jsge": (0x70, lambda a, b, sa, sb: sa >= sb), "jlt": (0xA0, lambda a, b, sa, sb: a < b),
    "jle": (0xB0, lambda a, b, sa, sb: a <= b), "jslt": (0xC0, lambda a, b, sa, sb: sa < sb),
    "jsle": (0xD0, lambda a, b, sa, sb: sa <= sb),
}


@settings(max_examples=400, deadline=None)
@given(name=st.sampled_from(sorted(JUMPS)), is64=st.booleans(), use_imm=st.booleans(), a=u64s, b=u64s, imm=s32s)
def test_conditional_jumps(name, is64, use_imm, a, b, imm):
    op, predicate = JUMPS[name]
    bits, cls = (64, BPF_JMP) if is64 else (32, BPF_JMP32)
    source = BPF_K if use_imm else BPF_X
    operand = (imm & ((1 << 64) - 1)) if use_imm else b
    insns = [
        *lddw_pair(1, a), *lddw_pair(2, b),
        Insn(BPF_ALU64 | 0xB0, 0, 0, 0, 1),                                      # r0 = 1 (taken)
        Insn(cls | op | source, 1, 2 if not use_imm else 0, 1, imm if use_imm else 0),
        Insn(BPF_ALU64 | 0xB0, 0, 0, 0, 0),                                      # r0 = 0 (not taken)
        Insn(EXIT_OPCODE),
    ]
    ua, ub = a & ((1 << bits) - 1), operand & ((1 << bits) - 1)
    expected = predicate(ua, ub, to_signed(ua, bits), to_signed(ub, bits))
    assert run_r0(insns) == int(expected), (name, bits, hex(a), hex(operand))


def test_ja32_uses_imm():
    insns = [Insn(BPF_ALU64 | 0xB0, 0, 0, 0, 1), Insn(BPF_JMP32 | 0x00, 0, 0, 0, 1),
             Insn(BPF_ALU64 | 0xB0, 0, 0, 0, 2), Insn(EXIT_OPCODE)]
    assert run_r0(insns) == 1


# -- memory ------------------------------------------------------------------------
def test_sign_extending_loads_and_stores():
    mem = bytes([0x80, 0xFF, 0x00, 0x80, 0x01, 0x02, 0x03, 0x04])
    ldx = 0x01
    cases = [(0x80 | 0x10, 0, 0xFFFFFFFFFFFFFF80),   # ldxsb
             (0x80 | 0x08, 0, 0xFFFFFFFFFFFFFF80),   # ldxsh: 0xff80
             (0x80 | 0x00, 0, 0xFFFFFFFF8000FF80),   # ldxsw
             (0x60 | 0x10, 0, 0x80), (0x60 | 0x08, 2, 0x8000), (0x60 | 0x18, 0, 0x04030201_8000FF80)]
    for mode_size, off, expected in cases:
        insns = [Insn(ldx | mode_size, 0, 1, off), Insn(EXIT_OPCODE)]
        assert run_r0(insns, mem) == expected, hex(mode_size)
    # st imm is sign-extended then truncated; stx stores the low bytes
    insns = [Insn(0x02 | 0x60 | 0x08, 1, 0, 0, -2), *lddw_pair(2, 0x1122334455667788),
             Insn(0x03 | 0x60 | 0x10, 1, 2, 2), Insn(0x01 | 0x60 | 0x18, 0, 1, 0), Insn(EXIT_OPCODE)]
    assert run_r0(insns, bytes(8)) == 0x88FFFE


def test_atomics_fetch_and_cmpxchg():
    atomic_w, atomic_dw = 0x03 | 0xC0 | 0x00, 0x03 | 0xC0 | 0x18
    mem = (0xFFFFFFFF_00000005).to_bytes(8, "little")
    # fetch add (64): r2 gets the old value, memory the sum
    insns = [Insn(BPF_ALU64 | 0xB0, 2, 0, 0, 3), Insn(atomic_dw, 1, 2, 0, 0x01),
             Insn(0x01 | 0x60 | 0x18, 0, 1, 0), Insn(BPF_ALU64 | 0x00 | BPF_X, 0, 2), Insn(EXIT_OPCODE)]
    assert run_r0(insns, mem) == 0xFFFFFFFF_00000008 + 0xFFFFFFFF_00000005 & (1 << 64) - 1
    # cmpxchg32: compares the low half of r0, r0 gets the old value zero-extended
    insns = [*lddw_pair(0, 0xAAAAAAAA_00000005), Insn(BPF_ALU64 | 0xB0, 2, 0, 0, 9),
             Insn(atomic_w, 1, 2, 0, 0xF1), Insn(0x01 | 0x60 | 0x18, 3, 1, 0),
             Insn(BPF_ALU64 | 0x00 | BPF_X, 0, 3), Insn(EXIT_OPCODE)]
    assert run_r0(insns, mem) == 5 + 0xFFFFFFFF_00000009
    # xchg32: the register receives the old 32-bit value, zero-extended
    insns = [*lddw_pair(2, 0x77777777_00000001), Insn(atomic_w, 1, 2, 4, 0xE1),
             Insn(BPF_ALU64 | 0xB0 | BPF_X, 0, 2), Insn(EXIT_OPCODE)]
    assert run_r0(insns, mem) == 0xFFFFFFFF
