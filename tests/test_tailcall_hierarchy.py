"""116e04ba1459 "bpf, x64: Fix tailcall hierarchy": rediscovered from faithful profiles.

The scenario (corpus/examples/tailcall_hierarchy.scn) has the shape of the
kernel selftests tailcall_bpf2bpf_hierarchy_*: a main program calls a
subprogram twice, each call tail-calls into a chain whose program calls a
tail-calling subprogram again.  Measured on Debian's kernels under qemu
(../shared/reference/real-kernels.md): 66 entries of the chain on 5.10.223
and 6.1.192, whose x86 JIT passes the counter to subprograms by value; 33 on
6.12.117, which has the fix.  The reference interpreter follows the
specification -- one counter per run, 33 tail calls in total -- on every
profile.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bpfdiff.fuzz.oracle import KNOWN, EnginePool, run_oracle

from bpfdiff.engine import EXIT, EngineError, make_engine
from bpfdiff.profiles import get_profile
from bpfdiff.scenario_text import read_scenario

SCENARIO = Path(__file__).resolve().parent.parent / "corpus" / "examples" / "tailcall_hierarchy.scn"

# profile -> chain entries on (interp, jit); the JIT numbers are the real kernels'
ENTRIES = {
    "linux-5.10": (33, 66),
    "linux-6.1": (33, 66),
    "linux-6.12": (33, 33),
}


@pytest.fixture(scope="module")
def pool():
    p = EnginePool()
    yield p
    p.close()


@pytest.mark.parametrize("profile", sorted(ENTRIES))
@pytest.mark.parametrize("engine", ["interp", "jit"])
def test_chain_entries_per_engine(profile: str, engine: str) -> None:
    scenario = read_scenario(SCENARIO)
    made = make_engine(engine, profile=profile)
    try:
        run = made.execute(scenario)[1].run
    finally:
        made.close()
    expected = ENTRIES[profile][engine == "jit"]
    assert run is not None and run.exit == EXIT
    # entry returns counters[0]: every entry of chain counted once
    assert run.r0 == expected and run.tail_calls == expected
    assert run.trace == ("entry",) + ("chain",) * expected
    assert dict(run.maps)["counters"] == (("00000000", expected.to_bytes(8, "little").hex()),)


@pytest.mark.parametrize("profile", ["linux-5.10", "linux-6.1"])
def test_oracle_names_the_known_kernel_bug(profile: str, pool: EnginePool) -> None:
    verdict = run_oracle(read_scenario(SCENARIO), profile=profile, pool=pool)
    assert [f.kind for f in verdict.findings] == [KNOWN]
    assert verdict.signature == f"known:{profile}:116e04ba1459"
    assert verdict.new_findings == []


@pytest.mark.parametrize("profile", ["linux-5.10", "linux-6.1"])
def test_the_fix_as_profile_data_gives_the_jit_33(profile: str) -> None:
    fixed = get_profile(f"{profile}+116e04ba1459")
    assert fixed.jit_tail_call_cnt == "pointer" and fixed.x86_tail_call_offset == 12
    jit = make_engine("jit", profile=fixed)
    try:
        run = jit.execute(read_scenario(SCENARIO))[1].run
    finally:
        jit.close()
    assert run is not None and (run.r0, run.tail_calls) == (33, 33)


def test_linux_6_12_has_the_fix(pool: EnginePool) -> None:
    assert "116e04ba1459" not in {bug.commit for bug in get_profile("linux-6.12").kernel_bugs}
    assert run_oracle(read_scenario(SCENARIO), profile="linux-6.12", pool=pool).ok


def test_linux_5_5_refuses_tail_calls_in_subprograms() -> None:
    interp = make_engine("interp", profile="linux-5.5")
    with pytest.raises(EngineError, match="bpf-to-bpf"):
        interp.execute(read_scenario(SCENARIO))
