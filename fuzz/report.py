"""Per-bucket reports for a kernel developer: Markdown files and one self-contained HTML page.

A report shows, for a bucket's (minimised) reproducer:

* one sentence saying what went wrong and in which engine (the engine that
  stands alone, or the one a what-if model names; for a direct tail-call site,
  the poke site that does not hold what its slot says it should);
* the scenario text, ready to paste into ``bpfdiff run``;
* one timeline: each event, each engine's outcome, and the poke sites whose
  bytes differ from what the engine expects;
* every field that diverged, with each engine's value;
* the BPF listing of every program (``bpftool prog dump xlated`` style);
* each engine's outcome of every event (R0, exit, tail calls, trace, retval);
* for each program the diverging run entered, the JIT image disassembled side
  by side with the BPF instruction that produced each part of it (the image
  ranges come from the JIT's ``addrs[]``), poke sites marked;
* the poke sites' state (nop or jmp target, and what the engine expected)
  after each event.

Engines are used only through the engine interface: the reproducer is
replayed on the engines it was found with, and the code comes from every
engine that shows it (:meth:`bpfdiff.engine.Engine.inspect`: today the JIT).

The data is gathered once (:func:`collect_report`) and rendered twice.  The
HTML page has inline CSS only: no scripts, no external resources.
"""

from __future__ import annotations

import html
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bpfdiff.scenario import Run, Scenario

# How many BPF instructions around the point of divergence the side-by-side shows.
WINDOW = 8


@dataclass
class JitRow:
    """One BPF instruction and the x86 code the JIT emitted for it."""

    pc: int
    bpf: str
    x86: list[str]
    marks: list[str] = field(default_factory=list)     # e.g. "poke site (target)", "divergence"


@dataclass
class JitListing:
    program: str
    base: int
    rows: list[JitRow]
    prologue: list[str]
    note: str = ""
    engine: str = "jit"


@dataclass
class PokeState:
    event: str                          # "after event 2: delete jmp_table 0"
    sites: list[tuple[str, str]]        # (site description, state)
    index: int | None = None            # the event, None after loading
    # (site description, actual, expected) of the sites whose bytes are not what the engine expects
    stale: list[tuple[str, str, str]] = field(default_factory=list)
    engine: str = "jit"
    # every poke site after the event: what it holds and what the engine expects, in words and bytes
    bytes: list[PokeBytes] = field(default_factory=list)


@dataclass
class PokeBytes:
    """One poke site after an event: its bytes and the bytes the engine expects for its slot."""

    site: str                   # "jit: site of p0 (jmp0[1], pc 3)"
    actual: str                 # "jmp p0+0xb"
    actual_bytes: str           # "e9 d1 ff ff ff"
    expected: str | None        # None: the engine has no opinion (site not stable yet)
    expected_bytes: str | None

    @property
    def ok(self) -> bool:
        return self.expected_bytes is None or self.expected_bytes == self.actual_bytes


@dataclass
class TimelineRow:
    """One event: what each engine made of it, and the poke sites after it."""

    index: int
    event: str
    outcomes: dict[str, str]
    differs: bool
    stale: list[tuple[str, str, str]] = field(default_factory=list)   # (site, actual, expected)
    pokes: list[PokeBytes] = field(default_factory=list)              # every site, after a map event
    fields: list[str] = field(default_factory=list)                   # what differs at this event


@dataclass
class ReportData:
    title: str
    signature: str
    related: list[str]
    first_seen: str
    reproducer: str
    flaky: bool
    count: int
    profile: str
    bugs: tuple[str, ...]
    files: list[str]
    scenario_text: str
    divergences: list[dict[str, Any]]
    listings: dict[str, str]
    outcomes: dict[str, list[str]]      # engine -> one line per event
    traces: dict[str, list[str]]        # engine -> trace of the diverging run
    jit: list[JitListing]
    pokes: list[PokeState]
    notes: list[str] = field(default_factory=list)
    verdict: str = ""                  # one sentence: what went wrong, in which engine
    timeline: list[TimelineRow] = field(default_factory=list)
    # how the reproducer came to be: "minimised from 36 slots / 11 events", or the smallest finding
    provenance: str = ""


# --------------------------------------------------------------------------
# Gathering.
# --------------------------------------------------------------------------
def collect_report(bucket: Any, title: str) -> ReportData:
    """Replay a bucket's best reproducer and gather everything a report shows."""
    from bpfdiff.disasm import format_xlated
    from bpfdiff.scenario_text import format_scenario

    rep = bucket.reproducer
    scenario: Scenario | None = bucket.best_scenario
    notes: list[str] = []
    data = ReportData(
        title=title, signature=bucket.signature, related=list(bucket.related), flaky=bucket.flaky,
        first_seen=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(bucket.first_seen)),
        reproducer=str(bucket.minimized or rep.path),
        count=bucket.count,
        profile=rep.profile, bugs=tuple(sorted(rep.bugs)),
        files=[str(f.path) for f in bucket.findings], scenario_text="", divergences=[], listings={},
        outcomes={}, traces={}, jit=[], pokes=[], notes=notes,
    )
    errors = sorted({f.error for f in bucket.findings if f.error})
    notes.extend(errors)
    if scenario is None:
        return data
    data.scenario_text = format_scenario(scenario)
    slots, events = scenario.size()
    if bucket.minimized is not None:
        original = scenario.meta_dict.get("original_size", "").replace("/", " slots / ")
        data.provenance = (f"minimised ({slots} slots / {events} events"
                           + (f", from {original} events" if original else "") + ")")
    else:
        data.provenance = f"the smallest of the bucket's findings ({slots} slots / {events} events), not minimised"
    data.listings = {p.name: format_xlated(p.insns) for p in scenario.programs}
    engines = tuple(getattr(rep, "engines", ("interp", "jit")))
    try:
        verdict = _verdict(scenario, rep.profile, rep.bugs, engines)
    except Exception as exc:  # noqa: BLE001 - e.g. an engine refusing the input: the report says so
        notes.append(f"replay failed: {type(exc).__name__}: {exc}")
        return data
    if verdict is not None:
        data.divergences = [_finding_dict(f) for f in verdict.findings]
    elif bucket.flaky:
        notes.append("the engines agree on this scenario now (flaky finding)")
    if verdict is not None:
        notes.extend(verdict.notes)
    outcomes = _outcomes(scenario, rep.profile, rep.bugs, engines, notes)
    event_index = data.divergences[0]["event_index"] if data.divergences else None
    for engine, events in outcomes.items():
        data.outcomes[engine] = [_outcome_line(scenario, o) for o in events]
        run = _run_at(events, event_index)
        if run is not None:
            data.traces[engine] = list(run.trace)
    all_pokes: list[PokeState] = []
    for engine in engines:
        listings, pokes = _jit_views(scenario, engine, rep.profile, rep.bugs, event_index, outcomes, notes)
        data.jit += listings
        all_pokes += pokes
    data.pokes = [state for state in all_pokes if state.index is None or
                  not isinstance(scenario.events[state.index], Run)]
    data.timeline = _timeline(scenario, outcomes, verdict, all_pokes)
    data.verdict = verdict_sentence(data.divergences[0] if data.divergences else None, scenario, data.timeline)
    return data


def _short_outcome(outcome: Any) -> str:
    from bpfdiff.compare import format_value

    run = outcome.run
    if run is None:
        return f"retval {outcome.retval}"
    ending = f"r0=0x{run.r0:x}" if run.exit == "exit" else f"{run.exit} {run.fault_kind or ''}".strip()
    return f"{ending} tail_calls={run.tail_calls} trace {format_value('trace', run.trace)}"


def _timeline(scenario: Scenario, outcomes: dict[str, list[Any]], verdict: Any,
              pokes: list[PokeState]) -> list[TimelineRow]:
    differing: dict[int, list[str]] = {}
    for d in (verdict.differences if verdict is not None else ()):
        differing.setdefault(d.event_index, []).append(d.field)
    rows = []
    for index in range(len(scenario.events)):
        shown = {engine: _short_outcome(seq[index]) for engine, seq in outcomes.items() if index < len(seq)}
        stale = [(f"{state.engine}: {site}", actual, expected) for state in pokes if state.index == index
                 for site, actual, expected in state.stale]
        # every site after a map event; after a run, the ones that are wrong
        run = isinstance(scenario.events[index], Run)
        sites = [site for state in pokes if state.index == index for site in state.bytes if not (run and site.ok)]
        rows.append(TimelineRow(index, _describe_event(scenario, index).split(": ", 1)[1], shown,
                                index in differing, stale, sites, differing.get(index, [])))
    return rows


_MODEL_WORDS = {
    "limit+1": "as if MAX_TAIL_CALL_CNT were one higher",
    "limit-1": "as if MAX_TAIL_CALL_CNT were one lower",
    "subprog-reset": "as if the tail-call counter restarted at zero in every subprogram",
    "odd": "against all the other engines",
    "ref": "against the reference interpreter, which follows RFC 9669; no probe says more",
    "landing": "its own self-check: a tail call landed at the wrong offset into its target",
    "counter": "its own self-check: a program's tail-call counter does not hold the count",
}
_FIELD_VERBS = {"tail_calls": "takes {} tail calls", "r0": "returns {}", "trace": "enters {}",
                "exit": "ends with {}", "fault_kind": "faults with {}", "retval": "returns {}",
                "maps": "leaves the maps as {}", "mem": "leaves the memory as {}"}


def _wrong_engine(finding: dict[str, Any]) -> tuple[str | None, str | None]:
    """The engine a finding blames (:func:`bpfdiff.fuzz.oracle.blamed_engine`) and the model that
    explains it (the part of its relation after ``@``)."""
    from bpfdiff.fuzz.oracle import blamed_engine

    parts = finding["signature"].split(":")
    engine = blamed_engine(finding["signature"]) or finding.get("odd")
    if finding["kind"] == "divergence" and len(parts) > 3 and "@" in parts[3]:
        return engine, parts[3].split("@", 1)[1]
    return engine, ("odd" if finding.get("odd") else None)


def verdict_sentence(finding: dict[str, Any] | None, scenario: Scenario, timeline: list[TimelineRow]) -> str:
    """One sentence: what went wrong, and in which engine."""
    if finding is None:
        return "The engines agree on this scenario: the finding does not reproduce."
    for row in timeline:
        if row.stale and (finding["event_index"] is None or row.index <= finding["event_index"]):
            site, actual, expected = row.stale[0]
            engine, where = site.split(": ", 1)
            sentence = (f"After `{row.event}` (event {row.index}) the {where} in {engine} holds `{actual}` where "
                        f"`{expected}` was expected: {_poke_fault(engine, actual, expected)}")
            effect = _effect(finding, timeline) if finding["kind"] == "divergence" else ""
            return sentence + (f"; so {effect}" if effect else "") + "."
    engine, model = _wrong_engine(finding)
    kind = finding["kind"]
    if kind == "violation":
        return f"{engine}'s self-check failed after event {finding['event_index']}: {finding['values'].get(engine)}."
    if kind == "crash":
        return f"{engine} crashed: {finding['values'].get(engine)}."
    if kind == "refused":
        return f"{engine} refuses to load a program that the other engines load and run: {finding['values'][engine]}."
    if kind == "known":
        explained = finding["detail"].split(" -- ")[-1]
        return (f"At {_event_words(finding, timeline)} the engines differ as the profile's real kernel does (not a "
                f"new bug): {explained}.")
    effect = _effect(finding, timeline, engine, model)
    return effect[:1].upper() + effect[1:] + "."


def _poke_fault(engine: str, actual: str, expected: str) -> str:
    """What a poke site holding ``actual`` where ``expected`` belongs means (``jmp p1+0xb``, ``nop5``)."""
    if actual.startswith("jmp ") and expected.startswith("jmp "):
        (prog, _, off), (want, _, want_off) = actual[4:].partition("+"), expected[4:].partition("+")
        if prog == want and off != want_off:
            return (f"{engine} patched the jump into {prog} at the wrong offset (+{off}, its tail-call entry is "
                    f"+{want_off})")
        return f"{engine} kept the jump into the slot's old program {prog} (the new one is {want})"
    if actual.startswith("jmp ") and expected == "nop5":
        return f"{engine} did not re-patch its direct tail-call site when the slot was emptied"
    if actual == "nop5" and expected.startswith("jmp "):
        return f"{engine} did not patch the jump there"
    return f"{engine} did not re-patch its direct tail-call site"


def _event_words(finding: dict[str, Any], timeline: list[TimelineRow]) -> str:
    """```run p0` (event 2)``: the event without its packet (the timeline shows it)."""
    index = finding["event_index"]
    if index is None or index >= len(timeline):
        return f"event {index}"
    return f"`{timeline[index].event.split(' mem=', 1)[0]}` (event {index})"


def _effect(finding: dict[str, Any], timeline: list[TimelineRow], engine: str | None = None,
            model: str | None = None) -> str:
    """``at `run p0` (event 2) jit takes 33 tail calls where interp takes 0 tail calls``."""
    if engine is None:
        engine, model = _wrong_engine(finding)
    name, values = finding["field"], finding["values"]
    event = f"at {_event_words(finding, timeline)}"
    verb = _FIELD_VERBS.get(name or "", f"has {name} {{}}")
    if engine in values:
        others = sorted({v for e, v in values.items() if e != engine})
        who = ", ".join(e for e in values if e != engine)
        why = f" ({_MODEL_WORDS[model]})" if model in _MODEL_WORDS else ""
        several = sum(1 for e in values if e != engine) > 1
        clause = _other_clause(verb, others) if several else verb.format(" or ".join(others))
        return _singular(f"{event} {engine} {verb.format(values[engine])} where {who} {clause}{why}")
    shown = "; ".join(f"{e} {verb.format(v)}" for e, v in values.items())
    return _singular(f"{event} the engines disagree: {shown}")


def _singular(text: str) -> str:
    return re.sub(r"\b1 tail calls\b", "1 tail call", text)


def _other_clause(verb: str, others: list[str]) -> str:
    """``take 33 tail calls`` for the other engines (the verb in the plural)."""
    text = verb.format(" or ".join(others))
    first, _, rest = text.partition(" ")
    plural = {"takes": "take", "returns": "return", "enters": "enter", "ends": "end", "faults": "fault",
              "leaves": "leave", "has": "have"}.get(first, first)
    return f"{plural} {rest}"


def _verdict(scenario: Scenario, profile: str, bugs: frozenset[str], engines: tuple[str, ...]) -> Any:
    from bpfdiff.fuzz.oracle import run_oracle

    verdict = run_oracle(scenario, engines=engines, profile=profile, bugs=bugs)
    return None if verdict.ok else verdict


def _finding_dict(finding: Any) -> dict[str, Any]:
    return {
        "kind": finding.kind, "signature": finding.signature, "event_index": finding.event_index,
        "field": finding.field, "values": dict(finding.values), "detail": finding.detail,
        "odd": getattr(finding, "odd", None),
    }


def _outcomes(scenario: Scenario, profile: str, bugs: frozenset[str], engines: tuple[str, ...],
              notes: list[str]) -> dict[str, list[Any]]:
    from bpfdiff.bugs import bugs_for
    from bpfdiff.engine import EngineError, make_engine

    result = {}
    for name in engines:
        try:
            engine = make_engine(name, profile=profile, bugs=bugs_for(name, bugs))
        except EngineError as exc:
            notes.append(f"{name} not available: {exc}")
            continue
        try:
            result[name] = engine.execute(scenario)
        except EngineError as exc:
            notes.append(f"{name}: {exc}")
        except Exception as exc:  # noqa: BLE001 - an engine crash is part of what the report shows
            notes.append(f"{name} crashed: {type(exc).__name__}: {exc}")
        finally:
            engine.close()
    return result


def _run_at(events: Sequence[Any], index: int | None) -> Any:
    if index is None or index >= len(events):
        runs = [o.run for o in events if o.run is not None]
        return runs[-1] if runs else None
    return events[index].run


def _describe_event(scenario: Scenario, index: int) -> str:
    from bpfdiff.scenario_text import format_event

    # the event's own line (a formatted scenario may end with other sections, -- prog_type)
    event_text = format_event(scenario.events[index], {m.name: m for m in scenario.maps})
    return f"{index}: {event_text}"


def _outcome_line(scenario: Scenario, outcome: Any) -> str:
    from bpfdiff.compare import format_value

    head = _describe_event(scenario, outcome.index) if outcome.index < len(scenario.events) else str(outcome.index)
    if outcome.run is None:
        line = f"{head} -> retval {outcome.retval}"
    else:
        run = outcome.run
        fault = f" {run.fault_kind} at {run.fault_prog}:{run.fault_pc}" if run.fault_kind else ""
        line = (f"{head} -> {run.exit}{fault} r0=0x{run.r0:x} tail_calls={run.tail_calls} "
                f"trace={format_value('trace', run.trace)}")
    if outcome.violations:
        line += f" VIOLATIONS: {'; '.join(outcome.violations)}"
    return line


# --------------------------------------------------------------------------
# The code side: each image around the divergence, poke sites after each event,
# from every engine that shows its code (Engine.inspect).
# --------------------------------------------------------------------------
class JitUnavailable(Exception):
    """The code of an engine cannot be shown (engine crashed, no image)."""


def _jit_views(scenario: Scenario, engine_name: str, profile: str, bugs: frozenset[str], event_index: int | None,
               outcomes: dict[str, list[Any]], notes: list[str]) -> tuple[list[JitListing], list[PokeState]]:
    from bpfdiff.engine import EngineUnsupported

    try:
        return _collect_code(scenario, engine_name, profile, bugs, event_index, outcomes)
    except EngineUnsupported:
        pass                    # an engine without code to show (the interpreter): nothing to say
    except JitUnavailable as exc:
        notes.append(f"{engine_name} image not shown: {exc}")
    except Exception as exc:  # noqa: BLE001 - a report must still come out when an engine crashes
        notes.append(f"{engine_name} image not shown: the engine raised {type(exc).__name__}: {exc}")
    return [], []


def _collect_code(scenario: Scenario, engine_name: str, profile: str, bugs: frozenset[str],
                  event_index: int | None, outcomes: dict[str, list[Any]]) -> tuple[list[JitListing], list[PokeState]]:
    """Step the engine through the events, recording poke sites; disassemble at the divergence."""
    from bpfdiff.bugs import bugs_for
    from bpfdiff.engine import make_engine

    engine = make_engine(engine_name, profile=profile, bugs=bugs_for(engine_name, bugs))
    try:
        stop = event_index if event_index is not None else len(scenario.events) - 1
        pokes: list[PokeState] = []
        programs: dict[str, Any] = {}
        for step in engine.inspect(scenario, stop):
            programs = step.programs
            label = "after loading" if step.index is None else f"after event {_describe_event(scenario, step.index)}"
            pokes.append(PokeState(label, _poke_sites(programs), step.index, _stale_sites(programs), engine_name,
                                   _poke_bytes(programs, engine_name)))
        if not programs:
            raise JitUnavailable("no program was loaded")
        entered = _entered_programs(outcomes, event_index) or [p.name for p in scenario.programs]
        fault = _fault_point(outcomes, event_index)
        listings = [_jit_listing(programs, scenario, name, fault, engine_name) for name in entered
                    if name in programs and programs[name].images]
        if not any(state.sites for state in pokes):
            pokes = []          # no direct tail-call site anywhere: nothing to follow
        return listings, pokes
    finally:
        engine.close()


def _entered_programs(outcomes: dict[str, list[Any]], event_index: int | None) -> list[str]:
    names: dict[str, None] = {}
    for events in outcomes.values():
        run = _run_at(events, event_index)
        if run is not None:
            names.update(dict.fromkeys(run.trace))
    return list(names)


def _fault_point(outcomes: dict[str, list[Any]], event_index: int | None) -> tuple[str, int] | None:
    for events in outcomes.values():
        run = _run_at(events, event_index)
        if run is not None and run.fault_prog is not None and run.fault_pc is not None:
            return run.fault_prog, run.fault_pc
    return None


def _describe_address(programs: dict[str, Any], address: int) -> str:
    """``prog+0xOFF`` (offset into that program's image, as the listings show it), or the raw address."""
    for name, program in programs.items():
        for image in program.images:
            if image.contains(address):
                label = name if image.func_index == 0 else f"{name}/func{image.func_index}"
                return f"{label}+0x{address - program.images[0].base:x}"
    return f"0x{address:x}"


def _describe_patch(programs: dict[str, Any], site: int, code: bytes) -> str:
    if code == bytes.fromhex("0f1f440000"):
        return "nop5"
    if code[:1] == b"\xe9" and len(code) == 5:
        target = site + 5 + int.from_bytes(code[1:], "little", signed=True)
        return f"jmp {_describe_address(programs, target)}"
    return f"unexpected bytes {code.hex()}"


def _stale_sites(programs: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(site, actual, expected) of every poke site whose bytes are not what the engine expects."""
    stale = []
    for name, program in programs.items():
        for image in program.images:
            for poke in image.poke_sites:
                if poke.expected is not None and poke.expected != poke.current:
                    where = (f"direct tail-call {poke.kind} of {name} ({poke.map}[{poke.key}], "
                             f"xlated pc {poke.insn_idx})")
                    stale.append((where, _describe_patch(programs, poke.address, poke.current),
                                  _describe_patch(programs, poke.address, poke.expected)))
    return stale


def _poke_bytes(programs: dict[str, Any], engine: str) -> list[PokeBytes]:
    """Every poke site: what it holds and what the engine expects, in words and bytes."""
    rows = []
    for name, program in programs.items():
        for image in program.images:
            for poke in image.poke_sites:
                expected = poke.expected
                rows.append(PokeBytes(
                    f"{engine}: {poke.kind} of {name} ({poke.map}[{poke.key}], pc {poke.insn_idx})",
                    _describe_patch(programs, poke.address, poke.current), poke.current.hex(" "),
                    None if expected is None else _describe_patch(programs, poke.address, expected),
                    None if expected is None else expected.hex(" ")))
    return rows


def _poke_sites(programs: dict[str, Any]) -> list[tuple[str, str]]:
    sites = []
    for name, program in programs.items():
        for image in program.images:
            for poke in image.poke_sites:
                where = f"{name} tail call at xlated pc {poke.insn_idx} ({poke.map}[{poke.key}])"
                stable = "" if poke.stable else " [not stable yet]"
                state = _describe_patch(programs, poke.address, poke.current)
                if poke.expected is not None and poke.expected != poke.current:
                    state += f" -- EXPECTED {_describe_patch(programs, poke.address, poke.expected)}"
                sites.append((f"{where}: {poke.kind} {_describe_address(programs, poke.address)}{stable}", state))
    return sites


def _jit_listing(programs: dict[str, Any], scenario: Scenario, name: str, fault: tuple[str, int] | None,
                 engine_name: str = "jit") -> JitListing:
    """The program's image(s) as they are now, grouped by the BPF instruction that produced them."""
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs

    from bpfdiff.disasm import instruction_starts, xlated_insn

    insns = scenario.program(name).insns
    program = programs[name]
    cs = Cs(CS_ARCH_X86, CS_MODE_64)
    by_pc: dict[int, list[str]] = {}
    prologue: list[str] = []
    site_marks: dict[int, list[str]] = {}
    base = program.images[0].base
    for image in program.images:
        sites = {p.address: f"poke {'site' if p.kind == 'site' else 'bypass'}" for p in image.poke_sites}
        for ins in cs.disasm(image.code, image.base):
            text = f"{ins.address - base:4x}: {ins.bytes.hex(' '):<24} {ins.mnemonic} {ins.op_str}".rstrip()
            pc = image.pc_at(ins.address)
            if ins.address in sites:
                text += f"    <- {sites[ins.address]}"
                if pc is not None:
                    site_marks.setdefault(pc, []).append(sites[ins.address])
            (prologue if pc is None else by_pc.setdefault(pc, [])).append(text)
    starts = instruction_starts(insns)
    focus = _focus_pcs(insns, starts, name, fault)
    shown = [pc for pc in starts if len(starts) <= 2 * WINDOW + 1 or any(abs(pc - f) <= WINDOW for f in focus)]
    rows = []
    for pc in shown:
        marks = list(site_marks.get(pc, []))
        if fault is not None and fault == (name, pc):
            marks.append("divergence: fault here")
        elif pc in focus and insns[pc].is_tail_call:
            marks.append("tail call")
        rows.append(JitRow(pc, xlated_insn(pc, insns), by_pc.get(pc, []), marks))
    note = "" if len(shown) == len(starts) else f"showing BPF pcs within {WINDOW} of {sorted(focus)}"
    return JitListing(name, base, rows, prologue, note, engine_name)


def _focus_pcs(insns: Sequence[Any], starts: list[int], name: str, fault: tuple[str, int] | None) -> list[int]:
    """Where to look: the faulting instruction, else the tail-call sites, else the exits."""
    if fault is not None and fault[0] == name:
        return [fault[1]]
    sites = [pc for pc in starts if insns[pc].is_tail_call]
    return sites or [pc for pc in starts if insns[pc].is_exit]


# --------------------------------------------------------------------------
# Markdown.
# --------------------------------------------------------------------------
def render_markdown(data: ReportData) -> str:
    out = [f"# {data.title}", ""]
    if data.verdict:
        out += [f"**{_md_cell(data.verdict)}**", ""]
    out.append(f"- signature: `{data.signature}`")
    out += [f"- related signature (shown together by one replay): `{sig}`" for sig in data.related]
    out.append(f"- findings: {data.count}{' (FLAKY: does not reproduce)' if data.flaky else ''}")
    out.append(f"- profile: {data.profile}; injected bugs: {', '.join(data.bugs) or 'none'}")
    out.append(f"- first seen: {data.first_seen}; reproducer: `{data.reproducer}`")
    out.append(f"- files: {', '.join(data.files)}")
    for note in data.notes:
        out.append(f"- note: {note}")
    out += ["", f"## Scenario: the reproducer, {data.provenance}", "",
            f"Replay: `bpfdiff run {data.reproducer}`", "", "```", data.scenario_text.rstrip(), "```"]
    if data.timeline:
        engines = list(data.timeline[0].outcomes)
        out += ["", "## Timeline", "", "| # | event | " + " | ".join(engines) + " | poke sites: bytes (expected) |",
                "|---:|---|" + "---|" * len(engines) + "---|"]
        for row in data.timeline:
            mark = f" **differs in {', '.join(row.fields)}**" if row.differs else ""
            out.append(f"| {row.index} | `{_md_cell(row.event)}`{mark} | "
                       + " | ".join(_md_cell(row.outcomes.get(e, "-")) for e in engines)
                       + f" | {'<br>'.join(_md_poke(site) for site in row.pokes)} |")
    out += ["", "## Divergence", ""]
    if not data.divergences:
        out.append("none (the engines agree)")
    for d in data.divergences:
        where = "" if d["event_index"] is None else f" at event {d['event_index']}"
        field = "" if d["field"] is None else f", field `{d['field']}`"
        out.append(f"- {d['kind']}{where}{field}: `{d['signature']}`")
        if d.get("odd"):
            out.append(f"  - {d['odd']} stands alone against the other engines")
        for engine, value in d["values"].items():
            out.append(f"  - {engine}: `{_md_cell(value)}`")
        out += ["", "  ```", *("  " + line for line in str(d["detail"]).splitlines()), "  ```"]
    out += ["", "## BPF listing"]
    for name, listing in data.listings.items():
        out += ["", f"### {name}", "", "```", listing.rstrip(), "```"]
    out += ["", "## Outcomes per engine"]
    for engine, lines in data.outcomes.items():
        out += ["", f"### {engine}", "", "```", *lines, "```"]
    if data.traces:
        out += ["", "## Traces of the diverging run", ""]
        out += [f"- {engine}: {_trace(trace)}" for engine, trace in data.traces.items()]
    for listing in data.jit:
        out += ["", f"## JIT image of {listing.program} ({listing.engine}, base 0x{listing.base:x})", ""]
        if listing.note:
            out += [listing.note, ""]
        out += ["| pc | BPF | x86-64 | marks |", "|---:|---|---|---|"]
        if listing.prologue:
            out.append(f"| | (prologue) | {'<br>'.join(_md_cell(x) for x in listing.prologue)} | |")
        for row in listing.rows:
            out.append(f"| {row.pc} | {_md_cell(row.bpf)} | {'<br>'.join(_md_cell(x) for x in row.x86)} | "
                       f"{_md_cell(', '.join(row.marks))} |")
    if data.pokes:
        out += ["", "## Poke sites after each event", ""]
        for state in data.pokes:
            out.append(f"- {state.event}")
            out += [f"  - {site}: {value}" for site, value in state.sites]
    return "\n".join(out) + "\n"


def _md_poke(site: PokeBytes) -> str:
    text = f"{_md_cell(site.site)}: `{site.actual}`" + (f" `{site.actual_bytes}`" if site.actual_bytes else "")
    if not site.ok:
        text += f" **expected** `{site.expected}` `{site.expected_bytes}`"
    return text


def _trace(trace: Sequence[str]) -> str:
    """A trace as the divergence details show it (``p0 -> p1 x32``)."""
    from bpfdiff.compare import format_value

    return format_value("trace", tuple(trace)) if trace else "(none)"


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def write_markdown_reports(buckets: Sequence[Any], out_dir: Path) -> list[Path]:
    """One ``bucket-N.md`` per bucket in ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, bucket in enumerate(buckets, 1):
        data = collect_report(bucket, f"Bucket {index}: {bucket.signature}")
        path = out_dir / f"bucket-{index}.md"
        _write_atomic(path, render_markdown(data))
        bucket.report = path
        paths.append(path)
    return paths


# --------------------------------------------------------------------------
# HTML.
# --------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.05em; } pre, code, td.code { font-family: ui-monospace, monospace; font-size: 0.9em; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; }
table { border-collapse: collapse; margin: 0.5em 0; }
td, th { border: 1px solid #ccc; padding: 0.2em 0.5em; vertical-align: top; text-align: left; }
td.code { white-space: pre-wrap; overflow-wrap: anywhere; }
pre { white-space: pre-wrap; overflow-wrap: anywhere; }
table { max-width: 100%; } code.bytes { color: #555; white-space: nowrap; }
span.wrong { color: #a00; font-weight: bold; }
tr.mark td { background: #fff3cd; } tr.divergence td { background: #f8d7da; }
.flaky { color: #8a6d3b; font-weight: bold; } .sig { font-family: ui-monospace, monospace; }
section.bucket { margin-bottom: 3em; }
p.verdict { font-size: 1.1em; font-weight: bold; background: #f8d7da; padding: 0.5em; }
td.detail { font-family: ui-monospace, monospace; font-size: 0.85em; white-space: pre-wrap; }
"""


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def render_html(reports: Sequence[ReportData], title: str) -> str:
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    parts.append("<table><tr><th>bucket</th><th>count</th><th>first seen</th><th>signature</th>"
                 "<th>reproducer</th></tr>")
    for index, data in enumerate(reports, 1):
        flaky = ' <span class="flaky">flaky</span>' if data.flaky else ""
        parts.append(f'<tr><td><a href="#bucket-{index}">{index}</a>{flaky}</td><td>{data.count}</td>'
                     f'<td>{_e(data.first_seen)}</td><td class="sig">{_e(data.signature)}</td>'
                     f'<td class="code">{_e(data.reproducer)}</td></tr>')
    parts.append("</table>")
    for index, data in enumerate(reports, 1):
        parts.append(_html_bucket(index, data))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _html_bucket(index: int, data: ReportData) -> str:
    p = [f'<section class="bucket" id="bucket-{index}"><h2>{_e(data.title)}</h2>']
    if data.verdict:
        p.append(f'<p class="verdict">{_e(data.verdict)}</p>')
    p.append(f"<h3>Scenario: the reproducer, {_e(data.provenance)}</h3>"
             f"<p>Replay: <code>bpfdiff run {_e(data.reproducer)}</code></p><pre>{_e(data.scenario_text)}</pre>")
    if data.timeline:
        engines = list(data.timeline[0].outcomes)
        pokes = any(row.pokes for row in data.timeline)
        p.append("<h3>Timeline</h3><table><tr><th>#</th><th>event</th>"
                 + "".join(f"<th>{_e(e)}</th>" for e in engines)
                 + ("<th>poke sites after the event: bytes (expected)</th>" if pokes else "") + "</tr>")
        for row in data.timeline:
            cls = ' class="divergence"' if row.differs else (' class="mark"' if row.stale else "")
            cells = "".join(f'<td class="code">{_e(row.outcomes.get(e, "-"))}</td>' for e in engines)
            if pokes:
                cells += f'<td>{"<br>".join(_html_poke(site) for site in row.pokes)}</td>'
            differs = f'<br><b>differs in {_e(", ".join(row.fields))}</b>' if row.differs else ""
            p.append(f'<tr{cls}><td>{row.index}</td><td class="code">{_e(row.event)}{differs}</td>{cells}</tr>')
        p.append("</table>")
    p.append("<ul>")
    p.append(f'<li>signature: <span class="sig">{_e(data.signature)}</span></li>')
    p += [f'<li>related signature (shown together by one replay): <span class="sig">{_e(sig)}</span></li>'
          for sig in data.related]
    flaky = ' <span class="flaky">flaky: does not reproduce</span>' if data.flaky else ""
    p.append(f"<li>findings: {data.count}{flaky}</li>")
    p.append(f"<li>profile: {_e(data.profile)}; injected bugs: {_e(', '.join(data.bugs) or 'none')}</li>")
    p.append(f"<li>first seen: {_e(data.first_seen)}; reproducer: <code>{_e(data.reproducer)}</code></li>")
    p.append(f"<li><details><summary>files: {len(data.files)}</summary>{_e(', '.join(data.files))}</details></li>")
    p += [f"<li>note: {_e(n)}</li>" for n in data.notes]
    p.append("</ul><h3>Divergence</h3>")
    if data.divergences:
        p.append("<table><tr><th>kind</th><th>event</th><th>field</th><th>engine</th><th>value</th>"
                 "<th>detail</th></tr>")
        for d in data.divergences:
            values = list(d["values"].items()) or [("", "")]
            for k, (engine, value) in enumerate(values):
                span = f'<td rowspan="{len(values)}">'
                event = "" if d["event_index"] is None else d["event_index"]
                field = "" if d["field"] is None else d["field"]
                lead = f"{span}{_e(d['kind'])}</td>{span}{_e(event)}</td>{span}{_e(field)}</td>" if k == 0 else ""
                detail = f'<td rowspan="{len(values)}" class="detail">{_e(d["detail"])}</td>' if k == 0 else ""
                alone = " (stands alone)" if engine == d.get("odd") else ""
                p.append(f'<tr>{lead}<td>{_e(engine)}{alone}</td><td class="code">{_e(value)}</td>{detail}</tr>')
        p.append("</table>")
    else:
        p.append("<p>none (the engines agree)</p>")
    p.append("<h3>BPF listing</h3>")
    for name, listing in data.listings.items():
        p.append(f"<h4>{_e(name)}</h4><pre>{_e(listing)}</pre>")
    p.append("<h3>Outcomes per engine</h3>")
    for engine, lines in data.outcomes.items():
        p.append(f"<h4>{_e(engine)}</h4><pre>{_e(chr(10).join(lines))}</pre>")
    if data.traces:
        p.append("<h3>Traces of the diverging run</h3><ul>")
        p += [f"<li>{_e(engine)}: {_e(_trace(trace))}</li>" for engine, trace in data.traces.items()]
        p.append("</ul>")
    for listing in data.jit:
        p.append(f"<h3>JIT image of {_e(listing.program)} ({_e(listing.engine)}, base 0x{listing.base:x})</h3>")
        if listing.note:
            p.append(f"<p>{_e(listing.note)}</p>")
        p.append("<table><tr><th>pc</th><th>BPF</th><th>x86-64</th><th>marks</th></tr>")
        if listing.prologue:
            p.append(f'<tr><td></td><td>(prologue)</td><td class="code">{"<br>".join(map(_e, listing.prologue))}'
                     "</td><td></td></tr>")
        for row in listing.rows:
            cls = ' class="divergence"' if any("divergence" in m for m in row.marks) else (
                ' class="mark"' if row.marks else "")
            p.append(f'<tr{cls}><td>{row.pc}</td><td class="code">{_e(row.bpf)}</td>'
                     f'<td class="code">{"<br>".join(map(_e, row.x86))}</td><td>{_e(", ".join(row.marks))}</td></tr>')
        p.append("</table>")
    if data.pokes:
        p.append("<h3>Poke sites after each event</h3><table><tr><th>after event</th><th>site</th><th>state</th></tr>")
        for state in data.pokes:
            sites = state.sites or [("(no poke sites)", "")]
            for k, (site, value) in enumerate(sites):
                lead = f'<td rowspan="{len(sites)}">{_e(state.event)}</td>' if k == 0 else ""
                p.append(f'<tr>{lead}<td>{_e(site)}</td><td class="code">{_e(value)}</td></tr>')
        p.append("</table>")
    p.append("</section>")
    return "\n".join(p)


def _html_poke(site: PokeBytes) -> str:
    text = f"{_e(site.site)}: <code>{_e(site.actual)}</code>"
    if site.actual_bytes:
        text += f' <code class="bytes">{_e(site.actual_bytes)}</code>'
    if not site.ok:
        shown = f' <code class="bytes">{_e(site.expected_bytes)}</code>'
        text = f'<span class="wrong">{text}, expected <code>{_e(site.expected)}</code>{shown}</span>'
    return text


def write_html_report(buckets: Sequence[Any], out: Path, title: str = "bpfdiff triage") -> Path:
    reports = [collect_report(b, f"Bucket {i}: {b.signature}") for i, b in enumerate(buckets, 1)]
    if out.parent and not out.parent.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
    _write_atomic(out, render_html(reports, title))
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
