"""A verifier-like checker: would the kernel load this scenario's programs?

The fuzzer runs only valid scenarios: an invalid program is not a finding (a
JIT may do anything with code the verifier refuses).  This checker models the
parts of ``kernel/bpf/verifier.c`` that matter for the constructs bpfdiff
generates and mutates, conservatively: what it accepts, the kernel accepts;
it may refuse some programs the kernel would take (it joins states where the
kernel explores paths separately).

Rules, each an error message below:

* structure: every slot decodes (:func:`bpfdiff.isa.check_program`); functions
  are the entry and every ``call local`` target; jumps stay inside their
  function; a function ends with ``exit`` or ``ja``; no unreachable slot; no
  recursion; at most :data:`MAX_CALL_FRAMES` frames; stack of a call chain at
  most 512 bytes (each frame rounded up to 32), and a subprogram with a tail
  call only when the frames before it stay under 256 bytes;
* registers: reading an uninitialised register (only R1 = context and R10 at a
  program's entry; R1-R5 after any call; R0 after ``bpf_tail_call``); writing
  R10; pointer arithmetic other than ``add/sub K`` on a stack pointer;
  pointers compared (except a map value against 0), stored to memory, or
  returned in R0 -- the engines lay memory out differently, so a leaked
  address would be a false divergence;
* memory: stack accesses inside [-512, 0), aligned, reads only of bytes this
  function wrote; map value accesses inside ``value_size`` and only after a
  NULL check of the lookup result; no atomics on the context;
* the context, in an xdp scenario (``xdp_is_valid_access`` and the packet
  rules of ``kernel/bpf/verifier.c``): only 4-byte, aligned reads of the
  ``struct xdp_md`` fields a non-devmap program may read -- no stores (``BPF_ST
  stores into R6 ctx is not allowed``), no atomics, no arithmetic on the
  context pointer; ``data``/``data_meta``/``data_end`` give packet pointers:
  ``add/sub K`` moves a packet pointer, a 64-bit ``j{gt,ge,lt,le}`` between a
  packet pointer at offset N and ``data_end`` proves the range
  (``find_good_pkt_pointers``: N, or N +/- 1 for the right-open forms, per
  profile) for every packet pointer on the branch where it holds, and a
  packet access (no atomics) must lie inside the proven range; other
  comparisons of pointers are refused, packet pointers do not cross calls
  and are forgotten after ``bpf_tail_call`` (v6.13 does so; conservative for
  older kernels), and in every frame after a call of a subprogram that
  reaches one where the profile's kernel does so
  (``Profile.verifier_tail_call_forgets_pkt``: 6.12.117, not 6.1.192);
  every run's packet is ETH_HLEN..XDP_MAX_PACKET bytes (:mod:`bpfdiff.xdp`);
* the context in a raw scenario: R1 is ``mem`` itself, accessed inside the
  smallest ``mem`` of the runs that can reach the program (directly or
  through prog arrays it is ever put in);
* loops (the bound must be visible): a backward jump is a 64-bit conditional
  jump ``j<cond> rC, N`` with an immediate, back to right after
  ``mov rC, C0``; the loop body is straight-line code (no jumps, calls or
  exits) that writes rC exactly once, with ``add rC, S``; nothing jumps into
  the loop from outside; running it (64-bit arithmetic) ends within
  :data:`MAX_LOOP_TRIPS` iterations;
* helpers: only 1, 2, 3, 7, 8 and 12 with the argument types the kernel's
  prototypes require; ``bpf_tail_call`` needs R1 = context, R2 = a prog array
  and R3 a scalar; a tail call in a program with bpf-to-bpf calls only where
  the profile allows mixing (linux-5.5 refuses it);
* scenario: names unique, maps well-formed, every map / program an event or a
  pseudo map load names exists, programs run only once loaded, loaded once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from bpfdiff import isa, xdp
from bpfdiff.helpers import known_cpu_id
from bpfdiff.isa import (
    BPF_ADD,
    BPF_ALU64,
    BPF_ARSH,
    BPF_ATOMIC,
    BPF_CMPXCHG,
    BPF_DIV,
    BPF_END,
    BPF_FETCH,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JLE,
    BPF_JLT,
    BPF_JMP,
    BPF_JNE,
    BPF_JSGE,
    BPF_JSGT,
    BPF_JSLE,
    BPF_JSLT,
    BPF_K,
    BPF_LD,
    BPF_LDX,
    BPF_LSH,
    BPF_MEM,
    BPF_MOD,
    BPF_MOV,
    BPF_NEG,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_X,
    MAX_BPF_STACK,
    MAX_CALL_FRAMES,
    Insn,
    Program,
)
from bpfdiff.profiles import Profile, get_profile
from bpfdiff.scenario import (
    DEFAULT_PROG_TYPE,
    MAP_KINDS,
    PROG_TYPES,
    PROG_XDP,
    Delete,
    Load,
    MapDef,
    Run,
    Scenario,
    Update,
)
from bpfdiff.verifier import VerifierError, check_isa, key_in_range, track_const_alu

MAX_LOOP_TRIPS = 1024
TAIL_CALL_STACK_LIMIT = 256      # frames before a subprogram with a tail call
STACK_FRAME_GRANULE = 32         # each frame's depth is rounded up to this
U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class CheckError:
    """Why a scenario would not load: where (program, slot) and what."""

    program: str | None
    pc: int | None
    message: str

    def __str__(self) -> str:
        where = self.program or "scenario"
        if self.pc is not None:
            where += f":{self.pc}"
        return f"{where}: {self.message}"


class Refused(Exception):
    def __init__(self, pc: int | None, message: str) -> None:
        super().__init__(message)
        self.pc = pc
        self.message = message


# -- abstract register values ------------------------------------------------
# Tuples, so that states compare and hash cheaply:
#   ("uninit",)  ("scalar", const|None)  ("ctx",)  ("fp", off)
#   ("map", name)  ("value_or_null", name)  ("value", name, off)
#   xdp: ("pkt", off, range)  ("pkt_end",)  ("pkt_meta", off): packet
#   pointers of the verifier's id 0 (all loaded from the context), `range`
#   the bytes from `data` a comparison with data_end proved
UNINIT = ("uninit",)
# R0 after bpf_tail_call: as uninitialised as UNINIT (the kernel says only "R0 !read_ok"), but the
# refusal names why -- reading it is the historic false positive of the kernel's own test_bpf
UNINIT_AFTER_TAIL_CALL = ("uninit", "R0 is not set after bpf_tail_call")
SCALAR = ("scalar", None)
CTX = ("ctx",)
PKT_END = ("pkt_end",)
POINTER_KINDS = frozenset({"ctx", "fp", "map", "value_or_null", "value", "pkt", "pkt_end", "pkt_meta"})
PACKET_KINDS = frozenset({"pkt", "pkt_end", "pkt_meta"})
# BPF_MAX_VAR_OFF: the verifier refuses pointer offsets beyond it
MAX_POINTER_OFF = 1 << 29


def scalar(const: int | None = None) -> tuple:
    return ("scalar", None if const is None else const & U64)


def join_value(a: tuple, b: tuple) -> tuple:
    if a == b:
        return a
    if a[0] == "scalar" and b[0] == "scalar":
        return SCALAR
    if a[0] == "pkt" and b[0] == "pkt" and a[1] == b[1]:
        return ("pkt", a[1], min(a[2], b[2]))     # proven on both paths: the smaller range
    return UNINIT


@dataclass(frozen=True, slots=True)
class State:
    regs: tuple[tuple, ...]
    stack: int       # bit i set: byte at offset i - 512 was written

    def join(self, other: State) -> State:
        return State(tuple(join_value(a, b) for a, b in zip(self.regs, other.regs, strict=True)),
                     self.stack & other.stack)

    def set(self, reg: int, value: tuple) -> State:
        regs = list(self.regs)
        regs[reg] = value
        return State(tuple(regs), self.stack)


def stack_bits(off: int, size: int) -> int:
    return ((1 << size) - 1) << (off + MAX_BPF_STACK)


# -- helper prototypes -----------------------------------------------------------
# argument kinds: "map_data", "prog_array", "key" (stack, key_size bytes),
# "value" (stack, value_size bytes), "scalar", "ctx"; result: a value kind.
HELPER_PROTOS: dict[int, tuple[tuple[str, ...], str]] = {
    isa.BPF_FUNC_map_lookup_elem: (("map_data", "key"), "value_or_null"),
    isa.BPF_FUNC_map_update_elem: (("map_data", "key", "value", "scalar"), "scalar"),
    isa.BPF_FUNC_map_delete_elem: (("map_data", "key"), "scalar"),
    isa.BPF_FUNC_get_prandom_u32: ((), "scalar"),
    isa.BPF_FUNC_get_smp_processor_id: ((), "scalar"),
    isa.BPF_FUNC_tail_call: (("ctx", "prog_array", "scalar"), "uninit"),
}

# loop conditions: op -> (signed, keep looping while cmp(counter, bound))
LOOP_CONDITIONS = {
    BPF_JLT: (False, lambda a, b: a < b), BPF_JLE: (False, lambda a, b: a <= b),
    BPF_JGT: (False, lambda a, b: a > b), BPF_JGE: (False, lambda a, b: a >= b),
    BPF_JSLT: (True, lambda a, b: a < b), BPF_JSLE: (True, lambda a, b: a <= b),
    BPF_JSGT: (True, lambda a, b: a > b), BPF_JSGE: (True, lambda a, b: a >= b),
    BPF_JNE: (False, lambda a, b: a != b),
}


def to_signed64(v: int) -> int:
    v &= U64
    return v - (1 << 64) if v >> 63 else v


@dataclass(frozen=True, slots=True)
class TailCallSite:
    """A ``call bpf_tail_call`` as the verifier sees it (see :func:`tail_call_sites`)."""

    pc: int
    map: str
    key: int | None          # constant key, or None when computed at run time
    in_subprog: bool
    direct: bool             # constant key below max_entries: the JIT patches it in place


# ---------------------------------------------------------------------------
class ProgramChecker:
    """Checks one program against the scenario's maps and memory size."""

    def __init__(self, program: Program, maps: dict[str, MapDef], mem_len: int, profile: Profile,
                 prog_type: str = DEFAULT_PROG_TYPE) -> None:
        self.prog = program
        self.insns = program.insns
        self.maps = maps
        self.mem_len = mem_len          # raw: the bytes R1 points at
        self.profile = profile
        self.prog_type = prog_type
        self.sites: list[TailCallSite] = []
        self.tail_calling: frozenset[int] = frozenset()   # starts of functions that reach a tail call

    # -- structure --------------------------------------------------------
    def slot_starts(self) -> list[int]:
        """pcs that begin an instruction (the second slot of lddw does not)."""
        pcs, pc = [], 0
        while pc < len(self.insns):
            pcs.append(pc)
            pc += 2 if self.insns[pc].is_lddw else 1
        return pcs

    def functions(self) -> list[int]:
        starts = {0}
        for pc in self.slot_starts():
            insn = self.insns[pc]
            if insn.is_pseudo_call:
                target = isa.jump_target(pc, insn)
                if not 0 <= target < len(self.insns):
                    raise Refused(pc, f"call local to {target}, outside the program")
                starts.add(target)
        return sorted(starts)

    def successors(self, pc: int) -> list[int]:
        insn = self.insns[pc]
        nxt = pc + (2 if insn.is_lddw else 1)
        if insn.is_exit:
            return []
        if insn.is_jmp and insn.op == BPF_JA:
            return [isa.jump_target(pc, insn)]
        if insn.is_jmp and insn.op not in (isa.BPF_CALL, isa.BPF_EXIT):
            return [nxt, isa.jump_target(pc, insn)]
        return [nxt]

    def check_structure(self) -> tuple[list[int], dict[int, int]]:
        """Function starts and, for each start, its end (exclusive)."""
        insns = self.insns
        try:
            check_isa(self.prog, self.profile)      # the verifier model: the profile's instruction set
        except VerifierError as exc:
            raise Refused(exc.pc, exc.reason) from None
        if not insns:
            raise Refused(None, "empty program")
        starts = self.functions()
        ends = {s: e for s, e in zip(starts, starts[1:] + [len(insns)], strict=True)}
        valid_pcs = set(self.slot_starts())
        for start in starts:
            end = ends[start]
            if start not in valid_pcs:
                raise Refused(start, "call local into the middle of lddw")
            last = max(pc for pc in valid_pcs if start <= pc < end)
            tail = insns[last]
            if not (tail.is_exit or (tail.is_jmp and tail.op == BPF_JA)):
                raise Refused(last, "last insn of a function is not an exit or jmp")
            seen, todo = {start}, [start]
            while todo:
                pc = todo.pop()
                for nxt in self.successors(pc):
                    if not start <= nxt < end:
                        raise Refused(pc, f"jump out of the function to {nxt}")
                    if nxt not in valid_pcs:
                        raise Refused(pc, f"jump into the middle of lddw at {nxt}")
                    if nxt not in seen:
                        seen.add(nxt)
                        todo.append(nxt)
            for pc in sorted(valid_pcs):
                if start <= pc < end and pc not in seen:
                    raise Refused(pc, "unreachable insn")
        return starts, ends

    def check_loops(self, starts: list[int], ends: dict[int, int]) -> None:
        jumps = [(pc, isa.jump_target(pc, self.insns[pc])) for pc in self.slot_starts()
                 if self.insns[pc].is_jmp and self.insns[pc].op not in (isa.BPF_CALL, isa.BPF_EXIT)]
        for pc, target in jumps:
            if target > pc:
                continue
            self.check_loop(pc, target, jumps, starts)

    def check_loop(self, pc: int, target: int, jumps: list[tuple[int, int]], starts: list[int]) -> None:
        insn = self.insns[pc]
        if insn.cls != BPF_JMP or insn.source != BPF_K or insn.op not in LOOP_CONDITIONS:
            raise Refused(pc, "back-edge: a loop must end with a 64-bit conditional jump on an immediate")
        counter = insn.dst
        init = self.insns[target - 1] if target - 1 >= 0 and target not in starts else None
        if init is None or init.opcode != (BPF_ALU64 | BPF_MOV | BPF_K) or init.dst != counter:
            raise Refused(pc, f"back-edge: the loop does not start right after 'mov r{counter}, imm'")
        step = None
        for body_pc in (p for p in self.slot_starts() if target <= p < pc):
            body = self.insns[body_pc]
            if body.is_jmp:
                raise Refused(body_pc, "back-edge: the loop body is not straight-line code")
            if counter in written_registers(body):
                if body.opcode != (BPF_ALU64 | BPF_ADD | BPF_K) or step is not None or body.imm == 0:
                    raise Refused(body_pc, f"back-edge: r{counter} must change exactly once, by 'add r{counter}, imm'")
                step = body.imm
        if step is None:
            raise Refused(pc, f"back-edge: r{counter} never changes in the loop: infinite loop")
        for src, dst in jumps:
            if target <= dst <= pc and not target <= src <= pc:
                raise Refused(src, "jump into the middle of a loop")
        signed, keep_going = LOOP_CONDITIONS[insn.op]
        value, bound = init.imm & U64, insn.imm & U64
        convert = to_signed64 if signed else (lambda v: v & U64)
        for _ in range(MAX_LOOP_TRIPS):
            value = (value + step) & U64
            if not keep_going(convert(value), convert(bound)):
                return
        raise Refused(pc, f"back-edge: loop runs more than {MAX_LOOP_TRIPS} times")

    # -- dataflow ------------------------------------------------------------
    def run(self) -> list[TailCallSite]:
        starts, ends = self.check_structure()
        self.check_loops(starts, ends)
        self.check_calls(starts)
        self.tail_calling = self.reaching_tail_calls(starts)
        entry_states: dict[int, State] = {0: State((UNINIT, CTX) + (UNINIT,) * 8 + (("fp", 0),), 0)}
        stack_depth: dict[int, int] = {}
        sites: dict[int, TailCallSite] = {}
        pending = [0]
        while pending:
            start = pending.pop()
            call_args, depth, fsites = self.analyse_function(start, ends[start], entry_states[start])
            stack_depth[start] = depth
            sites.update(fsites)
            for target, state in call_args:
                old = entry_states.get(target)
                new = state if old is None else old.join(state)
                if new != old:
                    entry_states[target] = new
                    pending.append(target)
        self.check_stack(starts, stack_depth, sites)
        if len(starts) > 1 and sites and not self.profile.tail_calls_in_subprogs:
            pc = min(sites)
            raise Refused(pc, f"tail_calls are not allowed in programs with bpf-to-bpf calls ({self.profile.name})")
        return [sites[pc] for pc in sorted(sites)]

    def check_calls(self, starts: list[int]) -> None:
        """No recursion, at most MAX_CALL_FRAMES frames."""
        callees = self.callees(starts)

        def depth(fn: int, chain: tuple[int, ...]) -> int:
            deepest = 0
            for pc, callee in callees[fn]:
                if callee in chain + (fn,):
                    # check_cfg: the call's target is still on the DFS stack (kernel wording)
                    raise Refused(pc, f"back-edge from insn {pc} to {callee}")
                deepest = max(deepest, depth(callee, chain + (fn,)))
            return 1 + deepest

        frames = depth(0, ())
        if frames > MAX_CALL_FRAMES:
            raise Refused(None, f"the call stack of {frames} frames is too deep")

    def reaching_tail_calls(self, starts: list[int]) -> frozenset[int]:
        """Functions that contain a ``bpf_tail_call`` or call (transitively) one that does."""
        ends = dict(zip(starts, starts[1:] + [len(self.insns)], strict=True))
        callees = self.callees(starts)
        reaching = {s for s in starts
                    if any(self.insns[pc].is_tail_call for pc in self.slot_starts() if s <= pc < ends[s])}
        changed = True
        while changed:
            changed = False
            for fn in starts:
                if fn not in reaching and any(callee in reaching for _, callee in callees[fn]):
                    reaching.add(fn)
                    changed = True
        return frozenset(reaching)

    def callees(self, starts: list[int]) -> dict[int, list[tuple[int, int]]]:
        out: dict[int, list[tuple[int, int]]] = {s: [] for s in starts}
        for pc in self.slot_starts():
            insn = self.insns[pc]
            if insn.is_pseudo_call:
                fn = max(s for s in starts if s <= pc)
                out[fn].append((pc, isa.jump_target(pc, insn)))
        return out

    def check_stack(self, starts: list[int], stack_depth: dict[int, int], sites: dict[int, TailCallSite]) -> None:
        callees = self.callees(starts)
        has_tail_call = {s: any(s <= pc < e for pc in sites) for s, e in
                         zip(starts, starts[1:] + [len(self.insns)], strict=True)}

        def walk(fn: int, depth: int) -> None:
            if fn and has_tail_call[fn] and depth >= TAIL_CALL_STACK_LIMIT:
                raise Refused(fn, f"tail_calls are not allowed when call stack of previous frames is {depth} bytes")
            granule = STACK_FRAME_GRANULE
            depth += -(-max(stack_depth.get(fn, 0), 1) // granule) * granule
            if depth > MAX_BPF_STACK:
                raise Refused(fn, f"combined stack size of the call chain is {depth} bytes")
            for _, callee in callees[fn]:
                walk(callee, depth)

        walk(0, 0)

    def analyse_function(self, start: int, end: int, entry: State):
        """Fixpoint over one function: calls' argument states, stack depth, tail-call sites."""
        states: dict[int, State] = {start: entry}
        todo = [start]
        call_args: dict[int, State] = {}
        depth = 0
        sites: dict[int, TailCallSite] = {}
        while todo:
            pc = todo.pop()
            state = states[pc]
            try:
                outs, used = self.step(pc, state, start, sites, call_args)
            except Refused:
                raise
            depth = max(depth, used)
            for nxt, new in outs:
                old = states.get(nxt)
                merged = new if old is None else old.join(new)
                if merged != old:
                    states[nxt] = merged
                    todo.append(nxt)
        targets = [(isa.jump_target(pc, self.insns[pc]), st) for pc, st in call_args.items()]
        return targets, depth, sites

    # -- one instruction ------------------------------------------------------
    def read(self, state: State, reg: int, pc: int) -> tuple:
        value = state.regs[reg]
        if value[0] == "uninit":
            hint = f" ({value[1]})" if len(value) > 1 else ""
            raise Refused(pc, f"R{reg} !read_ok{hint}")
        return value

    def read_scalar(self, state: State, reg: int, pc: int, what: str = "") -> tuple:
        value = self.read(state, reg, pc)
        if value[0] != "scalar":
            raise Refused(pc, f"R{reg} is a pointer ({value[0]}){what}: not allowed here")
        return value

    def mem_access(self, state: State, base: int, off: int, size: int, pc: int, write: bool,
                   atomic: bool = False) -> tuple[State, int]:
        """Check an access through register ``base``; return the new state and the stack depth used."""
        ptr = self.read(state, base, pc)
        kind = ptr[0]
        if kind == "fp":
            at = ptr[1] + off
            if not -MAX_BPF_STACK <= at or at + size > 0:
                raise Refused(pc, f"invalid {'write to' if write else 'read from'} stack R{base} off={at} size={size}")
            if at % size:
                raise Refused(pc, f"misaligned stack access off={at} size={size}")
            bits = stack_bits(at, size)
            if (not write or atomic) and state.stack & bits != bits:
                raise Refused(pc, f"invalid read from stack off {at}+0 size {size}")
            if write:
                state = State(state.regs, state.stack | bits)
            return state, -at
        if kind == "ctx" and self.prog_type == PROG_XDP:
            self.xdp_ctx_access(base, off, size, pc, write, atomic)
            return state, 0
        if kind == "pkt":
            if atomic:
                raise Refused(pc, f"BPF_ATOMIC stores into R{base} pkt is not allowed")
            at = ptr[1] + off
            if at < 0 or at + size > ptr[2]:
                raise Refused(pc, f"invalid access to packet, off={at} size={size}, "
                                  f"R{base}(id=0,off={ptr[1]},r={ptr[2]})")
            return state, 0
        if kind == "ctx":
            if atomic:
                raise Refused(pc, "atomic access to the context is not allowed")
            if off < 0 or off + size > self.mem_len:
                raise Refused(pc, f"invalid context access off={off} size={size} (mem is {self.mem_len} bytes)")
            return state, 0
        if kind == "value":
            at = ptr[2] + off
            vsize = self.maps[ptr[1]].value_size
            if at < 0 or at + size > vsize:
                raise Refused(pc, f"invalid access to map value, value_size={vsize} off={at} size={size}")
            return state, 0
        if kind == "value_or_null":
            raise Refused(pc, f"R{base} invalid mem access 'map_value_or_null'")
        raise Refused(pc, f"R{base} invalid mem access '{kind}'")

    def xdp_ctx_access(self, base: int, off: int, size: int, pc: int, write: bool, atomic: bool) -> None:
        """xdp_is_valid_access: 4-byte aligned reads of the fields a (non-devmap) XDP program may read."""
        if atomic:
            raise Refused(pc, f"BPF_ATOMIC stores into R{base} ctx is not allowed")
        if write and self.insns[pc].cls == BPF_ST:
            raise Refused(pc, f"BPF_ST stores into R{base} ctx is not allowed")
        if write or not 0 <= off < self.profile.xdp.xdp_md_size or off % size or \
                size != xdp.XDP_MD_FIELD_SIZE or off not in xdp.READABLE_FIELDS:
            raise Refused(pc, f"invalid bpf_context access off={off} size={size}")

    def loaded_value(self, state: State, insn: Insn, pc: int) -> tuple:
        """What an LDX puts in its destination: a scalar, or from the XDP context a packet pointer."""
        if self.prog_type == PROG_XDP and state.regs[insn.src] == CTX:
            if insn.mode != BPF_MEM:
                raise Refused(pc, "sign-extending load from the context")
            kind = xdp.PACKET_POINTER_FIELDS.get(insn.off)
            if kind == "pkt":
                return ("pkt", 0, 0)
            if kind == "pkt_meta":
                return ("pkt_meta", 0)
            if kind == "pkt_end":
                return PKT_END
        return SCALAR

    def step(self, pc: int, state: State, fn_start: int, sites: dict[int, TailCallSite],
             call_args: dict[int, State]) -> tuple[list[tuple[int, State]], int]:
        insn = self.insns[pc]
        cls = insn.cls
        nxt = pc + 1
        if insn.dst == isa.BPF_REG_FP and cls in (isa.BPF_ALU, BPF_ALU64, BPF_LDX, BPF_LD):
            raise Refused(pc, "frame pointer is read only")
        if cls in (isa.BPF_ALU, BPF_ALU64):
            return [(nxt, self.alu(pc, insn, state))], 0
        if cls == BPF_LD:
            return [(pc + 2, self.lddw(pc, insn, state))], 0
        if cls == BPF_LDX:
            size = isa.SIZE_BYTES[insn.size]
            value = self.loaded_value(state, insn, pc)
            state, used = self.mem_access(state, insn.src, insn.off, size, pc, write=False)
            return [(nxt, state.set(insn.dst, value))], used
        if cls in (BPF_ST, BPF_STX):
            size = isa.SIZE_BYTES[insn.size]
            atomic = cls == BPF_STX and insn.mode == BPF_ATOMIC
            if cls == BPF_STX:
                self.read_scalar(state, insn.src, pc, " stored to memory")
            if atomic and insn.imm == BPF_CMPXCHG:
                self.read_scalar(state, 0, pc, " (cmpxchg comparand)")
            state, used = self.mem_access(state, insn.dst, insn.off, size, pc, write=True, atomic=atomic)
            if atomic and insn.imm == BPF_CMPXCHG:
                state = state.set(0, SCALAR)
            elif atomic and insn.imm & BPF_FETCH:
                state = state.set(insn.src, SCALAR)
            return [(nxt, state)], used
        return self.jmp(pc, insn, state, fn_start, sites, call_args)

    def alu(self, pc: int, insn: Insn, state: State) -> State:
        is64 = insn.cls == BPF_ALU64
        op = insn.op
        width = 64 if is64 else 32
        if op == BPF_MOV:
            if insn.source == BPF_K:
                return state.set(insn.dst, scalar(insn.imm if is64 else insn.imm & 0xFFFFFFFF))
            value = self.read(state, insn.src, pc)
            if value[0] != "scalar":
                if not is64 or insn.off:
                    raise Refused(pc, f"R{insn.src} partial copy of pointer")
                return state.set(insn.dst, value)
            const = value[1]
            if const is not None and (insn.off or not is64):
                const = None if insn.off else const & 0xFFFFFFFF
            return state.set(insn.dst, scalar(const))
        dst = self.read(state, insn.dst, pc)
        if op in (BPF_NEG, BPF_END):
            self.read_scalar(state, insn.dst, pc)
            return state.set(insn.dst, SCALAR)
        if insn.source == BPF_X:
            self.read_scalar(state, insn.src, pc, " as an ALU operand")
        elif op in (BPF_DIV, BPF_MOD) and insn.imm == 0:
            raise Refused(pc, "div by zero")
        elif op in (BPF_LSH, BPF_RSH, BPF_ARSH) and not 0 <= insn.imm < width:
            raise Refused(pc, f"invalid shift {insn.imm}")
        if dst[0] == "fp":
            if is64 and insn.source == BPF_K and op in (BPF_ADD, BPF_SUB):
                return state.set(insn.dst, ("fp", dst[1] + (insn.imm if op == BPF_ADD else -insn.imm)))
            raise Refused(pc, f"R{insn.dst} pointer arithmetic with this operation is not allowed")
        if dst[0] in ("pkt", "pkt_meta"):
            # pointer += K keeps the pointer's id and range, moves its offset
            if is64 and insn.source == BPF_K and op in (BPF_ADD, BPF_SUB):
                moved = dst[1] + (insn.imm if op == BPF_ADD else -insn.imm)
                if abs(moved) >= MAX_POINTER_OFF:
                    raise Refused(pc, f"R{insn.dst} packet pointer offset {moved} is out of range")
                return state.set(insn.dst, (dst[0], moved) + dst[2:])
            raise Refused(pc, f"R{insn.dst} pointer arithmetic with this operation is not allowed")
        if dst[0] == "pkt_end":
            raise Refused(pc, f"R{insn.dst} pointer arithmetic on pkt_end prohibited")
        if dst[0] != "scalar":
            raise Refused(pc, f"R{insn.dst} pointer arithmetic on {dst[0]} is not allowed")
        src = state.regs[insn.src][1] if insn.source == BPF_X else None
        return state.set(insn.dst, scalar(track_const_alu(insn, dst[1], src)))   # the verifier model's rule

    def lddw(self, pc: int, insn: Insn, state: State) -> State:
        value = isa.lddw_value(insn, self.insns[pc + 1])
        if insn.src == 0:
            return state.set(insn.dst, scalar(value))
        mapdef = self.maps.get(insn.map or "")
        if mapdef is None:
            raise Refused(pc, f"lddw refers to unknown map {insn.map!r}")
        if insn.src == isa.BPF_PSEUDO_MAP_FD:
            return state.set(insn.dst, ("map", mapdef.name))
        off = self.insns[pc + 1].imm
        if mapdef.kind != "array" or not 0 <= off < mapdef.value_size:
            raise Refused(pc, f"map_value load needs an array map and an offset inside its value (off {off})")
        return state.set(insn.dst, ("value", mapdef.name, off))

    def jmp(self, pc: int, insn: Insn, state: State, fn_start: int, sites: dict[int, TailCallSite],
            call_args: dict[int, State]) -> tuple[list[tuple[int, State]], int]:
        op = insn.op
        nxt = pc + 1
        if op == BPF_JA:
            return [(isa.jump_target(pc, insn), state)], 0
        if insn.is_exit:
            self.read_scalar(state, 0, pc, " returned in R0")
            return [], 0
        if insn.is_pseudo_call:
            for reg in range(1, 6):
                value = state.regs[reg]
                # a pointer into this frame (or the packet) is not followed into the callee's checks
                if value[0] == "fp" or value[0] in PACKET_KINDS:
                    state = state.set(reg, UNINIT)
            callee = State(state.regs[:6] + (UNINIT,) * 4 + (("fp", 0),), 0).set(0, UNINIT)
            old = call_args.get(pc)
            call_args[pc] = callee if old is None else old.join(callee)
            after = self.after_call(state, SCALAR)
            if self.profile.verifier_tail_call_forgets_pkt and isa.jump_target(pc, insn) in self.tail_calling:
                # the callee's tail call forgets the packet pointers of every frame (the verifier's
                # clear_all_pkt_pointers walks the whole call stack): refused after the call on
                # the real 6.12.117 ("R7 invalid mem access 'scalar'"), accepted on 6.1.192
                after = State(tuple(UNINIT if r[0] in PACKET_KINDS else r for r in after.regs), after.stack)
            return [(nxt, after)], 0
        if insn.op == isa.BPF_CALL:
            return [(nxt, self.helper(pc, insn, state, fn_start, sites))], 0
        # conditional jump
        target = isa.jump_target(pc, insn)
        lhs = self.read(state, insn.dst, pc)
        if lhs[0] == "value_or_null" and insn.cls == BPF_JMP and insn.source == BPF_K and insn.imm == 0 \
                and op in (BPF_JEQ, BPF_JNE):
            null, nonnull = state.set(insn.dst, scalar(0)), state.set(insn.dst, ("value", lhs[1], 0))
            return ([(target, null), (nxt, nonnull)] if op == BPF_JEQ else [(target, nonnull), (nxt, null)]), 0
        if lhs[0] in PACKET_KINDS and insn.source == BPF_X:
            return self.packet_compare(pc, insn, state, lhs, self.read(state, insn.src, pc)), 0
        if lhs[0] != "scalar":
            raise Refused(pc, f"R{insn.dst} pointer comparison prohibited")
        if insn.source == BPF_X:
            self.read_scalar(state, insn.src, pc, " in a comparison")
        return [(nxt, state), (target, state)], 0

    # (op, the packet pointer is the left operand) -> (branch where the range holds, right open)
    PACKET_CHECKS = {
        (BPF_JGT, True): ("fall", False), (BPF_JLT, True): ("taken", True),
        (BPF_JGE, True): ("fall", True), (BPF_JLE, True): ("taken", False),
        (BPF_JGT, False): ("taken", True), (BPF_JLT, False): ("fall", False),
        (BPF_JGE, False): ("taken", False), (BPF_JLE, False): ("fall", True),
    }

    def packet_compare(self, pc: int, insn: Insn, state: State, lhs: tuple, rhs: tuple) -> list[tuple[int, State]]:
        """``if pkt(+N) <op> data_end`` (or reversed): the range N proves, on the branch where it holds.

        try_match_pkt_pointers + find_good_pkt_pointers: every packet pointer
        (they all share the verifier's id 0 here) gets ``range = max(range,
        N)``, N adjusted by the profile for the right-open forms, none when N
        is negative or (right open) zero.  Anything else that compares
        pointers is refused (the kernel is more lenient; this checker only
        needs the bounds check).
        """
        pair = {lhs[0], rhs[0]}
        if insn.cls != BPF_JMP or pair != {"pkt", "pkt_end"} or (insn.op, lhs[0] == "pkt") not in self.PACKET_CHECKS:
            raise Refused(pc, f"R{insn.dst} pointer comparison prohibited")
        pkt = lhs if lhs[0] == "pkt" else rhs
        branch, right_open = self.PACKET_CHECKS[(insn.op, lhs[0] == "pkt")]
        target = isa.jump_target(pc, insn)
        new_range = pkt[1] + (self.profile.verifier_pkt_range_open_adjust if right_open else 0)
        proven = state
        if pkt[1] > 0 or (pkt[1] == 0 and not right_open):
            regs = tuple(("pkt", r[1], max(r[2], new_range)) if r[0] == "pkt" else r for r in state.regs)
            proven = State(regs, state.stack)
        if branch == "fall":
            return [(pc + 1, proven), (target, state)]
        return [(pc + 1, state), (target, proven)]

    def after_call(self, state: State, r0: tuple) -> State:
        regs = (r0,) + (UNINIT,) * 5 + state.regs[6:]
        return State(regs, state.stack)

    def helper(self, pc: int, insn: Insn, state: State, fn_start: int, sites: dict[int, TailCallSite]) -> State:
        proto = HELPER_PROTOS.get(insn.imm)
        if proto is None:
            raise Refused(pc, f"unknown func #{insn.imm}")
        args, result = proto
        mapdef: MapDef | None = None
        for reg, kind in enumerate(args, start=1):
            value = self.read(state, reg, pc)
            if kind == "scalar":
                self.read_scalar(state, reg, pc)
            elif kind == "ctx":
                if value != CTX:
                    raise Refused(pc, f"R{reg} type={value[0]} expected=ctx")
            elif kind in ("map_data", "prog_array"):
                if value[0] != "map":
                    raise Refused(pc, f"R{reg} type={value[0]} expected=map_ptr")
                mapdef = self.maps[value[1]]
                if (mapdef.kind == "prog_array") != (kind == "prog_array"):
                    raise Refused(pc, f"cannot pass map_type {mapdef.kind} into func#{insn.imm}")
            else:  # key / value: initialised stack bytes
                assert mapdef is not None
                if value[0] != "fp":
                    raise Refused(pc, f"R{reg} type={value[0]} expected=fp")
                size = mapdef.key_size if kind == "key" else mapdef.value_size
                at = value[1]
                if at < -MAX_BPF_STACK or at + size > 0:
                    raise Refused(pc, f"invalid indirect access to stack R{reg} off={at} size={size}")
                bits = stack_bits(at, size)
                if state.stack & bits != bits:
                    raise Refused(pc, f"invalid indirect read from stack R{reg} off {at}+0 size {size}")
        if insn.imm == isa.BPF_FUNC_tail_call:
            assert mapdef is not None
            key = state.regs[3][1]
            direct = key is not None and key_in_range(self.profile, key, mapdef.max_entries)
            sites[pc] = TailCallSite(pc, mapdef.name, key, fn_start != 0, direct)
            # The tail-called program may have moved the packet (bpf_xdp_adjust_head...): since
            # v6.13 the verifier forgets packet pointers here; this checker does on every profile.
            after = self.after_call(state, UNINIT_AFTER_TAIL_CALL)
            return State(tuple(UNINIT if r[0] in PACKET_KINDS else r for r in after.regs), after.stack)
        if result == "value_or_null":
            assert mapdef is not None
            return self.after_call(state, ("value_or_null", mapdef.name))
        if insn.imm == isa.BPF_FUNC_get_smp_processor_id:
            return self.after_call(state, scalar(known_cpu_id(self.profile)))
        return self.after_call(state, SCALAR)


def written_registers(insn: Insn) -> set[int]:
    """Registers an instruction writes (for the loop rule)."""
    cls = insn.cls
    if cls in (isa.BPF_ALU, BPF_ALU64, BPF_LDX, BPF_LD):
        return {insn.dst}
    if cls == BPF_STX and insn.mode == BPF_ATOMIC:
        if insn.imm == BPF_CMPXCHG:
            return {0}
        return {insn.src} if insn.imm & BPF_FETCH else set()
    if insn.opcode == isa.CALL_OPCODE:
        return {0, 1, 2, 3, 4, 5}
    return set()


# ---------------------------------------------------------------------------
def _profile(profile: str | Profile) -> Profile:
    return profile if isinstance(profile, Profile) else get_profile(profile)


def _check_maps(maps: Iterable[MapDef]) -> list[CheckError]:
    errors = []
    seen: set[str] = set()
    for m in maps:
        if m.name in seen:
            errors.append(CheckError(None, None, f"duplicate map {m.name!r}"))
        seen.add(m.name)
        if m.kind not in MAP_KINDS:
            errors.append(CheckError(None, None, f"map {m.name!r}: unknown kind {m.kind!r}"))
        elif m.kind in ("array", "prog_array") and m.key_size != 4:
            errors.append(CheckError(None, None, f"map {m.name!r}: {m.kind} keys are 4 bytes"))
        elif m.kind == "prog_array" and m.value_size != 4:
            errors.append(CheckError(None, None, f"map {m.name!r}: prog_array values are 4 bytes"))
        if m.max_entries < 1 or m.key_size < 1 or m.value_size < 1:
            errors.append(CheckError(None, None, f"map {m.name!r}: sizes must be positive"))
    return errors


def _check_events(s: Scenario) -> list[CheckError]:
    errors = []
    if s.prog_type not in PROG_TYPES:
        errors.append(CheckError(None, None, f"unknown program type {s.prog_type!r} (known: {', '.join(PROG_TYPES)})"))
    maps = {m.name: m for m in s.maps}
    progs = {p.name for p in s.programs}
    upfront, explicit = s.load_order()
    loaded = set(upfront)
    for i, ev in enumerate(s.events):
        where = f"event {i}"
        if isinstance(ev, Run | Load) and ev.prog not in progs:
            errors.append(CheckError(None, None, f"{where}: unknown program {ev.prog!r}"))
        elif isinstance(ev, Load):
            if ev.prog in loaded:
                errors.append(CheckError(None, None, f"{where}: program {ev.prog!r} is loaded twice"))
            loaded.add(ev.prog)
        elif isinstance(ev, Run) and ev.prog not in loaded:
            errors.append(CheckError(None, None, f"{where}: program {ev.prog!r} runs before it is loaded"))
        elif isinstance(ev, Run) and s.prog_type == PROG_XDP and xdp.packet_length_error(len(ev.mem)):
            errors.append(CheckError(None, None, f"{where}: {xdp.packet_length_error(len(ev.mem))}"))
        elif isinstance(ev, Update | Delete):
            mapdef = maps.get(ev.map)
            if mapdef is None:
                errors.append(CheckError(None, None, f"{where}: unknown map {ev.map!r}"))
            elif isinstance(ev, Update) and mapdef.kind == "prog_array" and ev.value not in progs:
                errors.append(CheckError(None, None, f"{where}: unknown program {ev.value!r} in {ev.map}"))
            elif isinstance(ev, Update) and mapdef.kind != "prog_array" and not isinstance(ev.value, bytes):
                errors.append(CheckError(None, None, f"{where}: {ev.map} takes bytes, not a program"))
    return errors


def mem_bounds(s: Scenario) -> dict[str, int]:
    """Context bytes each program may rely on: the smallest ``mem`` of the runs that can reach it.

    A run reaches its program and, through tail calls, every program that is
    ever put into a prog array the reached programs load (an over-approximation:
    slot contents change between runs).  Programs no run reaches get no limit.
    """
    prog_arrays = {m.name for m in s.maps if m.kind == "prog_array"}
    members: dict[str, set[str]] = {name: set() for name in prog_arrays}
    for ev in s.events:
        if isinstance(ev, Update) and ev.map in members and isinstance(ev.value, str):
            members[ev.map].add(ev.value)
    uses = {p.name: {m for m in p.map_names if m in prog_arrays} for p in s.programs}
    bounds: dict[str, int] = {}
    for ev in s.events:
        if not isinstance(ev, Run):
            continue
        todo, seen = [ev.prog], {ev.prog}
        while todo:
            name = todo.pop()
            bounds[name] = min(bounds.get(name, len(ev.mem)), len(ev.mem))
            for m in uses.get(name, ()):
                for target in members[m] - seen:
                    seen.add(target)
                    todo.append(target)
    return bounds


UNLIMITED_MEM = 1 << 30


def check_program(program: Program, s: Scenario, profile: str | Profile,
                  bounds: dict[str, int] | None = None) -> list[CheckError]:
    """Errors of one program of ``s`` (empty: the verifier would accept it)."""
    mem_len = (mem_bounds(s) if bounds is None else bounds).get(program.name, UNLIMITED_MEM)
    checker = ProgramChecker(program, {m.name: m for m in s.maps}, mem_len, _profile(profile), s.prog_type)
    try:
        checker.run()
    except Refused as exc:
        return [CheckError(program.name, exc.pc, exc.message)]
    return []


def tail_call_sites(program: Program, s: Scenario, profile: str | Profile) -> list[TailCallSite]:
    """The tail-call sites of a valid program, with their map and (constant) key."""
    mem_len = mem_bounds(s).get(program.name, UNLIMITED_MEM)
    checker = ProgramChecker(program, {m.name: m for m in s.maps}, mem_len, _profile(profile), s.prog_type)
    try:
        return checker.run()
    except Refused:
        return []


def check_scenario(s: Scenario, profile: str | Profile = "linux-6.1") -> list[CheckError]:
    """Everything that would keep ``s`` from loading and running as written (valid iff empty)."""
    prof = _profile(profile)
    errors = _check_maps(s.maps)
    names: set[str] = set()
    for prog in s.programs:
        if prog.name in names:
            errors.append(CheckError(prog.name, None, "duplicate program name"))
        names.add(prog.name)
    errors += _check_events(s)
    if errors:
        return errors
    bounds = mem_bounds(s)
    for prog in s.programs:
        errors += check_program(prog, s, prof, bounds)
    return errors
