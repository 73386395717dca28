"""The verifier's rewrites that shape JIT output (``bpftool prog dump xlated``).

Models, from kernel/bpf/verifier.c, only what changes what the x86-64 JIT sees
for a privileged (CAP_BPF) program with the JIT on and no constant blinding:

* **subprograms** -- function starts are the targets of pseudo calls; each
  becomes its own image (``jit_subprogs``).  The seed-era kernel (profile
  ``tail_calls_in_subprogs`` false) refuses tail calls mixed with bpf-to-bpf
  calls.
* **stack depth** per function -- the deepest ``r10``-relative access (the
  verifier's ``update_stack_depth``), from a small forward dataflow that follows
  ``r10`` through register copies and constant adds.  Whenever a frame pointer
  escapes what the dataflow can follow (stored to memory, passed to a
  bpf-to-bpf call, offset by a non-constant) the function gets the full
  ``MAX_BPF_STACK``: too deep is only a different ``sub rsp``, too shallow
  would let the program overwrite the saved registers.  The seed-era rule
  "a program that tail calls gets ``MAX_BPF_STACK``" applies when the profile
  cannot mix tail calls and subprograms (``!allow_tail_call_in_subprogs``).
* ``tail_call_reachable`` -- a function that tail calls, or calls (transitively)
  one that does (``check_max_stack_depth``).
* ``opt_remove_nops`` -- ``ja +0`` instructions are deleted.
* ``convert_ctx_accesses`` -- for an XDP program, every load from the context
  (``struct xdp_md``) becomes the loads of that field from the kernel's
  ``struct xdp_buff`` and what hangs off it (``xdp_convert_ctx_access``, the
  profile's :class:`~bpfdiff.profiles.XdpLayout`); see :func:`convert_ctx_accesses`.
* ``do_misc_fixups``:
  - ``call bpf_tail_call`` becomes the internal ``BPF_JMP | BPF_TAIL_CALL`` with
    ``imm = poke index + 1`` when the site is *direct* -- the same prog array in
    R2 and the same constant key in R3 on every path reaching it
    (``record_func_map`` / ``record_func_key``; the same dataflow, with
    ``jeq``/``jne`` against a constant refining the register) -- else ``imm = 0``.
    "In range" is ``key < max_entries`` since v6.0-rc4; before, ``tnum_in(tnum_range(0,
    max_entries - 1), key)`` also passed keys up to the next power of two minus one
    (profile field ``verifier_tail_call_key_range``);
  - division and modulo by a register get the zero guards ``chk_and_div`` /
    ``chk_and_mod`` (32- and 64-bit forms), signed ones today's
    ``chk_and_sdiv`` / ``chk_and_smod`` (which also make ``INT_MIN / -1``
    impossible, using ``BPF_REG_AX``), and ``sdiv``/``smod`` by the constant -1
    become ``neg`` / ``mov 0``;
  - pseudo map loads keep their map *name*: the JIT resolves the address
    (``JitEnv.map_addr``), like the kernel's rewrite of the fd into a pointer.

* ``map_gen_lookup`` -- ``map_lookup_elem`` on an array or hash map known on
  every path is inlined (``array_map_gen_lookup``, ``htab_map_gen_lookup``);
* ``opt_hard_wire_dead_code_branches`` / ``opt_remove_dead_code`` -- a
  conditional jump whose outcome the constants decide on every path becomes
  ``ja`` (or ``ja +0``, then removed), unreached instructions are removed;
* ``opt_subreg_zext_lo32_rnd_hi32`` -- ``w0 = w0`` after a 32-bit cmpxchg;
* ``bpf_get_smp_processor_id`` inlined (v6.10+, profile ``inline_smp_processor_id``):
  ``w0 = &cpu_number; r0 = &(void __percpu *)(r0); w0 = *(u32 *)(r0 +0)``.

Constants follow the kernel's rule (:func:`bpfdiff.verifier.track_const_alu`,
:func:`bpfdiff.verifier.branch_taken`) but with states joined where the
kernel explores paths apart, and without ranges or spilled registers: a site
the kernel makes direct may come out indirect here, a branch it removes may
stay -- never the reverse; both behave the same.

Jumps are re-targeted across every insertion and removal the way
``bpf_adj_branches`` does: a jump to a patched instruction lands on the first
instruction of its patch.  :attr:`Xlated.orig_pc` maps every xlated slot back to
the pc of the program as loaded (what faults and traces report).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from bpfdiff import isa, xdp
from bpfdiff.helpers import known_cpu_id
from bpfdiff.isa import Insn, Program
from bpfdiff.profiles import PerCpuInline, Profile, XdpLayout
from bpfdiff.scenario import DEFAULT_PROG_TYPE, PROG_XDP, MapDef
from bpfdiff.verifier import (
    VerifierError,
    branch_taken,
    explore,
    key_in_range,
    reach_tail_calls,
    subprog_starts,
    track_const_alu,
)

if TYPE_CHECKING:
    from bpfdiff.jit.bpf_jit_comp import JitOptions

U64 = (1 << 64) - 1
U32 = (1 << 32) - 1
AX = isa.BPF_REG_AX


@dataclass(frozen=True, slots=True)
class PokeSpec:
    """A direct tail-call site: ``struct bpf_jit_poke_descriptor`` before the JIT fills in addresses."""

    map: str
    key: int
    insn_idx: int       # xlated pc of the BPF_TAIL_CALL instruction


@dataclass(slots=True)
class SubprogInfo:
    start: int          # xlated pc of the first instruction
    end: int            # one past the last
    stack_depth: int
    has_tail_call: bool
    tail_call_reachable: bool


@dataclass(slots=True)
class Xlated:
    insns: list[Insn]
    orig_pc: list[int]           # xlated slot -> pc in the program as loaded
    pokes: list[PokeSpec]
    subprogs: list[SubprogInfo]

    def copy(self) -> Xlated:
        """A copy whose lists and subprogram records the caller may change (the verifier's cache
        keeps the original)."""
        return Xlated(list(self.insns), list(self.orig_pc), list(self.pokes),
                      [SubprogInfo(sub.start, sub.end, sub.stack_depth, sub.has_tail_call, sub.tail_call_reachable)
                       for sub in self.subprogs])

    def dump_insns(self) -> list[Insn]:
        """The instructions as ``BPF_OBJ_GET_INFO_BY_FD`` hands them out (``bpf_insn_prepare_dump``).

        The internal tail-call opcode goes back to ``call bpf_tail_call#12``;
        pseudo map loads keep their map name (encode with the map ids).  A
        bpf-to-bpf call shows what jit_subprogs' last step leaves once the
        functions are JITed: ``off`` the relative offset the call had
        (``call_imm``, in xlated slots), ``imm`` the index of the function it
        calls (``find_subprog``, 0 = the main program).  :attr:`insns` keeps the
        relative ``imm`` the emitter resolves its targets from.
        """
        tail_call = Insn(isa.CALL_OPCODE, 0, 0, 0, isa.BPF_FUNC_tail_call)
        index = {sub.start: k for k, sub in enumerate(self.subprogs)}
        out = []
        for pc, insn in enumerate(self.insns):
            if insn.opcode == isa.TAIL_CALL_OPCODE:
                insn = tail_call
            elif insn.is_pseudo_call:
                insn = replace(insn, off=insn.imm, imm=index[pc + 1 + insn.imm])
            out.append(insn)
        return out

    def format(self, map_id: Callable[[str], int] | None = None,
               helper_name: Callable[[int], str] | None = None) -> str:
        """``bpftool prog dump xlated`` text of the rewritten program."""
        from bpfdiff.disasm import format_xlated
        return format_xlated(self.dump_insns(), map_id=map_id, helper_name=helper_name, jited=True)


# -- small dataflow: what the verifier knows about R0-R10 ------------------------------------
# A value is None (unknown), ("c", u64) a constant, ("m", name) a map pointer, ("f", off) r10 + off.
Value = tuple | None
State = tuple
ESCAPE = "escape"        # a frame pointer went where the dataflow cannot follow it


def _sext32(v: int) -> int:
    v &= U32
    return v - (1 << 32) if v & 0x80000000 else v


def _is_fp(value: Value) -> bool:
    return value is not None and value[0] == "f"


class FunctionFlow:
    """Forward dataflow over one function: register values, stack depth, tail-call (map, key)."""

    def __init__(self, insns: Sequence[Insn], start: int, end: int, maps: Mapping[str, MapDef],
                 profile: Profile, args: State = (None,) * 5) -> None:
        self.insns, self.start, self.end, self.maps = insns, start, end, maps
        self.profile = profile
        self.args = args                   # R1-R5 at entry: what every call site passes
        self.depth = 0
        self.escaped = False
        self.tail_calls: dict[int, tuple[str | None, int | None]] = {}
        self.lookups: dict[int, str | None] = {}   # map_lookup_elem pc -> its map on every path
        self.calls: set[int] = set()       # pcs of pseudo calls

    def access(self, base: Value, off: int) -> None:
        if base is not None and base[0] == "f":
            slot = base[1] + off
            if slot < 0:
                self.depth = max(self.depth, -slot)

    def run(self) -> None:
        entry: State = (None,) + tuple(self.args) + (None,) * 4 + (("f", 0),)
        states: dict[int, State] = {self.start: entry}
        self.states = states          # its keys: the instructions the verifier sees ("aux->seen")
        work = [self.start]
        start, end, insns = self.start, self.end, self.insns
        step, alu, join = self.step, self.alu, self.join
        while work:
            pc = work.pop()
            regs = states[pc]
            while True:
                insn = insns[pc]
                cls = insn.cls
                if cls == isa.BPF_ALU or cls == isa.BPF_ALU64:
                    # most instructions: one successor, one register changed (step() does the same)
                    r = list(regs)
                    r[insn.dst] = alu(insn, r)
                    succ, regs = pc + 1, tuple(r)
                else:
                    succs = step(pc, regs)
                    if len(succs) != 1:
                        for succ, out in succs:
                            if not start <= succ < end:
                                continue     # a jump out of the function: check_subprogs reports it
                            old = states.get(succ)
                            new = out if old is None else join(old, out)
                            if new != old:
                                states[succ] = new
                                work.append(succ)
                        break
                    succ, regs = succs[0]
                # one successor: when its state changes it is the next one popped, so it is
                # followed here at once (the same order of visits, without the work list)
                if not start <= succ < end:
                    break
                old = states.get(succ)
                if old is not None:
                    regs = join(old, regs)
                    if regs == old:
                        break
                states[succ] = regs
                pc = succ

    def join(self, a: State, b: State) -> State:
        """Merge two paths; a frame pointer known on one path only can no longer be followed."""
        if a == b:
            return a
        merged = []
        for x, y in zip(a, b, strict=True):
            if x == y:
                merged.append(x)
                continue
            if _is_fp(x) or _is_fp(y):
                self.escaped = True
            merged.append(None)
        return tuple(merged)

    def step(self, pc: int, regs: State) -> list[tuple[int, State]]:
        insn = self.insns[pc]
        r = list(regs)
        opcode, cls = insn.opcode, insn.cls
        nxt = pc + 1
        if opcode == isa.LDDW_OPCODE:
            second = self.insns[pc + 1]
            if insn.src == isa.BPF_PSEUDO_MAP_FD:
                r[insn.dst] = ("m", insn.map)
            elif insn.src == 0:
                r[insn.dst] = ("c", isa.lddw_value(insn, second))
            else:
                r[insn.dst] = None
            return [(pc + 2, tuple(r))]
        if cls == isa.BPF_ALU or cls == isa.BPF_ALU64:
            r[insn.dst] = self.alu(insn, r)
            return [(nxt, tuple(r))]
        if cls == isa.BPF_LDX:
            self.access(r[insn.src], insn.off)
            r[insn.dst] = None
            return [(nxt, tuple(r))]
        if cls == isa.BPF_ST or cls == isa.BPF_STX:
            self.access(r[insn.dst], insn.off)
            if cls == isa.BPF_STX and r[insn.src] is not None and r[insn.src][0] == "f":
                self.escaped = True          # a stack pointer stored to memory
            if cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC and insn.imm & isa.BPF_FETCH:
                r[0 if insn.imm == isa.BPF_CMPXCHG else insn.src] = None
            return [(nxt, tuple(r))]
        if opcode == isa.CALL_OPCODE:
            args = r[1:6]
            if insn.src == isa.BPF_PSEUDO_CALL:
                self.calls.add(pc)
                if any(a is not None and a[0] == "f" for a in args):
                    self.escaped = True      # the callee may use the caller's stack
            else:
                for a in args:
                    self.access(a, 0)
                if insn.src == 0 and insn.imm == isa.BPF_FUNC_tail_call:
                    self.record_tail_call(pc, r[2], r[3])
                elif insn.imm in (isa.BPF_FUNC_map_lookup_elem, isa.BPF_FUNC_map_update_elem,
                                  isa.BPF_FUNC_map_delete_elem):
                    # record_func_map: one map on every path, or "poisoned" (None)
                    map_name = r[1][1] if r[1] is not None and r[1][0] == "m" else None
                    if self.lookups.get(pc, map_name) != map_name:
                        map_name = None
                    self.lookups[pc] = map_name
            for reg in range(6):
                r[reg] = None
            if insn.src == 0 and insn.imm == isa.BPF_FUNC_get_smp_processor_id:
                cpu = known_cpu_id(self.profile)
                r[0] = None if cpu is None else ("c", cpu)
            return [(nxt, tuple(r))]
        if opcode == isa.EXIT_OPCODE:
            return []
        if cls == isa.BPF_JMP or cls == isa.BPF_JMP32:
            op = insn.op
            target = isa.jump_target(pc, insn)
            if op == isa.BPF_JA:
                return [(target, tuple(r))]
            dst = r[insn.dst]
            src = r[insn.src] if insn.source == isa.BPF_X else None
            outcome = branch_taken(insn, dst[1] if dst is not None and dst[0] == "c" else None,
                                   src[1] if src is not None and src[0] == "c" else None)
            if outcome is not None:           # is_branch_taken: only one side is explored
                return [(target if outcome else nxt, tuple(r))]
            taken, fall = list(r), list(r)
            if cls == isa.BPF_JMP and insn.source == isa.BPF_K:
                known = ("c", insn.imm & U64)
                if op == isa.BPF_JEQ:
                    taken[insn.dst] = known
                elif op == isa.BPF_JNE:
                    fall[insn.dst] = known
            return [(target, tuple(taken)), (nxt, tuple(fall))]
        return [(nxt, tuple(r))]

    def alu(self, insn: Insn, r: list) -> Value:
        is64 = insn.cls == isa.BPF_ALU64
        dst = r[insn.dst]
        op = insn.op
        if op == isa.BPF_MOV and insn.source == isa.BPF_K and not insn.off:
            # a move of an immediate (the commonest ALU instruction): track_const_alu's answer
            return ("c", insn.imm & (U64 if is64 else U32))
        operand = r[insn.src] if insn.source == isa.BPF_X else ("c", insn.imm)
        if op == isa.BPF_MOV and insn.source == isa.BPF_X and is64 and not insn.off:
            return operand                   # a copy: frame and map pointers too
        if dst is not None and dst[0] == "f" and op != isa.BPF_MOV:
            if is64 and op in (isa.BPF_ADD, isa.BPF_SUB) and operand is not None and operand[0] == "c":
                delta = insn.imm if insn.source == isa.BPF_K else operand[1] - ((operand[1] >> 63) << 64)
                return ("f", dst[1] + delta if op == isa.BPF_ADD else dst[1] - delta)
            self.escaped = True              # pointer arithmetic the dataflow cannot follow
            return None
        if op != isa.BPF_MOV and (dst is None or dst[0] != "c"):
            return None                      # track_const_alu: an unknown operand, an unknown result
        known = track_const_alu(insn, dst[1] if dst is not None and dst[0] == "c" else None,
                                operand[1] if operand is not None and operand[0] == "c" else None)
        return None if known is None else ("c", known)

    def record_tail_call(self, pc: int, r2: Value, r3: Value) -> None:
        """record_func_map + record_func_key: a direct site needs one prog array and one key in range."""
        map_name = r2[1] if r2 is not None and r2[0] == "m" else None
        key = None
        if map_name is not None and r3 is not None and r3[0] == "c" and \
                key_in_range(self.profile, r3[1], self.maps[map_name].max_entries):
            key = r3[1]
        old = self.tail_calls.get(pc)
        if old is not None and old != (map_name, key):
            map_name, key = (old[0] if old[0] == map_name else None), None
        self.tail_calls[pc] = (map_name, key)


# -- zero-extension after a 32-bit cmpxchg ----------------------------------------------------------
CMPXCHG32 = isa.BPF_STX | isa.BPF_ATOMIC | isa.BPF_W
ZEXT_R0 = Insn(isa.BPF_ALU | isa.BPF_MOV | isa.BPF_X, 0, 0, 0, 1)     # BPF_ZEXT_REG(BPF_REG_0)


def _reads_r0_64(insn: Insn) -> bool:
    """Does ``insn`` read R0 as a 64-bit value (the verifier's is_reg64 for a source)?"""
    cls = insn.cls
    if cls == isa.BPF_ALU64:
        if insn.op == isa.BPF_END:
            # bswap16/32 (ISA v4) read only the low half (is_reg64); bswap64 all of it
            return insn.dst == 0 and insn.imm == 64
        return (insn.dst == 0 and insn.op != isa.BPF_MOV) or (insn.source == isa.BPF_X and insn.src == 0)
    if cls == isa.BPF_ALU:
        return insn.op == isa.BPF_END and insn.imm == 64 and insn.dst == 0
    if cls == isa.BPF_JMP:
        if insn.is_exit:
            return True
        if insn.op in (isa.BPF_CALL, isa.BPF_JA):
            return False
        return insn.dst == 0 or (insn.source == isa.BPF_X and insn.src == 0)
    if cls == isa.BPF_LDX:
        return insn.src == 0
    if cls == isa.BPF_ST:
        return insn.dst == 0
    if cls == isa.BPF_STX:
        if insn.dst == 0:
            return True
        wide = insn.size == isa.BPF_DW
        if insn.mode == isa.BPF_ATOMIC and insn.imm == isa.BPF_CMPXCHG:
            return wide
        return insn.src == 0 and wide
    return False


def _writes_r0(insn: Insn) -> bool:
    cls = insn.cls
    if cls in (isa.BPF_ALU, isa.BPF_ALU64, isa.BPF_LDX) or insn.is_lddw:
        return insn.dst == 0
    if insn.opcode == isa.CALL_OPCODE:
        return True            # the callee's or helper's return value (after a tail call: nothing)
    if cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC and insn.imm & isa.BPF_FETCH:
        return insn.imm == isa.BPF_CMPXCHG or insn.src == 0
    return False


def r0_read_as_64(insns: Sequence[Insn], pc: int, outcomes: Mapping[int, frozenset[bool]] | None = None) -> bool:
    """Is the R0 a 32-bit cmpxchg at ``pc`` defines read as 64 bits on some path (mark_insn_zext)?

    ``outcomes``: the verifier's explored directions of each conditional jump (PathFacts): the
    kernel marks the read only on paths do_check walks, so a direction it decided never to take
    hides the reads behind it (measured on 6.12.117: a `r0 -= r1` behind a jump the verifier
    knows is never taken leaves no `w0 = w0`).  None: every path."""
    seen: set[int] = set()
    todo = [pc + 1]
    while todo:
        at = todo.pop()
        if at in seen or not 0 <= at < len(insns):
            continue
        seen.add(at)
        insn = insns[at]
        if _reads_r0_64(insn):
            return True
        if _writes_r0(insn) or insn.is_exit:
            continue
        if insn.is_lddw:
            todo.append(at + 2)
            continue
        target = isa.jump_target(at, insn)
        if insn.is_jmp and insn.op == isa.BPF_JA:
            todo.append(target)
            continue
        taken = outcomes.get(at) if outcomes is not None else None
        if taken is None or False in taken:
            todo.append(at + 1)
        if target is not None and not insn.is_pseudo_call and (taken is None or True in taken):
            todo.append(target)
    return False


# -- instruction-list surgery, with bpf_adj_branches semantics ---------------------------------
def _is_relative(insn: Insn) -> bool:
    return isa.jump_target(0, insn) is not None


def _with_offset(insn: Insn, rel: int) -> Insn:
    if insn.is_pseudo_call or insn.opcode == isa.BPF_JMP32 | isa.BPF_JA:
        return Insn(insn.opcode, insn.dst, insn.src, insn.off, rel, insn.map)
    if not -(1 << 15) <= rel < (1 << 15):
        raise VerifierError("?", None, f"jump offset {rel} out of range after patching")
    return Insn(insn.opcode, insn.dst, insn.src, rel, insn.imm, insn.map)


def rebuild(insns: list[Insn], orig: list[int], patches: Mapping[int, list[Insn]]) -> tuple[list[Insn], list[int],
                                                                                          list[int]]:
    """Replace instruction i by ``patches[i]`` (empty: remove it); re-target every original jump.

    The patch lists hold the replaced instruction itself where it survives;
    jumps *inside* a patch are relative to the patch and stay as written.
    Returns the new instructions, their orig_pc and old index -> new start.
    """
    n = len(insns)
    if not patches:
        # nothing moves: every jump keeps its offset (the program passed check_load, so every
        # target is a slot of it), the same answer without rebuilding each jump
        return list(insns), list(orig), list(range(n + 1))
    # new_start[i] = i + what the patches before i add; the slots between two patched ones are
    # copied as they are, then each jump among them gets its new offset
    new_start: list[int] = []
    out: list[Insn] = []
    out_orig: list[int] = []
    shift = prev = 0
    for p in sorted(patches):
        new_start.extend(range(prev + shift, p + shift + 1))
        out.extend(insns[prev:p])
        out_orig.extend(orig[prev:p])
        out.extend(patches[p])
        out_orig.extend([orig[p]] * len(patches[p]))
        shift += len(patches[p]) - 1
        prev = p + 1
    new_start.extend(range(prev + shift, n + 1 + shift))
    out.extend(insns[prev:])
    out_orig.extend(orig[prev:])
    for i, insn in enumerate(insns):
        cls = insn.cls
        if (cls != isa.BPF_JMP and cls != isa.BPF_JMP32) or i in patches:
            continue
        target = isa.jump_target(i, insn)
        if target is not None:
            rel = new_start[target] - (new_start[i] + 1)
            if rel != target - (i + 1):   # a jump whose offset does not change is kept as it is
                out[new_start[i]] = _with_offset(insn, rel)
    return out, out_orig, new_start


# -- do_misc_fixups patchlets -------------------------------------------------------------------
def _jmp(is64: bool, op: int, dst: int, off: int, imm: int) -> Insn:
    return Insn((isa.BPF_JMP if is64 else isa.BPF_JMP32) | op | isa.BPF_K, dst, 0, off, imm)


def _alu(is64: bool, op: int, dst: int, src: int = 0, imm: int = 0, source: int = isa.BPF_K) -> Insn:
    return Insn((isa.BPF_ALU64 if is64 else isa.BPF_ALU) | op | source, dst, src, 0, imm)


JA_OPCODE = isa.BPF_JMP | isa.BPF_JA
JA_0 = Insn(JA_OPCODE)                # a nop (opt_remove_nops)
JA_1 = Insn(JA_OPCODE, 0, 0, 1, 0)


def chk_and_div(insn: Insn, is64: bool) -> list[Insn]:
    """``[R,W]x div 0 -> 0``."""
    return [_jmp(is64, isa.BPF_JNE, insn.src, 2, 0),
            _alu(False, isa.BPF_XOR, insn.dst, insn.dst, source=isa.BPF_X), JA_1, insn]


def chk_and_mod(insn: Insn, is64: bool) -> list[Insn]:
    """``[R,W]x mod 0 -> [R,W]x`` (the 32-bit form still truncates dst)."""
    patch = [_jmp(is64, isa.BPF_JEQ, insn.src, 1 + (0 if is64 else 1), 0), insn]
    if not is64:
        patch += [JA_1, _alu(False, isa.BPF_MOV, insn.dst, insn.dst, source=isa.BPF_X)]
    return patch


def chk_and_sdiv(insn: Insn, is64: bool) -> list[Insn]:
    """sdiv by 0 -> 0, by -1 -> neg (so INT_MIN / -1 = INT_MIN), through AX = src + 1."""
    return [Insn(isa.BPF_ALU64 | isa.BPF_MOV | isa.BPF_X, AX, insn.src),
            _alu(is64, isa.BPF_ADD, AX, imm=1),
            _jmp(is64, isa.BPF_JGT, AX, 4, 1),
            _jmp(is64, isa.BPF_JEQ, AX, 1, 0),
            _alu(is64, isa.BPF_MOV, insn.dst, imm=0),
            _alu(is64, isa.BPF_NEG, insn.dst),
            JA_1, insn]


def chk_and_smod(insn: Insn, is64: bool) -> list[Insn]:
    """smod by 0 -> dst (truncated for 32 bits), by -1 -> 0."""
    patch = [Insn(isa.BPF_ALU64 | isa.BPF_MOV | isa.BPF_X, AX, insn.src),
             _alu(is64, isa.BPF_ADD, AX, imm=1),
             _jmp(is64, isa.BPF_JGT, AX, 3, 1),
             _jmp(is64, isa.BPF_JEQ, AX, 3 + (0 if is64 else 1), 1),
             _alu(False, isa.BPF_MOV, insn.dst, imm=0),
             JA_1, insn]
    if not is64:
        patch += [JA_1, _alu(False, isa.BPF_MOV, insn.dst, insn.dst, source=isa.BPF_X)]
    return patch


DIV_GUARDS: dict[tuple[int, int], Callable[[Insn, bool], list[Insn]]] = {
    # (op, off): patchlet -- off 1 is the signed form
    (isa.BPF_DIV, 0): chk_and_div, (isa.BPF_MOD, 0): chk_and_mod,
    (isa.BPF_DIV, 1): chk_and_sdiv, (isa.BPF_MOD, 1): chk_and_smod,
}


def signed_by_minus_one(insn: Insn, is64: bool) -> list[Insn]:
    """sdiv/smod by the constant -1: ``neg dst`` / ``w_dst = 0``."""
    if insn.op == isa.BPF_DIV:
        return [_alu(is64, isa.BPF_NEG, insn.dst)]
    return [_alu(False, isa.BPF_MOV, insn.dst, imm=0)]


# -- map_gen_lookup: map_lookup_elem inlined (do_misc_fixups, for a map known on every path) ----
def array_map_gen_lookup(mapdef: MapDef, profile: Profile) -> list[Insn]:
    """kernel/bpf/arraymap.c array_map_gen_lookup, for a privileged load (bypass_spec_v1: no
    index_mask): r1 = &array->value[0]; r0 = key; bounds check; r0 = r1 + r0 * elem_size."""
    elem_size = (mapdef.value_size + 7) & ~7
    if elem_size & (elem_size - 1) == 0:
        scale = _alu(True, isa.BPF_LSH, 0, imm=elem_size.bit_length() - 1)
    else:
        scale = _alu(True, isa.BPF_MUL, 0, imm=elem_size)
    return [_alu(True, isa.BPF_ADD, 1, imm=profile.off_array_ptrs),           # offsetof(struct bpf_array, value)
            Insn(isa.BPF_LDX | isa.BPF_MEM | isa.BPF_W, 0, 2, 0, 0),
            _jmp(True, isa.BPF_JGE, 0, 3, mapdef.max_entries),
            scale,
            _alu(True, isa.BPF_ADD, 0, 1, source=isa.BPF_X),
            JA_1,
            _alu(True, isa.BPF_MOV, 0, imm=0)]


def htab_value_offset(profile: Profile, key_size: int) -> int:
    """Where an element's value starts: offsetof(struct htab_elem, key) + round_up(key_size, 8)."""
    return profile.off_htab_elem_key + ((key_size + 7) & ~7)


def htab_map_gen_lookup(mapdef: MapDef, profile: Profile) -> list[Insn]:
    """kernel/bpf/hashtab.c htab_map_gen_lookup: call __htab_map_lookup_elem, then the value."""
    return [Insn(isa.CALL_OPCODE, 0, 0, 0, isa.KERNEL_FUNC_htab_map_lookup_elem),
            _jmp(True, isa.BPF_JEQ, 0, 1, 0),
            _alu(True, isa.BPF_ADD, 0, imm=htab_value_offset(profile, mapdef.key_size))]


def inline_smp_processor_id(percpu: PerCpuInline) -> list[Insn]:
    """do_misc_fixups' inline ``bpf_get_smp_processor_id``: the CPU number read from its per-CPU slot."""
    return [_alu(False, isa.BPF_MOV, 0, imm=percpu.cpu_number - ((percpu.cpu_number >> 31 & 1) << 32)),
            Insn(isa.BPF_ALU64 | isa.BPF_MOV | isa.BPF_X, 0, 0, isa.BPF_ADDR_PERCPU, 0),
            Insn(isa.BPF_LDX | isa.BPF_MEM | isa.BPF_W, 0, 0, 0, 0)]


MAP_GEN_LOOKUP: dict[str, Callable[[MapDef, Profile], list[Insn]]] = {
    "array": array_map_gen_lookup, "hash": htab_map_gen_lookup,
}


# -- the pipeline ------------------------------------------------------------------------------
def _check(prog: Program, maps: Mapping[str, MapDef], profile: Profile) -> tuple[list[int], list[int], list[int]]:
    """Structure (the encodings were checked by :func:`bpfdiff.verifier.check_isa`), in one pass
    over the program after :func:`subprog_starts`'s; returns the functions' first pcs, the pcs of
    the tail calls and those of the 32-bit cmpxchgs (rare, both: xlate's other needs of the
    program as loaded)."""
    insns = prog.insns
    second_slots: set[int] = set()
    jumps: list[tuple[int, int, bool]] = []     # (pc, target, is a pseudo call) before `refusal`
    refusal: VerifierError | None = None        # the first unknown map or kfunc call
    tail_call_pcs: list[int] = []
    cmpxchg32_pcs: list[int] = []
    for pc, insn in enumerate(insns):
        opcode = insn.opcode
        if opcode == isa.CALL_OPCODE:
            if insn.is_tail_call:
                tail_call_pcs.append(pc)
        elif opcode == CMPXCHG32 and insn.imm == isa.BPF_CMPXCHG:
            cmpxchg32_pcs.append(pc)
        elif insn.is_lddw:
            second_slots.add(pc + 1)
        # the checks below report the first instruction refused; a jump's need every second
        # slot and function start, so they are made after the pass, in order
        if refusal is not None or pc in second_slots:
            continue
        if insn.map is not None and insn.map not in maps:
            refusal = VerifierError(prog.name, pc, f"unknown map {insn.map!r}")
        elif opcode == isa.CALL_OPCODE and insn.src == isa.BPF_PSEUDO_KFUNC_CALL:
            refusal = VerifierError(prog.name, pc, "kfunc calls are not supported")
        else:
            cls = insn.cls
            if cls == isa.BPF_JMP or cls == isa.BPF_JMP32:
                target = isa.jump_target(pc, insn)
                if target is not None:
                    jumps.append((pc, target, opcode == isa.CALL_OPCODE and insn.src == isa.BPF_PSEUDO_CALL))
    starts = subprog_starts(insns)
    ends = starts[1:] + [len(insns)]
    for pc, target, pseudo_call in jumps:
        if target in second_slots:
            raise VerifierError(prog.name, pc, f"jump into the middle of ldimm64 insn {target - 1}")
        if not pseudo_call:
            here = starts[bisect.bisect_right(starts, pc) - 1]      # the function holding pc (starts[0] is 0)
            if not here <= target < ends[starts.index(here)]:
                raise VerifierError(prog.name, pc, f"jump out of range from insn {pc} to {target}")
    if refusal is not None:
        raise refusal
    for end in ends:
        last = insns[end - 1]
        if not (last.is_exit or last.opcode in (isa.BPF_JMP | isa.BPF_JA, isa.BPF_JMP32 | isa.BPF_JA)):
            raise VerifierError(prog.name, end - 1, "last insn of a function is not an exit or jmp")
    if len(starts) > 1 and not profile.tail_calls_in_subprogs and tail_call_pcs:
        raise VerifierError(prog.name, None, "tail_calls are not allowed in programs with bpf-to-bpf calls")
    return starts, tail_call_pcs, cmpxchg32_pcs


def xlate(prog: Program, maps: Mapping[str, MapDef], profile: Profile, options: JitOptions,
          prog_type: str = DEFAULT_PROG_TYPE) -> Xlated:
    """The verifier's rewrites of ``prog``, loaded as ``prog_type``, for ``profile`` (raises :class:`VerifierError`)."""
    insns = list(prog.insns)
    starts, tail_call_pcs, cmpxchg32_pcs = _check(prog, maps, profile)
    ends = starts[1:] + [len(insns)]

    # analysis on the program as loaded (the verifier's do_check)
    # The verifier walks a subprogram with its caller's registers, so what every call site passes
    # in R1-R5 (constants, map pointers; not the caller's frame) is known at its entry: joined
    # over the call sites, until no entry changes (the call graph has no cycles: check_cfg).
    entries: list[State] = [(None,) * 5 for _ in starts]
    flows: list[FunctionFlow] = []
    for _ in range(len(starts)):
        again = []
        for k, (start, end, args) in enumerate(zip(starts, ends, entries, strict=True)):
            if flows and flows[k].args == args:
                again.append(flows[k])      # its entry did not change: the dataflow is a function of it
                continue
            flow = FunctionFlow(insns, start, end, maps, profile, args)
            flow.run()
            again.append(flow)
        flows = again
        passed: dict[int, State] = {}
        for flow in flows:
            for pc in flow.calls:
                callee = starts.index(pc + 1 + insns[pc].imm)
                args = tuple(None if _is_fp(v) else v for v in flow.states[pc][1:6])
                old = passed.get(callee)
                passed[callee] = args if old is None else tuple(a if a == b else None
                                                                for a, b in zip(old, args, strict=True))
        new_entries = [passed.get(k, (None,) * 5) if k else entries[0] for k in range(len(starts))]
        if new_entries == entries:
            break
        entries = new_entries
    # the kernel's own answer, path by path (bpfdiff.verifier.explore); the joined dataflow
    # above stays for stack depths, and answers alone when the exploration is too long
    facts = explore(insns, maps, profile, prog_type)
    if facts is not None:
        tail_calls = dict(facts.tail_calls)
        lookups = {pc: name for pc, name in facts.lookups.items() if name is not None}
        seen = set(facts.seen)
    else:
        tail_calls = {pc: mk for flow in flows for pc, mk in flow.tail_calls.items()}
        lookups = {pc: name for flow in flows for pc, name in flow.lookups.items() if name is not None}
        seen = {pc for flow in flows for pc in flow.states}
    for pc, (map_name, _) in tail_calls.items():
        if map_name is not None and maps[map_name].kind != "prog_array":
            raise VerifierError(prog.name, pc, "cannot pass map_type "
                                f"{maps[map_name].kind} into func bpf_tail_call")
    has_tail_call = [any(s <= pc < e for pc in tail_call_pcs) for s, e in zip(starts, ends, strict=True)]
    callees = [{starts.index(pc + 1 + insns[pc].imm) for pc in flow.calls} for flow in flows]
    reachable = reach_tail_calls(has_tail_call, callees)
    depths = [isa.MAX_BPF_STACK if flow.escaped else flow.depth for flow in flows]
    if not profile.tail_calls_in_subprogs and any(has_tail_call):
        depths[0] = isa.MAX_BPF_STACK       # fixup_bpf_calls: "we cannot make any assumptions"

    outcomes = facts.outcomes if facts is not None else None
    zext_cmpxchg = {pc for pc in cmpxchg32_pcs if r0_read_as_64(insns, pc, outcomes)}

    # opt_hard_wire_dead_code_branches + opt_remove_dead_code (privileged loads): a conditional
    # jump whose outcome is known on every path becomes `ja` (always taken) or `ja +0` (never,
    # removed with the nops); instructions no path reaches go.  Only when every function keeps
    # its entry (a dead bpf-to-bpf call would also remove a subprogram: not modelled).
    orig = list(range(len(insns)))
    seen |= {pc + 1 for pc in seen if insns[pc].is_lddw}
    calls_live = all(pc in seen for flow in flows for pc in flow.calls) and all(s in seen for s in starts)
    if calls_live and len(seen) < len(insns):
        for pc in sorted(seen):
            insn = insns[pc]
            if insn.is_jmp and insn.op in isa.CONDITIONAL_JUMPS:
                if pc + 1 not in seen:
                    insns[pc] = Insn(isa.BPF_JMP | isa.BPF_JA, 0, 0, insn.off, 0)     # jmp32 too
                elif isa.jump_target(pc, insn) not in seen:
                    insns[pc] = Insn(isa.BPF_JMP | isa.BPF_JA)
        dead = {pc: [] for pc in range(len(insns)) if pc not in seen}
        insns, orig, new_start = rebuild(insns, orig, dead)
        starts = [new_start[s] for s in starts]
        tail_calls = {new_start[pc]: mk for pc, mk in tail_calls.items()}
        lookups = {new_start[pc]: name for pc, name in lookups.items()}

    # opt_remove_nops
    removed = {pc: [] for pc, insn in enumerate(insns) if insn.opcode == JA_OPCODE and insn == JA_0}
    if removed:
        insns, orig, new_start = rebuild(insns, orig, removed)
        starts = [new_start[s] for s in starts]
        tail_calls = {new_start[pc]: mk for pc, mk in tail_calls.items()}
        lookups = {new_start[pc]: name for pc, name in lookups.items()}

    ctx_patches = convert_ctx_accesses(insns, starts, profile, prog_type, prog.name)
    if ctx_patches:
        insns, orig, new_start = rebuild(insns, orig, ctx_patches)
        starts = [new_start[s] for s in starts]
        tail_calls = {new_start[pc]: mk for pc, mk in tail_calls.items()}
        lookups = {new_start[pc]: name for pc, name in lookups.items()}

    # do_misc_fixups, in program order (poke indices follow it)
    helper_func = isa.HELPER_FUNC_BY_PROG_TYPE[prog_type]
    patches: dict[int, list[Insn]] = {}
    pokes: list[tuple[int, str, int]] = []
    for pc, insn in enumerate(insns):
        cls = insn.cls
        if (cls == isa.BPF_ALU or cls == isa.BPF_ALU64) and insn.op in (isa.BPF_DIV, isa.BPF_MOD):
            is64 = cls == isa.BPF_ALU64
            if insn.source == isa.BPF_X:
                patches[pc] = DIV_GUARDS[(insn.op, insn.off)](insn, is64)
            elif insn.off == 1 and insn.imm == -1:
                patches[pc] = signed_by_minus_one(insn, is64)
        elif not insn.is_helper_call:
            continue                  # neither a division nor a helper call
        elif insn.imm == isa.BPF_FUNC_map_lookup_elem and pc in lookups:
            gen_lookup = MAP_GEN_LOOKUP.get(maps[lookups[pc]].kind)
            if gen_lookup is not None:
                patches[pc] = gen_lookup(maps[lookups[pc]], profile)
        elif (insn.imm, maps[lookups[pc]].kind if pc in lookups else None) in isa.MAP_OPS_FUNC:
            # patch_map_ops_generic: the map type's own function
            insns[pc] = Insn(isa.CALL_OPCODE, 0, 0, 0, isa.MAP_OPS_FUNC[(insn.imm, maps[lookups[pc]].kind)])
        elif insn.imm == isa.BPF_FUNC_get_smp_processor_id and profile.inline_smp_processor_id is not None:
            patches[pc] = inline_smp_processor_id(profile.inline_smp_processor_id)
        elif insn.imm in helper_func:
            insns[pc] = Insn(isa.CALL_OPCODE, 0, 0, 0, helper_func[insn.imm])     # patch_call_imm
        elif insn.imm == isa.BPF_FUNC_tail_call:          # is_tail_call
            map_name, key = tail_calls.get(pc, (None, None))
            imm = 0
            if key is not None and not options.force_indirect:
                pokes.append((pc, map_name, key))
                imm = len(pokes)
            patches[pc] = [Insn(isa.TAIL_CALL_OPCODE, 0, 0, 0, imm)]
    insns, orig, new_start = rebuild(insns, orig, patches)
    # the tail call is the only instruction of its patch
    pokes = [(new_start[pc], map_name, key) for pc, map_name, key in pokes]
    starts = [new_start[s] for s in starts]

    # opt_subreg_zext_lo32_rnd_hi32: x86 needs no zero-extension after 32-bit defs, except
    # after a 32-bit cmpxchg whose R0 is later read as 64 bits (the CPU leaves RAX's upper
    # half alone when the compare succeeds): BPF_ZEXT_REG(R0), ``w0 = w0`` with imm 1.
    zext = {pc: [insn, ZEXT_R0] for pc, insn in enumerate(insns)
            if insn.opcode == CMPXCHG32 and insn.imm == isa.BPF_CMPXCHG and orig[pc] in zext_cmpxchg} \
        if zext_cmpxchg else {}
    if zext:
        insns, orig, new_start = rebuild(insns, orig, zext)
        pokes = [(new_start[pc], map_name, key) for pc, map_name, key in pokes]
        starts = [new_start[s] for s in starts]
    poke_specs = [PokeSpec(map_name, key, pc) for pc, map_name, key in pokes]
    ends = starts[1:] + [len(insns)]
    subprogs = [SubprogInfo(s, e, depths[k], has_tail_call[k], reachable[k])
                for k, (s, e) in enumerate(zip(starts, ends, strict=True))]
    return Xlated(insns=insns, orig_pc=orig, pokes=poke_specs, subprogs=subprogs)


# -- convert_ctx_accesses: the program type's context rewrite -----------------------------------
# Which registers hold the context pointer, unmodified, at each instruction:
# a small forward dataflow of its own (per function, the callee's R1-R5 joined
# over its call sites).  A value is CTX_NO, CTX_YES or CTX_MIXED (ctx on one
# path only: the verifier refuses an access through it).
CTX_NO, CTX_YES, CTX_MIXED = 0, 1, 2
# A state is one int, two bits per register (R0 lowest): "may be the context" (1) and "may be
# something else" (2), so CTX_YES is 1, CTX_NO 2, CTX_MIXED 3, and joining two paths is their OR
# (equal values stay, different ones become CTX_MIXED).
_CTX_BITS = {1: CTX_YES, 2: CTX_NO, 3: CTX_MIXED}
_NO_BITS = 2


def _ctx_no(regs: range) -> int:
    """The bits of CTX_NO in every register of ``regs``."""
    return sum(_NO_BITS << 2 * reg for reg in regs)


_ALL_NO = _ctx_no(range(isa.MAX_BPF_REG))
_CALL_CLOBBERED = _ctx_no(range(6))                 # R0-R5 after any call
_CALL_CLOBBERED_MASK = sum(3 << 2 * reg for reg in range(6))
_ARGS_MASK = sum(3 << 2 * reg for reg in range(1, 6))


def _ctx_accesses(insns: Sequence[Insn], starts: Sequence[int]) -> dict[int, int]:
    """pc -> CTX_YES / CTX_MIXED for every memory access whose base may be the context.

    The context is R1 at the program's entry; it is followed through 64-bit
    register moves and into subprograms (their R1-R5).  Anything else that
    writes a register (a load, arithmetic, a call's R0-R5) makes it no context
    pointer.  Context pointers spilled to the stack are not followed (bpfdiff
    never spills one: the checker refuses pointers stored to memory).
    """
    ends = list(starts[1:]) + [len(insns)]
    entry: dict[int, int] = {starts[0]: (_ALL_NO & ~(3 << 2)) | (1 << 2)}     # R1: the context
    found: dict[int, int] = {}
    pending = [starts[0]]
    while pending:
        start = pending.pop()
        end = ends[list(starts).index(start)]
        states = {start: entry[start]}
        work = [start]
        while work:
            pc = work.pop()
            regs = states[pc]
            while True:
                insn = insns[pc]
                nxt = pc + 1
                other = None                    # a conditional jump's target
                opcode, cls = insn.opcode, insn.cls
                if insn.is_lddw:
                    regs = (regs & ~(3 << 2 * insn.dst)) | (_NO_BITS << 2 * insn.dst)
                    nxt = pc + 2
                elif cls == isa.BPF_ALU or cls == isa.BPF_ALU64:
                    dst = 2 * insn.dst
                    if opcode == isa.BPF_ALU64 | isa.BPF_MOV | isa.BPF_X and not insn.off:
                        regs = (regs & ~(3 << dst)) | (((regs >> 2 * insn.src) & 3) << dst)
                    else:
                        regs = (regs & ~(3 << dst)) | (_NO_BITS << dst)
                elif cls == isa.BPF_LDX or cls == isa.BPF_ST or cls == isa.BPF_STX:
                    base = (regs >> 2 * (insn.src if cls == isa.BPF_LDX else insn.dst)) & 3
                    if base != _NO_BITS:
                        found[pc] = max(found.get(pc, CTX_NO), _CTX_BITS[base])
                    if cls == isa.BPF_LDX:
                        regs = (regs & ~(3 << 2 * insn.dst)) | (_NO_BITS << 2 * insn.dst)
                    elif cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC and insn.imm & isa.BPF_FETCH:
                        reg = 2 * (0 if insn.imm == isa.BPF_CMPXCHG else insn.src)
                        regs = (regs & ~(3 << reg)) | (_NO_BITS << reg)
                elif opcode == isa.CALL_OPCODE:
                    if insn.src == isa.BPF_PSEUDO_CALL:
                        target = pc + 1 + insn.imm
                        callee = (_ALL_NO & ~_ARGS_MASK) | (regs & _ARGS_MASK)
                        old = entry.get(target)
                        new = callee if old is None else old | callee
                        if new != old:
                            entry[target] = new
                            pending.append(target)
                    regs = (regs & ~_CALL_CLOBBERED_MASK) | _CALL_CLOBBERED
                elif opcode == isa.EXIT_OPCODE:
                    break
                elif cls == isa.BPF_JMP or cls == isa.BPF_JMP32:
                    target = isa.jump_target(pc, insn)
                    if insn.op == isa.BPF_JA:
                        nxt = target
                    else:
                        other = target
                if other is not None:
                    # successors in the order [pc + 1, target] of a conditional jump
                    for succ in (nxt, other):
                        if not start <= succ < end:
                            continue
                        old = states.get(succ)
                        new = regs if old is None else old | regs
                        if new != old:
                            states[succ] = new
                            work.append(succ)
                    break
                # one successor: when its state changes it is the next one popped, so it is
                # followed here at once (the same order of visits, without the work list)
                if not start <= nxt < end:
                    break
                old = states.get(nxt)
                if old is not None:
                    regs |= old
                    if regs == old:
                        break
                states[nxt] = regs
                pc = nxt
    return found


def xdp_convert_ctx_access(insn: Insn, layout: XdpLayout, prog: str, pc: int) -> list[Insn]:
    """One ``struct xdp_md`` load as the verifier rewrites it (``xdp_is_valid_access`` first).

    ``data``, ``data_end``, ``data_meta``: one 8-byte load of the pointer from
    ``struct xdp_buff``; ``ingress_ifindex``: ``xdp->rxq->dev->ifindex``;
    ``rx_queue_index``: ``xdp->rxq->queue_index``.  ``egress_ifindex`` is
    readable only by devmap programs (``xdp->txq->dev->ifindex``), which
    bpfdiff does not load.
    """
    off, size = insn.off, isa.SIZE_BYTES[insn.size]
    if insn.mode != isa.BPF_MEM or not 0 <= off < layout.xdp_md_size or off % size or \
            size != xdp.XDP_MD_FIELD_SIZE or off not in xdp.READABLE_FIELDS:
        raise VerifierError(prog, pc, f"invalid bpf_context access off={off} size={size}")
    dst, src = insn.dst, insn.src

    def ldx(size_code: int, to: int, base: int, at: int) -> Insn:
        return Insn(isa.BPF_LDX | isa.BPF_MEM | size_code, to, base, at, 0)

    pointer = {xdp.XDP_MD_DATA: layout.off_buff_data, xdp.XDP_MD_DATA_END: layout.off_buff_data_end,
               xdp.XDP_MD_DATA_META: layout.off_buff_data_meta}
    if off in pointer:
        return [ldx(isa.BPF_DW, dst, src, pointer[off])]
    if off == xdp.XDP_MD_INGRESS_IFINDEX:
        return [ldx(isa.BPF_DW, dst, src, layout.off_buff_rxq), ldx(isa.BPF_DW, dst, dst, layout.off_rxq_dev),
                ldx(isa.BPF_W, dst, dst, layout.off_netdev_ifindex)]
    return [ldx(isa.BPF_DW, dst, src, layout.off_buff_rxq), ldx(isa.BPF_W, dst, dst, layout.off_rxq_queue_index)]


def convert_ctx_accesses(insns: Sequence[Insn], starts: Sequence[int], profile: Profile, prog_type: str,
                         prog: str) -> dict[int, list[Insn]]:
    """The verifier's ``convert_ctx_accesses`` for ``prog_type``: patches for :func:`rebuild`.

    Only XDP has a context to rewrite ("raw" is no kernel program type: its R1
    is plain memory to our engines).  A store to the context, or an access
    whose base is the context on one path only, is refused as the verifier does.
    """
    if prog_type != PROG_XDP:
        return {}
    patches: dict[int, list[Insn]] = {}
    for pc, kind in sorted(_ctx_accesses(insns, starts).items()):
        insn = insns[pc]
        if kind == CTX_MIXED:
            raise VerifierError(prog, pc, "same insn cannot be used with different pointers")
        if insn.cls == isa.BPF_ST:
            raise VerifierError(prog, pc, f"BPF_ST stores into R{insn.dst} ctx is not allowed")
        if insn.cls == isa.BPF_STX and insn.mode == isa.BPF_ATOMIC:
            raise VerifierError(prog, pc, f"BPF_ATOMIC stores into R{insn.dst} ctx is not allowed")
        if insn.cls == isa.BPF_STX:       # xdp_is_valid_access refuses every write
            raise VerifierError(prog, pc, f"invalid bpf_context access off={insn.off} "
                                f"size={isa.SIZE_BYTES[insn.size]}")
        patches[pc] = xdp_convert_ctx_access(insn, profile.xdp, prog, pc)
    return patches
