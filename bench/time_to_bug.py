"""Time to first divergence for every planted bug and every known kernel bug (one core, fresh campaign per seed).

    .venv/bin/python bench/time_to_bug.py [--seeds 5] [--timeout 120] [--profile P] [--bug NAME ...] [--known-only]

For each planted bug and each profile it changes behaviour on, five
campaigns (seeds 0..4, each generating from ``seed * 1_000_000``) run
generate -> oracle until the first *divergence* (violations and crashes are
not counted: the question is whether the differential test sees the bug).
The table: bug, profile, seeds that found it, median seconds to the first
divergence (over the seeds that found it), median scenarios, and the
signatures seen first.  A benchmark, not a test: it takes minutes.

Known kernel bugs (``Profile.kernel_bugs``) are measured the same way on a
*clean* campaign -- nothing injected -- until the first finding named
``known:PROFILE:COMMIT``: the real bug rediscovered from the faithful
profile.  ``--bug`` also takes a commit.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import Counter

from bpfdiff.fuzz.generate import scenario_from_seed
from bpfdiff.fuzz.oracle import DIVERGENCE, KNOWN, EnginePool, run_oracle

from bpfdiff.bugs import BUGS
from bpfdiff.profiles import PROFILES

SEED_STRIDE = 1_000_000


def time_to_divergence(bug: str, profile: str, seed: int, timeout: float, pool: EnginePool
                       ) -> tuple[float | None, int, str]:
    """A planted bug: seconds and scenarios to the first divergence."""
    return _time_to(frozenset({bug}), profile, seed, timeout, pool, lambda f: f.kind == DIVERGENCE)


def time_to_known(commit: str, profile: str, seed: int, timeout: float, pool: EnginePool
                  ) -> tuple[float | None, int, str]:
    """A known kernel bug, nothing injected: seconds and scenarios to the first ``known:PROFILE:COMMIT``."""
    wanted = f"{KNOWN}:{profile}:{commit}"
    return _time_to(frozenset(), profile, seed, timeout, pool, lambda f: f.signature == wanted)


def _time_to(bugs: frozenset[str], profile: str, seed: int, timeout: float, pool: EnginePool,
             wanted) -> tuple[float | None, int, str]:
    start = time.perf_counter()
    index = 0
    while time.perf_counter() - start < timeout:
        scenario = scenario_from_seed(seed * SEED_STRIDE + index, profile)
        index += 1
        verdict = run_oracle(scenario, profile=profile, bugs=bugs, pool=pool)
        for finding in verdict.findings:
            if wanted(finding):
                return time.perf_counter() - start, index, finding.signature
    return None, index, ""


def report(name: str, profile: str, seeds: int, timeout: float, measure) -> None:
    pool = EnginePool()
    times, counts, signatures = [], [], Counter()
    for seed in range(seeds):
        seconds, scenarios, signature = measure(name, profile, seed, timeout, pool)
        if seconds is not None:
            times.append(seconds)
            counts.append(scenarios)
            signatures[signature] += 1
    pool.close()
    median = f"{statistics.median(times):.2f}" if times else "-"
    median_n = f"{statistics.median(counts):.0f}" if counts else "-"
    shown = "; ".join(f"{sig} x{n}" for sig, n in signatures.most_common(3))
    print(f"{name:<24}{profile:<11}{len(times):>5}/{seeds}{median:>10}{median_n:>13}  {shown}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per seed (default: %(default)s)")
    parser.add_argument("--profile", action="append", help="only these profiles")
    parser.add_argument("--bug", action="append", help="only these bugs (planted names or kernel commits)")
    parser.add_argument("--known-only", action="store_true", help="only the known kernel bugs")
    args = parser.parse_args()

    print(f"{args.seeds} seeds per bug, timeout {args.timeout:.0f} s per seed, one core")
    print(f"{'bug':<24}{'profile':<11}{'found':>7}{'median s':>10}{'median scen':>13}  first signatures")
    for bug in () if args.known_only else BUGS:
        if args.bug and bug.name not in args.bug:
            continue
        for profile in bug.profiles:
            if not args.profile or profile in args.profile:
                report(bug.name, profile, args.seeds, args.timeout, time_to_divergence)
    for profile in PROFILES.values():
        if args.profile and profile.name not in args.profile:
            continue
        for kernel_bug in profile.kernel_bugs:
            if not args.bug or kernel_bug.commit in args.bug:
                report(kernel_bug.commit, profile.name, args.seeds, args.timeout, time_to_known)


if __name__ == "__main__":
    main()
