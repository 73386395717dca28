"""d7ba4cc900bf "bpf: return long from bpf_map_ops funcs" (v6.4) as a known kernel bug.

Before it, the map-type functions the verifier makes a JITed program call directly
(patch_map_ops_generic: htab_map_delete_elem...) returned ``int``: -ENOENT stays in eax and
R0 reads 0x00000000fffffffe, where the helper the interpreter calls (BPF_CALL_2, u64)
sign-extends it.  Measured on the real 6.1 (tests/test_kernel_guest.py): kernel-jit gives
the upper half 0, kernel-interp 0xffffffff.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bpfdiff.fuzz.oracle import KNOWN, EnginePool, run_oracle

from bpfdiff.engine import make_engine
from bpfdiff.profiles import get_profile
from bpfdiff.scenario_text import read_scenario

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "kernel"
UPPER_HALF = FIXTURES / "map_ops_return_int.scn"          # returns R0 >> 32 after a failed delete
SELF_TAIL_CALL = FIXTURES / "subprog_self_tail_call_delete.scn"


@pytest.fixture(scope="module")
def pool():
    p = EnginePool()
    yield p
    p.close()


def r0_of(engine: str, profile: str, path: Path) -> int:
    made = make_engine(engine, profile=profile)
    try:
        run = [o for o in made.execute(read_scenario(path)) if o.run is not None][-1].run
    finally:
        made.close()
    assert run is not None
    return run.r0


@pytest.mark.parametrize("profile", ["linux-5.5", "linux-5.10", "linux-6.1"])
def test_jit_sees_the_int_in_eax_before_v6_4(profile: str) -> None:
    assert get_profile(profile).map_ops_return_bits == 32
    assert r0_of("jit", profile, UPPER_HALF) == 0
    assert r0_of("interp", profile, UPPER_HALF) == 0xFFFFFFFF
    # with the fix as profile data, the JIT sign-extends like the helper
    assert r0_of("jit", f"{profile}+d7ba4cc900bf", UPPER_HALF) == 0xFFFFFFFF


def test_linux_6_12_has_the_fix() -> None:
    assert r0_of("jit", "linux-6.12", UPPER_HALF) == 0xFFFFFFFF


def test_self_tail_call_through_a_subprogram() -> None:
    # each of the 34 entries stores R0, deletes (-ENOENT) and xors in bits 32..47 of the R0
    # its subprogram returned: with a zero upper half every level gives 0xfffffffe; with -2
    # sign-extended every level but the innermost gives -2 ^ 0xffff
    assert r0_of("jit", "linux-6.1", SELF_TAIL_CALL) == 0xFFFFFFFE
    assert r0_of("interp", "linux-6.1", SELF_TAIL_CALL) == (-2 ^ 0xFFFF) & (1 << 64) - 1


@pytest.mark.parametrize("path", [UPPER_HALF, SELF_TAIL_CALL])
def test_oracle_names_the_known_bug(path: Path, pool: EnginePool) -> None:
    verdict = run_oracle(read_scenario(path), profile="linux-6.1", pool=pool)
    assert [f.kind for f in verdict.findings] == [KNOWN]
    assert verdict.signature == "known:linux-6.1:d7ba4cc900bf"
    assert run_oracle(read_scenario(path), profile="linux-6.12", pool=pool).ok


def test_a_run_showing_two_known_bugs_is_known_by_both_fixes(pool: EnginePool) -> None:
    # the campaign's seed 12 (minimised): 66 vs 33 entries (116e04ba1459) and a truncated -EEXIST
    # (d7ba4cc900bf) in one run; neither fix alone makes our engines agree
    scenario = read_scenario(FIXTURES / "two_known_bugs.scn")
    for commit in ("116e04ba1459", "d7ba4cc900bf"):
        fixed = [make_engine(e, profile=f"linux-6.1+{commit}") for e in ("interp", "jit")]
        runs = [engine.execute(scenario)[-1].run for engine in fixed]
        assert runs[0] != runs[1]
    verdict = run_oracle(scenario, profile="linux-6.1", pool=pool)
    assert verdict.signature == "known:linux-6.1:d7ba4cc900bf+116e04ba1459"
    assert "with their fixes applied" in verdict.findings[0].detail
