"""linux-6.12 and linux-5.10 against fixtures captured from Debian's real kernels (no qemu needed).

``tests/fixtures/kernel/capture/<stem>.<profile>.json`` were written by
``bpfdiff kernel capture tests/fixtures/kernel/capture/*.scn --profile P -o
tests/fixtures/kernel/capture`` on trixie's 6.12.117 and bullseye's 5.10.223:
the kernel's xlated programs and JIT images after loading and after every
event, and each event's outcome.  Our JIT engine must reproduce every image
byte for byte (load addresses aside, each resolved to the same map, kernel
function or program + offset) and every outcome the kernel observes.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bpfdiff.jit.bpf_jit_comp import emit_ldx, emit_mov_imm32, emit_mov_imm64, emit_mov_percpu
from bpfdiff.jit.emulator import PAGE, Emulator
from unicorn.x86_const import UC_X86_REG_RAX

from bpfdiff import isa
from bpfdiff.kernel_fixtures import check_fixture, load_fixture
from bpfdiff.profiles import get_profile

CAPTURED = Path(__file__).parent / "fixtures" / "kernel" / "capture"
FIXTURES = sorted(CAPTURED.glob("*.json"))
KERNELS = {"linux-6.12": "linux-image-6.12.117+deb13-amd64", "linux-5.10": "linux-image-5.10.0-32-amd64"}


def fixture(stem: str, profile: str) -> dict:
    return json.loads((CAPTURED / f"{stem}.{profile}.json").read_text())


def run_r0s(data: dict) -> list[int]:
    return [s["outcome"]["run"]["r0"] for s in data["states"] if s["outcome"] and s["outcome"]["kind"] == "run"]


# scenario -> the kernels it was captured on (movsx is ISA v4: 6.6+)
CAPTURED_ON = {"seed": KERNELS, "indirect": KERNELS, "hierarchy": KERNELS, "rewrites": KERNELS,
               "cpu_key": KERNELS, "movsx_key": ("linux-6.12",)}


def test_every_scenario_is_captured() -> None:
    assert sorted(p.stem for p in CAPTURED.glob("*.scn")) == sorted(CAPTURED_ON)
    assert len(FIXTURES) == sum(len(profiles) for profiles in CAPTURED_ON.values())
    for stem, profiles in CAPTURED_ON.items():
        for profile in profiles:
            data, _ = load_fixture(CAPTURED / f"{stem}.{profile}.json")
            assert data["kernel"] == KERNELS[profile] and data["profile"] == profile
            assert data["scenario"] == (CAPTURED / f"{stem}.scn").read_text()


@pytest.mark.parametrize("path", FIXTURES, ids=[p.name for p in FIXTURES])
def test_our_profile_reproduces_the_real_kernel(path: Path) -> None:
    assert check_fixture(path) == []


@pytest.mark.parametrize("profile", sorted(KERNELS))
def test_what_the_kernels_did(profile: str) -> None:
    # facts of the captures themselves (real-kernels.md): the seed's site empty, filled, deleted
    assert run_r0s(fixture("seed", profile)) == [1, 42, 1]
    assert run_r0s(fixture("indirect", profile)) == [0xA, 0xA, 0xB, 2, 2, 2, 1]
    # the hierarchy: 33 entries of the chain on 6.12.117 (tail_call_cnt_ptr), 66 on 5.10.223 (by value)
    assert run_r0s(fixture("hierarchy", profile)) == [33 if profile == "linux-6.12" else 66]
    # ingress_ifindex 1 (the test run's loopback), CPU 0, rx queue 0
    assert run_r0s(fixture("rewrites", profile)) == [1, 1]


def direct_sites(data: dict, prog: str) -> int:
    """1 when the program's one tail-call site is direct in the captured image after loading: no
    indirect sequence (``mov %edx,%edx; cmp %edx,0x24(%rsi)``, the bounds check); 0 otherwise."""
    code = bytes.fromhex(data["states"][0]["programs"][prog]["functions"][0]["code"])
    return 0 if bytes.fromhex("89d2395624") in code else 1


@pytest.mark.parametrize(("profile", "direct"), [("linux-6.12", 1), ("linux-5.10", 0)])
def test_a_key_from_the_cpu_id(profile: str, direct: int) -> None:
    # 6.12.117 bounds bpf_get_smp_processor_id to [0, nr_cpu_ids - 1]: with one CPU the key is 0
    data = fixture("cpu_key", profile)
    assert direct_sites(data, "p") == direct
    assert get_profile(profile).verifier_cpu_id_range == bool(direct)
    assert run_r0s(data) == [0, 7]


def test_a_key_through_movsx_is_a_constant() -> None:
    data = fixture("movsx_key", "linux-6.12")
    assert direct_sites(data, "p") == 1 and run_r0s(data) == [9]


def test_the_seed_site_changes_with_the_slot() -> None:
    # the captured images themselves differ where the poke happens: nop5 -> jmp -> nop5
    states = fixture("seed", "linux-6.12")["states"]
    caller = [bytes.fromhex(s["programs"]["caller"]["functions"][0]["code"]) for s in states]
    empty, filled, deleted = caller[0], caller[2], caller[4]
    assert empty == deleted != filled and len(empty) == len(filled)


@pytest.mark.parametrize(("stem", "wrong"), [("rewrites", "linux-6.1"), ("seed", "linux-6.1"),
                                             ("hierarchy", "linux-6.1"), ("seed", "linux-5.10")])
def test_another_profile_does_not_reproduce_the_capture(stem: str, wrong: str) -> None:
    # the check can fail: 6.1's JIT (no IBT, the counter by value, bpf_array.value at 0x110, the
    # helper call) is not 6.12's, and 5.10's nop5 is not 6.12's
    assert check_fixture(CAPTURED / f"{stem}.linux-6.12.json", profile=wrong)


def test_6_12_inlines_get_smp_processor_id_as_captured() -> None:
    # xlated: w0 = &pcpu_hot.cpu_number; r0 = &(void __percpu *)(r0); w0 = *(u32 *)(r0 +0)
    data = fixture("rewrites", "linux-6.12")
    xlated = bytes.fromhex(data["states"][0]["programs"]["p"]["xlated"])
    inline = bytes.fromhex("b4000000cc510300" "bf00ffff00000000" "6100000000000000")
    assert inline in xlated
    percpu = get_profile("linux-6.12").inline_smp_processor_id
    assert percpu is not None and (percpu.cpu_number, percpu.this_cpu_off) == (0x351CC, 0x19A18)
    code = bytes.fromhex(data["states"][0]["programs"]["p"]["functions"][0]["code"])
    jited = emit_mov_imm32(False, 0, percpu.cpu_number) + emit_mov_percpu(0, 0, percpu.this_cpu_off) \
        + emit_ldx(isa.BPF_W, 0, 0, 0)
    assert jited.hex() == "b8cc510300" "6548030425189a0100" "8b4000"      # add %gs:0x19a18,%rax
    assert jited in code
    assert get_profile("linux-6.1").inline_smp_processor_id is None


def test_the_per_cpu_read_runs_under_the_emulator() -> None:
    # gs:this_cpu_off holds the per-CPU base, cpu_number the CPU: the inlined sequence yields it
    emu = Emulator(0x10, percpu=(0x19A18, 0x351CC, 3))
    code = emit_mov_imm32(False, 0, 0x351CC) + emit_mov_percpu(0, 0, 0x19A18) + emit_ldx(isa.BPF_W, 0, 0, 0)
    base = emu.alloc_image(PAGE)
    emu.write_text(base, code)
    emu.uc.emu_start(base, base + len(code))
    assert emu.uc.reg_read(UC_X86_REG_RAX) == 3


def test_lddw_of_a_sign_extending_constant() -> None:
    # 6.12.117's image: `mov $0xffffffffffffffff,%r13` (49 c7 c5 ff ff ff ff) for lddw r7, -1
    assert emit_mov_imm64(7, -1, simm32=True).hex() == "49c7c5ffffffff"
    assert emit_mov_imm64(7, -1).hex() == "49bd" + "ff" * 8                       # movabs, before
    assert emit_mov_imm64(0, 0xFFFF_FFFF, simm32=True).hex() == "b8ffffffff"       # zero-extends: mov32
    assert emit_mov_imm64(0, 0x1_0000_0000, simm32=True).hex() == "48b8" + "0000000001000000"
    assert get_profile("linux-6.12").jit_imm64_simm32 and not get_profile("linux-6.1").jit_imm64_simm32
