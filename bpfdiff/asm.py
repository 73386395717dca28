"""Assembler for the text syntax of the BPF conformance suite (``-- asm`` sections).

One instruction per line, e.g.::

    mov %r1, 67                 # ALU64, immediate source
    add32 %r1, %r2              # ALU (32-bit), register source
    jeq %r1, 5, done            # conditional jump to a label ...
    jne32 %r1, %r2, +3          # ... or to a signed slot offset
    ldxw %r0, [%r1+4]
    stb [%r10-1], 0x80
    lock fetch add32 [%r10-8], %r1
    lddw %r0, 0x1122334455667788
    call 12                     # helper call
    call local func             # bpf-to-bpf call (src=1, imm = slot offset)
    exit

Labels are ``name:`` (alone on a line or before an instruction); ``#`` and
``//`` start comments.  As in the suite's own assembler, ``exit`` used as a
jump target means the first ``exit`` instruction unless a label of that name
is defined.

Extensions of ours, for scenarios:

* ``lddw %r2, map:NAME``            pseudo map load (src=BPF_PSEUDO_MAP_FD, imm 0, Insn.map=NAME)
* ``lddw %r2, map_value:NAME+OFF``  pseudo map value load (src=BPF_PSEUDO_MAP_VALUE, 2nd-slot imm=OFF)
* ``call %rN``                       callx (opcode 0x8d, dst=N), as the suite's assembler encodes it
* ``call runtime N``                 kfunc call (src=BPF_PSEUDO_KFUNC_CALL)
* ``.insn OPCODE, DST, SRC, OFF, IMM`` one raw slot, for encodings with no mnemonic
  (what :func:`bpfdiff.disasm.disassemble` prints for them)

The assembler checks syntax and field ranges only; whether the kernel would
accept the program is :func:`bpfdiff.isa.check_program`'s business (the
conformance suite contains programs the kernel refuses, e.g. callx).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from bpfdiff import isa
from bpfdiff.isa import Insn, Program
from bpfdiff.limits import int_literal, quote


class AsmError(ValueError):
    """A syntax error; ``str()`` is one line: ``SOURCE:LINE:COL: message``."""

    def __init__(self, source: str, line: int, col: int, message: str) -> None:
        super().__init__(f"{source}:{line}:{col}: {message}")
        self.source = source
        self.line = line
        self.col = col
        self.message = message


# -- mnemonic tables -------------------------------------------------------------
# Two-operand ALU operations: mnemonic stem -> (operation bits, off field).
# ``sdiv``/``smod`` are div/mod with off=1 (RFC 9669 section 4.1).
ALU_BINARY = {
    "add": (isa.BPF_ADD, 0), "sub": (isa.BPF_SUB, 0), "mul": (isa.BPF_MUL, 0),
    "div": (isa.BPF_DIV, 0), "sdiv": (isa.BPF_DIV, 1), "or": (isa.BPF_OR, 0),
    "and": (isa.BPF_AND, 0), "lsh": (isa.BPF_LSH, 0), "rsh": (isa.BPF_RSH, 0),
    "mod": (isa.BPF_MOD, 0), "smod": (isa.BPF_MOD, 1), "xor": (isa.BPF_XOR, 0),
    "mov": (isa.BPF_MOV, 0), "arsh": (isa.BPF_ARSH, 0),
}
# Width suffix -> instruction class; no suffix means 64-bit.
ALU_WIDTH = {"": isa.BPF_ALU64, "64": isa.BPF_ALU64, "32": isa.BPF_ALU}

# Sign-extending moves (register source only): mnemonic -> (class, off = source width).
MOVSX = {
    "movsx832": (isa.BPF_ALU, 8), "movsx1632": (isa.BPF_ALU, 16),
    "movsx864": (isa.BPF_ALU64, 8), "movsx1664": (isa.BPF_ALU64, 16), "movsx3264": (isa.BPF_ALU64, 32),
}

# Byte-order operations: mnemonic stem -> opcode; the width (16/32/64) is the imm.
# ``swap`` is the suite's older spelling of ``bswap`` (ALU64 END, unconditional).
BYTE_SWAP = {
    "le": isa.BPF_ALU | isa.BPF_END | isa.BPF_TO_LE,
    "be": isa.BPF_ALU | isa.BPF_END | isa.BPF_TO_BE,
    "bswap": isa.BPF_ALU64 | isa.BPF_END | isa.BPF_TO_LE,
    "swap": isa.BPF_ALU64 | isa.BPF_END | isa.BPF_TO_LE,
}
SWAP_WIDTHS = (16, 32, 64)

CONDITIONAL_JUMPS = {name: op for op, name in isa.JMP_OP_NAMES.items() if op in isa.CONDITIONAL_JUMPS}
JMP_WIDTH = {"": isa.BPF_JMP, "32": isa.BPF_JMP32}

SIZES = {suffix: size for size, suffix in isa.SIZE_SUFFIX.items()}   # "w" -> BPF_W ...
SIGN_EXTENDING_SIZES = ("b", "h", "w")                                # ldxsb/ldxsh/ldxsw

# ``lock [fetch] OP[32] [dst+off], src``: atomic operation names -> imm.
ATOMIC_OPS = {"add": isa.BPF_ADD, "and": isa.BPF_AND, "or": isa.BPF_OR, "xor": isa.BPF_XOR}
ATOMIC_FETCH_ONLY = {"xchg": isa.BPF_XCHG, "cmpxchg": isa.BPF_CMPXCHG}   # always fetch
ATOMIC_WIDTH = {"": isa.BPF_DW, "64": isa.BPF_DW, "32": isa.BPF_W}

# ``call MODE TARGET``: mode -> src field.
CALL_MODES = {"helper": 0, "local": isa.BPF_PSEUDO_CALL, "runtime": isa.BPF_PSEUDO_KFUNC_CALL}
CALLX_OPCODE = isa.BPF_JMP | isa.BPF_CALL | isa.BPF_X          # 0x8d

S16 = (-(1 << 15), (1 << 15) - 1)
S32 = (-(1 << 31), (1 << 31) - 1)
IMM32 = (-(1 << 31), (1 << 32) - 1)      # the suite writes 0x80000000 for -2**31
IMM64 = (-(1 << 63), (1 << 64) - 1)
U8 = (0, 0xFF)
U4 = (0, 0xF)

_INT_RE = re.compile(r"[+-]?(0[xX][0-9a-fA-F]+|[0-9]+)\Z")
_LABEL_RE = re.compile(r"[A-Za-z_.$][\w.$]*\Z")
_MEM_RE = re.compile(r"\[\s*(?P<reg>[^\]+\-\s]+)\s*(?:(?P<sign>[+-])\s*(?P<off>[^\]\s]+)\s*)?\]\Z")
_LINE_LABEL_RE = re.compile(r"\s*([A-Za-z_.$][\w.$]*)\s*:")
# Map names as scenarios spell them (bpfdiff.scenario_text.NAME_PATTERN); a
# trailing ``+OFF`` is the value offset.
_MAP_RE = re.compile(r"(?P<kind>map|map_value):(?P<name>[A-Za-z_][A-Za-z0-9_.\-]*)(?:\s*\+\s*(?P<off>\S+))?\Z")


@dataclass(frozen=True, slots=True)
class Operand:
    text: str
    col: int            # 1-based column in the source line


@dataclass(slots=True)
class _Fixup:
    """A jump or local call whose target is a label, resolved after the last line."""

    index: int          # slot index in the output
    label: str
    line: int
    col: int
    field: str          # "off" or "imm"
    limits: tuple[int, int]


class _Line:
    """One source line being assembled: knows where it is, for error messages."""

    def __init__(self, source: str, number: int, mnemonic: str, mnemonic_col: int, operands: list[Operand]) -> None:
        self.source = source
        self.number = number
        self.mnemonic = mnemonic
        self.mnemonic_col = mnemonic_col
        self.operands = operands

    def error(self, message: str, col: int | None = None) -> AsmError:
        return AsmError(self.source, self.number, col if col is not None else self.mnemonic_col, message)

    def expect_operands(self, count: int) -> list[Operand]:
        if len(self.operands) != count:
            col = self.operands[count].col if len(self.operands) > count else self.mnemonic_col
            noun = "operand" if count == 1 else "operands"
            raise self.error(f"'{self.mnemonic}' takes {count} {noun}, got {len(self.operands)}", col)
        return self.operands

    def register(self, operand: Operand) -> int:
        text = operand.text
        match = _REGISTER_RE.fullmatch(text)
        if match is None or not 0 <= int(match.group(1)) <= isa.BPF_REG_FP:
            raise self.error(f"bad register '{quote(text)}' (expected %r0..%r10)", operand.col)
        return int(match.group(1))

    def integer(self, operand: Operand | str, limits: tuple[int, int], what: str, col: int | None = None) -> int:
        text = operand.text if isinstance(operand, Operand) else operand
        col = operand.col if isinstance(operand, Operand) else col
        if not _INT_RE.match(text):
            raise self.error(f"bad {what} '{quote(text)}' (expected a decimal or 0x-hex integer)", col)
        try:
            value = int_literal(text, 0) if not _LEADING_ZERO_RE.match(text) else int_literal(text, 10)
        except ValueError as exc:
            raise self.error(f"bad {what}: {exc}", col) from None
        low, high = limits
        if not low <= value <= high:
            raise self.error(f"{what} {quote(text)} out of range [{low}, {high}]", col)
        return value

    def imm32(self, operand: Operand) -> int:
        return isa.to_s32(self.integer(operand, IMM32, "immediate"))

    def memory(self, operand: Operand) -> tuple[int, int]:
        """``[%rN]``, ``[%rN+OFF]`` or ``[%rN-OFF]`` -> (register, signed offset)."""
        match = _MEM_RE.match(operand.text)
        if match is None:
            raise self.error(f"bad memory operand '{quote(operand.text)}' (expected [%rN+OFF])", operand.col)
        reg = self.register(Operand(match.group("reg"), operand.col + match.start("reg")))
        if match.group("off") is None:
            return reg, 0
        off_col = operand.col + match.start("off")
        magnitude = self.integer(match.group("off"), (0, 1 << 64), "offset", off_col)
        off = -magnitude if match.group("sign") == "-" else magnitude
        if not S16[0] <= off <= S16[1]:
            raise self.error(f"offset {off:+d} out of range [{S16[0]}, {S16[1]}]", off_col)
        return reg, off


def _split_operands(text: str, col: int) -> list[Operand]:
    """Split at top-level commas; ``col`` is the column of ``text[0]``."""
    operands: list[Operand] = []
    if "[" not in text:
        # no bracket, so every comma is at the top level: the pieces of str.split, without the
        # character loop below (a campaign re-assembles every program it saves, to check its text)
        start = 0
        for piece in text.split(","):
            stripped = piece.strip()
            operands.append(Operand(stripped, col + start + len(piece) - len(piece.lstrip())))
            start += len(piece) + 1
        return [] if len(operands) == 1 and not operands[0].text else operands
    depth, start = 0, 0
    for i, ch in enumerate(text + ","):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth <= 0:
            piece = text[start:i]
            stripped = piece.strip()
            lead = len(piece) - len(piece.lstrip())
            operands.append(Operand(stripped, col + start + lead))
            start = i + 1
    if len(operands) == 1 and not operands[0].text:
        return []
    return operands


def _strip_comment(line: str) -> str:
    cut = len(line)
    for marker in ("#", "//"):
        pos = line.find(marker)
        if pos != -1:
            cut = min(cut, pos)
    return line[:cut]


class _Assembler:
    def __init__(self, source: str, first_line: int) -> None:
        self.source = source
        self.first_line = first_line
        self.out: list[Insn] = []
        self.labels: dict[str, int] = {}
        self.label_lines: dict[str, int] = {}
        self.first_exit: int | None = None
        self.fixups: list[_Fixup] = []
        self.lines: list[int] = []          # for each slot, the line it was assembled from
        self.current_line = first_line

    # -- driver -------------------------------------------------------------------
    def run(self, text: str) -> list[Insn]:
        for index, raw_line in enumerate(text.splitlines()):
            self.current_line = self.first_line + index
            self.line(self.current_line, _strip_comment(raw_line))
        self.resolve()
        return self.out

    def line(self, number: int, text: str) -> None:
        pos = 0
        while True:
            match = _LINE_LABEL_RE.match(text, pos)
            if match is None:
                break
            self.define_label(match.group(1), number, match.start(1) + 1)
            pos = match.end()
        rest = text[pos:]
        stripped = rest.lstrip()
        if not stripped.strip():
            return
        mnemonic_col = pos + (len(rest) - len(stripped)) + 1
        mnemonic = stripped.split(None, 1)[0]
        tail = stripped[len(mnemonic):]
        operand_col = mnemonic_col + len(mnemonic)
        line = _Line(self.source, number, mnemonic, mnemonic_col, _split_operands(tail.rstrip(), operand_col))
        for operand in line.operands:
            if not operand.text:
                raise line.error("missing operand", operand.col)
        handler = self.handler_for(mnemonic)
        if handler is None:
            raise line.error(f"unknown mnemonic '{quote(mnemonic)}'")
        handler(line)

    def define_label(self, name: str, number: int, col: int) -> None:
        if name in self.labels:
            raise AsmError(self.source, number, col,
                           f"duplicate label '{name}' (first defined on line {self.label_lines[name]})")
        self.labels[name] = len(self.out)
        self.label_lines[name] = number

    def handler_for(self, mnemonic: str) -> Callable[[_Line], None] | None:
        if mnemonic in _FIXED_HANDLERS:
            return getattr(self, _FIXED_HANDLERS[mnemonic])
        for pattern, method in _PATTERN_HANDLERS:
            if pattern.fullmatch(mnemonic):
                return getattr(self, method)
        return None

    def emit(self, insn: Insn) -> None:
        self.out.append(insn)
        self.lines.append(self.current_line)

    def resolve(self) -> None:
        for fix in self.fixups:
            target = self.labels.get(fix.label)
            if target is None and fix.label == "exit":
                target = self.first_exit
            if target is None:
                raise AsmError(self.source, fix.line, fix.col, f"unknown label '{fix.label}'")
            delta = target - fix.index - 1
            if not fix.limits[0] <= delta <= fix.limits[1]:
                raise AsmError(self.source, fix.line, fix.col, f"jump to '{fix.label}' is too far ({delta:+d} slots)")
            insn = self.out[fix.index]
            self.out[fix.index] = Insn(insn.opcode, insn.dst, insn.src,
                                       delta if fix.field == "off" else insn.off,
                                       delta if fix.field == "imm" else insn.imm, insn.map)

    def jump_target(self, line: _Line, operand: Operand, field: str, limits: tuple[int, int]) -> int:
        """A label (resolved later, returns 0) or a numeric slot offset like ``+3``."""
        if _INT_RE.match(operand.text):
            return line.integer(operand, limits, "jump offset")
        if not _LABEL_RE.match(operand.text):
            raise line.error(f"bad jump target '{quote(operand.text)}' (expected a label or +N/-N)", operand.col)
        self.fixups.append(_Fixup(len(self.out), operand.text, line.number, operand.col, field, limits))
        return 0

    # -- ALU --------------------------------------------------------------------------
    def alu_binary(self, line: _Line) -> None:
        match = _ALU_RE.fullmatch(line.mnemonic)
        assert match is not None
        op, off = ALU_BINARY[match.group(1)]
        cls = ALU_WIDTH[match.group(2) or ""]
        dst_op, src_op = line.expect_operands(2)
        dst = line.register(dst_op)
        if _looks_like_register(src_op.text):
            self.emit(Insn(cls | op | isa.BPF_X, dst, line.register(src_op), off, 0))
        else:
            self.emit(Insn(cls | op | isa.BPF_K, dst, 0, off, line.imm32(src_op)))

    def alu_neg(self, line: _Line) -> None:
        (dst_op,) = line.expect_operands(1)
        cls = ALU_WIDTH[line.mnemonic[3:]]
        self.emit(Insn(cls | isa.BPF_NEG, line.register(dst_op)))

    def movsx(self, line: _Line) -> None:
        cls, width = MOVSX[line.mnemonic]
        dst_op, src_op = line.expect_operands(2)
        self.emit(Insn(cls | isa.BPF_MOV | isa.BPF_X, line.register(dst_op), line.register(src_op), width, 0))

    def byte_swap(self, line: _Line) -> None:
        match = _SWAP_RE.fullmatch(line.mnemonic)
        assert match is not None
        (dst_op,) = line.expect_operands(1)
        self.emit(Insn(BYTE_SWAP[match.group(1)], line.register(dst_op), 0, 0, int(match.group(2))))

    # -- jumps and calls ------------------------------------------------------------
    def conditional_jump(self, line: _Line) -> None:
        match = _JMP_RE.fullmatch(line.mnemonic)
        assert match is not None
        opcode = JMP_WIDTH[match.group(2) or ""] | CONDITIONAL_JUMPS[match.group(1)]
        dst_op, src_op, target_op = line.expect_operands(3)
        dst = line.register(dst_op)
        if _looks_like_register(src_op.text):
            opcode, src, imm = opcode | isa.BPF_X, line.register(src_op), 0
        else:
            src, imm = 0, line.imm32(src_op)
        off = self.jump_target(line, target_op, "off", S16)
        self.emit(Insn(opcode, dst, src, off, imm))

    def ja(self, line: _Line) -> None:
        (target_op,) = line.expect_operands(1)
        self.emit(Insn(isa.BPF_JMP | isa.BPF_JA, 0, 0, self.jump_target(line, target_op, "off", S16), 0))

    def ja32(self, line: _Line) -> None:
        # gotol: the offset lives in imm (RFC 9669 section 4.3)
        (target_op,) = line.expect_operands(1)
        self.emit(Insn(isa.BPF_JMP32 | isa.BPF_JA, 0, 0, 0, self.jump_target(line, target_op, "imm", S32)))

    def exit(self, line: _Line) -> None:
        line.expect_operands(0)
        if self.first_exit is None:
            self.first_exit = len(self.out)
        self.emit(Insn(isa.EXIT_OPCODE))

    def call(self, line: _Line) -> None:
        operands = line.operands
        words = operands[0].text.split(None, 1) if len(operands) == 1 else []
        if len(words) == 2:
            # ``call local func``: the mode and the target are separated by blanks
            target_col = operands[0].col + len(operands[0].text) - len(words[1])
            mode, target = Operand(words[0], operands[0].col), Operand(words[1], target_col)
        elif len(operands) == 1 and operands[0].text in CALL_MODES:
            raise line.error(f"missing target after 'call {operands[0].text}'", operands[0].col)
        elif len(operands) == 1:
            mode, target = Operand("helper", operands[0].col), operands[0]
        else:
            line.expect_operands(1)
            return
        if mode.text not in CALL_MODES:
            raise line.error(f"unknown call kind '{mode.text}' (expected one of {', '.join(CALL_MODES)})", mode.col)
        src = CALL_MODES[mode.text]
        if src == 0 and _looks_like_register(target.text):
            self.emit(Insn(CALLX_OPCODE, line.register(target)))
        elif src == isa.BPF_PSEUDO_CALL:
            self.emit(Insn(isa.CALL_OPCODE, 0, src, 0, self.jump_target(line, target, "imm", S32)))
        else:
            self.emit(Insn(isa.CALL_OPCODE, 0, src, 0, line.integer(target, S32, "function id")))

    # -- memory -----------------------------------------------------------------------
    def load(self, line: _Line) -> None:
        match = _LDX_RE.fullmatch(line.mnemonic)
        assert match is not None
        signed, size = match.group(1), match.group(2)
        if signed and size not in SIGN_EXTENDING_SIZES:
            raise line.error(f"unknown mnemonic '{line.mnemonic}' (sign-extending loads are b, h or w)")
        dst_op, mem_op = line.expect_operands(2)
        dst = line.register(dst_op)
        src, off = line.memory(mem_op)
        mode = isa.BPF_MEMSX if signed else isa.BPF_MEM
        self.emit(Insn(isa.BPF_LDX | mode | SIZES[size], dst, src, off, 0))

    def store_imm(self, line: _Line) -> None:
        mem_op, imm_op = line.expect_operands(2)
        dst, off = line.memory(mem_op)
        self.emit(Insn(isa.BPF_ST | isa.BPF_MEM | SIZES[line.mnemonic[2:]], dst, 0, off, line.imm32(imm_op)))

    def store_reg(self, line: _Line) -> None:
        mem_op, src_op = line.expect_operands(2)
        dst, off = line.memory(mem_op)
        self.emit(Insn(isa.BPF_STX | isa.BPF_MEM | SIZES[line.mnemonic[3:]], dst, line.register(src_op), off, 0))

    def lock(self, line: _Line) -> None:
        if len(line.operands) != 2:
            raise line.error("'lock' takes [fetch] OP [%rD+OFF], %rS")
        words = line.operands[0].text.split()
        if len(words) < 2:
            raise line.error(f"missing atomic operation or memory operand in '{line.operands[0].text}'",
                             line.operands[0].col)
        mem_text = words[-1]
        mem_col = line.operands[0].col + line.operands[0].text.rfind(mem_text)
        fetch = words[0] == "fetch"
        names = words[1:-1] if fetch else words[:-1]
        if len(names) != 1:
            raise line.error(f"bad atomic operation '{' '.join(words[:-1])}'", line.operands[0].col)
        match = _ATOMIC_RE.fullmatch(names[0])
        if match is None or (match.group(1) in ATOMIC_FETCH_ONLY and fetch):
            raise line.error(f"unknown atomic operation '{' '.join(words[:-1])}'", line.operands[0].col)
        op_name, width = match.group(1), match.group(2) or ""
        if op_name in ATOMIC_FETCH_ONLY:
            imm = ATOMIC_FETCH_ONLY[op_name]
        else:
            imm = ATOMIC_OPS[op_name] | (isa.BPF_FETCH if fetch else 0)
        dst, off = line.memory(Operand(mem_text, mem_col))
        src = line.register(line.operands[1])
        self.emit(Insn(isa.BPF_STX | isa.BPF_ATOMIC | ATOMIC_WIDTH[width], dst, src, off, imm))

    # -- lddw and raw slots ---------------------------------------------------------
    def lddw(self, line: _Line) -> None:
        dst_op, value_op = line.expect_operands(2)
        dst = line.register(dst_op)
        match = _MAP_RE.match(value_op.text)
        if match is not None:
            src = isa.BPF_PSEUDO_MAP_FD if match.group("kind") == "map" else isa.BPF_PSEUDO_MAP_VALUE
            offset = 0
            if match.group("off") is not None:
                if src == isa.BPF_PSEUDO_MAP_FD:
                    raise line.error("a map:NAME load takes no offset (use map_value:NAME+OFF)", value_op.col)
                off_col = value_op.col + match.start("off")
                offset = line.integer(match.group("off"), (0, (1 << 31) - 1), "map value offset", off_col)
            self.emit(Insn(isa.LDDW_OPCODE, dst, src, 0, 0, match.group("name")))
            self.emit(Insn(0, 0, 0, 0, offset))
            return
        if value_op.text.startswith(("map:", "map_value:")):
            raise line.error(f"bad map reference '{quote(value_op.text)}' (expected map:NAME or map_value:NAME+OFF)",
                             value_op.col)
        for insn in isa.lddw_pair(dst, line.integer(value_op, IMM64, "64-bit immediate")):
            self.emit(insn)

    def raw_slot(self, line: _Line) -> None:
        opcode_op, dst_op, src_op, off_op, imm_op = line.expect_operands(5)
        self.emit(Insn(
            line.integer(opcode_op, U8, "opcode"),
            line.integer(dst_op, U4, "dst field"),
            line.integer(src_op, U4, "src field"),
            isa.to_s16(line.integer(off_op, (S16[0], 0xFFFF), "off field")),
            line.imm32(imm_op),
        ))


def _looks_like_register(text: str) -> bool:
    return text.startswith("%") or _REGISTER_NAME_RE.fullmatch(text) is not None


# compiled once: every operand of every line asks them (re's own cache costs a lookup a call)
_REGISTER_RE = re.compile(r"%?r(\d{1,2})")
_LEADING_ZERO_RE = re.compile(r"[+-]?0\d")           # a decimal with leading zeros, not octal
_REGISTER_NAME_RE = re.compile(r"r\d+")
_ALU_RE = re.compile(r"(" + "|".join(ALU_BINARY) + r")(32|64)?")
_SWAP_RE = re.compile(r"(" + "|".join(BYTE_SWAP) + r")(16|32|64)")
_JMP_RE = re.compile(r"(" + "|".join(CONDITIONAL_JUMPS) + r")(32)?")
_LDX_RE = re.compile(r"ldx(s?)(dw|w|h|b)")
_ATOMIC_RE = re.compile(r"(" + "|".join([*ATOMIC_OPS, *ATOMIC_FETCH_ONLY]) + r")(32|64)?")

_FIXED_HANDLERS = {
    "neg": "alu_neg", "neg32": "alu_neg", "neg64": "alu_neg",
    **dict.fromkeys(MOVSX, "movsx"),
    "ja": "ja", "ja32": "ja32", "exit": "exit", "call": "call",
    **{f"st{s}": "store_imm" for s in SIZES}, **{f"stx{s}": "store_reg" for s in SIZES},
    "lock": "lock", "lddw": "lddw", ".insn": "raw_slot",
}
_PATTERN_HANDLERS = (
    (_ALU_RE, "alu_binary"),
    (_SWAP_RE, "byte_swap"),
    (_JMP_RE, "conditional_jump"),
    (_LDX_RE, "load"),
)


def assemble(text: str, *, source: str = "<asm>", first_line: int = 1) -> list[Insn]:
    """Assemble ``text`` into slots; ``first_line`` numbers its first line (for errors).

    Raises :class:`AsmError` with a one-line ``SOURCE:LINE:COL: message``.
    """
    return _Assembler(source, first_line).run(text)


def assemble_with_lines(text: str, *, source: str = "<asm>", first_line: int = 1) -> tuple[list[Insn], list[int]]:
    """Like :func:`assemble`, plus the line number each slot comes from (``lddw``: both slots its line)."""
    assembler = _Assembler(source, first_line)
    return assembler.run(text), assembler.lines


def assemble_program(name: str, text: str, *, source: str = "<asm>", first_line: int = 1) -> Program:
    """Assemble ``text`` into a named :class:`Program`."""
    return Program(name, tuple(assemble(text, source=source, first_line=first_line)))
