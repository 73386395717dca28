"""Benchmark: our structured minimiser vs libFuzzer's ``-minimize_crash=1``, per planted bug.

For every planted bug:

1. find a fuzzer finding as the atheris harness would: random byte strings
   through the generator's byte driver (``scenario_from_bytes``), kept when
   the checker accepts the scenario and the oracle (with the bug injected)
   reports a divergence;
2. minimise it with ``bpfdiff.fuzz.minimize`` (time budget ``--budget``);
3. minimise the *same bytes* with the atheris harness and libFuzzer's
   ``-minimize_crash=1`` for the same budget, then decode the smallest crash
   it kept back into a scenario;
4. print one row: bug, size before, size after (ours), seconds (ours), size
   after (libFuzzer), seconds (libFuzzer), whether each result still shows
   the original signature.

Sizes are ``slots/events`` of the scenario.  Run from the repository root::

    .venv/bin/python bench/minimize.py [--budget 60] [--bugs a,b] [--profile linux-6.1]
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bpfdiff.bugs import BUGS, BUGS_BY_NAME
from bpfdiff.profiles import DEFAULT_PROFILE
from bpfdiff.scenario import Scenario

REPO = Path(__file__).resolve().parent.parent


def find_finding(bug: str, profile: str, max_seconds: float, input_size: int = 512,
                 seed: int = 0) -> tuple[bytes, Scenario, str] | None:
    """Random byte inputs until one diverges with ``bug`` injected (as libFuzzer would find it)."""
    from bpfdiff.fuzz.checker import check_scenario
    from bpfdiff.fuzz.generate import scenario_from_bytes
    from bpfdiff.fuzz.oracle import run_oracle

    from bpfdiff.profiles import get_profile

    rng = random.Random(f"{bug}/{seed}")
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        data = rng.randbytes(rng.randint(16, input_size))
        scenario = scenario_from_bytes(data, profile)
        if check_scenario(scenario, get_profile(profile)):
            continue
        verdict = run_oracle(scenario, profile=profile, bugs=frozenset({bug}))
        if not verdict.ok:
            return data, scenario, verdict.signature
    return None


def ours(scenario: Scenario, bug: str, profile: str, budget: float) -> tuple[Scenario, float]:
    from bpfdiff.fuzz.minimize import minimize_finding

    started = time.monotonic()
    result = minimize_finding(scenario, profile=profile, bugs=frozenset({bug}), time_budget=budget)
    return result.scenario, time.monotonic() - started


def libfuzzer(data: bytes, bug: str, profile: str, budget: float) -> tuple[Scenario | None, float, str]:
    """libFuzzer's -minimize_crash=1 on the harness; returns the smallest crash it kept."""
    from bpfdiff.fuzz.generate import scenario_from_bytes

    with tempfile.TemporaryDirectory() as tmp:
        crash = Path(tmp) / "crash"
        crash.write_bytes(data)
        out = Path(tmp) / "minimized"
        env = dict(os.environ, BPFDIFF_PROFILE=profile, BPFDIFF_INJECT=bug)
        started = time.monotonic()
        # libFuzzer minimises in a loop of child runs and never stops by itself on the
        # total time: the budget is enforced from here, keeping the best crash so far.
        command = [sys.executable, "-m", "bpfdiff.fuzz.atheris_fuzzer", "-minimize_crash=1",
                   f"-max_total_time={max(1, int(budget))}", f"-exact_artifact_path={out}", str(crash)]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=tmp, env=env,
                                start_new_session=True)
        try:
            returncode = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
        seconds = time.monotonic() - started
        # libFuzzer writes each smaller crash over the exact artifact path; without one, nothing shrank.
        best = out.read_bytes() if out.exists() else data
        note = "" if out.exists() else f"(no smaller crash; exit {returncode})"
        return scenario_from_bytes(best, profile), seconds, note


def same_signature(scenario: Scenario | None, bug: str, profile: str, signature: str) -> bool:
    from bpfdiff.fuzz.oracle import run_oracle

    if scenario is None:
        return False
    verdict = run_oracle(scenario, profile=profile, bugs=frozenset({bug}))
    return not verdict.ok and verdict.signature == signature


def size(scenario: Scenario | None) -> str:
    if scenario is None:
        return "-"
    slots, events = scenario.size()
    return f"{slots}/{events}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", type=float, default=60.0, help="seconds per minimiser and bug (default 60)")
    parser.add_argument("--find", type=float, default=300.0, help="seconds to look for each finding (default 300)")
    parser.add_argument("--bugs", default=",".join(b.name for b in BUGS), help="planted bugs (default: all)")
    parser.add_argument("--profile", default=DEFAULT_PROFILE)
    parser.add_argument("--no-libfuzzer", action="store_true", help="skip the libFuzzer column")
    args = parser.parse_args(argv)
    header = (f"{'bug':<24} {'before':>8} {'ours':>8} {'ours s':>7} {'libFuzzer':>10} {'lf s':>6}  same signature "
              f"(ours/lf)")
    print(header)
    print("-" * len(header))
    for bug in [b for b in args.bugs.split(",") if b]:
        if args.profile not in BUGS_BY_NAME[bug].profiles:
            print(f"{bug:<24} (does not change behaviour on {args.profile})")
            continue
        found = find_finding(bug, args.profile, args.find)
        if found is None:
            print(f"{bug:<24} (no finding within {args.find:.0f}s)")
            continue
        data, scenario, signature = found
        small, ours_s = ours(scenario, bug, args.profile, args.budget)
        lf_text, lf_s_text, lf_same = "-", "-", "-"
        if not args.no_libfuzzer:
            lf, lf_s, note = libfuzzer(data, bug, args.profile, args.budget)
            lf_text, lf_s_text = size(lf) + (" *" if note else ""), f"{lf_s:.1f}"
            lf_same = "yes" if same_signature(lf, bug, args.profile, signature) else "no"
        ours_same = "yes" if same_signature(small, bug, args.profile, signature) else "no"
        print(f"{bug:<24} {size(scenario):>8} {size(small):>8} {ours_s:>7.1f} {lf_text:>10} {lf_s_text:>6}  "
              f"{ours_same}/{lf_same}", flush=True)
    print("sizes are BPF slots/events; '*': libFuzzer kept no smaller crash")
    return 0


if __name__ == "__main__":
    sys.exit(main())
