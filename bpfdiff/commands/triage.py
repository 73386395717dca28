"""``bpfdiff triage CRASHDIR``: replay every finding, group them into distinct bugs, write reports.

Every finding is replayed with the profile, injected bugs and engines of its
meta (an atheris artifact, which records nothing, with ``--profile`` /
``--inject``, else ``BPFDIFF_PROFILE`` / ``BPFDIFF_INJECT``: :mod:`bpfdiff.settings`) and
bucketed by the oracle's signature (signatures that one replay shows together
are merged: ``--no-merge`` keeps them apart); findings that no longer diverge
are listed as flaky, never dropped.  Prints a table (bucket, count, first seen,
signature, reproducer), or with ``--json`` a JSON list of buckets.  Writes a
Markdown report per bucket into ``--reports DIR`` (default ``CRASHDIR/triage``)
and with ``--html OUT`` one self-contained HTML page.  ``--minimize`` shrinks
each bucket's reproducer first.  Exit 1 when some finding reproduces, 0 when
none does, 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bpfdiff.profiles import PROFILES
from bpfdiff.settings import SettingsError, parse_bugs, parse_engines

NAME = "triage"
HELP = "replay a crash directory, bucket findings by signature, write per-bucket reports"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("crash_dir", metavar="CRASHDIR", help="directory of findings written by `bpfdiff fuzz`")
    parser.add_argument("--json", action="store_true", help="print the buckets as a JSON list instead of a table")
    parser.add_argument("--html", metavar="OUT", help="write one self-contained HTML report of every bucket")
    parser.add_argument("--reports", metavar="DIR",
                        help="directory for per-bucket Markdown reports and minimised reproducers "
                        "(default CRASHDIR/triage)")
    parser.add_argument("--no-reports", action="store_true", help="do not write Markdown reports")
    parser.add_argument("--minimize", action="store_true", help="minimise each bucket's reproducer")
    parser.add_argument("--time", type=float, default=60.0, metavar="SECONDS",
                        help="minimisation time budget per bucket (default 60)")
    parser.add_argument("--no-merge", action="store_true",
                        help="one bucket per signature, even when one replay shows several of them")
    parser.add_argument("--profile", choices=sorted(PROFILES), help="kernel profile (default: each finding's meta)")
    parser.add_argument("--inject", metavar="BUG,...", help="planted bugs (default: each finding's meta)")
    parser.add_argument("--engines", metavar="E,...", help="engines to compare (default: each finding's meta)")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except OSError as exc:
        print(f"bpfdiff: error: {exc.filename or args.crash_dir}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from bpfdiff.fuzz.report import write_html_report, write_markdown_reports
    from bpfdiff.fuzz.triage import format_json, format_table, triage

    crash_dir = Path(args.crash_dir)
    if not crash_dir.is_dir():
        print(f"bpfdiff: error: {crash_dir}: not a directory", file=sys.stderr)
        return 2
    reports = Path(args.reports) if args.reports else crash_dir / "triage"

    def progress(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    try:
        bugs = None if args.inject is None else parse_bugs(args.inject, "--inject")
        engines = None if args.engines is None else parse_engines(args.engines, "--engines")
    except SettingsError as exc:
        print(f"bpfdiff: error: {exc}", file=sys.stderr)
        return 2
    refused: list[str] = []
    buckets = triage(crash_dir, minimize=args.minimize, time_budget=args.time, out_dir=reports, progress=progress,
                     merge_related=not args.no_merge, profile=args.profile, bugs=bugs, engines=engines,
                     refused=refused)
    for line in refused:         # programs the kernel would not load: bad input, not findings
        print(f"bpfdiff: error: {line}", file=sys.stderr)
    if not args.no_reports:
        for path in write_markdown_reports(buckets, reports):
            progress(f"triage: wrote {path}")
    if args.html:
        write_html_report(buckets, Path(args.html), title=f"bpfdiff triage of {crash_dir}")
        progress(f"triage: wrote {args.html}")
    print(format_json(buckets) if args.json else format_table(buckets))
    if any(not b.flaky for b in buckets):
        return 1
    return 2 if refused else 0
