"""The generator reaches what bugs hide behind: jump-width boundaries, live values, width-confusing operands.

Deterministic: fixed seed ranges, no timing.  ``bench/generator_power.py``
prints the same measurements over more scenarios.
"""

from __future__ import annotations

import random
from collections import Counter

import pytest
from bpfdiff.fuzz.generate import (
    WIDTH_PAIR_OPS,
    FunctionBuilder,
    GenOptions,
    ProgramPlan,
    RandomDraw,
    ScenarioGenerator,
    scenario_from_seed,
    width_pair,
)
from bpfdiff.fuzz.shapes import (
    COND,
    PLANT_HIGH,
    PLANT_LOW,
    boundary_buckets,
    bucket_counts,
    jump_sites,
    plant_reaches_oracle,
    planted,
    width_planted,
)
from bpfdiff.jit.bpf_jit_comp import JitOptions, bpf_int_jit_compile

from bpfdiff import isa
from bpfdiff.isa import Insn, Program
from bpfdiff.profiles import get_profile

M32 = 0xFFFFFFFF


def _s8(b: int) -> int:
    return b - 256 if b > 127 else b


def _encoded(kind: str, code: bytes) -> tuple[str, int] | None:
    """("short" | "long", displacement) of the jump that ends ``code``, from its x86 bytes."""
    if kind == COND:
        if len(code) >= 6 and code[-6] == 0x0F and 0x80 <= code[-5] <= 0x8F:
            return "long", int.from_bytes(code[-4:], "little", signed=True)
        if len(code) >= 2 and 0x70 <= code[-2] <= 0x7F:
            return "short", _s8(code[-1])
        return None
    if len(code) >= 5 and code[-5] == 0xE9:
        return "long", int.from_bytes(code[-4:], "little", signed=True)
    if len(code) >= 2 and code[-2] == 0xEB:
        return "short", _s8(code[-1])
    return None


# linux-6.1: short forward jumps up to 123 (the convergence fix); linux-5.10: up to 127
@pytest.mark.parametrize("profile", ("linux-6.1", "linux-5.10"))
def test_generated_jumps_reach_both_sides_of_the_short_long_boundary(profile):
    """Every bucket around the boundary, for conditional and unconditional jumps, both directions.

    Each jump's bytes are read back: the short form exactly when the
    displacement is within [-128, jit_imm8_jmp_max] (``is_imm8_jmp_offset``),
    and the encoded displacement is the measured one.
    """
    edge = get_profile(profile).jit_imm8_jmp_max
    counts: Counter[str] = Counter()
    checked = 0
    for seed in range(150):
        s = scenario_from_seed(seed, profile)
        for prog in s.programs:
            sites = jump_sites(prog, s, profile)
            for kind, disp, code in sites:
                form = _encoded(kind, code)
                assert form is not None, (seed, prog.name, kind, disp, code.hex())
                if abs(disp) < 300:
                    checked += 1
                assert form == ("short" if -128 <= disp <= edge else "long", disp), (seed, prog.name, kind, disp)
            counts.update(bucket_counts([(k, d) for k, d, _ in sites], profile))
    for kind in ("cond", "uncond"):
        for bucket in boundary_buckets(profile):
            assert counts[f"{kind}:{bucket}"] >= 1, (kind, bucket, counts)
    assert checked > 1000


@pytest.mark.parametrize("profile", ("linux-6.1", "linux-5.5"))
def test_exact_padding_takes_the_bytes_it_aims_at(profile):
    """The generator's length claim (fixed-length x86 encodings), checked against the JIT's output."""
    prof = get_profile(profile)
    for nbytes in list(range(3, 40)) + [117, 118, 123, 124, 127, 128, 250]:
        gen = ScenarioGenerator(RandomDraw(nbytes), prof, GenOptions())
        plan = ProgramPlan("p")
        gen.current = plan
        fb = FunctionBuilder(gen, plan, 0, False, False, [], force_call=False)
        fb.insns.append(Insn(0xBF, 6, 1))
        for reg in (0, 3, 8):
            fb.insns.append(Insn(0xB7, reg, 0, 0, reg + 1))
            fb.scalars.add(reg)
        start = len(fb.insns)
        padding = fb.exact_padding(nbytes, frozenset())
        insns = fb.insns + padding + [Insn(0xB7, 0, 0, 0, 0), Insn(0x95)]
        jited = bpf_int_jit_compile(Program("p", tuple(insns)), {}, prof, _jit_env(), JitOptions(),
                                    lambda m, k: None, "xdp")
        addrs = jited.images[0].addrs
        assert addrs[start + len(padding)] - addrs[start] == (nbytes if nbytes not in (1, 2, 5) else nbytes + 1)
        assert all(insn.cls == isa.BPF_ALU64 for insn in padding)


def _jit_env():
    from bpfdiff.fuzz.shapes import _env
    return _env()


def test_width_pairs_tell_32_from_64_bits():
    draw = RandomDraw(random.Random(11))
    for _ in range(300):
        a, b = width_pair(draw, "and_hi_only")
        assert a & b & M32 == 0 and (a & b) >> 32 != 0
        a, b = width_pair(draw, "lo_equal")
        assert a & M32 == b & M32 and a != b
        a, b = width_pair(draw, "sign_lo")
        neg = a if a & 0x80000000 else b
        assert neg & 0x80000000 and not neg >> 63          # negative as an s32, positive as an s64
        _, b = width_pair(draw, "lo_zero_divisor")
        assert b & M32 == 0 and b != 0
        _, b = width_pair(draw, "shift_count")
        assert b >> 32 != 0
    assert set(WIDTH_PAIR_OPS) == {"and_hi_only", "lo_equal", "sign_lo", "lo_zero_divisor", "shift_count"}


def _has(s, opcode: int) -> bool:
    return any(insn.opcode == opcode for p in s.programs for insn in p.insns)


# A width bug planted in the interpreter shows when the generator produced the operands that
# tell the widths apart and the wrong result reached what the oracle compares.
@pytest.mark.parametrize(("plant", "opcode"), (
    ("jset32-reads-64", isa.BPF_JMP32 | isa.BPF_JSET | isa.BPF_X),
    ("mod32-guard-64", isa.BPF_ALU | isa.BPF_MOD | isa.BPF_X),
))
def test_width_confusion_bugs_reach_the_oracle(plant, opcode):
    found = 0
    for seed in range(300):
        s = scenario_from_seed(seed, "linux-6.1")
        if not _has(s, opcode):
            continue
        seen = plant_reaches_oracle(s, "linux-6.1", lambda: width_planted(plant))
        found += bool(seen and seen["r0_32"])
    assert found >= 3, found


def test_wrong_helper_and_atomic_results_reach_the_oracle():
    """A wrong bit in what a helper or a fetching atomic returned reaches R0 (on 32 bits too) or memory.

    Before every live register was folded into R0 (and fresh values saved
    before calls), 4% of the scenarios showed a high-half error to a 32-bit
    R0 compare and 25% a low-half one.
    """
    reached = Counter()
    fired = 0
    for seed in range(80):
        s = scenario_from_seed(seed, "linux-6.1")
        low = plant_reaches_oracle(s, "linux-6.1", lambda: planted(PLANT_LOW))
        high = plant_reaches_oracle(s, "linux-6.1", lambda: planted(PLANT_HIGH))
        if low is None:
            continue
        fired += 1
        reached["low"] += low["r0_32"]
        reached["high"] += high["r0_32"]
    assert fired >= 30
    assert reached["low"] >= 0.5 * fired and reached["high"] >= 0.5 * fired, (fired, reached)


# -- generator v5: the shapes the held-out mutations (bench/mutations.py) showed missing ---------------
def _xlated(s, prog, profile):
    from bpfdiff.jit.xlate import xlate
    return xlate(prog, {m.name: m for m in s.maps}, get_profile(profile), JitOptions(), s.prog_type)


def test_array_values_of_sizes_not_multiple_of_8_are_looked_up_past_element_0():
    """The kernel rounds array elements up to 8 bytes: only sizes like 4, 12, 20 tell round_up apart."""
    lookups = 0
    for seed in range(150):
        s = scenario_from_seed(seed, "linux-6.1")
        odd = {m.name for m in s.maps if m.kind == "array" and m.value_size % 8}
        for prog in s.programs:
            insns = prog.insns
            for pc, insn in enumerate(insns):
                # lddw r1, map:arr ... call map_lookup_elem, with the key stored as a constant >= 1
                if insn.is_lddw and insn.map in odd and any(
                        i.opcode == isa.CALL_OPCODE and i.imm == isa.BPF_FUNC_map_lookup_elem
                        for i in insns[pc + 2:pc + 6]):
                    key_stores = [i for i in insns[max(0, pc - 3):pc]
                                  if i.opcode == isa.BPF_ST | isa.BPF_MEM | isa.BPF_W and i.imm >= 1]
                    lookups += bool(key_stores)
    assert lookups >= 10, lookups


def test_tail_call_reachable_callers_with_a_stack_depth_not_a_multiple_of_8():
    """ff672c67ee76's shape: the counter reload before a bpf-to-bpf call sits below round_up(depth, 8).

    The depth is the verifier model's (the deepest r10 access: a u32 key at fp-8k+4).
    """
    found = 0
    for seed in range(200):
        s = scenario_from_seed(seed, "linux-6.1")
        for prog in s.programs:
            x = _xlated(s, prog, "linux-6.1")
            for sp in x.subprogs:
                calls = any(i.is_pseudo_call for i in x.insns[sp.start:sp.end])
                found += bool(sp.tail_call_reachable and calls and sp.stack_depth % 8)
    assert found >= 5, found


def test_some_branches_are_decided_by_the_verifier():
    """Constant knobs and dispatch cascades: the verifier model removes the side that cannot run
    (opt_hard_wire_dead_code_branches), in a good share of programs."""
    programs = removed = 0
    for seed in range(100):
        s = scenario_from_seed(seed, "linux-6.1")
        for prog in s.programs:
            x = _xlated(s, prog, "linux-6.1")
            second = {pc + 1 for pc, insn in enumerate(prog.insns) if insn.is_lddw}
            programs += 1
            removed += bool(set(range(len(prog.insns))) - set(x.orig_pc) - second)
    assert removed >= 0.1 * programs, (removed, programs)


def test_map_values_get_byte_stores_from_rdi_rsi_and_cas_with_a_64_bit_expected_value():
    """A byte store from R1/R2 (dil/sil need a REX prefix) through a non-extended base (the
    lookup's R0), and a 32-bit cmpxchg whose R0 was read as 64 bits from the same slot."""
    stxb = cas = 0
    for seed in range(200):
        s = scenario_from_seed(seed, "linux-6.1")
        for prog in s.programs:
            insns = prog.insns
            for pc, insn in enumerate(insns):
                if insn.opcode == isa.BPF_STX | isa.BPF_MEM | isa.BPF_B and insn.src in (1, 2) and insn.dst == 0:
                    stxb += 1
                if insn.opcode == isa.BPF_STX | isa.BPF_ATOMIC | isa.BPF_W and insn.imm == isa.BPF_CMPXCHG:
                    loads = [i for i in insns[max(0, pc - 5):pc]
                             if i.opcode == isa.BPF_LDX | isa.BPF_MEM | isa.BPF_DW and i.dst == 0
                             and i.src == isa.BPF_REG_FP and i.off == insn.off]
                    cas += bool(loads)
    assert stxb >= 3 and cas >= 5, (stxb, cas)
