"""Scenario generation: valid-by-construction BPF programs plus map event sequences.

One generator, several drivers.  Every decision goes through a small
:class:`Draw` interface (``integer``, ``choice``, ``boolean``), so the same code
builds a scenario from

* a seed (:class:`RandomDraw` over ``random.Random``; ``bpfdiff fuzz --seed``),
* a byte string (:class:`ByteDraw`; the atheris harness and its crash
  artifacts: once the bytes run out every draw takes its minimal choice, so
  *any* byte string yields a valid scenario),
* hypothesis (``bpfdiff.fuzz.strategies``: each draw is a hypothesis draw, so
  shrinking moves every choice towards its minimal value and the result stays
  valid by construction).

A scenario is a pure function of the draws: same seed or bytes, same scenario.

What the programs look like (the checker, :mod:`bpfdiff.fuzz.checker`, accepts
all of them -- ``tests/test_fuzz_generate.py`` asserts it over many seeds):

* the programs are XDP programs (every scenario's ``prog_type`` is "xdp"):
  every function starts with ``mov r6, r1``: R6 holds the ``struct xdp_md``
  pointer for the whole function (the R1 of tail calls and subprogram calls,
  and loads of its scalar fields); R6 is never written again, R10 never;
* packet access the way XDP programs do it: the first block that needs the
  packet loads ``data`` and ``data_end`` from R6 and checks ``data + LEN >
  data_end`` (LEN: the scenario's packet length, that of every run, so the
  check never fails at run time but proves the range to the verifier); the
  packet pointer stays in one of R7-R9, reads and writes go through it;
* scalar registers are tracked: only initialised scalars are read, and R0-R5
  are forgotten after every call (helpers, ``call local`` and tail calls that
  fall through);
* stack slots are read only after this function wrote them, aligned;
* loops are counter loops ``mov rC, a; body; add rC, 1; jlt rC, b, body`` with
  a straight-line body that does not write rC (the checker's loop rule);
* map values are used only inside the ``jeq r0, 0`` guard of a lookup;
* pointers (packet pointers included) never reach R0, the maps or the
  packet: the engines lay memory out differently, so a leaked address would
  be a false divergence;
* every live scalar reaches what the engines compare: each exit folds them all
  into R0 (64-bit ``xor``/``add``/``sub``, then ``r0 ^= r0 >> 32`` for the
  kernel engines' 32-bit R0), and what a helper, a subprogram or a fetching
  atomic returned is stored to the packet before a call would clobber it;
* *shapes* on top of the blocks: far jumps (a branch over padding, if/else
  with a ``ja``, loops with long bodies, an early exit that every later exit
  jumps back over) whose x86 displacements are aimed at the JIT's short/long
  boundary (fixed-length padding, see ``exact_padding``), and operand pairs
  whose 32-bit and 64-bit readings differ (``width_pair``: jset, jmp32, div,
  mod, shifts), loaded through the stack so that the verifier does not know
  them and keeps the branches;
* branches the verifier decides at load time (dead-code removal makes the
  JIT run what the verifier believes): a ``const volatile``-style knob
  computed from constants (narrowed to u32, shifted) compared with a value
  at or next to its own, and protocol dispatch (``if x == K1 .. else if x >
  M ..``) on a packet field, whose later tests the verifier decides from what
  each earlier test told it;
* memory the oracle compares written the ways real code does: a map value's
  field updated in place through R1-R5 (``v->f += x``, byte stores from
  rdi/rsi included), ``x = v ? v->f : K`` leaving the lookup's outcome live,
  array values of any multiple of 4 bytes (the kernel rounds elements up to
  8), 4-byte keys at ``fp-8k+4`` as clang places a ``u32`` (stack depths not
  a multiple of 8), a compare-and-swap on a stack slot and atomics whose slot
  is read back;
* tail-call sites: ``mov r1, r6; mov r3, KEY; lddw r2, map:PA; call 12``
  (constant key: a direct site when KEY < max_entries) or ``mov r3, rX``
  (register key: indirect); bpf-to-bpf calls pass the context in R1 and one
  scalar in R2; tail calls inside subprograms only where the profile allows
  mixing them (linux-5.5 refuses tail calls in any program with subprograms).

Scenario *motifs* steer the structure towards the shapes real tail-call bugs
need (self loops that run into the counter limit, delete/retarget between
runs, late loads whose slots are already filled, a chain that tail-calls from a
subprogram after the counter is already non-zero); events are drawn as
*episodes* (fill then run, delete then run, retarget then run, ...).
"""

from __future__ import annotations

import os
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Protocol, TypeVar

from bpfdiff import isa, xdp
from bpfdiff.isa import (
    BPF_ADD,
    BPF_ALU,
    BPF_ALU64,
    BPF_AND,
    BPF_ARSH,
    BPF_ATOMIC,
    BPF_B,
    BPF_CMPXCHG,
    BPF_DIV,
    BPF_DW,
    BPF_END,
    BPF_FETCH,
    BPF_H,
    BPF_JA,
    BPF_JEQ,
    BPF_JGE,
    BPF_JGT,
    BPF_JLE,
    BPF_JLT,
    BPF_JMP,
    BPF_JMP32,
    BPF_JNE,
    BPF_JSET,
    BPF_JSGE,
    BPF_JSGT,
    BPF_JSLE,
    BPF_JSLT,
    BPF_K,
    BPF_LDX,
    BPF_LSH,
    BPF_MEM,
    BPF_MOD,
    BPF_MOV,
    BPF_MUL,
    BPF_NEG,
    BPF_OR,
    BPF_RSH,
    BPF_ST,
    BPF_STX,
    BPF_SUB,
    BPF_TO_BE,
    BPF_TO_LE,
    BPF_W,
    BPF_X,
    BPF_XCHG,
    BPF_XOR,
    CALL_OPCODE,
    CONDITIONAL_JUMPS,
    EXIT_OPCODE,
    Insn,
    Program,
)
from bpfdiff.memo import Memo
from bpfdiff.profiles import DEFAULT_PROFILE, Profile, get_profile
from bpfdiff.scenario import BPF_ANY, PROG_XDP, Delete, Event, Load, MapDef, Run, Scenario, Update, key_u32
from bpfdiff.verifier import track_const_alu

T = TypeVar("T")

GENERATOR_VERSION = "6"      # 2: XDP programs (packet through data/data_end); 3: the hierarchy motif;
                             # 4: every live register folded into R0, far jumps, width-confusing operand pairs
                             # 5: array values of any multiple of 4, keys at fp-4, lookups with a default,
                             #    read-modify-write of map values, compare-and-swap with the slot read back
                             # 6: event sequences up to 24 long (were 12); a seed's programs are unchanged


# ---------------------------------------------------------------------------
# Draw drivers
# ---------------------------------------------------------------------------
class Draw(Protocol):
    """The only source of decisions for the generator."""

    def integer(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi]; ``lo`` is the minimal (shrunk) choice."""

    def choice(self, seq: Sequence[T]) -> T:
        """An element of ``seq``; the first one is the minimal choice."""

    def boolean(self, p: float = 0.5) -> bool:
        """True with probability ``p``; False is the minimal choice."""


class RandomDraw:
    """Decisions from a seeded ``random.Random``.

    ``integer`` and ``choice`` draw as ``Random.randint`` and ``Random.randrange`` do -- ``lo``
    plus ``_randbelow(n)``, which for ``random.Random`` itself is CPython's
    ``_randbelow_with_getrandbits``: ``getrandbits(n.bit_length())`` until below ``n`` -- written
    out here because the generator makes ~350 draws a scenario and the library's argument checks
    cost more than the draw.  The same seed gives the same stream, so the same scenarios.  A
    subclass of ``Random`` may draw differently: its own ``randint``/``randrange`` are used.
    """

    def __init__(self, seed: int | random.Random) -> None:
        self.rng = seed if isinstance(seed, random.Random) else random.Random(seed)
        self._getrandbits = self.rng.getrandbits
        self._random = self.rng.random
        if type(self.rng) is not random.Random:
            self.integer = self.rng.randint                                      # type: ignore[method-assign]
            self.choice = lambda seq: seq[self.rng.randrange(len(seq))]        # type: ignore[method-assign]

    def integer(self, lo: int, hi: int) -> int:
        n = hi - lo + 1
        if n <= 0:
            raise ValueError(f"empty range for randint({lo}, {hi})")
        getrandbits = self._getrandbits
        k = n.bit_length()
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return lo + r

    def choice(self, seq: Sequence[T]) -> T:
        n = len(seq)
        if not n:
            raise ValueError("empty range for randrange()")
        getrandbits = self._getrandbits
        k = n.bit_length()
        r = getrandbits(k)
        while r >= n:
            r = getrandbits(k)
        return seq[r]

    def boolean(self, p: float = 0.5) -> bool:
        return self._random() < p


class ByteDraw:
    """Decisions consumed from a byte string, libFuzzer style.

    Each integer takes just enough bytes for its range; once the bytes are
    exhausted every decision is the minimal one, so the scenario is still
    complete and valid (and short inputs give small scenarios).
    """

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def _take(self, nbytes: int) -> int | None:
        if self.pos >= len(self.data):
            return None
        chunk = self.data[self.pos:self.pos + nbytes]
        self.pos += nbytes
        return int.from_bytes(chunk, "little")

    def integer(self, lo: int, hi: int) -> int:
        span = hi - lo
        if span <= 0:
            return lo
        raw = self._take((span.bit_length() + 7) // 8)
        return lo if raw is None else lo + raw % (span + 1)

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.integer(0, len(seq) - 1)]

    def boolean(self, p: float = 0.5) -> bool:
        raw = self._take(1)
        return raw is not None and raw < p * 256

    @property
    def exhausted(self) -> bool:
        return self.pos >= len(self.data)


def weighted(draw: Draw, table: Sequence[tuple[T, int]]) -> T:
    """Pick from ``(item, weight)`` pairs; the first item is the minimal choice."""
    total = sum([w for _, w in table])
    pick = draw.integer(0, total - 1)
    for item, w in table:
        if pick < w:
            return item
        pick -= w
    return table[-1][0]


# ---------------------------------------------------------------------------
# Options and constant tables
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class GenOptions:
    """Size knobs; defaults keep scenarios small and fast to run."""

    max_programs: int = 5
    max_blocks: int = 7             # blocks per function body
    max_subprogs: int = 2
    max_subprog_depth: int = 2      # nested call local levels below main
    # A scenario's fixed cost (generation, the verifier model, xlate, the JIT compile, translation:
    # ~7.6 ms CPU on linux-6.1) is ~30 engine runs' worth (~0.25 ms each), so more runs of the same
    # programs, with fresh inputs and slot changes between them, are cheap.  Measured with the
    # mutation benchmark's 14 slowest-found mutations (seed 0, linux-6.1 and 6.12): scenarios to the
    # first finding summed 7,736 with 12 events, 5,907 with 24 (the data-path bugs need the right
    # inputs more than another program), 4,876 with 48; weighted by each setting's CPU per scenario
    # (x1.0, x1.16, x1.5) 24 is the cheapest.  A bug that needs a rare program shape (no run of a
    # common program shows it) costs up to 16% more CPU to find: fewer programs a second.
    max_events: int = 24
    max_prog_arrays: int = 3
    max_loop_trips: int = 12
    # ISA v4 (sdiv/smod, movsx, 64-bit bswap): None = what the profile's kernel has
    # (Profile.isa_v4); the verifier model refuses them on kernels before 6.6.
    cpu_v4: bool | None = None
    mem_sizes: tuple[int, ...] = (16, 32, 64)


# Registers a function may use for scalars: R6 is the context, R10 the frame
# (and one of R7-R9 the packet pointer, once a function checked the packet).
SCALAR_REGS = (0, 1, 2, 3, 4, 5, 7, 8, 9)
CALLER_SAVED = frozenset({0, 1, 2, 3, 4, 5})
CTX_REG = 6
PACKET_REGS = (7, 8, 9)
CTX_SCALAR_FIELDS = (xdp.XDP_MD_INGRESS_IFINDEX, xdp.XDP_MD_RX_QUEUE_INDEX)
# enum xdp_action, for the packet check's exit: XDP_ABORTED, DROP, PASS, TX, REDIRECT
XDP_ACTIONS = (0, 1, 2, 3, 4)
FP = isa.BPF_REG_FP

CORNER_IMM32 = (0, 1, -1, 2, 0x7FFFFFFF, -0x80000000, 31, 32, 63, 64, 0xFF, 0xFFFF, -2, 7, 0x10000, -0x7FFFFFFF)
CORNER_IMM64 = (
    0, 1, 0xFFFFFFFF, 0xFFFFFFFF_FFFFFFFF, 0x80000000_00000000, 0x7FFFFFFF_FFFFFFFF,
    0xFFFFFFFF_00000000, 0x00000001_00000001, 0x80000000, 0x1_00000000, 0xDEADBEEF_CAFEBABE,
)
# Shift amounts that matter for each width (the verifier refuses imm >= width).
SHIFT_IMM = {32: (0, 1, 31, 30, 16, 8, 15, 24), 64: (0, 1, 63, 62, 31, 32, 33, 48, 16)}

# ALU operations with a register or immediate source (NEG and END apart).
ALU_BINOPS = (BPF_ADD, BPF_SUB, BPF_MUL, BPF_DIV, BPF_OR, BPF_AND, BPF_LSH, BPF_RSH,
              BPF_MOD, BPF_XOR, BPF_MOV, BPF_ARSH)
SHIFT_OPS = frozenset({BPF_LSH, BPF_RSH, BPF_ARSH})
DIV_OPS = frozenset({BPF_DIV, BPF_MOD})
ALU_CLASSES = (BPF_ALU64, BPF_ALU)
JMP_CLASSES = (BPF_JMP, BPF_JMP32)
COND_OPS = tuple(sorted(CONDITIONAL_JUMPS))
MEM_SIZES = (BPF_DW, BPF_W, BPF_H, BPF_B)
ATOMIC_SIMPLE = (BPF_ADD, BPF_OR, BPF_AND, BPF_XOR)
# Immediates of a branch on a packet value: splits of byte, half-word and word values.
BRANCH_IMM = (0x80, 0x7F, 1, 0x40, 0xFE, 0x8000, 0x7FFF, 0xFFFE, 0x80000000, 0x7FFFFFFE, -0x80000000, 0, -1)
M32 = 0xFFFFFFFF

# Operand pairs (a, b) whose 32-bit and 64-bit readings differ, and the operations that tell them
# apart (b is the source: the divisor, the shift count, the jump's right-hand side):
#   and_hi_only      the low halves AND to zero, the high halves do not (jset, and)
#   lo_equal         equal low halves, different high halves (jeq, jne, unsigned orders, sub, xor, mul)
#   sign_lo          the low half of a is negative as an s32, a itself positive as an s64 (signed orders)
#   lo_zero_divisor  b's low half is zero, its high half is not (32-bit: division by zero; 64-bit: not)
#   shift_count      b's high half set, its low half at or beyond the width (masked by the operation width)
WIDTH_PAIR_OPS: dict[str, tuple[tuple[str, int], ...]] = {
    "and_hi_only": (("jmp", BPF_JSET), ("jmp", BPF_JSET), ("alu", BPF_AND)),
    "lo_equal": (("jmp", BPF_JEQ), ("jmp", BPF_JNE), ("jmp", BPF_JGT), ("jmp", BPF_JGE), ("jmp", BPF_JLT),
                 ("jmp", BPF_JLE), ("alu", BPF_SUB), ("alu", BPF_XOR), ("alu", BPF_MUL)),
    "sign_lo": (("jmp", BPF_JSGT), ("jmp", BPF_JSGE), ("jmp", BPF_JSLT), ("jmp", BPF_JSLE)),
    "lo_zero_divisor": (("alu", BPF_DIV), ("alu", BPF_MOD)),
    "shift_count": (("alu", BPF_LSH), ("alu", BPF_RSH), ("alu", BPF_ARSH)),
}
HALF_CORNERS = (1, 0x80000000, M32, 0x7FFFFFFF, 0x10000)


def _half(draw: Draw, nonzero: bool = False) -> int:
    value = draw.choice(HALF_CORNERS) if draw.boolean(0.5) else draw.integer(0, M32)
    return value or (1 if nonzero else 0)


def width_pair(draw: Draw, kind: str) -> tuple[int, int]:
    """An operand pair of ``kind`` (see WIDTH_PAIR_OPS), as two u64."""
    if kind == "and_hi_only":
        a_lo = _half(draw)
        b_lo = ~a_lo & M32 & _half(draw)
        a_hi = _half(draw, nonzero=True)
        b_hi = (a_hi & _half(draw)) | (a_hi & -a_hi)        # keeps a_hi's lowest set bit
        return a_hi << 32 | a_lo, b_hi << 32 | b_lo
    if kind == "lo_equal":
        lo, a_hi = _half(draw), _half(draw)
        return a_hi << 32 | lo, (a_hi ^ _half(draw, nonzero=True)) << 32 | lo
    if kind == "sign_lo":
        a = draw.choice((0, 1, 0x7FFFFFFF)) << 32 | 0x80000000 | draw.integer(0, 0x7FFFFFFF)
        b = _half(draw) << 32 | draw.integer(0, 0x7FFFFFFF)
        return (b, a) if draw.boolean(0.5) else (a, b)
    if kind == "lo_zero_divisor":
        return draw.integer(0, (1 << 64) - 1), _half(draw, nonzero=True) << 32
    if kind == "shift_count":
        count = draw.choice((0, 1, 31, 32, 33, 63, 64, 0xFFFFFFFF))
        return draw.choice(CORNER_IMM64), _half(draw, nonzero=True) << 32 | count
    raise ValueError(f"unknown width pair kind {kind!r}")


# Exact-length padding (exact_padding): 64-bit operations with one x86 encoding length.
PADDING_OPS = (BPF_ADD, BPF_XOR, BPF_SUB, BPF_ADD, BPF_XOR, BPF_AND, BPF_OR)   # mostly bijective

# How the epilogue folds a live register into R0: bijective in each operand (no or/and).
FOLD_OPS = (BPF_XOR, BPF_ADD, BPF_SUB)
HELPERS_NO_ARGS = (isa.BPF_FUNC_get_prandom_u32, isa.BPF_FUNC_get_smp_processor_id)
STACK_SLOTS = 64                    # 8-byte slots in a 512-byte frame


# The generator's instructions, one object per distinct slot.  Generated programs repeat their
# instructions (seeds 0-299 on linux-6.1 build 42,293 slots, 13,439 of them distinct), and an Insn
# is an immutable value whose construction -- a frozen dataclass: twelve object.__setattr__ calls --
# cost about a third of the generator's time.  Nothing tells two equal Insns apart by identity.
# The fields are the whole key (the generator's slots name no map but through lddw_slots).
_SLOTS: Memo[tuple[int, int, int, int, int], Insn] = Memo(1 << 16)
_LDDW_SLOTS: Memo[tuple[int, int, int, str | None], tuple[Insn, Insn]] = Memo(1 << 16)


def slot(opcode: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> Insn:
    """``Insn(opcode, dst, src, off, imm)``, the same object for the same fields."""
    key = (opcode, dst, src, off, imm)
    insn = _SLOTS.get(key)
    if insn is None:
        insn = _SLOTS.remember(key, Insn(opcode, dst, src, off, imm))
    return insn


def lddw_slots(dst: int, value: int, src: int = 0, map: str | None = None) -> tuple[Insn, Insn]:
    """``isa.lddw_pair(dst, value, src, map)``, the same objects for the same arguments."""
    key = (dst, value, src, map)
    pair = _LDDW_SLOTS.get(key)
    if pair is None:
        pair = _LDDW_SLOTS.remember(key, isa.lddw_pair(dst, value, src, map))
    return pair


def jump_over(jump: Insn, skip: int) -> Insn:
    """``jump`` with its offset set to skip ``skip`` slots."""
    return slot(jump.opcode, jump.dst, jump.src, skip, jump.imm)


def alu(cls: int, op: int, dst: int, src: int = 0, imm: int = 0, source: int = BPF_K, off: int = 0) -> Insn:
    return slot(cls | op | source, dst, src, off, imm)


def mov64_imm(dst: int, imm: int) -> Insn:
    return slot(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)


def mov64_reg(dst: int, src: int) -> Insn:
    return slot(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)


def ldx(size: int, dst: int, src: int, off: int) -> Insn:
    return slot(BPF_LDX | BPF_MEM | size, dst, src, off, 0)


def stx(size: int, dst: int, src: int, off: int) -> Insn:
    return slot(BPF_STX | BPF_MEM | size, dst, src, off, 0)


def st(size: int, dst: int, off: int, imm: int) -> Insn:
    return slot(BPF_ST | BPF_MEM | size, dst, 0, off, imm)


def call_helper(helper_id: int) -> Insn:
    return slot(CALL_OPCODE, 0, 0, 0, helper_id)


EXIT = slot(EXIT_OPCODE)


# ---------------------------------------------------------------------------
# Programs
# ---------------------------------------------------------------------------
@dataclass
class Site:
    """A tail-call site a generated program contains."""

    map: str
    key: int | None           # None: register key (indirect)
    in_subprog: bool


@dataclass
class ProgramPlan:
    """What the event planner needs to know about a generated program."""

    name: str
    sites: list[Site] = field(default_factory=list)
    has_subprogs: bool = False
    inner: bool = False             # may sit in the inner prog array (see ScenarioGenerator)
    allow_subprogs: bool = False
    tail_calls: bool = True
    forced: list[tuple[str, int | None]] = field(default_factory=list)      # sites in main
    forced_sub: list[tuple[str, int | None]] = field(default_factory=list)  # sites in a subprogram
    call_twice: bool = False        # main calls its forced subprogram twice (the "hierarchy" motif)
    # never put into a prog array: a program that calls a tail-calling subprogram twice,
    # entered by a tail call from such a subprogram, doubles per level on a JIT that passes
    # the counter by value (2**33 tail calls: a timeout costing a minute, not a new finding)
    no_slot: bool = False


@dataclass
class MapsPlan:
    prog_arrays: list[MapDef]
    data_maps: list[MapDef]
    mem_len: int


class FunctionBuilder:
    """Builds one function (main program or subprogram) block by block."""

    def __init__(self, gen: ScenarioGenerator, plan: ProgramPlan, depth: int, is_subprog: bool,
                 tail_calls: bool, forced_sites: list[tuple[str, int | None]], force_call: bool) -> None:
        self.gen = gen
        self.draw = gen.draw
        self.plan = plan
        self.depth = depth
        self.is_subprog = is_subprog
        self.tail_calls = tail_calls
        self.forced_sites = list(forced_sites)
        self.force_call = force_call
        self.stack_slots = SUBPROG_STACK_SLOTS if plan.allow_subprogs else STACK_SLOTS
        self.insns: list[Insn] = []
        # (index in insns, subprogram number) of call local placeholders
        self.calls: list[tuple[int, int]] = []
        self.scalars: set[int] = set()
        self.stack_bytes: set[int] = set()   # written stack bytes, as negative offsets
        self.regs = SCALAR_REGS              # registers for scalars (all but the packet pointer's)
        self.pkt_reg: int | None = None      # holds `data`, proven for mem_len bytes, once checked
        self.pkt_checks: list[int] = []      # indices of the bounds checks' jumps to the `out` exit
        # registers holding what a helper, a subprogram or a fetching atomic returned, not yet saved
        # (see save_fresh)
        self.fresh: set[int] = set()

    # -- register helpers ---------------------------------------------------
    def scalar(self) -> int:
        """An initialised scalar register, initialising one if there is none."""
        if not self.scalars:
            self.init_reg(self.draw.choice(self.regs))
        return self.draw.choice(sorted(self.scalars))

    def init_reg(self, reg: int) -> None:
        if self.draw.boolean(0.25):
            self.insns.extend(lddw_slots(reg, self.draw.choice(CORNER_IMM64)
                                            if self.draw.boolean(0.7) else self.draw.integer(0, (1 << 64) - 1)))
        else:
            self.insns.append(mov64_imm(reg, self.imm32()))
        self.scalars.add(reg)

    def imm32(self) -> int:
        if self.draw.boolean(0.6):
            return self.draw.choice(CORNER_IMM32)
        return self.draw.integer(-(1 << 31), (1 << 31) - 1)

    def forget_caller_saved(self) -> None:
        self.scalars -= CALLER_SAVED
        self.fresh -= CALLER_SAVED

    def save_fresh(self, lost: frozenset[int] = CALLER_SAVED) -> None:
        """Before a call clobbers ``lost``: store the fresh values there to the packet.

        What a helper or a fetching atomic returned is often dead by the exit
        (the next call clobbers R0-R5; a tail call that is taken drops every
        register), so a wrong value there would never reach what the engines
        compare.  Stored to the packet -- which the oracle compares, the kernel
        engines included -- it does.  No register changes (they may be the
        call's arguments).
        """
        if not self.fresh & self.scalars & lost or not self.draw.boolean(0.85):
            return
        pkt = self.packet()           # may take registers: only what is still live is stored
        for reg in sorted(self.fresh & self.scalars & lost):
            off = 8 * self.draw.integer(0, self.gen.maps.mem_len // 8 - 1)
            self.insns.append(stx(BPF_DW, pkt, reg, off))
        self.fresh -= lost

    def forget_packet_after_call(self, sub: int) -> None:
        """A subprogram that reaches a tail call makes the verifier forget the packet pointers of
        every frame (refused on the real 6.12.117 otherwise; the checker's rule): check it again."""
        if self.pkt_reg is not None and self.gen.profile.verifier_tail_call_forgets_pkt and \
                self.gen.subprog_reaches_tail_call(sub):
            self.pkt_reg = None
            self.regs = SCALAR_REGS

    # -- straight-line ALU ----------------------------------------------------
    def alu_insn(self, avoid: frozenset[int] = frozenset(), new_regs: bool = True) -> Insn | None:
        """One ALU/ALU64 instruction on initialised scalars; None if impossible."""
        draw = self.draw
        cls = draw.choice(ALU_CLASSES)
        width = 64 if cls == BPF_ALU64 else 32
        kind = weighted(draw, (("bin", 12), ("neg", 1), ("end", 1), ("movsx", 1)))
        readable = sorted(self.scalars - avoid)
        if not readable:
            return None
        if kind == "neg":
            return alu(cls, BPF_NEG, draw.choice(readable))
        if kind == "end":
            dst = draw.choice(readable)
            if cls == BPF_ALU64 and not self.gen.options.cpu_v4:
                cls = BPF_ALU
            source = BPF_TO_LE if cls == BPF_ALU64 else draw.choice((BPF_TO_LE, BPF_TO_BE))
            return slot(cls | BPF_END | source, dst, 0, 0, draw.choice((16, 32, 64)))
        op = draw.choice(ALU_BINOPS)
        writable = sorted(set(self.regs) - avoid) if (op == BPF_MOV and new_regs) else readable
        dst = draw.choice(writable)
        if kind == "movsx" and self.gen.options.cpu_v4:
            offs = (8, 16, 32) if cls == BPF_ALU64 else (8, 16)
            return alu(cls, BPF_MOV, dst, draw.choice(readable), source=BPF_X, off=draw.choice(offs))
        off = 1 if (op in DIV_OPS and self.gen.options.cpu_v4 and draw.boolean(0.4)) else 0
        if draw.boolean(0.5):
            # register source: any value, shift counts and divisors included
            return alu(cls, op, dst, draw.choice(readable), source=BPF_X, off=off)
        if op in SHIFT_OPS:
            imm = draw.choice(SHIFT_IMM[width]) if draw.boolean(0.7) else draw.integer(0, width - 1)
        elif op in DIV_OPS:
            imm = draw.choice((-1, 1, 2, 3, 7, 0x7FFFFFFF, -0x80000000, 10))  # K divisor 0 is refused
        else:
            imm = self.imm32()
        return alu(cls, op, dst, imm=imm, off=off)

    def block_alu(self) -> None:
        for _ in range(self.draw.integer(1, 4)):
            insn = self.alu_insn()
            if insn is None:
                self.init_reg(self.draw.choice(self.regs))
                continue
            self.insns.append(insn)
            if insn.op == BPF_MOV:
                self.scalars.add(insn.dst)

    def block_alu32_upper(self) -> None:
        """A 32-bit register-source op on a register with upper bits set, its full 64 bits stored.

        The result must be zero-extended; storing all 64 bits to ``mem`` makes
        a JIT that forgets it visible even when later code would mask it.
        """
        draw = self.draw
        self.packet()              # first: the check may take registers from the scalars
        dst = draw.choice(self.regs)
        self.insns.extend(lddw_slots(dst, draw.choice(CORNER_IMM64[2:]) | (1 << 32)))
        self.scalars.add(dst)
        src = draw.choice(sorted(self.scalars))
        op = draw.choice((BPF_ADD, BPF_SUB, BPF_OR, BPF_AND, BPF_XOR, BPF_MOV, BPF_MUL, BPF_LSH, BPF_RSH, BPF_ARSH))
        self.insns.append(alu(BPF_ALU, op, dst, src, source=BPF_X))
        off = 8 * draw.integer(0, self.gen.maps.mem_len // 8 - 1)
        self.insns.append(stx(BPF_DW, self.packet(), dst, off))

    def block_lddw(self) -> None:
        self.init_reg(self.draw.choice(self.regs))

    def straight(self, count: int, avoid: frozenset[int] = frozenset()) -> list[Insn]:
        """ALU instructions that only write already-initialised registers."""
        out = []
        for _ in range(count):
            insn = self.alu_insn(avoid=avoid, new_regs=False)
            if insn is not None:
                out.append(insn)
        return out

    def block_cond(self) -> None:
        draw = self.draw
        self.scalar()
        body = self.straight(draw.integer(1, 3))
        cls = draw.choice(JMP_CLASSES)
        op = draw.choice(COND_OPS)
        lhs = draw.choice(sorted(self.scalars))
        if draw.boolean(0.5):
            jump = slot(cls | op | BPF_X, lhs, draw.choice(sorted(self.scalars)), len(body), 0)
        else:
            jump = slot(cls | op | BPF_K, lhs, 0, len(body), self.imm32())
        self.insns.append(jump)
        self.insns.extend(body)

    def block_loop(self, long_body: bool = False) -> None:
        draw = self.draw
        counter = draw.choice(self.regs)
        start = draw.integer(0, 3)
        trips = draw.integer(1, self.gen.options.max_loop_trips)
        if not self.scalars - {counter}:
            self.init_reg(draw.choice([r for r in self.regs if r != counter]))
        # the checker's loop rule: the counter's mov comes right before the body
        self.insns.append(mov64_imm(counter, start))
        self.scalars.add(counter)
        avoid = frozenset({counter})
        # the back-edge spans the body, `add rC, 1` and `cmp rC, imm8` (4 bytes each) and the jump
        # itself (2 bytes short, 6 long): bodies of 110..118 bytes are short jumps of -120..-128
        if long_body:
            body = self.padding(draw.integer(256, 384) if draw.boolean(0.15) else draw.integer(104, 124), avoid)
        else:
            body = self.straight(draw.integer(1, 4), avoid=avoid)
        self.insns.extend(body)
        self.insns.append(alu(BPF_ALU64, BPF_ADD, counter, imm=1))
        back = -(len(body) + 2)
        self.insns.append(slot(BPF_JMP | BPF_JLT | BPF_K, counter, 0, back, start + trips))

    # -- far jumps: long blocks around the x86 JIT's short/long jump boundary ------------------------
    # A short jump reaches 127 bytes forward (123 since the convergence fix: the profile's
    # jit_imm8_jmp_max) and 128 back.  Most paddings aim at the boundary: instructions whose x86
    # encodings have one length whatever the registers (PADDING_OPS, see exact_padding) adding up to
    # a chosen number of bytes.  The others are random ALU instructions (about 6 x86 bytes each,
    # 3 to 10 per program), 2 to 60 of them: short jumps, and long ones far beyond the boundary.
    PADDING_ANY = (2, 60)

    def padding(self, target: int | None = None, avoid: frozenset[int] = frozenset()) -> list[Insn]:
        """Straight-line ALU instructions on live registers: what a far jump jumps over.

        ``target``: the x86 bytes to aim at, most of the time exactly.
        """
        draw = self.draw
        if not self.scalars - avoid:
            self.init_reg(draw.choice([r for r in self.regs if r not in avoid]))
        if target is not None and draw.boolean(0.75):
            return self.exact_padding(max(target, 0), avoid)
        return self.straight(draw.integer(*self.PADDING_ANY), avoid)

    def exact_padding(self, nbytes: int, avoid: frozenset[int]) -> list[Insn]:
        """64-bit add/sub/and/or/xor on live registers, ``nbytes`` x86 bytes in all.

        x86-64 encodings (every JIT flavour): with a register source REX.W, opcode, ModRM (3
        bytes); with an immediate that fits in a signed byte REX.W, 0x83, ModRM, imm8 (4); with
        a wider one REX.W, 0x81, ModRM, imm32 (7; 6 for rax, BPF R0, which we do not use there).
        3 and 4 make every length but 1, 2 and 5 (rounded up).
        """
        draw = self.draw
        regs = sorted(self.scalars - avoid)
        wide = [r for r in regs if r != 0]
        out: list[Insn] = []
        left = nbytes + 1 if nbytes in (1, 2, 5) else nbytes
        while left:
            # mostly the 7-byte form: fewer slots for the same distance
            sizes = [(n, w) for n, w in (((7, 6), (4, 1), (3, 1)) if wide else ((4, 1), (3, 1)))
                     if n <= left and left - n not in (1, 2, 5)]
            size = weighted(draw, sizes)
            op = draw.choice(PADDING_OPS)
            if size == 3:
                dst = draw.choice(regs)
                out.append(alu(BPF_ALU64, op, dst, draw.choice([r for r in regs if r != dst] or regs), source=BPF_X))
            elif size == 4:
                out.append(alu(BPF_ALU64, op, draw.choice(regs), imm=draw.integer(-128, 127)))
            else:
                imm = draw.integer(128, 0x7FFFFFFF) * draw.choice((1, -1))
                out.append(alu(BPF_ALU64, op, draw.choice(wide), imm=imm))
            left -= size
        return out

    def forward_target(self) -> int:
        """Bytes for a forward jump: around the profile's largest short displacement, or far beyond."""
        edge = self.gen.profile.jit_imm8_jmp_max
        if self.draw.boolean(0.15):        # False, the minimal choice, stays near the edge
            return self.draw.integer(2 * edge + 2, 3 * edge)
        return self.draw.integer(edge - 8, edge + 8)

    def opaque_scalar(self, size: int | None = None) -> tuple[int, int]:
        """A register loaded from the packet, and the load's size in bytes: a value the verifier cannot predict.

        A branch on it is not removed as dead code (``opt_hard_wire_dead_code_branches``,
        which the JIT would then never see), and it goes both ways across runs.
        """
        draw = self.draw
        pkt = self.packet()
        size = draw.choice(MEM_SIZES) if size is None else size
        nbytes = isa.SIZE_BYTES[size]
        dst = draw.choice(self.regs)
        self.insns.append(ldx(size, dst, pkt, nbytes * draw.integer(0, self.gen.maps.mem_len // nbytes - 1)))
        self.scalars.add(dst)
        return dst, nbytes

    def branch(self, reg: int, nbytes: int) -> Insn:
        """A conditional jump on ``reg``, an ``nbytes`` packet load; its offset is set by :func:`jump_over`.

        The verifier knows such a value lies in [0, 2**(8*nbytes) - 1]: the
        immediate stays strictly inside that range (and, for a 64-bit compare,
        below 2**31, as it is sign-extended), so that no comparison is decided
        in advance; a register operand is a second packet load of the same size.
        """
        draw = self.draw
        cls, op = draw.choice(JMP_CLASSES), draw.choice(COND_OPS)
        size = next(k for k, v in isa.SIZE_BYTES.items() if v == nbytes)
        if draw.boolean(0.3):
            other, _ = self.opaque_scalar(size)
            if other != reg:
                return slot(cls | op | BPF_X, reg, other, 0, 0)
            reg, _ = self.opaque_scalar(size)      # the second load took reg: load it again elsewhere
            if reg != other:
                return slot(cls | op | BPF_X, reg, other, 0, 0)
        if nbytes == 8:
            imm = draw.choice(BRANCH_IMM) if draw.boolean(0.7) else self.imm32()
        else:
            top = min((1 << (8 * nbytes)) - 1, 0x7FFFFFFF if cls == BPF_JMP else M32)
            corners = [v for v in BRANCH_IMM if 1 <= v < top] if op != BPF_JSET else []
            imm = draw.choice(corners) if corners and draw.boolean(0.6) else draw.integer(1, top - 1)
        imm = isa.to_s32(imm)
        return slot(cls | op | BPF_K, reg, 0, 0, imm)

    def shape_far_cond(self) -> None:
        """``if (packet value) goto +N`` over N padding instructions."""
        jump = self.branch(*self.opaque_scalar())
        body = self.padding(self.forward_target())     # the jump's displacement is the padding
        self.insns.append(jump_over(jump, len(body)))
        self.insns.extend(body)

    def shape_diamond(self) -> None:
        """if/else: ``jcc else; THEN; ja end; else: ELSE; end:`` -- the ``ja`` crosses ELSE."""
        jump = self.branch(*self.opaque_scalar())
        self.scalar()
        then = self.straight(self.draw.integer(1, 12))
        other = self.padding(self.forward_target())      # the ja's displacement
        self.insns.append(jump_over(jump, len(then) + 1))
        self.insns.extend(then)
        self.insns.append(slot(BPF_JMP | BPF_JA, 0, 0, len(other), 0))
        self.insns.extend(other)

    def shape_long_loop(self) -> None:
        """A counter loop with a long body: its back-edge is a far backward jump."""
        self.block_loop(long_body=True)

    def shape_early_exit(self) -> None:
        """``if (packet value) { R0 = fold; exit }`` then padding: every later exit jumps back over it.

        The x86 JIT emits the epilogue at a function's first exit and turns
        every other exit into a ``jmp`` back to it: the padding and what follows
        make that backward jump far.  Placed at the end of a function (nothing
        but padding is skipped when the exit is taken).
        """
        jump = self.branch(*self.opaque_scalar())
        at = len(self.insns)
        self.insns.append(EXIT)                  # the branch, once the exit path's length is known
        live = set(self.scalars)
        self.fold_into_r0()
        self.insns.append(EXIT)
        self.scalars = live                     # the fall-through path did not run the fold
        self.insns[at] = jump_over(jump, len(self.insns) - at - 1)
        # the last exit jumps back over this padding, the epilogue (about 10 bytes) and the last
        # fold (3 bytes a register, 10 for the high half)
        fold = 3 * len(self.scalars) + 10
        back = self.draw.integer(260, 384) if self.draw.boolean(0.15) else self.draw.integer(110, 134)
        self.insns.extend(self.padding(back - fold - 10))

    # -- operands that tell a 32-bit operation from a 64-bit one ----------------------------------
    def hidden_const(self, reg: int, value: int) -> None:
        """``reg = value`` through the stack (two 4-byte stores, one 8-byte load).

        The verifier reads the 8 bytes back as an unknown scalar, so branches on
        it stay in the program (a constant would have them hard-wired away)
        while every run sees the same, chosen value.
        """
        off = self.stack_slot()
        self.insns += [st(BPF_W, FP, off, isa.to_s32(value & M32)), st(BPF_W, FP, off + 4, isa.to_s32(value >> 32)),
                       ldx(BPF_DW, reg, FP, off)]
        self.mark_written(off, 8)
        self.scalars.add(reg)

    def shape_width_pair(self) -> None:
        """An operation on an operand pair whose 32-bit and 64-bit results differ (see :func:`width_pair`).

        A jump skips a write to a live register; an ALU result stays live:
        either way the outcome reaches R0 through the epilogue's fold.
        """
        draw = self.draw
        kind = draw.choice(tuple(WIDTH_PAIR_OPS))
        a, b = width_pair(draw, kind)
        where, op = draw.choice(WIDTH_PAIR_OPS[kind])
        ra = draw.choice(self.regs)
        rb = draw.choice([r for r in self.regs if r != ra])
        self.hidden_const(ra, a)
        if where == "alu":
            self.hidden_const(rb, b)
            cls = BPF_ALU if draw.boolean(0.7) else BPF_ALU64
            off = 1 if (op in DIV_OPS and self.gen.options.cpu_v4 and draw.boolean(0.3)) else 0
            self.insns.append(alu(cls, op, ra, rb, source=BPF_X, off=off))
            self.fresh.add(ra)             # saved before a call clobbers it, like a helper's result
            return
        cls = BPF_JMP32 if draw.boolean(0.7) else BPF_JMP
        body = [alu(BPF_ALU64, BPF_XOR, ra, imm=draw.choice((1, -1, 0x100, 0x7FFFFFFF)))]
        self.fresh.add(ra)
        if draw.boolean(0.7):
            self.hidden_const(rb, b)
            jump = slot(cls | op | BPF_X, ra, rb, len(body), 0)
        else:
            jump = slot(cls | op | BPF_K, ra, 0, len(body), isa.to_s32(b & M32))
        self.insns.append(jump)
        self.insns.extend(body)

    # -- branches the verifier decides at load time ---------------------------------------------------
    # Dead-code removal (opt_hard_wire_dead_code_branches, opt_remove_dead_code) makes the JIT run
    # what the verifier *believes*: a wrong belief shows as a live branch the JIT never takes.
    # (neg is left out: the verifier forgets a negated register)
    KNOWN_OPS = (("mov32", 4), ("arsh", 3), ("rsh", 1), ("add", 1), ("and", 1), ("lsh", 1))

    def shape_known_branch(self) -> None:
        """A branch on a value computed from constants: a ``const volatile`` knob after constant propagation.

        ``rK = C (64-bit corner); a few of w = w (mov32), s>>=, >>=, +=, &=, <<=, often narrowed to
        u32 last;
        if rK OP imm goto +N; N writes to live registers``, the immediate mostly
        at or next to rK's value (``if (mode == MODE_X)``).  The verifier knows
        rK and removes the side that cannot run; the interpreter runs the
        program as written.
        """
        draw = self.draw
        reg = draw.choice(self.regs)
        if draw.boolean(0.7):
            value = draw.choice(CORNER_IMM64[1:]) | draw.choice((0, 1 << 63, 1 << 32))
            self.insns.extend(lddw_slots(reg, value))
        else:
            insn = mov64_imm(reg, draw.choice((-1, -2, -0x80000000, -0x7FFFFFFF, -7)))
            self.insns.append(insn)
            value = track_const_alu(insn, None, None)
        self.scalars.add(reg)
        kinds = [weighted(draw, self.KNOWN_OPS) for _ in range(draw.integer(1, 3))]
        if kinds[-1] != "mov32" and draw.boolean(0.4):
            kinds.append("mov32")              # a u32 knob: ``if ((u32)cfg == X)``
        for kind in kinds:
            cls = draw.choice(ALU_CLASSES)
            src = reg
            if kind == "mov32":
                reg = draw.choice(self.regs)
                insn = alu(BPF_ALU, BPF_MOV, reg, src, source=BPF_X)
                self.scalars.add(reg)
            elif kind in ("arsh", "rsh", "lsh"):
                op = {"arsh": BPF_ARSH, "rsh": BPF_RSH, "lsh": BPF_LSH}[kind]
                width = 64 if cls == BPF_ALU64 else 32
                insn = alu(cls, op, reg, imm=draw.choice(SHIFT_IMM[width][1:]))
            else:
                insn = alu(cls, BPF_ADD if kind == "add" else BPF_AND, reg, imm=self.imm32())
            self.insns.append(insn)
            if value is not None:
                value = track_const_alu(insn, value, value)
        cls = BPF_JMP if draw.boolean(0.7) else BPF_JMP32
        body = self.case_body(reg)
        near = None          # an immediate that reads as the value (jmp64 sign-extends it)
        if value is not None:
            signed = value - ((value >> 63) << 64)
            if cls == BPF_JMP32:
                near = isa.to_s32(value)
            elif -(1 << 31) <= signed < 1 << 31:
                near = signed
        if near is not None and draw.boolean(0.7):
            imm = near + draw.choice((0, 0, 1, -1))
        else:
            imm = draw.choice(BRANCH_IMM) if draw.boolean(0.7) else self.imm32()
        self.insns.append(slot(cls | draw.choice(COND_OPS) | BPF_K, reg, 0, len(body), isa.to_s32(imm)))
        self.insns.extend(body)

    def case_body(self, reg: int) -> list[Insn]:
        """One or two writes to live registers (never ``reg``): what a branch skips."""
        draw = self.draw
        targets = sorted(self.scalars - {reg}) or [reg]
        return [alu(BPF_ALU64, BPF_XOR, draw.choice(targets), imm=draw.choice((1, -1, 0x100, 0x7FFFFFFF)))
                for _ in range(draw.integer(1, 2))]

    def shape_dispatch(self) -> None:
        """Protocol dispatch on one packet field: ``if (x == K1) A else if (x > M) B else if ...``.

        An equality test jumps to its case placed after the rest of the chain
        (``jeq x, K, case; <rest>; ja end; case: A; end:``): the rest runs
        only where x != K.  A range test skips its case.  The verifier refines
        x on each side of every test and decides later tests with it.
        """
        draw = self.draw
        reg, nbytes = self.opaque_scalar(draw.choice((BPF_B, BPF_H)))
        self.insns.extend(self.dispatch_chain(reg, (1 << (8 * nbytes)) - 1, draw.integer(2, 4)))

    def dispatch_chain(self, reg: int, top: int, tests: int) -> list[Insn]:
        if not tests:
            return []
        draw = self.draw
        cls = draw.choice(JMP_CLASSES)
        body = self.case_body(reg)
        if draw.boolean(0.5):
            rest = self.dispatch_chain(reg, top, tests - 1) + [slot(BPF_JMP | BPF_JA, 0, 0, len(body), 0)]
            return [slot(cls | BPF_JEQ | BPF_K, reg, 0, len(rest), draw.integer(0, top))] + rest + body
        op, imm = draw.choice((BPF_JNE, BPF_JGT, BPF_JGE, BPF_JLT, BPF_JLE)), draw.integer(1, top - 1)
        return [slot(cls | op | BPF_K, reg, 0, len(body), imm)] + body + self.dispatch_chain(reg, top, tests - 1)

    # -- stack ---------------------------------------------------------------
    def stack_slot(self) -> int:
        """Offset (negative) of a random 8-byte stack slot."""
        return -8 * self.draw.integer(1, self.stack_slots)

    def written_slots(self, size_bytes: int) -> list[int]:
        """Aligned offsets whose ``size_bytes`` bytes are all written."""
        slots = {off - off % size_bytes for off in self.stack_bytes}
        return sorted(off for off in slots if all(off + i in self.stack_bytes for i in range(size_bytes)))

    def mark_written(self, off: int, nbytes: int) -> None:
        self.stack_bytes.update(range(off, off + nbytes))

    def block_spill(self) -> None:
        draw = self.draw
        size = draw.choice(MEM_SIZES)
        nbytes = isa.SIZE_BYTES[size]
        off = self.stack_slot() + nbytes * draw.integer(0, 8 // nbytes - 1)
        if draw.boolean(0.3):
            self.insns.append(st(size, FP, off, self.imm32()))
        else:
            self.insns.append(stx(size, FP, self.scalar(), off))
        self.mark_written(off, nbytes)

    def block_fill(self) -> None:
        draw = self.draw
        size = draw.choice(MEM_SIZES)
        offs = self.written_slots(isa.SIZE_BYTES[size])
        if not offs:
            self.block_spill()
            return
        dst = draw.choice(self.regs)
        self.insns.append(ldx(size, dst, FP, draw.choice(offs)))
        self.scalars.add(dst)

    def block_atomic_stack(self) -> None:
        draw = self.draw
        size = draw.choice((BPF_DW, BPF_W))
        nbytes = isa.SIZE_BYTES[size]
        offs = self.written_slots(nbytes)
        if offs and draw.boolean(0.7):
            off = draw.choice(offs)
        else:
            off = self.stack_slot()
            self.insns.append(stx(BPF_DW, FP, self.scalar(), off))
            self.mark_written(off, 8)
        self.insns.append(self.atomic_insn(size, FP, off))
        if draw.boolean(0.4):
            # the updated slot read back (a counter bumped, then used): the stack is not compared,
            # what the atomic left there reaches R0 through this register
            dst = draw.choice(self.regs)
            self.insns.append(ldx(size, dst, FP, off))
            self.scalars.add(dst)

    def shape_cas(self) -> None:
        """One compare-and-swap attempt on a stack slot, the slot read back afterwards.

        ``r0 = *(u64 *)slot; rN = r0 OP x; r0 = cmpxchg{32,64}(slot, r0, rN); rY = *slot``:
        the expected value is what was just read (the exchange succeeds), or now and then a
        stale one (it fails).  A 64-bit read with a 32-bit exchange compares the low halves
        only while R0's high half is set.  Before v5.12 (no cmpxchg) an atomic add instead.
        """
        draw = self.draw
        if not self.gen.profile.atomic_fetch:
            self.block_atomic_stack()
            return
        off = self.stack_slot()
        if not all(off + i in self.stack_bytes for i in range(8)):
            self.insns.append(stx(BPF_DW, FP, self.scalar(), off))
            self.mark_written(off, 8)
        size = draw.choice((BPF_W, BPF_DW))
        self.insns.append(ldx(BPF_DW if draw.boolean(0.6) else size, 0, FP, off))
        self.scalars.add(0)
        new = draw.choice([r for r in self.regs if r != 0])
        self.insns.append(mov64_reg(new, 0))
        self.insns.append(alu(draw.choice(ALU_CLASSES), draw.choice((BPF_ADD, BPF_XOR, BPF_OR, BPF_SUB)), new,
                              imm=draw.choice((1, -1, 0x100, 0x7FFFFFFF))))
        self.scalars.add(new)
        if draw.boolean(0.25):
            self.insns.append(alu(BPF_ALU64, BPF_XOR, 0, imm=draw.choice((1, -1, 0x10000))))  # a stale value
        self.insns.append(slot(BPF_STX | BPF_ATOMIC | size, FP, new, off, BPF_CMPXCHG))
        self.fresh.add(0)
        dst = draw.choice([r for r in self.regs if r not in (0, new)])
        self.insns.append(ldx(BPF_DW, dst, FP, off))
        self.scalars.add(dst)

    def atomic_insn(self, size: int, base: int, off: int) -> Insn:
        draw = self.draw
        src = self.scalar()
        op = weighted(draw, (("simple", 4), ("fetch", 3), ("xchg", 1), ("cmpxchg", 1)))
        if not self.gen.profile.atomic_fetch:
            op = "simple"                       # before v5.12: BPF_XADD, add only
            imm = BPF_ADD
        elif op == "simple":
            imm = draw.choice(ATOMIC_SIMPLE)
        elif op == "fetch":
            imm = draw.choice(ATOMIC_SIMPLE) | BPF_FETCH
            self.fresh.add(src)
        elif op == "xchg":
            imm = BPF_XCHG
            self.fresh.add(src)
        else:
            if 0 not in self.scalars:           # R0 is the comparand
                self.insns.append(mov64_imm(0, self.imm32()))
                self.scalars.add(0)
            imm = BPF_CMPXCHG
            self.fresh.add(0)
        return slot(BPF_STX | BPF_ATOMIC | size, base, src, off, imm)

    # -- the XDP context (R6) and the packet -----------------------------------
    def packet(self) -> int:
        """The register holding ``data``, proven for ``mem_len`` bytes; the check is emitted on first use.

        ``ldxw rP, [r6+data]; ldxw rE, [r6+data_end]; mov rT, rP; add rT, LEN;
        if rT > rE goto out`` (or ``if rE < rT``): the verifier then allows
        accesses to ``[rP, rP + LEN)``.  LEN is the length of every run's
        packet, so the jump to ``out`` (``mov r0, imm; exit`` after the
        epilogue, see :meth:`finish`) is never taken; it is there for the
        verifier.  rP is callee-saved (R7-R9): it survives helper and
        subprogram calls.  After a tail call that falls through (and after a call
        of a subprogram that reaches one) the packet is checked again: since
        v6.13 ("bpf: consider that tail calls invalidate packet pointers", in
        6.12.117 too) the verifier forgets packet pointers there, and the
        checker does so on every profile.  rE and rT hold pointers afterwards:
        they leave the scalars.
        """
        if self.pkt_reg is not None:
            return self.pkt_reg
        draw = self.draw
        # registers that hold no live value first: a live one taken here would be lost
        pkt = draw.choice([r for r in PACKET_REGS if r not in self.scalars] or PACKET_REGS)
        self.regs = tuple(r for r in SCALAR_REGS if r != pkt)
        pairs = [(e, t) for e in self.regs for t in self.regs if e != t]
        end, tmp = draw.choice([(e, t) for e, t in pairs if e not in self.scalars and t not in self.scalars] or pairs)
        self.scalars -= {pkt, end, tmp}
        self.insns.append(ldx(BPF_W, pkt, CTX_REG, xdp.XDP_MD_DATA))
        self.insns.append(ldx(BPF_W, end, CTX_REG, xdp.XDP_MD_DATA_END))
        self.insns.append(mov64_reg(tmp, pkt))
        self.insns.append(alu(BPF_ALU64, BPF_ADD, tmp, imm=self.gen.maps.mem_len))
        self.pkt_checks.append(len(self.insns))
        if draw.boolean(0.75):
            self.insns.append(slot(BPF_JMP | BPF_JGT | BPF_X, tmp, end, 0, 0))
        else:
            self.insns.append(slot(BPF_JMP | BPF_JLT | BPF_X, end, tmp, 0, 0))
        self.pkt_reg = pkt
        return pkt

    def block_mem(self) -> None:
        draw = self.draw
        pkt = self.packet()
        size = draw.choice(MEM_SIZES)
        nbytes = isa.SIZE_BYTES[size]
        off = nbytes * draw.integer(0, self.gen.maps.mem_len // nbytes - 1)
        if draw.boolean(0.6):
            dst = draw.choice(self.regs)
            self.insns.append(ldx(size, dst, pkt, off))
            self.scalars.add(dst)
        elif draw.boolean(0.3):
            self.insns.append(st(size, pkt, off, self.imm32()))
        else:
            self.insns.append(stx(size, pkt, self.scalar(), off))

    def block_ctx_field(self) -> None:
        """A scalar field of struct xdp_md (the verifier rewrites it into pointer chasing)."""
        dst = self.draw.choice(self.regs)
        self.insns.append(ldx(BPF_W, dst, CTX_REG, self.draw.choice(CTX_SCALAR_FIELDS)))
        self.scalars.add(dst)

    # -- helpers and maps ----------------------------------------------------
    def put_key(self, mapdef: MapDef) -> int:
        """Write a 4-byte key to the stack; return its offset.

        Now and then in the upper half of an 8-byte slot, where clang puts a
        ``u32 key`` (``*(u32 *)(r10 - 4) = 0``): a function whose deepest stack
        access is such a key has a stack depth that is not a multiple of 8 (the
        x86 JIT rounds it up; see ff672c67ee76).
        """
        off = self.stack_slot() + (4 if self.draw.boolean(0.3) else 0)
        if self.draw.boolean(0.85):
            key = self.draw.integer(0, mapdef.max_entries)        # max_entries itself: a miss
        else:
            key = self.draw.choice((-1, 0x7FFFFFFF))
        if self.draw.boolean(0.5):
            self.insns.append(st(BPF_W, FP, off, key))
        else:
            reg = self.draw.choice(self.regs)
            self.insns.append(mov64_imm(reg, key))
            self.scalars.add(reg)
            self.insns.append(stx(BPF_W, FP, reg, off))
        self.mark_written(off, 4)
        return off

    def map_call_args(self, mapdef: MapDef, key_off: int) -> None:
        self.insns.extend(lddw_slots(1, 0, src=isa.BPF_PSEUDO_MAP_FD, map=mapdef.name))
        self.insns.append(mov64_reg(2, FP))
        self.insns.append(alu(BPF_ALU64, BPF_ADD, 2, imm=key_off))

    def value_access(self, mapdef: MapDef, sizes: Sequence[int] = MEM_SIZES) -> tuple[int, int]:
        """(size, offset) of an aligned access inside a value of ``mapdef`` (any value_size)."""
        size = self.draw.choice([s for s in sizes if isa.SIZE_BYTES[s] <= mapdef.value_size])
        nbytes = isa.SIZE_BYTES[size]
        return size, nbytes * self.draw.integer(0, mapdef.value_size // nbytes - 1)

    def block_lookup(self) -> None:
        """``v = lookup(key); if (v) { loads, stores, atomics, v->f OP= x }``, or ``x = v ? v->f : K``.

        The read-modify-write goes through R1-R5 (free after the call: where
        clang puts its temporaries), so byte stores from rdi/rsi reach the map
        value.  The "lookup with a default" form leaves its register live on
        both paths: what the lookup returned reaches R0, whether it was NULL too.
        """
        draw = self.draw
        self.save_fresh()
        mapdef = draw.choice(self.gen.maps.data_maps)
        key_off = self.put_key(mapdef)
        self.map_call_args(mapdef, key_off)
        self.insns.append(call_helper(isa.BPF_FUNC_map_lookup_elem))
        self.forget_caller_saved()
        guarded: list[Insn] = []
        before = set(self.scalars)
        for _ in range(draw.integer(1, 3)):
            size, voff = self.value_access(mapdef, MEM_SIZES if draw.boolean(0.6) else (BPF_DW, BPF_W))
            action = weighted(draw, (("load", 3), ("store", 3), ("atomic", 2), ("rmw", 2)))
            if action == "load" or not self.scalars:
                dst = draw.choice([r for r in self.regs if r != 0])
                guarded.append(ldx(size, dst, 0, voff))
                self.scalars.add(dst)
            elif action == "store":
                sources = sorted(self.scalars - {0})
                guarded.append(stx(size, 0, draw.choice(sources), voff) if sources
                               else st(size, 0, voff, self.imm32()))
            elif action == "rmw":
                tmp = draw.choice([r for r in self.regs if r in CALLER_SAVED and r != 0])
                guarded.append(ldx(size, tmp, 0, voff))
                sources = sorted(self.scalars - {0, tmp})
                if sources and draw.boolean(0.5):
                    guarded.append(alu(draw.choice(ALU_CLASSES), draw.choice((BPF_ADD, BPF_XOR, BPF_OR, BPF_SUB)),
                                       tmp, draw.choice(sources), source=BPF_X))
                else:
                    guarded.append(alu(draw.choice(ALU_CLASSES), BPF_ADD, tmp, imm=draw.choice((1, -1, 0x101))))
                guarded.append(stx(size, 0, tmp, voff))
                self.scalars.add(tmp)
            else:
                size, voff = self.value_access(mapdef, (BPF_DW, BPF_W))
                src = draw.choice(sorted(self.scalars - {0})) if self.scalars - {0} else None
                if src is None:
                    continue
                imm = draw.choice(ATOMIC_SIMPLE) | (BPF_FETCH if draw.boolean(0.4) else 0)
                if not self.gen.profile.atomic_fetch:
                    imm = BPF_ADD               # before v5.12: BPF_XADD, add only
                guarded.append(slot(BPF_STX | BPF_ATOMIC | size, 0, src, voff, imm))
                if imm & BPF_FETCH:
                    self.fresh.add(src)
        if draw.boolean(0.35):
            # x = v ? v->f : K
            dst = draw.choice([r for r in self.regs if r != 0])
            size, voff = self.value_access(mapdef)
            guarded.append(ldx(size, dst, 0, voff))
            other = mov64_imm(dst, self.imm32())
            self.insns.append(slot(BPF_JMP | isa.BPF_JEQ | BPF_K, 0, 0, len(guarded) + 1, 0))
            self.insns.extend(guarded)
            self.insns += [slot(BPF_JMP | BPF_JA, 0, 0, 1, 0), other]
            self.scalars = before - {0} | {dst}
            self.fresh.add(dst)
            return
        self.insns.append(slot(BPF_JMP | isa.BPF_JEQ | BPF_K, 0, 0, len(guarded), 0))
        self.insns.extend(guarded)
        # registers first written under the guard are not initialised on the NULL path
        self.scalars = before - {0}

    def block_update(self) -> None:
        draw = self.draw
        self.save_fresh()
        mapdef = draw.choice(self.gen.maps.data_maps)
        key_off = self.put_key(mapdef)
        value_off = -8 * draw.integer((mapdef.value_size + 7) // 8, self.stack_slots)
        for i in range(0, mapdef.value_size, 8):
            size = BPF_DW if i + 8 <= mapdef.value_size else BPF_W      # value sizes are multiples of 4
            self.insns.append(stx(size, FP, self.scalar(), value_off + i) if draw.boolean(0.5)
                              else st(size, FP, value_off + i, self.imm32()))
        # the value may overlap the key: write the key again last
        if value_off < key_off + 4 and key_off < value_off + mapdef.value_size:
            key_off = self.put_key(mapdef)
        self.mark_written(value_off, mapdef.value_size)
        self.map_call_args(mapdef, key_off)
        self.insns.append(mov64_reg(3, FP))
        self.insns.append(alu(BPF_ALU64, BPF_ADD, 3, imm=value_off))
        self.insns.append(mov64_imm(4, draw.choice((BPF_ANY, 1, 2))))
        self.insns.append(call_helper(isa.BPF_FUNC_map_update_elem))
        self.forget_caller_saved()
        self.scalars.add(0)
        self.fresh.add(0)

    def block_delete(self) -> None:
        hashes = [m for m in self.gen.maps.data_maps if m.kind == "hash"]
        if not hashes:
            self.block_update()
            return
        self.save_fresh()
        mapdef = self.draw.choice(hashes)
        key_off = self.put_key(mapdef)
        self.map_call_args(mapdef, key_off)
        self.insns.append(call_helper(isa.BPF_FUNC_map_delete_elem))
        self.forget_caller_saved()
        self.scalars.add(0)
        self.fresh.add(0)

    def block_helper(self) -> None:
        self.save_fresh()
        helper = self.draw.choice(HELPERS_NO_ARGS)
        self.insns.append(call_helper(helper))
        if helper == isa.BPF_FUNC_get_prandom_u32:
            # The real kernel seeds its generator at random: R0 is a u32, so r0 >>= 32 leaves 0 on
            # every correct engine (a zero-extension check) and nothing compared depends on the
            # number -- the kernel engines run such scenarios too (bpfdiff.kernel.engine.random_folded).
            self.insns.append(alu(BPF_ALU64, BPF_RSH, 0, imm=32))
        self.forget_caller_saved()
        self.scalars.add(0)
        self.fresh.add(0)

    # -- tail calls and subprogram calls ----------------------------------
    def tail_call_site(self, map_name: str, key: int | None) -> None:
        self.save_fresh(frozenset(SCALAR_REGS))     # a tail call that is taken drops every register
        self.insns.append(mov64_reg(1, CTX_REG))
        self.scalars.discard(1)
        if key is None:
            src = self.draw.choice(sorted(self.scalars - {1})) if self.scalars - {1} else None
            if src is None:
                src = self.regs[-1]
                self.insns.append(mov64_imm(src, self.draw.integer(0, 8)))
                self.scalars.add(src)
            cls = self.draw.choice(ALU_CLASSES)
            self.insns.append(alu(cls, BPF_MOV, 3, src, source=BPF_X))
            if self.draw.boolean(0.7):
                self.insns.append(alu(cls, BPF_AND, 3, imm=self.draw.choice((3, 7, 1, 0xF))))
        else:
            self.insns.append(mov64_imm(3, key))
        self.insns.extend(lddw_slots(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map=map_name))
        self.insns.append(call_helper(isa.BPF_FUNC_tail_call))
        self.plan.sites.append(Site(map_name, key, self.is_subprog))
        # a tail call that falls through leaves R0-R5 undefined, and the packet unchecked
        self.forget_caller_saved()
        if self.pkt_reg is not None:
            self.pkt_reg = None
            self.regs = SCALAR_REGS

    def block_tail_call(self) -> None:
        draw = self.draw
        pa = draw.choice(self.gen.site_maps(self.plan, self.is_subprog))
        if draw.boolean(0.7):
            # out of range now and then: max_entries itself most (the bound's off-by-one)
            key = draw.integer(0, pa.max_entries - 1) if draw.boolean(0.8) else draw.choice(
                (pa.max_entries, pa.max_entries, 0xFFFF, -1))
        else:
            key = None
        self.tail_call_site(pa.name, key)

    def block_call_local(self) -> None:
        sub = self.gen.request_subprog(self)
        if sub is None:
            self.block_alu()
            return
        self.save_fresh()
        self.insns.append(mov64_reg(1, CTX_REG))
        self.scalars.discard(1)
        if self.scalars and self.draw.boolean(0.7):
            self.insns.append(mov64_reg(2, self.draw.choice(sorted(self.scalars))))
        else:
            self.insns.append(mov64_imm(2, self.imm32()))
        self.calls.append((len(self.insns), sub))
        self.insns.append(slot(CALL_OPCODE, 0, isa.BPF_PSEUDO_CALL, 0, 0))
        self.forget_caller_saved()
        self.forget_packet_after_call(sub)
        self.scalars.add(0)
        self.fresh.add(0)

    def repeat_call(self) -> None:
        """Call the subprogram of the last ``call local`` again (same arguments' shape)."""
        if not self.calls:
            return
        self.save_fresh()
        self.insns.append(mov64_reg(1, CTX_REG))
        self.insns.append(mov64_imm(2, self.imm32()))
        self.calls.append((len(self.insns), self.calls[-1][1]))
        self.insns.append(slot(CALL_OPCODE, 0, isa.BPF_PSEUDO_CALL, 0, 0))
        self.forget_caller_saved()
        self.forget_packet_after_call(self.calls[-1][1])
        self.scalars.add(0)
        self.fresh.add(0)

    BLOCKS: tuple[tuple[str, int], ...] = (
        ("alu", 30), ("alu32_upper", 3), ("lddw", 3), ("cond", 8), ("loop", 3), ("spill", 5), ("fill", 4), ("mem", 6),
        ("lookup", 5), ("update", 2), ("delete", 1), ("helper", 2), ("atomic_stack", 3),
        ("tail_call", 9), ("call_local", 4), ("ctx_field", 1),
    )

    # extra shapes per function (0, 1 or 2), and which
    SHAPE_COUNT: tuple[tuple[int, int], ...] = ((0, 12), (1, 6), (2, 2))
    SHAPES: tuple[tuple[str, int], ...] = (
        ("width_pair", 10), ("far_cond", 3), ("diamond", 2), ("long_loop", 3), ("early_exit", 2), ("cas", 2),
        ("known_branch", 4), ("dispatch", 3),
    )

    def build(self) -> list[Insn]:
        draw = self.draw
        self.insns.append(mov64_reg(CTX_REG, 1))
        if self.is_subprog:
            self.scalars.add(2)                 # the caller always passes a scalar in R2
        for _ in range(draw.integer(0, 2)):
            self.init_reg(draw.choice(self.regs))
        nblocks = draw.integer(1, self.gen.options.max_blocks)
        forced_at = {draw.integer(0, nblocks): site for site in self.forced_sites}
        call_at = draw.integer(0, nblocks) if self.force_call else -1
        # shapes come on top of the blocks, so the blocks (tail calls...) keep their rates
        shapes = [(draw.integer(0, nblocks), weighted(draw, self.SHAPES))
                  for _ in range(weighted(draw, self.SHAPE_COUNT))]
        blocks = [(name, w) for name, w in self.BLOCKS if self.allowed(name)]
        for i in range(nblocks + 1):
            if i in forced_at:
                self.tail_call_site(*forced_at[i])
            if i == call_at:
                self.block_call_local()
                if self.plan.call_twice and not self.is_subprog:
                    self.repeat_call()
            for at, shape in shapes:
                if at == i and shape != "early_exit":
                    getattr(self, "shape_" + shape)()
            if i < nblocks:
                getattr(self, "block_" + weighted(draw, blocks))()
        if any(shape == "early_exit" for _, shape in shapes):
            self.shape_early_exit()
        self.finish()
        return self.insns

    def finish(self) -> None:
        """The epilogue, then the packet check's ``out`` exit if the function has one."""
        self.epilogue()
        if self.pkt_checks:
            out = len(self.insns)
            for at in self.pkt_checks:
                check = self.insns[at]
                self.insns[at] = slot(check.opcode, check.dst, check.src, out - (at + 1), 0)
            self.insns += [mov64_imm(0, self.draw.choice(XDP_ACTIONS)), EXIT]

    def allowed(self, block: str) -> bool:
        if block == "tail_call":
            return self.tail_calls
        if block == "call_local":
            return self.gen.can_call(self)
        if block in ("lookup", "update", "delete"):
            return bool(self.gen.maps.data_maps)
        return True

    def epilogue(self) -> None:
        """Fold every live scalar into R0 and exit."""
        self.fold_into_r0()
        self.insns.append(EXIT)

    def fold_into_r0(self) -> None:
        """R0 = a combination of every live (initialised, scalar) register, R0's own value included.

        Each register goes in through a 64-bit ``xor``/``add``/``sub``, which
        are bijective in each operand: a wrong bit anywhere changes R0.  Then
        the high half is folded into the low one (``r0 ^= r0 >> 32``, also
        bijective), because the kernel engines compare R0 on 32 bits only
        (``BPF_PROG_TEST_RUN``'s retval).  Only scalars are folded: a pointer in
        R0 at exit is refused ("R0 leaks addr").
        """
        draw = self.draw
        regs = sorted(self.scalars)
        if not regs:
            self.insns.append(mov64_imm(0, self.imm32()))
            self.scalars.add(0)
            return
        if 0 not in self.scalars:
            first = draw.choice(regs)
            self.insns.append(mov64_reg(0, first))
            regs.remove(first)
        else:
            regs.remove(0)
        for reg in regs:
            self.insns.append(alu(BPF_ALU64, draw.choice(FOLD_OPS), 0, reg, source=BPF_X))
        self.scalars.add(0)
        if draw.boolean(0.9):           # not in a minimal (shrunk) scenario: three slots less
            scratch = draw.choice([r for r in self.regs if r != 0])
            self.insns += [mov64_reg(scratch, 0), alu(BPF_ALU64, BPF_RSH, scratch, imm=32),
                           alu(BPF_ALU64, BPF_XOR, 0, scratch, source=BPF_X)]
            self.scalars.add(scratch)


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------
MOTIFS: tuple[tuple[str, int], ...] = (
    ("plain", 4), ("self_loop", 3), ("delete_after_fill", 2), ("retarget", 2), ("chain_subprog", 2),
    ("late_load", 1), ("hierarchy", 2),
)
# Stack budget (8-byte slots) per function of a program with subprograms: the
# verifier adds up the frames of a call chain (each rounded up to 32 bytes,
# at most 512 in all) and refuses a subprogram with a tail call once the
# frames before it reach 256 bytes.
SUBPROG_STACK_SLOTS = 12


class ScenarioGenerator:
    """Maps, programs and events of one scenario.

    Frame-depth rule that keeps both engines comparable: a tail call from a
    subprogram only goes through the *inner* prog array (the last one, when the
    profile allows mixing and there are two or more), and the inner array only
    ever holds *inner* programs: no subprograms, tail calls only through the
    inner array.  So a chain of tail calls never nests call frames deeper
    than one program's own static depth (the kernel would let it grow; the
    interpreter's frame limit would then be a false divergence).
    """

    def __init__(self, draw: Draw, profile: Profile, options: GenOptions) -> None:
        self.draw = draw
        self.profile = profile
        if options.cpu_v4 is None:
            options = replace(options, cpu_v4=profile.isa_v4)
        self.options = options
        self.motif = weighted(draw, MOTIFS)
        if self.motif in ("chain_subprog", "hierarchy") and not (profile.tail_calls_in_subprogs
                                                                 and options.max_subprogs):
            self.motif = "self_loop"
        self.maps = self.plan_maps()
        self.inner_map = (self.maps.prog_arrays[-1].name
                          if profile.tail_calls_in_subprogs and len(self.maps.prog_arrays) >= 2 else None)
        self.subprogs: list[list[Insn]] = []
        self.subprog_calls: list[list[tuple[int, int]]] = []
        self.current: ProgramPlan | None = None
        self.pending_sub_sites: list[tuple[str, int | None]] = []

    # -- maps ----------------------------------------------------------------
    def plan_maps(self) -> MapsPlan:
        draw = self.draw
        count = draw.integer(1, self.options.max_prog_arrays)
        if self.motif in ("chain_subprog", "hierarchy"):
            count = max(count, 2)       # tail calls in subprograms need the inner array to exist
        prog_arrays = [MapDef(f"jmp{i}", "prog_array", 4, 4, draw.choice((4, 1, 2, 3, 8))) for i in range(count)]
        if self.motif == "chain_subprog" and prog_arrays[0].max_entries < 2:
            prog_arrays[0] = replace(prog_arrays[0], max_entries=2)     # room for the hop through `pre`
        # value sizes that are not multiples of 8 too (a u32, three u32s): the kernel rounds each
        # array element up to 8 bytes (array_map_gen_lookup's elem_size)
        data_maps = [MapDef("arr", "array", 4, draw.choice((8, 16, 12, 4, 20)), draw.integer(1, 4))]
        if draw.boolean(0.4):
            data_maps.append(MapDef("hash", "hash", 4, 8, draw.integer(1, 4)))
        return MapsPlan(prog_arrays, data_maps, draw.choice(self.options.mem_sizes))

    def site_maps(self, plan: ProgramPlan, in_subprog: bool) -> list[MapDef]:
        """Prog arrays a tail-call site of this function may use (the frame-depth rule)."""
        if self.inner_map is not None and (plan.inner or in_subprog):
            return [m for m in self.maps.prog_arrays if m.name == self.inner_map]
        return self.maps.prog_arrays

    # -- subprograms (functions appended after main, called by index) ------
    def can_call(self, fn: FunctionBuilder) -> bool:
        if not fn.plan.allow_subprogs:
            return False
        return fn.depth < self.options.max_subprog_depth and len(self.subprogs) < self.options.max_subprogs

    def subprog_reaches_tail_call(self, index: int) -> bool:
        """Does subprogram ``index`` tail-call, itself or through the subprograms it calls?"""
        return any(insn.is_tail_call for insn in self.subprogs[index]) or \
            any(self.subprog_reaches_tail_call(callee) for _, callee in self.subprog_calls[index])

    def request_subprog(self, caller: FunctionBuilder) -> int | None:
        if not self.can_call(caller):
            return None
        assert self.current is not None
        index = len(self.subprogs)
        self.subprogs.append([])
        self.subprog_calls.append([])
        tail_calls = (caller.tail_calls or bool(self.pending_sub_sites)) and self.inner_map is not None
        forced = self.pending_sub_sites if tail_calls else []
        self.pending_sub_sites = []
        fn = FunctionBuilder(self, self.current, caller.depth + 1, True, tail_calls, forced, force_call=False)
        self.subprogs[index] = fn.build()
        self.subprog_calls[index] = fn.calls
        self.current.has_subprogs = True
        return index

    def build_program(self, plan: ProgramPlan, tail_calls: bool, forced: list[tuple[str, int | None]],
                      forced_sub: list[tuple[str, int | None]]) -> Program:
        self.current = plan
        self.subprogs, self.subprog_calls = [], []
        self.pending_sub_sites = list(forced_sub)
        main = FunctionBuilder(self, plan, 0, False, tail_calls, forced, force_call=bool(forced_sub))
        body = main.build()
        functions = [(body, main.calls)] + list(zip(self.subprogs, self.subprog_calls, strict=True))
        starts, pos = [], 0
        for insns, _ in functions:
            starts.append(pos)
            pos += len(insns)
        out: list[Insn] = []
        for start, (insns, calls) in zip(starts, functions, strict=True):
            fixed = list(insns)
            for at, sub in calls:
                fixed[at] = slot(CALL_OPCODE, 0, isa.BPF_PSEUDO_CALL, 0, starts[sub + 1] - (start + at + 1))
            out.extend(fixed)
        return Program(plan.name, tuple(out))

    def plan_programs(self) -> list[ProgramPlan]:
        draw = self.draw
        nprogs = draw.integer(1, self.options.max_programs)
        nprogs = max(nprogs, {"plain": 1, "chain_subprog": 4}.get(self.motif, 2))
        plans = []
        for i in range(nprogs):
            plan = ProgramPlan(f"p{i}")
            plan.inner = self.inner_map is not None and draw.boolean(0.35)
            plan.allow_subprogs = not plan.inner and self.options.max_subprogs > 0 and draw.boolean(0.35)
            # linux-5.5 refuses tail calls in a program with subprograms: such programs do without
            plan.tail_calls = draw.boolean(0.8) and (self.profile.tail_calls_in_subprogs or not plan.allow_subprogs)
            plans.append(plan)
        return plans

    def apply_motif(self, plans: list[ProgramPlan]) -> list[tuple[str, int, str]]:
        """Force the tail-call sites of the motif; return the slot fills it needs."""
        draw = self.draw
        motif = self.motif
        if motif == "plain":
            return []
        if motif == "hierarchy":
            return self.apply_hierarchy_motif(plans)
        if motif == "chain_subprog":
            # entry (-> pre) -> middle, whose subprogram tail-calls into a
            # self loop.  The hop through `pre` makes the count at the
            # subprogram call 2: a counter lost across that call then costs
            # two extra tail calls, which no limit off by one explains.
            entry, middle, loop = plans[0], plans[1], plans[2]
            outer, inner = self.maps.prog_arrays[0], self.maps.prog_arrays[-1]
            hops = [entry]
            if len(plans) > 3 and outer.max_entries > 1 and draw.boolean(0.8):
                hops.append(plans[3])
            middle.allow_subprogs, loop.inner, loop.allow_subprogs = True, True, False
            keys = list(range(outer.max_entries))
            fills = []
            for hop, nxt in zip(hops, hops[1:] + [middle], strict=True):
                hop.inner = False
                k = keys.pop(draw.integer(0, len(keys) - 1))
                hop.forced.append((outer.name, k))
                hop.tail_calls = True
                fills.append((outer.name, k, nxt.name))
            middle.inner = False
            kl = draw.integer(0, inner.max_entries - 1)
            middle.forced_sub.append((inner.name, kl))
            loop.forced.append((inner.name, kl))
            middle.tail_calls = loop.tail_calls = True
            return fills + [(inner.name, kl, loop.name)]
        if motif == "self_loop":
            loop = draw.choice(plans)
            pa = self.site_maps(loop, False)[0]
            k = draw.integer(0, pa.max_entries - 1)
            loop.forced.append((pa.name, k))
            loop.tail_calls = True
            if not self.profile.tail_calls_in_subprogs:
                loop.allow_subprogs = False
            return [(pa.name, k, loop.name)]
        # delete_after_fill, retarget, late_load: p0 tail-calls into p1 through a constant key
        caller, target = plans[0], plans[1]
        pa = self.site_maps(caller, False)[0]
        if self.inner_map == pa.name:
            target.inner, target.allow_subprogs = True, False
        k = draw.integer(0, pa.max_entries - 1)
        caller.forced.append((pa.name, k))
        caller.tail_calls = True
        if not self.profile.tail_calls_in_subprogs:
            caller.allow_subprogs = False
        return [(pa.name, k, target.name)]

    def apply_hierarchy_motif(self, plans: list[ProgramPlan]) -> list[tuple[str, int, str]]:
        """The shape of the kernel selftests tailcall_bpf2bpf_hierarchy_*.

        ``entry`` calls a subprogram twice; each call tail-calls (constant key,
        outer array) into ``chain``, whose subprogram tail-calls into ``chain``
        again.  With one counter per run (the specification, the x86 JIT since
        116e04ba1459) the chain is entered 33 times in all; a JIT that passes the
        counter to subprograms by value (5.10 to 6.9) restarts the second call
        from entry's count: 66.  The chain nests one call frame per entry, which
        both engines allow (see README, call depth).
        """
        entry, chain = plans[0], plans[1]
        pa = self.maps.prog_arrays[0]
        k = self.draw.integer(0, pa.max_entries - 1)
        for plan in (entry, chain):
            plan.inner, plan.allow_subprogs, plan.tail_calls = False, True, True
            plan.forced_sub.append((pa.name, k))
        entry.call_twice = entry.no_slot = True
        # chain's own body tail-calls nowhere else: after its subprogram returns, a
        # further tail call back into chain would double per level as well
        chain.tail_calls = False
        return [(pa.name, k, chain.name)]

    # -- the whole scenario --------------------------------------------------
    def generate(self) -> Scenario:
        plans = self.plan_programs()
        fills = self.apply_motif(plans)
        programs = []
        for plan in plans:
            if not self.profile.tail_calls_in_subprogs and plan.allow_subprogs and plan.tail_calls:
                # linux-5.5: a program with subprograms may not tail call at all
                plan.allow_subprogs = False
            programs.append(self.build_program(plan, plan.tail_calls, plan.forced, plan.forced_sub))
        events = EventPlanner(self, plans, fills, self.motif).plan()
        return Scenario(maps=tuple(self.maps.prog_arrays + self.maps.data_maps), programs=tuple(programs),
                        events=tuple(events), meta=(("generator", f"bpfdiff.fuzz.generate v{GENERATOR_VERSION}"),
                                                    ("motif", self.motif)), prog_type=PROG_XDP)


class EventPlanner:
    """Interleaves runs with prog-array and data-map updates, in episodes."""

    EPISODES: tuple[tuple[str, int], ...] = (
        ("fill_run", 5), ("run", 3), ("delete_run", 3), ("retarget_run", 3), ("fill", 2), ("data_update", 1),
        ("load", 2), ("delete", 1),
    )

    def __init__(self, gen: ScenarioGenerator, plans: list[ProgramPlan], fills: list[tuple[str, int, str]],
                 motif: str) -> None:
        self.gen = gen
        self.draw = gen.draw
        self.plans = plans
        self.motif_fills = fills
        self.motif = motif
        self.events: list[Event] = []
        self.slots: dict[tuple[str, int], str] = {}
        names = [p.name for p in plans]
        late = [n for n in names[1:] if self.draw.boolean(0.25)]
        if motif == "late_load" and len(names) > 1 and names[0] not in late:
            late.append(names[0])
            late = [n for n in late if n != names[1]]
        self.pending_loads = [n for n in names if n in late]
        self.loaded = [n for n in names if n not in late]

    def runnable(self) -> list[str]:
        with_sites = [p.name for p in self.plans if p.sites and p.name in self.loaded]
        return with_sites or self.loaded

    def site_keys(self) -> list[tuple[str, int]]:
        keys = [(s.map, s.key) for p in self.plans for s in p.sites if s.key is not None]
        return keys or [(m.name, 0) for m in self.gen.maps.prog_arrays]

    def run(self) -> None:
        if not self.loaded:
            self.load()
            return
        draw = self.draw
        prog = draw.choice(self.runnable())
        seed = draw.integer(0, (1 << 32) - 1)
        self.events.append(Run(prog, random.Random(seed).randbytes(self.gen.maps.mem_len)))

    def targets(self, map_name: str) -> list[str]:
        """Loaded programs that may go into this prog array (the frame-depth rule)."""
        if map_name == self.gen.inner_map:
            return [p.name for p in self.plans if p.inner and p.name in self.loaded]
        no_slot = {p.name for p in self.plans if p.no_slot}
        return [n for n in self.loaded if n not in no_slot]

    def update_slot(self, map_name: str, key: int, prog: str) -> None:
        self.events.append(Update(map_name, key_u32(key), prog, BPF_ANY))
        mapdef = next(m for m in self.gen.maps.prog_arrays if m.name == map_name)
        if 0 <= key < mapdef.max_entries:
            self.slots[(map_name, key)] = prog

    def fill(self) -> None:
        draw = self.draw
        if not self.loaded:
            self.load()
            return
        if draw.boolean(0.8):
            map_name, key = draw.choice(self.site_keys())
        else:
            pa = draw.choice(self.gen.maps.prog_arrays)
            map_name, key = pa.name, draw.integer(0, pa.max_entries)   # max_entries: out of range
        targets = self.targets(map_name)
        if targets:
            self.update_slot(map_name, key & 0xFFFFFFFF, draw.choice(targets))
        else:
            self.run()

    def delete(self) -> None:
        draw = self.draw
        filled = sorted(self.slots)
        if filled and draw.boolean(0.85):
            map_name, key = draw.choice(filled)
            del self.slots[(map_name, key)]
        else:
            map_name, key = draw.choice(self.site_keys())
            self.slots.pop((map_name, key & 0xFFFFFFFF), None)
        self.events.append(Delete(map_name, key_u32(key)))

    def retarget(self) -> None:
        draw = self.draw
        filled = sorted(self.slots)
        if not filled or not self.loaded:
            self.fill()
            return
        map_name, key = draw.choice(filled)
        targets = self.targets(map_name)
        others = [n for n in targets if n != self.slots[(map_name, key)]] or targets
        self.update_slot(map_name, key, draw.choice(others))

    def data_update(self) -> None:
        draw = self.draw
        mapdef = draw.choice(self.gen.maps.data_maps)
        key = draw.integer(0, mapdef.max_entries)
        value = random.Random(draw.integer(0, (1 << 32) - 1)).randbytes(mapdef.value_size)
        self.events.append(Update(mapdef.name, key_u32(key), value, draw.choice((BPF_ANY, 1, 2))))

    def load(self) -> None:
        if not self.pending_loads:
            self.run()
            return
        name = self.pending_loads.pop(0)
        # fill this program's constant slots first when we can: the fixup-at-load path
        for site in next(p for p in self.plans if p.name == name).sites:
            targets = self.targets(site.map)
            if site.key is not None and targets and self.draw.boolean(0.5):
                self.update_slot(site.map, site.key & 0xFFFFFFFF, self.draw.choice(targets))
        self.events.append(Load(name))
        self.loaded.append(name)

    def plan(self) -> list[Event]:
        draw = self.draw
        for map_name, key, prog in self.motif_fills:
            if prog in self.loaded:
                self.update_slot(map_name, key, prog)
        budget = draw.integer(2, self.gen.options.max_events)
        while len(self.events) < budget:
            episode = weighted(draw, self.EPISODES)
            if episode == "fill_run":
                self.fill()
                self.run()
            elif episode == "delete_run":
                self.delete()
                self.run()
            elif episode == "retarget_run":
                self.retarget()
                self.run()
            else:
                getattr(self, episode)()
        for name in list(self.pending_loads):
            if draw.boolean(0.5):
                self.pending_loads.remove(name)
                self.events.append(Load(name))
                self.loaded.append(name)
        if not any(isinstance(e, Run) for e in self.events[-1:]):
            self.run()
        return self.events


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------
def _profile(profile: str | Profile | None) -> Profile:
    if isinstance(profile, Profile):
        return profile
    return get_profile(profile or os.environ.get("BPFDIFF_PROFILE") or DEFAULT_PROFILE)


def generate_scenario(draw: Draw, profile: str | Profile = DEFAULT_PROFILE,
                      options: GenOptions | None = None, meta: tuple[tuple[str, str], ...] = ()) -> Scenario:
    """Build one valid scenario from ``draw`` for ``profile``."""
    prof = _profile(profile)
    scenario = ScenarioGenerator(draw, prof, options or GenOptions()).generate()
    return replace(scenario, meta=(("profile", prof.name),) + meta + scenario.meta)


def scenario_from_seed(seed: int, profile: str | Profile = DEFAULT_PROFILE,
                       options: GenOptions | None = None) -> Scenario:
    """The scenario of ``seed`` (``bpfdiff fuzz --seed``): deterministic."""
    return generate_scenario(RandomDraw(seed), profile, options, meta=(("seed", str(seed)),))


def scenario_from_bytes(data: bytes, profile: str | Profile | None = None,
                        options: GenOptions | None = None) -> Scenario:
    """The scenario an atheris input (or crash artifact) stands for.

    The profile defaults to ``$BPFDIFF_PROFILE`` (as in the harness), else
    linux-6.1; ``$BPFDIFF_INJECT`` is recorded in the meta so that replaying
    the artifact with ``bpfdiff run`` switches the same planted bugs on.
    """
    meta: tuple[tuple[str, str], ...] = ()
    inject = os.environ.get("BPFDIFF_INJECT", "").strip()
    if inject:
        meta = (("inject", inject),)
    return generate_scenario(ByteDraw(data), _profile(profile), options, meta=meta)


# ---------------------------------------------------------------------------
# Mutation of existing scenarios (corpus entries)
# ---------------------------------------------------------------------------
def _mutate_events(s: Scenario, draw: Draw) -> tuple[Event, ...]:
    events = list(s.events)
    prog_arrays = [m for m in s.maps if m.kind == "prog_array"]
    names = [p.name for p in s.programs]
    action = draw.choice(("drop", "duplicate_run", "swap", "insert_update", "insert_delete", "new_mem"))
    runs = [i for i, e in enumerate(events) if isinstance(e, Run)]
    if action == "drop" and len(events) > 1:
        del events[draw.integer(0, len(events) - 1)]
    elif action == "duplicate_run" and runs:
        i = draw.choice(runs)
        events.insert(draw.integer(i, len(events)), events[i])
    elif action == "swap" and len(events) > 1:
        i = draw.integer(0, len(events) - 2)
        events[i], events[i + 1] = events[i + 1], events[i]
    elif action in ("insert_update", "insert_delete") and prog_arrays and names:
        pa = draw.choice(prog_arrays)
        key = key_u32(draw.integer(0, pa.max_entries))
        event: Event = Update(pa.name, key, draw.choice(names)) if action == "insert_update" else Delete(pa.name, key)
        events.insert(draw.integer(0, len(events)), event)
    elif runs:
        i = draw.choice(runs)
        old = events[i]
        assert isinstance(old, Run)
        events[i] = Run(old.prog, random.Random(draw.integer(0, (1 << 32) - 1)).randbytes(len(old.mem)))
    return tuple(events)


def _mutate_program(prog: Program, draw: Draw) -> Program:
    """Change one ALU instruction's immediate or operation (the checker decides if it stays valid)."""
    alus = [pc for pc, insn in enumerate(prog.insns)
            if insn.is_alu and insn.op not in (BPF_END, BPF_NEG) and (pc == 0 or not prog.insns[pc - 1].is_lddw)]
    if not alus:
        return prog
    pc = draw.choice(alus)
    insn = prog.insns[pc]
    if insn.source == BPF_K and draw.boolean(0.6):
        new = slot(insn.opcode, insn.dst, insn.src, insn.off, draw.choice(CORNER_IMM32))
    else:
        op = draw.choice([op for op in ALU_BINOPS if op != BPF_MOV])
        new = slot(insn.cls | op | insn.source, insn.dst, insn.src, 0, insn.imm)
    insns = list(prog.insns)
    insns[pc] = new
    return Program(prog.name, tuple(insns))


def mutate_scenario(s: Scenario, draw: Draw) -> Scenario:
    """One structural mutation: an event edit or one changed ALU instruction.

    The result may be invalid (e.g. a shift by 64); callers filter with the
    checker.  Meta is kept (profile, inject) so a finding replays the same way.
    """
    if s.programs and draw.boolean(0.5):
        i = draw.integer(0, len(s.programs) - 1)
        programs = list(s.programs)
        programs[i] = _mutate_program(programs[i], draw)
        return replace(s, programs=tuple(programs), expect=None)
    return replace(s, events=_mutate_events(s, draw), expect=None)
