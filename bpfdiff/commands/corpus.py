"""``bpfdiff corpus stats DIR`` / ``bpfdiff corpus merge IN... -o OUT [--coverage]``.

``stats`` prints a corpus's feature coverage: opcode classes, tail-call kinds
(direct/indirect), event kinds (run, load, prog-array fill/retarget/delete...)
and their combinations.  ``merge`` writes a smallest subset of the inputs
with the same coverage (greedy set cover) to OUT; ``--coverage`` adds Python
line coverage of bpfdiff.interp and bpfdiff.jit to the features (needs the
``coverage`` package).  Unreadable inputs are skipped with one line each.
``generate -o OUT`` draws scenarios from the fuzzer's generator with fixed
seeds and keeps their greedy cover: that is how ``corpus/seeds`` is made.
"""

from __future__ import annotations

import argparse
import sys

from bpfdiff.profiles import DEFAULT_PROFILE, PROFILES

NAME = "corpus"
HELP = "corpus feature coverage (stats) and coverage-preserving merge"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="corpus_command", metavar="ACTION", required=True)
    stats = sub.add_parser("stats", help="print the feature coverage of a corpus")
    stats.add_argument("inputs", nargs="+", metavar="DIR", help="corpus directories or files")
    merge = sub.add_parser("merge", help="keep a smallest subset with the same coverage")
    merge.add_argument("inputs", nargs="+", metavar="IN", help="corpus directories or files")
    merge.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    merge.add_argument("--coverage", action="store_true",
                       help="also keep Python line coverage of bpfdiff.interp and bpfdiff.jit")
    merge.add_argument("--profile", choices=sorted(PROFILES),
                       help="profile the engines run with for --coverage "
                       f"(default: each scenario's meta, else {DEFAULT_PROFILE})")
    generate = sub.add_parser("generate", help="seed corpus: generated scenarios (fixed seeds), merged")
    generate.add_argument("-o", "--output", required=True, metavar="OUT", help="output directory")
    generate.add_argument("--seeds", type=int, default=500, metavar="N", help="seeds per profile (default 500)")
    generate.add_argument("--first-seed", type=int, default=0, metavar="S", help="first seed (default 0)")
    generate.add_argument("--profiles", default=",".join(PROFILES), metavar="P,...",
                          help="profiles to generate for (default %(default)s)")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except OSError as exc:
        where = exc.filename or getattr(args, "output", "") or ""
        print(f"bpfdiff: error: {where}: {exc.strerror or exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from bpfdiff.fuzz.corpus import (
        format_stats,
        generate_entries,
        line_coverage_features,
        load_corpus,
        merge,
        warn_stderr,
    )

    if args.corpus_command == "generate":
        profiles = [p for p in args.profiles.split(",") if p]
        unknown = sorted(set(profiles) - set(PROFILES))
        if unknown:
            print(f"bpfdiff: error: unknown profile {', '.join(unknown)}", file=sys.stderr)
            return 2
        entries = generate_entries(range(args.first_seed, args.first_seed + args.seeds), profiles)
        written = merge(entries, args.output)
        total = len({f for e in entries for f in e.features})
        print(f"{args.output}: kept {len(written)} of {len(entries)} generated scenarios, covering {total} features")
        return 0
    try:
        entries = load_corpus(args.inputs, warn=warn_stderr)
    except FileNotFoundError as exc:
        print(f"bpfdiff: error: {exc}", file=sys.stderr)
        return 2
    if args.corpus_command == "stats":
        print(format_stats(entries))
        return 0
    before = len({f for e in entries for f in e.features})
    if args.coverage:
        try:
            for entry in entries:
                profile = args.profile or entry.scenario.meta_dict.get("profile", DEFAULT_PROFILE)
                entry.features = entry.features | line_coverage_features(entry.scenario, profile)
        except RuntimeError as exc:
            print(f"bpfdiff: error: {exc}", file=sys.stderr)
            return 2
    written = merge(entries, args.output)
    total = len({f for e in entries for f in e.features})
    extra = f" ({before} scenario features + {total - before} lines)" if args.coverage else ""
    print(f"{args.output}: kept {len(written)} of {len(entries)} inputs, covering {total} features{extra}")
    return 0
