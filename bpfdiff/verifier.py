"""The verifier model: does this profile's kernel load a program, and what does it turn it into?

One entry point for every part of bpfdiff that needs the answer -- both
engines' loaders, ``xlate``/the JIT, ``run``, ``minimize``, ``triage``, the
corpus tools and the conformance runner:

* :func:`verify` -- refuses what the profile's kernel refuses
  (:class:`VerifierError`, whose text is verifier-style:
  ``prog NAME insn N: reason``) and returns the *xlated* program, the
  instructions after the verifier's rewrites (:mod:`bpfdiff.jit.xlate`);
* :func:`check_load` -- the refusal half alone (cheap: no rewriting);
* :func:`insn_refusal` -- what the kernel says of one instruction its
  instruction set does not have (profile fields ``isa_v4``, ``atomic_fetch``);
* :func:`track_const_alu` -- the one rule for which ALU results the verifier
  knows as constants (``tnum``/bounds tracking reduced to constants), used by
  xlate's direct tail-call sites, dead-branch removal and the checker.

Kernel facts (``kernel/bpf/verifier.c`` of 6.1 and 5.5):

* ``resolve_pseudo_ldimm64`` runs first over the whole program: an ``LDX``
  whose mode is not ``BPF_MEM`` (the sign-extending loads of ISA v4) is
  "BPF_LDX uses reserved fields"; an opcode missing from the interpreter's
  jump table is "unknown opcode %02x" (``d7``: 64-bit bswap, ``06``: ja32).
* ``check_alu_op``: ``BPF_MOV`` with a non-zero ``off`` (movsx) is "BPF_MOV uses
  reserved fields"; any other operation with one (sdiv/smod) "BPF_ALU uses
  reserved fields"; division by the constant 0 "div by zero"; a constant shift
  by at least the operand width "invalid shift N".
* ``check_atomic`` (5.5: ``check_xadd``): before v5.12 the only atomic is add
  without fetch; anything else is "BPF_XADD uses reserved fields".
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

from bpfdiff import isa, memo, scalar
from bpfdiff.helpers import known_cpu_id
from bpfdiff.isa import Insn, InvalidInstruction, Program
from bpfdiff.memo import IdentityMemo, Memo
from bpfdiff.profiles import Profile, profile_key
from bpfdiff.scenario import DEFAULT_PROG_TYPE, PROG_XDP, Scenario

if TYPE_CHECKING:
    from bpfdiff.jit.bpf_jit_comp import JitOptions
    from bpfdiff.jit.xlate import Xlated

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1


class MapLike(Protocol):
    name: str
    kind: str
    key_size: int
    value_size: int
    max_entries: int


class VerifierError(ValueError):
    """The profile's kernel refuses a program: ``prog NAME insn N: reason``."""

    def __init__(self, prog: str, pc: int | None, reason: str) -> None:
        where = f"prog {prog}" + (f" insn {pc}" if pc is not None else "")
        super().__init__(f"{where}: {reason}")
        self.prog = prog
        self.pc = pc
        self.reason = reason


# -- the instruction set of the profile's kernel ------------------------------------------------
def insn_refusal(insn: Insn, profile: Profile) -> str | None:
    """The kernel's message for an instruction its instruction set lacks (None: it has it).

    Only for encodings :func:`bpfdiff.isa.check_insn` accepts (today's ISA).
    """
    opcode, cls = insn.opcode, insn.cls
    if not profile.isa_v4:              # (each test below concerns one class: tested by class)
        if cls == isa.BPF_ALU or cls == isa.BPF_ALU64:
            if opcode == isa.BPF_ALU64 | isa.BPF_END:
                return f"unknown opcode {opcode:02x}"
            if insn.off and insn.op not in (isa.BPF_END, isa.BPF_NEG):
                return "BPF_MOV uses reserved fields" if insn.op == isa.BPF_MOV else "BPF_ALU uses reserved fields"
        elif cls == isa.BPF_JMP32:
            if opcode == isa.BPF_JMP32 | isa.BPF_JA and not profile.isa_ja32:
                return f"unknown opcode {opcode:02x}"
        elif cls == isa.BPF_LDX and insn.mode != isa.BPF_MEM:
            return "BPF_LDX uses reserved fields"
    if not profile.atomic_fetch and cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC and \
            insn.imm != isa.BPF_ADD:
        return "BPF_XADD uses reserved fields"
    return None


def alu_refusal(insn: Insn) -> str | None:
    """check_alu_op's refusals of a constant operand (every profile)."""
    cls = insn.cls
    if (cls != isa.BPF_ALU and cls != isa.BPF_ALU64) or insn.source != isa.BPF_K:
        return None
    if insn.op in (isa.BPF_DIV, isa.BPF_MOD) and insn.imm == 0:
        return "div by zero"
    if insn.op in (isa.BPF_LSH, isa.BPF_RSH, isa.BPF_ARSH):
        width = 64 if insn.cls == isa.BPF_ALU64 else 32
        if not 0 <= insn.imm < width:
            return f"invalid shift {insn.imm}"
    return None


def check_isa(prog: Program, profile: Profile) -> None:
    """Encodings, then the profile's instruction set, in the kernel's order (raises VerifierError)."""
    _check_insns(prog, {}, profile, structure=False)


def _check_insns(prog: Program, maps: Mapping[str, MapLike], profile: Profile, structure: bool) -> None:
    """check_isa and, with ``structure``, check_load's checks of each instruction: one pass over the
    program, each refusal reported in the kernel's order -- encodings (isa.check_program's checks),
    the instruction set (resolve_pseudo_ldimm64's "unknown opcode" and LDX refusals first,
    do_check's then), then the first instruction check_load refuses (a jump into an lddw, a write
    to R10, a map)."""
    insns = prog.insns
    name = prog.name
    early: tuple[int, str] | None = None        # the first refusal resolve_pseudo_ldimm64 reports
    first: tuple[int, str] | None = None        # the first refusal do_check would report
    loads: list[int] = []                       # what check_load may refuse, after those (in order)
    second_slots: set[int] = set()
    pc = 0
    n = len(insns)
    verdicts = _REFUSALS[profile.isa_v4, profile.isa_ja32, profile.atomic_fetch]
    try:
        while pc < n:
            insn = insns[pc]
            key = (insn.opcode, insn.dst, insn.src, insn.off, insn.imm)
            verdict = verdicts.get(key)
            if verdict is None:
                verdict = _refusal_verdict(verdicts, key, insn, profile)
            invalid, delta, reason, is_early, may_refuse_load = verdict
            # an invalid encoding anywhere comes first (the kernel checks the encodings before
            # anything else): the refusals below are only noted until the pass is through
            if invalid is not None:
                raise InvalidInstruction(pc, invalid)
            if insn.is_lddw:
                isa.check_lddw_pair(insns, pc)
                second_slots.add(pc + 1)
            elif delta is not None and not 0 <= pc + 1 + delta < n:
                raise isa.jump_out_of_range(pc, delta)
            if reason is not None:
                if is_early:
                    if early is None:
                        early = (pc, reason)
                elif first is None:
                    first = (pc, reason)
            if may_refuse_load:
                loads.append(pc)
            pc += 2 if insn.is_lddw else 1
    except InvalidInstruction as exc:
        raise VerifierError(name, exc.pc, exc.reason) from None
    if early is not None:
        raise VerifierError(name, *early)
    if first is not None:
        raise VerifierError(name, *first)
    if structure:
        for pc in loads:            # (after the pass: a jump may go into a later lddw)
            loading = _load_refusal(pc, insns[pc], insns, second_slots, maps)
            if loading is not None:
                raise VerifierError(name, *loading)


# _check_insns' verdicts on one instruction, per the profile fields insn_refusal reads (isa_v4,
# isa_ja32, atomic_fetch): isa.slot_verdict's (the encoding's refusal, a jump's distance), then
# (do_check's refusal, whether resolve_pseudo_ldimm64 reports it first, whether _load_refusal can
# refuse it).  Those, insn_refusal, alu_refusal and that test read nothing of the instruction but
# its encoding fields (opcode, dst, src, off, imm: the opcode's views are functions of the
# opcode), so the key is complete; most instructions repeat one met before.
_REFUSALS: dict[tuple[bool, bool, bool], Memo[tuple[int, int, int, int, int],
                                              tuple[str | None, int | None, str | None, bool, bool]]] = {
    flags: Memo(1 << 16) for flags in itertools.product((False, True), repeat=3)}


def _refusal_verdict(verdicts: Memo, key: tuple[int, int, int, int, int], insn: Insn,
                     profile: Profile) -> tuple[str | None, int | None, str | None, bool, bool]:
    """_check_insns' verdict on one instruction (see _REFUSALS), computed and remembered."""
    invalid, delta = isa.slot_verdict(insn)
    if invalid is not None:
        return verdicts.remember(key, (invalid, delta, None, False, False))
    reason = insn_refusal(insn, profile)
    early = reason is not None and (reason.startswith("unknown opcode") or reason.startswith("BPF_LDX"))
    cls = insn.cls
    if reason is None and (cls == isa.BPF_ALU or cls == isa.BPF_ALU64) and insn.source == isa.BPF_K:
        reason = alu_refusal(insn)
    may_refuse_load = (cls == isa.BPF_JMP or cls == isa.BPF_JMP32 or insn.is_lddw or
                       insn.dst == isa.BPF_REG_FP or insn.src == isa.BPF_REG_FP)
    return verdicts.remember(key, (invalid, delta, reason, early, may_refuse_load))


def _load_refusal(pc: int, insn: Insn, insns: Sequence[Insn], second_slots: set[int] | tuple,
                  maps: Mapping[str, MapLike]) -> tuple[int, str] | None:
    """What check_load refuses of one instruction (the program's encodings are valid)."""
    cls = insn.cls
    if cls == isa.BPF_JMP or cls == isa.BPF_JMP32:
        target = isa.jump_target(pc, insn)
        if target in second_slots:
            return (pc, f"jump into the middle of ldimm64 insn {target - 1}")
    if (insn.dst == isa.BPF_REG_FP or insn.src == isa.BPF_REG_FP) and isa.BPF_REG_FP in written_registers(insn):
        return (pc, "frame pointer is read only")
    if insn.is_lddw and insn.map is not None:
        bpf_map = maps.get(insn.map)
        if bpf_map is None:
            return (pc, f"unknown map {insn.map!r}")
        if insn.src == isa.BPF_PSEUDO_MAP_VALUE:
            off = isa.lddw_value(insn, insns[pc + 1]) >> 32
            if bpf_map.kind != "array" or bpf_map.max_entries != 1:
                return (pc, "map_value needs a one-element array")
            if off >= bpf_map.value_size:
                return (pc, f"map_value offset {off} beyond value_size {bpf_map.value_size}")
    return None


# -- constants the verifier knows ----------------------------------------------------------------
# adjust_scalar_min_max_vals (6.1): with both operands constant, the tnum of the result is
# exact for these operations; everything else -- div, mod, neg, bswap (check_reg_arg(DST_OP)
# marks the register unknown), movsx -- leaves the register unknown.  (Later kernels also
# track neg; 6.1 does not: a key computed through neg makes an *indirect* tail-call site.)
TRACKED_ALU = frozenset({isa.BPF_ADD, isa.BPF_SUB, isa.BPF_MUL, isa.BPF_AND, isa.BPF_OR, isa.BPF_XOR,
                         isa.BPF_LSH, isa.BPF_RSH, isa.BPF_ARSH})


def coerce_to_size_sx(src: scalar.Scalar, size: int, alu32: bool) -> scalar.Scalar:
    """movsx's result (ISA v4): coerce_reg_to_size_sx (64-bit) / coerce_subreg_to_size_sx (32-bit).

    A constant stays a constant, sign-extended from ``size`` bytes; a 64-bit source whose
    signed bounds agree above the low ``size`` bytes and whose sign-extended bounds share a
    sign gets that range; anything else the default of the size (its signed range, unsigned
    anything, tnum unknown).  The 32-bit form is zero-extended to 64 bits afterwards.
    """
    bits = size * 8

    def sext(v: int) -> int:
        low = v & ((1 << bits) - 1)
        return low - ((low >> (bits - 1)) << bits)

    if alu32:
        if src.subreg_is_const:
            return scalar.known(sext(src.value) & U32)
        lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return scalar.zext(scalar.Scalar(0, U64, 0, U64, scalar.S64_MIN, scalar.S64_MAX, 0, U32, lo, hi))
    if src.is_const:
        return scalar.known(sext(src.value) & U64)
    if (src.smax & U64) >> bits == (src.smin & U64) >> bits:
        a, b = sext(src.smax), sext(src.smin)
        lo, hi = min(a, b), max(a, b)
        if (lo >= 0) == (hi >= 0):
            value, mask = scalar.t_range(lo & U64, hi & U64)
            return scalar.Scalar(value, mask, lo & U64, hi & U64, lo, hi, lo & U32, hi & U32,
                                 scalar.s32(lo), scalar.s32(hi))
    lo, hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return scalar.Scalar(0, U64, 0, U64, lo, hi, 0, U32, max(lo, scalar.S32_MIN), min(hi, scalar.S32_MAX))


def track_const_alu(insn: Insn, dst: int | None, src: int | None) -> int | None:
    """The value (u64) the verifier knows ``insn.dst`` holds after an ALU instruction, or None.

    ``dst`` and ``src`` are the known u64 values of the operands before it (None: unknown);
    ``src`` is ignored for an immediate operand.  The one rule for constant keys of direct
    tail-call sites, branch outcomes, and the checker's scalars.
    """
    is64 = insn.cls == isa.BPF_ALU64
    width = 64 if is64 else 32
    mask = U64 if is64 else U32
    op = insn.op
    by_imm = insn.source == isa.BPF_K
    operand = (insn.imm & mask) if by_imm else src
    if op == isa.BPF_MOV:
        if operand is None or (insn.off and by_imm):
            return None
        if insn.off in (8, 16, 32):
            # movsx (ISA v4): coerce_reg_to_size_sx keeps a constant, sign-extended from off bits
            low = operand & ((1 << insn.off) - 1)
            return (low - ((low >> (insn.off - 1)) << insn.off)) & mask
        if insn.off:
            return None
        return operand & mask
    if op not in TRACKED_ALU or dst is None or operand is None:
        return None
    a, b = dst & mask, operand & mask
    if op in (isa.BPF_LSH, isa.BPF_RSH, isa.BPF_ARSH):
        if b >= width:
            return None                    # "umax_val >= insn_bitness": unknown
        if op == isa.BPF_LSH:
            return (a << b) & mask
        if op == isa.BPF_RSH:
            return a >> b
        signed = a - (1 << width) if a >> (width - 1) else a
        return (signed >> b) & mask
    if op == isa.BPF_ADD:
        result = a + b
    elif op == isa.BPF_SUB:
        result = a - b
    elif op == isa.BPF_MUL:
        result = a * b
    elif op == isa.BPF_AND:
        result = a & b
    elif op == isa.BPF_OR:
        result = a | b
    else:                               # BPF_XOR, the last of TRACKED_ALU
        result = a ^ b
    return result & mask


def _signed(value: int, width: int) -> int:
    return value - (1 << width) if value >> (width - 1) else value


BRANCH_OPS = {
    isa.BPF_JEQ: lambda a, b, sa, sb: a == b, isa.BPF_JNE: lambda a, b, sa, sb: a != b,
    isa.BPF_JGT: lambda a, b, sa, sb: a > b, isa.BPF_JGE: lambda a, b, sa, sb: a >= b,
    isa.BPF_JLT: lambda a, b, sa, sb: a < b, isa.BPF_JLE: lambda a, b, sa, sb: a <= b,
    isa.BPF_JSGT: lambda a, b, sa, sb: sa > sb, isa.BPF_JSGE: lambda a, b, sa, sb: sa >= sb,
    isa.BPF_JSLT: lambda a, b, sa, sb: sa < sb, isa.BPF_JSLE: lambda a, b, sa, sb: sa <= sb,
    isa.BPF_JSET: lambda a, b, sa, sb: a & b != 0,
}


def branch_taken(insn: Insn, dst: int | None, src: int | None) -> bool | None:
    """is_branch_taken for known operands: is the conditional jump taken (None: unknown)?

    ``dst``/``src`` are the u64 values the verifier knows (None: unknown; ``src`` is
    ignored for an immediate).  jmp32 compares the low halves.
    """
    fn = BRANCH_OPS.get(insn.op)
    operand = (insn.imm & U64) if insn.source == isa.BPF_K else src
    if fn is None or dst is None or operand is None:
        return None
    width = 32 if insn.cls == isa.BPF_JMP32 else 64
    mask = (1 << width) - 1
    a, b = dst & mask, operand & mask
    return fn(a, b, _signed(a, width), _signed(b, width))


def tnum_range_mask(max_entries: int) -> int:
    """The mask of tnum_range(0, max_entries - 1): all bits up to the highest set bit of max - 1."""
    return (1 << (max_entries - 1).bit_length()) - 1


def key_in_range(profile: Profile, key: int, max_entries: int) -> bool:
    """record_func_key: may a constant tail-call key make the site direct (a poke descriptor)?

    ``verifier_tail_call_key_range`` "exact": key < max_entries (a657182a5c51, v6.0-rc4);
    "tnum": ``tnum_in(tnum_range(0, max_entries - 1), key)``, which until then also let keys
    up to the next power of two minus one through.
    """
    if profile.verifier_tail_call_key_range == "tnum":
        return key & ~tnum_range_mask(max_entries) == 0
    return key < max_entries


# -- the loader's checks ---------------------------------------------------------------------------
def written_registers(insn: Insn) -> tuple[int, ...]:
    """Registers an instruction writes (other than through calls), for the verifier's R10 rule."""
    cls = insn.cls
    if cls in (isa.BPF_ALU, isa.BPF_ALU64, isa.BPF_LDX) or insn.is_lddw:
        return (insn.dst,)
    if cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC:
        if insn.imm == isa.BPF_CMPXCHG:
            return (0,)
        if insn.imm & isa.BPF_FETCH:
            return (insn.src,)
    return ()


def check_load(prog: Program, maps: Mapping[str, MapLike], profile: Profile) -> None:
    """Raise :class:`VerifierError` for what the profile's kernel refuses before running anything."""
    _check_insns(prog, maps, profile, structure=True)
    if not profile.tail_calls_in_subprogs:
        insns = prog.insns
        if any(insn.is_pseudo_call for insn in insns) and any(insn.is_tail_call for insn in insns):
            raise VerifierError(prog.name, None, "tail_calls are not allowed in programs with bpf-to-bpf calls")


def verify(prog: Program, maps: Mapping[str, MapLike], profile: Profile,
           options: JitOptions | None = None, prog_type: str = DEFAULT_PROG_TYPE) -> Xlated:
    """Refuse as the profile's kernel would (VerifierError), else the xlated program.

    ``options`` are the JIT's (``force_indirect`` keeps every tail-call site indirect);
    ``prog_type`` the scenario's (the context the program gets, see :mod:`bpfdiff.xdp`).
    """
    force_indirect = bool(options is not None and options.force_indirect)
    known = _program_key(prog)
    used = tuple((m.name, m.kind, m.key_size, m.value_size, m.max_entries)
                 for m in (maps.get(name) for name in known.map_names) if m is not None)
    # the engines ask again with the very objects they asked with: answered before hashing anything
    asked = (id(prog), id(profile), used, force_indirect, prog_type)
    answer = _answers.get(asked)
    if answer is not None and answer[0] is prog and answer[1] is profile:
        result = answer[2]
    else:
        result = _verified(known, used, _view(profile), force_indirect, prog_type)
        _answers.remember(asked, (prog, profile, result))     # holding them keeps their ids unique
    if isinstance(result, VerifierError):
        raise VerifierError(result.prog, result.pc, result.reason)
    return result.copy()            # callers own what they get (the cache keeps the original)


# Profile fields the verifier model never reads (check_load, xlate, explore and what they call):
# the JIT's code generation, the interpreter's tail-call counter, the profile's name and its
# list of known kernel bugs.  Two profiles that differ only in these get the same answers, so
# the cache keys on every other field (VerifierView): the oracle's known-bug probes -- a fix of
# the JIT or of the interpreter's counter -- reuse the answers of the profile as it is.  A new
# field counts until it is listed here, so forgetting one costs cache misses, never a wrong
# answer; tests/test_verifier_cache.py checks that the model reads none of these.
NOT_READ_BY_VERIFIER = frozenset({
    "name", "description", "kernel_bugs",
    "max_tail_call_cnt", "interp_limit_test", "subprog_counter", "tail_call_counts_empty_slot",
    "jit_prologue", "jit_tail_call_jcc", "x86_tail_call_offset", "jit_sls", "retpoline",
    "off_array_max_entries", "off_prog_bpf_func", "jit_imm8_jmp_max", "jit_tail_call_cnt", "jit_ibt",
    "jit_nop5", "map_ops_return_bits", "jit_imm64_simm32",
})


class VerifierView:
    """A profile as the verifier model sees it: equal and hashed by its fields but
    :data:`NOT_READ_BY_VERIFIER` (the cache key), holding the profile the model runs with."""

    __slots__ = ("profile", "key")

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.key = profile_key(profile, NOT_READ_BY_VERIFIER)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VerifierView) and self.key == other.key

    def __hash__(self) -> int:
        return hash(self.key)


CACHE_SIZE = 4096


class _ProgramKey:
    """A program as the cache key: its hash (of every instruction) and map names computed once."""

    __slots__ = ("prog", "hash", "map_names")

    def __init__(self, prog: Program) -> None:
        self.prog = prog
        self.hash = hash(prog)
        self.map_names = prog.map_names

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _ProgramKey) and (self.prog is other.prog or self.prog == other.prog)

    def __hash__(self) -> int:
        return self.hash


# identity memos in front of the cache (see bpfdiff.memo.IdentityMemo), and the engines' answers
# by the ids of what they asked with, holding those objects
_program_key = IdentityMemo(_ProgramKey, CACHE_SIZE)
_view = IdentityMemo(VerifierView, CACHE_SIZE)
_answers: Memo[tuple, tuple[Program, Profile, Xlated | VerifierError]] = Memo(CACHE_SIZE)


@memo.forgettable
@functools.lru_cache(maxsize=CACHE_SIZE)
def _verified(key: _ProgramKey, used: tuple[tuple[str, str, int, int, int], ...], view: VerifierView,
              force_indirect: bool, prog_type: str) -> Xlated | VerifierError:
    """verify() for the maps the program names, cached: every engine, the oracle's what-if
    re-runs and the corpus tools ask about the same programs again and again."""
    from bpfdiff.jit.bpf_jit_comp import JitOptions
    from bpfdiff.jit.xlate import xlate
    from bpfdiff.scenario import MapDef

    prog = key.prog
    maps = {name: MapDef(name, kind, key_size, value_size, max_entries)
            for name, kind, key_size, value_size, max_entries in used}
    try:
        check_load(prog, maps, view.profile)
        return xlate(prog, maps, view.profile, JitOptions(force_indirect=force_indirect), prog_type)
    except VerifierError as exc:
        return exc


# -- scenarios ---------------------------------------------------------------------------------------
# The generator's checker (fuzz/checker.py) follows each program's registers and stack the way
# do_check does.  Some of its refusals are the kernel's own rules; the others are deliberately
# stricter than the kernel (loop shapes it can bound, pointers it keeps out of memory and R0,
# context bytes per scenario).  Only the first kind makes the model refuse a program.
KERNEL_RULES = re.compile(
    r"R\d+ !read_ok|invalid (read from|write to) stack|invalid read from stack|misaligned stack access"
    r"|back-edge from insn|frame pointer is read only|the call stack of \d+ frames|combined stack size"
    r"|tail_calls are not allowed|div by zero|invalid shift|unreachable insn|jump out of|last insn"
    r"|cannot pass map_type|invalid access to map value|invalid mem access 'map_value_or_null'"
    r"|invalid indirect|call local|jump into the middle|uses reserved fields|unknown opcode|R\d+ type=")


def first_refusal(scenario: Scenario, profile: Profile) -> VerifierError | None:
    """The first program of ``scenario`` the profile's kernel would refuse, and why (None: all load)."""
    from bpfdiff.fuzz.checker import check_program

    maps = {m.name: m for m in scenario.maps}
    for program in scenario.programs:
        try:
            verify(program, maps, profile, prog_type=scenario.prog_type)
        except VerifierError as exc:
            return exc
        for error in check_program(program, scenario, profile, bounds={}):
            if KERNEL_RULES.match(error.message):
                return VerifierError(program.name, error.pc, error.message)
    return None


def insn_line(path: str, prog: str, pc: int | None) -> int | None:
    """The line of ``path`` holding slot ``pc`` of program ``prog`` (a ``.scn`` or ``.data`` file)."""
    from bpfdiff.asm import AsmError, _Assembler, _strip_comment

    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return None
    start = raw = None
    for number, line in enumerate(lines, start=1):
        tokens = line.split()
        if tokens[:3] == ["--", "prog", prog] or tokens[:2] == ["--", "asm"]:
            start, raw = number, tokens[3:] == ["raw"]
            break
    if start is None:
        return None
    if pc is None:
        return start
    body: list[tuple[int, str]] = []
    for number in range(start + 1, len(lines) + 1):
        if lines[number - 1].startswith("-- "):
            break
        body.append((number, _strip_comment(lines[number - 1])))
    slots: list[int] = []
    if raw:
        slots = [number for number, text in body if text.strip()]
    else:
        class Recorder(_Assembler):
            def line(self, number: int, text: str) -> None:
                before = len(self.out)
                super().line(number, text)
                slots.extend([number] * (len(self.out) - before))
        try:
            Recorder(path, start + 1).run("\n".join(text for _, text in body))
        except AsmError:
            return start
    return slots[pc] if pc < len(slots) else start


def refusal_line(path: str, scenario: Scenario, profile: Profile) -> str | None:
    """``PATH:LINE: prog NAME insn N: reason`` when the profile's kernel would refuse a program of
    the scenario read from ``path`` (None: it loads them all).  ``run`` and ``triage`` report it
    as bad input (exit 2): a program the kernel refuses is never a divergence."""
    refusal = first_refusal(scenario, profile)
    if refusal is None:
        return None
    line = insn_line(path, refusal.prog, refusal.pc)
    return f"{path}{f':{line}' if line is not None else ''}: {refusal}"


# -- the path-sensitive model: do_check's exploration ----------------------------------------------
# The kernel's verifier follows every path of a program on its own (do_check with push_stack
# for the other side of each undecided branch), subprograms once per call site with the
# caller's registers, bounded loops iteration by iteration.  What xlate needs from it:
#
# * ``seen`` -- the instructions some path reaches (insn_aux_data.seen): the others are dead
#   code, and a conditional jump one of whose successors no path reaches is hard-wired
#   (opt_hard_wire_dead_code_branches);
# * ``tail_calls`` -- record_func_map / record_func_key per site: the prog array and the
#   constant key seen on every path, or poisoned (None) when two paths disagree or a path's
#   key is not a constant below max_entries (BPF_MAP_PTR_POISON, BPF_MAP_KEY_POISON);
# * ``lookups`` -- record_func_map for map_lookup_elem and friends.
#
# Registers carry what the kernel knows of them (bpfdiff.scalar: tnum and bounds, 6.1's
# algorithms), the stack what check_stack_write_fixed_off leaves (spilled registers, zero and
# misc bytes).  Identical (pc, state) pairs are explored once; a program whose exploration
# exceeds EXPLORE_BUDGET instructions gets no answer (None: xlate falls back to its joined
# dataflow, which never makes a site direct or removes a branch the kernel keeps).
# Not modelled: scalar ids (find_equal_scalars), packet ranges, the kernel's state pruning
# (with precision tracking it prunes only states that decide the same branches).
EXPLORE_BUDGET = 20_000     # generated programs take at most a few hundred, the conformance suite 720
MAX_FRAMES = 8


class PathFacts(NamedTuple):
    seen: frozenset[int]
    tail_calls: dict[int, tuple[str | None, int | None]]
    lookups: dict[int, str | None]
    # each conditional jump's outcomes some path followed (True: the jump, False: the fall-through)
    outcomes: dict[int, frozenset[bool]] = {}


def _all_zero(types: str, slot: int, size: int) -> bool:
    """Are the ``size`` bytes read from ``slot`` down all STACK_ZERO ("Z")?"""
    return all(types[(slot - i) % 8] == "Z" for i in range(size))


def _sext_imm(imm: int) -> int:
    return imm & U64


ZERO_SLOT = "IIIIIIII"
# helpers' stack arguments: (register, the map's size field giving how many bytes they read)
STACK_ARGS = {isa.BPF_FUNC_map_lookup_elem: ((2, "key_size"),),
              isa.BPF_FUNC_map_delete_elem: ((2, "key_size"),),
              isa.BPF_FUNC_map_update_elem: ((2, "key_size"), (3, "value_size"))}


def subprog_starts(insns: Sequence[Insn]) -> list[int]:
    """The first pc of each function: 0 and every bpf-to-bpf call's target, in order."""
    return sorted({0} | {pc + 1 + insn.imm for pc, insn in enumerate(insns)
                         if insn.opcode == isa.CALL_OPCODE and insn.src == isa.BPF_PSEUDO_CALL})   # is_pseudo_call


def reach_tail_calls(has_tail_call: Sequence[bool], callees: Sequence[set[int]]) -> list[bool]:
    """The verifier's ``tail_call_reachable`` per function: it tail-calls, or calls (transitively)
    a function that does.  ``callees[k]``: the indices of the functions function k calls."""
    reachable = list(has_tail_call)
    changed = True
    while changed:
        changed = False
        for k, called in enumerate(callees):
            if not reachable[k] and any(reachable[c] for c in called):
                reachable[k] = changed = True
    return reachable


def _tail_call_reachable(insns: Sequence[Insn]) -> frozenset[int]:
    """Entry pcs of the functions that can reach ``bpf_tail_call``, from every call in their body."""
    starts = subprog_starts(insns)
    bounds = list(zip(starts, starts[1:] + [len(insns)], strict=True))
    has_tail_call = [any(insns[pc].is_tail_call for pc in range(s, e)) for s, e in bounds]
    callees = [{starts.index(pc + 1 + insns[pc].imm) for pc in range(s, e) if insns[pc].is_pseudo_call}
               for s, e in bounds]
    return frozenset(s for (s, _), reach in zip(bounds, reach_tail_calls(has_tail_call, callees), strict=True)
                     if reach)


def reads_subprog_r0_trust(insns: Sequence[Insn]) -> bool:
    """Whether the model's answers for ``insns`` can depend on ``verifier_trusts_subprog_r0``: it
    is read only at the exit of a function entered by a bpf-to-bpf call that can reach
    ``bpf_tail_call`` (_Explorer.step), so a program without such a call gets the same answers
    under both values (the oracle's known-bug probes skip that fix's re-run for it)."""
    calls = [insn for insn in insns if insn.opcode == isa.CALL_OPCODE]
    if not any(insn.src == isa.BPF_PSEUDO_CALL for insn in calls) or not any(insn.is_tail_call for insn in calls):
        return False            # no function is entered by a call, or none can reach a tail call
    reachable = _tail_call_reachable(insns)
    return any(insn.is_pseudo_call and isa.jump_target(pc, insn) in reachable for pc, insn in enumerate(insns))


# reads_subprog_r0_trust per program, asked again by every known-bug probe of a scenario (its
# instructions are all it reads, and a Program's are immutable)
_reads_r0_trust: IdentityMemo[Program, bool] = IdentityMemo(lambda prog: reads_subprog_r0_trust(prog.insns),
                                                             CACHE_SIZE)


def subprog_r0_trust_matters(programs: Sequence[Program], maps: Mapping[str, MapLike], profile: Profile,
                             other: Profile | None = None, options: JitOptions | None = None,
                             prog_type: str = DEFAULT_PROG_TYPE) -> bool:
    """Whether the model's answers for ``programs`` under ``profile`` can depend on
    ``verifier_trusts_subprog_r0``: never for a program that :func:`reads_subprog_r0_trust` says
    cannot.  With ``other``, a profile the model tells apart from ``profile`` by that field at
    most: whether the answers (the xlated code, or the refusal) for such a program differ under
    it -- an engine that reads the field only through the model runs alike under both when they
    do not (the oracle's known-bug probes)."""
    view = _view(profile)
    if other is not None and _view(other) == view:
        return False                  # the model cannot tell the two apart
    reading = [prog for prog in programs if _reads_r0_trust(prog)]
    if not reading:
        return False
    if other is None or VerifierView(
            other.with_options(verifier_trusts_subprog_r0=profile.verifier_trusts_subprog_r0)) != view:
        return True
    return any(_answer(prog, maps, profile, options, prog_type) != _answer(prog, maps, other, options, prog_type)
               for prog in reading)


def _answer(prog: Program, maps: Mapping[str, MapLike], profile: Profile, options: JitOptions | None,
            prog_type: str) -> Xlated | str:
    try:
        return verify(prog, maps, profile, options, prog_type)
    except VerifierError as exc:
        return str(exc)


# what _Explorer.step does with an instruction (kinds, in the order step tests them)
_LDDW, _ALU, _LDX, _STORE, _CALL, _EXIT, _JA, _COND, _NEXT = range(9)


def _decode(pc: int, insn: Insn) -> tuple:
    """(kind, class, ...kind's fields..., jump target or None), read once per program.

    An ALU instruction: (_ALU, class, alu32, dst, op, source is X, src, off, imm, the
    immediate as a known scalar, the result of a plain move of the immediate (else None),
    target); a load: (_LDX, class, size in bytes, dst, src, off, target); a store: (_STORE,
    class, size in bytes, dst, src, off, imm, atomic, the register a fetching atomic loads
    (else None), target).
    """
    opcode, cls = insn.opcode, insn.cls
    if cls == isa.BPF_ALU or cls == isa.BPF_ALU64:
        imm = insn.imm
        alu32 = cls == isa.BPF_ALU
        if insn.source == isa.BPF_X:
            return (_ALU, cls, alu32, insn.dst, insn.op, True, insn.src, insn.off, imm, None, None, None)
        known_imm = ("s", scalar.known(_sext_imm(imm)))
        moved = None
        if insn.op == isa.BPF_MOV and not insn.off:
            moved = ("s", scalar.known(imm & U32)) if alu32 else known_imm
        return (_ALU, cls, alu32, insn.dst, insn.op, False, insn.src, insn.off, imm, known_imm, moved, None)
    if cls == isa.BPF_LDX:
        return (_LDX, cls, isa.SIZE_BYTES[insn.size], insn.dst, insn.src, insn.off, None)
    if cls == isa.BPF_ST or cls == isa.BPF_STX:
        imm = insn.imm
        atomic = cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC
        fetch = (0 if imm == isa.BPF_CMPXCHG else insn.src) if atomic and imm & isa.BPF_FETCH else None
        return (_STORE, cls, isa.SIZE_BYTES[insn.size], insn.dst, insn.src, insn.off, imm, atomic, fetch, None)
    target = isa.jump_target(pc, insn) if cls == isa.BPF_JMP or cls == isa.BPF_JMP32 else None
    if insn.is_lddw:
        return (_LDDW, cls, target)
    if opcode == isa.CALL_OPCODE:
        return (_CALL, cls, target)
    if opcode == isa.EXIT_OPCODE:
        return (_EXIT, cls, target)
    if cls == isa.BPF_JMP or cls == isa.BPF_JMP32:
        return (_JA if insn.op == isa.BPF_JA else _COND, cls, target)
    return (_NEXT, cls, target)


# _decode's answers that hold wherever the instruction stands (those without a jump target: all
# but jumps and bpf-to-bpf calls), by encoding: _decode reads nothing else of an instruction (the
# opcode's views are functions of the opcode, the map name is read by step() itself), so the key
# is complete; most instructions of generated programs repeat one met before.
_DECODED: Memo[tuple[int, int, int, int, int], tuple] = Memo(1 << 16)


def _decode_program(insns: Sequence[Insn]) -> list[tuple]:
    """:func:`_decode` of every slot."""
    code = []
    for pc, insn in enumerate(insns):
        key = (insn.opcode, insn.dst, insn.src, insn.off, insn.imm)
        c = _DECODED.get(key)
        if c is None:
            c = _decode(pc, insn)
            if c[-1] is None:
                _DECODED.remember(key, c)
        code.append(c)
    return code


class _Explorer:
    """One program's exploration (see above).  Values: None (not initialised), ("s", Scalar),
    ("m", map) map pointer, ("f", frame, off) stack pointer of frame ``frame`` (index into the
    state's frames), ("v", map) map value, ("vn", map, id) map value or NULL, ("c",) context,
    ("p",) any other pointer.  A frame: (regs, stack, return pc); stack: sorted
    ((spi, slot types, spilled value), ...) with the kernel's slot_type letters I S M Z."""

    def __init__(self, insns: Sequence[Insn], maps: Mapping[str, MapLike], profile: Profile,
                 prog_type: str) -> None:
        self.insns, self.maps, self.profile, self.prog_type = insns, maps, profile, prog_type
        self.seen: set[int] = set()
        self.tail_calls: dict[int, tuple[str | None, int | None]] = {}
        self.map_ptr: dict[int, str | None] = {}
        self.outcomes: dict[int, set[bool]] = {}
        self._tail_call_reachable: frozenset[int] | None = None     # made when a callee first returns
        # the profile's answers alu() needs at every step
        self.safe_dst_range = profile.verifier_safe_dst_range
        self.branch_ranges = profile.verifier_branch_ranges
        # what step() does with each instruction, decoded once (a state reaches an instruction
        # ~1.5 times on average, and every step used to re-read the opcode's views)
        self.code = _decode_program(insns)

    def run(self, budget: int = EXPLORE_BUDGET) -> PathFacts | None:
        # The facts are a union over the (pc, state) pairs reachable from the entry (each step is a
        # function of its pair alone, and what it records is the same however often it runs), and
        # the answer is None when there are more than ``budget`` of them.  The walk compares states
        # only where two paths can meet (_join_points): between two such places a state has one
        # successor, so an already-explored state there only walks ground explored before (same
        # pairs, same order of first visits).  It then takes as many steps as there are pairs or
        # more; when that is more than the budget, the walk that counts each pair once decides.
        if self._walk(self._join_points(), budget):
            return self._facts()
        self.seen, self.tail_calls, self.map_ptr, self.outcomes = set(), {}, {}, {}
        return self._facts() if self._walk(None, budget) else None

    def _facts(self) -> PathFacts:
        tail_calls = dict(self.tail_calls)
        lookups = {pc: name for pc, name in self.map_ptr.items() if not self.insns[pc].is_tail_call}
        outcomes = {pc: frozenset(taken) for pc, taken in self.outcomes.items()}
        return PathFacts(frozenset(self.seen), tail_calls, lookups, outcomes)

    def tail_call_reachable(self) -> frozenset[int]:
        """Entry pcs of the functions that can reach ``bpf_tail_call`` (:func:`_tail_call_reachable`)."""
        if self._tail_call_reachable is None:
            self._tail_call_reachable = _tail_call_reachable(self.insns)
        return self._tail_call_reachable

    def _join_points(self) -> list[bool]:
        """Per pc: can a state reach it other than from the instruction before it, which has no
        other successor?  (Jump and call targets, return sites, the instructions after jumps,
        calls, exits and the two slots of an lddw, and anything unusual: too many is only slower.)"""
        code = self.code
        n = len(code)
        join = [False] * n
        if n:
            join[0] = True
        for pc, c in enumerate(code):
            kind = c[0]
            if kind == _ALU or kind == _LDX or kind == _STORE:
                continue                            # one successor, the next: no target
            target = c[-1]
            if pc + 1 < n and (kind != _CALL or target is not None):
                # after anything but a helper call (of the calls only a bpf-to-bpf one has a
                # target): a jump's fall-through, a return site, an lddw's second slot, ...
                join[pc + 1] = True
            if target is not None and 0 <= target < n:
                join[target] = True                 # a jump's or a pseudo call's target
            if kind == _LDDW and pc + 2 < n:
                join[pc + 2] = True                 # an lddw's second slot (above) and the one after
        return join

    def _walk(self, join: list[bool] | None, budget: int) -> bool:
        """Explore from the entry, comparing states at the pcs ``join`` marks (None: at every pc):
        False when it takes more than ``budget`` steps."""
        entry_regs = (None, ("c",)) + (None,) * 8 + (("f", 0, 0),)
        start = (0, ((entry_regs, (), -1),))
        todo = [start]
        visited = {start}
        steps = 0
        n = len(self.insns)
        step, seen, code, alu, load, store = self.step, self.seen, self.code, self.alu, self.load, self.store
        if join is None:
            join = [True] * n
        while todo:
            pc, state = todo.pop()
            # The state being followed, taken apart: the frames before the current one, and the
            # current frame's registers (a list written in place), stack and return pc.  ALU
            # instructions, loads and stores (nine in ten of the instructions walked) have one
            # successor, the next instruction, and change only these: they are followed on them,
            # and a state is put together again only where it is compared or step() needs one.
            head = state[:-1]
            regs, stack, ret = state[-1]
            r = list(regs)
            while True:
                steps += 1
                if steps > budget:
                    return False
                seen.add(pc)
                c = code[pc]
                kind = c[0]
                if kind == _ALU:
                    moved = c[10]             # a move of an immediate: alu() would return it
                    r[c[3]] = alu(c, r) if moved is None else moved
                elif kind == _LDX:
                    r[c[3]] = load(c, r, head, stack)
                elif kind == _STORE:
                    head, stack = store(c, r, head, stack)
                else:
                    succs = step(pc, head + ((tuple(r), stack, ret),))
                    if len(succs) == 1:
                        nxt = succs[0][0]
                        if nxt is not None and 0 <= nxt < n and not join[nxt]:
                            pc, state = succs[0]
                            head = state[:-1]
                            regs, stack, ret = state[-1]
                            r = list(regs)
                            continue
                    for succ in succs:
                        nxt = succ[0]
                        if nxt is None or not 0 <= nxt < n:
                            continue
                        before = len(visited)
                        visited.add(succ)
                        if len(visited) != before:
                            todo.append(succ)
                    break
                pc += 1
                if pc >= n:
                    break
                if join[pc]:
                    before = len(visited)
                    visited.add((pc, head + ((tuple(r), stack, ret),)))   # one hash: added means not seen before
                    if len(visited) == before:
                        break
        return True

    # -- the stack ---------------------------------------------------------------------------
    def stack_write(self, stack: tuple, off: int, size: int, value: object) -> tuple:
        if not -isa.MAX_BPF_STACK <= off < 0 or off % size:
            return stack
        slot = -off - 1
        spi = slot // 8
        # the stack holds one entry per slot index, sorted by it: find where spi's goes
        index, replaced = len(stack), False
        types, spilled = ZERO_SLOT, None
        for i, entry in enumerate(stack):
            if entry[0] >= spi:
                index = i
                if entry[0] == spi:
                    types, spilled, replaced = entry[1], entry[2], True
                break
        types = list(types)
        scalar_value = value is not None and value[0] == "s"
        narrow_ok = size == 8 or self.profile.verifier_narrow_spill
        if scalar_value and off % 8 == 0 and narrow_ok and value[1] != scalar.UNKNOWN and value[1] != ZERO_SCALAR:
            spilled = value
            self._spill_marks(types, size)
        elif value is not None and not scalar_value:
            spilled = value           # a pointer (the kernel wants 8 bytes: "invalid size of register spill")
            self._spill_marks(types, size)
        else:
            spilled = None
            if types[7] == "S":
                types = ["M" if t != "I" else t for t in types]
            kind = "Z" if scalar_value and value[1] == ZERO_SCALAR else "M"
            for i in range(size):
                types[(slot - i) % 8] = kind
        return stack[:index] + ((spi, "".join(types), spilled),) + stack[index + 1 if replaced else index:]

    @staticmethod
    def _spill_marks(types: list[str], size: int) -> None:
        for i in range(8, 8 - size, -1):
            types[i - 1] = "S"
        for i in range(8 - size, 0, -1):
            if types[i - 1] != "I":
                types[i - 1] = "M"

    def stack_read(self, stack: tuple, off: int, size: int) -> object:
        if not -isa.MAX_BPF_STACK <= off < 0:
            return ("s", scalar.UNKNOWN)
        slot = -off - 1
        spi = slot // 8
        types, spilled = ZERO_SLOT, None
        for k, t, v in stack:
            if k == spi:
                types, spilled = t, v
        if types[7] == "S":
            spill_size = 1
            i = 7
            while i > 0 and types[i - 1] == "S":
                spill_size += 1
                i -= 1
            if size == 8 and spill_size == 8:
                return spilled
            narrow_ok = size == spill_size or (size < spill_size and self.profile.verifier_narrow_fill)
            if spilled is not None and spilled[0] == "s" and off % 8 == 0 and narrow_ok:
                return ("s", scalar.coerce(spilled[1], size))
            if self.profile.verifier_narrow_fill and _all_zero(types, slot, size):
                return ("s", ZERO_SCALAR)     # zero bytes beside a narrow spill stay zero (v6.8)
            return ("s", scalar.unknown_of_size(size))
        if _all_zero(types, slot, size):
            return ("s", ZERO_SCALAR)
        return ("s", scalar.unknown_of_size(size))

    # -- one instruction -------------------------------------------------------------------------
    def load(self, code: tuple, r: list, head: tuple, stack: tuple) -> object:
        """What a load (_LDX) puts in its destination register; ``head``: the frames before the
        current one, ``stack`` the current frame's."""
        _kind, _cls, size, _dst, src, off, _target = code
        base = r[src]
        if base == ("c",) and self.prog_type == PROG_XDP and off in (0, 4, 8):
            return ("p",)                            # data, data_end, data_meta: packet pointers
        return self._memory_value(base, off, size, head, stack)

    def _memory_value(self, base: object, off: int, size: int, head: tuple, stack: tuple) -> object:
        """What ``size`` bytes at ``base`` + ``off`` give a register (a load, a fetching atomic's old
        value): a stack slot's value when ``base`` points into a live frame (one of ``head`` or the
        current one, whose stack is ``stack``), else an unknown scalar; a scalar narrower than 8
        bytes is coerced to the size."""
        if base is not None and base[0] == "f" and base[1] <= len(head):
            value = self.stack_read(stack if base[1] == len(head) else head[base[1]][1], base[2] + off, size)
        else:
            value = ("s", scalar.unknown_of_size(size))
        if value is not None and value[0] == "s" and size < 8:
            value = ("s", scalar.coerce(value[1], size))
        return value

    def store(self, code: tuple, r: list, head: tuple, stack: tuple) -> tuple[tuple, tuple]:
        """A store (_STORE): writes a fetching atomic's register in ``r``, returns the frames before
        the current one and the current frame's stack after it."""
        _kind, cls, size, dst, src, off, imm, atomic, fetch, _target = code
        base = r[dst]
        cur = len(head)
        # (a pointer into a frame that has returned: the kernel refuses the program earlier)
        on_stack = base is not None and base[0] == "f" and base[1] <= cur
        if fetch is not None:
            r[fetch] = self._memory_value(base, off, size, head, stack)
        if on_stack:
            if atomic:
                value = None
            elif cls == isa.BPF_ST:
                value = None
                if self.profile.verifier_st_imm_spill:
                    # the same change makes a BPF_ST of 0 write STACK_ZERO bytes
                    value = ("s", scalar.known(_sext_imm(imm)) if imm else ZERO_SCALAR)
            else:
                value = r[src]                       # (no fetch: r[src] is the source as it was)
            fi = base[1]
            if fi == cur:
                stack = self.stack_write(stack, base[2] + off, size, value)
            else:
                fregs, fstack, fret = head[fi]
                head = head[:fi] + ((fregs, self.stack_write(fstack, base[2] + off, size, value), fret),) + \
                    head[fi + 1:]
        return head, stack

    def step(self, pc: int, state: tuple) -> list[tuple[int, tuple]]:
        """The successors of a state at an instruction _walk does not follow itself (all but ALU
        instructions, loads and stores)."""
        code = self.code[pc]
        kind = code[0]
        insn = self.insns[pc]
        frames = state              # a list only where a frame other than the current one changes
        regs, stack, ret = state[-1]
        r = list(regs)
        cur = len(state) - 1

        if kind == _LDDW:
            if insn.src == isa.BPF_PSEUDO_MAP_FD:
                r[insn.dst] = ("m", insn.map)
            elif insn.src == isa.BPF_PSEUDO_MAP_VALUE:
                r[insn.dst] = ("v", insn.map)
            elif insn.src == 0:
                r[insn.dst] = ("s", scalar.known(isa.lddw_value(insn, self.insns[pc + 1])))
            else:
                r[insn.dst] = ("p",)
            return self._done(frames, r, stack, ret, pc + 2)
        if kind == _CALL:
            if insn.is_pseudo_call:
                if len(frames) >= MAX_FRAMES:
                    return []
                frames = list(frames)
                frames[-1] = (tuple(r), stack, ret)
                callee = (None,) + tuple(r[1:6]) + (None,) * 4 + (("f", cur + 1, 0),)
                frames.append((callee, (), pc))
                return [(pc + 1 + insn.imm, tuple(frames))]
            if self.profile.verifier_helper_stack_clobber and insn.imm in STACK_ARGS:
                bpf_map = r[1][1] if r[1] is not None and r[1][0] == "m" else None
                if bpf_map in self.maps:
                    frames = list(frames)
                    self._stack = stack
                    for reg, field in STACK_ARGS[insn.imm]:
                        self.clobber(frames, r, reg, getattr(self.maps[bpf_map], field))
                    stack = self._stack
            self.helper(pc, insn, r)
            return self._done(frames, r, stack, ret, pc + 1)
        if kind == _EXIT:
            if ret < 0:
                return []
            r0 = r[0]
            if not self.profile.verifier_trusts_subprog_r0 and \
                    self.code[ret][-1] in self.tail_call_reachable():
                # The fix of SUBPROG_R0_ACROSS_TAIL_CALL: a tail call taken inside the callee
                # returns the target's R0, which the callee's own exit says nothing about.
                r0 = ("s", scalar.unknown_of_size(8))
            frames = list(frames)
            frames.pop()
            cregs, cstack, cret = frames[-1]
            c = list(cregs)
            c[0] = r0
            for reg in range(1, 6):
                c[reg] = None
            frames[-1] = (tuple(c), cstack, cret)
            return [(ret + 1, tuple(frames))]
        if kind == _JA:
            return self._done(frames, r, stack, ret, code[-1])
        if kind == _COND:
            return self.cond(pc, insn, state[:-1], r, stack, ret, code[-1])
        return self._done(frames, r, stack, ret, pc + 1)

    @staticmethod
    def _done(frames: tuple | list, r: list, stack: tuple, ret: int, nxt: int) -> list[tuple[int, tuple]]:
        """The one successor: at ``nxt``, the current frame's registers ``r`` and ``stack``."""
        return [(nxt, tuple(frames[:-1]) + ((tuple(r), stack, ret),))]

    def alu(self, code: tuple, r: list) -> object:
        _kind, _cls, alu32, dst_reg, op, is_x, src_reg, off, _imm, known_imm, moved, _target = code
        if moved is not None:
            return moved
        dst = r[dst_reg]
        src = r[src_reg] if is_x else known_imm
        if op == isa.BPF_MOV:
            if off:                           # movsx (ISA v4, v6.6)
                if src is None or src[0] != "s":
                    return ("s", scalar.UNKNOWN)
                return ("s", coerce_to_size_sx(src[1], off // 8, alu32))
            if not alu32:
                return src
            if src is not None and src[0] == "s":
                return ("s", scalar.zext(src[1]))
            return ("s", scalar.zext(scalar.UNKNOWN))
        if op in (isa.BPF_NEG, isa.BPF_END) or off:
            return ("s", scalar.UNKNOWN)     # check_reg_arg(DST_OP): unknown
        if dst is None or src is None:
            return None
        if dst[0] != "s":
            if not alu32 and op in (isa.BPF_ADD, isa.BPF_SUB):
                if dst[0] == "f":
                    if src[0] == "s" and src[1].mask == 0:
                        delta = scalar.s64(src[1].value)
                        return ("f", dst[1], dst[2] + (delta if op == isa.BPF_ADD else -delta))
                    return ("p",)
                return dst
            return ("s", scalar.UNKNOWN)
        if src[0] != "s":
            return ("p",) if op == isa.BPF_ADD and not alu32 else ("s", scalar.UNKNOWN)
        return ("s", scalar.alu(op, alu32, dst[1], src[1], self.safe_dst_range, self.branch_ranges))

    def clobber(self, frames: list, r: list, reg: int, size: int) -> None:
        """A helper's stack access (verifier_helper_stack_clobber): the bytes [ptr, ptr + size)
        of a stack pointer argument lose their spilled registers and zeros (misc data)."""
        ptr = r[reg]
        if ptr is None or ptr[0] != "f" or ptr[1] >= len(frames):
            return
        fi = len(frames) - 1
        regs, stack, ret = frames[ptr[1]] if ptr[1] != fi else (None, self._stack, None)
        slots = {k: (t, v) for k, t, v in stack}
        touched: dict[int, set[int]] = {}         # slot index -> its bytes the helper accesses
        for off in range(max(ptr[2], -isa.MAX_BPF_STACK), min(ptr[2] + size, 0)):
            slot = -off - 1
            touched.setdefault(slot // 8, set()).add(slot % 8)
        for spi, at in touched.items():
            # byte by byte, a zero byte becomes misc and any other byte of a spilled scalar makes
            # the whole slot misc (the spill is gone): what that leaves of the slot, at once
            types, spilled = slots.get(spi, (ZERO_SLOT, None))
            if types[7] == "S" and spilled is not None and spilled[0] == "s" and any(types[b] != "Z" for b in at):
                types, spilled = "MMMMMMMM", None
            else:
                types = "".join("M" if t == "Z" and b in at else t for b, t in enumerate(types))
            slots[spi] = (types, spilled)
        new = tuple(sorted((k, t, v) for k, (t, v) in slots.items()))
        if ptr[1] == fi:
            self._stack = new
        else:
            frames[ptr[1]] = (regs, new, ret)

    def helper(self, pc: int, insn: Insn, r: list) -> None:
        fn = insn.imm
        if fn == isa.BPF_FUNC_tail_call:
            self.record_tail_call(pc, r[2], r[3])
            result = None
        elif fn in (isa.BPF_FUNC_map_lookup_elem, isa.BPF_FUNC_map_update_elem, isa.BPF_FUNC_map_delete_elem):
            arg = r[1]
            name = arg[1] if arg is not None and arg[0] == "m" else None
            if self.map_ptr.get(pc, name) != name:
                name = None
            self.map_ptr[pc] = name
            if fn == isa.BPF_FUNC_map_lookup_elem:
                result = ("vn", arg[1] if arg is not None and arg[0] == "m" else None, pc)
            else:
                result = ("s", scalar.UNKNOWN)
        elif fn == isa.BPF_FUNC_get_smp_processor_id and known_cpu_id(self.profile) is not None:
            result = ("s", scalar.known(known_cpu_id(self.profile)))     # do_refine_retval_range
        else:
            result = ("s", scalar.UNKNOWN)
        r[0] = result
        for reg in range(1, 6):
            r[reg] = None

    def record_tail_call(self, pc: int, r2: object, r3: object) -> None:
        map_name = r2[1] if r2 is not None and r2[0] == "m" else None
        key = None
        if map_name is not None and r3 is not None and r3[0] == "s" and r3[1].is_const and \
                map_name in self.maps and key_in_range(self.profile, r3[1].value, self.maps[map_name].max_entries):
            key = r3[1].value
        if pc in self.tail_calls:
            old_map, old_key = self.tail_calls[pc]
            map_name = old_map if old_map == map_name else None
            key = old_key if old_key == key else None
        # a poisoned map poisons the site: direct needs both (do_misc_fixups)
        self.tail_calls[pc] = (map_name, key if map_name is not None else None)

    def cond(self, pc: int, insn: Insn, head: tuple, r: list, stack: tuple, ret: int,
             target: int) -> list[tuple[int, tuple]]:
        """The successors of a conditional jump; ``head``: the frames before the current one."""
        jmp32 = insn.cls == isa.BPF_JMP32
        op = insn.op
        dst = r[insn.dst]
        src = r[insn.src] if insn.source == isa.BPF_X else None
        imm = _sext_imm(insn.imm)
        ranges = self.profile.verifier_branch_ranges
        # v6.8 compares two scalars: the source register's, or the immediate's (the kernel's fake_reg)
        other = None
        if ranges:
            other = scalar.known(imm) if insn.source == isa.BPF_K else src[1] if src and src[0] == "s" else None
        pred: bool | None = None
        if dst is not None and dst[0] != "s":
            if dst[0] == "v" and insn.source == isa.BPF_K and imm == 0 and op in (scalar.JEQ, scalar.JNE):
                pred = op == scalar.JNE
        elif dst is not None and ranges:
            if other is not None:
                pred = scalar.branch_taken_ranges(dst[1], other, op, jmp32, self.profile.verifier_jeq_tnum)
        elif dst is not None:
            if insn.source == isa.BPF_K:
                pred = scalar.branch_taken(dst[1], imm, op, jmp32, self.profile.verifier_jeq_range)
            elif src is not None and src[0] == "s" and (src[1].subreg_is_const if jmp32 else src[1].is_const):
                pred = scalar.branch_taken(dst[1], src[1].value, op, jmp32, self.profile.verifier_jeq_range)
        if pred is not None:
            self.outcomes.setdefault(pc, set()).add(pred)
            return [(target if pred else pc + 1, head + ((tuple(r), stack, ret),))]
        self.outcomes[pc] = {True, False}
        taken, fall = list(r), list(r)
        if dst is not None and dst[0] == "s" and ranges:
            if other is not None:
                same = insn.source == isa.BPF_X and insn.src == insn.dst
                td, ts, fd, fs = scalar.set_min_max_ranges(dst[1], other, op, jmp32, same)
                taken[insn.dst], fall[insn.dst] = ("s", td), ("s", fd)
                if insn.source == isa.BPF_X:
                    taken[insn.src], fall[insn.src] = ("s", ts), ("s", fs)
        elif dst is not None and dst[0] == "s":
            if insn.source == isa.BPF_K:
                t, f = scalar.set_min_max(dst[1], imm, op, jmp32)
                taken[insn.dst], fall[insn.dst] = ("s", t), ("s", f)
            elif src is not None and src[0] == "s":
                if src[1].subreg_is_const if jmp32 else src[1].is_const:
                    t, f = scalar.set_min_max(dst[1], src[1].value, op, jmp32)
                    taken[insn.dst], fall[insn.dst] = ("s", t), ("s", f)
                elif dst[1].subreg_is_const if jmp32 else dst[1].is_const:
                    t, f = scalar.set_min_max(src[1], dst[1].value, scalar.FLIP[op], jmp32)
                    taken[insn.src], fall[insn.src] = ("s", t), ("s", f)
                elif not jmp32 and op in (scalar.JEQ, scalar.JNE):
                    both = ("s", scalar.combine_equal(src[1], dst[1]))
                    side = taken if op == scalar.JEQ else fall
                    side[insn.src] = side[insn.dst] = both
        elif dst is not None and dst[0] == "vn" and not jmp32 and insn.source == isa.BPF_K and imm == 0 \
                and op in (scalar.JEQ, scalar.JNE):
            # mark_ptr_or_null_regs: every copy of this lookup's result, in every frame
            null, nonnull = ("s", ZERO_SCALAR), ("v", dst[1])
            frames = list(head) + [(tuple(r), stack, ret)]
            is_null = self._resolve_null(frames, dst, null)
            not_null = self._resolve_null(frames, dst, nonnull)
            taken_frames, fall_frames = (is_null, not_null) if op == scalar.JEQ else (not_null, is_null)
            return [(pc + 1, tuple(fall_frames)), (target, tuple(taken_frames))]
        # do_check continues with the fall-through and pushes the jump target
        return [(target, head + ((tuple(taken), stack, ret),)), (pc + 1, head + ((tuple(fall), stack, ret),))]

    @staticmethod
    def _resolve_null(frames: list, which: tuple, value: tuple) -> list:
        out = []
        for regs, stack, ret in frames:
            regs = tuple(value if v == which else v for v in regs)
            stack = tuple((k, t, value if v == which else v) for k, t, v in stack)
            out.append((regs, stack, ret))
        return out


ZERO_SCALAR = scalar.known(0)


def explore(insns: Sequence[Insn], maps: Mapping[str, MapLike], profile: Profile,
            prog_type: str = DEFAULT_PROG_TYPE, budget: int = EXPLORE_BUDGET) -> PathFacts | None:
    """What the kernel's do_check learns of a program that loads (see above); None when the
    exploration would take more than ``budget`` instructions."""
    try:
        return _Explorer(insns, maps, profile, prog_type).run(budget)
    except (IndexError, KeyError, TypeError, ValueError):
        # a program the kernel would refuse in a way the model does not check (a mutated
        # program the checker has not seen yet): no answer rather than a crash of the loader
        return None
