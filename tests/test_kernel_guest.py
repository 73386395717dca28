"""The real Debian 6.1 kernel under qemu, through our agent (one guest for the whole module).

Checks, against facts measured independently on the same kernel
(../shared/reference/linux-6.1-jit-fixtures.md, hand-copied into
tests/fixtures/jit/linux-6.1-images.txt): the xlated and jited images of the
fixture programs with slot 0 empty, filled and deleted; the self tail-call
loop's 1 + 33 entries on the JIT and on the interpreter; refusals by the
real verifier; the four engines on the examples.

Skipped, with the reason, when qemu-system-x86_64 is missing or
`bpfdiff kernel setup` cannot prepare the kernel (no registry, no gcc...).
"""

from __future__ import annotations

import dataclasses
import errno
import re
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from bpfdiff import isa
from bpfdiff.engine import EngineUnsupported, ProgramRefused, make_engine
from bpfdiff.isa import Insn, Program, lddw_pair
from bpfdiff.scenario import PROG_XDP, Delete, Load, MapDef, Run, Scenario, Update, key_u32
from bpfdiff.scenario_text import parse_scenario

if shutil.which("qemu-system-x86_64") is None:
    pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86): no real-kernel tests",
                allow_module_level=True)

from bpfdiff.kernel.engine import guest_for  # noqa: E402
from bpfdiff.kernel.guest import GuestCrashed, GuestError  # noqa: E402
from bpfdiff.kernel.image import DEFAULT_KERNEL, SetupError, setup  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "jit" / "linux-6.1-images.txt"
# tailcall_hierarchy.scn is the example of a known kernel bug: its own test below
EXAMPLES = sorted(p for p in (ROOT / "corpus" / "examples").glob("*.scn") if p.stem != "tailcall_hierarchy")
X86_TAIL_CALL_OFFSET = 11
ETH_HLEN = 14

PROG_B = Program("B", (Insn(0xB7, 0, 0, 0, 42), Insn(0x95)))
PROG_A = Program("A", (*lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="jmp_table"), Insn(0xB7, 3, 0, 0, 0),
                       Insn(0x85, 0, 0, 0, isa.BPF_FUNC_tail_call), Insn(0xB7, 0, 0, 0, 1), Insn(0x95)))


@pytest.fixture(scope="module")
def guest():
    try:
        setup(DEFAULT_KERNEL)
        g = guest_for(DEFAULT_KERNEL)
    except (SetupError, GuestError) as exc:
        pytest.skip(f"real kernel unavailable: {exc}")
    return g


def load_fixtures() -> dict[str, str]:
    images = {}
    for line in FIXTURES.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, _, hexes = line.partition(":")
        images[name.strip()] = hexes.replace(" ", "").strip()
    return images


def match_image(expected: str, code: bytes) -> dict[str, bytes]:
    """Compare with {map64}/{rel32} holes (the only load-address dependent fields); return the holes."""
    sizes = {"map64": 8, "rel32": 4}
    pattern = ""
    for part in re.split(r"(\{\w+\})", expected):
        if part.startswith("{"):
            pattern += f"(?P<{part[1:-1]}>(?:[0-9a-f]{{2}}){{{sizes[part[1:-1]]}}})"
        else:
            pattern += re.escape(part)
    found = re.fullmatch(pattern, code.hex())
    assert found is not None, f"image differs:\n expected {expected}\n      got {code.hex()}"
    return {name: bytes.fromhex(value) for name, value in found.groupdict().items()}


def with_packets(scenario: Scenario) -> Scenario:
    """The scenario as XDP, runs without a packet given an Ethernet header's worth of zeros (the least
    an XDP test run takes): for examples written for raw memory whose programs never read it."""
    return dataclasses.replace(scenario, prog_type=PROG_XDP, events=tuple(
        dataclasses.replace(ev, mem=ev.mem.ljust(ETH_HLEN, b"\0")) if isinstance(ev, Run) else ev
        for ev in scenario.events))


def test_boot_reaches_the_agent(guest):
    assert guest.hello.release == "6.1.0-56-amd64"
    assert guest.hello.bpf_syscall and guest.hello.jit_sysctl
    # Debian builds virtio_console as a module: /init loaded it, the fast channel is up.
    assert guest.hello.channel == "virtio-serial"
    guest.ping()


def test_fixture_images_empty_filled_deleted(guest):
    fixtures = load_fixtures()
    scenario = Scenario(prog_type=PROG_XDP, maps=(MapDef("jmp_table", "prog_array", 4, 4, 1),),
                        programs=(PROG_B, PROG_A),
                        events=(Load("B"), Load("A"), Update("jmp_table", key_u32(0), "B"),
                                Delete("jmp_table", key_u32(0))))
    states = guest.images_after_events(scenario, jit=True)
    b = states[1]["B"]
    match_image(fixtures["B"], b.jited)
    assert b.xlated.hex() == "b70000002a000000" "9500000000000000"
    assert b.func_lens == (len(b.jited),) and len(b.ksyms) == 1

    # xlated of A: the lddw's imm is the map's id (load dependent), everything else as bpftool showed it.
    expected_xlated = bytes.fromhex(fixtures["A-xlated"])
    a = states[1]["A"]
    assert a.xlated[:4] == expected_xlated[:4] and a.xlated[8:] == expected_xlated[8:]

    empty = match_image(fixtures["A-empty"], states[1]["A"].jited)
    filled = match_image(fixtures["A-updated"], states[2]["A"].jited)
    deleted = match_image(fixtures["A-deleted"], states[3]["A"].jited)
    assert empty["map64"] == filled["map64"] == deleted["map64"]
    assert states[3]["A"].jited == states[1]["A"].jited

    # The filled site jumps to B's image + X86_TAIL_CALL_OFFSET (past nop5, nop2, push rbp, mov rbp,rsp).
    a_jited = states[2]["A"].jited
    site = a_jited.index(b"\xe9" + filled["rel32"])
    (rel32,) = struct.unpack("<i", filled["rel32"])
    target = states[2]["A"].ksyms[0] + site + 5 + rel32
    assert target == states[2]["B"].ksyms[0] + X86_TAIL_CALL_OFFSET


def test_inspect_shows_the_kernels_code(guest):
    scenario = Scenario(prog_type=PROG_XDP, maps=(MapDef("jmp_table", "prog_array", 4, 4, 1),),
                        programs=(PROG_B, PROG_A),
                        events=(Update("jmp_table", key_u32(0), "B"),))
    views = list(make_engine("kernel-jit").inspect(scenario))
    assert [v.index for v in views] == [None, 0] and views[1].outcome.retval == 0
    fixtures = load_fixtures()
    b = views[0].programs["B"]
    assert [i.opcode for i in b.xlated] == [0xB7, 0x95]
    match_image(fixtures["B"], b.images[0].code)
    match_image(fixtures["A-empty"], views[0].programs["A"].images[0].code)
    match_image(fixtures["A-updated"], views[1].programs["A"].images[0].code)
    # the interpreter has no images, only the xlated program
    interp = list(make_engine("kernel-interp").inspect(scenario))
    assert interp[0].programs["A"].images == () and len(interp[0].programs["A"].xlated) == 6


def test_tail_call_loop_runs_34_times_jit_and_interp(guest):
    path = ROOT / "corpus" / "examples" / "tail_call_limit.scn"
    scenario = with_packets(parse_scenario(path.read_text(), str(path)))
    for name in ("kernel-jit", "kernel-interp"):
        outcomes = make_engine(name).execute(scenario)
        runs = [o.run for o in outcomes if o.run is not None]
        # counters[0] counts entries: 1 + 33 tail calls per run, then 34 more, then 1 without the slot.
        assert [r.r0 for r in runs] == [34, 68, 69], name
        assert dict(runs[0].maps)["counters"] == (("00000000", (34).to_bytes(8, "little").hex()),)
        assert dict(runs[0].maps)["jmp_table"] == (("00000000", "loop"),)
        assert dict(runs[2].maps)["jmp_table"] == ()


def test_verifier_refusal_is_program_refused(guest):
    # exit with R0 never written: the verifier's "R0 !read_ok", EACCES.
    scenario = Scenario(prog_type=PROG_XDP, programs=(Program("bad", (Insn(0x95),)),),
                        events=(Run("bad", bytes(ETH_HLEN)),))
    with pytest.raises(ProgramRefused) as info:
        make_engine("kernel-jit").execute(scenario)
    assert info.value.prog == "bad"
    assert info.value.message == "R0 !read_ok"
    assert info.value.errno == errno.EACCES


def _mixed_scenario() -> Scenario:
    """main calls a subprogram that tail-calls slot 0 (needs BTF func_info on 6.1)."""
    main = (Insn(0x85, 0, isa.BPF_PSEUDO_CALL, 0, 2),    # call sub (pc 3)
            Insn(0x07, 0, 0, 0, 100),                     # r0 += 100
            Insn(0x95),
            # sub: keep ctx in r1, tail call jmp_table[0]; fall through returns 5
            *lddw_pair(2, 0, src=isa.BPF_PSEUDO_MAP_FD, map="jmp_table"),
            Insn(0xB7, 3, 0, 0, 0),
            Insn(0x85, 0, 0, 0, isa.BPF_FUNC_tail_call),
            Insn(0xB7, 0, 0, 0, 5),
            Insn(0x95))
    return Scenario(prog_type=PROG_XDP, maps=(MapDef("jmp_table", "prog_array", 4, 4, 1),),
                    programs=(Program("main", main), PROG_B),
                    events=(Run("main", bytes(ETH_HLEN)), Update("jmp_table", key_u32(0), "B"),
                            Run("main", bytes(ETH_HLEN))))


def test_tail_call_in_subprogram_loads_with_btf_on_the_jit(guest):
    outcomes = make_engine("kernel-jit").execute(_mixed_scenario())
    # empty slot: sub returns 5, main adds 100; filled: B replaces only the subprogram's frame,
    # its 42 returns to main, which adds 100.
    assert [o.run.r0 for o in outcomes if o.run] == [105, 142]
    assert outcomes[1].retval == 0


def test_programs_with_the_same_btf_share_one_btf_object(guest):
    """The agent loads each distinct BTF blob once and keeps it (as libbpf shares an object's BTF
    among its programs): the same two-function program, loaded again in later scenarios, needs
    no BTF_LOAD, and a new blob (three functions) is loaded once."""
    scenario = _mixed_scenario()
    three = Program("three", (Insn(0x85, 0, isa.BPF_PSEUDO_CALL, 0, 1), Insn(0x95),           # call pc 2
                              Insn(0x85, 0, isa.BPF_PSEUDO_CALL, 0, 1), Insn(0x95),           # call pc 4
                              Insn(0xB7, 0, 0, 0, 7), Insn(0x95)))
    other = dataclasses.replace(scenario, programs=(three,), events=(Run("three", bytes(ETH_HLEN)),))
    engine = make_engine("kernel-jit")
    engine.execute(scenario)                       # the two-function blob is in the cache from here on
    g = guest_for(DEFAULT_KERNEL)
    g.stats()
    for _ in range(3):
        assert [o.run.r0 for o in engine.execute(scenario) if o.run] == [105, 142]
    assert "BPF_BTF_LOAD" not in g.stats()
    for _ in range(2):
        assert [o.run.r0 for o in engine.execute(other)] == [7]
    assert g.stats()["BPF_BTF_LOAD"][0] == 1


def test_frames_larger_than_the_agents_buffers_cross_whole(guest):
    """A request over the agent's 64 KiB input buffer (a 9,000-instruction program: 72 KB) and a
    reply over virtio-serial's 32 KiB per write (that program's images) go through whole, and
    the frames after them are still in step."""
    prog = Program("big", (*(Insn(0xB7, 0, 0, 0, i & 0x7FFF) for i in range(9000)), Insn(0x95)))
    scenario = Scenario(prog_type=PROG_XDP, maps=(), programs=(prog,), events=(Run("big", bytes(ETH_HLEN)),))
    (loaded,) = guest.load_programs(scenario)
    assert loaded.error is None
    assert loaded.xlated == isa.encode(prog.insns, map_fd=lambda _name: 0)   # movs pass the verifier unchanged
    assert len(loaded.jited) > 32 * 1024
    assert [o.run.r0 for o in make_engine("kernel-jit").execute(scenario)] == [8999 & 0x7FFF]
    guest.ping()


def test_interpreter_cannot_run_mixed_programs(guest):
    with pytest.raises(EngineUnsupported, match="tail_calls are not allowed in non-JITed programs"):
        make_engine("kernel-interp").execute(_mixed_scenario())


def test_map_events_and_contents_like_our_engines(guest):
    maps = (MapDef("h", "hash", 4, 8, 2), MapDef("a", "array", 4, 4, 2), MapDef("t", "prog_array", 4, 4, 2))
    events = (Update("h", key_u32(7), bytes(range(8))), Update("h", key_u32(1), bytes(8), 1),
              Update("h", key_u32(2), bytes(8)),                  # full: -E2BIG
              Update("h", key_u32(7), bytes(8), 1),               # NOEXIST on a present key: -EEXIST
              Delete("h", key_u32(9)),                            # -ENOENT
              Update("a", key_u32(1), b"\x01\x02\x03\x04"), Update("a", key_u32(2), bytes(4)),  # -E2BIG
              Delete("a", key_u32(0)),                            # arrays: -EINVAL
              Update("t", key_u32(1), "B"), Update("t", key_u32(0), "nope"),  # not a program: -EBADF
              Update("a", key_u32(0), b"\x01"),                   # malformed value: -EINVAL everywhere
              Run("B", bytes(ETH_HLEN)))
    scenario = Scenario(prog_type=PROG_XDP, maps=maps, programs=(PROG_B,), events=events)
    interp = make_engine("interp").execute(scenario)
    for name in ("kernel-jit", "kernel-interp"):
        guest_for(DEFAULT_KERNEL).stats()
        kernel = make_engine(name).execute(scenario)
        assert [o.retval for o in kernel] == [o.retval for o in interp]
        assert [o.retval for o in kernel][:5] == [0, 0, -errno.E2BIG, -errno.EEXIST, -errno.ENOENT]
        assert kernel[-1].run.maps == interp[-1].run.maps
        assert kernel[-1].run.r0 == 42 and kernel[-1].run.mem == bytes(ETH_HLEN)
        # the array came back in one BPF_MAP_LOOKUP_BATCH; the prog array (2 slots) and the hash (2 keys) key by key
        stats = guest_for(DEFAULT_KERNEL).stats()
        assert stats["BPF_MAP_LOOKUP_BATCH"][0] == 1 and stats["BPF_MAP_LOOKUP_ELEM"][0] == 2 + 2


def _observed(outcomes, index):
    o = outcomes[index]
    return o.retval if o.run is None else (o.run.exit, o.run.r0 & 0xFFFFFFFF, o.run.maps, o.run.mem)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_examples_on_four_engines(guest, path):
    """The real kernel against our engines, on what the kernel observes (R0's low 32 bits, maps, packet).

    Our JIT models the 6.1 JIT, so kernel-jit must equal it everywhere; kernel-interp must equal
    kernel-jit when it can run the scenario at all (not when bpf-to-bpf calls and tail calls mix);
    our interpreter must equal them too, unless it already differs from our JIT -- a known bug of
    the 6.1 kernel that the example shows (tailcall_hierarchy), which the real kernel then has.
    """
    scenario = parse_scenario(path.read_text(), str(path))
    if scenario.prog_type != PROG_XDP:
        # R1 as raw memory: our engines' uBPF convention, not a kernel program type.
        with pytest.raises(EngineUnsupported, match="exists only in our engines"):
            make_engine("kernel-jit").execute(scenario)
        scenario = with_packets(scenario)
    reads_ctx = any(insn.cls == isa.BPF_LDX and insn.src == 1 for prog in scenario.programs for insn in prog.insns)
    results = {name: make_engine(name).execute(scenario) for name in ("interp", "jit", "kernel-jit")}
    mixed = any(insn.is_pseudo_call for prog in scenario.programs for insn in prog.insns) and any(
        insn.is_helper_call and insn.imm == isa.BPF_FUNC_tail_call for prog in scenario.programs for insn in prog.insns)
    if mixed:
        with pytest.raises(EngineUnsupported, match="tail_calls are not allowed in non-JITed programs"):
            make_engine("kernel-interp").execute(scenario)
    else:
        results["kernel-interp"] = make_engine("kernel-interp").execute(scenario)
    ours_agree = all(_observed(results["interp"], i) == _observed(results["jit"], i)
                     for i in range(len(scenario.events)))
    for index, event in enumerate(scenario.events):
        seen = {name: _observed(outcomes, index) for name, outcomes in results.items()}
        if "kernel-interp" in seen:
            assert seen["kernel-interp"] == seen["kernel-jit"], (index, seen)
        if reads_ctx and isinstance(event, Run):
            continue   # R1 is raw memory for our engines and struct xdp_md for the kernel
        assert seen["kernel-jit"] == seen["jit"], (index, seen)
        if ours_agree:
            assert seen["interp"] == seen["kernel-jit"], (index, seen)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_cli_run_with_four_engines(guest, path, tmp_path, capsys):
    """`bpfdiff run` with all four engines: the same verdict as with our two engines alone."""
    from bpfdiff.cli import main
    from bpfdiff.scenario_text import format_scenario

    engines = "--engines=interp,jit,kernel-jit,kernel-interp"
    scenario = parse_scenario(path.read_text(), str(path))
    if any(insn.cls == isa.BPF_LDX and insn.src == 1 for prog in scenario.programs for insn in prog.insns):
        return   # reads R1 as raw memory: not the kernel's XDP context (yet)
    if scenario.prog_type != PROG_XDP:
        path = tmp_path / path.name
        path.write_text(format_scenario(with_packets(scenario)))
    ours = main(["run", str(path), "--engines=interp,jit"])
    capsys.readouterr()
    code = main(["run", str(path), engines])
    out = capsys.readouterr().out
    assert code == ours, out
    if code == 0:
        assert "interp, jit, kernel-jit" in out and "agree" in out


def test_real_6_1_jit_runs_the_tailcall_hierarchy_66_times_like_our_jit(guest):
    # 116e04ba1459: Debian's 6.1 passes the counter to subprograms by value (66 entries of
    # the chain, as our linux-6.1 JIT); the kernel's interpreter refuses the mix of calls
    # and tail calls, so only the JIT can be asked
    scenario = with_packets(parse_scenario((ROOT / "corpus" / "examples" / "tailcall_hierarchy.scn").read_text()))
    ours = make_engine("jit", profile="linux-6.1").execute(scenario)[1].run
    real = make_engine("kernel-jit").execute(scenario)[1].run
    assert (ours.r0, real.r0 & 0xFFFFFFFF) == (66, 66)
    assert real.maps == ours.maps
    with pytest.raises(EngineUnsupported, match="non-JITed programs with bpf-to-bpf calls"):
        make_engine("kernel-interp").execute(scenario)


def test_oracle_names_116e04ba1459_with_the_real_kernels_among_the_engines(guest):
    # the fix applies to our models only (fixed JIT 33 = interpreter 33); the real 6.1 JIT stays
    # as built and must give what our unfixed linux-6.1 JIT gives (66 entries, in R0 and the map)
    from bpfdiff.fuzz.oracle import KNOWN, run_oracle

    scenario = with_packets(parse_scenario((ROOT / "corpus" / "examples" / "tailcall_hierarchy.scn").read_text()))
    verdict = run_oracle(scenario, engines=("interp", "jit", "kernel-jit", "kernel-interp"), profile="linux-6.1")
    assert "kernel-jit" in verdict.outcomes and "kernel-interp" not in verdict.outcomes
    assert [f.kind for f in verdict.findings] == [KNOWN], verdict.findings
    assert verdict.signature == "known:linux-6.1:116e04ba1459"


@pytest.mark.parametrize("name, jit_r0, interp_r0", [
    ("map_ops_return_int.scn", 0, 0xFFFFFFFF),
    ("subprog_self_tail_call_delete.scn", 0xFFFFFFFE, None),   # mixed: the interpreter refuses it
])
def test_real_6_1_jit_gets_the_int_of_a_direct_map_op(guest, name, jit_r0, interp_r0):
    # d7ba4cc900bf (v6.4): htab_map_delete_elem returns int on 6.1, the JIT calls it directly and
    # R0's upper half is 0 after -ENOENT; the interpreter calls the helper, which sign-extends.
    # The campaign's finding: our linux-6.1 JIT now does the same (a known kernel bug).
    from bpfdiff.fuzz.oracle import KNOWN, run_oracle

    scenario = with_packets(parse_scenario((ROOT / "tests" / "fixtures" / "kernel" / name).read_text()))
    real = make_engine("kernel-jit").execute(scenario)[-1].run
    ours = make_engine("jit", profile="linux-6.1").execute(scenario)[-1].run
    assert real.r0 & 0xFFFFFFFF == jit_r0 == ours.r0
    if interp_r0 is not None:
        assert make_engine("kernel-interp").execute(scenario)[-1].run.r0 & 0xFFFFFFFF == interp_r0
        assert make_engine("interp", profile="linux-6.1").execute(scenario)[-1].run.r0 == interp_r0
    verdict = run_oracle(scenario, engines=("interp", "jit", "kernel-jit", "kernel-interp"), profile="linux-6.1")
    assert [f.kind for f in verdict.findings] == [KNOWN], verdict.findings
    assert verdict.signature == "known:linux-6.1:d7ba4cc900bf"


PRANDOM = """\
-- prog p
call 7
exit
-- events
run p mem=00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
-- prog_type
xdp
"""


def test_kernel_engines_leave_out_runs_of_the_kernels_random_generator(guest):
    # bpf_user_rnd_u32 is seeded at random in the guest: two runs differ, and neither is what
    # our seeded generator gives -- 64 false divergences of the 10-minute campaign
    from bpfdiff.fuzz.oracle import run_oracle

    scenario = parse_scenario(PRANDOM)
    bare = dataclasses.replace(scenario, programs=(dataclasses.replace(
        scenario.programs[0], insns=(Insn(isa.CALL_OPCODE, 0, 0, 0, 8),) + scenario.programs[0].insns[1:]),))
    assert make_engine("kernel-jit").execute(bare)[0].run.r0 == 0        # get_smp_processor_id: CPU 0
    for engine in ("kernel-jit", "kernel-interp"):
        with pytest.raises(EngineUnsupported, match="get_prandom_u32"):
            make_engine(engine).execute(scenario)
    verdict = run_oracle(scenario, engines=("interp", "jit", "kernel-jit", "kernel-interp"), profile="linux-6.1")
    assert verdict.ok and sorted(verdict.outcomes) == ["interp", "jit"]
    assert any("kernel-jit left out" in note for note in verdict.notes)


PRANDOM_FOLDED = """\
-- prog p
call 7
{fold}
mov %r6, %r0
add %r6, 7
call 7
mov %r0, 5
add %r0, %r6
exit
-- events
run p mem=00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
run p mem=00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
-- prog_type
xdp
"""


@pytest.mark.parametrize("fold", ["rsh %r0, 32", "arsh %r0, 63", "and32 %r0, 0", "mul %r0, 0"])
def test_kernel_engines_run_programs_that_forget_the_random_number_at_once(guest, fold):
    # What the generator emits after get_prandom_u32 (r0 >>= 32): the number is a u32, so every
    # correct engine has R0 = 0 after the fold -- the four engines are compared, and agree
    from bpfdiff.fuzz.oracle import run_oracle

    scenario = parse_scenario(PRANDOM_FOLDED.format(fold=fold))
    engines = ("interp", "jit", "kernel-jit", "kernel-interp")
    verdict = run_oracle(scenario, engines=engines, profile="linux-6.1")
    assert verdict.ok and sorted(verdict.outcomes) == sorted(engines), (verdict.findings, verdict.notes)
    assert [o.run.r0 for o in verdict.outcomes["kernel-jit"]] == [12, 12]


# profile -> (tailcall_hierarchy chain entries on the real JIT, empty-slot self loop entries on the
# real JIT and interpreter): 116e04ba1459 and 3733f4be2870 measured on each Debian kernel
REAL_COUNTS = {"linux-5.10": (66, 17, 17), "linux-6.12": (33, 34, 17)}


@pytest.mark.parametrize("profile", sorted(REAL_COUNTS))
def test_real_kernels_count_tail_calls_like_our_profiles(profile):
    from test_empty_slot_count import EMPTY_THEN_SELF

    try:
        make_engine("kernel-jit", profile=profile).execute(Scenario(prog_type=PROG_XDP))
    except (SetupError, EngineUnsupported) as exc:
        pytest.skip(f"{profile}: real kernel unavailable: {exc}")
    hierarchy = with_packets(parse_scenario((ROOT / "corpus" / "examples" / "tailcall_hierarchy.scn").read_text()))
    empty = with_packets(parse_scenario(EMPTY_THEN_SELF))
    chain, jit_entries, interp_entries = REAL_COUNTS[profile]
    for scenario, engine, ours, expected in ((hierarchy, "kernel-jit", "jit", chain),
                                             (empty, "kernel-jit", "jit", jit_entries),
                                             (empty, "kernel-interp", "interp", interp_entries)):
        real = make_engine(engine, profile=profile).execute(scenario)[1].run
        model = make_engine(ours, profile=profile).execute(scenario)[1].run
        assert (real.r0 & 0xFFFFFFFF, model.r0) == (expected, expected), (engine, scenario.programs[0].name)
        assert real.maps == model.maps


def test_cli_setup_is_idempotent_and_fast():
    proc = subprocess.run([sys.executable, "-m", "bpfdiff", "kernel", "setup"], capture_output=True, text=True,
                          timeout=60)
    if proc.returncode == 2 and "error" in proc.stderr:
        pytest.skip(f"kernel setup unavailable: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    assert f"kernel {DEFAULT_KERNEL}" in proc.stdout
    assert "virtio_console.ko" in proc.stdout
    assert proc.stderr == ""    # nothing fetched or built again


TAIL_CALL_IN_SUBPROG_R0 = """\
-- maps
jmp0 prog_array key_size=4 value_size=4 max_entries=2
-- prog p1
call local L5
jle32 %r0, 0, L3
mod32 %r0, 1
L3:
add %r0, 1
exit
L5:
mov %r3, 1
lddw %r2, map:jmp0
call 12
mov %r0, 0
exit
-- events
update jmp0 1 prog:p1
run p1 mem=00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
"""


def test_real_6_1_verifier_trusts_a_subprograms_r0_across_its_tail_call(guest):
    # The 10-minute four-engine campaign's only new divergence, minimised.  The subprogram
    # returns 0 as far as the verifier sees, so it hard-wires `jle32 r0, 0` and removes the
    # mod32 -- but a tail call inside the subprogram returns the *target's* R0 to the caller:
    # each of the 34 nested entries adds 1 on the real JIT (34), where the program as written
    # gives 1 (our interpreter, which runs it unrewritten).  Our xlate does what the kernel
    # does, so our JIT agrees with the kernel; the divergence is interp against the rest.
    from bpfdiff.fuzz.oracle import run_oracle

    scenario = parse_scenario(TAIL_CALL_IN_SUBPROG_R0)
    verdict = run_oracle(scenario, engines=("interp", "jit", "kernel-jit"), profile="linux-6.1")
    r0 = {name: outcomes[1].run.r0 for name, outcomes in verdict.outcomes.items()}
    assert r0 == {"interp": 1, "jit": 34, "kernel-jit": 34}
    # the real kernel has what our linux-6.1 model has: the known bug subprog-r0-tail-call
    # (with its fix applied to our models they agree; kernel-jit agrees with the unfixed JIT)
    assert verdict.signature == "known:linux-6.1:subprog-r0-tail-call"
    kernel = list(make_engine("kernel-jit").inspect(scenario))[0].programs["p1"]
    assert [insn.opcode for insn in kernel.xlated[:3]] == [0x85, 0x07, 0x95]   # call; r0 += 1; exit


def test_readme_fuzzing_your_own_kernel_build(tmp_path):
    # The README's steps for a kernel one built, on Debian's 6.1 laid out as a built tree
    # (arch/x86/boot/bzImage, .config, the virtio modules where `make modules` puts them), in a
    # fresh cache: `bpfdiff kernel setup --kernel arch/x86/boot/bzImage` (boots it once to check),
    # then the four engines with BPFDIFF_KERNEL=$PWD/arch/x86/boot/bzImage.
    import os

    from bpfdiff.kernel.image import prepared

    debian = prepared(DEFAULT_KERNEL)
    if debian is None or not (debian.dir / "config").exists():
        pytest.skip(f"{DEFAULT_KERNEL} is not set up")
    tree = tmp_path / "linux"
    (tree / "arch" / "x86" / "boot").mkdir(parents=True)
    shutil.copyfile(debian.vmlinuz, tree / "arch" / "x86" / "boot" / "bzImage")
    shutil.copyfile(debian.dir / "config", tree / ".config")
    for module in debian.modules:            # "03-virtio.ko" in the cache: virtio.ko in the tree
        name = module.split("-", 1)[1]
        dest = tree / "drivers" / ("char" if name == "virtio_console.ko" else "virtio") / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(debian.dir / "modules" / module, dest)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    env.pop("BPFDIFF_KERNEL", None)
    bpfdiff = [sys.executable, "-m", "bpfdiff"]
    proc = subprocess.run([*bpfdiff, "kernel", "setup", "--kernel", "arch/x86/boot/bzImage"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    assert "booting arch/x86/boot/bzImage to check it" in proc.stderr
    assert "virtio_console.ko" in proc.stdout
    env["BPFDIFF_KERNEL"] = f"{tree}/arch/x86/boot/bzImage"
    example = ROOT / "corpus" / "examples" / "retarget.scn"
    proc = subprocess.run([*bpfdiff, "run", str(example), "--engines", "interp,jit,kernel-jit,kernel-interp"],
                          cwd=tree, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "interp, jit, kernel-jit, kernel-interp" in proc.stdout and "agree" in proc.stdout


def panic_on_first_scenario(monkeypatch) -> list:
    """Make the first scenario request really panic the guest kernel (the agent writes "c" to
    /proc/sysrq-trigger: an oops, and oops=panic); returns the list that receives the guest."""
    from bpfdiff.kernel import protocol
    from bpfdiff.kernel.guest import Guest

    real_submit = Guest.submit
    panicked: list = []

    def panic_instead(self, payload, timeout=30.0):
        if not panicked and payload[:1] == bytes([protocol.CMD_SCENARIO]):
            panicked.append(self)
            payload = bytes([protocol.CMD_DEBUG]) + b"c"
        return real_submit(self, payload, timeout)

    monkeypatch.setattr(Guest, "submit", panic_instead)
    return panicked


def test_a_panicking_guest_is_a_finding_and_the_next_scenario_runs_on_a_new_guest(guest, monkeypatch):
    # The kernel really panics (the agent writes "c" to /proc/sysrq-trigger: an oops, and
    # oops=panic) while kernel-jit runs a scenario through the oracle: a crash finding naming
    # kernel-jit whose detail ends with the console's panic; the other engines' results stay;
    # the next scenario boots a fresh guest and agrees.
    from bpfdiff.fuzz.oracle import CRASH, EnginePool, run_oracle

    from bpfdiff.kernel.engine import _GUESTS
    from bpfdiff.kernel.guest import GuestDied

    scenario = with_packets(parse_scenario((ROOT / "corpus" / "examples" / "direct_tail_call.scn").read_text()))
    crashes = panic_on_first_scenario(monkeypatch)   # the scenario's request makes the kernel panic
    pool = EnginePool()
    engines = ("interp", "jit", "kernel-jit")
    verdict = run_oracle(scenario, engines=engines, profile="linux-6.1", pool=pool)
    monkeypatch.undo()
    assert crashes and crashes[0].dead
    [finding] = verdict.findings
    assert finding.kind == CRASH
    assert finding.signature.startswith(f"crash:linux-6.1:kernel-jit:{GuestDied.__name__}@")
    assert "Kernel panic - not syncing" in finding.detail and "sysrq" in finding.detail.lower()
    assert sorted(verdict.outcomes) == ["interp", "jit"]

    again = run_oracle(scenario, engines=engines, profile="linux-6.1", pool=pool)
    assert again.ok and sorted(again.outcomes) == sorted(engines)
    assert _GUESTS[DEFAULT_KERNEL] is not crashes[0] and not _GUESTS[DEFAULT_KERNEL].dead


def test_a_guest_dying_on_a_request_nobody_else_waits_for_is_still_a_crash_finding(guest, monkeypatch):
    # Both kernel engines' requests are queued before our engines run.  kernel-jit's request makes
    # the kernel really panic, and interp then calls the input bad (EngineError): before, the
    # oracle raised at once, nobody collected kernel-jit's request and the next scenario was
    # served by a fresh guest without a word.  Now every engine runs first: the death is
    # kernel-jit's crash finding with the console's panic; kernel-interp, queued behind the
    # fatal request (never started on), ran again on the fresh guest and a note says so.
    from bpfdiff.fuzz.oracle import CRASH, EnginePool, run_oracle

    from bpfdiff.engine import EngineError
    from bpfdiff.kernel.engine import _GUESTS
    from bpfdiff.kernel.guest import GuestDied

    scenario = with_packets(parse_scenario((ROOT / "corpus" / "examples" / "direct_tail_call.scn").read_text()))
    panicked = panic_on_first_scenario(monkeypatch)

    pool = EnginePool()
    interp = pool.get("interp", "linux-6.1", frozenset())

    def bad_input(scn):
        raise EngineError("interp: bad input")

    monkeypatch.setattr(interp, "execute", bad_input)
    verdict = run_oracle(scenario, engines=("interp", "kernel-jit", "kernel-interp"), profile="linux-6.1",
                         pool=pool)
    monkeypatch.undo()
    assert panicked and panicked[0].dead
    [finding] = verdict.findings
    assert finding.kind == CRASH and list(finding.values) == ["kernel-jit"]
    assert finding.signature.startswith(f"crash:linux-6.1:kernel-jit:{GuestDied.__name__}@Kernel-panic")
    assert "Kernel panic - not syncing" in finding.detail and "sysrq" in finding.detail.lower()
    assert any(n.startswith("kernel-interp: its guest was replaced") and "ticket" in n for n in verdict.notes)
    assert "bad input: interp: bad input" in verdict.notes and not verdict.outcomes
    assert _GUESTS[DEFAULT_KERNEL] is not panicked[0]
    # the same death is reported once: the next scenario runs clean on the fresh guest
    again = run_oracle(scenario, engines=("interp", "jit", "kernel-jit", "kernel-interp"), profile="linux-6.1",
                       pool=pool)
    assert again.ok and not again.findings and len(again.outcomes) == 4
    assert not any("replaced" in n for n in again.notes)


def test_a_guest_that_dies_between_requests_or_on_an_abandoned_one_is_reported_not_dropped(guest, monkeypatch):
    # No request of the next scenario is to blame for these deaths, so that scenario runs on a
    # fresh guest, and the death comes with it as an "unattributed" crash finding with the
    # console and a note (before: the guest was replaced without a word).  First qemu is
    # killed between scenarios; then a submitted request that panics the kernel is abandoned
    # (its scenario never executed) and the next scenario finds the guest dead.
    import os
    import signal

    from bpfdiff.fuzz.oracle import CRASH, EnginePool, run_oracle

    from bpfdiff.kernel.guest import GuestDied

    scenario = with_packets(parse_scenario((ROOT / "corpus" / "examples" / "direct_tail_call.scn").read_text()))
    engines = ("interp", "jit", "kernel-jit")
    pool = EnginePool()
    old = guest_for(DEFAULT_KERNEL)
    old.ping()   # idle: the last scenario's fds are closed (else its death would be that scenario's)
    os.kill(old.proc.pid, signal.SIGKILL)
    old.proc.wait()
    verdict = run_oracle(scenario, engines=engines, profile="linux-6.1", pool=pool)
    assert sorted(verdict.outcomes) == sorted(engines) and not verdict.differences
    [finding] = verdict.findings
    assert finding.kind == CRASH
    assert finding.signature == f"crash:linux-6.1:kernel-jit:{GuestDied.__name__}@unattributed:no-kernel-message"
    assert "qemu exited (status -9)" in finding.detail and "while idle" in finding.detail
    assert "bpfdiff-agent: ready" in finding.detail   # the console's tail
    assert any(n.startswith("kernel-jit: its guest was replaced") for n in verdict.notes)

    # a scenario submitted, never executed, whose request panics the kernel: the engine's next
    # scenario abandons it, runs on a fresh guest, and reports the death it was not to blame for
    panicked = panic_on_first_scenario(monkeypatch)

    pool.get("kernel-jit", "linux-6.1", frozenset()).submit(scenario)
    monkeypatch.undo()
    verdict = run_oracle(scenario, engines=engines, profile="linux-6.1", pool=pool)
    assert panicked and panicked[0].dead
    assert sorted(verdict.outcomes) == sorted(engines) and not verdict.differences
    [finding] = verdict.findings
    assert finding.signature.startswith(f"crash:linux-6.1:kernel-jit:{GuestDied.__name__}@unattributed:Kernel-panic")
    assert "Kernel panic - not syncing" in finding.detail and "ticket" in finding.detail


def test_a_guest_dying_while_closing_a_scenarios_fds_is_that_scenarios(guest):
    # The agent sends a scenario's reply, then closes its maps and programs (while the host
    # reads), then says CLOSED.  The kernel panics in between (a test flag of the agent): the
    # death is the scenario's -- its collector gets the crash if it had not read the reply yet,
    # else nobody can claim it and the next collector must report it -- never the ping's
    # queued behind it, which the guest never started on.
    from bpfdiff.kernel import protocol
    from bpfdiff.kernel.guest import GuestDied, GuestLost, build_request

    scenario = with_packets(parse_scenario((ROOT / "corpus" / "examples" / "direct_tail_call.scn").read_text()))
    dying = guest_for(DEFAULT_KERNEL)
    req, maps = build_request(scenario, True, images=False, events=True)
    req.flags |= protocol.FLAG_PANIC_CLOSING
    first = dying.submit(req.encode())
    ping = dying.submit(bytes([protocol.CMD_PING]))
    try:
        reply = protocol.decode_scenario_reply(dying.collect(first), req, maps)
        assert reply.status == 0 and not reply.malformed and reply.outcomes
        read_reply = True
    except GuestDied as exc:   # the death was noticed before the reply was read: the reply goes
        assert "Kernel panic" in exc.console_excerpt
        read_reply = False
    with pytest.raises(GuestLost, match=f"closing the maps and programs of an earlier scenario \\(ticket {first}\\)") \
            as lost:
        dying.collect(ping)
    assert lost.value.fatal == first and dying.fatal_closing
    assert lost.value.unclaimed == read_reply   # reported once: by its collector or by the next one
    assert "sysrq" in lost.value.death.console_excerpt.lower()
    assert guest_for(DEFAULT_KERNEL) is not dying


def test_a_hung_guest_is_a_crash_with_its_console(guest):
    # Last in the module (no guest is booted after it): the agent stops answering; the request
    # times out, the guest is killed, and what its console said comes with the error -- raised
    # for the request that hung; the ping queued behind it was never started on.
    from bpfdiff.kernel.guest import GuestHung, GuestLost

    guest = guest_for(DEFAULT_KERNEL)
    ticket = guest.crash_for_test("hang", timeout=3)
    with pytest.raises(GuestLost, match="before it started"):
        guest.ping()
    with pytest.raises(GuestHung, match="hung") as info:
        guest.collect(ticket)
    assert "bpfdiff-agent: ready" in info.value.console_tail
    assert isinstance(info.value, GuestCrashed) and guest.dead and guest.proc.poll() is not None
    assert info.value.crash_site == "no-reply"
