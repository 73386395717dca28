"""Disassemblers: back to our assembler syntax, and to ``bpftool prog dump xlated`` text.

:func:`disassemble` prints the syntax :mod:`bpfdiff.asm` reads, with ``L<pc>:``
labels at jump and call targets, such that re-assembling gives the identical
slots.  A slot no mnemonic can express exactly (unknown opcode, non-zero
reserved fields, a lone second half of an ``lddw``...) is printed as a raw
``.insn OPCODE, DST, SRC, OFF, IMM`` line, so the round trip holds for any slot
sequence whose ``Insn.map`` is set only on pseudo map loads.  A pseudo map
load prints its map *name*; its ``imm`` (the fd, as left by
:func:`bpfdiff.isa.decode`) is not kept -- re-assembled it is 0.

:func:`format_xlated` prints what the kernel's ``print_bpf_insn`` (kernel/bpf/
disasm.c) prints via bpftool, one ``%4d: (%02x) ...`` line per instruction.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from bpfdiff import isa
from bpfdiff.asm import (
    ATOMIC_FETCH_ONLY,
    ATOMIC_OPS,
    CALLX_OPCODE,
    MOVSX,
    AsmError,
    assemble,
)
from bpfdiff.isa import Insn
from bpfdiff.memo import Memo

# -- inverse tables of the assembler's ---------------------------------------------
_ALU_NAMES = {
    (op, off): name
    for name, (op, off) in {
        "add": (isa.BPF_ADD, 0), "sub": (isa.BPF_SUB, 0), "mul": (isa.BPF_MUL, 0),
        "div": (isa.BPF_DIV, 0), "sdiv": (isa.BPF_DIV, 1), "or": (isa.BPF_OR, 0),
        "and": (isa.BPF_AND, 0), "lsh": (isa.BPF_LSH, 0), "rsh": (isa.BPF_RSH, 0),
        "mod": (isa.BPF_MOD, 0), "smod": (isa.BPF_MOD, 1), "xor": (isa.BPF_XOR, 0),
        "mov": (isa.BPF_MOV, 0), "arsh": (isa.BPF_ARSH, 0),
    }.items()
}
_MOVSX_NAMES = {value: name for name, value in MOVSX.items()}
_BYTE_SWAP_NAMES = {
    isa.BPF_ALU | isa.BPF_END | isa.BPF_TO_LE: "le",
    isa.BPF_ALU | isa.BPF_END | isa.BPF_TO_BE: "be",
    isa.BPF_ALU64 | isa.BPF_END | isa.BPF_TO_LE: "bswap",
}
_ATOMIC_NAMES = {
    **{imm: name for name, imm in ATOMIC_OPS.items()},
    **{imm | isa.BPF_FETCH: f"fetch {name}" for name, imm in ATOMIC_OPS.items()},
    **{imm: name for name, imm in ATOMIC_FETCH_ONLY.items()},
}
_MAP_SOURCES = (isa.BPF_PSEUDO_MAP_FD, isa.BPF_PSEUDO_MAP_VALUE)
_CALL_MODE_NAMES = {isa.BPF_PSEUDO_CALL: "local", isa.BPF_PSEUDO_KFUNC_CALL: "runtime"}
_WIDTH_SUFFIX = {isa.BPF_ALU: "32", isa.BPF_ALU64: "", isa.BPF_JMP: "", isa.BPF_JMP32: "32"}


def _imm_text(value: int) -> str:
    """Small constants in decimal, large ones as the suite writes them (hex)."""
    if -0x10000 < value < 0x10000:
        return str(value)
    return f"0x{value & 0xFFFFFFFF:x}"


def _mem_text(reg: int, off: int) -> str:
    return f"[%r{reg}]" if off == 0 else f"[%r{reg}{off:+d}]"


def _target_operand(pc: int, insn: Insn, labels: dict[int, str]) -> str:
    target = isa.jump_target(pc, insn)
    assert target is not None
    if target in labels:
        return labels[target]
    return f"{target - pc - 1:+d}"


def _insn_text(pc: int, insns: Sequence[Insn], labels: dict[int, str]) -> tuple[str, int] | None:
    """The assembler text of the instruction at ``pc`` and its slot count, or None."""
    insn = insns[pc]
    cls, op, dst, src = insn.cls, insn.op, insn.dst, insn.src
    if insn.is_lddw:
        if pc + 1 >= len(insns):
            return None
        second = insns[pc + 1]
        if insn.src == isa.BPF_PSEUDO_MAP_FD and insn.map is not None:
            return f"lddw %r{dst}, map:{insn.map}", 2
        if insn.src == isa.BPF_PSEUDO_MAP_VALUE and insn.map is not None:
            suffix = f"+{second.imm}" if second.imm else ""
            return f"lddw %r{dst}, map_value:{insn.map}{suffix}", 2
        return f"lddw %r{dst}, 0x{isa.lddw_value(insn, second):x}", 2
    if cls in (isa.BPF_ALU, isa.BPF_ALU64):
        width = _WIDTH_SUFFIX[cls]
        if op == isa.BPF_END:
            stem = _BYTE_SWAP_NAMES.get(insn.opcode)
            return (f"{stem}{insn.imm} %r{dst}", 1) if stem else None
        if op == isa.BPF_NEG:
            return f"neg{width} %r{dst}", 1
        if op == isa.BPF_MOV and insn.source == isa.BPF_X and (cls, insn.off) in _MOVSX_NAMES:
            return f"{_MOVSX_NAMES[(cls, insn.off)]} %r{dst}, %r{src}", 1
        name = _ALU_NAMES.get((op, insn.off))
        if name is None:
            return None
        operand = f"%r{src}" if insn.source == isa.BPF_X else _imm_text(insn.imm)
        return f"{name}{width} %r{dst}, {operand}", 1
    if cls in (isa.BPF_JMP, isa.BPF_JMP32):
        return _jump_text(pc, insn, labels)
    if cls == isa.BPF_LDX and insn.mode in (isa.BPF_MEM, isa.BPF_MEMSX):
        signed = "s" if insn.mode == isa.BPF_MEMSX else ""
        return f"ldx{signed}{isa.SIZE_SUFFIX[insn.size]} %r{dst}, {_mem_text(src, insn.off)}", 1
    if cls == isa.BPF_ST and insn.mode == isa.BPF_MEM:
        return f"st{isa.SIZE_SUFFIX[insn.size]} {_mem_text(dst, insn.off)}, {_imm_text(insn.imm)}", 1
    if cls == isa.BPF_STX and insn.mode == isa.BPF_MEM:
        return f"stx{isa.SIZE_SUFFIX[insn.size]} {_mem_text(dst, insn.off)}, %r{src}", 1
    if cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC and insn.size in (isa.BPF_W, isa.BPF_DW):
        name = _ATOMIC_NAMES.get(insn.imm)
        if name is None:
            return None
        width = "32" if insn.size == isa.BPF_W else ""
        return f"lock {name}{width} {_mem_text(dst, insn.off)}, %r{src}", 1
    return None


def _jump_text(pc: int, insn: Insn, labels: dict[int, str]) -> tuple[str, int] | None:
    op, width = insn.op, _WIDTH_SUFFIX[insn.cls]
    if insn.opcode == isa.EXIT_OPCODE:
        return "exit", 1
    if insn.opcode == CALLX_OPCODE:
        return f"call %r{insn.dst}", 1
    if insn.opcode == isa.CALL_OPCODE:
        if insn.src == isa.BPF_PSEUDO_CALL:
            return f"call local {_target_operand(pc, insn, labels)}", 1
        mode = _CALL_MODE_NAMES.get(insn.src)
        return (f"call {mode} {insn.imm}" if mode else f"call {insn.imm}"), 1
    if op == isa.BPF_JA and insn.source == isa.BPF_K:
        return f"ja{width} {_target_operand(pc, insn, labels)}", 1
    if op in isa.CONDITIONAL_JUMPS:
        operand = f"%r{insn.src}" if insn.source == isa.BPF_X else _imm_text(insn.imm)
        return f"{isa.JMP_OP_NAMES[op]}{width} %r{insn.dst}, {operand}, {_target_operand(pc, insn, labels)}", 1
    return None


def _without_map_fd(slots: Sequence[Insn]) -> list[Insn]:
    """``slots`` with the fd of a named pseudo map load zeroed, as the assembler writes it.

    The fd is the loader's choice (``isa.encode`` substitutes it by map name),
    so losing it keeps the program's meaning, whereas losing the name would not.
    """
    out = list(slots)
    first = out[0] if out else None
    if first is not None and first.is_lddw and first.map is not None and first.src in _MAP_SOURCES:
        out[0] = Insn(first.opcode, first.dst, first.src, first.off, 0, first.map)
    return out


def _raw_text(insn: Insn) -> str:
    return f".insn 0x{insn.opcode:02x}, {insn.dst}, {insn.src}, {insn.off}, {insn.imm}"


def _exact_text(pc: int, insns: Sequence[Insn], labels: dict[int, str]) -> tuple[str, int]:
    """Mnemonic text if it re-assembles to exactly these slots, else a raw slot."""
    described = _insn_text(pc, insns, labels)
    if described is not None:
        text, count = described
        # Verify with numeric offsets (labels need the whole program to resolve).
        numeric_text, _ = _insn_text(pc, insns, {}) or (text, count)
        if _assembled(numeric_text) == _without_map_fd(insns[pc:pc + count]):
            return text, count
    return _raw_text(insns[pc]), 1


# What one instruction's text assembles to, by the text: the same few hundred lines come back
# in every program a campaign saves (``mov %r6, %r1``, ``exit``, the epilogue's folds), and the
# assembler takes ~50 us a line.  The text is the whole key: assemble() of a text with the default
# source and first line reads nothing else (both only name the place of an error).
_ASSEMBLED: Memo[str, list[Insn]] = Memo(8192)


def _assembled(text: str) -> list[Insn]:
    """``assemble(text)``, or [] when it refuses the text."""
    again = _ASSEMBLED.get(text)
    if again is None:
        try:
            again = assemble(text)
        except AsmError:
            again = []
        _ASSEMBLED.remember(text, again)
    return again


def instruction_starts(insns: Sequence[Insn]) -> list[int]:
    """The pcs where instructions begin (second halves of ``lddw`` pairs skipped)."""
    starts, pc = [], 0
    while pc < len(insns):
        starts.append(pc)
        pc += 2 if insns[pc].is_lddw and pc + 1 < len(insns) else 1
    return starts


def disassemble(insns: Sequence[Insn]) -> str:
    """Assembler text for ``insns``; ``assemble(disassemble(x)) == x`` for any slots."""
    starts = set(instruction_starts(insns))
    labels: dict[int, str] = {}
    for pc in starts:
        target = isa.jump_target(pc, insns[pc])
        if target is not None and target in starts:
            labels[target] = f"L{target}"
    lines: list[str] = []
    pc = 0
    while pc < len(insns):
        if pc in labels:
            lines.append(f"{labels[pc]}:")
        text, count = _exact_text(pc, insns, labels)
        lines.append(text)
        pc += count
    return "\n".join(lines) + ("\n" if lines else "")


# -- bpftool ``prog dump xlated`` ------------------------------------------------------
# Helper names as the kernel's func_id_str spells them (include/uapi/linux/bpf.h,
# ___BPF_FUNC_MAPPER order).
HELPER_NAMES = {
    0: "bpf_unspec", 1: "bpf_map_lookup_elem", 2: "bpf_map_update_elem", 3: "bpf_map_delete_elem",
    4: "bpf_probe_read", 5: "bpf_ktime_get_ns", 6: "bpf_trace_printk", 7: "bpf_get_prandom_u32",
    8: "bpf_get_smp_processor_id", 9: "bpf_skb_store_bytes", 10: "bpf_l3_csum_replace",
    11: "bpf_l4_csum_replace", 12: "bpf_tail_call", 13: "bpf_clone_redirect",
    14: "bpf_get_current_pid_tgid", 15: "bpf_get_current_uid_gid", 16: "bpf_get_current_comm",
}

_XLATED_ALU = {
    isa.BPF_ADD: "+=", isa.BPF_SUB: "-=", isa.BPF_MUL: "*=", isa.BPF_DIV: "/=", isa.BPF_OR: "|=",
    isa.BPF_AND: "&=", isa.BPF_LSH: "<<=", isa.BPF_RSH: ">>=", isa.BPF_NEG: "neg", isa.BPF_MOD: "%=",
    isa.BPF_XOR: "^=", isa.BPF_MOV: "=", isa.BPF_ARSH: "s>>=", isa.BPF_END: "endian",
}
_XLATED_SIGNED_ALU = {isa.BPF_DIV: "s/=", isa.BPF_MOD: "s%="}
_XLATED_MOVSX = {8: "(s8)", 16: "(s16)", 32: "(s32)"}
_XLATED_SIZE = {isa.BPF_W: "u32", isa.BPF_H: "u16", isa.BPF_B: "u8", isa.BPF_DW: "u64"}
_XLATED_SIGNED_SIZE = {isa.BPF_W: "s32", isa.BPF_H: "s16", isa.BPF_B: "s8"}
_XLATED_JMP = {
    isa.BPF_JA: "jmp", isa.BPF_JEQ: "==", isa.BPF_JGT: ">", isa.BPF_JLT: "<", isa.BPF_JGE: ">=",
    isa.BPF_JLE: "<=", isa.BPF_JSET: "&", isa.BPF_JNE: "!=", isa.BPF_JSGT: "s>", isa.BPF_JSLT: "s<",
    isa.BPF_JSGE: "s>=", isa.BPF_JSLE: "s<=", isa.BPF_CALL: "call", isa.BPF_EXIT: "exit",
}
_XLATED_ATOMIC_ALU = {isa.BPF_ADD: "add", isa.BPF_AND: "and", isa.BPF_OR: "or", isa.BPF_XOR: "xor"}


def default_helper_name(helper_id: int) -> str:
    """The kernel's name for a helper id (``bpf_tail_call``), or ``unknown``."""
    return HELPER_NAMES.get(helper_id) or isa.KERNEL_FUNC_NAMES.get(helper_id, "unknown")


def _xlated_alu(insn: Insn) -> str:
    reg = "w" if insn.cls == isa.BPF_ALU else "r"
    code, dst, src, op = insn.opcode, insn.dst, insn.src, insn.op
    if op == isa.BPF_END:
        if insn.cls == isa.BPF_ALU64:
            return f"({code:02x}) r{dst} = bswap{insn.imm} r{dst}"
        order = "be" if insn.source == isa.BPF_TO_BE else "le"
        return f"({code:02x}) r{dst} = {order}{insn.imm} r{dst}"
    if op == isa.BPF_NEG:
        return f"({code:02x}) {reg}{dst} = -{reg}{dst}"
    signed = op in _XLATED_SIGNED_ALU and insn.off == 1
    symbol = _XLATED_SIGNED_ALU[op] if signed else _XLATED_ALU.get(op, "(null)")
    if insn.source == isa.BPF_X:
        if op == isa.BPF_MOV and insn.cls == isa.BPF_ALU64 and insn.off == isa.BPF_ADDR_PERCPU:
            return f"({code:02x}) r{dst} = &(void __percpu *)(r{src})"
        cast = _XLATED_MOVSX.get(insn.off, "") if op == isa.BPF_MOV else ""
        return f"({code:02x}) {reg}{dst} {symbol} {cast}{reg}{src}"
    return f"({code:02x}) {reg}{dst} {symbol} {insn.imm}"


def _xlated_atomic(insn: Insn) -> str:
    code, size = insn.opcode, _XLATED_SIZE[insn.size]
    where = f"(r{insn.dst} {insn.off:+d})"
    bits = "64" if insn.size == isa.BPF_DW else ""
    imm = insn.imm
    if imm in _XLATED_ATOMIC_ALU:
        return f"({code:02x}) lock *({size} *){where} {_XLATED_ALU[imm]} r{insn.src}"
    if imm & ~isa.BPF_FETCH in _XLATED_ATOMIC_ALU and imm & isa.BPF_FETCH:
        name = _XLATED_ATOMIC_ALU[imm & ~isa.BPF_FETCH]
        return f"({code:02x}) r{insn.src} = atomic{bits}_fetch_{name}(({size} *){where}, r{insn.src})"
    if imm == isa.BPF_CMPXCHG:
        return f"({code:02x}) r0 = atomic{bits}_cmpxchg(({size} *){where}, r0, r{insn.src})"
    if imm == isa.BPF_XCHG:
        return f"({code:02x}) r{insn.src} = atomic{bits}_xchg(({size} *){where}, r{insn.src})"
    return f"BUG_{code:02x}"


def _xlated_jump(insn: Insn, helper_name: Callable[[int], str], jited: bool = False) -> str:
    code, op = insn.opcode, insn.op
    reg = "w" if insn.cls == isa.BPF_JMP32 else "r"
    if op == isa.BPF_CALL:
        if insn.src == isa.BPF_PSEUDO_CALL:
            # a JITed program's dump has the relative offset in off, the callee's index in imm
            return f"({code:02x}) call pc{(insn.off if jited else insn.imm):+d}"
        name = "kernel-function" if insn.src == isa.BPF_PSEUDO_KFUNC_CALL else helper_name(insn.imm)
        return f"({code:02x}) call {name}#{insn.imm}"
    if code == isa.BPF_JMP | isa.BPF_JA:
        return f"({code:02x}) goto pc{insn.off:+d}"
    if code == isa.BPF_JMP32 | isa.BPF_JA:
        return f"({code:02x}) gotol pc{insn.imm:+d}"
    if code == isa.EXIT_OPCODE:
        return f"({code:02x}) exit"
    symbol = _XLATED_JMP.get(op, "(null)")
    if insn.source == isa.BPF_X:
        return f"({code:02x}) if {reg}{insn.dst} {symbol} {reg}{insn.src} goto pc{insn.off:+d}"
    return f"({code:02x}) if {reg}{insn.dst} {symbol} 0x{insn.imm & 0xFFFFFFFF:x} goto pc{insn.off:+d}"


def xlated_insn(
    pc: int,
    insns: Sequence[Insn],
    *,
    map_id: Callable[[str], int | None] | None = None,
    helper_name: Callable[[int], str] | None = None,
    jited: bool = False,
) -> str:
    """One instruction as ``print_bpf_insn`` shows it (without the ``pc:`` prefix).

    ``jited``: the instructions of a JITed program's dump (bpf-to-bpf calls carry
    their relative offset in ``off``, as bpftool's ``print_call_pcrel`` prints it).
    """
    insn = insns[pc]
    names = helper_name or default_helper_name
    code, cls = insn.opcode, insn.cls
    if code == isa.TAIL_CALL_OPCODE:
        # The kernel's dump turns its internal tail-call opcode back into the helper call.
        return _xlated_jump(Insn(isa.CALL_OPCODE, imm=isa.BPF_FUNC_tail_call), names)
    if cls in (isa.BPF_ALU, isa.BPF_ALU64):
        return _xlated_alu(insn)
    if cls in (isa.BPF_JMP, isa.BPF_JMP32):
        return _xlated_jump(insn, names, jited)
    if cls == isa.BPF_STX:
        if insn.mode == isa.BPF_MEM:
            return f"({code:02x}) *({_XLATED_SIZE[insn.size]} *)(r{insn.dst} {insn.off:+d}) = r{insn.src}"
        if insn.mode == isa.BPF_ATOMIC:
            return _xlated_atomic(insn)
        return f"BUG_{code:02x}"
    if cls == isa.BPF_ST:
        if insn.mode == isa.BPF_MEM:
            return f"({code:02x}) *({_XLATED_SIZE[insn.size]} *)(r{insn.dst} {insn.off:+d}) = {insn.imm}"
        return f"BUG_st_{code:02x}"
    if cls == isa.BPF_LDX:
        sizes = {isa.BPF_MEM: _XLATED_SIZE, isa.BPF_MEMSX: _XLATED_SIGNED_SIZE}.get(insn.mode)
        if sizes is None or insn.size not in sizes:
            return f"BUG_ldx_{code:02x}"
        return f"({code:02x}) r{insn.dst} = *({sizes[insn.size]} *)(r{insn.src} {insn.off:+d})"
    # BPF_LD
    if insn.mode == isa.BPF_ABS:
        return f"({code:02x}) r0 = *({_XLATED_SIZE[insn.size]} *)skb[{insn.imm}]"
    if insn.mode == isa.BPF_IND:
        return f"({code:02x}) r0 = *({_XLATED_SIZE[insn.size]} *)skb[r{insn.src} + {insn.imm}]"
    if insn.is_lddw and pc + 1 < len(insns):
        second = insns[pc + 1]
        if insn.src in (isa.BPF_PSEUDO_MAP_FD, isa.BPF_PSEUDO_MAP_VALUE):
            ident = _map_ident(insn, map_id)
            value = f"map[{ident}]" if insn.src == isa.BPF_PSEUDO_MAP_FD else f"map[{ident}][0]+{second.imm}"
        else:
            value = f"0x{isa.lddw_value(insn, second):x}"
        return f"({code:02x}) r{insn.dst} = {value}"
    return f"BUG_ld_{code:02x}"


def _map_ident(insn: Insn, map_id: Callable[[str], int | None] | None) -> str:
    """``id:N`` as bpftool shows it; without ``map_id``, the map's name (``name:NAME``)."""
    if insn.map is not None and map_id is not None:
        number = map_id(insn.map)
        if number is not None:
            return f"id:{number & 0xFFFFFFFF}"
        # Not a name of the scenario: an xlated program read back from a kernel, whose
        # imm already is the kernel's own map id (bpf_insn_prepare_dump).
        return f"id:{insn.imm & 0xFFFFFFFF}"
    if insn.map is not None:
        return f"name:{insn.map}"
    return f"id:{insn.imm & 0xFFFFFFFF}"


def format_xlated(
    insns: Sequence[Insn],
    *,
    map_id: Callable[[str], int | None] | None = None,
    helper_name: Callable[[int], str] | None = None,
    jited: bool = False,
) -> str:
    """``bpftool prog dump xlated`` text: ``   0: (b7) r3 = 0`` ..., one line per instruction.

    ``map_id`` gives the id printed for a pseudo map load (by map name);
    ``helper_name`` the full printed name of a helper id (default: the
    kernel's, e.g. ``bpf_tail_call``); ``jited`` as for :func:`xlated_insn`.
    """
    lines = []
    for pc in instruction_starts(insns):
        lines.append(f"{pc:4d}: {xlated_insn(pc, insns, map_id=map_id, helper_name=helper_name, jited=jited)}")
    return "\n".join(lines) + ("\n" if lines else "")
