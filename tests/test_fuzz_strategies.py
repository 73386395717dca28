"""Hypothesis strategies: every example valid, shrinking keeps it valid and finds small counterexamples."""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.checker import check_scenario
from bpfdiff.fuzz.strategies import (
    BLOCK_KINDS,
    SHAPE_KINDS,
    alu_insns,
    blocks,
    corner_immediates,
    events,
    maps,
    scenarios,
    width_pairs,
)
from hypothesis import HealthCheck, find, given, settings

from bpfdiff import isa

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FAST
@given(scenarios("linux-6.1"))
def test_scenarios_are_valid_on_6_1(s):
    assert check_scenario(s, "linux-6.1") == []


@FAST
@given(scenarios("linux-5.5"))
def test_scenarios_are_valid_on_5_5(s):
    assert check_scenario(s, "linux-5.5") == []


@FAST
@given(alu_insns())
def test_alu_insns_are_encodable_and_respect_verifier_constants(insn):
    isa.check_insn(0, insn)
    width = 64 if insn.cls == isa.BPF_ALU64 else 32
    if insn.source == isa.BPF_K and insn.op in (isa.BPF_LSH, isa.BPF_RSH, isa.BPF_ARSH):
        assert 0 <= insn.imm < width
    if insn.source == isa.BPF_K and insn.op in (isa.BPF_DIV, isa.BPF_MOD):
        assert insn.imm != 0


@pytest.mark.parametrize("kind", BLOCK_KINDS + SHAPE_KINDS)
def test_every_block_kind_is_a_valid_program(kind):
    @settings(max_examples=15, deadline=None)
    @given(blocks(kind))
    def check(s):
        assert check_scenario(s, "linux-6.1") == [], kind

    check()


@FAST
@given(width_pairs("and_hi_only"), width_pairs("lo_zero_divisor"), width_pairs())
def test_width_pairs_differ_between_32_and_64_bits(jset, div, any_pair):
    assert jset[0] & jset[1] & 0xFFFFFFFF == 0 and (jset[0] & jset[1]) >> 32
    assert div[1] & 0xFFFFFFFF == 0 and div[1]
    assert all(0 <= v < 1 << 64 for v in any_pair)


@FAST
@given(corner_immediates(), maps(), events())
def test_component_strategies_compose(imm, map_defs, programs_and_events):
    assert -(1 << 31) <= imm < (1 << 31)
    assert map_defs and all(m.max_entries >= 1 for m in map_defs)
    programs, evs = programs_and_events
    assert programs and evs


def test_shrinking_keeps_scenarios_valid_and_small():
    """The minimal scenario with a tail call is still valid, and tiny (motifs keep two programs)."""
    def has_direct_site(s):
        return any(insn.is_tail_call for p in s.programs for insn in p.insns)

    smallest = find(scenarios("linux-6.1"), has_direct_site, settings=settings(max_examples=300, deadline=None))
    assert check_scenario(smallest, "linux-6.1") == []
    slots, nevents = smallest.size()
    assert slots <= 14 and nevents <= 3


def test_shrinking_a_planted_bug_gives_a_small_valid_reproducer():
    from bpfdiff.fuzz.oracle import run_oracle

    def diverges(s):
        return not run_oracle(s, bugs=frozenset({"tail-call-limit-ja"})).ok

    smallest = find(scenarios("linux-6.1"), diverges, settings=settings(max_examples=200, deadline=None))
    assert check_scenario(smallest, "linux-6.1") == []
    assert not run_oracle(smallest, bugs=frozenset({"tail-call-limit-ja"})).ok
    assert run_oracle(smallest).ok
    slots, nevents = smallest.size()
    assert slots <= 14 and nevents <= 3
