"""compare-jit's masking and diff, against the real 6.1 bytes (no qemu).

The kernel side is built from ../shared/reference/linux-6.1-jit-fixtures.md:
program B (`r0 = 42; exit`) and program A (the seed's caller), xlated and jited
as Debian's 6.1.192 produced them, placed at kernel-like addresses with a
kernel-like map pointer and a kernel map id.  Our side is our linux-6.1 JIT.
Only load-address dependent fields may differ, and each must resolve to the
same thing; any other byte is a difference, reported with both sides
disassembled.
"""

from __future__ import annotations

import pytest

from bpfdiff.compare_jit import CodeSide, Function, compare_program, our_side, summary_lines
from bpfdiff.engine import make_engine
from bpfdiff.scenario_text import parse_scenario

SCENARIO = parse_scenario("""-- maps
jt prog_array key_size=4 value_size=4 max_entries=1
-- prog B
mov %r0, 42
exit
-- prog A
lddw %r2, map:jt
mov %r3, 0
call 12
mov %r0, 1
exit
""", "seed.scn")

B_XLATED = bytes.fromhex("b70000002a000000 9500000000000000".replace(" ", ""))
A_XLATED = bytes.fromhex("1812000001000000 0000000000000000 b703000000000000 850000000c000000 "
                         "b700000001000000 9500000000000000".replace(" ", ""))
B_JITED = bytes.fromhex("0f1f440000 6690 55 4889e5 b82a000000 c9 c3 cc".replace(" ", ""))
A_HEAD = bytes.fromhex("0f1f440000 31c0 55 4889e5 50 48be".replace(" ", ""))
A_TAIL_EMPTY = bytes.fromhex("31d2 8b85fcffffff 83f821 7314 83c001 8985fcffffff e906000000 58 0f1f440000 "
                             "b801000000 c9 c3 cc".replace(" ", ""))

KERNEL_MAP_ID = 17                      # map ids are global in a kernel: anything but ours
KERNEL_MAP = 0xFFFF_8880_04A3_C000      # a kmalloc'd struct bpf_array
B_BASE, A_BASE = 0xFFFF_FFFF_C000_1000, 0xFFFF_FFFF_C000_3000


def kernel_side(a_jited: bytes, a_xlated: bytes = A_XLATED, map_of_id=None) -> CodeSide:
    return CodeSide(
        "kernel",
        functions={"A": (Function(A_BASE, a_jited),), "B": (Function(B_BASE, B_JITED),)},
        xlated={"A": a_xlated, "B": B_XLATED},
        map_of_id=map_of_id or {KERNEL_MAP_ID: "jt"}.get,
    )


def a_image(pointer: int = KERNEL_MAP, tail: bytes = A_TAIL_EMPTY) -> bytes:
    return A_HEAD + pointer.to_bytes(8, "little") + tail


def kernel_xlated(map_id: int = KERNEL_MAP_ID) -> bytes:
    data = bytearray(A_XLATED)
    data[4:8] = map_id.to_bytes(4, "little")
    return bytes(data)


@pytest.fixture(scope="module")
def ours():
    engine = make_engine("jit", profile="linux-6.1")
    try:
        yield {prog: our_side(engine, SCENARIO, prog) for prog in ("A", "B")}
    finally:
        engine.close()


def merged(ours: dict[str, CodeSide]) -> CodeSide:
    side = ours["A"]
    return CodeSide("ours", functions={**ours["A"].functions, **ours["B"].functions},
                    xlated={**ours["A"].xlated, **ours["B"].xlated}, symbol=side.symbol,
                    map_of_id=side.map_of_id, call_target=side.call_target)


def test_the_fixture_programs_are_identical_after_masking(ours) -> None:
    kernel = kernel_side(a_image(), kernel_xlated())
    for prog in ("A", "B"):
        result = compare_program(prog, ours[prog], kernel)
        assert result.xlated is None, result.xlated.format(prog)
        assert result.jited is None, result.jited.format(prog)
        assert result.xlated_identical and result.jited_identical


def test_a_map_pointer_must_resolve_to_the_same_map(ours) -> None:
    # the kernel's xlated program says its lddw loads a map that is not ours' jt
    other = kernel_side(a_image(), kernel_xlated(), map_of_id={KERNEL_MAP_ID: "other"}.get)
    result = compare_program("A", ours["A"], other)
    assert result.xlated is not None and result.xlated.reason == "map: ours jt, kernel other"
    assert result.jited is not None and result.jited.where == "func 0 +0xc"
    assert result.jited.reason == "map pointer: ours map:jt, kernel map:other"
    assert "movabs" in result.jited.ours and "movabs" in result.jited.kernel


def test_an_unmasked_byte_is_a_difference_shown_disassembled(ours) -> None:
    # the 5.10 counter test (cmp $0x20; ja) in place of 6.1's (cmp $0x21; jae)
    tail = A_TAIL_EMPTY.replace(bytes.fromhex("83f8217314"), bytes.fromhex("83f8207714"))
    result = compare_program("A", ours["A"], kernel_side(a_image(tail=tail), kernel_xlated()))
    assert result.xlated is None and result.jited is not None
    mismatch = result.jited
    assert (mismatch.where, mismatch.reason) == ("func 0 +0x1e", "bytes")
    assert mismatch.ours.startswith("1e:\tcmp    $0x21,%eax") and mismatch.kernel.startswith("1e:\tcmp    $0x20,%eax")
    text = mismatch.format("A")
    assert text.splitlines()[0] == "A: jited differs at func 0 +0x1e (bytes)"


def test_a_jump_over_different_code_is_named_as_such(ours) -> None:
    # jae out: +0x14 in the fixture; +0x15 would land one byte later (the code between differs)
    tail = A_TAIL_EMPTY.replace(bytes.fromhex("7314"), bytes.fromhex("7315"))
    result = compare_program("A", ours["A"], kernel_side(a_image(tail=tail), kernel_xlated()))
    assert result.jited.reason == "jump displacement: the code it jumps over differs"
    assert "jae" in result.jited.ours and "jae" in result.jited.kernel
    # in the xlated program: the same jump with another offset
    ours_x = CodeSide("ours", xlated={"p": bytes.fromhex("2d75 0d00 00000000 9500000000000000".replace(" ", ""))})
    kernel_x = CodeSide("kernel", xlated={"p": bytes.fromhex("2d75 0a00 00000000 9500000000000000".replace(" ", ""))})
    from bpfdiff.compare_jit import compare_xlated

    assert compare_xlated("p", ours_x, kernel_x).reason == "jump offset: the code it jumps over differs"


def test_a_direct_tail_call_must_enter_the_same_program_at_the_same_offset(ours) -> None:
    # after `update jt 0 = B`: bypass -> nop5, site -> jmp B + 11 (X86_TAIL_CALL_OFFSET)
    engine = make_engine("jit", profile="linux-6.1")
    try:
        filled = parse_scenario("""-- maps
jt prog_array key_size=4 value_size=4 max_entries=1
-- prog B
mov %r0, 42
exit
-- prog A
lddw %r2, map:jt
mov %r3, 0
call 12
mov %r0, 1
exit
-- events
update jt 0 prog:B
""", "filled.scn")
        *_, step = engine.inspect(filled)
        a, b = step.programs["A"].images[0], step.programs["B"].images[0]
        ours_filled = CodeSide("ours", functions={"A": (Function(a.base, a.code),), "B": (Function(b.base, b.code),)},
                               xlated=merged(ours).xlated, map_of_id=ours["A"].map_of_id)
    finally:
        engine.close()

    def site_to(offset: int) -> bytes:
        site = A_BASE + len(A_HEAD) + 8 + A_TAIL_EMPTY.index(bytes.fromhex("58")) + 1
        jmp = b"\xe9" + (B_BASE + offset - (site + 5)).to_bytes(4, "little", signed=True)
        return A_TAIL_EMPTY.replace(bytes.fromhex("e906000000 58 0f1f440000".replace(" ", "")),
                                    bytes.fromhex("0f1f440000 58".replace(" ", "")) + jmp)

    good = compare_program("A", ours_filled, kernel_side(a_image(tail=site_to(11)), kernel_xlated()))
    assert good.jited is None, good.jited.format("A")
    bad = compare_program("A", ours_filled, kernel_side(a_image(tail=site_to(12)), kernel_xlated()))
    assert bad.jited is not None and bad.jited.reason == "jump target: ours B+0xb, kernel B+0xc"


def test_helper_calls_must_call_the_same_function() -> None:
    # our xlated program calls helper 1 by id; the kernel's by the offset of its function
    ours = CodeSide("ours", xlated={"p": bytes.fromhex("8500000001000000 9500000000000000".replace(" ", ""))},
                    functions={"p": (Function(0x1000, b"\xe8" + (0x500 - 0x1005).to_bytes(4, "little", signed=True)
                                              + b"\xc3"),)},
                    symbol={0x500: "bpf_map_lookup_elem"}.get, call_target={1: "bpf_map_lookup_elem"}.get)
    same = CodeSide("kernel", xlated={"p": bytes.fromhex("85000000a0b1c2ff 9500000000000000".replace(" ", ""))},
                    functions={"p": (Function(0x9000, b"\xe8" + (0x7700 - 0x9005).to_bytes(4, "little", signed=True)
                                              + b"\xc3"),)},
                    symbol={0x7700: "bpf_map_lookup_elem"}.get, call_target={-0x3D4E60: "bpf_map_lookup_elem"}.get)
    assert compare_program("p", ours, same).xlated is None
    assert compare_program("p", ours, same).jited is None
    other = CodeSide("kernel", xlated=same.xlated, functions=same.functions,
                     symbol={0x7700: "__htab_map_lookup_elem"}.get,
                     call_target={-0x3D4E60: "__htab_map_lookup_elem"}.get)
    result = compare_program("p", ours, other)
    assert result.xlated.reason == "call target: ours bpf_map_lookup_elem, kernel __htab_map_lookup_elem"
    assert result.jited.reason == "call target: ours bpf_map_lookup_elem, kernel __htab_map_lookup_elem"


def test_summary_counts_accepted_programs_and_identical_ones_among_them(ours) -> None:
    tail = A_TAIL_EMPTY.replace(bytes.fromhex("83f8217314"), bytes.fromhex("83f8207714"))
    kernel = kernel_side(a_image(tail=tail), kernel_xlated())
    kernel.functions.pop("B")
    kernel.xlated.pop("B")      # refused by the kernel
    results = [compare_program(prog, ours[prog], kernel) for prog in ("A", "B")]
    assert [r.accepted for r in results] == [True, False]
    assert summary_lines(results) == ["accepted 1/2 (50.0%)", "xlated identical 1/1 (100.0%)",
                                      "jited identical 0/1 (0.0%)"]


def test_symbols_of_a_system_map_name_call_targets() -> None:
    from bpfdiff.compare_jit import SymbolTable

    table = SymbolTable.parse("ffffffff81000000 T _stext\n"
                              "ffffffff81234000 T __bpf_call_base\n"
                              "ffffffff81234560 T bpf_map_lookup_elem\n"
                              "ffffffff81234600 t array_map_update_elem\n"
                              "ffffffff82000000 D some_data\n"
                              "ffffffff81e00100 T __x86_indirect_thunk_rcx\n")
    assert table.describe(0xFFFF_FFFF_8123_4560) == "bpf_map_lookup_elem"
    assert table.describe(0xFFFF_FFFF_8123_4564) == "bpf_map_lookup_elem+0x4"
    assert table.describe(0xFFFF_FFFF_81E0_0100) == "__x86_indirect_thunk_rcx"
    assert table.describe(0x1000) is None
    # an xlated helper call holds the function's offset from __bpf_call_base (KASLR does not move it)
    assert table.call_target(0x560) == "bpf_map_lookup_elem"
    assert table.call_target(0x600) == "array_map_update_elem"


def test_kernel_map_ids_follow_the_order_the_maps_were_created_in() -> None:
    from bpfdiff.compare_jit import map_ids_by_creation

    scenario = parse_scenario("""-- maps
a array max_entries=1
b array max_entries=1
c prog_array max_entries=1
-- prog p
lddw %r1, map:c
lddw %r2, map:a
mov %r0, 0
exit
-- prog q
mov %r0, 0
exit
""", "ids.scn")

    def load(map_id: int) -> bytes:
        return bytes.fromhex("1811000000000000 0000000000000000".replace(" ", "")).replace(
            b"\x18\x11\x00\x00\x00\x00\x00\x00", b"\x18\x11\x00\x00" + map_id.to_bytes(4, "little"))

    # a was created before c (b in between is not used): the smaller id is a's
    xlated = {"p": load(42) + load(40) + bytes.fromhex("b700000000000000 9500000000000000".replace(" ", "")),
              "q": bytes.fromhex("b700000000000000 9500000000000000".replace(" ", ""))}
    assert map_ids_by_creation(scenario, xlated) == {40: "a", 42: "c"}
    # one of the loads gone from the kernel's program: which id is which cannot be told
    assert map_ids_by_creation(scenario, {"p": load(42)}) == {}


def test_the_kernel_side_splits_the_image_by_function() -> None:
    from dataclasses import dataclass

    from bpfdiff.compare_jit import SymbolTable, kernel_side

    @dataclass
    class Loaded:
        name: str
        error: str | None
        xlated: bytes = b""
        jited: bytes = b""
        func_lens: tuple[int, ...] = ()
        ksyms: tuple[int, ...] = ()

    loaded = [Loaded("A", None, A_XLATED, b"\x90" * 5 + b"\xcc" * 3, (5, 3), (0x1000, 0x2000)),
              Loaded("B", "BPF_MOV uses reserved fields")]
    side = kernel_side(SCENARIO, loaded, SymbolTable([]))
    assert side.functions == {"A": (Function(0x1000, b"\x90" * 5), Function(0x2000, b"\xcc" * 3))}
    assert side.describe(0x2001) == "A/func1+0x1" and "B" not in side.xlated


def test_our_calls_are_named_by_the_kernel_function_they_stand_for() -> None:
    from bpfdiff import isa
    from bpfdiff.helpers import kernel_symbol

    assert kernel_symbol(isa.BPF_FUNC_map_lookup_elem) == "bpf_map_lookup_elem"
    assert kernel_symbol(isa.BPF_FUNC_tail_call) == "bpf_tail_call"
    # what the inlined hash lookup calls is a kernel function, not a helper
    assert kernel_symbol(isa.KERNEL_FUNC_htab_map_lookup_elem) == "__htab_map_lookup_elem"
