"""``bpftool prog dump jited`` style listings of JIT images (capstone, objdump spellings).

bpftool disassembles an image at address 0 with libbfd, so its listings use
objdump's AT&T dialect of that era (binutils 2.3x):

* one line per instruction, ``<hex offset>:`` then the mnemonic and operands;
* no size suffix when a register operand already gives the size (``mov
  %rsp,%rbp``, ``push %rbp``), a suffix otherwise (``pushq $0x0``, ``nopl``,
  ``movl $0x0,-0x8(%rbp)``); ``callq``/``jmpq`` for rel32 branches,
  ``retq``, ``leaveq``; the two-byte nop ``66 90`` is ``xchg %ax,%ax``;
* immediates in hex, masked to the operand size (``$0xffffffff``), memory
  operands as ``disp(base,index,scale)`` with an explicit ``0x0``
  displacement when the encoding has one (``nopl 0x0(%rax,%rax,1)``);
* branch targets as absolute offsets from the start of the image, 16 hex
  digits, wrapping for jumps to other images (``jmpq 0xfffffffffffd1785``).

Capstone's AT&T printer differs in all of these, so operands are rebuilt from
capstone's decoded details rather than patched textually.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import capstone
from capstone import x86_const

# mnemonics whose size suffix objdump drops when a register operand fixes the size
SUFFIXED_BASES = frozenset({
    "mov", "movabs", "add", "sub", "and", "or", "xor", "cmp", "test", "push", "pop", "shl", "shr", "sar",
    "rol", "ror", "neg", "not", "imul", "mul", "div", "idiv", "xchg", "cmpxchg", "xadd", "bswap", "lea",
    "inc", "dec", "adc", "sbb", "sal",
})
SIZE_SUFFIXES = "bwlq"
# objdump's names for instructions whose capstone spelling differs regardless of operands
OBJDUMP_MNEMONIC = {"leave": "leaveq", "ret": "retq", "call": "callq"}
REL32_BRANCH_MNEMONIC = {0xE9: "jmpq", 0xE8: "callq"}
XCHG_AX_AX = bytes.fromhex("6690")
SHIFT_BY_ONE_OPCODES = frozenset({0xD0, 0xD1})   # shift/rotate by an implicit 1


@dataclass(frozen=True, slots=True)
class JitedLine:
    offset: int
    size: int
    mnemonic: str
    operands: str
    raw: bytes

    def text(self) -> str:
        return f"{self.offset:4x}:\t{self.mnemonic:<6} {self.operands}".rstrip()


@lru_cache(maxsize=1)
def _disassembler() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.syntax = capstone.CS_OPT_SYNTAX_ATT
    md.detail = True
    return md


def _hex_signed(value: int) -> str:
    return f"-0x{-value:x}" if value < 0 else f"0x{value:x}"


def _mem_operand(insn: capstone.CsInsn, op: capstone.x86.X86Op) -> str:
    mem = op.mem
    base = f"%{insn.reg_name(mem.base)}" if mem.base else ""
    index = f",%{insn.reg_name(mem.index)},{mem.scale}" if mem.index else ""
    if mem.base == x86_const.X86_REG_RIP:
        disp = _hex_signed(mem.disp)
    elif insn.disp_size or not (base or index):
        disp = _hex_signed(mem.disp) if base or index else f"0x{mem.disp & (2**64 - 1):x}"
    else:
        disp = ""
    segment = f"%{insn.reg_name(mem.segment)}:" if mem.segment else ""   # add %gs:0x19a18,%rax
    if not (base or index):
        return segment + disp
    return f"{segment}{disp}({base}{index})"


def _is_relative_branch(insn: capstone.CsInsn) -> bool:
    return any(group in (capstone.CS_GRP_JUMP, capstone.CS_GRP_CALL) for group in insn.groups) and \
        len(insn.operands) == 1 and insn.operands[0].type == x86_const.X86_OP_IMM


def _operand(insn: capstone.CsInsn, op: capstone.x86.X86Op, branch: bool) -> str:
    if op.type == x86_const.X86_OP_IMM:
        if branch:
            return f"0x{op.imm & (2**64 - 1):016x}"
        return f"$0x{op.imm & ((1 << (8 * op.size)) - 1):x}"
    text = f"%{insn.reg_name(op.reg)}" if op.type == x86_const.X86_OP_REG else _mem_operand(insn, op)
    # indirect branches: objdump marks the operand with '*' (jmpq *%rcx)
    indirect = insn.group(capstone.CS_GRP_JUMP) or insn.group(capstone.CS_GRP_CALL)
    return f"*{text}" if indirect else text


def _mnemonic(insn: capstone.CsInsn, has_register: bool, branch: bool) -> str:
    words = insn.mnemonic.split()
    name = words[-1]
    if branch and insn.bytes[0] in REL32_BRANCH_MNEMONIC:
        name = REL32_BRANCH_MNEMONIC[insn.bytes[0]]
    elif name in OBJDUMP_MNEMONIC:
        name = OBJDUMP_MNEMONIC[name]
    elif has_register and name[-1:] in SIZE_SUFFIXES and name[:-1] in SUFFIXED_BASES:
        name = name[:-1]
    return " ".join(words[:-1] + [name])


def jited_lines(code: bytes) -> list[JitedLine]:
    """Decode an image into objdump-style lines (disassembled at offset 0, like bpftool)."""
    lines = []
    end = 0
    for insn in _disassembler().disasm(code, 0):
        raw = bytes(insn.bytes)
        end = insn.address + insn.size
        if raw == XCHG_AX_AX:
            lines.append(JitedLine(insn.address, insn.size, "xchg", "%ax,%ax", raw))
            continue
        branch = _is_relative_branch(insn)
        ops = insn.operands
        has_register = any(op.type == x86_const.X86_OP_REG for op in ops)
        # AT&T order: source first; capstone's detail lists operands in that order already
        if insn.opcode[0] in SHIFT_BY_ONE_OPCODES:
            ops = [op for op in ops if op.type != x86_const.X86_OP_IMM]   # objdump: `shl %rdi`, no `$0x1`
        operands = ",".join(_operand(insn, op, branch) for op in ops)
        lines.append(JitedLine(insn.address, insn.size, _mnemonic(insn, has_register, branch), operands, raw))
    if end < len(code):
        # bytes capstone cannot decode: shown as objdump does, one (bad) line
        lines.append(JitedLine(end, len(code) - end, "(bad)", "", bytes(code[end:])))
    return lines


def format_jited(code: bytes, base: int = 0, header: bool = False, opcodes: bool = False) -> str:
    """``bpftool prog dump jited`` text of an image; ``base`` only labels the header line.

    Offsets and branch targets are relative to the start of the image, as
    bpftool shows them; ``opcodes`` adds the raw bytes (``bpftool ... opcodes``).
    """
    out = [f"0x{base:x}:"] if header else []
    for line in jited_lines(code):
        out.append(line.text())
        if opcodes:
            out.append("\t" + " ".join(f"{b:02x}" for b in line.raw))
    return "\n".join(out) + ("\n" if out else "")
