"""The scenario text format: exact round trips and one-line errors at the right place."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from bpfdiff.fuzz.generate import scenario_from_bytes, scenario_from_seed
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bpfdiff import isa
from bpfdiff.inputs import InputError, input_kind, load_input
from bpfdiff.isa import Insn, Program
from bpfdiff.maps import MAX_ENTRIES
from bpfdiff.scenario import (
    MAP_KINDS,
    Delete,
    Expect,
    Load,
    MapDef,
    Run,
    Scenario,
    Update,
    key_u32,
)
from bpfdiff.scenario_text import (
    ScenarioSyntaxError,
    format_scenario,
    parse_scenario,
    read_scenario,
    write_scenario,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "corpus" / "examples").glob("*.scn"))
CONFORMANCE = ROOT.parent / "shared" / "conformance"


# -- the examples ----------------------------------------------------------------
def test_there_are_three_examples() -> None:
    assert {p.stem for p in EXAMPLES} >= {"direct_tail_call", "tail_call_limit", "retarget"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_example_round_trips(path: Path) -> None:
    scenario = read_scenario(path)
    text = format_scenario(scenario)
    assert parse_scenario(text) == scenario
    # the canonical text is a fixed point
    assert format_scenario(parse_scenario(text)) == text


def test_seed_program_reads_as_the_seed_commit_listing() -> None:
    # The xlated listing of the seed commit: r3 = 0; r2 = map; call bpf_tail_call; r0 = 1; exit.
    scenario = read_scenario(ROOT / "corpus" / "examples" / "direct_tail_call.scn")
    caller = scenario.program("caller")
    assert isa.encode(caller.insns).hex() == (
        "b703000000000000"      # mov r3, 0
        "1812000000000000"      # lddw r2, map (src 1 = BPF_PSEUDO_MAP_FD)
        "0000000000000000"
        "850000000c000000"      # call 12
        "b700000001000000"      # mov r0, 1
        "9500000000000000"      # exit
    )
    assert caller.insns[1].map == "jmp_table"
    assert scenario.map("jmp_table") == MapDef("jmp_table", "prog_array", 4, 4, 4)
    packet = bytes(14)          # an XDP scenario: the smallest packet a test run takes (ETH_HLEN)
    assert scenario.events == (
        Update("jmp_table", key_u32(0), "target"), Run("caller", packet), Delete("jmp_table", key_u32(0)),
        Run("caller", packet), Update("jmp_table", key_u32(0), "target"), Run("caller", packet),
    )
    assert scenario.expect == Expect(result=42)


# -- a hand-written scenario, field by field -------------------------------------
SAMPLE = """\
# comment before the first section
-- maps
jmp_table prog_array max_entries=4
counters array key_size=4 value_size=8 max_entries=2   # trailing comment
wide hash key_size=8 value_size=2 max_entries=3
-- prog target
mov %r0, 42
exit
-- prog caller
mov %r3, 0
lddw %r2, map:jmp_table
call 12
mov %r0, 1
exit
-- events
update jmp_table 0 prog:target
run caller
delete jmp_table 0
run caller mem=01 02 0304
update counters 1 = 0807060504030201 flags=exist
update wide 0x0102 = aa bb flags=noexist
update counters hex:0100 = 00 flags=7
load target
-- result
-1
-- error
something went wrong
-- meta
profile linux-5.5
inject tail-call-limit-ja,poke-skip-delete
seed
"""


def test_sample_parses_to_the_expected_scenario() -> None:
    s = parse_scenario(SAMPLE, "sample.scn")
    assert s.maps == (
        MapDef("jmp_table", "prog_array", 4, 4, 4),
        MapDef("counters", "array", 4, 8, 2),
        MapDef("wide", "hash", 8, 2, 3),
    )
    assert [p.name for p in s.programs] == ["target", "caller"]
    assert s.program("target").insns == (Insn(0xB7, 0, 0, 0, 42), Insn(0x95))
    assert s.events == (
        Update("jmp_table", b"\0\0\0\0", "target"),
        Run("caller"),
        Delete("jmp_table", b"\0\0\0\0"),
        Run("caller", bytes([1, 2, 3, 4])),
        Update("counters", b"\x01\0\0\0", bytes.fromhex("0807060504030201"), 2),
        Update("wide", bytes.fromhex("0201000000000000"), b"\xaa\xbb", 1),
        Update("counters", b"\x01\x00", b"\x00", 7),
        Load("target"),
    )
    assert s.expect == Expect(result=(1 << 64) - 1, error="something went wrong")
    assert s.meta == (("profile", "linux-5.5"), ("inject", "tail-call-limit-ja,poke-skip-delete"), ("seed", ""))
    assert parse_scenario(format_scenario(s)) == s


def test_raw_program_section_with_hand_checked_slots() -> None:
    text = (
        "-- maps\nm array max_entries=1\n"
        "-- prog p raw\n"
        "0x00000001000000b7\n"             # mov r0, 1: b7 00 0000 01000000
        "0x0000000000001218 map:m\n"       # lddw r2, map m: 18 12 0000 00000000
        "0x0000000000000000\n"
        "0x0000000000000095\n"             # exit
    )
    s = parse_scenario(text)
    assert s.program("p").insns == (
        Insn(0xB7, 0, 0, 0, 1), Insn(0x18, 2, 1, 0, 0, "m"), Insn(0), Insn(0x95),
    )


def test_printer_falls_back_to_raw_when_disassembly_does_not_round_trip(monkeypatch: pytest.MonkeyPatch) -> None:
    import bpfdiff.disasm

    s = parse_scenario(SAMPLE)
    monkeypatch.setattr(bpfdiff.disasm, "disassemble", lambda insns: "exit\n")
    text = format_scenario(s)
    assert "-- prog caller raw" in text
    assert "0x0000000000001218 map:jmp_table" in text
    assert parse_scenario(text) == s


# -- files -----------------------------------------------------------------------
def test_write_is_atomic_and_reads_back(tmp_path: Path) -> None:
    s = parse_scenario(SAMPLE)
    target = tmp_path / "finding.scn"
    target.write_text("old contents\n")
    write_scenario(target, s)
    assert read_scenario(target) == s
    assert os.listdir(tmp_path) == ["finding.scn"]  # no temp file left behind


def test_write_failure_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "finding.scn"
    target.write_text("old contents\n")
    bad = Scenario(programs=(Program("not a name", (Insn(0x95),)),))
    with pytest.raises(ValueError):
        write_scenario(target, bad)
    assert target.read_text() == "old contents\n"
    assert os.listdir(tmp_path) == ["finding.scn"]


@pytest.mark.skipif(not CONFORMANCE.is_dir(), reason="conformance suite not present")
def test_data_file_is_a_one_program_scenario() -> None:
    s = read_scenario(CONFORMANCE / "lddw.data")
    assert [p.name for p in s.programs] == ["lddw"]
    assert s.events == (Run("lddw"),)
    assert s.expect is not None and s.expect.result == 0x1122334455667788
    assert load_input(CONFORMANCE / "lddw.data") == s


def test_data_file_errors_keep_their_place(tmp_path: Path) -> None:
    bad = tmp_path / "bad.data"
    bad.write_text("# header\n-- asm\nmov %r0, 1\nfrobnicate %r0\nexit\n-- result\n0x1\n")
    with pytest.raises(ScenarioSyntaxError) as info:
        read_scenario(bad)
    assert str(info.value).startswith(f"{bad}:4:")


def test_input_kinds(tmp_path: Path) -> None:
    assert input_kind("x.data", b"anything") == "data"
    assert input_kind("x.scn", SAMPLE.encode()) == "scenario"
    assert input_kind("crash-123", b"-- asm\nexit\n") == "data"
    assert input_kind("crash-123", b"-- c\nint f(void);\n-- asm\nexit\n") == "data"
    assert input_kind("crash-123", b"-- prog p\nexit\n-- result\n0x0\n") == "scenario"
    assert input_kind("crash-123", b"\xff\xfe\x00binary") == "bytes"
    assert input_kind("crash-123", b"plain text, no section header") == "bytes"
    # the name decides before the content
    sha1 = "0123456789abcdef0123456789abcdef01234567"
    assert input_kind(f"crash-{sha1}", b"-- prog p\nexit\n") == "bytes"
    assert input_kind(f"dir/timeout-{sha1}", b"-- asm\nexit\n") == "bytes"
    assert input_kind("x.scn", b"-- asm\nexit\n") == "scenario"


def test_load_input_missing_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(InputError) as info:
        load_input(tmp_path / "nope.scn")
    assert str(info.value).startswith(str(tmp_path / "nope.scn"))
    assert "\n" not in str(info.value)


def test_load_input_syntax_error_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.scn"
    path.write_text("-- events\nrun nowhere\n")
    with pytest.raises(InputError, match=re.escape(f"{path}:2:5: unknown program 'nowhere'")):
        load_input(path)


# -- errors: one line, at the right line and column -------------------------------
PROG = "-- prog p\nmov %r0, 0\nexit\n"
MAPS = "-- maps\nm prog_array max_entries=2\n"

ERRORS = [
    # (text, line, col, message fragment)
    ("mov %r0, 1\n", 1, 1, "text before the first '-- ' section header"),
    ("-- frob\n", 1, 4, "unknown section 'frob'"),
    ("--  \n", 1, 1, "section header without a name"),
    (MAPS + "-- maps\n", 3, 4, "second '-- maps' section (first at line 1)"),
    (MAPS + "m array max_entries=1\n", 3, 1, "duplicate map 'm'"),
    ("-- maps\nm stack max_entries=1\n", 2, 3, "unknown map kind 'stack'"),
    ("-- maps\nm array max_entries=x1\n", 2, 21, "bad max_entries 'x1'"),
    ("-- maps\nm array max_entries=0\n", 2, 21, "max_entries must be positive"),
    ("-- maps\nm array colour=1 max_entries=1\n", 2, 9, "bad map attribute 'colour=1'"),
    ("-- maps\nm array key_size=4\n", 2, 19, "missing max_entries=N"),
    ("-- maps\nm array max_entries=1 max_entries=2\n", 2, 23, "'max_entries' given twice"),
    ("-- maps\n9m array max_entries=1\n", 2, 1, "bad map name '9m'"),
    ("-- maps\nm\n", 2, 2, "missing operand"),
    (PROG + "-- prog p\nexit\n", 4, 9, "duplicate program 'p'"),
    ("-- prog\nexit\n", 1, 8, "missing program name"),
    ("-- prog p cooked\nexit\n", 1, 11, "unexpected 'cooked'"),
    ("-- prog p\nmov %r0, 1\nfrobnicate %r1\n", 3, 1, "unknown mnemonic 'frobnicate'"),
    ("-- prog p\nmov %r11, 1\nexit\n", 2, 5, "bad register '%r11'"),
    ("-- prog p\nmov %r0, 99999999999\nexit\n", 2, 10, "out of range"),
    ("-- prog p\njeq %r0, 1, nowhere\nexit\n", 2, 13, "unknown label 'nowhere'"),
    ("-- prog p\nlddw %r2, map:ghost\nexit\n", 2, 11, "unknown map 'ghost'"),
    ("-- prog p raw\n0x00000001000000b7\n0x0000000000000018\n", 3, 1, "truncated lddw"),
    ("-- prog p raw\n0x00000000000000ff\n", 2, 1, "unknown opcode 0xff"),
    ("-- prog p raw\n0xzz\n", 2, 1, "bad slot '0xzz'"),
    ("-- prog p raw\n0x10000000000000000\n", 2, 1, "is not a 64-bit value"),
    ("-- prog p raw\n0x95 mop:x\n", 2, 6, "unexpected 'mop:x'"),
    (PROG + "-- events\nrun q\n", 5, 5, "unknown program 'q'"),
    (PROG + "-- events\nfly p\n", 5, 1, "unknown event 'fly'"),
    (PROG + "-- events\nrun\n", 5, 4, "missing operand: expected 'run PROG"),
    (PROG + "-- events\nrun p mem=0g\n", 5, 11, "bad mem bytes '0g'"),
    (PROG + "-- events\nrun p mem=012\n", 5, 11, "bad mem bytes '012'"),
    (PROG + "-- events\nrun p 01\n", 5, 7, "unexpected '01' (expected mem=HEX BYTES)"),
    (PROG + MAPS + "-- events\nupdate m 0 prog:q\n", 7, 17, "unknown program 'q'"),
    (PROG + MAPS + "-- events\nupdate n 0 prog:p\n", 7, 8, "unknown map 'n'"),
    (PROG + MAPS + "-- events\nupdate m 4294967296 prog:p\n", 7, 10, "does not fit in 4 bytes"),
    (PROG + MAPS + "-- events\nupdate m -1 prog:p\n", 7, 10, "does not fit in 4 bytes"),
    (PROG + MAPS + "-- events\nupdate m zero prog:p\n", 7, 10, "bad key 'zero'"),
    (PROG + MAPS + "-- events\nupdate m hex:0 prog:p\n", 7, 14, "bad key bytes '0'"),
    (PROG + MAPS + "-- events\nupdate m 0 p\n", 7, 12, "expected prog:NAME or '= HEX BYTES'"),
    (PROG + MAPS + "-- events\nupdate m 0 prog:p prog:p\n", 7, 19, "unexpected 'prog:p'"),
    (PROG + MAPS + "-- events\nupdate m 0 prog:p flags=often\n", 7, 25, "bad flags 'often'"),
    (PROG + MAPS + "-- events\nupdate m 0\n", 7, 11, "missing operand"),
    (PROG + MAPS + "-- events\ndelete m\n", 7, 9, "missing operand: expected 'delete MAP KEY'"),
    (PROG + MAPS + "-- events\ndelete m 0 1\n", 7, 12, "unexpected '1'"),
    (PROG + "-- events\nload p p\n", 5, 8, "unexpected 'p'"),
    ("-- result\n0x1\n0x2\n", 3, 1, "'-- result' holds one integer"),
    ("-- result\nforty-two\n", 2, 1, "bad result 'forty-two'"),
    ("-- result\n", 1, 10, "empty '-- result' section"),
    ("-- result\n0x10000000000000000\n", 2, 1, "not a 64-bit value"),
    ("-- meta x\n", 1, 9, "'-- meta' takes no argument"),
]


@pytest.mark.parametrize(("text", "line", "col", "message"), ERRORS, ids=[m for *_, m in ERRORS])
def test_syntax_errors_are_one_line_at_the_right_place(text: str, line: int, col: int, message: str) -> None:
    with pytest.raises(ScenarioSyntaxError) as info:
        parse_scenario(text, "t.scn")
    error = str(info.value)
    assert "\n" not in error
    assert error.startswith(f"t.scn:{line}:{col}: "), error
    assert message in error


def test_validation_can_be_switched_off() -> None:
    text = "-- prog p raw\n0x00000000000000ff\n"
    assert parse_scenario(text, validate=False).program("p").insns == (Insn(0xFF),)


def test_not_utf8_scenario(tmp_path: Path) -> None:
    path = tmp_path / "x.scn"
    path.write_bytes(b"-- prog p\nexit\n\xff\n")
    with pytest.raises(ScenarioSyntaxError, match=re.escape(f"{path}:3:1: not UTF-8 text")):
        read_scenario(path)


# -- round trip over generated scenarios -------------------------------------------
NAMES = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.\-]{0,8}", fullmatch=True)
REG = st.integers(0, 9)
IMM = st.integers(-(1 << 31), (1 << 31) - 1)
ALU = [isa.BPF_ADD, isa.BPF_SUB, isa.BPF_MUL, isa.BPF_OR, isa.BPF_AND, isa.BPF_XOR, isa.BPF_MOV, isa.BPF_DIV]


# Placeholder slot -> how to build the real jump once its offset is known.
JUMPS = {
    Insn(isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K): lambda reg, delta, imm: Insn(
        isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K, reg, 0, delta, imm),
    Insn(isa.BPF_JMP32 | isa.BPF_JSGT | isa.BPF_X): lambda reg, delta, imm: Insn(
        isa.BPF_JMP32 | isa.BPF_JSGT | isa.BPF_X, reg, (reg + 1) % 10, delta),
    Insn(isa.BPF_JMP | isa.BPF_JA): lambda reg, delta, imm: Insn(isa.BPF_JMP | isa.BPF_JA, off=delta),
    Insn(isa.BPF_JMP32 | isa.BPF_JA): lambda reg, delta, imm: Insn(isa.BPF_JMP32 | isa.BPF_JA, imm=delta),
    Insn(isa.CALL_OPCODE, src=isa.BPF_PSEUDO_CALL): lambda reg, delta, imm: Insn(
        isa.CALL_OPCODE, src=isa.BPF_PSEUDO_CALL, imm=delta),
}


@st.composite
def programs(draw: st.DrawFn, name: str, map_names: list[str]) -> Program:
    """Valid programs: ALU (K and X, 32/64), lddw (imm and map), jumps and local calls, helper calls, exit."""
    units: list[list[Insn]] = []
    for _ in range(draw(st.integers(0, 8))):
        choice = draw(st.sampled_from(["alu_k", "alu_x", "lddw", "map", "jump", "call", "store"]))
        cls = draw(st.sampled_from([isa.BPF_ALU, isa.BPF_ALU64]))
        if choice == "alu_k":
            units.append([Insn(cls | draw(st.sampled_from(ALU)) | isa.BPF_K, draw(REG), 0, 0, draw(IMM))])
        elif choice == "alu_x":
            units.append([Insn(cls | draw(st.sampled_from(ALU)) | isa.BPF_X, draw(REG), draw(REG))])
        elif choice == "lddw":
            units.append(list(isa.lddw_pair(draw(REG), draw(st.integers(0, (1 << 64) - 1)))))
        elif choice == "map" and map_names:
            units.append(list(isa.lddw_pair(draw(REG), 0, isa.BPF_PSEUDO_MAP_FD, draw(st.sampled_from(map_names)))))
        elif choice == "call":
            units.append([Insn(isa.CALL_OPCODE, imm=draw(st.sampled_from([1, 2, 3, 7, 8, 12])))])
        elif choice == "store":
            units.append([Insn(isa.BPF_STX | isa.BPF_MEM | isa.BPF_DW, 10, draw(REG), -8 * draw(st.integers(1, 64)))])
        else:
            units.append([draw(st.sampled_from(list(JUMPS)))])  # target chosen below
    # Jumps and local calls land on a unit boundary or on the final exit,
    # backwards or forwards: the printer must label every target.
    starts, pc = [], 0
    for unit in units:
        starts.append(pc)
        pc += len(unit)
    insns: list[Insn] = []
    for index, unit in enumerate(units):
        if unit[0] in JUMPS:
            delta = draw(st.sampled_from(starts + [pc])) - starts[index] - 1
            unit = [JUMPS[unit[0]](draw(REG), delta, draw(IMM))]
        insns += unit
    insns.append(Insn(isa.EXIT_OPCODE))
    isa.check_program(insns)
    return Program(name, tuple(insns))


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    map_names = draw(st.lists(NAMES, max_size=3, unique=True))
    maps = []
    for name in map_names:
        kind = draw(st.sampled_from(MAP_KINDS))
        key_size = 4 if kind != "hash" else draw(st.integers(1, 16))
        # sizes BPF_MAP_CREATE and our engines accept (bpfdiff.maps.map_size_problem): the parser refuses others
        value_size = 4 if kind == "prog_array" else draw(st.integers(1, 64))
        maps.append(MapDef(name, kind, key_size, value_size, draw(st.integers(1, MAX_ENTRIES))))
    prog_names = draw(st.lists(NAMES, min_size=1, max_size=3, unique=True))
    progs = [draw(programs(name, map_names)) for name in prog_names]
    events = []
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["run", "update", "delete", "load"] if maps else ["run", "load"]))
        if kind == "run":
            events.append(Run(draw(st.sampled_from(prog_names)), draw(st.binary(max_size=16))))
        elif kind == "load":
            events.append(Load(draw(st.sampled_from(prog_names))))
        else:
            m = draw(st.sampled_from(maps))
            key = draw(st.one_of(st.binary(min_size=m.key_size, max_size=m.key_size), st.binary(max_size=9)))
            if kind == "delete":
                events.append(Delete(m.name, key))
            else:
                value = draw(st.one_of(st.sampled_from(prog_names), st.binary(max_size=12)))
                events.append(Update(m.name, key, value, draw(st.sampled_from([0, 1, 2, 3, 1 << 40]))))
    result = draw(st.none() | st.integers(0, (1 << 64) - 1))
    error = draw(st.none() | st.from_regex(r"[a-z][a-z ]{0,20}[a-z]", fullmatch=True))
    expect = Expect(result, error) if result is not None or error is not None else None
    meta_value = st.text(max_size=20).filter(lambda v: v == v.strip() and v.splitlines() in ([], [v]))
    meta = draw(st.lists(st.tuples(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), meta_value), max_size=4))
    return Scenario(tuple(maps), tuple(progs), tuple(events), expect, tuple(meta))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_generated_scenarios_round_trip(scenario: Scenario) -> None:
    text = format_scenario(scenario)
    assert parse_scenario(text, "generated.scn") == scenario


def test_fuzzer_scenarios_round_trip() -> None:
    for profile in ("linux-6.1", "linux-5.5"):
        for seed in range(60):
            scenario = scenario_from_seed(seed, profile)
            assert parse_scenario(format_scenario(scenario), f"seed{seed}.scn") == scenario, (profile, seed)


def test_binary_input_is_the_fuzzers_scenario(tmp_path: Path) -> None:
    data = bytes(range(256)) * 2
    path = tmp_path / "crash-0123abcd"
    path.write_bytes(data)
    assert input_kind(path, data) == "bytes"
    assert load_input(path) == scenario_from_bytes(data)
    assert load_input(path, "linux-5.5") == scenario_from_bytes(data, "linux-5.5")


@pytest.mark.parametrize("scenario", [
    Scenario(expect=Expect(error="-- maps")),
    Scenario(expect=Expect(error="# not a comment")),
    Scenario(expect=Expect(error="two\n\nparagraphs")),
    Scenario(meta=(("--", "x"),)),
    Scenario(meta=(("key", "two\nlines"),)),
    Scenario(meta=(("key", " padded"),)),
    Scenario(meta=(("key", "form\x0cfeed"),)),
    Scenario(expect=Expect(error="line\u2028separator")),
    Scenario(maps=(MapDef("bad name", "array", 4, 4, 1),)),
])
def test_printer_refuses_what_would_not_read_back(scenario: Scenario) -> None:
    with pytest.raises(ValueError):
        format_scenario(scenario)


def test_multi_line_error_text_round_trips() -> None:
    scenario = Scenario(expect=Expect(error="first line\nsecond: line"))
    assert parse_scenario(format_scenario(scenario)) == scenario


def test_scenario_from_input_matches_load_input(tmp_path: Path) -> None:
    from bpfdiff.inputs import scenario_from_input

    for name, data in (("a.scn", SAMPLE.encode()), ("crash-1", bytes(range(200))),
                       ("b.data", b"-- asm\nmov %r0, 3\nexit\n-- result\n0x3\n")):
        path = tmp_path / name
        path.write_bytes(data)
        assert scenario_from_input(data, str(path)) == load_input(path)


# -- the documentation's examples are real ---------------------------------------
def _indented_example(docstring: str) -> str:
    block = docstring.split("Example::\n\n", 1)[1].split("\n\n", 1)[0]
    return "\n".join(line[4:] for line in block.splitlines()) + "\n"


def test_module_docstring_example_parses() -> None:
    import bpfdiff.scenario_text

    s = parse_scenario(_indented_example(bpfdiff.scenario_text.__doc__ or ""), "docstring")
    assert [e.__class__.__name__ for e in s.events] == ["Update", "Run", "Delete", "Run", "Update", "Load"]
    assert s.expect == Expect(result=0x2A) and s.meta == (("profile", "linux-6.1"),)


def test_readme_scenario_is_the_direct_tail_call_example() -> None:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Scenarios", 1)[1].split("```\n", 2)[1]
    assert parse_scenario(block, "README.md") == read_scenario(ROOT / "corpus" / "examples" / "direct_tail_call.scn")


def test_byte_order_mark_is_ignored() -> None:
    assert parse_scenario("\ufeff" + SAMPLE) == parse_scenario(SAMPLE)
