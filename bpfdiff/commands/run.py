"""``bpfdiff run FILE``: run one scenario on several engines and show where they differ.

FILE is a scenario (``.scn``), a conformance ``.data`` file or a fuzzer byte
input (an atheris crash artifact).  For every ``run`` event it prints R0, the
exit kind, the tail-call count and the program trace -- once when the engines
agree, per engine and field by field when they do not; map events show their
return codes.  Exit 0 when every engine agrees (and R0 matches the file's
``-- result``), 1 on a divergence, a mismatch or an engine crash, 2 on bad
input.  ``--profile`` and ``--inject`` default to the scenario's ``-- meta``
(``profile``, ``inject``, ``engines``; :mod:`bpfdiff.settings`) so that a
finding replays as it was found.  Fields an engine cannot observe (a kernel
engine's trace, its R0 beyond 32 bits) are compared among the engines that do;
with three or more engines, one that stands alone against all the others is
named.
``--timeout S`` bounds the whole command: when it runs out, what was not run
is reported on stderr and the exit code is 1.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from bpfdiff.bugs import bugs_for
from bpfdiff.compare import (
    Difference,
    Observation,
    compare_outcomes,
    format_difference,
    format_trace,
    format_value,
    odd_one_out,
)
from bpfdiff.engine import EXIT, Engine, EngineError, EngineUnsupported, EventOutcome, RunResult, make_engine
from bpfdiff.inputs import InputError
from bpfdiff.profiles import DEFAULT_PROFILE, PROFILES, KernelBug, get_profile, with_kernel_bug_fixed
from bpfdiff.scenario import Event, Expect, MapDef, Scenario
from bpfdiff.scenario_text import format_event
from bpfdiff.settings import DEFAULT_ENGINES, FindingSettings, load_finding

NAME = "run"
HELP = "run a scenario, .data file or crash artifact on several engines and compare them"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", metavar="FILE", help="scenario (.scn), conformance .data file or fuzzer input")
    parser.add_argument("--engines",
                        help=f"comma-separated engines to run (default: the scenario's meta, else "
                        f"{','.join(DEFAULT_ENGINES)})")
    parser.add_argument("--profile", choices=sorted(PROFILES),
                        help=f"kernel profile (default: the scenario's meta, else {DEFAULT_PROFILE})")
    parser.add_argument("--inject", metavar="BUG,...",
                        help="planted bugs to switch on (default: the scenario's meta; see `bpfdiff bugs`)")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object (settings, every engine's outcomes, differences) instead of text")
    parser.add_argument("--timeout", type=float, metavar="S",
                        help="give up after S seconds in all (every engine, every event): exit 1")


class RunTimedOut(BaseException):
    """``--timeout`` ran out.  A BaseException, so that no engine reports it as its own crash."""


@contextmanager
def overall_timeout(seconds: float | None) -> Iterator[None]:
    """Raise :class:`RunTimedOut` in the main thread after ``seconds`` (None or no main thread: no limit)."""
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum: int, frame: object) -> None:
        raise RunTimedOut

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


Settings = FindingSettings


@dataclass(slots=True)
class Report:
    """What `run` found, to decide its exit code."""

    differences: list[Difference] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    # What each engine that ran observes: fields are compared among their observers.
    observations: dict[str, Observation] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not (self.differences or self.violations or self.crashes or self.mismatches)


def execute_all(scenario: Scenario, settings: Settings, source: str,
                report: Report) -> dict[str, list[EventOutcome]]:
    """Each engine's outcomes; an engine that crashes is reported and left out."""
    outcomes: dict[str, list[EventOutcome]] = {}
    for name in settings.engines:
        engine = _make(name, settings)
        try:
            outcomes[name] = engine.execute(scenario)
            report.observations[name] = Observation.of(engine)
        except EngineUnsupported as exc:
            report.notes.append(f"engine {name} left out: it cannot run this scenario: {exc}")
        except EngineError as exc:
            raise InputError(f"{source}: engine {name} refuses the scenario: {exc}") from None
        except Exception as exc:  # noqa: BLE001 - a crash inside an engine is a finding, not an abort
            report.crashes.append(f"engine {name} crashed: {type(exc).__name__}: {exc} ({_innermost(exc)})")
        finally:
            engine.close()
    return outcomes


def _make(name: str, settings: Settings) -> Engine:
    return make_engine(name, profile=settings.profile, bugs=bugs_for(name, settings.bugs))


def _innermost(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return "no traceback"
    frame = frames[-1]
    return f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno} in {frame.name}"


# -- display ---------------------------------------------------------------------
def describe_event(event: Event, maps: dict[str, MapDef], width: int = 72) -> str:
    """The event as its scenario-text line, shortened when long (big ``mem=``)."""
    text = format_event(event, maps)
    return text if len(text) <= width else text[: width - 3] + "..."


def summarize_run(run: RunResult) -> str:
    if run.exit == EXIT:
        ending = f"r0=0x{run.r0:x} exit"
    else:
        where = f" at {run.fault_prog}:{run.fault_pc}" if run.fault_pc is not None else ""
        kind = f" {run.fault_kind}" if run.fault_kind else ""
        ending = f"{run.exit}{kind}{where}"
    return f"{ending} tail_calls={run.tail_calls} trace={format_trace(run.trace)}"


def summarize_outcome(outcome: EventOutcome) -> str:
    if outcome.run is not None:
        return summarize_run(outcome.run)
    return f"retval {outcome.retval}"


def print_events(scenario: Scenario, outcomes: dict[str, list[EventOutcome]],
                 differences: Sequence[Difference]) -> None:
    """Each event's outcome, once when the engines agree; per engine, and each differing field,
    when they do not (naming the engine that stands alone against all others, if one does)."""
    by_event: dict[int, list[Difference]] = {}
    for difference in differences:
        by_event.setdefault(difference.event_index, []).append(difference)
    maps = {m.name: m for m in scenario.maps}
    engines = list(outcomes)
    pad = max((len(e) for e in engines), default=0)
    for index, event in enumerate(scenario.events):
        present = {e: seq[index] for e, seq in outcomes.items() if index < len(seq)}
        label = f"[{index}] {describe_event(event, maps)}"
        if not present:
            print(f"{label}: (no outcome)")
            continue
        if index in by_event:
            odd = odd_one_out(by_event[index]) if len(present) >= 3 else None
            print(f"{label}: ENGINES DIFFER" + (f" ({odd} stands alone)" if odd else ""))
            for engine, outcome in present.items():
                print(f"    {engine:<{pad}}  {summarize_outcome(outcome)}")
            for difference in by_event[index]:
                print("    " + format_difference(difference).replace("\n", "\n    "))
        else:
            print(f"{label}: {summarize_outcome(next(iter(present.values())))}")
        for engine, outcome in present.items():
            for violation in outcome.violations:
                print(f"    violation ({engine}): {violation}")
    for index in sorted(by_event):
        if index >= len(scenario.events):
            for difference in by_event[index]:
                print(format_difference(difference))


def check_expectation(expect: Expect | None, outcomes: dict[str, list[EventOutcome]], report: Report) -> None:
    """``-- result`` is the R0 of the first run; ``-- error`` expects that run not to exit."""
    if expect is None:
        return
    for engine, seq in outcomes.items():
        first = next((o.run for o in seq if o.run is not None), None)
        if first is None:
            report.mismatches.append(f"{engine}: no run event to check the expectation against")
            continue
        if expect.error is not None and first.exit == EXIT:
            report.mismatches.append(f"{engine}: expected error {expect.error!r}, but the run exited "
                                     f"with r0=0x{first.r0:x}")
        if expect.result is not None and (first.exit != EXIT or first.r0 != expect.result):
            got = f"0x{first.r0:x}" if first.exit == EXIT else summarize_run(first)
            report.mismatches.append(f"{engine}: expected r0=0x{expect.result:x}, got {got}")


def collect_violations(outcomes: dict[str, list[EventOutcome]]) -> list[str]:
    """Engine self-check failures: each is a finding, whatever the other engines did."""
    return [f"[{o.index}] violation ({engine}): {v}" for engine, seq in outcomes.items() for o in seq
            for v in o.violations]


def json_report(path: str, settings: Settings, notes: list[str], outcomes: dict[str, list[EventOutcome]],
                report: Report) -> dict[str, Any]:
    """Everything `run` found, as plain JSON values (outcomes as EventOutcome.to_json)."""
    first = min((d.event_index for d in report.differences), default=None)
    odd = odd_one_out([d for d in report.differences if d.event_index == first]) if len(outcomes) >= 3 else None
    return {
        "file": path,
        "profile": settings.profile,
        "inject": sorted(settings.bugs),
        "engines": list(settings.engines),
        "observes": {engine: {"fields": sorted(o.observes), "r0_bits": o.r0_bits}
                     for engine, o in report.observations.items()},
        "odd_one_out": odd,
        "notes": notes,
        "ok": report.ok,
        "outcomes": {engine: [o.to_json() for o in seq] for engine, seq in outcomes.items()},
        "differences": [
            {"event": d.event_index, "kind": d.kind, "field": d.field,
             "values": {engine: format_value(d.field, value) for engine, value in d.values.items()}}
            for d in report.differences
        ],
        "violations": report.violations,
        "crashes": report.crashes,
        "mismatches": report.mismatches,
    }


def explaining_kernel_bug(scenario: Scenario, settings: Settings) -> KernelBug | None:
    """A known bug of the profile's kernel whose fix makes the engines agree, if any.

    The divergence is still reported (the profile's kernel really has it);
    this names it, as the fuzzer's oracle does.
    """
    for bug in get_profile(settings.profile).kernel_bugs:
        fixed = replace(settings, profile=with_kernel_bug_fixed(settings.profile, bug.commit))
        scratch = Report()
        outcomes = execute_all(scenario, fixed, "", scratch)
        if not scratch.crashes and len(outcomes) == len(settings.engines) \
                and not compare_outcomes(outcomes, scratch.observations):
            return bug
    return None


def check_loads(path: str, scenario: Scenario, profile: str) -> None:
    """Refuse, as bad input, a scenario whose programs the profile's kernel would not load."""
    from bpfdiff.verifier import refusal_line

    line = refusal_line(path, scenario, get_profile(profile))
    if line is not None:
        raise InputError(line)


def _stderr_notice(line: str) -> None:
    print(f"bpfdiff: note: {line}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    if args.timeout is not None and not args.timeout > 0:
        raise InputError(f"--timeout: must be positive, got {args.timeout}")
    try:
        with overall_timeout(args.timeout):
            return _main(args)
    except RunTimedOut:
        sys.stdout.flush()
        print(f"bpfdiff: error: {args.file}: --timeout {args.timeout:g}s ran out before every engine had run "
              "every event", file=sys.stderr)
        return 1


def _main(args: argparse.Namespace) -> int:
    notes: list[str] = []
    scenario, settings = load_finding(args.file, profile=args.profile, inject=args.inject, engines=args.engines,
                                      warn=notes.append, notice=_stderr_notice)
    check_loads(args.file, scenario, settings.profile)
    report = Report()
    outcomes = execute_all(scenario, settings, args.file, report)
    notes += report.notes
    report.differences = compare_outcomes(outcomes, report.observations)
    if report.differences:
        bug = explaining_kernel_bug(scenario, settings)
        if bug is not None:
            notes.append(f"the differences are the known kernel bug {bug.commit} ({bug.title}; fixed in "
                         f"{bug.fixed_in}): with its fix applied ({settings.profile}+{bug.commit}) the engines agree")
    report.violations = collect_violations(outcomes)
    check_expectation(scenario.expect, outcomes, report)
    code = 0 if report.ok else 1
    if args.json:
        print(json.dumps(json_report(args.file, settings, notes, outcomes, report), indent=1))
        return code

    for note in notes:
        print(f"note: {note}")
    inject = f"; inject {','.join(sorted(settings.bugs))}" if settings.bugs else ""
    print(f"{args.file}: {len(scenario.programs)} programs, {len(scenario.maps)} maps, "
          f"{len(scenario.events)} events; profile {settings.profile}{inject}; "
          f"engines {', '.join(settings.engines)}")
    print_events(scenario, outcomes, report.differences)
    for line in report.crashes + report.mismatches:
        print(line)
    if report.ok:
        names = list(outcomes)
        several = len(names) > 1
        who = f"{', '.join(names[:-1])} and {names[-1]} agree on" if several else f"{names[0]} ran"
        checked = f" and match{'' if several else 'es'} the expected result" if scenario.expect is not None else ""
        print(f"OK: {who} {len(scenario.events)} events{checked}")
    else:
        print(f"FAIL: {len(report.differences)} differences, {len(report.violations)} violations, "
              f"{len(report.crashes)} crashes, {len(report.mismatches)} expectation mismatches")
    return code
