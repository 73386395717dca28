"""Fixtures captured from a real kernel, and our profile checked against them without qemu.

``bpfdiff kernel capture SCENARIO... --profile P -o DIR`` runs each scenario on
the profile's real kernel (``kernel-jit``: maps, loads, updates, deletes and
runs are the real syscalls) and writes ``DIR/<stem>.<profile>.json``: the
scenario's text, the kernel, every loaded program's xlated instructions and
JIT images (bytes and load addresses) after loading and after each event,
each event's outcome (R0 of a run, the maps after it, a map operation's
return code), and the names of the kernel addresses the images and xlated
calls reach (from the guest's ``/proc/kallsyms``).

:func:`check_fixture` replays the fixture's scenario on our JIT engine with
the fixture's profile and compares, state by state and program by program,
with :func:`bpfdiff.compare_jit.compare_program` -- byte for byte except
what depends on load addresses (map pointers, the rel32 of calls and of
jumps out of the image), each resolved on both sides to the same map,
kernel function or program + offset -- and each outcome with what the
kernel observes (R0's low 32 bits, exit, the maps).  ``tests/`` keeps such
fixtures and needs no qemu to check them.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bpfdiff import isa
from bpfdiff.compare_jit import (
    CALL_REL32,
    JMP_REL32,
    CodeSide,
    Function,
    SymbolTable,
    compare_program,
    map_ids_by_creation,
)
from bpfdiff.engine import EventOutcome, Inspection, ProgramCode
from bpfdiff.scenario import Scenario

FORMAT = "bpfdiff kernel capture v1"


def _rel32_targets(programs: Mapping[str, ProgramCode]) -> set[int]:
    """Addresses a ``call``/``jmp rel32`` of the images reaches outside every image (kernel text)."""
    from bpfdiff.jit.dump import jited_lines

    images = [(image.base, len(image.code)) for code in programs.values() for image in code.images]
    targets = set()
    for code in programs.values():
        for image in code.images:
            for line in jited_lines(image.code):
                if len(line.raw) == 5 and line.raw[0] in (CALL_REL32, JMP_REL32):
                    target = image.base + line.offset + 5 + int.from_bytes(line.raw[1:5], "little", signed=True)
                    if not any(base <= target < base + size for base, size in images):
                        targets.add(target)
    return targets


def _helper_imms(programs: Mapping[str, ProgramCode]) -> set[int]:
    return {insn.imm for code in programs.values() for insn in code.xlated
            if insn.opcode == isa.CALL_OPCODE and insn.src == 0}


def capture(scenario: Scenario, text: str, profile: str, kernel: str | None = None) -> dict[str, Any]:
    """Run ``scenario`` (whose file text is ``text``) on the real kernel; the fixture as a JSON object."""
    from bpfdiff.kernel.engine import KernelJitEngine, guest_for

    engine = KernelJitEngine(profile=profile, kernel=kernel)
    states = list(engine.inspect(scenario))
    symbols = SymbolTable.parse(guest_for(engine.kernel).read_file("/proc/kallsyms").decode(errors="replace"))
    names: dict[str, str] = {}
    calls: dict[str, str] = {}
    out_states = []
    for state in states:
        for address in _rel32_targets(state.programs):
            names[f"0x{address:x}"] = symbols.describe(address) or "?"
        for imm in _helper_imms(state.programs):
            calls[str(imm)] = symbols.call_target(imm) or "?"
        out_states.append({
            "event": None if state.index is None else state.index,
            "outcome": None if state.outcome is None else state.outcome.to_json(),
            # the kernel's xlated instructions as it hands them out (map ids in pseudo map loads:
            # decoded without names, they encode back to the same bytes)
            "programs": {name: {"xlated": isa.encode(list(code.xlated)).hex(),
                                "functions": [{"base": f"0x{image.base:x}", "code": image.code.hex()}
                                              for image in code.images]}
                         for name, code in state.programs.items()},
        })
    return {"format": FORMAT, "profile": profile, "kernel": engine.kernel, "scenario": text,
            "symbols": dict(sorted(names.items())), "call_targets": dict(sorted(calls.items())),
            "states": out_states}


# -- checking a fixture against our profile --------------------------------------------------------
def _kernel_side(scenario: Scenario, state: Mapping[str, Any], fixture: Mapping[str, Any]) -> CodeSide:
    functions = {name: tuple(Function(int(f["base"], 16), bytes.fromhex(f["code"])) for f in prog["functions"])
                 for name, prog in state["programs"].items()}
    xlated = {name: bytes.fromhex(prog["xlated"]) for name, prog in state["programs"].items()}
    symbols = {int(address, 16): name for address, name in fixture["symbols"].items()}
    calls = {int(imm): name for imm, name in fixture["call_targets"].items()}
    ids = map_ids_by_creation(scenario, xlated)
    return CodeSide("kernel", functions, xlated, symbol=symbols.get, map_of_id=ids.get, call_target=calls.get)


def _our_side(scenario: Scenario, inspection: Inspection, symbolize: Callable[[int], str | None]) -> CodeSide:
    from bpfdiff.compare_jit import _movabs_imm
    from bpfdiff.helpers import kernel_symbol
    from bpfdiff.jit.dump import jited_lines

    map_ids = {m.name: number for number, m in enumerate(scenario.maps, start=1)}
    names = {number: name for name, number in map_ids.items()}
    symbols: dict[int, str | None] = {}
    for code in inspection.programs.values():
        for image in code.images:
            for line in jited_lines(image.code):
                if len(line.raw) == 5 and line.raw[0] in (CALL_REL32, JMP_REL32):
                    address = image.base + line.offset + 5 + int.from_bytes(line.raw[1:5], "little", signed=True)
                    symbols[address] = symbolize(address)
                value = _movabs_imm(line.raw)
                if value is not None:
                    symbols[value] = symbolize(value)
    return CodeSide("ours",
                    functions={name: tuple(Function(i.base, i.code) for i in code.images)
                               for name, code in inspection.programs.items()},
                    xlated={name: isa.encode(list(code.xlated), map_ids) for name, code in inspection.programs.items()},
                    symbol=symbols.get, map_of_id=names.get, call_target=kernel_symbol)


def _outcome_differences(label: str, ours: EventOutcome | None, kernel: Mapping[str, Any] | None) -> list[str]:
    if kernel is None:
        return []
    theirs = EventOutcome.from_json(dict(kernel))
    if ours is None:
        return [f"{label}: no outcome on our side"]
    if ours.kind != theirs.kind:
        return [f"{label}: event kind {ours.kind} vs {theirs.kind}"]
    if theirs.run is None or ours.run is None:
        return [] if ours.retval == theirs.retval else [f"{label}: return code ours {ours.retval}, "
                                                        f"kernel {theirs.retval}"]
    problems = []
    a, b = ours.run, theirs.run
    if a.exit != b.exit:
        problems.append(f"{label}: exit ours {a.exit}, kernel {b.exit}")
    elif (a.r0 & 0xFFFF_FFFF) != (b.r0 & 0xFFFF_FFFF):
        problems.append(f"{label}: R0 ours 0x{a.r0:x}, kernel 0x{b.r0:x} (low 32 bits compared)")
    if a.maps != b.maps:
        problems.append(f"{label}: maps differ")
    return problems


def load_fixture(path: str | Path) -> tuple[dict[str, Any], Scenario]:
    from bpfdiff.scenario_text import parse_scenario

    fixture = json.loads(Path(path).read_text())
    if fixture.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT!r} fixture")
    return fixture, parse_scenario(fixture["scenario"], str(path))


def check_fixture(path: str | Path, profile: str | None = None) -> list[str]:
    """Our JIT engine on the fixture's scenario against the captured kernel: every difference, one line
    each (empty: identical byte for byte, and the same outcomes)."""
    from bpfdiff.engine import make_engine

    fixture, scenario = load_fixture(path)
    engine = make_engine("jit", profile=profile or fixture["profile"])
    problems: list[str] = []
    try:
        states = fixture["states"]
        inspections = iter(engine.inspect(scenario))
        for state in states:
            inspection = next(inspections, None)
            label = "after loading" if state["event"] is None else f"after event {state['event']}"
            if inspection is None:
                problems.append(f"{label}: our engine stopped early")
                break
            problems += _outcome_differences(label, inspection.outcome, state["outcome"])
            ours = _our_side(scenario, inspection, engine.symbolize)
            kernel = _kernel_side(scenario, state, fixture)
            if set(ours.functions) != set(kernel.functions):
                problems.append(f"{label}: programs ours {sorted(ours.functions)}, kernel {sorted(kernel.functions)}")
            for prog in sorted(set(ours.functions) & set(kernel.functions)):
                result = compare_program(prog, ours, kernel)
                problems += [f"{label}: {m.format(prog)}" for m in (result.xlated, result.jited) if m is not None]
                if result.error is not None:
                    problems.append(f"{label}: {prog}: {result.error}")
    finally:
        engine.close()
    return problems


# -- `bpfdiff kernel capture` ----------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``bpfdiff kernel capture``."""
    parser.add_argument("files", nargs="+", metavar="SCENARIO", help="scenarios (.scn) to run on the real kernel")
    parser.add_argument("--profile", required=True, help="the profile whose kernel runs them (and that checks them)")
    parser.add_argument("--kernel", metavar="NAME|PATH", help="the real kernel (default: the profile's)")
    parser.add_argument("-o", "--output", metavar="DIR", default=".",
                        help="where to write <stem>.<profile>.json (default: .)")


def main(args: argparse.Namespace) -> int:
    """Capture each scenario, write its fixture, and say whether our profile reproduces it."""
    from bpfdiff.inputs import InputError
    from bpfdiff.scenario_text import parse_scenario
    from bpfdiff.settings import parse_profile

    profile = parse_profile(args.profile, "--profile")
    out_dir = Path(args.output)
    out_dir.mkdir(parents=True, exist_ok=True)
    status = 0
    for name in args.files:
        path = Path(name)
        try:
            text = path.read_text()
        except OSError as exc:
            raise InputError(f"{path}: {exc.strerror}") from None
        scenario = parse_scenario(text, str(path))
        fixture = capture(scenario, text, profile, args.kernel)
        target = out_dir / f"{path.stem}.{profile}.json"
        target.write_text(json.dumps(fixture, indent=1) + "\n")
        problems = check_fixture(target)
        print(f"{target}: {len(fixture['states'])} states; ours "
              + ("identical" if not problems else f"differs ({len(problems)})"))
        for line in problems:
            print(f"  {line}")
        status |= 1 if problems else 0
    return status
