"""Interpreter throughput: BPF instructions/s and scenario runs/s.

    .venv/bin/python bench/interp.py [--suite DIR] [--loop N] [--repeat K]

Three measurements:
  * the conformance programs (short, varied), run K times each through one
    engine: scenario runs/s (engine setup + load + run + results) and
    instructions/s;
  * a tight ALU loop of about N instructions in one run: raw instructions/s;
  * a tail-call chain scenario (prog array updates + a 34-program run).
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from bpfdiff.interp.engine import InterpEngine

from bpfdiff.asm import assemble_program
from bpfdiff.datafile import DataFileError, read_datafile
from bpfdiff.isa import Program
from bpfdiff.scenario import PROG_RAW, MapDef, Run, Scenario, Update, key_u32


def count_instructions(engine: InterpEngine, scenario: Scenario) -> int:
    """Instructions one run of the scenario executes (budget bisection is overkill: count the loop)."""
    counted = InterpEngine(engine.profile.name, budget=engine.budget)
    low, high = 0, engine.budget
    # The run is deterministic; the smallest budget that still exits is the count.
    while low < high:
        mid = (low + high) // 2
        counted.budget = mid
        if counted.execute(scenario)[-1].run.exit == "timeout":
            low = mid + 1
        else:
            high = mid
    return low


def bench_suite(directory: Path, repeat: int) -> None:
    scenarios = []
    for path in sorted(directory.glob("*.data")):
        try:
            datafile = read_datafile(path)
        except (DataFileError, ValueError):
            continue
        if not datafile.unknown_sections:
            scenarios.append(datafile.to_scenario())
    engine = InterpEngine()
    insns = sum(count_instructions(engine, s) for s in scenarios)
    start = time.perf_counter()
    for _ in range(repeat):
        for scenario in scenarios:
            engine.execute(scenario)
    elapsed = time.perf_counter() - start
    runs = repeat * len(scenarios)
    print(f"conformance: {len(scenarios)} programs x {repeat}: {runs / elapsed:,.0f} scenario runs/s, "
          f"{insns * repeat / elapsed:,.0f} insns/s (incl. setup), {insns} insns per pass")
    # Fuzzing runs new programs every time: include decoding (no cache hits).
    start = time.perf_counter()
    for _ in range(repeat):
        for scenario in scenarios:
            fresh = tuple(Program(p.name, p.insns) for p in scenario.programs)
            engine.execute(replace(scenario, programs=fresh))
    elapsed = time.perf_counter() - start
    print(f"conformance, fresh Program objects (decoded every run): {runs / elapsed:,.0f} scenario runs/s")


LOOP = """
mov %r0, 0
mov %r1, {n}
loop:
add %r0, %r1
xor %r0, 0x5a
lsh32 %r0, 1
sub %r1, 1
jne %r1, 0, loop
exit
"""


def bench_loop(n: int) -> None:
    iterations = n // 5
    scenario = Scenario(prog_type=PROG_RAW, programs=(assemble_program("loop", LOOP.format(n=iterations)),),
                        events=(Run("loop"),))
    engine = InterpEngine(budget=n + 10)
    start = time.perf_counter()
    result = engine.execute(scenario)[-1].run
    elapsed = time.perf_counter() - start
    executed = 2 + iterations * 5 + 1
    assert result.exit == "exit", result
    print(f"loop: {executed:,} insns in {elapsed:.3f}s: {executed / elapsed:,.0f} insns/s")


def bench_tail_calls(repeat: int) -> None:
    prog = assemble_program("self", "lddw %r2, map:jt\nmov %r3, 0\ncall 12\nmov %r0, 0\nexit\n")
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("jt", "prog_array", 4, 4, 1),), programs=(prog,),
                        events=(Update("jt", key_u32(0), "self"), Run("self", b"")))
    engine = InterpEngine()
    start = time.perf_counter()
    for _ in range(repeat):
        engine.execute(scenario)
    elapsed = time.perf_counter() - start
    print(f"tail-call loop (34 entries, 33 tail calls): {repeat / elapsed:,.0f} scenario runs/s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", type=Path, default=Path("/work/shared/conformance"))
    parser.add_argument("--loop", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    if args.suite.is_dir():
        bench_suite(args.suite, args.repeat)
    else:
        print(f"{args.suite}: not a directory, skipping the conformance benchmark", file=sys.stderr)
    bench_loop(args.loop)
    bench_tail_calls(args.repeat * 100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
