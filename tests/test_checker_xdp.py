"""The checker's XDP rules: the context is a read-only struct xdp_md, the packet needs a proven range.

The expectations are the 6.1 verifier's (net/core/filter.c xdp_is_valid_access,
kernel/bpf/verifier.c check_packet_access / find_good_pkt_pointers), with the
messages it prints; the off-by-two history of the right-open comparisons
(N - 1 before 2fa7d94afc1a, N + 1 after) is the profiles' difference.
"""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.checker import check_scenario

from bpfdiff import xdp
from bpfdiff.asm import assemble_program
from bpfdiff.scenario import PROG_RAW, PROG_XDP, MapDef, Run, Scenario

CHECK14 = """
mov %r6, %r1
ldxw %r7, [%r6+0]
ldxw %r8, [%r6+4]
mov %r9, %r7
add %r9, 14
jgt %r9, %r8, out
{body}
mov %r0, 0
exit
out:
mov %r0, 1
exit
"""


def scenario(text: str, mem: bytes = bytes(14), prog_type: str = PROG_XDP,
             maps: tuple[MapDef, ...] = ()) -> Scenario:
    return Scenario(maps=maps, programs=(assemble_program("p", text),), events=(Run("p", mem),),
                    prog_type=prog_type)


def errors(text: str, profile: str = "linux-6.1", **kwargs) -> list[str]:
    return [e.message for e in check_scenario(scenario(text, **kwargs), profile)]


@pytest.mark.parametrize("body", [
    "ldxb %r0, [%r7+13]", "ldxdw %r0, [%r7+0]\nldxw %r1, [%r7+8]\nldxh %r2, [%r7+12]",
    "stb [%r7+13], 1", "mov %r1, 5\nstxdw [%r7+6], %r1",
    "mov %r1, %r7\nadd %r1, 10\nldxw %r0, [%r1+0]",      # a moved pointer keeps the range
])
def test_accesses_inside_the_proven_range_are_accepted(body: str) -> None:
    assert errors(CHECK14.format(body=body)) == []


@pytest.mark.parametrize("body, message", [
    ("ldxb %r0, [%r7+14]", "invalid access to packet, off=14 size=1, R7(id=0,off=0,r=14)"),
    ("ldxw %r0, [%r7+12]", "invalid access to packet, off=12 size=4"),
    ("ldxb %r0, [%r7-1]", "invalid access to packet, off=-1 size=1"),
    ("ldxb %r0, [%r9+0]", "invalid access to packet, off=14 size=1, R9(id=0,off=14,r=14)"),
    ("mov %r1, 1\nlock add [%r7+0], %r1", "BPF_ATOMIC stores into R7 pkt is not allowed"),
    ("stxdw [%r7+0], %r7", "R7 is a pointer (pkt)"),                  # a packet pointer into the packet
    ("stxdw [%r10-8], %r7", "R7 is a pointer (pkt)"),                 # ... or onto the stack
    ("add %r8, 1", "R8 pointer arithmetic on pkt_end prohibited"),
    ("mul %r7, 2", "R7 pointer arithmetic with this operation is not allowed"),
    ("jeq %r7, 0, out", "R7 pointer comparison prohibited"),
])
def test_packet_rules(body: str, message: str) -> None:
    assert any(message in e for e in errors(CHECK14.format(body=body))), errors(CHECK14.format(body=body))


def test_access_without_a_check_or_on_the_failing_branch_is_refused() -> None:
    unchecked = "ldxw %r7, [%r1+0]\nldxb %r0, [%r7+0]\nexit"
    assert any("invalid access to packet, off=0 size=1, R7(id=0,off=0,r=0)" in e for e in errors(unchecked))
    failing = CHECK14.format(body="").replace("out:\nmov %r0, 1", "out:\nldxb %r0, [%r7+0]")
    assert any("invalid access to packet" in e for e in errors(failing))
    assert errors("ldxw %r0, [%r1+0]\nexit") == ["R0 is a pointer (pkt) returned in R0: not allowed here"]


@pytest.mark.parametrize("compare, holds_on_fall_through", [
    ("jgt %r9, %r8, out", True), ("jlt %r8, %r9, out", True),
    ("jle %r9, %r8, ok", False), ("jge %r8, %r9, ok", False),
])
def test_every_closed_form_of_the_check_proves_n(compare: str, holds_on_fall_through: bool) -> None:
    head = "ldxw %r7, [%r1+0]\nldxw %r8, [%r1+4]\nmov %r9, %r7\nadd %r9, 14\n"
    if holds_on_fall_through:
        text = head + compare + "\nldxb %r0, [%r7+13]\nexit\nout:\nmov %r0, 1\nexit"
    else:
        text = head + compare + "\nmov %r0, 1\nexit\nok:\nldxb %r0, [%r7+13]\nexit"
    assert errors(text) == []
    assert any("invalid access to packet" in e for e in errors(text.replace("[%r7+13]", "[%r7+14]")))


@pytest.mark.parametrize("profile, proven", [("linux-6.1", 14), ("linux-5.5", 12)])
def test_right_open_check_range_follows_the_profile(profile: str, proven: int) -> None:
    """``if data + 13 >= data_end goto out``: the fall-through proves 13 + 1 on 6.1, 13 - 1 before v5.16."""
    text = ("ldxw %r7, [%r1+0]\nldxw %r8, [%r1+4]\nmov %r9, %r7\nadd %r9, 13\njge %r9, %r8, out\n"
            "ldxb %r0, [%r7+{at}]\nexit\nout:\nmov %r0, 1\nexit")
    assert errors(text.format(at=proven - 1), profile) == []
    assert any(f"r={proven}" in e for e in errors(text.format(at=proven), profile))


@pytest.mark.parametrize("text, message", [
    ("stw [%r1+0], 1\nmov %r0, 0\nexit", "BPF_ST stores into R1 ctx is not allowed"),
    ("mov %r2, 1\nstxw [%r1+16], %r2\nmov %r0, 0\nexit", "invalid bpf_context access off=16 size=4"),
    ("ldxdw %r0, [%r1+0]\nexit", "invalid bpf_context access off=0 size=8"),
    ("ldxh %r0, [%r1+12]\nexit", "invalid bpf_context access off=12 size=2"),
    ("ldxw %r0, [%r1+2]\nexit", "invalid bpf_context access off=2 size=4"),
    ("ldxw %r0, [%r1+20]\nexit", "invalid bpf_context access off=20 size=4"),       # egress_ifindex: devmap only
    ("ldxw %r0, [%r1+24]\nexit", "invalid bpf_context access off=24 size=4"),
    ("mov %r0, 1\nlock add [%r1+0], %r0\nexit", "BPF_ATOMIC stores into R1 ctx is not allowed"),
    ("add %r1, 4\nldxw %r0, [%r1+0]\nexit", "R1 pointer arithmetic on ctx is not allowed"),
    ("mov %r0, %r2\nexit", "R2 !read_ok"),
    ("mov %r0, %r5\nexit", "R5 !read_ok"),
])
def test_context_rules(text: str, message: str) -> None:
    assert any(message in e for e in errors(text)), errors(text)


def test_scalar_context_fields_are_readable() -> None:
    assert errors("ldxw %r0, [%r1+12]\nldxw %r2, [%r1+16]\nadd %r0, %r2\nexit") == []


@pytest.mark.parametrize("length, ok", [(xdp.ETH_HLEN - 1, False), (xdp.ETH_HLEN, True),
                                        (xdp.XDP_MAX_PACKET, True), (xdp.XDP_MAX_PACKET + 1, False)])
def test_packet_length_limits(length: int, ok: bool) -> None:
    found = errors("mov %r0, 0\nexit", mem=bytes(length))
    assert (found == []) == ok, found


def test_raw_scenarios_keep_r1_as_memory() -> None:
    text = "ldxdw %r0, [%r1+8]\nmov %r0, %r2\nexit"
    assert errors(text, mem=bytes(16), prog_type=PROG_RAW) == ["R2 !read_ok"]
    assert errors("ldxdw %r0, [%r1+8]\nexit", mem=bytes(16), prog_type=PROG_RAW) == []
    assert errors("ldxdw %r0, [%r1+8]\nexit", mem=bytes(16), prog_type=PROG_XDP) == \
        ["invalid bpf_context access off=8 size=8"]


def test_packet_pointers_do_not_survive_a_tail_call() -> None:
    jt = (MapDef("jt", "prog_array", 4, 4, 1),)
    body = "mov %r1, %r6\nmov %r3, 0\nlddw %r2, map:jt\ncall 12\nldxb %r0, [%r7+0]"
    assert any("R7 !read_ok" in e for e in errors(CHECK14.format(body=body), maps=jt))
    # checked again after the call: fine
    again = body.replace("ldxb %r0, [%r7+0]", "ldxw %r7, [%r6+0]\nldxw %r8, [%r6+4]\nmov %r9, %r7\n"
                                                   "add %r9, 1\njgt %r9, %r8, out\nldxb %r0, [%r7+0]")
    assert errors(CHECK14.format(body=again), maps=jt) == []
