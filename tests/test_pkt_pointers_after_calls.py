"""Packet pointers after a call of a subprogram that reaches a tail call are forgotten.

Measured on the real 6.12.117 (``bpfdiff kernel compare-jit --profile
linux-6.12``, generated seeds 4350, 4359, 4473, 4481): a packet pointer kept in
a callee-saved register across ``call local`` of a subprogram that tail-calls
is refused afterwards ("R7 invalid mem access 'scalar'"): the tail call
clears the packet pointers of every frame of the verifier's state
(``clear_all_pkt_pointers``).  6.1.192 and 5.10.223 accept the same program
(measured).  The checker forgets them where the profile says its kernel does
(``verifier_tail_call_forgets_pkt``), so the generator does not emit such
programs; a call of a subprogram without tail calls keeps them.
"""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.checker import check_scenario

from bpfdiff.asm import assemble_program
from bpfdiff.scenario import PROG_XDP, MapDef, Run, Scenario

PROGRAM = """
mov %r6, %r1
ldxw %r7, [%r6+0]
ldxw %r8, [%r6+4]
mov %r9, %r7
add %r9, 14
jgt %r9, %r8, out
mov %r1, %r6
call local sub
ldxb %r0, [%r7+0]
exit
out:
mov %r0, 1
exit
sub:
{sub}
mov %r0, 0
exit
"""
TAIL_CALL = "mov %r3, 0\nlddw %r2, map:jmp\ncall 12"
MAPS = (MapDef("jmp", "prog_array", 4, 4, 1),)


def errors(sub: str, profile: str) -> list[str]:
    scenario = Scenario(maps=MAPS, programs=(assemble_program("p", PROGRAM.format(sub=sub)),),
                        events=(Run("p", bytes(14)),), prog_type=PROG_XDP)
    return [e.message for e in check_scenario(scenario, profile)]


def test_a_tail_calling_callee_forgets_the_callers_packet_pointers() -> None:
    assert errors(TAIL_CALL, "linux-6.12") == ["R7 !read_ok"]


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.10"])
def test_older_kernels_keep_them(profile: str) -> None:
    assert errors(TAIL_CALL, profile) == []


def test_through_a_second_level_of_calls() -> None:
    nested = "call local deeper\nmov %r0, 0\nexit\ndeeper:\n" + TAIL_CALL
    assert errors(nested, "linux-6.12") == ["R7 !read_ok"]


@pytest.mark.parametrize("profile", ["linux-6.12", "linux-6.1"])
def test_a_callee_without_tail_calls_keeps_them(profile: str) -> None:
    assert errors("mov %r2, 1", profile) == []
