"""linux-5.5 profile against the seed commit's bpftool listings (tests/fixtures/jit/linux-5.5-*.txt).

The expected listings were copied by hand from the commit message of "bpf, x86:
Emit patchable direct jump as tail call": offset and mnemonic of every
instruction, operands wherever they do not depend on load addresses.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bpfdiff.jit.bpf_jit_comp import JitOptions, JitProgram
from bpfdiff.jit.dump import format_jited, jited_lines
from bpfdiff.jit.poke import map_poke_run
from jit_loader import Loader as TextLoader

from bpfdiff import isa
from bpfdiff.isa import Insn, Program, lddw_pair
from bpfdiff.profiles import LINUX_5_5
from bpfdiff.scenario import MapDef

FIXTURES = Path(__file__).parent / "fixtures" / "jit"
MAP_ADDR = 0x7888_8000_0080
PROLOGUE_SIZE = 0x19
MAPS = {"jmp_table": MapDef("jmp_table", "prog_array", 4, 4, 1)}

# the seed's program: r3 = 0; r2 = map[id:526]; call bpf_tail_call#12; r0 = 1; exit
SEED = Program("seed", (Insn(0xB7, 3, 0, 0, 0), *lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="jmp_table"),
                        Insn(0x85, 0, 0, 0, isa.BPF_FUNC_tail_call), Insn(0xB7, 0, 0, 0, 1), Insn(0x95)))
TARGET = Program("target", (Insn(0xB7, 0, 0, 0, 7), Insn(0x95)))


def expected_listing(name: str) -> list[tuple[int, str, str]]:
    rows = []
    for line in (FIXTURES / name).read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split(None, 2)
        rows.append((int(parts[0], 16), parts[1], parts[2] if len(parts) > 2 else ""))
    return rows


def assert_listing(code: bytes, name: str) -> list[tuple[int, str, str]]:
    got = [(line.offset, line.mnemonic, line.operands) for line in jited_lines(code)]
    want = expected_listing(name)
    assert [(o, m) for o, m, _ in got] == [(o, m) for o, m, _ in want], format_jited(code)
    for (offset, _, operands), (_, _, expected) in zip(got, want, strict=True):
        if expected != "*":
            assert operands == expected, f"at 0x{offset:x}"
    return got


def Loader() -> TextLoader:  # noqa: N802 - reads like the class it stands for
    return TextLoader(LINUX_5_5, MAPS, MAP_ADDR)


def movabs_operand(lines: list[tuple[int, str, str]]) -> int:
    [(_, _, operands)] = [row for row in lines if row[0] == 0x1B]
    return int(operands.split(",")[0].lstrip("$"), 16)


def jmpq_target(jited: JitProgram, code: bytes) -> int:
    site = jited.images[0].pokes[0].tailcall_target
    return site + 5 + int.from_bytes(code[0x3A:0x3E], "little", signed=True)


def test_direct_site_after_jit_update_delete() -> None:
    loader = Loader()
    target = loader.load(TARGET)
    loader.slots[0] = target
    seed = loader.load(SEED)
    image = seed.images[0]
    assert len(image.code) == 0x4D and image.stack_depth == 512
    lines = assert_listing(image.code, "linux-5.5-seed-after.txt")
    assert len(lines) == 25 and movabs_operand(lines) == MAP_ADDR
    [poke] = image.pokes
    assert poke.tailcall_target - image.base == 0x39 and poke.tailcall_bypass is None and poke.ip_stable
    assert jmpq_target(seed, image.code) == target.bpf_func + PROLOGUE_SIZE
    assert image.tail_call_cnt_off == -0x224

    # delete: the site goes back to nopl
    loader.slots.pop(0)
    assert map_poke_run([seed], "jmp_table", 0, target.bpf_func, None, loader.read, loader.write) == []
    now = loader.read(image.base, len(image.code))
    assert_listing(now, "linux-5.5-seed-deleted.txt")

    # update again: jmpq to the target + PROLOGUE_SIZE
    loader.slots[0] = target
    assert map_poke_run([seed], "jmp_table", 0, None, target.bpf_func, loader.read, loader.write) == []
    now = loader.read(image.base, len(image.code))
    assert_listing(now, "linux-5.5-seed-after.txt")
    assert jmpq_target(seed, now) == target.bpf_func + PROLOGUE_SIZE


def test_load_with_empty_slot_has_the_nop_site() -> None:
    seed = Loader().load(SEED)
    assert_listing(seed.images[0].code, "linux-5.5-seed-deleted.txt")


def test_indirect_with_retpoline_is_the_before_listing() -> None:
    seed = Loader().load(SEED, JitOptions(retpoline=True, force_indirect=True))
    image = seed.images[0]
    lines = assert_listing(image.code, "linux-5.5-seed-before.txt")
    assert len(lines) == 38 and len(image.code) == 0x75 and image.pokes == []
    retpoline = [row for row in lines if 0x55 <= row[0] <= 0x65]
    assert [m for _, m, _ in retpoline] == ["callq", "pause", "lfence", "jmp", "mov", "retq"]


def test_indirect_without_retpoline_jumps_through_rax() -> None:
    seed = Loader().load(SEED, JitOptions(retpoline=False, force_indirect=True))
    lines = [(line.offset, line.mnemonic, line.operands) for line in jited_lines(seed.images[0].code)]
    assert (0x55, "jmpq", "*%rax") in lines
    # the out label moved up to 0x57 (mov $0x1,%eax): every bail-out jumps there
    assert (0x2A, "jbe", "0x0000000000000057") in lines and (0x57, "mov", "$0x1,%eax") in lines
    assert lines[-1] == (0x65, "retq", "")


@pytest.mark.parametrize("bug, site_jcc", [("", "ja"), ("tail-call-limit-ja", "ja")])
def test_seed_limit_is_ja_32(bug: str, site_jcc: str) -> None:
    seed = Loader().load(SEED, JitOptions(bugs=frozenset({bug} - {""})))
    lines = {offset: (mnemonic, operands) for offset, mnemonic, operands in
             ((line.offset, line.mnemonic, line.operands) for line in jited_lines(seed.images[0].code))}
    assert lines[0x2B] == ("cmp", "$0x20,%eax") and lines[0x2E][0] == site_jcc


def test_tail_call_offset_bug_misses_the_prologue_end() -> None:
    loader = Loader()
    target = loader.load(TARGET)
    loader.slots[0] = target
    seed = loader.load(SEED, JitOptions(bugs=frozenset({"tail-call-offset"})))
    assert jmpq_target(seed, seed.images[0].code) == target.bpf_func + PROLOGUE_SIZE + 1


def test_xlated_listing_is_the_seed_commits() -> None:
    """`bpftool p d x i 1655` in the seed commit (map id 526)."""
    seed = Loader().load(SEED)
    text = seed.xlate_result.format(map_id=lambda name: 526)
    assert text.splitlines() == [
        "   0: (b7) r3 = 0",
        "   1: (18) r2 = map[id:526]",
        "   3: (85) call bpf_tail_call#12",
        "   4: (b7) r0 = 1",
        "   5: (95) exit",
    ]
