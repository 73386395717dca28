"""One bucket per planted bug: campaigns of each planted bug, triaged, one table row each.

    .venv/bin/python bench/triage_buckets.py [--time 90] [--seeds 2,1000000] [--bug NAME ...] [--parallel 2]
                                             [--out DIR] [--reuse]

For every planted bug (``bpfdiff/bugs.py``) and seed, a fresh campaign
``bpfdiff fuzz --inject BUG --seed S --time T --crashes OUT/BUG-sS`` runs (on
the first profile the bug changes behaviour on; ``--parallel`` campaigns at a
time), then ``bpfdiff triage`` replays its crash directory.  The table: bug,
seed, profile, findings the campaign counted, files in the crash directory,
buckets (the profile's known kernel bugs and flaky findings apart), the engine each bucket names
(:func:`bpfdiff.fuzz.oracle.blamed_engine`) against the engine the bug lives
in, and the signatures.  The last line says whether every row has exactly one
bucket naming the right engine.  ``--reuse`` triages crash directories that
exist already instead of running their campaign again (after a change to the
triage logic).  A benchmark, not a test: it takes minutes (14 campaigns of 90 s,
two at a time: about 11 minutes plus triage).
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bpfdiff.fuzz.oracle import blamed_engine
from bpfdiff.fuzz.triage import triage

from bpfdiff.bugs import BUGS, BUGS_BY_NAME


def campaign_command(bug: str, seed: int, seconds: float, crashes: Path, profile: str) -> list[str]:
    return [sys.executable, "-m", "bpfdiff", "fuzz", "--inject", bug, "--seed", str(seed), "--time", str(seconds),
            "--profile", profile, "--crashes", str(crashes), "--quiet"]


def run_campaigns(jobs: list[tuple[str, int, Path, str]], seconds: float, parallel: int) -> dict[Path, str]:
    """Run the campaigns, ``parallel`` at a time; each one's summary (stdout) by crash directory."""
    pending = list(jobs)
    running: list[tuple[subprocess.Popen[str], Path, str]] = []
    summaries: dict[Path, str] = {}
    while pending or running:
        while pending and len(running) < parallel:
            bug, seed, crashes, profile = pending.pop(0)
            crashes.mkdir(parents=True, exist_ok=True)
            log = crashes.with_suffix(".log")
            print(f"campaign {bug} seed {seed} ({profile}): {crashes}", file=sys.stderr, flush=True)
            proc = subprocess.Popen(campaign_command(bug, seed, seconds, crashes, profile), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            running.append((proc, crashes, str(log)))
        time.sleep(1)
        for item in list(running):
            proc, crashes, log = item
            if proc.poll() is not None:
                out = proc.stdout.read() if proc.stdout else ""
                Path(log).write_text(out)
                summaries[crashes] = out
                running.remove(item)
    return summaries


def campaign_findings(summary: str) -> str:
    """The campaign's own count of findings, from its summary line (``findings: N (...)``)."""
    match = re.search(r"^findings: (\d+)", summary, re.M)
    return match.group(1) if match else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time", type=float, default=90.0, help="seconds per campaign (default 90)")
    parser.add_argument("--seeds", default="2,1000000",
                        help="comma-separated campaign seeds (default 2,1000000: a campaign generates from "
                        "its seed upwards, so neighbouring seeds run almost the same scenarios)")
    parser.add_argument("--bug", action="append", help="only these planted bugs (default: all)")
    parser.add_argument("--parallel", type=int, default=2, help="campaigns at a time (default 2)")
    parser.add_argument("--out", help="where crash directories go (default: a new temporary directory)")
    parser.add_argument("--reuse", action="store_true", help="triage existing crash directories, no campaign")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    bugs = args.bug or [bug.name for bug in BUGS]
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bpfdiff-triage-buckets-"))
    jobs = [(bug, seed, out / f"{bug}-s{seed}", BUGS_BY_NAME[bug].profiles[0]) for bug in bugs for seed in seeds]
    todo = [job for job in jobs if not (args.reuse and job[2].is_dir())]
    summaries = run_campaigns(todo, args.time, args.parallel)
    for _, _, crashes, _ in jobs:
        log = crashes.with_suffix(".log")
        if crashes not in summaries and log.exists():
            summaries[crashes] = log.read_text()
    print(f"{'bug':<24}{'seed':>8}  {'profile':<11}{'found':>7}{'files':>7}{'buckets':>9}{'known':>7}{'flaky':>7}"
          f"  {'engine':<8}{'wrong':<8}signatures")
    good = 0
    for bug, seed, crashes, profile in jobs:
        buckets = triage(crashes)
        # the profile's known kernel bugs (known:PROFILE:COMMIT) are other bugs, found as well
        known = [b for b in buckets if not b.flaky and b.signature.startswith("known:")]
        real = [b for b in buckets if not b.flaky and b not in known]
        flaky = sum(b.count for b in buckets if b.flaky)
        named = sorted({blamed_engine(b.signature) or "?" for b in real})
        wrong = BUGS_BY_NAME[bug].engine
        ok = len(real) == 1 and named == [wrong]
        good += ok
        files = sum(b.count for b in buckets)
        sigs = "; ".join(f"{b.signature} x{b.count}" for b in real) or "-"
        sigs += "".join(f"; {b.signature} x{b.count}" for b in known)
        print(f"{bug:<24}{seed:>8}  {profile:<11}{campaign_findings(summaries.get(crashes, '')):>7}{files:>7}"
              f"{len(real):>9}{len(known):>7}{flaky:>7}  {','.join(named) or '-':<8}{wrong:<8}{sigs}", flush=True)
    print(f"{good}/{len(jobs)} campaigns: exactly one bucket, named after the engine the bug lives in "
          f"(crash directories in {out})")


if __name__ == "__main__":
    main()
