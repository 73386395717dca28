"""The verifier-like checker: each rule refuses a small hand-written program, valid twins pass.

Each invalid case is a construct the kernel's verifier refuses (message in the
comment, from kernel/bpf/verifier.c); its valid twin differs in the one place
that matters, so a test cannot pass by refusing everything.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from bpfdiff.fuzz.checker import check_scenario, tail_call_sites

from bpfdiff.scenario import Delete, Run, Update, key_u32
from bpfdiff.scenario_text import parse_scenario

MAPS = """-- maps
jmp prog_array key_size=4 value_size=4 max_entries=4
arr array key_size=4 value_size=8 max_entries=2
"""


def scenario(body: str, extra_progs: str = "", events: str = "run main mem=00 00 00 00 00 00 00 00"):
    # The generic rules, in the uBPF convention (R1 = mem): the XDP context rules are test_checker_xdp.py's.
    text = MAPS + "-- prog main\n" + body.strip() + "\n" + extra_progs + "-- events\n" + events + "\n"
    return parse_scenario(text + "-- prog_type\nraw\n", "test.scn", validate=False)


def errors(body: str, profile: str = "linux-6.1", **kw) -> list[str]:
    return [str(e) for e in check_scenario(scenario(body, **kw), profile)]


def assert_refused(body: str, fragment: str, profile: str = "linux-6.1", **kw) -> None:
    found = errors(body, profile, **kw)
    assert found, "expected the checker to refuse this program"
    assert fragment in found[0], found


def assert_valid(body: str, profile: str = "linux-6.1", **kw) -> None:
    assert errors(body, profile, **kw) == []


# -- registers -------------------------------------------------------------------
def test_uninitialised_register_read_is_refused():
    assert_refused("mov %r0, %r3\nexit", "R3 !read_ok")          # only R1 and R10 at entry
    assert_valid("mov %r0, %r1\nmov %r0, 0\nexit")


def test_r0_must_be_set_before_exit():
    assert_refused("exit", "R0 !read_ok")
    assert_valid("mov %r0, 0\nexit")


def test_helper_call_clobbers_r1_to_r5():
    assert_refused("mov %r2, 1\ncall 7\nmov %r0, %r2\nexit", "R2 !read_ok")
    assert_valid("mov %r7, 1\ncall 7\nmov %r0, %r7\nexit")      # R6-R9 survive


def test_r0_after_a_tail_call_that_falls_through_is_unreadable():
    body = "mov %r3, 0\nlddw %r2, map:jmp\ncall 12\n{}\nexit"
    assert_refused(body.format(""), "R0 !read_ok (R0 is not set after bpf_tail_call)")
    assert_valid(body.format("mov %r0, 1"))
    # R0 never written at all: the plain message, no tail-call hint
    assert errors("exit") == ["main:0: R0 !read_ok"]


def test_writing_r10_is_refused():
    assert_refused("mov %r10, 0\nmov %r0, 0\nexit", "frame pointer is read only")


def test_pointer_must_not_be_returned_or_stored():
    assert_refused("mov %r0, %r10\nexit", "returned in R0")
    assert_refused("mov %r2, %r10\nstxdw [%r10-8], %r2\nmov %r0, 0\nexit", "stored to memory")


def test_pointer_comparison_is_refused():
    assert_refused("jeq %r1, 0, +0\nmov %r0, 0\nexit", "pointer comparison")


# -- stack -------------------------------------------------------------------------
def test_stack_read_before_write_is_refused():
    assert_refused("ldxdw %r0, [%r10-8]\nexit", "invalid read from stack")
    assert_valid("stdw [%r10-8], 5\nldxdw %r0, [%r10-8]\nexit")


def test_partial_stack_write_does_not_make_a_wider_read_valid():
    assert_refused("stw [%r10-8], 5\nldxdw %r0, [%r10-8]\nexit", "invalid read from stack")


def test_stack_access_outside_the_frame_is_refused():
    assert_refused("stdw [%r10-520], 1\nmov %r0, 0\nexit", "invalid write to stack R10 off=-520 size=8")
    assert_refused("stdw [%r10+0], 1\nmov %r0, 0\nexit", "invalid write to stack R10 off=0 size=8")
    assert_valid("stdw [%r10-512], 1\nmov %r0, 0\nexit")


def test_misaligned_stack_access_is_refused():
    assert_refused("stdw [%r10-12], 1\nmov %r0, 0\nexit", "misaligned stack access")


# -- context and map values ----------------------------------------------------------
def test_context_access_must_stay_inside_the_smallest_mem():
    assert_refused("ldxdw %r0, [%r1+8]\nexit", "invalid context access")     # mem is 8 bytes
    assert_valid("ldxdw %r0, [%r1+0]\nexit")


LOOKUP = """stw [%r10-4], 0
lddw %r1, map:arr
mov %r2, %r10
add %r2, -4
call 1
{check}
ldxdw %r0, [%r0+0]
exit
"""


def test_map_value_needs_a_null_check():
    assert_refused(LOOKUP.format(check=""), "map_value_or_null")
    assert_valid(LOOKUP.format(check="jne %r0, 0, +2\nmov %r0, 0\nexit"))


def test_map_value_access_must_stay_inside_the_value():
    body = LOOKUP.replace("[%r0+0]", "[%r0+8]").format(check="jne %r0, 0, +2\nmov %r0, 0\nexit")
    assert_refused(body, "invalid access to map value")


def test_map_key_must_be_initialised_stack():
    assert_refused(LOOKUP.replace("stw [%r10-4], 0\n", "").format(check="jne %r0, 0, +2\nmov %r0, 0\nexit"),
                   "invalid indirect read from stack")


# -- ALU constraints -----------------------------------------------------------------------
def test_constant_division_by_zero_and_oversized_shifts_are_refused():
    assert_refused("mov %r0, 1\ndiv %r0, 0\nexit", "div by zero")
    assert_refused("mov %r0, 1\nlsh32 %r0, 32\nexit", "invalid shift")
    assert_valid("mov %r0, 1\nlsh %r0, 32\nexit")                    # 64-bit: 32 is fine
    assert_valid("mov %r0, 1\nmov %r2, 0\ndiv %r0, %r2\nexit")      # register divisor may be 0


# -- control flow -----------------------------------------------------------------------
def test_jump_out_of_range_is_refused():
    assert_refused("mov %r0, 0\nja +5\nexit", "jump out of range")


def test_unreachable_instruction_is_refused():
    assert_refused("mov %r0, 0\nexit\nmov %r0, 1\nexit", "unreachable insn")


def test_bounded_counter_loop_is_accepted_and_unbounded_loops_are_not():
    assert_valid("mov %r0, 0\nmov %r2, 0\nadd %r0, 3\nadd %r2, 1\njlt %r2, 10, -3\nexit")
    assert_refused("mov %r0, 0\nmov %r2, 0\nadd %r0, 3\njlt %r2, 10, -2\nexit", "never changes")
    assert_refused("mov %r0, 0\nmov %r2, 0\nadd %r2, 1\njne %r2, 0, -2\nexit", "more than")   # wraps at 2**64
    assert_refused("mov %r0, 0\nmov %r2, 0\nadd %r2, 1\njlt %r2, %r0, -2\nexit", "back-edge")  # register bound
    assert_refused("mov %r0, 0\nmov %r2, 0\nadd %r2, 1\nmov %r2, 0\njlt %r2, 5, -3\nexit", "exactly once")
    assert_refused("mov %r0, 0\nmov %r2, 0\nadd %r2, 1\njlt %r2, 5000, -2\nexit", "more than")


def test_recursion_and_too_many_frames_are_refused():
    assert_refused("mov %r0, 0\ncall local f\nexit\nf:\ncall local f\nexit", "back-edge from insn 3 to 3")
    chain = "".join(f"call local f{i}\nexit\nf{i}:\nmov %r0, 0\n" for i in range(8)) + "exit"
    assert_refused("mov %r0, 0\n" + chain, "frames is too deep")


def test_combined_stack_of_a_call_chain_is_limited():
    body = "stdw [%r10-512], 1\ncall local f\nmov %r0, 0\nexit\nf:\nstdw [%r10-32], 1\nmov %r0, 0\nexit"
    assert_refused(body, "combined stack size")
    assert_valid(body.replace("-512", "-256"))


# -- tail calls ----------------------------------------------------------------------------
SUB_TAIL_CALL = """mov %r0, 0
call local f
mov %r0, 0
exit
f:
mov %r3, 1
lddw %r2, map:jmp
call 12
mov %r0, 0
exit
"""


def test_tail_calls_with_subprograms_depend_on_the_profile():
    assert_valid(SUB_TAIL_CALL, "linux-6.1")
    assert_refused(SUB_TAIL_CALL, "not allowed in programs with bpf-to-bpf calls", "linux-5.5")


def test_tail_call_needs_context_and_prog_array():
    assert_refused("mov %r1, 0\nmov %r3, 0\nlddw %r2, map:jmp\ncall 12\nmov %r0, 0\nexit", "expected=ctx")
    assert_refused("mov %r3, 0\nlddw %r2, map:arr\ncall 12\nmov %r0, 0\nexit", "cannot pass map_type")


def test_subprogram_with_tail_call_under_256_bytes_of_caller_stack():
    body = SUB_TAIL_CALL.replace("call local f", "stdw [%r10-{}], 1\ncall local f", 1)
    assert_refused(body.format(256), "previous frames is 256 bytes")
    assert_valid(body.format(224))


def test_tail_call_sites_report_direct_and_indirect():
    # 6.1's scalar tracking keeps constants through and/lsh32/arsh (tnum ops on known
    # operands) but not through neg (check_reg_arg(DST_OP) marks it unknown): the third
    # site is direct with key 1, the fourth indirect although its key is 1 too
    s = scenario("mov %r6, %r1\nmov %r3, 2\nlddw %r2, map:jmp\ncall 12\n"
                 "mov %r1, %r6\nmov %r3, 9\nlddw %r2, map:jmp\ncall 12\n"
                 "mov %r1, %r6\nmov %r7, 1\nmov %r3, %r7\nand %r3, 1\nlddw %r2, map:jmp\ncall 12\n"
                 "mov %r1, %r6\nmov %r3, -1\nneg %r3\nlddw %r2, map:jmp\ncall 12\nmov %r0, 0\nexit")
    sites = tail_call_sites(s.program("main"), s, "linux-6.1")
    assert [(site.key, site.direct) for site in sites] == [(2, True), (9, False), (1, True), (None, False)]


# -- scenario level -----------------------------------------------------------------
def test_events_must_name_existing_programs_and_maps():
    base = scenario("mov %r0, 0\nexit")
    for event, fragment in ((Run("nosuch"), "unknown program"), (Delete("nosuch", key_u32(0)), "unknown map"),
                            (Update("jmp", key_u32(0), "nosuch"), "unknown program")):
        found = check_scenario(replace(base, events=(event, Run("main"))), "linux-6.1")
        assert found and fragment in str(found[0])


def test_run_before_load_is_refused():
    s = scenario("mov %r0, 0\nexit", events="run main\nload main")
    assert any("before it is loaded" in str(e) for e in check_scenario(s, "linux-6.1"))


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.5", "linux-5.10", "linux-6.12"])
def test_examples_are_valid(profile):
    from pathlib import Path

    from bpfdiff.profiles import get_profile
    from bpfdiff.scenario_text import read_scenario

    examples = sorted((Path(__file__).parent.parent / "corpus" / "examples").glob("*.scn"))
    assert examples
    for path in examples:
        errors = check_scenario(read_scenario(path), profile)
        if path.stem == "tailcall_hierarchy" and not get_profile(profile).tail_calls_in_subprogs:
            # tail calls from subprograms: linux-5.5's verifier refuses the mix
            assert errors and all("bpf-to-bpf" in e.message for e in errors), path
            continue
        assert errors == [], path
