"""``bpfdiff dump FILE``: a scenario's programs as ``bpftool prog dump jited|xlated`` shows them.

``--jited`` (the default) disassembles each image as it is *in emulated
memory*, so poked tail-call sites show their current state (``nopl`` for an
empty slot, ``jmpq`` once it is filled).  ``--xlated`` prints the program
after the verifier's rewrites.  Without ``--after-each-event`` the listing is
taken after every event of the scenario has been applied; with it, once after
loading and again after each event, so a site can be watched turning from
nop5 into a jump and back.  Programs loaded by a later Load event appear from
that event on.
"""

from __future__ import annotations

import argparse
import sys

from bpfdiff.engine import EngineError
from bpfdiff.profiles import DEFAULT_PROFILE, PROFILES

NAME = "dump"
HELP = "show a scenario's programs as bpftool does (JIT images or xlated instructions)"

EXIT_OK = 0
EXIT_BAD_INPUT = 2


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="scenario (.scn) or conformance .data file")
    parser.add_argument("--prog", metavar="NAME", help="only this program (default: all)")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help=f"kernel profile (default: the scenario's meta, else {DEFAULT_PROFILE})")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--jited", dest="mode", action="store_const", const="jited",
                      help="x86-64 images as they are in memory (default)")
    what.add_argument("--xlated", dest="mode", action="store_const", const="xlated",
                      help="instructions after the verifier's rewrites")
    parser.add_argument("--after-each-event", action="store_true",
                        help="print the programs after loading and after every event")
    parser.add_argument("--retpoline", choices=("on", "off"),
                        help="indirect tail calls through a retpoline thunk (default: the profile's)")
    parser.add_argument("--force-indirect", action="store_true",
                        help="emit every tail call as an indirect one (no poke sites)")
    parser.set_defaults(mode="jited")


def describe_event(event: object) -> str:
    from bpfdiff.scenario import Delete, Load, Run, Update

    if isinstance(event, Run):
        return f"run {event.prog}" + (f" mem={event.mem.hex()}" if event.mem else "")
    if isinstance(event, Update):
        value = f"prog:{event.value}" if isinstance(event.value, str) else event.value.hex()
        return f"update {event.map} {event.key.hex()} = {value}"
    if isinstance(event, Delete):
        return f"delete {event.map} {event.key.hex()}"
    if isinstance(event, Load):
        return f"load {event.prog}"
    return repr(event)


def render(engine: object, mode: str, only: str | None, map_ids: dict[str, int]) -> str:
    """Every loaded program (or just ``only``) in the chosen form."""
    from bpfdiff.disasm import format_xlated
    from bpfdiff.jit.dump import format_jited

    out = []
    for name, jited in engine.programs.items():  # type: ignore[attr-defined]
        if only is not None and name != only:
            continue
        if mode == "xlated":
            out.append(f"{name}:")
            out.append(format_xlated(jited.xlated, map_id=map_ids.__getitem__).rstrip("\n"))
            continue
        for index, image in enumerate(jited.images):
            title = name if index == 0 else f"{name} (subprog {index})"
            out.append(f"{title}: {len(image.code)} bytes")
            out.append(f"0x{image.base:x}:")           # bpftool's address line
            code = engine.image_bytes(name, index)  # type: ignore[attr-defined]
            out.append(format_jited(code).rstrip("\n"))
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    from bpfdiff.jit.engine import JitEngine
    from bpfdiff.scenario_text import ScenarioSyntaxError, read_scenario

    try:
        scenario = read_scenario(args.file)
    except ScenarioSyntaxError as exc:
        print(exc, file=sys.stderr)
        return EXIT_BAD_INPUT
    except OSError as exc:
        print(f"{args.file}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    names = [p.name for p in scenario.programs]
    if args.prog is not None and args.prog not in names:
        print(f"{args.file}: no program {args.prog!r} (programs: {', '.join(names) or 'none'})", file=sys.stderr)
        return EXIT_BAD_INPUT
    profile = args.profile or scenario.meta_dict.get("profile", DEFAULT_PROFILE)
    retpoline = None if args.retpoline is None else args.retpoline == "on"
    map_ids = {m.name: number for number, m in enumerate(scenario.maps, start=1)}
    try:
        engine = JitEngine(profile=profile, retpoline=retpoline, force_indirect=args.force_indirect)
        engine.start(scenario)
        if args.after_each_event:
            print("-- after load")
            print(render(engine, args.mode, args.prog, map_ids))
        for index, event in enumerate(scenario.events):
            outcome = engine.apply(index, event)
            if args.after_each_event:
                status = "" if outcome.retval is None else f" -> {outcome.retval}"
                if outcome.run is not None:
                    run = outcome.run
                    status = f" -> {run.exit} r0=0x{run.r0:x} tail_calls={run.tail_calls} trace={','.join(run.trace)}"
                print(f"-- after event {index}: {describe_event(event)}{status}")
                for violation in outcome.violations:
                    print(f"!! {violation}")
                print(render(engine, args.mode, args.prog, map_ids))
        if not args.after_each_event:
            print(render(engine, args.mode, args.prog, map_ids))
    except EngineError as exc:
        print(f"{args.file}: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    finally:
        if "engine" in locals():
            engine.close()
    return EXIT_OK
