"""Field-by-field comparison of what several engines did with one scenario.

This is the one place where outcomes are compared: ``bpfdiff run`` and the
fuzz oracle both build on :func:`compare_outcomes`.  For a ``run`` event every
field of :meth:`RunResult.compared_fields` is compared (exit kind, R0 when the
run exited, fault kind and pc, tail-call count, program trace, map contents,
memory) -- only exit kind and fault kind when a run overflowed the stack in any
engine (how far it got is an engine detail); for a map event (update,
delete, load) the return code.  Engine
self-check violations are not compared: each one is a finding on its own.

Engines observe different things (:attr:`bpfdiff.engine.Engine.observes`,
:attr:`~bpfdiff.engine.Engine.r0_bits`): the real kernel shows no program
trace or tail-call count and returns a 32-bit R0.  A field is compared only
among the engines that observe it (:class:`Observation`), R0 on the low
``min(r0_bits)`` bits of those engines.  :func:`odd_one_out` names the engine
that stands alone against all the others.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bpfdiff.engine import FAULT_STACK_OVERFLOW, Engine, EventOutcome, RunResult

# Pseudo-fields for outcomes that cannot be compared field by field.
FIELD_COUNT = "events"  # engines returned different numbers of outcomes
FIELD_KIND = "kind"     # engines disagree on what kind of event this was
FIELD_RUN = "run"       # one engine has a RunResult, another none
FIELD_RETVAL = "retval"


@dataclass(frozen=True, slots=True)
class Difference:
    """Engines disagree on one field of one event.  ``values`` maps engine name -> its value."""

    event_index: int
    kind: str                 # the event's kind: run, update, delete, load (or "?")
    field: str                # a RunResult field, "retval", or one of the FIELD_* above
    values: dict[str, Any]

    @property
    def engines(self) -> tuple[str, ...]:
        return tuple(self.values)


@dataclass(frozen=True, slots=True)
class Observation:
    """What an engine can observe of a run: the RunResult fields it reports and R0's width."""

    observes: frozenset[str] = frozenset(RunResult.COMPARED)
    r0_bits: int = 64

    @classmethod
    def of(cls, engine: Engine) -> Observation:
        return cls(frozenset(engine.observes), engine.r0_bits)


FULL = Observation()
Observations = Mapping[str, Observation]


def observations_of(engines: Mapping[str, Engine]) -> dict[str, Observation]:
    return {name: Observation.of(engine) for name, engine in engines.items()}


def _all_equal(values: Mapping[str, Any]) -> bool:
    items = list(values.values())
    return all(item == items[0] for item in items[1:])


def _run_field_values(name: str, fields: Mapping[str, dict[str, Any]],
                      observations: Observations) -> dict[str, Any]:
    """The field's value per engine that observes it; R0 cut to the narrowest observer's width."""
    seen = {engine: f[name] for engine, f in fields.items() if name in observations.get(engine, FULL).observes}
    if name == "r0" and seen:
        bits = min(observations.get(engine, FULL).r0_bits for engine in seen)
        if bits < 64:
            mask = (1 << bits) - 1
            seen = {engine: None if value is None else value & mask for engine, value in seen.items()}
    return seen


def _compare_event(index: int, events: Mapping[str, EventOutcome], observations: Observations) -> list[Difference]:
    first, *others = events.values()
    if all(o.kind == first.kind and o.run == first.run and o.retval == first.retval for o in others):
        return []    # the same in every field (most events): nothing differs on any observed part of them
    kinds = {engine: outcome.kind for engine, outcome in events.items()}
    if not _all_equal(kinds):
        return [Difference(index, "?", FIELD_KIND, kinds)]
    kind = next(iter(kinds.values()))
    runs = {engine: outcome.run for engine, outcome in events.items()}
    if any(run is not None for run in runs.values()):
        if any(run is None for run in runs.values()):
            return [Difference(index, kind, FIELD_RUN, {e: r is not None for e, r in runs.items()})]
        fields = {engine: run.compared_fields() for engine, run in runs.items() if run is not None}
        overflowed = any(run.fault_kind == FAULT_STACK_OVERFLOW for run in runs.values() if run is not None)
        differences = []
        for name in RunResult.COMPARED_ON_OVERFLOW if overflowed else RunResult.COMPARED:
            values = _run_field_values(name, fields, observations)
            if len(values) > 1 and not _all_equal(values):
                differences.append(Difference(index, kind, name, values))
        return differences
    retvals = {engine: outcome.retval for engine, outcome in events.items()}
    if not _all_equal(retvals):
        return [Difference(index, kind, FIELD_RETVAL, retvals)]
    return []


def compare_outcomes(outcomes: Mapping[str, Sequence[EventOutcome]],
                     observations: Observations | None = None) -> list[Difference]:
    """Every field on which the engines' outcomes differ, in event order then field order.

    ``outcomes`` maps engine name -> that engine's outcomes (one per event);
    ``observations`` engine name -> what it observes (default: everything,
    64-bit R0).  A run field is compared among the engines that observe it,
    R0 on the low ``min(r0_bits)`` bits of those.  With fewer than two engines
    there is nothing to compare.
    """
    if len(outcomes) < 2:
        return []
    observations = observations or {}
    lengths = {engine: len(seq) for engine, seq in outcomes.items()}
    differences: list[Difference] = []
    for index in range(min(lengths.values())):
        differences += _compare_event(index, {engine: seq[index] for engine, seq in outcomes.items()}, observations)
    if not _all_equal(lengths):
        differences.append(Difference(min(lengths.values()), "?", FIELD_COUNT, lengths))
    return differences


def odd_one_out(differences: Sequence[Difference]) -> str | None:
    """The engine that stands alone against all the others on these differences, if one does.

    Each difference with three or more engines that observed the field votes:
    when every other engine has one value and a single engine another, that
    engine is its candidate; a field where the engines split otherwise gives
    no candidate and makes the answer None.  Differences seen by only two
    engines cannot say which one is wrong and do not vote.  The answer is the
    one candidate all voting differences agree on, else None.
    """
    candidates: set[str] = set()
    for difference in differences:
        if len(difference.values) < 3:
            continue
        groups: dict[str, list[str]] = {}
        for engine, value in difference.values.items():
            groups.setdefault(repr(value), []).append(engine)
        alone = [members[0] for members in groups.values() if len(members) == 1]
        if len(groups) != 2 or len(alone) != 1:
            return None
        candidates.add(alone[0])
    return candidates.pop() if len(candidates) == 1 else None


# -- display ---------------------------------------------------------------------
def _format_r0(value: int | None) -> str:
    return "-" if value is None else f"0x{value:x}"


def format_trace(trace: Sequence[str]) -> str:
    """``caller -> target``; repeats collapse: a 34-deep self tail call is ``loop x34``."""
    if not trace:
        return "(none)"
    runs: list[list] = []
    for name in trace:
        if runs and runs[-1][0] == name:
            runs[-1][1] += 1
        else:
            runs.append([name, 1])
    return " -> ".join(name if count == 1 else f"{name} x{count}" for name, count in runs)


def _format_mem(mem: bytes) -> str:
    return mem.hex(" ") if mem else "(empty)"


def _format_maps(maps: Sequence[tuple[str, Sequence[tuple[str, str]]]]) -> str:
    parts = []
    for name, contents in maps:
        entries = ", ".join(f"{k}: {v}" for k, v in contents)
        parts.append(f"{name} {{{entries}}}")
    return "; ".join(parts) if parts else "(no maps)"


def _format_plain(value: Any) -> str:
    return "-" if value is None else str(value)


# How each field's value is shown; anything not listed is shown with str().
FIELD_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "r0": _format_r0,
    "trace": format_trace,
    "mem": _format_mem,
    "maps": _format_maps,
}


def format_value(field: str, value: Any) -> str:
    return FIELD_FORMATTERS.get(field, _format_plain)(value)


def _narrowed(difference: Difference) -> dict[str, Any]:
    """For maps and memory, show only the part that differs."""
    values = difference.values
    if difference.field == "maps":
        by_engine = {e: dict(v) for e, v in values.items()}
        names = sorted({name for maps in by_engine.values() for name in maps})
        differing = [n for n in names if not _all_equal({e: m.get(n) for e, m in by_engine.items()})]
        return {e: tuple((n, _differing_entries(n, by_engine)[e]) for n in differing) for e in values}
    return values


def _differing_entries(map_name: str, by_engine: dict[str, dict[str, Any]]) -> dict[str, tuple]:
    contents = {e: dict(maps.get(map_name) or ()) for e, maps in by_engine.items()}
    keys = sorted({k for c in contents.values() for k in c})
    differing = [k for k in keys if not _all_equal({e: c.get(k) for e, c in contents.items()})]
    return {e: tuple((k, c.get(k, "(absent)")) for k in differing) for e, c in contents.items()}


def _first_mem_difference(values: Mapping[str, bytes]) -> int | None:
    blobs = list(values.values())
    for offset in range(max(len(b) for b in blobs)):
        if not _all_equal({str(i): b[offset:offset + 1] for i, b in enumerate(blobs)}):
            return offset
    return None


MEM_WINDOW = 16  # memory differences show 32 bytes from the 16-byte line of the first one


def format_difference(difference: Difference, width: int = 36) -> str:
    """The differing field side by side, one column per engine.

    ``event 3 (run) r0:  interp 0x2a | jit 0x1`` for short values, one line
    per engine for long ones (traces, maps, memory).
    """
    values = _narrowed(difference)
    shown = {engine: format_value(difference.field, value) for engine, value in values.items()}
    head = f"event {difference.event_index} ({difference.kind}) {difference.field}"
    if difference.field == "mem":
        offset = _first_mem_difference(difference.values)
        if offset is not None:
            head += f" (first difference at byte {offset})"
            # A window around the first difference, not the whole packet.
            start = offset - offset % MEM_WINDOW
            end = start + 2 * MEM_WINDOW
            shown = {engine: f"[{start}:{min(end, len(mem))}] {_format_mem(mem[start:end])}"
                     for engine, mem in difference.values.items()}
    if all(len(text) <= width for text in shown.values()):
        return f"{head}:  " + " | ".join(f"{engine} {text}" for engine, text in shown.items())
    pad = max(len(engine) for engine in shown)
    return "\n".join([f"{head}:"] + [f"  {engine:<{pad}}  {text}" for engine, text in shown.items()])
