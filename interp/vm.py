"""The interpreter's machine: the run loop, bpf-to-bpf frames and tail calls.

Kernel semantics (kernel/bpf/core.c ``___bpf_prog_run``; RFC 9669):

* A run starts the program at slot 0 with R10 = frame 0's frame pointer and
  R1 = the context: in an xdp scenario a read-only ``struct xdp_md`` whose
  ``data``..``data_end`` is the run's ``mem`` (:mod:`bpfdiff.xdp`), every other
  register 0 (the verifier refuses reading them); in a raw scenario the mem
  region itself, with R2 = its length.
* ``call`` to a subprogram pushes a frame: the callee runs with a new
  512-byte stack (R10 512 bytes lower), R1-R5 as passed, R6-R9 restored for
  the caller on return.  A program's ninth frame faults (FAULT_CALL_DEPTH:
  the verifier's limit, counted from where the program was entered); a
  program entered by a tail call from a subprogram nests on top of it, up to
  ``RUNTIME_FRAMES``, beyond which the run overflows (FAULT_STACK_OVERFLOW).
* ``call bpf_tail_call`` (R2 = prog array, R3 = index), in the kernel's order:
  index (u32) >= max_entries -> fall through; the counter at the profile's
  limit -> fall through; then the counter goes up -- *before* the slot is
  read when the profile's ``tail_call_counts_empty_slot`` says so, so that a
  call through an empty slot counts too (core.c ``JMP_TAIL_CALL`` until
  3733f4be2870: ``tail_call_cnt++`` precedes ``if (!prog) goto out``; the x86
  JIT up to 6.9 stores the incremented counter before loading
  ``ptrs[index]``, and its direct sites count before the patchable nop/jmp),
  else only once a program is found (the v6.10+ JIT) --; empty slot -> fall through;
  otherwise the target runs from slot 0 *in place of the current frame*:
  registers unchanged, R10 unchanged and the frame's stack reused (both
  kernel engines do that: the interpreter keeps its C stack buffer, the JIT
  jumps past the target's stack setup), R0 left as it was on fall-through.
  When the target exits inside a subprogram frame it returns to that
  subprogram's caller.
* Tail calls from subprograms (profiles with ``tail_calls_in_subprogs``):
  ``subprog_counter == "shared"``, the specification and every profile's
  rule, keeps one counter for the whole run: at most 33 tail calls whatever
  the call hierarchy.  What-if models for the oracle's probes: ``"copy"``
  gives the callee the caller's current count and drops the callee's
  increments on return (what the x86 JIT did from 5.10 to 6.9, passing the
  count by value in rax -- fixed by 116e04ba1459); ``"reset"`` starts every
  callee at zero.
* At most ``budget`` instructions run; then the run ends with TIMEOUT.

``RunOutcome.tail_calls`` is the number of tail calls *taken* (programs
entered by a tail call, ``len(trace) - 1``), not the kernel's counter, which
also counts calls through empty slots.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bpfdiff.engine import EXIT, FAULT, FAULT_CALL_DEPTH, FAULT_STACK_OVERFLOW, FAULT_UNSUPPORTED, TIMEOUT
from bpfdiff.helpers import HelperFault, Prandom, call_helper
from bpfdiff.isa import MAX_CALL_FRAMES, Program
from bpfdiff.maps import ProgArrayMap
from bpfdiff.profiles import Profile
from bpfdiff.scenario import DEFAULT_PROG_TYPE, PROG_XDP

from .decode import Closure, Exit, TailCall, decoded
from .memory import CTX_BASE, RUNTIME_FRAMES, Memory, MemoryFault, frame_pointer

M64 = (1 << 64) - 1
M32 = 0xFFFFFFFF

# After a subprogram returns, does the caller get back its own count?
RESTORE_COUNT_ON_RETURN = {"copy": True, "shared": False, "reset": True}
# Does a subprogram start with a zero count?  ("reset" is no kernel's design:
# it is the what-if model of the counter lost across a call -- the x86
# "tailcall infinite loop" fixes -- that the oracle's signature probe uses.)
RESET_COUNT_AT_CALL = {"copy": False, "shared": False, "reset": True}


class CallDepthFault(HelperFault):
    def __init__(self, reason: str) -> None:
        super().__init__(FAULT_CALL_DEPTH, reason)


@dataclass(slots=True)
class Frame:
    """What a bpf-to-bpf call saves for its caller."""

    prog: str
    code: list[Closure]
    return_pc: int
    callee_saved: tuple[int, int, int, int]   # R6..R9
    frame_pointer: int
    tail_call_count: int
    entry_depth: int                          # the caller's program was entered at this depth


@dataclass(slots=True)
class RunOutcome:
    """The part of a RunResult the machine produces (the engine adds maps and mem)."""

    r0: int
    exit: str
    tail_calls: int
    trace: tuple[str, ...]
    fault_kind: str | None = None
    fault_pc: int | None = None
    fault_prog: str | None = None
    fault_reason: str | None = None


@dataclass
class Machine:
    """State shared by the closures of every program of one scenario."""

    profile: Profile
    mem: Memory
    programs: dict[str, Program]                 # loaded programs, by name
    map_pointer: dict[str, int] = field(default_factory=dict)   # lddw map:NAME
    map_value: dict[str, int] = field(default_factory=dict)     # lddw map_value:NAME (value 0)
    tail_call_limit_bug: bool = False            # planted bug "interp-tail-call-limit"
    prog_type: str = DEFAULT_PROG_TYPE           # what R1 is (bpfdiff.scenario.PROG_TYPES)
    # A tail call found an empty slot under the limit in some run: the one place where the
    # profile's tail_call_counts_empty_slot makes a difference (InterpEngine.unaffected_profile_fields)
    empty_slot_reached: bool = False
    # per-run state
    frames: list[Frame] = field(default_factory=list)
    prog: str = ""
    code: list[Closure] = field(default_factory=list)
    tail_call_count: int = 0
    entry_depth: int = 0        # frame depth at which the running program was entered

    # -- called from closures ---------------------------------------------------
    def call_helper(self, helper_id: int, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        return call_helper(self.mem, helper_id, r1, r2, r3, r4, r5)

    def call(self, r: list, target: int, return_pc: int) -> int:
        depth = len(self.frames) + 1
        # The verifier's limit is per program: frames since the running program was entered.
        if depth - self.entry_depth >= MAX_CALL_FRAMES:
            raise CallDepthFault(f"call to slot {target} would need frame {depth - self.entry_depth + 1} "
                                 f"of {self.prog} (max {MAX_CALL_FRAMES})")
        if depth >= RUNTIME_FRAMES:
            raise HelperFault(FAULT_STACK_OVERFLOW, f"call to slot {target} would nest {depth + 1} frames: "
                              "tail calls from subprograms that never stop")
        self.frames.append(Frame(self.prog, self.code, return_pc, (r[6], r[7], r[8], r[9]), r[10],
                                 self.tail_call_count, self.entry_depth))
        if RESET_COUNT_AT_CALL[self.profile.subprog_counter]:
            self.tail_call_count = 0
        r[10] = frame_pointer(depth)
        self.mem.set_stack_depth(depth)
        return target

    # -- the run loop -------------------------------------------------------------
    def run(self, prog_name: str, mem: bytes, budget: int, prandom: Prandom) -> RunOutcome:
        m = self.mem
        r = [0] * 11
        if self.prog_type == PROG_XDP:
            m.set_xdp(mem)
        else:
            m.set_ctx(mem)
            r[2] = len(mem)
        m.reset_stack()
        m.prandom = prandom
        r[1], r[10] = CTX_BASE, frame_pointer(0)
        self.frames = []
        self.tail_call_count = 0
        self.entry_depth = 0
        self.prog = prog_name
        code = self.code = decoded(self.programs[prog_name])
        trace = [prog_name]
        taken = 0
        pc = 0
        remaining = budget
        i = -1
        while True:
            try:
                for i in range(remaining):  # noqa: B007 - i counts the executed slots on a transfer
                    pc = code[pc](r, self)
                return RunOutcome(r[0], TIMEOUT, taken, tuple(trace))
            except Exit:
                remaining -= i + 1
                if not self.frames:
                    return RunOutcome(r[0], EXIT, taken, tuple(trace))
                frame = self.frames.pop()
                r[6], r[7], r[8], r[9] = frame.callee_saved
                r[10] = frame.frame_pointer
                m.set_stack_depth(len(self.frames))
                if RESTORE_COUNT_ON_RETURN[self.profile.subprog_counter]:
                    self.tail_call_count = frame.tail_call_count
                self.entry_depth = frame.entry_depth
                self.prog, code, pc = frame.prog, frame.code, frame.return_pc
                self.code = code
            except TailCall:
                remaining -= i + 1
                try:
                    target = self._tail_call_target(r)
                except HelperFault as fault:
                    return self._fault(r, fault, pc, taken, trace)
                if target is None:
                    pc += 1
                    continue
                taken += 1
                trace.append(target)
                self.prog = target
                self.entry_depth = len(self.frames)
                code = self.code = decoded(self.programs[target])
                pc = 0
            except HelperFault as fault:
                return self._fault(r, fault, pc, taken, trace)

    def _tail_call_target(self, r: list) -> str | None:
        """The program a tail call enters, or None to fall through (kernel order of checks)."""
        if self.frames and not self.profile.tail_calls_in_subprogs:
            raise HelperFault(FAULT_UNSUPPORTED, "tail call from a subprogram (the profile's verifier refuses "
                              "tail calls in programs with bpf-to-bpf calls)")
        prog_array = self.mem.map_at(r[2])
        if prog_array is None:
            # Both kernel engines read max_entries through R2 first: a bad pointer faults there.
            raise MemoryFault(f"bpf_tail_call: R2=0x{r[2]:x} is not a map (read of its max_entries)")
        if not isinstance(prog_array, ProgArrayMap):
            raise HelperFault(FAULT_UNSUPPORTED, f"bpf_tail_call through {prog_array.kind} map "
                              f"{prog_array.name!r} (the verifier wants a prog_array)")
        index = r[3] & M32
        if index >= prog_array.max_entries:
            return None
        count = self.tail_call_count + 1 if self.tail_call_limit_bug else self.tail_call_count
        if not self.profile.allows_tail_call(count):
            return None
        target = prog_array.get(index)
        # Counted before the slot is read where the kernel did so: a call through
        # an empty slot then uses up one of the 33 too (core.c JMP_TAIL_CALL and
        # the x86 JIT sequences up to 6.9).
        if target is not None:
            self.tail_call_count += 1
        else:
            self.empty_slot_reached = True
            if self.profile.tail_call_counts_empty_slot:
                self.tail_call_count += 1
        return target

    def _fault(self, r: list, fault: HelperFault, pc: int, taken: int, trace: list[str]) -> RunOutcome:
        return RunOutcome(r[0], FAULT, taken, tuple(trace), fault.kind, pc, self.prog, fault.reason)
