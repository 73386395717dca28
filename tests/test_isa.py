"""bpfdiff.isa: byte encodings against RFC 9669 / struct bpf_insn, and the decoder's refusals."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from bpfdiff import isa
from bpfdiff.datafile import read_datafile
from bpfdiff.isa import Insn

CONFORMANCE = Path("/work/shared/conformance")
DATA_FILES = sorted(CONFORMANCE.glob("*.data"))
needs_suite = pytest.mark.skipif(not DATA_FILES, reason="conformance suite not present")


def test_slot_layout_is_struct_bpf_insn() -> None:
    # opcode, dst (low nibble) | src (high nibble), off s16 LE, imm s32 LE
    insn = Insn(0x7B, dst=10, src=1, off=-8, imm=0)
    assert isa.encode([insn]) == bytes([0x7B, 0x1A, 0xF8, 0xFF, 0, 0, 0, 0])
    assert isa.encode([Insn(0xB7, dst=0, imm=-1)]) == bytes.fromhex("b7000000ffffffff")


def test_lddw_is_two_slots_with_high_imm_in_second() -> None:
    first, second = isa.lddw_pair(0, 0x1122334455667788)
    # RFC 9669 section 5.4: opcode 0x18, the second slot has opcode 0 and the high half
    assert isa.encode([first, second]) == bytes.fromhex("1800000088776655" "0000000044332211")
    assert isa.lddw_value(first, second) == 0x1122334455667788


def test_decode_inverts_encode_on_hand_bytes() -> None:
    data = bytes.fromhex("b70000002a000000" "9500000000000000")   # r0 = 42; exit (6.1 xlated fixture)
    assert isa.decode(data) == [Insn(0xB7, imm=42), Insn(0x95)]


def test_decode_names_pseudo_map_loads() -> None:
    data = bytes.fromhex("1812000001000000" "0000000000000000" "9500000000000000")
    insns = isa.decode(data, map_name={1: "jmp_table"}.__getitem__)
    assert insns[0].map == "jmp_table" and insns[0].src == isa.BPF_PSEUDO_MAP_FD and insns[0].dst == 2


def test_truncated_lddw_is_refused() -> None:
    with pytest.raises(isa.InvalidInstruction) as info:
        isa.decode(bytes.fromhex("1800000001000000"))
    assert info.value.pc == 0
    assert "truncated lddw" in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("opcode", [0xE7, 0xF7, 0xE5, 0x8E, 0x98])
def test_unknown_opcode_byte_is_refused(opcode: int) -> None:
    data = bytes([opcode, 0, 0, 0, 0, 0, 0, 0]) + bytes.fromhex("9500000000000000")
    with pytest.raises(isa.InvalidInstruction) as info:
        isa.decode(data)
    assert info.value.pc == 0
    assert f"0x{opcode:02x}" in str(info.value)


def test_length_not_a_multiple_of_eight_is_refused() -> None:
    with pytest.raises(isa.InvalidInstruction, match="multiple of 8"):
        isa.decode(bytes(12))


@needs_suite
@pytest.mark.parametrize("path", DATA_FILES, ids=lambda p: p.stem)
def test_every_conformance_program_survives_encode_decode(path: Path) -> None:
    insns = read_datafile(path).insns
    data = isa.encode(insns)
    assert len(data) == 8 * len(insns)
    assert isa.decode(data, validate=False) == insns


@needs_suite
def test_lddw_raw_section_is_the_little_endian_u64_of_each_slot() -> None:
    data = read_datafile(CONFORMANCE / "lddw.data")
    assert data.raw == [0x5566778800000018, 0x1122334400000000, 0x0000000000000095]
    encoded = isa.encode(data.insns)
    assert [v for (v,) in struct.iter_unpack("<Q", encoded)] == data.raw
