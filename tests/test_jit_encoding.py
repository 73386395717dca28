"""Encodings of the JIT's emit_* helpers and do_jit cases, against hand-assembled bytes.

Every case gives the bytes worked out by hand from the Intel SDM encodings
(REX.W/R/B, ModRM, SIB, disp8/disp32) *and* the objdump text that bytes decode
to; the second is checked through capstone, so a wrong hand-assembly and a
wrong emitter would have to agree on the same mistake twice.
"""

from __future__ import annotations

import pytest
from bpfdiff.jit import bpf_jit_comp as jc
from bpfdiff.jit.bpf_jit_comp import JitEnv, JitOptions, bpf_int_jit_compile
from bpfdiff.jit.dump import format_jited, jited_lines
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfdiff import isa
from bpfdiff.isa import Insn, Program, lddw_pair
from bpfdiff.profiles import LINUX_5_5, LINUX_6_1
from bpfdiff.scenario import PROG_RAW, MapDef

B, H, W, DW = isa.BPF_B, isa.BPF_H, isa.BPF_W, isa.BPF_DW


def listing(code: bytes) -> list[str]:
    return [f"{line.mnemonic} {line.operands}".strip() for line in jited_lines(code)]


HELPER_CASES = [
    # (emitted bytes, hand-assembled hex, objdump text per instruction)
    (jc.emit_mov_imm32(False, 0, 42), "b82a000000", ["mov $0x2a,%eax"]),
    (jc.emit_mov_imm32(True, 1, -1), "48c7c7ffffffff", ["mov $0xffffffffffffffff,%rdi"]),
    (jc.emit_mov_imm32(True, 1, 5), "bf05000000", ["mov $0x5,%edi"]),
    (jc.emit_mov_imm32(False, 5, 0), "4531c0", ["xor %r8d,%r8d"]),
    (jc.emit_mov_imm32(False, 7, 1), "41bd01000000", ["mov $0x1,%r13d"]),
    (jc.emit_mov_imm64(2, 0x7888_8000_0000), "48be0000008088780000", ["movabs $0x788880000000,%rsi"]),
    (jc.emit_mov_imm64(0, 0xFFFF_FFFF), "b8ffffffff", ["mov $0xffffffff,%eax"]),
    (jc.emit_mov_imm64(9, 1 << 63), "49bf0000000000000080", ["movabs $0x8000000000000000,%r15"]),
    (jc.emit_mov_reg(True, 6, 1), "4889fb", ["mov %rdi,%rbx"]),
    (jc.emit_mov_reg(True, 1, 1), "", []),
    (jc.emit_mov_reg(False, 1, 1), "89ff", ["mov %edi,%edi"]),
    (jc.emit_mov_reg(False, 9, 7), "4589ef", ["mov %r13d,%r15d"]),
    (jc.emit_movsx_reg(8, True, 0, 1), "480fbec7", ["movsbq %dil,%rax"]),
    (jc.emit_movsx_reg(16, True, 3, 2), "480fbfd6", ["movswq %si,%rdx"]),
    (jc.emit_movsx_reg(32, True, 0, 5), "4963c0", ["movslq %r8d,%rax"]),
    (jc.emit_movsx_reg(8, False, 0, 6), "400fbec3", ["movsbl %bl,%eax"]),
    (jc.emit_movsx_reg(16, False, 7, 1), "440fbfef", ["movswl %di,%r13d"]),
    (jc.emit_ldx(B, 0, 1, 10), "480fb6470a", ["movzbq 0xa(%rdi),%rax"]),
    (jc.emit_ldx(H, 3, 2, -2), "480fb756fe", ["movzwq -0x2(%rsi),%rdx"]),
    (jc.emit_ldx(W, 0, 10, -4), "8b45fc", ["mov -0x4(%rbp),%eax"]),
    (jc.emit_ldx(W, 5, 1, 0), "448b4700", ["mov 0x0(%rdi),%r8d"]),
    (jc.emit_ldx(DW, 7, 10, -512), "4c8bad00feffff", ["mov -0x200(%rbp),%r13"]),
    (jc.emit_ldsx(B, 0, 1, 0), "480fbe4700", ["movsbq 0x0(%rdi),%rax"]),
    (jc.emit_ldsx(W, 1, 2, 4), "48637e04", ["movslq 0x4(%rsi),%rdi"]),
    (jc.emit_stx(B, 10, 1, -1), "40887dff", ["mov %dil,-0x1(%rbp)"]),
    (jc.emit_stx(B, 1, 0, 0), "884700", ["mov %al,0x0(%rdi)"]),
    (jc.emit_stx(H, 1, 0, 2), "66894702", ["mov %ax,0x2(%rdi)"]),
    (jc.emit_stx(W, 8, 9, 300), "4589be2c010000", ["mov %r15d,0x12c(%r14)"]),
    (jc.emit_stx(DW, 10, 6, -8), "48895df8", ["mov %rbx,-0x8(%rbp)"]),
    (jc.emit_st_imm(W, 10, -4, 7), "c745fc07000000", ["movl $0x7,-0x4(%rbp)"]),
    (jc.emit_st_imm(DW, 1, 0, -1), "48c74700ffffffff", ["movq $0xffffffffffffffff,0x0(%rdi)"]),
    (jc.emit_st_imm(B, 5, 1, 0x1FF), "41c64001ff", ["movb $0xff,0x1(%r8)"]),
    (jc.emit_st_imm(H, 1, -200, 0x1234), "66c78738ffffff3412", ["movw $0x1234,-0xc8(%rdi)"]),
    (jc.emit_atomic(isa.BPF_ADD, 1, 0, 0, DW), "f0480147 00".replace(" ", ""), ["lock add %rax,0x0(%rdi)"]),
    (jc.emit_atomic(isa.BPF_ADD | isa.BPF_FETCH, 10, 1, -8, W), "f00fc17df8", ["lock xadd %edi,-0x8(%rbp)"]),
    (jc.emit_atomic(isa.BPF_XCHG, 1, 2, 0, DW), "f048877700", ["lock xchg %rsi,0x0(%rdi)"]),
    (jc.emit_atomic(isa.BPF_CMPXCHG, 1, 2, 0, DW), "f0480fb17700", ["lock cmpxchg %rsi,0x0(%rdi)"]),
    (jc.emit_atomic(isa.BPF_XOR, 9, 8, 16, W), "f0453177 10".replace(" ", ""), ["lock xor %r14d,0x10(%r15)"]),
    (jc.emit_call(0x1000, 0x0), "e8fb0f0000", ["callq 0x0000000000001000"]),
    (jc.emit_jump(0x0, 0x100), "e9fbfeffff", ["jmpq 0xffffffffffffff00"]),
    (jc.push_callee_regs(jc.ALL_CALLEE_REGS), "53415541564157", ["push %rbx", "push %r13", "push %r14", "push %r15"]),
    (jc.pop_callee_regs((True, False, True, False)), "415e5b", ["pop %r14", "pop %rbx"]),
    (jc.emit_return(True), "c3cc", ["retq", "int3"]),
    (jc.retpoline_thunk(1), "e807000000f3900faee8ebf948890c24c3",
     ["callq 0x000000000000000c", "pause", "lfence", "jmp 0x0000000000000005", "mov %rcx,(%rsp)", "retq"]),
    (jc.emit_indirect_jump_thunk(1, 0, True, True, None), "ffe1cc", ["jmpq *%rcx", "int3"]),
    (jc.emit_indirect_jump_thunk(1, 0x1000, True, True, lambda reg: 0x2000 + 32 * reg), "e91b100000",
     ["jmpq 0x0000000000001020"]),
    (jc.emit_nops(11), "0f1f840000000000" + "0f1f00", ["nopl 0x0(%rax,%rax,1)", "nopl (%rax)"]),
]


@pytest.mark.parametrize("code, expected_hex, expected_text", HELPER_CASES)
def test_emit_helper(code: bytes, expected_hex: str, expected_text: list[str]) -> None:
    assert code.hex() == expected_hex
    assert listing(code) == expected_text


def alu(cls: int, op: int, dst: int, src: int = 0, imm: int = 0, off: int = 0, source: int = isa.BPF_K) -> Insn:
    return Insn(cls | op | source, dst, src, off, imm)


A64, A32 = isa.BPF_ALU64, isa.BPF_ALU
X = isa.BPF_X

INSN_CASES = [
    (alu(A64, isa.BPF_ADD, 0, imm=1), "4883c001", ["add $0x1,%rax"]),
    (alu(A64, isa.BPF_ADD, 0, imm=1000), "4805e8030000", ["add $0x3e8,%rax"]),
    (alu(A64, isa.BPF_ADD, 1, imm=1000), "4881c7e8030000", ["add $0x3e8,%rdi"]),
    (alu(A32, isa.BPF_SUB, 7, imm=5), "4183ed05", ["sub $0x5,%r13d"]),
    (alu(A32, isa.BPF_XOR, 0, imm=-1), "83f0ff", ["xor $0xffffffff,%eax"]),
    (alu(A64, isa.BPF_AND, 3, 9, source=X), "4c21fa", ["and %r15,%rdx"]),
    (alu(A32, isa.BPF_OR, 5, 1, source=X), "4109f8", ["or %edi,%r8d"]),
    (alu(A64, isa.BPF_LSH, 1, imm=1), "48d1e7", ["shl %rdi"]),
    (alu(A32, isa.BPF_ARSH, 0, imm=3), "c1f803", ["sar $0x3,%eax"]),
    (alu(A64, isa.BPF_LSH, 1, 2, source=X), "514889f148d3e759",
     ["push %rcx", "mov %rsi,%rcx", "shl %cl,%rdi", "pop %rcx"]),
    # rcx as destination: shifted in r11, and (up to 6.1) rcx still saved around the shift
    (alu(A64, isa.BPF_RSH, 4, 2, source=X), "4989cb514889f149d3eb594c89d9",
     ["mov %rcx,%r11", "push %rcx", "mov %rsi,%rcx", "shr %cl,%r11", "pop %rcx", "mov %r11,%rcx"]),
    (alu(A32, isa.BPF_LSH, 4, 4, source=X), "4989cb41d3e34c89d9",
     ["mov %rcx,%r11", "shl %cl,%r11d", "mov %r11,%rcx"]),
    (alu(A32, isa.BPF_ARSH, 0, 4, source=X), "d3f8", ["sar %cl,%eax"]),
    (alu(A64, isa.BPF_DIV, 1, 2, source=X), "50524889f831d248f7f64889c75a58",
     ["push %rax", "push %rdx", "mov %rdi,%rax", "xor %edx,%edx", "div %rsi", "mov %rax,%rdi", "pop %rdx",
      "pop %rax"]),
    (alu(A32, isa.BPF_MOD, 0, imm=7), "5249c7c30700000031d241f7f389d05a",
     ["push %rdx", "mov $0x7,%r11", "xor %edx,%edx", "div %r11d", "mov %edx,%eax", "pop %rdx"]),
    (alu(A64, isa.BPF_DIV, 3, 0, off=1, source=X), "504989c34889d0489949f7fb4889c258",
     ["push %rax", "mov %rax,%r11", "mov %rdx,%rax", "cqto", "idiv %r11", "mov %rax,%rdx", "pop %rax"]),
    (alu(A32, isa.BPF_MOD, 1, 2, off=1, source=X), "505289f899f7fe89d75a58",
     ["push %rax", "push %rdx", "mov %edi,%eax", "cltd", "idiv %esi", "mov %edx,%edi", "pop %rdx", "pop %rax"]),
    (alu(A64, isa.BPF_MUL, 1, imm=3), "486bff03", ["imul $0x3,%rdi,%rdi"]),
    (alu(A64, isa.BPF_MUL, 1, imm=300), "4869ff2c010000", ["imul $0x12c,%rdi,%rdi"]),
    (alu(A32, isa.BPF_MUL, 0, 7, source=X), "410fafc5", ["imul %r13d,%eax"]),
    (alu(A64, isa.BPF_NEG, 6), "48f7db", ["neg %rbx"]),
    (alu(A32, isa.BPF_MOV, 0, imm=-1), "b8ffffffff", ["mov $0xffffffff,%eax"]),
    (alu(A64, isa.BPF_MOV, 0, 1, off=16, source=X), "480fbfc7", ["movswq %di,%rax"]),
    (alu(A32, isa.BPF_END, 1, imm=16, source=isa.BPF_TO_BE), "66c1cf080fb7ff", ["ror $0x8,%di", "movzwl %di,%edi"]),
    (alu(A32, isa.BPF_END, 5, imm=16, source=isa.BPF_TO_BE), "6641c1c808450fb7c0",
     ["ror $0x8,%r8w", "movzwl %r8w,%r8d"]),
    (alu(A32, isa.BPF_END, 5, imm=32, source=isa.BPF_TO_BE), "410fc8", ["bswap %r8d"]),
    (alu(A32, isa.BPF_END, 0, imm=64, source=isa.BPF_TO_BE), "480fc8", ["bswap %rax"]),
    (alu(A64, isa.BPF_END, 2, imm=32), "0fce", ["bswap %esi"]),
    (alu(A32, isa.BPF_END, 1, imm=16), "0fb7ff", ["movzwl %di,%edi"]),
    (alu(A32, isa.BPF_END, 7, imm=32), "4589ed", ["mov %r13d,%r13d"]),
    (alu(A32, isa.BPF_END, 7, imm=64), "", []),
    (Insn(isa.BPF_STX | isa.BPF_ATOMIC | DW, 1, 0, 0, isa.BPF_OR | isa.BPF_FETCH),
     "4989c2488b4700" "4989c3" "4d09d3" "f04c0fb15f00" "75ee" "4989c2" "4c89d0",
     # r0 is the source: it is kept in r10 (BPF_REG_AX) through the loop and gets the old value
     ["mov %rax,%r10", "mov 0x0(%rdi),%rax", "mov %rax,%r11", "or %r10,%r11", "lock cmpxchg %r11,0x0(%rdi)",
      "jne 0x0000000000000003", "mov %rax,%r10", "mov %r10,%rax"]),
]


SEED_ERA_CASES = [
    # v5.5 flavour: div/mod always through r11 with rax/rdx saved, mul through `mul r11`
    (alu(A64, isa.BPF_DIV, 1, 2, source=X), "50524989f34889f831d249f7f34989c35a584c89df",
     ["push %rax", "push %rdx", "mov %rsi,%r11", "mov %rdi,%rax", "xor %edx,%edx", "div %r11", "mov %rax,%r11",
      "pop %rdx", "pop %rax", "mov %r11,%rdi"]),
    (alu(A32, isa.BPF_MOD, 0, imm=7), "505249c7c30700000031d241f7f34989d35a584c89d8",
     ["push %rax", "push %rdx", "mov $0x7,%r11", "xor %edx,%edx", "div %r11d", "mov %rdx,%r11", "pop %rdx",
      "pop %rax", "mov %r11,%rax"]),
    (alu(A64, isa.BPF_MUL, 1, 2, source=X), "50524989fb4889f049f7e35a4889c758",
     ["push %rax", "push %rdx", "mov %rdi,%r11", "mov %rsi,%rax", "mul %r11", "pop %rdx", "mov %rax,%rdi",
      "pop %rax"]),
    (alu(A32, isa.BPF_MUL, 0, imm=3), "524989c3b80300000041f7e35a",
     ["push %rdx", "mov %rax,%r11", "mov $0x3,%eax", "mul %r11d", "pop %rdx"]),
]


@pytest.mark.parametrize("insn, expected_hex, expected_text", SEED_ERA_CASES)
def test_seed_era_arithmetic(insn: Insn, expected_hex: str, expected_text: list[str]) -> None:
    code = jit_single(insn, LINUX_5_5)
    assert code.hex() == expected_hex
    assert listing(code) == expected_text


def jit_single(insn: Insn, profile=LINUX_6_1) -> bytes:
    """The bytes do_jit gives one instruction (between the prologue and the exit)."""
    fn = make_fn([insn, Insn(isa.EXIT_OPCODE)], profile)
    code, addrs, _, _ = jc.jit_function(fn)
    return code[addrs[0]:addrs[1]]


def make_fn(insns: list[Insn], profile=LINUX_6_1, bugs: frozenset[str] = frozenset()) -> jc.FuncJit:
    env = JitEnv(alloc_image=lambda n: 0x1000, helper_addr=lambda i: 0x10_0000 + i, map_addr=lambda m: 0,
                 map_value_addr=lambda m: 0)
    fn = jc.FuncJit(name="t", func_index=0, insns=insns, first_insn=0, orig_pc=list(range(len(insns))),
                    stack_depth=0, tail_call_reachable=False, is_subprog=False, profile=profile, env=env,
                    options=JitOptions(bugs=bugs), retpoline=True, pokes={}, func_addr=lambda k: None,
                    flavour=jc.FLAVOURS[profile.jit_prologue])
    fn.callee_regs_used, _ = jc.detect_reg_usage(insns)
    return fn


@pytest.mark.parametrize("insn, expected_hex, expected_text", INSN_CASES)
def test_do_jit_instruction(insn: Insn, expected_hex: str, expected_text: list[str]) -> None:
    code = jit_single(insn)
    assert code.hex() == expected_hex
    assert listing(code) == expected_text


@pytest.mark.parametrize("opcode, imm, src, expected_cmp, expected_jcc", [
    (isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K, 0, 0, "test %rdi,%rdi", "je"),
    (isa.BPF_JMP32 | isa.BPF_JGT | isa.BPF_K, 1000, 0, "cmp $0x3e8,%edi", "ja"),
    (isa.BPF_JMP | isa.BPF_JSET | isa.BPF_X, 0, 2, "test %rsi,%rdi", "jne"),
    (isa.BPF_JMP | isa.BPF_JSLT | isa.BPF_X, 0, 7, "cmp %r13,%rdi", "jl"),
    (isa.BPF_JMP32 | isa.BPF_JSET | isa.BPF_K, 6, 0, "test $0x6,%edi", "jne"),
    (isa.BPF_JMP | isa.BPF_JSGE | isa.BPF_K, -2, 0, "cmp $0xfffffffffffffffe,%rdi", "jge"),
])
def test_conditional_jump(opcode: int, imm: int, src: int, expected_cmp: str, expected_jcc: str) -> None:
    insns = [Insn(opcode, 1, src, 1, imm), Insn(0xB7, 0, 0, 0, 1), Insn(isa.EXIT_OPCODE)]
    fn = make_fn(insns)
    code, addrs, _, _ = jc.jit_function(fn)
    lines = listing(code[addrs[0]:addrs[1]])
    assert lines[0] == expected_cmp and lines[1].split()[0] == expected_jcc
    # the jump skips exactly the 5-byte mov $1,%eax
    assert code[addrs[1] - 1] == 5


def test_jump_sizes_follow_distance_and_converge() -> None:
    """imm8 while the target is near (see the 123/124-byte test below), imm32 beyond, as the pass loop settles."""
    filler = [Insn(0xB7, 0, 0, 0, 1000 + k) for k in range(30)]            # 5 bytes each
    cases = [
        # (program, index of the jump, its target, expected mnemonic and size of the jump)
        ([Insn(isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K, 1, 0, 20, 0)] + filler + [Insn(isa.EXIT_OPCODE)], 0, 21,
         "je", 2),
        ([Insn(isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K, 1, 0, 30, 0)] + filler + [Insn(isa.EXIT_OPCODE)], 0, 31,
         "je", 6),
        (filler + [Insn(isa.BPF_JMP | isa.BPF_JA, 0, 0, -31, 0), Insn(isa.EXIT_OPCODE)], 30, 0, "jmpq", 5),
        (filler[:5] + [Insn(isa.BPF_JMP | isa.BPF_JA, 0, 0, -6, 0), Insn(isa.EXIT_OPCODE)], 5, 0, "jmp", 2),
    ]
    for insns, index, target, mnemonic, size in cases:
        code, addrs, _, passes = jc.jit_function(make_fn(insns))
        lines = {line.offset: line for line in jited_lines(code)}
        jump = [line for line in lines.values() if addrs[index] <= line.offset < addrs[index + 1]][-1]
        assert (jump.mnemonic, jump.size) == (mnemonic, size)
        assert int(jump.operands, 16) == addrs[target]
        assert passes <= 5


# 24 x `mov $imm32,%eax` (b8 + imm32, 5 bytes) = 120 bytes, then 3 or 4 more bytes:
# `add $0x1,%eax` (83 c0 01) or `add $0x1,%rax` (48 83 c0 01).
SHORT_JUMP_BODY = {123: [Insn(0xB4, 0, 0, 0, 1000 + k) for k in range(24)] + [Insn(0x04, 0, 0, 0, 1)],
                   124: [Insn(0xB4, 0, 0, 0, 1000 + k) for k in range(24)] + [Insn(0x07, 0, 0, 0, 1)]}


@pytest.mark.parametrize("distance", [123, 124])
@pytest.mark.parametrize("profile", [LINUX_6_1, LINUX_5_5])
@pytest.mark.parametrize("jump", [Insn(isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K, 1, 0, 25, 0),
                                  Insn(isa.BPF_JMP | isa.BPF_JA, 0, 0, 25, 0)])
def test_short_jumps_reach_123_bytes_forward_on_6_1_and_127_before(distance, profile, jump) -> None:
    # Debian's 6.1.192 carries the 6.1.y backport of the pass-loop convergence fix:
    # is_imm8_jmp_offset() allows the 2-byte jcc/jmp only up to +123.  The seed-era
    # kernel used is_imm8(): up to +127.  (The old test above only looked at 100 and 150.)
    body = SHORT_JUMP_BODY[distance]
    assert sum(len(jit_single(insn, profile)) for insn in body) == distance
    code, addrs, _, _ = jc.jit_function(make_fn([jump] + body + [Insn(isa.EXIT_OPCODE)], profile))
    emitted = code[addrs[0]:addrs[1]]
    short = distance <= profile.jit_imm8_jmp_max
    assert profile.jit_imm8_jmp_max == (123 if profile is LINUX_6_1 else 127)
    if jump.op == isa.BPF_JA:
        expected = ("eb" + f"{distance:02x}") if short else ("e9" + distance.to_bytes(4, "little").hex())
    else:
        expected = ("74" + f"{distance:02x}") if short else ("0f84" + distance.to_bytes(4, "little").hex())
    assert emitted.hex().endswith(expected)
    assert addrs[1] + distance == addrs[len(body) + 1]   # lands on the exit


def test_ja_minus_one_is_jmp_to_itself_and_ja_zero_is_removed() -> None:
    code = jit_single(Insn(isa.BPF_JMP | isa.BPF_JA, 0, 0, -1, 0))
    assert code.hex() == "ebfe"
    env = JitEnv(alloc_image=lambda n: 0x10000, helper_addr=lambda i: 0, map_addr=lambda m: 0,
                 map_value_addr=lambda m: 0)
    prog = Program("p", (Insn(0xB7, 0, 0, 0, 1), Insn(isa.BPF_JMP | isa.BPF_JA), Insn(isa.EXIT_OPCODE)))
    jited = bpf_int_jit_compile(prog, {}, LINUX_6_1, env, JitOptions(), lambda m, k: None)
    assert len(jited.xlated) == 2 and jited.images[0].orig_pc == [0, 2]


def test_second_exit_jumps_to_the_epilogue() -> None:
    insns = [Insn(isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K, 1, 0, 1, 0), Insn(isa.EXIT_OPCODE),
             Insn(0xB7, 0, 0, 0, 2), Insn(isa.EXIT_OPCODE)]
    code, addrs, ctx, _ = jc.jit_function(make_fn(insns))
    assert ctx.cleanup_addr == addrs[1]
    last = code[addrs[3]:addrs[4]]
    assert last[0] == 0xEB and addrs[4] + int.from_bytes(last[1:], "little", signed=True) == addrs[1]


def test_alu32_no_zext_bug_is_add32_only() -> None:
    good = jit_single(alu(A32, isa.BPF_ADD, 1, 2, source=X))
    fn = make_fn([alu(A32, isa.BPF_ADD, 1, 2, source=X), Insn(isa.EXIT_OPCODE)], bugs=frozenset({"alu32-no-zext"}))
    code, addrs, _, _ = jc.jit_function(fn)
    assert good.hex() == "01f7" and code[addrs[0]:addrs[1]].hex() == "4801f7"
    fn = make_fn([alu(A32, isa.BPF_SUB, 1, 2, source=X), Insn(isa.EXIT_OPCODE)], bugs=frozenset({"alu32-no-zext"}))
    code, addrs, _, _ = jc.jit_function(fn)
    assert code[addrs[0]:addrs[1]].hex() == "29f7"


# -- whole programs: prologue shapes, stack depth, helper and bpf-to-bpf calls ------------------
class Env:
    def __init__(self) -> None:
        self.next = 0x7FFF_A000_0000
        self.env = JitEnv(alloc_image=self.alloc, helper_addr=lambda i: 0x7FFF_8100_0000 + 8 * i,
                          map_addr=lambda m: 0x7888_8000_0000, map_value_addr=lambda m: 0x7888_8000_0110)

    def alloc(self, size: int) -> int:
        addr = self.next
        self.next += (size + 15) & ~15
        return addr

    def jit(self, insns, profile=LINUX_6_1, maps=None, **options):
        # instruction encodings, R1 as plain memory: no XDP context rewrite
        return bpf_int_jit_compile(Program("p", tuple(insns)), maps or {}, profile, self.env,
                                   JitOptions(**options), lambda m, k: None, PROG_RAW)


def test_stack_depth_from_frame_pointer_accesses() -> None:
    env = Env()
    direct = env.jit([Insn(isa.BPF_STX | isa.BPF_MEM | DW, 10, 1, -8), Insn(0xB7, 0, 0, 0, 0),
                      Insn(isa.EXIT_OPCODE)])
    via_reg = env.jit([Insn(0xBF, 2, 10), Insn(0x07, 2, 0, 0, -20), Insn(isa.BPF_ST | isa.BPF_MEM | B, 2, 0, 3, 1),
                       Insn(0xB7, 0, 0, 0, 0), Insn(isa.EXIT_OPCODE)])
    escaping = env.jit([Insn(0xBF, 2, 10), Insn(isa.BPF_STX | isa.BPF_MEM | DW, 1, 2, 0), Insn(0xB7, 0, 0, 0, 0),
                        Insn(isa.EXIT_OPCODE)])
    assert [j.images[0].stack_depth for j in (direct, via_reg, escaping)] == [8, 17, 512]
    assert listing(direct.images[0].code)[:5] == ["nopl 0x0(%rax,%rax,1)", "xchg %ax,%ax", "push %rbp",
                                                  "mov %rsp,%rbp", "sub $0x8,%rsp"]
    assert "sub $0x18,%rsp" in listing(via_reg.images[0].code)    # round_up(17, 8)


def test_helper_call_and_value_load() -> None:
    env = Env()
    # one element: array_map_direct_value_addr refuses map_value loads on larger arrays
    # (the verifier model does, for the JIT as for the interpreter)
    maps = {"arr": MapDef("arr", "array", 4, 8, 1)}
    # helper 9: a call the verifier leaves to the helper's id (7, get_prandom_u32, is now
    # rewritten to bpf_user_rnd_u32: tests/test_verifier.py); the JIT calls env.helper_addr(9)
    insns = [*lddw_pair(1, 0, src=isa.BPF_PSEUDO_MAP_VALUE, map="arr"), Insn(0x85, 0, 0, 0, 9),
             Insn(isa.EXIT_OPCODE)]
    jited = env.jit(insns, maps=maps)
    image = jited.images[0]
    code = image.code
    call_at = image.addrs[2]
    assert code[call_at] == 0xE8
    assert image.base + call_at + 5 + int.from_bytes(code[call_at + 1:call_at + 5], "little", signed=True) == \
        0x7FFF_8100_0000 + 8 * 9
    assert "movabs $0x788880000110,%rdi" in listing(code)
    assert image.insn_at(image.base + call_at + 2) == 2 and image.insn_at(image.base + image.addrs[0]) == 0
    assert image.insn_at(image.base) is None


def subprog_program(tail_call: bool) -> list[Insn]:
    """main: call sub; exit -- sub: [tail call through r2/r3]; r0 = 1; exit."""
    body = [*lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="pa"), Insn(0xB7, 3, 0, 0, 0),
            Insn(0x85, 0, 0, 0, isa.BPF_FUNC_tail_call)] if tail_call else []
    return [Insn(0x85, 0, isa.BPF_PSEUDO_CALL, 0, 1), Insn(isa.EXIT_OPCODE), *body, Insn(0xB7, 0, 0, 0, 1),
            Insn(isa.EXIT_OPCODE)]


MAPS_PA = {"pa": MapDef("pa", "prog_array", 4, 4, 2)}


@pytest.mark.parametrize("bug, reload", [("", "mov -0x8(%rbp),%rax"), ("subprog-counter-reset", "mov $0x0,%rax")])
def test_v61_counter_is_passed_to_subprograms(bug: str, reload: str) -> None:
    env = Env()
    jited = env.jit(subprog_program(True), maps=MAPS_PA, bugs=frozenset({bug} - {""}))
    main, sub = jited.images
    assert main.tail_call_reachable and sub.tail_call_reachable
    main_lines, sub_lines = listing(main.code), listing(sub.code)
    assert main_lines[1] == "xor %eax,%eax" and main_lines[4] == "push %rax"
    assert main_lines[5] == reload and main_lines[6].startswith("callq")
    call_at = main.addrs[0] + 7
    rel = int.from_bytes(main.code[call_at + 1:call_at + 5], "little", signed=True)
    assert main.base + call_at + 5 + rel == sub.base
    assert sub_lines[1] == "xchg %ax,%ax" and sub_lines[4] == "push %rax"     # the callee keeps rax
    assert sub.pokes and sub.pokes[0].insn_idx == 5 and not main.pokes
    assert sub.insn_at(sub.base + sub.addrs[1]) == 4   # pc 4 (after the lddw pair at 2) as loaded


def test_without_tail_calls_subprograms_get_no_counter() -> None:
    main, sub = Env().jit(subprog_program(False)).images
    assert not main.tail_call_reachable and listing(main.code)[1] == "xchg %ax,%ax"
    assert "push %rax" not in listing(main.code)


def test_seed_era_refuses_tail_calls_with_subprograms() -> None:
    with pytest.raises(ValueError, match="tail_calls are not allowed"):
        Env().jit(subprog_program(True), profile=LINUX_5_5, maps=MAPS_PA)


def test_format_jited_text() -> None:
    text = format_jited(bytes.fromhex("0f1f4400006690c3cc"))
    assert text == "   0:\tnopl   0x0(%rax,%rax,1)\n   5:\txchg   %ax,%ax\n   7:\tretq\n   8:\tint3\n"


def test_stack_pointer_walking_in_a_loop_gets_the_full_stack() -> None:
    """r2 = r10; loop: r2 -= 8; *(u64 *)(r2 + 0) = 0 -- the depth grows per iteration."""
    insns = [Insn(0xBF, 2, 10), Insn(0xB7, 3, 0, 0, 4), Insn(0x07, 2, 0, 0, -8),
             Insn(isa.BPF_ST | isa.BPF_MEM | DW, 2, 0, 0, 0), Insn(0x07, 3, 0, 0, -1),
             Insn(isa.BPF_JMP | isa.BPF_JNE | isa.BPF_K, 3, 0, -4, 0), Insn(0xB7, 0, 0, 0, 0), Insn(isa.EXIT_OPCODE)]
    assert Env().jit(insns).images[0].stack_depth == 512


# -- property: whatever the program, the image decodes and every branch lands on a slot start --------
ALU_OPS = [isa.BPF_ADD, isa.BPF_SUB, isa.BPF_MUL, isa.BPF_DIV, isa.BPF_OR, isa.BPF_AND, isa.BPF_LSH, isa.BPF_RSH,
           isa.BPF_MOD, isa.BPF_XOR, isa.BPF_MOV, isa.BPF_ARSH]
JMP_OPS = sorted(jc.JMP_COND)


@st.composite
def straight_programs(draw) -> list[Insn]:
    n = draw(st.integers(2, 40))
    insns: list[Insn] = []
    for k in range(n):
        kind = draw(st.sampled_from(["alu", "alu", "jmp", "mem"]))
        dst, src = draw(st.integers(0, 9)), draw(st.integers(0, 9))
        imm = draw(st.sampled_from([0, 1, -1, 7, 127, 128, -129, 1 << 20, -(1 << 31)]))
        if kind == "alu":
            op = draw(st.sampled_from(ALU_OPS))
            cls = draw(st.sampled_from([A64, A32]))
            source = draw(st.sampled_from([isa.BPF_K, X]))
            if op in (isa.BPF_DIV, isa.BPF_MOD) and source == isa.BPF_K and imm == 0:
                imm = 3
            if op in (isa.BPF_LSH, isa.BPF_RSH, isa.BPF_ARSH) and source == isa.BPF_K:
                imm &= 31
            insns.append(Insn(cls | op | source, dst, src if source == X else 0, 0, 0 if source == X else imm))
        elif kind == "jmp":
            remaining = n - k - 1
            off = draw(st.integers(0, remaining))
            op = draw(st.sampled_from(JMP_OPS))
            insns.append(Insn(draw(st.sampled_from([isa.BPF_JMP, isa.BPF_JMP32])) | op | isa.BPF_K, dst, 0, off, imm))
        else:
            size = draw(st.sampled_from([B, H, W, DW]))
            insns.append(Insn(isa.BPF_STX | isa.BPF_MEM | size, 10, dst, -8 * draw(st.integers(1, 60))))
    return insns + [Insn(0xB7, 0, 0, 0, 0), Insn(isa.EXIT_OPCODE)]


@settings(max_examples=60, deadline=None)
@given(straight_programs(), st.sampled_from([LINUX_6_1, LINUX_5_5]))
def test_images_decode_and_branches_land_on_slot_starts(insns: list[Insn], profile) -> None:
    jited = Env().jit(insns, profile=profile)
    image = jited.images[0]
    lines = jited_lines(image.code)
    assert all(line.mnemonic != "(bad)" for line in lines)
    boundaries = {line.offset for line in lines} | {len(image.code)}
    assert set(image.addrs) <= boundaries
    starts = set(image.addrs)
    for line in lines:
        if line.mnemonic.startswith("j") and line.operands.startswith("0x"):
            assert int(line.operands, 16) in starts
