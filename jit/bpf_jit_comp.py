"""A Python port of the kernel's x86-64 eBPF JIT (arch/x86/net/bpf_jit_comp.c).

Written from the kernel's facts (encodings, order of checks, offsets), not its
text.  Every ``emit_*`` helper returns the bytes of the x86 instruction(s) it is
named after, so each can be checked on its own against hand-assembled bytes.

JIT *flavours* (``Profile.jit_prologue``), chosen by data in
:data:`FLAVOURS`, never by a profile name.  ``v5.10`` and ``v6.12`` share
the ``v6.1`` tail-call emitters; what differs is profile data: the 5-byte nop
(``jit_nop5``: 5.10's ``66 66 66 66 90``), IBT's ``endbr64`` first and after
``mov rbp,rsp`` (``jit_ibt``, 6.12), SLS, and how the counter reaches
subprograms (``jit_tail_call_cnt``: by value in rax up to 6.9; from 6.10,
116e04ba1459, ``tail_call_cnt_ptr``: ``xor rax,rax``/nop3 in the prologue, the
count and a pointer to it pushed below the frame, ``cmp qword [rax],MAX``
and ``add qword [rax],1`` after the NULL check / the bypass, two ``pop rax``).
``v5.10`` keeps the pre-5.16 div/mul, ``v6.12`` the 6.2 register shift.

``v6.1``  (Debian bookworm's 6.1, reproduced byte for byte by the fixtures)
    prologue ``nop5; xor eax,eax | nop2; push rbp; mov rbp,rsp; [sub rsp,N];
    [push rax]; push <used callee regs>``.  The tail-call counter lives in rax
    at entry and in the pushed slot, read as the dword at
    ``rbp - round_up(stack,8) - 4``; bpf-to-bpf (and helper) calls of a
    tail-call-reachable function reload rax from the slot first.  Direct tail
    calls: counter check, *bypass* ``jmp`` over the pops and the site, the pops,
    ``pop rax``, ``add rsp``, 5-byte site.  Indirect: bounds, counter, NULL,
    pops, ``jmp`` through ``__x86_indirect_thunk_rcx`` (retpoline) or
    ``jmp *%rcx; int3``.  ``ret`` is followed by ``int3`` (CONFIG_SLS).
``v5.5``  (the seed commit of direct tail calls)
    fixed 25-byte prologue ``nop5; push rbp; mov rbp,rsp; sub rsp,imm32; push
    rbx,r13,r14,r15; pushq $0`` (the counter); the tail call skips all of it and
    reuses the caller's frame.  Counter at the fixed ``rbp-0x224``; direct site
    without bypass; indirect through an inline retpoline on rax.

Instructions outside the tail-call machinery are emitted as today's kernel
does in both flavours.  Anachronisms, on purpose (documented, not hidden):
ISA v4 instructions that 6.1 and 5.5 did not have -- ``movsx`` (MOV with
off 8/16/32), sign-extending loads (BPF_MEMSX), ``sdiv``/``smod`` (off 1),
unconditional ``bswap`` (ALU64 END) and ``gotol`` (JMP32 JA) -- are JITed as
the current kernel does; register shifts use the ``shl/shr/sar %cl`` form, as
on a CPU without BMI2 (qemu's default CPU, where the fixtures were taken);
division uses the 6.1-era ``push rax/rdx; [mov r11, src]; mov rax,dst; xor
edx,edx; div`` and ``imul`` sequences (5.16+) in the v6.1 flavour and the older
``div r11`` / ``mul r11`` ones (as the v5.10 tree has them, the nearest tree
read) in the v5.5 flavour; register shifts keep rcx saved around the shift
even when it is the destination, as up to 6.1 (6.2 changed it).

Public API (used by the JIT engine; keep stable): :class:`JitEnv`,
:class:`JitOptions`, :class:`JitImage`, :class:`JitProgram`,
:func:`bpf_int_jit_compile`.  Optional env hook ``JitEnv.indirect_thunk_addr``
(x86 register number -> address of ``__x86_indirect_thunk_<reg>``; place
:func:`retpoline_thunk` bytes there): without it the v6.1 indirect tail call
uses the non-retpoline ``jmp *%rcx; int3``, which behaves the same.

Planted bugs living here: ``tail-call-limit-ja`` (the counter test uses ``ja``),
``tail-call-offset`` (X86_TAIL_CALL_OFFSET / PROLOGUE_SIZE one too big, in the
direct pokes' ``adj_off`` and the indirect ``add``), ``subprog-counter-reset``
(bpf-to-bpf calls pass a zero counter instead of reloading it), ``alu32-no-zext``
(``add32`` with a register source is emitted with REX.W, so the upper half is
not zeroed).

About the ``tail-call-offset`` miscount: no constant offset error is silent for
every target.  Landing earlier re-runs ``push rbp; mov rbp,rsp`` on a frame the
caller already unwound, and the final ``ret`` then returns into the saved rbp
(a fault); landing on ``mov rbp,rsp`` alone (offset - 3) is harmless because
rsp == rbp at the jump.  One byte further (chosen) is silent when the target's
first post-prologue instruction is its 1-byte ``push rax`` (a 6.1 target that
reaches a tail call and has no stack): the counter slot is not reserved, the
stale caller value below rsp is read, and the target's own pushes may overwrite
it.  On other targets the jump lands inside an instruction and usually faults
-- visible either way, as a fault or as a missing tail-call entry in the trace.
"""

from __future__ import annotations

import bisect
import functools
import operator
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from bpfdiff.jit.poke import X86_PATCH_SIZE, PokeDescriptor, bpf_tail_call_direct_fixup
from bpfdiff.jit.xlate import Xlated

from bpfdiff import isa, memo
from bpfdiff.isa import Insn, Program
from bpfdiff.profiles import Profile
from bpfdiff.scenario import DEFAULT_PROG_TYPE, MapDef
from bpfdiff.verifier import verify


class JitError(ValueError):
    """The JIT refused a program (what the kernel reports as a failed bpf_int_jit_compile)."""


# -- registers -------------------------------------------------------------------------
AUX_REG = isa.BPF_REG_AX + 1      # r11, the JIT's scratch register
X86_REG_R9 = isa.BPF_REG_AX + 2   # r9, only used by trampolines
BPF_REG_AX = isa.BPF_REG_AX       # r10, constant blinding / verifier rewrites

# BPF register -> low 3 bits of the x86 register number; is_ereg says whether REX.B/R is needed
REG2HEX = {
    0: 0,    # R0 -> rax
    1: 7,    # R1 -> rdi
    2: 6,    # R2 -> rsi
    3: 2,    # R3 -> rdx
    4: 1,    # R4 -> rcx
    5: 0,    # R5 -> r8
    6: 3,    # R6 -> rbx
    7: 5,    # R7 -> r13
    8: 6,    # R8 -> r14
    9: 7,    # R9 -> r15
    10: 5,   # R10 (frame pointer) -> rbp
    BPF_REG_AX: 2,   # r10
    AUX_REG: 3,      # r11
    X86_REG_R9: 1,   # r9
}
EXTENDED_REGS = frozenset({5, 7, 8, 9, BPF_REG_AX, AUX_REG, X86_REG_R9})
# registers whose low byte needs a REX prefix to be addressed as sil/dil/bpl/r*b
EXTENDED_8BIT_REGS = EXTENDED_REGS | {1, 2, 10}

X86_JB, X86_JAE, X86_JE, X86_JNE, X86_JBE, X86_JA = 0x72, 0x73, 0x74, 0x75, 0x76, 0x77
X86_JL, X86_JGE, X86_JLE, X86_JG = 0x7C, 0x7D, 0x7E, 0x7F
X86_JCC = {"ja": X86_JA, "jae": X86_JAE}

# x86_nops[n]: the P6 nops the kernel pads with (ASM_NOP_MAX = 8)
X86_NOPS = {
    1: bytes.fromhex("90"),
    2: bytes.fromhex("6690"),
    3: bytes.fromhex("0f1f00"),
    4: bytes.fromhex("0f1f4000"),
    5: bytes.fromhex("0f1f440000"),
    6: bytes.fromhex("660f1f440000"),
    7: bytes.fromhex("0f1f8000000000"),
    8: bytes.fromhex("0f1f840000000000"),
}
ASM_NOP_MAX = 8

MAX_PASSES = 20
PADDING_PASSES = MAX_PASSES - 5
INITIAL_INSN_SIZE_GUESS = 64      # bpf_int_jit_compile's first guess for every instruction
BPF_MAX_INSN_SIZE = 128

# ALU ops that share one emitter with different opcodes
SIMPLE_ALU_OPCODES = {
    isa.BPF_ADD: 0x01, isa.BPF_SUB: 0x29, isa.BPF_AND: 0x21, isa.BPF_OR: 0x09, isa.BPF_XOR: 0x31,
    isa.BPF_LSH: 0xE0, isa.BPF_RSH: 0xE8, isa.BPF_ARSH: 0xF8,
}
# op -> (ModRM /digit base for "op r/m, imm", short opcode for "op eax/rax, imm32")
ALU_IMM_OPCODES = {
    isa.BPF_ADD: (0xC0, 0x05), isa.BPF_SUB: (0xE8, 0x2D), isa.BPF_AND: (0xE0, 0x25),
    isa.BPF_OR: (0xC8, 0x0D), isa.BPF_XOR: (0xF0, 0x35),
}
JMP_COND = {
    isa.BPF_JEQ: X86_JE, isa.BPF_JSET: X86_JNE, isa.BPF_JNE: X86_JNE, isa.BPF_JGT: X86_JA,
    isa.BPF_JLT: X86_JB, isa.BPF_JGE: X86_JAE, isa.BPF_JLE: X86_JBE, isa.BPF_JSGT: X86_JG,
    isa.BPF_JSLT: X86_JL, isa.BPF_JSGE: X86_JGE, isa.BPF_JSLE: X86_JLE,
}
ATOMIC_FETCH_LOOP_OPS = frozenset({isa.BPF_AND | isa.BPF_FETCH, isa.BPF_OR | isa.BPF_FETCH,
                                   isa.BPF_XOR | isa.BPF_FETCH})


# -- encoding helpers ----------------------------------------------------------------------
def is_ereg(reg: int) -> bool:
    return reg in EXTENDED_REGS


def is_imm8(value: int) -> bool:
    return -128 <= value <= 127


def is_simm32(value: int) -> bool:
    return -(1 << 31) <= value < (1 << 31)


def is_uimm32(value: int) -> bool:
    return 0 <= value < (1 << 32)


def add_1mod(byte: int, reg: int) -> int:
    """REX.B for an extended register in ModRM.rm."""
    return byte | 1 if is_ereg(reg) else byte


def add_2mod(byte: int, r1: int, r2: int) -> int:
    """REX.B for r1 (rm) and REX.R for r2 (reg)."""
    if is_ereg(r1):
        byte |= 1
    if is_ereg(r2):
        byte |= 4
    return byte


def add_1reg(byte: int, dst: int) -> int:
    return byte + REG2HEX[dst]


def add_2reg(byte: int, dst: int, src: int) -> int:
    return byte + REG2HEX[dst] + (REG2HEX[src] << 3)


def imm32(value: int) -> bytes:
    return struct.pack("<I", value & 0xFFFFFFFF)


def imm8(value: int) -> bytes:
    return bytes([value & 0xFF])


def emit_nops(length: int) -> bytes:
    out = bytearray()
    while length > 0:
        n = min(length, ASM_NOP_MAX)
        out += X86_NOPS[n]
        length -= n
    return bytes(out)


# -- moves -----------------------------------------------------------------------------------
def emit_mov(dst: int, src: int) -> bytes:
    """EMIT_mov: ``mov dst, src`` (64-bit), nothing when dst == src."""
    if dst == src:
        return b""
    return bytes([add_2mod(0x48, dst, src), 0x89, add_2reg(0xC0, dst, src)])


def emit_mov_imm32(sign_propagate: bool, dst: int, value: int) -> bytes:
    """``mov dst, imm32``: sign-extending ``mov r64, imm32`` for negative ALU64 values, ``xor`` for 0."""
    value &= 0xFFFFFFFF
    if sign_propagate and value & 0x80000000:
        return bytes([add_1mod(0x48, dst), 0xC7, add_1reg(0xC0, dst)]) + imm32(value)
    if value == 0:
        prefix = bytes([add_2mod(0x40, dst, dst)]) if is_ereg(dst) else b""
        return prefix + bytes([0x31, add_2reg(0xC0, dst, dst)])
    prefix = bytes([add_1mod(0x40, dst)]) if is_ereg(dst) else b""
    return prefix + bytes([add_1reg(0xB8, dst)]) + imm32(value)


def emit_mov_imm64(dst: int, value: int, simm32: bool = False) -> bytes:
    """``lddw``: a 32-bit move when the value zero-extends, [the sign-extending ``mov r64, imm32``
    when it sign-extends (``simm32``: Profile.jit_imm64_simm32),] else ``movabs``."""
    value &= (1 << 64) - 1
    if is_uimm32(value):
        return emit_mov_imm32(False, dst, value)
    if simm32 and is_simm32(value - (1 << 64)):
        return emit_mov_imm32(True, dst, value)
    return bytes([add_1mod(0x48, dst), add_1reg(0xB8, dst)]) + struct.pack("<Q", value)


def emit_mov_percpu(dst: int, src: int, this_cpu_off: int) -> bytes:
    """``r_dst = &(void __percpu *)(r_src)``: ``mov dst,src`` (if needed); ``add %gs:this_cpu_off,dst``.

    The kernel builds the ModRM with dst in the reg field but sets REX.B (``add_1mod``), as
    written; only R0 is ever the destination (the inlined ``bpf_get_smp_processor_id``).
    """
    return (emit_mov(dst, src) + bytes([0x65, add_1mod(0x48, dst), 0x03, add_2reg(0x04, 0, dst), 0x25])
            + imm32(this_cpu_off))


def emit_mov_reg(is64: bool, dst: int, src: int) -> bytes:
    """``mov dst, src``; the 32-bit form is always emitted (it zero-extends)."""
    if is64:
        return emit_mov(dst, src)
    prefix = bytes([add_2mod(0x40, dst, src)]) if is_ereg(dst) or is_ereg(src) else b""
    return prefix + bytes([0x89, add_2reg(0xC0, dst, src)])


def emit_movsx_reg(num_bits: int, is64: bool, dst: int, src: int) -> bytes:
    """``movsx``: movsbq/movswq/movslq (64-bit) or movsbl/movswl (32-bit)."""
    if is64:
        if num_bits == 32:
            return bytes([add_2mod(0x48, src, dst), 0x63, add_2reg(0xC0, src, dst)])
        opcode = {8: 0xBE, 16: 0xBF}[num_bits]
        return bytes([add_2mod(0x48, src, dst), 0x0F, opcode, add_2reg(0xC0, src, dst)])
    if num_bits == 8:
        return bytes([add_2mod(0x40, src, dst), 0x0F, 0xBE, add_2reg(0xC0, src, dst)])
    prefix = bytes([add_2mod(0x40, src, dst)]) if is_ereg(dst) or is_ereg(src) else b""
    return prefix + bytes([add_2mod(0x0F, src, dst), 0xBF, add_2reg(0xC0, src, dst)])


def maybe_emit_mod(dst: int, src: int, is64: bool) -> bytes:
    if is64:
        return bytes([add_2mod(0x48, dst, src)])
    if is_ereg(dst) or is_ereg(src):
        return bytes([add_2mod(0x40, dst, src)])
    return b""


def maybe_emit_1mod(reg: int, is64: bool) -> bytes:
    if is64:
        return bytes([add_1mod(0x48, reg)])
    if is_ereg(reg):
        return bytes([add_1mod(0x40, reg)])
    return b""


# -- memory ----------------------------------------------------------------------------------
def emit_insn_suffix(ptr: int, val: int, off: int) -> bytes:
    """ModRM (+disp8 or disp32) for ``[ptr + off]`` with ``val`` in the reg field."""
    if is_imm8(off):
        return bytes([add_2reg(0x40, ptr, val)]) + imm8(off)
    return bytes([add_2reg(0x80, ptr, val)]) + imm32(off)


def emit_ldx(size: int, dst: int, src: int, off: int) -> bytes:
    """Zero-extending load: movzbq/movzwq, mov r32, mov r64."""
    if size == isa.BPF_B:
        head = bytes([add_2mod(0x48, src, dst), 0x0F, 0xB6])
    elif size == isa.BPF_H:
        head = bytes([add_2mod(0x48, src, dst), 0x0F, 0xB7])
    elif size == isa.BPF_W:
        head = bytes([add_2mod(0x40, src, dst), 0x8B]) if is_ereg(dst) or is_ereg(src) else b"\x8b"
    else:
        head = bytes([add_2mod(0x48, src, dst), 0x8B])
    return head + emit_insn_suffix(src, dst, off)


def emit_ldsx(size: int, dst: int, src: int, off: int) -> bytes:
    """Sign-extending load (ISA v4): movsbq/movswq/movslq."""
    opcode = {isa.BPF_B: b"\x0f\xbe", isa.BPF_H: b"\x0f\xbf", isa.BPF_W: b"\x63"}[size]
    return bytes([add_2mod(0x48, src, dst)]) + opcode + emit_insn_suffix(src, dst, off)


def emit_stx(size: int, dst: int, src: int, off: int) -> bytes:
    if size == isa.BPF_B:
        head = bytes([add_2mod(0x40, dst, src), 0x88]) if is_ereg(dst) or src in EXTENDED_8BIT_REGS else b"\x88"
    elif size == isa.BPF_H:
        head = bytes([0x66, add_2mod(0x40, dst, src), 0x89]) if is_ereg(dst) or is_ereg(src) else b"\x66\x89"
    elif size == isa.BPF_W:
        head = bytes([add_2mod(0x40, dst, src), 0x89]) if is_ereg(dst) or is_ereg(src) else b"\x89"
    else:
        head = bytes([add_2mod(0x48, dst, src), 0x89])
    return head + emit_insn_suffix(dst, src, off)


ST_IMM_HEADS = {
    # size -> (bytes without REX.B, bytes with REX.B)
    isa.BPF_B: (b"\xc6", b"\x41\xc6"),
    isa.BPF_H: (b"\x66\xc7", b"\x66\x41\xc7"),
    isa.BPF_W: (b"\xc7", b"\x41\xc7"),
}
# bpf_size_to_x86_bytes: the immediate is 4 bytes for a DW store (sign-extended by the CPU)
ST_IMM_BYTES = {isa.BPF_B: 1, isa.BPF_H: 2, isa.BPF_W: 4, isa.BPF_DW: 4}


def emit_st_imm(size: int, dst: int, off: int, value: int) -> bytes:
    """``mov{b,w,l,q} $imm, off(dst)``."""
    if size == isa.BPF_DW:
        head = bytes([add_1mod(0x48, dst), 0xC7])
    else:
        head = ST_IMM_HEADS[size][is_ereg(dst)]
    if is_imm8(off):
        modrm = bytes([add_1reg(0x40, dst)]) + imm8(off)
    else:
        modrm = bytes([add_1reg(0x80, dst)]) + imm32(off)
    n = ST_IMM_BYTES[size]
    return head + modrm + (value & ((1 << (8 * n)) - 1)).to_bytes(n, "little")


ATOMIC_OPCODES = {
    isa.BPF_ADD: b"\x01", isa.BPF_AND: b"\x21", isa.BPF_OR: b"\x09", isa.BPF_XOR: b"\x31",
    isa.BPF_ADD | isa.BPF_FETCH: b"\x0f\xc1",   # xadd
    isa.BPF_XCHG: b"\x87",                       # xchg
    isa.BPF_CMPXCHG: b"\x0f\xb1",                # cmpxchg
}


def emit_atomic(atomic_op: int, dst: int, src: int, off: int, size: int) -> bytes:
    """``lock <op> [dst+off], src`` (xchg has an implicit lock but the kernel emits the prefix anyway)."""
    try:
        opcode = ATOMIC_OPCODES[atomic_op]
    except KeyError:
        raise JitError(f"unknown atomic opcode {atomic_op:#x}") from None
    return b"\xf0" + maybe_emit_mod(dst, src, size == isa.BPF_DW) + opcode + emit_insn_suffix(dst, src, off)


# -- control transfer ------------------------------------------------------------------------
def emit_patch(func: int, ip: int, opcode: int) -> bytes:
    offset = func - (ip + X86_PATCH_SIZE)
    if not is_simm32(offset):
        raise JitError(f"target 0x{func:x} is out of rel32 range of 0x{ip:x}")
    return bytes([opcode]) + imm32(offset)


def emit_call(func: int, ip: int) -> bytes:
    """``call rel32`` at ``ip``."""
    return emit_patch(func, ip, 0xE8)


def emit_jump(func: int, ip: int) -> bytes:
    """``jmp rel32`` at ``ip``."""
    return emit_patch(func, ip, 0xE9)


def emit_return(sls: bool) -> bytes:
    """``ret``, followed by ``int3`` under CONFIG_SLS (no return thunk: the fixtures' CPU has no retbleed fix)."""
    return b"\xc3\xcc" if sls else b"\xc3"


EMIT_LFENCE = b"\x0f\xae\xe8"


def retpoline_thunk(reg: int) -> bytes:
    """The body of ``__x86_indirect_thunk_<reg>`` (x86 register number 0-7): call/pause/lfence/ret trap.

    ``call 1f; 2: pause; lfence; jmp 2b; 1: mov %reg,(%rsp); ret`` -- the same
    sequence the v5.5 JIT inlined for rax.
    """
    mov_to_stack = bytes([0x48, 0x89, 0x04 + (reg << 3), 0x24])
    return b"\xe8\x07\x00\x00\x00" + b"\xf3\x90" + EMIT_LFENCE + b"\xeb\xf9" + mov_to_stack + b"\xc3"


def emit_indirect_jump_thunk(reg: int, ip: int, retpoline: bool, sls: bool,
                             thunk_addr: Callable[[int], int] | None, sizing: bool = False) -> bytes:
    """v6.1 ``emit_indirect_jump``: ``jmp __x86_indirect_thunk_<reg>``, or ``jmp *%reg`` (+int3).

    ``sizing``: a pass before the image exists, where only the length matters.
    """
    if retpoline and thunk_addr is not None:
        target = thunk_addr(reg)
        if sizing and not is_simm32(target - (ip + X86_PATCH_SIZE)):
            target = ip
        return emit_jump(target, ip)
    return bytes([0xFF, 0xE0 + reg]) + (b"\xcc" if sls else b"")


def emit_indirect_jump_inline(reg: int, retpoline: bool) -> bytes:
    """v5.5 RETPOLINE_RAX_BPF_JIT: the retpoline inline, or a plain ``jmp *%reg``."""
    if retpoline:
        return retpoline_thunk(reg)
    return bytes([0xFF, 0xE0 + reg])


# -- callee-saved registers -----------------------------------------------------------------
CALLEE_REGS = (6, 7, 8, 9)   # R6-R9 -> rbx, r13, r14, r15
PUSH_CALLEE = {6: b"\x53", 7: b"\x41\x55", 8: b"\x41\x56", 9: b"\x41\x57"}
POP_CALLEE = {6: b"\x5b", 7: b"\x41\x5d", 8: b"\x41\x5e", 9: b"\x41\x5f"}


@functools.cache          # 16 possible answers, asked at every exit and tail call of every pass
def push_callee_regs(used: tuple[bool, bool, bool, bool]) -> bytes:
    return b"".join(PUSH_CALLEE[r] for r, u in zip(CALLEE_REGS, used, strict=True) if u)


@functools.cache
def pop_callee_regs(used: tuple[bool, bool, bool, bool]) -> bytes:
    return b"".join(POP_CALLEE[r] for r, u in reversed(list(zip(CALLEE_REGS, used, strict=True))) if u)


ALL_CALLEE_REGS = (True, True, True, True)


def round_up8(value: int) -> int:
    return (value + 7) & ~7


# -- the JIT's public data --------------------------------------------------------------------
@dataclass
class JitEnv:
    """What the loader tells the JIT: where things live."""

    alloc_image: Callable[[int], int]          # size -> address of this image (final pass, like bpf_jit_binary_alloc)
    helper_addr: Callable[[int], int]          # helper id -> address (call rel32 target)
    map_addr: Callable[[str], int]             # map name -> its struct bpf_array / bpf_map
    map_value_addr: Callable[[str], int]       # map name -> address of value 0 (BPF_PSEUDO_MAP_VALUE)
    # x86 reg number -> __x86_indirect_thunk_<reg> (see retpoline_thunk); None: jmp *%reg
    indirect_thunk_addr: Callable[[int], int] | None = None


@dataclass
class JitOptions:
    retpoline: bool | None = None   # None: the profile's default
    force_indirect: bool = False    # every tail call indirect (no poke descriptors)
    bugs: frozenset[str] = frozenset()


@dataclass
class JitImage:
    """One JITed function (main program = func 0, then subprograms, as jit_subprogs orders them)."""

    name: str
    func_index: int
    base: int
    code: bytes
    # The kernel's addrs[] for this function: addrs[k] is the image offset where the
    # code of local slot k starts (= the end of slot k-1); addrs[0] is the prologue's end.
    addrs: list[int]
    pokes: list[PokeDescriptor]
    stack_depth: int
    tail_call_reachable: bool
    tail_call_cnt_off: int | None    # rbp-relative offset of the counter dword, None without one
    # True: the slot at tail_call_cnt_off holds tail_call_cnt_ptr (a qword pointer to the count)
    tail_call_cnt_ptr: bool = False
    first_insn: int = 0              # xlated pc of local slot 0
    orig_pc: list[int] = field(default_factory=list)   # local slot -> pc in the program as loaded
    # Indirect tail calls: (image offset of the instruction that performs the jump -- emit_indirect_jump's
    # ``jmp`` or the inline retpoline's ``call`` --, x86 register number holding the target address there)
    indirect_tail_calls: list[tuple[int, int]] = field(default_factory=list)

    def xlated_insn_at(self, address: int) -> int | None:
        """Xlated pc (program-wide) whose code contains ``address``; None in the prologue or outside."""
        offset = address - self.base
        if offset < self.addrs[0] or offset >= self.addrs[-1]:
            return None
        # slot k's code is [addrs[k], addrs[k+1]); empty slots (ja 0, lddw's second half) are skipped
        k = bisect.bisect_right(self.addrs, offset) - 1
        return self.first_insn + k

    def insn_at(self, address: int) -> int | None:
        """The pc, in the program *as loaded*, whose JITed code contains ``address``."""
        xpc = self.xlated_insn_at(address)
        if xpc is None:
            return None
        return self.orig_pc[xpc - self.first_insn]


@dataclass
class JitProgram:
    """A program after bpf_int_jit_compile: xlated code and one image per function."""

    name: str
    xlated: list[Insn]
    images: list[JitImage]
    xlate_result: Xlated | None = None

    @property
    def bpf_func(self) -> int:
        return self.images[0].base

    @property
    def pokes(self) -> list[PokeDescriptor]:
        return [poke for image in self.images for poke in image.pokes]


# -- per-function compile state -------------------------------------------------------------
@dataclass
class JitContext:
    """struct jit_context: labels carried from one pass to the next."""

    cleanup_addr: int = 0
    tail_call_direct_label: int = 0
    tail_call_indirect_label: int = 0


@dataclass
class FuncJit:
    """One function being JITed (what do_jit reads from bpf_prog / bpf_prog_aux)."""

    name: str
    func_index: int
    insns: list[Insn]
    first_insn: int
    orig_pc: list[int]
    stack_depth: int
    tail_call_reachable: bool
    is_subprog: bool
    profile: Profile
    env: JitEnv
    options: JitOptions
    retpoline: bool
    pokes: dict[int, PokeDescriptor]                 # poke index (imm - 1) -> descriptor
    func_addr: Callable[[int], int | None]           # func index -> image base once known
    call_target_func: dict[int, int] = field(default_factory=dict)   # local slot of a pseudo call -> func index
    callee_regs_used: tuple[bool, bool, bool, bool] = (False, False, False, False)
    flavour: JitFlavour | None = None
    final_pass: bool = False       # the pass at the allocated address (addresses are real)
    # final pass: (address of the indirect tail-call jump, x86 register holding its target)
    indirect_jumps: list[tuple[int, int]] = field(default_factory=list)
    # After the first pass: the prologue and the code of the slots no pass can change
    # (see PASS_INVARIANT_CLASSES), which the later passes reuse instead of emitting them again.
    plan: PassPlan | None = None
    # pass-invariant code by instruction, shared by the compiles of one profile and set of planted bugs
    invariant_cache: dict | None = None

    @property
    def bugs(self) -> frozenset[str]:
        return self.options.bugs


_DST, _SRC, _OPCODE = operator.attrgetter("dst"), operator.attrgetter("src"), operator.attrgetter("opcode")


def detect_reg_usage(insns: list[Insn]) -> tuple[tuple[bool, bool, bool, bool], bool]:
    """Which of R6-R9 appear anywhere, and whether the function has a tail call."""
    # (map over attrgetter: the loops run in C; every compile asks, of every instruction)
    regs = set(map(_DST, insns))
    regs.update(map(_SRC, insns))
    used = tuple(reg in regs for reg in CALLEE_REGS)
    tail_call_seen = isa.TAIL_CALL_OPCODE in map(_OPCODE, insns)
    return (used[0], used[1], used[2], used[3]), tail_call_seen


# -- flavour: v6.1 ----------------------------------------------------------------------------
def tail_call_jcc(fn: FuncJit) -> int:
    """The counter test's jump: the profile's ``jae`` (6.1) / ``ja`` (5.5), or the planted ``ja``."""
    if "tail-call-limit-ja" in fn.bugs:
        return X86_JA
    return X86_JCC[fn.profile.jit_tail_call_jcc]


def tail_call_adj_off(fn: FuncJit) -> int:
    """X86_TAIL_CALL_OFFSET / PROLOGUE_SIZE; one byte too far with the planted ``tail-call-offset``."""
    return fn.profile.x86_tail_call_offset + (1 if "tail-call-offset" in fn.bugs else 0)


ENDBR64 = bytes.fromhex("f30f1efa")      # gen_endbr(): CONFIG_X86_KERNEL_IBT


def counter_by_pointer(fn: FuncJit) -> bool:
    """v6.10+ (116e04ba1459): subprograms get ``tail_call_cnt_ptr``, not the count."""
    return fn.profile.jit_tail_call_cnt == "pointer"


def emit_prologue_v61(fn: FuncJit) -> bytes:
    """[endbr64]; nop5; counter init or its nop; push rbp; mov rbp,rsp; [endbr64]; [sub rsp]; counter push(es).

    By value (5.10-6.9): ``xor eax,eax`` (a main program reaching a tail call)
    or ``nop2``, then ``push rax`` after the frame.  By pointer (6.10+):
    ``xor rax,rax`` or ``nop3``, then (main) ``cmp rax,MAX; ja 1f; push rax;
    mov rax,rsp; jmp 2f; 1: push rax; 2: push rax`` -- rax holds the count when
    the main program is entered normally or tail-called from a main program,
    a pointer (above MAX) when it is tail-called from a subprogram -- or
    (subprogram) ``push rax; push rax``.
    """
    profile = fn.profile
    main_reaching = fn.tail_call_reachable and not fn.is_subprog
    out = bytearray(ENDBR64 if profile.jit_ibt else b"")
    out += profile.jit_nop5
    if counter_by_pointer(fn):
        out += b"\x48\x31\xc0" if main_reaching else X86_NOPS[3]
    else:
        out += b"\x31\xc0" if main_reaching else X86_NOPS[2]
    out += b"\x55" + b"\x48\x89\xe5"
    if profile.jit_ibt:
        out += ENDBR64                                   # X86_TAIL_CALL_OFFSET is here
    if fn.stack_depth:
        out += b"\x48\x81\xec" + imm32(round_up8(fn.stack_depth))
    if fn.tail_call_reachable:
        if not counter_by_pointer(fn):
            out += b"\x50"
        elif fn.is_subprog:
            out += b"\x50\x50"
        else:
            # a count is at most the number of tail calls a run may take; a pointer is above it
            out += b"\x48\x83\xf8" + imm8(profile.allowed_tail_calls) + bytes([X86_JA, 6])
            out += b"\x50" + b"\x48\x89\xe0" + b"\xeb\x01" + b"\x50" + b"\x50"
    return bytes(out) + push_callee_regs(fn.callee_regs_used)


def emit_epilogue_v61(fn: FuncJit) -> bytes:
    return pop_callee_regs(fn.callee_regs_used) + b"\xc9" + emit_return(fn.profile.jit_sls)


def tcc_off_v61(fn: FuncJit) -> int:
    return -4 - round_up8(fn.stack_depth)


def tcc_ptr_off(fn: FuncJit) -> int:
    """BPF_TAIL_CALL_CNT_PTR_STACK_OFF: the slot of tail_call_cnt_ptr, below the count's."""
    return -16 - round_up8(fn.stack_depth)


def emit_counter_check(fn: FuncJit, tcc_off: int, label: int, start_len: int) -> bytes:
    """``mov eax,[rbp+tcc]; cmp eax,MAX; jae/ja out; add eax,1; mov [rbp+tcc],eax``."""
    out = bytearray(b"\x8b\x85" + imm32(tcc_off))
    out += b"\x83\xf8" + imm8(fn.profile.max_tail_call_cnt)
    out += bytes([tail_call_jcc(fn)]) + imm8(label - (start_len + len(out) + 2))
    out += b"\x83\xc0\x01"
    out += b"\x89\x85" + imm32(tcc_off)
    return bytes(out)


def emit_counter_ptr_check(fn: FuncJit, label: int, start_len: int) -> bytes:
    """``mov rax,[rbp+tcc_ptr]; cmp qword [rax],MAX; jae out`` (the increment comes later)."""
    out = bytearray(b"\x48\x8b\x85" + imm32(tcc_ptr_off(fn)))
    out += b"\x48\x83\x38" + imm8(fn.profile.max_tail_call_cnt)
    out += bytes([tail_call_jcc(fn)]) + imm8(label - (start_len + len(out) + 2))
    return bytes(out)


EMIT_COUNTER_PTR_INC = b"\x48\x83\x00\x01"      # add qword [rax], 1


def emit_frame_pops(fn: FuncJit) -> bytes:
    """Before the jump: callee-saved registers, the counter slot(s), the stack."""
    out = pop_callee_regs(fn.callee_regs_used)
    out += b"\x58\x58" if counter_by_pointer(fn) else b"\x58"   # [tail_call_cnt_ptr and] the count
    if fn.stack_depth:
        out += b"\x48\x81\xc4" + imm32(round_up8(fn.stack_depth))
    return out


def emit_bpf_tail_call_indirect_v61(fn: FuncJit, ip: int, ctx: JitContext) -> bytes:
    """Bounds, counter, NULL check, pops, ``mov rcx,[rcx+bpf_func]; add rcx,off; jmp *rcx`` (retpoline).

    By pointer the counter is tested first and incremented only after the
    NULL check (a call through an empty slot does not count).
    """
    profile = fn.profile
    label = ctx.tail_call_indirect_label
    out = bytearray(b"\x89\xd2")                                        # mov edx, edx
    out += b"\x39\x56" + imm8(profile.off_array_max_entries)            # cmp [rsi+max_entries], edx
    out += bytes([X86_JBE]) + imm8(label - (len(out) + 2))              # jbe out
    if counter_by_pointer(fn):
        out += emit_counter_ptr_check(fn, label, len(out))
    else:
        out += emit_counter_check(fn, tcc_off_v61(fn), label, len(out))
    out += b"\x48\x8b\x8c\xd6" + imm32(profile.off_array_ptrs)          # mov rcx, [rsi+rdx*8+ptrs]
    out += b"\x48\x85\xc9"                                              # test rcx, rcx
    out += bytes([X86_JE]) + imm8(label - (len(out) + 2))               # je out
    if counter_by_pointer(fn):
        out += EMIT_COUNTER_PTR_INC
    out += emit_frame_pops(fn)
    out += b"\x48\x8b\x49" + imm8(profile.off_prog_bpf_func)            # mov rcx, [rcx+bpf_func]
    out += b"\x48\x83\xc1" + imm8(tail_call_adj_off(fn))                # add rcx, X86_TAIL_CALL_OFFSET
    if fn.final_pass:
        fn.indirect_jumps.append((ip + len(out), 1))                    # the jump, target in rcx
    out += emit_indirect_jump_thunk(1, ip + len(out), fn.retpoline, profile.jit_sls, fn.env.indirect_thunk_addr,
                                    sizing=not fn.final_pass)
    ctx.tail_call_indirect_label = len(out)
    return bytes(out)


def emit_bpf_tail_call_direct_v61(fn: FuncJit, poke: PokeDescriptor, ip: int, ctx: JitContext) -> bytes:
    """Counter check; bypass ``jmp`` over the rest; [increment;] pops; ``pop rax``; ``add rsp``; nop5 site."""
    label = ctx.tail_call_direct_label
    if counter_by_pointer(fn):
        out = bytearray(emit_counter_ptr_check(fn, label, 0))
    else:
        out = bytearray(emit_counter_check(fn, tcc_off_v61(fn), label, 0))
    poke.tailcall_bypass = ip + len(out)
    poke.adj_off = tail_call_adj_off(fn)
    poke.tailcall_target = ip + label - X86_PATCH_SIZE
    poke.bypass_addr = poke.tailcall_target + X86_PATCH_SIZE
    poke.nop = fn.profile.jit_nop5
    out += emit_jump(poke.bypass_addr, poke.tailcall_bypass)
    if counter_by_pointer(fn):
        out += EMIT_COUNTER_PTR_INC          # skipped by the bypass while the slot is empty
    out += emit_frame_pops(fn)
    out += fn.profile.jit_nop5
    ctx.tail_call_direct_label = len(out)
    return bytes(out)


def emit_call_prefix_v61(fn: FuncJit, insn: Insn) -> bytes:
    """Before calls of a reachable function: ``mov rax,[rbp - round_up(stack,8) - 8]`` (the count,
    RESTORE_TAIL_CALL_CNT) or ``- 16`` (the pointer, LOAD_TAIL_CALL_CNT_PTR)."""
    if not fn.tail_call_reachable:
        return b""
    if insn.is_pseudo_call and "subprog-counter-reset" in fn.bugs:
        # planted: mov rax, 0 -- same length; by value the callee starts over, by
        # pointer (where the bug is not modelled) its first tail call faults on NULL
        return b"\x48\xc7\xc0" + imm32(0)
    if counter_by_pointer(fn):
        return b"\x48\x8b\x85" + imm32(tcc_ptr_off(fn))
    return b"\x48\x8b\x85" + imm32(-round_up8(fn.stack_depth) - 8)


def tail_call_cnt_off_v61(fn: FuncJit) -> int | None:
    """The counter's slot; by pointer, the slot of ``tail_call_cnt_ptr`` (:data:`JitImage.tail_call_cnt_ptr`)."""
    if not fn.tail_call_reachable:
        return None
    return tcc_ptr_off(fn) if counter_by_pointer(fn) else tcc_off_v61(fn)


# -- flavour: v5.5 ----------------------------------------------------------------------------
SEED_TCC_OFF = -36 - isa.MAX_BPF_STACK     # mov eax, dword ptr [rbp - 548]: the seed JIT's fixed slot
SEED_DIRECT_TAIL_CALL_SIZE = 6 + 3 + 2 + 3 + 6 + X86_PATCH_SIZE


def emit_prologue_v55(fn: FuncJit) -> bytes:
    """nop5; push rbp; mov rbp,rsp; sub rsp,imm32 (always); push rbx,r13,r14,r15; pushq $0."""
    return (fn.profile.jit_nop5 + b"\x55\x48\x89\xe5" + b"\x48\x81\xec" + imm32(round_up8(fn.stack_depth))
            + push_callee_regs(ALL_CALLEE_REGS) + b"\x6a\x00")


def emit_epilogue_v55(fn: FuncJit) -> bytes:
    """pop rbx (drops the counter); pop r15,r14,r13,rbx; leave; ret."""
    return b"\x5b" + pop_callee_regs(ALL_CALLEE_REGS) + b"\xc9" + emit_return(fn.profile.jit_sls)


def emit_bpf_tail_call_indirect_v55(fn: FuncJit, ip: int, ctx: JitContext) -> bytes:
    """Bounds, counter, ``mov rax,[rsi+rdx*8+ptrs]``, NULL check, ``mov rax,[rax+bpf_func]; add; jmp`` (rax)."""
    profile = fn.profile
    label = ctx.tail_call_indirect_label
    out = bytearray(b"\x89\xd2")
    out += b"\x39\x56" + imm8(profile.off_array_max_entries)
    out += bytes([X86_JBE]) + imm8(label - (len(out) + 2))
    out += emit_counter_check(fn, SEED_TCC_OFF, label, len(out))
    out += b"\x48\x8b\x84\xd6" + imm32(profile.off_array_ptrs)         # mov rax, [rsi+rdx*8+ptrs]
    out += b"\x48\x85\xc0"                                             # test rax, rax
    out += bytes([X86_JE]) + imm8(label - (len(out) + 2))
    out += b"\x48\x8b\x40" + imm8(profile.off_prog_bpf_func)           # mov rax, [rax+bpf_func]
    out += b"\x48\x83\xc0" + imm8(tail_call_adj_off(fn))               # add rax, PROLOGUE_SIZE
    if fn.final_pass:
        fn.indirect_jumps.append((ip + len(out), 0))                   # the jump (or retpoline), target in rax
    out += emit_indirect_jump_inline(0, fn.retpoline)
    ctx.tail_call_indirect_label = len(out)
    return bytes(out)


def emit_bpf_tail_call_direct_v55(fn: FuncJit, poke: PokeDescriptor, ip: int, ctx: JitContext) -> bytes:
    """Counter check with a fixed ``ja +14``, then the 5-byte site (no bypass)."""
    # the seed JIT hard-codes the out label: 14 bytes (add, mov, site) after the ja
    out = bytearray(emit_counter_check(fn, SEED_TCC_OFF, SEED_DIRECT_TAIL_CALL_SIZE, 0))
    poke.adj_off = tail_call_adj_off(fn)
    poke.tailcall_target = ip + len(out)
    poke.tailcall_bypass = None
    poke.bypass_addr = None
    poke.nop = fn.profile.jit_nop5
    out += fn.profile.jit_nop5
    return bytes(out)


def emit_call_prefix_v55(fn: FuncJit, insn: Insn) -> bytes:
    return b""


def tail_call_cnt_off_v55(fn: FuncJit) -> int | None:
    # pushq $0 lands below the frame and the four callee-saved registers; the dword read is its high half
    return -round_up8(fn.stack_depth) - 8 * len(CALLEE_REGS) - 4


@dataclass(frozen=True)
class JitFlavour:
    """The version-specific parts of the JIT, as a table of emitters."""

    name: str
    prologue: Callable[[FuncJit], bytes]
    epilogue: Callable[[FuncJit], bytes]
    tail_call_direct: Callable[[FuncJit, PokeDescriptor, int, JitContext], bytes]
    tail_call_indirect: Callable[[FuncJit, int, JitContext], bytes]
    call_prefix: Callable[[FuncJit, Insn], bytes]
    tail_call_cnt_off: Callable[[FuncJit], int | None]
    uses_all_callee_regs: bool
    div_mod: Callable[[Insn], bytes]
    mul: Callable[[Insn], bytes]
    shift_reg: Callable[[Insn], bytes]




# -- do_jit: one BPF instruction -> x86 ------------------------------------------------------
def emit_alu_reg(insn: Insn, fn: FuncJit) -> bytes:
    """add/sub/and/or/xor dst, src (32 or 64 bit)."""
    is64 = insn.cls == isa.BPF_ALU64
    if not is64 and insn.op == isa.BPF_ADD and "alu32-no-zext" in fn.bugs:
        is64 = True     # planted: add32 computed in 64 bits, the upper half is not zeroed
    return (maybe_emit_mod(insn.dst, insn.src, is64)
            + bytes([SIMPLE_ALU_OPCODES[insn.op], add_2reg(0xC0, insn.dst, insn.src)]))


def emit_alu_imm(insn: Insn) -> bytes:
    """add/sub/and/or/xor dst, imm: imm8 form, short eax form, or imm32 form."""
    b3, b2 = ALU_IMM_OPCODES[insn.op]
    out = maybe_emit_1mod(insn.dst, insn.cls == isa.BPF_ALU64)
    if is_imm8(insn.imm):
        return out + bytes([0x83, add_1reg(b3, insn.dst)]) + imm8(insn.imm)
    if insn.dst == 0:
        return out + bytes([b2]) + imm32(insn.imm)
    return out + bytes([0x81, add_1reg(b3, insn.dst)]) + imm32(insn.imm)


def emit_div_mod(insn: Insn) -> bytes:
    """div/mod (and sdiv/smod) through rax:rdx, saving them around when they are not the destination."""
    is64 = insn.cls == isa.BPF_ALU64
    dst, src = insn.dst, insn.src
    out = bytearray()
    if dst != 0:
        out += b"\x50"                                   # push rax
    if dst != 3:
        out += b"\x52"                                   # push rdx
    if insn.source == isa.BPF_X:
        if src in (0, 3):
            out += emit_mov(AUX_REG, src)                # mov r11, src (rax/rdx are about to change)
            src = AUX_REG
    else:
        out += b"\x49\xc7\xc3" + imm32(insn.imm)         # mov r11, imm32
        src = AUX_REG
    if dst != 0:
        out += emit_mov_reg(is64, 0, dst)                # mov rax, dst
    if insn.off == 0:
        out += b"\x31\xd2"                               # xor edx, edx
        out += maybe_emit_1mod(src, is64) + bytes([0xF7, add_1reg(0xF0, src)])    # div src
    else:
        out += b"\x48\x99" if is64 else b"\x99"          # cqo / cdq
        out += maybe_emit_1mod(src, is64) + bytes([0xF7, add_1reg(0xF8, src)])    # idiv src
    if insn.op == isa.BPF_MOD and dst != 3:
        out += emit_mov_reg(is64, dst, 3)                # mov dst, rdx
    elif insn.op == isa.BPF_DIV and dst != 0:
        out += emit_mov_reg(is64, dst, 0)                # mov dst, rax
    if dst != 3:
        out += b"\x5a"                                   # pop rdx
    if dst != 0:
        out += b"\x58"                                   # pop rax
    return bytes(out)


def emit_div_mod_v55(insn: Insn) -> bytes:
    """The pre-5.16 div/mod: always save rax/rdx, divide r11, result through r11.

    Signed division (ISA v4) did not exist then: emitted as today's kernel does.
    """
    if insn.off:
        return emit_div_mod(insn)
    is64 = insn.cls == isa.BPF_ALU64
    out = bytearray(b"\x50\x52")                                   # push rax; push rdx
    if insn.source == isa.BPF_X:
        out += emit_mov(AUX_REG, insn.src)                          # mov r11, src
    else:
        out += b"\x49\xc7\xc3" + imm32(insn.imm)                     # mov r11, imm32
    out += emit_mov(0, insn.dst)                                    # mov rax, dst
    out += b"\x31\xd2"                                              # xor edx, edx
    out += b"\x49\xf7\xf3" if is64 else b"\x41\xf7\xf3"               # div r11 / div r11d
    out += b"\x49\x89\xd3" if insn.op == isa.BPF_MOD else b"\x49\x89\xc3"   # mov r11, rdx / rax
    out += b"\x5a\x58"                                              # pop rdx; pop rax
    out += emit_mov(insn.dst, AUX_REG)                              # mov dst, r11
    return bytes(out)


def emit_mul_v55(insn: Insn) -> bytes:
    """The pre-5.16 mul: one-operand ``mul r11`` with rax/rdx saved unless they are the destination."""
    is64 = insn.cls == isa.BPF_ALU64
    dst = insn.dst
    out = bytearray()
    if dst != 0:
        out += b"\x50"                                              # push rax
    if dst != 3:
        out += b"\x52"                                              # push rdx
    out += emit_mov(AUX_REG, dst)                                   # mov r11, dst
    if insn.source == isa.BPF_X:
        out += emit_mov_reg(is64, 0, insn.src)                      # mov rax, src
    else:
        out += emit_mov_imm32(is64, 0, insn.imm)                    # mov rax, imm32
    out += maybe_emit_1mod(AUX_REG, is64) + bytes([0xF7, add_1reg(0xE0, AUX_REG)])   # mul r11
    if dst != 3:
        out += b"\x5a"                                              # pop rdx
    if dst != 0:
        out += emit_mov(dst, 0) + b"\x58"                           # mov dst, rax; pop rax
    return bytes(out)


def emit_mul(insn: Insn) -> bytes:
    is64 = insn.cls == isa.BPF_ALU64
    dst = insn.dst
    if insn.source == isa.BPF_K:
        out = maybe_emit_mod(dst, dst, is64)
        if is_imm8(insn.imm):
            return out + bytes([0x6B, add_2reg(0xC0, dst, dst)]) + imm8(insn.imm)   # imul dst, dst, imm8
        return out + bytes([0x69, add_2reg(0xC0, dst, dst)]) + imm32(insn.imm)      # imul dst, dst, imm32
    return maybe_emit_mod(insn.src, dst, is64) + bytes([0x0F, 0xAF, add_2reg(0xC0, insn.src, dst)])


def emit_shift_imm(insn: Insn) -> bytes:
    b3 = SIMPLE_ALU_OPCODES[insn.op]
    out = maybe_emit_1mod(insn.dst, insn.cls == isa.BPF_ALU64)
    if insn.imm == 1:
        return out + bytes([0xD1, add_1reg(b3, insn.dst)])
    return out + bytes([0xC1, add_1reg(b3, insn.dst)]) + imm8(insn.imm)


def emit_shift_reg(insn: Insn) -> bytes:
    """Shift by cl, as 5.x-6.1 emit it (6.2 dropped the push when rcx is the destination).

    A destination in rcx is shifted in r11; a count not in rcx is moved there
    with rcx saved on the stack around the shift.
    """
    is64 = insn.cls == isa.BPF_ALU64
    dst, src = insn.dst, insn.src
    out = bytearray()
    if dst == 4:
        out += emit_mov(AUX_REG, dst)            # mov r11, rcx
        dst = AUX_REG
    if src != 4:
        out += b"\x51"                           # push rcx
        out += emit_mov(4, src)                  # mov rcx, src
    out += maybe_emit_1mod(dst, is64) + bytes([0xD3, add_1reg(SIMPLE_ALU_OPCODES[insn.op], dst)])
    if src != 4:
        out += b"\x59"                           # pop rcx
    if insn.dst == 4:
        out += emit_mov(insn.dst, AUX_REG)       # mov rcx, r11
    return bytes(out)


def emit_shift_reg_v62(insn: Insn) -> bytes:
    """Shift by cl since 6.2 (no BMI2): a count already in rcx is used as it is; otherwise
    a destination in rcx is shifted in r11 (no push), any other one with rcx saved around."""
    is64 = insn.cls == isa.BPF_ALU64
    dst, src = insn.dst, insn.src
    out = bytearray()
    if src != 4:
        if dst == 4:
            out += emit_mov(AUX_REG, dst)        # mov r11, rcx
            dst = AUX_REG
        else:
            out += b"\x51"                       # push rcx
        out += emit_mov(4, src)                  # mov rcx, src
    out += maybe_emit_1mod(dst, is64) + bytes([0xD3, add_1reg(SIMPLE_ALU_OPCODES[insn.op], dst)])
    if src != 4:
        out += emit_mov(insn.dst, AUX_REG) if insn.dst == 4 else b"\x59"   # mov rcx, r11 / pop rcx
    return bytes(out)


def emit_bswap(dst: int, width: int) -> bytes:
    """BPF_END to big endian / bswap: ror $8 + movzwl, bswap r32, bswap r64."""
    if width == 16:
        out = b"\x66" + (b"\x41" if is_ereg(dst) else b"") + bytes([0xC1, add_1reg(0xC8, dst), 8])
        return out + (b"\x45\x0f\xb7" if is_ereg(dst) else b"\x0f\xb7") + bytes([add_2reg(0xC0, dst, dst)])
    if width == 32:
        return (b"\x41\x0f" if is_ereg(dst) else b"\x0f") + bytes([add_1reg(0xC8, dst)])
    return bytes([add_1mod(0x48, dst), 0x0F, add_1reg(0xC8, dst)])


def emit_to_le(dst: int, width: int) -> bytes:
    """BPF_END to little endian on x86: truncate (movzwl / mov r32), nothing for 64."""
    if width == 16:
        return (b"\x45\x0f\xb7" if is_ereg(dst) else b"\x0f\xb7") + bytes([add_2reg(0xC0, dst, dst)])
    if width == 32:
        return (b"\x45" if is_ereg(dst) else b"") + bytes([0x89, add_2reg(0xC0, dst, dst)])
    return b""


def emit_atomic_fetch_loop(insn: Insn) -> bytes:
    """fetch and/or/xor: a cmpxchg loop with rax saved in BPF_REG_AX (r10) and the new value in r11."""
    is64 = insn.size == isa.BPF_DW
    src, dst = insn.src, insn.dst
    real_src = BPF_REG_AX if src == 0 else src
    real_dst = BPF_REG_AX if dst == 0 else dst
    out = bytearray(emit_mov_reg(True, BPF_REG_AX, 0))            # mov r10, rax
    branch_target = len(out)
    out += emit_ldx(insn.size, 0, real_dst, insn.off)             # rax = [dst+off]
    out += emit_mov_reg(is64, AUX_REG, 0)                         # r11 = rax
    out += maybe_emit_mod(AUX_REG, real_src, is64)
    out += bytes([SIMPLE_ALU_OPCODES[insn.imm & 0xF0], add_2reg(0xC0, AUX_REG, real_src)])
    out += emit_atomic(isa.BPF_CMPXCHG, real_dst, AUX_REG, insn.off, insn.size)
    out += bytes([X86_JNE]) + imm8(-(len(out) - branch_target) - 2)
    out += emit_mov_reg(is64, real_src, 0)                        # src = old value
    out += emit_mov_reg(True, 0, BPF_REG_AX)                      # restore rax
    return bytes(out)


def emit_cond_compare(insn: Insn) -> bytes:
    """The cmp/test before a conditional jump."""
    is64 = insn.cls == isa.BPF_JMP
    dst = insn.dst
    if insn.source == isa.BPF_X:
        opcode = 0x85 if insn.op == isa.BPF_JSET else 0x39
        return maybe_emit_mod(dst, insn.src, is64) + bytes([opcode, add_2reg(0xC0, dst, insn.src)])
    if insn.op == isa.BPF_JSET:
        return maybe_emit_1mod(dst, is64) + bytes([0xF7, add_1reg(0xC0, dst)]) + imm32(insn.imm)
    if insn.imm == 0:
        return maybe_emit_mod(dst, dst, is64) + bytes([0x85, add_2reg(0xC0, dst, dst)])   # test dst, dst
    if is_imm8(insn.imm):
        return maybe_emit_1mod(dst, is64) + bytes([0x83, add_1reg(0xF8, dst)]) + imm8(insn.imm)
    return maybe_emit_1mod(dst, is64) + bytes([0x81, add_1reg(0xF8, dst)]) + imm32(insn.imm)


@dataclass
class PassState:
    """What one do_jit pass knows: last pass's addrs[], the image (None before allocation)."""

    addrs: list[int]
    image: int | None
    jmp_padding: bool
    ctx: JitContext
    seen_exit: bool = False
    imm8_jmp_max: int = 127          # Profile.jit_imm8_jmp_max


def is_imm8_jmp_offset(imm8_max: int, value: int) -> bool:
    """Short (imm8) form for a BPF jump?  Up to ``imm8_max`` forward (Profile.jit_imm8_jmp_max: 123
    after the convergence fix, ``is_imm8_jmp_offset``; 127 before), 128 back."""
    return -128 <= value <= imm8_max


def cond_jump_nops(padding: bool, imm8_max: int, last_size: int, prefix_len: int, jmp_offset: int) -> int | None:
    """emit_jcc's choice of form: None for the imm32 ``jcc``, else how many nops go before the imm8
    one (with ``padding``, what keeps the slot at ``last_size``, its size in the previous pass)."""
    if is_imm8_jmp_offset(imm8_max, jmp_offset):
        if not padding:
            return 0
        nops = last_size - prefix_len - 2
        if nops not in (0, 4):
            raise JitError(f"unexpected jmp_cond padding: {nops} bytes")
        return nops
    if is_simm32(jmp_offset):
        return None
    raise JitError(f"cond_jmp gen bug {jmp_offset:x}")


def jump_nops(padding: bool, imm8_max: int, last_size: int, jmp_offset: int) -> int | None:
    """emit_jmp's choice of form: None for the imm32 ``jmp``, else the nops before the imm8 one."""
    if is_imm8_jmp_offset(imm8_max, jmp_offset):
        if not padding:
            return 0
        nops = last_size - 2
        if nops not in (0, 3):
            raise JitError(f"unexpected jump padding: {nops} bytes")
        return nops
    if is_simm32(jmp_offset):
        return None
    raise JitError(f"jmp gen bug {jmp_offset:x}")


def nop_jump_size(padding: bool, last_size: int) -> int:
    """A ``ja`` to the next slot emits nothing, or (padding) the nops that keep the slot's size."""
    if not padding:
        return 0
    if last_size not in (0, 2, 5):
        raise JitError(f"unexpected nop jump padding: {last_size} bytes")
    return last_size


def last_slot_size(state: PassState, i: int) -> int:
    """Slot i's size in the previous pass (INSN_SZ_DIFF's first term), what a padded jump keeps;
    0 without padding, where nothing reads it."""
    return state.addrs[i] - state.addrs[i - 1] if state.jmp_padding else 0


def emit_jcc(state: PassState, i: int, prefix_len: int, jmp_cond: int, jmp_offset: int) -> bytes:
    last_size = last_slot_size(state, i)
    nops = cond_jump_nops(state.jmp_padding, state.imm8_jmp_max, last_size, prefix_len, jmp_offset)
    if nops is None:
        return bytes([0x0F, jmp_cond + 0x10]) + imm32(jmp_offset)
    return emit_nops(nops) + bytes([jmp_cond]) + imm8(jmp_offset)


def emit_jmp(state: PassState, i: int, jmp_offset: int) -> bytes:
    last_size = last_slot_size(state, i)
    nops = jump_nops(state.jmp_padding, state.imm8_jmp_max, last_size, jmp_offset)
    if nops is None:
        return b"\xe9" + imm32(jmp_offset)
    return emit_nops(nops) + b"\xeb" + imm8(jmp_offset)


def ip_of(state: PassState, i: int) -> int:
    """image + addrs[i - 1]: where this instruction's code starts (0-based image before allocation)."""
    return (state.image or 0) + state.addrs[i - 1]


def resolve_lddw(fn: FuncJit, first: Insn, second: Insn) -> int:
    if first.src == isa.BPF_PSEUDO_MAP_FD:
        return fn.env.map_addr(first.map)
    if first.src == isa.BPF_PSEUDO_MAP_VALUE:
        return fn.env.map_value_addr(first.map) + (second.imm & 0xFFFFFFFF)
    return isa.lddw_value(first, second)


def emit_call_insn(fn: FuncJit, state: PassState, i: int, insn: Insn) -> bytes:
    prefix = fn.flavour.call_prefix(fn, insn)
    ip = ip_of(state, i) + len(prefix)
    if insn.is_pseudo_call:
        callee = fn.func_addr(fn.call_target_func[i - 1])
        # before the callee's image exists the kernel calls a placeholder (__bpf_call_base + 1)
        func = callee if callee is not None else ip
    elif insn.src == 0:
        func = fn.env.helper_addr(insn.imm)
    else:
        raise JitError(f"insn {fn.orig_pc[i - 1]}: kfunc calls are not supported")
    if state.image is None and not is_simm32(func - (ip + X86_PATCH_SIZE)):
        func = ip       # sizes only: the final pass checks the real displacement
    return prefix + emit_call(func, ip)


# The tail-call machinery of v5.10, v6.1 and v6.12 is one set of emitters whose
# differences are profile data (the counter by value or by pointer, IBT, the
# nop5 bytes, SLS); the flavours differ in the arithmetic sequences.
FLAVOURS: dict[str, JitFlavour] = {
    "v6.12": JitFlavour("v6.12", emit_prologue_v61, emit_epilogue_v61, emit_bpf_tail_call_direct_v61,
                        emit_bpf_tail_call_indirect_v61, emit_call_prefix_v61, tail_call_cnt_off_v61, False,
                        emit_div_mod, emit_mul, emit_shift_reg_v62),
    "v6.1": JitFlavour("v6.1", emit_prologue_v61, emit_epilogue_v61, emit_bpf_tail_call_direct_v61,
                       emit_bpf_tail_call_indirect_v61, emit_call_prefix_v61, tail_call_cnt_off_v61, False,
                       emit_div_mod, emit_mul, emit_shift_reg),
    # 5.10: the div/mul of before 5.16 (div r11 / mul r11)
    "v5.10": JitFlavour("v5.10", emit_prologue_v61, emit_epilogue_v61, emit_bpf_tail_call_direct_v61,
                        emit_bpf_tail_call_indirect_v61, emit_call_prefix_v61, tail_call_cnt_off_v61, False,
                        emit_div_mod_v55, emit_mul_v55, emit_shift_reg),
    "v5.5": JitFlavour("v5.5", emit_prologue_v55, emit_epilogue_v55, emit_bpf_tail_call_direct_v55,
                       emit_bpf_tail_call_indirect_v55, emit_call_prefix_v55, tail_call_cnt_off_v55, True,
                       emit_div_mod_v55, emit_mul_v55, emit_shift_reg),
}


def do_jit_insn(fn: FuncJit, state: PassState, i: int, insn: Insn, proglen: int) -> tuple[bytes, int]:
    """JIT local slot i-1 (the kernel's loop index i); returns its bytes and how many slots it used."""
    opcode = insn.opcode
    # the slots every pass emits first: the passes after the plan see only these and the conditional jumps
    if opcode == isa.CALL_OPCODE:
        return emit_call_insn(fn, state, i, insn), 1
    if opcode == isa.TAIL_CALL_OPCODE:
        ip = ip_of(state, i)
        if insn.imm:
            return fn.flavour.tail_call_direct(fn, fn.pokes[insn.imm - 1], ip, state.ctx), 1
        return fn.flavour.tail_call_indirect(fn, ip, state.ctx), 1
    if opcode in (isa.BPF_JMP | isa.BPF_JA, isa.BPF_JMP32 | isa.BPF_JA):
        rel = insn.off if insn.cls == isa.BPF_JMP else insn.imm
        jmp_offset = -2 if rel == -1 else state.addrs[i + rel] - state.addrs[i]
        if jmp_offset == 0:
            last_size = last_slot_size(state, i)
            return emit_nops(nop_jump_size(state.jmp_padding, last_size)), 1
        return emit_jmp(state, i, jmp_offset), 1
    if opcode == isa.EXIT_OPCODE:
        if state.seen_exit:
            return emit_jmp(state, i, state.ctx.cleanup_addr - state.addrs[i]), 1
        state.seen_exit = True
        state.ctx.cleanup_addr = proglen
        return fn.flavour.epilogue(fn), 1
    cls, op = insn.cls, insn.op
    if cls in (isa.BPF_ALU, isa.BPF_ALU64):
        is64 = cls == isa.BPF_ALU64
        if op in (isa.BPF_ADD, isa.BPF_SUB, isa.BPF_AND, isa.BPF_OR, isa.BPF_XOR):
            return (emit_alu_reg(insn, fn) if insn.source == isa.BPF_X else emit_alu_imm(insn)), 1
        if op == isa.BPF_MOV:
            if insn.source == isa.BPF_K:
                return emit_mov_imm32(is64, insn.dst, insn.imm), 1
            if insn.off == 0:
                return emit_mov_reg(is64, insn.dst, insn.src), 1
            if is64 and insn.off == isa.BPF_ADDR_PERCPU:
                percpu = fn.profile.inline_smp_processor_id
                if percpu is None:
                    raise JitError(f"insn {fn.orig_pc[i - 1]}: per-CPU move without per-CPU data in the profile")
                return emit_mov_percpu(insn.dst, insn.src, percpu.this_cpu_off), 1
            return emit_movsx_reg(insn.off, is64, insn.dst, insn.src), 1
        if op == isa.BPF_NEG:
            return maybe_emit_1mod(insn.dst, is64) + bytes([0xF7, add_1reg(0xD8, insn.dst)]), 1
        if op in (isa.BPF_DIV, isa.BPF_MOD):
            return fn.flavour.div_mod(insn), 1
        if op == isa.BPF_MUL:
            return fn.flavour.mul(insn), 1
        if op in (isa.BPF_LSH, isa.BPF_RSH, isa.BPF_ARSH):
            return (fn.flavour.shift_reg(insn) if insn.source == isa.BPF_X else emit_shift_imm(insn)), 1
        if op == isa.BPF_END:
            to_be_or_bswap = is64 or insn.source == isa.BPF_TO_BE
            return (emit_bswap if to_be_or_bswap else emit_to_le)(insn.dst, insn.imm), 1
        raise JitError(f"unknown opcode {insn.opcode:02x}")
    if insn.is_lddw:
        second = fn.insns[i]
        return emit_mov_imm64(insn.dst, resolve_lddw(fn, insn, second), fn.profile.jit_imm64_simm32), 2
    if cls == isa.BPF_ST:
        return emit_st_imm(insn.size, insn.dst, insn.off, insn.imm), 1
    if cls == isa.BPF_STX:
        if insn.mode == isa.BPF_MEM:
            return emit_stx(insn.size, insn.dst, insn.src, insn.off), 1
        if insn.imm in ATOMIC_FETCH_LOOP_OPS:
            return emit_atomic_fetch_loop(insn), 1
        return emit_atomic(insn.imm, insn.dst, insn.src, insn.off, insn.size), 1
    if cls == isa.BPF_LDX:
        emit = emit_ldsx if insn.mode == isa.BPF_MEMSX else emit_ldx
        return emit(insn.size, insn.dst, insn.src, insn.off), 1
    if cls in (isa.BPF_JMP, isa.BPF_JMP32) and op in JMP_COND:
        compare = emit_cond_compare(insn)
        jmp_offset = state.addrs[i + insn.off] - state.addrs[i]
        return compare + emit_jcc(state, i, len(compare), JMP_COND[op], jmp_offset), 1
    raise JitError(f"insn {fn.orig_pc[i - 1]}: unknown opcode {insn.opcode:02x}")


# Instruction classes whose code depends on the instruction and the function alone (registers,
# offsets, immediates, the map addresses of a ``lddw``, the profile and planted bugs), never on
# the pass: not on addrs[], the image address, the labels or the exit seen.  Jumps, calls, tail
# calls and exits are emitted in every pass, as the kernel does; the others are emitted once,
# before the function's first pass, and their bytes used by every pass (:class:`PassPlan`), which
# leaves every pass's output as it was and saves most of the time of the passes.
PASS_INVARIANT_CLASSES = frozenset({isa.BPF_ALU, isa.BPF_ALU64, isa.BPF_ST, isa.BPF_STX, isa.BPF_LDX})
REUSE_INVARIANT_CODE = True       # False: emit every slot in every pass (the equivalence test's reference)
# The same instruction has the same pass-invariant code in every program of a profile (with the
# same planted bugs); generated programs share many (the packet bounds check, the map lookup
# set-up...): their code is remembered per (profile, bugs), a lddw's by its register and value.
_INVARIANT_CACHES: dict[tuple[Profile, frozenset[str]], dict] = {}
INVARIANT_CACHE_LIMIT = 100_000     # entries per cache; a full cache starts over
# The last (profile, bugs) asked and its cache, held (so neither id can be reused): an engine
# compiles with the same two objects every time, and hashing a Profile (every field, ~10 us)
# for each compile costs more than a small compile's plan.
_LAST_INVARIANT_CACHE: list = [None, None, None]


@memo.forgettable
def clear_invariant_cache() -> None:
    """Forget the remembered code (for measurements that must see the emitters run: line coverage)."""
    _INVARIANT_CACHES.clear()
    _LAST_INVARIANT_CACHE[:] = [None, None, None]
    push_callee_regs.cache_clear()      # remembered per register set: their lines ran only once
    pop_callee_regs.cache_clear()


def invariant_cache(profile: Profile, bugs: frozenset[str]) -> dict:
    last_profile, last_bugs, cache = _LAST_INVARIANT_CACHE
    if profile is last_profile and bugs is last_bugs and len(cache) <= INVARIANT_CACHE_LIMIT:
        return cache
    key = (profile, bugs)
    cache = _INVARIANT_CACHES.get(key)
    if cache is None or len(cache) > INVARIANT_CACHE_LIMIT:
        cache = _INVARIANT_CACHES[key] = {}
    _LAST_INVARIANT_CACHE[:] = [profile, bugs, cache]
    return cache


@dataclass
class InvariantRun:
    """Consecutive slots ``first``..``first + len(ends) - 1`` of pass-invariant code."""

    first: int
    code: bytes
    ends: list[int]         # each slot's addrs[] entry relative to the run's start (lddw: both slots)
    last: int = 0           # first + len(ends): the slice of addrs[] the run fills

    def __post_init__(self) -> None:
        self.last = self.first + len(self.ends)


@dataclass
class CondJump:
    """A conditional jump's slot: its compare is pass-invariant, its jcc is not."""

    i: int
    compare: bytes
    cond: int
    off: int


@dataclass
class PassPlan:
    """A function's slots for its passes: runs of invariant code and the slots emitted every pass."""

    prologue: bytes
    # an int: a slot index i (1-based) emitted by do_jit_insn every pass
    items: list[InvariantRun | CondJump | int] = field(default_factory=list)


def compare_key(insn: Insn) -> tuple:
    """The key of a conditional jump's compare (:func:`emit_cond_compare`, which reads these fields
    alone) in the shared cache; its first item, a string, keeps it apart from the instructions'
    keys (:func:`plan_function`)."""
    return ("cmp", insn.opcode, insn.dst, insn.src, insn.imm)


def do_jit(fn: FuncJit, state: PassState) -> tuple[bytes, list[int]]:
    """One pass over the function: the image bytes and the new addrs[]."""
    state.seen_exit = False
    fn.final_pass = state.image is not None
    if fn.final_pass:
        fn.indirect_jumps.clear()
    if REUSE_INVARIANT_CODE:
        if fn.plan is None:
            fn.plan = plan_function(fn, state)
        if fn.plan is not None:
            return _do_jit_planned(fn, state, fn.plan)
    return _do_jit_every_slot(fn, state)


def _do_jit_every_slot(fn: FuncJit, state: PassState) -> tuple[bytes, list[int]]:
    """The kernel's loop: every slot emitted in this pass."""
    out = bytearray(fn.flavour.prologue(fn))
    addrs = list(state.addrs)
    addrs[0] = len(out)
    insns = fn.insns
    n = len(insns)
    i = 1
    while i <= n:
        code, used = do_jit_insn(fn, state, i, insns[i - 1], len(out))
        if len(code) > BPF_MAX_INSN_SIZE:
            raise JitError("fatal insn size error")
        end = len(out) + len(code)
        if state.image is not None and end != state.addrs[i + used - 1]:
            raise JitError(f"{fn.name}: fatal error: image size changed in the final pass")
        out += code
        # lddw's second slot: the kernel leaves its addrs[] entry stale; we give it the pair's
        # end, so that addrs[] stays monotonic and the second slot owns no code
        for k in range(used):
            addrs[i + k] = end
        i += used
    return bytes(out), addrs


def plan_function(fn: FuncJit, state: PassState) -> PassPlan | None:
    """The function's :class:`PassPlan`, made before its first pass: the prologue, the invariant slots'
    code (from the shared cache, else emitted and remembered) in runs, and the slots every pass emits.

    None when an invariant slot's code cannot be had (the emitter refuses, or the code is too long):
    the passes then emit every slot, and meet the refusal where the kernel's loop does, after the
    slots before it.

    An invariant slot's code is remembered by the instruction's fields (what makes two
    instructions equal) as a plain tuple, whose hashing and comparing take no Python call; a
    ``lddw`` by its register and the value it loads.
    """
    shared = fn.invariant_cache if fn.invariant_cache is not None else {}
    get = shared.get
    plan = PassPlan(fn.flavour.prologue(fn))
    items = plan.items
    insns = fn.insns
    n = len(insns)
    k = 0                                # insns[k] is slot k + 1
    run: list[bytes] = []                # the code of the run of invariant slots being built (empty: none)
    ends: list[int] = []
    run_size = 0
    try:
        while k < n:
            insn = insns[k]
            if insn.cls in PASS_INVARIANT_CLASSES:
                key: tuple = (insn.opcode, insn.dst, insn.src, insn.off, insn.imm, insn.map)
            elif insn.is_lddw:        # class BPF_LD: never one of the above
                key = ("lddw", insn.dst, resolve_lddw(fn, insn, insns[k + 1]))
            else:
                if run:
                    items.append(InvariantRun(k + 1 - len(ends), b"".join(run), ends))
                    run, ends, run_size = [], [], 0
                if insn.cls in (isa.BPF_JMP, isa.BPF_JMP32) and insn.op in JMP_COND:
                    cmp_key = compare_key(insn)
                    compare = get(cmp_key)
                    if compare is None:
                        compare = shared[cmp_key] = emit_cond_compare(insn)
                    items.append(CondJump(k + 1, compare, JMP_COND[insn.op], insn.off))
                else:
                    items.append(k + 1)
                k += 1
                continue
            known = get(key)
            if known is None:
                # invariant: neither the pass nor the position matter; only code that fits is kept
                known = do_jit_insn(fn, state, k + 1, insn, 0)
                if len(known[0]) > BPF_MAX_INSN_SIZE:
                    return None
                shared[key] = known
            code, used = known
            run.append(code)
            run_size += len(code)
            ends.append(run_size)
            if used == 2:
                ends.append(run_size)     # lddw: its second slot ends where the pair does
            k += used
    except Exception:  # noqa: BLE001 - the passes meet it again, in the kernel's order
        return None
    if run:
        items.append(InvariantRun(k + 1 - len(ends), b"".join(run), ends))
    return plan


def _do_jit_planned(fn: FuncJit, state: PassState, plan: PassPlan) -> tuple[bytes, list[int]]:
    """do_jit with a plan: the invariant runs' bytes and sizes as planned, the rest emitted.

    The checks of the full loop hold for the runs by construction (their code was checked when
    the plan was made; in the final pass a run starts where the previous pass put it when the
    slot before it, checked here, ends there), so only the emitted slots are checked.
    """
    parts = [plan.prologue]
    size = len(plan.prologue)
    last = state.addrs            # the previous pass's addrs[]
    insns = fn.insns
    final = state.image is not None
    # The final pass puts every slot where the converged pass did (each emitted slot's end is
    # checked against it, and a run starts where the slot before it ends): its addrs[] are those,
    # and only the emitted slots write theirs (the same values).
    addrs = last if final else list(last)
    if not final:
        addrs[0] = size
    for item in plan.items:
        kind = type(item)
        if kind is InvariantRun:
            if not final:
                addrs[item.first:item.last] = [size + end for end in item.ends]
            parts.append(item.code)
            size += len(item.code)
        elif kind is CondJump:
            # do_jit_insn's conditional jump, without finding out again what the slot is
            i = item.i
            compare = item.compare
            code = compare + emit_jcc(state, i, len(compare), item.cond, last[i + item.off] - last[i])
            end = size + len(code)
            if final and end != last[i]:
                raise JitError(f"{fn.name}: fatal error: image size changed in the final pass")
            parts.append(code)
            addrs[i] = size = end
        else:
            code, used = do_jit_insn(fn, state, item, insns[item - 1], size)
            if len(code) > BPF_MAX_INSN_SIZE:
                raise JitError("fatal insn size error")
            end = size + len(code)
            if final and end != last[item + used - 1]:
                raise JitError(f"{fn.name}: fatal error: image size changed in the final pass")
            parts.append(code)
            addrs[item] = end
            if used == 2:
                addrs[item + 1] = end
            size = end
    return b"".join(parts), addrs


# -- the passes before the image: sizes alone --------------------------------------------------
# Before the image exists a pass's bytes are thrown away: what the next pass reads of it is addrs[]
# (where each slot ends), the length that ends the loop, and the labels in the JitContext.  Of a
# planned function's slots only the jumps can change size from one pass to the next (a conditional
# jump, a ``ja``, an exit after the first: imm8 or imm32, padded or not); every other slot's size is
# fixed once known (the invariant runs; a call: its prefix and a rel32; a tail call's sequence,
# whose jumps to the labels are imm8 or rel32 whatever their value; the first exit's epilogue).
# So the passes before the image are run on sizes: the function is cut into segments of fixed
# size, each followed by one jump, and a pass decides each jump's form from the previous pass's
# addrs[] as emit_jcc / emit_jmp do (cond_jump_nops, jump_nops, nop_jump_size: the same choices,
# the same errors, in the same order).  The pass count, and with it the padding after
# PADDING_PASSES, is the kernel's loop's; only the pass at the allocated address is emitted.
JUMP_COND, JUMP_JA, JUMP_EXIT = 0, 1, 2


@dataclass
class SizeModel:
    """A planned function as segments of fixed size, each but the last followed by a jump.

    A pass's addrs[j] is ``bases[slot_seg[j]] + slot_rel[j]``, where ``bases[0]`` is 0 and
    ``bases[k + 1]`` the end of jump k in that pass (segment 0 starts with the prologue).
    """

    slot_seg: list[int]
    slot_rel: list[int]
    seg_len: list[int]              # segment k's size; segment k is followed by jump k (the last by none)
    # per jump: (JUMP_COND/JUMP_JA/JUMP_EXIT, its slot i, the slot it jumps to (None: a ja -1, or an
    # exit, which jumps to the epilogue), the compare's size before a jcc)
    jumps: list[tuple[int, int, int | None, int]]
    exit_at: tuple[int, int] | None       # the first exit's (segment, offset in it): cleanup_addr


def size_model(fn: FuncJit, plan: PassPlan, state: PassState) -> SizeModel | None:
    """The :class:`SizeModel` of a planned function, made in its first pass (``state``).

    The fixed-size slots that are not invariant (calls, tail calls, the first exit) are emitted
    here, in the first pass's order and state, for their sizes: they set the JitContext's labels
    and the pokes' fields as the first pass does (later passes set the same labels again: each is
    the size of the sequence that sets it).  None when one of them fails (an error the kernel's
    loop meets in its first pass: the passes then emit every slot and meet it there).
    """
    insns = fn.insns
    slot_seg = [0] * (len(insns) + 1)
    slot_rel = [0] * (len(insns) + 1)
    seg_len: list[int] = []
    jumps: list[tuple[int, int, int | None, int]] = []
    exit_at = None
    rel = len(plan.prologue)
    slot_rel[0] = rel
    seg = 0
    try:
        for item in plan.items:
            kind = type(item)
            if kind is InvariantRun:
                for k, end in enumerate(item.ends):
                    slot_seg[item.first + k] = seg
                    slot_rel[item.first + k] = rel + end
                rel += len(item.code)
                continue
            if kind is CondJump:
                jump = (JUMP_COND, item.i, item.i + item.off, len(item.compare))
            else:
                i = item
                insn = insns[i - 1]
                opcode = insn.opcode
                if opcode in (isa.BPF_JMP | isa.BPF_JA, isa.BPF_JMP32 | isa.BPF_JA):
                    off = insn.off if insn.cls == isa.BPF_JMP else insn.imm
                    jump = (JUMP_JA, i, None if off == -1 else i + off, 0)
                elif opcode == isa.EXIT_OPCODE and state.seen_exit:
                    jump = (JUMP_EXIT, i, None, 0)
                else:
                    if opcode == isa.EXIT_OPCODE:
                        exit_at = (seg, rel)
                    code, used = do_jit_insn(fn, state, i, insn, rel)
                    if len(code) > BPF_MAX_INSN_SIZE or used != 1:
                        return None
                    rel += len(code)
                    slot_seg[i] = seg
                    slot_rel[i] = rel
                    continue
            seg_len.append(rel)
            jumps.append(jump)
            seg += 1
            rel = 0
            slot_seg[jump[1]] = seg           # a jump's slot ends where the next segment starts
    except JitError:
        return None
    seg_len.append(rel)
    return SizeModel(slot_seg, slot_rel, seg_len, jumps, exit_at)


def size_pass(model: SizeModel, last_bases: list[int] | None, last_sizes: list[int], padding: bool,
              imm8_max: int, ctx: JitContext) -> tuple[list[int], list[int]]:
    """One pass before the image, on sizes: this pass's bases and jump sizes (see :class:`SizeModel`).

    ``last_bases`` None: the first pass, after the kernel's guess of INITIAL_INSN_SIZE_GUESS bytes
    for every slot; ``last_sizes``: each jump's size in the previous pass (what padding keeps).
    """
    slot_seg, slot_rel, seg_len = model.slot_seg, model.slot_rel, model.seg_len
    bases = [0]
    sizes = []
    base = 0
    cleanup = None
    for k, (kind, i, target, prefix_len) in enumerate(model.jumps):
        start = base + seg_len[k]
        if last_bases is None:
            last_end = INITIAL_INSN_SIZE_GUESS * (i + 1)
            last_target = INITIAL_INSN_SIZE_GUESS * (target + 1) if target is not None else 0
        else:
            last_end = last_bases[k + 1]
            last_target = last_bases[slot_seg[target]] + slot_rel[target] if target is not None else 0
        last_size = last_sizes[k] if padding else 0
        if kind == JUMP_COND:
            nops = cond_jump_nops(padding, imm8_max, last_size, prefix_len, last_target - last_end)
            size = prefix_len + (6 if nops is None else 2 + nops)
        elif kind == JUMP_JA and target is not None and last_target == last_end:
            size = nop_jump_size(padding, last_size)        # to the next slot
        else:
            if kind == JUMP_EXIT:
                if cleanup is None:
                    seg, rel = model.exit_at
                    cleanup = bases[seg] + rel
                offset = cleanup - last_end
            else:
                offset = -2 if target is None else last_target - last_end
            nops = jump_nops(padding, imm8_max, last_size, offset)
            size = 5 if nops is None else 2 + nops
        base = start + size
        bases.append(base)
        sizes.append(size)
    if model.exit_at is not None:
        seg, rel = model.exit_at
        ctx.cleanup_addr = bases[seg] + rel
    return bases, sizes


def model_addrs(model: SizeModel, bases: list[int]) -> list[int]:
    """A pass's addrs[] from its bases."""
    return [bases[seg] + rel for seg, rel in zip(model.slot_seg, model.slot_rel, strict=True)]


@dataclass
class Converged:
    """The pass loop's end: the converged pass's length and addrs[], the passes taken, and (for
    :func:`jit_function`) what the converged pass started from: the previous pass's bases, its padding."""

    proglen: int
    addrs: list[int]
    ctx: JitContext
    passes: int
    model: SizeModel
    last_bases: list[int]
    padding: bool


def converge(fn: FuncJit) -> Converged | None:
    """The pass loop of bpf_int_jit_compile up to image allocation, on sizes (:func:`size_pass`).

    None when the function has no plan or no size model (or the passes are to emit every slot,
    REUSE_INVARIANT_CODE off): :func:`emit_passes` runs the loop then.
    """
    if not REUSE_INVARIANT_CODE:
        return None
    n = len(fn.insns)
    guess = list(range(INITIAL_INSN_SIZE_GUESS, INITIAL_INSN_SIZE_GUESS * (n + 2), INITIAL_INSN_SIZE_GUESS))
    ctx = JitContext(cleanup_addr=guess[n])
    imm8_max = fn.profile.jit_imm8_jmp_max
    first = PassState(addrs=guess, image=None, jmp_padding=False, ctx=ctx, imm8_jmp_max=imm8_max)
    fn.final_pass = False
    if fn.plan is None:
        fn.plan = plan_function(fn, first)
    if fn.plan is None:
        return None
    model = size_model(fn, fn.plan, first)
    if model is None:
        return None
    last_bases = None
    last_sizes: list[int] = []
    oldproglen = 0
    padding = False
    for npass in range(MAX_PASSES):
        if not padding and npass >= PADDING_PASSES:
            padding = True
        bases, sizes = size_pass(model, last_bases, last_sizes, padding, imm8_max, ctx)
        proglen = bases[-1] + model.seg_len[-1]
        if proglen == oldproglen:        # (never in the first pass: oldproglen is 0, a function has code)
            return Converged(proglen, model_addrs(model, bases), ctx, npass + 1, model, last_bases, padding)
        oldproglen = proglen
        last_bases, last_sizes = bases, sizes
    raise JitError(f"{fn.name}: the image did not converge in {MAX_PASSES} passes")


def emit_passes(fn: FuncJit) -> tuple[bytes, list[int], JitContext, int]:
    """The pass loop with every pass emitted (the reference, and a function without a size model)."""
    n = len(fn.insns)
    addrs = list(range(INITIAL_INSN_SIZE_GUESS, INITIAL_INSN_SIZE_GUESS * (n + 2), INITIAL_INSN_SIZE_GUESS))
    ctx = JitContext(cleanup_addr=addrs[n])
    oldproglen = 0
    padding = False
    for npass in range(MAX_PASSES):
        if not padding and npass >= PADDING_PASSES:
            padding = True
        state = PassState(addrs=addrs, image=None, jmp_padding=padding, ctx=ctx,
                          imm8_jmp_max=fn.profile.jit_imm8_jmp_max)
        code, addrs = do_jit(fn, state)
        if len(code) == oldproglen:
            return code, addrs, ctx, npass + 1
        oldproglen = len(code)
    raise JitError(f"{fn.name}: the image did not converge in {MAX_PASSES} passes")


def jit_function(fn: FuncJit) -> tuple[bytes, list[int], JitContext, int]:
    """The pass loop of bpf_int_jit_compile up to image allocation; returns the converged pass's
    code, its addrs, ctx and the passes taken (the converged pass's bytes emitted from the state
    it started from)."""
    done = converge(fn)
    if done is None:
        return emit_passes(fn)
    state = PassState(addrs=model_addrs(done.model, done.last_bases), image=None, jmp_padding=done.padding,
                      ctx=done.ctx, imm8_jmp_max=fn.profile.jit_imm8_jmp_max)
    code, addrs = do_jit(fn, state)
    return code, addrs, done.ctx, done.passes


def final_pass(fn: FuncJit, addrs: list[int], ctx: JitContext, base: int) -> tuple[bytes, list[int]]:
    """The pass at the allocated address (also the kernel's extra pass for subprograms: padding on)."""
    state = PassState(addrs=addrs, image=base, jmp_padding=True, ctx=ctx, imm8_jmp_max=fn.profile.jit_imm8_jmp_max)
    return do_jit(fn, state)


# -- bpf_int_jit_compile --------------------------------------------------------------------------
def bpf_int_jit_compile(prog: Program, maps: Mapping[str, MapDef], profile: Profile, env: JitEnv,
                        options: JitOptions,
                        prog_array_target: Callable[[str, int], int | None],
                        prog_type: str = DEFAULT_PROG_TYPE) -> JitProgram:
    """Verifier rewrites, then JIT every function, allocate, final pass, direct tail-call fixup.

    ``prog_array_target(map, key)`` gives the ``bpf_func`` of the program in a
    prog-array slot now (None if empty): the fixup patches those sites, after
    which every poke is stable.  Raises :class:`JitError` (or
    :class:`~bpfdiff.verifier.VerifierError`, also a ValueError) for programs
    the kernel would refuse (the verifier model, :func:`bpfdiff.verifier.verify`).
    """
    try:
        flavour = FLAVOURS[profile.jit_prologue]
    except KeyError:
        raise JitError(f"profile {profile.name}: unknown JIT flavour {profile.jit_prologue!r}") from None
    xl = verify(prog, maps, profile, options, prog_type)
    retpoline = profile.retpoline if options.retpoline is None else options.retpoline
    pokes = [PokeDescriptor(map=p.map, key=p.key, insn_idx=p.insn_idx, adj_off=profile.x86_tail_call_offset)
             for p in xl.pokes]
    bases: dict[int, int] = {}
    funcs: list[FuncJit] = []
    starts = {s.start: k for k, s in enumerate(xl.subprogs)}
    shared = invariant_cache(profile, options.bugs) if REUSE_INVARIANT_CODE else None
    for index, sub in enumerate(xl.subprogs):
        insns = xl.insns[sub.start:sub.end]
        fn = FuncJit(
            name=prog.name if index == 0 else f"{prog.name}/f{index}", func_index=index, insns=insns,
            first_insn=sub.start, orig_pc=xl.orig_pc[sub.start:sub.end], stack_depth=sub.stack_depth,
            tail_call_reachable=sub.tail_call_reachable, is_subprog=index != 0, profile=profile, env=env,
            options=options, retpoline=retpoline,
            pokes={k: p for k, p in enumerate(pokes) if sub.start <= p.insn_idx < sub.end},
            func_addr=bases.get, flavour=flavour, invariant_cache=shared)
        # (the opcode first: a property call for every instruction costs more than the test)
        fn.call_target_func = {k: starts[sub.start + k + 1 + insn.imm] for k, insn in enumerate(insns)
                               if insn.opcode == isa.CALL_OPCODE and insn.is_pseudo_call}
        used, tail_call_seen = detect_reg_usage(insns)
        fn.callee_regs_used = ALL_CALLEE_REGS if flavour.uses_all_callee_regs else used
        fn.tail_call_reachable = fn.tail_call_reachable or tail_call_seen
        funcs.append(fn)

    # jit_subprogs: every function converges and gets its image (calls to later
    # functions still go to a placeholder), then one extra pass with real addresses.
    converged = []
    for fn in funcs:
        done = converge(fn)
        if done is None:
            code, addrs, ctx, _ = emit_passes(fn)
            proglen = len(code)
        else:
            proglen, addrs, ctx = done.proglen, done.addrs, done.ctx
        bases[fn.func_index] = env.alloc_image(proglen)
        converged.append((addrs, ctx))
    images = []
    for fn, (addrs, ctx) in zip(funcs, converged, strict=True):
        base = bases[fn.func_index]
        code, addrs = final_pass(fn, addrs, ctx, base)
        image = JitImage(name=fn.name, func_index=fn.func_index, base=base, code=code, addrs=addrs,
                         pokes=sorted(fn.pokes.values(), key=lambda p: p.insn_idx), stack_depth=fn.stack_depth,
                         tail_call_reachable=fn.tail_call_reachable,
                         tail_call_cnt_off=flavour.tail_call_cnt_off(fn),
                         tail_call_cnt_ptr=profile.jit_tail_call_cnt == "pointer",
                         first_insn=fn.first_insn,
                         orig_pc=list(fn.orig_pc),
                         indirect_tail_calls=[(addr - base, reg) for addr, reg in fn.indirect_jumps])
        images.append(image)

    def slot_target(map_name: str, key: int) -> int | None:
        # a seed-era tnum-range key can exceed max_entries: the kernel then reads past ptrs[]
        # (KASAN territory); we read it as an empty slot, the only value a map update can give it
        return prog_array_target(map_name, key) if key < maps[map_name].max_entries else None

    # bpf_tail_call_direct_fixup on the (still private, read-write) image bytes
    for image in images:
        if not image.pokes:
            continue
        buf = bytearray(image.code)
        base = image.base

        def read(addr: int, n: int, buf: bytearray = buf, base: int = base) -> bytes:
            return bytes(buf[addr - base:addr - base + n])

        def write(addr: int, data: bytes, buf: bytearray = buf, base: int = base) -> None:
            buf[addr - base:addr - base + len(data)] = data

        problems = bpf_tail_call_direct_fixup(image.pokes, slot_target, read, write)
        if problems:
            raise JitError(f"{image.name}: {'; '.join(problems)}")
        image.code = bytes(buf)
    return JitProgram(name=prog.name, xlated=list(xl.insns), images=images, xlate_result=xl)
