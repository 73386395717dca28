"""``bpfdiff fuzz``: a differential fuzzing campaign (see :mod:`bpfdiff.fuzz.campaign`).

Exit 0 when no engine disagreed, crashed or failed a self-check; 1 when the
campaign found something (the files are in ``--crashes``); 2 on bad options;
130 after Ctrl-C (143 after SIGTERM) without findings.  Ctrl-C and SIGTERM
stop cleanly: the workers finish their scenario, every finding is written,
the summary is printed.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from bpfdiff.bugs import BUGS_BY_NAME, validate_bugs
from bpfdiff.cli import WARNING_PREFIX, error_line
from bpfdiff.profiles import DEFAULT_PROFILE, PROFILES
from bpfdiff.settings import DEFAULT_ENGINES, SettingsError, parse_engines  # the kernel engines boot a VM: opt-in

NAME = "fuzz"
HELP = "run a differential fuzzing campaign (interpreter vs JIT), saving findings as replayable scenarios"


class OptionError(ValueError):
    """A bad option value: one line, exit 2."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--time", type=float, metavar="S", help="stop after S seconds")
    parser.add_argument("--runs", type=int, metavar="N", help="stop after N scenarios")
    parser.add_argument("--seed", type=int, default=0, help="first generator seed (default: %(default)s)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                        help="kernel profile (default: %(default)s)")
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                        help="comma-separated engines to compare (default: %(default)s)")
    parser.add_argument("--corpus", metavar="DIR", help="corpus directory: replayed first, new inputs added")
    parser.add_argument("--crashes", metavar="DIR", default="crashes",
                        help="where findings are written (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N", help="worker processes (default: 1)")
    parser.add_argument("--inject", metavar="BUG[,BUG]", action="append", default=[],
                        help="switch on planted bugs (see `bpfdiff bugs`); may be repeated")
    parser.add_argument("--max-per-signature", type=int, default=3, metavar="K",
                        help="files written per distinct finding signature (default: %(default)s)")
    parser.add_argument("--quiet", "-q", action="store_true", help="no status line")


def config_from_args(args: argparse.Namespace):
    from bpfdiff.fuzz.campaign import CampaignConfig

    # parse_engines asks the registry at call time: a name bound at import would keep whatever
    # registry (or test double) was current when this module was first imported.
    try:
        engines = parse_engines(args.engines)
    except SettingsError as exc:
        raise OptionError(str(exc)) from None
    if len(engines) < 2 or len(engines) != len([e for e in args.engines.split(",") if e.strip()]):
        raise OptionError(f"--engines: need two or more different engines, got {args.engines!r}")
    names = [n.strip() for raw in args.inject for n in raw.split(",") if n.strip()]
    try:
        bugs = validate_bugs(frozenset(names))
    except ValueError as exc:
        raise OptionError(f"--inject: {exc}") from None
    for name in bugs:
        if args.profile not in BUGS_BY_NAME[name].profiles:
            print(f"{WARNING_PREFIX}{name} changes nothing on {args.profile} "
                  f"(only {', '.join(BUGS_BY_NAME[name].profiles)})", file=sys.stderr)
    for option in ("time", "runs", "jobs", "max_per_signature"):
        value = getattr(args, option)
        if value is not None and value <= 0:
            raise OptionError(f"--{option.replace('_', '-')}: must be positive, got {value}")
    if args.time is None and args.runs is None:
        print("bpfdiff: note: no --time or --runs: running until Ctrl-C", file=sys.stderr)
    return CampaignConfig(
        time_limit=args.time, runs=args.runs, seed=args.seed, profile=args.profile, engines=engines,
        corpus=Path(args.corpus) if args.corpus else None, crashes=Path(args.crashes) if args.crashes else None,
        jobs=args.jobs, inject=bugs, max_per_signature=args.max_per_signature,
    )


def main(args: argparse.Namespace) -> int:
    from bpfdiff.fuzz.campaign import Campaign

    try:
        config = config_from_args(args)
    except OptionError as exc:
        print(error_line(str(exc)), file=sys.stderr)
        return 2
    for directory in (config.corpus, config.crashes):
        if directory is not None and directory.exists() and not directory.is_dir():
            print(error_line(f"{directory}: not a directory"), file=sys.stderr)
            return 2
    campaign = Campaign(config, status=None if args.quiet else sys.stderr)
    stats = campaign.run()
    print(campaign.summary())
    if stats.new_findings:
        return 1
    if campaign.interrupted:
        return 128 + (campaign.stop_signal or signal.SIGINT)
    return 0
