"""Tail calls from subprograms nest call frames at run time, as in the kernel.

The verifier bounds each program's own call chain by MAX_CALL_FRAMES; a tail
call made inside a subprogram enters the target *in that frame*, and the
target's calls nest on top.  A program that tail-calls itself from its
subprogram therefore runs 1 + 33 times, 34 frames deep, on linux-6.1 -- valid
in the kernel (the frames before the tail-calling subprogram use less than 256
bytes of stack).  A counter lost across the call makes that recursion endless:
the JIT's stack overflows.
"""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.checker import check_scenario
from bpfdiff.fuzz.oracle import EnginePool, run_oracle
from raw_scenarios import parse_raw

from bpfdiff.engine import EXIT, FAULT, FAULT_CALL_DEPTH, FAULT_STACK_OVERFLOW, make_engine

SELF_NEST = """-- maps
jmp prog_array key_size=4 value_size=4 max_entries=1
-- prog p
call local f
exit
f:
mov %r3, 0
lddw %r2, map:jmp
call 12
mov %r0, 1
exit
-- events
update jmp 0 prog:p
run p
"""


def _deep_chain(levels: int) -> str:
    """A program whose main calls f1 -> f2 -> ... -> f<levels> (levels + 1 frames of its own)."""
    body = ["call local f1", "exit"]
    for i in range(1, levels + 1):
        body += [f"f{i}:", f"call local f{i + 1}" if i < levels else "mov %r0, 9", "exit"]
    return "\n".join(body)


@pytest.fixture(scope="module")
def pool():
    pool = EnginePool()
    yield pool
    pool.close()


@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_self_tail_call_through_a_subprogram_nests_34_deep(engine: str) -> None:
    scenario = parse_raw(SELF_NEST)
    assert check_scenario(scenario, "linux-6.1") == []
    run = make_engine(engine, profile="linux-6.1").execute(scenario)[1].run
    assert (run.exit, run.r0, run.tail_calls, run.trace) == (EXIT, 1, 33, ("p",) * 34)


def test_the_frame_limit_is_per_program_not_per_run() -> None:
    # `deep` uses all 8 of its frames; entered by a tail call from a subprogram
    # of `entry` (frame 2), the run is 9 frames deep: fine in the kernel.
    text = f"""-- maps
jmp prog_array key_size=4 value_size=4 max_entries=1
-- prog entry
call local f
exit
f:
mov %r3, 0
lddw %r2, map:jmp
call 12
mov %r0, 1
exit
-- prog deep
{_deep_chain(7)}
-- events
update jmp 0 prog:deep
run entry
"""
    scenario = parse_raw(text)
    for engine in ("interp", "jit"):
        run = make_engine(engine, profile="linux-6.1").execute(scenario)[1].run
        assert (run.exit, run.r0, run.trace) == (EXIT, 9, ("entry", "deep")), engine


def test_a_ninth_frame_of_one_program_is_still_refused_at_run_time() -> None:
    scenario = parse_raw(f"-- prog deep\n{_deep_chain(8)}\n-- events\nrun deep\n")
    run = make_engine("interp", profile="linux-6.1").execute(scenario)[0].run
    assert (run.exit, run.fault_kind) == (FAULT, FAULT_CALL_DEPTH)


def test_a_lost_counter_overflows_the_jit_stack_and_is_named(pool) -> None:
    scenario = parse_raw(SELF_NEST)
    bugs = frozenset({"subprog-counter-reset"})
    jit_run = make_engine("jit", profile="linux-6.1", bugs=bugs).execute(scenario)[1].run
    assert (jit_run.exit, jit_run.fault_kind) == (FAULT, FAULT_STACK_OVERFLOW)
    assert jit_run.tail_calls > 34
    verdict = run_oracle(scenario, profile="linux-6.1", bugs=bugs, pool=pool)
    assert verdict.signature == "divergence:linux-6.1:control:jit@subprog-reset:any"
    assert [d.field for d in verdict.differences] == ["exit", "fault_kind"]
    # the interpreter under the same what-if rule overflows too
    what_if = pool.what_if_interp("linux-6.1", "subprog-reset").execute(scenario)[1].run
    assert (what_if.exit, what_if.fault_kind) == (FAULT, FAULT_STACK_OVERFLOW)
