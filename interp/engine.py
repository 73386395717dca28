"""``InterpEngine``: scenarios through the reference interpreter.

Per scenario: create the maps (values in the interpreter's memory, see
:mod:`bpfdiff.interp.memory`), load programs per ``Scenario.load_order()``,
apply the events in order.  Update/Delete answer 0 or -errno (bpfdiff.maps),
Load answers 0, Run gives a RunResult with every map's contents in the
scenario's declaration order and the final mem.

Loading refuses what the kernel's loader would (EngineError, bad input):
invalid encodings, references to unknown maps, ``map_value`` on anything but
a one-element array or beyond its value, writes to R10 ("frame pointer is
read only"), jumps into the second slot of an lddw, and, on profiles without
``tail_calls_in_subprogs`` (5.5), a program mixing bpf-to-bpf calls with tail
calls ("tail_calls are not allowed in programs with bpf-to-bpf calls").
"""

from __future__ import annotations

from bpfdiff import xdp
from bpfdiff.bugs import bugs_for, validate_bugs
from bpfdiff.engine import DEFAULT_BUDGET, Engine, EngineError, EventOutcome, RunResult
from bpfdiff.helpers import Prandom
from bpfdiff.isa import (
    BPF_ALU,
    BPF_ALU64,
    BPF_ATOMIC,
    BPF_CMPXCHG,
    BPF_FETCH,
    BPF_LDX,
    BPF_PSEUDO_MAP_VALUE,
    BPF_REG_FP,
    BPF_STX,
    Insn,
    InvalidInstruction,
    Program,
    check_program,
    jump_target,
    lddw_value,
)
from bpfdiff.maps import BpfMap, MapDefinitionError, create_map, value_region_size
from bpfdiff.profiles import Profile, get_profile
from bpfdiff.scenario import PROG_TYPES, PROG_XDP, Delete, Load, Run, Scenario, Update

from .decode import decoded
from .memory import FIRST_MAP_REGION, Memory, map_pointer, map_region_base
from .vm import Machine

INTERP_LIMIT_BUG = "interp-tail-call-limit"


class InterpEngine(Engine):
    name = "interp"

    def __init__(self, profile: str | Profile = "linux-6.1", bugs: frozenset[str] = frozenset(),
                 budget: int = DEFAULT_BUDGET, seed: int = 0) -> None:
        self.profile = get_profile(profile)
        self.bugs = bugs_for("interp", validate_bugs(frozenset(bugs)))
        self.budget = budget
        self.seed = seed

    def execute(self, scenario: Scenario) -> list[EventOutcome]:
        mem = Memory()
        loaded: set[str] = set()
        maps = self._create_maps(scenario, mem, loaded.__contains__)
        machine = Machine(self.profile, mem, {}, tail_call_limit_bug=INTERP_LIMIT_BUG in self.bugs,
                          prog_type=scenario.prog_type)
        for bpf_map, number in zip(maps.values(), range(len(maps)), strict=True):
            machine.map_pointer[bpf_map.name] = map_pointer(number)
            machine.map_value[bpf_map.name] = map_region_base(number)
        programs = {}
        for prog in scenario.programs:
            if prog.name in programs:
                raise EngineError(f"program {prog.name!r} is defined twice")
            programs[prog.name] = prog
        upfront, _ = scenario.load_order()
        for name in upfront:
            self._load(programs[name], maps, machine, loaded)

        outcomes = []
        for index, event in enumerate(scenario.events):
            if isinstance(event, Run):
                if event.prog not in loaded:
                    raise EngineError(f"event {index}: run of {event.prog!r}, which is not loaded")
                check_run_input(scenario, event, index)
                outcome = machine.run(event.prog, event.mem, self.budget, Prandom.for_run(self.seed, index))
                result = RunResult(
                    r0=outcome.r0, exit=outcome.exit, tail_calls=outcome.tail_calls, trace=outcome.trace,
                    maps=tuple((name, m.contents()) for name, m in maps.items()), mem=mem.ctx_bytes(),
                    fault_kind=outcome.fault_kind, fault_pc=outcome.fault_pc, fault_prog=outcome.fault_prog,
                    fault_reason=outcome.fault_reason)
                outcomes.append(EventOutcome(index, "run", run=result))
            elif isinstance(event, Update):
                outcomes.append(EventOutcome(index, "update",
                                             retval=_map(maps, event.map, index).update(event.key, event.value,
                                                                                         event.flags)))
            elif isinstance(event, Delete):
                outcomes.append(EventOutcome(index, "delete", retval=_map(maps, event.map, index).delete(event.key)))
            elif isinstance(event, Load):
                if event.prog not in programs:
                    raise EngineError(f"event {index}: load of unknown program {event.prog!r}")
                if event.prog not in loaded:
                    self._load(programs[event.prog], maps, machine, loaded)
                outcomes.append(EventOutcome(index, "load", retval=0))
            else:
                raise EngineError(f"event {index}: unknown event {event!r}")
        return outcomes

    # -- setup ----------------------------------------------------------------------
    @staticmethod
    def _create_maps(scenario: Scenario, mem: Memory, is_loaded) -> dict[str, BpfMap]:
        maps: dict[str, BpfMap] = {}
        for number, mapdef in enumerate(scenario.maps):
            if mapdef.name in maps:
                raise EngineError(f"map {mapdef.name!r} is defined twice")
            try:
                size = value_region_size(mapdef)
                mem.add_region(FIRST_MAP_REGION + number, size)
                bpf_map = create_map(mapdef, mem, map_region_base(number), is_loaded=is_loaded)
            except MapDefinitionError as exc:
                raise EngineError(str(exc)) from None
            maps[mapdef.name] = bpf_map
            mem.maps_by_pointer[map_pointer(number)] = bpf_map
        return maps

    def _load(self, prog: Program, maps: dict[str, BpfMap], machine: Machine, loaded: set[str]) -> None:
        check_loadable(prog, maps, self.profile.tail_calls_in_subprogs)
        decoded(prog)
        machine.programs[prog.name] = prog
        loaded.add(prog.name)


def check_loadable(prog: Program, maps: dict[str, BpfMap], tail_calls_in_subprogs: bool) -> None:
    """Raise EngineError for what the kernel's loader/verifier refuses before running anything."""
    try:
        check_program(prog.insns)
    except InvalidInstruction as exc:
        raise EngineError(f"program {prog.name!r}: {exc}") from None
    insns = prog.insns
    second_slots = {pc + 1 for pc, insn in enumerate(insns) if insn.is_lddw}
    for pc, insn in enumerate(insns):
        if jump_target(pc, insn) in second_slots and pc not in second_slots:
            raise EngineError(f"program {prog.name!r}: insn {pc}: jump into the middle of ldimm64 insn "
                              f"{jump_target(pc, insn) - 1}")
        if BPF_REG_FP in written_registers(insn):
            raise EngineError(f"program {prog.name!r}: insn {pc}: frame pointer is read only")
        if insn.is_lddw and insn.map is not None:
            bpf_map = maps.get(insn.map)
            if bpf_map is None:
                raise EngineError(f"program {prog.name!r}: insn {pc}: unknown map {insn.map!r}")
            if insn.src == BPF_PSEUDO_MAP_VALUE:
                off = lddw_value(insn, insns[pc + 1]) >> 32
                if bpf_map.kind != "array" or bpf_map.max_entries != 1:
                    raise EngineError(f"program {prog.name!r}: insn {pc}: map_value needs a one-element array")
                if off >= bpf_map.value_size:
                    raise EngineError(f"program {prog.name!r}: insn {pc}: map_value offset {off} "
                                      f"beyond value_size {bpf_map.value_size}")
    if not tail_calls_in_subprogs:
        has_calls = any(insn.is_pseudo_call for insn in insns)
        if has_calls and any(insn.is_tail_call for insn in insns):
            raise EngineError(f"program {prog.name!r}: tail_calls are not allowed in programs "
                              "with bpf-to-bpf calls on this profile")


def check_run_input(scenario: Scenario, event: Run, index: int) -> None:
    """Raise EngineError for a run the kernel's test run refuses (an XDP packet's size)."""
    if scenario.prog_type not in PROG_TYPES:
        raise EngineError(f"unknown program type {scenario.prog_type!r} (known: {', '.join(PROG_TYPES)})")
    if scenario.prog_type == PROG_XDP:
        problem = xdp.packet_length_error(len(event.mem))
        if problem is not None:
            raise EngineError(f"event {index}: run of {event.prog!r}: {problem}")


def written_registers(insn: Insn) -> tuple[int, ...]:
    """Registers an instruction writes (other than through calls), for the verifier's R10 rule."""
    cls = insn.cls
    if cls in (BPF_ALU, BPF_ALU64, BPF_LDX) or insn.is_lddw:
        return (insn.dst,)
    if cls == BPF_STX and insn.mode == BPF_ATOMIC:
        if insn.imm == BPF_CMPXCHG:
            return (0,)
        if insn.imm & BPF_FETCH:
            return (insn.src,)
    return ()


def _map(maps: dict[str, BpfMap], name: str, index: int) -> BpfMap:
    try:
        return maps[name]
    except KeyError:
        raise EngineError(f"event {index}: unknown map {name!r}") from None


__all__ = ["InterpEngine", "check_loadable", "check_run_input"]
