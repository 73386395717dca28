"""Tail calls, modelled on lib/test_bpf.c ``tail_call_tests[]``.

As in the kernel's suite, the programs form one table, all in one prog
array, and ``TAIL_CALL(n)`` calls the program ``n`` entries away.  The
kernel's later versions of these tests keep their count in the context
(``FLAG_NEED_STATE``); ours do the same with the run's ``mem``, which keeps
R1 a context pointer.  Expected values are the kernel's: both profiles allow
exactly 33 tail calls (v5.5: ``cnt > 32`` checked before counting; v6.1:
``cnt >= 33``), i.e. 34 programs entered by a self tail call.
"""

import pytest
from bpfdiff.interp.engine import InterpEngine

from bpfdiff.asm import assemble_program
from bpfdiff.engine import EngineError
from bpfdiff.profiles import get_profile
from bpfdiff.scenario import PROG_RAW, Delete, MapDef, Run, Scenario, Update, key_u32

PROFILES = ["linux-6.1", "linux-5.5"]


def tail_call(index: int) -> str:
    return f"lddw %r2, map:jt\nmov %r3, {index}\ncall 12\n"


# (name, body builder taking the program's own index, expected r0, expected mem u32, tail calls, trace length)
# "state" programs add to the u32 at [r1]: ldxw/add/stxw, like FLAG_NEED_STATE.
def add_state(n: int) -> str:
    return f"ldxw %r4, [%r1]\nadd %r4, {n}\nstxw [%r1], %r4\n"


TABLE = [
    # Tail call leaf: r0 = state + 1
    ("leaf", lambda i: "ldxw %r0, [%r1]\nadd %r0, 1\nexit\n"),
    # Tail call 2/3/4: add N to the state, tail call the previous entry
    ("tc2", lambda i: add_state(2) + tail_call(i - 1) + "mov %r0, -1\nexit\n"),
    ("tc3", lambda i: add_state(3) + tail_call(i - 1) + "mov %r0, -1\nexit\n"),
    ("tc4", lambda i: add_state(4) + tail_call(i - 1) + "mov %r0, -1\nexit\n"),
    # error path, max count reached: count every entry, tail call itself
    ("max", lambda i: add_state(1) + tail_call(i) + "mov %r0, 0\nexit\n"),
    # error path, NULL target: slot 7 stays empty
    ("null", lambda i: add_state(1) + tail_call(7) + "mov %r0, 1\nexit\n"),
    # error path, index out of range (max_entries is 8)
    ("oob", lambda i: add_state(1) + tail_call(0xFFFF) + "mov %r0, 1\nexit\n"),
]
SLOTS = 8


def table_scenario(run: str, extra_events=()) -> Scenario:
    programs = tuple(assemble_program(name, body(i)) for i, (name, body) in enumerate(TABLE))
    fill = tuple(Update("jt", key_u32(i), name) for i, (name, _) in enumerate(TABLE))
    return Scenario(prog_type=PROG_RAW, maps=(MapDef("jt", "prog_array", 4, 4, SLOTS),), programs=programs,
                    events=fill + tuple(extra_events) + (Run(run, bytes(4)),))


def run_result(profile: str, run: str, bugs=frozenset(), extra_events=()):
    outcomes = InterpEngine(profile=profile, bugs=bugs).execute(table_scenario(run, extra_events))
    assert all(o.retval == 0 for o in outcomes if o.kind == "update")
    return outcomes[-1].run


@pytest.mark.parametrize("profile", PROFILES)
@pytest.mark.parametrize("run, r0, state, tail_calls, trace", [
    ("leaf", 1, 0, 0, ("leaf",)),
    ("tc2", 3, 2, 1, ("tc2", "leaf")),
    ("tc3", 6, 5, 2, ("tc3", "tc2", "leaf")),
    ("tc4", 10, 9, 3, ("tc4", "tc3", "tc2", "leaf")),
    ("null", 1, 1, 0, ("null",)),
    ("oob", 1, 1, 0, ("oob",)),
])
def test_kernel_tail_call_table(profile, run, r0, state, tail_calls, trace):
    result = run_result(profile, run)
    assert result.exit == "exit"
    assert (result.r0, int.from_bytes(result.mem, "little"), result.tail_calls, result.trace) == \
        (r0, state, tail_calls, trace)


@pytest.mark.parametrize("profile", PROFILES)
def test_max_count_reached_runs_33_tail_calls(profile):
    result = run_result(profile, "max")
    assert result.exit == "exit" and result.r0 == 0
    assert result.tail_calls == 33
    assert len(result.trace) == 34 and set(result.trace) == {"max"}
    assert int.from_bytes(result.mem, "little") == 34       # every entry counted itself


@pytest.mark.parametrize("profile", PROFILES)
def test_planted_bug_stops_one_tail_call_early(profile):
    result = run_result(profile, "max", bugs=frozenset({"interp-tail-call-limit"}))
    assert result.tail_calls == 32 and len(result.trace) == 33


@pytest.mark.parametrize("profile", PROFILES)
def test_delete_and_retarget_between_runs(profile):
    # delete tc2's target: tc2 falls through to r0 = -1; retarget slot 0 to tc3's body is not needed:
    deleted = run_result(profile, "tc2", extra_events=(Delete("jt", key_u32(0)),))
    assert (deleted.r0, deleted.trace) == ((1 << 64) - 1, ("tc2",))
    # retarget slot 1 (tc2) to the leaf: tc3 -> leaf directly
    retargeted = run_result(profile, "tc3", extra_events=(Update("jt", key_u32(1), "leaf"),))
    assert (retargeted.r0, retargeted.trace, retargeted.tail_calls) == (4, ("tc3", "leaf"), 1)


def test_tail_call_keeps_registers_and_reuses_the_frame():
    # the caller's registers (R6, R1) and stack are what the target sees
    caller = assemble_program("caller", "mov %r6, 42\nstdw [%r10-8], 7\n" + tail_call(1) + "mov %r0, -1\nexit\n")
    target = assemble_program("target", "ldxdw %r0, [%r10-8]\nadd %r0, %r6\nexit\n")
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("jt", "prog_array", 4, 4, 2),), programs=(caller, target),
                        events=(Update("jt", key_u32(1), "target"), Run("caller", b"")))
    result = InterpEngine().execute(scenario)[-1].run
    assert (result.r0, result.trace) == (49, ("caller", "target"))


SUBPROG_TAIL_CALLS = """
call local sub
call local sub
mov %r0, 0
exit
sub:
{tail_call}
mov %r0, 0
exit
"""


@pytest.mark.parametrize("profile", ["linux-5.10", "linux-6.1", "linux-6.12"])
def test_tail_calls_from_subprograms_share_one_counter(profile):
    # The specification: one counter per run, shared through bpf-to-bpf calls.
    # The first call's loop uses up all 33; the second call's tail call is
    # refused (whatever the kernel's JIT did with its copy in rax).
    main = assemble_program("main", SUBPROG_TAIL_CALLS.format(tail_call=tail_call(0)))
    loop = assemble_program("loop", tail_call(0) + "mov %r0, 0\nexit\n")
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("jt", "prog_array", 4, 4, 1),), programs=(main, loop),
                        events=(Update("jt", key_u32(0), "loop"), Run("main", b"")))
    result = InterpEngine(profile).execute(scenario)[-1].run
    assert result.exit == "exit"
    assert result.tail_calls == 33 and result.trace == ("main",) + ("loop",) * 33


def test_copy_what_if_model_passes_the_count_by_value():
    # "copy" (the what-if of the 5.10-6.9 x86 JIT): each call starts from the
    # caller's count (0) and may take 33 tail calls of its own.
    main = assemble_program("main", SUBPROG_TAIL_CALLS.format(tail_call=tail_call(0)))
    loop = assemble_program("loop", tail_call(0) + "mov %r0, 0\nexit\n")
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("jt", "prog_array", 4, 4, 1),), programs=(main, loop),
                        events=(Update("jt", key_u32(0), "loop"), Run("main", b"")))
    what_if = get_profile("linux-6.1").with_options(subprog_counter="copy")
    result = InterpEngine(what_if).execute(scenario)[-1].run
    assert result.tail_calls == 66 and result.trace == ("main",) + ("loop",) * 66


def test_tail_calls_with_subprograms_refused_on_5_5():
    from bpfdiff.engine import EngineError

    main = assemble_program("main", SUBPROG_TAIL_CALLS.format(tail_call=tail_call(0)))
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("jt", "prog_array", 4, 4, 1),), programs=(main,),
                        events=(Run("main", b""),))
    with pytest.raises(EngineError, match="bpf-to-bpf"):
        InterpEngine("linux-5.5").execute(scenario)


def test_tail_call_through_a_non_prog_array_is_refused_at_load():
    # check_map_func_compatibility refuses it; the verifier model does so for both engines
    # alike (the interpreter used to load it and fault at the call)
    prog = assemble_program("p", "lddw %r2, map:arr\nmov %r3, 0\ncall 12\nmov %r0, 0\nexit\n")
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("arr", "array", 4, 8, 1),), programs=(prog,),
                        events=(Run("p", b""),))
    with pytest.raises(EngineError, match="insn 3: cannot pass map_type array into func bpf_tail_call"):
        InterpEngine().execute(scenario)


@pytest.mark.parametrize("profile", PROFILES)
def test_calls_through_an_empty_slot_count_towards_the_limit(profile):
    # core.c: tail_call_cnt++ comes before `if (!prog) goto out`.  Each entry
    # tries the empty slot 1 and then itself (slot 0): two counts per entry.
    # Entry n starts with count 2(n-1); entry 17 finds 32, its empty-slot call
    # makes it 33 and the self call is refused: 16 tail calls, 17 entries.
    prog = assemble_program("self", add_state(1) + tail_call(1) + tail_call(0) + "mov %r0, 0\nexit\n")
    scenario = Scenario(prog_type=PROG_RAW, maps=(MapDef("jt", "prog_array", 4, 4, 2),), programs=(prog,),
                        events=(Update("jt", key_u32(0), "self"), Run("self", bytes(4))))
    result = InterpEngine(profile).execute(scenario)[-1].run
    assert result.tail_calls == 16 and len(result.trace) == 17
    assert int.from_bytes(result.mem, "little") == 17


def test_tail_call_through_a_non_map_pointer_faults_on_memory():
    prog = assemble_program("p", "mov %r2, 16\nmov %r3, 0\ncall 12\nmov %r0, 0\nexit\n")
    result = InterpEngine().execute(Scenario(prog_type=PROG_RAW, programs=(prog,), events=(Run("p", b""),)))[-1].run
    assert (result.exit, result.fault_kind, result.fault_pc) == ("fault", "memory", 2)
