"""The JIT engine end to end: conformance suite, helpers and maps, faults, engine reuse.

Expected values come from the conformance suite's ``-- result`` sections, from
hand-computed results of small programs, and -- for helpers and maps -- from
the reference interpreter, an independent implementation of the same
semantics (they share only bpfdiff.maps/helpers, by design).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from bpfdiff.interp.engine import InterpEngine
from bpfdiff.jit.engine import JitEngine
from raw_scenarios import parse_raw

from bpfdiff.compare import compare_outcomes
from bpfdiff.conformance import SKIP, run_conformance
from bpfdiff.engine import EXIT, FAULT, FAULT_MEMORY, FAULT_UNSUPPORTED, TIMEOUT, EngineError
from bpfdiff.helpers import CLOBBER_VALUES

CONFORMANCE = Path(__file__).resolve().parents[2] / "shared" / "conformance"
if not CONFORMANCE.is_dir():
    CONFORMANCE = Path("/work/shared/conformance")
# files whose '-- no register offset' section marks features of other runtimes
KNOWN_SKIPS = {"callx.data", "call_unwind_fail.data", "mem-len.data"}


@pytest.fixture(scope="module")
def jit() -> JitEngine:
    return JitEngine()


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.5"])
def test_conformance_suite_through_the_jit(profile: str) -> None:
    if not CONFORMANCE.is_dir():
        pytest.skip("conformance suite not available")
    report = run_conformance(CONFORMANCE, ["jit", "interp"], profile)
    failures = [f"{Path(o.path).name}: {o.reason}" for o in report.outcomes if o.status == "fail"]
    assert failures == []
    assert {Path(o.path).name for o in report.by_status(SKIP) if o.engine == "jit"} == KNOWN_SKIPS
    # files the profile's kernel refuses (ISA v4, invalid shifts: tests/test_conformance.py
    # checks which) are refused by both engines alike, with the same message
    refused = {(Path(o.path).name, o.reason) for o in report.by_status("refused") if o.engine == "jit"}
    assert refused == {(Path(o.path).name, o.reason) for o in report.by_status("refused") if o.engine == "interp"}
    assert len(refused) >= 60
    assert report.counts()["jit"]["pass"] == len(list(CONFORMANCE.glob("*.data"))) - len(KNOWN_SKIPS) - len(refused)


MAPS_AND_HELPERS = """
-- maps
arr array key_size=4 value_size=8 max_entries=4
tab hash key_size=8 value_size=4 max_entries=2
-- prog main
mov %r6, %r1
# arr[2] = ctx[0..8] via map_update_elem
stw [%r10-4], 2
ldxdw %r1, [%r6+0]
stxdw [%r10-16], %r1
mov %r2, %r10
add %r2, -4
mov %r3, %r10
add %r3, -16
mov %r4, 0
lddw %r1, map:arr
call 2
mov %r7, %r0
# tab[0x1122334455667788] = 0xabcd via update, twice (second is NOEXIST: -EEXIST)
lddw %r1, 0x1122334455667788
stxdw [%r10-24], %r1
stw [%r10-28], 0xabcd
mov %r2, %r10
add %r2, -24
mov %r3, %r10
add %r3, -28
mov %r4, 1
lddw %r1, map:tab
call 2
lsh %r0, 8
or %r7, %r0
mov %r2, %r10
add %r2, -24
mov %r3, %r10
add %r3, -28
mov %r4, 1
lddw %r1, map:tab
call 2
lsh %r0, 16
xor %r7, %r0
# a lookup through the value pointer: arr[2] += prandom
stw [%r10-4], 2
mov %r2, %r10
add %r2, -4
lddw %r1, map:arr
call 1
jeq %r0, 0, out
mov %r8, %r0
call 7
ldxdw %r1, [%r8+0]
add %r1, %r0
stxdw [%r8+0], %r1
# delete a missing hash key: -ENOENT
stdw [%r10-24], 5
mov %r2, %r10
add %r2, -24
lddw %r1, map:tab
call 3
lsh %r0, 32
xor %r7, %r0
call 8
add %r7, %r0
out:
mov %r0, %r7
exit
-- events
run main mem=01 02 03 04 05 06 07 08
update tab hex:0100000000000000 = 11 22 33 44
run main mem=ff ff ff ff ff ff ff ff
delete tab hex:8877665544332211
delete arr 0
update arr 7 = 00 00 00 00 00 00 00 00
run main mem=10 20 30 40 50 60 70 80
"""


@pytest.mark.parametrize("profile", ["linux-6.1+d7ba4cc900bf", "linux-5.5+d7ba4cc900bf", "linux-6.12"])
def test_helpers_and_maps_agree_with_the_interpreter(profile: str) -> None:
    scenario = parse_raw(MAPS_AND_HELPERS)
    jit_out = JitEngine(profile=profile, seed=5).execute(scenario)
    interp_out = InterpEngine(profile=profile, seed=5).execute(scenario)
    assert compare_outcomes({"jit": jit_out, "interp": interp_out}) == []
    first = jit_out[0].run
    assert first.exit == EXIT
    # update arr -> 0; insert -> 0; NOEXIST again -> -EEXIST (-17); delete missing -> -ENOENT (-2)
    expected = (0 | (0 << 8)) ^ ((-17 << 16) & (2**64 - 1)) ^ ((-2 << 32) & (2**64 - 1))
    assert first.r0 == expected
    maps = dict(first.maps)
    assert maps["tab"] == (("8877665544332211", "cdab0000"),)
    # the delete of the hash key and the failing map events
    assert [o.retval for o in jit_out if o.run is None] == [0, 0, -22, -7]


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.5"])
def test_direct_map_ops_return_int_before_v6_4(profile: str) -> None:
    # d7ba4cc900bf: the map-type functions the JITed program calls directly return int, so the
    # errors come back zero-extended from 32 bits (measured on the real 6.1, test_kernel_guest.py)
    first = JitEngine(profile=profile, seed=5).execute(parse_raw(MAPS_AND_HELPERS))[0].run
    assert first.r0 == (0xFFFFFFEF << 16) ^ (0xFFFFFFFE << 32) & (2**64 - 1)


CLOBBER = """
-- prog p
call 8
mov %r0, %r{reg}
exit
-- events
run p
"""


@pytest.mark.parametrize("reg", [1, 2, 3, 4, 5])
def test_helper_calls_poison_r1_to_r5_like_the_interpreter(jit: JitEngine, reg: int) -> None:
    run = jit.execute(parse_raw(CLOBBER.format(reg=reg)))[0].run
    assert (run.exit, run.r0) == (EXIT, CLOBBER_VALUES[reg])


FAULTS = """
-- prog over
mov %r0, 0
ldxb %r0, [%r1+4]
exit
-- prog under
mov %r0, 0
ldxb %r0, [%r1-1]
exit
-- prog unknown_helper
mov %r0, 0
mov %r0, 1
call 100000
exit
-- prog spin
mov %r0, 0
loop:
add %r0, 1
ja loop
-- events
run over mem=01 02 03 04
run under mem=01 02 03 04
run unknown_helper
run spin
"""


def test_faults_and_timeouts_carry_the_bpf_pc() -> None:
    engine = JitEngine(budget=1000)
    over, under, unknown, spin = (o.run for o in engine.execute(parse_raw(FAULTS)))
    assert (over.exit, over.fault_kind, over.fault_prog, over.fault_pc) == (FAULT, FAULT_MEMORY, "over", 1)
    assert (under.exit, under.fault_kind, under.fault_prog, under.fault_pc) == (FAULT, FAULT_MEMORY, "under", 1)
    assert (unknown.exit, unknown.fault_kind, unknown.fault_pc) == (FAULT, FAULT_UNSUPPORTED, 2)
    assert spin.exit == TIMEOUT
    interp = InterpEngine(budget=1000).execute(parse_raw(FAULTS))
    assert [(o.run.exit, o.run.fault_kind, o.run.fault_pc) for o in interp] == \
        [(r.exit, r.fault_kind, r.fault_pc) for r in (over, under, unknown, spin)]


def test_one_engine_runs_many_scenarios_without_leaking_state(jit: JitEngine) -> None:
    first = parse_raw("-- maps\nm array key_size=4 value_size=4 max_entries=1\n"
                           "-- prog p\nlddw %r1, map:m\nmov %r0, 5\nexit\n"
                           "-- events\nupdate m 0 = 01 02 03 04\nrun p\n")
    second = parse_raw("-- maps\nm array key_size=4 value_size=4 max_entries=1\n"
                            "-- prog q\nmov %r0, 6\nexit\n-- events\nrun q\n")
    assert jit.execute(first)[1].run.maps == (("m", (("00000000", "01020304"),)),)
    run = jit.execute(second)[0].run
    assert (run.r0, run.maps, run.trace) == (6, (("m", (("00000000", "00000000"),)),), ("q",))
    assert jit.execute(first)[1].run.r0 == 5


def test_bad_programs_are_engine_errors(jit: JitEngine) -> None:
    scenario = parse_raw("-- prog p\nmov %r0, 1\nexit\n-- events\nrun p\n")
    bad = type(scenario)(programs=scenario.programs, events=(type(scenario.events[0])("nope", b""),))
    with pytest.raises(EngineError):
        jit.execute(bad)


def test_dump_shows_the_site_turning_into_a_jump_and_back(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    from bpfdiff.cli import main

    path = tmp_path / "seed.scn"
    path.write_text("-- maps\njt prog_array key_size=4 value_size=4 max_entries=1\n"
                    "-- prog target\nmov %r0, 42\nexit\n"
                    "-- prog caller\nmov %r3, 0\nlddw %r2, map:jt\ncall 12\nmov %r0, 1\nexit\n"
                    "-- events\nupdate jt 0 prog:target\ndelete jt 0\n-- meta\nprofile linux-5.5\n")
    assert main(["dump", str(path), "--prog", "caller", "--after-each-event"]) == 0
    out = capsys.readouterr().out
    blocks = out.split("-- after ")[1:]
    assert len(blocks) == 3
    site = [next(line for line in block.splitlines() if line.strip().startswith("39:")) for block in blocks]
    assert ["nop" in site[0], "jmp" in site[1], "nop" in site[2]] == [True, True, True]
    assert main(["dump", str(path), "--xlated"]) == 0
    assert "call bpf_tail_call#12" in capsys.readouterr().out


def test_dump_reports_bad_input_in_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from bpfdiff.cli import main

    path = tmp_path / "bad.scn"
    path.write_text("-- prog p\nmov %r0, 1\nfrobnicate %r1\nexit\n")
    assert main(["dump", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f"bpfdiff: error: {path}:3:")


SUBPROGRAMS = """
-- maps
jt prog_array key_size=4 value_size=4 max_entries=2
-- prog leaf
mov %r0, 0x100
exit
-- prog main
mov %r6, %r1
stw [%r1+0], 0x11223344       # a write to the context, visible in the result's mem
mov %r1, %r6
call local sub
add %r0, 1
mov %r1, %r6
ldxb %r2, [%r1+4]
jeq %r2, 0, done
call local bad                # reads past the context: faults inside the subprogram
done:
exit
sub:
mov %r7, %r1
mov %r3, 0
lddw %r2, map:jt
call 12                       # a tail call from a subprogram (6.1 only)
mov %r0, 5
exit
bad:
ldxdw %r0, [%r1+60]
exit
-- events
run main mem=00 00 00 00 00 00 00 00
update jt 0 prog:leaf
run main mem=00 00 00 00 00 00 00 00
run main mem=00 00 00 00 01 00 00 00
"""


def test_subprograms_tail_calls_and_faults_agree_with_the_interpreter() -> None:
    scenario = parse_raw(SUBPROGRAMS)
    jit_out = JitEngine(profile="linux-6.1").execute(scenario)
    interp_out = InterpEngine(profile="linux-6.1").execute(scenario)
    assert compare_outcomes({"jit": jit_out, "interp": interp_out}) == []
    empty, filled, faulting = (o.run for o in jit_out if o.run)
    assert (empty.r0, empty.trace, empty.mem[:4]) == (6, ("main",), bytes.fromhex("44332211"))
    # the leaf replaces the subprogram and returns into main: 0x100 + 1
    assert (filled.r0, filled.trace, filled.tail_calls) == (0x101, ("main", "leaf"), 1)
    assert (faulting.exit, faulting.fault_kind, faulting.fault_prog) == (FAULT, FAULT_MEMORY, "main")
    bad_pc = next(pc for pc, insn in enumerate(scenario.program("main").insns) if insn.opcode == 0x79)
    assert faulting.fault_pc == bad_pc


def test_subprograms_with_tail_calls_are_refused_on_5_5() -> None:
    with pytest.raises(EngineError):
        JitEngine(profile="linux-5.5").execute(parse_raw(SUBPROGRAMS))


@pytest.mark.parametrize("profile", ["linux-6.1", "linux-5.5"])
def test_a_reused_engine_gives_what_a_fresh_one_gives(profile: str) -> None:
    """No state leaks between scenarios: images at reused addresses, translations, maps, hooks."""
    from bpfdiff.fuzz.generate import scenario_from_seed

    scenarios = [scenario_from_seed(seed, profile) for seed in range(30)]
    reused = JitEngine(profile=profile)
    first_pass = [reused.execute(s) for s in scenarios]
    second_pass = [reused.execute(s) for s in reversed(scenarios)][::-1]
    assert first_pass == second_pass
    for scenario, outcomes in zip(scenarios[:5], first_pass, strict=False):
        assert JitEngine(profile=profile).execute(scenario) == outcomes
    assert sum(1 for outcomes in first_pass for o in outcomes if o.run and o.run.tail_calls) > 0


MAP_VALUE_BOUNDS = """
-- maps
arr array key_size=4 value_size=12 max_entries=2
-- prog p
ldxdw %r6, [%r1+0]            # the offset to read at, from the context
stw [%r10-4], 1
mov %r2, %r10
add %r2, -4
lddw %r1, map:arr
call 1
jeq %r0, 0, out
add %r0, %r6
ldxw %r0, [%r0+0]
out:
exit
-- events
update arr 1 = 01 02 03 04 05 06 07 08 09 0a 0b 0c
run p mem=08 00 00 00 00 00 00 00
run p mem=0c 00 00 00 00 00 00 00
run p mem=10 00 00 00 00 00 00 00
run p mem=e8 ff ff ff ff ff ff ff
"""


def test_map_value_bounds_fault_like_the_interpreter(jit: JitEngine) -> None:
    """Verifier-invalid accesses, but both engines must agree: past the values and before them."""
    scenario = parse_raw(MAP_VALUE_BOUNDS)
    jit_runs = [o.run for o in jit.execute(scenario) if o.run]
    interp_runs = [o.run for o in InterpEngine().execute(scenario) if o.run]
    assert [(r.exit, r.fault_kind, r.fault_pc) for r in jit_runs] == \
        [(r.exit, r.fault_kind, r.fault_pc) for r in interp_runs]
    inside, padding, past, before = jit_runs
    assert (inside.exit, inside.r0) == (EXIT, 0x0C0B0A09)
    assert padding.exit == EXIT                      # element padding (12 -> 16 bytes) is still the map's
    # 16 bytes past element 1's start is the end of the block; -24 is 8 bytes before element 0
    assert (past.exit, past.fault_kind, before.exit, before.fault_kind) == (FAULT, FAULT_MEMORY, FAULT, FAULT_MEMORY)
    assert "before map values" in before.fault_reason
