"""Fuzzing throughput, and where the time goes.

    .venv/bin/python bench/throughput.py [--seconds S] [--profile P] [--seed N]

Three passes over the same seeded scenarios (one core, one process): the
interpreter alone, the JIT alone, and the differential pair through the
oracle (what ``bpfdiff fuzz`` does per scenario).  For each: scenarios/s and
engine runs/s (run events x engines).  For the pair, the share of wall time
in each part, measured by wrapping the functions that do it:

generation       ``scenario_from_seed``
interpretation   ``InterpEngine.execute``
JIT compile      ``bpf_int_jit_compile`` (as called by the JIT engine at load)
emulation        ``Emulator.run`` (unicorn, with its Python hooks: helpers, trace)
JIT other        the rest of ``JitEngine.execute``: maps, images, poke runs
comparison       ``compare_outcomes`` in the oracle
other            the oracle's own bookkeeping, the loop
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable

from bpfdiff.fuzz import generate, oracle
from bpfdiff.interp import engine as interp_engine
from bpfdiff.jit import emulator as jit_emulator
from bpfdiff.jit import engine as jit_engine

from bpfdiff.engine import make_engine
from bpfdiff.scenario import Run

TIMES: dict[str, float] = defaultdict(float)


def timed(name: str, fn: Callable) -> Callable:
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - start
    return wrapper


def instrument() -> None:
    """Wrap the functions each part of the time is spent in (module attributes the callers look up)."""
    generate_fn = generate.scenario_from_seed
    globals()["scenario_from_seed"] = timed("generation", generate_fn)
    interp_engine.InterpEngine.execute = timed("interpretation", interp_engine.InterpEngine.execute)
    jit_engine.JitEngine.execute = timed("jit total", jit_engine.JitEngine.execute)
    jit_engine.bpf_int_jit_compile = timed("JIT compile", jit_engine.bpf_int_jit_compile)
    jit_emulator.Emulator.run = timed("emulation", jit_emulator.Emulator.run)
    oracle.compare_outcomes = timed("comparison", oracle.compare_outcomes)


def scenario_from_seed(seed: int, profile: str):
    return generate.scenario_from_seed(seed, profile)


def run_events(scenario) -> int:
    return sum(isinstance(e, Run) for e in scenario.events)


def single_engine(name: str, profile: str, seconds: float, seed: int) -> tuple[float, float]:
    engine = make_engine(name, profile=profile)
    start = time.perf_counter()
    scenarios = runs = 0
    while time.perf_counter() - start < seconds:
        s = generate.scenario_from_seed(seed + scenarios, profile)
        engine.execute(s)
        scenarios += 1
        runs += run_events(s)
    elapsed = time.perf_counter() - start
    engine.close()
    return scenarios / elapsed, runs / elapsed


def differential(profile: str, seconds: float, seed: int) -> tuple[float, float, float, int]:
    pool = oracle.EnginePool()
    TIMES.clear()
    start = time.perf_counter()
    scenarios = runs = findings = 0
    while time.perf_counter() - start < seconds:
        s = scenario_from_seed(seed + scenarios, profile)
        verdict = oracle.run_oracle(s, profile=profile, pool=pool)
        findings += not verdict.ok
        scenarios += 1
        runs += run_events(s) * len(verdict.outcomes)
    elapsed = time.perf_counter() - start
    pool.close()
    return scenarios / elapsed, runs / elapsed, elapsed, findings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per pass (default: %(default)s)")
    parser.add_argument("--profile", default="linux-6.1")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    print(f"profile {args.profile}, {args.seconds:.0f} s per pass, seeds from {args.seed}, one process")
    print(f"{'pass':<14}{'scenarios/s':>12}{'engine runs/s':>15}")
    for name in ("interp", "jit"):
        rate, runs = single_engine(name, args.profile, args.seconds, args.seed)
        print(f"{name + ' alone':<14}{rate:>12.1f}{runs:>15.1f}")
    instrument()
    rate, runs, elapsed, findings = differential(args.profile, args.seconds, args.seed)
    print(f"{'differential':<14}{rate:>12.1f}{runs:>15.1f}   ({findings} scenarios with findings)")

    jit_total = TIMES.pop("jit total", 0.0)
    parts = dict(TIMES)
    parts["JIT other"] = jit_total - parts.get("JIT compile", 0.0) - parts.get("emulation", 0.0)
    parts["other"] = elapsed - sum(parts.values())
    print("\nwhere the differential pass spends its time:")
    for name in ("generation", "interpretation", "JIT compile", "emulation", "JIT other", "comparison", "other"):
        seconds = parts.get(name, 0.0)
        print(f"  {name:<16}{seconds:8.2f} s {100 * seconds / elapsed:6.1f} %")


if __name__ == "__main__":
    main()
