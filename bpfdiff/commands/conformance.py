"""``bpfdiff conformance [DIR]``: run the BPF conformance suite through the engines.

Prints which engines run under which profile, one line per failure (per
engine) and per skipped file (with the reason), a per-engine tally, and closes
with ``N passed, M failed, K skipped`` alone on the last line, counting files:
a file passes when it passes on every engine, fails when it fails on any.
Exit 1 if any file failed, 2 on bad input (no such directory, unknown engine).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bpfdiff.inputs import InputError
from bpfdiff.profiles import DEFAULT_PROFILE, PROFILES
from bpfdiff.settings import DEFAULT_ENGINES, parse_bugs, parse_engines

NAME = "conformance"
HELP = "run the conformance suite (*.data files) through the engines"

# Where the suite sits next to a checkout of this repository.
DEFAULT_DIRECTORY = Path("..") / "shared" / "conformance"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", nargs="?",
                        help=f"directory of .data files (default: {DEFAULT_DIRECTORY} when it exists)")
    # our two engines by default, as everywhere: the kernel engines boot a VM and run XDP
    # programs only, so each conformance file (a raw program) would fail on them
    parser.add_argument("--engines", default=",".join(DEFAULT_ENGINES),
                        help="comma-separated engines to run (default: %(default)s)")
    parser.add_argument("--profile", choices=sorted(PROFILES), default=DEFAULT_PROFILE,
                        help="kernel profile (default: %(default)s)")
    parser.add_argument("--inject", metavar="BUG,...", default="",
                        help="planted bugs to switch on (see `bpfdiff bugs`)")
    parser.add_argument("--verbose", "-v", action="store_true", help="also print one line per passing file")


def resolve_directory(given: str | None) -> Path:
    if given is None:
        if not DEFAULT_DIRECTORY.is_dir():
            raise InputError(f"no DIR given and {DEFAULT_DIRECTORY} does not exist")
        return DEFAULT_DIRECTORY
    path = Path(given)
    if not path.is_dir():
        raise InputError(f"{given}: not a directory")
    return path


def file_status(statuses: list[str]) -> str:
    """A file's verdict over all engines."""
    from bpfdiff.conformance import FAIL, PASS, REFUSED, SKIP

    if FAIL in statuses:
        return FAIL
    if SKIP in statuses:
        return SKIP
    if REFUSED in statuses:
        return REFUSED
    return PASS


def main(args: argparse.Namespace) -> int:
    from bpfdiff.conformance import FAIL, PASS, REFUSED, SKIP, data_files, run_conformance_files

    directory = resolve_directory(args.directory)
    engines = parse_engines(args.engines)
    bugs = parse_bugs(args.inject, "--inject")
    files = data_files(directory)
    if not files:
        raise InputError(f"{directory}: no .data files")
    inject = f", inject {','.join(sorted(bugs))}" if bugs else ""
    print(f"conformance: {len(files)} files in {directory}; engines {', '.join(engines)}; "
          f"profile {args.profile}{inject}", flush=True)
    report = run_conformance_files(files, engines, args.profile, bugs=bugs, directory=str(directory))

    by_file: dict[str, list] = {}
    for outcome in report.outcomes:
        by_file.setdefault(outcome.path, []).append(outcome)
    totals = dict.fromkeys((PASS, FAIL, SKIP, REFUSED), 0)
    for path, outcomes in by_file.items():
        name = Path(path).name
        status = file_status([o.status for o in outcomes])
        totals[status] += 1
        if status == SKIP:
            print(f"SKIP {name}: {outcomes[0].reason}")
        elif status == REFUSED:
            print(f"REFUSED {name}: {outcomes[0].reason}")
        for outcome in outcomes:
            if outcome.status == FAIL or (args.verbose and outcome.status == PASS):
                print(f"{outcome.status.upper()} {name} [{outcome.engine}]: {outcome.reason}")
    for engine, counts in report.counts().items():
        print(f"  {engine}: {counts[PASS]} passed, {counts[FAIL]} failed, {counts[SKIP]} skipped, "
              f"{counts[REFUSED]} refused by the verifier")
    print(f"{totals[PASS]} passed, {totals[FAIL]} failed, {totals[SKIP]} skipped, "
          f"{totals[REFUSED]} refused by the verifier")
    return 1 if totals[FAIL] else 0
