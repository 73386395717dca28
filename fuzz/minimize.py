"""Structured delta debugging: shrink a finding to the smallest scenario that still shows it.

The reductions work on the scenario model, never on bytes, so every candidate
is a well-formed scenario and most of them are valid programs:

* events: ddmin over the event list;
* programs and maps that no event or program refers to any more are dropped,
  and each program/map is also tried away together with the events naming it;
  a program is also tried *replaced* by another one in every event naming it
  (a chain ``p0 -> p1 -> p1 ...`` becomes ``p1 -> p1 ...``);
* subprograms: a callee removed together with its ``call local`` sites;
* instructions: ddmin over each program's instruction *units* (an ``lddw`` is
  one unit of two slots, so a pair is never split), then every window of 2
  and 3 adjacent units, with every remaining jump
  offset and ``call local`` imm rewritten so that it still reaches the same
  instruction (or, when that one was removed, the one that took its place);
* operands: registers, immediates and offsets replaced by simpler ones (0, 1,
  small), register-source ALU/JMP turned into immediate-source, ``lddw`` of a
  32-bit constant turned into ``mov`` (one slot less);
* maps: ``max_entries`` shrunk, map keys and values, run memory simplified.

A candidate is kept only when the *interestingness test* accepts it; for a
finding that test is: the checker finds it valid AND the oracle, run with the
profile and injected bugs recorded in the scenario's meta, reports the same
divergence signature (:func:`finding_test`).  Passes repeat until a whole
round changes nothing, so the result is 1-minimal with respect to every
reduction above.  Each simplification strictly decreases a well-founded
measure (size, then the magnitude of operands), so the loop terminates.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

from bpfdiff.isa import (
    BPF_ALU,
    BPF_ALU64,
    BPF_JA,
    BPF_JMP,
    BPF_JMP32,
    BPF_K,
    BPF_MOV,
    BPF_X,
    Insn,
    Program,
    jump_target,
    lddw_value,
    to_s32,
)
from bpfdiff.scenario import Delete, Load, MapDef, Run, Scenario, Update

Interesting = Callable[[Scenario], bool]
Progress = Callable[[str], None]


class BudgetExhausted(Exception):
    """The time budget ran out; the best scenario so far is the answer."""


# --------------------------------------------------------------------------
# Generic ddmin (Zeller & Hildebrandt 2002) over a list of items.
# --------------------------------------------------------------------------
def ddmin(items: Sequence[Any], test: Callable[[list[Any]], bool]) -> list[Any]:
    """Return a 1-minimal sublist of ``items`` for which ``test`` holds.

    ``test(items)`` is assumed true on entry.  The result keeps the items'
    order; removing any single item of it makes ``test`` false.
    """
    current = list(items)
    granularity = 2
    while len(current) >= 2:
        chunks = _split(current, granularity)
        reduced = False
        # Complements first: removing one chunk is the common success in
        # scenario minimisation (most of a finding is noise around one core).
        for i in range(len(chunks)):
            complement = [x for j, chunk in enumerate(chunks) if j != i for x in chunk]
            if test(complement):
                current, granularity, reduced = complement, max(granularity - 1, 2), True
                break
        if not reduced:
            for chunk in chunks:
                if len(chunk) < len(current) and test(chunk):
                    current, granularity, reduced = chunk, 2, True
                    break
        if not reduced:
            if granularity >= len(current):
                break
            granularity = min(len(current), granularity * 2)
    if len(current) == 1 and test([]):
        return []
    return current


def _split(items: list[Any], parts: int) -> list[list[Any]]:
    size, extra = divmod(len(items), parts)
    chunks, start = [], 0
    for i in range(parts):
        end = start + size + (1 if i < extra else 0)
        if end > start:
            chunks.append(items[start:end])
        start = end
    return chunks


# --------------------------------------------------------------------------
# Program surgery: remove or replace instruction units, keeping jumps right.
# --------------------------------------------------------------------------
def instruction_units(insns: Sequence[Insn]) -> list[tuple[int, int]]:
    """(start pc, slot count) of every instruction; ``lddw`` is one unit of two slots."""
    units, pc = [], 0
    while pc < len(insns):
        width = 2 if insns[pc].is_lddw and pc + 1 < len(insns) else 1
        units.append((pc, width))
        pc += width
    return units


def _jump_field(insn: Insn) -> str:
    """Which field holds a branch displacement: ``imm`` for ``call local`` and ``ja32``."""
    if insn.is_pseudo_call or insn.opcode == BPF_JMP32 | BPF_JA:
        return "imm"
    return "off"


def rewrite_program(insns: Sequence[Insn], replacements: dict[int, Sequence[Insn]]) -> list[Insn] | None:
    """Replace units (keyed by start pc) with new slots, fixing every other branch.

    An empty replacement deletes the unit.  A branch whose target was deleted
    lands on whatever instruction now follows the deleted range.  Returns None
    when a fixed-up displacement does not fit its field (the candidate is
    then simply not tried).
    """
    units = instruction_units(insns)
    new_pc: dict[int, int] = {}
    out_units: list[tuple[int, list[Insn]]] = []
    pc_out = 0
    for start, width in units:
        new_pc[start] = pc_out
        slots = list(replacements[start]) if start in replacements else list(insns[start:start + width])
        out_units.append((start, slots))
        pc_out += len(slots)
    end = pc_out
    new_pc[len(insns)] = end

    def moved(target: int) -> int:
        # Targets inside an lddw pair are invalid to begin with; map them to the pair.
        while target not in new_pc and target > 0:
            target -= 1
        return new_pc.get(target, end + 1)

    result: list[Insn] = []
    for start, slots in out_units:
        for k, insn in enumerate(slots):
            here = new_pc[start] + k
            # Replacement slots are written relative to the unit's old position too.
            target = jump_target(start + k, insn)
            if target is not None and 0 <= target <= len(insns):
                disp = moved(target) - here - 1
                name = _jump_field(insn)
                limit = 1 << 15 if name == "off" else 1 << 31
                if not -limit <= disp < limit:
                    return None
                insn = replace(insn, **{name: disp})
            result.append(insn)
    return result


# --------------------------------------------------------------------------
# Scenario surgery.
# --------------------------------------------------------------------------
def _with_program(scenario: Scenario, name: str, insns: Sequence[Insn]) -> Scenario:
    programs = tuple(Program(p.name, tuple(insns)) if p.name == name else p for p in scenario.programs)
    return replace(scenario, programs=programs)


def _event_mentions_program(event: Any, name: str) -> bool:
    if isinstance(event, Run | Load):
        return event.prog == name
    return isinstance(event, Update) and event.value == name


def _event_map(event: Any) -> str | None:
    return event.map if isinstance(event, Update | Delete) else None


def without_program(scenario: Scenario, name: str) -> Scenario:
    """Drop a program and every event that names it (runs, loads, prog-array values)."""
    return replace(
        scenario,
        programs=tuple(p for p in scenario.programs if p.name != name),
        events=tuple(e for e in scenario.events if not _event_mentions_program(e, name)),
    )


def substitute_program(scenario: Scenario, old: str, new: str) -> Scenario:
    """Drop program ``old``; every run, load and prog-array value naming it names ``new`` instead.

    A Load of ``old`` is dropped when ``new`` is loaded anyway (a program loads once).
    """
    loads_new = any(isinstance(e, Load) and e.prog == new for e in scenario.events)
    events = []
    for event in scenario.events:
        if isinstance(event, Load) and event.prog == old:
            if loads_new:
                continue
            event = replace(event, prog=new)
        elif isinstance(event, Run) and event.prog == old:
            event = replace(event, prog=new)
        elif isinstance(event, Update) and event.value == old:
            event = replace(event, value=new)
        events.append(event)
    if not loads_new and any(isinstance(e, Load) and e.prog == new for e in events):
        # `new` used to load up front; keep it that way, the Load that replaced old's is not needed
        events = [e for e in events if not (isinstance(e, Load) and e.prog == new)]
    return replace(scenario, programs=tuple(p for p in scenario.programs if p.name != old), events=tuple(events))


def without_map(scenario: Scenario, name: str) -> Scenario | None:
    """Drop a map and its events; None while a program still refers to it."""
    if any(name in p.map_names for p in scenario.programs):
        return None
    return replace(
        scenario,
        maps=tuple(m for m in scenario.maps if m.name != name),
        events=tuple(e for e in scenario.events if _event_map(e) != name),
    )


def drop_unreferenced(scenario: Scenario) -> Scenario:
    """Remove programs no event names and maps nothing refers to (always safe)."""
    named = {e.prog for e in scenario.events if isinstance(e, Run | Load)}
    named |= {e.value for e in scenario.events if isinstance(e, Update) and isinstance(e.value, str)}
    programs = tuple(p for p in scenario.programs if p.name in named)
    used_maps = {m for p in programs for m in p.map_names} | {
        _event_map(e) for e in scenario.events if _event_map(e) is not None
    }
    maps = tuple(m for m in scenario.maps if m.name in used_maps)
    return replace(scenario, programs=programs, maps=maps)


# --------------------------------------------------------------------------
# Simpler values.  Every proposal is strictly smaller in a well-founded order,
# so accepting proposals cannot cycle.
# --------------------------------------------------------------------------
def _int_rank(value: int) -> tuple[int, bool]:
    return abs(value), value < 0


def simpler_ints(value: int) -> list[int]:
    """Candidates strictly simpler than ``value``: 0, 1, -1, small, halves."""
    proposals = [0, 1, -1, 2, value // 2, -value if value < 0 else value, value >> 1,
                 value - 1 if value > 0 else value + 1]
    seen: list[int] = []
    for p in proposals:
        if _int_rank(p) < _int_rank(value) and p not in seen:
            seen.append(p)
    return seen


def _simpler_insns(insn: Insn) -> Iterator[Insn]:
    """One-slot variants of ``insn`` with simpler operands (validity is the checker's call)."""
    if insn.is_exit or insn.is_helper_call or insn.is_pseudo_call or insn.opcode == 0:
        return
    if insn.cls in (BPF_ALU, BPF_ALU64, BPF_JMP, BPF_JMP32) and insn.source == BPF_X \
            and insn.op != 0xD0 and not (insn.is_jmp and insn.op == BPF_JA):
        for imm in (0, 1):
            yield replace(insn, opcode=insn.opcode & ~BPF_X | BPF_K, src=0, imm=imm, off=0 if insn.is_alu else insn.off)
    for reg_field in ("dst", "src"):
        reg = getattr(insn, reg_field)
        for simpler in range(reg):
            if simpler == 10 or (reg_field == "src" and insn.is_lddw):
                continue
            yield replace(insn, **{reg_field: simpler})
    if not insn.is_lddw and not (insn.is_jmp and insn.op != BPF_JA and insn.source == BPF_X):
        if not (insn.cls == BPF_JMP32 and insn.op == BPF_JA):
            for imm in simpler_ints(insn.imm):
                yield replace(insn, imm=imm)
    if insn.cls not in (BPF_JMP, BPF_JMP32):     # jump offsets are structure, not operands
        for off in simpler_ints(insn.off):
            yield replace(insn, off=off)


def _simpler_lddw(first: Insn, second: Insn) -> Iterator[list[Insn]]:
    if first.src != 0:          # map loads keep their map
        return
    value = lddw_value(first, second)
    signed = value - (1 << 64) if value >> 63 else value
    if -(1 << 31) <= signed < (1 << 31):
        # mov64 sign-extends its imm: the same constant in one slot.
        yield [Insn(BPF_ALU64 | BPF_MOV | BPF_K, first.dst, 0, 0, to_s32(signed))]
    for smaller in simpler_ints(signed):
        lo = smaller & 0xFFFFFFFF
        hi = (smaller >> 32) & 0xFFFFFFFF
        yield [replace(first, imm=to_s32(lo)), replace(second, imm=to_s32(hi))]


def _simpler_bytes(data: bytes) -> list[bytes]:
    proposals = [b"", data[: len(data) // 2], bytes(len(data))]
    return [p for p in proposals if (len(p), p) < (len(data), data)]


# --------------------------------------------------------------------------
# The reducer.
# --------------------------------------------------------------------------
@dataclass
class MinimizeResult:
    scenario: Scenario
    start_size: tuple[int, int]           # (slots, events) of the input
    end_size: tuple[int, int]
    tests: int                            # interestingness tests actually run
    cache_hits: int                       # candidates answered from the cache
    seconds: float
    timed_out: bool
    rounds: int                           # passes over all reductions until nothing changed


class Minimizer:
    """Shrinks one scenario against one interestingness test."""

    def __init__(
        self,
        scenario: Scenario,
        is_interesting: Interesting,
        *,
        time_budget: float | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.best = scenario
        self.start = scenario
        self._test = is_interesting
        self._deadline = None if time_budget is None else time.monotonic() + time_budget
        self._progress = progress
        self._cache: dict[Scenario, bool] = {}
        self.tests = 0
        self.cache_hits = 0
        self._started = time.monotonic()

    # -- the test, cached ------------------------------------------------------
    def interesting(self, candidate: Scenario) -> bool:
        # Scenarios are immutable, hashable values; two equal ones print to the
        # same text, so this is a cache by scenario text without printing.
        if candidate in self._cache:
            self.cache_hits += 1
            return self._cache[candidate]
        if self._deadline is not None and time.monotonic() > self._deadline:
            raise BudgetExhausted
        self.tests += 1
        verdict = bool(self._test(candidate))
        self._cache[candidate] = verdict
        return verdict

    def _accept(self, candidate: Scenario | None, why: str) -> bool:
        if candidate is None or candidate == self.best:
            return False
        if not self.interesting(candidate):
            return False
        before = self.best.size()
        self.best = candidate
        if candidate.size() != before:
            self._say(why)
        return True

    def _say(self, why: str) -> None:
        if self._progress is None:
            return
        (s0, e0), (s1, e1) = self.start.size(), self.best.size()
        elapsed = time.monotonic() - self._started
        self._progress(
            f"minimize: {s1} slots, {e1} events (start {s0} slots, {e0} events) "
            f"[{why}; {self.tests} tests, {elapsed:.1f}s]"
        )

    # -- passes ----------------------------------------------------------------
    def pass_events(self) -> bool:
        events = self.best.events
        if not events:
            return False
        base = self.best

        def keeps(indices: list[int]) -> bool:
            return self.interesting(replace(base, events=tuple(events[i] for i in indices)))

        kept = ddmin(list(range(len(events))), keeps)
        return self._accept(replace(base, events=tuple(events[i] for i in kept)), "events")

    def pass_unreferenced(self) -> bool:
        changed = self._accept(drop_unreferenced(self.best), "unreferenced programs/maps")
        for prog in [p.name for p in self.best.programs]:
            changed |= self._accept(without_program(self.best, prog), f"program {prog}")
        for m in [m.name for m in self.best.maps]:
            changed |= self._accept(without_map(self.best, m), f"map {m}")
        return changed

    def pass_merge_programs(self) -> bool:
        """Replace a program by another one everywhere (e.g. a chain p0 -> p1 -> p1... by p1 -> p1...)."""
        changed = False
        names = [p.name for p in self.best.programs]
        for old in names:
            for new in names:
                if old != new and old in {p.name for p in self.best.programs} \
                        and new in {p.name for p in self.best.programs}:
                    changed |= self._accept(substitute_program(self.best, old, new), f"{old} -> {new}")
        return changed

    def pass_subprograms(self) -> bool:
        """Remove a bpf-to-bpf callee together with every ``call local`` to it.

        Neither removal alone is valid (a call to nowhere; code nothing calls is
        unreachable, which the verifier refuses), and the two are far apart, so
        ddmin's chunks rarely catch them together.
        """
        changed = False
        for prog_name in [p.name for p in self.best.programs]:
            index = 0
            while True:
                insns = self.best.program(prog_name).insns
                starts = sorted({t for pc, i in enumerate(insns) if i.is_pseudo_call
                                 and (t := jump_target(pc, i)) is not None and 0 < t < len(insns)})
                if index >= len(starts):
                    break
                start = starts[index]
                end = next((s for s in starts if s > start), len(insns))
                doomed = {pc for pc, i in enumerate(insns) if i.is_pseudo_call and jump_target(pc, i) == start}
                doomed |= {u for u, _ in instruction_units(insns) if start <= u < end}
                new = rewrite_program(insns, dict.fromkeys(doomed, ()))
                if new and self._accept(_with_program(self.best, prog_name, new), f"subprogram of {prog_name}"):
                    changed = True
                else:
                    index += 1
        return changed

    def pass_instructions(self) -> bool:
        changed = False
        for prog_name in [p.name for p in self.best.programs]:
            base = self.best
            insns = base.program(prog_name).insns
            units = instruction_units(insns)

            def program_of(kept: list[int], insns: tuple[Insn, ...] = insns,
                           units: list[tuple[int, int]] = units) -> list[Insn] | None:
                keep = set(kept)
                return rewrite_program(insns, {start: () for start, _ in units if start not in keep})

            def keeps(kept: list[int], base: Scenario = base, prog_name: str = prog_name,
                      program_of: Callable[[list[int]], list[Insn] | None] = program_of) -> bool:
                new = program_of(kept)
                return new is not None and bool(new) and self.interesting(_with_program(base, prog_name, new))

            kept = ddmin([start for start, _ in units], keeps)
            new = program_of(kept)
            if new is not None and new:
                changed |= self._accept(_with_program(base, prog_name, new), f"instructions of {prog_name}")
        return changed

    def pass_instruction_windows(self) -> bool:
        """Remove 2 or 3 adjacent units at every position: ddmin's chunks need not line up
        with e.g. a ``call local`` and the ``exit`` after it, which only go together."""
        changed = False
        for prog_name in [p.name for p in self.best.programs]:
            for width in (2, 3):
                index = 0
                while True:
                    insns = self.best.program(prog_name).insns
                    units = instruction_units(insns)
                    if index + width > len(units) or len(units) <= width:
                        break
                    new = rewrite_program(insns, {start: () for start, _ in units[index:index + width]})
                    if new is not None and self._accept(_with_program(self.best, prog_name, new),
                                                        f"instructions of {prog_name}"):
                        changed = True
                    else:
                        index += 1
        return changed

    def pass_operands(self) -> bool:
        changed = False
        for prog_name in [p.name for p in self.best.programs]:
            start_index = 0
            while True:
                insns = self.best.program(prog_name).insns
                units = instruction_units(insns)
                if start_index >= len(units):
                    break
                pc, width = units[start_index]
                if width == 2:
                    variants = _simpler_lddw(insns[pc], insns[pc + 1])
                else:
                    variants = ([v] for v in _simpler_insns(insns[pc]))
                for variant in variants:
                    new = rewrite_program(insns, {pc: variant})
                    if new is not None and self._accept(_with_program(self.best, prog_name, new),
                                                        f"operands of {prog_name}:{pc}"):
                        changed = True
                        break     # re-read the unit: a simpler value may simplify further
                else:
                    start_index += 1
        return changed

    def pass_maps(self) -> bool:
        changed = False
        for index in range(len(self.best.maps)):
            while True:
                m = self.best.maps[index]
                for entries in simpler_ints(m.max_entries):
                    if entries >= 1 and self._accept(self._with_map(index, replace(m, max_entries=entries)),
                                                     f"max_entries of {m.name}"):
                        changed = True
                        break
                else:
                    break
        return changed

    def _with_map(self, index: int, new: MapDef) -> Scenario:
        maps = list(self.best.maps)
        maps[index] = new
        return replace(self.best, maps=tuple(maps))

    def pass_event_data(self) -> bool:
        changed = False
        for index in range(len(self.best.events)):
            progress = True
            while progress:
                progress = False
                for variant in _simpler_events(self.best.events[index], self.best):
                    events = list(self.best.events)
                    events[index] = variant
                    if self._accept(replace(self.best, events=tuple(events)), f"event {index}"):
                        changed = progress = True
                        break
        return changed

    # -- the fixpoint ----------------------------------------------------------
    PASSES = ("pass_events", "pass_unreferenced", "pass_merge_programs", "pass_subprograms", "pass_instructions",
              "pass_instruction_windows",
              "pass_operands", "pass_maps", "pass_event_data")

    def run(self) -> MinimizeResult:
        rounds = 0
        timed_out = False
        try:
            if not self.interesting(self.best):
                raise ValueError("the input does not show the divergence it is minimised for")
            changed = True
            while changed:
                rounds += 1
                changed = False
                for name in self.PASSES:
                    changed |= getattr(self, name)()
        except BudgetExhausted:
            timed_out = True
            self._say("time budget exhausted")
        return MinimizeResult(
            scenario=self.best, start_size=self.start.size(), end_size=self.best.size(),
            tests=self.tests, cache_hits=self.cache_hits,
            seconds=time.monotonic() - self._started, timed_out=timed_out, rounds=rounds,
        )


def _smaller_programs(scenario: Scenario, name: str) -> list[str]:
    """Programs strictly smaller than ``name`` (slots, then name): a run or slot may move to one."""
    sizes = {p.name: (len(p.insns), p.name) for p in scenario.programs}
    if name not in sizes:
        return []
    return sorted((n for n, key in sizes.items() if key < sizes[name]), key=sizes.__getitem__)


def _simpler_events(event: Any, scenario: Scenario) -> Iterator[Any]:
    # Moving a run (or a prog-array value) to a smaller program can leave the
    # bigger one unreferenced: a step plain deletion cannot take.
    if isinstance(event, Run):
        for mem in _simpler_bytes(event.mem):
            yield replace(event, mem=mem)
        for prog in _smaller_programs(scenario, event.prog):
            yield replace(event, prog=prog)
    elif isinstance(event, Update):
        if isinstance(event.value, str):
            for prog in _smaller_programs(scenario, event.value):
                yield replace(event, value=prog)
        if isinstance(event.value, bytes):
            for value in _simpler_bytes(event.value):
                if len(value) == len(event.value):
                    yield replace(event, value=value)
        if event.flags:
            yield replace(event, flags=0)
        yield from (replace(event, key=k) for k in _simpler_keys(event.key))
    elif isinstance(event, Delete):
        yield from (replace(event, key=k) for k in _simpler_keys(event.key))


def _simpler_keys(key: bytes) -> list[bytes]:
    value = int.from_bytes(key, "little")
    return [v.to_bytes(len(key), "little") for v in simpler_ints(value) if v >= 0]


# --------------------------------------------------------------------------
# Findings: the interestingness test from the oracle and the checker.
# --------------------------------------------------------------------------
def oracle_signatures(scenario: Scenario, profile: str, bugs: frozenset[str],
                      engines: tuple[str, ...] = ("interp", "jit"), pool: Any = None) -> tuple[str, ...]:
    """Every finding's signature for a scenario, the primary one first; empty when the engines agree."""
    from bpfdiff.fuzz.oracle import run_oracle

    verdict = run_oracle(scenario, engines=engines, profile=profile, bugs=bugs, pool=pool)
    return tuple(dict.fromkeys(f.signature for f in verdict.findings))


def oracle_signature(scenario: Scenario, profile: str, bugs: frozenset[str],
                     engines: tuple[str, ...] = ("interp", "jit"), pool: Any = None) -> str | None:
    """The oracle's (primary) signature for a scenario, or None when the engines agree."""
    signatures = oracle_signatures(scenario, profile, bugs, engines, pool)
    return signatures[0] if signatures else None


def finding_test(target_signature: str, profile: str, bugs: frozenset[str],
                 engines: tuple[str, ...] = ("interp", "jit"), pool: Any = None,
                 primary: bool = True) -> Interesting:
    """Valid for the checker and still showing ``target_signature``.

    ``primary``: it must be the primary finding's signature (the default);
    otherwise any finding of the verdict may have it (a scenario showing two
    bugs, minimised for the second one).
    """
    from bpfdiff.fuzz.checker import check_scenario

    from bpfdiff.engine import EngineError
    from bpfdiff.profiles import get_profile

    profile_obj = get_profile(profile)

    def test(candidate: Scenario) -> bool:
        if not candidate.events or check_scenario(candidate, profile_obj):
            return False
        try:
            signatures = oracle_signatures(candidate, profile, bugs, engines, pool)
        except EngineError:
            return False
        return bool(signatures) and (signatures[0] == target_signature if primary else target_signature in signatures)

    return test


def minimize_finding(
    scenario: Scenario,
    *,
    profile: str | None = None,
    bugs: frozenset[str] | None = None,
    engines: tuple[str, ...] | None = None,
    time_budget: float | None = 60.0,
    progress: Progress | None = None,
    pool: Any = None,
    signature: str | None = None,
) -> MinimizeResult:
    """Minimise a finding for the divergence it shows now (with its meta's settings,
    :func:`bpfdiff.settings.resolve_settings`; the arguments override them).

    By default the primary finding's signature is kept; ``signature`` names
    another finding of the scenario to keep instead.  Raises ValueError when
    the scenario shows no divergence (or not ``signature``), or the checker
    refuses it.  The result's meta keeps the input's and records the signature.
    """
    from bpfdiff.fuzz.checker import check_scenario

    from bpfdiff.settings import resolve_settings

    settings = resolve_settings(scenario, profile=profile, inject=bugs, engines=engines)
    profile, bugs, engines = settings.profile, settings.bugs, settings.engines
    refused = check_scenario(scenario, profile)
    if refused:
        # Every candidate must pass the checker; when the input itself does not, none can.
        raise ValueError(f"the checker refuses this scenario ({refused[0]}), so no reduction of it would be valid")
    shown = oracle_signatures(scenario, profile, bugs, engines, pool)
    if not shown:
        raise ValueError("the engines agree on this scenario: nothing to minimise")
    if signature is not None and signature not in shown:
        raise ValueError(f"the scenario does not show {signature!r} (it shows {', '.join(shown)})")
    target = signature or shown[0]
    test = finding_test(target, profile, bugs, engines, pool, primary=signature is None)
    result = Minimizer(scenario, test, time_budget=time_budget, progress=progress).run()
    # the settings it was minimised with, which may override the input's meta
    meta = {"profile": profile, **dict(result.scenario.meta)}
    meta["profile"] = profile
    meta.pop("inject", None)
    meta.pop("bugs", None)
    if bugs:
        meta["inject"] = ",".join(sorted(bugs))
    meta["engines"] = ",".join(engines)
    meta["signature"] = target
    meta["original_size"] = f"{result.start_size[0]}/{result.start_size[1]}"
    result.scenario = replace(result.scenario, meta=tuple(meta.items()))
    return result


def stderr_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
