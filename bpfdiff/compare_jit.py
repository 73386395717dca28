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

import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from bpfdiff import isa

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


def _map_pointers(prog: str, side: CodeSide) -> dict[int, str]:
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


def _x86_text(line: object) -> str:
    raw = line.raw  # type: ignore[attr-defined]
    return f"{line.text().strip()}  [{raw.hex(' ')}]"  # type: ignore[attr-defined]


def compare_jited(prog: str, ours: CodeSide, kernel: CodeSide) -> Mismatch | None:
    """The first x86 instruction where the images differ beyond what load addresses explain."""
    from bpfdiff.jit.dump import jited_lines

    a_funcs, b_funcs = ours.functions[prog], kernel.functions[prog]
    if len(a_funcs) != len(b_funcs):
        return Mismatch("jited", "functions", f"{len(a_funcs)} functions", f"{len(b_funcs)} functions",
                        "number of functions")
    a_ptrs, b_ptrs = _map_pointers(prog, ours), _map_pointers(prog, kernel)
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


def _target(line: object, function: Function) -> int:
    raw = line.raw  # type: ignore[attr-defined]
    return function.base + line.offset + 5 + int.from_bytes(raw[1:5], "little", signed=True)  # type: ignore[attr-defined]


def _x86_difference(la: object, lb: object, fa: Function, fb: Function, ours: CodeSide, kernel: CodeSide,
                    a_ptrs: Mapping[int, str], b_ptrs: Mapping[int, str]) -> str | None:
    a, b = la.raw, lb.raw  # type: ignore[attr-defined]
    if la.offset != lb.offset:  # type: ignore[attr-defined]
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
            return None if a == b else "bytes"
        a_what, b_what = ours.describe(a_target), kernel.describe(b_target)
        if a_what is None or b_what is None or a_what != b_what:
            kind = "call" if a[0] == CALL_REL32 else "jump"
            return (f"{kind} target: ours {a_what or f'0x{a_target:x}?'}, "
                    f"kernel {b_what or f'0x{b_target:x}?'}")
        return None
    return None if a == b else "bytes"


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
def our_side(engine: object, scenario: object, prog: str) -> CodeSide:
    """Our loader's code for one program of ``scenario``, loaded alone with all the scenario's maps
    and no events (every prog-array slot empty, as a freshly loaded program sees them).

    ``engine`` is an engine that shows its code (:meth:`bpfdiff.engine.Engine.inspect`: the JIT).
    Raises :class:`bpfdiff.engine.EngineError` when our side refuses the program.
    """
    from dataclasses import replace

    from bpfdiff.helpers import helper_name

    alone = replace(scenario, programs=tuple(p for p in scenario.programs if p.name == prog),  # type: ignore
                    events=(), expect=None)
    map_ids = {m.name: number for number, m in enumerate(scenario.maps, start=1)}  # type: ignore[attr-defined]
    names = {number: name for name, number in map_ids.items()}
    first = next(iter(engine.inspect(alone)))  # type: ignore[attr-defined]
    code = first.programs[prog]
    symbols: dict[int, str | None] = {}

    def symbol(address: int) -> str | None:
        if address not in symbols:
            symbols[address] = engine.symbolize(address)  # type: ignore[attr-defined]
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
        call_target=lambda imm: f"bpf_{helper_name(imm)}",
    )
