"""The oracle with any set of engines: fields compared among the engines that observe them,
R0 on the narrowest width, engines left out or refusing, and the odd engine out named.

No qemu here: the "kernel-like" engines are the interpreter seen through what a
kernel engine can observe (no trace, no tail-call count, no fault pc; a 32-bit
R0 as BPF_PROG_TEST_RUN returns it), with what they hide scrambled so that a
comparison that looked at it would fail.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from bpfdiff.fuzz.oracle import DIVERGENCE, REFUSED, EnginePool, refusal_shape, run_oracle

from bpfdiff.compare import Difference, Observation, compare_outcomes, odd_one_out
from bpfdiff.engine import (
    EXIT,
    Engine,
    EngineUnsupported,
    EventOutcome,
    ProgramRefused,
    RunResult,
)
from bpfdiff.scenario_text import parse_scenario, read_scenario

EXAMPLES = Path(__file__).resolve().parent.parent / "corpus" / "examples"
KERNEL_OBSERVES = frozenset({"exit", "r0", "maps", "mem"})


def run_result(r0: int = 0, trace: tuple[str, ...] = ("p",), tail_calls: int = 0, mem: bytes = b"") -> RunResult:
    return RunResult(r0=r0, exit=EXIT, tail_calls=tail_calls, trace=trace, maps=(), mem=mem)


def run_event(index: int, **kwargs) -> EventOutcome:
    return EventOutcome(index, "run", run=run_result(**kwargs))


KERNEL = Observation(KERNEL_OBSERVES, 32)


# -- compare_outcomes with observations ------------------------------------------------
def test_a_field_is_compared_only_among_the_engines_that_observe_it() -> None:
    outcomes = {
        "interp": [run_event(0, r0=1, trace=("a", "b"), tail_calls=1)],
        "jit": [run_event(0, r0=1, trace=("a", "b"), tail_calls=1)],
        "kernel": [run_event(0, r0=1, trace=(), tail_calls=0)],
    }
    assert compare_outcomes(outcomes, {"kernel": KERNEL}) == []
    # without the observations the kernel's empty trace and zero count would be differences
    assert [d.field for d in compare_outcomes(outcomes)] == ["tail_calls", "trace"]


def test_a_difference_between_two_observers_leaves_out_the_engine_that_cannot_see_it() -> None:
    outcomes = {
        "interp": [run_event(0, trace=("a", "b"), tail_calls=1)],
        "jit": [run_event(0, trace=("a", "a", "b"), tail_calls=2)],
        "kernel": [run_event(0, trace=(), tail_calls=0)],
    }
    differences = compare_outcomes(outcomes, {"kernel": KERNEL})
    assert [(d.field, set(d.values)) for d in differences] == [("tail_calls", {"interp", "jit"}),
                                                              ("trace", {"interp", "jit"})]


def test_r0_is_compared_on_the_low_bits_every_observer_reports() -> None:
    high_only = {"interp": [run_event(0, r0=0x1_0000_0005)], "kernel": [run_event(0, r0=0x5)]}
    assert compare_outcomes(high_only, {"kernel": KERNEL}) == []
    assert [d.field for d in compare_outcomes(high_only)] == ["r0"]
    low = {"interp": [run_event(0, r0=0x1_0000_0005)], "jit": [run_event(0, r0=0x1_0000_0005)],
           "kernel": [run_event(0, r0=0x6)]}
    (difference,) = compare_outcomes(low, {"kernel": KERNEL})
    # the values shown are what was compared: the low 32 bits
    assert difference == Difference(0, "run", "r0", {"interp": 5, "jit": 5, "kernel": 6})
    # two 64-bit engines still compare all 64 bits between themselves...
    wide = {"interp": [run_event(0, r0=0x1_0000_0005)], "jit": [run_event(0, r0=0x2_0000_0005)]}
    assert [d.field for d in compare_outcomes(wide, {"kernel": KERNEL})] == ["r0"]
    # ...but not once a 32-bit engine takes part: each field has one width for all its observers
    assert compare_outcomes({**wide, "kernel": [run_event(0, r0=5)]}, {"kernel": KERNEL}) == []


def test_observation_is_read_from_the_engine() -> None:
    assert Observation.of(KernelLike()) == KERNEL
    assert Observation.of(KernelLike(inner=None, r0_bits=64)).r0_bits == 64


# -- odd_one_out ---------------------------------------------------------------------------
def test_odd_one_out_names_the_engine_alone_against_all_others() -> None:
    r0 = Difference(0, "run", "r0", {"interp": 1, "jit": 1, "kernel-jit": 2, "kernel-interp": 1})
    assert odd_one_out([r0]) == "kernel-jit"
    # a field seen by two engines only does not vote
    trace = Difference(0, "run", "trace", {"interp": ("a",), "jit": ("b",)})
    assert odd_one_out([r0, trace]) == "kernel-jit"
    assert odd_one_out([trace]) is None


def test_no_odd_one_out_on_a_split_or_when_fields_accuse_different_engines() -> None:
    split = Difference(0, "run", "r0", {"interp": 1, "jit": 1, "kernel-jit": 2, "kernel-interp": 2})
    assert odd_one_out([split]) is None
    three_ways = Difference(0, "run", "r0", {"interp": 1, "jit": 2, "kernel-jit": 3})
    assert odd_one_out([three_ways]) is None
    r0 = Difference(0, "run", "r0", {"interp": 1, "jit": 1, "kernel-jit": 2})
    mem = Difference(0, "run", "mem", {"interp": b"\x01", "jit": b"\x02", "kernel-jit": b"\x01"})
    assert odd_one_out([r0, mem]) is None


# -- fake engines ---------------------------------------------------------------------------
class KernelLike(Engine):
    """The interpreter as a kernel engine sees it: trace, tail-call count and fault pc are not
    reported (scrambled here), R0 is 32 bits wide; ``r0_xor`` plants a wrong R0."""

    observes = KERNEL_OBSERVES
    r0_bits = 32

    def __init__(self, inner: Engine | None = None, r0_xor: int = 0, name: str = "kernel",
                 r0_bits: int = 32) -> None:
        self.inner = inner
        self.r0_xor = r0_xor
        self.name = name
        self.r0_bits = r0_bits

    def execute(self, scenario):
        assert self.inner is not None
        outcomes = []
        for outcome in self.inner.execute(scenario):
            run = outcome.run
            if run is not None:
                run = replace(run, r0=(run.r0 ^ self.r0_xor) & 0xFFFF_FFFF, trace=("?",) * 3, tail_calls=999,
                              fault_pc=None, fault_prog=None)
            outcomes.append(replace(outcome, run=run))
        return outcomes


class Unsupported(Engine):
    name = "unsupported"

    def execute(self, scenario):
        raise EngineUnsupported("tail_calls are not allowed in non-JITed programs with bpf-to-bpf calls")


class Refusing(Engine):
    name = "refusing"

    def execute(self, scenario):
        raise ProgramRefused(scenario.programs[0].name, "BPF_MOV uses reserved fields\nprocessed 3 insns", 22)


class FakePool(EnginePool):
    """Fake engines by name: ``kernel`` / ``kernel2`` (correct), ``kernel-bad`` (wrong R0),
    ``unsupported``, ``refusing``; anything else from the real pool."""

    def get(self, name, profile, bugs, **options):
        if name.startswith("kernel"):
            inner = super().get("interp", profile, frozenset())
            return KernelLike(inner, r0_xor=1 if name == "kernel-bad" else 0, name=name)
        if name == "unsupported":
            return Unsupported()
        if name == "refusing":
            return Refusing()
        return super().get(name, profile, bugs, **options)


@pytest.fixture(scope="module")
def pool():
    p = FakePool()
    yield p
    p.close()


def example(name: str):
    return read_scenario(EXAMPLES / name)


def test_kernel_like_engines_agree_with_ours_on_the_examples(pool) -> None:
    # the kernel-like engines scramble trace and tail-call count: only observed fields are compared
    for path in sorted(EXAMPLES.glob("*.scn")):
        verdict = run_oracle(read_scenario(path), engines=("interp", "jit", "kernel", "kernel2"), pool=pool)
        if path.stem == "tailcall_hierarchy":      # the example of linux-6.1's known kernel bug
            assert [f.signature for f in verdict.findings] == ["known:linux-6.1:116e04ba1459"], path.name
        else:
            assert verdict.ok, (path.name, verdict.findings)
        assert verdict.observations["kernel"] == KERNEL and verdict.observations["jit"] == Observation()


def test_three_engines_name_a_wrong_kernel_engine_as_the_odd_one(pool) -> None:
    verdict = run_oracle(example("direct_tail_call.scn"), engines=("interp", "jit", "kernel-bad"), pool=pool)
    finding = verdict.findings[0]
    assert finding.kind == DIVERGENCE and finding.odd == "kernel-bad"
    assert verdict.signature == "divergence:linux-6.1:data:kernel-bad@odd:any"
    assert finding.values == {"interp": "0x2a", "jit": "0x2a", "kernel-bad": "0x2b"}
    assert "kernel-bad stands alone against interp, jit" in finding.detail


def test_two_engines_hold_the_other_one_against_the_reference(pool) -> None:
    # no odd one out with two engines: the one that is not the reference interpreter is named
    verdict = run_oracle(example("direct_tail_call.scn"), engines=("interp", "kernel-bad"), pool=pool)
    assert verdict.findings[0].odd is None
    assert verdict.signature == "divergence:linux-6.1:data:kernel-bad@ref:any"
    # without the reference among them, two engines cannot name the wrong one
    other = run_oracle(example("direct_tail_call.scn"), engines=("kernel", "kernel-bad"), pool=pool)
    assert other.findings[0].odd is None
    assert other.signature == "divergence:linux-6.1:data:-:any"


@pytest.mark.parametrize("bug,odd,signature", [
    # a poke bug in our JIT: the kernel-like engine sides with the interpreter
    ("poke-skip-delete", "jit", "divergence:linux-6.1:control:jit@delete:direct"),
    # the counter bugs are still named by their what-if model, for the odd engine only
    ("tail-call-limit-ja", "jit", "divergence:linux-6.1:control:jit@limit+1:any"),
    ("interp-tail-call-limit", "interp", "divergence:linux-6.1:control:interp@limit-1:any"),
])
def test_three_engines_name_the_engine_of_a_planted_bug(bug, odd, signature, pool) -> None:
    # tail_call_limit.scn counts its entries in a map, so the kernel-like engine sees the count
    name = "direct_tail_call.scn" if bug.startswith("poke") else "tail_call_limit.scn"
    text = (EXAMPLES / name).read_text()
    if bug.startswith("poke"):
        text = text.replace("run caller                       # r0 = 1", "run caller")
    verdict = run_oracle(parse_scenario(text, name), engines=("interp", "jit", "kernel"),
                         bugs=frozenset({bug}), pool=pool)
    assert verdict.signature == signature
    assert verdict.findings[0].odd == odd


def test_a_divergence_only_two_engines_observe_falls_back_to_the_what_if_probes(pool) -> None:
    # the self loop returns 7 whatever the count: only trace and tail-call count show the bug,
    # and the kernel-like engine sees neither
    text = """-- maps
jmp prog_array key_size=4 value_size=4 max_entries=4
-- prog loop
mov %r3, 0
lddw %r2, map:jmp
call 12
mov %r0, 7
exit
-- events
update jmp 0 prog:loop
run loop mem=00 00 00 00 00 00 00 00 00 00 00 00 00 00
"""
    verdict = run_oracle(parse_scenario(text, "loop.scn"), engines=("interp", "jit", "kernel"),
                         bugs=frozenset({"tail-call-limit-ja"}), pool=pool)
    assert verdict.findings[0].odd is None
    assert set(verdict.findings[0].values) == {"interp", "jit"}
    assert verdict.signature == "divergence:linux-6.1:control:jit@limit+1:any"


def test_an_unsupported_engine_is_left_out_and_noted(pool) -> None:
    verdict = run_oracle(example("retarget.scn"), engines=("interp", "unsupported", "jit"), pool=pool)
    assert verdict.ok and set(verdict.outcomes) == {"interp", "jit"}
    assert verdict.notes == ["unsupported left out: tail_calls are not allowed in non-JITed programs with "
                             "bpf-to-bpf calls"]
    # left out, the others still diverge as before
    bad = run_oracle(example("direct_tail_call.scn"), engines=("interp", "unsupported", "kernel-bad"), pool=pool)
    assert bad.signature == "divergence:linux-6.1:data:kernel-bad@ref:any"


def test_a_refusal_by_some_engines_is_a_finding_of_its_own(pool) -> None:
    verdict = run_oracle(example("direct_tail_call.scn"), engines=("interp", "jit", "refusing"), pool=pool)
    assert [f.kind for f in verdict.findings] == [REFUSED]
    finding = verdict.findings[0]
    assert finding.signature == "refused:linux-6.1:refusing:BPF_MOV uses reserved fields"
    assert finding.odd == "refusing"
    assert finding.values["interp"] == "loaded" and "BPF_MOV uses reserved fields" in finding.values["refusing"]
    assert verdict.new_findings == verdict.findings


def test_a_refusal_by_every_engine_is_bad_input_not_a_finding(pool) -> None:
    with pytest.raises(ProgramRefused):
        run_oracle(example("direct_tail_call.scn"), engines=("refusing",), pool=pool)


def test_refusal_shape_keeps_the_words_not_the_numbers() -> None:
    assert refusal_shape("invalid bpf_context access off=76 size=4\nprocessed 9 insns") == \
        "invalid bpf_context access off=N size=N"
    assert refusal_shape("R2 !read_ok") == "RN !read_ok"
    assert refusal_shape("") == "?"


# -- `bpfdiff run` with N engines -------------------------------------------------------------
def test_run_names_the_odd_engine_and_compares_only_what_each_observes(tmp_path, monkeypatch, capsys) -> None:
    import json

    import bpfdiff.engine as engine_module
    from bpfdiff import cli
    from bpfdiff.commands import run as run_command

    engines = {"a": Observation(), "b": Observation(), "k": KERNEL}

    class Scripted(Engine):
        def __init__(self, name: str) -> None:
            self.name = name
            self.observes = engines[name].observes
            self.r0_bits = engines[name].r0_bits

        def execute(self, scenario):
            # k shows no trace and R0's low 32 bits; on the second run it returns 7 where a and b return 6
            r0 = {"a": 0x1_0000_0006, "b": 0x1_0000_0006, "k": 7}[self.name]
            trace = () if self.name == "k" else ("p",)
            return [EventOutcome(0, "run", run=run_result(r0=r0 if self.name != "k" else 6, trace=trace)),
                    EventOutcome(1, "run", run=run_result(r0=r0, trace=trace))]

    monkeypatch.setattr(engine_module, "engine_names", lambda: tuple(engines))
    monkeypatch.setattr(run_command, "make_engine", lambda name, **_: Scripted(name))
    path = tmp_path / "s.scn"
    path.write_text("-- prog p\nmov %r0, 6\nexit\n-- events\nrun p\nrun p\n")
    assert cli.main(["run", str(path), "--engines", "a,b,k"]) == 1
    out = capsys.readouterr().out
    assert "[0] run p:" in out and "[0] run p: ENGINES DIFFER" not in out     # 0x100000006 is 6 to k
    assert "[1] run p: ENGINES DIFFER (k stands alone)" in out
    assert "event 1 (run) r0:  a 0x6 | b 0x6 | k 0x7" in out
    assert cli.main(["run", str(path), "--engines", "a,b,k", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["odd_one_out"] == "k"
    assert report["observes"]["k"] == {"fields": sorted(KERNEL_OBSERVES), "r0_bits": 32}
    assert [d["field"] for d in report["differences"]] == ["r0"]
