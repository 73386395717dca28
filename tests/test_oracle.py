"""The oracle: each planted bug shows up as a divergence on a hand-built scenario, none without it.

The scenarios are the smallest shapes each bug needs (reasoned from the
kernel's semantics: a self tail call runs 1 + 33 programs on both modelled
kernels; a deleted slot makes a direct site fall through; a retargeted slot
enters the new program...).  Signatures must separate the bugs and stay the
same across different scenarios showing the same bug.
"""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.oracle import CRASH, DIVERGENCE, VIOLATION, EnginePool, run_oracle
from raw_scenarios import parse_raw

from bpfdiff.engine import Engine, EventOutcome
from bpfdiff.profiles import get_profile, unfixed_kernel_bugs

MAPS = "-- maps\njmp prog_array key_size=4 value_size=4 max_entries=4\n"

SELF_LOOP_DIRECT = MAPS + """-- prog loop
mov %r3, 0
lddw %r2, map:jmp
call 12
mov %r0, 7
exit
-- events
update jmp 0 prog:loop
run loop
"""

SELF_LOOP_INDIRECT = MAPS + """-- prog loop
mov %r6, %r1
ldxw %r3, [%r6+0]
lddw %r2, map:jmp
call 12
mov %r0, 7
exit
-- events
update jmp 2 prog:loop
run loop mem=02 00 00 00
"""

TARGETS = """-- prog a
mov %r0, 10
exit
-- prog b
mov %r0, 11
exit
-- prog caller
mov %r3, 1
lddw %r2, map:jmp
call 12
mov %r0, 1
exit
"""

DELETE = MAPS + TARGETS + """-- events
update jmp 1 prog:a
run caller
delete jmp 1
run caller
"""

DELETE_OTHER = MAPS + TARGETS.replace("mov %r3, 1", "mov %r3, 3") + """-- events
update jmp 3 prog:b
run caller
run caller
delete jmp 3
run caller
"""

RETARGET = MAPS + TARGETS + """-- events
update jmp 1 prog:a
run caller
update jmp 1 prog:b
run caller
"""

DIRECT_CALL = MAPS + TARGETS + """-- events
update jmp 1 prog:a
run caller
"""

SUBPROG_CHAIN = MAPS + """-- prog entry
mov %r3, 0
lddw %r2, map:jmp
call 12
mov %r0, 1
exit
-- prog middle
call local f
mov %r0, 2
exit
f:
mov %r3, 1
lddw %r2, map:jmp
call 12
mov %r0, 3
exit
-- prog loop
mov %r3, 1
lddw %r2, map:jmp
call 12
mov %r0, 4
exit
-- events
update jmp 0 prog:middle
update jmp 1 prog:loop
run entry
"""

ALU32 = """-- prog main
lddw %r0, 0x100000005
mov %r2, 1
add32 %r0, %r2
exit
-- events
run main
"""

# bug -> (scenario, profiles where it must show)
CASES = {
    "tail-call-limit-ja": (SELF_LOOP_DIRECT, ("linux-6.1",)),
    "interp-tail-call-limit": (SELF_LOOP_DIRECT, ("linux-6.1", "linux-5.5")),
    "poke-skip-delete": (DELETE, ("linux-6.1", "linux-5.5")),
    "poke-retarget-stale": (RETARGET, ("linux-6.1", "linux-5.5")),
    "tail-call-offset": (DIRECT_CALL, ("linux-6.1", "linux-5.5")),
    "subprog-counter-reset": (SUBPROG_CHAIN, ("linux-6.1",)),
    "alu32-no-zext": (ALU32, ("linux-6.1", "linux-5.5")),
}


def scenario(text: str):
    return parse_raw(text, "oracle-test.scn")


@pytest.fixture(scope="module")
def pool():
    p = EnginePool()
    yield p
    p.close()


@pytest.mark.parametrize("bug,profile", [(b, p) for b, (_, ps) in CASES.items() for p in ps])
def test_planted_bug_gives_a_divergence_and_none_without_it(bug, profile, pool):
    s = scenario(CASES[bug][0])
    clean = run_oracle(s, profile=profile, pool=pool)
    assert clean.ok, clean.findings
    verdict = run_oracle(s, profile=profile, bugs=frozenset({bug}), pool=pool)
    assert not verdict.ok
    finding = verdict.findings[0]
    assert finding.kind == DIVERGENCE
    assert verdict.signature == finding.signature
    assert verdict.signature.startswith(f"divergence:{profile}:")
    assert set(finding.values) == {"interp", "jit"}


def test_limit_bugs_are_told_apart_by_the_tail_call_count(pool):
    s = scenario(SELF_LOOP_DIRECT)
    ja = run_oracle(s, bugs=frozenset({"tail-call-limit-ja"}), pool=pool).findings[0]
    early = run_oracle(s, bugs=frozenset({"interp-tail-call-limit"}), pool=pool).findings[0]
    # 1 + 33 programs is the kernel's answer; ja lets the JIT take a 34th tail call,
    # the interpreter bug stops at 32.
    assert ja.values == {"interp": "33", "jit": "34"} and ":jit@limit+1:" in ja.signature
    assert early.values == {"interp": "32", "jit": "33"} and ":interp@limit-1:" in early.signature


def test_signatures_separate_the_planted_bugs(pool):
    signatures = {bug: run_oracle(scenario(text), profile="linux-6.1", bugs=frozenset({bug}), pool=pool).signature
                  for bug, (text, profiles) in CASES.items() if "linux-6.1" in profiles}
    assert len(set(signatures.values())) == len(signatures), signatures


@pytest.mark.parametrize("bug,first,second", [
    ("tail-call-limit-ja", SELF_LOOP_DIRECT, SELF_LOOP_INDIRECT),
    ("poke-skip-delete", DELETE, DELETE_OTHER),
])
def test_signature_is_stable_across_scenarios_of_one_bug(bug, first, second, pool):
    a = run_oracle(scenario(first), bugs=frozenset({bug}), pool=pool)
    b = run_oracle(scenario(second), bugs=frozenset({bug}), pool=pool)
    assert a.signature and a.signature == b.signature


def test_direct_site_bugs_are_marked_direct_and_limit_bugs_any(pool):
    delete = run_oracle(scenario(DELETE), bugs=frozenset({"poke-skip-delete"}), pool=pool)
    limit = run_oracle(scenario(SELF_LOOP_DIRECT), bugs=frozenset({"tail-call-limit-ja"}), pool=pool)
    assert delete.signature.endswith(":direct") and limit.signature.endswith(":any")


def test_engines_are_reused_from_the_pool(pool):
    first = pool.get("jit", "linux-6.1", frozenset())
    run_oracle(scenario(DIRECT_CALL), pool=pool)
    assert pool.get("jit", "linux-6.1", frozenset()) is first
    # interpreter bugs do not give the JIT a new instance
    assert pool.get("jit", "linux-6.1", frozenset({"interp-tail-call-limit"})) is first


class BrokenEngine(Engine):
    name = "broken"

    def execute(self, scenario):
        raise ZeroDivisionError("engine fell over")


class SelfCheckingEngine(Engine):
    """Agrees with the interpreter but reports a failed self-check."""

    name = "selfcheck"

    def __init__(self, inner: Engine) -> None:
        self.inner = inner

    def execute(self, scenario):
        outcomes = self.inner.execute(scenario)
        last = outcomes[-1]
        outcomes[-1] = EventOutcome(last.index, last.kind, last.run, last.retval, ("poke site 3 at 0x1f: nop5",))
        return outcomes


class FakePool(EnginePool):
    def get(self, name, profile, bugs, **options):
        if name == "broken":
            return BrokenEngine()
        if name == "selfcheck":
            return SelfCheckingEngine(super().get("interp", profile, bugs))
        return super().get(name, profile, bugs, **options)


def test_engine_exception_is_a_crash_finding():
    verdict = run_oracle(scenario(DIRECT_CALL), engines=("interp", "broken"), pool=FakePool())
    assert [f.kind for f in verdict.findings] == [CRASH]
    # the innermost frame inside bpfdiff: the engine itself lives in this test file
    assert verdict.signature == "crash:linux-6.1:broken:ZeroDivisionError@bpfdiff.fuzz.oracle.run_oracle"
    assert "engine fell over" in verdict.findings[0].values["broken"]


def test_self_check_violation_is_a_finding_even_when_results_agree():
    verdict = run_oracle(scenario(DIRECT_CALL), engines=("interp", "selfcheck"), pool=FakePool())
    assert [f.kind for f in verdict.findings] == [VIOLATION]
    assert verdict.signature == "violation:linux-6.1:selfcheck:poke site N at N: nopN"


DELETE_AFTER_RETARGET = MAPS + TARGETS + """-- events
update jmp 1 prog:a
run caller
update jmp 1 prog:b
run a
delete jmp 1
run caller
"""

RETARGET_THEN_DELETE = MAPS + TARGETS + """-- events
update jmp 1 prog:a
run caller
update jmp 1 prog:b
run a
delete jmp 1
update jmp 1 prog:b
run caller
"""


@pytest.mark.parametrize("bug,text,trigger,profile", [
    ("poke-skip-delete", DELETE_AFTER_RETARGET, "delete", "linux-6.1"),
    ("poke-skip-delete", DELETE_AFTER_RETARGET, "delete", "linux-5.5"),
    # 6.1's bypass jumps over the stale site once the slot is empty: only 5.5 shows this one
    ("poke-retarget-stale", DELETE_AFTER_RETARGET, "retarget", "linux-5.5"),
    ("poke-retarget-stale", RETARGET_THEN_DELETE, "retarget", "linux-6.1"),
])
def test_direct_site_signature_names_the_mishandled_map_event(bug, text, trigger, profile, pool):
    verdict = run_oracle(scenario(text), profile=profile, bugs=frozenset({bug}), pool=pool)
    # the probe forced the JIT's tail calls indirect and the divergence went away: the JIT is named
    assert verdict.signature == f"divergence:{profile}:control:jit@{trigger}:direct"


# entry -> pre -> middle: the subprogram of `middle` is called with a count of
# 2, so a counter lost across the call costs two extra tail calls.
SUBPROG_CHAIN_TWO_HOPS = SUBPROG_CHAIN.replace("""-- prog middle""", """-- prog pre
mov %r3, 2
lddw %r2, map:jmp
call 12
mov %r0, 5
exit
-- prog middle""").replace("update jmp 0 prog:middle", "update jmp 0 prog:pre\nupdate jmp 2 prog:middle")


@pytest.mark.parametrize("bug,model", [("subprog-counter-reset", "subprog-reset"),
                                       ("tail-call-limit-ja", "limit+1")])
def test_counter_bugs_through_subprograms_are_named_by_their_what_if_model(bug, model, pool):
    verdict = run_oracle(scenario(SUBPROG_CHAIN_TWO_HOPS), profile="linux-6.1", bugs=frozenset({bug}), pool=pool)
    assert verdict.signature == f"divergence:linux-6.1:control:jit@{model}:any"


def test_one_hop_before_the_subprogram_cannot_tell_the_counter_bugs_apart(pool):
    # With a count of 1 at the call, losing it and a limit one higher both
    # give exactly one extra tail call: the outcomes are identical, so the
    # signature can only follow the probe order (WHAT_IF_MODELS).
    s = scenario(SUBPROG_CHAIN)
    reset = run_oracle(s, profile="linux-6.1", bugs=frozenset({"subprog-counter-reset"}), pool=pool)
    limit = run_oracle(s, profile="linux-6.1", bugs=frozenset({"tail-call-limit-ja"}), pool=pool)
    assert reset.outcomes["jit"] == limit.outcomes["jit"]
    assert reset.signature == limit.signature


# A self loop whose subprogram tail-calls an empty slot first.  linux-6.1 counts a call through an
# empty slot, so with one shared counter each pass costs two counts: 16 passes, the 17th call
# refused at 33.  The 6.1 JIT passes the count to the subprogram by value (116e04ba1459, a known
# bug of the profile): the subprogram's count is lost on return, one count per pass, 33 passes;
# with the planted limit one higher, 34.  Neither what-if model alone gives 34 (a limit one
# higher: 17; the copied count: 33); the planted limit on top of the known bug does.
LOOP_OVER_EMPTY_SLOT_IN_SUBPROG = MAPS + """-- prog loop
call local sub
mov %r3, 0
lddw %r2, map:jmp
call 12
mov %r0, 0
exit
sub:
mov %r3, 1
lddw %r2, map:jmp
call 12
mov %r0, 0
exit
-- events
update jmp 0 prog:loop
run loop
"""


def test_a_planted_limit_inside_a_known_hierarchy_bug_is_still_named_by_its_model(pool):
    s = scenario(LOOP_OVER_EMPTY_SLOT_IN_SUBPROG)
    bugs = frozenset({"tail-call-limit-ja"})
    verdict = run_oracle(s, profile="linux-6.1", bugs=bugs, pool=pool)
    assert [verdict.outcomes[e][1].run.tail_calls for e in ("interp", "jit")] == [16, 34]
    assert verdict.signature == "divergence:linux-6.1:control:jit@limit+1:any"
    # no model alone explains 34: it takes the limit one higher with 116e04ba1459's copied count
    alone = {model: pool.what_if_interp("linux-6.1", model).execute(s)[1].run.tail_calls
             for model in ("limit+1", "subprog-reset")}
    assert 34 not in alone.values(), alone
    hierarchy = next(bug for bug in get_profile("linux-6.1").kernel_bugs if bug.commit == "116e04ba1459")
    assert pool.what_if_interp("linux-6.1", "limit+1", hierarchy).execute(s)[1].run.tail_calls == 34
    # with 116e04ba1459 fixed the profile has no such bug left to combine with
    assert hierarchy not in unfixed_kernel_bugs(get_profile("linux-6.1+116e04ba1459"))


# A constant key of 3 on a 3-entry prog array: the 5.5 verifier's tnum range
# test (tnum_range(0, 2) also holds 3) makes the site direct, and the direct
# site counts a tail call before its nop falls through, where the
# interpreter's bounds check leaves without counting.  Real 5.5 behaviour,
# fixed by a657182a5c51 in v6.0-rc4.
TNUM_KEY = """-- maps
jmp prog_array key_size=4 value_size=4 max_entries=3
-- prog loop
mov %r3, 3
lddw %r2, map:jmp
call 12
mov %r3, 0
lddw %r2, map:jmp
call 12
mov %r0, 7
exit
-- events
update jmp 0 prog:loop
run loop
"""


def test_divergence_of_the_real_55_kernel_is_reported_as_its_known_bug(pool):
    verdict = run_oracle(scenario(TNUM_KEY), profile="linux-5.5", pool=pool)
    assert [f.kind for f in verdict.findings] == ["known"]
    assert verdict.signature == "known:linux-5.5:a657182a5c51"
    # every loop iteration costs the JIT two counts (key 3, then key 0): 16 tail calls
    assert (verdict.findings[0].field, verdict.findings[0].values) == ("tail_calls", {"interp": "33", "jit": "16"})
    assert not verdict.new_findings
    # 6.1 has the fix: the same scenario agrees there.
    assert run_oracle(scenario(TNUM_KEY), profile="linux-6.1", pool=pool).ok
