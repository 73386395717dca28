"""``InterpEngine``: scenarios through the reference interpreter.

Per scenario: create the maps (values in the interpreter's memory, see
:mod:`bpfdiff.interp.memory`), load programs per ``Scenario.load_order()``,
apply the events in order.  Update/Delete answer 0 or -errno (bpfdiff.maps),
Load answers 0, Run gives a RunResult with every map's contents in the
scenario's declaration order and the final mem.

Loading refuses what the profile's kernel refuses (ProgramRefused, an
EngineError): the verifier model, :func:`bpfdiff.verifier.verify`, the same
call the JIT engine's loader makes, so both engines refuse alike.
"""

from __future__ import annotations

from bpfdiff import xdp
from bpfdiff.bugs import bugs_for, validate_bugs
from bpfdiff.engine import DEFAULT_BUDGET, Engine, EngineError, EventOutcome, ProgramRefused, RunResult
from bpfdiff.helpers import Prandom
from bpfdiff.isa import Program
from bpfdiff.maps import BpfMap, MapDefinitionError, create_map, value_region_size
from bpfdiff.profiles import Profile, get_profile
from bpfdiff.scenario import PROG_TYPES, PROG_XDP, Delete, Load, Run, Scenario, Update
from bpfdiff.verifier import NOT_READ_BY_VERIFIER, VerifierError, subprog_r0_trust_matters, verify

from .decode import decoded
from .memory import FIRST_MAP_REGION, Memory, map_pointer, map_region_base
from .vm import Machine

INTERP_LIMIT_BUG = "interp-tail-call-limit"


class InterpEngine(Engine):
    name = "interp"
    # What the interpreter reads of a profile: the verifier model's fields (it loads through
    # verify(): refusals) and its own tail-call counter's; the JIT's fields and the rest of what
    # the model never reads leave its outcomes as they are (tests/test_oracle_probes.py records it).
    ignores_profile_fields = NOT_READ_BY_VERIFIER - {
        "max_tail_call_cnt", "interp_limit_test", "subprog_counter", "tail_call_counts_empty_slot"}

    def __init__(self, profile: str | Profile = "linux-6.1", bugs: frozenset[str] = frozenset(),
                 budget: int = DEFAULT_BUDGET, seed: int = 0) -> None:
        self.profile = get_profile(profile)
        self.bugs = bugs_for("interp", validate_bugs(frozenset(bugs)))
        self.budget = budget
        self.seed = seed
        self._machine: Machine | None = None       # the last completed execute's, and its scenario
        self._scenario: Scenario | None = None

    def unaffected_profile_fields(self, against: Profile | None = None) -> frozenset[str]:
        machine, scenario = self._machine, self._scenario
        if machine is None or scenario is None:
            return self.ignores_profile_fields
        unaffected = set(self.ignores_profile_fields)
        if not machine.empty_slot_reached:
            unaffected.add("tail_call_counts_empty_slot")
        if not subprog_r0_trust_matters(list(machine.programs.values()), {m.name: m for m in scenario.maps},
                                        self.profile, against, prog_type=scenario.prog_type):
            unaffected.add("verifier_trusts_subprog_r0")    # the same refusals, and the runs as they were
        return frozenset(unaffected)

    def execute(self, scenario: Scenario) -> list[EventOutcome]:
        self._machine, self._scenario = None, None
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
            self._load(programs[name], maps, machine, loaded, scenario.prog_type)

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
                    self._load(programs[event.prog], maps, machine, loaded, scenario.prog_type)
                outcomes.append(EventOutcome(index, "load", retval=0))
            else:
                raise EngineError(f"event {index}: unknown event {event!r}")
        self._machine, self._scenario = machine, scenario
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

    def _load(self, prog: Program, maps: dict[str, BpfMap], machine: Machine, loaded: set[str],
              prog_type: str) -> None:
        try:
            # the verifier model, the call the JIT engine's loader makes: both engines refuse alike
            verify(prog, maps, self.profile, prog_type=prog_type)
        except VerifierError as exc:
            raise ProgramRefused(prog.name, str(exc)) from None
        decoded(prog)
        machine.programs[prog.name] = prog
        loaded.add(prog.name)


def check_run_input(scenario: Scenario, event: Run, index: int) -> None:
    """Raise EngineError for a run the kernel's test run refuses (an XDP packet's size)."""
    if scenario.prog_type not in PROG_TYPES:
        raise EngineError(f"unknown program type {scenario.prog_type!r} (known: {', '.join(PROG_TYPES)})")
    if scenario.prog_type == PROG_XDP:
        problem = xdp.packet_length_error(len(event.mem))
        if problem is not None:
            raise EngineError(f"event {index}: run of {event.prog!r}: {problem}")


def _map(maps: dict[str, BpfMap], name: str, index: int) -> BpfMap:
    try:
        return maps[name]
    except KeyError:
        raise EngineError(f"event {index}: unknown map {name!r}") from None


__all__ = ["InterpEngine", "check_run_input"]
