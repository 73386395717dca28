"""Text patching under unicorn: a poked site only takes effect if the translation cache is dropped.

unicorn 2.1 keeps translated blocks across ``mem_write``.  These tests prove
(a) that this is so -- a plain write leaves the old code running, which is
why the flush exists -- and (b) that ``Emulator.write_text``, the path every
poke takes, makes the new bytes run.  Hand-assembled x86 (Intel SDM):

    0f 1f 44 00 00      nopl 0x0(%rax,%rax,1)    (nop5, the empty poke site)
    e9 <rel32>          jmp rel32                (the filled site)
    b8 <imm32>          mov eax, imm32
    c3                  ret
"""

from __future__ import annotations

import pytest
from bpfdiff.jit.emulator import MEM_END, SENTINEL, Emulator, EntryPoint
from unicorn.x86_const import UC_X86_REG_RBX, UC_X86_REG_RIP

from bpfdiff.engine import EXIT, FAULT, FAULT_INVALID, FAULT_MEMORY, TIMEOUT
from bpfdiff.helpers import CLOBBER_VALUES

NOP5 = bytes.fromhex("0f1f440000")
RET = b"\xc3"


def mov_eax(value: int) -> bytes:
    return b"\xb8" + value.to_bytes(4, "little")


def jmp_rel32(site: int, target: int) -> bytes:
    return b"\xe9" + (target - (site + 5)).to_bytes(4, "little", signed=True)


@pytest.fixture(scope="module")
def emu() -> Emulator:
    return Emulator(x86_tail_call_offset=0)


def load(emu: Emulator, name: str, code: bytes) -> EntryPoint:
    base = emu.alloc_image(len(code))
    emu.install_image(base, code, name, lambda addr: None)
    entry = EntryPoint(name, base, base + 0x1000, base + 0x1000, None)   # tail entry and body out of the way
    emu.add_entry_point(entry)
    return entry


def patched_program(emu: Emulator) -> tuple[EntryPoint, EntryPoint, int]:
    """caller: [site: nop5] mov eax,1; ret      target: mov eax,2; ret"""
    emu.reset()
    target = load(emu, "target", mov_eax(2) + RET)
    caller = load(emu, "caller", NOP5 + mov_eax(1) + RET)
    return caller, target, caller.bpf_func


def test_plain_write_leaves_the_old_translation_running(emu: Emulator) -> None:
    caller, target, site = patched_program(emu)
    assert emu.run(caller, b"", 100).rax == 1
    emu.write(site, jmp_rel32(site, target.bpf_func))
    assert emu.read(site, 5) == jmp_rel32(site, target.bpf_func)
    # The bytes changed, but unicorn still runs the block it translated before.
    assert emu.run(caller, b"", 100).rax == 1


def test_write_text_makes_the_patched_site_run(emu: Emulator) -> None:
    caller, target, site = patched_program(emu)
    assert emu.run(caller, b"", 100).rax == 1
    emu.write_text(site, jmp_rel32(site, target.bpf_func))
    assert emu.run(caller, b"", 100).rax == 2
    emu.write_text(site, NOP5)             # and back, as a delete does
    assert emu.run(caller, b"", 100).rax == 1


def test_reset_drops_translations_of_reused_image_addresses(emu: Emulator) -> None:
    emu.reset()
    first = load(emu, "p", mov_eax(7) + RET)
    assert emu.run(first, b"", 100).rax == 7
    emu.reset()
    second = load(emu, "p", mov_eax(8) + RET)
    assert second.bpf_func == first.bpf_func      # same address, new code
    assert emu.run(second, b"", 100).rax == 8


def test_helper_call_returns_into_the_image_and_poisons_arguments(emu: Emulator) -> None:
    emu.reset()
    calls = []

    def handler(helper_id: int, r1: int, r2: int, r3: int, r4: int, r5: int) -> int:
        calls.append((helper_id, r1, r2, r3, r4, r5))
        return 0x1234

    emu.helper_handler = handler
    # mov edx,3; mov ecx,4; mov r8d,5; call helper 7; mov rbx,rdi (R1 after call); ret
    body = b"\xba\x03\x00\x00\x00" + b"\xb9\x04\x00\x00\x00" + b"\x41\xb8\x05\x00\x00\x00"
    base = emu.alloc_image(64)
    call_at = base + len(body)
    code = body + b"\xe8" + (emu.helper_addr(7) - (call_at + 5)).to_bytes(4, "little", signed=True)
    code += b"\x48\x89\xfb" + RET
    emu.install_image(base, code, "h", lambda addr: None)
    entry = EntryPoint("h", base, base + 0x1000, base + 0x1000, None)
    emu.add_entry_point(entry)
    out = emu.run(entry, b"abc", 100)
    assert out.exit == EXIT and out.rax == 0x1234
    assert calls == [(7, MEM_END - 3, 3, 3, 4, 5)]   # R1 = ctx, R2 = len(ctx)
    assert emu.uc.reg_read(UC_X86_REG_RBX) == CLOBBER_VALUES[1]
    assert out.trace == ["h"]


def test_faults_and_timeouts_are_results_not_exceptions(emu: Emulator) -> None:
    emu.reset()
    # mov al,[rdi+3] reads the 4th byte of a 3-byte context: past MEM_END, unmapped
    over = load(emu, "over", b"\x8a\x47\x03" + RET)
    out = emu.run(over, b"abc", 100)
    assert (out.exit, out.fault_kind, out.fault_prog) == (FAULT, FAULT_MEMORY, "over")
    # mov al,[rdi-1]: in the same page as the context, caught by the slack hook
    under = load(emu, "under", b"\x8a\x47\xff" + RET)
    out = emu.run(under, b"abc", 100)
    assert (out.exit, out.fault_kind) == (FAULT, FAULT_MEMORY)
    assert emu.run(under, b"", 100).fault_kind == FAULT_MEMORY
    inside = load(emu, "inside", b"\x0f\xb6\x47\x02" + RET)   # movzx eax, byte [rdi+2]
    out = emu.run(inside, b"abc", 100)
    assert (out.exit, out.rax) == (EXIT, ord("c"))
    ud2 = load(emu, "ud2", b"\x0f\x0b")
    assert emu.run(ud2, b"", 100).fault_kind == FAULT_INVALID
    spin = load(emu, "spin", b"\xeb\xfe")                      # jmp .
    assert emu.run(spin, b"", 10).exit == TIMEOUT


def test_runs_end_at_the_sentinel(emu: Emulator) -> None:
    emu.reset()
    entry = load(emu, "r", mov_eax(5) + RET)
    emu.run(entry, b"", 100)
    assert emu.uc.reg_read(UC_X86_REG_RIP) == SENTINEL


SEED = """
-- maps
jt prog_array key_size=4 value_size=4 max_entries=1
-- prog target
mov %r0, 42
exit
-- prog caller
mov %r3, 0
lddw %r2, map:jt
call 12
mov %r0, 1
exit
-- events
update jt 0 prog:target
run caller mem=00 00 00 00 00 00 00 00 00 00 00 00 00 00
delete jt 0
run caller mem=00 00 00 00 00 00 00 00 00 00 00 00 00 00
"""


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.5"])
def test_engine_run_delete_run_sees_the_repatched_site(profile: str) -> None:
    from bpfdiff.jit.engine import JitEngine

    from bpfdiff.scenario_text import parse_scenario

    outcomes = JitEngine(profile=profile).execute(parse_scenario(SEED))
    assert [o.run.r0 for o in outcomes if o.run] == [42, 1]
    assert [o.run.trace for o in outcomes if o.run] == [("caller", "target"), ("caller",)]


def test_engine_without_the_flush_would_run_the_stale_jump(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine-level test above fails when pokes do not drop translations: it can catch the regression."""
    from bpfdiff.jit.engine import JitEngine

    from bpfdiff.scenario_text import parse_scenario

    engine = JitEngine()
    monkeypatch.setattr(engine.emu, "write_text", engine.emu.write)   # pokes without ctl_remove_cache
    outcomes = engine.execute(parse_scenario(SEED))
    assert outcomes[2].violations == ()                    # the bytes were re-patched...
    assert [o.run.r0 for o in outcomes if o.run] == [42, 42]   # ...but the cached jmp still ran


def test_text_is_read_only_and_data_is_not_executable(emu: Emulator) -> None:
    from bpfdiff.jit.emulator import DATA_BASE, HELPER_BASE

    emu.reset()
    helper_before = emu.read(HELPER_BASE, 8)
    # movabs rax, HELPER_BASE; mov [rax], rax: a wild write into kernel text
    wild = load(emu, "wild", b"\x48\xb8" + HELPER_BASE.to_bytes(8, "little") + b"\x48\x89\x00" + RET)
    out = emu.run(wild, b"", 100)
    assert (out.exit, out.fault_kind) == (FAULT, FAULT_MEMORY)
    assert emu.read(HELPER_BASE, 8) == helper_before
    data = emu.alloc_data(8)
    emu.write(data, RET)
    assert DATA_BASE <= data
    # movabs rax, data; jmp rax: executing a kernel object
    jump = load(emu, "jump", b"\x48\xb8" + data.to_bytes(8, "little") + b"\xff\xe0")
    assert emu.run(jump, b"", 100).fault_kind == FAULT_INVALID
