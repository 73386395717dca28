"""Fuzzing throughput, where the time goes, and what a JIT engine run costs next to bare unicorn.

    .venv/bin/python bench/throughput.py [--seconds S | --scenarios N] [--profile P] [--seed N] [--bare-scenarios K]

Three passes over the same seeded scenarios (one core, one process): the
interpreter alone, the JIT alone, and the differential pair through the
oracle (what ``bpfdiff fuzz`` does per scenario), each under the collector
thresholds the fuzz loop runs with (``fuzz_gc``).  Each pass starts with the
caches a new process has (none: the verifier model's answers and the JIT's
remembered instruction code are forgotten), so no pass profits from the one
before.  For each: scenarios/s and engine runs/s (run events x engines), per
second of wall time and per second of this process's CPU time (the machine
may be shared: the load average is printed first).  ``--scenarios N`` runs the
same N scenarios in every pass instead of S seconds of them: on a loaded
machine a timed pass gets through fewer scenarios, a different mix, so two
versions of the code are compared on the same work this way.  Targets: the
differential pass >= 2,000 engine runs/s on one core; a JIT engine run <= 30
bare ``emu_start`` of its images.

For the pair, the share of wall time in each part, measured by wrapping the
functions that do it:

generation       ``scenario_from_seed``
interpretation   ``InterpEngine.execute`` (with the verifier model, shared with the JIT)
JIT compile      ``bpf_int_jit_compile`` (as called by the JIT engine at load)
emulation        ``Emulator.run`` (unicorn, with its Python hooks: helpers, trace)
JIT other        the rest of ``JitEngine.execute``: maps, images, poke runs
comparison       ``compare_outcomes`` in the oracle
other            the oracle's own bookkeeping, the loop

JIT engine vs bare unicorn, both in CPU seconds of this process (a shared
machine preempts long passes more than short starts).  The JIT-alone and the
differential pass record the CPU time of the JIT engine's ``execute`` of
each scenario (in the differential pass the engine the oracle runs first,
not its re-runs).  For the first K scenarios a fresh engine then runs each
scenario again (untimed); at every ``emu_start`` of a run it copies the
whole machine as it is at that moment -- every mapped region with its
permissions (images with their pokes, maps, stack, context, packet) and the
registers -- into a second unicorn instance *without any hook*, and times
``emu_start`` there from the same entry, with the same stop address and
instruction budget, several times (memory restored in between, untimed);
the median of the warm starts (translation cache filled by the first) is
that run's bare cost.  Helpers there are the helper page's bare ``ret``, so
a run may take another path after a helper call; the image, the memory and
the entry are the same.  The multiples printed are (the engine's seconds
over those scenarios, everything included: JIT compile, maps, pokes, runs,
results; alone also its verifier model, which the differential pass shares
with the interpreter) / (the sum of their runs' bare costs).  The differential
pass's figure is also split, in CPU seconds of the same engine over the same
scenarios: its JIT compiles (``bpf_int_jit_compile``, the verifier model's
cached answer included), its runs (``Emulator.run``: ``emu_start``, which
translates code not run before in the scenario and calls the hooks, and the
run's set-up), and the rest (maps, images, hook set-up, pokes and their
checks, results).  Timing those compiles and runs one by one costs CPU
time too (a CPU clock read is a system call, a few us on a virtual
machine): what a timed call that does nothing costs is measured first
(``timer_cost``) and taken off the engine's time and its parts.  The bare
first start (translating everything) beside the warm one says what
translation costs; the count that bounds a run makes unicorn instrument
every instruction, so it costs in translation too, on both machines.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import defaultdict
from collections.abc import Callable

from bpfdiff.fuzz import generate, oracle
from bpfdiff.fuzz.campaign import fuzz_gc
from bpfdiff.interp import engine as interp_engine
from bpfdiff.jit import emulator as jit_emulator
from bpfdiff.jit import engine as jit_engine
from unicorn import Uc, UcError
from unicorn import x86_const as x86

from bpfdiff import memo
from bpfdiff.engine import make_engine
from bpfdiff.scenario import Run

TIMES: dict[str, float] = defaultdict(float)
# The differential pass's own JIT engine (its env and emulator, to tell its compiles and runs from the
# oracle's re-runs) and the CPU seconds of its parts so far: "JIT compile", "emulation"
MAIN_JIT: dict[str, object] = {}
MAIN_PARTS: dict[str, float] = defaultdict(float)
MAIN_CALLS: dict[str, int] = defaultdict(int)     # and how many calls they were
# What timing one of the main engine's calls costs (TimerCost): measured by differential()
TIMER_COST: dict[str, float] = {}
BARE_REPEATS = 5          # starts per run on the bare machine; the first fills the translation cache
# what the JIT engine sets before a run (emulator.GPRS plus what it starts from)
BARE_REGS = (*jit_emulator.GPRS, x86.UC_X86_REG_RBP, x86.UC_X86_REG_RSP, x86.UC_X86_REG_RFLAGS)


def fresh_caches() -> None:
    """Every pass starts as a new process would: every remembered answer (the verifier model's,
    the JIT's instruction code, the generator's and the decoder's) is forgotten, or a pass
    would reuse the previous pass's."""
    memo.forget_all()


def timed(name: str, fn: Callable, mine: Callable[[tuple], bool] | None = None) -> Callable:
    """``fn`` adding its wall seconds to TIMES[name]; for a call where ``mine(args)`` (the main JIT
    engine's), its CPU seconds to MAIN_PARTS[name] too."""
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        cpu = time.process_time() if mine is not None and mine(args) else None
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[name] += time.perf_counter() - start
            if cpu is not None:
                MAIN_PARTS[name] += time.process_time() - cpu
                MAIN_CALLS[name] += 1
    return wrapper


def timer_cost(calls: int = 2000, rounds: int = 5) -> tuple[float, float]:
    """CPU seconds that timing one of the main engine's calls adds (a ``timed`` wrapper around a call
    that does nothing): to the engine's own clock around it, and to the part's clock itself.

    A CPU clock read is a system call (2-5 us on a virtual machine, where a bare ``emu_start``
    costs about 10), and the engine's compiles and runs are timed one by one inside its timed
    ``execute``: what the timers cost is not the engine's, and is taken off both.  The least of
    ``rounds`` rounds: the least that can be taken off.
    """
    probe = timed("timer probe", lambda: None, lambda args: True)

    def plain() -> None:
        return None

    window = part = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        for _ in range(calls):
            plain()
        bare = time.process_time() - start
        MAIN_PARTS["timer probe"] = 0.0
        start = time.process_time()
        for _ in range(calls):
            probe()
        window = min(window, (time.process_time() - start - bare) / calls)
        part = min(part, MAIN_PARTS["timer probe"] / calls)
    for table in (TIMES, MAIN_PARTS, MAIN_CALLS):
        table.pop("timer probe", None)
    return max(window, 0.0), max(part, 0.0)


def instrument() -> None:
    """Wrap the functions each part of the time is spent in (module attributes the callers look up)."""
    generate_fn = generate.scenario_from_seed
    globals()["scenario_from_seed"] = timed("generation", generate_fn)
    interp_engine.InterpEngine.execute = timed("interpretation", interp_engine.InterpEngine.execute)
    jit_engine.JitEngine.execute = timed("jit total", jit_engine.JitEngine.execute)
    # bpf_int_jit_compile(prog, maps, profile, env, ...) and Emulator.run(self, ...) of the main engine
    jit_engine.bpf_int_jit_compile = timed("JIT compile", jit_engine.bpf_int_jit_compile,
                                           lambda args: args[3] is MAIN_JIT.get("env"))
    jit_emulator.Emulator.run = timed("emulation", jit_emulator.Emulator.run,
                                      lambda args: args[0] is MAIN_JIT.get("emu"))
    oracle.compare_outcomes = timed("comparison", oracle.compare_outcomes)


def scenario_from_seed(seed: int, profile: str):
    return generate.scenario_from_seed(seed, profile)


def run_events(scenario) -> int:
    return sum(isinstance(e, Run) for e in scenario.events)


class Clock:
    """Wall and CPU seconds since creation."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def elapsed(self) -> tuple[float, float]:
        return time.perf_counter() - self.wall, time.process_time() - self.cpu


def more(clock: Clock, seconds: float, done: int, count: int | None) -> bool:
    """Whether a pass goes on: ``count`` scenarios when given, else until ``seconds`` have passed."""
    return done < count if count is not None else time.perf_counter() - clock.wall < seconds


def single_engine(name: str, profile: str, seconds: float, seed: int,
                  per_scenario: list[tuple[float, int]] | None = None,
                  count: int | None = None) -> tuple[int, int, float, float]:
    """Scenarios, runs, wall and CPU seconds; ``per_scenario`` gets (CPU seconds, runs) of each scenario."""
    engine = make_engine(name, profile=profile)
    fresh_caches()
    clock = Clock()
    scenarios = runs = 0
    while more(clock, seconds, scenarios, count):
        s = generate.scenario_from_seed(seed + scenarios, profile)
        start = time.process_time()
        engine.execute(s)
        if per_scenario is not None:
            per_scenario.append((time.process_time() - start, run_events(s)))
        scenarios += 1
        runs += run_events(s)
    wall, cpu = clock.elapsed()
    engine.close()
    return scenarios, runs, wall, cpu


def differential(profile: str, seconds: float, seed: int, jit_per_scenario: list[tuple[float, int]],
                 count: int | None = None,
                 jit_parts: list[tuple[float, float]] | None = None) -> tuple[int, int, float, float, int]:
    """``jit_per_scenario`` gets (CPU seconds, runs) of the JIT engine's own execution of each scenario
    (not the oracle's re-runs: probes, known kernel bugs); ``jit_parts`` (CPU seconds of its JIT
    compiles, of its runs in Emulator.run) of each, when the functions are instrumented."""
    pool = oracle.EnginePool()
    main_jit = pool.get("jit", profile, frozenset())
    MAIN_JIT.update(env=main_jit.env, emu=main_jit.emu)
    real_execute = main_jit.execute
    spent = [0.0]

    def execute(scenario):
        start = time.process_time()
        try:
            return real_execute(scenario)
        finally:
            spent[0] += time.process_time() - start

    main_jit.execute = execute            # this instance only
    window_cost, part_cost = timer_cost()
    TIMER_COST.update(window=window_cost, part=part_cost)
    TIMES.clear()
    fresh_caches()
    clock = Clock()
    scenarios = runs = findings = 0
    while more(clock, seconds, scenarios, count):
        s = scenario_from_seed(seed + scenarios, profile)
        spent[0] = 0.0
        MAIN_PARTS.clear()
        MAIN_CALLS.clear()
        verdict = oracle.run_oracle(s, profile=profile, pool=pool)
        # without what timing its compiles and runs cost (timer_cost)
        timed_calls = MAIN_CALLS["JIT compile"] + MAIN_CALLS["emulation"]
        jit_per_scenario.append((spent[0] - window_cost * timed_calls, run_events(s)))
        if jit_parts is not None:
            jit_parts.append((MAIN_PARTS["JIT compile"] - part_cost * MAIN_CALLS["JIT compile"],
                              MAIN_PARTS["emulation"] - part_cost * MAIN_CALLS["emulation"]))
        findings += not verdict.ok
        scenarios += 1
        runs += run_events(s) * len(verdict.outcomes)
    wall, cpu = clock.elapsed()
    pool.close()
    MAIN_JIT.clear()
    return scenarios, runs, wall, cpu, findings


# -- the bare baseline ---------------------------------------------------------------------------
class BareMachine:
    """A hook-less unicorn copy of the JIT engine's machine, rebuilt when the mapped regions change."""

    def __init__(self) -> None:
        self.uc: Uc | None = None
        self.regions: list[tuple[int, int, int]] = []

    def time_start(self, source: Uc, begin: int, until: int, count: int) -> tuple[float, float]:
        """Copy ``source`` (memory and registers) and time ``emu_start`` on the copy: the first start
        (translating the code) and the median of the warm ones."""
        regions = [(start, end + 1 - start, perms) for start, end, perms in source.mem_regions()]
        if self.uc is None or regions != self.regions:
            self.uc = Uc(jit_emulator.UC_ARCH_X86, jit_emulator.UC_MODE_64)
            for start, size, perms in regions:
                self.uc.mem_map(start, size, perms)
            self.regions = regions
        memory = [(start, bytes(source.mem_read(start, size))) for start, size, _perms in regions]
        registers = [(reg, source.reg_read(reg)) for reg in BARE_REGS]
        uc = self.uc
        uc.ctl_flush_tb()       # the copy's code is new here (mem_write keeps stale translations)
        times = []
        for _ in range(BARE_REPEATS):
            for start, data in memory:
                uc.mem_write(start, data)
            for reg, value in registers:
                uc.reg_write(reg, value)
            start = time.process_time()
            try:
                uc.emu_start(begin, until, count=count)
            except UcError:
                pass           # the run faults here too (or, after a bare helper, somewhere else)
            times.append(time.process_time() - start)
        return times[0], statistics.median(times[1:])


def bare_costs(profile: str, seed: int, scenarios: int) -> tuple[float, float, int]:
    """Total bare ``emu_start`` seconds (warm, first) and runs for the runs of scenarios seed .. seed+scenarios-1."""
    engine = jit_engine.JitEngine(profile)
    bare = BareMachine()
    total = [0.0, 0.0, 0]
    uc = engine.emu.uc
    real_start = uc.emu_start

    def recording_start(begin: int, until: int, timeout: int = 0, count: int = 0) -> None:
        first, warm = bare.time_start(uc, begin, until, count)
        total[0] += warm
        total[1] += first
        total[2] += 1
        real_start(begin, until, timeout=timeout, count=count)

    uc.emu_start = recording_start        # this engine's instance only
    for k in range(scenarios):
        engine.execute(generate.scenario_from_seed(seed + k, profile))
    engine.close()
    return total[0], total[1], total[2]


def load_average() -> str:
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f} on {os.cpu_count()} CPUs"


def print_rate(name: str, scenarios: int, runs: int, wall: float, cpu: float, note: str = "") -> None:
    print(f"{name:<14}{scenarios / wall:>12.1f}{runs / wall:>15.1f}{scenarios / cpu:>14.1f}{runs / cpu:>15.1f}"
          f"{note}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="per pass (default: %(default)s)")
    parser.add_argument("--scenarios", type=int, default=None,
                        help="run these many scenarios per pass instead of --seconds of them")
    parser.add_argument("--profile", default="linux-6.1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bare-scenarios", type=int, default=200,
                        help="scenarios measured against bare unicorn (default: %(default)s)")
    args = parser.parse_args()

    length = f"{args.scenarios} scenarios" if args.scenarios is not None else f"{args.seconds:.0f} s"
    print(f"profile {args.profile}, {length} per pass, seeds from {args.seed}, one process; {load_average()}")
    print(f"{'':<14}{'per wall second':>27}{'per CPU second':>29}")
    print(f"{'pass':<14}{'scenarios':>12}{'engine runs':>15}{'scenarios':>14}{'engine runs':>15}")
    with fuzz_gc():          # as `bpfdiff fuzz` runs its loop
        scenarios, runs, wall, cpu = single_engine("interp", args.profile, args.seconds, args.seed,
                                                   count=args.scenarios)
        print_rate("interp alone", scenarios, runs, wall, cpu)
        jit_scenarios: list[tuple[float, int]] = []
        scenarios, runs, wall, cpu = single_engine("jit", args.profile, args.seconds, args.seed, jit_scenarios,
                                                   count=args.scenarios)
        print_rate("jit alone", scenarios, runs, wall, cpu)
        instrument()
        jit_in_differential: list[tuple[float, int]] = []
        jit_parts: list[tuple[float, float]] = []
        scenarios, runs, elapsed, cpu, findings = differential(args.profile, args.seconds, args.seed,
                                                               jit_in_differential, count=args.scenarios,
                                                               jit_parts=jit_parts)
    print_rate("differential", scenarios, runs, elapsed, cpu, f"   ({findings} scenarios with findings)")

    jit_total = TIMES.pop("jit total", 0.0)
    parts = dict(TIMES)
    parts["JIT other"] = jit_total - parts.get("JIT compile", 0.0) - parts.get("emulation", 0.0)
    parts["other"] = elapsed - sum(parts.values())
    print("\nwhere the differential pass spends its time:")
    for name in ("generation", "interpretation", "JIT compile", "emulation", "JIT other", "comparison", "other"):
        seconds = parts.get(name, 0.0)
        print(f"  {name:<16}{seconds:8.2f} s {100 * seconds / elapsed:6.1f} %")

    sample = min(len(jit_scenarios), len(jit_in_differential), args.bare_scenarios)
    bare_seconds, first_seconds, bare_runs = bare_costs(args.profile, args.seed, sample)
    print(f"\nJIT engine vs bare unicorn emu_start of the same images, seeds {args.seed}..{args.seed + sample - 1} "
          f"({load_average()}):")
    bare_per_run = bare_seconds / max(bare_runs, 1)
    print(f"  bare emu_start   {1e6 * bare_per_run:9.1f} us CPU per run ({bare_runs} runs, median of "
          f"{BARE_REPEATS - 1} warm starts each; the first start, translating the code: "
          f"{1e6 * first_seconds / max(bare_runs, 1):.1f} us)")
    for label, per_scenario in (("in the differential pass (the verifier model's answers shared with the "
                                 "interpreter, which loads first)", jit_in_differential),
                                ("alone (its own verifier model)", jit_scenarios)):
        engine_seconds = sum(seconds for seconds, _runs in per_scenario[:sample])
        engine_runs = sum(runs for _seconds, runs in per_scenario[:sample])
        if engine_runs != bare_runs or not bare_runs:
            print(f"  runs differ: {engine_runs} timed, {bare_runs} recorded")
            continue
        engine_per_run = engine_seconds / engine_runs
        print(f"  JIT engine {label}: {1e6 * engine_per_run:.1f} us CPU per run, everything else included: "
              f"{engine_per_run / bare_per_run:.1f} x a bare emu_start (target <= 30)")
        if per_scenario is jit_in_differential:
            print(f"    (timing its compiles and runs one by one costs {1e6 * TIMER_COST['window']:.1f} us CPU a "
                  f"call, {1e6 * TIMER_COST['part']:.1f} us of it inside the part: taken off the engine and "
                  "its parts)")
            compile_seconds = sum(part for part, _emulation in jit_parts[:sample])
            emulation_seconds = sum(emulation for _compile, emulation in jit_parts[:sample])
            print_parts(engine_seconds, compile_seconds, emulation_seconds, engine_runs, bare_per_run)


def print_parts(total: float, compile_seconds: float, emulation_seconds: float, runs: int, bare: float) -> None:
    """The JIT engine's cost per run in its parts, each also in bare emu_starts."""
    parts = (("JIT compile (bpf_int_jit_compile at load, its verifier lookup included)", compile_seconds),
             ("runs (Emulator.run: emu_start, translating new code and running the hooks, and its set-up)",
              emulation_seconds),
             ("the rest (maps, images, hooks, pokes and their checks, results)",
              total - compile_seconds - emulation_seconds))
    for name, seconds in parts:
        print(f"    {1e6 * seconds / runs:7.1f} us {seconds / runs / bare:5.1f} x  {name}")


if __name__ == "__main__":
    main()
