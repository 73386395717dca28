"""Generator finding power: jump widths reached, planted wrong values that reach the oracle, shape rates.

    .venv/bin/python bench/generator_power.py [--scenarios 300] [--seed 0] [--profile P ...] [--only jumps|plant|shapes]

For N generated scenarios (seeds S..S+N-1) of each profile:

* **jumps** -- every program compiled with our JIT (no run): counts of jumps
  whose final x86 displacement falls at and around the profile's short/long
  boundary (``fwd-short-edge`` = [M-5, M] and ``fwd-long-edge`` = [M+1, M+7]
  for the profile's short forward maximum M, 123 on 6.1/6.12, 127 on
  5.5/5.10; ``back-short-edge`` [-128, -120], ``back-long-edge`` [-135, -129];
  ``fwd-far`` >= 2M+2, ``back-far`` <= -257), per kind (``cond``: conditional
  jumps, ``uncond``: ``ja`` and the exits that jump to the epilogue), plus the
  largest displacement seen each way;
* **plant** -- each scenario run on the interpreter with every helper result
  (R0) and every fetching atomic's result perturbed: of the scenarios where a
  perturbation happened, the fraction whose compared values (R0, exit, packet,
  maps) changed, with R0 compared on 64 bits (our engines) and on 32 bits (the
  kernel engines), for a perturbation of a low bit and of a high bit; then the
  same for width-confusion bugs planted in the interpreter (``jset32`` reading
  64 bits, a 32-bit ``mod``/``div`` whose zero test reads 64 bits...,
  ``fuzz/shapes.py`` WIDTH_PLANTS): the scenarios where the bug changed a
  result (the generator produced the operands that tell the widths apart),
  and of those the ones where it reached the oracle;
* **shapes** -- per scenario: motifs, tail-call sites (direct/indirect,
  in subprograms), map events, so that a change of the generator can show it
  kept the interesting shapes at their rates.

Deterministic (a fixed seed range); it takes about a minute per profile.
"""

from __future__ import annotations

import argparse
import time
from collections import Counter

from bpfdiff.fuzz.checker import tail_call_sites
from bpfdiff.fuzz.generate import scenario_from_seed
from bpfdiff.fuzz.shapes import (
    PLANT_HIGH,
    PLANT_LOW,
    WIDTH_PLANTS,
    boundary_buckets,
    bucket_counts,
    plant_reaches_oracle,
    planted,
    scenario_displacements,
    width_planted,
)

from bpfdiff.profiles import PROFILES
from bpfdiff.scenario import Delete, Load, Run, Update


def jumps(profile: str, seeds: range) -> None:
    counts: Counter[str] = Counter()
    total: Counter[str] = Counter()
    extremes = {"cond": [0, 0], "uncond": [0, 0]}
    for seed in seeds:
        disps = scenario_displacements(scenario_from_seed(seed, profile), profile)
        counts.update(bucket_counts(disps, profile))
        for kind, d in disps:
            total[kind] += 1
            extremes[kind][0] = min(extremes[kind][0], d)
            extremes[kind][1] = max(extremes[kind][1], d)
    print(f"  jumps: {total['cond']} conditional, {total['uncond']} unconditional")
    for name, (lo, hi) in boundary_buckets(profile).items():
        rng = f"[{lo}, {hi}]" if abs(lo) < 1 << 30 and abs(hi) < 1 << 30 else (f">= {lo}" if lo > 0 else f"<= {hi}")
        print(f"    {name:16} {rng:14} cond {counts['cond:' + name]:5}   uncond {counts['uncond:' + name]:5}")
    for kind, (lo, hi) in extremes.items():
        print(f"    {kind:6} displacement range [{lo}, {hi}]")


def _plant_line(label: str, profile: str, seeds: range, plant) -> None:
    fired = r64 = r32 = 0
    for seed in seeds:
        seen = plant_reaches_oracle(scenario_from_seed(seed, profile), profile, plant)
        if seen is None:
            continue
        fired += 1
        r64 += seen["r0_64"]
        r32 += seen["r0_32"]
    print(f"    {label:28} fired in {fired:4} scenarios; reached the oracle in {r64:4} "
          f"({100 * r64 / max(fired, 1):3.0f}%) with R0 on 64 bits, {r32:4} ({100 * r32 / max(fired, 1):3.0f}%) on 32")


def plant(profile: str, seeds: range) -> None:
    print("  planted wrong values (interpreter):")
    for label, xor in (("helper/atomic result ^ 0x100", PLANT_LOW), ("helper/atomic result ^ 1<<40", PLANT_HIGH)):
        _plant_line(label, profile, seeds, lambda xor=xor: planted(xor))
    for name in WIDTH_PLANTS:
        _plant_line(name, profile, seeds, lambda name=name: width_planted(name))


def shapes(profile: str, seeds: range) -> None:
    c: Counter[str] = Counter()
    slots = []
    for seed in seeds:
        s = scenario_from_seed(seed, profile)
        c["motif:" + s.meta_dict.get("motif", "?")] += 1
        slots.append(sum(len(p.insns) for p in s.programs))
        for prog in s.programs:
            sites = tail_call_sites(prog, s, profile)
            c["site:direct"] += sum(site.direct for site in sites)
            c["site:indirect"] += sum(not site.direct for site in sites)
            c["site:in-subprog"] += sum(site.in_subprog for site in sites)
        for ev in s.events:
            if isinstance(ev, Update):
                c["event:update-prog" if isinstance(ev.value, str) else "event:update-data"] += 1
            else:
                c["event:" + {Run: "run", Delete: "delete", Load: "load"}[type(ev)]] += 1
    n = len(seeds)
    slots.sort()
    print(f"  slots per scenario: median {slots[n // 2]}, mean {sum(slots) / n:.1f}, max {slots[-1]}")
    print("  per scenario: " + ", ".join(f"{k} {v / n:.2f}" for k, v in sorted(c.items())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="append", choices=sorted(PROFILES))
    parser.add_argument("--only", choices=("jumps", "plant", "shapes"))
    args = parser.parse_args()
    seeds = range(args.seed, args.seed + args.scenarios)
    for profile in args.profile or sorted(PROFILES):
        start = time.perf_counter()
        print(f"{profile} (seeds {seeds.start}..{seeds.stop - 1}):")
        for name, fn in (("jumps", jumps), ("plant", plant), ("shapes", shapes)):
            if args.only in (None, name):
                fn(profile, seeds)
        print(f"  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
