"""The verifier takes a subprogram's R0 from its own exit, across a tail call the subprogram takes.

Found by bpfdiff's clean campaigns on linux-6.1, 5.10 and 6.12 and confirmed on the real 6.1.192
and 5.10.223 (``test_kernel_guest.py``): a successful tail call inside a subprogram returns the
*target's* R0 to the caller, but the verifier hard-wires the caller's branch on the R0 it saw at
the subprogram's ``exit`` and removes the other side as dead code.  Modelled as the known kernel
bug ``subprog-r0-tail-call`` of the profiles that allow tail calls in subprograms; its "fix"
(profile data ``verifier_trusts_subprog_r0=False``) makes R0 unknown after such a call.
"""

from __future__ import annotations

import pytest
from bpfdiff.fuzz.oracle import KNOWN, EnginePool, run_oracle

from bpfdiff.engine import make_engine
from bpfdiff.profiles import get_profile
from bpfdiff.scenario_text import parse_scenario

# `make fuzz`'s finding (seed 1331), minimised: the subprogram tail-calls p1 itself, then r0 = 0
REPRO = """\
-- maps
jmp0 prog_array key_size=4 value_size=4 max_entries=1
-- prog p1
call local L5
jle32 %r0, 0, L3
neg %r0
L3:
add %r0, 1
exit
L5:
mov %r3, 0
lddw %r2, map:jmp0
call 12
mov %r0, 0
exit
-- events
update jmp0 0 prog:p1
run p1 mem=00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00
"""
PROFILES = ["linux-5.10", "linux-6.1", "linux-6.12"]


@pytest.fixture(scope="module")
def pool():
    p = EnginePool()
    yield p
    p.close()


def r0_of(engine: str, profile: str) -> int:
    made = make_engine(engine, profile=profile)
    try:
        run = made.execute(parse_scenario(REPRO))[-1].run
    finally:
        made.close()
    assert run is not None
    return run.r0


@pytest.mark.parametrize("profile", PROFILES)
def test_the_jit_runs_without_the_removed_neg(profile: str) -> None:
    # 34 nested entries.  The innermost one's tail call fails (limit), so its subprogram returns
    # 0 and it returns 1.  As written, an outer entry whose subprogram returned k > 0 negates and
    # adds 1 (1 - k), one that got 0 returns 1: the levels alternate 1, 0, 1, ... and the run
    # returns 0.  With the neg removed every level adds 1 to what it got back: 34.
    assert get_profile(profile).verifier_trusts_subprog_r0
    assert r0_of("interp", profile) == 0
    assert r0_of("jit", profile) == 0x22
    assert r0_of("jit", f"{profile}+subprog-r0-tail-call") == 0


@pytest.mark.parametrize("profile", PROFILES)
def test_oracle_names_the_known_bug(profile: str, pool: EnginePool) -> None:
    verdict = run_oracle(parse_scenario(REPRO), profile=profile, pool=pool)
    assert [f.kind for f in verdict.findings] == [KNOWN]
    assert verdict.signature == f"known:{profile}:subprog-r0-tail-call"
