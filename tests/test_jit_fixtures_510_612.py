"""linux-5.10 and linux-6.12 profiles against the real Debian images (../shared/reference/real-kernels.md).

The seed program (``r3 = 0; r2 = prog_array; call bpf_tail_call; r0 = 1;
exit``) and its target (``r0 = 42; exit``) as bullseye's 5.10.223 and
trixie's 6.12.117 JIT them, with the slot empty, filled and deleted again.
The hex below is copied by hand from the real images; ``{map64}`` (the prog
array's address, checked to be ours) and ``{rel32}`` (the tail-call jump,
checked to land on the target's ``bpf_func`` plus the kernel's tail-call
offset at *our* load addresses) are the only holes.  No qemu needed.
"""

from __future__ import annotations

import re

import pytest
from bpfdiff.jit.poke import map_poke_run
from jit_loader import Loader

from bpfdiff import isa
from bpfdiff.isa import Insn, Program, lddw_pair
from bpfdiff.profiles import get_profile
from bpfdiff.scenario import MapDef

MAP_ADDR = 0x7888_8000_0040
MAPS = {"jmp_table": MapDef("jmp_table", "prog_array", 4, 4, 1)}
TARGET = Program("target", (Insn(0xB7, 0, 0, 0, 42), Insn(0x95)))
CALLER = Program("caller", (Insn(0xB7, 3, 0, 0, 0), *lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="jmp_table"),
                            Insn(0x85, 0, 0, 0, isa.BPF_FUNC_tail_call), Insn(0xB7, 0, 0, 0, 1), Insn(0x95)))

# real-kernels.md, "Images of the seed's program"
REAL = {
    "linux-5.10": {
        "entry": 0xB,
        "target": "6666666690 6690 55 4889e5 b82a000000 c9 c3",
        "empty": "6666666690 31c0 55 4889e5 50 31d2 48be{map64} 8b85fcffffff 83f820 7714 83c001 8985fcffffff "
                 "e906000000 58 6666666690 b801000000 c9 c3",
        "filled": "6666666690 31c0 55 4889e5 50 31d2 48be{map64} 8b85fcffffff 83f820 7714 83c001 8985fcffffff "
                  "6666666690 58 e9{rel32} b801000000 c9 c3",
    },
    "linux-6.12": {
        "entry": 0x10,
        "target": "f30f1efa 0f1f440000 0f1f00 55 4889e5 f30f1efa b82a000000 c9 c3 cc",
        "empty": "f30f1efa 0f1f440000 4831c0 55 4889e5 f30f1efa 4883f821 7706 50 4889e0 eb01 50 50 31d2 "
                 "48be{map64} 488b85f0ffffff 48833821 7310 e90b000000 48830001 58 58 0f1f440000 b801000000 c9 c3 cc",
        "filled": "f30f1efa 0f1f440000 4831c0 55 4889e5 f30f1efa 4883f821 7706 50 4889e0 eb01 50 50 31d2 "
                  "48be{map64} 488b85f0ffffff 48833821 7310 0f1f440000 48830001 58 58 e9{rel32} b801000000 c9 c3 cc",
    },
}


def match_image(expected: str, code: bytes) -> dict[str, bytes]:
    """Compare hex with {map64}/{rel32} holes; return the bytes found in the holes."""
    sizes = {"map64": 8, "rel32": 4}
    pattern = ""
    for part in re.split(r"(\{\w+\})", expected.replace(" ", "")):
        if part.startswith("{"):
            pattern += f"(?P<{part[1:-1]}>(?:[0-9a-f]{{2}}){{{sizes[part[1:-1]]}}})"
        else:
            pattern += re.escape(part)
    found = re.fullmatch(pattern, code.hex())
    assert found is not None, f"image differs:\n expected {expected.replace(' ', '')}\n      got {code.hex()}"
    return {name: bytes.fromhex(value) for name, value in found.groupdict().items()}


@pytest.mark.parametrize("profile", sorted(REAL))
def test_target_is_byte_for_byte_the_kernels(profile: str) -> None:
    loader = Loader(get_profile(profile), MAPS, MAP_ADDR)
    assert loader.image(loader.load(TARGET)).hex() == REAL[profile]["target"].replace(" ", "")


@pytest.mark.parametrize("profile", sorted(REAL))
def test_caller_empty_filled_deleted(profile: str) -> None:
    real = REAL[profile]
    loader = Loader(get_profile(profile), MAPS, MAP_ADDR)
    target = loader.load(TARGET)
    caller = loader.load(CALLER)
    assert caller.images[0].pokes, "the constant-key site is direct"
    empty = loader.image(caller)
    holes = match_image(real["empty"], empty)
    assert int.from_bytes(holes["map64"], "little") == MAP_ADDR

    # fill: site nop -> jmp target + X86_TAIL_CALL_OFFSET, bypass jmp -> nop
    loader.slots[0] = target
    assert map_poke_run([caller, target], "jmp_table", 0, None, target.bpf_func, loader.read, loader.write) == []
    filled = loader.image(caller)
    holes = match_image(real["filled"], filled)
    site = caller.images[0].pokes[0].tailcall_target
    assert filled[site - caller.bpf_func] == 0xE9
    assert site + 5 + int.from_bytes(holes["rel32"], "little", signed=True) == target.bpf_func + real["entry"]

    # delete: back to the empty image, byte for byte
    del loader.slots[0]
    assert map_poke_run([caller, target], "jmp_table", 0, target.bpf_func, None, loader.read, loader.write) == []
    assert loader.image(caller) == empty


@pytest.mark.parametrize("profile", sorted(REAL))
def test_loaded_while_the_slot_is_filled(profile: str) -> None:
    # bpf_tail_call_direct_fixup patches the site at load time: the filled image directly
    loader = Loader(get_profile(profile), MAPS, MAP_ADDR)
    target = loader.load(TARGET)
    loader.slots[0] = target
    caller = loader.load(CALLER)
    holes = match_image(REAL[profile]["filled"], loader.image(caller))
    site = caller.images[0].pokes[0].tailcall_target
    assert site + 5 + int.from_bytes(holes["rel32"], "little", signed=True) == target.bpf_func + REAL[profile]["entry"]


@pytest.mark.parametrize(("profile", "entry"), [("linux-5.10", 0xB), ("linux-6.12", 0x10), ("linux-6.1", 0xB)])
def test_tail_call_entry_is_where_the_prologue_skip_ends(profile: str, entry: int) -> None:
    # the tail call enters right after `mov rbp,rsp` -- on 6.12 on the second
    # endbr64, the indirect-branch landing pad: the caller's frame is reused
    profile_ = get_profile(profile)
    assert profile_.x86_tail_call_offset == entry
    target = Loader(profile_, MAPS, MAP_ADDR).load(TARGET).images[0].code
    assert target[entry - 3:entry].hex() == "4889e5"
    assert target[entry:entry + 4].hex() == ("f30f1efa" if profile_.jit_ibt else "b82a0000")


def test_5_10_reloads_the_counter_from_the_rounded_slot_ff672c67ee76() -> None:
    # real-kernels.md: on 5.10.223, with stack depth 4 (one 4-byte store at
    # fp-4), the counter is reloaded before a bpf-to-bpf call from -0x10(%rbp)
    # = -(round_up(4, 8) + 8): the build carries ff672c67ee76.
    prog = Program("p", (
        Insn(isa.BPF_ST | isa.BPF_MEM | isa.BPF_W, 10, 0, -4, 0),      # *(u32 *)(fp - 4) = 0
        Insn(isa.CALL_OPCODE, 0, isa.BPF_PSEUDO_CALL, 0, 2),            # call sub
        Insn(0xB7, 0, 0, 0, 0), Insn(0x95),
        Insn(0xB7, 3, 0, 0, 0), *lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="jmp_table"),   # sub:
        Insn(0x85, 0, 0, 0, isa.BPF_FUNC_tail_call), Insn(0xB7, 0, 0, 0, 0), Insn(0x95),
    ))
    main = Loader(get_profile("linux-5.10"), MAPS, MAP_ADDR).load(prog).images[0]
    assert main.stack_depth == 4 and main.tail_call_reachable
    reload = bytes.fromhex("488b85f0ffffff")                      # mov -0x10(%rbp),%rax
    call_at = main.code.index(reload) + len(reload)
    assert main.code[call_at] == 0xE8                              # right before the call
    assert main.code.startswith(bytes.fromhex("666666669031c0554889e54881ec0800000050"))
