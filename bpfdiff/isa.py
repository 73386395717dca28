"""The eBPF instruction set (RFC 9669) and the kernel's ``struct bpf_insn``.

A program is a sequence of 8-byte *slots*, exactly as the kernel stores it:

    byte 0      opcode
    byte 1      dst_reg (low nibble) | src_reg (high nibble)   (little endian)
    bytes 2-3   off  (signed 16-bit)
    bytes 4-7   imm  (signed 32-bit)

``lddw`` (``BPF_LD | BPF_IMM | BPF_DW``) takes two slots; the second slot has
opcode 0 and carries the high 32 bits of the constant in its ``imm``.  Keeping
one :class:`Insn` per slot means that program counters and jump offsets are the
kernel's, with no translation anywhere.

A pseudo map load (``lddw`` with ``src_reg`` = ``BPF_PSEUDO_MAP_FD`` or
``BPF_PSEUDO_MAP_VALUE``) refers to its map *by name* (:attr:`Insn.map`), the
way a relocation in a BPF ELF object does; the fd is only chosen when a program
is encoded for a particular loader (:func:`encode` takes a ``map_fd`` mapping).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from bpfdiff.memo import Memo

# -- instruction classes -----------------------------------------------------
BPF_LD = 0x00
BPF_LDX = 0x01
BPF_ST = 0x02
BPF_STX = 0x03
BPF_ALU = 0x04
BPF_JMP = 0x05
BPF_JMP32 = 0x06
BPF_ALU64 = 0x07

CLASS_NAMES = {
    BPF_LD: "ld", BPF_LDX: "ldx", BPF_ST: "st", BPF_STX: "stx",
    BPF_ALU: "alu", BPF_JMP: "jmp", BPF_JMP32: "jmp32", BPF_ALU64: "alu64",
}

# -- source operand (ALU / JMP) ---------------------------------------------
BPF_K = 0x00
BPF_X = 0x08
# BPF_END reuses the source bit for the byte order
BPF_TO_LE = 0x00
BPF_TO_BE = 0x08

# -- ALU operations ----------------------------------------------------------
BPF_ADD = 0x00
BPF_SUB = 0x10
BPF_MUL = 0x20
BPF_DIV = 0x30
BPF_OR = 0x40
BPF_AND = 0x50
BPF_LSH = 0x60
BPF_RSH = 0x70
BPF_NEG = 0x80
BPF_MOD = 0x90
BPF_XOR = 0xA0
BPF_MOV = 0xB0
BPF_ARSH = 0xC0
BPF_END = 0xD0

ALU_OP_NAMES = {
    BPF_ADD: "add", BPF_SUB: "sub", BPF_MUL: "mul", BPF_DIV: "div", BPF_OR: "or",
    BPF_AND: "and", BPF_LSH: "lsh", BPF_RSH: "rsh", BPF_NEG: "neg", BPF_MOD: "mod",
    BPF_XOR: "xor", BPF_MOV: "mov", BPF_ARSH: "arsh", BPF_END: "end",
}

# -- JMP operations ----------------------------------------------------------
BPF_JA = 0x00
BPF_JEQ = 0x10
BPF_JGT = 0x20
BPF_JGE = 0x30
BPF_JSET = 0x40
BPF_JNE = 0x50
BPF_JSGT = 0x60
BPF_JSGE = 0x70
BPF_CALL = 0x80
BPF_EXIT = 0x90
BPF_JLT = 0xA0
BPF_JLE = 0xB0
BPF_JSLT = 0xC0
BPF_JSLE = 0xD0
# Kernel-internal: the verifier rewrites ``call bpf_tail_call`` into this.
BPF_TAIL_CALL = 0xF0

JMP_OP_NAMES = {
    BPF_JA: "ja", BPF_JEQ: "jeq", BPF_JGT: "jgt", BPF_JGE: "jge", BPF_JSET: "jset",
    BPF_JNE: "jne", BPF_JSGT: "jsgt", BPF_JSGE: "jsge", BPF_CALL: "call",
    BPF_EXIT: "exit", BPF_JLT: "jlt", BPF_JLE: "jle", BPF_JSLT: "jslt",
    BPF_JSLE: "jsle",
}
CONDITIONAL_JUMPS = frozenset(JMP_OP_NAMES) - {BPF_JA, BPF_CALL, BPF_EXIT}

# -- memory sizes and modes --------------------------------------------------
BPF_W = 0x00
BPF_H = 0x08
BPF_B = 0x10
BPF_DW = 0x18
SIZE_BYTES = {BPF_W: 4, BPF_H: 2, BPF_B: 1, BPF_DW: 8}
SIZE_SUFFIX = {BPF_W: "w", BPF_H: "h", BPF_B: "b", BPF_DW: "dw"}

BPF_IMM = 0x00
BPF_ABS = 0x20
BPF_IND = 0x40
BPF_MEM = 0x60
BPF_MEMSX = 0x80
BPF_ATOMIC = 0xC0

# -- atomic operations (imm of BPF_STX | BPF_ATOMIC) -------------------------
BPF_FETCH = 0x01
BPF_XCHG = 0xE0 | BPF_FETCH
BPF_CMPXCHG = 0xF0 | BPF_FETCH
ATOMIC_OPS = frozenset({
    BPF_ADD, BPF_OR, BPF_AND, BPF_XOR,
    BPF_ADD | BPF_FETCH, BPF_OR | BPF_FETCH, BPF_AND | BPF_FETCH, BPF_XOR | BPF_FETCH,
    BPF_XCHG, BPF_CMPXCHG,
})

# -- src_reg values with a special meaning -----------------------------------
BPF_PSEUDO_MAP_FD = 1      # lddw: imm is a map fd, the load yields the map
BPF_PSEUDO_MAP_VALUE = 2   # lddw: imm is a map fd, high imm an offset into value 0
BPF_PSEUDO_CALL = 1        # call: imm is a pc-relative bpf-to-bpf call
BPF_PSEUDO_KFUNC_CALL = 2  # call: imm is a BTF id of a kernel function
LDDW_PSEUDO_SOURCES = {0: "imm64", BPF_PSEUDO_MAP_FD: "map_fd", BPF_PSEUDO_MAP_VALUE: "map_value"}

# -- registers ---------------------------------------------------------------
MAX_BPF_REG = 11           # R0..R10
BPF_REG_FP = 10
BPF_REG_AX = 11            # kernel-internal (constant blinding, xlated code only)
MAX_CALL_FRAMES = 8
MAX_BPF_STACK = 512

LDDW_OPCODE = BPF_LD | BPF_IMM | BPF_DW          # 0x18
CALL_OPCODE = BPF_JMP | BPF_CALL                  # 0x85
EXIT_OPCODE = BPF_JMP | BPF_EXIT                  # 0x95
TAIL_CALL_OPCODE = BPF_JMP | BPF_TAIL_CALL        # 0xf5 (xlated only)
# ``off`` of a 64-bit register move that turns a per-CPU offset into this CPU's address
# (BPF_MOV64_PERCPU_REG, include/linux/filter.h; xlated only, v6.10+): ``r0 = &(void __percpu *)(r0)``
BPF_ADDR_PERCPU = -1

# -- helper function ids (include/uapi/linux/bpf.h, ___BPF_FUNC_MAPPER) -------
BPF_FUNC_map_lookup_elem = 1
BPF_FUNC_map_update_elem = 2
BPF_FUNC_map_delete_elem = 3
BPF_FUNC_get_prandom_u32 = 7
BPF_FUNC_get_smp_processor_id = 8
BPF_FUNC_tail_call = 12
# Kernel functions the verifier's rewrites call directly (xlated code only; ``imm`` is
# bpfdiff's own id for them, the kernel's is an address): the inlined hash lookup, the map
# type's own update/delete (do_misc_fixups: ``ops->map_update_elem``...), and the functions
# of the helpers whose prototype points elsewhere than ``bpf_<name>``.
KERNEL_FUNC_htab_map_lookup_elem = 500
KERNEL_FUNC_array_map_update_elem = 501
KERNEL_FUNC_array_map_delete_elem = 502
KERNEL_FUNC_htab_map_update_elem = 503
KERNEL_FUNC_htab_map_delete_elem = 504
KERNEL_FUNC_bpf_user_rnd_u32 = 505
KERNEL_FUNC_bpf_get_raw_cpu_id = 506
KERNEL_FUNC_NAMES = {
    KERNEL_FUNC_htab_map_lookup_elem: "__htab_map_lookup_elem",
    KERNEL_FUNC_array_map_update_elem: "array_map_update_elem",
    KERNEL_FUNC_array_map_delete_elem: "array_map_delete_elem",
    KERNEL_FUNC_htab_map_update_elem: "htab_map_update_elem",
    KERNEL_FUNC_htab_map_delete_elem: "htab_map_delete_elem",
    KERNEL_FUNC_bpf_user_rnd_u32: "bpf_user_rnd_u32",
    KERNEL_FUNC_bpf_get_raw_cpu_id: "bpf_get_raw_cpu_id",
}
# The helper whose semantics each one has (the engines run them as that helper).
KERNEL_FUNC_HELPER = {
    KERNEL_FUNC_array_map_update_elem: BPF_FUNC_map_update_elem,
    KERNEL_FUNC_array_map_delete_elem: BPF_FUNC_map_delete_elem,
    KERNEL_FUNC_htab_map_update_elem: BPF_FUNC_map_update_elem,
    KERNEL_FUNC_htab_map_delete_elem: BPF_FUNC_map_delete_elem,
    KERNEL_FUNC_bpf_user_rnd_u32: BPF_FUNC_get_prandom_u32,
    KERNEL_FUNC_bpf_get_raw_cpu_id: BPF_FUNC_get_smp_processor_id,
}
# do_misc_fixups' patch_map_ops_generic: (helper, map kind) -> the map type's function
MAP_OPS_FUNC = {
    (BPF_FUNC_map_update_elem, "array"): KERNEL_FUNC_array_map_update_elem,
    (BPF_FUNC_map_delete_elem, "array"): KERNEL_FUNC_array_map_delete_elem,
    (BPF_FUNC_map_update_elem, "hash"): KERNEL_FUNC_htab_map_update_elem,
    (BPF_FUNC_map_delete_elem, "hash"): KERNEL_FUNC_htab_map_delete_elem,
}
# patch_call_imm: the function of the prototype the program type's get_func_proto gives, where
# it is not bpf_<helper> (kernel/bpf/helpers.c bpf_base_func_proto: bpf_get_prandom_u32_proto's
# function is bpf_user_rnd_u32, get_smp_processor_id gets bpf_get_raw_smp_processor_id_proto,
# whose function is bpf_get_raw_cpu_id).  Keyed by the scenario's prog_type
# (bpfdiff.scenario.PROG_TYPES).  "xdp": net/core/filter.c xdp_func_proto answers
# get_smp_processor_id itself (bpf_get_smp_processor_id_proto: bpf_get_smp_processor_id) and
# leaves the rest to bpf_base_func_proto.  "raw" is no kernel type: the base prototypes.
BASE_HELPER_FUNC = {
    BPF_FUNC_get_prandom_u32: KERNEL_FUNC_bpf_user_rnd_u32,
    BPF_FUNC_get_smp_processor_id: KERNEL_FUNC_bpf_get_raw_cpu_id,
}
HELPER_FUNC_BY_PROG_TYPE = {
    "raw": BASE_HELPER_FUNC,
    "xdp": {
        BPF_FUNC_get_prandom_u32: KERNEL_FUNC_bpf_user_rnd_u32,
    },
}

_SLOT = struct.Struct("<BBhi")
SLOT_SIZE = _SLOT.size


class InvalidInstruction(ValueError):
    """An encoding the kernel would refuse; ``pc`` is the offending slot."""

    def __init__(self, pc: int, reason: str) -> None:
        super().__init__(f"insn {pc}: {reason}")
        self.pc = pc
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Insn:
    """One 8-byte slot of ``struct bpf_insn``; ``off``/``imm`` are signed."""

    opcode: int
    dst: int = 0
    src: int = 0
    off: int = 0
    imm: int = 0
    map: str | None = field(default=None, compare=True)

    # -- decoded views of the opcode ----------------------------------------
    # Plain slots, computed once here: every engine and the verifier model read
    # them for every instruction they visit, and a property would cost a call
    # each time (BPF_CLASS(code), BPF_OP(code), BPF_SRC(code), ... in the kernel).
    cls: int = field(init=False, repr=False, compare=False)
    op: int = field(init=False, repr=False, compare=False)      # ALU/JMP operation bits
    source: int = field(init=False, repr=False, compare=False)
    size: int = field(init=False, repr=False, compare=False)
    mode: int = field(init=False, repr=False, compare=False)
    is_lddw: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        opcode = self.opcode
        setattr_ = object.__setattr__          # frozen
        setattr_(self, "cls", opcode & 0x07)
        setattr_(self, "op", opcode & 0xF0)
        setattr_(self, "source", opcode & 0x08)
        setattr_(self, "size", opcode & 0x18)
        setattr_(self, "mode", opcode & 0xE0)
        setattr_(self, "is_lddw", opcode == LDDW_OPCODE)

    @property
    def is_alu(self) -> bool:
        return self.cls in (BPF_ALU, BPF_ALU64)

    @property
    def is_jmp(self) -> bool:
        return self.cls in (BPF_JMP, BPF_JMP32)

    @property
    def is_helper_call(self) -> bool:
        return self.opcode == CALL_OPCODE and self.src == 0

    @property
    def is_pseudo_call(self) -> bool:
        return self.opcode == CALL_OPCODE and self.src == BPF_PSEUDO_CALL

    @property
    def is_tail_call(self) -> bool:
        """``call bpf_tail_call`` as loaded (not the xlated internal form)."""
        return self.is_helper_call and self.imm == BPF_FUNC_tail_call

    @property
    def is_exit(self) -> bool:
        return self.opcode == EXIT_OPCODE


@dataclass(frozen=True, slots=True)
class Program:
    """A named BPF program: its slots, as loaded (before the verifier's rewrites)."""

    name: str
    insns: tuple[Insn, ...]

    def __len__(self) -> int:
        return len(self.insns)

    @property
    def map_names(self) -> tuple[str, ...]:
        """Maps the program refers to, in order of first use."""
        seen: dict[str, None] = {}
        for insn in self.insns:
            if insn.map is not None:
                seen.setdefault(insn.map)
        return tuple(seen)


# -- small constructors, for generators and tests -----------------------------
def lddw_pair(dst: int, value: int, src: int = 0, map: str | None = None) -> tuple[Insn, Insn]:
    """The two slots of ``lddw dst, value`` (value taken modulo 2**64)."""
    value &= (1 << 64) - 1
    lo, hi = to_s32(value & 0xFFFFFFFF), to_s32(value >> 32)
    return Insn(LDDW_OPCODE, dst, src, 0, lo, map), Insn(0, 0, 0, 0, hi)


def to_s32(value: int) -> int:
    value &= 0xFFFFFFFF
    return value - (1 << 32) if value & 0x80000000 else value


def to_s16(value: int) -> int:
    value &= 0xFFFF
    return value - (1 << 16) if value & 0x8000 else value


def lddw_value(first: Insn, second: Insn) -> int:
    """The 64-bit constant of an ``lddw`` pair, unsigned."""
    return (first.imm & 0xFFFFFFFF) | ((second.imm & 0xFFFFFFFF) << 32)


# -- validity: what the kernel's decoder/verifier refuses outright -----------
def _check_alu(pc: int, insn: Insn) -> None:
    op, source, is64 = insn.op, insn.source, insn.cls == BPF_ALU64
    if op not in ALU_OP_NAMES:
        raise InvalidInstruction(pc, f"unknown opcode 0x{insn.opcode:02x}")
    if op == BPF_END:
        if is64 and source != BPF_TO_LE:
            raise InvalidInstruction(pc, f"unknown opcode 0x{insn.opcode:02x}")
        if insn.imm not in (16, 32, 64):
            raise InvalidInstruction(pc, f"byte swap width {insn.imm} (must be 16, 32 or 64)")
        if insn.src or insn.off:
            raise InvalidInstruction(pc, "reserved fields of a byte swap are not zero")
        return
    if op == BPF_NEG:
        if source != BPF_K or insn.src or insn.off or insn.imm:
            raise InvalidInstruction(pc, "reserved fields of neg are not zero")
        return
    allowed_off = {0}
    if op in (BPF_DIV, BPF_MOD):
        allowed_off = {0, 1}                       # off 1: sdiv / smod
    elif op == BPF_MOV and source == BPF_X:
        allowed_off = {0, 8, 16, 32} if is64 else {0, 8, 16}   # movsx
    if insn.off not in allowed_off:
        raise InvalidInstruction(pc, f"reserved off field is {insn.off}")
    if source == BPF_K and insn.src:
        raise InvalidInstruction(pc, f"reserved src field is r{insn.src}")
    if source == BPF_X and insn.imm:
        raise InvalidInstruction(pc, f"reserved imm field is {insn.imm}")


def _check_jmp(pc: int, insn: Insn) -> None:
    op, source = insn.op, insn.source
    if op not in JMP_OP_NAMES:
        raise InvalidInstruction(pc, f"unknown opcode 0x{insn.opcode:02x}")
    is32 = insn.cls == BPF_JMP32
    if op == BPF_JA:
        if source != BPF_K or insn.src or insn.dst:
            raise InvalidInstruction(pc, "reserved fields of ja are not zero")
        if (insn.off if is32 else insn.imm) != 0:
            raise InvalidInstruction(pc, "ja32 uses imm, ja uses off; the other must be zero")
        return
    if op in (BPF_CALL, BPF_EXIT):
        if is32 or source != BPF_K:
            raise InvalidInstruction(pc, f"unknown opcode 0x{insn.opcode:02x}")
        if insn.dst or insn.off or (op == BPF_EXIT and (insn.src or insn.imm)):
            raise InvalidInstruction(pc, f"reserved fields of {JMP_OP_NAMES[op]} are not zero")
        if op == BPF_CALL and insn.src not in (0, BPF_PSEUDO_CALL, BPF_PSEUDO_KFUNC_CALL):
            raise InvalidInstruction(pc, f"call with src {insn.src}")
        return
    if source == BPF_K and insn.src:
        raise InvalidInstruction(pc, f"reserved src field is r{insn.src}")
    if source == BPF_X and insn.imm:
        raise InvalidInstruction(pc, f"reserved imm field is {insn.imm}")


def _check_mem(pc: int, insn: Insn) -> None:
    cls, mode, size = insn.cls, insn.mode, insn.size
    if cls == BPF_LDX:
        if mode == BPF_MEMSX and size == BPF_DW or mode not in (BPF_MEM, BPF_MEMSX):
            raise InvalidInstruction(pc, f"unknown opcode 0x{insn.opcode:02x}")
        if insn.imm:
            raise InvalidInstruction(pc, f"reserved imm field is {insn.imm}")
    elif cls == BPF_ST:
        if mode != BPF_MEM:
            raise InvalidInstruction(pc, f"unknown opcode 0x{insn.opcode:02x}")
        if insn.src:
            raise InvalidInstruction(pc, f"reserved src field is r{insn.src}")
    else:  # BPF_STX
        if mode == BPF_MEM:
            if insn.imm:
                raise InvalidInstruction(pc, f"reserved imm field is {insn.imm}")
        elif mode == BPF_ATOMIC:
            if size not in (BPF_W, BPF_DW):
                raise InvalidInstruction(pc, "atomic operations are only 32- or 64-bit")
            if insn.imm not in ATOMIC_OPS:
                raise InvalidInstruction(pc, f"unknown atomic operation 0x{insn.imm & 0xFFFFFFFF:x}")
        else:
            raise InvalidInstruction(pc, f"unknown opcode 0x{insn.opcode:02x}")


def check_insn(pc: int, insn: Insn) -> None:
    """Raise :class:`InvalidInstruction` if one slot is not a valid encoding.

    Checks the encoding only (opcode known, reserved fields zero, registers in
    range); ``lddw`` pairs are checked by :func:`check_program`.
    """
    if not 0 <= insn.opcode <= 0xFF:
        raise InvalidInstruction(pc, f"opcode {insn.opcode} out of range")
    for what, reg in (("dst", insn.dst), ("src", insn.src)):
        if not 0 <= reg < MAX_BPF_REG and not (what == "src" and insn.is_lddw):
            raise InvalidInstruction(pc, f"bad register {what}=r{reg}")
    if not -(1 << 15) <= insn.off < (1 << 15) or not -(1 << 31) <= insn.imm < (1 << 31):
        raise InvalidInstruction(pc, "off or imm out of range")
    cls = insn.cls
    if cls in (BPF_ALU, BPF_ALU64):
        _check_alu(pc, insn)
    elif cls in (BPF_JMP, BPF_JMP32):
        _check_jmp(pc, insn)
    elif cls == BPF_LD:
        if insn.mode in (BPF_ABS, BPF_IND):
            raise InvalidInstruction(pc, "legacy packet access (BPF_ABS/BPF_IND) is not supported")
        if not insn.is_lddw:
            raise InvalidInstruction(pc, f"unknown opcode 0x{insn.opcode:02x}")
        if insn.off or insn.src not in LDDW_PSEUDO_SOURCES:
            raise InvalidInstruction(pc, f"lddw with src {insn.src} / off {insn.off}")
    else:
        _check_mem(pc, insn)


# What check_program needs of one slot: check_insn's refusal (None: a valid encoding) and how far
# a jump or pseudo call goes from the next slot (jump_target(pc, insn) - pc - 1; None: no jump).
# Both read nothing but the encoding fields (opcode, dst, src, off, imm) -- the opcode's views are
# functions of the opcode, the map name is no encoding field -- so that tuple is a complete key.
# Generated programs repeat most of their instructions (~70% of the slots of 200 scenarios'
# programs are one met before), and checking a slot costs far more than finding it here.
_SLOT_VERDICTS: Memo[tuple[int, int, int, int, int], tuple[str | None, int | None]] = Memo(1 << 16)


def slot_verdict(insn: Insn) -> tuple[str | None, int | None]:
    """check_program's verdict on one slot: check_insn's refusal (None: a valid encoding) and how
    far a jump or pseudo call goes from the next slot (None: no jump); see _SLOT_VERDICTS."""
    key = (insn.opcode, insn.dst, insn.src, insn.off, insn.imm)
    verdict = _SLOT_VERDICTS.get(key)
    if verdict is None:
        try:
            check_insn(0, insn)
            reason = None
        except InvalidInstruction as exc:
            reason = exc.reason
        verdict = _SLOT_VERDICTS.remember(key, (reason, jump_target(-1, insn)))
    return verdict


def check_lddw_pair(insns: Sequence[Insn], pc: int) -> None:
    """check_program's checks of the lddw at ``pc`` beyond its first slot's encoding."""
    if pc + 1 >= len(insns):
        raise InvalidInstruction(pc, "truncated lddw: second slot missing")
    second = insns[pc + 1]
    if second.opcode or second.dst or second.src or second.off:
        raise InvalidInstruction(pc + 1, "second slot of lddw has non-zero reserved fields")
    if insns[pc].src in (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE) and insns[pc].map is None:
        raise InvalidInstruction(pc, "pseudo map load without a map")


def jump_out_of_range(pc: int, delta: int) -> InvalidInstruction:
    """check_program's refusal of a jump at ``pc`` going ``delta`` slots past the next one,
    outside the program."""
    return InvalidInstruction(pc, f"jump out of range to {pc + 1 + delta}")


def check_program(insns: Sequence[Insn]) -> None:
    """Validate every slot, the ``lddw`` pairs and that jumps stay in range.

    (bpfdiff.verifier's check_load makes the same checks in its own pass over the program, with
    slot_verdict, check_lddw_pair and jump_out_of_range.)"""
    n = len(insns)
    pc = 0
    while pc < n:
        insn = insns[pc]
        reason, delta = slot_verdict(insn)
        if reason is not None:
            raise InvalidInstruction(pc, reason)
        if insn.is_lddw:
            check_lddw_pair(insns, pc)
            pc += 2
            continue
        if delta is not None and not 0 <= pc + 1 + delta < n:
            raise jump_out_of_range(pc, delta)
        pc += 1


def jump_target(pc: int, insn: Insn) -> int | None:
    """Where a jump or a pseudo call goes, or None for other instructions."""
    opcode = insn.opcode
    if opcode == CALL_OPCODE and insn.src == BPF_PSEUDO_CALL:
        return pc + 1 + insn.imm
    cls = insn.cls
    if (cls != BPF_JMP and cls != BPF_JMP32) or insn.op in (BPF_CALL, BPF_EXIT):
        return None
    if opcode == BPF_JMP32 | BPF_JA:
        return pc + 1 + insn.imm
    return pc + 1 + insn.off


# -- bytes <-> slots -----------------------------------------------------------
def encode_insn(insn: Insn, map_fd: int | None = None) -> bytes:
    imm = insn.imm if map_fd is None else map_fd
    return _SLOT.pack(insn.opcode, (insn.src << 4) | (insn.dst & 0x0F), insn.off, imm)


def encode(insns: Iterable[Insn], map_fd: Mapping[str, int] | Callable[[str], int] | None = None) -> bytes:
    """Encode slots to the kernel's little-endian ``struct bpf_insn`` array.

    Pseudo map loads get their ``imm`` from ``map_fd`` (by map name); without
    it the ``imm`` stored in the slot is used.
    """
    lookup: Callable[[str], int] | None
    if map_fd is None:
        lookup = None
    elif callable(map_fd):
        lookup = map_fd
    else:
        lookup = map_fd.__getitem__
    out = bytearray()
    for insn in insns:
        fd = lookup(insn.map) if (lookup is not None and insn.map is not None) else None
        out += encode_insn(insn, fd)
    return bytes(out)


def decode(data: bytes, map_name: Callable[[int], str] | None = None, validate: bool = True) -> list[Insn]:
    """Decode and (by default) validate a ``struct bpf_insn`` array.

    ``map_name`` turns the fd of a pseudo map load back into a map name.
    """
    if len(data) % SLOT_SIZE:
        raise InvalidInstruction(len(data) // SLOT_SIZE, f"program length {len(data)} is not a multiple of 8")
    insns = []
    for opcode, regs, off, imm in _SLOT.iter_unpack(data):
        dst, src = regs & 0x0F, regs >> 4
        name = None
        if opcode == LDDW_OPCODE and src in (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE):
            name = map_name(imm) if map_name is not None else f"fd{imm}"
        insns.append(Insn(opcode, dst, src, off, imm, name))
    if validate:
        check_program(insns)
    return insns


def opcode_class_name(insn: Insn) -> str:
    """A coarse label for signatures and coverage: e.g. ``alu64.div.x``."""
    cls = insn.cls
    name = CLASS_NAMES[cls]
    if cls in (BPF_ALU, BPF_ALU64):
        return f"{name}.{ALU_OP_NAMES.get(insn.op, '?')}.{'x' if insn.source else 'k'}"
    if cls in (BPF_JMP, BPF_JMP32):
        if insn.opcode == TAIL_CALL_OPCODE:
            return "jmp.tail_call"
        return f"{name}.{JMP_OP_NAMES.get(insn.op, '?')}"
    if cls == BPF_LD:
        return "ld.imm64"
    if cls == BPF_STX and insn.mode == BPF_ATOMIC:
        return f"stx.atomic.{SIZE_SUFFIX[insn.size]}"
    return f"{name}.{SIZE_SUFFIX[insn.size]}{'.sx' if insn.mode == BPF_MEMSX else ''}"
