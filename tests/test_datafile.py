"""bpfdiff.datafile: the conformance suite's .data files."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bpfdiff.datafile import DataFileError, parse_datafile, read_datafile
from bpfdiff.isa import Insn
from bpfdiff.scenario import Expect, Run

CONFORMANCE = Path("/work/shared/conformance")
DATA_FILES = sorted(CONFORMANCE.glob("*.data"))
needs_suite = pytest.mark.skipif(not DATA_FILES, reason="conformance suite not present")


@needs_suite
def test_every_conformance_file_reads() -> None:
    assert len(DATA_FILES) >= 300
    for path in DATA_FILES:
        data = read_datafile(path)
        assert data.insns, path
        assert data.result is not None or data.error is not None, path


@needs_suite
def test_unknown_sections_are_recorded_with_their_line() -> None:
    unknown = {p.stem: read_datafile(p).unknown_sections for p in DATA_FILES if read_datafile(p).unknown_sections}
    # exactly these three files carry `-- no register offset` (checked with grep)
    assert unknown == {
        "callx": [("no register offset", 11)],
        "call_unwind_fail": [("no register offset", 10)],
        "mem-len": [("no register offset", 9)],
    }


@needs_suite
def test_mem_spanning_lines_and_result() -> None:
    data = read_datafile(CONFORMANCE / "mem-len.data")
    assert data.mem == bytes([0, 0, 0, 1, 0, 0, 0, 2])
    assert data.result == 8
    assert data.insns == [Insn(0xBF, dst=0, src=2), Insn(0x95)]


@needs_suite
def test_c_section_is_kept_as_text() -> None:
    data = read_datafile(CONFORMANCE / "prime.data")
    # `#include` inside `-- c` is C text, not a comment
    assert data.c_source is not None and data.c_source.startswith("#include <stdint.h>")
    assert "if (arg % i == 0)" in data.c_source
    assert data.asm is not None and data.asm.startswith("mov %r1, 67")


@needs_suite
def test_to_scenario() -> None:
    data = read_datafile(CONFORMANCE / "ldxb.data")
    scenario = data.to_scenario()
    assert [p.name for p in scenario.programs] == ["ldxb"]
    assert scenario.programs[0].insns == tuple(data.insns)
    assert scenario.maps == ()
    assert scenario.events == (Run("ldxb", data.mem),)
    assert scenario.expect == Expect(result=data.result, error=None)


SAMPLE = """# comment header
# SPDX-License-Identifier: MIT
-- asm
mov %r0, 1     # r0 = 1
exit
-- mem
aa bb
cc
-- result
-1
-- error
  division by zero
-- raw
0x00000001000000b7
0x0000000000000095
"""


def test_parse_sample() -> None:
    data = parse_datafile(SAMPLE, "sample.data")
    assert data.name == "sample"
    assert data.insns == [Insn(0xB7, imm=1), Insn(0x95)]
    assert data.mem == b"\xaa\xbb\xcc"
    assert data.result == (1 << 64) - 1
    assert data.error == "division by zero"
    assert data.raw == [0xB7 | (1 << 32), 0x95]
    assert data.unknown_sections == []


def test_raw_without_asm_is_decoded() -> None:
    data = parse_datafile("-- raw\n0x00000001000000b7\n0x0000000000000095\n-- result\n0x1\n", "r.data")
    assert data.insns == [Insn(0xB7, imm=1), Insn(0x95)]


def test_c_section_lines_starting_with_dashes_stay_text() -> None:
    data = parse_datafile("-- c\n--i;\n-- asm\nexit\n", "c.data")
    assert data.c_source == "--i;"


ERRORS = [
    ("# only a header\n-- result\n0x1\n", "x.data:1: no '-- asm' section"),
    # the assembler's line number is the FILE's, with its column
    ("# header\n-- asm\nmov %r0, 1\nmov %r11, 2\nexit\n", "x.data:4:5: bad register '%r11'"),
    ("-- asm\nexit\n-- mem\n00 0g\n", "x.data:4: bad byte '0g'"),
    ("-- asm\nexit\n-- result\n1\n2\n", "x.data:5: '-- result' needs exactly one integer, found 2"),
    ("-- asm\nexit\n-- result\nten\n", "x.data:4: bad result 'ten'"),
    ("-- asm\nexit\n-- raw\n0x0000000000000096\n", "x.data:4: '-- raw' slot 0 is 0x0000000000000096"),
    ("-- asm\nexit\n-- raw\n0x95\n0x95\n", "x.data:5: '-- raw' has 2 slots"),
    ("-- asm\nexit\n-- asm\nexit\n", "x.data:3: duplicate '-- asm' section (first on line 1)"),
    ("stray text\n-- asm\nexit\n", "x.data:1: text before the first section"),
]


@pytest.mark.parametrize(("text", "message"), ERRORS, ids=[m for _, m in ERRORS])
def test_errors_are_one_line_with_path_and_line(text: str, message: str) -> None:
    with pytest.raises(DataFileError) as info:
        parse_datafile(text, "x.data")
    assert "\n" not in str(info.value)
    assert str(info.value).startswith(message), str(info.value)


def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match=r"missing\.data: cannot read"):
        read_datafile(tmp_path / "missing.data")
    binary = tmp_path / "bin.data"
    binary.write_bytes(b"\xff\xfe-- asm\n")
    with pytest.raises(DataFileError, match=r"bin\.data: cannot read"):
        read_datafile(binary)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(["-- asm\n", "-- mem\n", "-- result\n", "-- raw\n", "-- c\n", "-- what\n",
                                 "exit\n", "mov %r0, 1\n", "aa bb\n", "0x95\n", "# c\n", "zz\n", "1 2\n", "\n"]),
                max_size=12))
def test_any_text_parses_or_fails_with_one_line_error(lines: list[str]) -> None:
    try:
        parse_datafile("".join(lines), "f.data")
    except DataFileError as err:
        assert "\n" not in str(err) and str(err).startswith("f.data")
