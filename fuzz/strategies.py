"""Hypothesis strategies over the scenario generator: valid by construction, shrinking stays valid.

Every strategy drives :mod:`bpfdiff.fuzz.generate` through a
:class:`HypothesisDraw`: each decision is a hypothesis draw that shrinks
towards the generator's minimal choice (``integer`` to its lower bound,
``choice`` to the first element, ``boolean`` to False).  Because the generator
is valid for *every* sequence of decisions, every shrunk example is valid too
-- no ``assume``/``filter`` needed, and a minimised counterexample is a
scenario the kernel would load.

Strategies (all composable with ordinary hypothesis combinators):

``registers()``            scalar registers a generated function writes (R0-R5, R7-R9)
``corner_immediates()``    32-bit immediates, corner cases first (0, 1, -1, INT_MIN, INT_MAX, ...)
``corner_constants()``     64-bit ``lddw`` constants, corner cases first
``alu_insns()``            one ALU/ALU64 instruction over initialised registers
``blocks(kind)``           one generator block (``alu``, ``loop``, ``lookup``, ``tail_call``, ...)
                           or shape (``far_cond``, ``diamond``, ``long_loop``, ``early_exit``,
                           ``width_pair``, ``cas``, ``known_branch``, ``dispatch``) in a valid
                           one-program, one-run scenario
``width_pairs(kind)``      operand pairs whose 32-bit and 64-bit readings differ
``programs(profile)``      one program with its subprograms
``maps(profile)``          the map definitions of a scenario
``events(profile)``        the event list of a scenario (with its programs: ``(programs, events)``)
``scenarios(profile)``     whole scenarios
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

from bpfdiff.fuzz.generate import (
    CORNER_IMM32,
    CORNER_IMM64,
    SCALAR_REGS,
    WIDTH_PAIR_OPS,
    FunctionBuilder,
    GenOptions,
    ProgramPlan,
    ScenarioGenerator,
    generate_scenario,
    width_pair,
)
from hypothesis import strategies as st

from bpfdiff.isa import Insn, Program
from bpfdiff.profiles import DEFAULT_PROFILE, get_profile
from bpfdiff.scenario import PROG_XDP, Event, MapDef, Run, Scenario

T = TypeVar("T")


class HypothesisDraw:
    """The generator's Draw interface over a hypothesis ``draw`` function."""

    def __init__(self, draw) -> None:
        self._draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return self._draw(st.integers(lo, hi)) if hi > lo else lo

    def choice(self, seq: Sequence[T]) -> T:
        return seq[self.integer(0, len(seq) - 1)]

    def boolean(self, p: float = 0.5) -> bool:
        # shrinks to 0, i.e. False; True with probability p
        return self._draw(st.integers(0, 255)) >= 256 * (1 - p)


def registers() -> st.SearchStrategy[int]:
    return st.sampled_from(SCALAR_REGS)


def corner_immediates() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(CORNER_IMM32), st.integers(-(1 << 31), (1 << 31) - 1))


def corner_constants() -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(CORNER_IMM64), st.integers(0, (1 << 64) - 1))


def _builder(draw, profile: str, options: GenOptions | None = None) -> FunctionBuilder:
    gen = ScenarioGenerator(HypothesisDraw(draw), get_profile(profile), options or GenOptions())
    plan = ProgramPlan("prog", allow_subprogs=True)
    gen.current = plan
    return FunctionBuilder(gen, plan, 0, False, True, [], force_call=False)


@st.composite
def alu_insns(draw, profile: str = DEFAULT_PROFILE) -> Insn:
    """One ALU instruction reading only initialised registers (after its own register set-up)."""
    fb = _builder(draw, profile)
    for reg in draw(st.lists(registers(), min_size=1, max_size=3, unique=True)):
        fb.scalars.add(reg)
    insn = fb.alu_insn()
    assert insn is not None
    return insn


BLOCK_KINDS = tuple(name for name, _ in FunctionBuilder.BLOCKS)
SHAPE_KINDS = tuple(name for name, _ in FunctionBuilder.SHAPES)


@st.composite
def width_pairs(draw, kind: str | None = None) -> tuple[int, int]:
    """``(a, b)``: an operand pair of ``kind`` (see ``generate.WIDTH_PAIR_OPS``), b the source operand."""
    name = kind or draw(st.sampled_from(tuple(WIDTH_PAIR_OPS)))
    return width_pair(HypothesisDraw(draw), name)


@st.composite
def blocks(draw, kind: str | None = None, profile: str = DEFAULT_PROFILE) -> Scenario:
    """One generator block, wrapped in the function prologue and epilogue, as a one-run scenario."""
    fb = _builder(draw, profile)
    name = kind or draw(st.sampled_from(BLOCK_KINDS + SHAPE_KINDS))
    fb.insns.append(Insn(0xBF, 6, 1))                  # mov r6, r1: the context, as in every function
    getattr(fb, ("shape_" if name in SHAPE_KINDS else "block_") + name)()
    fb.finish()
    gen = fb.gen
    functions = [fb.insns] + gen.subprogs
    starts, pos = [], 0
    for insns in functions:
        starts.append(pos)
        pos += len(insns)
    out: list[Insn] = []
    for start, insns, calls in zip(starts, functions, [fb.calls] + gen.subprog_calls, strict=True):
        fixed = list(insns)
        for at, sub in calls:
            fixed[at] = Insn(0x85, 0, 1, 0, starts[sub + 1] - (start + at + 1))
        out.extend(fixed)
    maps = tuple(gen.maps.prog_arrays + gen.maps.data_maps)
    program = Program("main", tuple(out))
    return Scenario(maps, (program,), (Run("main", bytes(gen.maps.mem_len)),), None,
                    (("profile", profile), ("block", name)), PROG_XDP)


@st.composite
def scenarios(draw, profile: str = DEFAULT_PROFILE, options: GenOptions | None = None) -> Scenario:
    return generate_scenario(HypothesisDraw(draw), profile, options)


def programs(profile: str = DEFAULT_PROFILE) -> st.SearchStrategy[Program]:
    return scenarios(profile).map(lambda s: s.programs[0])


def maps(profile: str = DEFAULT_PROFILE) -> st.SearchStrategy[tuple[MapDef, ...]]:
    return scenarios(profile).map(lambda s: s.maps)


def events(profile: str = DEFAULT_PROFILE) -> st.SearchStrategy[tuple[tuple[Program, ...], tuple[Event, ...]]]:
    """Events only make sense with the programs they run: ``(programs, events)``."""
    return scenarios(profile).map(lambda s: (s.programs, s.events))
