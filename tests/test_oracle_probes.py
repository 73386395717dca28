"""The oracle's known-bug probes run an engine again only under a fix it can tell apart.

``known_kernel_bug`` re-runs the models on the profile with each combination of its known
kernel bugs fixed; an engine whose :attr:`~bpfdiff.engine.Engine.ignores_profile_fields` cover
everything a fix changes keeps the outcomes it had (the interpreter under a fix of the JIT alone).
That is right only if the engine really never reads those fields (recorded here, through the
verifier model it loads with), and the verdicts must be the ones that running everything gives.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bpfdiff.fuzz.generate import RandomDraw, mutate_scenario, scenario_from_seed
from bpfdiff.fuzz.oracle import EnginePool, run_oracle
from bpfdiff.interp.engine import InterpEngine
from bpfdiff.jit.engine import JitEngine
from profile_reads import RecordingProfile, every_fixed_variant
from test_subprog_r0_tail_call import REPRO as SUBPROG_R0_REPRO

from bpfdiff import memo
from bpfdiff.engine import _REGISTRY as engine_registry
from bpfdiff.engine import EngineError
from bpfdiff.profiles import get_profile
from bpfdiff.scenario_text import parse_scenario

EXAMPLES = ("direct_tail_call", "retarget", "tail_call_limit", "tailcall_hierarchy")


def test_the_interpreter_reads_no_field_it_ignores() -> None:
    examples = [parse_scenario(Path(f"corpus/examples/{name}.scn").read_text(), name) for name in EXAMPLES]
    reads: set[str] = set()
    for profile in every_fixed_variant():
        base = profile.name.split("+")[0]
        generated = [scenario_from_seed(seed, base) for seed in range(12)]
        mutated = [mutate_scenario(s, RandomDraw(seed)) for seed, s in enumerate(generated[:4])]
        engine = InterpEngine(profile)
        engine.profile = RecordingProfile(profile, reads)
        for scenario in examples + generated + mutated:
            memo.forget_all()
            try:
                engine.execute(scenario)
            except EngineError:
                pass           # refused: what the model read to refuse it is recorded too
    assert not reads & InterpEngine.ignores_profile_fields
    # the recording sees the interpreter's counter at work
    assert {"max_tail_call_cnt", "interp_limit_test", "tail_call_counts_empty_slot", "subprog_counter"} <= reads


class CountingInterp(InterpEngine):
    runs = 0

    def execute(self, scenario):
        CountingInterp.runs += 1
        return super().execute(scenario)


# (profile, seed, planted bugs): known kernel bugs of each profile found first by one fix, by
# the second, by a pair, and divergences that no fix explains (every combination is probed)
CASES = [("linux-6.1", 10, ""), ("linux-6.1", 9, ""), ("linux-6.1", 50, ""), ("linux-5.10", 11, ""),
         ("linux-6.12", 15, ""), ("linux-5.5", 8, ""), ("linux-6.1", 1, "interp-tail-call-limit"),
         ("linux-6.1", 1, "tail-call-limit-ja"), ("linux-6.1", 37, "alu32-no-zext")]


@pytest.mark.parametrize("profile, seed, bugs", CASES)
def test_probes_give_the_verdict_running_every_engine_gives(profile, seed, bugs, monkeypatch) -> None:
    scenario = scenario_from_seed(seed, profile)
    planted = frozenset(bugs.split(",")) - {""}
    monkeypatch.setitem(engine_registry, "interp", (__name__, "CountingInterp"))

    def verdict() -> tuple[list, int]:
        CountingInterp.runs = 0
        v = run_oracle(scenario, profile=profile, bugs=planted, pool=EnginePool())
        assert not v.ok
        return [(f.kind, f.signature, f.event_index, f.field, f.values, f.detail, f.alternatives)
                for f in v.findings], CountingInterp.runs

    reusing, runs_reusing = verdict()
    monkeypatch.setattr(CountingInterp, "ignores_profile_fields", frozenset())
    running_all, runs_all = verdict()
    assert reusing == running_all
    if reusing[0][1] == f"known:{profile}:d7ba4cc900bf":
        assert runs_reusing < runs_all       # the fix of the JIT's map-ops calls alone: not rerun


# What each engine reads only at some points of a scenario: the field and its two values.
FLIPS = {"interp": (("tail_call_counts_empty_slot", (True, False)), ("verifier_trusts_subprog_r0", (True, False))),
         "jit": (("map_ops_return_bits", (32, 64)), ("verifier_trusts_subprog_r0", (True, False)))}


@pytest.mark.parametrize("engine_name", sorted(FLIPS))
@pytest.mark.parametrize("profile_name", ["linux-6.1", "linux-5.10"])
def test_a_field_the_scenario_did_not_depend_on_changes_nothing(engine_name, profile_name) -> None:
    """Engine.unaffected_profile_fields after a scenario: running it again with such a field's other
    value gives the same outcomes -- also for what only the costlier question against that other
    profile finds (the verifier model's answers unchanged) -- and the fields the engine reads only
    somewhere are told apart per scenario (both answers occur)."""
    from bpfdiff.engine import make_engine

    base = get_profile(profile_name)
    said: dict[str, set[bool]] = {field: set() for field, _ in FLIPS[engine_name]}
    only_against: set[str] = set()       # fields only the costlier question (against) found unaffected
    engines = {(field, value): make_engine(engine_name, profile=base.with_options(**{field: value}))
               for field, values in FLIPS[engine_name] for value in values}
    # the known bug's own reproducer: the JIT returns another R0 under the fix
    for seed, scenario in [(None, parse_scenario(SUBPROG_R0_REPRO))] + \
            [(seed, scenario_from_seed(seed, profile_name)) for seed in range(30)]:
        for field, values in FLIPS[engine_name]:
            for value in values:
                engine = engines[field, value]
                try:
                    outcomes = engine.execute(scenario)
                except EngineError:
                    continue
                other = engines[field, next(v for v in values if v != value)]
                plain = field in engine.unaffected_profile_fields()
                unaffected = field in engine.unaffected_profile_fields(against=other.profile)
                assert unaffected or not plain
                said[field].add(plain)
                if unaffected and not plain:
                    only_against.add(field)
                if unaffected:
                    assert other.execute(scenario) == outcomes, (seed, field, value)
    for engine in engines.values():
        engine.close()
    assert all(answers == {True, False} for answers in said.values()), said
    assert "verifier_trusts_subprog_r0" in only_against


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.10", "linux-6.12", "linux-5.5"])
def test_probes_reusing_what_a_scenario_did_not_depend_on_give_the_same_verdicts(profile, monkeypatch) -> None:
    """The known-bug probes with each engine's per-scenario unaffected fields, and with only the
    fields it ignores: the same findings, in fewer runs."""
    from bpfdiff.engine import Engine

    scenarios = [scenario_from_seed(seed, profile) for seed in range(60)]

    def verdicts() -> tuple[list, int]:
        pool = EnginePool()
        runs = 0
        real_get = pool.get

        def counting_get(name, profile_name, bugs, **options):
            nonlocal runs
            engine = real_get(name, profile_name, bugs, **options)
            if "+" in profile_name and not hasattr(engine, "counted"):
                execute = engine.execute

                def counted(scenario):
                    nonlocal runs
                    runs += 1
                    return execute(scenario)
                engine.execute = engine.counted = counted
            return engine

        pool.get = counting_get
        out = []
        for scenario in scenarios:
            try:
                v = run_oracle(scenario, profile=profile, pool=pool)
            except EngineError:
                continue
            out.append([(f.kind, f.signature, f.event_index, f.field, f.values, f.detail, f.alternatives)
                        for f in v.findings])
        pool.close()
        return out, runs

    reusing, runs_reusing = verdicts()
    monkeypatch.setattr(InterpEngine, "unaffected_profile_fields", Engine.unaffected_profile_fields)
    monkeypatch.setattr(JitEngine, "unaffected_profile_fields", Engine.unaffected_profile_fields)
    running, runs_running = verdicts()
    assert reusing == running
    assert any(findings and findings[0][0] == "known" for findings in reusing)
    assert runs_reusing < runs_running if profile in ("linux-6.1", "linux-5.10") else runs_reusing <= runs_running
