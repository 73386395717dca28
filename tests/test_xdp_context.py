"""The XDP program type on both engines: R1 = struct xdp_md, the run's bytes the packet.

Independent facts used here: the uapi ``struct xdp_md`` offsets (data 0,
data_end 4, data_meta 8, ingress_ifindex 12, rx_queue_index 16), the test
run's loopback device (ifindex 1) and rx queue 0, and the 6.1 verifier's
rewrite of ``data``/``data_end`` into 8-byte loads at ``offsetof(struct
xdp_buff, data)`` = 0 and ``data_end`` = 8 (include/net/xdp.h), whose
encodings are written out by hand below.
"""

from __future__ import annotations

import pytest
from bpfdiff.interp.engine import InterpEngine
from bpfdiff.jit.bpf_jit_comp import JitOptions
from bpfdiff.jit.engine import JitEngine
from bpfdiff.jit.xlate import VerifierError, xlate

from bpfdiff import xdp
from bpfdiff.asm import assemble_program
from bpfdiff.engine import EngineError, make_engine
from bpfdiff.profiles import get_profile
from bpfdiff.scenario import PROG_RAW, PROG_XDP, MapDef, Run, Scenario, Update, key_u32
from bpfdiff.scenario_text import format_scenario, parse_scenario

PACKET = bytes(range(0x40, 0x40 + 20))

# data and data_end into r2/r3, the bounds check for 14 bytes, then packet work
READER = """
ldxw %r2, [%r1+0]
ldxw %r3, [%r1+4]
mov %r4, %r2
add %r4, 14
jgt %r4, %r3, out
ldxb %r0, [%r2+13]
ldxh %r5, [%r2+2]
lsh %r0, 16
or %r0, %r5
stb [%r2+0], 0x77
stxb [%r2+1], %r0
mov %r5, %r3
sub %r5, %r2
lsh %r5, 32
or %r0, %r5
exit
out:
mov %r0, 1
exit
"""


def xdp_scenario(*progs: tuple[str, str], events: tuple, maps: tuple[MapDef, ...] = ()) -> Scenario:
    return Scenario(maps=maps, programs=tuple(assemble_program(name, text) for name, text in progs),
                    events=events, prog_type=PROG_XDP)


def both(scenario: Scenario, profile: str = "linux-6.1") -> list:
    results = []
    for name in ("interp", "jit"):
        engine = make_engine(name, profile)
        try:
            results.append(engine.execute(scenario))
        finally:
            engine.close()
    return results


def run_both(scenario: Scenario, profile: str = "linux-6.1"):
    interp, jit = both(scenario, profile)
    for a, b in zip(interp, jit, strict=True):
        if a.run is not None:
            assert a.run.compared_fields() == b.run.compared_fields(), (a.run, b.run)
        else:
            assert a.retval == b.retval
    return interp


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.5"])
def test_packet_pointers_and_bounds_check(profile: str) -> None:
    [out] = run_both(xdp_scenario(("p", READER), events=(Run("p", PACKET),)), profile)
    run = out.run
    assert run.exit == "exit"
    # byte 13, the little-endian u16 at 2, and data_end - data = the packet's length
    assert run.r0 == (len(PACKET) << 32) | (PACKET[13] << 16) | int.from_bytes(PACKET[2:4], "little")
    # the run's mem is the packet afterwards: both stores landed
    assert run.mem == bytes([0x77, PACKET[2]]) + PACKET[2:]    # r0's low byte: the u16's first


def test_scalar_fields_are_the_loopback_device_and_queue_0() -> None:
    text = """
    ldxw %r0, [%r1+12]
    ldxw %r2, [%r1+16]
    lsh %r0, 8
    or %r0, %r2
    ldxw %r3, [%r1+8]
    ldxw %r4, [%r1+0]
    sub %r3, %r4
    lsh %r3, 16
    or %r0, %r3
    exit
    """
    [out] = run_both(xdp_scenario(("p", text), events=(Run("p", PACKET),)))
    # ingress_ifindex 1, rx_queue_index 0, data_meta - data 0
    assert out.run.r0 == (xdp.LOOPBACK_IFINDEX << 8) | xdp.RX_QUEUE_INDEX


def test_context_reaches_tail_call_targets_and_subprograms() -> None:
    caller = """
    mov %r6, %r1
    call local sub
    mov %r7, %r0
    mov %r1, %r6
    mov %r3, 0
    lddw %r2, map:jt
    call 12
    mov %r0, %r7
    exit
    sub:
    ldxw %r2, [%r1+0]
    ldxw %r3, [%r1+4]
    mov %r4, %r2
    add %r4, 16
    jgt %r4, %r3, short
    ldxdw %r0, [%r2+8]
    exit
    short:
    mov %r0, 0
    exit
    """
    target = READER
    maps = (MapDef("jt", "prog_array", 4, 4, 1),)
    events = (Run("caller", PACKET), Update("jt", key_u32(0), "target"), Run("caller", PACKET))
    interp = run_both(xdp_scenario(("caller", caller), ("target", target), events=events, maps=maps))
    assert interp[0].run.r0 == int.from_bytes(PACKET[8:16], "little")
    assert interp[0].run.trace == ("caller",)
    assert interp[2].run.trace == ("caller", "target")
    assert interp[2].run.mem[0] == 0x77


@pytest.mark.parametrize("access", ["ldxb %r0, [%r2+20]", "ldxb %r0, [%r2-1]", "stb [%r2+20], 1",
                                    "ldxw %r0, [%r3+0]"])
def test_packet_access_outside_the_packet_faults_on_both_engines(access: str) -> None:
    text = f"ldxw %r2, [%r1+0]\nldxw %r3, [%r1+4]\n{access}\nmov %r0, 0\nexit"
    [out] = run_both(xdp_scenario(("p", text), events=(Run("p", PACKET),)))
    assert out.run.exit == "fault" and out.run.fault_kind == "memory" and out.run.fault_pc == 2


@pytest.mark.parametrize("length", [xdp.ETH_HLEN - 1, xdp.XDP_MAX_PACKET + 1])
@pytest.mark.parametrize("engine_class", [InterpEngine, JitEngine])
def test_packet_sizes_the_test_run_refuses_are_bad_input(length: int, engine_class) -> None:
    engine = engine_class()
    try:
        with pytest.raises(EngineError, match="XDP packet"):
            engine.execute(xdp_scenario(("p", "mov %r0, 0\nexit"), events=(Run("p", bytes(length)),)))
    finally:
        engine.close()


@pytest.mark.parametrize("length", [xdp.ETH_HLEN, xdp.XDP_MAX_PACKET])
def test_packet_size_limits_are_inclusive(length: int) -> None:
    [out] = run_both(xdp_scenario(("p", READER), events=(Run("p", bytes(length)),)))
    assert out.run.r0 >> 32 == length


def test_max_packet_is_the_6_1_linear_area() -> None:
    # PAGE_SIZE - XDP_PACKET_HEADROOM - SKB_DATA_ALIGN(sizeof(struct skb_shared_info)) on x86-64 6.1
    assert xdp.XDP_MAX_PACKET == 4096 - 256 - 320 == 3520


def test_interp_context_is_read_only() -> None:
    # The verifier model refuses the store at load for both engines alike, as the kernel
    # does (convert_ctx_accesses); the interpreter's memory keeps it read-only as well.
    engine = InterpEngine()
    with pytest.raises(EngineError, match="insn 0: BPF_ST stores into R1 ctx is not allowed"):
        engine.execute(xdp_scenario(("p", "stw [%r1+0], 1\nmov %r0, 0\nexit"), events=(Run("p", PACKET),)))


def encoded(insns) -> list[str]:
    """Each slot as the 8 bytes of struct bpf_insn, hex."""
    out = []
    for insn in insns:
        raw = bytes([insn.opcode, (insn.src << 4) | insn.dst]) + insn.off.to_bytes(2, "little", signed=True) + \
            insn.imm.to_bytes(4, "little", signed=True)
        out.append(raw.hex(" "))
    return out


def test_xlated_ctx_rewrite_of_data_and_data_end_hand_checked() -> None:
    prog = assemble_program("p", "ldxw %r2, [%r1+0]\nldxw %r3, [%r1+4]\nmov %r0, 0\nexit")
    xl = xlate(prog, {}, get_profile("linux-6.1"), JitOptions(), PROG_XDP)
    assert encoded(xl.insns) == [
        "79 12 00 00 00 00 00 00",     # r2 = *(u64 *)(r1 + offsetof(struct xdp_buff, data) = 0)
        "79 13 08 00 00 00 00 00",     # r3 = *(u64 *)(r1 + offsetof(struct xdp_buff, data_end) = 8)
        "b7 00 00 00 00 00 00 00",
        "95 00 00 00 00 00 00 00",
    ]
    # loaded as raw, nothing is rewritten
    raw = xlate(prog, {}, get_profile("linux-6.1"), JitOptions(), PROG_RAW)
    assert encoded(raw.insns)[:2] == ["61 12 00 00 00 00 00 00", "61 13 04 00 00 00 00 00"]


def test_xlated_ctx_rewrite_chases_pointers_and_keeps_jumps() -> None:
    text = "ldxw %r0, [%r1+12]\njeq %r0, 0, skip\nldxw %r0, [%r1+16]\nskip:\nexit"
    xl = xlate(assemble_program("p", text), {}, get_profile("linux-6.1"), JitOptions(), PROG_XDP)
    assert encoded(xl.insns) == [
        "79 10 20 00 00 00 00 00",     # r0 = xdp->rxq (0x20)
        "79 00 00 00 00 00 00 00",     # r0 = rxq->dev (0)
        "61 00 d8 00 00 00 00 00",     # r0 = dev->ifindex (0xd8)
        "15 00 02 00 00 00 00 00",     # the jump now skips the two-slot rewrite
        "79 10 20 00 00 00 00 00",     # r0 = xdp->rxq
        "61 00 08 00 00 00 00 00",     # r0 = rxq->queue_index (8)
        "95 00 00 00 00 00 00 00",
    ]
    assert xl.orig_pc == [0, 0, 0, 1, 2, 2, 3]


@pytest.mark.parametrize("text, message", [
    ("ldxdw %r0, [%r1+0]\nexit", "invalid bpf_context access off=0 size=8"),
    ("ldxw %r0, [%r1+2]\nexit", "invalid bpf_context access off=2 size=4"),
    ("ldxw %r0, [%r1+20]\nexit", "invalid bpf_context access off=20 size=4"),     # egress_ifindex
    ("ldxw %r0, [%r1+24]\nexit", "invalid bpf_context access off=24 size=4"),
    ("stw [%r1+0], 0\nmov %r0, 0\nexit", "BPF_ST stores into R1 ctx is not allowed"),
    ("mov %r2, 1\nstxw [%r1+16], %r2\nmov %r0, 0\nexit", "invalid bpf_context access off=16 size=4"),
    ("mov %r6, %r1\njeq %r2, 0, x\nmov %r6, %r10\nx:\nldxw %r0, [%r6-8]\nexit",
     "same insn cannot be used with different pointers"),
])
def test_xlate_refuses_what_xdp_is_valid_access_refuses(text: str, message: str) -> None:
    with pytest.raises(VerifierError, match=message):
        xlate(assemble_program("p", text), {}, get_profile("linux-6.1"), JitOptions(), PROG_XDP)


def test_prog_type_text_round_trip() -> None:
    base = xdp_scenario(("p", "mov %r0, 0\nexit"), events=(Run("p", PACKET),))
    for prog_type in (PROG_XDP, PROG_RAW):
        scenario = Scenario(base.maps, base.programs, base.events, prog_type=prog_type)
        assert parse_scenario(format_scenario(scenario)) == scenario
    for prog_type in (PROG_XDP, PROG_RAW):
        assert parse_scenario(f"-- prog p\nexit\n-- prog_type\n{prog_type}   # what R1 is\n").prog_type == prog_type


@pytest.mark.parametrize("text, where", [
    ("-- prog p\nexit\n-- prog_type\nskb\n", "<scenario>:4:1: unknown program type 'skb'"),
    ("-- prog_type\n", "<scenario>:1:13: empty '-- prog_type' section"),
    ("-- prog_type\nxdp raw\n", "<scenario>:2:5: unexpected 'raw'"),
])
def test_prog_type_section_errors_name_the_place(text: str, where: str) -> None:
    with pytest.raises(ValueError, match=where):
        parse_scenario(text)
