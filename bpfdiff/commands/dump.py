"""``bpfdiff dump FILE``: a scenario's programs as ``bpftool prog dump jited|xlated`` shows them.

``--jited`` (the default) disassembles each image as it is *in emulated
memory*, so poked tail-call sites show their current state (``nopl`` for an
empty slot, ``jmpq`` once it is filled).  ``--xlated`` prints the program
after the verifier's rewrites.  Without ``--after-each-event`` the listing is
taken after every event of the scenario has been applied; with it, once after
loading and again after each event, so a site can be watched turning from
nop5 into a jump and back.  Programs loaded by a later Load event appear from
that event on.

FILE is anything ``bpfdiff run`` takes (a scenario, a ``.data`` file, an
atheris artifact); profile and planted bugs come from ``--profile`` /
``--inject``, else the file's meta, else ``BPFDIFF_PROFILE`` /
``BPFDIFF_INJECT`` (:mod:`bpfdiff.settings`), so the code shown is the code
that produced a finding.  ``--engine`` picks whose code is shown (any engine
that shows its code: :meth:`bpfdiff.engine.Engine.inspect`).
"""

from __future__ import annotations

import argparse
from typing import Any

from bpfdiff.bugs import bugs_for
from bpfdiff.engine import EngineError, Inspection, ProgramCode, make_engine
from bpfdiff.inputs import InputError
from bpfdiff.profiles import DEFAULT_PROFILE, PROFILES
from bpfdiff.settings import load_finding

NAME = "dump"
HELP = "show a scenario's programs as bpftool does (JIT images or xlated instructions)"

EXIT_OK = 0
EXIT_BAD_INPUT = 2
DEFAULT_ENGINE = "jit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="scenario (.scn), conformance .data file or fuzzer input")
    parser.add_argument("--prog", metavar="NAME", help="only this program (default: all)")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help=f"kernel profile (default: the scenario's meta, else {DEFAULT_PROFILE})")
    parser.add_argument("--inject", metavar="BUG,...",
                        help="planted bugs to switch on (default: the scenario's meta; see `bpfdiff bugs`)")
    parser.add_argument("--engine", default=DEFAULT_ENGINE,
                        help="whose code to show (default: %(default)s)")
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


def render(programs: dict[str, ProgramCode], mode: str, only: str | None, map_ids: dict[str, int]) -> str:
    """Every loaded program (or just ``only``) in the chosen form."""
    from bpfdiff.disasm import format_xlated
    from bpfdiff.jit.dump import format_jited

    out = []
    for name, program in programs.items():
        if only is not None and name != only:
            continue
        if mode == "xlated":
            out.append(f"{name}:")
            out.append(format_xlated(program.xlated, map_id=map_ids.get, jited=True).rstrip("\n"))
            continue
        for index, image in enumerate(program.images):
            title = name if index == 0 else f"{name} (subprog {index})"
            out.append(f"{title}: {len(image.code)} bytes")
            out.append(f"0x{image.base:x}:")           # bpftool's address line
            out.append(format_jited(image.code).rstrip("\n"))
    return "\n".join(out)


def _status(step: Inspection) -> str:
    outcome = step.outcome
    if outcome is None:
        return ""
    if outcome.run is not None:
        run = outcome.run
        return f" -> {run.exit} r0=0x{run.r0:x} tail_calls={run.tail_calls} trace={','.join(run.trace)}"
    return "" if outcome.retval is None else f" -> {outcome.retval}"


def main(args: argparse.Namespace) -> int:
    # bad input (InputError) is reported by the CLI: one line, `bpfdiff: error: PATH:LINE:COL: message`
    return _main(args)


def _main(args: argparse.Namespace) -> int:
    scenario, settings = load_finding(args.file, profile=args.profile, inject=args.inject)
    names = [p.name for p in scenario.programs]
    if args.prog is not None and args.prog not in names:
        raise InputError(f"{args.file}: no program {args.prog!r} (programs: {', '.join(names) or 'none'})")
    options: dict[str, Any] = {}
    if args.retpoline is not None:
        options["retpoline"] = args.retpoline == "on"
    if args.force_indirect:
        options["force_indirect"] = True
    map_ids = {m.name: number for number, m in enumerate(scenario.maps, start=1)}
    try:
        engine = make_engine(args.engine, profile=settings.profile, bugs=bugs_for(args.engine, settings.bugs),
                             **options)
    except TypeError:
        raise InputError(f"--retpoline/--force-indirect: engine {args.engine} has no such option") from None
    try:
        last: Inspection | None = None
        for step in engine.inspect(scenario):
            last = step
            if not args.after_each_event:
                continue
            if step.index is None:
                print("-- after load")
            else:
                print(f"-- after event {step.index}: {describe_event(scenario.events[step.index])}{_status(step)}")
                assert step.outcome is not None
                for violation in step.outcome.violations:
                    print(f"!! {violation}")
            print(render(step.programs, args.mode, args.prog, map_ids))
        if not args.after_each_event and last is not None:
            print(render(last.programs, args.mode, args.prog, map_ids))
    except EngineError as exc:
        raise InputError(f"{args.file}: {exc}") from None
    finally:
        engine.close()
    return EXIT_OK
