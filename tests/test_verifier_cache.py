"""The verifier model's cache keys on the profile fields the model reads (verifier.VerifierView).

Profiles that differ only in fields of :data:`~bpfdiff.verifier.NOT_READ_BY_VERIFIER` share
answers: that is right only if the model really never reads them.  These tests run the model
uncached over generated programs (and their mutations, which reach the refusal paths) on every
profile and every combination of its known-bug fixes, recording each profile attribute it reads
-- through methods and properties too -- and hold the answers against profiles mixed from two
kernels.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest
from bpfdiff.fuzz.generate import RandomDraw, mutate_scenario, scenario_from_seed
from bpfdiff.jit.bpf_jit_comp import JitOptions
from profile_reads import RecordingProfile, every_fixed_variant

from bpfdiff import memo, verifier
from bpfdiff.profiles import PROFILES, Profile, get_profile
from bpfdiff.scenario import Scenario

SEEDS = 25


def scenarios(profile: str) -> list[Scenario]:
    out = []
    for seed in range(SEEDS):
        scenario = scenario_from_seed(seed, profile)
        out += [scenario, mutate_scenario(scenario, RandomDraw(seed))]
    return out


def answer(prog, maps, profile, force_indirect: bool, prog_type: str) -> Any:
    """The model's answer, computed afresh (never from the cache), in a comparable form."""
    memo.forget_all()
    try:
        result = verifier.verify(prog, maps, profile, JitOptions(force_indirect=force_indirect), prog_type)
    except verifier.VerifierError as exc:
        return str(exc)
    return result.insns, result.orig_pc, result.pokes, [repr(sub) for sub in result.subprogs]


def test_the_model_reads_no_field_it_is_said_not_to() -> None:
    reads: set[str] = set()
    for profile in every_fixed_variant():
        for scenario in scenarios(profile.name.split("+")[0])[:8]:
            maps = {m.name: m for m in scenario.maps}
            for prog in scenario.programs:
                for force_indirect in (False, True):
                    answer(prog, maps, RecordingProfile(profile, reads), force_indirect, scenario.prog_type)
    field_names = {f.name for f in fields(Profile)}
    assert reads <= field_names, f"read through methods: {reads - field_names}"
    assert not reads & verifier.NOT_READ_BY_VERIFIER
    # the recording sees the model at work: these are read by every exploration
    assert {"isa_v4", "atomic_fetch", "verifier_jeq_range", "xdp"} <= reads


@pytest.mark.parametrize("kernel", sorted(PROFILES))
def test_answers_follow_the_verifier_fields_alone(kernel: str) -> None:
    """A profile with ``kernel``'s verifier fields and every other field of another kernel (name
    included) gets ``kernel``'s answers."""
    base = PROFILES[kernel]
    read = [f.name for f in fields(Profile) if f.name not in verifier.NOT_READ_BY_VERIFIER]
    others = [replace(other, **{name: getattr(base, name) for name in read})
              for other in PROFILES.values() if other is not base]
    for scenario in scenarios(kernel)[:16]:
        maps = {m.name: m for m in scenario.maps}
        for prog in scenario.programs:
            expected = answer(prog, maps, base, False, scenario.prog_type)
            for mixed in others:
                assert answer(prog, maps, mixed, False, scenario.prog_type) == expected


def test_a_fix_of_the_jit_alone_reuses_the_answers_of_the_profile_as_it_is() -> None:
    """d7ba4cc900bf changes what the JIT's map-ops calls return, nothing the verifier reads: the
    oracle's probe on the fixed profile finds every program verified; 116e04ba1459 moves the
    JIT's tail-call entry, also no verifier field.  SUBPROG_R0_ACROSS_TAIL_CALL's fix is one."""
    scenario = scenario_from_seed(3, "linux-6.1")
    maps = {m.name: m for m in scenario.maps}
    memo.forget_all()
    for prog in scenario.programs:
        verifier.verify(prog, maps, PROFILES["linux-6.1"], prog_type=scenario.prog_type)
    misses = verifier._verified.cache_info().misses
    for fixed in ("linux-6.1+d7ba4cc900bf", "linux-6.1+116e04ba1459", "linux-6.1+d7ba4cc900bf+116e04ba1459"):
        for prog in scenario.programs:
            verifier.verify(prog, maps, get_profile(fixed), prog_type=scenario.prog_type)
    assert verifier._verified.cache_info().misses == misses
    for prog in scenario.programs:
        verifier.verify(prog, maps, get_profile("linux-6.1+subprog-r0-tail-call"), prog_type=scenario.prog_type)
    assert verifier._verified.cache_info().misses == misses + len(scenario.programs)
