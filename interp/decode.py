"""Decode a program once into a list of closures, one per slot.

Each closure is ``run(r, m) -> next pc`` where ``r`` is the register list
(R0..R10, unsigned 64-bit ints) and ``m`` the :class:`~bpfdiff.interp.vm.Machine`
(memory, maps, frames).  Control transfers that change the running program
(exit, tail call) raise :class:`Exit` / :class:`TailCall`; the machine's loop
handles them.

The ALU and jump closures are produced by *factories* generated once at
import from the expression tables below, so each instruction runs one
specialised closure with its operation inlined -- no dispatch on opcode bits
at run time.  Semantics (kernel/bpf/core.c ``___bpf_prog_run``, RFC 9669):
every 32-bit result is zero-extended, shift counts are masked to the operand
width, unsigned div by zero gives 0, mod by zero leaves dst (truncated to 32
bits for the 32-bit form), signed division truncates towards zero with
``INT_MIN / -1 == INT_MIN`` and the signed remainder takes the dividend's sign.
"""

from __future__ import annotations

from collections.abc import Callable

from bpfdiff.engine import FAULT_INVALID, FAULT_UNSUPPORTED
from bpfdiff.helpers import CLOBBER_VALUES, HelperFault
from bpfdiff.isa import (
    BPF_ADD,
    BPF_ALU,
    BPF_ALU64,
    BPF_AND,
    BPF_ARSH,
    BPF_ATOMIC,
    BPF_CALL,
    BPF_CMPXCHG,
    BPF_DIV,
    BPF_END,
    BPF_EXIT,
    BPF_FETCH,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JLE,
    BPF_JLT,
    BPF_JMP,
    BPF_JMP32,
    BPF_JNE,
    BPF_JSET,
    BPF_JSGE,
    BPF_JSGT,
    BPF_JSLE,
    BPF_JSLT,
    BPF_LDX,
    BPF_LSH,
    BPF_MEMSX,
    BPF_MOD,
    BPF_MOV,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_PSEUDO_CALL,
    BPF_PSEUDO_MAP_FD,
    BPF_PSEUDO_MAP_VALUE,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_TO_BE,
    BPF_X,
    BPF_XCHG,
    BPF_XOR,
    SIZE_BYTES,
    Insn,
    Program,
    lddw_value,
)
from bpfdiff.memo import IdentityMemo

M64 = (1 << 64) - 1
M32 = 0xFFFFFFFF

Closure = Callable[[list, object], int]


class Exit(Exception):  # noqa: N818 - a control transfer, not an error
    """``exit``: the machine pops a frame or ends the run."""


class TailCall(Exception):  # noqa: N818 - a control transfer, not an error
    """``call bpf_tail_call``: the machine decides between the target and fall-through."""


class InvalidSlot(HelperFault):
    def __init__(self, reason: str) -> None:
        super().__init__(FAULT_INVALID, reason)


# -- signed division helpers (the rare path; called from generated code) ------------
def _signed(value: int, bits: int) -> int:
    return value - (1 << bits) if value >> (bits - 1) else value


def sdiv(a: int, b: int, bits: int) -> int:
    if b == 0:
        return 0
    sa, sb = _signed(a, bits), _signed(b, bits)
    q = abs(sa) // abs(sb)
    return (-q if (sa < 0) != (sb < 0) else q) & ((1 << bits) - 1)


def smod(a: int, b: int, bits: int) -> int:
    if b == 0:
        return a
    sa, sb = _signed(a, bits), _signed(b, bits)
    rem = abs(sa) % abs(sb)
    return (-rem if sa < 0 else rem) & ((1 << bits) - 1)


# -- ALU: result expressions over a (dst) and b (source), both unsigned at width -----
# {W} width in bits, {MASK} width mask, {SHIFT} shift-count mask, {SIGN} top bit.
ALU_EXPRESSIONS: dict[tuple[int, int], str] = {
    # (op, off) -> expression
    (BPF_ADD, 0): "({a} + {b}) & {MASK}",
    (BPF_SUB, 0): "({a} - {b}) & {MASK}",
    (BPF_MUL, 0): "({a} * {b}) & {MASK}",
    (BPF_DIV, 0): "a // b if (b := {b}) else 0",
    (BPF_DIV, 1): "sdiv({a}, {b}, {W})",
    (BPF_MOD, 0): "a % b if (b := {b}) else a",
    (BPF_MOD, 1): "smod({a}, {b}, {W})",
    (BPF_OR, 0): "{a} | {b}",
    (BPF_AND, 0): "{a} & {b}",
    (BPF_XOR, 0): "{a} ^ {b}",
    (BPF_LSH, 0): "({a} << ({b} & {SHIFT})) & {MASK}",
    (BPF_RSH, 0): "{a} >> ({b} & {SHIFT})",
    (BPF_ARSH, 0): "((({a}) ^ {SIGN}) - {SIGN}) >> ({b} & {SHIFT}) & {MASK}",
    (BPF_NEG, 0): "-{a} & {MASK}",
    (BPF_MOV, 0): "{b}",
    # movsx: sign-extend the low 8/16/32 bits of the source to the width
    (BPF_MOV, 8): "((({b} & 0xFF) ^ 0x80) - 0x80) & {MASK}",
    (BPF_MOV, 16): "((({b} & 0xFFFF) ^ 0x8000) - 0x8000) & {MASK}",
    (BPF_MOV, 32): "((({b} & 0xFFFFFFFF) ^ 0x80000000) - 0x80000000) & {MASK}",
}
# div/mod assign a and b once (they are used twice); the others read registers inline.
_NEEDS_A_VARIABLE = {BPF_DIV, BPF_MOD}

WIDTHS = {BPF_ALU64: 64, BPF_ALU: 32}

_ALU_TEMPLATE = """
def factory(dst, src, imm, nxt):
    def run(r, m):
{prelude}        r[dst] = {expr}
        return nxt
    return run
"""


def _width_params(bits: int) -> dict[str, str]:
    return {"W": str(bits), "MASK": hex((1 << bits) - 1), "SHIFT": str(bits - 1), "SIGN": hex(1 << (bits - 1))}


def _build_factory(template: str, fields: dict[str, str]) -> Callable:
    namespace = {"sdiv": sdiv, "smod": smod}
    exec(template.format(**fields), namespace)  # noqa: S102 - source comes from the tables above
    return namespace["factory"]


def _alu_factories() -> dict[tuple[int, int, int, int], Callable]:
    """(class, op, source, off) -> factory(dst, src, imm, nxt) for every ALU operation but END."""
    factories = {}
    for cls, bits in WIDTHS.items():
        params = _width_params(bits)
        dst_read = "r[dst]" if bits == 64 else "(r[dst] & 0xFFFFFFFF)"
        for source in (0, BPF_X):
            src_read = "imm" if source == 0 else ("r[src]" if bits == 64 else "(r[src] & 0xFFFFFFFF)")
            for (op, off), expr in ALU_EXPRESSIONS.items():
                if off == 32 and bits == 32:
                    continue
                if op == BPF_MOV and off and source == 0:
                    continue
                prelude = ""
                if op in _NEEDS_A_VARIABLE and off == 0:
                    prelude = f"        a = {dst_read}\n"
                    text = expr.format(a="a", b=src_read, **params)
                else:
                    text = expr.format(a=dst_read, b=src_read, **params)
                factories[(cls, op, source, off)] = _build_factory(
                    _ALU_TEMPLATE, {"prelude": prelude, "expr": text})
    return factories


ALU_FACTORIES = _alu_factories()


# -- byte order: (class, source bit) -> how to transform a value of `imm` bits ------
def _swap(value: int, bits: int) -> int:
    return int.from_bytes((value & ((1 << bits) - 1)).to_bytes(bits // 8, "little"), "big")


def _truncate(value: int, bits: int) -> int:
    return value & ((1 << bits) - 1)


END_OPERATIONS = {
    (BPF_ALU, 0): _truncate,        # le16/le32/le64: the host (x86) is little endian
    (BPF_ALU, BPF_TO_BE): _swap,    # be16/be32/be64
    (BPF_ALU64, 0): _swap,          # bswap16/32/64 (RFC 9669 unconditional swap)
}


def _end_closure(insn: Insn, nxt: int) -> Closure:
    transform, dst, bits = END_OPERATIONS[(insn.cls, insn.source)], insn.dst, insn.imm

    def run(r: list, m: object) -> int:
        r[dst] = transform(r[dst], bits)
        return nxt
    return run


# -- conditional jumps -----------------------------------------------------------
JUMP_CONDITIONS: dict[int, str] = {
    BPF_JEQ: "{a} == {b}",
    BPF_JNE: "{a} != {b}",
    BPF_JGT: "{a} > {b}",
    BPF_JGE: "{a} >= {b}",
    BPF_JLT: "{a} < {b}",
    BPF_JLE: "{a} <= {b}",
    BPF_JSET: "{a} & {b}",
    # signed comparisons: flipping the sign bit maps signed order onto unsigned order
    BPF_JSGT: "({a} ^ {SIGN}) > ({b} ^ {SIGN})",
    BPF_JSGE: "({a} ^ {SIGN}) >= ({b} ^ {SIGN})",
    BPF_JSLT: "({a} ^ {SIGN}) < ({b} ^ {SIGN})",
    BPF_JSLE: "({a} ^ {SIGN}) <= ({b} ^ {SIGN})",
}
JUMP_WIDTHS = {BPF_JMP: 64, BPF_JMP32: 32}

_JUMP_TEMPLATE = """
def factory(dst, src, imm, taken, nxt):
    def run(r, m):
        return taken if {cond} else nxt
    return run
"""


def _jump_factories() -> dict[tuple[int, int, int], Callable]:
    factories = {}
    for cls, bits in JUMP_WIDTHS.items():
        params = _width_params(bits)
        dst_read = "r[dst]" if bits == 64 else "(r[dst] & 0xFFFFFFFF)"
        for source in (0, BPF_X):
            src_read = "imm" if source == 0 else ("r[src]" if bits == 64 else "(r[src] & 0xFFFFFFFF)")
            for op, cond in JUMP_CONDITIONS.items():
                factories[(cls, op, source)] = _build_factory(
                    _JUMP_TEMPLATE, {"cond": cond.format(a=dst_read, b=src_read, **params)})
    return factories


JUMP_FACTORIES = _jump_factories()


# -- memory -------------------------------------------------------------------------
def _ldx_closure(insn: Insn, nxt: int) -> Closure:
    dst, src, off, size = insn.dst, insn.src, insn.off, SIZE_BYTES[insn.size]
    if insn.mode == BPF_MEMSX:
        sign = 1 << (size * 8 - 1)

        def run_sx(r: list, m) -> int:
            r[dst] = ((m.mem.load((r[src] + off) & M64, size) ^ sign) - sign) & M64
            return nxt
        return run_sx

    def run(r: list, m) -> int:
        r[dst] = m.mem.load((r[src] + off) & M64, size)
        return nxt
    return run


def _st_closure(insn: Insn, nxt: int) -> Closure:
    dst, off, size = insn.dst, insn.off, SIZE_BYTES[insn.size]
    value = insn.imm & ((1 << (size * 8)) - 1)   # imm is sign-extended, then truncated to the size

    def run(r: list, m) -> int:
        m.mem.store((r[dst] + off) & M64, size, value)
        return nxt
    return run


def _stx_closure(insn: Insn, nxt: int) -> Closure:
    dst, src, off, size = insn.dst, insn.src, insn.off, SIZE_BYTES[insn.size]
    mask = (1 << (size * 8)) - 1

    def run(r: list, m) -> int:
        m.mem.store((r[dst] + off) & M64, size, r[src] & mask)
        return nxt
    return run


ATOMIC_COMBINE: dict[int, Callable[[int, int], int]] = {
    BPF_ADD: lambda old, v: old + v,
    BPF_OR: lambda old, v: old | v,
    BPF_AND: lambda old, v: old & v,
    BPF_XOR: lambda old, v: old ^ v,
    BPF_XCHG & ~BPF_FETCH: lambda old, v: v,
}


def _atomic_closure(insn: Insn, nxt: int) -> Closure:
    dst, src, off, size, op = insn.dst, insn.src, insn.off, SIZE_BYTES[insn.size], insn.imm
    mask = (1 << (size * 8)) - 1
    if op == BPF_CMPXCHG:
        # R0 is the comparand and receives the old value (zero-extended for 32 bits)
        def run_cmpxchg(r: list, m) -> int:
            addr = (r[dst] + off) & M64
            old = m.mem.load(addr, size)
            if old == r[0] & mask:
                m.mem.store(addr, size, r[src] & mask)
            r[0] = old
            return nxt
        return run_cmpxchg
    combine, fetch = ATOMIC_COMBINE[op & ~BPF_FETCH], bool(op & BPF_FETCH)

    def run(r: list, m) -> int:
        addr = (r[dst] + off) & M64
        old = m.mem.load(addr, size)
        m.mem.store(addr, size, combine(old, r[src] & mask) & mask)
        if fetch:
            r[src] = old
        return nxt
    return run


# -- ld_imm64 -------------------------------------------------------------------------
def _lddw_closure(insn: Insn, second: Insn, pc: int) -> Closure:
    dst, nxt = insn.dst, pc + 2
    if insn.src == BPF_PSEUDO_MAP_FD:
        name = insn.map

        def run_map(r: list, m) -> int:
            r[dst] = m.map_pointer[name]
            return nxt
        return run_map
    if insn.src == BPF_PSEUDO_MAP_VALUE:
        name, value_off = insn.map, second.imm & M32

        def run_value(r: list, m) -> int:
            r[dst] = m.map_value[name] + value_off
            return nxt
        return run_value
    value = lddw_value(insn, second)

    def run(r: list, m) -> int:
        r[dst] = value
        return nxt
    return run


def _invalid(reason: str) -> Closure:
    def run(r: list, m) -> int:
        raise InvalidSlot(reason)
    return run


def _unsupported(reason: str) -> Closure:
    def run(r: list, m) -> int:
        raise HelperFault(FAULT_UNSUPPORTED, reason)
    return run


# -- calls and exit --------------------------------------------------------------------
def _raise_exit(r: list, m) -> int:
    raise Exit


def _raise_tail_call(r: list, m) -> int:
    raise TailCall


_CLOBBER = tuple(CLOBBER_VALUES[reg] for reg in range(1, 6))


def _helper_closure(helper_id: int, nxt: int) -> Closure:
    c1, c2, c3, c4, c5 = _CLOBBER

    def run(r: list, m) -> int:
        r[0] = m.call_helper(helper_id, r[1], r[2], r[3], r[4], r[5])
        r[1], r[2], r[3], r[4], r[5] = c1, c2, c3, c4, c5
        return nxt
    return run


def _pseudo_call_closure(target: int, nxt: int) -> Closure:
    def run(r: list, m) -> int:
        return m.call(r, target, nxt)
    return run


def _jmp_closure(insn: Insn, pc: int) -> Closure:
    op, nxt = insn.op, pc + 1
    if op == BPF_EXIT:
        return _raise_exit
    if op == BPF_CALL:
        if insn.src == BPF_PSEUDO_CALL:
            return _pseudo_call_closure(pc + 1 + insn.imm, nxt)
        if insn.src != 0:
            return _unsupported(f"kfunc call (btf id {insn.imm})")
        if insn.is_tail_call:
            return _raise_tail_call
        return _helper_closure(insn.imm, nxt)
    if op == BPF_JA:
        target = pc + 1 + (insn.imm if insn.cls == BPF_JMP32 else insn.off)

        def run_ja(r: list, m) -> int:
            return target
        return run_ja
    bits = JUMP_WIDTHS[insn.cls]
    imm = insn.imm & ((1 << bits) - 1)     # sign-extended to the comparison width
    return JUMP_FACTORIES[(insn.cls, op, insn.source)](insn.dst, insn.src, imm, pc + 1 + insn.off, nxt)


def _alu_closure(insn: Insn, pc: int) -> Closure:
    cls, op = insn.cls, insn.op
    if op == BPF_END:
        return _end_closure(insn, pc + 1)
    bits = WIDTHS[cls]
    imm = insn.imm & ((1 << bits) - 1)
    off = insn.off if op == BPF_DIV or op == BPF_MOD or op == BPF_MOV else 0
    factory = ALU_FACTORIES[(cls, op, insn.source, off)]
    return factory(insn.dst, insn.src, imm, pc + 1)


def decode_program(program: Program) -> list[Closure]:
    """One closure per slot plus a final one that faults when execution falls off the end.

    The program must have passed :func:`bpfdiff.isa.check_program`.
    """
    insns = program.insns
    code: list[Closure] = []
    append = code.append
    pc = 0
    n = len(insns)
    while pc < n:
        insn = insns[pc]
        cls = insn.cls
        if cls == BPF_ALU or cls == BPF_ALU64:
            append(_alu_closure(insn, pc))
        elif insn.is_lddw:
            append(_lddw_closure(insn, insns[pc + 1], pc))
            append(_invalid(f"jump into the second slot of the lddw at {pc}"))
            pc += 2
            continue
        elif cls == BPF_JMP or cls == BPF_JMP32:
            append(_jmp_closure(insn, pc))
        elif cls == BPF_LDX:
            append(_ldx_closure(insn, pc + 1))
        elif cls == BPF_ST:
            append(_st_closure(insn, pc + 1))
        elif cls == BPF_STX:
            append(_atomic_closure(insn, pc + 1) if insn.mode == BPF_ATOMIC else _stx_closure(insn, pc + 1))
        else:
            append(_invalid(f"opcode 0x{insn.opcode:02x}"))
        pc += 1
    code.append(_invalid("fell off the end of the program"))
    return code


# :func:`decode_program`, remembered per Program object: every run of a scenario, and every
# what-if re-run of the oracle's probes, runs the same Program objects.
decoded: IdentityMemo[Program, list[Closure]] = IdentityMemo(decode_program, 4096)


__all__ = ["Exit", "InvalidSlot", "TailCall", "decode_program", "decoded", "sdiv", "smod"]
