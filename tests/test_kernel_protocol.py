"""Host side of the real-kernel engines, without a guest: BTF, wire format, initramfs, set-up helpers."""

from __future__ import annotations

import dataclasses
import gzip
import struct
from pathlib import Path

import pytest

from bpfdiff import isa
from bpfdiff.engine import engine_names, make_engine
from bpfdiff.isa import Insn, Program, lddw_pair
from bpfdiff.kernel import protocol
from bpfdiff.kernel.guest import BadScenario, UnsupportedScenario, build_request
from bpfdiff.kernel.image import (
    DEBIAN_KERNELS,
    PROFILE_KERNELS,
    SetupError,
    channel_modules,
    check_config,
    module_depends,
    parse_config,
    profile_kernel,
    system_mirrors,
)
from bpfdiff.kernel.initramfs import INIT_SCRIPT, Cpio
from bpfdiff.scenario import PROG_RAW, PROG_XDP, Delete, MapDef, Run, Scenario, Update, key_u32
from bpfdiff.settings import DEFAULT_ENGINES


def test_minimal_btf_layout():
    # include/uapi/linux/btf.h: 24-byte header, then types, then strings.
    btf = protocol.minimal_btf(2)
    magic, version, flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack("<HBBIIIII", btf[:24])
    assert (magic, version, flags, hdr_len, type_off) == (0xEB9F, 1, 0, 24, 0)
    # int (12 + 4 bytes), proto (12), two funcs (12 each)
    assert type_len == 16 + 12 + 24 and str_off == type_len
    types = btf[24:24 + type_len]
    strings = btf[24 + type_len:]
    assert len(strings) == str_len and strings == b"\0int\0f0\0f1\0"
    name_off, info, size = struct.unpack("<III", types[:12])
    assert strings[name_off:name_off + 4] == b"int\0" and info >> 24 == 1 and size == 4
    assert struct.unpack("<I", types[12:16])[0] == 0x01000020          # BTF_INT_SIGNED, 32 bits
    assert struct.unpack("<III", types[16:28]) == (0, 13 << 24, 1)      # FUNC_PROTO -> int, no params
    assert struct.unpack("<III", types[28:40]) == (5, 12 << 24, 2)      # FUNC "f0", static, proto
    assert struct.unpack("<III", types[40:52]) == (8, 12 << 24, 2)


def test_func_starts_are_main_and_call_targets():
    insns = (Insn(0x85, 0, isa.BPF_PSEUDO_CALL, 0, 3), Insn(0x85, 0, isa.BPF_PSEUDO_CALL, 0, 4), Insn(0x95),
             Insn(0xB7), Insn(0x95), Insn(0x85, 0, isa.BPF_PSEUDO_CALL, 0, -4), Insn(0x95), Insn(0xB7), Insn(0x95))
    # targets: 0 + 3 + 1 = 4, 1 + 4 + 1 = 6, 5 - 4 + 1 = 2
    assert protocol.func_starts(Program("p", insns)) == [0, 2, 4, 6]
    assert protocol.func_starts(Program("q", (Insn(0x85, 0, 0, 0, 12), Insn(0x95)))) == [0]


def test_encode_program_relocations_and_btf_only_with_subprograms():
    prog = Program("p", (*lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="t"), Insn(0xB7), Insn(0x95)))
    data = protocol.encode_program(prog, {"t": 3})
    ninsns = struct.unpack("<I", data[:4])[0]
    assert ninsns == 4
    rest = data[4 + 32:]
    assert struct.unpack("<IIII", rest[:16]) == (1, 0, 3, 0)     # one reloc (slot 0 -> map 3), no BTF
    assert struct.unpack("<I", rest[16:20]) == (0,)                 # no func_info


def _scenario(events, mem=bytes(14)) -> Scenario:
    return Scenario(prog_type=PROG_XDP, maps=(MapDef("t", "prog_array", 4, 4, 2), MapDef("a", "array", 4, 4, 1)),
                    programs=(Program("b", (Insn(0xB7, 0, 0, 0, 1), Insn(0x95))),), events=events)


def test_request_plan_and_malformed_events_decided_on_the_host():
    scenario = _scenario((Update("t", key_u32(0), "b"), Update("a", key_u32(0), b"\x01"),
                          Delete("a", b"\x00"), Run("b", bytes(14))))
    req, maps = build_request(scenario, jit=True, images=False, events=True)
    assert [kind for kind, _ in req.plan] == ["load", "update", "update", "delete", "run"]
    assert maps == [(3, 4, 4, 2), (2, 4, 4, 1)]
    assert req.events[2][0] == protocol.EV_FIXED and req.events[3][0] == protocol.EV_FIXED
    assert req.encode()[:2] == bytes([protocol.CMD_SCENARIO, protocol.FLAG_JIT])


def test_request_refuses_what_no_kernel_test_run_can_do():
    # bad input on every engine of an XDP scenario: a packet shorter than an Ethernet header
    with pytest.raises(BadScenario, match="ETH_HLEN"):
        build_request(_scenario((Run("b", b"\x01\x02"),)), True, False, True)
    with pytest.raises(BadScenario, match="not loaded"):
        build_request(Scenario(prog_type=PROG_XDP, programs=(Program("b", (Insn(0x95),)),),
                               events=(Run("c", bytes(14)),)), True, False, True)
    # R1 as raw memory (the .data files' convention) is no kernel program type
    raw = dataclasses.replace(_scenario((Run("b", bytes(14)),)), prog_type=PROG_RAW)
    with pytest.raises(UnsupportedScenario, match="only in our engines"):
        build_request(raw, True, False, True)


def test_decode_reply_with_run_and_maps():
    scenario = _scenario((Update("t", key_u32(1), "b"), Run("b", bytes(14))))
    req, maps = build_request(scenario, jit=False, images=False, events=True)
    reply = bytes([protocol.CMD_SCENARIO, 0])
    reply += bytes([protocol.EV_LOAD]) + struct.pack("<i", 0)
    reply += bytes([protocol.EV_UPDATE]) + struct.pack("<i", 0)
    reply += bytes([protocol.EV_RUN]) + struct.pack("<iI", 0, 1) + struct.pack("<I", 14) + bytes(14)
    reply += struct.pack("<I", 1) + key_u32(1) + struct.pack("<I", 0)          # t: slot 1 -> program 0
    reply += struct.pack("<I", 1) + key_u32(0) + b"\x05\x00\x00\x00"          # a: [0] = 5
    from bpfdiff.kernel.engine import outcomes_from_reply

    outcomes = outcomes_from_reply(scenario, False, protocol.decode_scenario_reply(reply, req, maps))
    assert [o.kind for o in outcomes] == ["update", "run"]
    assert outcomes[1].run.maps == (("t", (("01000000", "b"),)), ("a", (("00000000", "05000000"),)))


def test_verifier_message_is_the_last_reason_line():
    log = "0: (95) exit\nR0 !read_ok\nprocessed 1 insns (limit 1000000)\n"
    assert protocol.verifier_message(log) == "R0 !read_ok"
    assert protocol.verifier_message("") == "refused (no verifier log)"


def test_cpio_newc_entries():
    archive = Cpio()
    archive.dir("bin")
    archive.file("init", b"abc", 0o755)
    data = archive.finish()
    assert data.startswith(b"070701")
    # header: 6 magic + 13 x 8 hex fields; mode of the dir is 040755
    assert int(data[6 + 8:6 + 16], 16) == 0o040755
    assert b"init\0" in data and b"TRAILER!!!\0" in data
    assert len(data) % 4 == 0
    assert INIT_SCRIPT.startswith("#!/bin/busybox sh") and "exec /agent" in INIT_SCRIPT
    assert gzip.decompress(gzip.compress(data)) == data


def test_config_and_modules():
    config = parse_config("CONFIG_BPF_SYSCALL=y\n# CONFIG_BPF_JIT is not set\nCONFIG_VIRTIO_CONSOLE=m\n")
    with pytest.raises(SetupError, match="CONFIG_BPF_JIT is not set"):
        check_config(config, "x")
    check_config({"CONFIG_BPF_SYSCALL": "y", "CONFIG_BPF_JIT": "y"}, "x")
    ko = b"\x7fELF....license=GPL\x00depends=virtio,virtio_ring\x00vermagic=6.1\x00"
    assert module_depends(ko) == ["virtio", "virtio_ring"]
    available = {"virtio_console": ko, "virtio": b"depends=\x00", "virtio_ring": b"\x00depends=virtio\x00",
                 "virtio_pci": b"\x00depends=virtio_ring,virtio\x00"}
    order = channel_modules({"CONFIG_VIRTIO_PCI": "m", "CONFIG_VIRTIO_CONSOLE": "m"}, available)
    assert order == ["virtio", "virtio_ring", "virtio_pci", "virtio_console"]
    assert channel_modules({"CONFIG_VIRTIO_PCI": "y", "CONFIG_VIRTIO_CONSOLE": "y"}, available) == []


def test_mirrors_from_deb822(tmp_path: Path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\n"
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n")
    assert system_mirrors(tmp_path) == ("http://mirror.example/debian", "http://mirror.example/debian-security")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SetupError):
        system_mirrors(empty)


def test_profiles_map_to_debian_kernels_and_engines_are_registered():
    assert profile_kernel("linux-6.1") == "linux-image-6.1.0-56-amd64"
    assert set(PROFILE_KERNELS.values()) <= set(DEBIAN_KERNELS)
    assert {"kernel-jit", "kernel-interp"} <= set(engine_names())
    assert "kernel-jit" not in DEFAULT_ENGINES
    engine = make_engine("kernel-interp", profile="linux-6.1", kernel="/nonexistent/bzImage")
    assert engine.observes == frozenset({"exit", "r0", "maps", "mem"}) and engine.r0_bits == 32
    assert engine.kernel == "/nonexistent/bzImage" and not engine.jit


def _fake_tree(root: Path, config: str) -> Path:
    bzimage = root / "arch" / "x86" / "boot" / "bzImage"
    bzimage.parent.mkdir(parents=True)
    bzimage.write_bytes(bytes(0x202) + b"HdrS" + bytes(64))
    (root / ".config").write_text(config)
    return bzimage


def test_setup_refuses_bad_kernels_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from bpfdiff.kernel.image import setup

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    no_jit = _fake_tree(tmp_path / "a", "CONFIG_BPF_SYSCALL=y\n# CONFIG_BPF_JIT is not set\n")
    with pytest.raises(SetupError, match=r"\.config: CONFIG_BPF_JIT is not set"):
        setup(str(no_jit))
    not_a_kernel = tmp_path / "notes.txt"
    not_a_kernel.write_text("hello")
    with pytest.raises(SetupError, match="not a bzImage"):
        setup(str(not_a_kernel))
    with pytest.raises(SetupError, match="unknown kernel 'linux-image-9'"):
        setup("linux-image-9")
    assert not (tmp_path / "cache").exists()     # refused before anything was fetched or built


def test_cli_setup_error_is_exit_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys):
    from bpfdiff.cli import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    no_bpf = _fake_tree(tmp_path, "CONFIG_BPF_JIT=y\n")
    assert main(["kernel", "setup", "--kernel", str(no_bpf)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "CONFIG_BPF_SYSCALL is not set" in err


@pytest.mark.parametrize(("fold", "forgets"), [
    ("rsh %r0, 32", True), ("rsh %r0, 63", True), ("arsh %r0, 40", True), ("mov %r0, 3", True),
    ("mov32 %r0, 3", True), ("and %r0, 0", True), ("mul32 %r0, 0", True),
    ("rsh %r0, 31", False),       # keeps the number's top bit
    ("rsh32 %r0, 16", False), ("and %r0, 1", False), ("mov %r1, 0", False), ("rsh %r1, 32", False),
    ("mov %r0, %r1", False),      # R0 forgets, but only constant forms are recognised
])
def test_random_folded_accepts_only_what_forgets_the_number(fold, forgets):
    from bpfdiff.kernel.engine import random_folded
    from bpfdiff.scenario_text import parse_scenario

    prog = parse_scenario(f"-- prog p\ncall 7\n{fold}\nexit\n").programs[0]
    assert random_folded(prog, 0) is forgets
    assert not random_folded(prog, len(prog.insns) - 1)    # nothing after the last instruction


def test_generated_programs_forget_every_random_number_at_once():
    # the generator folds get_prandom_u32's result at once, so the kernel engines keep covering
    # those scenarios (a seed that draws the helper and is not folded would be left out)
    from bpfdiff.fuzz.generate import scenario_from_seed

    from bpfdiff.kernel.engine import random_folded

    calls = 0
    for seed in range(300):
        for prog in scenario_from_seed(seed).programs:
            for pc, insn in enumerate(prog.insns):
                if insn.is_helper_call and insn.imm == isa.BPF_FUNC_get_prandom_u32:
                    calls += 1
                    assert random_folded(prog, pc), (seed, prog.name, pc)
    assert calls > 20
