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
import re
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from bpfdiff import isa
from bpfdiff.isa import Insn, InvalidInstruction, Program
from bpfdiff.profiles import Profile
from bpfdiff.scenario import DEFAULT_PROG_TYPE, Scenario

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
    cls = insn.cls
    if not profile.isa_v4:
        if insn.opcode == isa.BPF_ALU64 | isa.BPF_END:
            return f"unknown opcode {insn.opcode:02x}"
        if insn.opcode == isa.BPF_JMP32 | isa.BPF_JA:
            return f"unknown opcode {insn.opcode:02x}"
        if cls == isa.BPF_LDX and insn.mode != isa.BPF_MEM:
            return "BPF_LDX uses reserved fields"
        if insn.is_alu and insn.off and insn.op not in (isa.BPF_END, isa.BPF_NEG):
            return "BPF_MOV uses reserved fields" if insn.op == isa.BPF_MOV else "BPF_ALU uses reserved fields"
    if not profile.atomic_fetch and cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC and insn.imm != isa.BPF_ADD:
        return "BPF_XADD uses reserved fields"
    return None


def alu_refusal(insn: Insn) -> str | None:
    """check_alu_op's refusals of a constant operand (every profile)."""
    if not insn.is_alu or insn.source != isa.BPF_K:
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
    insns = prog.insns
    try:
        isa.check_program(insns)
    except InvalidInstruction as exc:
        raise VerifierError(prog.name, exc.pc, exc.reason) from None
    first: tuple[int, str] | None = None        # the first refusal do_check would report
    pc = 0
    while pc < len(insns):
        insn = insns[pc]
        reason = insn_refusal(insn, profile)
        if reason is not None and (reason.startswith("unknown opcode") or reason.startswith("BPF_LDX")):
            # resolve_pseudo_ldimm64's pass over the whole program comes before do_check
            raise VerifierError(prog.name, pc, reason)
        reason = reason or alu_refusal(insn)
        if reason is not None and first is None:
            first = (pc, reason)
        pc += 2 if insn.is_lddw else 1
    if first is not None:
        raise VerifierError(prog.name, *first)


# -- constants the verifier knows ----------------------------------------------------------------
# adjust_scalar_min_max_vals (6.1): with both operands constant, the tnum of the result is
# exact for these operations; everything else -- div, mod, neg, bswap (check_reg_arg(DST_OP)
# marks the register unknown), movsx -- leaves the register unknown.  (Later kernels also
# track neg; 6.1 does not: a key computed through neg makes an *indirect* tail-call site.)
TRACKED_ALU = frozenset({isa.BPF_ADD, isa.BPF_SUB, isa.BPF_MUL, isa.BPF_AND, isa.BPF_OR, isa.BPF_XOR,
                         isa.BPF_LSH, isa.BPF_RSH, isa.BPF_ARSH})


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
    operand = (insn.imm & mask) if insn.source == isa.BPF_K else src
    if op == isa.BPF_MOV:
        if insn.off or operand is None:
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
    result = {isa.BPF_ADD: a + b, isa.BPF_SUB: a - b, isa.BPF_MUL: a * b, isa.BPF_AND: a & b,
              isa.BPF_OR: a | b, isa.BPF_XOR: a ^ b}[op]
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
    check_isa(prog, profile)
    insns = prog.insns
    name = prog.name
    second_slots = {pc + 1 for pc, insn in enumerate(insns) if insn.is_lddw}
    for pc, insn in enumerate(insns):
        if pc in second_slots:
            continue
        target = isa.jump_target(pc, insn)
        if target in second_slots:
            raise VerifierError(name, pc, f"jump into the middle of ldimm64 insn {target - 1}")
        if isa.BPF_REG_FP in written_registers(insn):
            raise VerifierError(name, pc, "frame pointer is read only")
        if insn.is_lddw and insn.map is not None:
            bpf_map = maps.get(insn.map)
            if bpf_map is None:
                raise VerifierError(name, pc, f"unknown map {insn.map!r}")
            if insn.src == isa.BPF_PSEUDO_MAP_VALUE:
                off = isa.lddw_value(insn, insns[pc + 1]) >> 32
                if bpf_map.kind != "array" or bpf_map.max_entries != 1:
                    raise VerifierError(name, pc, "map_value needs a one-element array")
                if off >= bpf_map.value_size:
                    raise VerifierError(name, pc, f"map_value offset {off} beyond value_size {bpf_map.value_size}")
    if not profile.tail_calls_in_subprogs:
        if any(insn.is_pseudo_call for insn in insns) and any(insn.is_tail_call for insn in insns):
            raise VerifierError(name, None, "tail_calls are not allowed in programs with bpf-to-bpf calls")


def verify(prog: Program, maps: Mapping[str, MapLike], profile: Profile,
           options: JitOptions | None = None, prog_type: str = DEFAULT_PROG_TYPE) -> Xlated:
    """Refuse as the profile's kernel would (VerifierError), else the xlated program.

    ``options`` are the JIT's (``force_indirect`` keeps every tail-call site indirect);
    ``prog_type`` the scenario's (the context the program gets, see :mod:`bpfdiff.xdp`).
    """
    force_indirect = bool(options is not None and options.force_indirect)
    used = tuple((m.name, m.kind, m.key_size, m.value_size, m.max_entries)
                 for m in (maps.get(name) for name in prog.map_names) if m is not None)
    result = _verified(prog, used, profile, force_indirect, prog_type)
    if isinstance(result, VerifierError):
        raise VerifierError(result.prog, result.pc, result.reason)
    # a copy: callers own what they get (the cache keeps the original)
    return replace(result, insns=list(result.insns), orig_pc=list(result.orig_pc), pokes=list(result.pokes),
                   subprogs=[replace(sub) for sub in result.subprogs])


def clear_cache() -> None:
    """Forget the cached answers (for measurements that must see the model run: line coverage)."""
    _verified.cache_clear()


@functools.lru_cache(maxsize=4096)
def _verified(prog: Program, used: tuple[tuple[str, str, int, int, int], ...], profile: Profile,
              force_indirect: bool, prog_type: str) -> Xlated | VerifierError:
    """verify() for the maps the program names, cached: every engine, the oracle's what-if
    re-runs and the corpus tools ask about the same programs again and again."""
    from bpfdiff.jit.bpf_jit_comp import JitOptions
    from bpfdiff.jit.xlate import xlate
    from bpfdiff.scenario import MapDef

    maps = {name: MapDef(name, kind, key_size, value_size, max_entries)
            for name, kind, key_size, value_size, max_entries in used}
    try:
        check_load(prog, maps, profile)
        return xlate(prog, maps, profile, JitOptions(force_indirect=force_indirect), prog_type)
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
