"""Fidelity check: our profile's xlated program and JIT image against the real kernel's.

Each side of the comparison (:class:`CodeSide`) is what one loader made of a
scenario's programs: the instructions as ``BPF_OBJ_GET_INFO_BY_FD`` hands them
out (``xlated_prog_insns``) and one machine-code image per function, with
their load addresses.  The two must be identical byte for byte except where
the bytes depend on where things were loaded:

* in the image, the ``imm64`` of a ``movabs`` that loads a map pointer (or a
  pointer into a map's values), the ``rel32`` of a ``call`` (helpers,
  bpf-to-bpf calls), and the ``rel32`` of a ``jmp`` that leaves the image (a
  direct tail call into another program, a retpoline thunk);
* in the xlated program, the ``imm`` of a pseudo map load (the kernel shows
  the map's id) and of a helper call (the kernel shows the function's offset
  from ``__bpf_call_base``).

Every masked field is resolved on both sides and must name the same thing:
the same map (and offset into its values), the same function, the same
program + offset (``target+0xb``: the tail-call entry), the same thunk.  A map
pointer in an image is resolved through the xlated program: the k-th
``movabs`` that is not one of the program's 64-bit constants loads the k-th
pseudo map load's map.

:func:`compare_program` gives the first difference of each kind (xlated and
jited), both sides disassembled (``bpftool`` spellings: AT&T x86 as ``bpfdiff
dump`` prints it, ``print_bpf_insn`` for BPF).
"""

from __future__ import annotations

import argparse
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from bpfdiff import isa
from bpfdiff.scenario import Scenario

if TYPE_CHECKING:
    from bpfdiff.jit.dump import JitedLine

SLOT = struct.Struct("<BBhi")
MOVABS_OPCODES = range(0xB8, 0xC0)       # REX.W + B8+r: movabs $imm64, %reg
CALL_REL32 = 0xE8
JMP_REL32 = 0xE9


@dataclass(frozen=True, slots=True)
class Function:
    """One function's image (main program first, then subprograms) and where it was loaded."""

    base: int
    code: bytes


@dataclass
class CodeSide:
    """What one loader made of a scenario's programs."""

    name: str                                          # "ours", "kernel"
    functions: dict[str, tuple[Function, ...]] = field(default_factory=dict)   # every loaded program
    xlated: dict[str, bytes] = field(default_factory=dict)
    # non-program addresses -> a name, "name+0xoff" inside it (helpers, thunks, kernel text)
    symbol: Callable[[int], str | None] = lambda address: None
    # xlated pseudo map load imm -> map name
    map_of_id: Callable[[int], str | None] = lambda map_id: None
    # xlated helper call imm -> function name
    call_target: Callable[[int], str | None] = lambda imm: None

    def describe(self, address: int) -> str | None:
        """``prog+0xoff`` (``prog/funcN+0xoff`` in a subprogram) or the symbol of an address."""
        for prog, functions in self.functions.items():
            for index, function in enumerate(functions):
                if function.base <= address < function.base + max(len(function.code), 1):
                    label = prog if index == 0 else f"{prog}/func{index}"
                    return f"{label}+0x{address - function.base:x}"
        return self.symbol(address)


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The first difference between the two sides for one program."""

    kind: str            # "xlated" or "jited"
    where: str           # "insn 4", "func 0 +0x2d", "length"
    ours: str            # our side, disassembled
    kernel: str          # the kernel's, disassembled
    reason: str          # what differs: "bytes", "call target bpf_x vs array_map_x", ...

    def format(self, prog: str) -> str:
        return (f"{prog}: {self.kind} differs at {self.where} ({self.reason})\n"
                f"  ours:   {self.ours}\n  kernel: {self.kernel}")


# -- xlated ------------------------------------------------------------------------------------
def _slots(data: bytes) -> list[tuple[int, int, int, int, int]]:
    """(opcode, dst, src, off, imm) per 8-byte slot."""
    return [(op, regs & 0xF, regs >> 4, off, imm) for op, regs, off, imm in SLOT.iter_unpack(data)]


def _bpf_text(data: bytes, pc: int, side: CodeSide) -> str:
    from bpfdiff.disasm import xlated_insn

    insns = isa.decode(data, map_name=lambda map_id: side.map_of_id(map_id) or f"id{map_id}", validate=False)
    if pc >= len(insns):
        return "(end of program)"
    try:
        text = xlated_insn(pc, insns, map_id=lambda name: 0)
    except Exception:  # noqa: BLE001 - a slot the printer does not know is shown raw
        text = "(unknown)"
    insn = insns[pc]
    if insn.opcode == isa.CALL_OPCODE and insn.src == 0:
        text += f" <{side.call_target(insn.imm) or '?'}>"     # what the call's imm names on this side
    return f"{pc}: {text}  [{data[8 * pc:8 * pc + 8].hex()}]"


def compare_xlated(prog: str, ours: CodeSide, kernel: CodeSide) -> Mismatch | None:
    """The first xlated slot where the two differ beyond a masked map id or helper address."""
    a_data, b_data = ours.xlated[prog], kernel.xlated[prog]
    if len(a_data) % 8 or len(b_data) % 8:
        return Mismatch("xlated", "length", f"{len(a_data)} bytes", f"{len(b_data)} bytes", "not whole slots")
    a, b = _slots(a_data), _slots(b_data)
    pc = 0
    while pc < min(len(a), len(b)):
        reason = _xlated_slot_difference(a, b, pc, ours, kernel)
        if reason is not None:
            return Mismatch("xlated", f"insn {pc}", _bpf_text(a_data, pc, ours), _bpf_text(b_data, pc, kernel),
                            reason)
        pc += 2 if a[pc][0] == isa.LDDW_OPCODE else 1
    if len(a) != len(b):
        return Mismatch("xlated", f"insn {pc}", _bpf_text(a_data, pc, ours), _bpf_text(b_data, pc, kernel),
                        f"length: ours {len(a)} slots, kernel {len(b)}")
    return None


def _xlated_slot_difference(a: list, b: list, pc: int, ours: CodeSide, kernel: CodeSide) -> str | None:
    (a_op, a_dst, a_src, a_off, a_imm), (b_op, b_dst, b_src, b_off, b_imm) = a[pc], b[pc]
    if a_op == b_op == isa.CALL_OPCODE and a_src == b_src == isa.BPF_PSEUDO_CALL and a[pc] != b[pc]:
        return f"bpf-to-bpf call: ours off {a_off} imm {a_imm}, kernel off {b_off} imm {b_imm}"
    if (a_op, a_dst, a_src, a_imm) == (b_op, b_dst, b_src, b_imm) and a_off != b_off \
            and a_op & 0x07 in (isa.BPF_JMP, isa.BPF_JMP32):
        return "jump offset: the code it jumps over differs"
    if (a_op, a_dst, a_src, a_off) != (b_op, b_dst, b_src, b_off):
        return "bytes"
    if a_op == isa.LDDW_OPCODE and a_src in (isa.BPF_PSEUDO_MAP_FD, isa.BPF_PSEUDO_MAP_VALUE):
        a_map, b_map = ours.map_of_id(a_imm), kernel.map_of_id(b_imm)
        if a_map is None or b_map is None or a_map != b_map:
            return f"map: ours {a_map or f'id {a_imm}?'}, kernel {b_map or f'id {b_imm}?'}"
        if pc + 1 < min(len(a), len(b)) and a[pc + 1] != b[pc + 1]:
            return "bytes of the second half"
        return None
    if a_imm == b_imm:
        if a_op == isa.LDDW_OPCODE and pc + 1 < min(len(a), len(b)) and a[pc + 1] != b[pc + 1]:
            return "bytes of the second half"
        return None
    if a_op == isa.CALL_OPCODE and a_src == 0:
        a_fn, b_fn = ours.call_target(a_imm), kernel.call_target(b_imm)
        if a_fn is None or b_fn is None or a_fn != b_fn:
            return f"call target: ours {a_fn or f'imm {a_imm}?'}, kernel {b_fn or f'imm {b_imm}?'}"
        return None
    return "bytes"


# -- jited -------------------------------------------------------------------------------------
def _constants(xlated: bytes) -> set[int]:
    """The 64-bit constants of a program's plain ``lddw`` instructions (u64)."""
    slots = _slots(xlated)
    values = set()
    for pc, (op, _dst, src, _off, imm) in enumerate(slots):
        if op == isa.LDDW_OPCODE and src == 0 and pc + 1 < len(slots):
            values.add((imm & 0xFFFF_FFFF) | ((slots[pc + 1][4] & 0xFFFF_FFFF) << 32))
    return values


def _map_loads(xlated: bytes, side: CodeSide) -> list[str]:
    """What each pseudo map load of the xlated program loads, in order: ``map:NAME`` or
    ``map_value:NAME+0xOFF``."""
    slots = _slots(xlated)
    loads = []
    for pc, (op, _dst, src, _off, imm) in enumerate(slots):
        if op == isa.LDDW_OPCODE and src in (isa.BPF_PSEUDO_MAP_FD, isa.BPF_PSEUDO_MAP_VALUE):
            name = side.map_of_id(imm) or f"id{imm}?"
            offset = slots[pc + 1][4] if pc + 1 < len(slots) else 0
            loads.append(f"map:{name}" if src == isa.BPF_PSEUDO_MAP_FD else f"map_value:{name}+0x{offset:x}")
    return loads


def _movabs_imm(raw: bytes) -> int | None:
    if len(raw) == 10 and raw[0] in (0x48, 0x49) and raw[1] in MOVABS_OPCODES:
        return int.from_bytes(raw[2:], "little")
    return None


def map_pointers(prog: str, side: CodeSide) -> dict[int, str]:
    """Pointer value -> what it points at, for the map pointers of one program's images.

    The images load map pointers in the order of the xlated pseudo map loads
    (functions are laid out in xlated order); a ``movabs`` whose value is one
    of the program's 64-bit constants is not a map pointer.
    """
    from bpfdiff.jit.dump import jited_lines

    constants = _constants(side.xlated.get(prog, b""))
    loads = _map_loads(side.xlated.get(prog, b""), side)
    pointers: list[int] = []
    for function in side.functions.get(prog, ()):
        for line in jited_lines(function.code):
            value = _movabs_imm(line.raw)
            if value is not None and value not in constants:
                pointers.append(value)
    resolved: dict[int, str] = {}
    for value, load in zip(pointers, loads, strict=False):
        # one pointer, one map: a pointer loaded twice must stand for the same map both times
        resolved[value] = load if resolved.get(value, load) == load else f"{resolved[value]} or {load}?"
    return resolved


def _x86_text(line: JitedLine) -> str:
    return f"{line.text().strip()}  [{line.raw.hex(' ')}]"


def compare_jited(prog: str, ours: CodeSide, kernel: CodeSide) -> Mismatch | None:
    """The first x86 instruction where the images differ beyond what load addresses explain."""
    from bpfdiff.jit.dump import jited_lines

    a_funcs, b_funcs = ours.functions[prog], kernel.functions[prog]
    if len(a_funcs) != len(b_funcs):
        return Mismatch("jited", "functions", f"{len(a_funcs)} functions", f"{len(b_funcs)} functions",
                        "number of functions")
    a_ptrs, b_ptrs = map_pointers(prog, ours), map_pointers(prog, kernel)
    for index, (fa, fb) in enumerate(zip(a_funcs, b_funcs, strict=True)):
        a_lines, b_lines = jited_lines(fa.code), jited_lines(fb.code)
        for la, lb in zip(a_lines, b_lines, strict=False):
            reason = _x86_difference(la, lb, fa, fb, ours, kernel, a_ptrs, b_ptrs)
            if reason is not None:
                return Mismatch("jited", f"func {index} +0x{la.offset:x}", _x86_text(la), _x86_text(lb), reason)
        if len(a_lines) != len(b_lines) or len(fa.code) != len(fb.code):
            k = min(len(a_lines), len(b_lines))
            a_text = _x86_text(a_lines[k]) if k < len(a_lines) else "(end of image)"
            b_text = _x86_text(b_lines[k]) if k < len(b_lines) else "(end of image)"
            offset = a_lines[k].offset if k < len(a_lines) else len(fa.code)
            return Mismatch("jited", f"func {index} +0x{offset:x}", a_text, b_text,
                            f"length: ours {len(fa.code)} bytes, kernel {len(fb.code)}")
    return None


def _target(line: JitedLine, function: Function) -> int:
    return function.base + line.offset + 5 + int.from_bytes(line.raw[1:5], "little", signed=True)


def _x86_difference(la: JitedLine, lb: JitedLine, fa: Function, fb: Function, ours: CodeSide, kernel: CodeSide,
                    a_ptrs: Mapping[int, str], b_ptrs: Mapping[int, str]) -> str | None:
    a, b = la.raw, lb.raw
    if la.offset != lb.offset:
        return "instruction boundaries"
    a_imm = _movabs_imm(a)
    if a_imm is not None and a_imm in a_ptrs:
        b_imm = _movabs_imm(b)
        if b_imm is None or a[:2] != b[:2]:
            return "bytes"
        a_what, b_what = a_ptrs[a_imm], b_ptrs.get(b_imm)
        if a_what != b_what:
            return f"map pointer: ours {a_what}, kernel {b_what or f'0x{b_imm:x}?'}"
        return None
    if len(a) == 5 and a[0] in (CALL_REL32, JMP_REL32) and b[:1] == a[:1] and len(b) == 5:
        a_target, b_target = _target(la, fa), _target(lb, fb)
        inside = fa.base <= a_target < fa.base + len(fa.code)
        if a[0] == JMP_REL32 and inside:
            # a jump within the image: position-independent, the bytes must match
            return None if a == b else "jump displacement: the code it jumps over differs"
        a_what, b_what = ours.describe(a_target), kernel.describe(b_target)
        if a_what is None or b_what is None or a_what != b_what:
            kind = "call" if a[0] == CALL_REL32 else "jump"
            return (f"{kind} target: ours {a_what or f'0x{a_target:x}?'}, "
                    f"kernel {b_what or f'0x{b_target:x}?'}")
        return None
    if a != b and _same_branch(a, b):
        return "jump displacement: the code it jumps over differs"
    return None if a == b else "bytes"


def _same_branch(a: bytes, b: bytes) -> bool:
    """Two relative jumps of the same kind and width (jcc/jmp rel8 or rel32), displacements aside."""
    if len(a) != len(b):
        return False
    if len(a) == 2 and (0x70 <= a[0] <= 0x7F or a[0] == 0xEB):
        return a[0] == b[0]
    if len(a) == 6 and a[0] == 0x0F and 0x80 <= a[1] <= 0x8F:
        return a[:2] == b[:2]
    return False


@dataclass(frozen=True, slots=True)
class ProgramComparison:
    prog: str
    accepted: bool                    # the kernel loaded it
    xlated: Mismatch | None = None
    jited: Mismatch | None = None
    error: str | None = None          # why one side has nothing to compare (refused, not loaded)

    @property
    def xlated_identical(self) -> bool:
        return self.accepted and self.error is None and self.xlated is None

    @property
    def jited_identical(self) -> bool:
        return self.accepted and self.error is None and self.jited is None


def compare_program(prog: str, ours: CodeSide, kernel: CodeSide) -> ProgramComparison:
    missing = [side.name for side in (ours, kernel) if prog not in side.functions or prog not in side.xlated]
    if missing:
        return ProgramComparison(prog, prog in kernel.functions, error=f"not loaded by {', '.join(missing)}")
    return ProgramComparison(prog, True, compare_xlated(prog, ours, kernel), compare_jited(prog, ours, kernel))


def summary_lines(results: Sequence[ProgramComparison]) -> list[str]:
    """The three closing lines: accepted N/M, xlated identical N/M, jited identical N/M (of the accepted)."""
    total = len(results)
    accepted = sum(1 for r in results if r.accepted)
    xlated = sum(1 for r in results if r.xlated_identical)
    jited = sum(1 for r in results if r.jited_identical)

    def ratio(n: int, m: int) -> str:
        return f"{n}/{m} ({100.0 * n / m:.1f}%)" if m else f"{n}/{m} (-)"

    return [f"accepted {ratio(accepted, total)}", f"xlated identical {ratio(xlated, accepted)}",
            f"jited identical {ratio(jited, accepted)}"]


# -- our side ------------------------------------------------------------------------------------
class LoadedProgram(Protocol):
    """What the guest reports of one program it loaded (``bpfdiff.kernel.guest.LoadedProg``)."""

    name: str
    error: str | None
    xlated: bytes
    jited: bytes
    func_lens: tuple[int, ...]
    ksyms: tuple[int, ...]


def our_side(engine: Any, scenario: Scenario, prog: str) -> CodeSide:
    """Our loader's code for one program of ``scenario``, loaded alone with all the scenario's maps
    and no events (every prog-array slot empty, as a freshly loaded program sees them).

    ``engine`` is an engine that shows its code (:meth:`bpfdiff.engine.Engine.inspect`: the JIT).
    Raises :class:`bpfdiff.engine.EngineError` when our side refuses the program.
    """
    from bpfdiff.helpers import kernel_symbol

    alone = replace(scenario, programs=tuple(p for p in scenario.programs if p.name == prog), events=(),
                    expect=None)
    map_ids = {m.name: number for number, m in enumerate(scenario.maps, start=1)}
    names = {number: name for name, number in map_ids.items()}
    first = next(iter(engine.inspect(alone)))
    code = first.programs[prog]
    symbols: dict[int, str | None] = {}

    def symbol(address: int) -> str | None:
        if address not in symbols:
            symbols[address] = engine.symbolize(address)
        return symbols[address]

    # resolve now what the comparison may ask about later: the engine moves on to other programs
    from bpfdiff.jit.dump import jited_lines

    for image in code.images:
        for line in jited_lines(image.code):
            if len(line.raw) == 5 and line.raw[0] in (CALL_REL32, JMP_REL32):
                symbol(image.base + line.offset + 5 + int.from_bytes(line.raw[1:5], "little", signed=True))
            value = _movabs_imm(line.raw)
            if value is not None:
                symbol(value)
    return CodeSide(
        "ours",
        functions={prog: tuple(Function(image.base, image.code) for image in code.images)},
        xlated={prog: isa.encode(code.xlated, map_ids)},
        symbol=lambda address: symbols.get(address),
        map_of_id=names.get,
        # our xlated program keeps the helper's id in a call: its kernel function's name
        call_target=kernel_symbol,
    )


# -- the kernel's side -----------------------------------------------------------------------------
class SymbolTable:
    """Kernel text symbols, from the guest's ``/proc/kallsyms`` (addresses as the running kernel has
    them, KASLR included; Debian's ``boot/System.map`` is a one-line stub pointing at the -dbg package)."""

    TEXT_TYPES = frozenset("TtWw")

    def __init__(self, entries: Sequence[tuple[int, str]]) -> None:
        self.entries = sorted(entries)
        self.addresses = [address for address, _ in self.entries]
        self.by_name = {name: address for address, name in self.entries}

    @classmethod
    def parse(cls, text: str) -> SymbolTable:
        entries = []
        for line in text.splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[1] in cls.TEXT_TYPES:
                try:
                    entries.append((int(parts[0], 16), parts[2]))
                except ValueError:
                    continue
        return cls(entries)

    def describe(self, address: int) -> str | None:
        """``name`` or ``name+0xoff`` of the text symbol at or below ``address``."""
        import bisect

        index = bisect.bisect_right(self.addresses, address) - 1
        if index < 0:
            return None
        start, name = self.entries[index]
        return name if address == start else f"{name}+0x{address - start:x}"

    def call_target(self, imm: int) -> str | None:
        """What an xlated helper call's ``imm`` names: the function at ``__bpf_call_base + imm``."""
        base = self.by_name.get("__bpf_call_base")
        return None if base is None else self.describe(base + imm)


def map_ids_by_creation(scenario: Scenario, xlated: Mapping[str, bytes]) -> dict[int, str]:
    """Map id -> map name for the maps the kernel's xlated programs load.

    The kernel shows a pseudo map load's map by its id.  Ids come from
    ``idr_alloc_cyclic``: maps created one after the other get increasing
    ids, and the agent creates a scenario's maps in declaration order.  So
    the ids seen, sorted, belong to the maps the loaded programs reference,
    in declaration order -- when as many ids as maps are seen; otherwise
    (a load the verifier removed) the ids stay unresolved.
    """
    from bpfdiff.isa import BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE, LDDW_OPCODE

    ids = sorted({imm for data in xlated.values() for op, _dst, src, _off, imm in _slots(data)
                  if op == LDDW_OPCODE and src in (BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE)})
    order = [m.name for m in scenario.maps]
    used = {insn.map for p in scenario.programs if p.name in xlated for insn in p.insns if insn.map is not None}
    names = [name for name in order if name in used]
    return dict(zip(ids, names, strict=True)) if len(ids) == len(names) else {}


def kernel_side(scenario: Scenario, loaded: Sequence[LoadedProgram], symbols: SymbolTable) -> CodeSide:
    """The kernel's code for the programs it accepted (``Guest.load_programs``)."""
    functions: dict[str, tuple[Function, ...]] = {}
    xlated: dict[str, bytes] = {}
    for prog in loaded:
        if prog.error is not None:
            continue
        lens = list(prog.func_lens) or [len(prog.jited)]
        bases = list(prog.ksyms)
        offset, funcs = 0, []
        for index, length in enumerate(lens):
            funcs.append(Function(bases[index] if index < len(bases) else 0, prog.jited[offset:offset + length]))
            offset += length
        functions[prog.name] = tuple(funcs)
        xlated[prog.name] = prog.xlated
    ids = map_ids_by_creation(scenario, xlated)
    return CodeSide("kernel", functions, xlated, symbol=symbols.describe, map_of_id=ids.get,
                    call_target=symbols.call_target)


def cause(mismatch: Mismatch) -> str:
    """A mismatch without its numbers: what tallies of causes count."""
    import re

    def shape(text: str) -> str:
        text = re.sub(r"\s+\[[0-9a-f ]+\]$", "", text.strip())         # raw bytes
        text = re.sub(r"^[0-9a-f]+:\s*", "", text)                       # offset / pc
        if mismatch.kind == "xlated":
            return text.split(")")[0] + ")" if text.startswith("(") else text[:20]
        return text.split()[0] if text.split() else text

    reason = re.sub(r"0x[0-9a-f]+|\d+", "N", mismatch.reason)
    return f"{mismatch.kind}: {reason}: ours {shape(mismatch.ours)} / kernel {shape(mismatch.kernel)}"


def refusal_cause(error: str) -> str:
    """A refusal message without its numbers."""
    import re

    return re.sub(r"0x[0-9a-f]+|\b\d+\b", "N", error.removeprefix("kernel refused: "))[:100]


def as_loaded(scenario: Scenario) -> Scenario:
    """The scenario as compare-jit loads it on both sides: no events (every slot empty at load),
    and as XDP programs, the one program type the kernel engines load (a ``raw`` scenario's R1 is
    our engines' convention only)."""
    from bpfdiff.scenario import PROG_XDP

    return replace(scenario, events=(), expect=None, prog_type=PROG_XDP)


def compare_scenarios(scenarios: Sequence[tuple[str, Scenario]], profile: str, guest: Any, symbols: SymbolTable,
                      report: Callable[[str], None]) -> list[ProgramComparison]:
    """Every program of every scenario, ours against the kernel's (freshly loaded, slots empty)."""
    from bpfdiff.engine import EngineError, make_engine

    results: list[ProgramComparison] = []
    engine = make_engine("jit", profile=profile)
    try:
        for label, scenario in scenarios:
            bare = as_loaded(scenario)
            loaded = guest.load_programs(bare, jit=True)
            kernel = kernel_side(bare, loaded, symbols)
            refused = {p.name: p.error for p in loaded if p.error is not None}
            for prog in bare.programs:
                if prog.name in refused:
                    results.append(ProgramComparison(prog.name, False, error=f"kernel refused: {refused[prog.name]}"))
                    continue
                try:
                    ours = our_side(engine, bare, prog.name)
                except EngineError as exc:
                    result = ProgramComparison(prog.name, prog.name in kernel.functions, error=f"ours refused: {exc}")
                else:
                    result = compare_program(prog.name, ours, kernel)
                results.append(result)
                for mismatch in (result.xlated, result.jited):
                    if mismatch is not None:
                        report(mismatch.format(f"{label}:{prog.name}"))
                if result.error is not None and result.accepted:
                    report(f"{label}:{prog.name}: {result.error}")
    finally:
        engine.close()
    return results


# -- `bpfdiff kernel compare-jit` ------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bpfdiff kernel compare-jit``."""
    parser.add_argument("files", nargs="*", metavar="FILE", help="scenarios, .data files or atheris artifacts")
    parser.add_argument("--generated", type=int, metavar="N", help="compare the programs of N generated scenarios")
    parser.add_argument("--seed", type=int, default=0, help="first generator seed for --generated (default 0)")
    parser.add_argument("--profile", help="our profile (default: each file's meta, else linux-6.1)")
    parser.add_argument("--kernel", metavar="NAME|PATH", help="the real kernel (default: the profile's)")
    parser.add_argument("--causes", type=int, default=10, metavar="K",
                        help="show the K most common causes of mismatches (default 10)")


def scenarios_of(args: argparse.Namespace) -> tuple[str, list[tuple[str, Scenario]]]:
    """(profile, [(label, scenario)]) from the files or the generator."""
    from bpfdiff.inputs import InputError
    from bpfdiff.profiles import DEFAULT_PROFILE
    from bpfdiff.settings import load_finding, parse_profile

    if bool(args.files) == (args.generated is not None):
        raise InputError("compare-jit: give FILE... or --generated N (one of them)")
    if args.generated is not None:
        from bpfdiff.fuzz.generate import scenario_from_seed

        profile = parse_profile(args.profile or DEFAULT_PROFILE, "--profile")
        return profile, [(f"seed {args.seed + i}", scenario_from_seed(args.seed + i, profile))
                         for i in range(args.generated)]
    loaded = [(str(path), *load_finding(path, profile=args.profile)) for path in args.files]
    profiles = {settings.profile for _, _, settings in loaded}
    if len(profiles) > 1:
        raise InputError(f"compare-jit: the files are of different profiles ({', '.join(sorted(profiles))}): "
                         "give --profile")
    return profiles.pop(), [(label, scenario) for label, scenario, _ in loaded]


def main(args: argparse.Namespace) -> int:
    """Compare, print each mismatch, the most common causes, and last the three numbers."""
    from collections import Counter

    from bpfdiff.kernel.guest import Guest
    from bpfdiff.kernel.image import profile_kernel

    profile, scenarios = scenarios_of(args)
    guest = Guest.start(args.kernel or profile_kernel(profile))
    try:
        symbols = SymbolTable.parse(guest.read_file("/proc/kallsyms").decode(errors="replace"))
        results = compare_scenarios(scenarios, profile, guest, symbols, print)
    finally:
        guest.close()
    causes = Counter(cause(m) for r in results for m in (r.xlated, r.jited) if m is not None)
    causes.update(r.error.split(":")[0] for r in results if r.error is not None and r.accepted)
    refusals = Counter(refusal_cause(r.error) for r in results if not r.accepted and r.error is not None)
    for title, tally in (("refusals by the kernel", refusals), ("mismatches", causes)):
        if tally:
            print(f"most common {title} (of {sum(tally.values())}):")
            for text, count in tally.most_common(args.causes):
                print(f"  {count:5d}  {text}")
    for line in summary_lines(results):
        print(line)
    return 0
