"""bpfdiff.asm and bpfdiff.disasm: hand-checked encodings (RFC 9669), errors, round trips, xlated text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfdiff import isa
from bpfdiff.asm import AsmError, assemble, assemble_program
from bpfdiff.datafile import read_datafile
from bpfdiff.disasm import disassemble, format_xlated
from bpfdiff.isa import Insn

CONFORMANCE = Path("/work/shared/conformance")
DATA_FILES = sorted(CONFORMANCE.glob("*.data"))
SEED_COMMIT = Path("/work/shared/reference/seed-commit-direct-tail-call.txt")
needs_suite = pytest.mark.skipif(not DATA_FILES, reason="conformance suite not present")


def hex_of(text: str) -> str:
    return isa.encode(assemble(text)).hex()


# -- encodings, checked by hand against RFC 9669's opcode tables -------------------
# (text, little-endian bytes of struct bpf_insn)
HAND_CHECKED = [
    ("mov %r0, 1", "b700000001000000"),                 # ALU64|MOV|K
    ("mov32 %r1, -1", "b4010000ffffffff"),              # ALU|MOV|K
    ("mov %r6, %r0", "bf06000000000000"),               # ALU64|MOV|X, src in the high nibble
    ("add32 %r1, %r2", "0c21000000000000"),
    ("sub %r1, 0x10", "1701000010000000"),
    ("arsh32 %r3, 4", "c403000004000000"),
    ("sdiv %r1, %r2", "3f21010000000000"),              # off=1 selects signed division
    ("smod32 %r1, 3", "9401010003000000"),
    ("neg %r2", "8702000000000000"),
    ("neg32 %r2", "8402000000000000"),
    ("movsx832 %r2, %r1", "bc12080000000000"),          # MOVSX: off = source width
    ("movsx3264 %r0, %r9", "bf90200000000000"),
    ("le16 %r1", "d401000010000000"),                   # ALU|END|TO_LE, imm = width
    ("be32 %r1", "dc01000020000000"),                   # ALU|END|TO_BE
    ("bswap64 %r1", "d701000040000000"),                # ALU64|END: unconditional swap
    ("swap16 %r1", "d701000010000000"),                 # the suite's older spelling of bswap
    ("ldxw %r0, [%r1+4]", "6110040000000000"),
    ("ldxdw %r0, [%r10-8]", "79a0f8ff00000000"),
    ("ldxsb %r1, [%r2-2]", "9121feff00000000"),         # LDX|MEMSX|B
    ("ldxsw %r1, [%r2]", "8121000000000000"),
    ("stb [%r10-1], 0x80", "720affff80000000"),
    ("stxdw [%r10-8], %r0", "7b0af8ff00000000"),
    ("lock add [%r10-8], %r1", "db1af8ff00000000"),      # STX|ATOMIC|DW, imm = BPF_ADD
    ("lock add32 [%r10-8], %r1", "c31af8ff00000000"),
    ("lock fetch or [%r1], %r2", "db21000041000000"),    # BPF_OR | BPF_FETCH
    ("lock xchg32 [%r1+2], %r2", "c3210200e1000000"),
    ("lock cmpxchg [%r1], %r2", "db210000f1000000"),
    ("jeq %r1, 5, +3", "1501030005000000"),
    ("jne32 %r1, %r2, -1", "5e21ffff00000000"),
    ("jsle %r1, 0x80000000, +0", "d501000000000080"),   # unsigned hex spelling of -2**31
    ("ja +2", "0500020000000000"),
    ("ja32 +2", "0600000002000000"),                    # gotol: the offset is in imm
    ("call 12", "850000000c000000"),
    ("call local +3", "8510000003000000"),              # src = BPF_PSEUDO_CALL
    ("exit", "9500000000000000"),
    ("lddw %r0, 0x1122334455667788", "1800000088776655" "0000000044332211"),
    ("lddw %r2, -1", "18020000ffffffff" "00000000ffffffff"),
]


@pytest.mark.parametrize(("text", "expected"), HAND_CHECKED, ids=[t for t, _ in HAND_CHECKED])
def test_hand_checked_encoding(text: str, expected: str) -> None:
    assert hex_of(text) == expected


def test_labels_give_slot_offsets_and_lddw_counts_two() -> None:
    insns = assemble("""
        ja32 target          # imm offset
        lddw %r1, 1          // two slots
        jeq %r1, 1, target
        call local target
    target:
        exit
    """)
    assert [i.opcode for i in insns] == [0x06, 0x18, 0x00, 0x15, 0x85, 0x95]
    assert insns[0].imm == 4 and insns[0].off == 0
    assert insns[3].off == 1
    assert insns[4].imm == 0 and insns[4].src == isa.BPF_PSEUDO_CALL
    assert isa.jump_target(0, insns[0]) == 5


def test_backward_label_and_label_on_same_line() -> None:
    insns = assemble("top: mov %r0, 0\nja top\n")
    assert insns[1].off == -2


def test_exit_as_a_target_means_the_first_exit() -> None:
    # the suite writes `jne %r0, %r1, exit` without defining an `exit:` label
    insns = assemble("jne %r0, 1, exit\nmov %r0, 2\nexit\nmov %r0, 3\nexit\n")
    assert insns[0].off == 1


def test_pseudo_map_loads() -> None:
    first, second = assemble("lddw %r2, map:jmp_table")
    fields = (first.opcode, first.dst, first.src, first.imm, first.map)
    assert fields == (0x18, 2, isa.BPF_PSEUDO_MAP_FD, 0, "jmp_table")
    assert second == Insn(0)
    first, second = assemble("lddw %r3, map_value:data+16")
    assert (first.src, first.map, second.imm) == (isa.BPF_PSEUDO_MAP_VALUE, "data", 16)
    # names may contain '-' and '.', as in scenario files
    first, second = assemble("lddw %r3, map_value:my-map.v1+0x10")
    assert (first.map, second.imm) == ("my-map.v1", 16)
    assert assemble("lddw %r3, map:my-map")[0].map == "my-map"
    program = assemble_program("p", "lddw %r2, map:jmp_table\nmov %r3, 0\ncall 12\nexit")
    assert program.name == "p" and program.map_names == ("jmp_table",)
    isa.check_program(program.insns)


def test_callx_and_raw_slot() -> None:
    assert hex_of("call %r2") == "8d02000000000000"
    assert hex_of(".insn 0xff, 1, 2, -1, 7") == "ff21ffff07000000"


ERRORS = [
    ("foo %r1, 1", 1, 1, "unknown mnemonic 'foo'"),
    ("mov %r0, 0\nmov %r11, 1", 2, 5, "bad register '%r11'"),
    ("add %r1", 1, 1, "'add' takes 2 operands, got 1"),
    ("mov %r1,", 1, 9, "missing operand"),
    ("jeq %r1, 1, nowhere", 1, 13, "unknown label 'nowhere'"),
    ("x:\nx:\nexit", 2, 1, "duplicate label 'x'"),
    ("mov32 %r1, 0x100000000", 1, 12, "out of range"),
    ("ldxw %r1, [%r2+40000]", 1, 16, "offset +40000 out of range"),
    ("stw [%r1], zz", 1, 12, "bad immediate 'zz'"),
    ("lock fetch xchg [%r1], %r2", 1, 6, "unknown atomic operation"),
    ("lddw %r1, map:v+4", 1, 11, "a map:NAME load takes no offset"),
    ("lddw %r1, map_value:v+x", 1, 11 + len("map_value:v+"), "bad map value offset 'x'"),
    ("lddw %r1, map:", 1, 11, "bad map reference 'map:'"),
    ("ja +40000", 1, 4, "jump offset +40000 out of range"),
    ("call local", 1, 6, "missing target after 'call local'"),
    ("call", 1, 1, "'call' takes 1 operand"),
    ("ldxdw %r1, %r2", 1, 12, "bad memory operand"),
]


@pytest.mark.parametrize(("text", "line", "col", "message"), ERRORS, ids=[e[3] for e in ERRORS])
def test_errors_are_one_line_with_position(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(AsmError) as info:
        assemble(text, source="prog.s")
    rendered = str(info.value)
    assert "\n" not in rendered
    assert rendered.startswith(f"prog.s:{line}:{col}: "), rendered
    assert message in rendered


def test_first_line_shifts_reported_lines() -> None:
    with pytest.raises(AsmError, match=r"^f\.data:12:1: unknown mnemonic"):
        assemble("exit\nbogus", source="f.data", first_line=11)


# -- disassembler round trips -----------------------------------------------------
@needs_suite
@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.stem)
def test_disassembly_reassembles_to_identical_slots(path: Path) -> None:
    insns = read_datafile(path).insns
    text = disassemble(insns)
    assert ".insn" not in text          # every suite instruction has a mnemonic
    assert assemble(text) == insns


def test_disassembly_generates_labels_for_targets() -> None:
    insns = assemble("mov %r0, 0\nja skip\nmov %r0, 1\nskip: call local f\nexit\nf: exit")
    text = disassemble(insns)
    assert text.splitlines() == [
        "mov %r0, 0", "ja L3", "mov %r0, 1", "L3:", "call local L5", "exit", "L5:", "exit",
    ]


def test_disassembly_of_pseudo_map_loads_and_ja32() -> None:
    source = "lddw %r2, map:jmp\nlddw %r1, map_value:v+8\nja32 L0\nL0:\nexit"
    assert assemble(disassemble(assemble(source))) == assemble(source)
    assert "map:jmp" in disassemble(assemble(source))
    assert "map_value:v+8" in disassemble(assemble(source))


def test_out_of_program_targets_stay_numeric() -> None:
    insns = [Insn(0x05, off=5), Insn(0x95)]
    assert disassemble(insns).splitlines()[0] == "ja +5"


# Opcodes with a mnemonic (plus some without), so that generated slots often hit real forms.
_OPCODES = sorted({i.opcode for t, _ in HAND_CHECKED for i in assemble(t)} | {0x00, 0x8D, 0xF5, 0xFF, 0x86})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.builds(
    Insn,
    opcode=st.one_of(st.sampled_from(_OPCODES), st.integers(0, 255)),
    dst=st.integers(0, 15), src=st.integers(0, 15),
    off=st.one_of(st.sampled_from([0, 1, 8, 16, 32, -1]), st.integers(-(1 << 15), (1 << 15) - 1)),
    imm=st.one_of(st.sampled_from([0, 1, 16, 32, 64, 0xE1, 0xF1, -1]), st.integers(-(1 << 31), (1 << 31) - 1)),
), max_size=8))
def test_disassembly_round_trips_any_slots(insns: list[Insn]) -> None:
    assert assemble(disassemble(insns)) == insns


# -- bpftool-style xlated dump ----------------------------------------------------------
SEED_PROGRAM = "mov %r3, 0\nlddw %r2, map:jmp_table\ncall 12\nmov %r0, 1\nexit\n"


def _seed_listing() -> list[str]:
    text = SEED_COMMIT.read_text()
    block = text.split("bpftool p d x i 1655", 1)[1]
    return [line.strip() for line in block.splitlines() if re.match(r"\s+\d+: \(", line)][:5]


@pytest.mark.skipif(not SEED_COMMIT.exists(), reason="seed commit listing not present")
def test_xlated_matches_the_seed_commit_listing() -> None:
    expected = _seed_listing()
    assert expected[0] == "0: (b7) r3 = 0"          # sanity of the extraction itself
    got = format_xlated(assemble(SEED_PROGRAM), map_id=lambda name: 526)
    assert [line.strip() for line in got.splitlines()] == expected
    # bpftool pads the pc to four columns
    assert got.splitlines()[1] == "   1: (18) r2 = map[id:526]"


def test_xlated_prints_the_internal_tail_call_opcode_as_the_helper_call() -> None:
    insns = assemble(SEED_PROGRAM)
    insns[3] = Insn(isa.TAIL_CALL_OPCODE)
    assert "   3: (85) call bpf_tail_call#12" in format_xlated(insns, map_id=lambda name: 526).splitlines()


XLATED = [
    # expected strings follow the kernel's print_bpf_insn format strings (kernel/bpf/disasm.c)
    ("mov %r1, %r6", "(bf) r1 = r6"),
    ("add %r1, -8", "(07) r1 += -8"),
    ("add32 %r1, %r2", "(0c) w1 += w2"),
    ("ldxw %r0, [%r1+4]", "(61) r0 = *(u32 *)(r1 +4)"),
    ("ldxsh %r0, [%r1]", "(89) r0 = *(s16 *)(r1 +0)"),
    ("stxw [%r10-8], %r1", "(63) *(u32 *)(r10 -8) = r1"),
    ("stdw [%r10-8], 7", "(7a) *(u64 *)(r10 -8) = 7"),
    ("ja +2", "(05) goto pc+2"),
    ("ja32 -1", "(06) gotol pc-1"),
    ("jeq %r1, 0, +2", "(15) if r1 == 0x0 goto pc+2"),
    ("jne32 %r1, -1, +0", "(56) if w1 != 0xffffffff goto pc+0"),
    ("jsgt %r1, %r2, -3", "(6d) if r1 s> r2 goto pc-3"),
    ("call local +3", "(85) call pc+3"),
    ("call 1", "(85) call bpf_map_lookup_elem#1"),
    ("call 7", "(85) call bpf_get_prandom_u32#7"),
    ("exit", "(95) exit"),
    ("lock add [%r10-8], %r1", "(db) lock *(u64 *)(r10 -8) += r1"),
    ("lock add32 [%r10-8], %r1", "(c3) lock *(u32 *)(r10 -8) += r1"),
    ("lock fetch xor [%r1+2], %r3", "(db) r3 = atomic64_fetch_xor((u64 *)(r1 +2), r3)"),
    ("lock cmpxchg32 [%r1], %r2", "(c3) r0 = atomic_cmpxchg((u32 *)(r1 +0), r0, r2)"),
    ("lock xchg [%r1], %r2", "(db) r2 = atomic64_xchg((u64 *)(r1 +0), r2)"),
    ("neg32 %r1", "(84) w1 = -w1"),
    ("sdiv %r1, 3", "(37) r1 s/= 3"),
    ("movsx1632 %r1, %r2", "(bc) w1 = (s16)w2"),
    ("be16 %r1", "(dc) r1 = be16 r1"),
    ("bswap32 %r1", "(d7) r1 = bswap32 r1"),
    ("lddw %r0, 0x1122334455667788", "(18) r0 = 0x1122334455667788"),
]


@pytest.mark.parametrize(("text", "expected"), XLATED, ids=[t for t, _ in XLATED])
def test_xlated_forms(text: str, expected: str) -> None:
    assert format_xlated(assemble(text)) == f"   0: {expected}\n"


def test_xlated_map_value_and_pc_numbering_skip_lddw_second_slot() -> None:
    got = format_xlated(assemble("lddw %r1, map_value:v+8\nexit"), map_id={"v": 3}.__getitem__)
    assert got.splitlines() == ["   0: (18) r1 = map[id:3][0]+8", "   2: (95) exit"]


def test_xlated_of_the_6_1_fixture_bytes() -> None:
    # xlated_prog_insns of the seed program read back from Debian's 6.1 kernel
    data = bytes.fromhex("1812000001000000 0000000000000000 b703000000000000"
                         " 850000000c000000 b700000001000000 9500000000000000".replace(" ", ""))
    insns = isa.decode(data, map_name=lambda fd: "prog_array")
    assert format_xlated(insns, map_id=lambda name: 1).splitlines() == [
        "   0: (18) r2 = map[id:1]",
        "   2: (b7) r3 = 0",
        "   3: (85) call bpf_tail_call#12",
        "   4: (b7) r0 = 1",
        "   5: (95) exit",
    ]


def test_decoded_map_load_keeps_its_name_not_its_fd() -> None:
    insns = isa.decode(bytes.fromhex("1812000003000000" "0000000000000000" "9500000000000000"),
                       map_name={3: "jmp_table"}.__getitem__)
    text = disassemble(insns)
    assert text.splitlines()[0] == "lddw %r2, map:jmp_table"
    again = assemble(text)
    assert again[0].map == "jmp_table" and again[0].imm == 0 and again[1:] == insns[1:]


_TOKENS = ["mov", "lddw", "ja32", "call", "local", "lock", "fetch", "exit", ".insn", "map:", "map_value:",
           "%r1", "%r11", "[%r10-8]", "[", "]", "+", "-", ",", ":", " ", "\t", "\n", "#", "//", "0x", "9", "L"]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(st.sampled_from(_TOKENS), st.text(max_size=3)), max_size=20))
def test_any_text_assembles_or_fails_with_one_line_error(tokens: list[str]) -> None:
    try:
        assemble("".join(tokens), source="f.s")
    except AsmError as err:
        assert "\n" not in str(err) and str(err).startswith("f.s:")


def test_xlated_map_load_read_back_from_a_kernel_shows_the_kernels_map_id() -> None:
    # A kernel's xlated dump carries its own map id in imm; decoding names such a map
    # "fd<imm>", which is no map of the scenario: the listing shows the kernel's id.
    raw = bytes.fromhex("1812000007000000 0000000000000000 9500000000000000".replace(" ", ""))
    insns = tuple(isa.decode(raw, validate=False))
    text = format_xlated(insns, map_id={"jmp_table": 1}.get)
    assert "r2 = map[id:7]" in text
