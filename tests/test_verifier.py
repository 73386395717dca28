"""The verifier model (bpfdiff/verifier.py): what each profile's kernel refuses, and its rewrites.

Expected messages are the kernel's (kernel/bpf/verifier.c: resolve_pseudo_ldimm64,
check_alu_op, check_atomic); expected xlated instructions are written out here as the
raw ``struct bpf_insn`` bytes, worked out by hand from the kernel's patch sequences.
"""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.generate import GenOptions, scenario_from_seed
from bpfdiff.interp.engine import InterpEngine
from bpfdiff.jit.bpf_jit_comp import JitEnv, JitOptions, bpf_int_jit_compile
from bpfdiff.jit.dump import jited_lines
from bpfdiff.jit.engine import JitEngine
from unicorn import UC_ARCH_X86, UC_MODE_64, Uc
from unicorn import x86_const as x86

from bpfdiff import isa
from bpfdiff.asm import assemble_program
from bpfdiff.engine import ProgramRefused
from bpfdiff.isa import Program
from bpfdiff.profiles import LINUX_5_5, LINUX_6_1, LINUX_6_12, PROFILES
from bpfdiff.scenario import PROG_RAW, MapDef, Run, Scenario
from bpfdiff.scenario_text import parse_scenario
from bpfdiff.verifier import VerifierError, check_load, verify

V4 = LINUX_6_1.with_options(name="linux-6.1+isa-v4", isa_v4=True)   # the instruction set of 6.6+


def prog(text: str, name: str = "p") -> Program:
    return assemble_program(name, text)


# -- the instruction set per profile -------------------------------------------------------------
ISA_V4_CASES = [
    # (program text, what a kernel without ISA v4 says, insn)
    ("mov %r1, 1\nmovsx832 %r0, %r1\nexit\n", "BPF_MOV uses reserved fields", 1),
    ("mov %r0, 1\nmov %r1, 2\nsdiv32 %r0, %r1\nexit\n", "BPF_ALU uses reserved fields", 2),
    ("mov %r0, 7\nsmod %r0, 3\nexit\n", "BPF_ALU uses reserved fields", 1),
    ("mov %r0, 1\nbswap64 %r0\nexit\n", "unknown opcode d7", 1),
    ("mov %r0, 1\nja32 L\nL:\nexit\n", "unknown opcode 06", 1),
    ("stw [%r10-4], 1\nldxsw %r0, [%r10-4]\nexit\n", "BPF_LDX uses reserved fields", 1),
]


@pytest.mark.parametrize("text, message, pc", ISA_V4_CASES)
@pytest.mark.parametrize("profile", [LINUX_6_1, LINUX_5_5])
def test_isa_v4_is_refused_before_6_6_with_the_kernels_message(text, message, pc, profile) -> None:
    assert not profile.isa_v4
    if profile.isa_ja32 and message == "unknown opcode 06":
        check_load(prog(text), {}, profile)     # Debian's 6.1.192 loads gotol (measured: ja32.data)
        return
    with pytest.raises(VerifierError) as info:
        check_load(prog(text), {}, profile)
    assert (info.value.pc, info.value.reason) == (pc, message)
    assert str(info.value) == f"prog p insn {pc}: {message}"
    check_load(prog(text), {}, V4)          # a 6.6+ kernel has them


def test_the_pre_pass_reports_unknown_opcodes_before_do_check_errors() -> None:
    # resolve_pseudo_ldimm64 walks the whole program before do_check sees insn 0
    with pytest.raises(VerifierError, match="insn 2: unknown opcode d7"):
        check_load(prog("mov %r0, 1\nsdiv %r0, 3\nbswap64 %r0\nexit\n"), {}, LINUX_6_1)


@pytest.mark.parametrize("text, amount", [("lsh32 %r0, 32", 32), ("rsh %r0, 64", 64), ("arsh32 %r0, 48", 48),
                                          ("lsh %r0, -1", -1)])
@pytest.mark.parametrize("profile", [LINUX_6_1, LINUX_5_5, V4])
def test_a_constant_shift_by_the_width_or_more_is_refused(text, amount, profile) -> None:
    with pytest.raises(VerifierError, match=f"^prog p insn 1: invalid shift {amount}$"):
        check_load(prog(f"mov %r0, 1\n{text}\nexit\n"), {}, profile)
    check_load(prog("mov %r0, 1\nlsh32 %r0, 31\nrsh %r0, 63\nexit\n"), {}, profile)


def test_atomics_beyond_add_need_5_12() -> None:
    text = "stdw [%r10-8], 1\nmov %r1, 2\nlock {} [%r10-8], %r1\nmov %r0, 0\nexit\n"
    check_load(prog(text.format("add")), {}, LINUX_5_5)           # BPF_XADD
    for op in ("or", "fetch add", "xchg"):
        with pytest.raises(VerifierError, match="insn 2: BPF_XADD uses reserved fields"):
            check_load(prog(text.format(op)), {}, LINUX_5_5)
        check_load(prog(text.format(op)), {}, LINUX_6_1)


@pytest.mark.parametrize("engine", [InterpEngine, JitEngine])
def test_both_engines_refuse_through_the_model(engine) -> None:
    scenario = Scenario(programs=(prog("mov %r0, 1\nbswap64 %r0\nexit\n"),), events=(Run("p", b""),),
                        prog_type=PROG_RAW)     # a run without a packet
    instance = engine(profile=LINUX_6_1)
    try:
        with pytest.raises(ProgramRefused, match="prog p insn 1: unknown opcode d7"):
            instance.execute(scenario)
    finally:
        instance.close()
    v4 = engine(profile=V4)
    try:
        assert v4.execute(scenario)[0].run.r0 == 1 << 56
    finally:
        v4.close()


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_the_generator_emits_only_what_the_profiles_kernel_has(profile) -> None:
    prof = PROFILES[profile]
    assert GenOptions().cpu_v4 is None       # from the profile, not on for every profile
    for seed in range(60):
        scenario = scenario_from_seed(seed, profile)
        for program in scenario.programs:
            check_load(program, {m.name: m for m in scenario.maps}, prof)


# -- cmpxchg zero-extension ------------------------------------------------------------------------
CMPXCHG_PROGRAM = (
    "mov %r1, 7\n"
    "stxdw [%r10-8], %r1\n"
    "mov %r0, 7\n"
    "lock cmpxchg32 [%r10-8], %r1\n"
    "{after}"
    "exit\n"
)
CMPXCHG_XLATED_HEAD = [
    "b701000007000000",      # r1 = 7
    "7b1af8ff00000000",      # *(u64 *)(r10 - 8) = r1
    "b700000007000000",      # r0 = 7
    "c31af8fff1000000",      # w0 = cmpxchg32(r10 - 8, w0, w1)
]


def xlated_hex(program: Program, profile=LINUX_6_1) -> list[str]:
    return [isa.encode([insn]).hex() for insn in verify(program, {}, profile).insns]


def test_a_32_bit_cmpxchg_whose_r0_is_read_gets_w0_eq_w0() -> None:
    # opt_subreg_zext_lo32_rnd_hi32: BPF_ZEXT_REG(R0) = mov32 w0, w0 with imm 1, right after it
    assert xlated_hex(prog(CMPXCHG_PROGRAM.format(after=""))) == CMPXCHG_XLATED_HEAD + [
        "bc00000001000000", "9500000000000000"]
    # a 64-bit cmpxchg, or an R0 redefined before any 64-bit read, gets none
    wide = prog(CMPXCHG_PROGRAM.format(after="").replace("cmpxchg32", "cmpxchg"))
    assert "bc00000001000000" not in xlated_hex(wide)
    redefined = prog(CMPXCHG_PROGRAM.format(after="mov32 %r0, %r0\n"))
    assert xlated_hex(redefined) == CMPXCHG_XLATED_HEAD + ["bc00000000000000", "9500000000000000"]
    # a 32-bit read alone (jmp32) does not need it, a later 64-bit one on some path does
    branchy = prog(CMPXCHG_PROGRAM.format(after="jeq32 %r0, 7, L\nmov %r0, 0\nexit\nL:\nadd %r0, 1\n"))
    assert xlated_hex(branchy)[4] == "bc00000001000000"


def test_a_read_behind_a_jump_the_verifier_never_takes_needs_no_zext() -> None:
    # mark_insn_zext marks only reads on the paths do_check walks: `jeq %r3, 1` with r3 = 1 is
    # always taken, so the `add %r0, 1` behind it is never walked.  The real 6.1.192 and 6.12.117
    # print exactly this (no `w0 = w0`; kernel-jit xlated dump)
    hidden = prog(CMPXCHG_PROGRAM.format(after="mov %r3, 1\njeq %r3, 1, L\nadd %r0, 1\nL:\nmov32 %r0, 0\n"))
    for profile in (LINUX_6_1, LINUX_6_12):
        assert xlated_hex(hidden, profile) == CMPXCHG_XLATED_HEAD + [
            "b703000001000000", "b400000000000000", "9500000000000000"]


def test_bswap16_and_32_read_the_low_half_only() -> None:
    # is_reg64: an ALU64 bswap16/32 (ISA v4) reads only the low half of R0, bswap64 all of it.
    # The real 6.12.117 prints no `w0 = w0` before `bswap32 r0`, one before `bswap64 r0`
    # (kernel-jit xlated dump)
    for width, zext in ((16, False), (32, False), (64, True)):
        swapped = prog(CMPXCHG_PROGRAM.format(after=f"bswap{width} %r0\n"))
        assert ("bc00000001000000" in xlated_hex(swapped, LINUX_6_12)) == zext


def test_the_jit_image_has_mov_eax_eax_after_lock_cmpxchg() -> None:
    env = JitEnv(alloc_image=lambda n: 0x10000, helper_addr=lambda i: 0, map_addr=lambda m: 0,
                 map_value_addr=lambda m: 0)
    jited = bpf_int_jit_compile(prog(CMPXCHG_PROGRAM.format(after="")), {}, LINUX_6_1, env, JitOptions(),
                                lambda m, k: None)
    text = [f"{line.mnemonic} {line.operands}" for line in jited_lines(jited.images[0].code)]
    at = next(k for k, line in enumerate(text) if line.startswith("lock cmpxchg"))
    assert text[at] == "lock cmpxchg %edi,-0x8(%rbp)"
    assert text[at + 1] == "mov %eax,%eax"


def test_unicorn_zero_extends_rax_after_a_successful_32_bit_lock_cmpxchg() -> None:
    """Pinned emulator behaviour: a CPU leaves RAX's upper half when the compare succeeds
    (only ZF and the memory change); unicorn 2.1.x writes EAX and so zero-extends RAX.
    The w0 = w0 the verifier inserts hides the difference; should an upgrade change it,
    this test says so before the fuzzer's view changes silently."""
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    code = bytes.fromhex("f00fb10b")          # lock cmpxchg %ecx,(%rbx)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_map(0x2000, 0x1000)
    uc.mem_write(0x1000, code)
    for memory, expected_rax in ((7, 7), (8, 8)):             # success, failure
        uc.mem_write(0x2000, memory.to_bytes(4, "little"))
        uc.reg_write(x86.UC_X86_REG_RAX, 0xDEADBEEF_00000007)
        uc.reg_write(x86.UC_X86_REG_RBX, 0x2000)
        uc.reg_write(x86.UC_X86_REG_RCX, 0x55)
        uc.emu_start(0x1000, 0x1000 + len(code))
        assert uc.reg_read(x86.UC_X86_REG_RAX) == expected_rax
        stored = int.from_bytes(uc.mem_read(0x2000, 4), "little")
        assert stored == (0x55 if memory == 7 else memory)


# -- run / triage on programs the kernel refuses ----------------------------------------------------
INVALID_PROGRAMS = {
    # a subprogram calling itself: check_cfg finds the call's target on its DFS stack
    "recursive.scn": ("-- prog main\nmov %r0, 0\ncall local f\nexit\nf:\n# itself\ncall local f\nexit\n"
                      "-- events\nrun main\n", "recursive.scn:7: prog main insn 3: back-edge from insn 3 to 3"),
    # above the frame: check_stack_access_within_bounds
    "stack.scn": ("-- prog main\nldxdw %r0, [%r10+8]\nexit\n-- events\nrun main\n",
                  "stack.scn:2: prog main insn 0: invalid read from stack R10 off=8 size=8"),
    # R0 after bpf_tail_call: not set (the historic false positive of test_bpf)
    "tailcall.scn": ("-- maps\njt prog_array key_size=4 value_size=4 max_entries=2\n-- prog main\n"
                     "lddw %r2, map:jt\nmov %r3, 0\ncall 12\nexit\n-- events\nrun main\n",
                     "tailcall.scn:7: prog main insn 4: R0 !read_ok (R0 is not set after bpf_tail_call)"),
}


@pytest.mark.parametrize("name", sorted(INVALID_PROGRAMS))
def test_run_refuses_what_the_kernel_refuses_in_one_line(name, tmp_path, capsys) -> None:
    from bpfdiff import cli

    text, expected = INVALID_PROGRAMS[name]
    path = tmp_path / name
    path.write_text(text)
    code = cli.main(["run", str(path)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.err.strip().splitlines() == [f"bpfdiff: error: {tmp_path}/{expected}"]
    assert "diverge" not in captured.out.lower() and "FAIL" not in captured.out


def test_triage_reports_refused_findings_apart(tmp_path, capsys) -> None:
    from bpfdiff import cli

    for name, (text, _) in INVALID_PROGRAMS.items():
        (tmp_path / name).write_text(text)
    code = cli.main(["triage", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 2
    refused = [line for line in captured.err.splitlines() if line.startswith("bpfdiff: error: ")]
    assert refused == [f"bpfdiff: error: {tmp_path}/{expected}" for _, expected in
                       (INVALID_PROGRAMS[n] for n in sorted(INVALID_PROGRAMS))]
    assert "0 findings" in captured.out


# -- map_gen_lookup: inlined map_lookup_elem ----------------------------------------------------------
LOOKUPS = """
-- maps
arr array key_size=4 value_size=12 max_entries=3
tab hash key_size=4 value_size=8 max_entries=2
-- prog p
ldxw %r6, [%r1+0]
stxw [%r10-4], %r6
mov %r2, %r10
add %r2, -4
lddw %r1, map:arr
call 1
mov %r7, 0
jeq %r0, 0, miss
ldxw %r7, [%r0+4]
miss:
stxw [%r10-8], %r6
mov %r2, %r10
add %r2, -8
lddw %r1, map:tab
call 1
mov %r8, 0
jeq %r0, 0, out
ldxdw %r8, [%r0+0]
out:
mov %r0, %r7
lsh %r0, 32
add %r0, %r8
exit
-- events
update arr 1 = 00 00 00 00 11 22 33 44 00 00 00 00
update tab 1 = 55 66 77 88 00 00 00 00
run p mem=01 00 00 00
run p mem=02 00 00 00
run p mem=03 00 00 00
-- prog_type
raw
"""


def test_array_and_hash_lookups_are_inlined_as_6_1_does_it() -> None:
    scenario = parse_scenario(LOOKUPS)
    program = scenario.programs[0]
    xlated = [isa.encode([insn]).hex() for insn in verify(program, {m.name: m for m in scenario.maps}, LINUX_6_1,
                                                          prog_type=scenario.prog_type).insns]
    # array_map_gen_lookup (bypass_spec_v1, root): r1 += offsetof(struct bpf_array, value) = 0x110;
    # r0 = *(u32 *)r2; if r0 >= max_entries goto +3; r0 <<= log2(round_up(12, 8)); r0 += r1;
    # goto +1; r0 = 0 -- in place of `call 1`
    assert xlated[6:13] == ["0701000010010000", "6120000000000000", "3500030003000000", "6700000004000000",
                            "0f10000000000000", "0500010000000000", "b700000000000000"]
    # htab_map_gen_lookup: call __htab_map_lookup_elem; if r0 == 0 goto +1;
    # r0 += offsetof(struct htab_elem, key) + round_up(4, 8) = 0x30 + 8
    at = xlated.index("85000000f4010000")
    assert xlated[at:at + 3] == ["85000000f4010000", "1500010000000000", "0700000038000000"]
    # after the patch: r7 = 0; if r0 == 0 goto +1 (over the load); r7 = *(u32 *)(r0 + 4)
    assert xlated[13:16] == ["b707000000000000", "1500010000000000", "6107040000000000"]


def test_inlined_lookups_run_alike_on_both_engines() -> None:
    scenario = parse_scenario(LOOKUPS)
    results = {}
    for engine in (InterpEngine(profile=LINUX_6_1), JitEngine(profile=LINUX_6_1)):
        try:
            results[engine.name] = [(o.run.exit, o.run.r0) for o in engine.execute(scenario) if o.run]
        finally:
            engine.close()
    # key 1: arr[1] bytes 4..7 and tab[1]; key 2: arr[2] is zero, tab has no 2; key 3: out of range
    assert results["jit"] == results["interp"] == [("exit", 0x44332211_88776655), ("exit", 0), ("exit", 0)]


def test_jit_image_adds_0x110_to_the_array_and_0x38_to_the_element() -> None:
    engine = JitEngine(profile=LINUX_6_1)
    try:
        engine.start(parse_scenario(LOOKUPS))
        code = engine.programs["p"].images[0].code
    finally:
        engine.close()
    text = [f"{line.mnemonic} {line.operands}" for line in jited_lines(code)]
    assert "add $0x110,%rdi" in text and "add $0x38,%rax" in text
    assert text[text.index("add $0x110,%rdi") + 1] == "mov 0x0(%rsi),%eax"


# -- dead branches (opt_hard_wire_dead_code_branches, opt_remove_dead_code) -------------------------
def test_rfc9669_and32_loses_its_compares_and_the_dead_exit() -> None:
    # conformance rfc9669_and32: both jne32 are never taken (6.1 knows the and32 results):
    # hard-wired to `ja +0`, removed with the nops; the `fail:` block is dead and goes too
    program = prog("mov32 %r1, 0xff00ff00\nand32 %r1, 0x0f0f0f0f\njne32 %r1, 0x0f000f00, fail\n"
                   "mov32 %r2, 0x55555555\nmov32 %r3, 0x0f0f0f0f\nand32 %r2, %r3\njne32 %r2, 0x05050505, fail\n"
                   "mov %r0, 1\nexit\nfail:\nmov %r0, 0\nexit\n")
    assert xlated_hex(program) == ["b401000000ff00ff", "540100000f0f0f0f", "b402000055555555", "b40300000f0f0f0f",
                                   "5c32000000000000", "b700000001000000", "9500000000000000"]
    env = JitEnv(alloc_image=lambda n: 0x10000, helper_addr=lambda i: 0, map_addr=lambda m: 0,
                 map_value_addr=lambda m: 0)
    code = bpf_int_jit_compile(program, {}, LINUX_6_1, env, JitOptions(), lambda m, k: None).images[0].code
    assert not any(line.mnemonic.startswith(("cmp", "j")) for line in jited_lines(code))


def test_an_always_taken_branch_becomes_straight_line_code() -> None:
    # jeq r1, 5 with r1 = 5: `ja +2`, the skipped block is dead, then `ja +0` is a nop
    program = prog("mov %r1, 5\njeq %r1, 5, L\nmov %r0, 1\nexit\nL:\nmov %r0, 2\nexit\n")
    assert xlated_hex(program) == ["b701000005000000", "b700000002000000", "9500000000000000"]


@pytest.mark.parametrize("setup", ["ldxw %r1, [%r1+16]",            # unknown: a load (xdp_md.rx_queue_index)
                                   "mov %r1, -5\nneg %r1",          # 6.1 does not track neg
                                   "mov %r1, 10\ndiv %r1, 2"])      # nor div
def test_a_branch_on_what_6_1_does_not_know_stays(setup) -> None:
    program = prog(f"{setup}\njeq %r1, 5, L\nmov %r0, 1\nexit\nL:\nmov %r0, 2\nexit\n")
    assert xlated_hex(program)[-5:] == ["1501020005000000", "b700000001000000", "9500000000000000",
                                        "b700000002000000", "9500000000000000"]


# -- constants of tail-call keys (track_const_alu) ------------------------------------------------------
@pytest.mark.parametrize("key, direct", [
    ("mov32 %r3, 1\nlsh32 %r3, 1", True),      # 2
    ("mov %r3, 7\nand32 %r3, 2", True),        # 2
    ("mov %r3, 12\narsh %r3, 2", True),        # 3
    ("mov %r3, -2\nneg %r3", False),           # 2, but 6.1 does not follow neg: indirect
    ("mov %r3, 6\nmod %r3, 4", False),         # 2, but no tracking through mod
])
def test_direct_tail_call_sites_follow_6_1s_constant_tracking(key, direct) -> None:
    maps = {"jt": MapDef("jt", "prog_array", 4, 4, 4)}
    program = prog(f"{key}\nlddw %r2, map:jt\ncall 12\nmov %r0, 0\nexit\n")
    xlated = [isa.encode([insn]).hex() for insn in verify(program, maps, LINUX_6_1).insns]
    # BPF_JMP | BPF_TAIL_CALL with imm = poke index + 1 (direct) or 0 (indirect)
    assert xlated[4] == ("f500000001000000" if direct else "f500000000000000")


def test_minimize_refuses_what_the_kernel_refuses_in_one_line(tmp_path, capsys) -> None:
    from bpfdiff import cli

    text, expected = INVALID_PROGRAMS["stack.scn"]
    (tmp_path / "stack.scn").write_text(text)
    assert cli.main(["minimize", str(tmp_path / "stack.scn")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"bpfdiff: error: {tmp_path}/{expected}"]


def test_helper_calls_go_to_the_functions_the_kernel_calls() -> None:
    # do_misc_fixups: map update/delete on a map known on every path call the map type's own
    # function (patch_map_ops_generic); prandom and smp_processor_id the prototypes' functions
    maps = {"arr": MapDef("arr", "array", 4, 8, 2), "tab": MapDef("tab", "hash", 4, 8, 2)}
    program = prog("stdw [%r10-8], 0\n"
                   "mov %r2, %r10\nadd %r2, -8\nmov %r3, %r10\nadd %r3, -8\nmov %r4, 0\n"
                   "lddw %r1, map:arr\ncall 2\n"
                   "mov %r2, %r10\nadd %r2, -8\nlddw %r1, map:tab\ncall 3\n"
                   "call 7\ncall 8\nexit\n")
    # raw: bpf_base_func_proto's prototypes (XDP keeps bpf_get_smp_processor_id, tested below)
    calls = [insn.imm for insn in verify(program, maps, LINUX_6_1, prog_type=PROG_RAW).insns
             if insn.opcode == isa.CALL_OPCODE]
    assert [isa.KERNEL_FUNC_NAMES[imm] for imm in calls] == [
        "array_map_update_elem", "htab_map_delete_elem", "bpf_user_rnd_u32", "bpf_get_raw_cpu_id"]
    scenario = Scenario(maps=tuple(maps.values()), programs=(program,), events=(Run("p", b""),) * 2,
                        prog_type=PROG_RAW)    # runs without a packet
    results = []
    for engine in (InterpEngine(profile=LINUX_6_1), JitEngine(profile=LINUX_6_1)):
        try:
            results.append([(o.run.exit, o.run.r0, o.run.maps) for o in engine.execute(scenario)])
        finally:
            engine.close()
    assert results[0] == results[1] and results[0][0][0] == "exit"


# -- bpf-to-bpf calls in the dump of a JITed program -----------------------------------------------
def dump_hex(program: Program, profile=LINUX_6_1) -> list[str]:
    return [isa.encode([insn]).hex() for insn in verify(program, {}, profile).dump_insns()]


def test_a_jited_programs_dump_has_the_call_offset_in_off_and_the_callee_index_in_imm() -> None:
    # jit_subprogs' last step: off = call_imm (relative, xlated slots), imm = find_subprog(target)
    program = prog("mov %r0, 0\ncall local f\ncall local g\nexit\n"
                   "f:\nmov %r0, 1\nexit\ng:\nmov %r0, 2\nexit\n")
    assert dump_hex(program) == [
        "b700000000000000",
        "8510020001000000",      # call pc+2, function 1 (f at 4)
        "8510030002000000",      # call pc+3, function 2 (g at 6)
        "9500000000000000",
        "b700000001000000", "9500000000000000",
        "b700000002000000", "9500000000000000",
    ]
    # the emitter still sees the relative offset in imm
    assert [insn.imm for insn in verify(program, {}, LINUX_6_1).insns[1:3]] == [2, 3]


def test_the_dumped_call_offset_counts_the_slots_a_rewrite_added() -> None:
    # the div by a register between the call and its target becomes four slots (chk_and_div:
    # jne r1, 0, +2; w0 ^= w0; ja +1; r0 /= r1): the callee moves from 5 to 8
    program = prog("mov %r0, 0\nmov %r1, 3\ncall local f\ndiv %r0, %r1\nexit\nf:\nmov %r0, 1\nexit\n")
    dumped = dump_hex(program)
    assert dumped[2] == "8510050001000000"
    assert dumped[3:7] == ["5501020000000000", "ac00000000000000", "0500010000000000", "3f10000000000000"]
    assert verify(program, {}, LINUX_6_1).format().splitlines()[2] == "   2: (85) call pc+5"


# -- the helper's function depends on the program type ---------------------------------------------
def test_patch_call_imm_takes_the_function_of_the_program_types_prototype() -> None:
    from bpfdiff.scenario import PROG_RAW, PROG_TYPES, PROG_XDP

    assert set(isa.HELPER_FUNC_BY_PROG_TYPE) == set(PROG_TYPES)
    program = prog("call 8\nmov %r6, %r0\ncall 7\nadd %r0, %r6\nexit\n")

    def calls(prog_type: str) -> list[str]:
        xlated = verify(program, {}, LINUX_6_1, prog_type=prog_type).dump_insns()
        return [isa.encode([insn]).hex() for insn in xlated if insn.opcode == isa.CALL_OPCODE]

    # xdp_func_proto: get_smp_processor_id -> bpf_get_smp_processor_id_proto (the helper itself);
    # prandom from bpf_base_func_proto -> bpf_user_rnd_u32 (505 = bpfdiff's id for it)
    assert calls(PROG_XDP) == ["8500000008000000", "85000000f9010000"]
    # bpf_base_func_proto alone: bpf_get_raw_cpu_id (506) and bpf_user_rnd_u32 (505)
    assert calls(PROG_RAW) == ["85000000fa010000", "85000000f9010000"]
    from bpfdiff.helpers import kernel_symbol
    assert [kernel_symbol(8), kernel_symbol(505), kernel_symbol(506)] == [
        "bpf_get_smp_processor_id", "bpf_user_rnd_u32", "bpf_get_raw_cpu_id"]


def test_the_map_calls_after_a_context_rewrite_are_still_resolved() -> None:
    # ingress_ifindex (xdp_md +16) becomes two loads (convert_ctx_accesses); the map calls after
    # it keep the map the verifier recorded for them: the array lookup is inlined (map_gen_lookup
    # starts with r1 += offsetof(struct bpf_array, value) = 0x110) and the update calls
    # array_map_update_elem.  (xlate used to renumber the recorded calls twice.)
    maps = {"arr": MapDef("arr", "array", 4, 8, 2)}
    program = prog("ldxw %r6, [%r1+16]\nstw [%r10-4], 0\n"
                   "lddw %r1, map:arr\nmov %r2, %r10\nadd %r2, -4\ncall 1\n"
                   "lddw %r1, map:arr\nmov %r2, %r10\nadd %r2, -4\nmov %r3, %r10\nadd %r3, -4\nmov %r4, 0\n"
                   "call 2\nmov %r0, 0\nexit\n")
    xlated = verify(program, maps, LINUX_6_1, prog_type="xdp").insns
    hexed = [isa.encode([insn]).hex() for insn in xlated]
    assert hexed[7] == "0701000010010000"            # r1 += 272, where the lookup's call was
    assert [insn.imm for insn in xlated if insn.opcode == isa.CALL_OPCODE] == [isa.KERNEL_FUNC_array_map_update_elem]


def test_a_subprograms_branch_on_what_every_caller_passes_is_hard_wired() -> None:
    # the verifier walks f with its caller's R2 = 5: `if r2 > 10` is never taken, the target's
    # code is dead (opt_remove_dead_code) and the branch, now `ja +0`, goes (opt_remove_nops)
    callee = "f:\nmov %r0, 1\njgt %r2, 10, L\nmov %r0, 2\nexit\nL:\nmov %r0, 3\nexit\n"
    program = prog("mov %r2, 5\ncall local f\nexit\n" + callee)
    assert dump_hex(program) == ["b702000005000000", "8510010001000000", "9500000000000000",
                                 "b700000001000000", "b700000002000000", "9500000000000000"]
    # callers passing 5 and 20: both outcomes happen, the branch stays
    both = prog("mov %r2, 5\ncall local f\nmov %r2, 20\ncall local f\nexit\n" + callee)
    assert "2502020000000000"[:8] in "".join(h[:8] for h in dump_hex(both))      # jgt r2, 10, +2
    assert len(dump_hex(both)) == 11          # nothing removed
