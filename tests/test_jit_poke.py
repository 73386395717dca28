"""Text poking, the prog-array re-patch walk, and the verifier decisions behind poke sites.

Poke semantics are from arch/x86/net/bpf_jit_comp.c (__bpf_arch_text_poke) and
kernel/bpf/arraymap.c (prog_array_map_poke_run); the order of the two pokes on
a v5.10+ site is checked by recording writes.  The xlate cases check which
tail calls the verifier makes direct (record_func_map / record_func_key) and
the do_misc_fixups guard sequences, instruction by instruction.
"""

from __future__ import annotations

import pytest
from bpfdiff.jit.bpf_jit_comp import JitOptions
from bpfdiff.jit.poke import EBUSY, NOP5, PokeDescriptor, bpf_arch_text_poke, emit_patch, map_poke_run
from bpfdiff.jit.xlate import VerifierError, xlate

from bpfdiff import isa
from bpfdiff.isa import Insn, Program, lddw_pair
from bpfdiff.profiles import LINUX_5_5, LINUX_6_1, get_profile
from bpfdiff.scenario import MapDef

BASE = 0x1000


class Text:
    """A bytearray standing in for executable memory, recording every write."""

    def __init__(self, size: int = 0x100) -> None:
        self.buf = bytearray(b"\xcc" * size)
        self.writes: list[tuple[int, bytes]] = []

    def read(self, addr: int, n: int) -> bytes:
        return bytes(self.buf[addr - BASE:addr - BASE + n])

    def write(self, addr: int, data: bytes) -> None:
        self.writes.append((addr, data))
        self.buf[addr - BASE:addr - BASE + len(data)] = data


def jmp(site: int, target: int) -> bytes:
    return b"\xe9" + (target - site - 5).to_bytes(4, "little", signed=True)


def test_emit_patch_encodings() -> None:
    assert emit_patch(None, 0x1000) == NOP5 == bytes.fromhex("0f1f440000")
    assert emit_patch(0x1010, 0x1000).hex() == "e90b000000"
    assert emit_patch(0x1000, 0x1000, 0xE8).hex() == "e8fbffffff"


def test_text_poke_states() -> None:
    text = Text()
    site = BASE + 0x10
    text.write(site, NOP5)
    assert bpf_arch_text_poke(site, None, 0x5000, text.read, text.write) == 0
    assert text.read(site, 5) == jmp(site, 0x5000)
    assert bpf_arch_text_poke(site, 0x5000, 0x6000, text.read, text.write) == 0          # retarget
    assert text.read(site, 5) == jmp(site, 0x6000)
    assert bpf_arch_text_poke(site, 0x5000, None, text.read, text.write) == -EBUSY      # stale old
    assert text.read(site, 5) == jmp(site, 0x6000)
    count = len(text.writes)
    assert bpf_arch_text_poke(site, 0x6000, 0x6000, text.read, text.write) == 1         # already new
    assert len(text.writes) == count
    assert bpf_arch_text_poke(site, 0x6000, None, text.read, text.write) == 0
    assert text.read(site, 5) == NOP5


class Holder:
    """Something with images holding pokes, like a JitProgram."""

    def __init__(self, pokes: list[PokeDescriptor]) -> None:
        self.images = [type("Image", (), {"pokes": pokes})()]


def v61_site(text: Text, key: int = 0, stable: bool = True) -> PokeDescriptor:
    """A v6.1 site as the JIT leaves an empty slot: bypass = jmp over pops+site, site = nop5."""
    bypass, site = BASE + 0x20, BASE + 0x26
    poke = PokeDescriptor(map="pa", key=key, insn_idx=3, adj_off=11, tailcall_target=site,
                          tailcall_bypass=bypass, bypass_addr=site + 5, tailcall_target_stable=stable)
    text.write(bypass, jmp(bypass, site + 5))
    text.write(site, NOP5)
    text.writes.clear()
    return poke


def test_v61_fill_retarget_delete_order() -> None:
    text = Text()
    poke = v61_site(text)
    progs = [Holder([poke])]
    assert map_poke_run(progs, "pa", 0, None, 0x5000, text.read, text.write) == []
    # fill: the site gets its jmp first, then the bypass becomes a nop
    assert text.writes == [(poke.tailcall_target, jmp(poke.tailcall_target, 0x5000 + 11)),
                           (poke.tailcall_bypass, NOP5)]
    text.writes.clear()
    assert map_poke_run(progs, "pa", 0, 0x5000, 0x7000, text.read, text.write) == []
    assert text.writes == [(poke.tailcall_target, jmp(poke.tailcall_target, 0x7000 + 11))]
    text.writes.clear()
    assert map_poke_run(progs, "pa", 0, 0x7000, None, text.read, text.write) == []
    # delete: the bypass is re-armed before the site goes back to nop
    assert text.writes == [(poke.tailcall_bypass, jmp(poke.tailcall_bypass, poke.bypass_addr)),
                           (poke.tailcall_target, NOP5)]
    # deleting an empty slot again changes nothing and reports nothing
    text.writes.clear()
    assert map_poke_run(progs, "pa", 0, None, None, text.read, text.write) == []
    assert text.writes == []


def test_walk_skips_other_keys_maps_and_unstable_sites() -> None:
    text = Text()
    poke = v61_site(text, key=1)
    unstable = PokeDescriptor(map="pa", key=0, insn_idx=9, adj_off=11, tailcall_target=BASE + 0x80,
                              tailcall_bypass=BASE + 0x70, bypass_addr=BASE + 0x85)
    other_map = PokeDescriptor(map="other", key=0, insn_idx=9, adj_off=11, tailcall_target=BASE + 0x90,
                               tailcall_bypass=BASE + 0xA0, bypass_addr=BASE + 0x95, tailcall_target_stable=True)
    assert map_poke_run([Holder([poke, unstable, other_map])], "pa", 0, None, 0x5000, text.read, text.write) == []
    assert text.writes == []


def test_v55_site_alone() -> None:
    text = Text()
    site = BASE + 0x39
    text.write(site, NOP5)
    poke = PokeDescriptor(map="pa", key=0, insn_idx=3, adj_off=0x19, tailcall_target=site,
                          tailcall_target_stable=True)
    progs = [Holder([poke])]
    assert map_poke_run(progs, "pa", 0, None, 0x5000, text.read, text.write) == []
    assert text.read(site, 5) == jmp(site, 0x5000 + 0x19)
    assert map_poke_run(progs, "pa", 0, 0x5000, None, text.read, text.write) == []
    assert text.read(site, 5) == NOP5
    assert len(text.writes) == 3     # the initial nop, the jmp, the nop


def test_mismatched_site_reports_ebusy_and_writes_nothing() -> None:
    text = Text()
    poke = v61_site(text)
    problems = map_poke_run([Holder([poke])], "pa", 0, 0x5000, None, text.read, text.write)
    # the bypass (already a jmp: old slot claimed filled, expected nop) and the site both refuse
    assert len(problems) == 2 and all("-EBUSY" in p for p in problems)
    assert text.writes == []


@pytest.mark.parametrize("bug, old, new, site_target", [
    ("poke-skip-delete", 0x5000, None, 0x5000),
    ("poke-retarget-stale", 0x5000, 0x7000, 0x5000),
    ("", 0x5000, 0x7000, 0x7000),
])
def test_planted_walk_bugs(bug: str, old: int, new: int | None, site_target: int) -> None:
    text = Text()
    poke = v61_site(text)
    progs = [Holder([poke])]
    map_poke_run(progs, "pa", 0, None, old, text.read, text.write)
    map_poke_run(progs, "pa", 0, old, new, text.read, text.write, bugs=frozenset({bug} - {""}))
    assert text.read(poke.tailcall_target, 5) == jmp(poke.tailcall_target, site_target + 11)


# -- which tail calls the verifier makes direct ----------------------------------------------
MAPS = {"pa": MapDef("pa", "prog_array", 4, 4, 4), "pb": MapDef("pb", "prog_array", 4, 4, 4),
        "arr": MapDef("arr", "array", 4, 8, 4)}
TAIL_CALL = Insn(isa.CALL_OPCODE, 0, 0, 0, isa.BPF_FUNC_tail_call)
EXIT = Insn(isa.EXIT_OPCODE)


def load_map(reg: int, name: str) -> tuple[Insn, Insn]:
    return lddw_pair(reg, 0, src=isa.BPF_PSEUDO_MAP_FD, map=name)


def mov(reg: int, imm: int) -> Insn:
    return Insn(0xB7, reg, 0, 0, imm)


def tail_call_imms(insns: list[Insn], profile=LINUX_6_1, **options) -> list[int]:
    xl = xlate(Program("p", tuple(insns)), MAPS, profile, JitOptions(**options))
    return [i.imm for i in xl.insns if i.opcode == isa.TAIL_CALL_OPCODE]


def branchy(key_a: int, key_b: int, map_a: str = "pa", map_b: str = "pa") -> list[Insn]:
    """if r1 == 0 { r2 = map_a; r3 = key_a } else { r2 = map_b; r3 = key_b }; tail call; r0 = 0; exit"""
    return [Insn(isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K, 1, 0, 4, 0),
            *load_map(2, map_b), mov(3, key_b), Insn(isa.BPF_JMP | isa.BPF_JA, 0, 0, 3),
            *load_map(2, map_a), mov(3, key_a), TAIL_CALL, mov(0, 0), EXIT]


@pytest.mark.parametrize("insns, options, expected", [
    ([*load_map(2, "pa"), mov(3, 2), TAIL_CALL, mov(0, 0), EXIT], {}, [1]),
    ([*load_map(2, "pa"), mov(3, 4), TAIL_CALL, mov(0, 0), EXIT], {}, [0]),            # key >= max_entries
    ([*load_map(2, "pa"), Insn(0x61, 3, 1, 0), TAIL_CALL, mov(0, 0), EXIT], {}, [0]),  # key from memory
    ([*load_map(2, "pa"), mov(3, 2), TAIL_CALL, mov(0, 0), EXIT], {"force_indirect": True}, [0]),
    (branchy(1, 1), {}, [1]),                       # same key on both paths
    (branchy(1, 2), {}, [0]),                       # different keys: poisoned
    (branchy(1, 1, "pa", "pb"), {}, [0]),           # different maps: poisoned
    # r3 == 3 known on the fall-through of jne r3, 3 (r3 an unknown scalar: xdp_md.rx_queue_index;
    # a pointer compared with 3 would teach the verifier nothing)
    ([*load_map(2, "pa"), Insn(0x61, 3, 1, 16), Insn(isa.BPF_JMP | isa.BPF_JNE | isa.BPF_K, 3, 0, 2, 3),
      TAIL_CALL, mov(0, 0), EXIT], {}, [1]),
    ([*load_map(2, "pa"), Insn(0xBF, 3, 1), Insn(isa.BPF_JMP | isa.BPF_JNE | isa.BPF_K, 3, 0, 2, 3),
      TAIL_CALL, mov(0, 0), EXIT], {}, [0]),        # r3 the context pointer: reg_set_min_max skips pointers
    ([*load_map(2, "pa"), mov(3, 0), TAIL_CALL, mov(3, 1), TAIL_CALL, mov(0, 0), EXIT], {}, []),
    ([*load_map(2, "pa"), mov(3, 0), TAIL_CALL, *load_map(2, "pa"), mov(3, 1), TAIL_CALL, mov(0, 0), EXIT], {},
     [1, 2]),                                       # poke indices in program order
])
def test_direct_or_indirect(insns: list[Insn], options: dict, expected: list[int]) -> None:
    if not expected:
        # helper calls clobber r2: the second tail call has no map, which the verifier refuses;
        # the rewrite still happens and the site is indirect
        assert tail_call_imms(insns) == [1, 0]
        return
    assert tail_call_imms(insns, **options) == expected


def test_tail_call_through_an_array_map_is_refused() -> None:
    with pytest.raises(VerifierError, match="cannot pass map_type array"):
        tail_call_imms([*load_map(2, "arr"), mov(3, 0), TAIL_CALL, mov(0, 0), EXIT])


def test_seed_era_gives_tail_calling_programs_the_full_stack() -> None:
    insns = [*load_map(2, "pa"), mov(3, 0), TAIL_CALL, mov(0, 0), EXIT]
    for profile, depth in ((LINUX_5_5, 512), (LINUX_6_1, 0)):
        xl = xlate(Program("p", tuple(insns)), MAPS, profile, JitOptions())
        assert xl.subprogs[0].stack_depth == depth


# -- do_misc_fixups guard sequences --------------------------------------------------------------
def rewrite(insn: Insn) -> list[Insn]:
    xl = xlate(Program("p", (insn, EXIT)), MAPS, LINUX_6_1, JitOptions())
    assert xl.orig_pc[-1] == 1 and set(xl.orig_pc[:-1]) == {0}
    return xl.insns[:-1]


JNE64, JEQ64 = isa.BPF_JMP | isa.BPF_JNE, isa.BPF_JMP | isa.BPF_JEQ
JNE32, JEQ32 = isa.BPF_JMP32 | isa.BPF_JNE, isa.BPF_JMP32 | isa.BPF_JEQ
JA = isa.BPF_JMP | isa.BPF_JA
XOR32X, MOV32X = isa.BPF_ALU | isa.BPF_XOR | isa.BPF_X, isa.BPF_ALU | isa.BPF_MOV | isa.BPF_X


@pytest.mark.parametrize("insn, expected", [
    # 64-bit div: if (src != 0) goto +2; w_dst ^= w_dst; goto +1; dst /= src
    (Insn(0x3F, 1, 2), [Insn(JNE64, 2, 0, 2, 0), Insn(XOR32X, 1, 1), Insn(JA, 0, 0, 1), Insn(0x3F, 1, 2)]),
    (Insn(0x3C, 1, 2), [Insn(JNE32, 2, 0, 2, 0), Insn(XOR32X, 1, 1), Insn(JA, 0, 0, 1), Insn(0x3C, 1, 2)]),
    # 64-bit mod: if (src == 0) goto +1; dst %= src
    (Insn(0x9F, 1, 2), [Insn(JEQ64, 2, 0, 1, 0), Insn(0x9F, 1, 2)]),
    # 32-bit mod: the zero case still truncates dst (w_dst = w_dst)
    (Insn(0x9C, 1, 2), [Insn(JEQ32, 2, 0, 2, 0), Insn(0x9C, 1, 2), Insn(JA, 0, 0, 1), Insn(MOV32X, 1, 1)]),
    # sdiv by the constant -1: neg
    (Insn(0x37, 1, 0, 1, -1), [Insn(isa.BPF_ALU64 | isa.BPF_NEG, 1)]),
    (Insn(0x94, 1, 0, 1, -1), [Insn(isa.BPF_ALU | isa.BPF_MOV | isa.BPF_K, 1, 0, 0, 0)]),
    # sdiv by a register: AX = src; AX += 1; if AX > 1 goto op; if AX == 0 goto neg; dst = 0; neg; goto +1; op
    (Insn(0x3F, 1, 2, 1), [Insn(0xBF, isa.BPF_REG_AX, 2), Insn(0x07, isa.BPF_REG_AX, 0, 0, 1),
                           Insn(isa.BPF_JMP | isa.BPF_JGT, isa.BPF_REG_AX, 0, 4, 1),
                           Insn(JEQ64, isa.BPF_REG_AX, 0, 1, 0), Insn(0xB7, 1, 0, 0, 0),
                           Insn(isa.BPF_ALU64 | isa.BPF_NEG, 1), Insn(JA, 0, 0, 1), Insn(0x3F, 1, 2, 1)]),
])
def test_division_guards(insn: Insn, expected: list[Insn]) -> None:
    assert rewrite(insn) == expected


def test_jumps_are_retargeted_across_patches() -> None:
    # jump over a guarded division lands on the same instruction after it grows to 4 slots
    insns = (Insn(isa.BPF_JMP | isa.BPF_JEQ | isa.BPF_K, 1, 0, 1, 0), Insn(0x3F, 1, 2), mov(0, 0), EXIT)
    xl = xlate(Program("p", insns), MAPS, LINUX_6_1, JitOptions())
    assert xl.insns[0].off == 4 and xl.insns[5] == mov(0, 0)
    assert xl.orig_pc == [0, 1, 1, 1, 1, 2, 3]


SEED_TNUM = LINUX_5_5          # the seed era's verifier, bugs and all
SEED_FIXED = get_profile("linux-5.5+a657182a5c51")


@pytest.mark.parametrize("key, profile, expected", [
    (4, LINUX_6_1, [1]), (5, LINUX_6_1, [0]), (7, LINUX_6_1, [0]),
    (4, SEED_TNUM, [1]), (5, SEED_TNUM, [1]), (7, SEED_TNUM, [1]), (8, SEED_TNUM, [0]), (5, SEED_FIXED, [0]),
])
def test_key_range_check_per_era(key: int, profile, expected: list[int]) -> None:
    """max_entries 5: tnum_range(0, 4) has mask 7, so the seed era also made keys 5..7 direct."""
    maps = dict(MAPS, pa=MapDef("pa", "prog_array", 4, 4, 5))
    insns = [*load_map(2, "pa"), mov(3, key), TAIL_CALL, mov(0, 0), EXIT]
    xl = xlate(Program("p", tuple(insns)), maps, profile, JitOptions())
    assert [i.imm for i in xl.insns if i.opcode == isa.TAIL_CALL_OPCODE] == expected


def test_jump_into_lddw_is_refused() -> None:
    insns = [Insn(isa.BPF_JMP | isa.BPF_JA, 0, 0, 1), *lddw_pair(0, 5), EXIT]
    with pytest.raises(VerifierError, match="middle of ldimm64"):
        xlate(Program("p", tuple(insns)), MAPS, LINUX_6_1, JitOptions())
