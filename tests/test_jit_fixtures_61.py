"""linux-6.1 profile against real Debian 6.1 JIT images (tests/fixtures/jit/linux-6.1-images.txt).

The expected bytes were copied by hand from the images captured on the real
kernel; only the prog-array address (checked to be ``env.map_addr``) and the
tail-call displacement (checked to reach ``B.bpf_func + 11`` at *our* load
addresses) are masked.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from bpfdiff.jit.bpf_jit_comp import JitOptions
from bpfdiff.jit.dump import jited_lines
from bpfdiff.jit.engine import JitEngine
from bpfdiff.jit.poke import EBUSY, NOP5, bpf_arch_text_poke, map_poke_run
from jit_loader import Loader as TextLoader

from bpfdiff import isa
from bpfdiff.isa import Insn, Program, lddw_pair
from bpfdiff.profiles import LINUX_6_1
from bpfdiff.scenario import PROG_RAW, Delete, MapDef, Run, Scenario, Update, key_u32

FIXTURES = Path(__file__).parent / "fixtures" / "jit" / "linux-6.1-images.txt"
MAP_ADDR = 0x7888_8000_0040
X86_TAIL_CALL_OFFSET = 11
MAPS = {"jmp_table": MapDef("jmp_table", "prog_array", 4, 4, 1)}

PROG_B = Program("B", (Insn(0xB7, 0, 0, 0, 42), Insn(0x95)))
PROG_A = Program("A", (*lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="jmp_table"), Insn(0xB7, 3, 0, 0, 0),
                       Insn(0x85, 0, 0, 0, isa.BPF_FUNC_tail_call), Insn(0xB7, 0, 0, 0, 1), Insn(0x95)))


def load_fixtures() -> dict[str, str]:
    images = {}
    for line in FIXTURES.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, hexes = line.partition(":")
        images[name.strip()] = hexes.replace(" ", "").strip()
    return images


def match_image(expected: str, code: bytes) -> dict[str, bytes]:
    """Compare hex with {map64}/{rel32} holes; return the bytes found in the holes."""
    sizes = {"map64": 8, "rel32": 4}
    pattern = ""
    for part in re.split(r"(\{\w+\})", expected):
        if part.startswith("{"):
            name = part[1:-1]
            pattern += f"(?P<{name}>(?:[0-9a-f]{{2}}){{{sizes[name]}}})"
        else:
            pattern += re.escape(part)
    found = re.fullmatch(pattern, code.hex())
    assert found is not None, f"image differs:\n expected {expected}\n      got {code.hex()}"
    return {name: bytes.fromhex(value) for name, value in found.groupdict().items()}


def Loader() -> TextLoader:  # noqa: N802 - reads like the class it stands for
    return TextLoader(LINUX_6_1, MAPS, MAP_ADDR)


def rel32_target(site: int, rel: bytes) -> int:
    return site + 5 + int.from_bytes(rel, "little", signed=True)


def test_program_b_is_byte_for_byte_the_kernels() -> None:
    fixtures = load_fixtures()
    jited = Loader().load(PROG_B)
    assert jited.images[0].code.hex() == fixtures["B"]
    assert jited.images[0].tail_call_cnt_off is None


def test_program_a_xlated_matches_bpftool() -> None:
    jited = Loader().load(PROG_A)
    dumped = isa.encode(jited.xlate_result.dump_insns(), map_fd={"jmp_table": 1})
    assert dumped.hex() == load_fixtures()["A-xlated"].replace(" ", "")
    # internally the call became the direct BPF_TAIL_CALL with poke index 0 + 1
    assert jited.xlated[3] == Insn(isa.TAIL_CALL_OPCODE, imm=1)


def test_program_a_empty_slot_update_delete() -> None:
    fixtures = load_fixtures()
    loader = Loader()
    prog_b = loader.load(PROG_B)
    prog_a = loader.load(PROG_A)
    holes = match_image(fixtures["A-empty"], loader.image(prog_a))
    assert int.from_bytes(holes["map64"], "little") == MAP_ADDR
    image = prog_a.images[0]
    assert image.tail_call_cnt_off == -4
    [poke] = image.pokes
    assert poke.tailcall_target_stable and (poke.map, poke.key) == ("jmp_table", 0)
    # bpftool: 2c: jmpq (bypass), 31: pop %rax, 32: nopl (site), 37: out
    assert poke.tailcall_bypass - image.base == 0x2C and poke.tailcall_target - image.base == 0x32
    assert poke.bypass_addr - image.base == 0x37

    loader.slots[0] = prog_b
    assert map_poke_run([prog_a, prog_b], "jmp_table", 0, None, prog_b.bpf_func, loader.read, loader.write) == []
    holes = match_image(fixtures["A-updated"], loader.image(prog_a))
    assert rel32_target(poke.tailcall_target, holes["rel32"]) == prog_b.bpf_func + X86_TAIL_CALL_OFFSET

    del loader.slots[0]
    assert map_poke_run([prog_a, prog_b], "jmp_table", 0, prog_b.bpf_func, None, loader.read, loader.write) == []
    match_image(fixtures["A-deleted"], loader.image(prog_a))
    assert loader.image(prog_a) == prog_a.images[0].code


def test_load_with_filled_slot_is_the_updated_image() -> None:
    """bpf_tail_call_direct_fixup: loading A after B is in slot 0 gives the updated bytes at once."""
    loader = Loader()
    prog_b = loader.load(PROG_B)
    loader.slots[0] = prog_b
    prog_a = loader.load(PROG_A)
    holes = match_image(load_fixtures()["A-updated"], prog_a.images[0].code)
    [poke] = prog_a.images[0].pokes
    assert rel32_target(poke.tailcall_target, holes["rel32"]) == prog_b.bpf_func + X86_TAIL_CALL_OFFSET


def test_poke_of_a_site_holding_unexpected_bytes_is_ebusy() -> None:
    loader = Loader()
    prog_b = loader.load(PROG_B)
    prog_a = loader.load(PROG_A)
    [poke] = prog_a.images[0].pokes
    # the site is a nop: claiming it jumps to B must be refused, and nothing written
    before = loader.image(prog_a)
    assert bpf_arch_text_poke(poke.tailcall_target, prog_b.bpf_func + 11, None, loader.read, loader.write) == -EBUSY
    assert loader.image(prog_a) == before
    # already in the wanted state: a no-op (1)
    assert bpf_arch_text_poke(poke.tailcall_target, None, None, loader.read, loader.write) == 1
    problems = map_poke_run([prog_a], "jmp_table", 0, prog_b.bpf_func, prog_b.bpf_func, loader.read, loader.write)
    assert len(problems) == 1 and "-EBUSY" in problems[0]
    assert loader.read(poke.tailcall_target, 5) == NOP5


@pytest.mark.parametrize("bug, offset, expected", [
    ("", 0x21, "7314"),                          # cmp eax, 33; jae out
    ("tail-call-limit-ja", 0x21, "7714"),        # planted: ja
])
def test_tail_call_limit_jcc(bug: str, offset: int, expected: str) -> None:
    options = JitOptions(bugs=frozenset({bug} - {""}))
    code = Loader().load(PROG_A, options).images[0].code
    assert code[offset:offset + 2].hex() == expected


# The indirect sequence as a v5.16-era kernel emitted it (bpftool listing of selftest tailcall_6 in
# Daniel Borkmann's 2021 patch "bpf, x86: Fix ... tail call count", lore.kernel.org): offsets from
# `mov %edx,%edx`.  That kernel still had MAX_TAIL_CALL_CNT 32 with `ja` and an inline retpoline;
# 6.1 has 33 with `jae` and jumps to __x86_indirect_thunk_rcx, the rest is unchanged.
INDIRECT_2021 = [
    (0x00, "mov", "%edx,%edx"), (0x02, "cmp", "%edx,0x24(%rsi)"), (0x05, "jbe", "OUT"),
    (0x07, "mov", "-0x4(%rbp),%eax"), (0x0D, "cmp", "$0x21,%eax"), (0x10, "jae", "OUT"),
    (0x12, "add", "$0x1,%eax"), (0x15, "mov", "%eax,-0x4(%rbp)"), (0x1B, "mov", "0x110(%rsi,%rdx,8),%rcx"),
    (0x23, "test", "%rcx,%rcx"), (0x26, "je", "OUT"), (0x28, "pop", "%rax"), (0x29, "mov", "0x30(%rcx),%rcx"),
    (0x2D, "add", "$0xb,%rcx"),
]

DYNAMIC_KEY = Program("dyn", (*lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="jmp_table"), Insn(0x61, 3, 1, 0),
                              Insn(0x85, 0, 0, 0, isa.BPF_FUNC_tail_call), Insn(0xB7, 0, 0, 0, 1), Insn(0x95)))


@pytest.mark.parametrize("thunk, last", [
    (None, [(0x31, "jmpq", "*%rcx"), (0x33, "int3", "")]),
    (0x7FFF_8200_0000, [(0x31, "jmpq", "THUNK")]),
])
def test_indirect_tail_call_sequence(thunk: int | None, last: list[tuple[int, str, str]]) -> None:
    loader = Loader()
    if thunk is not None:
        loader.env.indirect_thunk_addr = lambda reg: thunk + 32 * reg
    jited = loader.load(DYNAMIC_KEY)
    image = jited.images[0]
    assert image.pokes == [] and jited.xlated[3] == Insn(isa.TAIL_CALL_OPCODE)
    start = image.addrs[3]
    lines = [(line.offset - start, line.mnemonic, line.operands) for line in jited_lines(image.code)
             if image.addrs[3] <= line.offset < image.addrs[4]]
    out = image.addrs[4] - start
    want = [(o, m, ops.replace("OUT", f"0x{out + start:016x}")) for o, m, ops in INDIRECT_2021 + last]
    if thunk is not None:
        target = thunk + 32 * 1 - image.base
        want[-1] = (0x31, "jmpq", f"0x{target & (2**64 - 1):016x}")
    assert lines == want


def test_fixture_images_through_the_engine() -> None:
    """The same three states, produced by the JIT engine's own map updates on unicorn memory."""
    fixtures = load_fixtures()
    scenario = Scenario(prog_type=PROG_RAW, maps=tuple(MAPS.values()), programs=(PROG_B, PROG_A),
                        events=(Run("A"), Update("jmp_table", key_u32(0), "B"), Run("A"),
                                Delete("jmp_table", key_u32(0)), Run("A")))
    engine = JitEngine(profile="linux-6.1")
    engine.start(scenario)
    a = engine.programs["A"]
    b = engine.programs["B"]
    [poke] = a.images[0].pokes
    states = ["A-empty", "A-updated", "A-updated", "A-deleted", "A-deleted"]
    results = []
    for index, (event, state) in enumerate(zip(scenario.events, states, strict=True)):
        outcome = engine.apply(index, event)
        assert outcome.violations == ()
        holes = match_image(fixtures[state], engine.image_bytes("A"))
        if "rel32" in holes:
            assert rel32_target(poke.tailcall_target, holes["rel32"]) == b.bpf_func + X86_TAIL_CALL_OFFSET
        if outcome.run is not None:
            results.append((outcome.run.r0, outcome.run.tail_calls))
    assert results == [(1, 0), (42, 1), (1, 0)]
    assert engine.image_bytes("B").hex() == fixtures["B"]
