"""``bpfdiff bugs``: list the planted bugs (:mod:`bpfdiff.bugs`), one line each."""

from __future__ import annotations

import argparse

from bpfdiff.bugs import BUGS

NAME = "bugs"
HELP = "list the planted bugs that --inject can switch on"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="also show where each bug lives, its profiles and the kernel history it imitates")


def main(args: argparse.Namespace) -> int:
    width = max(len(bug.name) for bug in BUGS)
    for bug in BUGS:
        print(f"{bug.name:<{width}}  {bug.summary}")
        if args.verbose:
            print(f"{'':<{width}}  engine: {bug.engine}; profiles: {', '.join(bug.profiles)}")
            print(f"{'':<{width}}  modelled on: {bug.modelled_on}")
    return 0
