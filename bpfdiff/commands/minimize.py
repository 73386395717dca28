"""``bpfdiff minimize CRASH [-o OUT]``: shrink a finding to a smallest scenario showing the same divergence.

CRASH is a scenario (``.scn``), a conformance ``.data`` file or an atheris
crash artifact.  The divergence is replayed with the profile, injected bugs
and engines recorded in the file's meta, else the atheris variables
(``--profile``/``--inject``/``--engines`` override them; :mod:`bpfdiff.settings`);
candidates are kept only while the checker accepts them and the oracle gives
the same signature.  Progress goes to stderr; the result is written
atomically (default: ``CRASH`` with ``.min.scn`` in place of its suffix).
Exit 0 when minimised, 2 on bad input or when the engines agree on CRASH.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bpfdiff.profiles import PROFILES

NAME = "minimize"
HELP = "shrink a finding to the smallest scenario that still shows the same divergence"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("crash", metavar="CRASH", help="finding: scenario, .data file or atheris crash artifact")
    parser.add_argument("-o", "--output", metavar="OUT", help="where to write the minimised scenario")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="kernel profile (default: the finding's meta)")
    parser.add_argument("--inject", metavar="BUG,...", help="planted bugs (default: the finding's meta)")
    parser.add_argument("--engines", metavar="E,...", help="engines to compare (default: the finding's meta)")
    parser.add_argument("--time", type=float, default=60.0, metavar="SECONDS",
                        help="time budget; the best scenario so far is written when it runs out (default 60)")
    parser.add_argument("--signature", metavar="SIG",
                        help="keep this finding's signature instead of the primary one (see `bpfdiff triage --json`)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def default_output(crash: Path) -> Path:
    from bpfdiff.scenario_text import SUFFIX

    return crash.with_name(f"{crash.stem if crash.suffix else crash.name}.min{SUFFIX}")


def main(args: argparse.Namespace) -> int:
    from bpfdiff.fuzz.minimize import minimize_finding, stderr_progress
    from bpfdiff.scenario_text import write_scenario
    from bpfdiff.settings import load_finding

    crash = Path(args.crash)
    scenario, settings = load_finding(crash, profile=args.profile, inject=args.inject, engines=args.engines)
    from bpfdiff.profiles import get_profile
    from bpfdiff.verifier import refusal_line

    refused = refusal_line(str(crash), scenario, get_profile(settings.profile))
    if refused is not None:         # the kernel would not load it: nothing to minimise
        print(f"bpfdiff: error: {refused}", file=sys.stderr)
        return 2
    try:
        result = minimize_finding(scenario, profile=settings.profile, bugs=settings.bugs, engines=settings.engines,
                                  time_budget=args.time, progress=None if args.quiet else stderr_progress,
                                  signature=args.signature)
    except ValueError as exc:
        print(f"bpfdiff: error: {crash}: {exc}", file=sys.stderr)
        return 2
    out = Path(args.output) if args.output else default_output(crash)
    try:
        write_scenario(out, result.scenario)
    except OSError as exc:
        print(f"bpfdiff: error: {out}: cannot write: {exc.strerror or exc}", file=sys.stderr)
        return 2
    (s0, e0), (s1, e1) = result.start_size, result.end_size
    status = " (time budget exhausted)" if result.timed_out else ""
    print(f"{out}: {s0} -> {s1} slots, {e0} -> {e1} events in {result.seconds:.1f}s, "
          f"{result.tests} tests{status}; signature {result.scenario.meta_dict.get('signature')}")
    return 0
