"""Faults, timeouts, bpf-to-bpf call frames and helpers through the interpreter engine."""

import errno

import pytest
from bpfdiff.interp.engine import InterpEngine

from bpfdiff.asm import assemble_program
from bpfdiff.engine import DEFAULT_BUDGET, EngineError
from bpfdiff.helpers import CLOBBER_VALUES
from bpfdiff.scenario import PROG_RAW, Delete, Load, MapDef, Run, Scenario, Update, key_u32

U64 = (1 << 64) - 1


def run(text: str, mem: bytes = b"", maps=(), events_before=(), **engine_options):
    prog = assemble_program("p", text)
    scenario = Scenario(prog_type=PROG_RAW, maps=tuple(maps), programs=(prog,),
                        events=tuple(events_before) + (Run("p", mem),))
    return InterpEngine(**engine_options).execute(scenario)[-1].run


def test_out_of_bounds_mem_read_faults_at_its_pc():
    result = run("mov %r0, 0\nldxw %r0, [%r1+2]\nexit\n", mem=bytes(5))
    assert (result.exit, result.fault_kind, result.fault_pc, result.fault_prog) == ("fault", "memory", 1, "p")
    assert "0x100000002" in result.fault_reason
    ok = run("ldxw %r0, [%r1+1]\nexit\n", mem=bytes([0, 1, 2, 3, 4]))
    assert (ok.exit, ok.r0) == ("exit", 0x04030201)


def test_out_of_bounds_stack_faults_both_ends():
    below = run("stdw [%r10-520], 1\nmov %r0, 0\nexit\n")
    above = run("ldxb %r0, [%r10]\nexit\n")
    inside = run("stdw [%r10-512], 7\nldxdw %r0, [%r10-512]\nexit\n")
    assert (below.exit, below.fault_kind, below.fault_pc) == ("fault", "memory", 0)
    assert (above.exit, above.fault_kind) == ("fault", "memory")
    assert (inside.exit, inside.r0) == ("exit", 7)


def test_unmapped_pointer_and_null_fault():
    assert run("mov %r1, 0\nldxdw %r0, [%r1]\nexit\n").fault_kind == "memory"
    assert run("lddw %r1, 0x123456789\nstb [%r1], 1\nmov %r0, 0\nexit\n").fault_kind == "memory"


CALL_CHAIN = "call local f\nexit\nf:\n" + "".join(f"call local f{i}\nexit\nf{i}:\n" for i in range(1, 8)) + \
    "mov %r0, 5\nexit\n"


def test_call_depth_limit():
    # main + f + f1..f7 = 9 frames: one too many
    result = run(CALL_CHAIN)
    assert (result.exit, result.fault_kind) == ("fault", "call-depth")
    assert result.fault_pc == 2 + 2 * 6     # the call in f6
    # 8 frames are fine
    shorter = run("call local f\nexit\nf:\n" + "".join(f"call local f{i}\nexit\nf{i}:\n" for i in range(1, 7)) +
                  "mov %r0, 5\nexit\n")
    assert (shorter.exit, shorter.r0) == ("exit", 5)


def test_call_frames_get_their_own_stack_and_can_use_the_callers():
    text = """
    stdw [%r10-8], 11
    mov %r1, %r10
    add %r1, -8
    mov %r6, 100
    call local f
    ldxdw %r2, [%r10-8]
    add %r0, %r2
    add %r0, %r6
    exit
    f:
    ldxdw %r0, [%r1]
    stdw [%r1], 1000
    stdw [%r10-8], 5
    ldxdw %r3, [%r10-8]
    add %r0, %r3
    mov %r6, 0
    exit
    """
    result = run(text)
    # callee: 11 + 5 from its own frame; the caller's slot now 1000; R6 restored to 100
    assert (result.exit, result.r0) == ("exit", 16 + 1000 + 100)


def test_timeout_and_custom_budget():
    loop = "mov %r0, 0\nl:\nadd %r0, 1\nja l\n"
    assert run(loop, budget=1001).exit == "timeout"
    result = run(loop, budget=1001)
    assert result.r0 == 500                 # 1 mov + 500 * (add, ja)
    exact = run("mov %r0, 1\nexit\n", budget=2)
    assert exact.exit == "exit"
    assert run("mov %r0, 1\nexit\n", budget=1).exit == "timeout"
    assert DEFAULT_BUDGET == 1_000_000


def test_helpers_update_lookup_and_clobber():
    text = """
    stw [%r10-4], 1
    lddw %r6, 0x1122334455667788
    stxdw [%r10-16], %r6
    lddw %r1, map:arr
    mov %r2, %r10
    add %r2, -4
    mov %r3, %r10
    add %r3, -16
    mov %r4, 0
    call 2
    mov %r7, %r0
    mov %r8, %r1
    lddw %r1, map:arr
    mov %r2, %r10
    add %r2, -4
    call 1
    jeq %r0, 0, fail
    ldxdw %r0, [%r0]
    stxdw [%r10-24], %r8
    exit
    fail:
    mov %r0, -1
    exit
    """
    result = run(text, maps=[MapDef("arr", "array", 4, 8, 2)])
    assert (result.exit, result.r0) == ("exit", 0x1122334455667788)
    assert dict(result.maps)["arr"] == (("00000000", "00" * 8), ("01000000", "8877665544332211"))


def test_helper_result_and_clobbered_registers():
    text = "lddw %r1, map:arr\nmov %r2, %r10\nadd %r2, -4\nstw [%r10-4], 9\nmov %r3, %r10\ncall 3\n" \
           "mov %r6, %r0\nmov %r0, %r1\nexit\n"
    result = run(text, maps=[MapDef("arr", "array", 4, 8, 2)])
    assert result.r0 == CLOBBER_VALUES[1]
    text = "lddw %r1, map:arr\nmov %r2, %r10\nadd %r2, -4\nstw [%r10-4], 9\ncall 3\nexit\n"
    result = run(text, maps=[MapDef("arr", "array", 4, 8, 2)])
    assert result.r0 == -errno.EINVAL & U64     # delete on an array


def test_helper_faults():
    unknown = run("call 6\nexit\n")
    assert (unknown.exit, unknown.fault_kind, unknown.fault_pc) == ("fault", "unsupported", 0)
    bad_key = run("lddw %r1, map:arr\nmov %r2, 0\ncall 1\nmov %r0, 0\nexit\n", maps=[MapDef("arr", "array", 4, 8, 1)])
    assert (bad_key.fault_kind, bad_key.fault_pc) == ("memory", 3)


def test_prandom_is_seeded_per_engine_seed_and_event():
    text = "call 7\nmov %r6, %r0\ncall 7\nlsh %r0, 32\nor %r0, %r6\nexit\n"
    a, b, c = run(text, seed=1), run(text, seed=1), run(text, seed=2)
    assert a.r0 == b.r0 != c.r0
    assert run("call 8\nexit\n").r0 == 0


def test_invalid_programs_and_events_are_engine_errors():
    with pytest.raises(EngineError, match="unknown map 'nope'"):
        run("lddw %r1, map:nope\nmov %r0, 0\nexit\n")
    prog = assemble_program("p", "mov %r0, 0\nexit\n")
    with pytest.raises(EngineError, match="not loaded"):
        InterpEngine().execute(Scenario(prog_type=PROG_RAW, programs=(prog,), events=(Run("p", b""), Load("p"))))


def test_map_events_and_load_event_order():
    leaf = assemble_program("leaf", "mov %r0, 7\nexit\n")
    main = assemble_program("main", "lddw %r2, map:jt\nmov %r3, 0\ncall 12\nmov %r0, 1\nexit\n")
    jt = MapDef("jt", "prog_array", 4, 4, 1)
    events = (Update("jt", key_u32(0), "leaf"), Run("main", b""), Load("leaf"), Update("jt", key_u32(0), "leaf"),
              Run("main", b""), Delete("jt", key_u32(0)), Delete("jt", key_u32(0)), Run("main", b""))
    outcomes = InterpEngine().execute(Scenario(prog_type=PROG_RAW, maps=(jt,), programs=(leaf, main), events=events))
    assert outcomes[0].retval == -errno.EBADF             # leaf not loaded yet
    assert outcomes[1].run.r0 == 1 and outcomes[1].run.trace == ("main",)
    assert outcomes[2].retval == 0 and outcomes[3].retval == 0
    assert outcomes[4].run.r0 == 7 and outcomes[4].run.trace == ("main", "leaf")
    assert dict(outcomes[4].run.maps)["jt"] == (("00000000", "leaf"),)
    assert (outcomes[5].retval, outcomes[6].retval) == (0, -errno.ENOENT)
    assert outcomes[7].run.r0 == 1


def test_falling_off_the_end_is_refused_at_load():
    # check_subprogs: "last insn is not an exit or jmp" -- the verifier model refuses it for
    # both engines alike (the interpreter used to load it and fault at run time)
    with pytest.raises(EngineError, match="insn 1: last insn of a function is not an exit or jmp"):
        run("mov %r0, 0\nadd %r0, 1\n")


def test_writing_the_frame_pointer_is_refused_at_load():
    for text in ("mov %r10, 0\nmov %r0, 0\nexit\n", "ldxdw %r10, [%r1]\nmov %r0, 0\nexit\n",
                 "lddw %r10, 5\nmov %r0, 0\nexit\n", "lock fetch add [%r1], %r10\nmov %r0, 0\nexit\n"):
        with pytest.raises(EngineError, match="frame pointer is read only"):
            run(text, mem=bytes(8))
    assert run("mov %r0, %r10\nsub %r0, %r10\nexit\n").r0 == 0     # reading it is fine
